/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdp_gen: a traffic generator for BPF_PROG_TEST_RUN with BPF_F_TEST_XDP_LIVE_FRAMES.
 *
 * Live-frames mode recycles its pages without re-initialising them, and a veth hands the very
 * same page to its peer: whatever the receiving side changes (a router's TTL decrement and MAC
 * rewrite) comes back in the next frames the generator sends. So before each XDP_TX this program
 * writes the first GEN_TEMPLATE_LEN bytes of the frame (Ethernet, IP and L4 headers) from
 * `gen_template`, which user space sets once: every frame leaves as the template says.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_stats.h"

#define GEN_TEMPLATE_LEN 64

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u8[GEN_TEMPLATE_LEN]);
} gen_template SEC(".maps");

SEC("xdp")
int xdp_gen(struct xdp_md *ctx)
{
	void *data_end = (void *)(long)ctx->data_end;
	void *data = (void *)(long)ctx->data;
	__u32 key = 0;
	__u8 *t = bpf_map_lookup_elem(&gen_template, &key);

	if (!t || data + GEN_TEMPLATE_LEN > data_end)
		return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_ABORTED);
	__builtin_memcpy(data, t, GEN_TEMPLATE_LEN);
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_TX);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
