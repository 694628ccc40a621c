/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * lwtun.h: the ABI shared by lwtun's BPF programs and its Rust code.
 *
 * Every struct that crosses the user/kernel line is declared here, once. Maps name these types with
 * __type(key, ...)/__type(value, ...) so libbpf-cargo generates the matching Rust types in each
 * skeleton's `types` module; Rust never keeps a hand-written copy.
 *
 * Rules: fixed-width types only (no bool, no enum in a layout), explicit padding, and a size
 * assertion for every struct so a layout change is a compile error on the C side.
 */
#ifndef LWTUN_H
#define LWTUN_H

#include <linux/types.h>

#define LWTUN_ASSERT_SIZE(type, size) _Static_assert(sizeof(type) == (size), #type " size is ABI")

/* Magic and version carried by every versioned config map, so user space refuses a mismatched
 * object ("LWTN"). Bump LWTUN_ABI_VERSION whenever the meaning of a struct's bytes here changes;
 * a struct that only grows at its end is told apart by its size (the loaders check it). */
#define LWTUN_MAGIC 0x4c57544eU
#define LWTUN_ABI_VERSION 1

/* A packet and byte counter, per CPU where the map is per-CPU. */
struct lwtun_counter {
	__u64 packets;
	__u64 bytes;
};
LWTUN_ASSERT_SIZE(struct lwtun_counter, 16);

/* Indexes of the per-hook counters of the lwt_count program family. */
#define LWTUN_HOOK_IN 0
#define LWTUN_HOOK_OUT 1
#define LWTUN_HOOK_XMIT 2
#define LWTUN_HOOK_SEG6LOCAL 3
#define LWTUN_HOOK_MAX 4

/* ---- XDP (bpf/xdp_*.bpf.c <-> src/xdp/) ---- */

/* XDP actions counted: XDP_ABORTED (0), XDP_DROP, XDP_PASS, XDP_TX, XDP_REDIRECT (4). */
#define LWTUN_XDP_ACTIONS 5

/* Per-action packet and byte counters of one XDP program, one copy per CPU (the tutorial's
 * xdp_stats). Index `action` with the XDP action code; user space sums the CPUs. */
struct lwtun_xdp_stats {
	struct lwtun_counter action[LWTUN_XDP_ACTIONS];
};
LWTUN_ASSERT_SIZE(struct lwtun_xdp_stats, 80);

/* Slots of an XDP family's stats map: the program attached to an interface, and the per-port
 * program a devmap runs after a redirect. */
#define LWTUN_XDP_STAGE_INGRESS 0
#define LWTUN_XDP_STAGE_EGRESS 1
#define LWTUN_XDP_STAGES 2

/* A MAC address as a map key (padded to 8 bytes). */
struct lwtun_mac {
	__u8 addr[6];
	__u8 pad[2];
};
LWTUN_ASSERT_SIZE(struct lwtun_mac, 8);

/* xdp_redirect: what to do with a frame whose destination MAC is the key. */
struct lwtun_xdp_redirect {
	__u32 port;     /* key in the family's devmap */
	__u8 dst[6];    /* new destination MAC */
	__u8 src[6];    /* new source MAC */
};
LWTUN_ASSERT_SIZE(struct lwtun_xdp_redirect, 16);

/* xdp_redirect: one slot of the per-CPU, direct-mapped cache in front of the rule table. A slot
 * is valid while `gen` equals the table's generation (`rule_gen`, bumped by user space after
 * every rule change; 0 turns the cache off). `port` LWTUN_XDP_NO_RULE caches "no rule". */
struct lwtun_xdp_rule_slot {
	__u32 gen;
	__u32 port;
	__u8 mac[6];    /* the destination MAC looked up */
	__u8 dst[6];
	__u8 src[6];
	__u8 pad[6];
};
LWTUN_ASSERT_SIZE(struct lwtun_xdp_rule_slot, 32);
#define LWTUN_XDP_NO_RULE 0xffffffffu

/* xdp_echo: an address the responder answers for (IPv4 as ::ffff:a.b.c.d, IPv6 as is). */
struct lwtun_ip_addr {
	__u8 addr[16];
};
LWTUN_ASSERT_SIZE(struct lwtun_ip_addr, 16);

/* xdp_router: counters per bpf_fib_lookup return code (BPF_FIB_LKUP_RET_*, 0..9), plus slots for
 * packets not looked up (TTL/hop limit expired, not IP). */
#define LWTUN_FIB_RESULTS 10
#define LWTUN_FIB_TTL_EXPIRED 10
#define LWTUN_FIB_NOT_IP 11
/* Frames forwarded from the route cache (user space adds them to SUCCESS). */
#define LWTUN_FIB_CACHE_HIT 12
#define LWTUN_FIB_SLOTS 13

/* xdp_router: the route cache's settings (array of one). The cache is on while `gen` and
 * `max_age_ns` are both non-zero; user space bumps `gen` to drop every cached route and writes
 * `max_age_ticks` 0, which the program then sets to the age in jiffies (it knows the tick rate). */
struct lwtun_xdp_route_cache_cfg {
	__u32 gen;
	__u32 pad;
	__u64 max_age_ns;
	__u64 max_age_ticks;
};
LWTUN_ASSERT_SIZE(struct lwtun_xdp_route_cache_cfg, 24);

/* xdp_router: one successful bpf_fib_lookup, cached per CPU in a direct-mapped slot chosen by
 * the flow. Every input of the lookup is part of the key (ingress device, family, L4 protocol,
 * TOS / IPv6 flow info, L4 ports, addresses): with a multipath route the answer depends on the
 * ports (fib_multipath_hash_policy 1), so it is cached per flow. The slot is valid while `gen`
 * is the configuration's and for the configured age after `filled` (jiffies; nanoseconds where
 * CONFIG_HZ is unknown). IPv4 addresses sit in src[0]/dst[0].
 * Bytes 8..64 (generation and key) are compared as 64-bit words, so the pads stay zero. */
struct lwtun_xdp_route_slot {
	__u64 filled;       /* jiffies, or ns where CONFIG_HZ is unknown */
	__u32 gen;
	__u32 ifindex;      /* ingress */
	__u32 flowinfo;     /* IPv4: TOS; IPv6: traffic class and flow label as in the header */
	__u8 family;
	__u8 proto;
	__u8 pad[2];
	__u32 ports;        /* source and destination port as in the L4 header; 0 without ports */
	__u32 pad1;
	__u32 src[4];
	__u32 dst[4];
	__u32 egress;       /* egress ifindex from the lookup */
	__u16 mtu;          /* the lookup's MTU (bpf_fib_lookup mtu_result) */
	__u8 smac[6];
	__u8 dmac[6];
	__u8 pad2[6];
};
LWTUN_ASSERT_SIZE(struct lwtun_xdp_route_slot, 88);

/* ---- tc/lwt tunnel redirect (bpf/tc_redirect.bpf.c <-> src/tunnel_redirect.rs) ---- */

/* LPM trie keys: an inner destination prefix. Addresses are in network byte order. */
struct lwtun_redirect_key4 {
	__u32 prefixlen;
	__u8 addr[4];
};
LWTUN_ASSERT_SIZE(struct lwtun_redirect_key4, 8);

struct lwtun_redirect_key6 {
	__u32 prefixlen;
	__u8 addr[16];
};
LWTUN_ASSERT_SIZE(struct lwtun_redirect_key6, 20);

/* lwtun_redirect_rule.flags */
#define LWTUN_REDIRECT_INGRESS (1U << 0)   /* redirect to the device's ingress, not its egress */
#define LWTUN_REDIRECT_REMOTE_V6 (1U << 1) /* remote (and local) are IPv6 */
#define LWTUN_REDIRECT_L2 (1U << 2)        /* the device carries Ethernet frames: write the MACs */
#define LWTUN_REDIRECT_LOCAL (1U << 3)     /* local holds the outer source address */

/* What to do with a packet whose inner destination matched: the tunnel key to set
 * (bpf_skb_set_tunnel_key) and the collect_md device to redirect to. */
struct lwtun_redirect_rule {
	__u32 ifindex;      /* the collect_md tunnel device */
	__u32 flags;        /* LWTUN_REDIRECT_* */
	__u32 key_flags;    /* bpf_skb_set_tunnel_key flags: BPF_F_ZERO_CSUM_TX, _DONT_FRAGMENT, ... */
	__u32 tunnel_id;    /* key / VNI */
	__u8 remote[16];    /* outer destination, network byte order (IPv4 in the first 4 bytes) */
	__u8 local[16];     /* outer source when LWTUN_REDIRECT_LOCAL, else chosen by the route */
	__u32 label;        /* IPv6 outer flow label */
	__u8 tos;
	__u8 ttl;           /* 0: the device's default */
	__u8 inner_dst[6];  /* LWTUN_REDIRECT_L2: destination MAC of the inner frame */
	__u8 inner_src[6];  /* LWTUN_REDIRECT_L2: source MAC of the inner frame */
	__u8 pad[2];
	__u32 slot;         /* index of this rule's counters in rule_stats */
};
LWTUN_ASSERT_SIZE(struct lwtun_redirect_rule, 72);

/* Per-rule counters, one copy per CPU. */
struct lwtun_redirect_stats {
	__u64 packets;  /* redirected */
	__u64 bytes;
	__u64 errors;   /* matched but dropped: the tunnel key or the redirect was refused */
};
LWTUN_ASSERT_SIZE(struct lwtun_redirect_stats, 24);

/* Slots of the family's event counters (per CPU). */
#define LWTUN_REDIRECT_EV_MISS 0    /* IP packet with no matching rule: passed on */
#define LWTUN_REDIRECT_EV_NOT_IP 1  /* not IPv4/IPv6 (or truncated): passed on */
#define LWTUN_REDIRECT_EV_MAX 2

/* ---- LWT redirect to any device (bpf/lwt_redirect.bpf.c <-> src/lwt_redirect.rs) ---- */

/* Rules are keyed by destination prefix with lwtun_redirect_key4 / lwtun_redirect_key6 (above). */

/* lwtun_lwt_redirect_rule.flags */
#define LWTUN_LWT_REDIRECT_INGRESS (1U << 0) /* to the device's ingress (BPF_F_INGRESS), not egress */
#define LWTUN_LWT_REDIRECT_L2 (1U << 1)      /* push an Ethernet header (dst, src) first */

/* Where a packet whose destination matched goes: a device's egress or ingress, with or without
 * a pushed Ethernet header. */
struct lwtun_lwt_redirect_rule {
	__u32 ifindex; /* target device, in the namespace of the route's device */
	__u32 flags;   /* LWTUN_LWT_REDIRECT_* */
	__u32 slot;    /* index of this rule's counters in rule_stats */
	__u8 dst[6];   /* LWTUN_LWT_REDIRECT_L2: destination MAC */
	__u8 src[6];   /* LWTUN_LWT_REDIRECT_L2: source MAC */
};
LWTUN_ASSERT_SIZE(struct lwtun_lwt_redirect_rule, 24);

/* Per-rule counters, one copy per CPU. Drops after the redirect (target down, no carrier, queue
 * full) are counted by the target device itself (its tx_dropped / rx_dropped), not here. */
struct lwtun_lwt_redirect_stats {
	__u64 packets; /* redirected: bpf_redirect accepted the target */
	__u64 bytes;   /* their IP bytes (before a pushed Ethernet header) */
	__u64 failed;  /* matched but dropped: pushing the header or bpf_redirect failed */
};
LWTUN_ASSERT_SIZE(struct lwtun_lwt_redirect_stats, 24);

/* The family's configuration (one entry, index 0). */
struct lwtun_lwt_redirect_config {
	__u32 magic;   /* LWTUN_MAGIC; until it is set, misses pass */
	__u32 version; /* LWTUN_ABI_VERSION */
	__u32 miss;    /* LWTUN_MISS_* (below): what a packet without a rule gets */
	__u32 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_lwt_redirect_config, 16);

/* Slots of the family's event counters (per CPU, packets and IP bytes). */
#define LWTUN_LWT_REDIRECT_EV_MISS_PASS 0 /* no rule, passed on by the route (BPF_OK) */
#define LWTUN_LWT_REDIRECT_EV_MISS_DROP 1 /* no rule, dropped */
#define LWTUN_LWT_REDIRECT_EV_MALFORMED 2 /* not IPv4/IPv6, truncated or bad header: dropped */
#define LWTUN_LWT_REDIRECT_EV_MAX 3

/* ---- LWT tunnels (bpf/lwt_encap.bpf.c <-> src/peer.rs, bpf/tc_decap.bpf.c <-> src/decap.rs) ---- */

/* The encapsulations lwtun pushes (lwt_encap) and strips (tc_decap). The outer header is IPv4 or
 * IPv6 either way; these name what follows it. */
#define LWTUN_ENCAP_IPIP 1 /* the inner packet directly: next header 4 (IPv4) or 41 (IPv6) */
#define LWTUN_ENCAP_GRE 2  /* GRE (RFC 2784/2890), optional key and checksum, protocol 47 */
#define LWTUN_ENCAP_UDP 3  /* FOU: UDP then the inner packet, destination port per peer */

/* Peer table keys (LPM trie): an inner destination prefix, address in network byte order. The decap
 * family may reuse them for its known-peer check (prefix 32/128 of an outer source). */
struct lwtun_peer_key4 {
	__u32 prefixlen;
	__u8 addr[4];
};
LWTUN_ASSERT_SIZE(struct lwtun_peer_key4, 8);

struct lwtun_peer_key6 {
	__u32 prefixlen;
	__u8 addr[16];
};
LWTUN_ASSERT_SIZE(struct lwtun_peer_key6, 20);

/* lwtun_peer.flags */
#define LWTUN_PEER_OUTER_V6 (1U << 0)    /* remote and local are IPv6 */
#define LWTUN_PEER_GRE_KEY (1U << 1)     /* GRE: carry the key field */
#define LWTUN_PEER_GRE_CSUM (1U << 2)    /* GRE: carry and fill the checksum field */
#define LWTUN_PEER_TTL_INHERIT (1U << 3) /* outer TTL/hop limit = inner one (ttl field ignored) */
#define LWTUN_PEER_TOS_INHERIT (1U << 4) /* outer TOS/traffic class = inner one (tos ignored) */

/* What the encap pushes for an inner destination that matched a peer prefix. */
struct lwtun_peer {
	__u8 remote[16];   /* outer destination (IPv4 in the first 4 bytes), network byte order */
	__u8 local[16];    /* outer source, same layout */
	__u8 kind;         /* LWTUN_ENCAP_* */
	__u8 flags;        /* LWTUN_PEER_* */
	__u8 ttl;          /* outer TTL / hop limit unless inherited */
	__u8 tos;          /* outer TOS / traffic class unless inherited */
	__u32 gre_key;     /* GRE key, network byte order (LWTUN_PEER_GRE_KEY) */
	__u16 udp_dport;   /* UDP: destination port, network byte order */
	__u16 pad;
	__u32 slot;        /* index of this peer's counters in peer_stats */
};
LWTUN_ASSERT_SIZE(struct lwtun_peer, 48);

/* Per-peer counters, one copy per CPU. */
struct lwtun_peer_stats {
	__u64 packets; /* encapsulated */
	__u64 bytes;   /* inner bytes encapsulated */
	__u64 errors;  /* matched but not sent: the encap was refused or the packet was malformed */
};
LWTUN_ASSERT_SIZE(struct lwtun_peer_stats, 24);

/* What the encap does with a packet whose inner destination matches no peer. */
#define LWTUN_MISS_DROP 0 /* drop it (the default) and count it */
#define LWTUN_MISS_PASS 1 /* send it on unencapsulated and count it */

/* The encap family's configuration (one entry, index 0). */
struct lwtun_encap_config {
	__u32 magic;    /* LWTUN_MAGIC */
	__u32 version;  /* LWTUN_ABI_VERSION */
	__u32 miss_v4;  /* LWTUN_MISS_* for inner IPv4 */
	__u32 miss_v6;  /* LWTUN_MISS_* for inner IPv6 */
	/* encap_in: the largest outer packet the underlay carries; a packet that would not fit,
	 * unsegmented, with DF or IPv6, is dropped and counted (0: not checked) */
	__u32 forward_mtu;
};
LWTUN_ASSERT_SIZE(struct lwtun_encap_config, 20);

/* Slots of the encap family's event counters (per CPU). */
#define LWTUN_ENCAP_EV_MISS_DROP_V4 0
#define LWTUN_ENCAP_EV_MISS_DROP_V6 1
#define LWTUN_ENCAP_EV_MISS_PASS_V4 2
#define LWTUN_ENCAP_EV_MISS_PASS_V6 3
#define LWTUN_ENCAP_EV_NOT_IP 4      /* not IPv4/IPv6 or truncated: dropped */
#define LWTUN_ENCAP_EV_TOO_BIG 5     /* encap_in: too big for forward_mtu: dropped */
#define LWTUN_ENCAP_EV_MAX 6

/* ---- services (bpf/lwt_service.bpf.c <-> src/service/): a prefix served by weighted backends ---- */

/* A service: the prefix (a VIP, /32 or /128, or a wider one) its LPM entry names, served by the
 * table of rows at service_tables[table] (an inner array of `rows` backend indexes, filled by
 * user space's Maglev). Keys: lwtun_peer_key4 / lwtun_peer_key6. */
struct lwtun_service {
	__u32 table; /* index of its row table in service_tables, and of its counters */
	__u32 rows;  /* rows in that table (a prime); the flow hash modulo rows picks one */
};
LWTUN_ASSERT_SIZE(struct lwtun_service, 8);

/* lwtun_backend.state */
#define LWTUN_BACKEND_GONE 0    /* a free index: no backend */
#define LWTUN_BACKEND_UP 1      /* in service */
#define LWTUN_BACKEND_DRAINED 2 /* out of service (health): its flows pick a row again; probes
				 * still reach it */

/* A backend: where a flow's packets are encapsulated to (peer.slot: its counters in
 * backend_stats), whether flows remembered to it may stay, and which holder of the index it is. */
struct lwtun_backend {
	struct lwtun_peer peer;
	__u32 state;      /* LWTUN_BACKEND_* */
	__u32 generation; /* bumped each time the index is given to a backend: a flow remembered to
			   * an earlier holder of the index is not sent to this one */
	__u32 table;      /* the service it serves (lwtun_service.table): for an adopting owner */
	__u32 weight;     /* its weight in that service's rows: for an adopting owner */
};
LWTUN_ASSERT_SIZE(struct lwtun_backend, 64);

/* A flow as the service's flow table remembers it: the inner addresses, protocol and ports (for
 * an ICMP error, those of the flow it is about, turned round: it follows that flow). */
struct lwtun_flow_key {
	__u8 src[16];
	__u8 dst[16];
	__u16 sport;
	__u16 dport;
	__u8 proto;
	__u8 v6;
	__u8 pad[2];
};
LWTUN_ASSERT_SIZE(struct lwtun_flow_key, 40);

/* The backend a flow was sent to: an index of backends and that backend's generation. */
struct lwtun_flow {
	__u32 backend;
	__u32 generation;
};
LWTUN_ASSERT_SIZE(struct lwtun_flow, 8);

/* Indexes of the service family's event counters (per CPU). */
#define LWTUN_SERVICE_EV_MISS 0       /* no service for the destination: dropped */
#define LWTUN_SERVICE_EV_NOT_IP 1     /* not IPv4/IPv6 or unreadable: dropped */
#define LWTUN_SERVICE_EV_NO_BACKEND 2 /* the service's table is empty or names no backend: dropped */
#define LWTUN_SERVICE_EV_FLOW_HIT 3   /* sent to the backend the flow table remembered */
#define LWTUN_SERVICE_EV_FLOW_NEW 4   /* a row picked the backend (new flow, or its backend gone) */

#define LWTUN_SERVICE_EV_PROBE 5      /* a health probe, sent to the backend its mark names */
#define LWTUN_SERVICE_EV_DIRECTOR_TX 6       /* XDP director: encapsulated, sent back out (XDP_TX) */
#define LWTUN_SERVICE_EV_DIRECTOR_REDIRECT 7 /* XDP director: encapsulated, redirected to the
					      * device the route to the backend names */
#define LWTUN_SERVICE_EV_DIRECTOR_PASS 8     /* XDP director: encapsulated, handed to the stack
					      * (no neighbour entry yet: it resolves and forwards) */
#define LWTUN_SERVICE_EV_DIRECTOR_DROP 9     /* XDP director: no route to the backend, too big
					      * for its path, or a GRE checksum peer (not built in
					      * XDP): dropped */
#define LWTUN_SERVICE_EV_MAX 10

/* The service family's configuration (one entry, index 0). A packet whose mark has
 * (mark & probe_mask) == probe_value is a health probe: it goes to backend (mark & ~probe_mask),
 * whatever the rows say and whether or not that backend is in service, and is not remembered. */
struct lwtun_service_config {
	__u32 magic;       /* LWTUN_MAGIC */
	__u32 version;     /* LWTUN_ABI_VERSION */
	__u32 probe_mask;  /* 0: no probes */
	__u32 probe_value;
};
LWTUN_ASSERT_SIZE(struct lwtun_service_config, 16);

/* What encap_preview-like service_pick found for one frame (BPF_PROG_TEST_RUN): the row and the
 * backend a new flow gets. */
struct lwtun_service_pick {
	__u32 found;   /* 1 when a service and a backend were found */
	__u32 table;
	__u32 row;
	__u32 backend;
	__u32 hash;
	__u32 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_service_pick, 24);

/* ---- tc decap (bpf/tc_decap.bpf.c <-> src/decap.rs); peers keyed by lwtun_peer_key4/6 ---- */

/* A known peer (outer source prefix) the decap accepts tunnel packets from. */
#define LWTUN_DECAP_PEER_GRE_KEY (1U << 0) /* GRE packets from this peer must carry gre_key */
struct lwtun_decap_peer {
	__u32 flags;   /* LWTUN_DECAP_PEER_* */
	__u32 gre_key; /* network byte order */
};
LWTUN_ASSERT_SIZE(struct lwtun_decap_peer, 8);

/* lwtun_decap_config.flags */
#define LWTUN_DECAP_KEY_TO_MARK (1U << 0)    /* write a GRE packet's key to skb->mark */
#define LWTUN_DECAP_NO_GRE_CSUM (1U << 1)    /* do not verify GRE checksums */

/* The decap family's configuration (one entry, index 0). */
struct lwtun_decap_config {
	__u32 magic;   /* LWTUN_MAGIC */
	__u32 version; /* LWTUN_ABI_VERSION */
	__u32 flags;   /* LWTUN_DECAP_* */
	__u32 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_decap_config, 16);

/* Slots of the decap family's counters (per CPU, packets and outer bytes). */
#define LWTUN_DECAP_EV_IPIP 0         /* decapsulated IP-in-IP (4 or 41) */
#define LWTUN_DECAP_EV_GRE 1          /* decapsulated GRE */
#define LWTUN_DECAP_EV_UDP 2          /* decapsulated UDP (FOU) */
#define LWTUN_DECAP_EV_UNKNOWN_PEER 3 /* tunnel packet from a source not in the peer table: dropped */
#define LWTUN_DECAP_EV_MALFORMED 4    /* truncated or inconsistent headers: dropped */
#define LWTUN_DECAP_EV_NOT_FOR_US 5   /* not a tunnel packet to a local endpoint: passed */
#define LWTUN_DECAP_EV_FRAGMENT 6     /* outer header fragmented: dropped */
#define LWTUN_DECAP_EV_BAD_CSUM 7     /* outer IPv4 header or GRE checksum wrong: dropped */
#define LWTUN_DECAP_EV_KEY_MISMATCH 8 /* GRE key missing or not the peer's: dropped */
#define LWTUN_DECAP_EV_UNSUPPORTED 9  /* what lwtun never sends (GRE version/flags, extension headers): dropped */
#define LWTUN_DECAP_EV_ERROR 10       /* the kernel refused to strip the header: dropped */
#define LWTUN_DECAP_EV_ECN 11         /* outer CE on a not-ECT inner packet: dropped (RFC 6040) */
#define LWTUN_DECAP_EV_MAX 12

/* ---- program chains and capture (bpf/chain*.bpf.c, bpf/capture.bpf.c <-> src/chain/, src/capture/) ---- */

/* Stage slots of a chain's prog array. Slot LWTUN_CHAIN_SLOTS of the next table is the head. */
#define LWTUN_CHAIN_SLOTS 32
#define LWTUN_CHAIN_HEAD LWTUN_CHAIN_SLOTS
#define LWTUN_CHAIN_END 0xffffffffU

/* Every chain object (entry, stages, capture) carries this in its .rodata as `lwtun_chain_abi`;
 * user space reads it from the object before loading and refuses a mismatch. */
struct lwtun_chain_abi {
	__u32 magic;   /* LWTUN_MAGIC */
	__u32 version; /* LWTUN_ABI_VERSION */
	__u32 slots;   /* LWTUN_CHAIN_SLOTS */
	__u32 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_chain_abi, 16);

/* A chain's configuration (one entry, index 0), written by user space. */
struct lwtun_chain_config {
	__u32 magic;   /* LWTUN_MAGIC: the entry passes packets through unchanged until it is set */
	__u32 version; /* LWTUN_ABI_VERSION */
	__s32 verdict; /* returned when the chain ends with no stage deciding (empty chain) */
	__u32 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_chain_config, 16);

/* Per-CPU state of the packet walking the chain (a chain runs to its end on one CPU, with BH
 * disabled, so one slot per CPU is enough). */
struct lwtun_chain_cursor {
	__u32 slot;    /* slot running now (LWTUN_CHAIN_HEAD before the first stage) */
	__u32 depth;   /* stages entered so far (1 for the first) */
	__s32 verdict; /* at the exit hook: the chain's verdict */
	__u32 hook;    /* LWTUN_CHAIN_HOOK_* of the entry */
};
LWTUN_ASSERT_SIZE(struct lwtun_chain_cursor, 16);

#define LWTUN_CHAIN_HOOK_XDP 0
#define LWTUN_CHAIN_HOOK_TC 1
#define LWTUN_CHAIN_HOOK_LWT_IN 2
#define LWTUN_CHAIN_HOOK_LWT_OUT 3
#define LWTUN_CHAIN_HOOK_LWT_XMIT 4

/* chain_stages: what the test stage saw in one slot. */
struct lwtun_chain_stage_stats {
	__u64 packets;
	__u64 bytes;
	__u64 depth_sum; /* sum of the depths it ran at: packets * position when the order is stable */
};
LWTUN_ASSERT_SIZE(struct lwtun_chain_stage_stats, 24);

/* chain_stages: what the test stage does in one slot: go on (end 0) or end the chain. */
struct lwtun_chain_stage_verdict {
	__u32 end;     /* 1: end the chain with `verdict` */
	__s32 verdict;
};
LWTUN_ASSERT_SIZE(struct lwtun_chain_stage_verdict, 8);

/* chain_table: an entry of a forwarding table (inner map of an ARRAY_OF_MAPS, keyed by the IPv4
 * destination in network byte order). The stage counts hits per tag and goes on; a miss ends the
 * chain with the drop verdict. */
#define LWTUN_TABLE_TAGS 64
#define LWTUN_TABLE_TAG_MISS 0
struct lwtun_table_entry {
	__u32 tag; /* 1..63: the counter slot of this entry's hits */
	__u32 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_table_entry, 8);

/* ---- dispatcher (bpf/dispatch.h, bpf/dispatch*.bpf.c <-> src/chain/dispatcher.rs) ---- */

/* Member slots of one dispatcher (a prog array of this size; slots run in ascending order). */
#define LWTUN_DISPATCH_SLOTS 8
/* The dispatcher's own ABI version (its maps and structs below), checked with LWTUN_MAGIC. */
#define LWTUN_DISPATCH_VERSION 2

/* Every dispatch-aware object (the root and its members) carries this in its .rodata as
 * `lwtun_dispatch_abi`; user space reads it before loading and refuses a mismatch. */
struct lwtun_dispatch_abi {
	__u32 magic;   /* LWTUN_MAGIC */
	__u32 version; /* LWTUN_DISPATCH_VERSION */
	__u32 slots;   /* LWTUN_DISPATCH_SLOTS */
	__u32 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_dispatch_abi, 16);

/* Bits of a continue mask: verdict v (0..29) is bit v; -1 (tc's TC_ACT_UNSPEC) is bit 30 and
 * BPF_LWT_REROUTE (128) bit 31. Other verdicts always end the run. */
#define LWTUN_DISPATCH_BIT_UNSPEC 30
#define LWTUN_DISPATCH_BIT_REROUTE 31

/* The dispatcher's configuration (one entry, index 0), written by user space. A member in slot s
 * that returns verdict v lets the next non-empty slot run when v's bit is set in
 * continue_mask[s]; otherwise v is the packet's verdict. */
struct lwtun_dispatch_config {
	__u32 magic;   /* LWTUN_MAGIC: until it is set, the root passes every packet */
	__u32 version; /* LWTUN_DISPATCH_VERSION */
	__s32 verdict; /* returned when every member went on (or none is attached) */
	__u32 pad;
	__u32 continue_mask[LWTUN_DISPATCH_SLOTS];
};
LWTUN_ASSERT_SIZE(struct lwtun_dispatch_config, 48);

/* Per-CPU state of the packet running through the dispatcher (the run goes to its end on one
 * CPU with BH disabled, so one entry per CPU is enough). */
struct lwtun_dispatch_cursor {
	__u32 slot;  /* the slot running now */
	__u32 depth; /* members entered so far (1 in the first) */
};
LWTUN_ASSERT_SIZE(struct lwtun_dispatch_cursor, 8);

/* dispatch_member: what a counting member saw (one entry, summed over CPUs). */
struct lwtun_dispatch_member_stats {
	__u64 packets;
	__u64 bytes;
	__u64 depth_sum; /* sum of the positions (1 = first member) it ran at */
	__u64 slot_sum;  /* sum of the slots it ran in */
};
LWTUN_ASSERT_SIZE(struct lwtun_dispatch_member_stats, 32);

/* capture: one ring buffer record, a fixed header then `caplen` bytes of the packet (from the
 * Ethernet header at XDP and tc, from the IP header at the LWT hooks). */
#define LWTUN_CAPTURE_MAX 1536
struct lwtun_capture_meta {
	__u64 timestamp_ns; /* bpf_ktime_get_ns (CLOCK_MONOTONIC) */
	__u32 ifindex;      /* the device the packet is on (ingress device at XDP) */
	__u32 len;          /* the packet's length */
	__u32 caplen;       /* bytes that follow the header */
	__u32 hook;         /* LWTUN_CHAIN_HOOK_* */
	__s32 verdict;      /* the chain's verdict */
	__u16 protocol;     /* skb->protocol (network byte order); 0 at XDP */
	__u16 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_capture_meta, 32);

/* encap_preview (a test_run-safe tc entry point of lwt_encap): the outer header the encap would
 * push for a frame, without pushing it. One entry, index 0. */
#define LWTUN_ENCAP_HDR_MAX 64
struct lwtun_encap_preview {
	__u32 len;   /* header length; 0 when the frame matched no peer or was not IP */
	__u32 slot;  /* the matched peer's counter slot */
	__u8 hdr[LWTUN_ENCAP_HDR_MAX];
};
LWTUN_ASSERT_SIZE(struct lwtun_encap_preview, 72);

/* ---- the checked direct path (bpf/lwt_encap.bpf.c <-> src/tunnel/direct.rs) ---- */

/* direct_paths value, keyed by an IPv4 peer's remote (network byte order): the device through
 * whose tunnel routes the remote may be sent directly (their next hop is where the outer route
 * lookup would send it), and the underlay generation that was checked against. */
struct lwtun_direct_path {
	__u32 ifindex;    /* the inner route's device (skb->ifindex at lwt_xmit) the check holds for */
	__u32 generation; /* direct_state[LWTUN_DIRECT_GENERATION] when it was checked */
};
LWTUN_ASSERT_SIZE(struct lwtun_direct_path, 8);

/* Slots of direct_state (__u64 each). */
#define LWTUN_DIRECT_GENERATION 0  /* bumped by user space on every underlay change it hears of */
#define LWTUN_DIRECT_VALID_UNTIL 1 /* bpf_ktime_get_ns() deadline of the checker's lease; 0: off */
#define LWTUN_DIRECT_STATE_MAX 2

/* Slots of direct_events (per CPU, lwtun_counter): how encap_xmit sent its packets. */
#define LWTUN_DIRECT_EV_DIRECT 0   /* BPF_OK: the inner route's device and next hop */
#define LWTUN_DIRECT_EV_REROUTED 1 /* BPF_LWT_REROUTE: routed again by the outer destination */
#define LWTUN_DIRECT_EV_MAX 2

/* ---- SRv6 End.BPF functions (bpf/seg6_end.bpf.c, bpf/seg6_end.h <-> src/seg6.rs) ---- */

/* Rules are keyed by lwtun_redirect_key6 (above): a prefix of the active segment, the IPv6
 * destination the kernel's End step set (segments[segments_left] after the decrement). */

/* lwtun_seg6_rule.flags */
#define LWTUN_SEG6_RULE_TAG (1U << 0) /* write `tag` into the SRH's tag field */

/* What a function does with a packet whose active segment matched. */
struct lwtun_seg6_rule {
	__u8 nh6[16];  /* End.X: the next hop (network byte order) */
	__u32 table;   /* End.DT6: the table the inner IPv6 packet is looked up in */
	__u32 flags;   /* LWTUN_SEG6_RULE_* */
	__u16 tag;     /* LWTUN_SEG6_RULE_TAG: the SRH tag, host order (written in network order) */
	__u16 pad;
	__u32 pad2;
};
LWTUN_ASSERT_SIZE(struct lwtun_seg6_rule, 32);

/* A function's configuration (one entry, index 0). */
struct lwtun_seg6_config {
	__u32 magic;   /* LWTUN_MAGIC; until it is set, misses pass (End behaviour) */
	__u32 version; /* LWTUN_ABI_VERSION */
	__u32 miss;    /* LWTUN_MISS_*: what a packet without a rule gets */
	__u32 function; /* LWTUN_SEG6_FN_* owning the maps (checked when pinned maps are adopted) */
};
LWTUN_ASSERT_SIZE(struct lwtun_seg6_config, 16);

/* The functions (lwtun_seg6_config.function). */
#define LWTUN_SEG6_FN_TAG 0
#define LWTUN_SEG6_FN_END_X 1
#define LWTUN_SEG6_FN_END_DT6 2

/* Slots of a function's event counters (per CPU, packets and IPv6 bytes). */
#define LWTUN_SEG6_EV_DONE 0          /* the function was applied */
#define LWTUN_SEG6_EV_MISS_PASS 1     /* no rule: the kernel's End behaviour goes on (BPF_OK) */
#define LWTUN_SEG6_EV_MISS_DROP 2     /* no rule: dropped */
#define LWTUN_SEG6_EV_MALFORMED 3     /* not IPv6, no SRH right after the IPv6 header, bad SRH
				       * type or length, truncated: dropped */
#define LWTUN_SEG6_EV_SL_ZERO 4       /* twin only: segments left 0 on arrival (the kernel drops
				       * these before End.BPF runs): dropped */
#define LWTUN_SEG6_EV_INNER_NOT_V6 5  /* End.DT6: the SRH is not followed by IPv6 (41): dropped */
#define LWTUN_SEG6_EV_HELPER_FAILED 6 /* the kernel refused the tag store or the action: dropped */
#define LWTUN_SEG6_EV_MAX 7

/* The twin programs' record of their last decision (one entry, index 0): what the End.BPF
 * program would have done with the packet. */
struct lwtun_seg6_decision {
	__u32 event;         /* LWTUN_SEG6_EV_* the packet was counted in */
	__u32 action;        /* SEG6_LOCAL_ACTION_* the program calls (0: none) */
	__u8 nh6[16];        /* END_X: the next hop */
	__u32 table;         /* END_DT6: the table */
	__u32 inner_offset;  /* END_DT6: where the inner IPv6 packet starts */
	__u16 tag;           /* the tag written (host order), when `tagged` */
	__u8 tagged;         /* 1: the tag was written */
	__u8 segments_left;  /* after the End step */
	__u32 pad;
};
LWTUN_ASSERT_SIZE(struct lwtun_seg6_decision, 40);

#endif /* LWTUN_H */
