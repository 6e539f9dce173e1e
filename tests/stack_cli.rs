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
