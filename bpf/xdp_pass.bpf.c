/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * xdp_pass: the smallest useful XDP programs, with per-action statistics.
 *
 * - xdp_pass: hands every frame to the stack. Attach it on a veth peer that receives XDP_REDIRECTed
 *   frames: veth accepts redirected frames (ndo_xdp_xmit) only while its peer runs an XDP program.
 * - xdp_drop: drops every frame (a sink that counts what arrives, for benchmarks).
 * - xdp_tx: sends every frame back out the interface it came in on (a reflector).
 * - xdp_nop: XDP_PASS without counting: the floor of BPF_PROG_TEST_RUN cost measurements.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "xdp_stats.h"

SEC("xdp")
int xdp_pass(struct xdp_md *ctx)
{
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_PASS);
}

SEC("xdp")
int xdp_drop(struct xdp_md *ctx)
{
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_DROP);
}

SEC("xdp")
int xdp_tx(struct xdp_md *ctx)
{
	return xdp_stats_record(ctx, LWTUN_XDP_STAGE_INGRESS, XDP_TX);
}

SEC("xdp")
int xdp_nop(struct xdp_md *ctx)
{
	return XDP_PASS;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
