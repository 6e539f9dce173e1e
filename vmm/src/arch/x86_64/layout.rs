//! Guest physical memory layout.
//!
//! Low memory holds the boot structures at fixed addresses (the same ones
//! Firecracker uses, so guests and tools built for it find things where they
//! expect). RAM above `MMIO_GAP_START` is moved above 4 GiB so the 32-bit
//! MMIO hole (virtio-mmio devices, IOAPIC, LAPIC) stays free.

use vm_memory::GuestAddress;

/// Initial GDT and (empty) IDT.
pub const BOOT_GDT_START: u64 = 0x500;
pub const BOOT_IDT_START: u64 = 0x520;
/// PVH `hvm_start_info`, its module list and its memory map.
pub const PVH_INFO_START: u64 = 0x6000;
pub const PVH_MODLIST_START: u64 = 0x6040;
pub const PVH_MEMMAP_START: u64 = 0x7000;
/// Linux `boot_params` ("zero page"); never used together with PVH info.
pub const ZERO_PAGE_START: u64 = 0x7000;
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the 64-bit entry: PML4, PDPT, one PD (1 GiB).
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// Kernel command line; Linux/x86 accepts 2048 bytes including the NUL.
pub const CMDLINE_START: u64 = 0x20000;
pub const CMDLINE_MAX_SIZE: usize = 2048;
/// Extended BIOS data area: the MP table lives here, and from here to 1 MiB
/// is reported as reserved.
pub const EBDA_START: u64 = 0x9fc00;
pub const MPTABLE_START: u64 = EBDA_START;
/// ACPI tables, RSDP first: Linux scans 0xe0000..1 MiB for the RSDP on a
/// BIOS machine. Inside the reserved EBDA-to-1 MiB range.
pub const ACPI_TABLES_START: u64 = 0xe_0000;
pub const ACPI_TABLES_END: u64 = HIMEM_START;
/// Kernels load at 1 MiB.
pub const HIMEM_START: u64 = 0x10_0000;

/// 32-bit MMIO hole: [3 GiB, 4 GiB).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// First virtio-mmio device window; each device gets `MMIO_DEVICE_SIZE`.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;

/// KVM (on Intel) needs three pages for the real-mode TSS somewhere the
/// guest never uses: near the top of the MMIO hole. KVM's default EPT
/// identity-map page sits just below it.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;

pub const E820_RAM: u32 = 1;
pub const E820_RESERVED: u32 = 2;

/// The RAM regions backing `mem_size` bytes of guest memory.
pub fn ram_regions(mem_size: u64) -> Vec<(GuestAddress, u64)> {
    if mem_size <= MMIO_GAP_START {
        vec![(GuestAddress(0), mem_size)]
    } else {
        vec![
            (GuestAddress(0), MMIO_GAP_START),
            (GuestAddress(MMIO_GAP_END), mem_size - MMIO_GAP_START),
        ]
    }
}

/// One entry of the guest's physical memory map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryMapEntry {
    pub addr: u64,
    pub size: u64,
    pub kind: u32,
}

/// The memory map handed to the guest (e820 or PVH memmap). The area from
/// the EBDA to 1 MiB is backed by guest RAM but reserved, as on a PC.
pub fn memory_map(mem_size: u64) -> Vec<MemoryMapEntry> {
    let mut map = vec![
        MemoryMapEntry {
            addr: 0,
            size: EBDA_START,
            kind: E820_RAM,
        },
        MemoryMapEntry {
            addr: EBDA_START,
            size: HIMEM_START - EBDA_START,
            kind: E820_RESERVED,
        },
    ];
    let low_end = mem_size.min(MMIO_GAP_START);
    if low_end > HIMEM_START {
        map.push(MemoryMapEntry {
            addr: HIMEM_START,
            size: low_end - HIMEM_START,
            kind: E820_RAM,
        });
    }
    if mem_size > MMIO_GAP_START {
        map.push(MemoryMapEntry {
            addr: MMIO_GAP_END,
            size: mem_size - MMIO_GAP_START,
            kind: E820_RAM,
        });
    }
    map
}

/// End (exclusive) of the RAM below the MMIO hole.
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(MMIO_GAP_START)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn ram_total(map: &[MemoryMapEntry]) -> u64 {
        map.iter()
            .filter(|e| e.kind == E820_RAM)
            .map(|e| e.size)
            .sum()
    }

    #[test]
    fn small_guest_is_one_region() {
        assert_eq!(ram_regions(16 * MIB), vec![(GuestAddress(0), 16 * MIB)]);
        let map = memory_map(16 * MIB);
        assert_eq!(map.len(), 3);
        // Only the EBDA-to-1MiB window is withheld from RAM.
        assert_eq!(ram_total(&map), 16 * MIB - (HIMEM_START - EBDA_START));
    }

    #[test]
    fn large_guest_skips_the_mmio_hole() {
        let mem = 8192 * MIB;
        let regions = ram_regions(mem);
        assert_eq!(regions.len(), 2);
        assert_eq!(regions[1], (GuestAddress(1 << 32), mem - 3072 * MIB));
        let map = memory_map(mem);
        assert_eq!(map.last().unwrap().addr, 1 << 32);
        assert_eq!(ram_total(&map), mem - (HIMEM_START - EBDA_START));
        for e in &map {
            let overlaps_hole = e.addr < MMIO_GAP_END && e.addr + e.size > MMIO_GAP_START;
            assert!(!overlaps_hole, "{e:?} overlaps the MMIO hole");
        }
    }

    #[test]
    fn exactly_three_gib_fits_below_the_hole() {
        assert_eq!(ram_regions(MMIO_GAP_START).len(), 1);
        assert_eq!(memory_map(MMIO_GAP_START).len(), 3);
    }

    #[test]
    fn fixed_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 0x20),
            (BOOT_IDT_START, 8),
            (PVH_INFO_START, 0x40),
            (PVH_MODLIST_START, 0x20),
            (ZERO_PAGE_START, 0x1000),
            (BOOT_STACK_POINTER - 0x100, 0x100),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
        ];
        areas.sort();
        for w in areas.windows(2) {
            assert!(
                w[0].0 + w[0].1 <= w[1].0,
                "{:x?} overlaps {:x?}",
                w[0],
                w[1]
            );
        }
        assert!(CMDLINE_START + CMDLINE_MAX_SIZE as u64 <= EBDA_START);
    }
}
