//! Starting and stopping one stack appliance: a detached, named herd
//! appliance (`herd run --detach --name STACK-NAME ...`), so `herd ps`,
//! `logs`, `stop` work on it; waiting until its guest says it is ready.

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use sha2::{Digest, Sha256};

use super::plan::{DiskSource, Instance, Plan};
use crate::appliance::client;
use crate::appliance::runtime_dir::{self, Liveness, API_SOCKET, BOOT_REPORT};

/// How long a guest gets from launch to "ready".
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// The kernel command line herd adds for the stack: the address (so the
/// guest has it before its init reads config/network), then the file's
/// additions, then the job's command.
fn cmdline(plan: &Plan, inst: &Instance) -> Option<String> {
    let mut parts = Vec::new();
    if let (Some(a), Some(net)) = (inst.address, &plan.network) {
        parts.push(format!(
            "ip={a}::{}:{}:{}:eth0:off",
            net.subnet.host,
            net.subnet.netmask(),
            inst.name
        ));
    }
    parts.extend(inst.cmdline.clone());
    if let Some(run) = &inst.run {
        parts.push(format!("herd.run=\"{run}\""));
    }
    (!parts.is_empty()).then(|| parts.join(" "))
}

/// `herd run` arguments for an instance (without `--detach`).
pub fn run_args(plan: &Plan, inst: &Instance) -> Vec<String> {
    let mut args = vec![
        "run".to_owned(),
        "--name".into(),
        inst.runtime_name.clone(),
        "--kernel".into(),
        inst.kernel.display().to_string(),
    ];
    if let Some(root) = &inst.root {
        args.extend(["--root".into(), root.display().to_string()]);
    }
    if let Some(disk) = &inst.disk {
        args.extend(["--disk".into(), disk.path().display().to_string()]);
    }
    if let (Some(tap), Some(net)) = (&inst.tap, &plan.network) {
        let mac = inst.mac.as_deref().map(|m| format!(",mac={m}"));
        args.extend([
            "--net".into(),
            format!("tap={tap}{},bridge={}", mac.unwrap_or_default(), net.bridge),
        ]);
    }
    args.extend([
        "--mem".into(),
        inst.mem.to_string(),
        "--cpus".into(),
        inst.cpus.to_string(),
        "--stop-timeout".into(),
        inst.stop_timeout.to_string(),
        "--log-level".into(),
        "warn".into(),
    ]);
    if let Some(c) = cmdline(plan, inst) {
        args.extend(["--cmdline".into(), c]);
    }
    args
}

/// A digest of how an instance is launched: a change restarts it.
pub fn definition(plan: &Plan, inst: &Instance) -> String {
    let mut h = Sha256::new();
    for a in run_args(plan, inst) {
        h.update(a.as_bytes());
        h.update([0]);
    }
    if let Some(hc) = &inst.health {
        h.update(format!("{hc:?}").as_bytes());
    }
    h.update(format!("{:?}", inst.restart).as_bytes());
    h.finalize()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

pub fn liveness(runtime_name: &str) -> Option<Liveness> {
    runtime_dir::find(runtime_name).ok().map(|e| e.liveness)
}

pub fn is_running(runtime_name: &str) -> bool {
    liveness(runtime_name) == Some(Liveness::Running)
}

/// Under a cap on running VMs (HERD_MAX_VMS), launches go one at a time,
/// each once a slot is free, so many replicas queue instead of failing.
fn slot_gate() -> Option<MutexGuard<'static, ()>> {
    static GATE: Mutex<()> = Mutex::new(());
    crate::vm_slots::free()?;
    let guard = GATE.lock().unwrap_or_else(|p| p.into_inner());
    let deadline = Instant::now() + READY_TIMEOUT;
    while crate::vm_slots::free() == Some(0) && Instant::now() < deadline && !super::interrupted() {
        std::thread::sleep(Duration::from_millis(100));
    }
    Some(guard)
}

/// Starts the instance detached; returns when its VM runs.
pub fn start(plan: &Plan, inst: &Instance) -> Result<SystemTime, String> {
    let _gate = slot_gate();
    let exe = std::env::current_exe().map_err(|e| format!("cannot find herd's binary: {e}"))?;
    let mut args = run_args(plan, inst);
    args.insert(1, "--detach".into());
    let started = SystemTime::now();
    // Its own process group: Ctrl-C on `herd up` must not kill a launch
    // half-way (up stops what it started instead).
    let out = Command::new(exe)
        .args(&args)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("cannot start herd: {e}"))?;
    if out.status.success() {
        return Ok(started);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    let why = stderr
        .lines()
        .rfind(|l| l.contains("error"))
        .or_else(|| stderr.lines().last())
        .unwrap_or("no message")
        .trim_start_matches("herd: error: ")
        .to_owned();
    Err(format!("herd run failed ({}): {why}", out.status))
}

/// What the appliance's last run left: exit status and when it ended.
pub fn last_run(runtime_name: &str) -> Option<(i32, SystemTime, String)> {
    let path = runtime_dir::file_of(runtime_name, BOOT_REPORT);
    let bytes = std::fs::read(&path).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let status = i32::try_from(v["exit_status"].as_i64()?).ok()?;
    let ended = std::fs::metadata(&path).and_then(|m| m.modified()).ok()?;
    let reason = v["stop_reason"].as_str().unwrap_or("unknown").to_owned();
    Some((status, ended, reason))
}

/// How the wait for "ready" ended.
pub enum Ready {
    /// The guest said so (herd init: services started; a bare kernel:
    /// the boot timer), after this long.
    Ready(Duration),
    /// The guest ended first, with this exit status (a job).
    Exited(i32, String),
}

/// Waits until the guest is ready or gone.
pub fn wait_ready(inst: &Instance, since: Instant) -> Result<Ready, String> {
    let socket = runtime_dir::file_of(&inst.runtime_name, API_SOCKET);
    // The herd init says "ready" (124) once its services run; a guest
    // without an image (a bare kernel) only has the boot timer (123), and
    // with a health check, the check is what decides.
    let key = if inst.root.is_some() && inst.health.is_none() {
        "guest_ready_ms"
    } else {
        "boot_timer_ms"
    };
    loop {
        if super::interrupted() {
            return Err("interrupted".into());
        }
        // An answer means its herd runs; only without one is the lock
        // probed (each probe briefly contends with a restart's claim).
        match client::request(&socket, "GET", "/v1/vm", None) {
            Ok(vm) if !vm["boot"][key].is_null() => return Ok(Ready::Ready(since.elapsed())),
            Ok(_) => {}
            Err(_) if !is_running(&inst.runtime_name) => {
                return match last_run(&inst.runtime_name) {
                    Some((status, _, reason)) => Ok(Ready::Exited(status, reason)),
                    None => Err("its herd is gone and left no report".into()),
                };
            }
            Err(_) => {}
        }
        if since.elapsed() > READY_TIMEOUT {
            return Err(format!(
                "not ready after {} s (see `herd logs {}`)",
                READY_TIMEOUT.as_secs(),
                inst.runtime_name
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Stops a running instance gracefully (forced after its timeout).
pub fn stop(inst: &Instance) -> Result<(), String> {
    if !is_running(&inst.runtime_name) {
        return Ok(());
    }
    crate::appliance::control::stop(
        &inst.runtime_name,
        Duration::try_from_secs_f64(inst.stop_timeout).unwrap_or(Duration::from_secs(10)),
    )
    .map(drop)
    .map_err(|e| e.to_string())
}

/// The disk a stack made (not one the file named).
pub fn created_disk(inst: &Instance) -> Option<PathBuf> {
    match &inst.disk {
        Some(DiskSource::Personality { out, .. }) => Some(out.clone()),
        _ => None,
    }
}
