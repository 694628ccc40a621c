/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdp_router: IPv4 and IPv6 forwarding in XDP with bpf_fib_lookup (after the kernel's
 * samples/bpf/xdp_fwd_kern.c and the XDP tutorial's router).
 *
 * For every IPv4 or IPv6 frame with TTL / hop limit above 1, the kernel FIB is asked where it goes.
 * On BPF_FIB_LKUP_RET_SUCCESS, when the egress device is a port in the `ports` devmap
 * (BPF_MAP_TYPE_DEVMAP_HASH keyed by ifindex), the TTL / hop limit is decremented (the IPv4 header
 * checksum updated incrementally), the MACs are rewritten from the lookup and the frame is redirected
 * through the devmap. Every other outcome is decided here:
 *
 *   BLACKHOLE                    XDP_DROP (the kernel would drop it silently too)
 *   UNREACHABLE, PROHIBIT        XDP_PASS (the stack answers with the ICMP error)
 *   NOT_FWDED (local, broadcast) XDP_PASS
 *   FWD_DISABLED                 XDP_PASS (forwarding off on the ingress device: the stack decides)
 *   UNSUPP_LWT                   XDP_PASS (the route has LWT state: encap in the stack)
 *   NO_NEIGH                     XDP_PASS (the stack resolves the neighbour; later frames are fast)
 *   FRAG_NEEDED                  XDP_PASS (the stack fragments or sends "fragmentation needed")
 *   NO_SRC_ADDR, unknown codes   XDP_PASS
 *   egress not a devmap port     XDP_PASS
 *   TTL / hop limit <= 1         XDP_PASS (the stack sends time exceeded)
 *   not IP, VLAN-tagged, broken  XDP_PASS
 *
 * `fib_results` counts the outcomes per return code (LWTUN_FIB_*), per CPU. `router_fib_flags[0]`
 * holds the bpf_fib_lookup flags user space chose: 0 (full lookup through the FIB rules, like the
 * stack) or BPF_FIB_LOOKUP_DIRECT (the main table only, skipping `ip rule`: faster).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"
#include "xdp_stats.h"

#define AF_INET 2
#define AF_INET6 10
#define IPV6_FLOWINFO_MASK bpf_htonl(0x0FFFFFFF)
#define ROUTER_PORTS 256

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP_HASH);
	__uint(max_entries, ROUTER_PORTS);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_FIB_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} fib_results SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} router_fib_flags SEC(".maps");

static __always_inline void count_fib(__u32 slot)
{
	__u64 *n;

	if (slot >= LWTUN_FIB_SLOTS)
		slot = LWTUN_FIB_RESULTS - 1;
	n = bpf_map_lookup_elem(&fib_results, &slot);
	if (n)
		(*n)++;
}

static __always_inline __u32 verdict(struct xdp_md *ctx, __u32 action)
{
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, action);
}

/* What a non-success lookup result means for the frame (see the table above). */
static __always_inline __u32 fib_fallback(int rc)
{
	if (rc == BPF_FIB_LKUP_RET_BLACKHOLE)
		return XDP_DROP;
	return XDP_PASS;
}

SEC("xdp")
int xdp_router(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct bpf_fib_lookup fib = {};
	struct ethhdr *eth = data;
	struct hdr_cursor nh = { .pos = data };
	struct ipv6hdr *ip6h = NULL;
	struct iphdr *iph = NULL;
	__u32 action;
	int rc;

	if ((void *)(eth + 1) > data_end) {
		count_fib(LWTUN_FIB_NOT_IP);
		return verdict(ctx, XDP_PASS);
	}
	nh.pos = eth + 1;
	if (eth->h_proto == bpf_htons(ETH_P_IP)) {
		if (parse_iphdr(&nh, data_end, &iph) < 0) {
			count_fib(LWTUN_FIB_NOT_IP);
			return verdict(ctx, XDP_PASS);
		}
		if (iph->ttl <= 1) {
			count_fib(LWTUN_FIB_TTL_EXPIRED);
			return verdict(ctx, XDP_PASS);
		}
		fib.family = AF_INET;
		fib.tos = iph->tos;
		fib.l4_protocol = iph->protocol;
		fib.tot_len = bpf_ntohs(iph->tot_len);
		fib.ipv4_src = iph->saddr;
		fib.ipv4_dst = iph->daddr;
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0) {
			count_fib(LWTUN_FIB_NOT_IP);
			return verdict(ctx, XDP_PASS);
		}
		if (ip6h->hop_limit <= 1) {
			count_fib(LWTUN_FIB_TTL_EXPIRED);
			return verdict(ctx, XDP_PASS);
		}
		fib.family = AF_INET6;
		fib.flowinfo = *(__be32 *)ip6h & IPV6_FLOWINFO_MASK;
		fib.l4_protocol = ip6h->nexthdr;
		fib.tot_len = bpf_ntohs(ip6h->payload_len);
		__builtin_memcpy(fib.ipv6_src, &ip6h->saddr, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, &ip6h->daddr, sizeof(fib.ipv6_dst));
	} else {
		count_fib(LWTUN_FIB_NOT_IP);
		return verdict(ctx, XDP_PASS);
	}
	fib.ifindex = ctx->ingress_ifindex;

	{
		__u32 zero = 0, *flags = bpf_map_lookup_elem(&router_fib_flags, &zero);

		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), flags ? (*flags & BPF_FIB_LOOKUP_DIRECT) : 0);
	}
	count_fib(rc < 0 ? LWTUN_FIB_RESULTS - 1 : (__u32)rc);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return verdict(ctx, rc < 0 ? XDP_PASS : fib_fallback(rc));

	/* Only devices the user made ports are forwarded here; the rest take the stack's path
	 * (the miss action is XDP_PASS, and the frame is then left as it came). The redirect
	 * happens after we return, so the rewrite below is in time, and one devmap lookup does. */
	action = bpf_redirect_map(&ports, fib.ifindex, XDP_PASS);
	if (action != XDP_REDIRECT)
		return verdict(ctx, action);
	if (iph)
		ip_decrease_ttl(iph);
	else if (ip6h)
		ip6h->hop_limit--;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	return verdict(ctx, action);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
