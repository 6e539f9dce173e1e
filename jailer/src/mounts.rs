//! The jail's root: a small tmpfs (in the appliance's own mount namespace,
//! so it vanishes with it) holding bind mounts of exactly the files and
//! devices the VM needs, then `pivot_root` into it with the old root
//! detached.

use std::fs::{self, File};
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::{sys, Bind, JailError};

const NONE: Option<&str> = None;

fn io(what: String) -> impl FnOnce(std::io::Error) -> JailError {
    move |source| JailError::Io { what, source }
}

/// Where `path` appears inside a jail rooted at `root`.
fn inside(root: &Path, path: &Path) -> PathBuf {
    root.join(path.strip_prefix("/").unwrap_or(path))
}

pub(crate) fn build_root(
    root: &Path,
    binds: &[Bind],
    devices: &[PathBuf],
) -> Result<(), JailError> {
    // Nothing mounted below must propagate back to the host.
    mount(NONE, "/", NONE, MsFlags::MS_REC | MsFlags::MS_PRIVATE, NONE)
        .map_err(sys("make the mount namespace private"))?;
    let quiet = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(
        Some("tmpfs"),
        root,
        Some("tmpfs"),
        quiet,
        Some("mode=0755,size=1m,nr_inodes=1024"),
    )
    .map_err(sys(format!("mount the jail's tmpfs on {}", root.display())))?;
    for bind in binds {
        let mut flags = quiet;
        if !bind.writable {
            flags |= MsFlags::MS_RDONLY;
        }
        // A disk may be a block device: it needs device access.
        if fs::metadata(&bind.path).is_ok_and(|m| m.file_type().is_block_device()) {
            flags.remove(MsFlags::MS_NODEV);
        }
        bind_at(root, &bind.path, flags)?;
    }
    for device in devices {
        bind_at(root, device, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC)?;
    }
    mount_proc(root, quiet)?;
    // Nothing in the jail's own tmpfs is writable once it is populated.
    mount(
        NONE,
        root,
        NONE,
        MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | quiet,
        NONE,
    )
    .map_err(sys("make the jail's root read-only"))
}

/// A read-only procfs of the appliance's own PID namespace, holding only
/// process directories (`subset=pid`: no /proc/sys, no kernel files):
/// herd reads its own memory use there (/proc/self/smaps). The process is
/// pid 1 of that namespace, so it sees itself and nothing else.
fn mount_proc(root: &Path, quiet: MsFlags) -> Result<(), JailError> {
    let target = root.join("proc");
    fs::create_dir_all(&target).map_err(io(format!("create {}", target.display())))?;
    mount(
        Some("proc"),
        &target,
        Some("proc"),
        quiet | MsFlags::MS_RDONLY,
        Some("subset=pid,hidepid=invisible"),
    )
    .map_err(sys(format!(
        "mount the jail's /proc on {}",
        target.display()
    )))
}

fn bind_at(root: &Path, path: &Path, flags: MsFlags) -> Result<(), JailError> {
    let target = inside(root, path);
    if let Some(parent) = target.parent() {
        fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    }
    if path.is_dir() {
        fs::create_dir_all(&target).map_err(io(format!("create {}", target.display())))?;
    } else {
        File::create(&target).map_err(io(format!("create {}", target.display())))?;
    }
    let err = |source| JailError::Bind {
        path: path.to_owned(),
        target: target.clone(),
        source,
    };
    mount(Some(path), &target, NONE, MsFlags::MS_BIND, NONE).map_err(err)?;
    // A bind mount takes its flags from a remount.
    mount(
        NONE,
        &target,
        NONE,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | flags,
        NONE,
    )
    .map_err(err)
}

/// Makes `root` the process's `/` and detaches the old root. On a host
/// whose `/` is the initramfs (rootfs cannot be pivoted away), moves the
/// jail over `/` and chroots instead, as runc does; the old root is then
/// covered, and the capabilities to uncover it go with the uid drop.
pub(crate) fn pivot_into(root: &Path) -> Result<(), JailError> {
    nix::unistd::chdir(root).map_err(sys(format!("enter {}", root.display())))?;
    match nix::unistd::pivot_root(".", ".") {
        Ok(()) => {
            // The old root now sits under the new one at "."; detach it.
            umount2(".", MntFlags::MNT_DETACH).map_err(sys("detach the old root"))?;
        }
        Err(Errno::EINVAL) => {
            mount(Some("."), "/", NONE, MsFlags::MS_MOVE, NONE)
                .map_err(sys("move the jail over / (initramfs host)"))?;
            nix::unistd::chroot(".").map_err(sys("chroot into the jail"))?;
        }
        Err(e) => return Err(sys("pivot_root into the jail")(e)),
    }
    nix::unistd::chdir("/").map_err(sys("enter the jail's /"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_keep_their_absolute_path() {
        assert_eq!(
            inside(Path::new("/run/herd/.jail/a/root"), Path::new("/dev/kvm")),
            PathBuf::from("/run/herd/.jail/a/root/dev/kvm")
        );
    }
}
