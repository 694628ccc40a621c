/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * chain.h: the maps and the walk every program of an lwtun program chain shares.
 *
 * A chain is a prog array of stages (chain_progs), a next table (chain_next: slot -> following
 * slot, entry LWTUN_CHAIN_HEAD is the first stage), a per-CPU cursor (which slot runs now) and an
 * exit hook (chain_exit, one slot) that packets leave through, where a capture program can sit.
 * The entry program (chain.bpf.c) owns these maps; stage objects declare them here too and user
 * space makes them reuse the entry's maps before loading, so all share one chain.
 *
 * Order changes are single u32 writes to chain_next, and stage changes single prog-array writes,
 * so a packet always sees either the old or the new chain. A stage whose slot is empty when a
 * packet reaches it (being inserted or removed) is skipped: the walk goes on with the slot after.
 */
#ifndef LWTUN_CHAIN_H
#define LWTUN_CHAIN_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lwtun.h"

const volatile struct lwtun_chain_abi lwtun_chain_abi = {
	.magic = LWTUN_MAGIC,
	.version = LWTUN_ABI_VERSION,
	.slots = LWTUN_CHAIN_SLOTS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, LWTUN_CHAIN_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} chain_progs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, LWTUN_CHAIN_SLOTS + 1);
	__type(key, __u32);
	__type(value, __u32);
} chain_next SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_chain_cursor);
} chain_cursor SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u32);
} chain_exit SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_chain_config);
} chain_config SEC(".maps");

static __always_inline struct lwtun_chain_cursor *lwtun_chain_cursor(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&chain_cursor, &zero);
}

/* Leaves the chain with `verdict` through the exit hook (returns only when no exit program is
 * attached, or when the tail call limit is reached). */
static __always_inline int lwtun_chain_exit(void *ctx, struct lwtun_chain_cursor *cur, int verdict)
{
	cur->verdict = verdict;
	bpf_tail_call(ctx, &chain_exit, 0);
	return verdict;
}

/* Runs the stage after the current one; `verdict` is what the packet gets when there is none.
 * Call it as `return lwtun_chain_next(ctx, verdict);` from a stage that lets the packet go on. */
static __always_inline int lwtun_chain_next(void *ctx, int verdict)
{
	struct lwtun_chain_cursor *cur = lwtun_chain_cursor();
	__u32 slot;

	if (!cur)
		return verdict;
	slot = cur->slot;
	for (int i = 0; i < LWTUN_CHAIN_SLOTS; i++) {
		__u32 *next = bpf_map_lookup_elem(&chain_next, &slot);

		if (!next || *next >= LWTUN_CHAIN_SLOTS)
			break;
		slot = *next;
		cur->slot = slot;
		cur->depth++;
		bpf_tail_call(ctx, &chain_progs, slot);
		/* Empty slot (a stage on its way in or out): go on with the one after it. */
	}
	return lwtun_chain_exit(ctx, cur, verdict);
}

/* The verdict a stage sees at the exit hook. */
static __always_inline int lwtun_chain_verdict(int fallback)
{
	struct lwtun_chain_cursor *cur = lwtun_chain_cursor();

	return cur ? cur->verdict : fallback;
}

#endif /* LWTUN_CHAIN_H */
