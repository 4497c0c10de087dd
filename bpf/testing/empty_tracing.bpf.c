// SPDX-License-Identifier: GPL-2.0-only OR Apache-2.0
/*
 * Benchmark-only: tracing programs that do nothing, on the three hooks the
 * socket point uses (tp_btf sock_send_length, sock_recv_length,
 * inet_sock_set_state). scripts/bench.sh compiles it and attaches it with
 * the probe crate's `attach_tp_btf` example next to the probe's socket programs;
 * their run_time_ns / run_cnt are the floor any program on those hooks pays.
 * Not part of the probe (probe/build.rs does not build it).
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

char LICENSE[] SEC("license") = "Dual BSD/GPL";

SEC("tp_btf/sock_send_length")
int bench_empty_sock_send(__u64 *ctx)
{
	return 0;
}

SEC("tp_btf/sock_recv_length")
int bench_empty_sock_recv(__u64 *ctx)
{
	return 0;
}

SEC("tp_btf/inet_sock_set_state")
int bench_empty_sock_state(__u64 *ctx)
{
	return 0;
}
