//! `herd up --exit`: one verdict over the jobs (an appliance's replicas
//! running a command that ends): passed and failed counts, exit statuses,
//! run-time percentiles, and each failure's last console lines.

use std::collections::BTreeMap;
use std::time::Duration;

use super::plan::Plan;
use super::up::{Action, Outcome};

/// Console lines shown per failed job.
const TAIL_LINES: usize = 10;
/// Failures shown in full; the rest are counted.
const MAX_FAILURES_SHOWN: usize = 10;

pub struct Verdict {
    pub passed: usize,
    pub failed: usize,
    pub text: String,
}

/// The `q`-quantile (nearest rank) of sorted durations.
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

pub fn verdict(plan: &Plan, jobs: &[Outcome]) -> Verdict {
    let passed = jobs.iter().filter(|o| o.action == Action::Exited).count();
    let failed = jobs.len() - passed;
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for o in jobs {
        let key = o
            .exit_status
            .map_or_else(|| "none".to_owned(), |s| s.to_string());
        *statuses.entry(key).or_default() += 1;
    }
    let mut times: Vec<Duration> = jobs.iter().filter_map(|o| o.took).collect();
    times.sort();
    let mut text = format!(
        "verdict: {} ({passed} passed, {failed} failed, of {})\n",
        if failed == 0 { "PASSED" } else { "FAILED" },
        jobs.len()
    );
    text.push_str(&format!(
        "exit statuses: {}\n",
        statuses
            .iter()
            .map(|(s, n)| format!("{s} x{n}"))
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if !times.is_empty() {
        text.push_str(&format!(
            "run time: p50 {:.3}s  p95 {:.3}s  max {:.3}s\n",
            quantile(&times, 0.5).as_secs_f64(),
            quantile(&times, 0.95).as_secs_f64(),
            times.last().copied().unwrap_or_default().as_secs_f64()
        ));
    }
    let failures: Vec<&Outcome> = jobs.iter().filter(|o| o.action != Action::Exited).collect();
    for o in failures.iter().take(MAX_FAILURES_SHOWN) {
        let inst = &plan.instances[o.index];
        text.push_str(&format!(
            "failed: {} ({}): {}\n",
            inst.name,
            inst.runtime_name,
            o.error.as_deref().unwrap_or("failed")
        ));
        for line in super::health::console_tail(&inst.runtime_name, TAIL_LINES) {
            text.push_str(&format!("  | {line}\n"));
        }
    }
    if failures.len() > MAX_FAILURES_SHOWN {
        text.push_str(&format!(
            "... and {} more failures (herd logs NAME)\n",
            failures.len() - MAX_FAILURES_SHOWN
        ));
    }
    Verdict {
        passed,
        failed,
        text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let t: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile(&t, 0.5), Duration::from_millis(50));
        assert_eq!(quantile(&t, 0.95), Duration::from_millis(95));
        assert_eq!(quantile(&t[..1], 0.95), Duration::from_millis(1));
    }
}
