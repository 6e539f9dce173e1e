/*
 * Hostile and misbehaving guests (issue 15): things a guest may do that
 * must neither crash, hang nor flood herd.  See README.md, "hostile
 * actions", for the lines printed.
 */
#include "virtio.h"

#define COM1          0x3f8
#define PORT_BOOTTIME 0x440
#define PORT_EXIT     0x501
#define VIRTIO_ID_RNG 4

#define MMIO_QUEUE_SEL   0x30
#define MMIO_QUEUE_NUM   0x38
#define MMIO_QUEUE_READY 0x44
#define MMIO_QUEUE_DESC  0x80
#define MMIO_QUEUE_AVAIL 0x90
#define MMIO_QUEUE_USED  0xa0

static void rep_outsb(u16 port, const void *p, unsigned long n)
{
	__asm__ volatile("rep outsb" : "+S"(p), "+c"(n) : "d"(port) : "memory");
}

/* String port I/O: the whole line in one `rep outsb`, then an exit code
 * the same way (three bytes: the first one written must win). */
static void __attribute__((noreturn)) action_outsb(void)
{
	static const char line[] = "probe: outsb hello from rep outsb\r\n";
	static const u8 codes[] = { 42, 43, 44 };
	rep_outsb(COM1, line, sizeof(line) - 1);
	rep_outsb(PORT_EXIT, codes, sizeof(codes));
	puts("probe: FAIL rep outsb to the exit device did not stop the VM\n");
	exit_vm(1);
}

/* String input: eight reads of the line status register in one `rep
 * insb` (KVM hands those to herd as one exit of eight bytes). */
static void __attribute__((noreturn)) action_insb(void)
{
	u8 lsr[8] = { 0 };
	void *p = lsr;
	unsigned long n = sizeof(lsr);
	__asm__ volatile("rep insb" : "+D"(p), "+c"(n) : "d"((u16)(COM1 + 5)) : "memory");
	puts("probe: insb lsr=");
	put_hex_bytes(lsr, sizeof(lsr));
	puts("\n");
	exit_vm(0);
}

/* Writes the boot-timer magic N times; herd must log it once. */
static void __attribute__((noreturn)) action_boot_timer_flood(const char *arg)
{
	long long n = parse_num(arg);
	for (long long i = 0; i < n; i++)
		outb(PORT_BOOTTIME, 123);
	puts("probe: boot-timer-flood done\n");
	exit_vm(0);
}

/* N rounds of: bring the virtio-rng device up with a misaligned, then
 * out-of-RAM descriptor table, so that every DRIVER_OK fails activation. */
static void __attribute__((noreturn)) action_bad_queue(const char *arg)
{
	long long n = parse_num(arg);
	struct vdev *d;
	vtag = "bad-queue";
	if (probe_map_mmio() || virtio_find(VIRTIO_ID_RNG, &d, 1) == 0) {
		vfail_nonum("no virtio-rng device");
		exit_vm(1);
	}
	u32 refused = 0;
	for (long long i = 0; i < n; i++) {
		if (virtio_init(d, 0))
			exit_vm(1);
		vwrite(d, MMIO_QUEUE_SEL, 0);
		vwrite(d, MMIO_QUEUE_NUM, 16);
		vwrite(d, MMIO_QUEUE_DESC, 0x100001);  /* misaligned: ignored */
		vwrite(d, MMIO_QUEUE_DESC + 4, 0);
		vwrite(d, MMIO_QUEUE_DESC, 0);          /* far outside RAM */
		vwrite(d, MMIO_QUEUE_DESC + 4, 0xfff0);
		vwrite(d, MMIO_QUEUE_AVAIL, 0x102000);
		vwrite(d, MMIO_QUEUE_AVAIL + 4, 0);
		vwrite(d, MMIO_QUEUE_USED, 0x103000);
		vwrite(d, MMIO_QUEUE_USED + 4, 0);
		vwrite(d, MMIO_QUEUE_READY, 1);
		vwrite(d, MMIO_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER |
		       VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
		if (vread(d, MMIO_STATUS) & VIRTIO_STATUS_NEEDS_RESET)
			refused++;
	}
	virtio_reset(d);
	puts("probe: bad-queue rounds=");
	put_u64((u64)n);
	puts(" refused=");
	put_u64(refused);
	puts("\n");
	exit_vm(0);
}

/* Interrupts off and a loop without a single VM exit: only a kick from
 * the host gets this vCPU out of the guest. */
static void __attribute__((noreturn)) action_spin_cli(void)
{
	puts("probe: spinning with interrupts off\n");
	__asm__ volatile("cli\n1: jmp 1b" ::: "memory");
	__builtin_unreachable();
}

/* Writes the serial port as fast as it can, forever, never looking at
 * the line status register. */
static void __attribute__((noreturn)) action_serial_flood(void)
{
	static const char line[] =
		"probe: flood the quick brown fox jumps over the lazy dog 0123456789\r\n";
	puts("probe: flooding\n");
	for (;;)
		rep_outsb(COM1, line, sizeof(line) - 1);
}

/* One write request to the first virtio-blk device, never waited for:
 * the host side may hang on it (tests put the image on a frozen
 * filesystem); the probe keeps printing, so the host can tell its vCPU
 * still runs. */
static struct {
	u32 type, reserved;
	u64 sector;
	u8 data[512];
	u8 status;
} hang_req __attribute__((aligned(512)));

static struct vq hang_q;

static void __attribute__((noreturn)) action_blk_hang(void)
{
	struct vdev *d;
	vtag = "blk-hang";
	if (probe_map_mmio() || virtio_find(VIRTIO_ID_BLOCK, &d, 1) == 0) {
		vfail_nonum("no virtio-blk device");
		exit_vm(1);
	}
	if (virtio_init(d, 0) || vq_setup(&hang_q, d, 0) || virtio_ready(d))
		exit_vm(1);
	hang_req.type = 1;  /* VIRTIO_BLK_T_OUT */
	hang_req.sector = 1;
	hang_req.status = 0xff;
	struct vbuf b[3] = {
		{ (u64)&hang_req, 16, 0 },
		{ (u64)hang_req.data, sizeof(hang_req.data), 0 },
		{ (u64)&hang_req.status, 1, 1 },
	};
	if (vq_add(&hang_q, b, 3) < 0)
		exit_vm(1);
	vq_kick(&hang_q);
	puts("probe: blk-hang write submitted\n");
	for (u64 n = 1;; n++) {
		u32 len;
		if (vq_wait(&hang_q, &len, 200) >= 0)
			puts("probe: blk-hang write answered\n");
		puts("probe: blk-hang alive ");
		put_u64(n);
		puts("\n");
	}
}

/* A NIC whose receive queue is live but never gets a buffer: everything
 * the host sends it has nowhere to go. */
static void __attribute__((noreturn)) action_net_deaf(void)
{
	static struct vq rxq, txq;
	struct vdev *d;
	vtag = "net-deaf";
	if (probe_map_mmio() || virtio_find(VIRTIO_ID_NET, &d, 1) == 0) {
		vfail_nonum("no virtio-net device");
		exit_vm(1);
	}
	if (virtio_init(d, 0) || vq_setup(&rxq, d, 0) || vq_setup(&txq, d, 1) || virtio_ready(d))
		exit_vm(1);
	puts("probe: net-deaf ready\n");
	spin();
}

/* N rounds of: a full ring of reads submitted to the first virtio-blk
 * device, and a device reset at once, without waiting for any answer;
 * then the device must still work: a read of sector 0 must match the
 * one made before the rounds. */
#define RESET_READS 5

static struct {
	struct { u32 type, reserved; u64 sector; } hdr[RESET_READS];
	u8 status[RESET_READS];
	u8 data[RESET_READS][4096] __attribute__((aligned(512)));
	u8 first[512];
} rst __attribute__((aligned(4096)));

static struct vq rst_q;

static int reset_read_all(struct vdev *d, int wait)
{
	if (virtio_init(d, 0) || vq_setup(&rst_q, d, 0) || virtio_ready(d))
		return -1;
	for (int i = 0; i < RESET_READS; i++) {
		rst.hdr[i].type = 0;  /* VIRTIO_BLK_T_IN */
		rst.hdr[i].sector = (u64)i * 8;
		rst.status[i] = 0xff;
		struct vbuf b[3] = {
			{ (u64)&rst.hdr[i], 16, 0 },
			{ (u64)rst.data[i], 4096, 1 },
			{ (u64)&rst.status[i], 1, 1 },
		};
		if (vq_add(&rst_q, b, 3) < 0)
			return -1;
	}
	vq_kick(&rst_q);
	for (int i = 0; wait && i < RESET_READS; i++) {
		u32 len;
		if (vq_wait(&rst_q, &len, 2000) < 0) {
			vfail("no answer to read", (u64)i);
			return -1;
		}
	}
	return 0;
}

static void __attribute__((noreturn)) action_blk_reset(const char *arg)
{
	long long n = parse_num(arg);
	struct vdev *d;
	vtag = "blk-reset";
	if (n < 0 || probe_map_mmio() || virtio_find(VIRTIO_ID_BLOCK, &d, 1) == 0) {
		vfail_nonum("no virtio-blk device or bad round count");
		exit_vm(1);
	}
	if (reset_read_all(d, 1))
		exit_vm(1);
	memcpy(rst.first, rst.data[0], sizeof(rst.first));
	for (long long i = 0; i < n; i++) {
		if (reset_read_all(d, 0))
			exit_vm(1);
		virtio_reset(d);  /* mid-I/O */
	}
	vzero(rst.data[0], sizeof(rst.data[0]));
	if (reset_read_all(d, 1))
		exit_vm(1);
	for (int i = 0; i < RESET_READS; i++)
		if (rst.status[i] != 0) {
			vfail("read after the resets failed, status", rst.status[i]);
			exit_vm(1);
		}
	if (!bytes_eq(rst.first, rst.data[0], sizeof(rst.first))) {
		vfail_nonum("sector 0 differs after the resets");
		exit_vm(1);
	}
	puts("probe: blk-reset rounds=");
	put_u64((u64)n);
	puts(" ok\n");
	exit_vm(0);
}

void hostile_action(const char *a)
{
	if (word_is(a, "outsb"))
		action_outsb();
	if (word_is(a, "insb"))
		action_insb();
	if (word_is(a, "boot-timer-flood") && a[16] == ':')
		action_boot_timer_flood(a + 17);
	if (word_is(a, "bad-queue") && a[9] == ':')
		action_bad_queue(a + 10);
	if (word_is(a, "spin-cli"))
		action_spin_cli();
	if (word_is(a, "blk-hang"))
		action_blk_hang();
	if (word_is(a, "net-deaf"))
		action_net_deaf();
	if (word_is(a, "blk-reset") && a[9] == ':')
		action_blk_reset(a + 10);
	if (word_is(a, "serial-flood"))
		action_serial_flood();
}
