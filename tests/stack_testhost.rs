//! The example stack (guest-images/stacks/demo: web + redis + a client
//! that uses both) with Linux appliances inside the emulated test host
//! (QEMU TCG with nested KVM; see tests/support/testhost.rs): one command
//! brings it up, the client gets the page and counts a visit in redis,
//! `herd ps` lists it, `kill -9` of redis's herd is healed by the
//! supervisor, `herd down` leaves no herd, TAP or bridge, and the next `up`
//! finds redis's data. One test-host boot runs the scenario; each test
//! checks its part. Run under the shared lock:
//! `flock /tmp/herd-testhost.lock cargo test --test stack_testhost`.

#[path = "image_appliances/store.rs"]
mod store;
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use store::{example, herd, repo, store_files};
use support::testhost::{Scenario, ScenarioResult, TestHost};

const SCRIPT: &str = r#"
export HERD_HOME=/store
say() { echo "stack-test: $*"; }
cd /guest/stacks/demo || exit 1
herd up -d
say "up status=$?"
herd ps | sed 's/^/ps: /'
client() {
	herd up --exit client | sed 's/^/verdict: /'
	say "client status=$?"
	herd logs demo-client | tr -d '\r' | grep -E '<h1>|visits=' | sed "s/^/client$1: /"
}
client 1
# kill -9 redis's herd: the supervisor (restart = on-failure) restarts it.
kill -9 "$(cat /run/herd/demo-redis/pid)"
i=0
until herd events | grep -q 'redis  restarted' || [ $i -gt 300 ]; do sleep 1; i=$((i + 1)); done
herd events | sed 's/^/events: /'
herd ps | sed 's/^/ps2: /'
client 2
herd down
say "down status=$?"
sleep 1
say "herd processes: $(ps -o args | grep -c '^[h]erd \|/[h]erd ')"
say "links: $(ls /sys/class/net | tr '\n' ' ')"
# Up again: the disks were kept, redis still has the visits.
herd up -d >/dev/null
say "up2 status=$?"
client 3
herd down --volumes
say "down2 status=$?"
say "disks left: $(ls .herd/demo/ 2>/dev/null | grep -c img)"
exit 0
"#;

struct Suite {
    result: ScenarioResult,
}

/// Every file below `dir`, with its path relative to `dir`.
fn files_below(dir: &Path, rel: &Path, out: &mut Vec<(PathBuf, PathBuf)>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        let r = rel.join(entry.file_name());
        if p.is_dir() {
            files_below(&p, &r, out);
        } else {
            out.push((p, r));
        }
    }
}

fn setup() -> Result<Suite, String> {
    TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
    for name in ["base", "redis"] {
        example(name)?;
    }
    let mut sc = Scenario::new("stack_testhost", SCRIPT)
        .herd(herd())
        .timeout(Duration::from_secs(900));
    let mut files = Vec::new();
    for sub in ["stacks/demo", "personalities/web"] {
        files_below(
            &repo().join("guest-images").join(sub),
            Path::new(sub),
            &mut files,
        );
    }
    for (src, rel) in files {
        if !rel.to_string_lossy().contains("/.herd/") && !rel.ends_with("herd.state.json") {
            sc = sc.file(&src, &rel.to_string_lossy());
        }
    }
    for name in ["base", "redis"] {
        for (src, dest) in store_files(name, "1", "/store")? {
            sc = sc.file(Path::new(&src), &dest);
        }
    }
    sc.mem_mib = 3072;
    Ok(Suite { result: sc.run() })
}

fn suite() -> &'static Suite {
    static SUITE: OnceLock<Result<Suite, String>> = OnceLock::new();
    match SUITE.get_or_init(setup) {
        Ok(s) => s,
        Err(e) => panic!("stack_testhost scenario could not start: {e}"),
    }
}

fn has(prefix: &str, want: &str) -> bool {
    suite()
        .result
        .lines
        .iter()
        .any(|l| l.starts_with(prefix) && l.contains(want))
}

fn check(prefix: &str, want: &str) {
    if !has(prefix, want) {
        suite()
            .result
            .fail(&format!("no {prefix:?} line with {want:?}"));
    }
}

#[test]
fn the_example_stack_comes_up_and_answers_the_client() {
    suite().result.assert_ok();
    check("stack-test: ", "up status=0");
    check("ps: ", "demo-web");
    check("ps: ", "demo-redis");
    check("ps: ", "10.20.0.2");
    check("verdict: ", "verdict: PASSED (1 passed, 0 failed, of 1)");
    check("client1: ", "<h1>");
    check("client1: ", "visits=1");
}

#[test]
fn kill_9_of_an_appliance_is_healed_by_the_supervisor() {
    check(
        "events: ",
        "redis  died (its herd died (killed?); restarting)",
    );
    check("events: ", "redis  restarted");
    check("client2: ", "visits=2");
}

#[test]
fn down_leaves_no_herd_tap_or_bridge_and_up_again_finds_the_data() {
    check("stack-test: ", "down status=0");
    check("stack-test: ", "herd processes: 0");
    if has("stack-test: links:", "herd-demo") || has("stack-test: links:", "hd-") {
        suite()
            .result
            .fail("a TAP or the bridge survived herd down");
    }
    check("stack-test: ", "up2 status=0");
    check("client3: ", "visits=3");
    check("stack-test: ", "down2 status=0");
    check("stack-test: ", "disks left: 0");
}
