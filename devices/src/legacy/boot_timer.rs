//! Boot timer: the guest writes a magic byte when it reaches the point it
//! calls "booted" (usually init), and herd records how long that took.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::bus::BusDevice;

pub const BOOT_TIMER_PORT: u64 = 0x440;
/// Firecracker's magic value, so existing guest tooling works unchanged.
pub const BOOT_TIMER_MAGIC: u8 = 123;
/// herd's own addition: the appliance is up (its services started). The
/// herd init writes it; it is what `Type=notify` units wait for.
pub const GUEST_READY_MAGIC: u8 = 124;

/// When the guest said it was ready, and who to tell (once).
#[derive(Default)]
pub struct GuestReady {
    at: OnceLock<Instant>,
    listener: Mutex<Option<Box<dyn FnOnce() + Send>>>,
}

impl GuestReady {
    /// Runs `listener` once, when the guest reports ready (at once if it
    /// already has).
    pub fn on_ready(&self, listener: Box<dyn FnOnce() + Send>) {
        let mut slot = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if self.at.get().is_some() {
            drop(slot);
            listener();
        } else {
            *slot = Some(listener);
        }
    }

    pub fn at(&self) -> Option<Instant> {
        self.at.get().copied()
    }

    fn mark(&self) {
        let mut slot = self.listener.lock().unwrap_or_else(|p| p.into_inner());
        if self.at.set(Instant::now()).is_ok() {
            log::info!("guest reports ready");
            if let Some(listener) = slot.take() {
                drop(slot);
                listener();
            }
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootTimerReading {
    pub since_process_start: Duration,
    pub since_vm_build_start: Duration,
}

pub struct BootTimer {
    process_start: Instant,
    build_start: Instant,
    reading: Arc<Mutex<Option<BootTimerReading>>>,
    ready: Arc<GuestReady>,
}

impl BootTimer {
    pub fn new(
        process_start: Instant,
        build_start: Instant,
        reading: Arc<Mutex<Option<BootTimerReading>>>,
        ready: Arc<GuestReady>,
    ) -> Self {
        BootTimer {
            process_start,
            build_start,
            reading,
            ready,
        }
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(&BOOT_TIMER_MAGIC) => {}
            Some(&GUEST_READY_MAGIC) => return self.ready.mark(),
            _ => return,
        }
        let mut slot = self.reading.lock().unwrap_or_else(|p| p.into_inner());
        // Only the first firing counts as the boot time, and only it is
        // logged: a guest may write the magic as often as it likes.
        if slot.is_some() {
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
        *slot = Some(reading);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_first_magic_write_only() {
        let slot = Arc::new(Mutex::new(None));
        let start = Instant::now();
        let ready = Arc::new(GuestReady::default());
        let mut timer = BootTimer::new(start, start, slot.clone(), ready.clone());
        timer.write(0, &[1]);
        assert!(slot.lock().unwrap().is_none());
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        let first = slot.lock().unwrap().unwrap();
        std::thread::sleep(Duration::from_millis(2));
        timer.write(0, &[BOOT_TIMER_MAGIC]);
        assert_eq!(slot.lock().unwrap().unwrap(), first);
        let told = Arc::new(Mutex::new(0));
        let t = told.clone();
        ready.on_ready(Box::new(move || *t.lock().unwrap() += 1));
        assert!(ready.at().is_none());
        timer.write(0, &[GUEST_READY_MAGIC]);
        timer.write(0, &[GUEST_READY_MAGIC]);
        assert!(ready.at().is_some());
        assert_eq!(*told.lock().unwrap(), 1);
    }
}
