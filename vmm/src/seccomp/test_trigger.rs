//! Test-only: a port that makes the writing vCPU thread call socket(2),
//! which no vCPU filter allows, so tests can prove a violation ends herd
//! with the documented status. Built only with the `seccomp-test-trigger`
//! feature, which only herd's dev-dependencies enable.

use std::sync::{Arc, Mutex};

use devices::{Bus, BusDevice};

/// The port the probe guest's `probe.action=seccomp-trigger` writes.
const TRIGGER_PORT: u64 = 0x502;

struct Trigger;

impl BusDevice for Trigger {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, _offset: u64, _data: &[u8]) {
        log::warn!("seccomp test trigger: calling socket(2) on purpose");
        // SAFETY: socket(2) takes no pointers; the fd, if any, is closed.
        let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM, 0) };
        if fd >= 0 {
            // SAFETY: `fd` was just returned to us and is not shared.
            unsafe { libc::close(fd) };
        }
    }
}

pub(super) fn attach(mut bus: Bus) -> Bus {
    if let Err(e) = bus.insert(Arc::new(Mutex::new(Trigger)), TRIGGER_PORT, 1) {
        log::error!("cannot add the seccomp test trigger: {e:?}");
    }
    bus
}
