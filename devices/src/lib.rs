//! Device emulation for herd guests: the I/O buses and the legacy devices a
//! microVM needs (serial console, i8042 reset, boot timer, exit device), and
//! the ACPI sleep/reset registers and power button.

pub mod acpi;
pub mod bus;
pub mod legacy;
pub mod stop;
pub mod virtio;

pub use bus::{Bus, BusDevice, BusError};
pub use stop::{StopReason, VmStop};

use vmm_sys_util::eventfd::EventFd;

/// An `EventFd` that vm-superio devices can fire (interrupt lines, reset).
///
/// vm-superio wants a `Trigger`; the orphan rule keeps us from implementing
/// it on `EventFd` directly.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    pub fn new(evt: EventFd) -> Self {
        EventFdTrigger(evt)
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
