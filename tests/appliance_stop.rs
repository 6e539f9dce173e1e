//! Graceful stop of Linux appliances, inside the emulated test host (QEMU
//! TCG with nested KVM; see tests/support/testhost.rs). One test-host boot
//! runs the scenario below; each test checks its part:
//!
//! - `herd stop` of a detached appliance with a service: Ctrl-Alt-Del
//!   reaches the herd init, which stops the service and leaves the data
//!   disk clean (the next boot replays no journal); herd exits 0 within
//!   the timeout;
//! - a guest whose init ignores Ctrl-Alt-Del is forced off after the
//!   timeout, and `herd stop` says so;
//! - SIGTERM to a foreground herd does the same graceful stop.
//!
//! Run it under the shared lock:
//! `flock /tmp/herd-testhost.lock cargo test --test appliance_stop`.

mod support;

use std::fs;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use support::images::image_dir;
use support::staging::{disk_create, write, TempDir};
use support::testhost::{shared, GuestRun, Scenario, ScenarioResult, TestHost};

/// Seconds `herd stop` gives the appliance; the guest needs a few.
const STOP_TIMEOUT_S: u32 = 30;
const DEAF_TIMEOUT_S: u32 = 3;

const SCRIPT: &str = r#"
G=/guest
B=$G/base.erofs
export HERD_RUNTIME=/run/herd-test HERD_TIMEOUT=240
say() { echo "stop-test: $*"; }
now() { cut -d' ' -f1 /proc/uptime; }
# since T0: seconds (with hundredths) since T0 from `now`
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
args="--kernel $G/vmlinux --root $B --mem 96"
# wait_log NAME TEXT SECONDS: until `herd logs NAME` shows TEXT
wait_log() {
	_t0=$(date +%s)
	until herd logs "$1" 2>/dev/null | grep -q "$2"; do
		[ $(($(date +%s) - _t0)) -ge "$3" ] && return 1
		sleep 0.5
	done
}

# 1. A detached appliance with a service, stopped with `herd stop`.
herd run --name svc --detach $args --disk $G/svc.img --cmdline quiet
say "detach exit=$?"
wait_log svc "herd-init: ready" 180 || say "svc never got ready"
herd ps | sed 's/^/stop-test: ps /'
t0=$(now)
herd stop svc --timeout STOP_TIMEOUT 2>&1 | sed 's/^/stop-test: stop says /'
say "stop took=$(since "$t0")"
herd ps --all --json | grep -E '"(state|exit_status|stop_reason)"' | sed 's/^/stop-test: after /'
echo "testhost: begin svc-console uptime=$(now)"
herd logs svc | sed 's/^/[guest] /'
echo "testhost: end svc-console exit=0 uptime=$(now)"
# The next boot of that disk: does ext4 replay a journal?
run_guest reboot run $args --disk $G/svc.img \
	--cmdline "herd.run=\"dmesg | grep EXT4-fs | sed 's/^/herd-test: /'\""

# 2. A guest that ignores Ctrl-Alt-Del: forced off after the timeout. Its
# init is a shell that traps SIGINT and does nothing (without the trap, ash
# exits on SIGINT and the kernel panics: init died).
herd run --name deaf --detach $args --cmdline 'init=/bin/sh -- -c "trap : INT; mount -t proc proc /proc; echo 0 >/proc/sys/kernel/ctrl-alt-del; echo herd-test: deaf-ready-$$; while true; do sleep 1; done"'
say "deaf detach exit=$?"
# deaf-ready-1 (its pid), which the kernel's own echo of the command line lacks
wait_log deaf "herd-test: deaf-ready-1" 180 || say "deaf never got ready"
t0=$(now)
herd stop deaf --timeout DEAF_TIMEOUT 2>&1 | sed 's/^/stop-test: deaf stop says /'
say "deaf stop took=$(since "$t0")"

# 3. SIGTERM to a foreground herd.
bg_guest fg /tmp/fg.out herd run $args --disk $G/fg.img --cmdline quiet </dev/null &
wait_for /tmp/fg.out "herd-init: ready" 180 || say "fg never got ready"
p=$(herd_pids fg.img)
t0=$(now)
say "SIGTERM to herd pid $p"
kill -TERM $p
wait
say "fg took=$(since "$t0")"
show fg /tmp/fg.out
exit 0
"#;

/// A data disk whose personality runs one chatty service.
fn make_disk(herd: &Path, work: &Path, host: &str) -> Result<std::path::PathBuf, String> {
    let dir = work.join(format!("p-{host}"));
    write(&dir.join("config/hostname"), &format!("{host}\n"))?;
    write(
        &dir.join("config/services"),
        "ticker sh -c 'while :; do date > /data/last-tick; sleep 1; done'\n",
    )?;
    write(&dir.join("data/hello"), "hello\n")?;
    let img = work.join(format!("{host}.img"));
    disk_create(herd, &dir, "16M", &img)?;
    Ok(img)
}

fn setup() -> Result<ScenarioResult, String> {
    TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
    let kernel = image_dir("kernel")?;
    let base = image_dir("base")?;
    let herd = Path::new(env!("CARGO_BIN_EXE_herd"));
    let work =
        TempDir(std::env::temp_dir().join(format!("herd-appliance-stop-{}", std::process::id())));
    let _ = fs::remove_dir_all(&work.0);
    fs::create_dir_all(&work.0).map_err(|e| format!("{}: {e}", work.0.display()))?;
    let script = SCRIPT
        .replace("STOP_TIMEOUT", &STOP_TIMEOUT_S.to_string())
        .replace("DEAF_TIMEOUT", &DEAF_TIMEOUT_S.to_string());
    let sc = Scenario::new("appliance_stop", &script)
        .herd(herd)
        .file(&kernel.join("vmlinux"), "vmlinux")
        .file(&base.join("base.erofs"), "base.erofs")
        .file(&make_disk(herd, &work.0, "svc")?, "svc.img")
        .file(&make_disk(herd, &work.0, "fg")?, "fg.img")
        .timeout(Duration::from_secs(600));
    Ok(sc.run())
}

fn result() -> &'static ScenarioResult {
    static RESULT: OnceLock<Result<ScenarioResult, String>> = OnceLock::new();
    shared(&RESULT, "appliance_stop", setup)
}

/// Every `stop-test: PREFIX…` line the scenario printed, without the prefix.
fn said(prefix: &str) -> Vec<&'static str> {
    let want = format!("stop-test: {prefix}");
    result()
        .lines
        .iter()
        .filter_map(|l| l.split_once(&want).map(|(_, rest)| rest.trim()))
        .collect()
}

fn said_one(prefix: &str) -> &'static str {
    said(prefix)
        .first()
        .copied()
        .unwrap_or_else(|| result().fail(&format!("the scenario never printed {prefix:?}")))
}

fn seconds(text: &str) -> f64 {
    text.parse()
        .unwrap_or_else(|_| result().fail(&format!("not a duration: {text:?}")))
}

fn run(name: &str) -> GuestRun<'static> {
    result().finished_run(name)
}

#[test]
fn herd_stop_shuts_the_appliance_down_cleanly_within_the_timeout() {
    let res = result();
    assert_eq!(said_one("detach exit="), "0");
    if said_one("ps ").is_empty() || !said("ps ").iter().any(|l| l.starts_with("svc ")) {
        res.fail("herd ps did not list svc");
    }
    let stop = said("stop says ").join("\n");
    if !stop.contains("svc stopped (guest exit code 0)") {
        res.fail(&format!(
            "herd stop did not report a clean power-off: {stop}"
        ));
    }
    let took = seconds(said_one("stop took="));
    if took >= f64::from(STOP_TIMEOUT_S) {
        res.fail(&format!(
            "herd stop took {took} s, the timeout is {STOP_TIMEOUT_S} s"
        ));
    }
    let console = run("svc-console");
    console.assert_contains("herd-init: shutdown (poweroff): stopping services and processes");
    console.assert_contains("herd-init: data disk clean");
    console.assert_contains("herd-init: poweroff");
    let after = said("after ").join(" ");
    if !after.contains("\"exit_status\": 0") || !after.contains("\"exited\"") {
        res.fail(&format!("herd ps --all after the stop: {after}"));
    }
}

#[test]
fn the_data_disk_needs_no_journal_replay_after_herd_stop() {
    let r = run("reboot");
    r.assert_exit(0);
    r.assert_contains("herd-test: ");
    if let Some(line) = r.find("recovery complete").or_else(|| r.find("orphan")) {
        r.fail(&format!("the next boot replayed the journal: {line}"));
    }
}

#[test]
fn a_guest_that_ignores_the_request_is_forced_off_after_the_timeout() {
    let res = result();
    assert_eq!(said_one("deaf detach exit="), "0");
    let stop = said("deaf stop says ").join("\n");
    if !stop.contains("forced off") || !stop.contains(&format!("within {DEAF_TIMEOUT_S} s")) {
        res.fail(&format!("herd stop of the deaf guest: {stop}"));
    }
    let took = seconds(said_one("deaf stop took="));
    if took < f64::from(DEAF_TIMEOUT_S) || took > f64::from(DEAF_TIMEOUT_S) + 10.0 {
        res.fail(&format!(
            "forced after {took} s, the timeout is {DEAF_TIMEOUT_S} s"
        ));
    }
}

#[test]
fn sigterm_to_a_foreground_herd_stops_the_guest_gracefully() {
    let r = run("fg");
    r.assert_exit(0);
    r.assert_contains("asked the guest to power off");
    r.assert_contains("herd-init: shutdown (poweroff): stopping services and processes");
    r.assert_contains("herd-init: data disk clean");
    r.assert_contains("guest exit code 0");
}
