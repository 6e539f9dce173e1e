//! `herd run --emulated-host` and `herd emulated-host`: herd re-runs itself
//! inside the emulated test host (QEMU TCG with nested KVM). These need QEMU
//! and the test host (built by guest-images/testhost/build.sh), not
//! /dev/kvm. Nothing here skips: a missing piece fails every test with the
//! reason.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use support::herd_run::{run_with_timeout, Run};

/// One test-host run (boot + guest) takes ~10-20 s on a small machine.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs herd with `args`, killed after TIMEOUT (its emulated host dies with
/// it). Runs are serialized: two TCG machines at once on a small box only
/// make both slow.
fn herd(args: &[&str]) -> Run {
    static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let run = run_with_timeout(cmd, TIMEOUT, &format!("herd {args:?}"));
    eprintln!("herd {args:?}: {}", run.dump());
    run
}

/// The cache dir of guest-images/NAME, built if needed.
fn image_dir(name: &str) -> PathBuf {
    support::images::image_dir(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-emu-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn guest_output_and_exit_status_come_back() {
    let kernel = image_dir("kernel").join("vmlinux");
    let initrd = image_dir("base").join("initrd.cpio.gz");
    let dir = scratch("exit");
    let report = dir.join("report.json");
    let out = herd(&[
        "run",
        "--emulated-host",
        "--kernel",
        path(&kernel),
        "--initrd",
        path(&initrd),
        "--boot-report",
        path(&report),
        "--cmdline",
        r#"herd.run="echo hello-emulated; exit 5""#,
    ]);
    assert!(
        out.stdout.lines().any(|l| l.trim_end() == "hello-emulated"),
        "the guest's line is not on stdout: {}",
        out.dump()
    );
    assert_eq!(out.code(), Some(5), "{}", out.dump());
    let report = fs::read_to_string(&report).expect("boot report written outside");
    let json: serde_json::Value = serde_json::from_str(&report).expect("boot report is JSON");
    assert_eq!(json["exit_status"], 5, "{report}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn disks_are_attached_in_place() {
    let kernel = image_dir("kernel").join("vmlinux");
    let base = image_dir("base").join("base.erofs");
    let dir = scratch("disks");
    let root = dir.join("root.erofs");
    fs::copy(&base, &root).expect("copy base image");
    let data = dir.join("web1.img");
    fs::write(&data, vec![0u8; 1 << 20]).expect("data disk");
    let ro = dir.join("ro.img");
    let ro_content: Vec<u8> = (0..1u32 << 20)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect();
    fs::write(&ro, &ro_content).expect("read-only disk");
    let root_content = fs::read(&root).expect("read root");

    let ro_arg = format!("{}:ro", path(&ro));
    let out = herd(&[
        "run",
        "--emulated-host",
        "--kernel",
        path(&kernel),
        "--root",
        path(&root),
        "--disk",
        path(&data),
        "--disk",
        &ro_arg,
        "--cmdline",
        "herd.run=\"echo serial=$(cat /sys/block/vdb/serial); \
         echo written-by-guest | dd of=/dev/vdb conv=fsync; \
         echo x | dd of=/dev/vdc conv=fsync; exit 0\"",
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(
        out.stdout.contains("serial=web1"),
        "the disk's serial is not its file name's stem: {}",
        out.dump()
    );
    let written = fs::read(&data).expect("read data disk");
    assert!(
        written.starts_with(b"written-by-guest\n"),
        "the guest's write did not reach {}: {}",
        data.display(),
        out.dump()
    );
    assert!(
        fs::read(&ro).expect("read ro") == ro_content,
        "ro disk changed"
    );
    assert!(
        fs::read(&root).expect("read root") == root_content,
        "root changed"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn scripts_run_with_herd_files_and_drives() {
    let dir = scratch("script");
    let greeting = dir.join("greeting.txt");
    fs::write(&greeting, "hello from outside\n").expect("file");
    let drive = dir.join("scratch.img");
    fs::write(&drive, vec![0u8; 64 << 10]).expect("drive");
    let script = dir.join("script.sh");
    fs::write(
        &script,
        "echo \"args: $*\"\ncat in/greeting.txt\nherd --version\n\
         echo to-the-drive | dd of=/emu/scratch.img conv=fsync 2>/dev/null\n\
         echo oops >&2\nexit 7\n",
    )
    .expect("script");
    let file_arg = format!("{}:in/greeting.txt", path(&greeting));
    let out = herd(&[
        "emulated-host",
        "--file",
        &file_arg,
        "--drive",
        path(&drive),
        "--mem",
        "512",
        "--",
        path(&script),
        "one",
        "two",
    ]);
    assert_eq!(out.code(), Some(7), "{}", out.dump());
    for line in ["args: one two", "hello from outside", "herd "] {
        assert!(out.stdout.contains(line), "no {line:?}: {}", out.dump());
    }
    assert!(out.stderr.lines().any(|l| l == "oops"), "{}", out.dump());
    assert!(!out.stdout.contains("oops"), "stderr leaked to stdout");
    let written = fs::read(&drive).expect("read drive");
    assert!(written.starts_with(b"to-the-drive\n"), "{}", out.dump());
    let _ = fs::remove_dir_all(&dir);
}
