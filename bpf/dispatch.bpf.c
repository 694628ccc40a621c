/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * dispatch: a root program per hook type that calls LWTUN_DISPATCH_SLOTS stub functions in order
 * (libxdp's dispatcher, for XDP, tc and the LWT hooks). User space replaces a stub with a program
 * loaded as BPF_PROG_TYPE_EXT (freplace) and attached to it; unlike a tail call, the replaced
 * function returns to the root, so independent programs run one after another and each one's
 * verdict decides, through the continue masks, whether the next runs. An empty stub returns
 * LWTUN_DISPATCH_EMPTY and the root goes on.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include "lwtun.h"

const volatile struct {
	__u32 magic;
	__u32 version;
	__u32 slots;
	__u32 pad;
} lwtun_dispatch_abi = { LWTUN_MAGIC, LWTUN_ABI_VERSION, LWTUN_DISPATCH_SLOTS, 0 };

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_dispatch_config);
} dispatch_config SEC(".maps");

#define STUB(ctx_type, name)                                  \
	__attribute__((noinline)) int name(ctx_type *ctx)     \
	{                                                     \
		volatile int ret = LWTUN_DISPATCH_EMPTY;      \
		if (!ctx)                                     \
			return LWTUN_DISPATCH_EMPTY;          \
		return ret;                                   \
	}

STUB(struct xdp_md, xdp_slot0) STUB(struct xdp_md, xdp_slot1) STUB(struct xdp_md, xdp_slot2)
STUB(struct xdp_md, xdp_slot3) STUB(struct xdp_md, xdp_slot4) STUB(struct xdp_md, xdp_slot5)
STUB(struct xdp_md, xdp_slot6) STUB(struct xdp_md, xdp_slot7)
STUB(struct __sk_buff, skb_slot0) STUB(struct __sk_buff, skb_slot1) STUB(struct __sk_buff, skb_slot2)
STUB(struct __sk_buff, skb_slot3) STUB(struct __sk_buff, skb_slot4) STUB(struct __sk_buff, skb_slot5)
STUB(struct __sk_buff, skb_slot6) STUB(struct __sk_buff, skb_slot7)

/* Whether the slot's verdict lets the next slot run. */
static __always_inline int goes_on(struct lwtun_dispatch_config *cfg, int slot, int ret)
{
	__u32 bit = ret < 0 ? 30 : (__u32)ret;

	if (ret == LWTUN_DISPATCH_EMPTY)
		return 1;
	if (bit > 30)
		return 0;
	return (cfg->continue_mask[slot & (LWTUN_DISPATCH_SLOTS - 1)] >> bit) & 1;
}

#define RUN(slot_fn, i)                        \
	ret = slot_fn(ctx);                    \
	if (!goes_on(cfg, i, ret))             \
		return ret;

#define DISPATCH(prefix)                                                        \
	__u32 zero = 0;                                                         \
	struct lwtun_dispatch_config *cfg = bpf_map_lookup_elem(&dispatch_config, &zero); \
	int ret;                                                                \
	if (!cfg || cfg->magic != LWTUN_MAGIC || cfg->version != LWTUN_ABI_VERSION) \
		return fallback;                                                \
	RUN(prefix##_slot0, 0) RUN(prefix##_slot1, 1) RUN(prefix##_slot2, 2)    \
	RUN(prefix##_slot3, 3) RUN(prefix##_slot4, 4) RUN(prefix##_slot5, 5)    \
	RUN(prefix##_slot6, 6) RUN(prefix##_slot7, 7)                           \
	return cfg->verdict;

SEC("xdp")
int dispatch_xdp(struct xdp_md *ctx)
{
	const int fallback = XDP_PASS;
	DISPATCH(xdp)
}

SEC("tc")
int dispatch_tc(struct __sk_buff *ctx)
{
	const int fallback = -1;
	DISPATCH(skb)
}

SEC("lwt_in")
int dispatch_lwt_in(struct __sk_buff *ctx)
{
	const int fallback = BPF_OK;
	DISPATCH(skb)
}

SEC("lwt_out")
int dispatch_lwt_out(struct __sk_buff *ctx)
{
	const int fallback = BPF_OK;
	DISPATCH(skb)
}

SEC("lwt_xmit")
int dispatch_lwt_xmit(struct __sk_buff *ctx)
{
	const int fallback = BPF_OK;
	DISPATCH(skb)
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
