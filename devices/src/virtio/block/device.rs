//! The virtio face of the block device: features, config space, activation,
//! and serving one parsed request against the backend.

use std::path::PathBuf;
use std::sync::Arc;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::io::{DiskError, DiskFile};
use super::metrics::BlockMetrics;
use super::request::{Request, RequestKind};
use super::{
    QUEUE_SIZE, SEG_MAX, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP,
};
use crate::virtio::{
    read_config_bytes, ActivateError, Activation, VirtioDevice, VirtioInterrupt, TYPE_BLOCK,
    VIRTIO_RING_F_EVENT_IDX,
};

/// What the user asked for on the command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    pub path: PathBuf,
    pub read_only: bool,
    /// Returned to the guest by GET_ID (`/sys/block/vdX/serial`).
    pub serial: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    #[error(
        "disk serial {serial:?} is {len} bytes; virtio-blk allows at most {VIRTIO_BLK_ID_BYTES}"
    )]
    SerialTooLong { serial: String, len: usize },
    #[error(transparent)]
    Disk(#[from] DiskError),
    #[error("cannot create the queue eventfd of disk {}: {source}", path.display())]
    EventFd {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Queue state that exists only between activation and reset.
pub(super) struct ActiveState {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<VirtioInterrupt>,
    pub queue: Queue,
}

/// The disk plus what serving a request needs besides the queue, kept apart
/// from the queue so both can be borrowed at once.
pub(super) struct Backend {
    disk: DiskFile,
    id: [u8; VIRTIO_BLK_ID_BYTES],
    warned_read_only: bool,
    io_errors: u64,
    pub(super) metrics: Arc<BlockMetrics>,
}

pub struct Block {
    pub(super) backend: Backend,
    config_space: [u8; 16],
    avail_features: u64,
    pub(super) queue_evts: [EventFd; 1],
    pub(super) active: Option<ActiveState>,
    /// Set on a malformed chain; the queue is ignored until reset.
    pub(super) broken: bool,
}

impl Block {
    pub fn new(config: BlockConfig) -> Result<Block, BlockError> {
        let serial = config.serial.as_bytes();
        let mut id = [0u8; VIRTIO_BLK_ID_BYTES];
        id.get_mut(..serial.len())
            .ok_or_else(|| BlockError::SerialTooLong {
                serial: config.serial.clone(),
                len: serial.len(),
            })?
            .copy_from_slice(serial);
        let disk = DiskFile::open(&config.path, config.read_only)?;
        let queue_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(|source| BlockError::EventFd {
            path: config.path.clone(),
            source,
        })?;

        let mut avail_features =
            VIRTIO_BLK_F_FLUSH | VIRTIO_BLK_F_SEG_MAX | VIRTIO_RING_F_EVENT_IDX;
        if config.read_only {
            avail_features |= VIRTIO_BLK_F_RO;
        }
        // capacity (u64), size_max (u32, unused: no VIRTIO_BLK_F_SIZE_MAX),
        // seg_max (u32); all little-endian.
        let mut config_space = [0u8; 16];
        config_space[..8].copy_from_slice(&disk.capacity().to_le_bytes());
        config_space[12..].copy_from_slice(&SEG_MAX.to_le_bytes());

        Ok(Block {
            backend: Backend {
                disk,
                id,
                warned_read_only: false,
                io_errors: 0,
                metrics: Arc::default(),
            },
            config_space,
            avail_features,
            queue_evts: [queue_evt],
            active: None,
            broken: false,
        })
    }

    /// Request counters, readable without the device lock.
    pub fn metrics(&self) -> Arc<BlockMetrics> {
        self.backend.metrics.clone()
    }

    /// The image path, for log messages.
    pub fn path(&self) -> &std::path::Path {
        self.backend.disk.path()
    }

    pub fn capacity(&self) -> u64 {
        self.backend.disk.capacity()
    }

    pub fn is_activated(&self) -> bool {
        self.active.is_some()
    }

    /// True after a malformed request, until the driver resets the device.
    pub fn is_broken(&self) -> bool {
        self.broken
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn avail_features(&self) -> u64 {
        self.avail_features
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        let [mut queue] = activation.take_queues("virtio-blk")?;
        queue.set_event_idx(activation.acked_features & VIRTIO_RING_F_EVENT_IDX != 0);
        self.active = Some(ActiveState {
            mem: activation.mem,
            interrupt: activation.interrupt,
            queue,
        });
        self.broken = false;
        // Kicks that came before activation were drained and ignored; make
        // the event loop look at the queue once now.
        if let Err(e) = self.queue_evts[0].write(1) {
            log::warn!(
                "virtio-blk {}: cannot wake the queue: {e}",
                self.path().display()
            );
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.broken = false;
    }
}

impl Backend {
    /// Serves a well-formed request. Returns the status byte and how many
    /// bytes went into guest buffers (not counting the status byte).
    pub(super) fn execute(&mut self, mem: &GuestMemoryMmap, req: &Request) -> (u8, u32) {
        let (status, written) = self.serve(mem, req);
        self.metrics.record(&req.kind, req.data_len, status);
        (status, written)
    }

    fn serve(&mut self, mem: &GuestMemoryMmap, req: &Request) -> (u8, u32) {
        let offset = match req.disk_offset(self.disk.capacity()) {
            Ok(offset) => offset,
            Err(e) => {
                log::debug!("virtio-blk {}: {e}", self.disk.path().display());
                return (VIRTIO_BLK_S_IOERR, 0);
            }
        };
        match req.kind {
            RequestKind::In => match self.disk.read_to_guest(mem, offset, &req.data) {
                Ok(_) => (VIRTIO_BLK_S_OK, req.data_len),
                Err(e) => self.io_error(&e),
            },
            RequestKind::Out if self.disk.is_read_only() => {
                if !self.warned_read_only {
                    self.warned_read_only = true;
                    log::warn!(
                        "guest wrote to read-only disk {}; the write fails with an I/O error",
                        self.disk.path().display()
                    );
                }
                (VIRTIO_BLK_S_IOERR, 0)
            }
            RequestKind::Out => match self.disk.write_from_guest(mem, offset, &req.data) {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => self.io_error(&e),
            },
            RequestKind::Flush => match self.disk.flush() {
                Ok(()) => (VIRTIO_BLK_S_OK, 0),
                Err(e) => self.io_error(&e),
            },
            RequestKind::GetId => self.get_id(mem, req),
            RequestKind::Unsupported(t) => {
                log::debug!(
                    "virtio-blk {}: unsupported request type {t}",
                    self.disk.path().display()
                );
                (VIRTIO_BLK_S_UNSUPP, 0)
            }
        }
    }

    /// Writes as much of the zero-padded serial as the guest's buffers hold.
    fn get_id(&mut self, mem: &GuestMemoryMmap, req: &Request) -> (u8, u32) {
        let mut rest: &[u8] = &self.id;
        let mut written: u32 = 0;
        for &(addr, len) in &req.data {
            let n = usize::try_from(len).unwrap_or(usize::MAX).min(rest.len());
            let (chunk, tail) = rest.split_at(n);
            if let Err(e) = mem.write_slice(chunk, addr) {
                log::warn!("virtio-blk {}: GET_ID: {e}", self.disk.path().display());
                return (VIRTIO_BLK_S_IOERR, written);
            }
            // n <= 20.
            written = written.saturating_add(u32::try_from(n).unwrap_or(u32::MAX));
            rest = tail;
        }
        (VIRTIO_BLK_S_OK, written)
    }

    /// Host-side failures are logged, but only the first few and then at
    /// powers of two, since a failing disk fails every request.
    fn io_error(&mut self, e: &DiskError) -> (u8, u32) {
        self.io_errors = self.io_errors.saturating_add(1);
        if self.io_errors <= 10 || self.io_errors.is_power_of_two() {
            log::error!("virtio-blk: {e} (I/O error #{})", self.io_errors);
        }
        (VIRTIO_BLK_S_IOERR, 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::test_utils::TempDisk;

    fn config(disk: &TempDisk, read_only: bool, serial: &str) -> BlockConfig {
        BlockConfig {
            path: disk.path().to_owned(),
            read_only,
            serial: serial.to_owned(),
        }
    }

    #[test]
    fn identity_features_and_config_space() {
        let disk = TempDisk::new(&[0u8; 8 * 512 + 100]);
        let b = Block::new(config(&disk, false, "disk0")).unwrap();
        assert_eq!(b.device_type(), TYPE_BLOCK);
        assert_eq!(b.queue_max_sizes(), &[256]);
        assert_eq!(b.queue_events().len(), 1);
        let f = b.avail_features();
        assert_eq!(f & VIRTIO_BLK_F_RO, 0);
        assert_ne!(f & VIRTIO_BLK_F_FLUSH, 0);
        assert_ne!(f & VIRTIO_BLK_F_SEG_MAX, 0);
        let mut cap = [0u8; 8];
        b.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 8);
        let mut seg = [0u8; 4];
        b.read_config(12, &mut seg);
        assert_eq!(u32::from_le_bytes(seg), SEG_MAX);
        assert_eq!(SEG_MAX, u32::from(QUEUE_SIZE) - 2);
        let mut past = [0xffu8; 4];
        b.read_config(16, &mut past);
        assert_eq!(past, [0; 4]);
        drop(b);

        let b = Block::new(config(&disk, true, "")).unwrap();
        assert_ne!(b.avail_features() & VIRTIO_BLK_F_RO, 0);
    }

    #[test]
    fn rejects_long_serials_and_locked_disks() {
        let disk = TempDisk::new(&[0u8; 512]);
        let err = Block::new(config(&disk, false, "012345678901234567890")).err();
        assert!(matches!(
            err,
            Some(BlockError::SerialTooLong { len: 21, .. })
        ));
        assert!(Block::new(config(&disk, false, "01234567890123456789")).is_ok());
        let _held = Block::new(config(&disk, false, "a")).unwrap();
        let err = Block::new(config(&disk, false, "b")).err().unwrap();
        assert!(err.to_string().contains("already in use"), "{err}");
    }
}
