//! `manifest.json` next to every image: what it was built from, every
//! package and version in it, and the image's sha256.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::store::StoreError;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Package {
    pub name: String,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// "debian" or "busybox"
    pub base: String,
    pub suite: String,
    /// sha256 of image.erofs
    pub sha256: String,
    pub size: u64,
    /// When this build finished (Unix seconds); the image itself only
    /// carries `source_date_epoch`.
    pub created: u64,
    pub source_date_epoch: u64,
    /// Key of the guest kernel in the store (`kernels/KEY/vmlinux`).
    pub kernel: String,
    /// sha256 of the definition file.
    pub definition_sha256: String,
    pub herd_version: String,
    /// Default services: NAME -> COMMAND.
    pub services: BTreeMap<String, String>,
    /// What was stripped, and the bytes that saved.
    pub stripped: Vec<String>,
    pub stripped_bytes: u64,
    /// Every installed package, sorted by name.
    pub packages: Vec<Package>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Manifest, StoreError> {
        let text = std::fs::read_to_string(path).map_err(|source| StoreError::Io {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|e| StoreError::BadManifest {
            path: path.to_owned(),
            detail: e.to_string(),
        })
    }
}

/// Installed packages from a dpkg status file (`Status: install ok
/// installed` stanzas), sorted by name.
pub fn dpkg_packages(status: &str) -> Vec<Package> {
    let mut out = Vec::new();
    for stanza in status.split("\n\n") {
        let mut name = None;
        let mut version = None;
        let mut installed = false;
        for line in stanza.lines() {
            if let Some(v) = line.strip_prefix("Package: ") {
                name = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Version: ") {
                version = Some(v.trim());
            } else if let Some(v) = line.strip_prefix("Status: ") {
                installed = v.trim().ends_with(" installed");
            }
        }
        if let (Some(n), Some(v), true) = (name, version, installed) {
            out.push(Package {
                name: n.to_owned(),
                version: v.to_owned(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dpkg_status_installed_packages_only() {
        let status = "Package: zlib1g\nStatus: install ok installed\nVersion: 1:1.2.13\n\n\
                      Package: gone\nStatus: deinstall ok config-files\nVersion: 1\n\n\
                      Package: redis-server\nStatus: install ok installed\nPriority: optional\nVersion: 5:7.0.15-1~deb12u1\n";
        let p = dpkg_packages(status);
        assert_eq!(
            p,
            [
                Package {
                    name: "redis-server".into(),
                    version: "5:7.0.15-1~deb12u1".into()
                },
                Package {
                    name: "zlib1g".into(),
                    version: "1:1.2.13".into()
                }
            ]
        );
    }
}
