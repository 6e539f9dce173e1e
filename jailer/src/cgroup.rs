//! One cgroup v2 per appliance, `<parent>/<name>`, with memory, CPU and
//! process limits; removed when the appliance stops.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const CONTROLLERS: [&str; 3] = ["memory", "cpu", "pids"];
const ENABLE: &str = "+memory +cpu +pids";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error(
        "no cgroup v2 hierarchy is mounted (this host runs cgroup v1 only); boot with \
         systemd.unified_cgroup_hierarchy=1, or run with --no-cgroup"
    )]
    NoHierarchy,
    #[error(
        "cgroup {path} does not offer the {missing} controller(s) herd needs for limits (on a \
         hybrid cgroup v1/v2 host they belong to v1; not delegated here?); use a cgroup v2 \
         parent that has memory, cpu and pids (--cgroup-parent) or run with --no-cgroup"
    )]
    Missing { path: PathBuf, missing: String },
    #[error(
        "cannot enable the memory, cpu and pids controllers below {path}: {source}; the cgroup \
         is not delegated to herd (or holds processes itself): pick another --cgroup-parent"
    )]
    NotDelegated {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cgroup {path} holds the processes of a running appliance; stop it first or pick another --name")]
    Live { path: PathBuf },
    #[error("cgroup {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The limits for one appliance.
#[derive(Clone, Debug)]
pub struct CgroupLimits {
    /// The cgroup under which `<name>` is created (made if missing, inside
    /// an existing cgroup v2 directory).
    pub parent: PathBuf,
    /// memory.max in bytes: guest RAM plus herd's allowance.
    pub memory_max: u64,
    /// cpu.max: quota and period in microseconds.
    pub cpu_quota_us: u64,
    pub cpu_period_us: u64,
    /// pids.max: herd's threads.
    pub pids_max: u64,
}

/// Where the cgroup v2 hierarchy is mounted: /sys/fs/cgroup on a unified
/// host, /sys/fs/cgroup/unified on a hybrid one.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut found: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|line| {
            let (fields, rest) = line.split_once(" - ")?;
            let fstype = rest.split_whitespace().next()?;
            let mount_point = fields.split_whitespace().nth(4)?;
            (fstype == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .collect();
    found.sort_by_key(|p| p != Path::new("/sys/fs/cgroup"));
    found.into_iter().next()
}

#[derive(Debug)]
pub(crate) struct Cgroup {
    path: PathBuf,
}

fn missing_controllers(dir: &Path) -> Result<Vec<&'static str>, CgroupError> {
    let file = dir.join("cgroup.controllers");
    let have = fs::read_to_string(&file).map_err(|source| match source.kind() {
        ErrorKind::NotFound => CgroupError::Missing {
            path: dir.to_owned(),
            missing: "cgroup v2 (not a cgroup v2 directory)".into(),
        },
        _ => io_at(&file)(source),
    })?;
    let have: Vec<&str> = have.split_whitespace().collect();
    Ok(CONTROLLERS
        .into_iter()
        .filter(|c| !have.contains(c))
        .collect())
}

/// Whether the cgroup v2 directory `dir` offers every controller the
/// limits need (memory, cpu, pids).
pub fn has_limit_controllers(dir: &Path) -> bool {
    missing_controllers(dir).is_ok_and(|missing| missing.is_empty())
}

fn enable_below(dir: &Path) -> Result<(), CgroupError> {
    let missing = missing_controllers(dir)?;
    if !missing.is_empty() {
        return Err(CgroupError::Missing {
            path: dir.to_owned(),
            missing: missing.join(", "),
        });
    }
    fs::write(dir.join("cgroup.subtree_control"), ENABLE).map_err(|source| {
        CgroupError::NotDelegated {
            path: dir.to_owned(),
            source,
        }
    })
}

impl Cgroup {
    pub(crate) fn create(limits: &CgroupLimits, name: &str) -> Result<Cgroup, CgroupError> {
        let parent = &limits.parent;
        if !parent.join("cgroup.controllers").exists() {
            let grandparent = parent.parent().unwrap_or(Path::new("/"));
            enable_below(grandparent)?;
            match fs::create_dir(parent) {
                Err(e) if e.kind() != ErrorKind::AlreadyExists => return Err(io_at(parent)(e)),
                _ => {}
            }
        }
        enable_below(parent)?;
        let path = parent.join(name);
        match fs::create_dir(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                let procs = fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
                if !procs.trim().is_empty() {
                    return Err(CgroupError::Live { path });
                }
            }
            Err(e) => return Err(io_at(&path)(e)),
        }
        let cgroup = Cgroup { path };
        cgroup.write("memory.max", &limits.memory_max.to_string())?;
        // Swapped-out guest memory would dodge memory.max; not every kernel
        // has swap accounting, so a missing file is fine.
        let _ = fs::write(cgroup.path.join("memory.swap.max"), "0");
        cgroup.write(
            "cpu.max",
            &format!("{} {}", limits.cpu_quota_us, limits.cpu_period_us),
        )?;
        cgroup.write("pids.max", &limits.pids_max.to_string())?;
        Ok(cgroup)
    }

    fn write(&self, file: &str, value: &str) -> Result<(), CgroupError> {
        let path = self.path.join(file);
        fs::write(&path, value).map_err(io_at(&path))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Moves the calling process into this cgroup.
    pub(crate) fn join_self(&self) -> Result<(), CgroupError> {
        self.write("cgroup.procs", "0")
    }

    /// How many times the kernel's OOM killer struck inside this cgroup.
    pub(crate) fn oom_kills(&self) -> u64 {
        fs::read_to_string(self.path.join("memory.events"))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill "))
            .and_then(|n| n.trim().parse().ok())
            .unwrap_or(0)
    }

    pub(crate) fn memory_max(&self) -> String {
        fs::read_to_string(self.path.join("memory.max"))
            .map(|s| s.trim().to_owned())
            .unwrap_or_default()
    }

    /// Removes the cgroup once its processes are gone (the kernel needs a
    /// moment after the last one is reaped).
    pub(crate) fn remove(&self) {
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            match fs::remove_dir(&self.path) {
                Ok(()) => return,
                Err(e) if e.kind() == ErrorKind::NotFound => return,
                Err(e) if Instant::now() > deadline => {
                    log::warn!("cannot remove cgroup {}: {e}", self.path.display());
                    return;
                }
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_directory_is_not_a_cgroup() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            missing_controllers(&dir),
            Err(CgroupError::Missing { .. })
        ));
    }
}
