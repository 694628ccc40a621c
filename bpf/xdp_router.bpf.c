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
 * Route cache (off unless user space turns it on in `route_cache_cfg`): successful lookups are
 * remembered per CPU in a direct-mapped table (`route_cache`, ROUTE_CACHE_SLOTS slots chosen by
 * the flow). A frame whose every lookup input (ingress device, family, L4 protocol, TOS / flow
 * info, L4 ports, source and destination) matches a slot filled under the current generation
 * less than the maximum age ago, and whose length fits the cached MTU, is forwarded from the
 * slot without bpf_fib_lookup (counted as LWTUN_FIB_CACHE_HIT, which user space adds to
 * SUCCESS). The age is counted in jiffies where the tick rate (CONFIG_HZ) is known (rounded
 * down to whole ticks, at least one), else in nanoseconds. Route, rule and neighbour changes
 * reach cached flows within the maximum age, or at once when user space bumps the generation.
 * Only SUCCESS is cached: every other outcome is looked up each time.
 *
 * Multipath (ECMP) routes: the lookup is given the L4 protocol and ports (TCP, UDP, UDP-Lite,
 * SCTP, DCCP; 0 for other protocols, IPv4 fragments and IPv6 extension headers), so with
 * net.ipv4/ipv6.fib_multipath_hash_policy 1 the kernel spreads flows over the next hops by
 * 5-tuple, as it does for the packets it forwards itself (policy 0, the default, hashes the
 * addresses only, for IPv6 also the flow label and next header). The ports are part of the
 * cache key, so every flow keeps the next hop its own lookup chose: a cached answer is never
 * reused for another flow of the same pair of addresses. The cost is one slot per flow instead
 * of one per pair of addresses.
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
#define ROUTE_CACHE_SLOTS 1024

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

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_xdp_route_cache_cfg);
} route_cache_cfg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, ROUTE_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct lwtun_xdp_route_slot);
} route_cache SEC(".maps");

/* Set by user space before the load (read-only after it, so the verifier drops the branches
 * not taken and never checks a helper the kernel lacks):
 * tick_hz: the kernel's CONFIG_HZ, 0 where its configuration cannot be read (a __kconfig extern
 * would make libbpf refuse the whole object there, as in containers without /boot);
 * has_coarse_clock: 1 where the kernel has bpf_ktime_get_coarse_ns (5.11). */
const volatile __u32 tick_hz = 0;
const volatile __u8 has_coarse_clock = 1;

/* The cache's clock: jiffies (an inlined load) where the tick rate is known, since
 * bpf_ktime_get_coarse_ns is a helper call that costs ~18 ns here; else coarse nanoseconds,
 * and before 5.11 bpf_ktime_get_ns (the same unit, a few ns dearer). */
static __always_inline __u64 cache_now(void)
{
	if (tick_hz)
		return bpf_jiffies64();
	return has_coarse_clock ? bpf_ktime_get_coarse_ns() : bpf_ktime_get_ns();
}

/* The configured age in cache_now() units; in ticks it is rounded down, and at least one. */
static __always_inline __u64 cache_max_age(struct lwtun_xdp_route_cache_cfg *cfg)
{
	__u64 ticks;

	if (!tick_hz)
		return cfg->max_age_ns;
	ticks = cfg->max_age_ticks;
	if (!ticks) {
		ticks = cfg->max_age_ns * tick_hz / 1000000000ULL;
		if (!ticks)
			ticks = 1;
		cfg->max_age_ticks = ticks;
	}
	return ticks;
}

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

/* Whether `slot` holds the lookup for this frame's key under the same generation: bytes 8..64
 * (generation, ingress device, flow info, family, protocol, ports, addresses) as 64-bit words. */
static __always_inline int slot_matches(const struct lwtun_xdp_route_slot *slot,
					const struct lwtun_xdp_route_slot *key)
{
	const __u64 *a = (const __u64 *)&slot->gen, *b = (const __u64 *)&key->gen;

	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) |
		(a[5] ^ b[5]) | (a[6] ^ b[6])) == 0;
}

/* The L4 ports of a packet whose L4 header starts at `l4`, as the header holds them (source
 * then destination, network byte order) in one word, for the protocols whose header opens with
 * them (the kernel's flow dissector reads ports for these too); 0 for every other protocol,
 * ICMP included, and for a header cut short. */
static __always_inline __u32 l4_ports(void *l4, void *data_end, __u8 proto)
{
	__u32 *ports = l4;

	switch (proto) {
	case IPPROTO_TCP:
	case IPPROTO_UDP:
	case IPPROTO_UDPLITE:
	case IPPROTO_SCTP:
	case IPPROTO_DCCP:
		break;
	default:
		return 0;
	}
	if ((void *)(ports + 1) > data_end)
		return 0;
	return *ports;
}

/* The ports of an IPv4 packet: 0 for every fragment (only the first has them), so the fragments
 * of one datagram take one path, as the kernel's flow dissector does. */
static __always_inline __u32 ipv4_ports(const struct iphdr *iph, void *l4, void *data_end)
{
	if (ip_is_fragment(iph))
		return 0;
	return l4_ports(l4, data_end, iph->protocol);
}

/* Redirects the frame through the port `egress` with the TTL / hop limit decremented and the
 * MACs rewritten; a device that is not a port leaves the frame untouched for the stack. The
 * redirect happens after we return, so the rewrite after bpf_redirect_map is in time. */
static __always_inline __u32 forward(struct xdp_md *ctx, struct ethhdr *eth, struct iphdr *iph,
				     struct ipv6hdr *ip6h, __u32 egress, const __u8 *smac,
				     const __u8 *dmac)
{
	__u32 action = bpf_redirect_map(&ports, egress, XDP_PASS);

	if (action != XDP_REDIRECT)
		return verdict(ctx, action);
	if (iph)
		ip_decrease_ttl(iph);
	else if (ip6h)
		ip6h->hop_limit--;
	__builtin_memcpy(eth->h_dest, dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, smac, ETH_ALEN);
	return verdict(ctx, action);
}

/* The slot index of a flow: its addresses, ingress device and ports folded (IPv4 addresses are
 * in word 0, the other words are zero). */
static __always_inline __u32 slot_index(__u32 x)
{
	return (x ^ (x >> 10) ^ (x >> 20) ^ (x >> 30)) & (ROUTE_CACHE_SLOTS - 1);
}

SEC("xdp")
int xdp_router(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct lwtun_xdp_route_slot key = {}, *slot = NULL;
	struct lwtun_xdp_route_cache_cfg *cfg;
	struct bpf_fib_lookup fib;
	struct ethhdr *eth = data;
	struct hdr_cursor nh = { .pos = data };
	struct ipv6hdr *ip6h = NULL;
	struct iphdr *iph = NULL;
	__u32 zero = 0, idx, ports;
	__u32 tot_len; /* the whole IP packet, as bpf_fib_lookup's MTU check wants it */
	__u64 now = 0;
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
		ports = ipv4_ports(iph, nh.pos, data_end);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
		/* IPv4 cache probe, straight from the header: the slot's words 8..64 as this CPU
		 * lays them out (generation | ingress << 32, tos | family << 32 | protocol << 40,
		 * ports, source, 0, destination, 0). A miss falls through to the general path. */
		cfg = bpf_map_lookup_elem(&route_cache_cfg, &zero);
		if (cfg && cfg->gen && cfg->max_age_ns) {
			__u32 in = ctx->ingress_ifindex, saddr = iph->saddr, daddr = iph->daddr;

			idx = slot_index(saddr ^ daddr ^ in ^ ports);
			slot = bpf_map_lookup_elem(&route_cache, &idx);
			if (slot) {
				const __u64 *w = (const __u64 *)&slot->gen;
				__u64 w0 = cfg->gen | (__u64)in << 32;
				__u64 w1 = iph->tos | (__u64)AF_INET << 32 | (__u64)iph->protocol << 40;

				if (((w[0] ^ w0) | (w[1] ^ w1) | (w[2] ^ ports) | (w[3] ^ saddr) | w[4] |
				     (w[5] ^ daddr) | w[6]) == 0 &&
				    cache_now() - slot->filled < cache_max_age(cfg) &&
				    bpf_ntohs(iph->tot_len) <= slot->mtu) {
					count_fib(LWTUN_FIB_CACHE_HIT);
					return forward(ctx, eth, iph, NULL, slot->egress, slot->smac,
						       slot->dmac);
				}
			}
			slot = NULL;
		}
#endif
		key.family = AF_INET;
		key.flowinfo = iph->tos;
		key.proto = iph->protocol;
		key.ports = ports;
		key.src[0] = iph->saddr;
		key.dst[0] = iph->daddr;
		tot_len = bpf_ntohs(iph->tot_len);
	} else if (eth->h_proto == bpf_htons(ETH_P_IPV6)) {
		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0) {
			count_fib(LWTUN_FIB_NOT_IP);
			return verdict(ctx, XDP_PASS);
		}
		if (ip6h->hop_limit <= 1) {
			count_fib(LWTUN_FIB_TTL_EXPIRED);
			return verdict(ctx, XDP_PASS);
		}
		key.family = AF_INET6;
		key.flowinfo = *(__be32 *)ip6h & IPV6_FLOWINFO_MASK;
		key.proto = ip6h->nexthdr;
		/* Extension headers are not walked: behind one the ports stay 0 (nexthdr is the
		 * extension's), so such flows are spread by their addresses only. */
		key.ports = l4_ports(nh.pos, data_end, ip6h->nexthdr);
		__builtin_memcpy(key.src, &ip6h->saddr, sizeof(key.src));
		__builtin_memcpy(key.dst, &ip6h->daddr, sizeof(key.dst));
		/* The MTU counts the fixed header too (the stack compares the whole packet). */
		tot_len = bpf_ntohs(ip6h->payload_len) + sizeof(*ip6h);
	} else {
		count_fib(LWTUN_FIB_NOT_IP);
		return verdict(ctx, XDP_PASS);
	}
	key.ifindex = ctx->ingress_ifindex;

	cfg = bpf_map_lookup_elem(&route_cache_cfg, &zero);
	if (cfg && cfg->gen && cfg->max_age_ns) {
		key.gen = cfg->gen;
		idx = slot_index(key.dst[3] ^ key.src[3] ^ key.dst[0] ^ key.src[0] ^ key.ifindex ^
				 key.ports);
		slot = bpf_map_lookup_elem(&route_cache, &idx);
		now = cache_now();
		if (slot && slot_matches(slot, &key) && now - slot->filled < cache_max_age(cfg) &&
		    tot_len <= slot->mtu) {
			/* Counted as a hit only; user space adds hits to SUCCESS. */
			count_fib(LWTUN_FIB_CACHE_HIT);
			return forward(ctx, eth, iph, ip6h, slot->egress, slot->smac, slot->dmac);
		}
	}

	__builtin_memset(&fib, 0, sizeof(fib));
	fib.family = key.family;
	fib.l4_protocol = key.proto;
	/* sport and dport, adjacent in both: what a multipath route's hash (policy 1) reads. */
	__builtin_memcpy(&fib.sport, &key.ports, sizeof(key.ports));
	fib.tot_len = tot_len > 0xffff ? 0xffff : tot_len;
	fib.ifindex = key.ifindex;
	if (iph) {
		fib.tos = iph->tos;
		fib.ipv4_src = key.src[0];
		fib.ipv4_dst = key.dst[0];
	} else {
		fib.flowinfo = key.flowinfo;
		__builtin_memcpy(fib.ipv6_src, key.src, sizeof(fib.ipv6_src));
		__builtin_memcpy(fib.ipv6_dst, key.dst, sizeof(fib.ipv6_dst));
	}
	{
		__u32 *flags = bpf_map_lookup_elem(&router_fib_flags, &zero);

		rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), flags ? (*flags & BPF_FIB_LOOKUP_DIRECT) : 0);
	}
	count_fib(rc < 0 ? LWTUN_FIB_RESULTS - 1 : (__u32)rc);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		return verdict(ctx, rc < 0 ? XDP_PASS : fib_fallback(rc));
	if (slot) {
		/* The generation was read before the lookup: a fill racing with a flush is tagged
		 * with the old generation and never used. */
		key.filled = now;
		key.egress = fib.ifindex;
		key.mtu = fib.mtu_result;
		__builtin_memcpy(key.smac, fib.smac, ETH_ALEN);
		__builtin_memcpy(key.dmac, fib.dmac, ETH_ALEN);
		*slot = key;
	}
	/* Only devices the user made ports are forwarded here; the rest take the stack's path. */
	return forward(ctx, eth, iph, ip6h, fib.ifindex, fib.smac, fib.dmac);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
