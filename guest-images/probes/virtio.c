/*
 * virtio-mmio transport and split virtqueues for the probes (see virtio.h).
 *
 * Everything a test might want to be hostile with stays visible: queue
 * memory is plain probe memory, descriptors can be written by hand and
 * published with vq_publish().
 */
#include "virtio.h"

#define MMIO_MAGIC         0x00
#define MMIO_VERSION       0x04
#define MMIO_DEVICE_ID     0x08
#define MMIO_DEV_FEAT      0x10
#define MMIO_DEV_FEAT_SEL  0x14
#define MMIO_DRV_FEAT      0x20
#define MMIO_DRV_FEAT_SEL  0x24
#define MMIO_QUEUE_SEL     0x30
#define MMIO_QUEUE_NUM_MAX 0x34
#define MMIO_QUEUE_NUM     0x38
#define MMIO_QUEUE_READY   0x44
#define MMIO_QUEUE_DESC    0x80
#define MMIO_QUEUE_AVAIL   0x90
#define MMIO_QUEUE_USED    0xa0

#define MAGIC_VIRT 0x74726976  /* "virt" */
/* herd's slots: 0xd0000000 + i * 4 KiB, at most 19 of them. Only used if
 * the command line announces no device. */
#define SLOT_BASE 0xd0000000ULL
#define SLOT_SIZE 0x1000ULL
#define MAX_DEVS  19
/* A couple of queues per device is all any probe action needs. */
#define MAX_RINGS (2 * MAX_DEVS)

/*
 * Time bounds.  The probe has no calibrated clock, so it counts TSC ticks
 * assuming at most 3 GHz: a bound of N ms then lasts at least ~N ms on the
 * 2-3 GHz machines we use, and never forever.  In case the TSC does not
 * advance (it should; this is only a hang guard), the number of polls is
 * capped too, generously: a poll takes ~18 us under kvm_pvm (measured) but
 * maybe 10 ns natively, and the cap must not cut the TSC bound short there.
 */
#define TSC_PER_MS   3000000ULL
#define SPINS_PER_MS 200000ULL

const char *vtag = "virtio";

static struct vdev devs[MAX_DEVS];
static int ndevs = -1;  /* -1: not discovered yet */
static struct vq_rings rings[MAX_RINGS] __attribute__((section(".noinit")));
static int nrings;

static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

static inline u64 rdtsc(void)
{
	u32 lo, hi;
	__asm__ volatile("rdtsc" : "=a"(lo), "=d"(hi));
	return lo | (u64)hi << 32;
}

void vtimeout_start(struct vtimeout *t, u32 ms)
{
	t->end = rdtsc() + ms * TSC_PER_MS;
	t->spins = (ms + 1) * SPINS_PER_MS;
}

int vtimeout_expired(struct vtimeout *t)
{
	cpu_relax();
	return rdtsc() >= t->end || --t->spins == 0;
}

void vfail_nonum(const char *what)
{
	puts("probe: FAIL ");
	puts(vtag);
	puts(" ");
	puts(what);
	puts("\n");
}

void vfail_str(const char *what, const char *str)
{
	puts("probe: FAIL ");
	puts(vtag);
	puts(" ");
	puts(what);
	puts(" ");
	puts(str);
	puts("\n");
}

void vfail(const char *what, u64 num)
{
	puts("probe: FAIL ");
	puts(vtag);
	puts(" ");
	puts(what);
	puts(" ");
	put_u64(num);
	puts("\n");
}

/* Registers are 32-bit and must be accessed as such (virtio 1.2, 4.2.2). */
u32 vread(struct vdev *d, u32 off) { return *(volatile u32 *)(d->base + off); }
void vwrite(struct vdev *d, u32 off, u32 v) { *(volatile u32 *)(d->base + off) = v; }
u8 vcfg8(struct vdev *d, u32 off) { return *(volatile u8 *)(d->base + MMIO_CONFIG + off); }
u32 vcfg32(struct vdev *d, u32 off) { return *(volatile u32 *)(d->base + MMIO_CONFIG + off); }

/* ------------------------------------------------------------------ */
/* Discovery                                                          */

static const char *parse_hex(const char *s, u64 *out)
{
	u64 v = 0;
	int n = 0;
	if (s[0] == '0' && (s[1] == 'x' || s[1] == 'X'))
		s += 2;
	for (;; s++, n++) {
		char c = *s;
		int digit = c >= '0' && c <= '9' ? c - '0'
			  : c >= 'a' && c <= 'f' ? c - 'a' + 10
			  : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
		if (digit < 0)
			break;
		v = v << 4 | (u64)digit;
	}
	*out = v;
	return n ? s : 0;
}

/* Checks a window really holds a virtio-mmio v2 device and records it. */
static void add_dev(u64 base, u32 irq)
{
	if (ndevs >= MAX_DEVS)
		return;
	struct vdev *d = &devs[ndevs];
	d->base = base;
	d->irq = irq;
	if (vread(d, MMIO_MAGIC) != MAGIC_VIRT)
		return;
	if (vread(d, MMIO_VERSION) != 2) {
		puts("probe: WARN virtio-mmio at ");
		put_hex(base);
		puts(" is not version 2\n");
		return;
	}
	d->type = vread(d, MMIO_DEVICE_ID);
	if (d->type)  /* 0 = placeholder slot */
		ndevs++;
}

/* Every `virtio_mmio.device=<size>@<base>:<irq>` token, as Linux reads
 * them (all occurrences count, not just the last). */
static void discover(void)
{
	static const char key[] = "virtio_mmio.device=";
	ndevs = 0;
	if (probe_map_mmio()) {
		puts("probe: FAIL page-table pool exhausted\n");
		exit_vm(1);
	}
	for (const char *p = cmdline; *p;) {
		while (*p == ' ')
			p++;
		int i = 0;
		while (key[i] && p[i] == key[i])
			i++;
		if (!key[i]) {
			const char *s = p + i;
			u64 base, irq = 0;
			while (*s && *s != '@' && *s != ' ')
				s++;
			if (*s == '@' && (s = parse_hex(s + 1, &base)) && *s == ':') {
				long long n = parse_num(s + 1);
				irq = n < 0 ? 0 : (u64)n;
				add_dev(base, (u32)irq);
			} else {
				puts("probe: WARN malformed virtio_mmio.device= entry\n");
			}
		}
		while (*p && *p != ' ')
			p++;
	}
	if (ndevs)
		return;
	/* Nothing announced: look at herd's slots directly. Unclaimed MMIO
	 * reads as all ones, which is not the magic. */
	for (u64 i = 0; i < MAX_DEVS; i++)
		add_dev(SLOT_BASE + i * SLOT_SIZE, 0);
}

int virtio_find(u32 type, struct vdev **out, int max)
{
	if (ndevs < 0)
		discover();
	int n = 0;
	for (int i = 0; i < ndevs && n < max; i++)
		if (devs[i].type == type)
			out[n++] = &devs[i];
	return n;
}

/* ------------------------------------------------------------------ */
/* Device initialisation (virtio 1.2, 3.1.1)                          */

void virtio_reset(struct vdev *d)
{
	vwrite(d, MMIO_STATUS, 0);
}

int virtio_init(struct vdev *d, u64 want)
{
	virtio_reset(d);
	if (vread(d, MMIO_STATUS) != 0) {
		vfail("device status not 0 after reset, status", vread(d, MMIO_STATUS));
		return -1;
	}
	vwrite(d, MMIO_STATUS, VIRTIO_STATUS_ACK);
	vwrite(d, MMIO_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER);
	vwrite(d, MMIO_DEV_FEAT_SEL, 0);
	u64 offered = vread(d, MMIO_DEV_FEAT);
	vwrite(d, MMIO_DEV_FEAT_SEL, 1);
	offered |= (u64)vread(d, MMIO_DEV_FEAT) << 32;
	d->offered = offered;
	if (!(offered & VIRTIO_F_VERSION_1)) {
		vfail_nonum("device does not offer VIRTIO_F_VERSION_1");
		return -1;
	}
	d->features = offered & (want | VIRTIO_F_VERSION_1);
	vwrite(d, MMIO_DRV_FEAT_SEL, 0);
	vwrite(d, MMIO_DRV_FEAT, (u32)d->features);
	vwrite(d, MMIO_DRV_FEAT_SEL, 1);
	vwrite(d, MMIO_DRV_FEAT, (u32)(d->features >> 32));
	vwrite(d, MMIO_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER | VIRTIO_STATUS_FEATURES_OK);
	if (!(vread(d, MMIO_STATUS) & VIRTIO_STATUS_FEATURES_OK)) {
		vfail_nonum("device refused our features");
		return -1;
	}
	return 0;
}

int virtio_ready(struct vdev *d)
{
	vwrite(d, MMIO_STATUS, VIRTIO_STATUS_ACK | VIRTIO_STATUS_DRIVER |
	       VIRTIO_STATUS_FEATURES_OK | VIRTIO_STATUS_DRIVER_OK);
	u32 st = vread(d, MMIO_STATUS);
	if (st & VIRTIO_STATUS_NEEDS_RESET || !(st & VIRTIO_STATUS_DRIVER_OK)) {
		vfail("device did not accept DRIVER_OK, status", st);
		return -1;
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Split virtqueues                                                   */

void vzero(void *p, u32 n)
{
	volatile u8 *b = p;
	while (n--)
		*b++ = 0;
}

static void write_addr(struct vdev *d, u32 reg, u64 addr)
{
	vwrite(d, reg, (u32)addr);
	vwrite(d, reg + 4, (u32)(addr >> 32));
}

int vq_setup(struct vq *q, struct vdev *d, u16 index)
{
	if (!q->r) {
		if (nrings >= MAX_RINGS) {
			vfail_nonum("out of queue memory");
			return -1;
		}
		q->r = &rings[nrings++];
	}
	/* .noinit memory: the device must see an empty ring (idx 0). */
	vzero((void *)q->r, sizeof(*q->r));
	q->dev = d;
	q->index = index;
	vwrite(d, MMIO_QUEUE_SEL, index);
	if (vread(d, MMIO_QUEUE_READY)) {
		vfail("queue already live:", index);
		return -1;
	}
	u32 max = vread(d, MMIO_QUEUE_NUM_MAX);
	if (max == 0) {
		vfail("device has no queue", index);
		return -1;
	}
	/* Split rings must be a power of two; VQ_SIZE is one, so if the
	 * device takes less, use the largest power of two it takes. */
	u16 size = VQ_SIZE;
	while (size > max)
		size >>= 1;
	q->size = size;
	vwrite(d, MMIO_QUEUE_NUM, size);
	write_addr(d, MMIO_QUEUE_DESC, (u64)&q->r->desc);
	write_addr(d, MMIO_QUEUE_AVAIL, (u64)&q->r->avail);
	write_addr(d, MMIO_QUEUE_USED, (u64)&q->r->used);
	vwrite(d, MMIO_QUEUE_READY, 1);
	if (vread(d, MMIO_QUEUE_READY) != 1) {
		vfail("queue did not become ready:", index);
		return -1;
	}
	for (u16 i = 0; i < size; i++)
		q->r->desc[i].next = (u16)(i + 1);
	q->free_head = 0;
	q->num_free = size;
	q->last_used = 0;
	/* We poll: ask the device not to interrupt (it may anyway). */
	q->r->avail.flags = VRING_AVAIL_F_NO_INTERRUPT;
	return 0;
}

void vq_publish(struct vq *q, u16 head)
{
	u16 idx = q->r->avail.idx;
	q->r->avail.ring[idx & (q->size - 1)] = head;
	/* x86 keeps stores in order; the compiler must too: the ring entry
	 * has to be visible before the index that exposes it. */
	barrier();
	q->r->avail.idx = (u16)(idx + 1);
	barrier();
}

int vq_add(struct vq *q, const struct vbuf *b, int n)
{
	if (n <= 0 || n > q->num_free) {
		vfail("ring full, free descriptors", q->num_free);
		return -1;
	}
	u16 head = q->free_head, i = head;
	for (int k = 0; k < n; k++) {
		volatile struct vring_desc *desc = &q->r->desc[i];
		u16 next = desc->next;
		desc->addr = b[k].addr;
		desc->len = b[k].len;
		desc->flags = (u16)((b[k].write ? VRING_DESC_F_WRITE : 0) |
				    (k + 1 < n ? VRING_DESC_F_NEXT : 0));
		if (k + 1 < n)
			i = next;
		else
			q->free_head = next;
	}
	q->num_free = (u16)(q->num_free - n);
	vq_publish(q, head);
	return head;
}

void vq_kick(struct vq *q)
{
	barrier();
	vwrite(q->dev, MMIO_QUEUE_NOTIFY, q->index);
}

/* Gives a returned chain's descriptors back to the free list. */
static void free_chain(struct vq *q, u16 head)
{
	u16 i = head, n = 1;
	while ((q->r->desc[i].flags & VRING_DESC_F_NEXT) && n < q->size) {
		i = q->r->desc[i].next;
		n++;
	}
	q->r->desc[i].next = q->free_head;
	q->free_head = head;
	q->num_free = (u16)(q->num_free + n);
}

int vq_wait(struct vq *q, u32 *len, u32 ms)
{
	int id = vq_wait_nofree(q, len, ms);
	if (id >= 0)
		free_chain(q, (u16)id);
	return id;
}

int vq_wait_nofree(struct vq *q, u32 *len, u32 ms)
{
	struct vtimeout t;
	vtimeout_start(&t, ms);
	while (q->r->used.idx == q->last_used)
		if (vtimeout_expired(&t))
			return -1;
	barrier();  /* read the element only after seeing the index move */
	volatile struct vring_used_elem *e = &q->r->used.ring[q->last_used & (q->size - 1)];
	u32 id = e->id;
	if (len)
		*len = e->len;
	q->last_used++;
	if (id >= q->size) {
		vfail("device returned a chain with head id", id);
		exit_vm(1);
	}
	return (int)id;
}

/* ------------------------------------------------------------------ */
/* Output helpers and the action switch                               */

void put_hex_bytes(const u8 *p, int n)
{
	for (int i = 0; i < n; i++) {
		char s[3] = { "0123456789abcdef"[p[i] >> 4], "0123456789abcdef"[p[i] & 15], 0 };
		puts(s);
	}
}

void put_printable(const u8 *p, int n)
{
	char s[2] = { 0, 0 };
	for (int i = 0; i < n && p[i]; i++) {
		s[0] = p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' ? (char)p[i] : '?';
		puts(s);
	}
}

int bytes_eq(const u8 *a, const u8 *b, int n)
{
	for (int i = 0; i < n; i++)
		if (a[i] != b[i])
			return 0;
	return 1;
}

void vfinish(void)
{
	const char *then = cmdline_get("probe.then");
	if (then && word_is(then, "spin")) {
		puts("probe: spinning\n");
		spin();
	}
	exit_vm(0);
}

void virtio_action(const char *a)
{
	if (word_is(a, "blk"))
		blk_action(0);
	if (word_is(a, "blk-garbage"))
		blk_action(1);
	if (word_is(a, "net"))
		net_action(0);
	if (word_is(a, "net-garbage"))
		net_action(1);
	if (word_is(a, "rng"))
		rng_action(0);
	if (word_is(a, "rng-garbage"))
		rng_action(1);
}
