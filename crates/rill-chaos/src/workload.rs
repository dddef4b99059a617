//! The workload: writers producing unique values while faults happen, and the final read.
//!
//! Each writer has its own `Producer` (acks=all), so its send order per partition is an order
//! Kafka promises to keep; values are `w<writer>-<seq>`, spread over the partitions round robin
//! with the partition chosen explicitly (recorded in the history). Every outcome is recorded
//! as it arrives, with its time, so the checker can also measure unavailability.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_consumer::{Consumer, ConsumerConfig, NoOpRebalanceListener, OffsetReset, TopicPartition};
use rill_producer::{Producer, ProducerConfig, ProducerError, ProducerRecord};
use rill_protocol::client::ClusterClient;
use rill_protocol::proto::broker_client::BrokerClient;
use rill_protocol::proto::{PartitionProduceData, ProduceRequest, TopicProduceData};
use rill_protocol::record_batch::{Compression, RecordBatchBuilder};
use rill_protocol::{ApiError, ErrorCode};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tonic::transport::Channel;

use crate::ChaosError;
use crate::history::{History, Outcome, Read};

/// How the writers write.
#[derive(Clone, Debug)]
pub struct WorkloadConfig {
    /// Brokers to bootstrap from (give all of them: any may be down at times).
    pub bootstrap: Vec<String>,
    /// The topic every writer writes and the reader reads; created beforehand.
    pub topic: String,
    /// Its partition count (values go round robin over them).
    pub partitions: i32,
    /// Number of writers, each with its own producer; writer ids are 1..=writers.
    pub writers: u32,
    /// Records per second per writer (0 = as fast as `max_pending` allows).
    pub rate_per_writer: u32,
    /// Unanswered records per writer before it waits.
    pub max_pending: usize,
    /// `delivery.timeout.ms` of the producers: how long a record may be retried.
    pub delivery_timeout: Duration,
    /// `request.timeout.ms` of the producers.
    pub request_timeout: Duration,
    /// `linger.ms` of the producers.
    pub linger: Duration,
}

impl WorkloadConfig {
    /// 2 writers × 200 records/s on `topic`, 20 s delivery timeout, 5 s request timeout.
    pub fn new(bootstrap: Vec<String>, topic: &str, partitions: i32) -> Self {
        WorkloadConfig {
            bootstrap,
            topic: topic.to_owned(),
            partitions: partitions.max(1),
            writers: 2,
            rate_per_writer: 200,
            max_pending: 2000,
            delivery_timeout: Duration::from_secs(20),
            request_timeout: Duration::from_secs(5),
            linger: Duration::from_millis(5),
        }
    }
}

/// The writers, running until [`stop`](Workload::stop).
pub struct Workload {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
    writers: Vec<tokio::task::JoinHandle<Result<(), ChaosError>>>,
}

/// True when a broker's error may follow an append: the request timed out waiting for the
/// replicas, was cut off (a transport error surfaces as UNKNOWN_SERVER_ERROR), the log failed
/// mid-write, or leadership moved while an acks=all write waited for its replicas (the
/// leader appended it; the new leader may or may not have it). Every other error code is a
/// refusal before anything was appended.
pub fn maybe_written(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::RequestTimedOut
            | ErrorCode::NotLeaderOrFollower
            | ErrorCode::NotEnoughReplicasAfterAppend
            | ErrorCode::KafkaStorageError
            | ErrorCode::UnknownServerError
            | ErrorCode::BrokerNotAvailable
    )
}

/// What a producer's delivery error says about the record: definitely not written, or unknown.
///
/// The producer retries retriable errors until `delivery.timeout.ms`, so a timeout may follow an
/// attempt whose answer was lost after the broker wrote it: Unknown. So is a non-retriable error
/// that can follow an append ([`maybe_written`]: a connection cut after the request left). A
/// refusal before appending (INVALID_RECORD, ...) and a record that was never sent (too large,
/// unbuildable) are Failed.
pub fn classify(e: &ProducerError) -> Outcome {
    let error = e.to_string();
    match e {
        ProducerError::Api(a) if !a.code.is_retriable() && !maybe_written(a.code) => {
            Outcome::Failed { error }
        }
        ProducerError::RecordTooLarge { .. } | ProducerError::Build(_) => Outcome::Failed { error },
        ProducerError::Api(_) | ProducerError::Timeout(_) | ProducerError::Closed => {
            Outcome::Unknown { error }
        }
    }
}

impl Workload {
    /// Starts the writers (on the current runtime).
    pub fn start(config: WorkloadConfig, history: Arc<History>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let paused = Arc::new(AtomicBool::new(false));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let writers = (1..=config.writers)
            .map(|w| {
                tokio::spawn(writer(
                    w,
                    config.clone(),
                    Arc::clone(&history),
                    Flags {
                        stop: Arc::clone(&stop),
                        paused: Arc::clone(&paused),
                        in_flight: Arc::clone(&in_flight),
                    },
                ))
            })
            .collect();
        Workload {
            stop,
            paused,
            in_flight,
            writers,
        }
    }

    /// Stops sending new records and waits (up to `patience`) until every record sent has an
    /// outcome: a fault injected now hits no request in flight. Returns false on timeout.
    pub async fn quiesce(&self, patience: Duration) -> bool {
        self.paused.store(true, Ordering::Release);
        let deadline = Instant::now() + patience;
        while self.in_flight.load(Ordering::Acquire) > 0 {
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }

    /// Sends again after [`quiesce`](Self::quiesce).
    pub fn resume(&self) {
        self.paused.store(false, Ordering::Release);
    }

    /// Stops sending, then waits until every record sent has an outcome (at most
    /// `delivery.timeout.ms` more).
    pub async fn stop(mut self) -> Result<(), ChaosError> {
        self.stop.store(true, Ordering::Release);
        for w in std::mem::take(&mut self.writers) {
            w.await??;
        }
        Ok(())
    }
}

impl Drop for Workload {
    /// A workload dropped without [`stop`](Workload::stop) (a scenario that failed midway)
    /// stops sending: its writers end on their own.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// What the writers share with their [`Workload`].
struct Flags {
    stop: Arc<AtomicBool>,
    paused: Arc<AtomicBool>,
    in_flight: Arc<AtomicUsize>,
}

async fn writer(
    w: u32,
    config: WorkloadConfig,
    history: Arc<History>,
    flags: Flags,
) -> Result<(), ChaosError> {
    let producer = Producer::new(ProducerConfig {
        bootstrap: config.bootstrap.clone(),
        acks: -1,
        linger: config.linger,
        delivery_timeout: config.delivery_timeout,
        request_timeout: config.request_timeout,
        max_block: config.delivery_timeout,
        retry_backoff: Duration::from_millis(50),
        ..Default::default()
    })?;
    let pending = Arc::new(Semaphore::new(config.max_pending.max(1)));
    let mut outcomes = JoinSet::new();
    let period = (config.rate_per_writer > 0)
        .then(|| Duration::from_secs_f64(1.0 / f64::from(config.rate_per_writer)));
    let mut next = Instant::now();
    let mut seq = 0u64;
    while !flags.stop.load(Ordering::Acquire) {
        if flags.paused.load(Ordering::Acquire) {
            tokio::time::sleep(Duration::from_millis(20)).await;
            next = Instant::now();
            continue;
        }
        if let Some(p) = period {
            // Keep the rate; after a stall (a full buffer) catch up by at most 1 s of records.
            let now = Instant::now();
            if next > now {
                tokio::time::sleep(next - now).await;
            }
            next = next.max(now.checked_sub(Duration::from_secs(1)).unwrap_or(now)) + p;
        }
        let Ok(permit) = Arc::clone(&pending).acquire_owned().await else {
            break;
        };
        let partition = ((seq + u64::from(w)) % config.partitions as u64) as i32;
        flags.in_flight.fetch_add(1, Ordering::AcqRel);
        let (id, value) = history.attempt(w, seq, &config.topic, Some(partition));
        seq += 1;
        let record = ProducerRecord {
            topic: config.topic.clone(),
            partition: Some(partition),
            value: Some(Bytes::from(value)),
            ..Default::default()
        };
        match producer.send(record).await {
            // Nothing left the producer: definitely not written.
            Err(e) => {
                history.complete(
                    id,
                    Outcome::Failed {
                        error: e.to_string(),
                    },
                );
                flags.in_flight.fetch_sub(1, Ordering::AcqRel);
            }
            Ok(delivery) => {
                let history = Arc::clone(&history);
                let in_flight = Arc::clone(&flags.in_flight);
                outcomes.spawn(async move {
                    let outcome = match delivery.await {
                        Ok(md) => Outcome::Ok {
                            partition: md.partition,
                            offset: md.offset,
                        },
                        Err(e) => classify(&e),
                    };
                    history.complete(id, outcome);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    drop(permit);
                });
            }
        }
    }
    producer.close().await;
    while let Some(r) = outcomes.join_next().await {
        r?;
    }
    Ok(())
}

/// Sends one record (value of attempt `seq` of `writer`) in one Produce request, acks=all, to
/// the partition's current leader, without any retry, and records what the broker said:
/// a refusal before appending (NOT_ENOUGH_REPLICAS, NOT_LEADER_OR_FOLLOWER, ...) is Failed, a
/// timeout or a lost connection is Unknown. Returns the outcome.
pub async fn probe_produce(
    client: &ClusterClient,
    history: &History,
    topic: &str,
    partition: i32,
    writer: u32,
    seq: u64,
) -> Outcome {
    let failed = |e: ApiError| Outcome::Failed {
        error: e.to_string(),
    };
    let leader = match client.partitions(topic).await {
        Ok(p) => p.get(partition as usize).map_or(-1, |l| l.leader),
        Err(e) => {
            let (id, _) = history.attempt(writer, seq, topic, Some(partition));
            history.complete(id, failed(e.clone()));
            return failed(e);
        }
    };
    let broker = match client.broker(leader) {
        Ok(b) => b,
        Err(e) => {
            let (id, _) = history.attempt(writer, seq, topic, Some(partition));
            history.complete(id, failed(e.clone()));
            return failed(e);
        }
    };
    let outcome = probe_produce_via(broker, history, topic, partition, writer, seq).await;
    if !matches!(outcome, Outcome::Ok { .. }) {
        client.invalidate(topic);
    }
    outcome
}

/// Like [`probe_produce`], but sent to the given broker whoever leads: to ask a deposed leader.
pub async fn probe_produce_via(
    mut broker: BrokerClient<Channel>,
    history: &History,
    topic: &str,
    partition: i32,
    writer: u32,
    seq: u64,
) -> Outcome {
    let (id, value) = history.attempt(writer, seq, topic, Some(partition));
    let mut builder = RecordBatchBuilder::new(Compression::None);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    builder.append(now, None, Some(value.as_bytes()), &[]);
    let outcome = match builder.build() {
        Ok(batch) => send_probe(&mut broker, topic, partition, batch).await,
        Err(e) => Outcome::Failed {
            error: e.to_string(),
        },
    };
    history.complete(id, outcome.clone());
    outcome
}

async fn send_probe(
    broker: &mut BrokerClient<Channel>,
    topic: &str,
    partition: i32,
    batch: Bytes,
) -> Outcome {
    let request = ProduceRequest {
        acks: -1,
        timeout_ms: 5000,
        topics: vec![TopicProduceData {
            name: topic.to_owned(),
            partitions: vec![PartitionProduceData {
                index: partition,
                records: batch,
            }],
        }],
    };
    match broker.produce(request).await {
        // The request may have arrived: unknown.
        Err(status) => Outcome::Unknown {
            error: ApiError::from(status).to_string(),
        },
        Ok(r) => {
            let r = r.into_inner();
            let Some(p) = r
                .topics
                .iter()
                .flat_map(|t| t.partitions.iter())
                .find(|p| p.index == partition)
            else {
                return Outcome::Unknown {
                    error: "the response omitted the partition".into(),
                };
            };
            let code = ErrorCode::try_from(p.error_code).unwrap_or(ErrorCode::UnknownServerError);
            let error = format!("{}: {}", code.as_kafka_name(), p.error_message);
            match code {
                ErrorCode::None => Outcome::Ok {
                    partition,
                    offset: p.base_offset,
                },
                // Appended (or maybe appended) but not acknowledged.
                code if maybe_written(code) => Outcome::Unknown { error },
                _ => Outcome::Failed { error },
            }
        }
    }
}

/// Reads every partition of `topic` from its log start up to the high watermark it has when
/// the read starts, recording each record in `history`; retries through failovers for up to
/// `patience`. Returns the high watermark of each partition.
pub async fn read_all(
    bootstrap: Vec<String>,
    topic: &str,
    history: &History,
    patience: Duration,
) -> Result<BTreeMap<i32, i64>, ChaosError> {
    let deadline = Instant::now() + patience;
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap,
        auto_offset_reset: OffsetReset::Earliest,
        request_timeout: Duration::from_secs(5),
        fetch_max_wait: Duration::from_millis(200),
        ..Default::default()
    })?;
    let tps: Vec<TopicPartition> = retry(deadline, || consumer.partitions_of(topic)).await?;
    consumer.assign(tps.clone());
    loop {
        match consumer.seek_to_end(&tps).await {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let ends: BTreeMap<i32, i64> = tps
        .iter()
        .map(|tp| (tp.partition, consumer.position(tp).unwrap_or(0)))
        .collect();
    loop {
        match consumer.seek_to_beginning(&tps).await {
            Ok(()) => break,
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    loop {
        let done = tps.iter().all(|tp| {
            consumer.position(tp).unwrap_or(0) >= ends.get(&tp.partition).copied().unwrap_or(0)
        });
        if done {
            return Ok(ends);
        }
        if Instant::now() >= deadline {
            let at: Vec<_> = tps
                .iter()
                .map(|tp| (tp.partition, consumer.position(tp)))
                .collect();
            return Err(ChaosError::Timeout(format!(
                "reading {topic} back: positions {at:?}, high watermarks {ends:?}"
            )));
        }
        match consumer.poll(Duration::from_millis(500)).await {
            Ok(records) => {
                for r in records {
                    history.read(Read {
                        topic: r.topic,
                        partition: r.partition,
                        offset: r.offset,
                        value: r
                            .value
                            .map(|v| String::from_utf8_lossy(&v).into_owned())
                            .unwrap_or_default(),
                    });
                }
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// The members of one consumer group reading a topic while faults happen (each its own
/// `Consumer` subscribed to the topic, auto-committing every second), recording every record
/// they are given, redeliveries included, for [`History::check_consumed`].
///
/// A member whose `poll` keeps failing (20 times in a row) is closed and replaced by a new one,
/// which resumes at the group's committed offsets, as an application would restart it.
pub struct GroupReaders {
    stop: Arc<AtomicBool>,
    consumed: Arc<parking_lot::Mutex<Vec<Read>>>,
    members: Vec<tokio::task::JoinHandle<MemberStats>>,
}

/// What happened to the members of a [`GroupReaders`].
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberStats {
    /// `poll` calls that failed.
    pub errors: usize,
    /// Members replaced after failing repeatedly (or failing to start).
    pub replaced: usize,
    /// The last error, if any.
    pub last_error: Option<String>,
}

impl GroupReaders {
    /// Starts `members` members of `group` reading `topic` from its beginning (no committed
    /// offsets yet: `auto.offset.reset=earliest`), on the current runtime.
    pub fn start(bootstrap: Vec<String>, topic: &str, group: &str, members: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let consumed = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let config = ConsumerConfig {
            bootstrap,
            group_id: Some(group.to_owned()),
            auto_offset_reset: OffsetReset::Earliest,
            auto_commit_interval: Duration::from_secs(1),
            request_timeout: Duration::from_secs(5),
            fetch_max_wait: Duration::from_millis(200),
            ..Default::default()
        };
        let members = (0..members.max(1))
            .map(|i| {
                let config = ConsumerConfig {
                    client_id: format!("chaos-member-{i}"),
                    ..config.clone()
                };
                tokio::spawn(member(
                    config,
                    topic.to_owned(),
                    Arc::clone(&stop),
                    Arc::clone(&consumed),
                ))
            })
            .collect();
        GroupReaders {
            stop,
            consumed,
            members,
        }
    }

    /// A copy of the records given to the members so far.
    pub fn consumed(&self) -> Vec<Read> {
        self.consumed.lock().clone()
    }

    /// Stops the members (each commits what it consumed and leaves the group) and returns what
    /// they were given and what went wrong on the way.
    pub async fn stop(mut self) -> Result<(Vec<Read>, MemberStats), ChaosError> {
        self.stop.store(true, Ordering::Release);
        let mut total = MemberStats::default();
        for m in std::mem::take(&mut self.members) {
            let s = m.await?;
            total.errors += s.errors;
            total.replaced += s.replaced;
            if s.last_error.is_some() {
                total.last_error = s.last_error;
            }
        }
        let consumed = std::mem::take(&mut *self.consumed.lock());
        Ok((consumed, total))
    }
}

impl Drop for GroupReaders {
    /// Readers dropped without [`stop`](GroupReaders::stop) close their members on their own.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

/// One member of a [`GroupReaders`], replaced by a fresh consumer when it keeps failing.
async fn member(
    config: ConsumerConfig,
    topic: String,
    stop: Arc<AtomicBool>,
    consumed: Arc<parking_lot::Mutex<Vec<Read>>>,
) -> MemberStats {
    let mut stats = MemberStats::default();
    while !stop.load(Ordering::Acquire) {
        let mut consumer = match Consumer::new(config.clone()) {
            Ok(c) => c,
            Err(e) => {
                stats.errors += 1;
                stats.last_error = Some(e.to_string());
                return stats;
            }
        };
        if let Err(e) = consumer.subscribe([topic.clone()], NoOpRebalanceListener) {
            stats.errors += 1;
            stats.last_error = Some(e.to_string());
            return stats;
        }
        let mut failures = 0;
        while !stop.load(Ordering::Acquire) && failures < 20 {
            match consumer.poll(Duration::from_millis(500)).await {
                Ok(records) => {
                    failures = 0;
                    let mut out = consumed.lock();
                    for r in records {
                        out.push(Read {
                            topic: r.topic,
                            partition: r.partition,
                            offset: r.offset,
                            value: r
                                .value
                                .map(|v| String::from_utf8_lossy(&v).into_owned())
                                .unwrap_or_default(),
                        });
                    }
                }
                Err(e) => {
                    failures += 1;
                    stats.errors += 1;
                    stats.last_error = Some(e.to_string());
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
        if let Err(e) = consumer.close().await {
            stats.last_error = Some(format!("close: {e}"));
        }
        if !stop.load(Ordering::Acquire) {
            stats.replaced += 1;
        }
    }
    stats
}

async fn retry<T, E, F, Fut>(deadline: Instant, mut f: F) -> Result<T, ChaosError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, E>>,
    ChaosError: From<E>,
{
    loop {
        match f().await {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() >= deadline => return Err(e.into()),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delivery_errors_are_failed_only_when_nothing_can_have_been_written() {
        let refused = ProducerError::Api(ApiError::new(ErrorCode::InvalidRecord, "bad"));
        assert!(matches!(classify(&refused), Outcome::Failed { .. }));
        let too_large = ProducerError::RecordTooLarge {
            size: 10,
            max: 1,
            setting: "max.request.size",
        };
        assert!(matches!(classify(&too_large), Outcome::Failed { .. }));
        // Retried until the delivery timeout: an earlier attempt may have been written.
        let timeout = ProducerError::Timeout("delivery.timeout.ms passed; last error: x".into());
        assert!(matches!(classify(&timeout), Outcome::Unknown { .. }));
        let retriable = ProducerError::Api(ApiError::new(ErrorCode::NotEnoughReplicas, "x"));
        assert!(matches!(classify(&retriable), Outcome::Unknown { .. }));
        assert!(matches!(
            classify(&ProducerError::Closed),
            Outcome::Unknown { .. }
        ));
    }
}
