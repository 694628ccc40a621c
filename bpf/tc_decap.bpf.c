/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tc_decap: strips the outer header of every encapsulation lwtun sends, at tc ingress of the
 * underlay device, so tunnels work on kernels without the ipip/gre/fou modules.
 *
 *   Ethernet | outer IPv4/IPv6 | [GRE | UDP] | inner IPv4/IPv6 ...
 *            `--- removed by bpf_skb_adjust_room(-len, BPF_ADJ_ROOM_MAC) ---'
 *
 * A packet is decapsulated when all of these hold, in this order (the first that fails decides
 * the verdict and the counter, see LWTUN_DECAP_EV_* in lwtun.h):
 *   1. Ethernet carrying IPv4/IPv6 with a sane outer header       else MALFORMED (dropped)
 *      (non-IP EtherTypes and VLAN-tagged frames are NOT_FOR_US, passed)
 *   2. its destination is a local endpoint (map `locals`)         else NOT_FOR_US (passed)
 *   3. protocol 4/41 (IPIP), 47 (GRE) or UDP to a port in `udp_ports` else NOT_FOR_US (passed)
 *   4. the outer header is not a fragment                         else FRAGMENT (dropped)
 *      lwtun's encap sets DF and the route headroom, so a fragment means a broken path MTU; the
 *      stack could not decapsulate it here either. UDP fragments whose port cannot be seen
 *      (offset > 0) are passed, they may belong to any UDP socket.
 *   5. IPv6: no extension headers but a Destination Options header with only the Tunnel
 *      Encapsulation Limit (RFC 2473; the kernel's ip6tnl and ip6gre send it by default)
 *                                                                 else UNSUPPORTED (dropped)
 *   6. IPv4: the header checksum is right                         else BAD_CSUM (dropped)
 *   7. the outer source is a known peer (LPM `peers_v4/v6`)       else UNKNOWN_PEER (dropped)
 *   8. GRE: version 0, only the C and K flags (RFC 2784/2890; no routing, no sequence numbers,
 *      lwtun never sends them)                                    else UNSUPPORTED (dropped);
 *      protocol type 0x0800 or 0x86DD                             else UNSUPPORTED (dropped);
 *      checksum (C) verified over GRE header and payload          else BAD_CSUM (dropped)
 *      (not for GSO aggregates, whose checksums the segmentation writes; not when the config
 *      says LWTUN_DECAP_NO_GRE_CSUM). A packet built on this machine with checksum offload and
 *      looped through a veth may arrive with its inner checksum still partial; gre_csum_ok()
 *      then checks the GRE checksum against the finished inner packet (csum.h); a GRE checksum
 *      field of 0 is one the sender's device was to finish (the kernel's gre devices with
 *      `csum` send it so through a veth): accepted, the inner checksums left to the stack;
 *      the peer's key when the peer asks for one                  else KEY_MISMATCH (dropped)
 *   9. the inner header is whole and of the announced family      else MALFORMED (dropped)
 *  10. ECN (RFC 6040): outer CE turns an ECT inner packet CE      a not-ECT one: ECN (dropped)
 * The outer UDP checksum is not verified: the inner packet's own checksums are, by the stack.
 *
 * Verdicts: a packet that is not a tunnel packet for this host (NOT_FOR_US) and a packet it
 * decapsulated both get TC_ACT_UNSPEC (-1, which tcx calls TCX_NEXT): "not decided, go on with the
 * next program". The hook is shared: a capture, a counter or a user's program attached after decap
 * still runs (with TC_ACT_OK, "pass and skip the rest", none of them would see a packet, not even a
 * plain ping); after the last program the kernel passes the packet up as with TC_ACT_OK, for tcx
 * links and for cls_bpf filters in direct-action mode (the clsact fallback before Linux 6.6) alike.
 * A later program sees what the stack will see: the inner packet for a decapsulated one. Only the
 * packets decap refuses end the hook (TC_ACT_SHOT, counted per reason).
 *
 * After the strip the skb continues through the receive path,
 * which reads skb->protocol again after tc ingress, so the inner packet enters ip_rcv/ipv6_rcv
 * on the underlay device as if it had arrived there. The stack then routes the inner destination:
 * local delivery and forwarding both work, with the stack's own checks (inner checksums, rp_filter,
 * TTL). A bpf_redirect(BPF_F_INGRESS) to the same device would do the same at the price of a
 * backlog queue round trip and a second pass through tc. A v4<->v6 change of the network protocol
 * is made by the BPF_F_ADJ_ROOM_DECAP_L3_* flags (Linux 6.3), which also set skb->protocol; the
 * Ethernet header's type is rewritten to match. Without a change of family no flag is needed,
 * so same-family decap runs on older kernels too.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <linux/udp.h>
#include "parse.h"
#include "csum.h"
#include "lwtun.h"

/* Linux 6.3 flags of bpf_skb_adjust_room, newer than the UAPI headers this builds against. */
#define DECAP_L3_IPV4 (1ULL << 7)
#define DECAP_L3_IPV6 (1ULL << 8)

#ifndef IPPROTO_GRE
#define IPPROTO_GRE 47
#endif

#define GRE_CSUM 0x8000
#define GRE_KEY 0x2000
#define GRE_VERSION_FLAGS 0x5fff /* routing, sequence, strict, recursion, reserved, version */

/* Bytes of headers kept linear before parsing: Ethernet, IPv6 with 4 extension headers, GRE
 * with checksum and key, an inner IPv6 header. */
#define PULL_LEN 256

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct lwtun_ip_addr);
	__type(value, __u32);
} locals SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_peer_key4);
	__type(value, struct lwtun_decap_peer);
} peers_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_peer_key6);
	__type(value, struct lwtun_decap_peer);
} peers_v6 SEC(".maps");

/* UDP destination ports carrying FOU: the entry at the port number (host order) is 1. An
 * array, not a hash: its lookup is inlined by the JIT instead of hashing the key (a hash
 * lookup measured ~55 ns per packet here); 256 KiB. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u32);
} udp_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_decap_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_DECAP_EV_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} counters SEC(".maps");

static __always_inline int verdict(__u32 ev, __u32 len, int act)
{
	struct lwtun_counter *c = bpf_map_lookup_elem(&counters, &ev);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
	return act;
}

/* Not decided here: the next program on the hook runs, then the stack (see the verdicts above). */
#define PASS(ev) verdict(ev, pkt_len, TC_ACT_UNSPEC)
#define DROP(ev) verdict(ev, pkt_len, TC_ACT_SHOT)

/* What the outer parse found. */
struct outer {
	__u32 l4off;  /* offset of the header after the outer IP header(s), from the Ethernet header */
	__u32 ip_end; /* offset of the end of the outer IP packet (trailing padding excluded) */
	__u8 proto;   /* next protocol after the outer IP (and extension) headers */
	__u8 frag;    /* 0: not a fragment, 1: first fragment, 2: later fragment */
	__u8 ext;     /* IPv6 extension headers (other than a fragment header) were present */
	__u8 v6;
	__u8 ecn;     /* the outer ECN field */
	__u8 pad[3];
};

/* Whether the GRE checksum of the packet is right: over GRE header and payload [gre_off, end),
 * whose inner packet starts at inner_off. A TCP or UDP inner packet whose checksum field holds
 * exactly what CHECKSUM_PARTIAL leaves there (a packet sent on this machine with checksum offload
 * and looped through a veth: its transport checksum was never finished) is checked first against
 * the GRE header plus the inner packet's sum once finished (csum.h), from its headers, without
 * reading the payload. The GRE checksum then vouches for the headers only, so the stack is made
 * to verify the inner checksum itself where it would otherwise trust it
 * (BPF_CSUM_LEVEL_RESET; a CHECKSUM_PARTIAL packet stays trusted, as it never was on a wire).
 * Every other packet, and one whose field only happens to hold that pattern, is checked over its
 * bytes. A packet damaged on the way still fails: its checksum field is final, not the partial
 * pattern, and its bytes do not sum right. */
/* The partial sum of the GRE header [gre_off, gre_off + len): straight from the packet for the
 * 8 and 12 byte headers (checksum, checksum and key) the checksum path sees, else through
 * csum_range(). */
static __always_inline __s64 gre_hdr_sum(struct __sk_buff *skb, __u32 gre_off, __u32 len)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	__be32 *g;

	if (gre_off > PULL_LEN)
		return -1;
	g = data + gre_off;
	if (len == 8 && (void *)(g + 2) <= data_end)
		return (__u32)bpf_csum_diff(0, 0, g, 8, 0);
	if (len == 12 && (void *)(g + 3) <= data_end)
		return (__u32)bpf_csum_diff(0, 0, g, 12, 0);
	return csum_range(skb, gre_off, gre_off + len);
}

/* Whether the GRE checksum field is 0, as the kernel's own gre devices leave it when they hand
 * the checksum to the device (CHECKSUM_PARTIAL starting at the GRE header): through a veth the
 * packet arrives with it unfinished (seen from Debian's 6.12 ip_gre with `csum`: field 0, the
 * bytes summing to anything). The receiving stack trusts such a packet; so does the decap, and
 * the stack still verifies the inner packet's own checksums (a packet from a wire is never
 * CHECKSUM_PARTIAL). A field damaged into exactly 0 on a wire gets through the same way. */
static __always_inline int gre_csum_unfinished(struct __sk_buff *skb, __u32 gre_off)
{
	__u16 field;

	if (bpf_skb_load_bytes(skb, gre_off + 4, &field, 2) < 0)
		return 0;
	if (field)
		return 0;
	bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);
	return 1;
}

static __always_inline int gre_csum_ok(struct __sk_buff *skb, __u32 gre_off, __u32 inner_off,
				       __u32 end)
{
	__s64 hdr, inner, all;

	if (inner_off > gre_off) {
		inner = csum_inner_final(skb, inner_off, end, 1);
		if (inner >= 0) {
			hdr = gre_hdr_sum(skb, gre_off, inner_off - gre_off);
			if (hdr >= 0 && csum_fold64((__u64)hdr + (__u64)inner) == 0xffff) {
				bpf_csum_level(skb, BPF_CSUM_LEVEL_RESET);
				return 1;
			}
		}
	}
	all = csum_range(skb, gre_off, end);
	if (all >= 0 && csum_fold64(all) == 0xffff)
		return 1;
	return gre_csum_unfinished(skb, gre_off);
}

/* IPv4 header checksum over ihl words, straight from the packet. */
static __always_inline int ipv4_csum_ok(struct iphdr *iph, void *data_end)
{
	__u16 *w = (__u16 *)iph;
	__u32 sum = 0;
	int i;

	/* the usual header, without options: ten words, one bounds check */
	if (iph->ihl == 5) {
		if ((void *)(w + 10) > data_end)
			return 0;
#pragma unroll
		for (i = 0; i < 10; i++)
			sum += w[i];
		return csum_fold_partial(sum) == 0xffff;
	}
#pragma unroll
	for (i = 0; i < 30; i++) {
		if (i >= iph->ihl * 2)
			break;
		if ((void *)(w + i + 1) > data_end)
			return 0;
		sum += w[i];
	}
	return csum_fold_partial(sum) == 0xffff;
}

/* Whether the 8-byte IPv6 extension header at h (in reach) is a Destination Options header
 * holding only the Tunnel Encapsulation Limit option and padding (RFC 2473 4.1.1): what the
 * kernel's own ip6tnl and ip6gre devices put before every packet unless configured with
 * `encaplimit none`, as [next header, 0, 4, 1, limit, 1, 1, 0] (PadN) or with three Pad1.
 * Such a header is skipped (the limit matters to a node that would encapsulate again); any other
 * option is UNSUPPORTED, as the kernel's ip6_tnl would parse it. */
static __always_inline int tunnel_limit_only(__u8 *h)
{
	if (h[1] != 0 || h[2] != 4 || h[3] != 1)
		return 0;
	return (h[5] == 1 && h[6] == 1 && h[7] == 0) || (h[5] == 0 && h[6] == 0 && h[7] == 0);
}

SEC("tc")
int decap_tc(struct __sk_buff *skb)
{
	__u32 pkt_len = skb->len;
	void *data, *data_end;
	struct ethhdr *eth;
	struct outer o = {};
	struct lwtun_decap_peer *peer;
	struct lwtun_ip_addr local = {};
	__u32 zero = 0, tun_len = 0, ev, inner_off;
	__u16 eth_proto;
	int inner_v6 = 0;
	__u64 flags;

	/* Headers in the linear part (a no-op for most packets: only a short linear part is
	 * pulled, which may copy). */
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (data_end - data < (pkt_len < PULL_LEN ? pkt_len : PULL_LEN)) {
		bpf_skb_pull_data(skb, pkt_len < PULL_LEN ? pkt_len : PULL_LEN);
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return DROP(LWTUN_DECAP_EV_MALFORMED);
	eth_proto = eth->h_proto;

	if (eth_proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = (void *)(eth + 1);
		struct lwtun_peer_key4 pk = { .prefixlen = 32 };
		__u32 hlen, tot;

		if ((void *)(iph + 1) > data_end || iph->version != 4 || iph->ihl < 5)
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		hlen = iph->ihl * 4;
		tot = bpf_ntohs(iph->tot_len);
		if ((void *)iph + hlen > data_end || tot < hlen || tot > pkt_len - sizeof(*eth))
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		local.addr[10] = 0xff;
		local.addr[11] = 0xff;
		__builtin_memcpy(&local.addr[12], &iph->daddr, 4);
		if (!bpf_map_lookup_elem(&locals, &local))
			return PASS(LWTUN_DECAP_EV_NOT_FOR_US);
		o.l4off = sizeof(*eth) + hlen;
		o.ip_end = sizeof(*eth) + tot;
		o.proto = iph->protocol;
		o.ecn = iph->tos & 3;
		if (iph->frag_off & bpf_htons(IP_OFFSET))
			o.frag = 2;
		else if (iph->frag_off & bpf_htons(IP_MF))
			o.frag = 1;
		__builtin_memcpy(pk.addr, &iph->saddr, 4);
		peer = bpf_map_lookup_elem(&peers_v4, &pk);
		/* Checked here, where iph is in reach; only tunnel packets reach its verdict. */
		if (!ipv4_csum_ok(iph, data_end))
			o.ext = 2;
	} else if (eth_proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = (void *)(eth + 1);
		struct lwtun_peer_key6 pk = { .prefixlen = 128 };
		__u32 off = sizeof(*eth) + sizeof(*ip6h);
		__u8 nh;
		int i;

		if ((void *)(ip6h + 1) > data_end || ip6h->version != 6)
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		if (bpf_ntohs(ip6h->payload_len) > pkt_len - sizeof(*eth) - sizeof(*ip6h))
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		__builtin_memcpy(local.addr, &ip6h->daddr, 16);
		if (!bpf_map_lookup_elem(&locals, &local))
			return PASS(LWTUN_DECAP_EV_NOT_FOR_US);
		o.v6 = 1;
		o.ecn = (((__u8 *)ip6h)[1] >> 4) & 3;
		o.ip_end = off + bpf_ntohs(ip6h->payload_len);
		__builtin_memcpy(pk.addr, &ip6h->saddr, 16);
		peer = bpf_map_lookup_elem(&peers_v6, &pk);
		nh = ip6h->nexthdr;
#pragma unroll
		for (i = 0; i < 4; i++) {
			__u8 *h = data + off;

			if (nh != IPPROTO_HOPOPTS && nh != IPPROTO_ROUTING && nh != IPPROTO_DSTOPTS &&
			    nh != IPPROTO_FRAGMENT)
				break;
			if ((void *)(h + 8) > data_end)
				return DROP(LWTUN_DECAP_EV_MALFORMED);
			if (nh == IPPROTO_FRAGMENT) {
				__be16 fo = *(__be16 *)(h + 2);

				o.frag = (fo & bpf_htons(0xfff8)) ? 2 : ((fo & bpf_htons(1)) ? 1 : 0);
				nh = h[0];
				off += 8;
			} else {
				if (!(nh == IPPROTO_DSTOPTS && tunnel_limit_only(h)))
					o.ext = 1;
				nh = h[0];
				off += ((__u32)h[1] + 1) * 8;
			}
			if (off > PULL_LEN)
				return DROP(LWTUN_DECAP_EV_MALFORMED);
		}
		if (nh == IPPROTO_HOPOPTS || nh == IPPROTO_ROUTING || nh == IPPROTO_DSTOPTS ||
		    nh == IPPROTO_FRAGMENT)
			return DROP(LWTUN_DECAP_EV_UNSUPPORTED);
		o.l4off = off;
		o.proto = nh;
	} else {
		return PASS(LWTUN_DECAP_EV_NOT_FOR_US);
	}

	/* 3. a tunnel protocol? */
	if (o.l4off > PULL_LEN || o.ip_end < o.l4off)
		return DROP(LWTUN_DECAP_EV_MALFORMED);
	switch (o.proto) {
	case IPPROTO_IPIP:
	case IPPROTO_IPV6:
		ev = LWTUN_DECAP_EV_IPIP;
		inner_v6 = o.proto == IPPROTO_IPV6;
		break;
	case IPPROTO_GRE:
		ev = LWTUN_DECAP_EV_GRE;
		break;
	case IPPROTO_UDP: {
		struct udphdr *uh = data + o.l4off;
		__u32 port, *fou;

		if (o.frag == 2)
			return PASS(LWTUN_DECAP_EV_NOT_FOR_US);
		if ((void *)(uh + 1) > data_end)
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		port = bpf_ntohs(uh->dest);
		fou = bpf_map_lookup_elem(&udp_ports, &port);
		if (!fou || !*fou)
			return PASS(LWTUN_DECAP_EV_NOT_FOR_US);
		if (!o.frag && bpf_ntohs(uh->len) != o.ip_end - o.l4off)
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		ev = LWTUN_DECAP_EV_UDP;
		tun_len = sizeof(*uh);
		break;
	}
	default:
		return PASS(LWTUN_DECAP_EV_NOT_FOR_US);
	}
	/* 4.-7. */
	if (o.frag)
		return DROP(LWTUN_DECAP_EV_FRAGMENT);
	if (o.ext == 1)
		return DROP(LWTUN_DECAP_EV_UNSUPPORTED);
	if (o.ext == 2)
		return DROP(LWTUN_DECAP_EV_BAD_CSUM);
	if (!peer)
		return DROP(LWTUN_DECAP_EV_UNKNOWN_PEER);

	/* 8. GRE */
	if (ev == LWTUN_DECAP_EV_GRE) {
		__be16 *g = data + o.l4off;
		struct lwtun_decap_config *cfg;
		__u16 gflags, gproto;
		__u32 key = 0, has_key;

		if ((void *)(g + 2) > data_end)
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		gflags = bpf_ntohs(g[0]);
		gproto = bpf_ntohs(g[1]);
		if (gflags & GRE_VERSION_FLAGS)
			return DROP(LWTUN_DECAP_EV_UNSUPPORTED);
		if (gproto == ETH_P_IP)
			inner_v6 = 0;
		else if (gproto == ETH_P_IPV6)
			inner_v6 = 1;
		else
			return DROP(LWTUN_DECAP_EV_UNSUPPORTED);
		tun_len = 4 + ((gflags & GRE_CSUM) ? 4 : 0) + ((gflags & GRE_KEY) ? 4 : 0);
		if (data + o.l4off + tun_len > data_end || o.l4off + tun_len > o.ip_end)
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		has_key = gflags & GRE_KEY;
		if (has_key) {
			__u32 koff = o.l4off + ((gflags & GRE_CSUM) ? 8 : 4);
			__u32 *k;

			if (koff > PULL_LEN)
				return DROP(LWTUN_DECAP_EV_MALFORMED);
			k = data + koff;

			if ((void *)(k + 1) > data_end)
				return DROP(LWTUN_DECAP_EV_MALFORMED);
			key = *k;
		}
		cfg = bpf_map_lookup_elem(&config, &zero);
		if ((gflags & GRE_CSUM) && !skb->gso_size &&
		    !(cfg && (cfg->flags & LWTUN_DECAP_NO_GRE_CSUM)) &&
		    !gre_csum_ok(skb, o.l4off, o.l4off + tun_len, o.ip_end))
			return DROP(LWTUN_DECAP_EV_BAD_CSUM);
		if ((peer->flags & LWTUN_DECAP_PEER_GRE_KEY) && (!has_key || key != peer->gre_key))
			return DROP(LWTUN_DECAP_EV_KEY_MISMATCH);
		if (has_key && cfg && (cfg->flags & LWTUN_DECAP_KEY_TO_MARK))
			skb->mark = bpf_ntohl(key);
		/* the checksum walk may have moved the packet: reload */
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
	}

	/* 9. the inner header */
	inner_off = o.l4off + tun_len;
	if (inner_off > PULL_LEN)
		return DROP(LWTUN_DECAP_EV_MALFORMED);
	{
		__u8 *in = data + inner_off;
		__u32 inner_len = o.ip_end - inner_off;

		if ((void *)(in + 1) > data_end)
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		if (ev == LWTUN_DECAP_EV_UDP)
			inner_v6 = (in[0] >> 4) == 6;
		if ((in[0] >> 4) != (inner_v6 ? 6 : 4))
			return DROP(LWTUN_DECAP_EV_MALFORMED);
		if (inner_len < (inner_v6 ? sizeof(struct ipv6hdr) : sizeof(struct iphdr)))
			return DROP(LWTUN_DECAP_EV_MALFORMED);
	}

	/* FIXED_GSO: keep gso_size. Growing it by the removed length (the default) lets a GSO
	 * aggregate of a short tail segment end up no longer than its gso_size, which
	 * tcp_gso_segment drops when the packet is resegmented (forwarding): retransmits, slow TCP.
	 * Segments of the old size are always valid, only up to the header length smaller. (Seen
	 * with GRO'd packets by other BPF decapsulators; local delivery here measured the same
	 * either way.) */
	/* RFC 6040 (as the kernel's tunnels): congestion the outer header met is kept. Outer CE
	 * marks an ECT inner packet CE; a not-ECT inner packet cannot carry it and is dropped. */
	if (o.ecn == 3) {
		if (inner_v6) {
			__u8 *b = data + inner_off;

			if ((void *)(b + 2) > data_end)
				return DROP(LWTUN_DECAP_EV_MALFORMED);
			if (((b[1] >> 4) & 3) == 0)
				return DROP(LWTUN_DECAP_EV_ECN);
			b[1] |= 0x30;
		} else {
			struct iphdr *ii = data + inner_off;
			__be16 old_word, new_word;

			if ((void *)(ii + 1) > data_end)
				return DROP(LWTUN_DECAP_EV_MALFORMED);
			if ((ii->tos & 3) == 0)
				return DROP(LWTUN_DECAP_EV_ECN);
			old_word = *(__be16 *)ii;
			ii->tos |= 3;
			new_word = *(__be16 *)ii;
			csum_replace2(&ii->check, old_word, new_word);
		}
	}

	/* Only a change of family needs the 6.3 flags: a same-family strip is the plain MAC-mode
	 * shrink every kernel since 5.2 has, so 4in4 and 6in6 decap work on 5.10 and 6.1, where
	 * the kernel refuses the flags (and so a 4in6 or 6in4 packet, counted as an error). */
	flags = BPF_F_ADJ_ROOM_FIXED_GSO;
	if (inner_v6 != o.v6)
		flags |= inner_v6 ? DECAP_L3_IPV6 : DECAP_L3_IPV4;
	if (bpf_skb_adjust_room(skb, -(__s32)(inner_off - sizeof(struct ethhdr)), BPF_ADJ_ROOM_MAC,
				flags))
		return DROP(LWTUN_DECAP_EV_ERROR);
	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		return DROP(LWTUN_DECAP_EV_ERROR);
	eth->h_proto = inner_v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP);
	return PASS(ev);
}

/* The baseline of benches/decap.rs: a program that hands every packet on and counts nothing. */
SEC("tc")
int pass_tc(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
