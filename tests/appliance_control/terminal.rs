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
    rt.start("c", "probe.action=tick", &[]);
    rt.wait_console("c", "ticks", |c| last_tick(c) >= 1);
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
    wait_screen("probe: tick");
    // What the guest would read: the serial port gets it (the probe does
    // not read, so herd's metrics show no effect; the log shows none
    // either). Typing must not end the session; Ctrl-] must.
    tmux(&["send-keys", "-t", "s", "hello", "Enter"]);
    tmux(&["send-keys", "-t", "s", "C-]"]);
    let s = wait_screen("console-exit=0");
    tmux(&["kill-server"]);
    assert!(s.contains("detached from c; it keeps running"), "{s}");
    let before = last_tick(&rt.console("c"));
    rt.wait_console("c", "ticks after detaching", |c| last_tick(c) > before);
    assert_eq!(rt.json(&["ps", "--json"])[0]["state"], "running");

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
