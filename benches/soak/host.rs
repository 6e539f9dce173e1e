//! What the soak watches: a process's fds, threads and RSS from /proc, and
//! what herd may leave on the host (TAPs, runtime directories, file locks,
//! vsock sockets, herd processes).

use std::path::Path;

/// One process at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProcSample {
    pub fds: usize,
    pub threads: usize,
    pub rss_kib: u64,
}

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count();
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))?
            .split_whitespace()
            .next()?
            .parse()
            .ok()
    };
    Some(ProcSample {
        fds,
        threads: usize::try_from(field("Threads:")?).ok()?,
        rss_kib: field("VmRSS:")?,
    })
}

/// Host resources that belong to this soak run (matched by its prefixes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HostSample {
    /// TAP interfaces whose name starts with the run's prefix.
    pub taps: usize,
    /// Files in the run's HERD_RUNTIME that only a running herd may have
    /// (pid, control and console sockets, the lock held).
    pub runtime_live: usize,
    /// Lines of /proc/locks naming a file of the run's scratch directory.
    pub locks: usize,
    /// Sockets and other files herd made in the scratch directory (the
    /// disk images, made by the soak, are not counted).
    pub scratch_files: Vec<String>,
    /// Processes whose command line has the run's prefix (its appliances).
    pub herds: usize,
}

pub struct Scope<'a> {
    pub tap_prefix: &'a str,
    pub runtime: &'a Path,
    pub scratch: &'a Path,
}

fn count_dir(dir: &Path, keep: impl Fn(&str) -> bool) -> usize {
    std::fs::read_dir(dir).map_or(0, |d| {
        d.flatten()
            .filter(|e| keep(&e.file_name().to_string_lossy()))
            .count()
    })
}

fn names(dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir).map_or(Vec::new(), |d| {
        d.flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| keep(n))
            .collect()
    });
    names.sort();
    names
}

/// Inode numbers of the files in `dir`, as /proc/locks prints them.
fn inodes(dir: &Path) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    std::fs::read_dir(dir).map_or(Vec::new(), |d| {
        d.flatten()
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.ino())
            .collect()
    })
}

/// What a stopped appliance keeps on purpose (like `docker ps -a`): its
/// directory with logs, config and boot report, until the name is reused.
/// Must not grow once every name has been used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Kept {
    pub dirs: usize,
    pub files: usize,
    pub bytes: u64,
}

const LIVE_FILES: [&str; 3] = ["pid", "api.sock", "console.sock"];

/// (kept, live files) of the runtime directory.
fn runtime(scope: &Scope) -> (Kept, usize) {
    let mut kept = Kept::default();
    let mut live = 0;
    for dir in std::fs::read_dir(scope.runtime)
        .into_iter()
        .flatten()
        .flatten()
    {
        kept.dirs += 1;
        for f in std::fs::read_dir(dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let name = f.file_name().to_string_lossy().into_owned();
            if LIVE_FILES.contains(&name.as_str()) {
                live += 1;
            } else {
                kept.files += 1;
                kept.bytes += f.metadata().map_or(0, |m| m.len());
            }
        }
    }
    (kept, live)
}

pub fn kept(scope: &Scope) -> Kept {
    runtime(scope).0
}

pub fn host_sample(scope: &Scope) -> HostSample {
    let kept = runtime(scope);
    let mut inodes = inodes(scope.scratch);
    for dir in std::fs::read_dir(scope.runtime)
        .into_iter()
        .flatten()
        .flatten()
    {
        inodes.extend(self::inodes(&dir.path()));
    }
    let locks = std::fs::read_to_string("/proc/locks").map_or(0, |text| {
        text.lines()
            .filter(|l| {
                // "1: FLOCK ADVISORY WRITE 1234 fd:01:5678 0 EOF"
                l.split_whitespace()
                    .nth(5)
                    .and_then(|dev_ino| dev_ino.rsplit(':').next()?.parse::<u64>().ok())
                    .is_some_and(|ino| inodes.contains(&ino))
            })
            .count()
    });
    // Every appliance of the run is named with the prefix.
    let herds = std::fs::read_dir("/proc").map_or(0, |d| {
        d.flatten()
            .filter(|e| {
                std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    c.windows(scope.tap_prefix.len())
                        .any(|w| w == scope.tap_prefix.as_bytes())
                })
            })
            .count()
    });
    HostSample {
        taps: count_dir(Path::new("/sys/class/net"), |n| {
            n.starts_with(scope.tap_prefix)
        }),
        runtime_live: kept.1,
        locks,
        scratch_files: names(scope.scratch, |n| !n.ends_with(".img")),
        herds,
    }
}
