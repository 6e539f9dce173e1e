//! Where the time went, from process start to the guest's boot timer and
//! the VM's end, written as JSON by `--boot-report`.

use std::path::Path;
use std::time::{Duration, Instant};

use devices::legacy::BootTimerReading;
use serde::Serialize;

/// Milliseconds, as floating point for sub-millisecond phases.
fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Timestamps taken while building and running one VM.
#[derive(Clone, Debug)]
pub struct BootTimeline {
    pub process_start: Instant,
    pub build_start: Instant,
    pub vm_created: Option<Instant>,
    pub memory_ready: Option<Instant>,
    pub vcpus_created: Option<Instant>,
    pub kernel_loaded: Option<Instant>,
    pub devices_ready: Option<Instant>,
    pub first_guest_entry: Option<Instant>,
    pub boot_timer: Option<BootTimerReading>,
    pub stop_requested: Option<Instant>,
    pub torn_down: Option<Instant>,
}

impl BootTimeline {
    pub fn new(process_start: Instant) -> Self {
        BootTimeline {
            process_start,
            build_start: Instant::now(),
            vm_created: None,
            memory_ready: None,
            vcpus_created: None,
            kernel_loaded: None,
            devices_ready: None,
            first_guest_entry: None,
            boot_timer: None,
            stop_requested: None,
            torn_down: None,
        }
    }
}

#[derive(Debug, Serialize, PartialEq)]
pub struct Phases {
    pub vm_create_ms: Option<f64>,
    pub memory_ms: Option<f64>,
    pub vcpus_ms: Option<f64>,
    pub kernel_load_ms: Option<f64>,
    pub devices_ms: Option<f64>,
    /// From the end of device setup to the boot vCPU's first KVM_RUN.
    pub start_ms: Option<f64>,
    pub teardown_ms: Option<f64>,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct BootReport {
    /// From process start to the start of the VM build (CLI, logging).
    pub process_to_build_ms: f64,
    /// From process start to the boot vCPU's first entry into the guest.
    pub process_to_first_guest_entry_ms: Option<f64>,
    pub boot_timer_since_process_start_ms: Option<f64>,
    pub boot_timer_since_build_start_ms: Option<f64>,
    pub phases: Phases,
    pub exit_status: i32,
    pub stop_reason: String,
}

impl BootReport {
    pub fn new(t: &BootTimeline, exit_status: i32, stop_reason: String) -> Self {
        let span = |from: Option<Instant>, to: Option<Instant>| match (from, to) {
            (Some(a), Some(b)) => Some(ms(b.saturating_duration_since(a))),
            _ => None,
        };
        BootReport {
            process_to_build_ms: ms(t.build_start.duration_since(t.process_start)),
            process_to_first_guest_entry_ms: span(Some(t.process_start), t.first_guest_entry),
            boot_timer_since_process_start_ms: t.boot_timer.map(|r| ms(r.since_process_start)),
            boot_timer_since_build_start_ms: t.boot_timer.map(|r| ms(r.since_vm_build_start)),
            phases: Phases {
                vm_create_ms: span(Some(t.build_start), t.vm_created),
                memory_ms: span(t.vm_created, t.memory_ready),
                vcpus_ms: span(t.memory_ready, t.vcpus_created),
                kernel_load_ms: span(t.vcpus_created, t.kernel_loaded),
                devices_ms: span(t.kernel_loaded, t.devices_ready),
                start_ms: span(t.devices_ready, t.first_guest_entry),
                teardown_ms: span(t.stop_requested, t.torn_down),
            },
            exit_status,
            stop_reason,
        }
    }

    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let json = serde_json::to_string_pretty(self).map_err(std::io::Error::other)?;
        std::fs::write(path, json + "\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phases_are_consecutive_spans() {
        let start = Instant::now();
        let mut t = BootTimeline::new(start);
        let step = |i: u64| Some(t.build_start + Duration::from_millis(i));
        t.vm_created = step(1);
        t.memory_ready = step(3);
        t.vcpus_created = step(6);
        t.kernel_loaded = step(10);
        t.devices_ready = step(15);
        let r = BootReport::new(&t, 0, "guest reset".into());
        assert_eq!(r.phases.vm_create_ms, Some(1.0));
        assert_eq!(r.phases.memory_ms, Some(2.0));
        assert_eq!(r.phases.devices_ms, Some(5.0));
        assert_eq!(r.phases.start_ms, None);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["stop_reason"], "guest reset");
    }
}
