//! Follower replication (Kafka's `ReplicaFetcherManager` / `ReplicaFetcherThread`): one fetch
//! loop per source broker (`num.replica.fetchers` per broker), carrying every partition this
//! broker follows from it, each on a thread of its own.
//!
//! Each round sends one long-polling Fetch (`replica.fetch.wait.max.ms`) with, per partition,
//! the follower's log end offset and the epoch of its last batch. The leader answers with the
//! batches after that offset (appended byte for byte with `Log::append_as_follower`), its high
//! watermark, or — when the follower's log diverged from its own (an unclean history, a
//! deposed leader's unacknowledged tail) — the epoch and end offset to truncate to first.
//! Under `log.flush.policy=commit` the follower fsyncs what it appended before the next round, so
//! the offset it reports (its next fetch offset) is on its disk: the leader's high watermark
//! then covers only data every in-sync replica has fsynced.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rill_protocol::ErrorCode;
use rill_protocol::fetch_call;
use rill_protocol::proto::{FetchPartition, FetchRequest, FetchResponse, FetchTopic};
use rill_storage::{LogError, LogManager, TopicPartition};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, FlushPolicy};
use crate::partition::Partition;
use crate::throttle::Throttle;

/// A partition followed from one leader.
#[derive(Clone)]
struct Followed {
    partition: Arc<Partition>,
    leader_epoch: i32,
}

struct Fetcher {
    address: String,
    partitions: Arc<Mutex<HashMap<TopicPartition, Followed>>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

/// Hands fetching duties to one fetch loop per leader broker.
pub struct ReplicaFetcherManager {
    config: Arc<BrokerConfig>,
    logs: Arc<LogManager>,
    throttle: Arc<Throttle>,
    broker_epoch: Arc<AtomicI64>,
    /// Whether fetch loops start at all (not in tests that exercise the bookkeeping only).
    start: bool,
    /// By (leader, bucket): `num.replica.fetchers` loops per leader, partitions hashed over them.
    fetchers: Mutex<HashMap<(i32, usize), Fetcher>>,
    /// The loops' threads, joined on shutdown.
    threads: Mutex<Vec<std::thread::JoinHandle<()>>>,
    stop: CancellationToken,
}

impl ReplicaFetcherManager {
    /// A manager whose fetch loops each run on a thread of their own (`start` false: they never
    /// start, for tests of the bookkeeping without a runtime).
    pub fn new(
        config: Arc<BrokerConfig>,
        logs: Arc<LogManager>,
        throttle: Arc<Throttle>,
        start: bool,
    ) -> Self {
        ReplicaFetcherManager {
            config,
            logs,
            throttle,
            broker_epoch: Arc::new(AtomicI64::new(-1)),
            start,
            fetchers: Mutex::new(HashMap::new()),
            threads: Mutex::new(Vec::new()),
            stop: CancellationToken::new(),
        }
    }

    /// Follows `partition` from broker `leader` (at `address`) in `leader_epoch`, moving it from
    /// any other fetcher.
    pub fn add(&self, leader: i32, address: String, partition: Arc<Partition>, leader_epoch: i32) {
        let tp = partition.tp.clone();
        let key = (leader, bucket(&tp, self.config.num_replica_fetchers));
        let mut fetchers = self.fetchers.lock();
        for (k, f) in fetchers.iter() {
            if *k != key {
                f.partitions.lock().remove(&tp);
            }
        }
        let stale = fetchers.get(&key).is_some_and(|f| f.address != address);
        if stale && let Some(f) = fetchers.remove(&key) {
            // The leader moved to another address: this loop ends, and nothing it still
            // holds may be appended by it.
            f.partitions.lock().clear();
            f.stop.cancel();
        }
        if !self.start {
            return;
        }
        let f = match fetchers.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                match self.spawn_loop(leader, key.1, address) {
                    Some(f) => e.insert(f),
                    // Not followed yet: the next `add` for a partition of this leader tries again.
                    None => return,
                }
            }
        };
        f.partitions.lock().insert(
            tp,
            Followed {
                partition,
                leader_epoch,
            },
        );
        f.wake.notify_one();
    }

    /// Starts the fetch loop for bucket `bucket` of `leader` on a thread of its own, as Kafka's
    /// `ReplicaFetcherThread`: an answer is applied (appended and fsynced) on the thread that
    /// received it, and the next fetch sent from there — no hop to a blocking thread and back in
    /// every round, which every acks=all write waits for. `None` when no thread could start.
    fn spawn_loop(&self, leader: i32, bucket: usize, address: String) -> Option<Fetcher> {
        let f = Fetcher {
            address: address.clone(),
            partitions: Arc::new(Mutex::new(HashMap::new())),
            wake: Arc::new(Notify::new()),
            stop: self.stop.child_token(),
        };
        let task = FetchLoop {
            config: Arc::clone(&self.config),
            logs: Arc::clone(&self.logs),
            throttle: Arc::clone(&self.throttle),
            broker_epoch: Arc::clone(&self.broker_epoch),
            leader,
            address,
            partitions: Arc::clone(&f.partitions),
            wake: Arc::clone(&f.wake),
            stop: f.stop.clone(),
        };
        let spawned = std::thread::Builder::new()
            .name(format!("replica-fetcher-{leader}-{bucket}"))
            .spawn(move || task.run_on_this_thread());
        match spawned {
            Ok(t) => {
                let mut threads = self.threads.lock();
                threads.retain(|t| !t.is_finished());
                threads.push(t);
                Some(f)
            }
            Err(e) => {
                tracing::error!(leader, error = %e, "replica fetcher thread failed to start; not fetching");
                None
            }
        }
    }

    /// Stops following `tp` (it became leader, moved away or went offline); a loop left with
    /// nothing to fetch ends.
    pub fn remove(&self, tp: &TopicPartition) {
        self.fetchers.lock().retain(|_, f| {
            let mut partitions = f.partitions.lock();
            partitions.remove(tp);
            if partitions.is_empty() {
                f.stop.cancel();
                false
            } else {
                true
            }
        });
    }

    /// Whether some fetch loop follows `tp`.
    pub fn is_following(&self, tp: &TopicPartition) -> bool {
        self.fetchers
            .lock()
            .values()
            .any(|f| f.partitions.lock().contains_key(tp))
    }

    /// This broker's registration epoch, sent with every replica fetch.
    pub fn set_broker_epoch(&self, epoch: i64) {
        self.broker_epoch.store(epoch, Ordering::Release);
    }

    /// Stops every fetch loop.
    pub fn shutdown(&self) {
        self.stop.cancel();
    }

    /// Waits until every fetch loop's thread has ended (after [`Self::shutdown`]), so nothing
    /// appends to a log once the logs are closed. Blocking: a loop may be in an fsync.
    pub fn join(&self) {
        let threads = std::mem::take(&mut *self.threads.lock());
        for t in threads {
            let _ = t.join();
        }
    }
}

impl Drop for ReplicaFetcherManager {
    /// The loops' threads outlive no manager (a test's broker dropped without a shutdown).
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Which of a leader's `n` fetch loops carries `tp`.
fn bucket(tp: &TopicPartition, n: usize) -> usize {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    tp.hash(&mut h);
    (h.finish() % n.max(1) as u64) as usize
}

struct FetchLoop {
    config: Arc<BrokerConfig>,
    logs: Arc<LogManager>,
    throttle: Arc<Throttle>,
    broker_epoch: Arc<AtomicI64>,
    leader: i32,
    address: String,
    partitions: Arc<Mutex<HashMap<TopicPartition, Followed>>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
}

impl FetchLoop {
    /// Runs the loop on the calling thread until it is stopped. A panic in a round (a defect)
    /// is logged and the loop starts over from the logs after a back-off, as a failed round
    /// does: a follower must not stop fetching from a leader for good.
    fn run_on_this_thread(self) {
        let backoff = Duration::from_millis(self.config.replica_fetch_backoff_ms);
        while !self.stop.is_cancelled() {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    tracing::error!(leader = self.leader, error = %e, "replica fetcher runtime failed to start; retrying");
                    std::thread::sleep(backoff);
                    continue;
                }
            };
            let run =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| rt.block_on(self.run())));
            if run.is_ok() {
                return;
            }
            tracing::error!(
                leader = self.leader,
                "replica fetcher panicked; starting over"
            );
            rt.block_on(self.back_off(backoff));
        }
    }

    /// Waits `backoff`, or less when the loop is stopped (shutdown joins its thread).
    async fn back_off(&self, backoff: Duration) {
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(backoff) => {}
        }
    }

    async fn run(&self) {
        let endpoint = match tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            self.address
        )) {
            Ok(e) => rill_protocol::transport::tune(e)
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true),
            Err(e) => {
                tracing::error!(leader = self.leader, address = %self.address, error = %e, "bad leader address; not fetching");
                return;
            }
        };
        let mut channel = endpoint.connect_lazy();
        let backoff = Duration::from_millis(self.config.replica_fetch_backoff_ms);
        let timeout = Duration::from_millis(
            self.config.replica_fetch_wait_max_ms + self.config.request_timeout_ms,
        );
        tracing::info!(leader = self.leader, address = %self.address, "replica fetcher started");
        // Partitions held back after an error; the others go on fetching.
        let mut delays = Delays::default();
        // The next round's request, built right after the last answer was applied.
        let mut next: Option<(Vec<(TopicPartition, Followed)>, FetchRequest)> = None;
        while !self.stop.is_cancelled() {
            let (followed, request) = match next.take() {
                Some(prepared) => prepared,
                None => match self.next_round(&mut delays, backoff) {
                    Ok(round) => round,
                    Err(until) => {
                        // Nothing to fetch until a partition's wait ends or one is added.
                        let until = until.map_or_else(
                            || tokio::time::Instant::now() + Duration::from_secs(3600),
                            tokio::time::Instant::from_std,
                        );
                        tokio::select! {
                            _ = self.stop.cancelled() => return,
                            _ = self.wake.notified() => continue,
                            _ = tokio::time::sleep_until(until) => continue,
                        }
                    }
                },
            };
            let response = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tokio::time::timeout(timeout, fetch_call::fetch(&mut channel, &request)) => r,
            };
            let response = match response {
                Ok(Ok(r)) => r,
                Ok(Err(status)) => {
                    tracing::debug!(leader = self.leader, error = %status, "replica fetch failed; backing off");
                    self.back_off(backoff).await;
                    continue;
                }
                Err(_) => {
                    tracing::debug!(leader = self.leader, "replica fetch timed out");
                    continue;
                }
            };
            let failed = process_response(
                self.leader,
                self.config.flush_policy,
                &self.logs,
                &self.throttle,
                &followed,
                &self.partitions,
                response,
            );
            delays.record(&followed, &failed, Instant::now(), backoff);
            // What is followed now (partitions may have come or gone meanwhile), less what waits.
            next = self.next_round(&mut delays, backoff).ok();
        }
    }

    /// The next round's partitions and request: those followed now, less the ones waiting
    /// after an error, throttled, or whose fsync failed (which then wait). `Err` with when to
    /// look again (`None`: when a partition is added) if none is left.
    #[allow(clippy::type_complexity)]
    fn next_round(
        &self,
        delays: &mut Delays,
        backoff: Duration,
    ) -> Result<(Vec<(TopicPartition, Followed)>, FetchRequest), Option<Instant>> {
        let now = Instant::now();
        let mut followed = delays.ready(snapshot(&self.partitions), now);
        if followed.is_empty() {
            return Err(delays.due(now));
        }
        let (partitions, unsynced) = select_partitions(&self.config, &self.throttle, &mut followed);
        for (tp, epoch) in unsynced {
            delays.record_one(&tp, epoch, true, now, backoff);
        }
        let due = delays.due(now);
        if followed.is_empty() {
            // All throttled or unsynced: look again after the backoff, or when one is due.
            let again = now + backoff;
            return Err(Some(due.map_or(again, |d| d.min(again))));
        }
        let request = fetch_request(&self.config, &self.broker_epoch, &followed, partitions, due);
        Ok((followed, request))
    }
}

/// The first wait of a partition whose fetch failed; each further failure in a row doubles it,
/// up to `replica.fetch.backoff.ms`. Most partition errors around a leadership change mean one
/// of the two brokers has not applied the change yet, which takes milliseconds.
const FIRST_PARTITION_BACKOFF: Duration = Duration::from_millis(10);

/// Partitions held back after an error (Kafka's `delayPartitions`): only a failing partition
/// waits, so one partition's error (a leadership change the leader applied before this broker,
/// a topic the leader has not opened yet) does not stop the others' replication, which every
/// acks=all write of theirs waits for.
#[derive(Default)]
struct Delays(HashMap<TopicPartition, Delay>);

struct Delay {
    /// The epoch it failed in: a partition followed in another epoch since starts afresh.
    leader_epoch: i32,
    until: Instant,
    last: Duration,
}

impl Delays {
    /// `followed` less the partitions still waiting. Waits of partitions no longer followed, or
    /// followed in another epoch since, are forgotten.
    fn ready(
        &mut self,
        followed: Vec<(TopicPartition, Followed)>,
        now: Instant,
    ) -> Vec<(TopicPartition, Followed)> {
        if !self.0.is_empty() {
            let live: HashMap<&TopicPartition, i32> = followed
                .iter()
                .map(|(tp, f)| (tp, f.leader_epoch))
                .collect();
            self.0.retain(|tp, d| live.get(tp) == Some(&d.leader_epoch));
        }
        followed
            .into_iter()
            .filter(|(tp, f)| self.held(tp, f.leader_epoch, now).is_none())
            .collect()
    }

    /// When the first partition still waiting at `now` is due.
    fn due(&self, now: Instant) -> Option<Instant> {
        self.0.values().map(|d| d.until).filter(|u| *u > now).min()
    }

    /// Until when `tp`, followed in `leader_epoch`, waits; `None` when it may be fetched.
    fn held(&self, tp: &TopicPartition, leader_epoch: i32, now: Instant) -> Option<Instant> {
        self.0
            .get(tp)
            .filter(|d| d.leader_epoch == leader_epoch && d.until > now)
            .map(|d| d.until)
    }

    /// After a round over `fetched`: the partitions in `failed` wait, the others start afresh.
    fn record(
        &mut self,
        fetched: &[(TopicPartition, Followed)],
        failed: &[TopicPartition],
        now: Instant,
        max: Duration,
    ) {
        for (tp, f) in fetched {
            self.record_one(tp, f.leader_epoch, failed.contains(tp), now, max);
        }
    }

    /// One partition's outcome: a failure waits twice as long as the last one in a row (in the
    /// same epoch), up to `max`; a success forgets the failures.
    fn record_one(
        &mut self,
        tp: &TopicPartition,
        leader_epoch: i32,
        failed: bool,
        now: Instant,
        max: Duration,
    ) {
        if !failed {
            self.0.remove(tp);
            return;
        }
        let wait = match self.0.get(tp) {
            Some(d) if d.leader_epoch == leader_epoch => (d.last * 2).min(max),
            _ => FIRST_PARTITION_BACKOFF.min(max),
        };
        self.0.insert(
            tp.clone(),
            Delay {
                leader_epoch,
                until: now + wait,
                last: wait,
            },
        );
    }
}

/// The partitions a fetch loop follows right now.
fn snapshot(
    partitions: &Mutex<HashMap<TopicPartition, Followed>>,
) -> Vec<(TopicPartition, Followed)> {
    partitions
        .lock()
        .iter()
        .map(|(tp, f)| (tp.clone(), f.clone()))
        .collect()
}

/// Keeps in `followed` the partitions to fetch this round, and returns what to ask of each
/// (at its log end, with the epoch of its last batch): out-of-sync partitions wait while the
/// follower throttle's budget is spent, and under `commit` everything up to each log end is
/// fsynced first, so the offset reported (the fetch offset) is on disk. A partition whose
/// fsync fails (its log dir is going offline) is returned in the second list, with the epoch
/// it was followed in. Blocking.
#[allow(clippy::type_complexity)]
fn select_partitions(
    config: &BrokerConfig,
    throttle: &Throttle,
    followed: &mut Vec<(TopicPartition, Followed)>,
) -> (Vec<FetchPartition>, Vec<(TopicPartition, i32)>) {
    let throttled = throttle.exceeded();
    let mut fetch = Vec::with_capacity(followed.len());
    let mut unsynced = Vec::new();
    followed.retain(|(tp, f)| {
        if throttled && !f.partition.state().isr.contains(&config.node_id) {
            return false;
        }
        let (end, last_epoch, start) = {
            let log = f.partition.log.read();
            (
                log.log_end_offset(),
                log.latest_epoch().unwrap_or(-1),
                log.log_start_offset(),
            )
        };
        if config.flush_policy == FlushPolicy::Commit
            && let Err(e) = f.partition.group_commit().wait_durable(end)
        {
            if !matches!(e, LogError::Truncated { .. }) {
                tracing::error!(partition = %tp, error = %e, "follower fsync failed; not fetching it");
            }
            unsynced.push((tp.clone(), f.leader_epoch));
            return false;
        }
        fetch.push(FetchPartition {
            index: tp.partition,
            current_leader_epoch: Some(f.leader_epoch),
            fetch_offset: end,
            partition_max_bytes: config.replica_fetch_max_bytes as i32,
            last_fetched_epoch: Some(last_epoch),
            log_start_offset: start,
        });
        true
    });
    (fetch, unsynced)
}

/// One replica fetch of `partitions` (`followed`'s, in order). The leader holds it no later
/// than `due` (a waiting partition's turn comes then).
fn fetch_request(
    config: &BrokerConfig,
    broker_epoch: &AtomicI64,
    followed: &[(TopicPartition, Followed)],
    partitions: Vec<FetchPartition>,
    due: Option<Instant>,
) -> FetchRequest {
    let mut topics: HashMap<&str, Vec<FetchPartition>> = HashMap::new();
    for ((tp, _), p) in followed.iter().zip(partitions) {
        topics.entry(tp.topic.as_str()).or_default().push(p);
    }
    // Rounded up: a wait that rounds to 0 would have the leader answer at once, again and
    // again, until the partition is due.
    let max_wait_ms = due.map_or(config.replica_fetch_wait_max_ms, |due| {
        let left = due.saturating_duration_since(Instant::now()).as_micros();
        (left.div_ceil(1000) as u64).min(config.replica_fetch_wait_max_ms)
    });
    FetchRequest {
        replica_id: config.node_id,
        replica_epoch: broker_epoch.load(Ordering::Acquire),
        max_wait_ms: max_wait_ms as u32,
        min_bytes: 1,
        max_bytes: config.replica_fetch_response_max_bytes as i32,
        topics: topics
            .into_iter()
            .map(|(name, partitions)| FetchTopic {
                name: name.to_owned(),
                partitions,
            })
            .collect(),
    }
}

/// Applies one fetch response (blocking: appends, truncations, fsyncs) and returns the
/// partitions that failed. Every change to a log happens under [`Partition::as_follower_of`]:
/// only while this broker still follows `leader` in the epoch the fetch was made for.
#[allow(clippy::too_many_arguments)]
fn process_response(
    leader: i32,
    policy: FlushPolicy,
    logs: &LogManager,
    throttle: &Throttle,
    followed: &[(TopicPartition, Followed)],
    current: &Mutex<HashMap<TopicPartition, Followed>>,
    response: FetchResponse,
) -> Vec<TopicPartition> {
    let mut failed = Vec::new();
    let mut to_sync: Vec<(Arc<Partition>, i32, i64, i64)> = Vec::new();
    let by_tp: HashMap<&TopicPartition, &Followed> = followed.iter().map(|(t, f)| (t, f)).collect();
    for t in response.topics {
        for p in t.partitions {
            let tp = TopicPartition::new(t.name.clone(), p.index);
            let Some(f) = by_tp.get(&tp) else { continue };
            let still = current
                .lock()
                .get(&tp)
                .is_some_and(|c| c.leader_epoch == f.leader_epoch);
            if !still {
                continue;
            }
            let partition = &f.partition;
            let epoch = f.leader_epoch;
            let code = ErrorCode::try_from(p.error_code).unwrap_or(ErrorCode::UnknownServerError);
            // Read before taking the state lock below (it is not reentrant).
            let in_isr = partition.state().isr.contains(&partition.node_id());
            let applied = partition.as_follower_of(leader, epoch, || -> Result<Option<i64>, String> {
                match code {
                    ErrorCode::None => {}
                    ErrorCode::OffsetOutOfRange => {
                        // Behind the leader's log start (retention moved on): start over there.
                        let mut log = partition.log.write();
                        if log.log_end_offset() >= p.log_start_offset {
                            return Err(format!("offset out of range at {}: {}", log.log_end_offset(), p.error_message));
                        }
                        tracing::info!(partition = %tp, leader_start = p.log_start_offset, "follower behind the leader's log start; restarting the log there");
                        log.truncate_fully_and_start_at(p.log_start_offset).map_err(|e| e.to_string())?;
                        let end = log.log_end_offset();
                        drop(log);
                        logs.checkpoint().map_err(|e| e.to_string())?;
                        partition.cap_hw(end);
                        return Ok(None);
                    }
                    _ => return Err(p.error_message.clone()),
                }
                if let Some(diverging) = p.diverging_epoch {
                    let (before, cut) = {
                        let log = partition.log.read();
                        let cut = if diverging.epoch >= 0 {
                            match log.end_offset_for_epoch(diverging.epoch) {
                                Some((_, end)) => diverging.end_offset.min(end),
                                None => diverging.end_offset.min(log.log_start_offset()),
                            }
                        } else {
                            -1
                        };
                        (log.log_end_offset(), cut)
                    };
                    if cut >= 0 {
                        // Persists the lowered recovery point with the cut.
                        logs.truncate_to(&tp, cut).map_err(|e| e.to_string())?;
                    } else if partition.log.read().latest_epoch().is_none() {
                        // Our log has no epochs (data from before epochs were recorded) and
                        // reaches past the leader's end: keep the prefix, cut the rest.
                        logs.truncate_to(&tp, diverging.end_offset).map_err(|e| e.to_string())?;
                    } else {
                        // The leader knows none of our epochs: start over where it says.
                        let mut log = partition.log.write();
                        log.truncate_fully_and_start_at(diverging.end_offset).map_err(|e| e.to_string())?;
                        drop(log);
                        logs.checkpoint().map_err(|e| e.to_string())?;
                    }
                    let end = partition.log_end_offset();
                    tracing::info!(partition = %tp, epoch = diverging.epoch, from = before, to = end, "follower log diverged from the leader's; truncated");
                    partition.cap_hw(end);
                    return Ok(None);
                }
                let end = if p.records.is_empty() {
                    partition.log_end_offset()
                } else {
                    if !in_isr {
                        throttle.record(p.records.len());
                    }
                    partition.append_as_follower(&p.records).map_err(|e| e.to_string())?
                };
                Ok(Some(end))
            });
            match applied {
                None => {}
                Some(Ok(Some(end))) => {
                    to_sync.push((Arc::clone(partition), epoch, end, p.high_watermark))
                }
                Some(Ok(None)) => {}
                Some(Err(e)) => {
                    tracing::debug!(partition = %tp, error = %e, "replica fetch for this partition failed; it waits");
                    failed.push(tp);
                }
            }
        }
    }
    for (partition, epoch, end, leader_hw) in to_sync {
        if policy == FlushPolicy::Commit
            && let Err(e) = partition.group_commit().wait_durable(end)
        {
            if !matches!(e, LogError::Truncated { .. }) {
                tracing::error!(partition = %partition.tp, error = %e, "follower fsync failed");
                failed.push(partition.tp.clone());
            }
            continue;
        }
        partition.as_follower_of(leader, epoch, || partition.set_follower_hw(leader_hw, end));
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failing_partition_waits_and_longer_each_time_in_a_row() {
        let (a, b) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
        let max = Duration::from_millis(1000);
        let mut d = Delays::default();
        let t0 = Instant::now();
        d.record_one(&a, 5, true, t0, max);
        d.record_one(&b, 5, false, t0, max);
        assert_eq!(d.held(&a, 5, t0), Some(t0 + Duration::from_millis(10)));
        assert_eq!(d.held(&b, 5, t0), None, "the other partition goes on");
        assert_eq!(d.held(&a, 5, t0 + Duration::from_millis(10)), None);
        assert_eq!(d.due(t0), Some(t0 + Duration::from_millis(10)));
        assert_eq!(
            d.due(t0 + Duration::from_millis(10)),
            None,
            "nothing waits then"
        );
        // Failures in a row double the wait, up to the configured backoff.
        let mut waits = Vec::new();
        for _ in 0..8 {
            d.record_one(&a, 5, true, t0, max);
            waits.push(d.held(&a, 5, t0).unwrap() - t0);
        }
        let ms: Vec<u128> = waits.iter().map(|w| w.as_millis()).collect();
        assert_eq!(ms, [20, 40, 80, 160, 320, 640, 1000, 1000]);
        // A new leader epoch (the metadata moved on) is not held back by the old one's errors,
        // and its first failure waits the shortest time again.
        assert_eq!(d.held(&a, 6, t0), None);
        d.record_one(&a, 6, true, t0, max);
        assert_eq!(d.held(&a, 6, t0), Some(t0 + Duration::from_millis(10)));
        // A success forgets the failures.
        d.record_one(&a, 6, false, t0, max);
        assert_eq!(d.held(&a, 6, t0), None);
        d.record_one(&a, 6, true, t0, max);
        assert_eq!(d.held(&a, 6, t0), Some(t0 + Duration::from_millis(10)));
    }

    #[test]
    fn the_first_wait_is_never_above_the_configured_backoff() {
        let a = TopicPartition::new("t", 0);
        let mut d = Delays::default();
        let t0 = Instant::now();
        d.record_one(&a, 0, true, t0, Duration::from_millis(3));
        assert_eq!(d.held(&a, 0, t0), Some(t0 + Duration::from_millis(3)));
    }
}
