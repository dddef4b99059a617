//! Offset lookups by time (Kafka's `OffsetFetcher`): ListOffsets to each partition's leader for
//! the log start (-2), the high watermark (-1) or the first offset at or after a timestamp,
//! with retries across leader changes; and the partitions of a topic.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rill_protocol::client::ClusterClient;
use rill_protocol::proto::{
    DescribeConfigsRequest, ListOffsetsPartition, ListOffsetsRequest, ListOffsetsTopic,
};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::config::{RetryPolicy, deadline_after};
use crate::error::{request_error, response_error};

/// ListOffsets `timestamp` for the log start offset.
pub(crate) const EARLIEST: i64 = -2;
/// ListOffsets `timestamp` for the high watermark.
pub(crate) const LATEST: i64 = -1;

/// What one partition's lookup found: the offset and the timestamp of its record, or `None`
/// when no record is at or after the timestamp asked for.
pub(crate) type Found = Option<(i64, i64)>;

/// A lookup for partitions waiting for a position (their committed offsets, or where
/// `auto.offset.reset` puts them), run in a task of its own so `poll` never waits for it past
/// its timeout: `poll` starts it and takes its answer on the turn it is there, for the
/// partitions that still wait. After a lookup that left partitions waiting, the next one
/// starts after a backoff.
pub(crate) struct Lookup<T> {
    running: Option<Running<T>>,
    /// Consecutive lookups that left partitions waiting.
    failures: u32,
    not_before: Instant,
}

/// The partitions a lookup was started for, with their incarnations.
pub(crate) type Asked = Vec<(TopicPartition, u64)>;

struct Running<T> {
    asked: Asked,
    rx: oneshot::Receiver<T>,
    /// `Some` once received (`None` inside: the task ended without an answer).
    answer: Option<Option<T>>,
    task: JoinHandle<()>,
}

impl<T> Drop for Running<T> {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl<T: Send + 'static> Lookup<T> {
    pub fn new() -> Self {
        Lookup {
            running: None,
            failures: 0,
            not_before: Instant::now(),
        }
    }

    /// True when no lookup runs and the backoff after the last one is over.
    pub fn may_start(&self) -> bool {
        self.running.is_none() && Instant::now() >= self.not_before
    }

    /// How long until the backoff after a lookup that left partitions waiting ends, while it
    /// runs: `poll` wakes then to start the next lookup, instead of when some fetch comes back
    /// (up to `fetch.max.wait.ms` later).
    pub fn backoff_ends_in(&self) -> Option<Duration> {
        if self.running.is_some() || self.failures == 0 {
            return None;
        }
        self.not_before.checked_duration_since(Instant::now())
    }

    /// Runs `work` for the partitions `asked`.
    pub fn start(&mut self, asked: Asked, work: impl Future<Output = T> + Send + 'static) {
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(async move {
            let _ = tx.send(work.await);
        });
        self.running = Some(Running {
            asked,
            rx,
            answer: None,
            task,
        });
    }

    /// The partitions asked and the answer (`None`: the task ended without one), once it is
    /// there; the lookup is over then.
    pub fn take(&mut self) -> Option<(Asked, Option<T>)> {
        let r = self.running.as_mut()?;
        if r.answer.is_none() {
            match r.rx.try_recv() {
                Ok(a) => r.answer = Some(Some(a)),
                Err(oneshot::error::TryRecvError::Empty) => return None,
                Err(oneshot::error::TryRecvError::Closed) => r.answer = Some(None),
            }
        }
        let mut r = self.running.take()?;
        Some((std::mem::take(&mut r.asked), r.answer.take().flatten()))
    }

    /// Completes when the running lookup's answer is there (never without one). Cancel-safe:
    /// the answer is kept for [`take`](Self::take).
    pub async fn ready(&mut self) {
        match &mut self.running {
            Some(r) if r.answer.is_none() => r.answer = Some((&mut r.rx).await.ok()),
            Some(_) => {}
            None => std::future::pending().await,
        }
    }

    /// The lookup that just ended left partitions waiting (`true`) or not.
    pub fn ended(&mut self, left_waiting: bool, retry: &RetryPolicy) {
        if left_waiting {
            self.failures += 1;
            self.not_before = deadline_after(retry.delay(self.failures));
        } else {
            self.failures = 0;
        }
    }
}

/// Looks `timestamp` up in every partition of `tps`: one request per leader, retrying
/// retriable failures (leader moves, unreachable brokers) with backoff for up to
/// `retry.timeout`. Each partition gets its own answer, in the order asked; a topic the
/// metadata does not know fails at once.
pub(crate) async fn list_offsets(
    client: &ClusterClient,
    retry: &RetryPolicy,
    tps: &[TopicPartition],
    timestamp: i64,
) -> Vec<(TopicPartition, Result<Found, ApiError>)> {
    let deadline = deadline_after(retry.timeout);
    let mut done: BTreeMap<TopicPartition, Result<Found, ApiError>> = BTreeMap::new();
    let mut last_error: BTreeMap<TopicPartition, ApiError> = BTreeMap::new();
    let mut pending: BTreeSet<TopicPartition> = tps.iter().cloned().collect();
    let mut failures = 0;
    while !pending.is_empty() {
        let mut by_leader: BTreeMap<i32, Vec<(TopicPartition, i32)>> = BTreeMap::new();
        for tp in &pending {
            match client.partitions(&tp.topic).await {
                Ok(p) => match p.get(tp.partition as usize).map(|l| (l.leader, l.epoch)) {
                    Some((leader, epoch)) if leader >= 0 => by_leader
                        .entry(leader)
                        .or_default()
                        .push((tp.clone(), epoch)),
                    Some(_) => {
                        client.invalidate(&tp.topic);
                        last_error.insert(
                            tp.clone(),
                            ApiError::new(
                                ErrorCode::LeaderNotAvailable,
                                format!("{tp} has no leader"),
                            ),
                        );
                    }
                    None => {
                        // Metadata cached before partitions were added (a group assigns them
                        // at once): look again until the deadline.
                        client.invalidate(&tp.topic);
                        last_error.insert(
                            tp.clone(),
                            ApiError::new(
                                ErrorCode::UnknownTopicOrPartition,
                                format!(
                                    "topic {} has {} partitions; {tp} does not exist",
                                    tp.topic,
                                    p.len()
                                ),
                            ),
                        );
                    }
                },
                Err(e) if e.code.is_retriable() && e.code != ErrorCode::UnknownTopicOrPartition => {
                    last_error.insert(tp.clone(), e);
                }
                Err(e) => {
                    done.insert(tp.clone(), Err(e));
                }
            }
        }
        for (leader, parts) in by_leader {
            let mut topics: BTreeMap<String, Vec<ListOffsetsPartition>> = BTreeMap::new();
            for (tp, epoch) in &parts {
                topics
                    .entry(tp.topic.clone())
                    .or_default()
                    .push(ListOffsetsPartition {
                        index: tp.partition,
                        // As Kafka's consumer: a deposed leader that has not heard yet must not
                        // answer from its log (a reset to its stale end).
                        current_leader_epoch: (*epoch >= 0).then_some(*epoch),
                        timestamp,
                    });
            }
            let request = ListOffsetsRequest {
                replica_id: None,
                topics: topics
                    .into_iter()
                    .map(|(name, partitions)| ListOffsetsTopic { name, partitions })
                    .collect(),
            };
            let answer = match client.broker(leader) {
                Ok(mut c) => c
                    .list_offsets(request)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| request_error(leader, s)),
                Err(e) => Err(e),
            };
            let response = match answer {
                Ok(r) => r,
                Err(e) => {
                    for (tp, _) in &parts {
                        client.invalidate(&tp.topic);
                        if e.code.is_retriable() {
                            last_error.insert(tp.clone(), e.clone());
                        } else {
                            done.insert(tp.clone(), Err(e.clone()));
                        }
                    }
                    continue;
                }
            };
            for t in response.topics {
                for p in t.partitions {
                    let tp = TopicPartition::new(t.name.clone(), p.index);
                    if !parts.iter().any(|(asked, _)| *asked == tp) {
                        continue;
                    }
                    match response_error(p.error_code, &p.error_message) {
                        None => {
                            done.insert(tp, Ok((p.offset >= 0).then_some((p.offset, p.timestamp))));
                        }
                        Some(e) if e.code.is_retriable() => {
                            client.invalidate(&tp.topic);
                            last_error.insert(tp, e);
                        }
                        Some(e) => {
                            done.insert(tp, Err(e));
                        }
                    }
                }
            }
        }
        pending.retain(|tp| !done.contains_key(tp));
        if pending.is_empty() {
            break;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            for tp in std::mem::take(&mut pending) {
                let e = last_error.remove(&tp).unwrap_or_else(|| {
                    ApiError::new(
                        ErrorCode::RequestTimedOut,
                        format!("no answer for {tp} within {:?}", retry.timeout),
                    )
                });
                done.insert(tp, Err(e));
            }
            break;
        }
        failures += 1;
        tokio::time::sleep(retry.delay(failures).min(remaining)).await;
    }
    tps.iter()
        .map(|tp| {
            let r = done
                .get(tp)
                .cloned()
                .unwrap_or_else(|| Err(ApiError::new(ErrorCode::UnknownServerError, "no answer")));
            (tp.clone(), r)
        })
        .collect()
}

/// All partitions of `topic`. Waits (up to `retry.timeout`) for the metadata of a topic that
/// was just created, but fails at once with UNKNOWN_TOPIC_OR_PARTITION when the controllers
/// confirm that the topic does not exist: rill creates no topics on first use.
pub(crate) async fn partitions_of(
    client: &ClusterClient,
    retry: &RetryPolicy,
    topic: &str,
) -> Result<Vec<TopicPartition>, ApiError> {
    let deadline = deadline_after(retry.timeout);
    let mut failures = 0;
    let n = loop {
        let e = match client.partitions(topic).await {
            Ok(p) => break p.len(),
            Err(e) => e,
        };
        let remaining = deadline.saturating_duration_since(Instant::now());
        if e.code == ErrorCode::UnknownTopicOrPartition
            && controllers_know_no(client, topic, remaining.min(Duration::from_secs(5))).await
        {
            return Err(ApiError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!("topic {topic} does not exist"),
            ));
        }
        if !e.code.is_retriable() || remaining.is_zero() {
            return Err(e);
        }
        failures += 1;
        tokio::time::sleep(retry.delay(failures).min(remaining)).await;
    };
    Ok((0..n as i32)
        .map(|p| TopicPartition::new(topic, p))
        .collect())
}

/// True when the active controller answers that `topic` does not exist (its answer is
/// authoritative: it reads committed metadata, while a broker may not have caught up with a
/// topic created a moment ago); false when it knows the topic or cannot be asked.
async fn controllers_know_no(client: &ClusterClient, topic: &str, patience: Duration) -> bool {
    let answer = client
        .admin(patience, |mut c| {
            let topics = vec![topic.to_owned()];
            async move { c.describe_configs(DescribeConfigsRequest { topics }).await }
        })
        .await;
    match answer {
        Ok(r) => r
            .results
            .iter()
            .any(|t| t.topic == topic && t.error_code == ErrorCode::UnknownTopicOrPartition as i32),
        Err(e) => {
            tracing::debug!(topic, error = %e, "cannot ask the controllers whether a topic exists");
            false
        }
    }
}
