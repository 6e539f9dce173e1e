//! `herd rm`: stopped appliances' runtime directories go, running ones
//! are refused unless -f, unknown names fail without stopping the others,
//! and links planted in a directory are removed, never followed.

use serde_json::Value;

use super::harness::*;

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn rm_refuses_a_running_appliance_and_force_kills_it() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("rm-force");
    rt.start("r1", "probe.action=tick", &[]);
    rt.wait_console("r1", "ticks", |c| last_tick(c) >= 1);

    let out = rt.herd(&["rm", "r1"]);
    assert_eq!(out.status.code(), Some(1), "{}", dump(&out));
    let err = stderr(&out);
    assert!(
        err.contains("r1 is running")
            && err.contains("herd stop r1")
            && err.contains("herd rm -f r1"),
        "{}",
        dump(&out)
    );
    assert!(out.stdout.is_empty(), "{}", dump(&out));
    let ps = rt.json(&["ps", "--json"]);
    assert_eq!(ps[0]["name"], "r1", "a refused rm touched it: {ps}");
    assert_eq!(ps[0]["state"], "running", "{ps}");
    let ticks = last_tick(&rt.console("r1"));
    rt.wait_console("r1", "ticks after the refused rm", |c| last_tick(c) > ticks);

    let out = rt.herd(&["rm", "--force", "r1"]);
    assert!(out.status.success(), "{}", dump(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "r1\n");
    assert!(!rt.dir.join("r1").exists(), "rm -f left the directory");
    assert_eq!(rt.json(&["ps", "--all", "--json"]), Value::Array(vec![]));
}

#[test]
fn rm_removes_exited_and_dead_appliances_and_names_unknown_ones() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("rm-exited");
    rt.start("gone", "probe.action=tick", &[]);
    let out = rt.herd(&["stop", "gone"]);
    assert!(out.status.success(), "{}", dump(&out));
    rt.start("dead", "probe.action=tick", &[]);
    let pid = rt.pid("dead");
    // SAFETY: kill(2) on the detached herd this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
    let states = || {
        rt.json(&["ps", "--all", "--json"])
            .as_array()
            .unwrap()
            .iter()
            .map(|r| format!("{}={}", r["name"].as_str().unwrap(), r["state"]))
            .collect::<Vec<_>>()
    };
    let deadline = std::time::Instant::now() + WAIT;
    while states() != ["dead=\"dead\"", "gone=\"exited\""] {
        assert!(std::time::Instant::now() < deadline, "{:?}", states());
        std::thread::sleep(std::time::Duration::from_millis(20));
    }

    // Links planted in a stopped appliance's directory (the jail's user
    // owned it) are removed themselves; what they point at stays.
    let victim = rt.dir.join("victim");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("keep"), "data").unwrap();
    std::os::unix::fs::symlink(&victim, rt.path("gone", "link-dir")).unwrap();
    std::os::unix::fs::symlink(victim.join("keep"), rt.path("gone", "link-file")).unwrap();

    let out = rt.herd(&["rm", "nosuch", "gone", "dead"]);
    assert_eq!(out.status.code(), Some(1), "{}", dump(&out));
    let err = stderr(&out);
    assert!(
        err.contains("no appliance named nosuch") && err.lines().count() == 1,
        "{}",
        dump(&out)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout), "gone\ndead\n");
    assert!(!rt.dir.join("gone").exists() && !rt.dir.join("dead").exists());
    assert_eq!(
        std::fs::read_to_string(victim.join("keep")).unwrap(),
        "data"
    );
    assert_eq!(rt.json(&["ps", "--all", "--json"]), Value::Array(vec![]));
    let out = rt.herd(&["rm", "gone"]);
    assert_eq!(out.status.code(), Some(1), "removed twice: {}", dump(&out));
    assert!(stderr(&out).contains("no appliance named gone"));
}

/// A `lock` link planted in place of the lock is refused, as `herd run`
/// refuses it, and its target is neither taken nor removed.
#[test]
fn rm_refuses_a_planted_lock_link() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("rm-planted");
    let victim = rt.dir.join("victim");
    std::fs::write(&victim, "data").unwrap();
    let dir = rt.dir.join("planted");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::symlink(&victim, dir.join("lock")).unwrap();
    let out = rt.herd(&["rm", "planted"]);
    assert_eq!(out.status.code(), Some(1), "{}", dump(&out));
    let err = stderr(&out);
    assert!(
        err.contains("planted/lock") && err.contains("symbolic link"),
        "{}",
        dump(&out)
    );
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "data");
}
