//! The guest platform for distribution kernels (ACPI, CMOS RTC): Debian's
//! cloud kernel and the herd kernel, each with `--cpus 2`, in the emulated
//! test host (see tests/support/testhost.rs). They must see both CPUs (from
//! the ACPI MADT: Debian's kernel has no MP-table parser), power the VM off
//! and reset it through the ACPI sleep and reset registers with the
//! kernel's own `poweroff -f`/`reboot -f` (no herd tool in the path), and
//! read the wall clock from the CMOS RTC. A kernel booted with `acpi=off`
//! still gets its CPUs from the MP table.

mod support;

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use support::images::image_dir;
use support::testhost::{GuestRun, Scenario, ScenarioResult, TestHost};

/// `boot NAME ARGS…` runs `herd run` with 2 vCPUs and the base initramfs;
/// the test host's clock is printed around each run for the date checks.
/// `$INFO` is the guest command printing what the guest sees.
const SCRIPT: &str = r#"
export HERD_TIMEOUT=90
G=/guest
boot() {
	_n=$1
	shift
	echo "testhost: date $_n before=$(date +%s)"
	run_guest "$_n" run --mem 256 --cpus 2 --initrd $G/initrd.cpio.gz "$@"
	echo "testhost: date $_n after=$(date +%s)"
}
INFO='echo platform: nproc=$(nproc) date=$(date +%s); grep -ho Power.Button /proc/bus/input/devices; true'
boot debian-poweroff --kernel $G/debian-vmlinuz \
	--cmdline "herd.run=\"$INFO; busybox poweroff -f\""
boot debian-reboot --kernel $G/debian-vmlinuz --cmdline 'herd.run="busybox reboot -f"'
boot herd-poweroff --kernel $G/bzImage --cmdline "herd.run=\"$INFO; busybox poweroff -f\""
boot herd-reboot --kernel $G/vmlinux --cmdline 'herd.run="busybox reboot -f"'
boot herd-acpi-off --kernel $G/bzImage --cmdline "acpi=off herd.run=\"$INFO\""
exit 0
"#;

fn suite() -> &'static ScenarioResult {
    static SUITE: OnceLock<Result<ScenarioResult, String>> = OnceLock::new();
    let res = SUITE.get_or_init(|| {
        let host = TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
        let kernel = image_dir("kernel")?;
        let base = image_dir("base")?;
        let herd = Path::new(env!("CARGO_BIN_EXE_herd"));
        Ok(Scenario::new("linux_platform", SCRIPT)
            .herd(herd)
            .file(&kernel.join("vmlinux"), "vmlinux")
            .file(&kernel.join("bzImage"), "bzImage")
            .file(&base.join("initrd.cpio.gz"), "initrd.cpio.gz")
            .file(&host.kernel(), "debian-vmlinuz")
            .timeout(Duration::from_secs(600))
            .run())
    });
    match res {
        Ok(r) => r,
        Err(e) => panic!("linux_platform scenario could not start: {e}"),
    }
}

fn run(name: &str) -> GuestRun<'static> {
    suite().finished_run(name)
}

/// `key=value` from the guest's `platform:` line.
fn platform_value(r: &GuestRun, key: &str) -> u64 {
    let line = r.assert_contains("platform: nproc=");
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(&format!("{key}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| r.fail(&format!("no numeric {key}= in {line:?}")))
}

/// The test host's clock printed before and after run `name`.
fn host_dates(name: &str) -> (u64, u64) {
    let find = |when: &str| {
        let prefix = format!("testhost: date {name} {when}=");
        suite()
            .lines
            .iter()
            .find_map(|l| l.strip_prefix(&prefix)?.trim().parse().ok())
            .unwrap_or_else(|| suite().fail(&format!("no `{prefix}` line")))
    };
    (find("before"), find("after"))
}

fn assert_sees_two_cpus(name: &str) {
    let r = run(name);
    let n = platform_value(&r, "nproc");
    if n != 2 {
        r.fail(&format!("guest sees {n} CPUs with --cpus 2"));
    }
}

/// The guest's wall clock, read once its init ran, lies within the test
/// host's clock around the run, with 2 s of slack for whole-second rounding.
fn assert_date_right(name: &str) {
    let r = run(name);
    let guest = platform_value(&r, "date");
    let (before, after) = host_dates(name);
    if guest + 2 < before || guest > after + 2 {
        r.fail(&format!(
            "guest date {guest} outside the test host's [{before}, {after}] (±2 s)"
        ));
    }
}

fn assert_acpi_power_off(name: &str) {
    let r = run(name);
    r.assert_contains("guest powered off through ACPI (S5)");
    r.assert_exit(0);
}

fn assert_acpi_reset(name: &str) {
    let r = run(name);
    r.assert_contains("guest reset the VM through the ACPI reset register");
    r.assert_exit(0);
}

#[test]
fn debian_kernel_sees_two_cpus() {
    assert_sees_two_cpus("debian-poweroff");
}

#[test]
fn debian_kernel_powers_off_through_acpi() {
    assert_acpi_power_off("debian-poweroff");
}

#[test]
fn debian_kernel_reboots_through_acpi() {
    assert_acpi_reset("debian-reboot");
}

#[test]
fn debian_kernel_reads_the_date_from_the_rtc() {
    assert_date_right("debian-poweroff");
}

#[test]
fn herd_kernel_sees_two_cpus() {
    assert_sees_two_cpus("herd-poweroff");
}

#[test]
fn herd_kernel_powers_off_through_acpi() {
    assert_acpi_power_off("herd-poweroff");
}

#[test]
fn herd_kernel_reboots_through_acpi() {
    assert_acpi_reset("herd-reboot");
}

#[test]
fn herd_kernel_reads_the_date_from_the_rtc() {
    assert_date_right("herd-poweroff");
}

/// The DSDT's PNP0C0C device behind the GED is what a graceful stop
/// presses; the herd kernel has the ACPI button driver built in.
#[test]
fn herd_kernel_has_the_acpi_power_button() {
    run("herd-poweroff").assert_contains("Power Button");
}

/// `acpi=off`: CPUs from the MP table, and the base image's init still
/// ends the VM through herd's exit device.
#[test]
fn acpi_off_kernel_still_works() {
    assert_sees_two_cpus("herd-acpi-off");
    let r = run("herd-acpi-off");
    r.assert_contains("herd-init: reached init");
    r.assert_exit(0);
}
