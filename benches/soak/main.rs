//! `cargo bench --bench soak`: long runs that must leave nothing behind.
//!
//! 1. cycles: boot and stop a probe guest HERD_SOAK_CYCLES times (default
//!    10 000), HERD_SOAK_PARALLEL at a time (default 2), each a named
//!    appliance with a writable disk, a TAP and a vsock socket. After every
//!    batch the host must be back where it started: no TAP, runtime
//!    directory, disk lock, socket or herd process left.
//! 2. fleet: HERD_SOAK_VMS (default 50) detached appliances at once for
//!    HERD_SOAK_SECONDS (default 300), each guest printing to its console
//!    log and each control socket asked for /v1/vm and /v1/metrics several
//!    times a second, while every herd's fd count, thread count and RSS are
//!    sampled: none may grow after the warm-up. Then half are stopped, half
//!    killed, and the host must be clean again.
//!
//! Any growth or leftover fails the run (exit status 1) after printing the
//! numbers; the table is appended to benches/RESULTS.md. HERD_SOAK_ONLY=
//! cycles|fleet runs one part.

#[path = "../../tests/support/probes.rs"]
mod probes;
#[path = "../results.rs"]
mod results;
#[path = "../../tests/support/staging.rs"]
mod staging;

mod fleet;
mod host;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use host::{host_sample, kept, HostSample, Kept, Scope};
use staging::check;

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Everything one soak run owns; all of it carries `prefix`.
pub struct Run {
    pub prefix: String,
    pub runtime: PathBuf,
    pub scratch: PathBuf,
    pub kernel: PathBuf,
}

impl Run {
    pub fn scope(&self) -> Scope<'_> {
        Scope {
            tap_prefix: &self.prefix,
            runtime: &self.runtime,
            scratch: &self.scratch,
        }
    }

    /// `herd run` for appliance `name` with a disk, a TAP and a vsock
    /// socket of its own.
    pub fn herd_run(&self, name: &str, action: &str, extra: &[&str]) -> Command {
        let disk = self.scratch.join(format!("{name}.img"));
        if !disk.exists() {
            let _ = std::fs::write(&disk, vec![0u8; 64 * 1024]);
        }
        let mut cmd = self.herd(&["run", "--name", name, "--log-level", "error"]);
        cmd.args(extra)
            .arg("--kernel")
            .arg(&self.kernel)
            .args(["--mem", "32", "--disk"])
            .arg(&disk)
            .args(["--net", &format!("tap={name}"), "--vsock"])
            .arg(self.scratch.join(format!("{name}.vsock")))
            .args(["--cmdline", &format!("probe.quick=1 probe.action={action}")]);
        cmd
    }

    pub fn herd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(probes::herd_bin());
        cmd.args(args)
            .env("HERD_RUNTIME", &self.runtime)
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        cmd
    }
}

fn own_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, Iterator::count)
}

/// What stopped appliances keep may not grow once every name was used.
fn kept_stable(what: &str, now: Kept, first: &mut Option<Kept>) -> Result<(), String> {
    match first {
        None => {
            *first = Some(now);
            Ok(())
        }
        // Logs may differ by a few bytes (timestamps); files and dirs not.
        Some(f) if f.dirs == now.dirs && f.files == now.files && now.bytes <= f.bytes + 4096 => {
            Ok(())
        }
        Some(f) => Err(format!(
            "{what}: stopped appliances' directories grew: {now:?}, was {f:?}"
        )),
    }
}

fn leftovers(what: &str, now: &HostSample, base: &HostSample) -> Result<(), String> {
    if now == base {
        Ok(())
    } else {
        Err(format!(
            "{what}: the host is not back where it started: {now:?}, was {base:?}"
        ))
    }
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Part 1; returns table rows.
fn cycles(run: &Run, out: &mut Vec<String>) -> Result<(), String> {
    let total = env_num("HERD_SOAK_CYCLES", 10_000);
    let parallel = env_num("HERD_SOAK_PARALLEL", 2).max(1);
    let batch = 500u64.min(total).max(parallel);
    let base = host_sample(&run.scope());
    let fds_before = own_fds();
    let started = Instant::now();
    let mut times = Vec::new();
    let mut done = 0u64;
    let mut checks = 0;
    let mut first_kept = None;
    while done < total {
        let n = batch.min(total - done);
        let per_worker = n.div_ceil(parallel);
        let results: Vec<Result<Vec<f64>, String>> = std::thread::scope(|s| {
            let workers: Vec<_> = (0..parallel)
                .map(|w| {
                    let count = per_worker.min(n.saturating_sub(w * per_worker));
                    s.spawn(move || {
                        let name = format!("{}c{w}", run.prefix);
                        let mut times = Vec::new();
                        for _ in 0..count {
                            let t = Instant::now();
                            check(&mut run.herd_run(&name, "exit:0", &["--console", "none"]))?;
                            times.push(t.elapsed().as_secs_f64() * 1e3);
                        }
                        Ok(times)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().unwrap_or_else(|_| Err("worker panicked".into())))
                .collect()
        });
        for r in results {
            times.extend(r?);
        }
        done += n;
        let what = format!("after {done} cycles");
        leftovers(&what, &host_sample(&run.scope()), &base)?;
        kept_stable(&what, kept(&run.scope()), &mut first_kept)?;
        checks += 1;
        eprintln!(
            "soak: {done}/{total} cycles, {:.0} s, host clean",
            started.elapsed().as_secs_f64()
        );
    }
    let wall = started.elapsed().as_secs_f64();
    let fds_after = own_fds();
    if fds_after != fds_before {
        return Err(format!(
            "the soak process itself went from {fds_before} to {fds_after} fds"
        ));
    }
    let runs = times.len();
    let (min, max) = times
        .iter()
        .fold((f64::MAX, 0f64), |(a, b), &t| (a.min(t), b.max(t)));
    let med = median(&mut times);
    out.push(format!(
        "| boot + stop cycles ({parallel} at a time; named, disk, TAP, vsock; probe exits at once) | count | {runs} | | | |"
    ));
    out.push(format!(
        "| one cycle: `herd run` spawn -> exit | ms | {med:.1} | {min:.1} | {max:.1} | {runs} |"
    ));
    out.push(format!(
        "| all cycles, wall clock | s | {wall:.0} | | | 1 |"
    ));
    out.push(format!(
        "| host checks after a batch (TAPs, locks, sockets, pid files, herd processes back to 0; kept appliance dirs not growing) | passed | {checks} | | | {checks} |"
    ));
    Ok(())
}

fn main() {
    if !probes::kvm_available() {
        println!("SKIP: /dev/kvm absent — the soak needs KVM and did not run");
        return;
    }
    let prefix = format!("sk{}", std::process::id() % 10_000);
    let scratch = std::env::temp_dir().join(format!("herd-soak-{}", std::process::id()));
    let run = Run {
        runtime: scratch.join("run"),
        scratch: scratch.join("files"),
        kernel: probes::probe_path("probe-pvh.elf"),
        prefix,
    };
    for dir in [&run.runtime, &run.scratch] {
        if let Err(e) = std::fs::create_dir_all(dir) {
            eprintln!("soak: cannot create {}: {e}", dir.display());
            std::process::exit(1);
        }
    }
    let only = std::env::var("HERD_SOAK_ONLY").unwrap_or_default();
    let mut rows = Vec::new();
    let mut result = Ok(());
    if only.is_empty() || only == "cycles" {
        result = cycles(&run, &mut rows);
    }
    if result.is_ok() && (only.is_empty() || only == "fleet") {
        result = fleet::run(&run, &mut rows);
    }
    let verdict = match &result {
        Ok(()) => "nothing grew, nothing left behind".to_owned(),
        Err(e) => format!("FAILED: {e}"),
    };
    let table = format!(
        "Soak (`cargo bench --bench soak`): {verdict}\n\n| measurement | unit | median | min | max | runs |\n|---|---|---:|---:|---:|---:|\n{}\n",
        rows.join("\n")
    );
    println!("{table}");
    if std::env::var_os("HERD_SOAK_NO_RESULTS").is_none() {
        match results::append_results(&table) {
            Ok(path) => eprintln!("soak: appended to {}", path.display()),
            Err(e) => eprintln!("soak: {e}"),
        }
    }
    cleanup(&run, Path::new(&scratch));
    if let Err(e) = result {
        eprintln!("soak: {e}");
        std::process::exit(1);
    }
}

/// Kills whatever a failed run left running, then removes the scratch tree.
fn cleanup(run: &Run, scratch: &Path) {
    if let Ok(entries) = std::fs::read_dir(&run.runtime) {
        for e in entries.flatten() {
            if let Some(pid) = std::fs::read_to_string(e.path().join("pid"))
                .ok()
                .and_then(|p| p.trim().parse::<libc::pid_t>().ok())
            {
                // SAFETY: kill(2) on an appliance this run started.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
    }
    let _ = std::fs::remove_dir_all(scratch);
}
