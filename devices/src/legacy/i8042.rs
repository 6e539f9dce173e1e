//! i8042 keyboard controller: only the CPU-reset command matters to a
//! microVM, it is how Linux reboots without ACPI.

use vm_superio::I8042Device;

use crate::bus::BusDevice;
use crate::stop::{StopReason, VmStop};

pub const I8042_PORT: u64 = 0x60;
/// Data port 0x60 through command port 0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// Turns the guest's reset request into a VM stop.
pub struct ResetTrigger(VmStop);

impl vm_superio::Trigger for ResetTrigger {
    type E = std::convert::Infallible;

    fn trigger(&self) -> Result<(), Self::E> {
        log::info!("guest requested a reset through the i8042 controller");
        self.0.request(StopReason::GuestReset);
        Ok(())
    }
}

pub struct I8042 {
    device: I8042Device<ResetTrigger>,
}

impl I8042 {
    pub fn new(stop: VmStop) -> Self {
        I8042 {
            device: I8042Device::new(ResetTrigger(stop)),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.device.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data) {
            // The trigger is infallible.
            let _ = self.device.write(offset, *byte);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reset_command_stops_the_vm() {
        let stop = VmStop::new().unwrap();
        let mut dev = I8042::new(stop.clone());
        dev.write(0, &[0xfe]);
        assert!(!stop.is_requested(), "0xfe on the data port is not a reset");
        dev.write(4, &[0xfe]);
        assert_eq!(stop.reason(), Some(StopReason::GuestReset));
    }
}
