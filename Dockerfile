# Build: the same release build CI uses (`cargo build --release --locked`).
FROM rust:1.95-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY examples ./examples
RUN cargo build --release --locked --bin kmsroute

# Run: distroless, no shell, numeric non-root user.
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/kmsroute /usr/local/bin/kmsroute
USER 65532:65532
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/kmsroute"]
CMD ["run"]
