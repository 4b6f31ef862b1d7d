# Build stage: compiles the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock ./
COPY src ./src
RUN cargo build --release --locked

# Runtime stage: the binary alone, run as an unprivileged user.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 hookrelay
COPY --from=build /src/target/release/hookrelay /usr/local/bin/hookrelay
USER hookrelay
ENV HOOKRELAY_LISTEN=0.0.0.0:8080
EXPOSE 8080
ENTRYPOINT ["hookrelay"]
CMD ["serve", "--config", "/etc/hookrelay/hookrelay.toml"]
