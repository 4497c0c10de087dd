// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
/*
 * tc classifiers for a pod's host-side veth and for the node's uplink
 * interfaces: detect message boundaries of traced TCP connections and send the
 * first bytes of each message, plus the final counters of the previous one,
 * through a ring buffer. On node interfaces only packets to or from a
 * monitored pod's address are considered (map `monitored_ips`).
 *
 * Never drops or alters traffic: every path returns TC_ACT_UNSPEC.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "clovisor_abi.h"
#include "clovisor_common.bpf.h"

char LICENSE[] SEC("license") = "Dual BSD/GPL";

/* Egress rules, see clovisor_abi.h; maintained by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_EGRESS_PORTS);
	__type(key, struct clovisor_egress_port_key);
	__type(value, struct clovisor_egress_port);
} egress_ports SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_EGRESS_HOSTS);
	__type(key, struct clovisor_egress_host_key);
	__type(value, __u8);
} egress_hosts SEC(".maps");
/* Node-interface point: addresses of monitored pods (16 bytes, IPv4
 * v4-mapped, network order) -> 1. Filled by user space as pods come and go. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_MONITORED_IPS);
	__type(key, struct clovisor_ip);
	__type(value, __u8);
} monitored_ips SEC(".maps");

/* Pod veths (ifindex -> 1) whose pod's processes the socket point traces:
 * the socket point captures their connections' payload, so these veths keep
 * counters and timings only. Maintained by user space; looked up once per new
 * connection. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, CLOVISOR_MAX_COVERED_IFACES);
	__type(key, __u32);
	__type(value, __u8);
} covered_ifaces SEC(".maps");

/* Bounded by user space (max_connections); LRU so a flood of connections
 * evicts old ones instead of failing inserts. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct clovisor_conn_key);
	__type(value, struct clovisor_conn);
} connections SEC(".maps");

/* Size set by user space. */
struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, CLOVISOR_STAT_COUNT);
	__type(key, __u32);
	__type(value, __u64);
} stats SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, CLOVISOR_CONFIG_COUNT);
	__type(key, __u32);
	__type(value, __u32);
} config SEC(".maps");

/* Records too large for the 512-byte BPF stack are built here, then copied to
 * the ring buffer with only as many payload bytes as were captured. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clovisor_msg_start);
} scratch_msg SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct clovisor_exchange);
} scratch_exchange SEC(".maps");

/* Per-CPU counter behind flow ids (clovisor_new_flow_id). */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} flow_seq SEC(".maps");

#define ETH_P_8021Q_  0x8100
#define ETH_P_8021AD_ 0x88A8
#define IP_MF_	      0x2000
#define IP_OFFMASK_   0x1fff

/* Where the parser found things. */
struct pkt {
	__u8 src_ip[16];
	__u8 dst_ip[16];
	__u16 sport;
	__u16 dport;
	__u32 seq;
	__u32 payload_off;
	__u32 payload_len;
	__u8 family;
	__u8 flags; /* TCP flags byte (FIN=0x01, SYN=0x02, RST=0x04) */
	__u8 l4;    /* IPPROTO_TCP or IPPROTO_UDP */
};

#define TCPF_FIN_ 0x01
#define TCPF_RST_ 0x04

/* TCP header fields into p; the payload starts right after the header. */
static __always_inline int tcp_fields(const struct tcphdr *tcp, struct pkt *p, __u32 off,
				      __u32 ip_end, __u32 skb_len)
{
	__u32 doff = (__u32)tcp->doff * 4;

	if (doff < sizeof(*tcp))
		return -1;
	p->sport = bpf_ntohs(tcp->source);
	p->dport = bpf_ntohs(tcp->dest);
	p->seq = bpf_ntohl(tcp->seq);
	p->l4 = IPPROTO_TCP;
	/* Byte 13 of the TCP header holds the flags. */
	p->flags = ((const __u8 *)tcp)[13];
	off += doff;
	if (ip_end > skb_len)
		ip_end = skb_len;
	p->payload_off = off;
	p->payload_len = ip_end > off ? ip_end - off : 0;
	return 0;
}

/* UDP header fields into p; the payload is the datagram's, as far as the
 * UDP length, the IP datagram and the skb all reach. */
static __always_inline int udp_fields(const struct udphdr *udp, struct pkt *p, __u32 off,
				      __u32 ip_end, __u32 skb_len)
{
	__u32 end = off + bpf_ntohs(udp->len);

	p->sport = bpf_ntohs(udp->source);
	p->dport = bpf_ntohs(udp->dest);
	p->seq = 0;
	p->flags = 0;
	p->l4 = IPPROTO_UDP;
	off += sizeof(*udp);
	if (end > ip_end)
		end = ip_end;
	if (end > skb_len)
		end = skb_len;
	p->payload_off = off;
	p->payload_len = end > off ? end - off : 0;
	return 0;
}

/* The common case read straight from the packet, without helper calls: no VLAN
 * tag, IPv4 or IPv6 without extension headers, TCP, headers in the linear
 * part of the skb. Returns as parse() does, or 2 when the packet needs the
 * general parser. */
static __always_inline int parse_direct(struct __sk_buff *skb, struct pkt *p)
{
	void *data = (void *)(long)skb->data;
	void *end = (void *)(long)skb->data_end;
	__u16 proto = bpf_ntohs(skb->protocol);

	if (proto == ETH_P_IP) {
		struct iphdr *ip = data + ETH_HLEN;
		struct tcphdr *tcp;
		__u32 ihl, tot;

		if ((void *)(ip + 1) > end)
			return 2;
		if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
			return 1;
		if (bpf_ntohs(ip->frag_off) & IP_OFFMASK_)
			return 2; /* counted by the general parser */
		ihl = (__u32)ip->ihl * 4;
		if (ihl < sizeof(*ip))
			return -1;
		/* ihl is at most 60: the verifier can bound the TCP header. */
		tcp = (void *)ip + (ihl & 0x3c);
		if ((void *)(tcp + 1) > end)
			return 2;
		clovisor_v4_mapped(p->src_ip, ip->saddr);
		clovisor_v4_mapped(p->dst_ip, ip->daddr);
		p->family = CLOVISOR_FAMILY_IPV4;
		tot = bpf_ntohs(ip->tot_len);
		if (ip->protocol == IPPROTO_UDP)
			return udp_fields((const struct udphdr *)tcp, p, ETH_HLEN + ihl,
					  ETH_HLEN + tot, skb->len);
		/* tot_len is 0 for BIG TCP super packets: then skb->len rules. */
		return tcp_fields(tcp, p, ETH_HLEN + ihl, tot ? ETH_HLEN + tot : skb->len,
				  skb->len);
	}
	if (proto == ETH_P_IPV6) {
		struct ipv6hdr *ip6 = data + ETH_HLEN;
		struct tcphdr *tcp = (void *)(ip6 + 1);
		__u32 plen;

		if ((void *)(tcp + 1) > end)
			return 2;
		/* Extension headers, or neither TCP nor UDP: the general parser. */
		if (ip6->nexthdr != IPPROTO_TCP && ip6->nexthdr != IPPROTO_UDP)
			return 2;
		__builtin_memcpy(p->src_ip, &ip6->saddr, 16);
		__builtin_memcpy(p->dst_ip, &ip6->daddr, 16);
		p->family = CLOVISOR_FAMILY_IPV6;
		plen = bpf_ntohs(ip6->payload_len);
		if (ip6->nexthdr == IPPROTO_UDP)
			return udp_fields((const struct udphdr *)tcp, p, ETH_HLEN + sizeof(*ip6),
					  ETH_HLEN + sizeof(*ip6) + plen, skb->len);
		return tcp_fields(tcp, p, ETH_HLEN + sizeof(*ip6),
				  plen ? ETH_HLEN + sizeof(*ip6) + plen : skb->len, skb->len);
	}
	return 2;
}

/* Returns 0 when p holds a TCP or UDP packet, 1 when the packet is not for
 * us (neither, or a later fragment), -1 on a parse failure. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off = ETH_HLEN;
	__u16 proto = bpf_ntohs(skb->protocol);
	__u32 ip_end; /* end of the IP datagram per its header */
	__u8 l4;

	/* A VLAN tag the NIC did not strip (tc runs before untagging on
	 * veths): one level is enough for pod veths. */
	if (proto == ETH_P_8021Q_ || proto == ETH_P_8021AD_) {
		__be16 inner;

		if (bpf_skb_load_bytes(skb, off + 2, &inner, sizeof(inner)))
			return -1;
		proto = bpf_ntohs(inner);
		off += 4;
	}

	if (proto == ETH_P_IP) {
		struct iphdr ip;
		__u32 ihl;

		if (bpf_skb_load_bytes(skb, off, &ip, sizeof(ip)))
			return -1;
		ihl = (__u32)ip.ihl * 4;
		if (ihl < sizeof(ip))
			return -1;
		if (ip.protocol != IPPROTO_TCP && ip.protocol != IPPROTO_UDP)
			return 1;
		/* Only the first fragment has the TCP or UDP header. */
		if (bpf_ntohs(ip.frag_off) & IP_OFFMASK_) {
			clovisor_count(&stats, CLOVISOR_STAT_UNPARSED_IP);
			return 1;
		}
		clovisor_v4_mapped(p->src_ip, ip.saddr);
		clovisor_v4_mapped(p->dst_ip, ip.daddr);
		p->family = CLOVISOR_FAMILY_IPV4;
		/* tot_len is 0 for BIG TCP super packets: then skb->len rules. */
		ip_end = bpf_ntohs(ip.tot_len) ? off + bpf_ntohs(ip.tot_len) : skb->len;
		off += ihl;
		l4 = ip.protocol;
	} else if (proto == ETH_P_IPV6) {
		struct ipv6hdr ip6;
		__u8 next;
		int i;

		if (bpf_skb_load_bytes(skb, off, &ip6, sizeof(ip6)))
			return -1;
		__builtin_memcpy(p->src_ip, &ip6.saddr, 16);
		__builtin_memcpy(p->dst_ip, &ip6.daddr, 16);
		p->family = CLOVISOR_FAMILY_IPV6;
		ip_end = bpf_ntohs(ip6.payload_len) ? off + sizeof(ip6) + bpf_ntohs(ip6.payload_len)
						    : skb->len;
		next = ip6.nexthdr;
		off += sizeof(ip6);
		for (i = 0; i < CLOVISOR_MAX_IPV6_EXT_HDRS; i++) {
			__u8 ext[2];

			if (next != IPPROTO_HOPOPTS && next != IPPROTO_ROUTING &&
			    next != IPPROTO_DSTOPTS && next != IPPROTO_FRAGMENT &&
			    next != IPPROTO_AH)
				break;
			if (bpf_skb_load_bytes(skb, off, ext, sizeof(ext)))
				return -1;
			if (next == IPPROTO_FRAGMENT) {
				__be16 frag;

				if (bpf_skb_load_bytes(skb, off + 2, &frag, sizeof(frag)))
					return -1;
				/* Offset bits: not the first fragment. */
				if (bpf_ntohs(frag) & 0xfff8) {
					clovisor_count(&stats, CLOVISOR_STAT_UNPARSED_IP);
					return 1;
				}
				off += 8;
			} else if (next == IPPROTO_AH) {
				off += ((__u32)ext[1] + 2) * 4;
			} else {
				off += ((__u32)ext[1] + 1) * 8;
			}
			next = ext[0];
		}
		if (next != IPPROTO_TCP && next != IPPROTO_UDP) {
			if (next == IPPROTO_HOPOPTS || next == IPPROTO_ROUTING ||
			    next == IPPROTO_DSTOPTS || next == IPPROTO_FRAGMENT ||
			    next == IPPROTO_AH)
				clovisor_count(&stats, CLOVISOR_STAT_UNPARSED_IP);
			return 1;
		}
		l4 = next;
	} else {
		return 1;
	}
	if (l4 == IPPROTO_UDP) {
		struct udphdr udp;

		if (bpf_skb_load_bytes(skb, off, &udp, sizeof(udp)))
			return -1;
		return udp_fields(&udp, p, off, ip_end, skb->len);
	}
	if (l4 != IPPROTO_TCP)
		return 1;

	{
		struct tcphdr tcp;

		if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)))
			return -1;
		return tcp_fields(&tcp, p, off, ip_end, skb->len);
	}
}

/* ---- Egress rules (clovisor_egress_match) -------------------------------
 * Whether the packet belongs to an outbound call of the pod behind ifindex
 * that an egress rule selects. The pod is the client: packets from the pod
 * (to_pod == 0) go to the server, packets towards it come from the server.
 * On a match sets *dir and *protocol and returns 1. */
static __always_inline int egress_match(const struct pkt *p, __u32 ifindex, __u8 to_pod, __u8 *dir,
					__u8 *protocol)
{
	__u32 idx = CLOVISOR_CONFIG_EGRESS_PORTS;
	__u32 *rules = bpf_map_lookup_elem(&config, &idx);
	struct clovisor_egress_port_key pk;
	struct clovisor_egress_host_key hk;
	struct clovisor_egress_port *port;
	__u8 *hint;

	if (!rules || *rules == 0)
		return 0;
	__builtin_memset(&pk, 0, sizeof(pk));
	pk.ifindex = ifindex;
	pk.port = to_pod ? p->sport : p->dport;
	port = bpf_map_lookup_elem(&egress_ports, &pk);
	if (!port)
		return 0;
	if (port->any_ip) {
		*protocol = port->protocol;
	} else {
		__builtin_memset(&hk, 0, sizeof(hk));
		__builtin_memcpy(hk.ip, to_pod ? p->src_ip : p->dst_ip, 16);
		hk.ifindex = ifindex;
		hk.port = pk.port;
		hint = bpf_map_lookup_elem(&egress_hosts, &hk);
		if (!hint)
			return 0;
		*protocol = *hint;
	}
	*dir = to_pod ? CLOVISOR_DIR_SERVER_TO_CLIENT : CLOVISOR_DIR_CLIENT_TO_SERVER;
	return 1;
}
/* ---- end of egress rules ------------------------------------------------ */

/* Sequence-space comparison (RFC 1982 style). */
static __always_inline int seq_before(__u32 a, __u32 b)
{
	return (__s32)(a - b) < 0;
}

/* Moves *next (the highest sequence number seen in one direction) up to end,
 * atomically: packets of one flow reach this hook on several CPUs at once.
 * Returns how far it moved (0 when end is not beyond it) and the value it
 * moved from in *prev. */
static __always_inline __u32 advance_seq(__u32 *next, __u32 end, __u32 *prev)
{
	__u32 cur = *(volatile __u32 *)next;

	for (int i = 0; i < 4; i++) {
		__u32 seen;

		*prev = cur;
		if (!seq_before(cur, end))
			return 0;
		seen = __sync_val_compare_and_swap(next, cur, end);
		if (seen == cur)
			return end - cur;
		cur = seen;
	}
	/* Other CPUs moved it four times while this one tried: not seen with
	 * the few CPUs one flow's packets can reach at once. Counting without
	 * moving it could count bytes twice, so this packet adds nothing. */
	*prev = cur;
	return 0;
}

/* CLOVISOR_CONFIG_CARRY_WIRE: the socket point reads covered veths' counters. */
static __always_inline int carry_wire(void)
{
	__u32 idx = CLOVISOR_CONFIG_CARRY_WIRE;
	__u32 *cfg = bpf_map_lookup_elem(&config, &idx);

	return cfg && *cfg;
}

static __always_inline __u32 snaplen(void)
{
	__u32 zero = 0;
	__u32 *cfg = bpf_map_lookup_elem(&config, &zero);

	return cfg ? *cfg : CLOVISOR_DEFAULT_SNAPLEN;
}

/* How many of the packet's payload bytes a message's snippet takes: none for
 * a connection whose payload the socket point captures. */
static __always_inline __u32 snap_of(const struct pkt *p, const struct clovisor_conn *conn)
{
	__u32 n = p->payload_len, max;

	if (conn && conn->counters_only)
		return 0;
	max = snaplen();

	return clovisor_bound_snap(n < max ? n : max);
}

static __always_inline void fill_hdr(struct clovisor_event_hdr *h, __u32 kind,
				     const struct clovisor_conn_key *key,
				     const struct clovisor_conn *conn, __u8 flags)
{
	h->kind = kind;
	h->point = CLOVISOR_POINT_TC;
	h->protocol = conn->protocol;
	h->flags = conn->counters_only ? flags | CLOVISOR_EV_COUNTERS_ONLY : flags;
	h->reason = 0;
	h->flow_id = conn->flow_id;
	__builtin_memcpy(&h->key, key, sizeof(*key));
	__builtin_memset(&h->owner, 0, sizeof(h->owner));
}

static __always_inline void emitted(long err)
{
	clovisor_count(&stats, err ? CLOVISOR_STAT_RINGBUF_FULL : CLOVISOR_STAT_EVENTS_EMITTED);
}

/* Message `msg` starts and travels alone, with the final counters of the one
 * before (prev) and its first bytes: n bytes of the packet at p->payload_off
 * (skb) or of `held`. */
static __always_inline void emit_msg_start(struct __sk_buff *skb, const struct pkt *p,
					   const struct clovisor_conn_key *key,
					   const struct clovisor_conn *conn,
					   const struct clovisor_msg *msg,
					   const struct clovisor_msg *prev, __u8 has_prev,
					   const struct clovisor_held *held, int from_skb)
{
	__u32 zero = 0;
	struct clovisor_msg_start *ev = bpf_map_lookup_elem(&scratch_msg, &zero);
	__u32 n;

	if (!ev)
		return;
	fill_hdr(&ev->hdr, CLOVISOR_EVENT_MSG_START, key, conn,
		 has_prev ? CLOVISOR_EV_HAS_PREV : 0);
	__builtin_memcpy(&ev->msg, msg, sizeof(*msg));
	if (has_prev)
		__builtin_memcpy(&ev->prev, prev, sizeof(*prev));
	else
		__builtin_memset(&ev->prev, 0, sizeof(ev->prev));
	ev->pad = 0;
	if (from_skb) {
		n = snap_of(p, conn);
		if (n > 0 && bpf_skb_load_bytes(skb, p->payload_off, ev->payload, n)) {
			clovisor_count(&stats, CLOVISOR_STAT_SNAP_LOAD_FAILED);
			n = 0;
		}
	} else if (held) {
		n = clovisor_bound_snap(held->len);
		if (n > 0 && bpf_probe_read_kernel(ev->payload, n, held->data))
			n = 0;
	} else {
		n = 0;
	}
	ev->snap_len = n;
	emitted(bpf_ringbuf_output(&events, ev, offsetof(struct clovisor_msg_start, payload) + n,
				   clovisor_wakeup_flags(&events)));
}

/* An exchange record's header and messages: the previous message, the held
 * request (final counters `request`) and the response now starting. */
static __always_inline void fill_exchange(struct clovisor_exchange *ev,
					  const struct clovisor_conn_key *key,
					  const struct clovisor_conn *conn,
					  const struct clovisor_msg *request, __u8 flags)
{
	fill_hdr(&ev->hdr, CLOVISOR_EVENT_EXCHANGE, key, conn, flags);
	__builtin_memcpy(&ev->before, &conn->before, sizeof(conn->before));
	__builtin_memcpy(&ev->request, request, sizeof(*request));
	__builtin_memcpy(&ev->response, &conn->cur, sizeof(conn->cur));
}

/* emit_exchange of a counters-only connection: no bytes on either side, so a
 * record of fixed size, reserved in the ring and filled in place (no scratch
 * record copied into it). */
static __always_inline void emit_counters_exchange(const struct clovisor_conn_key *key,
						   const struct clovisor_conn *conn,
						   const struct clovisor_msg *request)
{
	struct clovisor_exchange *ev;

	ev = bpf_ringbuf_reserve(&events, offsetof(struct clovisor_exchange, payload), 0);
	if (!ev) {
		clovisor_count(&stats, CLOVISOR_STAT_RINGBUF_FULL);
		return;
	}
	fill_exchange(ev, key, conn, request, conn->has_before ? CLOVISOR_EV_HAS_PREV : 0);
	ev->request_len = 0;
	ev->response_len = 0;
	bpf_ringbuf_submit(ev, clovisor_wakeup_flags(&events));
	clovisor_count(&stats, CLOVISOR_STAT_EVENTS_EMITTED);
}

/* A response starts (this packet) after the held request whose final counters
 * are `request`: one record for both. */
static __always_inline void emit_exchange(struct __sk_buff *skb, const struct pkt *p,
					  const struct clovisor_conn_key *key,
					  const struct clovisor_conn *conn,
					  const struct clovisor_msg *request)
{
	__u32 zero = 0;
	struct clovisor_exchange *ev;
	struct clovisor_held *held;
	__u32 req_len = 0, resp_len;
	__u8 flags = conn->has_before ? CLOVISOR_EV_HAS_PREV : 0;

	/* A counters-only request was held without a slot: it has no bytes. */
	if (conn->counters_only) {
		emit_counters_exchange(key, conn, request);
		return;
	}
	ev = bpf_map_lookup_elem(&scratch_exchange, &zero);
	if (!ev)
		return;
	held = bpf_map_lookup_elem(&held_heads, &conn->flow_id);
	if (held) {
		req_len = clovisor_take_held(held, ev->payload);
	} else {
		flags |= CLOVISOR_EV_HEAD_LOST;
		clovisor_count(&stats, CLOVISOR_STAT_HEAD_LOST);
	}
	fill_exchange(ev, key, conn, request, flags);
	resp_len = snap_of(p, conn);
	if (resp_len > 0 &&
	    bpf_skb_load_bytes(skb, p->payload_off, ev->payload + req_len, resp_len)) {
		clovisor_count(&stats, CLOVISOR_STAT_SNAP_LOAD_FAILED);
		resp_len = 0;
	}
	ev->request_len = req_len;
	ev->response_len = resp_len;
	emitted(bpf_ringbuf_output(&events, ev,
				   offsetof(struct clovisor_exchange, payload) + req_len + resp_len,
				   clovisor_wakeup_flags(&events)));
}

/* A UDP datagram with payload: a whole message, sent at once with its first
 * bytes. No connection state: user space numbers the flows and datagrams. */
static __always_inline void emit_datagram(struct __sk_buff *skb, const struct pkt *p,
					  const struct clovisor_conn_key *key, __u8 dir,
					  __u8 to_pod, __u8 protocol, __u64 now)
{
	__u32 zero = 0;
	struct clovisor_msg_start *ev = bpf_map_lookup_elem(&scratch_msg, &zero);
	__u32 n;

	if (!ev)
		return;
	ev->hdr.kind = CLOVISOR_EVENT_MSG_START;
	ev->hdr.point = CLOVISOR_POINT_TC;
	ev->hdr.protocol = protocol;
	ev->hdr.flags = CLOVISOR_EV_DATAGRAM;
	ev->hdr.reason = 0;
	ev->hdr.flow_id = 0;
	__builtin_memcpy(&ev->hdr.key, key, sizeof(*key));
	__builtin_memset(&ev->hdr.owner, 0, sizeof(ev->hdr.owner));
	__builtin_memset(&ev->msg, 0, sizeof(ev->msg));
	ev->msg.start_ns = now;
	ev->msg.last_ns = now;
	ev->msg.bytes = p->payload_len;
	ev->msg.packets = 1;
	ev->msg.direction = dir;
	ev->msg.to_pod = to_pod;
	__builtin_memset(&ev->prev, 0, sizeof(ev->prev));
	ev->pad = 0;
	n = snap_of(p, 0);
	if (n > 0 && bpf_skb_load_bytes(skb, p->payload_off, ev->payload, n)) {
		clovisor_count(&stats, CLOVISOR_STAT_SNAP_LOAD_FAILED);
		n = 0;
	}
	ev->snap_len = n;
	emitted(bpf_ringbuf_output(&events, ev, offsetof(struct clovisor_msg_start, payload) + n,
				   clovisor_wakeup_flags(&events)));
}

/* A message starts with this packet: hold a request's first bytes for its
 * response, or send the message now. `prev` is the message before. */
static __always_inline void on_message_start(struct __sk_buff *skb, const struct pkt *p,
					     const struct clovisor_conn_key *key,
					     struct clovisor_conn *conn,
					     const struct clovisor_msg *prev, __u8 has_prev)
{
	struct clovisor_held *held;
	__u32 n;

	if (conn->cur.direction == CLOVISOR_DIR_CLIENT_TO_SERVER) {
		if (conn->counters_only) {
			/* No bytes to keep: the request waits in the connection
			 * alone, without a held_heads slot. */
			conn->held = 1;
			conn->has_before = has_prev;
			__builtin_memcpy(&conn->before, prev, sizeof(*prev));
			return;
		}
		held = clovisor_held_slot(conn->flow_id);
		if (held) {
			n = snap_of(p, conn);
			if (n > 0 && bpf_skb_load_bytes(skb, p->payload_off, held->data, n)) {
				clovisor_count(&stats, CLOVISOR_STAT_SNAP_LOAD_FAILED);
				n = 0;
			}
			clovisor_hold(held, key, 0, &conn->cur, conn->protocol, CLOVISOR_POINT_TC,
				      n);
			conn->held = 1;
			conn->has_before = has_prev;
			__builtin_memcpy(&conn->before, prev, sizeof(*prev));
			return;
		}
		clovisor_count(&stats, CLOVISOR_STAT_HEAD_NOT_HELD);
		conn->held = 0;
	} else if (conn->held) {
		conn->held = 0;
		if (conn->carried) {
			/* The socket point reads the request, final, here
			 * (with the message before it and the current one). */
			__builtin_memcpy(&conn->last_request, prev, sizeof(*prev));
			conn->has_last_request = 1;
			return;
		}
		emit_exchange(skb, p, key, conn, prev);
		return;
	}
	/* A carried connection sends no message of its own. */
	if (!conn->carried)
		emit_msg_start(skb, p, key, conn, &conn->cur, prev, has_prev, 0, 1);
}

/* The connection ends: a request still held goes first, alone, then the end
 * with the last message's final counters. */
static __always_inline void emit_flow_end(struct __sk_buff *skb, const struct pkt *p,
					  const struct clovisor_conn_key *key,
					  struct clovisor_conn *conn, __u8 reason, __u64 now)
{
	struct clovisor_flow_end *ev;

	if (conn->carried) {
		/* Its messages' counters stay in the connection for the
		 * socket point's end to read (which deletes the entry): this
		 * end says only that it ended, once, without `last`. */
		if (conn->ended)
			return;
		conn->ended = 1;
	} else if (conn->held) {
		struct clovisor_held *held =
		    conn->counters_only ? 0 : bpf_map_lookup_elem(&held_heads, &conn->flow_id);

		conn->held = 0;
		if (!held && !conn->counters_only)
			clovisor_count(&stats, CLOVISOR_STAT_HEAD_LOST);
		emit_msg_start(skb, p, key, conn, &conn->cur, &conn->before, conn->has_before, held,
			       0);
	}
	if (!conn->counters_only)
		bpf_map_delete_elem(&held_heads, &conn->flow_id);
	ev = bpf_ringbuf_reserve(&events, sizeof(*ev), 0);
	if (!ev) {
		clovisor_count(&stats, CLOVISOR_STAT_RINGBUF_FULL);
		return;
	}
	fill_hdr(&ev->hdr, CLOVISOR_EVENT_FLOW_END, key, conn,
		 conn->cur.direction != CLOVISOR_DIR_NONE && !conn->carried ? CLOVISOR_EV_HAS_PREV
									    : 0);
	ev->hdr.reason = reason;
	ev->ts_ns = now;
	__builtin_memcpy(&ev->last, &conn->cur, sizeof(conn->cur));
	ev->srtt_us = 0;
	ev->total_retrans = 0;
	bpf_ringbuf_submit(ev, clovisor_wakeup_flags(&events));
	clovisor_count(&stats, CLOVISOR_STAT_EVENTS_EMITTED);
}

/* ---- node interfaces ---------------------------------------------------- */

/* Whether a packet seen on a node interface belongs to a monitored pod: its
 * source or destination address is one. Two hash lookups on the node's whole
 * traffic, after the parse every packet pays anyway. */
static __always_inline int node_packet_monitored(const struct pkt *p)
{
	return bpf_map_lookup_elem(&monitored_ips, p->src_ip) != NULL ||
	       bpf_map_lookup_elem(&monitored_ips, p->dst_ip) != NULL;
}

/* ------------------------------------------------------------------------- */

/* at_node: the packet is on a node interface (only monitored pods' traffic
 * counts); otherwise on a pod veth. */
static __always_inline int handle(struct __sk_buff *skb, __u8 to_pod, __u8 at_node)
{
	struct clovisor_conn_key key;
	struct clovisor_conn *conn;
	struct clovisor_msg prev;
	struct pkt p;
	__u8 *hint;
	__u8 dir, protocol;
	__u8 has_prev = 0;
	__u16 server_port = 0;
	__u32 segs, new_bytes, end;
	__u64 now;
	int rc;

	clovisor_count(&stats, CLOVISOR_STAT_PACKETS_SEEN);
	__builtin_memset(&p, 0, sizeof(p));
	rc = parse_direct(skb, &p);
	if (rc == 2)
		rc = parse(skb, &p);
	if (rc < 0) {
		clovisor_count(&stats, CLOVISOR_STAT_PARSE_FAILED);
		return TC_ACT_UNSPEC;
	}
	if (rc > 0)
		return TC_ACT_UNSPEC;
	if (at_node && !node_packet_monitored(&p))
		return TC_ACT_UNSPEC;

	/* Cheap path: neither port traced (a bitmap read each) and no egress
	 * rule. The side whose port is traced is the server; the destination
	 * wins when both are. The protocol hint is looked up only for a new
	 * connection. */
	protocol = CLOVISOR_PROTO_UNSPECIFIED;
	if (clovisor_port_traced(p.dport)) {
		dir = CLOVISOR_DIR_CLIENT_TO_SERVER;
		server_port = p.dport;
	} else if (clovisor_port_traced(p.sport)) {
		dir = CLOVISOR_DIR_SERVER_TO_CLIENT;
		server_port = p.sport;
	} else if (!egress_match(&p, skb->ifindex, to_pod, &dir, &protocol)) {
		return TC_ACT_UNSPEC;
	}
	clovisor_count(&stats, CLOVISOR_STAT_PACKETS_TRACED);
	/* A bare ACK (no payload, no FIN or RST) changes nothing we track: done before the
	 * connection lookup, which is most of a packet's cost. An empty datagram leaves
	 * here too. */
	if (p.payload_len == 0 && !(p.flags & (TCPF_FIN_ | TCPF_RST_)))
		return TC_ACT_UNSPEC;

	__builtin_memset(&key, 0, sizeof(key));
	key.ifindex = skb->ifindex;
	key.family = p.family;
	if (dir == CLOVISOR_DIR_CLIENT_TO_SERVER) {
		__builtin_memcpy(key.client_ip, p.src_ip, 16);
		__builtin_memcpy(key.server_ip, p.dst_ip, 16);
		key.client_port = p.sport;
		key.server_port = p.dport;
	} else {
		__builtin_memcpy(key.client_ip, p.dst_ip, 16);
		__builtin_memcpy(key.server_ip, p.src_ip, 16);
		key.client_port = p.dport;
		key.server_port = p.sport;
	}

	now = bpf_ktime_get_boot_ns();
	if (p.l4 == IPPROTO_UDP) {
		/* Each datagram is a message of its own (the bare-ACK exit above
		 * already left the empty ones). */
		if (server_port) {
			hint = bpf_map_lookup_elem(&traced_ports, &server_port);
			if (hint)
				protocol = *hint;
		}
		emit_datagram(skb, &p, &key, dir, to_pod, protocol, now);
		return TC_ACT_UNSPEC;
	}
	conn = bpf_map_lookup_elem(&connections, &key);

	if (p.payload_len > 0) {
		segs = skb->gso_segs;
		if (segs == 0)
			segs = 1;
		if (!conn) {
			struct clovisor_conn fresh;

			__builtin_memset(&fresh, 0, sizeof(fresh));
			/* Top byte: CPU + 1; below it the counter. */
			fresh.flow_id = clovisor_new_flow_id(&flow_seq, 0, 56);
			if (server_port) {
				hint = bpf_map_lookup_elem(&traced_ports, &server_port);
				if (hint)
					protocol = *hint;
			}
			fresh.protocol = protocol;
			/* A traced HTTP/1.x port at a pod veth whose pod the socket
			 * point covers: the socket captures the payload. Other
			 * protocols keep it here: a multiplexed one (HTTP/2, gRPC)
			 * makes one record per message, which joins one stream only,
			 * and not every protocol decodes from the socket point's
			 * per-call bytes as from the wire (Kafka did not, in the
			 * tests). */
			if (!at_node && server_port && protocol == CLOVISOR_PROTO_HTTP &&
			    bpf_map_lookup_elem(&covered_ifaces, &key.ifindex)) {
				fresh.counters_only = 1;
				/* Its counters travel in the socket point's
				 * records: none of its own but its end. */
				fresh.carried = carry_wire();
			}
			/* BPF_NOEXIST: if the other direction created it on
			 * another CPU meanwhile, use that one. */
			if (bpf_map_update_elem(&connections, &key, &fresh, BPF_NOEXIST) == 0)
				clovisor_count(&stats, CLOVISOR_STAT_CONNS_CREATED);
			conn = bpf_map_lookup_elem(&connections, &key);
			if (!conn) {
				clovisor_count(&stats, CLOVISOR_STAT_CONN_UPDATE_FAILED);
				return TC_ACT_UNSPEC;
			}
		}

		end = p.seq + p.payload_len;
		new_bytes = p.payload_len;
		if (conn->seq_valid[dir - 1]) {
			__u32 next = 0;

			/* Bytes are counted by how far a packet moves the
			 * highest sequence number seen, so a segment that
			 * another CPU's packet overtook is covered by the
			 * packet that overtook it. */
			new_bytes = advance_seq(&conn->next_seq[dir - 1], end, &next);
			if (new_bytes == 0) {
				/* Nothing beyond what was seen: a retransmission
				 * or an overtaken segment. It never starts a
				 * message, even after a direction switch. */
				clovisor_count(&stats, CLOVISOR_STAT_RETRANSMIT_PACKETS);
				if (conn->cur.direction == dir) {
					__sync_fetch_and_add(&conn->cur.retransmits, segs);
					conn->cur.last_ns = now;
				}
				goto out;
			}
			if (seq_before(p.seq, next)) {
				/* Partly seen before: only the new bytes count. */
				clovisor_count(&stats, CLOVISOR_STAT_RETRANSMIT_PACKETS);
				if (conn->cur.direction == dir)
					__sync_fetch_and_add(&conn->cur.retransmits, 1);
			}
		} else {
			conn->next_seq[dir - 1] = end;
			conn->seq_valid[dir - 1] = 1;
		}

		if (conn->cur.direction != dir) {
			/* First payload of the connection, or a direction
			 * switch: a new message starts here. */
			if (conn->cur.direction != CLOVISOR_DIR_NONE) {
				__builtin_memcpy(&prev, &conn->cur, sizeof(prev));
				has_prev = 1;
			}
			conn->cur.index = has_prev ? prev.index + 1 : 0;
			conn->cur.start_ns = now;
			conn->cur.last_ns = now;
			conn->cur.bytes = new_bytes;
			conn->cur.packets = segs;
			conn->cur.retransmits = 0;
			conn->cur.tcp_seq = p.seq;
			conn->cur.direction = dir;
			conn->cur.to_pod = to_pod;
			if (!has_prev)
				__builtin_memset(&prev, 0, sizeof(prev));
			on_message_start(skb, &p, &key, conn, &prev, has_prev);
		} else {
			conn->cur.last_ns = now;
			__sync_fetch_and_add(&conn->cur.bytes, new_bytes);
			__sync_fetch_and_add(&conn->cur.packets, segs);
		}
	}

out:
	if (conn && (p.flags & (TCPF_FIN_ | TCPF_RST_))) {
		/* A carried connection's second FIN or RST ends nothing more. */
		if (!conn->ended)
			clovisor_count(&stats, CLOVISOR_STAT_CONNS_ENDED);
		emit_flow_end(skb, &p, &key, conn,
			      (p.flags & TCPF_RST_) ? CLOVISOR_END_RST : CLOVISOR_END_FIN, now);
		/* A carried connection's entry stays for the socket point's end
		 * to read, unless that came first (or the LRU takes it). */
		if (!conn->carried || conn->sock_done)
			bpf_map_delete_elem(&connections, &key);
	}
	return TC_ACT_UNSPEC;
}

/* Host veth ingress: packets the pod sent. (aya 0.14 parses "classifier", not
 * libbpf's "tc", as a SchedClassifier section.) */
SEC("classifier")
int clovisor_from_pod(struct __sk_buff *skb)
{
	return handle(skb, 0, 0);
}

/* Host veth egress: packets towards the pod. */
SEC("classifier")
int clovisor_to_pod(struct __sk_buff *skb)
{
	return handle(skb, 1, 0);
}

/* Node interface ingress: packets arriving at the node, towards its pods. */
SEC("classifier")
int clovisor_node_in(struct __sk_buff *skb)
{
	return handle(skb, 1, 1);
}

/* Node interface egress: packets leaving the node, from its pods. */
SEC("classifier")
int clovisor_node_out(struct __sk_buff *skb)
{
	return handle(skb, 0, 1);
}
