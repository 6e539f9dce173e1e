//! Intel MultiProcessor Specification 1.4 table: how a guest without ACPI
//! learns its CPUs, its IOAPIC and how ISA interrupts are routed.
//!
//! Built as plain bytes (no packed structs, no unsafe) and written to the
//! EBDA, where guests scan for the floating pointer.

use vm_memory::{Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use super::layout::{APIC_START, IOAPIC_START, MPTABLE_START};

/// APIC ids 0..=254 are usable and one is taken by the IOAPIC.
pub const MAX_CPUS: u8 = 254;

const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BOOTPROCESSOR: u8 = 2;
/// Family 6 signature with FPU and APIC feature flags.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);
/// ISA interrupts 0..=23 go to the same IOAPIC pins.
const IRQ_MAX: u8 = 23;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("the MP table supports 1 to {MAX_CPUS} vCPUs, not {0}")]
    CpuCount(u8),
    #[error("cannot write the MP table to guest memory: {0}")]
    Write(GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    // Every MP structure must sum to zero modulo 256.
    0u8.wrapping_sub(bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b)))
}

/// The floating pointer followed by the configuration table, as bytes to be
/// placed at `MPTABLE_START`.
pub fn build(cpu_count: u8) -> Result<Vec<u8>, MptableError> {
    if cpu_count == 0 || cpu_count > MAX_CPUS {
        return Err(MptableError::CpuCount(cpu_count));
    }
    let ioapic_id = cpu_count;
    let mut entries: Vec<u8> = Vec::new();
    let mut entry_count: u16 = 0;

    for cpu in 0..cpu_count {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOTPROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&u32::try_from(IOAPIC_START).unwrap_or(0).to_le_bytes());
    entry_count += 1;
    // Every ISA IRQ is an ordinary interrupt on the same IOAPIC pin. The
    // PIC's ExtINT goes through LINT0 only (below): an ExtINT I/O entry
    // makes Linux expect a through-8259A pin and crash in setup_IO_APIC.
    for irq in 0..=IRQ_MAX {
        // Polarity and trigger "conform to the bus" (flags 0).
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_TYPE_INT,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        entry_count += 1;
    }
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_TYPE_NMI, 0, 0, 0, 0, 0xff, 1]);
    entry_count += 2;

    let table_len = u16::try_from(HEADER_LEN + entries.len()).unwrap_or(u16::MAX);
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&table_len.to_le_bytes());
    header.extend_from_slice(&[SPEC_REV, 0]);
    header.extend_from_slice(b"HERD    ");
    header.extend_from_slice(b"HERD-VM     ");
    header.extend_from_slice(&[0; 6]); // OEM table pointer and size
    header.extend_from_slice(&entry_count.to_le_bytes());
    header.extend_from_slice(&u32::try_from(APIC_START).unwrap_or(0).to_le_bytes());
    header.extend_from_slice(&[0; 4]); // extended table length, checksum, reserved
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let table_addr = MPTABLE_START + FLOATING_POINTER_LEN as u64;
    let mut out = Vec::with_capacity(FLOATING_POINTER_LEN + table.len());
    out.extend_from_slice(b"_MP_");
    out.extend_from_slice(&u32::try_from(table_addr).unwrap_or(0).to_le_bytes());
    // Length in 16-byte paragraphs, spec revision, checksum, features.
    out.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    out[10] = checksum(&out);
    out.extend_from_slice(&table);
    Ok(out)
}

pub fn setup(mem: &GuestMemoryMmap, cpu_count: u8) -> Result<(), MptableError> {
    let bytes = build(cpu_count)?;
    mem.write_slice(&bytes, GuestAddress(MPTABLE_START))
        .map_err(MptableError::Write)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |a, b| a.wrapping_add(*b))
    }

    fn processors(table: &[u8]) -> Vec<(u8, u8)> {
        let mut out = Vec::new();
        let mut i = HEADER_LEN;
        while i < table.len() {
            match table[i] {
                ENTRY_PROCESSOR => {
                    out.push((table[i + 1], table[i + 3]));
                    i += 20;
                }
                _ => i += 8,
            }
        }
        out
    }

    #[test]
    fn checksums_and_cpu_entries() {
        for n in [1u8, 2, 4, 64, MAX_CPUS] {
            let bytes = build(n).unwrap();
            let (fp, table) = bytes.split_at(FLOATING_POINTER_LEN);
            assert_eq!(&fp[..4], b"_MP_");
            assert_eq!(sum(fp), 0);
            assert_eq!(&table[..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let cpus = processors(table);
            assert_eq!(cpus.len(), usize::from(n));
            assert_eq!(cpus[0], (0, CPU_ENABLED | CPU_BOOTPROCESSOR));
            assert!(cpus[1..].iter().all(|&(_, f)| f == CPU_ENABLED));
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(usize::from(count), usize::from(n) + 2 + 24 + 2);
        }
    }

    #[test]
    fn rejects_bad_counts() {
        assert!(matches!(build(0), Err(MptableError::CpuCount(0))));
        assert!(matches!(build(255), Err(MptableError::CpuCount(255))));
    }

    #[test]
    fn floating_pointer_points_at_table() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap();
        setup(&mem, 2).unwrap();
        let ptr: u32 = mem.read_obj(GuestAddress(MPTABLE_START + 4)).unwrap();
        let mut sig = [0u8; 4];
        mem.read_slice(&mut sig, GuestAddress(u64::from(ptr)))
            .unwrap();
        assert_eq!(&sig, b"PCMP");
    }
}
