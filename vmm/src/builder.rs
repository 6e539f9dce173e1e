//! Turns a validated `VmConfig` into a ready-to-run `Vmm`, top to bottom:
//! KVM VM, guest memory, vCPUs, kernel and initrd, devices, boot state.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use devices::VmStop;
use kvm_ioctls::Kvm;
use linux_loader::cmdline::Cmdline;

use crate::api::VmDescription;
use crate::arch::x86_64::acpi::{self, AcpiError, AcpiMmioDevice};
use crate::arch::x86_64::layout::{self, CMDLINE_MAX_SIZE};
use crate::arch::x86_64::mptable::{self, MptableError};
use crate::arch::x86_64::regs::EntryMode;
use crate::boot::{self, BootError};
use crate::boot_report::BootTimeline;
use crate::config::{ConfigError, ConsoleConfig, VmConfig};
use crate::control::{BootClock, VmControl, DEFAULT_STOP_TIMEOUT};
use crate::device_manager::virtio_devices::{self, VirtioDeviceError, VirtioDeviceHandle};
use crate::device_manager::{self, DeviceError, MmioDeviceManager};
use crate::metrics::MetricsSources;
use crate::runtime::Vmm;
use crate::seccomp::{self, SeccompError, SeccompFilters};
use crate::vstate::kvm_stats::ExitTally;
use crate::vstate::memory::{self, MemoryError};
use crate::vstate::vcpu::{self, Vcpu, VcpuContext, VcpuError};
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

pub fn build_vm(config: &VmConfig, process_start: Instant) -> Result<Vmm, BuildError> {
    config.validate()?;
    let mut timeline = BootTimeline::new(process_start);
    let cpu_count = config.cpu_count();
    let mem_size = config.mem_bytes();
    let stop = VmStop::new().map_err(BuildError::StopEvent)?;
    // KVM_GET_SUPPORTED_CPUID is the slowest ioctl on the boot path and
    // needs no VM: ask on a side thread while the VM is put together.
    let supported_cpuid = std::thread::Builder::new()
        .name("herd-cpuid".into())
        .spawn(|| {
            Kvm::new()
                .map_err(BuildError::OpenKvm)
                .and_then(|kvm| vcpu::supported_cpuid(&kvm).map_err(BuildError::from))
        });

    // Everything that depends only on the user's input comes first, so a
    // bad kernel or initrd is reported the same with or without KVM.
    let virtio_devices = virtio_devices::create(config)?;
    let guest_memory = memory::create_guest_memory(mem_size)?;
    timeline.phase_done("memory");
    let kernel = boot::load_kernel(&guest_memory, &config.kernel)?;
    let initrd = config
        .initrd
        .as_deref()
        .map(|path| boot::load_initrd(&guest_memory, mem_size, &kernel, path))
        .transpose()?;
    let cmdline_text = config.full_cmdline();
    let mut cmdline = Cmdline::new(CMDLINE_MAX_SIZE).map_err(BootError::Cmdline)?;
    cmdline
        .insert_str(&cmdline_text)
        .map_err(BootError::Cmdline)?;
    boot::write_cmdline(&guest_memory, &cmdline)?;
    let memory_map = layout::memory_map(mem_size);
    match kernel.mode {
        EntryMode::Linux64 => boot::write_zero_page(
            &guest_memory,
            &memory_map,
            &kernel,
            initrd,
            cmdline_text.len() + 1,
        )?,
        EntryMode::Pvh => boot::write_pvh_start_info(&guest_memory, &memory_map, initrd)?,
    }
    mptable::setup(&guest_memory, cpu_count)?;
    acpi::setup(&guest_memory, cpu_count, &acpi_mmio_devices(config))?;
    timeline.phase_done("kernel_load");

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
    vm::register_memory(&kvm, &vm_fd, &guest_memory)?;
    timeline.phase_done("memory_registration");

    // The irqchip must exist before vCPUs are created so they get LAPICs.
    vm::setup_irqchip(&vm_fd)?;
    let vcpus = (0..cpu_count)
        .map(|id| Vcpu::new(&vm_fd, id))
        .collect::<Result<Vec<_>, _>>()?;
    let base_cpuid = match supported_cpuid {
        Ok(handle) => handle
            .join()
            .unwrap_or_else(|_| Err(VcpuError::CpuidThread.into()))?,
        // No thread to be had: ask here instead.
        Err(_) => vcpu::supported_cpuid(&kvm)?,
    };
    for vcpu in &vcpus {
        let boot_state = (vcpu.id() == 0).then_some((&guest_memory, kernel.mode, kernel.entry));
        vcpu.configure(&base_cpuid, cpu_count, boot_state)?;
    }
    timeline.phase_done("vcpus");

    let legacy = device_manager::create_legacy_devices(
        &vm_fd,
        &config.console,
        &stop,
        process_start,
        timeline.build_start,
    )?;
    let exit_counters: Vec<_> = vcpus.iter().map(Vcpu::exit_counters).collect();
    let mut metrics = MetricsSources {
        vcpus: exit_counters.clone(),
        guest_ranges: memory::host_ranges(&guest_memory),
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
    virtio_devices::attach_all(virtio_devices, &mut mmio, &vm_fd, &guest_memory)?;
    timeline.phase_done("devices");
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
        herd: exit_counters,
        kvm: vcpus.iter().filter_map(Vcpu::kvm_stats).collect(),
    });
    let context = VcpuContext {
        pio_bus: Arc::new(seccomp::add_test_trigger(legacy.pio_bus)),
        mmio_bus: Arc::new(mmio.bus),
        stop: stop.clone(),
        pause: control.pause.clone(),
        first_entry,
        seccomp: Some(Arc::new(SeccompFilters::compile()?)),
        exits: exit_tally,
        exits_at_init: Arc::default(),
    };
    Ok(Vmm {
        _vm: vm_fd,
        _guest_memory: guest_memory,
        vcpus,
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
