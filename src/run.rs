//! `herd run`: its flags, and one appliance's life in this process:
//! claim its name, jail it, build the VM, drop privileges, run, report.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::Instant;

use clap::Args;
use vmm::{ConsoleConfig, StopReason, VmConfig};

use crate::appliance::named_run::NamedRun;
use crate::exit_status::{EXIT_BAD_INPUT, EXIT_GUEST_CRASH, EXIT_HOST_FAILURE, EXIT_OK};
use crate::{
    appliance, emulated_host, fail, image, jail, kvm_cannot_run_linux, log_limit, terminal,
    vm_slots, KVM_CHECK_TIMEOUT,
};

#[derive(Args)]
pub struct RunArgs {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a
    /// bzImage. Default with --root NAME: the kernel the image was built
    /// with; or the kernel an appliance file (--config) names.
    #[arg(long, value_name = "PATH")]
    pub(crate) kernel: Option<PathBuf>,
    /// Appliance name: logs, the default MAC address, and a runtime
    /// directory with a control socket (`herd ps/stop/logs/console NAME`).
    #[arg(long, value_name = "NAME")]
    pub(crate) name: Option<String>,
    /// Return once the VM runs, leaving it running in the background
    /// (needs --name; its console goes to `herd logs`/`herd console`).
    #[arg(long, requires = "name")]
    pub(crate) detach: bool,
    /// Appliance file (TOML: kernel, initrd, root, disks, nets, mem, cpus,
    /// cmdline, stop_timeout); flags given as well win over it.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// Seconds SIGTERM/SIGINT (and Ctrl-] on a terminal) give the guest to
    /// power off before it is forced off.
    #[arg(long, value_name = "S", default_value_t = 10.0)]
    pub(crate) stop_timeout: f64,
    /// Shared read-only root image (erofs or ext4), attached as /dev/vda with
    /// root= set for you. Any number of VMs can share one image. A path, or
    /// NAME[:VERSION] of an image in the store (herd image ls).
    #[arg(long, value_name = "IMAGE|NAME[:VERSION]")]
    pub(crate) root: Option<PathBuf>,
    /// Extra disk image, writable unless suffixed with :ro (repeatable). A
    /// writable image is locked: only one VM can use it at a time.
    #[arg(long = "disk", value_name = "IMAGE[:ro]")]
    pub(crate) disks: Vec<String>,
    /// Network interface on an existing (or new, with CAP_NET_ADMIN) TAP
    /// device (repeatable). The MAC defaults to one derived from --name.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    pub(crate) nets: Vec<String>,
    /// Initial ramdisk (initramfs) to load next to the kernel.
    #[arg(long, value_name = "PATH")]
    pub(crate) initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments, appended to herd's defaults.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    pub(crate) cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    pub(crate) mem: u64,
    /// Number of vCPUs (1 to 254).
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub(crate) cpus: u32,
    /// Where the guest's serial console goes: stdio, none, file:PATH, or log
    /// (the runtime directory's rotated console.log; needs --name). On a
    /// terminal, Ctrl-] stops the VM (gracefully; twice: at once).
    #[arg(long, value_name = "WHERE", default_value = "stdio")]
    pub(crate) console: String,
    /// Write boot and teardown timings as JSON to FILE when the VM stops.
    #[arg(long, value_name = "FILE")]
    pub(crate) boot_report: Option<PathBuf>,
    /// A virtio-vsock device whose host side is the Unix socket PATH
    /// (guest CID 3): host programs connect to PATH and write
    /// `CONNECT <port>\n` (herd answers `OK <n>\n`); guest connections to
    /// CID 2 port P reach the Unix socket PATH_P. A jailed herd sees
    /// PATH's directory (bound into the jail, writable): give it its own.
    #[arg(long, value_name = "PATH")]
    pub(crate) vsock: Option<PathBuf>,
    /// No virtio-rng device (by default the guest gets one, fed by the
    /// host's getrandom, so it has entropy at first boot).
    #[arg(long)]
    pub(crate) no_rng: bool,
    /// Log level for herd's own messages on stderr: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub(crate) log_level: log::LevelFilter,
    /// Run the VM inside herd's emulated test host (QEMU software emulation
    /// with nested KVM): for machines whose KVM cannot run Linux guests;
    /// slow, meant for CI and demos.
    #[arg(long)]
    pub(crate) emulated_host: bool,
    /// The default: each herd thread runs under a seccomp allow-list (a
    /// forbidden call stops herd with status 159); accepted for scripts.
    #[arg(long, hide = true, conflicts_with = "no_seccomp")]
    pub(crate) seccomp: bool,
    /// Run without seccomp filters, for debugging only: any system call
    /// is allowed to a guest that escapes into herd. herd says so loudly.
    #[arg(long)]
    pub(crate) no_seccomp: bool,
    #[command(flatten)]
    pub(crate) jail: jail::JailArgs,
}

/// `herd run`: an appliance file fills what the command line left out,
/// `--root NAME` resolves to the store, then the VM runs here or in the
/// emulated test host.
pub fn command(mut args: Box<RunArgs>, given: &dyn Fn(&str) -> bool, process_start: Instant) -> u8 {
    if let Some(path) = args.config.clone() {
        if let Err(e) = appliance::appliance_file::apply(&mut args, &path, given) {
            return fail(EXIT_BAD_INPUT, e);
        }
    }
    if args.emulated_host && args.detach {
        return fail(
            EXIT_BAD_INPUT,
            "--detach does not work with --emulated-host (the test host runs in the foreground)",
        );
    }
    let kernel = match resolve_root(&mut args) {
        Ok(kernel) => kernel,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    if args.emulated_host {
        emulated_host::run(&args)
    } else {
        run(*args, kernel, process_start)
    }
}

/// `--root NAME[:VERSION]` to the store's image file, and the kernel it
/// was built with unless `--kernel` is given (or a "give --kernel" error).
/// Returns the kernel, which it also sets in `args`.
fn resolve_root(args: &mut RunArgs) -> Result<PathBuf, image::ResolveError> {
    let root = args.root.as_ref().map(|r| r.to_string_lossy().into_owned());
    let resolved = image::resolve_root(root.as_deref(), args.kernel.take())?;
    args.root = resolved.root;
    args.kernel = Some(resolved.kernel.clone());
    Ok(resolved.kernel)
}

/// In the jailed child: the jailer closed every inherited descriptor but
/// `keep_fds`; the supervisor holds the slot's and the runtime directory's
/// locks for the appliance's life.
fn forget_closed_fds(slot: &mut Option<vm_slots::VmSlot>, named: Option<&mut NamedRun>) {
    std::mem::forget(slot.take());
    if let Some(named) = named {
        named.enter_jail();
    }
}

const NO_SECCOMP_WARNING: &str = "herd: WARNING: --no-seccomp: seccomp filters are OFF; a guest \
     that escapes into herd may make any system call. For debugging only.";

fn run(args: RunArgs, kernel: PathBuf, process_start: Instant) -> u8 {
    log_limit::init(args.log_level);
    let stop_timeout = match vmm::control::stop_timeout(args.stop_timeout) {
        Ok(t) => t,
        Err(e) => return fail(EXIT_BAD_INPUT, format!("--stop-timeout {e}")),
    };
    if args.detach {
        let name = args.name.as_deref().unwrap_or_default();
        if let Err(e) = appliance::runtime_dir::validate_name(name) {
            return fail(EXIT_BAD_INPUT, e);
        }
        return appliance::detach::launch(name);
    }
    // Once per appliance: a detached one says it in its own herd.
    if args.no_seccomp {
        eprintln!("{NO_SECCOMP_WARNING}");
    }
    let mut named = match appliance::named_run::NamedRun::claim_if_named(args.name.as_deref()) {
        Ok(named) => named,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let console = match appliance::named_run::console_config(&args.console, named.as_ref()) {
        Ok(c) => c,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let disks = match args.disks.iter().map(|d| d.parse()).collect() {
        Ok(disks) => disks,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let nets = match args.nets.iter().map(|n| n.parse()).collect() {
        Ok(nets) => nets,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let mut config = VmConfig {
        name: args.name,
        root: args.root,
        disks,
        nets,
        kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_mib: args.mem,
        cpus: args.cpus,
        console,
        boot_report: args.boot_report,
        rng: !args.no_rng,
        vsock: args.vsock,
    };
    // Held until the VM has stopped (HERD_MAX_VMS).
    let mut slot = match vm_slots::take() {
        Ok(slot) => slot,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    // Opened before the jail and the filters, which hide and forbid it.
    let boot_report = match config
        .boot_report
        .as_deref()
        .map(std::fs::File::create)
        .transpose()
    {
        Ok(file) => file,
        Err(e) => {
            return fail(
                EXIT_BAD_INPUT,
                format!("cannot create the boot report: {e}"),
            )
        }
    };
    // The same errors with and without the jail, before anything starts.
    if let Err(e) = config.validate() {
        return fail(EXIT_BAD_INPUT, e);
    }
    let mut keep_fds: Vec<_> = boot_report.iter().map(AsRawFd::as_raw_fd).collect();
    keep_fds.extend(named.iter().flat_map(NamedRun::keep_fds));
    keep_fds.extend(appliance::systemd::connect());
    let runtime_dir = named.as_ref().map(|n| n.dir().to_owned());
    let jailed = match jail::enter(&args.jail, &mut config, &keep_fds, runtime_dir.as_deref()) {
        Ok(jail::Entered::Supervisor(supervisor)) => {
            if let Some(named) = &named {
                named.supervise_quietly();
            }
            let status = jail::supervise(supervisor);
            // The vsock socket was made before the jailed herd dropped root
            // and sits in a directory it cannot write: removed from here.
            if let Some(socket) = &config.vsock {
                let _ = std::fs::remove_file(socket);
            }
            if let Some(named) = named {
                named.after_jailed_child();
            }
            return status;
        }
        Ok(jail::Entered::Jailed(jailed)) => {
            forget_closed_fds(&mut slot, named.as_mut());
            Some(jailed)
        }
        Ok(jail::Entered::Unjailed) => None,
        Err(e) => {
            if e.in_jailed_child() {
                forget_closed_fds(&mut slot, named.as_mut());
            }
            return fail(EXIT_BAD_INPUT, e);
        }
    };
    let _slot = slot;
    let confinement = vmm::Confinement {
        seccomp: !args.no_seccomp,
        uid_drop: jailed.as_ref().map(|j| vmm::UidDrop {
            uid: j.user().uid,
            gid: j.user().gid,
        }),
    };
    let mut vmm = match vmm::build_vm(&config, process_start, confinement) {
        Ok(vmm) => vmm,
        Err(e) => {
            let status = if e.is_user_error() {
                EXIT_BAD_INPUT
            } else {
                EXIT_HOST_FAILURE
            };
            return fail(status, e);
        }
    };
    vmm.set_stop_timeout(stop_timeout);
    // The VM's files and devices are open: nothing below needs root. glibc
    // makes every thread repeat a uid change: the only threads yet are the
    // vCPUs', whose filters allow this one change (`confinement`).
    if let Some(Err(e)) = jailed.map(jailer::Jailed::drop_privileges) {
        return fail(EXIT_HOST_FAILURE, e);
    }
    if let Some(named) = named.as_mut() {
        if let Err(e) = named.attach(&mut vmm, &config) {
            return fail(EXIT_HOST_FAILURE, e);
        }
    }
    let raw_terminal = (config.console == ConsoleConfig::Stdio)
        .then(terminal::RawTerminal::enable)
        .flatten();
    let outcome = vmm.run_with(|| {
        if let Some(named) = named.as_mut() {
            named.started();
        }
    });
    drop(raw_terminal);
    let outcome = match outcome {
        Ok(outcome) => outcome,
        Err(e) => return fail(EXIT_HOST_FAILURE, e),
    };

    let (status, description) = match &outcome.reason {
        StopReason::GuestReset => (EXIT_OK, "guest reset".to_owned()),
        StopReason::GuestPowerOff => (EXIT_OK, "guest powered off".to_owned()),
        StopReason::GuestExitCode(code) => (*code, format!("guest exit code {code}")),
        StopReason::Signal(signum) => (EXIT_OK, format!("stopped by signal {signum}")),
        StopReason::HostRequest(why) => (EXIT_OK, why.clone()),
        StopReason::GuestCrash(why) => (EXIT_GUEST_CRASH, format!("guest crashed: {why}")),
        StopReason::KvmFailure(why) => (EXIT_HOST_FAILURE, format!("KVM failure: {why}")),
    };
    let report = outcome.report(i32::from(status), description.clone());
    if let (Some(file), Some(path)) = (boot_report, &config.boot_report) {
        if let Err(e) = report.write_to(file) {
            log::error!("cannot write boot report {}: {e}", path.display());
        }
    }
    if let Some(named) = named {
        named.finish(&report);
    }
    match &outcome.reason {
        StopReason::GuestCrash(why) if why.contains("KVM_EXIT_INTERNAL_ERROR") => {
            eprintln!("herd: error: {description}");
            // Tell a broken guest from a KVM that cannot deliver interrupts
            // (the check builds a VM, which the filters forbid).
            if !args.no_seccomp {
                eprintln!(
                    "herd: hint: `herd check-kvm` tells whether this host's KVM can run Linux \
                     guests at all"
                );
            } else if let Err(why) = vmm::kvm_check::check_interrupt_delivery(KVM_CHECK_TIMEOUT) {
                eprintln!("herd: hint: {}", kvm_cannot_run_linux(&why));
            }
            status
        }
        StopReason::GuestCrash(_) | StopReason::KvmFailure(_) => fail(status, description),
        _ => {
            log::info!("VM stopped: {description}");
            status
        }
    }
}
