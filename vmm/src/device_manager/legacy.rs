//! Legacy devices on the port-I/O bus, the console backends behind the
//! serial port, and the event-loop subscriber feeding host input to it.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use devices::acpi::{
    AcpiSleepReset, PowerButton, ACPI_SLEEP_RESET_PORT, ACPI_SLEEP_RESET_PORT_LEN, POWER_BUTTON_GSI,
};
use devices::legacy::{
    BootTimer, BootTimerReading, Cmos, ExitDevice, SerialDevice, BOOT_TIMER_PORT, CMOS_PORT,
    CMOS_PORT_LEN, COM1_IRQ, COM1_PORT, COM1_PORT_LEN, EXIT_DEVICE_PORT, I8042, I8042_PORT,
    I8042_PORT_LEN,
};
use devices::{Bus, BusError, EventFdTrigger, VmStop};
use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use crate::config::ConsoleConfig;
use crate::panic_watch::PanicWatcher;

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error("cannot open console file {path}: {source}")]
    ConsoleFile {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot create an eventfd: {0}")]
    EventFd(std::io::Error),
    #[error("cannot place a device on the I/O bus: {0}")]
    Bus(#[from] BusError),
    #[error("cannot connect the serial port to guest IRQ {COM1_IRQ}: {0}")]
    SerialIrq(kvm_ioctls::Error),
    #[error("cannot connect the ACPI power button to guest IRQ {POWER_BUTTON_GSI}: {0}")]
    PowerButtonIrq(kvm_ioctls::Error),
}

/// What the legacy devices share with the rest of the VMM.
pub struct LegacyDevices {
    pub pio_bus: Bus,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub boot_timer: Arc<Mutex<Option<BootTimerReading>>>,
    pub panic_message: Arc<Mutex<Option<String>>>,
    pub power_button: PowerButton,
}

fn console_writer(console: &ConsoleConfig) -> Result<Box<dyn Write + Send>, DeviceError> {
    Ok(match console {
        ConsoleConfig::Stdio => Box::new(std::io::stdout()),
        ConsoleConfig::None => Box::new(std::io::sink()),
        ConsoleConfig::File(path) => Box::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|source| DeviceError::ConsoleFile {
                    path: path.clone(),
                    source,
                })?,
        ),
    })
}

pub fn create_legacy_devices(
    vm: &VmFd,
    console: &ConsoleConfig,
    stop: &VmStop,
    process_start: Instant,
    build_start: Instant,
) -> Result<LegacyDevices, DeviceError> {
    let panic_message = Arc::new(Mutex::new(None));
    let out = PanicWatcher::new(console_writer(console)?, panic_message.clone());
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(DeviceError::SerialIrq)?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(
        EventFdTrigger::new(irq),
        Box::new(out),
    )));
    let boot_timer = Arc::new(Mutex::new(None));

    let mut pio_bus = Bus::new();
    pio_bus.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
    pio_bus.insert(
        Arc::new(Mutex::new(I8042::new(stop.clone()))),
        I8042_PORT,
        I8042_PORT_LEN,
    )?;
    pio_bus.insert(
        Arc::new(Mutex::new(BootTimer::new(
            process_start,
            build_start,
            boot_timer.clone(),
        ))),
        BOOT_TIMER_PORT,
        1,
    )?;
    pio_bus.insert(
        Arc::new(Mutex::new(ExitDevice::new(stop.clone()))),
        EXIT_DEVICE_PORT,
        1,
    )?;
    let power_button = attach_acpi_devices(vm, &mut pio_bus, stop)?;
    Ok(LegacyDevices {
        pio_bus,
        serial,
        boot_timer,
        panic_message,
        power_button,
    })
}

/// The CMOS RTC, the ACPI sleep/reset registers and the ACPI power button
/// (which the DSDT built in arch::x86_64::acpi describes).
fn attach_acpi_devices(
    vm: &VmFd,
    pio_bus: &mut Bus,
    stop: &VmStop,
) -> Result<PowerButton, DeviceError> {
    pio_bus.insert(Arc::new(Mutex::new(Cmos::new())), CMOS_PORT, CMOS_PORT_LEN)?;
    pio_bus.insert(
        Arc::new(Mutex::new(AcpiSleepReset::new(stop.clone()))),
        ACPI_SLEEP_RESET_PORT,
        ACPI_SLEEP_RESET_PORT_LEN,
    )?;
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&irq, POWER_BUTTON_GSI)
        .map_err(DeviceError::PowerButtonIrq)?;
    Ok(PowerButton::new(irq))
}

/// Feeds host stdin to the guest's serial port.
pub struct SerialInput {
    serial: Arc<Mutex<SerialDevice>>,
    input: RawFd,
}

impl SerialInput {
    pub fn new(serial: Arc<Mutex<SerialDevice>>, input: RawFd) -> Self {
        SerialInput { serial, input }
    }
}

impl MutEventSubscriber for SerialInput {
    fn init(&mut self, ops: &mut EventOps) {
        // Regular files and /dev/null cannot be polled; the guest simply
        // gets no input then.
        if let Err(e) = ops.add(Events::new_raw(self.input, EventSet::IN)) {
            log::debug!("serial input: stdin is not pollable ({e:?}); guest gets no input");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        // SAFETY: `buf` is valid for writes of its full length and
        // `self.input` is a file descriptor this process owns (stdin).
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), buf.len()) };
        let n = match usize::try_from(n) {
            Ok(0) => {
                let _ = ops.remove(events);
                return;
            }
            Ok(n) => n,
            Err(_) => {
                let err = std::io::Error::last_os_error();
                if err.kind() != std::io::ErrorKind::Interrupted
                    && err.kind() != std::io::ErrorKind::WouldBlock
                {
                    log::debug!("serial input: stdin read failed ({err}); stopping input");
                    let _ = ops.remove(events);
                }
                return;
            }
        };
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        let taken = serial.enqueue_input(&buf[..n]);
        if taken < n {
            log::debug!("serial input: guest FIFO full, dropped {} bytes", n - taken);
        }
    }
}

/// Wakes the event loop when someone asks the VM to stop.
pub struct StopListener {
    stop: VmStop,
}

impl StopListener {
    pub fn new(stop: VmStop) -> Self {
        StopListener { stop }
    }
}

impl MutEventSubscriber for StopListener {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.stop.eventfd(), EventSet::IN)) {
            log::error!("cannot watch the VM stop event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drain the counter so level-triggered epoll does not spin.
        let _ = self.stop.eventfd().read();
        if let Some(signum) = crate::signals::termination_signal() {
            self.stop.request(devices::StopReason::Signal(signum));
        }
    }
}

impl AsRawFd for StopListener {
    fn as_raw_fd(&self) -> RawFd {
        self.stop.eventfd().as_raw_fd()
    }
}
