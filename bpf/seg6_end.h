/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * seg6_end.h: the SRv6 parsing and decision logic shared by the End.BPF functions
 * (lwt_seg6local programs in seg6_end.bpf.c) and their twins (lwt_xmit programs of the same logic
 * that BPF_PROG_TEST_RUN can run: the kernel has no test_run for lwt_seg6local, and the seg6
 * helpers work in lwt_seg6local programs only).
 *
 * Everything reads the packet with bpf_skb_load_bytes, which every skb program type has. The
 * packet starts at the IPv6 header; lwtun handles an SRH right after it (what the kernel's seg6
 * encap and every lwtun route push) and counts anything else as malformed.
 */
#ifndef LWTUN_SEG6_END_H
#define LWTUN_SEG6_END_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lwtun.h"

#define SEG6_IPV6_LEN 40
#define SEG6_SRH_OFF SEG6_IPV6_LEN
#define SEG6_SRH_FIXED 8
#define SEG6_SL_OFF (SEG6_SRH_OFF + 3)
#define SEG6_TAG_OFF (SEG6_SRH_OFF + 6)
#define SEG6_DADDR_OFF 24
#define SEG6_NEXTHDR_ROUTING 43
#define SEG6_NEXTHDR_IPV6 41
#define SEG6_SRH_TYPE 4

#define SEG6_RULES_MAX 1024

/* The function a program runs (selects the rule fields used). */
#define SEG6_FN_TAG LWTUN_SEG6_FN_TAG
#define SEG6_FN_END_X LWTUN_SEG6_FN_END_X
#define SEG6_FN_END_DT6 LWTUN_SEG6_FN_END_DT6

/* SEG6_LOCAL_ACTION_* (linux/seg6_local.h, which pulls libc headers into a BPF build). */
#define SEG6_ACTION_END_X 2
#define SEG6_ACTION_END_DT6 7

/* The fixed part of a segment routing header (RFC 8754). */
struct seg6_srh_fixed {
	__u8 nexthdr;
	__u8 hdrlen;        /* in 8-octet units, not counting the first 8 */
	__u8 type;          /* 4 */
	__u8 segments_left;
	__u8 last_entry;    /* "first segment": index of the last element of the list */
	__u8 flags;
	__be16 tag;
};

/* What seg6_parse found. */
struct seg6_pkt {
	__u32 srh_len;          /* (hdrlen + 1) * 8 */
	__u8 nexthdr;           /* after the SRH */
	__u8 segments_left;
	__u8 last_entry;
	__u8 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SEG6_RULES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_redirect_key6);
	__type(value, struct lwtun_seg6_rule);
} rules SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_seg6_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_SEG6_EV_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} events SEC(".maps");

static __always_inline void seg6_count(__u32 ev, __u32 len)
{
	struct lwtun_counter *c = bpf_map_lookup_elem(&events, &ev);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/* Checks the IPv6 header and the SRH as the kernel's seg6_validate_srh does (type 4, the list
 * inside the header, segments left within the list, the header inside the packet). Returns 0,
 * or LWTUN_SEG6_EV_MALFORMED. */
static __always_inline int seg6_parse(struct __sk_buff *skb, struct seg6_pkt *p)
{
	struct seg6_srh_fixed srh;
	__u8 vn[1];
	__u8 nexthdr;

	if (skb->protocol != bpf_htons(ETH_P_IPV6))
		return LWTUN_SEG6_EV_MALFORMED;
	if (bpf_skb_load_bytes(skb, 0, vn, 1) || (vn[0] >> 4) != 6)
		return LWTUN_SEG6_EV_MALFORMED;
	if (bpf_skb_load_bytes(skb, 6, &nexthdr, 1) || nexthdr != SEG6_NEXTHDR_ROUTING)
		return LWTUN_SEG6_EV_MALFORMED;
	if (bpf_skb_load_bytes(skb, SEG6_SRH_OFF, &srh, sizeof(srh)))
		return LWTUN_SEG6_EV_MALFORMED;
	if (srh.type != SEG6_SRH_TYPE)
		return LWTUN_SEG6_EV_MALFORMED;
	p->srh_len = ((__u32)srh.hdrlen + 1) << 3;
	if (SEG6_SRH_OFF + p->srh_len > skb->len)
		return LWTUN_SEG6_EV_MALFORMED;
	/* The list (last_entry + 1 addresses) must fit in the header after its fixed part. */
	if (((__u32)srh.last_entry + 1) * 16 > p->srh_len - SEG6_SRH_FIXED)
		return LWTUN_SEG6_EV_MALFORMED;
	if (srh.segments_left > srh.last_entry)
		return LWTUN_SEG6_EV_MALFORMED;
	p->nexthdr = srh.nexthdr;
	p->segments_left = srh.segments_left;
	p->last_entry = srh.last_entry;
	return 0;
}

/* Segment `index` of the list (checked against last_entry by seg6_parse's caller). */
static __always_inline int seg6_segment(struct __sk_buff *skb, __u8 index, __u8 addr[16])
{
	return bpf_skb_load_bytes(skb, SEG6_SRH_OFF + SEG6_SRH_FIXED + (__u32)index * 16, addr, 16);
}

/* The miss policy: LWTUN_SEG6_EV_MISS_PASS unless the config says drop. */
static __always_inline __u32 seg6_miss(void)
{
	__u32 zero = 0;
	struct lwtun_seg6_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (cfg && cfg->magic == LWTUN_MAGIC && cfg->miss == LWTUN_MISS_DROP)
		return LWTUN_SEG6_EV_MISS_DROP;
	return LWTUN_SEG6_EV_MISS_PASS;
}

/* The decision of function `fn` for a parsed packet whose active segment (the destination the
 * End step set) is `active`: LWTUN_SEG6_EV_DONE with the rule copied to `rule`, a miss, or
 * LWTUN_SEG6_EV_INNER_NOT_V6. */
static __always_inline __u32 seg6_decide(int fn, const struct seg6_pkt *p, const __u8 active[16],
					 struct lwtun_seg6_rule *rule)
{
	struct lwtun_redirect_key6 key = { .prefixlen = 128 };
	struct lwtun_seg6_rule *r;

	__builtin_memcpy(key.addr, active, 16);
	r = bpf_map_lookup_elem(&rules, &key);
	if (!r)
		return seg6_miss();
	*rule = *r; /* a copy: user space may rewrite the entry meanwhile */
	if (fn == SEG6_FN_TAG)
		rule->flags |= LWTUN_SEG6_RULE_TAG;
	if (fn == SEG6_FN_END_DT6 && p->nexthdr != SEG6_NEXTHDR_IPV6)
		return LWTUN_SEG6_EV_INNER_NOT_V6;
	return LWTUN_SEG6_EV_DONE;
}

#endif /* LWTUN_SEG6_END_H */
