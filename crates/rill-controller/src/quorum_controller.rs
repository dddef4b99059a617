//! The quorum controller: one thread that owns the Raft node and the metadata image.
//!
//! Everything that touches Raft state runs on this thread, in this order per iteration (the
//! raft-rs `Ready` contract, which is the correctness argument):
//! 1. take inbound events (peer messages, client writes and reads, ticks);
//! 2. send the messages that need no persistence (a leader's appends and heartbeats);
//! 3. install an incoming snapshot;
//! 4. apply committed entries to the image, answer the writes they complete;
//! 5. append new entries and the hard state to the WAL and fsync — before
//! 6. sending the messages that promise those entries (votes, append acks);
//! 7. advance, apply what that committed, answer reads whose ReadIndex is applied.
//!
//! Writes are validated against `latest` (the committed image plus this leader's uncommitted
//! proposals) and only ever proposed by a leader that has applied its whole log, so a committed
//! record is always valid. Reads go through ReadIndex, so no answer is staler than the moment the
//! request arrived. Writes that produce no records are answered from the committed image once
//! every earlier proposal committed, never from `latest`. The metadata stream brokers follow
//! is a read too: only the active controller starts one, after a ReadIndex, and every open
//! stream is closed when it loses leadership.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use prost::Message as _;
use raft::StateRole;
use raft::prelude::{Entry, Message, Snapshot};
use raft::raw_node::RawNode;
use rill_protocol::proto::{MetadataBatch, MetadataRecord};
use rill_protocol::{ApiError, ErrorCode};
use tokio::sync::{broadcast, oneshot};

use crate::config::{ControllerConfig, Voter};
use crate::raft_log::RaftLog;
use crate::transport::Transport;
use rill_protocol::metadata_image::MetadataImage;

/// Records kept in memory for brokers catching up by deltas instead of a snapshot.
const RECENT_RECORDS: usize = 100_000;

/// When each broker last sent a heartbeat (known to the active controller only, as in KRaft).
pub type BrokerLiveness = HashMap<i32, Instant>;

/// What a write sees when it is validated.
pub struct WriteContext<'a> {
    /// Committed image plus this leader's proposals.
    pub latest: &'a MetadataImage,
    /// When each broker last sent a heartbeat; writes that fence or unfence brokers update it.
    pub liveness: &'a mut BrokerLiveness,
    /// Cluster defaults and limits (`num.partitions`, `max.partitions.per.topic`, ...).
    pub config: &'a ControllerConfig,
    /// One clock reading for the whole write, so its checks agree with each other.
    pub now: Instant,
    /// The producer ids this active controller hands out (see [`ProducerIdBlock`]).
    pub producer_ids: &'a mut ProducerIdBlock,
}

/// The block of producer ids the active controller hands out one by one, reserved by a
/// `ProducerIdsRecord` (Kafka's `ProducerIdsBlock`). It is usable only while `latest` still ends
/// where the block does — a reservation that never reached the log leaves `latest` unchanged —
/// and it is dropped whenever leadership changes, so a new leader always starts a new block
/// above every id ever handed out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProducerIdBlock {
    /// The next id to hand out.
    pub next: i64,
    /// The first id after the block.
    pub end: i64,
}

/// A validated write: records to commit, and what to do once they are applied.
pub struct WritePlan {
    /// Records, applied atomically.
    pub records: Vec<MetadataRecord>,
    /// Called with the image right after the records are applied (or at once if there are none).
    pub on_commit: Box<dyn FnOnce(&MetadataImage) + Send>,
}

/// Validates a write against the latest image and plans its records.
pub type WriteFn = Box<dyn FnOnce(&mut WriteContext<'_>) -> Result<WritePlan, ApiError> + Send>;
/// Answers a read from a linearizable image.
pub type ReadFn = Box<dyn FnOnce(&MetadataImage, &QuorumInfo) + Send>;
/// Reports a failure.
pub type ErrorFn = Box<dyn FnOnce(ApiError) + Send>;

/// The start of a metadata stream: what the caller lacks now, then every later batch.
///
/// Only the active controller starts streams, and only after a ReadIndex proved it still leads,
/// so `initial` is never older than the moment the request arrived. `updates` closes when this
/// controller stops being the active controller (or stops altogether): the stream must then
/// end so the broker follows the new active controller instead of a feed that went silent.
pub struct MetadataStart {
    /// A snapshot (when the requested offset is too old) or the deltas since it.
    pub initial: MetadataBatch,
    /// Batches committed after `initial`; closed on loss of leadership.
    pub updates: broadcast::Receiver<Arc<MetadataBatch>>,
}

/// Where the answer to a FetchMetadata goes: the start of the stream, or why it was refused
/// (NOT_CONTROLLER with the leader hint on any controller that is not the active one).
pub type MetadataReply = oneshot::Sender<Result<MetadataStart, ApiError>>;

/// Raft state for DescribeQuorum and DescribeCluster.
#[derive(Clone, Debug, Default)]
pub struct QuorumInfo {
    /// Leader node id (0 when unknown).
    pub leader_id: u64,
    /// Raft term (increases with every election).
    pub term: u64,
    /// Index of the last Raft entry known committed (entries, not metadata records).
    pub commit_index: u64,
    /// (voter id, matched index) — known on the leader only.
    pub voters: Vec<(u64, u64)>,
}

/// Input to the quorum thread.
pub enum Event {
    /// Messages from peers.
    Raft(Vec<Message>),
    /// A write: validated against `latest` and proposed; the error callback runs when it is
    /// refused or cannot commit.
    Write(WriteFn, ErrorFn),
    /// A linearizable read (after a ReadIndex); the error callback runs when it cannot be
    /// served here.
    Read(ReadFn, ErrorFn),
    /// Start a metadata stream from an offset (active controller only, after a ReadIndex).
    FetchMetadata(i64, MetadataReply),
    /// A peer could not be reached.
    Unreachable(u64),
    /// How sending a snapshot to a peer went.
    SnapshotSent(u64, bool),
    /// Stop the thread.
    Shutdown,
}

struct PendingWrite {
    index: u64,
    term: u64,
    on_commit: Box<dyn FnOnce(&MetadataImage) + Send>,
    on_error: ErrorFn,
    deadline: Instant,
}

struct PendingRead {
    ctx: Vec<u8>,
    index: Option<u64>,
    action: ReadAction,
    deadline: Instant,
}

/// What a read does once its ReadIndex is applied.
enum ReadAction {
    /// Answer from the committed image.
    Image(ReadFn, ErrorFn),
    /// Start a metadata stream from an offset.
    Metadata(i64, MetadataReply),
}

impl ReadAction {
    fn fail(self, e: ApiError) {
        match self {
            ReadAction::Image(_, on_error) => on_error(e),
            ReadAction::Metadata(_, reply) => {
                let _ = reply.send(Err(e));
            }
        }
    }
}

/// Refuses a deferred event (one that waited for this leader to become active).
fn fail_event(ev: Event, e: ApiError) {
    match ev {
        Event::Write(_, on_error) | Event::Read(_, on_error) => on_error(e),
        Event::FetchMetadata(_, reply) => {
            let _ = reply.send(Err(e));
        }
        _ => {}
    }
}

/// The thread's state.
pub struct QuorumController {
    config: ControllerConfig,
    voters: Vec<Voter>,
    node: RawNode<RaftLog>,
    committed: MetadataImage,
    latest: Option<MetadataImage>,
    pending: VecDeque<PendingWrite>,
    reads: Vec<PendingRead>,
    deferred: Vec<(Event, Instant)>,
    read_seq: u64,
    liveness: BrokerLiveness,
    producer_ids: ProducerIdBlock,
    recent: VecDeque<MetadataRecord>,
    updates: broadcast::Sender<Arc<MetadataBatch>>,
    transport: Transport,
    /// Messages the transport could not queue, reported to Raft after `advance`.
    dropped: Vec<crate::transport::Dropped>,
    applied: u64,
    snapshot_bytes: u64,
    request_timeout: Duration,
    metrics: Arc<crate::metrics::ControllerMetrics>,
    /// When the active controller next checks leader imbalance (`auto.leader.rebalance.enable`).
    next_leader_balance: Instant,
}

impl QuorumController {
    /// Opens the Raft log in `metadata.log.dir` and prepares the node.
    pub fn new(
        config: ControllerConfig,
        transport: Transport,
        metrics: Arc<crate::metrics::ControllerMetrics>,
    ) -> Result<Self, crate::ControllerError> {
        let voters = config.voters()?;
        let ids: Vec<u64> = voters.iter().map(|v| v.id).collect();
        let store = RaftLog::open(&config.metadata.log.dir, &ids)?;
        let snapshot = store.snapshot_ref().clone();
        let applied = snapshot.get_metadata().index;
        let committed = image_from_snapshot(&snapshot);
        let q = &config.controller.quorum;
        let election_tick = (q.election.timeout.ms / q.tick.ms).max(2) as usize;
        let raft_config = raft::Config {
            id: config.node.id,
            election_tick,
            heartbeat_tick: (election_tick / 10).max(1),
            applied,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_config
            .validate()
            .map_err(|e| crate::ControllerError::Raft(e.to_string()))?;
        let node = RawNode::new(
            &raft_config,
            store,
            &crate::logger::raft_logger(config.node.id),
        )
        .map_err(|e| crate::ControllerError::Raft(e.to_string()))?;
        let (updates, _) = broadcast::channel(1024);
        Ok(QuorumController {
            request_timeout: Duration::from_millis(q.request.timeout.ms),
            snapshot_bytes: config.metadata.log.max.record.bytes.between.snapshots,
            config,
            voters,
            node,
            committed,
            latest: None,
            pending: VecDeque::new(),
            reads: Vec::new(),
            deferred: Vec::new(),
            read_seq: 0,
            liveness: HashMap::new(),
            producer_ids: ProducerIdBlock::default(),
            recent: VecDeque::new(),
            updates,
            transport,
            dropped: Vec::new(),
            applied,
            metrics,
            next_leader_balance: Instant::now(),
        })
    }

    /// Runs until `Event::Shutdown` or until every sender is gone.
    ///
    /// Returns an error when the metadata log failed: the thread cannot go on without breaking
    /// Raft's durability promises, so the caller must take the whole controller down (a
    /// supervisor restarts it and it recovers from its log).
    pub fn run(mut self, events: EventQueue) -> Result<(), crate::ControllerError> {
        let tick = Duration::from_millis(self.config.controller.quorum.tick.ms);
        let mut next_tick = Instant::now() + tick;
        loop {
            let wait = next_tick.saturating_duration_since(Instant::now());
            match events.recv_timeout(wait) {
                Ok(Event::Shutdown) | Err(RecvTimeoutError::Disconnected) => break,
                Ok(ev) => {
                    self.handle(ev);
                    // Take whatever else is queued before doing I/O: one fsync for all of it.
                    for _ in 0..1024 {
                        match events.try_recv() {
                            Ok(Event::Shutdown) => {
                                self.stop();
                                return Ok(());
                            }
                            Ok(ev) => self.handle(ev),
                            Err(_) => break,
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
            if Instant::now() >= next_tick {
                next_tick += tick;
                if next_tick < Instant::now() {
                    next_tick = Instant::now() + tick;
                }
                self.node.tick();
                self.on_tick();
            }
            if let Err(e) = self.process_ready() {
                tracing::error!(error = %e, "metadata log failure; the quorum thread stops");
                self.stop();
                return Err(e);
            }
        }
        self.stop();
        Ok(())
    }

    fn stop(&mut self) {
        let err = || ApiError::new(ErrorCode::NotController, "the controller is shutting down");
        for p in self.pending.drain(..) {
            (p.on_error)(err());
        }
        for r in self.reads.drain(..) {
            r.action.fail(err());
        }
        for (ev, _) in self.deferred.drain(..) {
            fail_event(ev, err());
        }
        let _ = self.node.mut_store().sync();
    }

    fn is_leader(&self) -> bool {
        self.node.raft.state == StateRole::Leader
    }

    /// The active controller: leader, and its `latest` image built. Checked on every event,
    /// not only once per batch: a message of the same batch may have just made this node a
    /// follower (a newer term), and a write validated against its `latest` then would be
    /// forwarded by Raft to the new leader, which applies records without checks.
    fn is_active(&self) -> bool {
        self.latest.is_some() && self.is_leader()
    }

    fn leader_hint(&self) -> Option<String> {
        let id = self.node.raft.leader_id;
        self.voters
            .iter()
            .find(|v| v.id == id)
            .map(|v| format!("{}@{}", v.id, v.address))
    }

    fn not_controller(&self) -> ApiError {
        let mut e = ApiError::new(
            ErrorCode::NotController,
            match self.node.raft.leader_id {
                0 => format!(
                    "controller {} is not the active controller and no leader is known yet; retry shortly",
                    self.config.node.id
                ),
                l => format!(
                    "controller {} is not the active controller; controller {l} is",
                    self.config.node.id
                ),
            },
        );
        e.leader_hint = self.leader_hint();
        e
    }

    fn handle(&mut self, ev: Event) {
        match ev {
            Event::Raft(msgs) => {
                for m in msgs {
                    if let Err(e) = self.node.step(m) {
                        tracing::debug!(error = %e, "dropped a raft message");
                    }
                }
            }
            Event::Write(f, on_error) => {
                if self.is_active() {
                    self.write(f, on_error);
                } else if self.is_leader() {
                    self.deferred
                        .push((Event::Write(f, on_error), Instant::now()));
                } else {
                    on_error(self.not_controller());
                }
            }
            Event::Read(f, on_error) => {
                if self.is_active() {
                    self.read_index(ReadAction::Image(f, on_error));
                } else if self.is_leader() {
                    self.deferred
                        .push((Event::Read(f, on_error), Instant::now()));
                } else {
                    on_error(self.not_controller());
                }
            }
            // The metadata stream is what brokers build their image from (and delete topics by),
            // so only the active controller serves it, and only once a ReadIndex proved it still
            // leads: a lagging or isolated controller must never hand out an old image.
            Event::FetchMetadata(from, reply) => {
                if self.is_active() {
                    self.read_index(ReadAction::Metadata(from, reply));
                } else if self.is_leader() {
                    self.deferred
                        .push((Event::FetchMetadata(from, reply), Instant::now()));
                } else {
                    let _ = reply.send(Err(self.not_controller()));
                }
            }
            Event::Unreachable(peer) => self.node.report_unreachable(peer),
            Event::SnapshotSent(peer, ok) => self.node.report_snapshot(
                peer,
                if ok {
                    raft::SnapshotStatus::Finish
                } else {
                    raft::SnapshotStatus::Failure
                },
            ),
            Event::Shutdown => {}
        }
    }

    fn read_index(&mut self, action: ReadAction) {
        self.read_seq += 1;
        let ctx = self.read_seq.to_be_bytes().to_vec();
        self.node.read_index(ctx.clone());
        self.reads.push(PendingRead {
            ctx,
            index: None,
            action,
            deadline: Instant::now() + self.request_timeout,
        });
    }

    /// The start of a metadata stream from `from`, out of the committed image: the deltas since
    /// `from` when they are still in memory, else a snapshot.
    fn metadata_start(&self, from: i64) -> MetadataStart {
        let updates = self.updates.subscribe();
        let next = self.committed.next_offset;
        let recent_start = next - self.recent.len() as i64;
        let initial = if from >= recent_start && from <= next {
            MetadataBatch {
                is_snapshot: false,
                last_offset: next - 1,
                records: self
                    .recent
                    .iter()
                    .filter(|r| r.offset >= from)
                    .cloned()
                    .collect(),
            }
        } else {
            MetadataBatch {
                is_snapshot: true,
                last_offset: next - 1,
                records: self.committed.snapshot_records(),
            }
        };
        MetadataStart { initial, updates }
    }

    fn write(&mut self, f: WriteFn, on_error: ErrorFn) {
        let Some(latest) = self.latest.as_ref() else {
            return on_error(self.not_controller());
        };
        let mut ctx = WriteContext {
            latest,
            liveness: &mut self.liveness,
            config: &self.config,
            now: Instant::now(),
            producer_ids: &mut self.producer_ids,
        };
        let plan = match f(&mut ctx) {
            Ok(plan) => plan,
            Err(e) => return on_error(e),
        };
        if plan.records.is_empty() {
            return self.complete_after_pending(plan.on_commit, on_error);
        }
        self.propose(plan.records, plan.on_commit, on_error);
    }

    /// Answers a write that produced no records (a heartbeat, a repeated registration) from
    /// committed state only. It was validated against `latest`, which may hold proposals that
    /// never commit, so it completes only once everything proposed before it has committed:
    /// queued behind the last pending write (same index and term, so it completes or fails with
    /// it), or at once from `committed` when nothing is pending.
    fn complete_after_pending(
        &mut self,
        on_commit: Box<dyn FnOnce(&MetadataImage) + Send>,
        on_error: ErrorFn,
    ) {
        let Some(last) = self.pending.back() else {
            return on_commit(&self.committed);
        };
        let (index, term) = (last.index, last.term);
        self.pending.push_back(PendingWrite {
            index,
            term,
            on_commit,
            on_error,
            deadline: Instant::now() + self.request_timeout,
        });
    }

    fn propose(
        &mut self,
        records: Vec<MetadataRecord>,
        on_commit: Box<dyn FnOnce(&MetadataImage) + Send>,
        on_error: ErrorFn,
    ) {
        // Never from a follower: Raft would forward the proposal to the leader (see
        // `is_active`).
        if !self.is_leader() {
            return on_error(self.not_controller());
        }
        let records_for_latest = records.clone();
        let data = MetadataBatch {
            is_snapshot: false,
            last_offset: -1,
            records,
        }
        .encode_to_vec();
        if let Err(e) = self.node.propose(Vec::new(), data) {
            tracing::debug!(error = %e, "proposal dropped");
            return on_error(self.not_controller());
        }
        let index = self.node.raft.raft_log.last_index();
        if let Some(latest) = self.latest.as_mut() {
            for mut r in records_for_latest {
                latest.append(&mut r);
            }
        }
        self.pending.push_back(PendingWrite {
            index,
            term: self.node.raft.term,
            on_commit,
            on_error,
            deadline: Instant::now() + self.request_timeout,
        });
    }

    fn on_tick(&mut self) {
        let now = Instant::now();
        // Fail what waited too long.
        while self.pending.front().is_some_and(|p| p.deadline < now) {
            if let Some(p) = self.pending.pop_front() {
                (p.on_error)(ApiError::new(
                    ErrorCode::RequestTimedOut,
                    "the change was not committed in time; it may still commit",
                ));
            }
        }
        let (expired, keep): (Vec<_>, Vec<_>) =
            self.reads.drain(..).partition(|r| r.deadline < now);
        self.reads = keep;
        for r in expired {
            r.action.fail(ApiError::new(
                ErrorCode::RequestTimedOut,
                "the read could not be confirmed by the quorum in time",
            ));
        }
        let election = Duration::from_millis(self.config.controller.quorum.election.timeout.ms * 2);
        let (stale, fresh): (Vec<_>, Vec<_>) = self
            .deferred
            .drain(..)
            .partition(|(_, t)| now.duration_since(*t) > election);
        self.deferred = fresh;
        for (ev, _) in stale {
            fail_event(ev, self.not_controller());
        }
        if self.is_active() {
            self.fence_expired_brokers(now);
            self.maybe_rebalance_leaders(now);
        }
        let m = &self.metrics;
        let raft = &self.node.raft;
        m.term.set(raft.term as i64);
        m.leader_id.set(raft.leader_id as i64);
        m.is_leader.set(i64::from(self.is_active()));
        m.commit_index.set(raft.raft_log.committed as i64);
        m.applied_index.set(self.applied as i64);
        m.pending_writes.set(self.pending.len() as i64);
        m.observe_image(&self.committed);
    }

    fn leader_balance_interval(&self) -> Duration {
        Duration::from_secs(self.config.leader.imbalance.check.interval.seconds)
    }

    /// Every `leader.imbalance.check.interval.seconds`, gives leadership back to preferred
    /// replicas on brokers whose leader imbalance exceeds `leader.imbalance.per.broker.percentage`
    /// (Kafka's automatic preferred-leader election).
    fn maybe_rebalance_leaders(&mut self, now: Instant) {
        if !self.config.auto.leader.rebalance.enable || now < self.next_leader_balance {
            return;
        }
        self.next_leader_balance = now + self.leader_balance_interval();
        let Some(latest) = self.latest.as_ref() else {
            return;
        };
        let records = crate::commands::auto_leader_rebalance(
            latest,
            self.config.leader.imbalance.per.broker.percentage,
        );
        if records.is_empty() {
            return;
        }
        tracing::info!(
            partitions = records.len(),
            "leader imbalance above leader.imbalance.per.broker.percentage; moving leadership back to preferred replicas"
        );
        self.propose(
            records,
            Box::new(|_| {}),
            Box::new(|e| tracing::warn!(error = %e, "preferred-leader election did not commit")),
        );
    }

    /// Fences unfenced brokers whose session expired and moves their leaderships.
    fn fence_expired_brokers(&mut self, now: Instant) {
        let timeout = Duration::from_millis(self.config.broker.session.timeout.ms);
        let Some(latest) = self.latest.as_ref() else {
            return;
        };
        let expired: Vec<i32> = latest
            .brokers
            .values()
            .filter(|b| !b.fenced)
            .filter(|b| {
                self.liveness
                    .get(&b.id)
                    .is_none_or(|t| now.duration_since(*t) > timeout)
            })
            .map(|b| b.id)
            .collect();
        for broker in expired {
            let Some(latest) = self.latest.as_ref() else {
                return;
            };
            let records = crate::commands::fence_broker(latest, broker);
            tracing::info!(
                broker,
                "broker session expired; fencing it and moving its leaderships"
            );
            self.propose(
                records,
                Box::new(|_| {}),
                Box::new(|e| tracing::warn!(error = %e, "fencing did not commit")),
            );
        }
    }

    fn process_ready(&mut self) -> Result<(), crate::ControllerError> {
        self.check_leadership();
        if !self.node.has_ready() {
            return Ok(());
        }
        let mut ready = self.node.ready();
        // 2. Messages that need no persistence.
        let dropped = self.transport.send(ready.take_messages());
        self.dropped.extend(dropped);
        // 3. Snapshot from the leader.
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            self.install_snapshot(snap)?;
        }
        // 4. Apply committed entries.
        let committed = ready.take_committed_entries();
        self.apply_entries(committed);
        // 5. Persist entries and hard state, then fsync.
        let store = self.node.mut_store();
        if !ready.entries().is_empty() {
            store.append(ready.entries())?;
        }
        if let Some(hs) = ready.hs() {
            store.set_hard_state(hs.clone())?;
        }
        if ready.must_sync() || !ready.entries().is_empty() {
            store.sync()?;
        }
        // 6. Messages that depend on what was just persisted.
        let dropped = self.transport.send(ready.take_persisted_messages());
        self.dropped.extend(dropped);
        for rs in ready.take_read_states() {
            if let Some(r) = self.reads.iter_mut().find(|r| r.ctx == rs.request_ctx) {
                r.index = Some(rs.index);
            }
        }
        // 7. Advance.
        let mut light = self.node.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.node.mut_store().set_commit(commit)?;
        }
        let dropped = self.transport.send(light.take_messages());
        self.dropped.extend(dropped);
        let committed = light.take_committed_entries();
        self.apply_entries(committed);
        self.node.advance_apply();
        self.report_dropped();
        self.answer_reads();
        self.maybe_snapshot()?;
        self.check_leadership();
        Ok(())
    }

    /// Tells Raft about messages the transport dropped (a peer's queue was full), so it probes
    /// the peer again instead of assuming them delivered; a dropped snapshot is a failed one,
    /// or the peer would stay in the snapshot state until it times out.
    fn report_dropped(&mut self) {
        let mut unreachable = std::collections::BTreeSet::new();
        for d in std::mem::take(&mut self.dropped) {
            if d.snapshot {
                self.node
                    .report_snapshot(d.peer, raft::SnapshotStatus::Failure);
            } else {
                unreachable.insert(d.peer);
            }
        }
        for peer in unreachable {
            self.node.report_unreachable(peer);
        }
    }

    /// Tracks becoming (ready as) leader and losing leadership.
    fn check_leadership(&mut self) {
        if !self.is_leader() {
            if self.latest.take().is_some() {
                tracing::info!(
                    node = self.config.node.id,
                    "no longer the active controller"
                );
                self.liveness.clear();
                self.producer_ids = ProducerIdBlock::default();
                let err = self.not_controller();
                for r in self.reads.drain(..) {
                    r.action.fail(err.clone());
                }
                // End every open metadata stream: their receivers see the channel close and
                // the brokers go find the new active controller.
                self.updates = broadcast::channel(1024).0;
            }
            let deferred = std::mem::take(&mut self.deferred);
            for (ev, _) in deferred {
                fail_event(ev, self.not_controller());
            }
            return;
        }
        if self.latest.is_none()
            && self.node.raft.commit_to_current_term()
            && self.applied >= self.node.raft.raft_log.committed
        {
            tracing::info!(
                node = self.config.node.id,
                term = self.node.raft.term,
                "became the active controller"
            );
            // Writes still pending from an earlier term can never commit now: everything in
            // the log is committed and applied (a write that made it was answered), so theirs
            // were cut by another leader. They fail rather than count in `latest`, where their
            // records would stand in for changes that never happened.
            for p in std::mem::take(&mut self.pending) {
                (p.on_error)(ApiError::new(
                    ErrorCode::NotController,
                    "the change was lost in a controller leadership change; retry",
                ));
            }
            let latest = self.committed.clone();
            // Every known broker gets a full session from now before it can be fenced.
            let now = Instant::now();
            self.liveness = latest.brokers.keys().map(|b| (*b, now)).collect();
            self.producer_ids = ProducerIdBlock::default();
            self.next_leader_balance = now + self.leader_balance_interval();
            let needs_cluster_id = latest.cluster_id.is_none();
            self.latest = Some(latest);
            if needs_cluster_id {
                let id = if self.config.cluster.id.is_empty() {
                    uuid::Uuid::new_v4().simple().to_string()
                } else {
                    self.config.cluster.id.clone()
                };
                let record = crate::commands::record(
                    rill_protocol::proto::metadata_record::Record::ClusterId(
                        rill_protocol::proto::ClusterIdRecord { cluster_id: id },
                    ),
                );
                self.propose(vec![record], Box::new(|_| {}), Box::new(|_| {}));
            }
            for (ev, _) in std::mem::take(&mut self.deferred) {
                self.handle(ev);
            }
        }
    }

    fn install_snapshot(&mut self, snap: Snapshot) -> Result<(), crate::ControllerError> {
        let index = snap.get_metadata().index;
        self.committed = image_from_snapshot(&snap);
        self.node.mut_store().apply_snapshot(snap)?;
        self.applied = index;
        self.recent.clear();
        // Writes at or below the snapshot can no longer be matched to their entries.
        while self.pending.front().is_some_and(|p| p.index <= index) {
            if let Some(p) = self.pending.pop_front() {
                (p.on_error)(self.not_controller());
            }
        }
        let _ = self.updates.send(Arc::new(MetadataBatch {
            is_snapshot: true,
            last_offset: self.committed.next_offset - 1,
            records: self.committed.snapshot_records(),
        }));
        tracing::info!(
            index,
            offset = self.committed.next_offset - 1,
            "installed a metadata snapshot from the leader"
        );
        Ok(())
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) {
        for e in entries {
            self.applied = e.index;
            let mut applied_records = Vec::new();
            if !e.data.is_empty() {
                match MetadataBatch::decode(&e.data[..]) {
                    Ok(batch) => {
                        for mut r in batch.records {
                            self.committed.append(&mut r);
                            applied_records.push(r);
                        }
                    }
                    Err(err) => {
                        tracing::error!(index = e.index, error = %err, "undecodable metadata entry skipped")
                    }
                }
            }
            if !applied_records.is_empty() {
                for r in &applied_records {
                    self.recent.push_back(r.clone());
                }
                while self.recent.len() > RECENT_RECORDS {
                    self.recent.pop_front();
                }
                let _ = self.updates.send(Arc::new(MetadataBatch {
                    is_snapshot: false,
                    last_offset: self.committed.next_offset - 1,
                    records: applied_records,
                }));
            }
            while let Some(p) = self.pending.front() {
                if p.index > e.index {
                    break;
                }
                let Some(p) = self.pending.pop_front() else {
                    break;
                };
                if p.index == e.index && p.term == e.term {
                    (p.on_commit)(&self.committed);
                } else {
                    (p.on_error)(self.not_controller());
                }
            }
        }
    }

    fn answer_reads(&mut self) {
        if self
            .reads
            .iter()
            .all(|r| r.index.is_none_or(|i| i > self.applied))
        {
            return;
        }
        let info = self.quorum_info();
        let applied = self.applied;
        let (ready, waiting): (Vec<_>, Vec<_>) = self
            .reads
            .drain(..)
            .partition(|r| r.index.is_some_and(|i| i <= applied));
        self.reads = waiting;
        for r in ready {
            match r.action {
                ReadAction::Image(f, _) => f(&self.committed, &info),
                ReadAction::Metadata(from, reply) => {
                    let _ = reply.send(Ok(self.metadata_start(from)));
                }
            }
        }
    }

    fn quorum_info(&self) -> QuorumInfo {
        let raft = &self.node.raft;
        let mut voters: Vec<(u64, u64)> = if self.is_leader() {
            raft.prs().iter().map(|(id, p)| (*id, p.matched)).collect()
        } else {
            Vec::new()
        };
        voters.sort_unstable();
        QuorumInfo {
            leader_id: raft.leader_id,
            term: raft.term,
            commit_index: raft.raft_log.committed,
            voters,
        }
    }

    fn maybe_snapshot(&mut self) -> Result<(), crate::ControllerError> {
        if self.node.store().bytes_since_snapshot() < self.snapshot_bytes {
            return Ok(());
        }
        let data = MetadataBatch {
            is_snapshot: true,
            last_offset: self.committed.next_offset - 1,
            records: self.committed.snapshot_records(),
        }
        .encode_to_vec();
        let applied = self.applied;
        self.node.mut_store().compact_to_snapshot(applied, data)?;
        tracing::info!(
            index = applied,
            offset = self.committed.next_offset - 1,
            "took a metadata snapshot and compacted the raft log"
        );
        Ok(())
    }
}

fn image_from_snapshot(snap: &Snapshot) -> MetadataImage {
    if snap.data.is_empty() {
        return MetadataImage::default();
    }
    match MetadataBatch::decode(&snap.data[..]) {
        Ok(batch) => MetadataImage::from_snapshot(&batch.records, batch.last_offset),
        Err(e) => {
            tracing::error!(error = %e, "undecodable metadata snapshot");
            MetadataImage::default()
        }
    }
}

/// Room in the quorum thread's queue that only the quorum's own traffic (peers' Raft messages,
/// the transport's reports) may use: clients filling `queued.max.requests` must not make the
/// controller drop votes and append acknowledgements, or a busy leader loses its quorum.
const QUORUM_HEADROOM: usize = 1024;

/// A handle to send events to the quorum thread, with backpressure.
#[derive(Clone)]
pub struct QuorumHandle {
    tx: SyncSender<Event>,
    /// Client requests (writes, reads, metadata streams) queued now, at most `max_clients`.
    clients: Arc<AtomicUsize>,
    max_clients: usize,
}

/// The quorum thread's side of the queue.
pub struct EventQueue {
    rx: Receiver<Event>,
    clients: Arc<AtomicUsize>,
}

impl EventQueue {
    fn taken(&self, ev: Event) -> Event {
        if ev.is_client() {
            self.clients.fetch_sub(1, Ordering::AcqRel);
        }
        ev
    }

    fn recv_timeout(&self, wait: Duration) -> Result<Event, RecvTimeoutError> {
        self.rx.recv_timeout(wait).map(|ev| self.taken(ev))
    }

    fn try_recv(&self) -> Result<Event, std::sync::mpsc::TryRecvError> {
        self.rx.try_recv().map(|ev| self.taken(ev))
    }
}

impl Event {
    /// A client's request, counted against `queued.max.requests`.
    fn is_client(&self) -> bool {
        matches!(
            self,
            Event::Write(..) | Event::Read(..) | Event::FetchMetadata(..)
        )
    }
}

impl QuorumHandle {
    /// The thread's queue: `max_requests` client requests (`queued.max.requests`), and room
    /// beside them for the quorum's own messages.
    pub fn bounded(max_requests: usize) -> (Self, EventQueue) {
        let (tx, rx) = std::sync::mpsc::sync_channel(max_requests + QUORUM_HEADROOM);
        let clients = Arc::new(AtomicUsize::new(0));
        let handle = QuorumHandle {
            tx,
            clients: Arc::clone(&clients),
            max_clients: max_requests,
        };
        (handle, EventQueue { rx, clients })
    }

    /// Queues an event; a full queue is RESOURCE_EXHAUSTED for the caller.
    pub fn send(&self, ev: Event) -> Result<(), ApiError> {
        let full = || {
            ApiError::new(
                ErrorCode::ThrottlingQuotaExceeded,
                "the controller's request queue is full (queued.max.requests); retry with backoff",
            )
        };
        let client = ev.is_client();
        if client
            && self
                .clients
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n < self.max_clients).then_some(n + 1)
                })
                .is_err()
        {
            return Err(full());
        }
        self.tx.try_send(ev).map_err(|e| {
            if client {
                self.clients.fetch_sub(1, Ordering::AcqRel);
            }
            match e {
            std::sync::mpsc::TrySendError::Full(_) => ApiError::new(
                ErrorCode::ThrottlingQuotaExceeded,
                "the controller's request queue is full (queued.max.requests); retry with backoff",
            ),
            std::sync::mpsc::TrySendError::Disconnected(_) => {
                ApiError::new(ErrorCode::NotController, "the controller is shutting down")
            }
            }
        })
    }

    /// Runs a write and waits for its outcome.
    pub async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(
            &mut WriteContext<'_>,
        ) -> Result<
            (
                Vec<MetadataRecord>,
                Box<dyn FnOnce(&MetadataImage) -> T + Send>,
            ),
            ApiError,
        > + Send
        + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel::<Result<T, ApiError>>();
        let tx = Arc::new(parking_lot::Mutex::new(Some(tx)));
        let tx2 = Arc::clone(&tx);
        let write: WriteFn = Box::new(move |ctx| {
            let (records, done) = f(ctx)?;
            let tx = Arc::clone(&tx);
            Ok(WritePlan {
                records,
                on_commit: Box::new(move |image| {
                    if let Some(tx) = tx.lock().take() {
                        let _ = tx.send(Ok(done(image)));
                    }
                }),
            })
        });
        let on_error: ErrorFn = Box::new(move |e| {
            if let Some(tx) = tx2.lock().take() {
                let _ = tx.send(Err(e));
            }
        });
        self.send(Event::Write(write, on_error))?;
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::NotController,
                "the controller is shutting down",
            ))
        })
    }

    /// Runs a linearizable read.
    pub async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&MetadataImage, &QuorumInfo) -> T + Send + 'static,
    ) -> Result<T, ApiError> {
        let (tx, rx) = oneshot::channel::<Result<T, ApiError>>();
        let tx = Arc::new(parking_lot::Mutex::new(Some(tx)));
        let tx2 = Arc::clone(&tx);
        let read: ReadFn = Box::new(move |image, info| {
            if let Some(tx) = tx.lock().take() {
                let _ = tx.send(Ok(f(image, info)));
            }
        });
        let on_error: ErrorFn = Box::new(move |e| {
            if let Some(tx) = tx2.lock().take() {
                let _ = tx.send(Err(e));
            }
        });
        self.send(Event::Read(read, on_error))?;
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::NotController,
                "the controller is shutting down",
            ))
        })
    }

    /// Starts a metadata stream. Fails with NOT_CONTROLLER (and the leader hint) unless this
    /// is the active controller and a ReadIndex confirmed it.
    pub async fn fetch_metadata(&self, from: i64) -> Result<MetadataStart, ApiError> {
        let (tx, rx) = oneshot::channel();
        self.send(Event::FetchMetadata(from, tx))?;
        rx.await.unwrap_or_else(|_| {
            Err(ApiError::new(
                ErrorCode::NotController,
                "the controller is shutting down",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::mpsc as std_mpsc;

    use raft::eraftpb::{Message, MessageType};
    use rill_protocol::proto::metadata_record::Record;

    use super::*;

    /// Controller 1 of three, its peers' queues held by the test (what it sends them).
    struct Harness {
        qc: QuorumController,
        _outbox: Vec<tokio::sync::mpsc::Receiver<Message>>,
        _dir: tempfile::TempDir,
    }

    fn msg(t: MessageType, from: u64, term: u64) -> Message {
        let mut m = Message {
            from,
            to: 1,
            term,
            ..Default::default()
        };
        m.set_msg_type(t);
        m
    }

    /// Controller 1, elected by controller 2's votes and made active (its first entry
    /// committed with 2's acknowledgement).
    fn active_controller() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let overrides: BTreeMap<String, String> = [
            ("node.id", "1".to_owned()),
            (
                "controller.quorum.voters",
                "1@127.0.0.1:1,2@127.0.0.1:2,3@127.0.0.1:3".to_owned(),
            ),
            ("metadata.log.dir", dir.path().display().to_string()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
        let config = ControllerConfig::load(None, &overrides).unwrap();
        let (tx2, rx2) = tokio::sync::mpsc::channel(1024);
        let (tx3, rx3) = tokio::sync::mpsc::channel(1024);
        let transport = Transport::with_queues(HashMap::from([(2, tx2), (3, tx3)]));
        let mut qc =
            QuorumController::new(config, transport, crate::metrics::ControllerMetrics::new())
                .unwrap();
        qc.node.campaign().unwrap();
        qc.process_ready().unwrap();
        let term = qc.node.raft.term;
        qc.handle(Event::Raft(vec![msg(
            MessageType::MsgRequestPreVoteResponse,
            2,
            term + 1,
        )]));
        qc.process_ready().unwrap();
        let term = qc.node.raft.term;
        qc.handle(Event::Raft(vec![msg(
            MessageType::MsgRequestVoteResponse,
            2,
            term,
        )]));
        qc.process_ready().unwrap();
        assert!(qc.is_leader(), "elected");
        // Acknowledge everything appended so far (the empty entry, then the cluster id).
        for _ in 0..3 {
            let mut ack = msg(MessageType::MsgAppendResponse, 2, qc.node.raft.term);
            ack.index = qc.node.raft.raft_log.last_index();
            qc.handle(Event::Raft(vec![ack]));
            qc.process_ready().unwrap();
        }
        assert!(qc.is_active(), "active");
        Harness {
            qc,
            _outbox: vec![rx2, rx3],
            _dir: dir,
        }
    }

    /// A write that registers nothing real: one cluster-id record.
    fn write(errors: std_mpsc::Sender<ErrorCode>) -> Event {
        Event::Write(
            Box::new(|_| {
                Ok(WritePlan {
                    records: vec![crate::commands::record(Record::ClusterId(
                        rill_protocol::proto::ClusterIdRecord {
                            cluster_id: "written".into(),
                        },
                    ))],
                    on_commit: Box::new(|_| {}),
                })
            }),
            Box::new(move |e| {
                let _ = errors.send(e.code);
            }),
        )
    }

    /// A write queued behind a message that ends this controller's term (in the same batch
    /// of events, before the loop checks its leadership) is refused: validated against the old
    /// term's image, it would be forwarded by Raft to the new leader, which applies records
    /// without checks (an ISR that leader already shrank could come back).
    #[test]
    fn a_write_behind_a_newer_term_in_the_same_batch_is_refused_not_forwarded() {
        let mut h = active_controller();
        let term = h.qc.node.raft.term;
        let last = h.qc.node.raft.raft_log.last_index();
        h.qc.handle(Event::Raft(vec![msg(
            MessageType::MsgHeartbeat,
            3,
            term + 1,
        )]));
        let (tx, rx) = std_mpsc::channel();
        h.qc.handle(write(tx));
        assert_eq!(rx.try_recv(), Ok(ErrorCode::NotController));
        assert_eq!(
            h.qc.node.raft.raft_log.last_index(),
            last,
            "nothing was appended"
        );
        assert!(
            !h.qc
                .node
                .raft
                .msgs
                .iter()
                .any(|m| m.get_msg_type() == MessageType::MsgPropose),
            "nothing was forwarded to the new leader"
        );
    }

    /// Writes proposed in an earlier term and cut by another leader fail when this controller
    /// leads again, instead of counting in its `latest` image as if they had happened.
    #[test]
    fn writes_cut_by_another_leader_fail_when_leading_again() {
        let mut h = active_controller();
        let (tx, rx) = std_mpsc::channel();
        h.qc.handle(write(tx));
        assert_eq!(h.qc.pending.len(), 1, "proposed, not committed");
        // As if another leader had cut it and this one was elected again: leadership lost,
        // then regained with the entry gone from the log.
        let term = h.qc.node.raft.term;
        h.qc.handle(Event::Raft(vec![msg(
            MessageType::MsgHeartbeat,
            3,
            term + 1,
        )]));
        h.qc.process_ready().unwrap();
        assert!(!h.qc.is_active());
        h.qc.pending.back_mut().unwrap().index += 1_000;
        h.qc.node.campaign().unwrap();
        h.qc.process_ready().unwrap();
        let term = h.qc.node.raft.term;
        h.qc.handle(Event::Raft(vec![msg(
            MessageType::MsgRequestPreVoteResponse,
            2,
            term + 1,
        )]));
        h.qc.process_ready().unwrap();
        let term = h.qc.node.raft.term;
        h.qc.handle(Event::Raft(vec![msg(
            MessageType::MsgRequestVoteResponse,
            2,
            term,
        )]));
        h.qc.process_ready().unwrap();
        let mut ack = msg(MessageType::MsgAppendResponse, 2, h.qc.node.raft.term);
        ack.index = h.qc.node.raft.raft_log.last_index();
        h.qc.handle(Event::Raft(vec![ack]));
        h.qc.process_ready().unwrap();
        assert!(h.qc.is_active(), "active again");
        assert_eq!(rx.try_recv(), Ok(ErrorCode::NotController));
        assert_eq!(
            h.qc.latest.as_ref().unwrap().next_offset,
            h.qc.committed.next_offset,
            "latest holds nothing that was not committed"
        );
    }

    /// Clients filling `queued.max.requests` leave the room the quorum's own messages need:
    /// a leader that dropped its followers' acknowledgements under load would lose its quorum.
    #[test]
    fn a_full_client_queue_leaves_room_for_raft_messages() {
        let (handle, queue) = QuorumHandle::bounded(2);
        let read = || Event::Read(Box::new(|_, _| {}), Box::new(|_| {}));
        handle.send(read()).unwrap();
        handle.send(read()).unwrap();
        assert_eq!(
            handle.send(read()).unwrap_err().code,
            ErrorCode::ThrottlingQuotaExceeded
        );
        handle.send(Event::Raft(vec![Message::default()])).unwrap();
        handle.send(Event::Unreachable(2)).unwrap();
        // Taking a client request off the queue frees its place.
        assert!(matches!(queue.try_recv(), Ok(Event::Read(..))));
        handle.send(read()).unwrap();
        assert_eq!(
            handle.send(read()).unwrap_err().code,
            ErrorCode::ThrottlingQuotaExceeded
        );
    }
}
