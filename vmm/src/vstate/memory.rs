//! Guest RAM: anonymous, private, MAP_NORESERVE mappings, so a guest's
//! memory costs the host only the pages the guest actually touches.

use vm_memory::mmap::MmapRegionError;
use vm_memory::{GuestMemoryMmap, GuestRegionCollectionError, GuestRegionMmap, MmapRegion};

use crate::arch::x86_64::layout;

#[derive(Debug, thiserror::Error)]
pub enum MemoryError {
    #[error(
        "cannot reserve {mib} MiB of address space for guest memory ({source}); \
         lower --mem or raise the host's limits (ulimit -v, vm.overcommit_memory)"
    )]
    Map { mib: u64, source: MmapRegionError },
    #[error("guest memory of {0} bytes does not fit in this host's address space")]
    TooLarge(u64),
    #[error(
        "--mem {mib} MiB puts guest RAM up to {end:#x}, beyond this host's {bits}-bit \
         physical address space; lower --mem"
    )]
    BeyondHostAddressSpace { mib: u64, end: u64, bits: u32 },
    #[error("guest memory regions are inconsistent: {0}")]
    Regions(GuestRegionCollectionError),
}

/// The host CPU's physical address width: KVM cannot give a guest RAM
/// beyond it.
pub fn host_phys_addr_bits() -> u32 {
    const LEAF_ADDRESS_SIZES: u32 = 0x8000_0008;
    let max_ext = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    if max_ext < LEAF_ADDRESS_SIZES {
        return 36;
    }
    std::arch::x86_64::__cpuid(LEAF_ADDRESS_SIZES).eax & 0xff
}

/// KVM maps guest RAM with 2 MiB pages only where the host address and the
/// guest address agree modulo 2 MiB; every region starts 2 MiB aligned in
/// the guest, so herd maps it 2 MiB aligned too (older host kernels place
/// large anonymous mappings on any page boundary).
pub(crate) const HUGE_PAGE: usize = 2 << 20;

/// An anonymous, private, MAP_NORESERVE mapping of `len` bytes at a 2 MiB
/// aligned address. It is never unmapped: guest RAM lives as long as the
/// VM, which is as long as the herd process.
fn map_aligned(len: usize) -> Result<MmapRegion, MmapRegionError> {
    let reserve = len
        .checked_add(HUGE_PAGE)
        .ok_or(MmapRegionError::InvalidPointer)?;
    // A fresh anonymous mapping at an address of the kernel's choosing.
    // SAFETY: no MAP_FIXED, so no existing memory is touched.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            reserve,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(MmapRegionError::Mmap(std::io::Error::last_os_error()));
    }
    let base = base as usize;
    let aligned = base.next_multiple_of(HUGE_PAGE);
    let (head, tail) = (aligned - base, base + reserve - (aligned + len));
    // The slack before and after the aligned part belongs to the mapping
    // just made and nothing else refers to it.
    // SAFETY: sound for the reason just given.
    unsafe {
        if head > 0 {
            libc::munmap(base as *mut libc::c_void, head);
        }
        if tail > 0 {
            libc::munmap((aligned + len) as *mut libc::c_void, tail);
        }
    }
    // [aligned, aligned + len) is a valid read-write anonymous private
    // mapping made above with exactly these protection and flags.
    // SAFETY: sound for the reason just given.
    unsafe {
        MmapRegion::build_raw(
            aligned as *mut u8,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
        )
    }
}

pub fn create_guest_memory(mem_size: u64) -> Result<GuestMemoryMmap, MemoryError> {
    let bits = host_phys_addr_bits();
    let end = layout::ram_regions(mem_size)
        .last()
        .map_or(0, |(start, size)| start.0 + size);
    if bits < 64 && end > 1u64 << bits {
        return Err(MemoryError::BeyondHostAddressSpace {
            mib: mem_size >> 20,
            end,
            bits,
        });
    }
    let mut regions = Vec::new();
    for (start, size) in layout::ram_regions(mem_size) {
        let len = usize::try_from(size).map_err(|_| MemoryError::TooLarge(mem_size))?;
        let mapping = map_aligned(len).map_err(|source| MemoryError::Map {
            mib: mem_size >> 20,
            source,
        })?;
        let region = GuestRegionMmap::new(mapping, start).ok_or(MemoryError::TooLarge(mem_size))?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(MemoryError::Regions)
}

/// Host virtual address ranges [start, end) backing guest RAM.
pub fn host_ranges(mem: &GuestMemoryMmap) -> Vec<(u64, u64)> {
    use vm_memory::{GuestMemoryBackend, GuestMemoryRegion};
    mem.iter()
        .map(|r| {
            let start = r.as_ptr() as u64;
            (start, start + r.len())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

    #[test]
    fn eight_gib_is_reserved_not_committed() {
        let mem = create_guest_memory(8 << 30).unwrap();
        assert_eq!(mem.num_regions(), 2);
        assert!(mem.address_in_range(GuestAddress((1 << 32) + (5 << 30) - 1)));
        assert!(!mem.address_in_range(GuestAddress(layout::MMIO_GAP_START)));
    }

    #[test]
    fn regions_are_2mib_aligned_on_the_host() {
        let mem = create_guest_memory(130 << 20).unwrap();
        for region in mem.iter() {
            assert_eq!(region.as_ptr() as usize % HUGE_PAGE, 0);
        }
        mem.write_obj(7u64, GuestAddress((130 << 20) - 8)).unwrap();
    }

    #[test]
    fn impossible_size_is_a_clear_error() {
        let err = create_guest_memory(1 << 62).unwrap_err();
        assert!(err.to_string().contains("lower --mem"), "{err}");
        assert!(host_phys_addr_bits() >= 32);
    }
}
