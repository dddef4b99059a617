//! Prometheus metrics and the `/metrics` + `/health` HTTP endpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// Labels of per-RPC metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    /// RPC name.
    pub rpc: &'static str,
}

/// Labels of per-task metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskLabels {
    /// Background task name.
    pub task: &'static str,
}

/// Where a fetch's checks and reads ran.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct FetchPassLabels {
    /// `request_task` (everything it needed was in the page cache and no write held a lock) or
    /// `blocking_thread` (it read from the disk, waited for a lock, or had more to copy or more
    /// than 256 partitions to check).
    pub on: &'static str,
}

/// Labels of per-partition metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
#[allow(missing_docs)]
pub struct PartitionLabels {
    pub topic: String,
    pub partition: i32,
}

/// The broker's metrics.
pub struct Metrics {
    registry: Registry,
    /// Record bytes produced.
    pub bytes_in: Counter,
    /// Record bytes fetched.
    pub bytes_out: Counter,
    /// Requests by RPC.
    pub requests: Family<RpcLabels, Counter>,
    /// Failed requests by RPC.
    pub errors: Family<RpcLabels, Counter>,
    /// Latency by RPC, seconds.
    pub latency: Family<RpcLabels, Histogram>,
    /// Produce requests waiting for an I/O thread.
    pub queue_depth: Gauge,
    /// Log size per partition.
    pub log_size: Family<PartitionLabels, Gauge>,
    /// Partitions led here whose ISR is smaller than their replica set.
    pub under_replicated: Gauge,
    /// Partitions hosted here, as leader or follower.
    pub partitions: Gauge,
    /// Background task passes that panicked (the task is restarted), by task.
    pub background_panics: Family<TaskLabels, Counter>,
    /// Background task passes that failed with an error, by task.
    pub background_errors: Family<TaskLabels, Counter>,
    /// Log dirs taken offline by an I/O failure.
    pub offline_log_dirs: Gauge,
    /// Fetch passes (a fetch's checks and reads, once per long-poll wake-up) by where they ran:
    /// a consumer or follower reading from the disk shows here as `blocking_thread`.
    pub fetch_passes: Family<FetchPassLabels, Counter>,
    /// Registered and unfenced.
    pub ready: AtomicBool,
}

impl Metrics {
    /// A fresh set of metrics.
    pub fn new() -> Arc<Self> {
        let mut registry = Registry::with_prefix("rill_broker");
        let m = Metrics {
            bytes_in: Counter::default(),
            bytes_out: Counter::default(),
            requests: Family::default(),
            errors: Family::default(),
            latency: Family::new_with_constructor(|| {
                Histogram::new(exponential_buckets(0.0001, 2.0, 18))
            }),
            queue_depth: Gauge::default(),
            log_size: Family::default(),
            under_replicated: Gauge::default(),
            partitions: Gauge::default(),
            background_panics: Family::default(),
            background_errors: Family::default(),
            offline_log_dirs: Gauge::default(),
            fetch_passes: Family::default(),
            ready: AtomicBool::new(false),
            registry: Registry::default(),
        };
        registry.register("bytes_in", "Record bytes produced", m.bytes_in.clone());
        registry.register("bytes_out", "Record bytes fetched", m.bytes_out.clone());
        registry.register("requests", "Requests by RPC", m.requests.clone());
        registry.register(
            "request_errors",
            "Requests that failed as a whole, by RPC",
            m.errors.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Request latency by RPC",
            m.latency.clone(),
        );
        registry.register(
            "request_queue_depth",
            "Produce requests waiting for an I/O thread",
            m.queue_depth.clone(),
        );
        registry.register(
            "log_size_bytes",
            "Log size per partition",
            m.log_size.clone(),
        );
        registry.register(
            "under_replicated_partitions",
            "Led partitions with ISR < replicas",
            m.under_replicated.clone(),
        );
        registry.register(
            "partitions",
            "Partitions hosted on this broker",
            m.partitions.clone(),
        );
        registry.register(
            "background_task_panics",
            "Background task passes that panicked and were restarted, by task",
            m.background_panics.clone(),
        );
        registry.register(
            "background_task_errors",
            "Background task passes that failed, by task",
            m.background_errors.clone(),
        );
        registry.register(
            "offline_log_dirs",
            "Log dirs taken offline by an I/O failure",
            m.offline_log_dirs.clone(),
        );
        // Both series from the start, so a dashboard sees a zero rather than nothing.
        for on in ["request_task", "blocking_thread"] {
            let _ = m.fetch_passes.get_or_create(&FetchPassLabels { on });
        }
        registry.register(
            "fetch_passes",
            "Fetch passes (checks and reads) by where they ran: the request's task, or a blocking \
             thread (disk reads, a lock a write held, more to copy)",
            m.fetch_passes.clone(),
        );
        Arc::new(Metrics { registry, ..m })
    }

    /// Records one request.
    pub fn observe(&self, rpc: &'static str, seconds: f64, ok: bool) {
        let labels = RpcLabels { rpc };
        self.requests.get_or_create(&labels).inc();
        self.latency.get_or_create(&labels).observe(seconds);
        if !ok {
            self.errors.get_or_create(&labels).inc();
        }
    }

    /// The text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// Serves `/metrics` and `/health` until `shutdown`.
pub async fn serve(
    addr: std::net::SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    use axum::routing::get;
    let m1 = Arc::clone(&metrics);
    let m2 = Arc::clone(&metrics);
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let m = Arc::clone(&m1);
                async move {
                    (
                        [(
                            "content-type",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                        )],
                        m.encode(),
                    )
                }
            }),
        )
        .route(
            "/health",
            get(move || {
                let m = Arc::clone(&m2);
                async move {
                    if m.ready.load(Ordering::Acquire) {
                        (axum::http::StatusCode::OK, "ready\n")
                    } else {
                        (
                            axum::http::StatusCode::SERVICE_UNAVAILABLE,
                            "starting or fenced\n",
                        )
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(address = %listener.local_addr()?, "metrics listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
