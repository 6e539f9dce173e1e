//! `herd run`'s jail: decides whether to confine the appliance (on by
//! default when herd is root), turns the VM's inputs (and a named
//! appliance's runtime directory) into the jailer's bind list, and reports
//! how a jailed appliance ended.

use std::os::fd::RawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use clap::Args;
use jailer::{Bind, CgroupLimits, JailConfig, JailUser, Rlimits, Side, SupervisorOutcome};
use vmm::config::DiskSpec;
use vmm::{ConsoleConfig, VmConfig};

use crate::exit_status::{EXIT_BAD_SYSCALL, EXIT_HOST_FAILURE};

/// herd's own memory on top of guest RAM in memory.max, by default: VMM
/// heap and stacks, the binary, and the kernel's KVM structures charged to
/// the cgroup (page tables, vCPU state).
const DEFAULT_ALLOWANCE_MIB: u64 = 64;
const CPU_PERIOD_US: u64 = 100_000;
/// Threads besides the vCPUs: main, CPUID helper, API, and headroom.
const PIDS_BESIDES_VCPUS: u64 = 16;

#[derive(Args, Debug)]
pub struct JailArgs {
    /// Confine the appliance in a jail: namespaces, pivot_root into a
    /// directory holding only its files, a cgroup, rlimits, the --jail-user
    /// uid. The default when herd runs as root; others get one line saying
    /// the jail needs root.
    #[arg(long)]
    pub jail: bool,
    /// Run the appliance unjailed, as the user who started herd.
    #[arg(long, conflicts_with = "jail")]
    pub no_jail: bool,
    /// The unprivileged user the jailed appliance runs as: a name or UID:GID.
    #[arg(long, value_name = "USER", default_value = "herd")]
    pub jail_user: String,
    /// Where per-appliance jail directories live
    /// [default: ${HERD_RUNTIME:-/run/herd}/.jail].
    #[arg(long, value_name = "DIR")]
    pub jail_dir: Option<PathBuf>,
    /// Join this network namespace (e.g. /run/netns/NAME) before the VM's
    /// TAP devices are opened.
    #[arg(long, value_name = "PATH")]
    pub netns: Option<PathBuf>,
    /// Jail without a cgroup (no memory, CPU or process limits).
    #[arg(long)]
    pub no_cgroup: bool,
    /// cgroup v2 directory under which the appliance's cgroup is made
    /// [default: <cgroup2 mount>/herd].
    #[arg(long, value_name = "DIR")]
    pub cgroup_parent: Option<PathBuf>,
    /// Memory herd may use beyond guest RAM before the kernel kills the
    /// appliance (memory.max = --mem + this).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_ALLOWANCE_MIB)]
    pub memory_allowance: u64,
    /// memory.max in MiB, replacing --mem + --memory-allowance.
    #[arg(long, value_name = "MIB")]
    pub memory_max: Option<u64>,
    /// CPU time the appliance may use, in percent of one CPU
    /// [default: 100 per vCPU].
    #[arg(long, value_name = "PERCENT")]
    pub cpu_quota: Option<u64>,
    /// Largest file offset the appliance may write, in MiB (RLIMIT_FSIZE):
    /// caps the console log; must exceed the largest writable disk
    /// [default: unlimited].
    #[arg(long, value_name = "MIB")]
    pub file_size_limit: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum JailSetupError {
    #[error(transparent)]
    Jail(#[from] jailer::JailError),
    #[error(transparent)]
    Name(#[from] crate::appliance::runtime_dir::RuntimeDirError),
    #[error("{what} {path}: {source}")]
    Path {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

impl JailSetupError {
    /// The caller is the jailed child, whose inherited descriptors the
    /// jailer already closed.
    pub fn in_jailed_child(&self) -> bool {
        matches!(self, JailSetupError::Jail(e) if e.in_child())
    }
}

/// What `enter` left the caller as.
pub enum Entered {
    /// No jail: carry on in this process.
    Unjailed,
    /// Inside the jail, still root: build the VM, then drop privileges.
    Jailed(jailer::Jailed),
    /// The parent outside the jail: wait for the appliance.
    Supervisor(jailer::Supervisor),
}

/// Jails the appliance unless told not to or unable to, rewriting the
/// config's paths to the absolute ones bound into the jail. A named
/// appliance's `runtime_dir` (control and console sockets, logs) is bound
/// in at its own path and handed to the jail's user, so `herd ps`, `stop`,
/// `logs` and `console` reach it from outside. Call while single-threaded.
pub fn enter(
    args: &JailArgs,
    config: &mut VmConfig,
    keep_fds: &[RawFd],
    runtime_dir: Option<&Path>,
) -> Result<Entered, JailSetupError> {
    if args.no_jail {
        return Ok(Entered::Unjailed);
    }
    // SAFETY: geteuid has no failure modes or pointers.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("{JAIL_NEEDS_ROOT}");
        return Ok(Entered::Unjailed);
    }
    let user = JailUser::lookup(&args.jail_user)?;
    let name = match &config.name {
        Some(name) => {
            // Its jail directory and cgroup: the runtime directory's rules.
            crate::appliance::runtime_dir::validate_name(name)?;
            name.clone()
        }
        None => format!("herd-{}", std::process::id()),
    };
    let mut binds = bind_list(config)?;
    if let Some(dir) = runtime_dir {
        let dir = absolute("runtime directory", dir)?;
        hand_over(&dir, &user)?;
        binds.push(Bind {
            path: dir,
            writable: true,
        });
    }
    let mut devices = vec![PathBuf::from("/dev/kvm")];
    if !config.nets.is_empty() {
        devices.push(PathBuf::from("/dev/net/tun"));
    }
    let jail = JailConfig {
        base_dir: args.jail_dir.clone().unwrap_or_else(default_jail_dir),
        cgroup: cgroup_limits(args, config)?,
        name,
        user,
        binds,
        devices,
        netns: args.netns.clone(),
        rlimits: Rlimits {
            file_size: args.file_size_limit.map(|mib| mib.saturating_mul(1 << 20)),
            ..Rlimits::default()
        },
        keep_fds: keep_fds.to_vec(),
    };
    Ok(match jailer::enter(&jail)? {
        Side::Jailed(jailed) => Entered::Jailed(jailed),
        Side::Supervisor(supervisor) => Entered::Supervisor(supervisor),
    })
}

/// What an unprivileged herd says once per run.
pub const JAIL_NEEDS_ROOT: &str = "herd: jail off: namespaces, a cgroup and a uid drop need \
     root; running unjailed, under seccomp only (--no-jail silences this)";

/// Beside the appliances' runtime directories; no appliance name starts
/// with a dot, so none can claim it.
fn default_jail_dir() -> PathBuf {
    crate::appliance::runtime_dir::base_dir().join(".jail")
}

/// Gives the runtime directory to the jail's user: after the uid drop herd
/// still writes there (console log rotation, herd.log, the boot report)
/// and removes its sockets. The lock stays root's, held by the supervisor.
fn hand_over(dir: &Path, user: &JailUser) -> Result<(), JailSetupError> {
    let err = |path: &Path| {
        let path = path.to_owned();
        move |source| JailSetupError::Path {
            what: "runtime directory",
            path,
            source,
        }
    };
    std::os::unix::fs::chown(dir, Some(user.uid), Some(user.gid)).map_err(err(dir))?;
    // herd.log exists before the supervisor (root) appends to it, so the
    // jailed herd (the jail's user) can append to it as well. Not through
    // a symlink, and chowned by descriptor: the directory belonged to the
    // jail's user before, who could have planted one to get a root-owned
    // file handed over.
    let log = dir.join(crate::appliance::runtime_dir::HERD_LOG);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&log)
        .map_err(err(&log))?;
    std::os::unix::fs::fchown(&file, Some(user.uid), Some(user.gid)).map_err(err(&log))
}

fn absolute(what: &'static str, path: &Path) -> Result<PathBuf, JailSetupError> {
    path.canonicalize().map_err(|source| JailSetupError::Path {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Every file the VM opens, made absolute in `config` and listed for
/// binding (read-only unless the VM writes it).
fn bind_list(config: &mut VmConfig) -> Result<Vec<Bind>, JailSetupError> {
    let mut binds = Vec::new();
    let mut bind = |what, path: &mut PathBuf, writable| {
        *path = absolute(what, path)?;
        binds.push(Bind {
            path: path.clone(),
            writable,
        });
        Ok::<_, JailSetupError>(())
    };
    bind("kernel", &mut config.kernel, false)?;
    if let Some(initrd) = &mut config.initrd {
        bind("initrd", initrd, false)?;
    }
    if let Some(root) = &mut config.root {
        bind("root image", root, false)?;
    }
    for DiskSpec {
        path, read_only, ..
    } in &mut config.disks
    {
        bind("disk image", path, !*read_only)?;
    }
    if let ConsoleConfig::File(path) = &mut config.console {
        // The console log may not exist yet; herd appends to it.
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&*path)
            .map_err(|source| JailSetupError::Path {
                what: "console file",
                path: path.clone(),
                source,
            })?;
        bind("console file", path, true)?;
    }
    if let Some(socket) = &mut config.vsock {
        // The socket does not exist yet: herd creates it, and host
        // programs' PATH_<port> sockets, in its directory.
        let parent = socket
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let dir = absolute("--vsock directory", parent)?;
        if let Some(file) = socket.file_name() {
            *socket = dir.join(file);
        }
        binds.push(Bind {
            path: dir,
            writable: true,
        });
    }
    Ok(binds)
}

/// cpu.max's quota for `percent` of one CPU; a huge --cpu-quota
/// saturates (the kernel then refuses it by name) instead of overflowing.
fn cpu_quota_us(percent: u64) -> u64 {
    CPU_PERIOD_US.saturating_mul(percent) / 100
}

fn cgroup_limits(
    args: &JailArgs,
    config: &VmConfig,
) -> Result<Option<CgroupLimits>, JailSetupError> {
    if args.no_cgroup {
        return Ok(None);
    }
    let parent = match (&args.cgroup_parent, jailer::cgroup2_root()) {
        (Some(parent), _) => parent.clone(),
        (None, Some(root)) if jailer::has_limit_controllers(&root) => root.join("herd"),
        (None, root) => {
            // Not asked for explicitly: jail without limits rather than
            // refuse every appliance on a cgroup v1 or hybrid host.
            let found = root.map_or_else(
                || "no cgroup v2 hierarchy is mounted".to_owned(),
                |r| format!("{} offers no memory, cpu and pids controllers", r.display()),
            );
            eprintln!(
                "herd: cgroup off: {found} (a cgroup v1 or hybrid host); the appliance is \
                 jailed without resource limits (--no-cgroup silences this, --cgroup-parent \
                 insists)"
            );
            return Ok(None);
        }
    };
    let cpus = u64::from(config.cpu_count());
    let percent = args.cpu_quota.unwrap_or(100 * cpus).max(1);
    Ok(Some(CgroupLimits {
        parent,
        memory_max: args
            .memory_max
            .unwrap_or(config.mem_mib.saturating_add(args.memory_allowance))
            .saturating_mul(1 << 20),
        cpu_quota_us: cpu_quota_us(percent),
        cpu_period_us: CPU_PERIOD_US,
        pids_max: cpus + PIDS_BESIDES_VCPUS,
    }))
}

/// Waits for the jailed appliance and turns its end into herd's status.
pub fn supervise(supervisor: jailer::Supervisor) -> u8 {
    let name = supervisor.name().to_owned();
    match supervisor.wait() {
        SupervisorOutcome::Exited(code) => u8::try_from(code).unwrap_or(EXIT_HOST_FAILURE),
        SupervisorOutcome::Killed {
            oom: true,
            memory_max,
            ..
        } => {
            eprintln!(
                "herd: error: appliance {name} was killed by the kernel's OOM killer: its \
                 memory reached its cgroup's memory.max ({memory_max} bytes: guest RAM plus \
                 --memory-allowance); raise --memory-allowance or --memory-max"
            );
            EXIT_KILLED_BASE + 9
        }
        SupervisorOutcome::Killed { signal, .. } if signal == libc::SIGSYS => {
            eprintln!("herd: error: appliance {name} was killed by SIGSYS (seccomp)");
            EXIT_BAD_SYSCALL
        }
        SupervisorOutcome::Killed { signal, .. } => {
            eprintln!("herd: error: appliance {name} was killed by signal {signal}");
            EXIT_KILLED_BASE.saturating_add(u8::try_from(signal).unwrap_or(0))
        }
    }
}

/// A jailed appliance killed by signal N makes herd exit 128 + N, as a
/// shell reports it.
const EXIT_KILLED_BASE: u8 = 128;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_quota_is_a_share_of_the_period_and_never_overflows() {
        assert_eq!(cpu_quota_us(100), CPU_PERIOD_US);
        assert_eq!(cpu_quota_us(250), 250_000);
        assert_eq!(cpu_quota_us(u64::MAX), u64::MAX / 100);
    }

    #[test]
    fn hand_over_does_not_follow_a_planted_herd_log_symlink() {
        let dir = std::env::temp_dir().join(format!("herd-hand-over-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir).unwrap();
        let target = dir.join("target");
        std::fs::write(&target, "").unwrap();
        let log = dir.join(crate::appliance::runtime_dir::HERD_LOG);
        std::os::unix::fs::symlink(&target, &log).unwrap();
        // SAFETY: getuid cannot fail and touches no memory.
        let uid = unsafe { libc::getuid() };
        // SAFETY: as above.
        let gid = unsafe { libc::getgid() };
        let user = JailUser { uid, gid };
        let refused = hand_over(&dir, &user).is_err();
        std::fs::remove_file(&log).unwrap();
        let made = hand_over(&dir, &user);
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(refused, "followed the symlink");
        made.unwrap();
    }
}
