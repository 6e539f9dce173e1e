//! Progress of a long build on stderr: one line per step with its time;
//! on a terminal the current sub-step (mmdebstrap's own status lines)
//! is shown in place on a second line.

use std::io::{IsTerminal, Write};
use std::time::Instant;

pub struct Progress {
    tty: bool,
    step: Option<(String, Instant)>,
    detail_shown: bool,
    pub quiet: bool,
}

impl Progress {
    pub fn new(quiet: bool) -> Progress {
        Progress {
            tty: std::io::stderr().is_terminal(),
            step: None,
            detail_shown: false,
            quiet,
        }
    }

    /// Starts a step (and finishes the previous one).
    pub fn step(&mut self, what: &str) {
        self.finish();
        if !self.quiet {
            eprintln!("herd: {what} ...");
        }
        self.step = Some((what.to_owned(), Instant::now()));
    }

    /// A status line inside the current step (shown on terminals only).
    pub fn detail(&mut self, line: &str) {
        if self.tty && !self.quiet {
            let line: String = line.chars().take(100).collect();
            eprint!("\r\x1b[K  {line}");
            let _ = std::io::stderr().flush();
            self.detail_shown = true;
        }
    }

    fn clear_detail(&mut self) {
        if self.detail_shown {
            eprint!("\r\x1b[K");
            self.detail_shown = false;
        }
    }

    /// Ends the current step, printing how long it took.
    pub fn finish(&mut self) {
        self.clear_detail();
        if let Some((what, t)) = self.step.take() {
            if !self.quiet {
                eprintln!("herd: {what}: done in {:.1} s", t.elapsed().as_secs_f64());
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.clear_detail();
    }
}
