/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdp_redirect: L2 forwarding with a MAC rewrite table set from user space (the XDP tutorial's
 * redirect assignment, for any number of ports).
 *
 * A frame whose destination MAC is a key of `redirect_rules` gets the rule's destination and source
 * MACs written in and is redirected through the `ports` devmap (BPF_MAP_TYPE_DEVMAP) at the rule's
 * port. A frame without a rule, a truncated frame, or a rule whose port is empty goes to the stack
 * (XDP_PASS) untouched.
 *
 * A per-CPU, direct-mapped cache (`rule_cache`, RULE_CACHE_SLOTS slots chosen by the destination
 * MAC) sits in front of the hash table: a hit costs two inlined array lookups instead of a hash
 * lookup (a helper call, jhash and a key compare), which is most of this program's cost. Misses
 * fill it, "no rule" included. Every slot carries the table generation (`rule_gen`) it was filled
 * under; user space bumps the generation after changing the table, so once set_rule/remove_rule
 * returns no CPU takes a replaced rule from its cache (a frame already being processed may still
 * use the old rule, as with the table itself). The generation is read before the table on a
 * miss, so a fill that races with a change is tagged with the old generation and dropped at once.
 *
 * xdp_egress is the optional per-port program a devmap entry may carry: it runs on the egress
 * device after the redirect and counts what leaves (stage LWTUN_XDP_STAGE_EGRESS).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"
#include "xdp_stats.h"

#define REDIRECT_PORTS 64
#define REDIRECT_RULES 4096
#define RULE_CACHE_SLOTS 256

struct {
	__uint(type, BPF_MAP_TYPE_DEVMAP);
	__uint(max_entries, REDIRECT_PORTS);
	__type(key, __u32);
	__type(value, struct bpf_devmap_val);
} ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, REDIRECT_RULES);
	__type(key, struct lwtun_mac);
	__type(value, struct lwtun_xdp_redirect);
} redirect_rules SEC(".maps");

/* The table's generation: bumped by user space after every rule change; 0 turns the cache off. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} rule_gen SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, RULE_CACHE_SLOTS);
	__type(key, __u32);
	__type(value, struct lwtun_xdp_rule_slot);
} rule_cache SEC(".maps");

/* Whether `mac` is the address whose first four bytes are `hi` and last two `lo`. */
static __always_inline int mac_is(const __u8 *mac, __u32 hi, __u16 lo)
{
	__u32 h;
	__u16 l;

	__builtin_memcpy(&h, mac, 4);
	__builtin_memcpy(&l, mac + 4, 2);
	return h == hi && l == lo;
}

SEC("xdp")
int xdp_redirect(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	struct lwtun_xdp_rule_slot *slot;
	struct lwtun_xdp_redirect *rule;
	__u32 zero = 0, gen = 0, idx, hi, action;
	__u16 lo;
	__u32 *genp;

	if ((void *)(eth + 1) > data_end)
		return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_PASS);
	__builtin_memcpy(&hi, eth->h_dest, 4);
	__builtin_memcpy(&lo, eth->h_dest + 4, 2);
	idx = hi ^ lo;
	idx = (idx ^ (idx >> 8) ^ (idx >> 16) ^ (idx >> 24)) & (RULE_CACHE_SLOTS - 1);
	genp = bpf_map_lookup_elem(&rule_gen, &zero);
	if (genp)
		gen = *genp;
	slot = bpf_map_lookup_elem(&rule_cache, &idx);
	if (!slot)
		return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_PASS);
	if (!gen || slot->gen != gen || !mac_is(slot->mac, hi, lo)) {
		struct lwtun_mac key = {};

		__builtin_memcpy(key.addr, eth->h_dest, ETH_ALEN);
		rule = bpf_map_lookup_elem(&redirect_rules, &key);
		if (rule) {
			slot->port = rule->port;
			__builtin_memcpy(slot->dst, rule->dst, ETH_ALEN);
			__builtin_memcpy(slot->src, rule->src, ETH_ALEN);
		} else {
			slot->port = LWTUN_XDP_NO_RULE;
		}
		__builtin_memcpy(slot->mac, eth->h_dest, ETH_ALEN);
		slot->gen = gen;
	}
	if (slot->port == LWTUN_XDP_NO_RULE)
		return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_PASS);
	/* An empty port falls back to XDP_PASS (the low bits of flags are the miss action), and then
	 * the frame goes to the stack unmodified. The redirect itself happens after we return, so
	 * rewriting the MACs after a successful bpf_redirect_map is in time. */
	action = bpf_redirect_map(&ports, slot->port, XDP_PASS);
	if (action == XDP_REDIRECT) {
		__builtin_memcpy(eth->h_dest, slot->dst, ETH_ALEN);
		__builtin_memcpy(eth->h_source, slot->src, ETH_ALEN);
	}
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, action);
}

SEC("xdp/devmap")
int xdp_egress(struct xdp_md *ctx)
{
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_EGRESS, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
