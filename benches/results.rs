//! Shared by the benchmarks: append a table to benches/RESULTS.md with the
//! date, commit and host.

use std::path::{Path, PathBuf};
use std::process::Command;

fn command_output(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

pub fn append_results(table: &str) -> Result<PathBuf, String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/RESULTS.md");
    let commit = command_output("git", &["rev-parse", "--short", "HEAD"]);
    let dirty = if command_output("git", &["status", "--porcelain"]).is_empty() {
        ""
    } else {
        " (uncommitted changes)"
    };
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_owned())
        })
        .unwrap_or_default();
    let entry = format!(
        "\n## {} — commit {commit}{dirty}\nhost: {} — {cpu} — {} CPUs — kernel {}\n\n{table}",
        command_output("date", &["-u", "+%Y-%m-%d %H:%M UTC"]),
        command_output("uname", &["-n"]),
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        command_output("uname", &["-r"]),
    );
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        "# Benchmark results\n\nAppended by `cargo bench`; newest last.\n".to_owned()
    });
    text += &entry;
    std::fs::write(&path, text).map_err(|e| format!("write {}: {e}", path.display()))?;
    Ok(path)
}

/// Median, min and max of `samples`; None if there are none.
#[allow(dead_code)] // Not every bench reports a distribution.
pub fn median_min_max(samples: &[f64]) -> Option<(f64, f64, f64)> {
    let mut v = samples.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    let median = if v.len() % 2 == 0 {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    };
    Some((median, v[0], v[v.len() - 1]))
}
