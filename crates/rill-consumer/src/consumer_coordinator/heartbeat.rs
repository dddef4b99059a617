//! The member's background task (Kafka's `ConsumerHeartbeatRequestManager` and the network side
//! of its `ConsumerMembershipManager`): joins with epoch 0 and the client's member id, then
//! heartbeats every `heartbeat_interval_ms` the coordinator asks for — at once when the
//! application reports partitions given up or taken — and hands new target assignments to the
//! application, which reconciles them inside `poll`.
//!
//! The task keeps heartbeating while the application does not poll, but once
//! `max.poll.interval.ms` passes without a poll it leaves the group (its partitions are then
//! lost) and rejoins on the next poll. Fenced (FENCED_MEMBER_EPOCH, UNKNOWN_MEMBER_ID) it
//! reports the partitions lost and rejoins with epoch 0 once the application gave them up.
//! Dropping the application's side stops the task (leaving the group, best effort).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rill_protocol::proto::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, TopicNames, TopicPartitions,
    TopicPartitionsList,
};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;

use crate::config::RetryPolicy;
use crate::coordinator_client::{CoordinatorClient, is_coordinator_retriable};
use crate::error::response_error;
use crate::subscription_state::Subscription;

/// Epoch of a heartbeat that leaves the group.
pub(crate) const LEAVE_EPOCH: i32 = -1;
/// Epoch of a static member leaving for a quick restart (its assignment is kept).
pub(crate) const LEAVE_STATIC_EPOCH: i32 = -2;

/// The member settings of the consumer config.
#[derive(Clone, Debug)]
pub(crate) struct MembershipSettings {
    pub group_id: String,
    pub instance_id: Option<String>,
    pub rack_id: Option<String>,
    pub client_id: String,
    pub rebalance_timeout_ms: i32,
    pub assignor: Option<String>,
    pub retry: RetryPolicy,
    pub max_poll_interval: Duration,
}

/// Who the member is now, for commits: its id and the epoch of the last heartbeat answer
/// (0 while joining).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct MemberIdentity {
    pub member_id: String,
    pub epoch: i32,
}

/// What the application asks of the task.
#[derive(Debug)]
pub(crate) enum Command {
    /// Join (or update the subscription of) the group.
    Subscribe(Subscription),
    /// The partitions owned now, after a reconciliation: heartbeat at once.
    Owned(BTreeSet<TopicPartition>),
    /// The application gave up every partition after [`Event::Lost`]: rejoin.
    LostHandled,
    /// Leave the group and stay out until the next subscribe; answered once left.
    Leave(oneshot::Sender<()>),
}

/// What the task tells the application, handled in `poll`.
#[derive(Debug)]
pub(crate) enum Event {
    /// The coordinator's whole target assignment.
    Assignment(BTreeSet<TopicPartition>),
    /// Every partition is lost (fenced, or left after the poll timeout): give them up without
    /// committing, then answer [`Command::LostHandled`].
    Lost(String),
    /// The group refused the member for good (the task is idle until the next subscribe).
    Fatal(ApiError),
}

/// When the application last called `poll`, shared with the task.
#[derive(Clone, Debug)]
pub(crate) struct PollTimer {
    base: Instant,
    last_ms: Arc<AtomicU64>,
}

impl PollTimer {
    pub fn new() -> Self {
        PollTimer {
            base: Instant::now(),
            last_ms: Arc::new(AtomicU64::new(0)),
        }
    }

    /// The application polled now.
    pub fn touch(&self) {
        let ms = self.base.elapsed().as_millis() as u64;
        self.last_ms.store(ms, Ordering::Release);
    }

    fn last_poll(&self) -> Instant {
        self.base + Duration::from_millis(self.last_ms.load(Ordering::Acquire))
    }
}

/// What the coordinator was last told, so unchanged fields can be left unset. `None` (or
/// false) = unknown: sent in full.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Sent {
    names: Option<Vec<String>>,
    regex: Option<String>,
    owned: Option<BTreeSet<TopicPartition>>,
    rebalance_timeout: bool,
    assignor: bool,
}

impl Sent {
    /// A member joining with epoch 0 is new to the coordinator: it subscribes to nothing, so
    /// only the non-empty half of the subscription is sent; everything else in full.
    fn joining() -> Self {
        Sent {
            names: Some(Vec::new()),
            regex: Some(String::new()),
            ..Default::default()
        }
    }
}

/// The next heartbeat of a member and what the coordinator knows once it is answered. Pure,
/// so the "unchanged fields are unset" rules are tested without a coordinator.
pub(crate) fn heartbeat_request(
    settings: &MembershipSettings,
    identity: &MemberIdentity,
    subscription: &Subscription,
    owned: &BTreeSet<TopicPartition>,
    sent: &Sent,
) -> (ConsumerGroupHeartbeatRequest, Sent) {
    let (names, regex) = match subscription {
        Subscription::Topics(t) => (t.iter().cloned().collect::<Vec<_>>(), String::new()),
        Subscription::Pattern(p) => (Vec::new(), p.clone()),
    };
    let request = ConsumerGroupHeartbeatRequest {
        group_id: settings.group_id.clone(),
        member_id: identity.member_id.clone(),
        member_epoch: identity.epoch,
        instance_id: settings.instance_id.clone(),
        rack_id: settings.rack_id.clone(),
        rebalance_timeout_ms: if sent.rebalance_timeout {
            -1
        } else {
            settings.rebalance_timeout_ms
        },
        subscribed_topic_names: (sent.names.as_ref() != Some(&names)).then(|| TopicNames {
            names: names.clone(),
        }),
        subscribed_topic_regex: (sent.regex.as_ref() != Some(&regex)).then(|| regex.clone()),
        server_assignor: if sent.assignor {
            None
        } else {
            settings.assignor.clone()
        },
        owned_partitions: (sent.owned.as_ref() != Some(owned)).then(|| partitions_list(owned)),
        client_id: settings.client_id.clone(),
    };
    let known = Sent {
        names: Some(names),
        regex: Some(regex),
        // A coordinator that already has the member takes a join (epoch 0) as a repeated or
        // delayed one and ignores its owned_partitions: the next heartbeat reports them, or
        // partitions pending revocation would wait for the rebalance timeout.
        owned: (identity.epoch != 0).then(|| owned.clone()),
        rebalance_timeout: true,
        assignor: true,
    };
    (request, known)
}

/// Partitions in the protocol's per-topic form.
pub(crate) fn partitions_list(tps: &BTreeSet<TopicPartition>) -> TopicPartitionsList {
    let mut topics: Vec<TopicPartitions> = Vec::new();
    for tp in tps {
        match topics.last_mut() {
            Some(t) if t.topic == tp.topic => t.partitions.push(tp.partition),
            _ => topics.push(TopicPartitions {
                topic: tp.topic.clone(),
                partitions: vec![tp.partition],
            }),
        }
    }
    TopicPartitionsList { topics }
}

/// The protocol's per-topic partitions as a set.
pub(crate) fn partition_set(list: &[TopicPartitions]) -> BTreeSet<TopicPartition> {
    list.iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| TopicPartition::new(t.topic.as_str(), *p))
        })
        .collect()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Not subscribed (or refused for good): no heartbeats.
    Idle,
    /// Joining (epoch 0) or in the group: heartbeats.
    Active,
    /// Partitions lost; waiting for the application to give them up before rejoining.
    AwaitingLostAck,
}

/// The application's side of the task: commands in, events out. Dropping it stops the task.
pub(crate) struct MembershipHandle {
    pub commands: mpsc::UnboundedSender<Command>,
    pub events: mpsc::UnboundedReceiver<Event>,
    pub task: JoinHandle<()>,
}

/// Starts the task for a member with id `member_id`; it is idle until [`Command::Subscribe`].
pub(crate) fn spawn(
    settings: MembershipSettings,
    coordinator: CoordinatorClient,
    identity: watch::Sender<MemberIdentity>,
    timer: PollTimer,
    member_id: String,
) -> MembershipHandle {
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let (events_tx, events) = mpsc::unbounded_channel();
    let interval = settings.retry.timeout.min(Duration::from_secs(5));
    let member = Member {
        settings,
        coordinator,
        events: events_tx,
        identity,
        timer,
        state: State::Idle,
        subscription: None,
        owned: BTreeSet::new(),
        sent: Sent::joining(),
        member_id,
        epoch: 0,
        interval,
        next: Instant::now(),
        failures: 0,
        joined: false,
    };
    let task = tokio::spawn(member.run(commands_rx));
    MembershipHandle {
        commands,
        events,
        task,
    }
}

struct Member {
    settings: MembershipSettings,
    coordinator: CoordinatorClient,
    events: mpsc::UnboundedSender<Event>,
    identity: watch::Sender<MemberIdentity>,
    timer: PollTimer,
    state: State,
    subscription: Option<Subscription>,
    owned: BTreeSet<TopicPartition>,
    sent: Sent,
    member_id: String,
    epoch: i32,
    interval: Duration,
    /// When the next heartbeat is due.
    next: Instant,
    /// Consecutive retriable heartbeat failures.
    failures: u32,
    /// A join may have reached the coordinator since the last leave.
    joined: bool,
}

impl Member {
    async fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>) {
        loop {
            let active = self.state == State::Active;
            let poll_deadline = self.timer.last_poll() + self.settings.max_poll_interval;
            let wake = self.next.min(poll_deadline);
            tokio::select! {
                biased;
                command = commands.recv() => match command {
                    Some(c) => self.handle(c).await,
                    None => {
                        // The consumer is gone without close(): leave, best effort.
                        if self.state == State::Active && self.joined {
                            self.leave(Duration::ZERO).await;
                        }
                        return;
                    }
                },
                _ = tokio::time::sleep_until(wake.into()), if active => {
                    // The application may have polled while this task slept.
                    let now = Instant::now();
                    if now >= self.timer.last_poll() + self.settings.max_poll_interval {
                        self.poll_expired().await;
                    } else if now >= self.next {
                        self.heartbeat().await;
                    }
                }
            }
        }
    }

    async fn handle(&mut self, command: Command) {
        match command {
            Command::Subscribe(s) => {
                self.subscription = Some(s);
                match self.state {
                    State::Idle => self.join(),
                    State::Active => self.next = Instant::now(),
                    State::AwaitingLostAck => {}
                }
            }
            Command::Owned(owned) => {
                self.owned = owned;
                // Reported even when unchanged: the coordinator may count as owned a target
                // that was overtaken before it was reconciled (given and taken back between
                // two polls); until the member says what it owns, it waits for it to give
                // that up (KIP-848's UNREVOKED_PARTITIONS), up to the rebalance timeout.
                self.sent.owned = None;
                if self.state == State::Active {
                    self.next = Instant::now();
                }
            }
            Command::LostHandled => {
                if self.state == State::AwaitingLostAck {
                    self.owned.clear();
                    if self.subscription.is_some() {
                        self.join();
                    } else {
                        self.state = State::Idle;
                    }
                }
            }
            Command::Leave(done) => {
                if self.state == State::Active && self.joined {
                    self.leave(self.settings.retry.timeout).await;
                }
                self.subscription = None;
                self.owned.clear();
                self.state = State::Idle;
                let _ = done.send(());
            }
        }
    }

    fn publish_identity(&self) {
        let now = MemberIdentity {
            member_id: self.member_id.clone(),
            epoch: self.epoch,
        };
        self.identity.send_if_modified(|id| {
            let changed = *id != now;
            *id = now;
            changed
        });
    }

    /// Joins (again) with epoch 0 and full state, at once.
    fn join(&mut self) {
        self.state = State::Active;
        self.epoch = 0;
        self.sent = Sent::joining();
        self.next = Instant::now();
        self.failures = 0;
        self.publish_identity();
    }

    async fn heartbeat(&mut self) {
        let Some(subscription) = self.subscription.clone() else {
            self.state = State::Idle;
            return;
        };
        let identity = MemberIdentity {
            member_id: self.member_id.clone(),
            epoch: self.epoch,
        };
        let (request, known) = heartbeat_request(
            &self.settings,
            &identity,
            &subscription,
            &self.owned,
            &self.sent,
        );
        self.joined = true;
        let answer = self
            .coordinator
            .call_once(|mut c| async move { c.consumer_group_heartbeat(request).await })
            .await
            .and_then(|r| match response_error(r.error_code, &r.error_message) {
                Some(e) => Err(e),
                None => Ok(r),
            });
        match answer {
            Ok(r) => self.on_answer(r, known),
            Err(e) => self.on_error(e),
        }
    }

    fn on_answer(&mut self, r: ConsumerGroupHeartbeatResponse, known: Sent) {
        self.failures = 0;
        self.sent = known;
        if !r.member_id.is_empty() {
            self.member_id = r.member_id;
        }
        self.epoch = r.member_epoch;
        if r.heartbeat_interval_ms > 0 {
            self.interval = Duration::from_millis(r.heartbeat_interval_ms as u64);
        }
        self.next = Instant::now() + self.interval;
        self.publish_identity();
        if let Some(a) = r.assignment {
            let _ = self
                .events
                .send(Event::Assignment(partition_set(&a.topics)));
        }
    }

    fn on_error(&mut self, e: ApiError) {
        match e.code {
            ErrorCode::FencedMemberEpoch
            | ErrorCode::UnknownMemberId
            | ErrorCode::StaleMemberEpoch => {
                tracing::warn!(group = %self.settings.group_id, member = %self.member_id, error = %e,
                    "fenced by the group coordinator: every partition is lost; rejoining");
                self.lose(format!("the coordinator fenced the member: {e}"));
            }
            c if is_coordinator_retriable(c) => {
                tracing::debug!(group = %self.settings.group_id, error = %e, "heartbeat failed; retrying");
                // The coordinator may or may not have seen it: tell everything next time.
                self.sent = if self.epoch == 0 {
                    Sent::joining()
                } else {
                    Sent::default()
                };
                self.failures += 1;
                self.next = Instant::now() + self.settings.retry.delay(self.failures);
            }
            _ => {
                tracing::error!(group = %self.settings.group_id, error = %e, "the group refused the member");
                self.subscription = None;
                self.owned.clear();
                self.state = State::Idle;
                self.epoch = 0;
                self.joined = false;
                self.publish_identity();
                let _ = self.events.send(Event::Fatal(e));
            }
        }
    }

    /// Every partition is lost: the application gives them up (without committing) before the
    /// member rejoins.
    fn lose(&mut self, why: String) {
        self.epoch = 0;
        self.joined = false;
        self.state = State::AwaitingLostAck;
        self.publish_identity();
        let _ = self.events.send(Event::Lost(why));
    }

    async fn poll_expired(&mut self) {
        tracing::warn!(
            group = %self.settings.group_id,
            member = %self.member_id,
            max_poll_interval = ?self.settings.max_poll_interval,
            "poll was not called within max.poll.interval.ms: leaving the group so its partitions \
             go to other members (call poll more often or raise max.poll.interval.ms)"
        );
        self.leave(self.settings.retry.timeout).await;
        self.lose(
            "poll was not called within max.poll.interval.ms, so the member left the group".into(),
        );
    }

    /// Sends the leave heartbeat (epoch -1, or -2 for a static member), retrying coordinator
    /// errors for up to `patience`; other answers (the member is already gone) are fine.
    async fn leave(&mut self, patience: Duration) {
        let epoch = if self.settings.instance_id.is_some() {
            LEAVE_STATIC_EPOCH
        } else {
            LEAVE_EPOCH
        };
        let request = ConsumerGroupHeartbeatRequest {
            group_id: self.settings.group_id.clone(),
            member_id: self.member_id.clone(),
            member_epoch: epoch,
            instance_id: self.settings.instance_id.clone(),
            rack_id: self.settings.rack_id.clone(),
            rebalance_timeout_ms: -1,
            client_id: self.settings.client_id.clone(),
            ..Default::default()
        };
        let answer = self
            .coordinator
            .call(patience, |mut c| {
                let request = request.clone();
                async move { c.consumer_group_heartbeat(request).await }
            })
            .await;
        match answer.map(|r| response_error(r.error_code, &r.error_message)) {
            Ok(None) => tracing::debug!(group = %self.settings.group_id, "left the group"),
            Ok(Some(e)) | Err(e) => {
                tracing::debug!(group = %self.settings.group_id, error = %e, "leaving the group failed")
            }
        }
        self.joined = false;
        self.epoch = 0;
        self.sent = Sent::joining();
        self.publish_identity();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> MembershipSettings {
        MembershipSettings {
            group_id: "g".into(),
            instance_id: None,
            rack_id: Some("r1".into()),
            client_id: "c".into(),
            rebalance_timeout_ms: 300_000,
            assignor: Some("range".into()),
            retry: RetryPolicy {
                backoff: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
                timeout: Duration::from_secs(30),
            },
            max_poll_interval: Duration::from_secs(300),
        }
    }

    fn id(epoch: i32) -> MemberIdentity {
        MemberIdentity {
            member_id: "m".into(),
            epoch,
        }
    }

    fn tps(list: &[(&str, i32)]) -> BTreeSet<TopicPartition> {
        list.iter()
            .map(|(t, p)| TopicPartition::new(*t, *p))
            .collect()
    }

    #[test]
    fn a_join_sends_everything_and_later_heartbeats_only_changes() {
        let s = settings();
        let topics = Subscription::Topics(["a".to_string(), "b".to_string()].into());
        let none = BTreeSet::new();
        let (join, known) = heartbeat_request(&s, &id(0), &topics, &none, &Sent::joining());
        assert_eq!(join.member_epoch, 0);
        assert_eq!(join.member_id, "m");
        assert_eq!(join.rebalance_timeout_ms, 300_000);
        assert_eq!(join.subscribed_topic_names.unwrap().names, ["a", "b"]);
        assert_eq!(
            join.subscribed_topic_regex, None,
            "a new member has no regex to clear"
        );
        assert_eq!(join.server_assignor.as_deref(), Some("range"));
        assert_eq!(join.owned_partitions, Some(TopicPartitionsList::default()));
        assert_eq!(join.rack_id.as_deref(), Some("r1"));

        // The first heartbeat after the join reports what is owned (the coordinator may have
        // ignored the join's owned_partitions); then nothing changed: only the identity.
        let (hb, known) = heartbeat_request(&s, &id(3), &topics, &none, &known);
        assert_eq!(hb.owned_partitions, Some(TopicPartitionsList::default()));
        let (hb, known) = heartbeat_request(&s, &id(3), &topics, &none, &known);
        assert_eq!(hb.member_epoch, 3);
        assert_eq!(hb.rebalance_timeout_ms, -1);
        assert!(hb.subscribed_topic_names.is_none() && hb.subscribed_topic_regex.is_none());
        assert!(hb.server_assignor.is_none() && hb.owned_partitions.is_none());

        // Partitions taken: reported; then a switch to a pattern clears the names.
        let owned = tps(&[("a", 0), ("a", 2), ("b", 1)]);
        let (hb, known) = heartbeat_request(&s, &id(3), &topics, &owned, &known);
        let list = hb.owned_partitions.unwrap();
        assert_eq!(partition_set(&list.topics), owned);
        assert_eq!(list.topics[0].partitions, [0, 2]);
        let pattern = Subscription::Pattern("a|b".into());
        let (hb, _) = heartbeat_request(&s, &id(4), &pattern, &owned, &known);
        assert_eq!(
            hb.subscribed_topic_names.unwrap().names,
            Vec::<String>::new()
        );
        assert_eq!(hb.subscribed_topic_regex.as_deref(), Some("a|b"));
        assert!(hb.owned_partitions.is_none());
    }

    #[test]
    fn after_an_error_a_member_sends_its_whole_state() {
        let s = settings();
        let pattern = Subscription::Pattern("t.*".into());
        let owned = tps(&[("t1", 0)]);
        let (hb, _) = heartbeat_request(&s, &id(7), &pattern, &owned, &Sent::default());
        assert_eq!(hb.rebalance_timeout_ms, 300_000);
        assert_eq!(hb.subscribed_topic_regex.as_deref(), Some("t.*"));
        assert_eq!(
            hb.subscribed_topic_names.unwrap().names,
            Vec::<String>::new()
        );
        assert_eq!(partition_set(&hb.owned_partitions.unwrap().topics), owned);
        assert_eq!(hb.server_assignor.as_deref(), Some("range"));
    }
}
