//! One partition hosted by this broker (Kafka's `Partition`): its log, its leader/ISR state
//! from the metadata log, and its high watermark, kept together so that a leadership check and
//! the append it guards cannot disagree (the state lock is held across the append).
//!
//! As leader, the partition tracks each follower's fetch position and when it was last caught
//! up; the high watermark is the lowest log end offset over the ISR — where the leader's own end
//! is its fsynced offset under `log.flush.policy=commit` (followers likewise report only what
//! they fsynced), so everything below the high watermark is on disk on every in-sync replica.
//! ISR changes go to the controller as AlterPartition with the partition epoch; while one is in
//! flight the high watermark counts the larger of the two ISRs (Kafka's "maximal ISR"), so it
//! never moves on the strength of a replica that is leaving.
//!
//! As follower, the partition is fed by a replica fetcher; its high watermark is the leader's,
//! capped at its own log end.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};
use rill_protocol::{ApiError, ErrorCode};
use rill_storage::{
    GroupCommit, Log, LogAppendInfo, LogConfig, LogError, SharedLog, TopicPartition,
};
use tokio::sync::watch;

use crate::config::FlushPolicy;

/// Leadership state of a partition, from the metadata image.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LeaderState {
    /// Leader broker, -1 when offline.
    pub leader: i32,
    /// Current leader epoch.
    pub leader_epoch: i32,
    /// Bumped by the controller on every change of this partition (AlterPartition checks it).
    pub partition_epoch: i32,
    /// Every replica, preferred leader first.
    pub replicas: Vec<i32>,
    /// The in-sync replicas the controller committed (acks=all and leader election use them).
    pub isr: Vec<i32>,
}

/// What applying new metadata to a partition means for this broker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Transition {
    /// This broker leads the partition from now on (a new leader epoch).
    BecameLeader,
    /// This broker follows `leader` (a new leader or leader epoch); -1 when there is none.
    BecameFollower {
        /// The broker to fetch from.
        leader: i32,
        /// Its leader epoch.
        leader_epoch: i32,
    },
    /// Same role, same leader epoch.
    Unchanged,
}

/// A follower's replication progress, as the leader sees it.
#[derive(Clone, Debug)]
struct FollowerState {
    /// The offset it asked for in its last fetch (everything below is on its disk), -1 before
    /// its first fetch in this leader epoch.
    log_end_offset: i64,
    /// The last time it had everything the leader had.
    last_caught_up: Instant,
    /// When its previous fetch came, and the leader's log end offset then.
    last_fetch: Instant,
    leader_end_at_last_fetch: i64,
}

#[derive(Debug)]
struct Inner {
    state: LeaderState,
    followers: HashMap<i32, FollowerState>,
    /// An ISR change sent to the controller and not yet seen in the metadata.
    pending_isr: Option<Vec<i32>>,
    /// Leader: the log end offset when this leader epoch began. A follower joins the ISR only
    /// once it has everything up to here (KAFKA-7128: the new leader's high watermark may lag
    /// what the previous leader acknowledged).
    epoch_start_offset: i64,
}

/// A lock that a caller which must not wait (an async task: writers hold these locks across
/// disk writes, a segment roll's fsyncs, compaction) found taken; it did nothing and should go
/// on where waiting is fine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Busy;

/// What [`Partition::record_follower_fetch`] found.
#[derive(Debug)]
pub(crate) struct FollowerFetchRecorded {
    /// The ISR to propose: the follower caught up and is not in it (expansion).
    pub isr_change: Option<IsrChange>,
    /// Whether the follower is in the ISR or joining it (it then holds back the high
    /// watermark, and is never throttled).
    pub in_maximal_isr: bool,
}

/// A partition hosted here.
pub struct Partition {
    /// Topic and index.
    pub tp: TopicPartition,
    /// The topic id the local data belongs to.
    pub topic_id: String,
    /// The partition's commit log (its lock is taken after the state lock, never before).
    pub log: SharedLog,
    /// The log dir holding the log (a failure there takes this partition offline).
    pub(crate) log_dir: PathBuf,
    node_id: i32,
    flush_policy: FlushPolicy,
    group_commit: Arc<GroupCommit>,
    inner: RwLock<Inner>,
    pub(crate) config: RwLock<LogConfig>,
    high_watermark: AtomicI64,
    /// (leader, leader epoch) packed, readable without the state lock (async waiters must not
    /// queue behind an append holding it across disk writes).
    leader_and_epoch: AtomicI64,
    /// Watchers of this partition's log end (followers' fetches long-poll on it).
    log_end_watch: watch::Sender<i64>,
    /// Watchers of this partition's high watermark (acks=all waits here: Kafka's DelayedProduce,
    /// keyed by partition).
    hw_watch: watch::Sender<i64>,
}

/// Whether `replica` is in the ISR or in the one being proposed (Kafka's maximal ISR).
fn maximal_isr_contains(inner: &Inner, replica: i32) -> bool {
    inner.state.isr.contains(&replica)
        || inner
            .pending_isr
            .as_ref()
            .is_some_and(|p| p.contains(&replica))
}

fn pack(leader: i32, epoch: i32) -> i64 {
    (i64::from(leader) << 32) | i64::from(epoch as u32)
}

fn unpack(v: i64) -> (i32, i32) {
    ((v >> 32) as i32, v as i32)
}

impl Partition {
    /// A partition over an opened log, starting at high watermark `hw`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        tp: TopicPartition,
        topic_id: String,
        log: SharedLog,
        log_dir: PathBuf,
        node_id: i32,
        flush_policy: FlushPolicy,
        config: LogConfig,
        hw: i64,
    ) -> Self {
        let group_commit = log.read().group_commit();
        let (hw_watch, _) = watch::channel(hw);
        let (log_end_watch, _) = watch::channel(0);
        Partition {
            tp,
            topic_id,
            log,
            log_dir,
            node_id,
            flush_policy,
            group_commit,
            inner: RwLock::new(Inner {
                state: LeaderState {
                    leader: -1,
                    leader_epoch: -1,
                    ..Default::default()
                },
                followers: HashMap::new(),
                pending_isr: None,
                epoch_start_offset: -1,
            }),
            leader_and_epoch: AtomicI64::new(pack(-1, -1)),
            config: RwLock::new(config),
            high_watermark: AtomicI64::new(hw),
            hw_watch,
            log_end_watch,
        }
    }

    /// This broker's id.
    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// A copy of the leader/ISR state as last applied from the metadata.
    pub fn state(&self) -> LeaderState {
        self.inner.read().state.clone()
    }

    /// [`Partition::state`], or with `no_wait` `Err(Busy)` when an append holds the state.
    pub fn state_no_wait(&self, no_wait: bool) -> Result<LeaderState, Busy> {
        Ok(self.inner_read(no_wait)?.state.clone())
    }

    fn inner_read(&self, no_wait: bool) -> Result<RwLockReadGuard<'_, Inner>, Busy> {
        if no_wait {
            self.inner.try_read().ok_or(Busy)
        } else {
            Ok(self.inner.read())
        }
    }

    fn inner_write(&self, no_wait: bool) -> Result<RwLockWriteGuard<'_, Inner>, Busy> {
        if no_wait {
            self.inner.try_write().ok_or(Busy)
        } else {
            Ok(self.inner.write())
        }
    }

    /// The log for reading; with `no_wait` only if no writer holds it.
    pub fn log_read(&self, no_wait: bool) -> Result<RwLockReadGuard<'_, Log>, Busy> {
        if no_wait {
            self.log.try_read().ok_or(Busy)
        } else {
            Ok(self.log.read())
        }
    }

    /// True when this broker leads the partition.
    pub fn is_leader(&self) -> bool {
        self.leader_and_epoch().0 == self.node_id
    }

    /// (leader, leader epoch) without taking the state lock.
    pub fn leader_and_epoch(&self) -> (i32, i32) {
        unpack(self.leader_and_epoch.load(Ordering::Acquire))
    }

    /// The high watermark.
    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    /// Watches the log end: a leader's append wakes the followers' parked fetches.
    pub fn subscribe_log_end(&self) -> watch::Receiver<i64> {
        self.log_end_watch.subscribe()
    }

    /// Watches the high watermark (acks=all waits on it).
    pub fn subscribe_hw(&self) -> watch::Receiver<i64> {
        self.hw_watch.subscribe()
    }

    /// The group-commit handle of the log.
    pub(crate) fn group_commit(&self) -> &Arc<GroupCommit> {
        &self.group_commit
    }

    /// The log end offset.
    pub fn log_end_offset(&self) -> i64 {
        self.log.read().log_end_offset()
    }

    /// Applies the partition's state from new metadata and says what changed for this broker
    /// (Kafka's `makeLeader` / `makeFollower`).
    pub fn update_state(&self, new: LeaderState) -> Transition {
        let transition = self.apply_state(new);
        // Waiting acks=all produces re-check their leader epoch (Kafka completes delayed
        // produces on a leadership change rather than letting them time out). Notified after
        // the partition's lock is released: a waiter may hold the watch while taking it.
        self.hw_watch.send_modify(|_| {});
        transition
    }

    fn apply_state(&self, new: LeaderState) -> Transition {
        let mut inner = self.inner.write();
        let old = std::mem::replace(&mut inner.state, new.clone());
        self.leader_and_epoch
            .store(pack(new.leader, new.leader_epoch), Ordering::Release);
        if new.partition_epoch != old.partition_epoch {
            // Whatever ISR change was in flight was decided (accepted or superseded).
            inner.pending_isr = None;
        }
        let new_epoch = new.leader_epoch != old.leader_epoch || new.leader != old.leader;
        if new.leader == self.node_id {
            if !new_epoch {
                // Same epoch, maybe another replica set (a reassignment adds or removes
                // replicas): track the new followers from scratch, forget the removed ones.
                let now = Instant::now();
                let long_ago = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
                let node = self.node_id;
                inner.followers.retain(|r, _| new.replicas.contains(r));
                for r in new.replicas.iter().filter(|r| **r != node) {
                    inner.followers.entry(*r).or_insert(FollowerState {
                        log_end_offset: -1,
                        last_caught_up: long_ago,
                        last_fetch: long_ago,
                        leader_end_at_last_fetch: -1,
                    });
                }
                drop(inner);
                // A smaller ISR (a follower removed, in the same epoch) may let the high
                // watermark move with no write or fetch to trigger it.
                self.maybe_increment_hw();
                return Transition::Unchanged;
            }
            // A new leader epoch: follower positions are unknown until they fetch again; those
            // in the ISR count as caught up now (they were when the controller chose them).
            let now = Instant::now();
            let long_ago = now.checked_sub(Duration::from_secs(3600)).unwrap_or(now);
            inner.epoch_start_offset = self.log.read().log_end_offset();
            inner.followers = new
                .replicas
                .iter()
                .filter(|r| **r != self.node_id)
                .map(|r| {
                    let caught_up = if new.isr.contains(r) { now } else { long_ago };
                    (
                        *r,
                        FollowerState {
                            log_end_offset: -1,
                            last_caught_up: caught_up,
                            last_fetch: caught_up,
                            leader_end_at_last_fetch: -1,
                        },
                    )
                })
                .collect();
            drop(inner);
            // A leader alone in its ISR may move the high watermark at once.
            self.maybe_increment_hw();
            Transition::BecameLeader
        } else {
            inner.followers.clear();
            if new_epoch || old.leader == self.node_id {
                Transition::BecameFollower {
                    leader: new.leader,
                    leader_epoch: new.leader_epoch,
                }
            } else {
                Transition::Unchanged
            }
        }
    }

    /// Appends a producer's batches as leader, holding the state lock across the append so the
    /// epoch stamped on the batches is the one checked. acks=all needs `min.insync.replicas` in
    /// the ISR, checked before anything is written. With `leader_epoch`, only a leader in that
    /// very epoch appends (the group coordinator's shard of one epoch must not write into a
    /// later one's log).
    pub fn append_as_leader(
        &self,
        records: &[u8],
        acks: i32,
        min_isr: usize,
        leader_epoch: Option<i32>,
    ) -> Result<LeaderAppend, PartitionAppendError> {
        let inner = self.inner.read();
        let state = &inner.state;
        if state.leader != self.node_id || leader_epoch.is_some_and(|e| e != state.leader_epoch) {
            return Err(PartitionAppendError::Api(
                ApiError::new(
                    ErrorCode::NotLeaderOrFollower,
                    format!(
                        "broker {} does not lead {} (leader {} in epoch {})",
                        self.node_id, self.tp, state.leader, state.leader_epoch
                    ),
                ),
                Some((state.leader, state.leader_epoch)),
            ));
        }
        if acks == -1 && state.isr.len() < min_isr {
            return Err(PartitionAppendError::Api(
                ApiError::new(
                    ErrorCode::NotEnoughReplicas,
                    format!(
                        "{} has {} in-sync replica(s) {:?}, fewer than min.insync.replicas = {min_isr}; nothing was written",
                        self.tp,
                        state.isr.len(),
                        state.isr
                    ),
                ),
                None,
            ));
        }
        let mut buf = BytesMut::from(records);
        let mut log = self.log.write();
        let info = log
            .append_as_leader(&mut buf, state.leader_epoch)
            .map_err(PartitionAppendError::Log)?;
        if self.flush_policy == FlushPolicy::Interval {
            // Acknowledged without fsync: at least in the page cache (survives a crash of this
            // process), fsynced here once `flush.messages` records wait (as Kafka's append).
            // Under `commit` group commit's fsync writes it out.
            log.write_out().map_err(PartitionAppendError::Log)?;
            if log.flush_messages_due() {
                log.flush().map_err(PartitionAppendError::Log)?;
            }
        }
        self.log_end_watch.send_replace(info.last_offset + 1);
        Ok(LeaderAppend {
            info,
            leader_epoch: state.leader_epoch,
        })
    }

    /// What this broker itself holds safely: the fsynced offset under `commit`, the log end
    /// under `interval`.
    fn local_end(&self) -> i64 {
        match self.local_end_no_wait(false) {
            Ok(end) => end,
            Err(Busy) => unreachable!("a waiting read is never busy"),
        }
    }

    fn local_end_no_wait(&self, no_wait: bool) -> Result<i64, Busy> {
        Ok(match self.flush_policy {
            // Group commit's lock is never held across an fsync.
            FlushPolicy::Commit => self.group_commit.durable_offset(),
            FlushPolicy::Interval => self.log_read(no_wait)?.log_end_offset(),
        })
    }

    /// Leader: moves the high watermark to the lowest end over the (maximal) ISR, if that is
    /// higher. Returns true when it moved.
    pub fn maybe_increment_hw(&self) -> bool {
        let inner = self.inner.read();
        let moved = self.increment_hw_locked(&inner, self.local_end());
        drop(inner);
        self.notify_hw(moved)
    }

    /// The high watermark raise of [`Partition::maybe_increment_hw`], under the state lock the
    /// caller holds (read or write), with `local_end` the leader's own end read in the epoch the
    /// lock shows (under it, or just before it in that same epoch: a leader never truncates its
    /// own log, so an end read earlier is only lower). Returns the new high watermark when it
    /// moved; [`Partition::notify_hw`] it after the lock is released.
    fn increment_hw_locked(&self, inner: &Inner, local_end: i64) -> Option<i64> {
        if inner.state.leader != self.node_id {
            return None;
        }
        let mut hw = local_end;
        let maximal = inner
            .state
            .isr
            .iter()
            .chain(inner.pending_isr.iter().flatten());
        for r in maximal {
            if *r == self.node_id {
                continue;
            }
            match inner.followers.get(r) {
                Some(f) if f.log_end_offset >= 0 => hw = hw.min(f.log_end_offset),
                // A replica in the ISR whose position is unknown holds the high watermark.
                _ => return None,
            }
        }
        // Raised under the state lock: a broker that stops leading (`apply_state` takes it for
        // writing) and then truncates never sees this value land after its truncation.
        (self.high_watermark.fetch_max(hw, Ordering::AcqRel) < hw).then_some(hw)
    }

    /// Wakes the high watermark's waiters after a raise (outside the state lock: a waiter may
    /// hold the watch while taking it). The watch only wakes them: they read the high
    /// watermark itself. Returns whether it moved.
    fn notify_hw(&self, moved: Option<i64>) -> bool {
        if let Some(hw) = moved {
            self.hw_watch.send_modify(|v| *v = (*v).max(hw));
        }
        moved.is_some()
    }

    /// Follower: takes the leader's high watermark, capped at the own log end.
    pub(crate) fn set_follower_hw(&self, leader_hw: i64, log_end: i64) {
        let to = leader_hw.min(log_end);
        let prev = self.high_watermark.swap(to, Ordering::AcqRel);
        if prev != to {
            self.hw_watch.send_replace(to);
        }
    }

    /// Leader: records a follower's fetch at `fetch_offset` (everything below is on its disk),
    /// raises the high watermark if that allows, and says whether the ISR should grow. All under
    /// one hold of the state lock, so with `no_wait` it either happens whole or (`Err(Busy)`,
    /// the lock or the log being held) not at all. `may_join_as`: the follower's registration
    /// epoch when it may join the ISR (KIP-903: the change names it), `None` when it may not.
    pub(crate) fn record_follower_fetch(
        &self,
        replica: i32,
        leader_epoch: i32,
        fetch_offset: i64,
        leader_end: i64,
        may_join_as: Option<i64>,
        no_wait: bool,
    ) -> Result<FollowerFetchRecorded, Busy> {
        let now = Instant::now();
        // Read first, outside the state lock (not held while waiting for the log); an end
        // read a moment early only raises the high watermark less.
        let local_end = self.local_end_no_wait(no_wait)?;
        let mut inner = self.inner_write(no_wait)?;
        let mut recorded = FollowerFetchRecorded {
            isr_change: None,
            in_maximal_isr: false,
        };
        // A position read under another epoch (this broker re-elected meanwhile) means
        // nothing in this one.
        if inner.state.leader != self.node_id || inner.state.leader_epoch != leader_epoch {
            recorded.in_maximal_isr = maximal_isr_contains(&inner, replica);
            return Ok(recorded);
        }
        let Some(f) = inner.followers.get_mut(&replica) else {
            recorded.in_maximal_isr = maximal_isr_contains(&inner, replica);
            return Ok(recorded);
        };
        if fetch_offset >= leader_end {
            f.last_caught_up = now;
        } else if f.leader_end_at_last_fetch >= 0 && fetch_offset >= f.leader_end_at_last_fetch {
            // It has everything the leader had at its previous fetch.
            f.last_caught_up = f.last_caught_up.max(f.last_fetch);
        }
        f.log_end_offset = fetch_offset;
        f.last_fetch = now;
        f.leader_end_at_last_fetch = leader_end;
        let moved = self.increment_hw_locked(&inner, local_end);
        let state = &inner.state;
        recorded.in_maximal_isr = maximal_isr_contains(&inner, replica);
        if let Some(replica_epoch) = may_join_as
            && inner.pending_isr.is_none()
            && !state.isr.contains(&replica)
            && fetch_offset >= self.high_watermark().max(inner.epoch_start_offset)
        {
            let mut isr = state.isr.clone();
            isr.push(replica);
            let mut epochs = vec![-1; state.isr.len()];
            epochs.push(replica_epoch);
            recorded.isr_change = Some(IsrChange {
                tp: self.tp.clone(),
                topic_id: self.topic_id.clone(),
                leader_epoch: state.leader_epoch,
                partition_epoch: state.partition_epoch,
                new_isr: isr,
                new_isr_broker_epochs: epochs,
            });
        }
        drop(inner);
        self.notify_hw(moved);
        Ok(recorded)
    }

    /// Leader: the ISR without followers that have not caught up for `max_lag`, if any lag
    /// (Kafka's `maybeShrinkIsr`).
    pub(crate) fn isr_shrink(&self, max_lag: Duration) -> Option<IsrChange> {
        let now = Instant::now();
        let leader_end = self.log_end_offset();
        let inner = self.inner.read();
        let state = &inner.state;
        if state.leader != self.node_id || inner.pending_isr.is_some() {
            return None;
        }
        let lagging: Vec<i32> = state
            .isr
            .iter()
            .copied()
            .filter(|r| *r != self.node_id)
            .filter(|r| {
                inner.followers.get(r).is_none_or(|f| {
                    f.log_end_offset < leader_end && now.duration_since(f.last_caught_up) > max_lag
                })
            })
            .collect();
        if lagging.is_empty() {
            return None;
        }
        Some(IsrChange {
            tp: self.tp.clone(),
            topic_id: self.topic_id.clone(),
            leader_epoch: state.leader_epoch,
            partition_epoch: state.partition_epoch,
            new_isr: state
                .isr
                .iter()
                .copied()
                .filter(|r| !lagging.contains(r))
                .collect(),
            new_isr_broker_epochs: Vec::new(),
        })
    }

    /// Leader: the log end offset when this leader epoch began (-1 when not leading).
    pub(crate) fn epoch_start_offset(&self) -> i64 {
        self.inner.read().epoch_start_offset
    }

    /// The partition is no longer hosted here (moved away, deleted, its log dir failed): no
    /// append is accepted any more, and acks=all waiters learn it at once.
    pub(crate) fn shut_down(&self) {
        let mut inner = self.inner.write();
        inner.state.leader = -1;
        inner.followers.clear();
        self.leader_and_epoch
            .store(pack(-1, inner.state.leader_epoch), Ordering::Release);
        drop(inner);
        self.hw_watch.send_modify(|_| {});
    }

    /// Leader: records `change` as pending and sends it with `send` (to the controller's
    /// AlterPartition task; it must not wait), under the state lock, so the answer can never
    /// overtake the bookkeeping. Returns false when the state moved on meanwhile or the send
    /// failed (nothing pending); with `no_wait`, `Err(Busy)` (nothing done) when an append
    /// holds the state.
    pub(crate) fn begin_isr_change(
        &self,
        change: &IsrChange,
        no_wait: bool,
        send: impl FnOnce() -> bool,
    ) -> Result<bool, Busy> {
        let mut inner = self.inner_write(no_wait)?;
        if change.leader_epoch != inner.state.leader_epoch
            || change.partition_epoch != inner.state.partition_epoch
            || inner.pending_isr.is_some()
            || !send()
        {
            return Ok(false);
        }
        inner.pending_isr = Some(change.new_isr.clone());
        Ok(true)
    }

    /// Leader: the controller refused `change` (or could not be asked): drop it so it can be
    /// proposed again from fresh state — unless another change is pending by now.
    /// Leader: whether `change` is still the ISR change in flight (nothing decided it yet).
    pub(crate) fn isr_change_pending(&self, change: &IsrChange) -> bool {
        let inner = self.inner.read();
        inner.state.partition_epoch == change.partition_epoch
            && inner.state.leader_epoch == change.leader_epoch
            && inner.state.leader == self.node_id
            && inner.pending_isr.as_ref() == Some(&change.new_isr)
    }

    pub(crate) fn abort_isr_change(&self, change: &IsrChange) {
        let mut inner = self.inner.write();
        if inner.state.partition_epoch == change.partition_epoch
            && inner.pending_isr.as_ref() == Some(&change.new_isr)
        {
            inner.pending_isr = None;
        }
    }

    /// Follower work fenced against role changes: runs `f` under the state lock (shared) only
    /// while this broker follows `leader` in `leader_epoch`, so a late fetch response can never
    /// truncate or append to a log this broker now leads (Kafka serialises fetch processing
    /// with `makeLeader` the same way).
    pub(crate) fn as_follower_of<T>(
        &self,
        leader: i32,
        leader_epoch: i32,
        f: impl FnOnce() -> T,
    ) -> Option<T> {
        let inner = self.inner.read();
        (inner.state.leader == leader
            && inner.state.leader_epoch == leader_epoch
            && leader != self.node_id)
            .then(f)
    }

    /// The follower's view of one fetch from the leader: appends `records`, then sets the high
    /// watermark. Returns the new log end offset.
    pub(crate) fn append_as_follower(&self, records: &[u8]) -> Result<i64, LogError> {
        let mut log = self.log.write();
        // The fetch was made at the log end, so the data must start at or after it (a
        // compacted log skips offsets); data before it is a divergence the epoch check missed,
        // which the log refuses rather than guess (Kafka: "offset mismatch").
        log.append_as_follower(records)?;
        if self.flush_policy == FlushPolicy::Interval {
            // Replicated means at least in this process's page cache; fsynced once
            // `flush.messages` records wait.
            log.write_out()?;
            if log.flush_messages_due() {
                log.flush()?;
            }
        }
        Ok(log.log_end_offset())
    }

    /// The high watermark after a truncation: never above the log end.
    pub(crate) fn cap_hw(&self, log_end: i64) {
        let prev = self.high_watermark.fetch_min(log_end, Ordering::AcqRel);
        if log_end < prev {
            self.hw_watch.send_replace(log_end);
        }
    }
}

/// What an append as leader did, and in which leader epoch: acks=all may complete only while
/// this broker still leads in that epoch (a leader's log never loses data within its epoch).
#[derive(Clone, Copy, Debug)]
pub struct LeaderAppend {
    /// Offsets and sizes.
    pub info: LogAppendInfo,
    /// The leader epoch stamped on the batches.
    pub leader_epoch: i32,
}

/// An ISR change the leader proposes to the controller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IsrChange {
    #[allow(missing_docs)]
    pub tp: TopicPartition,
    /// The topic's id: a change must not apply to another incarnation of the topic.
    pub topic_id: String,
    /// The leader epoch it is based on.
    pub leader_epoch: i32,
    /// The partition epoch it is based on (stale → rejected).
    pub partition_epoch: i32,
    /// The ISR wanted.
    pub new_isr: Vec<i32>,
    /// KIP-903: the broker epoch of each `new_isr` member as of the fetch that let it join
    /// (-1: not checked; empty: none).
    pub new_isr_broker_epochs: Vec<i64>,
}

/// Why an append as leader failed: a client-facing refusal (with the current leader when
/// known), or a log error (which may mean the log dir failed).
#[derive(Debug)]
pub enum PartitionAppendError {
    /// Refused before anything was written.
    Api(ApiError, Option<(i32, i32)>),
    /// The log refused or failed.
    Log(LogError),
}
