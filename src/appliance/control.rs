//! `herd ps`, `inspect`, `stop`, `kill`, `pause`, `resume`: clients of a
//! running appliance's control API.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::client::{self, ClientError};
use super::runtime_dir::{
    self, Entry, Liveness, RuntimeDirError, API_SOCKET, BOOT_REPORT, CONFIG_FILE,
};

/// How much longer than the guest's own timeout `herd stop` waits for herd
/// to exit (forcing and tearing down take a moment).
const STOP_GRACE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error(transparent)]
    RuntimeDir(#[from] RuntimeDirError),
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("appliance {0} is not running")]
    NotRunning(String),
    #[error("appliance {name} (pid {pid}) did not exit within {secs} s of the stop request")]
    StillRunning { name: String, pid: u32, secs: u64 },
}

impl ControlError {
    /// Errors that are the user's (bad name, nothing to act on) as opposed
    /// to a failing herd.
    pub fn is_user_error(&self) -> bool {
        matches!(
            self,
            ControlError::RuntimeDir(_) | ControlError::NotRunning(_)
        )
    }
}

fn running(name: &str) -> Result<Entry, ControlError> {
    let entry = runtime_dir::find(name)?;
    if entry.liveness != Liveness::Running {
        return Err(ControlError::NotRunning(name.to_owned()));
    }
    Ok(entry)
}

fn api(
    entry: &Entry,
    method: &str,
    url: &str,
    body: Option<&Value>,
) -> Result<Value, ControlError> {
    Ok(client::request(&entry.file(API_SOCKET), method, url, body)?)
}

fn read_json(entry: &Entry, file: &str) -> Value {
    std::fs::read(entry.file(file))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or(Value::Null)
}

/// `herd inspect`: the API's view of a running appliance, or what a
/// stopped one left behind.
pub fn inspect(name: &str) -> Result<Value, ControlError> {
    let entry = runtime_dir::find(name)?;
    if entry.liveness == Liveness::Running {
        let vm = api(&entry, "GET", "/v1/vm", None)?;
        let metrics = api(&entry, "GET", "/v1/metrics", None)?;
        return Ok(
            json!({ "name": name, "runtime_dir": entry.path, "vm": vm, "metrics": metrics }),
        );
    }
    Ok(json!({
        "name": name,
        "runtime_dir": entry.path,
        "vm": { "state": liveness_text(entry.liveness) },
        "config": read_json(&entry, CONFIG_FILE),
        "last_run": read_json(&entry, BOOT_REPORT),
    }))
}

fn liveness_text(l: Liveness) -> &'static str {
    match l {
        Liveness::Running => "running",
        Liveness::Exited => "exited",
        Liveness::Dead => "dead",
    }
}

/// The first `ip=` address on a kernel command line (the appliance's
/// static address), if any.
fn address(cmdline: &str) -> Option<String> {
    cmdline
        .split_whitespace()
        .filter_map(|t| t.strip_prefix("ip="))
        .filter_map(|v| v.split(':').next())
        .find(|a| !a.is_empty() && a.chars().all(|c| c.is_ascii_digit() || c == '.'))
        .map(str::to_owned)
}

/// One `herd ps` row as JSON.
fn ps_row(entry: &Entry) -> Value {
    let mut row = json!({
        "name": entry.name,
        "state": liveness_text(entry.liveness),
        "pid": entry.pid,
    });
    if entry.liveness != Liveness::Running {
        let report = read_json(entry, BOOT_REPORT);
        row["exit_status"] = report["exit_status"].clone();
        row["stop_reason"] = report["stop_reason"].clone();
        return row;
    }
    match api(entry, "GET", "/v1/vm", None) {
        Ok(vm) => {
            row["state"] = vm["state"].clone();
            row["uptime_s"] = vm["uptime_s"].clone();
            row["image"] = vm["root"].clone();
            row["vcpus"] = vm["vcpus"].clone();
            row["mem_mib"] = vm["mem_mib"].clone();
            row["address"] = json!(vm["cmdline"].as_str().and_then(address));
        }
        Err(e) => row["error"] = json!(e.to_string()),
    }
    if let Ok(m) = api(entry, "GET", "/v1/metrics", None) {
        row["guest_rss_bytes"] = m["memory"]["guest_rss_bytes"].clone();
        row["herd_rss_bytes"] = m["memory"]["herd_rss_bytes"].clone();
    }
    row
}

pub fn ps(all: bool) -> Vec<Value> {
    runtime_dir::list()
        .iter()
        .filter(|e| all || e.liveness == Liveness::Running)
        .map(ps_row)
        .collect()
}

fn mib(v: &Value) -> String {
    v.as_u64().map_or_else(
        || "-".into(),
        |b| format!("{:.1}M", b as f64 / f64::from(1 << 20)),
    )
}

fn uptime(v: &Value) -> String {
    let Some(s) = v.as_f64() else {
        return "-".into();
    };
    let s = Duration::try_from_secs_f64(s).map_or(0, |d| d.as_secs());
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, s % 3600 / 60),
    }
}

/// A store image (`.../images/NAME/VERSION/image.erofs`) as NAME:VERSION,
/// any other image by its file name.
fn image_name(path: &str) -> String {
    let p = std::path::Path::new(path);
    let parts: Vec<&str> = p
        .iter()
        .rev()
        .take(4)
        .map(|c| c.to_str().unwrap_or(""))
        .collect();
    match parts.as_slice() {
        [crate::image::store::IMAGE_FILE, version, name, "images"] => format!("{name}:{version}"),
        _ => p
            .file_name()
            .map_or("-".into(), |f| f.to_string_lossy().into_owned()),
    }
}

/// The `herd ps` table.
pub fn ps_table(rows: &[Value]) -> String {
    let text = |v: &Value| match v {
        Value::Null => "-".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut lines = vec![[
        "NAME", "STATE", "PID", "UPTIME", "IMAGE", "ADDRESS", "VCPUS", "MEM", "TOUCHED", "HERD_RSS",
    ]
    .map(str::to_owned)];
    for r in rows {
        let image = r["image"].as_str().map_or("-".into(), image_name);
        lines.push([
            text(&r["name"]),
            text(&r["state"]),
            text(&r["pid"]),
            uptime(&r["uptime_s"]),
            image,
            text(&r["address"]),
            text(&r["vcpus"]),
            r["mem_mib"]
                .as_u64()
                .map_or("-".into(), |m| format!("{m}M")),
            mib(&r["guest_rss_bytes"]),
            mib(&r["herd_rss_bytes"]),
        ]);
    }
    let widths: Vec<usize> = (0..lines[0].len())
        .map(|i| lines.iter().map(|l| l[i].len()).max().unwrap_or(0))
        .collect();
    lines
        .iter()
        .map(|l| {
            l.iter()
                .zip(&widths)
                .map(|(c, w)| format!("{c:<w$}"))
                .collect::<Vec<_>>()
                .join("  ")
                .trim_end()
                .to_owned()
                + "\n"
        })
        .collect()
}

/// Waits for the appliance's herd to let go of its runtime directory.
fn wait_exit(name: &str, pid: u32, within: Duration) -> Result<(), ControlError> {
    let deadline = Instant::now() + within;
    loop {
        match runtime_dir::find(name) {
            Ok(e) if e.liveness == Liveness::Running => {}
            _ => return Ok(()),
        }
        if Instant::now() > deadline {
            return Err(ControlError::StillRunning {
                name: name.to_owned(),
                pid,
                secs: within.as_secs(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// What the appliance's last run says about its end.
fn stop_reason(name: &str) -> String {
    runtime_dir::find(name)
        .map(|e| read_json(&e, BOOT_REPORT)["stop_reason"].clone())
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_else(|| "unknown".into())
}

/// `herd stop`: graceful power-off, forced after `timeout`; waits for herd
/// to exit. Returns how the VM ended.
pub fn stop(name: &str, timeout: Duration) -> Result<String, ControlError> {
    let entry = running(name)?;
    api(
        &entry,
        "POST",
        "/v1/vm/stop",
        Some(&json!({ "timeout_s": timeout.as_secs_f64() })),
    )?;
    wait_exit(name, entry.pid.unwrap_or(0), timeout + STOP_GRACE)?;
    Ok(stop_reason(name))
}

/// `herd kill`: stops at once through the API; SIGKILL if herd does not
/// answer or exit.
pub fn kill(name: &str) -> Result<String, ControlError> {
    let entry = running(name)?;
    let pid = entry.pid.unwrap_or(0);
    let asked = api(&entry, "POST", "/v1/vm/kill", None);
    if asked.is_err() || wait_exit(name, pid, STOP_GRACE).is_err() {
        if let Ok(pid) = libc::pid_t::try_from(pid) {
            log::warn!("herd (pid {pid}) does not answer; sending SIGKILL");
            // kill(2) with a pid read from the runtime directory
            // whose lock shows that process still runs.
            // SAFETY: sound for the reasons just given.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        wait_exit(name, pid, STOP_GRACE)?;
        return Ok("killed with SIGKILL".into());
    }
    Ok(stop_reason(name))
}

/// `herd pause` / `herd resume`.
pub fn pause(name: &str, pause: bool) -> Result<Value, ControlError> {
    let entry = running(name)?;
    let url = if pause {
        "/v1/vm/pause"
    } else {
        "/v1/vm/resume"
    };
    api(&entry, "POST", url, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_images_by_reference() {
        assert_eq!(
            image_name("/h/images/redis/2/image.erofs"),
            "redis:2".to_owned()
        );
        assert_eq!(image_name("/srv/base.erofs"), "base.erofs".to_owned());
    }

    #[test]
    fn address_from_ip_argument() {
        assert_eq!(
            address("console=ttyS0 ip=10.0.0.2::10.0.0.1:255.255.255.0::eth0:off").as_deref(),
            Some("10.0.0.2")
        );
        assert_eq!(address("ip=dhcp"), None);
    }
}
