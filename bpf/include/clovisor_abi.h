/* SPDX-License-Identifier: (GPL-2.0-only OR Apache-2.0) */
/*
 * ABI shared by the BPF programs in bpf/ and the probe's user space.
 *
 * This header is #included by the BPF C and fed to bindgen by probe/build.rs,
 * so Rust never mirrors these structs by hand. Rules that keep both sides in
 * step:
 *   - fixed-width types only, every padding byte explicit (the Rust side
 *     derives zerocopy's IntoBytes, which refuses implicit padding);
 *   - all integers in host byte order (the BPF program converts network order
 *     once, while parsing);
 *   - IP addresses are 16 bytes in network order, IPv4 stored v4-mapped
 *     (::ffff:a.b.c.d) so one key layout serves both families.
 */
#ifndef CLOVISOR_ABI_H
#define CLOVISOR_ABI_H

#include <linux/types.h>

/* Hard upper bound of the runtime snaplen. A power of two so the BPF side can
 * bound copy lengths with a mask the verifier understands. */
#define CLOVISOR_MAX_SNAPLEN 2048
/* Snaplen used when user space has not configured one. */
#define CLOVISOR_DEFAULT_SNAPLEN 1024
/* IPv6 extension headers skipped before giving up on a packet. */
#define CLOVISOR_MAX_IPV6_EXT_HDRS 6

/* Entries of the `traced_ports` map (each capture object has one). */
#define CLOVISOR_MAX_TRACED_PORTS 1024
/* Entries of the node-interface point's `monitored_ips` map. */
#define CLOVISOR_MAX_MONITORED_IPS 16384
/* Entries of the egress-rule maps `egress_ports` and `egress_hosts`. */
#define CLOVISOR_MAX_EGRESS_PORTS 4096
#define CLOVISOR_MAX_EGRESS_HOSTS 16384
/* Entries of the socket point's `monitored_netns` map. */
#define CLOVISOR_MAX_MONITORED_NETNS 4096

/* Key of `monitored_ips`: an address in network order, IPv4 v4-mapped. */
struct clovisor_ip {
	__u8 addr[16];
};

/* First field of every ring buffer record. */
enum clovisor_event_kind {
	CLOVISOR_EVENT_MSG_START = 1,
	CLOVISOR_EVENT_FLOW_END = 2,
	/* From bpf/socket_capture.bpf.c: struct clovisor_sock_msg_start. */
	CLOVISOR_EVENT_SOCK_MSG_START = 3,
	/* From bpf/socket_capture.bpf.c: struct clovisor_sock_flow_end. */
	CLOVISOR_EVENT_SOCK_FLOW_END = 4,
};

/* Direction of a message relative to the roles set by traced_ports. */
enum clovisor_direction {
	CLOVISOR_DIR_NONE = 0,
	CLOVISOR_DIR_CLIENT_TO_SERVER = 1,
	CLOVISOR_DIR_SERVER_TO_CLIENT = 2,
};

/* Value of the traced_ports map; same numbering as ProtocolHint in
 * shared-proto/proto/clovisor/capture/v1/capture.proto. */
enum clovisor_protocol_hint {
	CLOVISOR_PROTO_UNSPECIFIED = 0,
	CLOVISOR_PROTO_HTTP = 1,
	CLOVISOR_PROTO_HTTP2 = 2,
	CLOVISOR_PROTO_GRPC = 3,
	CLOVISOR_PROTO_TCP = 4,
	CLOVISOR_PROTO_REDIS = 5,
};

/* Why a flow ended; same numbering as FlowEndReason in capture.proto. */
enum clovisor_flow_end_reason {
	CLOVISOR_END_FIN = 1,
	CLOVISOR_END_RST = 2,
};

/* Address family of a connection key. */
enum clovisor_family {
	CLOVISOR_FAMILY_IPV4 = 4,
	CLOVISOR_FAMILY_IPV6 = 6,
};

/* Indexes of the per-CPU `stats` array map. */
enum clovisor_stat {
	/* Every packet the programs ran on. */
	CLOVISOR_STAT_PACKETS_SEEN = 0,
	/* Packets of a traced port (either side). */
	CLOVISOR_STAT_PACKETS_TRACED = 1,
	/* Records written to the ring buffer. */
	CLOVISOR_STAT_EVENTS_EMITTED = 2,
	/* Records lost because the ring buffer was full. */
	CLOVISOR_STAT_RINGBUF_FULL = 3,
	/* Connection map inserts that failed. */
	CLOVISOR_STAT_CONN_UPDATE_FAILED = 4,
	/* IP/TCP headers that could not be read or made no sense. */
	CLOVISOR_STAT_PARSE_FAILED = 5,
	/* Connections tracked (first payload of a connection). */
	CLOVISOR_STAT_CONNS_CREATED = 6,
	/* Connections ended by FIN or RST. */
	CLOVISOR_STAT_CONNS_ENDED = 7,
	/* Packets carrying only bytes already seen (TCP retransmissions). */
	CLOVISOR_STAT_RETRANSMIT_PACKETS = 8,
	/* Snippet copies (bpf_skb_load_bytes) that failed; the event is still
	 * sent, with fewer captured bytes. */
	CLOVISOR_STAT_SNAP_LOAD_FAILED = 9,
	/* IPv6 packets whose extension header chain was too long, or IP
	 * fragments after the first: not traced. */
	CLOVISOR_STAT_UNPARSED_IP = 10,
	CLOVISOR_STAT_COUNT = 11,
};

/* Indexes of the `config` array map (values are __u32). */
enum clovisor_config_index {
	/* Bytes of each message to copy, <= CLOVISOR_MAX_SNAPLEN. */
	CLOVISOR_CONFIG_SNAPLEN = 0,
	/* Entries in `egress_ports`; 0 lets untraced packets skip the egress
	 * lookup (one array read instead of a hash lookup). */
	CLOVISOR_CONFIG_EGRESS_PORTS = 1,
	CLOVISOR_CONFIG_COUNT = 2,
};

/* Egress rules (Redis `clovisor_egress_match`): a traced pod's outbound calls
 * to ip:port are traced at its veth, the pod being the client. Two maps so a
 * packet of a port without rules costs one lookup:
 *   egress_ports  (ifindex, port)     -> any_ip + protocol
 *   egress_hosts  (ifindex, ip, port) -> protocol, for rules naming an address
 * User space keeps both in step with the rules and the traced pods. */
struct clovisor_egress_port_key {
	__u32 ifindex; /* the pod's host-side veth */
	__u16 port;    /* destination (server) port */
	__u8 pad[2];
};

struct clovisor_egress_port {
	__u8 any_ip;   /* 1: every destination address on this port matches */
	__u8 protocol; /* enum clovisor_protocol_hint */
	__u8 pad[2];
};

struct clovisor_egress_host_key {
	__u8 ip[16];   /* destination, network order, IPv4 v4-mapped */
	__u32 ifindex; /* the pod's host-side veth */
	__u16 port;    /* destination (server) port */
	__u8 pad[2];
};

/* Key of the `connections` LRU map: one TCP connection seen at one interface,
 * oriented by role (client/server), not by packet direction. */
struct clovisor_conn_key {
	__u8 client_ip[16];
	__u8 server_ip[16];
	__u32 ifindex;
	__u16 client_port;
	__u16 server_port;
	__u8 family; /* enum clovisor_family */
	__u8 pad[7];
};

/* Counters of one message: all payload bytes one side sent before the other
 * side sent any. */
struct clovisor_msg {
	/* bpf_ktime_get_boot_ns() of the first and the latest packet. */
	__u64 start_ns;
	__u64 last_ns;
	/* Payload bytes, retransmitted bytes not counted. */
	__u64 bytes;
	/* Packets, GSO segments counted one by one. */
	__u32 packets;
	/* Retransmissions: segments of packets that carried only bytes already
	 * seen, plus one per packet that carried some. */
	__u32 retransmits;
	/* TCP sequence number of the first payload byte. */
	__u32 tcp_seq;
	/* 0-based position of the message in its connection. */
	__u32 index;
	__u8 direction; /* enum clovisor_direction */
	__u8 to_pod;	/* 1 when the bytes travelled towards the pod */
	__u8 pad[6];
};

/* Value of the `connections` LRU map. */
struct clovisor_conn {
	/* Unique for the life of the loaded programs. */
	__u64 flow_id;
	/* The message in progress. */
	struct clovisor_msg cur;
	/* Next expected TCP sequence number, by direction - 1. */
	__u32 next_seq[2];
	/* Whether next_seq[i] is valid. */
	__u8 seq_valid[2];
	__u8 protocol; /* enum clovisor_protocol_hint */
	__u8 pad[5];
};

/* MSG_START: the first packet of a message, with the first bytes of its
 * payload and the final counters of the connection's previous message. Only the
 * first header_size + snap_len bytes are sent through the ring buffer. */
struct clovisor_msg_start {
	__u32 kind; /* CLOVISOR_EVENT_MSG_START */
	/* Valid bytes in payload[]. */
	__u32 snap_len;
	struct clovisor_conn_key key;
	__u64 flow_id;
	/* The new message, counters as of its first packet. */
	struct clovisor_msg msg;
	/* The previous message of the connection, final; valid if has_prev. */
	struct clovisor_msg prev;
	__u8 protocol; /* enum clovisor_protocol_hint */
	__u8 has_prev;
	__u8 pad[6];
	__u8 payload[CLOVISOR_MAX_SNAPLEN];
};

/* FLOW_END: FIN or RST seen; the connection was deleted from the map. */
struct clovisor_flow_end {
	__u32 kind;  /* CLOVISOR_EVENT_FLOW_END */
	__u8 reason; /* enum clovisor_flow_end_reason */
	__u8 has_last;
	__u8 pad[2];
	struct clovisor_conn_key key;
	__u64 flow_id;
	/* bpf_ktime_get_boot_ns() of the FIN/RST. */
	__u64 ts_ns;
	/* The last message, final; valid if has_last. */
	struct clovisor_msg last;
};

/* ---- Socket observation point (bpf/socket_capture.bpf.c) ---------------- */

/* Flow ids of socket connections have this bit set, so they never collide with
 * the tc programs' ids of the same probe. */
#define CLOVISOR_SOCK_FLOW_ID_BIT (1ULL << 63)
#define CLOVISOR_COMM_LEN	  16

/* Which end of the connection a traced socket is. */
enum clovisor_side {
	CLOVISOR_SIDE_CLIENT = 1, /* the remote port is traced */
	CLOVISOR_SIDE_SERVER = 2, /* the local port is traced */
};

/* Indexes of the socket program's per-CPU `sock_stats` array map. */
enum clovisor_sock_stat {
	/* Data syscalls (read, write, send*, recv*, readv, writev) on a TCP
	 * socket, made by a process of a monitored network namespace. */
	CLOVISOR_SOCK_STAT_TCP_SYSCALLS = 0,
	/* Of those, on a TCP socket with a traced port, with data moved. */
	CLOVISOR_SOCK_STAT_SYSCALLS_TRACED = 1,
	/* Records written to the ring buffer. */
	CLOVISOR_SOCK_STAT_EVENTS_EMITTED = 2,
	/* Records lost because the ring buffer was full. */
	CLOVISOR_SOCK_STAT_RINGBUF_FULL = 3,
	/* Socket connection map inserts that failed. */
	CLOVISOR_SOCK_STAT_CONN_UPDATE_FAILED = 4,
	/* In-flight syscall map inserts that failed (the call is not traced). */
	CLOVISOR_SOCK_STAT_CALL_UPDATE_FAILED = 5,
	/* Socket connections tracked / ended (socket reached TCP_CLOSE). */
	CLOVISOR_SOCK_STAT_CONNS_CREATED = 6,
	CLOVISOR_SOCK_STAT_CONNS_ENDED = 7,
	/* Snippet copies from the user buffer that failed; the event is still
	 * sent, without payload. */
	CLOVISOR_SOCK_STAT_SNAP_LOAD_FAILED = 8,
	CLOVISOR_SOCK_STAT_COUNT = 9,
};

/* Who moved the bytes through a socket. */
struct clovisor_sock_owner {
	/* Kernel address of the struct sock: the key of the socket connection
	 * map, used by the probe for idle-flush lookups; never sent on. */
	__u64 sock_id;
	/* Thread group id (the process id users see) and thread id. */
	__u32 pid;
	__u32 tid;
	/* Inode of the network namespace of the process. */
	__u32 netns;
	__u8 side; /* enum clovisor_side */
	__u8 pad[3];
	__u8 comm[CLOVISOR_COMM_LEN];
};

/* Value of the socket program's `sock_connections` LRU map (key: sock_id). */
struct clovisor_sock_conn {
	/* The connection oriented by role; ifindex is 0. */
	struct clovisor_conn_key key;
	/* Owner of the socket when the connection was first traced. */
	struct clovisor_sock_owner owner;
	/* Same layout and meaning as the tc connection's counters. */
	__u64 flow_id;
	struct clovisor_msg cur;
	__u8 protocol; /* enum clovisor_protocol_hint */
	__u8 pad[7];
};

/* SOCK_MSG_START: a message started at a socket. `start` is laid out as the tc
 * MSG_START (key.ifindex 0, msg.packets counts syscalls, msg.to_pod is 1 when
 * the process received the bytes); only the header and snap_len payload
 * bytes are sent. */
struct clovisor_sock_msg_start {
	__u32 kind; /* CLOVISOR_EVENT_SOCK_MSG_START */
	__u32 pad;
	struct clovisor_sock_owner owner;
	struct clovisor_msg_start start;
};

/* SOCK_FLOW_END: the socket reached TCP_CLOSE; the connection was deleted
 * from the map. */
struct clovisor_sock_flow_end {
	__u32 kind; /* CLOVISOR_EVENT_SOCK_FLOW_END */
	__u32 pad;
	struct clovisor_sock_owner owner;
	/* The kernel's view of the connection at close (struct tcp_sock):
	 * smoothed RTT in microseconds (0 if never measured) and segments
	 * retransmitted over its life. */
	__u32 srtt_us;
	__u32 total_retrans;
	struct clovisor_flow_end end;
};

#endif /* CLOVISOR_ABI_H */
