/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * parse.h: bounds-checked header parsing and checksum helpers shared by lwtun's BPF programs.
 *
 * Every parser takes a cursor (`struct hdr_cursor`) and the end of the packet, checks that the whole
 * header lies inside the packet before returning a pointer to it, and advances the cursor. A parser
 * that cannot read its header returns -1 (or NULL) and leaves the cursor where it was, so the caller
 * can hand the packet to the stack untouched. The helpers work on any context that exposes `data` and
 * `data_end` (XDP and tc); they never read past `data_end`, which is what the verifier checks.
 *
 * Checksums follow RFC 1071 (one's-complement sum) and RFC 1624 (incremental update:
 * HC' = ~(~HC + ~m + m')). `csum_replace*` update a stored checksum in place when a covered field
 * changes from `old` to `new`; `csum_fold` folds a 32-bit partial sum (e.g. from bpf_csum_diff)
 * into 16 bits.
 */
#ifndef LWTUN_PARSE_H
#define LWTUN_PARSE_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/icmpv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#ifndef ETH_P_8021Q
#define ETH_P_8021Q 0x8100
#endif
#ifndef ETH_P_8021AD
#define ETH_P_8021AD 0x88A8
#endif
#ifndef IP_MF
#define IP_MF 0x2000
#endif
#ifndef IP_OFFSET
#define IP_OFFSET 0x1FFF
#endif

/* <linux/icmp.h> pulls in <linux/if.h> and glibc's <sys/socket.h>, which do not build for
 * -target bpf, so the ICMP header is declared here. */
#ifndef ICMP_ECHOREPLY
#define ICMP_ECHOREPLY 0
#endif
#ifndef ICMP_ECHO
#define ICMP_ECHO 8
#endif

/* An ICMP (IPv4) header with the echo fields (RFC 792). */
struct icmp_echo_hdr {
	__u8 type;
	__u8 code;
	__sum16 checksum;
	__be16 id;
	__be16 sequence;
};

/* VLAN tags parsed before giving up (802.1Q inside 802.1AD is the common double tag). */
#define PARSE_VLAN_MAX 2

/* Where parsing has got to. */
struct hdr_cursor {
	void *pos;
};

struct vlan_hdr {
	__be16 tci;
	__be16 encap_proto;
};

static __always_inline int proto_is_vlan(__u16 h_proto)
{
	return h_proto == bpf_htons(ETH_P_8021Q) || h_proto == bpf_htons(ETH_P_8021AD);
}

/*
 * Parses the Ethernet header and up to PARSE_VLAN_MAX VLAN tags. Returns the inner EtherType in
 * network byte order, or -1 when the frame is too short. *ethhdr points at the Ethernet header.
 */
static __always_inline int parse_ethhdr(struct hdr_cursor *nh, void *data_end, struct ethhdr **ethhdr)
{
	struct ethhdr *eth = nh->pos;
	struct vlan_hdr *vlh;
	__u16 h_proto;
	int i;

	if ((void *)(eth + 1) > data_end)
		return -1;
	vlh = (void *)(eth + 1);
	h_proto = eth->h_proto;
#pragma unroll
	for (i = 0; i < PARSE_VLAN_MAX; i++) {
		if (!proto_is_vlan(h_proto))
			break;
		if ((void *)(vlh + 1) > data_end)
			return -1;
		h_proto = vlh->encap_proto;
		vlh++;
	}
	if (proto_is_vlan(h_proto))
		return -1; /* more tags than we parse */
	*ethhdr = eth;
	nh->pos = vlh;
	return h_proto;
}

/*
 * Parses an IPv4 header, options included. Returns the L4 protocol, or -1 when the header is
 * truncated, its IHL is below 5, or its total length is shorter than the header.
 */
static __always_inline int parse_iphdr(struct hdr_cursor *nh, void *data_end, struct iphdr **iphdr)
{
	struct iphdr *iph = nh->pos;
	int hdrsize;

	if ((void *)(iph + 1) > data_end)
		return -1;
	if (iph->version != 4 || iph->ihl < 5)
		return -1;
	hdrsize = iph->ihl * 4;
	if (nh->pos + hdrsize > data_end)
		return -1;
	if (bpf_ntohs(iph->tot_len) < hdrsize)
		return -1;
	nh->pos += hdrsize;
	*iphdr = iph;
	return iph->protocol;
}

/* Whether an IPv4 packet is a fragment (more fragments follow, or a non-zero offset). */
static __always_inline int ip_is_fragment(const struct iphdr *iph)
{
	return (iph->frag_off & bpf_htons(IP_MF | IP_OFFSET)) != 0;
}

/*
 * Parses the fixed IPv6 header. Returns its next-header value (extension headers are not walked),
 * or -1 when truncated or not version 6.
 */
static __always_inline int parse_ip6hdr(struct hdr_cursor *nh, void *data_end, struct ipv6hdr **ip6hdr)
{
	struct ipv6hdr *ip6h = nh->pos;

	if ((void *)(ip6h + 1) > data_end)
		return -1;
	if (ip6h->version != 6)
		return -1;
	nh->pos = ip6h + 1;
	*ip6hdr = ip6h;
	return ip6h->nexthdr;
}

/* Parses an ICMP header (type, code, checksum, id, sequence). Returns the type or -1. */
static __always_inline int parse_icmphdr(struct hdr_cursor *nh, void *data_end,
					 struct icmp_echo_hdr **icmphdr)
{
	struct icmp_echo_hdr *icmph = nh->pos;

	if ((void *)(icmph + 1) > data_end)
		return -1;
	nh->pos = icmph + 1;
	*icmphdr = icmph;
	return icmph->type;
}

/* Parses an ICMPv6 header (type, code, checksum and the 4-byte body start). Returns the type or -1. */
static __always_inline int parse_icmp6hdr(struct hdr_cursor *nh, void *data_end, struct icmp6hdr **icmp6hdr)
{
	struct icmp6hdr *icmp6h = nh->pos;

	if ((void *)(icmp6h + 1) > data_end)
		return -1;
	nh->pos = icmp6h + 1;
	*icmp6hdr = icmp6h;
	return icmp6h->icmp6_type;
}

/* Folds a 32-bit one's-complement partial sum into 16 bits (not inverted). */
static __always_inline __u16 csum_fold_partial(__u32 csum)
{
	csum = (csum & 0xffff) + (csum >> 16);
	csum = (csum & 0xffff) + (csum >> 16);
	return (__u16)csum;
}

/* Folds a partial sum and inverts it: the value to store in a checksum field. */
static __always_inline __sum16 csum_fold(__u32 csum)
{
	return (__sum16)~csum_fold_partial(csum);
}

/*
 * RFC 1624 eqn. 3 for one 16-bit field: *sum covers a field that changes from old to new
 * (both in network byte order). HC' = ~(~HC + ~m + m').
 */
static __always_inline void csum_replace2(__sum16 *sum, __be16 old, __be16 new)
{
	__u32 c = (__u16)~*sum;

	c += (__u16)~old;
	c += (__u16)new;
	*sum = csum_fold(c);
}

/* RFC 1624 for a 32-bit field (two 16-bit words). */
static __always_inline void csum_replace4(__sum16 *sum, __be32 old, __be32 new)
{
	__u32 c = (__u16)~*sum;

	c += (__u16)~(old & 0xffff);
	c += (__u16)~(old >> 16);
	c += (__u16)(new & 0xffff);
	c += (__u16)(new >> 16);
	*sum = csum_fold(c);
}

/*
 * Incremental update with bpf_csum_diff: `from` and `to` are the old and new bytes of the covered
 * region (sizes multiples of 4). Returns the new checksum field value.
 */
static __always_inline __sum16 csum_diff_update(__sum16 old_sum, __be32 *from, __u32 from_size,
						__be32 *to, __u32 to_size)
{
	__s64 d = bpf_csum_diff(from, from_size, to, to_size, (__u16)~old_sum);

	if (d < 0)
		return old_sum; /* helper refused the sizes: leave the sum as it was */
	return csum_fold((__u32)d);
}

/* Decrements an IPv4 TTL and updates the header checksum (RFC 1624, as the kernel's ip_decrease_ttl). */
static __always_inline void ip_decrease_ttl(struct iphdr *iph)
{
	__u32 check = (__u32)iph->check;

	check += (__u32)bpf_htons(0x0100);
	iph->check = (__sum16)(check + (check >= 0xFFFF));
	iph->ttl--;
}

/* Swaps the source and destination MAC addresses. */
static __always_inline void swap_src_dst_mac(struct ethhdr *eth)
{
	__u8 h_tmp[ETH_ALEN];

	__builtin_memcpy(h_tmp, eth->h_source, ETH_ALEN);
	__builtin_memcpy(eth->h_source, eth->h_dest, ETH_ALEN);
	__builtin_memcpy(eth->h_dest, h_tmp, ETH_ALEN);
}

#endif /* LWTUN_PARSE_H */
