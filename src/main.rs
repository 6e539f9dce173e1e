//! `herd`: run small single-purpose server appliances as KVM microVMs.

mod appliance;
mod disk;
mod emulated_host;
mod exit_status;
mod image;
mod interrupt;
mod jail;
mod log_limit;
mod net_setup;
mod run;
mod stack;
mod terminal;
mod toml_span;
mod vm_slots;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use crate::exit_status::{EXIT_BAD_INPUT, EXIT_HOST_FAILURE, EXIT_OK, EXIT_STATUS_HELP};
use crate::run::RunArgs;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand};

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
    #[command(flatten)]
    Run(RunOnly),
    /// Per-guest disk images.
    #[command(subcommand)]
    Disk(DiskCommand),
    /// Host networks (bridges) that appliances' TAP devices join.
    #[command(subcommand)]
    Net(NetCommand),
    /// Appliance images: build from a definition, list, remove.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Check whether this host's KVM can run Linux guests (it must deliver
    /// interrupts; some nested hypervisors cannot).
    CheckKvm,
    /// Run a shell script inside herd's emulated test host, with herd on
    /// PATH (see `herd run --emulated-host`); for CI and demos.
    EmulatedHost(emulated_host::ScriptArgs),
    #[command(flatten)]
    Appliance(appliance::ApplianceCommand),
    #[command(flatten)]
    Stack(stack::StackCommand),
}

/// `herd run` alone: what a VM's process parses. Building clap's whole
/// command tree (every subcommand of `herd`) costs a VM ~0.3 ms of start-up
/// and ~0.5 MiB of touched code and heap for nothing; `herd run` parses and
/// reports errors exactly as under [`Cli`], which flattens the same
/// definition in for `herd --help` and `herd help run`.
#[derive(Parser)]
#[command(name = "herd", version)]
struct RunCli {
    #[command(subcommand)]
    command: RunOnly,
}

#[derive(Subcommand)]
enum RunOnly {
    /// Boot a kernel in a new microVM and run it until the guest stops.
    #[command(after_help = EXIT_STATUS_HELP)]
    Run(Box<RunArgs>),
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

/// For the commands that report (`ps`, `image ls`, `logs`, `events` …):
/// `herd ps | head -1` ends quietly, as Unix tools do, instead of panicking
/// in println! on EPIPE (Rust ignores SIGPIPE). A VM (`run`) and a stack's
/// `up` keep ignoring it: a closed console pipe must not kill a guest.
fn die_on_closed_stdout() {
    // SAFETY: restoring the default disposition of SIGPIPE affects only this
    // process, before it starts any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

fn main() -> ExitCode {
    let process_start = Instant::now();
    if std::env::args_os().nth(1).is_some_and(|a| a == "run") {
        return run_only(process_start);
    }
    let matches = Cli::command().get_matches();
    let cli = match Cli::from_arg_matches(&matches) {
        Ok(cli) => cli,
        Err(e) => e.exit(),
    };
    match cli.command {
        Command::Appliance(cmd) => {
            log_limit::init(log::LevelFilter::Warn);
            die_on_closed_stdout();
            ExitCode::from(appliance::run(cmd))
        }
        // Not reached from `herd run …` (main parses that with RunCli).
        Command::Run(RunOnly::Run(args)) => run_command(&matches, args, process_start),
        Command::Image(cmd) => {
            die_on_closed_stdout();
            ExitCode::from(image::run(cmd))
        }
        Command::Stack(cmd) => {
            log_limit::init(log::LevelFilter::Warn);
            if matches!(cmd, stack::StackCommand::Events { .. }) {
                die_on_closed_stdout();
            }
            ExitCode::from(stack::run(cmd))
        }
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

fn run_only(process_start: Instant) -> ExitCode {
    let matches = RunCli::command().get_matches();
    let RunOnly::Run(args) = match RunCli::from_arg_matches(&matches) {
        Ok(cli) => cli.command,
        Err(e) => e.exit(),
    };
    run_command(&matches, args, process_start)
}

fn run_command(matches: &ArgMatches, args: Box<RunArgs>, process_start: Instant) -> ExitCode {
    // Which `run` flags were typed (an appliance file fills the others).
    let run_matches = matches.subcommand_matches("run");
    let given = |id: &str| {
        run_matches
            .is_some_and(|m: &ArgMatches| m.value_source(id) == Some(ValueSource::CommandLine))
    };
    ExitCode::from(run::command(args, &given, process_start))
}

pub(crate) const KVM_CHECK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

fn check_kvm() -> u8 {
    match vmm::kvm_check::check_interrupt_delivery(KVM_CHECK_TIMEOUT) {
        Ok(()) => {
            println!("herd: /dev/kvm delivers interrupts to guests: Linux guests can run here");
            EXIT_OK
        }
        Err(why) => fail(EXIT_HOST_FAILURE, kvm_cannot_run_linux(&why)),
    }
}

pub(crate) fn kvm_cannot_run_linux(why: &str) -> String {
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
