//! `cargo bench`: where herd's boot time and memory go, against the floor
//! KVM itself sets. Prints one table (median / min / max over many runs)
//! and appends it to benches/RESULTS.md with the date, commit and host.

#[path = "../../tests/support/probes.rs"]
mod probes;

#[path = "../../tests/support/images.rs"]
mod images;
#[path = "../../tests/support/testhost.rs"]
mod testhost;

mod api;
mod confinement;
mod firecracker;
mod floor;
#[path = "../results.rs"]
mod results;
mod smaps;

use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Instant;

const MEM_MIB: u64 = 128;

fn runs() -> usize {
    std::env::var("HERD_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

struct Row {
    name: String,
    unit: &'static str,
    samples: Vec<f64>,
    /// Printed instead of numbers (a comparison that was not made).
    note: Option<String>,
}

impl Row {
    fn new(name: impl Into<String>, unit: &'static str) -> Self {
        Row {
            name: name.into(),
            unit,
            samples: Vec::new(),
            note: None,
        }
    }

    fn note(name: impl Into<String>, note: String) -> Self {
        Row {
            note: Some(note),
            ..Row::new(name, "")
        }
    }

    fn stats(&self) -> Option<(f64, f64, f64)> {
        results::median_min_max(&self.samples)
    }
}

/// `herd run` on the probe, unjailed (seccomp on) so these rows stay
/// comparable across commits; the jail's cost is measured in confinement.rs.
fn herd_command(kernel: &Path, action: &str, report: Option<&Path>) -> Command {
    herd_command_with(kernel, action, report, &["--no-jail"])
}

fn herd_command_with(
    kernel: &Path,
    action: &str,
    report: Option<&Path>,
    confinement: &[&str],
) -> Command {
    let mut cmd = Command::new(probes::herd_bin());
    cmd.args(["run", "--console", "stdio", "--log-level", "error"])
        .args(confinement)
        .arg("--kernel")
        .arg(kernel)
        .args(["--mem", &MEM_MIB.to_string()])
        // probe.quick=1: the probe acts at once, so herd is timed, not the
        // probe's own checks (slow where guest code is emulated).
        .args(["--cmdline", &format!("probe.quick=1 probe.action={action}")]);
    if let Some(report) = report {
        cmd.arg("--boot-report").arg(report);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

/// Spawns `cmd`; returns (spawn to first stdout byte, spawn to exit).
fn time_first_byte_and_exit(mut cmd: Command) -> Result<(f64, f64), String> {
    let start = Instant::now();
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let mut stdout = child.stdout.take().ok_or("no stdout")?;
    let mut byte = [0u8; 1];
    stdout
        .read_exact(&mut byte)
        .map_err(|e| format!("no output: {e}"))?;
    let first = start.elapsed();
    std::io::copy(&mut stdout, &mut std::io::sink()).map_err(|e| e.to_string())?;
    let status = child.wait().map_err(|e| e.to_string())?;
    let exit = start.elapsed();
    if !status.success() {
        return Err(format!("exited with {status}"));
    }
    Ok((first.as_secs_f64() * 1e3, exit.as_secs_f64() * 1e3))
}

fn floor_command() -> Command {
    let mut cmd = Command::new(std::env::current_exe().expect("bench binary path"));
    cmd.args(["floor", &MEM_MIB.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    cmd
}

/// Waits until a spinning probe says so, so its memory is measured at rest.
fn wait_spinning(child: &mut Child) -> Result<(), String> {
    let stdout = child.stdout.take().ok_or("no stdout")?;
    for line in BufReader::new(stdout).lines() {
        if line.map_err(|e| e.to_string())?.contains("probe: spinning") {
            return Ok(());
        }
    }
    Err("probe ended before spinning".into())
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// The memory of the VMM that `cmd` starts, read once its probe spins
/// (`guest_sizes_kib`: its guest RAM regions); the VMM is stopped after.
fn spinning_memory(mut cmd: Command, guest_sizes_kib: &[u64]) -> Result<smaps::MemoryUse, String> {
    let mut child = cmd.spawn().map_err(|e| e.to_string())?;
    let use_ = wait_spinning(&mut child).and_then(|()| smaps::read(child.id(), guest_sizes_kib));
    stop(&mut child);
    use_
}

fn boot_path(kernel: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    let report = std::env::temp_dir().join(format!("herd-bench-{}.json", std::process::id()));
    let mut first = Row::new("herd: spawn -> first serial byte", "ms");
    let mut exit = Row::new(
        "herd: spawn -> exit (probe prints a line, parses its boot data and command line, resets; guest code is emulated here)",
        "ms",
    );
    let mut floor_first = Row::new("floor: spawn -> first port write", "ms");
    let mut floor_exit = Row::new("floor: spawn -> exit", "ms");
    let mut phases: Vec<Row> = Vec::new();
    for _ in 0..runs() {
        let (f, e) = time_first_byte_and_exit(herd_command(kernel, "reset", Some(&report)))?;
        first.samples.push(f);
        exit.samples.push(e);
        let json: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&report).map_err(|e| format!("boot report: {e}"))?,
        )
        .map_err(|e| e.to_string())?;
        let mut push = |name: String, v: Option<f64>| {
            if let Some(v) = v {
                match phases.iter_mut().find(|r| r.name == name) {
                    Some(row) => row.samples.push(v),
                    None => {
                        let mut row = Row::new(name, "ms");
                        row.samples.push(v);
                        phases.push(row);
                    }
                }
            }
        };
        push(
            "herd phase: process start -> VM build".into(),
            json["process_to_build_ms"].as_f64(),
        );
        if let Some(map) = json["phases_ms"].as_object() {
            for (k, v) in map {
                push(format!("herd phase: {k}"), v.as_f64());
            }
        }
        let (f, e) = time_first_byte_and_exit(floor_command())?;
        floor_first.samples.push(f);
        floor_exit.samples.push(e);
    }
    let _ = std::fs::remove_file(&report);
    let ratio = match (first.stats(), floor_first.stats()) {
        (Some((h, ..)), Some((f, ..))) if f > 0.0 => h / f,
        _ => f64::NAN,
    };
    let mut headline = Row::new(
        "HEADLINE herd/floor first-byte ratio (median; target <= 1.5)",
        "x",
    );
    headline.samples.push(ratio);
    rows.push(headline);
    rows.extend([first, floor_first, exit, floor_exit]);
    rows.extend(phases);
    Ok(())
}

fn guest_sizes_kib() -> Vec<u64> {
    vec![MEM_MIB << 10]
}

fn vmm_memory(kernel: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    let mut private = Row::new(
        "VMM private dirty memory (anonymous, not guest RAM; target <= 300)",
        "KiB",
    );
    let mut clean = Row::new(
        "VMM private clean memory (herd's own code pages; shared across herd processes)",
        "KiB",
    );
    let mut shared = Row::new("VMM shared memory (system libraries)", "KiB");
    let mut pss = Row::new("VMM PSS minus guest RAM", "KiB");
    for _ in 0..runs() {
        let use_ = spinning_memory(herd_command(kernel, "spin", None), &guest_sizes_kib())?;
        private.samples.push(use_.vmm_private_dirty_kib as f64);
        clean.samples.push(use_.vmm_private_clean_kib as f64);
        shared.samples.push(use_.vmm_shared_kib as f64);
        pss.samples.push(use_.vmm_pss_kib as f64);
    }
    rows.extend([private, clean, shared, pss, link_order()]);
    Ok(())
}

/// How much of src/link-order.txt this herd binary has: a list gone stale
/// (renamed functions, other dependencies) shows here before it shows in
/// the memory rows. benches/layout/order.sh rewrites it.
fn link_order() -> Row {
    let name = "functions of src/link-order.txt found in this herd (~540 when current)";
    let list = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/link-order.txt"));
    let symbols = Command::new("nm").arg(probes::herd_bin()).output();
    match (list, symbols) {
        (Ok(list), Ok(out)) if out.status.success() => {
            let symbols = String::from_utf8_lossy(&out.stdout);
            let present: std::collections::HashSet<&str> = symbols
                .lines()
                .filter_map(|l| l.split(' ').nth(2))
                .collect();
            let mut row = Row::new(name, "%");
            let found = list.lines().filter(|n| present.contains(n)).count();
            // The list holds both the release and the bench build's names
            // (order.sh): each build has about half of them.
            row.samples
                .push(100.0 * found as f64 / (list.lines().count() as f64 / 2.0).max(1.0));
            row
        }
        _ => Row::note(name, "not measured (no list or no nm)".into()),
    }
}

fn many_at_once(kernel: &Path, count: usize, rows: &mut Vec<Row>) -> Result<(), String> {
    let mut all_done = Row::new(
        format!("{count} VMs at once: start -> all exited (target <= 1000 at 100)"),
        "ms",
    );
    let rounds = runs();
    for _ in 0..rounds {
        let start = Instant::now();
        let mut children = (0..count)
            .map(|_| {
                herd_command(kernel, "exit:0", None)
                    .stdout(Stdio::null())
                    .spawn()
            })
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("spawn: {e}"))?;
        for child in &mut children {
            let status = child.wait().map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("a VM of {count} exited with {status}"));
            }
        }
        all_done.samples.push(start.elapsed().as_secs_f64() * 1e3);
    }
    let mut per_vm = Row::new(
        format!("{count} VMs at once: host memory (PSS) per VM"),
        "KiB",
    );
    for _ in 0..3 {
        let mut children = (0..count)
            .map(|_| herd_command(kernel, "spin", None).spawn())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("spawn: {e}"))?;
        let mut total = 0u64;
        let mut failure = None;
        for child in &mut children {
            match wait_spinning(child).and_then(|()| smaps::read(child.id(), &guest_sizes_kib())) {
                Ok(u) => total += u.total_pss_kib,
                Err(e) => failure = Some(e),
            }
        }
        children.iter_mut().for_each(stop);
        if let Some(e) = failure {
            return Err(e);
        }
        per_vm.samples.push(total as f64 / count as f64);
    }
    rows.extend([all_done, per_vm]);
    Ok(())
}

/// Linux guests to init with `quiet`, inside the emulated test host (real
/// KVM under QEMU TCG): relative figures for spotting regressions.
fn linux_in_test_host(rows: &mut Vec<Row>) -> Result<(), String> {
    const BOOTS: usize = 5;
    let kernel = images::image_dir("kernel")?;
    let base = images::image_dir("base")?;
    let script = format!(
        "for i in $(seq 1 {BOOTS}); do run_guest boot$i run --mem 256 --kernel /guest/vmlinux \
         --initrd /guest/initrd.cpio.gz --cmdline 'quiet herd.run=\"exit 0\"'; done"
    );
    let result = testhost::Scenario::new("bench_linux_boot", &script)
        .herd(&probes::herd_bin())
        .file(&kernel.join("vmlinux"), "vmlinux")
        .file(&base.join("initrd.cpio.gz"), "initrd.cpio.gz")
        .timeout(std::time::Duration::from_secs(600))
        .run();
    let mut to_init = Row::new(
        "Linux guest to init (boot timer, quiet) in the emulated test host",
        "ms",
    );
    let mut to_exit = Row::new(
        "Linux guest: herd start to exit, in the emulated test host",
        "ms",
    );
    for i in 1..=BOOTS {
        let run = result
            .run(&format!("boot{i}"))
            .ok_or_else(|| format!("boot{i} did not run:\n{}", result.output()))?;
        if run.exit_code != Some(0) {
            return Err(format!("boot{i} exited {:?}", run.exit_code));
        }
        let line = run
            .find("guest boot timer:")
            .ok_or_else(|| format!("boot{i}: no boot timer line"))?;
        let ms = line
            .split("guest boot timer:")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
            .ok_or_else(|| format!("boot{i}: cannot parse {line:?}"))?;
        to_init.samples.push(ms);
        if let Some(secs) = run.secs {
            to_exit.samples.push(secs * 1e3);
        }
    }
    rows.extend([to_init, to_exit]);
    Ok(())
}

/// TCP throughput host to guest inside the test host: the guest fetches a
/// file from busybox httpd on the test host over virtio-net, bridge and
/// TAP. A relative figure (everything runs under software emulation).
fn tcp_in_test_host(rows: &mut Vec<Row>) -> Result<(), String> {
    const RUNS: usize = 3;
    const MIB: u32 = 64;
    let kernel = images::image_dir("kernel")?;
    let base = images::image_dir("base")?;
    let script = format!(
        r#"herd net create br0 --subnet 10.77.0.1/24
mkdir -p /www && dd if=/dev/zero of=/www/big bs=1M count={MIB} 2>/dev/null
httpd -p 10.77.0.1:8080 -h /www
for i in $(seq 1 {RUNS}); do
run_guest tcp$i run --mem 256 --kernel /guest/vmlinux --initrd /guest/initrd.cpio.gz   --net tap=tap0,bridge=br0 --cmdline 'quiet ip=10.77.0.2::10.77.0.1:255.255.255.0::eth0:off   herd.run="t0=$(cut -d\  -f1 /proc/uptime); wget -q -O /dev/null http://10.77.0.1:8080/big &&   t1=$(cut -d\  -f1 /proc/uptime) && echo herd-bench: fetched in $t0 $t1"'
done"#
    );
    let result = testhost::Scenario::new("bench_tcp", &script)
        .herd(&probes::herd_bin())
        .file(&kernel.join("vmlinux"), "vmlinux")
        .file(&base.join("initrd.cpio.gz"), "initrd.cpio.gz")
        .timeout(std::time::Duration::from_secs(900))
        .run();
    let mut row = Row::new(
        "TCP host -> guest (wget from test-host httpd), emulated test host",
        "MiB/s",
    );
    for i in 1..=RUNS {
        let run = result
            .run(&format!("tcp{i}"))
            .ok_or_else(|| format!("tcp{i} did not run:\n{}", result.output()))?;
        let line = run
            .find("herd-bench: fetched in")
            .ok_or_else(|| format!("tcp{i}: no result line:\n{}", result.output()))?;
        let times: Vec<f64> = line
            .split("fetched in")
            .nth(1)
            .unwrap_or("")
            .split_whitespace()
            .filter_map(|t| t.parse().ok())
            .collect();
        match times[..] {
            [t0, t1] if t1 > t0 => row.samples.push(f64::from(MIB) / (t1 - t0)),
            _ => return Err(format!("tcp{i}: cannot parse {line:?}")),
        }
    }
    rows.push(row);
    Ok(())
}

fn render(rows: &[Row]) -> String {
    let mut out = String::from(
        "| measurement | unit | median | min | max | runs |\n|---|---|---:|---:|---:|---:|\n",
    );
    for row in rows {
        if let Some(note) = &row.note {
            out += &format!("| {} | | {note} | | | |\n", row.name);
        } else if let Some((median, min, max)) = row.stats() {
            out += &format!(
                "| {} | {} | {median:.2} | {min:.2} | {max:.2} | {} |\n",
                row.name,
                row.unit,
                row.samples.len()
            );
        }
    }
    out
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("floor") {
        let mib = args.get(2).and_then(|m| m.parse().ok()).unwrap_or(MEM_MIB);
        if let Err(e) = floor::run(mib) {
            eprintln!("floor: {e}");
            std::process::exit(1);
        }
        return;
    }
    if !probes::kvm_available() {
        println!("SKIP: /dev/kvm absent — herd benchmarks need KVM and did not run");
        return;
    }
    let kernel = probes::probe_path("probe-linux64.elf");
    let mut rows = Vec::new();
    let fc = firecracker::binary().unwrap_or_else(|e| {
        eprintln!("bench: {e}");
        std::process::exit(1);
    });
    let versus_fc = |r: &mut Vec<Row>, linux: bool| {
        match &fc {
            Some(fc) if linux => firecracker::linux_rows(fc, r)?,
            Some(fc) => firecracker::probe_rows(fc, &kernel, r)?,
            None => firecracker::not_compared(r, linux),
        }
        Ok(())
    };
    type Step<'a> = &'a dyn Fn(&mut Vec<Row>) -> Result<(), String>;
    let steps: [(&str, Step); 10] = [
        ("boot path", &|r| boot_path(&kernel, r)),
        ("vs Firecracker: probe", &|r| versus_fc(r, false)),
        ("confinement", &|r| confinement::rows(&kernel, r)),
        ("VMM memory", &|r| vmm_memory(&kernel, r)),
        ("control API", &|r| api::control_api(&kernel, r)),
        ("20 at once", &|r| many_at_once(&kernel, 20, r)),
        ("100 at once", &|r| many_at_once(&kernel, 100, r)),
        ("Linux in the test host", &linux_in_test_host),
        ("vs Firecracker: Linux in the test host", &|r| {
            versus_fc(r, true)
        }),
        ("TCP in the test host", &tcp_in_test_host),
    ];
    // HERD_BENCH_ONLY=substring runs only the matching steps.
    let only = std::env::var("HERD_BENCH_ONLY").unwrap_or_default();
    for (name, step) in steps {
        if !name.contains(only.as_str()) {
            continue;
        }
        let t = Instant::now();
        if let Err(e) = step(&mut rows) {
            eprintln!("bench {name} failed: {e}");
            std::process::exit(1);
        }
        eprintln!("bench: {name} done in {:.1} s", t.elapsed().as_secs_f64());
    }
    let table = render(&rows);
    println!("\n{table}");
    match results::append_results(&table) {
        Ok(path) => println!("appended to {}", path.display()),
        Err(e) => eprintln!("{e}"),
    }
}
