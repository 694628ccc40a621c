/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dispatch: the root program of an lwtun dispatcher, one per hook type (XDP, tc and the three LWT
 * hooks). It starts a packet's run at the first non-empty member slot (bpf/dispatch.h); with no
 * member attached it returns the dispatcher's verdict. User space loads only the root of the
 * dispatcher's type (a prog array takes programs of its first user's type).
 */
#include "dispatch.h"

static __always_inline int dispatch_start(void *ctx, int fallback)
{
	struct lwtun_dispatch_cursor *cur = lwtun_dispatch_cursor();
	struct lwtun_dispatch_config *cfg = lwtun_dispatch_config();

	if (!cur || !cfg)
		return fallback;
	return lwtun_dispatch_from(ctx, cur, -1, 1, cfg->verdict);
}

SEC("xdp")
int dispatch_xdp(struct xdp_md *ctx)
{
	return dispatch_start(ctx, XDP_PASS);
}

SEC("tc")
int dispatch_tc(struct __sk_buff *skb)
{
	return dispatch_start(skb, -1 /* TC_ACT_UNSPEC */);
}

SEC("lwt_in")
int dispatch_lwt_in(struct __sk_buff *skb)
{
	return dispatch_start(skb, BPF_OK);
}

SEC("lwt_out")
int dispatch_lwt_out(struct __sk_buff *skb)
{
	return dispatch_start(skb, BPF_OK);
}

SEC("lwt_xmit")
int dispatch_lwt_xmit(struct __sk_buff *skb)
{
	return dispatch_start(skb, BPF_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
