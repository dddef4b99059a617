//! Periodic work: retention (`log.retention.check.interval.ms`), compaction
//! (`log.cleaner.backoff.ms`), interval flushes (`flush.messages` / `flush.ms`), checkpoints and
//! log-size metrics. Every pass runs on the blocking pool and stops with the broker.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::metrics::{Metrics, PartitionLabels};
use crate::replica_manager::ReplicaManager;

/// Starts the periodic tasks.
pub fn start(
    config: &BrokerConfig,
    rm: Arc<ReplicaManager>,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let every = |ms: u64| Duration::from_millis(ms);
    let node = config.node_id;
    spawn_periodic(
        "retention",
        every(config.retention_check_interval_ms),
        stop.clone(),
        {
            let rm = Arc::clone(&rm);
            move || {
                let n = rm
                    .logs()
                    .run_retention(|tp| rm.high_watermark_of(tp))
                    .map_err(|e| e.to_string())?;
                if n > 0 {
                    rm.logs().checkpoint().map_err(|e| e.to_string())?;
                }
                Ok(())
            }
        },
    );
    spawn_periodic(
        "log cleaner",
        every(config.cleaner_backoff_ms),
        stop.clone(),
        {
            let rm = Arc::clone(&rm);
            move || {
                rm.logs()
                    .run_cleaner(|tp| rm.high_watermark_of(tp))
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        },
    );
    spawn_periodic("flush and checkpoint", every(1000), stop.clone(), {
        let rm = Arc::clone(&rm);
        let mut ticks = 0u64;
        move || {
            rm.flush_due_logs().map_err(|e| e.to_string())?;
            ticks += 1;
            if ticks.is_multiple_of(60) {
                rm.logs().checkpoint().map_err(|e| e.to_string())?;
            }
            Ok(())
        }
    });
    spawn_periodic("metrics", every(5000), stop, move || {
        let partitions = rm.all_partitions();
        metrics.partitions.set(partitions.len() as i64);
        let mut under = 0;
        for p in &partitions {
            let size = p.log.read().map(|l| l.size_bytes()).unwrap_or(0);
            let g: Gauge = metrics
                .log_size
                .get_or_create(&PartitionLabels {
                    topic: p.tp.topic.clone(),
                    partition: p.tp.partition,
                })
                .clone();
            g.set(size as i64);
            let s = p.state();
            if s.leader == node && s.isr.len() < s.replicas.len() {
                under += 1;
            }
        }
        metrics.under_replicated.set(under);
        Ok(())
    });
}

fn spawn_periodic(
    name: &'static str,
    period: Duration,
    stop: CancellationToken,
    mut work: impl FnMut() -> Result<(), String> + Send + 'static,
) {
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(period) => {}
            }
            let (w, result) = match tokio::task::spawn_blocking(move || {
                let r = work();
                (work, r)
            })
            .await
            {
                Ok(x) => x,
                Err(e) => {
                    tracing::error!(task = name, error = %e, "background task panicked; it stops");
                    return;
                }
            };
            work = w;
            if let Err(e) = result {
                tracing::warn!(task = name, error = %e, "background pass failed");
            }
        }
    });
}
