//! The consumer (Kafka's `KafkaConsumer`): the application's calls, tying the subscription
//! state, the fetcher, offset lookups and (with a `group.id`) the group coordinator together.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rill_protocol::client::ClusterClient;
use rill_protocol::{ApiError, TopicPartition};
use tokio::task::JoinHandle;

use crate::config::{ConsumerConfig, deadline_after};
use crate::consumer_coordinator::heartbeat::Event;
use crate::consumer_coordinator::{
    CommittedAnswer, ConsumerCoordinator, ConsumerRebalanceListener, first_error,
};
use crate::coordinator_client::is_coordinator_retriable;
use crate::fetcher::{Fetcher, Finished};
use crate::offset_fetcher::{self, Asked, EARLIEST, Found, LATEST, Lookup};
use crate::subscription_state::{FetchState, Subscription, SubscriptionState, compile_pattern};
use crate::{ConsumerError, ConsumerRecord, OffsetAndMetadata, OffsetReset};

/// A consumer of assigned partitions, or (with a `group.id`) of the partitions its group's
/// coordinator gives it.
pub struct Consumer {
    config: ConsumerConfig,
    client: ClusterClient,
    pub(crate) subscriptions: SubscriptionState,
    pub(crate) fetcher: Fetcher,
    /// Present with a `group.id`.
    coordinator: Option<ConsumerCoordinator>,
    /// The lookup of committed offsets for partitions that wait for them (with a group).
    committed: Lookup<CommittedAnswer>,
    /// The lookup of the offsets `auto.offset.reset` moves partitions to.
    resets: Lookup<Vec<(TopicPartition, Result<Found, ApiError>)>>,
    /// A misuse by a call that cannot fail (`assign` while subscribed, `seek` of a partition
    /// not assigned), returned by the next `poll`.
    misuse: Option<String>,
    closed: bool,
}

/// What woke `poll` up.
enum Wake {
    Fetch(Finished),
    Group(Event),
    /// A lookup of positions has its answer.
    Lookup,
    Timeout,
}

impl Consumer {
    /// A consumer bootstrapping from `config.bootstrap`; the config is validated first.
    pub fn new(config: ConsumerConfig) -> Result<Self, ConsumerError> {
        config.validate()?;
        let client = ClusterClient::new(&config.bootstrap, config.request_timeout)?;
        let fetcher = Fetcher::new(client.clone(), &config);
        let coordinator = config
            .group_id
            .clone()
            .map(|g| ConsumerCoordinator::new(&config, &g, client.clone()));
        Ok(Consumer {
            config,
            client,
            subscriptions: SubscriptionState::default(),
            fetcher,
            coordinator,
            committed: Lookup::new(),
            resets: Lookup::new(),
            misuse: None,
            closed: false,
        })
    }

    /// The cluster client (metadata cache, admin calls) this consumer fetches through.
    pub fn client(&self) -> &ClusterClient {
        &self.client
    }

    /// The member id this consumer joins its group with (a UUID generated once), `None`
    /// without a `group.id`.
    pub fn member_id(&self) -> Option<&str> {
        self.coordinator.as_ref().map(|c| c.member_id())
    }

    /// The member's epoch as of the last heartbeat (0 while joining), `None` without a
    /// `group.id`.
    pub fn member_epoch(&self) -> Option<i32> {
        self.coordinator.as_ref().map(|c| c.identity().epoch)
    }

    fn group(&mut self, what: &str) -> Result<&mut ConsumerCoordinator, ConsumerError> {
        self.coordinator.as_mut().ok_or_else(|| no_group(what))
    }

    fn check_open(&self) -> Result<(), ConsumerError> {
        if self.closed {
            return Err(ConsumerError::IllegalState("the consumer is closed".into()));
        }
        Ok(())
    }

    /// Consumes exactly these partitions (replacing any earlier assignment). Not while
    /// subscribed: then nothing changes and the next `poll` fails, saying so.
    pub fn assign(&mut self, partitions: impl IntoIterator<Item = TopicPartition>) {
        if self.subscriptions.is_subscribed() {
            self.misuse =
                Some("assign() while subscribed to a group: call unsubscribe() first".into());
            return;
        }
        self.fetcher.clear();
        if let Err(e) = self.subscriptions.assign(partitions) {
            self.misuse = Some(e.to_string());
        }
    }

    /// Joins the consumer group (`group.id`) to read `topics`, with partitions handed out by
    /// the group's coordinator; `listener` hears about partitions given and taken (inside
    /// `poll`). Subscribing again replaces the topics and the listener. An empty list is
    /// `unsubscribe` (Kafka's behaviour), which needs `.await`, so it is refused here.
    pub fn subscribe<I, S>(
        &mut self,
        topics: I,
        listener: impl ConsumerRebalanceListener + 'static,
    ) -> Result<(), ConsumerError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let topics: BTreeSet<String> = topics.into_iter().map(Into::into).collect();
        if topics.is_empty() {
            return Err(ConsumerError::IllegalState(
                "subscribe() with no topics: call unsubscribe() to stop consuming".into(),
            ));
        }
        if let Some(t) = topics.iter().find(|t| t.trim().is_empty()) {
            return Err(ConsumerError::IllegalState(format!(
                "subscribe() with an empty topic name {t:?}"
            )));
        }
        self.subscribe_to(Subscription::Topics(topics), Box::new(listener))
    }

    /// Joins the consumer group to read every topic whose whole name matches `pattern` (Rust
    /// `regex` syntax; the coordinator follows topics as they are created and deleted).
    pub fn subscribe_pattern(
        &mut self,
        pattern: &str,
        listener: impl ConsumerRebalanceListener + 'static,
    ) -> Result<(), ConsumerError> {
        if pattern.is_empty() {
            return Err(ConsumerError::IllegalState(
                "subscribe_pattern() with an empty pattern".into(),
            ));
        }
        compile_pattern(pattern)?;
        self.subscribe_to(
            Subscription::Pattern(pattern.to_owned()),
            Box::new(listener),
        )
    }

    fn subscribe_to(
        &mut self,
        subscription: Subscription,
        listener: Box<dyn ConsumerRebalanceListener>,
    ) -> Result<(), ConsumerError> {
        self.check_open()?;
        self.group("subscribe()")?;
        self.subscriptions.subscribe(subscription.clone())?;
        self.group("subscribe()")?.subscribe(subscription, listener)
    }

    /// Stops consuming: a group member commits (auto commit), gives its partitions up
    /// (`on_partitions_revoked`) and leaves the group; a consumer using `assign` just drops its
    /// partitions. Returns the commit's failure, if any (the rest happens anyway).
    pub async fn unsubscribe(&mut self) -> Result<(), ConsumerError> {
        let result = match &mut self.coordinator {
            Some(c) if self.subscriptions.is_subscribed() => {
                c.release(&mut self.subscriptions, &mut self.fetcher).await
            }
            _ => Ok(()),
        };
        self.fetcher.clear();
        self.subscriptions.unsubscribe();
        self.stop_lookups();
        result
    }

    /// Abandons the position lookups in flight (their partitions are gone).
    fn stop_lookups(&mut self) {
        self.committed = Lookup::new();
        self.resets = Lookup::new();
    }

    /// The partitions this consumer reads now: its assignment, or what the group gave it.
    pub fn assignment(&self) -> Vec<TopicPartition> {
        self.subscriptions.assigned().into_iter().collect()
    }

    /// The current subscription, `None` when not subscribed.
    pub fn subscription(&self) -> Option<Subscription> {
        self.subscriptions.subscription().cloned()
    }

    /// All partitions of `topic`. Waits (up to `request.timeout.ms`) for the metadata of a topic
    /// that was just created, but fails at once with UNKNOWN_TOPIC_OR_PARTITION when the
    /// controllers confirm that the topic does not exist: rill creates no topics on first use.
    pub async fn partitions_of(&self, topic: &str) -> Result<Vec<TopicPartition>, ConsumerError> {
        Ok(offset_fetcher::partitions_of(&self.client, &self.config.retry(), topic).await?)
    }

    /// The next offset `poll` returns for `tp` (the position a commit stores), `None` when not
    /// assigned or not known yet.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        self.subscriptions.position(tp)
    }

    /// Continues `tp` from `offset`. Only for assigned partitions: otherwise nothing changes
    /// and the next `poll` fails, saying so.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        if !self.subscriptions.is_assigned(tp) {
            self.misuse = Some(format!(
                "seek() of {tp}, which is not assigned to this consumer"
            ));
            return;
        }
        self.fetcher.cancel_fetches();
        self.fetcher.discard(tp);
        self.subscriptions.seek(tp, offset);
    }

    /// Stops fetching `tps` (assigned ones) until [`resume`](Self::resume); the group keeps
    /// them assigned.
    pub fn pause(&mut self, tps: &[TopicPartition]) {
        self.fetcher.cancel_fetches();
        for tp in tps {
            self.fetcher.discard(tp);
            self.subscriptions.pause(tp);
        }
    }

    /// Fetches paused partitions again.
    pub fn resume(&mut self, tps: &[TopicPartition]) {
        for tp in tps {
            self.subscriptions.resume(tp);
        }
    }

    /// The paused partitions.
    pub fn paused(&self) -> Vec<TopicPartition> {
        self.subscriptions.paused()
    }

    /// Seeks to the log start of each partition.
    pub async fn seek_to_beginning(&mut self, tps: &[TopicPartition]) -> Result<(), ConsumerError> {
        for (tp, off) in self.list_offsets(tps, EARLIEST).await? {
            self.seek(&tp, off.map_or(0, |o| o.0));
        }
        Ok(())
    }

    /// Seeks to the high watermark of each partition.
    pub async fn seek_to_end(&mut self, tps: &[TopicPartition]) -> Result<(), ConsumerError> {
        for (tp, off) in self.list_offsets(tps, LATEST).await? {
            self.seek(&tp, off.map_or(0, |o| o.0));
        }
        Ok(())
    }

    /// For each partition, the first offset whose timestamp is ≥ the given time (and that
    /// record's timestamp), or `None` when every record is older.
    pub async fn offsets_for_times(
        &self,
        times: &[(TopicPartition, i64)],
    ) -> Result<Vec<(TopicPartition, Option<(i64, i64)>)>, ConsumerError> {
        let mut out = Vec::new();
        for (tp, ts) in times {
            let r = self.list_offsets(std::slice::from_ref(tp), *ts).await?;
            out.extend(r);
        }
        Ok(out)
    }

    async fn list_offsets(
        &self,
        tps: &[TopicPartition],
        timestamp: i64,
    ) -> Result<Vec<(TopicPartition, Found)>, ConsumerError> {
        offset_fetcher::list_offsets(&self.client, &self.config.retry(), tps, timestamp)
            .await
            .into_iter()
            .map(|(tp, r)| r.map(|f| (tp, f)).map_err(ConsumerError::from))
            .collect()
    }

    /// The group's committed offsets of `tps` (`None` where nothing is committed).
    pub async fn committed(
        &mut self,
        tps: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<OffsetAndMetadata>>, ConsumerError> {
        let timeout = self.config.request_timeout;
        let results = self
            .group("committed()")?
            .fetch_committed(tps, timeout)
            .await?;
        if let Some(e) = first_error(&results) {
            return Err(e.into());
        }
        Ok(results
            .into_iter()
            .filter_map(|(tp, r)| r.ok().map(|o| (tp, o)))
            .collect())
    }

    /// What a commit of `offsets` stores: the given offsets, or (`None`) the consumed
    /// positions of every assigned partition.
    fn offsets_to_commit(
        &self,
        offsets: Option<BTreeMap<TopicPartition, OffsetAndMetadata>>,
    ) -> BTreeMap<TopicPartition, OffsetAndMetadata> {
        offsets.unwrap_or_else(|| {
            crate::consumer_coordinator::consumed_offsets(&self.subscriptions, None)
        })
    }

    /// Commits `offsets` (`None`: the consumed position of every assigned partition) for the
    /// group and waits for the answer, after every commit made before it. A group member
    /// commits as itself (a STALE_MEMBER_EPOCH is retried once with the next heartbeat's
    /// epoch); a consumer using `assign` commits from outside the group (epoch -1), which the
    /// coordinator allows only while the group has no members. Waits `default.api.timeout.ms`
    /// at most, the commits queued before it included.
    pub async fn commit_sync(
        &mut self,
        offsets: Option<BTreeMap<TopicPartition, OffsetAndMetadata>>,
    ) -> Result<(), ConsumerError> {
        self.check_open()?;
        self.group("commit_sync()")?;
        let offsets = self.offsets_to_commit(offsets);
        if offsets.is_empty() {
            return Ok(());
        }
        let Some(c) = &mut self.coordinator else {
            return Err(no_group("commit_sync()"));
        };
        c.commit_sync(offsets, &self.subscriptions).await
    }

    /// Like [`commit_sync`](Self::commit_sync) without waiting: the commit is queued (in
    /// order with other commits) and the handle resolves to its outcome; dropping the handle
    /// does not cancel it. It fails with REQUEST_TIMED_OUT when not done within
    /// `request.timeout.ms` of this call (waiting behind earlier commits included).
    pub fn commit_async(
        &mut self,
        offsets: Option<BTreeMap<TopicPartition, OffsetAndMetadata>>,
    ) -> Result<JoinHandle<Result<(), ConsumerError>>, ConsumerError> {
        self.check_open()?;
        self.group("commit_async()")?;
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConsumerError::IllegalState(
                "commit_async() needs a tokio runtime".into(),
            ));
        }
        let offsets = self.offsets_to_commit(offsets);
        let rx = match &mut self.coordinator {
            _ if offsets.is_empty() => None,
            Some(c) => {
                Some(c.commit_async(offsets, &self.subscriptions, self.config.request_timeout)?)
            }
            None => return Err(no_group("commit_async()")),
        };
        Ok(tokio::spawn(async move {
            match rx {
                None => Ok(()),
                Some(rx) => rx.await.unwrap_or_else(|_| {
                    Err(ConsumerError::IllegalState(
                        "the commit task stopped".into(),
                    ))
                }),
            }
        }))
    }

    /// Records from the assigned partitions, waiting up to `timeout` for some. In a group,
    /// this is also where the assignment changes: rebalance callbacks run here, on the
    /// caller's task, and consumed positions are committed every `auto.commit.interval.ms`.
    /// Not calling `poll` for `max.poll.interval.ms` makes the member leave the group.
    pub async fn poll(&mut self, timeout: Duration) -> Result<Vec<ConsumerRecord>, ConsumerError> {
        self.check_open()?;
        if let Some(m) = self.misuse.take() {
            return Err(ConsumerError::IllegalState(m));
        }
        let deadline = deadline_after(timeout);
        loop {
            if let Some(c) = &mut self.coordinator {
                // Inside poll the application is responsive: the poll timer restarts.
                c.polled();
                c.process_events(&mut self.subscriptions, &mut self.fetcher, deadline)
                    .await?;
                c.maybe_auto_commit(&self.subscriptions);
            }
            if self.fetcher.has_buffered()
                && let Some(records) = self.hand_over().await?
            {
                return Ok(records);
            }
            self.resolve_positions()?;
            self.fetcher
                .start_fetches(&self.subscriptions, deadline)
                .await;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let in_flight = !self.fetcher.nothing_in_flight();
            if remaining.is_zero() && !in_flight {
                return Ok(Vec::new());
            }
            // A partition whose fetch failed goes out again when its backoff ends, not when
            // another fetch to its broker comes back (up to fetch.max.wait.ms); so does the
            // lookup of positions that could not be found (committed offsets, resets). With nothing
            // in flight (partitions backing off, without a leader, or not positioned or
            // assigned yet), look again at least every 100 ms.
            let backoff = [
                self.fetcher.backoff_ends_in(),
                self.committed.backoff_ends_in(),
                self.resets.backoff_ends_in(),
            ]
            .into_iter()
            .flatten()
            .min();
            let nap = if in_flight {
                backoff.map_or(remaining, |b| remaining.min(b))
            } else {
                remaining
                    .min(backoff.unwrap_or(Duration::from_millis(100)))
                    .max(Duration::from_millis(1))
            };
            // Membership events first: a partition lost meanwhile is given up before records
            // are taken.
            let wake = tokio::select! {
                biased;
                e = group_event(self.coordinator.as_mut()) => Wake::Group(e),
                Some(f) = self.fetcher.next_finished(), if in_flight => Wake::Fetch(f),
                _ = self.committed.ready() => Wake::Lookup,
                _ = self.resets.ready() => Wake::Lookup,
                _ = tokio::time::sleep(nap) => Wake::Timeout,
            };
            match wake {
                Wake::Group(e) => {
                    if let Some(c) = &mut self.coordinator {
                        c.stash(e);
                    }
                    continue;
                }
                Wake::Lookup => continue,
                Wake::Fetch(f) => {
                    // On an error, what the answer brought stays buffered (the consumed
                    // positions do not move) for the next poll.
                    self.fetcher.complete(f, &mut self.subscriptions)?;
                    if self.fetcher.has_buffered()
                        && let Some(records) = self.hand_over().await?
                    {
                        return Ok(records);
                    }
                }
                Wake::Timeout => {}
            }
            if Instant::now() >= deadline {
                self.fetcher
                    .start_fetches(&self.subscriptions, deadline)
                    .await;
                return Ok(Vec::new());
            }
        }
    }

    /// Returns the buffered records. The next fetches start first — the last await, so a poll
    /// cancelled there loses nothing: the records stay buffered and the consumed positions
    /// unchanged. Then what was received is CRC-checked and parsed while the brokers read
    /// the next fetches (Kafka's poll sends its next fetches before handing records over too),
    /// the membership events that arrived meanwhile are taken (records of a partition just
    /// lost are never returned), and the records go to the application, moving the consumed
    /// positions past them. `None` when the batches received held no records.
    async fn hand_over(&mut self) -> Result<Option<Vec<ConsumerRecord>>, ConsumerError> {
        // Records are ready: a metadata lookup is not waited for (it goes on meanwhile).
        self.fetcher
            .start_fetches(&self.subscriptions, Instant::now())
            .await;
        self.fetcher.parse_buffered(&mut self.subscriptions)?;
        if !self.fetcher.has_buffered() {
            return Ok(None);
        }
        if let Some(c) = &mut self.coordinator {
            c.take_losses(&mut self.subscriptions, &mut self.fetcher)?;
        }
        Ok(Some(self.fetcher.drain(&mut self.subscriptions)))
    }

    /// Gives every partition without a position one: the group's committed offset (with a
    /// `group.id`), else `auto.offset.reset`. The lookups run in the background (see
    /// [`Lookup`]): this takes the answers that are there and starts the lookups due, so it
    /// never waits. Partitions a lookup could not position (coordinator or leader trouble,
    /// metadata not there yet) wait for the next one; other errors are returned.
    fn resolve_positions(&mut self) -> Result<(), ConsumerError> {
        let retry = self.config.retry();
        let mut error: Option<ConsumerError> = None;
        if let Some((asked, answer)) = self.committed.take() {
            let mut waiting = false;
            match answer {
                Some(Ok(committed)) => {
                    for (tp, incarnation) in asked {
                        if !self
                            .subscriptions
                            .still(&tp, incarnation, FetchState::Initializing)
                        {
                            continue;
                        }
                        match committed.get(&tp) {
                            Some(Ok(Some(o))) => {
                                let epoch = o.leader_epoch.unwrap_or(-1);
                                self.subscriptions.seek_with_epoch(&tp, o.offset, epoch);
                            }
                            Some(Ok(None)) => {
                                self.subscriptions
                                    .set_fetch_state(&tp, FetchState::AwaitReset);
                            }
                            Some(Err(e)) if e.code.is_retriable() => waiting = true,
                            Some(Err(e)) => {
                                waiting = true;
                                error.get_or_insert(
                                    ApiError::new(e.code, format!("{tp}: {}", e.message)).into(),
                                );
                            }
                            None => waiting = true,
                        }
                    }
                }
                Some(Err(e)) if is_coordinator_retriable(e.code) => {
                    tracing::debug!(error = %e, "committed offsets unavailable; trying again");
                    waiting = true;
                }
                Some(Err(e)) => {
                    waiting = true;
                    error.get_or_insert(e.into());
                }
                None => waiting = true,
            }
            self.committed.ended(waiting, &retry);
        }
        match &self.coordinator {
            Some(c) => {
                if self.committed.may_start() {
                    let asked = self.waiting(FetchState::Initializing);
                    if !asked.is_empty() {
                        let tps = asked.iter().map(|(tp, _)| tp.clone()).collect();
                        self.committed.start(asked, c.committed_lookup(tps));
                    }
                }
            }
            None => {
                for tp in self.subscriptions.in_state(FetchState::Initializing) {
                    self.subscriptions
                        .set_fetch_state(&tp, FetchState::AwaitReset);
                }
            }
        }
        if let Some((asked, answer)) = self.resets.take() {
            let mut waiting = false;
            let found: BTreeMap<_, _> = answer.unwrap_or_default().into_iter().collect();
            for (tp, incarnation) in asked {
                if !self
                    .subscriptions
                    .still(&tp, incarnation, FetchState::AwaitReset)
                {
                    continue;
                }
                match found.get(&tp) {
                    Some(Ok(off)) => {
                        self.subscriptions.seek(&tp, off.map_or(0, |o| o.0));
                    }
                    Some(Err(e)) if e.code.is_retriable() => {
                        tracing::debug!(partition = %tp, error = %e, "no offset to reset to yet; trying again");
                        waiting = true;
                    }
                    Some(Err(e)) => {
                        waiting = true;
                        error.get_or_insert(
                            ApiError::new(e.code, format!("{tp}: {}", e.message)).into(),
                        );
                    }
                    None => waiting = true,
                }
            }
            self.resets.ended(waiting, &retry);
        }
        if let Some(e) = error {
            return Err(e);
        }
        let missing = self.waiting(FetchState::AwaitReset);
        if missing.is_empty() {
            return Ok(());
        }
        let timestamp = match self.config.auto_offset_reset {
            OffsetReset::Earliest => EARLIEST,
            OffsetReset::Latest => LATEST,
            OffsetReset::None => {
                return Err(ConsumerError::NoOffset {
                    partitions: missing.into_iter().map(|(tp, _)| tp).collect(),
                });
            }
        };
        if self.resets.may_start() {
            let client = self.client.clone();
            let tps: Vec<TopicPartition> = missing.iter().map(|(tp, _)| tp.clone()).collect();
            self.resets.start(missing, async move {
                offset_fetcher::list_offsets(&client, &retry, &tps, timestamp).await
            });
        }
        Ok(())
    }

    /// The partitions in `state`, with their incarnations.
    fn waiting(&self, state: FetchState) -> Asked {
        self.subscriptions
            .in_state(state)
            .into_iter()
            .filter_map(|tp| self.subscriptions.incarnation(&tp).map(|i| (tp, i)))
            .collect()
    }

    /// Ends the consumer: with auto commit the consumed positions are committed; a group
    /// member gives its partitions up (`on_partitions_revoked`) and leaves the group (epoch
    /// -1, or -2 for a static member, whose partitions then wait for it for the session
    /// timeout); background tasks stop. Returns the commit's failure, if any (the rest happens
    /// anyway). Calling it again does nothing; other calls fail afterwards.
    pub async fn close(&mut self) -> Result<(), ConsumerError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let result = match &mut self.coordinator {
            Some(c) => {
                let r = c.release(&mut self.subscriptions, &mut self.fetcher).await;
                c.shutdown().await;
                r
            }
            None => Ok(()),
        };
        self.fetcher.clear();
        self.subscriptions.unsubscribe();
        self.stop_lookups();
        result
    }
}

/// The error of a group call without a `group.id`.
fn no_group(what: &str) -> ConsumerError {
    ConsumerError::IllegalState(format!(
        "{what} needs a consumer group: set group_id (group.id) in the ConsumerConfig"
    ))
}

/// The next membership event of a group consumer; never completes without a group.
async fn group_event(coordinator: Option<&mut ConsumerCoordinator>) -> Event {
    match coordinator {
        Some(c) => c.next_event().await,
        None => std::future::pending().await,
    }
}
