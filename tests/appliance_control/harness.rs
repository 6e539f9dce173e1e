//! The harness of the appliance_control tests: a private runtime
//! directory per test and helpers to run herd against it.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::herd_run;
use crate::support::probes::{herd_bin, probe_path};

pub const PVH: &str = "probe-pvh.elf";
/// Bounds every wait: a hung herd fails its test instead of the suite.
pub const WAIT: Duration = Duration::from_secs(20);

pub fn kvm_present() -> bool {
    herd_run::kvm_present("appliance_control")
}

/// A private runtime directory; every appliance left running is killed
/// (SIGKILL) and the directory removed when the test ends.
pub struct Runtime {
    pub dir: PathBuf,
}

impl Runtime {
    pub fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("herd-rt-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Runtime { dir }
    }

    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(herd_bin());
        cmd.args(args)
            .env("HERD_RUNTIME", &self.dir)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null());
        cmd
    }

    pub fn herd(&self, args: &[&str]) -> Output {
        let what = format!("herd {args:?}");
        let run = herd_run::run_with_timeout(self.cmd(args), WAIT, &what);
        Output {
            status: run.status,
            stdout: run.stdout.into_bytes(),
            stderr: run.stderr.into_bytes(),
        }
    }

    /// Starts a detached probe; panics unless `herd run --detach` succeeds.
    pub fn start(&self, name: &str, cmdline: &str, extra: &[&str]) -> Output {
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

    pub fn path(&self, name: &str, file: &str) -> PathBuf {
        self.dir.join(name).join(file)
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let out = self.herd(args);
        assert!(out.status.success(), "herd {args:?}: {}", dump(&out));
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", dump(&out)))
    }

    pub fn console(&self, name: &str) -> String {
        std::fs::read_to_string(self.path(name, "console.log")).unwrap_or_default()
    }

    /// Waits until the console log satisfies `pred`.
    pub fn wait_console(&self, name: &str, what: &str, pred: impl Fn(&str) -> bool) -> String {
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

    pub fn pid(&self, name: &str) -> libc::pid_t {
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

pub fn dump(out: &Output) -> String {
    format!(
        "status {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The highest `probe: tick N` on the console.
pub fn last_tick(console: &str) -> u64 {
    console
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix("probe: tick "))
        .filter_map(|n| n.parse().ok())
        .max()
        .unwrap_or(0)
}

/// Sends raw bytes to the control socket and returns whatever comes back.
pub fn raw(socket: &Path, bytes: &[u8]) -> String {
    let mut s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(bytes).unwrap();
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer
}

pub fn status_of(answer: &str) -> u16 {
    answer
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP answer: {answer:?}"))
}
