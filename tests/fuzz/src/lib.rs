//! herd's fuzz targets: each is a plain `fn(&[u8])` that feeds hostile
//! bytes to one parser of guest- or user-controlled input, exactly as herd
//! calls it. A target returns normally whatever the bytes are; a panic,
//! abort, hang or runaway allocation is a bug in herd.
//!
//! The binaries in `fuzz_targets/` wrap these for libFuzzer (see `fuzz.sh`);
//! `tests/replay.rs` runs every checked-in seed and saved crash through them
//! as an ordinary test.

pub mod api;
pub mod boot;
pub mod image;
pub mod input;
pub mod ports;
pub mod seeds;
pub mod virtio;

/// Image definitions (compiled in from the herd binary) name lines with it.
#[allow(dead_code)]
#[path = "../../../src/toml_span.rs"]
mod toml_span;

/// A fuzz target: any bytes in, returns normally.
pub type Target = fn(&[u8]);

/// Every target, by the name of its binary and corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("virtio_blk", virtio::blk),
    ("virtio_net", virtio::net),
    ("virtio_vsock", virtio::vsock),
    ("virtio_rng", virtio::rng),
    ("port_io", ports::port_io),
    ("boot_loader", boot::boot_loader),
    ("api_http", api::api_http),
    ("image_definition", image::image_definition),
];

/// Runs the target called `name` on `data`.
///
/// # Panics
/// If no target has that name (a build mistake, not an input).
pub fn run_target(name: &str, data: &[u8]) {
    let Some((_, target)) = TARGETS.iter().find(|(n, _)| *n == name) else {
        panic!("no fuzz target called {name}");
    };
    target(data);
}
