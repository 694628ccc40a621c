/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dispatch_member: a dispatch-aware counting member for every hook type. It counts the packets it
 * sees (with the slot and position it ran at, so the order of a run shows in the counters) and
 * returns the verdict set in its map (the hook's pass verdict until set), which the dispatcher's
 * continue mask for its slot then judges. Each load is its own instance with its own counters.
 */
#include "dispatch.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_dispatch_member_stats);
} member_stats SEC(".maps");

/* index 0: 1 when a verdict is set; index 1: the verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __s32);
} member_verdict SEC(".maps");

static __always_inline int member(__u32 len, int pass)
{
	__u32 zero = 0, one = 1, slot, depth;
	struct lwtun_dispatch_member_stats *st = bpf_map_lookup_elem(&member_stats, &zero);
	__s32 *set = bpf_map_lookup_elem(&member_verdict, &zero);
	__s32 *v = bpf_map_lookup_elem(&member_verdict, &one);

	lwtun_dispatch_position(&slot, &depth);
	if (st) {
		st->packets++;
		st->bytes += len;
		st->depth_sum += depth;
		st->slot_sum += slot;
	}
	return set && *set && v ? *v : pass;
}

LWTUN_DISPATCH_MEMBER("xdp", member_xdp, struct xdp_md)
{
	return member(ctx->data_end - ctx->data, XDP_PASS);
}

LWTUN_DISPATCH_MEMBER("tc", member_tc, struct __sk_buff)
{
	return member(ctx->len, -1 /* TC_ACT_UNSPEC */);
}

LWTUN_DISPATCH_MEMBER("lwt_in", member_lwt_in, struct __sk_buff)
{
	return member(ctx->len, BPF_OK);
}

LWTUN_DISPATCH_MEMBER("lwt_out", member_lwt_out, struct __sk_buff)
{
	return member(ctx->len, BPF_OK);
}

LWTUN_DISPATCH_MEMBER("lwt_xmit", member_lwt_xmit, struct __sk_buff)
{
	return member(ctx->len, BPF_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
