//! The guest platform on the local /dev/kvm, seen by the probe guests
//! (guest-images/probes/platform.c, virtio-rng.c): ACPI tables the way Linux
//! finds them, the ACPI sleep and reset registers (and garbage written to
//! them), the CMOS clock, and virtio-rng including a flood and a malformed
//! request. The same checks with real kernels are in tests/linux_platform.rs.

mod support;

use std::process::{Command, Stdio};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use support::herd_run::{self, Run};
use support::probes::{herd_bin, probe_path};

const TIMEOUT: Duration = Duration::from_secs(30);
const LINUX64: &str = "probe-linux64.elf";
const PVH: &str = "probe-pvh.elf";

fn kvm_present() -> bool {
    herd_run::kvm_present("vm_platform")
}

/// `herd run` on a probe with `probe.action=ACTION` (probe.quick: the
/// platform actions need none of the memory checks).
fn run_action(probe: &str, action: &str, extra: &[&str]) -> Run {
    let mut cmd = Command::new(herd_bin());
    cmd.arg("run")
        .arg("--kernel")
        .arg(probe_path(probe))
        .arg("--cmdline")
        .arg(format!("probe.action={action} probe.quick=1"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    herd_run::run_with_timeout(cmd, TIMEOUT, &format!("herd ({probe}, {action})"))
}

fn assert_exit(run: &Run, code: i32) {
    assert_eq!(run.code(), Some(code), "unexpected exit\n{}", run.dump());
    assert!(
        !run.stdout.contains("probe: FAIL"),
        "probe failed\n{}",
        run.dump()
    );
}

fn assert_logged(run: &Run, text: &str) {
    assert!(
        run.stderr.contains(text),
        "herd did not log {text:?}\n{}",
        run.dump()
    );
}

#[test]
fn acpi_tables_list_every_vcpu() {
    if !kvm_present() {
        return;
    }
    for (probe, cpus) in [(LINUX64, "1"), (LINUX64, "3"), (PVH, "2")] {
        let run = run_action(probe, "acpi-garbage", &["--cpus", cpus]);
        assert_exit(&run, 0);
        let want = format!("probe: acpi cpus={cpus} sleep=0x600 reset=0x601");
        assert!(run.has_line(&want), "{probe}: no {want:?}\n{}", run.dump());
    }
}

#[test]
fn acpi_sleep_register_powers_off() {
    if !kvm_present() {
        return;
    }
    let run = run_action(LINUX64, "acpi-poweroff", &[]);
    assert_exit(&run, 0);
    assert_logged(&run, "guest powered off through ACPI (S5)");
}

#[test]
fn acpi_reset_register_resets() {
    if !kvm_present() {
        return;
    }
    let run = run_action(PVH, "acpi-reset", &[]);
    assert_exit(&run, 0);
    assert_logged(&run, "guest reset the VM through the ACPI reset register");
}

/// Every other byte to both registers, and wide writes: the VM keeps
/// running and ends through the exit device, as the probe asks afterwards.
#[test]
fn acpi_register_garbage_is_ignored() {
    if !kvm_present() {
        return;
    }
    let run = run_action(LINUX64, "acpi-garbage", &[]);
    assert_exit(&run, 0);
    assert!(
        run.has_line("probe: acpi garbage ignored"),
        "{}",
        run.dump()
    );
    assert_logged(&run, "guest wrote 0 to the exit device");
    for stop in ["through ACPI", "ACPI reset register"] {
        assert!(
            !run.stderr.contains(stop),
            "garbage stopped the VM\n{}",
            run.dump()
        );
    }
}

#[test]
fn cmos_clock_is_the_hosts() {
    if !kvm_present() {
        return;
    }
    let now = || {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = now();
    let run = run_action(LINUX64, "cmos", &[]);
    let after = now();
    assert_exit(&run, 0);
    let guest: u64 = run
        .lines()
        .find_map(|l| l.strip_prefix("probe: cmos time="))
        .and_then(|t| t.trim().parse().ok())
        .unwrap_or_else(|| panic!("no cmos time line\n{}", run.dump()));
    assert!(
        guest + 2 >= before && guest <= after + 2,
        "guest clock {guest} outside [{before}, {after}] ±2 s\n{}",
        run.dump()
    );
}

#[test]
fn rng_hands_out_random_bytes() {
    if !kvm_present() {
        return;
    }
    let run = run_action(LINUX64, "rng", &[]);
    assert_exit(&run, 0);
    assert!(run.has_line("probe: rng ok"), "{}", run.dump());
}

/// 64 rounds of a full ring of 4 KiB buffers, then a device-readable
/// buffer: the device stops with DEVICE_NEEDS_RESET (0x40 in the status
/// the probe prints), herd logs it once and keeps running, and after the
/// driver resets the device it serves again.
#[test]
fn rng_flood_and_malformed_request_leave_herd_running() {
    if !kvm_present() {
        return;
    }
    let run = run_action(PVH, "rng-garbage", &[]);
    assert_exit(&run, 0);
    assert!(
        run.has_line("probe: rng-garbage flood bytes=4194304"),
        "{}",
        run.dump()
    );
    assert!(
        run.has_line("probe: rng-garbage recovered"),
        "{}",
        run.dump()
    );
    assert_logged(&run, "virtio-rng: malformed request from the driver");
}

#[test]
fn no_rng_leaves_the_device_out() {
    if !kvm_present() {
        return;
    }
    let run = run_action(LINUX64, "rng", &["--no-rng"]);
    assert_eq!(run.code(), Some(1), "{}", run.dump());
    assert!(
        run.stdout.contains("no virtio-rng device"),
        "{}",
        run.dump()
    );
}
