//! Building guest inputs on the outer machine: a temporary staging
//! directory, personality files and data disks made with `herd disk create`.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Removes the staging directory (personalities, disks, tools) when done.
pub struct TempDir(pub PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `cmd`; its stdout, or why it failed.
pub fn check(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {cmd:?}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Writes `text` to `path`, creating its directories.
pub fn write(path: &Path, text: &str) -> Result<(), String> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))
}

/// `herd disk create --from FROM --size SIZE IMG`.
pub fn disk_create(herd: &Path, from: &Path, size: &str, img: &Path) -> Result<(), String> {
    check(Command::new(herd).args(["disk", "create", "--from"]).args([
        from.as_os_str(),
        "--size".as_ref(),
        size.as_ref(),
        img.as_os_str(),
    ]))
    .map(drop)
}
