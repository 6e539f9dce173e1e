//! virtio devices on the MMIO bus: each gets a 4 KiB window in the 32-bit
//! hole, an IOAPIC pin, an irqfd, ioeventfds for its queue notifications,
//! and a `virtio_mmio.device=` entry on the kernel command line.

use std::sync::{Arc, Mutex};

use devices::virtio::QUEUE_NOTIFY_OFFSET;
use devices::virtio::{MmioTransport, VirtioDevice, VirtioInterrupt, MMIO_DEVICE_SIZE};
use devices::{Bus, BusError};
use event_manager::MutEventSubscriber;
use kvm_ioctls::{IoEventAddress, VmFd};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::layout::MMIO_DEVICES_START;

/// IOAPIC pins 5..=23 are free (0-4 are the PIT, keyboard, cascade, COM2,
/// COM1), which bounds the number of virtio devices.
const FIRST_IRQ: u32 = 5;
const LAST_IRQ: u32 = 23;
pub const MAX_MMIO_DEVICES: usize = (LAST_IRQ - FIRST_IRQ + 1) as usize;

#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    #[error("too many virtio devices: herd supports at most {MAX_MMIO_DEVICES} per VM")]
    TooManyDevices,
    #[error("cannot create the interrupt eventfd of a virtio device: {0}")]
    EventFd(std::io::Error),
    #[error("cannot connect virtio device {index} to guest IRQ {irq}: {source}")]
    Irq {
        index: usize,
        irq: u32,
        source: kvm_ioctls::Error,
    },
    #[error("cannot register queue {queue} notification of virtio device {index}: {source}")]
    IoEvent {
        index: usize,
        queue: usize,
        source: kvm_ioctls::Error,
    },
    #[error("cannot place virtio device {index} on the MMIO bus: {source}")]
    Bus { index: usize, source: BusError },
}

/// Where virtio device `index` lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MmioSlot {
    pub base: u64,
    pub irq: u32,
}

impl MmioSlot {
    /// The kernel parameter announcing the device (no ACPI, no device tree).
    pub fn cmdline_entry(&self) -> String {
        format!("virtio_mmio.device=4K@{:#x}:{}", self.base, self.irq)
    }
}

/// The slot of the `index`-th virtio device; the same index always gets the
/// same slot, so the command line can be written before devices attach.
pub fn mmio_slot(index: usize) -> Result<MmioSlot, MmioError> {
    if index >= MAX_MMIO_DEVICES {
        return Err(MmioError::TooManyDevices);
    }
    let i = u32::try_from(index).map_err(|_| MmioError::TooManyDevices)?;
    Ok(MmioSlot {
        base: MMIO_DEVICES_START + u64::from(i) * MMIO_DEVICE_SIZE,
        irq: FIRST_IRQ + i,
    })
}

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

#[derive(Default)]
pub struct MmioDeviceManager {
    pub bus: Bus,
    /// Devices to register with the event loop when the VM runs.
    pub subscribers: Vec<Subscriber>,
    /// Devices whose backends may block: each gets an I/O thread.
    pub io_subscribers: Vec<Subscriber>,
    attached: usize,
}

impl MmioDeviceManager {
    pub fn new() -> Self {
        Self::default()
    }

    /// Attaches `device` at the next slot.
    pub fn attach<D>(
        &mut self,
        vm: &VmFd,
        mem: &GuestMemoryMmap,
        device: Arc<Mutex<D>>,
    ) -> Result<MmioSlot, MmioError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let index = self.attached;
        let slot = mmio_slot(index)?;
        let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(MmioError::EventFd)?;
        vm.register_irqfd(&irq, slot.irq)
            .map_err(|source| MmioError::Irq {
                index,
                irq: slot.irq,
                source,
            })?;
        {
            let dev = device.lock().unwrap_or_else(|p| p.into_inner());
            let notify = IoEventAddress::Mmio(slot.base + QUEUE_NOTIFY_OFFSET);
            for (queue, evt) in dev.queue_events().iter().enumerate() {
                let datamatch = u32::try_from(queue).unwrap_or(u32::MAX);
                vm.register_ioevent(evt, &notify, datamatch)
                    .map_err(|source| MmioError::IoEvent {
                        index,
                        queue,
                        source,
                    })?;
            }
        }
        let interrupt = Arc::new(VirtioInterrupt::new(irq));
        let transport = MmioTransport::new(device.clone(), mem.clone(), interrupt);
        self.bus
            .insert(Arc::new(Mutex::new(transport)), slot.base, MMIO_DEVICE_SIZE)
            .map_err(|source| MmioError::Bus { index, source })?;
        self.subscribers.push(device);
        self.attached += 1;
        Ok(slot)
    }

    /// Serves the device attached last on an I/O thread of its own, not
    /// on the main event loop: its backend may block (a disk).
    pub fn serve_last_on_io_thread(&mut self) {
        if let Some(device) = self.subscribers.pop() {
            self.io_subscribers.push(device);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_dense_and_bounded() {
        assert_eq!(
            mmio_slot(0).unwrap(),
            MmioSlot {
                base: 0xd000_0000,
                irq: 5
            }
        );
        assert_eq!(mmio_slot(1).unwrap().base, 0xd000_1000);
        assert_eq!(mmio_slot(MAX_MMIO_DEVICES - 1).unwrap().irq, 23);
        assert!(mmio_slot(MAX_MMIO_DEVICES).is_err());
        assert_eq!(
            mmio_slot(2).unwrap().cmdline_entry(),
            "virtio_mmio.device=4K@0xd0002000:7"
        );
    }
}
