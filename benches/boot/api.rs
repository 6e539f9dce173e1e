//! The control API: request round trips (connect, GET /v1/vm, answer read)
//! and what serving it adds to herd's memory.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use super::{
    guest_sizes_kib, herd_command, runs, smaps, spinning_memory, stop, wait_spinning, Row,
};

const REQUESTS_PER_BATCH: usize = 100;

fn round_trip(socket: &Path) -> Result<f64, String> {
    let t = Instant::now();
    let mut s = UnixStream::connect(socket).map_err(|e| format!("connect: {e}"))?;
    s.write_all(b"GET /v1/vm HTTP/1.1\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut answer = Vec::with_capacity(1024);
    s.read_to_end(&mut answer).map_err(|e| e.to_string())?;
    if !answer.starts_with(b"HTTP/1.1 200") {
        return Err(format!("answer: {}", String::from_utf8_lossy(&answer)));
    }
    Ok(t.elapsed().as_secs_f64() * 1e6)
}

/// The `percent`th percentile (nearest rank) of a non-empty sample.
fn percentile(samples: &[f64], percent: usize) -> f64 {
    let mut v = samples.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = (percent * (v.len() - 1) + 50) / 100;
    v[rank.min(v.len() - 1)]
}

pub fn control_api(kernel: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    let runtime = std::env::temp_dir().join(format!("herd-bench-api-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&runtime);
    let mut trip = Row::new(
        "control API: GET /v1/vm round trip (connect to last byte)",
        "us",
    );
    let mut p99 = Row::new(
        format!("control API: round trip p99 per batch of {REQUESTS_PER_BATCH}"),
        "us",
    );
    let mut added = Row::new(
        "control API: private dirty memory it adds (named herd minus unnamed, after requests)",
        "KiB",
    );
    for _ in 0..runs() {
        let base = spinning_memory(herd_command(kernel, "spin", None), &guest_sizes_kib())?;

        let mut cmd = herd_command(kernel, "spin", None);
        cmd.args(["--name", "bench-api"])
            .env("HERD_RUNTIME", &runtime);
        let mut named = cmd.spawn().map_err(|e| e.to_string())?;
        wait_spinning(&mut named)?;
        let socket = runtime.join("bench-api/api.sock");
        let mut batch = Vec::with_capacity(REQUESTS_PER_BATCH);
        for _ in 0..REQUESTS_PER_BATCH {
            batch.push(round_trip(&socket)?);
        }
        // Connection threads end right after answering; let them go.
        std::thread::sleep(Duration::from_millis(50));
        let with_api = smaps::read(named.id(), &guest_sizes_kib());
        stop(&mut named);
        p99.samples.push(percentile(&batch, 99));
        trip.samples.extend(batch);
        added
            .samples
            .push(with_api?.vmm_private_dirty_kib as f64 - base.vmm_private_dirty_kib as f64);
    }
    let _ = std::fs::remove_dir_all(&runtime);
    rows.extend([trip, p99, added]);
    Ok(())
}
