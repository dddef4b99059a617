# The rill broker image. Build it with `cargo xtask image`, which writes the context: this file
# and rootfs.tar (the release binaries rill-broker and rill-healthcheck, the shared libraries
# ldd lists for them, /etc/passwd and /etc/group with the user rill = 10001, /tmp, and
# /var/lib/rill owned by rill). Nothing is pulled: there is no base image.
FROM scratch
ADD rootfs.tar /
ARG VERSION=dev
LABEL org.opencontainers.image.title="rill-broker" \
      org.opencontainers.image.description="rill broker: partition logs, replication, produce and fetch (gRPC)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Every property can be set as RILL_<NAME> (dots as underscores: RILL_NODE_ID,
# RILL_ADVERTISED_LISTENERS, RILL_CONTROLLER_QUORUM_VOTERS, ...) or in a mounted TOML file passed
# as `--config /etc/rill/broker.toml`; these are the image's defaults.
ENV RILL_LISTENERS=0.0.0.0:9092 \
    RILL_METRICS_ADDRESS=0.0.0.0:9094 \
    RILL_LOG_DIRS=/var/lib/rill/data
USER 10001:10001
WORKDIR /var/lib/rill
VOLUME ["/var/lib/rill"]
EXPOSE 9092 9094
# The broker is PID 1 and handles SIGTERM itself: a controlled shutdown (leaderships move away,
# logs flushed, clean-shutdown marker). Give it time: `docker stop -t 60`.
STOPSIGNAL SIGTERM
# 200 from /health on RILL_METRICS_ADDRESS: registered with the controllers and unfenced.
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/rill-healthcheck"]
ENTRYPOINT ["/usr/local/bin/rill-broker"]
