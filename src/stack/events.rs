//! A stack's event log (`DIR/.herd/STACK/events.jsonl`): what `up`,
//! `down`, `upgrade` and the supervisor did to each appliance, one JSON
//! object a line; `herd events` prints it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

pub const EVENTS_FILE: &str = "events.jsonl";

#[derive(Debug, Deserialize, Serialize)]
pub struct Event {
    /// Unix seconds.
    pub time: f64,
    pub appliance: String,
    pub event: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

pub fn path(work_dir: &Path) -> PathBuf {
    work_dir.join(EVENTS_FILE)
}

/// Appends one event; a log that cannot be written is only warned about.
pub fn record(work_dir: &Path, appliance: &str, event: &str, detail: &str) {
    let e = Event {
        time: SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64()),
        appliance: appliance.to_owned(),
        event: event.to_owned(),
        detail: detail.to_owned(),
    };
    let line = serde_json::to_string(&e).unwrap_or_default() + "\n";
    let written = std::fs::create_dir_all(work_dir).and_then(|()| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path(work_dir))?
            .write_all(line.as_bytes())
    });
    if let Err(err) = written {
        log::warn!("cannot record the event {event} of {appliance}: {err}");
    }
}

pub fn load(work_dir: &Path) -> Vec<Event> {
    let text = std::fs::read_to_string(path(work_dir)).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// `YYYY-MM-DD HH:MM:SS NAME EVENT DETAIL`.
pub fn line(e: &Event) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let secs = e.time.max(0.0) as u64;
    let time = format!("{}:{:02}", crate::image::utc(secs), secs % 60);
    let mut s = format!("{time}  {}  {}", e.appliance, e.event);
    if !e.detail.is_empty() {
        s.push_str(&format!(" ({})", e.detail));
    }
    s
}
