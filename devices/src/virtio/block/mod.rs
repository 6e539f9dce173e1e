//! virtio-blk (virtio 1.2, section 5.2), split the way Firecracker splits it:
//! `request` turns a guest descriptor chain into a typed [`Request`] and
//! never touches the disk, `io` is the file backend and never sees a
//! descriptor, `device` is the virtio face (features, config space,
//! activation) and `event_handler` drives the queue from the event loop.
//!
//! Malformed-chain policy: a chain that breaks the virtio-blk framing
//! (header, data direction, status descriptor, guest addresses, descriptor
//! count) is a driver bug or an attack, and there is no safe way to answer
//! it, so the device marks itself broken, logs once and ignores its queue
//! until the driver resets it. Requests that are well formed but cannot be
//! served (beyond the disk's end, a write to a read-only disk, an unknown
//! type, a host I/O error) get a status byte (IOERR or UNSUPP) and the
//! device keeps going.

mod device;
mod event_handler;
mod io;
mod metrics;
mod request;

#[cfg(test)]
pub(crate) mod test_utils;

pub use device::{Block, BlockConfig, BlockError};
pub use io::{DiskError, DiskFile};
pub use metrics::{BlockCounters, BlockMetrics};
pub use request::{Request, RequestError, RequestKind};

/// Sectors are always 512 bytes in virtio-blk, whatever the host's block size.
pub const SECTOR_SHIFT: u32 = 9;
pub const SECTOR_SIZE: u64 = 1 << SECTOR_SHIFT;

/// The single request queue's size. Linux sizes its rings from this.
pub const QUEUE_SIZE: u16 = 256;
/// Data segments per request we tell the driver it may use (`seg_max`):
/// a request plus its header and status descriptors fits in the ring,
/// as in QEMU. The parser rejects longer chains, which bounds its work.
pub const SEG_MAX: u32 = 254;
/// Header + data segments + status.
const MAX_DESCRIPTORS: usize = 256;

/// Length of the GET_ID answer: the serial, zero padded.
pub const VIRTIO_BLK_ID_BYTES: usize = 20;

/// Request types (virtio 1.2, 5.2.6).
pub const VIRTIO_BLK_T_IN: u32 = 0;
pub const VIRTIO_BLK_T_OUT: u32 = 1;
pub const VIRTIO_BLK_T_FLUSH: u32 = 4;
pub const VIRTIO_BLK_T_GET_ID: u32 = 8;

/// Status byte values.
pub const VIRTIO_BLK_S_OK: u8 = 0;
pub const VIRTIO_BLK_S_IOERR: u8 = 1;
pub const VIRTIO_BLK_S_UNSUPP: u8 = 2;

/// Feature bits (virtio 1.2, 5.2.3).
pub const VIRTIO_BLK_F_SEG_MAX: u64 = 1 << 2;
pub const VIRTIO_BLK_F_RO: u64 = 1 << 5;
pub const VIRTIO_BLK_F_FLUSH: u64 = 1 << 9;
