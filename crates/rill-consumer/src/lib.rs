//! rill's consumer for assigned partitions (consumer groups come later): seek, poll, and
//! offsets by time, as Kafka's `KafkaConsumer` with `assign`.
//!
//! `poll` returns what earlier prefetches brought and immediately starts the next fetch to each
//! leader in the background (pipelining), so the network wait overlaps with the caller's work.
//! Every batch is CRC-checked and decompressed on receipt; leader changes are followed by
//! refreshing metadata; positions advance by batch headers, so compacted batches with offset
//! gaps (or no records at all) never stall a reader.

#![warn(missing_docs)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_protocol::client::ClusterClient;
use rill_protocol::proto::{
    DescribeConfigsRequest, FetchPartition, FetchRequest, FetchResponse, FetchTopic,
    ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use rill_protocol::record_batch::{BatchError, ValidationOptions, batches};
use rill_protocol::{ApiError, ErrorCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

pub use rill_protocol::TopicPartition;

/// Where to start when a partition has no position or its position fell out of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    /// The log start.
    Earliest,
    /// The high watermark (new records only).
    Latest,
}

/// Consumer settings, with Kafka's names and defaults.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// `bootstrap.servers`: `host:port` of brokers to ask for metadata first (any one will do).
    pub bootstrap: Vec<String>,
    /// `fetch.max.wait.ms`: how long a broker may hold a fetch waiting for `fetch.min.bytes`
    /// (default 500 ms).
    pub fetch_max_wait: Duration,
    /// `fetch.min.bytes`: the broker answers a fetch once it has this much data, or when
    /// `fetch.max.wait.ms` passes (default 1: as soon as anything is there).
    pub fetch_min_bytes: i32,
    /// `fetch.max.bytes`: a soft cap on one fetch response; a batch larger than it still comes
    /// back alone, so consuming never stalls (default 50 MiB).
    pub fetch_max_bytes: i32,
    /// `max.partition.fetch.bytes`: the same per partition (default 1 MiB).
    pub max_partition_fetch_bytes: i32,
    /// `auto.offset.reset`: where a partition without a position, or whose position fell out
    /// of the log, starts (default latest).
    pub auto_offset_reset: OffsetReset,
    /// `check.crcs`: verify each batch's CRC-32C on receipt (default true).
    pub check_crcs: bool,
    /// `request.timeout.ms`: how long one request may take, and how long lookups such as
    /// [`Consumer::partitions_of`] keep retrying (default 30 s).
    pub request_timeout: Duration,
    /// `retry.backoff.ms`: the first wait before fetching a partition again after a retriable
    /// error, so a failing broker is not hammered.
    pub retry_backoff: Duration,
    /// `retry.backoff.max.ms`: the wait doubles with each consecutive failure up to this.
    pub retry_backoff_max: Duration,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            bootstrap: vec!["127.0.0.1:9092".into()],
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 << 20,
            max_partition_fetch_bytes: 1 << 20,
            auto_offset_reset: OffsetReset::Latest,
            check_crcs: true,
            request_timeout: Duration::from_secs(30),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
        }
    }
}

/// A consumed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    #[allow(missing_docs)]
    pub topic: String,
    #[allow(missing_docs)]
    pub partition: i32,
    #[allow(missing_docs)]
    pub offset: i64,
    /// Milliseconds since the Unix epoch: the producer's time (CreateTime) or the broker's
    /// (topics with `message.timestamp.type=LogAppendTime`).
    pub timestamp: i64,
    /// `None` for a record sent without a key.
    pub key: Option<Bytes>,
    /// Value (`None` is a tombstone).
    pub value: Option<Bytes>,
    /// Header keys and values, in the order the producer added them (keys may repeat).
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// Why consuming failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The cluster said no.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A batch failed its CRC or could not be decoded.
    #[error("corrupt batch from {topic}-{partition} at offset {offset}: {reason}")]
    Corrupt {
        #[allow(missing_docs)]
        topic: String,
        #[allow(missing_docs)]
        partition: i32,
        /// The consumer's position, or the corrupt batch's base offset when it is past the
        /// position; consuming stays here until the caller seeks.
        offset: i64,
        /// What is wrong with the batch (CRC mismatch, bad framing, failed decompression).
        reason: String,
    },
}

/// Consecutive retriable failures of a partition and when it may be fetched again.
#[derive(Clone, Copy, Debug)]
struct Backoff {
    failures: u32,
    until: Instant,
}

/// `retry.backoff.ms` doubled for each failure after the first, capped at `retry.backoff.max.ms`
/// (Kafka's exponential backoff, without its jitter).
fn backoff_delay(config: &ConsumerConfig, failures: u32) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    config
        .retry_backoff
        .saturating_mul(1 << doublings)
        .min(config.retry_backoff_max.max(config.retry_backoff))
}

type FetchResult = Result<FetchResponse, ApiError>;
/// A running fetch and the (partition, position) pairs it asked for.
type InFlight = (JoinHandle<()>, Vec<(TopicPartition, i64)>);
/// A finished fetch: leader, generation, result.
type Finished = (i32, u64, FetchResult);

/// A consumer of assigned partitions.
pub struct Consumer {
    config: ConsumerConfig,
    client: ClusterClient,
    positions: BTreeMap<TopicPartition, Option<i64>>,
    buffered: VecDeque<ConsumerRecord>,
    in_flight: HashMap<i32, InFlight>,
    results_tx: mpsc::UnboundedSender<Finished>,
    results_rx: mpsc::UnboundedReceiver<Finished>,
    generation: u64,
    backoff: HashMap<TopicPartition, Backoff>,
}

impl Consumer {
    /// A consumer bootstrapping from `config.bootstrap`.
    pub fn new(config: ConsumerConfig) -> Result<Self, ConsumerError> {
        let client = ClusterClient::new(&config.bootstrap, config.request_timeout)?;
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        Ok(Consumer {
            config,
            client,
            positions: BTreeMap::new(),
            buffered: VecDeque::new(),
            in_flight: HashMap::new(),
            results_tx,
            results_rx,
            generation: 0,
            backoff: HashMap::new(),
        })
    }

    /// The cluster client (metadata cache, admin calls) this consumer fetches through.
    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    /// Consumes exactly these partitions (replacing any earlier assignment).
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = TopicPartition>) {
        self.cancel_fetches();
        let keep: BTreeMap<TopicPartition, Option<i64>> = partitions
            .into_iter()
            .map(|tp| {
                let pos = self.positions.get(&tp).copied().flatten();
                (tp, pos)
            })
            .collect();
        self.positions = keep;
    }

    /// All partitions of `topic`. Waits (up to `request.timeout.ms`) for the metadata of a topic
    /// that was just created, but fails at once with UNKNOWN_TOPIC_OR_PARTITION when the
    /// controllers confirm that the topic does not exist: rill creates no topics on first use.
    pub async fn partitions_of(&self, topic: &str) -> Result<Vec<TopicPartition>, ConsumerError> {
        let deadline = Instant::now() + self.config.request_timeout;
        let mut failures = 0;
        let n = loop {
            let e = match self.client.partitions(topic).await {
                Ok(p) => break p.len(),
                Err(e) => e,
            };
            let remaining = deadline.saturating_duration_since(Instant::now());
            if e.code == ErrorCode::UnknownTopicOrPartition
                && controllers_know_no(&self.client, topic, remaining.min(Duration::from_secs(5)))
                    .await
            {
                return Err(ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {topic} does not exist"),
                )
                .into());
            }
            if !e.code.is_retriable() || remaining.is_zero() {
                return Err(e.into());
            }
            failures += 1;
            tokio::time::sleep(backoff_delay(&self.config, failures).min(remaining)).await;
        };
        Ok((0..n as i32)
            .map(|p| TopicPartition::new(topic, p))
            .collect())
    }

    /// The current assignment.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.positions.keys().cloned().collect()
    }

    /// The next offset `poll` returns for `tp`.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.positions.get(tp).copied().flatten()
    }

    /// Continues `tp` from `offset`.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        self.cancel_fetches();
        self.buffered
            .retain(|r| r.topic != tp.topic || r.partition != tp.partition);
        self.backoff.remove(tp);
        self.positions.insert(tp.clone(), Some(offset));
    }

    /// Seeks to the log start of each partition.
    pub async fn seek_to_beginning(&mut self, tps: &[TopicPartition]) -> Result<(), ConsumerError> {
        for (tp, off) in self.list_offsets(tps, -2).await? {
            self.seek(&tp, off.map_or(0, |o| o.0));
        }
        Ok(())
    }

    /// Seeks to the high watermark of each partition.
    pub async fn seek_to_end(&mut self, tps: &[TopicPartition]) -> Result<(), ConsumerError> {
        for (tp, off) in self.list_offsets(tps, -1).await? {
            self.seek(&tp, off.map_or(0, |o| o.0));
        }
        Ok(())
    }

    /// For each partition, the first offset whose timestamp is ≥ the given time (and that
    /// record's timestamp), or `None` when every record is older.
    pub async fn offsets_for_times(
        &self,
        times: &[(TopicPartition, i64)],
    ) -> Result<Vec<(TopicPartition, Option<(i64, i64)>)>, ConsumerError> {
        let mut out = Vec::new();
        for (tp, ts) in times {
            let r = self.list_offsets(std::slice::from_ref(tp), *ts).await?;
            out.extend(r);
        }
        Ok(out)
    }

    async fn list_offsets(
        &self,
        tps: &[TopicPartition],
        timestamp: i64,
    ) -> Result<Vec<(TopicPartition, Option<(i64, i64)>)>, ConsumerError> {
        let mut out = Vec::new();
        for tp in tps {
            let deadline = Instant::now() + self.config.request_timeout;
            let mut failures = 0;
            loop {
                let leader = self
                    .client
                    .partitions(&tp.topic)
                    .await?
                    .get(tp.partition as usize)
                    .map_or(-1, |l| l.leader);
                let r = match self.client.broker(leader) {
                    Ok(mut c) => c
                        .list_offsets(ListOffsetsRequest {
                            replica_id: -1,
                            topics: vec![ListOffsetsTopic {
                                name: tp.topic.clone(),
                                partitions: vec![ListOffsetsPartition {
                                    index: tp.partition,
                                    current_leader_epoch: -1,
                                    timestamp,
                                }],
                            }],
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| request_error(leader, s)),
                    Err(e) => Err(e),
                };
                let p = r.and_then(|r| {
                    r.topics
                        .into_iter()
                        .flat_map(|t| t.partitions)
                        .next()
                        .ok_or_else(|| {
                            ApiError::new(
                                ErrorCode::UnknownServerError,
                                "empty ListOffsets response",
                            )
                        })
                });
                match p {
                    Ok(p) if p.error_code == 0 => {
                        out.push((
                            tp.clone(),
                            (p.offset >= 0).then_some((p.offset, p.timestamp)),
                        ));
                        break;
                    }
                    other => {
                        let e = match other {
                            Ok(p) => ApiError::new(
                                ErrorCode::try_from(p.error_code)
                                    .unwrap_or(ErrorCode::UnknownServerError),
                                p.error_message,
                            ),
                            Err(e) => e,
                        };
                        let remaining = deadline.saturating_duration_since(Instant::now());
                        if !e.code.is_retriable() || remaining.is_zero() {
                            return Err(e.into());
                        }
                        self.client.invalidate(&tp.topic);
                        failures += 1;
                        tokio::time::sleep(backoff_delay(&self.config, failures).min(remaining))
                            .await;
                    }
                }
            }
        }
        Ok(out)
    }

    fn cancel_fetches(&mut self) {
        // Results of older generations are ignored when they arrive.
        self.generation += 1;
        for (_, (h, _)) in self.in_flight.drain() {
            h.abort();
        }
    }

    /// Records from the assigned partitions, waiting up to `timeout` for some.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ConsumerError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.buffered.is_empty() {
                self.start_fetches().await?;
                return Ok(self.buffered.drain(..).collect());
            }
            self.resolve_positions().await?;
            self.start_fetches().await?;
            let remaining = deadline.saturating_duration_since(Instant::now());
            if self.in_flight.is_empty() {
                if remaining.is_zero() {
                    return Ok(Vec::new());
                }
                // Nothing to wait for but partitions backing off (or without a leader).
                let retry_in = self
                    .backoff
                    .values()
                    .map(|b| b.until.saturating_duration_since(Instant::now()))
                    .min()
                    .unwrap_or(Duration::from_millis(100));
                tokio::time::sleep(remaining.min(retry_in).max(Duration::from_millis(1))).await;
                continue;
            }
            // Wait for the first fetch to finish, or the deadline.
            let Ok(Some((leader, generation, result))) =
                tokio::time::timeout(remaining, self.results_rx.recv()).await
            else {
                return Ok(Vec::new());
            };
            if generation == self.generation
                && let Some((_, requested)) = self.in_flight.remove(&leader)
            {
                self.absorb(result, requested)?;
            }
            if !self.buffered.is_empty() || Instant::now() >= deadline {
                self.start_fetches().await?;
                return Ok(self.buffered.drain(..).collect());
            }
        }
    }

    async fn resolve_positions(&mut self) -> Result<(), ConsumerError> {
        let missing: Vec<TopicPartition> = self
            .positions
            .iter()
            .filter(|(_, p)| p.is_none())
            .map(|(tp, _)| tp.clone())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        let ts = match self.config.auto_offset_reset {
            OffsetReset::Earliest => -2,
            OffsetReset::Latest => -1,
        };
        for (tp, off) in self.list_offsets(&missing, ts).await? {
            self.positions.insert(tp, Some(off.map_or(0, |o| o.0)));
        }
        Ok(())
    }

    /// Starts one fetch per leader for partitions not already being fetched.
    async fn start_fetches(&mut self) -> Result<(), ConsumerError> {
        let busy: Vec<TopicPartition> = self
            .in_flight
            .values()
            .flat_map(|(_, r)| r.iter().map(|(tp, _)| tp.clone()))
            .collect();
        let now = Instant::now();
        let mut by_leader: HashMap<i32, Vec<(TopicPartition, i64)>> = HashMap::new();
        let mut leaderless = Vec::new();
        for (tp, pos) in &self.positions {
            let Some(pos) = *pos else { continue };
            if self.backoff.get(tp).is_some_and(|b| b.until > now) {
                continue;
            }
            if busy.contains(tp)
                || self
                    .buffered
                    .iter()
                    .any(|r| r.topic == tp.topic && r.partition == tp.partition)
            {
                continue;
            }
            let leader = self
                .client
                .partitions(&tp.topic)
                .await?
                .get(tp.partition as usize)
                .map_or(-1, |l| l.leader);
            if leader < 0 {
                self.client.invalidate(&tp.topic);
                leaderless.push(tp.clone());
                continue;
            }
            by_leader.entry(leader).or_default().push((tp.clone(), pos));
        }
        for tp in leaderless {
            self.back_off(&tp);
        }
        for (leader, parts) in by_leader {
            if self.in_flight.contains_key(&leader) {
                continue;
            }
            let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
            for (tp, pos) in &parts {
                topics
                    .entry(tp.topic.clone())
                    .or_default()
                    .push(FetchPartition {
                        index: tp.partition,
                        current_leader_epoch: -1,
                        fetch_offset: *pos,
                        partition_max_bytes: self.config.max_partition_fetch_bytes,
                        last_fetched_epoch: -1,
                        log_start_offset: -1,
                    });
            }
            let request = FetchRequest {
                replica_id: -1,
                replica_epoch: -1,
                max_wait_ms: self.config.fetch_max_wait.as_millis() as u32,
                min_bytes: self.config.fetch_min_bytes,
                max_bytes: self.config.fetch_max_bytes,
                topics: topics
                    .into_iter()
                    .map(|(name, partitions)| FetchTopic { name, partitions })
                    .collect(),
            };
            let client = self.client.clone();
            let tx = self.results_tx.clone();
            let generation = self.generation;
            let handle = tokio::spawn(async move {
                let result = match client.broker(leader) {
                    Ok(mut c) => c
                        .fetch(request)
                        .await
                        .map(|r| r.into_inner())
                        .map_err(|s| request_error(leader, s)),
                    Err(e) => Err(e),
                };
                let _ = tx.send((leader, generation, result));
            });
            self.in_flight.insert(leader, (handle, parts));
        }
        Ok(())
    }

    /// Marks one more retriable failure of `tp`: it is not fetched again before its backoff ends.
    fn back_off(&mut self, tp: &TopicPartition) {
        let failures = self.backoff.get(tp).map_or(0, |b| b.failures) + 1;
        let until = Instant::now() + backoff_delay(&self.config, failures);
        self.backoff.insert(tp.clone(), Backoff { failures, until });
    }

    fn absorb(
        &mut self,
        result: FetchResult,
        requested: Vec<(TopicPartition, i64)>,
    ) -> Result<(), ConsumerError> {
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                for (tp, _) in &requested {
                    self.client.invalidate(&tp.topic);
                }
                if e.code.is_retriable() {
                    tracing::debug!(error = %e, "fetch failed; backing off");
                    for (tp, _) in &requested {
                        self.back_off(tp);
                    }
                    return Ok(());
                }
                return Err(e.into());
            }
        };
        for t in response.topics {
            for p in t.partitions {
                let tp = TopicPartition::new(t.name.clone(), p.index);
                let Some(&(_, requested_at)) = requested.iter().find(|(r, _)| *r == tp) else {
                    continue;
                };
                if self.position(&tp) != Some(requested_at) {
                    continue; // the caller seeked meanwhile
                }
                if p.error_code != 0 {
                    let code =
                        ErrorCode::try_from(p.error_code).unwrap_or(ErrorCode::UnknownServerError);
                    match code {
                        ErrorCode::OffsetOutOfRange => {
                            self.positions.insert(tp, None);
                        }
                        c if c.is_retriable() => {
                            self.client.invalidate(&t.name);
                            self.back_off(&tp);
                        }
                        _ => return Err(ApiError::new(code, p.error_message).into()),
                    }
                    continue;
                }
                self.backoff.remove(&tp);
                let (next, outcome) = self.take_records(&t.name, p.index, requested_at, &p.records);
                self.positions.insert(tp, Some(next));
                outcome?;
            }
        }
        Ok(())
    }

    /// Buffers the records of `records` (one partition's part of a Fetch response) from
    /// `position` on. Returns the next position, and an error for a corrupt batch: its records
    /// are not delivered and the position stays at it (as Kafka's consumer does), while the
    /// records of the good batches before it are delivered once.
    ///
    /// A truncated batch after at least one whole batch is the partial tail a size limit cut
    /// (fetched again from its start); anything else that does not parse is corrupt. A
    /// response holding only part of a batch is corrupt too: rill's brokers always send at
    /// least one whole batch, so fetching it again would return the same part forever.
    fn take_records(
        &mut self,
        topic: &str,
        partition: i32,
        position: i64,
        records: &[u8],
    ) -> (i64, Result<(), ConsumerError>) {
        let mut next = position;
        let corrupt = |offset: i64, reason: String| ConsumerError::Corrupt {
            topic: topic.to_owned(),
            partition,
            offset,
            reason,
        };
        for (whole_batches, batch) in batches(records).enumerate() {
            let batch = match batch {
                Ok(b) => b,
                Err(BatchError::Truncated { .. }) if whole_batches > 0 => break,
                Err(e) => return (next, Err(corrupt(next, e.to_string()))),
            };
            let header = *batch.header();
            if self.config.check_crcs
                && let Err(e) = batch.validate(&ValidationOptions {
                    max_uncompressed_bytes: 256 << 20,
                    producer_batch: false,
                })
            {
                return (
                    next,
                    Err(corrupt(header.base_offset.max(next), e.to_string())),
                );
            }
            if header.next_offset() <= next {
                continue;
            }
            if !header.is_control() {
                let parsed = match batch.records(256 << 20) {
                    Ok(r) => r,
                    Err(e) => {
                        return (
                            next,
                            Err(corrupt(header.base_offset.max(next), e.to_string())),
                        );
                    }
                };
                let mut taken = Vec::new();
                for r in parsed.iter() {
                    let r = match r {
                        Ok(r) => r,
                        Err(e) => {
                            return (
                                next,
                                Err(corrupt(header.base_offset.max(next), e.to_string())),
                            );
                        }
                    };
                    if r.offset < next {
                        continue;
                    }
                    taken.push(ConsumerRecord {
                        topic: topic.to_owned(),
                        partition,
                        offset: r.offset,
                        timestamp: r.timestamp,
                        key: r.key.map(Bytes::copy_from_slice),
                        value: r.value.map(Bytes::copy_from_slice),
                        headers: r
                            .headers()
                            .map(|h| {
                                (
                                    String::from_utf8_lossy(h.key).into_owned(),
                                    h.value.map(Bytes::copy_from_slice),
                                )
                            })
                            .collect(),
                    });
                }
                self.buffered.extend(taken);
            }
            next = header.next_offset();
        }
        (next, Ok(()))
    }
}

/// A failed request as an [`ApiError`]. A status the broker sent carries its error code; one
/// without it is the transport failing (connection refused or reset, a broker killed
/// mid-request), which is the retriable BROKER_NOT_AVAILABLE — never the broker's
/// UNKNOWN_SERVER_ERROR, which is not retried.
fn request_error(broker: i32, status: tonic::Status) -> ApiError {
    if status
        .metadata()
        .get(rill_protocol::ERROR_CODE_METADATA)
        .is_some()
    {
        return ApiError::from(status);
    }
    let e = ApiError::from(status);
    if e.code == ErrorCode::UnknownServerError {
        return ApiError::new(
            ErrorCode::BrokerNotAvailable,
            format!("request to broker {broker} failed: {}", e.message),
        );
    }
    e
}

/// True when the active controller answers that `topic` does not exist (its answer is
/// authoritative: it reads committed metadata, while a broker may not have caught up with a
/// topic created a moment ago); false when it knows the topic or cannot be asked.
async fn controllers_know_no(client: &ClusterClient, topic: &str, patience: Duration) -> bool {
    let answer = client
        .admin(patience, |mut c| {
            let topics = vec![topic.to_owned()];
            async move { c.describe_configs(DescribeConfigsRequest { topics }).await }
        })
        .await;
    match answer {
        Ok(r) => r
            .results
            .iter()
            .any(|t| t.topic == topic && t.error_code == ErrorCode::UnknownTopicOrPartition as i32),
        Err(e) => {
            tracing::debug!(topic, error = %e, "cannot ask the controllers whether a topic exists");
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use rill_protocol::proto::broker_server::{Broker, BrokerServer};
    use rill_protocol::proto::*;
    use rill_protocol::record_batch::{Compression, RecordBatchBuilder, set_base_offset};
    use tonic::{Request, Response, Status};

    type FetchAnswer = Arc<dyn Fn(i64) -> Result<FetchPartitionResponse, Status> + Send + Sync>;

    /// A broker leading topic `t` (one partition) whose Fetch answers come from `answer`
    /// (given the fetch offset), counting fetches.
    struct FakeBroker {
        port: u16,
        answer: FetchAnswer,
        fetches: Arc<AtomicUsize>,
    }

    #[tonic::async_trait]
    impl Broker for FakeBroker {
        async fn produce(
            &self,
            _: Request<ProduceRequest>,
        ) -> Result<Response<ProduceResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn fetch(
            &self,
            request: Request<FetchRequest>,
        ) -> Result<Response<FetchResponse>, Status> {
            self.fetches.fetch_add(1, Ordering::AcqRel);
            let offset = request
                .into_inner()
                .topics
                .first()
                .and_then(|t| t.partitions.first())
                .map_or(0, |p| p.fetch_offset);
            let partition = (self.answer)(offset)?;
            Ok(Response::new(FetchResponse {
                topics: vec![FetchTopicResponse {
                    name: "t".into(),
                    partitions: vec![partition],
                }],
            }))
        }
        async fn list_offsets(
            &self,
            _: Request<ListOffsetsRequest>,
        ) -> Result<Response<ListOffsetsResponse>, Status> {
            Err(Status::unimplemented("fake"))
        }
        async fn metadata(
            &self,
            _: Request<MetadataRequest>,
        ) -> Result<Response<MetadataResponse>, Status> {
            Ok(Response::new(MetadataResponse {
                brokers: vec![BrokerDescription {
                    node_id: 1,
                    endpoints: vec![Endpoint {
                        name: "PLAINTEXT".into(),
                        host: "127.0.0.1".into(),
                        port: u32::from(self.port),
                    }],
                    ..Default::default()
                }],
                topics: vec![TopicMetadata {
                    name: "t".into(),
                    partitions: vec![PartitionMetadata {
                        index: 0,
                        leader_id: 1,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }))
        }
    }

    /// A consumer of `t-0` from offset 0 against a fake broker; also returns its fetch count.
    async fn consumer_of(answer: FetchAnswer) -> (Consumer, Arc<AtomicUsize>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fetches = Arc::new(AtomicUsize::new(0));
        let broker = FakeBroker {
            port,
            answer,
            fetches: Arc::clone(&fetches),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(BrokerServer::new(broker))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        let mut consumer = Consumer::new(ConsumerConfig {
            bootstrap: vec![format!("127.0.0.1:{port}")],
            ..Default::default()
        })
        .unwrap();
        let tp = TopicPartition::new("t", 0);
        consumer.assign([tp.clone()]);
        consumer.seek(&tp, 0);
        (consumer, fetches)
    }

    /// A batch of `values` at `base_offset`.
    fn batch(base_offset: i64, values: &[&str]) -> Vec<u8> {
        let mut b = RecordBatchBuilder::new(Compression::None);
        for v in values {
            b.append(1_000, None, Some(v.as_bytes()), &[]);
        }
        let mut bytes = b.build().unwrap().to_vec();
        set_base_offset(&mut bytes, base_offset);
        bytes
    }

    fn records(bytes: Vec<u8>) -> Result<FetchPartitionResponse, Status> {
        Ok(FetchPartitionResponse {
            index: 0,
            high_watermark: 100,
            records: bytes.into(),
            ..Default::default()
        })
    }

    /// Polls until an error or `limit` passes, collecting the record values.
    async fn poll_until_error(
        consumer: &mut Consumer,
        limit: Duration,
    ) -> (Vec<String>, Option<ConsumerError>) {
        let deadline = Instant::now() + limit;
        let mut values = Vec::new();
        while Instant::now() < deadline {
            match consumer.poll(Duration::from_millis(200)).await {
                Ok(rs) => values
                    .extend(rs.iter().map(|r| {
                        String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into()
                    })),
                Err(e) => return (values, Some(e)),
            }
        }
        (values, None)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_batch_mid_response_is_an_error_not_a_refetch_loop() {
        let mut bad = batch(2, &["c", "d"]);
        bad[16] = 7; // the magic byte: no batch format rill knows
        let mut response = batch(0, &["a", "b"]);
        response.extend_from_slice(&bad);
        response.extend_from_slice(&batch(4, &["e"]));
        let (mut consumer, _) = consumer_of(Arc::new(move |_| records(response.clone()))).await;
        let (values, error) = poll_until_error(&mut consumer, Duration::from_secs(10)).await;
        let (values_after, _) = poll_until_error(&mut consumer, Duration::from_millis(500)).await;
        match error {
            Some(ConsumerError::Corrupt {
                topic,
                partition,
                offset,
                reason,
            }) => {
                assert_eq!((topic.as_str(), partition, offset), ("t", 0, 2), "{reason}");
                assert!(reason.contains("magic"), "{reason}");
            }
            other => panic!("expected Corrupt, got {other:?} after {values:?}"),
        }
        // The good records before it are delivered, once.
        let all: Vec<String> = values.into_iter().chain(values_after).collect();
        assert_eq!(all, ["a", "b"]);
        assert_eq!(consumer.position(&TopicPartition::new("t", 0)), Some(2));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_last_batch_is_fetched_again() {
        let (mut consumer, _) = consumer_of(Arc::new(|offset| {
            if offset == 0 {
                let mut bytes = batch(0, &["a", "b"]);
                bytes.extend_from_slice(&batch(2, &["c"])[..30]);
                records(bytes)
            } else {
                records(batch(2, &["c"]))
            }
        }))
        .await;
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while values.len() < 3 && Instant::now() < deadline {
            for r in consumer.poll(Duration::from_millis(200)).await.unwrap() {
                values
                    .push(String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned());
            }
        }
        assert_eq!(values, ["a", "b", "c"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn unknown_server_error_from_the_broker_is_not_retried() {
        let (mut consumer, fetches) = consumer_of(Arc::new(|_| {
            Err(ApiError::new(ErrorCode::UnknownServerError, "the broker broke").into())
        }))
        .await;
        let (_, error) = poll_until_error(&mut consumer, Duration::from_secs(10)).await;
        match error {
            Some(ConsumerError::Api(e)) => assert_eq!(e.code, ErrorCode::UnknownServerError),
            other => panic!("expected UNKNOWN_SERVER_ERROR, got {other:?}"),
        }
        assert_eq!(fetches.load(Ordering::Acquire), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retriable_errors_back_off_exponentially() {
        let (mut consumer, fetches) = consumer_of(Arc::new(|_| {
            Ok(FetchPartitionResponse {
                index: 0,
                error_code: ErrorCode::NotLeaderOrFollower as i32,
                ..Default::default()
            })
        }))
        .await;
        let started = Instant::now();
        let (_, error) = poll_until_error(&mut consumer, Duration::from_millis(1_600)).await;
        assert!(error.is_none(), "{error:?}");
        // Waits of 100, 200, 400 and 800 ms fit at most 5 fetches into 1.6 s; an immediate
        // retry makes hundreds. A busy machine only makes fewer.
        let n = fetches.load(Ordering::Acquire);
        assert!(
            (1..=5).contains(&n),
            "{n} fetches in {:?}",
            started.elapsed()
        );
        let b = consumer.backoff[&TopicPartition::new("t", 0)];
        assert!(b.failures >= 1);
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let config = ConsumerConfig::default();
        let ms = |n| backoff_delay(&config, n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(40)],
            [100, 200, 400, 800, 1000, 1000]
        );
    }
}
