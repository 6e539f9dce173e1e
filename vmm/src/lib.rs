//! herd's virtual machine monitor: builds a KVM microVM from a validated
//! configuration and runs it to completion.

pub mod api;
pub mod arch;
pub mod boot;
pub mod boot_report;
pub mod builder;
pub mod config;
pub mod control;
pub mod device_manager;
pub mod host_net;
pub mod io_thread;
pub mod kvm_check;
pub mod metrics;
mod panic_watch;
pub mod runtime;
pub mod seccomp;
pub mod signals;
pub mod vstate;

pub use builder::{build_vm, BuildError, Confinement};
pub use config::{ConsoleConfig, VmConfig};
pub use devices::StopReason;
pub use runtime::{RunError, RunOutcome, Vmm};
pub use seccomp::UidDrop;
