/* SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0 */
/*
 * What both capture programs (tc_capture.bpf.c, socket_capture.bpf.c) have
 * alike. BPF-side only (needs bpf_helpers.h); the ABI shared with user space
 * is in clovisor_abi.h.
 */
#ifndef CLOVISOR_COMMON_BPF_H
#define CLOVISOR_COMMON_BPF_H

#include <linux/bpf.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "clovisor_abi.h"

/* Port (host order) -> enum clovisor_protocol_hint, read when a connection is
 * first seen. Each object has its own; user space fills both with the same
 * ports (probe/src/capture/object.rs), and sets the port's bit in
 * traced_port_bits after inserting it here and clears it before removing. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_TRACED_PORTS);
	__type(key, __u16);
	__type(value, __u8);
} traced_ports SEC(".maps");

/* Whether a port is traced: bit (port % 64) of word (port / 64). An array
 * read the verifier inlines, on the path every packet and every socket call
 * takes, instead of a hash lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 65536 / 64);
	__type(key, __u32);
	__type(value, __u64);
} traced_port_bits SEC(".maps");

static __always_inline int clovisor_port_traced(__u16 port)
{
	__u32 word = port / 64;
	__u64 *bits = bpf_map_lookup_elem(&traced_port_bits, &word);

	return bits && (*bits & (1ULL << (port % 64)));
}

/* Held request heads by flow id; sized by user space. LRU: an entry of a
 * connection gone quiet makes room for a new one. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 4096);
	__type(key, __u64);
	__type(value, struct clovisor_held);
} held_heads SEC(".maps");

/* An all-zero clovisor_held to create slots from (the BPF stack is too small
 * for one); never written. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clovisor_held);
} held_zero SEC(".maps");

/* The held-heads slot of a flow, created empty when it has none (once per
 * connection: a slot is reused by its next requests); NULL when none could be
 * made. */
static __always_inline struct clovisor_held *clovisor_held_slot(__u64 flow_id)
{
	struct clovisor_held *h = bpf_map_lookup_elem(&held_heads, &flow_id);
	__u32 zero = 0;
	struct clovisor_held *empty;

	if (h)
		return h;
	empty = bpf_map_lookup_elem(&held_zero, &zero);
	if (!empty)
		return 0;
	bpf_map_update_elem(&held_heads, &flow_id, empty, BPF_NOEXIST);
	return bpf_map_lookup_elem(&held_heads, &flow_id);
}

/* Records in slot h what user space needs to send the held request alone
 * (see struct clovisor_held); the caller has copied len bytes to h->data.
 * owner is NULL at tc. */
static __always_inline void clovisor_hold(struct clovisor_held *h,
					  const struct clovisor_conn_key *key,
					  const struct clovisor_owner *owner,
					  const struct clovisor_msg *msg, __u8 protocol, __u8 point,
					  __u32 len)
{
	__builtin_memcpy(&h->key, key, sizeof(*key));
	if (owner)
		__builtin_memcpy(&h->owner, owner, sizeof(*owner));
	else
		__builtin_memset(&h->owner, 0, sizeof(h->owner));
	__builtin_memcpy(&h->msg, msg, sizeof(*msg));
	h->protocol = protocol;
	h->point = point;
	h->len = len;
}

/* Marks slot h empty: its request has been sent. */
static __always_inline void clovisor_release(struct clovisor_held *h)
{
	h->len = 0;
	h->msg.direction = CLOVISOR_DIR_NONE;
}

/* A length from the kernel or the wire bounded so the verifier can prove a
 * copy of it fits CLOVISOR_MAX_SNAPLEN bytes: the mask proves < MAX, the
 * comparison covers == MAX. */
static __always_inline __u32 clovisor_bound_snap(__u64 n)
{
	if (n >= CLOVISOR_MAX_SNAPLEN)
		return CLOVISOR_MAX_SNAPLEN;
	return n & (CLOVISOR_MAX_SNAPLEN - 1);
}

/* Copies held request `h`'s first bytes to `to` (an EXCHANGE record's payload)
 * and frees its slot; returns how many were copied (0 if the read failed). */
static __always_inline __u32 clovisor_take_held(struct clovisor_held *h, void *to)
{
	__u32 n = clovisor_bound_snap(h->len);

	if (n > 0 && bpf_probe_read_kernel(to, n, h->data))
		n = 0;
	clovisor_release(h);
	return n;
}

/* The reader's position in the object's ring (plus one; 0: never) when a
 * program last woke it (clovisor_wakeup_flags). Each object has its own, as it
 * has its own ring. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} ring_woken SEC(".maps");

/* Waking the reader costs more than the programs themselves (an
 * inter-processor interrupt; on a VM often a VM exit): wake it only once the
 * ring holds an eighth of its size, and then once until it reads again - not
 * at every record written while it is on its way. Otherwise the reader drains
 * the ring on its own short timer (RING_POLL in
 * probe/src/capture/event_loop.rs), which also reads what a wakeup lost to
 * two programs racing here would have. */
static __always_inline __u64 clovisor_wakeup_flags(void *ring)
{
	__u64 avail = bpf_ringbuf_query(ring, BPF_RB_AVAIL_DATA);
	__u64 size = bpf_ringbuf_query(ring, BPF_RB_RING_SIZE);
	__u32 zero = 0;
	__u64 *woken, reader;

	if (avail < size / 8)
		return BPF_RB_NO_WAKEUP;
	woken = bpf_map_lookup_elem(&ring_woken, &zero);
	if (!woken)
		return BPF_RB_FORCE_WAKEUP;
	reader = bpf_ringbuf_query(ring, BPF_RB_CONS_POS) + 1;
	if (*woken == reader)
		return BPF_RB_NO_WAKEUP;
	*woken = reader;
	return BPF_RB_FORCE_WAKEUP;
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

/* Whether 16 address bytes are an IPv4 address in v4-mapped form. */
static __always_inline int clovisor_is_v4_mapped(const __u8 *a)
{
	__u64 lo = 0;
	__u32 mid = 0;

	__builtin_memcpy(&lo, a, 8);
	__builtin_memcpy(&mid, a + 8, 4);
	return lo == 0 && mid == bpf_htonl(0x0000ffff);
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
