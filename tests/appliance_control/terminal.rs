//! Terminals and service managers: `herd console` and Ctrl-] in tmux, the
//! systemd template unit.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::harness::*;
use crate::support::herd_run;
use crate::support::probes::{herd_bin, probe_path};

/// `systemd-analyze verify` on the installed template unit (an instance of
/// it). A copy with a broken ExecStart must fail, so the check is real.
#[test]
fn systemd_unit_verifies() {
    if Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .is_err()
    {
        let installed = Command::new("apt-get")
            .args(["install", "-y", "-q", "systemd"])
            .output()
            .is_ok_and(|o| o.status.success());
        if !installed {
            herd_run::skip_notice(
                "systemd-analyze missing and `apt-get install systemd` failed",
                "systemd_unit_verifies",
            );
            return;
        }
    }
    let rt = Runtime::new("systemd");
    let units = rt.dir.join("units");
    let out = rt.herd(&["install-unit", "--dir", units.to_str().unwrap()]);
    assert!(out.status.success(), "{}", dump(&out));
    let unit = std::fs::read_to_string(units.join("herd@.service")).unwrap();
    assert!(
        unit.contains(&format!("ExecStart={} run --name %i", herd_bin().display())),
        "{unit}"
    );
    assert!(
        unit.contains("Type=notify") && unit.contains("ExecStop="),
        "{unit}"
    );
    let verify = |dir: &Path| {
        Command::new("systemd-analyze")
            .arg("verify")
            .arg(dir.join("herd@demo.service"))
            .output()
            .unwrap()
    };
    let good = verify(&units);
    assert!(
        good.status.success(),
        "systemd-analyze verify: {}",
        dump(&good)
    );
    let broken = rt.dir.join("broken");
    std::fs::create_dir_all(&broken).unwrap();
    let text = unit.replace("ExecStart=/", "ExecStart=/nonexistent/");
    std::fs::write(broken.join("herd@.service"), text).unwrap();
    assert!(
        !verify(&broken).status.success(),
        "verify accepted a broken unit"
    );
}

/// `herd console` in a real terminal (tmux): what is typed reaches the
/// guest's serial port, Ctrl-] detaches, the appliance keeps running.
#[test]
fn console_attaches_and_detaches_in_a_terminal() {
    if !kvm_present() {
        return;
    }
    if Command::new("tmux").arg("-V").output().is_err() {
        let ok = Command::new("apt-get")
            .args(["install", "-y", "-q", "tmux"])
            .output()
            .is_ok_and(|o| o.status.success());
        assert!(ok, "tmux is missing and `apt-get install tmux` failed");
    }
    let rt = Runtime::new("console");
    rt.start("c", "probe.action=echo", &[]);
    rt.wait_console("c", "echo ready", |c| c.contains("probe: echo ready"));
    let session = format!("herd-console-{}", std::process::id());
    let tmux = |args: &[&str]| {
        Command::new("tmux")
            .args(["-L", &session])
            .args(args)
            .output()
            .unwrap()
    };
    let new_session = |cmd: &str| {
        let out = tmux(&["new-session", "-d", "-s", "s", "-x", "120", "-y", "30", cmd]);
        assert!(out.status.success(), "tmux: {}", dump(&out));
    };
    let shell_cmd = format!(
        "HERD_RUNTIME={} {} console c; echo console-exit=$?; sleep 60",
        rt.dir.display(),
        herd_bin().display()
    );
    new_session(&shell_cmd);
    let screen =
        || String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "s"]).stdout).into_owned();
    let wait_screen = |what: &str| {
        let deadline = Instant::now() + WAIT;
        loop {
            let s = screen();
            if s.contains(what) {
                return s;
            }
            if Instant::now() > deadline {
                tmux(&["kill-server"]);
                panic!("never saw {what:?} on the terminal:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    };
    wait_screen("press Ctrl-] to detach");
    // Typed keys reach the guest's serial port (the echo probe answers on
    // the console); Ctrl-] leaves.
    tmux(&["send-keys", "-t", "s", "hello", "Enter"]);
    wait_screen("probe: got hello");
    tmux(&["send-keys", "-t", "s", "C-]"]);
    let s = wait_screen("console-exit=0");
    tmux(&["kill-server"]);
    assert!(s.contains("detached from c; it keeps running"), "{s}");
    // Still running, and the console still takes input.
    assert_eq!(rt.json(&["ps", "--json"])[0]["state"], "running");
    let mut again = std::os::unix::net::UnixStream::connect(rt.path("c", "console.sock")).unwrap();
    std::io::Write::write_all(&mut again, b"again\r").unwrap();
    rt.wait_console("c", "input after detaching", |c| {
        c.contains("probe: got again")
    });

    // The same key leaves a foreground `herd run --console stdio`.
    let shell_cmd = format!(
        "{} run --kernel {} --mem 64 --cmdline probe.action=tick; echo run-exit=$?; sleep 60",
        herd_bin().display(),
        probe_path(PVH).display()
    );
    new_session(&shell_cmd);
    wait_screen("probe: tick");
    tmux(&["send-keys", "-t", "s", "C-]"]);
    let s = wait_screen("run-exit=0");
    tmux(&["kill-server"]);
    assert!(s.contains("Ctrl-]"), "{s}");
}

/// Under systemd (`NOTIFY_SOCKET`), herd sends READY=1 when the guest
/// reports ready (124 on port 0x440), not before, and STOPPING=1 at the end.
#[test]
fn systemd_hears_ready_when_the_guest_is_ready() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("notify");
    let notify = rt.dir.join("notify.sock");
    let listener = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    listener.set_read_timeout(Some(WAIT)).unwrap();
    let kernel = probe_path(PVH);
    let start = |name: &str, cmdline: &str| {
        let mut cmd = rt.cmd(&[
            "run",
            "--name",
            name,
            "--kernel",
            kernel.to_str().unwrap(),
            "--console",
            "log",
            "--cmdline",
            cmdline,
        ]);
        cmd.env("NOTIFY_SOCKET", &notify)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        herd_run::ChildGuard(cmd.spawn().unwrap())
    };
    let child = start("n", "probe.ready=1 probe.action=tick");
    let mut buf = [0u8; 256];
    let n = listener.recv(&mut buf).expect("no READY=1 from herd");
    let said = String::from_utf8_lossy(&buf[..n]).into_owned();
    assert!(said.starts_with("READY=1"), "{said}");
    let vm = rt.json(&["inspect", "n"]);
    assert!(
        vm["vm"]["boot"]["guest_ready_ms"].as_f64().is_some(),
        "{vm}"
    );
    let out = rt.herd(&["kill", "n"]);
    assert!(out.status.success());
    let n = listener.recv(&mut buf).expect("no STOPPING=1 from herd");
    assert_eq!(&buf[..n], b"STOPPING=1");
    drop(child);

    // A guest that never says it is ready: no READY=1.
    let _child = start("n2", "probe.action=tick");
    rt.wait_console("n2", "ticks", |c| last_tick(c) >= 2);
    listener
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert!(
        listener.recv(&mut buf).is_err(),
        "READY=1 without a ready guest"
    );
}
