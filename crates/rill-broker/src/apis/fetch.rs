//! Fetch (Kafka's `handleFetchRequest`): consumers read below the high watermark, followers
//! (`replica_id` ≥ 0) up to the log end; either waits up to `max_wait_ms` for `min_bytes`,
//! woken by the partitions it reads (Kafka's DelayedFetch, keyed by partition): a consumer by
//! their high watermarks, a follower by their log ends.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rill_protocol::ErrorCode;
use rill_protocol::proto::*;
use tonic::Status;

use crate::apis::blocking_err;
use crate::metrics::FetchPassLabels;
use crate::network::BrokerService;
use bytes::Bytes;
use rill_storage::TopicPartition;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{StreamExt, StreamMap};

use crate::apis::{leader_hint, moved_leader_hint};
use crate::partition::{Busy, Partition};
use crate::replica_manager::{ReadError, ReplicaManager};

/// Handles one Fetch request.
pub async fn handle(svc: &BrokerService, req: FetchRequest) -> Result<FetchResponse, Status> {
    let req = Arc::new(req);
    let started = Instant::now();
    let deadline = started + Duration::from_millis(req.max_wait_ms.min(60_000).into());
    let replica = req.replica_id >= 0;
    // What wakes this fetch: the partitions it reads (a consumer waits for their high
    // watermarks, a follower for their log ends), and metadata changes (leadership moves).
    let mut metadata = svc.rm.subscribe_metadata();
    let mut watched = StreamMap::new();
    for t in &req.topics {
        for p in &t.partitions {
            if let Some(partition) = svc
                .rm
                .partition(&TopicPartition::new(t.name.clone(), p.index))
            {
                let rx = if replica {
                    partition.subscribe_log_end()
                } else {
                    partition.subscribe_hw()
                };
                watched.insert(watched.len(), WatchStream::from_changes(rx));
            }
        }
    }
    loop {
        metadata.borrow_and_update();
        // The checks and the reads of data still in the page cache (most fetches: consumers
        // and followers near the log end) here; whatever would wait — for the disk, or for a
        // lock a write holds (an append, a segment roll's fsyncs, compaction) — on a blocking
        // thread, from where it stopped.
        let mut plan = Plan::new(&req, svc.fetch_max_bytes);
        plan.check(&svc.rm, &req, true);
        if plan.checked_all(&req) {
            plan.read(&svc.rm, true);
        }
        let in_place = plan.checked_all(&req) && plan.read_all();
        svc.metrics
            .fetch_passes
            .get_or_create(&FetchPassLabels {
                on: if in_place {
                    "request_task"
                } else {
                    "blocking_thread"
                },
            })
            .inc();
        let plan = if in_place {
            plan
        } else {
            let rm = Arc::clone(&svc.rm);
            let r = Arc::clone(&req);
            tokio::task::spawn_blocking(move || {
                plan.check(&rm, &r, false);
                plan.read(&rm, false);
                plan
            })
            .await
            .map_err(blocking_err)?
        };
        let (response, bytes) = (plan.response, plan.progress.total);
        // As Kafka: min_bytes 0 (or a fetch of no partitions, a session's closing one)
        // is answered at once.
        let min_bytes = req.min_bytes.max(0) as usize;
        let nothing_asked = req.topics.iter().all(|t| t.partitions.is_empty());
        let has_error = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.error_code != 0);
        // A diverged follower must truncate now, not after a long poll.
        let diverged = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .any(|p| p.diverging_epoch.is_some());
        if bytes >= min_bytes
            || nothing_asked
            || has_error
            || diverged
            || Instant::now() >= deadline
        {
            svc.metrics.bytes_out.inc_by(bytes as u64);
            svc.metrics
                .observe("Fetch", started.elapsed().as_secs_f64(), !has_error);
            return Ok(response);
        }
        // Long poll (Kafka's DelayedFetch): until a watched partition moves, the metadata
        // changes, or the wait is over.
        let _ = tokio::time::timeout_at(deadline.into(), async {
            tokio::select! {
                _ = metadata.changed() => {}
                _ = watched.next(), if !watched.is_empty() => {}
            }
        })
        .await;
    }
}

/// The broker's fetch.max.bytes caps what one fetch may hold, whatever the client asks.
fn max_total(req: &FetchRequest, fetch_max_bytes: usize) -> usize {
    if req.max_bytes <= 0 {
        fetch_max_bytes
    } else {
        (req.max_bytes as usize).min(fetch_max_bytes)
    }
}

/// Bytes a fetch may copy from the page cache on its own task before the rest goes to a
/// blocking thread (a copy of 1 MiB takes ~0.1–0.2 ms; a runtime thread must not copy 50): one
/// default-sized partition read and its index gap fit.
const INLINE_COPY_MAX_BYTES: usize = 2 << 20;

/// Partitions a fetch checks on its own task before the rest goes to a blocking thread (a
/// fetch of thousands of partitions must not hold a runtime thread for milliseconds).
const INLINE_CHECKS_MAX: usize = 256;

/// A partition's read, found due by the checks and done after them, in request order: each
/// read's budget depends on the bytes read before it.
struct PlannedRead {
    /// Where its answer is: topic and partition index in the response.
    at: (usize, usize),
    partition: Arc<Partition>,
    offset: i64,
    /// The request's `partition_max_bytes` (1 MiB when unset).
    partition_max: usize,
    kind: ReadKind,
}

enum ReadKind {
    /// Up to the high watermark the answer reports, checked in `leader_epoch`.
    Consumer { hw: i64, leader_epoch: i32 },
    /// Up to the log end; `throttled` as `fetch_for_follower` said in `leader_epoch`.
    Follower { throttled: bool, leader_epoch: i32 },
}

/// How far the planned reads got.
struct ReadProgress {
    /// The first read not done yet.
    next: usize,
    /// Record bytes read so far.
    total: usize,
    /// What reads in place may still copy (bytes copied, not returned: a read copies from an
    /// index entry before its offset, and past the high watermark).
    inline_copy_budget: usize,
    max_total: usize,
}

/// One pass over a fetch: the answer being built, the reads the checks found due, and how far
/// checks and reads got (both resume where a pass that must not wait stopped).
struct Plan {
    response: FetchResponse,
    reads: Vec<PlannedRead>,
    /// The next partition to check: topic and partition index in the request.
    checked: (usize, usize),
    progress: ReadProgress,
}

impl Plan {
    fn new(req: &FetchRequest, fetch_max_bytes: usize) -> Self {
        Plan {
            response: FetchResponse {
                topics: req
                    .topics
                    .iter()
                    .map(|t| FetchTopicResponse {
                        name: t.name.clone(),
                        partitions: Vec::with_capacity(t.partitions.len()),
                    })
                    .collect(),
            },
            reads: Vec::new(),
            checked: (0, 0),
            progress: ReadProgress {
                next: 0,
                total: 0,
                inline_copy_budget: INLINE_COPY_MAX_BYTES,
                max_total: max_total(req, fetch_max_bytes),
            },
        }
    }

    fn checked_all(&self, req: &FetchRequest) -> bool {
        self.checked.0 >= req.topics.len()
    }

    fn read_all(&self) -> bool {
        self.progress.next >= self.reads.len()
    }

    /// Checks the requested partitions from where the last pass stopped (leadership, epochs,
    /// offsets; a follower's position is recorded here) without reading records. With
    /// `no_wait` it stops at the first partition whose check would wait for a lock, having
    /// done nothing for it, or after [`INLINE_CHECKS_MAX`] partitions.
    fn check(&mut self, rm: &ReplicaManager, req: &FetchRequest, no_wait: bool) {
        let mut checks = 0;
        while let Some(t) = req.topics.get(self.checked.0) {
            while let Some(p) = t.partitions.get(self.checked.1) {
                if no_wait && checks == INLINE_CHECKS_MAX {
                    return;
                }
                checks += 1;
                let at = self.checked;
                match check_one(rm, req, &t.name, p, no_wait) {
                    Ok((pr, read)) => {
                        if let Some((partition, kind)) = read {
                            self.reads.push(PlannedRead {
                                at,
                                partition,
                                offset: p.fetch_offset,
                                partition_max: if p.partition_max_bytes <= 0 {
                                    1 << 20
                                } else {
                                    p.partition_max_bytes as usize
                                },
                                kind,
                            });
                        }
                        self.response.topics[at.0].partitions.push(pr);
                    }
                    Err(Busy) => return,
                }
                self.checked.1 += 1;
            }
            self.checked = (self.checked.0 + 1, 0);
        }
    }

    /// Does the planned reads from where the last pass stopped, in order. With `cached_only`
    /// it stops at the first read that would wait (for the disk, or for a write holding the
    /// log), or that would copy more than [`INLINE_COPY_MAX_BYTES`] on the caller's thread,
    /// leaving the cursor there for a blocking thread to go on from.
    fn read(&mut self, rm: &ReplicaManager, cached_only: bool) {
        while let Some(read) = self.reads.get(self.progress.next) {
            let remaining = self.progress.max_total.saturating_sub(self.progress.total);
            // In place, this fetch's reads together copy at most INLINE_COPY_MAX_BYTES.
            let copy_budget = if cached_only {
                Some(&mut self.progress.inline_copy_budget)
            } else {
                None
            };
            let result = match read.kind {
                // A follower always gets at least one batch, so a large one never stalls it.
                ReadKind::Follower {
                    throttled,
                    leader_epoch,
                } => rm.read_for_follower(
                    &read.partition,
                    read.offset,
                    remaining.min(read.partition_max).max(1),
                    throttled,
                    leader_epoch,
                    copy_budget,
                ),
                ReadKind::Consumer { .. } if remaining == 0 => Ok(None),
                ReadKind::Consumer { hw, leader_epoch } => rm.read(
                    &read.partition,
                    read.offset,
                    remaining.min(read.partition_max),
                    self.progress.total == 0,
                    hw,
                    leader_epoch,
                    copy_budget,
                ),
            };
            if cached_only && matches!(result, Err(ReadError::WouldBlock)) {
                return;
            }
            let pr = &mut self.response.topics[read.at.0].partitions[read.at.1];
            match result {
                Ok(Some(bytes)) => {
                    self.progress.total += bytes.len();
                    pr.records = bytes;
                }
                Ok(None) => pr.records = Bytes::new(),
                Err(ReadError::Failed(e)) => {
                    // Leadership moved between the check and the read.
                    pr.current_leader = moved_leader_hint(e.code, &read.partition);
                    pr.error_code = e.code as i32;
                    pr.error_message = e.message;
                }
                Err(ReadError::WouldBlock) => {
                    // Only a read that may wait gets here, and it never answers this.
                    pr.error_code = ErrorCode::UnknownServerError as i32;
                    pr.error_message = "a read that may wait refused to".into();
                }
            }
            self.progress.next += 1;
        }
    }
}

/// Checks one partition; returns its answer so far and the read to do, if any. `Err(Busy)`
/// (with `no_wait`, nothing done) when a lock it needs is held.
#[allow(clippy::type_complexity)]
fn check_one(
    rm: &ReplicaManager,
    req: &FetchRequest,
    topic: &str,
    p: &FetchPartition,
    no_wait: bool,
) -> Result<(FetchPartitionResponse, Option<(Arc<Partition>, ReadKind)>), Busy> {
    let tp = TopicPartition::new(topic.to_owned(), p.index);
    let mut pr = FetchPartitionResponse {
        index: p.index,
        high_watermark: -1,
        log_start_offset: -1,
        ..Default::default()
    };
    let partition = match rm.leader_partition(&tp) {
        Err((e, current)) => {
            pr.error_code = e.code as i32;
            pr.error_message = e.message;
            pr.current_leader = leader_hint(current);
            return Ok((pr, None));
        }
        Ok(partition) => partition,
    };
    if req.replica_id >= 0 {
        let (checked, read) =
            rm.fetch_for_follower(&partition, req.replica_id, req.replica_epoch, p, no_wait)?;
        return Ok((
            checked,
            read.map(|throttled| {
                let kind = ReadKind::Follower {
                    throttled,
                    // `fetch_for_follower` answered only in this very epoch.
                    leader_epoch: p.current_leader_epoch.unwrap_or(0),
                };
                (partition, kind)
            }),
        ));
    }
    let (leader, leader_epoch) = partition.leader_and_epoch();
    let (start, end, diverging) = {
        let log = partition.log_read(no_wait)?;
        let (start, end) = (log.log_start_offset(), log.log_end_offset());
        // Before the out-of-range check: a position past this log's end may be one an
        // unclean election cut away, and the consumer must read from where the logs part.
        let diverging = p
            .last_fetched_epoch
            .filter(|e| *e >= 0 && p.fetch_offset >= start)
            .and_then(|last| {
                crate::replica_manager::consumer_divergence(&log, p.fetch_offset, last)
            });
        (start, end, diverging)
    };
    let hw = partition.high_watermark();
    pr.high_watermark = hw;
    pr.log_start_offset = start;
    if let Err((code, message)) = super::check_consumer_epoch(p.current_leader_epoch, leader_epoch)
    {
        pr.error_code = code as i32;
        pr.error_message = message;
        pr.current_leader = Some(LeaderIdAndEpoch {
            leader_id: leader,
            leader_epoch,
        });
        return Ok((pr, None));
    }
    if let Some(last) = p.last_fetched_epoch
        && last > leader_epoch
    {
        // The consumer read records of a newer leader: this broker has not learned yet that
        // it lost the leadership. Its log would look diverged; the consumer looks again.
        pr.error_code = ErrorCode::UnknownLeaderEpoch as i32;
        pr.error_message = format!(
            "records of leader epoch {last} were read, newer than this leader's {leader_epoch}"
        );
        return Ok((pr, None));
    }
    if let Some((epoch, end_offset)) = diverging {
        // KIP-320: what the consumer read up to its position is not in this log (an unclean
        // election cut it away): it finds out here, before reading on from there.
        pr.diverging_epoch = Some(EpochEndOffset { epoch, end_offset });
        return Ok((pr, None));
    }
    if p.fetch_offset < start || p.fetch_offset > end {
        // Between the high watermark and the log end is not out of range: a new leader's high
        // watermark can trail what consumers already read.
        pr.error_code = ErrorCode::OffsetOutOfRange as i32;
        pr.error_message = format!(
            "offset {} is outside [{start}, {hw}] of {tp}",
            p.fetch_offset
        );
        return Ok((pr, None));
    }
    let kind = ReadKind::Consumer { hw, leader_epoch };
    Ok((pr, Some((partition, kind))))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica_manager::tests::{image, replica_manager};

    /// A consumer's fetch of `partition` of topic `t`.
    fn consumer_fetch_of_t(partition: FetchPartition) -> FetchRequest {
        FetchRequest {
            replica_id: -1,
            topics: vec![FetchTopic {
                name: "t".into(),
                partitions: vec![partition],
            }],
            ..Default::default()
        }
    }

    /// KIP-320 for consumers: a fetch carrying the leader epoch of the record before its
    /// position is answered with where that epoch ends here when that is before the position
    /// (what was read there is gone), read as usual when it is not, and refused as
    /// UNKNOWN_LEADER_EPOCH when the epoch is newer than this leader's (a stale leader, whose
    /// log would look diverged).
    #[test]
    fn a_consumer_fetch_finds_a_truncation_below_its_position() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[("log.flush.policy", "interval")]);
        let (_, end0) = crate::replica_manager::tests::epochs_0_then_1(&rm);
        let answer = |offset: i64, last: Option<i32>| {
            let req = consumer_fetch_of_t(FetchPartition {
                index: 0,
                current_leader_epoch: None,
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                last_fetched_epoch: last,
                ..Default::default()
            });
            let mut plan = Plan::new(&req, 1 << 20);
            plan.check(&rm, &req, false);
            (
                plan.reads.len(),
                plan.response.topics[0].partitions[0].clone(),
            )
        };
        let (reads, pr) = answer(end0 + 1, Some(0));
        assert_eq!((reads, pr.error_code), (0, 0));
        let d = pr.diverging_epoch.expect("diverged");
        assert_eq!((d.epoch, d.end_offset), (0, end0));
        let (reads, pr) = answer(end0, Some(0));
        assert_eq!((reads, pr.diverging_epoch), (1, None));
        let (reads, pr) = answer(end0 + 1, Some(1));
        assert_eq!((reads, pr.diverging_epoch), (1, None));
        let (reads, pr) = answer(end0 + 1, None);
        assert_eq!((reads, pr.diverging_epoch), (1, None));
        let (reads, pr) = answer(end0 + 1, Some(2));
        assert_eq!(reads, 0);
        assert_eq!(pr.error_code, ErrorCode::UnknownLeaderEpoch as i32);
    }

    /// A consumer fetch whose partition moves to another broker between its check and its
    /// read names the new leader, so the consumer goes there at once (KIP-951) instead of
    /// backing off and refreshing metadata.
    #[test]
    fn a_fetch_overtaken_by_a_leadership_move_names_the_new_leader() {
        let tmp = tempfile::tempdir().unwrap();
        let rm = replica_manager(tmp.path(), &[]);
        rm.apply_image(Arc::new(image(5, &[("t", "A", vec![1, 2])])));
        let req = consumer_fetch_of_t(FetchPartition {
            index: 0,
            current_leader_epoch: Some(0),
            ..Default::default()
        });
        let mut plan = Plan::new(&req, 1 << 20);
        plan.check(&rm, &req, false);
        assert_eq!(plan.reads.len(), 1, "checked in epoch 0, a read is due");
        let mut moved = image(6, &[("t", "A", vec![2, 1])]);
        moved.topics.get_mut("t").unwrap().partitions[0].leader_epoch = 1;
        rm.apply_image(Arc::new(moved));
        plan.read(&rm, false);
        let pr = &plan.response.topics[0].partitions[0];
        assert_eq!(pr.error_code, ErrorCode::NotLeaderOrFollower as i32);
        let hint = pr.current_leader.as_ref().expect("the new leader is named");
        assert_eq!((hint.leader_id, hint.leader_epoch), (2, 1));
    }
}
