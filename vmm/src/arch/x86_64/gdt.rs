//! The boot GDT and the segment registers derived from it.

use kvm_bindings::kvm_segment;

/// GDT entry from (flags, base, limit), in the layout the CPU expects.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << (56 - 24))
        | ((flags as u64 & 0x0000_f0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << (48 - 16))
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

fn entry_base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn entry_limit(entry: u64) -> u32 {
    let limit = ((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0x0000_0000_0000_ffff);
    // The granularity bit scales the limit to 4 KiB pages.
    let limit = if entry & (1 << 55) != 0 {
        (limit << 12) | 0xfff
    } else {
        limit
    };
    u32::try_from(limit).unwrap_or(u32::MAX)
}

fn bit(entry: u64, n: u32) -> u8 {
    u8::from(entry & (1 << n) != 0)
}

/// The hidden segment state KVM needs for a selector at GDT index `index`.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    kvm_segment {
        base: entry_base(entry),
        limit: entry_limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(entry, 47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(entry, 54),
        s: bit(entry, 44),
        l: bit(entry, 53),
        g: bit(entry, 55),
        avl: bit(entry, 52),
        padding: 0,
        unusable: u8::from(bit(entry, 47) == 0),
    }
}

/// Null, code, data, TSS: 64-bit code segment for the Linux 64-bit entry.
pub const GDT_LONG_MODE: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// Null, code, data, TSS: flat 32-bit segments for the PVH entry.
pub const GDT_PROTECTED_MODE: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0x67),
];

pub const CODE_INDEX: u8 = 1;
pub const DATA_INDEX: u8 = 2;
pub const TSS_INDEX: u8 = 3;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_mode_code_segment() {
        let cs = segment_from_gdt(GDT_LONG_MODE[1], CODE_INDEX);
        assert_eq!(cs.selector, 8);
        assert_eq!((cs.l, cs.db, cs.present, cs.s, cs.g), (1, 0, 1, 1, 1));
        assert_eq!(cs.type_, 0xb);
        assert_eq!(cs.limit, 0xffff_ffff);
        assert_eq!(cs.base, 0);
    }

    #[test]
    fn flat_protected_mode_segments() {
        let cs = segment_from_gdt(GDT_PROTECTED_MODE[1], CODE_INDEX);
        let ds = segment_from_gdt(GDT_PROTECTED_MODE[2], DATA_INDEX);
        assert_eq!((cs.l, cs.db, cs.limit), (0, 1, 0xffff_ffff));
        assert_eq!((ds.type_, ds.db, ds.selector), (0x3, 1, 16));
        let tss = segment_from_gdt(GDT_PROTECTED_MODE[3], TSS_INDEX);
        assert_eq!((tss.type_, tss.limit, tss.present), (0xb, 0x67, 1));
    }

    #[test]
    fn base_round_trips() {
        let e = gdt_entry(0xc093, 0x1234_5678, 0xabcde);
        assert_eq!(entry_base(e), 0x1234_5678);
        assert_eq!(segment_from_gdt(e, 0).limit, 0xabcd_efff);
    }
}
