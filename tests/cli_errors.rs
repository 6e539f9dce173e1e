//! Bad inputs: each one gives a one-line error naming the problem, a
//! non-zero status, and never a panic or a backtrace.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::herd_run::kvm_present;
use support::probes::{herd_bin, probe_path};

fn herd(args: &[&str]) -> Output {
    Command::new(herd_bin())
        .arg("run")
        .args(args)
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("spawn herd")
}

fn scratch(name: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cli_errors");
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

/// Asserts a clean failure with `status` whose one error line mentions
/// every word in `expect`.
fn assert_clean_failure(out: &Output, status: i32, expect: &[&str]) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(status), "stderr: {stderr}");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("backtrace"),
        "herd panicked: {stderr}"
    );
    let errors: Vec<&str> = stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(
        errors.len(),
        1,
        "want exactly one error line, got: {stderr}"
    );
    for word in expect {
        assert!(
            errors[0].contains(word),
            "{word:?} missing from {:?}",
            errors[0]
        );
    }
}

/// A real kernel for the cases where only one argument is wrong. Any valid
/// ELF works: nothing boots because validation fails first.
fn good_kernel() -> PathBuf {
    probe_path("probe-pvh.elf")
}

#[test]
fn missing_kernel() {
    let out = herd(&["--kernel", "/nonexistent/vmlinux"]);
    assert_clean_failure(&out, 2, &["/nonexistent/vmlinux", "does not exist"]);
}

#[test]
fn text_file_as_kernel() {
    let path = scratch("notes.txt");
    std::fs::write(&path, "these are not the kernels you are looking for\n").unwrap();
    let out = herd(&["--kernel", path.to_str().unwrap()]);
    assert_clean_failure(
        &out,
        2,
        &["notes.txt", "neither an ELF vmlinux nor a bzImage"],
    );
}

#[test]
fn truncated_elf() {
    let full = std::fs::read(good_kernel()).unwrap();
    for (name, len) in [("trunc-header.elf", 40), ("trunc-body.elf", full.len() / 2)] {
        let path = scratch(name);
        std::fs::write(&path, &full[..len]).unwrap();
        let out = herd(&["--kernel", path.to_str().unwrap()]);
        assert_clean_failure(&out, 2, &[name, "cannot load"]);
    }
}

#[test]
fn zero_and_absurd_memory() {
    let kernel = good_kernel();
    let k = kernel.to_str().unwrap();
    assert_clean_failure(
        &herd(&["--kernel", k, "--mem", "0"]),
        2,
        &["--mem 0", "16 MiB"],
    );
    assert_clean_failure(
        &herd(&["--kernel", k, "--mem", "100000000"]),
        2,
        &["--mem 100000000", "too large"],
    );
    assert_clean_failure(&herd(&["--kernel", k, "--mem", "lots"]), 2, &["--mem"]);
}

#[test]
fn memory_the_host_cannot_map() {
    if !kvm_present("cli_errors") {
        return;
    }
    // Within herd's limit, beyond what KVM or the host will map.
    let kernel = good_kernel();
    let out = herd(&["--kernel", kernel.to_str().unwrap(), "--mem", "60000000"]);
    assert_clean_failure(&out, 2, &["--mem"]);
}

#[test]
fn cpu_counts_out_of_range() {
    let kernel = good_kernel();
    let k = kernel.to_str().unwrap();
    for n in ["0", "300", "255"] {
        let out = herd(&["--kernel", k, "--cpus", n]);
        assert_clean_failure(&out, 2, &[&format!("--cpus {n}"), "1 to 254"]);
    }
}

#[test]
fn unreadable_initrd() {
    let kernel = good_kernel();
    let k = kernel.to_str().unwrap();
    let out = herd(&["--kernel", k, "--initrd", "/nonexistent/initrd.cpio"]);
    assert_clean_failure(&out, 2, &["/nonexistent/initrd.cpio"]);
    let dir = scratch("initrd-dir");
    std::fs::create_dir_all(&dir).unwrap();
    let out = herd(&["--kernel", k, "--initrd", dir.to_str().unwrap()]);
    assert_clean_failure(&out, 2, &["initrd-dir", "not a regular file"]);
}

#[test]
fn bad_console() {
    let kernel = good_kernel();
    let out = herd(&["--kernel", kernel.to_str().unwrap(), "--console", "tty"]);
    assert_clean_failure(&out, 2, &["--console", "stdio, none or file:PATH"]);
    let out = herd(&[
        "--kernel",
        kernel.to_str().unwrap(),
        "--console",
        "file:/nonexistent/dir/console.log",
    ]);
    if kvm_present("cli_errors") {
        assert_clean_failure(&out, 2, &["/nonexistent/dir/console.log"]);
    }
}

/// `herd ps | head -1`: a reader that went away ends a listing quietly
/// (SIGPIPE, as Unix tools), never a panic in println!.
#[test]
fn a_listing_into_a_closed_pipe_ends_without_a_panic() {
    use std::os::unix::process::ExitStatusExt;
    for args in [&["image", "ls"][..], &["ps", "--all"][..]] {
        let mut fds = [0; 2];
        // Close-on-exec: another test's child spawned meanwhile must not
        // inherit the read end (this test's EPIPE depends on it closing).
        // SAFETY: pipe2(2) fills the two-element array it is given.
        assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
        // SAFETY: both descriptors were just created and are owned here;
        // the read end is closed at once so every write gets EPIPE.
        let (reader, writer) = unsafe {
            use std::os::fd::FromRawFd;
            (
                std::fs::File::from_raw_fd(fds[0]),
                std::fs::File::from_raw_fd(fds[1]),
            )
        };
        drop(reader);
        let home = scratch("closed-pipe-home");
        let out = Command::new(herd_bin())
            .args(args)
            .env("HERD_HOME", &home)
            .env("HERD_RUNTIME", &home)
            .env("RUST_BACKTRACE", "1")
            .stdout(writer)
            .output()
            .expect("spawn herd");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !stderr.contains("panicked"),
            "herd {args:?} panicked: {stderr}"
        );
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGPIPE),
            "herd {args:?}: {:?} {stderr}",
            out.status
        );
    }
}
