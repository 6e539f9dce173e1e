//! The interrupt line of one virtio-mmio device: a status word the driver
//! reads and acknowledges, and an irqfd that raises the guest IRQ.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

use vmm_sys_util::eventfd::EventFd;

pub const INT_USED_RING: u32 = 1;
pub const INT_CONFIG_CHANGE: u32 = 2;

#[derive(Debug)]
pub struct VirtioInterrupt {
    status: AtomicU32,
    irq: EventFd,
    /// Set by a device that gave up on a malformed queue; the transport
    /// reports it as DEVICE_NEEDS_RESET until the driver resets.
    needs_reset: AtomicBool,
}

impl VirtioInterrupt {
    pub fn new(irq: EventFd) -> Self {
        VirtioInterrupt {
            status: AtomicU32::new(0),
            irq,
            needs_reset: AtomicBool::new(false),
        }
    }

    /// Sets `why` in the status word and raises the IRQ.
    pub fn trigger(&self, why: u32) {
        self.status.fetch_or(why, Ordering::SeqCst);
        if let Err(e) = self.irq.write(1) {
            log::error!("virtio: cannot raise the device interrupt: {e}");
        }
    }

    pub fn status(&self) -> u32 {
        self.status.load(Ordering::SeqCst)
    }

    pub fn acknowledge(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::SeqCst);
    }

    /// The device is unusable until reset: tell the driver (virtio 1.2,
    /// 2.1.2: DEVICE_NEEDS_RESET plus a configuration change interrupt).
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::SeqCst) {
            self.trigger(INT_CONFIG_CHANGE);
        }
    }

    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::SeqCst)
    }

    pub fn clear_needs_reset(&self) {
        self.needs_reset.store(false, Ordering::SeqCst);
    }

    pub fn irq_eventfd(&self) -> &EventFd {
        &self.irq
    }
}
