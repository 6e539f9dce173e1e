//! The allow-lists, one per thread kind, as Rust data: checked by the
//! compiler (syscall numbers from libc, ioctl numbers computed the way the
//! kernel does) and compiled to BPF by seccompiler in microseconds at VM
//! build time. Everything not listed raises SIGSYS.
//!
//! What runs where: the vmm thread runs the event loop (virtio queues,
//! disk and TAP I/O, console output, signals, vCPU kicks, teardown); vCPU
//! threads run KVM_RUN and the exits dispatched onto the buses, which
//! includes virtio-mmio register writes (device activation, which sets TAP
//! offloads) and writes to irqfds; the api thread serves the control
//! socket.

use std::collections::BTreeMap;

use kvm_bindings::{kvm_regs, kvm_sregs};
use seccompiler::{
    BackendError, BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition,
    SeccompFilter, SeccompRule, TargetArch,
};

use super::{SeccompError, ThreadKind, UidDrop};

const KVMIO: u32 = 0xAE;
const TUNTAP: u32 = b'T' as u32;
vmm_sys_util::ioctl_io_nr!(KVM_RUN, KVMIO, 0x80);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_REGS, KVMIO, 0x81, kvm_regs);
vmm_sys_util::ioctl_ior_nr!(KVM_GET_SREGS, KVMIO, 0x83, kvm_sregs);
vmm_sys_util::ioctl_iow_nr!(TUNSETOFFLOAD, TUNTAP, 208, libc::c_uint);

/// What every thread needs: memory management (never executable), locks,
/// signals, time, logging to stderr, leaving.
const COMMON: &[libc::c_long] = &[
    libc::SYS_brk,
    libc::SYS_clock_gettime,
    libc::SYS_clock_nanosleep,
    libc::SYS_close,
    libc::SYS_exit,
    libc::SYS_exit_group,
    libc::SYS_futex,
    // std seeds each thread's HashMap keys from getrandom.
    libc::SYS_getrandom,
    libc::SYS_getpid,
    libc::SYS_gettid,
    libc::SYS_madvise,
    libc::SYS_mremap,
    libc::SYS_munmap,
    libc::SYS_nanosleep,
    libc::SYS_restart_syscall,
    libc::SYS_rt_sigprocmask,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_yield,
    libc::SYS_sigaltstack,
    libc::SYS_write,
];

const VMM: &[libc::c_long] = &[
    // Unix-socket device backends (vsock): accept and connect; socket(2)
    // itself is limited to AF_UNIX below.
    libc::SYS_accept4,
    libc::SYS_connect,
    libc::SYS_getsockopt,
    libc::SYS_shutdown,
    // vsock: the muxer's timer (handshake timeouts, retries).
    libc::SYS_timerfd_gettime,
    libc::SYS_timerfd_settime,
    // Console socket clients and vsock peers.
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    libc::SYS_fdatasync,
    libc::SYS_fsync,
    // The console log, rotated by descriptor (see VCPU).
    libc::SYS_ftruncate,
    // A stopped named appliance removes its pid file and sockets: the
    // one path operation after the filters, deleting only (no open, no
    // rename); in a jail it reaches only the jail's writable binds.
    libc::SYS_unlink,
    libc::SYS_unlinkat,
    libc::SYS_lseek,
    libc::SYS_pread64,
    libc::SYS_preadv,
    libc::SYS_pwrite64,
    libc::SYS_pwritev,
    libc::SYS_read,
    libc::SYS_readv,
    libc::SYS_tgkill,
    libc::SYS_writev,
];

const VCPU: &[libc::c_long] = &[
    libc::SYS_read,
    // Console output to an attached `herd console` client.
    libc::SYS_sendto,
    // Rotating the console log: copied to its `.1` file by descriptor.
    libc::SYS_ftruncate,
    libc::SYS_pread64,
    libc::SYS_pwrite64,
];

/// Starting a thread: the API starts one per connection, the event loop
/// (and the API) a stop timer when the guest is asked to power off.
const THREADS: &[libc::c_long] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_rseq,
    // std's thread spawn sizes its stack from the CPU affinity.
    libc::SYS_sched_getaffinity,
    libc::SYS_set_robust_list,
];

const API: &[libc::c_long] = &[
    libc::SYS_accept4,
    libc::SYS_getsockopt,
    libc::SYS_epoll_ctl,
    libc::SYS_epoll_pwait,
    libc::SYS_epoll_wait,
    // Metrics re-read /proc/self/smaps, opened before the filter.
    libc::SYS_pread64,
    libc::SYS_read,
    libc::SYS_recvfrom,
    libc::SYS_recvmsg,
    libc::SYS_sendmsg,
    libc::SYS_sendto,
    libc::SYS_shutdown,
    // Pausing kicks the vCPU threads out of KVM_RUN.
    libc::SYS_tgkill,
];

/// The ioctl requests each kind may make, on any fd.
fn ioctls(kind: ThreadKind) -> Vec<u64> {
    match kind {
        // Restoring the terminal after a stdio console; TAP offloads are
        // reset when a device is reset from the event loop.
        // FIONBIO: std's set_nonblocking on accepted sockets.
        ThreadKind::Vmm => vec![libc::TCSETS, libc::TCGETS, TUNSETOFFLOAD(), libc::FIONBIO],
        // KVM_GET_REGS/SREGS describe an internal error or a triple fault;
        // activation sets offloads. TCGETS (every kind): the logger asks
        // whether stderr is a terminal (colours) the first time a thread logs.
        ThreadKind::Vcpu => vec![
            KVM_RUN(),
            KVM_GET_REGS(),
            KVM_GET_SREGS(),
            TUNSETOFFLOAD(),
            libc::TCGETS,
        ],
        ThreadKind::Api => vec![libc::FIONBIO, libc::TCGETS],
    }
}

fn plain(kind: ThreadKind) -> &'static [libc::c_long] {
    match kind {
        ThreadKind::Vmm => VMM,
        ThreadKind::Vcpu => VCPU,
        ThreadKind::Api => API,
    }
}

fn arg_is(index: u8, value: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// A rule matching calls whose argument `index` has none of `bits` set.
fn arg_lacks(index: u8, bits: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(bits),
        0,
    )?])
}

/// A rule matching calls whose first three arguments are all `value`.
fn args_are(value: u32) -> Result<SeccompRule, BackendError> {
    let conditions = (0..3)
        .map(|index| {
            SeccompCondition::new(
                index,
                SeccompCmpArgLen::Dword,
                SeccompCmpOp::Eq,
                u64::from(value),
            )
        })
        .collect::<Result<_, _>>()?;
    SeccompRule::new(conditions)
}

/// The calls glibc's setxid broadcast makes on each thread when the
/// process drops to `to`, and nothing else: no supplementary groups, then
/// the gid, then the uid.
fn uid_drop_rules(to: UidDrop) -> Result<[(i64, Vec<SeccompRule>); 3], BackendError> {
    Ok([
        (libc::SYS_setgroups, vec![arg_is(0, 0)?]),
        (libc::SYS_setresgid, vec![args_are(to.gid)?]),
        (libc::SYS_setresuid, vec![args_are(to.uid)?]),
    ])
}

fn rules(
    kind: ThreadKind,
    uid_drop: Option<UidDrop>,
) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let threads = if kind == ThreadKind::Vcpu {
        &[][..]
    } else {
        THREADS
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = COMMON
        .iter()
        .chain(plain(kind))
        .chain(threads)
        .map(|&nr| (nr, Vec::new()))
        .collect();
    // Memory may be mapped and protected but never made executable.
    let no_exec = u64::try_from(libc::PROT_EXEC).unwrap_or(u64::MAX);
    rules.insert(libc::SYS_mmap, vec![arg_lacks(2, no_exec)?]);
    rules.insert(libc::SYS_mprotect, vec![arg_lacks(2, no_exec)?]);
    // std checks an fd is open (F_GETFD) when it takes ownership of it;
    // accepted connections are made non-blocking and cloned.
    let mut fcntl = vec![libc::F_GETFD];
    if kind != ThreadKind::Vcpu {
        // F_DUPFD_CLOEXEC: try_clone, a reader beside the writer (console
        // socket clients).
        fcntl.extend([libc::F_GETFL, libc::F_SETFL, libc::F_DUPFD_CLOEXEC]);
    }
    let fcntl = fcntl
        .into_iter()
        .map(|cmd| arg_is(1, u64::try_from(cmd).unwrap_or(u64::MAX)))
        .collect::<Result<_, _>>()?;
    rules.insert(libc::SYS_fcntl, fcntl);
    if kind != ThreadKind::Vcpu {
        // Naming new threads, which read their name back for a
        // violation's message.
        let name_ops = [libc::PR_SET_NAME, libc::PR_GET_NAME]
            .into_iter()
            .map(|op| arg_is(0, u64::try_from(op).unwrap_or(u64::MAX)))
            .collect::<Result<_, _>>()?;
        rules.insert(libc::SYS_prctl, name_ops);
    }
    match kind {
        ThreadKind::Vmm => {
            let unix = u64::try_from(libc::AF_UNIX).unwrap_or(u64::MAX);
            rules.insert(libc::SYS_socket, vec![arg_is(0, unix)?]);
        }
        ThreadKind::Api => {
            // Read and write timeouts on each connection.
            let timeouts = [libc::SO_RCVTIMEO, libc::SO_SNDTIMEO]
                .into_iter()
                .map(|opt| arg_is(2, u64::try_from(opt).unwrap_or(u64::MAX)))
                .collect::<Result<_, _>>()?;
            rules.insert(libc::SYS_setsockopt, timeouts);
        }
        ThreadKind::Vcpu => {
            // Console output written at once, only where that cannot block
            // (console_out): flags (argument 5, after the split offset)
            // exactly RWF_NOWAIT.
            let nowait = u64::try_from(libc::RWF_NOWAIT).unwrap_or(u64::MAX);
            rules.insert(libc::SYS_pwritev2, vec![arg_is(5, nowait)?]);
        }
    }
    if let Some(to) = uid_drop {
        rules.extend(uid_drop_rules(to)?);
    }
    let requests = ioctls(kind);
    if !requests.is_empty() {
        let by_request = requests
            .into_iter()
            .map(|request| arg_is(1, request))
            .collect::<Result<_, _>>()?;
        rules.insert(libc::SYS_ioctl, by_request);
    }
    Ok(rules)
}

pub(super) fn compile(
    kind: ThreadKind,
    uid_drop: Option<UidDrop>,
) -> Result<BpfProgram, SeccompError> {
    let filter = rules(kind, uid_drop)
        .and_then(|rules| {
            SeccompFilter::new(
                rules,
                SeccompAction::Trap,
                SeccompAction::Allow,
                TargetArch::x86_64,
            )
        })
        .map_err(|source| SeccompError::Build { kind, source })?;
    filter
        .try_into()
        .map_err(|source| SeccompError::Compile { kind, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_kernel() {
        assert_eq!(KVM_RUN(), 0xae80);
        assert_eq!(KVM_GET_REGS(), 0x8090_ae81);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(KVM_GET_SREGS(), 0x8138_ae83);
        assert_eq!(TUNSETOFFLOAD(), 0x4004_54d0);
    }

    #[test]
    fn vcpu_may_not_open_files_or_sockets() {
        let vcpu = rules(ThreadKind::Vcpu, None).unwrap();
        for nr in [libc::SYS_openat, libc::SYS_socket, libc::SYS_execve] {
            assert!(
                !vcpu.contains_key(&nr),
                "{}",
                super::super::syscall_name(nr)
            );
        }
        assert!(vcpu.contains_key(&libc::SYS_ioctl));
        assert!(rules(ThreadKind::Api, None)
            .unwrap()
            .contains_key(&libc::SYS_ioctl));
    }

    #[test]
    fn only_a_jailed_vcpu_may_repeat_the_uid_drop() {
        let to = UidDrop { uid: 990, gid: 991 };
        let ids = [
            libc::SYS_setgroups,
            libc::SYS_setresgid,
            libc::SYS_setresuid,
        ];
        let jailed = rules(ThreadKind::Vcpu, Some(to)).unwrap();
        assert!(ids.iter().all(|nr| jailed[nr].len() == 1));
        for unjailed in [
            rules(ThreadKind::Vcpu, None).unwrap(),
            rules(ThreadKind::Vmm, None).unwrap(),
        ] {
            assert!(ids.iter().all(|nr| !unjailed.contains_key(nr)));
        }
        // The exact ids, not any: setresuid(0, 0, 0) stays forbidden.
        let compiled = compile(ThreadKind::Vcpu, Some(to)).unwrap();
        let loads_id = |id: u32| compiled.iter().any(|i| i.k == id);
        assert!(loads_id(990) && loads_id(991));
    }
}
