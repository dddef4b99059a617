//! Periodic work: retention (`log.retention.check.interval.ms`), compaction
//! (`log.cleaner.backoff.ms`), interval flushes (`flush.messages` / `flush.ms`), recovery-point
//! checkpoints (`log.flush.offset.checkpoint.interval.ms`), removal of deleted logs
//! (`log.segment.delete.delay.ms`) and log-size metrics. Every pass runs on the blocking pool
//! and stops with the broker. A pass that panics is counted and the task goes on with the next
//! pass: retention must never silently stop for good.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::metrics::gauge::Gauge;
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::metrics::{Metrics, PartitionLabels, TaskLabels};
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
    let tasks = Tasks {
        metrics: Arc::clone(&metrics),
        stop: stop.clone(),
    };
    tasks.spawn("retention", every(config.retention_check_interval_ms), {
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
    });
    tasks.spawn("log cleaner", every(config.cleaner_backoff_ms), {
        let rm = Arc::clone(&rm);
        move || {
            rm.logs()
                .run_cleaner(|tp| rm.high_watermark_of(tp))
                .map(|_| ())
                .map_err(|e| e.to_string())
        }
    });
    tasks.spawn("flush", every(1000), {
        let rm = Arc::clone(&rm);
        move || rm.flush_due_logs().map_err(|e| e.to_string())
    });
    tasks.spawn(
        "recovery point checkpoint",
        every(config.recovery_point_checkpoint_interval_ms),
        {
            let rm = Arc::clone(&rm);
            move || rm.logs().checkpoint().map_err(|e| e.to_string())
        },
    );
    tasks.spawn(
        "isr expiration",
        every((config.replica_lag_time_max_ms / 2).max(1)),
        {
            let rm = Arc::clone(&rm);
            move || {
                rm.shrink_isrs();
                Ok(())
            }
        },
    );
    tasks.spawn(
        "high watermark checkpoint",
        every(config.hw_checkpoint_interval_ms),
        {
            let rm = Arc::clone(&rm);
            move || rm.checkpoint_high_watermarks().map_err(|e| e.to_string())
        },
    );
    tasks.spawn(
        "producer id expiration",
        every(config.producer_id_expiration_check_interval_ms),
        {
            let rm = Arc::clone(&rm);
            move || {
                rm.logs().remove_expired_producers();
                Ok(())
            }
        },
    );
    tasks.spawn(
        "deleted log removal",
        every(config.log_delete_delay_ms.clamp(100, 30_000)),
        {
            let rm = Arc::clone(&rm);
            move || {
                rm.remove_deleted_logs();
                Ok(())
            }
        },
    );
    let m = Arc::clone(&metrics);
    tasks.spawn("metrics", every(5000), move || {
        let metrics = &m;
        let partitions = rm.all_partitions();
        metrics.partitions.set(partitions.len() as i64);
        let mut under = 0;
        for p in &partitions {
            // A poisoned log is reported by the request path; its size is simply not updated.
            let (size, offline) = {
                let l = p.log.read();
                (l.size_bytes(), l.is_offline())
            };
            if offline {
                // A failure seen off the request path (a follower's fsync, the cleaner).
                rm.fail_log_dir(&p.log_dir, &format!("{} went offline", p.tp));
                continue;
            }
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
        metrics
            .offline_log_dirs
            .set(rm.offline_log_dirs().len() as i64);
        Ok(())
    });
}

/// Spawns periodic passes that stop with `stop`, counting failures and panics in metrics.
struct Tasks {
    metrics: Arc<Metrics>,
    stop: CancellationToken,
}

impl Tasks {
    fn spawn(
        &self,
        name: &'static str,
        period: Duration,
        work: impl Fn() -> Result<(), String> + Send + Sync + 'static,
    ) {
        let work = Arc::new(work);
        let metrics = Arc::clone(&self.metrics);
        let stop = self.stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let pass = Arc::clone(&work);
                let labels = TaskLabels { task: name };
                match tokio::task::spawn_blocking(move || pass()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        metrics.background_errors.get_or_create(&labels).inc();
                        tracing::warn!(task = name, error = %e, "background pass failed");
                    }
                    Err(e) => {
                        metrics.background_panics.get_or_create(&labels).inc();
                        tracing::error!(task = name, error = %e, "background pass panicked; the task goes on with the next pass");
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    /// A pass that panics is counted and the task goes on: retention must never stop for good.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_panicking_pass_is_counted_and_the_task_goes_on() {
        let metrics = Metrics::new();
        let stop = CancellationToken::new();
        let tasks = Tasks {
            metrics: Arc::clone(&metrics),
            stop: stop.clone(),
        };
        let runs = Arc::new(AtomicUsize::new(0));
        let r = Arc::clone(&runs);
        tasks.spawn("flaky", Duration::from_millis(5), move || {
            match r.fetch_add(1, Ordering::SeqCst) {
                0 => panic!("a bug in a pass"),
                1 => Err("disk busy".into()),
                _ => Ok(()),
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while runs.load(Ordering::SeqCst) < 4 {
            assert!(std::time::Instant::now() < deadline, "the task stopped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        stop.cancel();
        let labels = TaskLabels { task: "flaky" };
        assert_eq!(metrics.background_panics.get_or_create(&labels).get(), 1);
        assert_eq!(metrics.background_errors.get_or_create(&labels).get(), 1);
        assert!(metrics.encode().contains("background_task_panics"));
    }
}
