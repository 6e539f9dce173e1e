//! Confinement, checked from outside on the local /dev/kvm with probe
//! guests: by default every herd thread runs under its seccomp filter, a
//! forbidden system call ends herd with status 159 naming the call and the
//! thread (through the test-only trigger port that only test builds have),
//! and with `--no-seccomp` no thread is filtered and herd says so loudly.
//! As root (as these tests run in CI) herd jails itself by default: its VM
//! process sees only the jail, runs as the unprivileged `herd` user with no
//! capabilities, holds no host file but the VM's, a named appliance stays
//! reachable from outside, and bad jail inputs are clear errors.

mod support;

use std::fs;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use support::herd_run::{self, drain, watch_lines};
use support::probes::{herd_bin, probe_path};
use support::staging::TempDir;

const TIMEOUT: Duration = Duration::from_secs(20);
const PROBE: &str = "probe-linux64.elf";
const EXIT_BAD_SYSCALL: i32 = 159;

fn kvm_present() -> bool {
    herd_run::kvm_present("confinement")
}

/// herd with its defaults: jailed (as root) and filtered.
fn herd_cmd(action: &str, extra: &[&str]) -> Command {
    plain_herd_cmd(action, extra)
}

/// herd with every confinement turned off.
fn unconfined_herd_cmd(action: &str, extra: &[&str]) -> Command {
    let mut cmd = plain_herd_cmd(action, &["--no-seccomp", "--no-jail"]);
    cmd.args(extra);
    cmd
}

fn plain_herd_cmd(action: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(herd_bin());
    cmd.arg("run")
        .arg("--kernel")
        .arg(probe_path(PROBE))
        .arg("--cmdline")
        .arg(format!("probe.action={action}"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

/// A herd whose guest is spinning, with its output being collected.
struct Spinning {
    child: support::herd_run::ChildGuard,
    stdout: Option<JoinHandle<String>>,
    stderr: Option<JoinHandle<String>>,
}

impl Spinning {
    fn start(extra: &[&str]) -> Spinning {
        Spinning::spawn(herd_cmd("spin", extra))
    }

    fn spawn(mut cmd: Command) -> Spinning {
        let mut child: Child = cmd.spawn().expect("spawn herd");
        let stderr = drain(child.stderr.take().expect("stderr"));
        let (rx, stdout) = watch_lines(child.stdout.take().expect("stdout"), |l| {
            l.starts_with("probe: spinning")
        });
        let mut spinning = Spinning {
            child: support::herd_run::ChildGuard(child),
            stdout: Some(stdout),
            stderr: Some(stderr),
        };
        if rx.recv_timeout(TIMEOUT).is_err() {
            panic!("guest never reported spinning\n{}", spinning.finish());
        }
        spinning
    }

    fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Stops herd (SIGTERM, as a service manager would; SIGKILL if that
    /// fails) and returns what it printed.
    fn finish(&mut self) -> String {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits pid_t");
        // SAFETY: kill(2) on our own, not yet reaped, child.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let stopped = herd_run::wait_until(&mut self.child.0, std::time::Instant::now() + TIMEOUT);
        if stopped.is_none() {
            let _ = self.child.0.kill();
            let _ = self.child.0.wait();
        }
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default(),
            self.stderr
                .take()
                .map(|h| h.join().unwrap())
                .unwrap_or_default()
        )
    }
}

/// The process running the VM: herd itself, or (jailed) the child it
/// started in new namespaces: whichever has a `herd-vcpu0` thread.
fn vm_process(pid: u32) -> u32 {
    let has_vcpu = |pid: u32| {
        fs::read_dir(format!("/proc/{pid}/task"))
            .map(|tasks| {
                tasks.flatten().any(|t| {
                    fs::read_to_string(t.path().join("comm"))
                        .is_ok_and(|c| c.trim() == "herd-vcpu0")
                })
            })
            .unwrap_or(false)
    };
    if has_vcpu(pid) {
        return pid;
    }
    let children =
        fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    children
        .split_whitespace()
        .filter_map(|c| c.parse().ok())
        .find(|&c| has_vcpu(c))
        .unwrap_or_else(|| panic!("no process with a herd-vcpu0 thread under pid {pid}"))
}

/// (thread name, Seccomp mode from /proc/PID/task/TID/status) per thread.
fn thread_seccomp_modes(pid: u32) -> Vec<(String, String)> {
    fs::read_dir(format!("/proc/{pid}/task"))
        .expect("read task dir")
        .flatten()
        .map(|t| {
            let name = fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            let status = fs::read_to_string(t.path().join("status")).unwrap_or_default();
            let mode = status
                .lines()
                .find_map(|l| l.strip_prefix("Seccomp:"))
                .unwrap_or("?")
                .trim()
                .to_owned();
            (name.trim().to_owned(), mode)
        })
        .collect()
}

#[test]
fn every_thread_runs_filtered_by_default() {
    if !kvm_present() {
        return;
    }
    let mut herd = Spinning::start(&["--cpus", "2"]);
    let modes = thread_seccomp_modes(vm_process(herd.pid()));
    let out = herd.finish();
    assert!(
        modes.iter().any(|(n, _)| n == "herd-vcpu1"),
        "{modes:?}\n{out}"
    );
    // Mode 2 is SECCOMP_MODE_FILTER.
    assert!(modes.iter().all(|(_, m)| m == "2"), "{modes:?}\n{out}");
}

#[test]
fn no_seccomp_leaves_threads_unfiltered_and_says_so() {
    if !kvm_present() {
        return;
    }
    let mut herd = Spinning::spawn(unconfined_herd_cmd("spin", &["--cpus", "2"]));
    let modes = thread_seccomp_modes(vm_process(herd.pid()));
    let out = herd.finish();
    assert!(
        modes.iter().any(|(n, _)| n == "herd-vcpu1"),
        "{modes:?}\n{out}"
    );
    assert!(modes.iter().all(|(_, m)| m == "0"), "{modes:?}\n{out}");
    assert!(
        out.contains("herd: WARNING: --no-seccomp: seccomp filters are OFF"),
        "{out}"
    );
}

/// A named appliance's API thread (and its connection threads) run under
/// their filter too, and every control command works through it.
#[test]
fn named_appliance_api_threads_are_filtered_too() {
    if !kvm_present() {
        return;
    }
    let dir = scratch("api");
    let runtime = dir.0.join("run");
    let mut cmd = herd_cmd("spin", &["--name", "filtered"]);
    cmd.env("HERD_RUNTIME", &runtime);
    let mut herd = Spinning::spawn(cmd);
    let control = |args: &[&str]| {
        Command::new(herd_bin())
            .args(args)
            .env("HERD_RUNTIME", &runtime)
            .output()
            .expect("run herd")
    };
    let metrics = control(&["inspect", "filtered"]);
    let paused = control(&["pause", "filtered"]);
    let resumed = control(&["resume", "filtered"]);
    let ps = control(&["ps", "--json"]);
    let modes = thread_seccomp_modes(vm_process(herd.pid()));
    let stopped = control(&["stop", "filtered", "--timeout", "1"]);
    let out = herd.finish();
    for (what, o) in [
        ("inspect", &metrics),
        ("pause", &paused),
        ("resume", &resumed),
        ("ps", &ps),
        ("stop", &stopped),
    ] {
        assert!(
            o.status.success(),
            "herd {what}: {}\n{}\n{out}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
    }
    let ps = String::from_utf8_lossy(&ps.stdout);
    assert!(ps.contains("\"herd_rss_bytes\""), "{ps}\n{out}");
    assert!(modes.iter().any(|(n, _)| n == "herd-api"), "{modes:?}");
    assert!(modes.iter().all(|(_, m)| m == "2"), "{modes:?}\n{out}");
    assert!(!out.contains("seccomp: thread"), "{out}");
}

#[test]
fn forbidden_syscall_ends_herd_with_159_naming_call_and_thread() {
    if !kvm_present() {
        return;
    }
    let run = herd_run::run_with_timeout(
        herd_cmd("seccomp-trigger", &[]),
        TIMEOUT,
        "herd with the seccomp trigger",
    );
    assert_eq!(run.code(), Some(EXIT_BAD_SYSCALL), "{}", run.dump());
    assert!(
        run.stderr.contains(
            "seccomp: thread herd-vcpu0 (vcpu filter) made the forbidden system call socket (41)"
        ),
        "{}",
        run.dump()
    );
    assert!(!run.stdout.contains("herd survived"), "{}", run.dump());
}

#[test]
fn trigger_is_harmless_without_filters() {
    if !kvm_present() {
        return;
    }
    // Proves the trigger really makes the call: without filters herd lives
    // on and the probe reports that (exit 1).
    let run = herd_run::run_with_timeout(
        unconfined_herd_cmd("seccomp-trigger", &[]),
        TIMEOUT,
        "herd with the seccomp trigger, unfiltered",
    );
    assert_eq!(run.code(), Some(1), "{}", run.dump());
    assert!(
        run.stdout
            .contains("probe: herd survived the forbidden system call"),
        "{}",
        run.dump()
    );
}

fn scratch(name: &str) -> TempDir {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("confinement-{}-{name}", std::process::id()));
    fs::create_dir_all(&dir).expect("scratch dir");
    TempDir(dir)
}

/// vsock's host side (accepting, reading `CONNECT`, its timer) runs on the
/// filtered event loop: a host client must not trip the filter.
#[test]
fn vsock_host_client_under_the_filters() {
    if !kvm_present() {
        return;
    }
    let dir = scratch("vsock");
    let socket = dir.0.join("v.sock");
    let mut herd = Spinning::start(&["--vsock", socket.to_str().unwrap()]);
    let answer = std::os::unix::net::UnixStream::connect(&socket).map(|mut s| {
        use std::io::{Read, Write};
        let _ = s.set_read_timeout(Some(Duration::from_secs(3)));
        let _ = s.write_all(b"CONNECT 5000\n");
        let mut answer = String::new();
        // The probe has no vsock driver: herd closes the connection.
        let _ = s.read_to_string(&mut answer);
        answer
    });
    let out = herd.finish();
    assert!(answer.is_ok(), "{answer:?}\n{out}");
    assert!(!out.contains("seccomp: thread"), "{out}");
    assert!(out.contains("stopped by signal 15"), "{out}");
    assert!(!socket.exists(), "the vsock socket outlived herd\n{out}");
}

#[path = "confinement/jail.rs"]
mod jail;
