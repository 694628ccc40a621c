// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/* tc_decap for kernels without bpf_loop (before 5.17, such as 5.10 and 5.15): the same program
 * and maps, the checksum's chunk loop bounded instead of a bpf_loop callback (csum.h). Decap
 * loads this object where probe::Feature::BpfLoop is absent. */
#define LWTUN_NO_BPF_LOOP 1
#include "tc_decap.bpf.c"
