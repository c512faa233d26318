# syntax=docker/dockerfile:1
# Images of the two zeroscale binaries, one build target each:
#   docker build --target operator  -t zeroscale/operator:dev .
#   docker build --target activator -t zeroscale/activator:dev .
# (hack/kind-e2e.sh builds both.) The example Functions have their own Dockerfiles in
# examples/<name>/.
#
# Needs BuildKit (Docker's default builder since 23.0): the cargo registry and target/
# are cache mounts, so a rebuild after a source change recompiles only the workspace's
# own crates, never the dependencies, and works whatever crates the workspace gains.

ARG RUST_IMAGE=rust:1.95-slim-bookworm
# glibc and libgcc from Debian 12 (the build stage's release), CA certificates, a
# nonroot user (65532) and nothing else: no shell, no package manager.
ARG RUNTIME_IMAGE=gcr.io/distroless/cc-debian12:nonroot

FROM ${RUST_IMAGE} AS build
WORKDIR /src
# Every workspace member's manifest must be present for cargo to load the workspace,
# so the whole context goes in (.dockerignore keeps target/ and other bulk out).
COPY . .
# Both binaries in one build: they share almost every dependency.
RUN --mount=type=cache,id=zeroscale-cargo-registry,target=/usr/local/cargo/registry \
    --mount=type=cache,id=zeroscale-cargo-git,target=/usr/local/cargo/git \
    --mount=type=cache,id=zeroscale-target,target=/src/target \
    CARGO_PROFILE_RELEASE_STRIP=symbols \
    cargo build --release --locked -p zeroscale-operator -p zeroscale-activator \
    && mkdir -p /out \
    && cp target/release/zeroscale-operator target/release/zeroscale-activator /out/

FROM ${RUNTIME_IMAGE} AS operator
COPY --from=build /out/zeroscale-operator /usr/local/bin/zeroscale-operator
# By number, so that a pod's runAsNonRoot can verify it.
USER 65532:65532
# The admin server: /metrics, /healthz, /readyz.
EXPOSE 9090
ENTRYPOINT ["/usr/local/bin/zeroscale-operator"]
CMD ["run"]

FROM ${RUNTIME_IMAGE} AS activator
COPY --from=build /out/zeroscale-activator /usr/local/bin/zeroscale-activator
USER 65532:65532
# 8080: callers inside the cluster; 8081: the public listener when enabled;
# 9090: /metrics, /healthz, /readyz, /stats.
EXPOSE 8080 8081 9090
ENTRYPOINT ["/usr/local/bin/zeroscale-activator"]
