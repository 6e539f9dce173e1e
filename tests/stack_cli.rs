//! `herd up/down` of stacks. Bad stack files need no VM; the rest boots
//! probe guests on the local /dev/kvm (no network: probes need none, and
//! these tests touch no host interface). Each test has its own stack
//! directory and HERD_RUNTIME.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use support::herd_run::{kvm_present, run_with_timeout, Run};
use support::probes::{herd_bin, probe_path};

const WAIT: Duration = Duration::from_secs(120);

struct Dir {
    path: PathBuf,
}

impl Dir {
    fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("herd-stack-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("rt")).unwrap();
        std::fs::create_dir_all(path.join("store")).unwrap();
        Dir { path }
    }

    fn write(&self, text: &str) -> PathBuf {
        let f = self.path.join("herd.toml");
        std::fs::write(&f, text).unwrap();
        f
    }

    fn herd(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(herd_bin());
        cmd.args(args)
            .current_dir(&self.path)
            .env("HERD_RUNTIME", self.path.join("rt"))
            .env("HERD_HOME", self.path.join("store"))
            .env_remove("HERD_MAX_VMS")
            .stdin(Stdio::null());
        run_with_timeout(cmd, WAIT, &format!("herd {args:?}"))
    }

    /// Appliances with a runtime directory (any that ever started).
    fn started(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path.join("rt"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("lock").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    fn ps(&self) -> Vec<serde_json::Value> {
        let out = self.herd(&["ps", "--all", "--json"]);
        assert!(out.status.success(), "{}", out.dump());
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap()
    }

    fn running(&self) -> Vec<String> {
        self.ps()
            .iter()
            .filter(|r| r["state"] != "exited" && r["state"] != "dead")
            .map(|r| r["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Everything still running is killed when a test ends, pass or fail.
impl Drop for Dir {
    fn drop(&mut self) {
        for name in self.running() {
            let _ = self.herd(&["kill", &name]);
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

fn probe() -> String {
    probe_path("probe-pvh.elf").display().to_string()
}

fn one_line_error(out: &Run) -> &str {
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line: {}", out.dump());
    lines[0]
}

#[test]
fn bad_stack_files_name_file_key_and_line_and_start_nothing() {
    let d = Dir::new("bad");
    std::fs::write(d.path.join("one.img"), b"disk").unwrap();
    let k = probe();
    let net = "[network]\nname = \"hst-bad\"\nsubnet = \"10.77.0.1/24\"\n";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            format!("[appliances.a]\nkernel = \"{k}\"\nmemory = 64\n"),
            ":3: memory: unknown field `memory`",
            "unknown key",
        ),
        (
            format!("[appliances.a]\nkernel = \"{k}\"\n[appliances.a]\nkernel = \"{k}\"\n"),
            ":3: a: duplicate key",
            "duplicate name",
        ),
        (
            format!(
                "[appliances.a]\nkernel = \"{k}\"\nreplicas = 2\n\n[appliances.a-2]\nkernel = \"{k}\"\n"
            ),
            ":5: a-2: duplicate name a-2",
            "duplicate replica name",
        ),
        (
            format!("{net}[appliances.a]\nkernel = \"{k}\"\naddress = \"10.78.0.5\"\n"),
            ":6: address: 10.78.0.5 is outside the subnet 10.77.0.0/24",
            "address outside the subnet",
        ),
        (
            format!(
                "[appliances.a]\nkernel = \"{k}\"\ndepends_on = [\"b\"]\n[appliances.b]\n\
                 kernel = \"{k}\"\ndepends_on = [\"c\"]\n[appliances.c]\nkernel = \"{k}\"\n\
                 depends_on = [\"a\"]\n"
            ),
            ":9: depends_on: dependency cycle: a -> b -> c -> a",
            "dependency cycle",
        ),
        (
            "[appliances.a]\nimage = \"redis:2\"\n".to_owned(),
            ":2: image: ",
            "image not in the store",
        ),
        (
            format!(
                "[appliances.a]\nkernel = \"{k}\"\ndisk = \"one.img\"\n[appliances.b]\n\
                 kernel = \"{k}\"\ndisk = \"one.img\"\n"
            ),
            ":6: disk: two appliances on one disk: a and b both use",
            "two appliances on one disk",
        ),
    ];
    for (text, want, what) in &cases {
        d.write(text);
        let out = d.herd(&["up", "-d"]);
        assert_eq!(out.code(), Some(2), "{what}: {}", out.dump());
        let line = one_line_error(&out);
        let prefix = "herd: error: herd.toml:";
        assert!(line.starts_with(prefix), "{what}: {line}");
        assert!(line.contains(want), "{what}: {line:?} lacks {want:?}");
        assert!(d.started().is_empty(), "{what}: something started");
        assert!(
            !Path::new("/sys/class/net/hst-bad").exists(),
            "{what}: bridge made"
        );
    }
    // The image error says which image and where to look.
    d.write("[appliances.a]\nimage = \"redis:2\"\n");
    let out = d.herd(&["up", "-d"]);
    assert!(one_line_error(&out).contains("redis"), "{}", out.dump());
}

#[test]
fn exit_verdict_of_100_replicas_reports_the_failing_one() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("verdict");
    d.write(&format!(
        "name = \"lt\"\n[defaults]\nkernel = \"{}\"\nmem = 32\n\
         [appliances.client]\nreplicas = 100\ncmdline = \"probe.action=exit:0\"\n\
         [appliances.broken]\ncmdline = \"probe.action=exit:7\"\n",
        probe()
    ));
    let out = d.herd(&["up", "--exit", "client", "broken"]);
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert!(
        out.stdout
            .contains("verdict: FAILED (100 passed, 1 failed, of 101)"),
        "{}",
        out.dump()
    );
    assert!(
        out.stdout.contains("exit statuses: 0 x100, 7 x1"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("run time: p50 "), "{}", out.dump());
    assert!(
        out.stdout
            .contains("failed: broken (lt-broken): exit status 7"),
        "{}",
        out.dump()
    );
    // Its console tail: the probe's summary line with its command line.
    assert!(
        out.stdout.contains("  | probe: entry=pvh"),
        "{}",
        out.dump()
    );
    assert!(out.stdout.contains("probe.action=exit:7"), "{}", out.dump());
    assert!(d.running().is_empty(), "left running: {:?}", d.running());

    // Without the broken one: PASSED and status 0.
    let out = d.herd(&["up", "--exit", "client"]);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(
        out.stdout
            .contains("verdict: PASSED (100 passed, 0 failed, of 100)"),
        "{}",
        out.dump()
    );
}

fn service_stack(d: &Dir, mem: u32) {
    // `kbd` probes power off on Ctrl-Alt-Del: a graceful stop.
    d.write(&format!(
        "name = \"sv\"\n[defaults]\nkernel = \"{}\"\nmem = 32\ncmdline = \"probe.action=kbd\"\n\
         health = {{ console = \"probe: kbd listening\", interval = 0.1 }}\n\
         [appliances.db]\n[appliances.web]\nmem = {mem}\ndepends_on = [\"db\"]\nrestart = \"on-failure\"\n\
         [appliances.worker]\nreplicas = 2\ndepends_on = [\"db\"]\n",
        probe()
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
    let out = d.herd(&["restart", "worker-2"]);
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

/// A network namespace for one test: the stack's bridge and TAPs live
/// (and die) in it.
struct Netns(String);

impl Netns {
    fn new(test: &str) -> Self {
        let name = format!("herd-{test}-{}", std::process::id());
        let ok = Command::new("ip").args(["netns", "add", &name]).status();
        assert!(
            ok.is_ok_and(|s| s.success()),
            "ip netns add {name} (needs root)"
        );
        Netns(name)
    }

    fn herd(&self, d: &Dir, args: &[&str]) -> Run {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.0])
            .arg(herd_bin())
            .args(args)
            .current_dir(&d.path)
            .env("HERD_RUNTIME", d.path.join("rt"))
            .env("HERD_HOME", d.path.join("store"))
            .stdin(Stdio::null());
        run_with_timeout(cmd, WAIT, &format!("herd {args:?} in {}", self.0))
    }

    fn links(&self) -> String {
        let out = Command::new("ip")
            .args(["-n", &self.0, "-br", "link"])
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn debugfs_cat(disk: &Path, file: &str) -> String {
    let out = Command::new("debugfs")
        .args(["-R", &format!("cat {file}")])
        .arg(disk)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn network_disks_and_the_hosts_file() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("net");
    let ns = Netns::new("stack");
    let personality = d.path.join("pers");
    std::fs::create_dir_all(personality.join("config")).unwrap();
    std::fs::create_dir_all(personality.join("data")).unwrap();
    std::fs::write(personality.join("config/hostname"), "old\n").unwrap();
    d.write(&format!(
        "name = \"nt\"\n[network]\nname = \"hnt0\"\nsubnet = \"10.66.0.1/24\"\n\
         [defaults]\nkernel = \"{}\"\nmem = 32\ncmdline = \"probe.action=kbd\"\n\
         health = {{ console = \"probe: kbd listening\", interval = 0.1 }}\n\
         [appliances.db]\naddress = \"10.66.0.10\"\npersonality = \"pers\"\ndisk_size = \"16M\"\n\
         [appliances.web]\npersonality = \"pers\"\ndisk_size = \"16M\"\nreplicas = 2\n",
        probe()
    ));
    let out = ns.herd(&d, &["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    let links = ns.links();
    assert!(links.contains("hnt0"), "{links}");
    assert_eq!(links.matches("hd-").count(), 3, "{links}");
    let db = d.path.join(".herd/nt/db.img");
    let hosts = debugfs_cat(&db, "config/hosts");
    for want in [
        "10.66.0.1\tgateway",
        "10.66.0.10\tdb",
        "10.66.0.2\tweb-1",
        "10.66.0.3\tweb-2",
    ] {
        assert!(hosts.contains(want), "{want:?} not in {hosts}");
    }
    assert_eq!(debugfs_cat(&db, "config/hostname"), "db\n");
    assert!(debugfs_cat(&db, "config/network").contains("ADDRESS=10.66.0.10/24"));
    let w2 = d.path.join(".herd/nt/web-2.img");
    assert!(debugfs_cat(&w2, "config/network").contains("ADDRESS=10.66.0.3/24"));
    let ps = ns.herd(&d, &["ps", "--json"]);
    assert!(ps.stdout.contains("\"10.66.0.10\""), "{}", ps.dump());

    // down: no TAP, no bridge; disks kept, and the next up uses them as
    // they are (a file written on one survives), addresses unchanged.
    let out = ns.herd(&d, &["down"]);
    assert!(out.status.success(), "{}", out.dump());
    let links = ns.links();
    assert!(!links.contains("hnt0") && !links.contains("hd-"), "{links}");
    let marker = d.path.join("marker");
    std::fs::write(&marker, "kept\n").unwrap();
    let wrote = Command::new("debugfs")
        .args([
            "-w",
            "-R",
            &format!("write {} data/marker", marker.display()),
        ])
        .arg(&db)
        .output()
        .unwrap();
    assert!(wrote.status.success());
    let out = ns.herd(&d, &["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    assert_eq!(debugfs_cat(&db, "data/marker"), "kept\n");
    assert!(out.stdout.contains("10.66.0.3"), "{}", out.dump());

    let out = ns.herd(&d, &["down", "--volumes"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(
        !db.exists() && !w2.exists(),
        "down --volumes left the disks"
    );
    assert!(
        personality.join("config/hostname").exists(),
        "a personality was touched"
    );
}

/// A store with images app:1 and app:2 (the pvh probe as their kernel) and
/// app:3 (the linux64 probe: it fails a health check that wants pvh).
fn probe_store(d: &Dir) {
    let store = d.path.join("store");
    for (key, probe_file) in [("pvh", "probe-pvh.elf"), ("l64", "probe-linux64.elf")] {
        let dir = store.join("kernels").join(key);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::copy(probe_path(probe_file), dir.join("vmlinux")).unwrap();
    }
    for (version, kernel) in [("1", "pvh"), ("2", "pvh"), ("3", "l64")] {
        let dir = store.join("images/app").join(version);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("image.erofs"), vec![0u8; 4096]).unwrap();
        let manifest = serde_json::json!({
            "name": "app", "version": version, "base": "busybox", "suite": "-",
            "sha256": "-", "size": 4096, "created": 0, "source_date_epoch": 0,
            "kernel": kernel, "definition_sha256": "-", "herd_version": "-",
            "services": {}, "stripped": [], "stripped_bytes": 0, "packages": []
        });
        std::fs::write(dir.join("manifest.json"), manifest.to_string()).unwrap();
    }
}

#[test]
fn upgrade_rolls_back_when_unhealthy_and_rollback_goes_back() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("upgrade");
    probe_store(&d);
    std::fs::create_dir_all(d.path.join("pers/data")).unwrap();
    d.write(
        "name = \"up\"\n[appliances.app]\nimage = \"app:1\"\nmem = 32\npersonality = \"pers\"\n\
         disk_size = \"16M\"\ncmdline = \"probe.action=kbd\"\n\
         health = { console = \"entry=pvh\", interval = 0.1, retries = 50 }\n",
    );
    let state = || std::fs::read_to_string(d.path.join("herd.state.json")).unwrap();
    let out = d.herd(&["up", "-d"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(out.stdout.contains("app:1"), "{}", out.dump());

    let out = d.herd(&["upgrade", "app", "--image", "app:2", "--timeout", "30"]);
    assert!(out.status.success(), "{}", out.dump());
    assert!(state().contains("\"image\": \"app:2\""), "{}", state());
    let inspect = d.herd(&["inspect", "up-app"]);
    assert!(
        inspect.stdout.contains("app/2/image.erofs"),
        "{}",
        inspect.dump()
    );
    assert!(
        inspect.stdout.contains(".herd/up/app.img"),
        "same disk: {}",
        inspect.dump()
    );
    // `up` after an upgrade keeps it.
    let out = d.herd(&["up", "-d"]);
    assert!(
        out.stdout.contains("app:2") && out.stdout.contains("unchanged"),
        "{}",
        out.dump()
    );

    let out = d.herd(&["upgrade", "app", "--image", "app:3", "--timeout", "10"]);
    assert_eq!(out.code(), Some(1), "{}", out.dump());
    assert!(
        out.stderr.contains("upgrade of app to app:3 failed")
            && out.stderr.contains("rolled back: it runs app:2 again"),
        "{}",
        out.dump()
    );
    assert!(
        out.stderr.contains("entry=linux64"),
        "console tail: {}",
        out.dump()
    );
    let inspect = d.herd(&["inspect", "up-app"]);
    assert!(
        inspect.stdout.contains("app/2/image.erofs"),
        "{}",
        inspect.dump()
    );
    assert!(state().contains("\"image\": \"app:2\""), "{}", state());

    let out = d.herd(&["rollback", "app"]);
    assert!(out.status.success(), "{}", out.dump());
    let inspect = d.herd(&["inspect", "up-app"]);
    assert!(
        inspect.stdout.contains("app/1/image.erofs"),
        "{}",
        inspect.dump()
    );
    let out = d.herd(&["upgrade", "app", "--image", "app:9"]);
    assert_eq!(out.code(), Some(2), "{}", out.dump());
    assert!(d.herd(&["down"]).status.success());
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
        "name = \"sp\"\n[defaults]\nkernel = \"{}\"\nmem = 32\ncmdline = \"probe.action=kbd\"\n\
         health = {{ console = \"probe: kbd listening\", interval = 0.1 }}\n\
         [appliances.web]\nrestart = \"on-failure\"\n[appliances.db]\nrestart = \"always\"\n\
         [appliances.cache]\nrestart = \"no\"\n",
        probe()
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

#[test]
fn ctrl_c_during_up_leaves_nothing_running() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("ctrlc");
    d.write(&format!(
        "name = \"cc\"\n[defaults]\nkernel = \"{}\"\nmem = 32\ncmdline = \"probe.action=kbd\"\n\
         health = {{ console = \"probe: kbd listening\", interval = 0.1 }}\n\
         [appliances.db]\n[appliances.web]\nreplicas = 24\ndepends_on = [\"db\"]\n",
        probe()
    ));
    let child = Command::new(herd_bin())
        .arg("up")
        .current_dir(&d.path)
        .env("HERD_RUNTIME", d.path.join("rt"))
        .env("HERD_HOME", d.path.join("store"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
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
fn replicas_queue_under_a_vm_cap() {
    if !kvm_present("stack_cli") {
        return;
    }
    let d = Dir::new("cap");
    d.write(&format!(
        "name = \"cap\"\n[appliances.job]\nkernel = \"{}\"\nmem = 32\nreplicas = 12\n\
         cmdline = \"probe.action=exit:0\"\n",
        probe()
    ));
    let mut cmd = Command::new(herd_bin());
    cmd.args(["up", "--exit", "job"])
        .current_dir(&d.path)
        .env("HERD_RUNTIME", d.path.join("rt"))
        .env("HERD_HOME", d.path.join("store"))
        .env("HERD_MAX_VMS", "3")
        .env("HERD_VM_SLOTS_DIR", d.path.join("slots"))
        .stdin(Stdio::null());
    let out = run_with_timeout(cmd, WAIT, "herd up --exit under HERD_MAX_VMS=3");
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(
        out.stdout
            .contains("verdict: PASSED (12 passed, 0 failed, of 12)"),
        "{}",
        out.dump()
    );
}
