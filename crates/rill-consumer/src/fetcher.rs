//! Fetching (Kafka's `Fetcher` and `FetchCollector`): fetches in flight in the background,
//! started as soon as the previous answer is taken (pipelining), so the network wait overlaps
//! with the application's work. Up to `max.in.flight.fetches.per.broker` fetches go to one
//! leader at a time, over disjoint sets of its partitions, so the broker reads and sends one
//! answer while the client receives and parses another (a partition is in one fetch at most,
//! which keeps its records in order). An answer is buffered as received; the next
//! fetch is sent from after its whole batches (read from their headers), and only then are the
//! batches CRC-checked, decompressed and parsed ([`Fetcher::parse_buffered`]), while the broker
//! reads the next answer. Keys and values are slices of the received buffer, not copies.
//! Retriable failures back a partition off exponentially and refresh metadata;
//! positions advance by batch headers, so compacted batches with offset gaps (or no records at
//! all) never stall a reader.
//!
//! Two positions per partition: the consumed position (in the subscription state: what `poll`
//! returned, what commits store) and the fetch position (where the next fetch starts). The
//! fetch position is the consumed position, or, while records of the partition are buffered,
//! the offset after them: a partition with buffered records is fetched from after them, and
//! that answer is taken only if the consumed position has reached it by then; the consumed
//! position moves to the fetch position only when [`Fetcher::drain`] hands the records to the
//! application. Dropping buffered records (revocation, loss, pause, seek, assign, a
//! poll that failed or was cancelled before returning them) so moves the fetch position back
//! to the consumed position: nothing is skipped and nothing unseen is committed.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_protocol::client::{ClusterClient, LeaderInfo};
use rill_protocol::proto::{FetchPartition, FetchRequest, FetchResponse, FetchTopic};
use rill_protocol::record_batch::{BatchError, Records, batches};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::config::{ConsumerConfig, RetryPolicy};
use crate::error::request_error;
use crate::subscription_state::{FetchState, SubscriptionState};
use crate::{ConsumerError, ConsumerRecord};

/// Consecutive retriable failures of a partition and when it may be fetched again.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Backoff {
    pub failures: u32,
    pub until: Instant,
}

type FetchResult = Result<FetchResponse, ApiError>;
/// A running fetch: its task, its leader and the (partition, position) pairs it asked for.
struct InFlight {
    task: JoinHandle<()>,
    leader: i32,
    requested: Vec<(TopicPartition, i64)>,
}
/// A finished fetch: its id (never reused, so an answer to a cancelled fetch finds no
/// entry in `in_flight` and is ignored), its result.
pub(crate) type Finished = (u64, FetchResult);

/// The fetch settings of [`ConsumerConfig`].
#[derive(Clone, Debug)]
struct FetchSettings {
    max_wait: Duration,
    min_bytes: i32,
    max_bytes: i32,
    max_partition_bytes: i32,
    max_in_flight_per_broker: usize,
    check_crcs: bool,
    retry: RetryPolicy,
    /// `auto.offset.reset` is not `none`: a truncation found (KIP-320) moves the position
    /// back to where the logs part; otherwise it is the application's to handle.
    reset_on_truncation: bool,
}

/// Records of one partition received but not returned yet.
struct Buffered {
    tp: TopicPartition,
    /// The consumed position they were fetched from.
    fetched_at: i64,
    records: Vec<ConsumerRecord>,
    /// The partition's fetch position: the offset after them (past any batch without
    /// records). Before parsing, the offset after the last whole batch received.
    next: i64,
    /// The leader epoch of the last batch taken (-1 when none).
    last_epoch: i32,
    /// The leader epoch of the last whole batch received: `next`'s, for the next fetch's
    /// divergence check (KIP-320).
    next_epoch: i32,
    /// The partition's part of the answer while not parsed yet: the next fetch is sent from
    /// `next` first, so the broker reads it while these are CRC-checked and parsed.
    unparsed: Option<Bytes>,
}

/// Fetches in flight, records received but not yet returned, and per-partition backoff.
pub(crate) struct Fetcher {
    client: ClusterClient,
    settings: FetchSettings,
    /// In the order received, at most one per partition.
    buffered: VecDeque<Buffered>,
    /// By fetch id.
    in_flight: HashMap<u64, InFlight>,
    next_fetch_id: u64,
    results_tx: mpsc::UnboundedSender<Finished>,
    results_rx: mpsc::UnboundedReceiver<Finished>,
    pub(crate) backoff: HashMap<TopicPartition, Backoff>,
    /// When the last `start_fetches` looked at the backoffs: one that ended after this was not
    /// seen ended by it (the scan waits for metadata on the way).
    last_scan: Instant,
    /// When each partition last brought records: fetches list the least recently served
    /// first (Kafka's `movePartitionToEnd`). A broker gives a batch larger than
    /// `max.partition.fetch.bytes` only to a request's first partition with data, so a fixed
    /// order would starve such a partition behind a busy one.
    served: HashMap<TopicPartition, u64>,
    served_count: u64,
    /// Metadata lookups of topics whose leaders are not cached, each on a task of its own: a
    /// poll waits for one only until its timeout, and the next poll takes the answer.
    lookups: HashMap<String, JoinHandle<Result<Vec<LeaderInfo>, ApiError>>>,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        // A lookup left running would outlive the consumer by up to the request timeout.
        for (_, lookup) in self.lookups.drain() {
            lookup.abort();
        }
    }
}

/// A partition to fetch, as a scan found it.
#[derive(Clone)]
struct Wanted {
    tp: TopicPartition,
    position: i64,
    /// The leader epoch of the record before `position` (KIP-320's divergence check), -1 if
    /// unknown.
    last_fetched_epoch: i32,
    /// The leader epoch of the leader fetched from, as the metadata cache has it (-1 unknown).
    leader_epoch: i32,
}

impl Fetcher {
    pub fn new(client: ClusterClient, config: &ConsumerConfig) -> Self {
        let (results_tx, results_rx) = mpsc::unbounded_channel();
        Fetcher {
            client,
            settings: FetchSettings {
                max_wait: config.fetch_max_wait,
                min_bytes: config.fetch_min_bytes,
                max_bytes: config.fetch_max_bytes,
                max_partition_bytes: config.max_partition_fetch_bytes,
                max_in_flight_per_broker: config.max_in_flight_fetches_per_broker.max(1),
                check_crcs: config.check_crcs,
                retry: config.retry(),
                reset_on_truncation: config.auto_offset_reset != crate::OffsetReset::None,
            },
            buffered: VecDeque::new(),
            in_flight: HashMap::new(),
            next_fetch_id: 0,
            results_tx,
            results_rx,
            backoff: HashMap::new(),
            last_scan: Instant::now(),
            served: HashMap::new(),
            served_count: 0,
            lookups: HashMap::new(),
        }
    }

    /// The leaders of `topic`'s partitions: from the cache when fresh, else from a lookup
    /// on a task of its own — meanwhile from the cache when it is only old (the lookup
    /// refreshes it), else waited for until `deadline` (the poll's): `None` while it is still
    /// running (it goes on, and a later scan takes its answer), empty when it failed (the
    /// partitions back off).
    async fn topic_leaders(&mut self, topic: &str, deadline: Instant) -> Option<Vec<LeaderInfo>> {
        let cached = match self.client.cached_leaders(topic) {
            Some((leaders, true)) => return Some(leaders),
            Some((leaders, false)) => Some(leaders),
            None => None,
        };
        let lookup = self.lookups.entry(topic.to_owned()).or_insert_with(|| {
            let client = self.client.clone();
            let topic = topic.to_owned();
            tokio::spawn(async move { client.partitions(&topic).await })
        });
        if let Some(cached) = cached
            && !lookup.is_finished()
        {
            return Some(cached);
        }
        let answer = tokio::time::timeout_at(deadline.into(), lookup)
            .await
            .ok()?;
        self.lookups.remove(topic);
        match answer {
            Ok(Ok(leaders)) => Some(leaders),
            Ok(Err(e)) => {
                tracing::debug!(topic, error = %e, "no metadata for a topic; backing off");
                Some(Vec::new())
            }
            Err(e) => {
                tracing::debug!(topic, error = %e, "metadata lookup task failed; backing off");
                Some(Vec::new())
            }
        }
    }

    /// KIP-320: the leader's log parts from what was read of `tp` before `position`: its
    /// epoch `d.epoch` ends at `d.end_offset` there. Before the position, the records read
    /// from there on were truncated away (an unclean election): the position moves back to
    /// where the logs part, or the application hears of it (`auto.offset.reset=none`). At or
    /// after it, nothing read was lost: the position stays, under the leader's epoch.
    fn diverged(
        &mut self,
        subscriptions: &mut SubscriptionState,
        tp: &TopicPartition,
        position: i64,
        d: rill_protocol::proto::EpochEndOffset,
    ) -> Result<(), ConsumerError> {
        if d.epoch < 0 {
            // The leader knows no epoch this old (retention took it): nothing to compare
            // with; read on, checking from the next records' epochs.
            subscriptions.seek_with_epoch(tp, position, -1);
        } else if d.end_offset < position {
            if !self.settings.reset_on_truncation {
                return Err(ConsumerError::LogTruncation {
                    partition: tp.clone(),
                    position,
                    divergent_offset: d.end_offset,
                });
            }
            tracing::warn!(partition = %tp, position, divergent_offset = d.end_offset, "log truncation detected: the records read from the divergent offset up to the position are no longer in the log; reading on from the divergent offset");
            subscriptions.seek_with_epoch(tp, d.end_offset, d.epoch);
        } else {
            subscriptions.seek_with_epoch(tp, position, d.epoch);
        }
        Ok(())
    }

    /// Aborts every fetch in flight; answers still on their way are ignored when they arrive.
    pub fn cancel_fetches(&mut self) {
        for (_, f) in self.in_flight.drain() {
            f.task.abort();
        }
        // Answers that arrived before the abort would hold their buffers until the next fetch
        // is taken (up to `fetch.max.bytes` each).
        while self.results_rx.try_recv().is_ok() {}
    }

    /// Forgets what was received for `tp` (its fetch position goes back to the consumed one)
    /// and its backoff: after a seek, a pause, or when the partition is revoked or lost.
    pub fn discard(&mut self, tp: &TopicPartition) {
        self.buffered.retain(|b| b.tp != *tp);
        self.backoff.remove(tp);
    }

    /// Forgets everything received (fetch positions go back to the consumed ones) and every
    /// backoff.
    pub fn clear(&mut self) {
        self.cancel_fetches();
        self.buffered.clear();
        self.backoff.clear();
    }

    pub fn has_buffered(&self) -> bool {
        !self.buffered.is_empty()
    }

    /// CRC-checks and parses what [`Fetcher::complete`] buffered unparsed. A partition whose
    /// batches hold no records (control batches, compacted ranges) moves its consumed position
    /// past them at once and buffers nothing. Every partition is parsed before the first error
    /// (a corrupt batch) is returned; the records of its good batches before the corrupt one
    /// stay buffered, and its position stops at the corrupt batch.
    pub fn parse_buffered(
        &mut self,
        subscriptions: &mut SubscriptionState,
    ) -> Result<(), ConsumerError> {
        let mut first_error = None;
        let check_crcs = self.settings.check_crcs;
        self.buffered.retain_mut(|b| {
            let Some(raw) = b.unparsed.take() else {
                return true;
            };
            let (records, next, last_epoch, outcome) =
                take_records(check_crcs, &b.tp.topic, b.tp.partition, b.fetched_at, &raw);
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
            (b.records, b.next, b.last_epoch) = (records, next, last_epoch);
            if !b.records.is_empty() {
                return true;
            }
            // Nothing to hand over: the consumed position moves past the batches (unless the
            // partition was seeked, paused, revoked or lost meanwhile).
            if subscriptions.position(&b.tp) == Some(b.fetched_at)
                && subscriptions.is_fetchable(&b.tp)
            {
                subscriptions.advance(&b.tp, b.next, b.last_epoch);
            }
            false
        });
        first_error.map_or(Ok(()), Err)
    }

    /// Hands every buffered record to the application, moving the consumed positions past
    /// them. Records of partitions that may not be returned now (revoked, lost, paused, or
    /// seeked meanwhile) are dropped instead: such a partition is fetched again from its
    /// consumed position, if it is fetched at all.
    pub fn drain(&mut self, subscriptions: &mut SubscriptionState) -> Vec<ConsumerRecord> {
        let mut out = Vec::new();
        for b in self.buffered.drain(..) {
            if !subscriptions.is_fetchable(&b.tp)
                || subscriptions.position(&b.tp) != Some(b.fetched_at)
            {
                continue;
            }
            subscriptions.advance(&b.tp, b.next, b.last_epoch);
            out.extend(b.records);
        }
        out
    }

    pub fn nothing_in_flight(&self) -> bool {
        self.in_flight.is_empty()
    }

    /// How long until a partition waiting out its backoff may be fetched again: a backoff still
    /// running when the last `start_fetches` looked, or started since. Zero when that moment
    /// has passed (the scan missed it); `None` when no partition waits. A backoff that had
    /// ended before the scan does not count: the scan saw it, and the partition went out or
    /// waits for a free fetch slot.
    pub fn backoff_ends_in(&self) -> Option<Duration> {
        let now = Instant::now();
        self.backoff
            .values()
            .filter(|b| b.until > self.last_scan)
            .map(|b| b.until.saturating_duration_since(now))
            .min()
    }

    /// The next finished fetch (never `None`: the fetcher keeps a sender).
    pub async fn next_finished(&mut self) -> Option<Finished> {
        self.results_rx.recv().await
    }

    /// Starts fetches for fetchable partitions not already being fetched (from their fetch
    /// positions): for each leader as many as it has free slots of
    /// `max.in.flight.fetches.per.broker`, the partitions dealt round-robin between them. A
    /// partition whose leader is unknown (no leader, metadata unavailable) backs off instead.
    pub async fn start_fetches(&mut self, subscriptions: &SubscriptionState, deadline: Instant) {
        let busy: Vec<TopicPartition> = self
            .in_flight
            .values()
            .flat_map(|f| f.requested.iter().map(|(tp, _)| tp.clone()))
            .collect();
        let now = Instant::now();
        self.last_scan = now;
        let mut by_leader: HashMap<i32, Vec<Wanted>> = HashMap::new();
        let mut leaderless = Vec::new();
        self.served.retain(|tp, _| subscriptions.is_assigned(tp));
        let mut fetchable = subscriptions.fetchable();
        fetchable.sort_by_cached_key(|(tp, _)| self.served.get(tp).copied().unwrap_or(0));
        // Each topic's leaders looked up once per scan: a refresh that fails (no broker
        // answers) is not tried again for every partition of the topic.
        let mut leaders: HashMap<String, Option<Vec<LeaderInfo>>> = HashMap::new();
        for (tp, pos) in fetchable {
            if self.backoff.get(&tp).is_some_and(|b| b.until > now) {
                continue;
            }
            if busy.contains(&tp) {
                continue;
            }
            // A partition with records buffered is fetched from after them: `poll` starts the
            // next fetches just before it hands the buffer over, so leaving such partitions out
            // made their new records wait until another partition of the same leader had data
            // or `fetch.max.wait.ms` passed (a fetch covering it was in flight). Kafka's poll
            // collects first and then fetches, which comes to the same. The answer is taken
            // only if the consumed position has reached where it was fetched from by then.
            // With the leader epoch of the record before it (KIP-320's check).
            let (pos, epoch) = self
                .buffered
                .iter()
                .find(|b| b.tp == tp)
                .map_or((pos, subscriptions.last_epoch(&tp)), |b| {
                    (b.next, b.next_epoch)
                });
            if !leaders.contains_key(&tp.topic) {
                let of_topic = self.topic_leaders(&tp.topic, deadline).await;
                leaders.insert(tp.topic.clone(), of_topic);
            }
            let Some(of_topic) = leaders.get(&tp.topic).and_then(Option::as_ref) else {
                // Still being looked up: fetched once the answer is in.
                continue;
            };
            let Some(&LeaderInfo {
                leader,
                epoch: leader_epoch,
            }) = of_topic
                .get(tp.partition as usize)
                .filter(|l| l.leader >= 0)
            else {
                self.client.invalidate(&tp.topic);
                leaderless.push(tp);
                continue;
            };
            by_leader.entry(leader).or_default().push(Wanted {
                tp,
                position: pos,
                last_fetched_epoch: epoch,
                leader_epoch,
            });
        }
        // From now, not from the scan's start: the lookups may have taken a while.
        let failed_at = Instant::now();
        for tp in leaderless {
            self.back_off(&tp, failed_at);
        }
        for (leader, parts) in by_leader {
            let running = self
                .in_flight
                .values()
                .filter(|f| f.leader == leader)
                .count();
            let fetches = self
                .settings
                .max_in_flight_per_broker
                .saturating_sub(running)
                .min(parts.len());
            if fetches == 0 {
                // Its partitions wait for one of the leader's fetches to come back.
                continue;
            }
            let mut groups = vec![Vec::new(); fetches];
            for (i, part) in parts.into_iter().enumerate() {
                groups[i % fetches].push(part);
            }
            for parts in groups {
                self.send_fetch(leader, parts);
            }
        }
    }

    /// Sends one fetch for `parts` to `leader` in the background.
    fn send_fetch(&mut self, leader: i32, parts: Vec<Wanted>) {
        // In the order given (least recently served first), topic by topic.
        let mut topics: Vec<(String, Vec<FetchPartition>)> = Vec::new();
        for w in &parts {
            let tp = &w.tp;
            let at = match topics.iter().position(|(name, _)| *name == tp.topic) {
                Some(at) => at,
                None => {
                    topics.push((tp.topic.clone(), Vec::new()));
                    topics.len() - 1
                }
            };
            topics[at].1.push(FetchPartition {
                index: tp.partition,
                // As Kafka's consumer (KIP-320): a broker that lost the leadership and has not
                // heard yet, or one that is not yet the leader we were told of, says so instead
                // of serving what it has.
                current_leader_epoch: (w.leader_epoch >= 0).then_some(w.leader_epoch),
                fetch_offset: w.position,
                partition_max_bytes: self.settings.max_partition_bytes,
                last_fetched_epoch: (w.last_fetched_epoch >= 0).then_some(w.last_fetched_epoch),
                log_start_offset: -1,
            });
        }
        let request = FetchRequest {
            replica_id: -1,
            replica_epoch: -1,
            max_wait_ms: self.settings.max_wait.as_millis() as u32,
            min_bytes: self.settings.min_bytes,
            max_bytes: self.settings.max_bytes,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| FetchTopic { name, partitions })
                .collect(),
        };
        let client = self.client.clone();
        let tx = self.results_tx.clone();
        let id = self.next_fetch_id;
        self.next_fetch_id += 1;
        let task = tokio::spawn(async move {
            let result = match client.broker_channel(leader) {
                Ok(mut c) => rill_protocol::fetch_call::fetch(&mut c, &request)
                    .await
                    .map_err(|s| request_error(leader, s)),
                Err(e) => Err(e),
            };
            let _ = tx.send((id, result));
        });
        self.in_flight.insert(
            id,
            InFlight {
                task,
                leader,
                requested: parts.into_iter().map(|w| (w.tp, w.position)).collect(),
            },
        );
    }

    /// Marks one more retriable failure of `tp`: it is not fetched again before its backoff ends.
    /// Partitions that fail together share `now`, so they are retried together.
    fn back_off(&mut self, tp: &TopicPartition, now: Instant) {
        let failures = self.backoff.get(tp).map_or(0, |b| b.failures) + 1;
        let until = now + self.settings.retry.delay(failures);
        self.backoff.insert(tp.clone(), Backoff { failures, until });
    }

    /// Takes a finished fetch: answers to cancelled fetches are ignored; the batches of partitions that
    /// are still fetchable at the position asked for are buffered unparsed, for
    /// [`Fetcher::parse_buffered`]. Every partition of the answer is taken before the first
    /// error (a partition error that is not retried, an answer holding only part of a batch)
    /// is returned; what was buffered stays for the next `poll`.
    pub fn complete(
        &mut self,
        finished: Finished,
        subscriptions: &mut SubscriptionState,
    ) -> Result<(), ConsumerError> {
        let (id, result) = finished;
        let Some(fetch) = self.in_flight.remove(&id) else {
            return Ok(());
        };
        if result.is_err() {
            // No answer from the leader: the next metadata refreshes ask the other brokers
            // first (a leader cut off from the cluster still answers with its old view).
            self.client.broker_failed(fetch.leader);
        }
        self.absorb(result, fetch.leader, fetch.requested, subscriptions)
    }

    fn absorb(
        &mut self,
        result: FetchResult,
        leader: i32,
        requested: Vec<(TopicPartition, i64)>,
        subscriptions: &mut SubscriptionState,
    ) -> Result<(), ConsumerError> {
        let now = Instant::now();
        let response = match result {
            Ok(r) => r,
            Err(e) => {
                for (tp, _) in &requested {
                    self.client.invalidate(&tp.topic);
                }
                if e.code.is_retriable() {
                    tracing::debug!(error = %e, "fetch failed; backing off");
                    for (tp, _) in &requested {
                        self.back_off(tp, now);
                    }
                    return Ok(());
                }
                return Err(e.into());
            }
        };
        let mut first_error: Option<ConsumerError> = None;
        for t in response.topics {
            for p in t.partitions {
                let tp = TopicPartition::new(t.name.clone(), p.index);
                let Some(&(_, requested_at)) = requested.iter().find(|(r, _)| *r == tp) else {
                    continue;
                };
                // Seeked, paused, revoked or lost meanwhile: not this answer's to take.
                if subscriptions.position(&tp) != Some(requested_at)
                    || !subscriptions.is_fetchable(&tp)
                {
                    continue;
                }
                if p.error_code != 0 {
                    let code =
                        ErrorCode::try_from(p.error_code).unwrap_or(ErrorCode::UnknownServerError);
                    match code {
                        ErrorCode::OffsetOutOfRange => {
                            subscriptions.set_fetch_state(&tp, FetchState::AwaitReset);
                        }
                        c if c.is_retriable() => {
                            // Another broker leads now (it named one with an epoch at least
                            // as new as ours): fetched there at once, not after a backoff
                            // (KIP-951). Otherwise the metadata is refreshed after one.
                            let hint = p.current_leader.as_ref();
                            // FENCED_LEADER_EPOCH names the same leader at its newer epoch:
                            // taken, the next fetch carries it.
                            let moved = hint.is_some_and(|cl| {
                                cl.leader_id != leader || code == ErrorCode::FencedLeaderEpoch
                            }) && self.client.take_leader_hint(&t.name, p.index, hint);
                            if !moved {
                                self.client.invalidate(&t.name);
                                self.back_off(&tp, now);
                            }
                        }
                        _ => {
                            first_error.get_or_insert(ApiError::new(code, p.error_message).into());
                        }
                    }
                    continue;
                }
                self.backoff.remove(&tp);
                if let Some(d) = p.diverging_epoch {
                    if let Err(e) = self.diverged(subscriptions, &tp, requested_at, d) {
                        first_error.get_or_insert(e);
                    }
                    continue;
                }
                if p.records.is_empty() {
                    continue;
                }
                self.served_count += 1;
                self.served.insert(tp.clone(), self.served_count);
                // Parsed later (`parse_buffered`); the next fetch goes from after the whole
                // batches received. A partial batch alone is parsed now: there is no next
                // fetch position to pipeline from, and it is an error.
                match next_after_whole_batches(&p.records) {
                    Some((next, next_epoch)) => self.buffered.push_back(Buffered {
                        tp,
                        fetched_at: requested_at,
                        records: Vec::new(),
                        next,
                        last_epoch: -1,
                        next_epoch,
                        unparsed: Some(p.records),
                    }),
                    None => {
                        let (_, _, _, outcome) = take_records(
                            self.settings.check_crcs,
                            &t.name,
                            p.index,
                            requested_at,
                            &p.records,
                        );
                        if let Err(e) = outcome {
                            first_error.get_or_insert(e);
                        }
                    }
                }
            }
        }
        first_error.map_or(Ok(()), Err)
    }
}

/// The records of `records` (one partition's part of a Fetch response) from `position`
/// on, the next position, the leader epoch of the last batch taken (-1 when none), and an
/// error for a corrupt batch: its records are not delivered and the position stays at it
/// (as Kafka's consumer does), while the records of the good batches before it are
/// delivered once.
///
/// A truncated batch after at least one whole batch is the partial tail a size limit cut
/// (fetched again from its start); anything else that does not parse is corrupt. A
/// response holding only part of a batch is corrupt too: rill's brokers always send at
/// least one whole batch, so fetching it again would return the same part forever.
fn take_records(
    check_crcs: bool,
    topic: &str,
    partition: i32,
    position: i64,
    records: &Bytes,
) -> (Vec<ConsumerRecord>, i64, i32, Result<(), ConsumerError>) {
    let mut taken = Vec::new();
    let mut next = position;
    let mut last_epoch = -1;
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
            Err(e) => return (taken, next, last_epoch, Err(corrupt(next, e.to_string()))),
        };
        let header = *batch.header();
        // The CRC only, as Kafka's consumer checks (`check.crcs`): the records are parsed and
        // checked once below; a full validation here decompressed every batch twice.
        if check_crcs && let Err(e) = batch.verify_crc() {
            return (
                taken,
                next,
                last_epoch,
                Err(corrupt(header.base_offset.max(next), e.to_string())),
            );
        }
        if header.next_offset() <= next {
            continue;
        }
        if !header.is_control() {
            // Keys and values are slices of the fetched (or decompressed) buffer, not
            // copies: the records of a batch share it.
            let section = match batch.records(256 << 20) {
                Ok(r) => r.into_shared(records),
                Err(e) => {
                    return (
                        taken,
                        next,
                        last_epoch,
                        Err(corrupt(header.base_offset.max(next), e.to_string())),
                    );
                }
            };
            let before = taken.len();
            for r in Records::over(&section, header).iter() {
                let r = match r {
                    Ok(r) => r,
                    Err(e) => {
                        // Nothing of the corrupt batch is delivered.
                        taken.truncate(before);
                        return (
                            taken,
                            next,
                            last_epoch,
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
                    key: r.key.map(|k| section.slice_ref(k)),
                    value: r.value.map(|v| section.slice_ref(v)),
                    headers: r
                        .headers()
                        .map(|h| {
                            (
                                String::from_utf8_lossy(h.key).into_owned(),
                                h.value.map(|v| section.slice_ref(v)),
                            )
                        })
                        .collect(),
                });
            }
        }
        next = header.next_offset();
        last_epoch = header.partition_leader_epoch;
    }
    (taken, next, last_epoch, Ok(()))
}

/// The offset after the last whole batch of `records` (a partial batch a size limit cut off
/// ends them), or `None` when not even one batch is whole. Reads only the batch headers.
fn next_after_whole_batches(records: &[u8]) -> Option<(i64, i32)> {
    let mut next = None;
    for batch in batches(records) {
        match batch {
            Ok(b) => next = Some((b.header().next_offset(), b.header().partition_leader_epoch)),
            Err(_) => break,
        }
    }
    next
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use rill_protocol::proto::FetchPartitionResponse;
    use tonic::Status;

    use super::*;
    use crate::testing::{Fake, batch, records};
    use crate::{Consumer, ConsumerConfig};

    /// A consumer of `t-0` from offset 0 against a fake broker whose answers come from
    /// `answer` (given the fetch offset).
    /// Polls the offsets of the records received into `offsets` until it holds `n` (10 s at
    /// most).
    async fn poll_offsets_until(consumer: &mut Consumer, offsets: &mut Vec<i64>, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while offsets.len() < n {
            assert!(Instant::now() < deadline, "stuck at {offsets:?}");
            let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
            offsets.extend(records.iter().map(|r| r.offset));
        }
    }

    /// A consumer of `fake` with the default settings.
    fn plain_consumer(fake: &Fake) -> Consumer {
        Consumer::new(ConsumerConfig {
            bootstrap: fake.bootstrap(),
            ..Default::default()
        })
        .unwrap()
    }

    async fn consumer_of(
        answer: impl Fn(i64) -> Result<FetchPartitionResponse, tonic::Status> + Send + Sync + 'static,
    ) -> (Consumer, Fake) {
        let fake = Fake::start(&[("t", 1)], Arc::new(move |_, offset| answer(offset))).await;
        let mut consumer = plain_consumer(&fake);
        let tp = TopicPartition::new("t", 0);
        consumer.assign([tp.clone()]);
        consumer.seek(&tp, 0);
        (consumer, fake)
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

    /// A leader answering that what was read before the position is no longer in its log
    /// (KIP-320's diverging epoch): with `auto.offset.reset=none` the application hears of it,
    /// the position staying until it seeks; with a reset policy the position moves back to
    /// where the logs part and the new leader's records there are read.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncation_below_the_position_is_found_and_handled_by_the_reset_policy() {
        for policy in [crate::OffsetReset::None, crate::OffsetReset::Latest] {
            let answer = |offset: i64| {
                if offset >= 5 {
                    Ok(FetchPartitionResponse {
                        index: 0,
                        high_watermark: 4,
                        diverging_epoch: Some(rill_protocol::proto::EpochEndOffset {
                            epoch: 0,
                            end_offset: 3,
                        }),
                        ..Default::default()
                    })
                } else if offset == 3 {
                    records(0, batch(3, &["new"]))
                } else {
                    records(0, Vec::new())
                }
            };
            let fake = Fake::start(&[("t", 1)], Arc::new(move |_, offset| answer(offset))).await;
            let mut consumer = Consumer::new(ConsumerConfig {
                bootstrap: fake.bootstrap(),
                auto_offset_reset: policy,
                ..Default::default()
            })
            .unwrap();
            let tp = TopicPartition::new("t", 0);
            consumer.assign([tp.clone()]);
            consumer.seek(&tp, 5);
            let (values, error) = poll_until_error(&mut consumer, Duration::from_secs(2)).await;
            if policy == crate::OffsetReset::None {
                match error {
                    Some(ConsumerError::LogTruncation {
                        partition,
                        position,
                        divergent_offset,
                    }) => assert_eq!((partition, position, divergent_offset), (tp.clone(), 5, 3)),
                    other => panic!("expected LogTruncation, got {other:?} after {values:?}"),
                }
                assert_eq!(consumer.position(&tp), Some(5));
            } else {
                assert!(error.is_none(), "{error:?}");
                assert_eq!(
                    values.first().map(String::as_str),
                    Some("new"),
                    "{values:?}"
                );
                assert_eq!(consumer.position(&tp), Some(4), "read on from offset 3");
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_corrupt_batch_mid_response_is_an_error_not_a_refetch_loop() {
        let mut bad = batch(2, &["c", "d"]);
        bad[16] = 7; // the magic byte: no batch format rill knows
        let mut response = batch(0, &["a", "b"]);
        response.extend_from_slice(&bad);
        response.extend_from_slice(&batch(4, &["e"]));
        let (mut consumer, _fake) = consumer_of(move |_| records(0, response.clone())).await;
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

    /// A group consumer (auto commit) of `t-0`, whose first fetch brings `a b c`, and `t-1`,
    /// whose batch is corrupt: its first `poll` fails after buffering the records of `t-0`
    /// (one fetch in flight, so both partitions come in one answer).
    async fn failed_with_records_buffered() -> (Consumer, Fake) {
        let mut bad = batch(0, &["x"]);
        bad[16] = 7;
        let fake = Fake::start(
            &[("t", 2)],
            Arc::new(move |tp, offset| match (tp.partition, offset) {
                (0, 0) => records(0, batch(0, &["a", "b", "c"])),
                (0, _) => records(0, Vec::new()),
                _ => records(1, bad.clone()),
            }),
        )
        .await;
        let mut consumer = Consumer::new(ConsumerConfig {
            bootstrap: fake.bootstrap(),
            group_id: Some("g".into()),
            auto_offset_reset: crate::OffsetReset::Earliest,
            max_in_flight_fetches_per_broker: 1,
            ..Default::default()
        })
        .unwrap();
        consumer.assign([TopicPartition::new("t", 0), TopicPartition::new("t", 1)]);
        let (values, error) = poll_until_error(&mut consumer, Duration::from_secs(10)).await;
        assert!(values.is_empty(), "{values:?}");
        assert!(
            matches!(error, Some(ConsumerError::Corrupt { partition: 1, .. })),
            "{error:?}"
        );
        (consumer, fake)
    }

    /// A consumer of `t-0` and `t-1` from offset 0 with `in_flight` fetches per broker.
    fn reading_t0_t1(fake: &Fake, in_flight: usize) -> Consumer {
        let mut consumer = Consumer::new(ConsumerConfig {
            bootstrap: fake.bootstrap(),
            max_in_flight_fetches_per_broker: in_flight,
            ..Default::default()
        })
        .unwrap();
        let tps = [TopicPartition::new("t", 0), TopicPartition::new("t", 1)];
        consumer.assign(tps.clone());
        for tp in &tps {
            consumer.seek(tp, 0);
        }
        consumer
    }

    /// `t-0`'s first answer takes 1.5 s, `t-1`'s comes at once: with two fetches in flight
    /// the partitions are in different fetches, so `t-1`'s records are returned while `t-0`'s
    /// fetch is still out; with one (Kafka's consumer) they come back together.
    async fn first_poll_with(in_flight: usize) -> Vec<String> {
        let fake = Fake::start(
            &[("t", 2)],
            Arc::new(|tp, offset| match (tp.partition, offset) {
                (0, 0) => {
                    std::thread::sleep(Duration::from_millis(1_500));
                    records(0, batch(0, &["slow"]))
                }
                (1, 0) => records(1, batch(0, &["fast"])),
                (p, _) => records(p, Vec::new()),
            }),
        )
        .await;
        let mut consumer = reading_t0_t1(&fake, in_flight);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let got = consumer.poll(Duration::from_millis(200)).await.unwrap();
            if !got.is_empty() {
                let mut values: Vec<String> = got
                    .iter()
                    .map(|r| String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into())
                    .collect();
                values.sort();
                return values;
            }
        }
        Vec::new()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn two_fetches_in_flight_split_a_brokers_partitions() {
        assert_eq!(first_poll_with(2).await, ["fast"]);
        assert_eq!(first_poll_with(1).await, ["fast", "slow"]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn records_never_returned_are_not_committed() {
        let (mut consumer, fake) = failed_with_records_buffered().await;
        let t0 = TopicPartition::new("t", 0);
        assert_eq!(
            consumer.position(&t0),
            Some(0),
            "nothing of t-0 was returned"
        );
        consumer.close().await.unwrap();
        assert_eq!(fake.coordinator.lock().committed.get(&t0), Some(&0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_poll_with_records_buffered_does_not_wait_for_slow_metadata() {
        // One answer brings t-0's records and a retriable error for t-1, which makes the
        // consumer look t's metadata up again; metadata has become slow. The poll that took
        // the answer starts the next fetches without waiting for that lookup (it used to wait
        // there, with t-0's records buffered, until cancelled) and hands the records over.
        let delay: Arc<std::sync::OnceLock<Arc<parking_lot::Mutex<Duration>>>> = Arc::default();
        let delay_in = Arc::clone(&delay);
        let fake = Fake::start(
            &[("t", 2)],
            Arc::new(move |tp, offset| {
                if let Some(d) = delay_in.get() {
                    *d.lock() = Duration::from_secs(2);
                }
                match (tp.partition, offset) {
                    (0, 0) => records(0, batch(0, &["a", "b", "c"])),
                    (0, _) => records(0, Vec::new()),
                    (p, _) => Ok(FetchPartitionResponse {
                        index: p,
                        error_code: ErrorCode::NotLeaderOrFollower as i32,
                        ..Default::default()
                    }),
                }
            }),
        )
        .await;
        let mut consumer = Consumer::new(ConsumerConfig {
            bootstrap: fake.bootstrap(),
            group_id: Some("g".into()),
            max_in_flight_fetches_per_broker: 1,
            ..Default::default()
        })
        .unwrap();
        let (t0, t1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        consumer.assign([t0.clone(), t1.clone()]);
        consumer.seek(&t0, 0);
        consumer.seek(&t1, 0);
        let _ = delay.set(Arc::clone(&fake.metadata_delay));
        let polled = tokio::time::timeout(
            Duration::from_millis(500),
            consumer.poll(Duration::from_secs(5)),
        )
        .await;
        let values: Vec<Vec<u8>> = match polled {
            Ok(Ok(records)) => records
                .into_iter()
                .filter_map(|r| r.value.map(|v| v.to_vec()))
                .collect(),
            other => panic!("the records were not handed over at once: {other:?}"),
        };
        assert_eq!(values, [b"a".to_vec(), b"b".to_vec(), b"c".to_vec()]);
        assert_eq!(consumer.position(&t0), Some(3));
        consumer.close().await.unwrap();
        assert_eq!(fake.coordinator.lock().committed.get(&t0), Some(&3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_failed_fetch_is_retried_after_its_backoff_while_another_fetch_is_out() {
        // Two fetches: t-0's takes 1.5 s; t-1's first one fails as a whole. t-1 is fetched
        // again when its backoff (100 ms) ends, not when t-0's fetch comes back.
        let t1_fetches = Arc::new(AtomicUsize::new(0));
        let seen = Arc::clone(&t1_fetches);
        let fake = Fake::start(
            &[("t", 2)],
            Arc::new(move |tp, offset| match (tp.partition, offset) {
                (0, 0) => {
                    std::thread::sleep(Duration::from_millis(1_500));
                    records(0, batch(0, &["slow"]))
                }
                (1, 0) if seen.fetch_add(1, Ordering::AcqRel) == 0 => {
                    Err(Status::unavailable("broker busy"))
                }
                (1, 0) => records(1, batch(0, &["retried"])),
                (p, _) => records(p, Vec::new()),
            }),
        )
        .await;
        let mut consumer = reading_t0_t1(&fake, 2);
        // One long poll: a new poll would start the fetch itself.
        let started = Instant::now();
        let got = consumer.poll(Duration::from_secs(5)).await.unwrap();
        let values: Vec<_> = got.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(values, ["retried"]);
        assert!(t1_fetches.load(Ordering::Acquire) >= 2);
        assert!(
            started.elapsed() < Duration::from_millis(1_200),
            "t-1 waited {:?}, as long as t-0's fetch",
            started.elapsed()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pause_and_resume_skip_no_buffered_record() {
        let (mut consumer, _fake) = failed_with_records_buffered().await;
        let (t0, t1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        consumer.pause(&[t0.clone(), t1.clone()]);
        consumer.resume(std::slice::from_ref(&t0));
        let mut values = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while values.len() < 3 && Instant::now() < deadline {
            for r in consumer.poll(Duration::from_millis(100)).await.unwrap() {
                values.push((r.offset, r.value.unwrap()));
            }
        }
        assert_eq!(
            values,
            [(0, "a".into()), (1, "b".into()), (2, "c".into())],
            "t-0 from its start, once"
        );
        assert_eq!(consumer.position(&t0), Some(3));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_partition_without_metadata_backs_off_and_does_not_fail_poll() {
        let fake = Fake::start(&[("t", 1)], crate::testing::numbered(2)).await;
        let mut consumer = plain_consumer(&fake);
        let (t0, gone) = (TopicPartition::new("t", 0), TopicPartition::new("gone", 0));
        consumer.assign([t0.clone(), gone.clone()]);
        consumer.seek(&t0, 0);
        consumer.seek(&gone, 0);
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            seen.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(consumer.fetcher.backoff[&gone].failures >= 1);
    }

    /// KIP-320 for consumers: fetches name the leader epoch the metadata gave, so a broker
    /// that is no longer (or not yet) that leader says so instead of serving its log; fenced
    /// with the leader's newer epoch named, the consumer takes it and fetches again at once.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fetches_name_the_leader_epoch_and_follow_a_newer_one_at_once() {
        let fake = Fake::start(&[("t", 1)], crate::testing::numbered(i64::MAX)).await;
        *fake.leader_epoch.lock() = 3;
        let mut consumer = plain_consumer(&fake);
        let t0 = TopicPartition::new("t", 0);
        consumer.assign([t0.clone()]);
        consumer.seek(&t0, 0);
        let mut offsets = Vec::new();
        poll_offsets_until(&mut consumer, &mut offsets, 5).await;
        assert!(fake.fetched_epochs.lock().iter().all(|e| *e == Some(3)));
        // A new leader epoch (the leader restarted, say) that the consumer's metadata does
        // not know yet.
        *fake.leader_epoch.lock() = 4;
        let before = fake.fetched_epochs.lock().len();
        let metadata_calls = fake.metadata_calls.load(Ordering::Acquire);
        let target = offsets.len() + 5;
        poll_offsets_until(&mut consumer, &mut offsets, target).await;
        let after: Vec<_> = fake.fetched_epochs.lock()[before..].to_vec();
        let fenced = after.iter().take_while(|e| **e == Some(3)).count();
        assert!(
            fenced >= 1 && after[fenced..].iter().all(|e| *e == Some(4)),
            "{after:?}"
        );
        assert_eq!(
            fake.metadata_calls.load(Ordering::Acquire),
            metadata_calls,
            "the epoch the answer named was taken: no metadata refresh (nor its backoff)"
        );
        assert_eq!(
            offsets,
            (0..offsets.len() as i64).collect::<Vec<_>>(),
            "nothing lost or repeated"
        );
    }

    /// ListOffsets (seek_to_end, a reset) names the leader epoch too, so a deposed leader
    /// that has not heard cannot answer from its stale log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn offset_lookups_name_the_leader_epoch() {
        let fake = Fake::start(&[("t", 1)], crate::testing::numbered(0)).await;
        *fake.leader_epoch.lock() = 2;
        let mut consumer = plain_consumer(&fake);
        let t0 = TopicPartition::new("t", 0);
        consumer.assign([t0.clone()]);
        consumer
            .seek_to_end(std::slice::from_ref(&t0))
            .await
            .unwrap();
        assert_eq!(consumer.position(&t0), Some(10));
        assert_eq!(*fake.listed_epochs.lock(), [Some(2)]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_truncated_last_batch_is_fetched_again() {
        let (mut consumer, _fake) = consumer_of(|offset| {
            if offset == 0 {
                let mut bytes = batch(0, &["a", "b"]);
                bytes.extend_from_slice(&batch(2, &["c"])[..30]);
                records(0, bytes)
            } else {
                records(0, batch(2, &["c"]))
            }
        })
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
        let (mut consumer, fake) = consumer_of(|_| {
            Err(ApiError::new(ErrorCode::UnknownServerError, "the broker broke").into())
        })
        .await;
        let (_, error) = poll_until_error(&mut consumer, Duration::from_secs(10)).await;
        match error {
            Some(ConsumerError::Api(e)) => assert_eq!(e.code, ErrorCode::UnknownServerError),
            other => panic!("expected UNKNOWN_SERVER_ERROR, got {other:?}"),
        }
        assert_eq!(fake.fetches.load(Ordering::Acquire), 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn retriable_errors_back_off_exponentially() {
        let (mut consumer, fake) = consumer_of(|_| {
            Ok(FetchPartitionResponse {
                index: 0,
                error_code: ErrorCode::NotLeaderOrFollower as i32,
                ..Default::default()
            })
        })
        .await;
        let started = Instant::now();
        let (_, error) = poll_until_error(&mut consumer, Duration::from_millis(1_600)).await;
        assert!(error.is_none(), "{error:?}");
        // Waits of 100, 200, 400 and 800 ms fit at most 5 fetches into 1.6 s; an immediate
        // retry makes hundreds. A busy machine only makes fewer.
        let n = fake.fetches.load(Ordering::Acquire);
        assert!(
            (1..=5).contains(&n),
            "{n} fetches in {:?}",
            started.elapsed()
        );
        let b = consumer.fetcher.backoff[&TopicPartition::new("t", 0)];
        assert!(b.failures >= 1);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn paused_partitions_are_not_returned_until_resumed() {
        let fake = Fake::start(&[("t", 2)], crate::testing::numbered(3)).await;
        let mut consumer = plain_consumer(&fake);
        let (t0, t1) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        consumer.assign([t0.clone(), t1.clone()]);
        consumer.seek(&t0, 0);
        consumer.seek(&t1, 0);
        consumer.pause(std::slice::from_ref(&t1));
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(2);
        while Instant::now() < deadline {
            seen.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
        }
        assert!(seen.iter().all(|r| r.partition == 0), "{seen:?}");
        assert_eq!(seen.len(), 3);
        assert_eq!(consumer.position(&t1), Some(0));
        consumer.resume(std::slice::from_ref(&t1));
        let deadline = Instant::now() + Duration::from_secs(10);
        while consumer.position(&t1) != Some(3) && Instant::now() < deadline {
            consumer.poll(Duration::from_millis(100)).await.unwrap();
        }
        assert_eq!(consumer.position(&t1), Some(3));
    }
}
