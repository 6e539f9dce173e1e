//! x86_64 boot state: memory layout, e820, GDT, page tables, registers,
//! CPUID, MSRs and the MP table.

pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
