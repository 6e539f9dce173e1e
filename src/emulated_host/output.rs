//! The script's output directory: the test host writes it as a tar archive
//! onto a drive of its own (a sparse file here); herd unpacks it into the
//! caller's directory afterwards. Only regular files and directories are
//! unpacked, each checked to stay inside that directory (the `tar` crate's
//! `unpack_in`); anything else in the archive is skipped with a warning.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::machine::{io_err, EmulatedHostError};

/// The drive's size: room for the output, taking no disk space until used.
const DRIVE_BYTES: u64 = 1 << 30;

/// A sparse, empty drive file in `work`.
pub fn create_drive(work: &Path) -> Result<PathBuf, EmulatedHostError> {
    let path = work.join("output.tar");
    let f = File::create(&path).map_err(io_err(&path))?;
    f.set_len(DRIVE_BYTES).map_err(io_err(&path))?;
    Ok(path)
}

/// Unpacks the drive's archive into `dir` (created if missing). An empty
/// drive (the test host died before writing it) unpacks nothing.
pub fn extract(drive: &Path, dir: &Path) -> Result<(), EmulatedHostError> {
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let file = File::open(drive).map_err(io_err(drive))?;
    let mut archive = tar::Archive::new(file);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    let bad = |e: std::io::Error| EmulatedHostError::Failed {
        why: format!("the output directory's archive is unreadable: {e}"),
        tail: String::new(),
    };
    let mut count = 0;
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        let kind = entry.header().entry_type();
        let name = entry.path().map_err(bad)?.into_owned();
        if !(kind.is_file() || kind.is_dir()) {
            log::warn!(
                "output directory: skipping {} (only files and directories are copied back)",
                name.display()
            );
            continue;
        }
        match entry.unpack_in(dir) {
            Ok(true) => count += usize::from(kind.is_file()),
            Ok(false) => log::warn!("output directory: skipping {} (outside it)", name.display()),
            Err(e) => {
                return Err(EmulatedHostError::Io {
                    path: dir.join(&name),
                    source: e,
                })
            }
        }
    }
    log::info!(
        "copied {count} files of the output directory to {}",
        dir.display()
    );
    Ok(())
}
