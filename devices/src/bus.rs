//! Address-range dispatch for port I/O and MMIO exits.
//!
//! The map is built before the vCPUs start and never changes afterwards, so
//! it is shared read-only between vCPU threads; each device sits behind its
//! own `Mutex` and vCPUs touching different devices never contend.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

/// A device that answers reads and writes inside the range it was inserted at.
pub trait BusDevice: Send {
    /// `offset` is relative to the start of the device's range.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    #[error("bus range {base:#x}+{len:#x} is empty or wraps around the address space")]
    InvalidRange { base: u64, len: u64 },
    #[error("bus range {base:#x}+{len:#x} overlaps a device already at {other:#x}")]
    Overlap { base: u64, len: u64, other: u64 },
}

struct BusEntry {
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

/// A set of non-overlapping device ranges.
#[derive(Default)]
pub struct Bus {
    devices: BTreeMap<u64, BusEntry>,
}

impl Bus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Claims `[base, base + len)` for `device`.
    pub fn insert(
        &mut self,
        device: Arc<Mutex<dyn BusDevice>>,
        base: u64,
        len: u64,
    ) -> Result<(), BusError> {
        let end = match base.checked_add(len) {
            Some(end) if len > 0 => end,
            _ => return Err(BusError::InvalidRange { base, len }),
        };
        if let Some((&other, _)) = self.devices.range(..end).next_back().filter(|(&start, e)| {
            // The closest range starting below `end` is the only one that can overlap.
            start + e.len > base
        }) {
            return Err(BusError::Overlap { base, len, other });
        }
        self.devices.insert(base, BusEntry { len, device });
        Ok(())
    }

    fn resolve(&self, addr: u64, access_len: usize) -> Option<(u64, &BusEntry)> {
        let (&start, entry) = self.devices.range(..=addr).next_back()?;
        let offset = addr - start;
        let access_len = u64::try_from(access_len).ok()?;
        // The whole access must fit in the device's range.
        (offset.checked_add(access_len)? <= entry.len).then_some((offset, entry))
    }

    /// Dispatches a read. Returns false, leaving `data` untouched, when no
    /// device claims the address.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write. Returns false when no device claims the address.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr, data.len()) {
            Some((offset, entry)) => {
                lock(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// A device whose lock was poisoned by a panic in another vCPU thread is
/// still usable: device state is plain data and every panic is already fatal
/// to the VM run.
fn lock<'a>(device: &'a Mutex<dyn BusDevice + 'static>) -> MutexGuard<'a, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        last_write: Option<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            for (i, b) in data.iter_mut().enumerate() {
                *b = offset.to_le_bytes()[0].wrapping_add(i.to_le_bytes()[0]);
            }
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.last_write = Some((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_relative_offsets() {
        let dev = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(dev.clone(), 0x3f8, 8).unwrap();
        let mut data = [0u8; 1];
        assert!(bus.read(0x3fa, &mut data));
        assert_eq!(data, [2]);
        assert!(bus.write(0x3ff, &[9]));
        assert_eq!(dev.lock().unwrap().last_write, Some((7, vec![9])));
    }

    #[test]
    fn unclaimed_and_straddling_accesses_miss() {
        let mut bus = Bus::new();
        bus.insert(Arc::new(Mutex::new(Recorder::default())), 0x100, 4)
            .unwrap();
        let mut data = [0xffu8; 4];
        assert!(!bus.read(0xff, &mut data[..1]));
        assert!(!bus.read(0x104, &mut data[..1]));
        // Starts inside, ends outside.
        assert!(!bus.read(0x102, &mut data));
        assert_eq!(data, [0xff; 4]);
        assert!(!bus.write(u64::MAX, &[1, 2]));
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let mut bus = Bus::new();
        let dev = || Arc::new(Mutex::new(Recorder::default()));
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1,
                other: 0x100
            })
        );
        assert!(bus.insert(dev(), 0xf8, 0x10).is_err());
        assert!(bus.insert(dev(), 0x110, 1).is_ok());
        assert!(bus.insert(dev(), 0xff, 1).is_ok());
        assert_eq!(
            bus.insert(dev(), 0x200, 0),
            Err(BusError::InvalidRange {
                base: 0x200,
                len: 0
            })
        );
        assert!(bus.insert(dev(), u64::MAX, 2).is_err());
    }
}
