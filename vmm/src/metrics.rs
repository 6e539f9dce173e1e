//! What a running VM has done and costs: vCPU exits by kind (per-vCPU
//! atomics, so vCPUs never share a counter's cache line), the virtio
//! devices' counters, and host memory (guest RAM actually touched versus
//! herd's own).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use devices::virtio::block::{BlockCounters, BlockMetrics};
use devices::virtio::net::{NetCounters, NetMetrics};
use kvm_ioctls::VcpuExit;
use serde::Serialize;

/// Exit counters of one vCPU, written only by its own thread.
#[derive(Debug, Default)]
pub struct VcpuExitCounters {
    io_in: AtomicU64,
    io_out: AtomicU64,
    mmio_read: AtomicU64,
    mmio_write: AtomicU64,
    hlt: AtomicU64,
    system_event: AtomicU64,
    /// KVM_RUN returned EINTR/EAGAIN (kicks, pauses, signals).
    interrupted: AtomicU64,
    other: AtomicU64,
}

/// Each counter has one writer (its vCPU thread), so a plain load and
/// store cannot lose a count and, unlike `fetch_add`, costs no locked
/// read-modify-write on every exit.
fn bump(counter: &AtomicU64) {
    counter.store(
        counter.load(Ordering::Relaxed).wrapping_add(1),
        Ordering::Relaxed,
    );
}

impl VcpuExitCounters {
    pub fn count(&self, exit: &VcpuExit) {
        bump(match exit {
            VcpuExit::IoIn(..) => &self.io_in,
            VcpuExit::IoOut(..) => &self.io_out,
            VcpuExit::MmioRead(..) => &self.mmio_read,
            VcpuExit::MmioWrite(..) => &self.mmio_write,
            VcpuExit::Hlt => &self.hlt,
            VcpuExit::SystemEvent(..) | VcpuExit::Shutdown => &self.system_event,
            _ => &self.other,
        });
    }

    pub fn count_interrupted(&self) {
        bump(&self.interrupted);
    }

    pub fn snapshot(&self) -> VcpuExits {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let mut exits = VcpuExits {
            io_in: get(&self.io_in),
            io_out: get(&self.io_out),
            mmio_read: get(&self.mmio_read),
            mmio_write: get(&self.mmio_write),
            hlt: get(&self.hlt),
            system_event: get(&self.system_event),
            interrupted: get(&self.interrupted),
            other: get(&self.other),
            total: 0,
        };
        exits.total = exits.io_in
            + exits.io_out
            + exits.mmio_read
            + exits.mmio_write
            + exits.hlt
            + exits.system_event
            + exits.interrupted
            + exits.other;
        exits
    }
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct VcpuExits {
    pub io_in: u64,
    pub io_out: u64,
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub hlt: u64,
    pub system_event: u64,
    pub interrupted: u64,
    pub other: u64,
    pub total: u64,
}

impl std::ops::AddAssign for VcpuExits {
    fn add_assign(&mut self, o: Self) {
        self.io_in += o.io_in;
        self.io_out += o.io_out;
        self.mmio_read += o.mmio_read;
        self.mmio_write += o.mmio_write;
        self.hlt += o.hlt;
        self.system_event += o.system_event;
        self.interrupted += o.interrupted;
        self.other += o.other;
        self.total += o.total;
    }
}

impl std::iter::Sum for VcpuExits {
    fn sum<I: Iterator<Item = Self>>(iter: I) -> Self {
        iter.fold(Self::default(), |mut sum, exits| {
            sum += exits;
            sum
        })
    }
}

/// Where the numbers come from; cheap to share with the API thread.
#[derive(Default)]
pub struct MetricsSources {
    pub vcpus: Vec<Arc<VcpuExitCounters>>,
    /// Each disk's image path and counters, in slot order.
    pub blocks: Vec<(String, Arc<BlockMetrics>)>,
    /// Each NIC's TAP name and counters.
    pub nets: Vec<(String, Arc<NetMetrics>)>,
    /// Host virtual address ranges [start, end) of guest RAM.
    pub guest_ranges: Vec<(u64, u64)>,
    /// `/proc/self/smaps`, opened before the seccomp filters (which forbid
    /// opening files) and the jail (whose /proc is its own); re-read from
    /// offset 0 it describes the process as it is now.
    pub smaps: Option<std::fs::File>,
}

#[derive(Debug, Serialize)]
pub struct BlockEntry {
    pub path: String,
    #[serde(flatten)]
    pub counters: BlockCounters,
}

#[derive(Debug, Serialize)]
pub struct NetEntry {
    pub tap: String,
    #[serde(flatten)]
    pub counters: NetCounters,
}

/// Host memory, in bytes.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct MemoryUse {
    /// Guest RAM pages the guest has touched (resident on the host).
    pub guest_rss_bytes: u64,
    /// Everything else herd has resident: code, heap, stacks, buffers.
    pub herd_rss_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct Metrics {
    pub vcpu_exits: VcpuExits,
    pub vcpu_exits_per_vcpu: Vec<VcpuExits>,
    pub block: Vec<BlockEntry>,
    pub net: Vec<NetEntry>,
    /// None if /proc/self/smaps could not be read.
    pub memory: Option<MemoryUse>,
}

impl MetricsSources {
    pub fn snapshot(&self) -> Metrics {
        let per_vcpu: Vec<VcpuExits> = self.vcpus.iter().map(|c| c.snapshot()).collect();
        Metrics {
            vcpu_exits: per_vcpu.iter().copied().sum(),
            vcpu_exits_per_vcpu: per_vcpu,
            block: self
                .blocks
                .iter()
                .map(|(path, m)| BlockEntry {
                    path: path.clone(),
                    counters: m.snapshot(),
                })
                .collect(),
            net: self
                .nets
                .iter()
                .map(|(tap, m)| NetEntry {
                    tap: tap.clone(),
                    counters: m.snapshot(),
                })
                .collect(),
            memory: self
                .smaps
                .as_ref()
                .and_then(|file| read_from_start(file).ok())
                .map(|smaps| memory_use(&smaps, &self.guest_ranges)),
        }
    }
}

/// The whole of a /proc file, read with pread(2) from offset 0: no seek
/// position is shared between the threads that read it.
fn read_from_start(file: &std::fs::File) -> std::io::Result<String> {
    use std::os::unix::fs::FileExt;
    let mut text = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = file.read_at(&mut chunk, text.len() as u64)?;
        if n == 0 {
            break;
        }
        text.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8(text).map_err(std::io::Error::other)
}

/// Walks `/proc/PID/smaps` text: calls `field` with each mapping's
/// address range [start, end), a field name ("Rss:") and its value in KiB.
pub fn for_each_smaps_field(smaps: &str, mut field: impl FnMut((u64, u64), &str, u64)) {
    let mut range = (0, 0);
    for line in smaps.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        if !key.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            range = key
                .split_once('-')
                .and_then(|(a, b)| {
                    Some((
                        u64::from_str_radix(a, 16).ok()?,
                        u64::from_str_radix(b, 16).ok()?,
                    ))
                })
                .unwrap_or((0, 0));
            continue;
        }
        let kib: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
        field(range, key, kib);
    }
}

/// Splits the resident set in `smaps` text between mappings that overlap
/// guest RAM and the rest.
pub fn memory_use(smaps: &str, guest_ranges: &[(u64, u64)]) -> MemoryUse {
    let mut use_ = MemoryUse::default();
    for_each_smaps_field(smaps, |(start, end), key, kib| {
        if key != "Rss:" {
            return;
        }
        if guest_ranges.iter().any(|&(s, e)| start < e && s < end) {
            use_.guest_rss_bytes += kib * 1024;
        } else {
            use_.herd_rss_bytes += kib * 1024;
        }
    });
    use_
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smaps_split_between_guest_and_herd() {
        let smaps = "\
7f0000000000-7f0008000000 rw-p 00000000 00:00 0
Size:             131072 kB
Rss:                 400 kB
55d000000000-55d000001000 r-xp 00000000 08:01 123 /usr/bin/herd
Rss:                   4 kB
Pss:                   4 kB
";
        let m = memory_use(smaps, &[(0x7f00_0000_0000, 0x7f00_0800_0000)]);
        assert_eq!(m.guest_rss_bytes, 400 * 1024);
        assert_eq!(m.herd_rss_bytes, 4 * 1024);
    }

    #[test]
    fn exits_are_summed() {
        let c = VcpuExitCounters::default();
        c.count(&VcpuExit::Hlt);
        c.count_interrupted();
        let s = c.snapshot();
        assert_eq!((s.hlt, s.interrupted, s.total), (1, 1, 2));
    }
}
