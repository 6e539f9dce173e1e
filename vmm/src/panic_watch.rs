//! Recognises a Linux guest's kernel panic in its console output.
//!
//! Without ACPI or pvpanic, a panicking guest can only reboot (`panic=N`)
//! or hang; both look like something else from outside. The panic banner on
//! the console is the one dependable signal, so the serial writer looks for
//! it on the way out and the VMM reports the panic as a crash.

use std::io::Write;
use std::sync::{Arc, Mutex};

const MARKER: &[u8] = b"Kernel panic - not syncing: ";
const MAX_LINE: usize = 256;

pub struct PanicWatcher<W> {
    inner: W,
    line: Vec<u8>,
    found: Arc<Mutex<Option<String>>>,
}

impl<W: Write> PanicWatcher<W> {
    pub fn new(inner: W, found: Arc<Mutex<Option<String>>>) -> Self {
        PanicWatcher {
            inner,
            line: Vec::with_capacity(MAX_LINE),
            found,
        }
    }

    fn observe(&mut self, buf: &[u8]) {
        for &b in buf {
            if b == b'\n' {
                self.end_line();
            } else if self.line.len() < MAX_LINE {
                self.line.push(b);
            }
        }
    }

    fn end_line(&mut self) {
        if let Some(pos) = self.line.windows(MARKER.len()).position(|w| w == MARKER) {
            let text = String::from_utf8_lossy(&self.line[pos..]);
            let text = text.trim_end().to_owned();
            let mut found = self.found.lock().unwrap_or_else(|p| p.into_inner());
            if found.is_none() {
                log::error!("guest: {text}");
                *found = Some(text);
            }
        }
        self.line.clear();
    }
}

impl<W: Write> Write for PanicWatcher<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.observe(buf);
        // The guest's output is observed even when the console sink fails.
        self.inner.write_all(buf).map(|()| buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_banner_across_bytewise_writes() {
        let found = Arc::new(Mutex::new(None));
        let mut w = PanicWatcher::new(Vec::new(), found.clone());
        let text = b"[    1.2] Kernel panic - not syncing: No working init found.\r\nmore\n";
        for b in text {
            w.write_all(&[*b]).unwrap();
        }
        assert_eq!(
            found.lock().unwrap().as_deref(),
            Some("Kernel panic - not syncing: No working init found.")
        );
        assert_eq!(w.inner, text.to_vec());
    }

    #[test]
    fn ordinary_output_is_not_a_panic() {
        let found = Arc::new(Mutex::new(None));
        let mut w = PanicWatcher::new(std::io::sink(), found.clone());
        w.write_all(b"Kernel panic - not really\nhello\n").unwrap();
        w.write_all(&[b'x'; 10_000]).unwrap();
        assert!(found.lock().unwrap().is_none());
    }
}
