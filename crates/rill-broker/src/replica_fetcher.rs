//! Follower replication (Kafka's `ReplicaFetcherManager` / `ReplicaFetcherThread`): one fetch
//! loop per source broker, carrying every partition this broker follows from it.
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
use std::time::Duration;

use parking_lot::Mutex;
use rill_protocol::ErrorCode;
use rill_protocol::proto::broker_client::BrokerClient;
use rill_protocol::proto::{FetchPartition, FetchRequest, FetchResponse, FetchTopic};
use rill_storage::TopicPartition;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, FlushPolicy};
use crate::partition::Partition;

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
    runtime: Option<tokio::runtime::Handle>,
    /// By (leader, bucket): `num.replica.fetchers` loops per leader, partitions hashed over them.
    fetchers: Mutex<HashMap<(i32, usize), Fetcher>>,
    stop: CancellationToken,
    /// Called with each leader high watermark change seen (wakes long-polls).
    on_progress: Arc<dyn Fn() + Send + Sync>,
}

impl ReplicaFetcherManager {
    /// A manager that spawns its loops on `runtime` (none: fetchers never start, for tests
    /// without a runtime).
    pub fn new(
        config: Arc<BrokerConfig>,
        runtime: Option<tokio::runtime::Handle>,
        on_progress: Arc<dyn Fn() + Send + Sync>,
    ) -> Self {
        ReplicaFetcherManager {
            config,
            runtime,
            fetchers: Mutex::new(HashMap::new()),
            stop: CancellationToken::new(),
            on_progress,
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
            f.stop.cancel();
        }
        let Some(runtime) = &self.runtime else {
            return;
        };
        let f = fetchers.entry(key).or_insert_with(|| {
            let f = Fetcher {
                address: address.clone(),
                partitions: Arc::new(Mutex::new(HashMap::new())),
                wake: Arc::new(Notify::new()),
                stop: self.stop.child_token(),
            };
            let task = FetchLoop {
                config: Arc::clone(&self.config),
                leader,
                address,
                partitions: Arc::clone(&f.partitions),
                wake: Arc::clone(&f.wake),
                stop: f.stop.clone(),
                on_progress: Arc::clone(&self.on_progress),
            };
            runtime.spawn(task.run());
            f
        });
        f.partitions.lock().insert(
            tp,
            Followed {
                partition,
                leader_epoch,
            },
        );
        f.wake.notify_one();
    }

    /// Stops following `tp` (it became leader, moved away or went offline).
    pub fn remove(&self, tp: &TopicPartition) {
        for f in self.fetchers.lock().values() {
            f.partitions.lock().remove(tp);
        }
    }

    /// Stops every fetch loop.
    pub fn shutdown(&self) {
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
    leader: i32,
    address: String,
    partitions: Arc<Mutex<HashMap<TopicPartition, Followed>>>,
    wake: Arc<Notify>,
    stop: CancellationToken,
    on_progress: Arc<dyn Fn() + Send + Sync>,
}

impl FetchLoop {
    async fn run(self) {
        let endpoint = match tonic::transport::Endpoint::from_shared(format!(
            "http://{}",
            self.address
        )) {
            Ok(e) => e
                .connect_timeout(Duration::from_millis(500))
                .tcp_nodelay(true),
            Err(e) => {
                tracing::error!(leader = self.leader, address = %self.address, error = %e, "bad leader address; not fetching");
                return;
            }
        };
        let mut client = BrokerClient::new(endpoint.connect_lazy())
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let backoff = Duration::from_millis(self.config.replica_fetch_backoff_ms);
        let timeout = Duration::from_millis(
            self.config.replica_fetch_wait_max_ms + self.config.request_timeout_ms,
        );
        tracing::info!(leader = self.leader, address = %self.address, "replica fetcher started");
        while !self.stop.is_cancelled() {
            let followed: Vec<(TopicPartition, Followed)> = self
                .partitions
                .lock()
                .iter()
                .map(|(tp, f)| (tp.clone(), f.clone()))
                .collect();
            if followed.is_empty() {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.wake.notified() => continue,
                }
            }
            let request = match self.build_request(&followed) {
                Some(r) => r,
                None => {
                    tokio::time::sleep(backoff).await;
                    continue;
                }
            };
            let response = tokio::select! {
                _ = self.stop.cancelled() => return,
                r = tokio::time::timeout(timeout, client.fetch(request)) => r,
            };
            let response = match response {
                Ok(Ok(r)) => r.into_inner(),
                Ok(Err(status)) => {
                    tracing::debug!(leader = self.leader, error = %status, "replica fetch failed; backing off");
                    tokio::time::sleep(backoff).await;
                    continue;
                }
                Err(_) => {
                    tracing::debug!(leader = self.leader, "replica fetch timed out");
                    continue;
                }
            };
            let policy = self.config.flush_policy;
            let node = self.config.node_id;
            let partitions = Arc::clone(&self.partitions);
            let outcome = tokio::task::spawn_blocking(move || {
                process_response(node, policy, &followed, &partitions, response)
            })
            .await;
            (self.on_progress)();
            match outcome {
                Ok(Outcome { errors, .. }) if errors > 0 => {
                    tokio::time::sleep(backoff).await;
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::error!(leader = self.leader, error = %e, "replica fetch processing failed");
                    tokio::time::sleep(backoff).await;
                }
            }
        }
    }

    fn build_request(&self, followed: &[(TopicPartition, Followed)]) -> Option<FetchRequest> {
        let mut topics: HashMap<&str, Vec<FetchPartition>> = HashMap::new();
        for (tp, f) in followed {
            let log = f.partition.log.read().ok()?;
            // Report only what is on disk: under `commit` the fetch offset is the fsynced end
            // (batches the follower already has but did not sync are skipped when they come
            // again), so a follower whose fsync failed never counts towards the high watermark.
            let fetch_offset = match self.config.flush_policy {
                FlushPolicy::Commit => log
                    .log_end_offset()
                    .min(f.partition.group_commit().durable_offset()),
                FlushPolicy::Interval => log.log_end_offset(),
            };
            topics
                .entry(tp.topic.as_str())
                .or_default()
                .push(FetchPartition {
                    index: tp.partition,
                    current_leader_epoch: f.leader_epoch,
                    fetch_offset,
                    partition_max_bytes: self.config.replica_fetch_max_bytes as i32,
                    last_fetched_epoch: log.latest_epoch().unwrap_or(-1),
                    log_start_offset: log.log_start_offset(),
                });
        }
        Some(FetchRequest {
            replica_id: self.config.node_id,
            replica_epoch: -1,
            max_wait_ms: self.config.replica_fetch_wait_max_ms as u32,
            min_bytes: 1,
            max_bytes: self.config.replica_fetch_response_max_bytes as i32,
            topics: topics
                .into_iter()
                .map(|(name, partitions)| FetchTopic {
                    name: name.to_owned(),
                    partitions,
                })
                .collect(),
        })
    }
}

struct Outcome {
    errors: usize,
}

/// Applies one fetch response (blocking: appends, truncations, fsyncs).
fn process_response(
    node: i32,
    policy: FlushPolicy,
    followed: &[(TopicPartition, Followed)],
    current: &Mutex<HashMap<TopicPartition, Followed>>,
    response: FetchResponse,
) -> Outcome {
    let mut errors = 0;
    let mut to_sync: Vec<(Arc<Partition>, i64, i64)> = Vec::new();
    let by_tp: HashMap<&TopicPartition, &Followed> = followed.iter().map(|(t, f)| (t, f)).collect();
    for t in response.topics {
        for p in t.partitions {
            let tp = TopicPartition::new(t.name.clone(), p.index);
            let Some(f) = by_tp.get(&tp) else { continue };
            // Still followed from this leader in this epoch? (Metadata may have moved on.)
            let still = current
                .lock()
                .get(&tp)
                .is_some_and(|c| c.leader_epoch == f.leader_epoch);
            if !still {
                continue;
            }
            let partition = &f.partition;
            let code = ErrorCode::try_from(p.error_code).unwrap_or(ErrorCode::UnknownServerError);
            match code {
                ErrorCode::None => {}
                ErrorCode::OffsetOutOfRange => {
                    // Behind the leader's log start (retention moved on): start over there.
                    let result = partition.log.write().map_err(|_| ()).and_then(|mut log| {
                        if log.log_end_offset() < p.log_start_offset {
                            tracing::info!(partition = %tp, leader_start = p.log_start_offset, "follower behind the leader's log start; restarting the log there");
                            log.truncate_fully_and_start_at(p.log_start_offset)
                                .map_err(|_| ())?;
                            Ok(log.log_end_offset())
                        } else {
                            Err(())
                        }
                    });
                    match result {
                        Ok(end) => partition.cap_hw(end),
                        Err(()) => errors += 1,
                    }
                    continue;
                }
                _ => {
                    tracing::debug!(partition = %tp, error = %p.error_message, "replica fetch error");
                    errors += 1;
                    continue;
                }
            }
            if let Some(diverging) = p.diverging_epoch {
                let result = partition
                    .log
                    .write()
                    .map_err(|_| "poisoned log lock".to_owned())
                    .and_then(|mut log| {
                        let mut cut = diverging.end_offset;
                        if diverging.epoch >= 0 {
                            match log.end_offset_for_epoch(diverging.epoch) {
                                Some((_, end)) => cut = cut.min(end),
                                None => cut = cut.min(log.log_start_offset()),
                            }
                        }
                        let before = log.log_end_offset();
                        log.truncate_to(cut).map_err(|e| e.to_string())?;
                        tracing::info!(partition = %tp, epoch = diverging.epoch, from = before, to = log.log_end_offset(), "follower log diverged from the leader's; truncated");
                        Ok(log.log_end_offset())
                    });
                match result {
                    Ok(end) => partition.cap_hw(end),
                    Err(e) => {
                        tracing::error!(partition = %tp, error = %e, "truncation failed");
                        errors += 1;
                    }
                }
                continue;
            }
            let end = if p.records.is_empty() {
                partition.log_end_offset().unwrap_or(-1)
            } else {
                match partition.append_as_follower(&p.records) {
                    Ok(end) => end,
                    Err(e) => {
                        tracing::warn!(partition = %tp, error = %e, "appending replicated batches failed");
                        errors += 1;
                        continue;
                    }
                }
            };
            to_sync.push((Arc::clone(partition), end, p.high_watermark));
        }
    }
    for (partition, end, leader_hw) in to_sync {
        if policy == FlushPolicy::Commit
            && let Err(e) = partition.group_commit().wait_durable(end)
        {
            tracing::error!(partition = %partition.tp, node, error = %e, "follower fsync failed");
            errors += 1;
            continue;
        }
        partition.set_follower_hw(leader_hw, end);
    }
    Outcome { errors }
}
