/*
 * probe.action=net and probe.action=net-garbage: on the first virtio-net
 * device, send one Ethernet frame (ethertype 0x88b5, "local experimental")
 * and wait for the test's answer on the TAP, polling both queues.  See
 * README.md for the command-line knobs and the lines printed.
 */
#include "virtio.h"

#define VIRTIO_NET_F_MAC       (1ULL << 5)
#define VIRTIO_NET_F_MRG_RXBUF (1ULL << 15)
#define VIRTIO_NET_F_STATUS    (1ULL << 16)

/* struct virtio_net_hdr_v1: always 12 bytes with VERSION_1; num_buffers
 * (the last two) is only meaningful to us on receive. */
#define NET_HDR_LEN 12
#define RXBUF_MAX 2048
#define FRAME_MAX 4096
#define ETH_HLEN 14
#define ETH_MIN 60
#define PAYLOAD_MAX 64
#define ETHERTYPE_HI 0x88
#define ETHERTYPE_LO 0xb5
#define GARBAGE_LEN (128 * 1024)
#define TX_MS 2000

static const char pong[] = "herd-host-pong";

/* .noinit: only what we write (or the device writes) is ever read. */
static struct {
	u8 rx[VQ_SIZE][RXBUF_MAX];
	u8 txhdr[NET_HDR_LEN];
	u8 tx[ETH_HLEN + PAYLOAD_MAX + ETH_MIN];
	u8 frame[FRAME_MAX];
	u8 garbage[GARBAGE_LEN];
} nb __attribute__((section(".noinit"), aligned(4096)));

static struct vq rxq, txq;
static u32 rxbuf_len = RXBUF_MAX;
static int mergeable;

static long long num_arg(const char *key, long long def, long long lo, long long hi)
{
	const char *v = cmdline_get(key);
	long long n = v ? parse_num(v) : def;
	if (n < lo || n > hi) {
		vfail_str("bad value for", key);
		exit_vm(1);
	}
	return n;
}

static int post_rx(u8 *buf)
{
	struct vbuf b = { (u64)buf, rxbuf_len, 1 };
	return vq_add(&rxq, &b, 1) < 0 ? -1 : 0;
}

/* Our receive buffer behind a returned head (each chain is one buffer). */
static u8 *rx_buffer(int head)
{
	u64 addr = rxq.r->desc[head].addr, base = (u64)nb.rx;
	if (addr < base || addr >= base + sizeof(nb.rx) || (addr - base) % RXBUF_MAX) {
		vfail("device returned a receive chain we never posted, head", (u64)head);
		exit_vm(1);
	}
	return (u8 *)addr;
}

/*
 * Takes one frame off the receive ring: with MRG_RXBUF it may span
 * num_buffers chains, which follow each other in the used ring.  The
 * frame (no virtio header) lands in nb.frame; buffers are reposted.
 * Returns the frame length, 0 if nothing came within `ms`.
 */
static u32 rx_frame(u32 ms, u16 *nbufs)
{
	u32 len, total = 0;
	int head = vq_wait(&rxq, &len, ms);
	if (head < 0)
		return 0;
	u8 *b = rx_buffer(head);
	if (len < NET_HDR_LEN || len > rxbuf_len) {
		vfail("bad used length on the receive queue:", len);
		exit_vm(1);
	}
	u16 n = (u16)(b[10] | b[11] << 8);
	if (mergeable ? n == 0 || n > rxq.size : n != 1) {
		vfail("bad num_buffers in a received header:", n);
		exit_vm(1);
	}
	*nbufs = n;
	for (u16 k = 0;;) {
		u32 skip = k == 0 ? NET_HDR_LEN : 0;
		for (u32 i = skip; i < len; i++, total++)
			if (total < FRAME_MAX)
				nb.frame[total] = b[i];
		if (post_rx(b))
			exit_vm(1);
		if (++k == n)
			break;
		head = vq_wait(&rxq, &len, TX_MS);
		if (head < 0) {
			vfail("merged frame is missing buffer", k);
			exit_vm(1);
		}
		b = rx_buffer(head);
		if (len == 0 || len > rxbuf_len) {
			vfail("bad used length on the receive queue:", len);
			exit_vm(1);
		}
	}
	vq_kick(&rxq);
	return total;
}

/* Sends `n` buffers as one transmit chain and waits until the device gives
 * them back (herd returns dropped frames too). Returns the used length. */
static u32 tx_chain(const struct vbuf *b, int n, const char *what)
{
	int head = vq_add(&txq, b, n);
	if (head < 0)
		exit_vm(1);
	vq_kick(&txq);
	u32 len;
	int got = vq_wait(&txq, &len, TX_MS);
	if (got != head) {
		vfail_str(got < 0 ? "transmit chain never came back:" : "device returned another chain for", what);
		exit_vm(1);
	}
	return len;
}

/* Oversized and otherwise hostile transmit chains; herd drops each one,
 * hands it back, and must keep transmitting. Where a frame could leave,
 * it is a 0x88b5 frame saying "herd-probe-garbage", so the test sees it. */
/* probe.net_loop=1: one descriptor (a whole 0x88b5 "herd-probe-loop"
 * frame) chained to itself. A device must not send it: the chain never
 * ends. Opt-in because herd did send it (16 copies glued together). */
static void send_loop(void)
{
	static const char text[] = "herd-probe-loop";
	u8 *f = nb.garbage + 64 * 1024;
	vzero(f, NET_HDR_LEN + ETH_MIN);
	for (int i = 0; i < 12; i++)
		f[NET_HDR_LEN + i] = 0xff;
	f[NET_HDR_LEN + 12] = ETHERTYPE_HI;
	f[NET_HDR_LEN + 13] = ETHERTYPE_LO;
	memcpy(f + NET_HDR_LEN + ETH_HLEN, text, sizeof(text));
	/* Written by hand before it is published, so the device never sees
	 * it half made; the free list is left as it was. */
	u16 h = txq.free_head, saved_next = txq.r->desc[h].next;
	txq.r->desc[h] = (struct vring_desc){ (u64)f, NET_HDR_LEN + ETH_MIN, VRING_DESC_F_NEXT, h };
	vq_publish(&txq, h);
	vq_kick(&txq);
	u32 len;
	int got = vq_wait_nofree(&txq, &len, TX_MS);
	if (got != h) {
		vfail_nonum("looping transmit chain never came back");
		exit_vm(1);
	}
	txq.r->desc[h] = (struct vring_desc){ 0, 0, 0, saved_next };
	puts("probe: net-garbage loop returned len=");
	put_u64(len);
	puts("\n");
}

static void send_garbage(void)
{
	static const char *const names[] = { "oversized", "huge-len", "bad-addr", "write-only", "short" };
	static const char text[] = "herd-probe-garbage";
	u64 g = (u64)nb.garbage, hdr = (u64)nb.txhdr;
	vzero(nb.garbage, NET_HDR_LEN + ETH_MIN);
	for (int i = 0; i < 12; i++)
		nb.garbage[NET_HDR_LEN + i] = 0xff;
	nb.garbage[NET_HDR_LEN + 12] = ETHERTYPE_HI;
	nb.garbage[NET_HDR_LEN + 13] = ETHERTYPE_LO;
	memcpy(nb.garbage + NET_HDR_LEN + ETH_HLEN, text, sizeof(text));
	struct vbuf cases[][2] = {
		{ { g, 70000, 0 } },                                       /* > 64 KiB + headers */
		{ { g, 0xffffffff, 0 } },                                  /* 4 GiB from RAM */
		{ { hdr, NET_HDR_LEN, 0 }, { 0x7f0000000000ULL, ETH_MIN, 0 } },
		{ { hdr, NET_HDR_LEN, 0 }, { g + NET_HDR_LEN, ETH_MIN, 1 } },
		{ { hdr, NET_HDR_LEN, 0 }, { g + NET_HDR_LEN, 4, 0 } },   /* no Ethernet header */
	};
	for (int k = 0; k < 5; k++) {
		u32 len = tx_chain(cases[k], cases[k][1].len ? 2 : 1, names[k]);
		puts("probe: net-garbage ");
		puts(names[k]);
		puts(" returned len=");
		put_u64(len);
		puts("\n");
	}
}

static u32 fnv1a(const u8 *p, u32 n)
{
	u32 h = 0x811c9dc5;
	for (u32 i = 0; i < n; i++)
		h = (h ^ p[i]) * 0x01000193;
	return h;
}

void net_action(int garbage)
{
	struct vdev *d;
	vtag = garbage ? "net-garbage" : "net";
	if (virtio_find(VIRTIO_ID_NET, &d, 1) == 0) {
		vfail_nonum("no virtio-net device");
		exit_vm(1);
	}
	u64 want = VIRTIO_NET_F_MAC | VIRTIO_NET_F_STATUS;
	if (num_arg("probe.net_mrg", 1, 0, 1))
		want |= VIRTIO_NET_F_MRG_RXBUF;
	rxbuf_len = (u32)num_arg("probe.net_rxbuf", RXBUF_MAX, 64, RXBUF_MAX);
	u32 wait_ms = (u32)num_arg("probe.net_wait_ms", 5000, 1, 60000);
	if (virtio_init(d, want) || vq_setup(&rxq, d, 0) || vq_setup(&txq, d, 1))
		exit_vm(1);
	mergeable = (d->features & VIRTIO_NET_F_MRG_RXBUF) != 0;
	if (!(d->features & VIRTIO_NET_F_MAC)) {
		vfail_nonum("device has no MAC address (VIRTIO_NET_F_MAC)");
		exit_vm(1);
	}
	u8 mac[6];
	for (int i = 0; i < 6; i++)
		mac[i] = vcfg8(d, (u32)i);
	int link = d->features & VIRTIO_NET_F_STATUS ? vcfg8(d, 6) & 1 : 1;
	/* Receive buffers go in before DRIVER_OK, as Linux does. */
	for (u32 i = 0; i < rxq.size; i++)
		if (post_rx(nb.rx[i]))
			exit_vm(1);
	if (virtio_ready(d))
		exit_vm(1);
	vq_kick(&rxq);

	puts("probe: net mac=");
	for (int i = 0; i < 6; i++) {
		if (i)
			puts(":");
		put_hex_bytes(&mac[i], 1);
	}
	puts(mergeable ? " mrg=1" : " mrg=0");
	puts(link ? " link=1\n" : " link=0\n");

	if (garbage && num_arg("probe.net_loop", 0, 0, 1))
		send_loop();
	if (garbage)
		send_garbage();

	/* The ping: broadcast, from our MAC, probe.net_ping's text (default
	 * herd-probe-ping), zero padded to the Ethernet minimum. */
	const char *text = cmdline_get("probe.net_ping");
	if (!text)
		text = "herd-probe-ping";
	vzero(nb.txhdr, NET_HDR_LEN);
	vzero(nb.tx, sizeof(nb.tx));
	u32 flen = ETH_HLEN;
	for (int i = 0; i < 6; i++) {
		nb.tx[i] = 0xff;
		nb.tx[6 + i] = mac[i];
	}
	nb.tx[12] = ETHERTYPE_HI;
	nb.tx[13] = ETHERTYPE_LO;
	for (int i = 0; text[i] && text[i] != ' ' && i < PAYLOAD_MAX; i++)
		nb.tx[flen++] = (u8)text[i];
	if (flen < ETH_MIN)
		flen = ETH_MIN;
	struct vbuf ping[2] = { { (u64)nb.txhdr, NET_HDR_LEN, 0 }, { (u64)nb.tx, flen, 0 } };
	tx_chain(ping, 2, "ping");
	puts("probe: net sent ");
	put_u64(flen);
	puts(" bytes\n");

	/* Anything else that arrives (IPv6 neighbour discovery on the TAP,
	 * say) is counted and its buffers reused. */
	struct vtimeout t;
	vtimeout_start(&t, wait_ms);
	u32 ignored = 0;
	while (!vtimeout_expired(&t)) {
		u16 nbufs = 0;
		u32 len = rx_frame(50, &nbufs);
		if (!len)
			continue;
		if (len < ETH_HLEN + sizeof(pong) - 1 || nb.frame[12] != ETHERTYPE_HI ||
		    nb.frame[13] != ETHERTYPE_LO ||
		    !bytes_eq(nb.frame + ETH_HLEN, (const u8 *)pong, sizeof(pong) - 1)) {
			ignored++;
			continue;
		}
		if (len > FRAME_MAX) {
			vfail("the answer is too large for the probe:", len);
			exit_vm(1);
		}
		puts("probe: net rx ");
		put_u64(len);
		puts(" bytes \"");
		put_printable(nb.frame + ETH_HLEN, len - ETH_HLEN < PAYLOAD_MAX ? (int)(len - ETH_HLEN) : PAYLOAD_MAX);
		puts("\"\nprobe: net rx-detail buffers=");
		put_u64(nbufs);
		puts(" fnv1a=");
		put_hex(fnv1a(nb.frame, len));
		puts(" ignored=");
		put_u64(ignored);
		puts("\nprobe: net ok\n");
		vfinish();
	}
	vfail("no answer within ms:", wait_ms);
	puts("probe: net ignored=");
	put_u64(ignored);
	puts("\n");
	exit_vm(1);
}
