//! The floor: the least a process can do to get a byte out of a KVM guest.
//! One VM, one memory slot of the guest's size, one vCPU in real mode
//! running `mov al,'F'; mov dx,0x3f8; out dx,al`; the byte is printed and
//! the process exits. herd's costs are measured against this.

use std::io::Write;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};

const CODE_ADDR: u64 = 0x1000;
/// mov al,'F' ; mov dx,0x3f8 ; out dx,al ; hlt
const CODE: [u8; 8] = [0xb0, b'F', 0xba, 0xf8, 0x03, 0xee, 0xf4, 0xf4];

pub fn run(mem_mib: u64) -> Result<(), String> {
    let size = usize::try_from(mem_mib << 20).map_err(|e| e.to_string())?;
    let kvm = Kvm::new().map_err(|e| format!("open /dev/kvm: {e}"))?;
    let vm = kvm.create_vm().map_err(|e| format!("create VM: {e}"))?;
    // SAFETY: anonymous private mapping, no existing memory is touched.
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if host == libc::MAP_FAILED {
        return Err("mmap failed".into());
    }
    let code_at = usize::try_from(CODE_ADDR).map_err(|e| e.to_string())?;
    // the mapping is `size` bytes (at least 16 MiB), CODE fits at
    // offset 0x1000, and nothing else references the mapping yet.
    // SAFETY: sound for the reasons just given.
    unsafe {
        std::ptr::copy_nonoverlapping(CODE.as_ptr(), host.cast::<u8>().add(code_at), CODE.len());
    }
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: size as u64,
        userspace_addr: host as u64,
    };
    // SAFETY: the mapping outlives the VM: the process exits right after.
    unsafe { vm.set_user_memory_region(region) }.map_err(|e| format!("memory slot: {e}"))?;
    let mut vcpu = vm.create_vcpu(0).map_err(|e| format!("create vCPU: {e}"))?;
    let mut sregs = vcpu.get_sregs().map_err(|e| e.to_string())?;
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).map_err(|e| e.to_string())?;
    let regs = kvm_bindings::kvm_regs {
        rip: CODE_ADDR,
        rflags: 2,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(|e| e.to_string())?;
    match vcpu.run().map_err(|e| format!("KVM_RUN: {e}"))? {
        VcpuExit::IoOut(0x3f8, data) => {
            let mut out = std::io::stdout();
            out.write_all(data).map_err(|e| e.to_string())?;
            out.flush().map_err(|e| e.to_string())
        }
        other => Err(format!("unexpected exit {other:?}")),
    }
}
