//! The partitions this broker hosts: their logs, leadership state and high watermarks, kept in
//! step with the metadata image; the append, read and offset lookups the request handlers use.
//!
//! High watermark rule (until follower replication lands): the high watermark is the offset
//! below which data is acknowledged-durable — the group-commit durable offset under
//! `log.flush.policy=commit`, the log end offset (in the page cache) under `interval`. Consumers
//! never read past it, so they never see data a crash could take back.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::{Bytes, BytesMut};
use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::{ApiError, ErrorCode};
use rill_storage::{
    GroupCommit, LogAppendInfo, LogConfig, LogError, LogManager, SharedLog, TopicPartition,
};
use tokio::sync::watch;

use crate::config::{BrokerConfig, FlushPolicy};

/// File in each partition directory naming the topic id the data belongs to.
const PARTITION_METADATA: &str = "partition.metadata";

/// Leadership state of a hosted partition, from the metadata image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// Leader broker, -1 when offline.
    pub leader: i32,
    /// Current leader epoch.
    pub leader_epoch: i32,
    /// All replicas.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
}

/// A partition hosted here.
pub struct Partition {
    /// Topic and index.
    pub tp: TopicPartition,
    /// The topic id the local data belongs to.
    pub topic_id: String,
    /// The log.
    pub log: SharedLog,
    group_commit: Arc<GroupCommit>,
    state: RwLock<LeaderState>,
    config: RwLock<LogConfig>,
    high_watermark: AtomicI64,
}

impl Partition {
    /// Leadership state.
    pub fn state(&self) -> LeaderState {
        self.state.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// The high watermark.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }
}

/// A client-facing error plus, when known, the current (leader id, leader epoch).
pub type PartitionError = (ApiError, Option<(i32, i32)>);

/// The hosted partitions and the local metadata image.
pub struct ReplicaManager {
    node_id: i32,
    config: Arc<BrokerConfig>,
    logs: LogManager,
    partitions: RwLock<HashMap<TopicPartition, Arc<Partition>>>,
    image: RwLock<Arc<MetadataImage>>,
    hw_changed: watch::Sender<u64>,
}

fn api(e: LogError) -> ApiError {
    ApiError::new(e.error_code(), e.to_string())
}

impl ReplicaManager {
    /// A replica manager over opened logs.
    pub fn new(config: Arc<BrokerConfig>, logs: LogManager) -> Self {
        let (hw_changed, _) = watch::channel(0);
        ReplicaManager {
            node_id: config.node_id,
            config,
            logs,
            partitions: RwLock::new(HashMap::new()),
            image: RwLock::new(Arc::new(MetadataImage::default())),
            hw_changed,
        }
    }

    /// The log manager.
    pub fn logs(&self) -> &LogManager {
        &self.logs
    }

    /// The latest metadata image applied.
    pub fn image(&self) -> Arc<MetadataImage> {
        self.image
            .read()
            .map(|i| Arc::clone(&i))
            .unwrap_or_default()
    }

    /// Wakes long-polling fetches whenever any high watermark moves.
    pub fn subscribe_hw(&self) -> watch::Receiver<u64> {
        self.hw_changed.subscribe()
    }

    /// A hosted partition.
    pub fn partition(&self, tp: &TopicPartition) -> Option<Arc<Partition>> {
        self.partitions.read().ok()?.get(tp).cloned()
    }

    /// Every hosted partition.
    pub fn all_partitions(&self) -> Vec<Arc<Partition>> {
        self.partitions
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Makes the hosted partitions match `image`: creates logs for new replicas, updates
    /// leadership and configs, deletes logs of partitions no longer assigned here (or whose topic
    /// was deleted and re-created). Blocking (file I/O).
    pub fn apply_image(&self, image: Arc<MetadataImage>) -> Result<(), LogError> {
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
                                replicas: p.replicas.clone(),
                                isr: p.isr.clone(),
                            },
                            &topic.configs,
                        ),
                    );
                }
            }
        }
        // Remove what is no longer ours, or belongs to an older incarnation of the topic.
        let local: Vec<(TopicPartition, String)> = self
            .partitions
            .read()
            .map(|p| {
                p.values()
                    .map(|p| (p.tp.clone(), p.topic_id.clone()))
                    .collect()
            })
            .unwrap_or_default();
        for (tp, id) in local {
            if desired.get(&tp).is_none_or(|(want, _, _)| *want != id) {
                if let Ok(mut p) = self.partitions.write() {
                    p.remove(&tp);
                }
                self.logs.delete(&tp)?;
                tracing::info!(partition = %tp, "deleted a partition log no longer assigned here");
            }
        }
        // Logs found on disk at start-up whose topic is gone.
        for tp in self.logs.partitions() {
            if !desired.contains_key(&tp) && self.partition(&tp).is_none() {
                self.logs.delete(&tp)?;
                tracing::info!(partition = %tp, "deleted the log of a partition that no longer exists");
            }
        }
        for (tp, (topic_id, state, configs)) in desired {
            let config = self.config.log_config(configs);
            match self.partition(&tp) {
                Some(p) => {
                    if let Ok(mut s) = p.state.write() {
                        *s = state;
                    }
                    let changed = p.config.read().map(|c| *c != config).unwrap_or(true);
                    if changed {
                        if let Ok(mut log) = p.log.write() {
                            log.set_config(config.clone());
                        }
                        if let Ok(mut c) = p.config.write() {
                            *c = config;
                        }
                    }
                }
                None => {
                    let partition = self.open_partition(&tp, topic_id, state, config)?;
                    if let Ok(mut p) = self.partitions.write() {
                        p.insert(tp, partition);
                    }
                }
            }
        }
        if let Ok(mut i) = self.image.write() {
            *i = image;
        }
        self.hw_changed.send_modify(|v| *v += 1);
        Ok(())
    }

    fn open_partition(
        &self,
        tp: &TopicPartition,
        topic_id: &str,
        state: LeaderState,
        config: LogConfig,
    ) -> Result<Arc<Partition>, LogError> {
        if let Some(existing) = self.logs.get(tp) {
            let dir = existing
                .read()
                .map(|l| l.dir().to_owned())
                .unwrap_or_default();
            let recorded =
                std::fs::read_to_string(dir.join(PARTITION_METADATA)).unwrap_or_default();
            if !recorded.trim().is_empty() && recorded.trim() != topic_id {
                tracing::info!(partition = %tp, "local data belongs to an older topic with this name; deleting it");
                self.logs.delete(tp)?;
            }
        }
        let log = self.logs.get_or_create(tp, config.clone())?;
        let (dir, hw, group_commit) = {
            let l = log.read().map_err(|_| LogError::Corrupt {
                path: Default::default(),
                reason: "poisoned log lock".into(),
            })?;
            (l.dir().to_owned(), l.log_end_offset(), l.group_commit())
        };
        std::fs::write(dir.join(PARTITION_METADATA), topic_id).map_err(|source| LogError::Io {
            path: dir.join(PARTITION_METADATA),
            source,
        })?;
        Ok(Arc::new(Partition {
            tp: tp.clone(),
            topic_id: topic_id.to_owned(),
            log,
            group_commit,
            state: RwLock::new(state),
            config: RwLock::new(config),
            high_watermark: AtomicI64::new(hw),
        }))
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
        let current = Some((p.leader, p.leader_epoch));
        if p.leader != self.node_id {
            return Err((
                ApiError::new(
                    if p.leader == -1 {
                        ErrorCode::LeaderNotAvailable
                    } else {
                        ErrorCode::NotLeaderOrFollower
                    },
                    format!(
                        "broker {} does not lead {tp}; the leader is {}",
                        self.node_id, p.leader
                    ),
                ),
                current,
            ));
        }
        self.partition(tp).ok_or_else(|| {
            (
                ApiError::new(
                    ErrorCode::NotLeaderOrFollower,
                    format!("broker {} has not opened {tp} yet; retry", self.node_id),
                ),
                current,
            )
        })
    }

    /// Appends a producer's batches (blocking). Under the interval policy the high watermark
    /// moves at once; under commit the caller must [`make_durable`](Self::make_durable).
    pub fn append(
        &self,
        partition: &Partition,
        records: &[u8],
        acks: i32,
    ) -> Result<LogAppendInfo, ApiError> {
        let state = partition.state();
        if acks == -1 {
            // As Kafka: acks=all needs at least min.insync.replicas in the ISR, checked before
            // anything is written.
            let min_isr = self
                .image()
                .topics
                .get(&partition.tp.topic)
                .and_then(|t| t.configs.get("min.insync.replicas"))
                .and_then(|v| v.parse::<usize>().ok())
                .unwrap_or(1);
            if state.isr.len() < min_isr {
                return Err(ApiError::new(
                    ErrorCode::NotEnoughReplicas,
                    format!(
                        "{} has {} in-sync replica(s) {:?}, fewer than min.insync.replicas = {min_isr}; nothing was written",
                        partition.tp,
                        state.isr.len(),
                        state.isr
                    ),
                ));
            }
        }
        let epoch = state.leader_epoch;
        let mut buf = BytesMut::from(records);
        let info = {
            let mut log = partition
                .log
                .write()
                .map_err(|_| ApiError::new(ErrorCode::KafkaStorageError, "poisoned log lock"))?;
            let info = log.append_as_leader(&mut buf, epoch).map_err(api)?;
            if self.config.flush_policy == FlushPolicy::Interval {
                // Acknowledged without fsync: at least in the page cache (survives a crash of
                // this process). Under `commit` the fsync in `make_durable` writes it out.
                log.write_out().map_err(api)?;
            }
            info
        };
        if self.config.flush_policy == FlushPolicy::Interval {
            self.advance_hw(partition, info.last_offset + 1);
        }
        Ok(info)
    }

    /// Waits (blocking) until everything below `end` is fsynced, then moves the high watermark.
    pub fn make_durable(&self, partition: &Partition, end: i64) -> Result<(), ApiError> {
        partition.group_commit.wait_durable(end).map_err(|e| {
            ApiError::new(
                ErrorCode::KafkaStorageError,
                format!("fsync failed on {}: {e}", partition.tp),
            )
        })?;
        self.advance_hw(partition, partition.group_commit.durable_offset());
        Ok(())
    }

    fn advance_hw(&self, partition: &Partition, to: i64) {
        let prev = partition.high_watermark.fetch_max(to, Ordering::AcqRel);
        if to > prev {
            self.hw_changed.send_modify(|v| *v += 1);
        }
    }

    /// Flushes logs whose `flush.messages` / `flush.ms` came due (interval policy).
    pub fn flush_due_logs(&self) -> Result<(), LogError> {
        for p in self.all_partitions() {
            let due = p.log.read().map(|l| l.flush_due()).unwrap_or(false);
            if due && let Ok(mut l) = p.log.write() {
                l.flush()?;
            }
        }
        Ok(())
    }

    /// High watermark of a hosted partition (retention and cleaning stay below it).
    pub fn high_watermark_of(&self, tp: &TopicPartition) -> i64 {
        self.partition(tp).map_or(0, |p| p.high_watermark())
    }

    /// Reads batches from `offset` up to the high watermark (blocking).
    pub fn read(
        &self,
        partition: &Partition,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<Option<Bytes>, ApiError> {
        let hw = partition.high_watermark();
        let log = partition
            .log
            .read()
            .map_err(|_| ApiError::new(ErrorCode::KafkaStorageError, "poisoned log lock"))?;
        if offset > hw && offset <= log.log_end_offset() {
            // Written but not yet acknowledged-durable: nothing to read yet.
            return Ok(None);
        }
        log.read(offset, max_bytes, Some(hw), min_one).map_err(api)
    }

    /// (log start offset, high watermark).
    pub fn offsets(&self, partition: &Partition) -> (i64, i64) {
        let start = partition
            .log
            .read()
            .map(|l| l.log_start_offset())
            .unwrap_or(0);
        (start, partition.high_watermark())
    }
}
