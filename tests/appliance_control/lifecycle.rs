//! Detach, ps, inspect, logs, stop, kill, pause/resume, metrics, stale
//! directories and duplicate names, graceful and forced stops.

use std::os::unix::fs::PermissionsExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::harness::*;
use crate::support::herd_run::{self, wait_until, ChildGuard};
use crate::support::probes::probe_path;

#[test]
fn detach_ps_inspect_logs_stop() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("basic");
    let started = Instant::now();
    rt.start("tick1", "probe.action=tick", &[]);
    println!("herd run --detach returned after {:?}", started.elapsed());
    rt.wait_console("tick1", "ticks", |c| last_tick(c) >= 2);

    let ps = rt.json(&["ps", "--json"]);
    let row = &ps[0];
    assert_eq!(row["name"], "tick1", "{ps}");
    assert_eq!(row["state"], "running", "{ps}");
    assert_eq!(row["pid"], rt.pid("tick1"), "{ps}");
    assert_eq!(
        (row["vcpus"].as_u64(), row["mem_mib"].as_u64()),
        (Some(1), Some(64))
    );
    assert!(row["herd_rss_bytes"].as_u64().unwrap() > 0, "{ps}");
    let table = String::from_utf8(rt.herd(&["ps"]).stdout).unwrap();
    assert!(
        table.starts_with("NAME") && table.contains("tick1"),
        "{table}"
    );

    let inspect = rt.json(&["inspect", "tick1"]);
    assert_eq!(inspect["vm"]["state"], "running", "{inspect}");
    assert_eq!(inspect["vm"]["api_version"], "v1");
    assert!(inspect["vm"]["cmdline"]
        .as_str()
        .unwrap()
        .contains("probe.action=tick"));
    assert!(
        inspect["vm"]["boot"]["boot_timer_ms"].as_f64().is_some(),
        "{inspect}"
    );
    assert!(inspect["metrics"]["vcpu_exits"]["io_out"].as_u64().unwrap() > 0);

    let api = rt.path("tick1", "api.sock");
    let mode = std::fs::metadata(&api).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "control socket mode");

    // The guest may be mid-line (`probe: tic`): like tail, -n counts that
    // partial line, so of two lines the first is always a whole one.
    let logs = rt.herd(&["logs", "tick1", "-n", "2"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert_eq!(logs.lines().count(), 2, "{logs}");
    assert!(logs.starts_with("probe: tick "), "{logs}");

    // `logs -f` follows until the appliance stops.
    let mut follow = rt.cmd(&["logs", "tick1", "-f"]);
    follow.stdout(Stdio::piped()).stderr(Stdio::null());
    let mut follow = ChildGuard(follow.spawn().unwrap());
    let followed = herd_run::drain(follow.0.stdout.take().unwrap());

    // The tick probe has no keyboard driver: stop cannot ask, so it stops
    // the VM at once (and says so) rather than waiting out the timeout.
    let t = Instant::now();
    let out = rt.herd(&["stop", "tick1"]);
    assert!(out.status.success(), "{}", dump(&out));
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stop took {:?}",
        t.elapsed()
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("stopped at once"),
        "{}",
        dump(&out)
    );
    assert!(!api.exists(), "socket left behind");
    let status = wait_until(&mut follow.0, Instant::now() + WAIT).expect("logs -f kept following");
    assert!(status.success());
    let followed = followed.join().unwrap();
    assert!(last_tick(&followed) >= last_tick(&logs), "{followed}");
    let ps = rt.json(&["ps", "--all", "--json"]);
    assert_eq!(ps[0]["state"], "exited", "{ps}");
    assert_eq!(rt.json(&["ps", "--json"]), Value::Array(vec![]));
    let out = rt.herd(&["stop", "tick1"]);
    assert_eq!(out.status.code(), Some(2), "{}", dump(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not running"));

    // The name is free again.
    rt.start("tick1", "probe.action=tick", &[]);
    let out = rt.herd(&["kill", "tick1"]);
    assert!(out.status.success(), "{}", dump(&out));
}

#[test]
fn detach_fails_like_the_foreground() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("fail");
    let args = ["run", "--name", "bad", "--kernel", "/nonexistent/vmlinux"];
    let fg = rt.herd(&args);
    let bg = rt.herd(&[&args[..], &["--detach"]].concat());
    assert_eq!(fg.status.code(), Some(2), "{}", dump(&fg));
    assert_eq!(bg.status.code(), Some(2), "{}", dump(&bg));
    assert_eq!(fg.stderr, bg.stderr);
    assert!(bg.stdout.is_empty(), "{}", dump(&bg));
    let out = rt.herd(&["run", "--detach", "--kernel", "/x"]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "--detach without --name: {}",
        dump(&out)
    );
    let out = rt.herd(&["run", "--name", "a/b", "--detach", "--kernel", "/x"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not valid"),
        "{}",
        dump(&out)
    );
}

#[test]
fn duplicate_name_is_refused_and_stale_dir_cleaned() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("dup");
    rt.start("dup", "probe.action=tick", &[]);
    let kernel = probe_path(PVH);
    let again = [
        "run",
        "--name",
        "dup",
        "--kernel",
        kernel.to_str().unwrap(),
        "--console",
        "none",
    ];
    let out = rt.herd(&again);
    assert_eq!(out.status.code(), Some(2), "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("already running") && err.contains(&rt.pid("dup").to_string()),
        "{err}"
    );
    rt.wait_console("dup", "ticks", |c| last_tick(c) >= 1);

    // A herd that dies without cleaning up leaves a stale directory.
    let pid = rt.pid("dup");
    // SAFETY: kill(2) on the detached herd this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let deadline = Instant::now() + WAIT;
    while rt.json(&["ps", "--all", "--json"])[0]["state"] != "dead" {
        assert!(Instant::now() < deadline, "never seen dead");
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = rt.herd(&["logs", "dup"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("probe: tick 1"));
    let out = rt.start("dup", "probe.action=tick", &[]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("cleaned the stale runtime directory"),
        "{}",
        dump(&out)
    );
    assert_ne!(rt.pid("dup"), pid);
}

#[test]
fn pause_stops_guest_progress_and_resume_restarts_it() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("pause");
    rt.start("p", "probe.action=tick", &[]);
    rt.wait_console("p", "ticks", |c| last_tick(c) >= 3);
    let out = rt.herd(&["pause", "p"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("paused"),
        "{}",
        dump(&out)
    );
    assert_eq!(rt.json(&["inspect", "p"])["vm"]["state"], "paused");
    let exits_at_pause = rt.json(&["inspect", "p"])["metrics"]["vcpu_exits"]["io_out"].clone();
    let ticks_at_pause = last_tick(&rt.console("p"));
    std::thread::sleep(Duration::from_millis(1500));
    let ticks_later = last_tick(&rt.console("p"));
    let exits_later = rt.json(&["inspect", "p"])["metrics"]["vcpu_exits"]["io_out"].clone();
    println!("paused 1.5 s: ticks {ticks_at_pause} -> {ticks_later}, io_out {exits_at_pause} -> {exits_later}");
    assert_eq!(ticks_at_pause, ticks_later, "the guest ticked while paused");
    assert_eq!(exits_at_pause, exits_later, "the vCPU exited while paused");

    let out = rt.herd(&["resume", "p"]);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("running"),
        "{}",
        dump(&out)
    );
    rt.wait_console("p", "ticks after resume", |c| {
        last_tick(c) > ticks_later + 1
    });
    let out = rt.herd(&["kill", "p"]);
    assert!(out.status.success(), "{}", dump(&out));
}

#[test]
fn metrics_count_disk_requests_and_memory() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("metrics");
    let disk = rt.dir.join("data.img");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    rt.start(
        "m",
        "probe.action=blk probe.then=spin",
        &["--disk", disk.to_str().unwrap()],
    );
    rt.wait_console("m", "blk ok", |c| c.contains("probe: blk ok"));
    let m = rt.json(&["inspect", "m"])["metrics"].clone();
    let blk = &m["block"][0];
    assert_eq!(blk["path"], disk.to_str().unwrap(), "{m}");
    assert!(blk["reads"].as_u64().unwrap() >= 2, "{m}");
    assert_eq!(blk["writes"], 1, "{m}");
    assert_eq!(blk["write_bytes"], 512, "{m}");
    assert_eq!(blk["flushes"], 1, "{m}");
    assert!(
        blk["errors"].as_u64().unwrap() >= 1,
        "read past the end is an error: {m}"
    );
    assert!(m["vcpu_exits"]["mmio_write"].as_u64().unwrap() > 0, "{m}");
    assert!(
        m["memory"]["guest_rss_bytes"].as_u64().unwrap() >= 4096,
        "{m}"
    );
    assert!(
        m["memory"]["herd_rss_bytes"].as_u64().unwrap() >= 1 << 20,
        "{m}"
    );
}

#[test]
fn graceful_stop_presses_ctrl_alt_del_and_forces_a_deaf_guest() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("graceful");
    rt.start("kbd", "probe.action=kbd", &[]);
    rt.wait_console("kbd", "listening", |c| c.contains("probe: kbd listening"));
    let out = rt.herd(&["stop", "kbd", "--timeout", "10"]);
    assert!(out.status.success(), "{}", dump(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("guest exit code 0"),
        "{}",
        dump(&out)
    );
    assert!(rt.console("kbd").contains("probe: kbd ctrl-alt-del"));

    rt.start("deaf", "probe.action=kbd-ignore", &[]);
    rt.wait_console("deaf", "listening", |c| c.contains("probe: kbd listening"));
    let t = Instant::now();
    let out = rt.herd(&["stop", "deaf", "--timeout", "1"]);
    let took = t.elapsed();
    assert!(out.status.success(), "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("forced off") && err.contains("within 1 s"),
        "{}",
        dump(&out)
    );
    assert!(
        took >= Duration::from_secs(1),
        "forced before the timeout: {took:?}"
    );
    assert!(
        rt.console("deaf").contains("probe: kbd ctrl-alt-del"),
        "the guest was never asked"
    );
    let log = std::fs::read_to_string(rt.path("deaf", "herd.log")).unwrap();
    assert!(log.contains("did not power off within 1 s"), "{log}");
}

#[test]
fn sigterm_to_a_foreground_herd_is_a_graceful_stop() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("sigterm");
    let kernel = probe_path(PVH);
    let child = rt
        .cmd(&[
            "run",
            "--name",
            "fg",
            "--kernel",
            kernel.to_str().unwrap(),
            "--console",
            "log",
            "--cmdline",
            "probe.action=kbd",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = ChildGuard(child);
    let err = herd_run::drain(child.0.stderr.take().unwrap());
    rt.wait_console("fg", "listening", |c| c.contains("probe: kbd listening"));
    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    // SAFETY: kill(2) on our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_until(&mut child.0, Instant::now() + WAIT).expect("herd ignored SIGTERM");
    let err = err.join().unwrap();
    assert_eq!(status.code(), Some(0), "{err}");
    assert!(err.contains("asked the guest to power off"), "{err}");
    assert!(err.contains("guest exit code 0"), "{err}");
    assert!(rt.console("fg").contains("probe: kbd ctrl-alt-del"));
}

/// The runtime directory's files are never reached through a symlink planted
/// there (the jail's user owned the directory in an earlier run): the lock
/// through a link is refused.
#[test]
fn symlinks_planted_in_a_runtime_dir_are_not_followed() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("planted");
    let dir = rt.dir.join("planted");
    std::fs::create_dir_all(&dir).unwrap();
    let victim = rt.dir.join("victim");
    std::os::unix::fs::symlink(&victim, dir.join("lock")).unwrap();
    let kernel = probe_path(PVH);
    let out = rt.herd(&[
        "run",
        "--name",
        "planted",
        "--kernel",
        kernel.to_str().unwrap(),
        "--cmdline",
        "probe.action=exit:0",
    ]);
    assert!(!out.status.success(), "{}", dump(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("planted/lock") && err.contains("symbolic link"),
        "refused for another reason:\n{}",
        dump(&out)
    );
    assert!(
        !victim.exists(),
        "root created a file through the planted lock link"
    );
}
