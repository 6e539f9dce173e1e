//! The image store: `${HERD_HOME:-~/.local/share/herd}`, holding
//! `images/NAME/VERSION/{image.erofs,manifest.json}` and the guest kernels
//! the images were built with, `kernels/KEY/vmlinux`. Everything is
//! published by renaming a finished directory into place, so a reader
//! never sees half an image.

use std::fs;
use std::path::{Path, PathBuf};

use super::manifest::Manifest;

pub const IMAGE_FILE: &str = "image.erofs";
pub const MANIFEST_FILE: &str = "manifest.json";
/// Work directories of builds in progress (or interrupted ones), inside
/// the store so the final rename stays on one filesystem.
pub const TMP_PREFIX: &str = ".build-";

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no image {wanted} in the store {store} (and no such file here); {have}")]
    NotFound {
        wanted: String,
        store: PathBuf,
        have: String,
    },
    #[error("{0:?} is not an image reference: use NAME or NAME:VERSION (e.g. redis:1)")]
    BadReference(String),
    #[error("cannot read the image store at {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: broken manifest ({detail}); remove the directory and rebuild the image")]
    BadManifest { path: PathBuf, detail: String },
    #[error("image {reference} is in use by {users}; stop those appliances first")]
    InUse { reference: String, users: String },
    #[error("image {reference} names kernel {key}, which is not in {dir}; rebuild the image (herd image build) or pass --kernel")]
    NoKernel {
        reference: String,
        key: String,
        dir: PathBuf,
    },
}

/// One image in the store.
#[derive(Debug, Clone)]
pub struct StoredImage {
    pub dir: PathBuf,
    pub manifest: Manifest,
}

impl StoredImage {
    pub fn image(&self) -> PathBuf {
        self.dir.join(IMAGE_FILE)
    }

    pub fn reference(&self) -> String {
        format!("{}:{}", self.manifest.name, self.manifest.version)
    }
}

#[derive(Debug, Clone)]
pub struct Store {
    pub root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io {
        path: path.to_owned(),
        source,
    }
}

impl Store {
    /// `$HERD_HOME`, else `$XDG_DATA_HOME/herd`, else `~/.local/share/herd`.
    pub fn from_env() -> Store {
        let root = if let Some(h) = std::env::var_os("HERD_HOME").filter(|h| !h.is_empty()) {
            PathBuf::from(h)
        } else if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|h| !h.is_empty()) {
            PathBuf::from(x).join("herd")
        } else {
            let home = std::env::var_os("HOME").unwrap_or_else(|| "/root".into());
            PathBuf::from(home).join(".local/share/herd")
        };
        Store { root }
    }

    pub fn images_dir(&self) -> PathBuf {
        self.root.join("images")
    }

    pub fn kernels_dir(&self) -> PathBuf {
        self.root.join("kernels")
    }

    pub fn kernel(&self, key: &str) -> PathBuf {
        self.kernels_dir().join(key).join("vmlinux")
    }

    pub fn image_dir(&self, name: &str, version: &str) -> PathBuf {
        self.images_dir().join(name).join(version)
    }

    /// Every image, sorted by name, then version (numerically where both
    /// are numbers).
    pub fn list(&self) -> Result<Vec<StoredImage>, StoreError> {
        let mut out = Vec::new();
        let images = self.images_dir();
        for name in read_dir_names(&images)? {
            for version in read_dir_names(&images.join(&name))? {
                let dir = images.join(&name).join(&version);
                if dir.join(IMAGE_FILE).is_file() {
                    out.push(StoredImage {
                        manifest: Manifest::load(&dir.join(MANIFEST_FILE))?,
                        dir,
                    });
                }
            }
        }
        out.sort_by(|a, b| {
            (a.manifest.name.as_str(), version_key(&a.manifest.version))
                .cmp(&(b.manifest.name.as_str(), version_key(&b.manifest.version)))
        });
        Ok(out)
    }

    /// `NAME[:VERSION]`; no version or `latest` means the highest version.
    pub fn resolve(&self, reference: &str) -> Result<StoredImage, StoreError> {
        let (name, version) = parse_reference(reference)?;
        let all = self.list()?;
        let found = all.iter().rfind(|i| {
            i.manifest.name == name
                && version.is_none_or(|v| v == "latest" || i.manifest.version == v)
        });
        if let Some(image) = found {
            return Ok(image.clone());
        }
        let have = if all.is_empty() {
            "the store is empty (build one: herd image build FILE, e.g. herd image build redis)"
                .to_owned()
        } else {
            format!(
                "it has {}",
                all.iter()
                    .map(StoredImage::reference)
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        };
        Err(StoreError::NotFound {
            wanted: reference.to_owned(),
            store: self.root.clone(),
            have,
        })
    }

    /// The kernel an image was built with.
    pub fn kernel_for(&self, image: &StoredImage) -> Result<PathBuf, StoreError> {
        let path = self.kernel(&image.manifest.kernel);
        if path.is_file() {
            Ok(path)
        } else {
            Err(StoreError::NoKernel {
                reference: image.reference(),
                key: image.manifest.kernel.clone(),
                dir: self.kernels_dir(),
            })
        }
    }

    /// Removes an image unless a running VM has it open.
    pub fn remove(&self, reference: &str) -> Result<StoredImage, StoreError> {
        let image = self.resolve(reference)?;
        let users = users_of(&image.image());
        if !users.is_empty() {
            return Err(StoreError::InUse {
                reference: image.reference(),
                users: users.join(", "),
            });
        }
        // Rename first: the image vanishes from the store at once, even if
        // deleting its files is interrupted.
        let doomed = self
            .images_dir()
            .join(format!("{TMP_PREFIX}rm-{}", std::process::id()));
        fs::rename(&image.dir, &doomed).map_err(io(&image.dir))?;
        fs::remove_dir_all(&doomed).map_err(io(&doomed))?;
        let name_dir = self.images_dir().join(&image.manifest.name);
        let _ = fs::remove_dir(name_dir); // only if that was its last version
        Ok(image)
    }
}

/// `NAME` or `NAME:VERSION`.
pub fn parse_reference(reference: &str) -> Result<(&str, Option<&str>), StoreError> {
    let (name, version) = match reference.split_once(':') {
        Some((n, v)) => (n, Some(v)),
        None => (reference, None),
    };
    // The rule a definition's name and version follow (no image can have another).
    let word = |s: &str| super::definition::check_word("", s).is_ok();
    if !word(name) || !version.is_none_or(word) {
        return Err(StoreError::BadReference(reference.to_owned()));
    }
    Ok((name, version))
}

/// Whether a `--root` value names a store image rather than a file: no `/`,
/// and no such file in the current directory.
pub fn looks_like_reference(root: &str) -> bool {
    !root.contains('/') && !Path::new(root).exists() && parse_reference(root).is_ok()
}

/// Sort key: numeric versions in numeric order, before any others.
fn version_key(v: &str) -> (u8, u64, &str) {
    match v.parse::<u64>() {
        Ok(n) => (0, n, v),
        Err(_) => (1, 0, v),
    }
}

fn read_dir_names(dir: &Path) -> Result<Vec<String>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(dir)(e)),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(io(dir))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.starts_with('.') && entry.path().is_dir() {
            names.push(name);
        }
    }
    Ok(names)
}

/// Running processes that have `image` open (herd keeps its root disk
/// open while the VM runs), as `NAME (pid N)` with the appliance's --name.
pub fn users_of(image: &Path) -> Vec<String> {
    let Ok(target) = fs::canonicalize(image) else {
        return Vec::new();
    };
    let mut users = Vec::new();
    let Ok(procs) = fs::read_dir("/proc") else {
        return users;
    };
    for p in procs.flatten() {
        let pid = p.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        let Ok(fds) = fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let open = fds
            .flatten()
            .any(|fd| fs::read_link(fd.path()).is_ok_and(|t| t == target));
        if open {
            users.push(describe_process(&p.path(), &pid));
        }
    }
    users
}

fn describe_process(proc_dir: &Path, pid: &str) -> String {
    let cmdline = fs::read(proc_dir.join("cmdline")).unwrap_or_default();
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let name = args
        .windows(2)
        .find(|w| w[0] == b"--name")
        .map(|w| String::from_utf8_lossy(w[1]).into_owned())
        .or_else(|| {
            args.iter()
                .find_map(|a| a.strip_prefix(b"--name="))
                .map(|n| String::from_utf8_lossy(n).into_owned())
        });
    match name {
        Some(n) => format!("{n} (pid {pid})"),
        None => format!("pid {pid}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(parse_reference("redis").unwrap(), ("redis", None));
        assert_eq!(parse_reference("redis:2").unwrap(), ("redis", Some("2")));
        for bad in ["", ":1", "redis:", "a/b", "../x", "redis:1:2"] {
            assert!(parse_reference(bad).is_err(), "{bad}");
        }
        assert!(looks_like_reference("redis:1"));
        assert!(!looks_like_reference("./base.erofs"));
        assert!(!looks_like_reference("/tmp/base.erofs"));
    }

    fn fake_store(versions: &[(&str, &str)]) -> Store {
        let root = std::env::temp_dir().join(format!(
            "herd-store-test-{}-{}",
            std::process::id(),
            versions.len()
        ));
        let _ = fs::remove_dir_all(&root);
        let store = Store { root };
        for (name, version) in versions {
            let dir = store.image_dir(name, version);
            fs::create_dir_all(&dir).unwrap();
            fs::write(dir.join(IMAGE_FILE), b"erofs").unwrap();
            let m = format!(
                r#"{{"name":"{name}","version":"{version}","base":"busybox","suite":"bookworm",
                "sha256":"00","size":5,"created":0,"source_date_epoch":1,"kernel":"k",
                "definition_sha256":"","herd_version":"0","services":{{}},"stripped":[],
                "stripped_bytes":0,"packages":[]}}"#
            );
            fs::write(dir.join(MANIFEST_FILE), m).unwrap();
        }
        store
    }

    #[test]
    fn resolve_latest_exact_and_unknown() {
        let store = fake_store(&[
            ("redis", "1"),
            ("redis", "10"),
            ("redis", "2"),
            ("base", "1"),
        ]);
        let v = |r: &str| store.resolve(r).unwrap().manifest.version;
        assert_eq!(v("redis"), "10");
        assert_eq!(v("redis:latest"), "10");
        assert_eq!(v("redis:2"), "2");
        let e = store.resolve("redis:3").unwrap_err().to_string();
        assert!(
            e.contains("no image redis:3") && e.contains("base:1, redis:1, redis:2, redis:10"),
            "{e}"
        );
        assert!(store.kernel_for(&store.resolve("base").unwrap()).is_err());
        let removed = store.remove("redis:2").unwrap();
        assert_eq!(removed.reference(), "redis:2");
        assert_eq!(v("redis"), "10");
        assert!(store.resolve("redis:2").is_err());
        fs::remove_dir_all(&store.root).unwrap();
    }

    #[test]
    fn versions_sort_numerically() {
        let mut v = vec!["10", "9", "beta", "1"];
        v.sort_by_key(|v| version_key(v));
        assert_eq!(v, ["1", "9", "10", "beta"]);
    }
}
