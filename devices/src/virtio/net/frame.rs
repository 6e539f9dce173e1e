//! Descriptor chains to frames and back. Pure queue handling: no TAP here,
//! frames go to and come from host byte buffers.
//!
//! Every value read from guest memory is hostile. A bad transmit chain costs
//! the guest that frame (dropped, counted, returned with length 0); a
//! receive ring that cannot be used at all (or a corrupt avail index) is an
//! error the caller treats as "device broken".

use std::io;
use std::num::Wrapping;

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::{NetMetrics, MAX_FRAME_LEN, MIN_FRAME_LEN, VNET_HDR_LEN};
use crate::virtio::count;

/// Size of the host buffers frames are copied through.
pub(super) const FRAME_BUF_LEN: usize = VNET_HDR_LEN + MAX_FRAME_LEN;
/// Offset of `num_buffers` in `virtio_net_hdr_v1`.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Why a transmit frame was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(super) enum TxDrop {
    #[error("it is longer than {FRAME_BUF_LEN} bytes")]
    TooLong,
    #[error("it is shorter than the virtio-net and Ethernet headers")]
    TooShort,
    #[error("one of its descriptors is device-writable")]
    WriteOnly,
    #[error("one of its descriptors lies outside guest memory")]
    BadAddress,
    #[error("its descriptors loop or run past the queue size")]
    BrokenLink,
    #[error("it uses an indirect descriptor table, which herd never offers")]
    Indirect,
}

/// A queue problem that makes the device unusable until the driver resets it.
#[derive(Debug, thiserror::Error)]
pub(super) enum NetQueueError {
    #[error("virtqueue error: {0}")]
    Queue(#[from] virtio_queue::Error),
    #[error("receive buffer {head} is unusable: {why}")]
    BadRxBuffer { head: u16, why: &'static str },
    #[error("cannot copy a received frame into guest memory: {0}")]
    Memory(vm_memory::GuestMemoryError),
}

/// Size of one descriptor table entry (virtio 1.2, 2.7.5).
const DESCRIPTOR_SIZE: u64 = std::mem::size_of::<Descriptor>() as u64;

/// Copies the frame the chain at `head` describes into `buf`: all
/// descriptors must be device-readable, direct (herd never offers
/// VIRTIO_RING_F_INDIRECT_DESC, so it never follows an indirect table),
/// inside guest memory, and add up to at most `buf.len()` bytes. The walk
/// is capped at `queue_size` descriptors, so a loop ends too. Returns the
/// frame length (header included).
pub(super) fn read_tx_frame(
    mem: &GuestMemoryMmap,
    desc_table: GuestAddress,
    queue_size: u16,
    head: u16,
    buf: &mut [u8],
) -> Result<usize, TxDrop> {
    let mut len = 0usize;
    let mut index = head;
    for _ in 0..queue_size {
        if index >= queue_size {
            return Err(TxDrop::BrokenLink);
        }
        let at = desc_table
            .checked_add(u64::from(index) * DESCRIPTOR_SIZE)
            .ok_or(TxDrop::BadAddress)?;
        let desc: Descriptor = mem.read_obj(at).map_err(|_| TxDrop::BadAddress)?;
        if desc.refers_to_indirect_table() {
            return Err(TxDrop::Indirect);
        }
        if desc.is_write_only() {
            return Err(TxDrop::WriteOnly);
        }
        let end = usize::try_from(desc.len())
            .ok()
            .and_then(|n| len.checked_add(n))
            .filter(|&end| end <= buf.len())
            .ok_or(TxDrop::TooLong)?;
        mem.read_slice(&mut buf[len..end], desc.addr())
            .map_err(|_| TxDrop::BadAddress)?;
        len = end;
        if !desc.has_next() {
            if len < VNET_HDR_LEN + MIN_FRAME_LEN {
                return Err(TxDrop::TooShort);
            }
            return Ok(len);
        }
        index = desc.next();
    }
    // Still linked after as many descriptors as the ring holds: a loop.
    Err(TxDrop::BrokenLink)
}

/// What one pass over the transmit queue did.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct TxPass {
    /// Chains returned to the guest.
    pub used: usize,
    /// The budget ran out with chains still pending; notifications from
    /// the guest stay off, so the caller must schedule another pass.
    pub more: bool,
}

/// Sends every pending transmit chain through `send`, at most `budget` of
/// them. Each chain is returned with length 0 whether or not its frame was
/// sent; drops are counted.
pub(super) fn process_tx_queue(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    buf: &mut [u8],
    budget: usize,
    metrics: &NetMetrics,
    mut send: impl FnMut(&[u8]) -> io::Result<usize>,
) -> Result<TxPass, NetQueueError> {
    let mut pass = TxPass::default();
    loop {
        queue.disable_notification(mem)?;
        loop {
            if pass.used >= budget {
                pass.more = true;
                return Ok(pass);
            }
            let next = queue.iter(mem)?.next();
            let Some(chain) = next else { break };
            let head = chain.head_index();
            let table = GuestAddress(queue.desc_table());
            match read_tx_frame(mem, table, queue.size(), head, buf) {
                Ok(len) => match send(&buf[..len]) {
                    Ok(_) => {
                        count(&metrics.tx_frames, 1);
                        count(&metrics.tx_bytes, len - VNET_HDR_LEN);
                    }
                    Err(e) => {
                        count(&metrics.tx_dropped, 1);
                        log::debug!("virtio-net: the TAP refused a {len}-byte frame: {e}");
                    }
                },
                Err(why) => {
                    count(&metrics.tx_dropped, 1);
                    log::debug!("virtio-net: dropped transmit chain {head}: {why}");
                }
            }
            queue.add_used(mem, head, 0)?;
            pass.used += 1;
        }
        // Re-enable guest notifications, then look again: a chain posted
        // in between would otherwise wait for the next kick.
        if !queue.enable_notification(mem)? {
            return Ok(pass);
        }
    }
}

/// What became of one received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RxOutcome {
    /// Written to the guest using this many buffers.
    Delivered(u16),
    /// Not enough receive buffers yet; nothing was consumed.
    NoBuffers,
    /// The frame cannot be delivered (too short, or larger than any buffer
    /// the guest can offer); nothing was consumed.
    Dropped(&'static str),
}

/// A piece of guest memory a received frame goes to, in frame order.
#[derive(Debug, Clone, Copy)]
struct Segment {
    addr: GuestAddress,
    len: usize,
}

/// Reusable bookkeeping for [`deliver_rx_frame`], so delivering a frame
/// does not allocate once warmed up. Both vectors are bounded: one chain
/// per ring entry, and one segment per used, non-empty descriptor.
#[derive(Debug, Default)]
pub(super) struct RxScratch {
    segments: Vec<Segment>,
    /// (head index, bytes written) per chain used.
    chains: Vec<(u16, u32)>,
}

/// Copies `frame` (virtio header first) into the guest's receive buffers.
///
/// With `mergeable` (VIRTIO_NET_F_MRG_RXBUF) the frame may span several
/// chains and `num_buffers` says how many; otherwise it must fit one chain
/// and `num_buffers` is 1. Buffers are only consumed once the whole frame
/// is placed; if they run out, they are given back to the ring untouched.
pub(super) fn deliver_rx_frame(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    frame: &mut [u8],
    mergeable: bool,
    scratch: &mut RxScratch,
) -> Result<RxOutcome, NetQueueError> {
    if frame.len() < VNET_HDR_LEN {
        return Ok(RxOutcome::Dropped("shorter than the virtio-net header"));
    }
    scratch.segments.clear();
    scratch.chains.clear();
    let max_chains = if mergeable {
        usize::from(queue.size())
    } else {
        1
    };
    let mut remaining = frame.len();
    {
        let mut iter = queue.iter(mem)?;
        while remaining > 0 {
            let give_back = |iter: &mut virtio_queue::AvailIter<'_, _>, n: usize| {
                for _ in 0..n {
                    iter.go_to_previous_position();
                }
            };
            if scratch.chains.len() >= max_chains {
                give_back(&mut iter, scratch.chains.len());
                return Ok(RxOutcome::Dropped("larger than the receive buffers"));
            }
            let Some(chain) = iter.next() else {
                give_back(&mut iter, scratch.chains.len());
                return Ok(RxOutcome::NoBuffers);
            };
            let head = chain.head_index();
            let mut written = 0usize;
            for desc in chain.writable() {
                if remaining == 0 {
                    break;
                }
                let take = usize::try_from(desc.len()).map_or(remaining, |n| n.min(remaining));
                if take == 0 {
                    continue;
                }
                if !mem.check_range(desc.addr(), take, Permissions::Write) {
                    return Err(NetQueueError::BadRxBuffer {
                        head,
                        why: "a descriptor lies outside guest memory",
                    });
                }
                scratch.segments.push(Segment {
                    addr: desc.addr(),
                    len: take,
                });
                written += take;
                remaining -= take;
            }
            let Ok(written) = u32::try_from(written) else {
                return Err(NetQueueError::BadRxBuffer {
                    head,
                    why: "impossible length",
                });
            };
            if written == 0 {
                return Err(NetQueueError::BadRxBuffer {
                    head,
                    why: "it has no device-writable space",
                });
            }
            scratch.chains.push((head, written));
        }
    }

    let buffers = u16::try_from(scratch.chains.len()).map_err(|_| NetQueueError::BadRxBuffer {
        head: 0,
        why: "more chains than the queue holds",
    })?;
    frame[NUM_BUFFERS_OFFSET..VNET_HDR_LEN].copy_from_slice(&buffers.to_le_bytes());
    let mut offset = 0;
    for seg in &scratch.segments {
        mem.write_slice(&frame[offset..offset + seg.len], seg.addr)
            .map_err(NetQueueError::Memory)?;
        offset += seg.len;
    }
    for &(head, len) in &scratch.chains {
        queue.add_used(mem, head, len)?;
    }
    Ok(RxOutcome::Delivered(buffers))
}

/// After [`RxOutcome::NoBuffers`]: asks the driver to notify the receive
/// queue as soon as it posts anything past avail index `seen` (read before
/// the failed attempt). Returns true if it already has, so the caller
/// should try again instead of waiting.
///
/// `enable_notification` alone would set `avail_event` to `next_avail`,
/// which lags behind `seen` when the buffers already posted were too few
/// for a mergeable frame; with VIRTIO_RING_F_EVENT_IDX the driver would
/// then never kick.
pub(super) fn request_rx_kick(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    seen: Wrapping<u16>,
) -> Result<bool, NetQueueError> {
    let next_avail = queue.next_avail();
    queue.set_next_avail(seen.0);
    let result = queue.enable_notification(mem);
    queue.set_next_avail(next_avail);
    Ok(result?)
}
