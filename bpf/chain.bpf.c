/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * chain: the entry program of an lwtun program chain, one per program type. User space loads
 * only the entry of the chain's type (a prog array accepts programs of its first user's type) and
 * attaches it where the chain should run: an XDP or tc hook, or an LWT route.
 */
#include "chain.h"

static __always_inline int chain_enter(void *ctx, __u32 hook, int fallback)
{
	struct lwtun_chain_cursor *cur = lwtun_chain_cursor();
	__u32 zero = 0;
	struct lwtun_chain_config *cfg = bpf_map_lookup_elem(&chain_config, &zero);
	int verdict = fallback;

	if (!cur)
		return fallback;
	if (cfg && cfg->magic == LWTUN_MAGIC && cfg->version == LWTUN_ABI_VERSION)
		verdict = cfg->verdict;
	cur->slot = LWTUN_CHAIN_HEAD;
	cur->depth = 0;
	cur->verdict = verdict;
	cur->hook = hook;
	return lwtun_chain_next(ctx, verdict);
}

SEC("xdp")
int chain_xdp(struct xdp_md *ctx)
{
	return chain_enter(ctx, LWTUN_CHAIN_HOOK_XDP, XDP_PASS);
}

SEC("tc")
int chain_tc(struct __sk_buff *skb)
{
	return chain_enter(skb, LWTUN_CHAIN_HOOK_TC, -1 /* TC_ACT_UNSPEC */);
}

SEC("lwt_in")
int chain_lwt_in(struct __sk_buff *skb)
{
	return chain_enter(skb, LWTUN_CHAIN_HOOK_LWT_IN, BPF_OK);
}

SEC("lwt_out")
int chain_lwt_out(struct __sk_buff *skb)
{
	return chain_enter(skb, LWTUN_CHAIN_HOOK_LWT_OUT, BPF_OK);
}

SEC("lwt_xmit")
int chain_lwt_xmit(struct __sk_buff *skb)
{
	return chain_enter(skb, LWTUN_CHAIN_HOOK_LWT_XMIT, BPF_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
