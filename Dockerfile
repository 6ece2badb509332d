# syntax=docker/dockerfile:1
# One image with the three service binaries; the container command picks one:
#   /usr/local/bin/gateway, /usr/local/bin/worker, /usr/local/bin/local-scheduler
# Build: make image (BuildKit). protoc is vendored, so the builder needs no apt packages.

ARG RUST_VERSION=1.95

FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds, so only changed crates recompile.
# Stripped: the release profile keeps line tables for profiling (83 MB per binary); the image
# needs none (18 MB).
ENV CARGO_PROFILE_RELEASE_DEBUG=false \
    CARGO_PROFILE_RELEASE_STRIP=symbols
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --release --locked -p gateway -p worker -p local-scheduler -p dashboard \
    && mkdir -p /out \
    && cp target/release/gateway target/release/worker target/release/local-scheduler target/release/dashboard /out/

# Distroless: glibc and libgcc only, no shell, no package manager, non-root user 65532.
# No HEALTHCHECK: Kubernetes ignores it and uses the chart's probes, and distroless has no shell
# or client to run one.
# checkov:skip=CKV_DOCKER_2:health is checked by the chart's startup, liveness and readiness probes
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="async-http-api" \
      org.opencontainers.image.description="Async request-reply HTTP API on the Durable Task Scheduler: gateway, worker, local scheduler, dashboard" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
COPY --from=build /out/ /usr/local/bin/
USER 65532:65532
# gateway 8000 and admin 9092; local scheduler gRPC 8080 and admin 8081; worker admin 9091;
# dashboard 8082.
EXPOSE 8000 8080 8081 8082 9091 9092
ENTRYPOINT ["/usr/local/bin/gateway"]
