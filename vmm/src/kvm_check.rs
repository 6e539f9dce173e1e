//! Can this host's KVM run a Linux guest? Some KVMs (nested, emulating
//! ones such as kvm_pvm) run simple guests but fail a Linux kernel early:
//! an instruction they cannot emulate (`lock cmpxchg16b`, used by SLUB) or
//! its first interrupt. A tiny 64-bit guest doing both tells the two kinds
//! of host apart, so herd can say so plainly instead of reporting a crash.

use std::sync::mpsc;
use std::time::Duration;

use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::regs::EntryMode;
use crate::vstate::{vcpu::Vcpu, vm};

const CODE_ADDR: u64 = 0x1000;
/// Everything the check guest touches: code, IDT, boot GDT and page tables.
const CHECK_MEM_SIZE: u64 = 0x10_0000;
const REPORT_PORT: u16 = 0x80;
const REPORT_VALUE: u8 = 0x2a;

/// The check guest, assembled from guest-images/probes/irq-check.S (see
/// there): `lock cmpxchg16b`, then one PIT interrupt through an IDT gate;
/// success is 0x2a written to port 0x80.
pub const IRQ_PROBE: [u8; 138] = [
    0xfa, 0x48, 0xc7, 0xc6, 0x00, 0x30, 0x00, 0x00, 0x31, 0xc0, 0x31, 0xd2, 0x31, 0xdb, 0x31, 0xc9,
    0xf0, 0x48, 0x0f, 0xc7, 0x0e, 0x48, 0x8d, 0x05, 0x58, 0x00, 0x00, 0x00, 0x48, 0xc7, 0xc7, 0x00,
    0x22, 0x00, 0x00, 0x66, 0x89, 0x07, 0x66, 0xc7, 0x47, 0x02, 0x08, 0x00, 0x66, 0xc7, 0x47, 0x04,
    0x00, 0x8e, 0x48, 0xc1, 0xe8, 0x10, 0x66, 0x89, 0x47, 0x06, 0x48, 0xc1, 0xe8, 0x10, 0x89, 0x47,
    0x08, 0xc7, 0x47, 0x0c, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x01, 0x1d, 0x31, 0x00, 0x00, 0x00, 0xb0,
    0x11, 0xe6, 0x20, 0xb0, 0x20, 0xe6, 0x21, 0xb0, 0x04, 0xe6, 0x21, 0xb0, 0x01, 0xe6, 0x21, 0xb0,
    0xfe, 0xe6, 0x21, 0xb0, 0x34, 0xe6, 0x43, 0xb0, 0x00, 0xe6, 0x40, 0xb0, 0x10, 0xe6, 0x40, 0xfb,
    0xf3, 0x90, 0xeb, 0xfc, 0xb0, 0x2a, 0xe6, 0x80, 0xeb, 0xfa, 0x66, 0x0f, 0x1f, 0x44, 0x00, 0x00,
    0xff, 0x0f, 0x00, 0x20, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
];

/// Ok when a guest receives a timer interrupt within `timeout`; otherwise
/// what went wrong.
pub fn check_interrupt_delivery(timeout: Duration) -> Result<(), String> {
    let kvm = Kvm::new().map_err(|e| format!("cannot open /dev/kvm: {e}"))?;
    let vm_fd = vm::create_vm(&kvm).map_err(|e| e.to_string())?;
    let size = usize::try_from(CHECK_MEM_SIZE).map_err(|e| e.to_string())?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size)])
        .map_err(|e| format!("cannot map test guest memory: {e}"))?;
    mem.write_slice(&IRQ_PROBE, GuestAddress(CODE_ADDR))
        .map_err(|e| e.to_string())?;
    vm::register_memory(&kvm, &vm_fd, &mem).map_err(|e| e.to_string())?;
    vm::setup_irqchip(&vm_fd).map_err(|e| e.to_string())?;
    let vcpu = Vcpu::new(&vm_fd, 0).map_err(|e| e.to_string())?;
    let cpuid = crate::vstate::vcpu::supported_cpuid(&kvm).map_err(|e| e.to_string())?;
    // Linux's own entry state: long mode, identity-mapped, interrupts off.
    let boot = (&mem, EntryMode::Linux64, GuestAddress(CODE_ADDR));
    vcpu.configure(&cpuid, 1, Some(boot))
        .map_err(|e| e.to_string())?;
    let mut fd = vcpu.into_fd();

    let (tx, rx) = mpsc::channel();
    // A thread stuck in KVM_RUN is abandoned on timeout; the VM and its
    // memory move into it so they outlive it.
    std::thread::Builder::new()
        .name("herd-kvm-check".into())
        .spawn(move || {
            let _keep = (vm_fd, mem);
            let verdict = loop {
                match fd.run() {
                    Ok(VcpuExit::IoOut(REPORT_PORT, [REPORT_VALUE])) => break Ok(()),
                    Ok(VcpuExit::IoOut(..) | VcpuExit::Intr) => {}
                    Ok(VcpuExit::InternalError) => {
                        break Err("KVM could not run a test guest doing what Linux does \
                                   early (lock cmpxchg16b, a timer interrupt): \
                                   KVM_EXIT_INTERNAL_ERROR"
                            .to_owned())
                    }
                    Ok(other) => break Err(format!("unexpected exit {other:?}")),
                    Err(e) if e.errno() == libc::EINTR => {}
                    Err(e) => break Err(format!("KVM_RUN failed: {e}")),
                }
            };
            let _ = tx.send(verdict);
        })
        .map_err(|e| format!("cannot start the check thread: {e}"))?;
    rx.recv_timeout(timeout).unwrap_or_else(|_| {
        Err(format!(
            "no timer interrupt reached the guest within {} ms",
            timeout.as_millis()
        ))
    })
}
