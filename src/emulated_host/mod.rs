//! `herd run --emulated-host` and `herd emulated-host`: run herd inside its
//! emulated test host, a small Linux under QEMU TCG with an emulated AMD-V
//! CPU where real (nested) KVM works, for machines whose own KVM cannot run
//! Linux guests. Slow (software emulation); meant for CI and demos.
//!
//! herd re-runs itself in there: the test host's initramfs gets this very
//! binary (with its shared libraries), the kernel, initrd and files; disk
//! images stay where they are and are attached as virtio drives, so writes
//! reach the user's file and read-only images stay untouched. Inside, each
//! drive is reached through a symlink named like the original file
//! (`/emu/disk0/web1.img -> /dev/vdb`), so guests see the same disk serials.
//! See `machine.rs` for how output and the exit status come back.

mod console;
mod initramfs;
mod machine;
mod monitor;
mod output;
mod scenario;
mod testhost_dir;

use std::fs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use vmm::config::DiskSpec;
use vmm::ConsoleConfig;

use crate::exit_status::{EXIT_BAD_INPUT, EXIT_HOST_FAILURE};
use crate::RunArgs;
use console::Output;
use machine::{Drive, EmulatedHostError, Job, Outcome, StopCause};
use scenario::{command_line, Script, EMU, OUTPUT_DIR};

/// Where the inner herd writes a boot report, printed back afterwards.
const INNER_REPORT: &str = "/tmp/herd-boot-report.json";
/// Test-host memory on top of the guest's, for its kernel and page cache.
const HOST_OVERHEAD_MIB: u64 = 768;

const SCRIPT_HELP: &str = "\
In the test host (busybox, Debian's cloud kernel, KVM, tun and bridge
modules) the script runs as root in /emu, with herd on PATH, the helpers
of guest-images/testhost/lib.sh defined (guest, run_guest, bg_guest),
HERD_EMULATED_HOST=1, iproute2's ip at /usr/local/bin/ip (busybox sh runs
its own `ip` applet unless given that path) and stdin from /dev/null.
Drives are /emu/NAME symlinks to their /dev/vdX, so herd gives guests the
same disk serials. Files the script leaves in $HERD_OUTPUT_DIR (/emu/out)
are copied into --output-dir when it ends (regular files and directories).
At most 5 herd VMs per test-host vCPU run at once (HERD_MAX_VMS, set in
there: the capacity measured in guest-images/testhost/README.md); more are
refused. A script may raise it, at its own risk.

When the script exits (or runs past --timeout, or herd gets SIGINT or
SIGTERM), whatever it left running is stopped: SIGTERM (a herd VM stops its
guest), then SIGKILL 3 s later. A second Ctrl-C kills the test host at once.

The test host comes from $HERD_TESTHOST_DIR, else the output of
guest-images/testhost/build.sh ($HERD_TESTHOST_BUILD, or the source
checkout this herd binary was built in; owned by root or you and writable
by no one else), else the newest build in ${HERD_CACHE:-~/.cache/herd}/testhost.

Exit status: the script's; 124 it ran past --timeout; 130/143 stopped by
SIGINT/SIGTERM; 2 bad input; 3 the test host failed.";

#[derive(Args)]
#[command(after_help = SCRIPT_HELP)]
pub struct ScriptArgs {
    /// A file to put into the test host, at DEST (default /emu/NAME;
    /// relative DEST is under /emu) (repeatable).
    #[arg(long = "file", value_name = "SRC[:DEST]")]
    files: Vec<String>,
    /// A disk image to attach in place, writable unless suffixed :ro; it is
    /// /emu/NAME in the test host (repeatable).
    #[arg(long = "drive", value_name = "IMAGE[:ro]")]
    drives: Vec<String>,
    /// Test-host memory in MiB (besides what its files take).
    #[arg(long, value_name = "MIB", default_value_t = 2048)]
    mem: u64,
    /// Test-host vCPUs.
    #[arg(long, value_name = "N", default_value_t = 2)]
    cpus: u32,
    /// Log level for herd's own messages on stderr (debug shows the test
    /// host's console).
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
    /// Stop the script (and all it started) once it has run this many
    /// seconds; herd then exits 124.
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    timeout: Option<u64>,
    /// Copy the files the script left in $HERD_OUTPUT_DIR (/emu/out) into
    /// DIR (created if missing) when it ends, however it ends.
    #[arg(long, value_name = "DIR")]
    output_dir: Option<PathBuf>,
    /// The shell script (busybox sh) to run and its arguments; its stdout
    /// and stderr come out here, its exit status is herd's.
    #[arg(last = true, required = true, value_name = "SCRIPT [ARGS]")]
    command: Vec<String>,
}

/// `herd run --emulated-host`: the same `herd run` inside the test host.
pub fn run(args: &RunArgs) -> u8 {
    init_logging(args.log_level);
    match run_inner(args) {
        Ok(status) => status,
        Err(e) => report_error(&e),
    }
}

/// `herd emulated-host … -- SCRIPT`.
pub fn script(args: &ScriptArgs) -> u8 {
    init_logging(args.log_level);
    match script_inner(args) {
        Ok(status) => status,
        Err(e) => report_error(&e),
    }
}

fn init_logging(level: log::LevelFilter) {
    env_logger::Builder::new()
        .filter_level(level)
        .format_target(false)
        .init();
}

fn report_error(e: &EmulatedHostError) -> u8 {
    eprintln!("herd: error: {e}");
    if e.is_user_error() {
        EXIT_BAD_INPUT
    } else {
        EXIT_HOST_FAILURE
    }
}

fn bad(message: String) -> EmulatedHostError {
    EmulatedHostError::BadInput(message)
}

/// The file name of `path`, for naming its copy or link inside.
fn file_name(path: &Path) -> Result<String, EmulatedHostError> {
    path.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| bad(format!("{} names no file", path.display())))
}

/// A file that must exist, as an absolute path.
fn existing(path: &Path, what: &str) -> Result<PathBuf, EmulatedHostError> {
    fs::canonicalize(path).map_err(|e| bad(format!("{what} {}: {e}", path.display())))
}

fn run_inner(args: &RunArgs) -> Result<u8, EmulatedHostError> {
    let console: ConsoleConfig = args.console.parse().map_err(|e| bad(format!("{e}")))?;
    let kernel = existing(args.kernel.as_deref().unwrap_or(Path::new("")), "kernel")?;
    let mut files = Vec::new();
    let mut inner: Vec<String> = vec!["herd".into(), "run".into()];
    let mut arg = |flag: &str, value: String| inner.extend([flag.to_owned(), value]);

    let dest = format!("{EMU}/kernel/{}", file_name(&kernel)?);
    files.push((kernel, dest.clone()));
    arg("--kernel", dest);
    if let Some(initrd) = &args.initrd {
        let initrd = existing(initrd, "initrd")?;
        let dest = format!("{EMU}/initrd/{}", file_name(&initrd)?);
        files.push((initrd, dest.clone()));
        arg("--initrd", dest);
    }
    let mut drives = Vec::new();
    let mut links = Vec::new();
    let mut locks = Vec::new();
    let mut attach = |path: &Path, read_only: bool, dir: String| {
        let path = existing(path, "disk image")?;
        locks.push(machine::lock_disk(&path, read_only)?);
        let dest = format!("{EMU}/{dir}/{}", file_name(&path)?);
        links.push((machine::drive_serial(drives.len()), dest.clone()));
        drives.push(Drive { path, read_only });
        Ok::<_, EmulatedHostError>(dest)
    };
    if let Some(root) = &args.root {
        arg("--root", attach(root, true, "root".into())?);
    }
    for (i, d) in args.disks.iter().enumerate() {
        let spec: DiskSpec = d.parse().map_err(|e| bad(format!("{e}")))?;
        let dest = attach(&spec.path, spec.read_only, format!("disk{i}"))?;
        arg("--disk", if spec.read_only { dest + ":ro" } else { dest });
    }
    for n in &args.nets {
        log::warn!(
            "--net {n}: the TAP is created inside the emulated host and joins no network \
             there or here; for guests that talk to each other, run a script with \
             `herd emulated-host` that makes a bridge (`herd net create`) and attaches \
             the TAPs to it (see guest-images/demo.sh)"
        );
        arg("--net", n.clone());
    }
    if let Some(name) = &args.name {
        arg("--name", name.clone());
    }
    if let Some(cmdline) = &args.cmdline {
        arg("--cmdline", cmdline.clone());
    }
    arg("--mem", args.mem.to_string());
    arg("--cpus", args.cpus.to_string());
    let inner_console = if console == ConsoleConfig::None {
        "none"
    } else {
        "stdio"
    };
    arg("--console", inner_console.into());
    if args.boot_report.is_some() {
        arg("--boot-report", INNER_REPORT.into());
    }
    arg("--log-level", args.log_level.to_string().to_lowercase());
    if args.no_seccomp {
        inner.push("--no-seccomp".into());
    }
    if args.jail.no_jail {
        inner.push("--no-jail".into());
    }

    let stdout = match &console {
        ConsoleConfig::File(path) => Output::File(
            fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .map_err(|e| bad(format!("--console file:{}: {e}", path.display())))?,
        ),
        _ => Output::Stdout,
    };
    let stdin = console == ConsoleConfig::Stdio && std::io::stdin().is_terminal();
    let nproc = std::thread::available_parallelism()
        .map_or(2, |n| u32::try_from(n.get()).unwrap_or(u32::MAX));
    let command = command_line(&inner);
    let job = Job {
        files,
        drives,
        scenario: Script {
            links: &links,
            command: &command,
            stdin,
            report: args.boot_report.is_some().then_some(INNER_REPORT),
            output: false,
            max_vms: scenario::max_vms(2),
        }
        .render(),
        mem_mib: args.mem.saturating_add(HOST_OVERHEAD_MIB).max(1024),
        cpus: args.cpus.min(nproc).max(2),
        stdout,
        stdin,
        with_ip: false,
        timeout: None,
        output: None,
    };
    let host = testhost_dir::find_testhost()?;
    log::info!("running the VM in herd's emulated test host (QEMU software emulation; slow)");
    let outcome = machine::execute(&host, job)?;
    drop(locks);
    if let Some(path) = &args.boot_report {
        match &outcome.report {
            Some(report) => fs::write(path, report).map_err(|e| EmulatedHostError::Io {
                path: path.clone(),
                source: e,
            })?,
            None => log::error!("herd wrote no boot report in the emulated host"),
        }
    }
    Ok(final_status(&outcome, "herd"))
}

fn script_inner(args: &ScriptArgs) -> Result<u8, EmulatedHostError> {
    let (script, script_args) = args
        .command
        .split_first()
        .ok_or_else(|| bad("give the script to run after --".into()))?;
    let script = existing(Path::new(script), "script")?;
    let mut files = vec![(script, format!("{EMU}/.herd-script.sh"))];
    for f in &args.files {
        let (src, dest) = match f.rsplit_once(':') {
            Some((src, dest)) if !src.is_empty() && !dest.is_empty() => (src, Some(dest)),
            _ => (f.as_str(), None),
        };
        let src = existing(Path::new(src), "--file")?;
        if !src.is_file() {
            return Err(bad(format!(
                "--file {}: not a regular file (directories are not supported; pass each file)",
                src.display()
            )));
        }
        let dest = match dest {
            Some(d) if d.starts_with('/') => d.to_owned(),
            Some(d) => format!("{EMU}/{d}"),
            None => format!("{EMU}/{}", file_name(&src)?),
        };
        initramfs::checked_dest(&dest).map_err(|e| bad(format!("--file {f}: {e}")))?;
        if dest == OUTPUT_DIR || dest.starts_with(&format!("{OUTPUT_DIR}/")) {
            return Err(bad(format!(
                "--file {f}: {OUTPUT_DIR} is the script's output directory, empty at the \
                 start; put input files elsewhere"
            )));
        }
        files.push((src, dest));
    }
    let mut drives = Vec::new();
    let mut links = Vec::new();
    for d in &args.drives {
        let spec: DiskSpec = d
            .parse()
            .map_err(|_| bad(format!("--drive {d:?} is not valid: use IMAGE or IMAGE:ro")))?;
        let path = existing(&spec.path, "--drive")?;
        links.push((
            machine::drive_serial(drives.len()),
            format!("{EMU}/{}", file_name(&path)?),
        ));
        drives.push(Drive {
            path,
            read_only: spec.read_only,
        });
    }
    // The test host's shell helpers (guest, run_guest, bg_guest, …: see
    // guest-images/testhost/lib.sh) come first.
    let mut command = vec![
        "sh".to_owned(),
        "-c".to_owned(),
        r#". /etc/testhost-lib.sh && . "$0""#.to_owned(),
        format!("{EMU}/.herd-script.sh"),
    ];
    command.extend(script_args.iter().cloned());
    let command = command_line(&command);
    let job = Job {
        files,
        drives,
        scenario: Script {
            links: &links,
            command: &command,
            stdin: false,
            report: None,
            output: args.output_dir.is_some(),
            max_vms: scenario::max_vms(args.cpus),
        }
        .render(),
        mem_mib: args.mem,
        cpus: args.cpus.max(1),
        stdout: Output::Stdout,
        stdin: false,
        with_ip: true,
        timeout: args.timeout.map(Duration::from_secs),
        output: args.output_dir.clone(),
    };
    let host = testhost_dir::find_testhost()?;
    log::info!("running the script in herd's emulated test host (QEMU software emulation; slow)");
    let outcome = machine::execute(&host, job)?;
    Ok(final_status(&outcome, "the script"))
}

/// herd's exit status for a finished run of `what`, said on stderr: the
/// command's own, 124 after `--timeout` (as timeout(1)), 128 + N after
/// signal N (as a shell reports a command killed by it).
fn final_status(outcome: &Outcome, what: &str) -> u8 {
    let code = status_byte(outcome.status);
    match outcome.stopped {
        None => {
            log::info!("{what} exited with status {code}");
            code
        }
        Some(StopCause::Timeout(limit)) => {
            log::warn!(
                "{what} was stopped after --timeout {} s (its status {code}); exiting 124",
                limit.as_secs()
            );
            124
        }
        Some(StopCause::Signal(sig)) => {
            let ours = u8::try_from(128 + sig).unwrap_or(EXIT_HOST_FAILURE);
            log::warn!("{what} was stopped by a signal (its status {code}); exiting {ours}");
            ours
        }
    }
}

/// The scenario's status as herd's own; out-of-range values (never from a
/// shell) become a host failure.
fn status_byte(status: i32) -> u8 {
    u8::try_from(status).unwrap_or(EXIT_HOST_FAILURE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_bytes() {
        assert_eq!(status_byte(5), 5);
        assert_eq!(status_byte(-1), EXIT_HOST_FAILURE);
        assert_eq!(status_byte(300), EXIT_HOST_FAILURE);
    }
}
