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

cargo fmt --all -- --check
find bpf \( -name '*.c' -o -name '*.h' \) -print0 | xargs -0 clang-format --dry-run -Werror
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked
bash scripts/validate-manifests.sh
