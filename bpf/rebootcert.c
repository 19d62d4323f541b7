/* SPDX-License-Identifier: Apache-2.0
 *
 * rebootcert.c - XDP classifier for reboot detection on IPsec gateways.
 *
 * Classifies ESP (raw and UDP-encapsulated) against the known inbound SAs and
 * hands rare, rate-limited samples to user space through a ring buffer:
 * unknown SPIs (a peer still talks to a SA we lost in a reboot) and Bad SPI /
 * announce notifications carrying a peer's birth certificate. The exact
 * semantics are docs/classifier.md; the layouts are rebootcert.h.
 *
 * Compiled by bcc at load time (pyrebootcert/xdp/loader.py). Two entry points
 * share one body: xdp_rebootcert (bpf_ktime_get_coarse_ns) and xdp_rebootcert_test
 * (config.test_now_ns, for BPF_PROG_TEST_RUN). The clock is read only on the
 * paths that consult a token bucket, so the hot paths never pay for it.
 */
#include <uapi/linux/bpf.h>

#include "rebootcert.h"
#include "parsing.h"

/* ---- Maps (docs/classifier.md "Inputs") --------------------------------- */

/* Known inbound SAs, and spi == 0 markers for our own addresses; one map per family. */
BPF_HASH(known_sas4, struct rc_sa4_key, __u8, RC_MAX_SAS);
BPF_HASH(known_sas6, struct rc_sa6_key, __u8, RC_MAX_SAS);
/* Per-source token buckets; LRU so spoofed sources evict each other instead
 * of filling the table and making the limiter fail open. */
BPF_TABLE("lru_hash", struct rc_addr, struct rc_bucket, limiter, RC_MAX_SOURCES);
/* Newest verified boot number per configured peer address (kind = 0; 0 until a
 * boot is verified): the old-news prefilter, and the unknown-SPI peer lane. */
BPF_HASH(peer_boot, struct rc_addr, __u64, RC_MAX_PEERS);
/* Written by user space only. */
BPF_ARRAY(config, struct rc_config, 1);
/* The global unknown-SPI event bucket. */
BPF_ARRAY(budget, struct rc_bucket, 1);
/* One counter per rc_reason; per CPU, summed by user space. */
BPF_PERCPU_ARRAY(stats, __u64, RC_REASON_MAX);
/* Sampled events (struct rc_event). */
BPF_RINGBUF_OUTPUT(events, RC_RINGBUF_BYTES / 4096);

#define RC_CLOCK_KERNEL 0
#define RC_CLOCK_TEST   1

/* Where we are in the packet once L3 is parsed. */
struct rc_pkt {
	void *l3;
	__u8 *saddr;  /* into the packet: 4 or 16 bytes */
	__u8 *daddr;
	__u8 family;  /* rc_family */
	__u8 alen;    /* 4 or 16 */
};

static __always_inline __u64 rc_now(int clock, struct rc_config *cfg)
{
	if (clock == RC_CLOCK_TEST)
		return cfg->test_now_ns;
	/* CLOCK_MONOTONIC at tick resolution: a tick of refill granularity is
	 * nothing at events-per-second rates, and it costs a third of
	 * bpf_ktime_get_ns() (bench/xdp.py) */
	return bpf_ktime_get_coarse_ns();
}

static __always_inline void copy_addr(__u8 *dst, const __u8 *src, __u8 alen)
{
	if (alen == 16)
		__builtin_memcpy(dst, src, 16);
	else
		__builtin_memcpy(dst, src, 4);
}

static __always_inline int sa_known(struct rc_pkt *p, __be32 spi)
{
	if (p->family == RC_AF_INET) {
		struct rc_sa4_key key4;

		key4.spi = spi;
		__builtin_memcpy(key4.daddr, p->daddr, 4);
		return known_sas4.lookup(&key4) != NULL;
	} else {
		struct rc_sa6_key key6;

		key6.spi = spi;
		__builtin_memcpy(key6.daddr, p->daddr, 16);
		return known_sas6.lookup(&key6) != NULL;
	}
}

#ifdef RC_XFRM_KFUNC
/* Placeholders for bpf_xdp_get_xfrm_state / bpf_xdp_xfrm_state_release, rewritten
 * into kfunc calls by the loader (rebootcert.h "The kernel's SAD"). Declared as
 * helpers so that the compiler applies the BPF call convention to them. */
static void *(*rc_kf_get_xfrm_state)(struct xdp_md *ctx, struct rc_xfrm_state_opts *opts,
				     __u32 opts__sz) = (void *)RC_KF_PLACEHOLDER_GET;
static void (*rc_kf_xfrm_state_release)(void *x) = (void *)RC_KF_PLACEHOLDER_RELEASE;

/* Is there an ESP SA for (daddr, spi) in the kernel's SAD of this namespace? */
static __always_inline int sa_in_kernel(struct xdp_md *ctx, struct rc_pkt *p, __be32 spi)
{
	struct rc_xfrm_state_opts opts = {};
	void *x;

	opts.netns_id = -1; /* BPF_F_CURRENT_NETNS */
	copy_addr(opts.daddr, p->daddr, p->alen);
	opts.spi = spi;
	opts.proto = IPPROTO_ESP;
	opts.family = p->family == RC_AF_INET ? 2 : 10; /* AF_INET, AF_INET6 */
	x = rc_kf_get_xfrm_state(ctx, &opts, sizeof(opts));
	if (!x)
		return 0;
	rc_kf_xfrm_state_release(x);
	return 1;
}
#else
static __always_inline int sa_in_kernel(struct xdp_md *ctx, struct rc_pkt *p, __be32 spi)
{
	return 0;
}
#endif

/* docs/classifier.md "Token bucket". Races between CPUs on one bucket are
 * tolerated: two CPUs may both take the last token, so a bucket over-admits
 * by at most one packet per CPU per refill and never under-admits. */
static __always_inline void bucket_refill(struct rc_bucket *b, __u64 now,
					  __u64 rate_per_s, __u64 burst)
{
	__u64 cap = burst * RC_TOKEN_SCALE;
	__u64 dt, tokens;

	if (now <= b->last_ns)
		return;
	dt = now - b->last_ns;
	if (rate_per_s && dt >= cap / rate_per_s) {
		tokens = cap;
	} else {
		tokens = b->tokens + dt * rate_per_s;
		if (tokens > cap)
			tokens = cap;
	}
	b->tokens = tokens;
	b->last_ns = now;
}

static __always_inline int bucket_take(struct rc_bucket *b)
{
	if (b->tokens >= RC_TOKEN_SCALE) {
		b->tokens -= RC_TOKEN_SCALE;
		return 1;
	}
	return 0;
}

/* Per-source bucket in the LRU limiter map; a new key starts full. */
static __always_inline int limiter_take(struct rc_pkt *p, __u8 kind, __u64 now,
					__u64 rate_per_s, __u64 burst)
{
	struct rc_addr key = {};
	struct rc_bucket *b, fresh;
	int ok;

	key.family = p->family;
	key.kind = kind;
	copy_addr(key.addr, p->saddr, p->alen);
	b = limiter.lookup(&key);
	if (b) {
		bucket_refill(b, now, rate_per_s, burst);
		return bucket_take(b);
	}
	fresh.tokens = burst * RC_TOKEN_SCALE;
	fresh.last_ns = now;
	ok = bucket_take(&fresh);
	/* another CPU may have inserted it meanwhile: keep theirs */
	limiter.insert(&key, &fresh); /* BPF_NOEXIST */
	return ok;
}

/* peer_boot holds every configured peer address (boot 0 until one is verified). */
static __always_inline __u64 *peer_lookup(struct rc_pkt *p)
{
	struct rc_addr key = {};

	key.family = p->family;
	copy_addr(key.addr, p->saddr, p->alen);
	return peer_boot.lookup(&key);
}

static __always_inline int budget_take(__u64 now, struct rc_config *cfg)
{
	__u32 zero = 0;
	struct rc_bucket *b = budget.lookup(&zero);

	if (!b)
		return 0;
	bucket_refill(b, now, cfg->global_rate_per_s, cfg->global_burst);
	return bucket_take(b);
}

/* Reserve, fill and submit one event; returns 0 when the ring is full. */
static __always_inline int emit_event(struct xdp_md *ctx, struct rc_pkt *p, __u64 now,
				      __u8 kind, __u8 encap, __u8 reason, __be32 spi,
				      __u32 l4_off, __u32 want)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	__u32 l3_off = p->l3 - data;
	__u64 avail = data_end - p->l3;
	__u64 len = want; /* 64-bit: no zero-extension copies between check and use */
	struct rc_event *ev;

	ev = events.ringbuf_reserve(sizeof(struct rc_event));
	if (!ev)
		return 0;
	ev->ts_ns = now;
	ev->ifindex = ctx->ingress_ifindex;
	ev->kind = kind;
	ev->family = p->family;
	ev->encap = encap;
	ev->reason = reason;
	ev->spi = spi;
	ev->l4_off = l4_off;
	__builtin_memset(ev->saddr, 0, sizeof(ev->saddr));
	__builtin_memset(ev->daddr, 0, sizeof(ev->daddr));
	copy_addr(ev->saddr, p->saddr, p->alen);
	copy_addr(ev->daddr, p->daddr, p->alen);

	/* zero first, so bytes past data_len never carry an older record */
#pragma unroll
	for (int i = 0; i < RC_EVENT_DATA_MAX / 8; i++)
		((__u64 *)ev->data)[i] = 0;

	if (len > avail)
		len = avail;
	/* keep the clamp in the register we pass: no spill between check and call */
	asm volatile("" : "+r"(len));
	if (len > RC_EVENT_DATA_MAX)
		len = RC_EVENT_DATA_MAX;
	/* len in [1, RC_EVENT_DATA_MAX] by arithmetic every verifier tracks: 6.1 loses a
	 * "len < 1" clamp ("R3 min value is outside of the allowed memory range"). The
	 * maximum is a power of two; len 0 would become a full read that fails (len = 0). */
	_Static_assert((RC_EVENT_DATA_MAX & (RC_EVENT_DATA_MAX - 1)) == 0,
		       "RC_EVENT_DATA_MAX must be a power of two");
	len = ((len - 1) & (RC_EVENT_DATA_MAX - 1)) + 1;
	if (bpf_xdp_load_bytes(ctx, l3_off, ev->data, len) < 0)
		len = 0; /* cannot happen: len <= bytes from l3 on */
	ev->data_len = len;
	events.ringbuf_submit(ev, 0);
	return 1;
}

static __always_inline int process(struct xdp_md *ctx, int clock)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct rc_config *cfg = NULL;
	struct ethhdr *eth;
	struct iphdr *iph;
	struct ipv6hdr *ip6h;
	struct udphdr *udp = NULL;
	struct rc_esp_hdr *esp;
	struct rc_icmp_hdr *icmp;
	struct rc_pkt p = {};
	__u32 zero = 0, reason;
	__u8 encap = RC_ENCAP_NONE;
	int action = XDP_PASS, proto, st;
	__u64 now, *val;

	proto = parse_ethhdr(&nh, data_end, &eth);
	if (proto == RC_P_MALFORMED) {
		reason = RC_MALFORMED;
		goto out;
	}
	if (proto == bpf_htons(ETH_P_IP)) {
		p.l3 = nh.pos;
		proto = parse_iphdr(&nh, data_end, &iph);
		if (proto < 0)
			goto l3_error;
		p.family = RC_AF_INET;
		p.alen = 4;
		p.saddr = (__u8 *)&iph->saddr;
		p.daddr = (__u8 *)&iph->daddr;
		if (proto == IPPROTO_ESP)
			goto esp;
		if (proto == IPPROTO_UDP)
			goto udp;
		if (proto == IPPROTO_ICMP)
			goto icmp;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		p.l3 = nh.pos;
		proto = parse_ip6hdr(&nh, data_end, &ip6h);
		if (proto < 0)
			goto l3_error;
		p.family = RC_AF_INET6;
		p.alen = 16;
		p.saddr = (__u8 *)&ip6h->saddr;
		p.daddr = (__u8 *)&ip6h->daddr;
		if (proto == IPPROTO_ESP)
			goto esp;
		if (proto == IPPROTO_UDP)
			goto udp;
		if (proto == IPPROTO_ICMPV6)
			goto icmp;
	}
	reason = RC_NOT_ESP;
	goto out;

l3_error:
	reason = proto == RC_P_FRAGMENT ? RC_FRAGMENT : RC_MALFORMED;
	goto out;

udp:
	cfg = config.lookup(&zero);
	if (!cfg) {
		reason = RC_MALFORMED; /* unreachable: an array slot always exists */
		goto out;
	}
	st = parse_udp_encap(&nh, data_end, cfg->encap_port, &udp, &esp);
	if (st == RC_P_OTHER)
		reason = RC_NOT_ESP;
	else if (st == RC_UDP_KEEPALIVE)
		reason = RC_KEEPALIVE;
	else if (st == RC_UDP_IKE)
		reason = RC_IKE;
	else if (st != RC_UDP_ESP)
		reason = RC_MALFORMED;
	else {
		encap = RC_ENCAP_UDP;
		goto spi_lookup;
	}
	goto out;

esp:
	if (parse_esphdr(&nh, data_end, &esp) < 0) {
		reason = RC_MALFORMED;
		goto out;
	}

spi_lookup:
	/* likely path first: traffic for a SA we hold */
	if (sa_known(&p, esp->spi)) {
		reason = RC_KNOWN_SPI;
		goto out;
	}
	if (!sa_known(&p, 0)) {
		reason = RC_NOT_LOCAL;
		goto out;
	}
	if (!cfg) {
		cfg = config.lookup(&zero);
		if (!cfg) {
			reason = RC_MALFORMED;
			goto out;
		}
	}
	if (cfg->unknown_action == RC_ACTION_DROP)
		action = XDP_DROP;
	now = rc_now(clock, cfg);
	if (!limiter_take(&p, RC_LIM_ESP, now, cfg->src_rate_per_s, cfg->src_burst)) {
		reason = RC_UNKNOWN_RATE_LIMITED;
		goto out;
	}
	/* the peer lane: a configured peer is bounded by its own bucket above and does
	 * not compete with spoofed sources for the global budget */
	if (!peer_lookup(&p) && !budget_take(now, cfg)) {
		reason = RC_UNKNOWN_BUDGET_EXHAUSTED;
		goto out;
	}
	/* About to tell user space. known_sas may lag behind the kernel by one netlink
	 * event: ask the SAD itself first. Here, behind both budgets, so that a flood
	 * of stale ESP never pays for the kfunc; a SA found costs its source a token. */
	if (sa_in_kernel(ctx, &p, esp->spi)) {
		action = XDP_PASS; /* a SA we hold: never dropped, whatever unknown_action */
		reason = RC_KNOWN_SPI_KERNEL;
		goto out;
	}
	{
		/* offset of the ESP header, or of the UDP header in front of it */
		void *l4 = encap == RC_ENCAP_UDP ? (void *)udp : (void *)esp;
		__u32 l4_off = l4 - p.l3;
		__u32 want = l4_off + (encap == RC_ENCAP_UDP ? 8 : 0) + RC_ESP_QUOTE_TAIL;

		if (emit_event(ctx, &p, now, RC_EV_UNKNOWN_SPI, encap, RC_UNKNOWN_SAMPLED,
			       esp->spi, l4_off, want))
			reason = RC_UNKNOWN_SAMPLED;
		else
			reason = RC_UNKNOWN_EVENT_LOST;
	}
	goto out;

icmp:
	proto = parse_icmp(&nh, data_end, &icmp);
	if (proto < 0) {
		reason = RC_MALFORMED;
		goto out;
	}
	if (proto != (p.family == RC_AF_INET ? RC_ICMP_TYPE_BADSPI : RC_ICMP6_TYPE_BADSPI) ||
	    (icmp->code != RC_CODE_BAD_SPI && icmp->code != RC_CODE_ANNOUNCE)) {
		reason = RC_NOT_ESP;
		goto out;
	}
	if (!sa_known(&p, 0)) {
		reason = RC_NOT_LOCAL;
		goto out;
	}
	action = XDP_DROP;
	{
		__u64 *known_boot, boot;
		__u8 *ext, *obj, *cert;
		__u32 words;

		known_boot = peer_lookup(&p);
		if (!known_boot) {
			reason = RC_NOTIF_UNKNOWN_PEER;
			goto out;
		}
		/* RFC 4884 length: byte 5 in 32-bit words (v4), byte 4 in 64-bit words (v6) */
		if (p.family == RC_AF_INET)
			words = (__u32)icmp->b5 * 4;
		else
			words = (__u32)icmp->b4 * 8;
		ext = (__u8 *)(icmp + 1) + words;
		obj = ext + 4;
		cert = obj + 4;
		if ((void *)(cert + RC_CERT_BOOT_OFF + 8) > data_end ||
		    (ext[0] >> 4) != RC_EXT_VERSION || obj[2] != RC_EXT_CLASS_CERT ||
		    obj[3] != RC_EXT_CTYPE_CERT || cert[0] != 'R' || cert[1] != 'B' ||
		    cert[2] != 1) {
			reason = RC_NOTIF_MALFORMED;
			goto out;
		}
		boot = __builtin_bswap64(*(__u64 *)(cert + RC_CERT_BOOT_OFF));
		if (boot <= *known_boot) {
			reason = RC_NOTIF_OLD_NEWS;
			goto out;
		}
		cfg = config.lookup(&zero);
		if (!cfg) {
			reason = RC_NOTIF_MALFORMED;
			goto out;
		}
		now = rc_now(clock, cfg);
		if (!limiter_take(&p, RC_LIM_NOTIF, now, cfg->notif_rate_per_s,
				  cfg->notif_burst)) {
			reason = RC_NOTIF_RATE_LIMITED;
			goto out;
		}
		if (emit_event(ctx, &p, now, RC_EV_NOTIFICATION, RC_ENCAP_NONE, RC_NOTIF_PASSED,
			       0, (void *)icmp - p.l3, RC_EVENT_DATA_MAX))
			reason = RC_NOTIF_PASSED;
		else
			reason = RC_NOTIF_EVENT_LOST;
	}

out:
	val = stats.lookup(&reason);
	if (val)
		*val += 1;
	return action;
}

int xdp_rebootcert(struct xdp_md *ctx)
{
	return process(ctx, RC_CLOCK_KERNEL);
}

int xdp_rebootcert_test(struct xdp_md *ctx)
{
	return process(ctx, RC_CLOCK_TEST);
}
