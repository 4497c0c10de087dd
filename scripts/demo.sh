#!/usr/bin/env bash
# The main job, end to end on this host: two "pods" (network namespaces on a bridge, as a bridge
# CNI would wire them), nginx serving in one, curl calling from the other, Clovisor all-in-one
# tracing both, then the traced sessions from the REST API, a few metrics, and proof that nothing
# of ours is left in the kernel. Needs root. Everything it creates is removed on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then export PATH="$HOME/.cargo/bin:$PATH"; fi
[ "$(id -u)" -eq 0 ] || { echo "run as root: the demo loads BPF programs and creates namespaces" >&2; exit 1; }

# CLOVISOR_BIN: a clovisor binary already built (the demo then builds nothing).
if [ -n "${CLOVISOR_BIN:-}" ]; then
  BIN=$CLOVISOR_BIN
else
  echo "== building clovisor (release)"
  cargo build --release --locked -p clovisor
  BIN=${CARGO_TARGET_DIR:-target}/release/clovisor
fi

ID=$$
CLIENT=clv-demo-client-$ID
SERVER=clv-demo-server-$ID
BR=clvbr$ID
WORK=$(mktemp -d /tmp/clovisor-demo.XXXXXX)
API=127.0.0.1:19800
METRICS=127.0.0.1:19801
PROM=127.0.0.1:19090
CLOVISOR_PID=""
OBSERVE_PID=""
PROM_PID=""

cleanup() {
  set +e
  [ -n "$OBSERVE_PID" ] && kill "$OBSERVE_PID" 2>/dev/null
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
  [ -n "$CLOVISOR_PID" ] && kill -TERM "$CLOVISOR_PID" 2>/dev/null && wait "$CLOVISOR_PID" 2>/dev/null
  [ -f "$WORK/nginx.pid" ] && ip netns exec "$SERVER" nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null
  ip netns del "$CLIENT" 2>/dev/null
  ip netns del "$SERVER" 2>/dev/null
  ip link del "$BR" 2>/dev/null
  rm -rf "$WORK"
}
trap cleanup EXIT

echo "== creating pods $CLIENT and $SERVER on bridge $BR"
ip link add "$BR" type bridge
ip link set "$BR" up
i=1
for ns in "$CLIENT" "$SERVER"; do
  i=$((i + 1))
  ip netns add "$ns"
  ip link add "v$ID-$i" type veth peer name eth0 netns "$ns"
  ip link set "v$ID-$i" master "$BR" up
  ip -n "$ns" addr add "10.250.0.$i/24" dev eth0
  ip -n "$ns" addr add "fd00:250::$i/64" dev eth0 nodad
  ip -n "$ns" link set eth0 up
  ip -n "$ns" link set lo up
done
SERVER_IP=10.250.0.3

cat > "$WORK/nginx.conf" <<NGINX
worker_processes 1;
pid $WORK/nginx.pid;
error_log $WORK/error.log;
events { worker_connections 64; }
http {
  access_log off;
  client_body_temp_path $WORK;
  keepalive_requests 100;
  server {
    listen 80;
    listen [::]:80;
    root $WORK/www;
    location = /api/orders { return 201 "created\n"; }
    location = /boom { return 503 "unavailable\n"; }
  }
}
NGINX
mkdir -p "$WORK/www"
echo "hello from the server pod" > "$WORK/www/index.html"
head -c 1048576 /dev/urandom > "$WORK/www/big.bin"
ip netns exec "$SERVER" nginx -c "$WORK/nginx.conf"

# Spans go to an OTLP endpoint (Jaeger, an OpenTelemetry Collector) when you name one; without one
# the demo switches span export off rather than retrying a port nobody listens on.
if [ -z "${OTEL_EXPORTER_OTLP_ENDPOINT:-}" ]; then
  export OTEL_TRACES_EXPORTER=none
  echo "== no OTEL_EXPORTER_OTLP_ENDPOINT set: span export off (set it to send spans to Jaeger)"
fi

# Both pods are traced: every exchange is seen at curl's socket, the client's veth, the server's veth
# and nginx's socket, and the correlator joins the four views into one session (its "observations"
# list each point with its own times).
echo "== starting clovisor all-in-one --netns $CLIENT --netns $SERVER (api $API, metrics $METRICS)"
RUST_LOG=${RUST_LOG:-info} "$BIN" all-in-one --netns "$CLIENT" --netns "$SERVER" \
  --api-listen "$API" --metrics-listen "$METRICS" >"$WORK/clovisor.log" 2>&1 &
CLOVISOR_PID=$!
for _ in $(seq 1 100); do
  curl -fsS "http://$API/readyz" >/dev/null 2>&1 && break
  kill -0 "$CLOVISOR_PID" 2>/dev/null || { cat "$WORK/clovisor.log"; exit 1; }
  sleep 0.1
done
# Give the namespace follower one scan to attach and learn the listening ports.
sleep 2
# A real Prometheus (Debian's) scrapes the metrics every second, for the dashboards' queries below.
cat > "$WORK/prometheus.yml" <<PROMCFG
global: {scrape_interval: 1s, evaluation_interval: 1s}
scrape_configs:
  - job_name: clovisor
    static_configs: [{targets: ['$METRICS']}]
PROMCFG
prometheus --config.file="$WORK/prometheus.yml" --storage.tsdb.path="$WORK/prometheus" \
  --web.listen-address="$PROM" >"$WORK/prometheus.log" 2>&1 &
PROM_PID=$!

echo "== socket point hooks (GET http://$API/api/v1/probe)"
curl -fsS "http://$API/api/v1/probe" | jq -c '{hook: .socket.hook, passed_over: [.socket.attempts[] | select(.error) | .hook]}'

# Prometheus takes its first scrape a few seconds after it starts: wait for it (20 s at most), so
# the traffic below is in its samples.
for _ in $(seq 1 80); do
  [ "$(curl -fsS "http://$PROM/api/v1/targets" 2>/dev/null | jq -r '.data.activeTargets[0].health // ""')" = up ] && break
  sleep 0.25
done

# `clovisor observe` follows the correlator's live feed (server-sent events) while the requests are
# made, a line per exchange as its join window closes, as `hubble observe -f` would.
export CLOVISOR_SERVER="http://$API"
"$BIN" observe --count 9 >"$WORK/observe.txt" 2>&1 &
OBSERVE_PID=$!
sleep 0.5

echo "== client pod calls the server pod"
c() { ip netns exec "$CLIENT" curl -s -o /dev/null -w "  %{http_code} %{size_download}B  $*\n" "$@"; }
c "http://$SERVER_IP/"
c -X POST -d '{"sku":42}' -H 'content-type: application/json' \
  -H 'traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01' "http://$SERVER_IP/api/orders"
c -H 'X-B3-TraceId: 463ac35c9f6413ad48485a3953bb6124' -H 'X-B3-SpanId: a2fb4a1d1a96d312' \
  -H 'X-B3-Sampled: 1' "http://$SERVER_IP/missing"
c -H 'x-request-id: 9f1c2a7e-demo' "http://$SERVER_IP/boom"
c "http://$SERVER_IP/big.bin"
c -g "http://[fd00:250::3]/"
echo "  three requests on one keep-alive connection:"
ip netns exec "$CLIENT" curl -s -o /dev/null -o /dev/null -o /dev/null \
  -w "  %{http_code} %{url_effective} (connections opened: %{num_connects})\n" \
  "http://$SERVER_IP/" "http://$SERVER_IP/index.html" "http://$SERVER_IP/missing"
# Exchanges are exported (spans, request metrics) once their join window (1 s) has closed.
sleep 2.5

echo "== clovisor observe: what it printed live while the requests were made"
for _ in $(seq 1 30); do kill -0 "$OBSERVE_PID" 2>/dev/null || break; sleep 0.2; done
kill "$OBSERVE_PID" 2>/dev/null || true; wait "$OBSERVE_PID" 2>/dev/null || true; OBSERVE_PID=""
sed 's/^/  /' "$WORK/observe.txt"

echo "== clovisor get services (the analytics: per service, last 5 min)"
"$BIN" get services -o wide | sed 's/^/  /'
echo "== clovisor stats --group-by path,status"
"$BIN" stats --group-by path,status | sed 's/^/  /'
echo "== clovisor get sessions --status 5xx"
"$BIN" get sessions --status 5xx | sed 's/^/  /'
echo "== the API's own description: GET http://$API/api/v1/openapi.json"
curl -fsS "http://$API/api/v1/openapi.json" | jq -r '"  OpenAPI \(.openapi): " + ([.paths | keys[]] | join(" "))'

echo "== traced sessions (GET http://$API/api/v1/sessions)"
curl -fsS "http://$API/api/v1/sessions?limit=50" | jq -r '
  ["METHOD","PATH","STATUS","DURATION","RESP BYTES","CLIENT","SERVER","SEEN AT","TRACE ID","PARENT"],
  (.sessions | reverse[] | [.http.method, .http.path, (.http.status_code|tostring),
     ((.duration_ns/1000|floor|tostring)+"us"), (.bytes.response|tostring),
     (.client.ip+":"+(.client.port|tostring)), (.server.pod // .server.ip),
     ([.observations[] | .point + ":" + (.side // "-") + (if .comm then "(" + .comm + ")" else "" end)] | join(",")),
     (.trace.trace_id // "-"), (.trace.parent_span_id // "-")]) | @tsv' | column -t -s $'\t'

echo "== where the time went: POST /api/orders, in path order, us after the request was first seen"
echo "   (a socket times a call when it returns: curl's send after its packets crossed the veths)"
curl -fsS "http://$API/api/v1/sessions?trace_id=4bf92f3577b34da6a3ce929d0e0e4736" | jq -r '
  .sessions[0].observations as $o
  | def ns: sub("Z$"; "") | split(".") | (.[0] + "Z" | fromdateiso8601) * 1e9 + ((.[1] + "000000000")[0:9] | tonumber);
  ([$o[].request_start | ns] | min) as $t0
  | (["point", "side", "where", "request", "response", ""] | @tsv),
    ($o[] | [.point, (.side // "-"), (.interface // .comm // "-"),
            ((((.request_start | ns) - $t0) / 1000 | floor | tostring) + "us"),
            ((((.response_start | ns) - $t0) / 1000 | floor | tostring) + "us"),
            (if .point == "socket" then "pid=" + (.pid | tostring) else "" end)] | @tsv)' | column -t -s $'\t'

echo "== one session in full"
curl -fsS "http://$API/api/v1/sessions?trace_id=4bf92f3577b34da6a3ce929d0e0e4736" | jq '.sessions[0]'

echo "== metrics (http://$METRICS/metrics)"
curl -fsS "http://$METRICS/metrics" | grep -E '^clovisor_http_requests_total|^clovisor_flow_connections_total|^clovisor_flow_rtt_seconds_(sum|count)|^clovisor_dropped_total|events_emitted|^clovisor_probe_ring_events_total' | head -30

echo "== the Grafana dashboards' queries (manifests/overlays/grafana), run by Prometheus at $PROM"
sleep 2
jq -r '.panels[] | .title as $t | .targets[] | [$t, .expr] | @tsv' \
  manifests/overlays/grafana/dashboards/clovisor-red.json manifests/overlays/grafana/dashboards/clovisor-tcp.json |
  head -n 6 | while IFS=$'\t' read -r title expr; do
    q=${expr//\$__rate_interval/1m}
    q=${q//\$namespace/.*}
    echo "  $title"
    curl -fsS -G "http://$PROM/api/v1/query" --data-urlencode "query=$q" |
      jq -r '.data.result[] | "    " + ([.metric[]] | join(" ")) + "  " + .value[1]' | head -n 4
  done

echo "== stopping clovisor (SIGTERM)"
kill -TERM "$CLOVISOR_PID"; wait "$CLOVISOR_PID" || true; CLOVISOR_PID=""
"$BIN" inspect | sed 's/^/  /'

echo "== log: $(grep -c . "$WORK/clovisor.log") lines; last ones:"
tail -n 5 "$WORK/clovisor.log"
