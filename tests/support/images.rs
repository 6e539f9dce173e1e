//! Guest kernel and base image, built (or taken from the cache) by their
//! build scripts in guest-images/.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The cache dir printed last by guest-images/NAME/build.sh.
pub fn image_dir(name: &str) -> Result<PathBuf, String> {
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("guest-images/{name}/build.sh"));
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
    if !out.status.success() {
        return Err(format!("{} failed ({})", script.display(), out.status));
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    match stdout.lines().last() {
        Some(dir) if Path::new(dir.trim()).is_dir() => Ok(PathBuf::from(dir.trim())),
        _ => Err(format!("{} printed no cache directory", script.display())),
    }
}
