//! Raw mode for an interactive console, restored when herd stops.

use std::mem::MaybeUninit;

/// While alive, the terminal on stdin passes every key to the guest.
pub struct RawTerminal {
    saved: libc::termios,
}

impl RawTerminal {
    /// Switches stdin to raw mode if it is a terminal; `None` otherwise.
    pub fn enable() -> Option<Self> {
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
            return None;
        }
        let mut saved = MaybeUninit::<libc::termios>::uninit();
        // tcgetattr fills the termios it is given; we only read it
        // after checking that the call succeeded.
        // SAFETY: sound for the reasons just given.
        if unsafe { libc::tcgetattr(libc::STDIN_FILENO, saved.as_mut_ptr()) } != 0 {
            return None;
        }
        // SAFETY: tcgetattr succeeded, so `saved` is initialised.
        let saved = unsafe { saved.assume_init() };
        let mut raw = saved;
        // Keep output processing so guest "\n" still renders; Ctrl-C goes
        // to the guest, SIGTERM from elsewhere still stops herd.
        raw.c_lflag &= !(libc::ICANON | libc::ECHO | libc::ISIG | libc::IEXTEN);
        raw.c_iflag &= !(libc::IXON | libc::ICRNL);
        // SAFETY: `raw` is a valid termios derived from the current one.
        if unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &raw) } != 0 {
            return None;
        }
        Some(RawTerminal { saved })
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        // SAFETY: restores the settings read in `enable` on the same fd.
        unsafe { libc::tcsetattr(libc::STDIN_FILENO, libc::TCSANOW, &self.saved) };
    }
}
