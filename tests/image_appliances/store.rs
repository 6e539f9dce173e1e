//! A test image store: example images built once per test binary with
//! `herd image build` (the real command) into target/tmp, reused by the
//! tests; the root trees come from herd's own cache (HERD_CACHE), so only
//! the first build on a machine runs mmdebstrap.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

pub fn herd() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_herd"))
}

pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The shared test store (HERD_HOME for the builds).
pub fn store_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("herd-image-store")
}

/// `herd image build DEF` into the test store, once per definition per
/// process; returns `NAME:VERSION sha256:HEX` as printed.
pub fn build(def: &Path) -> Result<String, String> {
    static BUILT: Mutex<Option<HashMap<PathBuf, String>>> = Mutex::new(None);
    let mut built = BUILT.lock().unwrap_or_else(|p| p.into_inner());
    let map = built.get_or_insert_with(HashMap::new);
    if let Some(s) = map.get(def) {
        return Ok(s.clone());
    }
    let out = Command::new(herd())
        .args(["image", "build"])
        .arg(def)
        .env("HERD_HOME", store_dir())
        .output()
        .map_err(|e| format!("cannot run herd: {e}"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        // The same NAME:VERSION built from a changed definition or init:
        // replace it (the test store is ours).
        if stderr.contains("is already in the store with another sha256") {
            let r = stderr
                .split("herd image rm ")
                .nth(1)
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("");
            Command::new(herd())
                .args(["image", "rm", r])
                .env("HERD_HOME", store_dir())
                .status()
                .map_err(|e| format!("herd image rm: {e}"))?;
            drop(built);
            return build(def);
        }
        return Err(format!(
            "herd image build {} failed:\n{stderr}",
            def.display()
        ));
    }
    let line = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    map.insert(def.to_owned(), line.clone());
    Ok(line)
}

/// Builds the example `name` (guest-images/images/NAME.toml).
pub fn example(name: &str) -> Result<String, String> {
    build(&repo().join(format!("guest-images/images/{name}.toml")))
}

/// [`store_files`] of each store image `(NAME, VERSION)`, under `/store`
/// (HERD_HOME in the test host).
pub fn store_images(images: &[(&str, &str)]) -> Result<Vec<(PathBuf, String)>, String> {
    let mut files = Vec::new();
    for (name, version) in images {
        files.extend(store_files(name, version, "/store")?);
    }
    Ok(files)
}

/// (host path, path in the test host) for the store's image NAME/VERSION,
/// its manifest and its kernel, under `dest` (HERD_HOME in the test host).
pub fn store_files(
    name: &str,
    version: &str,
    dest: &str,
) -> Result<Vec<(PathBuf, String)>, String> {
    let dir = store_dir().join("images").join(name).join(version);
    let manifest = std::fs::read_to_string(dir.join("manifest.json"))
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&manifest).map_err(|e| format!("manifest: {e}"))?;
    let kernel = v["kernel"].as_str().ok_or("manifest has no kernel")?;
    Ok(vec![
        (
            dir.join("image.erofs"),
            format!("{dest}/images/{name}/{version}/image.erofs"),
        ),
        (
            dir.join("manifest.json"),
            format!("{dest}/images/{name}/{version}/manifest.json"),
        ),
        (
            store_dir().join("kernels").join(kernel).join("vmlinux"),
            format!("{dest}/kernels/{kernel}/vmlinux"),
        ),
    ])
}
