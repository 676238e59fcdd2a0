# sekisho in a container.
#
#   docker build -t sekisho .
#   docker run -d --name sekisho -p 3128:3128 --stop-timeout 35 sekisho
#
# The image runs `sekisho run -c /etc/sekisho/sekisho.toml` as the
# unprivileged user `sekisho`; mount another file there to change it
# (`-v ./my.toml:/etc/sekisho/sekisho.toml:ro`). Access-log lines go to stdout
# (`docker logs`), diagnostics to stderr. Reload after editing the file:
# `docker exec sekisho sekisho reload -c /etc/sekisho/sekisho.toml` (or
# `docker kill -s HUP sekisho`). Pools with `source = "client"` need
# `--cap-add NET_ADMIN` and a user that can use it; ports below 1024 need
# Docker's default `net.ipv4.ip_unprivileged_port_start=0`.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked \
 && install -m 0755 target/release/sekisho /usr/local/bin/sekisho

FROM debian:bookworm-slim
# CA certificates: the default trust store for TLS to parents and servers
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin sekisho \
 && install -d -o sekisho -g sekisho -m 0750 /run/sekisho
COPY --from=build /usr/local/bin/sekisho /usr/local/bin/sekisho
COPY dist/sekisho.toml /etc/sekisho/sekisho.toml
USER sekisho
# the forward proxy and the admin server (/healthz, /stats.json)
EXPOSE 3128 8404
# SIGTERM drains: no new connections, requests in flight finish within
# `timeouts.shutdown`; a second SIGTERM stops at once
STOPSIGNAL SIGTERM
# The slim image has no HTTP client: bash asks /healthz itself (200 while
# serving, 503 while stopping).
HEALTHCHECK --interval=30s --timeout=5s --start-period=5s --retries=3 \
  CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/8404 && printf 'GET /healthz HTTP/1.0\\r\\nHost: localhost\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]
ENTRYPOINT ["sekisho"]
CMD ["run", "-c", "/etc/sekisho/sekisho.toml"]
