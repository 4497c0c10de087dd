# syntax=docker/dockerfile:1
# clovisor-correlator: keeps sessions, exports OTLP spans, serves REST and Prometheus metrics.
# Build from the repository root (the build needs the whole workspace):
#   docker build -f docker/correlator.Dockerfile -t clovisor/correlator:0.1.0 .
# Rust 1.88 is the workspace's minimum; builder and runtime share Debian 12's glibc.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# Debian's own versions, whatever the point release: pinning them would break the build at
# every security update (hadolint DL3008 is ignored for that reason, see .hadolint.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep crates and build output between builds; the binaries are copied out
# of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p clovisor-correlator \
 && mkdir -p /out \
 && install -m 0755 -t /out target/release/clovisor-correlator

FROM debian:${DEBIAN_RELEASE}-slim
COPY --from=builder /out/ /usr/local/bin/
# Needs no privilege at all: an unprivileged uid/gid with no account, as the manifests run it.
USER 65532:65532
# gRPC from collectors, REST API, /metrics and /healthz.
EXPOSE 50052 9800 9801
ENTRYPOINT ["/usr/local/bin/clovisor-correlator"]
