//! Tests for the net device: queue handling against descriptor chains
//! built in guest memory (`frame.rs`), and the whole device against a real
//! TAP (`device.rs`).

mod device;
mod frame;

use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::VNET_HDR_LEN;

pub(super) const VRING_DESC_F_NEXT: u16 = 1;
pub(super) const VRING_DESC_F_WRITE: u16 = 2;

/// Guest memory for the tests: rings below 1 MiB, buffers above.
pub(super) const MEM_SIZE: u64 = 0x40_0000;
pub(super) const DATA: u64 = 0x10_0000;

pub(super) fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), usize::try_from(MEM_SIZE).unwrap())]).unwrap()
}

/// A split virtqueue as a driver fills it: descriptor table at `base`,
/// then the avail ring, then the used ring (virtio 1.2, 2.7).
pub(super) struct DriverQueue<'a> {
    pub mem: &'a GuestMemoryMmap,
    size: u16,
    desc: u64,
    avail: u64,
    used: u64,
    next_desc: u16,
}

impl<'a> DriverQueue<'a> {
    pub fn new(mem: &'a GuestMemoryMmap, base: u64, size: u16) -> Self {
        let n = u64::from(size);
        let avail = base + 16 * n;
        let used = (avail + 6 + 2 * n + 3) & !3;
        let end = used + 6 + 8 * n;
        mem.write_slice(
            &vec![0u8; usize::try_from(end - base).unwrap()],
            GuestAddress(base),
        )
        .unwrap();
        DriverQueue {
            mem,
            size,
            desc: base,
            avail,
            used,
            next_desc: 0,
        }
    }

    /// The device's view of the queue, as the transport hands it over.
    pub fn queue(&self) -> Queue {
        let mut q = Queue::new(self.size).unwrap();
        q.set_size(self.size);
        q.try_set_desc_table_address(GuestAddress(self.desc))
            .unwrap();
        q.try_set_avail_ring_address(GuestAddress(self.avail))
            .unwrap();
        q.try_set_used_ring_address(GuestAddress(self.used))
            .unwrap();
        q.set_ready(true);
        assert!(q.is_valid(self.mem));
        q
    }

    fn w16(&self, addr: u64, v: u16) {
        self.mem.write_obj(v.to_le(), GuestAddress(addr)).unwrap();
    }

    fn r16(&self, addr: u64) -> u16 {
        u16::from_le(self.mem.read_obj(GuestAddress(addr)).unwrap())
    }

    pub fn set_desc(&self, index: u16, addr: u64, len: u32, flags: u16, next: u16) {
        let at = self.desc + 16 * u64::from(index);
        self.mem.write_obj(addr.to_le(), GuestAddress(at)).unwrap();
        self.mem
            .write_obj(len.to_le(), GuestAddress(at + 8))
            .unwrap();
        self.w16(at + 12, flags);
        self.w16(at + 14, next);
    }

    pub fn set_avail_slot(&self, slot: u16, head: u16) {
        self.w16(self.avail + 4 + 2 * u64::from(slot), head);
    }

    pub fn avail_idx(&self) -> u16 {
        self.r16(self.avail + 2)
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.w16(self.avail + 2, idx);
    }

    /// Posts one chain of `(address, length, device-writable)` descriptors.
    pub fn add_chain(&mut self, descs: &[(u64, u32, bool)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, write)) in descs.iter().enumerate() {
            let i = u16::try_from(i).unwrap();
            let mut flags = if write { VRING_DESC_F_WRITE } else { 0 };
            if usize::from(i) + 1 < descs.len() {
                flags |= VRING_DESC_F_NEXT;
            }
            self.set_desc(head + i, addr, len, flags, head + i + 1);
        }
        self.next_desc += u16::try_from(descs.len()).unwrap();
        let idx = self.avail_idx();
        self.set_avail_slot(idx % self.size, head);
        self.set_avail_idx(idx.wrapping_add(1));
        head
    }

    /// The used ring's `avail_event`: the driver kicks once it posts past it.
    pub fn avail_event(&self) -> u16 {
        self.r16(self.used + 4 + 8 * u64::from(self.size))
    }

    /// Used ring entries so far: (head, length).
    pub fn used(&self) -> Vec<(u32, u32)> {
        let n = self.r16(self.used + 2);
        (0..n)
            .map(|i| {
                let at = self.used + 4 + 8 * u64::from(i % self.size);
                let id: u32 = self.mem.read_obj(GuestAddress(at)).unwrap();
                let len: u32 = self.mem.read_obj(GuestAddress(at + 4)).unwrap();
                (u32::from_le(id), u32::from_le(len))
            })
            .collect()
    }
}

/// A frame as it crosses the TAP: zeroed virtio header, broadcast Ethernet
/// header with the local experimental ethertype 0x88b5, then `payload_len`
/// bytes of a pattern seeded by `seed`.
pub(super) fn test_frame(payload_len: usize, seed: u8) -> Vec<u8> {
    let mut f = vec![0u8; VNET_HDR_LEN];
    f.extend_from_slice(&[0xff; 6]);
    f.extend_from_slice(&[0x02, 0, 0, 0, 0, 1]);
    f.extend_from_slice(&[0x88, 0xb5]);
    f.extend((0..payload_len).map(|i| (i.to_le_bytes()[0]).wrapping_mul(31).wrapping_add(seed)));
    f
}

pub(super) fn read_guest(mem: &GuestMemoryMmap, addr: u64, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    mem.read_slice(&mut v, GuestAddress(addr)).unwrap();
    v
}

pub(super) fn write_guest(mem: &GuestMemoryMmap, addr: u64, data: &[u8]) {
    mem.write_slice(data, GuestAddress(addr)).unwrap();
}
