//! Ctrl-C (SIGINT) and SIGTERM for commands that must clean up before
//! they end (`herd image build`, `herd up`): the signal only sets a flag
//! the command checks between its steps.

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// From now on SIGINT/SIGTERM set the flag instead of ending herd (the
/// children in the same process group get Ctrl-C too).
pub fn catch() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // on_signal only stores to an atomic, which is
        // async-signal-safe; the handler stays valid for the process's life.
        // SAFETY: sound for the reasons just given.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}
