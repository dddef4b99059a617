//! The produce pipeline's middle: a bounded request queue and a pool of I/O threads.
//!
//! The network side (gRPC handlers) decodes a Produce request and queues it; when the queue is
//! full the handler waits (backpressure), up to the request timeout, then fails with
//! RESOURCE_EXHAUSTED — memory stays bounded by `queued.max.requests`. Each I/O thread takes a
//! request, validates and appends every partition's batches (the log validates CRC, sizes and
//! record framing; nothing of a rejected batch is written), then hands the durability wait to the
//! blocking pool so it can take the next request while the fsync (shared by group commit) runs.

use std::sync::Arc;

use std::time::Duration;

use rill_protocol::proto::{
    PartitionProduceResponse, ProduceRequest, ProduceResponse, TopicProduceResponse,
};
use rill_protocol::{ApiError, ErrorCode};
use rill_storage::TopicPartition;
use tokio::sync::oneshot;

use crate::config::FlushPolicy;
use crate::metrics::Metrics;
use crate::partition::Partition;
use crate::replica_manager::ReplicaManager;

/// A queued produce request.
pub struct ProduceJob {
    /// The decoded Produce request, batches untouched.
    pub request: ProduceRequest,
    /// Where the response goes (dropped for acks=0).
    pub reply: Option<oneshot::Sender<ProduceResponse>>,
    /// Told (or dropped) once the batches are appended, before the wait for durability: a
    /// connection that pipelines requests submits the next one only then, so appends keep the
    /// order the client sent them in. With acks=0 it carries the partitions that failed (the
    /// only answer such a request gets; the others were appended), else nothing.
    pub appended: Option<oneshot::Sender<ProduceResponse>>,
}

/// The sending side of the queue.
#[derive(Clone)]
pub struct RequestQueue {
    tx: async_channel::Sender<ProduceJob>,
    metrics: Arc<Metrics>,
}

impl RequestQueue {
    /// Queues a job, waiting at most `timeout` for room.
    pub async fn submit(&self, job: ProduceJob, timeout: Duration) -> Result<(), ApiError> {
        // Counted while queued; taken back if the job never gets in (refused, or the caller
        // gave up while waiting for room), or by the I/O thread that takes it.
        struct Waiting<'a>(&'a prometheus_client::metrics::gauge::Gauge, bool);
        impl Drop for Waiting<'_> {
            fn drop(&mut self) {
                if self.1 {
                    self.0.dec();
                }
            }
        }
        self.metrics.queue_depth.inc();
        let mut waiting = Waiting(&self.metrics.queue_depth, true);
        let sent = tokio::time::timeout(timeout, self.tx.send(job)).await;
        waiting.1 = !matches!(sent, Ok(Ok(())));
        drop(waiting);
        match sent {
            Ok(Ok(())) => Ok(()),
            Err(_) => Err(ApiError::new(
                ErrorCode::ThrottlingQuotaExceeded,
                format!(
                    "the broker's request queue (queued.max.requests) stayed full for {timeout:?}; retry with backoff"
                ),
            )),
            Ok(Err(_)) => Err(ApiError::new(
                ErrorCode::BrokerNotAvailable,
                "the broker is shutting down",
            )),
        }
    }
}

/// Starts `threads` I/O threads; they stop when every [`RequestQueue`] is dropped.
pub fn start(
    threads: usize,
    capacity: usize,
    rm: Arc<ReplicaManager>,
    policy: FlushPolicy,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
) -> (RequestQueue, Vec<std::thread::JoinHandle<()>>) {
    // Every I/O thread waits on the queue itself; a job wakes one of them.
    let (tx, rx) = async_channel::bounded::<ProduceJob>(capacity.max(1));
    let handles = (0..threads)
        .map(|i| {
            let rx = rx.clone();
            let rm = Arc::clone(&rm);
            let metrics = Arc::clone(&metrics);
            let runtime = runtime.clone();
            std::thread::Builder::new()
                .name(format!("io-worker-{i}"))
                .spawn(move || {
                    loop {
                        let Ok(job) = rx.recv_blocking() else { return };
                        metrics.queue_depth.dec();
                        process(&rm, policy, &metrics, &runtime, job);
                    }
                })
                .expect("spawn an I/O thread")
        })
        .collect();
    (RequestQueue { tx, metrics }, handles)
}

fn process(
    rm: &Arc<ReplicaManager>,
    policy: FlushPolicy,
    metrics: &Metrics,
    runtime: &tokio::runtime::Handle,
    job: ProduceJob,
) {
    // The client stopped waiting while the request sat in the queue (its call was cancelled or
    // timed out, its connection closed): nobody will read the answer, and appending now only
    // adds work behind a backlog. Its outcome is unknown to the client either way; an
    // idempotent producer's retry is appended then (or deduplicated had this one been). An
    // acks=0 request's only listener is `appended`: once its wait timed out the client was
    // told so and may send it again. A job nobody listens to at all is always appended.
    let listeners = [
        job.reply.as_ref().map(|r| r.is_closed()),
        job.appended.as_ref().map(|a| a.is_closed()),
    ];
    let abandoned =
        listeners.iter().any(Option::is_some) && listeners.iter().flatten().all(|closed| *closed);
    if abandoned {
        tracing::debug!("produce request abandoned by its client while queued; not appended");
        return;
    }
    let acks = job.request.acks;
    let timeout = Duration::from_millis(if job.request.timeout_ms == 0 {
        rm.config().request_timeout_ms
    } else {
        job.request.timeout_ms.into()
    });
    let mut response = ProduceResponse::default();
    // (topic index, partition index, partition, end offset, leader epoch of the append)
    type Appended = (
        usize,
        usize,
        Arc<crate::replica_manager::Partition>,
        i64,
        i32,
    );
    let mut appended: Vec<Appended> = Vec::new();
    for (ti, topic) in job.request.topics.iter().enumerate() {
        let mut tr = TopicProduceResponse {
            name: topic.name.clone(),
            partitions: Vec::with_capacity(topic.partitions.len()),
        };
        for (pi, data) in topic.partitions.iter().enumerate() {
            let mut pr = PartitionProduceResponse {
                index: data.index,
                base_offset: -1,
                log_append_time_ms: -1,
                log_start_offset: -1,
                ..Default::default()
            };
            let tp = TopicPartition::new(topic.name.clone(), data.index);
            let outcome = if !matches!(acks, -1..=1) {
                Err((
                    ApiError::new(
                        ErrorCode::InvalidRequiredAcks,
                        format!("acks must be -1 (all), 0 or 1, not {acks}"),
                    ),
                    None,
                ))
            } else if topic.name == rill_group_coordinator::OFFSETS_TOPIC {
                // Kafka's rule: only the group coordinator writes its internal topic, so a
                // stray record can never corrupt a group's state.
                Err((
                    ApiError::new(
                        ErrorCode::InvalidTopicException,
                        format!(
                            "cannot produce to the internal topic {}; commit offsets through the group coordinator",
                            topic.name
                        ),
                    ),
                    None,
                ))
            } else {
                rm.leader_partition(&tp)
            };
            let appended_to = outcome.map(|p| {
                let a = rm.append(&p, &data.records, acks);
                // On errors too, as Kafka: a producer told UNKNOWN_PRODUCER_ID decides by it
                // whether its state was lost to retention (Java's `canRetry` retries blindly
                // while it is -1).
                pr.log_start_offset = rm.offsets(&p).map_or(-1, |(start, _)| start);
                a.map(|a| (p, a))
            });
            match appended_to.and_then(|a| a) {
                Ok((p, append)) => {
                    let info = append.info;
                    metrics.bytes_in.inc_by(data.records.len() as u64);
                    pr.base_offset = info.first_offset;
                    pr.log_append_time_ms = info.log_append_time.unwrap_or(-1);
                    appended.push((ti, pi, p, info.last_offset + 1, append.leader_epoch));
                }
                Err((e, current)) => {
                    pr.error_code = e.code as i32;
                    pr.error_message = e.message;
                    pr.current_leader = crate::apis::leader_hint(current);
                }
            }
            tr.partitions.push(pr);
        }
        response.topics.push(tr);
    }
    if let Some(appended) = job.appended {
        let failed = if acks == 0 {
            failed_only(&response)
        } else {
            ProduceResponse::default()
        };
        let _ = appended.send(failed);
    }
    let reply = job.reply;
    if appended.is_empty() || (acks != -1 && policy == FlushPolicy::Interval) {
        if let Some(reply) = reply {
            let _ = reply.send(response);
        }
        return;
    }
    // Completion does not wait on this I/O thread, which takes the next request: the
    // group-commit fsync (commit policy) waits on a blocking-pool thread, which answers at once
    // when the high watermark already covers the write (acks=1, RF 1, or followers already
    // there); only acks=all still waiting for followers moves to the runtime (Kafka's
    // DelayedProduce). Each hop between threads is a context switch per request.
    let rm = Arc::clone(rm);
    let runtime2 = runtime.clone();
    let complete = move || {
        if policy == FlushPolicy::Commit {
            for (ti, pi, p, end, _) in &appended {
                if let Err(e) = rm.make_durable(p, *end) {
                    replication_failed(&mut response.topics[*ti].partitions[*pi], p, e);
                }
            }
        }
        let mut waiting = Vec::new();
        if acks == -1 && reply.is_some() {
            for (ti, pi, p, end, epoch) in appended {
                if response.topics[ti].partitions[pi].error_code != 0 {
                    continue;
                }
                match rm.replicated_now(&p, end, epoch) {
                    Some(Ok(())) => {}
                    Some(Err(e)) => {
                        replication_failed(&mut response.topics[ti].partitions[pi], &p, e)
                    }
                    None => waiting.push((ti, pi, p, end, epoch)),
                }
            }
        }
        // acks=0 has no reply: its appends were still made durable above, so the high
        // watermark moves over them.
        let Some(reply) = reply else { return };
        if waiting.is_empty() {
            let _ = reply.send(response);
            return;
        }
        runtime2.spawn(async move {
            let deadline = tokio::time::Instant::now() + timeout;
            for (ti, pi, p, end, epoch) in waiting {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if let Err(e) = rm.wait_replicated(&p, end, epoch, left).await {
                    replication_failed(&mut response.topics[ti].partitions[pi], &p, e);
                }
            }
            let _ = reply.send(response);
        });
    };
    if policy == FlushPolicy::Commit {
        // Dropped unrun only when the runtime shuts down: the reply is dropped with it, which
        // the handler answers as "shutting down".
        drop(runtime.spawn_blocking(complete));
    } else {
        complete();
    }
}

/// The partitions of `response` that failed, and nothing else.
fn failed_only(response: &ProduceResponse) -> ProduceResponse {
    ProduceResponse {
        topics: response
            .topics
            .iter()
            .filter_map(|t| {
                let partitions: Vec<PartitionProduceResponse> = t
                    .partitions
                    .iter()
                    .filter(|p| p.error_code != 0)
                    .cloned()
                    .collect();
                (!partitions.is_empty()).then(|| TopicProduceResponse {
                    name: t.name.clone(),
                    partitions,
                })
            })
            .collect(),
    }
}

/// A write that did not become durable or reach the in-sync replicas. When leadership moved
/// meanwhile the answer names the new leader, so the producer retries there at once (KIP-951)
/// instead of after a backoff and a metadata refresh.
pub(crate) fn replication_failed(
    pr: &mut PartitionProduceResponse,
    partition: &Partition,
    e: ApiError,
) {
    pr.current_leader = crate::apis::moved_leader_hint(e.code, partition);
    pr.error_code = e.code as i32;
    pr.error_message = e.message;
}
