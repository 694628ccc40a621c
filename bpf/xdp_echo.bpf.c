/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdp_echo: an XDP_TX responder for ICMP and ICMPv6 echo requests.
 *
 * An echo request (ICMP type 8 / ICMPv6 type 128, code 0) whose destination is in `echo_addrs` is
 * turned into the reply in place: MACs swapped, IP addresses swapped (which leaves the IPv4 header
 * checksum and the ICMPv6 pseudo-header sum unchanged), TTL / hop limit set to 64, the type changed to
 * the reply, and the checksums updated incrementally (RFC 1624; the ICMP checksum through
 * bpf_csum_diff). It goes back out the interface it came in on (XDP_TX). VLAN tags are kept.
 *
 * Everything else goes to the stack untouched (XDP_PASS): other addresses, other ICMP types,
 * fragments, IPv6 with extension headers before ICMPv6, and truncated or malformed headers.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"
#include "xdp_stats.h"

#define ECHO_ADDRS 1024
#define REPLY_TTL 64

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, ECHO_ADDRS);
	__type(key, struct lwtun_ip_addr);
	__type(value, __u32);
} echo_addrs SEC(".maps");

static __always_inline __u32 verdict(struct xdp_md *ctx, __u32 action)
{
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, action);
}

/* Changes the ICMP(v6) type at the start of `hdr` and updates `*sum` with bpf_csum_diff. */
static __always_inline void set_icmp_type(__u8 *hdr, __sum16 *sum, __u8 type)
{
	__be32 from = 0, to = 0;

	__builtin_memcpy(&from, hdr, 2); /* type and code; the other two bytes stay 0 */
	hdr[0] = type;
	__builtin_memcpy(&to, hdr, 2);
	*sum = csum_diff_update(*sum, &from, sizeof(from), &to, sizeof(to));
}

static __always_inline __u32 echo_v4(struct xdp_md *ctx, struct hdr_cursor *nh, void *data_end,
				     struct ethhdr *eth)
{
	struct lwtun_ip_addr key = {};
	struct icmp_echo_hdr *icmph;
	struct iphdr *iph;
	__be16 old_ttl_proto;
	__be32 tmp;

	if (parse_iphdr(nh, data_end, &iph) != IPPROTO_ICMP || ip_is_fragment(iph))
		return XDP_PASS;
	if (parse_icmphdr(nh, data_end, &icmph) != ICMP_ECHO || icmph->code != 0)
		return XDP_PASS;
	key.addr[10] = 0xff;
	key.addr[11] = 0xff;
	__builtin_memcpy(&key.addr[12], &iph->daddr, 4);
	if (!bpf_map_lookup_elem(&echo_addrs, &key))
		return XDP_PASS;

	swap_src_dst_mac(eth);
	tmp = iph->saddr;
	iph->saddr = iph->daddr;
	iph->daddr = tmp;
	old_ttl_proto = *(__be16 *)&iph->ttl;
	iph->ttl = REPLY_TTL;
	csum_replace2(&iph->check, old_ttl_proto, *(__be16 *)&iph->ttl);
	set_icmp_type((__u8 *)icmph, &icmph->checksum, ICMP_ECHOREPLY);
	return XDP_TX;
}

static __always_inline __u32 echo_v6(struct xdp_md *ctx, struct hdr_cursor *nh, void *data_end,
				     struct ethhdr *eth)
{
	struct lwtun_ip_addr key = {};
	struct icmp6hdr *icmp6h;
	struct ipv6hdr *ip6h;
	struct in6_addr tmp;

	if (parse_ip6hdr(nh, data_end, &ip6h) != IPPROTO_ICMPV6)
		return XDP_PASS;
	if (parse_icmp6hdr(nh, data_end, &icmp6h) != ICMPV6_ECHO_REQUEST || icmp6h->icmp6_code != 0)
		return XDP_PASS;
	__builtin_memcpy(key.addr, &ip6h->daddr, 16);
	if (!bpf_map_lookup_elem(&echo_addrs, &key))
		return XDP_PASS;

	swap_src_dst_mac(eth);
	tmp = ip6h->saddr;
	ip6h->saddr = ip6h->daddr;
	ip6h->daddr = tmp;
	ip6h->hop_limit = REPLY_TTL;
	set_icmp_type((__u8 *)icmp6h, &icmp6h->icmp6_cksum, ICMPV6_ECHO_REPLY);
	return XDP_TX;
}

SEC("xdp")
int xdp_echo(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct hdr_cursor nh = { .pos = data };
	struct ethhdr *eth;
	int proto;

	proto = parse_ethhdr(&nh, data_end, &eth);
	if (proto == bpf_htons(ETH_P_IP))
		return verdict(ctx, echo_v4(ctx, &nh, data_end, eth));
	if (proto == bpf_htons(ETH_P_IPV6))
		return verdict(ctx, echo_v6(ctx, &nh, data_end, eth));
	return verdict(ctx, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
