//! End-to-end tests: run the `herd` binary on the local /dev/kvm with the probe
//! guests from `guest-images/probes/` and check what the guest saw (memory map,
//! MP table, command line) and how herd reacted to what it did (exit device,
//! reset, triple fault, unclaimed MMIO, SIGTERM, console routing).
//!
//! Each probe prints one summary line which these tests parse themselves
//! rather than trusting the probe's own verdict:
//! `probe: entry=<linux64|pvh> ram_mib=N cpus=N mem_touch=<ok|fail> cmdline="..."`

mod support;

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use support::herd_run::{self, drain, wait_until, watch_lines, Run};
use support::probes::herd_run_probe;

/// A hung VMM must fail its test, not hang the suite.
const TIMEOUT: Duration = Duration::from_secs(20);
const LINUX64: &str = "probe-linux64.elf";
const PVH: &str = "probe-pvh.elf";

/// False (after one loud SKIP line) only when /dev/kvm is absent.
fn kvm_present() -> bool {
    herd_run::kvm_present("vm_probes")
}

/// `herd run --kernel <probe> --cmdline <cmdline> <extra…>` with piped output.
fn herd_cmd(probe: &str, cmdline: &str, extra: &[&str]) -> Command {
    herd_run_probe(probe, cmdline, extra)
}

fn run(probe: &str, cmdline: &str, extra: &[&str]) -> Run {
    let what = format!("herd ({probe}, cmdline {cmdline:?}, {extra:?})");
    herd_run::run_with_timeout(herd_cmd(probe, cmdline, extra), TIMEOUT, &what)
}

#[derive(Debug, PartialEq)]
struct Summary {
    entry: String,
    ram_mib: u64,
    cpus: u32,
    mem_touch: String,
    cmdline: String,
}

/// Parses the probe's summary line out of everything the guest printed.
fn summary(run: &Run) -> Summary {
    let line = run
        .lines()
        .find(|l| l.starts_with("probe: entry="))
        .unwrap_or_else(|| panic!("no probe summary line\n{}", run.dump()));
    let (head, quoted) = line
        .split_once(" cmdline=\"")
        .unwrap_or_else(|| panic!("summary without cmdline: {line}"));
    let cmdline = quoted
        .strip_suffix('"')
        .unwrap_or_else(|| panic!("unterminated cmdline: {line}"))
        .to_string();
    let field = |key: &str| {
        head.split(' ')
            .find_map(|t| t.strip_prefix(key)?.strip_prefix('='))
            .unwrap_or_else(|| panic!("summary without {key}: {line}"))
            .to_string()
    };
    Summary {
        entry: field("entry"),
        ram_mib: field("ram_mib").parse().expect("ram_mib"),
        cpus: field("cpus").parse().expect("cpus"),
        mem_touch: field("mem_touch"),
        cmdline,
    }
}

/// A clean run: exit status `code`, and no FAIL/WARN from the probe (WARN
/// flags things like a bad MP-table checksum that Linux would reject).
fn assert_clean(run: &Run, code: i32) {
    assert_eq!(run.code(), Some(code), "unexpected exit\n{}", run.dump());
    for bad in ["probe: FAIL", "probe: WARN"] {
        assert!(
            !run.stdout.contains(bad),
            "probe complained\n{}",
            run.dump()
        );
    }
}

fn boots(probe: &str, entry: &str) {
    let run = run(probe, "probe.action=exit:0", &[]);
    assert_clean(&run, 0);
    let hello = format!("probe: hello from {entry}");
    assert!(run.stdout.contains(&hello), "no hello\n{}", run.dump());
    let s = summary(&run);
    assert_eq!(s.entry, entry);
    assert_eq!(s.mem_touch, "ok", "{}", run.dump());
}

#[test]
fn linux64_serial_output_reaches_stdout() {
    if kvm_present() {
        boots(LINUX64, "linux64");
    }
}

#[test]
fn pvh_serial_output_reaches_stdout() {
    if kvm_present() {
        boots(PVH, "pvh");
    }
}

#[test]
fn exit_byte_becomes_exit_status() {
    if !kvm_present() {
        return;
    }
    for (probe, code) in [(LINUX64, 7), (PVH, 42), (LINUX64, 255)] {
        let run = run(probe, &format!("probe.action=exit:{code}"), &[]);
        assert_clean(&run, code);
    }
}

/// herd must hand the guest exactly --mem MiB (e820 / PVH memmap), all of it
/// backed, including above the 3-4 GiB hole.
fn check_mem(probe: &str, mem: u64) {
    let mem_arg = mem.to_string();
    let run = run(probe, "probe.action=exit:0", &["--mem", &mem_arg]);
    assert_clean(&run, 0);
    let s = summary(&run);
    assert_eq!(s.ram_mib, mem, "RAM seen by the guest\n{}", run.dump());
    assert_eq!(s.mem_touch, "ok", "RAM not backed\n{}", run.dump());
}

#[test]
fn mem_sizes_seen_exactly_linux64() {
    if kvm_present() {
        // 3072/3073: the last size without and the first with RAM above
        // the 3-4 GiB hole; 16384: the largest size the probes promise.
        for mem in [16, 128, 3072, 3073, 4096, 8192, 16384] {
            check_mem(LINUX64, mem);
        }
    }
}

#[test]
fn mem_sizes_seen_exactly_pvh() {
    if kvm_present() {
        for mem in [16, 3073, 8192] {
            check_mem(PVH, mem);
        }
    }
}

#[test]
fn cpus_appear_in_mp_table() {
    if !kvm_present() {
        return;
    }
    for (probe, cpus) in [(LINUX64, 1), (LINUX64, 2), (LINUX64, 4), (PVH, 4)] {
        let arg = cpus.to_string();
        let run = run(probe, "probe.action=exit:0", &["--cpus", &arg]);
        assert_clean(&run, 0);
        assert_eq!(summary(&run).cpus, cpus, "MP table\n{}", run.dump());
    }
}

#[test]
fn command_line_arrives_intact() {
    if !kvm_present() {
        return;
    }
    // Long enough to cross any small fixed buffer, with the punctuation
    // kernel command lines use.
    let padding = "x".repeat(300);
    let cmdline = format!(
        "console=ttyS0 root=/dev/vda ro probe.tag=a.b-c_d,e:f/g pad={padding} probe.action=exit:0"
    );
    for probe in [LINUX64, PVH] {
        let run = run(probe, &cmdline, &[]);
        assert_clean(&run, 0);
        let seen = summary(&run).cmdline;
        // herd may add its own parameters; ours must arrive verbatim.
        assert!(seen.contains(&cmdline), "{probe} saw {seen:?}");
    }
}

#[test]
fn probe_expectation_mismatch_fails_the_vm() {
    // Guards the tests above: a wrong expectation must turn into status 1.
    if !kvm_present() {
        return;
    }
    let run = run(LINUX64, "probe.expect_mem=12345", &["--mem", "128"]);
    assert_eq!(run.code(), Some(1), "{}", run.dump());
    assert!(
        run.stdout
            .contains("probe: FAIL mem expected 12345 got 128"),
        "{}",
        run.dump()
    );
}

#[test]
fn i8042_reset_exits_zero() {
    if kvm_present() {
        assert_clean(&run(LINUX64, "probe.action=reset", &[]), 0);
    }
}

#[test]
fn triple_fault_is_reported() {
    if !kvm_present() {
        return;
    }
    let run = run(LINUX64, "probe.action=triple-fault", &[]);
    assert!(summary(&run).mem_touch == "ok", "{}", run.dump());
    assert_ne!(run.code(), Some(0), "triple fault exited 0\n{}", run.dump());
    assert!(
        run.status.code().is_some(),
        "herd died of a signal\n{}",
        run.dump()
    );
    assert!(
        run.stderr.to_lowercase().contains("triple fault"),
        "no 'triple fault' on stderr\n{}",
        run.dump()
    );
    // The state it died in: the empty IDT the probe loaded is the cause.
    assert!(
        run.stderr.contains("IDT base 0x0 limit 0x0") && run.stderr.contains(" at RIP 0x"),
        "the triple fault report lacks the guest's registers\n{}",
        run.dump()
    );
}

#[test]
fn unclaimed_mmio_and_ports_read_all_ones() {
    if !kvm_present() {
        return;
    }
    let run = run(LINUX64, "probe.action=mmio", &[]);
    assert_clean(&run, 0);
    assert!(
        run.stdout
            .contains("probe: mmio unclaimed read=0xffffffff read8=0xff port8=0xff"),
        "{}",
        run.dump()
    );
}

#[test]
fn many_console_lines_arrive_in_order() {
    if !kvm_present() {
        return;
    }
    let n = 200;
    let run = run(LINUX64, &format!("probe.action=print-lots:{n}"), &[]);
    assert_clean(&run, 0);
    let lines: Vec<&str> = run
        .stdout
        .lines()
        .filter(|l| l.starts_with("probe: line "))
        .collect();
    assert_eq!(lines.len(), n, "{}", run.dump());
    for (i, l) in lines.iter().enumerate() {
        assert!(
            l.starts_with(&format!("probe: line {} of {n} ", i + 1)),
            "{l}"
        );
    }
    assert!(run.stdout.contains("probe: print-lots done"));
}

#[test]
fn sigterm_stops_a_spinning_guest_quickly() {
    if !kvm_present() {
        return;
    }
    let mut child = herd_cmd(LINUX64, "probe.action=spin", &[])
        .spawn()
        .expect("spawn herd");
    let err = drain(child.stderr.take().expect("stderr"));
    // Read stdout line by line until the guest is spinning.
    let (rx, reader) = watch_lines(child.stdout.take().expect("stdout"), |l| {
        l.starts_with("probe: spinning")
    });
    if rx.recv_timeout(TIMEOUT).is_err() {
        let _ = child.kill();
        let _ = child.wait();
        panic!(
            "guest never reported spinning\n--- stdout ---\n{}\n--- stderr ---\n{}",
            reader.join().unwrap(),
            err.join().unwrap()
        );
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    let sent = Instant::now();
    // SAFETY: kill(2) on the pid of our own, not yet reaped, child.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_until(&mut child, sent + TIMEOUT);
    let took = sent.elapsed();
    let (stdout, stderr) = (reader.join().unwrap(), err.join().unwrap());
    assert!(
        status.is_some(),
        "herd ignored SIGTERM for {TIMEOUT:?}\n{stdout}\n{stderr}"
    );
    // A correctness bound (SIGTERM is acted on, not queued behind the
    // spinning vCPU), not a performance claim.
    assert!(
        took < Duration::from_secs(1),
        "SIGTERM took {took:?}\n{stdout}\n{stderr}"
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    dir.join(format!("vm_probes-{}-{name}", std::process::id()))
}

#[test]
fn console_file_gets_the_output() {
    if !kvm_present() {
        return;
    }
    let path = scratch("console.log");
    let _ = std::fs::remove_file(&path);
    let console = format!("file:{}", path.display());
    let run = run(PVH, "probe.action=exit:6", &["--console", &console]);
    assert_eq!(run.code(), Some(6), "{}", run.dump());
    assert!(
        !run.stdout.contains("probe:"),
        "guest output leaked to stdout\n{}",
        run.dump()
    );
    let text = std::fs::read_to_string(&path).expect("console file");
    let _ = std::fs::remove_file(&path);
    assert!(text.contains("probe: hello from pvh"), "{text}");
    assert!(text.contains("probe: entry=pvh "), "{text}");
}

#[test]
fn boot_report_records_the_guest_boot_timer() {
    if !kvm_present() {
        return;
    }
    let path = scratch("boot-report.json");
    let _ = std::fs::remove_file(&path);
    let report = path.display().to_string();
    let run = run(LINUX64, "probe.action=exit:0", &["--boot-report", &report]);
    assert_clean(&run, 0);
    let text = std::fs::read_to_string(&path).expect("boot report");
    let _ = std::fs::remove_file(&path);
    // The probe writes the boot-timer port before anything else; only the
    // key's presence is checked, the report's layout is herd's business.
    assert!(text.contains("boot_timer"), "{text}");
    // Exits up to the boot-timer write: the probe's first serial line and
    // the timer write itself are port writes herd handled.
    let json: serde_json::Value = serde_json::from_str(&text).expect("report is JSON");
    let io_out = json["exits_to_init"]["herd"]["io_out"]
        .as_u64()
        .unwrap_or(0);
    let total = json["exits_total"]["herd"]["total"].as_u64().unwrap_or(0);
    assert!(io_out >= 2 && total > io_out, "{text}");
    // KVM's own counters (KVM_GET_STATS_FD) see every exit, so at least
    // the ones herd handled; a KVM without them gets herd's counts only.
    let binary_stats = kvm_ioctls::Kvm::new()
        .is_ok_and(|kvm| kvm.check_extension_raw(kvm_bindings::KVM_CAP_BINARY_STATS_FD.into()) > 0);
    if binary_stats {
        let kvm = |at: &str| json[at]["kvm"]["exits"].as_u64().unwrap_or(0);
        assert!(kvm("exits_to_init") >= io_out, "{text}");
        assert!(
            kvm("exits_total") >= kvm("exits_to_init").max(total),
            "{text}"
        );
    }
}

#[test]
fn console_none_drops_output_but_keeps_status() {
    if !kvm_present() {
        return;
    }
    let run = run(LINUX64, "probe.action=exit:5", &["--console", "none"]);
    assert_eq!(run.code(), Some(5), "{}", run.dump());
    assert!(!run.stdout.contains("probe:"), "{}", run.dump());
}
