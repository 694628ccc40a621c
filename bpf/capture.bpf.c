/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * capture: the program a chain's exit hook runs while a capture is attached (xdpcap's idea). It
 * copies the packet (up to the snap length) with its metadata into a ring buffer and returns the
 * verdict the chain ended with. Detached, the exit hook is an empty prog array slot: the chain pays
 * one failed tail call.
 */
#include "chain.h"

const volatile __u32 snaplen = LWTUN_CAPTURE_MAX;

struct lwtun_capture_record {
	struct lwtun_capture_meta meta;
	__u8 data[LWTUN_CAPTURE_MAX];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 22);
} capture_ring SEC(".maps");

/* Records lost because the ring was full (per CPU, index 0). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} capture_lost SEC(".maps");

/* Anchors struct lwtun_capture_meta in BTF so the skeleton generates its Rust type. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_capture_meta);
} capture_meta_type SEC(".maps");

static __always_inline struct lwtun_capture_record *reserve(void)
{
	struct lwtun_capture_record *rec = bpf_ringbuf_reserve(&capture_ring, sizeof(*rec), 0);

	if (!rec) {
		__u32 zero = 0;
		__u64 *lost = bpf_map_lookup_elem(&capture_lost, &zero);

		if (lost)
			(*lost)++;
	}
	return rec;
}

_Static_assert(LWTUN_CAPTURE_MAX <= 2048, "load_len() masks with 2047");

/* A capture length len in [1, LWTUN_CAPTURE_MAX], proven so to the verifier: the lower bound
 * as arithmetic, hidden from the compiler first (verifiers before 6.3 lose a branch-checked
 * lower bound and refuse a load that might be of size 0, as 6.1 did). */
static __always_inline __u64 load_len(__u64 len)
{
	asm volatile("" : "+r"(len));
	len = ((len - 1) & 2047) + 1;
	if (len > LWTUN_CAPTURE_MAX)
		len = LWTUN_CAPTURE_MAX;
	return len;
}

static __always_inline __u64 clamp(__u64 len)
{
	__u64 cap = snaplen;

	if (cap > LWTUN_CAPTURE_MAX)
		cap = LWTUN_CAPTURE_MAX;
	if (len > cap)
		len = cap;
	return len;
}

static __always_inline int capture_skb(struct __sk_buff *skb, int fallback)
{
	struct lwtun_chain_cursor *cur = lwtun_chain_cursor();
	int verdict = cur ? cur->verdict : fallback;
	struct lwtun_capture_record *rec = reserve();
	__u64 caplen;

	if (!rec)
		return verdict;
	caplen = clamp(skb->len);
	rec->meta.timestamp_ns = bpf_ktime_get_ns();
	rec->meta.ifindex = skb->ifindex;
	rec->meta.len = skb->len;
	rec->meta.hook = cur ? cur->hook : 0;
	rec->meta.verdict = verdict;
	rec->meta.protocol = skb->protocol;
	rec->meta.pad = 0;
	if (caplen) {
		caplen = load_len(caplen);
		if (bpf_skb_load_bytes(skb, 0, rec->data, caplen) < 0)
			caplen = 0;
	}
	rec->meta.caplen = caplen;
	bpf_ringbuf_submit(rec, 0);
	return verdict;
}

SEC("xdp")
int capture_xdp(struct xdp_md *ctx)
{
	struct lwtun_chain_cursor *cur = lwtun_chain_cursor();
	int verdict = cur ? cur->verdict : XDP_PASS;
	struct lwtun_capture_record *rec = reserve();
	__u32 len = bpf_xdp_get_buff_len(ctx);
	__u64 caplen;

	if (!rec)
		return verdict;
	caplen = clamp(len);
	rec->meta.timestamp_ns = bpf_ktime_get_ns();
	rec->meta.ifindex = ctx->ingress_ifindex;
	rec->meta.len = len;
	rec->meta.hook = LWTUN_CHAIN_HOOK_XDP;
	rec->meta.verdict = verdict;
	rec->meta.protocol = 0;
	rec->meta.pad = 0;
	if (caplen) {
		caplen = load_len(caplen);
		if (bpf_xdp_load_bytes(ctx, 0, rec->data, caplen) < 0)
			caplen = 0;
	}
	rec->meta.caplen = caplen;
	bpf_ringbuf_submit(rec, 0);
	return verdict;
}

SEC("tc")
int capture_tc(struct __sk_buff *skb)
{
	return capture_skb(skb, -1);
}

SEC("lwt_in")
int capture_lwt_in(struct __sk_buff *skb)
{
	return capture_skb(skb, BPF_OK);
}

SEC("lwt_out")
int capture_lwt_out(struct __sk_buff *skb)
{
	return capture_skb(skb, BPF_OK);
}

SEC("lwt_xmit")
int capture_lwt_xmit(struct __sk_buff *skb)
{
	return capture_skb(skb, BPF_OK);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
