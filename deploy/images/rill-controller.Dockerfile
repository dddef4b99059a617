# The rill controller image (one voter of the Raft metadata quorum). Build it with
# `cargo xtask image`, which writes the context: this file and rootfs.tar (the release binaries
# rill-controller and rill-healthcheck, the shared libraries ldd lists for them, /etc/passwd and
# /etc/group with the user rill = 10001, /tmp, and /var/lib/rill owned by rill). Nothing is
# pulled: there is no base image.
FROM scratch
ADD rootfs.tar /
ARG VERSION=dev
LABEL org.opencontainers.image.title="rill-controller" \
      org.opencontainers.image.description="rill controller: a voter of the Raft metadata quorum (gRPC)" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
# Every property can be set as RILL_<NAME> (dots as underscores: RILL_NODE_ID,
# RILL_CONTROLLER_QUORUM_VOTERS, ...) or in a mounted TOML file passed as
# `--config /etc/rill/controller.toml`; these are the image's defaults.
ENV RILL_LISTENERS=0.0.0.0:9093 \
    RILL_METRICS_ADDRESS=0.0.0.0:9095 \
    RILL_METADATA_LOG_DIR=/var/lib/rill/data
USER 10001:10001
WORKDIR /var/lib/rill
VOLUME ["/var/lib/rill"]
EXPOSE 9093 9095
# The controller is PID 1 and handles SIGTERM itself (a graceful stop).
STOPSIGNAL SIGTERM
# 200 from /health on RILL_METRICS_ADDRESS: a quorum leader is known.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["/usr/local/bin/rill-healthcheck"]
ENTRYPOINT ["/usr/local/bin/rill-controller"]
