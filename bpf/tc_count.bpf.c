/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tc_count: the smallest useful tc program. It counts the packets and bytes that cross it and
 * returns the verdict user space stored in `verdict` (TC_ACT_UNSPEC by default: hand the packet to
 * the next program, or let it pass when there is none). lwtun's tc attach tests use it to see which
 * hook, direction and order a packet crosses, and to drop traffic on purpose.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include "lwtun.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} tc_counter SEC(".maps");

/* The verdict returned for every packet (a TC_ACT_* value, as an __s32). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __s32);
} verdict SEC(".maps");

SEC("tc")
int count_tc(struct __sk_buff *skb)
{
	__u32 zero = 0;
	struct lwtun_counter *c = bpf_map_lookup_elem(&tc_counter, &zero);
	__s32 *v = bpf_map_lookup_elem(&verdict, &zero);

	if (c) {
		c->packets++;
		c->bytes += skb->len;
	}
	return v && *v ? *v : TC_ACT_UNSPEC;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
