//! Build script of the `herd` binary: lays out the functions a VM's process
//! runs side by side, so that `herd run` maps ~0.5 MiB of herd's code
//! instead of ~2 MiB (the kernel maps code 64 KiB around each page fault, and
//! the hot functions were spread over nearly every 64 KiB of the binary).
//!
//! The list is src/link-order.txt, written by benches/layout/order.sh (gdb
//! on a release build running the probe guests). A name missing from the
//! binary is skipped, so a stale list costs memory, never a build.

use std::env;
use std::process::Command;

const ORDER_FILE: &str = "src/link-order.txt";

fn main() {
    println!("cargo:rerun-if-changed={ORDER_FILE}");
    println!("cargo:rerun-if-changed=src/build.rs");
    println!("cargo:rerun-if-env-changed=CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER");
    let release = env::var("PROFILE").is_ok_and(|p| p == "release");
    if !release {
        return;
    }
    let dir = env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let order = format!("{dir}/{ORDER_FILE}");
    let why_not = if std::path::Path::new(&order).is_file() {
        why_not_lld()
    } else {
        Some(format!(
            "{ORDER_FILE} is missing; benches/layout/order.sh writes it"
        ))
    };
    match why_not {
        None => {
            println!("cargo:rustc-link-arg-bin=herd=-Wl,--symbol-ordering-file={order}");
            println!("cargo:rustc-link-arg-bin=herd=-Wl,--no-warn-symbol-ordering");
        }
        Some(why) => println!(
            "cargo:warning=herd's code is linked in the default order ({why}): \
             `herd run` maps ~1.5 MiB more code; rustc >= 1.90 on x86_64 Linux \
             links with LLD and lays it out"
        ),
    }
}

/// The ordering flag is LLD's: rustc links x86_64 Linux binaries with its
/// own LLD from 1.90 on, unless a linker is configured. With GNU ld the flag
/// would fail the link, so anything else gets the default layout.
fn why_not_lld() -> Option<String> {
    let target = env::var("TARGET").unwrap_or_default();
    if target != "x86_64-unknown-linux-gnu" {
        return Some(format!("target {target}"));
    }
    if env::var_os("CARGO_TARGET_X86_64_UNKNOWN_LINUX_GNU_LINKER").is_some() {
        return Some("a linker is configured".into());
    }
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    if ["linker", "fuse-ld", "link-self-contained"]
        .iter()
        .any(|f| flags.contains(f))
    {
        return Some("RUSTFLAGS choose the linker".into());
    }
    let rustc = env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let version = Command::new(&rustc)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    // "rustc 1.95.0 (59807616e 2026-04-14)"
    let minor = version
        .split_whitespace()
        .nth(1)
        .and_then(|v| v.split('.').nth(1))
        .and_then(|m| m.parse::<u32>().ok());
    match minor {
        Some(m) if m >= 90 => None,
        _ => Some(format!("{} is older than 1.90", version.trim())),
    }
}
