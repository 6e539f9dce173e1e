//! vCPUs: boot-state configuration, the run loop on its own thread, and
//! exit dispatch onto the I/O buses.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use devices::legacy::{BOOT_TIMER_MAGIC, BOOT_TIMER_PORT};
use devices::{Bus, StopReason, VmStop};
use kvm_bindings::{kvm_sregs, CpuId, Msrs, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Cap, Kvm, VcpuExit, VcpuFd, VmFd};
use vm_memory::{GuestAddress, GuestMemoryMmap};

use crate::arch::x86_64::regs::{self, EntryMode};
use crate::arch::x86_64::{cpuid, msr};
use crate::control::PauseGate;
use crate::metrics::VcpuExitCounters;
use crate::seccomp::SeccompFilters;
use crate::vstate::kvm_stats::{ExitTally, ExitsSnapshot, KvmStats};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// LAPIC register offsets and delivery modes for LINT0/LINT1.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    #[error("cannot create vCPU {id}: {source}")]
    Create { id: u8, source: kvm_ioctls::Error },
    #[error("cannot read KVM's supported CPUID: {0}")]
    SupportedCpuid(kvm_ioctls::Error),
    #[error("the thread reading KVM's supported CPUID panicked")]
    CpuidThread,
    #[error("cannot set CPUID on vCPU {id}: {source}")]
    SetCpuid { id: u8, source: kvm_ioctls::Error },
    #[error("cannot build the MSR list: {0}")]
    MsrList(vmm_sys_util::fam::Error),
    #[error("cannot set MSRs on vCPU {id}: {source}")]
    SetMsrs { id: u8, source: kvm_ioctls::Error },
    #[error("vCPU {id}: KVM refused MSR {index:#x} (set {done} of {total})")]
    MsrRefused {
        id: u8,
        index: u32,
        done: usize,
        total: usize,
    },
    #[error("cannot set registers on vCPU {id}: {source}")]
    Registers { id: u8, source: kvm_ioctls::Error },
    #[error("cannot set up boot segments and page tables: {0}")]
    BootState(#[from] regs::RegsError),
    #[error("cannot configure the local APIC of vCPU {id}: {source}")]
    Lapic { id: u8, source: kvm_ioctls::Error },
    #[error("cannot start the thread for vCPU {id}: {source}")]
    Spawn { id: u8, source: std::io::Error },
    #[error("the thread for vCPU {id} ended before its vCPU was ready")]
    ThreadGone { id: u8 },
}

/// KVM's supported CPUID, read once per VM and specialised per vCPU.
pub fn supported_cpuid(kvm: &Kvm) -> Result<CpuId, VcpuError> {
    let mut supported = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(VcpuError::SupportedCpuid)?;
    // KVM reports its in-kernel LAPIC's TSC-deadline mode as a capability,
    // not in the supported CPUID: each VMM has to advertise it.
    if kvm.check_extension(Cap::TscDeadlineTimer) {
        cpuid::advertise_tsc_deadline(supported.as_mut_slice());
    }
    Ok(supported)
}

pub struct Vcpu {
    fd: VcpuFd,
    id: u8,
    exits: Arc<VcpuExitCounters>,
}

/// What a vCPU thread needs to run: the buses its exits go to and the stop
/// handle it reports through.
#[derive(Clone)]
pub struct VcpuContext {
    pub pio_bus: Arc<Bus>,
    pub mmio_bus: Arc<Bus>,
    pub stop: VmStop,
    pub pause: Arc<PauseGate>,
    /// Set by the boot vCPU when it first enters the guest.
    pub first_entry: Arc<OnceLock<Instant>>,
    /// The event loop's and the API's filters (a vCPU thread installs its
    /// own when it is spawned); None with --no-seccomp.
    pub seccomp: Option<Arc<SeccompFilters>>,
    /// Every vCPU's exit counts, and their values when the guest's init
    /// first wrote the boot timer (its first userspace instructions).
    pub exits: Arc<ExitTally>,
    pub exits_at_init: Arc<OnceLock<ExitsSnapshot>>,
}

impl Vcpu {
    pub fn new(vm: &VmFd, id: u8) -> Result<Self, VcpuError> {
        let fd = vm
            .create_vcpu(u64::from(id))
            .map_err(|source| VcpuError::Create { id, source })?;
        Ok(Vcpu {
            fd,
            id,
            exits: Arc::default(),
        })
    }

    /// KVM's own counters for this vCPU, if the kernel has them.
    pub fn kvm_stats(&self) -> Option<KvmStats> {
        KvmStats::open(&self.fd)
    }

    /// This vCPU's exit counters, for the metrics.
    pub fn exit_counters(&self) -> Arc<VcpuExitCounters> {
        self.exits.clone()
    }

    pub fn id(&self) -> u8 {
        self.id
    }

    /// The raw vCPU, for callers that drive it themselves (the KVM check).
    pub fn into_fd(self) -> VcpuFd {
        self.fd
    }

    /// CPUID, MSRs and LAPIC for every vCPU; registers for the boot entry.
    /// Secondary vCPUs keep KVM's reset state: they wait for INIT/SIPI.
    pub fn configure(
        &self,
        base_cpuid: &CpuId,
        cpu_count: u8,
        boot: Option<(&GuestMemoryMmap, EntryMode, GuestAddress)>,
    ) -> Result<(), VcpuError> {
        let id = self.id;
        let mut cpuid = base_cpuid.clone();
        cpuid::normalize(cpuid.as_mut_slice(), id, cpu_count);
        self.fd
            .set_cpuid2(&cpuid)
            .map_err(|source| VcpuError::SetCpuid { id, source })?;

        let entries = msr::boot_msr_entries();
        let msrs = Msrs::from_entries(&entries).map_err(VcpuError::MsrList)?;
        let done = self
            .fd
            .set_msrs(&msrs)
            .map_err(|source| VcpuError::SetMsrs { id, source })?;
        if done != entries.len() {
            return Err(VcpuError::MsrRefused {
                id,
                index: entries.get(done).map_or(0, |e| e.index),
                done,
                total: entries.len(),
            });
        }
        self.set_lint()?;

        if let Some((mem, mode, entry)) = boot {
            let registers = |source| VcpuError::Registers { id, source };
            let sregs: kvm_sregs = self.fd.get_sregs().map_err(registers)?;
            let sregs = regs::boot_sregs(mem, mode, sregs)?;
            self.fd.set_sregs(&sregs).map_err(registers)?;
            self.fd
                .set_regs(&regs::boot_regs(mode, entry))
                .map_err(registers)?;
            self.fd.set_fpu(&regs::boot_fpu()).map_err(registers)?;
        }
        Ok(())
    }

    /// Routes the legacy PIC through LINT0 and NMIs through LINT1, as the MP
    /// table says.
    fn set_lint(&self) -> Result<(), VcpuError> {
        let lapic_err = |source| VcpuError::Lapic {
            id: self.id,
            source,
        };
        let mut lapic = self.fd.get_lapic().map_err(lapic_err)?;
        for (offset, mode) in [(APIC_LVT0, APIC_MODE_EXTINT), (APIC_LVT1, APIC_MODE_NMI)] {
            let reg = read_lapic_reg(&lapic.regs, offset);
            // Delivery mode lives in bits 10:8.
            write_lapic_reg(&mut lapic.regs, offset, (reg & !0x700) | (mode << 8));
        }
        self.fd.set_lapic(&lapic).map_err(lapic_err)
    }

    /// Runs the vCPU on the calling thread (its `VcpuThread`, already
    /// confined) until the VM stops.
    pub(crate) fn run(mut self, ctx: &VcpuContext) {
        if self.id == 0 {
            ctx.first_entry.get_or_init(Instant::now);
        }
        let kvm_run: *const kvm_bindings::kvm_run = self.fd.get_kvm_run();
        while !ctx.stop.is_requested() {
            if ctx.pause.is_requested() {
                ctx.pause.park(&ctx.stop);
                continue;
            }
            let action = match self.fd.run() {
                Ok(VcpuExit::InternalError) => {
                    VcpuAction::Stop(StopReason::GuestCrash(self.internal_error()))
                }
                Ok(VcpuExit::Shutdown) => {
                    self.exits.count(&VcpuExit::Shutdown);
                    VcpuAction::Stop(StopReason::GuestCrash(self.triple_fault()))
                }
                Ok(exit) => {
                    self.exits.count(&exit);
                    let io_size = match exit {
                        VcpuExit::IoIn(..) | VcpuExit::IoOut(..) => {
                            // The kvm_run mapping lives as long as
                            // `self.fd`; after an I/O exit the kernel
                            // filled its `io` member, which lies before
                            // the data the exit borrows, so this read
                            // overlaps no reference.
                            // SAFETY: sound for the reasons just given.
                            usize::from(unsafe {
                                std::ptr::read_volatile(std::ptr::addr_of!(
                                    (*kvm_run).__bindgen_anon_1.io.size
                                ))
                            })
                        }
                        _ => 0,
                    };
                    let reached_init = is_boot_timer_fired(&exit);
                    let action = handle_exit(self.id, exit, io_size, &ctx.pio_bus, &ctx.mmio_bus);
                    if reached_init {
                        ctx.exits_at_init.get_or_init(|| ctx.exits.snapshot());
                    }
                    action
                }
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                    self.exits.count_interrupted();
                    VcpuAction::Continue
                }
                Err(e) => VcpuAction::Stop(StopReason::KvmFailure(format!(
                    "vCPU {}: KVM_RUN failed: {e}",
                    self.id
                ))),
            };
            if let VcpuAction::Stop(reason) = action {
                ctx.stop.request(reason);
            }
        }
        log::debug!("vCPU {} stopped", self.id);
    }
}

impl Vcpu {
    /// Describes a triple fault with the state the guest died in: where it
    /// was and which paging/mode it was in tells an early-boot fault (no
    /// IDT yet) from a kernel that got far and then broke.
    fn triple_fault(&mut self) -> String {
        let state = match (self.fd.get_regs(), self.fd.get_sregs()) {
            // KVM on AMD reinitialises the VMCB on a shutdown intercept: the
            // registers are the reset state, not where the guest died.
            (Ok(r), Ok(s)) if r.rip == 0xfff0 && s.cs.selector == 0xf000 => {
                " (KVM reset the vCPU on the shutdown, as it does on AMD: no state to show)"
                    .to_owned()
            }
            (Ok(r), Ok(s)) => format!(
                " at RIP {:#x} RSP {:#x} RFLAGS {:#x}, CR0 {:#x} CR2 {:#x} CR3 {:#x} CR4 {:#x} \
                 EFER {:#x}, CS {:#x} IDT base {:#x} limit {:#x}",
                r.rip,
                r.rsp,
                r.rflags,
                s.cr0,
                s.cr2,
                s.cr3,
                s.cr4,
                s.efer,
                s.cs.selector,
                s.idt.base,
                s.idt.limit
            ),
            (Err(e), _) | (_, Err(e)) => format!(" (registers unreadable: {e})"),
        };
        format!("vCPU {}: triple fault (KVM_EXIT_SHUTDOWN){state}", self.id)
    }

    /// Describes a KVM_EXIT_INTERNAL_ERROR with KVM's sub-error code, its
    /// extra data (for emulation failures: instruction bytes) and the RIP.
    fn internal_error(&mut self) -> String {
        let run = self.fd.get_kvm_run();
        // after KVM_EXIT_INTERNAL_ERROR the kernel filled the
        // `internal` member of the kvm_run union; it is plain integers.
        // SAFETY: sound for the reasons just given.
        let internal = unsafe { run.__bindgen_anon_1.internal };
        let count = usize::try_from(internal.ndata)
            .unwrap_or(0)
            .min(internal.data.len());
        let rip = self.fd.get_regs().map_or(0, |r| r.rip);
        format!(
            "vCPU {}: KVM internal error (KVM_EXIT_INTERNAL_ERROR, suberror {}, data {:x?}) at \
             RIP {rip:#x}: KVM could not handle what the guest did",
            self.id,
            internal.suberror,
            &internal.data[..count]
        )
    }
}

fn read_lapic_reg(regs: &[std::os::raw::c_char], offset: usize) -> u32 {
    let mut bytes = [0u8; 4];
    for (b, r) in bytes.iter_mut().zip(&regs[offset..offset + 4]) {
        *b = r.to_ne_bytes()[0];
    }
    u32::from_le_bytes(bytes)
}

fn write_lapic_reg(regs: &mut [std::os::raw::c_char], offset: usize, value: u32) {
    for (r, b) in regs[offset..offset + 4].iter_mut().zip(value.to_le_bytes()) {
        *r = std::os::raw::c_char::from_ne_bytes([b]);
    }
}

/// The guest's "reached init" write to the boot timer.
fn is_boot_timer_fired(exit: &VcpuExit) -> bool {
    matches!(exit, VcpuExit::IoOut(port, [BOOT_TIMER_MAGIC, ..]) if u64::from(*port) == BOOT_TIMER_PORT)
}

#[derive(Debug, PartialEq, Eq)]
pub enum VcpuAction {
    Continue,
    Stop(StopReason),
}

/// Decides what one VM exit means. Accesses nobody claims are ignored:
/// writes vanish, reads see all ones, as on an empty bus.
///
/// `io_size` is the width of one port access: string I/O (`rep outsb`)
/// arrives as a single exit carrying count x size bytes, which the device
/// must see as `count` separate accesses.
pub fn handle_exit(id: u8, exit: VcpuExit, io_size: usize, pio: &Bus, mmio: &Bus) -> VcpuAction {
    match exit {
        VcpuExit::IoIn(port, data) => {
            let size = if io_size == 0 { data.len() } else { io_size };
            for access in data.chunks_mut(size.max(1)) {
                if !pio.read(u64::from(port), access) {
                    access.fill(0xff);
                    log::debug!("vCPU {id}: read of unclaimed port {port:#x}");
                }
            }
        }
        VcpuExit::IoOut(port, data) => {
            let size = if io_size == 0 { data.len() } else { io_size };
            for access in data.chunks(size.max(1)) {
                if !pio.write(u64::from(port), access) {
                    log::debug!("vCPU {id}: write {access:x?} to unclaimed port {port:#x}");
                }
            }
        }
        VcpuExit::MmioRead(addr, data) => {
            if !mmio.read(addr, data) {
                data.fill(0xff);
                log::debug!("vCPU {id}: read of unclaimed MMIO {addr:#x}");
            }
        }
        VcpuExit::MmioWrite(addr, data) => {
            if !mmio.write(addr, data) {
                log::debug!("vCPU {id}: write {data:x?} to unclaimed MMIO {addr:#x}");
            }
        }
        VcpuExit::Hlt => {
            log::info!("vCPU {id} halted");
            return VcpuAction::Stop(StopReason::GuestPowerOff);
        }
        VcpuExit::Shutdown => {
            return VcpuAction::Stop(StopReason::GuestCrash(format!(
                "vCPU {id}: triple fault (KVM_EXIT_SHUTDOWN)"
            )));
        }
        VcpuExit::SystemEvent(kind, _) => {
            return VcpuAction::Stop(match kind {
                KVM_SYSTEM_EVENT_SHUTDOWN => StopReason::GuestPowerOff,
                KVM_SYSTEM_EVENT_RESET => StopReason::GuestReset,
                KVM_SYSTEM_EVENT_CRASH => {
                    StopReason::GuestCrash(format!("vCPU {id}: guest reported a crash"))
                }
                other => StopReason::GuestCrash(format!("vCPU {id}: system event {other}")),
            });
        }
        VcpuExit::InternalError => {
            return VcpuAction::Stop(StopReason::GuestCrash(format!(
                "vCPU {id}: KVM internal error (KVM_EXIT_INTERNAL_ERROR): \
                 KVM could not emulate what the guest did"
            )));
        }
        VcpuExit::FailEntry(reason, cpu) => {
            return VcpuAction::Stop(StopReason::KvmFailure(format!(
                "vCPU {id}: VM entry failed on host CPU {cpu}, hardware reason {reason:#x}"
            )));
        }
        VcpuExit::Intr | VcpuExit::IrqWindowOpen => {}
        other => {
            return VcpuAction::Stop(StopReason::GuestCrash(format!(
                "vCPU {id}: unexpected exit {other:?}"
            )));
        }
    }
    VcpuAction::Continue
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    struct Latch(Vec<u8>);
    impl devices::BusDevice for Latch {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.copy_from_slice(&self.0[..data.len()]);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data.to_vec();
        }
    }

    fn buses() -> (Bus, Bus) {
        let mut pio = Bus::new();
        pio.insert(Arc::new(Mutex::new(Latch(vec![0; 4]))), 0x80, 4)
            .unwrap();
        (pio, Bus::new())
    }

    #[test]
    fn port_io_goes_to_the_bus_and_unclaimed_reads_float() {
        let (pio, mmio) = buses();
        let out = [0x12u8, 0x34];
        assert_eq!(
            handle_exit(0, VcpuExit::IoOut(0x80, &out), 2, &pio, &mmio),
            VcpuAction::Continue
        );
        let mut data = [0u8; 2];
        handle_exit(0, VcpuExit::IoIn(0x80, &mut data), 2, &pio, &mmio);
        assert_eq!(data, out);
        let mut data = [0u8; 4];
        handle_exit(0, VcpuExit::IoIn(0x3000, &mut data), 4, &pio, &mmio);
        assert_eq!(data, [0xff; 4]);
        let mut data = [0u8; 8];
        handle_exit(
            0,
            VcpuExit::MmioRead(0xd000_0000, &mut data),
            0,
            &pio,
            &mmio,
        );
        assert_eq!(data, [0xff; 8]);
        assert_eq!(
            handle_exit(0, VcpuExit::MmioWrite(0xd000_0000, &[1]), 0, &pio, &mmio),
            VcpuAction::Continue
        );
    }

    /// Records every access it sees.
    #[derive(Default)]
    struct Log(Vec<Vec<u8>>);
    impl devices::BusDevice for Log {
        fn read(&mut self, _offset: u64, data: &mut [u8]) {
            data.fill(0x60);
            self.0.push(vec![0; data.len()]);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0.push(data.to_vec());
        }
    }

    /// `rep outsb` / `rep insb` arrive as one exit of count x size bytes;
    /// a one-byte port must see `count` one-byte accesses.
    #[test]
    fn string_port_io_is_one_access_per_element() {
        let port = Arc::new(Mutex::new(Log::default()));
        let mut pio = Bus::new();
        pio.insert(port.clone(), 0x501, 1).unwrap();
        let mmio = Bus::new();
        handle_exit(0, VcpuExit::IoOut(0x501, &[42, 43, 44]), 1, &pio, &mmio);
        assert_eq!(port.lock().unwrap().0, vec![vec![42], vec![43], vec![44]]);
        let mut data = [0u8; 4];
        handle_exit(0, VcpuExit::IoIn(0x501, &mut data), 1, &pio, &mmio);
        assert_eq!(data, [0x60; 4]);
        assert_eq!(port.lock().unwrap().0.len(), 7);
    }

    #[test]
    fn crashes_and_resets_stop_the_vm() {
        let (pio, mmio) = buses();
        match handle_exit(1, VcpuExit::Shutdown, 0, &pio, &mmio) {
            VcpuAction::Stop(StopReason::GuestCrash(msg)) => assert!(msg.contains("triple fault")),
            other => panic!("{other:?}"),
        }
        assert_eq!(
            handle_exit(
                0,
                VcpuExit::SystemEvent(KVM_SYSTEM_EVENT_RESET, &[]),
                0,
                &pio,
                &mmio
            ),
            VcpuAction::Stop(StopReason::GuestReset)
        );
        assert!(matches!(
            handle_exit(0, VcpuExit::InternalError, 0, &pio, &mmio),
            VcpuAction::Stop(StopReason::GuestCrash(_))
        ));
        assert!(matches!(
            handle_exit(0, VcpuExit::FailEntry(7, 0), 0, &pio, &mmio),
            VcpuAction::Stop(StopReason::KvmFailure(_))
        ));
    }

    #[test]
    fn lapic_register_round_trip() {
        let mut regs = [0 as std::os::raw::c_char; 1024];
        write_lapic_reg(&mut regs, APIC_LVT0, 0xdead_beef);
        assert_eq!(read_lapic_reg(&regs, APIC_LVT0), 0xdead_beef);
    }
}
