//! herd boots real Linux guests: run inside the test host (QEMU TCG with an
//! emulated AMD-V CPU and real KVM, see tests/support/testhost.rs), because
//! the machines this project runs on may have no /dev/kvm that can.
//!
//! One test-host boot runs every guest (a boot costs ~5 s, each guest a few
//! seconds more); each test then checks its own run. Nothing here skips: if
//! the test host, the guest kernel or the base image cannot be built, every
//! test fails and says why.

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use support::images::image_dir;
use support::testhost::{shared, GuestRun, Scenario, ScenarioResult, TestHost};

/// Guests run by the one scenario. `boot NAME ARGS…` is `herd run` with the
/// common options; all files are under /guest in the test host.
const SCRIPT: &str = r#"
export HERD_TIMEOUT=90
G=/guest
boot() {
	_n=$1
	shift
	run_guest "$_n" run --mem 256 --cpus 2 "$@"
}
boot vmlinux --kernel $G/vmlinux --initrd $G/initrd.cpio.gz \
	--cmdline 'console=ttyS0 herd.run="dmesg | grep Memory:"'
boot bzimage-exit7 --kernel $G/bzImage --initrd $G/initrd.cpio.gz \
	--cmdline 'console=ttyS0 herd.run="exit 7"'
boot poweroff --kernel $G/bzImage --initrd $G/initrd.cpio.gz \
	--cmdline 'console=ttyS0 herd.run=poweroff'
boot reboot --kernel $G/bzImage --initrd $G/initrd.cpio.gz \
	--cmdline 'console=ttyS0 herd.run=reboot'
# No init to run: the guest kernel panics ("No working init found" or
# "Unable to mount root fs").
boot panic --kernel $G/bzImage --initrd $G/initrd.cpio.gz \
	--cmdline 'console=ttyS0 rdinit=/nonexistent'
boot debian --kernel $G/debian-vmlinuz --initrd $G/initrd.cpio.gz \
	--cmdline 'console=ttyS0 herd.run="exit 0"'
exit 0
"#;

/// Runs the scenario once per test binary; a failure to set it up is kept
/// as a message so that every test reports it instead of re-running it.
fn suite() -> &'static ScenarioResult {
    static SUITE: OnceLock<Result<ScenarioResult, String>> = OnceLock::new();
    shared(&SUITE, "linux_boot", || {
        let host = TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
        let kernel = image_dir("kernel")?;
        let base = image_dir("base")?;
        let herd = Path::new(env!("CARGO_BIN_EXE_herd"));
        Ok(Scenario::new("linux_boot", SCRIPT)
            .herd(herd)
            .file(&kernel.join("vmlinux"), "vmlinux")
            .file(&kernel.join("bzImage"), "bzImage")
            .file(&base.join("initrd.cpio.gz"), "initrd.cpio.gz")
            .file(&host.kernel(), "debian-vmlinuz")
            .timeout(Duration::from_secs(900))
            .run())
    })
}

/// The named run; it must have reached its end marker.
fn run(name: &str) -> GuestRun<'static> {
    let r = suite().expect_run(name);
    if r.exit_code.is_none() {
        r.fail("the run never ended (test host died or timed out)");
    }
    if r.timed_out && name != "panic" {
        r.fail("herd did not exit before HERD_TIMEOUT");
    }
    eprintln!(
        "guest run `{name}`: herd exit {:?} after {:.2?} s",
        r.exit_code, r.secs
    );
    r
}

fn assert_reached_init(r: &GuestRun) {
    r.assert_contains("herd-init: reached init");
}

#[test]
fn boots_vmlinux_to_init() {
    let r = run("vmlinux");
    assert_reached_init(&r);
    r.assert_exit(0);
}

#[test]
fn boots_bzimage_to_init() {
    assert_reached_init(&run("bzimage-exit7"));
}

#[test]
fn guest_sees_two_cpus_and_256_mib() {
    let r = run("vmlinux");
    r.assert_contains("nproc=2 ");
    // "Memory: 221684K/261624K available (...)": the second number is the
    // RAM the e820 map handed the kernel, before its own reservations.
    let line = r.assert_contains("Memory: ");
    let total_kib = line
        .split_once('/')
        .and_then(|(_, rest)| rest.split_once('K'))
        .and_then(|(n, _)| n.trim().parse::<u64>().ok())
        .unwrap_or_else(|| r.fail(&format!("cannot parse the Memory: line {line:?}")));
    if !(240 * 1024..=256 * 1024).contains(&total_kib) {
        r.fail(&format!(
            "guest RAM {total_kib} KiB, expected about 256 MiB"
        ));
    }
}

#[test]
fn boot_timer_is_reported() {
    let r = run("vmlinux");
    let line = r.assert_contains("boot timer");
    if !line.contains(" ms") {
        r.fail(&format!("boot timer line has no time in ms: {line:?}"));
    }
}

#[test]
fn guest_exit_code_becomes_herd_status() {
    run("bzimage-exit7").assert_exit(7);
}

#[test]
fn guest_poweroff_exits_zero() {
    run("poweroff").assert_exit(0);
}

#[test]
fn guest_reboot_exits_zero() {
    run("reboot").assert_exit(0);
}

#[test]
fn guest_panic_exits_nonzero() {
    let r = run("panic");
    r.assert_contains("Kernel panic");
    r.assert_exit_nonzero();
    if r.timed_out {
        r.fail("herd hung after the guest panicked and was stopped by the timeout");
    }
}

/// Debian's cloud kernel, an unmodified distribution bzImage. It is built
/// without CONFIG_X86_MPPARSE, so without ACPI tables it finds no MP table
/// and brings up one CPU even with `--cpus 2`: only booting is checked.
#[test]
fn debian_cloud_kernel_boots() {
    let r = run("debian");
    let line = r.assert_contains("herd-init: reached init").to_string();
    eprintln!("debian cloud kernel: {line}");
    r.assert_exit(0);
}
