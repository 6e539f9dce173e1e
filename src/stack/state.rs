//! The state file beside the stack file (`herd.toml` -> `herd.state.json`),
//! like a lock file: what each appliance was given (address, disk) and
//! which image it runs, so later `up`s keep addresses and upgrades.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Deserialize, Serialize)]
pub struct StackState {
    #[serde(default)]
    pub appliances: BTreeMap<String, ApplianceState>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct ApplianceState {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<Ipv4Addr>,
    /// The image it runs (differs from the file's after an upgrade).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The file's image when `image` was recorded: a changed file wins.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_image: Option<String>,
    /// The image before the last upgrade (`herd rollback`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_image: Option<String>,
    /// A digest of how it was launched; a change restarts it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub definition: Option<String>,
    /// A data disk this stack made (removed by `down --volumes`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_disk: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum StackStateError {
    #[error("cannot read the stack state {path}: {why}; fix or remove it (addresses may change)")]
    Read { path: PathBuf, why: String },
    #[error("cannot write the stack state {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `DIR/NAME.toml` -> `DIR/NAME.state.json`.
pub fn path_for(stack_file: &Path) -> PathBuf {
    let stem = stack_file
        .file_stem()
        .map_or_else(|| "herd".into(), |s| s.to_string_lossy().into_owned());
    stack_file.with_file_name(format!("{stem}.state.json"))
}

impl StackState {
    pub fn load(path: &Path) -> Result<Self, StackStateError> {
        match std::fs::read(path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| StackStateError::Read {
                path: path.to_owned(),
                why: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(StackStateError::Read {
                path: path.to_owned(),
                why: e.to_string(),
            }),
        }
    }

    /// Written atomically (temp file + rename).
    pub fn save(&self, path: &Path) -> Result<(), StackStateError> {
        let tmp = path.with_extension("json.tmp");
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        std::fs::write(&tmp, json)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|source| StackStateError::Write {
                path: path.to_owned(),
                source,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn beside_the_stack_file() {
        assert_eq!(
            path_for(Path::new("/a/herd.toml")),
            Path::new("/a/herd.state.json")
        );
    }
}
