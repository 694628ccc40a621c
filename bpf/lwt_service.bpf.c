/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lwt_service: a prefix (a VIP) served by a weighted set of backends, each an encapsulation to
 * its own remote, the flow choosing one (glb-director's forwarding table, Katran's ring).
 *
 *   inner ─► services_vN (LPM) ─► service {table, rows}
 *         ─► flows (LRU): the backend this flow was sent to, if it is still up ─┐
 *         ─► else service_tables[table] (ARRAY_OF_MAPS) [flow hash % rows] ─► backend index
 *         ─► backends[index] (an lwtun_peer) ─► outer header (encap.h) ─► BPF_LWT_REROUTE
 *
 * User space fills each service's rows with Maglev from its weighted backend list and swaps a
 * whole new row table into service_tables[table] when the list changes: a packet sees the old
 * table or the new one. The flow table (an LRU hash, Katran's connection table) keeps a flow on
 * its backend across such a swap as long as that backend stays up; a backend taken out of
 * service (drained by a health check, or removed) loses its flows to the rows.
 *
 * Health probes: a packet marked as the config map says (skb->mark) goes to the backend the
 * mark names, drained or not, with that backend's encap (so the probe takes the data's path and
 * outer source, Katran's lesson), and is not remembered.
 *
 * The flow hash covers the inner addresses, protocol and TCP/UDP ports. An ICMP error (IPv4
 * destination unreachable, source quench, time exceeded, parameter problem; ICMPv6 1..4) is
 * hashed as the flow it is about, turned round (its quoted packet went the other way), so it
 * reaches the backend of that flow: a "fragmentation needed" for a backend's connection goes to
 * that backend.
 *
 * service_director runs the same choice at XDP on an interface (glb-director's shape: see it).
 *
 * Counters: backend_stats (per backend slot, per CPU: packets, inner bytes, errors) and events
 * (LWTUN_SERVICE_EV_*). service_pick is a tc twin for BPF_PROG_TEST_RUN: the row and backend a
 * new flow would get, without pushing anything (bpf_lwt_push_encap must not run under test_run).
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include "lwtun.h"
#include "parse.h"
#include "csum.h"
#include "encap.h"

/* Capacities; user space sets max_entries before loading. */
#define SERVICES_MAX 64
#define BACKENDS_MAX 1024
#define FLOWS_MAX 65536

#define IPPROTO_ICMPV6_ 58

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SERVICES_MAX);
	__type(key, struct lwtun_peer_key4);
	__type(value, struct lwtun_service);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} services_v4 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, SERVICES_MAX);
	__type(key, struct lwtun_peer_key6);
	__type(value, struct lwtun_service);
	__uint(map_flags, BPF_F_NO_PREALLOC);
} services_v6 SEC(".maps");

/* A service's rows: row -> backend index. BPF_F_INNER_MAP lets each service's table have its own
 * number of rows (5.10+). */
struct rows {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
	__uint(map_flags, BPF_F_INNER_MAP);
};

struct rows rows_template SEC(".maps"); /* the shape user space creates row tables in */

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, SERVICES_MAX);
	__type(key, __u32);
	__array(values, struct rows);
} service_tables SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, BACKENDS_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_backend);
} backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BACKENDS_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_peer_stats);
} backend_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, FLOWS_MAX);
	__type(key, struct lwtun_flow_key);
	__type(value, struct lwtun_flow);
} flows SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_SERVICE_EV_MAX);
	__type(key, __u32);
	__type(value, struct lwtun_counter);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_service_pick);
} pick SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_service_config);
} config SEC(".maps");

/* The backend a health probe's mark names, or NULL when the packet is not a probe. *idx is set
 * for a probe. */
static __always_inline struct lwtun_backend *probe_target(struct __sk_buff *skb, __u32 *idx,
							  int *probe)
{
	__u32 zero = 0;
	struct lwtun_service_config *cfg = bpf_map_lookup_elem(&config, &zero);

	*probe = 0;
	if (!cfg || !cfg->probe_mask || (skb->mark & cfg->probe_mask) != cfg->probe_value)
		return NULL;
	*probe = 1;
	*idx = skb->mark & ~cfg->probe_mask;
	return bpf_map_lookup_elem(&backends, idx);
}

static __always_inline void count_event(__u32 ev, __u32 len)
{
	struct lwtun_counter *c = bpf_map_lookup_elem(&events, &ev);

	if (c) {
		c->packets++;
		c->bytes += len;
	}
}

/* The two ports at `l4`, if they are there. */
static __always_inline void read_ports(const void *l4, void *data_end, __u16 *sport, __u16 *dport)
{
	const __u16 *p = l4;

	if ((void *)(p + 2) > data_end)
		return;
	*sport = p[0];
	*dport = p[1];
}

/* IPv4 ICMP errors that quote the packet they are about. */
static __always_inline int icmp_is_error(__u8 type)
{
	return type == 3 || type == 4 || type == 5 || type == 11 || type == 12;
}

/*
 * Reads the flow of the packet `off` bytes into [data, data_end) (of EtherType `protocol`) into
 * *k and its TTL, TOS and DF into *in. Returns 0, or -1 when it is not a readable IPv4 or IPv6
 * packet.
 */
static __always_inline int parse_flow(void *data, void *data_end, __be16 protocol, __u32 off,
				      struct lwtun_flow_key *k, struct inner *in)
{
	struct hdr_cursor nh = { .pos = data + off };

	if (protocol == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph, *q;
		int proto;

		proto = parse_iphdr(&nh, data_end, &iph);
		if (proto < 0)
			return -1;
		in->v6 = 0;
		in->ttl = iph->ttl;
		in->tos = iph->tos;
		in->df = !!(iph->frag_off & bpf_htons(IP_DF_));
		__builtin_memcpy(k->src, &iph->saddr, 4);
		__builtin_memcpy(k->dst, &iph->daddr, 4);
		k->proto = proto;
		if (ip_is_fragment(iph))
			return 0;
		if (proto == IPPROTO_TCP || proto == IPPROTO_UDP) {
			read_ports(nh.pos, data_end, &k->sport, &k->dport);
			return 0;
		}
		if (proto != IPPROTO_ICMP)
			return 0;
		{
			struct hdr_cursor qc = { .pos = nh.pos + 8 };
			__u8 *type = nh.pos;
			int qproto;

			if ((void *)(type + 1) > data_end || !icmp_is_error(*type))
				return 0;
			qproto = parse_iphdr(&qc, data_end, &q);
			if (qproto < 0)
				return 0; /* too little quoted: hashed as the ICMP packet itself */
			/* the quoted packet went from the service's side: turn it round */
			__builtin_memcpy(k->src, &q->daddr, 4);
			__builtin_memcpy(k->dst, &q->saddr, 4);
			k->proto = qproto;
			if ((qproto == IPPROTO_TCP || qproto == IPPROTO_UDP) && !ip_is_fragment(q))
				read_ports(qc.pos, data_end, &k->dport, &k->sport);
		}
		return 0;
	}
	if (protocol == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h, *q;
		int next;

		next = parse_ip6hdr(&nh, data_end, &ip6h);
		if (next < 0)
			return -1;
		in->v6 = 1;
		in->ttl = ip6h->hop_limit;
		in->tos = (ip6h->priority << 4) | (ip6h->flow_lbl[0] >> 4);
		k->v6 = 1;
		__builtin_memcpy(k->src, &ip6h->saddr, 16);
		__builtin_memcpy(k->dst, &ip6h->daddr, 16);
		k->proto = next;
		/* ports only right after the fixed header (extension headers are not walked) */
		if (next == IPPROTO_TCP || next == IPPROTO_UDP) {
			read_ports(nh.pos, data_end, &k->sport, &k->dport);
			return 0;
		}
		if (next != IPPROTO_ICMPV6_)
			return 0;
		{
			struct hdr_cursor qc = { .pos = nh.pos + 8 };
			__u8 *type = nh.pos;
			int qnext;

			if ((void *)(type + 1) > data_end || *type < 1 || *type > 4)
				return 0;
			qnext = parse_ip6hdr(&qc, data_end, &q);
			if (qnext < 0)
				return 0;
			__builtin_memcpy(k->src, &q->daddr, 16);
			__builtin_memcpy(k->dst, &q->saddr, 16);
			k->proto = qnext;
			if (qnext == IPPROTO_TCP || qnext == IPPROTO_UDP)
				read_ports(qc.pos, data_end, &k->dport, &k->sport);
		}
		return 0;
	}
	return -1;
}

/* The flow's hash: every address word, the protocol and the ports, each through mix32. The
 * same flow always hashes the same, on every host (no per-boot seed), so hosts behind one ECMP
 * group pick the same backend for it. */
static __always_inline __u32 flow_key_hash(const struct lwtun_flow_key *k)
{
	const __u32 *s = (const __u32 *)k->src, *d = (const __u32 *)k->dst;
	__u32 h = k->proto;
	int i;

#pragma unroll
	for (i = 0; i < 4; i++)
		h = mix32(h ^ s[i]) ^ d[i];
	h = mix32(h ^ (((__u32)k->sport << 16) | k->dport));
	return mix32(h);
}

/* The service serving the packet's destination, or NULL. */
static __always_inline struct lwtun_service *service_of(void *data, void *data_end,
						       const struct lwtun_flow_key *k, __u32 off)
{
	/* the packet's own destination (for an ICMP error k->dst is the quoted source, the same VIP) */
	if (!k->v6) {
		struct lwtun_peer_key4 key = { .prefixlen = 32 };
		struct iphdr *iph = data + off;

		if ((void *)(iph + 1) > data_end)
			return NULL;
		__builtin_memcpy(key.addr, &iph->daddr, 4);
		return bpf_map_lookup_elem(&services_v4, &key);
	}
	{
		struct lwtun_peer_key6 key = { .prefixlen = 128 };
		struct ipv6hdr *ip6h = data + off;

		if ((void *)(ip6h + 1) > data_end)
			return NULL;
		__builtin_memcpy(key.addr, &ip6h->daddr, 16);
		return bpf_map_lookup_elem(&services_v6, &key);
	}
}

/* The row table's pick for hash h: the backend index in *backend and the row in *row; 0, or -1
 * when the table is missing or the row empty. */
static __always_inline int row_pick(const struct lwtun_service *svc, __u32 h, __u32 *row,
				    __u32 *backend)
{
	__u32 table = svc->table, *b;
	void *rows;

	if (!svc->rows)
		return -1;
	rows = bpf_map_lookup_elem(&service_tables, &table);
	if (!rows)
		return -1;
	*row = h % svc->rows;
	b = bpf_map_lookup_elem(rows, row);
	if (!b)
		return -1;
	*backend = *b;
	return 0;
}

/*
 * The backend for a new packet of flow k (hash h) of service svc: the one the flow table
 * remembers while it is in service and the same holder of its index, else the one the row
 * names, which the flow table then remembers. NULL when the service has none. Counted.
 */
static __always_inline struct lwtun_backend *choose(const struct lwtun_service *svc,
						    const struct lwtun_flow_key *k, __u32 h, __u32 len)
{
	struct lwtun_flow remember = {};
	struct lwtun_backend *be;
	struct lwtun_flow *known;
	__u32 idx, row;

	known = bpf_map_lookup_elem(&flows, k);
	if (known) {
		idx = known->backend;
		be = bpf_map_lookup_elem(&backends, &idx);
		if (be && be->state == LWTUN_BACKEND_UP && be->generation == known->generation) {
			count_event(LWTUN_SERVICE_EV_FLOW_HIT, len);
			return be;
		}
	}
	if (row_pick(svc, h, &row, &idx) < 0)
		return NULL;
	be = bpf_map_lookup_elem(&backends, &idx);
	if (!be || be->state != LWTUN_BACKEND_UP)
		return NULL;
	remember.backend = idx;
	remember.generation = be->generation;
	bpf_map_update_elem(&flows, k, &remember, BPF_ANY);
	count_event(LWTUN_SERVICE_EV_FLOW_NEW, len);
	return be;
}

SEC("lwt_xmit")
int service_xmit(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	struct lwtun_flow_key k = {};
	struct lwtun_peer_stats *st;
	struct lwtun_service *svc;
	struct lwtun_backend *be;
	__u8 hdr[HDR_MAX] = {};
	__u32 idx = 0, len, pkts, bytes;
	struct inner in = {};
	struct lwtun_peer p;
	int placeholder, probe;

	if (parse_flow(data, data_end, skb->protocol, 0, &k, &in) < 0) {
		count_event(LWTUN_SERVICE_EV_NOT_IP, skb->len);
		return BPF_DROP;
	}
	svc = service_of(data, data_end, &k, 0);
	if (!svc) {
		count_event(LWTUN_SERVICE_EV_MISS, skb->len);
		return BPF_DROP;
	}
	in.hash = flow_key_hash(&k);
	be = probe_target(skb, &idx, &probe);
	if (probe) {
		/* a health probe: the backend its mark names, in service or drained (so that it is
		 * seen coming back), with the encap its data gets; not remembered */
		if (!be || be->state == LWTUN_BACKEND_GONE)
			goto no_backend;
		count_event(LWTUN_SERVICE_EV_PROBE, skb->len);
	} else {
		be = choose(svc, &k, in.hash, skb->len);
		if (!be)
			goto no_backend;
	}
	p = be->peer; /* a copy: user space may rewrite the entry meanwhile */
	st = bpf_map_lookup_elem(&backend_stats, &p.slot);
	pkts = wire_packets(skb);
	bytes = skb->len;
	placeholder = p.kind == LWTUN_ENCAP_IPIP && !in.v6 && skb->gso_size;
	len = build(&p, &in, hdr, placeholder, skb->len);
	if (len < 20 || len > HDR_MAX)
		goto err;
	if (p.kind == LWTUN_ENCAP_GRE && (p.flags & LWTUN_PEER_GRE_CSUM) && !skb->gso_size &&
	    gre_csum(skb, hdr, (p.flags & LWTUN_PEER_OUTER_V6) ? 40 : 20, len, 0, skb->len))
		goto err;
	if (bpf_lwt_push_encap(skb, BPF_LWT_ENCAP_IP, hdr, len))
		goto err;
	if (placeholder && fix_placeholder(skb, p.flags & LWTUN_PEER_OUTER_V6))
		goto err;
	if (st) {
		st->packets += pkts;
		st->bytes += bytes;
	}
	return BPF_LWT_REROUTE;
err:
	if (st)
		st->errors += pkts;
	return BPF_DROP;
no_backend:
	count_event(LWTUN_SERVICE_EV_NO_BACKEND, skb->len);
	return BPF_DROP;
}

/* For BPF_PROG_TEST_RUN on an Ethernet frame: the row and backend a new flow gets (the flow
 * table is neither read nor written), in `pick`. */
SEC("tc")
int service_pick(struct __sk_buff *skb)
{
	struct lwtun_service_pick *out;
	struct lwtun_flow_key k = {};
	struct lwtun_service *svc;
	struct inner in = {};
	__u32 zero = 0, row = 0, idx = 0;

	out = bpf_map_lookup_elem(&pick, &zero);
	if (!out)
		return TC_ACT_SHOT;
	__builtin_memset(out, 0, sizeof(*out));
	if (parse_flow((void *)(long)skb->data, (void *)(long)skb->data_end, skb->protocol, ETH_HLEN,
		       &k, &in) < 0)
		return TC_ACT_SHOT;
	out->hash = flow_key_hash(&k);
	svc = service_of((void *)(long)skb->data, (void *)(long)skb->data_end, &k, ETH_HLEN);
	if (!svc)
		return TC_ACT_SHOT;
	out->table = svc->table;
	if (row_pick(svc, out->hash, &row, &idx) < 0)
		return TC_ACT_SHOT;
	out->row = row;
	out->backend = idx;
	out->found = 1;
	return TC_ACT_OK;
}

/* AF_INET / AF_INET6 for bpf_fib_lookup (from linux/socket.h, which BPF programs do not include) */
#define AF_INET_ 2
#define AF_INET6_ 10

/*
 * The XDP director (glb-director's shape): a frame to a service's address arriving on the
 * interface is encapsulated to the backend its flow picks, in place (bpf_xdp_adjust_head), and
 * sent on by the route to the backend: back out of the same interface (XDP_TX) or redirected to
 * the route's device, with the next hop's MAC from bpf_fib_lookup. Where the next hop has no
 * neighbour entry yet, the frame goes to the stack as it came (XDP_PASS): with forwarding on and
 * the service's LWT route (service_xmit) on this host, the stack encapsulates it to the same
 * backend and resolves the neighbour; the next frames go by XDP. Frames to other addresses pass
 * untouched. Shares every table with service_xmit: the same flow reaches the
 * same backend by either path.
 */
SEC("xdp")
int service_director(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct hdr_cursor nh = { .pos = data };
	struct bpf_fib_lookup fib = {};
	struct lwtun_flow_key k = {};
	struct lwtun_peer_stats *st;
	struct lwtun_service *svc;
	struct lwtun_backend *be;
	__u8 hdr[HDR_MAX] = {};
	struct ethhdr *eth;
	struct inner in = {};
	struct lwtun_peer p;
	__u32 len, inner_len, i;
	int proto, rc;

	proto = parse_ethhdr(&nh, data_end, &eth);
	if (proto < 0 || nh.pos != data + ETH_HLEN)
		return XDP_PASS; /* short, or VLAN-tagged: not ours to read */
	if (proto != bpf_htons(ETH_P_IP) && proto != bpf_htons(ETH_P_IPV6))
		return XDP_PASS;
	if (parse_flow(data, data_end, proto, ETH_HLEN, &k, &in) < 0)
		return XDP_PASS;
	svc = service_of(data, data_end, &k, ETH_HLEN);
	if (!svc)
		return XDP_PASS;
	inner_len = data_end - data - ETH_HLEN;
	in.hash = flow_key_hash(&k);
	be = choose(svc, &k, in.hash, inner_len);
	if (!be) {
		count_event(LWTUN_SERVICE_EV_NO_BACKEND, inner_len);
		return XDP_DROP;
	}
	p = be->peer;
	st = bpf_map_lookup_elem(&backend_stats, &p.slot);
	if (p.kind == LWTUN_ENCAP_GRE && (p.flags & LWTUN_PEER_GRE_CSUM))
		goto drop;
	len = build(&p, &in, hdr, 0, inner_len);
	if (len < 20 || len > HDR_MAX || (len & 3))
		goto drop;
	/* the route to the backend, before the frame is touched */
	fib.ifindex = ctx->ingress_ifindex;
	fib.tot_len = inner_len + len;
	if (p.flags & LWTUN_PEER_OUTER_V6) {
		fib.family = AF_INET6_;
		__builtin_memcpy(fib.ipv6_src, p.local, 16);
		__builtin_memcpy(fib.ipv6_dst, p.remote, 16);
	} else {
		fib.family = AF_INET_;
		__builtin_memcpy(&fib.ipv4_src, p.local, 4);
		__builtin_memcpy(&fib.ipv4_dst, p.remote, 4);
	}
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH) {
		/* The stack resolves the next hop: it gets the frame as it came, and its route to
		 * the service (Services::route: service_xmit, the same tables, the flow now
		 * remembered) encapsulates it. An encapsulated frame would not do: its source is
		 * this host's own address, which the stack refuses on input (a martian). */
		count_event(LWTUN_SERVICE_EV_DIRECTOR_PASS, inner_len);
		return XDP_PASS;
	}
	if (rc != BPF_FIB_LKUP_RET_SUCCESS)
		goto drop;
	if (!(p.flags & LWTUN_PEER_OUTER_V6)) {
		struct iphdr *o = (void *)hdr;

		o->check = 0;
		o->check = csum_fold(bpf_csum_diff(0, 0, (__be32 *)hdr, 20, 0));
	}
	if (bpf_xdp_adjust_head(ctx, -(int)len))
		goto drop;
	data = (void *)(long)ctx->data;
	data_end = (void *)(long)ctx->data_end;
	eth = data;
	if ((void *)(eth + 1) > data_end)
		goto drop;
	__builtin_memcpy(eth->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib.smac, ETH_ALEN);
	eth->h_proto = (p.flags & LWTUN_PEER_OUTER_V6) ? bpf_htons(ETH_P_IPV6) : bpf_htons(ETH_P_IP);
	/* the outer header, a word at a time (its length is a multiple of 4) */
#pragma unroll
	for (i = 0; i < HDR_MAX / 4; i++) {
		__u32 *w = data + ETH_HLEN + i * 4;

		if (i * 4 >= len)
			break;
		if ((void *)(w + 1) > data_end)
			goto drop;
		*w = *(__u32 *)(hdr + i * 4);
	}
	if (fib.ifindex == ctx->ingress_ifindex) {
		count_event(LWTUN_SERVICE_EV_DIRECTOR_TX, inner_len);
		rc = XDP_TX;
	} else {
		count_event(LWTUN_SERVICE_EV_DIRECTOR_REDIRECT, inner_len);
		rc = bpf_redirect(fib.ifindex, 0);
	}
	if (st) {
		st->packets++;
		st->bytes += inner_len;
	}
	return rc;
drop:
	count_event(LWTUN_SERVICE_EV_DIRECTOR_DROP, inner_len);
	if (st)
		st->errors++;
	return XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
