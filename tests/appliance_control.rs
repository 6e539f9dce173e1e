//! Named, detached appliances on the local /dev/kvm with probe guests: the
//! runtime directory, `herd ps/inspect/logs/stop/kill/pause/resume`, the
//! control API (including hostile clients) and graceful stop through the
//! emulated i8042 (the probe's `kbd` actions play a guest's keyboard
//! driver). Each test has its own HERD_RUNTIME, so they run in parallel.

mod support;

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use support::herd_run::{self, wait_until, ChildGuard};
use support::probes::{herd_bin, probe_path};

const PVH: &str = "probe-pvh.elf";
/// Bounds every wait: a hung herd fails its test instead of the suite.
const WAIT: Duration = Duration::from_secs(20);

fn kvm_present() -> bool {
    herd_run::kvm_present("appliance_control")
}

/// A private runtime directory; every appliance left running is killed
/// (SIGKILL) and the directory removed when the test ends.
struct Runtime {
    dir: PathBuf,
}

impl Runtime {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("herd-rt-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Runtime { dir }
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(herd_bin());
        cmd.args(args)
            .env("HERD_RUNTIME", &self.dir)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        cmd
    }

    fn herd(&self, args: &[&str]) -> Output {
        let what = format!("herd {args:?}");
        let run = herd_run::run_with_timeout(self.cmd(args), WAIT, &what);
        Output {
            status: run.status,
            stdout: run.stdout.into_bytes(),
            stderr: run.stderr.into_bytes(),
        }
    }

    /// Starts a detached probe; panics unless `herd run --detach` succeeds.
    fn start(&self, name: &str, cmdline: &str, extra: &[&str]) -> Output {
        let kernel = probe_path(PVH);
        let mut args = vec![
            "run",
            "--name",
            name,
            "--detach",
            "--kernel",
            kernel.to_str().unwrap(),
            "--mem",
            "64",
            "--cmdline",
            cmdline,
        ];
        args.extend_from_slice(extra);
        let out = self.herd(&args);
        assert!(
            out.status.success(),
            "herd run --detach {name}: {}",
            dump(&out)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), name);
        out
    }

    fn path(&self, name: &str, file: &str) -> PathBuf {
        self.dir.join(name).join(file)
    }

    fn json(&self, args: &[&str]) -> Value {
        let out = self.herd(args);
        assert!(out.status.success(), "herd {args:?}: {}", dump(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", dump(&out)))
    }

    fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name, "console.log")).unwrap_or_default()
    }

    /// Waits until the console log satisfies `pred`.
    fn wait_console(&self, name: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            let text = self.console(name);
            if pred(&text) {
                return text;
            }
            assert!(
                Instant::now() < deadline,
                "{name}: no {what} on the console:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn pid(&self, name: &str) -> libc::pid_t {
        std::fs::read_to_string(self.path(name, "pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        if let Ok(entries) = std::fs::read_dir(&self.dir) {
            for e in entries.flatten() {
                if let Ok(pid) = std::fs::read_to_string(e.path().join("pid")) {
                    if let Ok(pid) = pid.trim().parse::<libc::pid_t>() {
                        // SAFETY: kill(2) on a herd this test started.
                        unsafe { libc::kill(pid, libc::SIGKILL) };
                    }
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn dump(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The highest `probe: tick N` on the console.
fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("probe: tick "))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Sends raw bytes to the control socket and returns whatever comes back.
fn raw(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}

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

    let logs = rt.herd(&["logs", "tick1", "-n", "1"]);
    let logs = String::from_utf8_lossy(&logs.stdout);
    assert_eq!(logs.lines().count(), 1, "{logs}");
    assert!(logs.starts_with("probe: tick "), "{logs}");

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

#[test]
fn hostile_clients_do_not_disturb_the_vm() {
    if !kvm_present() {
        return;
    }
    let rt = Runtime::new("hostile");
    rt.start("h", "probe.action=tick", &[]);
    let sock = rt.path("h", "api.sock");

    let answer = raw(&sock, b"\x16\x03\x01garbage\r\n\r\n");
    assert_eq!(status_of(&answer), 400, "{answer}");
    assert!(answer.contains("\"error\""), "{answer}");
    let mut huge = b"GET /v1/vm HTTP/1.1\r\nX-Big: ".to_vec();
    huge.resize(64 * 1024, b'a');
    assert_eq!(status_of(&raw(&sock, &huge)), 431);
    let mut many = b"GET /v1/vm HTTP/1.1\r\n".to_vec();
    for i in 0..100 {
        many.extend_from_slice(format!("X-{i}: y\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status_of(&raw(&sock, &many)), 431);
    let answer = raw(&sock, b"GET /v1/nothing HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&answer), 404, "{answer}");
    let answer = raw(&sock, b"DELETE /v1/vm HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&answer), 405, "{answer}");
    assert!(answer.contains("Allow: GET"), "{answer}");
    let answer = raw(
        &sock,
        b"POST /v1/vm/stop HTTP/1.1\r\nContent-Length: 9\r\n\r\nnot json!",
    );
    assert_eq!(status_of(&answer), 400, "{answer}");
    let answer = raw(
        &sock,
        b"POST /v1/vm/stop HTTP/1.1\r\nContent-Length: 99999999\r\n\r\n",
    );
    assert_eq!(status_of(&answer), 413, "{answer}");

    // Half a request, then the client hangs up its side: no answer needed,
    // nothing disturbed.
    let mut half = UnixStream::connect(&sock).unwrap();
    half.write_all(b"GET /v1/vm HTT").unwrap();
    half.shutdown(std::net::Shutdown::Write).unwrap();
    half.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut rest = String::new();
    let _ = half.read_to_string(&mut rest);
    assert!(rest.is_empty(), "answered a half request: {rest}");
    // A client that sends nothing gets 408 after the request timeout, and
    // a crowd of them gets 503s, while real requests still go through.
    let idle: Vec<UnixStream> = (0..12)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let answer = raw(&sock, b"GET /v1/vm HTTP/1.1\r\n\r\n");
    assert_eq!(status_of(&answer), 503, "{answer}");
    for mut c in idle {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut a = String::new();
        let _ = c.read_to_string(&mut a);
        let status = status_of(&a);
        assert!(status == 408 || status == 503, "{a}");
    }
    let before = last_tick(&rt.console("h"));
    let vm = rt.json(&["inspect", "h"]);
    assert_eq!(vm["vm"]["state"], "running", "{vm}");
    rt.wait_console("h", "ticks after the abuse", |c| last_tick(c) > before);
    let answer = raw(&sock, b"GET /v1/vm HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status_of(&answer), 200, "{answer}");
}

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
