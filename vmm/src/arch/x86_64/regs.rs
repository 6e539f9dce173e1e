//! Register state for the first instruction: the Linux 64-bit boot protocol
//! (long mode, identity-mapped, rsi -> zero page) or the PVH entry (32-bit
//! protected mode, paging off, ebx -> hvm_start_info).

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::gdt::{self, segment_from_gdt, CODE_INDEX, DATA_INDEX, TSS_INDEX};
use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    PVH_INFO_START, ZERO_PAGE_START,
};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_ET: u64 = 0x10;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

/// Which entry convention the kernel is started with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// Linux 64-bit boot protocol (ELF vmlinux without PVH note, bzImage).
    Linux64,
    /// Xen PVH direct boot (ELF with the PVH note).
    Pvh,
}

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("cannot write the boot GDT/IDT to guest memory: {0}")]
    WriteGdt(GuestMemoryError),
    #[error("cannot write the boot page tables to guest memory: {0}")]
    WritePageTables(GuestMemoryError),
}

/// General-purpose registers at the kernel entry point.
pub fn boot_regs(mode: EntryMode, entry: GuestAddress) -> kvm_regs {
    let mut regs = kvm_regs {
        // Bit 1 of RFLAGS is reserved and must be set.
        rflags: 0x2,
        rip: entry.0,
        ..Default::default()
    };
    match mode {
        EntryMode::Linux64 => {
            regs.rsp = BOOT_STACK_POINTER;
            regs.rbp = BOOT_STACK_POINTER;
            regs.rsi = ZERO_PAGE_START;
        }
        EntryMode::Pvh => regs.rbx = PVH_INFO_START,
    }
    regs
}

/// FPU state as after FNINIT, with SSE exceptions masked.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    }
}

/// Writes the GDT (and an empty IDT) into guest memory and returns the
/// segment and control registers for `mode`, starting from `sregs` as KVM
/// created them.
pub fn boot_sregs(
    mem: &GuestMemoryMmap,
    mode: EntryMode,
    mut sregs: kvm_sregs,
) -> Result<kvm_sregs, RegsError> {
    let table = match mode {
        EntryMode::Linux64 => gdt::GDT_LONG_MODE,
        EntryMode::Pvh => gdt::GDT_PROTECTED_MODE,
    };
    for (i, entry) in table.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))
            .map_err(RegsError::WriteGdt)?;
    }
    mem.write_obj(0u64, GuestAddress(BOOT_IDT_START))
        .map_err(RegsError::WriteGdt)?;

    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = u16::try_from(std::mem::size_of_val(&table) - 1).unwrap_or(u16::MAX);
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment_from_gdt(table[usize::from(CODE_INDEX)], CODE_INDEX);
    let data = segment_from_gdt(table[usize::from(DATA_INDEX)], DATA_INDEX);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment_from_gdt(table[usize::from(TSS_INDEX)], TSS_INDEX);

    match mode {
        EntryMode::Linux64 => {
            write_identity_page_tables(mem)?;
            sregs.cr3 = PML4_START;
            sregs.cr4 |= X86_CR4_PAE;
            sregs.cr0 |= X86_CR0_PE | X86_CR0_PG | X86_CR0_ET;
            sregs.efer |= EFER_LME | EFER_LMA;
        }
        EntryMode::Pvh => {
            sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
            sregs.cr4 = 0;
            sregs.efer = 0;
        }
    }
    Ok(sregs)
}

/// Identity-maps the first GiB with 2 MiB pages, as the 64-bit boot
/// protocol requires for the kernel, zero page and command line.
fn write_identity_page_tables(mem: &GuestMemoryMmap) -> Result<(), RegsError> {
    const PRESENT_RW: u64 = 0x3;
    const PAGE_SIZE_2M: u64 = 0x80;
    mem.write_obj(PDPTE_START | PRESENT_RW, GuestAddress(PML4_START))
        .map_err(RegsError::WritePageTables)?;
    mem.write_obj(PDE_START | PRESENT_RW, GuestAddress(PDPTE_START))
        .map_err(RegsError::WritePageTables)?;
    let pd: Vec<u8> = (0..512u64)
        .flat_map(|i| ((i << 21) | PRESENT_RW | PAGE_SIZE_2M).to_le_bytes())
        .collect();
    mem.write_slice(&pd, GuestAddress(PDE_START))
        .map_err(RegsError::WritePageTables)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    #[test]
    fn linux64_enters_long_mode_with_identity_map() {
        let mem = mem();
        let sregs = boot_sregs(&mem, EntryMode::Linux64, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr3, PML4_START);
        assert_ne!(sregs.efer & EFER_LMA, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_eq!(sregs.cs.l, 1);
        let pde1: u64 = mem.read_obj(GuestAddress(PDE_START + 8)).unwrap();
        assert_eq!(pde1, 0x20_0000 | 0x83);
        let regs = boot_regs(EntryMode::Linux64, GuestAddress(0x100_0000));
        assert_eq!((regs.rip, regs.rsi), (0x100_0000, ZERO_PAGE_START));
    }

    #[test]
    fn pvh_enters_flat_protected_mode() {
        let mem = mem();
        let sregs = boot_sregs(&mem, EntryMode::Pvh, kvm_sregs::default()).unwrap();
        assert_eq!(sregs.cr0, X86_CR0_PE | X86_CR0_ET);
        assert_eq!(sregs.efer, 0);
        assert_eq!((sregs.cs.db, sregs.cs.l), (1, 0));
        let code: u64 = mem.read_obj(GuestAddress(BOOT_GDT_START + 8)).unwrap();
        assert_eq!(code, gdt::GDT_PROTECTED_MODE[1]);
        let regs = boot_regs(EntryMode::Pvh, GuestAddress(0x10_0000));
        assert_eq!(regs.rbx, PVH_INFO_START);
    }
}
