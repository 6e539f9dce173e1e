//! Test scaffolding: guest memory, temporary disk images, a driver-side view
//! of a split virtqueue, and an allocation-size probe.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use virtio_queue::desc::split::Descriptor;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Guest RAM: two adjacent regions, so buffers can straddle a region
/// boundary, and nothing above `MEM_SIZE`.
pub const MEM_SIZE: u64 = 0x10_0000;
pub const REGION_SPLIT: u64 = 0x8_0000;

pub const DESC_TABLE: u64 = 0;
pub const AVAIL_RING: u64 = 0x1000;
pub const USED_RING: u64 = 0x2000;
/// Where tests put headers, data and status bytes.
pub const SCRATCH: u64 = 0x4000;

pub fn guest_memory() -> GuestMemoryMmap {
    let split = usize::try_from(REGION_SPLIT).unwrap();
    let rest = usize::try_from(MEM_SIZE - REGION_SPLIT).unwrap();
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), split), (GuestAddress(REGION_SPLIT), rest)])
        .unwrap()
}

/// A disk image file that is removed when dropped.
pub struct TempDisk {
    path: PathBuf,
}

impl TempDisk {
    pub fn new(contents: &[u8]) -> Self {
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path =
            std::env::temp_dir().join(format!("herd-blk-test-{}-{n}.img", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        TempDisk { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDisk {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// A ready queue of `size` entries at the fixed ring addresses.
pub fn test_queue(size: u16) -> Queue {
    let mut q = Queue::new(256).unwrap();
    q.set_size(size);
    q.set_desc_table_address(Some(0), Some(0));
    q.set_avail_ring_address(Some(0x1000), Some(0));
    q.set_used_ring_address(Some(0x2000), Some(0));
    q.set_ready(true);
    q
}

/// The driver's side of the queue at the fixed ring addresses.
pub struct Driver<'a> {
    pub mem: &'a GuestMemoryMmap,
    next_desc: u16,
    avail_idx: u16,
}

impl<'a> Driver<'a> {
    pub fn new(mem: &'a GuestMemoryMmap) -> Self {
        Driver {
            mem,
            next_desc: 0,
            avail_idx: 0,
        }
    }

    pub fn write_desc(&self, index: u16, desc: Descriptor) {
        let addr = GuestAddress(DESC_TABLE + u64::from(index) * 16);
        self.mem.write_obj(desc, addr).unwrap();
    }

    /// Makes `head` available and bumps the avail index.
    pub fn publish(&mut self, head: u16) {
        let slot = u64::from(self.avail_idx % 256) * 2;
        self.mem
            .write_obj(head, GuestAddress(AVAIL_RING + 4 + slot))
            .unwrap();
        self.avail_idx = self.avail_idx.wrapping_add(1);
        self.set_avail_idx(self.avail_idx);
    }

    pub fn set_avail_idx(&self, idx: u16) {
        self.mem
            .write_obj(idx, GuestAddress(AVAIL_RING + 2))
            .unwrap();
    }

    /// Writes `(addr, len, flags)` descriptors linked in order and publishes
    /// the chain. Returns its head index.
    pub fn add_chain(&mut self, descs: &[(u64, u32, u16)]) -> u16 {
        let head = self.next_desc;
        for (i, &(addr, len, flags)) in descs.iter().enumerate() {
            let index = self.next_desc;
            self.next_desc += 1;
            let last = i + 1 == descs.len();
            let flags = if last { flags } else { flags | 1 };
            self.write_desc(index, Descriptor::new(addr, len, flags, index + 1));
        }
        self.publish(head);
        head
    }

    pub fn used_idx(&self) -> u16 {
        self.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap()
    }

    /// The `(id, len)` of used ring entry `i`.
    pub fn used(&self, i: u16) -> (u32, u32) {
        let base = USED_RING + 4 + u64::from(i % 256) * 8;
        (
            self.mem.read_obj(GuestAddress(base)).unwrap(),
            self.mem.read_obj(GuestAddress(base + 4)).unwrap(),
        )
    }

    pub fn write_header(&self, addr: u64, request_type: u32, sector: u64) {
        let mut hdr = [0u8; 16];
        hdr[..4].copy_from_slice(&request_type.to_le_bytes());
        hdr[8..].copy_from_slice(&sector.to_le_bytes());
        self.mem.write_slice(&hdr, GuestAddress(addr)).unwrap();
    }

    pub fn read_byte(&self, addr: u64) -> u8 {
        self.mem.read_obj(GuestAddress(addr)).unwrap()
    }
}

/// Forwards to the system allocator and remembers, per thread, the largest
/// single allocation, so tests can bound what guest input makes us allocate.
struct LargestAllocation;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// SAFETY: every method forwards to `System` with the caller's arguments
// unchanged; the bookkeeping only touches a const-initialized thread-local
// `Cell` and never allocates.
unsafe impl GlobalAlloc for LargestAllocation {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` via `alloc`/`realloc` above.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        // SAFETY: forwarded unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        // SAFETY: forwarded unchanged; `ptr` came from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: LargestAllocation = LargestAllocation;

/// Runs `f` and returns the largest single allocation it made on this thread.
pub fn largest_allocation_in<R>(f: impl FnOnce() -> R) -> (R, usize) {
    LARGEST.with(|l| l.set(0));
    let r = f();
    (r, LARGEST.with(Cell::get))
}
