//! What `herd run --name NAME` adds to a plain run: the runtime directory,
//! the control and console sockets, the detach handshake and systemd's
//! readiness notification.

use std::os::fd::RawFd;
use std::path::{Path, PathBuf};

use vmm::boot_report::BootReport;
use vmm::{ConsoleConfig, VmConfig, Vmm};

use super::detach::ReadyPipe;
use super::runtime_dir::{
    RuntimeDir, RuntimeDirError, API_SOCKET, BOOT_REPORT, CONFIG_FILE, CONSOLE_LOG, CONSOLE_SOCKET,
    HERD_LOG,
};
use super::systemd;

pub struct NamedRun {
    dir: RuntimeDir,
    ready: Option<ReadyPipe>,
    /// boot-report.json, created before the seccomp filters forbid it.
    report: Option<std::fs::File>,
    finished: bool,
}

/// A run that never got its VM going leaves nothing behind: the directory
/// would only look like a stale one.
impl Drop for NamedRun {
    fn drop(&mut self) {
        if !self.finished {
            self.dir.remove();
        }
    }
}

/// `--console`, where `log` means this appliance's console log.
pub fn console_config(console: &str, named: Option<&NamedRun>) -> Result<ConsoleConfig, String> {
    match (console, named) {
        ("log", Some(named)) => Ok(ConsoleConfig::Log {
            path: named.console_log(),
            max_bytes: vmm::device_manager::console::console_log_max()?,
        }),
        ("log", None) => Err(
            "--console log needs --name: the log lives in the appliance's runtime directory".into(),
        ),
        (other, _) => other
            .parse()
            .map_err(|e: vmm::config::ConfigError| e.to_string()),
    }
}

impl NamedRun {
    /// `claim` for a named run; nothing for an unnamed one.
    pub fn claim_if_named(name: Option<&str>) -> Result<Option<Self>, RuntimeDirError> {
        name.map(Self::claim).transpose()
    }

    /// Claims NAME's runtime directory (refused if NAME runs).
    pub fn claim(name: &str) -> Result<Self, RuntimeDirError> {
        Ok(NamedRun {
            dir: RuntimeDir::claim(name)?,
            ready: ReadyPipe::from_env(),
            report: None,
            finished: false,
        })
    }

    pub fn console_log(&self) -> PathBuf {
        self.dir.file(CONSOLE_LOG)
    }

    /// The runtime directory, which a jail binds in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Descriptors a jail must leave open: the detach handshake's pipe.
    pub fn keep_fds(&self) -> Vec<RawFd> {
        self.ready.iter().map(ReadyPipe::as_raw_fd).collect()
    }

    /// Started by `herd run --detach`.
    pub fn is_detached(&self) -> bool {
        self.ready.is_some()
    }

    /// In the jailed child: the supervisor holds the directory's lock.
    pub fn enter_jail(&mut self) {
        self.dir.leave_lock_to_parent();
    }

    /// In a detached appliance's supervisor (outside the jail): its own
    /// messages go to herd.log, as the jailed herd's do once its VM runs,
    /// so that nothing keeps the launcher's terminal or pipes open.
    pub fn supervise_quietly(&self) {
        if self.is_detached() {
            super::detach::redirect_output(&self.dir.file(HERD_LOG));
        }
    }

    /// In the supervisor, once the jailed child is gone: if its VM ran,
    /// what only made sense while it ran goes (the child may have been
    /// killed before it could clean up) and the logs stay; otherwise the
    /// directory goes, as for an unjailed run that never started.
    pub fn after_jailed_child(mut self) {
        if self.dir.file(CONFIG_FILE).exists() {
            self.dir.finish();
            self.finished = true;
        }
    }

    /// Opens the sockets and records the configuration; the VM is built
    /// but not started.
    pub fn attach(&mut self, vmm: &mut Vmm, config: &VmConfig) -> Result<(), String> {
        let report = self.dir.file(BOOT_REPORT);
        self.report = Some(
            std::fs::File::create(&report)
                .map_err(|e| format!("cannot create the boot report {}: {e}", report.display()))?,
        );
        let description = vmm::api::VmDescription::from_config(config);
        let json = serde_json::to_vec_pretty(&description).map_err(|e| e.to_string())?;
        self.dir
            .write(CONFIG_FILE, &json)
            .map_err(|e| e.to_string())?;
        vmm.start_api(&self.dir.file(API_SOCKET))
            .map_err(|e| e.to_string())?;
        let console = self.dir.file(CONSOLE_SOCKET);
        vmm.start_console_socket(&console).map_err(|e| {
            format!(
                "cannot create the console socket {}: {e}",
                console.display()
            )
        })?;
        if systemd::is_notifying() {
            vmm.control().boot.ready.on_ready(Box::new(|| {
                systemd::notify("READY=1\nSTATUS=appliance ready")
            }));
        }
        Ok(())
    }

    /// The VM is built and its vCPUs about to run (the last moment herd may
    /// still open files): a detached launcher may return now.
    pub fn started(&mut self) {
        if let Some(ready) = self.ready.take() {
            ready.report_running(&self.dir.file(HERD_LOG));
        }
    }

    /// The VM stopped: keep its report, drop its sockets.
    pub fn finish(mut self, report: &BootReport) {
        systemd::notify("STOPPING=1");
        if let Some(Err(e)) = self.report.take().map(|file| report.write_to(file)) {
            log::warn!("cannot write the boot report: {e}");
        }
        self.dir.finish();
        self.finished = true;
    }
}
