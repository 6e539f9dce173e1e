//! Devices of a VM: legacy port-I/O devices and virtio devices on MMIO.

pub mod console;
pub mod console_out;
pub mod legacy;
pub mod mmio;
pub mod serial_input;
pub mod virtio_devices;

pub use legacy::{create_legacy_devices, DeviceError, LegacyDevices, StopListener};
pub use mmio::{mmio_slot, MmioDeviceManager, MmioError, MmioSlot};
pub use serial_input::SerialInput;
