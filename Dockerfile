# hookrelay container image.
#
#   docker build -t hookrelay .
#   docker run -p 8080:8080 -v "$PWD/hookrelay.toml:/etc/hookrelay/hookrelay.toml:ro" \
#       -e MAKINI_WEBHOOK_SECRET -v hookrelay-data:/var/lib/hookrelay hookrelay
#
# Check a config with the image before deploying it:
#   docker run --rm -v "$PWD/hookrelay.toml:/etc/hookrelay/hookrelay.toml:ro" \
#       -e MAKINI_WEBHOOK_SECRET hookrelay check-config /etc/hookrelay/hookrelay.toml

# Build stage: compiles the release binary.
FROM rust:1-slim-bookworm AS build
WORKDIR /src

# Dependencies first, against placeholder sources, so this layer stays cached until
# Cargo.toml or Cargo.lock changes. The placeholder's own build records are removed so the
# real sources below are always compiled.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src target/release/.fingerprint/hookrelay-* target/release/deps/*hookrelay*

COPY src ./src
RUN cargo build --release --locked

# Runtime stage: the binary and the CA bundle the NATS client reads for TLS, run as an
# unprivileged user. glibc comes with the base image.
FROM debian:bookworm-slim
RUN useradd --system --uid 10001 --user-group --no-log-init \
        --home-dir /nonexistent --no-create-home --shell /usr/sbin/nologin hookrelay \
    && install --directory --owner 10001 --group 10001 --mode 0750 /var/lib/hookrelay
COPY --from=build /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/ca-certificates.crt
COPY --from=build /src/target/release/hookrelay /usr/local/bin/hookrelay

# Every setting can also come from HOOKRELAY_* variables, and secrets from env:NAME or
# file:PATH references in the config.
ENV HOOKRELAY_CONFIG=/etc/hookrelay/hookrelay.toml \
    HOOKRELAY_LISTEN=0.0.0.0:8080 \
    HOOKRELAY_DATA_DIR=/var/lib/hookrelay \
    HOOKRELAY_LOG_FORMAT=json

# The embedded store's database, used when no Redis URL is set. It lives on a volume so it
# survives the container; with Redis the directory stays empty.
VOLUME ["/var/lib/hookrelay"]
WORKDIR /var/lib/hookrelay
# Numeric, so Kubernetes can enforce runAsNonRoot without reading /etc/passwd.
USER 10001:10001
EXPOSE 8080

# Probes /healthz on 127.0.0.1:8080; set HOOKRELAY_HEALTHCHECK_URL as well when
# HOOKRELAY_LISTEN moves to another port.
HEALTHCHECK --interval=15s --timeout=5s --start-period=10s --retries=3 \
    CMD ["hookrelay", "healthcheck", "--timeout", "3s"]

ENTRYPOINT ["hookrelay"]
CMD ["serve"]
