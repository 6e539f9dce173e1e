//! Signals: SIGTERM/SIGINT ask the VM to stop; a real-time signal kicks
//! vCPU threads out of KVM_RUN.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicI32, AtomicU32, Ordering};
use std::sync::Mutex;

use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, SIGRTMIN};

/// The termination handler's own duplicate of the stop eventfd; -1 until
/// installed. It is never closed: a signal that arrives after the VM (and
/// its eventfd) is gone then wakes an orphaned eventfd instead of writing
/// into whatever file reused the VM's descriptor number.
static TERMINATE_FD: AtomicI32 = AtomicI32::new(-1);
/// Serialises installs, which swap the file behind TERMINATE_FD.
static INSTALL: Mutex<()> = Mutex::new(());
/// The last termination signal received.
static TERMINATE_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// How many termination signals arrived: the first asks for a graceful
/// stop, a second one insists.
static TERMINATE_COUNT: AtomicU32 = AtomicU32::new(0);

/// The signal used to interrupt a vCPU blocked in KVM_RUN.
pub fn vcpu_kick_signal() -> i32 {
    SIGRTMIN()
}

extern "C" fn on_terminate(signum: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    TERMINATE_SIGNAL.store(signum, Ordering::SeqCst);
    TERMINATE_COUNT.fetch_add(1, Ordering::SeqCst);
    let fd = TERMINATE_FD.load(Ordering::SeqCst);
    if fd >= 0 {
        let one: u64 = 1;
        // write(2) is async-signal-safe; `one` lives for the call
        // and is 8 bytes as an eventfd requires. A failed write only means
        // the counter is already non-zero, which wakes the loop anyway.
        // SAFETY: sound for the reasons just given.
        unsafe {
            libc::write(fd, std::ptr::from_ref(&one).cast(), 8);
        }
    }
}

extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // Nothing to do: delivery alone makes KVM_RUN return EINTR.
}

/// Points the handler at a duplicate of `terminate` that lives as long as
/// the process. A later install (another VM in this process) swaps the
/// file behind the same number with dup3, which is atomic: the number never
/// names anything but an eventfd.
fn set_terminate_fd(terminate: &EventFd) -> Result<(), vmm_sys_util::errno::Error> {
    let _guard = INSTALL.lock().unwrap_or_else(|p| p.into_inner());
    let current = TERMINATE_FD.load(Ordering::SeqCst);
    let fd = if current >= 0 {
        // dup3 only duplicates `terminate` onto the number this module
        // owns; no memory is involved.
        // SAFETY: sound for the reasons just given.
        unsafe { libc::dup3(terminate.as_raw_fd(), current, libc::O_CLOEXEC) }
    } else {
        // F_DUPFD_CLOEXEC creates a new descriptor; no memory is involved.
        // SAFETY: sound for the reasons just given.
        unsafe { libc::fcntl(terminate.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) }
    };
    if fd < 0 {
        return Err(vmm_sys_util::errno::Error::last());
    }
    TERMINATE_FD.store(fd, Ordering::SeqCst);
    Ok(())
}

/// Installs the handlers; termination signals wake `terminate`.
pub fn install(terminate: &EventFd) -> Result<(), vmm_sys_util::errno::Error> {
    set_terminate_fd(terminate)?;
    register_signal_handler(libc::SIGTERM, on_terminate)?;
    register_signal_handler(libc::SIGINT, on_terminate)?;
    register_signal_handler(vcpu_kick_signal(), on_kick)?;
    // A jailed herd (pid 1 of its PID namespace, which drops signals it has
    // no handler for) blocks these until now; one that came early is
    // delivered here.
    let mut set = std::mem::MaybeUninit::<libc::sigset_t>::uninit();
    // sigemptyset initialises the local set before sigaddset and
    // pthread_sigmask read it; the mask change affects only this thread
    // (and the threads it starts later).
    // SAFETY: sound for the reasons just given.
    let rc = unsafe {
        libc::sigemptyset(set.as_mut_ptr());
        libc::sigaddset(set.as_mut_ptr(), libc::SIGTERM);
        libc::sigaddset(set.as_mut_ptr(), libc::SIGINT);
        libc::pthread_sigmask(libc::SIG_UNBLOCK, set.as_ptr(), std::ptr::null_mut())
    };
    match rc {
        0 => Ok(()),
        errno => Err(vmm_sys_util::errno::Error::new(errno)),
    }
}

/// The last termination signal received and how many arrived so far.
pub fn terminations() -> (u32, i32) {
    (
        TERMINATE_COUNT.load(Ordering::SeqCst),
        TERMINATE_SIGNAL.load(Ordering::SeqCst),
    )
}
