//! KVM state: guest memory, the VM file descriptor and the vCPUs.

pub mod kvm_stats;
pub mod memory;
pub mod vcpu;
pub mod vcpu_thread;
pub mod vm;
