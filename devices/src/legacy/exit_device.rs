//! Exit device: the guest writes one byte to a port and herd exits with that
//! byte as its status. Load-test clients report pass or fail this way, and
//! herd's base-image init uses it for `poweroff`, which also works in guests
//! booted with `acpi=off` (ACPI guests can power off through S5 instead).

use crate::bus::BusDevice;
use crate::stop::{StopReason, VmStop};

/// The port. Same number as QEMU's isa-debug-exit, but the status is the
/// byte itself, not `(byte << 1) | 1`.
pub const EXIT_DEVICE_PORT: u64 = 0x501;

pub struct ExitDevice {
    stop: VmStop,
}

impl ExitDevice {
    pub fn new(stop: VmStop) -> Self {
        ExitDevice { stop }
    }
}

impl BusDevice for ExitDevice {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, _offset: u64, data: &[u8]) {
        // Wider writes (outw/outl) use their low byte, as on real hardware.
        if let Some(&code) = data.first() {
            log::info!("guest wrote {code} to the exit device");
            self.stop.request(StopReason::GuestExitCode(code));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_becomes_exit_code() {
        let stop = VmStop::new().unwrap();
        ExitDevice::new(stop.clone()).write(0, &[42, 0, 0, 0]);
        assert_eq!(stop.reason(), Some(StopReason::GuestExitCode(42)));
    }
}
