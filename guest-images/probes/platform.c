/*
 * probe.action=acpi-poweroff|acpi-reset|acpi-garbage|cmos: what an ACPI
 * guest finds and does. The ACPI actions find the RSDP the way Linux does
 * on a BIOS machine (16-byte steps through 0xe0000..1 MiB), check every
 * checksum on the way to the FADT and MADT, print
 *     probe: acpi cpus=<local APICs in the MADT> sleep=<port> reset=<port>
 * and then write the sleep or reset register as Linux would. cmos prints
 *     probe: cmos time=<seconds since 1970, from the RTC's BCD registers>
 * See README.md.
 */
#include "probe.h"

#define RSDP_SCAN_START 0xe0000ULL
#define RSDP_SCAN_END   0x100000ULL
#define FADT_HW_REDUCED (1U << 20)
#define FADT_RESET_REG_SUP (1U << 10)
#define S5_SLP_TYP 5
#define SLP_EN 0x20
#define GAS_SYSTEM_IO 1

static u8 sum(const u8 *p, u32 n)
{
	u8 s = 0;
	for (u32 i = 0; i < n; i++)
		s += p[i];
	return s;
}

static u32 rd32(const u8 *p) { return p[0] | p[1] << 8 | p[2] << 16 | (u32)p[3] << 24; }
static u64 rd64(const u8 *p) { return rd32(p) | (u64)rd32(p + 4) << 32; }

static void __attribute__((noreturn)) fail(const char *what)
{
	puts("probe: FAIL acpi ");
	puts(what);
	puts("\n");
	exit_vm(1);
}

/* A table header at `addr` with `sig` and a good checksum, or FAIL. Tables
 * must lie in the first GiB, which the probe has mapped. */
static const u8 *table(u64 addr, const char *sig)
{
	if (addr == 0 || addr >= (1ULL << 30))
		fail("table address outside the first GiB");
	const u8 *t = (const u8 *)addr;
	for (int i = 0; i < 4; i++)
		if (t[i] != (u8)sig[i])
			fail(sig);
	u32 len = rd32(t + 4);
	if (len < 36 || len > 0x10000 || sum(t, len) != 0)
		fail("bad table length or checksum");
	return t;
}

struct acpi {
	u16 sleep_port;
	u16 reset_port;
	u8 reset_value;
	int cpus;
};

static void find_acpi(struct acpi *a)
{
	const u8 *rsdp = 0;
	for (u64 p = RSDP_SCAN_START; p < RSDP_SCAN_END; p += 16) {
		const u8 *c = (const u8 *)p;
		if (c[0] == 'R' && c[1] == 'S' && c[2] == 'D' && c[3] == ' ' && c[4] == 'P' &&
		    c[5] == 'T' && c[6] == 'R' && c[7] == ' ' && sum(c, 20) == 0) {
			rsdp = c;
			break;
		}
	}
	if (!rsdp)
		fail("no RSDP in 0xe0000..0x100000");
	if (rsdp[15] < 2 || sum(rsdp, 36) != 0)
		fail("RSDP is not a valid revision-2 RSDP");
	const u8 *xsdt = table(rd64(rsdp + 24), "XSDT");
	const u8 *fadt = 0, *madt = 0;
	for (u32 off = 36; off + 8 <= rd32(xsdt + 4); off += 8) {
		const u8 *t = (const u8 *)rd64(xsdt + off);
		if (t[0] == 'F')
			fadt = table((u64)t, "FACP");
		else if (t[0] == 'A')
			madt = table((u64)t, "APIC");
	}
	if (!fadt || !madt)
		fail("XSDT lacks the FADT or the MADT");
	if (rd32(fadt + 4) < 268)
		fail("FADT too short for the sleep registers");
	u32 flags = rd32(fadt + 112);
	if (!(flags & FADT_HW_REDUCED) || !(flags & FADT_RESET_REG_SUP))
		fail("FADT is not hardware-reduced with a reset register");
	table(rd64(fadt + 140), "DSDT");
	/* GAS: space, width, offset, access size, 64-bit address. */
	if (fadt[116] != GAS_SYSTEM_IO || fadt[244] != GAS_SYSTEM_IO)
		fail("reset or sleep register is not in I/O space");
	a->reset_port = (u16)rd64(fadt + 120);
	a->reset_value = fadt[128];
	a->sleep_port = (u16)rd64(fadt + 248);
	a->cpus = 0;
	for (u32 off = 44; off + 2 <= rd32(madt + 4) && madt[off + 1] >= 2; off += madt[off + 1])
		if (madt[off] == 0 && (rd32(madt + off + 4) & 1))
			a->cpus++;
	puts("probe: acpi cpus=");
	put_u64((u64)a->cpus);
	puts(" sleep=");
	put_hex(a->sleep_port);
	puts(" reset=");
	put_hex(a->reset_port);
	puts("\n");
}

/* Every value Linux would not write, to both registers, then wide writes
 * carrying the right bytes; herd must ignore all of it. */
static void __attribute__((noreturn)) acpi_garbage(const struct acpi *a)
{
	u8 s5 = S5_SLP_TYP << 2 | SLP_EN;
	for (int v = 0; v < 256; v++) {
		if (v != s5)
			outb(a->sleep_port, (u8)v);
		if (v != a->reset_value)
			outb(a->reset_port, (u8)v);
	}
	__asm__ volatile("outw %0, %1" : : "a"((u16)s5), "Nd"(a->sleep_port));
	__asm__ volatile("outl %0, %1" : : "a"((u32)a->reset_value), "Nd"(a->reset_port));
	puts("probe: acpi garbage ignored\n");
	exit_vm(0);
}

static u32 bcd(u8 v) { return (v >> 4) * 10 + (v & 15); }

static u8 cmos(u8 index)
{
	outb(0x70, index);
	return inb(0x71);
}

static u64 days_from_civil(u64 y, u32 m, u32 d)
{
	y -= m <= 2;
	u64 era = y / 400;
	u64 yoe = y - era * 400;
	u64 doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	u64 doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

static void __attribute__((noreturn)) action_cmos(void)
{
	if (cmos(0x0a) & 0x80)
		puts("probe: WARN cmos update in progress\n");
	if (cmos(0x0b) & 0x04)
		fail("cmos is in binary mode; the probe reads BCD");
	u64 year = bcd(cmos(0x32)) * 100 + bcd(cmos(0x09));
	u64 days = days_from_civil(year, bcd(cmos(0x08)), bcd(cmos(0x07)));
	u64 t = days * 86400 + bcd(cmos(0x04)) * 3600 + bcd(cmos(0x02)) * 60 + bcd(cmos(0x00));
	puts("probe: cmos time=");
	put_u64(t);
	puts("\n");
	exit_vm(0);
}

void platform_action(const char *a)
{
	struct acpi acpi;
	if (word_is(a, "cmos"))
		action_cmos();
	if (!word_is(a, "acpi-poweroff") && !word_is(a, "acpi-reset") && !word_is(a, "acpi-garbage"))
		return;
	find_acpi(&acpi);
	if (word_is(a, "acpi-garbage"))
		acpi_garbage(&acpi);
	if (word_is(a, "acpi-poweroff")) {
		outb(acpi.sleep_port, 0x80);  /* clear WAK_STS first, as Linux does */
		outb(acpi.sleep_port, S5_SLP_TYP << 2 | SLP_EN);
	} else {
		outb(acpi.reset_port, acpi.reset_value);
	}
	fail("the VM is still running after the sleep/reset register write");
}
