//! Test-host scenarios for the tests and benches: a shell script run by
//! `herd emulated-host` (the same code users run: src/emulated_host/), with
//! files put into the test host, an output directory copied back and the
//! script's output and status. No second QEMU command line lives here.
//!
//! Writing a test (see guest-images/testhost/README.md for the test host):
//!
//! ```ignore
//! let res = Scenario::new("my_test", "run_guest boot run --kernel /guest/vmlinux …\n\
//!                                     echo done >$HERD_OUTPUT_DIR/result")
//!     .herd(Path::new(env!("CARGO_BIN_EXE_herd")))
//!     .file(&kernel, "vmlinux")            // /guest/vmlinux in the test host
//!     .timeout(Duration::from_secs(300))   // the script's own run time
//!     .run();
//! res.assert_ok();
//! assert_eq!(res.output_file("result").as_deref(), Some("done\n"));
//! res.finished_run("boot").assert_exit(0);
//! ```
//!
//! The script (busybox sh, run in /emu) gets the test host's helpers
//! (`guest-images/testhost/lib.sh`): `guest ARGS…` runs `herd ARGS…` with
//! output prefixed `[guest] `; `run_guest NAME ARGS…` also frames it with
//! markers that [`ScenarioResult::run`] finds; `bg_guest`/`show`/`wait_for`
//! for guests in the background. Whatever it leaves running is stopped when
//! it exits. Its stdout lines are [`ScenarioResult::lines`]; the test host's
//! console (herd's debug log) is kept for failure messages. Both are echoed
//! to the test's stderr as they arrive (libtest shows them on failure or
//! with `--nocapture`), and every failure panics with the last lines.
#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, BufRead, BufReader, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Lines of each console shown in a failure message.
const TAIL: usize = 40;
const GUEST_PREFIX: &str = "[guest] ";
const GUEST_TIMEOUT_MARK: &str = "testhost: guest timed out";
/// Time for the test host to boot and stop, on top of the script's timeout,
/// before the harness kills herd itself.
const BOOT_AND_STOP: Duration = Duration::from_secs(180);

/// The built test host: kernel and base initramfs from build.sh's cache.
#[derive(Debug, Clone)]
pub struct TestHost {
    dir: PathBuf,
}

/// Why the test host cannot run, or `Ok` if it can (builds it if needed).
pub fn testhost_available() -> Result<(), String> {
    TestHost::get().map(|_| ())
}

/// The one scenario all tests of a suite read: `setup` runs on the first
/// call, and if it fails, every test fails with the reason (never skips).
pub fn shared<T: Send + Sync>(
    cell: &'static OnceLock<Result<T, String>>,
    suite: &str,
    setup: fn() -> Result<T, String>,
) -> &'static T {
    match cell.get_or_init(setup) {
        Ok(t) => t,
        Err(e) => panic!("{suite} scenario could not start: {e}"),
    }
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

    /// The test host's own kernel (Debian cloud), a bzImage that also boots
    /// as a herd guest.
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

    /// The herd binary to run (it installs itself in the test host);
    /// default: this package's.
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

    /// Adds host files, each with its `dest` as for [`Scenario::file`].
    pub fn files(self, files: impl IntoIterator<Item = (PathBuf, String)>) -> Self {
        files
            .into_iter()
            .fold(self, |sc, (src, dest)| sc.file(&src, &dest))
    }

    /// Limit for the script's run time (`herd emulated-host --timeout`).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Boots the test host and runs the scenario. Panics (with the reason)
    /// if the test host is unavailable or herd cannot be started: these
    /// tests must fail loudly rather than skip. There is no retry: a flake
    /// of the emulated test host fails the tests that depend on it.
    pub fn run(&self) -> ScenarioResult {
        let host = TestHost::get()
            .unwrap_or_else(|e| panic!("scenario `{}`: test host unavailable: {e}", self.name));
        // Two TCG machines at once on a small CI box only make both time out.
        static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
        let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
        let work = WorkDir::new(&self.name)
            .unwrap_or_else(|e| panic!("scenario `{}`: temp dir: {e}", self.name));
        let script = work.0.join("scenario.sh");
        fs::write(&script, &self.script)
            .unwrap_or_else(|e| panic!("scenario `{}`: {}: {e}", self.name, script.display()));
        let out_dir = work.0.join("out");
        let herd = self
            .herd
            .clone()
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_herd")));
        let mut cmd = Command::new(herd);
        cmd.env("HERD_TESTHOST_DIR", &host.dir)
            .args(["emulated-host", "--log-level", "debug"])
            .arg(format!("--mem={}", self.mem_mib))
            .arg(format!("--cpus={}", self.cpus))
            .arg(format!("--timeout={}", self.timeout.as_secs().max(1)))
            .arg("--output-dir")
            .arg(&out_dir);
        for (src, dest) in &self.files {
            let mut arg = std::ffi::OsString::from("--file=");
            arg.push(src);
            arg.push(format!(":{dest}"));
            cmd.arg(arg);
        }
        cmd.arg("--").arg(&script);
        let mut res = self.boot(cmd);
        res.outputs = read_tree(&out_dir);
        res
    }

    fn boot(&self, mut cmd: Command) -> ScenarioResult {
        let start = Instant::now();
        // prctl(PR_SET_PDEATHSIG) is async-signal-safe and touches no
        // memory of the parent; a test process that dies (killed, timed out)
        // then takes herd, and herd its emulated host, with it.
        // SAFETY: sound for the reasons just given.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                Ok(())
            });
        }
        let mut child = KillOnDrop(
            cmd.stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap_or_else(|e| panic!("scenario `{}`: cannot start herd: {e}", self.name)),
        );
        let (tx, rx) = mpsc::channel();
        let out = lines(
            child.0.stdout.take().expect("stdout was piped"),
            tx.clone(),
            true,
        );
        let err = lines(child.0.stderr.take().expect("stderr was piped"), tx, false);
        let mut res = ScenarioResult {
            name: self.name.clone(),
            lines: Vec::new(),
            console: Vec::new(),
            exit_code: None,
            timed_out: false,
            kvm_ready: None,
            elapsed: Duration::ZERO,
            status: None,
            outputs: BTreeMap::new(),
        };
        let deadline = start + self.timeout + BOOT_AND_STOP;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok((true, line)) => {
                    if line.starts_with(GUEST_PREFIX) {
                        eprintln!("{line}");
                    } else {
                        eprintln!("[script] {line}");
                    }
                    res.lines.push(line);
                }
                Ok((false, line)) => {
                    eprintln!("[herd] {line}");
                    if line.contains("test host up after") && res.kvm_ready.is_none() {
                        res.kvm_ready = Some(start.elapsed());
                    }
                    res.timed_out |= line.contains("ran past --timeout");
                    res.console.push(line);
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    eprintln!(
                        "[herd] still running {:?} after the script's timeout: killing it",
                        BOOT_AND_STOP
                    );
                    res.timed_out = true;
                    let _ = child.0.kill();
                    break;
                }
            }
        }
        let _ = (out.join(), err.join());
        res.status = child.0.wait().ok();
        res.elapsed = start.elapsed();
        let host_failed = res.console.iter().any(|l| l.starts_with("herd: error:"));
        if !res.timed_out && !host_failed {
            res.exit_code = res.status.and_then(|s| s.code());
        }
        if let Some(t) = res.kvm_ready {
            eprintln!(
                "[herd] `{}`: test host up after {t:.2?}, done after {:.2?}",
                self.name, res.elapsed
            );
        }
        res
    }
}

/// Sends each line of `pipe` tagged with `is_stdout`; returns at EOF.
fn lines(
    pipe: impl Read + Send + 'static,
    tx: mpsc::Sender<(bool, String)>,
    is_stdout: bool,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        // Serial output may hold stray non-UTF-8 bytes: read raw lines.
        for line in BufReader::new(pipe).split(b'\n') {
            let Ok(line) = line else { break };
            let text = String::from_utf8_lossy(&line)
                .trim_end_matches('\r')
                .to_string();
            if tx.send((is_stdout, text)).is_err() {
                break;
            }
        }
    })
}

/// Every regular file under `dir`, by path relative to it.
fn read_tree(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut files = BTreeMap::new();
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                todo.push(p);
            } else if let (Ok(rel), Ok(data)) = (p.strip_prefix(dir), fs::read(&p)) {
                files.insert(rel.to_path_buf(), data);
            }
        }
    }
    files
}

/// What a test-host run printed and how it ended.
#[derive(Debug, Clone)]
pub struct ScenarioResult {
    pub name: String,
    /// The script's stdout lines (its own and `[guest] ` lines), in order.
    pub lines: Vec<String>,
    /// herd's stderr: its log with the test host's console, the script's
    /// stderr.
    pub console: Vec<String>,
    /// The script's exit status; `None` if it did not end by itself (the
    /// test host failed, or the script ran past its timeout).
    pub exit_code: Option<i32>,
    pub timed_out: bool,
    /// From herd's start to the test host's KVM being up.
    pub kvm_ready: Option<Duration>,
    /// From herd's start to its exit.
    pub elapsed: Duration,
    /// herd's own exit status.
    pub status: Option<ExitStatus>,
    /// The files the script left in $HERD_OUTPUT_DIR, by relative path.
    pub outputs: BTreeMap<PathBuf, Vec<u8>>,
}

impl ScenarioResult {
    /// The script's whole stdout as one string.
    pub fn output(&self) -> String {
        self.lines.join("\n")
    }

    /// A file the script left in $HERD_OUTPUT_DIR, as text.
    pub fn output_file(&self, name: &str) -> Option<String> {
        self.outputs
            .get(Path::new(name))
            .map(|d| String::from_utf8_lossy(d).into_owned())
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
        };
        for l in self.lines.iter().skip(first + 1) {
            if let Some(rest) = l.strip_prefix(&end) {
                run.exit_code = rest.split_whitespace().next().and_then(|c| c.parse().ok());
                run.secs = start.zip(uptime(l)).map(|(a, b)| b - a);
                break;
            }
            if let Some(g) = l.strip_prefix(GUEST_PREFIX) {
                run.lines.push(g.to_string());
            }
            run.timed_out |= l.starts_with(GUEST_TIMEOUT_MARK);
        }
        Some(run)
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
        panic!("{}", self.report(what, &self.guest_lines()))
    }

    /// Panics unless the scenario ran to the end with status 0.
    pub fn assert_ok(&self) {
        if self.exit_code != Some(0) {
            self.fail("scenario did not exit 0");
        }
    }

    /// Panics unless some line of the script's stdout contains `needle`.
    pub fn assert_contains(&self, needle: &str) {
        if !self.lines.iter().any(|l| l.contains(needle)) {
            self.fail(&format!("the script printed no line containing {needle:?}"));
        }
    }

    fn report(&self, what: &str, guest: &[&str]) -> String {
        let mut s = format!("scenario `{}`: {what}\n", self.name);
        s += &format!(
            "scenario exit: {:?}, timed out: {}, herd: {:?}, test host up after: {:?}, ran {:.1?}\n",
            self.exit_code, self.timed_out, self.status, self.kvm_ready, self.elapsed
        );
        let script: Vec<&str> = self
            .lines
            .iter()
            .filter(|l| !l.starts_with(GUEST_PREFIX))
            .map(String::as_str)
            .collect();
        let console: Vec<&str> = self.console.iter().map(String::as_str).collect();
        s += &tail_block("test-host console and herd's log", &console);
        s += &tail_block("script output", &script);
        s += &tail_block("guest console", guest);
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
}

impl GuestRun<'_> {
    /// Panics with `what`, this run's last guest lines and the test host's.
    pub fn fail(&self, what: &str) -> ! {
        let guest: Vec<&str> = self.lines.iter().map(String::as_str).collect();
        panic!(
            "{}",
            self.host
                .report(&format!("guest run `{}`: {what}", self.name), &guest)
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

/// Kills and reaps herd if a panic leaves it running.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
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
