/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dispatch_member: an ordinary program per hook type (it knows nothing of dispatchers) that counts
 * packets and returns the verdict set in its map (the hook's pass verdict until set). Loaded as a
 * freplace program it fills a dispatcher slot; each load is its own instance with its own maps.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lwtun.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} member_count SEC(".maps");

/* index 0: 1 when a verdict is set; index 1: the verdict. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __s32);
} member_verdict SEC(".maps");

static __always_inline int member(__u32 len, int pass)
{
	__u32 zero = 0, one = 1;
	struct lwtun_counter *c = bpf_map_lookup_elem(&member_count, &zero);
	__s32 *set = bpf_map_lookup_elem(&member_verdict, &zero);
	__s32 *v = bpf_map_lookup_elem(&member_verdict, &one);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
	return set && *set && v ? *v : pass;
}

SEC("xdp")
int member_xdp(struct xdp_md *ctx)
{
	return member(ctx->data_end - ctx->data, XDP_PASS);
}

SEC("tc")
int member_tc(struct __sk_buff *skb)
{
	return member(skb->len, -1);
}

SEC("lwt_in")
int member_lwt_in(struct __sk_buff *skb)
{
	return member(skb->len, BPF_OK);
}

SEC("lwt_out")
int member_lwt_out(struct __sk_buff *skb)
{
	return member(skb->len, BPF_OK);
}

SEC("lwt_xmit")
int member_lwt_xmit(struct __sk_buff *skb)
{
	return member(skb->len, BPF_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
