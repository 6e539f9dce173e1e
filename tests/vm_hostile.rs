//! Hostile and misbehaving guests on the local /dev/kvm (issue 15): probe
//! guests (`guest-images/probes/hostile.c`) that use odd but legal
//! instructions, flood herd, or never cooperate. herd must do the right
//! thing, stay bounded in what it logs and keeps, and always stop.

#[path = "vm_hostile/frozen_disk.rs"]
mod frozen_disk;
#[path = "vm_hostile/misbehaving.rs"]
mod misbehaving;
mod support;

use std::io::Write;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use support::herd_run::{self, drain, watch_lines, ChildGuard, Run};
use support::probes::herd_run_probe;

/// A hung VMM must fail its test, not hang the suite.
const TIMEOUT: Duration = Duration::from_secs(30);
const LINUX64: &str = "probe-linux64.elf";

/// False (after one loud SKIP line) only when /dev/kvm is absent.
fn kvm_present() -> bool {
    herd_run::kvm_present("vm_hostile")
}

fn herd_cmd(cmdline: &str, extra: &[&str]) -> Command {
    herd_run_probe(LINUX64, cmdline, extra)
}

fn run(cmdline: &str, extra: &[&str]) -> Run {
    let what = format!("herd (cmdline {cmdline:?}, {extra:?})");
    herd_run::run_with_timeout(herd_cmd(cmdline, extra), TIMEOUT, &what)
}

#[test]
fn string_port_io_reaches_the_serial_port_and_the_exit_device() {
    if !kvm_present() {
        return;
    }
    let run = run("probe.quick=1 probe.action=outsb", &[]);
    assert!(
        run.has_line("probe: outsb hello from rep outsb"),
        "the rep outsb line was lost\n{}",
        run.dump()
    );
    // Three bytes in one `rep outsb` to the exit port: the first one stops
    // the VM, the later ones cannot change its status.
    assert_eq!(run.code(), Some(42), "{}", run.dump());
}

#[test]
fn string_port_input_reads_the_device_once_per_element() {
    if !kvm_present() {
        return;
    }
    let run = run("probe.quick=1 probe.action=insb", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.dump());
    // An idle 8250's line status: transmitter empty (0x60), eight times.
    assert!(
        run.has_line(&format!("probe: insb lsr={}", "60".repeat(8))),
        "rep insb from the line status register did not read it 8 times\n{}",
        run.dump()
    );
}

#[test]
fn the_boot_timer_is_logged_once_however_often_the_guest_writes_it() {
    if !kvm_present() {
        return;
    }
    let run = run("probe.quick=1 probe.action=boot-timer-flood:300", &[]);
    assert_eq!(run.code(), Some(0), "{}", run.dump());
    let logged = run.stderr.matches("guest boot timer").count();
    assert_eq!(logged, 1, "{}", run.dump());
}

#[test]
fn a_guest_failing_device_activation_in_a_loop_cannot_flood_the_log() {
    if !kvm_present() {
        return;
    }
    let rounds = 300;
    let run = run(
        &format!("probe.quick=1 probe.action=bad-queue:{rounds}"),
        &[],
    );
    assert_eq!(run.code(), Some(0), "{}", run.dump());
    // Every round was refused (the device asks for a reset)...
    assert!(
        run.has_line(&format!(
            "probe: bad-queue rounds={rounds} refused={rounds}"
        )),
        "{}",
        run.dump()
    );
    // ...and herd said so a bounded number of times, its own warning and
    // virtio-queue's error alike.
    let lines = run.stderr.lines().count();
    assert!(
        lines < 60,
        "{rounds} failed activations logged {lines} lines\n{}",
        run.dump()
    );
}

/// Console input the guest's 64-byte receive FIFO cannot take yet waits
/// for the guest to read, instead of being dropped.
#[test]
fn console_input_larger_than_the_guest_fifo_arrives_whole() {
    if !kvm_present() {
        return;
    }
    let mut cmd = herd_cmd("probe.quick=1 probe.action=echo", &[]);
    cmd.stdin(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn herd"));
    let err = drain(child.0.stderr.take().expect("stderr"));
    let (rx, reader) = watch_lines(child.0.stdout.take().expect("stdout"), |l| {
        l.starts_with("probe: echo ready") || l.starts_with("probe: got line-3")
    });
    rx.recv_timeout(TIMEOUT)
        .expect("the guest never got ready to echo");
    // Three 60-byte lines in one write: 180 bytes against a 64-byte FIFO.
    let lines: Vec<String> = (1..=3)
        .map(|i| format!("line-{i}-{}", "x".repeat(53)))
        .collect();
    let mut stdin = child.0.stdin.take().expect("stdin");
    stdin
        .write_all(format!("{}\n", lines.join("\n")).as_bytes())
        .unwrap();
    let arrived = rx.recv_timeout(TIMEOUT).is_ok();
    drop(stdin);
    let _ = child.0.kill();
    let _ = child.0.wait();
    let (out, err) = (reader.join().unwrap(), err.join().unwrap());
    assert!(arrived, "the last line never came back\n{out}\n{err}");
    for line in &lines {
        assert!(
            out.lines()
                .any(|l| l.trim_end() == format!("probe: got {line}")),
            "{line} was not echoed whole\n{out}\n{err}"
        );
    }
}

/// A write the host cannot complete (the image's filesystem is frozen)
/// must not stop the guest's vCPU, and SIGTERM must still stop the VM
/// within --stop-timeout plus the vCPU teardown.
#[test]
fn a_hung_disk_backend_blocks_neither_the_vcpu_nor_the_stop() {
    if !kvm_present() {
        return;
    }
    let Some(mut fs) = frozen_disk::FrozenFs::new("hung-disk") else {
        return;
    };
    let disk = fs.disk().display().to_string();
    let mut cmd = herd_cmd(
        "probe.quick=1 probe.action=blk-hang",
        &["--disk", &disk, "--stop-timeout", "1"],
    );
    let mut child = ChildGuard(cmd.spawn().expect("spawn herd"));
    let (stopped, err) = watch_lines(child.0.stderr.take().expect("stderr"), |l| {
        l.contains("VM stopped")
    });
    let (alive, out) = watch_lines(child.0.stdout.take().expect("stdout"), |l| {
        l.contains("probe: blk-hang alive 5")
    });
    let running = alive.recv_timeout(TIMEOUT).is_ok();
    let pid = libc::pid_t::try_from(child.0.id()).unwrap();
    let sent = Instant::now();
    // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stop_seen = stopped.recv_timeout(Duration::from_secs(20)).is_ok();
    let took = sent.elapsed();
    // Only now can the stuck write (and with it the process) finish.
    fs.thaw();
    let exited = herd_run::wait_until(&mut child.0, Instant::now() + TIMEOUT).is_some();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(
        running,
        "the vCPU stopped running while the disk write hung\n{out}\n{err}"
    );
    assert!(
        out.contains("probe: blk-hang write submitted"),
        "{}: {out}\n{err}",
        fs.path().display()
    );
    assert!(
        stop_seen,
        "SIGTERM did not stop the VM while its disk hung\n{out}\n{err}"
    );
    // A correctness bound (1 s stop timeout, 0.5 s vCPU teardown, slack for
    // a loaded machine), not a performance claim.
    assert!(
        took < Duration::from_secs(10),
        "stopping took {took:?}\n{err}"
    );
    assert!(exited, "herd did not exit once the disk thawed\n{err}");
    eprintln!("hung disk: SIGTERM to \"VM stopped\" in {took:?} (--stop-timeout 1)");
}

/// herd's stdout is a pipe nobody reads: the guest's console output must
/// not hold its vCPU, so the guest still gets to its exit.
#[test]
fn a_blocked_stdout_does_not_hold_the_vcpu() {
    if !kvm_present() {
        return;
    }
    // ~21 KB of output against a pipe of one page that is never read.
    let mut cmd = herd_cmd("probe.quick=1 probe.action=print-lots:300", &[]);
    let mut child = ChildGuard(cmd.spawn().expect("spawn herd"));
    let unread_stdout = child.0.stdout.take().expect("stdout");
    // SAFETY: F_SETPIPE_SZ only resizes the pipe behind a descriptor we own.
    let size = unsafe { libc::fcntl(unread_stdout.as_raw_fd(), libc::F_SETPIPE_SZ, 4096) };
    assert_eq!(size, 4096, "cannot shrink the stdout pipe");
    let err = drain(child.0.stderr.take().expect("stderr"));
    let status = herd_run::wait_until(&mut child.0, Instant::now() + 2 * TIMEOUT);
    let err = err.join().unwrap();
    assert!(
        status.is_some(),
        "the guest never reached its exit with stdout blocked\n{err}"
    );
    assert_eq!(status.unwrap().code(), Some(0), "{err}");
}
