//! `herd up` and `herd down`: the network, the disks, the hosts file, then
//! each appliance in dependency order (those of one level side by side),
//! waiting for it to be ready and healthy; a second `up` leaves unchanged
//! running appliances alone and restarts changed ones.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use super::disk_config;
use super::launch::{self, Ready};
use super::plan::{Instance, Plan};
use super::state::{ApplianceState, StackState};
use crate::net_setup;

/// VMs started side by side within one dependency level.
const PARALLEL_STARTS: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Started,
    Unchanged,
    Restarted,
    /// A job that ran to its end.
    Exited,
    Failed,
    Skipped,
}

impl Action {
    /// Its name in the event log.
    pub fn event(self) -> &'static str {
        match self {
            Action::Failed => "failed",
            other => other.text(),
        }
    }

    fn text(self) -> &'static str {
        match self {
            Action::Started => "started",
            Action::Unchanged => "unchanged",
            Action::Restarted => "restarted",
            Action::Exited => "exited",
            Action::Failed => "FAILED",
            Action::Skipped => "not started",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Outcome {
    pub index: usize,
    pub action: Action,
    /// Launch to ready (or, for a job, launch to its end).
    pub took: Option<Duration>,
    pub exit_status: Option<i32>,
    pub error: Option<String>,
    pub started_at: Option<SystemTime>,
}

impl Outcome {
    pub fn new(index: usize, action: Action) -> Self {
        Outcome {
            index,
            action,
            took: None,
            exit_status: None,
            error: None,
            started_at: None,
        }
    }

    pub fn failed(index: usize, why: String) -> Self {
        Outcome {
            error: Some(why),
            ..Outcome::new(index, Action::Failed)
        }
    }
}

/// The instances `up NAMES` touches: the named appliances (or replicas)
/// and everything they depend on; all without names.
pub fn select(plan: &Plan, names: &[String]) -> Result<Vec<usize>, String> {
    if names.is_empty() {
        return Ok((0..plan.instances.len()).collect());
    }
    let mut groups: BTreeSet<String> = BTreeSet::new();
    let mut exact: BTreeSet<String> = BTreeSet::new();
    for n in names {
        if plan.instances.iter().any(|i| &i.group == n) {
            groups.insert(n.clone());
        } else if let Some(i) = plan.instances.iter().find(|i| &i.name == n) {
            exact.insert(i.name.clone());
        } else {
            return Err(format!(
                "no appliance {n} in {} (it has: {})",
                plan.file.display(),
                plan.instances
                    .iter()
                    .map(|i| i.group.as_str())
                    .collect::<BTreeSet<_>>()
                    .into_iter()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    // Dependencies, transitively.
    let mut todo: Vec<String> = groups.iter().cloned().collect();
    todo.extend(
        plan.instances
            .iter()
            .filter(|i| exact.contains(&i.name))
            .flat_map(|i| i.depends_on.clone()),
    );
    while let Some(g) = todo.pop() {
        if let Some(i) = plan.instances.iter().find(|i| i.group == g) {
            for d in &i.depends_on {
                if groups.insert(d.clone()) {
                    todo.push(d.clone());
                }
            }
        }
        groups.insert(g);
    }
    Ok(plan
        .instances
        .iter()
        .enumerate()
        .filter(|(_, i)| groups.contains(&i.group) || exact.contains(&i.name))
        .map(|(n, _)| n)
        .collect())
}

/// The bridge, if the stack has a network.
pub fn network_up(plan: &Plan) -> Result<(), String> {
    match &plan.network {
        Some(net) => net_setup::create(&net.bridge, net.subnet, net.nat)
            .map_err(|e| format!("network {}: {e}", net.bridge)),
        None => Ok(()),
    }
}

/// Starts one instance (its disk made and configured first) and waits
/// until it is ready and healthy; a job (`wait_exit`) until it ends.
pub fn start_one(plan: &Plan, index: usize, wait_exit: bool) -> Outcome {
    let inst = &plan.instances[index];
    if let Err(e) = disk_config::ensure_disk(inst) {
        return Outcome::failed(index, e.to_string());
    }
    if let Err(e) = disk_config::write_config(plan, inst) {
        return Outcome::failed(index, e.to_string());
    }
    let t0 = Instant::now();
    let started_at = match launch::start(plan, inst) {
        Ok(t) => t,
        Err(e) => return Outcome::failed(index, e),
    };
    let mut out = Outcome::new(index, Action::Started);
    out.started_at = Some(started_at);
    if wait_exit {
        return wait_job(inst, out);
    }
    match launch::wait_ready(inst, t0) {
        Ok(Ready::Ready(took)) => out.took = Some(took),
        Ok(Ready::Exited(status, reason)) => {
            out.exit_status = Some(status);
            out.took = Some(t0.elapsed());
            if inst.run.is_some() && status == 0 {
                out.action = Action::Exited;
                return out;
            }
            return Outcome {
                error: Some(format!("it stopped before it was ready ({reason})")),
                action: Action::Failed,
                ..out
            };
        }
        Err(e) => {
            let _ = launch::stop(inst);
            return Outcome {
                error: Some(e),
                action: Action::Failed,
                ..out
            };
        }
    }
    if let Some(h) = &inst.health {
        let alive = || launch::is_running(&inst.runtime_name);
        if let Err(e) = super::health::wait_healthy(h, &inst.runtime_name, inst.address, &alive) {
            return Outcome {
                error: Some(format!("health check: {e}")),
                action: Action::Failed,
                ..out
            };
        }
        out.took = Some(t0.elapsed());
    }
    out
}

/// Waits for a job to end; its exit status decides.
fn wait_job(inst: &Instance, mut out: Outcome) -> Outcome {
    while launch::is_running(&inst.runtime_name) {
        if super::interrupted() {
            out.action = Action::Failed;
            out.error = Some("interrupted".into());
            return out;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    match launch::last_run(&inst.runtime_name) {
        Some((status, ended, _)) => {
            out.exit_status = Some(status);
            out.took = out.started_at.and_then(|s| ended.duration_since(s).ok());
            out.action = if status == 0 {
                Action::Exited
            } else {
                Action::Failed
            };
            if status != 0 {
                out.error = Some(format!("exit status {status}"));
            }
        }
        None => {
            out.action = Action::Failed;
            out.error = Some("its herd is gone and left no report".into());
        }
    }
    out
}

/// Brings up the selected instances level by level. A level with a
/// failure ends the `up`: later levels are not started.
pub fn up(
    plan: &Plan,
    state: &StackState,
    selected: &[usize],
    jobs: &BTreeSet<usize>,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Outcome> = Vec::new();
    let max_level = selected
        .iter()
        .map(|&i| plan.instances[i].level)
        .max()
        .unwrap_or(0);
    let mut failed = false;
    for level in 0..=max_level {
        let here: Vec<usize> = selected
            .iter()
            .copied()
            .filter(|&i| plan.instances[i].level == level)
            .collect();
        if failed || super::interrupted() {
            outcomes.extend(here.iter().map(|&i| Outcome::new(i, Action::Skipped)));
            continue;
        }
        let results = run_level(plan, state, &here, jobs);
        failed = results
            .iter()
            .any(|o| o.action == Action::Failed && !jobs.contains(&o.index));
        outcomes.extend(results);
    }
    outcomes
}

fn run_level(
    plan: &Plan,
    state: &StackState,
    here: &[usize],
    jobs: &BTreeSet<usize>,
) -> Vec<Outcome> {
    let next = AtomicUsize::new(0);
    let results = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..PARALLEL_STARTS.min(here.len()) {
            s.spawn(|| loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                let Some(&index) = here.get(n) else { break };
                if super::interrupted() {
                    push(&results, Outcome::new(index, Action::Skipped));
                    continue;
                }
                let o = bring_up(plan, state, index, jobs.contains(&index));
                push(&results, o);
            });
        }
    });
    let mut v = results.into_inner().unwrap_or_else(|p| p.into_inner());
    v.sort_by_key(|o| o.index);
    v
}

fn push(results: &Mutex<Vec<Outcome>>, o: Outcome) {
    results.lock().unwrap_or_else(|p| p.into_inner()).push(o);
}

/// One instance: unchanged if it runs as defined, else (re)started.
fn bring_up(plan: &Plan, state: &StackState, index: usize, job: bool) -> Outcome {
    let inst = &plan.instances[index];
    let definition = launch::definition(plan, inst);
    let recorded = state
        .appliances
        .get(&inst.name)
        .and_then(|s| s.definition.as_deref());
    let mut restarted = false;
    if launch::is_running(&inst.runtime_name) {
        if recorded == Some(definition.as_str()) && !job {
            return Outcome::new(index, Action::Unchanged);
        }
        log::info!("{}: its definition changed; restarting it", inst.name);
        if let Err(e) = launch::stop(inst) {
            return Outcome::failed(index, format!("cannot stop it to restart it: {e}"));
        }
        restarted = true;
    }
    let mut o = start_one(plan, index, job);
    if restarted && o.action == Action::Started {
        o.action = Action::Restarted;
    }
    o
}

/// Records what `up` did in the state.
pub fn record(plan: &Plan, state: &mut StackState, outcomes: &[Outcome]) {
    for o in outcomes {
        let inst = &plan.instances[o.index];
        let entry = state.appliances.entry(inst.name.clone()).or_default();
        entry.address = inst.address;
        if matches!(
            o.action,
            Action::Started | Action::Restarted | Action::Unchanged | Action::Exited
        ) {
            entry.definition = Some(launch::definition(plan, inst));
        }
        if let Some(d) = launch::created_disk(inst) {
            if d.exists() {
                entry.created_disk = Some(d);
            }
        }
        let group = state.appliances.entry(inst.group.clone()).or_default();
        if group.image.is_none() || group.file_image != inst.file_image {
            *group = ApplianceState {
                image: inst.image.clone(),
                file_image: inst.file_image.clone(),
                ..group.clone()
            };
        }
    }
}

/// The `up` table.
pub fn table(plan: &Plan, outcomes: &[Outcome]) -> String {
    let mut rows =
        vec![["NAME", "HOST NAME", "ADDRESS", "IMAGE", "STATE", "READY"].map(String::from)];
    for o in outcomes {
        let i = &plan.instances[o.index];
        rows.push([
            i.name.clone(),
            i.runtime_name.clone(),
            i.address.map_or("-".into(), |a| a.to_string()),
            i.image.clone().unwrap_or_else(|| "-".into()),
            o.action.text().to_owned(),
            o.took
                .map_or("-".into(), |d| format!("{:.2}s", d.as_secs_f64())),
        ]);
    }
    super::render_table(&rows)
}

/// Stops the given instances (reverse order), then removes the TAPs and
/// the bridge. Returns the errors.
pub fn down(plan: &Plan, indexes: &[usize]) -> Vec<String> {
    let mut errors = Vec::new();
    let mut by_level: Vec<usize> = indexes.to_vec();
    by_level.sort_by_key(|&i| std::cmp::Reverse(plan.instances[i].level));
    let max = by_level.first().map_or(0, |&i| plan.instances[i].level);
    for level in (0..=max).rev() {
        let here: Vec<usize> = by_level
            .iter()
            .copied()
            .filter(|&i| plan.instances[i].level == level)
            .collect();
        let errs = Mutex::new(Vec::new());
        let next = AtomicUsize::new(0);
        std::thread::scope(|s| {
            for _ in 0..PARALLEL_STARTS.min(here.len()) {
                s.spawn(|| loop {
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let Some(&index) = here.get(n) else { break };
                    let inst = &plan.instances[index];
                    if let Err(e) = launch::stop(inst) {
                        errs.lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(format!("{}: {e}", inst.name));
                    }
                });
            }
        });
        errors.extend(errs.into_inner().unwrap_or_else(|p| p.into_inner()));
    }
    errors
}

/// Removes the stack's TAPs (herd's go with its process; these are left
/// by a killed herd) and its bridge.
pub fn network_down(plan: &Plan) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(net) = &plan.network else {
        return errors;
    };
    for tap in plan.instances.iter().filter_map(|i| i.tap.as_deref()) {
        if let Err(e) = net_setup::remove_tap(tap) {
            errors.push(format!("cannot remove TAP {tap}: {e}"));
        }
    }
    if let Err(e) = net_setup::remove(&net.bridge) {
        errors.push(format!("network {}: {e}", net.bridge));
    }
    errors
}
