//! Turns a validated `VmConfig` into a ready-to-run `Vmm`, top to bottom:
//! vCPU threads, KVM VM, guest memory, vCPUs, kernel and initrd, devices,
//! boot state.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use devices::VmStop;
use kvm_bindings::CpuId;
use kvm_ioctls::{Kvm, VmFd};
use linux_loader::cmdline::Cmdline;
use vm_memory::GuestMemoryMmap;

use crate::api::VmDescription;
use crate::arch::x86_64::acpi::{self, AcpiError, AcpiMmioDevice};
use crate::arch::x86_64::layout::{self, CMDLINE_MAX_SIZE};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::EntryMode;
use crate::boot::{self, BootError, LoadedKernel};
use crate::boot_report::BootTimeline;
use crate::config::{ConfigError, ConsoleConfig, VmConfig};
use crate::control::{BootClock, VmControl, DEFAULT_STOP_TIMEOUT};
use crate::device_manager::virtio_devices::{self, VirtioDeviceError, VirtioDeviceHandle};
use crate::device_manager::{self, DeviceError, LegacyDevices, MmioDeviceManager};
use crate::metrics::MetricsSources;
use crate::runtime::Vmm;
use crate::seccomp::{self, SeccompError, SeccompFilters, UidDrop};
use crate::vstate::kvm_stats::ExitTally;
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{self, Vcpu, VcpuContext, VcpuError};
use crate::vstate::vcpu_thread::VcpuThread;
use crate::vstate::vm::{self, VmError};

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(
        "cannot open /dev/kvm: {0}; check that KVM is enabled (kvm_intel/kvm_amd loaded) and \
         that you may use it (the kvm group)"
    )]
    OpenKvm(kvm_ioctls::Error),
    #[error("--cpus {requested}: this host's KVM allows at most {max} vCPUs per VM")]
    TooManyCpus { requested: u8, max: usize },
    #[error("cannot create the stop event: {0}")]
    StopEvent(std::io::Error),
    #[error(transparent)]
    Memory(#[from] MemoryError),
    #[error(transparent)]
    Vm(#[from] VmError),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error(transparent)]
    Mptable(#[from] MptableError),
    #[error(transparent)]
    Acpi(#[from] AcpiError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error(transparent)]
    VirtioDevices(#[from] VirtioDeviceError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("the thread loading the kernel and initrd panicked")]
    LoaderThread,
}

impl BuildError {
    /// True when the fix is in the user's input (config, files, sizes), as
    /// opposed to the host's KVM.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            BuildError::Config(_)
                | BuildError::TooManyCpus { .. }
                | BuildError::Memory(_)
                | BuildError::Vm(VmError::MemorySlot { .. })
                | BuildError::Boot(_)
                | BuildError::Devices(DeviceError::ConsoleFile { .. })
                | BuildError::VirtioDevices(
                    VirtioDeviceError::Block(_)
                        | VirtioDeviceError::Net(_)
                        | VirtioDeviceError::HostNet(_)
                        | VirtioDeviceError::Vsock(_)
                )
        )
    }
}

/// How the VM's threads are confined.
#[derive(Clone, Copy, Debug)]
pub struct Confinement {
    /// A seccomp filter on every thread; off (`--no-seccomp`) only for
    /// debugging.
    pub seccomp: bool,
    /// Where a jailed herd drops its privileges after the build.
    pub uid_drop: Option<UidDrop>,
}

pub fn build_vm(
    config: &VmConfig,
    process_start: Instant,
    confinement: Confinement,
) -> Result<Vmm, BuildError> {
    config.validate()?;
    let mut timeline = BootTimeline::new(process_start);
    let cpu_count = config.cpu_count();
    let mem_size = config.mem_bytes();
    let filters = confinement
        .seccomp
        .then(|| SeccompFilters::compile(confinement.uid_drop))
        .transpose()?
        .map(Arc::new);
    timeline.phase_done("seccomp");
    // First: each confines itself while the VM is put together.
    let vcpu_threads = (0..cpu_count)
        .map(|id| VcpuThread::spawn(id, filters.clone()))
        .collect::<Result<Vec<_>, _>>()?;
    timeline.phase_done("vcpu_threads");
    let stop = VmStop::new().map_err(BuildError::StopEvent)?;
    let virtio_devices = virtio_devices::create(config)?;
    let guest_memory = memory::create_guest_memory(mem_size)?;
    timeline.phase_done("memory");
    // One helper thread does what needs no VM while KVM puts the VM
    // together: KVM_GET_SUPPORTED_CPUID (the slowest ioctl on the boot
    // path) and copying the kernel and initrd into guest RAM (in the
    // emulated test host, half of herd's ~220 ms start).
    let image = GuestImage::from_config(config);
    let image_memory = guest_memory.clone();
    let helper = std::thread::Builder::new()
        .name("herd-loader".into())
        .spawn(move || image.prepare(&image_memory));
    let machine = assemble_machine(config, virtio_devices, &guest_memory, &stop, &mut timeline);
    let prepared = match helper {
        Ok(handle) => handle.join().unwrap_or_else(|_| Prepared {
            supported_cpuid: Err(VcpuError::CpuidThread.into()),
            loaded: Err(BuildError::LoaderThread),
        }),
        // No thread to be had: do it here instead.
        Err(_) => GuestImage::from_config(config).prepare(&guest_memory),
    };
    // A bad kernel or initrd is the user's to fix, and is reported the
    // same with or without KVM: its error comes first.
    let (kernel, load_time) = prepared.loaded?;
    let Machine {
        vm_fd,
        vcpus,
        legacy,
        mmio,
        metrics,
    } = machine?;
    let base_cpuid = prepared.supported_cpuid?;
    timeline.overlapped("kernel_load", load_time);
    timeline.phase_done("kernel_load_wait");

    for vcpu in &vcpus {
        let boot_state = (vcpu.id() == 0).then_some((&guest_memory, kernel.mode, kernel.entry));
        vcpu.configure(&base_cpuid, cpu_count, boot_state)?;
    }
    timeline.phase_done("vcpus");
    log::debug!(
        "built VM: {} MiB, {} vCPUs, {:?} entry at {:#x}",
        config.mem_mib,
        cpu_count,
        kernel.mode,
        kernel.entry.0
    );

    let first_entry = Arc::new(OnceLock::new());
    let control = Arc::new(VmControl::new(
        stop.clone(),
        legacy.i8042,
        BootClock {
            process_start,
            first_guest_entry: first_entry.clone(),
            boot_timer: legacy.boot_timer.clone(),
            ready: legacy.guest_ready,
        },
    ));
    let exit_tally = Arc::new(ExitTally {
        herd: metrics.vcpus.clone(),
        kvm: vcpus.iter().filter_map(Vcpu::kvm_stats).collect(),
    });
    let context = VcpuContext {
        pio_bus: Arc::new(seccomp::add_test_trigger(legacy.pio_bus)),
        mmio_bus: Arc::new(mmio.bus),
        stop: stop.clone(),
        pause: control.pause.clone(),
        first_entry,
        seccomp: filters,
        exits: exit_tally,
        exits_at_init: Arc::default(),
    };
    Ok(Vmm {
        _vm: vm_fd,
        _guest_memory: guest_memory,
        vcpus: vcpus.into_iter().zip(vcpu_threads).collect(),
        context,
        serial: legacy.serial,
        boot_timer: legacy.boot_timer,
        panic_message: legacy.panic_message,
        power_button: legacy.power_button,
        device_subscribers: mmio.subscribers,
        io_subscribers: mmio.io_subscribers,
        console_input: matches!(config.console, ConsoleConfig::Stdio),
        timeline,
        control,
        metrics: Some(metrics),
        description: VmDescription::from_config(config),
        stop_timeout: DEFAULT_STOP_TIMEOUT,
        console_hub: legacy.console_hub,
        console_writer: legacy.console_writer,
        console_socket: None,
        vsock_socket: config.vsock.clone(),
    })
}

/// The virtio-mmio devices as the DSDT describes them: the same slots the
/// command line's `virtio_mmio.device=` entries name.
fn acpi_mmio_devices(config: &VmConfig) -> Vec<AcpiMmioDevice> {
    (0..config.virtio_device_count())
        .filter_map(|index| device_manager::mmio_slot(index).ok())
        .map(|slot| AcpiMmioDevice {
            base: slot.base,
            size: devices::virtio::MMIO_DEVICE_SIZE,
            gsi: slot.irq,
        })
        .collect()
}

/// What goes into guest RAM before the first instruction: the kernel, the
/// initrd, the command line and the boot tables. Owned, for the loader
/// thread.
struct GuestImage {
    kernel: PathBuf,
    initrd: Option<PathBuf>,
    cmdline: String,
    mem_size: u64,
    cpu_count: u8,
    acpi_devices: Vec<AcpiMmioDevice>,
}

/// What the helper thread hands back.
struct Prepared {
    supported_cpuid: Result<CpuId, BuildError>,
    loaded: Result<(LoadedKernel, Duration), BuildError>,
}

impl GuestImage {
    fn prepare(&self, mem: &GuestMemoryMmap) -> Prepared {
        let supported_cpuid = Kvm::new()
            .map_err(BuildError::OpenKvm)
            .and_then(|kvm| vcpu::supported_cpuid(&kvm).map_err(BuildError::from));
        let started = Instant::now();
        let loaded = self.load(mem).map(|kernel| (kernel, started.elapsed()));
        Prepared {
            supported_cpuid,
            loaded,
        }
    }

    fn from_config(config: &VmConfig) -> Self {
        GuestImage {
            kernel: config.kernel.clone(),
            initrd: config.initrd.clone(),
            cmdline: config.full_cmdline(),
            mem_size: config.mem_bytes(),
            cpu_count: config.cpu_count(),
            acpi_devices: acpi_mmio_devices(config),
        }
    }

    fn load(&self, mem: &GuestMemoryMmap) -> Result<LoadedKernel, BuildError> {
        let kernel = boot::load_kernel(mem, &self.kernel)?;
        let initrd = self
            .initrd
            .as_deref()
            .map(|path| boot::load_initrd(mem, self.mem_size, &kernel, path))
            .transpose()?;
        let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
        cmdline
            .insert_str(&self.cmdline)
            .map_err(BootError::Cmdline)?;
        boot::write_cmdline(mem, &cmdline)?;
        let memory_map = layout::memory_map(self.mem_size);
        match kernel.mode {
            EntryMode::Linux64 => {
                boot::write_zero_page(mem, &memory_map, &kernel, initrd, self.cmdline.len() + 1)?
            }
            EntryMode::Pvh => boot::write_pvh_start_info(mem, &memory_map, initrd)?,
        }
        mptable::setup(mem, self.cpu_count)?;
        acpi::setup(mem, self.cpu_count, &self.acpi_devices)?;
        Ok(kernel)
    }
}

/// The VM around guest RAM: KVM's VM and vCPUs (not yet configured: that
/// needs the kernel's entry point) and the devices.
struct Machine {
    vm_fd: VmFd,
    vcpus: Vec<Vcpu>,
    legacy: LegacyDevices,
    mmio: MmioDeviceManager,
    metrics: MetricsSources,
}

fn assemble_machine(
    config: &VmConfig,
    virtio_devices: Vec<VirtioDeviceHandle>,
    guest_memory: &GuestMemoryMmap,
    stop: &VmStop,
    timeline: &mut BootTimeline,
) -> Result<Machine, BuildError> {
    let cpu_count = config.cpu_count();
    let kvm = Kvm::new().map_err(BuildError::OpenKvm)?;
    let max = kvm.get_max_vcpus();
    if usize::from(cpu_count) > max {
        return Err(BuildError::TooManyCpus {
            requested: cpu_count,
            max,
        });
    }
    let vm_fd = vm::create_vm(&kvm)?;
    timeline.phase_done("vm_create");
    vm::register_memory(&kvm, &vm_fd, guest_memory)?;
    timeline.phase_done("memory_registration");

    // The irqchip must exist before vCPUs are created so they get LAPICs.
    vm::setup_irqchip(&vm_fd)?;
    let vcpus = (0..cpu_count)
        .map(|id| Vcpu::new(&vm_fd, id))
        .collect::<Result<Vec<_>, _>>()?;
    timeline.phase_done("vcpus_create");

    let legacy = device_manager::create_legacy_devices(
        &vm_fd,
        &config.console,
        stop,
        timeline.process_start,
        timeline.build_start,
    )?;
    let mut metrics = MetricsSources {
        vcpus: vcpus.iter().map(Vcpu::exit_counters).collect(),
        guest_ranges: memory::host_ranges(guest_memory),
        smaps: std::fs::File::open("/proc/self/smaps").ok(),
        ..MetricsSources::default()
    };
    for handle in &virtio_devices {
        match handle {
            VirtioDeviceHandle::Block(b) => {
                let b = b.lock().unwrap_or_else(|p| p.into_inner());
                metrics
                    .blocks
                    .push((b.path().display().to_string(), b.metrics()));
            }
            VirtioDeviceHandle::Net(n) => {
                let n = n.lock().unwrap_or_else(|p| p.into_inner());
                metrics.nets.push((n.tap_name().to_owned(), n.metrics()));
            }
            // No counters yet: their rates are bounded per event-loop turn.
            VirtioDeviceHandle::Rng(_) | VirtioDeviceHandle::Vsock(_) => {}
        }
    }
    let mut mmio = MmioDeviceManager::new();
    virtio_devices::attach_all(virtio_devices, &mut mmio, &vm_fd, guest_memory)?;
    timeline.phase_done("devices");
    Ok(Machine {
        vm_fd,
        vcpus,
        legacy,
        mmio,
        metrics,
    })
}
