//! ACPI hardware herd emulates for guests that boot with ACPI: the
//! hardware-reduced sleep/reset registers and the power button. The tables
//! that describe them to the guest are built in vmm (arch::x86_64::acpi).

mod power_button;
mod sleep_reset;

pub use power_button::{PowerButton, POWER_BUTTON_GSI};
pub use sleep_reset::{
    AcpiSleepReset, ACPI_SLEEP_RESET_PORT, ACPI_SLEEP_RESET_PORT_LEN, RESET_REGISTER_OFFSET,
    RESET_VALUE, S5_SLEEP_TYPE, SLEEP_REGISTER_OFFSET,
};
