//! Running herd (or any child) from a test without letting it hang the
//! suite: the /dev/kvm skip rule, a child's collected output ([`Run`]), pipe
//! draining, waiting with a deadline and a kill-on-drop guard.
//!
//! Use from `tests/<x>.rs` with `mod support;` and `support::herd_run::…`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, Once};
use std::thread;
use std::time::{Duration, Instant};

use super::probes::kvm_available;

/// Writes `SKIP: <why> — <what> did not run` straight to fd 2: the test
/// harness captures eprintln!, and a skip must be seen.
pub fn skip_notice(why: &str, what: &str) {
    let _ = writeln!(std::io::stderr(), "SKIP: {why} — {what} did not run");
}

/// False (after one loud line per test binary) only when /dev/kvm is absent.
/// If it exists the tests must run, so an unusable one is a failure.
/// `binary` names the tests in the SKIP line ("VM tests in <binary>").
pub fn kvm_present(binary: &str) -> bool {
    static SKIP_NOTICE: Once = Once::new();
    if !Path::new("/dev/kvm").exists() {
        SKIP_NOTICE.call_once(|| {
            skip_notice("/dev/kvm absent", &format!("VM tests in {binary}"));
        });
        return false;
    }
    assert!(
        kvm_available(),
        "/dev/kvm exists but cannot be opened read-write"
    );
    true
}

/// What a finished child did.
pub struct Run {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Status and both outputs, for assertion messages.
    pub fn dump(&self) -> String {
        format!(
            "status: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status, self.stdout, self.stderr
        )
    }

    /// Stdout's lines without the serial console's trailing `\r`.
    pub fn lines(&self) -> impl Iterator<Item = &str> {
        self.stdout.lines().map(|l| l.trim_end_matches('\r'))
    }

    /// Whether stdout has exactly the line `want` (see [`Run::lines`]).
    pub fn has_line(&self, want: &str) -> bool {
        self.lines().any(|l| l == want)
    }
}

/// Kills and reaps the child if it is still running when dropped, so a
/// failed assertion never leaves a spinning VM (or helper) behind.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}

/// Drains a pipe on its own thread so a chatty guest cannot block herd.
pub fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = pipe.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Reads `pipe` line by line on its own thread, sending on the returned
/// channel each time a line satisfies `marker`; the thread returns every
/// line it read (each with `\n`) once the pipe closes.
pub fn watch_lines(
    pipe: impl Read + Send + 'static,
    marker: impl Fn(&str) -> bool + Send + 'static,
) -> (mpsc::Receiver<()>, thread::JoinHandle<String>) {
    let (tx, rx) = mpsc::channel();
    let reader = thread::spawn(move || {
        let mut seen = String::new();
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            seen.push_str(&line);
            seen.push('\n');
            if marker(&line) {
                let _ = tx.send(());
            }
        }
        seen
    });
    (rx, reader)
}

/// Waits for the child until `deadline`; kills it and returns None on timeout.
pub fn wait_until(child: &mut Child, deadline: Instant) -> Option<ExitStatus> {
    loop {
        match child.try_wait().expect("try_wait on child") {
            Some(status) => return Some(status),
            None if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            None => thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// Runs `cmd` (stdin from /dev/null, output collected) for at most
/// `timeout`: the exit status, or None if it had to be killed, and what it
/// printed either way.
fn run_collecting(cmd: &mut Command, timeout: Duration) -> (Option<ExitStatus>, String, String) {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let out = drain(child.stdout.take().expect("stdout"));
    let err = drain(child.stderr.take().expect("stderr"));
    let status = wait_until(&mut child, Instant::now() + timeout);
    (status, out.join().unwrap(), err.join().unwrap())
}

/// Runs `cmd` to completion within `timeout`; None if it had to be killed.
pub fn output_within(cmd: &mut Command, timeout: Duration) -> Option<Run> {
    let (status, stdout, stderr) = run_collecting(cmd, timeout);
    status.map(|status| Run {
        status,
        stdout,
        stderr,
    })
}

/// Runs `cmd` to completion within `timeout`, or kills it and panics with
/// `what` ("herd (…)") and everything it printed.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration, what: &str) -> Run {
    match run_collecting(&mut cmd, timeout) {
        (Some(status), stdout, stderr) => Run {
            status,
            stdout,
            stderr,
        },
        (None, stdout, stderr) => panic!(
            "{what} still running after {timeout:?}; killed\n\
             --- stdout ---\n{stdout}\n--- stderr ---\n{stderr}"
        ),
    }
}
