//! The partitions this broker hosts: their logs, leadership state and high watermarks, kept in
//! step with the metadata image; the append, read and offset lookups the request handlers use.
//!
//! High watermark rule (until follower replication lands): the high watermark is the offset
//! below which data is acknowledged-durable — the group-commit durable offset under
//! `log.flush.policy=commit`, the log end offset (in the page cache) under `interval`. Consumers
//! never read past it, so they never see data a crash could take back.
//!
//! Data-safety rules for local logs (the metadata image only ever moves forward, see
//! `lifecycle`):
//! - a log is removed only because a committed metadata record says so — its topic was deleted,
//!   or its replica moved to other brokers — and even then it is first renamed
//!   `<dir>.<id>-delete` and removed after `log.segment.delete.delay.ms`;
//! - a log whose origin is unclear (its topic is not in the image, or the image names another
//!   topic id than the log's `partition.metadata`) is renamed `<dir>.<id>-stray` and kept;
//! - a log directory where a write or fsync failed goes offline at once (Kafka's
//!   `LogDirFailureChannel`): its partitions answer KAFKA_STORAGE_ERROR, nothing more is
//!   acknowledged from it, and the broker is told to stop (see [`ReplicaManager::log_dir_failures`]).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::{ApiError, ErrorCode};
use rill_storage::{Log, LogConfig, LogError, LogManager, OffsetCheckpointFile, TopicPartition};
use tokio::sync::watch;

use rill_protocol::proto::{
    EpochEndOffset, FetchPartition, FetchPartitionResponse, LeaderIdAndEpoch,
};

use crate::config::{BrokerConfig, FlushPolicy};
use crate::partition::{Busy, PartitionAppendError, Transition};
use crate::replica_fetcher::ReplicaFetcherManager;
use crate::throttle::{Throttle, rate_from_config};

/// File in each partition directory naming the topic id the data belongs to.
pub const PARTITION_METADATA: &str = "partition.metadata";
/// Suffix of a log set aside because a committed record removed it; removed after
/// `log.segment.delete.delay.ms`.
pub const DELETE_SUFFIX: &str = "delete";
/// Suffix of a log set aside because its origin is unclear; kept until an operator removes it.
pub const STRAY_SUFFIX: &str = "stray";
/// File in each log dir holding the offset of the last metadata record this broker applied, so
/// a restarted broker never accepts an older view of the cluster.
pub const METADATA_OFFSET_CHECKPOINT: &str = "metadata-offset-checkpoint";
const METADATA_OFFSET_KEY: &str = "__cluster_metadata-0";

/// File in each log dir holding each partition's high watermark (Kafka's name), so a restarted
/// replica does not serve data its ISR had not acknowledged.
pub const REPLICATION_OFFSET_CHECKPOINT: &str = "replication-offset-checkpoint";

pub use crate::partition::{IsrChange, LeaderAppend, LeaderState, Partition};

/// A client-facing error plus, when known, the current (leader id, leader epoch).
pub type PartitionError = (ApiError, Option<(i32, i32)>);

/// What an AlterPartition came to, for the pending ISR change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IsrChangeOutcome {
    /// The controller committed it; the metadata brings it.
    Accepted,
    /// The controller answered that nothing was applied.
    Refused,
    /// The partition's epoch moved on at the controller (maybe through this change): wait for
    /// the metadata.
    Superseded,
    /// No answer (timeout, unreachable, no active controller): it may have been applied.
    Unknown,
}

impl IsrChangeOutcome {
    /// The outcome a failed AlterPartition's error code means. Only the checks the controller
    /// makes after the partition epoch (the new ISR's members) prove that nothing was applied:
    /// the others may answer a resent request whose first attempt was committed and moved the
    /// partition on (a reassignment finished by this very expansion moves its leader, say), so
    /// the change stays pending until the metadata settles it, as Kafka's
    /// `Partition.handleAlterPartitionError` keeps it for all but INELIGIBLE_REPLICA.
    pub fn of_error(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidUpdateVersion
            | ErrorCode::UnknownTopicOrPartition
            | ErrorCode::NotLeaderOrFollower
            | ErrorCode::FencedLeaderEpoch
            | ErrorCode::UnknownLeaderEpoch
            | ErrorCode::InconsistentTopicId => IsrChangeOutcome::Superseded,
            // Answered for the whole request, maybe from a registration not committed yet
            // (which a controller failover can drop): sent again until the metadata settles it.
            ErrorCode::StaleBrokerEpoch | ErrorCode::BrokerIdNotRegistered => {
                IsrChangeOutcome::Unknown
            }
            ErrorCode::InvalidRequest | ErrorCode::IneligibleReplica => IsrChangeOutcome::Refused,
            _ => IsrChangeOutcome::Unknown,
        }
    }
}

/// The hosted partitions and the local metadata image.
pub struct ReplicaManager {
    node_id: i32,
    config: Arc<BrokerConfig>,
    logs: Arc<LogManager>,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    /// Partitions assigned here that cannot serve, and why (failed log dir, unreadable files).
    offline: RwLock<HashMap<TopicPartition, String>>,
    /// Log dirs taken offline by an I/O failure, and the failure.
    offline_dirs: RwLock<BTreeMap<PathBuf, String>>,
    dir_failures: watch::Sender<Option<String>>,
    image: RwLock<Arc<MetadataImage>>,
    hw_changed: Arc<watch::Sender<u64>>,
    fetchers: ReplicaFetcherManager,
    /// ISR changes for the controller (AlterPartition); unset in tests without a controller.
    isr_changes: RwLock<Option<tokio::sync::mpsc::UnboundedSender<IsrChange>>>,
    /// `leader.replication.throttled.rate`: bytes/s served to out-of-sync followers.
    leader_throttle: Arc<Throttle>,
    /// `follower.replication.throttled.rate`: bytes/s fetched for out-of-sync partitions.
    follower_throttle: Arc<Throttle>,
    /// Serialises writes of `replication-offset-checkpoint` (the periodic one against the
    /// removal of a log set aside).
    hw_checkpoint_lock: Mutex<()>,
}

fn api(e: LogError) -> ApiError {
    ApiError::new(e.error_code(), e.to_string())
}

/// An error that means the log dir itself failed (Kafka's `IOException` →
/// `LogDirFailureChannel`), as opposed to bad input.
fn is_dir_failure(e: &LogError) -> bool {
    e.is_log_dir_failure()
}

/// Reads `partition.metadata`: `Ok(None)` when there is none, an error naming the file when it
/// cannot be read.
pub fn read_partition_metadata(dir: &Path) -> Result<Option<String>, LogError> {
    let path = dir.join(PARTITION_METADATA);
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            let id = text.trim();
            if id.is_empty() || id.chars().any(char::is_control) {
                return Err(LogError::Corrupt {
                    path,
                    reason: "partition.metadata does not hold a topic id".into(),
                });
            }
            Ok(Some(id.to_owned()))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(LogError::Io { path, source }),
    }
}

impl ReplicaManager {
    /// A replica manager over opened logs.
    pub fn new(config: Arc<BrokerConfig>, logs: LogManager) -> Self {
        let hw_changed = Arc::new(watch::channel(0).0);
        let (dir_failures, _) = watch::channel(None);
        let logs = Arc::new(logs);
        let follower_throttle = Arc::new(Throttle::default());
        let fetchers = ReplicaFetcherManager::new(
            Arc::clone(&config),
            Arc::clone(&logs),
            Arc::clone(&follower_throttle),
            tokio::runtime::Handle::try_current().is_ok(),
        );
        ReplicaManager {
            fetchers,
            isr_changes: RwLock::new(None),
            leader_throttle: Arc::new(Throttle::default()),
            follower_throttle,
            node_id: config.node_id,
            config,
            logs,
            partitions: RwLock::new(HashMap::new()),
            offline: RwLock::new(HashMap::new()),
            offline_dirs: RwLock::new(BTreeMap::new()),
            dir_failures,
            image: RwLock::new(Arc::new(MetadataImage::default())),
            hw_changed,
            hw_checkpoint_lock: Mutex::new(()),
        }
    }

    /// The broker's configuration.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// The log manager.
    pub fn logs(&self) -> &LogManager {
        &self.logs
    }

    /// The latest metadata image applied.
    pub fn image(&self) -> Arc<MetadataImage> {
        Arc::clone(&self.image.read())
    }

    /// Bumped when the metadata applied changes what this broker serves (leadership moves,
    /// partitions opened or taken offline): parked fetches re-check their partitions.
    pub fn subscribe_metadata(&self) -> watch::Receiver<u64> {
        self.hw_changed.subscribe()
    }

    /// Where ISR changes go (the AlterPartition sender).
    pub fn set_isr_channel(&self, tx: tokio::sync::mpsc::UnboundedSender<IsrChange>) {
        *self.isr_changes.write() = Some(tx);
    }

    fn propose_isr(&self, partition: &Partition, change: IsrChange) {
        self.propose_isr_no_wait(partition, change, false);
    }

    /// Proposes an ISR change; returns whether it is now pending. With `no_wait` a change
    /// whose bookkeeping would wait for the state lock is not proposed (the next fetch finds
    /// it again).
    fn propose_isr_no_wait(&self, partition: &Partition, change: IsrChange, no_wait: bool) -> bool {
        let tx = self.isr_changes.read().clone();
        let Some(tx) = tx else { return false };
        partition.begin_isr_change(&change, no_wait, || tx.send(change.clone()).is_ok()) == Ok(true)
    }

    /// The outcome of an AlterPartition. Only a refusal that proves nothing was applied drops
    /// the pending ISR (so the change can be proposed again from fresh state). An ISR the
    /// controller may have committed must keep holding back the high watermark — it may elect
    /// any of its replicas — so after an unknown outcome the same change is sent again, and
    /// after INVALID_UPDATE_VERSION (the partition moved on, maybe by this very change) it stays
    /// pending until the metadata with the new partition epoch clears it (Kafka's
    /// `PendingExpandIsr` handling).
    pub fn isr_change_done(&self, change: &IsrChange, outcome: IsrChangeOutcome) {
        // Of this incarnation of the topic only: a re-created topic's partition has the same
        // name and epochs, and its own pending change must not be aborted or resent for this.
        let Some(p) = self
            .partition(&change.tp)
            .filter(|p| p.topic_id == change.topic_id)
        else {
            return;
        };
        match outcome {
            IsrChangeOutcome::Accepted | IsrChangeOutcome::Superseded => {}
            // The partition's state lock is held across appends (a segment roll's fsyncs
            // included): taken on a blocking thread, not on the runtime's.
            IsrChangeOutcome::Refused => {
                let change = change.clone();
                tokio::task::spawn_blocking(move || p.abort_isr_change(&change));
            }
            IsrChangeOutcome::Unknown => {
                let tx = self.isr_changes.read().clone();
                let change = change.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                    let p2 = Arc::clone(&p);
                    let c2 = change.clone();
                    let pending = tokio::task::spawn_blocking(move || p2.isr_change_pending(&c2))
                        .await
                        .unwrap_or(false);
                    if pending
                        && let Some(tx) = tx
                        && tx.send(change.clone()).is_err()
                    {
                        tokio::task::spawn_blocking(move || p.abort_isr_change(&change));
                    }
                });
            }
        }
    }

    /// This broker's current registration epoch (sent with replica fetches: a leader takes a
    /// fetch as a replica's only from that replica's current registration, so neither a fetch
    /// from before it restarted nor a client naming its id moves its position or the ISR).
    pub fn set_broker_epoch(&self, epoch: i64) {
        self.fetchers.set_broker_epoch(epoch);
    }

    /// Leaders: proposes removing followers that have not caught up for
    /// `replica.lag.time.max.ms` (Kafka's ISR expiration).
    pub fn shrink_isrs(&self) {
        let lag = std::time::Duration::from_millis(self.config.replica_lag_time_max_ms);
        for p in self.all_partitions() {
            if let Some(change) = p.isr_shrink(lag) {
                tracing::info!(partition = %p.tp, isr = ?change.new_isr, "shrinking the ISR: followers lag");
                self.propose_isr(&p, change);
            }
        }
    }

    /// Stops the replica fetchers.
    pub fn shutdown_fetchers(&self) {
        self.fetchers.shutdown();
    }

    /// Waits for the stopped replica fetchers' threads to end. Blocking.
    pub fn join_fetchers(&self) {
        self.fetchers.join();
    }

    /// Writes each online log dir's `replication-offset-checkpoint` (partition → high
    /// watermark). A dir whose file cannot be read or written is taken offline, as Kafka does
    /// on a checkpoint's I/O error; the other dirs are still written. Returns the first error.
    pub fn checkpoint_high_watermarks(&self) -> Result<(), LogError> {
        if self.image().next_offset == 0 {
            // Nothing opened yet: the file on disk is still the truth.
            return Ok(());
        }
        let serial = self.hw_checkpoint_lock.lock();
        let offline = self.offline_dirs.read().clone();
        let hosted: HashMap<TopicPartition, (PathBuf, i64)> = self
            .all_partitions()
            .into_iter()
            .map(|p| (p.tp.clone(), (p.log_dir.clone(), p.high_watermark())))
            .collect();
        let on_disk: std::collections::HashSet<(PathBuf, String)> = self
            .logs
            .partitions()
            .iter()
            .filter_map(|tp| {
                Some((
                    self.logs.log_dir_of(tp)?,
                    rill_storage::partition_dir_name(tp),
                ))
            })
            .collect();
        let mut failed = Vec::new();
        for dir in self.logs.log_dirs() {
            if offline.contains_key(dir) {
                continue;
            }
            let file = OffsetCheckpointFile::new(dir.join(REPLICATION_OFFSET_CHECKPOINT));
            let written = match file.read() {
                Ok(entries) => Ok(entries),
                // A damaged file is rewritten from what is hosted: nothing in it can be taken
                // for a high watermark (logs not hosted start theirs at the log start).
                Err(LogError::Corrupt { .. }) => Ok(BTreeMap::new()),
                Err(e) => Err(e),
            }
            .and_then(|mut entries| {
                // Keep what is known of logs not (yet) hosted; drop logs that are gone.
                entries.retain(|name, _| on_disk.contains(&(dir.clone(), name.clone())));
                for (tp, (log_dir, hw)) in &hosted {
                    if log_dir == dir {
                        entries.insert(rill_storage::partition_dir_name(tp), *hw);
                    }
                }
                file.write(&entries)
            });
            if let Err(e) = written {
                failed.push((dir.clone(), e));
            }
        }
        drop(serial);
        let mut first = None;
        for (dir, e) in failed {
            if is_dir_failure(&e) {
                self.fail_log_dir(&dir, &format!("high watermark checkpoint: {e}"));
            }
            first.get_or_insert(e);
        }
        first.map_or(Ok(()), Err)
    }

    /// Becomes `Some(reason)` when a log dir failed; the broker then stops (as a KRaft broker
    /// without JBOD failover does), so the controller moves its leaderships.
    pub fn log_dir_failures(&self) -> watch::Receiver<Option<String>> {
        self.dir_failures.subscribe()
    }

    /// Log dirs that are offline, with the failure that took each offline.
    pub fn offline_log_dirs(&self) -> BTreeMap<PathBuf, String> {
        self.offline_dirs.read().clone()
    }

    /// A hosted partition.
    pub fn partition(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().get(tp).cloned()
    }

    /// Every hosted partition.
    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions.read().values().cloned().collect()
    }

    /// How many partitions this broker leads by their own state (the one appends check).
    pub fn leader_count(&self) -> usize {
        self.partitions
            .read()
            .values()
            .filter(|p| p.leader_and_epoch().0 == self.node_id)
            .count()
    }

    /// The offset of the last metadata record applied before this start (from the
    /// `metadata-offset-checkpoint` of every log dir; -1 when none). A metadata snapshot older
    /// than this comes from a lagging controller and must be refused.
    pub fn persisted_metadata_offset(&self) -> i64 {
        self.logs
            .log_dirs()
            .iter()
            .filter_map(|d| {
                let file = OffsetCheckpointFile::new(d.join(METADATA_OFFSET_CHECKPOINT));
                match file.read() {
                    Ok(m) => m.get(METADATA_OFFSET_KEY).copied(),
                    Err(e) => {
                        tracing::warn!(error = %e, "unreadable metadata offset checkpoint; ignoring it");
                        None
                    }
                }
            })
            .max()
            .unwrap_or(-1)
    }

    /// Records (durably, in every online log dir) that metadata up to `offset` was applied.
    pub fn persist_metadata_offset(&self, offset: i64) -> Result<(), LogError> {
        let entries: BTreeMap<String, i64> = [(METADATA_OFFSET_KEY.to_owned(), offset)].into();
        let offline = self.offline_dirs.read().clone();
        for dir in self.logs.log_dirs() {
            if offline.contains_key(dir) {
                continue;
            }
            if let Err(e) =
                OffsetCheckpointFile::new(dir.join(METADATA_OFFSET_CHECKPOINT)).write(&entries)
            {
                self.fail_log_dir(dir, &e.to_string());
                return Err(e);
            }
        }
        Ok(())
    }

    /// Makes the hosted partitions match `image`, which must be at least as new as the last one
    /// applied (the caller guarantees it): opens logs for new replicas, updates leadership and
    /// configs, and sets aside logs that are no longer ours (see the module's rules). A partition
    /// that cannot be opened is reported offline; the others go on. Blocking (file I/O).
    pub fn apply_image(&self, image: Arc<MetadataImage>) {
        let previous = self.image();
        let mut desired: HashMap<TopicPartition, (&str, LeaderState, &BTreeMap<String, String>)> =
            HashMap::new();
        for topic in image.topics.values() {
            for (i, p) in topic.partitions.iter().enumerate() {
                if p.replicas.contains(&self.node_id) {
                    desired.insert(
                        TopicPartition::new(topic.name.clone(), i as i32),
                        (
                            topic.id.as_str(),
                            LeaderState {
                                leader: p.leader,
                                leader_epoch: p.leader_epoch,
                                partition_epoch: p.partition_epoch,
                                replicas: p.replicas.clone(),
                                isr: p.isr.clone(),
                            },
                            &topic.configs,
                        ),
                    );
                }
            }
        }
        // Hosted partitions that are no longer ours, or belong to another incarnation of the topic.
        let hosted: Vec<(TopicPartition, String)> = self
            .partitions
            .read()
            .values()
            .map(|p| (p.tp.clone(), p.topic_id.clone()))
            .collect();
        // Logs to set aside, all at once (one checkpoint write per log dir, not per log).
        let mut aside: Vec<(TopicPartition, &'static str, String)> = Vec::new();
        for (tp, id) in hosted {
            if desired.get(&tp).is_some_and(|(want, _, _)| *want == id) {
                continue;
            }
            // The map's lock is released before `shut_down` waits for the partition's own.
            let removed = self.partitions.write().remove(&tp);
            if let Some(p) = removed {
                p.shut_down();
            }
            self.fetchers.remove(&tp);
            let (suffix, why) = removal(&previous, &image, &tp, Some(&id), self.node_id);
            aside.push((tp, suffix, why));
        }
        // Logs on disk that are not hosted (found at start-up) and not assigned here.
        let going: std::collections::HashSet<TopicPartition> =
            aside.iter().map(|(tp, _, _)| tp.clone()).collect();
        for tp in self.logs.partitions() {
            if desired.contains_key(&tp)
                || self.partitions.read().contains_key(&tp)
                || going.contains(&tp)
            {
                continue;
            }
            let Some(dir) = self.logs.get(&tp).map(|l| l.read().dir().to_owned()) else {
                continue;
            };
            match read_partition_metadata(&dir) {
                Ok(id) => {
                    let (suffix, why) =
                        removal(&previous, &image, &tp, id.as_deref(), self.node_id);
                    aside.push((tp, suffix, why));
                }
                Err(e) => {
                    // Never act on data we cannot identify: leave it where it is.
                    if self
                        .offline
                        .write()
                        .insert(tp.clone(), e.to_string())
                        .is_none()
                    {
                        tracing::error!(partition = %tp, error = %e, "leaving an unidentifiable partition log untouched");
                    }
                }
            }
        }
        self.set_aside(aside);
        for (tp, (topic_id, state, configs)) in desired {
            let config = self.config.log_config(configs);
            let partition = match self.partition(&tp) {
                Some(p) => {
                    let changed = *p.config.read() != config;
                    if changed {
                        p.log.write().set_config(config.clone());
                        *p.config.write() = config;
                    }
                    p
                }
                // A failed log dir stops the broker; meanwhile no log is opened or created
                // (one may be placed in the failed dir, or find its checkpoints stale there).
                None if !self.offline_dirs.read().is_empty() => {
                    self.offline
                        .write()
                        .entry(tp.clone())
                        .or_insert_with(|| "a log dir failed; the broker is stopping".into());
                    continue;
                }
                None => match self.open_partition(&tp, topic_id, config, &previous) {
                    Ok(partition) => {
                        self.offline.write().remove(&tp);
                        self.partitions
                            .write()
                            .insert(tp.clone(), Arc::clone(&partition));
                        partition
                    }
                    Err(e) => {
                        if self
                            .offline
                            .write()
                            .insert(tp.clone(), e.to_string())
                            .is_none()
                        {
                            tracing::error!(partition = %tp, error = %e, "cannot open this partition; it stays offline");
                        }
                        if is_dir_failure(&e)
                            && let Some(dir) = self.log_dir_of(&tp)
                        {
                            self.fail_log_dir(&dir, &e.to_string());
                        }
                        continue;
                    }
                },
            };
            // Kafka's makeLeader / makeFollower. A partition this broker is about to lead
            // leaves its fetcher first (in-flight fetch work is fenced by the state lock too).
            if state.leader == self.node_id {
                self.fetchers.remove(&tp);
            }
            let transition = match partition.update_state(state) {
                // A follower no fetch loop follows (its loop's thread could not start, or its
                // leader had no address yet): tried again with every metadata update, or it
                // would stay behind until the next leader change.
                Transition::Unchanged
                    if partition.state().leader >= 0
                        && partition.state().leader != self.node_id
                        && !self.fetchers.is_following(&tp) =>
                {
                    let s = partition.state();
                    Transition::BecameFollower {
                        leader: s.leader,
                        leader_epoch: s.leader_epoch,
                    }
                }
                t => t,
            };
            match transition {
                Transition::BecameLeader => {
                    self.fetchers.remove(&tp);
                    tracing::info!(partition = %tp, epoch = partition.state().leader_epoch, "became leader");
                }
                Transition::BecameFollower {
                    leader,
                    leader_epoch,
                } => match image.brokers.get(&leader).and_then(|b| b.endpoints.first()) {
                    Some(ep) if leader >= 0 => {
                        tracing::info!(partition = %tp, leader, epoch = leader_epoch, "became follower");
                        self.fetchers.add(
                            leader,
                            format!("{}:{}", ep.host, ep.port),
                            Arc::clone(&partition),
                            leader_epoch,
                        );
                    }
                    _ => self.fetchers.remove(&tp),
                },
                Transition::Unchanged => {}
            }
        }
        self.leader_throttle.set_rate(rate_from_config(
            image
                .cluster_configs
                .get("leader.replication.throttled.rate"),
        ));
        self.follower_throttle.set_rate(rate_from_config(
            image
                .cluster_configs
                .get("follower.replication.throttled.rate"),
        ));
        *self.image.write() = image;
        self.hw_changed.send_modify(|v| *v += 1);
    }

    fn log_dir_of(&self, tp: &TopicPartition) -> Option<PathBuf> {
        let log = self.logs.get(tp)?;
        let dir = log.read().dir().parent()?.to_owned();
        Some(dir)
    }

    /// Renames logs aside (`-delete` or `-stray`), logging what and why. Their high watermarks
    /// leave `replication-offset-checkpoint` first, their recovery points and cleaner
    /// checkpoints after (see [`LogManager::set_aside_all`]): a log created later under the
    /// same name (the topic re-created) must not start from the old one's high watermark,
    /// which would expose records its ISR never had. A log whose high watermark could not be
    /// removed is kept, and its partition stays offline.
    fn set_aside(&self, logs: Vec<(TopicPartition, &'static str, String)>) {
        if logs.is_empty() {
            return;
        }
        // Each log's dir, looked up while the log is still there.
        let logs: Vec<_> = logs
            .into_iter()
            .map(|(tp, suffix, why)| {
                let dir = self.log_dir_of(&tp);
                (tp, suffix, why, dir)
            })
            .collect();
        let kept = self.forget_high_watermarks(
            logs.iter()
                .filter_map(|(tp, _, _, dir)| Some((tp, dir.as_ref()?))),
        );
        let mut going = Vec::new();
        let mut log_dirs = Vec::new();
        for (tp, suffix, why, dir) in logs {
            match kept.get(&tp) {
                Some(e) => {
                    tracing::error!(partition = %tp, error = %e, "could not remove the high watermark of a log to set aside; keeping the log");
                    self.offline.write().insert(tp, e.clone());
                }
                None => {
                    going.push((tp, suffix, why));
                    log_dirs.push(dir);
                }
            }
        }
        let items: Vec<(TopicPartition, &str)> =
            going.iter().map(|(tp, s, _)| (tp.clone(), *s)).collect();
        let (renamed, checkpointed) = self.logs.set_aside_all(&items);
        let mut dirs = std::collections::BTreeSet::new();
        for (((tp, suffix, why), result), log_dir) in going.into_iter().zip(renamed).zip(log_dirs) {
            match result {
                Ok(Some(path)) => {
                    if let Some(dir) = path.parent() {
                        dirs.insert(dir.to_owned());
                    }
                    if suffix == DELETE_SUFFIX {
                        tracing::info!(partition = %tp, path = %path.display(), reason = why, "log scheduled for deletion");
                    } else {
                        tracing::warn!(partition = %tp, path = %path.display(), reason = why, "stray log set aside (kept; remove it by hand once you know it is not needed)");
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(partition = %tp, error = %e, "could not set a log aside");
                    if is_dir_failure(&e)
                        && let Some(dir) = log_dir
                    {
                        self.fail_log_dir(&dir, &e.to_string());
                    }
                    self.offline.write().insert(tp, e.to_string());
                }
            }
        }
        if let Err(e) = checkpointed {
            // Its recovery points and cleaner checkpoints may still name the logs set aside.
            tracing::error!(error = %e, "could not write the checkpoints after setting logs aside");
            if is_dir_failure(&e) {
                for dir in dirs {
                    self.fail_log_dir(&dir, &e.to_string());
                }
            }
        }
    }

    /// Removes partitions from their log dirs' `replication-offset-checkpoint` (one write per
    /// dir), given as (partition, log dir). Returns the partitions whose entry may still be
    /// there, with why.
    fn forget_high_watermarks<'a>(
        &self,
        tps: impl Iterator<Item = (&'a TopicPartition, &'a PathBuf)>,
    ) -> HashMap<TopicPartition, String> {
        let mut by_dir: BTreeMap<&PathBuf, Vec<&TopicPartition>> = BTreeMap::new();
        for (tp, dir) in tps {
            by_dir.entry(dir).or_default().push(tp);
        }
        let _serial = self.hw_checkpoint_lock.lock();
        let mut failed = HashMap::new();
        for (dir, tps) in by_dir {
            let file = OffsetCheckpointFile::new(dir.join(REPLICATION_OFFSET_CHECKPOINT));
            let written = match file.read() {
                Ok(mut entries) => {
                    let before = entries.len();
                    for tp in &tps {
                        entries.remove(&rill_storage::partition_dir_name(tp));
                    }
                    if entries.len() == before {
                        Ok(())
                    } else {
                        file.write(&entries)
                    }
                }
                // A damaged file is ignored when read: nothing in it can be taken for a high
                // watermark.
                Err(LogError::Corrupt { .. }) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                for tp in tps {
                    failed.insert(tp.clone(), e.to_string());
                }
            }
        }
        failed
    }

    fn open_partition(
        &self,
        tp: &TopicPartition,
        topic_id: &str,
        config: LogConfig,
        previous: &MetadataImage,
    ) -> Result<Arc<Partition>, LogError> {
        if let Some(existing) = self.logs.get(tp) {
            let dir = existing.read().dir().to_owned();
            if let Some(recorded) = read_partition_metadata(&dir)?
                && recorded != topic_id
            {
                // Another incarnation of the topic: deleted and re-created while we knew it, or
                // of unclear origin. Either way its data is kept aside, not lost.
                let known = previous
                    .topics
                    .get(&tp.topic)
                    .is_some_and(|t| t.id == recorded);
                let (suffix, why) = if known {
                    (
                        DELETE_SUFFIX,
                        format!(
                            "topic id {recorded} was deleted and the topic re-created as {topic_id}"
                        ),
                    )
                } else {
                    (
                        STRAY_SUFFIX,
                        format!(
                            "local data belongs to topic id {recorded}, the cluster knows this topic as {topic_id}"
                        ),
                    )
                };
                self.set_aside(vec![(tp.clone(), suffix, why)]);
                // Kept (it could not be set aside), or its log dir failed meanwhile.
                if self.logs.get(tp).is_some() || !self.offline_dirs.read().is_empty() {
                    return Err(LogError::Corrupt {
                        path: dir,
                        reason: "could not set aside the log of another topic incarnation".into(),
                    });
                }
            }
        }
        let log = self.logs.get_or_create(tp, config.clone())?;
        let (dir, log_start, leo) = {
            let l = log.read();
            (l.dir().to_owned(), l.log_start_offset(), l.log_end_offset())
        };
        if read_partition_metadata(&dir)?.is_none() {
            rill_storage::write_atomically(&dir.join(PARTITION_METADATA), topic_id.as_bytes())?;
        }
        let log_dir = dir.parent().map(Path::to_owned).unwrap_or_default();
        // The high watermark from the last checkpoint (within the log): a replica must not expose
        // what its ISR had not acknowledged. Without one (a crash before the first checkpoint,
        // a lost file) it starts at the log start, as Kafka's does; a leader raises it once its
        // ISR reports, a follower takes its leader's.
        let checkpointed = OffsetCheckpointFile::new(log_dir.join(REPLICATION_OFFSET_CHECKPOINT))
            .read()
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e, "unreadable high watermark checkpoint; starting high watermarks at the log start");
                BTreeMap::new()
            });
        let hw = checkpointed
            .get(&rill_storage::partition_dir_name(tp))
            .map_or(log_start, |hw| (*hw).clamp(log_start, leo.max(log_start)));
        Ok(Arc::new(Partition::new(
            tp.clone(),
            topic_id.to_owned(),
            log,
            log_dir,
            self.node_id,
            self.config.flush_policy,
            config,
            hw,
        )))
    }

    /// Takes a log dir offline after an I/O failure: its partitions stop serving at once (so
    /// nothing more from it is acknowledged) and the broker is told to stop.
    pub fn fail_log_dir(&self, dir: &Path, reason: &str) {
        {
            let mut offline = self.offline_dirs.write();
            if offline.contains_key(dir) {
                return;
            }
            offline.insert(dir.to_owned(), reason.to_owned());
        }
        tracing::error!(log_dir = %dir.display(), error = reason, "log dir failed; its partitions are offline");
        let doomed: Vec<Arc<Partition>> = self
            .partitions
            .read()
            .values()
            .filter(|p| p.log_dir == dir)
            .cloned()
            .collect();
        for p in doomed {
            self.partitions.write().remove(&p.tp);
            p.shut_down();
            self.fetchers.remove(&p.tp);
            self.offline.write().insert(
                p.tp.clone(),
                format!("log dir {} is offline: {reason}", dir.display()),
            );
        }
        self.dir_failures
            .send_replace(Some(format!("log dir {} failed: {reason}", dir.display())));
        self.hw_changed.send_modify(|v| *v += 1);
    }

    fn storage_error(&self, partition: &Partition, e: LogError) -> ApiError {
        if is_dir_failure(&e) {
            self.fail_log_dir(&partition.log_dir, &e.to_string());
        }
        api(e)
    }

    /// The partition if this broker leads it, else the error a client should see.
    pub fn leader_partition(&self, tp: &TopicPartition) -> Result<Arc<Partition>, PartitionError> {
        let image = self.image();
        let Some(topic) = image.topics.get(&tp.topic) else {
            return Err((
                ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {:?} does not exist", tp.topic),
                ),
                None,
            ));
        };
        let Some(p) = topic
            .partitions
            .get(tp.partition.max(0) as usize)
            .filter(|_| tp.partition >= 0)
        else {
            return Err((
                ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!(
                        "topic {:?} has {} partitions; {} does not exist",
                        tp.topic,
                        topic.partitions.len(),
                        tp.partition
                    ),
                ),
                None,
            ));
        };
        if let Some(why) = self.offline.read().get(tp) {
            return Err((
                ApiError::new(
                    ErrorCode::KafkaStorageError,
                    format!("{tp} is offline on broker {}: {why}", self.node_id),
                ),
                Some((p.leader, p.leader_epoch)),
            ));
        }
        // Leadership is decided by the partition's own state (the one appends check under its
        // lock), not by the image, so the two cannot disagree. Read without the state lock
        // (`leader_and_epoch`): async callers must not queue behind an append holding it.
        let partition = self.partition(tp);
        let (leader, leader_epoch) = partition
            .as_ref()
            .map_or((p.leader, p.leader_epoch), |p| p.leader_and_epoch());
        let current = Some((leader, leader_epoch));
        match partition {
            Some(partition) if leader == self.node_id => Ok(partition),
            _ if leader == self.node_id => Err((
                ApiError::new(
                    ErrorCode::NotLeaderOrFollower,
                    format!("broker {} has not opened {tp} yet; retry", self.node_id),
                ),
                current,
            )),
            _ => Err((
                ApiError::new(
                    if leader == -1 {
                        ErrorCode::LeaderNotAvailable
                    } else {
                        ErrorCode::NotLeaderOrFollower
                    },
                    format!(
                        "broker {} does not lead {tp}; the leader is {leader}",
                        self.node_id
                    ),
                ),
                current,
            )),
        }
    }

    /// `min.insync.replicas` of a topic.
    pub(crate) fn min_isr(&self, topic: &str) -> usize {
        self.image()
            .topics
            .get(topic)
            .and_then(|t| t.configs.get("min.insync.replicas"))
            .and_then(|v| v.trim().parse::<usize>().ok())
            .unwrap_or(1)
    }

    /// Appends a producer's batches as leader (blocking). Under the interval policy the high
    /// watermark may move at once; under commit the caller must
    /// [`make_durable`](Self::make_durable).
    pub fn append(
        &self,
        partition: &Partition,
        records: &[u8],
        acks: i32,
    ) -> Result<LeaderAppend, PartitionError> {
        self.append_in_epoch(partition, records, acks, None)
    }

    /// [`append`](Self::append), refused unless this broker leads in `leader_epoch` when one is
    /// given.
    pub fn append_in_epoch(
        &self,
        partition: &Partition,
        records: &[u8],
        acks: i32,
        leader_epoch: Option<i32>,
    ) -> Result<LeaderAppend, PartitionError> {
        let min_isr = self.min_isr(&partition.tp.topic);
        let append = partition
            .append_as_leader(records, acks, min_isr, leader_epoch)
            .map_err(|e| match e {
                PartitionAppendError::Api(e, current) => (e, current),
                PartitionAppendError::Log(e) => (self.storage_error(partition, e), None),
            })?;
        if self.config.flush_policy == FlushPolicy::Interval {
            partition.maybe_increment_hw();
        }
        Ok(append)
    }

    /// Waits (blocking) until everything below `end` is fsynced, then moves the high watermark
    /// as far as the ISR allows. A failed fsync takes the log dir offline: the data it covered
    /// may be gone from the page cache, so nothing from that dir is acknowledged again.
    pub fn make_durable(&self, partition: &Partition, end: i64) -> Result<(), ApiError> {
        if let Err(e) = partition.group_commit().wait_durable(end) {
            if let LogError::Truncated { .. } = e {
                // Leadership moved and the log took another leader's: not a disk failure.
                return Err(ApiError::new(
                    ErrorCode::NotLeaderOrFollower,
                    format!("{}: {e}; the write may not survive", partition.tp),
                ));
            }
            let reason = format!("fsync failed on {}: {e}", partition.tp);
            self.fail_log_dir(&partition.log_dir, &reason);
            return Err(ApiError::new(ErrorCode::KafkaStorageError, reason));
        }
        partition.maybe_increment_hw();
        Ok(())
    }

    /// acks=all: waits until the high watermark passes `end` (every in-sync replica has the
    /// batch), at most `timeout`, while this broker still leads in `leader_epoch` — after a
    /// leadership change the offsets may hold another leader's data, so the answer is
    /// NOT_LEADER_OR_FOLLOWER (the producer retries). Then `min.insync.replicas` must still
    /// hold, as in Kafka (NOT_ENOUGH_REPLICAS_AFTER_APPEND otherwise).
    pub async fn wait_replicated(
        &self,
        partition: &Partition,
        end: i64,
        leader_epoch: i32,
        timeout: std::time::Duration,
    ) -> Result<(), ApiError> {
        if let Some(outcome) = self.replicated_now(partition, end, leader_epoch) {
            return outcome;
        }
        let mut hw = partition.subscribe_hw();
        let still_leader = || partition.leader_and_epoch() == (self.node_id, leader_epoch);
        // `wait_for` answers with a borrow that holds the watch's lock: drop it at once, or a
        // follower's high-watermark update (which notifies this watch under the partition's
        // lock) deadlocks against the `partition.state()` below. The predicate reads atomics
        // only, for the same reason.
        let reached = tokio::time::timeout(timeout, async {
            hw.wait_for(|_| partition.high_watermark() >= end || !still_leader())
                .await
                .map(|_| ())
        })
        .await;
        if let Some(moved) = self.leadership_moved(partition, leader_epoch) {
            return Err(moved);
        }
        match reached {
            Ok(Ok(_)) => {}
            Ok(Err(_)) => {
                return Err(ApiError::new(
                    ErrorCode::NotLeaderOrFollower,
                    format!("{} is no longer hosted here", partition.tp),
                ));
            }
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::RequestTimedOut,
                    format!(
                        "{}: the in-sync replicas {:?} did not all have the write within {timeout:?}; it may still commit",
                        partition.tp,
                        partition.state().isr
                    ),
                ));
            }
        }
        self.min_isr_after_append(partition)
    }

    /// acks=all decided without waiting: `Some` once leadership moved (NOT_LEADER_OR_FOLLOWER)
    /// or the high watermark passed `end` (then `min.insync.replicas` decides); `None` while
    /// the in-sync replicas still have to catch up. With RF 1, or followers already there, the
    /// answer leaves on the thread that made the write durable — no hop to the runtime.
    pub fn replicated_now(
        &self,
        partition: &Partition,
        end: i64,
        leader_epoch: i32,
    ) -> Option<Result<(), ApiError>> {
        // The high watermark first: a broker that lost leadership may already hold a
        // follower's high watermark over other data at these offsets, but that is set only
        // after the new leader and epoch are, so the check after it sees the change.
        let hw = partition.high_watermark();
        if let Some(moved) = self.leadership_moved(partition, leader_epoch) {
            return Some(Err(moved));
        }
        if hw < end {
            return None;
        }
        Some(self.min_isr_after_append(partition))
    }

    /// After a leadership change the offsets may hold another leader's data.
    fn leadership_moved(&self, partition: &Partition, leader_epoch: i32) -> Option<ApiError> {
        if partition.leader_and_epoch() == (self.node_id, leader_epoch) {
            return None;
        }
        let s = partition.state();
        Some(ApiError::new(
            ErrorCode::NotLeaderOrFollower,
            format!(
                "{}: leadership moved (now broker {} in epoch {}) before the write reached every in-sync replica; it may or may not survive",
                partition.tp, s.leader, s.leader_epoch
            ),
        ))
    }

    /// Kafka's NOT_ENOUGH_REPLICAS_AFTER_APPEND: committed, but by fewer replicas than
    /// `min.insync.replicas` asks for.
    fn min_isr_after_append(&self, partition: &Partition) -> Result<(), ApiError> {
        let isr = partition.state().isr;
        let min_isr = self.min_isr(&partition.tp.topic);
        if isr.len() < min_isr {
            return Err(ApiError::new(
                ErrorCode::NotEnoughReplicasAfterAppend,
                format!(
                    "{}: written, but the ISR {isr:?} shrank below min.insync.replicas = {min_isr} before it committed",
                    partition.tp
                ),
            ));
        }
        Ok(())
    }

    /// Flushes logs whose `flush.messages` / `flush.ms` came due (interval policy).
    pub fn flush_due_logs(&self) -> Result<(), LogError> {
        for p in self.all_partitions() {
            let due = p.log.read().flush_due();
            // The log's lock is released before a failure takes the directory offline (which
            // takes every partition's state lock: lock order is state, then log).
            let flushed = if due { p.log.write().flush() } else { Ok(()) };
            if let Err(e) = flushed {
                if is_dir_failure(&e) {
                    self.fail_log_dir(&p.log_dir, &e.to_string());
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Removes logs set aside as `-delete` longer ago than `log.segment.delete.delay.ms`.
    /// Returns how many were removed.
    pub fn remove_deleted_logs(&self) -> usize {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let delay = u128::from(self.config.log_delete_delay_ms) * 1_000_000;
        let mut removed = 0;
        for dir in self.logs.log_dirs() {
            let Ok(entries) = std::fs::read_dir(dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(stamp) = name
                    .strip_suffix(&format!("-{DELETE_SUFFIX}"))
                    .and_then(|n| n.rsplit_once('.'))
                    .and_then(|(_, hex)| u128::from_str_radix(hex, 16).ok())
                else {
                    continue;
                };
                if now.saturating_sub(stamp) < delay {
                    continue;
                }
                match std::fs::remove_dir_all(entry.path()) {
                    Ok(()) => {
                        removed += 1;
                        tracing::info!(path = %entry.path().display(), "removed a deleted partition log");
                    }
                    Err(e) => {
                        tracing::warn!(path = %entry.path().display(), error = %e, "could not remove a deleted partition log")
                    }
                }
            }
            if removed > 0
                && let Ok(d) = std::fs::File::open(dir)
            {
                let _ = d.sync_all();
            }
        }
        removed
    }

    /// High watermark of a hosted partition (retention and cleaning stay below it).
    pub fn high_watermark_of(&self, tp: &TopicPartition) -> i64 {
        self.partition(tp).map_or(0, |p| p.high_watermark())
    }

    /// Reads batches from `offset` up to `hw` (the high watermark the answer reports), if this
    /// broker still leads in `leader_epoch` (the epoch the read was checked in). Blocking, unless
    /// `cached_only` is `Some(copy_budget)`: then `Err(ReadError::WouldBlock)` instead of waiting
    /// for the disk or for a write holding the log, or copying more than is left of the budget
    /// (see [`rill_storage::Log::read_cached`]).
    #[allow(clippy::too_many_arguments)]
    pub fn read(
        &self,
        partition: &Partition,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        hw: i64,
        leader_epoch: i32,
        cached_only: Option<&mut usize>,
    ) -> Result<Option<Bytes>, ReadError> {
        read_log(partition, leader_epoch, cached_only, |log, cached_only| {
            if offset > hw && offset <= log.log_end_offset() {
                // Written but not yet acknowledged-durable: nothing to read yet.
                return Ok(None);
            }
            read_maybe_cached(log, offset, max_bytes, Some(hw), min_one, cached_only)
        })
    }

    /// Reads a follower's records after [`ReplicaManager::fetch_for_follower`] found it may
    /// have them (`throttled` as it said, in `leader_epoch`), up to the log end; `leader_epoch`
    /// and `cached_only` as in [`ReplicaManager::read`].
    pub fn read_for_follower(
        &self,
        partition: &Partition,
        offset: i64,
        budget: usize,
        throttled: bool,
        leader_epoch: i32,
        cached_only: Option<&mut usize>,
    ) -> Result<Option<Bytes>, ReadError> {
        // Checked again here: the reads of one fetch come after all its checks, and the
        // budget is for all of them.
        if throttled && self.leader_throttle.exceeded() {
            return Ok(None);
        }
        let read = read_log(partition, leader_epoch, cached_only, |log, cached_only| {
            read_maybe_cached(log, offset, budget, None, true, cached_only)
        })?;
        if throttled && let Some(bytes) = &read {
            self.leader_throttle.record(bytes.len());
        }
        Ok(read)
    }

    /// The leader's side of a follower's fetch of one partition (Kafka's
    /// `Partition.fetchRecords` for a replica): checks the epochs, tells a diverged follower
    /// where to truncate and records the follower's position (which may move the high watermark
    /// or add it to the ISR). The records are read after it, with
    /// [`ReplicaManager::read_for_follower`], when the second value says so (`Some(throttled)`).
    /// With `no_wait`, `Err(Busy)` — nothing recorded — when a lock it needs is held (an
    /// append, a roll); an ISR expansion it finds is then proposed by a later fetch if the
    /// proposal itself would wait.
    pub fn fetch_for_follower(
        &self,
        partition: &Partition,
        replica: i32,
        replica_epoch: i64,
        req: &FetchPartition,
        no_wait: bool,
    ) -> Result<(FetchPartitionResponse, Option<bool>), Busy> {
        let mut r = FetchPartitionResponse {
            index: req.index,
            high_watermark: -1,
            log_start_offset: -1,
            ..Default::default()
        };
        let fail = |mut r: FetchPartitionResponse, code: ErrorCode, msg: String| {
            r.error_code = code as i32;
            r.error_message = msg;
            Ok((r, None))
        };
        let state = partition.state_no_wait(no_wait)?;
        r.current_leader = Some(LeaderIdAndEpoch {
            leader_id: state.leader,
            leader_epoch: state.leader_epoch,
        });
        if !state.replicas.contains(&replica) {
            return fail(
                r,
                ErrorCode::NotLeaderOrFollower,
                format!(
                    "broker {replica} is not a replica of {} (replicas {:?})",
                    partition.tp, state.replicas
                ),
            );
        }
        // Only the replica's current registration fetches as it: a follower's position moves
        // the high watermark, so a fetch from anything else — a client that left `replica_id`
        // unset (proto3's 0) on a cluster with a broker 0, a stale process of a restarted
        // broker — must not be taken for the replica's (Kafka guards replica fetches with the
        // CLUSTER_ACTION permission; KIP-903 gave them the broker epoch).
        let registration = self
            .image()
            .brokers
            .get(&replica)
            .map(|b| (b.epoch, b.fenced));
        let registered = registration.map(|(epoch, _)| epoch);
        if registered != Some(replica_epoch) {
            return fail(
                r,
                ErrorCode::StaleBrokerEpoch,
                format!(
                    "a fetch as replica {replica} must carry its broker's current epoch ({}), not {replica_epoch}; a consumer sets replica_id -1",
                    registered.map_or_else(|| "not registered".to_owned(), |e| e.to_string())
                ),
            );
        }
        // A follower always names its epoch; unset is proto3's 0 from a client that left it
        // out, checked as such (never skipped: a follower of another epoch must not fetch).
        let asked = req.current_leader_epoch.unwrap_or(0);
        if let Err((code, message)) = crate::apis::check_leader_epoch(asked, state.leader_epoch) {
            return fail(r, code, message);
        }
        let (start, end, diverging) = {
            let log = partition.log_read(no_wait)?;
            let (start, end) = (log.log_start_offset(), log.log_end_offset());
            // Below the log start: out of range whatever the epochs say (the follower starts
            // over at our log start). Then KIP-320: the follower's last epoch must end at or
            // after its fetch offset here, else its log diverged and it truncates to where ours
            // ends for that epoch; an epoch we no longer know (retention took it) means it
            // starts over at our log start.
            let diverging = if req.fetch_offset < start {
                None
            } else if let Some(last) = req
                .last_fetched_epoch
                // Followers always send it: unset is a follower of a release where the field
                // was not optional, whose epoch 0 was not on the wire.
                .or(Some(0))
                .filter(|e| *e >= 0)
            {
                divergence(&log, req.fetch_offset, last)
            } else if req.fetch_offset > end {
                Some((-1, end))
            } else {
                None
            };
            (start, end, diverging)
        };
        r.log_start_offset = start;
        if req.fetch_offset < start {
            return fail(
                r,
                ErrorCode::OffsetOutOfRange,
                format!(
                    "offset {} is below the log start {start} of {}",
                    req.fetch_offset, partition.tp
                ),
            );
        }
        if let Some((epoch, end_offset)) = diverging {
            r.high_watermark = partition.high_watermark();
            r.diverging_epoch = Some(EpochEndOffset { epoch, end_offset });
            return Ok((r, None));
        }
        // KIP-903: only a fetch from the replica's current registration (checked above), and
        // not while it is fenced, may add it to the ISR.
        let may_join = registration.is_some_and(|(_, fenced)| !fenced);
        let recorded = partition.record_follower_fetch(
            replica,
            state.leader_epoch,
            req.fetch_offset,
            end,
            may_join.then_some(replica_epoch),
            no_wait,
        )?;
        let mut in_maximal_isr = recorded.in_maximal_isr;
        if let Some(change) = recorded.isr_change {
            tracing::info!(partition = %partition.tp, replica, isr = ?change.new_isr, "expanding the ISR: the follower caught up");
            // Joining now holds back the high watermark, so it is not throttled either.
            in_maximal_isr |= self.propose_isr_no_wait(partition, change, no_wait);
        }
        r.high_watermark = partition.high_watermark();
        // An out-of-sync follower catching up is throttled; one in the ISR (or joining it, so
        // already holding back the high watermark) never is.
        let throttled = !in_maximal_isr;
        if throttled && self.leader_throttle.exceeded() {
            return Ok((r, None));
        }
        Ok((r, Some(throttled)))
    }

    /// (log start offset, high watermark).
    pub fn offsets(&self, partition: &Partition) -> Result<(i64, i64), ApiError> {
        let start = partition.log.read().log_start_offset();
        Ok((start, partition.high_watermark()))
    }
}

/// Why a read for a fetch gave no records.
#[derive(Debug)]
pub enum ReadError {
    /// The read would have waited (`cached_only`); nothing was read. Read again on a thread
    /// that may block.
    WouldBlock,
    /// The answer for this partition.
    Failed(ApiError),
}

/// Runs `read` under the partition's log lock — with `cached_only` only if the lock is free
/// (a roll or truncation may hold it for milliseconds) — once the log is known to be still
/// this leader's in `leader_epoch`. Checked under the lock: a broker that loses leadership
/// publishes the new epoch before it truncates, and truncation takes the lock for writing,
/// so a read that passes cannot see a truncated and re-filled log.
fn read_log<'b, T>(
    partition: &Partition,
    leader_epoch: i32,
    cached_only: Option<&'b mut usize>,
    read: impl FnOnce(&Log, Option<&'b mut usize>) -> Result<T, LogError>,
) -> Result<T, ReadError> {
    let log = partition
        .log_read(cached_only.is_some())
        .map_err(|Busy| ReadError::WouldBlock)?;
    let (leader, epoch) = partition.leader_and_epoch();
    if leader != partition.node_id() || epoch != leader_epoch {
        return Err(ReadError::Failed(ApiError::new(
            ErrorCode::NotLeaderOrFollower,
            format!(
                "broker {} no longer leads {} in epoch {leader_epoch} (leader {leader}, epoch {epoch})",
                partition.node_id(),
                partition.tp
            ),
        )));
    }
    read(&log, cached_only).map_err(|e| match e {
        LogError::WouldBlock => ReadError::WouldBlock,
        e => ReadError::Failed(api(e)),
    })
}

/// [`Log::read_cached`] with a copy budget, else [`Log::read`].
fn read_maybe_cached(
    log: &Log,
    offset: i64,
    max_bytes: usize,
    max_offset: Option<i64>,
    min_one: bool,
    cached_only: Option<&mut usize>,
) -> Result<Option<Bytes>, LogError> {
    match cached_only {
        Some(budget) => log.read_cached(offset, max_bytes, max_offset, min_one, budget),
        None => log.read(offset, max_bytes, max_offset, min_one),
    }
}

/// Why a local log is no longer hosted, decided only from committed metadata: `-delete` when
/// a record removed it (its topic was deleted or re-created, or its replica moved away from
/// `node`), `-stray` when its origin is unclear. Returns (suffix, reason).
fn removal(
    previous: &MetadataImage,
    image: &MetadataImage,
    tp: &TopicPartition,
    local_id: Option<&str>,
    node: i32,
) -> (&'static str, String) {
    let Some(local_id) = local_id else {
        return (
            STRAY_SUFFIX,
            "no partition.metadata names the topic id of this data".into(),
        );
    };
    if image
        .topics
        .get(&tp.topic)
        .is_some_and(|t| t.id == local_id)
    {
        return (
            DELETE_SUFFIX,
            format!("its replica moved away from broker {node}"),
        );
    }
    if previous
        .topics
        .get(&tp.topic)
        .is_some_and(|t| t.id == local_id)
    {
        return (
            DELETE_SUFFIX,
            match image.topics.get(&tp.topic) {
                Some(t) => format!(
                    "topic id {local_id} was deleted and the topic re-created as {}",
                    t.id
                ),
                None => format!("topic id {local_id} was deleted"),
            },
        );
    }
    (
        STRAY_SUFFIX,
        format!(
            "topic id {local_id} is not in the cluster metadata at offset {}",
            image.next_offset - 1
        ),
    )
}

/// [`divergence`] for a consumer: when every epoch this log knows began after `last_epoch`,
/// what was read in that epoch ended where the oldest one begins (Kafka's
/// `LeaderEpochFileCache.endOffsetFor`), not "start over at the log start" as a follower is
/// told; a log without epochs (data from before they were recorded) has nothing to compare.
pub(crate) fn consumer_divergence(
    log: &rill_storage::Log,
    fetch_offset: i64,
    last_epoch: i32,
) -> Option<(i32, i64)> {
    match log.end_offset_for_epoch(last_epoch) {
        Some(found) => parted(found, fetch_offset, last_epoch),
        None => {
            let first = log.leader_epochs().first()?;
            (first.start_offset < fetch_offset).then_some((last_epoch, first.start_offset))
        }
    }
}

/// KIP-320: whether a reader (follower or consumer) whose last fetched batch had leader epoch
/// `last_epoch` and that fetches from `fetch_offset` read what this log holds: `None` when
/// that epoch ends here at or after `fetch_offset`; else the epoch (the newest at or below
/// `last_epoch` this log knows) and where it ends here — the reader's log, or what it read,
/// diverged from this one there; `(-1, log start)` when this log knows no such epoch.
pub(crate) fn divergence(
    log: &rill_storage::Log,
    fetch_offset: i64,
    last_epoch: i32,
) -> Option<(i32, i64)> {
    match log.end_offset_for_epoch(last_epoch) {
        Some(found) => parted(found, fetch_offset, last_epoch),
        None => Some((-1, log.log_start_offset())),
    }
}

/// `found`, the newest epoch at or below `last_epoch` and where it ends, unless it is that
/// very epoch and ends at or after `fetch_offset` (nothing parted).
fn parted(found: (i32, i64), fetch_offset: i64, last_epoch: i32) -> Option<(i32, i64)> {
    let (epoch, end) = found;
    (epoch != last_epoch || end < fetch_offset).then_some(found)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use rill_protocol::metadata_image::{PartitionInfo, TopicInfo};

    /// The broker epoch the test images register broker `id` at.
    pub(crate) fn broker_epoch(id: i32) -> i64 {
        100 + i64::from(id)
    }

    /// An image at `offset` of single-partition topics (name, id, replicas; the first leads),
    /// with every replica registered at [`broker_epoch`].
    pub(crate) fn image(offset: i64, topics: &[(&str, &str, Vec<i32>)]) -> MetadataImage {
        let mut image = MetadataImage {
            next_offset: offset + 1,
            ..Default::default()
        };
        for (name, id, replicas) in topics {
            for r in replicas {
                image.brokers.entry(*r).or_insert_with(|| {
                    rill_protocol::metadata_image::BrokerInfo {
                        id: *r,
                        incarnation_id: format!("b{r}"),
                        epoch: broker_epoch(*r),
                        endpoints: Vec::new(),
                        rack: None,
                        fenced: false,
                    }
                });
            }
            image.topics.insert(
                (*name).to_owned(),
                TopicInfo {
                    name: (*name).to_owned(),
                    id: (*id).to_owned(),
                    partitions: vec![PartitionInfo {
                        replicas: replicas.clone(),
                        isr: replicas.clone(),
                        leader: replicas[0],
                        leader_epoch: 0,
                        partition_epoch: 0,
                    }],
                    configs: BTreeMap::new(),
                },
            );
        }
        image
    }

    #[test]
    fn only_committed_removals_delete_everything_else_is_stray() {
        let tp = TopicPartition::new("t", 0);
        let empty = MetadataImage::default();
        let had = image(10, &[("t", "A", vec![1])]);
        // The topic was deleted while we watched: delete.
        let (s, why) = removal(&had, &image(11, &[]), &tp, Some("A"), 1);
        assert_eq!(s, DELETE_SUFFIX, "{why}");
        // Deleted and re-created under a new id while we watched: delete the old incarnation.
        let (s, _) = removal(&had, &image(12, &[("t", "B", vec![1])]), &tp, Some("A"), 1);
        assert_eq!(s, DELETE_SUFFIX);
        // The replica moved to other brokers (same topic id): delete.
        let (s, why) = removal(&had, &image(12, &[("t", "A", vec![2])]), &tp, Some("A"), 1);
        assert_eq!(s, DELETE_SUFFIX);
        assert!(why.contains("moved away"), "{why}");
        // Just restarted (no previous image) and the topic is unknown: we cannot tell why.
        let (s, _) = removal(&empty, &image(12, &[]), &tp, Some("A"), 1);
        assert_eq!(s, STRAY_SUFFIX);
        // Another incarnation we never knew: stray.
        let (s, _) = removal(
            &empty,
            &image(12, &[("t", "B", vec![1])]),
            &tp,
            Some("A"),
            1,
        );
        assert_eq!(s, STRAY_SUFFIX);
        // No partition.metadata: stray.
        let (s, _) = removal(&had, &image(12, &[]), &tp, None, 1);
        assert_eq!(s, STRAY_SUFFIX);
    }

    #[test]
    fn unreadable_partition_metadata_is_an_error_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_partition_metadata(dir.path()).unwrap(), None);
        std::fs::write(dir.path().join(PARTITION_METADATA), "").unwrap();
        let e = read_partition_metadata(dir.path()).unwrap_err();
        assert!(e.to_string().contains(PARTITION_METADATA), "{e}");
        std::fs::write(dir.path().join(PARTITION_METADATA), "abc-123\n").unwrap();
        assert_eq!(
            read_partition_metadata(dir.path()).unwrap().as_deref(),
            Some("abc-123")
        );
    }

    /// `t-0` led by this broker (1 of replicas 1, 2, 3) with three records written in leader
    /// epoch 0 and two in epoch 1; returns the partition and where epoch 0 ends.
    pub(crate) fn epochs_0_then_1(rm: &ReplicaManager) -> (Arc<Partition>, i64) {
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1, 2, 3])])));
        let tp = TopicPartition::new("t", 0);
        let p = rm.leader_partition(&tp).unwrap();
        for _ in 0..3 {
            rm.append(&p, &batch(), 1).unwrap();
        }
        let end0 = p.log_end_offset();
        let mut next = image(6, &[("t", "A", vec![1, 2, 3])]);
        next.topics.get_mut("t").unwrap().partitions[0].leader_epoch = 1;
        rm.apply_image(Arc::new(next));
        let p = rm.leader_partition(&tp).unwrap();
        for _ in 0..2 {
            rm.append(&p, &batch(), 1).unwrap();
        }
        (p, end0)
    }

    /// A follower of a release where `last_fetched_epoch` was not optional leaves epoch 0 off
    /// the wire: unset is checked as epoch 0, so its diverged log is still found.
    #[test]
    fn a_follower_fetch_without_an_epoch_is_checked_as_epoch_0() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[("log.flush.policy", "interval")]);
        let (p, end0) = epochs_0_then_1(&rm);
        let req = FetchPartition {
            index: 0,
            current_leader_epoch: Some(1),
            fetch_offset: end0 + 1,
            partition_max_bytes: 1 << 20,
            last_fetched_epoch: None,
            log_start_offset: 0,
        };
        let (answer, read) = rm
            .fetch_for_follower(&p, 2, broker_epoch(2), &req, false)
            .unwrap();
        assert_eq!(read, None);
        assert_eq!(
            answer.diverging_epoch,
            Some(EpochEndOffset {
                epoch: 0,
                end_offset: end0
            })
        );
    }

    /// A follower's `current_leader_epoch` is always checked: unset is proto3's 0 (from a
    /// follower that left it off the wire), -1 is no wildcard, only the current epoch reads.
    #[test]
    fn a_follower_fetch_is_fenced_by_its_leader_epoch_even_unset_or_negative() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[("log.flush.policy", "interval")]);
        let (p, _) = epochs_0_then_1(&rm);
        let fetch = |epoch: Option<i32>| {
            let req = FetchPartition {
                index: 0,
                current_leader_epoch: epoch,
                fetch_offset: 0,
                partition_max_bytes: 1 << 20,
                last_fetched_epoch: None,
                log_start_offset: 0,
            };
            rm.fetch_for_follower(&p, 2, broker_epoch(2), &req, false)
                .unwrap()
        };
        for (epoch, code) in [
            (None, ErrorCode::FencedLeaderEpoch),
            (Some(-1), ErrorCode::FencedLeaderEpoch),
            (Some(0), ErrorCode::FencedLeaderEpoch),
            (Some(2), ErrorCode::UnknownLeaderEpoch),
        ] {
            let (answer, read) = fetch(epoch);
            assert_eq!((answer.error_code, read), (code as i32, None), "{epoch:?}");
        }
        let (answer, read) = fetch(Some(1));
        assert_eq!(answer.error_code, 0);
        assert!(read.is_some());
    }

    /// A fetch as a replica counts only from the replica's current registration: one without
    /// its broker epoch (a client that left `replica_id` and `replica_epoch` unset) or with an
    /// old one is refused and moves no follower position, so it cannot raise the high
    /// watermark over records the real replica does not have.
    #[test]
    fn a_fetch_as_a_replica_without_its_broker_epoch_moves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[("log.flush.policy", "interval")]);
        let (p, _) = epochs_0_then_1(&rm);
        let end = p.log_end_offset();
        let fetch = |replica: i32, replica_epoch: i64| {
            let req = FetchPartition {
                index: 0,
                current_leader_epoch: Some(1),
                fetch_offset: end,
                partition_max_bytes: 1 << 20,
                last_fetched_epoch: Some(1),
                log_start_offset: 0,
            };
            rm.fetch_for_follower(&p, replica, replica_epoch, &req, false)
                .unwrap()
        };
        for (replica, replica_epoch) in [(2, 0), (3, -1), (2, broker_epoch(2) - 1)] {
            let (answer, read) = fetch(replica, replica_epoch);
            assert_eq!(
                (answer.error_code, read),
                (ErrorCode::StaleBrokerEpoch as i32, None),
                "{replica} at {replica_epoch}: {}",
                answer.error_message
            );
        }
        assert_eq!(p.high_watermark(), 0, "no follower position moved");
        for replica in [2, 3] {
            let (answer, _) = fetch(replica, broker_epoch(replica));
            assert_eq!(answer.error_code, 0, "{}", answer.error_message);
        }
        assert_eq!(p.high_watermark(), end, "the real replicas move it");
    }

    pub(crate) fn batch() -> Vec<u8> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64;
        let mut b = rill_protocol::record_batch::RecordBatchBuilder::new(
            rill_protocol::record_batch::Compression::None,
        );
        b.append(now, Some(b"k"), Some(b"v"), &[]);
        b.build().unwrap().to_vec()
    }

    /// Broker 1 over a fresh log dir, with extra broker properties.
    pub(crate) fn replica_manager(dir: &Path, extra: &[(&str, &str)]) -> ReplicaManager {
        let mut overrides: BTreeMap<String, String> = [
            ("log.dirs".to_owned(), dir.display().to_string()),
            ("node.id".to_owned(), "1".to_owned()),
        ]
        .into();
        for (k, v) in extra {
            overrides.insert((*k).to_owned(), (*v).to_owned());
        }
        let config = Arc::new(BrokerConfig::load(None, &overrides).unwrap());
        let logs = LogManager::open(
            config.log_dirs.clone(),
            config.node_id,
            &config.topic_defaults,
            rill_storage::CleanerConfig::default(),
            Arc::new(rill_storage::SystemClock),
        )
        .unwrap();
        ReplicaManager::new(config, logs)
    }

    /// A follower its fetch loops do not follow yet (here: its leader had no address when it
    /// became follower) is followed at the next metadata update, not only at the next leader
    /// change.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_follower_not_followed_yet_is_followed_at_the_next_metadata_update() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[]);
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![2, 1])])));
        let tp = TopicPartition::new("t", 0);
        assert_eq!(rm.partition(&tp).unwrap().state().leader, 2);
        assert!(
            !rm.fetchers.is_following(&tp),
            "no address for broker 2 yet"
        );
        let mut img = image(6, &[("t", "A", vec![2, 1])]);
        img.brokers.insert(
            2,
            rill_protocol::metadata_image::BrokerInfo {
                id: 2,
                incarnation_id: "b2".into(),
                epoch: 1,
                endpoints: vec![rill_protocol::proto::Endpoint {
                    name: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: u32::from(rill_testkit::free_port()),
                }],
                rack: None,
                fenced: false,
            },
        );
        rm.apply_image(Arc::new(img));
        assert!(rm.fetchers.is_following(&tp));
        rm.shutdown_fetchers();
        rm.logs().shutdown().unwrap();
    }

    /// Kafka's `fetchOffsetForTimestamp`: a new leader whose high watermark has not reached
    /// where its epoch began answers ListOffsets LATEST with OFFSET_NOT_AVAILABLE (retriable),
    /// not a high watermark behind what the previous leader answered.
    #[test]
    fn a_new_leader_behind_its_epoch_start_answers_offset_not_available() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[]);
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![2, 1])])));
        let tp = TopicPartition::new("t", 0);
        let p = rm.partition(&tp).unwrap();
        // As broker 2's follower: three records, high watermark never learned.
        for offset in 0..3 {
            let mut b = batch();
            rill_protocol::record_batch::set_base_offset(&mut b, offset);
            p.append_as_follower(&b).unwrap();
        }
        let mut moved = image(6, &[("t", "A", vec![1, 2])]);
        moved.topics.get_mut("t").unwrap().partitions[0].leader_epoch = 1;
        rm.apply_image(Arc::new(moved));
        let p = rm.leader_partition(&tp).unwrap();
        assert_eq!(p.high_watermark(), 0);
        let e = crate::apis::list_offsets::lookup_offset(&rm, &p, -1).unwrap_err();
        assert_eq!(e.code, ErrorCode::OffsetNotAvailable, "{e}");
        assert!(e.code.is_retriable());
        // The earliest offset needs no high watermark.
        assert!(crate::apis::list_offsets::lookup_offset(&rm, &p, -2).is_ok());
        rm.logs().shutdown().unwrap();
    }

    /// Under the interval flush policy, `flush.messages` is honoured in the append itself (as
    /// Kafka's), not a second later by the background flush.
    #[test]
    fn flush_messages_fsyncs_in_the_append() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(
            tmp.path(),
            &[
                ("log.flush.policy", "interval"),
                ("log.flush.interval.messages", "2"),
            ],
        );
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1])])));
        let p = rm.leader_partition(&TopicPartition::new("t", 0)).unwrap();
        rm.append(&p, &batch(), -1).unwrap();
        assert_eq!(p.log.read().recovery_point(), 0, "one record waits");
        rm.append(&p, &batch(), -1).unwrap();
        assert_eq!(
            p.log.read().recovery_point(),
            2,
            "two: fsynced in the append"
        );
        rm.logs().shutdown().unwrap();
    }

    /// A high watermark checkpoint that cannot be read or written takes its log dir offline,
    /// as Kafka does on a checkpoint's I/O error (a disk failing there fails elsewhere too);
    /// the other log dirs are still checkpointed.
    #[test]
    fn a_failing_high_watermark_checkpoint_takes_its_log_dir_offline() {
        let tmp = tempfile::tempdir().unwrap();
        let (a, b) = (tmp.path().join("a"), tmp.path().join("b"));
        let dirs = format!("{},{}", a.display(), b.display());
        let rm = replica_manager(&a, &[("log.dirs", &dirs)]);
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1])])));
        assert!(rm.log_dir_failures().borrow().is_none());
        // Unreadable (a directory), and in the way of the rename that writes it.
        std::fs::create_dir_all(a.join(REPLICATION_OFFSET_CHECKPOINT).join("x")).unwrap();
        assert!(rm.checkpoint_high_watermarks().is_err());
        let failure = rm.log_dir_failures().borrow().clone();
        assert!(
            failure.is_some_and(|f| f.contains(&a.display().to_string())),
            "log dir a is offline"
        );
        assert!(
            b.join(REPLICATION_OFFSET_CHECKPOINT).exists(),
            "log dir b is still checkpointed"
        );
    }

    /// A log opened without a checkpointed high watermark starts it at the log start, as
    /// Kafka's does: its tail may hold records its ISR never had, and a leader must not expose
    /// them before its followers report them. A checkpointed value is kept, capped at the end.
    #[test]
    fn a_high_watermark_without_checkpoint_starts_at_the_log_start() {
        let tmp = tempfile::tempdir().unwrap();
        let tp = TopicPartition::new("t", 0);
        let hw_after_restart = |checkpoint: Option<i64>| {
            let rm = replica_manager(tmp.path(), &[]);
            let file = OffsetCheckpointFile::new(tmp.path().join(REPLICATION_OFFSET_CHECKPOINT));
            let entries: BTreeMap<String, i64> = checkpoint
                .map(|hw| (rill_storage::partition_dir_name(&tp), hw))
                .into_iter()
                .collect();
            file.write(&entries).unwrap();
            // Leader 1 with broker 2 in its ISR, whose position is unknown until it fetches.
            rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1, 2])])));
            let p = rm.leader_partition(&tp).unwrap();
            let hw = p.high_watermark();
            rm.logs().shutdown().unwrap();
            hw
        };
        {
            let rm = replica_manager(tmp.path(), &[]);
            rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1])])));
            let p = rm.leader_partition(&tp).unwrap();
            // The log starts at 5 (a follower that started over at its leader's log start).
            let log = rm.logs().get(&tp).unwrap();
            log.write().truncate_fully_and_start_at(5).unwrap();
            for _ in 0..10 {
                rm.append(&p, &batch(), 1).unwrap();
            }
            assert_eq!(p.log_end_offset(), 15);
            rm.logs().shutdown().unwrap();
        }
        assert_eq!(hw_after_restart(None), 5);
        assert_eq!(hw_after_restart(Some(2)), 5);
        assert_eq!(hw_after_restart(Some(9)), 9);
        assert_eq!(hw_after_restart(Some(50)), 15);

        // Broker 2 never comes back and leaves the ISR, in the same leader epoch: the leader
        // alone in its ISR raises the high watermark at once, with no write to trigger it.
        let rm = replica_manager(tmp.path(), &[]);
        let file = OffsetCheckpointFile::new(tmp.path().join(REPLICATION_OFFSET_CHECKPOINT));
        file.write(&BTreeMap::new()).unwrap();
        let mut img = image(5, &[("t", "A", vec![1, 2])]);
        rm.apply_image(Arc::new(img.clone()));
        let p = rm.leader_partition(&tp).unwrap();
        assert_eq!(p.high_watermark(), 5);
        img.next_offset += 1;
        let info = &mut img.topics.get_mut("t").unwrap().partitions[0];
        info.isr = vec![1];
        info.partition_epoch += 1;
        rm.apply_image(Arc::new(img));
        assert_eq!(p.state().isr, vec![1]);
        assert_eq!(p.high_watermark(), 15);
        rm.logs().shutdown().unwrap();
    }

    /// A topic deleted and re-created: the new incarnation's partition must not take the old
    /// one's checkpointed high watermark after a crash, or a leader would expose records its
    /// ISR never had.
    #[test]
    fn a_recreated_topic_does_not_inherit_the_old_high_watermark() {
        let tmp = tempfile::tempdir().unwrap();
        let tp = TopicPartition::new("t", 0);
        {
            let rm = replica_manager(tmp.path(), &[]);
            rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1])])));
            let p = rm.leader_partition(&tp).unwrap();
            for _ in 0..10 {
                rm.append(&p, &batch(), 1).unwrap();
            }
            rm.make_durable(&p, 10).unwrap();
            assert_eq!(p.high_watermark(), 10);
            rm.checkpoint_high_watermarks().unwrap();
            rm.apply_image(Arc::new(image(6, &[])));
            // Re-created with broker 2 in the ISR, which has not fetched yet.
            rm.apply_image(Arc::new(image(7, &[("t", "B", vec![1, 2])])));
            let p = rm.leader_partition(&tp).unwrap();
            for _ in 0..3 {
                rm.append(&p, &batch(), 1).unwrap();
            }
            rm.make_durable(&p, 3).unwrap();
            assert_eq!(p.high_watermark(), 0);
            // A crash before the next checkpoint.
            rm.logs().shutdown().unwrap();
        }
        let rm = replica_manager(tmp.path(), &[]);
        rm.apply_image(Arc::new(image(7, &[("t", "B", vec![1, 2])])));
        let p = rm.leader_partition(&tp).unwrap();
        assert_eq!(p.log_end_offset(), 3);
        assert_eq!(p.high_watermark(), 0, "broker 2 never had these records");
        rm.logs().shutdown().unwrap();
    }

    /// A produce whose client gave up while it was queued is not appended (acks=0 too, once
    /// its wait for the append ended); one whose client still waits is, and a job nobody
    /// listens to always is.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn queued_produces_abandoned_by_their_client_are_not_appended() {
        use crate::request_queue::ProduceJob;
        use rill_protocol::proto::{PartitionProduceData, ProduceRequest, TopicProduceData};
        use std::time::Duration;
        let tmp = tempfile::tempdir().unwrap();
        let rm = Arc::new(replica_manager(tmp.path(), &[]));
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1])])));
        let p = rm.leader_partition(&TopicPartition::new("t", 0)).unwrap();
        let (queue, _threads) = crate::request_queue::start(
            1,
            16,
            Arc::clone(&rm),
            crate::config::FlushPolicy::Commit,
            crate::metrics::Metrics::new(),
            tokio::runtime::Handle::current(),
        );
        let request = |acks: i32| ProduceRequest {
            acks,
            timeout_ms: 5000,
            topics: vec![TopicProduceData {
                name: "t".into(),
                partitions: vec![PartitionProduceData {
                    index: 0,
                    records: batch().into(),
                }],
            }],
        };
        let submit = |acks: i32, keep: bool| {
            let (reply, reply_rx) = tokio::sync::oneshot::channel();
            let (appended, appended_rx) = tokio::sync::oneshot::channel();
            let kept = keep.then_some((reply_rx, appended_rx));
            let queue = queue.clone();
            async move {
                let job = ProduceJob {
                    request: request(acks),
                    reply: (acks != 0).then_some(reply),
                    appended: Some(appended),
                };
                queue.submit(job, Duration::from_secs(5)).await.unwrap();
                kept
            }
        };
        // Abandoned: both receivers dropped before an I/O thread takes the job.
        assert!(submit(1, false).await.is_none());
        // Waited for: appended and answered.
        let (reply, appended) = submit(-1, true).await.unwrap();
        appended.await.unwrap();
        let answer = reply.await.unwrap();
        assert_eq!(answer.topics[0].partitions[0].error_code, 0);
        assert_eq!(
            answer.topics[0].partitions[0].base_offset, 0,
            "the abandoned one took no offset"
        );
        // acks=0 whose wait for the append ended (it timed out: the client was told so and may
        // send it again): not appended either.
        assert!(submit(0, false).await.is_none());
        // A job with no listener at all: always appended (after the one above, on the one
        // I/O thread, so the end offset below shows that one took no offset).
        let job = ProduceJob {
            request: request(0),
            reply: None,
            appended: None,
        };
        queue.submit(job, Duration::from_secs(5)).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.log_end_offset() < 2 {
            assert!(
                std::time::Instant::now() < deadline,
                "the acks=0 batch was not appended"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(p.log_end_offset(), 2);
    }

    /// fsyncgate: after a failed fsync nothing from that log dir is acknowledged again, the
    /// high watermark stays where the last good fsync left it, and the broker is told to stop.
    #[test]
    fn a_failed_fsync_takes_the_log_dir_offline() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[]);
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1])])));
        let tp = TopicPartition::new("t", 0);
        let p = rm.leader_partition(&tp).unwrap();
        let info = rm.append(&p, &batch(), -1).unwrap();
        rm.make_durable(&p, info.info.last_offset + 1).unwrap();
        assert_eq!(p.high_watermark(), 1);
        let failures = rm.log_dir_failures();
        assert!(failures.borrow().is_none());

        let guard = rill_storage::fault::inject_fsync_failure(tmp.path());
        let info = rm.append(&p, &batch(), -1).unwrap();
        let e = rm.make_durable(&p, info.info.last_offset + 1).unwrap_err();
        assert_eq!(e.code, ErrorCode::KafkaStorageError, "{e}");
        assert!(guard.hits() >= 1);
        drop(guard);
        // Even with the disk "healthy" again, nothing more is acknowledged from that dir.
        assert_eq!(
            p.high_watermark(),
            1,
            "the high watermark moved over lost data"
        );
        assert!(
            failures.borrow().is_some(),
            "the broker was not told to stop"
        );
        let (e, _) = rm.leader_partition(&tp).err().expect("offline");
        assert_eq!(e.code, ErrorCode::KafkaStorageError, "{e}");
        assert!(e.message.contains("offline"), "{e}");
        assert!(rm.append(&p, &batch(), 1).is_err() || rm.make_durable(&p, 3).is_err());
        assert_eq!(p.high_watermark(), 1);
        assert_eq!(rm.offline_log_dirs().len(), 1);
    }

    /// An out-of-sync follower is served at most `leader.replication.throttled.rate`; an
    /// in-sync one is never throttled.
    #[test]
    fn the_leader_throttle_holds_back_only_out_of_sync_followers() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[("log.flush.policy", "interval")]);
        let mut img = image(5, &[("t", "A", vec![1, 2, 3])]);
        img.topics.get_mut("t").unwrap().partitions[0].isr = vec![1, 3];
        img.cluster_configs
            .insert("leader.replication.throttled.rate".into(), "1000".into());
        rm.apply_image(Arc::new(img));
        let tp = TopicPartition::new("t", 0);
        let p = rm.leader_partition(&tp).unwrap();
        for _ in 0..20 {
            rm.append(&p, &batch(), 1).unwrap();
        }
        let fetch = |replica: i32| {
            let req = FetchPartition {
                index: 0,
                current_leader_epoch: Some(0),
                fetch_offset: 0,
                partition_max_bytes: 1 << 20,
                last_fetched_epoch: None,
                log_start_offset: 0,
            };
            let (mut r, read) = rm
                .fetch_for_follower(&p, replica, broker_epoch(replica), &req, false)
                .unwrap();
            if let Some(throttled) = read
                && let Some(bytes) = rm
                    .read_for_follower(&p, 0, 1 << 20, throttled, 0, None)
                    .unwrap()
            {
                r.records = bytes;
            }
            r
        };
        let first = fetch(2);
        assert_eq!(first.error_code, 0, "{}", first.error_message);
        assert!(
            first.records.len() > 1000,
            "the first second's budget is served"
        );
        assert!(
            fetch(2).records.is_empty(),
            "then the out-of-sync follower waits"
        );
        assert!(
            !fetch(3).records.is_empty(),
            "an in-sync follower is never throttled"
        );
    }

    /// An acks=all write still waiting when leadership moves is answered NOT_LEADER_OR_FOLLOWER
    /// naming the new leader and epoch, so the producer goes there at once (KIP-951).
    #[test]
    fn an_acks_all_write_overtaken_by_a_leadership_move_names_the_new_leader() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[]);
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1, 2])])));
        let tp = TopicPartition::new("t", 0);
        let p = rm.leader_partition(&tp).unwrap();
        rm.append(&p, &batch(), 1).unwrap();
        let end = p.log_end_offset();
        assert!(
            rm.replicated_now(&p, end, 0).is_none(),
            "waits for broker 2"
        );
        let mut moved = image(6, &[("t", "A", vec![2, 1])]);
        moved.topics.get_mut("t").unwrap().partitions[0].leader_epoch = 1;
        rm.apply_image(Arc::new(moved));
        let e = match rm.replicated_now(&p, end, 0) {
            Some(Err(e)) => e,
            other => panic!("expected NOT_LEADER_OR_FOLLOWER, got {other:?}"),
        };
        assert_eq!(e.code, ErrorCode::NotLeaderOrFollower);
        let mut pr = rill_protocol::proto::PartitionProduceResponse::default();
        crate::request_queue::replication_failed(&mut pr, &p, e);
        assert_eq!(pr.error_code, ErrorCode::NotLeaderOrFollower as i32);
        let hint = pr.current_leader.expect("the new leader is named");
        assert_eq!((hint.leader_id, hint.leader_epoch), (2, 1));
    }

    /// An expansion answered NOT_LEADER_OR_FOLLOWER (or another check made before the
    /// partition epoch) may have been committed by an earlier attempt that moved the partition
    /// on: it keeps holding back the high watermark until the metadata settles it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_expansion_answered_not_leader_keeps_holding_back_the_high_watermark() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[]);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        rm.set_isr_channel(tx);
        let mut img = image(5, &[("t", "B", vec![1, 2])]);
        img.topics.get_mut("t").unwrap().partitions[0].isr = vec![1];
        rm.apply_image(Arc::new(img));
        let p = rm.leader_partition(&TopicPartition::new("t", 0)).unwrap();
        let expand = IsrChange {
            tp: p.tp.clone(),
            topic_id: "B".into(),
            leader_epoch: 0,
            partition_epoch: 0,
            new_isr: vec![1, 2],
            new_isr_broker_epochs: Vec::new(),
        };
        rm.propose_isr(&p, expand.clone());
        assert!(p.isr_change_pending(&expand));
        for code in [
            ErrorCode::NotLeaderOrFollower,
            ErrorCode::FencedLeaderEpoch,
            ErrorCode::UnknownTopicOrPartition,
        ] {
            rm.isr_change_done(&expand, IsrChangeOutcome::of_error(code));
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(p.isr_change_pending(&expand), "still pending");
        let info = rm.append(&p, &batch(), -1).unwrap();
        rm.make_durable(&p, info.info.last_offset + 1).unwrap();
        assert_eq!(
            p.high_watermark(),
            0,
            "broker 2 may be in the committed ISR and has nothing"
        );
        // A refusal of the new ISR itself proves nothing was applied: dropped.
        rm.isr_change_done(
            &expand,
            IsrChangeOutcome::of_error(ErrorCode::InvalidRequest),
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while p.isr_change_pending(&expand) {
            assert!(std::time::Instant::now() < deadline, "dropped");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        rm.logs().shutdown().unwrap();
    }

    /// A refusal of an ISR change meant for an older incarnation of the topic (deleted and
    /// created again: same name, same epochs) leaves the new partition's own pending change
    /// alone: aborting it would stop it holding back the high watermark while the controller
    /// may still commit it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_change_of_an_older_incarnation_leaves_the_pending_one_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[]);
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        rm.set_isr_channel(tx);
        rm.apply_image(Arc::new(image(5, &[("t", "B", vec![1, 2])])));
        let p = rm.leader_partition(&TopicPartition::new("t", 0)).unwrap();
        let mine = IsrChange {
            tp: p.tp.clone(),
            topic_id: "B".into(),
            leader_epoch: 0,
            partition_epoch: 0,
            new_isr: vec![1],
            new_isr_broker_epochs: Vec::new(),
        };
        rm.propose_isr(&p, mine.clone());
        assert!(p.isr_change_pending(&mine));
        let older = IsrChange {
            topic_id: "A".into(),
            ..mine.clone()
        };
        rm.isr_change_done(&older, IsrChangeOutcome::Refused);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(p.isr_change_pending(&mine), "still pending");
        rm.isr_change_done(&mine, IsrChangeOutcome::Refused);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while p.isr_change_pending(&mine) {
            assert!(
                std::time::Instant::now() < deadline,
                "its own refusal aborts it"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// A follower's fetch checked on an async task (`no_wait`) while a write holds the log
    /// (a roll, say) does nothing and says so; once the log is free it records the position
    /// and moves the high watermark.
    #[test]
    fn a_follower_fetch_that_must_not_wait_does_nothing_while_a_write_holds_the_log() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[("log.flush.policy", "interval")]);
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1, 2, 3])])));
        let tp = TopicPartition::new("t", 0);
        let p = rm.leader_partition(&tp).unwrap();
        for _ in 0..5 {
            rm.append(&p, &batch(), 1).unwrap();
        }
        let end = p.log_end_offset();
        let req = FetchPartition {
            index: 0,
            current_leader_epoch: Some(0),
            fetch_offset: end,
            partition_max_bytes: 1 << 20,
            last_fetched_epoch: Some(0),
            log_start_offset: 0,
        };
        rm.fetch_for_follower(&p, 3, broker_epoch(3), &req, false)
            .unwrap();
        assert_eq!(
            p.high_watermark(),
            0,
            "replica 2's position is still unknown"
        );
        let held = p.log.write();
        assert_eq!(
            rm.fetch_for_follower(&p, 2, broker_epoch(2), &req, true)
                .unwrap_err(),
            Busy
        );
        assert!(matches!(
            rm.read_for_follower(&p, 0, 1 << 20, false, 0, Some(&mut { usize::MAX })),
            Err(ReadError::WouldBlock)
        ));
        assert!(matches!(
            rm.read(&p, 0, 1 << 20, true, end, 0, Some(&mut { usize::MAX })),
            Err(ReadError::WouldBlock)
        ));
        drop(held);
        assert_eq!(p.high_watermark(), 0, "nothing was recorded");
        let (answer, read) = rm
            .fetch_for_follower(&p, 2, broker_epoch(2), &req, true)
            .unwrap();
        assert_eq!(answer.error_code, 0, "{}", answer.error_message);
        assert_eq!(read, Some(false), "in the ISR: read, not throttled");
        assert_eq!(p.high_watermark(), end, "both followers have everything");
        assert_eq!(answer.high_watermark, end);
        // A read checked in an epoch this broker no longer leads in reads nothing.
        match rm.read_for_follower(&p, 0, 1 << 20, false, 1, None) {
            Err(ReadError::Failed(e)) => assert_eq!(e.code, ErrorCode::NotLeaderOrFollower),
            other => panic!("read in a stale epoch: {other:?}"),
        }
    }
}
