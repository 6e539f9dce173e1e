//! Boot-loader target: the kernel file (ELF64 vmlinux, 32-bit PVH ELF or
//! bzImage, whichever the bytes look like) and an initrd go through herd's
//! loaders into guest RAM, then the zero page or PVH start info is written,
//! as `herd run` does. Kernel and initrd are user files, not guest bytes,
//! but a hostile image must get an error, never a crash.

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd};
use std::path::PathBuf;
use std::sync::OnceLock;

use vm_memory::{GuestAddress, GuestMemoryMmap};
use vmm::arch::x86_64::layout::memory_map;
use vmm::arch::x86_64::regs::EntryMode;
use vmm::boot::{load_initrd, load_kernel, write_pvh_start_info, write_zero_page};

use crate::input::Input;

/// Guest RAM for the loaders: big enough for a small kernel at 1 MiB and an
/// initrd below the top.
pub const MEM_SIZE: u64 = 8 << 20;
/// Longest initrd an input can carry.
const MAX_INITRD: usize = 64 * 1024;

fn guest_memory() -> &'static GuestMemoryMmap {
    static MEM: OnceLock<GuestMemoryMmap> = OnceLock::new();
    MEM.get_or_init(|| {
        let size = usize::try_from(MEM_SIZE).unwrap_or(0);
        match GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)]) {
            Ok(mem) => mem,
            Err(e) => panic!("fuzz harness: cannot map guest memory: {e}"),
        }
    })
}

/// An anonymous in-memory file with `contents`, and the path that opens it.
fn memfd(contents: &[u8]) -> (File, PathBuf) {
    // SAFETY: the name is a NUL-terminated literal; the result is checked.
    let fd = unsafe { libc::memfd_create(c"herd-fuzz".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        panic!(
            "fuzz harness: memfd_create: {}",
            std::io::Error::last_os_error()
        );
    }
    // SAFETY: fd is a fresh descriptor nothing else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    if let Err(e) = file.write_all(contents) {
        panic!("fuzz harness: writing a memfd: {e}");
    }
    let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
    (file, path)
}

/// Input: a little-endian u16 initrd length, that many initrd bytes, then
/// the kernel image.
pub fn boot_loader(data: &[u8]) {
    let _ = boot_loader_outcome(data);
}

/// Whether the kernel loaded and, if so, whether the initrd did.
pub fn boot_loader_outcome(data: &[u8]) -> Option<bool> {
    let mut input = Input::new(data);
    let initrd_len = usize::from(input.u16()).min(MAX_INITRD);
    let initrd = input.bytes(initrd_len);
    let kernel = input.rest();
    let mem = guest_memory();
    let (_kernel_file, kernel_path) = memfd(kernel);
    let loaded = load_kernel(mem, &kernel_path).ok()?;
    let (_initrd_file, initrd_path) = memfd(initrd);
    let initrd = load_initrd(mem, MEM_SIZE, &loaded, &initrd_path).ok();
    let map = memory_map(MEM_SIZE);
    let _ = match loaded.mode {
        EntryMode::Pvh => write_pvh_start_info(mem, &map, initrd),
        _ => write_zero_page(mem, &map, &loaded, initrd, 64),
    };
    Some(initrd.is_some())
}
