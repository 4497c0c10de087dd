// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
/*
 * Test-only: drops a few TCP packets carrying payload from port 80, so the
 * sender retransmits. Compiled and attached by
 * integration-tests/tests/probe_capture.rs (not by probe/build.rs: it is not
 * part of the probe). Drops the 4th, 8th and 12th such packet, then no more.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <linux/tcp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} seen SEC(".maps"); /* [0] payload packets seen, [1] dropped */

SEC("classifier")
int drop_payload(struct __sk_buff *skb)
{
	struct iphdr ip;
	struct tcphdr tcp;
	__u32 k0 = 0, k1 = 1;
	__u64 *n, *dropped;
	__u32 off;

	if (skb->protocol != bpf_htons(ETH_P_IP))
		return TC_ACT_UNSPEC;
	if (bpf_skb_load_bytes(skb, ETH_HLEN, &ip, sizeof(ip)) || ip.protocol != IPPROTO_TCP)
		return TC_ACT_UNSPEC;
	off = ETH_HLEN + (__u32)ip.ihl * 4;
	if (bpf_skb_load_bytes(skb, off, &tcp, sizeof(tcp)) || tcp.source != bpf_htons(80))
		return TC_ACT_UNSPEC;
	if (bpf_ntohs(ip.tot_len) <= (__u32)ip.ihl * 4 + (__u32)tcp.doff * 4)
		return TC_ACT_UNSPEC;
	n = bpf_map_lookup_elem(&seen, &k0);
	dropped = bpf_map_lookup_elem(&seen, &k1);
	if (!n || !dropped)
		return TC_ACT_UNSPEC;
	*n += 1;
	if (*n % 4 == 0 && *dropped < 3) {
		*dropped += 1;
		return TC_ACT_SHOT;
	}
	return TC_ACT_UNSPEC;
}
