#!/usr/bin/env bash
# Coverage-guided fuzzing on stable Rust: builds clovisor-fuzz with LLVM SanitizerCoverage
# (inline 8-bit edge counters, through stable codegen flags) and runs it; the fuzzer reads the
# counters itself (fuzz/src/coverage.rs) and keeps every input that reaches new coverage.
#
#   scripts/fuzz-coverage.sh [clovisor-fuzz arguments]     e.g. http1 --seconds 60
#   scripts/fuzz-coverage.sh http1 --seconds 60 --no-feedback   # same build, coverage only measured
#
# `--target` is the host's triple so that RUSTFLAGS reach only what runs in the fuzzer (not build
# scripts or proc macros); the instrumented build lands in $CARGO_TARGET_DIR/<triple>/debug,
# apart from the ordinary one. Debug profile: overflow checks stay on.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v cargo >/dev/null 2>&1; then export PATH="$HOME/.cargo/bin:$PATH"; fi
host=$(rustc -vV | sed -n 's/^host: //p')
[ -n "$host" ] || { echo "fuzz-coverage: cannot tell the host triple from rustc -vV" >&2; exit 1; }
export RUSTFLAGS="${RUSTFLAGS:-} -C passes=sancov-module -C llvm-args=-sanitizer-coverage-level=3 -C llvm-args=-sanitizer-coverage-inline-8bit-counters"
exec cargo run --locked -p clovisor-fuzz --target "$host" -- "$@"
