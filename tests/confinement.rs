//! Confinement, checked from outside on the local /dev/kvm with probe
//! guests: every herd thread runs under its seccomp filter by default, a
//! forbidden system call ends herd with status 159 naming the call and the
//! thread (through the test-only trigger port that only test builds have),
//! and `--no-seccomp` turns the filters off loudly.

mod support;

use std::fs;
use std::process::{Child, Command, Stdio};
use std::thread::JoinHandle;
use std::time::Duration;

use support::herd_run::{self, drain, watch_lines};
use support::probes::{herd_bin, probe_path};

const TIMEOUT: Duration = Duration::from_secs(20);
const PROBE: &str = "probe-linux64.elf";
const EXIT_BAD_SYSCALL: i32 = 159;

fn kvm_present() -> bool {
    herd_run::kvm_present("confinement")
}

fn herd_cmd(action: &str, extra: &[&str]) -> Command {
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
        let mut child: Child = herd_cmd("spin", extra).spawn().expect("spawn herd");
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

    /// Kills herd and returns what it printed.
    fn finish(&mut self) -> String {
        let _ = self.child.0.kill();
        let _ = self.child.0.wait();
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
    let mut herd = Spinning::start(&["--no-seccomp"]);
    let modes = thread_seccomp_modes(vm_process(herd.pid()));
    let out = herd.finish();
    assert!(modes.iter().all(|(_, m)| m == "0"), "{modes:?}\n{out}");
    assert!(
        out.contains("--no-seccomp: every system call is allowed"),
        "{out}"
    );
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
        herd_cmd("seccomp-trigger", &["--no-seccomp"]),
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
