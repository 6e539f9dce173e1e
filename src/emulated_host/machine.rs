//! The emulated test host as a process: assembling the per-run initramfs,
//! running QEMU, carrying I/O across the boundary and stopping the command
//! on time. The one implementation: `herd run --emulated-host`, `herd
//! emulated-host` and the tests (which run `herd emulated-host`) all boot
//! the test host here. Channels between herd and the test host:
//! - ttyS0 (QEMU's stdout): the test host's console. Lines starting with
//!   `[stderr] ` are the command's stderr, `[report] ` lines a boot report,
//!   `testhost: scenario exit=N` its exit status; the rest is logged at
//!   debug level.
//! - ttyS1 (a Unix socket QEMU serves): the command's stdout, raw bytes,
//!   and, for an interactive console, our stdin back to the command.
//! - ttyS2 (another socket): control. A line there (the reason) stops the
//!   command: sent on `--timeout`, SIGINT and SIGTERM.
//! - virtio-blk drives: disk images, attached in place (never copied), found
//!   inside by their serial `herd-dN`; and the output directory's tar.

use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::console::{self, Console, Output};
use super::initramfs::Staging;
use super::monitor;
use super::output;
use super::scenario::OUTPUT_SERIAL;

/// How long the test host may take to stop after being asked: the sweep's
/// grace periods, copying the output back, powering off.
const STOP_LIMIT: Duration = Duration::from_secs(30);
/// How often a stop request is repeated (the test host may not be
/// listening yet: its serial FIFO is cleared when the port opens).
const STOP_REPEAT: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum EmulatedHostError {
    #[error("{0}")]
    BadInput(String),
    #[error("no emulated test host: {0}")]
    NoTestHost(String),
    #[error("cannot run qemu-system-x86_64 ({0}); install QEMU: apt-get install qemu-system-x86")]
    NoQemu(io::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("assembling the test host's initramfs: {0}")]
    Assemble(String),
    #[error("the emulated test host failed: {why}\n{tail}")]
    Failed { why: String, tail: String },
}

impl EmulatedHostError {
    pub fn is_user_error(&self) -> bool {
        matches!(self, EmulatedHostError::BadInput(_))
    }
}

pub fn io_err(path: &Path) -> impl FnOnce(io::Error) -> EmulatedHostError + '_ {
    move |source| EmulatedHostError::Io {
        path: path.to_owned(),
        source,
    }
}

/// A disk image attached to the test host as a virtio-blk drive.
pub struct Drive {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The serial by which the scenario finds drive `index` in the test host.
pub fn drive_serial(index: usize) -> String {
    format!("herd-d{index}")
}

/// One test-host boot.
pub struct Job {
    /// (file here, absolute path in the test host)
    pub files: Vec<(PathBuf, String)>,
    pub drives: Vec<Drive>,
    /// Sourced by the test host's /init after KVM is up.
    pub scenario: String,
    pub mem_mib: u64,
    pub cpus: u32,
    pub stdout: Output,
    /// Forward our stdin (a terminal, switched to raw mode) to ttyS1.
    pub stdin: bool,
    /// Add iproute2's `ip` (for `herd net`), when this machine has it.
    pub with_ip: bool,
    /// Stop the command once it has run this long.
    pub timeout: Option<Duration>,
    /// Copy the scenario's output directory here when it ends.
    pub output: Option<PathBuf>,
}

/// Why the command was stopped before it ended by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopCause {
    Timeout(Duration),
    Signal(i32),
}

/// How the test host run ended.
pub struct Outcome {
    /// The scenario's exit status.
    pub status: i32,
    /// The `[report] ` lines, joined.
    pub report: Option<String>,
    pub stopped: Option<StopCause>,
}

/// Boots the test host, runs the job's scenario and returns its status.
pub fn execute(host: &Path, job: Job) -> Result<Outcome, EmulatedHostError> {
    let work = WorkDir::new().map_err(io_err(&std::env::temp_dir()))?;
    let staging = Staging::new(work.0.join("root"))?;
    staging.add_herd(&work.0, job.with_ip)?;
    for (src, dest) in &job.files {
        staging.add(src, dest)?;
    }
    staging.add_script("/scenario.sh", &job.scenario)?;
    let initrd = work.0.join("initrd.cpio");
    let overlay_bytes = staging.write_initrd(&host.join("base.cpio"), &initrd)?;
    let out_drive = match &job.output {
        Some(_) => Some(output::create_drive(&work.0)?),
        None => None,
    };
    let sock = work.0.join("stdout.sock");
    let ctl_sock = work.0.join("control.sock");
    let monitor_sock = work.0.join("monitor.sock");
    let mem = job.mem_mib + 2 * overlay_bytes.div_ceil(1 << 20);
    let args = qemu_args(
        host,
        &initrd,
        [&sock, &ctl_sock, &monitor_sock],
        &job,
        out_drive.as_deref(),
        mem,
    );
    log::debug!("qemu-system-x86_64 {args:?}");
    signals::install();
    let mut qemu = qemu_command();
    // prctl(PR_SET_PDEATHSIG) and setpgid are async-signal-safe and
    // touch no memory of the parent. If herd dies (even by SIGKILL) the
    // emulated host goes with it; in a process group of its own, a Ctrl-C at
    // the terminal reaches herd only, which then stops the command cleanly.
    // SAFETY: sound for the reasons just given.
    unsafe {
        qemu.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    let mut child = qemu
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(EmulatedHostError::NoQemu)?;
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        })
    });
    let stdout_thread = match console::connect(&sock, &mut child) {
        Some(stream) => Some(console::forward(stream, job.stdout, job.stdin)?),
        None => None,
    };
    let (ready_tx, ready_rx) = mpsc::channel();
    let console_thread = child
        .stdout
        .take()
        .map(|out| std::thread::spawn(move || console::read_console(out, &ready_tx)));
    let mut stop = Stopper::new(job.timeout, ctl_sock);
    let mut killed = false;
    let qemu_status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Some(status),
            Ok(None) => {}
            Err(_) => break None,
        }
        if ready_rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            stop.started = Some(Instant::now());
        }
        // Killed once: QEMU may take a moment to be reaped.
        if !killed && stop.poll() {
            killed = true;
            if signals::count() > 1 {
                log::error!("a second signal: killing the emulated test host at once");
            } else if stop.started.is_none() {
                // Only a signal stops a test host that has not started the
                // script (the timeout counts from the start).
                log::warn!("interrupted while the emulated test host was booting: killing it");
            } else {
                log::error!(
                    "the emulated test host did not stop within {STOP_LIMIT:?} of being asked: killing it"
                );
                match monitor::vcpu_summary(&monitor_sock) {
                    Some(state) => log::error!("the test host's vCPUs (QEMU monitor):\n{state}"),
                    None => log::error!("the test host's QEMU monitor did not answer"),
                }
            }
            let _ = child.kill();
        }
    };
    if let Some(t) = stdout_thread {
        let _ = t.join();
    }
    let console: Console = console_thread
        .and_then(|t| t.join().ok())
        .unwrap_or_default();
    let qemu_err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    let fail = |why: String| {
        let mut tail = format!(
            "--- test host console, last {} lines ---\n",
            console.tail.len()
        );
        for l in &console.tail {
            tail += l;
            tail.push('\n');
        }
        for l in qemu_err
            .lines()
            .filter(|l| !l.contains("waiting for connection"))
        {
            tail += &format!("QEMU: {l}\n");
        }
        EmulatedHostError::Failed { why, tail }
    };
    if let Some(why) = &console.setup_failed {
        return Err(fail(why.clone()));
    }
    let status = match console.status {
        Some(status) if console.kvm_ready => status,
        Some(status) => {
            return Err(fail(format!(
                "its KVM did not come up (init exit {status})"
            )))
        }
        None if stop.cause.is_some() && !console.kvm_ready => {
            log::warn!("stopped while the test host was booting");
            128 + libc::SIGKILL
        }
        None => {
            return Err(fail(format!(
                "it stopped without reporting a status (QEMU {})",
                qemu_status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
            )))
        }
    };
    if let (Some(dir), Some(drive)) = (&job.output, &out_drive) {
        output::extract(drive, dir)?;
    }
    Ok(Outcome {
        status,
        report: console.report,
        stopped: stop.cause,
    })
}

/// Stops the command on `--timeout` or a signal by asking the test host on
/// its control port; a second signal, or a test host that does not stop in
/// time, ends QEMU.
struct Stopper {
    timeout: Option<Duration>,
    ctl_sock: PathBuf,
    ctl: Option<UnixStream>,
    /// When the command started (the test host's KVM came up).
    started: Option<Instant>,
    cause: Option<StopCause>,
    asked: Option<Instant>,
    last_ask: Option<Instant>,
}

impl Stopper {
    fn new(timeout: Option<Duration>, ctl_sock: PathBuf) -> Self {
        Stopper {
            timeout,
            ctl_sock,
            ctl: None,
            started: None,
            cause: None,
            asked: None,
            last_ask: None,
        }
    }

    /// True when QEMU must be killed now.
    fn poll(&mut self) -> bool {
        if self.cause.is_none() {
            if let Some(sig) = signals::received() {
                log::warn!("{}: stopping the script", signals::name(sig));
                self.cause = Some(StopCause::Signal(sig));
            } else if let (Some(limit), Some(t0)) = (self.timeout, self.started) {
                if t0.elapsed() >= limit {
                    log::warn!(
                        "the script ran past --timeout {}: stopping it",
                        limit.as_secs()
                    );
                    self.cause = Some(StopCause::Timeout(limit));
                }
            }
        }
        let Some(cause) = self.cause else {
            return false;
        };
        if self.started.is_none() || signals::count() > 1 {
            // Nothing to stop cleanly yet, or the user insists.
            return true;
        }
        let now = Instant::now();
        let asked = *self.asked.get_or_insert(now);
        if self.last_ask.is_none_or(|t| now - t >= STOP_REPEAT) {
            self.last_ask = Some(now);
            let why = match cause {
                StopCause::Timeout(d) => format!("timeout after {} s", d.as_secs()),
                StopCause::Signal(s) => signals::name(s).to_owned(),
            };
            self.send(&why);
        }
        now - asked > STOP_LIMIT
    }

    fn send(&mut self, why: &str) {
        if self.ctl.is_none() {
            self.ctl = UnixStream::connect(&self.ctl_sock).ok();
        }
        if let Some(ctl) = &mut self.ctl {
            if ctl.write_all(format!("{why}\n").as_bytes()).is_err() {
                self.ctl = None;
            }
        }
    }
}

/// `qemu-system-x86_64` from PATH, or `$HERD_QEMU` (another build, e.g. one
/// unpacked from a .deb: its `../share/qemu` and `../share/seabios` then
/// come first as firmware directories).
fn qemu_command() -> Command {
    let Some(bin) = std::env::var_os("HERD_QEMU") else {
        return Command::new("qemu-system-x86_64");
    };
    let bin = PathBuf::from(bin);
    let mut cmd = Command::new(&bin);
    if let Some(prefix) = bin.parent().and_then(Path::parent) {
        for dir in ["share/qemu", "share/seabios"] {
            let dir = prefix.join(dir);
            if dir.is_dir() {
                cmd.arg("-L").arg(dir);
            }
        }
    }
    cmd
}

/// QEMU's `-drive` option values separate with commas; a comma in a path
/// is written twice.
pub(super) fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

/// The test host's CPU: EPYC + svm/npt gives KVM's AMD module what it
/// needs; features TCG lacks are switched off so QEMU does not warn about
/// each. XSAVE and AVX are off too: with them, guests booting side by side
/// triple-faulted and the test host's kernel crashed in 6 of 23 tries of 10
/// guests, without them in 0 of 11 (guest-images/testhost/README.md), and a
/// red CI lands nothing. Firecracker needs XSAVE: set `HERD_TESTHOST_CPU` to
/// this model without `-xsave,-xsaveopt,-avx,-avx2,-fma,-f16c` to run it.
const CPU_MODEL: &str = "EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,\
    -osvw,-topoext,-nrip-save,-xsavec,-xsave,-xsaveopt,-xsaves,-xgetbv1,-avx,-avx2,-fma,-f16c";

/// kvm_amd parameters for the test host's KVM (see qemu_args). Shadow
/// paging (npt=0): TCG then emulates no nested page walk for the guests,
/// the suspect behind their triple faults and the test host's own kernel
/// crashes (stack guard page hit in a herd vCPU thread) with nested paging
/// on; measured in guest-images/testhost/README.md.
const KVM_AMD_PARAMS: &str = "kvm_amd.npt=0";

/// The test host's kernel boots with one CPU online; /init brings the rest
/// up once kvm-hold has made the one live kernel-text patch KVM needs, so
/// no other CPU can race it (guest-images/testhost/kvm-hold.c). TSC marked
/// unstable at once for the same reason: found out later, with all CPUs up,
/// marking it patches the scheduler's clock key.
const BOOT_PARAMS: &str = "maxcpus=1 tsc=unstable";

fn qemu_args(
    host: &Path,
    initrd: &Path,
    [sock, ctl_sock, monitor_sock]: [&Path; 3],
    job: &Job,
    out_drive: Option<&Path>,
    mem_mib: u64,
) -> Vec<OsString> {
    let cpu = std::env::var("HERD_TESTHOST_CPU").unwrap_or_else(|_| CPU_MODEL.to_owned());
    let fixed = format!(
        "-accel tcg -machine q35 -cpu {cpu} -m {mem_mib} -smp {} -nodefaults \
         -no-user-config -display none -no-reboot -serial stdio",
        job.cpus
    );
    let mut args: Vec<OsString> = fixed.split_whitespace().map(OsString::from).collect();
    let mut push = |a: &str, b: String| args.extend([a.into(), b.into()]);
    push(
        "-chardev",
        format!(
            "socket,id=herdout,path={},server=on,wait=on",
            qemu_escape(sock)
        ),
    );
    push("-serial", "chardev:herdout".into());
    push(
        "-chardev",
        format!(
            "socket,id=herdctl,path={},server=on,wait=off",
            qemu_escape(ctl_sock)
        ),
    );
    push("-serial", "chardev:herdctl".into());
    push("-monitor", monitor::qemu_arg(monitor_sock));
    let mut drives: Vec<(&Path, bool, String)> = job
        .drives
        .iter()
        .enumerate()
        .map(|(i, d)| (d.path.as_path(), d.read_only, drive_serial(i)))
        .collect();
    if let Some(out) = out_drive {
        drives.push((out, false, OUTPUT_SERIAL.to_owned()));
    }
    for (i, (path, read_only, serial)) in drives.into_iter().enumerate() {
        let ro = if read_only { ",readonly=on" } else { "" };
        push(
            "-drive",
            format!(
                "file={},format=raw,if=none,id=herdd{i}{ro}",
                qemu_escape(path)
            ),
        );
        push(
            "-device",
            format!("virtio-blk-pci,drive=herdd{i},serial={serial}"),
        );
    }
    push(
        "-kernel",
        host.join("vmlinuz").to_string_lossy().into_owned(),
    );
    push("-initrd", initrd.to_string_lossy().into_owned());
    // panic=-1 + -no-reboot: a test-host panic ends QEMU instead of hanging.
    // HERD_TESTHOST_APPEND adds to it (e.g. module parameters such as
    // kvm_amd.vgif=0, which the test host's /init passes to insmod).
    let extra = std::env::var("HERD_TESTHOST_APPEND").unwrap_or_default();
    push(
        "-append",
        format!(
            "console=ttyS0 quiet panic=-1 mitigations=off {BOOT_PARAMS} {KVM_AMD_PARAMS} {extra}"
        )
        .trim_end()
        .to_owned(),
    );
    args
}

/// Takes herd's advisory lock on a disk image for as long as the returned
/// file is open, as `herd run` does: shared for read-only, exclusive for
/// writable images.
pub fn lock_disk(path: &Path, read_only: bool) -> Result<File, EmulatedHostError> {
    let file = fs::OpenOptions::new()
        .read(true)
        .open(path)
        .map_err(io_err(path))?;
    let mode = if read_only {
        libc::LOCK_SH
    } else {
        libc::LOCK_EX
    };
    // flock takes a descriptor `file` keeps open for the whole call
    // and an integer; it touches no memory of ours.
    // SAFETY: sound for the reasons just given.
    if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } != 0 {
        return Err(EmulatedHostError::BadInput(format!(
            "disk {} is in use by another VM (locked)",
            path.display()
        )));
    }
    Ok(file)
}

/// SIGINT/SIGTERM are only counted here; the run loop stops the command.
mod signals {
    use std::sync::atomic::{AtomicI32, Ordering};

    static LAST: AtomicI32 = AtomicI32::new(0);
    static COUNT: AtomicI32 = AtomicI32::new(0);

    extern "C" fn on_signal(signum: libc::c_int) {
        LAST.store(signum, Ordering::SeqCst);
        COUNT.fetch_add(1, Ordering::SeqCst);
    }

    pub fn install() {
        let handler = on_signal as extern "C" fn(libc::c_int);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // the handler only touches atomics, which is
            // async-signal-safe.
            // SAFETY: sound for the reasons just given.
            unsafe { libc::signal(sig, handler as libc::sighandler_t) };
        }
    }

    pub fn received() -> Option<i32> {
        Some(LAST.load(Ordering::SeqCst)).filter(|&s| s != 0)
    }

    pub fn count() -> i32 {
        COUNT.load(Ordering::SeqCst)
    }

    pub fn name(sig: i32) -> &'static str {
        match sig {
            libc::SIGINT => "SIGINT",
            libc::SIGTERM => "SIGTERM",
            _ => "a signal",
        }
    }
}

/// A per-run scratch directory under $TMPDIR, removed when the run ends.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new() -> io::Result<Self> {
        let base = std::env::temp_dir();
        for n in 0..1000 {
            let dir = base.join(format!("herd-emulated-{}-{n}", std::process::id()));
            match fs::create_dir(&dir) {
                Ok(()) => return Ok(WorkDir(dir)),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("no free name for a scratch directory"))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
