// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
/*
 * Benchmark-only: a tc program that does nothing and lets every packet pass
 * (TC_ACT_UNSPEC). scripts/bench.sh compiles it, attaches it next to the
 * probe's programs on the same veth (clsact ingress and egress) and compares
 * their run_time_ns / run_cnt: the floor any tc program pays per packet.
 * Not part of the probe (probe/build.rs does not build it).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("classifier")
int bench_empty(struct __sk_buff *skb)
{
	return TC_ACT_UNSPEC;
}
