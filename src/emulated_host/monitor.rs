//! QEMU's human monitor on a Unix socket: read only when the test host is
//! about to be killed (it ignored a stop request, or never started the
//! script), so the log says where its vCPUs were: a hung test host otherwise
//! leaves nothing to go on (2026-12-01: a 15-minute hang with a silent
//! console).

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long the monitor may take to answer: QEMU is alive but its vCPUs may
/// be spinning, and the kill must not wait long for a diagnosis.
const ANSWER_LIMIT: Duration = Duration::from_secs(3);

/// `-monitor` argument for a socket at `path` that QEMU serves without
/// waiting for a client.
pub fn qemu_arg(path: &Path) -> String {
    format!(
        "unix:{},server=on,wait=off",
        super::machine::qemu_escape(path)
    )
}

/// Each test-host vCPU's instruction pointer and mode, one line per vCPU,
/// from `info registers -a`; None if the monitor does not answer. While a
/// vCPU runs a nested guest, TCG reports the guest's registers there.
pub fn vcpu_summary(path: &Path) -> Option<String> {
    let mut stream = UnixStream::connect(path).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_millis(200)))
        .ok()?;
    stream.write_all(b"info registers -a\n").ok()?;
    let deadline = Instant::now() + ANSWER_LIMIT;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    // The banner ends with a prompt, the answer with the next one.
    while prompts(&text) < 2 && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => text.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("CPU#") || l.starts_with("RIP=") || l.starts_with("CS ="))
        .collect();
    (!lines.is_empty()).then(|| lines.join("\n"))
}

fn prompts(text: &[u8]) -> usize {
    text.windows(PROMPT.len()).filter(|w| *w == PROMPT).count()
}

const PROMPT: &[u8] = b"(qemu) ";
