//! Build script of the `herd` binary: lays out the functions a VM's process
//! runs side by side, so that `herd run` maps ~0.5 MiB of herd's code
//! instead of ~2 MiB (the kernel maps code 64 KiB around each page fault, and
//! the hot functions were spread over nearly every 64 KiB of the binary).
//!
//! The list is src/link-order.txt, written by benches/layout/order.sh (gdb
//! on a release build running the probe guests). A name missing from the
//! binary is skipped, so a stale list costs memory, never a build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

const ORDER_FILE: &str = "src/link-order.txt";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-env-changed=RUSTC_LINKER");
    if env::var("PROFILE").is_ok_and(|p| p != "release") {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let order = Path::new(&dir).join(ORDER_FILE);
    let checked = if order.is_file() {
        linker_takes(&order)
    } else {
        Err(format!(
            "{ORDER_FILE} is missing; benches/layout/order.sh writes it"
        ))
    };
    match checked {
        Ok(()) => {
            // -Xlinker pairs: a path may hold the commas -Wl splits on.
            for arg in [
                "--symbol-ordering-file".into(),
                order.display().to_string(),
                "--no-warn-symbol-ordering".into(),
            ] {
                println!("cargo:rustc-link-arg-bin=herd=-Xlinker");
                println!("cargo:rustc-link-arg-bin=herd={arg}");
            }
        }
        Err(why) => println!(
            "cargo:warning=herd's code is linked in the default order ({why}): \
             `herd run` maps ~1.5 MiB more code. LLD lays it out (rustc >= 1.90 on \
             x86_64 Linux links with it by default)"
        ),
    }
}

/// Whether this build's linker takes LLD's ordering flags: an empty
/// program is linked the way herd will be (same rustc, target, flags and
/// linker). GNU ld, for one, refuses them and would fail the real link.
fn linker_takes(order: &Path) -> Result<(), String> {
    let out = PathBuf::from(env::var("OUT_DIR").map_err(|e| format!("OUT_DIR: {e}"))?);
    let src = out.join("link_probe.rs");
    std::fs::write(&src, "fn main() {}\n").map_err(|e| format!("{}: {e}", src.display()))?;
    let mut rustc = Command::new(env::var("RUSTC").unwrap_or_else(|_| "rustc".into()));
    rustc
        .arg("--crate-type=bin")
        .arg("--edition=2021")
        .arg("-o")
        .arg(out.join("link_probe"))
        .arg(&src);
    if let Ok(target) = env::var("TARGET") {
        rustc.arg("--target").arg(target);
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    rustc.args(flags.split('\x1f').filter(|f| !f.is_empty()));
    if let Ok(linker) = env::var("RUSTC_LINKER") {
        rustc.arg(format!("-Clinker={linker}"));
    }
    for arg in ["--symbol-ordering-file".into(), order.display().to_string()] {
        rustc
            .arg("-Clink-arg=-Xlinker")
            .arg(format!("-Clink-arg={arg}"));
    }
    let output = rustc
        .output()
        .map_err(|e| format!("cannot run rustc: {e}"))?;
    if output.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&output.stderr);
        // The linker's own complaint, else rustc's.
        let line = err
            .lines()
            .find(|l| l.contains("symbol-ordering") && !l.contains("\"-Xlinker\""))
            .or_else(|| err.lines().find(|l| l.contains("error")))
            .unwrap_or("the linker refused --symbol-ordering-file");
        Err(line.trim().to_owned())
    }
}
