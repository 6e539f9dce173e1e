/*
 * Probe core shared by probe-linux64.elf and probe-pvh.elf.
 *
 * Entered in 64-bit long mode with at least the first 1 GiB identity mapped,
 * interrupts off.  It reports what herd handed the guest (memory map, MP
 * table, command line), checks that every RAM region is really backed, then
 * does what probe.action= on the command line asks.  See README.md for the
 * protocol.
 *
 * Guest kernel code runs ~100x slower under the nested kvm_pvm hypervisor
 * used in CI, so everything here is deliberately sparse: no loops over RAM,
 * page tables only where they are needed, one I/O exit per output byte.
 */
#include "probe.h"

#define COM1          0x3f8
#define COM1_LSR      (COM1 + 5)
#define LSR_THRE      0x20
#define PORT_BOOTTIME 0x440
#define BOOTTIME_MAGIC 123
#define PORT_EXIT     0x501
#define PORT_I8042    0x64
#define I8042_RESET   0xfe

#define UNCLAIMED_MMIO 0xd0f00000ULL  /* in the 3-4 GiB hole, past any virtio-mmio slot */
#define UNCLAIMED_PORT 0x2f0          /* no PC device lives at 0x2f0-0x2f7 */

#define E820_RAM  1
#define MAX_REGIONS 128
#define CMDLINE_MAX 4096

#define MIB (1ULL << 20)
#define GIB (1ULL << 30)
#define PAGE_2M (2 * MIB)

/* ------------------------------------------------------------------ */
/* Port I/O and the serial console                                    */

/* gcc may emit calls to these for struct copies / zeroing even when freestanding. */
void *memset(void *d, int c, unsigned long n)
{
	volatile u8 *p = d;  /* volatile: stop gcc turning this loop back into memset() */
	while (n--)
		*p++ = (u8)c;
	return d;
}

void *memcpy(void *d, const void *s, unsigned long n)
{
	volatile u8 *dp = d;
	const u8 *sp = s;
	while (n--)
		*dp++ = *sp++;
	return d;
}

static void putc_raw(char c)
{
	/* The contract says THR is always empty; bound the wait anyway so a
	 * broken LSR shows up as output rather than a silent hang. */
	for (int i = 0; i < 1000 && !(inb(COM1_LSR) & LSR_THRE); i++)
		cpu_relax();
	outb(COM1, (u8)c);
}

void puts(const char *s)
{
	for (; *s; s++) {
		if (*s == '\n')
			putc_raw('\r');  /* herd may put the host tty in raw mode */
		putc_raw(*s);
	}
}

void put_u64(u64 v)
{
	char buf[21];
	int i = 20;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	puts(&buf[i]);
}

void put_hex(u64 v)
{
	char buf[19];
	int i = 18;
	buf[i] = 0;
	do {
		buf[--i] = "0123456789abcdef"[v & 15];
		v >>= 4;
	} while (v);
	buf[--i] = 'x';
	buf[--i] = '0';
	puts(&buf[i]);
}

/* ------------------------------------------------------------------ */
/* Leaving the VM                                                     */

void __attribute__((noreturn)) spin(void)
{
	for (;;)
		cpu_relax();
}

static void __attribute__((noreturn)) reset(void)
{
	outb(PORT_I8042, I8042_RESET);
	/* Still here: the reset was ignored.  Say so and park. */
	puts("probe: FAIL i8042 reset did not stop the VM\n");
	spin();
}

void __attribute__((noreturn)) exit_vm(u8 code)
{
	outb(PORT_EXIT, code);
	/* The exit device should never return; the fallback keeps a broken
	 * herd from running the probe off the end of its code. */
	puts("probe: FAIL exit device did not stop the VM, trying reset\n");
	reset();
}

static void __attribute__((noreturn)) triple_fault(void)
{
	/* With an empty IDT, #UD cannot be delivered -> #GP -> #DF -> shutdown. */
	static const struct __attribute__((packed)) { u16 limit; u64 base; } idtr = { 0, 0 };
	__asm__ volatile("lidt %0\n\tud2" : : "m"(idtr));
	puts("probe: FAIL still running after ud2 with an empty IDT\n");
	exit_vm(1);
}

/* ------------------------------------------------------------------ */
/* What herd handed us                                                */

struct region { u64 addr, size; u32 type; };

static struct region regions[MAX_REGIONS];
static int nregions;
char cmdline[CMDLINE_MAX];

static void add_region(u64 addr, u64 size, u32 type)
{
	if (nregions < MAX_REGIONS)
		regions[nregions++] = (struct region){ addr, size, type };
}

static void copy_cmdline(u64 paddr)
{
	const char *src = (const char *)paddr;
	int i = 0;
	if (paddr)
		for (; i < CMDLINE_MAX - 1 && src[i]; i++)
			cmdline[i] = src[i];
	cmdline[i] = 0;
}

/* Reads are unaligned-safe copies: the e820 table is packed. */
static u64 rd64(u64 a) { u64 v; __builtin_memcpy(&v, (const void *)a, 8); return v; }
static u32 rd32(u64 a) { u32 v; __builtin_memcpy(&v, (const void *)a, 4); return v; }
static u16 rd16(u64 a) { u16 v; __builtin_memcpy(&v, (const void *)a, 2); return v; }

/* struct boot_params (Documentation/arch/x86/zero-page.rst) */
#define BP_EXT_CMD_LINE_PTR 0x0c8
#define BP_E820_ENTRIES     0x1e8
#define BP_CMD_LINE_PTR     0x228
#define BP_E820_TABLE       0x2d0
#define BP_E820_MAX         128

static int parse_boot_params(u64 bp)
{
	int n = *(const u8 *)(bp + BP_E820_ENTRIES);
	if (n > BP_E820_MAX)
		n = BP_E820_MAX;
	for (int i = 0; i < n; i++) {
		u64 e = bp + BP_E820_TABLE + 20 * (u64)i;
		add_region(rd64(e), rd64(e + 8), rd32(e + 16));
	}
	copy_cmdline(rd32(bp + BP_CMD_LINE_PTR) | (u64)rd32(bp + BP_EXT_CMD_LINE_PTR) << 32);
	return 0;
}

/* struct hvm_start_info (xen/include/public/arch-x86/hvm/start_info.h) */
#define HVM_MAGIC          0x336ec578
#define HVM_VERSION        4
#define HVM_CMDLINE_PADDR  24
#define HVM_MEMMAP_PADDR   40
#define HVM_MEMMAP_ENTRIES 48

static int parse_hvm_start_info(u64 si)
{
	if (rd32(si) != HVM_MAGIC) {
		puts("probe: FAIL hvm_start_info magic ");
		put_hex(rd32(si));
		puts("\n");
		return -1;
	}
	/* The memmap fields only exist from version 1 on. */
	if (rd32(si + HVM_VERSION) >= 1) {
		u64 map = rd64(si + HVM_MEMMAP_PADDR);
		u32 n = rd32(si + HVM_MEMMAP_ENTRIES);
		for (u32 i = 0; i < n && map; i++) {
			u64 e = map + 24 * (u64)i;
			add_region(rd64(e), rd64(e + 8), rd32(e + 16));
		}
	} else {
		puts("probe: WARN hvm_start_info version 0 has no memmap\n");
	}
	copy_cmdline(rd64(si + HVM_CMDLINE_PADDR));
	return 0;
}

static u8 checksum(u64 a, u32 len)
{
	u8 sum = 0;
	for (u32 i = 0; i < len; i++)
		sum += ((const u8 *)a)[i];
	return sum;
}

static u64 find_mp_floating(u64 from, u64 to)
{
	for (u64 a = from; a + 16 <= to; a += 16)
		if (rd32(a) == 0x5f504d5f)  /* "_MP_" */
			return a;
	return 0;
}

/* Count processor entries (type 0) in the Intel MP spec 1.4 config table.
 * Bad checksums are reported but counted anyway, so a test sees both. */
static int count_mp_cpus(void)
{
	u64 fp = find_mp_floating(0x9fc00, 0xa0000);
	if (!fp)  /* where firmware (e.g. SeaBIOS under QEMU) puts it */
		fp = find_mp_floating(0xf0000, 0x100000);
	if (!fp) {
		puts("probe: WARN no MP floating pointer\n");
		return 0;
	}
	if (checksum(fp, 16 * (u32)((const u8 *)fp)[8]))
		puts("probe: WARN MP floating pointer checksum\n");
	u64 cfg = rd32(fp + 4);
	if (!cfg || rd32(cfg) != 0x504d4350) {  /* "PCMP" */
		puts("probe: WARN no MP config table\n");
		return 0;
	}
	u16 len = rd16(cfg + 4);
	if (checksum(cfg, len))
		puts("probe: WARN MP config table checksum\n");
	u16 count = rd16(cfg + 34);
	u64 p = cfg + 44, end = cfg + len;
	int cpus = 0;
	for (u16 i = 0; i < count && p < end; i++) {
		if (*(const u8 *)p == 0) {
			cpus++;
			p += 20;
		} else {
			p += 8;
		}
	}
	return cpus;
}

/* ------------------------------------------------------------------ */
/* Page tables: identity map the low 4 GiB (RAM, hole, LAPIC) with 2 MiB
 * pages, plus only the 2 MiB pages above 4 GiB that the touch test uses.
 * 16 GiB of RAM needs 1 PML4 + 1 PDPT + 4 low PDs + 2 high PDs. */

#define PTE_P   0x001ULL
#define PTE_W   0x002ULL
#define PTE_PWT 0x008ULL
#define PTE_PCD 0x010ULL
#define PTE_PS  0x080ULL
#define PTE_ADDR 0x000ffffffffff000ULL
#define POOL_PAGES 32

static u64 pt_pool[POOL_PAGES][512] __attribute__((aligned(4096), section(".noinit")));
static int pt_used;

static u64 *table_alloc(void)
{
	if (pt_used >= POOL_PAGES)
		return 0;
	u64 *t = pt_pool[pt_used++];
	for (int i = 0; i < 512; i++)
		((volatile u64 *)t)[i] = 0;
	return t;
}

static u64 *table_next(u64 *t, unsigned idx)
{
	if (!(t[idx] & PTE_P)) {
		u64 *n = table_alloc();
		if (!n)
			return 0;
		t[idx] = (u64)n | PTE_P | PTE_W;
	}
	return (u64 *)(t[idx] & PTE_ADDR);
}

static int map_2m(u64 *pml4, u64 addr, u64 flags)
{
	addr &= ~(PAGE_2M - 1);
	u64 *pdpt = table_next(pml4, (addr >> 39) & 511);
	u64 *pd = pdpt ? table_next(pdpt, (addr >> 30) & 511) : 0;
	if (!pd)
		return -1;
	pd[(addr >> 21) & 511] = addr | PTE_P | PTE_W | PTE_PS | flags;
	return 0;
}

static u64 *pml4;

/* Runs before anything herd passed is read, so boot_params, the PVH start
 * info and the command line may sit anywhere below 4 GiB (the entry state
 * only promises the first 1 GiB). */
static int paging_init(void)
{
	pml4 = table_alloc();
	if (!pml4)
		return -1;
	for (u64 a = 0; a < 4 * GIB; a += PAGE_2M)
		/* Uncached over the MMIO hole, as a real kernel would map it. */
		if (map_2m(pml4, a, a >= 3 * GIB ? PTE_PCD | PTE_PWT : 0))
			return -1;
	__asm__ volatile("mov %0, %%cr3" : : "r"(pml4) : "memory");
	return 0;
}

int probe_map_mmio(void)
{
	return pml4 ? 0 : paging_init();
}

/* Adds the pages the touch test needs; only not-present entries change,
 * so no TLB flush is needed. */
static int map_ram_ends(void)
{
	for (int i = 0; i < nregions; i++) {
		struct region *r = &regions[i];
		if (r->type != E820_RAM || r->size < 8)
			continue;
		if (map_2m(pml4, r->addr, 0) || map_2m(pml4, r->addr + r->size - 8, 0))
			return -1;
	}
	return 0;
}

/* Write a per-address pattern, read it back, restore what was there (the
 * region starting at 1 MiB begins with this very image). */
static int touch(u64 addr)
{
	volatile u64 *p = (volatile u64 *)addr;
	u64 pattern = 0xa5c3f00d00000000ULL ^ addr;
	u64 saved = *p;
	*p = pattern;
	int ok = *p == pattern;
	*p = ~pattern;
	ok = ok && *p == ~pattern;
	*p = saved;
	return ok;
}

static int touch_ram(void)
{
	int ok = 1;
	for (int i = 0; i < nregions; i++) {
		struct region *r = &regions[i];
		if (r->type != E820_RAM || r->size < 8)
			continue;
		if (!touch(r->addr) || !touch(r->addr + r->size - 8)) {
			puts("probe: FAIL mem_touch region ");
			put_hex(r->addr);
			puts("+");
			put_hex(r->size);
			puts("\n");
			ok = 0;
		}
	}
	return ok;
}

/* ------------------------------------------------------------------ */
/* Command line                                                       */

/* Returns a pointer to the value of the last "key=value" token, or 0. */
const char *cmdline_get(const char *key)
{
	const char *found = 0;
	for (const char *p = cmdline; *p;) {
		while (*p == ' ')
			p++;
		const char *k = key, *t = p;
		while (*k && *t == *k)
			k++, t++;
		if (!*k && *t == '=')
			found = t + 1;
		while (*p && *p != ' ')
			p++;
	}
	return found;
}

/* Parses a decimal number ending at a space or NUL; -1 if malformed. */
long long parse_num(const char *s)
{
	long long v = 0;
	if (!s || *s < '0' || *s > '9')
		return -1;
	for (; *s >= '0' && *s <= '9'; s++)
		v = v * 10 + (*s - '0');
	return (*s == 0 || *s == ' ') ? v : -1;
}

int word_is(const char *s, const char *w)
{
	while (*w && *s == *w)
		s++, w++;
	return !*w && (*s == 0 || *s == ' ' || *s == ':');
}

static void expect(const char *key, const char *what, u64 got)
{
	const char *v = cmdline_get(key);
	if (!v)
		return;
	long long want = parse_num(v);
	if (want < 0 || (u64)want != got) {
		puts("probe: FAIL ");
		puts(what);
		puts(" expected ");
		if (want < 0)
			puts("(malformed)");
		else
			put_u64((u64)want);
		puts(" got ");
		put_u64(got);
		puts("\n");
		exit_vm(1);
	}
}

static void __attribute__((noreturn)) action_mmio(void)
{
	volatile u32 *m32 = (volatile u32 *)UNCLAIMED_MMIO;
	volatile u8 *m8 = (volatile u8 *)UNCLAIMED_MMIO;
	*m32 = 0x12345678;  /* must be dropped */
	u32 r32 = *m32;
	u8 r8 = m8[1];
	u8 p8 = inb(UNCLAIMED_PORT);
	u32 p32 = inl(UNCLAIMED_PORT);
	puts("probe: mmio unclaimed read=");
	put_hex(r32);
	puts(" read8=");
	put_hex(r8);
	puts(" port8=");
	put_hex(p8);
	puts(" port32=");
	put_hex(p32);
	puts("\n");
	if (r32 != 0xffffffff || r8 != 0xff || p8 != 0xff || p32 != 0xffffffff) {
		puts("probe: FAIL unclaimed reads are not all ones\n");
		exit_vm(1);
	}
	exit_vm(0);
}

static void __attribute__((noreturn)) action_print_lots(const char *arg)
{
	long long n = parse_num(arg);
	if (n < 0) {
		puts("probe: FAIL bad print-lots count\n");
		exit_vm(1);
	}
	for (long long i = 1; i <= n; i++) {
		puts("probe: line ");
		put_u64((u64)i);
		puts(" of ");
		put_u64((u64)n);
		puts(" the quick brown fox jumps over the lazy dog\n");
	}
	puts("probe: print-lots done\n");
	exit_vm(0);
}

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return ((u64)hi << 32) | lo;
}

/* Prints a numbered line every ~2^27 TSC ticks (tens of ms) forever, so
 * the host can see whether the guest makes progress (pause tests). */
static void __attribute__((noreturn)) action_tick(void)
{
	for (u64 n = 1;; n++) {
		puts("probe: tick ");
		put_u64(n);
		puts("\n");
		u64 until = rdtsc() + (1ULL << 27);
		while (rdtsc() < until)
			cpu_relax();
	}
}

/* Waits until bit 0 of `status_port` is set (data ready on COM1's line
 * status register or the i8042 status), then reads a byte from `data_port`.
 * Polls gently: each poll is a VM exit. */
static u8 poll_byte(u16 status_port, u16 data_port)
{
	while (!(inb(status_port) & 1))
		for (int i = 0; i < 100000; i++)
			cpu_relax();
	return inb(data_port);
}

/* Reads the serial port (polling the line status register) and prints
 * every line it receives as "probe: got <line>", forever (console tests). */
static void __attribute__((noreturn)) action_echo(void)
{
	char line[128];
	int n = 0;
	puts("probe: echo ready\n");
	for (;;) {
		char c = (char)poll_byte(COM1_LSR, COM1);
		if (c == '\r' || c == '\n') {
			line[n] = 0;
			puts("probe: got ");
			puts(line);
			puts("\n");
			n = 0;
		} else if (n < (int)sizeof(line) - 1) {
			line[n++] = c;
		}
	}
}

/* Enables the i8042 keyboard interrupt as a driver would (so herd sees a
 * listener), then polls for Ctrl-Alt-Del in scan-code set 2. "kbd" exits
 * 0 when it arrives; "kbd-ignore" reports it and keeps running. */
static void __attribute__((noreturn)) action_kbd(int ignore)
{
	static const u8 cad[4] = { 0x14, 0x11, 0xe0, 0x71 };
	int matched = 0;
	outb(PORT_I8042, 0x60);  /* write the control register... */
	outb(0x60, 0x05);        /* ...keyboard interrupt on, system flag */
	puts("probe: kbd listening\n");
	for (;;) {
		u8 b = poll_byte(PORT_I8042, 0x60);
		matched = b == cad[matched] ? matched + 1 : (b == cad[0]);
		if (matched < 4)
			continue;
		matched = 0;
		puts("probe: kbd ctrl-alt-del\n");
		if (!ignore)
			exit_vm(0);
	}
}

/* herd built with its test-only `seccomp-test-trigger` feature makes a
 * system call its vCPU filter forbids when this port is written; a herd
 * with filters on must die of it. */
#define PORT_SECCOMP_TRIGGER 0x502

static void __attribute__((noreturn)) action_seccomp_trigger(void)
{
	puts("probe: triggering a forbidden system call in herd\n");
	outb(PORT_SECCOMP_TRIGGER, 1);
	puts("probe: herd survived the forbidden system call\n");
	exit_vm(1);
}

static void __attribute__((noreturn)) run_action(void)
{
	if (parse_num(cmdline_get("probe.ready")) == 1)
		outb(PORT_BOOTTIME, 124);  /* herd's "appliance ready" */
	const char *a = cmdline_get("probe.action");
	if (!a)
		a = "exit:0";
	if (word_is(a, "exit")) {
		long long code = a[4] == ':' ? parse_num(a + 5) : 0;
		if (code < 0 || code > 255) {
			puts("probe: FAIL bad exit code\n");
			exit_vm(1);
		}
		exit_vm((u8)code);
	}
	if (word_is(a, "reset"))
		reset();
	if (word_is(a, "spin")) {
		puts("probe: spinning\n");
		spin();
	}
	if (word_is(a, "triple-fault"))
		triple_fault();
	if (word_is(a, "mmio"))
		action_mmio();
	if (word_is(a, "seccomp-trigger"))
		action_seccomp_trigger();
	if (word_is(a, "print-lots") && a[10] == ':')
		action_print_lots(a + 11);
	if (word_is(a, "tick"))
		action_tick();
	if (word_is(a, "echo"))
		action_echo();
	if (word_is(a, "kbd"))
		action_kbd(0);
	if (word_is(a, "kbd-ignore"))
		action_kbd(1);
	hostile_action(a);
	platform_action(a);  /* these three return only if `a` is none of theirs */
	virtio_action(a);
	puts("probe: FAIL unknown probe.action\n");
	exit_vm(1);
}

/* ------------------------------------------------------------------ */

void __attribute__((noreturn)) probe_main(int entry, u64 info)
{
	const char *name = entry == PROBE_ENTRY_PVH ? "pvh" : "linux64";
	/* The entry stub wrote PROBE_FIRST_BYTE, the 'p' of "probe". */
	puts("robe: hello from ");
	puts(name);
	puts("\n");
	outb(PORT_BOOTTIME, BOOTTIME_MAGIC);

	/* Everything herd passed is copied out before the touch test can
	 * disturb it (it restores what it writes, but be safe). It all lies
	 * in the first GiB, which both entry paths have mapped already. */
	int bad = entry == PROBE_ENTRY_PVH ? parse_hvm_start_info(info) : parse_boot_params(info);
	if (bad)
		exit_vm(1);

	/* probe.quick=1: act at once, for benchmarks that time herd rather
	 * than the probe's checks (emulated guest code is slow here). */
	if (parse_num(cmdline_get("probe.quick")) == 1)
		run_action();

	if (paging_init()) {
		puts("probe: FAIL page-table pool exhausted\n");
		exit_vm(1);
	}

	u64 ram = 0;
	for (int i = 0; i < nregions; i++)
		if (regions[i].type == E820_RAM)
			ram += regions[i].size;
	u64 ram_mib = (ram + MIB - 1) / MIB;
	int cpus = count_mp_cpus();

	int paging_ok = map_ram_ends() == 0;
	if (!paging_ok)
		puts("probe: FAIL page-table pool exhausted\n");
	int touch_ok = paging_ok && touch_ram();

	puts("probe: entry=");
	puts(name);
	puts(" ram_mib=");
	put_u64(ram_mib);
	puts(" cpus=");
	put_u64((u64)cpus);
	puts(" mem_touch=");
	puts(touch_ok ? "ok" : "fail");
	puts(" cmdline=\"");
	puts(cmdline);
	puts("\"\n");

	expect("probe.expect_mem", "mem", ram_mib);
	expect("probe.expect_cpus", "cpus", (u64)cpus);
	if (!paging_ok)
		exit_vm(1);
	run_action();
}
