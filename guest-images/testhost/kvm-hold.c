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
 * Freestanding (no libc), built by build.sh like the base image's herd-outb.
 */

#define SYS_write 1
#define SYS_open 2
#define SYS_ioctl 16
#define SYS_pause 34
#define SYS_exit 60

#define KVM_CREATE_VM 0xAE01
#define KVM_CREATE_VCPU 0xAE41
#define KVM_CREATE_IRQCHIP 0xAE60

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
	for (;;)
		sys3(SYS_pause, 0, 0, 0);
}
