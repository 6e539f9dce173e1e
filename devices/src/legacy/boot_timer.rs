//! Boot timer: the guest writes a magic byte when it reaches the point it
//! calls "booted" (usually init), and herd records how long that took.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

pub const BOOT_TIMER_PORT: u64 = 0x440;
/// Firecracker's magic value, so existing guest tooling works unchanged.
pub const BOOT_TIMER_MAGIC: u8 = 123;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTimerReading {
    pub since_process_start: Duration,
    pub since_vm_build_start: Duration,
}

pub struct BootTimer {
    process_start: Instant,
    build_start: Instant,
    reading: Arc<Mutex<Option<BootTimerReading>>>,
}

impl BootTimer {
    pub fn new(
        process_start: Instant,
        build_start: Instant,
        reading: Arc<Mutex<Option<BootTimerReading>>>,
    ) -> Self {
        BootTimer {
            process_start,
            build_start,
            reading,
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() != Some(&BOOT_TIMER_MAGIC) {
            return;
        }
        let now = Instant::now();
        let reading = BootTimerReading {
            since_process_start: now.duration_since(self.process_start),
            since_vm_build_start: now.duration_since(self.build_start),
        };
        log::info!(
            "guest boot timer: {:.1} ms since herd started, {:.1} ms since VM build started",
            reading.since_process_start.as_secs_f64() * 1e3,
            reading.since_vm_build_start.as_secs_f64() * 1e3,
        );
        let mut slot = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        // Only the first firing counts as the boot time.
        slot.get_or_insert(reading);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_magic_write_only() {
        let slot = Arc::new(Mutex::new(None));
        let start = Instant::now();
        let mut timer = BootTimer::new(start, start, slot.clone());
        timer.write(0, &[1]);
        assert!(slot.lock().unwrap().is_none());
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        let first = slot.lock().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(slot.lock().unwrap().unwrap(), first);
    }
}
