//! `GET /v1/vm`: what the VM is (fixed at start) and where it is now.

use std::time::Instant;

use serde::Serialize;

use crate::config::VmConfig;
use crate::control::{VmControl, VmState};

#[derive(Clone, Debug, Serialize)]
pub struct DiskInfo {
    pub path: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct NetInfo {
    pub tap: String,
    pub mac: String,
    pub bridge: Option<String>,
}

/// The VM as configured, fixed for its life.
#[derive(Clone, Debug, Serialize)]
pub struct VmDescription {
    pub name: Option<String>,
    pub kernel: String,
    pub initrd: Option<String>,
    pub root: Option<String>,
    pub disks: Vec<DiskInfo>,
    pub nets: Vec<NetInfo>,
    pub vcpus: u32,
    pub mem_mib: u64,
    pub cmdline: String,
}

fn path_text(p: &std::path::Path) -> String {
    p.display().to_string()
}

impl VmDescription {
    pub fn from_config(config: &VmConfig) -> Self {
        VmDescription {
            name: config.name.clone(),
            kernel: path_text(&config.kernel),
            initrd: config.initrd.as_deref().map(path_text),
            root: config.root.as_deref().map(path_text),
            disks: config
                .disks
                .iter()
                .map(|d| DiskInfo {
                    path: path_text(&d.path),
                    read_only: d.read_only,
                })
                .collect(),
            nets: config
                .nets
                .iter()
                .map(|n| NetInfo {
                    tap: n.tap.clone(),
                    mac: config
                        .nic_mac(n)
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<Vec<_>>()
                        .join(":"),
                    bridge: n.bridge.clone(),
                })
                .collect(),
            vcpus: config.cpus,
            mem_mib: config.mem_mib,
            cmdline: config.full_cmdline(),
        }
    }
}

/// Milliseconds since herd started, when each boot milestone happened.
#[derive(Debug, Serialize)]
pub struct BootTimes {
    pub first_guest_entry_ms: Option<f64>,
    /// The guest wrote the boot-timer magic (the herd init: reached init).
    pub boot_timer_ms: Option<f64>,
    /// The guest said it was ready (the herd init: services started).
    pub guest_ready_ms: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct VmInfo<'a> {
    pub api_version: &'static str,
    pub state: VmState,
    pub pid: u32,
    pub uptime_s: f64,
    #[serde(flatten)]
    pub description: &'a VmDescription,
    pub boot: BootTimes,
}

pub fn vm_info<'a>(description: &'a VmDescription, control: &VmControl) -> VmInfo<'a> {
    let clock = &control.boot;
    let since = |t: Instant| {
        t.saturating_duration_since(clock.process_start)
            .as_secs_f64()
            * 1e3
    };
    let boot_timer = *clock.boot_timer.lock().unwrap_or_else(|p| p.into_inner());
    VmInfo {
        api_version: super::API_VERSION,
        state: control.state(),
        pid: std::process::id(),
        uptime_s: clock.process_start.elapsed().as_secs_f64(),
        description,
        boot: BootTimes {
            first_guest_entry_ms: clock.first_guest_entry.get().map(|&t| since(t)),
            boot_timer_ms: boot_timer.map(|r| r.since_process_start.as_secs_f64() * 1e3),
            guest_ready_ms: clock.ready.at().map(since),
        },
    }
}
