/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * chain_stages: a chain-aware stage for every program type. It counts the packets it sees per slot
 * (with the depth it ran at, so the order of a chain shows in the counters) and then either lets
 * the packet go on to the next stage or ends the chain with a verdict set per slot.
 */
#include "chain.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_CHAIN_SLOTS);
	__type(key, __u32);
	__type(value, struct lwtun_chain_stage_stats);
} stage_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LWTUN_CHAIN_SLOTS);
	__type(key, __u32);
	__type(value, struct lwtun_chain_stage_verdict);
} stage_verdict SEC(".maps");

static __always_inline int stage(void *ctx, __u32 len, int pass)
{
	struct lwtun_chain_cursor *cur = lwtun_chain_cursor();
	struct lwtun_chain_stage_stats *st;
	struct lwtun_chain_stage_verdict *verdict;
	__u32 slot;

	if (!cur)
		return pass;
	slot = cur->slot;
	st = bpf_map_lookup_elem(&stage_stats, &slot);
	if (st) {
		st->packets++;
		st->bytes += len;
		st->depth_sum += cur->depth;
	}
	verdict = bpf_map_lookup_elem(&stage_verdict, &slot);
	if (verdict && verdict->end)
		return lwtun_chain_exit(ctx, cur, verdict->verdict);
	return lwtun_chain_next(ctx, pass);
}

SEC("xdp")
int stage_xdp(struct xdp_md *ctx)
{
	return stage(ctx, ctx->data_end - ctx->data, XDP_PASS);
}

SEC("tc")
int stage_tc(struct __sk_buff *skb)
{
	return stage(skb, skb->len, -1);
}

SEC("lwt_in")
int stage_lwt_in(struct __sk_buff *skb)
{
	return stage(skb, skb->len, BPF_OK);
}

SEC("lwt_out")
int stage_lwt_out(struct __sk_buff *skb)
{
	return stage(skb, skb->len, BPF_OK);
}

SEC("lwt_xmit")
int stage_lwt_xmit(struct __sk_buff *skb)
{
	return stage(skb, skb->len, BPF_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
