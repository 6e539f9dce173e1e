//! Stacks: `herd up` a whole set of appliances from one file (network,
//! disks, hosts file, dependency order, readiness and health checks),
//! `herd down`, `herd up --exit` verdicts for load tests, `herd upgrade`
//! with automatic rollback and `herd rollback`.

mod checks;
mod disk_config;
mod events;
pub mod file;
mod health;
mod launch;
pub mod plan;
mod state;
mod supervisor;
mod up;
mod upgrade;
mod verdict;

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};

use crate::exit_status::{EXIT_BAD_INPUT, EXIT_HOST_FAILURE, EXIT_OK};
use crate::fail;
use file::StackFile;
use plan::Plan;
use state::StackState;

/// Status of an `up`, `upgrade` or `--exit` run that did not work out.
const EXIT_FAILED: u8 = 1;
/// 128 + SIGINT, as shells report an interrupted command.
const EXIT_INTERRUPTED: u8 = 130;
const DEFAULT_FILE: &str = "herd.toml";

#[derive(Args)]
pub struct FileArg {
    /// The stack file.
    #[arg(short = 'f', long = "file", value_name = "FILE", default_value = DEFAULT_FILE)]
    file: PathBuf,
}

#[derive(Subcommand)]
pub enum StackCommand {
    /// Start a stack (herd.toml): its network, disks and appliances in
    /// dependency order, each waited for until ready and healthy. Running
    /// appliances whose definition is unchanged are left alone.
    Up {
        /// Only these appliances (and what they depend on).
        names: Vec<String>,
        #[command(flatten)]
        file: FileArg,
        /// Return once the stack is up (default: stay, and stop the
        /// stack's appliances on Ctrl-C).
        #[arg(short, long, conflicts_with = "exit")]
        detach: bool,
        /// Run the jobs (the NAMES given, else every appliance with a
        /// `run` command) to their end and print one verdict; then take
        /// the stack down. Exit status 0 only if every job passed.
        #[arg(long)]
        exit: bool,
    },
    /// Stop a stack's appliances gracefully and remove its network; its
    /// disks stay (with --volumes, the disks `up` made are deleted).
    Down {
        #[command(flatten)]
        file: FileArg,
        /// Also delete the data disks the stack made from personalities.
        #[arg(short, long)]
        volumes: bool,
    },
    /// Boot a stack appliance on another image with the same disk; if it
    /// is not healthy within the timeout, roll back to the image it ran.
    Upgrade {
        /// The appliance (its replicas go one at a time).
        name: String,
        /// The new image, NAME[:VERSION] in the image store.
        #[arg(long, value_name = "IMAGE")]
        image: String,
        #[command(flatten)]
        file: FileArg,
        /// Seconds the new image gets to become ready and healthy.
        #[arg(long, value_name = "S", default_value_t = 60.0)]
        timeout: f64,
    },
    /// Put a stack appliance back on the image it ran before its last
    /// upgrade.
    Rollback {
        name: String,
        #[command(flatten)]
        file: FileArg,
    },
    /// Stop a stack's appliances (or replicas) gracefully and start them
    /// again, waiting until they are ready and healthy. NAMES are stack
    /// names (`web`, `web-2`) or host names (`demo-web`).
    Restart {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        file: FileArg,
    },
    /// What happened to a stack's appliances: started, died, restarted,
    /// upgraded, rolled back, stopped.
    Events {
        #[command(flatten)]
        file: FileArg,
        /// One JSON object a line.
        #[arg(long)]
        json: bool,
    },
    /// The stack's supervisor (started by `herd up -d`).
    #[command(hide = true)]
    Supervise {
        #[command(flatten)]
        file: FileArg,
    },
}

pub fn interrupted() -> bool {
    crate::interrupt::interrupted()
}

/// The store's image (or an image file) and its kernel.
fn resolve_image(
    image: Option<&str>,
    kernel: Option<PathBuf>,
) -> Result<(Option<PathBuf>, PathBuf), String> {
    if image.is_none() && kernel.is_none() {
        return Err(
            "no image: set image = \"NAME[:VERSION]\" (herd image ls), or kernel = PATH".into(),
        );
    }
    crate::image::resolve_root(image, kernel)
        .map(|r| (r.root, r.kernel))
        .map_err(|e| e.to_string())
}

/// A loaded stack: its plan and state.
struct Stack {
    plan: Plan,
    state: StackState,
    state_path: PathBuf,
}

fn load(path: &Path, resolve: plan::ImageResolver) -> Result<Stack, String> {
    let (file, text) = StackFile::load(path).map_err(|e| e.to_string())?;
    let state_path = state::path_for(path);
    let state = StackState::load(&state_path).map_err(|e| e.to_string())?;
    let plan = plan::plan(path, &text, &file, &state, resolve).map_err(|e| e.to_string())?;
    Ok(Stack {
        plan,
        state,
        state_path,
    })
}

/// Columns padded to their widest cell.
pub fn render_table<const N: usize>(rows: &[[String; N]]) -> String {
    let widths: Vec<usize> = (0..N)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let line: Vec<String> = r
                .iter()
                .zip(&widths)
                .map(|(cell, w)| format!("{cell:<w$}"))
                .collect();
            line.join("  ").trim_end().to_owned() + "\n"
        })
        .collect()
}

pub fn run(command: StackCommand) -> u8 {
    match command {
        StackCommand::Up {
            names,
            file,
            detach,
            exit,
        } => up(&file.file, &names, detach, exit),
        StackCommand::Down { file, volumes } => down(&file.file, volumes),
        StackCommand::Upgrade {
            name,
            image,
            file,
            timeout,
        } => {
            if !(1.0..=3600.0).contains(&timeout) {
                return fail(
                    EXIT_BAD_INPUT,
                    format!("--timeout {timeout} is out of range: use 1 to 3600 seconds"),
                );
            }
            upgrade::upgrade(
                &file.file,
                &name,
                Some(&image),
                Duration::from_secs_f64(timeout),
            )
        }
        StackCommand::Rollback { name, file } => {
            upgrade::upgrade(&file.file, &name, None, upgrade::ROLLBACK_TIMEOUT)
        }
        StackCommand::Events { file, json } => show_events(&file.file, json),
        StackCommand::Restart { names, file } => restart(&file.file, &names),
        StackCommand::Supervise { file } => supervisor::supervise(&file.file),
    }
}

/// The instances `--exit` waits for.
fn jobs(plan: &Plan, names: &[String]) -> BTreeSet<usize> {
    plan.instances
        .iter()
        .enumerate()
        .filter(|(_, i)| {
            if names.is_empty() {
                i.run.is_some()
            } else {
                names.iter().any(|n| n == &i.group || n == &i.name)
            }
        })
        .map(|(n, _)| n)
        .collect()
}

fn save(stack: &Stack) {
    if let Err(e) = stack.state.save(&stack.state_path) {
        eprintln!("herd: warning: {e}");
    }
    let hosts = stack.plan.work_dir.join("hosts");
    let written = std::fs::create_dir_all(&stack.plan.work_dir)
        .and_then(|()| std::fs::write(&hosts, disk_config::hosts_file(&stack.plan)));
    if let Err(e) = written {
        log::warn!("cannot write {}: {e}", hosts.display());
    }
}

fn up(path: &Path, names: &[String], detach: bool, exit: bool) -> u8 {
    crate::interrupt::catch();
    let mut stack = match load(path, &resolve_image) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let plan = &stack.plan;
    let selected = match up::select(plan, names) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let jobs = if exit {
        jobs(plan, names)
    } else {
        BTreeSet::new()
    };
    if exit && jobs.is_empty() {
        return fail(
            EXIT_BAD_INPUT,
            "--exit: nothing to wait for: name the appliances that end (herd up --exit NAME) \
             or give one a run command",
        );
    }
    let op = match supervisor::op_lock(&plan.work_dir) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_HOST_FAILURE, e),
    };
    let was_running: BTreeSet<usize> = selected
        .iter()
        .copied()
        .filter(|&i| launch::is_running(&plan.instances[i].runtime_name))
        .collect();
    if let Err(e) = up::network_up(plan) {
        return fail(EXIT_HOST_FAILURE, e);
    }
    let outcomes = up::up(plan, &stack.state, &selected, &jobs);
    for o in &outcomes {
        let detail = o.error.clone().unwrap_or_default();
        let name = &plan.instances[o.index].name;
        events::record(&plan.work_dir, name, o.action.event(), &detail);
    }
    let mut state = std::mem::take(&mut stack.state);
    up::record(plan, &mut state, &outcomes);
    stack.state = state;
    save(&stack);
    let plan = &stack.plan;
    if interrupted() {
        let started: Vec<usize> = selected
            .iter()
            .copied()
            .filter(|i| !was_running.contains(i))
            .collect();
        eprintln!(
            "herd: interrupted: stopping the {} appliances this up started",
            started.len()
        );
        stop_started(plan, &started);
        return EXIT_INTERRUPTED;
    }
    let (job_outcomes, services): (Vec<_>, Vec<_>) =
        outcomes.into_iter().partition(|o| jobs.contains(&o.index));
    if !services.is_empty() {
        print!("{}", up::table(plan, &services));
    }
    let services_ok = services
        .iter()
        .all(|o| !matches!(o.action, up::Action::Failed | up::Action::Skipped));
    for o in services.iter().filter(|o| o.error.is_some()) {
        let inst = &plan.instances[o.index];
        eprintln!(
            "herd: error: {}: {}",
            inst.name,
            o.error.as_deref().unwrap_or_default()
        );
        for line in health::console_tail(&inst.runtime_name, 10) {
            eprintln!("  | {line}");
        }
    }
    if exit {
        let v = verdict::verdict(plan, &job_outcomes);
        print!("{}", v.text);
        // What ran before stays; what this up started goes.
        let started: Vec<usize> = selected
            .iter()
            .copied()
            .filter(|i| !was_running.contains(i))
            .collect();
        stop_started(plan, &started);
        return if v.failed == 0 && v.passed > 0 && services_ok {
            EXIT_OK
        } else {
            EXIT_FAILED
        };
    }
    drop(op);
    let supervised = selected
        .iter()
        .any(|&i| plan.instances[i].restart != file::Restart::No);
    if detach || !services_ok {
        // What runs keeps its restart policy, even after a failed up.
        if supervised {
            if let Err(e) = supervisor::spawn(path, &plan.work_dir) {
                return fail(EXIT_HOST_FAILURE, e);
            }
        }
        return if services_ok { EXIT_OK } else { EXIT_FAILED };
    }
    println!(
        "herd: the stack runs; Ctrl-C stops its appliances (herd down also removes its network)"
    );
    if let Err(e) = supervisor::supervise_here(path, &plan.work_dir) {
        eprintln!("herd: warning: not supervising: {e}");
        while !interrupted() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    for e in up::down(plan, &selected) {
        eprintln!("herd: warning: {e}");
    }
    EXIT_OK
}

/// Stops `started`; the network goes too if nothing of the stack runs.
fn stop_started(plan: &Plan, started: &[usize]) {
    for e in up::down(plan, started) {
        eprintln!("herd: warning: {e}");
    }
    if !plan
        .instances
        .iter()
        .any(|i| launch::is_running(&i.runtime_name))
    {
        for e in up::network_down(plan) {
            eprintln!("herd: warning: {e}");
        }
    }
}

/// `herd restart NAMES`: each stopped gracefully and started again.
fn restart(path: &Path, names: &[String]) -> u8 {
    let stack = match load(path, &resolve_image) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let plan = &stack.plan;
    let mut chosen = Vec::new();
    for n in names {
        let found: Vec<usize> = plan
            .instances
            .iter()
            .enumerate()
            .filter(|(_, i)| &i.group == n || &i.name == n || &i.runtime_name == n)
            .map(|(k, _)| k)
            .collect();
        if found.is_empty() {
            return fail(
                EXIT_BAD_INPUT,
                format!("no appliance {n} in {}", path.display()),
            );
        }
        chosen.extend(found);
    }
    let _op = match supervisor::op_lock(&plan.work_dir) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_HOST_FAILURE, e),
    };
    if let Err(e) = up::network_up(plan) {
        return fail(EXIT_HOST_FAILURE, e);
    }
    let mut outcomes = Vec::new();
    for &i in &chosen {
        let inst = &plan.instances[i];
        if let Err(e) = launch::stop(inst) {
            outcomes.push(up::Outcome::failed(i, format!("cannot stop it: {e}")));
            continue;
        }
        let mut o = up::start_one(plan, i, false);
        if o.action == up::Action::Started {
            o.action = up::Action::Restarted;
        }
        events::record(
            &plan.work_dir,
            &inst.name,
            o.action.event(),
            o.error.as_deref().unwrap_or("herd restart"),
        );
        outcomes.push(o);
    }
    print!("{}", up::table(plan, &outcomes));
    if outcomes.iter().any(|o| o.action == up::Action::Failed) {
        EXIT_FAILED
    } else {
        EXIT_OK
    }
}

/// Lets `down` work even when an image has since been removed.
fn any_image(
    image: Option<&str>,
    kernel: Option<PathBuf>,
) -> Result<(Option<PathBuf>, PathBuf), String> {
    Ok((image.map(PathBuf::from), kernel.unwrap_or_default()))
}

/// Whether `disk` (from the state file, which a user may edit) has the
/// shape of a disk `up` made, `DIR/.herd/STACK/NAME.img` beside this
/// stack's work directory, so `down --volumes` deletes nothing else.
fn made_by_a_stack(work_dir: &Path, disk: &Path) -> bool {
    let plain = disk.components().all(|c| {
        matches!(
            c,
            Component::RootDir | Component::Normal(_) | Component::CurDir
        )
    });
    let real = |p: Option<&Path>| p.and_then(|p| std::fs::canonicalize(p).ok());
    let herd_dir = real(disk.parent().and_then(Path::parent));
    plain
        && disk.extension().is_some_and(|e| e == "img")
        && herd_dir.is_some()
        && herd_dir == real(work_dir.parent())
}

fn down(path: &Path, volumes: bool) -> u8 {
    let mut stack = match load(path, &any_image) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let plan = &stack.plan;
    supervisor::stop(&plan.work_dir);
    let _op = match supervisor::op_lock(&plan.work_dir) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_HOST_FAILURE, e),
    };
    let all: Vec<usize> = (0..plan.instances.len()).collect();
    let running: Vec<_> = plan
        .instances
        .iter()
        .filter(|i| launch::is_running(&i.runtime_name))
        .collect();
    let stopped = running.len();
    for i in running {
        events::record(&plan.work_dir, &i.name, "stopping", "herd down");
    }
    let mut errors = up::down(plan, &all);
    errors.extend(up::network_down(plan));
    if volumes {
        for entry in stack.state.appliances.values_mut() {
            let Some(disk) = entry.created_disk.take() else {
                continue;
            };
            if !disk.exists() {
                continue;
            }
            if !made_by_a_stack(&plan.work_dir, &disk) {
                errors.push(format!(
                    "the state file names {} as a disk the stack made, but it is not in {}; \
                     left alone",
                    disk.display(),
                    plan.work_dir.parent().unwrap_or(&plan.work_dir).display()
                ));
                continue;
            }
            if let Err(e) = std::fs::remove_file(&disk) {
                errors.push(format!("cannot delete {}: {e}", disk.display()));
            }
        }
        let _ = std::fs::remove_dir_all(&plan.work_dir);
        if let Err(e) = stack.state.save(&stack.state_path) {
            errors.push(e.to_string());
        }
    }
    for e in &errors {
        eprintln!("herd: error: {e}");
    }
    println!(
        "herd: stack {} is down ({stopped} appliances stopped{})",
        plan.stack,
        if volumes { ", disks deleted" } else { "" }
    );
    if errors.is_empty() {
        EXIT_OK
    } else {
        EXIT_HOST_FAILURE
    }
}

fn show_events(path: &Path, json: bool) -> u8 {
    let stack = match load(path, &any_image) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    for e in events::load(&stack.plan.work_dir) {
        if json {
            println!("{}", serde_json::to_string(&e).unwrap_or_default());
        } else {
            println!("{}", events::line(&e));
        }
    }
    EXIT_OK
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn down_volumes_deletes_only_disks_a_stack_made() {
        let s = std::env::temp_dir().join(format!("herd-down-test-{}", std::process::id()));
        for d in ["s/.herd/demo", "s/.herd/old", "other/.herd/demo"] {
            std::fs::create_dir_all(s.join(d)).unwrap();
        }
        let work = s.join("s/.herd/demo");
        assert!(made_by_a_stack(&work, &s.join("s/.herd/demo/web.img")));
        // A stack since renamed left its disks beside.
        assert!(made_by_a_stack(&work, &s.join("s/.herd/old/web.img")));
        for bad in [
            "s/.herd/demo/../../../other/.herd/demo/x.img",
            "s/.herd/web.img",
            "s/.herd/demo/web.conf",
            "other/.herd/demo/web.img",
        ] {
            assert!(!made_by_a_stack(&work, &s.join(bad)), "{bad}");
        }
        assert!(!made_by_a_stack(&work, Path::new("/etc/passwd")));
        std::fs::remove_dir_all(&s).unwrap();
    }
}
