//! A disk image on a filesystem whose writes hang (ext4 on a loop device,
//! frozen with `fsfreeze`, as a hung NFS server would hang them): the
//! guest's vCPU keeps running and a stop still happens within its promise.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::support::herd_run::skip_notice;
use super::support::staging::check;

/// A small ext4 filesystem on a loop device, mounted and frozen; thawed,
/// unmounted and detached when dropped.
pub struct FrozenFs {
    dir: PathBuf,
    mnt: PathBuf,
    loop_dev: Option<String>,
    mounted: bool,
    frozen: bool,
}

fn sh(cmd: &str, args: &[&str]) -> Result<String, String> {
    check(Command::new(cmd).args(args)).map(|out| out.trim().to_owned())
}

impl FrozenFs {
    /// None (after a loud SKIP line) when not root: loop devices and mounts
    /// need it. As root, a filesystem that cannot be made fails the test
    /// rather than skipping it.
    pub fn new(tag: &str) -> Option<FrozenFs> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            skip_notice("loop devices and mounts need root", tag);
            return None;
        }
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("vm_hostile-{}-{tag}", std::process::id()));
        let mnt = dir.join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let mut fs = FrozenFs {
            dir,
            mnt,
            loop_dev: None,
            mounted: false,
            frozen: false,
        };
        if let Err(e) = fs.set_up() {
            panic!("{tag}: cannot make a frozen filesystem as root: {e}");
        }
        Some(fs)
    }

    fn set_up(&mut self) -> Result<(), String> {
        let img = self.dir.join("fs.img");
        let img_s = img.to_str().unwrap();
        let file = std::fs::File::create(&img).map_err(|e| e.to_string())?;
        file.set_len(32 << 20).map_err(|e| e.to_string())?;
        sh("mkfs.ext4", &["-q", "-F", img_s])?;
        self.loop_dev = Some(sh("losetup", &["-f", "--show", img_s])?);
        let mnt = self.mnt.to_str().unwrap();
        sh("mount", &[self.loop_dev.as_deref().unwrap(), mnt])?;
        self.mounted = true;
        std::fs::write(self.disk(), vec![0u8; 1 << 20]).map_err(|e| e.to_string())?;
        sh("sync", &[])?;
        sh("fsfreeze", &["-f", mnt])?;
        self.frozen = true;
        Ok(())
    }

    /// A 1 MiB disk image on the frozen filesystem.
    pub fn disk(&self) -> PathBuf {
        self.mnt.join("disk.img")
    }

    pub fn thaw(&mut self) {
        if self.frozen {
            let _ = sh("fsfreeze", &["-u", self.mnt.to_str().unwrap()]);
            self.frozen = false;
        }
    }

    pub fn path(&self) -> &Path {
        &self.mnt
    }
}

impl Drop for FrozenFs {
    fn drop(&mut self) {
        self.thaw();
        if self.mounted {
            let _ = sh("umount", &[self.mnt.to_str().unwrap()]);
        }
        if let Some(dev) = &self.loop_dev {
            let _ = sh("losetup", &["-d", dev]);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
