//! Stacks of services: idempotent `up`, `restart`, `down`, the supervisor
//! after `kill -9`, Ctrl-C during `up`.

use std::process::Stdio;
use std::time::Duration;

use crate::harness::{kbd_stack, Dir};
use crate::support::herd_run::kvm_present;

fn service_stack(d: &Dir, mem: u32) {
    d.write(&format!(
        "{}[appliances.db]\n[appliances.web]\nmem = {mem}\ndepends_on = [\"db\"]\n\
         restart = \"on-failure\"\n[appliances.worker]\nreplicas = 2\ndepends_on = [\"db\"]\n",
        kbd_stack("sv")
    ));
}

#[test]
fn up_is_idempotent_restarts_only_what_changed_and_down_stops_all() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("idem");
    service_stack(&d, 32);
    let out = d.herd(&["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    let rows: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(rows.len(), 5, "{}", out.dump());
    assert!(
        rows[1].starts_with("db ") && rows[1].contains("started"),
        "{}",
        out.dump()
    );
    assert_eq!(
        d.running(),
        ["sv-db", "sv-web", "sv-worker-1", "sv-worker-2"]
    );
    let pids =
        |d: &Dir| -> Vec<serde_json::Value> { d.ps().iter().map(|r| r["pid"].clone()).collect() };
    let before = pids(&d);

    let out = d.herd(&["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(out.stdout.matches("unchanged").count(), 4, "{}", out.dump());
    assert_eq!(pids(&d), before, "a second up restarted something");

    service_stack(&d, 48);
    let out = d.herd(&["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(out.stdout.matches("unchanged").count(), 3, "{}", out.dump());
    assert!(
        out.stdout
            .lines()
            .any(|l| l.starts_with("web ") && l.contains("restarted")),
        "{}",
        out.dump()
    );
    let after = pids(&d);
    assert_eq!(after.iter().filter(|p| !before.contains(p)).count(), 1);
    let state = std::fs::read_to_string(d.path.join("herd.state.json")).unwrap();
    assert!(state.contains("\"web\""), "{state}");

    // `herd up web` alone starts web's dependency too (already running).
    let out = d.herd(&["up", "-d", "web"]);
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(out.stdout.lines().count(), 3, "{}", out.dump());

    // `herd restart` restarts what it names, nothing else.
    let before = pids(&d);
    let out = d.herd(&["restart", "sv-worker-2"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout.contains("restarted"), "{}", out.dump());
    let after = pids(&d);
    assert_eq!(after.iter().filter(|p| !before.contains(p)).count(), 1);
    let out = d.herd(&["down"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(
        out.stdout
            .contains("stack sv is down (4 appliances stopped)"),
        "{}",
        out.dump()
    );
    assert!(d.running().is_empty(), "{:?}", d.running());
    for r in d.ps() {
        assert_eq!(
            r["stop_reason"], "guest exit code 0",
            "not a graceful stop: {r}"
        );
    }
}

fn pid_of(d: &Dir, name: &str) -> Option<i32> {
    d.ps()
        .iter()
        .find(|r| r["name"] == name && r["state"] != "exited" && r["state"] != "dead")
        .and_then(|r| r["pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
}

#[test]
fn supervisor_restarts_killed_appliances_by_policy() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("supervise");
    d.write(&format!(
        "{}[appliances.web]\nrestart = \"on-failure\"\n[appliances.db]\nrestart = \"always\"\n\
         [appliances.cache]\nrestart = \"no\"\n",
        kbd_stack("sp")
    ));
    let out = d.herd(&["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    let old_web = pid_of(&d, "sp-web").unwrap();
    for name in ["sp-web", "sp-cache"] {
        let pid = pid_of(&d, name).unwrap();
        // SAFETY: kill(2) on a herd this test started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    // The supervisor logs "restarted" once the new web is healthy.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !d.herd(&["events"]).stdout.contains("web  restarted")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let new_web = pid_of(&d, "sp-web");
    assert!(
        new_web.is_some_and(|p| p != old_web),
        "web was not restarted: {}",
        d.herd(&["events"]).dump()
    );
    let cache = d
        .ps()
        .into_iter()
        .find(|r| r["name"] == "sp-cache")
        .unwrap();
    assert_eq!(cache["state"], "dead", "{cache}");
    let events = d.herd(&["events"]).stdout;
    assert!(
        events.contains("web  died (its herd died (killed?); restarting)"),
        "{events}"
    );
    assert!(events.contains("web  restarted (attempt 1)"), "{events}");
    assert!(
        events.contains("cache  died (its herd died (killed?); restart = no: left down)"),
        "{events}"
    );

    let out = d.herd(&["down"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(d.running().is_empty(), "{:?}", d.running());
    let events = d.herd(&["events", "--json"]).stdout;
    assert!(events.contains("\"supervisor stopped\""), "{events}");
}

/// `herd up` in the foreground, its output collected.
fn foreground_up(d: &Dir) -> std::process::Child {
    d.cmd(&["up"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

#[test]
fn ctrl_c_during_up_leaves_nothing_running() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("ctrlc");
    d.write(&format!(
        "{}[appliances.db]\n[appliances.web]\nreplicas = 24\ndepends_on = [\"db\"]\n",
        kbd_stack("cc")
    ));
    let child = foreground_up(&d);
    // Some appliances run by now, others not yet.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while d.running().len() < 3 && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let pid = i32::try_from(child.id()).unwrap();
    // SAFETY: kill(2) on the child this test started.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains("interrupted: stopping the"), "{stderr}");
    assert!(d.running().is_empty(), "left running: {:?}", d.running());
}

#[test]
fn a_foreground_up_supervises_until_herd_down() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("fg");
    d.write(&format!(
        "{}[appliances.web]\nrestart = \"always\"\n",
        kbd_stack("fg")
    ));
    let mut child = foreground_up(&d);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !d.herd(&["events"]).stdout.contains("supervisor started")
        && std::time::Instant::now() < deadline
    {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(d.running(), ["fg-web"]);
    // `down` from elsewhere ends the foreground up; `always` restarts nothing.
    let out = d.herd(&["down"]);
    assert!(out.status.success(), "{}", out.dump());
    let status = child.wait().unwrap();
    assert!(status.success(), "foreground up: {status}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(d.running().is_empty(), "{:?}", d.running());
}
