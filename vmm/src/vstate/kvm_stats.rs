//! KVM's own per-vCPU counters (KVM_GET_STATS_FD, Linux 5.14+): every exit
//! KVM handled, including the ones herd never sees (CPUID, MSRs, page
//! faults, interrupt windows), by kind. The boot report shows them up to
//! the guest's first userspace instruction, which is where boot time goes.

use std::collections::BTreeMap;
use std::fs::File;
use std::os::fd::FromRawFd;
use std::os::unix::fs::FileExt;
use std::sync::Arc;

use kvm_ioctls::VcpuFd;
use serde::Serialize;
use vmm_sys_util::ioctl::ioctl;
use vmm_sys_util::ioctl_io_nr;

use crate::metrics::{VcpuExitCounters, VcpuExits};

const KVMIO: u32 = 0xAE;
ioctl_io_nr!(KVM_GET_STATS_FD, KVMIO, 0xce);

/// kvm_stats_desc flags: type in bits 3:0, unit in 7:4.
const STATS_TYPE_MASK: u32 = 0xf;
const STATS_TYPE_CUMULATIVE: u32 = 0;
const STATS_UNIT_MASK: u32 = 0xf0;
const STATS_UNIT_NONE: u32 = 0;
/// Fixed part of kvm_stats_desc before its name.
const DESC_FIXED_LEN: usize = 16;
const HEADER_LEN: usize = 24;

/// One vCPU's stats file and where each plain counter sits in it.
pub struct KvmStats {
    file: File,
    /// (name, byte offset of its u64 value in the file)
    counters: Vec<(String, u64)>,
    /// The file range holding every counter, read in one go: a snapshot is
    /// taken on the vCPU thread when the guest reaches init, so it must not
    /// cost a system call per counter.
    span: (u64, usize),
}

fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at + 4)?.try_into().ok()?))
}

fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at + 2)?.try_into().ok()?))
}

impl KvmStats {
    /// None when this KVM has no binary stats (older kernels): the report
    /// then shows herd's own exit counts only.
    pub fn open(vcpu: &VcpuFd) -> Option<KvmStats> {
        // SAFETY: KVM_GET_STATS_FD takes no argument and returns a new fd
        // or a negative error; it touches no memory of ours.
        let fd = unsafe { ioctl(vcpu, KVM_GET_STATS_FD()) };
        if fd < 0 {
            log::debug!(
                "KVM_GET_STATS_FD: {}: no KVM exit counts in the boot report",
                std::io::Error::last_os_error()
            );
            return None;
        }
        // SAFETY: the ioctl just returned this fd to us; nobody else owns it.
        let file = unsafe { File::from_raw_fd(fd) };
        let mut header = [0u8; HEADER_LEN];
        file.read_exact_at(&mut header, 0).ok()?;
        let name_size = u32_at(&header, 4)? as usize;
        let num_desc = u32_at(&header, 8)? as usize;
        let desc_offset = u64::from(u32_at(&header, 16)?);
        let data_offset = u64::from(u32_at(&header, 20)?);
        let desc_len = DESC_FIXED_LEN + name_size;
        let mut descs = vec![0u8; desc_len.checked_mul(num_desc)?];
        file.read_exact_at(&mut descs, desc_offset).ok()?;
        let counters = descs
            .chunks_exact(desc_len)
            .filter_map(|d| {
                let flags = u32_at(d, 0)?;
                let size = u16_at(d, 6)?;
                let offset = u32_at(d, 8)?;
                let plain = flags & STATS_TYPE_MASK == STATS_TYPE_CUMULATIVE
                    && flags & STATS_UNIT_MASK == STATS_UNIT_NONE
                    && size == 1;
                let name = &d[DESC_FIXED_LEN..];
                let name = &name[..name.iter().position(|&b| b == 0).unwrap_or(name.len())];
                plain.then(|| {
                    (
                        String::from_utf8_lossy(name).into_owned(),
                        data_offset + u64::from(offset),
                    )
                })
            })
            .collect::<Vec<_>>();
        let start = counters.iter().map(|&(_, at)| at).min()?;
        let end = counters.iter().map(|&(_, at)| at + 8).max()?;
        // A few KiB in practice; anything huge is not a stats file.
        let len = usize::try_from(end - start)
            .ok()
            .filter(|&l| l <= 1 << 20)?;
        let span = (start, len);
        Some(KvmStats {
            file,
            counters,
            span,
        })
    }

    /// Adds this vCPU's nonzero counters into `into`.
    pub fn add_to(&self, into: &mut BTreeMap<String, u64>) {
        let (start, len) = self.span;
        let mut values = vec![0u8; len];
        if self.file.read_exact_at(&mut values, start).is_err() {
            return;
        }
        for (name, at) in &self.counters {
            let Some(v) = usize::try_from(at - start)
                .ok()
                .and_then(|i| values.get(i..i + 8))
                .and_then(|b| b.try_into().ok())
                .map(u64::from_ne_bytes)
            else {
                continue;
            };
            if v != 0 {
                *into.entry(name.clone()).or_default() += v;
            }
        }
    }
}

/// Every vCPU's exit counts: herd's own (exits that reached userspace) and
/// KVM's (all of them), readable from any thread.
#[derive(Default)]
pub struct ExitTally {
    pub herd: Vec<Arc<VcpuExitCounters>>,
    pub kvm: Vec<KvmStats>,
}

/// Exit counts at one moment, summed over the vCPUs.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct ExitsSnapshot {
    /// Exits handled by herd, by kind.
    pub herd: VcpuExits,
    /// KVM's counters (`exits` is every VM exit; see Documentation/virt/kvm/api.rst,
    /// KVM_GET_STATS_FD); empty when the kernel has no binary stats.
    pub kvm: BTreeMap<String, u64>,
}

impl ExitTally {
    pub fn snapshot(&self) -> ExitsSnapshot {
        let mut snap = ExitsSnapshot {
            herd: self.herd.iter().map(|c| c.snapshot()).sum(),
            kvm: BTreeMap::new(),
        };
        for stats in &self.kvm {
            stats.add_to(&mut snap.kvm);
        }
        snap
    }
}
