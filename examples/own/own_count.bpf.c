/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * own_count: a user's own BPF object, not one of lwtun's: the programs that
 * examples/own_program.rs and tests/own_program.rs load with libbpf-rs and hand to lwtun (an LWT
 * route, a chain stage, a dispatcher member, a stage in front of a capture).
 *
 * Every program counts the packets it sees by IP protocol into one map, own_counts, at index
 * PLACE * OWN_PROTOS + protocol, and lets them go on with its hook's pass verdict:
 *
 *   own_lwt_xmit  SEC("lwt_xmit")  BPF_OK       packets start at the IP header   place 0
 *   own_tc        SEC("tc")        TC_ACT_OK    packets start at Ethernet        place 1
 *   own_xdp       SEC("xdp")       XDP_PASS     packets start at Ethernet        place 2
 *   own_stage     SEC("lwt_xmit")  the chain's  a stage that knows lwtun chains  place 3
 *
 * own_stage is built on lwtun's bpf/chain.h: it goes on with lwtun_chain_next(), so the stages
 * after it and the chain's exit hook (where a capture sits) see the packet too. The other three
 * know nothing of lwtun and end a chain with their own verdict.
 *
 * Build (examples/own/build.sh; ./scripts/bpf-objects.sh --check checks the committed object):
 *   clang -O2 -g -target bpf -I bpf -c examples/own/own_count.bpf.c -o examples/own/own_count.bpf.o
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/in6.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "../../bpf/chain.h"

#define OWN_PROTOS 5 /* 0 ICMP, 1 ICMPv6, 2 TCP, 3 UDP, 4 anything else */
#define OWN_PLACES 4 /* 0 own_lwt_xmit, 1 own_tc, 2 own_xdp, 3 own_stage */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, OWN_PLACES * OWN_PROTOS);
	__type(key, __u32);
	__type(value, __u64);
} own_counts SEC(".maps");

static __always_inline __u32 proto_index(__u8 proto)
{
	switch (proto) {
	case IPPROTO_ICMP:
		return 0;
	case IPPROTO_ICMPV6:
		return 1;
	case IPPROTO_TCP:
		return 2;
	case IPPROTO_UDP:
		return 3;
	default:
		return 4;
	}
}

static __always_inline void count(__u32 place, __u8 proto)
{
	__u32 key = place * OWN_PROTOS + proto_index(proto);
	__u64 *n = bpf_map_lookup_elem(&own_counts, &key);

	if (n)
		__sync_fetch_and_add(n, 1);
}

/* The IP protocol of a packet whose IP header starts at `offset`; 255 when unknown. */
static __always_inline __u8 skb_proto(struct __sk_buff *skb, __u32 offset)
{
	__u8 first = 0, proto = 255;

	if (bpf_skb_load_bytes(skb, offset, &first, 1) < 0)
		return 255;
	if (first >> 4 == 4)
		bpf_skb_load_bytes(skb, offset + 9, &proto, 1);
	else if (first >> 4 == 6)
		bpf_skb_load_bytes(skb, offset + 6, &proto, 1);
	return proto;
}

SEC("lwt_xmit")
int own_lwt_xmit(struct __sk_buff *skb)
{
	count(0, skb_proto(skb, 0));
	return BPF_OK;
}

SEC("tc")
int own_tc(struct __sk_buff *skb)
{
	if (skb->protocol == bpf_htons(ETH_P_IP) || skb->protocol == bpf_htons(ETH_P_IPV6))
		count(1, skb_proto(skb, ETH_HLEN));
	else
		count(1, 255);
	return TC_ACT_OK;
}

SEC("xdp")
int own_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	__u8 *ip = data + sizeof(*eth);
	__u8 proto = 255;

	if ((void *)(ip + 40) <= end) {
		if (eth->h_proto == bpf_htons(ETH_P_IP))
			proto = ip[9];
		else if (eth->h_proto == bpf_htons(ETH_P_IPV6))
			proto = ip[6];
	} else if ((void *)(ip + 20) <= end && eth->h_proto == bpf_htons(ETH_P_IP)) {
		proto = ip[9];
	}
	count(2, proto);
	return XDP_PASS;
}

SEC("lwt_xmit")
int own_stage(struct __sk_buff *skb)
{
	count(3, skb_proto(skb, 0));
	return lwtun_chain_next(skb, BPF_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
