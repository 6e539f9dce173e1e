//! `herd net create|rm` against the kernel, inside a network namespace of
//! the test's own (`unshare --net`), so no host interface or sysctl is
//! touched: a bridge *port* (another VM manager's TAP) is not a herd
//! network, and `--nat` leaves ip_forward as it found it.

mod support;

use std::process::Command;

use support::herd_run::skip_notice;
use support::probes::herd_bin;

/// Runs `script` with `$HERD` set in a new network namespace; None (after
/// a loud SKIP line) when namespaces cannot be created here.
fn in_netns(tag: &str, script: &str) -> Option<(bool, String)> {
    let runtime = std::env::temp_dir().join(format!("herd-net-cli-{}-{tag}", std::process::id()));
    let output = Command::new("unshare")
        .arg("--net")
        .arg("sh")
        .arg("-c")
        .arg(format!("set -u\n{script}"))
        .env("HERD", herd_bin())
        .env("HERD_RUNTIME", &runtime)
        .output()
        .expect("run unshare");
    let _ = std::fs::remove_dir_all(&runtime);
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if stderr.contains("unshare failed") {
        skip_notice(
            &format!("cannot create a network namespace ({stderr})"),
            "net_cli",
        );
        return None;
    }
    let text = format!("{}{stderr}", String::from_utf8_lossy(&output.stdout));
    Some((output.status.success(), text))
}

#[test]
fn a_bridge_port_is_not_a_network_herd_removes_or_reuses() {
    let Some((ok, out)) = in_netns(
        "port",
        r#"
        ip link add hostbr type bridge
        ip tuntap add othervm0 mode tap
        ip link set othervm0 master hostbr
        "$HERD" net rm othervm0 && echo "RM-ACCEPTED"
        ip link show othervm0 >/dev/null 2>&1 && echo "PORT-STILL-THERE"
        "$HERD" net create othervm0 --subnet 10.99.0.1/24 && echo "CREATE-ACCEPTED"
        "$HERD" net create hostbr --subnet 10.98.0.1/24 && echo "BRIDGE-REUSED"
        "$HERD" net rm hostbr && echo "BRIDGE-REMOVED"
        exit 0
        "#,
    ) else {
        return;
    };
    assert!(ok, "{out}");
    assert!(
        !out.contains("RM-ACCEPTED"),
        "a bridge port was removed\n{out}"
    );
    assert!(out.contains("PORT-STILL-THERE"), "{out}");
    assert!(!out.contains("CREATE-ACCEPTED"), "{out}");
    assert!(out.contains("othervm0 exists but is not a bridge"), "{out}");
    assert!(out.contains("BRIDGE-REUSED"), "{out}");
    assert!(out.contains("BRIDGE-REMOVED"), "{out}");
}

#[test]
fn nat_turns_ip_forward_on_and_the_last_rm_restores_it() {
    let Some((ok, out)) = in_netns(
        "nat",
        r#"
        echo 0 > /proc/sys/net/ipv4/ip_forward
        "$HERD" net create natone --subnet 10.97.0.1/24 --nat || exit 1
        "$HERD" net create nattwo --subnet 10.96.0.1/24 --nat || exit 1
        echo "after-create=$(cat /proc/sys/net/ipv4/ip_forward)"
        "$HERD" net rm natone || exit 1
        echo "after-first-rm=$(cat /proc/sys/net/ipv4/ip_forward)"
        "$HERD" net rm nattwo || exit 1
        echo "after-last-rm=$(cat /proc/sys/net/ipv4/ip_forward)"
        "#,
    ) else {
        return;
    };
    assert!(ok, "{out}");
    assert!(out.contains("after-create=1"), "{out}");
    assert!(
        out.contains("after-first-rm=1"),
        "the other network still needs forwarding\n{out}"
    );
    assert!(out.contains("after-last-rm=0"), "ip_forward left on\n{out}");
}
