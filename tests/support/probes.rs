//! Builds the probe guests (`guest-images/probes/`) for integration tests and
//! answers the questions every VM test asks first: is there a /dev/kvm, and
//! where is the herd binary.
//!
//! Use from `tests/<x>.rs` with `mod support;` and `support::probes::…`.

// Each test binary uses a different subset of these helpers.
#![allow(dead_code)]

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The herd binary cargo built for this test run.
pub fn herd_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_herd"))
}

/// True if /dev/kvm can be opened read-write, i.e. VM tests can run here.
pub fn kvm_available() -> bool {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Where probes are built: beside herd in the target directory, so `cargo
/// clean` removes them and nothing lands in the source tree.
fn probes_out_dir() -> PathBuf {
    herd_bin()
        .parent()
        .map_or_else(|| repo_root().join("target"), Path::to_path_buf)
        .join("probes")
}

/// Runs make once per test binary. Several test binaries may run at the same
/// time, so make runs under `flock` on a lock file: the second one waits and
/// then finds everything up to date.
fn build_probes() -> Result<PathBuf, String> {
    let out = probes_out_dir();
    std::fs::create_dir_all(&out).map_err(|e| format!("create {}: {e}", out.display()))?;
    let lock = out.join(".build.lock");
    let src = repo_root().join("guest-images").join("probes");
    let output = Command::new("flock")
        .arg(&lock)
        .arg("make")
        .arg("-s")
        .arg("-C")
        .arg(&src)
        .arg(format!("OUT={}", out.display()))
        .output()
        .map_err(|e| format!("cannot run flock/make: {e}"))?;
    if !output.status.success() {
        return Err(format!(
            "building probes with `make -C {} OUT={}` failed ({}):\n{}{}",
            src.display(),
            out.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(out)
}

/// Path of a built probe, e.g. `probe_path("probe-pvh.elf")`. Builds all
/// probes on first use; panics with make's output if the build fails.
pub fn probe_path(name: &str) -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    let dir = match BUILT.get_or_init(build_probes) {
        Ok(dir) => dir,
        Err(e) => panic!("{e}"),
    };
    let path = dir.join(name);
    assert!(path.is_file(), "probe {} was not built", path.display());
    path
}

/// `herd run --kernel <probe> --cmdline <cmdline> <extra…>`, stdin from
/// /dev/null, output piped.
pub fn herd_run_probe(probe: &str, cmdline: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(herd_bin());
    cmd.arg("run")
        .arg("--kernel")
        .arg(probe_path(probe))
        .arg("--cmdline")
        .arg(cmdline)
        .args(extra)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    cmd
}
