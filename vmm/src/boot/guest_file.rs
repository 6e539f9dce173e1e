//! Kernel and initrd contents copied into guest RAM backed by huge pages.
//!
//! Every 4 KiB guest page a Linux guest touches first costs a nested page
//! fault (a VM exit) unless the host backs it with a 2 MiB page, which KVM
//! then maps whole. The kernel image and the initrd are written in full
//! before the guest starts, so asking for huge pages exactly there costs no
//! extra memory and saves the guest ~3,700 faults on its way to init (the
//! rest of guest RAM keeps the host's default, so small guests stay small:
//! a probe guest of a few KiB gets no huge page at all).
//!
//! Measured and rejected (benches/RESULTS.md): mapping the files
//! copy-on-write instead of copying them. It removed the copy (~7 ms
//! instead of ~110-200 ms for herd's vmlinux in the emulated test host),
//! but page-cache pages are 4 KiB: the guest then took ~7,500 nested page
//! faults to init instead of ~20, and reached init later.
//!
//! The loaders (linux-loader's ELF and bzImage loaders, the initrd loader)
//! are unchanged: they read the file through [`GuestFile`], whose
//! [`ReadVolatile`] advises huge pages over each destination before
//! copying into it.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};

use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::{Error as VolatileMemoryError, VolatileSlice};
use vm_memory::ReadVolatile;

use crate::vstate::memory::HUGE_PAGE;

/// A kernel or initrd file being read into guest memory.
pub struct GuestFile {
    file: File,
}

impl GuestFile {
    pub fn new(file: File) -> Self {
        GuestFile { file }
    }
}

/// Asks the host for huge pages over the 2 MiB pages that [addr, addr + len)
/// covers completely (those cost no memory beyond what is written anyway):
/// a hint, so failure (no THP on this host) is ignored.
fn advise_huge_pages(addr: usize, len: usize) {
    let start = addr.next_multiple_of(HUGE_PAGE);
    let end = (addr + len) & !(HUGE_PAGE - 1);
    let Some(span) = end.checked_sub(start).filter(|&s| s > 0) else {
        return;
    };
    // madvise only changes how the kernel backs this range of guest RAM
    // (which herd maps for the VM's whole life, 2 MiB aligned: see
    // vstate/memory.rs), inside the slice being written; it never unmaps
    // or moves memory.
    // SAFETY: sound for the reasons just given.
    let rc = unsafe { libc::madvise(start as *mut libc::c_void, span, libc::MADV_HUGEPAGE) };
    if rc != 0 {
        log::debug!(
            "madvise(MADV_HUGEPAGE) over guest RAM: {}",
            std::io::Error::last_os_error()
        );
    }
}

impl ReadVolatile for GuestFile {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        advise_huge_pages(buf.ptr_guard().as_ptr() as usize, buf.len());
        self.file.read_volatile(buf)
    }
}

impl Read for GuestFile {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.file.read(out)
    }
}

impl Seek for GuestFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.file.seek(to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    #[test]
    fn copies_exactly_the_file_range() {
        let data: Vec<u8> = (0u32..3 * 4096 + 123)
            .map(|i| i.wrapping_mul(7).to_le_bytes()[0])
            .collect();
        let path = std::env::temp_dir().join(format!("herd-guest-file-{}", std::process::id()));
        std::fs::write(&path, &data).unwrap();
        let mut file = GuestFile::new(File::open(&path).unwrap());
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 4 << 20)]).unwrap();
        file.seek(SeekFrom::Start(0x100)).unwrap();
        let len = data.len() - 0x100;
        mem.read_exact_volatile_from(GuestAddress(0x20_0100), &mut file, len)
            .unwrap();
        let mut back = vec![0u8; len + 16];
        mem.read_slice(&mut back, GuestAddress(0x20_0100)).unwrap();
        assert_eq!(back[..len], data[0x100..]);
        assert_eq!(back[len..], [0; 16]);
        std::fs::remove_file(path).unwrap();
    }
}
