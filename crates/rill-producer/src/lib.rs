//! rill's producer: the client side of Produce, as Kafka's Java producer works.
//!
//! `send` picks the partition of a keyed record ([`partitioner`]: murmur2 of the key), reserves
//! `buffer.memory` (waiting when full), picks a keyless record's partition (sticky, looking at
//! the open batches), and appends the record to the partition's open batch in the accumulator. A batch closes when it reaches `batch.size` or
//! `linger.ms` passes; the sender task then ships every ready batch of a leader in one Produce
//! request, retrying retriable errors (after refreshing leaders) until `delivery.timeout.ms`.
//!
//! Idempotence (`enable.idempotence`, KIP-98, on by default as in Kafka 3): the producer gets a
//! producer id and epoch from the controllers (InitProducerId) and stamps them, with a
//! per-partition sequence number, into every batch when it is first sent. The partition leader
//! answers a retried batch it already has with the original offsets, so retries never duplicate,
//! across leader failovers included (followers keep the same producer state). A partition has
//! one request in flight at a time, carrying up to 64 ready batches (the batches a rill leader
//! remembers per producer); requests to one broker pipeline up to
//! `max.in.flight.requests.per.connection`. (Kafka allows 5 requests of a partition in flight;
//! rill's broker appends one connection's requests on several I/O threads, which could reorder
//! two of a partition.) A retried batch keeps its sequence and is sent alone, in sequence order;
//! a batch refused with OUT_OF_ORDER_SEQUENCE_NUMBER because an earlier one failed is simply
//! retried.
//!
//! Epoch bumps (KIP-360) follow Kafka's `TransactionManager`. A batch that was sent and then
//! failed (past `delivery.timeout.ms`, or refused for good after an earlier attempt went
//! unanswered) has an unknown outcome: it may be in the log. It is never sent again, and its
//! partition's sequence stays *unresolved* — nothing new is sent there — until a later batch is
//! acknowledged (so it was written), or the batch right after it is refused with a sequence error
//! (so it was not), or no later batch is left: then the epoch is bumped. When the leader refuses
//! the oldest unacknowledged batch with OUT_OF_ORDER_SEQUENCE_NUMBER or UNKNOWN_PRODUCER_ID (a gap,
//! or lost producer state), none of the partition's batches is written, and they are renumbered
//! from 0 under the bumped epoch. Each partition keeps the epoch its sequenced batches were sent
//! under until none is left: only batches never sent (or proven unwritten) get sequences of the
//! new epoch, so a batch the leader may have is never written again under another epoch.
//!
//! Idempotence needs `acks=-1`; Kafka's
//! rule applies: left unset (`None`) it is on unless `acks` ≠ -1 or more than 5 requests may be
//! in flight, and explicitly enabled with those settings it is refused.
//!
//! Without idempotence a partition has at most one request in flight, and a retried batch goes
//! back to the front of its partition's queue, so records of one partition are stored in `send`
//! order even across retries. Throughput comes from sending all of a partition's ready batches in
//! that one request, and from many partitions being in flight at once (up to
//! `max.in.flight.requests.per.connection` requests per broker).

#![warn(missing_docs)]

pub mod partitioner;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::{Bytes, BytesMut};
use parking_lot::Mutex;
use rill_protocol::client::{ClusterClient, LeaderInfo};
use rill_protocol::proto::{
    DescribeConfigsRequest, InitProducerIdRequest, PartitionProduceData, ProduceRequest,
    TopicProduceData,
};
use rill_protocol::record_batch::{
    BatchError, Compression, RecordBatchBuilder, RecordHeader, set_producer_state,
};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tokio::sync::{Notify, Semaphore, mpsc, oneshot};

/// Producer settings, with Kafka's names and defaults.
#[derive(Clone, Debug)]
pub struct ProducerConfig {
    /// `bootstrap.servers`: brokers to learn the cluster from.
    pub bootstrap: Vec<String>,
    /// `acks`: 0, 1 or -1 (all).
    pub acks: i32,
    /// `batch.size`: bytes per batch before it is sent.
    pub batch_size: usize,
    /// `linger.ms`: how long a batch waits for more records.
    pub linger: Duration,
    /// `compression.type`: codec of each batch (none, gzip, snappy, lz4, zstd).
    pub compression: Compression,
    /// `buffer.memory`: bytes of unsent records before `send` waits.
    pub buffer_memory: usize,
    /// `max.block.ms`: how long `send` may wait for buffer memory or metadata.
    pub max_block: Duration,
    /// `max.in.flight.requests.per.connection`: requests outstanding per broker (at most
    /// [`MAX_IN_FLIGHT_WITH_IDEMPOTENCE`] with idempotence); order per partition is kept either
    /// way.
    pub max_in_flight: usize,
    /// `retry.backoff.ms`: wait before retrying a failed produce request (none when the answer
    /// names a new leader: the batch goes there at once, KIP-951).
    pub retry_backoff: Duration,
    /// `delivery.timeout.ms`: give up on a record after this long.
    pub delivery_timeout: Duration,
    /// `request.timeout.ms`: how long one request may take before it counts as failed (and
    /// is retried within `delivery.timeout.ms`).
    pub request_timeout: Duration,
    /// `max.request.size`: largest record and largest request.
    pub max_request_size: usize,
    /// `metadata.max.age.ms`: a topic's metadata is asked for again after this long, so
    /// partitions added to it are used (keyless records spread to them) without waiting for
    /// an error.
    pub metadata_max_age: Duration,
    /// `enable.idempotence`: `None` follows Kafka's default (on, unless `acks` ≠ -1 or
    /// `max_in_flight` > 5 turn it off); `Some(true)` insists (those settings are then refused);
    /// `Some(false)` turns it off.
    pub enable_idempotence: Option<bool>,
}

/// The most requests per partition an idempotent producer may have in flight: the batches a
/// partition leader remembers per producer for duplicate detection.
pub const MAX_IN_FLIGHT_WITH_IDEMPOTENCE: usize = 5;

impl ProducerConfig {
    /// Whether this config produces idempotently, or why it cannot.
    pub fn idempotence(&self) -> Result<bool, ApiError> {
        let conflicts = if self.acks != -1 {
            Some(format!(
                "enable.idempotence requires acks=-1 (all), not acks={}",
                self.acks
            ))
        } else if self.max_in_flight > MAX_IN_FLIGHT_WITH_IDEMPOTENCE {
            Some(format!(
                "enable.idempotence requires max.in.flight.requests.per.connection ≤ {MAX_IN_FLIGHT_WITH_IDEMPOTENCE}, not {}",
                self.max_in_flight
            ))
        } else {
            None
        };
        match (self.enable_idempotence, conflicts) {
            (Some(false), _) => Ok(false),
            (None, c) => Ok(c.is_none()),
            (Some(true), None) => Ok(true),
            (Some(true), Some(why)) => Err(ApiError::new(
                ErrorCode::InvalidConfig,
                format!("{why}; change it or set enable.idempotence=false"),
            )),
        }
    }
}

impl Default for ProducerConfig {
    fn default() -> Self {
        ProducerConfig {
            bootstrap: vec!["127.0.0.1:9092".into()],
            acks: -1,
            batch_size: 16 * 1024,
            linger: Duration::from_millis(5),
            compression: Compression::None,
            buffer_memory: 32 << 20,
            max_block: Duration::from_secs(60),
            max_in_flight: 5,
            retry_backoff: Duration::from_millis(100),
            delivery_timeout: Duration::from_secs(120),
            request_timeout: Duration::from_secs(30),
            max_request_size: 1 << 20,
            metadata_max_age: rill_protocol::client::DEFAULT_METADATA_MAX_AGE,
            enable_idempotence: None,
        }
    }
}

/// A record to send.
#[derive(Clone, Debug, Default)]
pub struct ProducerRecord {
    #[allow(missing_docs)]
    pub topic: String,
    /// Explicit partition; otherwise chosen by key.
    pub partition: Option<i32>,
    /// Key (same key → same partition).
    pub key: Option<Bytes>,
    /// Value; `None` is a tombstone.
    pub value: Option<Bytes>,
    /// Header keys and values, kept in order (keys may repeat).
    pub headers: Vec<(String, Option<Bytes>)>,
    /// Create time in ms; now when unset.
    pub timestamp: Option<i64>,
}

impl ProducerRecord {
    /// A record with a value and optional key.
    pub fn new(
        topic: impl Into<String>,
        key: Option<impl Into<Bytes>>,
        value: impl Into<Bytes>,
    ) -> Self {
        ProducerRecord {
            topic: topic.into(),
            key: key.map(Into::into),
            value: Some(value.into()),
            ..Default::default()
        }
    }
}

/// Where a record landed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordMetadata {
    #[allow(missing_docs)]
    pub topic: String,
    #[allow(missing_docs)]
    pub partition: i32,
    /// Offset (-1 with acks=0).
    pub offset: i64,
    /// The record's timestamp (the broker's under LogAppendTime).
    pub timestamp: i64,
}

/// Why a record was not delivered.
#[derive(Clone, Debug, thiserror::Error)]
pub enum ProducerError {
    /// The cluster refused it.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// Larger than `max.request.size` or `buffer.memory`: it could never be sent.
    #[error("record of {size} bytes exceeds {setting} = {max}")]
    RecordTooLarge {
        /// The record's encoded size in bytes.
        size: usize,
        /// The limit.
        max: usize,
        /// The setting it exceeds (`max.request.size`, `buffer.memory`).
        setting: &'static str,
    },
    /// `delivery.timeout.ms` or `max.block.ms` passed.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The producer was closed.
    #[error("the producer is closed")]
    Closed,
    /// The batch holding the record could not be built (compression failed); nothing of it was
    /// sent.
    #[error("building the record batch failed: {0}")]
    Build(String),
}

/// Called once with a record's outcome (Kafka's `Callback`): see [`Producer::send_with_callback`].
pub type Callback = Box<dyn FnOnce(Result<RecordMetadata, ProducerError>) + Send + 'static>;

/// Who learns a record's outcome.
enum Waiter {
    Future(oneshot::Sender<Result<RecordMetadata, ProducerError>>),
    Callback(Callback),
}

/// The callbacks of one finished batch, in record order, and what the batch holds until they
/// have run (so slow callbacks hold `buffer.memory` and slow `send` down, as in Kafka, where
/// they run on the sender thread).
struct Completions {
    calls: Vec<(Callback, Result<RecordMetadata, ProducerError>)>,
    permits: usize,
    records: usize,
    gens: FlushGens,
}

/// How many of a batch's records were sent in each flush generation (almost always one
/// entry): `flush` waits for the generations before it only.
type FlushGens = Vec<(u64, usize)>;

struct OpenBatch {
    builder: RecordBatchBuilder,
    created: Instant,
    waiters: Vec<(Waiter, i64)>,
    permits: usize,
    gens: FlushGens,
}

struct Batch {
    bytes: Bytes,
    waiters: Vec<(Waiter, i64)>,
    permits: usize,
    gens: FlushGens,
    created: Instant,
    retry_at: Option<Instant>,
    /// Idempotence: the producer epoch and the logical (never wrapping) sequence of the first
    /// record, set when the batch is first sent and kept across retries.
    seq: Option<(i16, i64)>,
    /// Idempotence: sent when every earlier batch of the partition was acknowledged. Only then
    /// does OUT_OF_ORDER_SEQUENCE_NUMBER / UNKNOWN_PRODUCER_ID prove the leader lost this
    /// producer's state; otherwise an earlier batch may simply not have arrived yet (requests of
    /// one partition can overtake each other on the way to the leader's I/O threads).
    sent_as_head: bool,
    /// Why the last attempt failed, for the error when the delivery timeout ends the retries.
    last_error: Option<String>,
    /// Sent in a request of its own from now on: the partition's request it was in was refused
    /// whole for one batch's sake (too large, invalid), and each batch must get its own answer.
    alone: bool,
    /// Idempotence: an earlier attempt may have been written (its answer was lost, or was an
    /// error that can come after the append). A later refusal then proves nothing: a leader
    /// validates a batch (size, timestamps, records) before it recognises a duplicate, so a
    /// written batch retried after a config change can be refused. Its sequences are then
    /// never given back nor split into new batches.
    maybe_written: bool,
}

impl Batch {
    fn records(&self) -> i64 {
        self.waiters.len() as i64
    }
}

#[derive(Default)]
struct PartitionQueue {
    open: Option<OpenBatch>,
    /// Batches waiting to be sent: retries (with a sequence, in sequence order) first.
    ready: VecDeque<Batch>,
    /// Requests in flight (at most one without idempotence).
    in_flight: usize,
    /// Idempotence: the producer id and epoch this partition's sequences belong to (Kafka's
    /// per-partition `producerIdAndEpoch`). Batches sent under it keep it, and their sequences,
    /// on every retry; the partition moves to a newer epoch (sequences from 0) only once none of
    /// them is left, so a batch that may have been written is never sent again as a new one.
    producer: Option<(i64, i16)>,
    /// Idempotence: the logical sequence the next new batch gets.
    next_seq: i64,
    /// Idempotence: the logical sequence after the last acknowledged record; the oldest
    /// unacknowledged batch starts here.
    acked_seq: i64,
    /// Idempotence: the logical sequence after the last batch failed to its sender with its
    /// outcome unknown (sent, never answered, then past `delivery.timeout.ms` or refused for
    /// good; Kafka's `partitionsWithUnresolvedSequences`). Nothing new is sent until it is
    /// resolved: a later batch acknowledged proves it written; OUT_OF_ORDER_SEQUENCE_NUMBER or
    /// UNKNOWN_PRODUCER_ID for the batch right after it proves it missing; with no later batch
    /// left the epoch is bumped.
    unresolved: Option<i64>,
    /// Idempotence: the leader refused the oldest unacknowledged batch with a sequence gap or
    /// lost this producer's state, so none of the partition's sequenced batches is written: they
    /// are renumbered from 0 under the next epoch (Kafka's `partitionsToRewriteSequences`).
    rewrite: bool,
}

/// The producer id and epoch of an idempotent producer (Kafka's `ProducerIdAndEpoch`).
#[derive(Clone, Copy, Debug, Default)]
struct ProducerIdState {
    /// `(producer id, epoch)` once InitProducerId answered.
    id: Option<(i64, i16)>,
    /// The epoch must be bumped (KIP-360) before anything more is sent.
    bump: bool,
    /// When InitProducerId may be tried again after a failure.
    retry_at: Option<Instant>,
}

/// Wire sequence of a logical sequence: sequences wrap from `i32::MAX` to 0.
fn wire_seq(logical: i64) -> i32 {
    (logical % (i64::from(i32::MAX) + 1)) as i32
}

struct Inner {
    config: ProducerConfig,
    client: ClusterClient,
    queues: Mutex<HashMap<TopicPartition, PartitionQueue>>,
    /// Keyless records' current partition per topic, and the record bytes appended to it since
    /// it was chosen (KIP-794).
    sticky: Mutex<HashMap<String, (i32, usize)>>,
    wake: Notify,
    idle: Notify,
    memory: Arc<Semaphore>,
    pending: AtomicUsize,
    /// The flush generation records sent now belong to; a `flush` moves it on (under the
    /// queues' lock, so every record is counted in one generation or the next).
    flush_gen: AtomicU64,
    /// Records not yet finished, per flush generation (entries of 0 removed).
    unfinished: Mutex<std::collections::BTreeMap<u64, usize>>,
    flushing: AtomicUsize,
    closed: AtomicBool,
    broker_slots: Mutex<HashMap<i32, Arc<Semaphore>>>,
    /// `enable.idempotence` as resolved from the config.
    idempotence: bool,
    producer_id: Mutex<ProducerIdState>,
    /// To the task that runs callbacks, one batch at a time in completion order.
    callbacks: mpsc::UnboundedSender<Completions>,
    /// Makes every batch build fail, to test that failure path.
    #[cfg(test)]
    fail_builds: AtomicBool,
}

/// A future completing when the record is acknowledged (or fails).
pub struct DeliveryFuture(oneshot::Receiver<Result<RecordMetadata, ProducerError>>);

impl DeliveryFuture {
    /// The outcome if it is already known, without waiting.
    pub fn try_result(&mut self) -> Option<Result<RecordMetadata, ProducerError>> {
        match self.0.try_recv() {
            Ok(r) => Some(r),
            Err(oneshot::error::TryRecvError::Empty) => None,
            Err(oneshot::error::TryRecvError::Closed) => Some(Err(ProducerError::Closed)),
        }
    }
}

impl std::future::Future for DeliveryFuture {
    type Output = Result<RecordMetadata, ProducerError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(ProducerError::Closed)))
    }
}

/// The producer. Cheap to share behind an `Arc`; `send` may be called concurrently.
pub struct Producer {
    inner: Arc<Inner>,
    sender: tokio::task::JoinHandle<()>,
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Producer {
    /// Creates a producer and starts its sender task (on the current Tokio runtime).
    pub fn new(config: ProducerConfig) -> Result<Self, ProducerError> {
        if !matches!(config.acks, -1..=1) {
            return Err(ApiError::new(
                ErrorCode::InvalidRequiredAcks,
                format!("acks must be -1 (all), 0 or 1, not {}", config.acks),
            )
            .into());
        }
        if config.max_in_flight == 0 {
            return Err(ApiError::new(
                ErrorCode::InvalidConfig,
                "max.in.flight.requests.per.connection must be at least 1",
            )
            .into());
        }
        let idempotence = config.idempotence()?;
        let client = ClusterClient::new(&config.bootstrap, config.request_timeout)?
            .with_metadata_max_age(config.metadata_max_age);
        let (callbacks, callbacks_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            memory: Arc::new(Semaphore::new(
                config.buffer_memory.min(Semaphore::MAX_PERMITS),
            )),
            config,
            client,
            queues: Mutex::new(HashMap::new()),
            sticky: Mutex::new(HashMap::new()),
            wake: Notify::new(),
            idle: Notify::new(),
            pending: AtomicUsize::new(0),
            flush_gen: AtomicU64::new(0),
            unfinished: Mutex::new(std::collections::BTreeMap::new()),
            flushing: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            broker_slots: Mutex::new(HashMap::new()),
            idempotence,
            producer_id: Mutex::new(ProducerIdState::default()),
            callbacks,
            #[cfg(test)]
            fail_builds: AtomicBool::new(false),
        });
        tokio::spawn(callback_loop(callbacks_rx, Arc::downgrade(&inner)));
        let sender = tokio::spawn(sender_loop(Arc::clone(&inner)));
        Ok(Producer { inner, sender })
    }

    /// The cluster client (metadata, admin).
    pub fn client(&self) -> &ClusterClient {
        &self.inner.client
    }

    /// True when this producer is idempotent (`enable.idempotence` resolved).
    pub fn is_idempotent(&self) -> bool {
        self.inner.idempotence
    }

    /// The producer id and epoch, once an idempotent producer has them.
    pub fn producer_id_and_epoch(&self) -> Option<(i64, i16)> {
        self.inner.producer_id.lock().id
    }

    /// The partition count of `topic` (Kafka's `partitionsFor`), waiting up to `max.block.ms`
    /// for the metadata of a topic just created. A topic the controllers say does not exist is
    /// an immediate UNKNOWN_TOPIC_OR_PARTITION, so callers can check a topic before sending.
    pub async fn partitions_for(&self, topic: &str) -> Result<usize, ProducerError> {
        let max_block = self.inner.config.max_block;
        tokio::time::timeout(
            max_block,
            wait_for_topic(&self.inner.client, topic, max_block),
        )
        .await
        .map_err(|_| {
            ProducerError::Timeout(format!(
                "no metadata for topic {topic:?} within max.block.ms"
            ))
        })?
        .map(|p| p.len())
    }

    /// Queues a record; the returned future resolves once it is acknowledged. Waits (up to
    /// `max.block.ms`) when `buffer.memory` is exhausted.
    pub async fn send(&self, record: ProducerRecord) -> Result<DeliveryFuture, ProducerError> {
        let (tx, rx) = oneshot::channel();
        self.enqueue(record, Waiter::Future(tx)).await?;
        Ok(DeliveryFuture(rx))
    }

    /// Queues a record like [`send`](Self::send); `callback` is called once with its outcome
    /// (Kafka's `send(record, callback)`), without a future or a task per record to await. When
    /// this returns an error the record was not queued and `callback` is never called.
    ///
    /// Callbacks run one after another on one producer task, in the order their batches
    /// finished: within a partition that is send order, except for a batch that fails before it
    /// is sent (its build failed, or it expired waiting for a producer id), which can finish
    /// ahead of an earlier one still in flight — as with futures. A panicking callback is
    /// logged and the others still run. Keep them short: a batch's `buffer.memory` is given
    /// back only after its callbacks ran, so slow callbacks slow `send` down. `flush` and
    /// `close` return after the callbacks of what they waited for. If the Tokio runtime the
    /// producer runs on shuts down first, callbacks still queued are dropped uncalled (where a
    /// future would report `Closed`).
    pub async fn send_with_callback(
        &self,
        record: ProducerRecord,
        callback: impl FnOnce(Result<RecordMetadata, ProducerError>) + Send + 'static,
    ) -> Result<(), ProducerError> {
        self.enqueue(record, Waiter::Callback(Box::new(callback)))
            .await
    }

    async fn enqueue(&self, record: ProducerRecord, waiter: Waiter) -> Result<(), ProducerError> {
        let inner = &self.inner;
        if inner.closed.load(Ordering::Acquire) {
            return Err(ProducerError::Closed);
        }
        let headers: Vec<RecordHeader<'_>> = record
            .headers
            .iter()
            .map(|(k, v)| RecordHeader {
                key: k.as_bytes(),
                value: v.as_deref(),
            })
            .collect();
        let size = RecordBatchBuilder::record_size(
            record.key.as_deref(),
            record.value.as_deref(),
            &headers,
        );
        if size + 61 > inner.config.max_request_size {
            return Err(ProducerError::RecordTooLarge {
                size,
                max: inner.config.max_request_size,
                setting: "max.request.size",
            });
        }
        // Kafka's `ensureValidRecordSize`: waiting for more buffer memory than there is would
        // only end in a timeout after max.block.ms.
        if size > inner.config.buffer_memory {
            return Err(ProducerError::RecordTooLarge {
                size,
                max: inner.config.buffer_memory,
                setting: "buffer.memory",
            });
        }
        // Fast path: cached metadata needs no timer.
        let partitions = match inner.client.cached_partition_count(&record.topic) {
            Some(n) => n,
            None => tokio::time::timeout(
                inner.config.max_block,
                wait_for_topic(&inner.client, &record.topic, inner.config.max_block),
            )
            .await
            .map_err(|_| {
                ProducerError::Timeout(format!(
                    "no metadata for topic {:?} within max.block.ms",
                    record.topic
                ))
            })??
            .len(),
        };
        let mut n = partitions;
        if let Some(p) = record.partition
            && p >= 0
            && p as usize >= n
        {
            // Maybe the topic just grew (CreatePartitions): as Kafka's `waitOnMetadata`, look
            // again until the partition shows up or max.block.ms is over.
            n = partitions_beyond(&inner.client, &record.topic, p, inner.config.max_block).await?;
        }
        // Keyless records (`None`) get their partition below, with the open batches in view.
        let chosen = match (record.partition, &record.key) {
            (Some(p), _) if p >= 0 && (p as usize) < n => Some(p),
            (Some(p), _) => {
                return Err(ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!(
                        "topic {:?} has {n} partitions; {p} does not exist (looked again for max.block.ms)",
                        record.topic
                    ),
                )
                .into());
            }
            (None, Some(key)) => Some(partitioner::partition_for_key(key, n)),
            (None, None) => None,
        };
        // Fast path: memory is available now; only a full buffer waits (up to max.block.ms).
        let permit = match Arc::clone(&inner.memory).try_acquire_many_owned(size as u32) {
            Ok(p) => p,
            Err(_) => tokio::time::timeout(
                inner.config.max_block,
                Arc::clone(&inner.memory).acquire_many_owned(size as u32),
            )
            .await
            .map_err(|_| {
                ProducerError::Timeout("buffer.memory stayed full for max.block.ms".into())
            })?
            .map_err(|_| ProducerError::Closed)?,
        };
        permit.forget();
        let timestamp = record.timestamp.unwrap_or_else(now_ms);
        inner.pending.fetch_add(1, Ordering::AcqRel);
        let mut closed_a_batch = false;
        let opened_a_batch;
        {
            let mut queues = inner.queues.lock();
            let tp = match chosen {
                Some(p) => TopicPartition::new(record.topic.clone(), p),
                None => {
                    let (tp, closed) = self.sticky_partition(&mut queues, &record.topic, n, size);
                    closed_a_batch = closed;
                    tp
                }
            };
            let q = queues.entry(tp).or_default();
            if let Some(open) = &q.open
                && !open.builder.is_empty()
                && open.builder.estimated_size() + size > inner.config.batch_size
            {
                close_open(inner, q);
                closed_a_batch = true;
            }
            opened_a_batch = q.open.is_none();
            let open = q.open.get_or_insert_with(|| OpenBatch {
                builder: RecordBatchBuilder::new(inner.config.compression),
                created: Instant::now(),
                waiters: Vec::new(),
                permits: 0,
                gens: FlushGens::new(),
            });
            let generation = inner.flush_gen.load(Ordering::Acquire);
            match open.gens.last_mut() {
                Some((g, n)) if *g == generation => *n += 1,
                _ => open.gens.push((generation, 1)),
            }
            *inner.unfinished.lock().entry(generation).or_default() += 1;
            let before = open.builder.estimated_size();
            open.builder.append(
                timestamp,
                record.key.as_deref(),
                record.value.as_deref(),
                &headers,
            );
            if chosen.is_none() {
                // The bytes the record really added (Kafka's `updatePartitionInfo` after the
                // append): `size` is an upper bound, twice the real size for tiny records.
                let grown = open.builder.estimated_size() - before;
                if let Some(e) = inner.sticky.lock().get_mut(record.topic.as_str()) {
                    e.1 += grown;
                }
            }
            open.waiters.push((waiter, timestamp));
            open.permits += size;
            if open.builder.estimated_size() >= inner.config.batch_size {
                close_open(inner, q);
                closed_a_batch = true;
            }
        }
        if closed_a_batch {
            inner.wake.notify_one();
        } else if inner.config.linger.is_zero() || opened_a_batch {
            // A new batch: the sender must learn its linger deadline now, not on its next idle
            // wake-up (which cost up to 100 ms of latency at low rates).
            inner.wake.notify_one();
        }
        Ok(())
    }

    /// The partition of a keyless record of `size` bytes (KIP-794, Kafka's built-in
    /// partitioner since 3.3): one partition is used until `batch.size` bytes went to it, then
    /// another one at random — so keyless records spread over the partitions at any rate, also
    /// when `linger.ms` sends every batch long before it fills (switching only when a batch
    /// closed full kept a slow producer on one partition for ever). Like Kafka's
    /// `allBatchesFull` check, but decided before the append, the switch waits for a batch
    /// boundary: a partition is left when
    /// this record would not fit its open batch (that batch is closed and ships now), when
    /// `batch.size` went to it and it has no open batch, or at twice `batch.size`. Switching
    /// on the byte count alone left a batch of one or two records behind at every switch, to
    /// wait `linger.ms` and go out in a request of its own. Returns the partition and whether
    /// a batch was closed; the caller counts the bytes the record really added once appended.
    fn sticky_partition(
        &self,
        queues: &mut HashMap<TopicPartition, PartitionQueue>,
        topic: &str,
        n: usize,
        size: usize,
    ) -> (TopicPartition, bool) {
        let inner = &self.inner;
        let batch_size = inner.config.batch_size;
        let mut sticky = inner.sticky.lock();
        let mut closed = false;
        let current = sticky.get(topic).copied();
        if let Some((p, sent)) = current
            && (p as usize) < n
        {
            let tp = TopicPartition::new(topic.to_owned(), p);
            let open = queues
                .get(&tp)
                .and_then(|q| q.open.as_ref())
                .filter(|o| !o.builder.is_empty());
            let full = open.is_some_and(|o| o.builder.estimated_size() + size > batch_size);
            let stay = !full
                && (sent < batch_size || open.is_some())
                && sent < batch_size.saturating_mul(2);
            if stay {
                return (tp, false);
            }
            if full && let Some(q) = queues.get_mut(&tp) {
                close_open(inner, q);
                closed = true;
            }
        }
        // Among the partitions with a leader when there are any (Kafka's
        // `availablePartitionsForTopic`): records stuck to an offline one would only wait there.
        let mut choices: Vec<i32> = inner
            .client
            .cached_partitions(topic)
            .map(|ps| {
                (0..n.min(ps.len()) as i32)
                    .filter(|p| ps[*p as usize].leader >= 0)
                    .collect()
            })
            .unwrap_or_default();
        if choices.is_empty() {
            choices = (0..n.max(1) as i32).collect();
        }
        if choices.len() > 1
            && let Some((p, _)) = current
        {
            choices.retain(|c| *c != p);
        }
        let next = choices[rand::random_range(0..choices.len())];
        sticky.insert(topic.to_owned(), (next, 0));
        (TopicPartition::new(topic.to_owned(), next), closed)
    }

    /// Sends everything queued now and waits until every record sent before the call is
    /// acknowledged or failed (Kafka's `flush`: records sent meanwhile, by other tasks, are not
    /// waited for, so a producer shared with a busy sender still flushes).
    pub async fn flush(&self) {
        let inner = &self.inner;
        // Until this returns or is dropped (a caller's timeout), batches go without lingering.
        struct Flushing<'a>(&'a AtomicUsize);
        impl Drop for Flushing<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::AcqRel);
            }
        }
        inner.flushing.fetch_add(1, Ordering::AcqRel);
        let _flushing = Flushing(&inner.flushing);
        let generation = {
            let _queues = inner.queues.lock();
            inner.flush_gen.fetch_add(1, Ordering::AcqRel)
        };
        inner.wake.notify_one();
        loop {
            let idle = inner.idle.notified();
            if inner
                .unfinished
                .lock()
                .range(..=generation)
                .next()
                .is_none()
            {
                break;
            }
            inner.wake.notify_one();
            let _ = tokio::time::timeout(Duration::from_millis(50), idle).await;
        }
    }

    /// Flushes, then stops the sender task.
    pub async fn close(self) {
        self.flush().await;
        self.inner.closed.store(true, Ordering::Release);
        self.inner.wake.notify_one();
        let _ = self.sender.await;
    }
}

/// The partitions of `topic`, waiting up to `patience` while its metadata is on its way (a
/// broker learns of a new topic a moment after the controllers create it).
///
/// A topic that does not exist fails at once with UNKNOWN_TOPIC_OR_PARTITION: rill creates no
/// topics on first use, so waiting could never help. A broker's "unknown topic" can merely lag
/// behind the controllers, so it is confirmed with the active controller before giving up; when
/// the controllers cannot be asked, the wait goes on.
/// The partition count of `topic` once it has more than `partition` partitions (fresh metadata
/// every 100 ms), or what it still is after `patience`.
async fn partitions_beyond(
    client: &ClusterClient,
    topic: &str,
    partition: i32,
    patience: Duration,
) -> Result<usize, ProducerError> {
    let deadline = Instant::now() + patience;
    loop {
        client.invalidate(topic);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let n = wait_for_topic(client, topic, remaining).await?.len();
        if (partition as usize) < n || Instant::now() >= deadline {
            return Ok(n);
        }
        tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
    }
}

async fn wait_for_topic(
    client: &ClusterClient,
    topic: &str,
    patience: Duration,
) -> Result<Vec<LeaderInfo>, ProducerError> {
    let deadline = Instant::now() + patience;
    loop {
        let e = match client.partitions(topic).await {
            Ok(p) => return Ok(p),
            Err(e) => e,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if e.code == ErrorCode::UnknownTopicOrPartition
            && controllers_know_no(client, topic, remaining.min(Duration::from_secs(5))).await
        {
            return Err(ApiError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {topic} does not exist"),
            )
            .into());
        }
        if !e.code.is_retriable() {
            return Err(e.into());
        }
        if remaining.is_zero() {
            return Err(ProducerError::Timeout(format!(
                "no metadata for topic {topic:?} within max.block.ms; last error: {e}"
            )));
        }
        tokio::time::sleep(remaining.min(Duration::from_millis(100))).await;
    }
}

/// True when the active controller answers that `topic` does not exist (its answer is
/// authoritative: it reads committed metadata); false when it knows the topic or cannot be asked.
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

/// Closes the partition's open batch: builds (and compresses) it and queues it for sending. A
/// batch that cannot be built fails its records, and gives back what they hold (buffer memory,
/// the pending count) like any finished batch: otherwise `flush` and `close` would wait forever.
fn close_open(inner: &Inner, q: &mut PartitionQueue) {
    let Some(open) = q.open.take() else { return };
    match build_batch(inner, open.builder) {
        Ok(bytes) => q.ready.push_back(Batch {
            bytes,
            waiters: open.waiters,
            permits: open.permits,
            gens: open.gens,
            created: open.created,
            retry_at: None,
            seq: None,
            sent_as_head: false,
            last_error: None,
            alone: false,
            maybe_written: false,
        }),
        Err(e) => {
            let codec = inner.config.compression;
            let err = ProducerError::Build(format!("{codec} compression failed: {e}"));
            let failed = Batch {
                bytes: Bytes::new(),
                waiters: open.waiters,
                permits: open.permits,
                gens: open.gens,
                created: open.created,
                retry_at: None,
                seq: None,
                sent_as_head: false,
                last_error: None,
                alone: false,
                maybe_written: false,
            };
            finish_batch(inner, failed, |_, _| Err(err.clone()));
        }
    }
}

/// `RecordBatchBuilder::build`, or (in tests) a forced failure: real compression into memory
/// practically never fails, but the failure path must still release everything.
fn build_batch(inner: &Inner, builder: RecordBatchBuilder) -> Result<Bytes, BatchError> {
    #[cfg(test)]
    if inner.fail_builds.load(Ordering::Acquire) {
        return Err(BatchError::Compression {
            codec: inner.config.compression,
            reason: "injected by a test".into(),
        });
    }
    #[cfg(not(test))]
    let _ = inner;
    builder.build()
}

/// A partition's batches on their way, with what is needed to complete or retry them.
struct Shipment {
    topic: String,
    partition: i32,
    batches: Vec<Batch>,
}

/// Idempotence: the producer id and epoch to stamp new batches with, getting one
/// (InitProducerId) when there is none yet and something to send, or bumping the epoch (KIP-360)
/// when a partition asked for it. `None` while batches must wait. A bump does not wait for other
/// partitions' requests in flight: each partition keeps the epoch its sequenced batches were sent
/// under until none of them is left (see [`PartitionQueue::producer`]).
async fn producer_for_sending(inner: &Arc<Inner>) -> Option<(i64, i16)> {
    let state = *inner.producer_id.lock();
    if let Some(id) = state.id
        && !state.bump
    {
        return Some(id);
    }
    if state.retry_at.is_some_and(|t| t > Instant::now())
        || inner.pending.load(Ordering::Acquire) == 0
    {
        return None;
    }
    // A bump sends the id and epoch it has; a fresh start (or a refused bump) sends neither.
    let (producer_id, producer_epoch) = match state.id {
        Some((id, epoch)) if state.bump => (Some(id), Some(i32::from(epoch))),
        _ => (None, None),
    };
    let request = InitProducerIdRequest {
        transactional_id: None,
        producer_id,
        producer_epoch,
    };
    let answer = inner
        .client
        .admin(inner.config.request_timeout, |mut c| {
            let request = request.clone();
            async move { c.init_producer_id(request).await }
        })
        .await;
    let granted = match answer {
        Ok(r) if r.error_code == ErrorCode::None as i32 => i16::try_from(r.producer_epoch)
            .ok()
            .map(|e| (r.producer_id, e)),
        Ok(r) => {
            tracing::warn!(code = r.error_code, message = %r.error_message, "InitProducerId refused; asking for a new producer id");
            None
        }
        Err(e) => {
            tracing::debug!(error = %e, "InitProducerId failed; retrying");
            None
        }
    };
    let mut p = inner.producer_id.lock();
    match granted {
        Some(id) => {
            tracing::debug!(producer_id = id.0, epoch = id.1, "producer id and epoch");
            *p = ProducerIdState {
                id: Some(id),
                bump: false,
                retry_at: None,
            };
            Some(id)
        }
        None => {
            if producer_id.is_some() {
                // A refused bump: start over with a new producer id.
                p.id = None;
            }
            p.retry_at = Some(Instant::now() + inner.config.retry_backoff);
            None
        }
    }
}

/// Asks for an epoch bump (KIP-360) before anything more is sent, unless the epoch `from` was
/// bumped already (by another partition's request).
fn request_epoch_bump(inner: &Inner, from: Option<(i64, i16)>) {
    let mut p = inner.producer_id.lock();
    if p.id.is_some() && p.id == from {
        p.bump = true;
    }
}

/// Idempotence: fails `b`, a batch of `q`, to its sender. A batch that was sent may have been
/// written (its outcome is unknown): the partition's sequence is unresolved up to its end, so
/// nothing new goes out until that is settled — it is never sent again, and never renumbered.
fn fail_batch(inner: &Inner, q: &mut PartitionQueue, b: Batch, err: &ProducerError) {
    if let Some((_, seq)) = b.seq
        && !q.rewrite
    {
        let end = seq + b.records();
        if end > q.acked_seq {
            q.unresolved = Some(q.unresolved.map_or(end, |u| u.max(end)));
        }
    }
    finish_batch(inner, b, |_, _| Err(err.clone()));
}

/// Fails the batches at the front of the partition's queue that are past `delivery.timeout.ms`
/// (Kafka's `RecordAccumulator.expiredBatches`; retries included, which leaves their sequences
/// unresolved).
fn expire_waiting(inner: &Inner, q: &mut PartitionQueue, now: Instant, why: &str) {
    while q
        .ready
        .front()
        .is_some_and(|b| now.duration_since(b.created) >= inner.config.delivery_timeout)
    {
        if let Some(b) = q.ready.pop_front() {
            let err = ProducerError::Timeout(match &b.last_error {
                Some(e) => format!("delivery.timeout.ms passed {why}; last error: {e}"),
                None => format!("delivery.timeout.ms passed {why}"),
            });
            fail_batch(inner, q, b, &err);
        }
    }
}

/// The partition leader remembers the last 64 batches of each producer
/// (`rill_storage::NUM_BATCHES_TO_RETAIN`; Kafka's brokers remember 5): a request never carries
/// more new batches than that, so a retry of a request that was written after all is
/// recognised batch by batch as duplicates. Talking to a broker that remembers fewer would make
/// such a retry a sequence gap; rill's brokers are the only ones this producer talks to.
const MAX_BATCHES_PER_IDEMPOTENT_REQUEST: usize = 64;

/// Idempotence: one request of the partition in flight at a time, carrying up to
/// [`MAX_BATCHES_PER_IDEMPOTENT_REQUEST`] ready batches (and `max.request.size`), each new batch
/// stamped with the producer id, epoch and the partition's next sequence. A retry sends the
/// oldest sequenced batch alone: each is then either a duplicate the leader remembers (answered
/// with its original offset) or the next sequence — never a mix the leader must refuse (which
/// would force an epoch bump and write the written part again). Requests to one broker still pipeline, up to `max.in.flight` (Kafka's
/// per-connection limit): rill's broker appends the requests of one connection on several I/O
/// threads at once, so two requests of one partition in flight could be appended out of order
/// and be refused as a sequence gap — one per partition keeps order without stalling the broker.
fn drain_idempotent(
    inner: &Inner,
    (topic, partition): (&str, i32),
    q: &mut PartitionQueue,
    current: (i64, i16),
    now: Instant,
    shipments: &mut Vec<Shipment>,
    next_wake: &mut Option<Instant>,
) {
    if q.in_flight > 0 {
        return;
    }
    expire_waiting(inner, q, now, "before the batch could be sent (again)");
    let sequenced = |q: &PartitionQueue| q.ready.front().is_some_and(|b| b.seq.is_some());
    if q.producer != Some(current) {
        if q.rewrite {
            // The epoch bump this partition asked for: its batches were not written, so they
            // start again at 0 (Kafka's `startSequencesAtBeginning`).
            for b in q.ready.iter_mut() {
                b.seq = None;
                b.retry_at = None;
                b.maybe_written = false;
            }
            q.rewrite = false;
        }
        // Batches sent under the old epoch go on being retried under it (the leader knows no
        // newer one for this partition) until each is acknowledged or failed; only then does the
        // partition move to the new epoch, starting at sequence 0.
        if !sequenced(q) {
            q.producer = Some(current);
            q.next_seq = 0;
            q.acked_seq = 0;
            q.unresolved = None;
        }
    }
    if q.rewrite {
        // Waiting for the epoch bump it asked for.
        return;
    }
    if !sequenced(q)
        && !q.ready.is_empty()
        && let Some(end) = q.unresolved
    {
        if q.acked_seq >= end {
            q.unresolved = None;
        } else {
            // Batches of unknown outcome and no later batch left to tell whether they were
            // written: new batches cannot follow them in this epoch (they would be refused as a
            // gap, or, renumbered, duplicate them). Bump the epoch; they stay failed.
            request_epoch_bump(inner, q.producer);
            *next_wake = Some(now);
            return;
        }
    }
    let (producer_id, epoch) = current;
    let Some(front) = q.ready.front() else { return };
    if let Some(at) = front.retry_at
        && at > now
    {
        *next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
        return;
    }
    let retry = front.seq.is_some();
    let mut batches: Vec<Batch> = Vec::new();
    let mut bytes = 0;
    let max_batches = if retry {
        1
    } else {
        MAX_BATCHES_PER_IDEMPOTENT_REQUEST
    };
    while let Some(front) = q.ready.front() {
        if front.seq.is_some() != retry
            || batches.len() >= max_batches
            || (!batches.is_empty() && bytes + front.bytes.len() > inner.config.max_request_size)
        {
            break;
        }
        let Some(mut b) = q.ready.pop_front() else {
            break;
        };
        if b.seq.is_none() {
            let seq = q.next_seq;
            q.next_seq += b.records();
            // The batch is not shared yet (it was never sent), so it is stamped in place.
            let mut stamped = std::mem::take(&mut b.bytes)
                .try_into_mut()
                .unwrap_or_else(|shared| BytesMut::from(&shared[..]));
            set_producer_state(&mut stamped, producer_id, epoch, wire_seq(seq));
            b.bytes = stamped.freeze();
            b.seq = Some((epoch, seq));
        }
        b.sent_as_head = batches.is_empty() && b.seq.is_some_and(|(_, seq)| seq == q.acked_seq);
        bytes += b.bytes.len();
        batches.push(b);
    }
    if batches.is_empty() {
        return;
    }
    q.in_flight = 1;
    shipments.push(Shipment {
        topic: topic.to_owned(),
        partition,
        batches,
    });
}

async fn sender_loop(inner: Arc<Inner>) {
    loop {
        let producer = if inner.idempotence {
            producer_for_sending(&inner).await
        } else {
            None
        };
        let now = Instant::now();
        let flushing =
            inner.flushing.load(Ordering::Acquire) > 0 || inner.closed.load(Ordering::Acquire);
        let mut next_wake: Option<Instant> = None;
        let mut shipments: Vec<Shipment> = Vec::new();
        {
            let mut queues = inner.queues.lock();
            for (TopicPartition { topic, partition }, q) in queues.iter_mut() {
                if q.open.as_ref().is_some_and(|o| {
                    flushing || now.duration_since(o.created) >= inner.config.linger
                }) {
                    close_open(&inner, q);
                } else if let Some(o) = &q.open {
                    let due = o.created + inner.config.linger;
                    next_wake = Some(next_wake.map_or(due, |w| w.min(due)));
                }
                if inner.idempotence {
                    match producer {
                        Some(p) => drain_idempotent(
                            &inner,
                            (topic, *partition),
                            q,
                            p,
                            now,
                            &mut shipments,
                            &mut next_wake,
                        ),
                        None => {
                            expire_waiting(
                                &inner,
                                q,
                                now,
                                "while waiting for a producer id (InitProducerId)",
                            );
                            if !q.ready.is_empty() {
                                let at = now + inner.config.retry_backoff;
                                next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                            }
                        }
                    }
                    continue;
                }
                if q.in_flight > 0 || q.ready.is_empty() {
                    continue;
                }
                if let Some(at) = q.ready.front().and_then(|b| b.retry_at)
                    && at > now
                {
                    next_wake = Some(next_wake.map_or(at, |w| w.min(at)));
                    continue;
                }
                // All ready batches of the partition, up to max.request.size, in one request
                // (but a batch to be sent alone).
                let mut batches = Vec::new();
                let mut bytes = 0;
                while let Some(b) = q.ready.front() {
                    if !batches.is_empty()
                        && (b.alone || bytes + b.bytes.len() > inner.config.max_request_size)
                    {
                        break;
                    }
                    bytes += b.bytes.len();
                    let alone = b.alone;
                    if let Some(b) = q.ready.pop_front() {
                        batches.push(b);
                    }
                    if alone {
                        break;
                    }
                }
                q.in_flight = 1;
                shipments.push(Shipment {
                    topic: topic.clone(),
                    partition: *partition,
                    batches,
                });
            }
        }
        if shipments.is_empty() {
            if inner.closed.load(Ordering::Acquire) && inner.pending.load(Ordering::Acquire) == 0 {
                return;
            }
            let wait = next_wake.map_or(Duration::from_millis(100), |w| {
                w.saturating_duration_since(Instant::now())
            });
            let _ = tokio::time::timeout(wait, inner.wake.notified()).await;
            continue;
        }
        // Group by leader (each topic's leaders looked up once) and send.
        let mut leaders: HashMap<String, Vec<i32>> = HashMap::new();
        let mut by_leader: HashMap<i32, Vec<Shipment>> = HashMap::new();
        for s in shipments {
            if !leaders.contains_key(&s.topic) {
                let of_topic = inner.client.leaders(&s.topic).await.unwrap_or_default();
                leaders.insert(s.topic.clone(), of_topic);
            }
            let leader = leaders
                .get(&s.topic)
                .and_then(|l| l.get(s.partition as usize))
                .copied()
                .unwrap_or(-1);
            by_leader.entry(leader).or_default().push(s);
        }
        for (leader, shipments) in by_leader {
            if leader < 0 {
                for s in shipments {
                    let e = ApiError::new(
                        ErrorCode::LeaderNotAvailable,
                        format!("{}-{} has no leader right now", s.topic, s.partition),
                    );
                    inner.client.invalidate(&s.topic);
                    requeue_or_fail(&inner, s, e, false);
                }
                continue;
            }
            let slots =
                {
                    let mut m = inner.broker_slots.lock();
                    Arc::clone(m.entry(leader).or_insert_with(|| {
                        Arc::new(Semaphore::new(inner.config.max_in_flight.max(1)))
                    }))
                };
            // Spread the leader's partitions over up to max.in.flight requests so the broker's
            // I/O threads append them in parallel (each partition still has one request in
            // flight, which keeps its order).
            let requests = inner.config.max_in_flight.max(1).min(shipments.len());
            let chunks = spread(shipments, requests, inner.config.max_request_size);
            for chunk in chunks {
                // A request waits for its broker's slot on its own task: a broker with every
                // slot taken (stalled, slow) holds its own partitions only (each has this
                // request in flight), never the sender's loop and the other brokers' requests.
                let slots = Arc::clone(&slots);
                let inner = Arc::clone(&inner);
                tokio::spawn(async move {
                    let Ok(slot) = slots.acquire_owned().await else {
                        return;
                    };
                    send_to(&inner, leader, chunk).await;
                    drop(slot);
                    inner.wake.notify_one();
                });
            }
        }
    }
}

/// Spreads one broker's shipments round-robin over `requests` requests, starting another
/// request whenever one would grow past `max_request_size` (each shipment is within it alone),
/// so no request exceeds what the broker accepts however many partitions are backlogged.
fn spread(
    shipments: Vec<Shipment>,
    requests: usize,
    max_request_size: usize,
) -> Vec<Vec<Shipment>> {
    let requests = requests.max(1);
    let mut chunks: Vec<(usize, Vec<Shipment>)> = (0..requests).map(|_| (0, Vec::new())).collect();
    let mut full: Vec<Vec<Shipment>> = Vec::new();
    for (i, s) in shipments.into_iter().enumerate() {
        let size: usize = s.batches.iter().map(|b| b.bytes.len()).sum();
        let chunk = &mut chunks[i % requests];
        if !chunk.1.is_empty() && chunk.0 + size > max_request_size {
            full.push(std::mem::take(&mut chunk.1));
            chunk.0 = 0;
        }
        chunk.0 += size;
        chunk.1.push(s);
    }
    full.extend(chunks.into_iter().map(|(_, c)| c).filter(|c| !c.is_empty()));
    full
}

async fn send_to(inner: &Arc<Inner>, leader: i32, shipments: Vec<Shipment>) {
    let mut by_topic: HashMap<&str, Vec<PartitionProduceData>> = HashMap::new();
    for s in &shipments {
        let records = match s.batches.as_slice() {
            [one] => one.bytes.clone(),
            batches => {
                let mut records = Vec::with_capacity(batches.iter().map(|b| b.bytes.len()).sum());
                for b in batches {
                    records.extend_from_slice(&b.bytes);
                }
                Bytes::from(records)
            }
        };
        by_topic
            .entry(&s.topic)
            .or_default()
            .push(PartitionProduceData {
                index: s.partition,
                records,
            });
    }
    let request = ProduceRequest {
        acks: inner.config.acks,
        timeout_ms: inner.config.request_timeout.as_millis() as u32,
        topics: by_topic
            .into_iter()
            .map(|(name, partitions)| TopicProduceData {
                name: name.to_owned(),
                partitions,
            })
            .collect(),
    };
    let result = match inner.client.broker(leader) {
        Ok(mut c) => c
            .produce(request)
            .await
            .map(|r| r.into_inner())
            .map_err(ApiError::from),
        Err(e) => Err(e),
    };
    match result {
        Err(e) => {
            // No answer: ask another broker for metadata first (the leader may be cut off from
            // the cluster and still answer with its old view).
            inner.client.broker_failed(leader);
            for s in shipments {
                inner.client.invalidate(&s.topic);
                requeue_or_fail(inner, s, e.clone(), false);
            }
        }
        Ok(response) => {
            for s in shipments {
                let pr = response
                    .topics
                    .iter()
                    .find(|t| t.name == s.topic)
                    .and_then(|t| t.partitions.iter().find(|p| p.index == s.partition));
                match pr {
                    None if inner.config.acks == 0 => complete(inner, s, -1, -1),
                    None => {
                        let e = ApiError::new(
                            ErrorCode::UnknownServerError,
                            "the broker's response omitted the partition",
                        );
                        requeue_or_fail(inner, s, e, false);
                    }
                    Some(pr) if pr.error_code == 0 => {
                        let (base, lat) = (pr.base_offset, pr.log_append_time_ms);
                        complete(inner, s, base, lat);
                    }
                    Some(pr) => {
                        let code = ErrorCode::try_from(pr.error_code)
                            .unwrap_or(ErrorCode::UnknownServerError);
                        let hint_taken = inner.client.take_leader_hint(
                            &s.topic,
                            s.partition,
                            pr.current_leader.as_ref(),
                        );
                        if !hint_taken && code.is_retriable() {
                            // No usable hint (none, or an older leader epoch: maybe the topic
                            // was created again): refresh the metadata.
                            inner.client.invalidate(&s.topic);
                        }
                        // Another broker leads now: retried there at once, not after
                        // `retry.backoff.ms` (KIP-951), as a leadership move is over for the
                        // broker that named the new leader.
                        let moved = hint_taken
                            && pr
                                .current_leader
                                .as_ref()
                                .is_some_and(|cl| cl.leader_id != leader);
                        let e = ApiError::new(code, pr.error_message.clone());
                        requeue_or_fail(inner, s, e, moved);
                    }
                }
            }
        }
    }
}

fn finish_batch(
    inner: &Inner,
    b: Batch,
    outcome: impl Fn(usize, i64) -> Result<RecordMetadata, ProducerError>,
) {
    let n = b.waiters.len();
    let mut calls = Vec::new();
    for (i, (w, ts)) in b.waiters.into_iter().enumerate() {
        match w {
            Waiter::Future(tx) => {
                let _ = tx.send(outcome(i, ts));
            }
            Waiter::Callback(f) => calls.push((f, outcome(i, ts))),
        }
    }
    let done = Completions {
        calls,
        permits: b.permits,
        records: n,
        gens: b.gens,
    };
    if done.calls.is_empty() {
        release_memory(inner, &done);
        return;
    }
    // Callbacks never run here: callers may hold the accumulator's lock, and a callback may
    // call `send`. The callback task ends only after the producer is gone, so this cannot fail
    // while `inner` is alive.
    if let Err(mpsc::error::SendError(done)) = inner.callbacks.send(done) {
        release_memory(inner, &done);
    }
}

/// Gives back a finished batch's `buffer.memory` and pending count.
fn release_memory(inner: &Inner, done: &Completions) {
    inner.memory.add_permits(done.permits);
    let mut gen_done = false;
    {
        let mut unfinished = inner.unfinished.lock();
        for (generation, n) in &done.gens {
            if let Some(left) = unfinished.get_mut(generation) {
                *left = left.saturating_sub(*n);
                if *left == 0 {
                    unfinished.remove(generation);
                    gen_done = true;
                }
            }
        }
    }
    if inner.pending.fetch_sub(done.records, Ordering::AcqRel) == done.records || gen_done {
        inner.idle.notify_waiters();
    }
}

/// Runs callbacks ([`Producer::send_with_callback`]), a batch at a time, then gives back what
/// the batch held. Ends when the producer is dropped (its `Inner` holds the sender).
async fn callback_loop(
    mut rx: mpsc::UnboundedReceiver<Completions>,
    inner: std::sync::Weak<Inner>,
) {
    while let Some(mut done) = rx.recv().await {
        for (f, outcome) in done.calls.drain(..) {
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(outcome))).is_err() {
                tracing::error!("a producer callback panicked; the other callbacks still run");
            }
        }
        if let Some(inner) = inner.upgrade() {
            release_memory(&inner, &done);
        }
    }
}

fn complete(inner: &Inner, s: Shipment, base_offset: i64, log_append_time: i64) {
    let acked = s
        .batches
        .iter()
        .filter_map(|b| b.seq.map(|(_, seq)| seq + b.records()))
        .max();
    let mut offset = base_offset;
    for b in s.batches {
        let count = b.waiters.len() as i64;
        let start = offset;
        let topic = s.topic.clone();
        finish_batch(inner, b, |i, ts| {
            Ok(RecordMetadata {
                topic: topic.clone(),
                partition: s.partition,
                offset: if start < 0 { -1 } else { start + i as i64 },
                timestamp: if log_append_time >= 0 {
                    log_append_time
                } else {
                    ts
                },
            })
        });
        if offset >= 0 {
            offset += count;
        }
    }
    release(inner, &s.topic, s.partition, acked);
}

/// A request of the partition came back; `acked` is the logical sequence after its last
/// acknowledged record (idempotence).
fn release(inner: &Inner, topic: &str, partition: i32, acked: Option<i64>) {
    if let Some(q) = inner
        .queues
        .lock()
        .get_mut(&TopicPartition::new(topic, partition))
    {
        q.in_flight = q.in_flight.saturating_sub(1);
        if let Some(end) = acked {
            q.acked_seq = q.acked_seq.max(end);
            // A later batch written proves the ones of unknown outcome before it written too
            // (the leader appends a producer's sequences only in order).
            if q.unresolved.is_some_and(|u| q.acked_seq >= u) {
                q.unresolved = None;
            }
        }
    }
}

fn requeue_or_fail(inner: &Inner, s: Shipment, e: ApiError, new_leader: bool) {
    let now = Instant::now();
    let sequence_error = matches!(
        e.code,
        ErrorCode::OutOfOrderSequenceNumber | ErrorCode::UnknownProducerId
    );
    let first_seq = s.batches.first().and_then(|b| b.seq).map(|(_, seq)| seq);
    // The broker validates a partition's batches before writing any: a refusal for one batch
    // (too large, an invalid record or timestamp) refused them all, and wrote nothing. Each is
    // sent again alone, so only the bad one fails (Kafka sends one batch per partition).
    let one_refused_all = s.batches.len() > 1 && refused_unwritten(e.code);
    let retriable =
        (e.code.is_retriable() || (sequence_error && first_seq.is_some()) || one_refused_all)
            && !inner.closed.load(Ordering::Acquire);
    // A batch of several records refused alone as too large was not written: it is split in
    // two and each half sent again (Kafka's `RecordAccumulator.splitAndReenqueue`), until the
    // pieces fit or a single record is what is too large.
    // Not a batch that an earlier attempt may have written: its halves would be new batches
    // under its sequences, which the leader takes for a gap.
    let split = e.code == ErrorCode::MessageTooLarge
        && s.batches.len() == 1
        && s.batches[0].records() > 1
        && !s.batches[0].maybe_written
        && now.duration_since(s.batches[0].created) < inner.config.delivery_timeout
        && !inner.closed.load(Ordering::Acquire);
    let mut queues = inner.queues.lock();
    let Some(q) = queues.get_mut(&TopicPartition::new(s.topic.clone(), s.partition)) else {
        drop(queues);
        for b in s.batches {
            finish_batch(inner, b, |_, _| Err(ProducerError::Api(e.clone())));
        }
        return;
    };
    q.in_flight = q.in_flight.saturating_sub(1);
    // Idempotence (Kafka's `TransactionManager.canRetry`): OUT_OF_ORDER_SEQUENCE_NUMBER or
    // UNKNOWN_PRODUCER_ID for the oldest unacknowledged batch — or for the batch right after
    // batches of unknown outcome — proves a gap: the leader lost this producer's state or never
    // got the batches before, so neither this batch nor any later one of the partition is
    // written. They are renumbered under a new epoch (KIP-360). For any other batch the error
    // may only mean an earlier one has not arrived: it is retried as it is.
    let gap = sequence_error
        && first_seq.is_some()
        && (s.batches.first().is_some_and(|b| b.sent_as_head) || q.unresolved == first_seq);
    if gap {
        q.rewrite = true;
        q.unresolved = None;
        request_epoch_bump(inner, q.producer);
    }
    let mut keep = Vec::new();
    for b in s.batches {
        if split {
            match split_records(inner, &b) {
                Ok(parts) => {
                    let (first, second) = split_batch(b, parts, &e);
                    tracing::debug!(topic = %s.topic, partition = s.partition, records = first.records() + second.records(), "splitting a batch refused as too large");
                    keep.push(first);
                    keep.push(second);
                }
                Err(why) => {
                    let err = ProducerError::Api(ApiError::new(
                        e.code,
                        format!("{}; splitting the batch failed: {why}", e.message),
                    ));
                    fail_batch(inner, q, b, &err);
                }
            }
        } else if retriable && now.duration_since(b.created) < inner.config.delivery_timeout {
            let mut b = b;
            b.last_error = Some(e.to_string());
            b.alone |= one_refused_all;
            // Refused whole before anything was written, or proven missing: this attempt wrote
            // nothing. Any other retriable error (a lost answer, a leader change, a timeout
            // after the append) may follow a write.
            b.maybe_written |= !one_refused_all && !gap;
            keep.push(b);
        } else {
            let err = if retriable {
                ProducerError::Timeout(format!("delivery.timeout.ms passed; last error: {e}"))
            } else {
                ProducerError::Api(e.clone())
            };
            if !retriable
                && refused_unwritten(e.code)
                && !b.maybe_written
                && take_back_sequences(q, &b)
            {
                // Refused before anything was written, and the last batch numbered: its
                // sequences go to the next batch (Kafka's `adjustSequencesDueToFailedBatch`)
                // rather than leaving a gap that only an epoch bump would close.
                finish_batch(inner, b, |_, _| Err(err.clone()));
                continue;
            }
            // Sent, so maybe written: its sequence stays unresolved (unless a gap proved it
            // missing). Never renumbered, never sent again.
            fail_batch(inner, q, b, &err);
        }
    }
    for mut b in keep.into_iter().rev() {
        // A gap is renumbered under the new epoch at once, a batch whose partition has a new
        // leader goes there at once, and so does one split from a refused request; anything
        // else waits a back-off.
        b.retry_at = (!gap && !new_leader && !one_refused_all && !split)
            .then(|| now + inner.config.retry_backoff);
        q.ready.push_front(b);
    }
    if inner.idempotence {
        // Retries go back in sequence order, ahead of batches never sent (a stable sort).
        q.ready
            .make_contiguous()
            .sort_by_key(|b| b.seq.map_or(i64::MAX, |(_, seq)| seq));
    }
    drop(queues);
    if retriable {
        tracing::debug!(topic = %s.topic, partition = s.partition, error = %e, "retrying a produce");
    }
}

/// Errors with which a leader refuses a partition's batches after validating them and before
/// writing any: the refused batch is certainly not in the log.
fn refused_unwritten(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::MessageTooLarge
            | ErrorCode::RecordListTooLarge
            | ErrorCode::InvalidRecord
            | ErrorCode::InvalidTimestamp
            | ErrorCode::CorruptMessage
    )
}

/// Idempotence: gives the sequences of `b` — certainly not written — back to the partition,
/// when no later batch was numbered after it (nothing in flight, no other numbered batch past
/// it waiting) and it belongs to the partition's current epoch. Says whether it did; if not,
/// the sequences stay a gap for the usual handling (unresolved, then an epoch bump).
fn take_back_sequences(q: &mut PartitionQueue, b: &Batch) -> bool {
    let Some((epoch, seq)) = b.seq else {
        return false;
    };
    let end = seq + b.records();
    let later_numbered = q.ready.iter().any(|r| r.seq.is_some_and(|(_, s)| s >= end));
    if q.rewrite
        || q.in_flight > 0
        || later_numbered
        || q.next_seq != end
        || q.unresolved.is_some()
        || q.producer.map(|(_, e)| e) != Some(epoch)
    {
        return false;
    }
    q.next_seq = seq;
    true
}

/// The records of `b` rebuilt as two batches of half of them each, in order, with the
/// producer's codec; under idempotence stamped with `b`'s producer epoch and sequence range
/// (the first half starts at its sequence, the second right after), so that later batches
/// need no renumbering.
fn split_records(inner: &Inner, b: &Batch) -> Result<(Bytes, Bytes), BatchError> {
    let batch = rill_protocol::record_batch::RecordBatch::parse(&b.bytes)?;
    let header = *batch.header();
    let records = batch.records(usize::MAX)?;
    let records = records.iter().collect::<Result<Vec<_>, _>>()?;
    let half = records.len() / 2;
    let build = |part: &[rill_protocol::record_batch::Record<'_>], seq_offset: i64| {
        let mut builder = RecordBatchBuilder::new(inner.config.compression);
        if let Some((epoch, seq)) = b.seq {
            builder = builder.producer(header.producer_id, epoch, wire_seq(seq + seq_offset));
        }
        for r in part {
            let headers: Vec<RecordHeader<'_>> = r.headers().collect();
            builder.append(r.timestamp, r.key, r.value, &headers);
        }
        build_batch(inner, builder)
    };
    Ok((
        build(&records[..half], 0)?,
        build(&records[half..], half as i64)?,
    ))
}

/// Splits `b`, refused as too large and so not written, into two batches carrying `parts`
/// (from [`split_records`]) and half of its records' waiters, buffer memory and flush
/// generations each. Both keep the original's delivery deadline and are sent alone.
fn split_batch(
    mut b: Batch,
    (first_bytes, second_bytes): (Bytes, Bytes),
    refusal: &ApiError,
) -> (Batch, Batch) {
    let half = b.waiters.len() / 2;
    let second_waiters = b.waiters.split_off(half);
    let second_permits = b.permits - b.permits * half / (half + second_waiters.len());
    // The flush generations of the records, in order: the first `half` go with the first part.
    let mut first_gens = FlushGens::new();
    let mut second_gens = FlushGens::new();
    let mut left = half;
    for (generation, n) in b.gens {
        let here = n.min(left);
        left -= here;
        if here > 0 {
            first_gens.push((generation, here));
        }
        if n > here {
            second_gens.push((generation, n - here));
        }
    }
    let part = |bytes, waiters, permits, gens, seq| Batch {
        bytes,
        waiters,
        permits,
        gens,
        created: b.created,
        retry_at: None,
        seq,
        sent_as_head: false,
        last_error: Some(refusal.to_string()),
        alone: true,
        maybe_written: false,
    };
    let second_seq = b.seq.map(|(epoch, seq)| (epoch, seq + half as i64));
    (
        part(
            first_bytes,
            b.waiters,
            b.permits - second_permits,
            first_gens,
            b.seq,
        ),
        part(
            second_bytes,
            second_waiters,
            second_permits,
            second_gens,
            second_seq,
        ),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_to_one_broker_stay_within_max_request_size() {
        let shipment = |partition: i32, size: usize| Shipment {
            topic: "t".into(),
            partition,
            batches: vec![Batch {
                bytes: Bytes::from(vec![0u8; size]),
                waiters: Vec::new(),
                permits: 0,
                gens: FlushGens::new(),
                created: Instant::now(),
                retry_at: None,
                seq: None,
                sent_as_head: false,
                last_error: None,
                alone: false,
                maybe_written: false,
            }],
        };
        // 40 backlogged partitions of 1000 bytes over 5 requests, at most 3000 bytes each.
        let chunks = spread((0..40).map(|p| shipment(p, 1000)).collect(), 5, 3000);
        let sizes: Vec<usize> = chunks
            .iter()
            .map(|c| {
                c.iter()
                    .flat_map(|s| &s.batches)
                    .map(|b| b.bytes.len())
                    .sum()
            })
            .collect();
        assert!(sizes.iter().all(|s| *s <= 3000), "{sizes:?}");
        assert_eq!(sizes.iter().sum::<usize>(), 40_000, "nothing lost");
        let mut partitions: Vec<i32> = chunks.iter().flatten().map(|s| s.partition).collect();
        partitions.sort();
        assert_eq!(
            partitions,
            (0..40).collect::<Vec<_>>(),
            "each partition once"
        );
        // A shipment alone larger than the limit still goes (alone).
        let chunks = spread(vec![shipment(0, 5000), shipment(1, 10)], 1, 3000);
        assert_eq!(chunks.len(), 2);
    }
    use rill_protocol::proto::broker_server::{Broker, BrokerServer};
    use rill_protocol::proto::*;
    use tonic::{Request, Response, Status};

    /// A broker leading every partition of topic `t` (one partition) and accepting every batch.
    struct FakeBroker {
        port: u16,
    }

    #[tonic::async_trait]
    impl Broker for FakeBroker {
        async fn produce(
            &self,
            request: Request<ProduceRequest>,
        ) -> Result<Response<ProduceResponse>, Status> {
            let topics = request
                .into_inner()
                .topics
                .into_iter()
                .map(|t| TopicProduceResponse {
                    name: t.name,
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| PartitionProduceResponse {
                            index: p.index,
                            base_offset: 0,
                            log_append_time_ms: -1,
                            ..Default::default()
                        })
                        .collect(),
                })
                .collect();
            Ok(Response::new(ProduceResponse { topics }))
        }
        async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
            Err(Status::unimplemented("fake"))
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
                        leader_epoch: 0,
                        ..Default::default()
                    }],
                    ..Default::default()
                }],
                ..Default::default()
            }))
        }
        async fn describe_configs(
            &self,
            _: tonic::Request<DescribeConfigsRequest>,
        ) -> Result<tonic::Response<DescribeConfigsResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("fake"))
        }
    }

    async fn fake_broker() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(BrokerServer::new(FakeBroker { port }))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        format!("127.0.0.1:{port}")
    }

    /// A record larger than `buffer.memory` is refused at once (it could never be buffered),
    /// and `max.in.flight.requests.per.connection=0` at creation.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn impossible_sizes_are_refused_at_once() {
        let producer = Producer::new(ProducerConfig {
            bootstrap: vec![fake_broker().await],
            buffer_memory: 1024,
            enable_idempotence: Some(false),
            ..Default::default()
        })
        .unwrap();
        let started = Instant::now();
        let e = match producer
            .send(ProducerRecord::new("t", None::<Bytes>, vec![b'x'; 4096]))
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("a 4 KiB record was accepted with buffer.memory = 1024"),
        };
        assert!(started.elapsed() < Duration::from_secs(1));
        assert!(e.to_string().contains("buffer.memory"), "{e}");
        let e = match Producer::new(ProducerConfig {
            max_in_flight: 0,
            ..Default::default()
        }) {
            Err(e) => e,
            Ok(_) => panic!("max.in.flight 0 accepted"),
        };
        assert!(e.to_string().contains("max.in.flight"), "{e}");
    }

    /// A flush given up by its caller (a timeout dropped it) no longer counts: batches linger
    /// again, instead of every later one going out at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cancelled_flush_leaves_linger_in_force() {
        let producer = Producer::new(ProducerConfig {
            bootstrap: vec![fake_broker().await],
            linger: Duration::from_secs(5),
            enable_idempotence: Some(false),
            ..Default::default()
        })
        .unwrap();
        let first = producer
            .send(ProducerRecord::new("t", None::<Bytes>, "first"))
            .await
            .unwrap();
        let _ = tokio::time::timeout(Duration::from_millis(1), producer.flush()).await;
        assert_eq!(producer.inner.flushing.load(Ordering::Acquire), 0);
        tokio::time::timeout(Duration::from_secs(20), first)
            .await
            .expect("the flush sent the first record")
            .unwrap();
        let second = producer
            .send(ProducerRecord::new("t", None::<Bytes>, "second"))
            .await
            .unwrap();
        assert!(
            tokio::time::timeout(Duration::from_millis(1000), second)
                .await
                .is_err(),
            "the second record lingers"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_that_cannot_be_built_fails_its_records_and_frees_what_it_held() {
        let buffer_memory = 64 * 1024;
        let producer = Producer::new(ProducerConfig {
            bootstrap: vec![fake_broker().await],
            buffer_memory,
            linger: Duration::from_millis(1),
            compression: Compression::Gzip,
            // The fake broker has no controller to give out producer ids.
            enable_idempotence: Some(false),
            ..Default::default()
        })
        .unwrap();
        producer.inner.fail_builds.store(true, Ordering::Release);
        let mut deliveries = Vec::new();
        for i in 0..3 {
            let record = ProducerRecord::new("t", None::<Bytes>, format!("value {i}"));
            deliveries.push(producer.send(record).await.unwrap());
        }
        // Before the fix, flush waited forever for records that were already failed.
        tokio::time::timeout(Duration::from_secs(20), producer.flush())
            .await
            .expect("flush returns once the failed batch is released");
        for d in deliveries {
            let e = d.await.unwrap_err();
            assert!(matches!(e, ProducerError::Build(_)), "{e}");
        }
        assert_eq!(producer.inner.pending.load(Ordering::Acquire), 0);
        assert_eq!(producer.inner.memory.available_permits(), buffer_memory);

        // The producer carries on once batches build again.
        producer.inner.fail_builds.store(false, Ordering::Release);
        let d = producer
            .send(ProducerRecord::new("t", None::<Bytes>, "after"))
            .await
            .unwrap();
        let sent = tokio::time::timeout(Duration::from_secs(20), d)
            .await
            .expect("delivered in time")
            .unwrap();
        assert_eq!((sent.topic.as_str(), sent.partition), ("t", 0));
        tokio::time::timeout(Duration::from_secs(20), producer.close())
            .await
            .expect("close returns");
    }
}
