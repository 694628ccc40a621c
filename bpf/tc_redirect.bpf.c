/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * tc_redirect: steer packets into a collect_md ("external") tunnel device by inner destination.
 *
 * A rule maps an inner destination prefix (LPM tries rules_v4 / rules_v6) to a collect_md device and
 * the tunnel key to give the packet: remote endpoint, key/VNI, TOS, TTL, flags. A matching packet gets
 * the key with bpf_skb_set_tunnel_key and is redirected with bpf_redirect to the device's egress (the
 * device encapsulates) or ingress. Packets without a rule are passed on untouched.
 *
 * Two entry points share the rules:
 *   redirect_tc        tc (clsact or tcx), packets start at the Ethernet header.
 *   redirect_lwt_xmit  lwt_xmit on a route, packets start at the IP header.
 * For a device that carries Ethernet frames (vxlan, geneve, gretap) the rule names the inner MACs:
 * tc rewrites them, lwt_xmit pushes an Ethernet header (bpf_redirect needs one for such a device).
 *
 * Counters: rule_stats (per rule slot, per CPU) and events (misses, non-IP, per CPU).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <stddef.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lwtun.h"
#include "parse.h"

/* Rule capacity; user space may change max_entries before loading. */
#define REDIRECT_RULES_MAX 1024

#ifndef BPF_F_NO_TUNNEL_KEY
#define BPF_F_NO_TUNNEL_KEY (1ULL << 4)
#endif

/* The tunnel-key flags a rule may carry; anything else is masked off. */
#define KEY_FLAGS_ALLOWED (BPF_F_ZERO_CSUM_TX | BPF_F_DONT_FRAGMENT | BPF_F_SEQ_NUMBER | BPF_F_NO_TUNNEL_KEY)

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, REDIRECT_RULES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_redirect_key4);
	__type(value, struct lwtun_redirect_rule);
} rules_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, REDIRECT_RULES_MAX);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, struct lwtun_redirect_key6);
	__type(value, struct lwtun_redirect_rule);
} rules_v6 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, REDIRECT_RULES_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_redirect_stats);
} rule_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_REDIRECT_EV_MAX);
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

/* The rule for an IPv4 (version 4) or IPv6 destination at `ip`, or NULL. */
static __always_inline struct lwtun_redirect_rule *lookup(void *ip, void *data_end, __u16 proto)
{
	struct hdr_cursor nh = { .pos = ip };

	if (proto == bpf_htons(ETH_P_IP)) {
		struct lwtun_redirect_key4 k = { .prefixlen = 32 };
		struct iphdr *iph;

		if (parse_iphdr(&nh, data_end, &iph) < 0)
			return NULL;
		__builtin_memcpy(k.addr, &iph->daddr, 4);
		return bpf_map_lookup_elem(&rules_v4, &k);
	}
	if (proto == bpf_htons(ETH_P_IPV6)) {
		struct lwtun_redirect_key6 k = { .prefixlen = 128 };
		struct ipv6hdr *ip6h;

		if (parse_ip6hdr(&nh, data_end, &ip6h) < 0)
			return NULL;
		__builtin_memcpy(k.addr, &ip6h->daddr, 16);
		return bpf_map_lookup_elem(&rules_v6, &k);
	}
	return NULL;
}

/* Gives the packet the rule's tunnel key. Returns 0 or the helper's negative error. */
static __always_inline long set_key(struct __sk_buff *skb, const struct lwtun_redirect_rule *r)
{
	struct bpf_tunnel_key key = {};
	__u64 flags = r->key_flags & KEY_FLAGS_ALLOWED;

	key.tunnel_id = r->tunnel_id;
	key.tunnel_tos = r->tos;
	key.tunnel_ttl = r->ttl;
	if (r->flags & LWTUN_REDIRECT_REMOTE_V6) {
		__builtin_memcpy(key.remote_ipv6, r->remote, 16);
		if (r->flags & LWTUN_REDIRECT_LOCAL)
			__builtin_memcpy(key.local_ipv6, r->local, 16);
		key.tunnel_label = r->label;
		flags |= BPF_F_TUNINFO_IPV6;
	} else {
		__u32 a;

		__builtin_memcpy(&a, r->remote, 4);
		key.remote_ipv4 = bpf_ntohl(a);
		if (r->flags & LWTUN_REDIRECT_LOCAL) {
			__builtin_memcpy(&a, r->local, 4);
			key.local_ipv4 = bpf_ntohl(a);
		}
	}
	/* Without a local address, pass the pre-6.0 layout (up to local_ipv4), which every kernel
	 * since 4.x accepts; the full size only when the outer source is set. */
	if (r->flags & LWTUN_REDIRECT_LOCAL)
		return bpf_skb_set_tunnel_key(skb, &key, sizeof(key), flags);
	return bpf_skb_set_tunnel_key(skb, &key, offsetof(struct bpf_tunnel_key, local_ipv4), flags);
}

static __always_inline struct lwtun_redirect_stats *stats_of(const struct lwtun_redirect_rule *r)
{
	__u32 slot = r->slot;

	return bpf_map_lookup_elem(&rule_stats, &slot);
}

SEC("tc")
int redirect_tc(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct lwtun_redirect_rule *r, rule;
	struct lwtun_redirect_stats *st;
	struct ethhdr *eth;
	int proto;

	proto = parse_ethhdr(&nh, data_end, &eth);
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6)) {
		count_event(LWTUN_REDIRECT_EV_NOT_IP, skb->len);
		return TC_ACT_UNSPEC;
	}
	r = lookup(nh.pos, data_end, proto);
	if (!r) {
		count_event(LWTUN_REDIRECT_EV_MISS, skb->len);
		return TC_ACT_UNSPEC;
	}
	rule = *r; /* a copy: user space may rewrite the entry meanwhile */
	st = stats_of(&rule);

	if (rule.flags & LWTUN_REDIRECT_L2) {
		/* Direct packet writes (the verifier makes the head writable in a tc program's
		 * prologue); eth was bounds-checked by parse_ethhdr and no helper has moved the data. */
		__builtin_memcpy(eth->h_dest, rule.inner_dst, ETH_ALEN);
		__builtin_memcpy(eth->h_source, rule.inner_src, ETH_ALEN);
	}
	if (set_key(skb, &rule) < 0)
		goto drop;
	if (st) {
		st->packets++;
		st->bytes += skb->len;
	}
	return bpf_redirect(rule.ifindex, (rule.flags & LWTUN_REDIRECT_INGRESS) ? BPF_F_INGRESS : 0);
drop:
	if (st)
		st->errors++;
	return TC_ACT_SHOT;
}

SEC("lwt_xmit")
int redirect_lwt_xmit(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct lwtun_redirect_rule *r, rule;
	struct lwtun_redirect_stats *st;
	__u16 proto = (__u16)skb->protocol;

	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6)) {
		count_event(LWTUN_REDIRECT_EV_NOT_IP, skb->len);
		return BPF_OK;
	}
	r = lookup(data, data_end, proto);
	if (!r) {
		count_event(LWTUN_REDIRECT_EV_MISS, skb->len);
		return BPF_OK;
	}
	rule = *r;
	st = stats_of(&rule);

	if (rule.flags & LWTUN_REDIRECT_L2) {
		struct ethhdr eth;

		__builtin_memcpy(eth.h_dest, rule.inner_dst, ETH_ALEN);
		__builtin_memcpy(eth.h_source, rule.inner_src, ETH_ALEN);
		eth.h_proto = proto;
		if (bpf_skb_change_head(skb, sizeof(eth), 0) ||
		    bpf_skb_store_bytes(skb, 0, &eth, sizeof(eth), 0))
			goto drop;
	}
	if (set_key(skb, &rule) < 0)
		goto drop;
	if (st) {
		st->packets++;
		st->bytes += skb->len;
	}
	bpf_redirect(rule.ifindex, (rule.flags & LWTUN_REDIRECT_INGRESS) ? BPF_F_INGRESS : 0);
	return BPF_REDIRECT;
drop:
	if (st)
		st->errors++;
	return BPF_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
