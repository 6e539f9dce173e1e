/*
 * A minimal polling virtio-mmio (version 2) driver for the probes, shared
 * by virtio.c (transport, split queues, discovery) and the device actions
 * in virtio-blk.c and virtio-net.c.
 *
 * Polling only: the probes never enable interrupts, so after a notify the
 * driver spins on the used ring's idx, always with a time bound so that a
 * broken device produces a FAIL line rather than a hung test.
 */
#ifndef VIRTIO_H
#define VIRTIO_H

#include "probe.h"

#define VIRTIO_ID_NET   1
#define VIRTIO_ID_BLOCK 2
#define VIRTIO_F_VERSION_1 (1ULL << 32)

/* Device status bits (virtio 1.2, 2.1). */
#define VIRTIO_STATUS_ACK         1
#define VIRTIO_STATUS_DRIVER      2
#define VIRTIO_STATUS_DRIVER_OK   4
#define VIRTIO_STATUS_FEATURES_OK 8
#define VIRTIO_STATUS_NEEDS_RESET 0x40

#define MMIO_STATUS       0x70
#define MMIO_QUEUE_NOTIFY 0x50
#define MMIO_CONFIG       0x100

/* Small rings: the probes keep at most a handful of requests in flight,
 * and every byte the (emulated) guest touches costs time. */
#define VQ_SIZE 16

#define VRING_DESC_F_NEXT  1
#define VRING_DESC_F_WRITE 2
#define VRING_AVAIL_F_NO_INTERRUPT 1

struct vring_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

struct vring_avail {
	u16 flags;
	u16 idx;
	u16 ring[VQ_SIZE];
	u16 used_event;
};

struct vring_used_elem {
	u32 id;
	u32 len;
};

struct vring_used {
	u16 flags;
	u16 idx;
	struct vring_used_elem ring[VQ_SIZE];
	u16 avail_event;
};

/* The three parts of a split queue, with the alignments virtio 1.x asks
 * for (16 for the table, 2 for avail, 4 for used). */
struct vq_rings {
	struct vring_desc desc[VQ_SIZE];
	struct vring_avail avail;
	struct vring_used used __attribute__((aligned(4)));
} __attribute__((aligned(64)));

struct vdev {
	u64 base;       /* MMIO window */
	u32 irq;        /* from the command line; unused (we poll) */
	u32 type;       /* VIRTIO_ID_* */
	u64 offered;    /* device features */
	u64 features;   /* what we accepted */
};

struct vq {
	struct vdev *dev;
	volatile struct vq_rings *r;
	u16 index;      /* queue number on the device */
	u16 size;
	u16 free_head;
	u16 num_free;
	u16 last_used;  /* next used-ring slot we will look at */
};

/* One buffer of a chain; `write` = device-writable. The address is a raw
 * guest-physical one (identity mapped), so hostile tests can lie. */
struct vbuf {
	u64 addr;
	u32 len;
	int write;
};

/* Prefix of FAIL lines ("blk", "net", ...), set by the action. */
extern const char *vtag;
void vfail(const char *what, u64 num);
void vfail_nonum(const char *what);
void vfail_str(const char *what, const char *str);

/* Time bounds from the TSC (see virtio.c for the assumptions). */
struct vtimeout {
	u64 end;
	u64 spins;
};
void vtimeout_start(struct vtimeout *t, u32 ms);
int vtimeout_expired(struct vtimeout *t);  /* also pauses once */

u32 vread(struct vdev *d, u32 off);
void vwrite(struct vdev *d, u32 off, u32 v);
u8 vcfg8(struct vdev *d, u32 off);
u32 vcfg32(struct vdev *d, u32 off);

/* Fills `out` with up to `max` devices of `type`; returns how many. */
int virtio_find(u32 type, struct vdev **out, int max);
/* Reset, ACK, DRIVER, features (VERSION_1 | the wanted ones the device
 * offers), FEATURES_OK. 0 on success, else a FAIL line was printed. */
int virtio_init(struct vdev *d, u64 want);
/* Sets DRIVER_OK and checks the device did not give up. */
int virtio_ready(struct vdev *d);
void virtio_reset(struct vdev *d);

/* Sets up queue `index` of `d` in probe memory (reusing q's rings if it
 * has some from before a reset). */
int vq_setup(struct vq *q, struct vdev *d, u16 index);
/* Chains `n` buffers and makes the chain available; returns its head, or
 * -1 (with a FAIL line) if the ring is full. Does not notify. */
int vq_add(struct vq *q, const struct vbuf *b, int n);
/* Publishes a head the caller wrote into the descriptor table itself. */
void vq_publish(struct vq *q, u16 head);
void vq_kick(struct vq *q);
/* Waits up to `ms` for the next used element; returns its id (and length)
 * and frees its chain, or -1 on timeout. A nonsense id is a FAIL. */
int vq_wait(struct vq *q, u32 *len, u32 ms);
/* The same, leaving the chain's descriptors alone (hand-made chains). */
int vq_wait_nofree(struct vq *q, u32 *len, u32 ms);

void put_hex_bytes(const u8 *p, int n);
void put_printable(const u8 *p, int n);  /* stops at NUL; '?' for others */
int bytes_eq(const u8 *a, const u8 *b, int n);
/* Starts at zero, like memset, but for buffers the device writes. */
void vzero(void *p, u32 n);

void __attribute__((noreturn)) blk_action(int garbage);
void __attribute__((noreturn)) net_action(int garbage);
void __attribute__((noreturn)) rng_action(int garbage);
/* probe.then=spin: park (for "disk in use" tests) instead of exiting 0. */
void __attribute__((noreturn)) vfinish(void);

#endif
