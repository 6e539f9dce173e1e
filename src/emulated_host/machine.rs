//! The emulated test host as a process: finding its build, assembling the
//! per-run initramfs, running QEMU and carrying I/O across the boundary.
//!
//! The production twin of `tests/support/testhost.rs` (which tests cannot
//! share with the binary). Channels between herd and the test host:
//! - ttyS0 (QEMU's stdout): the test host's console. Lines starting with
//!   `[stderr] ` are the command's stderr, `[report] ` lines a boot report,
//!   `testhost: scenario exit=N` its exit status; the rest is logged at
//!   debug level.
//! - ttyS1 (a Unix socket QEMU serves): the command's stdout, raw bytes,
//!   and, for an interactive console, our stdin back to the command.
//! - virtio-blk drives: disk images, attached in place (never copied), found
//!   inside by their serial `herd-dN`.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

/// Where herd goes inside the test host (on PATH there).
const HERD_DEST: &str = "/usr/local/bin/herd";
const EXIT_MARK: &str = "testhost: scenario exit=";
pub const SETUP_FAILED_MARK: &str = "testhost: setup failed: ";
pub const STDERR_PREFIX: &str = "[stderr] ";
pub const REPORT_PREFIX: &str = "[report] ";
/// Console lines kept for an error message.
const TAIL: usize = 40;
/// How long QEMU may take to open the stdout socket.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(60);

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

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> EmulatedHostError + '_ {
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

/// Where the command's stdout goes.
pub enum Output {
    Stdout,
    File(File),
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
}

/// How the test host run ended.
pub struct Outcome {
    /// The scenario's exit status.
    pub status: i32,
    /// The `[report] ` lines, joined.
    pub report: Option<String>,
}

/// The test host's build directory (vmlinuz + base.cpio): `$HERD_TESTHOST_DIR`,
/// else built by the source tree's build.sh, else the newest complete build
/// in the cache.
pub fn find_testhost() -> Result<PathBuf, EmulatedHostError> {
    let complete = |d: &Path| d.join("vmlinuz").is_file() && d.join("base.cpio").is_file();
    if let Some(dir) = std::env::var_os("HERD_TESTHOST_DIR") {
        let dir = PathBuf::from(dir);
        if complete(&dir) {
            return Ok(dir);
        }
        return Err(EmulatedHostError::NoTestHost(format!(
            "HERD_TESTHOST_DIR={} holds no vmlinuz and base.cpio; point it at a directory \
             printed by guest-images/testhost/build.sh, or unset it",
            dir.display()
        )));
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/testhost/build.sh");
    if script.is_file() {
        log::debug!("preparing the test host with {}", script.display());
        let out = Command::new("bash")
            .arg(&script)
            .stderr(Stdio::inherit())
            .output()
            .map_err(io_err(&script))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
        if out.status.success() && complete(&dir) {
            return Ok(dir);
        }
        return Err(EmulatedHostError::NoTestHost(format!(
            "{} failed ({}); see its messages above (it needs root to install QEMU \
             and download Debian's kernel the first time)",
            script.display(),
            out.status
        )));
    }
    let cache = match std::env::var_os("HERD_CACHE") {
        Some(c) => PathBuf::from(c),
        None => PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/herd"),
    }
    .join("testhost");
    let newest = fs::read_dir(&cache)
        .into_iter()
        .flatten()
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|d| d.join("done").is_file() && complete(d))
        .filter_map(|d| Some((fs::metadata(d.join("done")).ok()?.modified().ok()?, d)))
        .max();
    newest.map(|(_, d)| d).ok_or_else(|| {
        EmulatedHostError::NoTestHost(format!(
            "none in {} and herd's source tree ({}) is gone; build one with \
             guest-images/testhost/build.sh from herd's sources, or set HERD_TESTHOST_DIR \
             to a directory holding vmlinuz and base.cpio",
            cache.display(),
            env!("CARGO_MANIFEST_DIR")
        ))
    })
}

/// Boots the test host, runs the job's scenario and returns its status;
/// `Ok(None)` if SIGINT/SIGTERM stopped it.
pub fn execute(host: &Path, job: Job) -> Result<Option<Outcome>, EmulatedHostError> {
    let work = WorkDir::new().map_err(io_err(&std::env::temp_dir()))?;
    let initrd = work.0.join("initrd.cpio");
    let overlay_bytes = assemble(host, &job, &work.0, &initrd)?;
    let sock = work.0.join("stdout.sock");
    let mem = job.mem_mib + 2 * overlay_bytes.div_ceil(1 << 20);
    let args = qemu_args(host, &initrd, &sock, &job, mem);
    log::debug!("qemu-system-x86_64 {args:?}");
    signals::install();
    let mut qemu = Command::new("qemu-system-x86_64");
    // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
    // memory of the parent: if herd dies (even by SIGKILL) the emulated
    // host goes with it.
    unsafe {
        qemu.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
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
    signals::watch(child.id());
    let stderr = child.stderr.take().map(|mut err| {
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            s
        })
    });
    let stdout_thread = match connect(&sock, &mut child) {
        Some(stream) => Some(forward(stream, job.stdout, job.stdin)?),
        None => None,
    };
    let console = child.stdout.take().map(read_console).unwrap_or_default();
    let qemu_status = child.wait().ok();
    signals::watch(0);
    if let Some(t) = stdout_thread {
        let _ = t.join();
    }
    let qemu_err = stderr.and_then(|t| t.join().ok()).unwrap_or_default();
    if signals::received() {
        return Ok(None);
    }
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
    if let Some(why) = console.setup_failed {
        return Err(fail(why));
    }
    match console.status {
        Some(status) if console.kvm_ready => Ok(Some(Outcome {
            status,
            report: console.report,
        })),
        Some(status) => Err(fail(format!(
            "its KVM did not come up (init exit {status})"
        ))),
        None => Err(fail(format!(
            "it stopped without reporting a status (QEMU {})",
            qemu_status.map_or_else(|| "status unknown".to_owned(), |s| s.to_string())
        ))),
    }
}

/// What the test host's console said.
#[derive(Default)]
struct Console {
    status: Option<i32>,
    kvm_ready: bool,
    setup_failed: Option<String>,
    report: Option<String>,
    tail: VecDeque<String>,
}

fn read_console(stdout: impl Read) -> Console {
    let mut c = Console::default();
    let start = Instant::now();
    // Serial output may hold stray non-UTF-8 bytes: read raw lines.
    for line in BufReader::new(stdout).split(b'\n') {
        let Ok(line) = line else { break };
        let line = String::from_utf8_lossy(&line);
        let line = line.trim_end_matches('\r');
        if let Some(err) = line.strip_prefix(STDERR_PREFIX) {
            eprintln!("{err}");
            continue;
        }
        if let Some(r) = line.strip_prefix(REPORT_PREFIX) {
            let report = c.report.get_or_insert_with(String::new);
            report.push_str(r);
            report.push('\n');
            continue;
        }
        log::debug!("test host: {line} [{:.1?}]", start.elapsed());
        if line.contains("testhost: kvm ready") {
            c.kvm_ready = true;
            log::info!("test host up after {:.1?}", start.elapsed());
        }
        if let Some(code) = line.trim().strip_prefix(EXIT_MARK) {
            c.status = code.trim().parse().ok();
        }
        if let Some(why) = line.strip_prefix(SETUP_FAILED_MARK) {
            c.setup_failed = Some(why.to_owned());
        }
        if c.tail.len() == TAIL {
            c.tail.pop_front();
        }
        c.tail.push_back(line.to_owned());
    }
    c
}

/// Connects to QEMU's stdout socket, which it waits on before booting.
/// `None` if QEMU exits first (its stderr says why).
fn connect(sock: &Path, child: &mut Child) -> Option<UnixStream> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(stream) = UnixStream::connect(sock) {
            return Some(stream);
        }
        if !matches!(child.try_wait(), Ok(None)) {
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    None
}

/// Copies ttyS1 to `out` until QEMU closes it; with `stdin`, also our
/// terminal (raw mode, restored when the copy ends) to ttyS1.
fn forward(
    stream: UnixStream,
    mut out: Output,
    stdin: bool,
) -> Result<std::thread::JoinHandle<()>, EmulatedHostError> {
    let raw = stdin.then(crate::terminal::RawTerminal::enable).flatten();
    if raw.is_some() {
        let mut to_guest = stream
            .try_clone()
            .map_err(io_err(Path::new("stdout socket")))?;
        // Blocks in read(2) until herd exits; nothing to join.
        std::thread::spawn(move || {
            let _ = io::copy(&mut io::stdin().lock(), &mut to_guest);
        });
    }
    Ok(std::thread::spawn(move || {
        let _raw = raw;
        let mut stream = stream;
        let mut buf = [0u8; 4096];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            let chunk = &buf[..n];
            let written = match &mut out {
                Output::Stdout => {
                    let mut o = io::stdout().lock();
                    o.write_all(chunk).and_then(|()| o.flush())
                }
                Output::File(f) => f.write_all(chunk),
            };
            if written.is_err() {
                break;
            }
        }
    }))
}

/// initrd = base.cpio + a second newc archive made by `cpio` from a staging
/// tree of symlinks (`-L` stores their targets' contents). Returns the
/// overlay's size.
fn assemble(host: &Path, job: &Job, work: &Path, initrd: &Path) -> Result<u64, EmulatedHostError> {
    let root = work.join("root");
    let stage = |src: &Path, dest: &str| -> Result<(), EmulatedHostError> {
        let src = fs::canonicalize(src).map_err(io_err(src))?;
        let link = root.join(dest.trim_start_matches('/'));
        if let Some(parent) = link.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        let _ = fs::remove_file(&link);
        std::os::unix::fs::symlink(&src, &link).map_err(io_err(&link))
    };
    fs::create_dir_all(&root).map_err(io_err(&root))?;
    let exe = std::env::current_exe().map_err(io_err(Path::new("/proc/self/exe")))?;
    let herd = stripped_copy(&exe, work)?;
    stage(&herd, HERD_DEST)?;
    let mut binaries = vec![herd];
    if job.with_ip {
        let ip = ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
            .iter()
            .map(Path::new)
            .find(|p| p.is_file());
        if let Some(ip) = ip {
            stage(ip, "/usr/local/bin/ip")?;
            binaries.push(ip.to_owned());
        }
    }
    for bin in &binaries {
        for lib in ldd(bin)? {
            stage(&lib, &lib.to_string_lossy())?;
        }
    }
    for (src, dest) in &job.files {
        stage(src, dest)?;
    }
    let script = root.join("scenario.sh");
    fs::write(&script, &job.scenario).map_err(io_err(&script))?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).map_err(io_err(&script))?;

    let base = host.join("base.cpio");
    fs::copy(&base, initrd).map_err(io_err(&base))?;
    let base_len = fs::metadata(initrd).map_err(io_err(initrd))?.len();
    let out = fs::OpenOptions::new()
        .append(true)
        .open(initrd)
        .map_err(io_err(initrd))?;
    let result = Command::new("sh")
        .arg("-c")
        .arg("find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -L -R 0:0")
        .current_dir(&root)
        .stdout(out)
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| EmulatedHostError::Assemble(format!("cannot run cpio: {e}")))?;
    if !result.status.success() {
        return Err(EmulatedHostError::Assemble(format!(
            "cpio failed ({}): {}; is cpio installed (apt-get install cpio)?",
            result.status,
            String::from_utf8_lossy(&result.stderr).trim()
        )));
    }
    let total = fs::metadata(initrd).map_err(io_err(initrd))?.len();
    Ok(total.saturating_sub(base_len))
}

/// QEMU's `-drive` option values separate with commas; a comma in a path
/// is written twice.
fn qemu_escape(path: &Path) -> String {
    path.to_string_lossy().replace(',', ",,")
}

fn qemu_args(host: &Path, initrd: &Path, sock: &Path, job: &Job, mem_mib: u64) -> Vec<OsString> {
    // As in tests/support/testhost.rs: EPYC + svm/npt for kvm-amd, with the
    // features TCG lacks (and XSAVE, which nested SVM under TCG gets wrong)
    // switched off.
    let cpu = std::env::var("HERD_TESTHOST_CPU").unwrap_or_else(|_| {
        "EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,\
         -topoext,-nrip-save,-xsavec,-xsave,-xsaveopt,-xsaves,-xgetbv1,-avx,-avx2,-fma,-f16c"
            .to_string()
    });
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
    for (i, d) in job.drives.iter().enumerate() {
        let ro = if d.read_only { ",readonly=on" } else { "" };
        push(
            "-drive",
            format!(
                "file={},format=raw,if=none,id=herdd{i}{ro}",
                qemu_escape(&d.path)
            ),
        );
        push(
            "-device",
            format!("virtio-blk-pci,drive=herdd{i},serial={}", drive_serial(i)),
        );
    }
    push(
        "-kernel",
        host.join("vmlinuz").to_string_lossy().into_owned(),
    );
    push("-initrd", initrd.to_string_lossy().into_owned());
    // panic=-1 + -no-reboot: a test-host panic ends QEMU instead of hanging.
    push(
        "-append",
        "console=ttyS0 quiet panic=-1 mitigations=off".into(),
    );
    args
}

/// A copy of `bin` without debug info when `strip` exists: a debug build of
/// herd is mostly DWARF, which would only slow QEMU's initrd loading.
fn stripped_copy(bin: &Path, work: &Path) -> Result<PathBuf, EmulatedHostError> {
    let dest = work.join("herd");
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dest)
        .arg(bin)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !stripped {
        fs::copy(bin, &dest).map_err(io_err(bin))?;
    }
    Ok(dest)
}

/// Shared libraries `ldd` lists for `bin`, the dynamic loader included;
/// none for a static binary.
fn ldd(bin: &Path) -> Result<Vec<PathBuf>, EmulatedHostError> {
    let out = Command::new("ldd").arg(bin).output().map_err(io_err(bin))?;
    let text = String::from_utf8_lossy(&out.stdout);
    // "libc.so.6 => /lib/…/libc.so.6 (0x…)" or "/lib64/ld-linux-x86-64.so.2 (0x…)"
    let paths = text.lines().filter_map(|line| match line.split_once("=>") {
        Some((_, right)) => right.split_whitespace().next(),
        None => line.split_whitespace().next(),
    });
    Ok(paths
        .filter(|p| p.starts_with('/'))
        .map(PathBuf::from)
        .collect())
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
    // SAFETY: flock takes a descriptor `file` keeps open for the whole call
    // and an integer; it touches no memory of ours.
    if unsafe { libc::flock(file.as_raw_fd(), mode | libc::LOCK_NB) } != 0 {
        return Err(EmulatedHostError::BadInput(format!(
            "disk {} is in use by another VM (locked)",
            path.display()
        )));
    }
    Ok(file)
}

/// SIGINT/SIGTERM kill QEMU; herd then returns as its VMs do when stopped.
mod signals {
    use super::{AtomicI32, Ordering};

    static QEMU_PID: AtomicI32 = AtomicI32::new(0);
    static RECEIVED: AtomicI32 = AtomicI32::new(0);

    extern "C" fn on_signal(signum: libc::c_int) {
        RECEIVED.store(signum, Ordering::SeqCst);
        let pid = QEMU_PID.load(Ordering::SeqCst);
        if pid > 0 {
            // SAFETY: kill(2) is async-signal-safe and takes plain integers.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    pub fn install() {
        let handler = on_signal as extern "C" fn(libc::c_int);
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only touches atomics and calls kill(2),
            // both async-signal-safe.
            unsafe { libc::signal(sig, handler as libc::sighandler_t) };
        }
    }

    /// The QEMU to kill on a signal (0: none); kills it at once if a
    /// signal came before it was started.
    pub fn watch(pid: u32) {
        let pid = i32::try_from(pid).unwrap_or(0);
        QEMU_PID.store(pid, Ordering::SeqCst);
        if pid > 0 && received() {
            // SAFETY: kill(2) with plain integers.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }

    pub fn received() -> bool {
        RECEIVED.load(Ordering::SeqCst) != 0
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
