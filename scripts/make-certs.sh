#!/usr/bin/env bash
# Makes a CA and the leaf certificates of the gRPC hops with openssl, laid out as the Secrets
# the manifests mount (tls.crt, tls.key, ca.crt per component) — for clusters without
# cert-manager, for all-in-one's OTLP hop, and for the tests.
#
#   scripts/make-certs.sh OUTDIR [--nodes node-1,node-2] [--days 90] [--kubectl]
#
# Writes OUTDIR/ca.{crt,key} and OUTDIR/<component>/{tls.crt,tls.key,ca.crt} for probe,
# collector, correlator, jaeger and redis; with --nodes also OUTDIR/probe-<node>/ whose certificate
# names <node>.probe.clovisor (for the collector's --probe-identity node). Server certificates
# also name localhost and 127.0.0.1 (tests, one host). With --kubectl, prints the commands that
# create the Secrets: the probe's in namespace clovisor-probe, the others in clovisor. An existing OUTDIR/ca.{crt,key} is reused, so
# running it again re-issues the leaves under the same CA (rotation, docs/security.md).
# Keep ca.key offline: whoever holds it can mint any identity.
set -euo pipefail

die() { printf 'make-certs: %s\n' "$*" >&2; exit 1; }
[ $# -ge 1 ] || die "usage: $0 OUTDIR [--nodes a,b] [--days N] [--kubectl]"
out=$1
shift
nodes=""
days=90
kubectl=0
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) nodes=${2:?--nodes needs a list}; shift 2 ;;
    --days) days=${2:?--days needs a number}; shift 2 ;;
    --kubectl) kubectl=1; shift ;;
    *) die "unknown argument $1" ;;
  esac
done
command -v openssl >/dev/null 2>&1 || die "openssl is missing (apt-get install openssl)"
mkdir -p "$out"
umask 077

if [ ! -s "$out/ca.key" ] || [ ! -s "$out/ca.crt" ]; then
  openssl req -x509 -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$out/ca.key" -out "$out/ca.crt" -days 3650 -subj "/CN=clovisor-ca" \
    -addext "basicConstraints=critical,CA:TRUE" \
    -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# leaf DIR CN SANS EKU
leaf() {
  local dir=$out/$1 cn=$2 sans=$3 eku=$4 ext
  mkdir -p "$dir"
  ext=$(mktemp)
  printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=critical,CA:FALSE\n' \
    "$sans" "$eku" >"$ext"
  openssl req -new -nodes -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
    -keyout "$dir/tls.key.new" -out "$dir/tls.csr" -subj "/CN=$cn" 2>/dev/null
  openssl x509 -req -in "$dir/tls.csr" -CA "$out/ca.crt" -CAkey "$out/ca.key" -CAcreateserial \
    -out "$dir/tls.crt.new" -days "$days" -extfile "$ext" 2>/dev/null
  rm -f "$ext" "$dir/tls.csr"
  cp "$out/ca.crt" "$dir/ca.crt.new"
  # Each file replaced in one rename: a process re-reading them sees old or new, never half.
  mv "$dir/tls.key.new" "$dir/tls.key"
  mv "$dir/tls.crt.new" "$dir/tls.crt"
  mv "$dir/ca.crt.new" "$dir/ca.crt"
  chmod 0644 "$dir/tls.crt" "$dir/ca.crt"
}

server_sans() { printf 'DNS:%s,DNS:%s.clovisor.svc,DNS:%s.clovisor.svc.cluster.local,DNS:localhost,IP:127.0.0.1,IP:::1' "$1" "$1" "$1"; }

leaf probe clovisor-probe "DNS:clovisor-probe" clientAuth
leaf collector clovisor-collector "$(server_sans clovisor-collector)" serverAuth,clientAuth
leaf correlator clovisor-correlator "$(server_sans clovisor-correlator)" serverAuth,clientAuth
leaf jaeger jaeger "$(server_sans jaeger)" serverAuth
leaf redis redis "$(server_sans redis)" serverAuth
IFS=, read -r -a node_list <<<"$nodes"
for node in "${node_list[@]}"; do
  [ -n "$node" ] || continue
  leaf "probe-$node" "$node.probe.clovisor" "DNS:$node.probe.clovisor,DNS:clovisor-probe" clientAuth
done

if [ "$kubectl" = 1 ]; then
  for c in probe collector correlator jaeger redis; do
    name=clovisor-$c-tls
    ns=clovisor
    [ "$c" = probe ] && ns=clovisor-probe
    printf 'kubectl -n %s create secret generic %s --type=kubernetes.io/tls --from-file=tls.crt=%s --from-file=tls.key=%s --from-file=ca.crt=%s\n' \
      "$ns" "$name" "$out/$c/tls.crt" "$out/$c/tls.key" "$out/$c/ca.crt"
  done
fi
