//! The virtio-net device as the transport sees it: features, config space,
//! activation and reset. Moving frames is in `event_handler.rs`.

use std::sync::Arc;

use virtio_bindings::virtio_net::{
    VIRTIO_NET_F_CSUM, VIRTIO_NET_F_GUEST_CSUM, VIRTIO_NET_F_GUEST_TSO4, VIRTIO_NET_F_GUEST_TSO6,
    VIRTIO_NET_F_GUEST_UFO, VIRTIO_NET_F_HOST_TSO4, VIRTIO_NET_F_HOST_TSO6, VIRTIO_NET_F_HOST_UFO,
    VIRTIO_NET_F_MAC, VIRTIO_NET_F_MRG_RXBUF, VIRTIO_NET_F_STATUS, VIRTIO_NET_S_LINK_UP,
};
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::frame::{RxScratch, FRAME_BUF_LEN};
use super::tap::{Tap, TapError, TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_UFO};
use super::NetMetrics;
use crate::virtio::{
    count, read_config_bytes, ActivateError, Activation, VirtioDevice, VirtioInterrupt, TYPE_NET,
    VIRTIO_RING_F_EVENT_IDX,
};

pub const RX_QUEUE: usize = 0;
pub const TX_QUEUE: usize = 1;
/// Maximum size of each queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE; 2];

const fn bit(feature: u32) -> u64 {
    1 << feature
}

/// Everything herd offers; VIRTIO_F_VERSION_1 comes from the transport.
/// Guest offloads are passed to the TAP with TUNSETOFFLOAD at activation;
/// host offloads need nothing, the TAP accepts partial checksums and GSO
/// packets (and checks their headers) as they come.
const AVAIL_FEATURES: u64 = bit(VIRTIO_NET_F_CSUM)
    | bit(VIRTIO_NET_F_GUEST_CSUM)
    | bit(VIRTIO_NET_F_MAC)
    | bit(VIRTIO_NET_F_GUEST_TSO4)
    | bit(VIRTIO_NET_F_GUEST_TSO6)
    | bit(VIRTIO_NET_F_GUEST_UFO)
    | bit(VIRTIO_NET_F_HOST_TSO4)
    | bit(VIRTIO_NET_F_HOST_TSO6)
    | bit(VIRTIO_NET_F_HOST_UFO)
    | bit(VIRTIO_NET_F_MRG_RXBUF)
    | bit(VIRTIO_NET_F_STATUS)
    | VIRTIO_RING_F_EVENT_IDX;

/// What the VMM knows about one network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetConfig {
    /// Host TAP interface to attach to.
    pub tap_name: String,
    /// Guest MAC address, see [`mac_from_name`].
    pub mac: [u8; 6],
}

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error(transparent)]
    Tap(#[from] TapError),
    #[error("cannot create an eventfd for the virtio-net device: {0}")]
    EventFd(std::io::Error),
}

/// A stable, locally administered, unicast MAC for an appliance name:
/// 02 followed by five bytes of the name's FNV-1a hash.
pub fn mac_from_name(name: &str) -> [u8; 6] {
    let hash = name.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    let h = hash.to_le_bytes();
    [0x02, h[0], h[1], h[2], h[3], h[4]]
}

/// TUN_F_* flags matching the guest offloads the driver accepted. The TAP
/// only takes TSO/UFO together with checksum offload.
pub(super) fn tap_offloads(acked: u64) -> u32 {
    if acked & bit(VIRTIO_NET_F_GUEST_CSUM) == 0 {
        return 0;
    }
    [
        (VIRTIO_NET_F_GUEST_TSO4, TUN_F_TSO4),
        (VIRTIO_NET_F_GUEST_TSO6, TUN_F_TSO6),
        (VIRTIO_NET_F_GUEST_UFO, TUN_F_UFO),
    ]
    .iter()
    .filter(|(feature, _)| acked & bit(*feature) != 0)
    .fold(TUN_F_CSUM, |flags, (_, tun)| flags | tun)
}

/// The queues and guest resources of an activated device.
pub(super) struct Active {
    pub mem: GuestMemoryMmap,
    pub interrupt: Arc<VirtioInterrupt>,
    pub rx: Queue,
    pub tx: Queue,
    /// VIRTIO_NET_F_MRG_RXBUF: frames may span several receive chains.
    pub mergeable: bool,
    /// VIRTIO_NET_F_GUEST_CSUM: the guest understands header checksum flags.
    pub guest_csum: bool,
}

/// A virtio-net device backed by a TAP interface.
pub struct Net {
    pub(super) tap: Tap,
    mac: [u8; 6],
    config_space: [u8; 8],
    pub(super) queue_evts: [EventFd; 2],
    /// Written by `activate` (a vCPU thread) so the event loop starts
    /// reading the TAP.
    pub(super) activate_evt: EventFd,
    pub(super) active: Option<Active>,
    pub(super) metrics: Arc<NetMetrics>,
    pub(super) rx_buf: Vec<u8>,
    /// Length of a frame in `rx_buf` that is waiting for receive buffers.
    pub(super) rx_pending: Option<usize>,
    pub(super) rx_scratch: RxScratch,
    pub(super) tx_buf: Vec<u8>,
    /// The TAP fd is in the event loop's interest list.
    pub(super) tap_listening: bool,
    /// RX stopped until the guest posts more receive buffers.
    pub(super) rx_waiting: bool,
    /// Reading the TAP failed for a reason other than "empty".
    pub(super) tap_failed: bool,
    /// A refused transmit frame was already logged.
    pub(super) tx_error_logged: bool,
    /// The guest broke a queue; nothing moves until the driver resets.
    pub(super) broken: bool,
}

impl Net {
    pub fn new(config: NetConfig) -> Result<Net, NetError> {
        let tap = Tap::open(&config.tap_name)?;
        let evt = || EventFd::new(EFD_NONBLOCK).map_err(NetError::EventFd);
        let mut config_space = [0u8; 8];
        config_space[..6].copy_from_slice(&config.mac);
        let status = u16::try_from(VIRTIO_NET_S_LINK_UP).unwrap_or(1);
        config_space[6..].copy_from_slice(&status.to_le_bytes());
        Ok(Net {
            tap,
            mac: config.mac,
            config_space,
            queue_evts: [evt()?, evt()?],
            activate_evt: evt()?,
            active: None,
            metrics: Arc::new(NetMetrics::default()),
            rx_buf: vec![0; FRAME_BUF_LEN],
            rx_pending: None,
            rx_scratch: RxScratch::default(),
            tx_buf: vec![0; FRAME_BUF_LEN],
            tap_listening: false,
            rx_waiting: false,
            tap_failed: false,
            tx_error_logged: false,
            broken: false,
        })
    }

    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    pub fn tap_name(&self) -> &str {
        self.tap.name()
    }

    /// Counters the VMM can read while the device runs.
    pub fn metrics(&self) -> Arc<NetMetrics> {
        self.metrics.clone()
    }

    /// True once the guest broke a queue (until the driver resets).
    pub fn is_broken(&self) -> bool {
        self.broken
    }

    /// Logs the first failure and stops moving frames until reset.
    pub(super) fn mark_broken(&mut self, why: impl std::fmt::Display) {
        if !self.broken {
            log::error!(
                "virtio-net ({}): {why}; the device stops until the guest resets it",
                self.tap.name()
            );
            if let Some(active) = &self.active {
                active.interrupt.signal_needs_reset();
            }
        }
        self.broken = true;
    }

    fn drop_pending_frame(&mut self) {
        if self.rx_pending.take().is_some() {
            count(&self.metrics.rx_dropped, 1);
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config_space, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only without VIRTIO_NET_F_CTRL_MAC_ADDR.
        log::debug!(
            "virtio-net: ignored {}-byte config write at {offset:#x}",
            data.len()
        );
    }

    fn activate(&mut self, mut activation: Activation) -> Result<(), ActivateError> {
        // VIRTIO_F_VERSION_1 is checked by the transport, which refuses
        // FEATURES_OK without it (mmio.rs), for every device.
        let acked = activation.acked_features;
        let [mut rx, mut tx] = activation.take_queues("virtio-net")?;
        let event_idx = acked & VIRTIO_RING_F_EVENT_IDX != 0;
        rx.set_event_idx(event_idx);
        tx.set_event_idx(event_idx);
        self.tap
            .set_offload(tap_offloads(acked))
            .map_err(|e| ActivateError::Backend(e.to_string()))?;
        self.drop_pending_frame();
        self.active = Some(Active {
            mem: activation.mem,
            interrupt: activation.interrupt,
            rx,
            tx,
            mergeable: acked & bit(VIRTIO_NET_F_MRG_RXBUF) != 0,
            guest_csum: acked & bit(VIRTIO_NET_F_GUEST_CSUM) != 0,
        });
        self.broken = false;
        self.rx_waiting = false;
        self.tap_failed = false;
        self.tx_error_logged = false;
        if let Err(e) = self.activate_evt.write(1) {
            self.active = None;
            return Err(ActivateError::Backend(format!(
                "cannot wake the event loop: {e}"
            )));
        }
        Ok(())
    }

    fn reset(&mut self) {
        self.active = None;
        self.drop_pending_frame();
        self.broken = false;
        self.rx_waiting = false;
        // Until the next activation, the TAP must not queue offloaded
        // packets the next driver may not accept.
        if let Err(e) = self.tap.set_offload(0) {
            log::warn!("virtio-net: {e}");
        }
        // The event loop notices the device is inactive and stops reading
        // the TAP the next time it becomes readable.
    }
}
