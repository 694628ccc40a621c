// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* lwt_service for kernels without bpf_loop (before 5.17): the same programs and maps, the GRE
 * checksum's chunk loop bounded instead of a bpf_loop callback (csum.h). Services load this
 * object where probe::Feature::BpfLoop is absent. */
#define LWTUN_NO_BPF_LOOP 1
#include "lwt_service.bpf.c"
