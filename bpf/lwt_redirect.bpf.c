/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lwt_redirect: an lwt_xmit program that sends a route's packets to any device, chosen by
 * destination prefix.
 *
 * A rule (LPM tries rules_v4 / rules_v6, keyed by destination prefix) names a device and a
 * direction: its egress (as if the stack transmitted the packet there) or its ingress
 * (BPF_F_INGRESS: as if the device had received it). For a device that carries Ethernet frames the
 * rule also holds the MACs of a 14-byte Ethernet header, pushed in front of the IP header with
 * bpf_skb_change_head (the kernel frees a packet redirected to such a device without one:
 * __bpf_redirect_common wants a link-layer header). L3 devices (tun, ...) get the IP packet as is.
 *
 * The packet starts at the IP header (lwt hooks see no link-layer header). A packet without a rule
 * follows the configured miss policy: BPF_OK (the route's own device sends it) or BPF_DROP. A packet
 * that is not IPv4/IPv6 or whose header is truncated or inconsistent is dropped.
 *
 * Counters: rule_stats (per rule slot, per CPU: redirected packets and bytes, failures) and events
 * (misses passed, misses dropped, malformed; per CPU). Drops after the redirect (the target is down,
 * has no carrier) happen in the kernel after this program returned: the target device counts them
 * (tx_dropped for egress, rx_dropped for ingress).
 *
 * The program never calls bpf_lwt_push_encap, so BPF_PROG_TEST_RUN is safe for every path.
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lwtun.h"
#include "parse.h"

/* Rule capacity; user space may change max_entries before loading. */
#define LWT_REDIRECT_RULES_MAX 1024

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LWT_REDIRECT_RULES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_redirect_key4);
	__type(value, struct lwtun_lwt_redirect_rule);
} rules_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, LWT_REDIRECT_RULES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_redirect_key6);
	__type(value, struct lwtun_lwt_redirect_rule);
} rules_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWT_REDIRECT_RULES_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_lwt_redirect_stats);
} rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_lwt_redirect_config);
} config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_LWT_REDIRECT_EV_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} events SEC(".maps");

static __always_inline void count_event(__u32 ev, __u32 len)
{
	struct lwtun_counter *c = bpf_map_lookup_elem(&events, &ev);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/* What a packet without a rule gets: BPF_OK unless the policy says drop. */
static __always_inline int miss(__u32 len)
{
	__u32 zero = 0;
	struct lwtun_lwt_redirect_config *cfg = bpf_map_lookup_elem(&config, &zero);

	if (cfg && cfg->magic == LWTUN_MAGIC && cfg->miss == LWTUN_MISS_DROP) {
		count_event(LWTUN_LWT_REDIRECT_EV_MISS_DROP, len);
		return BPF_DROP;
	}
	count_event(LWTUN_LWT_REDIRECT_EV_MISS_PASS, len);
	return BPF_OK;
}

SEC("lwt_xmit")
int redirect_xmit(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct lwtun_lwt_redirect_rule *r, rule;
	struct lwtun_lwt_redirect_stats *st;
	__u16 proto = (__u16)skb->protocol;
	__u32 len = skb->len;
	__u32 slot;
	long rc;

	if (proto == bpf_htons(ETH_P_IP)) {
		struct lwtun_redirect_key4 k = { .prefixlen = 32 };
		struct iphdr *iph;

		if (parse_iphdr(&nh, data_end, &iph) < 0)
			goto malformed;
		__builtin_memcpy(k.addr, &iph->daddr, 4);
		r = bpf_map_lookup_elem(&rules_v4, &k);
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct lwtun_redirect_key6 k = { .prefixlen = 128 };
		struct ipv6hdr *ip6h;

		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0)
			goto malformed;
		__builtin_memcpy(k.addr, &ip6h->daddr, 16);
		r = bpf_map_lookup_elem(&rules_v6, &k);
	} else {
		goto malformed;
	}
	if (!r)
		return miss(len);
	rule = *r; /* a copy: user space may rewrite the entry meanwhile */
	slot = rule.slot;
	st = bpf_map_lookup_elem(&rule_stats, &slot);

	if (rule.flags & LWTUN_LWT_REDIRECT_L2) {
		struct ethhdr eth;

		__builtin_memcpy(eth.h_dest, rule.dst, ETH_ALEN);
		__builtin_memcpy(eth.h_source, rule.src, ETH_ALEN);
		eth.h_proto = proto;
		if (bpf_skb_change_head(skb, sizeof(eth), 0) ||
		    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
			goto failed;
	}
	/* TC_ACT_REDIRECT (== BPF_REDIRECT) on success; TC_ACT_SHOT for flags it does not know. */
	rc = bpf_redirect(rule.ifindex, (rule.flags & LWTUN_LWT_REDIRECT_INGRESS) ? BPF_F_INGRESS : 0);
	if (rc != TC_ACT_REDIRECT)
		goto failed;
	if (st) {
		st->packets++;
		st->bytes += len;
	}
	return BPF_REDIRECT;
failed:
	if (st)
		st->failed++;
	return BPF_DROP;
malformed:
	count_event(LWTUN_LWT_REDIRECT_EV_MALFORMED, len);
	return BPF_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
