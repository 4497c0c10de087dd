# syntax=docker/dockerfile:1
# clovisor all-in-one: probe, collector and correlator in one process, for one Linux host:
#   docker run --privileged --network host -v /run/netns:/run/netns:rslave clovisor/all-in-one:0.1.0
# Build from the repository root (the build needs the whole workspace):
#   docker build -f docker/all-in-one.Dockerfile -t clovisor/all-in-one:0.1.0 .
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
    cargo build --release --locked -p clovisor \
 && mkdir -p /out \
 && install -m 0755 -t /out target/release/clovisor

FROM debian:${DEBIAN_RELEASE}-slim
COPY --from=builder /out/ /usr/local/bin/
# Same privileges as the probe (BPF, tc, setns into network namespaces): root.
# hadolint ignore=DL3002
USER 0:0
# REST API, /metrics of all components.
EXPOSE 9800 9801
ENTRYPOINT ["/usr/local/bin/clovisor"]
CMD ["all-in-one", "--api-listen", "0.0.0.0:9800", "--metrics-listen", "0.0.0.0:9801"]
