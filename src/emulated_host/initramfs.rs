//! The per-run initramfs: the test host's base.cpio followed by a second
//! newc archive (the kernel unpacks concatenated archives) holding herd, its
//! shared libraries, the user's files and /scenario.sh.
//!
//! The second archive is made by `cpio -L` from a staging tree of symlinks,
//! so large guest images are never copied on the way. Every destination is
//! checked to stay inside that tree: it is deleted and re-linked, so a
//! `..` in a user's DEST would otherwise delete a file of the caller's.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path, PathBuf};
use std::process::{Command, Stdio};

use super::machine::{io_err, EmulatedHostError};

/// Where herd goes inside the test host (on PATH there).
pub const HERD_DEST: &str = "/usr/local/bin/herd";

/// Checks a path inside the test host: absolute, made only of plain names
/// (no `..`, `.` or empty components), not `/` itself. Returns it relative
/// to the test host's root.
pub fn checked_dest(dest: &str) -> Result<PathBuf, EmulatedHostError> {
    let bad = |why: &str| {
        EmulatedHostError::BadInput(format!(
            "destination {dest:?} in the test host {why}; give a path such as /emu/in/file \
             or in/file (under /emu) without `..`"
        ))
    };
    if !dest.starts_with('/') {
        return Err(bad("is not absolute"));
    }
    let mut rel = PathBuf::new();
    for c in Path::new(dest).components() {
        match c {
            Component::RootDir => {}
            Component::Normal(name) => rel.push(name),
            Component::ParentDir => return Err(bad("contains `..`")),
            Component::CurDir | Component::Prefix(_) => return Err(bad("is not a plain path")),
        }
    }
    if rel.as_os_str().is_empty() {
        return Err(bad("names no file"));
    }
    Ok(rel)
}

/// The staging tree: symlinks named like the files' places in the test
/// host, pointing at the files here.
pub struct Staging {
    root: PathBuf,
}

impl Staging {
    pub fn new(root: PathBuf) -> Result<Self, EmulatedHostError> {
        fs::create_dir_all(&root).map_err(io_err(&root))?;
        Ok(Staging { root })
    }

    /// Puts the regular file `src` at `dest` (absolute, in the test host).
    pub fn add(&self, src: &Path, dest: &str) -> Result<(), EmulatedHostError> {
        let src = fs::canonicalize(src).map_err(io_err(src))?;
        if !src.is_file() {
            return Err(EmulatedHostError::BadInput(format!(
                "{}: not a regular file (directories are not supported; pass each file)",
                src.display()
            )));
        }
        let rel = checked_dest(dest)?;
        let mut dir = self.root.clone();
        let parents: Vec<_> = rel
            .parent()
            .into_iter()
            .flat_map(Path::components)
            .collect();
        for c in parents {
            dir.push(c);
            self.real_dir(&dir, dest)?;
        }
        let link = self.root.join(&rel);
        match fs::symlink_metadata(&link) {
            Ok(m) if m.is_dir() => {
                return Err(EmulatedHostError::BadInput(format!(
                    "destination {dest:?} in the test host is already a directory of other files"
                )))
            }
            // Only ever one of our own links: a later file for the same
            // place replaces an earlier one.
            Ok(_) => fs::remove_file(&link).map_err(io_err(&link))?,
            Err(_) => {}
        }
        std::os::unix::fs::symlink(&src, &link).map_err(io_err(&link))
    }

    /// Makes `dir` a real directory of the staging tree; refuses one of our
    /// file links, which would lead out of the tree.
    fn real_dir(&self, dir: &Path, dest: &str) -> Result<(), EmulatedHostError> {
        match fs::symlink_metadata(dir) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(EmulatedHostError::BadInput(format!(
                "destination {dest:?} in the test host is below another file ({})",
                dir.strip_prefix(&self.root).unwrap_or(dir).display()
            ))),
            Err(_) => fs::create_dir(dir).map_err(io_err(dir)),
        }
    }

    /// Writes `text` as the executable script `dest` (absolute).
    pub fn add_script(&self, dest: &str, text: &str) -> Result<(), EmulatedHostError> {
        let path = self.root.join(checked_dest(dest)?);
        fs::write(&path, text).map_err(io_err(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).map_err(io_err(&path))
    }

    /// herd itself (debug info stripped) and its shared libraries; `ip`
    /// too when `with_ip` and this machine has it, and the e2fsprogs tools
    /// herd runs (`herd disk create`, `herd up`'s data disks).
    pub fn add_herd(&self, work: &Path, with_ip: bool) -> Result<(), EmulatedHostError> {
        let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
        let herd = stripped_copy(&exe, work)?;
        self.add(&herd, HERD_DEST)?;
        let mut binaries = vec![herd];
        let mut tools = vec!["mkfs.ext4", "debugfs", "e2fsck"];
        if with_ip {
            tools.insert(0, "ip");
        }
        for tool in tools {
            let found = ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
                .iter()
                .map(|dir| Path::new(dir).join(tool))
                .find(|p| p.is_file());
            if let Some(path) = found {
                self.add(&path, &format!("/usr/local/bin/{tool}"))?;
                binaries.push(path);
            }
        }
        for bin in &binaries {
            for lib in ldd(bin)? {
                self.add(&lib, &lib.to_string_lossy())?;
            }
        }
        Ok(())
    }

    /// Writes base.cpio + the staged tree to `initrd`; returns the size of
    /// the staged part.
    pub fn write_initrd(&self, base: &Path, initrd: &Path) -> Result<u64, EmulatedHostError> {
        fs::copy(base, initrd).map_err(io_err(base))?;
        let base_len = fs::metadata(initrd).map_err(io_err(initrd))?.len();
        let out = fs::OpenOptions::new()
            .append(true)
            .open(initrd)
            .map_err(io_err(initrd))?;
        let result = Command::new("sh")
            .arg("-c")
            .arg("find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -L -R 0:0")
            .current_dir(&self.root)
            .stdout(out)
            .stderr(Stdio::piped())
            .output()
            .map_err(|e| EmulatedHostError::Assemble(format!("cannot run cpio: {e}")))?;
        if !result.status.success() {
            return Err(EmulatedHostError::Assemble(format!(
                "cpio failed ({}): {}; is cpio installed (apt-get install cpio)?",
                result.status,
                String::from_utf8_lossy(&result.stderr).trim()
            )));
        }
        let total = fs::metadata(initrd).map_err(io_err(initrd))?.len();
        Ok(total.saturating_sub(base_len))
    }
}

/// A copy of `bin` without debug info when `strip` exists: a debug build of
/// herd is mostly DWARF, which would only slow QEMU's initrd loading.
fn stripped_copy(bin: &Path, work: &Path) -> Result<PathBuf, EmulatedHostError> {
    let dest = work.join("herd");
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dest)
        .arg(bin)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(bin, &dest).map_err(io_err(bin))?;
    }
    Ok(dest)
}

/// Shared libraries `ldd` lists for `bin`, the dynamic loader included;
/// none for a static binary.
fn ldd(bin: &Path) -> Result<Vec<PathBuf>, EmulatedHostError> {
    let out = Command::new("ldd").arg(bin).output().map_err(io_err(bin))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "libc.so.6 => /lib/…/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
    let paths = text.lines().filter_map(|line| match line.split_once("=>") {
        Some((_, right)) => right.split_whitespace().next(),
        None => line.split_whitespace().next(),
    });
    Ok(paths
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("herd-staging-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("scratch");
        d
    }

    #[test]
    fn destinations_stay_inside_the_test_host_root() {
        assert_eq!(
            checked_dest("/emu/in/a.txt").expect("plain"),
            PathBuf::from("emu/in/a.txt")
        );
        for bad in [
            "/emu/../../../../home/me/.bashrc",
            "/..",
            "/",
            "emu/x",
            "/emu/x/..",
        ] {
            let e = checked_dest(bad).expect_err(bad);
            assert!(e.is_user_error(), "{bad}: {e}");
            assert!(e.to_string().contains(bad), "{bad}: {e}");
        }
    }

    #[test]
    fn staging_never_writes_outside_its_tree() {
        let d = scratch("escape");
        let victim = d.join("victim");
        fs::write(&victim, "keep me").expect("victim");
        let src = d.join("src");
        fs::write(&src, "x").expect("src");
        let staging = Staging::new(d.join("root")).expect("staging");
        let escape = format!("/emu/../../{}", "victim");
        assert!(staging.add(&src, &escape).is_err());
        // A file link must never become a directory to write through.
        staging.add(&src, "/emu/a").expect("first file");
        assert!(staging.add(&src, "/emu/a/b").is_err());
        assert!(staging.add(&d, "/emu/dir").is_err(), "directories refused");
        assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep me");
        staging
            .add(&victim, "/emu/a")
            .expect("a later file replaces a link");
        assert_eq!(
            fs::read_link(d.join("root/emu/a")).expect("link"),
            fs::canonicalize(&victim).expect("canonical")
        );
        let _ = fs::remove_dir_all(&d);
    }
}
