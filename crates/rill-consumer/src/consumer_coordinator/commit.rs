//! Offset commits (Kafka's `CommitRequestManager`): one background task sends them in the order
//! they were made — a sync commit after async ones waits for them — each carrying the member's
//! id and epoch (or epoch -1 and no id for a consumer using `assign`); a member that is not in
//! the group at that moment (joining, fenced) commits nothing. STALE_MEMBER_EPOCH is retried
//! once with the epoch of the next heartbeat, for partitions the member owned when the commit
//! was made (for others it can never succeed); coordinator errors and a partition's
//! REQUEST_TIMED_OUT are retried. Every commit has a deadline fixed when it is made
//! (`request.timeout.ms` for async commits, `default.api.timeout.ms` for sync ones): one
//! still queued then fails without being sent, so waiting behind earlier commits never adds
//! up their timeouts.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rill_protocol::proto::{OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tokio::sync::{mpsc, oneshot, watch};

use super::heartbeat::MemberIdentity;
use crate::config::{RetryPolicy, deadline_after};
use crate::coordinator_client::CoordinatorClient;
use crate::error::response_error;
use crate::{ConsumerError, OffsetAndMetadata};

/// A commit's outcome, when it is known.
pub(crate) type CommitResult = Result<(), ConsumerError>;

/// Who commits: the group member (id and epoch), or an outsider (epoch -1, a consumer using
/// `assign`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum CommitBy {
    /// The member, which owned these of the partitions when the commit was made.
    Member { owned: BTreeSet<TopicPartition> },
    /// An outsider.
    Outsider,
}

struct CommitRequest {
    offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
    by: CommitBy,
    deadline: Instant,
    reply: oneshot::Sender<CommitResult>,
}

/// The queue of the commit task; dropping it stops the task once the queue is empty.
pub(crate) struct Committer {
    queue: mpsc::UnboundedSender<CommitRequest>,
}

impl Committer {
    /// Starts the commit task (needs a tokio runtime).
    pub fn spawn(
        coordinator: CoordinatorClient,
        identity: watch::Receiver<MemberIdentity>,
        retry: RetryPolicy,
    ) -> Self {
        let (queue, mut rx) = mpsc::unbounded_channel::<CommitRequest>();
        tokio::spawn(async move {
            let mut identity = identity;
            while let Some(r) = rx.recv().await {
                if r.reply.is_closed() && !r.offsets.is_empty() {
                    // Nobody waits for it any more (a commit_sync that gave up).
                    continue;
                }
                let keys: Vec<TopicPartition> = r.offsets.keys().cloned().collect();
                if Instant::now() >= r.deadline && !keys.is_empty() {
                    // Its time ran out while it waited in the queue: not sent.
                    let _ = r.reply.send(Err(timed_out(keys)));
                    continue;
                }
                let work = commit(
                    &coordinator,
                    &mut identity,
                    &retry,
                    r.offsets,
                    r.by,
                    r.deadline,
                );
                let result = match tokio::time::timeout_at(r.deadline.into(), work).await {
                    Ok(result) => result,
                    Err(_) => Err(timed_out(keys)),
                };
                let _ = r.reply.send(result);
            }
        });
        Committer { queue }
    }

    /// Queues a commit of `offsets` by `by`, to be done within `timeout` from now (waiting in
    /// the queue included); the receiver gets its outcome — one dropped before the commit is
    /// sent cancels it. No offsets: a barrier, answered once every commit queued before is
    /// done.
    pub fn enqueue(
        &self,
        offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
        by: CommitBy,
        timeout: Duration,
    ) -> oneshot::Receiver<CommitResult> {
        let (reply, rx) = oneshot::channel();
        let request = CommitRequest {
            offsets,
            by,
            deadline: deadline_after(timeout),
            reply,
        };
        if let Err(mpsc::error::SendError(r)) = self.queue.send(request) {
            let _ = r.reply.send(Err(ConsumerError::IllegalState(
                "the commit task stopped (the runtime is shutting down)".into(),
            )));
        }
        rx
    }
}

/// The OffsetCommit request for `offsets`.
fn commit_request(
    group_id: &str,
    identity: &MemberIdentity,
    offsets: &BTreeMap<TopicPartition, OffsetAndMetadata>,
) -> OffsetCommitRequest {
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for (tp, o) in offsets {
        let p = OffsetCommitPartition {
            index: tp.partition,
            committed_offset: o.offset,
            committed_leader_epoch: o.leader_epoch.unwrap_or(-1),
            committed_metadata: o.metadata.clone(),
        };
        match topics.last_mut() {
            Some(t) if t.name == tp.topic => t.partitions.push(p),
            _ => topics.push(OffsetCommitTopic {
                name: tp.topic.clone(),
                partitions: vec![p],
            }),
        }
    }
    OffsetCommitRequest {
        group_id: group_id.to_owned(),
        member_epoch: identity.epoch,
        member_id: identity.member_id.clone(),
        topics,
        retention_time_ms: None,
    }
}

/// The error of a commit of `partitions` that ran out of time.
pub(crate) fn timed_out(partitions: impl IntoIterator<Item = TopicPartition>) -> ConsumerError {
    let e = ApiError::new(
        ErrorCode::RequestTimedOut,
        "the commit did not complete in time (request.timeout.ms for an async commit, default.api.timeout.ms for a sync one)",
    );
    ConsumerError::Commit {
        failed: partitions.into_iter().map(|tp| (tp, e.clone())).collect(),
    }
}

/// Commits `offsets` by `deadline`, retrying as the module docs say; the error names every
/// partition that was not committed.
pub(crate) async fn commit(
    coordinator: &CoordinatorClient,
    identity: &mut watch::Receiver<MemberIdentity>,
    retry: &RetryPolicy,
    offsets: BTreeMap<TopicPartition, OffsetAndMetadata>,
    by: CommitBy,
    deadline: Instant,
) -> CommitResult {
    let (as_member, owned) = match by {
        CommitBy::Member { owned } => (true, owned),
        CommitBy::Outsider => (false, BTreeSet::new()),
    };
    let mut pending = offsets;
    let mut failed: Vec<(TopicPartition, ApiError)> = Vec::new();
    let mut stale_retried = false;
    let mut failures = 0;
    while !pending.is_empty() {
        let who = if as_member {
            identity.borrow_and_update().clone()
        } else {
            MemberIdentity {
                member_id: String::new(),
                epoch: -1,
            }
        };
        if as_member && who.epoch <= 0 {
            // Joining, fenced or gone: the partitions are not this member's to commit.
            let e = ApiError::new(
                ErrorCode::UnknownMemberId,
                "the consumer is not a member of the group right now (joining, fenced or left); nothing committed",
            );
            failed.extend(pending.into_keys().map(|tp| (tp, e.clone())));
            break;
        }
        let request = commit_request(coordinator.group_id(), &who, &pending);
        let remaining = deadline.saturating_duration_since(Instant::now());
        let answer = coordinator
            .call(remaining, |mut c| {
                let request = request.clone();
                async move { c.offset_commit(request).await }
            })
            .await;
        let response = match answer {
            Ok(r) => r,
            Err(e) => {
                failed.extend(pending.into_keys().map(|tp| (tp, e.clone())));
                break;
            }
        };
        let mut stale = false;
        let mut timed_out = false;
        let mut answered = BTreeSet::new();
        for t in response.topics {
            for p in t.partitions {
                let tp = TopicPartition::new(t.name.as_str(), p.index);
                if !pending.contains_key(&tp) {
                    continue;
                }
                answered.insert(tp.clone());
                match response_error(p.error_code, &p.error_message) {
                    None => {
                        pending.remove(&tp);
                    }
                    Some(e)
                        if e.code == ErrorCode::StaleMemberEpoch
                            && as_member
                            && !stale_retried
                            && owned.contains(&tp) =>
                    {
                        stale = true;
                    }
                    Some(e) if e.code == ErrorCode::RequestTimedOut => timed_out = true,
                    Some(e) => {
                        pending.remove(&tp);
                        failed.push((tp, e));
                    }
                }
            }
        }
        for tp in pending
            .keys()
            .filter(|tp| !answered.contains(*tp))
            .cloned()
            .collect::<Vec<_>>()
        {
            pending.remove(&tp);
            failed.push((
                tp,
                ApiError::new(
                    ErrorCode::UnknownServerError,
                    "the coordinator did not answer for the partition",
                ),
            ));
        }
        if pending.is_empty() {
            break;
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        if stale {
            // Kafka: wait for the heartbeat that brings the member's current epoch, retry once.
            stale_retried = true;
            tracing::debug!(
                group = coordinator.group_id(),
                "commit with a stale member epoch; waiting for the next heartbeat"
            );
            if tokio::time::timeout(remaining, identity.changed())
                .await
                .is_err()
            {
                failed.extend(pending.into_keys().map(|tp| {
                    (
                        tp,
                        ApiError::new(
                            ErrorCode::StaleMemberEpoch,
                            "the member's epoch did not move on before the commit's deadline",
                        ),
                    )
                }));
                break;
            }
            continue;
        }
        debug_assert!(timed_out);
        if remaining.is_zero() {
            failed.extend(pending.into_keys().map(|tp| {
                (
                    tp,
                    ApiError::new(
                        ErrorCode::RequestTimedOut,
                        "the commit did not complete before its deadline",
                    ),
                )
            }));
            break;
        }
        failures += 1;
        tokio::time::sleep(retry.delay(failures).min(remaining)).await;
    }
    if failed.is_empty() {
        Ok(())
    } else {
        Err(ConsumerError::Commit { failed })
    }
}
