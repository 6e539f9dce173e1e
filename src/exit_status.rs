//! herd's exit statuses, shared by the code and `herd run --help`.

/// The guest powered off or reset, or herd was asked to stop (SIGTERM/SIGINT).
pub const EXIT_OK: u8 = 0;
/// Bad command line, config, kernel, initrd or size (also clap's usage errors).
pub const EXIT_BAD_INPUT: u8 = 2;
/// KVM or the host failed (no /dev/kvm, an ioctl error, a failed VM entry).
pub const EXIT_HOST_FAILURE: u8 = 3;
/// The guest crashed: triple fault, KVM internal error, kernel panic.
pub const EXIT_GUEST_CRASH: u8 = 4;
/// A herd thread made a system call its seccomp filter forbids (128 + SIGSYS);
/// the SIGSYS handler in vmm::seccomp exits with it.
pub const EXIT_BAD_SYSCALL: u8 = vmm::seccomp::EXIT_BAD_SYSCALL;

pub const EXIT_STATUS_HELP: &str = "\
Exit status:
  0    the guest powered off or reset, or herd was stopped by SIGTERM/SIGINT
  N    the guest wrote byte N to the exit device (I/O port 0x501)
  2    bad input: command line, kernel, initrd, memory or CPU count
  3    host failure: KVM unavailable or failing
  4    guest crash: triple fault, KVM internal error, kernel panic
  137  the kernel killed the jailed appliance: out of its cgroup's memory
       (128 + N: another signal N killed it)
  159  seccomp: a herd thread made a system call its filter forbids; stderr
       names the call and the thread (filters are on unless --no-seccomp)
Guests that report through the exit device should avoid 2-4 if callers must
tell their codes from herd's own.";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn help_lists_the_seccomp_status() {
        assert!(EXIT_STATUS_HELP.contains(&format!("\n  {EXIT_BAD_SYSCALL}  seccomp:")));
    }
}
