//! The stack_cli tests' harness: a private stack directory, runtime
//! directory and image store per test, and herd run against them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::herd_run::{run_with_timeout, Run};
use crate::support::probes::{herd_bin, probe_path};

pub const WAIT: Duration = Duration::from_secs(120);

pub struct Dir {
    pub path: PathBuf,
}

impl Dir {
    pub fn new(test: &str) -> Self {
        let path = std::env::temp_dir().join(format!("herd-stack-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(path.join("rt")).unwrap();
        std::fs::create_dir_all(path.join("store")).unwrap();
        Dir { path }
    }

    pub fn write(&self, text: &str) -> PathBuf {
        let f = self.path.join("herd.toml");
        std::fs::write(&f, text).unwrap();
        f
    }

    /// `herd ARGS` in the stack directory, with its runtime directory and
    /// image store, and no VM cap.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(herd_bin());
        cmd.args(args)
            .current_dir(&self.path)
            .env("HERD_RUNTIME", self.path.join("rt"))
            .env("HERD_HOME", self.path.join("store"))
            .env_remove("HERD_MAX_VMS")
            .stdin(Stdio::null());
        cmd
    }

    pub fn herd(&self, args: &[&str]) -> Run {
        run_with_timeout(self.cmd(args), WAIT, &format!("herd {args:?}"))
    }

    /// Appliances with a runtime directory (any that ever started).
    pub fn started(&self) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(self.path.join("rt"))
            .unwrap()
            .flatten()
            .filter(|e| e.path().join("lock").exists())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    pub fn ps(&self) -> Vec<serde_json::Value> {
        let out = self.herd(&["ps", "--all", "--json"]);
        assert!(out.status.success(), "{}", out.dump());
        serde_json::from_str::<serde_json::Value>(&out.stdout)
            .unwrap()
            .as_array()
            .cloned()
            .unwrap()
    }

    pub fn running(&self) -> Vec<String> {
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

/// A stack file's head: NAME, and defaults booting `kbd` probes (which
/// power off on Ctrl-Alt-Del: a graceful stop), healthy once listening.
pub fn kbd_stack(name: &str) -> String {
    format!(
        "name = \"{name}\"\n[defaults]\nkernel = \"{}\"\nmem = 32\ncmdline = \"probe.action=kbd\"\n\
         health = {{ console = \"probe: kbd listening\", interval = 0.1 }}\n",
        probe()
    )
}

pub fn probe() -> String {
    probe_path("probe-pvh.elf").display().to_string()
}

pub fn one_line_error(out: &Run) -> &str {
    let lines: Vec<&str> = out.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "want one error line: {}", out.dump());
    lines[0]
}
