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
use rill_storage::TopicPartition;
use tokio_stream::wrappers::WatchStream;
use tokio_stream::{StreamExt, StreamMap};

use crate::apis::leader_hint;
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
        let rm = Arc::clone(&svc.rm);
        let r = req.clone();
        let fetch_max_bytes = svc.fetch_max_bytes;
        let (response, bytes) =
            tokio::task::spawn_blocking(move || read_all(&rm, &r, fetch_max_bytes))
                .await
                .map_err(blocking_err)?;
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

/// Reads every requested partition once; returns the response and the record bytes in it.
fn read_all(
    rm: &ReplicaManager,
    req: &FetchRequest,
    fetch_max_bytes: usize,
) -> (FetchResponse, usize) {
    let mut total = 0usize;
    // The broker's fetch.max.bytes caps what one fetch may hold, whatever the client asks.
    let max_total = if req.max_bytes <= 0 {
        fetch_max_bytes
    } else {
        (req.max_bytes as usize).min(fetch_max_bytes)
    };
    let mut response = FetchResponse::default();
    for t in &req.topics {
        let mut tr = FetchTopicResponse {
            name: t.name.clone(),
            partitions: Vec::with_capacity(t.partitions.len()),
        };
        for p in &t.partitions {
            let tp = TopicPartition::new(t.name.clone(), p.index);
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
                    let budget =
                        (max_total.saturating_sub(total)).min(if p.partition_max_bytes <= 0 {
                            1 << 20
                        } else {
                            p.partition_max_bytes as usize
                        });
                    pr = rm.fetch_for_follower(
                        &partition,
                        req.replica_id,
                        req.replica_epoch,
                        p,
                        budget.max(1),
                    );
                    total += pr.records.len();
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
                    } else if total < max_total {
                        let budget = (max_total - total).min(if p.partition_max_bytes <= 0 {
                            1 << 20
                        } else {
                            p.partition_max_bytes as usize
                        });
                        match rm.read(&partition, p.fetch_offset, budget, total == 0) {
                            Ok(Some(bytes)) => {
                                total += bytes.len();
                                pr.records = bytes;
                            }
                            Ok(None) => pr.records = Bytes::new(),
                            Err(e) => {
                                pr.error_code = e.code as i32;
                                pr.error_message = e.message;
                            }
                        }
                    }
                }
            }
            tr.partitions.push(pr);
        }
        response.topics.push(tr);
    }
    (response, total)
}
