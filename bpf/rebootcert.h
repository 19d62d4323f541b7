/* SPDX-License-Identifier: Apache-2.0
 *
 * rebootcert.h - everything the XDP classifier shares with user space:
 * limits, verdict reasons, map key/value layouts, the event record.
 *
 * pyrebootcert/xdp/abi.py mirrors this file with ctypes; the reference model
 * (pyrebootcert/xdp/model.py) implements the same semantics in Python. A change
 * here is a change in three places, and the differential test proves they agree.
 */
#ifndef REBOOTCERT_H
#define REBOOTCERT_H

/* ---- Limits (override with -DNAME=value at load time) ------------------ */
#ifndef RC_MAX_SAS
#define RC_MAX_SAS 262144      /* known inbound SAs + local-address markers, per family */
#endif
#ifndef RC_MAX_SOURCES
#define RC_MAX_SOURCES 131072  /* LRU: per-source buckets; spoofers evict each other, never fail open */
#endif
#ifndef RC_MAX_PEERS
#define RC_MAX_PEERS 4096      /* configured peer addresses: old-news prefilter, unknown-SPI peer lane */
#endif
#ifndef RC_RINGBUF_BYTES
#define RC_RINGBUF_BYTES (256 * 1024) /* ~230 events; user space drains far faster than the budget fills */
#endif
#ifndef RC_EVENT_DATA_MAX
#define RC_EVENT_DATA_MAX 1024 /* bytes copied from the L3 header on; holds any notification we send */
#endif
#ifndef RC_MAX_VLANS
#define RC_MAX_VLANS 2         /* 802.1Q / 802.1ad tags walked */
#endif
#ifndef RC_MAX_IPV6_EXT
#define RC_MAX_IPV6_EXT 6      /* IPv6 extension headers walked before giving up (malformed) */
#endif

#define RC_ESP_QUOTE_TAIL 12   /* SPI + sequence number + 32 more bits = "SPI plus the next 64 bits" */
#define RC_TOKEN_SCALE 1000000000ULL /* one token = 1e9 units; a bucket gains rate_per_s units per ns */

/* ---- Wire constants (docs/protocol.md) --------------------------------- */
#define RC_ICMP_TYPE_BADSPI   40  /* RFC 2521 Security Failures */
#define RC_ICMP6_TYPE_BADSPI  100 /* RFC 4443 private experimentation (error range) */
#define RC_CODE_BAD_SPI       0   /* RFC 2521 code 0: Bad SPI */
#define RC_CODE_ANNOUNCE      254 /* ours: certificate announce, no quoted datagram */
#define RC_EXT_VERSION        2   /* RFC 4884 extension structure version */
#define RC_EXT_CLASS_CERT     247 /* RFC 4884 class-num, private use */
#define RC_EXT_CTYPE_CERT     1
#define RC_CERT_BOOT_OFF      14  /* boot_number offset inside a certificate */
#define RC_NATT_PORT          4500

/* ---- Verdict reasons: exactly one counter per packet -------------------- */
enum rc_reason {
	RC_NOT_ESP = 0,              /* not ESP/UDP-4500/notification: pass */
	RC_MALFORMED,                /* truncated or inconsistent headers: pass */
	RC_FRAGMENT,                 /* non-first IP fragment: pass */
	RC_IKE,                      /* UDP/4500 with the zero non-ESP marker: pass */
	RC_KEEPALIVE,                /* UDP/4500 single 0xFF byte: pass */
	RC_NOT_LOCAL,                /* ESP or notification to an address that is not ours: pass */
	RC_KNOWN_SPI,                /* ESP for an SA we hold: pass */
	RC_UNKNOWN_SAMPLED,          /* unknown SPI, event sent (peer lane or global budget): config action */
	RC_UNKNOWN_RATE_LIMITED,     /* unknown SPI, source over its budget: config action */
	RC_UNKNOWN_BUDGET_EXHAUSTED, /* unknown SPI from a non-peer, global events/s budget spent: config action */
	RC_UNKNOWN_EVENT_LOST,       /* unknown SPI, ring buffer full: config action */
	RC_NOTIF_PASSED,             /* notification handed to user space: drop */
	RC_NOTIF_OLD_NEWS,           /* boot number not newer than the peer's known one: drop */
	RC_NOTIF_RATE_LIMITED,       /* notification source over its budget: drop */
	RC_NOTIF_UNKNOWN_PEER,       /* notification from an address not in peer_boot: drop */
	RC_NOTIF_MALFORMED,          /* notification whose certificate cannot be located: drop */
	RC_NOTIF_EVENT_LOST,         /* notification, ring buffer full: drop */
	RC_KNOWN_SPI_KERNEL,         /* ESP for an SA not (yet) in known_sas but in the kernel's SAD: pass */
	RC_REASON_MAX,
};

enum rc_family { RC_AF_INET = 4, RC_AF_INET6 = 6 };
enum rc_encap { RC_ENCAP_NONE = 0, RC_ENCAP_UDP = 1 };
enum rc_event_kind { RC_EV_UNKNOWN_SPI = 1, RC_EV_NOTIFICATION = 2 };
enum rc_limiter_kind { RC_LIM_ESP = 1, RC_LIM_NOTIF = 2 };
enum rc_unknown_action { RC_ACTION_PASS = 0, RC_ACTION_DROP = 1 };

/* ---- The kernel's SAD (optional, Linux >= 6.8) ---------------------------
 * With RC_XFRM_KFUNC defined, an SPI missing from known_sas is looked up once
 * more in the kernel's own SAD through the bpf_xdp_get_xfrm_state kfunc, so a
 * SA the controller has not synced yet is never taken for a lost one. bcc 0.26
 * cannot call kfuncs (no __ksym resolution), so the program calls two
 * placeholder helper IDs and the loader (pyrebootcert/xdp/kfunc.py) rewrites
 * those two calls into kfunc calls (src_reg BPF_PSEUDO_KFUNC_CALL, imm the
 * kfunc's vmlinux BTF id) before the program is loaded. A placeholder left
 * unrewritten is an unknown helper: the verifier refuses it, nothing runs. */
#define RC_KF_PLACEHOLDER_GET     0x7ffe0001
#define RC_KF_PLACEHOLDER_RELEASE 0x7ffe0002

/* struct bpf_xfrm_state_opts (net/xfrm/xfrm_state_bpf.c), 36 bytes */
struct rc_xfrm_state_opts {
	__s32 error;     /* out: -errno when no state is returned */
	__s32 netns_id;  /* -1: the packet's namespace (BPF_F_CURRENT_NETNS) */
	__u32 mark;
	__u8 daddr[16];  /* xfrm_address_t */
	__be32 spi;
	__u8 proto;      /* IPPROTO_ESP */
	__u8 pad;
	__u16 family;    /* AF_INET / AF_INET6 */
};
_Static_assert(sizeof(struct rc_xfrm_state_opts) == 36, "opts__sz must be 36 (BPF_XFRM_STATE_OPTS_SZ)");

/* ---- Map layouts -------------------------------------------------------- */

/* An address, v4 in addr[0..3] with the rest zero. `kind` is an rc_limiter_kind
 * in the limiter map and 0 elsewhere. */
struct rc_addr {
	__u8 family;   /* rc_family */
	__u8 kind;
	__u8 pad[2];
	__u8 addr[16];
};

/* known_sas4 / known_sas6 keys: (SPI as on the wire, local destination address).
 * spi == 0 (reserved by RFC 4303) marks "this address is ours": ESP to an
 * address without that marker is forwarded traffic and is left alone. One map
 * per family keeps the IPv4 key at 8 bytes: the hash and compare of every
 * known-SPI packet cost a third less than with one 24-byte key (bench/xdp.py). */
struct rc_sa4_key {
	__be32 spi;
	__u8 daddr[4];
};

struct rc_sa6_key {
	__be32 spi;
	__u8 daddr[16];
};

/* Token bucket: tokens in units of 1/RC_TOKEN_SCALE; refilled by
 * rate_per_s units per elapsed ns, capped at burst * RC_TOKEN_SCALE. */
struct rc_bucket {
	__u64 tokens;
	__u64 last_ns;
};

/* Single-entry config array, written by user space only. */
struct rc_config {
	__u64 src_rate_per_s;     /* unknown-SPI events per source per second */
	__u64 src_burst;          /* ... and burst, in events */
	__u64 notif_rate_per_s;   /* notifications per source per second */
	__u64 notif_burst;
	__u64 global_rate_per_s;  /* unknown-SPI events per second, all sources */
	__u64 global_burst;
	__u64 test_now_ns;        /* clock used by the test entry point only */
	__u32 unknown_action;     /* rc_unknown_action */
	__u32 encap_port;         /* UDP encapsulation port, normally 4500 */
};

/* Ring-buffer record. data[] holds data_len bytes from the L3 header on:
 * for an unknown SPI, the RFC 2521 quote (IP header(s), UDP header if any,
 * SPI + 64 bits); for a notification, the whole IP packet (clamped). */
struct rc_event {
	__u64 ts_ns;
	__u32 ifindex;
	__u8 kind;      /* rc_event_kind */
	__u8 family;    /* rc_family */
	__u8 encap;     /* rc_encap */
	__u8 reason;    /* rc_reason that produced it */
	__be32 spi;     /* as on the wire; 0 for notifications */
	__u16 l4_off;   /* offset of the ESP/UDP/ICMP header inside data[] */
	__u16 data_len; /* valid bytes in data[] */
	__u8 saddr[16];
	__u8 daddr[16];
	__u8 data[RC_EVENT_DATA_MAX];
};

#endif /* REBOOTCERT_H */
