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
    FetchPartition, FetchRequest, FetchResponse, FetchTopic, ListOffsetsPartition,
    ListOffsetsRequest, ListOffsetsTopic,
};
use rill_protocol::record_batch::{ValidationOptions, batches};
use rill_protocol::{ApiError, ErrorCode};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

/// A topic partition.
pub type TopicPartition = (String, i32);

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
    /// `bootstrap.servers`.
    pub bootstrap: Vec<String>,
    /// `fetch.max.wait.ms`.
    pub fetch_max_wait: Duration,
    /// `fetch.min.bytes`.
    pub fetch_min_bytes: i32,
    /// `fetch.max.bytes`.
    pub fetch_max_bytes: i32,
    /// `max.partition.fetch.bytes`.
    pub max_partition_fetch_bytes: i32,
    /// `auto.offset.reset`.
    pub auto_offset_reset: OffsetReset,
    /// `check.crcs`.
    pub check_crcs: bool,
    /// `request.timeout.ms`.
    pub request_timeout: Duration,
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
        }
    }
}

/// A consumed record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    /// Topic.
    pub topic: String,
    /// Partition.
    pub partition: i32,
    /// Offset.
    pub offset: i64,
    /// Timestamp (ms).
    pub timestamp: i64,
    /// Key.
    pub key: Option<Bytes>,
    /// Value (`None` is a tombstone).
    pub value: Option<Bytes>,
    /// Headers.
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
        /// Topic.
        topic: String,
        /// Partition.
        partition: i32,
        /// Position.
        offset: i64,
        /// What failed.
        reason: String,
    },
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
        })
    }

    /// The cluster client.
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

    /// All partitions of `topic`.
    pub async fn partitions_of(&self, topic: &str) -> Result<Vec<TopicPartition>, ConsumerError> {
        let n = self
            .client
            .partitions_wait(topic, self.config.request_timeout)
            .await?
            .len();
        Ok((0..n as i32).map(|p| (topic.to_owned(), p)).collect())
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
            .retain(|r| (r.topic.as_str(), r.partition) != (tp.0.as_str(), tp.1));
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
            let mut attempts = 0;
            loop {
                let leader = self
                    .client
                    .partitions(&tp.0)
                    .await?
                    .get(tp.1 as usize)
                    .map_or(-1, |l| l.leader);
                let r = match self.client.broker(leader) {
                    Ok(mut c) => c
                        .list_offsets(ListOffsetsRequest {
                            replica_id: -1,
                            topics: vec![ListOffsetsTopic {
                                name: tp.0.clone(),
                                partitions: vec![ListOffsetsPartition {
                                    index: tp.1,
                                    current_leader_epoch: -1,
                                    timestamp,
                                }],
                            }],
                        })
                        .await
                        .map(|r| r.into_inner())
                        .map_err(ApiError::from),
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
                        attempts += 1;
                        if !e.code.is_retriable() || attempts > 20 {
                            return Err(e.into());
                        }
                        self.client.invalidate(&tp.0);
                        tokio::time::sleep(Duration::from_millis(100)).await;
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
                tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
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
        let mut by_leader: HashMap<i32, Vec<(TopicPartition, i64)>> = HashMap::new();
        for (tp, pos) in &self.positions {
            let Some(pos) = *pos else { continue };
            if busy.contains(tp)
                || self
                    .buffered
                    .iter()
                    .any(|r| r.topic == tp.0 && r.partition == tp.1)
            {
                continue;
            }
            let leader = self
                .client
                .partitions(&tp.0)
                .await?
                .get(tp.1 as usize)
                .map_or(-1, |l| l.leader);
            if leader < 0 {
                self.client.invalidate(&tp.0);
                continue;
            }
            by_leader.entry(leader).or_default().push((tp.clone(), pos));
        }
        for (leader, parts) in by_leader {
            if self.in_flight.contains_key(&leader) {
                continue;
            }
            let mut topics: BTreeMap<String, Vec<FetchPartition>> = BTreeMap::new();
            for ((t, p), pos) in &parts {
                topics.entry(t.clone()).or_default().push(FetchPartition {
                    index: *p,
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
                        .map_err(ApiError::from),
                    Err(e) => Err(e),
                };
                let _ = tx.send((leader, generation, result));
            });
            self.in_flight.insert(leader, (handle, parts));
        }
        Ok(())
    }

    fn absorb(
        &mut self,
        result: FetchResult,
        requested: Vec<(TopicPartition, i64)>,
    ) -> Result<(), ConsumerError> {
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                for ((t, _), _) in &requested {
                    self.client.invalidate(t);
                }
                if e.code.is_retriable() || e.code == ErrorCode::UnknownServerError {
                    return Ok(());
                }
                return Err(e.into());
            }
        };
        for t in response.topics {
            for p in t.partitions {
                let tp = (t.name.clone(), p.index);
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
                        c if c.is_retriable() => self.client.invalidate(&t.name),
                        _ => return Err(ApiError::new(code, p.error_message).into()),
                    }
                    continue;
                }
                let mut next = requested_at;
                for batch in batches(&p.records) {
                    let Ok(batch) = batch else { break }; // a partial trailing batch: fetch it again
                    let corrupt = |reason: String| ConsumerError::Corrupt {
                        topic: t.name.clone(),
                        partition: p.index,
                        offset: batch.header().base_offset,
                        reason,
                    };
                    if self.config.check_crcs {
                        batch
                            .validate(&ValidationOptions {
                                max_uncompressed_bytes: 256 << 20,
                                producer_batch: false,
                            })
                            .map_err(|e| corrupt(e.to_string()))?;
                    }
                    let header = *batch.header();
                    if header.next_offset() <= next {
                        continue;
                    }
                    if !header.is_control() {
                        let records = batch
                            .records(256 << 20)
                            .map_err(|e| corrupt(e.to_string()))?;
                        for r in records.iter() {
                            let r = r.map_err(|e| corrupt(e.to_string()))?;
                            if r.offset < next {
                                continue;
                            }
                            self.buffered.push_back(ConsumerRecord {
                                topic: t.name.clone(),
                                partition: p.index,
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
                    }
                    next = header.next_offset();
                }
                self.positions.insert(tp, Some(next));
            }
        }
        Ok(())
    }
}
