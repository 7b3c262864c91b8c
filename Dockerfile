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
# security context expects. Nothing is downloaded besides crates and Debian packages.
#
# Health: the services answer grpc.health.v1, which Kubernetes probes natively. For docker
# compose, which can only run a command inside the container, `--build-arg
# HEALTHCHECK_TOOL=bash` adds Debian's statically linked bash (bash-static, 2 MB) so that
# the compose health check can test that the gRPC port accepts connections
# (`bash -c 'exec 3<>/dev/tcp/127.0.0.1/50051'`; a service binds it only once its
# database is connected and migrated). The default, `none`, adds nothing: the images
# Kubernetes runs have no shell.

ARG RUST_IMAGE=rust:1-slim-bookworm
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot
ARG HEALTHCHECK_TOOL=none

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
    && find target/release -maxdepth 1 -type f -executable -exec cp {} /out/ \; \
    && mkdir -p /empty-data

# What HEALTHCHECK_TOOL adds to the service images under /usr/local/bin.
FROM scratch AS healthcheck-none
WORKDIR /healthcheck

FROM ${RUST_IMAGE} AS healthcheck-bash
RUN apt-get update \
    && apt-get install -y --no-install-recommends bash-static \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /healthcheck \
    && cp /bin/bash-static /healthcheck/bash

FROM healthcheck-${HEALTHCHECK_TOOL} AS healthcheck

FROM ${RUNTIME_IMAGE} AS base
COPY --from=healthcheck /healthcheck/ /usr/local/bin/
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

# Every service in one process on one port, storing in an embedded database under /data
# (mount a volume there: a new named volume takes the directory's owner, uid 10001).
FROM base AS chat-server
COPY --from=builder --chown=10001:10001 /empty-data /data
COPY --from=builder /out/chat-server /usr/local/bin/app
VOLUME /data
ENTRYPOINT ["/usr/local/bin/app"]
CMD ["--listen", "0.0.0.0:50051", "--data", "/data"]

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
