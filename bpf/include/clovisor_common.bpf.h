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

/* Port (host order) -> enum clovisor_protocol_hint. Each object has its own;
 * user space fills both with the same ports (probe/src/capture/object.rs,
 * MAX_TRACED_PORTS there). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1024);
	__type(key, __u16);
	__type(value, __u8);
} traced_ports SEC(".maps");

/* Waking the reader costs more than the programs themselves (an
 * inter-processor interrupt; on a VM often a VM exit): wake it only once the
 * ring holds an eighth of its size. Otherwise the reader drains the ring on
 * its own short timer (probe/src/capture/mod.rs, RING_POLL). */
static __always_inline __u64 clovisor_wakeup_flags(void *ring)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE);

	return avail >= size / 8 ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

#endif /* CLOVISOR_COMMON_BPF_H */
