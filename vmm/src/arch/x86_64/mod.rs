//! x86_64 boot state: memory layout, e820, GDT, page tables, registers,
//! CPUID, MSRs, the MP table and the ACPI tables.

pub mod acpi;
pub mod cpuid;
pub mod gdt;
pub mod layout;
pub mod mptable;
pub mod msr;
pub mod regs;
