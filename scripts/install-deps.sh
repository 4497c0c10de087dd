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
  stunnel4 openssl                                    # TLS tunnel between test pods (socket point tests); scripts/make-certs.sh
  tshark                                              # decoder oracle in tests
  python3-venv                                        # offline manifest validation tools (scripts/validate-manifests.sh)
  redis-server                                        # live configuration tests
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
