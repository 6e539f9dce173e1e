//! `herd upgrade NAME --image X` and `herd rollback NAME`: stop the
//! appliance, boot it on the other image with the same disk, and wait for
//! it to be ready and healthy; if it is not within the timeout, boot it on
//! the image it ran before and fail. Replicas go one at a time; the first
//! unhealthy one rolls the whole appliance back.

use std::path::Path;
use std::time::{Duration, Instant};

use super::up::{self, Action, Outcome};
use super::{events, launch, load, resolve_image, save, EXIT_FAILED};
use crate::exit_status::{EXIT_BAD_INPUT, EXIT_OK};
use crate::fail;

pub const ROLLBACK_TIMEOUT: Duration = Duration::from_secs(60);

/// Starts instance `index` of `plan`, failing it if it is not ready and
/// healthy within `timeout` (it is stopped then).
fn start_within(plan: &super::Plan, index: usize, timeout: Duration) -> Outcome {
    let deadline = Instant::now() + timeout;
    std::thread::scope(|s| {
        let handle = s.spawn(|| up::start_one(plan, index, false));
        let mut timed_out = false;
        while !handle.is_finished() {
            if Instant::now() > deadline && !timed_out {
                timed_out = true;
                let _ = launch::stop(&plan.instances[index]);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut o = handle
            .join()
            .unwrap_or_else(|_| Outcome::failed(index, "the start thread panicked".into()));
        if timed_out {
            o.action = Action::Failed;
            o.error = Some(format!(
                "not ready and healthy within {} s{}",
                timeout.as_secs(),
                o.error.map(|e| format!(" ({e})")).unwrap_or_default()
            ));
        }
        o
    })
}

/// Upgrades `name` to `image`; without one, rolls it back.
pub fn upgrade(path: &Path, name: &str, image: Option<&str>, timeout: Duration) -> u8 {
    let old = match load(path, &resolve_image) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let members: Vec<usize> = old
        .plan
        .instances
        .iter()
        .enumerate()
        .filter(|(_, i)| i.group == name)
        .map(|(n, _)| n)
        .collect();
    let Some(&first) = members.first() else {
        return fail(
            EXIT_BAD_INPUT,
            format!("no appliance {name} in {}", path.display()),
        );
    };
    let current = old.plan.instances[first].image.clone();
    let recorded = old.state.appliances.get(name).cloned().unwrap_or_default();
    let target = match image {
        Some(i) => i.to_owned(),
        None => match recorded.previous_image.clone() {
            Some(p) => p,
            None => {
                return fail(
                    EXIT_BAD_INPUT,
                    format!("{name} has not been upgraded: there is no image to roll back to"),
                )
            }
        },
    };
    if current.as_deref() == Some(target.as_str()) {
        println!("herd: {name} already runs {target}");
        return EXIT_OK;
    }
    // The plan with the new image recorded: it resolves the image (an
    // unknown one fails here, before anything stops).
    let mut new_state = super::StackState::load(&old.state_path).unwrap_or_default();
    let entry = new_state.appliances.entry(name.to_owned()).or_default();
    entry.image = Some(target.clone());
    entry.file_image = old.plan.instances[first].file_image.clone();
    entry.previous_image = current.clone();
    let state_text = serde_json::to_string(&new_state).unwrap_or_default();
    let new = match load_with_state(path, &state_text) {
        Ok(s) => s,
        Err(e) => return fail(EXIT_BAD_INPUT, e),
    };
    let _op = match super::supervisor::op_lock(&old.plan.work_dir) {
        Ok(l) => l,
        Err(e) => return fail(EXIT_FAILED, e),
    };
    let work_dir = old.plan.work_dir.clone();
    let current_text = current.as_deref().unwrap_or("its kernel");
    println!("herd: {name}: {current_text} -> {target}");
    let mut upgraded = Vec::new();
    for &i in &members {
        let inst = &old.plan.instances[i];
        if let Err(e) = launch::stop(inst) {
            return fail(EXIT_FAILED, format!("{}: cannot stop it: {e}", inst.name));
        }
        let o = start_within(&new.plan, i, timeout);
        if o.action != Action::Failed {
            println!(
                "herd: {} runs {target}, ready and healthy in {:.2}s",
                inst.name,
                o.took.unwrap_or_default().as_secs_f64()
            );
            upgraded.push(i);
            continue;
        }
        let why = o.error.unwrap_or_else(|| "failed".into());
        eprintln!("herd: {}: {target} failed: {why}", inst.name);
        for line in super::health::console_tail(&inst.runtime_name, 10) {
            eprintln!("  | {line}");
        }
        upgraded.push(i);
        eprintln!("herd: rolling {name} back to {current_text}");
        let mut rollback_failed = Vec::new();
        for &j in &upgraded {
            let _ = launch::stop(&new.plan.instances[j]);
            let r = start_within(&old.plan, j, ROLLBACK_TIMEOUT);
            if r.action == Action::Failed {
                rollback_failed.push(format!(
                    "{}: {}",
                    old.plan.instances[j].name,
                    r.error.unwrap_or_default()
                ));
            }
        }
        save(&old);
        events::record(
            &work_dir,
            name,
            "rolled back",
            &format!("{target} failed ({why}); back on {current_text}"),
        );
        if rollback_failed.is_empty() {
            return fail(
                EXIT_FAILED,
                format!(
                    "upgrade of {name} to {target} failed ({why}); rolled back: it runs \
                     {current_text} again"
                ),
            );
        }
        return fail(
            EXIT_FAILED,
            format!(
                "upgrade of {name} to {target} failed ({why}), and the rollback to \
                 {current_text} failed too: {}",
                rollback_failed.join("; ")
            ),
        );
    }
    let mut new = new;
    let outcomes: Vec<Outcome> = members
        .iter()
        .map(|&i| Outcome::new(i, Action::Started))
        .collect();
    let mut state = std::mem::take(&mut new.state);
    up::record(&new.plan, &mut state, &outcomes);
    new.state = state;
    save(&new);
    events::record(
        &work_dir,
        name,
        "upgraded",
        &format!("{current_text} -> {target}"),
    );
    println!("herd: {name} upgraded to {target} (herd rollback {name} goes back)");
    EXIT_OK
}

/// `load`, with the state given as text instead of read from its file.
fn load_with_state(path: &Path, state_json: &str) -> Result<super::Stack, String> {
    let (file, text) = super::StackFile::load(path).map_err(|e| e.to_string())?;
    let state: super::StackState = serde_json::from_str(state_json).map_err(|e| e.to_string())?;
    let plan =
        super::plan::plan(path, &text, &file, &state, &resolve_image).map_err(|e| e.to_string())?;
    Ok(super::Stack {
        plan,
        state,
        state_path: super::state::path_for(path),
    })
}
