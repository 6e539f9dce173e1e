//! virtio-mmio transport (virtio 1.2, section 4.2, "version 2" registers).
//!
//! Everything here is driven by guest register writes, so every index and
//! value is checked: a bad queue selector or width is ignored, a failed
//! activation sets DEVICE_NEEDS_RESET instead of panicking.

use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::interrupt::{VirtioInterrupt, INT_CONFIG_CHANGE};
use super::{
    Activation, VirtioDevice, STATUS_DEVICE_NEEDS_RESET, STATUS_DRIVER_OK, STATUS_FAILED,
    STATUS_FEATURES_OK, VIRTIO_F_VERSION_1,
};
use crate::bus::BusDevice;

/// Each device gets one page of MMIO space.
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// Drivers write a queue index here; herd registers it as an ioeventfd so
/// notifications never leave the kernel.
pub const QUEUE_NOTIFY_OFFSET: u64 = 0x50;

const MAGIC_VALUE: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4452_4548; // "HERD"
const CONFIG_SPACE_OFFSET: u64 = 0x100;

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    /// Fixed for the device's life; kept here so that reading them never
    /// waits for the device lock (which a disk's I/O thread may hold
    /// while its backend hangs).
    device_type: u32,
    device_features: u64,
    mem: GuestMemoryMmap,
    interrupt: Arc<VirtioInterrupt>,
    queues: Vec<Queue>,
    queue_select: u32,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    status: u32,
    config_generation: u32,
    activated: bool,
}

fn lock(device: &Mutex<dyn VirtioDevice>) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|p| p.into_inner())
}

fn new_queues(device: &Mutex<dyn VirtioDevice>) -> Vec<Queue> {
    lock(device)
        .queue_max_sizes()
        .iter()
        .filter_map(|&max| Queue::new(max).ok())
        .collect()
}

impl MmioTransport {
    pub fn new(
        device: Arc<Mutex<dyn VirtioDevice>>,
        mem: GuestMemoryMmap,
        interrupt: Arc<VirtioInterrupt>,
    ) -> Self {
        let queues = new_queues(&device);
        let (device_type, device_features) = {
            let dev = lock(&device);
            (dev.device_type(), dev.avail_features() | VIRTIO_F_VERSION_1)
        };
        MmioTransport {
            device,
            device_type,
            device_features,
            mem,
            interrupt,
            queues,
            queue_select: 0,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            status: 0,
            config_generation: 0,
            activated: false,
        }
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        let index = usize::try_from(self.queue_select).ok()?;
        self.queues.get_mut(index)
    }

    fn device_features(&self) -> u64 {
        self.device_features
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        match offset {
            0x00 => MAGIC_VALUE,
            0x04 => VERSION,
            0x08 => self.device_type,
            0x0c => VENDOR_ID,
            0x10 => match self.features_select {
                0 => (self.device_features() & 0xffff_ffff) as u32,
                1 => (self.device_features() >> 32) as u32,
                _ => 0,
            },
            0x34 => self.selected_queue().map_or(0, |q| u32::from(q.max_size())),
            0x44 => self.selected_queue().map_or(0, |q| u32::from(q.ready())),
            0x60 => self.interrupt.status(),
            0x70 if self.interrupt.needs_reset() => self.status | STATUS_DEVICE_NEEDS_RESET,
            0x70 => self.status,
            0xfc => self.config_generation,
            _ => {
                log::debug!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        // Queue layout may only change before the driver says it is ready.
        let queue_writable = self.status & STATUS_DRIVER_OK == 0;
        match offset {
            0x14 => self.features_select = value,
            // Features are fixed once FEATURES_OK is set (virtio 1.2, 3.1.1).
            0x20 if self.status & STATUS_FEATURES_OK != 0 => {
                log::debug!("virtio-mmio: feature ack {value:#x} after FEATURES_OK ignored");
            }
            0x20 => match self.acked_features_select {
                // Only what the device offers can be acknowledged.
                0 => {
                    let offered = self.device_features() & 0xffff_ffff;
                    self.acked_features =
                        (self.acked_features & !0xffff_ffff) | (u64::from(value) & offered);
                }
                1 => {
                    let offered = self.device_features() >> 32;
                    self.acked_features =
                        (self.acked_features & 0xffff_ffff) | ((u64::from(value) & offered) << 32);
                }
                _ => {}
            },
            0x24 => self.acked_features_select = value,
            0x30 => self.queue_select = value,
            0x38 if queue_writable => {
                if let Some(q) = self.selected_queue() {
                    q.set_size(u16::try_from(value).unwrap_or(0));
                }
            }
            0x44 if queue_writable => {
                if let Some(q) = self.selected_queue() {
                    q.set_ready(value == 1);
                }
            }
            0x64 => self.interrupt.acknowledge(value),
            0x70 => self.write_status(value),
            0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 if queue_writable => {
                let (low, high) = if offset & 0x4 == 0 {
                    (Some(value), None)
                } else {
                    (None, Some(value))
                };
                if let Some(q) = self.selected_queue() {
                    match offset & !0x4 {
                        0x80 => q.set_desc_table_address(low, high),
                        0x90 => q.set_avail_ring_address(low, high),
                        _ => q.set_used_ring_address(low, high),
                    }
                }
            }
            _ => log::debug!("virtio-mmio: ignored write {value:#x} to register {offset:#x}"),
        }
    }

    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        let mut value = value;
        if value & STATUS_FEATURES_OK != 0
            && self.status & STATUS_FEATURES_OK == 0
            && !self.features_acceptable()
        {
            // Read back without FEATURES_OK: the driver must give up.
            log::warn!(
                "virtio-mmio: driver set FEATURES_OK with features {:#x}, which lack VIRTIO_F_VERSION_1; refused",
                self.acked_features
            );
            value &= !STATUS_FEATURES_OK;
        }
        let newly_ok = value & STATUS_DRIVER_OK != 0 && self.status & STATUS_DRIVER_OK == 0;
        // DEVICE_NEEDS_RESET is the device's bit: only a reset clears it.
        self.status = value | (self.status & STATUS_DEVICE_NEEDS_RESET);
        if newly_ok && !self.activated && self.status & STATUS_DEVICE_NEEDS_RESET == 0 {
            self.activate();
        }
    }

    /// herd's devices are modern only: a driver must accept VERSION_1
    /// (what it acked is already limited to what was offered).
    fn features_acceptable(&self) -> bool {
        self.acked_features & VIRTIO_F_VERSION_1 != 0
    }

    fn activate(&mut self) {
        if self.status & STATUS_FEATURES_OK == 0 {
            log::warn!("virtio-mmio: driver set DRIVER_OK without FEATURES_OK");
            self.fail();
            return;
        }
        let mem = self.mem.clone();
        if let Some(i) = self.queues.iter().position(|q| !q.is_valid(&mem)) {
            log::warn!("virtio-mmio: queue {i} is not valid at activation");
            self.fail();
            return;
        }
        let activation = Activation {
            mem,
            interrupt: self.interrupt.clone(),
            // The device owns the queues while active; reset rebuilds them.
            queues: std::mem::take(&mut self.queues),
            acked_features: self.acked_features,
        };
        let result = lock(&self.device).activate(activation);
        match result {
            Ok(()) => self.activated = true,
            Err(e) => {
                log::error!("virtio-mmio: device activation failed: {e}");
                self.fail();
            }
        }
    }

    /// Tells the driver the device is unusable until reset.
    fn fail(&mut self) {
        self.status |= STATUS_DEVICE_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        self.interrupt.trigger(INT_CONFIG_CHANGE);
    }

    fn reset(&mut self) {
        if self.activated {
            lock(&self.device).reset();
        }
        self.activated = false;
        self.status = 0;
        self.acked_features = 0;
        self.queue_select = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.interrupt.acknowledge(u32::MAX);
        self.interrupt.clear_needs_reset();
        self.queues = new_queues(&self.device);
    }

    /// True once the device failed and waits for a reset.
    pub fn needs_reset(&self) -> bool {
        self.status & (STATUS_DEVICE_NEEDS_RESET | STATUS_FAILED) != 0
            || self.interrupt.needs_reset()
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <&mut [u8; 4]>::try_from(&mut *data) {
            Ok(word) if offset % 4 == 0 => *word = self.read_register(offset).to_le_bytes(),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(word) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(word)),
            _ => log::debug!(
                "virtio-mmio: ignored {}-byte write at {offset:#x}",
                data.len()
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::{ActivateError, STATUS_ACKNOWLEDGE, STATUS_DRIVER};
    use vm_memory::GuestAddress;
    use vmm_sys_util::eventfd::EventFd;

    #[derive(Default)]
    struct Dummy {
        activations: usize,
        resets: usize,
        acked: u64,
    }

    impl VirtioDevice for Dummy {
        fn device_type(&self) -> u32 {
            2
        }
        fn queue_max_sizes(&self) -> &[u16] {
            &[16]
        }
        fn avail_features(&self) -> u64 {
            1 << 5
        }
        fn queue_events(&self) -> &[EventFd] {
            &[]
        }
        fn read_config(&self, offset: u64, data: &mut [u8]) {
            crate::virtio::read_config_bytes(&[0xaa, 0xbb], offset, data);
        }
        fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
            self.activations += 1;
            self.acked = a.acked_features;
            Ok(())
        }
        fn reset(&mut self) {
            self.resets += 1;
        }
    }

    fn setup() -> (MmioTransport, Arc<Mutex<Dummy>>) {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        let dev = Arc::new(Mutex::new(Dummy::default()));
        let irq = Arc::new(VirtioInterrupt::new(EventFd::new(0).unwrap()));
        (MmioTransport::new(dev.clone(), mem, irq), dev)
    }

    fn r(t: &mut MmioTransport, off: u64) -> u32 {
        let mut d = [0u8; 4];
        t.read(off, &mut d);
        u32::from_le_bytes(d)
    }

    fn w(t: &mut MmioTransport, off: u64, v: u32) {
        t.write(off, &v.to_le_bytes());
    }

    fn set_up_queue(t: &mut MmioTransport) {
        w(t, 0x30, 0);
        w(t, 0x38, 16);
        w(t, 0x80, 0x1000);
        w(t, 0x90, 0x2000);
        w(t, 0xa0, 0x3000);
        w(t, 0x44, 1);
    }

    #[test]
    fn identity_and_features() {
        let (mut t, _) = setup();
        assert_eq!(r(&mut t, 0), MAGIC_VALUE);
        assert_eq!(r(&mut t, 4), 2);
        assert_eq!(r(&mut t, 8), 2);
        assert_eq!(r(&mut t, 0x10), 1 << 5);
        w(&mut t, 0x14, 1);
        assert_eq!(r(&mut t, 0x10), 1);
        assert_eq!(r(&mut t, 0x34), 16);
        let mut cfg = [0u8; 2];
        t.read(0x100, &mut cfg);
        assert_eq!(cfg, [0xaa, 0xbb]);
    }

    #[test]
    fn handshake_activates_with_only_offered_features() {
        let (mut t, dev) = setup();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        w(&mut t, 0x24, 0);
        w(&mut t, 0x20, u32::MAX);
        w(&mut t, 0x24, 1);
        w(&mut t, 0x20, 1);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK,
        );
        set_up_queue(&mut t);
        w(
            &mut t,
            0x70,
            STATUS_ACKNOWLEDGE | STATUS_DRIVER | STATUS_FEATURES_OK | STATUS_DRIVER_OK,
        );
        assert_eq!(dev.lock().unwrap().activations, 1);
        assert_eq!(dev.lock().unwrap().acked, (1 << 5) | VIRTIO_F_VERSION_1);
        assert!(!t.needs_reset());
        w(&mut t, 0x70, 0);
        assert_eq!(dev.lock().unwrap().resets, 1);
        assert_eq!(r(&mut t, 0x70), 0);
    }

    #[test]
    fn invalid_queue_or_missing_features_ok_marks_device_broken() {
        let (mut t, dev) = setup();
        w(&mut t, 0x70, STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert!(t.needs_reset(), "queue never set up");
        assert_eq!(dev.lock().unwrap().activations, 0);
        let (mut t, _) = setup();
        set_up_queue(&mut t);
        w(&mut t, 0x70, STATUS_DRIVER_OK);
        assert!(t.needs_reset(), "no FEATURES_OK");
        assert_ne!(r(&mut t, 0x60) & INT_CONFIG_CHANGE, 0);
    }

    #[test]
    fn a_device_that_gives_up_is_reported_until_reset() {
        let (mut t, _) = setup();
        t.interrupt.signal_needs_reset();
        assert_ne!(r(&mut t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert_ne!(r(&mut t, 0x60) & INT_CONFIG_CHANGE, 0);
        assert!(t.needs_reset());
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
        assert!(!t.needs_reset());
    }

    fn ack_features(t: &mut MmioTransport, low: u32, high: u32) {
        w(t, 0x24, 0);
        w(t, 0x20, low);
        w(t, 0x24, 1);
        w(t, 0x20, high);
    }

    #[test]
    fn features_ok_is_refused_without_version_1() {
        let (mut t, dev) = setup();
        w(&mut t, 0x70, STATUS_ACKNOWLEDGE | STATUS_DRIVER);
        ack_features(&mut t, 1 << 5, 0);
        let driver = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        w(&mut t, 0x70, driver | STATUS_FEATURES_OK);
        assert_eq!(
            r(&mut t, 0x70) & STATUS_FEATURES_OK,
            0,
            "legacy driver accepted"
        );
        // A driver that carries on anyway does not get an active device.
        set_up_queue(&mut t);
        w(&mut t, 0x70, driver | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(dev.lock().unwrap().activations, 0);
        assert!(t.needs_reset());
    }

    #[test]
    fn features_cannot_change_after_features_ok() {
        let (mut t, dev) = setup();
        let driver = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        w(&mut t, 0x70, driver);
        ack_features(&mut t, 0, 1);
        w(&mut t, 0x70, driver | STATUS_FEATURES_OK);
        assert_ne!(r(&mut t, 0x70) & STATUS_FEATURES_OK, 0);
        ack_features(&mut t, 1 << 5, 0);
        set_up_queue(&mut t);
        w(&mut t, 0x70, driver | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_eq!(dev.lock().unwrap().activations, 1);
        assert_eq!(dev.lock().unwrap().acked, VIRTIO_F_VERSION_1);
    }

    #[test]
    fn device_needs_reset_survives_status_writes_until_reset() {
        let (mut t, dev) = setup();
        let driver = STATUS_ACKNOWLEDGE | STATUS_DRIVER;
        // DRIVER_OK without a valid queue: the device fails...
        w(&mut t, 0x70, driver);
        ack_features(&mut t, 0, 1);
        w(&mut t, 0x70, driver | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_ne!(r(&mut t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
        // ...and a later status write must not clear it or activate it.
        set_up_queue(&mut t);
        w(&mut t, 0x70, driver | STATUS_FEATURES_OK);
        w(&mut t, 0x70, driver | STATUS_FEATURES_OK | STATUS_DRIVER_OK);
        assert_ne!(r(&mut t, 0x70) & STATUS_DEVICE_NEEDS_RESET, 0);
        assert!(t.needs_reset());
        assert_eq!(dev.lock().unwrap().activations, 0);
        w(&mut t, 0x70, 0);
        assert_eq!(r(&mut t, 0x70), 0);
    }

    #[test]
    fn hostile_register_accesses_are_ignored() {
        let (mut t, _) = setup();
        w(&mut t, 0x30, u32::MAX);
        w(&mut t, 0x38, 1 << 20);
        assert_eq!(r(&mut t, 0x34), 0);
        let mut odd = [0u8; 3];
        t.read(0x01, &mut odd);
        assert_eq!(odd, [0; 3]);
        t.write(0x70, &[1, 2]);
        assert_eq!(r(&mut t, 0x70), 0);
        t.read(u64::MAX, &mut [0u8; 4]);
        t.write(u64::MAX - 1, &[1; 4]);
    }
}
