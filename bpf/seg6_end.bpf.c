/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * seg6_end: SRv6 End.BPF functions (seg6local routes, `action End.BPF`) that do work with the
 * seg6 helpers, each with a twin of the same logic for BPF_PROG_TEST_RUN.
 *
 * The kernel runs an End.BPF program after its End step: the SRH was validated, packets with
 * segments left 0 or without an SRH were dropped, segments left was decremented and the IPv6
 * destination set to the new active segment. The functions key their rules (LPM trie `rules`) by
 * that active segment:
 *
 *   seg6_tag      writes the rule's tag into the SRH (bpf_lwt_seg6_store_bytes) and returns
 *                 BPF_OK: the kernel forwards the packet to the active segment by its routes.
 *   seg6_end_x    End.X cross-connect: optionally the tag, then
 *                 bpf_lwt_seg6_action(SEG6_LOCAL_ACTION_END_X, nh6) and BPF_REDIRECT.
 *   seg6_end_dt6  End.DT6-style decap: bpf_lwt_seg6_action(SEG6_LOCAL_ACTION_END_DT6, table)
 *                 strips the outer IPv6 header and the SRH and looks the inner IPv6 packet up in
 *                 the rule's table; BPF_REDIRECT. Since End.BPF never sees segments left 0, the
 *                 decap SID is the second-to-last segment and the last names the service (the
 *                 rule's key). There is no DT4: bpf_lwt_seg6_action accepts END_X, END_T,
 *                 END_DT6, END_B6 and END_B6_ENCAP only, so inner IPv4 is counted as
 *                 LWTUN_SEG6_EV_INNER_NOT_V6 and dropped.
 *
 * A packet without a rule follows the miss policy (BPF_OK: plain End; or drop). Counters: `events`
 * (LWTUN_SEG6_EV_*, per CPU).
 *
 * The twins (SEC lwt_xmit, `*_twin`) take a packet as it arrives at the SID, do the kernel's End
 * step themselves (drop at segments left 0, decrement, set the destination) with
 * bpf_skb_store_bytes, then the same decision, write the tag the same way, and record what the
 * End.BPF program would have done in `decision` instead of calling the seg6 helpers.
 */
#include "seg6_end.h"

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct lwtun_seg6_decision);
} decision SEC(".maps");

/* The End.BPF function `fn` on a packet after the kernel's End step. */
static __always_inline int seg6_run(struct __sk_buff *skb, int fn)
{
	struct lwtun_seg6_rule rule = {};
	struct seg6_pkt p;
	__u8 active[16];
	__u32 len = skb->len;
	__be16 tag;
	__u32 ev;
	long rc;

	ev = seg6_parse(skb, &p);
	if (ev || seg6_segment(skb, p.segments_left, active)) {
		seg6_count(LWTUN_SEG6_EV_MALFORMED, len);
		return BPF_DROP;
	}
	ev = seg6_decide(fn, &p, active, &rule);
	if (ev == LWTUN_SEG6_EV_MISS_PASS) {
		seg6_count(ev, len);
		return BPF_OK;
	}
	if (ev != LWTUN_SEG6_EV_DONE) {
		seg6_count(ev, len);
		return BPF_DROP;
	}
	if (rule.flags & LWTUN_SEG6_RULE_TAG) {
		tag = bpf_htons(rule.tag);
		if (bpf_lwt_seg6_store_bytes(skb, SEG6_TAG_OFF, &tag, sizeof(tag)))
			goto failed;
	}
	if (fn == SEG6_FN_TAG) {
		seg6_count(LWTUN_SEG6_EV_DONE, len);
		return BPF_OK;
	}
	if (fn == SEG6_FN_END_X)
		rc = bpf_lwt_seg6_action(skb, SEG6_ACTION_END_X, rule.nh6, sizeof(rule.nh6));
	else
		rc = bpf_lwt_seg6_action(skb, SEG6_ACTION_END_DT6, &rule.table, sizeof(rule.table));
	if (rc)
		goto failed;
	seg6_count(LWTUN_SEG6_EV_DONE, len);
	return BPF_REDIRECT;
failed:
	seg6_count(LWTUN_SEG6_EV_HELPER_FAILED, len);
	return BPF_DROP;
}

SEC("lwt_seg6local")
int seg6_tag(struct __sk_buff *skb)
{
	return seg6_run(skb, SEG6_FN_TAG);
}

SEC("lwt_seg6local")
int seg6_end_x(struct __sk_buff *skb)
{
	return seg6_run(skb, SEG6_FN_END_X);
}

SEC("lwt_seg6local")
int seg6_end_dt6(struct __sk_buff *skb)
{
	return seg6_run(skb, SEG6_FN_END_DT6);
}

/* The twin of seg6_run: the kernel's End step, then the same decision, recorded. */
static __always_inline int seg6_twin(struct __sk_buff *skb, int fn)
{
	struct lwtun_seg6_decision *d;
	struct lwtun_seg6_rule rule = {};
	struct seg6_pkt p;
	__u8 active[16];
	__u32 len = skb->len;
	__u32 zero = 0;
	__be16 tag;
	__u8 sl;
	__u32 ev;

	d = bpf_map_lookup_elem(&decision, &zero);
	if (!d)
		return BPF_DROP;
	__builtin_memset(d, 0, sizeof(*d));
	ev = seg6_parse(skb, &p);
	if (ev) {
		d->event = ev;
		seg6_count(ev, len);
		return BPF_DROP;
	}
	if (p.segments_left == 0) {
		d->event = LWTUN_SEG6_EV_SL_ZERO;
		seg6_count(LWTUN_SEG6_EV_SL_ZERO, len);
		return BPF_DROP;
	}
	/* The kernel's End step: segments left - 1, destination = the new active segment. */
	sl = p.segments_left - 1;
	p.segments_left = sl;
	if (seg6_segment(skb, sl, active) ||
	    bpf_skb_store_bytes(skb, SEG6_SL_OFF, &sl, 1, 0) ||
	    bpf_skb_store_bytes(skb, SEG6_DADDR_OFF, active, 16, 0)) {
		d->event = LWTUN_SEG6_EV_MALFORMED;
		seg6_count(LWTUN_SEG6_EV_MALFORMED, len);
		return BPF_DROP;
	}
	d->segments_left = sl;
	ev = seg6_decide(fn, &p, active, &rule);
	d->event = ev;
	if (ev == LWTUN_SEG6_EV_MISS_PASS) {
		seg6_count(ev, len);
		return BPF_OK;
	}
	if (ev != LWTUN_SEG6_EV_DONE) {
		seg6_count(ev, len);
		return BPF_DROP;
	}
	if (rule.flags & LWTUN_SEG6_RULE_TAG) {
		tag = bpf_htons(rule.tag);
		if (bpf_skb_store_bytes(skb, SEG6_TAG_OFF, &tag, sizeof(tag), 0)) {
			d->event = LWTUN_SEG6_EV_HELPER_FAILED;
			seg6_count(LWTUN_SEG6_EV_HELPER_FAILED, len);
			return BPF_DROP;
		}
		d->tag = rule.tag;
		d->tagged = 1;
	}
	seg6_count(LWTUN_SEG6_EV_DONE, len);
	if (fn == SEG6_FN_TAG)
		return BPF_OK;
	if (fn == SEG6_FN_END_X) {
		d->action = SEG6_ACTION_END_X;
		__builtin_memcpy(d->nh6, rule.nh6, 16);
	} else {
		d->action = SEG6_ACTION_END_DT6;
		d->table = rule.table;
		d->inner_offset = SEG6_SRH_OFF + p.srh_len;
	}
	return BPF_REDIRECT;
}

SEC("lwt_xmit")
int seg6_tag_twin(struct __sk_buff *skb)
{
	return seg6_twin(skb, SEG6_FN_TAG);
}

SEC("lwt_xmit")
int seg6_end_x_twin(struct __sk_buff *skb)
{
	return seg6_twin(skb, SEG6_FN_END_X);
}

SEC("lwt_xmit")
int seg6_end_dt6_twin(struct __sk_buff *skb)
{
	return seg6_twin(skb, SEG6_FN_END_DT6);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
