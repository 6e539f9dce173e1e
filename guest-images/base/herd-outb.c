/*
 * herd-outb PORT VALUE -- write one byte to an x86 I/O port.
 *
 * The herd guest kernel has no PCI, and CONFIG_DEVPORT (/dev/port) depends
 * on ISA || PCI, so the base image pokes herd's devices (boot timer 0x440,
 * exit device 0x501, i8042 reset 0x64) with ioperm(2) + outb instead.
 * PORT and VALUE are decimal or 0x-prefixed hex; PORT < 0x10000, VALUE < 256.
 *
 * Freestanding (no libc) so the static binary is a few KiB:
 *   gcc -Os -static -nostdlib -ffreestanding -fno-stack-protector \
 *       -fno-asynchronous-unwind-tables -Wl,--build-id=none -s \
 *       -o herd-outb herd-outb.c
 */

#define SYS_write 1
#define SYS_exit 60
#define SYS_ioperm 173

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile("syscall"
			 : "=a"(r)
			 : "a"(n), "D"(a), "S"(b), "d"(c)
			 : "rcx", "r11", "memory");
	return r;
}

static unsigned long slen(const char *s)
{
	unsigned long n = 0;
	while (s[n])
		n++;
	return n;
}

static void die(const char *msg)
{
	sys3(SYS_write, 2, (long)"herd-outb: ", 11);
	sys3(SYS_write, 2, (long)msg, (long)slen(msg));
	sys3(SYS_write, 2, (long)"\n", 1);
	sys3(SYS_exit, 1, 0, 0);
	for (;;)
		;
}

/* Parse decimal or 0x-hex; returns -1 on error. */
static long parse(const char *s)
{
	long v = 0;
	int base = 10;

	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X')) {
		base = 16;
		s += 2;
	}
	if (!*s)
		return -1;
	for (; *s; s++) {
		int d;
		if (*s >= '0' && *s <= '9')
			d = *s - '0';
		else if (base == 16 && *s >= 'a' && *s <= 'f')
			d = *s - 'a' + 10;
		else if (base == 16 && *s >= 'A' && *s <= 'F')
			d = *s - 'A' + 10;
		else
			return -1;
		v = v * base + d;
		if (v > 0xffff)
			return -1;
	}
	return v;
}

__attribute__((used)) static void cmain(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	long port, val;

	if (argc != 3)
		die("usage: herd-outb PORT VALUE");
	port = parse(argv[1]);
	val = parse(argv[2]);
	if (port < 0)
		die("bad PORT (want 0..0xffff)");
	if (val < 0 || val > 0xff)
		die("bad VALUE (want 0..255)");
	if (sys3(SYS_ioperm, port, 1, 1) != 0)
		die("ioperm failed (needs root/CAP_SYS_RAWIO and CONFIG_X86_IOPL_IOPERM)");
	__asm__ volatile("outb %b0, %w1" : : "a"(val), "Nd"(port));
	sys3(SYS_exit, 0, 0, 0);
	for (;;)
		;
}

__asm__(".text\n"
	".global _start\n"
	"_start:\n"
	"	xor %rbp, %rbp\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call cmain\n"
	"	hlt\n");
