//! A vCPU's thread, started at the beginning of the build rather than at
//! its end: spawning a thread and installing its seccomp filter (the
//! kernel JIT-compiles it) cost more than the rest of the build after the
//! vCPUs exist, and none of it needs the VM. The thread confines itself,
//! then waits for its configured vCPU; the guest's first instruction then
//! waits only for that hand-over.

use std::sync::mpsc::{self, Receiver, SyncSender};
use std::sync::Arc;
use std::thread::JoinHandle;

use devices::StopReason;

use crate::seccomp::{SeccompFilters, ThreadKind};
use crate::vstate::vcpu::{Vcpu, VcpuContext, VcpuError};

/// A started vCPU thread, waiting for its vCPU. Dropping it without
/// [`VcpuThread::run`] ends the thread (a build that failed).
pub struct VcpuThread {
    id: u8,
    handle: JoinHandle<()>,
    hand_over: SyncSender<(Vcpu, VcpuContext)>,
}

impl VcpuThread {
    /// Starts the thread for vCPU `id`; it installs the vCPU filter from
    /// `filters` (None: unconfined) at once.
    pub fn spawn(id: u8, filters: Option<Arc<SeccompFilters>>) -> Result<Self, VcpuError> {
        let (hand_over, receive) = mpsc::sync_channel(1);
        let handle = std::thread::Builder::new()
            .name(format!("herd-vcpu{id}"))
            .spawn(move || thread_main(id, filters.as_deref(), &receive))
            .map_err(|source| VcpuError::Spawn { id, source })?;
        Ok(VcpuThread {
            id,
            handle,
            hand_over,
        })
    }

    /// Hands the thread its vCPU, which it runs until the VM stops.
    pub fn run(self, vcpu: Vcpu, ctx: VcpuContext) -> Result<JoinHandle<()>, VcpuError> {
        let id = self.id;
        match self.hand_over.send((vcpu, ctx)) {
            Ok(()) => Ok(self.handle),
            // The thread only ends early by panicking.
            Err(_) => Err(VcpuError::ThreadGone { id }),
        }
    }
}

fn thread_main(id: u8, filters: Option<&SeccompFilters>, receive: &Receiver<(Vcpu, VcpuContext)>) {
    let confined = filters.map_or(Ok(()), |f| f.install(ThreadKind::Vcpu));
    // A closed channel: the build failed and the VM never runs.
    let Ok((vcpu, ctx)) = receive.recv() else {
        return;
    };
    match confined {
        Ok(()) => vcpu.run(&ctx),
        Err(e) => ctx
            .stop
            .request(StopReason::KvmFailure(format!("vCPU {id}: {e}"))),
    }
}
