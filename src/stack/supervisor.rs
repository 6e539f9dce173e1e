//! One supervisor per stack: a detached `herd supervise` (started by
//! `herd up -d`; a foreground `herd up` supervises itself) that restarts
//! appliances by their restart policy, with a backoff that doubles up to
//! 30 s, including those whose herd was killed (`kill -9`), and records
//! what it saw and did in the stack's event log.
//!
//! `up`, `down` and `upgrade` hold the stack's operation lock while they
//! work; the supervisor leaves the stack alone while it is held, so it
//! never restarts an appliance an upgrade has just stopped.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::file::Restart;
use super::{events, launch, load, resolve_image, up};
use crate::appliance::runtime_dir::{try_lock, Liveness};
use crate::exit_status::{EXIT_BAD_INPUT, EXIT_OK};
use crate::fail;

const SUPERVISOR_LOCK: &str = "supervisor.lock";
const SUPERVISOR_PID: &str = "supervisor.pid";
const SUPERVISOR_LOG: &str = "supervisor.log";
const OP_LOCK: &str = "op.lock";
const TICK: Duration = Duration::from_millis(500);
const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Running this long resets an appliance's backoff.
const STABLE: Duration = Duration::from_secs(10);

fn open_lock(path: &Path) -> Result<File, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))
}

/// The stack's operation lock, held while the value lives.
pub struct OpLock(#[allow(dead_code)] File);

/// Waits for the operation lock (another `up`/`down`/`upgrade` of the
/// same stack finishes first).
pub fn op_lock(work_dir: &Path) -> Result<OpLock, String> {
    let file = open_lock(&work_dir.join(OP_LOCK))?;
    // SAFETY: flock on a descriptor we own; no memory is passed.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(format!(
            "cannot lock {}: {}",
            work_dir.join(OP_LOCK).display(),
            std::io::Error::last_os_error()
        ));
    }
    Ok(OpLock(file))
}

fn try_op_lock(work_dir: &Path) -> Option<OpLock> {
    let file = open_lock(&work_dir.join(OP_LOCK)).ok()?;
    try_lock(&file, true).then_some(OpLock(file))
}

/// Whether a supervisor holds the stack's supervisor lock.
pub fn running(work_dir: &Path) -> bool {
    File::open(work_dir.join(SUPERVISOR_LOCK)).is_ok_and(|f| !try_lock(&f, false))
}

/// Starts a detached `herd supervise -f FILE` unless one runs.
pub fn spawn(stack_file: &Path, work_dir: &Path) -> Result<(), String> {
    if running(work_dir) {
        return Ok(());
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find herd's binary: {e}"))?;
    let file = std::fs::canonicalize(stack_file).unwrap_or_else(|_| stack_file.to_owned());
    let log = open_lock(&work_dir.join(SUPERVISOR_LOG))?;
    let mut command = Command::new(exe);
    command
        .arg("supervise")
        .arg("-f")
        .arg(&file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log);
    // setsid runs in the child between fork and exec and is
    // async-signal-safe; it detaches the supervisor from our terminal.
    // SAFETY: sound for the reasons just given.
    unsafe {
        command.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
        .spawn()
        .map_err(|e| format!("cannot start the supervisor: {e}"))?;
    // It takes its lock at once; wait so a following `down` finds it.
    let deadline = Instant::now() + Duration::from_secs(5);
    while !running(work_dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Stops the stack's supervisor (SIGTERM) and waits until it is gone.
pub fn stop(work_dir: &Path) {
    if !running(work_dir) {
        return;
    }
    let pid = std::fs::read_to_string(work_dir.join(SUPERVISOR_PID))
        .ok()
        .and_then(|p| p.trim().parse::<libc::pid_t>().ok());
    if let Some(pid) = pid.filter(|&p| p > 0) {
        // kill(2) on the pid the supervisor wrote; its lock, still
        // held, shows that process still runs.
        // SAFETY: sound for the reasons just given.
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while running(work_dir) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `herd supervise -f FILE`: the detached supervisor's main.
pub fn supervise(stack_file: &Path) -> u8 {
    crate::interrupt::catch();
    let stack = match load(stack_file, &resolve_image) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    match supervise_here(stack_file, &stack.plan.work_dir) {
        Ok(()) => EXIT_OK,
        Err(e) => fail(EXIT_BAD_INPUT, e),
    }
}

/// Supervises the stack in this process until SIGINT/SIGTERM (`herd
/// down` sends SIGTERM to whoever holds the supervisor lock). If another
/// process supervises it already, only waits for the signal.
pub fn supervise_here(stack_file: &Path, work_dir: &Path) -> Result<(), String> {
    let lock = open_lock(&work_dir.join(SUPERVISOR_LOCK))?;
    if !try_lock(&lock, true) {
        while !crate::interrupt::interrupted() {
            std::thread::sleep(TICK);
        }
        return Ok(());
    }
    let pid = std::process::id();
    std::fs::write(work_dir.join(SUPERVISOR_PID), format!("{pid}\n")).map_err(|e| {
        format!(
            "cannot write {}: {e}",
            work_dir.join(SUPERVISOR_PID).display()
        )
    })?;
    events::record(work_dir, "-", "supervisor started", &format!("pid {pid}"));
    watch(stack_file, work_dir);
    events::record(work_dir, "-", "supervisor stopped", "");
    let _ = std::fs::remove_file(work_dir.join(SUPERVISOR_PID));
    drop(lock);
    Ok(())
}

#[derive(Default)]
struct Watched {
    /// What it was last seen as, to log each change once.
    last: Option<Liveness>,
    running_since: Option<Instant>,
    failures: u32,
    next_try: Option<Instant>,
}

/// Why a stopped appliance stopped, and whether its policy restarts it.
fn verdict(name: &str, liveness: Liveness, policy: Restart) -> (String, bool) {
    let why = match liveness {
        Liveness::Dead => "its herd died (killed?)".to_owned(),
        _ => match launch::last_run(name) {
            Some((status, _, reason)) => format!("exited with status {status}: {reason}"),
            None => "exited".into(),
        },
    };
    let failed = liveness == Liveness::Dead
        || launch::last_run(name).is_none_or(|(status, _, _)| status != 0);
    let restart = match policy {
        Restart::No => false,
        Restart::OnFailure => failed,
        Restart::Always => true,
    };
    (why, restart)
}

/// The supervision loop, until SIGINT/SIGTERM.
fn watch(stack_file: &Path, work_dir: &Path) {
    let mut watched: BTreeMap<String, Watched> = BTreeMap::new();
    while !crate::interrupt::interrupted() {
        std::thread::sleep(TICK);
        let Some(_op) = try_op_lock(work_dir) else {
            continue;
        };
        let stack = match load(stack_file, &resolve_image) {
            Ok(s) => s,
            Err(e) => {
                log::warn!("supervisor: {e}");
                continue;
            }
        };
        for (index, inst) in stack.plan.instances.iter().enumerate() {
            // Only what `up` started, and not jobs, which end.
            let started = stack
                .state
                .appliances
                .get(&inst.name)
                .is_some_and(|s| s.definition.is_some());
            if !started || inst.run.is_some() {
                continue;
            }
            let Some(now) = launch::liveness(&inst.runtime_name) else {
                continue;
            };
            let w = watched.entry(inst.name.clone()).or_default();
            let changed = w.last != Some(now);
            w.last = Some(now);
            if now == Liveness::Running {
                let since = *w.running_since.get_or_insert_with(Instant::now);
                if since.elapsed() > STABLE {
                    w.failures = 0;
                }
                continue;
            }
            w.running_since = None;
            let (why, restart) = verdict(&inst.runtime_name, now, inst.restart);
            if changed {
                let policy = match inst.restart {
                    Restart::No => "restart = no: left down",
                    Restart::OnFailure if !restart => "restart = on-failure: left down",
                    _ => "restarting",
                };
                events::record(work_dir, &inst.name, "died", &format!("{why}; {policy}"));
                if restart {
                    let delay = backoff(w.failures);
                    w.next_try = Some(Instant::now() + delay);
                }
            }
            if !restart || w.next_try.is_some_and(|t| Instant::now() < t) {
                continue;
            }
            w.failures += 1;
            let o = up::start_one(&stack.plan, index, false);
            if o.action == up::Action::Failed {
                let delay = backoff(w.failures);
                w.next_try = Some(Instant::now() + delay);
                events::record(
                    work_dir,
                    &inst.name,
                    "restart failed",
                    &format!(
                        "{}; next try in {} s",
                        o.error.unwrap_or_default(),
                        delay.as_secs()
                    ),
                );
            } else {
                w.next_try = None;
                w.last = Some(Liveness::Running);
                events::record(
                    work_dir,
                    &inst.name,
                    "restarted",
                    &format!("attempt {}", w.failures),
                );
            }
        }
    }
}

/// 1 s, 2 s, 4 s ... up to 30 s after `failures` failed restarts.
fn backoff(failures: u32) -> Duration {
    FIRST_BACKOFF
        .saturating_mul(1u32 << failures.min(5))
        .min(MAX_BACKOFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_30_s() {
        let s: Vec<u64> = (0..7).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(s, [1, 2, 4, 8, 16, 30, 30]);
    }
}
