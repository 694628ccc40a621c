/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * encap.h: the outer header of an encapsulation, written for an lwtun_peer (lwtun.h): IP-in-IP,
 * GRE (+checksum, +key), UDP, over IPv4 or IPv6. Shared by the programs that push it: the tunnel
 * (lwt_encap, one peer per prefix) and the services (lwt_service, a backend per flow). The GSO
 * placeholder and the GRE checksum rules are explained in lwt_encap.bpf.c's file comment.
 *
 * Include after <linux/bpf.h>, bpf_helpers.h, bpf_endian.h, lwtun.h, parse.h and csum.h.
 */
#ifndef LWTUN_ENCAP_H
#define LWTUN_ENCAP_H

#define GRE_FLAG_CSUM 0x8000
#define GRE_FLAG_KEY 0x2000
#define IPPROTO_GRE_ 47
#define IPPROTO_IPIP_ 4
#define IPPROTO_IPV6_ 41
#define IPPROTO_UDP_ 17
#define IP_DF_ 0x4000
/* Outer header room: IPv6 (40) + GRE with key and checksum (12). */
#define HDR_MAX LWTUN_ENCAP_HDR_MAX

struct gre_hdr {
	__be16 flags;
	__be16 protocol;
};

struct udp_hdr {
	__be16 source;
	__be16 dest;
	__be16 len;
	__be16 check;
};

/* What the inner packet says about itself. */
struct inner {
	__u8 v6;
	__u8 ttl;
	__u8 tos;
	__u8 df; /* IPv4: Don't Fragment is set */
	__u32 hash; /* the flow's hash, for the UDP source port */
};

/* murmur3's finaliser: every input bit moves about half of the output bits. */
static __always_inline __u32 mix32(__u32 h)
{
	h ^= h >> 16;
	h *= 0x85ebca6b;
	h ^= h >> 13;
	h *= 0xc2b2ae35;
	h ^= h >> 16;
	return h;
}

/* Packets on the wire: a GSO packet counts its segments. */
static __always_inline __u32 wire_packets(struct __sk_buff *skb)
{
	__u32 segs = skb->gso_segs;

	return segs ? segs : 1;
}

/*
 * Writes the outer header for peer p into hdr and returns its length (0 when the peer is
 * malformed). `gso_placeholder` asks for next header 0 instead of 4 (lwt_encap.bpf.c's file comment).
 */
static __always_inline __u32 build(const struct lwtun_peer *p, const struct inner *in, __u8 *hdr,
				   int gso_placeholder, __u32 inner_len)
{
	__u32 ip_len = (p->flags & LWTUN_PEER_OUTER_V6) ? 40 : 20;
	__u32 l4_len = 0;
	__u8 next, ttl, tos;
	__u32 total;

	ttl = (p->flags & LWTUN_PEER_TTL_INHERIT) ? in->ttl : p->ttl;
	/* A fixed TOS keeps the inner ECN bits (RFC 6040 normal mode: the encapsulator copies ECN). */
	tos = (p->flags & LWTUN_PEER_TOS_INHERIT) ? in->tos : ((p->tos & ~0x3) | (in->tos & 0x3));
	if (!ttl)
		ttl = 64;

	switch (p->kind) {
	case LWTUN_ENCAP_IPIP:
		next = in->v6 ? IPPROTO_IPV6_ : (gso_placeholder ? 0 : IPPROTO_IPIP_);
		break;
	case LWTUN_ENCAP_GRE: {
		struct gre_hdr *g = (void *)(hdr + ip_len);
		__u16 flags = 0;

		next = IPPROTO_GRE_;
		l4_len = 4;
		g->protocol = in->v6 ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP);
		if (p->flags & LWTUN_PEER_GRE_CSUM) {
			/* checksum and reserved1 stay 0 here: gre_csum() or the segmentation fills it */
			flags |= GRE_FLAG_CSUM;
			l4_len += 4;
		}
		if (p->flags & LWTUN_PEER_GRE_KEY) {
			flags |= GRE_FLAG_KEY;
			__builtin_memcpy(hdr + ip_len + l4_len, &p->gre_key, 4);
			l4_len += 4;
		}
		g->flags = bpf_htons(flags);
		break;
	}
	case LWTUN_ENCAP_UDP: {
		struct udp_hdr *u = (void *)(hdr + ip_len);
		__u32 hash = in->hash;

		next = IPPROTO_UDP_;
		l4_len = 8;
		/* Ephemeral range 49152..65535 from the flow hash, as the kernel's udp_flow_src_port. */
		u->source = bpf_htons(0xc000 | ((hash ^ (hash >> 16)) & 0x3fff));
		u->dest = p->udp_dport;
		u->len = bpf_htons((__u16)(inner_len + 8));
		u->check = 0; /* RFC 6935 zero checksum; the decap accepts it */
		break;
	}
	default:
		return 0;
	}

	total = ip_len + l4_len;
	if (p->flags & LWTUN_PEER_OUTER_V6) {
		struct ipv6hdr *o = (void *)hdr;

		o->version = 6;
		o->priority = tos >> 4;
		o->flow_lbl[0] = (tos & 0xf) << 4;
		o->payload_len = bpf_htons((__u16)(inner_len + l4_len));
		o->nexthdr = next;
		o->hop_limit = ttl;
		__builtin_memcpy(&o->saddr, p->local, 16);
		__builtin_memcpy(&o->daddr, p->remote, 16);
	} else {
		struct iphdr *o = (void *)hdr;

		o->version = 4;
		o->ihl = 5;
		o->tos = tos;
		o->tot_len = bpf_htons((__u16)(inner_len + total));
		o->id = 0;
		o->frag_off = bpf_htons(IP_DF_);
		o->ttl = ttl;
		o->protocol = next;
		o->check = 0; /* bpf_lwt_push_encap fills it in */
		__builtin_memcpy(&o->saddr, p->local, 4);
		__builtin_memcpy(&o->daddr, p->remote, 4);
	}
	return total;
}

/*
 * Fills the GRE checksum (RFC 2784) of the header in hdr (outer IP header of ip_len bytes, then GRE
 * up to len) for the inner packet [off, end) of skb. Returns 0, or -1 when the packet could not be
 * read. The inner packet's sum comes from its headers when csum.h's shortcut applies (and is then
 * right for a CHECKSUM_PARTIAL packet too, whose transport checksum is finished after this hook),
 * otherwise from every byte. Not for GSO packets: handle_gso_encap() marks them SKB_GSO_GRE_CSUM
 * and the segmentation writes each segment's checksum.
 */
static __always_inline int gre_csum(struct __sk_buff *skb, __u8 *hdr, __u32 ip_len, __u32 len,
				    __u32 off, __u32 end)
{
	__s64 inner, gre;

	if (ip_len > 40 || len > HDR_MAX || len < ip_len + 8)
		return -1;
	inner = csum_inner_final(skb, off, end, 0);
	if (inner < 0)
		inner = csum_range(skb, off, end);
	if (inner < 0)
		return -1;
	/* the GRE header is 8 or 12 bytes: bpf_csum_diff wants a multiple of 4 */
	gre = bpf_csum_diff(0, 0, (__be32 *)(hdr + ip_len), len - ip_len == 12 ? 12 : 8,
			    (__u32)csum_fold64(inner));
	if (gre < 0)
		return -1;
	*(__u16 *)(hdr + ip_len + 4) = (__u16)~csum_fold64(gre);
	return 0;
}

/*
 * After the push of a GSO packet with the next header 0 placeholder (lwt_encap.bpf.c's file comment): the
 * push has already marked the packet SKB_GSO_IPXIP4/IPXIP6, so the header can now say what it
 * carries, IPPROTO_IPIP, before anything reads it (the reroute's lookup, netfilter, the
 * segmentation). The IPv4 header checksum covers the protocol in the 16-bit word (ttl, protocol).
 */
static __always_inline int fix_placeholder(struct __sk_buff *skb, int outer_v6)
{
	__u8 ipip = IPPROTO_IPIP_;

	if (outer_v6)
		return bpf_skb_store_bytes(skb, __builtin_offsetof(struct ipv6hdr, nexthdr), &ipip, 1, 0);
	if (bpf_l3_csum_replace(skb, __builtin_offsetof(struct iphdr, check), 0, bpf_htons(IPPROTO_IPIP_), 2))
		return -1;
	return bpf_skb_store_bytes(skb, __builtin_offsetof(struct iphdr, protocol), &ipip, 1, 0);
}

#endif /* LWTUN_ENCAP_H */
