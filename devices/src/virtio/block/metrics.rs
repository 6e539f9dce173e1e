//! Request counters of one virtio-blk device, updated by the event loop and
//! read by the control API at any time without the device lock.

use std::sync::atomic::{AtomicU64, Ordering};

use super::request::RequestKind;
use super::VIRTIO_BLK_S_OK;
use crate::virtio::count;

#[derive(Debug, Default)]
pub struct BlockMetrics {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    read_bytes: AtomicU64,
    write_bytes: AtomicU64,
    /// Requests answered with IOERR or UNSUPP.
    errors: AtomicU64,
    /// Malformed chains that stopped the device until reset.
    malformed: AtomicU64,
}

/// A copy of [`BlockMetrics`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlockCounters {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub read_bytes: u64,
    pub write_bytes: u64,
    pub errors: u64,
    pub malformed: u64,
}

impl BlockMetrics {
    /// Counts one served request of `kind` carrying `data_len` bytes.
    pub(super) fn record(&self, kind: &RequestKind, data_len: u32, status: u8) {
        if status != VIRTIO_BLK_S_OK {
            count(&self.errors, 1);
            return;
        }
        match kind {
            RequestKind::In => {
                count(&self.reads, 1);
                count(&self.read_bytes, data_len);
            }
            RequestKind::Out => {
                count(&self.writes, 1);
                count(&self.write_bytes, data_len);
            }
            RequestKind::Flush => count(&self.flushes, 1),
            RequestKind::GetId | RequestKind::Unsupported(_) => {}
        }
    }

    pub(super) fn record_malformed(&self) {
        count(&self.malformed, 1);
    }

    pub fn snapshot(&self) -> BlockCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockCounters {
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            read_bytes: get(&self.read_bytes),
            write_bytes: get(&self.write_bytes),
            errors: get(&self.errors),
            malformed: get(&self.malformed),
        }
    }
}
