//! What confinement costs: spawn -> first serial byte and spawn -> exit,
//! and the memory added, with neither jail nor seccomp, with seccomp only
//! and with both (herd's default as root).

use std::path::Path;

use super::{herd_command_with, runs, smaps, time_first_byte_and_exit, wait_spinning, Row};

const MODES: [(&str, &[&str]); 3] = [
    ("no jail, no seccomp", &["--no-jail", "--no-seccomp"]),
    ("seccomp only", &["--no-jail"]),
    ("jail + seccomp (default)", &[]),
];

/// The jailed VM runs in a child of herd (the supervisor).
fn child_of(pid: u32) -> Option<u32> {
    std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"))
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

pub(super) fn rows(kernel: &Path, rows: &mut Vec<Row>) -> Result<(), String> {
    for (mode, flags) in MODES {
        let mut first = Row::new(format!("{mode}: spawn -> first serial byte"), "ms");
        let mut exit = Row::new(format!("{mode}: spawn -> exit"), "ms");
        let mut private = Row::new(
            // PSS: after fork the two processes share copy-on-write pages,
            // which private-dirty counts for neither.
            format!("{mode}: PSS of VM process + supervisor, minus guest RAM"),
            "KiB",
        );
        for _ in 0..runs() {
            let (f, e) = time_first_byte_and_exit(herd_command_with(kernel, "reset", None, flags))?;
            first.samples.push(f);
            exit.samples.push(e);

            let mut child = herd_command_with(kernel, "spin", None, flags)
                .spawn()
                .map_err(|e| e.to_string())?;
            wait_spinning(&mut child)?;
            let herd = child.id();
            let measured = match child_of(herd) {
                Some(vm) => smaps::read(vm, &super::guest_sizes_kib()).and_then(|vm| {
                    smaps::read(herd, &[]).map(|sup| vm.vmm_pss_kib + sup.vmm_pss_kib)
                }),
                None => smaps::read(herd, &super::guest_sizes_kib()).map(|m| m.vmm_pss_kib),
            };
            // SIGTERM, so a jailed herd removes its jail directory.
            if let Ok(pid) = libc::pid_t::try_from(herd) {
                // SAFETY: kill(2) on our own, not yet reaped, child.
                unsafe { libc::kill(pid, libc::SIGTERM) };
            }
            let _ = child.wait();
            private.samples.push(measured? as f64);
        }
        rows.extend([first, exit, private]);
    }
    Ok(())
}
