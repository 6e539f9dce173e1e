//! Legacy port-I/O devices: what a microVM guest finds at fixed ports.

mod boot_timer;
mod cmos;
mod exit_device;
mod i8042;
mod serial;

pub use boot_timer::{
    BootTimer, BootTimerReading, GuestReady, BOOT_TIMER_MAGIC, BOOT_TIMER_PORT, GUEST_READY_MAGIC,
};
pub use cmos::{Cmos, DateTime, CMOS_IRQ, CMOS_PORT, CMOS_PORT_LEN};
pub use exit_device::{ExitDevice, EXIT_DEVICE_PORT};
pub use i8042::{I8042Error, I8042, I8042_KBD_IRQ, I8042_PORT, I8042_PORT_LEN};
pub use serial::{SerialDevice, COM1_IRQ, COM1_PORT, COM1_PORT_LEN};
