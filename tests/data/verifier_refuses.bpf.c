// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/* A program every verifier refuses: it reads a map value past its end. The compiled object
 * (verifier_refuses.bpf.o beside it, made with
 *   clang -g -O2 -target bpf -I/usr/include/x86_64-linux-gnu -c verifier_refuses.bpf.c
 * ) lets the unit tests check that a refusal is reported as the verifier's, with its log. */
#include <linux/bpf.h>

/* What libbpf's bpf_helpers.h would give, spelled out so that only the kernel headers are needed. */
#define SEC(name) __attribute__((section(name), used))
#define __uint(name, val) int (*name)[val]
#define __type(name, val) typeof(val) *name
static void *(*bpf_map_lookup_elem)(void *map, const void *key) = (void *)BPF_FUNC_map_lookup_elem;

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} values SEC(".maps");

SEC("lwt_xmit")
int read_past_the_end(struct __sk_buff *skb)
{
	__u32 key = 0;
	__u64 *v = bpf_map_lookup_elem(&values, &key);

	if (!v)
		return BPF_OK;
	/* 8-byte value, read at offset 64 */
	return v[8] ? BPF_DROP : BPF_OK;
}

char LICENSE[] SEC("license") = "GPL";
