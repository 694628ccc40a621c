// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* lwt_encap for kernels without bpf_loop (before 5.17, such as 5.10 and 5.15): the same programs
 * and maps, the checksum's chunk loop bounded instead of a bpf_loop callback (csum.h). Tunnel
 * loads this object where probe::Feature::BpfLoop is absent. */
#define LWTUN_NO_BPF_LOOP 1
#include "lwt_encap.bpf.c"
