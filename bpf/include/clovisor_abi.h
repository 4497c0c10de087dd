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
/* Entries of the `covered_ifaces` map: pod veths whose pod the socket point
 * covers (one per traced pod at most). */
#define CLOVISOR_MAX_COVERED_IFACES 16384
/* Entries of the egress-rule maps `egress_ports` and `egress_hosts`. */
#define CLOVISOR_MAX_EGRESS_PORTS 4096
#define CLOVISOR_MAX_EGRESS_HOSTS 16384
/* Entries of the socket point's `monitored_netns` map. */
#define CLOVISOR_MAX_MONITORED_NETNS 4096

/* Key of `monitored_ips`: an address in network order, IPv4 v4-mapped. */
struct clovisor_ip {
	__u8 addr[16];
};

/* First field of every ring buffer record (struct clovisor_event_hdr.kind). */
enum clovisor_event_kind {
	/* struct clovisor_msg_start: a message starts, alone. */
	CLOVISOR_EVENT_MSG_START = 1,
	/* struct clovisor_flow_end: the connection ended. */
	CLOVISOR_EVENT_FLOW_END = 2,
	/* struct clovisor_exchange: a response starts after a request whose
	 * first bytes were held: request and response in one record. */
	CLOVISOR_EVENT_EXCHANGE = 3,
	/* struct clovisor_segment: bytes of one call of a message on a socket
	 * connection captured call by call (CLOVISOR_CAPTURE_EACH_CALL). */
	CLOVISOR_EVENT_SEGMENT = 4,
};

/* How a socket connection's bytes are captured (struct
 * clovisor_sock_conn.capture). */
enum clovisor_capture_mode {
	/* The first bytes of each message (the first call's), with one
	 * EXCHANGE record per request and response: HTTP/1 and the rest. */
	CLOVISOR_CAPTURE_FIRST_BYTES = 0,
	/* Multiplexed or multi-write protocols (HTTP/2 and gRPC, PostgreSQL,
	 * MySQL): each message starts with a MSG_START without bytes and each
	 * call of it, the first included, sends SEGMENTs with the call's bytes
	 * (CLOVISOR_CALL_CHUNKS). Chosen once per connection, from the port's
	 * protocol hint or the first 8 bytes of its first client message (or of
	 * a server greeting) - a fixed comparison, not parsing. */
	CLOVISOR_CAPTURE_EACH_CALL = 1,
};

/* Which program sent an event. */
enum clovisor_point {
	/* tc on a pod veth or a node interface (key.ifindex tells which). */
	CLOVISOR_POINT_TC = 1,
	/* the socket point (key.ifindex is 0, owner is set). */
	CLOVISOR_POINT_SOCKET = 2,
};

/* Bits of struct clovisor_event_hdr.flags. */
enum clovisor_event_flag {
	/* MSG_START: `prev` holds the previous message's final counters.
	 * EXCHANGE: `before` holds the final counters of the message before
	 * the request. FLOW_END: `last` holds the last message's. */
	CLOVISOR_EV_HAS_PREV = 1,
	/* EXCHANGE: the request's held first bytes were lost (their slot was
	 * evicted under pressure); request_len is 0. */
	CLOVISOR_EV_HEAD_LOST = 2,
	/* MSG_START: a UDP datagram, a whole message on its own. The kernel
	 * keeps no state for it: flow_id and msg.index are 0 (user space
	 * numbers UDP flows and their datagrams), msg.bytes is the datagram's
	 * payload length, msg.packets 1, msg.tcp_seq 0; no `prev`. */
	CLOVISOR_EV_DATAGRAM = 4,
	/* Any event of a TCP connection seen at a pod veth whose pod the socket
	 * point covers (`covered_ifaces`), or at a server socket whose client
	 * socket the point traces too (`sock_local_clients`): another view
	 * captures its payload, so this view carries counters and timings only
	 * (snap lengths are 0 by design, not lost). */
	CLOVISOR_EV_COUNTERS_ONLY = 8,
	/* Socket point, MSG_START / EXCHANGE / FLOW_END: `wire` holds what the
	 * pod's veth counted of the connection's latest messages (the veth's
	 * connection is carried: CLOVISOR_CONFIG_CARRY_WIRE). */
	CLOVISOR_EV_HAS_WIRE = 16,
};

/* Direction of a message relative to the roles set by traced_ports. */
enum clovisor_direction {
	CLOVISOR_DIR_NONE = 0,
	CLOVISOR_DIR_CLIENT_TO_SERVER = 1,
	CLOVISOR_DIR_SERVER_TO_CLIENT = 2,
};

/* Value of the traced_ports map; same numbering as ProtocolHint in
 * shared-proto/proto/clovisor/capture/v1/capture.proto. Whether a port is
 * traced at all is the `traced_port_bits` bitmap (one array read per packet
 * or call); the hint is looked up only when a connection is first seen. */
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
	/* Requests whose first bytes could not be held for their response
	 * (held-heads map full): sent alone, one event more. */
	CLOVISOR_STAT_HEAD_NOT_HELD = 11,
	/* Held request heads gone when their response came (evicted from the
	 * held-heads LRU): the request is sent without its bytes. */
	CLOVISOR_STAT_HEAD_LOST = 12,
	CLOVISOR_STAT_COUNT = 13,
};

/* Indexes of the `config` array map (values are __u32). */
enum clovisor_config_index {
	/* Bytes of each message to copy, <= CLOVISOR_MAX_SNAPLEN. */
	CLOVISOR_CONFIG_SNAPLEN = 0,
	/* Entries in `egress_ports`; 0 lets untraced packets skip the egress
	 * lookup (one array read instead of a hash lookup). */
	CLOVISOR_CONFIG_EGRESS_PORTS = 1,
	/* The socket point's monitored-namespace generation: user space adds 1
	 * each time it changes `monitored_netns` (after the change), so a socket
	 * found untraced under an older set is checked again. */
	CLOVISOR_CONFIG_NETNS_GENERATION = 2,
	/* The socket point: 1 when a server socket whose client is a socket
	 * this point traces too (a client and a server pod on one node) sends
	 * timings and counters alone, the client's view carrying the bytes. */
	CLOVISOR_CONFIG_PEER_COVERED = 3,
	/* tc programs: 1 when the socket point shares this object's `connections`
	 * map (as its `tc_connections`) and reads a covered veth's counters from
	 * it into its own records: a new connection at a covered veth is then
	 * *carried* (struct clovisor_conn.carried) and sends no per-message
	 * records of its own, its FLOW_END only. */
	CLOVISOR_CONFIG_CARRY_WIRE = 4,
	CLOVISOR_CONFIG_COUNT = 5,
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
	/* While a request's first bytes are held: the final counters of the
	 * message before it (valid if has_before), sent with the request. */
	struct clovisor_msg before;
	/* Next expected TCP sequence number, by direction - 1. */
	__u32 next_seq[2];
	/* Whether next_seq[i] is valid. */
	__u8 seq_valid[2];
	__u8 protocol; /* enum clovisor_protocol_hint */
	__u8 held;     /* 1: cur is a request whose first bytes are held */
	__u8 has_before;
	/* 1: the pod's socket point captures this connection's payload; this
	 * view sends counters and timings only (CLOVISOR_EV_COUNTERS_ONLY). */
	__u8 counters_only;
	/* 1: counters_only, and the socket point carries them in its records
	 * (CLOVISOR_CONFIG_CARRY_WIRE when the connection was created): this
	 * view sends no MSG_START or EXCHANGE, only its FLOW_END (without
	 * `last`). */
	__u8 carried;
	/* 1: last_request is valid. */
	__u8 has_last_request;
	/* A carried connection whose FIN or RST was seen: its FLOW_END went
	 * out; the entry stays for the socket point's end to read. */
	__u8 ended;
	/* A carried connection whose socket point's end read it before the
	 * veth saw the connection end: the veth's end deletes the entry. */
	__u8 sock_done;
	__u8 pad[6];
	/* A carried connection: the latest request, final once its response
	 * started (then `cur` is the response), for the socket point to read. */
	struct clovisor_msg last_request;
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
	/* Sends and receives that moved data on a TCP socket with a traced
	 * port, by any process of the node. */
	CLOVISOR_SOCK_STAT_TCP_CALLS = 0,
	/* Of those, the calls of processes of monitored network namespaces:
	 * the ones traced. */
	CLOVISOR_SOCK_STAT_CALLS_TRACED = 1,
	/* Records written to the ring buffer. */
	CLOVISOR_SOCK_STAT_EVENTS_EMITTED = 2,
	/* Records lost because the ring buffer was full. */
	CLOVISOR_SOCK_STAT_RINGBUF_FULL = 3,
	/* Socket connection map inserts that failed. */
	CLOVISOR_SOCK_STAT_CONN_UPDATE_FAILED = 4,
	/* Calls whose user buffer is not known (sendfile, splice, io_uring,
	 * sendmmsg/recvmmsg): counted, but no first bytes for a message they
	 * start. */
	CLOVISOR_SOCK_STAT_NO_USER_BUFFER = 5,
	/* Socket connections tracked / ended (socket reached TCP_CLOSE). */
	CLOVISOR_SOCK_STAT_CONNS_CREATED = 6,
	CLOVISOR_SOCK_STAT_CONNS_ENDED = 7,
	/* Snippet copies from the user buffer that failed; the event is still
	 * sent, without payload. */
	CLOVISOR_SOCK_STAT_SNAP_LOAD_FAILED = 8,
	/* As CLOVISOR_STAT_HEAD_NOT_HELD / CLOVISOR_STAT_HEAD_LOST. */
	CLOVISOR_SOCK_STAT_HEAD_NOT_HELD = 9,
	CLOVISOR_SOCK_STAT_HEAD_LOST = 10,
	/* Connections captured call by call (CLOVISOR_CAPTURE_EACH_CALL). */
	CLOVISOR_SOCK_STAT_EACH_CALL_CONNS = 11,
	/* SEGMENT records written / lost because the ring buffer was full
	 * (the collector then sees a gap in the message). */
	CLOVISOR_SOCK_STAT_SEGMENTS_EMITTED = 12,
	CLOVISOR_SOCK_STAT_SEGMENTS_LOST = 13,
	/* Calls of a connection captured call by call that moved more than the
	 * program copies of one call (CLOVISOR_CALL_CHUNKS snaplens, from at
	 * most CLOVISOR_MAX_IOVECS buffers): the bytes between what was copied
	 * and the call's last snaplen bytes are not captured. */
	CLOVISOR_SOCK_STAT_CALL_BYTES_SKIPPED = 14,
	/* Server connections whose client this point traces too, sending
	 * timings and counters alone (CLOVISOR_CONFIG_PEER_COVERED). */
	CLOVISOR_SOCK_STAT_PEER_COVERED_CONNS = 15,
	/* Records of a socket whose pod's veth is carried (CLOVISOR_EV_HAS_WIRE)
	 * that found the veth's connection and copied its counters / that did
	 * not (the veth had not seen it, or had lost it from its LRU map): the
	 * collector then has no veth observation of the exchanges the record
	 * completes. */
	CLOVISOR_SOCK_STAT_WIRE_CARRIED = 16,
	CLOVISOR_SOCK_STAT_WIRE_MISSED = 17,
	CLOVISOR_SOCK_STAT_COUNT = 18,
};

/* Who moved the bytes through a socket; all zero at tc points. */
struct clovisor_owner {
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

/* Value of the socket program's `sock_connections` LRU map (key: sock_id).
 * The counters mean what the tc connection's do; packets count calls. */
struct clovisor_sock_conn {
	/* The connection oriented by role; ifindex is 0. */
	struct clovisor_conn_key key;
	/* Owner of the socket when the connection was first traced. */
	struct clovisor_owner owner;
	__u64 flow_id;
	struct clovisor_msg cur;
	struct clovisor_msg before;
	__u8 protocol; /* enum clovisor_protocol_hint */
	__u8 held;
	__u8 has_before;
	__u8 capture; /* enum clovisor_capture_mode */
	/* 1 once the capture mode is chosen: at the connection's first client
	 * message (a server speaking first - an HTTP/2 server's SETTINGS - is
	 * only checked for a MySQL greeting). */
	__u8 decided;
	/* 1: its client is a socket this point traces too, which carries the
	 * bytes (CLOVISOR_CONFIG_PEER_COVERED): this view sends timings and
	 * counters alone (CLOVISOR_EV_COUNTERS_ONLY). */
	__u8 counters_only;
	__u8 pad[2];
	/* The host-side veth of the socket's pod when the tc programs carry its
	 * connections (`netns_veth`, read when the connection is first traced);
	 * 0 otherwise. */
	__u32 veth_ifindex;
	__u8 pad2[4];
};

/* Value of the `held_heads` LRU map (key: flow id): the first bytes of a
 * request, kept until its response starts so both travel in one
 * EXCHANGE record. Bounded (user space sizes it); a request that finds no
 * room is sent alone (CLOVISOR_STAT_HEAD_NOT_HELD). With the bytes, what user
 * space needs to send the request alone should its connection vanish first
 * (LRU eviction) or the probe stop: its connection, owner and counters as
 * of its first packet. len 0 with msg.direction 0: nothing held. */
struct clovisor_held {
	struct clovisor_conn_key key;
	struct clovisor_owner owner;
	struct clovisor_msg msg;
	__u32 len;
	__u8 protocol;
	__u8 point; /* enum clovisor_point */
	__u8 pad[2];
	__u8 data[CLOVISOR_MAX_SNAPLEN];
};

/* ---- Ring buffer records -------------------------------------------------- */

/* Messages of a carried veth connection a socket record carries at most: the
 * message before the latest request, that request and the current one. */
#define CLOVISOR_WIRE_MSGS 3

/* What the socket's pod veth counted of the connection's latest messages, as
 * the veth's tc program keeps them (struct clovisor_conn of `tc_connections`
 * at key.ifindex = ifindex), read when the socket record is written; user
 * space matches each to the socket's message by direction and sequence
 * number. Valid with CLOVISOR_EV_HAS_WIRE; `count` may be 0 (the veth had not
 * seen the connection, or did not carry it). */
struct clovisor_wire {
	__u32 ifindex;
	__u8 count;
	__u8 pad[3];
	struct clovisor_msg msgs[CLOVISOR_WIRE_MSGS];
};

/* Start of every record. */
struct clovisor_event_hdr {
	__u32 kind;    /* enum clovisor_event_kind */
	__u8 point;    /* enum clovisor_point */
	__u8 protocol; /* enum clovisor_protocol_hint */
	__u8 flags;    /* enum clovisor_event_flag bits */
	__u8 reason;   /* FLOW_END: enum clovisor_flow_end_reason */
	__u64 flow_id; /* unique for the life of the loaded object */
	struct clovisor_conn_key key;
	struct clovisor_owner owner;
};

/* MSG_START: the first packet (or call) of a message that travels alone,
 * with its first bytes and the final counters of the connection's previous
 * message. Only the header and snap_len payload bytes are sent. */
struct clovisor_msg_start {
	struct clovisor_event_hdr hdr; /* kind CLOVISOR_EVENT_MSG_START */
	/* The new message, counters as of its first packet. */
	struct clovisor_msg msg;
	/* The previous message, final; valid with CLOVISOR_EV_HAS_PREV. */
	struct clovisor_msg prev;
	/* Valid with CLOVISOR_EV_HAS_WIRE. */
	struct clovisor_wire wire;
	/* Valid bytes in payload[]. */
	__u32 snap_len;
	__u32 pad;
	__u8 payload[CLOVISOR_MAX_SNAPLEN];
};

/* EXCHANGE: a response starts after a request whose first bytes were held:
 * one record for the pair. `before` (final counters of the message before
 * the request, with CLOVISOR_EV_HAS_PREV), `request` (final) and `response`
 * (as of its first packet); payload[] holds request_len bytes of the request
 * followed by response_len bytes of the response. Only the header and those
 * bytes are sent. */
struct clovisor_exchange {
	struct clovisor_event_hdr hdr; /* kind CLOVISOR_EVENT_EXCHANGE */
	struct clovisor_msg before;
	struct clovisor_msg request;
	struct clovisor_msg response;
	/* Valid with CLOVISOR_EV_HAS_WIRE. */
	struct clovisor_wire wire;
	__u32 request_len;
	__u32 response_len;
	__u8 payload[2 * CLOVISOR_MAX_SNAPLEN];
};

/* What the socket program copies of one call of a connection captured call by
 * call: its bytes a snaplen at a time (one SEGMENT each), at most
 * CLOVISOR_CALL_CHUNKS of them, from at most CLOVISOR_MAX_IOVECS buffers of a
 * vectored call (readv/writev/sendmsg/recvmsg); then, when the rest lies in
 * the buffer reached, the call's last snaplen bytes. At the default snaplen
 * that is the first 16 KiB of a call - a TLS record's worth, what a sidecar or
 * a TLS tunnel writes at once - and its end. */
#define CLOVISOR_CALL_CHUNKS 16
#define CLOVISOR_MAX_IOVECS  8

/* SEGMENT: `len` bytes at `offset` of message `index` of a connection
 * captured call by call. Only the header and len payload bytes are sent. */
struct clovisor_segment {
	struct clovisor_event_hdr hdr; /* kind CLOVISOR_EVENT_SEGMENT */
	__u64 offset;
	__u32 index;
	__u32 len;
	__u8 payload[CLOVISOR_MAX_SNAPLEN];
};

/* FLOW_END: FIN or RST seen at tc, or the socket reached TCP_CLOSE; the
 * connection was deleted from the map. */
struct clovisor_flow_end {
	struct clovisor_event_hdr hdr; /* kind CLOVISOR_EVENT_FLOW_END */
	/* bpf_ktime_get_boot_ns() of the FIN/RST or the close. */
	__u64 ts_ns;
	/* The last message, final; valid with CLOVISOR_EV_HAS_PREV. */
	struct clovisor_msg last;
	/* Socket point: the kernel's view of the connection at close (struct
	 * tcp_sock): smoothed RTT in microseconds (0 if never measured) and
	 * segments retransmitted over its life. 0 at tc. */
	__u32 srtt_us;
	__u32 total_retrans;
	/* Valid with CLOVISOR_EV_HAS_WIRE. */
	struct clovisor_wire wire;
};

#endif /* CLOVISOR_ABI_H */
