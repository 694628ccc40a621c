/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * chain_table: a chain stage that looks the IPv4 destination up in a forwarding table held in an
 * ARRAY_OF_MAPS. User space builds a new table aside (a new inner hash map) and swaps it in with
 * one update of the outer slot, so each packet sees the whole old table or the whole new one.
 * A hit counts the entry's tag and goes on along the chain; a miss (or a non-IPv4 packet at an
 * LWT hook) ends the chain with the drop verdict and is counted under tag 0.
 */
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <bpf/bpf_endian.h>
#include "chain.h"

struct table_inner {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, __u32);
	__type(value, struct lwtun_table_entry);
} table_initial SEC(".maps"); /* the table in place at load (empty); also the inner map template */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 1);
	__type(key, __u32);
	__array(values, struct table_inner);
} table_outer SEC(".maps") = {
	.values = { [0] = &table_initial },
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_TABLE_TAGS);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} table_hits SEC(".maps");

static __always_inline void hit(__u32 tag, __u32 len)
{
	struct lwtun_counter *c = bpf_map_lookup_elem(&table_hits, &tag);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

static __always_inline int lookup(void *ctx, __u32 daddr, __u32 len, int pass, int drop)
{
	__u32 zero = 0;
	void *table = bpf_map_lookup_elem(&table_outer, &zero);
	struct lwtun_table_entry *e;
	struct lwtun_chain_cursor *cur;

	if (table) {
		e = bpf_map_lookup_elem(table, &daddr);
		if (e) {
			hit(e->tag & (LWTUN_TABLE_TAGS - 1), len);
			return lwtun_chain_next(ctx, pass);
		}
	}
	hit(LWTUN_TABLE_TAG_MISS, len);
	cur = lwtun_chain_cursor();
	return cur ? lwtun_chain_exit(ctx, cur, drop) : drop;
}

static __always_inline int lookup_skb(struct __sk_buff *skb, __u32 l3, int pass, int drop)
{
	__u32 daddr;

	if (bpf_skb_load_bytes(skb, l3 + __builtin_offsetof(struct iphdr, daddr), &daddr, 4) < 0)
		daddr = 0;
	return lookup(skb, daddr, skb->len, pass, drop);
}

SEC("lwt_in")
int table_lwt_in(struct __sk_buff *skb)
{
	return lookup_skb(skb, 0, BPF_OK, BPF_DROP);
}

SEC("lwt_out")
int table_lwt_out(struct __sk_buff *skb)
{
	return lookup_skb(skb, 0, BPF_OK, BPF_DROP);
}

SEC("lwt_xmit")
int table_lwt_xmit(struct __sk_buff *skb)
{
	return lookup_skb(skb, 0, BPF_OK, BPF_DROP);
}

SEC("tc")
int table_tc(struct __sk_buff *skb)
{
	if (skb->protocol != bpf_htons(ETH_P_IP))
		return lwtun_chain_next(skb, -1);
	return lookup_skb(skb, ETH_HLEN, -1, 2 /* TC_ACT_SHOT */);
}

SEC("xdp")
int table_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return lwtun_chain_next(ctx, XDP_PASS);
	return lookup(ctx, ip->daddr, end - data, XDP_PASS, XDP_DROP);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
