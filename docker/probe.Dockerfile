# syntax=docker/dockerfile:1
# clovisor-probe: loads the tc capture programs on a node and streams raw records to the collector.
# Also ships the `clovisor` command, for `kubectl exec ... -- clovisor inspect` on a node.
# Build from the repository root (the build needs the whole workspace):
#   docker build -f docker/probe.Dockerfile -t clovisor/probe:0.1.0 .
# Rust 1.88 is the workspace's minimum; builder and runtime share Debian 12's glibc.
ARG RUST_VERSION=1.95
ARG DEBIAN_RELEASE=bookworm

FROM rust:${RUST_VERSION}-${DEBIAN_RELEASE} AS builder
# Debian's own versions, whatever the point release: pinning them would break the build at
# every security update (hadolint DL3008 is ignored for that reason, see .hadolint.yaml).
RUN apt-get update \
 && apt-get install -y --no-install-recommends clang libbpf-dev libclang-dev protobuf-compiler \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The cache mounts keep crates and build output between builds; the binaries are copied out
# of the cached target directory in the same step.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p clovisor-probe -p clovisor \
 && mkdir -p /out \
 && install -m 0755 -t /out target/release/clovisor-probe target/release/clovisor

FROM debian:${DEBIAN_RELEASE}-slim
COPY --from=builder /out/ /usr/local/bin/
# The probe loads BPF programs, attaches them to host interfaces and enters pod network
# namespaces: it needs CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN and CAP_SYS_ADMIN, and Kubernetes
# grants added capabilities only to uid 0. The DaemonSet drops every other capability and
# keeps the root filesystem read-only.
# hadolint ignore=DL3002
USER 0:0
# /metrics and /healthz.
EXPOSE 9801
ENTRYPOINT ["/usr/local/bin/clovisor-probe"]
