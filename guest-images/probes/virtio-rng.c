/*
 * probe.action=rng and probe.action=rng-garbage: on the virtio-rng device,
 * ask for 64 bytes and check they came and are not all zero; rng-garbage
 * first floods the ring with large buffers for a while, then hands the
 * device a device-readable buffer (which must stop it: DEVICE_NEEDS_RESET
 * or no answer), resets it and checks it serves again. See README.md.
 */
#include "virtio.h"

#define VIRTIO_ID_RNG 4
#define ASK 64
#define FLOOD_BUF 4096
#define FLOOD_ROUNDS 64
#define WAIT_MS 2000

static struct {
	u8 small[ASK];
	u8 flood[VQ_SIZE][FLOOD_BUF];
} rb __attribute__((section(".noinit"), aligned(4096)));

static struct vq q;

static int rng_setup(struct vdev *d)
{
	if (virtio_init(d, 0) || vq_setup(&q, d, 0))
		return -1;
	return virtio_ready(d);
}

static int rng_draw(void)
{
	vzero(rb.small, ASK);
	struct vbuf b = { (u64)rb.small, ASK, 1 };
	if (vq_add(&q, &b, 1) < 0)
		return -1;
	vq_kick(&q);
	u32 len;
	if (vq_wait(&q, &len, WAIT_MS) < 0) {
		vfail_nonum("no answer to a 64-byte request");
		return -1;
	}
	int nonzero = 0;
	for (int i = 0; i < ASK; i++)
		nonzero |= rb.small[i];
	if (len != ASK || !nonzero) {
		vfail("short or all-zero answer, length", len);
		return -1;
	}
	return 0;
}

static void __attribute__((noreturn)) rng_garbage(struct vdev *d)
{
	/* Flood: keep every descriptor busy with a 4 KiB buffer, round after
	 * round, as a guest hammering the device would. */
	u64 got = 0;
	for (int round = 0; round < FLOOD_ROUNDS; round++) {
		for (int i = 0; i < VQ_SIZE; i++) {
			struct vbuf b = { (u64)rb.flood[i], FLOOD_BUF, 1 };
			if (vq_add(&q, &b, 1) < 0)
				exit_vm(1);
		}
		vq_kick(&q);
		for (int i = 0; i < VQ_SIZE; i++) {
			u32 len;
			if (vq_wait(&q, &len, WAIT_MS) < 0) {
				vfail("flood: no answer in round", (u64)round);
				exit_vm(1);
			}
			got += len;
		}
	}
	puts("probe: rng-garbage flood bytes=");
	put_u64(got);
	puts("\n");
	/* A device-readable buffer is not a request. */
	struct vbuf bad = { (u64)rb.small, ASK, 0 };
	if (vq_add(&q, &bad, 1) < 0)
		exit_vm(1);
	vq_kick(&q);
	u32 len;
	int answered = vq_wait_nofree(&q, &len, WAIT_MS) >= 0;
	u32 status = vread(d, MMIO_STATUS);
	puts("probe: rng-garbage readable ");
	puts(answered ? "answered" : "stopped");
	puts(" device-status=");
	put_hex(status);
	puts("\n");
	if (answered || !(status & VIRTIO_STATUS_NEEDS_RESET)) {
		vfail_nonum("device kept going after a device-readable buffer");
		exit_vm(1);
	}
	if (rng_setup(d) || rng_draw())
		exit_vm(1);
	puts("probe: rng-garbage recovered\n");
	vfinish();
}

void rng_action(int garbage)
{
	struct vdev *d;
	vtag = garbage ? "rng-garbage" : "rng";
	if (virtio_find(VIRTIO_ID_RNG, &d, 1) == 0) {
		vfail_nonum("no virtio-rng device");
		exit_vm(1);
	}
	if (rng_setup(d) || rng_draw())
		exit_vm(1);
	if (garbage)
		rng_garbage(d);
	puts("probe: rng ok\n");
	vfinish();
}
