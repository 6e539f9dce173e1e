//! Running appliances: `herd ps`, `logs`, `stop`, `kill`, `pause`,
//! `resume`, `console`, `inspect`, `rm`, `install-unit`, and what `herd run
//! --name/--detach/--config` adds to a run (runtime directory, control and
//! console sockets, systemd notification).

pub mod appliance_file;
pub mod client;
mod console;
pub mod control;
pub mod detach;
pub mod logs;
pub mod named_run;
pub mod remove;
pub mod runtime_dir;
pub mod systemd;

use std::path::PathBuf;

use clap::Subcommand;

use crate::exit_status::{EXIT_BAD_INPUT, EXIT_HOST_FAILURE, EXIT_OK};
use crate::fail;

#[derive(Subcommand)]
pub enum ApplianceCommand {
    /// List appliances started with `herd run --name` (running ones; all
    /// with --all).
    Ps {
        /// Also list appliances that exited or died.
        #[arg(short, long)]
        all: bool,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print an appliance's state, configuration and metrics as JSON.
    Inspect { name: String },
    /// Print an appliance's console log.
    Logs {
        name: String,
        /// Keep printing new output until the appliance stops.
        #[arg(short, long)]
        follow: bool,
        /// Only the last N lines.
        #[arg(short = 'n', long = "tail", value_name = "N")]
        tail: Option<usize>,
    },
    /// Ask an appliance to power off (Ctrl-Alt-Del); force it off after
    /// the timeout. Waits until it has stopped.
    Stop {
        name: String,
        /// Seconds the guest gets to power off.
        #[arg(short, long, value_name = "S", default_value_t = 10.0)]
        timeout: f64,
    },
    /// Stop an appliance at once (no guest shutdown).
    Kill { name: String },
    /// Remove stopped appliances' runtime directories (logs, config, boot
    /// report); a running one is refused unless --force.
    Rm {
        #[arg(required = true, value_name = "NAME")]
        names: Vec<String>,
        /// Kill a running appliance first (as `herd kill`).
        #[arg(short, long)]
        force: bool,
    },
    /// Freeze an appliance's vCPUs.
    Pause { name: String },
    /// Let a paused appliance run again.
    Resume { name: String },
    /// Attach the terminal to an appliance's serial console; Ctrl-]
    /// detaches and leaves the appliance running.
    Console { name: String },
    /// Install the systemd template unit herd@.service (one appliance per
    /// /etc/herd/NAME.toml).
    InstallUnit {
        /// Directory to write herd@.service into.
        #[arg(long, value_name = "DIR", default_value = "/etc/systemd/system")]
        dir: PathBuf,
    },
}

/// `docker rm`'s status when a name could not be removed.
const EXIT_RM_FAILED: u8 = 1;

fn control_fail(e: &control::ControlError) -> u8 {
    let status = if e.is_user_error() {
        EXIT_BAD_INPUT
    } else {
        EXIT_HOST_FAILURE
    };
    fail(status, e)
}

fn print_json(v: &serde_json::Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
    );
}

pub fn run(command: ApplianceCommand) -> u8 {
    match command {
        ApplianceCommand::Ps { all, json } => {
            let rows = control::ps(all);
            if json {
                print_json(&serde_json::Value::Array(rows));
            } else {
                print!("{}", control::ps_table(&rows));
            }
            EXIT_OK
        }
        ApplianceCommand::Inspect { name } => match control::inspect(&name) {
            Ok(v) => {
                print_json(&v);
                EXIT_OK
            }
            Err(e) => control_fail(&e),
        },
        ApplianceCommand::Logs { name, follow, tail } => match logs::logs(&name, follow, tail) {
            Ok(()) => EXIT_OK,
            Err(e) => fail(EXIT_BAD_INPUT, e),
        },
        ApplianceCommand::Stop { name, timeout } => {
            let timeout = match vmm::control::stop_timeout(timeout) {
                Ok(t) => t,
                Err(e) => return fail(EXIT_BAD_INPUT, format!("--timeout {e}")),
            };
            match control::stop(&name, timeout) {
                Ok(how) => {
                    if how.starts_with("forced off") {
                        eprintln!("herd: warning: {name}: {how}");
                    }
                    println!("herd: {name} stopped ({how})");
                    EXIT_OK
                }
                Err(e) => control_fail(&e),
            }
        }
        ApplianceCommand::Kill { name } => match control::kill(&name) {
            Ok(how) => {
                println!("herd: {name} stopped ({how})");
                EXIT_OK
            }
            Err(e) => control_fail(&e),
        },
        ApplianceCommand::Rm { names, force } => rm(&names, force),
        ApplianceCommand::Pause { name } => pause(&name, true),
        ApplianceCommand::Resume { name } => pause(&name, false),
        ApplianceCommand::Console { name } => match console::attach(&name) {
            Ok(_) => EXIT_OK,
            Err(e) => fail(EXIT_BAD_INPUT, e),
        },
        ApplianceCommand::InstallUnit { dir } => {
            let herd = std::env::current_exe().unwrap_or_else(|_| "/usr/local/bin/herd".into());
            match systemd::install_unit(&dir, &herd) {
                Ok(path) => {
                    println!(
                        "herd: installed {}; put an appliance file at /etc/herd/NAME.toml, then \
                         `systemctl daemon-reload && systemctl enable --now herd@NAME`",
                        path.display()
                    );
                    EXIT_OK
                }
                Err(e) => fail(
                    EXIT_HOST_FAILURE,
                    format!(
                        "cannot write {}: {e}",
                        dir.join(systemd::UNIT_NAME).display()
                    ),
                ),
            }
        }
    }
}

/// Every name is tried; like `docker rm`, prints each one removed and
/// exits 1 if any could not be.
fn rm(names: &[String], force: bool) -> u8 {
    let mut status = EXIT_OK;
    for name in names {
        match remove::remove(name, force) {
            Ok(()) => println!("{name}"),
            Err(e) => status = fail(EXIT_RM_FAILED, e),
        }
    }
    status
}

fn pause(name: &str, pause: bool) -> u8 {
    match control::pause(name, pause) {
        Ok(v) => {
            println!(
                "herd: {name} {}",
                v["state"].as_str().unwrap_or("(state unknown)")
            );
            EXIT_OK
        }
        Err(e) => control_fail(&e),
    }
}
