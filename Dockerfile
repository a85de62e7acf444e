# The same image as `bash scripts/build-image.sh` (which needs no base image from a registry),
# for users with Docker: the release build on Debian 12, the binary on distroless `cc` (glibc,
# libgcc, CA certificates, a passwd entry for 65532), numeric non-root user, the same
# entrypoint, command and OCI labels. Base images are pinned by digest (Dependabot updates
# them, .github/dependabot.yml); the Rust toolchain by version.
#
#   docker build --build-arg REVISION=$(git rev-parse HEAD) -t kmsroute:0.1.0 .
#   docker buildx build --platform linux/amd64,linux/arm64 ...   # multi-arch

FROM debian:bookworm-slim@sha256:7b140f374b289a7c2befc338f42ebe6441b7ea838a042bbd5acbfca6ec875818 AS build
ARG RUST_VERSION=1.95.0
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev git \
 && rm -rf /var/lib/apt/lists/*
RUN curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain "${RUST_VERSION}"
ENV PATH=/root/.cargo/bin:$PATH
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src ./src
COPY examples ./examples
ARG REVISION=unknown
ARG BUILD_DATE=unknown
ENV KMSROUTE_GIT_COMMIT=${REVISION} KMSROUTE_BUILD_DATE=${BUILD_DATE}
RUN cargo build --release --locked --bin kmsroute

FROM gcr.io/distroless/cc-debian12:nonroot@sha256:9dac0a79194e45a7da0158a9c6da57b217585af0786db3845d1f0ec1a0dd182f
ARG VERSION=0.1.0
ARG REVISION=unknown
ARG BUILD_DATE=unknown
LABEL org.opencontainers.image.source="https://github.com/kmsroute/kmsroute" \
      org.opencontainers.image.url="https://github.com/kmsroute/kmsroute" \
      org.opencontainers.image.documentation="https://github.com/kmsroute/kmsroute#readme" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.created="${BUILD_DATE}" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.title="kmsroute" \
      org.opencontainers.image.description="Declarative, self-healing KMS activation routes for force-tunneled Azure subnets" \
      org.opencontainers.image.vendor="kmsroute" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /src/target/release/kmsroute /usr/local/bin/kmsroute
COPY LICENSE /usr/share/doc/kmsroute/LICENSE
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kmsroute"]
CMD ["run"]
