//! The KVM VM: memory slots, in-kernel interrupt controllers and PIT.

use kvm_bindings::{kvm_pit_config, kvm_userspace_memory_region, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

use crate::arch::x86_64::layout::KVM_TSS_ADDRESS;

#[derive(Debug, thiserror::Error)]
pub enum VmError {
    #[error("cannot create a KVM VM: {0}")]
    Create(kvm_ioctls::Error),
    #[error(
        "KVM refused guest memory slot {slot} ({size} bytes at {addr:#x}): {source}; lower --mem"
    )]
    MemorySlot {
        slot: u32,
        addr: u64,
        size: u64,
        source: kvm_ioctls::Error,
    },
    #[error("KVM allows {max} memory slots, herd needs {needed}")]
    TooManySlots { max: usize, needed: usize },
    #[error("cannot set up the in-kernel interrupt controllers: {0}")]
    IrqChip(kvm_ioctls::Error),
    #[error("cannot create the in-kernel PIT: {0}")]
    Pit(kvm_ioctls::Error),
    #[error("cannot set the KVM TSS address: {0}")]
    Tss(kvm_ioctls::Error),
}

pub fn create_vm(kvm: &Kvm) -> Result<VmFd, VmError> {
    kvm.create_vm().map_err(VmError::Create)
}

/// Hands every guest RAM region to KVM, one slot each.
pub fn register_memory(kvm: &Kvm, vm: &VmFd, mem: &GuestMemoryMmap) -> Result<(), VmError> {
    let max = kvm.get_nr_memslots();
    if mem.num_regions() > max {
        return Err(VmError::TooManySlots {
            max,
            needed: mem.num_regions(),
        });
    }
    for (slot, region) in (0u32..).zip(mem.iter()) {
        let memory_region = kvm_userspace_memory_region {
            slot,
            flags: 0,
            guest_phys_addr: region.start_addr().raw_value(),
            memory_size: region.len(),
            userspace_addr: region.as_ptr() as u64,
        };
        // the region's host mapping stays alive for as long as the
        // VM: both are owned by `Vmm`, which drops the VM file descriptor
        // (and with it every slot) before guest memory.
        // SAFETY: sound for the reasons just given.
        unsafe { vm.set_user_memory_region(memory_region) }.map_err(|source| {
            VmError::MemorySlot {
                slot,
                addr: memory_region.guest_phys_addr,
                size: memory_region.memory_size,
                source,
            }
        })?;
    }
    Ok(())
}

/// In-kernel PIC, IOAPIC, LAPICs and PIT: interrupts never leave the kernel
/// on the hot path.
pub fn setup_irqchip(vm: &VmFd) -> Result<(), VmError> {
    let tss = usize::try_from(KVM_TSS_ADDRESS).unwrap_or(usize::MAX);
    vm.set_tss_address(tss).map_err(VmError::Tss)?;
    vm.create_irq_chip().map_err(VmError::IrqChip)?;
    let pit_config = kvm_pit_config {
        // No PC speaker port emulation; guests that probe it read zeroes.
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit_config).map_err(VmError::Pit)
}
