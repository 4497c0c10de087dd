#!/usr/bin/env bash
# The benchmark command (not part of the test command, never a CI gate): what tracing costs and how
# much it carries, every figure a ratio or a comparison measured side by side in this one run.
# Writes bench-report/report.md and bench-report/report.json (and the raw measurements in
# bench-report/raw/) and prints the report. See docs/benchmarks.md.
#
#   sudo bash scripts/bench.sh
#
# Needs root (BPF, namespaces, sysctl). Bounded: every load has a fixed duration, about 10 minutes
# after a warm build on a 2-core machine. Creates two namespace pods on a bridge (server: nginx,
# client: wrk) and a third, untraced namespace (the bystander: its own nginx and wrk on loopback),
# runs clovisor-probe, clovisor-collector and clovisor-correlator as separate processes, and
# `clovisor all-in-one` as one arm (span export off); removes all of it, the tc filters it adds and
# the sysctl it changes on exit, on failure and on Ctrl-C.
#
# Sections (the report's letters): (b) request overhead, untraced vs traced wrk runs interleaved
# (separate binaries at the veth only and at every point, all-in-one tracing both pods, and a
# stand-in with no tracer: a busy loop taking the fully traced arm's CPU share, bench/standin.py);
# (a) eBPF cost from the kernel's BPF run statistics, our programs vs an empty program on the same
# veth under the same load; (d) end to end, a connection ramp with every request accounted for and
# the CPU and memory of each component; (e) what the probe costs a process in an untraced
# namespace (a syscall loop and loopback HTTP, with and without the pipeline, interleaved);
# (f) memory of the collector and the correlator holding many open flows and exchanges (synthetic
# probe records); (c) collector decode throughput vs tshark, and per protocol on real captures of
# every decoded protocol (about a minute more: one decode phase per protocol).
#
# Knobs (environment): BENCH_SECONDS (per wrk run of (a) and (b), default 10), BENCH_PAIRS
# (rounds of (b) and (e), default 4), BENCH_STANDIN_BURST_MS (the stand-in's busy bursts in (b),
# default 2), BENCH_CONNS (wrk connections of (a), (b) and (e), default 4),
# BENCH_RAMP (connection counts of (d), default "1 2 4 8 16 32"), BENCH_RAMP_SECONDS (default 5),
# BENCH_BYSTANDER_SECONDS (per wrk run of (e), default 5), BENCH_DD_COUNT (syscall-loop bytes of
# (e), two syscalls each, default 6000000), BENCH_FLOWS (open flows and held exchanges of (f),
# default 100000), BENCH_DECODE_SECONDS (per decode phase and per protocol, default 5), BENCH_TSHARK_COPIES (1-255,
# default 100), BENCH_OUT (default bench-report), BENCH_BINDIR (use the binaries and examples/ of another build instead of building: to compare two builds under the same conditions).
#
# A/B mode, for one change at a time (docs/benchmarks.md, "A/B of two builds"): with BENCH_AB_A and
# BENCH_AB_B set to two directories holding clovisor-probe, -collector and -correlator, only the
# split pipeline runs, BENCH_PAIRS alternated pairs of BENCH_SECONDS of wrk per arm, arm B taking
# from BENCH_AB_B only the component named in BENCH_AB_SWAP (probe, collector, correlator; default
# all), its components run with the extra environment BENCH_AB_ENV_B (NAME=VALUE words) if given;
# BENCH_AB_SWAP=aio runs `clovisor all-in-one` tracing both pods instead (each directory holding a
# `clovisor`), arm B's from BENCH_AB_B with BENCH_AB_ENV_B;
# it prints each component's CPU per exchange, nginx's, and the kernel's BPF time per exchange of
# the tc and socket programs, per pair and arm, with the share of requests each run traced and what
# it dropped (counted once the pipeline settled), and writes them to $BENCH_OUT/ab.md.
#
# Profile mode, to see where the time goes before changing it (docs/benchmarks.md, "Profiles under
# the benchmark's load"): with BENCH_PROFILE set to a comma-separated list of probe, collector,
# correlator and machine (or to 1 for all four), only the split pipeline runs, every point traced,
# under wrk -c$BENCH_CONNS; for each target one run of BENCH_SECONDS with `perf record` (999 Hz,
# DWARF call graphs) of that process, or of every CPU for machine, over its middle; writes each
# recording and its summary (the top functions by own and by inclusive time; for machine, the
# share of each command and of the eBPF programs) to $BENCH_OUT/profile/ and prints the summaries.
# Uses the binaries of BENCH_BINDIR when given, else builds them; installs linux-perf if perf is
# missing.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

SECONDS_PER_RUN=${BENCH_SECONDS:-10}
PAIRS=${BENCH_PAIRS:-4}
CONNS=${BENCH_CONNS:-4}
RAMP=${BENCH_RAMP:-"1 2 4 8 16 32"}
RAMP_SECONDS=${BENCH_RAMP_SECONDS:-5}
BYSTANDER_SECONDS=${BENCH_BYSTANDER_SECONDS:-5}
DD_COUNT=${BENCH_DD_COUNT:-6000000}
FLOWS=${BENCH_FLOWS:-100000}
DECODE_SECONDS=${BENCH_DECODE_SECONDS:-5}
TSHARK_COPIES=${BENCH_TSHARK_COPIES:-100}
OUT=${BENCH_OUT:-bench-report}
TESTDATA=${CLOVISOR_TESTDATA:-$ROOT/../shared/testdata}
PCAPS=(http_espn http_google http_post http_ip4and6)
# Section c's other protocols (cli/tests/decode.rs holds the benchmark's counts on these to
# `clovisor decode`'s): DNS from the shared test data, the rest committed in the repository.
DNS_PCAPS=(dns_axfr dns_lab dns_query_nonexistent dns_query_response dns_reverse_lookup dns_tcp)
REPO_PCAPS=(collector/tests/data/http2/h2c_prior.pcapng collector/tests/data/http2/h2c_upgrade.pcapng
  collector/tests/data/http2/grpc_unary.pcapng collector/tests/data/kafka/kafka_python.pcapng
  collector/tests/data/kafka/librdkafka.pcapng collector/testdata/db/redis.pcapng
  collector/testdata/db/postgresql.pcapng collector/testdata/db/mysql.pcapng)
# `clovisor decode`'s default ports (replay::DECODE_PORTS) and 8082 (h2c_upgrade's proxy).
DECODE_PORTS=53,80,3000,3306,5000,5432,6379,8000,8080,8082,8888,9092,50051

[ "$(id -u)" -eq 0 ] || { echo "run as root: the benchmark loads BPF programs and creates namespaces" >&2; exit 1; }
for f in "${PCAPS[@]}"; do
  [ -f "$TESTDATA/pcap/$f.pcapng" ] || { echo "missing $TESTDATA/pcap/$f.pcapng (set CLOVISOR_TESTDATA)" >&2; exit 1; }
done
bash scripts/install-deps.sh
# What the benchmark needs beyond the build/test dependencies (install-deps.sh has the rest).
PKGS=(wrk time)
[ -n "${BENCH_PROFILE:-}" ] && ! command -v perf >/dev/null 2>&1 && PKGS+=(linux-perf)
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    echo "installing $p"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "$p" >/dev/null
  fi
done
if ! command -v cargo >/dev/null 2>&1; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && export PATH="$d:$PATH"
  done
fi

export RUST_BACKTRACE=0 # errors of the components, not stack traces, in the logs
AB_SWAP=${BENCH_AB_SWAP:-all}
if [ -n "${BENCH_AB_A:-}${BENCH_AB_B:-}" ]; then
  [ -n "${BENCH_AB_A:-}" ] && [ -n "${BENCH_AB_B:-}" ] || {
    echo "A/B mode needs both BENCH_AB_A and BENCH_AB_B" >&2
    exit 1
  }
  case "$AB_SWAP" in probe | collector | correlator | all | aio) ;; *)
    echo "BENCH_AB_SWAP: probe, collector, correlator, all or aio, not $AB_SWAP" >&2
    exit 1
    ;;
  esac
  BINDIR=$BENCH_AB_A
  echo "== A/B: $BENCH_AB_A against $BENCH_AB_B (arm B swaps: $AB_SWAP)"
elif [ -n "${BENCH_BINDIR:-}" ]; then
  # Another build's binaries (e.g. the commit before a change, to compare two builds under the
  # same conditions): the four binaries and, in examples/, the benchmark's examples.
  BINDIR=$BENCH_BINDIR
  echo "== using the binaries in $BINDIR"
else
echo "== building release binaries"
# The binaries as they ship; then the examples, which turn on the collector's `replay` feature
# (a separate build, so it never reaches the measured collector).
cargo build --release --locked -p clovisor-probe -p clovisor-collector -p clovisor-correlator --bins
# all-in-one on its own, so its dependencies' features never change the three binaries above.
cargo build --release --locked -p clovisor --bins
cargo build --release --locked -p clovisor-collector -p clovisor-probe \
  --example decode_bench --example attach_tp_btf --example flood --example tc_test_run
BINDIR=${CARGO_TARGET_DIR:-$ROOT/target}/release
fi

ID=$$
CLIENT=clv-bench-c-$ID
SERVER=clv-bench-s-$ID
BYSTANDER=clv-bench-x-$ID
BR=clvbb$ID
HVETH_SERVER=vb$ID-s
HVETH_CLIENT=vb$ID-c
WORK=$(mktemp -d /tmp/clovisor-bench.XXXXXX)
RAW=$WORK/raw
LOGS=$WORK/logs
mkdir -p "$RAW"/{a,b,c,d,e,f,ab} "$LOGS"
COMPONENTS=(probe collector correlator)
# The processes whose metrics scrape() reads: the three components, or all-in-one alone.
SCRAPED=("${COMPONENTS[@]}")
declare -A PID=()
STATS_OLD=""
EMPTY_PREF=49152 # tc filter priority of the empty program (ours are TCX links or other prefs)
EMPTY_QDISC_ADDED=""
NGINX_PID=""
BYSTANDER_NGINX_PID=""
WRK_PID=""
STANDIN=() # the stand-in processes of section b, while they run

# Eight free loopback ports: correlator gRPC, API, metrics; collector gRPC, metrics; probe
# metrics; all-in-one API, metrics.
read -r P_CORR_GRPC P_CORR_API P_CORR_METRICS P_COLL_GRPC P_COLL_METRICS P_PROBE_METRICS \
  P_AIO_API P_AIO_METRICS < <(
  python3 -c '
import socket
ss = [socket.socket() for _ in range(8)]
for s in ss:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))')
declare -A METRICS_URL=(
  [probe]=http://127.0.0.1:$P_PROBE_METRICS/metrics
  [collector]=http://127.0.0.1:$P_COLL_METRICS/metrics
  [correlator]=http://127.0.0.1:$P_CORR_METRICS/metrics
  [aio]=http://127.0.0.1:$P_AIO_METRICS/metrics
)

EMPTY_TRACING_PID=""
# Removes the empty program's filters (and the clsact qdisc if this script added it), and the
# empty tracing programs (their links go with their holder).
detach_empty() {
  if [ -n "$EMPTY_TRACING_PID" ]; then
    kill -TERM "$EMPTY_TRACING_PID" 2>/dev/null
    wait "$EMPTY_TRACING_PID" 2>/dev/null
    EMPTY_TRACING_PID=""
  fi
  tc filter del dev "$HVETH_SERVER" ingress pref "$EMPTY_PREF" 2>/dev/null
  tc filter del dev "$HVETH_SERVER" egress pref "$EMPTY_PREF" 2>/dev/null
  if [ -n "$EMPTY_QDISC_ADDED" ]; then
    tc qdisc del dev "$HVETH_SERVER" clsact 2>/dev/null
    EMPTY_QDISC_ADDED=""
  fi
  return 0
}

# Stops one of our processes: SIGTERM, up to 20 s to drain, then SIGKILL.
stop_pid() { # pid
  local pid=$1
  kill -TERM "$pid" 2>/dev/null || return 0
  for _ in $(seq 1 200); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
}

# Stops the pipeline upstream first, so each stage drains into the next (and all-in-one).
stop_pipeline() {
  local c
  for c in aio "${COMPONENTS[@]}"; do
    if [ -n "${PID[$c]:-}" ]; then
      stop_pid "${PID[$c]}"
      PID[$c]=""
    fi
  done
}

cleanup() {
  local rc=$?
  set +e
  trap - EXIT INT TERM
  [ -n "$WRK_PID" ] && stop_pid "$WRK_PID"
  [ "${#STANDIN[@]}" -gt 0 ] && kill "${STANDIN[@]}" 2>/dev/null
  stop_pipeline
  [ -n "$STATS_OLD" ] && sysctl -qw kernel.bpf_stats_enabled="$STATS_OLD"
  detach_empty
  [ -n "$NGINX_PID" ] && stop_pid "$NGINX_PID"
  [ -n "$BYSTANDER_NGINX_PID" ] && stop_pid "$BYSTANDER_NGINX_PID"
  ip netns del "$CLIENT" 2>/dev/null
  ip netns del "$SERVER" 2>/dev/null
  ip netns del "$BYSTANDER" 2>/dev/null
  ip link del "$BR" 2>/dev/null
  local left
  for _ in $(seq 1 30); do # a namespace's veths go away asynchronously
    left=$( (ip netns list; ip -o link show) 2>/dev/null | grep -cE "$CLIENT|$SERVER|$BYSTANDER|$BR|vb$ID-")
    [ "$left" -eq 0 ] && break
    sleep 0.1
  done
  [ "$left" -eq 0 ] || echo "WARNING: $left namespaces or links of this run are left behind" >&2
  if [ "$rc" -ne 0 ] && [ "$rc" -ne 130 ]; then
    mkdir -p "$OUT" && rm -rf "$OUT/logs" && cp -r "$LOGS" "$OUT/logs"
    echo "benchmark failed (exit $rc); logs in $OUT/logs/, their last lines:" >&2
    for f in "$OUT"/logs/*.log; do
      [ -s "$f" ] && { echo "--- $f" >&2; tail -n 12 "$f" >&2; }
    done
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "interrupted" >&2; exit 130' INT
trap 'exit 143' TERM

# --- pods ----------------------------------------------------------------------------------------

echo "== creating pods $CLIENT and $SERVER on bridge $BR"
ip link add "$BR" type bridge
ip link set "$BR" up
for ns in "$CLIENT" "$SERVER"; do
  if [ "$ns" = "$SERVER" ]; then hv=$HVETH_SERVER ip=10.251.0.3; else hv=$HVETH_CLIENT ip=10.251.0.2; fi
  ip netns add "$ns"
  ip link add "$hv" type veth peer name eth0 netns "$ns"
  ip link set "$hv" master "$BR" up
  ip -n "$ns" addr add "$ip/24" dev eth0
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done
URL=http://10.251.0.3/

cat >"$WORK/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx.pid;
error_log $LOGS/nginx.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK;
  keepalive_requests 100000000;
  keepalive_timeout 60s;
  server {
    listen 80;
    root $WORK/www;
  }
  # Requests nginx served: what crossed the veth, for the accounting of (d). Loopback inside the
  # pod, so never seen by the tc programs on its veth.
  server {
    listen 127.0.0.1:8081;
    location / { stub_status; }
  }
}
NGINX
mkdir -p "$WORK/www"
# A small exchange: a ~40-byte request, a ~240-byte response (head and a 100-byte body).
head -c 100 /dev/zero | tr '\0' 'x' >"$WORK/www/index.html"
setsid ip netns exec "$SERVER" nginx -c "$WORK/nginx.conf" 2>>"$LOGS/nginx.log" &
NGINX_PID=$!
for _ in $(seq 1 50); do
  ip netns exec "$CLIENT" curl -fsS -o /dev/null --max-time 1 "$URL" 2>/dev/null && break
  kill -0 "$NGINX_PID" 2>/dev/null || { echo "nginx did not start" >&2; exit 1; }
  sleep 0.1
done
ip netns exec "$CLIENT" curl -fsS -o /dev/null --max-time 2 "$URL"

# The bystander: a namespace the probe does not trace (not a --netns of it, no veth), with its
# own nginx on loopback port 8080 (a port no traced namespace listens on) for (e).
echo "== creating the untraced namespace $BYSTANDER"
ip netns add "$BYSTANDER"
ip -n "$BYSTANDER" link set lo up
BYSTANDER_URL=http://127.0.0.1:8080/
cat >"$WORK/nginx-bystander.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/nginx-bystander.pid;
error_log $LOGS/nginx-bystander.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $WORK;
  keepalive_requests 100000000;
  keepalive_timeout 60s;
  server {
    listen 127.0.0.1:8080;
    root $WORK/www;
  }
}
NGINX
setsid ip netns exec "$BYSTANDER" nginx -c "$WORK/nginx-bystander.conf" 2>>"$LOGS/nginx-bystander.log" &
BYSTANDER_NGINX_PID=$!
for _ in $(seq 1 50); do
  ip netns exec "$BYSTANDER" curl -fsS -o /dev/null --max-time 1 "$BYSTANDER_URL" 2>/dev/null && break
  kill -0 "$BYSTANDER_NGINX_PID" 2>/dev/null || { echo "the bystander's nginx did not start" >&2; exit 1; }
  sleep 0.1
done
ip netns exec "$BYSTANDER" curl -fsS -o /dev/null --max-time 2 "$BYSTANDER_URL"

# --- helpers -------------------------------------------------------------------------------------

# wrk from the client pod against the server pod (or from namespace $4 against $5); writes the
# JSON of bench/wrk_report.lua to $3.
run_wrk() { # connections seconds out.json [netns url]
  local c=$1 s=$2 t=1 ns=${4:-$CLIENT} url=${5:-$URL}
  [ "$c" -ge 2 ] && t=2
  # In the background and waited for: wrk stops early on SIGINT and exits 0, which would make bash
  # ignore a Ctrl-C; `wait` returns at once on a trapped signal instead.
  setsid ip netns exec "$ns" wrk -t"$t" -c"$c" -d"${s}s" --timeout 5s -s "$ROOT/bench/wrk_report.lua" "$url" \
    >"$LOGS/wrk.out" 2>&1 &
  WRK_PID=$!
  wait "$WRK_PID" || { cat "$LOGS/wrk.out" >&2; return 1; }
  WRK_PID=""
  sed -n 's/^WRKJSON //p' "$LOGS/wrk.out" >"$3"
  [ -s "$3" ] || { cat "$LOGS/wrk.out" >&2; return 1; }
}

# Requests nginx has served so far, this status request included.
nginx_requests() { ip netns exec "$SERVER" curl -fsS --max-time 2 http://127.0.0.1:8081/ | awk 'NR == 3 { print $3 }'; }

# IRQ-work interrupts so far, all CPUs (/proc/interrupts: IWI on x86, an IPI line on arm64), or
# null where the kernel lists none: how a BPF program wakes a ring buffer's reader (an
# inter-processor interrupt; on a VM usually a VM exit), among the kernel's other deferred work.
irq_work_count() {
  awk '/IRQ work interrupts/ { n = 0; for (i = 2; i <= NF; i++) if ($i ~ /^[0-9]+$/) n += $i; print n; found = 1 }
    END { if (!found) print "null" }' /proc/interrupts
}

wrk_line() { jq -r '"\(.requests) requests, \(.requests / .duration_us * 1e6 | floor)/s, p50 \(.latency_us.p50) µs, p99 \(.latency_us.p99) µs"' "$1"; }

# The /metrics of every process in SCRAPED, concatenated.
scrape() { # out.prom
  local c
  : >"$1"
  for c in "${SCRAPED[@]}"; do curl -fsS --max-time 5 "${METRICS_URL[$c]}" >>"$1"; done
}

# Sum of a metric family's samples (filtered by a label regex if given).
metric_sum() { # file name [label-regex]
  awk -v n="$2" -v f="${3:-}" '
    $0 ~ "^" n "[{ ]" && (f == "" || $0 ~ f) { s += $NF } END { printf "%.0f\n", s + 0 }' "$1"
}

# Waits until the pipeline is idle: two scrapes 1.5 s apart with the same counters and nothing
# buffered (the probe copies its counters every second, the collector every half second).
settle() {
  local a="$WORK/settle-a.prom" b="$WORK/settle-b.prom"
  scrape "$a"
  for _ in $(seq 1 14); do
    sleep 1.5
    scrape "$b"
    if [ "$(metric_sum "$b" clovisor_buffered)" -eq 0 ] &&
      diff -q <(grep -E '^clovisor_(received|emitted|dropped|http_requests)_total' "$a") \
        <(grep -E '^clovisor_(received|emitted|dropped|http_requests)_total' "$b") >/dev/null; then
      return 0
    fi
    mv "$b" "$a"
  done
  echo "   (pipeline still busy after 21 s; counting what has arrived)" >&2
}

# utime + stime of a process in clock ticks (all its threads).
cpu_ticks() { sed 's/.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'; }

nginx_pids() { echo "$NGINX_PID"; ps -o pid= --ppid "$NGINX_PID"; }

# CPU ticks of each of the given processes (default: the three components) and of nginx, as JSON.
cpu_snapshot() { # [name...]
  local c n=0 p
  [ $# -gt 0 ] || set -- "${COMPONENTS[@]}"
  for p in $(nginx_pids); do n=$((n + $(cpu_ticks "$p"))); done
  {
    for c in "$@"; do echo "\"$c\": $(cpu_ticks "${PID[$c]}")"; done
    echo "\"nginx\": $n"
  } | paste -sd, | sed 's/^/{/; s/$/}/'
}

# Resident memory of each of the given processes (default: the three components) now (VmRSS) and
# at its peak (VmHWM), kB, as JSON.
rss_snapshot() { # [name...]
  local c
  [ $# -gt 0 ] || set -- "${COMPONENTS[@]}"
  for c in "$@"; do
    awk -v c="$c" '/^VmHWM:/ { h = $2 } /^VmRSS:/ { r = $2 }
      END { printf "\"%s\": {\"VmHWM_kb\": %d, \"VmRSS_kb\": %d}\n", c, h, r }' "/proc/${PID[$c]}/status"
  done | paste -sd, | sed 's/^/{/; s/$/}/'
}

# The load average now (and the time), recorded with what the script is about to do.
note_load() { # section
  jq -n -c --arg s "$1" --arg l "$(cut -d' ' -f1-3 /proc/loadavg)" --argjson t "$(date +%s)" \
    '{section: $s, loadavg: $l, unix_s: $t}' >>"$RAW/loadavg.jsonl"
}

wait_http() { # url name
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null --max-time 1 "$1" 2>/dev/null && return 0
    kill -0 "${PID[$2]}" 2>/dev/null || { echo "$2 exited" >&2; exit 1; }
    sleep 0.1
  done
  echo "$2 not answering at $1" >&2
  exit 1
}

# The pipeline and nginx run in their own sessions (setsid), so a Ctrl-C reaches only this script,
# which then stops them in order (upstream first, each draining into the next).
# The correlator and the collector; the correlator's environment may be extended by the caller
# (CORRELATOR_ENV, NAME=VALUE words).
CORRELATOR_ENV=()
start_backend() {
  env "${CORRELATOR_ENV[@]}" OTEL_TRACES_EXPORTER=none RUST_LOG="${RUST_LOG:-warn}" \
    setsid "$BINDIR/clovisor-correlator" \
    --grpc-listen "127.0.0.1:$P_CORR_GRPC" --api-listen "127.0.0.1:$P_CORR_API" \
    --metrics-listen "127.0.0.1:$P_CORR_METRICS" >>"$LOGS/correlator.log" 2>&1 &
  PID[correlator]=$!
  wait_http "http://127.0.0.1:$P_CORR_API/readyz" correlator
  RUST_LOG=${RUST_LOG:-warn} setsid "$BINDIR/clovisor-collector" --grpc-listen "127.0.0.1:$P_COLL_GRPC" \
    --correlator "http://127.0.0.1:$P_CORR_GRPC" --metrics-listen "127.0.0.1:$P_COLL_METRICS" \
    >>"$LOGS/collector.log" 2>&1 &
  PID[collector]=$!
  wait_http "http://127.0.0.1:$P_COLL_METRICS/healthz" collector
}

# Ready once an exchange with the server pod reaches the correlator (attached, port found, every
# hop connected) whose metrics are at $1; then settled.
await_traced() { # metrics-url
  local n
  for _ in $(seq 1 60); do
    ip netns exec "$CLIENT" curl -fsS -o /dev/null --max-time 2 "$URL"
    n=$(curl -fsS --max-time 5 "$1" | grep -c '^clovisor_http_requests_total' || true)
    [ "$n" -gt 0 ] && { settle; return 0; }
    sleep 0.5
  done
  echo "the pipeline never traced an exchange with $SERVER" >&2
  exit 1
}

# The three binaries, the probe tracing the server pod.
start_pipeline() { # [extra probe flags...]
  SCRAPED=("${COMPONENTS[@]}")
  start_backend
  RUST_LOG=${RUST_LOG:-warn} setsid "$BINDIR/clovisor-probe" --netns "$SERVER" --node bench \
    --collector "http://127.0.0.1:$P_COLL_GRPC" --metrics-listen "127.0.0.1:$P_PROBE_METRICS" "$@" \
    >>"$LOGS/probe.log" 2>&1 &
  PID[probe]=$!
  wait_http "http://127.0.0.1:$P_PROBE_METRICS/healthz" probe
  await_traced "${METRICS_URL[correlator]}"
}

# `clovisor all-in-one` tracing both pods, the way a single-host user runs it.
start_aio() {
  SCRAPED=(aio)
  OTEL_TRACES_EXPORTER=none RUST_LOG=${RUST_LOG:-warn} setsid "$BINDIR/clovisor" all-in-one \
    --netns "$SERVER" --netns "$CLIENT" --node bench \
    --api-listen "127.0.0.1:$P_AIO_API" --metrics-listen "127.0.0.1:$P_AIO_METRICS" \
    >>"$LOGS/all-in-one.log" 2>&1 &
  PID[aio]=$!
  wait_http "http://127.0.0.1:$P_AIO_API/readyz" aio
  await_traced "${METRICS_URL[aio]}"
}

# Ids of the BPF objects the probe holds open ("prog" or "map"), from its fdinfo, as a JSON array.
# (BPF_OWNER: the process that holds them, probe by default, aio for all-in-one.)
probe_bpf_ids() { # prog|map
  local fd owner=${PID[${BPF_OWNER:-probe}]}
  for fd in /proc/"$owner"/fd/*; do
    [ "$(readlink "$fd" 2>/dev/null)" = "anon_inode:bpf-$1" ] || continue
    awk -v k="$1_id:" '$1 == k { print $2 }' "/proc/$owner/fdinfo/${fd##*/}"
  done | sort -un | jq -s -c .
}

# Ids of the probe's programs of the given bpftool types, as a JSON array.
probe_prog_ids() { # jq-array-of-types
  bpftool -j prog show | jq -c --argjson ids "$(probe_bpf_ids prog)" --argjson types "$1" \
    '[.[] | select((.id as $i | $ids | index($i)) and (.type as $t | $types | index($t))) | .id]'
}

# run_time_ns and run_cnt of the given program ids.
prog_stats() { # json-ids
  bpftool -j prog show | jq -c --argjson ids "$1" \
    '[.[] | select(.id as $i | $ids | index($i)) | {id, name, type, run_time_ns: (.run_time_ns // 0), run_cnt: (.run_cnt // 0)}]'
}

# --- A/B of two builds (BENCH_AB_A, BENCH_AB_B), then nothing else ------------------------------

# The probe's programs' run time and runs so far, summed by kind (tc: its sched_cls programs;
# socket: the rest, its socket hooks), as JSON.
bpf_runs() {
  prog_stats "$(probe_bpf_ids prog)" | jq -c '[.[] | {socket: (.type != "sched_cls"), n: .run_cnt, t: .run_time_ns}]
    | group_by(.socket) | map({(if .[0].socket then "socket" else "tc" end): {n: (map(.n) | add), t: (map(.t) | add)}}) | add // {}'
}

ab_main() {
  local d arm p c src order line before after r0 r1 b0 b1 env_b=() measured=("${COMPONENTS[@]}")
  for arm in A B; do
    d=$WORK/bin-$arm
    mkdir -p "$d"
    if [ "$AB_SWAP" = aio ]; then
      src=$BENCH_AB_A
      [ "$arm" = B ] && src=$BENCH_AB_B
      [ -x "$src/clovisor" ] || { echo "no clovisor in $src" >&2; exit 1; }
      ln -sf "$src/clovisor" "$d/clovisor"
      continue
    fi
    for c in "${COMPONENTS[@]}"; do
      src=$BENCH_AB_A
      if [ "$arm" = B ] && { [ "$AB_SWAP" = all ] || [ "$AB_SWAP" = "$c" ]; }; then src=$BENCH_AB_B; fi
      [ -x "$src/clovisor-$c" ] || { echo "no clovisor-$c in $src" >&2; exit 1; }
      ln -sf "$src/clovisor-$c" "$d/clovisor-$c"
    done
  done
  if [ "$AB_SWAP" = aio ]; then
    measured=(aio)
    BPF_OWNER=aio
  fi
  read -ra env_b <<<"${BENCH_AB_ENV_B:-}"
  STATS_OLD=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -qw kernel.bpf_stats_enabled=1
  echo "== A/B: $PAIRS pairs of ${SECONDS_PER_RUN}s (wrk -c$CONNS), order alternating"
  run_wrk "$CONNS" 2 "$WORK/warmup.json"
  for p in $(seq 1 "$PAIRS"); do
    if [ $((p % 2)) -eq 1 ]; then order="A B"; else order="B A"; fi
    for arm in $order; do
      BINDIR=$WORK/bin-$arm
      if [ "$arm" = B ] && [ ${#env_b[@]} -gt 0 ]; then export "${env_b[@]}"; fi
      if [ "$AB_SWAP" = aio ]; then start_aio; else start_pipeline; fi
      if [ "$arm" = B ] && [ ${#env_b[@]} -gt 0 ]; then for e in "${env_b[@]}"; do unset "${e%%=*}"; done; fi
      scrape "$RAW/ab/pair-$p-$arm.before.prom"
      before=$(cpu_snapshot "${measured[@]}")
      r0=$(nginx_requests)
      b0=$(bpf_runs)
      run_wrk "$CONNS" "$SECONDS_PER_RUN" "$RAW/ab/pair-$p-$arm.wrk.json"
      after=$(cpu_snapshot "${measured[@]}")
      r1=$(nginx_requests)
      b1=$(bpf_runs)
      # What it traced and dropped: an arm that sheds load must not read as a cheaper one.
      settle
      scrape "$RAW/ab/pair-$p-$arm.after.prom"
      jq -n --arg arm "$arm" --argjson pair "$p" --argjson before "$before" --argjson after "$after" \
        --argjson served "$((r1 - r0))" --argjson b0 "$b0" --argjson b1 "$b1" \
        '{arm: $arm, pair: $pair, served: $served, cpu: {before: $before, after: $after}, bpf: {before: $b0, after: $b1}}' \
        >"$RAW/ab/pair-$p-$arm.json"
      stop_pipeline
    done
  done
  sysctl -qw kernel.bpf_stats_enabled="$STATS_OLD"
  STATS_OLD=""
  mkdir -p "$OUT"
  python3 - "$RAW/ab" "$(getconf CLK_TCK)" "$BENCH_AB_A" "$BENCH_AB_B" "$AB_SWAP" "${BENCH_AB_ENV_B:-}" >"$OUT/ab.md" <<'PY'
import json, pathlib, statistics, sys
raw, clk, a_dir, b_dir, swap, env_b = pathlib.Path(sys.argv[1]), int(sys.argv[2]), *sys.argv[3:7]
procs = ["aio"] if swap == "aio" else ["probe", "collector", "correlator"]
cols = procs + ["nginx", "tc eBPF", "socket eBPF"]
sys.path.insert(0, "bench")
from report import delta, parse_prom  # the report's own reading of a scrape
rows = {}
traced = {}
wrk = {}
for f in sorted(raw.glob("pair-*-?.json")):
    r = json.loads(f.read_text())
    n, cpu, bpf = r["served"], r["cpu"], r["bpf"]
    stem = f.name[: -len(".json")]
    wrk[(r["pair"], r["arm"])] = json.loads((raw / f"{stem}.wrk.json").read_text())
    before, after = parse_prom(raw / f"{stem}.before.prom"), parse_prom(raw / f"{stem}.after.prom")
    traced[(r["pair"], r["arm"])] = tuple(
        delta(before, after, m) for m in ("clovisor_http_requests_total", "clovisor_dropped_total"))
    us = {c: (cpu["after"][c] - cpu["before"][c]) / clk / n * 1e6 for c in procs + ["nginx"]}
    for kind, col in (("tc", "tc eBPF"), ("socket", "socket eBPF")):
        t = bpf["after"].get(kind, {}).get("t", 0) - bpf["before"].get(kind, {}).get("t", 0)
        us[col] = t / n / 1e3
    rows[(r["pair"], r["arm"])] = (n, us)
pairs = sorted({p for p, _ in rows})
print(f"# A/B: {a_dir} (A) against {b_dir} (B)\n")
print(f"Arm B swaps: {swap}" + (f"; its components run with {env_b}" if env_b else "") +
      ". µs of CPU per exchange served (utime + stime / nginx's requests), and of the kernel's BPF "
      "run time; alternated pairs, each run its own pipeline.\n")
print("| pair | arm | requests | traced | dropped | " + " | ".join(cols) + " |")
print("| --- | --- | --- | --- | --- | " + " | ".join("---" for _ in cols) + " |")
for p in pairs:
    for arm in "AB":
        if (p, arm) in rows:
            n, us = rows[(p, arm)]
            t, d = traced[(p, arm)]
            share = f"{100 * t / n:.1f} %" if n else "–"
            print(f"| {p} | {arm} | {n:,} | {share} | {d:,.0f} | " + " | ".join(f"{us[c]:.2f}" for c in cols) + " |")
print("\n| figure | " + " | ".join(cols) + " |")
print("| --- | " + " | ".join("---" for _ in cols) + " |")
med = {arm: {c: statistics.median(rows[(p, arm)][1][c] for p in pairs if (p, arm) in rows) for c in cols}
       for arm in "AB"}
for arm in "AB":
    print(f"| median, arm {arm} | " + " | ".join(f"{med[arm][c]:.2f}" for c in cols) + " |")
ratio = lambda a, b: f"{b / a:.3f}" if a else "–"
print("| B / A (medians) | " + " | ".join(ratio(med["A"][c], med["B"][c]) for c in cols) + " |")
both = [p for p in pairs if (p, "A") in rows and (p, "B") in rows]
print("| B / A per pair | " + " | ".join(
    " ".join(ratio(rows[(p, "A")][1][c], rows[(p, "B")][1][c]) for p in both) for c in cols) + " |")
for arm in "AB":
    served = sum(rows[(p, arm)][0] for p in pairs if (p, arm) in rows)
    t = sum(traced[(p, arm)][0] for p in pairs if (p, arm) in traced)
    d = sum(traced[(p, arm)][1] for p in pairs if (p, arm) in traced)
    print(f"| arm {arm}: traced / served, dropped (all runs) | "
          + (f"{100 * t / served:.1f} %" if served else "–") + f", {d:,.0f} dropped |"
          + " |" * (len(cols) - 1))
# What the load saw: requests wrk completed and its latency percentiles, per arm (medians of the
# runs' percentiles), so that a change in how the tracer shares the cores shows where users feel it.
if {a for _, a in wrk} == {"A", "B"}:
    print("\n| the load (wrk) | arm A | arm B | B / A |")
    print("| --- | --- | --- | --- |")
    total = {arm: sum(w["requests"] for (p, a), w in wrk.items() if a == arm) for arm in "AB"}
    print(f"| requests completed (all pairs) | {total['A']:,} | {total['B']:,} | {ratio(total['A'], total['B'])} |")
    print("| requests completed B / A, pair by pair | | | " + " ".join(
        ratio(wrk[(p, "A")]["requests"], wrk[(p, "B")]["requests"])
        for p in pairs if (p, "A") in wrk and (p, "B") in wrk) + " |")
    for q in ("p50", "p99"):
        m = {arm: statistics.median(w["latency_us"][q] for (p, a), w in wrk.items() if a == arm) for arm in "AB"}
        print(f"| latency {q}, µs (median of the runs) | {m['A']:,.0f} | {m['B']:,.0f} | {ratio(m['A'], m['B'])} |")
print("\nThis machine's noise moves every column between runs; a component arm B did not change is "
      "the control: compare the changed one's B / A with theirs, pair by pair.")
PY
  cat "$OUT/ab.md"
}

# --- profiles under the benchmark's load (BENCH_PROFILE), then nothing else ------------------------

# The top of a recording: functions by own time, then by inclusive time (of process $2 only, when
# given), or for the whole machine the share of each command and of the eBPF programs.
profile_summary() { # perf.data target [pid]
  local data=$1 target=$2 pid=${3:-} filter=() own=$WORK/profile-own.txt all=$WORK/profile-all.txt
  # perf's empty IPC columns (no PMU in most VMs) and its padding, cut.
  local trim='s/[[:space:]]+-[[:space:]]+-[[:space:]]*$//; s/[[:space:]]+$//'
  [ -n "$pid" ] && filter=(--pid "$pid")
  perf report -i "$data" "${filter[@]}" --no-children --sort symbol --stdio -g none >"$own" 2>/dev/null
  perf report -i "$data" "${filter[@]}" --children --sort symbol --stdio -g none >"$all" 2>/dev/null
  echo "# $target: $(sed -n 's/^# Samples: //p' "$own" | head -1) samples"
  if [ "$target" = machine ]; then
    echo "## by command"
    perf report -i "$data" --no-children --sort comm --stdio -g none 2>/dev/null | grep '%' | sed -E "$trim" | head -12 || true
    echo "## eBPF programs, helpers and tracepoint dispatch (inclusive)"
    grep -E '\] (bpf_prog_|bpf_trace_run|tcx_|bpf_ringbuf|copy_from_user_nofault)' "$all" | sed -E "$trim" | head -12 || true
  fi
  echo "## own time"
  grep '%' "$own" | sed -E "$trim" | head -40 || true
  echo "## inclusive time"
  grep '%' "$all" | sed -E "$trim" | head -50 || true
}

profile_main() {
  local targets=$BENCH_PROFILE t pid perf_pid dir=$OUT/profile rec
  [ "$targets" = 1 ] && targets=probe,collector,correlator,machine
  for t in ${targets//,/ }; do
    case "$t" in probe | collector | correlator | machine) ;; *)
      echo "BENCH_PROFILE: probe, collector, correlator, machine or 1, not $t" >&2
      exit 1
      ;;
    esac
  done
  mkdir -p "$dir"
  rec=$((SECONDS_PER_RUN > 4 ? SECONDS_PER_RUN - 3 : 1))
  echo "== profiles: ${targets//,/, } (wrk -c$CONNS, ${SECONDS_PER_RUN}s a run, recording ${rec}s of each)"
  STATS_OLD=$(sysctl -n kernel.bpf_stats_enabled)
  sysctl -qw kernel.bpf_stats_enabled=0 # as users run it: no run statistics kept
  start_pipeline
  run_wrk "$CONNS" 2 "$WORK/warmup.json"
  for t in ${targets//,/ }; do
    pid=""
    [ "$t" = machine ] || pid=${PID[$t]}
    # The recording over the run's middle, in the background of the run (bounded: it ends by
    # itself after $rec seconds).
    (
      sleep 2
      if [ -z "$pid" ]; then
        exec perf record -a -F 999 -g -o "$dir/$t.data" -- sleep "$rec"
      else
        exec perf record -F 999 --call-graph dwarf,16384 -p "$pid" -o "$dir/$t.data" -- sleep "$rec"
      fi
    ) >"$LOGS/perf-$t.log" 2>&1 &
    perf_pid=$!
    run_wrk "$CONNS" "$SECONDS_PER_RUN" "$RAW/ab/profile-$t.wrk.json"
    wait "$perf_pid" || { cat "$LOGS/perf-$t.log" >&2; exit 1; }
    profile_summary "$dir/$t.data" "$t" "$pid" >"$dir/$t.txt"
    echo "   $t: $dir/$t.txt ($(jq -r '.requests' "$RAW/ab/profile-$t.wrk.json") requests in the run)"
  done
  stop_pipeline
  sysctl -qw kernel.bpf_stats_enabled="$STATS_OLD"
  STATS_OLD=""
  for t in ${targets//,/ }; do
    sed -n '1,/^## inclusive time/p' "$dir/$t.txt" | head -30 || true
  done
}

if [ -n "${BENCH_PROFILE:-}" ]; then
  profile_main
  exit 0
fi

if [ -n "${BENCH_AB_B:-}" ]; then
  ab_main
  exit 0
fi

# --- b. request overhead: untraced vs traced, interleaved ----------------------------------------

note_load b
# Five arms per round: untraced; traced at the veth only (--socket-hooks off); traced at the veth
# and the socket point (the default); a stand-in taking the CPU the fully traced arm's processes
# took, with no tracer (bench/standin.py); all-in-one tracing both pods (every point of client and
# server). The second arm tells the socket point's share of the cost; the stand-in what that much
# CPU costs the load on this machine whoever takes it, in bursts of BENCH_STANDIN_BURST_MS.
STANDIN_BURST_MS=${BENCH_STANDIN_BURST_MS:-2}
# The CPU share (of one CPU) the three components took over a traced run, from its cpu.json.
tracer_share() { # cpu.json
  jq --argjson clk "$(getconf CLK_TCK)" --argjson s "$SECONDS_PER_RUN" \
    '[.after.probe - .before.probe, .after.collector - .before.collector,
      .after.correlator - .before.correlator] | add / $clk / $s' "$1"
}
# Stand-ins for a share, added to STANDIN: as many processes as CPUs the share needs, each with
# its part of it.
start_standin() { # share seconds
  local n i
  n=$(awk -v s="$1" 'BEGIN { n = int(s); if (n < s) n++; print (n < 1 ? 1 : n) }')
  for i in $(seq 1 "$n"); do
    python3 "$ROOT/bench/standin.py" "$(awk -v s="$1" -v n="$n" 'BEGIN { print s / n }')" \
      "$STANDIN_BURST_MS" "$2" &
    STANDIN+=("$!")
  done
}
standin_ticks() { # (one that is gone counts nothing)
  local t=0 p
  for p in "${STANDIN[@]}"; do t=$((t + $(cpu_ticks "$p" 2>/dev/null || echo 0))); done
  echo "$t"
}
echo "== b. request overhead: $PAIRS rounds of untraced, veth-only, fully traced, stand-in and all-in-one wrk runs (-c$CONNS, ${SECONDS_PER_RUN}s), order alternating"
run_wrk "$CONNS" 2 "$WORK/warmup.json"
for p in $(seq 1 "$PAIRS"); do
  # Alternate the order of a round, so a drift in the machine's load cancels out (the stand-in
  # follows the traced arm, whose CPU it takes).
  if [ $((p % 2)) -eq 1 ]; then order="untraced veth traced standin aio"; else order="aio traced standin veth untraced"; fi
  for mode in $order; do
    f=$RAW/b/pair-$p-$mode
    if [ "$mode" = standin ]; then
      share=$(tracer_share "$RAW/b/pair-$p-traced.cpu.json")
      # Running a little longer than the load, so that they are still there to be read and
      # stopped after it; each would end by itself soon after.
      STANDIN=()
      awk -v s="$share" 'BEGIN { exit !(s > 0) }' && start_standin "$share" $((SECONDS_PER_RUN + 3))
      run_wrk "$CONNS" "$SECONDS_PER_RUN" "$f.wrk.json"
      ticks=$(standin_ticks)
      nstandin=${#STANDIN[@]}
      if [ "$nstandin" -gt 0 ]; then
        kill "${STANDIN[@]}" 2>/dev/null || true
        wait "${STANDIN[@]}" 2>/dev/null || true
      fi
      STANDIN=()
      jq -n -c --argjson share "$share" --argjson ticks "$ticks" --argjson clk "$(getconf CLK_TCK)" \
        --argjson burst "$STANDIN_BURST_MS" --argjson n "$nstandin" \
        '{share: $share, burst_ms: $burst, processes: $n, cpu_s: ($ticks / $clk)}' >"$f.standin.json"
      printf '   pair %d %-8s %s (share %.2f of a CPU)\n' "$p" "$mode" "$(wrk_line "$f.wrk.json")" "$share"
      continue
    fi
    if [ "$mode" != untraced ]; then
      case $mode in
        veth) start_pipeline --socket-hooks off ;;
        traced) start_pipeline ;;
        aio) start_aio ;;
      esac
      procs=("${COMPONENTS[@]}")
      [ "$mode" = aio ] && procs=(aio)
      scrape "$f.before.prom"
      n0=$(nginx_requests)
      cpu0=$(cpu_snapshot "${procs[@]}")
    fi
    iw0=$(irq_work_count)
    run_wrk "$CONNS" "$SECONDS_PER_RUN" "$f.wrk.json"
    iw1=$(irq_work_count)
    echo "{\"before\": ${iw0:-null}, \"after\": ${iw1:-null}}" >"$f.irqwork.json"
    if [ "$mode" != untraced ]; then
      n1=$(nginx_requests)
      settle
      cpu1=$(cpu_snapshot "${procs[@]}")
      scrape "$f.after.prom"
      rss_snapshot "${procs[@]}" >"$f.rss.json"
      stop_pipeline
      echo "{\"before\": $n0, \"after\": $n1}" >"$f.nginx.json"
      jq -n -c --argjson a "$cpu0" --argjson b "$cpu1" '{before: $a, after: $b}' >"$f.cpu.json"
    fi
    printf '   pair %d %-8s %s\n' "$p" "$mode" "$(wrk_line "$f.wrk.json")"
  done
done
SCRAPED=("${COMPONENTS[@]}")

# --- a. eBPF cost: our programs vs an empty one on the same veth, the same packets ---------------

note_load a
echo "== a. eBPF cost: kernel.bpf_stats_enabled, our tc programs and an empty tc program on $HVETH_SERVER"
clang -O2 -g -target bpf -Wall -Werror -I"/usr/include/$(gcc -print-multiarch)" \
  -c bpf/testing/empty.bpf.c -o "$WORK/empty.bpf.o"
# The tc programs alone first, on a quiet machine: the probe's object loaded but attached nowhere,
# packets handed to it by BPF_PROG_TEST_RUN on one CPU (probe/examples/tc_test_run.rs).
# (A BENCH_BINDIR build from before the example has none: the rows then read "not measured".)
if [ -x "$BINDIR/examples/tc_test_run" ]; then
  "$BINDIR/examples/tc_test_run" --rounds 6 --exchanges 50000 --empty "$WORK/empty.bpf.o" >"$RAW/a/test_run.json"
  echo "   tc programs alone: $(jq -r '"\(.covered.ns_per_packet | floor) ns per packet (socket-covered veth), \(.copying.ns_per_packet | floor) ns (uncovered), empty program \(.empty.ns_per_packet | floor) ns"' "$RAW/a/test_run.json")"
else
  echo "   tc programs alone: not measured ($BINDIR/examples/tc_test_run missing)"
fi
start_pipeline
OUR_TC=$(probe_prog_ids '["sched_cls"]')
[ "$(jq length <<<"$OUR_TC")" -ge 2 ] || { echo "the probe's tc programs not found (pid ${PID[probe]}): $OUR_TC" >&2; exit 1; }
# Socket hooks (the probe's tp_btf programs), and empty programs on the same three tracepoints beside
# them: the floor any program on those hooks pays.
OUR_SOCKET=$(probe_prog_ids '["tracing", "kprobe", "raw_tracepoint"]')
clang -O2 -g -target bpf -Wall -Werror -I"/usr/include/$(gcc -print-multiarch)" \
  -c bpf/testing/empty_tracing.bpf.c -o "$WORK/empty_tracing.bpf.o"
"$BINDIR/examples/attach_tp_btf" "$WORK/empty_tracing.bpf.o" bench_empty_sock_send=sock_send_length \
  bench_empty_sock_recv=sock_recv_length bench_empty_sock_state=inet_sock_set_state >"$LOGS/empty_tracing.log" 2>&1 &
EMPTY_TRACING_PID=$!
EMPTY_SOCKET="[]"
for _ in $(seq 1 50); do
  EMPTY_SOCKET=$(bpftool -j prog show | jq -c '[.[] | select(.type == "tracing" and (.name | startswith("bench_empty"))) | .id]')
  [ "$(jq length <<<"$EMPTY_SOCKET")" -eq 3 ] && break
  kill -0 "$EMPTY_TRACING_PID" 2>/dev/null || { cat "$LOGS/empty_tracing.log" >&2; exit 1; }
  sleep 0.1
done
[ "$(jq length <<<"$EMPTY_SOCKET")" -eq 3 ] || { echo "the empty tracing programs did not attach: $EMPTY_SOCKET" >&2; exit 1; }
if ! tc qdisc show dev "$HVETH_SERVER" | grep -q clsact; then
  tc qdisc add dev "$HVETH_SERVER" clsact
  EMPTY_QDISC_ADDED=1
fi
for dir in ingress egress; do
  tc filter add dev "$HVETH_SERVER" "$dir" pref "$EMPTY_PREF" bpf da obj "$WORK/empty.bpf.o" sec classifier
done
EMPTY_TC=$(for dir in ingress egress; do tc -j filter show dev "$HVETH_SERVER" "$dir" pref "$EMPTY_PREF"; done |
  jq -s -c '[.[][] | .options.prog.id // empty]')
[ "$(jq length <<<"$EMPTY_TC")" -eq 2 ] || { echo "the empty program's ids not found: $EMPTY_TC" >&2; exit 1; }
STATS_OLD=$(sysctl -n kernel.bpf_stats_enabled)
sysctl -qw kernel.bpf_stats_enabled=1
ALL_IDS=$(jq -c -n --argjson a "$OUR_TC" --argjson b "$EMPTY_TC" --argjson c "$OUR_SOCKET" \
  --argjson d "$EMPTY_SOCKET" '$a + $b + $c + $d')
jq -n -c --argjson tc "$OUR_TC" --argjson empty "$EMPTY_TC" --argjson socket "$OUR_SOCKET" \
  --argjson empty_socket "$EMPTY_SOCKET" \
  '{tc: $tc, empty_tc: $empty, socket: $socket, empty_socket: $empty_socket}' >"$RAW/a/programs.json"
scrape "$RAW/a/before.prom"
n0=$(nginx_requests)
prog_stats "$ALL_IDS" >"$RAW/a/stats-before.json"
run_wrk "$CONNS" "$SECONDS_PER_RUN" "$RAW/a/wrk.json"
prog_stats "$ALL_IDS" >"$RAW/a/stats-after.json"
n1=$(nginx_requests)
echo "{\"before\": $n0, \"after\": $n1}" >"$RAW/a/nginx.json"
sysctl -qw kernel.bpf_stats_enabled="$STATS_OLD"
STATS_OLD=""
detach_empty
settle
scrape "$RAW/a/after.prom"
stop_pipeline
echo "   $(wrk_line "$RAW/a/wrk.json")"

# --- d. end to end: a connection ramp, every request accounted for --------------------------------

note_load d
echo "== d. end to end: wrk ramp over $RAMP connections, ${RAMP_SECONDS}s each"
start_pipeline
rss_snapshot >"$RAW/d/rss-idle.json"
# The peak over the ramp, not over start-up (the probe parses the kernel's BTF once at start, a
# transient tens of MiB): writing 5 to clear_refs resets VmHWM to the current RSS. The start-up
# peak stays in rss-idle.json and in the report's notes.
for c in "${COMPONENTS[@]}"; do echo 5 >"/proc/${PID[$c]}/clear_refs"; done
for c in $RAMP; do
  f=$RAW/d/step-$c
  scrape "$f.before.prom"
  n0=$(nginx_requests)
  cpu0=$(cpu_snapshot)
  run_wrk "$c" "$RAMP_SECONDS" "$f.wrk.json"
  n1=$(nginx_requests)
  settle
  cpu1=$(cpu_snapshot)
  scrape "$f.after.prom"
  jq -n -c --argjson a "$cpu0" --argjson b "$cpu1" '{before: $a, after: $b}' >"$f.cpu.json"
  echo "{\"before\": $n0, \"after\": $n1}" >"$f.nginx.json"
  printf '   -c%-3s %s\n' "$c" "$(wrk_line "$f.wrk.json")"
done
rss_snapshot >"$RAW/d/rss.json"
# Kernel memory of the probe's maps (ring buffer, LRU session map, ...): not in its RSS.
bpftool -j map show | jq -c --argjson ids "$(probe_bpf_ids map)" \
  '[.[] | select(.id as $i | $ids | index($i)) | {id, name, type, bytes_memlock}]' >"$RAW/d/probe-maps.json"
stop_pipeline

# --- e. a process in an untraced namespace: with and without the pipeline, interleaved ---------

# A pure syscall loop in the bystander: dd copying $DD_COUNT single bytes (a read and a write
# each), timed by its CPU time (user + system); writes {bytes, syscalls, wall_s, cpu_s}.
run_dd() { # out.json
  ip netns exec "$BYSTANDER" /usr/bin/time -o "$WORK/dd.time" -f '%e %U %S' \
    dd if=/dev/zero of=/dev/null bs=1 count="$DD_COUNT" status=none
  jq -n -c --argjson n "$DD_COUNT" --arg t "$(tail -n 1 "$WORK/dd.time")" \
    '($t | split(" ") | map(tonumber)) as $v | {bytes: $n, syscalls: (2 * $n), wall_s: $v[0], cpu_s: ($v[1] + $v[2])}' >"$1"
}

note_load e
echo "== e. untraced namespace $BYSTANDER: $PAIRS rounds of a syscall loop (dd, $DD_COUNT bytes) and wrk on its loopback (-c$CONNS, ${BYSTANDER_SECONDS}s), with and without the pipeline, order alternating"
for p in $(seq 1 "$PAIRS"); do
  if [ $((p % 2)) -eq 1 ]; then order="without with"; else order="with without"; fi
  for mode in $order; do
    f=$RAW/e/round-$p-$mode
    if [ "$mode" = with ]; then
      start_pipeline
      scrape "$f.before.prom"
      cpu0=$(cpu_snapshot)
      t0=$(date +%s.%N)
    fi
    run_dd "$f.dd.json"
    run_wrk "$CONNS" "$BYSTANDER_SECONDS" "$f.wrk.json" "$BYSTANDER" "$BYSTANDER_URL"
    if [ "$mode" = with ]; then
      # What the idle pipeline itself took meanwhile (it shares the cores with dd, wrk and nginx).
      jq -n -c --argjson a "$cpu0" --argjson b "$(cpu_snapshot)" --argjson t0 "$t0" --argjson t1 "$(date +%s.%N)" \
        '{before: $a, after: $b, wall_s: ($t1 - $t0)}' >"$f.cpu.json"
      settle
      scrape "$f.after.prom"
      stop_pipeline
    fi
    printf '   round %d %-7s dd: %s; wrk: %s\n' "$p" "$mode" \
      "$(jq -r 'if .cpu_s > 0 then "\(.bytes / .cpu_s | floor) bytes per CPU second" else "under a clock tick" end' "$f.dd.json")" \
      "$(wrk_line "$f.wrk.json")"
  done
done

# --- f. memory: open flows in the collector, held exchanges in the join --------------------------

note_load f
echo "== f. memory: $FLOWS exchanges into the correlator's join, then $FLOWS open flows into the collector (synthetic probe records)"
# Room in the join for every exchange of this section, retained well past its end (defaults:
# 65536 exchanges, 30 s), so the figure is the memory of $FLOWS held exchanges. The collector's
# flow table has no such knob: it holds what its bound allows and counts the rest as evicted.
CORRELATOR_ENV=("CLOVISOR_JOIN_MAX_ENTRIES=$((FLOWS + 1024))" "CLOVISOR_JOIN_RETENTION_S=600")
SCRAPED=(collector correlator)
start_backend
CORRELATOR_ENV=()
settle
scrape "$RAW/f/idle.prom"
rss_snapshot collector correlator >"$RAW/f/rss-idle.json"
flood() { # mode base out.json
  "$BINDIR/examples/flood" --collector "http://127.0.0.1:$P_COLL_GRPC" --mode "$1" --flows "$FLOWS" \
    --base "$2" --node "flood-$1" >"$3" 2>>"$LOGS/flood.log" || { cat "$3" "$LOGS/flood.log" >&2; exit 1; }
  settle
}
flood exchanges 0 "$RAW/f/flood-exchanges.json"
scrape "$RAW/f/exchanges.prom"
rss_snapshot collector correlator >"$RAW/f/rss-exchanges.json"
flood open "$FLOWS" "$RAW/f/flood-open.json"
scrape "$RAW/f/open.prom"
rss_snapshot collector correlator >"$RAW/f/rss-open.json"
jq -r '"   \(.mode): \(.flows) flows, \(.records) records acknowledged in \(.seconds * 10 | floor / 10) s"' \
  "$RAW/f/flood-exchanges.json" "$RAW/f/flood-open.json"
stop_pipeline
SCRAPED=("${COMPONENTS[@]}")

# --- c. collector decode throughput vs tshark, the same captures ---------------------------------

note_load c
echo "== c. decode throughput: records through the collector's flow table vs tshark"
files=()
for f in "${PCAPS[@]}"; do files+=("$TESTDATA/pcap/$f.pcapng"); done
# Like for like with tshark's HTTP dissection: the HTTP captures on the HTTP ports only.
"$BINDIR/examples/decode_bench" --seconds "$DECODE_SECONDS" --port 80,8080 --phase records --phase pcap \
  "${files[@]}" >"$RAW/c/decode.json"
# Every decoder, protocol by protocol: real captures of each (see docs/benchmarks.md section c),
# replayed as `clovisor decode` replays them (its default ports, and 8082 of h2c_upgrade's proxy).
proto_files=("${files[@]}")
for f in "${DNS_PCAPS[@]}"; do proto_files+=("$TESTDATA/pcap/$f.pcapng"); done
for f in "${REPO_PCAPS[@]}"; do proto_files+=("$ROOT/$f"); done
"$BINDIR/examples/decode_bench" --seconds "$DECODE_SECONDS" --port "$DECODE_PORTS" --phase records \
  --phase protocols "${proto_files[@]}" >"$RAW/c/decode-protocols.json"
classic=()
for f in "${PCAPS[@]}"; do
  editcap -F pcap "$TESTDATA/pcap/$f.pcapng" "$WORK/$f.pcap"
  classic+=("$WORK/$f.pcap")
done
python3 bench/replicate_pcap.py "$WORK/one.pcap" 1 "${classic[@]}"
python3 bench/replicate_pcap.py "$WORK/many.pcap" "$TSHARK_COPIES" "${classic[@]}"
# tshark's HTTP responses in a file, with its wall and CPU time (user + system).
tshark_run() { # file
  /usr/bin/time -o "$WORK/tshark.time" -f '%e %U %S' \
    tshark -n -r "$1" -Y http.response -T fields -e frame.number >"$WORK/tshark.out" 2>>"$LOGS/tshark.log"
  jq -n -c --argjson n "$(wc -l <"$WORK/tshark.out")" --arg t "$(tail -n 1 "$WORK/tshark.time")" \
    --argjson packets "$(capinfos -c -M "$1" | awk '/Number of packets/ { print $NF }')" \
    '($t | split(" ") | map(tonumber)) as $v | {responses: $n, packets: $packets, wall_s: $v[0], cpu_s: ($v[1] + $v[2])}'
}
jq -n -c --argjson one "$(tshark_run "$WORK/one.pcap")" --argjson many "$(tshark_run "$WORK/many.pcap")" \
  --argjson copies "$TSHARK_COPIES" --arg version "$(tshark -v 2>/dev/null | head -n 1)" \
  '{version: $version, copies: $copies, one_copy: $one, many_copies: $many}' >"$RAW/c/tshark.json"
jq -r '"   collector: \(.records.complete_exchanges_per_cpu_s | floor) exchanges per CPU second"' "$RAW/c/decode.json"
jq -r '.protocols | to_entries[] | select(.value.records != null)
  | "   \(.key): \(.value.records.complete_exchanges_per_cpu_s | floor) exchanges per CPU second (\(.value.complete_exchanges_per_round) per round)"' \
  "$RAW/c/decode-protocols.json"
jq -r '"   all protocols together: \(.records.complete_exchanges_per_cpu_s | floor) exchanges per CPU second"' \
  "$RAW/c/decode-protocols.json"
# The correlator's memory with 100k exchanges open in its join at once (a separate build: the
# example turns on the correlator's test-util feature).
echo "== c. correlator: memory with 100k concurrent open exchanges in the join"
[ -n "${BENCH_BINDIR:-}" ] || cargo build --release --locked -p clovisor-correlator --example ingest_bench
"$BINDIR/examples/ingest_bench" --open 100000 >"$RAW/c/correlator-open.json"
jq -r '"   correlator: \(.two_views.mib | floor) MiB for \(.exchanges) open exchanges"' "$RAW/c/correlator-open.json"
# What span export costs the correlator, which the pipeline's runs leave out (their correlator
# exports nothing: OTEL_TRACES_EXPORTER=none): the correlator alone on section d's kind of traffic
# (one probe saw each exchange whole), its spans encoded and batched as the exporter does (not
# sent) against no export, alternated.
echo "== c. correlator: span export's cost (spans encoded vs export off, alternated)"
for r in 1 2 3; do
  for e in none encode; do
    "$BINDIR/examples/ingest_bench" --seconds "$DECODE_SECONDS" --views merged --client outside \
      --rate 25000 --export "$e" >"$RAW/c/correlator-export-$e-$r.json"
  done
done
jq -s -r '(map(select(.export == "none")) | (map(.cpu_s) | add) / (map(.exchanges) | add) * 1e6) as $n
  | (map(select(.export != "none")) | (map(.cpu_s) | add) / (map(.exchanges) | add) * 1e6) as $e
  | "   correlator alone: \($n * 100 | floor / 100) µs per exchange without export, \($e * 100 | floor / 100) with spans encoded"' \
  "$RAW"/c/correlator-export-*.json

note_load end
# --- report --------------------------------------------------------------------------------------

commit=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
[ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && commit="$commit (modified)"
jq -n --arg nproc "$(nproc)" --arg kernel "$(uname -r)" \
  --arg cpu "$(awk -F': ' '/^model name/ { print $2; exit }' /proc/cpuinfo)" \
  --arg date "$(date -u +%Y-%m-%dT%H:%M:%SZ)" --arg commit "$commit" \
  --arg wrk "$(wrk -v 2>&1 | head -n 1)" --arg loadavg "$(cut -d' ' -f1-3 /proc/loadavg)" \
  --slurpfile loads "$RAW/loadavg.jsonl" --argjson clk "$(getconf CLK_TCK)" \
  --argjson seconds "$SECONDS_PER_RUN" --argjson pairs "$PAIRS" --argjson conns "$CONNS" \
  --arg ramp "$RAMP" --argjson ramp_seconds "$RAMP_SECONDS" --argjson bystander_seconds "$BYSTANDER_SECONDS" \
  --argjson dd_count "$DD_COUNT" --argjson flows "$FLOWS" \
  '{nproc: ($nproc | tonumber), kernel: $kernel, cpu: $cpu, date: $date, commit: $commit, wrk: $wrk,
    loadavg_end: $loadavg, loadavg_by_section: $loads, clk_tck: $clk,
    knobs: {wrk_seconds: $seconds, pairs: $pairs, connections: $conns,
            ramp: ($ramp | split(" ") | map(select(. != "") | tonumber)), ramp_seconds: $ramp_seconds,
            bystander_seconds: $bystander_seconds, dd_count: $dd_count, flows: $flows}}' \
  >"$RAW/machine.json"
mkdir -p "$OUT"
rm -rf "$OUT/raw" "$OUT/logs"
cp -r "$RAW" "$OUT/raw"
cp -r "$LOGS" "$OUT/logs"
python3 bench/report.py "$OUT/raw" "$OUT"
echo "== report: $OUT/report.md, $OUT/report.json"
echo
cat "$OUT/report.md"
