//! virtio devices over the MMIO transport. Each device splits into queue
//! handling (parsing guest descriptors, here) and a backend (file, TAP) that
//! never sees a descriptor.

pub mod block;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod queue_loop;
pub mod rng;
pub mod vsock;

use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use interrupt::VirtioInterrupt;
pub use mmio::{MmioTransport, MMIO_DEVICE_SIZE, QUEUE_NOTIFY_OFFSET};

/// Adds `n` to a device counter (net, block); counters are statistics
/// read by the control API, so relaxed is enough, and they wrap.
pub(crate) fn count(counter: &AtomicU64, n: impl TryInto<u64>) {
    // Only a negative amount fails to convert: it counts nothing (adding
    // u64::MAX would take one off).
    counter.fetch_add(n.try_into().unwrap_or(0), Ordering::Relaxed);
}

pub const TYPE_NET: u32 = 1;
pub const TYPE_BLOCK: u32 = 2;

/// Feature bits common to all devices.
pub const VIRTIO_F_VERSION_1: u64 = 1 << 32;
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << 29;

/// Device status bits (virtio 1.2, 2.1).
pub const STATUS_ACKNOWLEDGE: u32 = 1;
pub const STATUS_DRIVER: u32 = 2;
pub const STATUS_DRIVER_OK: u32 = 4;
pub const STATUS_FEATURES_OK: u32 = 8;
pub const STATUS_DEVICE_NEEDS_RESET: u32 = 0x40;
pub const STATUS_FAILED: u32 = 0x80;

/// What a device gets when the driver sets DRIVER_OK.
pub struct Activation {
    pub mem: GuestMemoryMmap,
    pub interrupt: std::sync::Arc<VirtioInterrupt>,
    pub queues: Vec<Queue>,
    pub acked_features: u64,
}

impl Activation {
    /// Takes the driver's queues, which must be exactly the `N` that
    /// `device` has.
    pub fn take_queues<const N: usize>(
        &mut self,
        device: &str,
    ) -> Result<[Queue; N], ActivateError> {
        let count = self.queues.len();
        <[Queue; N]>::try_from(std::mem::take(&mut self.queues)).map_err(|_| {
            ActivateError::Backend(format!(
                "{device} has {N} queue(s), the driver set up {count}"
            ))
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    #[error("queue {0} is not ready or its rings lie outside guest memory")]
    InvalidQueue(usize),
    #[error("the device cannot start: {0}")]
    Backend(String),
}

/// A virtio device as the transport sees it.
pub trait VirtioDevice: Send {
    fn device_type(&self) -> u32;
    /// One entry per queue: its maximum size.
    fn queue_max_sizes(&self) -> &[u16];
    fn avail_features(&self) -> u64;
    /// One eventfd per queue, signalled when the driver notifies that
    /// queue. The VMM registers them as KVM ioeventfds on QueueNotify; the
    /// device watches them from the event loop (it is also a
    /// `MutEventSubscriber`), ignoring them until activated.
    fn queue_events(&self) -> &[vmm_sys_util::eventfd::EventFd];
    /// Device-specific config space; reads past its end see zeroes.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}
    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError>;
    /// The driver reset the device: drop queues and go back to the
    /// pre-activation state.
    fn reset(&mut self);
}

/// Copies the part of `config` at `offset` into `data`, zero-filling what
/// lies past the end. Offsets come from the guest.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(src) = config.get(start..) {
        let n = src.len().min(data.len());
        data[..n].copy_from_slice(&src[..n]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_queue::QueueT;

    #[test]
    fn config_reads_are_bounded() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [9u8; 4];
        read_config_bytes(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0, 0]);
        read_config_bytes(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0; 4]);
    }

    #[test]
    fn activation_needs_exactly_the_device_queues() {
        let mem = GuestMemoryMmap::from_ranges(&[(vm_memory::GuestAddress(0), 0x1000)]).unwrap();
        let irq = vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap();
        let mut activation = Activation {
            mem,
            interrupt: std::sync::Arc::new(VirtioInterrupt::new(irq)),
            queues: vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()],
            acked_features: VIRTIO_F_VERSION_1,
        };
        let err = activation.take_queues::<3>("virtio-vsock").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the device cannot start: virtio-vsock has 3 queue(s), the driver set up 2"
        );
        activation.queues = vec![Queue::new(16).unwrap(), Queue::new(16).unwrap()];
        let [rx, tx] = activation.take_queues("virtio-net").unwrap();
        assert_eq!((rx.max_size(), tx.max_size()), (16, 16));
        assert!(activation.queues.is_empty());
    }
}
