//! The herd test host: a small Linux (Debian's cloud kernel + busybox) under
//! QEMU TCG with an emulated AMD-V CPU, so that real KVM works inside it even
//! where the machine's own /dev/kvm cannot boot Linux guests, or is absent.
//!
//! `guest-images/testhost/build.sh` builds (and caches) the kernel and a base
//! initramfs; each run appends a second cpio archive (the kernel unpacks
//! concatenated archives) with herd, its shared libraries, the test's files
//! and `/scenario.sh`. The test host's `/init` loads KVM, runs the scenario
//! and prints `testhost: scenario exit=<code>`, which is how the exit code
//! comes back. Scenarios get two shell helpers (`guest-images/testhost/lib.sh`):
//! `guest ARGS…` runs `herd ARGS…` with output prefixed `[guest] ` and keeps
//! herd's exit status; `run_guest NAME ARGS…` also frames it with markers that
//! [`ScenarioResult::run`] finds.
//!
//! Console lines are echoed to the test's stderr as they arrive (`[testhost] …`
//! and `[guest] …`; libtest shows them on failure or with `--nocapture`), and
//! every failure panics with the last lines of both consoles.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::ffi::OsString;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Lines of each console shown in a failure message.
const TAIL: usize = 40;
/// Where herd goes inside the test host (on PATH there).
const HERD_DEST: &str = "/usr/local/bin/herd";
const EXIT_MARK: &str = "testhost: scenario exit=";
const KVM_READY_MARK: &str = "testhost: kvm ready";
const GUEST_PREFIX: &str = "[guest] ";
const GUEST_TIMEOUT_MARK: &str = "testhost: guest timed out";

/// The built test host: kernel and base initramfs from build.sh's cache.
#[derive(Debug, Clone)]
pub struct TestHost {
    dir: PathBuf,
}

/// Why the test host cannot run, or `Ok` if it can (builds it if needed).
pub fn testhost_available() -> Result<(), String> {
    TestHost::get().map(|_| ())
}

/// Runs `script` in a fresh test host with herd and `files` in it; see
/// [`Scenario`] for where `files` land. Panics only if the test host itself
/// cannot be built or started; check the result with its `assert_*` methods.
pub fn run_scenario(
    name: &str,
    herd: &Path,
    files: &[(PathBuf, &str)],
    script: &str,
    timeout: Duration,
) -> ScenarioResult {
    let mut sc = Scenario::new(name, script).herd(herd).timeout(timeout);
    for (src, dest) in files {
        sc = sc.file(src, dest);
    }
    sc.run()
}

impl TestHost {
    /// Builds the test host once per process (build.sh caches across runs).
    pub fn get() -> Result<&'static TestHost, String> {
        static HOST: OnceLock<Result<TestHost, String>> = OnceLock::new();
        HOST.get_or_init(Self::build).as_ref().map_err(Clone::clone)
    }

    fn build() -> Result<TestHost, String> {
        // Integration tests build with the root package as CARGO_MANIFEST_DIR.
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("guest-images/testhost/build.sh");
        let out = Command::new("bash")
            .arg(&script)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            let tail: Vec<&str> = err.lines().collect();
            let tail = tail[tail.len().saturating_sub(10)..].join("\n");
            return Err(format!(
                "{} failed ({}):\n{tail}",
                script.display(),
                out.status
            ));
        }
        let stdout = String::from_utf8_lossy(&out.stdout);
        let dir = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
        for f in ["vmlinuz", "base.cpio"] {
            if !dir.join(f).is_file() {
                return Err(format!(
                    "{} printed {dir:?}, which has no {f}",
                    script.display()
                ));
            }
        }
        Ok(TestHost { dir })
    }

    /// The test host's own kernel (Debian cloud 6.1), a bzImage that also
    /// boots as a herd guest.
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
}

/// One test-host boot: files to add, a script to run, limits.
#[derive(Debug, Clone)]
pub struct Scenario {
    name: String,
    script: String,
    herd: Option<PathBuf>,
    /// (host path, absolute path in the test host)
    files: Vec<(PathBuf, String)>,
    timeout: Duration,
    /// Test-host memory and vCPUs (default 2048 MiB, 2).
    pub mem_mib: u32,
    pub cpus: u32,
}

impl Scenario {
    pub fn new(name: &str, script: &str) -> Self {
        Scenario {
            name: name.to_string(),
            script: script.to_string(),
            herd: None,
            files: Vec::new(),
            timeout: Duration::from_secs(300),
            mem_mib: 2048,
            cpus: 2,
        }
    }

    /// The herd binary to install (with its `ldd` libraries) as `herd`.
    pub fn herd(mut self, path: &Path) -> Self {
        self.herd = Some(path.to_path_buf());
        self
    }

    /// Adds a host file; a relative `dest` goes under `/guest/`.
    pub fn file(mut self, src: &Path, dest: &str) -> Self {
        let dest = if dest.starts_with('/') {
            dest.to_string()
        } else {
            format!("/guest/{dest}")
        };
        self.files.push((src.to_path_buf(), dest));
        self
    }

    /// Wall-clock limit for the whole test host run, QEMU start to exit.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Boots the test host and runs the scenario. Panics (with the reason)
    /// if the test host is unavailable or the initramfs cannot be assembled:
    /// these tests must fail loudly rather than skip.
    /// Runs the scenario, and once more if the emulated test host itself
    /// flaked (see `ScenarioResult::emulation_flake`); said loudly, and a
    /// flake twice in a row still fails the tests.
    pub fn run(&self) -> ScenarioResult {
        let first = self.run_once();
        match first.emulation_flake() {
            Some(why) => {
                eprintln!(
                    "{}: RETRY: the emulated test host flaked ({why}); running the scenario once more",
                    self.name
                );
                self.run_once()
            }
            None => first,
        }
    }

    fn run_once(&self) -> ScenarioResult {
        let host = TestHost::get()
            .unwrap_or_else(|e| panic!("scenario `{}`: test host unavailable: {e}", self.name));
        // Two TCG machines at once on a small CI box only make both time out.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let work = WorkDir::new(&self.name)
            .unwrap_or_else(|e| panic!("scenario `{}`: temp dir: {e}", self.name));
        let initrd = work.0.join("initrd.cpio");
        self.assemble(host, &work.0, &initrd)
            .unwrap_or_else(|e| panic!("scenario `{}`: assembling initramfs: {e}", self.name));
        self.boot(host, &initrd)
    }

    /// initrd = base.cpio + a second newc archive made by `cpio` from a
    /// staging tree of symlinks to the host files (`-L` stores their
    /// contents), so large guest images are never copied twice.
    fn assemble(&self, host: &TestHost, work: &Path, initrd: &Path) -> io::Result<()> {
        let root = work.join("root");
        let stage = |src: &Path, dest: &str| -> io::Result<()> {
            let src = fs::canonicalize(src).map_err(|e| ctx(src, e))?;
            let link = root.join(dest.trim_start_matches('/'));
            if let Some(parent) = link.parent() {
                fs::create_dir_all(parent)?;
            }
            let _ = fs::remove_file(&link);
            std::os::unix::fs::symlink(&src, &link).map_err(|e| ctx(&link, e))
        };
        fs::create_dir_all(&root)?;
        if let Some(herd) = &self.herd {
            let herd = stripped_copy(herd, work)?;
            stage(&herd, HERD_DEST)?;
            for lib in ldd(&herd)? {
                stage(&lib, &lib.to_string_lossy())?;
            }
        }
        for (src, dest) in &self.files {
            stage(src, dest)?;
        }
        let script = root.join("scenario.sh");
        fs::write(&script, &self.script)?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;

        fs::copy(host.dir.join("base.cpio"), initrd)?;
        let out = fs::OpenOptions::new().append(true).open(initrd)?;
        let status = Command::new("sh")
            .arg("-c")
            .arg("find . -mindepth 1 | LC_ALL=C sort | cpio --quiet -o -H newc -L -R 0:0")
            .current_dir(&root)
            .stdout(out)
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!("cpio failed ({status})")));
        }
        Ok(())
    }

    fn boot(&self, host: &TestHost, initrd: &Path) -> ScenarioResult {
        let start = Instant::now();
        let mut qemu = Command::new("qemu-system-x86_64");
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
        // memory of the parent; a test process that dies (killed, timed out)
        // then takes its emulated host with it instead of leaving it spinning.
        unsafe {
            qemu.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = qemu
            .args(qemu_args(host, initrd, self.mem_mib, self.cpus))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("scenario `{}`: cannot start QEMU: {e}", self.name));
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout was piped");
        std::thread::spawn(move || {
            // Serial output may hold stray non-UTF-8 bytes: read raw lines.
            for line in BufReader::new(stdout).split(b'\n') {
                let Ok(line) = line else { break };
                let text = String::from_utf8_lossy(&line)
                    .trim_end_matches('\r')
                    .to_string();
                if tx.send(text).is_err() {
                    break;
                }
            }
        });
        let mut stderr = child.stderr.take().expect("stderr was piped");
        let err_thread = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });

        let mut res = ScenarioResult {
            name: self.name.clone(),
            lines: Vec::new(),
            exit_code: None,
            timed_out: false,
            kvm_ready: None,
            elapsed: Duration::ZERO,
            qemu_status: None,
            qemu_stderr: String::new(),
        };
        let deadline = start + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(line) => {
                    if line.starts_with(GUEST_PREFIX) {
                        eprintln!("{line}");
                    } else {
                        eprintln!("[testhost] {line}");
                    }
                    if line.contains(KVM_READY_MARK) && res.kvm_ready.is_none() {
                        res.kvm_ready = Some(start.elapsed());
                    }
                    if let Some(code) = line.trim().strip_prefix(EXIT_MARK) {
                        res.exit_code = code.trim().parse().ok();
                    }
                    res.lines.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    res.timed_out = true;
                    eprintln!("[testhost] timeout after {:?}: killing QEMU", self.timeout);
                    let _ = child.kill();
                    break;
                }
            }
        }
        res.qemu_status = child.wait().ok();
        res.qemu_stderr = err_thread.join().unwrap_or_default();
        res.elapsed = start.elapsed();
        if let Some(t) = res.kvm_ready {
            eprintln!(
                "[testhost] `{}`: kvm ready after {t:.2?}, done after {:.2?}",
                self.name, res.elapsed
            );
        }
        res
    }
}

fn qemu_args(host: &TestHost, initrd: &Path, mem_mib: u32, cpus: u32) -> Vec<OsString> {
    // EPYC + svm/npt gives KVM's AMD module what it needs; features TCG
    // lacks are switched off so QEMU does not warn about each. No XSAVE (nor
    // AVX, which needs it): under TCG's nested SVM, guests saw CPUID 0xD.0
    // EBX not follow their XCR0 ("XSAVE consistency problem", then FXSAVE
    // fallback) or, without AVX, had XRSTOR fail in rt_sigreturn (init killed
    // by SIGSEGV). Without XSAVE guests use FXSAVE from the start.
    let cpu = std::env::var("HERD_TESTHOST_CPU").unwrap_or_else(|_| {
        "EPYC,+svm,+npt,-rdseed,-sha-ni,-fxsr-opt,-misalignsse,-3dnowprefetch,-osvw,\
         -topoext,-nrip-save,-xsavec,-xsave,-xsaveopt,-xsaves,-xgetbv1,-avx,-avx2,-fma,-f16c"
            .to_string()
    });
    let fixed = format!(
        "-accel tcg -machine q35 -cpu {cpu} -m {mem_mib} -smp {cpus} -nodefaults \
         -no-user-config -display none -serial stdio -no-reboot"
    );
    let mut args: Vec<OsString> = fixed.split_whitespace().map(OsString::from).collect();
    args.extend(["-kernel".into(), host.kernel().into_os_string()]);
    args.extend(["-initrd".into(), initrd.as_os_str().to_os_string()]);
    // panic=-1: a test-host panic reboots at once, and -no-reboot turns that
    // into QEMU exiting instead of hanging until the timeout.
    args.extend([
        "-append".into(),
        "console=ttyS0 quiet panic=-1 mitigations=off".into(),
    ]);
    args
}

/// What a test-host run printed and how it ended.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub name: String,
    /// Every console line (test host and `[guest] ` lines), in order.
    pub lines: Vec<String>,
    /// The scenario's exit status, from `testhost: scenario exit=N`; `None`
    /// if the test host never got that far (panic, timeout, QEMU failure).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// From QEMU start to `testhost: kvm ready`.
    pub kvm_ready: Option<Duration>,
    /// From QEMU start to QEMU exit.
    pub elapsed: Duration,
    pub qemu_status: Option<ExitStatus>,
    pub qemu_stderr: String,
}

impl ScenarioResult {
    /// The full console as one string.
    pub fn output(&self) -> String {
        self.lines.join("\n")
    }

    /// All guest lines (herd's output inside the scenario), prefix removed.
    pub fn guest_lines(&self) -> Vec<&str> {
        self.lines
            .iter()
            .filter_map(|l| l.strip_prefix(GUEST_PREFIX))
            .collect()
    }

    /// The run framed by `run_guest NAME …` in the scenario.
    pub fn run(&self, name: &str) -> Option<GuestRun<'_>> {
        let begin = format!("testhost: begin {name} ");
        let end = format!("testhost: end {name} exit=");
        let first = self.lines.iter().position(|l| l.starts_with(&begin))?;
        let start = uptime(&self.lines[first]);
        let mut run = GuestRun {
            host: self,
            name: name.to_string(),
            exit_code: None,
            lines: Vec::new(),
            secs: None,
            timed_out: false,
            upto: self.lines.len(),
        };
        for (i, l) in self.lines.iter().enumerate().skip(first + 1) {
            if let Some(rest) = l.strip_prefix(&end) {
                run.exit_code = rest.split_whitespace().next().and_then(|c| c.parse().ok());
                run.secs = start.zip(uptime(l)).map(|(a, b)| b - a);
                run.upto = i + 1;
                break;
            }
            if let Some(g) = l.strip_prefix(GUEST_PREFIX) {
                run.lines.push(g.to_string());
            }
            run.timed_out |= l.starts_with(GUEST_TIMEOUT_MARK);
        }
        Some(run)
    }

    /// Like [`Self::run`], but panics with the console tail if it is missing.
    /// Why this run may say nothing about herd: the emulated test host
    /// misbehaved. Under QEMU TCG's nested SVM (2 cores, often loaded), about
    /// one run in five or ten has a guest that triple-faults with no kernel
    /// message (even before its virtio devices are probed) or whose console
    /// stops mid-line until HERD_TIMEOUT (as if an interrupt were lost); the
    /// test host's own KVM has overflowed its kernel stack (a test-host line,
    /// unlike a guest's panic), and the whole test host has frozen until the
    /// scenario's timeout. All look like lost or garbled event injection in
    /// the emulated SVM; tests that expect a triple fault must not use this
    /// harness's retry.
    pub fn emulation_flake(&self) -> Option<&str> {
        if self.timed_out {
            return Some("the test host froze");
        }
        self.lines
            .iter()
            .find(|l| {
                l.contains("guest crashed: vCPU 0: triple fault")
                    || l.starts_with("testhost: guest timed out")
                    || (!l.starts_with("[guest] ")
                        && (l.contains("Kernel panic - not syncing")
                            || l.contains("BUG: TASK stack guard page")))
            })
            .map(String::as_str)
    }

    /// The named run, which must have ended on its own (not by the test
    /// host dying or HERD_TIMEOUT).
    pub fn finished_run(&self, name: &str) -> GuestRun<'_> {
        let r = self.expect_run(name);
        if r.exit_code.is_none() {
            r.fail("the run never ended (test host died or timed out)");
        }
        if r.timed_out {
            r.fail("herd did not exit before HERD_TIMEOUT");
        }
        eprintln!(
            "guest run `{name}`: herd exit {:?} after {:.1?} s",
            r.exit_code, r.secs
        );
        r
    }

    pub fn expect_run(&self, name: &str) -> GuestRun<'_> {
        self.run(name)
            .unwrap_or_else(|| self.fail(&format!("the scenario never started guest run `{name}`")))
    }

    /// Panics with `what` and the last lines of both consoles.
    pub fn fail(&self, what: &str) -> ! {
        panic!(
            "{}",
            self.report(what, &self.guest_lines(), self.lines.len())
        )
    }

    /// Panics unless the scenario ran to the end with status 0.
    pub fn assert_ok(&self) {
        if self.exit_code != Some(0) {
            self.fail("scenario did not exit 0");
        }
    }

    /// Panics unless some console line contains `needle`.
    pub fn assert_contains(&self, needle: &str) {
        if !self.lines.iter().any(|l| l.contains(needle)) {
            self.fail(&format!("console has no line containing {needle:?}"));
        }
    }

    /// `upto`: console lines considered (a guest run's failure shows the test
    /// host as it was when that run ended, not after later runs).
    fn report(&self, what: &str, guest: &[&str], upto: usize) -> String {
        let mut s = format!("scenario `{}`: {what}\n", self.name);
        s += &format!(
            "scenario exit: {:?}, timed out: {}, QEMU: {:?}, kvm ready after: {:?}, ran {:.1?}\n",
            self.exit_code, self.timed_out, self.qemu_status, self.kvm_ready, self.elapsed
        );
        let host: Vec<&str> = self.lines[..upto.min(self.lines.len())]
            .iter()
            .filter(|l| !l.starts_with(GUEST_PREFIX))
            .map(String::as_str)
            .collect();
        s += &tail_block("test-host console", &host);
        s += &tail_block("guest console", guest);
        if !self.qemu_stderr.trim().is_empty() {
            let err: Vec<&str> = self.qemu_stderr.lines().collect();
            s += &tail_block("QEMU stderr", &err);
        }
        s
    }
}

/// One `run_guest NAME …` inside a scenario.
#[derive(Debug, Clone)]
pub struct GuestRun<'a> {
    host: &'a ScenarioResult,
    pub name: String,
    /// herd's exit status; `None` if the end marker is missing.
    pub exit_code: Option<i32>,
    /// herd's output (guest console + herd's log), prefix removed.
    pub lines: Vec<String>,
    /// How long the run took, by the test host's clock.
    pub secs: Option<f64>,
    /// HERD_TIMEOUT ran out and herd was sent SIGTERM.
    pub timed_out: bool,
    /// Console lines up to this run's end marker.
    upto: usize,
}

impl GuestRun<'_> {
    /// Panics with `what`, this run's last guest lines and the test host's.
    pub fn fail(&self, what: &str) -> ! {
        let guest: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        panic!(
            "{}",
            self.host.report(
                &format!("guest run `{}`: {what}", self.name),
                &guest,
                self.upto
            )
        )
    }

    pub fn assert_exit(&self, code: i32) {
        if self.exit_code != Some(code) {
            self.fail(&format!(
                "herd exited {:?}, expected {code}",
                self.exit_code
            ));
        }
    }

    pub fn assert_exit_nonzero(&self) {
        if matches!(self.exit_code, None | Some(0)) {
            self.fail(&format!(
                "herd exited {:?}, expected a failure status",
                self.exit_code
            ));
        }
    }

    /// The first line containing `needle`.
    pub fn find(&self, needle: &str) -> Option<&str> {
        self.lines
            .iter()
            .find(|l| l.contains(needle))
            .map(String::as_str)
    }

    pub fn assert_contains(&self, needle: &str) -> &str {
        self.find(needle)
            .unwrap_or_else(|| self.fail(&format!("no guest line contains {needle:?}")))
    }
}

/// The `uptime=` value of a marker line.
fn uptime(line: &str) -> Option<f64> {
    line.split_once("uptime=")?
        .1
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

fn tail_block(title: &str, lines: &[&str]) -> String {
    let from = lines.len().saturating_sub(TAIL);
    let mut s = format!(
        "--- {title}: last {} of {} lines ---\n",
        lines.len() - from,
        lines.len()
    );
    for l in &lines[from..] {
        s += l;
        s.push('\n');
    }
    s
}

/// A copy of `bin` without debug info when `strip` exists: a debug build of
/// herd is mostly DWARF, which would only slow QEMU's initrd loading.
fn stripped_copy(bin: &Path, work: &Path) -> io::Result<PathBuf> {
    let dest = work.join("herd");
    let stripped = Command::new("strip")
        .arg("--strip-debug")
        .arg("-o")
        .arg(&dest)
        .arg(bin)
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !stripped {
        fs::copy(bin, &dest).map_err(|e| ctx(bin, e))?;
    }
    Ok(dest)
}

/// Shared libraries `ldd` lists for `bin`, the dynamic loader included;
/// none for a static binary (ldd then exits non-zero and prints no paths).
fn ldd(bin: &Path) -> io::Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(bin).output()?;
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

/// Adds the path to an I/O error, which alone would not say which file.
fn ctx(path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// A per-run scratch directory, removed when the run ends.
struct WorkDir(PathBuf);

impl WorkDir {
    fn new(name: &str) -> io::Result<Self> {
        static N: AtomicU32 = AtomicU32::new(0);
        let safe: String = name
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let dir = std::env::temp_dir().join(format!(
            "herd-testhost-{}-{}-{safe}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&dir)?;
        Ok(WorkDir(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
