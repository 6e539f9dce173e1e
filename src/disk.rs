//! `herd disk create`: a per-guest ext4 disk from a directory, without root
//! privileges (mkfs.ext4 -d copies the tree while formatting).

use std::path::{Path, PathBuf};
use std::process::Command;

/// Label the appliance init looks for on the per-guest disk.
pub const DATA_DISK_LABEL: &str = "herd-data";
/// ext4 with a journal needs a few MiB of metadata.
const MIN_SIZE: u64 = 8 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DiskCreateError {
    #[error("--size {0:?} is not a size: use bytes or a number with K, M, G or T (e.g. 64M)")]
    BadSize(String),
    #[error("--size {0} is too small: an ext4 disk needs at least 8 MiB")]
    TooSmall(u64),
    #[error("{0} is not a directory; --from takes the directory whose contents go on the disk")]
    NotADirectory(PathBuf),
    #[error("{0} already exists; herd does not overwrite disks (remove it or pick another name)")]
    Exists(PathBuf),
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot run mkfs.ext4 ({0}); install e2fsprogs (apt-get install e2fsprogs)")]
    NoMkfs(std::io::Error),
    #[error("{dir} does not fit in {size} bytes; raise --size (mkfs.ext4 said: {detail})")]
    DoesNotFit {
        dir: PathBuf,
        size: u64,
        detail: String,
    },
    #[error("mkfs.ext4 failed for {path}: {detail}")]
    Mkfs { path: PathBuf, detail: String },
}

pub fn parse_size(text: &str) -> Result<u64, DiskCreateError> {
    let bad = || DiskCreateError::BadSize(text.to_owned());
    let t = text.trim();
    let (digits, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(bad()),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

pub fn create(from: &Path, size: u64, out: &Path) -> Result<(), DiskCreateError> {
    if size < MIN_SIZE {
        return Err(DiskCreateError::TooSmall(size));
    }
    if !from.is_dir() {
        return Err(DiskCreateError::NotADirectory(from.to_owned()));
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(out)
        .map_err(|source| match source.kind() {
            std::io::ErrorKind::AlreadyExists => DiskCreateError::Exists(out.to_owned()),
            _ => DiskCreateError::Create {
                path: out.to_owned(),
                source,
            },
        })?;
    let result = file
        .set_len(size)
        .map_err(|source| DiskCreateError::Create {
            path: out.to_owned(),
            source,
        })
        .and_then(|()| mkfs(from, size, out));
    if result.is_err() {
        // Only a file this call created is removed.
        let _ = std::fs::remove_file(out);
    }
    result
}

fn mkfs(from: &Path, size: u64, out: &Path) -> Result<(), DiskCreateError> {
    let output = Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            DATA_DISK_LABEL,
            "-E",
            "root_owner=0:0",
            "-d",
        ])
        .arg(from)
        .arg(out)
        .output()
        .map_err(DiskCreateError::NoMkfs)?;
    if output.status.success() {
        return Ok(());
    }
    let detail = String::from_utf8_lossy(&output.stderr)
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("no message")
        .trim()
        .to_owned();
    let lower = detail.to_lowercase();
    if lower.contains("no space")
        || lower.contains("could not allocate")
        || lower.contains("too big")
    {
        Err(DiskCreateError::DoesNotFit {
            dir: from.to_owned(),
            size,
            detail,
        })
    } else {
        Err(DiskCreateError::Mkfs {
            path: out.to_owned(),
            detail,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("M").is_err());
        assert!(parse_size("99999999999T").is_err());
    }
}
