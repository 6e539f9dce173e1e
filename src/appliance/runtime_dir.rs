//! A named appliance's runtime directory,
//! `${HERD_RUNTIME:-/run/herd}/NAME/` (`$XDG_RUNTIME_DIR/herd` when not
//! root): who runs it, how to reach it, what it printed.
//!
//! The running herd holds an exclusive `flock` on `lock` for its whole
//! life, so "is NAME running" never depends on a pid that may have been
//! reused: a directory whose lock is free belongs to a dead process and is
//! stale.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

pub const PID_FILE: &str = "pid";
pub const LOCK_FILE: &str = "lock";
pub const API_SOCKET: &str = "api.sock";
pub const CONSOLE_SOCKET: &str = "console.sock";
pub const CONSOLE_LOG: &str = "console.log";
/// herd's own messages once a detached VM runs.
pub const HERD_LOG: &str = "herd.log";
pub const BOOT_REPORT: &str = "boot-report.json";
pub const CONFIG_FILE: &str = "config.json";
const MAX_NAME_LEN: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum RuntimeDirError {
    #[error(
        "appliance name {0:?} is not valid: use 1-{MAX_NAME_LEN} letters, digits, '-', '_' or \
         '.', starting with a letter or digit"
    )]
    BadName(String),
    #[error("an appliance named {name} is already running (pid {pid}); stop it with `herd stop {name}` or pick another --name")]
    AlreadyRunning { name: String, pid: String },
    #[error("appliance {name} is running (pid {pid}): stop it first with `herd stop {name}`, or use `herd rm -f {name}`")]
    Running { name: String, pid: String },
    #[error("cannot use the runtime directory {path}: {source}; set HERD_RUNTIME to a writable directory")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no appliance named {name} (nothing in {dir}); `herd ps --all` lists them")]
    NotFound { name: String, dir: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RuntimeDirError + '_ {
    move |source| RuntimeDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where runtime directories live.
pub fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("HERD_RUNTIME").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    // SAFETY: geteuid cannot fail and touches no memory.
    if unsafe { libc::geteuid() } == 0 {
        return PathBuf::from("/run/herd");
    }
    match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir).join("herd"),
        // SAFETY: as above.
        None => std::env::temp_dir().join(format!("herd-{}", unsafe { libc::geteuid() })),
    }
}

/// A file in NAME's directory, without the liveness probe `find` makes
/// (NAME must already be valid, as a stack's runtime names are).
pub fn file_of(name: &str, file: &str) -> PathBuf {
    base_dir().join(name).join(file)
}

pub fn validate_name(name: &str) -> Result<(), RuntimeDirError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(())
    } else {
        Err(RuntimeDirError::BadName(name.to_owned()))
    }
}

/// `flock` without blocking; true if we got it.
pub fn try_lock(file: &File, exclusive: bool) -> bool {
    let op = if exclusive {
        libc::LOCK_EX
    } else {
        libc::LOCK_SH
    };
    // SAFETY: flock on a descriptor we own; no memory is passed.
    unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) == 0 }
}

/// How long a claim waits out another herd that only looks at the lock
/// (`herd ps` takes it shared for a moment; so does a process that forks
/// while it has the lock file open).
const CLAIM_PATIENCE: std::time::Duration = std::time::Duration::from_millis(300);

/// The exclusive lock, retried for CLAIM_PATIENCE: a running owner holds
/// it for its whole life, an onlooker only briefly.
fn lock_exclusive(file: &File) -> bool {
    let deadline = std::time::Instant::now() + CLAIM_PATIENCE;
    loop {
        if try_lock(file, true) {
            return true;
        }
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

/// A runtime directory this process owns for as long as the value lives.
pub struct RuntimeDir {
    path: PathBuf,
    /// Holds the exclusive lock (None in a jailed child: its parent holds it).
    lock: Option<File>,
}

impl RuntimeDir {
    /// Takes NAME's directory: refuses if a live herd holds it, cleans it
    /// if a dead one left it behind.
    pub fn claim(name: &str) -> Result<Self, RuntimeDirError> {
        validate_name(name)?;
        let base = base_dir();
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&base)
            .map_err(io_err(&base))?;
        let path = base.join(name);
        match std::fs::DirBuilder::new().mode(0o700).create(&path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(&path)(e)),
        }
        let lock_path = path.join(LOCK_FILE);
        // No symlinks: a jail's unprivileged user owned this directory in
        // an earlier run and may have planted one for root to follow.
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        if !lock_exclusive(&lock) {
            return Err(RuntimeDirError::AlreadyRunning {
                name: name.to_owned(),
                pid: read_pid_text(&path),
            });
        }
        let dir = RuntimeDir {
            path,
            lock: Some(lock),
        };
        dir.clean_stale()?;
        dir.write(PID_FILE, format!("{}\n", std::process::id()).as_bytes())?;
        Ok(dir)
    }

    /// Removes what a previous, dead run left (everything but the lock).
    fn clean_stale(&self) -> Result<(), RuntimeDirError> {
        if remove_all_but_lock(&self.path, &self.path)? {
            log::info!(
                "cleaned the stale runtime directory {} (its herd is gone)",
                self.path.display()
            );
        }
        Ok(())
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// In a jailed child, whose inherited descriptors the jailer closed:
    /// the lock stays with the supervisor, which outlives the child.
    pub fn leave_lock_to_parent(&mut self) {
        // Forgets the (already closed) descriptor without closing it again.
        if let Some(lock) = self.lock.take() {
            let _ = std::os::fd::IntoRawFd::into_raw_fd(lock);
        }
    }

    /// Writes a file in the directory atomically (temp file + rename).
    pub fn write(&self, name: &str, contents: &[u8]) -> Result<(), RuntimeDirError> {
        let tmp = self.path.join(format!(".{name}.tmp"));
        // A fresh file, never one (or a symlink) that is already there.
        let _ = std::fs::remove_file(&tmp);
        let result = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&tmp)
            .and_then(|mut f| f.write_all(contents))
            .and_then(|()| std::fs::rename(&tmp, self.path.join(name)));
        result.map_err(io_err(&tmp))
    }

    /// Removes the whole directory (the VM never ran).
    pub fn remove(&self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }

    /// The VM stopped: what only made sense while it ran goes; the logs,
    /// config and boot report stay for `herd logs`/`inspect`.
    pub fn finish(&self) {
        for name in [PID_FILE, API_SOCKET, CONSOLE_SOCKET] {
            let _ = std::fs::remove_file(self.path.join(name));
        }
    }
}

/// Empties a runtime directory but for its lock, whose holder must be the
/// caller; true if there was anything to remove. Never follows a symlink
/// (the jail's user may have planted one): a link is removed, not its
/// target. Errors name paths under `shown` (the directory's own name when
/// `dir` is its /proc/self/fd entry).
fn remove_all_but_lock(dir: &Path, shown: &Path) -> Result<bool, RuntimeDirError> {
    let entries = std::fs::read_dir(dir).map_err(io_err(shown))?;
    let mut removed_any = false;
    for entry in entries.flatten() {
        if entry.file_name() == LOCK_FILE {
            continue;
        }
        let p = entry.path();
        // file_type() is the entry's own type (lstat), not its target's.
        let is_dir = entry.file_type().is_ok_and(|t| t.is_dir());
        let removed = if is_dir {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        removed.map_err(io_err(&shown.join(entry.file_name())))?;
        removed_any = true;
    }
    Ok(removed_any)
}

/// `herd rm`: removes NAME's whole directory (logs, config, boot report),
/// which no herd may hold. Holds the lock meanwhile, so a `herd run --name
/// NAME` starting at the same moment is refused rather than losing its
/// files.
pub fn remove(name: &str) -> Result<(), RuntimeDirError> {
    remove_in(&base_dir(), name)
}

fn remove_in(base: &Path, name: &str) -> Result<(), RuntimeDirError> {
    validate_name(name)?;
    let path = base.join(name);
    let not_found = || RuntimeDirError::NotFound {
        name: name.to_owned(),
        dir: base.to_owned(),
    };
    // NAME itself, never a link planted in its place, opened once: every
    // later step goes through this descriptor (its /proc/self/fd entry
    // names this directory, whatever NAME is renamed to meanwhile).
    let dir = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(&path)
    {
        Ok(dir) => dir,
        // ELOOP/ENOTDIR: a link or a file, not an appliance.
        Err(e)
            if e.kind() == std::io::ErrorKind::NotFound
                || matches!(e.raw_os_error(), Some(libc::ELOOP | libc::ENOTDIR)) =>
        {
            return Err(not_found())
        }
        Err(e) => return Err(io_err(&path)(e)),
    };
    let held = PathBuf::from(format!("/proc/self/fd/{}", dir.as_raw_fd()));
    let lock_path = held.join(LOCK_FILE);
    // O_NOFOLLOW: a planted `lock` link is refused (as `claim` refuses it).
    let lock = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&lock_path)
    {
        Ok(lock) => lock,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(not_found()),
        Err(e) => return Err(io_err(&path.join(LOCK_FILE))(e)),
    };
    if !lock_exclusive(&lock) {
        return Err(RuntimeDirError::Running {
            name: name.to_owned(),
            pid: read_pid_text(&held),
        });
    }
    remove_all_but_lock(&held, &path)?;
    std::fs::remove_file(&lock_path).map_err(io_err(&path.join(LOCK_FILE)))?;
    // Not remove_dir_all: whatever appeared since was not ours to remove.
    // rmdir of NAME refuses a link, and anything but an empty directory.
    std::fs::remove_dir(&path).map_err(io_err(&path))
}

fn read_pid_text(dir: &Path) -> String {
    std::fs::read_to_string(dir.join(PID_FILE))
        .map(|p| p.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

/// What `ps` and the client commands see of a directory.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// A herd holds the lock.
    Running,
    /// It stopped normally (no pid file).
    Exited,
    /// Its herd died without cleaning up (pid file, lock free).
    Dead,
}

pub struct Entry {
    pub name: String,
    pub path: PathBuf,
    pub liveness: Liveness,
    pub pid: Option<u32>,
}

impl Entry {
    pub fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

fn inspect(name: &str, path: PathBuf) -> Entry {
    let pid = std::fs::read_to_string(path.join(PID_FILE))
        .ok()
        .and_then(|p| p.trim().parse().ok());
    let held = File::open(path.join(LOCK_FILE))
        .map(|f| !try_lock(&f, false))
        .unwrap_or(false);
    let liveness = match (held, pid) {
        (true, _) => Liveness::Running,
        (false, Some(_)) => Liveness::Dead,
        (false, None) => Liveness::Exited,
    };
    Entry {
        name: name.to_owned(),
        path,
        liveness,
        pid,
    }
}

/// NAME's directory, which must exist.
pub fn find(name: &str) -> Result<Entry, RuntimeDirError> {
    validate_name(name)?;
    let base = base_dir();
    let path = base.join(name);
    if !path.join(LOCK_FILE).exists() {
        return Err(RuntimeDirError::NotFound {
            name: name.to_owned(),
            dir: base,
        });
    }
    Ok(inspect(name, path))
}

/// Every appliance directory, sorted by name.
pub fn list() -> Vec<Entry> {
    let base = base_dir();
    let Ok(entries) = std::fs::read_dir(&base) else {
        return Vec::new();
    };
    let mut found: Vec<Entry> = entries
        .flatten()
        .filter(|e| e.path().join(LOCK_FILE).exists())
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_owned();
            Some(inspect(&name, e.path()))
        })
        .collect();
    found.sort_by(|a, b| a.name.cmp(&b.name));
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(validate_name("web-1.prod_a").is_ok());
        for bad in ["", "-x", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    fn scratch(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("herd-rt-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn appliance(dir: &Path) {
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for file in [LOCK_FILE, CONSOLE_LOG, "sub/x"] {
            std::fs::write(dir.join(file), b"x").unwrap();
        }
    }

    #[test]
    fn rm_removes_the_whole_directory() {
        let base = scratch("rm");
        appliance(&base.join("web"));
        remove_in(&base, "web").unwrap();
        assert!(!base.join("web").exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn rm_never_empties_what_a_planted_link_points_to() {
        let base = scratch("rm-link");
        let elsewhere = base.join("elsewhere");
        appliance(&elsewhere);
        std::os::unix::fs::symlink(&elsewhere, base.join("web")).unwrap();
        assert!(matches!(
            remove_in(&base, "web"),
            Err(RuntimeDirError::NotFound { .. })
        ));
        assert!(elsewhere.join(CONSOLE_LOG).exists() && elsewhere.join("sub/x").exists());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn rm_refuses_a_running_appliance() {
        let base = scratch("rm-held");
        appliance(&base.join("web"));
        let lock = File::open(base.join("web").join(LOCK_FILE)).unwrap();
        assert!(try_lock(&lock, true));
        assert!(matches!(
            remove_in(&base, "web"),
            Err(RuntimeDirError::Running { .. })
        ));
        assert!(base.join("web").join(CONSOLE_LOG).exists());
        let _ = std::fs::remove_dir_all(&base);
    }
}
