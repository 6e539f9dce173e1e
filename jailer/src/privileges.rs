//! What the jailed process holds: its user, descriptors, environment and
//! resource limits.

use std::os::fd::RawFd;

use nix::sys::resource::{setrlimit, Resource};
use nix::unistd::{Gid, Uid, User};

use crate::{sys, JailError};

/// The unprivileged identity the appliance runs as.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JailUser {
    pub uid: u32,
    pub gid: u32,
}

impl JailUser {
    /// A user name (looked up in the user database) or `UID:GID`.
    pub fn lookup(spec: &str) -> Result<JailUser, JailError> {
        // 4294967295 is -1 to the kernel: "leave unchanged", so a drop to
        // it would keep root.
        let valid = |user: JailUser| match user.uid == u32::MAX || user.gid == u32::MAX {
            true => Err(JailError::ReservedId(spec.to_owned())),
            false => Ok(user),
        };
        if let Some((uid, gid)) = spec.split_once(':') {
            return match (uid.parse(), gid.parse()) {
                (Ok(uid), Ok(gid)) => valid(JailUser { uid, gid }),
                _ => Err(JailError::BadUser(spec.to_owned())),
            };
        }
        match User::from_name(spec) {
            Ok(Some(user)) => valid(JailUser {
                uid: user.uid.as_raw(),
                gid: user.gid.as_raw(),
            }),
            Ok(None) => Err(JailError::UnknownUser(spec.to_owned())),
            Err(source) => Err(JailError::UserLookup {
                name: spec.to_owned(),
                source,
            }),
        }
    }
}

/// Resource limits for the jailed process.
#[derive(Clone, Debug)]
pub struct Rlimits {
    /// RLIMIT_NOFILE.
    pub open_files: u64,
    /// RLIMIT_FSIZE in bytes: the largest file herd may write (console
    /// log); None leaves it unlimited.
    pub file_size: Option<u64>,
}

impl Default for Rlimits {
    fn default() -> Self {
        // Firecracker's jailer default; herd needs a few dozen.
        Rlimits {
            open_files: 2048,
            file_size: None,
        }
    }
}

pub(crate) fn set_rlimits(limits: &Rlimits) -> Result<(), JailError> {
    setrlimit(
        Resource::RLIMIT_NOFILE,
        limits.open_files,
        limits.open_files,
    )
    .map_err(sys("set RLIMIT_NOFILE"))?;
    if let Some(size) = limits.file_size {
        setrlimit(Resource::RLIMIT_FSIZE, size, size).map_err(sys("set RLIMIT_FSIZE"))?;
    }
    // A core dump would hold guest memory.
    setrlimit(Resource::RLIMIT_CORE, 0, 0).map_err(sys("set RLIMIT_CORE"))
}

/// Closes every descriptor but stdin, stdout, stderr and `keep`.
pub(crate) fn close_inherited_fds(keep: &[RawFd]) -> Result<(), JailError> {
    let mut keep: Vec<u32> = keep
        .iter()
        .filter_map(|&fd| u32::try_from(fd).ok())
        .filter(|&fd| fd > 2)
        .collect();
    keep.sort_unstable();
    let mut first = 3u32;
    for fd in keep.into_iter().chain([u32::MAX]) {
        if fd > first {
            // close_range only closes descriptors; nothing in this
            // (single-threaded, just forked) process uses the closed ones.
            // SAFETY: sound for the reasons just given.
            let rc = unsafe { libc::close_range(first, fd - 1, 0) };
            if rc != 0 {
                return Err(sys("close inherited descriptors")(nix::Error::last()));
            }
        }
        first = fd.saturating_add(1);
    }
    Ok(())
}

/// Unsets every variable, then zeroes the strings the process was started
/// with: they stay in its initial stack (what /proc/PID/environ shows),
/// where code that escaped into herd could read them. Needs /proc.
pub(crate) fn clear_environment() -> Result<(), JailError> {
    let block = initial_environment_block()?;
    for (key, _) in std::env::vars_os() {
        std::env::remove_var(key);
    }
    if let Some((start, end)) = block.filter(|(start, end)| start < end) {
        // [start, end) is this process's initial environment block
        // (env_start/env_end from /proc/self/stat), writable stack memory;
        // every variable was just unset, so nothing points into it any
        // more, and the process is single-threaded.
        // SAFETY: sound for the reasons just given.
        unsafe { std::ptr::write_bytes(start as *mut u8, 0, end - start) };
    }
    Ok(())
}

/// env_start and env_end (fields 50 and 51) of /proc/self/stat.
fn initial_environment_block() -> Result<Option<(usize, usize)>, JailError> {
    let stat = std::fs::read_to_string("/proc/self/stat").map_err(|source| JailError::Io {
        what: "read /proc/self/stat".into(),
        source,
    })?;
    // Fields after the command name (which may hold spaces) start at 3.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).and_then(|f| f.parse::<usize>().ok());
    Ok(field(50).zip(field(51)))
}

pub(crate) fn drop_to(user: &JailUser) -> Result<(), JailError> {
    let (uid, gid) = (Uid::from_raw(user.uid), Gid::from_raw(user.gid));
    nix::unistd::setgroups(&[]).map_err(sys("drop supplementary groups"))?;
    nix::unistd::setresgid(gid, gid, gid).map_err(sys(format!("switch to gid {gid}")))?;
    nix::unistd::setresuid(uid, uid, uid).map_err(sys(format!("switch to uid {uid}")))?;
    // Changing credentials clears the parent-death signal: set it again.
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(sys("set the parent-death signal"))?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(sys("set no_new_privs")(nix::Error::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_by_number_and_name() {
        assert_eq!(
            JailUser::lookup("123:456").unwrap(),
            JailUser { uid: 123, gid: 456 }
        );
        assert!(matches!(
            JailUser::lookup("1:x"),
            Err(JailError::BadUser(_))
        ));
        for reserved in ["4294967295:1", "1:4294967295"] {
            assert!(
                matches!(JailUser::lookup(reserved), Err(JailError::ReservedId(_))),
                "{reserved}"
            );
        }
        assert_eq!(
            JailUser::lookup("root").unwrap(),
            JailUser { uid: 0, gid: 0 }
        );
        assert!(matches!(
            JailUser::lookup("no-such-herd-user"),
            Err(JailError::UnknownUser(_))
        ));
    }
}
