# syntax=docker/dockerfile:1
# One Dockerfile, one target per binary (hack/build-images.sh builds them all):
#   docker build --target operator -t ghcr.io/sovereign-cloud/sovereign-operator:TAG .
# Runtime images are distroless (glibc, CA roots, no shell, no package manager) and run as the
# image's non-root user 65532.

FROM docker.io/library/rust:1.95-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked \
      -p sovereign-operator --bin sovereign-operator --bin kubectl-sovereign \
      -p sovereign-agent --bin sovereign-agent \
      -p sovereign-node-agent --bin sovereign-node \
 && mkdir -p /out \
 && cp target/release/sovereign-operator target/release/kubectl-sovereign \
       target/release/sovereign-agent target/release/sovereign-node /out/

FROM gcr.io/distroless/cc-debian12:nonroot AS operator
COPY --from=build /out/sovereign-operator /usr/local/bin/sovereign-operator
# Its allocator (jemalloc) is configured when it is built (.cargo/config.toml).
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sovereign-operator"]

FROM gcr.io/distroless/cc-debian12:nonroot AS agent
COPY --from=build /out/sovereign-agent /usr/local/bin/sovereign-agent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sovereign-agent"]

FROM gcr.io/distroless/cc-debian12:nonroot AS node
COPY --from=build /out/sovereign-node /usr/local/bin/sovereign-node
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/sovereign-node"]

FROM gcr.io/distroless/cc-debian12:nonroot AS kubectl-sovereign
COPY --from=build /out/kubectl-sovereign /usr/local/bin/kubectl-sovereign
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubectl-sovereign"]
