//! seccomp: one allow-list per kind of thread (event loop, vCPU, control
//! API), compiled with seccompiler when the VM is built and installed by
//! each thread before it touches guest-controlled state. A forbidden system
//! call raises SIGSYS; the handler names the call and the thread on stderr
//! and ends the process with [`EXIT_BAD_SYSCALL`].

mod filters;
mod syscall_names;
#[cfg(feature = "seccomp-test-trigger")]
mod test_trigger;

use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::Once;

use seccompiler::BpfProgram;

pub use syscall_names::syscall_name;

/// herd's exit status when a thread made a system call its filter forbids:
/// 128 + SIGSYS, what a shell reports for a process killed by SIGSYS, so
/// callers see the same status whichever way the process died.
pub const EXIT_BAD_SYSCALL: u8 = 159;

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("cannot build the {kind} seccomp filter: {source}")]
    Build {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("cannot compile the {kind} seccomp filter: {source}")]
    Compile {
        kind: ThreadKind,
        source: seccompiler::BackendError,
    },
    #[error("cannot install the SIGSYS handler: {0}")]
    Handler(vmm_sys_util::errno::Error),
    #[error("cannot install the {kind} seccomp filter: {source}")]
    Install {
        kind: ThreadKind,
        source: seccompiler::Error,
    },
}

/// The kinds of thread herd runs, each with its own allow-list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ThreadKind {
    /// The main thread: event loop and device emulation.
    Vmm,
    /// A vCPU thread: KVM_RUN and exits dispatched onto the buses.
    Vcpu,
    /// The control API server thread.
    Api,
}

impl ThreadKind {
    pub const ALL: [ThreadKind; 3] = [ThreadKind::Vmm, ThreadKind::Vcpu, ThreadKind::Api];

    fn name(self) -> &'static str {
        match self {
            ThreadKind::Vmm => "vmm",
            ThreadKind::Vcpu => "vcpu",
            ThreadKind::Api => "api",
        }
    }
}

impl std::fmt::Display for ThreadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The compiled filters, one per thread kind; cheap to share between
/// threads behind an `Arc`.
#[derive(Debug)]
pub struct SeccompFilters {
    vmm: BpfProgram,
    vcpu: BpfProgram,
    api: BpfProgram,
}

/// The identity a jailed herd drops to once the VM is built. glibc makes
/// every thread repeat a uid change (setxid broadcast), and the vCPU
/// threads are confined before it: their filter allows exactly this change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UidDrop {
    pub uid: u32,
    pub gid: u32,
}

impl SeccompFilters {
    /// Compiles every kind's allow-list for this host's architecture.
    pub fn compile(uid_drop: Option<UidDrop>) -> Result<Self, SeccompError> {
        cap_malloc_arenas();
        Ok(SeccompFilters {
            vmm: filters::compile(ThreadKind::Vmm, None)?,
            vcpu: filters::compile(ThreadKind::Vcpu, uid_drop)?,
            api: filters::compile(ThreadKind::Api, None)?,
        })
    }

    /// Confines the calling thread to `kind`'s allow-list for the rest of
    /// its life (threads it starts inherit the filter). Sets no_new_privs.
    /// Call it first thing on the thread, before it handles guest input.
    pub fn install(&self, kind: ThreadKind) -> Result<(), SeccompError> {
        install_sigsys_handler()?;
        remember_thread(kind);
        let program = match kind {
            ThreadKind::Vmm => &self.vmm,
            ThreadKind::Vcpu => &self.vcpu,
            ThreadKind::Api => &self.api,
        };
        seccompiler::apply_filter(program).map_err(|source| SeccompError::Install { kind, source })
    }
}

/// Adds the test-only trigger (a port whose write makes a forbidden system
/// call) to the port bus. Only builds with the `seccomp-test-trigger`
/// feature have it; that feature is enabled by herd's tests, never by a
/// plain or release build.
pub fn add_test_trigger(bus: devices::Bus) -> devices::Bus {
    #[cfg(feature = "seccomp-test-trigger")]
    let bus = test_trigger::attach(bus);
    bus
}

/// glibc's malloc, the first time a thread needs a new arena past its
/// test count, counts the CPUs by opening /sys/devices/system/cpu/online:
/// a filtered thread may not open files. With a cap on arenas it never
/// counts. Eight is plenty for herd's few threads.
fn cap_malloc_arenas() {
    #[cfg(target_env = "gnu")]
    // SAFETY: mallopt only sets a malloc tunable; no pointers.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 8);
    }
}

const THREAD_NAME_LEN: usize = 16;

thread_local! {
    /// The calling thread's kind and name, read by the SIGSYS handler
    /// (which must not allocate or lock).
    static THREAD: Cell<(ThreadKind, [u8; THREAD_NAME_LEN])> =
        const { Cell::new((ThreadKind::Vmm, [0; THREAD_NAME_LEN])) };
}

/// For a thread that runs under the filter it inherited from the thread
/// that started it (`kind`'s, if filters are on): lets a violation name it
/// and its filter correctly.
pub fn note_inherited(kind: ThreadKind) {
    remember_thread(kind);
}

fn remember_thread(kind: ThreadKind) {
    let mut name = [0u8; THREAD_NAME_LEN];
    // PR_GET_NAME writes at most 16 bytes (NUL included) into the
    // buffer, which is 16 bytes long.
    // SAFETY: sound for the reasons just given.
    unsafe { libc::prctl(libc::PR_GET_NAME, name.as_mut_ptr()) };
    THREAD.with(|t| t.set((kind, name)));
}

fn install_sigsys_handler() -> Result<(), SeccompError> {
    static ONCE: Once = Once::new();
    let mut result = Ok(());
    ONCE.call_once(|| {
        result = vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
            .map_err(SeccompError::Handler);
    });
    result
}

/// Offset of `si_syscall` in a SIGSYS siginfo_t, in i32s: after si_signo,
/// si_errno, si_code, padding and the 8-byte `_call_addr`.
const SI_OFF_SYSCALL: usize = 6;

/// A fixed buffer to format into without allocating.
struct StackLine {
    buf: [u8; 256],
    len: usize,
}

impl std::fmt::Write for StackLine {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        let room = self.buf.len() - self.len;
        let n = s.len().min(room);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        Ok(())
    }
}

/// The line the SIGSYS handler prints.
fn violation_line(line: &mut StackLine, nr: i64, kind: ThreadKind, thread: &[u8]) {
    let end = thread.iter().position(|&b| b == 0).unwrap_or(thread.len());
    let thread = std::str::from_utf8(&thread[..end]).unwrap_or("?");
    let _ = writeln!(
        line,
        "herd: error: seccomp: thread {thread} ({kind} filter) made the forbidden system call \
         {} ({nr}); stopping herd with exit status {EXIT_BAD_SYSCALL} (--no-seccomp turns the \
         filters off for debugging)",
        syscall_name(nr)
    );
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // the kernel passes a valid siginfo_t for SIGSYS raised by
    // seccomp (SA_SIGINFO), whose `si_syscall` lies at this offset.
    // SAFETY: sound for the reasons just given.
    let nr = unsafe { *info.cast::<i32>().add(SI_OFF_SYSCALL) };
    let (kind, name) = THREAD.with(Cell::get);
    let mut line = StackLine {
        buf: [0; 256],
        len: 0,
    };
    violation_line(&mut line, i64::from(nr), kind, &name);
    // write(2) and _exit(2) are async-signal-safe and allowed by
    // every filter; the buffer outlives the call.
    // SAFETY: sound for the reasons just given.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.buf.as_ptr().cast(), line.len);
        libc::_exit(i32::from(EXIT_BAD_SYSCALL));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violation_line_names_call_thread_and_status() {
        let mut line = StackLine {
            buf: [0; 256],
            len: 0,
        };
        let mut name = [0u8; THREAD_NAME_LEN];
        name[..10].copy_from_slice(b"herd-vcpu0");
        violation_line(&mut line, libc::SYS_socket, ThreadKind::Vcpu, &name);
        let text = std::str::from_utf8(&line.buf[..line.len]).unwrap();
        assert!(
            text.starts_with(
                "herd: error: seccomp: thread herd-vcpu0 (vcpu filter) made the forbidden \
                 system call socket (41); stopping herd with exit status 159"
            ),
            "{text}"
        );
        assert!(text.ends_with('\n'), "{text}");
    }

    #[test]
    fn every_kind_compiles() {
        SeccompFilters::compile(None).unwrap();
    }
}
