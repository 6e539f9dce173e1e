/*
 * kvm-hold -- keep one idle KVM VM (with an in-kernel irqchip and one vCPU
 * that never runs) open for the test host's whole life.
 *
 * Why: Linux 6.1's KVM flips static keys when the first VM of the host is
 * created and when the last one goes away (preempt notifiers, whose branch
 * sits in __schedule) and when a vCPU's local APIC is created and enabled
 * (apic_sw_disabled). Each flip live-patches kernel text through INT3
 * (text_poke_bp). Under QEMU TCG the test host's vCPUs sometimes keep
 * executing the stale translated INT3 after the patch is complete: kprobes'
 * INT3 handler sees the new instruction in memory, backs up and retries,
 * forever, in __schedule with interrupts off -- the test host hangs
 * (measured: guest-images/testhost/README.md). With this VM open those
 * keys never return to zero, so herd's VMs starting and stopping patch no
 * kernel text.
 *
 * The one flip that remains, when this VM is created, must not race either:
 * the test host boots with one CPU online (maxcpus=1), /init runs kvm-hold,
 * which returns once its VM exists (a child keeps it, its pid in PID_FILE),
 * and only then brings the other CPUs online.
 *
 * Freestanding (no libc), built by build.sh like the base image's herd-outb.
 */

#define SYS_write 1
#define SYS_open 2
#define SYS_ioctl 16
#define SYS_pause 34
#define SYS_fork 57
#define SYS_exit 60

#define KVM_CREATE_VM 0xAE01
#define KVM_CREATE_VCPU 0xAE41
#define KVM_CREATE_IRQCHIP 0xAE60

#define PID_FILE "/run/testhost-keep.pid"

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}

static void die(const char *msg, unsigned long len)
{
	sys3(SYS_write, 2, (long)"kvm-hold: ", 10);
	sys3(SYS_write, 2, (long)msg, (long)len);
	sys3(SYS_exit, 1, 0, 0);
	for (;;)
		;
}

#define DIE(s) die(s "\n", sizeof(s))

void _start(void)
{
	long kvm = sys3(SYS_open, (long)"/dev/kvm", 2 /* O_RDWR */, 0);
	if (kvm < 0)
		DIE("cannot open /dev/kvm");
	long vm = sys3(SYS_ioctl, kvm, KVM_CREATE_VM, 0);
	if (vm < 0)
		DIE("KVM_CREATE_VM failed");
	if (sys3(SYS_ioctl, vm, KVM_CREATE_IRQCHIP, 0) < 0)
		DIE("KVM_CREATE_IRQCHIP failed");
	if (sys3(SYS_ioctl, vm, KVM_CREATE_VCPU, 0) < 0)
		DIE("KVM_CREATE_VCPU failed");
	long pid = sys3(SYS_fork, 0, 0, 0);
	if (pid < 0)
		DIE("fork failed");
	if (pid == 0)
		for (;;)
			sys3(SYS_pause, 0, 0, 0);
	/* The parent records the child's pid (so the leftover sweep of
	 * `herd emulated-host` spares it) and returns. */
	char text[24];
	int n = sizeof(text);
	text[--n] = '\n';
	do {
		text[--n] = (char)('0' + pid % 10);
		pid /= 10;
	} while (pid && n > 0);
	long fd = sys3(SYS_open, (long)PID_FILE, 01 | 0100 | 01000 /* O_WRONLY|O_CREAT|O_TRUNC */, 0644);
	if (fd < 0 || sys3(SYS_write, fd, (long)(text + n), (long)(sizeof(text) - n)) < 0)
		DIE("cannot write " PID_FILE);
	sys3(SYS_exit, 0, 0, 0);
	for (;;)
		;
}
