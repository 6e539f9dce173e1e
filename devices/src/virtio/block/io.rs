//! The disk image backend: opening and locking the file, and moving bytes
//! between it and guest memory. It works on plain (address, length) lists
//! that the request parser already checked and never sees a descriptor.
//!
//! Transfers are zero-copy: the file is read into, or written from, the
//! guest's own memory through vm-memory's volatile slices.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use vm_memory::{
    GuestAddress, GuestMemory, GuestMemoryError, GuestMemoryMmap, Permissions, ReadVolatile,
    VolatileMemoryError, VolatileSlice, WriteVolatile,
};

use super::{SECTOR_SHIFT, SECTOR_SIZE};

#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open disk {}: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("disk {} is already in use by another VM (locked); a writable disk can only be attached to one VM at a time", path.display())]
    InUse { path: PathBuf },
    #[error("disk {} is attached writable to another VM (locked); a disk can be shared only when every VM attaches it read-only", path.display())]
    InUseWritable { path: PathBuf },
    #[error("cannot lock disk {}: {source}", path.display())]
    Lock { path: PathBuf, source: io::Error },
    #[error("disk {} is not a regular file or a block device", path.display())]
    NotADisk { path: PathBuf },
    #[error("cannot find the size of disk {}: {source}", path.display())]
    Size { path: PathBuf, source: io::Error },
    #[error("{op} of {len} bytes at byte {offset} is beyond the end of disk {} ({capacity} sectors)", path.display())]
    OutOfRange {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        len: u64,
        capacity: u64,
    },
    #[error("disk {} is read-only", path.display())]
    ReadOnly { path: PathBuf },
    #[error("{op} at byte {offset} of disk {} failed: {source}", path.display())]
    Io {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        source: io::Error,
    },
    #[error("{op} at byte {offset} of disk {}: guest buffer {addr:#x}: {source}", path.display())]
    GuestMemory {
        path: PathBuf,
        op: &'static str,
        offset: u64,
        addr: u64,
        source: GuestMemoryError,
    },
}

/// An open, locked disk image.
#[derive(Debug)]
pub struct DiskFile {
    file: File,
    path: PathBuf,
    read_only: bool,
    capacity: u64,
}

impl DiskFile {
    /// Opens `path` and takes an advisory lock on it: shared for read-only
    /// disks (any number of VMs may boot from one base image), exclusive for
    /// writable ones. The lock lives as long as the file is open.
    pub fn open(path: &Path, read_only: bool) -> Result<Self, DiskError> {
        let open_err = |source| DiskError::Open {
            path: path.to_owned(),
            source,
        };
        // Checked before opening too: opening a FIFO would block.
        check_is_disk(path, &std::fs::metadata(path).map_err(open_err)?)?;
        let mut file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(open_err)?;
        // And after, in case the path was swapped in between.
        check_is_disk(path, &file.metadata().map_err(open_err)?)?;
        lock(&file, path, read_only)?;
        // Seeking works for block devices too, whose metadata length is 0.
        let size = file
            .seek(SeekFrom::End(0))
            .map_err(|source| DiskError::Size {
                path: path.to_owned(),
                source,
            })?;
        let tail = size % SECTOR_SIZE;
        if tail != 0 {
            log::warn!(
                "disk {} is {size} bytes, not a multiple of {SECTOR_SIZE}; the guest will not see its last {tail} bytes",
                path.display()
            );
        }
        Ok(DiskFile {
            file,
            path: path.to_owned(),
            read_only,
            capacity: size >> SECTOR_SHIFT,
        })
    }

    /// Size in 512-byte sectors.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Fills the guest buffers, in order, from the disk starting at byte
    /// `offset`. Returns the number of bytes copied.
    pub fn read_to_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<u64, DiskError> {
        let len = self.seek_checked(Op::Read, offset, bufs)?;
        for &buf in bufs {
            self.for_each_slice(mem, Op::Read, offset, buf, |mut file, slice| {
                file.read_exact_volatile(slice)
            })?;
        }
        Ok(len)
    }

    /// Writes the guest buffers, in order, to the disk starting at byte
    /// `offset`.
    pub fn write_from_guest(
        &mut self,
        mem: &GuestMemoryMmap,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<(), DiskError> {
        if self.read_only {
            return Err(DiskError::ReadOnly {
                path: self.path.clone(),
            });
        }
        self.seek_checked(Op::Write, offset, bufs)?;
        for &buf in bufs {
            self.for_each_slice(mem, Op::Write, offset, buf, |mut file, slice| {
                file.write_all_volatile(slice)
            })?;
        }
        Ok(())
    }

    /// Makes completed writes durable (`fdatasync`).
    pub fn flush(&mut self) -> Result<(), DiskError> {
        if self.read_only {
            return Ok(());
        }
        self.file.sync_data().map_err(|source| DiskError::Io {
            path: self.path.clone(),
            op: "flush",
            offset: 0,
            source,
        })
    }

    /// Checks that the transfer stays inside the disk (so a write never
    /// grows the file) and positions the file at `offset`.
    fn seek_checked(
        &mut self,
        op: Op,
        offset: u64,
        bufs: &[(GuestAddress, u32)],
    ) -> Result<u64, DiskError> {
        let len: u64 = bufs.iter().map(|&(_, l)| u64::from(l)).sum();
        let fits = offset
            .checked_add(len)
            .zip(self.capacity.checked_mul(SECTOR_SIZE))
            .is_some_and(|(end, size)| end <= size);
        if !fits {
            return Err(DiskError::OutOfRange {
                path: self.path.clone(),
                op: op.name(),
                offset,
                len,
                capacity: self.capacity,
            });
        }
        self.file
            .seek(SeekFrom::Start(offset))
            .map_err(|source| DiskError::Io {
                path: self.path.clone(),
                op: op.name(),
                offset,
                source,
            })?;
        Ok(len)
    }

    /// Runs `f` on each host-contiguous piece of a guest buffer (a buffer can
    /// span two adjacent guest memory regions).
    fn for_each_slice<F>(
        &self,
        mem: &GuestMemoryMmap,
        op: Op,
        offset: u64,
        (addr, len): (GuestAddress, u32),
        mut f: F,
    ) -> Result<(), DiskError>
    where
        F: FnMut(&File, &mut VolatileSlice<'_, ()>) -> Result<(), VolatileMemoryError>,
    {
        let guest_err = |source| DiskError::GuestMemory {
            path: self.path.clone(),
            op: op.name(),
            offset,
            addr: addr.0,
            source,
        };
        let len = usize::try_from(len)
            .map_err(|_| guest_err(GuestMemoryError::InvalidGuestAddress(addr)))?;
        for slice in mem.get_slices(addr, len, op.access()).map_err(guest_err)? {
            let mut slice = slice.map_err(guest_err)?;
            f(&self.file, &mut slice).map_err(|e| match e {
                VolatileMemoryError::IOError(source) => DiskError::Io {
                    path: self.path.clone(),
                    op: op.name(),
                    offset,
                    source,
                },
                other => guest_err(GuestMemoryError::from(other)),
            })?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
enum Op {
    Read,
    Write,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
        }
    }

    /// What the transfer does to guest memory: a disk read writes it.
    fn access(self) -> Permissions {
        match self {
            Op::Read => Permissions::Write,
            Op::Write => Permissions::Read,
        }
    }
}

fn check_is_disk(path: &Path, meta: &std::fs::Metadata) -> Result<(), DiskError> {
    let file_type = meta.file_type();
    if file_type.is_file() || file_type.is_block_device() {
        Ok(())
    } else {
        Err(DiskError::NotADisk {
            path: path.to_owned(),
        })
    }
}

fn lock(file: &File, path: &Path, read_only: bool) -> Result<(), DiskError> {
    let mode = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // flock takes a file descriptor that `file` keeps open for the
    // whole call and an integer; it touches no memory of ours.
    // SAFETY: sound for the reasons just given.
    let ret = unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) };
    if ret == 0 {
        return Ok(());
    }
    let source = io::Error::last_os_error();
    let path = path.to_owned();
    Err(match source.raw_os_error() {
        Some(libc::EWOULDBLOCK) if read_only => DiskError::InUseWritable { path },
        Some(libc::EWOULDBLOCK) => DiskError::InUse { path },
        _ => DiskError::Lock { path, source },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::block::test_utils::{guest_memory, TempDisk};
    use vm_memory::Bytes;

    #[test]
    fn writable_disks_are_exclusive_read_only_disks_shared() {
        let disk = TempDisk::new(&[0u8; 4096]);
        let a = DiskFile::open(disk.path(), false).unwrap();
        let err = DiskFile::open(disk.path(), false).unwrap_err();
        assert!(matches!(err, DiskError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("already in use by another VM"));
        let err = DiskFile::open(disk.path(), true).unwrap_err();
        assert!(matches!(err, DiskError::InUseWritable { .. }), "{err}");
        drop(a);

        let r1 = DiskFile::open(disk.path(), true).unwrap();
        let r2 = DiskFile::open(disk.path(), true).unwrap();
        assert!(r1.is_read_only() && r2.is_read_only());
        assert!(matches!(
            DiskFile::open(disk.path(), false),
            Err(DiskError::InUse { .. })
        ));
        drop((r1, r2));
        DiskFile::open(disk.path(), false).unwrap();
    }

    #[test]
    fn capacity_rounds_down_and_missing_files_fail() {
        let disk = TempDisk::new(&[0u8; 1500]);
        assert_eq!(DiskFile::open(disk.path(), true).unwrap().capacity(), 2);
        let err = DiskFile::open(Path::new("/nonexistent/herd.img"), true).unwrap_err();
        assert!(err.to_string().contains("/nonexistent/herd.img"), "{err}");
        let err = DiskFile::open(&std::env::temp_dir(), true).unwrap_err();
        assert!(matches!(err, DiskError::NotADisk { .. }), "{err}");
    }

    #[test]
    fn reads_writes_and_flushes_through_guest_memory() {
        let contents: Vec<u8> = (0..2048u32).map(|i| (i % 251) as u8).collect();
        let disk = TempDisk::new(&contents);
        let mut f = DiskFile::open(disk.path(), false).unwrap();
        let mem = guest_memory();
        // The second buffer crosses the boundary between the two regions.
        let split = crate::virtio::block::test_utils::REGION_SPLIT;
        let bufs = [
            (GuestAddress(0x6000), 512),
            (GuestAddress(split - 100), 512),
        ];
        assert_eq!(f.read_to_guest(&mem, 512, &bufs).unwrap(), 1024);
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(split - 100)).unwrap();
        assert_eq!(got, contents[1024..1536]);

        mem.write_slice(&[0xab; 512], GuestAddress(0x6000)).unwrap();
        f.write_from_guest(&mem, 1536, &bufs[..1]).unwrap();
        f.flush().unwrap();
        let on_disk = std::fs::read(disk.path()).unwrap();
        assert_eq!(on_disk[1536..], [0xab; 512]);
        assert_eq!(on_disk.len(), 2048);

        // Never past the end: the file must not grow.
        let err = f.write_from_guest(&mem, 1536, &bufs).unwrap_err();
        assert!(matches!(err, DiskError::OutOfRange { .. }), "{err}");
        assert!(f.read_to_guest(&mem, u64::MAX, &bufs).is_err());
        assert_eq!(std::fs::metadata(disk.path()).unwrap().len(), 2048);
    }

    #[test]
    fn read_only_disks_refuse_writes() {
        let disk = TempDisk::new(&[0u8; 1024]);
        let mut f = DiskFile::open(disk.path(), true).unwrap();
        let mem = guest_memory();
        let err = f
            .write_from_guest(&mem, 0, &[(GuestAddress(0x6000), 512)])
            .unwrap_err();
        assert!(matches!(err, DiskError::ReadOnly { .. }));
        f.flush().unwrap();
    }
}
