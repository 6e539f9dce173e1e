//! `herd`: run small single-purpose server appliances as KVM microVMs.

mod disk;
mod emulated_host;
mod exit_status;
mod jail;
mod net_setup;
mod terminal;

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use vmm::{ConsoleConfig, StopReason, VmConfig};

use crate::exit_status::{
    EXIT_BAD_INPUT, EXIT_GUEST_CRASH, EXIT_HOST_FAILURE, EXIT_OK, EXIT_STATUS_HELP,
};

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "KVM microVM monitor for small server appliances"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a kernel in a new microVM and run it until the guest stops.
    #[command(after_help = EXIT_STATUS_HELP)]
    Run(Box<RunArgs>),
    /// Per-guest disk images.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Host networks (bridges) that appliances' TAP devices join.
    #[command(subcommand)]
    Net(NetCommand),
    /// Check whether this host's KVM can run Linux guests (it must deliver
    /// interrupts; some nested hypervisors cannot).
    CheckKvm,
    /// Run a shell script inside herd's emulated test host, with herd on
    /// PATH (see `herd run --emulated-host`); for CI and demos.
    EmulatedHost(emulated_host::ScriptArgs),
}

#[derive(Subcommand)]
enum DiskCommand {
    /// Build an ext4 disk image (label herd-data) holding the contents of a
    /// directory; needs no root privileges. Never overwrites OUT.
    Create {
        /// Directory whose contents become the disk's root.
        #[arg(long, value_name = "DIR")]
        from: PathBuf,
        /// Disk size: bytes, or with K, M, G, T (e.g. 64M).
        #[arg(long, value_name = "SIZE")]
        size: String,
        /// Image file to create.
        #[arg(value_name = "OUT.img")]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum NetCommand {
    /// Create a bridge with the host's address on it (needs CAP_NET_ADMIN).
    Create {
        /// Bridge name (at most 15 characters).
        name: String,
        /// The host's address and prefix on the network, e.g. 10.20.0.1/24.
        #[arg(long, value_name = "CIDR")]
        subnet: String,
        /// Masquerade the network's traffic to the host's other interfaces.
        #[arg(long)]
        nat: bool,
    },
    /// Remove a bridge created by `herd net create`.
    Rm {
        /// Bridge name.
        name: String,
    },
}

#[derive(Args)]
struct RunArgs {
    /// Guest kernel: an ELF vmlinux (PVH entry used when present) or a bzImage.
    #[arg(long, value_name = "PATH")]
    kernel: PathBuf,
    /// Appliance name, used in logs and for the default MAC address.
    #[arg(long, value_name = "NAME")]
    name: Option<String>,
    /// Shared read-only root image (erofs or ext4), attached as /dev/vda with
    /// root= set for you. Any number of VMs can share one image.
    #[arg(long, value_name = "IMAGE")]
    root: Option<PathBuf>,
    /// Extra disk image, writable unless suffixed with :ro (repeatable). A
    /// writable image is locked: only one VM can use it at a time.
    #[arg(long = "disk", value_name = "IMAGE[:ro]")]
    disks: Vec<String>,
    /// Network interface on an existing (or new, with CAP_NET_ADMIN) TAP
    /// device (repeatable). The MAC defaults to one derived from --name.
    #[arg(long = "net", value_name = "tap=NAME[,mac=MAC]")]
    nets: Vec<String>,
    /// Initial ramdisk (initramfs) to load next to the kernel.
    #[arg(long, value_name = "PATH")]
    initrd: Option<PathBuf>,
    /// Extra kernel command-line arguments, appended to herd's defaults.
    #[arg(long, value_name = "ARGS", allow_hyphen_values = true)]
    cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long, value_name = "MIB", default_value_t = 128)]
    mem: u64,
    /// Number of vCPUs (1 to 254).
    #[arg(long, value_name = "N", default_value_t = 1)]
    cpus: u32,
    /// Where the guest's serial console goes: stdio, none or file:PATH.
    #[arg(long, value_name = "WHERE", default_value = "stdio")]
    console: String,
    /// Write boot and teardown timings as JSON to FILE when the VM stops.
    #[arg(long, value_name = "FILE")]
    boot_report: Option<PathBuf>,
    /// Log level for herd's own messages on stderr: error, warn, info, debug, trace.
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    log_level: log::LevelFilter,
    /// Run the VM inside herd's emulated test host (QEMU software emulation
    /// with nested KVM): for machines whose KVM cannot run Linux guests;
    /// slow, meant for CI and demos.
    #[arg(long)]
    emulated_host: bool,
    /// Run without seccomp filters (for debugging a filter that stops herd
    /// with status 159); herd says loudly that it is unconfined.
    #[arg(long)]
    no_seccomp: bool,
    #[command(flatten)]
    jail: jail::JailArgs,
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) if args.emulated_host => ExitCode::from(emulated_host::run(&args)),
        Command::Run(args) => ExitCode::from(run(*args, process_start)),
        Command::EmulatedHost(args) => ExitCode::from(emulated_host::script(&args)),
        Command::CheckKvm => ExitCode::from(check_kvm()),
        Command::Net(cmd) => ExitCode::from(net(cmd)),
        Command::Disk(DiskCommand::Create { from, size, out }) => {
            let result = disk::parse_size(&size).and_then(|size| disk::create(&from, size, &out));
            match result {
                Ok(()) => {
                    println!("herd: created {}", out.display());
                    ExitCode::from(EXIT_OK)
                }
                Err(e) => ExitCode::from(fail(EXIT_BAD_INPUT, e)),
            }
        }
    }
}

const KVM_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn check_kvm() -> u8 {
    match vmm::kvm_check::check_interrupt_delivery(KVM_CHECK_TIMEOUT) {
        Ok(()) => {
            println!("herd: /dev/kvm delivers interrupts to guests: Linux guests can run here");
            EXIT_OK
        }
        Err(why) => fail(EXIT_HOST_FAILURE, kvm_cannot_run_linux(&why)),
    }
}

fn kvm_cannot_run_linux(why: &str) -> String {
    format!(
        "this host's KVM cannot run Linux guests: {why}. It runs only simple guests (a \
         nested or emulating hypervisor such as kvm_pvm?). Run the VM in \
         herd's emulated test host instead: herd run --emulated-host ..."
    )
}

fn net(cmd: NetCommand) -> u8 {
    let result = match cmd {
        NetCommand::Create { name, subnet, nat } => net_setup::Subnet::parse(&subnet)
            .and_then(|s| net_setup::create(&name, s, nat))
            .map(|()| format!("network {name} is up at {subnet}")),
        NetCommand::Rm { name } => {
            net_setup::remove(&name).map(|()| format!("network {name} removed"))
        }
    };
    match result {
        Ok(message) => {
            println!("herd: {message}");
            EXIT_OK
        }
        Err(e) => fail(EXIT_BAD_INPUT, e),
    }
}

fn fail(status: u8, message: impl std::fmt::Display) -> u8 {
    eprintln!("herd: error: {message}");
    status
}

fn run(args: RunArgs, process_start: Instant) -> u8 {
    env_logger::Builder::new()
        .filter_level(args.log_level)
        .format_target(false)
        .init();
    let console: ConsoleConfig = match args.console.parse() {
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
        kernel: args.kernel,
        initrd: args.initrd,
        cmdline: args.cmdline,
        mem_mib: args.mem,
        cpus: args.cpus,
        console,
        boot_report: args.boot_report,
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
    let keep_fds: Vec<_> = boot_report.iter().map(AsRawFd::as_raw_fd).collect();
    let jailed = match jail::enter(&args.jail, &mut config, &keep_fds) {
        Ok(jail::Entered::Supervisor(supervisor)) => return jail::supervise(supervisor),
        Ok(jail::Entered::Jailed(jailed)) => Some(jailed),
        Ok(jail::Entered::Unjailed) => None,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let mut vmm = match vmm::build_vm(&config, process_start) {
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
    if args.no_seccomp {
        log::warn!("--no-seccomp: every system call is allowed; a guest that escapes into herd is unconfined");
        vmm.disable_seccomp();
    }
    // The VM's files and devices are open: nothing below needs root.
    if let Some(Err(e)) = jailed.map(jailer::Jailed::drop_privileges) {
        return fail(EXIT_HOST_FAILURE, e);
    }
    let raw_terminal = (config.console == ConsoleConfig::Stdio)
        .then(terminal::RawTerminal::enable)
        .flatten();
    let outcome = vmm.run();
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
        StopReason::GuestCrash(why) => (EXIT_GUEST_CRASH, format!("guest crashed: {why}")),
        StopReason::KvmFailure(why) => (EXIT_HOST_FAILURE, format!("KVM failure: {why}")),
    };
    if let (Some(file), Some(path)) = (boot_report, &config.boot_report) {
        if let Err(e) = outcome
            .report(i32::from(status), description.clone())
            .write_to(file)
        {
            log::error!("cannot write boot report {}: {e}", path.display());
        }
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
