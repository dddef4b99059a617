//! Prometheus metrics of a controller and its `/metrics` + `/health` HTTP endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use rill_protocol::metadata_image::MetadataImage;
use tokio_util::sync::CancellationToken;

/// Gauges the quorum thread refreshes every tick.
pub struct ControllerMetrics {
    registry: Registry,
    /// Raft term of this controller (increases with every election).
    pub term: Gauge,
    /// 1 on the active controller.
    pub is_leader: Gauge,
    /// Known leader id (0 when none).
    pub leader_id: Gauge,
    /// Raft commit index.
    pub commit_index: Gauge,
    /// Raft applied index.
    pub applied_index: Gauge,
    /// Last metadata offset applied.
    pub metadata_offset: Gauge,
    /// Registered brokers that are unfenced.
    pub brokers_unfenced: Gauge,
    /// Registered brokers that are fenced.
    pub brokers_fenced: Gauge,
    /// Topics in the applied metadata image.
    pub topics: Gauge,
    /// Partitions over all topics in the applied metadata image.
    pub partitions: Gauge,
    /// Partitions without a leader.
    pub offline_partitions: Gauge,
    /// Writes proposed and not yet committed.
    pub pending_writes: Gauge,
    /// The quorum thread stopped on an error: `/health` must say so whatever the gauges show.
    failed: AtomicBool,
}

impl ControllerMetrics {
    /// Registers every gauge.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("rill_controller");
        let g = Gauge::default;
        let m = ControllerMetrics {
            registry: Registry::default(),
            term: g(),
            is_leader: g(),
            leader_id: g(),
            commit_index: g(),
            applied_index: g(),
            metadata_offset: g(),
            brokers_unfenced: g(),
            brokers_fenced: g(),
            topics: g(),
            partitions: g(),
            offline_partitions: g(),
            pending_writes: g(),
            failed: AtomicBool::new(false),
        };
        for (name, help, gauge) in [
            ("raft_term", "Raft term", &m.term),
            ("is_leader", "1 on the active controller", &m.is_leader),
            (
                "leader_id",
                "Known active controller id, 0 when none",
                &m.leader_id,
            ),
            ("raft_commit_index", "Raft commit index", &m.commit_index),
            ("raft_applied_index", "Raft applied index", &m.applied_index),
            (
                "metadata_offset",
                "Last metadata offset applied",
                &m.metadata_offset,
            ),
            (
                "brokers_unfenced",
                "Registered unfenced brokers",
                &m.brokers_unfenced,
            ),
            (
                "brokers_fenced",
                "Registered fenced brokers",
                &m.brokers_fenced,
            ),
            ("topics", "Topics in the metadata image", &m.topics),
            (
                "partitions",
                "Partitions over all topics in the metadata image",
                &m.partitions,
            ),
            (
                "offline_partitions",
                "Partitions without a leader",
                &m.offline_partitions,
            ),
            (
                "pending_writes",
                "Proposed, uncommitted writes",
                &m.pending_writes,
            ),
        ] {
            registry.register(name, help, gauge.clone());
        }
        Arc::new(ControllerMetrics { registry, ..m })
    }

    /// Records that the quorum thread stopped on an error; `/health` answers 503 from now on.
    pub fn mark_failed(&self) {
        self.failed.store(true, Ordering::SeqCst);
    }

    /// Whether the quorum thread stopped on an error.
    pub fn failed(&self) -> bool {
        self.failed.load(Ordering::SeqCst)
    }

    /// Refreshes the image-derived gauges.
    pub fn observe_image(&self, image: &MetadataImage) {
        self.metadata_offset.set(image.next_offset - 1);
        let fenced = image.brokers.values().filter(|b| b.fenced).count() as i64;
        self.brokers_fenced.set(fenced);
        self.brokers_unfenced
            .set(image.brokers.len() as i64 - fenced);
        self.topics.set(image.topics.len() as i64);
        let parts = image.topics.values().flat_map(|t| &t.partitions);
        let (mut total, mut offline) = (0i64, 0i64);
        for p in parts {
            total += 1;
            offline += i64::from(p.leader == -1);
        }
        self.partitions.set(total);
        self.offline_partitions.set(offline);
    }

    fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/health` (200 when a quorum leader is known and the quorum thread is
/// running) until `shutdown`.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<ControllerMetrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let (m1, m2) = (Arc::clone(&metrics), metrics);
    let app = axum::Router::new()
        .route("/metrics", get(move || async move { m1.encode() }))
        .route(
            "/health",
            get(move || async move {
                if m2.failed() {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "the quorum thread stopped on a metadata log error\n",
                    )
                } else if m2.leader_id.get() > 0 {
                    (axum::http::StatusCode::OK, "quorum has a leader\n")
                } else {
                    (
                        axum::http::StatusCode::SERVICE_UNAVAILABLE,
                        "no quorum leader known\n",
                    )
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn health(addr: std::net::SocketAddr) -> String {
        for _ in 0..50 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                s.write_all(b"GET /health HTTP/1.0\r\n\r\n").await.unwrap();
                let mut out = String::new();
                s.read_to_string(&mut out).await.unwrap();
                return out;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        panic!("the metrics endpoint never listened");
    }

    #[tokio::test]
    async fn health_is_503_once_the_quorum_thread_failed() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let metrics = ControllerMetrics::new();
        metrics.leader_id.set(1);
        let stop = CancellationToken::new();
        tokio::spawn(serve(addr, Arc::clone(&metrics), stop.clone()));
        assert!(health(addr).await.starts_with("HTTP/1.0 200"));
        metrics.mark_failed();
        let out = health(addr).await;
        assert!(out.starts_with("HTTP/1.0 503"), "{out}");
        assert!(out.contains("quorum thread stopped"), "{out}");
        stop.cancel();
    }
}
