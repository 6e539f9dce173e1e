//! `herd run --emulated-host` and `herd emulated-host`: herd re-runs itself
//! inside the emulated test host (QEMU TCG with nested KVM). These need QEMU
//! and the test host (built by guest-images/testhost/build.sh), not
//! /dev/kvm. Nothing here skips: a missing piece fails every test with the
//! reason.

mod support;

use std::fs;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use support::herd_run::{drain, run_with_timeout, wait_until, watch_lines, ChildGuard, Run};

/// One test-host run (boot + guest) takes ~10-20 s on a small machine.
const TIMEOUT: Duration = Duration::from_secs(300);

/// Runs herd with `args`, killed after TIMEOUT (its emulated host dies with
/// it). Runs are serialized: two TCG machines at once on a small box only
/// make both slow.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

fn herd(args: &[&str]) -> Run {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let run = run_with_timeout(herd_command(args), TIMEOUT, &format!("herd {args:?}"));
    eprintln!("herd {args:?}: {}", run.dump());
    run
}

/// herd with `args`, no stdin, stdout and stderr piped.
fn herd_command(args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_herd"));
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

fn spawn_herd(args: &[&str]) -> ChildGuard {
    ChildGuard(herd_command(args).spawn().expect("spawn herd"))
}

/// The guest kernel and the base initrd (busybox init), built if needed.
fn kernel_and_initrd() -> (PathBuf, PathBuf) {
    (
        image_dir("kernel").join("vmlinux"),
        image_dir("base").join("initrd.cpio.gz"),
    )
}

/// `--file=` arguments that put the guest kernel and initrd at
/// /emu/vmlinux and /emu/initrd.cpio.gz in the test host.
fn kernel_and_initrd_files() -> [String; 2] {
    let (kernel, initrd) = kernel_and_initrd();
    [
        format!("--file={}", path(&kernel)),
        format!("--file={}", path(&initrd)),
    ]
}

/// Shell: `until_running LOG` waits (2 min at most) until the herd guest
/// logging to LOG has reached its `herd.run` command.
const UNTIL_RUNNING: &str = r#"until_running() {
	i=0
	until grep -q "herd-init: running herd.run" "$1"; do
		i=$((i + 1))
		[ $i -lt 600 ] || break
		sleep 0.2
	done
}
"#;

/// The cache dir of guest-images/NAME, built if needed.
fn image_dir(name: &str) -> PathBuf {
    support::images::image_dir(name).unwrap_or_else(|e| panic!("{e}"))
}

/// A fresh scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-emu-test-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn path(p: &Path) -> &str {
    p.to_str().expect("UTF-8 path")
}

#[test]
fn guest_output_and_exit_status_come_back() {
    let (kernel, initrd) = kernel_and_initrd();
    let dir = scratch("exit");
    let report = dir.join("report.json");
    let out = herd(&[
        "run",
        "--emulated-host",
        "--kernel",
        path(&kernel),
        "--initrd",
        path(&initrd),
        "--boot-report",
        path(&report),
        "--cmdline",
        r#"herd.run="echo hello-emulated; exit 5""#,
    ]);
    assert!(
        out.stdout.lines().any(|l| l.trim_end() == "hello-emulated"),
        "the guest's line is not on stdout: {}",
        out.dump()
    );
    assert_eq!(out.code(), Some(5), "{}", out.dump());
    let report = fs::read_to_string(&report).expect("boot report written outside");
    let json: serde_json::Value = serde_json::from_str(&report).expect("boot report is JSON");
    assert_eq!(json["exit_status"], 5, "{report}");
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn disks_are_attached_in_place() {
    let (kernel, _) = kernel_and_initrd();
    let base = image_dir("base").join("base.erofs");
    let dir = scratch("disks");
    let root = dir.join("root.erofs");
    fs::copy(&base, &root).expect("copy base image");
    let data = dir.join("web1.img");
    fs::write(&data, vec![0u8; 1 << 20]).expect("data disk");
    let ro = dir.join("ro.img");
    let ro_content: Vec<u8> = (0..1u32 << 20)
        .map(|i| u8::try_from(i % 251).expect("below 251"))
        .collect();
    fs::write(&ro, &ro_content).expect("read-only disk");
    let root_content = fs::read(&root).expect("read root");

    let ro_arg = format!("{}:ro", path(&ro));
    let out = herd(&[
        "run",
        "--emulated-host",
        "--kernel",
        path(&kernel),
        "--root",
        path(&root),
        "--disk",
        path(&data),
        "--disk",
        &ro_arg,
        "--cmdline",
        "herd.run=\"echo serial=$(cat /sys/block/vdb/serial); \
         echo written-by-guest | dd of=/dev/vdb conv=fsync; \
         echo x | dd of=/dev/vdc conv=fsync; exit 0\"",
    ]);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(
        out.stdout.contains("serial=web1"),
        "the disk's serial is not its file name's stem: {}",
        out.dump()
    );
    let written = fs::read(&data).expect("read data disk");
    assert!(
        written.starts_with(b"written-by-guest\n"),
        "the guest's write did not reach {}: {}",
        data.display(),
        out.dump()
    );
    assert!(
        fs::read(&ro).expect("read ro") == ro_content,
        "ro disk changed"
    );
    assert!(
        fs::read(&root).expect("read root") == root_content,
        "root changed"
    );
    let _ = fs::remove_dir_all(&dir);
}

#[test]
fn scripts_run_with_herd_files_and_drives() {
    let dir = scratch("script");
    let greeting = dir.join("greeting.txt");
    fs::write(&greeting, "hello from outside\n").expect("file");
    let drive = dir.join("scratch.img");
    fs::write(&drive, vec![0u8; 64 << 10]).expect("drive");
    let script = dir.join("script.sh");
    fs::write(
        &script,
        "echo \"args: $*\"\ncat in/greeting.txt\nherd --version\n\
         echo to-the-drive | dd of=/emu/scratch.img conv=fsync 2>/dev/null\n\
         echo oops >&2\nexit 7\n",
    )
    .expect("script");
    let file_arg = format!("{}:in/greeting.txt", path(&greeting));
    let out = herd(&[
        "emulated-host",
        "--file",
        &file_arg,
        "--drive",
        path(&drive),
        "--mem",
        "512",
        "--",
        path(&script),
        "one",
        "two",
    ]);
    assert_eq!(out.code(), Some(7), "{}", out.dump());
    for line in ["args: one two", "hello from outside", "herd "] {
        assert!(out.stdout.contains(line), "no {line:?}: {}", out.dump());
    }
    assert!(out.stderr.lines().any(|l| l == "oops"), "{}", out.dump());
    assert!(!out.stdout.contains("oops"), "stderr leaked to stdout");
    let written = fs::read(&drive).expect("read drive");
    assert!(written.starts_with(b"to-the-drive\n"), "{}", out.dump());
    let _ = fs::remove_dir_all(&dir);
}

/// `herd emulated-host` started with its output collected line by line:
/// when each stdout line arrived, and the PIDs of the QEMUs it ran.
struct LiveRun {
    run: Run,
    lines: Vec<(Instant, String)>,
    qemu_pids: Vec<u32>,
    ended: Instant,
}

impl LiveRun {
    /// From the stdout line `line` to herd's exit.
    fn since(&self, line: &str) -> Duration {
        let (at, _) = self
            .lines
            .iter()
            .find(|(_, l)| l == line)
            .unwrap_or_else(|| panic!("no line {line:?}: {}", self.run.dump()));
        self.ended - *at
    }

    fn assert_no_qemu_left(&self) {
        for pid in &self.qemu_pids {
            assert!(
                !alive(*pid),
                "QEMU pid {pid} still running after herd exited"
            );
        }
    }
}

/// PIDs of the processes whose parent is `pid`.
fn children(pid: u32) -> Vec<u32> {
    let mut out = Vec::new();
    for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(child) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let stat = fs::read_to_string(e.path().join("stat")).unwrap_or_default();
        // "pid (comm) state ppid …": comm may hold spaces, the last ')' ends it.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid == Some(pid) {
            out.push(child);
        }
    }
    out
}

fn alive(pid: u32) -> bool {
    // A zombie is gone for our purposes: it runs nothing.
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        s.rsplit_once(')')
            .is_some_and(|(_, r)| !r.trim_start().starts_with('Z'))
    })
}

fn herd_live(args: &[&str]) -> LiveRun {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = spawn_herd(args);
    let pid = child.0.id();
    let stdout = child.0.stdout.take().expect("stdout");
    let lines = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .map(|l| (Instant::now(), l))
            .collect::<Vec<_>>()
    });
    let stderr = drain(child.0.stderr.take().expect("stderr"));
    let deadline = Instant::now() + TIMEOUT;
    let mut qemu_pids = Vec::new();
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "herd {args:?} still running after {TIMEOUT:?}"
        );
        for c in children(pid) {
            let comm = fs::read_to_string(format!("/proc/{c}/comm")).unwrap_or_default();
            if comm.starts_with("qemu-system") && !qemu_pids.contains(&c) {
                qemu_pids.push(c);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let ended = Instant::now();
    let lines = lines.join().expect("stdout reader");
    let run = Run {
        status,
        stdout: lines.iter().map(|(_, l)| format!("{l}\n")).collect(),
        stderr: stderr.join().expect("stderr reader"),
    };
    eprintln!("herd {args:?}: {}", run.dump());
    LiveRun {
        run,
        lines,
        qemu_pids,
        ended,
    }
}

/// The acceptance case of issue 14: a script that starts a VM in the
/// background and exits 3. herd must end within seconds with status 3,
/// the VM stopped (SIGTERM: its log, copied back through the output
/// directory, says so), and neither QEMU nor herd left running.
#[test]
fn a_script_exit_stops_what_it_left_running() {
    let dir = scratch("leftover");
    let out = dir.join("out");
    let script = dir.join("script.sh");
    fs::write(
        &script,
        UNTIL_RUNNING.to_owned()
            + r#"herd run --kernel /emu/vmlinux --initrd /emu/initrd.cpio.gz --mem 128 \
	--cmdline 'quiet herd.run="sleep 600"' </dev/null >"$HERD_OUTPUT_DIR/vm.log" 2>&1 &
echo $! >"$HERD_OUTPUT_DIR/vm.pid"
sleep 600 &
until_running "$HERD_OUTPUT_DIR/vm.log"
echo "guest up: $(grep -c 'herd-init: running herd.run' "$HERD_OUTPUT_DIR/vm.log")"
echo "script exits now"
exit 3
"#,
    )
    .expect("script");
    let [k, i] = kernel_and_initrd_files();
    let live = herd_live(&[
        "emulated-host",
        &k,
        &i,
        "--output-dir",
        path(&out),
        "--",
        path(&script),
    ]);
    let dump = live.run.dump();
    assert!(live.run.stdout.contains("guest up: 1"), "{dump}");
    assert_eq!(live.run.code(), Some(3), "{dump}");
    let took = live.since("script exits now");
    assert!(
        took < Duration::from_secs(10),
        "herd ended {took:?} after the script: {dump}"
    );
    assert!(
        live.run.stderr.contains("the script exited with status 3"),
        "{dump}"
    );
    // The background herd runs jailed (the default as root): its
    // supervisor and the jailed VM process are two herd processes.
    assert!(
        live.run
            .stderr
            .contains("processes running (herd x2, sleep x1): SIGTERM"),
        "{dump}"
    );
    assert!(
        !live.run.stderr.contains("SIGKILL"),
        "herd needed SIGKILL: {dump}"
    );
    let vm_log = fs::read_to_string(out.join("vm.log")).expect("vm.log copied back");
    // SIGTERM is a graceful stop: herd asks the guest to power off.
    assert!(
        vm_log.contains("signal 15: asked the guest to power off") && vm_log.contains("VM stopped"),
        "the background VM was not stopped by SIGTERM: {vm_log}"
    );
    assert!(!live.qemu_pids.is_empty(), "no QEMU seen: {dump}");
    live.assert_no_qemu_left();
    let _ = fs::remove_dir_all(&dir);
}

/// `--timeout 20` on a script that would sleep 600 s: stopped after ~20 s
/// of running, said so, exit 124 (as timeout(1)).
#[test]
fn a_script_past_its_timeout_is_stopped() {
    let dir = scratch("timeout");
    let script = dir.join("script.sh");
    fs::write(&script, "echo sleeping\nsleep 600\necho woke\n").expect("script");
    let live = herd_live(&["emulated-host", "--timeout", "20", "--", path(&script)]);
    let dump = live.run.dump();
    assert_eq!(live.run.code(), Some(124), "{dump}");
    assert!(
        live.run
            .stderr
            .contains("ran past --timeout 20: stopping it"),
        "{dump}"
    );
    assert!(!live.run.stdout.contains("woke"), "{dump}");
    let ran = live.since("sleeping");
    assert!(
        ran >= Duration::from_secs(19) && ran < Duration::from_secs(35),
        "the script ran {ran:?} (expected ~20 s): {dump}"
    );
    live.assert_no_qemu_left();
    let _ = fs::remove_dir_all(&dir);
}

/// SIGTERM to herd stops the script the same way: exit 143, said so.
#[test]
fn sigterm_stops_the_script() {
    let dir = scratch("sigterm");
    let script = dir.join("script.sh");
    fs::write(&script, "echo sleeping\nsleep 600\n").expect("script");
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|p| p.into_inner());
    let mut child = spawn_herd(&["emulated-host", "--", path(&script)]);
    let (started, out) = watch_lines(child.0.stdout.take().expect("stdout"), |l| l == "sleeping");
    let err = drain(child.0.stderr.take().expect("stderr"));
    started
        .recv_timeout(TIMEOUT)
        .expect("the script never started");
    let pid = libc::pid_t::try_from(child.0.id()).expect("pid");
    // SAFETY: kill(2) on our own child's pid with a plain signal number.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let status = wait_until(&mut child.0, Instant::now() + Duration::from_secs(30));
    let (out, err) = (out.join().expect("stdout"), err.join().expect("stderr"));
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(143),
        "herd did not exit 143 within 30 s of SIGTERM:\n{out}\n{err}"
    );
    assert!(err.contains("SIGTERM: stopping the script"), "{err}");
    let _ = fs::remove_dir_all(&dir);
}

/// `--file SRC:DEST` never reaches outside the test host: a DEST with `..`
/// is refused before anything runs, and the file it names is untouched.
#[test]
fn file_destinations_cannot_escape() {
    let dir = scratch("escape");
    let victim = dir.join("victim");
    fs::write(&victim, "keep me").expect("victim");
    let src = dir.join("src");
    fs::write(&src, "x").expect("src");
    let script = dir.join("script.sh");
    fs::write(&script, "exit 0\n").expect("script");
    let depth = dir.components().count();
    let escape = format!(
        "{}:/emu/{}{}",
        path(&src),
        "../".repeat(depth + 1),
        path(&victim).trim_start_matches('/')
    );
    for dest in [escape, format!("{}:../x", path(&src))] {
        let out = herd(&["emulated-host", "--file", &dest, "--", path(&script)]);
        assert_eq!(out.code(), Some(2), "{}", out.dump());
        assert!(out.stderr.contains("contains `..`"), "{}", out.dump());
    }
    assert_eq!(fs::read_to_string(&victim).expect("victim"), "keep me");
    let _ = fs::remove_dir_all(&dir);
}

/// The test host refuses more herd VMs than it carries (HERD_MAX_VMS: 5 per
/// vCPU by default, so 10 here), with a clear error and status 2. Shown with
/// the cap lowered to 1: a second VM while the first runs is refused.
#[test]
fn vms_beyond_the_test_hosts_capacity_are_refused() {
    let dir = scratch("cap");
    let script = dir.join("script.sh");
    fs::write(
        &script,
        UNTIL_RUNNING.to_owned()
            + r#"echo "cap=$HERD_MAX_VMS"
export HERD_MAX_VMS=1
vm() { herd run --kernel /emu/vmlinux --initrd /emu/initrd.cpio.gz --mem 128 --cmdline "quiet herd.run=\"$1\"" </dev/null; }
vm "sleep 600" >/tmp/first.log 2>&1 &
until_running /tmp/first.log
vm "exit 0" 2>&1
echo "second exit=$?"
"#,
    )
    .expect("script");
    let [k, i] = kernel_and_initrd_files();
    let out = herd(&["emulated-host", &k, &i, "--", path(&script)]);
    assert_eq!(out.code(), Some(0), "{}", out.dump());
    assert!(out.has_line("cap=10"), "{}", out.dump());
    assert!(out.has_line("second exit=2"), "{}", out.dump());
    assert!(
        out.stdout.contains(
            "1 herd VMs are already running on this host, the most HERD_MAX_VMS=1 allows"
        ),
        "{}",
        out.dump()
    );
    let _ = fs::remove_dir_all(&dir);
}
