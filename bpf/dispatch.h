/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dispatch.h: the maps of an lwtun dispatcher and the macro that makes a program a member.
 *
 * A dispatcher runs up to LWTUN_DISPATCH_SLOTS independent programs ("members") in slot order at
 * one hook. The root program (dispatch.bpf.c) resets a per-CPU cursor and tail-calls the first
 * non-empty slot of dispatch_progs. A member written with LWTUN_DISPATCH_MEMBER computes its
 * verdict, then lwtun_dispatch_continue() looks the verdict up in its slot's continue mask: a
 * verdict outside the mask is returned (the packet's verdict, the run ends); one inside it
 * tail-calls the next non-empty slot, and after the last slot the dispatcher's own verdict is
 * returned. Empty slots are skipped, so inserting or removing a member is one prog array write and
 * a packet on its way sees the dispatcher either with or without it.
 *
 * Member objects declare these maps too (by including this header) and user space makes them
 * reuse the root's maps before loading. A program not built on this header can be a member as
 * well; it ends the run with its own verdict, as a tail call never returns.
 */
#ifndef LWTUN_DISPATCH_H
#define LWTUN_DISPATCH_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lwtun.h"

const volatile struct lwtun_dispatch_abi lwtun_dispatch_abi = {
	.magic = LWTUN_MAGIC,
	.version = LWTUN_DISPATCH_VERSION,
	.slots = LWTUN_DISPATCH_SLOTS,
};

struct {
	__uint(type, BPF_MAP_TYPE_PROG_ARRAY);
	__uint(max_entries, LWTUN_DISPATCH_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} dispatch_progs SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_dispatch_config);
} dispatch_config SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_dispatch_cursor);
} dispatch_cursor SEC(".maps");

static __always_inline struct lwtun_dispatch_cursor *lwtun_dispatch_cursor(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&dispatch_cursor, &zero);
}

static __always_inline struct lwtun_dispatch_config *lwtun_dispatch_config(void)
{
	__u32 zero = 0;
	struct lwtun_dispatch_config *cfg = bpf_map_lookup_elem(&dispatch_config, &zero);

	if (!cfg || cfg->magic != LWTUN_MAGIC || cfg->version != LWTUN_DISPATCH_VERSION)
		return 0;
	return cfg;
}

/* The continue-mask bit of a verdict, or 0 for a verdict that can never go on. */
static __always_inline __u32 lwtun_dispatch_bit(int verdict)
{
	if (verdict >= 0 && verdict < LWTUN_DISPATCH_BIT_UNSPEC)
		return 1U << verdict;
	if (verdict == -1)
		return 1U << LWTUN_DISPATCH_BIT_UNSPEC;
	if (verdict == 128 /* BPF_LWT_REROUTE */)
		return 1U << LWTUN_DISPATCH_BIT_REROUTE;
	return 0;
}

/* Tail-calls the first non-empty slot after `after` (-1: from the start); returns `verdict`
 * when there is none. Every tail call site has a constant slot, so the JIT emits direct jumps
 * (patched when the prog array changes) instead of an indirect, retpolined one. */
static __always_inline int lwtun_dispatch_from(void *ctx, struct lwtun_dispatch_cursor *cur,
					       int after, __u32 depth, int verdict)
{
#pragma unroll
	for (int slot = 0; slot < LWTUN_DISPATCH_SLOTS; slot++) {
		if (slot <= after)
			continue;
		cur->slot = slot;
		cur->depth = depth;
		bpf_tail_call(ctx, &dispatch_progs, slot);
		/* Empty slot (a member on its way in or out): try the next one. */
	}
	return verdict;
}

/* Where a member's verdict takes the packet. `slot` and `depth` are the cursor's values when the
 * member started: a run nested inside the member's body on the same CPU (a bpf_clone_redirect
 * into a device that runs the same dispatcher) leaves the outer run intact. */
static __always_inline int lwtun_dispatch_go_on(void *ctx, struct lwtun_dispatch_cursor *cur,
						__u32 slot, __u32 depth, int verdict)
{
	struct lwtun_dispatch_config *cfg = lwtun_dispatch_config();

	if (!cur || !cfg || slot >= LWTUN_DISPATCH_SLOTS)
		return verdict;
	if (!(cfg->continue_mask[slot] & lwtun_dispatch_bit(verdict)))
		return verdict;
	return lwtun_dispatch_from(ctx, cur, slot, depth + 1, cfg->verdict);
}

/* For members written without LWTUN_DISPATCH_MEMBER: `return lwtun_dispatch_continue(ctx, v);`
 * at the end of the program (the cursor is read there, so nothing in between may start another
 * run of the same dispatcher on this CPU). */
static __always_inline int lwtun_dispatch_continue(void *ctx, int verdict)
{
	struct lwtun_dispatch_cursor *cur = lwtun_dispatch_cursor();

	if (!cur)
		return verdict;
	return lwtun_dispatch_go_on(ctx, cur, cur->slot, cur->depth, verdict);
}

/* The slot the running member sits in, and its position in this packet's run (1 = first). */
static __always_inline void lwtun_dispatch_position(__u32 *slot, __u32 *depth)
{
	struct lwtun_dispatch_cursor *cur = lwtun_dispatch_cursor();

	*slot = cur ? cur->slot : 0;
	*depth = cur ? cur->depth : 0;
}

/*
 * Declares a dispatch-aware member program `name` in ELF section `section` whose body follows
 * the macro and returns the member's verdict:
 *
 *	LWTUN_DISPATCH_MEMBER("xdp", my_filter, struct xdp_md)
 *	{
 *		return is_bad(ctx) ? XDP_DROP : XDP_PASS;
 *	}
 *
 * The program notes its slot and position, runs the body, then goes on or ends the run as the
 * verdict and the slot's continue mask say.
 */
#define LWTUN_DISPATCH_MEMBER(section, name, ctx_type)                              \
	static __always_inline int name##_verdict(ctx_type *ctx);                   \
	SEC(section) int name(ctx_type *ctx)                                        \
	{                                                                           \
		struct lwtun_dispatch_cursor *cur = lwtun_dispatch_cursor();        \
		__u32 slot = cur ? cur->slot : LWTUN_DISPATCH_SLOTS;                \
		__u32 depth = cur ? cur->depth : 0;                                 \
		int verdict = name##_verdict(ctx);                                  \
		return lwtun_dispatch_go_on(ctx, cur, slot, depth, verdict);        \
	}                                                                           \
	static __always_inline int name##_verdict(ctx_type *ctx)

#endif /* LWTUN_DISPATCH_H */
