# One image with the service binaries; the container command picks one:
#   /usr/local/bin/gateway, /usr/local/bin/worker, /usr/local/bin/local-scheduler,
#   /usr/local/bin/dashboard
#
# Two ways to build it (both BuildKit; no `# syntax=` line, so no frontend image is pulled):
#   make image          the default target: compiled here in the builder image, for releases
#   make image-offline  target `prebuilt`: binaries built on the host (`cargo build --profile
#                       image`) copied onto the runtime base; with RUNTIME_IMAGE set to the
#                       offline stand-in (.ci/image/offline-base) it needs no registry at all.
# The bases are build arguments pinned by digest; protoc is vendored, so the builder needs no
# apt packages.

ARG BUILDER_IMAGE=docker.io/library/rust:1.95-bookworm@sha256:6258907abe69656e41cd992e0b705cdcfabcbbe3db374f92ed2d47121282d4a1
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f

# checkov:skip=CKV_DOCKER_7:both bases are build arguments pinned by digest (the ARGs above)
FROM ${BUILDER_IMAGE} AS build
WORKDIR /src
COPY . .
# The registry and target caches survive between builds, so only changed crates recompile.
# The `image` profile is release without debug info, stripped (18 MB a binary instead of 83).
RUN --mount=type=cache,target=/usr/local/cargo/registry,sharing=locked \
    --mount=type=cache,target=/src/target,sharing=locked \
    cargo build --profile image --locked -p gateway -p worker -p local-scheduler -p dashboard \
    && mkdir -p /out \
    && cp target/image/gateway target/image/worker target/image/local-scheduler target/image/dashboard /out/

# Distroless: glibc and libgcc only, no shell, no package manager, non-root user 65532.
# No HEALTHCHECK: Kubernetes ignores it and uses the chart's probes, and distroless has no shell
# or client to run one.
# checkov:skip=CKV_DOCKER_2:health is checked by the chart's startup, liveness and readiness probes
FROM ${RUNTIME_IMAGE} AS runtime
ARG VERSION=0.1.0
LABEL org.opencontainers.image.title="async-http-api" \
      org.opencontainers.image.description="Async request-reply HTTP API on the Durable Task Scheduler: gateway, worker, local scheduler, dashboard" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="MIT"
USER 65532:65532
# gateway 8000 and admin 9092; local scheduler gRPC 8080 and admin 8081; worker admin 9091;
# dashboard 8082.
EXPOSE 8000 8080 8081 8082 9091 9092
ENTRYPOINT ["/usr/local/bin/gateway"]

# Binaries built on the host: the build context is a directory holding them in `bin/`.
FROM runtime AS prebuilt
COPY bin/ /usr/local/bin/

# The default target, last: compiled in the builder.
FROM runtime AS image
COPY --from=build /out/ /usr/local/bin/
