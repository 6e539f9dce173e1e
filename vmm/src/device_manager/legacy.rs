//! Legacy devices on the port-I/O bus, the console backends behind the
//! serial port, and the event-loop subscriber that turns stop requests and
//! signals into a stop.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::acpi::{
    AcpiSleepReset, PowerButton, ACPI_SLEEP_RESET_PORT, ACPI_SLEEP_RESET_PORT_LEN, POWER_BUTTON_GSI,
};
use devices::legacy::{
    BootTimer, BootTimerReading, Cmos, ExitDevice, GuestReady, SerialDevice, BOOT_TIMER_PORT,
    CMOS_PORT, CMOS_PORT_LEN, COM1_IRQ, COM1_PORT, COM1_PORT_LEN, EXIT_DEVICE_PORT, I8042,
    I8042_KBD_IRQ, I8042_PORT, I8042_PORT_LEN,
};
use devices::{Bus, BusError, EventFdTrigger, StopReason, VmStop};
use event_manager::{EventOps, Events, MutEventSubscriber};
use kvm_ioctls::VmFd;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;

use super::console::{ConsoleHub, ConsoleTee, RotatingLog};
use super::console_out::{self, ConsoleSink, ConsoleWriter, FdSink};
use crate::config::ConsoleConfig;
use crate::control::VmControl;
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
    #[error("cannot connect the i8042 keyboard to guest IRQ {I8042_KBD_IRQ}: {0}")]
    KeyboardIrq(kvm_ioctls::Error),
    #[error("cannot connect the ACPI power button to guest IRQ {POWER_BUTTON_GSI}: {0}")]
    PowerButtonIrq(kvm_ioctls::Error),
}

/// What the legacy devices share with the rest of the VMM.
pub struct LegacyDevices {
    pub pio_bus: Bus,
    pub serial: Arc<Mutex<SerialDevice>>,
    pub boot_timer: Arc<Mutex<Option<BootTimerReading>>>,
    pub guest_ready: Arc<GuestReady>,
    pub i8042: Arc<Mutex<I8042>>,
    pub panic_message: Arc<Mutex<Option<String>>>,
    pub console_hub: Arc<ConsoleHub>,
    pub power_button: PowerButton,
    /// Starts the console output thread, flushes it at teardown (None:
    /// no output).
    pub console_writer: Option<ConsoleWriter>,
}

fn console_writer(console: &ConsoleConfig) -> Result<Box<dyn ConsoleSink>, DeviceError> {
    let file_error = |path: &std::path::Path| {
        let path = path.to_owned();
        move |source| DeviceError::ConsoleFile { path, source }
    };
    Ok(match console {
        ConsoleConfig::None => Box::new(std::io::sink()),
        ConsoleConfig::Stdio => Box::new(FdSink::new(std::io::stdout())),
        ConsoleConfig::Log { path, max_bytes } => {
            Box::new(RotatingLog::open(path, *max_bytes).map_err(file_error(path))?)
        }
        ConsoleConfig::File(path) => Box::new(FdSink::new(
            OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(file_error(path))?,
        )),
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
    let console_hub = Arc::new(ConsoleHub::default());
    // The sink may block; the vCPU writing the serial port must not.
    let (sink, console_writer): (Box<dyn Write + Send>, _) = match console {
        ConsoleConfig::None => (Box::new(std::io::sink()), None),
        _ => {
            let (out, writer) = console_out::new(console_writer(console)?);
            (Box::new(out), Some(writer))
        }
    };
    let tee = ConsoleTee {
        sink,
        hub: console_hub.clone(),
    };
    let out = PanicWatcher::new(tee, panic_message.clone());
    let irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&irq, COM1_IRQ)
        .map_err(DeviceError::SerialIrq)?;
    let serial = Arc::new(Mutex::new(
        SerialDevice::new(EventFdTrigger::new(irq), Box::new(out)).map_err(DeviceError::EventFd)?,
    ));
    let boot_timer = Arc::new(Mutex::new(None));
    let guest_ready = Arc::new(GuestReady::default());
    let kbd_irq = EventFd::new(libc::EFD_NONBLOCK).map_err(DeviceError::EventFd)?;
    vm.register_irqfd(&kbd_irq, I8042_KBD_IRQ)
        .map_err(DeviceError::KeyboardIrq)?;
    let i8042 = Arc::new(Mutex::new(I8042::new(stop.clone(), kbd_irq)));

    let mut pio_bus = Bus::new();
    pio_bus.insert(serial.clone(), COM1_PORT, COM1_PORT_LEN)?;
    pio_bus.insert(i8042.clone(), I8042_PORT, I8042_PORT_LEN)?;
    pio_bus.insert(
        Arc::new(Mutex::new(BootTimer::new(
            process_start,
            build_start,
            boot_timer.clone(),
            guest_ready.clone(),
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
        guest_ready,
        i8042,
        panic_message,
        console_hub,
        power_button,
        console_writer,
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

/// Wakes the event loop when someone asks the VM to stop, and turns
/// SIGTERM/SIGINT into a graceful stop (a second signal, half a second or
/// more after the first, stops at once).
pub struct StopListener {
    control: Arc<VmControl>,
    stop_timeout: Duration,
    signals_handled: u32,
    /// When the first termination signal was handled.
    first_signal_at: Option<Instant>,
}

/// Termination signals closer together than this are one stop request.
const REPEATED_SIGNAL_GRACE: Duration = Duration::from_millis(500);

impl StopListener {
    pub fn new(control: Arc<VmControl>, stop_timeout: Duration) -> Self {
        StopListener {
            control,
            stop_timeout,
            signals_handled: 0,
            first_signal_at: None,
        }
    }
}

impl MutEventSubscriber for StopListener {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(
            self.control.stop_handle().eventfd(),
            EventSet::IN,
        )) {
            log::error!("cannot watch the VM stop event: {e:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Drain the counter so level-triggered epoll does not spin.
        let _ = self.control.stop_handle().eventfd().read();
        let (count, signum) = crate::signals::terminations();
        if count <= self.signals_handled {
            return;
        }
        self.signals_handled = count;
        let now = Instant::now();
        match self.first_signal_at {
            None => {
                self.first_signal_at = Some(now);
                self.control.power_off(
                    self.stop_timeout,
                    &format!("signal {signum}"),
                    StopReason::Signal(signum),
                );
            }
            // One stop often arrives twice at once: systemd signals every
            // process of the unit's cgroup, a shell the whole process group,
            // and a jailed herd's supervisor forwards what it got. Only a
            // later signal means "now".
            Some(first) if now.duration_since(first) < REPEATED_SIGNAL_GRACE => {
                log::debug!("signal {signum} again at once: the same stop request");
            }
            Some(_) => {
                log::info!("signal {signum} again: stopping the VM at once");
                self.control
                    .stop_handle()
                    .request(StopReason::Signal(signum));
            }
        }
    }
}
