//! 32-bit ELF kernels with a PVH entry note (unikernels and test kernels
//! often link as i386). linux-loader reads only ELF64, so this small loader
//! covers the rest: every field comes from an untrusted file and is
//! bounds-checked before use.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::{Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, Permissions};

const ELFCLASS32: u8 = 1;
const ELFDATA2LSB: u8 = 1;
const EM_386: u16 = 3;
const PT_LOAD: u32 = 1;
const PT_NOTE: u32 = 4;
const PHDR_SIZE: usize = 32;
const MAX_PHDRS: u16 = 64;
const XEN_ELFNOTE_PHYS32_ENTRY: u32 = 18;
/// Notes are small; anything larger is not a note we want.
const MAX_NOTE_SEGMENT: u32 = 64 * 1024;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Elf32Error {
    #[error("not a little-endian i386 ELF file")]
    NotI386,
    #[error("the ELF headers are truncated or inconsistent")]
    Truncated,
    #[error("a 32-bit ELF kernel needs a Xen PVH entry note (XEN_ELFNOTE_PHYS32_ENTRY)")]
    NoPvhNote,
    #[error("segment at {addr:#x} ({size} bytes) lies below 1 MiB or outside guest memory")]
    BadSegment { addr: u64, size: u64 },
}

/// The entry point and end of a loaded 32-bit PVH kernel.
pub struct Elf32Kernel {
    pub entry: GuestAddress,
    pub end: u64,
}

pub fn is_elf32(ident: &[u8; 5]) -> bool {
    ident[..4] == *b"\x7fELF" && ident[4] == ELFCLASS32
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn read_exact_at(file: &mut File, offset: u64, buf: &mut [u8]) -> Result<(), Elf32Error> {
    file.seek(SeekFrom::Start(offset))
        .and_then(|_| file.read_exact(buf))
        .map_err(|_| Elf32Error::Truncated)
}

struct Phdr {
    kind: u32,
    offset: u32,
    paddr: u32,
    filesz: u32,
    memsz: u32,
}

/// Finds the PVH entry in a note segment's bytes.
fn pvh_entry(notes: &[u8]) -> Option<u32> {
    let align4 = |n: usize| n.checked_add(3).map(|n| n & !3);
    let mut at = 0usize;
    while at + 12 <= notes.len() {
        let namesz = usize::try_from(u32_at(notes, at)?).ok()?;
        let descsz = usize::try_from(u32_at(notes, at + 4)?).ok()?;
        let kind = u32_at(notes, at + 8)?;
        let name_at = at + 12;
        let desc_at = name_at.checked_add(align4(namesz)?)?;
        let name = notes.get(name_at..name_at.checked_add(namesz)?)?;
        if kind == XEN_ELFNOTE_PHYS32_ENTRY && name.starts_with(b"Xen") {
            return u32_at(notes, desc_at);
        }
        at = desc_at.checked_add(align4(descsz)?)?;
    }
    None
}

pub fn load(
    mem: &GuestMemoryMmap,
    file: &mut File,
    highmem_start: u64,
) -> Result<Elf32Kernel, Elf32Error> {
    let mut ehdr = [0u8; 52];
    read_exact_at(file, 0, &mut ehdr)?;
    if ehdr[5] != ELFDATA2LSB || u16_at(&ehdr, 18) != Some(EM_386) {
        return Err(Elf32Error::NotI386);
    }
    let phoff = u32_at(&ehdr, 28).ok_or(Elf32Error::Truncated)?;
    let phentsize = u16_at(&ehdr, 42).ok_or(Elf32Error::Truncated)?;
    let phnum = u16_at(&ehdr, 44).ok_or(Elf32Error::Truncated)?;
    if usize::from(phentsize) != PHDR_SIZE || phnum == 0 || phnum > MAX_PHDRS {
        return Err(Elf32Error::Truncated);
    }
    let mut table = vec![0u8; PHDR_SIZE * usize::from(phnum)];
    read_exact_at(file, u64::from(phoff), &mut table)?;
    let phdrs: Vec<Phdr> = table
        .chunks_exact(PHDR_SIZE)
        .filter_map(|p| {
            Some(Phdr {
                kind: u32_at(p, 0)?,
                offset: u32_at(p, 4)?,
                paddr: u32_at(p, 12)?,
                filesz: u32_at(p, 16)?,
                memsz: u32_at(p, 20)?,
            })
        })
        .collect();

    let mut entry = None;
    for note in phdrs.iter().filter(|p| p.kind == PT_NOTE) {
        if note.filesz > MAX_NOTE_SEGMENT {
            continue;
        }
        let mut bytes = vec![0u8; usize::try_from(note.filesz).map_err(|_| Elf32Error::Truncated)?];
        read_exact_at(file, u64::from(note.offset), &mut bytes)?;
        entry = entry.or_else(|| pvh_entry(&bytes));
    }
    let entry = entry.ok_or(Elf32Error::NoPvhNote)?;

    let mut end = 0u64;
    for seg in phdrs.iter().filter(|p| p.kind == PT_LOAD && p.memsz > 0) {
        let addr = u64::from(seg.paddr);
        let bad = Elf32Error::BadSegment {
            addr,
            size: u64::from(seg.memsz),
        };
        if addr < highmem_start || seg.filesz > seg.memsz {
            return Err(bad);
        }
        let seg_end = addr + u64::from(seg.memsz);
        // The whole in-memory size must be guest RAM, not just the file part
        // (the guest zeroes the rest itself and would write past RAM).
        let memsz = usize::try_from(seg.memsz).map_err(|_| Elf32Error::Truncated)?;
        if !mem.check_range(GuestAddress(addr), memsz, Permissions::Write) {
            return Err(bad);
        }
        let count = usize::try_from(seg.filesz).map_err(|_| Elf32Error::Truncated)?;
        file.seek(SeekFrom::Start(u64::from(seg.offset)))
            .map_err(|_| Elf32Error::Truncated)?;
        mem.read_exact_volatile_from(GuestAddress(addr), file, count)
            .map_err(|_| Elf32Error::Truncated)?;
        end = end.max(seg_end);
    }
    Ok(Elf32Kernel {
        entry: GuestAddress(u64::from(entry)),
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn note(name: &[u8], kind: u32, desc: &[u8]) -> Vec<u8> {
        let mut n = Vec::new();
        n.extend_from_slice(&u32::try_from(name.len()).unwrap().to_le_bytes());
        n.extend_from_slice(&u32::try_from(desc.len()).unwrap().to_le_bytes());
        n.extend_from_slice(&kind.to_le_bytes());
        n.extend_from_slice(name);
        n.resize(n.len().next_multiple_of(4), 0);
        n.extend_from_slice(desc);
        n.resize(n.len().next_multiple_of(4), 0);
        n
    }

    #[test]
    fn finds_pvh_note_among_others() {
        let mut notes = note(b"GNU\0", 3, &[1, 2, 3, 4, 5]);
        notes.extend(note(
            b"Xen\0",
            XEN_ELFNOTE_PHYS32_ENTRY,
            &0x10_0040u32.to_le_bytes(),
        ));
        assert_eq!(pvh_entry(&notes), Some(0x10_0040));
        assert_eq!(pvh_entry(&note(b"Xen\0", 5, &[0; 4])), None);
    }

    /// An i386 ELF with one PVH note and one PT_LOAD segment of `filesz`
    /// file bytes and `memsz` bytes in memory at `paddr`.
    fn elf32(paddr: u32, filesz: u32, memsz: u32) -> Vec<u8> {
        let notes = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &paddr.to_le_bytes());
        let phoff = 52u32;
        let notes_at = phoff + 2 * 32;
        let data_at = notes_at + u32::try_from(notes.len()).unwrap();
        let mut f = vec![0u8; 52];
        f[..6].copy_from_slice(b"\x7fELF\x01\x01");
        f[18..20].copy_from_slice(&EM_386.to_le_bytes());
        f[28..32].copy_from_slice(&phoff.to_le_bytes());
        f[42..44].copy_from_slice(&32u16.to_le_bytes());
        f[44..46].copy_from_slice(&2u16.to_le_bytes());
        let phdr = |kind: u32, offset: u32, paddr: u32, filesz: u32, memsz: u32| {
            let mut p = vec![0u8; 32];
            for (at, v) in [
                (0, kind),
                (4, offset),
                (12, paddr),
                (16, filesz),
                (20, memsz),
            ] {
                p[at..at + 4].copy_from_slice(&v.to_le_bytes());
            }
            p
        };
        let notes_len = u32::try_from(notes.len()).unwrap();
        f.extend(phdr(PT_NOTE, notes_at, 0, notes_len, notes_len));
        f.extend(phdr(PT_LOAD, data_at, paddr, filesz, memsz));
        f.extend(notes);
        f.extend(vec![0x90u8; usize::try_from(filesz).unwrap()]);
        f
    }

    fn load_bytes(bytes: &[u8], mem: &GuestMemoryMmap) -> Result<Elf32Kernel, Elf32Error> {
        let path =
            std::env::temp_dir().join(format!("herd-elf32-{}-{}", std::process::id(), bytes.len()));
        std::fs::write(&path, bytes).unwrap();
        let result = load(mem, &mut File::open(&path).unwrap(), 0x10_0000);
        std::fs::remove_file(&path).unwrap();
        result
    }

    #[test]
    fn segments_must_fit_guest_ram_including_their_bss() {
        let ram = 0x40_0000u32; // 4 MiB
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), ram as usize)]).unwrap();
        let k = load_bytes(&elf32(0x10_0000, 16, 0x1000), &mem).unwrap();
        assert_eq!(k.entry, GuestAddress(0x10_0000));
        assert_eq!(k.end, 0x10_1000);
        // The file part fits, the zeroed rest runs 4 KiB past the end of RAM.
        let past = ram - 0x10_0000 + 0x1000;
        assert_eq!(
            load_bytes(&elf32(0x10_0000, 16, past), &mem).err(),
            Some(Elf32Error::BadSegment {
                addr: 0x10_0000,
                size: u64::from(past)
            })
        );
        // Exactly up to the last byte of RAM is fine.
        assert!(load_bytes(&elf32(0x10_0000, 16, ram - 0x10_0000), &mem).is_ok());
    }

    #[test]
    fn hostile_note_sizes_do_not_panic() {
        let mut n = note(b"Xen\0", XEN_ELFNOTE_PHYS32_ENTRY, &[0; 4]);
        n[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(pvh_entry(&n), None);
        n[0..4].copy_from_slice(&4u32.to_le_bytes());
        n[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        // The Xen note itself is read from its own 4 bytes; the bogus
        // descsz only matters when skipping to the next note.
        assert!(pvh_entry(&n).is_some());
        assert_eq!(pvh_entry(&n[..13]), None);
        for len in 0..n.len() {
            let _ = pvh_entry(&n[..len]);
        }
    }
}
