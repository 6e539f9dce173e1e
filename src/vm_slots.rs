//! A cap on how many herd VMs run at once on one host: `HERD_MAX_VMS=N`.
//!
//! Each `herd run` holds one of N slot files (an exclusive `flock`, released
//! by the kernel however herd ends, even by SIGKILL); when all are held, the
//! VM is refused before anything is built. Unset (the default), there is no
//! cap. herd's emulated test host sets it to the number of Linux guests it
//! has been measured to carry (guest-images/testhost/README.md): beyond
//! that, QEMU's software emulation of nested SVM loses guests or the test
//! host itself.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

pub const MAX_VMS_ENV: &str = "HERD_MAX_VMS";
/// Where the slot files live (default: /run/herd/vm-slots, or
/// $XDG_RUNTIME_DIR/herd/vm-slots when not root).
pub const SLOTS_DIR_ENV: &str = "HERD_VM_SLOTS_DIR";

#[derive(Debug, thiserror::Error)]
pub enum VmSlotError {
    #[error("{MAX_VMS_ENV}={0:?} is not a number of VMs (1 or more); fix or unset it")]
    BadLimit(String),
    #[error("cannot use the VM slot directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error(
        "{limit} herd VMs are already running on this host, the most {MAX_VMS_ENV}={limit} \
         allows{why}; stop one first"
    )]
    Full { limit: usize, why: &'static str },
}

/// Held for as long as the VM runs.
pub struct VmSlot {
    _file: File,
}

/// A free slot, or `None` if no cap is set.
pub fn take() -> Result<Option<VmSlot>, VmSlotError> {
    let Some(raw) = std::env::var_os(MAX_VMS_ENV) else {
        return Ok(None);
    };
    let raw = raw.to_string_lossy().into_owned();
    let limit: usize = match raw.trim().parse() {
        Ok(n) if n > 0 => n,
        _ => return Err(VmSlotError::BadLimit(raw)),
    };
    let dir = slots_dir();
    fs::create_dir_all(&dir).map_err(|source| VmSlotError::Dir {
        path: dir.clone(),
        source,
    })?;
    for i in 0..limit {
        let path = dir.join(format!("slot-{i}"));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|source| VmSlotError::Dir {
                path: path.clone(),
                source,
            })?;
        // SAFETY: flock on a descriptor `file` keeps open; no memory passed.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(VmSlot { _file: file }));
        }
    }
    let why = if std::env::var_os("HERD_EMULATED_HOST").is_some() {
        " (the emulated test host's measured capacity; see guest-images/testhost/README.md)"
    } else {
        ""
    };
    Err(VmSlotError::Full { limit, why })
}

/// How many slots are free now; None without a cap (or a bad one, which
/// `take` reports). Probes each slot with a shared lock, so a herd taking
/// a slot at the same moment may skip that one and take the next.
pub fn free() -> Option<usize> {
    let limit: usize = std::env::var(MAX_VMS_ENV).ok()?.trim().parse().ok()?;
    let dir = slots_dir();
    let free = (0..limit)
        .filter(|i| {
            let Ok(file) = File::open(dir.join(format!("slot-{i}"))) else {
                return true;
            };
            // SAFETY: flock on a descriptor `file` keeps open; no memory passed.
            unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) == 0 }
        })
        .count();
    Some(free)
}

fn slots_dir() -> PathBuf {
    if let Some(d) = std::env::var_os(SLOTS_DIR_ENV) {
        return PathBuf::from(d);
    }
    // SAFETY: geteuid takes no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) if !root => PathBuf::from(d).join("herd/vm-slots"),
        _ => PathBuf::from("/run/herd/vm-slots"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The environment is process-wide: one test does every case in order.
    #[test]
    fn slots_cap_concurrent_vms() {
        let dir = std::env::temp_dir().join(format!("herd-slots-{}", std::process::id()));
        std::env::set_var(SLOTS_DIR_ENV, &dir);
        std::env::remove_var(MAX_VMS_ENV);
        assert!(take().expect("no cap").is_none());
        std::env::set_var(MAX_VMS_ENV, "zero");
        assert!(matches!(take(), Err(VmSlotError::BadLimit(_))));
        std::env::set_var(MAX_VMS_ENV, "2");
        let a = take().expect("first").expect("slot");
        let b = take().expect("second").expect("slot");
        let e = take().err().expect("third refused");
        assert!(
            e.to_string().contains("2 herd VMs are already running"),
            "{e}"
        );
        drop(a);
        let _c = take().expect("a freed slot").expect("slot");
        drop(b);
        std::env::remove_var(MAX_VMS_ENV);
        std::env::remove_var(SLOTS_DIR_ENV);
        let _ = fs::remove_dir_all(&dir);
    }
}
