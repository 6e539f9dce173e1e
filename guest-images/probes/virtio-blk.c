/*
 * probe.action=blk and probe.action=blk-garbage: drive every virtio-blk
 * device herd announced through the polling driver in virtio.c, one
 * request at a time, and print what the host side must match (serial,
 * capacity, read-only flag, sector bytes).  See README.md for the lines.
 */
#include "virtio.h"

#define VIRTIO_BLK_F_RO    (1ULL << 5)
#define VIRTIO_BLK_F_FLUSH (1ULL << 9)

#define VIRTIO_BLK_T_IN     0
#define VIRTIO_BLK_T_OUT    1
#define VIRTIO_BLK_T_FLUSH  4
#define VIRTIO_BLK_T_GET_ID 8
#define VIRTIO_BLK_S_OK    0
#define VIRTIO_BLK_S_IOERR 1

#define SECTOR 512
#define READ_MAX 8     /* sectors read from the start of each disk */
#define ID_LEN 20
#define MAX_BLK 19
#define REQUEST_MS 2000
/* How long a malformed chain must stay unanswered to count as "stopped". */
#define GARBAGE_MS 300

struct blk_hdr {
	u32 type;
	u32 reserved;
	u64 sector;
};

/* One request in flight at a time, so one set of buffers.  Not zeroed at
 * entry (.noinit): the status byte is preset per request, data buffers are
 * written before use or are what the device fills. */
static struct {
	struct blk_hdr hdr;
	u8 status;
	u8 id[ID_LEN + 1];
	u8 data[READ_MAX * SECTOR] __attribute__((aligned(SECTOR)));
	u8 pattern[SECTOR];
} io __attribute__((section(".noinit"), aligned(4096)));

static struct vq queues[MAX_BLK];

/*
 * One request: header, data split over two descriptors when it is at
 * least 2 bytes (herd must stitch segments), status.  Returns the status
 * byte, or -1 after a FAIL line if the device did not answer.
 */
static int blk_request(struct vq *q, u32 type, u64 sector, u8 *data, u32 len, u32 *used_len)
{
	int dev_writes = type == VIRTIO_BLK_T_IN || type == VIRTIO_BLK_T_GET_ID;
	struct vbuf b[4];
	int n = 0;
	io.hdr.type = type;
	io.hdr.reserved = 0;
	io.hdr.sector = sector;
	*(volatile u8 *)&io.status = 0xff;
	b[n++] = (struct vbuf){ (u64)&io.hdr, sizeof(io.hdr), 0 };
	if (len >= 2) {
		b[n++] = (struct vbuf){ (u64)data, len / 2, dev_writes };
		b[n++] = (struct vbuf){ (u64)data + len / 2, len - len / 2, dev_writes };
	} else if (len) {
		b[n++] = (struct vbuf){ (u64)data, len, dev_writes };
	}
	b[n++] = (struct vbuf){ (u64)&io.status, 1, 1 };
	int head = vq_add(q, b, n);
	if (head < 0)
		return -1;
	vq_kick(q);
	u32 ulen = 0;
	int got = vq_wait(q, &ulen, REQUEST_MS);
	if (got < 0) {
		vfail("no answer to request type", type);
		return -1;
	}
	if (got != head) {
		vfail("device answered a chain we did not send, head", (u64)got);
		return -1;
	}
	if (used_len)
		*used_len = ulen;
	return *(volatile u8 *)&io.status;
}

/* Like blk_request, but a non-OK answer is a FAIL; for IN and GET_ID the
 * used length must also count every byte written plus the status byte. */
static int blk_ok(struct vq *q, u32 type, u64 sector, u8 *data, u32 len, u32 want_used)
{
	u32 used;
	int st = blk_request(q, type, sector, data, len, &used);
	if (st < 0)
		return -1;
	if (st != VIRTIO_BLK_S_OK || (want_used && used != want_used)) {
		puts("probe: FAIL blk request type ");
		put_u64(type);
		puts(" answered status=");
		put_u64((u64)st);
		puts(" used-len=");
		put_u64(used);
		puts(" expected-used-len=");
		put_u64(want_used);
		puts("\n");
		return -1;
	}
	return 0;
}

/* What probe.action=blk writes to sector S: "herd-probe-write", then byte
 * i = (i * 7 + S) mod 256.  The tests recompute it. */
static void fill_pattern(u8 *p, u64 s)
{
	static const char head[] = "herd-probe-write";
	for (int i = 0; i < SECTOR; i++)
		p[i] = i < 16 ? (u8)head[i] : (u8)(i * 7 + s);
}

static int blk_setup(struct vq *q, struct vdev *d)
{
	if (virtio_init(d, VIRTIO_BLK_F_RO | VIRTIO_BLK_F_FLUSH) || vq_setup(q, d, 0))
		return -1;
	return virtio_ready(d);
}

static int blk_one(struct vdev *d, struct vq *q, u64 wsector)
{
	if (blk_setup(q, d))
		return -1;
	u64 capacity = vcfg32(d, 0) | (u64)vcfg32(d, 4) << 32;
	int ro = (d->offered & VIRTIO_BLK_F_RO) != 0;

	vzero(io.id, sizeof(io.id));
	if (blk_ok(q, VIRTIO_BLK_T_GET_ID, 0, io.id, ID_LEN, ID_LEN + 1))
		return -1;
	u64 nread = capacity < READ_MAX ? capacity : READ_MAX;
	if (nread && blk_ok(q, VIRTIO_BLK_T_IN, 0, io.data, (u32)nread * SECTOR, (u32)nread * SECTOR + 1))
		return -1;

	puts("probe: blk ");
	put_printable(io.id, ID_LEN);
	puts(" capacity=");
	put_u64(capacity);
	puts(ro ? " ro=1" : " ro=0");
	puts(" sector0=");
	put_hex_bytes(io.data, nread ? 16 : 0);
	puts("\n");

	/* Past the end: an error answer, and the device keeps going. */
	int st = blk_request(q, VIRTIO_BLK_T_IN, capacity, io.data, SECTOR, 0);
	if (st != VIRTIO_BLK_S_IOERR) {
		if (st >= 0)
			vfail("read past the end did not fail with IOERR, status", (u64)st);
		return -1;
	}

	fill_pattern(io.pattern, wsector);
	memcpy(io.data, io.pattern, SECTOR);
	if (ro) {
		st = blk_request(q, VIRTIO_BLK_T_OUT, wsector < capacity ? wsector : 0, io.data, SECTOR, 0);
		if (st != VIRTIO_BLK_S_IOERR) {
			if (st >= 0)
				vfail("write to a read-only disk got status", (u64)st);
			return -1;
		}
		puts("probe: blk ");
		put_printable(io.id, ID_LEN);
		puts(" write-rejected\n");
		return 0;
	}
	if (wsector >= capacity) {
		vfail("probe.blk_sector is past the end of the disk:", wsector);
		return -1;
	}
	if (blk_ok(q, VIRTIO_BLK_T_OUT, wsector, io.data, SECTOR, 0))
		return -1;
	if (!(d->features & VIRTIO_BLK_F_FLUSH)) {
		vfail_nonum("device does not offer FLUSH");
		return -1;
	}
	if (blk_ok(q, VIRTIO_BLK_T_FLUSH, 0, 0, 0, 0))
		return -1;
	vzero(io.data, SECTOR);
	if (blk_ok(q, VIRTIO_BLK_T_IN, wsector, io.data, SECTOR, SECTOR + 1))
		return -1;
	if (!bytes_eq(io.data, io.pattern, SECTOR)) {
		vfail("read back differs from what was written to sector", wsector);
		return -1;
	}
	puts("probe: blk ");
	put_printable(io.id, ID_LEN);
	puts(" wrote sector ");
	put_u64(wsector);
	puts(" flushed and read it back\n");
	return 0;
}

/* ------------------------------------------------------------------ */
/* Hostile chains                                                     */

static const char *const garbage_names[] = {
	"bad-addr",   /* data buffer far outside guest RAM */
	"huge-len",   /* data buffer of ~4 GiB starting in RAM */
	"loop",       /* header descriptor chained to itself */
	"bad-head",   /* avail entry names descriptor 200 of 16 */
	"avail-idx",  /* avail idx 1000 entries ahead of the device */
};
#define NGARBAGE (int)(sizeof(garbage_names) / sizeof(garbage_names[0]))

/* Writes garbage case `k` straight into an idle ring (the free list is
 * rebuilt by the reset that follows) and notifies. */
static void send_garbage(struct vq *q, int k)
{
	volatile struct vring_desc *t = q->r->desc;
	io.hdr = (struct blk_hdr){ VIRTIO_BLK_T_IN, 0, 0 };
	t[0] = (struct vring_desc){ (u64)&io.hdr, sizeof(io.hdr), VRING_DESC_F_NEXT, 1 };
	t[1] = (struct vring_desc){ (u64)io.data, SECTOR, VRING_DESC_F_NEXT | VRING_DESC_F_WRITE, 2 };
	t[2] = (struct vring_desc){ (u64)&io.status, 1, VRING_DESC_F_WRITE, 0 };
	u16 head = 0;
	if (k == 0)
		t[1].addr = 0x7f0000000000ULL;
	else if (k == 1)
		t[1].len = 0xfffffe00;
	else if (k == 2)
		t[0].next = 0;
	else if (k == 3)
		head = 200;
	vq_publish(q, head);
	if (k == 4)
		q->r->avail.idx = 1000;
	vq_kick(q);
}

static void __attribute__((noreturn)) blk_garbage(struct vdev *d, struct vq *q)
{
	static u8 before[SECTOR];
	if (blk_setup(q, d) || blk_ok(q, VIRTIO_BLK_T_IN, 0, io.data, SECTOR, SECTOR + 1))
		exit_vm(1);
	memcpy(before, io.data, SECTOR);
	for (int k = 0; k < NGARBAGE; k++) {
		*(volatile u8 *)&io.status = 0xff;
		send_garbage(q, k);
		struct vtimeout t;
		vtimeout_start(&t, GARBAGE_MS);
		while (q->r->used.idx == q->last_used && !vtimeout_expired(&t))
			;
		puts("probe: blk-garbage ");
		puts(garbage_names[k]);
		if (q->r->used.idx == q->last_used) {
			puts(" stopped");
		} else {
			puts(" answered status=");
			put_u64(*(volatile u8 *)&io.status);
		}
		puts(" device-status=");
		put_hex(vread(d, MMIO_STATUS));
		puts("\n");
		/* A reset must bring the device back whatever it made of that. */
		vzero(io.data, SECTOR);
		if (blk_setup(q, d) || blk_ok(q, VIRTIO_BLK_T_IN, 0, io.data, SECTOR, SECTOR + 1))
			exit_vm(1);
		if (!bytes_eq(io.data, before, SECTOR)) {
			vfail_nonum("sector 0 reads differently after the reset");
			exit_vm(1);
		}
		puts("probe: blk-garbage ");
		puts(garbage_names[k]);
		puts(" recovered\n");
	}
	puts("probe: blk-garbage ok\n");
	vfinish();
}

void blk_action(int garbage)
{
	struct vdev *found[MAX_BLK];
	vtag = garbage ? "blk-garbage" : "blk";
	int n = virtio_find(VIRTIO_ID_BLOCK, found, MAX_BLK);
	if (n == 0) {
		vfail_nonum("no virtio-blk device");
		exit_vm(1);
	}
	if (garbage)
		blk_garbage(found[0], &queues[0]);
	long long ws = 1;
	if (cmdline_get("probe.blk_sector")) {
		ws = parse_num(cmdline_get("probe.blk_sector"));
		if (ws < 0) {
			vfail_nonum("malformed probe.blk_sector");
			exit_vm(1);
		}
	}
	for (int i = 0; i < n; i++)
		if (blk_one(found[i], &queues[i], (u64)ws))
			exit_vm(1);
	puts("probe: blk ok\n");
	vfinish();
}
