//! herd's logger: env_logger behind a per-call-site rate limit.
//!
//! Many log sites fire on what a guest does (a failed device activation,
//! virtio-queue's own `error!` on a bad ring, an unclaimed port), so a
//! guest could otherwise make herd write without limit. Every call site
//! may log a burst, then at most one line per interval; the next line it
//! logs says how many were suppressed. Sites that log once are unaffected.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use log::{Log, Metadata, Record};

/// Lines a call site may log back to back.
const BURST: u32 = 10;
/// After the burst, one line per call site per this interval.
const INTERVAL: Duration = Duration::from_secs(10);

/// Where a record comes from: crate target, file and line.
type Site = (String, Option<&'static str>, Option<u32>);

#[derive(Debug)]
struct SiteState {
    /// Lines still allowed before the limit applies.
    tokens: u32,
    last_refill: Instant,
    suppressed: u64,
}

/// Decides per call site whether a line goes out, and how many were
/// dropped before it.
#[derive(Debug)]
pub struct RateLimiter {
    burst: u32,
    interval: Duration,
    sites: Mutex<HashMap<Site, SiteState>>,
}

impl RateLimiter {
    pub fn new(burst: u32, interval: Duration) -> Self {
        RateLimiter {
            burst,
            interval,
            sites: Mutex::new(HashMap::new()),
        }
    }

    /// Some(number suppressed since the last line) if the line may go out.
    fn admit(&self, site: Site, now: Instant) -> Option<u64> {
        let mut sites = self.sites.lock().unwrap_or_else(|p| p.into_inner());
        let state = sites.entry(site).or_insert(SiteState {
            tokens: self.burst,
            last_refill: now,
            suppressed: 0,
        });
        if state.tokens == 0 && now.duration_since(state.last_refill) >= self.interval {
            state.tokens = 1;
            state.last_refill = now;
        }
        if state.tokens == 0 {
            state.suppressed += 1;
            return None;
        }
        state.tokens -= 1;
        if state.tokens == 0 {
            state.last_refill = now;
        }
        Some(std::mem::take(&mut state.suppressed))
    }
}

struct LimitedLogger<L> {
    inner: L,
    limiter: RateLimiter,
}

impl<L: Log> Log for LimitedLogger<L> {
    fn enabled(&self, metadata: &Metadata) -> bool {
        self.inner.enabled(metadata)
    }

    fn log(&self, record: &Record) {
        if !self.inner.enabled(record.metadata()) {
            return;
        }
        let site = (
            record.target().to_owned(),
            record.file_static(),
            record.line(),
        );
        match self.limiter.admit(site, Instant::now()) {
            None => {}
            Some(0) => self.inner.log(record),
            Some(n) => self.inner.log(
                &Record::builder()
                    .metadata(record.metadata().clone())
                    .args(format_args!(
                        "{} ({n} similar messages suppressed)",
                        record.args()
                    ))
                    .file_static(record.file_static())
                    .line(record.line())
                    .module_path_static(record.module_path_static())
                    .build(),
            ),
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// Installs the logger for the process: messages at `level` and above,
/// without their target, rate-limited per call site.
pub fn init(level: log::LevelFilter) {
    let inner = env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .build();
    let logger = LimitedLogger {
        inner,
        limiter: RateLimiter::new(BURST, INTERVAL),
    };
    if log::set_boxed_logger(Box::new(logger)).is_ok() {
        log::set_max_level(level);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn site(line: u32) -> Site {
        ("virtio_queue::queue".into(), Some("queue.rs"), Some(line))
    }

    #[test]
    fn a_call_site_logs_a_burst_then_one_line_per_interval() {
        let limiter = RateLimiter::new(3, Duration::from_secs(10));
        let t0 = Instant::now();
        let admitted = (0..1000)
            .filter(|_| limiter.admit(site(1), t0).is_some())
            .count();
        assert_eq!(admitted, 3);
        // Another site has its own budget.
        assert_eq!(limiter.admit(site(2), t0), Some(0));
        assert_eq!(limiter.admit(site(1), t0 + Duration::from_secs(5)), None);
        // After the interval, one line that counts what was dropped.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(limiter.admit(site(1), later), Some(998));
        assert_eq!(limiter.admit(site(1), later), None);
        assert_eq!(
            limiter.admit(site(1), later + Duration::from_secs(10)),
            Some(1)
        );
    }
}
