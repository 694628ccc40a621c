/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * csum.h: one's-complement sums (RFC 1071) over packet bytes, for the GRE checksum that the encap
 * writes and the decap checks.
 *
 * Two ways to get the sum of an inner IP packet:
 *  - csum_range(): every byte, in 256-byte chunks through bpf_loop (any length, linear or not);
 *    built with LWTUN_NO_BPF_LOOP (the *_compat objects, for kernels before 5.17) the chunks
 *    are walked by a bounded loop instead, which the verifier follows chunk by chunk.
 *  - csum_inner_final(): from the headers alone. When a TCP, UDP or ICMP packet's own checksum is
 *    right, its transport header and payload sum to the complement of its pseudo-header sum (zero
 *    for ICMPv4, which has none). So the inner packet sums to [IP header] + ~[pseudo header], and
 *    that holds as soon as the transport checksum is final, even while the bytes in the packet
 *    still carry a partial checksum (CHECKSUM_PARTIAL: locally sent packets whose checksum the
 *    device or skb_checksum_help() finishes after lwt_xmit). This is the kernel's local checksum
 *    offload (lco_csum()) idea. It does not apply to fragments, IPv4 options, IPv6 extension
 *    headers, IPv4 UDP without checksum, other protocols, or packets with trailing bytes: the
 *    caller then sums the bytes.
 */
#ifndef LWTUN_CSUM_H
#define LWTUN_CSUM_H

#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define CSUM_CHUNK 256
#define LWTUN_CSUM_CHUNKS_NO_LOOP 8

/* Scratch space for csum_range(), one per CPU (one more word: the zero pad of an odd tail). */
struct csum_buf {
	__u32 w[CSUM_CHUNK / 4 + 1];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct csum_buf);
} csum_scratch SEC(".maps");

struct csum_ctx {
	struct __sk_buff *skb;
	__u32 off;
	__u32 end;
	__s64 sum;
};

#ifdef LWTUN_NO_BPF_LOOP
#define CSUM_CHUNK_FN static __always_inline long
#else
#define CSUM_CHUNK_FN static long
#endif

/* bpf_loop callback: adds one chunk of [off, end) to the one's-complement sum. */
CSUM_CHUNK_FN csum_chunk(__u64 index, void *arg)
{
	struct csum_ctx *ctx = arg;
	__u32 zero = 0, len, size4;
	struct csum_buf *buf;

	if (ctx->off >= ctx->end)
		return 1;
	len = ctx->end - ctx->off;
	if (len > CSUM_CHUNK)
		len = CSUM_CHUNK;
	/* Keep the compiler from folding the bounds, then give them to the verifier as
	 * arithmetic: len is in [1, CSUM_CHUNK] here (off < end), and ((len - 1) & (CHUNK - 1)) + 1
	 * keeps it so while proving it. A branch-checked lower bound (len < 1) is lost by the
	 * verifiers before 6.3 (6.1 refused the load below as "size=0"). */
	asm volatile("" : "+r"(len));
	len = ((len - 1) & (CSUM_CHUNK - 1)) + 1;
	buf = bpf_map_lookup_elem(&csum_scratch, &zero);
	if (!buf) {
		ctx->sum = -1;
		return 1;
	}
	/* zero the last word so the bytes after `len` pad with zeros (RFC 1071) */
	buf->w[((len - 1) / 4) & (CSUM_CHUNK / 4 - 1)] = 0;
	if (bpf_skb_load_bytes(ctx->skb, ctx->off, buf, len) < 0) {
		ctx->sum = -1;
		return 1;
	}
	size4 = (len + 3) & ~3U;
	if (size4 > CSUM_CHUNK)
		return 1;
	ctx->sum = bpf_csum_diff(0, 0, (__be32 *)buf, size4, (__u32)ctx->sum);
	if (ctx->sum < 0)
		return 1;
	ctx->off += len;
	return 0;
}

/* The 32-bit partial sum of the packet's bytes [off, end) (off even), or -1. */
static __always_inline __s64 csum_range(struct __sk_buff *skb, __u32 off, __u32 end)
{
	struct csum_ctx ctx = { .skb = skb, .off = off, .end = end, .sum = 0 };

	if (end <= off || end - off > 0xffff)
		return -1;
#ifdef LWTUN_NO_BPF_LOOP
	/* The verifier walks a bounded loop iteration by iteration, through every path of the
	 * program before it: 256 chunks (64 KiB) went past the 1M-instruction limit on 5.10. So
	 * without bpf_loop a byte-by-byte sum covers LWTUN_CSUM_CHUNKS_NO_LOOP chunks (2 KiB, a
	 * full-size packet); a longer range sums to -1, which the callers treat as a failed sum. */
	if (end - off > LWTUN_CSUM_CHUNKS_NO_LOOP * CSUM_CHUNK)
		return -1;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < LWTUN_CSUM_CHUNKS_NO_LOOP; i++)
		if (csum_chunk(i, &ctx))
			break;
#else
	bpf_loop((end - off + CSUM_CHUNK - 1) / CSUM_CHUNK, csum_chunk, &ctx, 0);
#endif
	if (ctx.sum < 0 || ctx.off != end)
		return -1;
	return (__u32)ctx.sum;
}

/* Folds a partial sum of up to 48 bits into 16 (not inverted). */
static __always_inline __u16 csum_fold64(__u64 sum)
{
	sum = (sum & 0xffffffff) + (sum >> 32);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	return (__u16)sum;
}

/* Adds a 16-bit value (as loaded from the packet) to a partial sum. */
static __always_inline __u64 csum_add16(__u64 sum, __u16 v)
{
	return sum + v;
}

/* Whether the TCP or UDP checksum field at l4_off holds `pseudo` (folded, not inverted), as
 * CHECKSUM_PARTIAL leaves it. */
static __always_inline int csum_field_partial(struct __sk_buff *skb, __u32 l4_off, __u8 proto,
					      __u16 pseudo)
{
	__u16 field;
	__u32 at;

	if (proto == IPPROTO_TCP)
		at = l4_off + 16;
	else if (proto == IPPROTO_UDP)
		at = l4_off + 6;
	else
		return 0;
	if (bpf_skb_load_bytes(skb, at, &field, 2) < 0)
		return 0;
	return field == pseudo;
}

/*
 * The partial sum (fold it with csum_fold64) the inner IP packet [off, end) of skb has once its
 * transport checksum is final, from its headers (see the file comment), or -1 when that shortcut
 * does not apply. With only_partial, also -1 unless the packet is a TCP or UDP one whose checksum
 * field holds exactly what CHECKSUM_PARTIAL leaves there (the folded pseudo-header sum, not
 * inverted): a receiver uses that to tell an unfinished checksum from a wrong one.
 */
static __always_inline __s64 csum_inner_final(struct __sk_buff *skb, __u32 off, __u32 end,
					       int only_partial)
{
	__u8 version;
	__u64 sum;
	__s64 h;

	if (bpf_skb_load_bytes(skb, off, &version, 1) < 0)
		return -1;
	if ((version >> 4) == 4) {
		struct iphdr ip;
		__u16 l4_len, check;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)) < 0)
			return -1;
		if (ip.ihl != 5 || bpf_ntohs(ip.tot_len) != end - off)
			return -1;
		if (ip.frag_off & bpf_htons(0x3fff)) /* MF or an offset: a fragment */
			return -1;
		h = bpf_csum_diff(0, 0, (__be32 *)&ip, sizeof(ip), 0);
		if (h < 0)
			return -1;
		sum = (__u32)h;
		if (ip.protocol == IPPROTO_ICMP)
			return only_partial ? -1 : sum; /* no pseudo header: sums to zero */
		if (ip.protocol == IPPROTO_UDP) {
			if (bpf_skb_load_bytes(skb, off + sizeof(ip) + 6, &check, 2) < 0 || !check)
				return -1; /* no UDP checksum: the payload is not covered */
		} else if (ip.protocol != IPPROTO_TCP) {
			return -1;
		}
		l4_len = end - off - sizeof(ip);
		{
			__u64 ph = 0;

			ph = csum_add16(ph, (__u16)ip.saddr);
			ph = csum_add16(ph, (__u16)(ip.saddr >> 16));
			ph = csum_add16(ph, (__u16)ip.daddr);
			ph = csum_add16(ph, (__u16)(ip.daddr >> 16));
			ph = csum_add16(ph, bpf_htons(ip.protocol));
			ph = csum_add16(ph, bpf_htons(l4_len));
			if (only_partial && !csum_field_partial(skb, off + sizeof(ip), ip.protocol,
								csum_fold64(ph)))
				return -1;
			sum += (__u16)~csum_fold64(ph);
		}
		return sum;
	}
	if ((version >> 4) == 6) {
		struct ipv6hdr ip6;
		__u32 l4_len;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)) < 0)
			return -1;
		if (end - off < sizeof(ip6))
			return -1;
		l4_len = end - off - sizeof(ip6);
		if (bpf_ntohs(ip6.payload_len) != l4_len)
			return -1;
		if (ip6.nexthdr == IPPROTO_UDP) {
			__u16 check;

			if (bpf_skb_load_bytes(skb, off + sizeof(ip6) + 6, &check, 2) < 0 || !check)
				return -1;
		} else if (ip6.nexthdr != IPPROTO_TCP && ip6.nexthdr != 58 /* ICMPv6 */) {
			return -1;
		}
		h = bpf_csum_diff(0, 0, (__be32 *)&ip6, sizeof(ip6), 0);
		if (h < 0)
			return -1;
		sum = (__u32)h;
		{
			/* pseudo header: both addresses (inside the sum above too), length, next header */
			__be32 tail[2] = { bpf_htonl(l4_len), bpf_htonl(ip6.nexthdr) };
			__s64 ph = bpf_csum_diff(0, 0, (__be32 *)&ip6.saddr, 32, 0);

			if (ph < 0)
				return -1;
			ph = bpf_csum_diff(0, 0, tail, sizeof(tail), (__u32)ph);
			if (ph < 0)
				return -1;
			if (only_partial && !csum_field_partial(skb, off + sizeof(ip6), ip6.nexthdr,
								csum_fold64((__u32)ph)))
				return -1;
			sum += (__u16)~csum_fold64((__u32)ph);
		}
		return sum;
	}
	return -1;
}

#endif /* LWTUN_CSUM_H */
