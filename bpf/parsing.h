/* SPDX-License-Identifier: Apache-2.0
 *
 * parsing.h - cursor-style header parsers for the XDP classifier.
 *
 * Each parse_X(nh, data_end, &hdr) checks the bytes it needs against data_end
 * *before* it reads, advances the cursor past the header and returns the next
 * protocol (or a small status), or a negative RC_P_* status. None of them
 * counts or decides anything: the caller maps statuses to reasons.
 */
#ifndef REBOOTCERT_PARSING_H
#define REBOOTCERT_PARSING_H

#include <uapi/linux/if_ether.h>
#include <uapi/linux/in.h>
#include <uapi/linux/ip.h>
#include <uapi/linux/ipv6.h>
#include <uapi/linux/udp.h>
#include <uapi/linux/icmp.h>

#include "rebootcert.h"

/* Negative parser statuses (mapped to rc_reason by the caller). */
#define RC_P_MALFORMED (-1)
#define RC_P_FRAGMENT  (-2)
#define RC_P_OTHER     (-3) /* well formed, but not something we classify */

struct hdr_cursor {
	void *pos;
};

struct rc_vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

/* IPv6 extension header (hop-by-hop, routing, destination options) and the
 * fragment header share their first two bytes; all are at least 8 bytes. */
struct rc_ipv6_opt_hdr {
	__u8 nexthdr;
	__u8 hdrlen;     /* in 8-byte units, not counting the first 8 bytes */
	__be16 frag_off; /* fragment header only: offset << 3 | res | M */
	__be32 id;
};

struct rc_esp_hdr {
	__be32 spi;
	__be32 seq;
};

/* The first 8 bytes of an ICMP / ICMPv6 error. */
struct rc_icmp_hdr {
	__u8 type;
	__u8 code;
	__be16 csum;
	__u8 b4;         /* ICMPv6: RFC 4884 length in 8-byte words */
	__u8 b5;         /* ICMPv4: RFC 4884 length in 4-byte words */
	__be16 pointer;  /* RFC 2521 pointer */
};

static __always_inline int is_vlan(__be16 proto)
{
	return proto == bpf_htons(ETH_P_8021Q) || proto == bpf_htons(ETH_P_8021AD);
}

/* Ethernet plus at most RC_MAX_VLANS tags. Returns the ethertype (network
 * order, as a non-negative int), RC_P_MALFORMED when a header is cut short,
 * RC_P_OTHER when there are more tags than we walk. */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end,
					 struct ethhdr **ethhdr)
{
	struct ethhdr *eth = nh->pos;
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return RC_P_MALFORMED;
	*ethhdr = eth;
	nh->pos = eth + 1;
	proto = eth->h_proto;

#pragma unroll
	for (int i = 0; i < RC_MAX_VLANS; i++) {
		struct rc_vlan_hdr *vlh = nh->pos;

		if (!is_vlan(proto))
			break;
		if ((void *)(vlh + 1) > data_end)
			return RC_P_MALFORMED;
		proto = vlh->encap_proto;
		nh->pos = vlh + 1;
	}
	if (is_vlan(proto))
		return RC_P_OTHER;
	return proto;
}

/* IPv4 with options. Returns the L4 protocol number. */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end,
				       struct iphdr **iphdr)
{
	struct iphdr *iph = nh->pos;
	int hdrsize;

	if ((void *)(iph + 1) > data_end)
		return RC_P_MALFORMED;
	if (iph->version != 4 || iph->ihl < 5)
		return RC_P_MALFORMED;
	hdrsize = iph->ihl * 4;
	if (nh->pos + hdrsize > data_end)
		return RC_P_MALFORMED;
	*iphdr = iph;
	if (iph->frag_off & bpf_htons(0x1fff))
		return RC_P_FRAGMENT;
	nh->pos += hdrsize;
	return iph->protocol;
}

static __always_inline int ipv6_is_ext(__u8 nexthdr)
{
	return nexthdr == IPPROTO_HOPOPTS || nexthdr == IPPROTO_ROUTING ||
	       nexthdr == IPPROTO_DSTOPTS || nexthdr == IPPROTO_FRAGMENT;
}

/* IPv6 plus at most RC_MAX_IPV6_EXT extension headers. Returns the upper
 * layer protocol number. */
static __always_inline int parse_ip6hdr(struct hdr_cursor *nh, void *data_end,
					struct ipv6hdr **ip6hdr)
{
	struct ipv6hdr *ip6h = nh->pos;
	__u8 nexthdr;

	if ((void *)(ip6h + 1) > data_end)
		return RC_P_MALFORMED;
	if (ip6h->version != 6)
		return RC_P_MALFORMED;
	*ip6hdr = ip6h;
	nh->pos = ip6h + 1;
	nexthdr = ip6h->nexthdr;

#pragma unroll
	for (int i = 0; i < RC_MAX_IPV6_EXT; i++) {
		struct rc_ipv6_opt_hdr *opt = nh->pos;

		if (!ipv6_is_ext(nexthdr))
			break;
		if ((void *)(opt + 1) > data_end)
			return RC_P_MALFORMED;
		if (nexthdr == IPPROTO_FRAGMENT) {
			if (bpf_ntohs(opt->frag_off) >> 3)
				return RC_P_FRAGMENT;
			nexthdr = opt->nexthdr;
			nh->pos = opt + 1;
		} else {
			/* hdrlen <= 255: at most 2048 bytes, a bounded step */
			int len = ((int)opt->hdrlen + 1) * 8;

			if (nh->pos + len > data_end)
				return RC_P_MALFORMED;
			nexthdr = opt->nexthdr;
			nh->pos += len;
		}
	}
	if (ipv6_is_ext(nexthdr))
		return RC_P_MALFORMED;
	return nexthdr;
}

/* ESP: SPI and sequence number. */
static __always_inline int parse_esphdr(struct hdr_cursor *nh, void *data_end,
					struct rc_esp_hdr **esphdr)
{
	struct rc_esp_hdr *esp = nh->pos;

	if ((void *)(esp + 1) > data_end)
		return RC_P_MALFORMED;
	if (esp->spi == 0)
		return RC_P_MALFORMED;
	*esphdr = esp;
	nh->pos = esp + 1;
	return 0;
}

/* UDP encapsulation of ESP (RFC 3948) on encap_port (host order).
 * Returns RC_UDP_ESP with *esphdr set, RC_UDP_IKE / RC_UDP_KEEPALIVE,
 * RC_P_OTHER for another port, RC_P_MALFORMED. */
#define RC_UDP_ESP       0
#define RC_UDP_IKE       1
#define RC_UDP_KEEPALIVE 2
static __always_inline int parse_udp_encap(struct hdr_cursor *nh, void *data_end,
					   __u32 encap_port, struct udphdr **udphdr,
					   struct rc_esp_hdr **esphdr)
{
	struct udphdr *udp = nh->pos;
	__u8 *payload;
	__u32 plen, ulen;

	if ((void *)(udp + 1) > data_end)
		return RC_P_MALFORMED;
	if (udp->dest != bpf_htons((__u16)encap_port))
		return RC_P_OTHER;
	*udphdr = udp;
	payload = (__u8 *)(udp + 1);
	plen = data_end - (void *)payload;
	/* Ethernet pads short frames to 60 bytes: a padded NAT keepalive must
	 * not look like ESP, so a UDP length field that claims fewer payload
	 * bytes than the frame holds trims the payload (never extends it). */
	ulen = bpf_ntohs(udp->len);
	if (ulen >= sizeof(*udp) && ulen - sizeof(*udp) < plen)
		plen = ulen - sizeof(*udp);

	if (plen == 1 && (void *)(payload + 1) <= data_end && payload[0] == 0xff)
		return RC_UDP_KEEPALIVE;
	if (plen >= 4 && (void *)(payload + 4) <= data_end && *(__u32 *)payload == 0)
		return RC_UDP_IKE;
	if (plen < sizeof(struct rc_esp_hdr))
		return RC_P_MALFORMED;
	nh->pos = payload;
	return parse_esphdr(nh, data_end, esphdr) < 0 ? RC_P_MALFORMED : RC_UDP_ESP;
}

/* ICMP / ICMPv6: the fixed 8 bytes of an error message. */
static __always_inline int parse_icmp(struct hdr_cursor *nh, void *data_end,
				      struct rc_icmp_hdr **icmphdr)
{
	struct rc_icmp_hdr *icmp = nh->pos;

	if ((void *)(icmp + 1) > data_end)
		return RC_P_MALFORMED;
	*icmphdr = icmp;
	nh->pos = icmp + 1;
	return icmp->type;
}

#endif /* REBOOTCERT_PARSING_H */
