//! Where the time went, from process start to the guest's boot timer and
//! the VM's end, written as JSON by `--boot-report`.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use devices::legacy::BootTimerReading;
use serde::Serialize;

use crate::vstate::kvm_stats::ExitsSnapshot;

/// Milliseconds, as floating point for sub-millisecond phases.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Timestamps taken while building and running one VM. Each build phase is
/// marked when it ends; its duration runs from the previous mark.
#[derive(Clone, Debug)]
pub struct BootTimeline {
    pub process_start: Instant,
    pub build_start: Instant,
    phases: Vec<(&'static str, Instant)>,
    /// Work done on another thread alongside the phases, by duration.
    overlapped: Vec<(&'static str, Duration)>,
    pub first_guest_entry: Option<Instant>,
    pub boot_timer: Option<BootTimerReading>,
    pub stop_requested: Option<Instant>,
    pub torn_down: Option<Instant>,
    pub exits_at_init: Option<ExitsSnapshot>,
    pub exits_at_end: Option<ExitsSnapshot>,
}

impl BootTimeline {
    pub fn new(process_start: Instant) -> Self {
        BootTimeline {
            process_start,
            build_start: Instant::now(),
            phases: Vec::new(),
            overlapped: Vec::new(),
            first_guest_entry: None,
            boot_timer: None,
            stop_requested: None,
            torn_down: None,
            exits_at_init: None,
            exits_at_end: None,
        }
    }

    /// Marks the end of the build phase `name`.
    pub fn phase_done(&mut self, name: &'static str) {
        self.phases.push((name, Instant::now()));
    }

    /// Records `name`, which took `took` on another thread while the
    /// phases ran (it is not one of them: the phases still add up).
    pub fn overlapped(&mut self, name: &'static str, took: Duration) {
        self.overlapped.push((name, took));
    }

    fn last_mark(&self) -> Instant {
        self.phases.last().map_or(self.build_start, |&(_, t)| t)
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BootReport {
    /// From process start to the start of the VM build (CLI, logging).
    pub process_to_build_ms: f64,
    /// From process start to the boot vCPU's first entry into the guest.
    pub process_to_first_guest_entry_ms: Option<f64>,
    pub boot_timer_since_process_start_ms: Option<f64>,
    pub boot_timer_since_build_start_ms: Option<f64>,
    /// Build phases in milliseconds, plus `start` (last build phase to the
    /// first guest entry) and `teardown` (stop request to vCPUs stopped).
    /// `kernel_load` runs on its own thread alongside `vm_create` ..
    /// `devices`; `kernel_load_wait` is the part of it they did not hide.
    pub phases_ms: BTreeMap<&'static str, f64>,
    pub exit_status: i32,
    pub stop_reason: String,
    /// VM exits up to the guest's first userspace instructions (its init's
    /// boot-timer write), by kind; absent if the guest never wrote it.
    pub exits_to_init: Option<ExitsSnapshot>,
    /// VM exits over the whole run.
    pub exits_total: Option<ExitsSnapshot>,
}

impl BootReport {
    pub fn new(t: &BootTimeline, exit_status: i32, stop_reason: String) -> Self {
        let mut phases_ms = BTreeMap::new();
        let mut previous = t.build_start;
        for &(name, at) in &t.phases {
            phases_ms.insert(name, ms(at.saturating_duration_since(previous)));
            previous = at;
        }
        for &(name, took) in &t.overlapped {
            phases_ms.insert(name, ms(took));
        }
        if let Some(entry) = t.first_guest_entry {
            phases_ms.insert("start", ms(entry.saturating_duration_since(t.last_mark())));
        }
        if let (Some(a), Some(b)) = (t.stop_requested, t.torn_down) {
            phases_ms.insert("teardown", ms(b.saturating_duration_since(a)));
        }
        BootReport {
            process_to_build_ms: ms(t.build_start.duration_since(t.process_start)),
            process_to_first_guest_entry_ms: t
                .first_guest_entry
                .map(|e| ms(e.saturating_duration_since(t.process_start))),
            boot_timer_since_process_start_ms: t.boot_timer.map(|r| ms(r.since_process_start)),
            boot_timer_since_build_start_ms: t.boot_timer.map(|r| ms(r.since_vm_build_start)),
            phases_ms,
            exit_status,
            stop_reason,
            exits_to_init: t.exits_at_init.clone(),
            exits_total: t.exits_at_end.clone(),
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        self.write_to(std::fs::File::create(path)?)
    }

    /// Writes to a file opened earlier (before the seccomp filters forbade
    /// opening files).
    pub fn write_to(&self, mut file: std::fs::File) -> std::io::Result<()> {
        use std::io::Write;
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        file.write_all((json + "\n").as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_consecutive_spans() {
        let mut t = BootTimeline::new(Instant::now());
        let base = t.build_start;
        let at = |i: u64| base + Duration::from_millis(i);
        t.phases = vec![
            ("memory", at(1)),
            ("kernel_load", at(3)),
            ("devices", at(6)),
        ];
        t.first_guest_entry = Some(at(10));
        let r = BootReport::new(&t, 0, "guest reset".into());
        assert_eq!(r.phases_ms["memory"], 1.0);
        assert_eq!(r.phases_ms["kernel_load"], 2.0);
        assert_eq!(r.phases_ms["devices"], 3.0);
        assert_eq!(r.phases_ms["start"], 4.0);
        assert!(!r.phases_ms.contains_key("teardown"));
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["stop_reason"], "guest reset");
    }

    #[test]
    fn overlapped_work_is_reported_beside_the_spans() {
        let mut t = BootTimeline::new(Instant::now());
        let base = t.build_start;
        let at = |i: u64| base + Duration::from_millis(i);
        t.phases = vec![("vm_create", at(2)), ("kernel_load_wait", at(5))];
        t.overlapped("kernel_load", Duration::from_millis(4));
        t.first_guest_entry = Some(at(6));
        let r = BootReport::new(&t, 0, "guest reset".into());
        assert_eq!(r.phases_ms["vm_create"], 2.0);
        assert_eq!(r.phases_ms["kernel_load_wait"], 3.0);
        assert_eq!(r.phases_ms["kernel_load"], 4.0);
        assert_eq!(r.phases_ms["start"], 1.0);
    }
}
