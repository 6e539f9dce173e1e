//! Reads a process's memory use from /proc/PID/smaps, with the guest RAM
//! mappings (recognised by their exact sizes) set apart from the VMM's own.

#[derive(Clone, Copy, Debug, Default)]
pub struct MemoryUse {
    pub vmm_rss_kib: u64,
    pub vmm_pss_kib: u64,
    pub vmm_private_dirty_kib: u64,
    pub vmm_private_clean_kib: u64,
    pub vmm_shared_kib: u64,
    pub guest_rss_kib: u64,
    pub total_pss_kib: u64,
}

/// `guest_sizes_kib`: the sizes of herd's guest RAM mappings.
pub fn read(pid: u32, guest_sizes_kib: &[u64]) -> Result<MemoryUse, String> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|e| format!("read smaps of {pid}: {e}"))?;
    let mut total = MemoryUse::default();
    vmm::metrics::for_each_smaps_field(&text, |(start, end), key, value| {
        let is_guest = guest_sizes_kib.contains(&((end - start) / 1024));
        match (key, is_guest) {
            ("Pss:", _) => total.total_pss_kib += value,
            ("Rss:", true) => total.guest_rss_kib += value,
            ("Rss:", false) => total.vmm_rss_kib += value,
            ("Private_Dirty:", false) => total.vmm_private_dirty_kib += value,
            ("Private_Clean:", false) => total.vmm_private_clean_kib += value,
            ("Shared_Clean:" | "Shared_Dirty:", false) => total.vmm_shared_kib += value,
            _ => {}
        }
        if key == "Pss:" && !is_guest {
            total.vmm_pss_kib += value;
        }
    });
    Ok(total)
}
