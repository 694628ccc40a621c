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
 * object ("LWTN"). Bump LWTUN_ABI_VERSION whenever a struct here changes. */
#define LWTUN_MAGIC 0x4c57544eU
#define LWTUN_ABI_VERSION 1

/* A packet and byte counter, per CPU where the map is per-CPU. */
struct lwtun_counter {
	__u64 packets;
	__u64 bytes;
};
LWTUN_ASSERT_SIZE(struct lwtun_counter, 16);

/* Indexes of the per-hook counters of an LWT program family (lwt_count.bpf.c). */
#define LWTUN_HOOK_IN 0
#define LWTUN_HOOK_OUT 1
#define LWTUN_HOOK_XMIT 2
#define LWTUN_HOOK_MAX 3

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
#define LWTUN_FIB_SLOTS 12

#endif /* LWTUN_H */
