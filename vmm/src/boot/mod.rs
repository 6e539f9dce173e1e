//! Loading the kernel and initrd, and writing what the kernel reads at
//! entry: the zero page (Linux boot protocol) or hvm_start_info (PVH).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use linux_loader::loader::{self, BzImage, Cmdline, Elf, KernelLoader, PvhBootCapability};
use vm_memory::{ByteValued, Bytes, GuestAddress, GuestMemoryError, GuestMemoryMmap};

use crate::arch::x86_64::layout::{
    self, MemoryMapEntry, CMDLINE_START, HIMEM_START, PVH_INFO_START, PVH_MEMMAP_START,
    PVH_MODLIST_START, ZERO_PAGE_START,
};
use crate::arch::x86_64::regs::EntryMode;

mod elf32;
mod guest_file;

use guest_file::GuestFile;

const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448;
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
const PAGE_SIZE: u64 = 4096;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
/// Where the bzImage setup header's "HdrS" magic sits in the file.
const BZIMAGE_HDRS_OFFSET: u64 = 0x202;

#[derive(Debug, thiserror::Error)]
pub enum BootError {
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "kernel {0} is neither an ELF vmlinux nor a bzImage; pass the kernel's vmlinux or \
         arch/x86/boot/bzImage"
    )]
    UnknownKernelFormat(PathBuf),
    #[error("cannot load 32-bit kernel {path}: {source}")]
    LoadElf32 {
        path: PathBuf,
        source: elf32::Elf32Error,
    },
    #[error("cannot load kernel {path}: {source} (is the file complete, and an x86_64 kernel?)")]
    LoadKernel {
        path: PathBuf,
        source: loader::Error,
    },
    #[error("cannot open initrd {path}: {source}")]
    OpenInitrd {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "initrd {path} ({size} bytes) does not fit in guest memory below {limit:#x} after the \
         kernel; raise --mem"
    )]
    InitrdTooLarge {
        path: PathBuf,
        size: u64,
        limit: u64,
    },
    #[error("cannot read initrd {path} into guest memory: {source}")]
    ReadInitrd {
        path: PathBuf,
        source: GuestMemoryError,
    },
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    #[error("cannot write boot information to guest memory: {0}")]
    WriteBootInfo(GuestMemoryError),
}

/// Where and how the kernel wants to be entered.
#[derive(Debug)]
pub struct LoadedKernel {
    pub entry: GuestAddress,
    pub mode: EntryMode,
    /// The bzImage's own setup header, to be echoed in the zero page.
    pub setup_header: Option<setup_header>,
    /// First byte after the kernel image.
    pub end: u64,
}

/// An initrd placed in guest memory.
#[derive(Clone, Copy, Debug)]
pub struct LoadedInitrd {
    pub addr: GuestAddress,
    pub size: u64,
}

pub fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<LoadedKernel, BootError> {
    let mut file = File::open(path).map_err(|source| BootError::OpenKernel {
        path: path.to_owned(),
        source,
    })?;
    let load_err = |source| BootError::LoadKernel {
        path: path.to_owned(),
        source,
    };
    let highmem = Some(GuestAddress(HIMEM_START));
    if read_at::<5>(&mut file, 0).is_some_and(|ident| elf32::is_elf32(&ident)) {
        let kernel =
            elf32::load(mem, &mut file, HIMEM_START).map_err(|source| BootError::LoadElf32 {
                path: path.to_owned(),
                source,
            })?;
        return Ok(LoadedKernel {
            entry: kernel.entry,
            mode: EntryMode::Pvh,
            setup_header: None,
            end: kernel.end,
        });
    }
    if is_elf(&mut file) {
        let result = Elf::load(mem, None, &mut GuestFile::new(file), highmem).map_err(load_err)?;
        let (entry, mode) = match result.pvh_boot_cap {
            PvhBootCapability::PvhEntryPresent(entry) => (entry, EntryMode::Pvh),
            _ => (result.kernel_load, EntryMode::Linux64),
        };
        Ok(LoadedKernel {
            entry,
            mode,
            setup_header: None,
            end: result.kernel_end,
        })
    } else if is_bzimage(&mut file) {
        let result =
            BzImage::load(mem, None, &mut GuestFile::new(file), highmem).map_err(load_err)?;
        Ok(LoadedKernel {
            entry: GuestAddress(result.kernel_load.0 + BZIMAGE_64BIT_ENTRY_OFFSET),
            mode: EntryMode::Linux64,
            setup_header: result.setup_header,
            end: result.kernel_end,
        })
    } else {
        Err(BootError::UnknownKernelFormat(path.to_owned()))
    }
}

fn read_at<const N: usize>(file: &mut File, offset: u64) -> Option<[u8; N]> {
    let mut buf = [0u8; N];
    file.seek(SeekFrom::Start(offset)).ok()?;
    file.read_exact(&mut buf).ok()?;
    Some(buf)
}

fn is_elf(file: &mut File) -> bool {
    read_at::<4>(file, 0) == Some(*b"\x7fELF")
}

fn is_bzimage(file: &mut File) -> bool {
    read_at::<4>(file, BZIMAGE_HDRS_OFFSET) == Some(HDRS_MAGIC.to_le_bytes())
}

/// Places the initrd as high in low memory as the kernel allows, page
/// aligned, where the kernel's own decompression will not overwrite it.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_size: u64,
    kernel: &LoadedKernel,
    path: &Path,
) -> Result<LoadedInitrd, BootError> {
    let open_err = |source| BootError::OpenInitrd {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let mut limit = layout::low_ram_end(mem_size);
    if let Some(hdr) = kernel.setup_header.filter(|h| h.initrd_addr_max != 0) {
        limit = limit.min(u64::from(hdr.initrd_addr_max) + 1);
    }
    let too_large = || BootError::InitrdTooLarge {
        path: path.to_owned(),
        size,
        limit,
    };
    let addr = limit.checked_sub(size).ok_or_else(too_large)? & !(PAGE_SIZE - 1);
    if addr < kernel.end {
        return Err(too_large());
    }
    let count = usize::try_from(size).map_err(|_| too_large())?;
    mem.read_exact_volatile_from(GuestAddress(addr), &mut GuestFile::new(file), count)
        .map_err(|source| BootError::ReadInitrd {
            path: path.to_owned(),
            source,
        })?;
    Ok(LoadedInitrd {
        addr: GuestAddress(addr),
        size,
    })
}

/// Writes the NUL-terminated command line where both protocols point.
pub fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &Cmdline) -> Result<(), BootError> {
    loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline).map_err(|e| match e {
        loader::Error::CommandLineOverflow => {
            BootError::Cmdline(linux_loader::cmdline::Error::TooLarge)
        }
        _ => BootError::WriteBootInfo(GuestMemoryError::InvalidGuestAddress(GuestAddress(
            CMDLINE_START,
        ))),
    })
}

/// `boot_params` as guest-memory bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: boot_params is a bindgen-generated repr(C, packed) struct of plain
// integers and arrays of them: every bit pattern is valid and it has no
// padding, so it can be read from and written to guest memory as bytes.
unsafe impl ByteValued for ZeroPage {}

/// Fills the zero page for the Linux 64-bit boot protocol.
pub fn write_zero_page(
    mem: &GuestMemoryMmap,
    memory_map: &[MemoryMapEntry],
    kernel: &LoadedKernel,
    initrd: Option<LoadedInitrd>,
    cmdline_len: usize,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(hdr) = kernel.setup_header {
        params.hdr = hdr;
    } else {
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = u32::try_from(CMDLINE_START).unwrap_or(0);
    params.hdr.cmdline_size = u32::try_from(cmdline_len).unwrap_or(0);
    if let Some(initrd) = initrd {
        // load_initrd keeps the initrd below the 3 GiB hole, so it fits.
        params.hdr.ramdisk_image = u32::try_from(initrd.addr.0).unwrap_or(0);
        params.hdr.ramdisk_size = u32::try_from(initrd.size).unwrap_or(0);
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(memory_map) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    params.e820_entries = u8::try_from(memory_map.len().min(params.e820_table.len())).unwrap_or(0);
    mem.write_obj(ZeroPage(params), GuestAddress(ZERO_PAGE_START))
        .map_err(BootError::WriteBootInfo)
}

/// Fills hvm_start_info, its memory map and module list for PVH entry.
pub fn write_pvh_start_info(
    mem: &GuestMemoryMmap,
    memory_map: &[MemoryMapEntry],
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    let mut info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: 1,
        cmdline_paddr: CMDLINE_START,
        memmap_paddr: PVH_MEMMAP_START,
        memmap_entries: u32::try_from(memory_map.len()).unwrap_or(0),
        ..Default::default()
    };
    for (i, entry) in (0u64..).zip(memory_map) {
        let item = hvm_memmap_table_entry {
            addr: entry.addr,
            size: entry.size,
            type_: entry.kind,
            reserved: 0,
        };
        let at = PVH_MEMMAP_START + i * std::mem::size_of::<hvm_memmap_table_entry>() as u64;
        mem.write_obj(item, GuestAddress(at))
            .map_err(BootError::WriteBootInfo)?;
    }
    if let Some(initrd) = initrd {
        let module = hvm_modlist_entry {
            paddr: initrd.addr.0,
            size: initrd.size,
            ..Default::default()
        };
        mem.write_obj(module, GuestAddress(PVH_MODLIST_START))
            .map_err(BootError::WriteBootInfo)?;
        info.nr_modules = 1;
        info.modlist_paddr = PVH_MODLIST_START;
    }
    mem.write_obj(info, GuestAddress(PVH_INFO_START))
        .map_err(BootError::WriteBootInfo)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 64 << 20)]).unwrap()
    }

    fn elf_kernel() -> LoadedKernel {
        LoadedKernel {
            entry: GuestAddress(HIMEM_START),
            mode: EntryMode::Linux64,
            setup_header: None,
            end: 2 << 20,
        }
    }

    #[test]
    fn zero_page_carries_e820_cmdline_and_initrd() {
        let mem = mem();
        let map = layout::memory_map(64 << 20);
        let initrd = LoadedInitrd {
            addr: GuestAddress(0x300_0000),
            size: 1234,
        };
        write_zero_page(&mem, &map, &elf_kernel(), Some(initrd), 42).unwrap();
        let page: ZeroPage = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        let p = page.0;
        assert_eq!(usize::from(p.e820_entries), map.len());
        let last = p.e820_table[map.len() - 1];
        let (addr, size) = (last.addr, last.size);
        assert_eq!((addr, size), (HIMEM_START, (64 << 20) - HIMEM_START));
        let (ptr, img, len, magic) = (
            p.hdr.cmd_line_ptr,
            p.hdr.ramdisk_image,
            p.hdr.cmdline_size,
            p.hdr.header,
        );
        assert_eq!(
            (ptr, img, len, magic),
            (0x20000, 0x300_0000, 42, HDRS_MAGIC)
        );
        // The zero page is read by raw offsets: check the documented ones.
        let e820_entries: u8 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x1e8)).unwrap();
        let cmd_line_ptr: u32 = mem.read_obj(GuestAddress(ZERO_PAGE_START + 0x228)).unwrap();
        assert_eq!(
            (usize::from(e820_entries), cmd_line_ptr),
            (map.len(), 0x20000)
        );
    }

    #[test]
    fn pvh_start_info_points_at_memmap_and_module() {
        let mem = mem();
        let map = layout::memory_map(64 << 20);
        let initrd = LoadedInitrd {
            addr: GuestAddress(0x300_0000),
            size: 99,
        };
        write_pvh_start_info(&mem, &map, Some(initrd)).unwrap();
        let info: hvm_start_info = mem.read_obj(GuestAddress(PVH_INFO_START)).unwrap();
        assert_eq!(info.magic, XEN_HVM_START_MAGIC);
        assert_eq!(info.memmap_entries as usize, map.len());
        let second: hvm_memmap_table_entry =
            mem.read_obj(GuestAddress(PVH_MEMMAP_START + 24)).unwrap();
        assert_eq!(second.type_, layout::E820_RESERVED);
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(info.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x300_0000, 99));
    }

    #[test]
    fn initrd_goes_high_and_must_fit() {
        let mem = mem();
        let dir = std::env::temp_dir().join(format!("herd-initrd-{}", std::process::id()));
        std::fs::write(&dir, vec![7u8; 10_000]).unwrap();
        let loaded = load_initrd(&mem, 64 << 20, &elf_kernel(), &dir).unwrap();
        assert_eq!(loaded.addr.0 % PAGE_SIZE, 0);
        assert!(loaded.addr.0 + loaded.size <= 64 << 20);
        assert!(loaded.addr.0 + loaded.size + PAGE_SIZE > 64 << 20);
        let small = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 2 << 20)]).unwrap();
        let err = load_initrd(&small, 2 << 20, &elf_kernel(), &dir).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { .. }), "{err}");
        std::fs::remove_file(&dir).unwrap();
    }
}
