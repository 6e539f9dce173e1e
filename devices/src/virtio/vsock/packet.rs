//! Descriptor chains to owned packets and back, through rust-vmm's
//! virtio-vsock crate (which bounds-checks every buffer in guest memory).
//! The muxer only ever sees these owned packets.

use virtio_queue::DescriptorChain;
use virtio_vsock::packet::VsockPacket;
use vm_memory::{Bytes, GuestMemoryMmap};

use super::{HOST_CID, MAX_PKT_DATA};

/// A packet the guest sent.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TxPacket {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub data: Vec<u8>,
}

/// A packet for the guest, from the host's side of a connection.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RxPacket {
    /// The host's port (source).
    pub local_port: u32,
    /// The guest's port (destination).
    pub peer_port: u32,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
    pub data: Vec<u8>,
}

pub type PacketError = virtio_vsock::packet::Error;

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

/// Reads a TX chain into an owned packet.
pub fn read_tx(mem: &GuestMemoryMmap, chain: &mut Chain) -> Result<TxPacket, PacketError> {
    let pkt = VsockPacket::from_tx_virtq_chain(mem, chain, MAX_PKT_DATA)?;
    // The crate checked `len` against the data buffer and MAX_PKT_DATA.
    let len = usize::try_from(pkt.len()).unwrap_or(0);
    let mut data = vec![0u8; len];
    if len > 0 {
        let slice = pkt
            .data_slice()
            .ok_or(PacketError::DescriptorChainTooShort)?;
        slice
            .read_slice(&mut data, 0)
            .map_err(PacketError::InvalidVolatileAccess)?;
    }
    Ok(TxPacket {
        src_cid: pkt.src_cid(),
        dst_cid: pkt.dst_cid(),
        src_port: pkt.src_port(),
        dst_port: pkt.dst_port(),
        type_: pkt.type_(),
        op: pkt.op(),
        flags: pkt.flags(),
        buf_alloc: pkt.buf_alloc(),
        fwd_cnt: pkt.fwd_cnt(),
        data,
    })
}

/// How much payload an RX chain can take, without touching it.
pub fn rx_capacity(mem: &GuestMemoryMmap, chain: &mut Chain) -> Result<usize, PacketError> {
    let pkt = VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PKT_DATA)?;
    Ok(pkt.data_slice().map_or(0, |s| s.len()))
}

/// Writes `rx` into an RX chain; returns the bytes used (header + data).
/// `rx.data` must fit (see [`rx_capacity`]).
pub fn write_rx(
    mem: &GuestMemoryMmap,
    chain: &mut Chain,
    guest_cid: u64,
    rx: &RxPacket,
) -> Result<u32, PacketError> {
    let mut pkt = VsockPacket::from_rx_virtq_chain(mem, chain, MAX_PKT_DATA)?;
    let len = u32::try_from(rx.data.len()).map_err(|_| PacketError::DescriptorLengthTooSmall)?;
    if !rx.data.is_empty() {
        let slice = pkt
            .data_slice()
            .ok_or(PacketError::DescriptorChainTooShort)?;
        if slice.len() < rx.data.len() {
            return Err(PacketError::DescriptorLengthTooSmall);
        }
        slice
            .write_slice(&rx.data, 0)
            .map_err(PacketError::InvalidVolatileAccess)?;
    }
    pkt.set_src_cid(HOST_CID)
        .set_dst_cid(guest_cid)
        .set_src_port(rx.local_port)
        .set_dst_port(rx.peer_port)
        .set_type(super::TYPE_STREAM)
        .set_op(rx.op)
        .set_flags(rx.flags)
        .set_buf_alloc(rx.buf_alloc)
        .set_fwd_cnt(rx.fwd_cnt)
        .set_len(len);
    let header = u32::try_from(pkt.header_slice().len()).unwrap_or(0);
    Ok(header + len)
}
