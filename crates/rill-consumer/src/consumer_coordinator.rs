//! Group membership on the application's side (Kafka's `ConsumerCoordinator` and the
//! reconciliation part of its `ConsumerMembershipManager`), KIP-848's "consumer" protocol: the
//! coordinator computes the assignment; this side reconciles to it inside `poll`, so the
//! rebalance listener runs on the caller's task.
//!
//! A new target assignment is reconciled as Kafka does: partitions to give up stop being
//! fetched (buffered records dropped), their consumed positions are committed (auto commit),
//! `on_partitions_revoked` runs, and they leave the subscription state; partitions to take
//! join it, `on_partitions_assigned` runs, and the new owned set goes to the coordinator in a
//! heartbeat at once. `poll` waits for that commit until its own timeout at most: the
//! partitions being given up stay unfetched and the next `poll` waits for the same commit.
//! Before anything of a new partition is fetched, its committed offset is looked up (else
//! `auto.offset.reset` applies) — as Kafka's consumer, after the callback; the lookups run in
//! the background, so they never hold `poll` past its timeout either.
//! Fenced, or out after the poll timeout, the member loses everything (`on_partitions_lost`,
//! no commit) and rejoins.
//!
//! The heartbeat task lives in [`heartbeat`], commits in [`commit`].

pub(crate) mod commit;
pub(crate) mod heartbeat;
#[cfg(test)]
mod member_tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::{Duration, Instant};

use rill_protocol::client::ClusterClient;
use rill_protocol::proto::{OffsetFetchRequest, OffsetFetchTopic};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tokio::sync::{oneshot, watch};

use self::commit::{CommitBy, CommitResult, Committer};
use self::heartbeat::{
    Command, Event, MemberIdentity, MembershipHandle, MembershipSettings, PollTimer,
};
use crate::config::{ConsumerConfig, RetryPolicy, deadline_after};
use crate::coordinator_client::CoordinatorClient;
use crate::error::response_error;
use crate::fetcher::Fetcher;
use crate::subscription_state::{Subscription, SubscriptionState};
use crate::{ConsumerError, OffsetAndMetadata};

/// Told when the group moves partitions to or from this consumer (Kafka's
/// `ConsumerRebalanceListener`). Called from inside `poll` (and `unsubscribe`/`close`), on the
/// caller's task, so offsets can be saved before another member reads on. Every method does
/// nothing unless overridden; each is called only with a non-empty list.
pub trait ConsumerRebalanceListener: Send {
    /// The partitions are about to be given to other members: offsets of theirs to commit
    /// first, as a Kafka listener calls `commitSync` in `onPartitionsRevoked`. With manual
    /// commits, the positions after the records processed but not committed yet, so the next
    /// owner does not read them again. They are committed, and the commit waited for (within
    /// the poll's time), before [`on_partitions_revoked`](Self::on_partitions_revoked); with
    /// auto commit they replace the consumed positions of the same partitions. Offsets of
    /// partitions not in `partitions` are left out. None by default.
    fn offsets_to_commit_on_revoke(
        &mut self,
        partitions: &[TopicPartition],
    ) -> BTreeMap<TopicPartition, OffsetAndMetadata> {
        let _ = partitions;
        BTreeMap::new()
    }

    /// The partitions are about to be given to other members; their offsets were just
    /// committed (with auto commit the consumed positions, and any from
    /// [`offsets_to_commit_on_revoke`](Self::offsets_to_commit_on_revoke)). No record of them
    /// is returned after this.
    fn on_partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }

    /// The partitions are this consumer's now; records from them follow.
    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }

    /// The partitions were already taken away (the member was fenced or left after missing
    /// `max.poll.interval.ms`): others may be reading them, so nothing was committed.
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        let _ = partitions;
    }
}

/// A listener for consumers that need no callbacks.
#[derive(Clone, Copy, Debug, Default)]
pub struct NoOpRebalanceListener;

impl ConsumerRebalanceListener for NoOpRebalanceListener {}

/// What moving from one assignment to another takes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct ReconciliationPlan {
    /// Owned but not in the target: give up.
    pub revoked: Vec<TopicPartition>,
    /// In the target but not owned: take.
    pub added: Vec<TopicPartition>,
}

/// Revoked = owned − target, added = target − owned (both sorted).
pub(crate) fn reconcile(
    owned: &BTreeSet<TopicPartition>,
    target: &BTreeSet<TopicPartition>,
) -> ReconciliationPlan {
    ReconciliationPlan {
        revoked: owned.difference(target).cloned().collect(),
        added: target.difference(owned).cloned().collect(),
    }
}

/// A commit before partitions are given up.
struct Revoking {
    partitions: Vec<TopicPartition>,
    answer: oneshot::Receiver<CommitResult>,
}

/// The answer of a committed-offsets lookup.
pub(crate) type CommittedAnswer =
    Result<BTreeMap<TopicPartition, Result<Option<OffsetAndMetadata>, ApiError>>, ApiError>;

/// The group side of a consumer with a `group.id`: membership (spawned on the first
/// subscribe), commits, committed-offset lookups and the rebalance listener.
pub(crate) struct ConsumerCoordinator {
    settings: MembershipSettings,
    coordinator: CoordinatorClient,
    retry: RetryPolicy,
    /// The member id, generated once for the consumer's lifetime (Kafka 4.x).
    member_id: String,
    /// Until the membership task takes it.
    identity_tx: Option<watch::Sender<MemberIdentity>>,
    identity: watch::Receiver<MemberIdentity>,
    membership: Option<MembershipHandle>,
    committer: Option<Committer>,
    listener: tokio::sync::Mutex<Box<dyn ConsumerRebalanceListener>>,
    /// Events received while waiting in `poll`, handled at its next turn.
    pending: VecDeque<Event>,
    /// The target assignment being reconciled: kept until reconciled, so a `poll` cancelled
    /// mid-way (dropped by a timeout) or out of time picks it up again.
    target: Option<BTreeSet<TopicPartition>>,
    /// The commit of the partitions being revoked, kept until answered: a reconciliation
    /// that outlasts a `poll` waits for it on the next one instead of committing again.
    revoking: Option<Revoking>,
    poll_timer: PollTimer,
    auto_commit: bool,
    auto_commit_interval: Duration,
    next_auto_commit: Instant,
    auto_commit_in_flight: Option<oneshot::Receiver<CommitResult>>,
    /// `default.api.timeout.ms`: the bound of sync commits (also those before revocations).
    api_timeout: Duration,
}

impl ConsumerCoordinator {
    /// The group side of a consumer whose config has a `group_id`; starts nothing yet.
    pub fn new(config: &ConsumerConfig, group_id: &str, client: ClusterClient) -> Self {
        let retry = config.retry();
        let member_id = uuid::Uuid::new_v4().to_string();
        let (identity_tx, identity) = watch::channel(MemberIdentity {
            member_id: member_id.clone(),
            epoch: 0,
        });
        ConsumerCoordinator {
            settings: MembershipSettings {
                group_id: group_id.to_owned(),
                instance_id: config.group_instance_id.clone(),
                rack_id: config.client_rack.clone(),
                client_id: config.client_id.clone(),
                rebalance_timeout_ms: config.max_poll_interval.as_millis().min(i32::MAX as u128)
                    as i32,
                assignor: config.group_remote_assignor.clone(),
                retry,
                max_poll_interval: config.max_poll_interval,
            },
            coordinator: CoordinatorClient::new(client, group_id, retry),
            retry,
            member_id,
            identity_tx: Some(identity_tx),
            identity,
            membership: None,
            committer: None,
            listener: tokio::sync::Mutex::new(Box::new(NoOpRebalanceListener)),
            pending: VecDeque::new(),
            target: None,
            revoking: None,
            poll_timer: PollTimer::new(),
            auto_commit: config.auto_commit(),
            auto_commit_interval: config.auto_commit_interval,
            next_auto_commit: deadline_after(config.auto_commit_interval),
            auto_commit_in_flight: None,
            api_timeout: config.default_api_timeout,
        }
    }

    /// The member id this consumer joins with.
    pub fn member_id(&self) -> &str {
        &self.member_id
    }

    /// The member's current id and epoch (epoch 0 while joining).
    pub fn identity(&self) -> MemberIdentity {
        self.identity.borrow().clone()
    }

    /// The application called `poll`.
    pub fn polled(&self) {
        self.poll_timer.touch();
    }

    fn runtime() -> Result<(), ConsumerError> {
        tokio::runtime::Handle::try_current()
            .map(|_| ())
            .map_err(|_| {
                ConsumerError::IllegalState("a group consumer needs a tokio runtime".into())
            })
    }

    /// Joins the group with `subscription` (or updates it), with `listener` for callbacks.
    pub fn subscribe(
        &mut self,
        subscription: Subscription,
        listener: Box<dyn ConsumerRebalanceListener>,
    ) -> Result<(), ConsumerError> {
        Self::runtime()?;
        if self.membership.is_none() {
            let Some(identity) = self.identity_tx.take() else {
                return Err(ConsumerError::IllegalState("the consumer is closed".into()));
            };
            self.membership = Some(heartbeat::spawn(
                self.settings.clone(),
                self.coordinator.clone(),
                identity,
                self.poll_timer.clone(),
                self.member_id.clone(),
            ));
        }
        *self.listener.get_mut() = listener;
        self.poll_timer.touch();
        self.send(Command::Subscribe(subscription));
        Ok(())
    }

    fn send(&self, command: Command) {
        if let Some(m) = &self.membership {
            let _ = m.commands.send(command);
        }
    }

    /// The next membership event, for `poll` to wait on next to its fetches (never
    /// completes without a membership).
    pub async fn next_event(&mut self) -> Event {
        match &mut self.membership {
            Some(m) => match m.events.recv().await {
                Some(e) => e,
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    /// Keeps an event received while waiting, for the next [`process_events`](Self::process_events).
    pub fn stash(&mut self, event: Event) {
        self.pending.push_back(event);
    }

    fn take_events(&mut self) -> Vec<Event> {
        if let Some(m) = &mut self.membership {
            while let Ok(e) = m.events.try_recv() {
                self.pending.push_back(e);
            }
        }
        self.pending.drain(..).collect()
    }

    /// Handles membership events (from `poll`): losses as they come, then the latest target
    /// assignment, waiting for a revocation's commit until `deadline` at most (the
    /// reconciliation goes on in the next `poll`). A fatal refusal loses every partition, ends
    /// the subscription and is returned. Cancel-safe: the events are taken without awaiting,
    /// and the target and the revocation's commit stay until reconciled.
    pub async fn process_events(
        &mut self,
        subscriptions: &mut SubscriptionState,
        fetcher: &mut Fetcher,
        deadline: Instant,
    ) -> Result<(), ConsumerError> {
        self.take_losses(subscriptions, fetcher)?;
        if let Some(target) = self.target.clone() {
            if subscriptions.is_subscribed()
                && !self
                    .reconcile(target, subscriptions, fetcher, deadline)
                    .await
            {
                return Ok(());
            }
            self.target = None;
        }
        Ok(())
    }

    /// Takes the events received so far, without awaiting: losses (and a fatal refusal, which
    /// is returned) are handled at once, so nothing of a lost partition is returned after
    /// this; the latest target assignment is kept for [`process_events`](Self::process_events).
    pub fn take_losses(
        &mut self,
        subscriptions: &mut SubscriptionState,
        fetcher: &mut Fetcher,
    ) -> Result<(), ConsumerError> {
        let mut events = self.take_events().into_iter();
        while let Some(event) = events.next() {
            match event {
                Event::Assignment(t) => self.target = Some(t),
                Event::Lost(why) => {
                    self.target = None;
                    tracing::warn!(group = %self.settings.group_id, "{why}: giving up every partition");
                    self.lose_all(subscriptions, fetcher);
                    self.send(Command::LostHandled);
                }
                Event::Fatal(e) => {
                    self.target = None;
                    self.lose_all(subscriptions, fetcher);
                    subscriptions.unsubscribe();
                    self.pending.extend(events);
                    return Err(e.into());
                }
            }
        }
        Ok(())
    }

    /// Gives up every partition without committing (`on_partitions_lost`).
    fn lose_all(&mut self, subscriptions: &mut SubscriptionState, fetcher: &mut Fetcher) {
        self.revoking = None;
        let owned: Vec<TopicPartition> = subscriptions.assigned().into_iter().collect();
        fetcher.clear();
        subscriptions.clear_partitions();
        if !owned.is_empty() {
            self.listener.get_mut().on_partitions_lost(&owned);
        }
    }

    /// Moves the owned partitions to `target` (see the module docs). Partitions taken wait
    /// for their committed offset, which `poll` looks up next, before fetching them. False
    /// when the commit before a revocation was not answered by `deadline`: the partitions
    /// stay marked as being given up (not fetched, nothing returned) and the next call waits
    /// for the same commit.
    async fn reconcile(
        &mut self,
        target: BTreeSet<TopicPartition>,
        subscriptions: &mut SubscriptionState,
        fetcher: &mut Fetcher,
        deadline: Instant,
    ) -> bool {
        let plan = reconcile(&subscriptions.assigned(), &target);
        subscriptions.keep_pending_revocation(&plan.revoked);
        if self
            .revoking
            .as_ref()
            .is_some_and(|r| r.partitions != plan.revoked)
        {
            self.revoking = None;
        }
        if plan.revoked.is_empty() && plan.added.is_empty() {
            // Still reported: see `Command::Owned`.
            self.send(Command::Owned(subscriptions.assigned()));
            return true;
        }
        if !plan.revoked.is_empty() {
            // Nothing of them is fetched or returned from here on.
            let mut newly = false;
            for tp in &plan.revoked {
                newly |= subscriptions.mark_pending_revocation(tp);
            }
            if newly {
                tracing::info!(group = %self.settings.group_id, revoked = ?plan.revoked, added = ?plan.added, "reconciling the assignment");
                fetcher.cancel_fetches();
            }
            for tp in &plan.revoked {
                fetcher.discard(tp);
            }
            if self.revoking.is_none() {
                let offsets = self.offsets_on_revoke(subscriptions, &plan.revoked);
                if !offsets.is_empty() {
                    let timeout = self.api_timeout;
                    match self.commit_async(offsets, subscriptions, timeout) {
                        Ok(answer) => {
                            self.revoking = Some(Revoking {
                                partitions: plan.revoked.clone(),
                                answer,
                            })
                        }
                        Err(e) => {
                            tracing::warn!(group = %self.settings.group_id, error = %e, "committing partitions before giving them up failed")
                        }
                    }
                }
            }
            if let Some(r) = &mut self.revoking {
                let answer = match tokio::time::timeout_at(deadline.into(), &mut r.answer).await {
                    Err(_) => return false,
                    Ok(a) => a,
                };
                self.revoking = None;
                if let Err(e) = answer.unwrap_or_else(|_| {
                    Err(ConsumerError::IllegalState(
                        "the commit task stopped".into(),
                    ))
                }) {
                    tracing::warn!(group = %self.settings.group_id, error = %e, "committing partitions before giving them up failed");
                }
            }
            // From here to the report, nothing awaits: a cancelled poll never leaves a
            // partition half given up or taken without its callback.
            self.listener.get_mut().on_partitions_revoked(&plan.revoked);
            for tp in &plan.revoked {
                subscriptions.remove(tp);
            }
        }
        if !plan.added.is_empty() {
            if plan.revoked.is_empty() {
                tracing::info!(group = %self.settings.group_id, added = ?plan.added, "reconciling the assignment");
            }
            for tp in &plan.added {
                subscriptions.add_owned(tp.clone());
            }
            self.listener.get_mut().on_partitions_assigned(&plan.added);
        }
        self.send(Command::Owned(subscriptions.assigned()));
        true
    }

    /// What to commit before giving up `revoked`: with auto commit their consumed positions,
    /// then what the listener asks for them.
    fn offsets_on_revoke(
        &mut self,
        subscriptions: &SubscriptionState,
        revoked: &[TopicPartition],
    ) -> BTreeMap<TopicPartition, OffsetAndMetadata> {
        let mut offsets = if self.auto_commit {
            consumed_offsets(subscriptions, Some(revoked))
        } else {
            BTreeMap::new()
        };
        let asked = self.listener.get_mut().offsets_to_commit_on_revoke(revoked);
        offsets.extend(asked.into_iter().filter(|(tp, _)| revoked.contains(tp)));
        offsets
    }

    /// A lookup of the committed offsets of `tps` (for partitions that wait for them),
    /// retrying coordinator errors for up to `request.timeout.ms`; run in the background.
    pub fn committed_lookup(
        &self,
        tps: Vec<TopicPartition>,
    ) -> impl Future<Output = CommittedAnswer> + Send + 'static {
        let coordinator = self.coordinator.clone();
        let patience = self.retry.timeout;
        async move { fetch_committed(&coordinator, &tps, patience).await }
    }

    /// The group's committed offsets of `tps` (`None`: nothing committed), per partition.
    pub async fn fetch_committed(
        &self,
        tps: &[TopicPartition],
        patience: Duration,
    ) -> Result<BTreeMap<TopicPartition, Result<Option<OffsetAndMetadata>, ApiError>>, ApiError>
    {
        fetch_committed(&self.coordinator, tps, patience).await
    }

    /// Queues a commit of `offsets` behind earlier ones, to be done within `timeout`; the
    /// receiver gets the outcome. A subscribed consumer commits as the group member, one using
    /// `assign` from outside the group (epoch -1).
    pub fn commit_async(
        &mut self,
        offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
        subscriptions: &SubscriptionState,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<CommitResult>, ConsumerError> {
        let by = if subscriptions.is_subscribed() {
            CommitBy::Member {
                owned: offsets
                    .keys()
                    .filter(|tp| subscriptions.is_assigned(tp))
                    .cloned()
                    .collect(),
            }
        } else {
            CommitBy::Outsider
        };
        self.enqueue(offsets, by, timeout)
    }

    fn enqueue(
        &mut self,
        offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
        by: CommitBy,
        timeout: Duration,
    ) -> Result<oneshot::Receiver<CommitResult>, ConsumerError> {
        if self.committer.is_none() {
            Self::runtime()?;
            self.committer = Some(Committer::spawn(
                self.coordinator.clone(),
                self.identity.clone(),
                self.retry,
            ));
        }
        match &self.committer {
            Some(c) => Ok(c.enqueue(offsets, by, timeout)),
            None => Err(ConsumerError::IllegalState("no commit task".into())),
        }
    }

    /// Commits `offsets` after every commit queued before, and waits for the outcome: for
    /// `default.api.timeout.ms` at most, waiting behind earlier commits included.
    pub async fn commit_sync(
        &mut self,
        offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
        subscriptions: &SubscriptionState,
    ) -> CommitResult {
        let deadline = deadline_after(self.api_timeout);
        let partitions: Vec<TopicPartition> = offsets.keys().cloned().collect();
        let rx = self.commit_async(offsets, subscriptions, self.api_timeout)?;
        match tokio::time::timeout_at(deadline.into(), rx).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(ConsumerError::IllegalState(
                "the commit task stopped (the runtime is shutting down)".into(),
            )),
            // Dropping the receiver tells the commit task not to send it any more.
            Err(_) => Err(commit::timed_out(partitions)),
        }
    }

    /// Waits until every commit queued so far is done (for `default.api.timeout.ms` at
    /// most): a barrier through the commit task.
    async fn flush_commits(&mut self) {
        if self.committer.is_none() {
            return;
        }
        if let Ok(rx) = self.enqueue(BTreeMap::new(), CommitBy::Outsider, self.api_timeout)
            && tokio::time::timeout(self.api_timeout, rx).await.is_err()
        {
            tracing::warn!(group = %self.settings.group_id, "commits still pending after default.api.timeout.ms");
        }
    }

    /// Every `auto.commit.interval.ms` (from `poll`): commits the consumed positions in the
    /// background; a failure is logged (the next one commits again).
    pub fn maybe_auto_commit(&mut self, subscriptions: &SubscriptionState) {
        if !self.auto_commit {
            return;
        }
        if let Some(rx) = &mut self.auto_commit_in_flight {
            match rx.try_recv() {
                Err(oneshot::error::TryRecvError::Empty) => return,
                Ok(Err(e)) => {
                    tracing::warn!(group = %self.settings.group_id, error = %e, "auto commit failed")
                }
                _ => {}
            }
            self.auto_commit_in_flight = None;
        }
        let now = Instant::now();
        if now < self.next_auto_commit {
            return;
        }
        self.next_auto_commit = deadline_after(self.auto_commit_interval);
        let offsets = consumed_offsets(subscriptions, None);
        if offsets.is_empty() {
            return;
        }
        match self.commit_async(offsets, subscriptions, self.retry.timeout) {
            Ok(rx) => self.auto_commit_in_flight = Some(rx),
            Err(e) => tracing::warn!(error = %e, "auto commit failed"),
        }
    }

    /// Gives the assignment up on unsubscribe or close: partitions already lost go without a
    /// commit; otherwise (auto commit) the consumed positions are committed — without auto
    /// commit, the commits made before are waited for — then, for a subscribed consumer,
    /// `on_partitions_revoked` runs and the member leaves the group. Returns the commit's
    /// failure, after doing the rest anyway.
    pub async fn release(
        &mut self,
        subscriptions: &mut SubscriptionState,
        fetcher: &mut Fetcher,
    ) -> CommitResult {
        for event in self.take_events() {
            if matches!(event, Event::Lost(_) | Event::Fatal(_)) {
                self.lose_all(subscriptions, fetcher);
            }
        }
        self.revoking = None;
        fetcher.clear();
        let mut result = Ok(());
        let owned: Vec<TopicPartition> = if subscriptions.is_subscribed() {
            subscriptions.assigned().into_iter().collect()
        } else {
            Vec::new()
        };
        let offsets = if !owned.is_empty() {
            self.offsets_on_revoke(subscriptions, &owned)
        } else if self.auto_commit {
            consumed_offsets(subscriptions, None)
        } else {
            BTreeMap::new()
        };
        if offsets.is_empty() {
            // Async commits still queued go out before the member leaves (they would be
            // refused after it).
            self.flush_commits().await;
        } else {
            result = self.commit_sync(offsets, subscriptions).await;
        }
        if subscriptions.is_subscribed() {
            if !owned.is_empty() {
                self.listener.get_mut().on_partitions_revoked(&owned);
            }
            subscriptions.clear_partitions();
            self.leave().await;
        }
        result
    }

    /// Leaves the group (waiting for the leave heartbeat's answer, bounded) and drops the
    /// events of the membership that ended.
    async fn leave(&mut self) {
        if let Some(m) = &mut self.membership {
            let (tx, rx) = oneshot::channel();
            if m.commands.send(Command::Leave(tx)).is_ok() {
                let bound = self.retry.timeout.saturating_add(Duration::from_secs(5));
                let _ = tokio::time::timeout(bound, rx).await;
            }
            while m.events.try_recv().is_ok() {}
        }
        self.pending.clear();
        self.target = None;
    }

    /// Stops the membership task (after [`release`](Self::release), so it has nothing left
    /// to do) and the commit task.
    pub async fn shutdown(&mut self) {
        self.committer = None;
        if let Some(m) = self.membership.take() {
            let MembershipHandle { commands, task, .. } = m;
            drop(commands);
            if tokio::time::timeout(Duration::from_secs(5), task)
                .await
                .is_err()
            {
                tracing::debug!(group = %self.settings.group_id, "the membership task did not stop in time");
            }
        }
    }
}

/// The consumed positions (of `only`, when given) as offsets to commit.
pub(crate) fn consumed_offsets(
    subscriptions: &SubscriptionState,
    only: Option<&[TopicPartition]>,
) -> BTreeMap<TopicPartition, OffsetAndMetadata> {
    subscriptions
        .consumed()
        .into_iter()
        .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
        .map(|(tp, (offset, epoch))| {
            (
                tp,
                OffsetAndMetadata {
                    offset,
                    leader_epoch: (epoch >= 0).then_some(epoch),
                    metadata: String::new(),
                },
            )
        })
        .collect()
}

/// OffsetFetch of `tps` (every committed partition when empty) from the group's coordinator.
pub(crate) async fn fetch_committed(
    coordinator: &CoordinatorClient,
    tps: &[TopicPartition],
    patience: Duration,
) -> Result<BTreeMap<TopicPartition, Result<Option<OffsetAndMetadata>, ApiError>>, ApiError> {
    let mut topics: Vec<OffsetFetchTopic> = Vec::new();
    for tp in tps.iter().collect::<BTreeSet<_>>() {
        match topics.last_mut() {
            Some(t) if t.name == tp.topic => t.partition_indexes.push(tp.partition),
            _ => topics.push(OffsetFetchTopic {
                name: tp.topic.clone(),
                partition_indexes: vec![tp.partition],
            }),
        }
    }
    let request = OffsetFetchRequest {
        group_id: coordinator.group_id().to_owned(),
        topics,
    };
    let response = coordinator
        .call(patience, |mut c| {
            let request = request.clone();
            async move { c.offset_fetch(request).await }
        })
        .await?;
    if let Some(e) = response_error(response.error_code, &response.error_message) {
        return Err(e);
    }
    let mut out = BTreeMap::new();
    for t in response.topics {
        for p in t.partitions {
            let tp = TopicPartition::new(t.name.as_str(), p.index);
            let r = match response_error(p.error_code, &p.error_message) {
                Some(e) => Err(e),
                None if p.committed_offset < 0 => Ok(None),
                None => Ok(Some(OffsetAndMetadata {
                    offset: p.committed_offset,
                    leader_epoch: (p.committed_leader_epoch >= 0)
                        .then_some(p.committed_leader_epoch),
                    metadata: p.metadata,
                })),
            };
            out.insert(tp, r);
        }
    }
    for tp in tps {
        out.entry(tp.clone()).or_insert(Ok(None));
    }
    Ok(out)
}

/// A committed-offset error as the error `committed()` returns.
pub(crate) fn first_error(
    results: &BTreeMap<TopicPartition, Result<Option<OffsetAndMetadata>, ApiError>>,
) -> Option<ApiError> {
    results.iter().find_map(|(tp, r)| {
        r.as_ref()
            .err()
            .map(|e| ApiError::new(e.code, format!("{tp}: {}", e.message)))
    })
}

/// UNKNOWN_MEMBER_ID and the like mean the same to an outsider: the group has members.
pub(crate) fn group_has_members(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::UnknownMemberId
            | ErrorCode::IllegalGeneration
            | ErrorCode::StaleMemberEpoch
            | ErrorCode::FencedMemberEpoch
            | ErrorCode::RebalanceInProgress
            | ErrorCode::NonEmptyGroup
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(list: &[(&str, i32)]) -> BTreeSet<TopicPartition> {
        list.iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect()
    }

    fn tps(list: &[(&str, i32)]) -> Vec<TopicPartition> {
        list.iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect()
    }

    #[test]
    fn reconciliation_revokes_what_is_not_targeted_and_adds_what_is_new() {
        let owned = set(&[("a", 0), ("a", 1), ("b", 0)]);
        let target = set(&[("a", 1), ("b", 0), ("b", 1), ("c", 0)]);
        assert_eq!(
            reconcile(&owned, &target),
            ReconciliationPlan {
                revoked: tps(&[("a", 0)]),
                added: tps(&[("b", 1), ("c", 0)]),
            }
        );
        assert_eq!(reconcile(&owned, &owned), ReconciliationPlan::default());
        assert_eq!(
            reconcile(&owned, &BTreeSet::new()).revoked,
            owned.iter().cloned().collect::<Vec<_>>()
        );
        assert_eq!(
            reconcile(&BTreeSet::new(), &target).added,
            target.iter().cloned().collect::<Vec<_>>()
        );
    }

    #[test]
    fn commits_take_consumed_positions_only() {
        let mut s = SubscriptionState::default();
        s.subscribe(Subscription::Topics(["a".to_string()].into()))
            .unwrap();
        for p in 0..3 {
            s.add_owned(TopicPartition::new("a", p));
        }
        s.seek(&TopicPartition::new("a", 0), 10);
        s.advance(&TopicPartition::new("a", 1), 4, 2);
        s.seek(&TopicPartition::new("a", 1), 5);
        s.advance(&TopicPartition::new("a", 1), 7, 3);
        let all = consumed_offsets(&s, None);
        assert_eq!(all.len(), 2, "a-2 has no position: {all:?}");
        assert_eq!(all[&TopicPartition::new("a", 1)].offset, 7);
        assert_eq!(all[&TopicPartition::new("a", 1)].leader_epoch, Some(3));
        assert_eq!(all[&TopicPartition::new("a", 0)].leader_epoch, None);
        let only = consumed_offsets(&s, Some(&tps(&[("a", 1)])));
        assert_eq!(only.keys().cloned().collect::<Vec<_>>(), tps(&[("a", 1)]));
    }
}
