#!/usr/bin/env bash
# The main job, end to end on this host: two "pods" (network namespaces on a bridge, as a bridge
# CNI would wire them), real servers in one and their clients in the other — nginx and curl
# (HTTP/1.x), nghttpd and nghttp (HTTP/2), a tonic gRPC server and client, dnsmasq and dig (DNS
# over UDP and TCP), redis-server and redis-cli, PostgreSQL and psql — Clovisor all-in-one tracing
# both, then the traced sessions of every protocol from the REST API, the request metrics, and
# proof that nothing of ours is left in the kernel. Needs root. Everything it creates is removed on
# exit. It exits non-zero when a protocol it exercised shows no session (or lacks the error case
# it provoked), so the demo cannot silently regress.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then export PATH="$HOME/.cargo/bin:$PATH"; fi
[ "$(id -u)" -eq 0 ] || { echo "run as root: the demo loads BPF programs and creates namespaces" >&2; exit 1; }

# CLOVISOR_BIN: a clovisor binary already built; GRPC_POD_BIN: the gRPC server and client of the
# integration tests (integration-tests/src/bin/grpc_pod.rs) already built, by default the
# `grpc_pod` next to CLOVISOR_BIN when there is one. The demo builds only what is not given.
BUILD=()
if [ -n "${CLOVISOR_BIN:-}" ]; then
  BIN=$CLOVISOR_BIN
  [ -z "${GRPC_POD_BIN:-}" ] && [ -x "$(dirname "$BIN")/grpc_pod" ] && GRPC_POD_BIN=$(dirname "$BIN")/grpc_pod
else
  BUILD+=(-p clovisor --bin clovisor)
  BIN=${CARGO_TARGET_DIR:-target}/release/clovisor
fi
if [ -n "${GRPC_POD_BIN:-}" ]; then
  GRPC_POD=$GRPC_POD_BIN
else
  BUILD+=(-p clovisor-integration-tests --bin grpc_pod)
  GRPC_POD=${CARGO_TARGET_DIR:-target}/release/grpc_pod
fi
if [ "${#BUILD[@]}" -gt 0 ]; then
  echo "== building (release): ${BUILD[*]}"
  cargo build --release --locked "${BUILD[@]}"
fi
# `ip netns exec` runs it from the same directory, but an absolute path reads better in `ps`.
GRPC_POD=$(realpath "$GRPC_POD")
[ -x "$GRPC_POD" ] || { echo "no grpc_pod binary at $GRPC_POD" >&2; exit 1; }

ID=$$
CLIENT=clv-demo-client-$ID
SERVER=clv-demo-server-$ID
BR=clvbr$ID
WORK=$(mktemp -d /tmp/clovisor-demo.XXXXXX)
API=127.0.0.1:19800
METRICS=127.0.0.1:19801
PROM=127.0.0.1:19090
H2_PORT=8080
GRPC_PORT=50051
REDIS_PORT=6379
PG_PORT=5432
PG_BIN=$(find /usr/lib/postgresql -mindepth 2 -maxdepth 2 -name bin -type d 2>/dev/null | sort -V | tail -n 1)
[ -x "$PG_BIN/pg_ctl" ] || { echo "no PostgreSQL server under /usr/lib/postgresql (scripts/install-deps.sh)" >&2; exit 1; }
CLOVISOR_PID=""
OBSERVE_PID=""
PROM_PID=""
DUMPCAP_PID=""
SERVER_PIDS=()
PG_STARTED=""

cleanup() {
  set +e
  [ -n "$OBSERVE_PID" ] && kill "$OBSERVE_PID" 2>/dev/null
  [ -n "$DUMPCAP_PID" ] && kill -INT "$DUMPCAP_PID" 2>/dev/null && wait "$DUMPCAP_PID" 2>/dev/null
  [ -n "$PROM_PID" ] && kill "$PROM_PID" 2>/dev/null && wait "$PROM_PID" 2>/dev/null
  [ -n "$CLOVISOR_PID" ] && kill -TERM "$CLOVISOR_PID" 2>/dev/null && wait "$CLOVISOR_PID" 2>/dev/null
  [ -f "$WORK/nginx.pid" ] && ip netns exec "$SERVER" nginx -c "$WORK/nginx.conf" -s stop 2>/dev/null
  # Deleting a namespace does not stop what runs in it: every server is stopped first.
  for pid in "${SERVER_PIDS[@]}"; do kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null; done
  [ -n "$PG_STARTED" ] && ip netns exec "$SERVER" runuser -u postgres -- \
    "$PG_BIN/pg_ctl" -D "$WORK/pg/data" -m immediate -w stop >/dev/null 2>&1
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

# The other servers, in the same server pod. Each is up (answers its client from the client pod)
# before tracing starts, so what the demo shows below is only the calls it makes.
mkdir -p "$WORK/h2" "$WORK/redis"
echo "hello over h2c" > "$WORK/h2/index.html"
serve() { # name, command...: started in the server pod, output in $WORK/<name>.log
  local name=$1
  shift
  ip netns exec "$SERVER" "$@" >"$WORK/$name.log" 2>&1 &
  SERVER_PIDS+=($!)
}
serve nghttpd nghttpd --no-tls -d "$WORK/h2" "$H2_PORT"
serve grpc "$GRPC_POD" serve "0.0.0.0:$GRPC_PORT"
serve dnsmasq dnsmasq --no-daemon --conf-file=/dev/null --no-resolv --no-hosts --bind-interfaces \
  --user=root --listen-address="$SERVER_IP" --pid-file="$WORK/dnsmasq.pid" --port=53 \
  --local=/shop.test/ --host-record=orders.shop.test,$SERVER_IP,fd00:250::3 --log-queries
# Persistence off; no password, as protected mode would refuse the client pod: the bridge carries
# no address of the host, so only the two pods can reach it.
serve redis redis-server --port "$REDIS_PORT" --bind 0.0.0.0 --protected-mode no --save "" \
  --appendonly no --dir "$WORK/redis"
# PostgreSQL runs as the postgres user (it refuses root), in a cluster of its own under $WORK,
# trusting the pods' subnet.
chmod 711 "$WORK"
install -d -o postgres -g postgres -m 700 "$WORK/pg"
runuser -u postgres -- "$PG_BIN/initdb" -D "$WORK/pg/data" -U postgres --no-sync --no-instructions \
  >"$WORK/initdb.log" 2>&1 || { cat "$WORK/initdb.log"; exit 1; }
echo "host all all 10.250.0.0/24 trust" > "$WORK/pg/data/pg_hba.conf"
PG_STARTED=1
ip netns exec "$SERVER" runuser -u postgres -- "$PG_BIN/pg_ctl" -D "$WORK/pg/data" \
  -l "$WORK/pg/postgres.log" -w -t 30 \
  -o "-p $PG_PORT -c listen_addresses=* -k $WORK/pg -c fsync=off -c shared_buffers=16MB" start \
  >/dev/null || { cat "$WORK/pg/postgres.log"; exit 1; }

in_client() { ip netns exec "$CLIENT" "$@"; }
up() { # what, command...: retried for 10 s
  local what=$1
  shift
  for _ in $(seq 1 50); do "$@" >/dev/null 2>&1 && return 0; sleep 0.2; done
  echo "$what did not answer from the client pod; its log:" >&2
  cat "$WORK/$what.log" >&2 2>/dev/null
  exit 1
}
up nghttpd in_client nghttp -n "http://$SERVER_IP:$H2_PORT/index.html"
up grpc in_client "$GRPC_POD" call "http://$SERVER_IP:$GRPC_PORT" 0
up dnsmasq in_client dig +time=1 +tries=1 +short "@$SERVER_IP" orders.shop.test
up redis in_client redis-cli -h "$SERVER_IP" -p "$REDIS_PORT" PING
up pg/postgres in_client env PGCONNECT_TIMEOUT=2 psql -X -h "$SERVER_IP" -p "$PG_PORT" -U postgres -c "SELECT 1"

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

# The server pod's veth is captured meanwhile (dumpcap), for `clovisor decode` below; into a
# directory of root's own (nginx made $WORK its workers' temp directory, and dumpcap gives up the
# capabilities that would let root write there).
install -d -m 700 "$WORK/capture"
dumpcap -i "v$ID-3" -q -w "$WORK/capture/server.pcapng" >"$WORK/dumpcap.log" 2>&1 &
DUMPCAP_PID=$!
for _ in $(seq 1 100); do
  grep -q 'Capturing on' "$WORK/dumpcap.log" && break
  kill -0 "$DUMPCAP_PID" 2>/dev/null || { cat "$WORK/dumpcap.log"; exit 1; }
  sleep 0.1
done

# The other protocols, between the same two pods. Each exchange is again seen at every point that
# can see it: the client's and server's veths always, the sockets for TCP (DNS over UDP is seen at
# the veths only, docs/protocols.md).
echo "== HTTP/2 (h2c, prior knowledge): nghttp calls nghttpd, two streams on one connection"
in_client nghttp -n -s -H 'traceparent: 00-5d0e2c1f4a3b49c8a2e7f6d5c4b3a291-1a2b3c4d5e6f7081-01' \
  "http://$SERVER_IP:$H2_PORT/index.html" "http://$SERVER_IP:$H2_PORT/missing" |
  sed -n '/^id /,$s/^/  /p'

echo "== gRPC: grpc_pod calls opentelemetry.proto.collector.trace.v1.TraceService/Export on one"
echo "   connection, twice with a span and once empty (answered INVALID_ARGUMENT)"
in_client "$GRPC_POD" call "http://$SERVER_IP:$GRPC_PORT" 2 \
  '00-7e3f1a2b4c5d4e6f8a9b0c1d2e3f4a5b-0f1e2d3c4b5a6978-01'
echo "  3 calls answered as expected"

echo "== DNS: dig asks dnsmasq (zone shop.test) over UDP and TCP"
dns_q() { # dig options...: one line, the question, its status and its answers
  local out
  out=$(in_client dig +time=2 +tries=1 "@$SERVER_IP" "$@")
  printf '  %-40s %-9s %s\n' "dig $*" "$(grep -o 'status: [A-Z]*' <<<"$out" | cut -d' ' -f2)" \
    "$(awk '/^;; ANSWER SECTION/ {a=1; next} /^$/ {a=0} a {printf "%s ", $NF}' <<<"$out")"
}
dns_q orders.shop.test A
dns_q orders.shop.test AAAA
dns_q nowhere.shop.test A
dns_q +tcp orders.shop.test A

echo "== Redis: redis-cli against redis-server (values never leave the collector: SET cart:42 ?)"
r() { in_client redis-cli -h "$SERVER_IP" -p "$REDIS_PORT" "$@"; }
rc() { printf '  %-40s %s\n' "$*" "$(r "$@" 2>&1 | tr '\n' ' ')"; }
rc SET cart:42 '{"sku":42,"qty":1}'
rc GET cart:42
rc HSET user:7 email ada@example.org
rc INCR cart:42
rc DEL cart:42
echo "  four commands pipelined in one write (redis-cli --pipe):"
resp() { # a command as a RESP array of bulk strings
  local a
  printf '*%d\r\n' "$#"
  for a in "$@"; do printf '$%d\r\n%s\r\n' "${#a}" "$a"; done
}
# From a file, so redis-cli reads all four at once and sends them in one write: read from a pipe
# as the shell writes it, the first packet could hold only a piece of the first command, and a
# veth sees only the first packet of a message.
{ resp SET visits:home 0; resp INCR visits:home; resp INCR visits:home; resp GET visits:home; } \
  >"$WORK/pipeline.resp"
r --pipe <"$WORK/pipeline.resp" | sed 's/^/    /'

echo "== PostgreSQL: psql, one connection, four statements (the last fails: no such table)"
in_client env PGCONNECT_TIMEOUT=5 psql -X -h "$SERVER_IP" -p "$PG_PORT" -U postgres -d postgres \
  -c "CREATE TABLE orders (id int PRIMARY KEY, email text, total numeric)" \
  -c "INSERT INTO orders VALUES (1, 'ada@example.org', 42.50), (2, 'bob@example.org', 7)" \
  -c "SELECT id, total FROM orders WHERE email = 'ada@example.org'" \
  -c "SELECT * FROM invoices" 2>&1 | sed 's/^/  /' || true
# Exchanges are exported once their join window (1 s) has closed; dumpcap, stopped, writes only
# what it has read of the kernel's buffer by then.
sleep 2.5
kill -INT "$DUMPCAP_PID" 2>/dev/null || { echo "dumpcap stopped early:" >&2; cat "$WORK/dumpcap.log" >&2; exit 1; }
wait "$DUMPCAP_PID" || true
DUMPCAP_PID=""

echo "== clovisor get services (the analytics: per service, last 5 min)"
"$BIN" get services -o wide | sed 's/^/  /'
echo "== clovisor stats --group-by path,status"
"$BIN" stats --group-by path,status | sed 's/^/  /'
echo "== clovisor get sessions --status 5xx"
"$BIN" get sessions --status 5xx | sed 's/^/  /'
echo "== the API's own description: GET http://$API/api/v1/openapi.json"
curl -fsS "http://$API/api/v1/openapi.json" | jq -r '"  OpenAPI \(.openapi): " + ([.paths | keys[]] | join(" "))'

echo "== traced HTTP/1.x sessions (GET http://$API/api/v1/sessions?protocol=http1)"
curl -fsS "http://$API/api/v1/sessions?protocol=http1&limit=50" | jq -r '
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

# Every other protocol's sessions, a table each with the protocol's own fields. SEEN AT lists the
# observation points joined into the session (socket or pod veth, client or server side).
JQ_DEFS='
def us: (.duration_ns / 1000 | floor | tostring) + "us";
def seen: [.observations[] | .point + "/" + ((.side // "-")[0:1])] | join(",");
def done(f): if .incomplete then "incomplete" else f end;
def grpc_code: ["OK", "CANCELLED", "UNKNOWN", "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
  "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",
  "OUT_OF_RANGE", "UNIMPLEMENTED", "INTERNAL", "UNAVAILABLE", "DATA_LOSS", "UNAUTHENTICATED"][.]
  // tostring;'
table() { # title, protocol (the API's filter), jq header array, jq row array of a session
  echo "== $1 sessions (GET http://$API/api/v1/sessions?protocol=$2)"
  curl -fsS "http://$API/api/v1/sessions?protocol=$2&limit=100" |
    jq -r "$JQ_DEFS ($3), (.sessions | reverse[] | $4 | map(. // \"-\" | tostring)) | @tsv" |
    column -t -s $'\t' | sed 's/^/  /'
}
table HTTP/2 http2 '["METHOD", "PATH", "STATUS", "DURATION", "TRACE ID", "SEEN AT"]' \
  '[.http.method, .http.path, done(.http.status_code), us, .trace.trace_id, seen]'
table gRPC grpc '["SERVICE", "METHOD", "GRPC STATUS", "GRPC MESSAGE", "HTTP", "DURATION", "SEEN AT"]' \
  '[.grpc.service, .grpc.method, done(.grpc.status_code | if . == null then null else grpc_code end),
    .grpc.message, .http.status_code, us, seen]'
table DNS dns '["NAME", "TYPE", "TRANSPORT", "RCODE", "ANSWERS", "ID", "DURATION", "SEEN AT"]' \
  '[.dns.question_name, .dns.question_type, .dns.transport, done(.dns.response_code),
    (.dns.answers | join(" ") | if . == "" then null else . end), .dns.id, us, seen]'
table Redis redis '["COMMAND", "STATEMENT", "REPLY", "ERROR", "DURATION", "SEEN AT"]' \
  '[.database.operation, .database.statement, done(.database.reply_type),
    (if .database.error_code then .database.error_code + " " + (.database.error_message // "") else null end),
    us, seen]'
table PostgreSQL postgresql '["OPERATION", "STATEMENT (REDACTED)", "ROWS", "SQLSTATE", "USER@DB", "DURATION", "SEEN AT"]' \
  '[.database.operation, .database.statement, .database.rows, done(.database.error_code // "ok"),
    ((.database.user // "-") + "@" + (.database.namespace // "-")), us, seen]'

echo "== the same exchanges decoded offline from the server veth's capture: clovisor decode (no BPF)"
"$BIN" decode -q "$WORK/capture/server.pcapng" >"$WORK/decoded.jsonl"
jq -rs '(["PROTOCOL", "EXCHANGES", "EXAMPLE (AN ERROR WHEN ONE WAS SEEN)"] | @tsv), (group_by(.protocol)[] | [.[0].protocol, length,
  (map(select((.grpc.status_code // 0) > 0 or (.http.status_code // 0) >= 400
      or (.dns.response_code // "NOERROR") != "NOERROR" or .database.error_code))
   + . | .[0] | [.http.method, .http.path, (.http.status_code | values | tostring),
    (.grpc.status_code | values | "grpc-status \(.)"), .dns.question_name, .dns.question_type,
    .dns.response_code, .database.statement, .database.error_code] | map(values) | join(" "))]
  | @tsv)' "$WORK/decoded.jsonl" |
  column -t -s $'\t' | sed 's/^/  /'

echo "== request metrics per protocol (http://$METRICS/metrics)"
METRICS_TEXT=$(curl -fsS "http://$METRICS/metrics")
grep -E '^clovisor_(http|db|dns)_requests_total' <<<"$METRICS_TEXT" | sed 's/^/  /'
echo "== connection, loss and probe metrics"
grep -E '^clovisor_flow_connections_total|^clovisor_flow_rtt_seconds_(sum|count)|^clovisor_dropped_total|events_emitted|^clovisor_probe_ring_events_total' <<<"$METRICS_TEXT" | head -30 | sed 's/^/  /'

# What the demo provoked must be there, each protocol with its error case: the demo fails (after
# showing everything and cleaning up) rather than print empty tables.
echo "== checks"
FAILED=()
SESSIONS=$(curl -fsS "http://$API/api/v1/sessions?limit=1000")
expect() { # what, jq condition on a session
  local n
  n=$(jq "[.sessions[] | select($2)] | length" <<<"$SESSIONS")
  if [ "$n" -gt 0 ]; then echo "  ok      $1 ($n)"; else echo "  MISSING $1"; FAILED+=("$1"); fi
}
expect "HTTP/1.x sessions" '.protocol == "http/1.1" and .http.status_code == 200'
expect "an HTTP/1.x 503" '.protocol == "http/1.1" and .http.status_code == 503'
expect "an HTTP/2 200" '.protocol == "http/2" and .http.status_code == 200'
expect "an HTTP/2 404" '.protocol == "http/2" and .http.status_code == 404'
expect "a gRPC call answered OK" '.protocol == "grpc" and .grpc.status_code == 0'
expect "a gRPC call answered INVALID_ARGUMENT" '.protocol == "grpc" and .grpc.status_code == 3'
expect "a DNS answer over UDP" '.dns.transport == "udp" and .dns.response_code == "NOERROR" and .dns.answer_count > 0'
expect "a DNS NXDOMAIN" '.dns.question_name == "nowhere.shop.test" and .dns.response_code == "NXDOMAIN"'
expect "a DNS answer over TCP" '.dns.transport == "tcp" and .dns.response_code == "NOERROR"'
expect "a Redis command with its reply" '.protocol == "redis" and .database.reply_type == "simple_string"'
expect "a Redis error reply" '.protocol == "redis" and .database.reply_type == "error"'
expect "pipelined Redis commands" '.protocol == "redis" and (.id | test("[.][0-9]+$"))'
expect "a PostgreSQL query with rows" '.protocol == "postgresql" and .database.operation == "SELECT" and .database.rows == 1'
expect "a PostgreSQL error (42P01)" '.protocol == "postgresql" and .database.error_code == "42P01"'
expect "no literal left in a statement" '(.database.statement // "" | test("ada@example.org|42[.]50|sku")) | not'
metric() { # what, pattern
  if grep -qE "$2" <<<"$METRICS_TEXT"; then echo "  ok      $1"; else echo "  MISSING $1"; FAILED+=("$1"); fi
}
for p in http1 http2 grpc; do
  metric "$p request metrics" "^clovisor_http_requests_total[{][^}]*protocol=\"$p\""
done
for s in redis postgresql; do
  metric "$s request metrics" "^clovisor_db_requests_total[{][^}]*system=\"$s\""
done
metric "dns request metrics" '^clovisor_dns_requests_total[{][^}]*response_code="NXDOMAIN"'
for p in http/2 grpc dns redis postgresql; do
  if jq -se --arg p "$p" 'any(.[]; .protocol == $p)' "$WORK/decoded.jsonl" >/dev/null; then
    echo "  ok      $p decoded from the capture"
  else
    echo "  MISSING $p decoded from the capture"; FAILED+=("$p decoded from the capture")
  fi
done

echo "== the Grafana dashboards' queries (manifests/overlays/grafana), run by Prometheus at $PROM"
# Their rates need counters that grew between two scrapes: the calls above came in one burst,
# each route's series first scraped at its final count. A few more calls over three seconds.
for _ in $(seq 1 6); do
  for path in / /missing /boom; do
    ip netns exec "$CLIENT" curl -s -o /dev/null "http://$SERVER_IP$path" || true
  done
  ip netns exec "$CLIENT" curl -s -o /dev/null -d '{"sku":42}' -H 'content-type: application/json' \
    "http://$SERVER_IP/api/orders" || true
  sleep 0.5
done
# The join window (1 s) closes before they are counted; then a scrape.
sleep 3
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

if [ "${#FAILED[@]}" -gt 0 ]; then
  echo "== DEMO FAILED: not traced: $(IFS=';'; echo "${FAILED[*]}")" >&2
  exit 1
fi
echo "== every protocol the demo exercised was traced"
