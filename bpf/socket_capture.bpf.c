// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
/*
 * The socket observation point: what the processes of monitored network
 * namespaces send and receive on TCP sockets of traced ports - plaintext even
 * when a sidecar or a tunnel encrypts the wire. Message boundaries are
 * direction switches per socket, as in tc_capture.bpf.c.
 *
 * Hooks (BTF tracepoints, loadable where kprobes and fentry are not), all on
 * socket I/O only - never on the node's other syscalls:
 *   tp_btf/sock_send_length      a send returned (sock_sendmsg)
 *   tp_btf/sock_recv_length      a receive returned (sock_recvmsg)
 *   tp_btf/inet_sock_set_state   TCP_CLOSE ends the socket's connection; a
 *                                client's connect completing files its key
 *                                (below)
 * A call on a socket none of whose ports is traced leaves after one bitmap
 * read; a process of an untraced namespace after a look-up in the socket's
 * own storage (sock_untraced), once its first call has found it untraced.
 *
 * One record per exchange: a request's first bytes are held (held_heads) until
 * its response starts, then request and response travel together as one
 * EXCHANGE record. A message that starts without a held request (a server
 * speaking first, or no room to hold) travels alone as MSG_START.
 *
 * The first bytes come from the caller's user buffer, found from the syscall
 * registers (bpf_task_pt_regs): read/write/recvfrom/sendto take it as their
 * second argument, readv/writev/recvmsg/sendmsg through their first iovec.
 * Calls without a user buffer (sendfile, splice, io_uring) are counted but
 * send no bytes.
 *
 * A client and a server on this node, both traced (CLOVISOR_CONFIG_PEER_COVERED):
 * the client's socket carries the bytes of their exchanges, the server's sends
 * timings and counters alone (CLOVISOR_EV_COUNTERS_ONLY), as a pod veth does
 * where the socket point covers its pod. A client socket of a monitored
 * namespace files its connection key in sock_local_clients when its connect
 * to a traced HTTP/1.x port completes (SYN_SENT -> ESTABLISHED, before it
 * acknowledges the server's SYN and so before the server can accept, let
 * alone receive); the server finds it there at its first request, whose
 * first bytes it copies anyway, and goes counters-only unless they ask for
 * capture call by call (an HTTP/2 preface) - then both copy, as the client
 * decides for itself from its own first bytes. A client seen through a NAT
 * (a Service's virtual address) has another key and is not found: both
 * views then carry the bytes.
 *
 * Timing: a call is timed when it returns; for a send the bytes have then been
 * handed to TCP (and, on a local path, usually transmitted already).
 *
 * Kernel structures are read through minimal definitions relocated by CO-RE
 * (preserve_access_index): no vmlinux.h.
 */
#include <linux/bpf.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "clovisor_abi.h"
#include "clovisor_common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* ---- Minimal kernel types, relocated by CO-RE ---------------------------- */

#if defined(__TARGET_ARCH_x86)
struct pt_regs {
	unsigned long si;
	unsigned long dx;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));
#define SYSCALL_NR(r)	((r)->orig_ax)
#define SYSCALL_ARG1(r) ((r)->si)
#define SYSCALL_ARG2(r) ((r)->dx)
#define NR_READ		0
#define NR_WRITE	1
#define NR_READV	19
#define NR_WRITEV	20
#define NR_SENDTO	44
#define NR_RECVFROM	45
#define NR_SENDMSG	46
#define NR_RECVMSG	47
#elif defined(__TARGET_ARCH_arm64)
struct pt_regs {
	unsigned long regs[31];
	int syscallno;
} __attribute__((preserve_access_index));
#define SYSCALL_NR(r)	((r)->syscallno)
#define SYSCALL_ARG1(r) ((r)->regs[1])
#define SYSCALL_ARG2(r) ((r)->regs[2])
#define NR_READ		63
#define NR_WRITE	64
#define NR_READV	65
#define NR_WRITEV	66
#define NR_SENDTO	206
#define NR_RECVFROM	207
#define NR_SENDMSG	211
#define NR_RECVMSG	212
#else
#error "socket_capture.bpf.c: define __TARGET_ARCH_x86 or __TARGET_ARCH_arm64"
#endif

struct ns_common {
	unsigned int inum;
} __attribute__((preserve_access_index));

struct net {
	struct ns_common ns;
} __attribute__((preserve_access_index));

struct nsproxy {
	struct net *net_ns;
} __attribute__((preserve_access_index));

struct task_struct {
	struct nsproxy *nsproxy;
} __attribute__((preserve_access_index));

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

/* possible_net_t (a typedef of an unnamed struct): CO-RE matches by field
 * names, so the wrapper's name does not matter. */
struct possible_net {
	struct net *net;
};

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
	struct possible_net skc_net;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 write_seq;
	__u32 copied_seq;
	__u32 srtt_us; /* smoothed RTT << 3 */
	__u32 total_retrans;
} __attribute__((preserve_access_index));

/* User-space ABI (UAPI), fixed: read from the caller's memory as laid out
 * there, never relocated. */
struct uiovec {
	__u64 iov_base;
	__u64 iov_len;
};

/* struct user_msghdr from msg_iov on: msg_name and msg_namelen (+ padding)
 * come first, 16 bytes on 64-bit. */
#define MSGHDR_IOV_OFFSET 16
struct umsghdr_iov {
	__u64 msg_iov;
	__u64 msg_iovlen;
};

#define AF_INET_	 2
#define AF_INET6_	 10
#define IPPROTO_TCP_	 6
#define MSG_PEEK_	 2
#define TCP_ESTABLISHED_ 1
#define TCP_SYN_SENT_	 2
#define TCP_CLOSE_	 7
#define TCP_FIN_WAIT1_	 4
#define TCP_FIN_WAIT2_	 5
#define TCP_TIME_WAIT_	 6
#define TCP_LAST_ACK_	 9
#define TCP_CLOSING_	 11

/* ---- Maps ----------------------------------------------------------------- */

/* Network namespace inode -> 1: whose processes are traced. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_MONITORED_NETNS);
	__type(key, __u32);
	__type(value, __u8);
} monitored_netns SEC(".maps");

/* Network namespace inode -> the host-side ifindex of its pod's veth, for the
 * pods whose veth the tc programs carry (CLOVISOR_CONFIG_CARRY_WIRE there):
 * this point reads the veth's counters from `tc_connections`. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_MONITORED_NETNS);
	__type(key, __u32);
	__type(value, __u32);
} netns_veth SEC(".maps");

/* The tc object's `connections` map itself, shared at load (user space pins
 * it for the moment both objects load, then unpins it): the veths' view of
 * each connection, read here to carry a covered veth's counters. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct clovisor_conn_key);
	__type(value, struct clovisor_conn);
} tc_connections SEC(".maps");

/* Keyed by struct sock address; bounded by user space (max_connections). An
 * LRU hash rather than socket-local storage so the probe can read a quiet
 * connection's counters (idle flush) by key. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct clovisor_sock_conn);
} sock_connections SEC(".maps");

/* Sockets found to belong to a process of an untraced namespace, with the
 * monitored-namespace generation they were checked under: socket-local
 * storage (freed with the socket, never full), so a later call on the socket
 * leaves after one look-up in the socket itself instead of a miss in
 * sock_connections and the namespace look-up. A client of a traced port in
 * an untraced pod (any caller of a traced service) calls this way all the
 * time. */
struct {
	__uint(type, BPF_MAP_TYPE_SK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u32);
} sock_untraced SEC(".maps");

/* Connection keys of the HTTP/1.x client connections of monitored
 * namespaces, filed when their connect completes, for the servers on this
 * node to find their clients by (CLOVISOR_CONFIG_PEER_COVERED); deleted when
 * the client's socket closes. A key the LRU let go only costs its server's
 * view its bytes being copied. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, struct clovisor_conn_key);
	__type(value, __u8);
} sock_local_clients SEC(".maps");

/* Size set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} sock_events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CLOVISOR_SOCK_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} sock_stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CLOVISOR_CONFIG_COUNT);
	__type(key, __u32);
	__type(value, __u32);
} sock_config SEC(".maps");

/* Records too large for the BPF stack are built here. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clovisor_msg_start);
} sock_scratch_msg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clovisor_exchange);
} sock_scratch_exchange SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clovisor_segment);
} sock_scratch_segment SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sock_flow_seq SEC(".maps");

/* ---- Helpers -------------------------------------------------------------- */

static __always_inline void count(__u32 idx)
{
	clovisor_count(&sock_stats, idx);
}

static __always_inline __u32 snaplen(void)
{
	__u32 zero = 0;
	__u32 *v = bpf_map_lookup_elem(&sock_config, &zero);

	return v ? *v : CLOVISOR_DEFAULT_SNAPLEN;
}

/* Whether a server socket covered by its client's sends counters alone
 * (CLOVISOR_CONFIG_PEER_COVERED). */
static __always_inline int peer_covered(void)
{
	__u32 idx = CLOVISOR_CONFIG_PEER_COVERED;
	__u32 *v = bpf_map_lookup_elem(&sock_config, &idx);

	return v && *v;
}

/* The generation of the monitored-namespace set (CLOVISOR_CONFIG_NETNS_GENERATION). */
static __always_inline __u32 netns_generation(void)
{
	__u32 idx = CLOVISOR_CONFIG_NETNS_GENERATION;
	__u32 *v = bpf_map_lookup_elem(&sock_config, &idx);

	return v ? *v : 0;
}

/* The user memory of the current call: one buffer (read/write/recvfrom/sendto),
 * or an iovec array (readv/writev, sendmsg/recvmsg). */
struct call_data {
	__u64 base; /* the buffer, or the iovec array */
	__u64 len;  /* the buffer's length, or the number of iovecs */
	__u8 vector;
};

/* The registers are a BTF-typed pointer (bpf_task_pt_regs): read by direct,
 * CO-RE-relocated loads, not a helper call each - all three at once, on one
 * path, so that the compiler cannot merge a load from the registers with one
 * from the stack (the verifier refuses an instruction used with both). */
static __always_inline int call_data(struct call_data *c)
{
	struct pt_regs *regs = (struct pt_regs *)bpf_task_pt_regs(bpf_get_current_task_btf());
	struct umsghdr_iov mh = {};
	__u64 arg1, arg2;
	long nr;

	if (!regs)
		return 0;
	nr = SYSCALL_NR(regs);
	arg1 = SYSCALL_ARG1(regs);
	arg2 = SYSCALL_ARG2(regs);
	barrier_var(arg1);
	barrier_var(arg2);
	switch (nr) {
	case NR_READ:
	case NR_WRITE:
	case NR_RECVFROM:
	case NR_SENDTO:
		c->base = arg1;
		c->len = arg2;
		c->vector = 0;
		return 1;
	case NR_READV:
	case NR_WRITEV:
		c->base = arg1;
		c->len = arg2;
		c->vector = 1;
		return 1;
	case NR_SENDMSG:
	case NR_RECVMSG:
		if (bpf_probe_read_user(&mh, sizeof(mh), (const void *)(arg1 + MSGHDR_IOV_OFFSET)))
			return 0;
		c->base = mh.msg_iov;
		c->len = mh.msg_iovlen;
		c->vector = 1;
		return 1;
	default:
		return 0;
	}
}

/* Where the first bytes of the current call are in user memory, and how many
 * are readable there; 0 when the call has no user buffer of its own. A
 * vectored call's first iovec: the snippet is the start of the message. */
static __always_inline __u64 user_buffer(__u64 *len)
{
	struct call_data c = {};
	struct uiovec iov = {};

	if (!call_data(&c))
		return 0;
	if (!c.vector) {
		*len = c.len;
		return c.base;
	}
	if (c.len == 0 || bpf_probe_read_user(&iov, sizeof(iov), (const void *)c.base))
		return 0;
	*len = iov.iov_len;
	return iov.iov_base;
}

/* Whether a connection's first message asks for capture call by call, from
 * its first 8 bytes (fixed comparisons, no parsing): the HTTP/2 client
 * preface "PRI * HT", a PostgreSQL StartupMessage (protocol 3.0), SSLRequest
 * or GSSENCRequest, or a MySQL/MariaDB server greeting (sequence 0, protocol
 * version 10). */
static __always_inline int wants_each_call(const __u8 *b, __u32 len, __u8 dir)
{
	if (len < 8)
		return 0;
	if (dir == CLOVISOR_DIR_SERVER_TO_CLIENT)
		return b[3] == 0 && b[4] == 10 && b[0] != 0;
	if (b[0] == 'P' && b[1] == 'R' && b[2] == 'I' && b[3] == ' ' && b[4] == '*' &&
	    b[5] == ' ' && b[6] == 'H' && b[7] == 'T')
		return 1;
	if (b[0] != 0 || b[1] != 0)
		return 0;
	return (b[4] == 0 && b[5] == 3 && b[6] == 0 && b[7] == 0) ||
	       (b[4] == 0x04 && b[5] == 0xd2 && b[6] == 0x16 && (b[7] == 0x2f || b[7] == 0x30));
}

/* Fills key (oriented by role) and side from the socket; returns the protocol
 * hint. `local_traced`: the local port is the traced one (a server). */
static __always_inline __u8 socket_key(struct sock *sk, int local_traced,
				       struct clovisor_conn_key *key, __u8 *side)
{
	__u8 local_ip[16], remote_ip[16];
	__u16 local_port = sk->__sk_common.skc_num;
	__u16 remote_port = bpf_ntohs(sk->__sk_common.skc_dport);
	__u16 port = local_traced ? local_port : remote_port;
	__u8 *hint = bpf_map_lookup_elem(&traced_ports, &port);

	*side = local_traced ? CLOVISOR_SIDE_SERVER : CLOVISOR_SIDE_CLIENT;
	__builtin_memset(key, 0, sizeof(*key));
	if (sk->__sk_common.skc_family == AF_INET_) {
		clovisor_v4_mapped(local_ip, sk->__sk_common.skc_rcv_saddr);
		clovisor_v4_mapped(remote_ip, sk->__sk_common.skc_daddr);
		key->family = CLOVISOR_FAMILY_IPV4;
	} else {
		/* Whole 16 bytes: BPF_CORE_READ_INTO would size the read by
		 * the array's element. */
		bpf_core_read(local_ip, sizeof(local_ip), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(remote_ip, sizeof(remote_ip), &sk->__sk_common.skc_v6_daddr);
		/* A dual-stack socket talking IPv4 is IPv4 on the wire: so it
		 * joins with the veth's view. */
		key->family =
		    clovisor_is_v4_mapped(remote_ip) ? CLOVISOR_FAMILY_IPV4 : CLOVISOR_FAMILY_IPV6;
	}
	if (local_traced) {
		__builtin_memcpy(key->server_ip, local_ip, 16);
		__builtin_memcpy(key->client_ip, remote_ip, 16);
		key->server_port = local_port;
		key->client_port = remote_port;
	} else {
		__builtin_memcpy(key->client_ip, local_ip, 16);
		__builtin_memcpy(key->server_ip, remote_ip, 16);
		key->client_port = local_port;
		key->server_port = remote_port;
	}
	return hint ? *hint : CLOVISOR_PROTO_UNSPECIFIED;
}

static __always_inline void fill_owner(struct clovisor_owner *o, __u64 sk, __u32 netns, __u8 side)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();

	__builtin_memset(o, 0, sizeof(*o));
	o->sock_id = sk;
	o->pid = pid_tgid >> 32;
	o->tid = (__u32)pid_tgid;
	o->netns = netns;
	o->side = side;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

/* The pod veth's entry of the socket's connection, when the tc programs carry
 * it (same key, the veth's ifindex); `key` is left set for a deletion. */
static __always_inline struct clovisor_conn *veth_entry(const struct clovisor_sock_conn *s,
							struct clovisor_conn_key *key)
{
	struct clovisor_conn *c;

	__builtin_memcpy(key, &s->key, sizeof(*key));
	key->ifindex = s->veth_ifindex;
	c = bpf_map_lookup_elem(&tc_connections, key);
	return c && c->carried ? c : 0;
}

/* The pod veth's view of the socket's connection, when the tc programs carry
 * it: the messages its connection keeps (the one before the latest request,
 * that request once its response started, the current one), copied into `w`.
 * Returns the flag that says `w` is set. */
static __always_inline __u8 fill_wire(struct clovisor_wire *w, const struct clovisor_sock_conn *s)
{
	struct clovisor_conn_key key;
	struct clovisor_conn *c;
	__u8 n = 0;

	if (!s->veth_ifindex)
		return 0;
	w->ifindex = s->veth_ifindex;
	w->pad[0] = 0;
	w->pad[1] = 0;
	w->pad[2] = 0;
	c = veth_entry(s, &key);
	if (c) {
		if (c->has_before)
			__builtin_memcpy(&w->msgs[n++], &c->before, sizeof(c->before));
		if (c->has_last_request)
			__builtin_memcpy(&w->msgs[n++], &c->last_request, sizeof(c->last_request));
		if (c->cur.direction != CLOVISOR_DIR_NONE && n < CLOVISOR_WIRE_MSGS)
			__builtin_memcpy(&w->msgs[n++], &c->cur, sizeof(c->cur));
		count(CLOVISOR_SOCK_STAT_WIRE_CARRIED);
	} else {
		count(CLOVISOR_SOCK_STAT_WIRE_MISSED);
	}
	w->count = n;
	return CLOVISOR_EV_HAS_WIRE;
}

/* The socket's connection ends: the veth's entry, kept for this end, goes -
 * now if the veth saw its end, else at the veth's end (the veth's FLOW_END
 * is its own). */
static __always_inline void release_wire(const struct clovisor_sock_conn *s)
{
	struct clovisor_conn_key key;
	struct clovisor_conn *c;

	if (!s->veth_ifindex)
		return;
	c = veth_entry(s, &key);
	if (!c)
		return;
	if (c->ended)
		bpf_map_delete_elem(&tc_connections, &key);
	else
		c->sock_done = 1;
}

static __always_inline void fill_hdr(struct clovisor_event_hdr *h, __u32 kind,
				     const struct clovisor_sock_conn *s, __u8 flags)
{
	h->kind = kind;
	h->point = CLOVISOR_POINT_SOCKET;
	h->protocol = s->protocol;
	h->flags = s->counters_only ? flags | CLOVISOR_EV_COUNTERS_ONLY : flags;
	h->reason = 0;
	h->flow_id = s->flow_id;
	__builtin_memcpy(&h->key, &s->key, sizeof(s->key));
	__builtin_memcpy(&h->owner, &s->owner, sizeof(s->owner));
}

/* The message now starting travels alone, with the final counters of the one
 * before (prev) and up to n first bytes read from user memory at buf (kernel
 * memory when `kernel`). */
static __always_inline void emit_msg_start(const struct clovisor_sock_conn *s,
					   const struct clovisor_msg *msg,
					   const struct clovisor_msg *prev, __u8 has_prev,
					   const void *buf, __u64 n, int kernel)
{
	__u32 zero = 0;
	struct clovisor_msg_start *ev = bpf_map_lookup_elem(&sock_scratch_msg, &zero);
	__u32 len;

	if (!ev)
		return;
	fill_hdr(&ev->hdr, CLOVISOR_EVENT_MSG_START, s, has_prev ? CLOVISOR_EV_HAS_PREV : 0);
	ev->hdr.flags |= fill_wire(&ev->wire, s);
	__builtin_memcpy(&ev->msg, msg, sizeof(*msg));
	if (has_prev)
		__builtin_memcpy(&ev->prev, prev, sizeof(*prev));
	else
		__builtin_memset(&ev->prev, 0, sizeof(ev->prev));
	ev->pad = 0;
	len = clovisor_bound_snap(buf ? n : 0);
	if (len > 0) {
		if (kernel ? bpf_probe_read_kernel(ev->payload, len, buf)
			   : bpf_probe_read_user(ev->payload, len, buf)) {
			count(CLOVISOR_SOCK_STAT_SNAP_LOAD_FAILED);
			len = 0;
		}
	}
	ev->snap_len = len;
	if (bpf_ringbuf_output(&sock_events, ev, offsetof(struct clovisor_msg_start, payload) + len,
			       clovisor_wakeup_flags(&sock_events)))
		count(CLOVISOR_SOCK_STAT_RINGBUF_FULL);
	else
		count(CLOVISOR_SOCK_STAT_EVENTS_EMITTED);
}

/* A response starts after the held request (final counters `request`, first
 * bytes in `held`): one record for both. */
static __always_inline void emit_exchange(const struct clovisor_sock_conn *s,
					  const struct clovisor_msg *request,
					  struct clovisor_held *held, const void *buf, __u64 n)
{
	__u32 zero = 0;
	struct clovisor_exchange *ev = bpf_map_lookup_elem(&sock_scratch_exchange, &zero);
	__u32 req_len = 0, resp_len;
	__u8 flags = s->has_before ? CLOVISOR_EV_HAS_PREV : 0;

	if (!ev)
		return;
	if (held) {
		req_len = clovisor_take_held(held, ev->payload);
	} else if (!s->counters_only) {
		flags |= CLOVISOR_EV_HEAD_LOST;
		count(CLOVISOR_SOCK_STAT_HEAD_LOST);
	}
	fill_hdr(&ev->hdr, CLOVISOR_EVENT_EXCHANGE, s, flags);
	ev->hdr.flags |= fill_wire(&ev->wire, s);
	__builtin_memcpy(&ev->before, &s->before, sizeof(s->before));
	__builtin_memcpy(&ev->request, request, sizeof(*request));
	__builtin_memcpy(&ev->response, &s->cur, sizeof(s->cur));
	resp_len = clovisor_bound_snap(buf ? n : 0);
	if (resp_len > 0 && bpf_probe_read_user(ev->payload + req_len, resp_len, buf)) {
		count(CLOVISOR_SOCK_STAT_SNAP_LOAD_FAILED);
		resp_len = 0;
	}
	ev->request_len = req_len;
	ev->response_len = resp_len;
	if (bpf_ringbuf_output(&sock_events, ev,
			       offsetof(struct clovisor_exchange, payload) + req_len + resp_len,
			       clovisor_wakeup_flags(&sock_events)))
		count(CLOVISOR_SOCK_STAT_RINGBUF_FULL);
	else
		count(CLOVISOR_SOCK_STAT_EVENTS_EMITTED);
}

/* `len` (> 0) bytes of user memory at `base` are bytes `offset`.. of the
 * current message of a connection captured call by call: one SEGMENT with
 * their first snaplen bytes. */
static __always_inline void emit_chunk(const struct clovisor_sock_conn *s, __u64 offset, __u64 base,
				       __u64 len)
{
	__u32 zero = 0, snap = snaplen(), n;
	struct clovisor_segment *ev = bpf_map_lookup_elem(&sock_scratch_segment, &zero);

	if (!ev)
		return;
	fill_hdr(&ev->hdr, CLOVISOR_EVENT_SEGMENT, s, 0);
	ev->index = s->cur.index;
	ev->offset = offset;
	/* Through memory, so that the verifier does not carry the copy's
	 * length back into the walk's state (each step would differ and the
	 * bpf_loop walk would never be proven). */
	ev->len = len < snap ? len : snap;
	n = clovisor_bound_snap(*(volatile __u32 *)&ev->len);
	if (n > 0 && bpf_probe_read_user(ev->payload, n, (const void *)base)) {
		count(CLOVISOR_SOCK_STAT_SNAP_LOAD_FAILED);
		n = 0;
	}
	ev->len = n;
	if (bpf_ringbuf_output(&sock_events, ev, offsetof(struct clovisor_segment, payload) + n,
			       clovisor_wakeup_flags(&sock_events)))
		count(CLOVISOR_SOCK_STAT_SEGMENTS_LOST);
	else
		count(CLOVISOR_SOCK_STAT_SEGMENTS_EMITTED);
}

/* The walk over a call's bytes, a snaplen at a time, buffer after buffer
 * (bpf_loop: the verifier checks one step, not every unrolled path). */
struct chunk_walk {
	const struct clovisor_sock_conn *s;
	__u64 iov; /* the iovec array (vectored calls) */
	__u64 iovcnt;
	__u32 next_iov; /* the next iovec to read */
	__u32 pad;
	__u64 budget;	/* bytes still to copy (CLOVISOR_CALL_CHUNKS snaplens) */
	__u64 cur;	/* where the next chunk is read */
	__u64 cur_left; /* bytes of the call left in the current buffer */
	__u64 offset;	/* of `cur` in the message */
	__u64 left;	/* bytes the call moved not walked yet */
	__u64 snap;
};

static long chunk_step(__u32 i, void *data)
{
	struct chunk_walk *w = data;
	struct uiovec iov = {};
	__u64 n;

	if (w->left == 0 || w->budget == 0)
		return 1;
	if (w->cur_left == 0) {
		/* The next buffer of a vectored call. */
		if (w->next_iov >= w->iovcnt ||
		    bpf_probe_read_user(
			&iov, sizeof(iov),
			(const void *)(w->iov + (__u64)w->next_iov * sizeof(struct uiovec))))
			return 1;
		w->next_iov += 1;
		w->cur = iov.iov_base;
		w->cur_left = iov.iov_len < w->left ? iov.iov_len : w->left;
		return 0;
	}
	n = w->cur_left < w->snap ? w->cur_left : w->snap;
	emit_chunk(w->s, w->offset, w->cur, n);
	w->budget = w->budget > n ? w->budget - n : 0;
	w->cur += n;
	w->cur_left -= n;
	w->offset += n;
	w->left -= n;
	return 0;
}

/* A call of a connection captured call by call moved `moved` bytes at
 * `offset` of the current message: its bytes, one SEGMENT per snaplen, at most
 * CLOVISOR_CALL_CHUNKS of them; past that, the call's last snaplen bytes (where
 * a message's end - trailers, a command tag - is) when they lie in the buffer
 * being walked. */
static __always_inline void emit_segment(const struct clovisor_sock_conn *s, __u64 offset,
					 __u64 moved)
{
	struct call_data c = {};
	struct chunk_walk w = {};
	__u64 t;

	if (!call_data(&c)) {
		count(CLOVISOR_SOCK_STAT_NO_USER_BUFFER);
		return;
	}
	w.s = s;
	w.snap = snaplen();
	w.budget = w.snap * CLOVISOR_CALL_CHUNKS;
	w.offset = offset;
	w.left = moved;
	if (c.vector) {
		w.iov = c.base;
		w.iovcnt = c.len;
	} else {
		w.cur = c.base;
		w.cur_left = c.len < moved ? c.len : moved;
	}
	bpf_loop(CLOVISOR_CALL_CHUNKS + CLOVISOR_MAX_IOVECS, chunk_step, &w, 0);
	if (w.left == 0)
		return;
	count(CLOVISOR_SOCK_STAT_CALL_BYTES_SKIPPED);
	if (w.cur_left == w.left) {
		t = w.left < w.snap ? w.left : w.snap;
		emit_chunk(s, w.offset + w.left - t, w.cur + w.cur_left - t, t);
	}
}

/* The connection of a traced socket, created on its first traced call; NULL
 * when the socket is not traced (its process's namespace is not monitored). */
static __always_inline struct clovisor_sock_conn *connection(struct sock *sk, __u64 id,
							     int local_traced)
{
	struct clovisor_sock_conn *s = bpf_map_lookup_elem(&sock_connections, &id);
	struct clovisor_sock_conn fresh;
	struct task_struct *task;
	__u32 *untraced;
	__u32 netns, generation;
	__u8 side = 0;

	if (s)
		return s;
	/* Read before the set is: user space bumps it after changing the set,
	 * so a change that the look-up below missed leaves this socket's mark
	 * older than the set, to be checked again on its next call. */
	generation = netns_generation();
	/* Direct loads through the BTF-typed task: no helper calls. */
	task = bpf_get_current_task_btf();
	netns = task->nsproxy->net_ns->ns.inum;
	if (!bpf_map_lookup_elem(&monitored_netns, &netns)) {
		untraced = bpf_sk_storage_get(&sock_untraced, sk, 0, BPF_SK_STORAGE_GET_F_CREATE);
		if (untraced)
			*untraced = generation;
		return 0;
	}
	__builtin_memset(&fresh, 0, sizeof(fresh));
	fresh.protocol = socket_key(sk, local_traced, &fresh.key, &side);
	if (fresh.protocol == CLOVISOR_PROTO_HTTP2 || fresh.protocol == CLOVISOR_PROTO_GRPC) {
		fresh.capture = CLOVISOR_CAPTURE_EACH_CALL;
		fresh.decided = 1;
		count(CLOVISOR_SOCK_STAT_EACH_CALL_CONNS);
	}
	fill_owner(&fresh.owner, id, netns, side);
	{
		__u32 *veth = bpf_map_lookup_elem(&netns_veth, &netns);

		fresh.veth_ifindex = veth ? *veth : 0;
	}
	fresh.flow_id = clovisor_new_flow_id(&sock_flow_seq, CLOVISOR_SOCK_FLOW_ID_BIT, 55);
	if (bpf_map_update_elem(&sock_connections, &id, &fresh, BPF_NOEXIST) == 0)
		count(CLOVISOR_SOCK_STAT_CONNS_CREATED);
	s = bpf_map_lookup_elem(&sock_connections, &id);
	if (!s)
		count(CLOVISOR_SOCK_STAT_CONN_UPDATE_FAILED);
	return s;
}

/* A plain HTTP/1.x server connection at its first request: whether its
 * client's socket, traced on this node, carries the bytes (the client filed
 * its key when its connect completed). */
static __always_inline int client_covers(const struct clovisor_sock_conn *s)
{
	return s->owner.side == CLOVISOR_SIDE_SERVER && s->protocol == CLOVISOR_PROTO_HTTP &&
	       peer_covered() && bpf_map_lookup_elem(&sock_local_clients, &s->key);
}

/* A server connection whose client carries the bytes: from its first request
 * on, timings and counters alone. */
static __always_inline void go_counters_only(struct clovisor_sock_conn *s)
{
	s->counters_only = 1;
	count(CLOVISOR_SOCK_STAT_PEER_COVERED_CONNS);
}

/* A request waits for its response: the connection remembers the message
 * before it (a copying connection's first bytes wait in held_heads; a
 * counters-only connection's request in the connection alone). */
static __always_inline void await_response(struct clovisor_sock_conn *s,
					   const struct clovisor_msg *prev, __u8 has_prev)
{
	s->held = 1;
	s->has_before = has_prev;
	__builtin_memcpy(&s->before, prev, sizeof(*prev));
}

/* From now on the connection is captured call by call. */
static __always_inline void each_call_begin(struct clovisor_sock_conn *s)
{
	s->capture = CLOVISOR_CAPTURE_EACH_CALL;
	s->decided = 1;
	count(CLOVISOR_SOCK_STAT_EACH_CALL_CONNS);
}

/* A message of a connection captured call by call starts (s->cur set): it
 * travels alone, without bytes, then its first call's bytes as a segment. No
 * request is held: its segments follow it at once. */
static __always_inline void each_call_start(struct clovisor_sock_conn *s,
					    const struct clovisor_msg *prev, __u8 has_prev,
					    __u64 moved)
{
	s->held = 0;
	emit_msg_start(s, &s->cur, prev, has_prev, 0, 0, 0);
	emit_segment(s, 0, moved);
}

/* `moved` bytes went through traced socket sk: a send (`send`) or a receive. */
static __always_inline void on_io(struct sock *sk, __u64 moved, __u8 send)
{
	unsigned short family = sk->__sk_common.skc_family;
	struct clovisor_sock_conn *s;
	struct clovisor_held *held;
	struct clovisor_msg prev;
	__u64 now, buf, buf_len = 0, id = (__u64)sk;
	__u32 seq, n;
	__u8 dir, has_prev;
	int local;

	if ((family != AF_INET_ && family != AF_INET6_) || sk->sk_protocol != IPPROTO_TCP_)
		return;
	/* The cheap test first: every socket call of the node comes here. */
	local = clovisor_port_traced(sk->__sk_common.skc_num);
	if (!local && !clovisor_port_traced(bpf_ntohs(sk->__sk_common.skc_dport)))
		return;
	count(CLOVISOR_SOCK_STAT_TCP_CALLS);
	{
		/* A socket already found untraced under the current set. */
		__u32 *untraced = bpf_sk_storage_get(&sock_untraced, sk, 0, 0);

		if (untraced && *untraced == netns_generation())
			return;
	}
	s = connection(sk, id, local);
	if (!s)
		return;
	count(CLOVISOR_SOCK_STAT_CALLS_TRACED);

	/* A server sends responses and receives requests; a client the
	 * reverse. */
	if (s->owner.side == CLOVISOR_SIDE_SERVER)
		dir = send ? CLOVISOR_DIR_SERVER_TO_CLIENT : CLOVISOR_DIR_CLIENT_TO_SERVER;
	else
		dir = send ? CLOVISOR_DIR_CLIENT_TO_SERVER : CLOVISOR_DIR_SERVER_TO_CLIENT;
	now = bpf_ktime_get_boot_ns();
	if (s->cur.direction == dir) {
		__u64 offset = s->cur.bytes;

		s->cur.last_ns = now;
		s->cur.bytes += moved;
		s->cur.packets += 1;
		if (s->capture == CLOVISOR_CAPTURE_EACH_CALL)
			emit_segment(s, offset, moved);
		return;
	}

	/* A new message. The call has moved its bytes: the sequence number of
	 * its first byte is where the socket's counter stood before them, in
	 * the same sequence space the wire uses. */
	seq = send ? BPF_CORE_READ((struct tcp_sock *)sk, write_seq)
		   : BPF_CORE_READ((struct tcp_sock *)sk, copied_seq);
	seq -= (__u32)moved;
	has_prev = s->cur.direction != CLOVISOR_DIR_NONE;
	if (has_prev)
		__builtin_memcpy(&prev, &s->cur, sizeof(prev));
	else
		__builtin_memset(&prev, 0, sizeof(prev));
	s->cur.index = has_prev ? prev.index + 1 : 0;
	s->cur.start_ns = now;
	s->cur.last_ns = now;
	s->cur.bytes = moved;
	s->cur.packets = 1;
	s->cur.retransmits = 0;
	s->cur.tcp_seq = seq;
	s->cur.direction = dir;
	s->cur.to_pod = !send;

	if (s->capture == CLOVISOR_CAPTURE_EACH_CALL) {
		each_call_start(s, &prev, has_prev, moved);
		return;
	}
	if (s->counters_only) {
		/* Its client's socket carries the bytes: a request is held in
		 * the connection itself (no held_heads slot, nothing read). */
		if (dir == CLOVISOR_DIR_CLIENT_TO_SERVER) {
			await_response(s, &prev, has_prev);
		} else if (s->held) {
			s->held = 0;
			emit_exchange(s, &prev, 0, 0, 0);
		} else {
			emit_msg_start(s, &s->cur, &prev, has_prev, 0, 0, 0);
		}
		return;
	}
	buf = user_buffer(&buf_len);
	if (!buf)
		count(CLOVISOR_SOCK_STAT_NO_USER_BUFFER);
	n = buf_len < moved ? buf_len : moved;
	if (n > snaplen())
		n = snaplen();

	if (!s->decided && dir == CLOVISOR_DIR_SERVER_TO_CLIENT && buf) {
		/* The server speaks first: its first 8 bytes may be a MySQL
		 * greeting (one read of 8 bytes per such connection); if not,
		 * the client's first message decides. */
		__u8 first[8] = {};

		if (n >= 8 && !bpf_probe_read_user(first, 8, (const void *)buf) &&
		    wants_each_call(first, 8, dir)) {
			each_call_begin(s);
			each_call_start(s, &prev, has_prev, moved);
			return;
		}
	}
	if (dir == CLOVISOR_DIR_CLIENT_TO_SERVER) {
		/* A request: hold its first bytes for its response. */
		held = clovisor_held_slot(s->flow_id);
		if (held) {
			__u32 len = clovisor_bound_snap(buf ? n : 0);

			if (len > 0 && bpf_probe_read_user(held->data, len, (const void *)buf)) {
				count(CLOVISOR_SOCK_STAT_SNAP_LOAD_FAILED);
				len = 0;
			}
			/* A connection's first request: its bytes, already
			 * copied, may ask for capture call by call. */
			if (!s->decided) {
				s->decided = 1;
				if (wants_each_call(held->data, len, dir)) {
					clovisor_release(held);
					each_call_begin(s);
					each_call_start(s, &prev, has_prev, moved);
					return;
				}
				if (client_covers(s)) {
					clovisor_release(held);
					go_counters_only(s);
					await_response(s, &prev, has_prev);
					return;
				}
			}
			clovisor_hold(held, &s->key, &s->owner, &s->cur, s->protocol,
				      CLOVISOR_POINT_SOCKET, len);
			await_response(s, &prev, has_prev);
			return;
		}
		count(CLOVISOR_SOCK_STAT_HEAD_NOT_HELD);
		/* No room to hold: no bytes copied to look at either. */
		s->decided = 1;
		s->held = 0;
		emit_msg_start(s, &s->cur, &prev, has_prev, (const void *)buf, n, 0);
		return;
	}
	if (s->held) {
		s->held = 0;
		emit_exchange(s, &prev, bpf_map_lookup_elem(&held_heads, &s->flow_id),
			      (const void *)buf, n);
		return;
	}
	emit_msg_start(s, &s->cur, &prev, has_prev, (const void *)buf, n, 0);
}

/* ---- Programs -------------------------------------------------------------- */

/* ctx: struct sock *sk, int ret, int flags */
SEC("tp_btf/sock_send_length")
int clovisor_sock_send(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int ret = (int)ctx[1];

	if (ret > 0 && sk)
		on_io(sk, (__u64)ret, 1);
	return 0;
}

/* ctx: struct sock *sk, int ret, int flags */
SEC("tp_btf/sock_recv_length")
int clovisor_sock_recv(__u64 *ctx)
{
	struct sock *sk = (struct sock *)ctx[0];
	int ret = (int)ctx[1];
	int flags = (int)ctx[2];

	/* A peek leaves the bytes for the read that follows. */
	if (ret > 0 && sk && !(flags & MSG_PEEK_))
		on_io(sk, (__u64)ret, 0);
	return 0;
}

/* A client socket's key for its server's connection to find, when sk is a
 * client of a traced HTTP/1.x port and may be filed; 0 otherwise. */
static __always_inline int client_key(struct sock *sk, struct clovisor_conn_key *key)
{
	__u8 side;

	if (!sk || !peer_covered() || sk->sk_protocol != IPPROTO_TCP_ ||
	    clovisor_port_traced(sk->__sk_common.skc_num) ||
	    !clovisor_port_traced(bpf_ntohs(sk->__sk_common.skc_dport)))
		return 0;
	if (sk->__sk_common.skc_family != AF_INET_ && sk->__sk_common.skc_family != AF_INET6_)
		return 0;
	return socket_key(sk, 0, key, &side) == CLOVISOR_PROTO_HTTP;
}

/* A client's connect completed (in the softirq that took the server's
 * SYN-ACK, before its ACK goes out): a client of a monitored namespace files
 * its key. The socket's namespace, not the current task's: this runs on
 * whichever task the softirq interrupted. */
static __always_inline void file_client(struct sock *sk)
{
	struct clovisor_conn_key key;
	__u32 netns;
	__u8 one = 1;

	if (!client_key(sk, &key))
		return;
	netns = BPF_CORE_READ(sk, __sk_common.skc_net.net, ns.inum);
	if (bpf_map_lookup_elem(&monitored_netns, &netns))
		bpf_map_update_elem(&sock_local_clients, &key, &one, BPF_ANY);
}

static __always_inline void forget_client(struct sock *sk)
{
	struct clovisor_conn_key key;

	if (client_key(sk, &key))
		bpf_map_delete_elem(&sock_local_clients, &key);
}

/* ctx: const struct sock *sk, int oldstate, int newstate */
SEC("tp_btf/inet_sock_set_state")
int clovisor_sock_state(__u64 *ctx)
{
	__u64 sk = ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];
	struct clovisor_sock_conn *s;
	struct clovisor_flow_end *ev;

	if (newstate == TCP_ESTABLISHED_ && oldstate == TCP_SYN_SENT_) {
		file_client((struct sock *)sk);
		return 0;
	}
	if (newstate != TCP_CLOSE_)
		return 0;
	s = bpf_map_lookup_elem(&sock_connections, &sk);
	if (!s) {
		/* A client that connected and never called: its key goes. */
		forget_client((struct sock *)sk);
		return 0;
	}
	if (s->held) {
		/* A request still waiting for its response: send it alone
		 * first, with the message before it. */
		struct clovisor_held *held = bpf_map_lookup_elem(&held_heads, &s->flow_id);

		s->held = 0;
		if (!held && !s->counters_only)
			count(CLOVISOR_SOCK_STAT_HEAD_LOST);
		emit_msg_start(s, &s->cur, &s->before, s->has_before, held ? held->data : 0,
			       held ? held->len : 0, 1);
	}
	bpf_map_delete_elem(&held_heads, &s->flow_id);
	if (s->owner.side == CLOVISOR_SIDE_CLIENT)
		bpf_map_delete_elem(&sock_local_clients, &s->key);
	ev = bpf_ringbuf_reserve(&sock_events, sizeof(*ev), 0);
	if (ev) {
		fill_hdr(&ev->hdr, CLOVISOR_EVENT_FLOW_END, s,
			 s->cur.direction != CLOVISOR_DIR_NONE ? CLOVISOR_EV_HAS_PREV : 0);
		/* An orderly close passes through the FIN states. */
		ev->hdr.reason = (oldstate == TCP_FIN_WAIT1_ || oldstate == TCP_FIN_WAIT2_ ||
				  oldstate == TCP_TIME_WAIT_ || oldstate == TCP_LAST_ACK_ ||
				  oldstate == TCP_CLOSING_)
				     ? CLOVISOR_END_FIN
				     : CLOVISOR_END_RST;
		ev->ts_ns = bpf_ktime_get_boot_ns();
		__builtin_memcpy(&ev->last, &s->cur, sizeof(s->cur));
		ev->srtt_us = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
		ev->total_retrans = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
		ev->hdr.flags |= fill_wire(&ev->wire, s);
		bpf_ringbuf_submit(ev, clovisor_wakeup_flags(&sock_events));
		count(CLOVISOR_SOCK_STAT_EVENTS_EMITTED);
	} else {
		count(CLOVISOR_SOCK_STAT_RINGBUF_FULL);
	}
	release_wire(s);
	bpf_map_delete_elem(&sock_connections, &sk);
	count(CLOVISOR_SOCK_STAT_CONNS_ENDED);
	return 0;
}
