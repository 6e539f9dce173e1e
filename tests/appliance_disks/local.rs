//! virtio-blk on the local /dev/kvm, driven by the probe guest's polling
//! driver (`probe.action=blk` / `blk-garbage`, see guest-images/probes/README.md):
//! reads, writes and flushes reach the image file, GET_ID gives the file
//! stem, read-only images (`--root`, `--disk IMG:ro`) reject writes and stay
//! byte-for-byte unchanged, a writable image is locked to one VM, bad paths
//! are clear errors, and hostile descriptor chains stop the device, not herd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::support::herd_run::{self, drain, wait_until, watch_lines, ChildGuard, Run};
use crate::support::probes::{herd_bin, probe_path};

/// A hung VMM must fail its test, not hang the suite.
const TIMEOUT: Duration = Duration::from_secs(20);
const PROBE: &str = "probe-pvh.elf";
const SECTOR: usize = 512;
/// herd's status for bad input (src/exit_status.rs), which a locked or
/// missing disk is.
const EXIT_BAD_INPUT: i32 = 2;

/// False (after one loud SKIP line) only when /dev/kvm is absent.
fn kvm_present() -> bool {
    herd_run::kvm_present("appliance_disks::local")
}

impl Run {
    /// Exit status 0, "probe: <ok>" printed, no FAIL/WARN line, no panic.
    fn assert_ok(&self, ok: &str) {
        assert_eq!(self.status.code(), Some(0), "{}", self.dump());
        assert!(
            self.has_line(&format!("probe: {ok}")),
            "no `probe: {ok}`\n{}",
            self.dump()
        );
        assert!(
            !self.stdout.contains("probe: FAIL") && !self.stdout.contains("probe: WARN"),
            "{}",
            self.dump()
        );
        assert!(!self.stderr.contains("panicked"), "{}", self.dump());
    }
}

/// `herd run --kernel <probe> --mem 64 --cmdline <cmdline> <args…>`.
fn herd_cmd(cmdline: &str, args: &[String]) -> Command {
    let mut cmd = Command::new(herd_bin());
    cmd.arg("run")
        .arg("--kernel")
        .arg(probe_path(PROBE))
        .args(["--mem", "64", "--cmdline", cmdline])
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn run(cmdline: &str, args: &[String]) -> Run {
    let what = format!("herd (cmdline {cmdline:?}, {args:?})");
    herd_run::run_with_timeout(herd_cmd(cmdline, args), TIMEOUT, &what)
}

/// A fresh directory for one test's images.
fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("appliance_disks-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

/// Deterministic bytes (xorshift64), so each image has recognisable content.
fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x.to_le_bytes()[0]
        })
        .collect()
}

/// Writes an image of `len` bytes and returns its path and contents.
fn image(dir: &Path, name: &str, len: usize, seed: u64) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let bytes = pseudo_random(len, seed);
    std::fs::write(&path, &bytes).expect("write image");
    (path, bytes)
}

fn arg(flag: &str, path: &Path, suffix: &str) -> [String; 2] {
    [flag.to_owned(), format!("{}{suffix}", path.display())]
}

/// What `probe.action=blk` writes to sector `s` (README.md): the text
/// "herd-probe-write", then byte i = (i * 7 + s) mod 256.
fn pattern(s: u64) -> Vec<u8> {
    let head = b"herd-probe-write";
    (0..SECTOR)
        .map(|i| match head.get(i) {
            Some(&b) => b,
            None => ((i as u64) * 7 + s).to_le_bytes()[0],
        })
        .collect()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `probe: blk <serial> capacity=<n> ro=<0|1> sector0=<hex>`, as the exact
/// line expected for an image with `contents`.
fn blk_line(serial: &str, contents: &[u8], ro: bool) -> String {
    let capacity = contents.len() / SECTOR;
    let sector0 = if capacity > 0 { &contents[..16] } else { &[] };
    format!(
        "probe: blk {serial} capacity={capacity} ro={} sector0={}",
        u8::from(ro),
        hex(sector0)
    )
}

fn assert_unchanged(path: &Path, before: &[u8]) {
    let after = std::fs::read(path).expect("read image back");
    assert!(
        after == before,
        "{} changed although the guest could only read it",
        path.display()
    );
}

#[test]
fn reads_writes_flushes_and_serials_reach_the_image_files() {
    if !kvm_present() {
        return;
    }
    let dir = scratch("rw");
    let (root, root_bytes) = image(&dir, "base.img", 16 * SECTOR, 1);
    // Not a whole number of sectors: the guest sees 64, the tail stays.
    let (target, data_bytes) = image(&dir, "data1-target.raw", 64 * SECTOR + 100, 2);
    // Named through a symlink: the serial comes from the name given, also
    // when the jail (on by default as root) resolves the path to bind it.
    let data = dir.join("data1.img");
    std::os::unix::fs::symlink(&target, &data).expect("symlink data1.img");
    let (long, long_bytes) = image(&dir, "an-appliance-with-a-long-name.img", 16 * SECTOR, 3);
    let (ro, ro_bytes) = image(&dir, "shared-ro.img", 8 * SECTOR, 4);
    let args: Vec<String> = [
        arg("--root", &root, ""),
        arg("--disk", &data, ""),
        arg("--disk", &long, ""),
        arg("--disk", &ro, ":ro"),
    ]
    .concat();
    let run = run("probe.action=blk probe.blk_sector=5", &args);
    run.assert_ok("blk ok");

    // Slot order is --root, then the --disks in order; GET_ID is the file
    // stem cut to 20 bytes ("root" for the root image).
    let expected = [
        blk_line("root", &root_bytes, true),
        "probe: blk root write-rejected".to_owned(),
        blk_line("data1", &data_bytes[..64 * SECTOR], false),
        "probe: blk data1 wrote sector 5 flushed and read it back".to_owned(),
        blk_line("an-appliance-with-a-", &long_bytes, false),
        "probe: blk an-appliance-with-a- wrote sector 5 flushed and read it back".to_owned(),
        blk_line("shared-ro", &ro_bytes, true),
        "probe: blk shared-ro write-rejected".to_owned(),
        "probe: blk ok".to_owned(),
    ];
    let got: Vec<&str> = run
        .lines()
        .filter(|l| l.starts_with("probe: blk "))
        .collect();
    assert_eq!(got, expected, "{}", run.dump());

    // The write is in the file once herd has exited, and nothing else moved.
    for (path, before) in [(&data, &data_bytes), (&long, &long_bytes)] {
        let mut want = before.clone();
        want[5 * SECTOR..6 * SECTOR].copy_from_slice(&pattern(5));
        let after = std::fs::read(path).expect("read image back");
        assert_eq!(after.len(), want.len(), "{} changed size", path.display());
        assert!(
            after == want,
            "{}: sector 5 should hold the probe's pattern and nothing else change",
            path.display()
        );
    }
    assert_unchanged(&root, &root_bytes);
    assert_unchanged(&ro, &ro_bytes);
    for name in ["base.img", "shared-ro.img"] {
        assert!(
            run.stderr
                .lines()
                .any(|l| l.contains("read-only disk") && l.contains(name)),
            "no warning about the write to read-only {name}\n{}",
            run.dump()
        );
    }
    assert!(
        run.stderr.contains("not a multiple of 512"),
        "no warning about data1.img's partial sector\n{}",
        run.dump()
    );
}

#[test]
fn hostile_chains_stop_the_device_until_reset_but_not_herd() {
    if !kvm_present() {
        return;
    }
    let dir = scratch("garbage");
    let (data, bytes) = image(&dir, "victim.img", 32 * SECTOR, 5);
    let run = run("probe.action=blk-garbage", &arg("--disk", &data, ""));
    run.assert_ok("blk-garbage ok");
    for case in ["bad-addr", "huge-len", "loop", "bad-head", "avail-idx"] {
        let prefix = format!("probe: blk-garbage {case} stopped");
        assert!(
            run.lines().any(|l| l.starts_with(&prefix)),
            "the device answered (or the probe skipped) the {case} chain\n{}",
            run.dump()
        );
        assert!(
            run.has_line(&format!("probe: blk-garbage {case} recovered")),
            "{}",
            run.dump()
        );
    }
    // Logged once per breakage, as an error naming the disk.
    let logged = run
        .stderr
        .lines()
        .filter(|l| l.contains("malformed request") && l.contains("victim.img"))
        .count();
    assert_eq!(logged, 5, "{}", run.dump());
    assert_unchanged(&data, &bytes);
}

/// Waits for `probe: spinning` on a running herd's stdout, returning a
/// reader thread that collects everything it printed.
fn wait_spinning(child: &mut Child) -> thread::JoinHandle<String> {
    let (rx, reader) = watch_lines(child.stdout.take().expect("stdout"), |l| {
        l.starts_with("probe: spinning")
    });
    if rx.recv_timeout(TIMEOUT).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "first VM never reached `probe: spinning`\n{}",
            reader.join().unwrap()
        );
    }
    reader
}

#[test]
fn a_writable_disk_is_locked_to_one_vm() {
    if !kvm_present() {
        return;
    }
    let dir = scratch("lock");
    let (base, _) = image(&dir, "base.img", 8 * SECTOR, 6);
    let (state, _) = image(&dir, "state.img", 8 * SECTOR, 7);
    let (other, _) = image(&dir, "other.img", 8 * SECTOR, 8);
    let shared_root = arg("--root", &base, "");
    let first_args = [shared_root.clone(), arg("--disk", &state, "")].concat();
    let mut cmd = herd_cmd("probe.action=blk probe.then=spin", &first_args);
    let mut first = ChildGuard(cmd.spawn().expect("spawn first herd"));
    let first_err = drain(first.0.stderr.take().expect("stderr"));
    let first_out = wait_spinning(&mut first.0);

    // Same writable disk: refused before the VM starts, naming the disk.
    let started = Instant::now();
    let second = run("probe.action=exit:0", &first_args);
    let took = started.elapsed();
    assert_eq!(
        second.status.code(),
        Some(EXIT_BAD_INPUT),
        "{}",
        second.dump()
    );
    assert!(
        second.stderr.contains("already in use") && second.stderr.contains("state.img"),
        "{}",
        second.dump()
    );
    assert!(!second.stdout.contains("probe: hello"), "{}", second.dump());
    assert!(took < Duration::from_secs(5), "took {took:?} to refuse");

    // Read-only is refused too while someone writes it.
    let ro = run("probe.action=exit:0", &arg("--disk", &state, ":ro"));
    assert_eq!(ro.status.code(), Some(EXIT_BAD_INPUT), "{}", ro.dump());
    assert!(ro.stderr.contains("attached writable"), "{}", ro.dump());

    // The read-only root is shared: another VM boots from it meanwhile.
    let third_args = [shared_root, arg("--disk", &other, "")].concat();
    run("probe.action=blk", &third_args).assert_ok("blk ok");

    // Once the first VM is gone, the disk is free again.
    let pid = libc::pid_t::try_from(first.0.id()).expect("pid fits pid_t");
    // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_until(&mut first.0, Instant::now() + TIMEOUT);
    let (out, err) = (first_out.join().unwrap(), first_err.join().unwrap());
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(0),
        "first herd after SIGTERM\n--- stdout ---\n{out}\n--- stderr ---\n{err}"
    );
    assert!(out.contains("probe: blk ok"), "{out}");
    run("probe.action=blk", &arg("--disk", &state, "")).assert_ok("blk ok");
}

/// One clean error line with every word of `expect`, status 2, no panic.
fn assert_bad_disk(args: &[String], expect: &[&str]) {
    let run = run("probe.action=exit:0", args);
    assert_eq!(run.status.code(), Some(EXIT_BAD_INPUT), "{}", run.dump());
    assert!(!run.stderr.contains("panicked"), "{}", run.dump());
    assert!(!run.stdout.contains("probe: hello"), "{}", run.dump());
    let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(errors.len(), 1, "want one error line\n{}", run.dump());
    for word in expect {
        assert!(errors[0].contains(word), "{word:?} missing\n{}", run.dump());
    }
}

#[test]
fn missing_or_directory_disks_are_clear_errors() {
    // No KVM needed: herd checks disks before it touches /dev/kvm.
    let dir = scratch("bad-paths");
    let missing = dir.join("nope.img");
    let folder = dir.join("folder.img");
    std::fs::create_dir_all(&folder).expect("mkdir");
    let missing_s = missing.display().to_string();
    let folder_s = folder.display().to_string();
    for flag in ["--disk", "--root"] {
        assert_bad_disk(&arg(flag, &missing, ""), &[&missing_s, "does not exist"]);
        assert_bad_disk(&arg(flag, &folder, ""), &[&folder_s, "regular file"]);
    }
    assert_bad_disk(&arg("--disk", &folder, ":ro"), &[&folder_s, "regular file"]);
}
