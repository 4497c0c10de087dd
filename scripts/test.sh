#!/usr/bin/env bash
# Runs every test: formatting, lints, unit tests and the privileged integration tests
# (real BPF on veths in network namespaces). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
if ! command -v cargo >/dev/null 2>&1; then export PATH="$HOME/.cargo/bin:$PATH"; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "the integration tests load BPF programs and create network namespaces: run as root" >&2
  exit 1
fi

# Each test's lab deletes its namespaces and veths when it ends, failed or not. A test process
# that is killed (a timeout, a signal) cannot: remove what the tests made and left, and only that
# (the test pods' names start with clv-, their host veths with clv, the lab bridges with clb).
test_objects() {
  { ip netns list 2>/dev/null | awk '{print "ns " $1}' | grep '^ns clv-'
    ip -o link show 2>/dev/null | awk -F': ' '{sub(/@.*/, "", $2); print "link " $2}' | grep -E '^link (clv|clb)'
  } | sort || true
}
before_tests=$(test_objects)
remove_left_objects() {
  comm -13 <(printf '%s\n' "$before_tests") <(test_objects) | while read -r kind name; do
    echo "removing a test's leftover $kind $name" >&2
    if [ "$kind" = ns ]; then ip netns del "$name" 2>/dev/null || true; else ip link del "$name" 2>/dev/null || true; fi
  done
}
trap remove_left_objects EXIT

# One build, run once: incremental compilation's caches would add about as much disk again as
# the build itself (3 GiB) and the shared machines' disks are at times nearly full.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
echo "free disk for the build and the tests' servers: $(df -h --output=avail . | tail -1 | tr -d ' ')"

cargo fmt --all -- --check
find bpf \( -name '*.c' -o -name '*.h' \) -print0 | xargs -0 clang-format --dry-run -Werror
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
bash scripts/validate-manifests.sh
