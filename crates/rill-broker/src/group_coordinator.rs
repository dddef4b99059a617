//! The group coordinator on the broker (Kafka's `GroupCoordinatorService` over its
//! `CoordinatorRuntime`): one [`GroupCoordinatorShard`] per `__consumer_offsets` partition this
//! broker leads.
//!
//! - **Routing.** A group belongs to partition `partition_for(group_id, 50)`; its leader is the
//!   group's coordinator. FindCoordinator creates `__consumer_offsets` on first use.
//! - **Loading.** When this broker becomes a partition's leader (any new leader epoch), the
//!   shard is rebuilt by replaying the partition from its log start to its log end; requests get
//!   COORDINATOR_LOAD_IN_PROGRESS meanwhile. Losing leadership drops the shard (NOT_COORDINATOR).
//! - **Writes.** Under the shard's lock a request computes its records and response (the shard
//!   replays the records at once, so later requests see them); the records are appended as
//!   leader in one go, the lock is released, and the answer waits until the high watermark
//!   passes them (fsynced and on every in-sync replica), as an acks=all produce does.
//! - **Reads** (and writes that produced no record) wait until the high watermark passes
//!   everything written before them, so no answer ever reflects state a failover could lose.
//! - **Timers.** Each shard's task fences members whose session or rebalance timeout passed and
//!   expires old offsets; a metadata change (topics created, deleted, grown) reaches every shard.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_group_coordinator::classic_group::{
    ClassicAnswer, HeartbeatRequest, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, SyncGroupRequest, SyncGroupResponse, WaiterId,
};
use rill_group_coordinator::{
    CoordinatorResult, GroupCoordinatorShard, OFFSETS_TOPIC, Record, partition_for,
};
use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::proto::*;
use rill_protocol::record_batch::{Compression, RecordBatchBuilder, batches};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tokio_util::sync::CancellationToken;

use crate::config::{BrokerConfig, FlushPolicy, GroupCoordinatorConfig};
use crate::controller_client::ControllerClient;
use crate::partition::Partition;
use crate::replica_manager::ReplicaManager;

/// How often each shard checks its members' deadlines.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Pause before loading a partition again after a failed load.
const LOAD_RETRY_BACKOFF: Duration = Duration::from_secs(1);
/// Records per appended batch are capped so a batch stays far below `max.message.bytes` (and
/// at the records' own limit, `message.max.bytes` less framing, when that is lower).
const MAX_BATCH_BYTES: usize = 512 * 1024;

/// The broker's group coordinator: every shard it leads, and the routing to them.
pub struct GroupCoordinator {
    rm: Arc<ReplicaManager>,
    config: GroupCoordinatorConfig,
    node_id: i32,
    flush_policy: FlushPolicy,
    shards: parking_lot::Mutex<HashMap<i32, Slot>>,
    controllers: ControllerClient,
    creating: tokio::sync::Mutex<()>,
    /// Wakes the metadata loop to reload a shard dropped after a failed write.
    reload: tokio::sync::Notify,
    stop: CancellationToken,
    /// JoinGroup and SyncGroup requests waiting for their answers (classic groups hold them
    /// until the rebalance gets that far), by the id the shard knows them by.
    waiters: parking_lot::Mutex<HashMap<WaiterId, tokio::sync::oneshot::Sender<ClassicAnswer>>>,
    next_waiter: std::sync::atomic::AtomicU64,
}

/// Removes its waiter from the map when the request is answered, times out, or its connection
/// goes away (the future is dropped).
struct WaiterGuard<'a> {
    waiters: &'a parking_lot::Mutex<HashMap<WaiterId, tokio::sync::oneshot::Sender<ClassicAnswer>>>,
    id: WaiterId,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        self.waiters.lock().remove(&self.id);
    }
}

/// Longest a held JoinGroup or SyncGroup waits beyond the rebalance timeout it asked for,
/// before it is answered REBALANCE_IN_PROGRESS (the client joins again).
const CLASSIC_WAIT_SLACK: Duration = Duration::from_secs(30);

/// A partition this broker leads: still loading, or serving.
enum Slot {
    Loading {
        leader_epoch: i32,
        partition: Arc<Partition>,
        cancel: CancellationToken,
    },
    Active(Arc<Shard>),
}

impl Slot {
    /// True when the slot serves `partition` (the same hosted replica, not a re-created topic's)
    /// in `leader_epoch`.
    fn serves(&self, partition: &Arc<Partition>, leader_epoch: i32) -> bool {
        let (p, e) = match self {
            Slot::Loading {
                leader_epoch,
                partition,
                ..
            } => (partition, *leader_epoch),
            Slot::Active(s) => (&s.partition, s.leader_epoch),
        };
        e == leader_epoch && Arc::ptr_eq(p, partition)
    }

    fn cancel(&self) {
        match self {
            Slot::Loading { cancel, .. } => cancel.cancel(),
            Slot::Active(s) => s.cancel.cancel(),
        }
    }
}

/// One loaded shard, valid for one leader epoch of its partition.
struct Shard {
    index: i32,
    partition: Arc<Partition>,
    leader_epoch: i32,
    state: tokio::sync::Mutex<ShardState>,
    cancel: CancellationToken,
    /// The topics (name → id, partition count) the shard's records last caught up with
    /// (`on_loaded`, `on_metadata_update`): until they match the image's, every metadata update
    /// tries again, so a change whose write was refused (the partition short of in-sync
    /// replicas) or that came while the shard loaded is not missed for good.
    topics_applied: parking_lot::Mutex<Topics>,
}

/// Name → (id, partition count): a topic deleted and re-created between two updates changes
/// its id even when its name and size stay.
type Topics = BTreeMap<String, (String, usize)>;

fn topics_of(image: &MetadataImage) -> Topics {
    image
        .topics
        .values()
        .map(|t| (t.name.clone(), (t.id.clone(), t.partitions.len())))
        .collect()
}

struct ShardState {
    shard: GroupCoordinatorShard,
    /// Offset after the last record written (or loaded): answers wait for the high watermark
    /// to pass it.
    written_end: i64,
    /// An append failed: the in-memory state may hold records the log does not, so the shard
    /// serves nothing more (a reload rebuilds it).
    failed: bool,
    /// Requests were refused because the partition had fewer in-sync replicas than
    /// `min.insync.replicas`: heartbeats too, so sessions restart when it recovers.
    isr_short: bool,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Maps an append or replication failure to what a group client should do about it.
fn coordinator_error(e: ApiError) -> ApiError {
    match e.code {
        ErrorCode::NotLeaderOrFollower
        | ErrorCode::KafkaStorageError
        | ErrorCode::UnknownTopicOrPartition
        | ErrorCode::LeaderNotAvailable => ApiError::new(
            ErrorCode::NotCoordinator,
            format!("this broker stopped coordinating the group: {}", e.message),
        ),
        ErrorCode::NotEnoughReplicas
        | ErrorCode::NotEnoughReplicasAfterAppend
        | ErrorCode::RequestTimedOut => ApiError::new(
            ErrorCode::CoordinatorNotAvailable,
            format!(
                "the group's write did not reach every in-sync replica of its __consumer_offsets partition in time (it may still take effect); retry: {}",
                e.message
            ),
        ),
        _ => e,
    }
}

/// Encodes records as Kafka v2 batches, each at most `max_batch` bytes (but for a record
/// alone), concatenated.
fn encode(records: &[Record], now: i64, max_batch: usize) -> Result<Bytes, ApiError> {
    let mut out = Vec::new();
    let mut builder = RecordBatchBuilder::new(Compression::None);
    for r in records {
        if !builder.is_empty()
            && builder.estimated_size() + r.key.len() + r.value.as_ref().map_or(0, |v| v.len())
                > max_batch
        {
            let full = std::mem::replace(&mut builder, RecordBatchBuilder::new(Compression::None));
            out.extend_from_slice(&full.build().map_err(batch_error)?);
        }
        builder.append(now, Some(&r.key), r.value.as_deref(), &[]);
    }
    if !builder.is_empty() {
        out.extend_from_slice(&builder.build().map_err(batch_error)?);
    }
    Ok(Bytes::from(out))
}

fn batch_error(e: rill_protocol::record_batch::BatchError) -> ApiError {
    ApiError::new(
        ErrorCode::UnknownServerError,
        format!("could not encode group records: {e}"),
    )
}

impl GroupCoordinator {
    /// The coordinator of a broker; serves nothing until [`start`](Self::start).
    pub fn new(rm: Arc<ReplicaManager>, config: &BrokerConfig) -> Result<Arc<Self>, ApiError> {
        Ok(Arc::new(GroupCoordinator {
            rm,
            config: config.group.clone(),
            node_id: config.node_id,
            flush_policy: config.flush_policy,
            shards: parking_lot::Mutex::new(HashMap::new()),
            controllers: ControllerClient::new(&config.controller_voters)?,
            creating: tokio::sync::Mutex::new(()),
            reload: tokio::sync::Notify::new(),
            stop: CancellationToken::new(),
            waiters: parking_lot::Mutex::new(HashMap::new()),
            next_waiter: std::sync::atomic::AtomicU64::new(1),
        }))
    }

    /// Follows the metadata image: loads the shards of partitions this broker comes to lead,
    /// drops the others, and tells every shard about topic changes. Stops with `stop`.
    pub fn start(self: &Arc<Self>, stop: CancellationToken) {
        let this = Arc::clone(self);
        let mut updates = self.rm.subscribe_metadata();
        tokio::spawn(async move {
            loop {
                this.reconcile();
                let topics = topics_of(&this.rm.image());
                for shard in this.active_shards() {
                    if *shard.topics_applied.lock() == topics {
                        continue;
                    }
                    let this = Arc::clone(&this);
                    let topics = topics.clone();
                    tokio::spawn(async move {
                        let caught_up = this
                            .write(&shard, |s, image, now| CoordinatorResult {
                                records: s.on_metadata_update(image, now),
                                response: (),
                            })
                            .await;
                        if caught_up.is_ok() {
                            *shard.topics_applied.lock() = topics;
                        }
                    });
                }
                tokio::select! {
                    _ = stop.cancelled() => break,
                    changed = updates.changed() => if changed.is_err() { break },
                    _ = this.reload.notified() => {}
                }
            }
            this.stop.cancel();
            for (_, slot) in this.shards.lock().drain() {
                slot.cancel();
            }
        });
    }

    fn active_shards(&self) -> Vec<Arc<Shard>> {
        self.shards
            .lock()
            .values()
            .filter_map(|s| match s {
                Slot::Active(s) => Some(Arc::clone(s)),
                Slot::Loading { .. } => None,
            })
            .collect()
    }

    /// Makes the loaded shards match the partitions this broker leads now.
    fn reconcile(self: &Arc<Self>) {
        let image = self.rm.image();
        let count = image
            .topics
            .get(OFFSETS_TOPIC)
            .map_or(0, |t| t.partitions.len() as i32);
        let mut shards = self.shards.lock();
        shards.retain(|index, slot| {
            let keep = *index < count;
            if !keep {
                slot.cancel();
            }
            keep
        });
        for index in 0..count {
            let tp = TopicPartition::new(OFFSETS_TOPIC, index);
            let leading = self
                .rm
                .partition(&tp)
                .filter(|p| p.leader_and_epoch().0 == self.node_id);
            match leading {
                Some(partition) => {
                    let epoch = partition.leader_and_epoch().1;
                    if shards
                        .get(&index)
                        .is_some_and(|s| s.serves(&partition, epoch))
                    {
                        continue;
                    }
                    if let Some(old) = shards.remove(&index) {
                        old.cancel();
                    }
                    let cancel = self.stop.child_token();
                    shards.insert(
                        index,
                        Slot::Loading {
                            leader_epoch: epoch,
                            partition: Arc::clone(&partition),
                            cancel: cancel.clone(),
                        },
                    );
                    let this = Arc::clone(self);
                    tokio::spawn(async move { this.load(index, partition, epoch, cancel).await });
                }
                None => {
                    if let Some(old) = shards.remove(&index) {
                        tracing::info!(
                            partition = index,
                            "no longer coordinating the groups of __consumer_offsets partition"
                        );
                        old.cancel();
                    }
                }
            }
        }
    }

    /// Rebuilds a shard by replaying its partition, then serves it.
    async fn load(
        self: Arc<Self>,
        index: i32,
        partition: Arc<Partition>,
        leader_epoch: i32,
        cancel: CancellationToken,
    ) {
        let started = Instant::now();
        let shard_config = self.config.shard.clone();
        let source = Arc::clone(&partition);
        let loaded = tokio::task::spawn_blocking(move || replay_partition(&source, shard_config))
            .await
            .map_err(|e| format!("load task failed: {e}"))
            .and_then(|r| r);
        let (mut shard, end, count) = match loaded {
            Ok(l) => l,
            Err(e) => {
                tracing::error!(partition = index, error = %e, "could not load __consumer_offsets partition; retrying");
                self.retry_load(index, leader_epoch).await;
                return;
            }
        };
        if cancel.is_cancelled() {
            return;
        }
        let image = self.rm.image();
        let records = shard.on_loaded(&image, now_ms());
        let shard = Arc::new(Shard {
            topics_applied: parking_lot::Mutex::new(topics_of(&image)),
            index,
            partition,
            leader_epoch,
            state: tokio::sync::Mutex::new(ShardState {
                shard,
                written_end: end,
                failed: false,
                isr_short: false,
            }),
            cancel: cancel.clone(),
        });
        {
            let mut st = shard.state.lock().await;
            if let Err(e) = self.append(&shard, &mut st, &records).await {
                tracing::warn!(partition = index, error = %e, "could not write the records of a loaded __consumer_offsets partition; retrying");
                self.retry_load(index, leader_epoch).await;
                return;
            }
        }
        {
            let mut shards = self.shards.lock();
            match shards.get(&index) {
                Some(Slot::Loading {
                    leader_epoch: e, ..
                }) if *e == leader_epoch => {
                    shards.insert(index, Slot::Active(Arc::clone(&shard)));
                }
                _ => return,
            }
        }
        // Topic changes made while it loaded: the metadata loop looks again now.
        self.reload.notify_one();
        tracing::info!(
            partition = index,
            leader_epoch,
            records = count,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "coordinating the groups of __consumer_offsets partition"
        );
        tokio::spawn(Arc::clone(&self).run_timers(shard));
    }

    /// Gives up a failed load: frees the slot (still loading in `leader_epoch`) and, after a
    /// pause, lets the metadata loop start over.
    async fn retry_load(&self, index: i32, leader_epoch: i32) {
        {
            let mut shards = self.shards.lock();
            if let Some(Slot::Loading {
                leader_epoch: e, ..
            }) = shards.get(&index)
                && *e == leader_epoch
            {
                shards.remove(&index);
            }
        }
        tokio::select! {
            _ = self.stop.cancelled() => {}
            _ = tokio::time::sleep(LOAD_RETRY_BACKOFF) => self.reload.notify_one(),
        }
    }

    /// Fences expired members and expires old offsets of one shard until it is dropped.
    async fn run_timers(self: Arc<Self>, shard: Arc<Shard>) {
        let interval = Duration::from_millis(self.config.offsets_retention_check_interval_ms);
        let mut next_cleanup = Instant::now() + interval;
        loop {
            tokio::select! {
                _ = shard.cancel.cancelled() => return,
                _ = tokio::time::sleep(TIMER_TICK) => {}
            }
            let due = {
                let st = shard.state.lock().await;
                if st.failed {
                    return;
                }
                st.shard.next_deadline_ms().is_some_and(|d| d <= now_ms())
            };
            if due {
                let r = self
                    .write(&shard, |s, image, now| CoordinatorResult {
                        records: s.expire_members(image, now),
                        response: (),
                    })
                    .await;
                if let Err(e) = r {
                    tracing::debug!(partition = shard.index, error = %e, "fencing expired members did not commit");
                }
            }
            if Instant::now() >= next_cleanup {
                next_cleanup = Instant::now() + interval;
                let _ = self
                    .write(&shard, |s, _, now| CoordinatorResult {
                        records: s.cleanup_expired_offsets(now),
                        response: (),
                    })
                    .await;
            }
        }
    }

    /// The shard coordinating `group_id`, or why there is none here.
    fn shard_of(&self, group_id: &str) -> Result<Arc<Shard>, ApiError> {
        let image = self.rm.image();
        let Some(topic) = image.topics.get(OFFSETS_TOPIC) else {
            return Err(ApiError::new(
                ErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC} does not exist yet; FindCoordinator creates it"),
            ));
        };
        let index = partition_for(group_id, topic.partitions.len() as i32);
        match self.shards.lock().get(&index) {
            Some(Slot::Active(s)) => Ok(Arc::clone(s)),
            Some(Slot::Loading { .. }) => Err(ApiError::new(
                ErrorCode::CoordinatorLoadInProgress,
                format!(
                    "broker {} is loading {OFFSETS_TOPIC}-{index}, which holds group {group_id:?}; retry shortly",
                    self.node_id
                ),
            )),
            None => {
                let leader = topic
                    .partitions
                    .get(index as usize)
                    .map_or(-1, |p| p.leader);
                if leader == self.node_id {
                    // Led here by the image; the metadata loop is about to load it.
                    return Err(ApiError::new(
                        ErrorCode::CoordinatorLoadInProgress,
                        format!(
                            "broker {} is about to load {OFFSETS_TOPIC}-{index}, which holds group {group_id:?}; retry shortly",
                            self.node_id
                        ),
                    ));
                }
                Err(ApiError::new(
                    ErrorCode::NotCoordinator,
                    format!(
                        "broker {} does not coordinate group {group_id:?}: {OFFSETS_TOPIC}-{index} is led by broker {leader}; ask FindCoordinator again",
                        self.node_id
                    ),
                ))
            }
        }
    }

    /// Appends `records` as leader under the shard's lock (blocking part on the blocking
    /// pool). A failure poisons the shard and drops it so it is reloaded from the log.
    async fn append(
        &self,
        shard: &Arc<Shard>,
        st: &mut ShardState,
        records: &[Record],
    ) -> Result<(), ApiError> {
        if records.is_empty() {
            return Ok(());
        }
        let max_batch = MAX_BATCH_BYTES.min(self.config.shard.max_record_bytes);
        let appended = match encode(records, now_ms(), max_batch) {
            Ok(bytes) => {
                let rm = Arc::clone(&self.rm);
                let partition = Arc::clone(&shard.partition);
                let epoch = shard.leader_epoch;
                tokio::task::spawn_blocking(move || {
                    rm.append_in_epoch(&partition, &bytes, -1, Some(epoch))
                })
                .await
                .map_err(|e| {
                    ApiError::new(ErrorCode::UnknownServerError, format!("append task: {e}"))
                })
                .and_then(|r| r.map_err(|(e, _)| e))
            }
            Err(e) => Err(e),
        };
        match appended {
            Ok(a) if a.leader_epoch == shard.leader_epoch => {
                st.written_end = a.info.last_offset + 1;
                Ok(())
            }
            other => {
                st.failed = true;
                let e = match other {
                    Err(e) => e,
                    Ok(a) => ApiError::new(
                        ErrorCode::NotLeaderOrFollower,
                        format!(
                            "appended in leader epoch {} instead of {}",
                            a.leader_epoch, shard.leader_epoch
                        ),
                    ),
                };
                tracing::warn!(partition = shard.index, error = %e, "a group write failed; the shard will be reloaded");
                let mut shards = self.shards.lock();
                if let Some(Slot::Active(s)) = shards.get(&shard.index)
                    && Arc::ptr_eq(s, shard)
                {
                    shards.remove(&shard.index);
                    shard.cancel.cancel();
                }
                drop(shards);
                self.reload.notify_one();
                Err(coordinator_error(e))
            }
        }
    }

    /// Waits until everything below `end` is durable and on every in-sync replica.
    async fn wait_committed(&self, shard: &Shard, end: i64) -> Result<(), ApiError> {
        // The high watermark first, then the epoch (as `replicated_now`): a broker that lost
        // leadership may already hold a follower's high watermark over other data at these
        // offsets, but that is set only after the new leader and epoch are.
        let hw = shard.partition.high_watermark();
        if shard.partition.leader_and_epoch() != (self.node_id, shard.leader_epoch) {
            return Err(coordinator_error(ApiError::new(
                ErrorCode::NotLeaderOrFollower,
                format!(
                    "{OFFSETS_TOPIC}-{} changed leader before the group's write was committed; it may or may not survive",
                    shard.index
                ),
            )));
        }
        if hw >= end {
            return Ok(());
        }
        if self.flush_policy == FlushPolicy::Commit {
            let rm = Arc::clone(&self.rm);
            let partition = Arc::clone(&shard.partition);
            tokio::task::spawn_blocking(move || rm.make_durable(&partition, end))
                .await
                .map_err(|e| {
                    ApiError::new(ErrorCode::UnknownServerError, format!("fsync task: {e}"))
                })?
                .map_err(coordinator_error)?;
        }
        self.rm
            .wait_replicated(
                &shard.partition,
                end,
                shard.leader_epoch,
                Duration::from_millis(self.config.offsets_commit_timeout_ms),
            )
            .await
            .map_err(coordinator_error)
    }

    /// Refuses to serve a shard that failed, was dropped, or whose partition moved on to
    /// another leader or leader epoch.
    fn check_serving(&self, shard: &Shard, st: &ShardState) -> Result<(), ApiError> {
        if st.failed
            || shard.cancel.is_cancelled()
            || shard.partition.leader_and_epoch() != (self.node_id, shard.leader_epoch)
        {
            return Err(ApiError::new(
                ErrorCode::NotCoordinator,
                format!(
                    "broker {} no longer coordinates the groups of {OFFSETS_TOPIC}-{} in leader epoch {}; ask FindCoordinator again",
                    self.node_id, shard.index, shard.leader_epoch
                ),
            ));
        }
        Ok(())
    }

    /// Runs a request that may change the shard; answers once its records are committed.
    async fn write<T>(
        &self,
        shard: &Arc<Shard>,
        op: impl FnOnce(&mut GroupCoordinatorShard, &MetadataImage, i64) -> CoordinatorResult<T>,
    ) -> Result<T, ApiError> {
        let mut st = shard.state.lock().await;
        self.check_serving(shard, &st)?;
        // A write that cannot be appended would leave records in the shard that the log does not
        // have (a reload follows): refuse what is known to fail before anything changes.
        let isr = shard.partition.state().isr;
        let min_isr = self.rm.min_isr(OFFSETS_TOPIC);
        if isr.len() < min_isr {
            st.isr_short = true;
            return Err(ApiError::new(
                ErrorCode::CoordinatorNotAvailable,
                format!(
                    "{OFFSETS_TOPIC}-{} has {} in-sync replica(s) {isr:?}, fewer than its min.insync.replicas = {min_isr}; retry",
                    shard.index,
                    isr.len()
                ),
            ));
        }
        if st.isr_short {
            // Heartbeats were refused meanwhile (as everything else): without a full session
            // from now, every member would be fenced by the next timer pass (Kafka's
            // heartbeats append nothing and go on; rill's refuse before knowing).
            st.isr_short = false;
            tracing::info!(
                partition = shard.index,
                "{OFFSETS_TOPIC} in sync again; every member gets a full session"
            );
            st.shard.restart_sessions(now_ms());
        }
        let image = self.rm.image();
        let result = op(&mut st.shard, &image, now_ms());
        let deliveries = st.shard.take_classic_deliveries();
        let appended = self.append(shard, &mut st, &result.records).await;
        let end = st.written_end;
        drop(st);
        let committed = match appended {
            Ok(()) => self.wait_committed(shard, end).await,
            Err(e) => Err(e),
        };
        // Held classic answers go out once what decided them is committed; when it is not,
        // their waiters are dropped and answer COORDINATOR_NOT_AVAILABLE (the clients retry).
        let mut waiters = self.waiters.lock();
        for (id, answer) in deliveries {
            if let Some(tx) = waiters.remove(&id)
                && committed.is_ok()
            {
                let _ = tx.send(answer);
            }
        }
        drop(waiters);
        committed?;
        Ok(result.response)
    }

    /// Runs a classic JoinGroup or SyncGroup: registers a waiter, runs `op` with its id, and
    /// waits for the answer (held until the rebalance gets that far), the shard going away, or
    /// `wait` passing. `Err` is what to answer instead.
    async fn classic_wait(
        &self,
        group_id: &str,
        wait: Duration,
        op: impl FnOnce(&mut GroupCoordinatorShard, WaiterId, i64) -> CoordinatorResult<()>,
    ) -> Result<ClassicAnswer, ApiError> {
        self.check_group_id(group_id)?;
        let shard = self.shard_of(group_id)?;
        let id = self
            .next_waiter
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiters.lock().insert(id, tx);
        let _guard = WaiterGuard {
            waiters: &self.waiters,
            id,
        };
        self.write(&shard, |s, _, now| op(s, id, now)).await?;
        tokio::select! {
            answer = rx => answer.map_err(|_| ApiError::new(
                ErrorCode::CoordinatorNotAvailable,
                "the group's state could not be written; retry",
            )),
            _ = shard.cancel.cancelled() => Err(ApiError::new(
                ErrorCode::NotCoordinator,
                format!("broker {} stopped coordinating group {group_id:?}; ask FindCoordinator again", self.node_id),
            )),
            _ = tokio::time::sleep(wait) => Err(ApiError::new(
                ErrorCode::RebalanceInProgress,
                "the rebalance did not complete in time; join again",
            )),
        }
    }

    /// JoinGroup (classic groups): answered when the rebalance completes.
    pub async fn join_group(&self, request: JoinGroupRequest) -> JoinGroupResponse {
        let group_id = request.group_id.clone();
        let member_id = request.member_id.clone();
        let wait = Duration::from_millis(
            u64::try_from(request.rebalance_timeout_ms.max(request.session_timeout_ms))
                .unwrap_or(0)
                + self.config.shard.classic_initial_rebalance_delay_ms.max(0) as u64,
        ) + CLASSIC_WAIT_SLACK;
        let answer = self
            .classic_wait(&group_id, wait, |s, id, now| {
                s.classic_join_group(request, id, now)
            })
            .await;
        match answer {
            Ok(ClassicAnswer::Join(a)) => a,
            Ok(ClassicAnswer::Sync(_)) => JoinGroupResponse {
                error_code: ErrorCode::UnknownServerError as i16,
                generation_id: -1,
                member_id,
                ..Default::default()
            },
            Err(e) => {
                tracing::debug!(group = %group_id, error = %e.message, "JoinGroup failed");
                JoinGroupResponse {
                    error_code: e.code as i16,
                    generation_id: -1,
                    member_id,
                    ..Default::default()
                }
            }
        }
    }

    /// SyncGroup (classic groups): answered once the leader's assignment is in.
    pub async fn sync_group(&self, request: SyncGroupRequest) -> SyncGroupResponse {
        let group_id = request.group_id.clone();
        let wait =
            Duration::from_millis(self.config.shard.classic_max_session_timeout_ms.max(0) as u64)
                + CLASSIC_WAIT_SLACK;
        let answer = self
            .classic_wait(&group_id, wait, |s, id, now| {
                s.classic_sync_group(request, id, now)
            })
            .await;
        match answer {
            Ok(ClassicAnswer::Sync(a)) => a,
            Ok(ClassicAnswer::Join(_)) => SyncGroupResponse {
                error_code: ErrorCode::UnknownServerError as i16,
                ..Default::default()
            },
            Err(e) => {
                tracing::debug!(group = %group_id, error = %e.message, "SyncGroup failed");
                SyncGroupResponse {
                    error_code: e.code as i16,
                    ..Default::default()
                }
            }
        }
    }

    /// Heartbeat (classic groups): Kafka's error code.
    pub async fn heartbeat(&self, request: HeartbeatRequest) -> i16 {
        let result = match self
            .check_group_id(&request.group_id)
            .and_then(|()| self.shard_of(&request.group_id))
        {
            Ok(shard) => {
                self.write(&shard, |s, _, now| CoordinatorResult {
                    records: Vec::new(),
                    response: s.classic_heartbeat(&request, now),
                })
                .await
            }
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| e.code as i16)
    }

    /// DescribeGroups over Kafka's classic admin API (see
    /// [`GroupCoordinatorShard::classic_describe`]).
    pub async fn classic_describe_groups(
        &self,
        group_ids: Vec<String>,
        not_found_error: bool,
    ) -> Vec<rill_group_coordinator::classic_group::ClassicDescription> {
        let mut out = Vec::with_capacity(group_ids.len());
        for group_id in group_ids {
            let described = match self
                .check_group_id(&group_id)
                .and_then(|()| self.shard_of(&group_id))
            {
                Ok(shard) => {
                    self.read(&shard, |s| s.classic_describe(&group_id, not_found_error))
                        .await
                }
                Err(e) => Err(e),
            };
            out.push(described.unwrap_or_else(|e| {
                rill_group_coordinator::classic_group::ClassicDescription {
                    error_code: e.code as i16,
                    error_message: Some(e.message),
                    group_id,
                    state: "Dead".into(),
                    ..Default::default()
                }
            }));
        }
        out
    }

    /// LeaveGroup (classic groups).
    pub async fn leave_group(&self, request: LeaveGroupRequest) -> LeaveGroupResponse {
        let result = match self
            .check_group_id(&request.group_id)
            .and_then(|()| self.shard_of(&request.group_id))
        {
            Ok(shard) => {
                self.write(&shard, |s, _, now| s.classic_leave_group(&request, now))
                    .await
            }
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| LeaveGroupResponse {
            error_code: e.code as i16,
            members: Vec::new(),
        })
    }

    /// Runs a read of the shard; answers once what it read is committed.
    async fn read<T>(
        &self,
        shard: &Arc<Shard>,
        op: impl FnOnce(&GroupCoordinatorShard) -> T,
    ) -> Result<T, ApiError> {
        let st = shard.state.lock().await;
        self.check_serving(shard, &st)?;
        let response = op(&st.shard);
        let end = st.written_end;
        drop(st);
        self.wait_committed(shard, end).await?;
        Ok(response)
    }

    /// Creates `__consumer_offsets` (compacted) unless it exists, and waits until this broker's
    /// metadata has it.
    async fn ensure_offsets_topic(&self) -> Result<(), ApiError> {
        if self.rm.image().topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        let _one_at_a_time = self.creating.lock().await;
        if self.rm.image().topics.contains_key(OFFSETS_TOPIC) {
            return Ok(());
        }
        let request = CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: OFFSETS_TOPIC.into(),
                num_partitions: self.config.offsets_topic_num_partitions,
                replication_factor: self.config.offsets_topic_replication_factor.into(),
                configs: vec![
                    ConfigEntry {
                        name: "cleanup.policy".into(),
                        value: Some("compact".into()),
                    },
                    ConfigEntry {
                        name: "segment.bytes".into(),
                        value: Some(self.config.offsets_topic_segment_bytes.to_string()),
                    },
                ],
            }],
            validate_only: false,
        };
        let response = self
            .controllers
            .call(Duration::from_secs(10), |mut c| {
                let request = request.clone();
                async move { c.create_topics(request).await }
            })
            .await
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::CoordinatorNotAvailable,
                    format!("could not create {OFFSETS_TOPIC}: {}", e.message),
                )
            })?;
        if let Some(r) = response.topics.first() {
            let code = ErrorCode::try_from(r.error_code).unwrap_or(ErrorCode::UnknownServerError);
            if !code.is_ok() && code != ErrorCode::TopicAlreadyExists {
                return Err(ApiError::new(
                    ErrorCode::CoordinatorNotAvailable,
                    format!(
                        "could not create {OFFSETS_TOPIC} ({} partitions, replication factor {} from offsets.topic.*): {}",
                        self.config.offsets_topic_num_partitions,
                        self.config.offsets_topic_replication_factor,
                        r.error_message
                    ),
                ));
            }
        }
        let mut updates = self.rm.subscribe_metadata();
        let appeared = tokio::time::timeout(Duration::from_secs(10), async {
            while !self.rm.image().topics.contains_key(OFFSETS_TOPIC) {
                if updates.changed().await.is_err() {
                    break;
                }
            }
        })
        .await;
        if appeared.is_err() || !self.rm.image().topics.contains_key(OFFSETS_TOPIC) {
            return Err(ApiError::new(
                ErrorCode::CoordinatorNotAvailable,
                format!("{OFFSETS_TOPIC} is being created; retry shortly"),
            ));
        }
        Ok(())
    }

    fn check_group_id(&self, group_id: &str) -> Result<(), ApiError> {
        if group_id.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidGroupId,
                "the group id is empty; set group.id",
            ));
        }
        let max = self.config.shard.max_group_id_length;
        if group_id.len() > max {
            return Err(ApiError::new(
                ErrorCode::InvalidGroupId,
                format!(
                    "the group id is {} bytes long; at most {max} (group.id.max.length) are allowed",
                    group_id.len()
                ),
            ));
        }
        Ok(())
    }

    /// FindCoordinator: the leader of each group's `__consumer_offsets` partition.
    pub async fn find_coordinator(&self, keys: Vec<String>) -> FindCoordinatorResponse {
        let created = self.ensure_offsets_topic().await;
        let image = self.rm.image();
        let coordinators = keys
            .into_iter()
            .map(|key| {
                let mut c = Coordinator {
                    key,
                    node_id: -1,
                    ..Default::default()
                };
                let found = self
                    .check_group_id(&c.key)
                    .and_then(|()| created.clone())
                    .and_then(|()| self.locate(&image, &c.key));
                match found {
                    Ok((node_id, host, port)) => {
                        c.node_id = node_id;
                        c.host = host;
                        c.port = port;
                    }
                    Err(e) => {
                        c.error_code = e.code as i32;
                        c.error_message = e.message;
                    }
                }
                c
            })
            .collect();
        FindCoordinatorResponse { coordinators }
    }

    fn locate(
        &self,
        image: &MetadataImage,
        group_id: &str,
    ) -> Result<(i32, String, u32), ApiError> {
        let unavailable = |why: String| ApiError::new(ErrorCode::CoordinatorNotAvailable, why);
        let topic = image.topics.get(OFFSETS_TOPIC).ok_or_else(|| {
            unavailable(format!("{OFFSETS_TOPIC} is being created; retry shortly"))
        })?;
        let index = partition_for(group_id, topic.partitions.len() as i32);
        let leader = topic
            .partitions
            .get(index as usize)
            .map_or(-1, |p| p.leader);
        let endpoint = image
            .brokers
            .get(&leader)
            .filter(|b| !b.fenced)
            .and_then(|b| b.endpoints.first())
            .ok_or_else(|| {
                unavailable(format!(
                    "{OFFSETS_TOPIC}-{index}, which holds group {group_id:?}, has no available leader (broker {leader}); retry shortly"
                ))
            })?;
        Ok((leader, endpoint.host.clone(), endpoint.port))
    }

    /// ConsumerGroupHeartbeat.
    pub async fn consumer_group_heartbeat(
        &self,
        request: ConsumerGroupHeartbeatRequest,
        client_host: String,
    ) -> ConsumerGroupHeartbeatResponse {
        let group_id = request.group_id.clone();
        let result = match self
            .check_group_id(&group_id)
            .and_then(|()| self.shard_of(&group_id))
        {
            Ok(shard) => {
                self.write(&shard, |s, image, now| {
                    s.consumer_group_heartbeat(request, &client_host, image, now)
                })
                .await
            }
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| ConsumerGroupHeartbeatResponse {
            error_code: e.code as i32,
            error_message: e.message,
            ..Default::default()
        })
    }

    /// OffsetCommit.
    pub async fn offset_commit(&self, request: OffsetCommitRequest) -> OffsetCommitResponse {
        let group_id = request.group_id.clone();
        let topics: Vec<(String, Vec<i32>)> = request
            .topics
            .iter()
            .map(|t| {
                (
                    t.name.clone(),
                    t.partitions.iter().map(|p| p.index).collect(),
                )
            })
            .collect();
        let result = match self
            .check_group_id(&group_id)
            .and_then(|()| self.shard_of(&group_id))
        {
            Ok(shard) => {
                self.write(&shard, |s, image, now| s.offset_commit(request, image, now))
                    .await
            }
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| OffsetCommitResponse {
            topics: topics
                .into_iter()
                .map(|(name, partitions)| OffsetCommitTopicResponse {
                    name,
                    partitions: partitions
                        .into_iter()
                        .map(|index| OffsetCommitPartitionResponse {
                            index,
                            error_code: e.code as i32,
                            error_message: e.message.clone(),
                        })
                        .collect(),
                })
                .collect(),
        })
    }

    /// OffsetFetch.
    pub async fn offset_fetch(&self, request: OffsetFetchRequest) -> OffsetFetchResponse {
        let result = match self
            .check_group_id(&request.group_id)
            .and_then(|()| self.shard_of(&request.group_id))
        {
            Ok(shard) => self.read(&shard, |s| s.offset_fetch(&request)).await,
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| OffsetFetchResponse {
            error_code: e.code as i32,
            error_message: e.message,
            topics: Vec::new(),
        })
    }

    /// ListGroups: the groups of every shard this broker serves.
    pub async fn list_groups(&self, request: ListGroupsRequest) -> ListGroupsResponse {
        let mut groups = Vec::new();
        for shard in self.active_shards() {
            match self
                .read(&shard, |s| s.list_groups(&request.states_filter))
                .await
            {
                Ok(found) => groups.extend(found.into_iter().map(|mut g| {
                    g.coordinator_id = self.node_id;
                    g
                })),
                Err(e) => {
                    return ListGroupsResponse {
                        error_code: e.code as i32,
                        error_message: e.message,
                        groups: Vec::new(),
                    };
                }
            }
        }
        groups.sort_by(|a, b| a.group_id.cmp(&b.group_id));
        let loading = self
            .shards
            .lock()
            .values()
            .any(|s| matches!(s, Slot::Loading { .. }));
        if loading {
            return ListGroupsResponse {
                error_code: ErrorCode::CoordinatorLoadInProgress as i32,
                error_message: format!(
                    "broker {} is still loading some {OFFSETS_TOPIC} partitions; retry shortly",
                    self.node_id
                ),
                groups,
            };
        }
        ListGroupsResponse {
            groups,
            ..Default::default()
        }
    }

    /// DescribeGroups.
    pub async fn describe_groups(&self, request: DescribeGroupsRequest) -> DescribeGroupsResponse {
        let mut groups = Vec::new();
        for group_id in request.group_ids {
            let described = match self
                .check_group_id(&group_id)
                .and_then(|()| self.shard_of(&group_id))
            {
                Ok(shard) => self.read(&shard, |s| s.describe_group(&group_id)).await,
                Err(e) => Err(e),
            };
            groups.push(described.unwrap_or_else(|e| DescribedGroup {
                error_code: e.code as i32,
                error_message: e.message,
                group_id,
                ..Default::default()
            }));
        }
        DescribeGroupsResponse { groups }
    }

    /// DeleteGroups.
    pub async fn delete_groups(&self, request: DeleteGroupsRequest) -> DeleteGroupsResponse {
        let mut results = Vec::new();
        for group_id in request.group_ids {
            let deleted = match self
                .check_group_id(&group_id)
                .and_then(|()| self.shard_of(&group_id))
            {
                Ok(shard) => {
                    let ids = [group_id.clone()];
                    self.write(&shard, |s, _, _| s.delete_groups(&ids)).await
                }
                Err(e) => Err(e),
            };
            match deleted {
                Ok(r) => results.extend(r),
                Err(e) => results.push(DeletableGroupResult {
                    group_id,
                    error_code: e.code as i32,
                    error_message: e.message,
                }),
            }
        }
        DeleteGroupsResponse { results }
    }

    /// OffsetDelete.
    pub async fn offset_delete(&self, request: OffsetDeleteRequest) -> OffsetDeleteResponse {
        let result = match self
            .check_group_id(&request.group_id)
            .and_then(|()| self.shard_of(&request.group_id))
        {
            Ok(shard) => self.write(&shard, |s, _, _| s.offset_delete(request)).await,
            Err(e) => Err(e),
        };
        result.unwrap_or_else(|e| OffsetDeleteResponse {
            error_code: e.code as i32,
            error_message: e.message,
            topics: Vec::new(),
        })
    }
}

/// Replays a partition from its log start to its log end (blocking): the shard, the log end,
/// and how many records were replayed.
fn replay_partition(
    partition: &Partition,
    config: rill_group_coordinator::GroupConfig,
) -> Result<(GroupCoordinatorShard, i64, usize), String> {
    let mut shard = GroupCoordinatorShard::new(config);
    let (mut offset, end) = {
        let log = partition.log.read();
        (log.log_start_offset(), log.log_end_offset())
    };
    let mut count = 0;
    while offset < end {
        let chunk = partition
            .log
            .read()
            .read(offset, 4 << 20, Some(end), true)
            .map_err(|e| format!("reading {} at offset {offset}: {e}", partition.tp))?;
        let Some(bytes) = chunk else { break };
        let before = offset;
        for batch in batches(&bytes) {
            let batch = batch.map_err(|e| format!("{} at offset {offset}: {e}", partition.tp))?;
            let header = *batch.header();
            if header.next_offset() <= offset {
                continue;
            }
            if !header.is_control() {
                let records = batch
                    .records(64 << 20)
                    .map_err(|e| format!("{} at offset {offset}: {e}", partition.tp))?;
                for record in records.iter() {
                    let record =
                        record.map_err(|e| format!("{} at offset {offset}: {e}", partition.tp))?;
                    if record.offset < offset || record.offset >= end {
                        continue;
                    }
                    let Some(key) = record.key else { continue };
                    let r = Record {
                        key: Bytes::copy_from_slice(key),
                        value: record.value.map(Bytes::copy_from_slice),
                    };
                    if let Err(e) = shard.replay(&r) {
                        tracing::error!(partition = %partition.tp, offset = record.offset, error = %e, "skipping an undecodable group record");
                    }
                    count += 1;
                }
            }
            offset = header.next_offset();
        }
        if offset == before {
            break;
        }
    }
    Ok((shard, end, count))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Group records go in batches no larger than the limit given (a broker with a small
    /// `message.max.bytes` refused the fixed 512 KiB batches, and a shard whose load wrote
    /// that much could never load).
    #[test]
    fn group_records_are_batched_within_the_limit() {
        let records: Vec<Record> = (0..600)
            .map(|i| Record {
                key: Bytes::from(format!("key-{i}")),
                value: Some(Bytes::from(vec![b'v'; 1000])),
            })
            .collect();
        let limit = 100_000;
        let bytes = encode(&records, 1_000, limit).unwrap();
        let mut count = 0;
        let mut n = 0;
        for b in batches(&bytes) {
            let b = b.unwrap();
            assert!(b.as_bytes().len() <= limit + 1024, "{}", b.as_bytes().len());
            n += b.records(usize::MAX).unwrap().iter().count();
            count += 1;
        }
        assert_eq!(n, 600, "every record, once");
        assert!(count >= 6, "{count} batches");
    }
}
