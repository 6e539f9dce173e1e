//! The ACPI power button: a Generic Event Device (GED, ACPI0013) whose only
//! event is "the power button was pressed". Pressing it raises the GED's
//! interrupt; the guest runs the DSDT's `_EVT` method, which notifies the
//! PNP0C0C button device, and Linux reports KEY_POWER (systemd-logind or
//! acpid then shut down cleanly). The DSDT side is in vmm's ACPI tables.

use std::sync::Arc;

use vmm_sys_util::eventfd::EventFd;

/// The GSI of the GED interrupt: ISA IRQ 3 (COM2), which herd never uses.
pub const POWER_BUTTON_GSI: u32 = 3;

/// A handle that presses the button; clone it to whoever may stop the VM
/// gracefully.
#[derive(Clone, Debug)]
pub struct PowerButton {
    irq: Arc<EventFd>,
}

impl PowerButton {
    /// `irq` must be registered as an irqfd for [`POWER_BUTTON_GSI`].
    pub fn new(irq: EventFd) -> Self {
        PowerButton { irq: Arc::new(irq) }
    }

    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    /// Presses the power button once. A guest without ACPI (or ignoring the
    /// button) does nothing, so callers need a timeout and a harder stop.
    pub fn press(&self) -> std::io::Result<()> {
        log::info!("pressing the guest's ACPI power button");
        self.irq.write(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn press_fires_the_interrupt() {
        let button = PowerButton::new(EventFd::new(libc::EFD_NONBLOCK).unwrap());
        let other = button.clone();
        other.press().unwrap();
        assert_eq!(button.irq().read().unwrap(), 1);
    }
}
