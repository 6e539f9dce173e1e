//! Confines one herd appliance, Firecracker-jailer style, as a library that
//! `herd run` calls before it builds the VM:
//!
//! 1. [`enter`] (privileged, still single-threaded) checks every input,
//!    takes the per-appliance jail directory (a lock file tells a live
//!    appliance from a stale directory), creates the appliance's cgroup v2
//!    with its limits, and forks into a new PID namespace.
//! 2. The parent becomes the [`Supervisor`]: it forwards SIGTERM/SIGINT,
//!    waits, says clearly when the kernel killed the appliance for memory,
//!    and removes the cgroup and the jail directory at the end.
//! 3. The child joins the cgroup (and a given network namespace), unshares
//!    mount, IPC and UTS namespaces, closes inherited descriptors, clears the
//!    environment, builds a tmpfs root holding only bind mounts of what the
//!    VM needs (read-only where it only reads), `pivot_root`s into it with
//!    the old root detached, and sets rlimits. It returns [`Jailed`]: herd
//!    builds the VM (opening its files as root inside the jail) and then
//!    calls [`Jailed::drop_privileges`] before any guest code runs.

mod cgroup;
mod mounts;
mod privileges;
mod supervisor;

use std::fs::File;
use std::os::fd::{BorrowedFd, IntoRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{unshare, CloneFlags};
use nix::sys::signal::{sigprocmask, SigSet, SigmaskHow, Signal};
use nix::unistd::{fork, ForkResult};

pub use cgroup::{cgroup2_root, has_limit_controllers, CgroupError, CgroupLimits};
pub use privileges::{JailUser, Rlimits};
pub use supervisor::{Supervisor, SupervisorOutcome};

#[derive(Debug, thiserror::Error)]
pub enum JailError {
    #[error(
        "user {0:?} does not exist: create the jail's system user with `useradd --system \
         --no-create-home --shell /usr/sbin/nologin {0}`, or pick another with --jail-user"
    )]
    UnknownUser(String),
    #[error("--jail-user {0:?}: expected a user name or UID:GID")]
    BadUser(String),
    #[error(
        "--jail-user {0:?}: id 4294967295 means \"leave unchanged\" to the kernel, so herd \
         would keep root; pick another user"
    )]
    ReservedId(String),
    #[error("cannot look up user {name:?}: {source}")]
    UserLookup { name: String, source: nix::Error },
    #[error("{what} {path}: {source}; it cannot be bound into the jail")]
    Source {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("network namespace {path}: {source}")]
    Netns {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "jail directory {dir} belongs to a running appliance named {name:?}; stop it first or \
         pick another --name"
    )]
    Live { dir: PathBuf, name: String },
    #[error("jail directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error("cannot {what}: {source}")]
    Sys { what: String, source: nix::Error },
    #[error("cannot bind {path} into the jail at {target}: {source}")]
    Bind {
        path: PathBuf,
        target: PathBuf,
        source: nix::Error,
    },
    #[error("cannot {what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// Setting up the jail failed in the forked child: the caller is that
    /// child, whose inherited descriptors may already be closed.
    #[error(transparent)]
    InChild(Box<JailError>),
}

impl JailError {
    /// Whether the caller is the forked child (see [`JailError::InChild`]).
    pub fn in_child(&self) -> bool {
        matches!(self, JailError::InChild(_))
    }
}

fn sys(what: impl Into<String>) -> impl FnOnce(nix::Error) -> JailError {
    let what = what.into();
    move |source| JailError::Sys { what, source }
}

/// A host file or directory the VM needs, bound into the jail at the same
/// absolute path.
#[derive(Clone, Debug)]
pub struct Bind {
    /// Absolute, symlink-free path (canonicalize it first).
    pub path: PathBuf,
    pub writable: bool,
}

/// Everything that describes one appliance's jail.
#[derive(Debug)]
pub struct JailConfig {
    /// The appliance's name: jail directory, cgroup and UTS hostname.
    pub name: String,
    /// Directory under which `<name>/` is the jail directory.
    pub base_dir: PathBuf,
    pub user: JailUser,
    pub binds: Vec<Bind>,
    /// Character devices (/dev/kvm, /dev/net/tun), bound at the same path.
    pub devices: Vec<PathBuf>,
    /// A network namespace to join (a path such as /run/netns/NAME).
    pub netns: Option<PathBuf>,
    /// None: no cgroup (herd warned why).
    pub cgroup: Option<CgroupLimits>,
    pub rlimits: Rlimits,
    /// Descriptors (besides 0-2) that survive: files herd opened earlier.
    pub keep_fds: Vec<RawFd>,
}

impl JailConfig {
    pub fn dir(&self) -> PathBuf {
        self.base_dir.join(&self.name)
    }
}

/// Which side of the fork the caller is on.
pub enum Side {
    /// The parent: wait for the appliance with [`Supervisor::wait`].
    Supervisor(Supervisor),
    /// The child, inside the jail, still root until
    /// [`Jailed::drop_privileges`].
    Jailed(Jailed),
}

/// The jailed child, before it gives up root.
#[derive(Debug)]
pub struct Jailed {
    user: JailUser,
}

impl Jailed {
    /// Who the process becomes at [`Jailed::drop_privileges`].
    pub fn user(&self) -> &JailUser {
        &self.user
    }

    /// Drops to the jail user's uid/gid (no supplementary groups, so no
    /// capabilities) and sets no_new_privs. Call once the VM's files and
    /// devices are open, before any guest code runs.
    pub fn drop_privileges(self) -> Result<(), JailError> {
        privileges::drop_to(&self.user)
    }
}

/// Sets up the jail and forks; see the crate documentation. Must be called
/// while the process has a single thread.
pub fn enter(config: &JailConfig) -> Result<Side, JailError> {
    for bind in &config.binds {
        check_source("file", &bind.path)?;
    }
    for device in &config.devices {
        check_source("device", device)?;
    }
    let netns = config
        .netns
        .as_ref()
        .map(|path| {
            File::open(path).map_err(|source| JailError::Netns {
                path: path.clone(),
                source,
            })
        })
        .transpose()?;
    let dir = supervisor::JailDir::take(&config.dir(), &config.name)?;
    let cgroup = match &config.cgroup {
        Some(limits) => Some(cgroup::Cgroup::create(limits, &config.name)?),
        None => None,
    };
    // Children (only the one forked below) start in a new PID namespace.
    unshare(CloneFlags::CLONE_NEWPID).map_err(sys("create a PID namespace"))?;
    // Termination signals wait from before the fork: the child, pid 1 of
    // its namespace, would drop one that came before it blocked them, and
    // the parent forwards them only once its handlers exist.
    let mut stop = SigSet::empty();
    stop.add(Signal::SIGTERM);
    stop.add(Signal::SIGINT);
    let mut before = SigSet::empty();
    sigprocmask(SigmaskHow::SIG_BLOCK, Some(&stop), Some(&mut before))
        .map_err(sys("block termination signals"))?;
    // herd is single-threaded here (the caller's contract), so the
    // child may run arbitrary code after fork.
    // SAFETY: sound for the reasons just given.
    match unsafe { fork() }.map_err(sys("fork the jailed process"))? {
        ForkResult::Parent { child } => {
            let supervisor = Supervisor::new(child, cgroup, dir, config.name.clone());
            sigprocmask(SigmaskHow::SIG_SETMASK, Some(&before), None)
                .map_err(sys("unblock termination signals"))?;
            Ok(Side::Supervisor(supervisor))
        }
        ForkResult::Child => {
            // The parent owns the directory (and its lock) and cleans it up;
            // the child closes its copies of every inherited descriptor, so
            // it must not close them again on drop.
            std::mem::forget(dir);
            let netns = netns.map(IntoRawFd::into_raw_fd);
            confine(config, cgroup.as_ref(), netns).map_err(|e| JailError::InChild(Box::new(e)))?;
            Ok(Side::Jailed(Jailed {
                user: config.user.clone(),
            }))
        }
    }
}

fn check_source(what: &'static str, path: &Path) -> Result<(), JailError> {
    let source = |source| JailError::Source {
        what,
        path: path.to_owned(),
        source,
    };
    if !path.is_absolute() {
        return Err(source(std::io::Error::other("not an absolute path")));
    }
    // Bound over the jail's root it would hand the appliance the host's
    // whole root filesystem (e.g. `--vsock /x.sock` binds `/`); resolved, so
    // `/tmp/..` or a link to `/` are the same refusal.
    if std::fs::canonicalize(path).map_err(source)? == Path::new("/") {
        return Err(source(std::io::Error::other(
            "the host's root directory; use a directory of its own",
        )));
    }
    Ok(())
}

/// The child's half: everything after fork, before the VM is built.
fn confine(
    config: &JailConfig,
    cgroup: Option<&cgroup::Cgroup>,
    netns: Option<RawFd>,
) -> Result<(), JailError> {
    // SIGTERM/SIGINT stay blocked (since before the fork) until herd
    // installs its handlers: as pid 1 of its PID namespace the child would
    // drop them, blocked they wait.
    // Die with the supervisor rather than run on unsupervised.
    nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(sys("set the parent-death signal"))?;
    if let Some(cgroup) = cgroup {
        cgroup.join_self()?;
    }
    if let Some(netns) = netns {
        // SAFETY: `netns` is open until close_inherited_fds below.
        let netns = unsafe { BorrowedFd::borrow_raw(netns) };
        nix::sched::setns(netns, CloneFlags::CLONE_NEWNET)
            .map_err(sys("join the network namespace"))?;
    }
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_NEWIPC | CloneFlags::CLONE_NEWUTS)
        .map_err(sys("create mount, IPC and UTS namespaces"))?;
    nix::unistd::sethostname(&config.name).map_err(sys("set the hostname"))?;
    privileges::close_inherited_fds(&config.keep_fds)?;
    privileges::clear_environment()?;
    let root = config.dir().join("root");
    mounts::build_root(&root, &config.binds, &config.devices)?;
    mounts::pivot_into(&root)?;
    privileges::set_rlimits(&config.rlimits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_must_be_absolute_and_not_the_root() {
        assert!(check_source("file", Path::new("/dev/null")).is_ok());
        for bad in ["/", "/tmp/..", "relative", "/no/such/herd/file"] {
            assert!(check_source("file", Path::new(bad)).is_err(), "{bad}");
        }
    }
}
