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
use crate::network::BrokerService;
use bytes::Bytes;
use rill_storage::{LogError, TopicPartition};
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{StreamExt, StreamMap};

use crate::apis::leader_hint;
use crate::partition::Partition;
use crate::replica_manager::ReplicaManager;

/// Handles one Fetch request.
pub async fn handle(svc: &BrokerService, req: FetchRequest) -> Result<FetchResponse, Status> {
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
        // and followers near the log end) here; reads that would wait for the disk, or for a
        // write holding a log, on a blocking thread.
        let (mut response, reads) = check_all(&svc.rm, &req);
        let mut progress = ReadProgress {
            next: 0,
            total: 0,
            max_total: max_total(&req, svc.fetch_max_bytes),
        };
        read_planned(&svc.rm, &mut response, &reads, &mut progress, true);
        let (response, bytes) = if progress.next < reads.len() {
            let rm = Arc::clone(&svc.rm);
            tokio::task::spawn_blocking(move || {
                read_planned(&rm, &mut response, &reads, &mut progress, false);
                (response, progress.total)
            })
            .await
            .map_err(blocking_err)?
        } else {
            (response, progress.total)
        };
        let min_bytes = req.min_bytes.max(1) as usize;
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
        if bytes >= min_bytes || has_error || diverged || Instant::now() >= deadline {
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
    /// Up to the high watermark the answer reports.
    Consumer { hw: i64 },
    /// Up to the log end; `throttled` as `fetch_for_follower` said.
    Follower { throttled: bool },
}

/// How far the planned reads got.
struct ReadProgress {
    /// The first read not done yet.
    next: usize,
    /// Record bytes read so far.
    total: usize,
    max_total: usize,
}

/// Checks every requested partition (leadership, epochs, offsets; a follower's position is
/// recorded here) without reading records; returns the answer so far and the reads to do.
fn check_all(rm: &ReplicaManager, req: &FetchRequest) -> (FetchResponse, Vec<PlannedRead>) {
    let mut reads = Vec::new();
    let mut response = FetchResponse {
        topics: Vec::with_capacity(req.topics.len()),
    };
    for (ti, t) in req.topics.iter().enumerate() {
        let mut tr = FetchTopicResponse {
            name: t.name.clone(),
            partitions: Vec::with_capacity(t.partitions.len()),
        };
        for (pi, p) in t.partitions.iter().enumerate() {
            let tp = TopicPartition::new(t.name.clone(), p.index);
            let partition_max = if p.partition_max_bytes <= 0 {
                1 << 20
            } else {
                p.partition_max_bytes as usize
            };
            let mut pr = FetchPartitionResponse {
                index: p.index,
                high_watermark: -1,
                log_start_offset: -1,
                ..Default::default()
            };
            match rm.leader_partition(&tp) {
                Err((e, current)) => {
                    pr.error_code = e.code as i32;
                    pr.error_message = e.message;
                    pr.current_leader = leader_hint(current);
                }
                Ok(partition) if req.replica_id >= 0 => {
                    let (checked, read) =
                        rm.fetch_for_follower(&partition, req.replica_id, req.replica_epoch, p);
                    pr = checked;
                    if let Some(throttled) = read {
                        reads.push(PlannedRead {
                            at: (ti, pi),
                            partition,
                            offset: p.fetch_offset,
                            partition_max,
                            kind: ReadKind::Follower { throttled },
                        });
                    }
                }
                Ok(partition) => {
                    let state = partition.state();
                    let (start, hw) = match rm.offsets(&partition) {
                        Ok(o) => o,
                        Err(e) => {
                            pr.error_code = e.code as i32;
                            pr.error_message = e.message;
                            tr.partitions.push(pr);
                            continue;
                        }
                    };
                    pr.high_watermark = hw;
                    pr.log_start_offset = start;
                    if p.current_leader_epoch >= 0 && p.current_leader_epoch != state.leader_epoch {
                        let (code, what) = if p.current_leader_epoch < state.leader_epoch {
                            (ErrorCode::FencedLeaderEpoch, "older")
                        } else {
                            (ErrorCode::UnknownLeaderEpoch, "newer")
                        };
                        pr.error_code = code as i32;
                        pr.error_message = format!(
                            "leader epoch {} is {what} than the current {}",
                            p.current_leader_epoch, state.leader_epoch
                        );
                        pr.current_leader = Some(LeaderIdAndEpoch {
                            leader_id: state.leader,
                            leader_epoch: state.leader_epoch,
                        });
                    } else if p.fetch_offset < start || p.fetch_offset > partition.log_end_offset()
                    {
                        // Between the high watermark and the log end is not out of range: a
                        // new leader's high watermark can trail what consumers already read.
                        pr.error_code = ErrorCode::OffsetOutOfRange as i32;
                        pr.error_message = format!(
                            "offset {} is outside [{start}, {hw}] of {tp}",
                            p.fetch_offset
                        );
                    } else {
                        reads.push(PlannedRead {
                            at: (ti, pi),
                            partition,
                            offset: p.fetch_offset,
                            partition_max,
                            kind: ReadKind::Consumer { hw },
                        });
                    }
                }
            }
            tr.partitions.push(pr);
        }
        response.topics.push(tr);
    }
    (response, reads)
}

/// Does the planned reads from `progress.next` on, in order, into `response`. With
/// `cached_only` it stops at the first read that would wait (for the disk, or for a write
/// holding the log), leaving `progress.next` there for a blocking thread to go on from.
fn read_planned(
    rm: &ReplicaManager,
    response: &mut FetchResponse,
    reads: &[PlannedRead],
    progress: &mut ReadProgress,
    cached_only: bool,
) {
    while let Some(read) = reads.get(progress.next) {
        let remaining = progress.max_total.saturating_sub(progress.total);
        let result = match read.kind {
            // A follower always gets at least one batch, so a large one never stalls it.
            ReadKind::Follower { throttled } => rm.read_for_follower(
                &read.partition,
                read.offset,
                remaining.min(read.partition_max).max(1),
                throttled,
                cached_only,
            ),
            ReadKind::Consumer { .. } if remaining == 0 => Ok(None),
            ReadKind::Consumer { hw } => rm.read(
                &read.partition,
                read.offset,
                remaining.min(read.partition_max),
                progress.total == 0,
                hw,
                cached_only,
            ),
        };
        if cached_only && matches!(result, Err(LogError::WouldBlock)) {
            return;
        }
        let pr = &mut response.topics[read.at.0].partitions[read.at.1];
        match result {
            Ok(Some(bytes)) => {
                progress.total += bytes.len();
                pr.records = bytes;
            }
            Ok(None) => pr.records = Bytes::new(),
            Err(e) => {
                pr.error_code = e.error_code() as i32;
                pr.error_message = e.to_string();
            }
        }
        progress.next += 1;
    }
}
