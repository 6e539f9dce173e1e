//! A built VM running: vCPU threads, the event loop on the calling thread,
//! and an orderly stop.

use std::os::unix::thread::JoinHandleExt;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use devices::legacy::{BootTimerReading, SerialDevice};
use devices::{StopReason, VmStop};
use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::signal::Killable;

use crate::api::{self, ApiContext, ApiError, VmDescription};
use crate::boot_report::{BootReport, BootTimeline};
use crate::control::VmControl;
use crate::device_manager::console::{ConsoleHub, ConsoleSocket};
use crate::device_manager::console_out::ConsoleWriter;
use crate::device_manager::{SerialInput, StopListener};
use crate::io_thread::{self, PendingIoThread};
use crate::metrics::MetricsSources;
use crate::seccomp::{SeccompError, ThreadKind};
use crate::signals;
use crate::vstate::vcpu::{Vcpu, VcpuContext, VcpuError};
use crate::vstate::vcpu_thread::VcpuThread;

/// How long vCPU threads get to leave KVM_RUN once the VM stops.
const VCPU_STOP_TIMEOUT: Duration = Duration::from_millis(500);
const VCPU_KICK_INTERVAL: Duration = Duration::from_millis(5);
const VCPU_POLL_INTERVAL: Duration = Duration::from_micros(100);
/// How long buffered guest console output gets to reach a slow sink.
const CONSOLE_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot set up the event loop: {0}")]
    EventManager(event_manager::Error),
    #[error("cannot install signal handlers: {0}")]
    Signals(vmm_sys_util::errno::Error),
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    #[error("cannot start a device I/O thread: {0}")]
    IoThread(std::io::Error),
}

/// How a run ended.
#[derive(Debug)]
pub struct RunOutcome {
    pub reason: StopReason,
    pub timeline: BootTimeline,
}

impl RunOutcome {
    pub fn report(&self, exit_status: i32, description: String) -> BootReport {
        BootReport::new(&self.timeline, exit_status, description)
    }
}

type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

pub struct Vmm {
    /// Kept so KVM's VM and guest RAM outlive the vCPU threads using them;
    /// field order drops the VM before its memory.
    pub(crate) _vm: VmFd,
    pub(crate) _guest_memory: GuestMemoryMmap,
    /// Each configured vCPU with the thread (started and confined by the
    /// build) that will run it.
    pub(crate) vcpus: Vec<(Vcpu, VcpuThread)>,
    pub(crate) context: VcpuContext,
    pub(crate) serial: Arc<Mutex<SerialDevice>>,
    pub(crate) boot_timer: Arc<Mutex<Option<BootTimerReading>>>,
    pub(crate) panic_message: Arc<Mutex<Option<String>>>,
    pub(crate) power_button: devices::acpi::PowerButton,
    pub(crate) device_subscribers: Vec<Subscriber>,
    /// Served on I/O threads of their own (see `io_thread`).
    pub(crate) io_subscribers: Vec<Subscriber>,
    pub(crate) console_input: bool,
    pub(crate) timeline: BootTimeline,
    pub(crate) control: Arc<VmControl>,
    /// Taken by the control API when it starts.
    pub(crate) metrics: Option<MetricsSources>,
    pub(crate) description: VmDescription,
    pub(crate) stop_timeout: Duration,
    pub(crate) console_hub: Arc<ConsoleHub>,
    pub(crate) console_writer: Option<ConsoleWriter>,
    pub(crate) console_socket: Option<ConsoleSocket>,
    /// The vsock device's listening socket, removed at teardown even when a
    /// vCPU thread that outlived its stop still holds the device.
    pub(crate) vsock_socket: Option<std::path::PathBuf>,
}

impl Vmm {
    /// The handle for pausing, resuming and stopping the VM from outside.
    pub fn control(&self) -> Arc<VmControl> {
        self.control.clone()
    }

    /// How long SIGTERM/SIGINT give the guest to power off before it is
    /// forced off.
    pub fn set_stop_timeout(&mut self, timeout: Duration) {
        self.stop_timeout = timeout;
    }

    /// Serves the control API on a Unix socket at `path` (see `api`). The
    /// API thread confines itself with its seccomp filter unless the build
    /// was told not to.
    pub fn start_api(&mut self, path: &std::path::Path) -> Result<(), ApiError> {
        let ctx = ApiContext {
            control: self.control.clone(),
            description: self.description.clone(),
            metrics: self.metrics.take().unwrap_or_default(),
        };
        api::start(path, ctx, self.context.seccomp.clone())
    }

    /// Lets `herd console` clients attach on a Unix socket at `path`.
    pub fn start_console_socket(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        self.console_socket = Some(ConsoleSocket::bind(
            path,
            self.console_hub.clone(),
            self.serial.clone(),
        )?);
        Ok(())
    }

    /// A handle that presses the guest's ACPI power button (a graceful stop
    /// request); it stays valid while the VM runs.
    pub fn power_button(&self) -> devices::acpi::PowerButton {
        self.power_button.clone()
    }

    /// Runs the guest until it stops, then stops every vCPU.
    pub fn run(self) -> Result<RunOutcome, RunError> {
        self.run_with(|| {})
    }

    /// As `run`; `started` is called once the VM is about to run, the last
    /// moment this thread may still use the file system (its filter comes
    /// next, then the vCPUs run).
    pub fn run_with(mut self, started: impl FnOnce()) -> Result<RunOutcome, RunError> {
        let stop = self.context.stop.clone();
        signals::install(stop.eventfd()).map_err(RunError::Signals)?;
        let mut events: EventManager<Subscriber> =
            EventManager::new().map_err(RunError::EventManager)?;
        events.add_subscriber(Arc::new(Mutex::new(StopListener::new(
            self.control.clone(),
            self.stop_timeout,
        ))));
        for device in self.device_subscribers.drain(..) {
            events.add_subscriber(device);
        }
        if self.console_input {
            // SAFETY: isatty only inspects the descriptor.
            let terminal = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
            match SerialInput::new(
                self.serial.clone(),
                libc::STDIN_FILENO,
                terminal.then(|| (self.control.clone(), self.stop_timeout)),
            ) {
                Ok(input) => {
                    events.add_subscriber(Arc::new(Mutex::new(input)));
                }
                Err(e) => log::warn!("serial input: {e}; the guest gets no console input"),
            }
        }
        if let Some(socket) = self.console_socket.take() {
            events.add_subscriber(Arc::new(Mutex::new(socket)));
        }
        // Everything but the vCPUs first, so that once the guest runs this
        // thread soon sleeps in the event loop: the guest's first output
        // then finds a CPU free for whoever reads it. The console and I/O
        // threads start after this thread's filter is installed and
        // inherit it, instead of each compiling a copy of it in the kernel.
        let io_threads = self
            .io_subscribers
            .drain(..)
            .enumerate()
            .map(|(i, device)| io_thread::prepare(format!("herd-io{i}"), device))
            .collect::<Result<Vec<_>, _>>()
            .map_err(RunError::IoThread)?;
        started();
        if let Some(filters) = &self.context.seccomp {
            filters.install(ThreadKind::Vmm)?;
        }
        let io_threads = io_threads
            .into_iter()
            .map(PendingIoThread::start)
            .collect::<Result<Vec<_>, _>>()
            .map_err(RunError::IoThread)?;
        if let Some(Err(e)) = self.console_writer.as_ref().map(ConsoleWriter::start) {
            log::warn!("cannot start the console output thread ({e}); a blocked console can stall the guest");
        }
        let mut threads = Vec::with_capacity(self.vcpus.len());
        for (vcpu, thread) in self.vcpus.drain(..) {
            match thread.run(vcpu, self.context.clone()) {
                Ok(handle) => threads.push(handle),
                Err(e) => {
                    abort(&stop, threads, e.to_string());
                    return Err(e.into());
                }
            }
        }
        self.control
            .set_vcpu_threads(threads.iter().map(JoinHandleExt::as_pthread_t).collect());

        while !stop.is_requested() {
            if let Err(e) = events.run() {
                log::error!("event loop failed: {e:?}");
                stop.request(StopReason::KvmFailure(format!("event loop failed: {e:?}")));
            }
        }
        self.timeline.stop_requested = Some(Instant::now());
        self.control.release_vcpus();
        stop_vcpus(threads);
        drop(io_threads);
        if let Some(socket) = &self.vsock_socket {
            let _ = std::fs::remove_file(socket);
        }
        if let Some(writer) = &self.console_writer {
            if !writer.drain(CONSOLE_DRAIN_TIMEOUT) {
                log::warn!("the console output is blocked; the guest's last output is lost");
            }
        }
        self.timeline.torn_down = Some(Instant::now());
        self.timeline.first_guest_entry = self.context.first_entry.get().copied();
        self.timeline.boot_timer = *self.boot_timer.lock().unwrap_or_else(|p| p.into_inner());
        self.timeline.exits_at_init = self.context.exits_at_init.get().cloned();
        self.timeline.exits_at_end = Some(self.context.exits.snapshot());

        let mut reason = stop
            .reason()
            .unwrap_or(StopReason::KvmFailure("stopped without a reason".into()));
        // A panicking Linux guest reboots (panic=N) or halts: it is a crash
        // all the same.
        if let Some(panic) = self
            .panic_message
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take()
        {
            if matches!(reason, StopReason::GuestReset | StopReason::GuestPowerOff) {
                reason = StopReason::GuestCrash(format!("guest kernel panic: {panic}"));
            }
        }
        Ok(RunOutcome {
            reason,
            timeline: self.timeline,
        })
    }
}

/// Gives up starting the VM: the vCPUs already running stop first.
fn abort(stop: &VmStop, threads: Vec<JoinHandle<()>>, why: String) {
    stop.request(StopReason::KvmFailure(why));
    stop_vcpus(threads);
}

/// Kicks every vCPU thread out of KVM_RUN until it notices the stop, and
/// waits for it. A thread that cannot be stopped in time is left behind;
/// the process is about to exit anyway.
fn stop_vcpus(threads: Vec<JoinHandle<()>>) {
    let deadline = Instant::now() + VCPU_STOP_TIMEOUT;
    let mut next_kick = Instant::now();
    let mut pending = threads;
    loop {
        let (done, running): (Vec<_>, Vec<_>) =
            pending.into_iter().partition(JoinHandle::is_finished);
        for handle in done {
            if handle.join().is_err() {
                log::error!("a vCPU thread panicked");
            }
        }
        pending = running;
        if pending.is_empty() {
            return;
        }
        let now = Instant::now();
        if now > deadline {
            log::warn!("{} vCPU thread(s) did not stop in time", pending.len());
            return;
        }
        if now >= next_kick {
            // A thread that checked the stop flag just before entering
            // KVM_RUN misses one kick, so kicks repeat until it is out.
            for handle in &pending {
                // ESRCH (the thread just finished) is harmless.
                let _ = handle.kill(signals::vcpu_kick_signal());
            }
            next_kick = now + VCPU_KICK_INTERVAL;
        }
        std::thread::sleep(VCPU_POLL_INTERVAL);
    }
}
