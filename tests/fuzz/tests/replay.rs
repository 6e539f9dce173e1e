//! Replays the checked-in corpus and every saved crash through the targets
//! (no libFuzzer needed), and checks that each seed reaches what it was
//! written for, so a harness that silently stopped reaching the device
//! fails here. The coverage-guided run itself is `smoke.rs`.

use std::path::{Path, PathBuf};

use herd_fuzz::{api, boot, image, seeds, virtio, TARGETS};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

#[test]
fn checked_in_corpus_matches_the_seed_code() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    for (target, name, bytes) in seeds::all() {
        let path = root.join(target).join(name);
        let on_disk = std::fs::read(&path).unwrap_or_default();
        assert!(
            on_disk == bytes,
            "{} differs from src/seeds.rs: run `cargo run -p herd-fuzz --example make_seeds`",
            path.display()
        );
    }
}

#[test]
fn corpus_and_regressions_replay_without_a_crash() {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut replayed = 0;
    for (name, target) in TARGETS {
        for dir in ["corpus", "regressions"] {
            for file in files(&here.join(dir).join(name)) {
                let data = std::fs::read(&file).unwrap();
                target(&data);
                replayed += 1;
            }
        }
    }
    assert!(replayed >= TARGETS.len(), "only {replayed} inputs replayed");
}

fn seed(target: &str, name: &str) -> Vec<u8> {
    seeds::all()
        .into_iter()
        .find(|(t, n, _)| *t == target && *n == name)
        .map(|(_, _, bytes)| bytes)
        .unwrap_or_else(|| panic!("no seed {target}/{name}"))
}

#[test]
fn virtio_seeds_complete_their_requests() {
    for name in ["read", "write", "flush", "get_id"] {
        let out = virtio::blk_outcome(&seed("virtio_blk", name));
        assert_eq!(out.used, vec![1], "virtio_blk/{name}: {out:?}");
        assert!(!out.needs_reset, "virtio_blk/{name}: {out:?}");
    }
    let out = virtio::rng_outcome(&seed("virtio_rng", "two_buffers"));
    assert_eq!(out.used, vec![1], "{out:?}");
    let out = virtio::vsock_outcome(&seed("virtio_vsock", "connect_both_ways"));
    assert_eq!(out.used[1], 1, "the TX packet was not consumed: {out:?}");
    assert!(out.used[0] >= 1, "nothing came back on RX: {out:?}");
    assert!(!out.needs_reset, "{out:?}");
    // Needs CAP_NET_ADMIN (CI runs as root); None says so on stderr.
    if let Some(out) = virtio::net_outcome(&seed("virtio_net", "rx_buffer_and_tx_frame")) {
        assert_eq!(out.used[1], 1, "the TX frame was not consumed: {out:?}");
        assert!(!out.needs_reset, "{out:?}");
    }
}

#[test]
fn a_broken_chain_marks_the_device_for_reset() {
    // The read seed with its header descriptor pointing past guest RAM.
    let mut bytes = seed("virtio_blk", "read");
    let out = virtio::blk_outcome(&bytes);
    assert!(!out.needs_reset);
    let at = bytes
        .windows(4)
        .position(|w| w == u32::try_from(virtio::DATA).unwrap().to_le_bytes())
        .unwrap();
    bytes[at..at + 4].copy_from_slice(&0xffff_f000u32.to_le_bytes());
    let out = virtio::blk_outcome(&bytes);
    assert!(out.needs_reset, "{out:?}");
}

#[test]
fn other_seeds_reach_past_the_parser() {
    for name in ["elf64", "elf32_pvh", "bzimage"] {
        assert_eq!(
            boot::boot_loader_outcome(&seed("boot_loader", name)),
            Some(true),
            "boot_loader/{name}"
        );
    }
    assert!(api::api_http_outcome(&seed("api_http", "get_vm")).is_some());
    assert!(api::api_http_outcome(&seed("api_http", "stop_with_timeout")).is_some());
    assert!(api::api_http_outcome(&seed("api_http", "metrics_query")).is_some());
    for name in ["base", "redis", "postgresql"] {
        assert!(
            image::image_definition_outcome(&seed("image_definition", name)).is_some(),
            "image_definition/{name}"
        );
    }
}
