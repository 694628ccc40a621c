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
 * xdp_egress is the optional per-port program a devmap entry may carry: it runs on the egress
 * device after the redirect and counts what leaves (stage LWTUN_XDP_STAGE_EGRESS).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "parse.h"
#include "xdp_stats.h"

#define REDIRECT_PORTS 64
#define REDIRECT_RULES 4096

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

SEC("xdp")
int xdp_redirect(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	struct ethhdr *eth = data;
	struct lwtun_xdp_redirect *rule;
	struct lwtun_mac key = {};
	__u32 action;

	if ((void *)(eth + 1) > data_end)
		return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_PASS);
	__builtin_memcpy(key.addr, eth->h_dest, ETH_ALEN);
	rule = bpf_map_lookup_elem(&redirect_rules, &key);
	if (!rule)
		return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_PASS);
	/* An empty port falls back to XDP_PASS (the low bits of flags are the miss action), and then
	 * the frame goes to the stack unmodified. The redirect itself happens after we return, so
	 * rewriting the MACs after a successful bpf_redirect_map is in time. */
	action = bpf_redirect_map(&ports, rule->port, XDP_PASS);
	if (action == XDP_REDIRECT) {
		__builtin_memcpy(eth->h_dest, rule->dst, ETH_ALEN);
		__builtin_memcpy(eth->h_source, rule->src, ETH_ALEN);
	}
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, action);
}

SEC("xdp/devmap")
int xdp_egress(struct xdp_md *ctx)
{
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_EGRESS, XDP_PASS);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
