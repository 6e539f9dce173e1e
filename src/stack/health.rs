//! Health checks of a stack's appliances, from the host: a TCP port that
//! accepts, an HTTP GET with the expected status, or a line on the
//! appliance's console.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::file::Health;
use crate::appliance::logs;

const DEFAULT_INTERVAL: f64 = 1.0;
const DEFAULT_TIMEOUT: f64 = 2.0;
const DEFAULT_RETRIES: u32 = 30;

fn secs(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(1))
}

/// The last `n` lines of an appliance's console log.
pub fn console_tail(runtime_name: &str, n: usize) -> Vec<String> {
    let text = logs::console_text(runtime_name);
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_owned())
        .filter(|l| !l.trim().is_empty())
        .collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

fn console_has(runtime_name: &str, line: &str) -> bool {
    String::from_utf8_lossy(&logs::console_text(runtime_name)).contains(line)
}

fn http_status(addr: SocketAddr, path: &str, timeout: Duration) -> Result<u16, String> {
    let mut s = TcpStream::connect_timeout(&addr, timeout).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n",
        addr.ip()
    )
    .map_err(|e| e.to_string())?;
    let mut head = [0u8; 64];
    let n = s.read(&mut head).map_err(|e| e.to_string())?;
    let line = String::from_utf8_lossy(&head[..n]);
    line.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| {
            format!(
                "not an HTTP answer: {:?}",
                line.lines().next().unwrap_or("")
            )
        })
}

/// One attempt: Ok, or why it failed.
fn attempt(h: &Health, runtime_name: &str, address: Option<Ipv4Addr>) -> Result<(), String> {
    let timeout = secs(h.timeout.unwrap_or(DEFAULT_TIMEOUT));
    if let Some(line) = &h.console {
        return if console_has(runtime_name, line) {
            Ok(())
        } else {
            Err(format!("no {line:?} on the console yet"))
        };
    }
    let Some(ip) = address else {
        return Err("a tcp/http check needs the appliance on the stack's network".into());
    };
    if let Some(port) = h.tcp {
        let addr = SocketAddr::from((ip, port));
        return TcpStream::connect_timeout(&addr, timeout)
            .map(drop)
            .map_err(|e| format!("tcp {addr}: {e}"));
    }
    let port = h.port.unwrap_or(80);
    let path = h.http.as_deref().unwrap_or("/");
    let want = h.status.unwrap_or(200);
    let addr = SocketAddr::from((ip, port));
    match http_status(addr, path, timeout) {
        Ok(s) if s == want => Ok(()),
        Ok(s) => Err(format!("GET http://{addr}{path}: status {s}, want {want}")),
        Err(e) => Err(format!("GET http://{addr}{path}: {e}")),
    }
}

/// Retries until healthy, out of retries, or `alive` says the appliance
/// is gone. Ok, or the last failure.
pub fn wait_healthy(
    h: &Health,
    runtime_name: &str,
    address: Option<Ipv4Addr>,
    alive: &dyn Fn() -> bool,
) -> Result<(), String> {
    let interval = secs(h.interval.unwrap_or(DEFAULT_INTERVAL));
    let retries = h.retries.unwrap_or(DEFAULT_RETRIES).max(1);
    let mut last = String::new();
    for _ in 0..retries {
        let started = Instant::now();
        match attempt(h, runtime_name, address) {
            Ok(()) => return Ok(()),
            Err(e) => last = e,
        }
        if !alive() {
            return Err(format!("it stopped while unhealthy ({last})"));
        }
        std::thread::sleep(interval.saturating_sub(started.elapsed()));
    }
    Err(format!("unhealthy after {retries} attempts: {last}"))
}
