# syntax=docker/dockerfile:1.7
#
# One Dockerfile for every binary of the workspace. Pick one with its target:
#
#   docker build --target auth-service -t ghcr.io/grpc-chat/auth-service:0.1.0 .
#
# Targets: auth-service, chat-service, notification-service, saga-orchestrator,
# chat-server, chat, chat-operator. Or pass `--build-arg BINARY=<name>` to the default
# (last) target, `runtime`.
#
# Layers: cargo-chef compiles the dependencies from the lockfile alone, so editing the
# code only rebuilds the workspace crates; BuildKit cache mounts keep the registry and the
# target directory between builds. protoc comes from the protoc-bin-vendored crate, so the
# build needs no system packages beyond the Rust image. The runtime image is distroless
# (glibc, CA certificates, no shell) and runs as uid 10001, the uid the operator's pod
# security context expects.

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG GRPC_HEALTH_PROBE_VERSION=v0.4.40

FROM ${RUST_IMAGE} AS chef
RUN cargo install cargo-chef --locked --version ^0.1
WORKDIR /src

# The dependency graph only: changes when Cargo.toml/Cargo.lock change.
FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# Every binary in one build: the per-binary targets below share this stage.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release --locked --workspace --bins \
    && mkdir -p /out \
    && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \;

# `grpc_health_probe`, for health checks outside Kubernetes (docker compose); Kubernetes
# itself probes with its built-in gRPC probe.
FROM ${RUST_IMAGE} AS health-probe
ARG GRPC_HEALTH_PROBE_VERSION
ARG TARGETARCH=amd64
ADD --chmod=755 https://github.com/grpc-ecosystem/grpc-health-probe/releases/download/${GRPC_HEALTH_PROBE_VERSION}/grpc_health_probe-linux-${TARGETARCH} /grpc_health_probe

FROM ${RUNTIME_IMAGE} AS base
COPY --from=health-probe /grpc_health_probe /usr/local/bin/grpc_health_probe
USER 10001:10001
ENV LOG_FORMAT=json
# gRPC and Prometheus.
EXPOSE 50051 9090

FROM base AS auth-service
COPY --from=builder /out/auth-service /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]

FROM base AS chat-service
COPY --from=builder /out/chat-service /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]

FROM base AS notification-service
COPY --from=builder /out/notification-service /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]

FROM base AS saga-orchestrator
COPY --from=builder /out/saga-orchestrator /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]

FROM base AS chat-server
COPY --from=builder /out/chat-server /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]

FROM base AS chat
COPY --from=builder /out/chat /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]

FROM ${RUNTIME_IMAGE} AS chat-operator
COPY --from=builder /out/chat-operator /usr/local/bin/chat-operator
USER 10001:10001
ENV LOG_FORMAT=json
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/chat-operator"]
CMD ["run"]

# Default target: `--build-arg BINARY=<name>`.
FROM base AS runtime
ARG BINARY=chat-server
COPY --from=builder /out/${BINARY} /usr/local/bin/app
ENTRYPOINT ["/usr/local/bin/app"]
