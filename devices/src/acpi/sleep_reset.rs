//! The ACPI hardware-reduced sleep and reset registers: how an ACPI guest
//! powers the VM off (`poweroff` → S5) and resets it (`reboot`).
//!
//! The FADT points its SLEEP_CONTROL_REG and SLEEP_STATUS_REG at offset 0
//! and its RESET_REG at offset 1 of this device's ports. Anything else the
//! guest writes is logged and ignored: a confused or hostile guest can stop
//! only its own VM, and only through the two values below.

use crate::bus::BusDevice;
use crate::stop::{StopReason, VmStop};

/// First of the two I/O ports (sleep control/status, reset).
pub const ACPI_SLEEP_RESET_PORT: u64 = 0x600;
pub const ACPI_SLEEP_RESET_PORT_LEN: u64 = 2;
pub const SLEEP_REGISTER_OFFSET: u64 = 0;
pub const RESET_REGISTER_OFFSET: u64 = 1;
/// The value the FADT's RESET_VALUE tells the guest to write.
pub const RESET_VALUE: u8 = 0x01;
/// SLP_TYP of S5 (soft off), as the DSDT's `_S5_` package announces it.
pub const S5_SLEEP_TYPE: u8 = 5;
/// Sleep control register layout (ACPI 6.5, 4.8.3.7): SLP_TYP in bits 2-4,
/// SLP_EN in bit 5.
const SLP_TYP_SHIFT: u8 = 2;
const SLP_TYP_MASK: u8 = 0b111 << SLP_TYP_SHIFT;
const SLP_EN: u8 = 1 << 5;

pub struct AcpiSleepReset {
    stop: VmStop,
}

impl AcpiSleepReset {
    pub fn new(stop: VmStop) -> Self {
        AcpiSleepReset { stop }
    }

    fn write_sleep(&mut self, value: u8) {
        if value & SLP_EN == 0 {
            // Linux clears WAK_STS (bit 7) before sleeping; nothing to do.
            return;
        }
        // Exactly what ACPICA writes for S5; reserved bits set is garbage.
        if value == (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN {
            log::info!("guest powered off through ACPI (S5)");
            self.stop.request(StopReason::GuestPowerOff);
        } else {
            log::debug!(
                "ACPI: sleep register write {value:#x} (sleep type {}) is not S5; ignored",
                (value & SLP_TYP_MASK) >> SLP_TYP_SHIFT
            );
        }
    }
}

impl BusDevice for AcpiSleepReset {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // WAK_STS never sets: herd has no sleep state to wake from.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else {
            log::debug!(
                "ACPI: {}-byte write to sleep/reset register ignored",
                data.len()
            );
            return;
        };
        match offset {
            SLEEP_REGISTER_OFFSET => self.write_sleep(*value),
            RESET_REGISTER_OFFSET if *value == RESET_VALUE => {
                log::info!("guest reset the VM through the ACPI reset register");
                self.stop.request(StopReason::GuestReset);
            }
            _ => log::debug!("ACPI: write {value:#x} at offset {offset} ignored"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s5() -> u8 {
        (S5_SLEEP_TYPE << SLP_TYP_SHIFT) | SLP_EN
    }

    #[test]
    fn s5_powers_off_and_reset_value_resets() {
        let stop = VmStop::new().unwrap();
        let mut dev = AcpiSleepReset::new(stop.clone());
        // What Linux writes first: clear WAK_STS in the status register.
        dev.write(SLEEP_REGISTER_OFFSET, &[0x80]);
        assert!(!stop.is_requested());
        dev.write(SLEEP_REGISTER_OFFSET, &[s5()]);
        assert_eq!(stop.reason(), Some(StopReason::GuestPowerOff));

        let stop = VmStop::new().unwrap();
        let mut dev = AcpiSleepReset::new(stop.clone());
        dev.write(RESET_REGISTER_OFFSET, &[RESET_VALUE]);
        assert_eq!(stop.reason(), Some(StopReason::GuestReset));
    }

    #[test]
    fn garbage_is_ignored() {
        let stop = VmStop::new().unwrap();
        let mut dev = AcpiSleepReset::new(stop.clone());
        for value in 0..=u8::MAX {
            if value != s5() {
                dev.write(SLEEP_REGISTER_OFFSET, &[value]);
            }
            if value != RESET_VALUE {
                dev.write(RESET_REGISTER_OFFSET, &[value]);
            }
        }
        // Wide accesses, even carrying the right byte, and stray offsets.
        dev.write(SLEEP_REGISTER_OFFSET, &[s5(), 0]);
        dev.write(SLEEP_REGISTER_OFFSET, &[s5(), 0, 0, 0]);
        dev.write(RESET_REGISTER_OFFSET, &[RESET_VALUE, 0]);
        dev.write(7, &[RESET_VALUE]);
        assert!(!stop.is_requested(), "{:?}", stop.reason());
        let mut wide = [0xffu8; 4];
        dev.read(0, &mut wide);
        assert_eq!(wide, [0; 4]);
    }
}
