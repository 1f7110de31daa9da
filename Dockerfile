# Herald in a container: a multi-stage build (the toolchain stays in the first stage).
#   docker build -t herald .
#   docker run -p 1234:1234 -p 5678:5678 -p 2121:2121 -p 2120:2120 \
#     -v "$PWD/herald.toml:/etc/herald/herald.toml:ro" herald
# The mounted herald.toml must listen on 0.0.0.0 (ws = "0.0.0.0:1234", …) and, since the
# WebSocket port is then not on loopback, set auth (hmac or jwt with auth_secret, or "uid" to
# accept that any client may claim any uid). Logs go to stderr (`docker logs`).

FROM rust:1.88-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release -p herald

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/herald --create-home herald \
    && mkdir -p /etc/herald
COPY --from=build /src/target/release/herald /usr/local/bin/herald
COPY scripts/herald.toml.example /etc/herald/herald.toml
USER herald
WORKDIR /var/lib/herald
EXPOSE 1234 5678 2121 2120
STOPSIGNAL SIGTERM
CMD ["herald", "start", "-c", "/etc/herald/herald.toml", "--pid-file", "/var/lib/herald/herald.pid"]
