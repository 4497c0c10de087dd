// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
/*
 * The socket observation point: the data syscalls (read, write, sendto,
 * recvfrom, sendmsg, recvmsg, readv, writev) of the processes of monitored
 * network namespaces on TCP sockets of traced ports. Message boundaries are
 * direction switches per socket, as in tc_capture.bpf.c; each message start
 * sends the first bytes of the user buffer - plaintext even when the wire is
 * encrypted by a sidecar or a tunnel - through the ring buffer. Continuation
 * syscalls of a message only update counters in the connection map.
 *
 * Hooks (BTF tracepoints, loadable where kprobes and fentry are not):
 *   tp_btf/sys_enter            remember fd, buffer, TCP sequence number
 *   tp_btf/sys_exit             account the bytes moved, maybe emit
 *   tp_btf/inet_sock_set_state  TCP_CLOSE ends the socket's connection
 *
 * Kernel structures are read with CO-RE through the minimal definitions
 * below (preserve_access_index), relocated against the running kernel's BTF
 * at load time: no vmlinux.h, so the build does not depend on the build
 * machine's kernel.
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
	unsigned long di;
	unsigned long si;
	unsigned long dx;
	unsigned long orig_ax;
} __attribute__((preserve_access_index));
#define SYSCALL_NR(r)	((r)->orig_ax)
#define SYSCALL_ARG0(r) BPF_CORE_READ(r, di)
#define SYSCALL_ARG1(r) BPF_CORE_READ(r, si)
#define SYSCALL_ARG2(r) BPF_CORE_READ(r, dx)
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
	unsigned long orig_x0;
	int syscallno;
} __attribute__((preserve_access_index));
#define SYSCALL_NR(r)	((r)->syscallno)
#define SYSCALL_ARG0(r) BPF_CORE_READ(r, orig_x0)
#define SYSCALL_ARG1(r) BPF_CORE_READ(r, regs[1])
#define SYSCALL_ARG2(r) BPF_CORE_READ(r, regs[2])
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

struct inode {
	unsigned short i_mode;
} __attribute__((preserve_access_index));

struct file {
	struct inode *f_inode;
	void *private_data;
} __attribute__((preserve_access_index));

struct fdtable {
	unsigned int max_fds;
	struct file **fd;
} __attribute__((preserve_access_index));

struct files_struct {
	struct fdtable *fdt;
} __attribute__((preserve_access_index));

struct task_struct {
	struct nsproxy *nsproxy;
	struct files_struct *files;
} __attribute__((preserve_access_index));

struct in6_addr {
	union {
		__u8 u6_addr8[16];
	} in6_u;
} __attribute__((preserve_access_index));

struct sock_common {
	__be32 skc_daddr;
	__be32 skc_rcv_saddr;
	__be16 skc_dport;
	__u16 skc_num;
	unsigned short skc_family;
	struct in6_addr skc_v6_daddr;
	struct in6_addr skc_v6_rcv_saddr;
} __attribute__((preserve_access_index));

struct sock {
	struct sock_common __sk_common;
	__u16 sk_protocol;
} __attribute__((preserve_access_index));

struct socket {
	short type;
	struct sock *sk;
} __attribute__((preserve_access_index));

struct tcp_sock {
	__u32 write_seq;
	__u32 copied_seq;
	__u32 srtt_us; /* smoothed RTT << 3 */
	__u32 total_retrans;
} __attribute__((preserve_access_index));

struct iovec {
	void *iov_base;
	__u64 iov_len;
} __attribute__((preserve_access_index));

struct user_msghdr {
	struct iovec *msg_iov;
	__u64 msg_iovlen;
} __attribute__((preserve_access_index));

#define S_IFMT_	       00170000
#define S_IFSOCK_      0140000
#define AF_INET_       2
#define AF_INET6_      10
#define SOCK_STREAM_   1
#define IPPROTO_TCP_   6
#define TCP_CLOSE_     7
#define TCP_FIN_WAIT1_ 4
#define TCP_FIN_WAIT2_ 5
#define TCP_TIME_WAIT_ 6
#define TCP_LAST_ACK_  9
#define TCP_CLOSING_   11

/* ---- Maps ----------------------------------------------------------------- */

/* Network namespace inode -> 1: whose processes are traced. Every other
 * process leaves after one map lookup. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_MONITORED_NETNS);
	__type(key, __u32);
	__type(value, __u8);
} monitored_netns SEC(".maps");

/* A data syscall on a TCP socket between sys_enter and sys_exit. */
struct call {
	__u64 sk;
	__u64 buf;
	__u64 buf_len; /* bytes readable at buf (first iovec for vectored calls) */
	__u64 enter_ns;
	__u32 seq; /* write_seq (send) or copied_seq (recv) at entry */
	__u8 send;
	__u8 pad[3];
};

/* Keyed by pid_tgid: a thread has at most one syscall in flight. LRU so that
 * entries of threads killed inside a syscall age out. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u64);
	__type(value, struct call);
} calls SEC(".maps");

/* Keyed by struct sock address; bounded by user space (max_connections). */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, struct clovisor_sock_conn);
} sock_connections SEC(".maps");

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

/* SOCK_MSG_START is too large for the BPF stack: built here. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clovisor_sock_msg_start);
} sock_scratch SEC(".maps");

/* Per-CPU counter behind flow ids (clovisor_new_flow_id). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} sock_flow_seq SEC(".maps");

/* ---- Helpers -------------------------------------------------------------- */

static __always_inline int is_data_syscall(long nr, __u8 *send)
{
	switch (nr) {
	case NR_WRITE:
	case NR_WRITEV:
	case NR_SENDTO:
	case NR_SENDMSG:
		*send = 1;
		return 1;
	case NR_READ:
	case NR_READV:
	case NR_RECVFROM:
	case NR_RECVMSG:
		*send = 0;
		return 1;
	default:
		return 0;
	}
}

/* The struct sock behind fd if it is a TCP socket of an IP family, else 0. */
static __always_inline struct sock *tcp_sock_of_fd(struct task_struct *task, __u32 fd)
{
	struct files_struct *files = BPF_CORE_READ(task, files);
	struct fdtable *fdt;
	struct file **fds;
	struct file *file = 0;
	struct socket *sock;
	struct sock *sk;
	unsigned short mode, family;

	if (!files)
		return 0;
	fdt = BPF_CORE_READ(files, fdt);
	if (!fdt || fd >= BPF_CORE_READ(fdt, max_fds))
		return 0;
	fds = BPF_CORE_READ(fdt, fd);
	if (!fds || bpf_probe_read_kernel(&file, sizeof(file), fds + fd) || !file)
		return 0;
	mode = BPF_CORE_READ(file, f_inode, i_mode);
	if ((mode & S_IFMT_) != S_IFSOCK_)
		return 0;
	sock = BPF_CORE_READ(file, private_data);
	if (!sock || BPF_CORE_READ(sock, type) != SOCK_STREAM_)
		return 0;
	sk = BPF_CORE_READ(sock, sk);
	if (!sk)
		return 0;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family != AF_INET_ && family != AF_INET6_)
		return 0;
	if (BPF_CORE_READ(sk, sk_protocol) != IPPROTO_TCP_)
		return 0;
	return sk;
}

static __always_inline int is_v4_mapped(const __u8 *a)
{
	__u64 lo = 0;
	__u32 mid = 0;

	__builtin_memcpy(&lo, a, 8);
	__builtin_memcpy(&mid, a + 8, 4);
	return lo == 0 && mid == bpf_htonl(0x0000ffff);
}

/* Fills key (oriented by role) and side from the socket; returns the protocol
 * hint + 1, or 0 when neither port is traced. */
static __always_inline int socket_key(struct sock *sk, struct clovisor_conn_key *key, __u8 *side)
{
	__u8 local_ip[16], remote_ip[16];
	__u16 local_port, remote_port;
	__u8 *hint;
	unsigned short family = BPF_CORE_READ(sk, __sk_common.skc_family);

	local_port = BPF_CORE_READ(sk, __sk_common.skc_num);
	remote_port = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	hint = bpf_map_lookup_elem(&traced_ports, &local_port);
	if (hint) {
		*side = CLOVISOR_SIDE_SERVER;
	} else {
		hint = bpf_map_lookup_elem(&traced_ports, &remote_port);
		if (!hint)
			return 0;
		*side = CLOVISOR_SIDE_CLIENT;
	}

	__builtin_memset(key, 0, sizeof(*key));
	if (family == AF_INET_) {
		clovisor_v4_mapped(local_ip, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		clovisor_v4_mapped(remote_ip, BPF_CORE_READ(sk, __sk_common.skc_daddr));
		key->family = CLOVISOR_FAMILY_IPV4;
	} else {
		/* Whole 16 bytes: BPF_CORE_READ_INTO would size the read by
		 * the array's element. */
		bpf_core_read(local_ip, sizeof(local_ip), &sk->__sk_common.skc_v6_rcv_saddr);
		bpf_core_read(remote_ip, sizeof(remote_ip), &sk->__sk_common.skc_v6_daddr);
		/* A dual-stack socket talking IPv4 is IPv4 on the wire: so it
		 * joins with the veth's view. */
		key->family = is_v4_mapped(remote_ip) ? CLOVISOR_FAMILY_IPV4 : CLOVISOR_FAMILY_IPV6;
	}
	if (*side == CLOVISOR_SIDE_SERVER) {
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
	return *hint + 1;
}

static __always_inline void fill_owner(struct clovisor_sock_owner *o, __u64 sk, __u8 side)
{
	__u64 pid_tgid = bpf_get_current_pid_tgid();
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();

	__builtin_memset(o, 0, sizeof(*o));
	o->sock_id = sk;
	o->pid = pid_tgid >> 32;
	o->tid = (__u32)pid_tgid;
	o->netns = BPF_CORE_READ(task, nsproxy, net_ns, ns.inum);
	o->side = side;
	bpf_get_current_comm(o->comm, sizeof(o->comm));
}

static __always_inline __u32 snaplen(void)
{
	__u32 zero = 0;
	__u32 *v = bpf_map_lookup_elem(&sock_config, &zero);

	return v ? *v : CLOVISOR_DEFAULT_SNAPLEN;
}

static __always_inline void emit_msg_start(const struct call *c, __u64 n,
					   const struct clovisor_sock_conn *conn,
					   const struct clovisor_msg *prev, __u8 has_prev)
{
	__u32 zero = 0;
	struct clovisor_sock_msg_start *ev = bpf_map_lookup_elem(&sock_scratch, &zero);
	__u64 size;

	if (!ev)
		return;
	ev->kind = CLOVISOR_EVENT_SOCK_MSG_START;
	ev->pad = 0;
	fill_owner(&ev->owner, c->sk, conn->owner.side);
	ev->start.kind = CLOVISOR_EVENT_MSG_START;
	__builtin_memcpy(&ev->start.key, &conn->key, sizeof(conn->key));
	ev->start.flow_id = conn->flow_id;
	__builtin_memcpy(&ev->start.msg, &conn->cur, sizeof(conn->cur));
	if (has_prev)
		__builtin_memcpy(&ev->start.prev, prev, sizeof(*prev));
	else
		__builtin_memset(&ev->start.prev, 0, sizeof(ev->start.prev));
	ev->start.protocol = conn->protocol;
	ev->start.has_prev = has_prev;
	__builtin_memset(ev->start.pad, 0, sizeof(ev->start.pad));

	if (n > c->buf_len)
		n = c->buf_len;
	if (n > snaplen())
		n = snaplen();
	/* The mask proves n < CLOVISOR_MAX_SNAPLEN to the verifier; the
	 * comparison covers n == CLOVISOR_MAX_SNAPLEN. */
	if (n >= CLOVISOR_MAX_SNAPLEN)
		n = CLOVISOR_MAX_SNAPLEN;
	else
		n &= CLOVISOR_MAX_SNAPLEN - 1;
	if (n > 0 && n <= CLOVISOR_MAX_SNAPLEN) {
		if (bpf_probe_read_user(ev->start.payload, n, (const void *)c->buf)) {
			clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_SNAP_LOAD_FAILED);
			n = 0;
		}
	} else {
		n = 0;
	}
	ev->start.snap_len = n;
	size = offsetof(struct clovisor_sock_msg_start, start.payload) + n;
	if (size > sizeof(*ev))
		return;
	if (bpf_ringbuf_output(&sock_events, ev, size, clovisor_wakeup_flags(&sock_events)))
		clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_RINGBUF_FULL);
	else
		clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_EVENTS_EMITTED);
}

/* Accounts `moved` bytes of the finished call c. */
static __always_inline void on_data(const struct call *c, __u64 moved)
{
	struct clovisor_sock_conn *conn = bpf_map_lookup_elem(&sock_connections, &c->sk);
	struct clovisor_msg prev;
	__u8 has_prev = 0, dir;
	__u64 now = bpf_ktime_get_boot_ns();

	if (!conn) {
		struct clovisor_sock_conn fresh;
		__u8 side = 0;
		int hint;

		__builtin_memset(&fresh, 0, sizeof(fresh));
		hint = socket_key((struct sock *)c->sk, &fresh.key, &side);
		if (!hint)
			return;
		fill_owner(&fresh.owner, c->sk, side);
		/* Bit 63: socket point; bits 55..62: CPU + 1; bits 0..54:
		 * the per-CPU counter. */
		fresh.flow_id = clovisor_new_flow_id(&sock_flow_seq, CLOVISOR_SOCK_FLOW_ID_BIT, 55);
		fresh.protocol = hint - 1;
		if (bpf_map_update_elem(&sock_connections, &c->sk, &fresh, BPF_NOEXIST) == 0)
			clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_CONNS_CREATED);
		conn = bpf_map_lookup_elem(&sock_connections, &c->sk);
		if (!conn) {
			clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_CONN_UPDATE_FAILED);
			return;
		}
	}
	clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_SYSCALLS_TRACED);

	/* A server sends responses and receives requests; a client the
	 * reverse. */
	if (conn->owner.side == CLOVISOR_SIDE_SERVER)
		dir = c->send ? CLOVISOR_DIR_SERVER_TO_CLIENT : CLOVISOR_DIR_CLIENT_TO_SERVER;
	else
		dir = c->send ? CLOVISOR_DIR_CLIENT_TO_SERVER : CLOVISOR_DIR_SERVER_TO_CLIENT;

	if (conn->cur.direction == dir) {
		conn->cur.last_ns = now;
		conn->cur.bytes += moved;
		conn->cur.packets += 1;
		return;
	}
	if (conn->cur.direction != CLOVISOR_DIR_NONE) {
		__builtin_memcpy(&prev, &conn->cur, sizeof(prev));
		has_prev = 1;
	}
	conn->cur.index = has_prev ? prev.index + 1 : 0;
	/* A send starts when the application hands the bytes over; a receive
	 * when they are handed to it (a blocking read waits for them). */
	conn->cur.start_ns = c->send ? c->enter_ns : now;
	conn->cur.last_ns = now;
	conn->cur.bytes = moved;
	conn->cur.packets = 1;
	conn->cur.retransmits = 0;
	conn->cur.tcp_seq = c->seq;
	conn->cur.direction = dir;
	conn->cur.to_pod = !c->send;
	emit_msg_start(c, moved, conn, &prev, has_prev);
}

/* ---- Programs -------------------------------------------------------------- */

/* ctx: struct pt_regs *regs, long id */
SEC("tp_btf/sys_enter")
int clovisor_sys_enter(__u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long nr = (long)ctx[1];
	struct task_struct *task;
	struct call c;
	struct sock *sk;
	__u32 netns;
	__u64 buf, len, id;
	__u8 send = 0;

	if (!is_data_syscall(nr, &send))
		return 0;
	/* Direct loads through the BTF-typed task: no helper calls on the
	 * path every process of the node takes. */
	task = bpf_get_current_task_btf();
	netns = task->nsproxy->net_ns->ns.inum;
	if (!bpf_map_lookup_elem(&monitored_netns, &netns))
		return 0;
	sk = tcp_sock_of_fd(task, (__u32)SYSCALL_ARG0(regs));
	if (!sk)
		return 0;
	clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_TCP_SYSCALLS);

	buf = SYSCALL_ARG1(regs);
	len = SYSCALL_ARG2(regs);
	if (nr == NR_READV || nr == NR_WRITEV) {
		/* First iovec only: the snippet is the start of the message. */
		struct iovec iov = {};

		if (len == 0 || bpf_probe_read_user(&iov, sizeof(iov), (const void *)buf)) {
			buf = 0;
			len = 0;
		} else {
			buf = (__u64)iov.iov_base;
			len = iov.iov_len;
		}
	} else if (nr == NR_SENDMSG || nr == NR_RECVMSG) {
		struct user_msghdr mh = {};
		struct iovec iov = {};

		if (bpf_probe_read_user(&mh, sizeof(mh), (const void *)buf) || mh.msg_iovlen == 0 ||
		    bpf_probe_read_user(&iov, sizeof(iov), mh.msg_iov)) {
			buf = 0;
			len = 0;
		} else {
			buf = (__u64)iov.iov_base;
			len = iov.iov_len;
		}
	}

	__builtin_memset(&c, 0, sizeof(c));
	c.sk = (__u64)sk;
	c.buf = buf;
	c.buf_len = len;
	c.enter_ns = bpf_ktime_get_boot_ns();
	c.send = send;
	/* Sequence number of the first byte this call moves: joins the socket
	 * observation with the wire's. */
	c.seq = send ? BPF_CORE_READ((struct tcp_sock *)sk, write_seq)
		     : BPF_CORE_READ((struct tcp_sock *)sk, copied_seq);
	id = bpf_get_current_pid_tgid();
	if (bpf_map_update_elem(&calls, &id, &c, BPF_ANY))
		clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_CALL_UPDATE_FAILED);
	return 0;
}

/* ctx: struct pt_regs *regs, long ret */
SEC("tp_btf/sys_exit")
int clovisor_sys_exit(__u64 *ctx)
{
	struct pt_regs *regs = (struct pt_regs *)ctx[0];
	long ret = (long)ctx[1];
	struct call *pc, c;
	__u64 id;
	__u8 send = 0;

	if (!is_data_syscall(SYSCALL_NR(regs), &send))
		return 0;
	id = bpf_get_current_pid_tgid();
	pc = bpf_map_lookup_elem(&calls, &id);
	if (!pc)
		return 0;
	__builtin_memcpy(&c, pc, sizeof(c));
	bpf_map_delete_elem(&calls, &id);
	if (ret <= 0)
		return 0;
	on_data(&c, (__u64)ret);
	return 0;
}

/* ctx: const struct sock *sk, int oldstate, int newstate */
SEC("tp_btf/inet_sock_set_state")
int clovisor_sock_state(__u64 *ctx)
{
	__u64 sk = ctx[0];
	int oldstate = (int)ctx[1];
	int newstate = (int)ctx[2];
	struct clovisor_sock_conn *conn;
	struct clovisor_sock_flow_end *ev;

	if (newstate != TCP_CLOSE_)
		return 0;
	conn = bpf_map_lookup_elem(&sock_connections, &sk);
	if (!conn)
		return 0;
	ev = bpf_ringbuf_reserve(&sock_events, sizeof(*ev), 0);
	if (ev) {
		ev->kind = CLOVISOR_EVENT_SOCK_FLOW_END;
		ev->pad = 0;
		__builtin_memcpy(&ev->owner, &conn->owner, sizeof(conn->owner));
		ev->srtt_us = BPF_CORE_READ((struct tcp_sock *)sk, srtt_us) >> 3;
		ev->total_retrans = BPF_CORE_READ((struct tcp_sock *)sk, total_retrans);
		ev->end.kind = CLOVISOR_EVENT_FLOW_END;
		/* An orderly close passes through the FIN states. */
		ev->end.reason = (oldstate == TCP_FIN_WAIT1_ || oldstate == TCP_FIN_WAIT2_ ||
				  oldstate == TCP_TIME_WAIT_ || oldstate == TCP_LAST_ACK_ ||
				  oldstate == TCP_CLOSING_)
				     ? CLOVISOR_END_FIN
				     : CLOVISOR_END_RST;
		ev->end.has_last = conn->cur.direction != CLOVISOR_DIR_NONE;
		ev->end.pad[0] = 0;
		ev->end.pad[1] = 0;
		__builtin_memcpy(&ev->end.key, &conn->key, sizeof(conn->key));
		ev->end.flow_id = conn->flow_id;
		ev->end.ts_ns = bpf_ktime_get_boot_ns();
		__builtin_memcpy(&ev->end.last, &conn->cur, sizeof(conn->cur));
		bpf_ringbuf_submit(ev, clovisor_wakeup_flags(&sock_events));
		clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_EVENTS_EMITTED);
	} else {
		clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_RINGBUF_FULL);
	}
	bpf_map_delete_elem(&sock_connections, &sk);
	clovisor_count(&sock_stats, CLOVISOR_SOCK_STAT_CONNS_ENDED);
	return 0;
}
