/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lwt_count: one program per LWT hook (lwt_in, lwt_out, lwt_xmit, lwt_seg6local) that counts the packets and bytes
 * a route sends through it and lets them continue (BPF_OK). The smallest useful LWT program: it
 * shows which hooks a route's traffic crosses, and it is what lwtun's route tests attach.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lwtun.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_HOOK_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} hook_counters SEC(".maps");

static __always_inline int count(struct __sk_buff *skb, __u32 hook)
{
	struct lwtun_counter *c = bpf_map_lookup_elem(&hook_counters, &hook);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	return BPF_OK;
}

SEC("lwt_in")
int count_in(struct __sk_buff *skb)
{
	return count(skb, LWTUN_HOOK_IN);
}

SEC("lwt_out")
int count_out(struct __sk_buff *skb)
{
	return count(skb, LWTUN_HOOK_OUT);
}

SEC("lwt_xmit")
int count_xmit(struct __sk_buff *skb)
{
	return count(skb, LWTUN_HOOK_XMIT);
}

/* seg6local End.BPF: BPF_OK continues with the End behaviour (next segment). */
SEC("lwt_seg6local")
int count_seg6local(struct __sk_buff *skb)
{
	return count(skb, LWTUN_HOOK_SEG6LOCAL);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
