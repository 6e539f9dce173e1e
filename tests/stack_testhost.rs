//! The example stack (guest-images/stacks/demo: web + redis + a client
//! that uses both) with Linux appliances inside the emulated test host
//! (QEMU TCG with nested KVM; see tests/support/testhost.rs): one command
//! brings it up, the client gets the page and counts a visit in redis,
//! `herd ps` lists it, `kill -9` of redis's herd is healed by the
//! supervisor, `herd down` leaves no herd, TAP or bridge, and the next `up`
//! finds redis's data; redis upgraded to a good image keeps its data, to
//! a failing one is rolled back; then 10 client replicas against one web server
//! and a failing client give one verdict. One test-host boot runs the scenario; each test
//! checks its part. Run under the shared lock:
//! `flock /tmp/herd-testhost.lock cargo test --test stack_testhost`.

#[path = "image_appliances/store.rs"]
mod store;
mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use store::{example, herd, repo, store_images};
use support::testhost::{shared, Scenario, ScenarioResult, TestHost};

const SCRIPT: &str = r#"
export HERD_HOME=/store
say() { echo "stack-test: $*"; }
# wait_exit NAME: until the appliance's job has ended.
wait_exit() {
	i=0
	until herd ps -a | grep -q "^$1 .*exited" || [ $i -gt 600 ]; do sleep 1; i=$((i + 1)); done
}
# client TAG: the client job once more (up --exit), its verdict and output.
client() {
	herd up --exit client >/tmp/verdict 2>&1
	st=$?
	sed 's/^/verdict: /' /tmp/verdict
	say "client status=$st"
	herd logs demo-client | tr -d '\r' | grep -E '<h1>|visits=' | sed "s/^/client$1: /"
}
cd /guest/stacks/demo || exit 1
herd up -d >/tmp/up 2>&1
say "up status=$?"
sed 's/^/up: /' /tmp/up
herd ps | sed 's/^/ps: /'
wait_exit demo-client
herd logs demo-client | tr -d '\r' | grep -E '<h1>|visits=' | sed 's/^/client0: /'
client 1
# kill -9 redis's herd: the supervisor (restart = on-failure) restarts it.
kill -9 "$(cat /run/herd/demo-redis/pid)"
i=0
until herd events | grep -q 'redis  restarted' || [ $i -gt 300 ]; do sleep 1; i=$((i + 1)); done
herd events | sed 's/^/events: /'
herd ps | sed 's/^/ps2: /'
client 2
# Upgrades: redis:2 comes up healthy and keeps the data; redis:3 never
# listens, so it is rolled back to redis:2, which serves again.
herd upgrade redis --image redis:2 --timeout 300 >/tmp/upgrade 2>&1
say "upgrade status=$?"
sed 's/^/upgrade: /' /tmp/upgrade
client 4
herd upgrade redis --image redis:3 --timeout 60 >/tmp/upgrade 2>&1
say "bad upgrade status=$?"
sed 's/^/badupgrade: /' /tmp/upgrade
herd ps | sed 's/^/ps3: /'
client 5
herd down
say "down status=$?"
sleep 1
say "herd processes: $(ps -o args | grep -c '^[h]erd \|/[h]erd ')"
say "links: $(ls /sys/class/net | tr '\n' ' ')"
# Up again: the disks were kept, redis still has the visits, and runs the
# image it was upgraded to (the state file).
herd up -d >/dev/null 2>&1
say "up2 status=$?"
wait_exit demo-client
herd logs demo-client | tr -d '\r' | grep -E 'visits=' | sed 's/^/client3: /'
herd ps | sed 's/^/ps4: /'
herd down --volumes
say "down2 status=$?"
say "disks left: $(ls .herd/demo/ 2>/dev/null | grep -c img)"

# Load test: 10 client replicas against one web server, and one client
# that fails (a page that does not exist), one verdict.
mkdir -p /tmp/load && cd /tmp/load || exit 1
cat >herd.toml <<'EOF'
name = "load"
[network]
name = "herd-load"
subnet = "10.21.0.1/24"
[defaults]
image = "base"
mem = 96
cmdline = "quiet"
[appliances.web]
personality = "/guest/personalities/web"
disk_size = "16M"
health = { http = "/", port = 80, retries = 300 }
[appliances.client]
replicas = 10
personality = "/guest/stacks/demo/client"
disk_size = "8M"
depends_on = ["web"]
run = "wget -qO- http://web/ | grep -q '<h1>'"
[appliances.broken]
personality = "/guest/stacks/demo/client"
disk_size = "8M"
depends_on = ["web"]
run = "wget -qO- http://web/missing.html"
EOF
herd up --exit client broken >/tmp/load.out 2>&1
say "load status=$?"
sed 's/^/load: /' /tmp/load.out
herd down --volumes >/dev/null 2>&1
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
    // redis:2, the same image again; redis:3, whose redis never listens.
    let defs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("herd-stack-defs");
    std::fs::create_dir_all(&defs).map_err(|e| e.to_string())?;
    let redis = std::fs::read_to_string(repo().join("guest-images/images/redis.toml"))
        .map_err(|e| e.to_string())?;
    let files = repo().join("guest-images/images/redis");
    let files_line = format!("files = {:?}", files.display().to_string());
    for (version, service) in [("2", None), ("3", Some("redis = \"exec sleep 3600\""))] {
        let mut def = redis
            .replace("version = \"1\"", &format!("version = \"{version}\""))
            .replace("files = \"redis\"", &files_line);
        if let Some(service) = service {
            let start = def
                .find("[services]")
                .ok_or("redis.toml has no [services]")?;
            let end = def[start..].find("\n\n").map_or(def.len(), |e| start + e);
            def.replace_range(start..end, &format!("[services]\n{service}"));
        }
        let path = defs.join(format!("redis{version}.toml"));
        std::fs::write(&path, def).map_err(|e| e.to_string())?;
        store::build(&path)?;
    }
    let mut sc = Scenario::new("stack_testhost", SCRIPT)
        .herd(herd())
        .timeout(Duration::from_secs(1500));
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
    let mut sc = sc.files(store_images(&[
        ("base", "1"),
        ("redis", "1"),
        ("redis", "2"),
        ("redis", "3"),
    ])?);
    sc.mem_mib = 3072;
    Ok(Suite { result: sc.run() })
}

fn suite() -> &'static Suite {
    static SUITE: OnceLock<Result<Suite, String>> = OnceLock::new();
    shared(&SUITE, "stack_testhost", setup)
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
    check("client0: ", "<h1>");
    check("client0: ", "visits=1");
    check("verdict: ", "verdict: PASSED (1 passed, 0 failed, of 1)");
    check("stack-test: ", "client status=0");
    check("client1: ", "visits=2");
}

#[test]
fn kill_9_of_an_appliance_is_healed_by_the_supervisor() {
    check(
        "events: ",
        "redis  died (its herd died (killed?); restarting)",
    );
    check("events: ", "redis  restarted");
    check("client2: ", "visits=3");
}

#[test]
fn upgrade_keeps_the_data_and_a_failing_image_is_rolled_back() {
    check("stack-test: ", "upgrade status=0");
    check("upgrade: ", "herd: redis upgraded to redis:2");
    check("client4: ", "visits=4");
    check("stack-test: ", "bad upgrade status=1");
    check("badupgrade: ", "upgrade of redis to redis:3 failed");
    check("badupgrade: ", "rolled back: it runs redis:2 again");
    check("ps3: ", "redis:2");
    check("client5: ", "visits=5");
    // `up` after the upgrade keeps redis:2.
    check("ps4: ", "redis:2");
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
    check("client3: ", "visits=6");
    check("stack-test: ", "down2 status=0");
    check("stack-test: ", "disks left: 0");
}

#[test]
fn ten_linux_client_replicas_get_one_verdict_with_the_failure_tail() {
    check("load: ", "verdict: FAILED (10 passed, 1 failed, of 11)");
    check("load: ", "exit statuses: 0 x10, 1 x1");
    check("load: ", "run time: p50 ");
    check("load: ", "failed: broken (load-broken): exit status 1");
    // broken's console tail: wget's complaint about the missing page.
    check("load:   | ", "404");
    check("stack-test: ", "load status=1");
}
