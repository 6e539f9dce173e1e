//! The guest platform for distribution kernels (ACPI, CMOS RTC): Debian's
//! cloud kernel and the herd kernel, each with `--cpus 2`, in the emulated
//! test host (see tests/support/testhost.rs). They must see both CPUs (from
//! the ACPI MADT: Debian's kernel has no MP-table parser), power the VM off
//! and reset it through the ACPI sleep and reset registers with the
//! kernel's own `poweroff -f`/`reboot -f` (no herd tool in the path), and
//! know the date: Debian's kernel reads it from the CMOS RTC, the herd
//! kernel (no RTC driver) from kvmclock. A kernel booted with `acpi=off`
//! still gets its CPUs from the MP table.

mod support;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use support::images::image_dir;
use support::staging::{check, TempDir};
use support::testhost::{shared, GuestRun, Scenario, ScenarioResult, TestHost};

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

# vsock and virtio-rng, herd kernel: the guest listens on vsock port 5000
# and calls the host on port 5001 (the Unix socket /tmp/v.sock_5001); the
# host first calls port 5999, where nobody listens, then port 5000.
$G/line listen-unix /tmp/v.sock_5001 pong-from-host >/tmp/hostlisten.out 2>&1 &
# The jailed herd connects as the jail's user: the listener lets it.
n=0
while [ ! -S /tmp/v.sock_5001 ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n + 1)); done
chmod 666 /tmp/v.sock_5001
GCMD='echo platform: entropy=$(cat /proc/sys/kernel/random/entropy_avail) rng=$(cat /sys/class/misc/hw_random/rng_current); echo platform: hwrng $(head -c 16 /dev/hwrng | od -An -tx1); line listen-vsock 5000 pong-from-guest & line connect-vsock 2 5001 ping-from-guest; wait'
bg_guest vsock /tmp/vsock herd run --mem 256 --cpus 2 --kernel $G/bzImage \
	--initrd $G/initrd-line.cpio --vsock /tmp/v.sock --cmdline "herd.run=\"$GCMD\"" &
if wait_for /tmp/vsock "line: listening" 120; then
	echo "testhost: host-refused $(timeout 20 $G/line connect-unix /tmp/v.sock 5999 x 2>&1 | tr '\n' ' ')"
	echo "testhost: host-connect $(timeout 20 $G/line connect-unix /tmp/v.sock 5000 ping-from-host 2>&1 | tr '\n' ' ')"
else
	echo "testhost: the guest never listened on vsock"
fi
while [ ! -e /tmp/vsock.end ]; do sleep 0.5; done
show vsock /tmp/vsock
echo "testhost: host-listen $(tr '\n' ' ' </tmp/hostlisten.out)"
exit 0
"#;

fn suite() -> &'static ScenarioResult {
    static SUITE: OnceLock<Result<ScenarioResult, String>> = OnceLock::new();
    shared(&SUITE, "linux_platform", || {
        let host = TestHost::get().map_err(|e| format!("test host unavailable: {e}"))?;
        let kernel = image_dir("kernel")?;
        let base = image_dir("base")?;
        let herd = Path::new(env!("CARGO_BIN_EXE_herd"));
        let staging = TempDir(
            std::env::temp_dir().join(format!("herd-linux-platform-{}", std::process::id())),
        );
        let (line, initrd) = line_tool(&staging.0, &base.join("initrd.cpio.gz"))?;
        Ok(Scenario::new("linux_platform", SCRIPT)
            .herd(herd)
            .file(&kernel.join("vmlinux"), "vmlinux")
            .file(&kernel.join("bzImage"), "bzImage")
            .file(&base.join("initrd.cpio.gz"), "initrd.cpio.gz")
            .file(&host.kernel(), "debian-vmlinuz")
            .file(&line, "line")
            .file(&initrd, "initrd-line.cpio")
            .timeout(Duration::from_secs(600))
            .run())
    })
}

/// Builds tests/linux_platform/line.c (static) and the base initramfs with
/// it appended as /usr/bin/line (Linux unpacks concatenated archives).
fn line_tool(dir: &Path, base_initrd: &Path) -> Result<(PathBuf, PathBuf), String> {
    let root = dir.join("root/usr/bin");
    fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/linux_platform/line.c");
    let line = root.join("line");
    check(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&line)
            .arg(&src),
    )?;
    let cpio = check(Command::new("sh").arg("-c").arg(format!(
        "cd {} && find . | cpio -o -H newc --quiet > ../extra.cpio && echo ok",
        dir.join("root").display()
    )))?;
    if cpio.trim() != "ok" {
        return Err(format!("building the extra initramfs printed {cpio:?}"));
    }
    let mut initrd =
        fs::read(base_initrd).map_err(|e| format!("{}: {e}", base_initrd.display()))?;
    // Linux looks for an uncompressed cpio header only at 4-byte offsets.
    initrd.resize(initrd.len().next_multiple_of(4), 0);
    initrd.extend(fs::read(dir.join("extra.cpio")).map_err(|e| format!("extra.cpio: {e}"))?);
    let out = dir.join("initrd-line.cpio");
    fs::write(&out, initrd).map_err(|e| format!("{}: {e}", out.display()))?;
    Ok((line, out))
}

fn run(name: &str) -> GuestRun<'static> {
    suite().finished_run(name)
}

/// The guest line starting with `prefix` (the kernel's echo of its command
/// line contains the same words, so `contains` would find that first).
fn line_starting<'a>(r: &'a GuestRun, prefix: &str) -> &'a str {
    r.lines
        .iter()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| r.fail(&format!("no guest line starts with {prefix:?}")))
}

/// `key=value` from the guest's `platform:` line.
fn platform_value(r: &GuestRun, key: &str) -> u64 {
    let line = line_starting(r, "platform: nproc=");
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

/// kvmclock's wall clock: the herd kernel has no RTC driver.
#[test]
fn herd_kernel_knows_the_date() {
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

/// The `testhost: NAME …` line the scenario printed.
fn host_line(name: &str) -> &'static str {
    let prefix = format!("testhost: {name} ");
    suite()
        .lines
        .iter()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| suite().fail(&format!("no `{prefix}` line")))
}

/// Host to guest: the host's `CONNECT 5000` is accepted (`OK <port>`), the
/// guest reads the host's line and the host reads the guest's answer.
#[test]
fn vsock_host_calls_the_guest() {
    let r = run("vsock");
    r.assert_contains("line: got ping-from-host");
    let host = host_line("host-connect");
    if !host.contains("line: connected OK ") || !host.contains("line: got pong-from-guest") {
        r.fail(&format!(
            "host side of the host-initiated connection: {host:?}"
        ));
    }
}

/// Guest to host: a guest connection to CID 2 port 5001 reaches the Unix
/// socket /tmp/v.sock_5001.
#[test]
fn vsock_guest_calls_the_host() {
    let r = run("vsock");
    r.assert_contains("line: got pong-from-host");
    let host = host_line("host-listen");
    if !host.contains("line: got ping-from-guest") {
        r.fail(&format!("host listener saw: {host:?}"));
    }
}

/// A host connecting to a guest port nobody listens on gets EOF (no `OK`)
/// at once, not a hang (the scenario bounds it with `timeout 20`).
#[test]
fn vsock_unlistened_port_is_refused() {
    let host = host_line("host-refused");
    if host.trim() != "line: refused" {
        run("vsock").fail(&format!("connect to an unlistened port gave {host:?}"));
    }
}

/// The guest's hwrng is virtio-rng and hands out bytes at once; the
/// kernel's pool is initialised (entropy_avail 256 on Linux 6.1).
#[test]
fn guest_draws_entropy_from_virtio_rng() {
    let r = run("vsock");
    let line = line_starting(&r, "platform: entropy=");
    if !line.contains("rng=virtio_rng") {
        r.fail(&format!("the guest's hwrng is not virtio-rng: {line:?}"));
    }
    let hw = line_starting(&r, "platform: hwrng ");
    let bytes: Vec<&str> = hw.split_whitespace().skip(2).collect();
    if bytes.len() != 16 || bytes.iter().all(|b| *b == "00") {
        r.fail(&format!("16 random bytes expected from /dev/hwrng: {hw:?}"));
    }
    r.assert_exit(0);
}
