//! Part 2 of the soak: many appliances at once for minutes, their control
//! sockets busy, their fds, threads and RSS sampled from outside.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::host::{host_sample, proc_sample, ProcSample};
use crate::staging::check;
use crate::{env_num, leftovers, Run};

/// Samples over the run, besides the first (at start) and the last.
const SAMPLES: u64 = 10;
/// RSS a herd may gain between the end of the warm-up and the end of the
/// run: allocator and page-cache noise, far below what a per-request or
/// per-line leak adds over thousands of requests and lines.
const RSS_SLACK_KIB: u64 = 256;

fn api_get(socket: &std::path::Path, path: &str) -> bool {
    let Ok(mut s) = UnixStream::connect(socket) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: herd\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    answer.starts_with("HTTP/1.1 200")
}

fn pid_of(run: &Run, name: &str) -> Option<u32> {
    std::fs::read_to_string(run.runtime.join(name).join("pid"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn totals(samples: &[Option<ProcSample>]) -> (usize, usize, u64) {
    samples.iter().flatten().fold((0, 0, 0), |(f, t, r), s| {
        (f + s.fds, t + s.threads, r + s.rss_kib)
    })
}

pub fn run(run: &Run, out: &mut Vec<String>) -> Result<(), String> {
    let count = env_num("HERD_SOAK_VMS", 50);
    let seconds = env_num("HERD_SOAK_SECONDS", 300);
    let base = host_sample(&run.scope());
    let names: Vec<String> = (0..count).map(|i| format!("{}f{i}", run.prefix)).collect();
    let started = Instant::now();
    for name in &names {
        // nice: fifty spinning probe vCPUs would otherwise starve the host.
        let cmd = run.herd_run(name, "tick", &["--detach", "--console", "log"]);
        let program = cmd.get_program().to_owned();
        let args: Vec<_> = cmd.get_args().map(ToOwned::to_owned).collect();
        let mut nice = std::process::Command::new("nice");
        nice.args(["-n", "19"]).arg(program).args(args);
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => nice.env(k, v),
                None => nice.env_remove(k),
            };
        }
        check(nice.stdin(std::process::Stdio::null()))?;
    }
    let start_s = started.elapsed().as_secs_f64();
    let pids: Vec<u32> = names
        .iter()
        .map(|n| pid_of(run, n).ok_or(format!("{n}: no pid file")))
        .collect::<Result<_, _>>()?;
    eprintln!("soak: {count} appliances up in {start_s:.1} s; running {seconds} s");

    // Control-socket traffic on a side thread for the whole run.
    let stop = AtomicBool::new(false);
    let requests = AtomicU64::new(0);
    // Held for each request, and by the sampler: samples never count the
    // per-connection thread and socket of a request in flight.
    let gate = Mutex::new(());
    let failures = AtomicU64::new(0);
    let mut series: Vec<(f64, Vec<Option<ProcSample>>)> = Vec::new();
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                let name = &names[i % names.len()];
                let path = if i % 2 == 0 { "/v1/vm" } else { "/v1/metrics" };
                let socket = run.runtime.join(name).join("api.sock");
                let ok = {
                    let _turn = gate.lock().unwrap_or_else(|p| p.into_inner());
                    api_get(&socket, path)
                };
                if ok {
                    requests.fetch_add(1, Ordering::Relaxed);
                } else {
                    failures.fetch_add(1, Ordering::Relaxed);
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
        });
        let t0 = Instant::now();
        for k in 0..=SAMPLES {
            let due = Duration::from_secs(seconds * k / SAMPLES);
            if let Some(wait) = due.checked_sub(t0.elapsed()) {
                std::thread::sleep(wait);
            }
            let quiet = gate.lock().unwrap_or_else(|p| p.into_inner());
            // The last answer is read; let herd's connection thread end.
            std::thread::sleep(Duration::from_millis(100));
            let samples = pids.iter().map(|&p| proc_sample(p)).collect();
            drop(quiet);
            series.push((t0.elapsed().as_secs_f64(), samples));
        }
        stop.store(true, Ordering::Relaxed);
    });

    // Every herd alive at every sample, and flat after the warm-up (the
    // first interval: the guest's console log and the API thread pool reach
    // their steady state).
    let mut problems = Vec::new();
    let warm = &series[1].1;
    let last = &series[series.len() - 1].1;
    let mut max_rss_growth = 0i64;
    for (i, name) in names.iter().enumerate() {
        let (Some(a), Some(b)) = (warm[i], last[i]) else {
            problems.push(format!("{name} died during the run"));
            continue;
        };
        if b.fds > a.fds || b.threads > a.threads || b.rss_kib > a.rss_kib + RSS_SLACK_KIB {
            problems.push(format!("{name} grew: {a:?} -> {b:?}"));
        }
        max_rss_growth = max_rss_growth
            .max(i64::try_from(b.rss_kib).unwrap_or(0) - i64::try_from(a.rss_kib).unwrap_or(0));
    }
    let served = requests.load(Ordering::Relaxed);
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        problems.push(format!("{failed} control API requests failed"));
    }
    let mid_host = host_sample(&run.scope());

    // Half stopped gracefully (forced after 1 s: the tick probe ignores
    // Ctrl-Alt-Del), half killed, in parallel.
    let stop_results: Vec<String> = std::thread::scope(|s| {
        let handles: Vec<_> = names
            .chunks(names.len().div_ceil(5).max(1))
            .map(|chunk| {
                s.spawn(move || {
                    let mut errors = Vec::new();
                    for (i, name) in chunk.iter().enumerate() {
                        let args: &[&str] = if i % 2 == 0 {
                            &["stop", "-t", "1", name]
                        } else {
                            &["kill", name]
                        };
                        match run.herd(args).output() {
                            Ok(o) if o.status.success() => {}
                            Ok(o) => errors.push(format!(
                                "herd {args:?}: {}: {}",
                                o.status,
                                String::from_utf8_lossy(&o.stderr)
                            )),
                            Err(e) => errors.push(format!("herd {args:?}: {e}")),
                        }
                    }
                    errors
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    });
    problems.extend(stop_results);
    // `herd kill` returns once the VM is told; give the processes a moment.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut after = host_sample(&run.scope());
    while after != base && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
        after = host_sample(&run.scope());
    }
    if let Err(e) = leftovers("after stopping the fleet", &after, &base) {
        problems.push(e);
    }

    out.push(format!(
        "| {count} appliances at once (tick probe, console log, disk, TAP, vsock; nice 19): start all | s | {start_s:.1} | | | 1 |"
    ));
    out.push(format!(
        "| control API requests served during the run (GET /v1/vm, /v1/metrics; {failed} failed) | count | {served} | | | 1 |"
    ));
    out.push(format!(
        "| largest RSS growth of one herd, warm-up -> end (limit {RSS_SLACK_KIB}) | KiB | {max_rss_growth} | | | {count} |"
    ));
    out.push(format!(
        "| host while all ran: TAPs / live runtime files / locks / herd processes | count | {} / {} / {} / {} | | | 1 |",
        mid_host.taps, mid_host.runtime_live, mid_host.locks, mid_host.herds
    ));
    out.push(String::new());
    out.push(format!(
        "Sum over the {count} herds (fds, threads, RSS) at each sample; flat after the first interval:\n"
    ));
    out.push("| t (s) | fds | threads | RSS (MiB) | herds alive |".into());
    out.push("|---:|---:|---:|---:|---:|".into());
    for (t, samples) in &series {
        let (fds, threads, rss) = totals(samples);
        out.push(format!(
            "| {t:.0} | {fds} | {threads} | {:.1} | {} |",
            rss as f64 / 1024.0,
            samples.iter().flatten().count()
        ));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}
