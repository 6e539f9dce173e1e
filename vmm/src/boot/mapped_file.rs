//! Kernel and initrd contents placed in guest RAM by mapping their files
//! copy-on-write instead of copying them.
//!
//! Copying a 15 MiB vmlinux makes the host fault in, zero and then fill
//! ~3,700 fresh anonymous pages before the guest runs its first instruction
//! (where the host is itself emulated, as in the test host, that was the
//! largest phase of the VM build). A private file mapping over the same
//! guest addresses costs one mmap per segment: the guest reads the page
//! cache directly, and only the pages it writes (data, bss) get copied, by
//! the host kernel, on first write.
//!
//! The loaders (linux-loader's ELF and bzImage loaders, the initrd loader)
//! are unchanged: they read the file through [`MappedFile`], whose
//! [`ReadVolatile`] maps every whole page it can and copies the rest (a
//! segment's first and last partial pages, or everything if the file offset
//! and the guest address are not congruent modulo the page size).
//!
//! The price: a file modified in place (truncated and rewritten, as `cp`
//! does) while a guest booted from it runs changes the guest's view of the
//! pages it has not written. Replace kernels by writing a new file and
//! renaming it over the old one (`install`, `cp --remove-destination`,
//! herd's image store), as for any mapped executable.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;

use vm_memory::bitmap::BitmapSlice;
use vm_memory::volatile_memory::{Error as VolatileMemoryError, VolatileSlice};
use vm_memory::ReadVolatile;

const PAGE_SIZE: u64 = 4096;

/// A kernel or initrd file read into guest memory by mapping.
pub struct MappedFile {
    file: File,
    len: u64,
    pos: u64,
    /// Bytes mapped rather than copied, for the debug log.
    pub mapped: u64,
}

impl MappedFile {
    pub fn new(file: File) -> std::io::Result<Self> {
        let len = file.metadata()?.len();
        Ok(MappedFile {
            file,
            len,
            pos: 0,
            mapped: 0,
        })
    }

    /// Copies `buf` from the file at the current position.
    fn copy<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<(), VolatileMemoryError> {
        self.file
            .seek(SeekFrom::Start(self.pos))
            .map_err(VolatileMemoryError::IOError)?;
        self.file.read_exact_volatile(buf)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Maps `buf.len()` bytes (whole pages) of the file at the current
    /// position over `buf`; false if the kernel refused.
    fn map<B: BitmapSlice>(&mut self, buf: &mut VolatileSlice<B>) -> bool {
        let (Ok(len), Ok(offset)) = (libc::size_t::try_from(buf.len()), i64::try_from(self.pos))
        else {
            return false;
        };
        let guard = buf.ptr_guard_mut();
        let addr = guard.as_ptr().cast::<libc::c_void>();
        // buf is guest RAM: page-aligned here (the caller checked), inside
        // a read-write mapping herd owns for the VM's whole life, and never
        // referenced by Rust (guest memory is only accessed through
        // volatile slices). Replacing its pages with a private, read-write
        // mapping of a file range that exists (checked against the file
        // length by the caller) keeps that memory valid and of the same
        // size; MAP_FIXED never moves it elsewhere.
        // SAFETY: sound for the reasons just given.
        let mapped = unsafe {
            libc::mmap(
                addr,
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_FIXED,
                self.file.as_raw_fd(),
                offset,
            )
        };
        if mapped != addr {
            log::debug!(
                "cannot map {len} bytes of the kernel/initrd file at offset {offset:#x}: {}; copying",
                std::io::Error::last_os_error()
            );
            return false;
        }
        buf.bitmap().mark_dirty(0, buf.len());
        self.pos += buf.len() as u64;
        self.mapped += buf.len() as u64;
        true
    }
}

impl ReadVolatile for MappedFile {
    fn read_volatile<B: BitmapSlice>(
        &mut self,
        buf: &mut VolatileSlice<B>,
    ) -> Result<usize, VolatileMemoryError> {
        let want = (buf.len() as u64).min(self.len.saturating_sub(self.pos));
        let Ok(want_usize) = usize::try_from(want) else {
            return Ok(0);
        };
        if want == 0 {
            return Ok(0);
        }
        let addr = buf.ptr_guard().as_ptr() as u64;
        // Whole pages are mapped only where file offset and address share
        // their offset within a page.
        let head = if addr % PAGE_SIZE == self.pos % PAGE_SIZE {
            ((PAGE_SIZE - addr % PAGE_SIZE) % PAGE_SIZE).min(want)
        } else {
            want
        };
        let body = (want - head) & !(PAGE_SIZE - 1);
        let split = |at: u64, count: u64| {
            buf.subslice(
                usize::try_from(at).unwrap_or(usize::MAX),
                usize::try_from(count).unwrap_or(usize::MAX),
            )
        };
        if head > 0 {
            self.copy(&mut split(0, head)?)?;
        }
        if body > 0 {
            let mut pages = split(head, body)?;
            if !self.map(&mut pages) {
                self.copy(&mut pages)?;
            }
        }
        let tail = want - head - body;
        if tail > 0 {
            self.copy(&mut split(head + body, tail)?)?;
        }
        Ok(want_usize)
    }
}

impl Read for MappedFile {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        self.file.seek(SeekFrom::Start(self.pos))?;
        let n = self.file.read(out)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for MappedFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        self.pos = self.file.seek(to)?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    fn file_with(bytes: &[u8]) -> (std::path::PathBuf, MappedFile) {
        let path = std::env::temp_dir().join(format!(
            "herd-mapped-{}-{}",
            std::process::id(),
            bytes.len()
        ));
        std::fs::write(&path, bytes).unwrap();
        let file = MappedFile::new(File::open(&path).unwrap()).unwrap();
        (path, file)
    }

    #[test]
    fn maps_whole_pages_copies_edges_and_stays_private() {
        let data: Vec<u8> = (0..5 * PAGE_SIZE as usize + 123)
            .map(|i| (i * 7) as u8)
            .collect();
        let (path, mut file) = file_with(&data);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        // Congruent: offset 0x100 of the file to guest 0x10100.
        file.seek(SeekFrom::Start(0x100)).unwrap();
        let len = data.len() - 0x100;
        mem.read_exact_volatile_from(GuestAddress(0x10100), &mut file, len)
            .unwrap();
        assert_eq!(file.mapped, 4 * PAGE_SIZE);
        let mut back = vec![0u8; len];
        mem.read_slice(&mut back, GuestAddress(0x10100)).unwrap();
        assert_eq!(back, data[0x100..]);
        // The rest of the last page is still zero (bss after a segment).
        let mut after = [0xffu8; 16];
        mem.read_slice(&mut after, GuestAddress(0x10100 + len as u64))
            .unwrap();
        assert_eq!(after, [0; 16]);
        // Guest writes stay in the guest.
        mem.write_slice(&[0xee; 8], GuestAddress(0x12000)).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        std::fs::remove_file(path).unwrap();
    }

    #[test]
    fn incongruent_offsets_are_copied() {
        let data: Vec<u8> = (0..3 * PAGE_SIZE as usize)
            .map(|i| (i % 251) as u8)
            .collect();
        let (path, mut file) = file_with(&data);
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap();
        mem.read_exact_volatile_from(GuestAddress(0x2010), &mut file, data.len())
            .unwrap();
        assert_eq!(file.mapped, 0);
        let mut back = vec![0u8; data.len()];
        mem.read_slice(&mut back, GuestAddress(0x2010)).unwrap();
        assert_eq!(back, data);
        std::fs::remove_file(path).unwrap();
    }
}
