//! Descriptor chain → typed request. Pure: reads the 16-byte header from
//! guest memory and checks addresses, never touches the disk.
//!
//! Any descriptor layout is accepted (VIRTIO_F_VERSION_1 lets the driver
//! split `struct virtio_blk_req` anywhere, virtio 1.2, 2.7.4): the
//! device-readable bytes come first and are the 16-byte header followed,
//! for OUT, by the data; the device-writable bytes follow and are, for IN
//! and GET_ID, the data followed by the status byte, which is always the
//! last writable byte. Linux sends header, data and status in separate
//! descriptors, which is one such layout.

use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

use super::{
    MAX_DESCRIPTORS, SECTOR_SIZE, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::desc::split::Descriptor;

const HEADER_LEN: u32 = 16;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RequestKind {
    In,
    Out,
    Flush,
    GetId,
    Unsupported(u32),
}

impl RequestKind {
    fn from_type(request_type: u32) -> Self {
        match request_type {
            VIRTIO_BLK_T_IN => RequestKind::In,
            VIRTIO_BLK_T_OUT => RequestKind::Out,
            VIRTIO_BLK_T_FLUSH => RequestKind::Flush,
            VIRTIO_BLK_T_GET_ID => RequestKind::GetId,
            other => RequestKind::Unsupported(other),
        }
    }

    /// Whether data buffers must be device-writable; `None` for requests
    /// whose data buffers (if any) we never touch.
    fn data_writable(self) -> Option<bool> {
        match self {
            RequestKind::In | RequestKind::GetId => Some(true),
            RequestKind::Out => Some(false),
            RequestKind::Flush | RequestKind::Unsupported(_) => None,
        }
    }
}

/// A request whose guest buffers are all known to lie in guest memory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    pub kind: RequestKind,
    pub sector: u64,
    /// Guest buffers in chain order; empty for FLUSH and unknown types.
    pub data: Vec<(GuestAddress, u32)>,
    /// Sum of the `data` lengths.
    pub data_len: u32,
    pub status_addr: GuestAddress,
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("empty descriptor chain (head index outside the ring or unreadable descriptor)")]
    EmptyChain,
    #[error("descriptor chain cut short: a link is out of range, unreadable, loops, or the chain exceeds 4 GiB")]
    BrokenLink,
    #[error("descriptor chain longer than {MAX_DESCRIPTORS} descriptors")]
    TooManyDescriptors,
    #[error("descriptor chain is longer than 4 GiB in total")]
    TooLong,
    #[error("descriptor chain has a header but no status descriptor")]
    MissingStatus,
    #[error("request header descriptor is device-writable")]
    HeaderWritable,
    #[error(
        "the device-readable part of the request is {0} bytes, shorter than its 16-byte header"
    )]
    HeaderLength(u32),
    #[error("descriptor {0} is device-readable but follows a device-writable one")]
    ReadableAfterWritable(usize),
    #[error("request header at {0:#x} is outside guest memory")]
    HeaderAddress(u64),
    #[error("status descriptor is not device-writable")]
    StatusReadOnly,
    #[error("status descriptor is empty")]
    StatusEmpty,
    #[error("status byte at {0:#x}+{1:#x} is outside guest memory")]
    StatusAddress(u64, u32),
    #[error("data descriptor {index} of a {kind:?} request is device-{}", if *writable { "writable" } else { "readable" })]
    DataDirection {
        index: usize,
        kind: RequestKind,
        writable: bool,
    },
    #[error("data buffer {addr:#x}+{len:#x} is outside guest memory")]
    DataAddress { addr: u64, len: u32 },
    #[error("data length {0} is not a multiple of 512 bytes")]
    UnalignedLength(u32),
    #[error("{len} bytes at sector {sector} reach beyond the disk's end ({capacity} sectors)")]
    OutOfRange {
        sector: u64,
        len: u32,
        capacity: u64,
    },
}

impl RequestError {
    /// Malformed chains break the device; the others are answered with
    /// VIRTIO_BLK_S_IOERR (see the policy in `block/mod.rs`).
    pub fn is_malformed(&self) -> bool {
        !matches!(
            self,
            RequestError::UnalignedLength(_) | RequestError::OutOfRange { .. }
        )
    }
}

impl Request {
    /// Parses one descriptor chain. Looks at no more than
    /// `MAX_DESCRIPTORS + 1` descriptors whatever the guest wrote.
    pub fn parse<I>(mem: &GuestMemoryMmap, chain: I) -> Result<Request, RequestError>
    where
        I: IntoIterator<Item = Descriptor>,
    {
        let mut descs = Vec::with_capacity(4);
        let mut total: u32 = 0;
        let mut last_has_next = false;
        for desc in chain.into_iter().take(MAX_DESCRIPTORS + 1) {
            if descs.len() == MAX_DESCRIPTORS {
                return Err(RequestError::TooManyDescriptors);
            }
            // virtio 1.2, 2.7.5.2: a chain is at most 4 GiB; this also keeps
            // `data_len + 1` (the used length) from overflowing below.
            total = total.checked_add(desc.len()).ok_or(RequestError::TooLong)?;
            last_has_next = desc.has_next();
            descs.push(desc);
        }
        // virtio-queue ends the iteration silently on a bad link; the last
        // descriptor still saying "next" is how we notice.
        if last_has_next {
            return Err(RequestError::BrokenLink);
        }
        let first = descs.first().ok_or(RequestError::EmptyChain)?;
        if first.is_write_only() {
            return Err(RequestError::HeaderWritable);
        }
        let split = descs
            .iter()
            .position(Descriptor::is_write_only)
            .unwrap_or(descs.len());
        let (readable, writable) = descs.split_at(split);
        if let Some(i) = writable.iter().position(|d| !d.is_write_only()) {
            return Err(RequestError::ReadableAfterWritable(split + i));
        }
        if writable.is_empty() {
            return Err(if descs.len() == 1 {
                RequestError::MissingStatus
            } else {
                RequestError::StatusReadOnly
            });
        }

        let (kind, sector, out_data) = read_header(mem, readable)?;
        let (status_addr, in_data) = status_byte(mem, writable, split)?;
        let mut request = Request {
            kind,
            sector,
            data: Vec::new(),
            data_len: 0,
            status_addr,
        };
        let (data, unexpected) = match kind.data_writable() {
            Some(true) => (in_data, out_data),
            Some(false) => (out_data, in_data),
            None => return Ok(request),
        };
        if let Some(&(index, _, _)) = unexpected.first() {
            return Err(RequestError::DataDirection {
                index,
                kind,
                writable: descs.get(index).is_some_and(Descriptor::is_write_only),
            });
        }
        let access = match kind.data_writable() {
            Some(true) => Permissions::Write,
            _ => Permissions::Read,
        };
        request.data.reserve_exact(data.len());
        for (_, addr, len) in data {
            if !in_memory(mem, addr, len, access) {
                return Err(RequestError::DataAddress {
                    addr: addr.raw_value(),
                    len,
                });
            }
            // Cannot overflow: bounded by `total` above.
            request.data_len = request.data_len.saturating_add(len);
            request.data.push((addr, len));
        }
        Ok(request)
    }

    /// For IN and OUT, the byte offset on the disk once the request is known
    /// to fit in `capacity` sectors; 0 for the other kinds.
    pub fn disk_offset(&self, capacity: u64) -> Result<u64, RequestError> {
        if !matches!(self.kind, RequestKind::In | RequestKind::Out) {
            return Ok(0);
        }
        if u64::from(self.data_len) % SECTOR_SIZE != 0 {
            return Err(RequestError::UnalignedLength(self.data_len));
        }
        let out_of_range = RequestError::OutOfRange {
            sector: self.sector,
            len: self.data_len,
            capacity,
        };
        let start = self
            .sector
            .checked_mul(SECTOR_SIZE)
            .ok_or_else(|| out_of_range.clone())?;
        let end = start
            .checked_add(u64::from(self.data_len))
            .ok_or_else(|| out_of_range.clone())?;
        match capacity.checked_mul(SECTOR_SIZE) {
            Some(disk_bytes) if end <= disk_bytes => Ok(start),
            _ => Err(out_of_range),
        }
    }
}

fn in_memory(mem: &GuestMemoryMmap, addr: GuestAddress, len: u32, access: Permissions) -> bool {
    match usize::try_from(len) {
        // check_range also rejects `addr + len` wrapping past u64::MAX.
        Ok(len) => GuestMemory::check_range(mem, addr, len, access),
        Err(_) => false,
    }
}

/// A piece of a descriptor: its index in the chain, address and length.
type Piece = (usize, GuestAddress, u32);

/// Reads the 16-byte header from the start of the device-readable
/// descriptors (it may span several); returns the request type, the sector
/// and the readable bytes after the header (OUT data), piece by piece.
fn read_header(
    mem: &GuestMemoryMmap,
    readable: &[Descriptor],
) -> Result<(RequestKind, u64, Vec<Piece>), RequestError> {
    let mut raw = [0u8; HEADER_LEN as usize];
    let mut filled = 0usize;
    let mut rest = Vec::new();
    for (index, desc) in readable.iter().enumerate() {
        // Cannot fail: a descriptor length is a u32.
        let len = usize::try_from(desc.len()).unwrap_or(usize::MAX);
        let take = len.min(raw.len() - filled);
        if take > 0 {
            mem.read_slice(&mut raw[filled..filled + take], desc.addr())
                .map_err(|_| RequestError::HeaderAddress(desc.addr().raw_value()))?;
            filled += take;
        }
        if take < len {
            let skip = u32::try_from(take).unwrap_or(HEADER_LEN);
            let addr = desc
                .addr()
                .checked_add(u64::from(skip))
                .ok_or(RequestError::HeaderAddress(desc.addr().raw_value()))?;
            rest.push((index, addr, desc.len() - skip));
        }
    }
    if filled < raw.len() {
        return Err(RequestError::HeaderLength(
            u32::try_from(filled).unwrap_or(0),
        ));
    }
    let [t0, t1, t2, t3, _, _, _, _, s0, s1, s2, s3, s4, s5, s6, s7] = raw;
    let request_type = u32::from_le_bytes([t0, t1, t2, t3]);
    let sector = u64::from_le_bytes([s0, s1, s2, s3, s4, s5, s6, s7]);
    Ok((RequestKind::from_type(request_type), sector, rest))
}

/// The status byte is the last device-writable byte; the writable bytes
/// before it (IN and GET_ID data) are returned piece by piece, with their
/// index in the whole chain (`base` is the index of `writable[0]`).
fn status_byte(
    mem: &GuestMemoryMmap,
    writable: &[Descriptor],
    base: usize,
) -> Result<(GuestAddress, Vec<Piece>), RequestError> {
    let Some(last_index) = writable.iter().rposition(|d| d.len() > 0) else {
        return Err(RequestError::StatusEmpty);
    };
    let status = &writable[last_index];
    let bad = || RequestError::StatusAddress(status.addr().raw_value(), status.len());
    let last = status.len() - 1;
    let addr = status.addr().checked_add(u64::from(last)).ok_or_else(bad)?;
    if !in_memory(mem, addr, 1, Permissions::Write) {
        return Err(bad());
    }
    let mut data: Vec<Piece> = writable[..last_index]
        .iter()
        .enumerate()
        .filter(|(_, d)| d.len() > 0)
        .map(|(i, d)| (base + i, d.addr(), d.len()))
        .collect();
    if last > 0 {
        data.push((base + last_index, status.addr(), last));
    }
    Ok((addr, data))
}

#[cfg(test)]
#[path = "request_tests.rs"]
mod tests;
