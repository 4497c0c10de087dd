/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/*
 * What both capture programs (tc_capture.bpf.c, socket_capture.bpf.c) have
 * alike. BPF-side only (needs bpf_helpers.h); the ABI shared with user space
 * is in clovisor_abi.h.
 */
#ifndef CLOVISOR_COMMON_BPF_H
#define CLOVISOR_COMMON_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "clovisor_abi.h"

/* Port (host order) -> enum clovisor_protocol_hint. Each object has its own;
 * user space fills both with the same ports (probe/src/capture/object.rs). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_TRACED_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} traced_ports SEC(".maps");

/* Waking the reader costs more than the programs themselves (an
 * inter-processor interrupt; on a VM often a VM exit): wake it only once the
 * ring holds an eighth of its size. Otherwise the reader drains the ring on
 * its own short timer (RING_POLL in probe/src/capture/event_loop.rs). */
static __always_inline __u64 clovisor_wakeup_flags(void *ring)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE);

	return avail >= size / 8 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/* Adds one to counter idx of a program's per-CPU stats array map. */
static __always_inline void clovisor_count(void *stats, __u32 idx)
{
	__u64 *v = bpf_map_lookup_elem(stats, &idx);

	if (v)
		*v += 1;
}

/* An IPv4 address (network order) as the 16 bytes of its v4-mapped IPv6 form
 * (::ffff:a.b.c.d), the one layout the maps and events use for both
 * families. */
static __always_inline void clovisor_v4_mapped(__u8 *dst, __be32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/* A flow id unique for the life of the loaded object, never 0: `tag`, then
 * CPU + 1 in the 8 bits from bit `cpu_shift` up (so ids of different CPUs
 * never collide), then the CPU's own counter below them. flow_seq is the
 * program's one-slot per-CPU array of __u64 holding the counters: no atomics
 * and no randomness needed. */
static __always_inline __u64 clovisor_new_flow_id(void *flow_seq, __u64 tag, __u32 cpu_shift)
{
	__u32 zero = 0;
	__u64 *seq = bpf_map_lookup_elem(flow_seq, &zero);
	__u64 n = 0;

	if (seq) {
		*seq += 1;
		n = *seq;
	}
	return tag | (((__u64)(bpf_get_smp_processor_id() + 1) & 0xff) << cpu_shift) |
	       (n & ((1ULL << cpu_shift) - 1));
}

#endif /* CLOVISOR_COMMON_BPF_H */
