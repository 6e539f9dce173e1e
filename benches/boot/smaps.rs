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
    let mut is_guest = false;
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(key) = fields.next() else { continue };
        if !key.ends_with(':') {
            // A mapping header: "start-end perms offset dev inode [path]".
            is_guest = key
                .split_once('-')
                .and_then(|(a, b)| {
                    let a = u64::from_str_radix(a, 16).ok()?;
                    let b = u64::from_str_radix(b, 16).ok()?;
                    Some((b - a) / 1024)
                })
                .is_some_and(|kib| guest_sizes_kib.contains(&kib));
            continue;
        }
        let value: u64 = fields.next().and_then(|v| v.parse().ok()).unwrap_or(0);
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
    }
    Ok(total)
}
