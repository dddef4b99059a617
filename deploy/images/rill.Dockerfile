# The rill command-line tool, for running it next to a cluster on a container network, e.g.
# `docker run --rm --network rill rill --bootstrap 10.213.13.21:9092 cluster describe`.
# Build it with `cargo xtask image` (context: this file and rootfs.tar with the release binary
# rill, its shared libraries and /etc/passwd with the user rill = 10001). Nothing is pulled.
FROM scratch
ADD rootfs.tar /
ARG VERSION=dev
LABEL org.opencontainers.image.title="rill" \
      org.opencontainers.image.description="rill command-line tool: topics, cluster, produce, consume, perf" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.licenses="Apache-2.0"
USER 10001:10001
WORKDIR /tmp
ENTRYPOINT ["/usr/local/bin/rill"]
