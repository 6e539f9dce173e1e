//! Firecracker as the reference: the same guests under both VMMs, runs
//! interleaved, ratios printed, when `HERD_BENCH_FIRECRACKER` names a
//! firecracker binary (a release download, or one built from its public
//! source outside this repository). Without it the rows say "not compared".
//!
//! - local /dev/kvm, the probe guest (an outside-style tiny ELF kernel):
//!   spawn -> first serial byte, spawn -> exit, PSS while it spins;
//! - the emulated test host, herd's vmlinux + the busybox base initrd:
//!   spawn -> exit, and KVM's exit counts per run (the kvm_exit tracepoint).
//!
//! Like with like: Firecracker runs without its jailer and without an
//! entropy device, so herd runs with `--no-jail --no-rng` (its seccomp
//! filters stay on). herd's defaults in the test host get their own row.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use super::{images, probes, runs, testhost, Row, MEM_MIB};

pub const ENV: &str = "HERD_BENCH_FIRECRACKER";

/// The test-host CPU model for these rows: herd's default without the
/// flags that turn XSAVE and AVX off, since Firecracker refuses to start
/// without KVM_CAP_XCRS (XSAVE).
const TESTHOST_CPU_WITH_XSAVE: &str =
    "EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,-topoext,\
     -nrip-save,-xsavec,-xsaves,-xgetbv1";

/// Firecracker's guest arguments: its getting-started ones plus the probes
/// herd's own defaults spare the guest (one 8250 port, no i8042 aux/mux),
/// so both guests skip the same hardware probing.
const FC_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off 8250.nr_uarts=1 i8042.noaux i8042.nomux i8042.dumbkbd";

/// The binary named by HERD_BENCH_FIRECRACKER, if set; an error if it is
/// set but unusable, so a typo does not silently skip the comparison.
pub fn binary() -> Result<Option<PathBuf>, String> {
    let Some(path) = std::env::var_os(ENV).filter(|p| !p.is_empty()) else {
        return Ok(None);
    };
    let path = PathBuf::from(path);
    let out = Command::new(&path)
        .arg("--version")
        .output()
        .map_err(|e| format!("{ENV}={}: cannot run it: {e}", path.display()))?;
    let version = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || !version.contains("Firecracker") {
        return Err(format!(
            "{ENV}={}: `--version` did not answer like Firecracker ({})",
            path.display(),
            out.status
        ));
    }
    eprintln!(
        "bench: comparing with {}",
        version.lines().next().unwrap_or("")
    );
    Ok(Some(path))
}

/// The rows that stand for the comparison when it is not made.
pub fn not_compared(rows: &mut Vec<Row>, linux: bool) {
    let what = if linux {
        "herd vs Firecracker: Linux in the test host, spawn -> exit"
    } else {
        "herd vs Firecracker: probe spawn -> first byte, spawn -> exit, PSS"
    };
    rows.push(Row::note(
        what,
        format!("not compared: set {ENV}=/path/to/firecracker"),
    ));
}

/// Writes a Firecracker config file (no API socket, no drives).
fn config(
    dir: &Path,
    name: &str,
    kernel: &str,
    initrd: Option<&str>,
    boot_args: &str,
) -> Result<PathBuf, String> {
    let mut boot = serde_json::json!({
        "kernel_image_path": kernel,
        "boot_args": boot_args,
    });
    if let Some(initrd) = initrd {
        boot["initrd_path"] = initrd.into();
    }
    let cfg = serde_json::json!({
        "boot-source": boot,
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": MEM_MIB },
    });
    let path = dir.join(name);
    std::fs::write(&path, cfg.to_string()).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(path)
}

fn fc_command(fc: &Path, config: &Path) -> Command {
    let mut cmd = Command::new(fc);
    cmd.args(["--no-api", "--level", "off", "--config-file"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

fn median(row: &Row) -> f64 {
    row.stats().map_or(f64::NAN, |(m, ..)| m)
}

fn ratio(name: &str, herd: &Row, fc: &Row) -> Row {
    let mut row = Row::new(name, "x");
    row.samples.push(median(herd) / median(fc));
    row
}

/// The probe guest under both VMMs on local /dev/kvm.
pub fn probe_rows(fc: &Path, kernel: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("herd-bench-fc-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let kernel_s = kernel.to_string_lossy();
    let args = |action: &str| format!("{FC_BOOT_ARGS} probe.quick=1 probe.action={action}");
    let reset = config(&dir, "reset.json", &kernel_s, None, &args("reset"))?;
    let spin = config(&dir, "spin.json", &kernel_s, None, &args("spin"))?;

    let mut herd_first = Row::new("probe, herd: spawn -> first serial byte", "ms");
    let mut fc_first = Row::new("probe, Firecracker: spawn -> first serial byte", "ms");
    let mut herd_exit = Row::new("probe, herd: spawn -> exit (i8042 reset)", "ms");
    let mut fc_exit = Row::new("probe, Firecracker: spawn -> exit (i8042 reset)", "ms");
    // Each run's order alternates, so neither VMM always starts on the
    // caches and page cache the other one left.
    for i in 0..runs() {
        let order = if i % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for herd_turn in order {
            let (cmd, first, exit) = if herd_turn {
                let cmd = super::herd_command(kernel, "reset", None);
                (cmd, &mut herd_first, &mut herd_exit)
            } else {
                (fc_command(fc, &reset), &mut fc_first, &mut fc_exit)
            };
            let (f, e) = super::time_first_byte_and_exit(cmd)
                .map_err(|e| format!("{}: {e}", if herd_turn { "herd" } else { "firecracker" }))?;
            first.samples.push(f);
            exit.samples.push(e);
        }
    }

    let mut herd_pss = Row::new(
        "probe, herd: PSS of the VMM process, guest RAM included",
        "KiB",
    );
    let mut fc_pss = Row::new(
        "probe, Firecracker: PSS of the VMM process, guest RAM included",
        "KiB",
    );
    let mut herd_vmm = Row::new("probe, herd: PSS minus guest RAM", "KiB");
    let mut fc_vmm = Row::new("probe, Firecracker: PSS minus guest RAM", "KiB");
    for _ in 0..runs() {
        for (cmd, total, vmm) in [
            (
                super::herd_command(kernel, "spin", None),
                &mut herd_pss,
                &mut herd_vmm,
            ),
            (fc_command(fc, &spin), &mut fc_pss, &mut fc_vmm),
        ] {
            let use_ = super::spinning_memory(cmd, &[MEM_MIB << 10])?;
            total.samples.push(use_.total_pss_kib as f64);
            vmm.samples.push(use_.vmm_pss_kib as f64);
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    rows.extend([
        ratio(
            "HEADLINE probe herd/Firecracker spawn -> first byte (median; target <= 0.35)",
            &herd_first,
            &fc_first,
        ),
        ratio(
            "HEADLINE probe herd/Firecracker PSS (median; target <= 0.7)",
            &herd_pss,
            &fc_pss,
        ),
        ratio("probe herd/Firecracker spawn -> exit", &herd_exit, &fc_exit),
        ratio(
            "probe herd/Firecracker PSS minus guest RAM",
            &herd_vmm,
            &fc_vmm,
        ),
    ]);
    rows.extend([
        herd_first, fc_first, herd_exit, fc_exit, herd_pss, fc_pss, herd_vmm, fc_vmm,
    ]);
    Ok(())
}

/// Linux to init and back under both VMMs in the test host, interleaved.
pub fn linux_rows(fc: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    let boots: usize = std::env::var("HERD_BENCH_LINUX_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let kernel = images::image_dir("kernel")?;
    let base = images::image_dir("base")?;
    // The test host's CPU model and KVM parameters for this step only:
    // XSAVE (Firecracker needs KVM_CAP_XCRS), and nested paging as on every
    // real KVM host (the test host's shadow-paging default, for many guests
    // at once, makes every guest page fault an exit and a boot 2x slower
    // with a +-30% spread, which drowns the difference between the VMMs).
    let overrides: Vec<&str> = [
        ("HERD_TESTHOST_CPU", TESTHOST_CPU_WITH_XSAVE),
        ("HERD_TESTHOST_APPEND", "kvm_amd.npt=1"),
    ]
    .into_iter()
    .filter(|(var, _)| std::env::var_os(var).is_none())
    .map(|(var, value)| {
        std::env::set_var(var, value);
        var
    })
    .collect();
    let user_args = r#"quiet herd.run="exit 0""#;
    // Firecracker has no exit device: its guest's init resets through the
    // i8042 at once instead of trying the exit port first.
    let fc_args = format!("{FC_BOOT_ARGS} {user_args} herd.exit=reset");
    let fc_cfg = serde_json::json!({
        "boot-source": {
            "kernel_image_path": "/guest/vmlinux",
            "initrd_path": "/guest/initrd.cpio.gz",
            "boot_args": fc_args,
        },
        "drives": [],
        "machine-config": { "vcpu_count": 1, "mem_size_mib": MEM_MIB },
    });
    let script = format!(
        r#"mount -t tracefs none /sys/kernel/tracing 2>/dev/null
cat >/tmp/fc.json <<'EOF'
{fc_cfg}
EOF
# Every VM exit of a run, counted by the kvm_exit tracepoint's histogram:
# switched on once, each run's count the difference of its totals. Turning a
# tracepoint on live-patches kernel text, which can hang the test host unless
# one CPU is online (guest-images/testhost/kvm-hold.c): the others go offline
# meanwhile.
H=/sys/kernel/tracing/events/kvm/kvm_exit
cpus() {{ for _c in /sys/devices/system/cpu/cpu[1-9]*/online; do echo $1 >$_c; done; }}
cpus 0
echo 'hist:keys=exit_reason' >$H/trigger
cpus 1
hits() {{ sed -n 's/^ *Hits: *//p' $H/hist; }}
kvm_on() {{ _hits=$(hits); }}
kvm_off() {{ echo "kvm-exits $1 $(($(hits) - _hits))"; }}
# The same wrapper times all three: output to a file, shown after the end.
timed() {{
	_n=$1
	shift
	echo "testhost: begin $_n uptime=$(cut -d' ' -f1 /proc/uptime)"
	timeout -s KILL 60 "$@" >/tmp/vm.out 2>&1
	_rc=$?
	echo "testhost: end $_n exit=$_rc uptime=$(cut -d' ' -f1 /proc/uptime)"
	sed 's/^/[guest] /' /tmp/vm.out
}}
one() {{
	case $1 in
	herd)
		kvm_on
		timed herd$2 herd run --log-level error --no-jail --no-rng --mem {MEM_MIB} \
			--kernel /guest/vmlinux --initrd /guest/initrd.cpio.gz \
			--boot-report $HERD_OUTPUT_DIR/herd$2.json --cmdline '{user_args}'
		kvm_off herd$2
		;;
	default)
		timed default$2 herd run --log-level error --mem {MEM_MIB} --kernel /guest/vmlinux \
			--initrd /guest/initrd.cpio.gz --cmdline '{user_args}'
		;;
	fc)
		kvm_on
		timed fc$2 /guest/firecracker --no-api --level off --config-file /tmp/fc.json
		kvm_off fc$2
		;;
	esac
}}
# Each run's position rotates, so no VMM always goes first.
for i in $(seq 1 {boots}); do
	case $((i % 3)) in
	0) one herd $i; one default $i; one fc $i ;;
	1) one fc $i; one herd $i; one default $i ;;
	*) one default $i; one fc $i; one herd $i ;;
	esac
done
"#
    );
    let result = testhost::Scenario::new("bench_linux_vs_firecracker", &script)
        .herd(&probes::herd_bin())
        .file(&kernel.join("vmlinux"), "vmlinux")
        .file(&base.join("initrd.cpio.gz"), "initrd.cpio.gz")
        .file(fc, "firecracker")
        .timeout(std::time::Duration::from_secs(900))
        .run();
    for var in overrides {
        std::env::remove_var(var);
    }
    let mut herd_exit = Row::new("Linux in the test host, herd: spawn -> exit", "ms");
    let mut fc_exit = Row::new("Linux in the test host, Firecracker: spawn -> exit", "ms");
    let mut default_exit = Row::new(
        "Linux in the test host, herd with its defaults (jail, virtio-rng): spawn -> exit",
        "ms",
    );
    let mut herd_kvm = Row::new(
        "Linux in the test host, herd: KVM exits over the run",
        "exits",
    );
    let mut fc_kvm = Row::new(
        "Linux in the test host, Firecracker: KVM exits over the run",
        "exits",
    );
    let mut to_init = Row::new(
        "Linux in the test host, herd: KVM exits up to init (boot report)",
        "exits",
    );
    let mut failed = std::collections::BTreeMap::<String, u32>::new();
    for i in 1..=boots {
        for (name, row, kvm) in [
            (format!("herd{i}"), &mut herd_exit, &mut herd_kvm),
            (format!("fc{i}"), &mut fc_exit, &mut fc_kvm),
        ] {
            let run = result
                .run(&name)
                .ok_or_else(|| format!("{name} did not run:\n{}", result.output()))?;
            // A run that fails (the test host's emulation flakes now and
            // then, under either VMM) is counted, not timed.
            if run.exit_code != Some(0) {
                eprintln!("bench: {name} exited {:?}", run.exit_code);
                *failed
                    .entry(name.trim_end_matches(char::is_numeric).to_owned())
                    .or_default() += 1;
                continue;
            }
            row.samples.extend(run.secs.map(|s| s * 1e3));
            if let Some(n) = kvm_exits(&result.lines, &name) {
                kvm.samples.push(n);
            }
        }
        match result.run(&format!("default{i}")) {
            Some(run) if run.exit_code == Some(0) => {
                default_exit.samples.extend(run.secs.map(|s| s * 1e3));
            }
            _ => *failed.entry("default".to_owned()).or_default() += 1,
        }
        let report = result
            .output_file(&format!("herd{i}.json"))
            .unwrap_or_default();
        if let Ok(json) = serde_json::from_str::<serde_json::Value>(&report) {
            to_init
                .samples
                .extend(json["exits_to_init"]["kvm"]["exits"].as_f64());
        }
    }
    rows.push(ratio(
        "HEADLINE Linux in the test host herd/Firecracker spawn -> exit (median; target <= 0.9)",
        &herd_exit,
        &fc_exit,
    ));
    rows.extend([herd_exit, fc_exit, default_exit, herd_kvm, fc_kvm, to_init]);
    for (vmm, count) in failed {
        let mut row = Row::new(
            format!("Linux in the test host, {vmm}: failed runs of {boots}"),
            "runs",
        );
        row.samples.push(f64::from(count));
        rows.push(row);
    }
    Ok(())
}

/// Run `name`'s VM exits, from its `kvm-exits NAME N` line.
fn kvm_exits(lines: &[String], name: &str) -> Option<f64> {
    let prefix = format!("kvm-exits {name} ");
    let line = lines.iter().find(|l| l.starts_with(&prefix))?;
    line[prefix.len()..].trim().parse().ok()
}
