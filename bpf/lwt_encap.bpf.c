/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lwt_encap: push a tunnel header chosen by the inner destination (the LWT tunnel data plane).
 *
 * A route such as 10.20.0.0/16 runs encap_xmit (lwt_xmit) or encap_in (lwt_in). The program looks
 * the inner destination up in an LPM peer table (peers_v4 / peers_v6), builds the outer header of the
 * peer's encapsulation and pushes it with bpf_lwt_push_encap(BPF_LWT_ENCAP_IP), then returns
 * BPF_LWT_REROUTE so the stack routes the packet again, now by its outer destination:
 *
 *   inner IPv4/IPv6 ──► peers_vN (LPM) ──► [outer IPv4|IPv6][GRE (+csum, +key) | UDP | -][inner]
 *
 * Encapsulations: IP-in-IP (next header 4 or 41), GRE (RFC 2784/2890, optional checksum and key)
 * and UDP (FOU, source port from a hash of the inner addresses, protocol and ports: flow_hash).
 * Outer TTL/TOS fixed per peer or inherited from the
 * inner packet. The outer IPv4 header carries DF; the route's headroom makes the path MTU right.
 *
 * ## GRE checksum
 * The GRE checksum covers the inner packet, whose transport checksum a locally sent packet has not
 * got yet at lwt_xmit (CHECKSUM_PARTIAL: the device or skb_checksum_help() finishes it later).
 * gre_csum() therefore sums the inner packet as it will be once finished: IP header plus the
 * complement of the pseudo-header sum, for TCP, UDP and ICMP (csum.h), which is also right for a
 * forwarded packet whose checksum is already final; any other packet is summed byte by byte. A GSO
 * packet keeps 0 there: bpf_lwt_push_encap marks it SKB_GSO_GRE_CSUM and the segmentation writes
 * each segment's checksum, as for the kernel's own GRE devices.
 *
 * A miss follows the table's policy (config): drop (default) or pass unencapsulated; both counted.
 *
 * ## TCP GSO over IP-in-IP (inner IPv4)
 * bpf_lwt_push_encap marks a TCP GSO packet for segmentation by the outer next header
 * (handle_gso_encap() in net/core/lwt_bpf.c). On Linux 6.18 that switch names `IPPROTO_IP` (0)
 * where IPPROTO_IPIP (4) belongs, so an IPv4-in-IPv4/IPv6 header refuses every GSO packet
 * (-EPROTONOSUPPORT): TCP stalls. The switch does accept next header 0 and then sets the right GSO
 * type (SKB_GSO_IPXIP4 / SKB_GSO_IPXIP6). So for a GSO packet with an inner IPv4 header the encap
 * pushes the outer header with next header 0 (a placeholder) and, once the push has set the GSO
 * type, writes 4 there itself (fix_placeholder, fixing the IPv4 header checksum): the packet
 * leaves the program with a true header, before the reroute's lookup or the segmentation read
 * it. An lwt_in program may not write the packet, so encap_in leaves the placeholder to
 * ipip_gso_fixup, a tc egress program on the underlay device, which writes 4 there before the
 * device segments the packet (segmentation happens after tc egress, in validate_xmit_skb). The
 * placeholder is unambiguous: protocol 0 is not used in IPv4, and an IPv6 packet with next header
 * 0 (hop-by-hop) followed by a byte 0x45..0x4f cannot be a TCP GSO packet. Non-GSO packets get 4
 * directly. Inner IPv6 (next header 41) needs nothing: the kernel matches IPPROTO_IPV6.
 *
 * Counters: peer_stats (per peer slot, per CPU: packets, inner bytes, errors) and events (misses,
 * non-IP). Packets are wire packets: a GSO packet counts its segments.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lwtun.h"
#include "parse.h"
#include "csum.h"
#include "encap.h"

/* Peer capacity; user space sets max_entries before loading. */
#define PEERS_MAX 1024

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PEERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_peer_key4);
	__type(value, struct lwtun_peer);
} peers_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, PEERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_peer_key6);
	__type(value, struct lwtun_peer);
} peers_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, PEERS_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_peer_stats);
} peer_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_ENCAP_EV_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_encap_config);
} config SEC(".maps");

/* The checked direct path (encap_xmit): which IPv4 remotes may leave by the inner route's next
 * hop, the underlay generation and the checker's lease. Never pinned: they belong to the process
 * whose checker fills them; when it is gone the lease runs out and every packet is rerouted. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, PEERS_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, __u32);
	__type(value, struct lwtun_direct_path);
} direct_paths SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LWTUN_DIRECT_STATE_MAX);
	__type(key, __u32);
	__type(value, __u64);
} direct_state SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_DIRECT_EV_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} direct_events SEC(".maps");

/* Not per CPU: a test_run may move between CPUs; the verdict says whether the entry is fresh. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_encap_preview);
} preview SEC(".maps");


/*
 * The inner flow's hash for the UDP source port, from headers inner_hash() has parsed: the
 * addresses (`a` words of each), the protocol, and for TCP/UDP (not a later fragment) the two
 * ports at `l4`. One flow always gets one value, whatever skb->hash holds. It replaces
 * bpf_get_hash_recalc(), which runs the flow dissector for every packet of an unconnected
 * socket or a forwarded packet without a hash (a connected socket's skb carries sk_txhash).
 */
static __always_inline __u32 flow_hash(const __u32 *src, const __u32 *dst, int words, __u8 proto,
				       const void *l4, int ports, void *data_end)
{
	__u32 h = proto;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++) {
		if (i >= words)
			break;
		h = mix32(h ^ src[i]) ^ dst[i];
	}
	if (ports && (proto == IPPROTO_TCP || proto == IPPROTO_UDP) && l4 + 4 <= data_end)
		h ^= *(const __u32 *)l4 * 0x9e3779b1;
	return mix32(h);
}

static __always_inline void count_event(__u32 ev, __u32 len)
{
	struct lwtun_counter *c = bpf_map_lookup_elem(&events, &ev);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline void count_path(__u32 ev, __u32 pkts, __u32 len)
{
	struct lwtun_counter *c = bpf_map_lookup_elem(&direct_events, &ev);

	if (c) {
		c->packets += pkts;
		c->bytes += len;
	}
}

/* Whether user space's checker has found, within its lease and since the last underlay change
 * it heard of, that `remote` is reached through the next hop of the tunnel routes on the device
 * this packet is leaving by. */
static __always_inline int direct_checked(struct __sk_buff *skb, const __u8 *remote)
{
	__u32 k = LWTUN_DIRECT_VALID_UNTIL, key;
	struct lwtun_direct_path *d;
	__u64 *until, *gen;

	until = bpf_map_lookup_elem(&direct_state, &k);
	if (!until || !*until || bpf_ktime_get_ns() > *until)
		return 0;
	k = LWTUN_DIRECT_GENERATION;
	gen = bpf_map_lookup_elem(&direct_state, &k);
	if (!gen)
		return 0;
	__builtin_memcpy(&key, remote, 4);
	d = bpf_map_lookup_elem(&direct_paths, &key);
	return d && d->ifindex == skb->ifindex && d->generation == (__u32)*gen;
}

/* The peer for the inner packet `off` bytes into the packet (0 at LWT hooks, ETH_HLEN at tc), or
 * NULL; fills *in. Sets *bad when the inner header is unreadable or not IP. */
static __always_inline struct lwtun_peer *lookup(struct __sk_buff *skb, __u32 off, struct inner *in,
						 int *bad)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor nh = { .pos = data + off };

	*bad = 0;
	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct lwtun_peer_key4 k = { .prefixlen = 32 };
		struct iphdr *iph;

		if (parse_iphdr(&nh, data_end, &iph) < 0) {
			*bad = 1;
			return NULL;
		}
		in->v6 = 0;
		in->ttl = iph->ttl;
		in->tos = iph->tos;
		in->df = !!(iph->frag_off & bpf_htons(IP_DF_));
		__builtin_memcpy(k.addr, &iph->daddr, 4);
		return bpf_map_lookup_elem(&peers_v4, &k);
	}
	if (skb->protocol == bpf_htons(ETH_P_IPV6)) {
		struct lwtun_peer_key6 k = { .prefixlen = 128 };
		struct ipv6hdr *ip6h;

		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0) {
			*bad = 1;
			return NULL;
		}
		in->v6 = 1;
		in->ttl = ip6h->hop_limit;
		in->tos = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
		__builtin_memcpy(k.addr, &ip6h->daddr, 16);
		return bpf_map_lookup_elem(&peers_v6, &k);
	}
	*bad = 1;
	return NULL;
}

/* The flow hash (flow_hash) of the inner packet `off` bytes into the packet, which lookup() has
 * found to be a readable IPv4 or IPv6 header; 0 if it is not. Only the UDP encap needs it, so it
 * is computed once the peer is known. */
static __always_inline __u32 inner_hash(struct __sk_buff *skb, __u32 off)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor nh = { .pos = data + off };

	if (skb->protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph;

		if (parse_iphdr(&nh, data_end, &iph) < 0)
			return 0;
		return flow_hash(&iph->saddr, &iph->daddr, 1, iph->protocol, nh.pos,
				 !ip_is_fragment(iph), data_end);
	}
	{
		struct ipv6hdr *ip6h;

		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0)
			return 0;
		/* ports only right after the fixed header (no extension headers parsed here) */
		return flow_hash((__u32 *)&ip6h->saddr, (__u32 *)&ip6h->daddr, 4, ip6h->nexthdr,
				 nh.pos, 1, data_end);
	}
}

/* BPF_OK (pass) or BPF_DROP for a miss, as the table's policy says; counted. */
static __always_inline int miss(struct __sk_buff *skb, __u8 v6)
{
	__u32 zero = 0;
	struct lwtun_encap_config *cfg = bpf_map_lookup_elem(&config, &zero);
	__u32 policy = LWTUN_MISS_DROP;

	if (cfg)
		policy = v6 ? cfg->miss_v6 : cfg->miss_v4;
	if (policy == LWTUN_MISS_PASS) {
		count_event(v6 ? LWTUN_ENCAP_EV_MISS_PASS_V6 : LWTUN_ENCAP_EV_MISS_PASS_V4, skb->len);
		return BPF_OK;
	}
	count_event(v6 ? LWTUN_ENCAP_EV_MISS_DROP_V6 : LWTUN_ENCAP_EV_MISS_DROP_V4, skb->len);
	return BPF_DROP;
}

/*
 * encap_in (forwarded packets): whether the packet, encapsulated with `len` bytes, would be
 * larger than the underlay carries (config forward_mtu) while nobody may fragment it (IPv4 with
 * DF, or IPv6). Encapsulated, it would be refused after the reroute with an ICMP error to the
 * outer source, this router itself: a silent loss. It is dropped here instead, and counted
 * (LWTUN_ENCAP_EV_TOO_BIG), so that the loss shows. The sender cannot be told: an lwt_in
 * program may not write the packet (no ICMP error of its own), and handing the packet back
 * unencapsulated (BPF_OK) to the input route's forwarding, which would answer with the route's
 * MTU, is unreliable: the kernel keeps the forwarding function in the route's lwtunnel state,
 * shared with output routes through the same route, and the first output route made through
 * it (for instance by the ICMP error itself) replaces it with dst_discard (seen on 6.18). Senders
 * behind an input route need the tunnel's MTU on their routes (Tunnel::forward_mtu). GSO packets
 * are segmented to fit (their gso_size shrinks by the encap) and are never too big.
 */
static __always_inline int too_big(struct __sk_buff *skb, const struct inner *in, __u32 len)
{
	__u32 zero = 0;
	struct lwtun_encap_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (!cfg || !cfg->forward_mtu || skb->gso_size)
		return 0;
	if (!in->v6 && !in->df)
		return 0;
	return skb->len + len > cfg->forward_mtu;
}

/* `direct`: return BPF_OK instead of BPF_LWT_REROUTE when the outer header is of the inner
 * packet's family (see encap_xmit_direct): DIRECT_ALWAYS for every such packet, DIRECT_CHECKED
 * where the checker vouches for the peer's remote (direct_checked), DIRECT_NEVER for none.
 * `xmit`: an lwt_xmit program, which may write the packet (fix_placeholder); an lwt_in program
 * may not, and leaves the placeholder to ipip_gso_fixup. */
#define DIRECT_NEVER 0
#define DIRECT_ALWAYS 1
#define DIRECT_CHECKED 2
static __always_inline int encap(struct __sk_buff *skb, int direct, int xmit)
{
	__u8 hdr[HDR_MAX] = {};
	struct lwtun_peer_stats *st;
	struct lwtun_peer *pp, p;
	struct inner in = {};
	__u32 len, slot, pkts, bytes;
	int bad, placeholder;

	pp = lookup(skb, 0, &in, &bad);
	if (!pp) {
		if (bad) {
			count_event(LWTUN_ENCAP_EV_NOT_IP, skb->len);
			return BPF_DROP;
		}
		return miss(skb, in.v6);
	}
	p = *pp; /* a copy: user space may rewrite the entry meanwhile */
	if (p.kind == LWTUN_ENCAP_UDP)
		in.hash = inner_hash(skb, 0);
	slot = p.slot;
	st = bpf_map_lookup_elem(&peer_stats, &slot);
	pkts = wire_packets(skb);
	bytes = skb->len;

	placeholder = p.kind == LWTUN_ENCAP_IPIP && !in.v6 && skb->gso_size;
	len = build(&p, &in, hdr, placeholder, skb->len);
	if (len < 20 || len > HDR_MAX)
		goto err;
	if (!xmit && too_big(skb, &in, len)) {
		count_event(LWTUN_ENCAP_EV_TOO_BIG, skb->len);
		return BPF_DROP;
	}
	if (p.kind == LWTUN_ENCAP_GRE && (p.flags & LWTUN_PEER_GRE_CSUM) && !skb->gso_size &&
	    gre_csum(skb, hdr, (p.flags & LWTUN_PEER_OUTER_V6) ? 40 : 20, len, 0, skb->len))
		goto err;
	if (bpf_lwt_push_encap(skb, BPF_LWT_ENCAP_IP, hdr, len))
		goto err;
	if (xmit && placeholder && fix_placeholder(skb, p.flags & LWTUN_PEER_OUTER_V6))
		goto err;
	if (st) {
		st->packets += pkts;
		st->bytes += bytes;
	}
	/* IPv4 in IPv4 only: see encap_xmit_direct. */
	if (direct && !(p.flags & LWTUN_PEER_OUTER_V6) && !in.v6 &&
	    (direct == DIRECT_ALWAYS || direct_checked(skb, p.remote))) {
		count_path(LWTUN_DIRECT_EV_DIRECT, pkts, bytes);
		return BPF_OK;
	}
	if (xmit)
		count_path(LWTUN_DIRECT_EV_REROUTED, pkts, bytes);
	return BPF_LWT_REROUTE;
err:
	if (st)
		st->errors += pkts;
	return BPF_DROP;
}

/*
 * The default: encap_xmit_direct's shortcut for the IPv4-in-IPv4 peers user space's checker has
 * vouched for (direct_checked: their remote is reached through this route's next hop, checked
 * since the last underlay change and within the checker's lease), BPF_LWT_REROUTE for every other
 * packet. With the checker off (TunnelBuilder::direct(false)) direct_state stays 0: always
 * rerouted.
 */
SEC("lwt_xmit")
int encap_xmit(struct __sk_buff *skb)
{
	return encap(skb, DIRECT_CHECKED, 1);
}

/*
 * encap_xmit without the second route lookup for IPv4 in IPv4 (IPIP, GRE, UDP over IPv4 outer,
 * inner IPv4): BPF_OK lets ip_finish_output2 go on with the inner route's own dst, and it picks
 * the neighbour from that route's gateway or, for a route without one, from the destination in
 * the network header, which is now the outer one. So the outer packet leaves by the inner
 * route's device and next hop, without bpf_lwt_xmit_reroute's ip_route_output_key and its
 * second pass through ip_output (about 0.3 us per packet here). Right only when the peers are
 * reached by that next hop (or on-link on that device); user space chooses it per tunnel
 * (TunnelBuilder::direct). Everything else reroutes: the kernel drops a BPF_OK packet whose
 * skb->protocol changed (4in6, 6in4), and ip6_finish_output2 reads the destination it resolves
 * before the LWT program runs, so a 6in6 packet on a route without a gateway would be sent to
 * the inner destination's neighbour.
 */
SEC("lwt_xmit")
int encap_xmit_direct(struct __sk_buff *skb)
{
	return encap(skb, DIRECT_ALWAYS, 1);
}

SEC("lwt_in")
int encap_in(struct __sk_buff *skb)
{
	return encap(skb, DIRECT_NEVER, 0);
}

/*
 * A test_run-safe twin of encap_xmit for tc (the frame starts at the Ethernet header): looks the
 * inner destination up and builds the outer header exactly as encap_xmit would, but stores it in
 * `preview` instead of pushing it (bpf_lwt_push_encap must never run under BPF_PROG_TEST_RUN).
 * TC_ACT_OK when a peer matched, TC_ACT_SHOT otherwise: a test result, never attached to a hook.
 * Counts nothing.
 */
SEC("tc")
int encap_preview(struct __sk_buff *skb)
{
	struct lwtun_encap_preview *pv;
	struct lwtun_peer *pp, p;
	struct inner in = {};
	__u32 zero = 0, len;
	int bad;

	pv = bpf_map_lookup_elem(&preview, &zero);
	if (!pv)
		return TC_ACT_SHOT;
	pv->len = 0;
	pv->slot = 0;
	__builtin_memset(pv->hdr, 0, sizeof(pv->hdr));
	if (skb->len < ETH_HLEN)
		return TC_ACT_SHOT;
	pp = lookup(skb, ETH_HLEN, &in, &bad);
	if (!pp)
		return TC_ACT_SHOT;
	p = *pp;
	if (p.kind == LWTUN_ENCAP_UDP)
		in.hash = inner_hash(skb, ETH_HLEN);
	len = build(&p, &in, pv->hdr, 0, skb->len - ETH_HLEN);
	if (len < 20 || len > HDR_MAX)
		return TC_ACT_SHOT;
	if (p.kind == LWTUN_ENCAP_GRE && (p.flags & LWTUN_PEER_GRE_CSUM) &&
	    gre_csum(skb, pv->hdr, (p.flags & LWTUN_PEER_OUTER_V6) ? 40 : 20, len, ETH_HLEN,
		     skb->len))
		return TC_ACT_SHOT;
	pv->len = len;
	pv->slot = p.slot;
	return TC_ACT_OK;
}

/*
 * tc egress on the underlay: turn the GSO placeholder (next header 0 over an inner IPv4 packet, see
 * the file comment) into IPPROTO_IPIP before the device segments the packet. Every packet, fixed
 * or not, gets TC_ACT_UNSPEC (TCX_NEXT): the next program on the hook (a capture, a counter, a
 * user's program) still runs, and after the last one the packet is sent.
 */
SEC("tc")
int ipip_gso_fixup(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct ethhdr *eth;
	__u8 ipip = IPPROTO_IPIP_;
	int proto;

	if (!skb->gso_size)
		return TC_ACT_UNSPEC;
	proto = parse_ethhdr(&nh, data_end, &eth);
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph;
		__u8 *inner;
		__u32 off;

		if (parse_iphdr(&nh, data_end, &iph) < 0)
			return TC_ACT_UNSPEC;
		inner = nh.pos;
		if (iph->protocol != 0 || (void *)(inner + 1) > data_end || (*inner >> 4) != 4)
			return TC_ACT_UNSPEC;
		off = (void *)&iph->protocol - data;
		/* The checksum covers protocol in the 16-bit word (ttl, protocol). */
		bpf_l3_csum_replace(skb, (void *)&iph->check - data, 0, bpf_htons(IPPROTO_IPIP_), 2);
		bpf_skb_store_bytes(skb, off, &ipip, 1, 0);
		return TC_ACT_UNSPEC;
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h;
		__u8 *inner;
		__u32 off;

		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0)
			return TC_ACT_UNSPEC;
		inner = nh.pos;
		if (ip6h->nexthdr != 0 || (void *)(inner + 1) > data_end || (*inner >> 4) != 4 ||
		    (*inner & 0xf) < 5)
			return TC_ACT_UNSPEC;
		off = (void *)&ip6h->nexthdr - data;
		bpf_skb_store_bytes(skb, off, &ipip, 1, 0);
		return TC_ACT_UNSPEC;
	}
	return TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
