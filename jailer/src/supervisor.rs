//! The unjailed parent: holds the jail directory and the cgroup, forwards
//! termination signals to the appliance, reports how it ended and cleans
//! up.

use std::fs::{self, File};
use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicI32, Ordering};

use nix::errno::Errno;
use nix::sys::signal::{self, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use crate::cgroup::Cgroup;
use crate::JailError;

/// `<base>/<name>/`: a lock file and the empty `root/` mount point. The
/// lock, held by the supervisor for the appliance's life, tells a live
/// appliance from a directory a crash left behind.
#[derive(Debug)]
pub(crate) struct JailDir {
    dir: PathBuf,
    _lock: File,
}

impl JailDir {
    pub(crate) fn take(dir: &Path, name: &str) -> Result<JailDir, JailError> {
        let err = |path: &Path| {
            let path = path.to_owned();
            move |source| JailError::Dir { path, source }
        };
        fs::create_dir_all(dir).map_err(err(dir))?;
        let lock_path = dir.join("lock");
        let lock = File::create(&lock_path).map_err(err(&lock_path))?;
        // SAFETY: flock on a descriptor we own; no pointers.
        if unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err(if e.kind() == ErrorKind::WouldBlock {
                JailError::Live {
                    dir: dir.to_owned(),
                    name: name.to_owned(),
                }
            } else {
                err(&lock_path)(e)
            });
        }
        let root = dir.join("root");
        match fs::create_dir(&root) {
            Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(err(&root)(e)),
            _ => {}
        }
        Ok(JailDir {
            dir: dir.to_owned(),
            _lock: lock,
        })
    }
}

impl Drop for JailDir {
    fn drop(&mut self) {
        // root/ was only ever mounted on inside the appliance's namespace.
        let _ = fs::remove_dir(self.dir.join("root"));
        let _ = fs::remove_file(self.dir.join("lock"));
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The appliance's pid, for the forwarding handler; 0 when none.
static CHILD: AtomicI32 = AtomicI32::new(0);

extern "C" fn forward(signum: libc::c_int) {
    let child = CHILD.load(Ordering::SeqCst);
    if child > 0 {
        // SAFETY: kill(2) is async-signal-safe.
        unsafe { libc::kill(child, signum) };
    }
}

/// How the jailed appliance ended.
#[derive(Debug, PartialEq, Eq)]
pub enum SupervisorOutcome {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it; `oom` when the kernel's OOM killer struck in its
    /// cgroup.
    Killed {
        signal: i32,
        oom: bool,
        memory_max: String,
    },
}

#[derive(Debug)]
pub struct Supervisor {
    child: Pid,
    cgroup: Option<Cgroup>,
    _dir: JailDir,
    name: String,
}

impl Supervisor {
    pub(crate) fn new(child: Pid, cgroup: Option<Cgroup>, dir: JailDir, name: String) -> Self {
        CHILD.store(child.as_raw(), Ordering::SeqCst);
        for sig in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
            // SAFETY: `forward` only loads an atomic and calls kill(2).
            if let Err(e) = unsafe { signal::signal(sig, SigHandler::Handler(forward)) } {
                log::warn!("cannot forward {sig} to the appliance: {e}");
            }
        }
        Supervisor {
            child,
            cgroup,
            _dir: dir,
            name,
        }
    }

    pub fn child_pid(&self) -> i32 {
        self.child.as_raw()
    }

    pub fn cgroup_path(&self) -> Option<&Path> {
        self.cgroup.as_ref().map(Cgroup::path)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for the appliance, then removes its cgroup and jail directory.
    pub fn wait(self) -> SupervisorOutcome {
        let outcome = loop {
            match waitpid(self.child, None) {
                Ok(WaitStatus::Exited(_, code)) => break SupervisorOutcome::Exited(code),
                Ok(WaitStatus::Signaled(_, sig, _)) => {
                    let oom = self.cgroup.as_ref().is_some_and(|c| c.oom_kills() > 0);
                    break SupervisorOutcome::Killed {
                        signal: sig as i32,
                        oom,
                        memory_max: self
                            .cgroup
                            .as_ref()
                            .map(Cgroup::memory_max)
                            .unwrap_or_default(),
                    };
                }
                Err(Errno::EINTR) | Ok(_) => {}
                Err(e) => {
                    log::error!("cannot wait for the appliance: {e}");
                    break SupervisorOutcome::Exited(1);
                }
            }
        };
        CHILD.store(0, Ordering::SeqCst);
        if let Some(cgroup) = &self.cgroup {
            cgroup.remove();
        }
        outcome
    }
}
