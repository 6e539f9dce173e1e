//! `herd check-kvm`: the embedded check guest matches its source, and the
//! command gives a definite answer about this host.

use std::process::Command;

#[test]
fn embedded_check_guest_matches_its_source() {
    let src = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/guest-images/probes/irq-check.S"
    );
    let dir = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("kvm_check");
    std::fs::create_dir_all(&dir).unwrap();
    let obj = dir.join("irq-check.o");
    let bin = dir.join("irq-check.bin");
    let status = Command::new("as")
        .args(["--64", src, "-o"])
        .arg(&obj)
        .status()
        .expect("run as (binutils)");
    assert!(status.success());
    let status = Command::new("objcopy")
        .args(["-O", "binary", "-j", ".text"])
        .arg(&obj)
        .arg(&bin)
        .status()
        .expect("run objcopy");
    assert!(status.success());
    assert_eq!(
        std::fs::read(&bin).unwrap(),
        vmm::kvm_check::IRQ_PROBE.to_vec(),
        "vmm/src/kvm_check.rs IRQ_PROBE is stale: re-assemble {src}"
    );
}

#[test]
fn check_kvm_gives_a_definite_answer() {
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        eprintln!("SKIP: /dev/kvm absent — check-kvm did not run");
        return;
    }
    let out = Command::new(env!("CARGO_BIN_EXE_herd"))
        .arg("check-kvm")
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => assert!(text.contains("Linux guests can run here"), "{text}"),
        Some(3) => assert!(text.contains("--emulated-host"), "{text}"),
        other => panic!("check-kvm exited {other:?}: {text}"),
    }
}
