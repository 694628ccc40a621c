/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdp_stats.h: the per-CPU, per-action counters every lwtun XDP program keeps (the XDP tutorial's
 * xdp_stats). Include it once per object: it defines the `xdp_stats` map, which src/xdp/stats.rs
 * reads and sums over the CPUs. Programs return through xdp_stats_record(ctx, stage, action).
 */
#ifndef LWTUN_XDP_STATS_H
#define LWTUN_XDP_STATS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lwtun.h"

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, LWTUN_XDP_STAGES);
	__type(key, __u32);
	__type(value, struct lwtun_xdp_stats);
} xdp_stats SEC(".maps");

/* Counts the frame under `action` for `stage` and returns `action`. Out-of-range actions are
 * counted as XDP_ABORTED, which is also what the kernel does with them. */
static __always_inline __u32 xdp_stats_record(struct xdp_md *ctx, __u32 stage, __u32 action)
{
	struct lwtun_xdp_stats *s = bpf_map_lookup_elem(&xdp_stats, &stage);
	__u32 slot = action < LWTUN_XDP_ACTIONS ? action : XDP_ABORTED;

	if (s) {
		s->action[slot].packets++;
		s->action[slot].bytes += ctx->data_end - ctx->data;
	}
	return action;
}

#endif /* LWTUN_XDP_STATS_H */
