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

#endif /* LWTUN_H */
