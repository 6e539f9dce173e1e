//! virtio-net over a host TAP device.
//!
//! Split like the block device: `frame.rs` turns descriptor chains into
//! frames and back (pure, unit- and property-tested), `tap.rs` is the
//! backend that only ever sees byte buffers, `device.rs` is what the
//! transport talks to and `event_handler.rs` moves frames between the two
//! on the event-manager thread.
//!
//! Both directions copy through one host buffer per direction: every frame
//! carries a 12-byte `virtio_net_hdr_v1` in front (the TAP is opened with
//! `IFF_VNET_HDR` and the same header size), so the header is passed through
//! unchanged apart from `num_buffers`.

mod device;
mod event_handler;
mod frame;
mod tap;

#[cfg(test)]
mod tests;

use std::sync::atomic::{AtomicU64, Ordering};

pub use device::{mac_from_name, Net, NetConfig, NetError, QUEUE_SIZE, RX_QUEUE, TX_QUEUE};
pub use tap::{Tap, TapError};

/// `struct virtio_net_hdr_v1`, including `num_buffers`: VIRTIO_F_VERSION_1
/// is required, so the header always has this size.
pub const VNET_HDR_LEN: usize = 12;
/// Largest Ethernet frame (without the virtio header) either direction
/// accepts: a 64 KiB TSO/GSO packet plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = 65_550;
/// Smallest frame the TAP accepts: an Ethernet header.
pub const MIN_FRAME_LEN: usize = 14;

/// Per-device counters, updated by the event loop and readable by the VMM
/// at any time without taking the device lock.
#[derive(Debug, Default)]
pub struct NetMetrics {
    pub rx_frames: AtomicU64,
    pub rx_bytes: AtomicU64,
    /// Frames read from the TAP that never reached the guest.
    pub rx_dropped: AtomicU64,
    pub tx_frames: AtomicU64,
    pub tx_bytes: AtomicU64,
    /// Guest frames that were malformed, oversized, or refused by the TAP.
    pub tx_dropped: AtomicU64,
}

/// A copy of [`NetMetrics`] at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NetCounters {
    pub rx_frames: u64,
    pub rx_bytes: u64,
    pub rx_dropped: u64,
    pub tx_frames: u64,
    pub tx_bytes: u64,
    pub tx_dropped: u64,
}

impl NetMetrics {
    pub fn snapshot(&self) -> NetCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetCounters {
            rx_frames: get(&self.rx_frames),
            rx_bytes: get(&self.rx_bytes),
            rx_dropped: get(&self.rx_dropped),
            tx_frames: get(&self.tx_frames),
            tx_bytes: get(&self.tx_bytes),
            tx_dropped: get(&self.tx_dropped),
        }
    }
}
