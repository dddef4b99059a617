//! ListOffsets (Kafka's `handleListOffsetRequest`): earliest, latest (the high watermark), the
//! first offset at or after a time, or the record with the largest timestamp — each with the
//! leader epoch of the batch found.

use std::sync::Arc;
use std::time::Instant;

use rill_protocol::proto::*;
use rill_protocol::{ApiError, ErrorCode};
use tonic::Status;

use crate::apis::blocking_err;
use crate::network::BrokerService;
use rill_storage::TopicPartition;

use crate::replica_manager::ReplicaManager;

/// Handles one ListOffsets request.
pub async fn handle(
    svc: &BrokerService,
    req: ListOffsetsRequest,
) -> Result<ListOffsetsResponse, Status> {
    let started = Instant::now();
    if let Some(replica_id) = req.replica_id.filter(|id| *id != -1) {
        // Kafka's followers once looked up offsets this way; rill's find where their logs part
        // through Fetch (KIP-320), and a debugging replica id (-2) is not served either.
        return Err(Status::invalid_argument(format!(
            "ListOffsets with replica_id {replica_id}: only consumers' lookups (replica_id unset or -1) are served"
        )));
    }
    let rm = Arc::clone(&svc.rm);
    let response = tokio::task::spawn_blocking(move || ListOffsetsResponse {
        topics: req
            .topics
            .iter()
            .map(|t| ListOffsetsTopicResponse {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| list_offset(&rm, &t.name, p))
                    .collect(),
            })
            .collect(),
    })
    .await
    .map_err(blocking_err)?;
    let ok = response
        .topics
        .iter()
        .flat_map(|t| &t.partitions)
        .all(|p| p.error_code == 0);
    svc.metrics
        .observe("ListOffsets", started.elapsed().as_secs_f64(), ok);
    Ok(response)
}

fn list_offset(
    rm: &ReplicaManager,
    topic: &str,
    p: &ListOffsetsPartition,
) -> ListOffsetsPartitionResponse {
    let tp = TopicPartition::new(topic.to_owned(), p.index);
    let mut r = ListOffsetsPartitionResponse {
        index: p.index,
        timestamp: -1,
        offset: -1,
        leader_epoch: -1,
        ..Default::default()
    };
    let fail = |mut r: ListOffsetsPartitionResponse, e: ApiError| {
        r.error_code = e.code as i32;
        r.error_message = e.message;
        r
    };
    let partition = match rm.leader_partition(&tp) {
        Ok(p) => p,
        Err((e, _)) => return fail(r, e),
    };
    // A client that names the leader epoch it believes current is told when it is stale
    // (FENCED_LEADER_EPOCH) or ahead of this broker (UNKNOWN_LEADER_EPOCH), as for Fetch.
    let (_, current) = partition.leader_and_epoch();
    if let Err((code, message)) = super::check_consumer_epoch(p.current_leader_epoch, current) {
        return fail(r, ApiError::new(code, message));
    }
    match lookup_offset(rm, &partition, p.timestamp) {
        Ok(Some((offset, timestamp, epoch))) => {
            r.offset = offset;
            r.timestamp = timestamp;
            r.leader_epoch = epoch;
            r
        }
        Ok(None) => r,
        Err(e) => fail(r, e),
    }
}

/// ListOffsets for one partition: (offset, timestamp, leader epoch of the batch at that
/// offset) — or `None` when no record matches a time lookup. `timestamp` is a time in ms, -2
/// (earliest), -1 (latest: the high watermark) or -3 (the record with the largest timestamp).
pub(crate) fn lookup_offset(
    rm: &ReplicaManager,
    partition: &crate::replica_manager::Partition,
    timestamp: i64,
) -> Result<Option<(i64, i64, i32)>, ApiError> {
    if !(timestamp >= 0 || matches!(timestamp, -3..=-1)) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "timestamp {timestamp} is not supported: use -2 (earliest), -1 (latest), -3 (max timestamp) or a time in ms"
            ),
        ));
    }
    let (start, hw) = rm.offsets(partition)?;
    // Kafka's `fetchOffsetForTimestamp`: a new leader whose high watermark has not reached
    // where its epoch began may answer offsets behind what the previous leader answered (a
    // consumer resetting to "latest" would read records twice); it asks to retry instead.
    let epoch_start = partition.epoch_start_offset();
    if timestamp != -2 && epoch_start > hw {
        return Err(ApiError::new(
            ErrorCode::OffsetNotAvailable,
            format!(
                "{}: the new leader's high watermark ({hw}) has not reached the start of its epoch ({epoch_start}) yet; retry",
                partition.tp
            ),
        ));
    }
    let log = partition.log.read();
    // The epoch of the leader that wrote `offset` (Kafka answers the batch's epoch, so a client
    // can detect truncation with OffsetForLeaderEpoch); -1 when the log has no epoch for it.
    let epoch_at = |offset: i64| {
        log.leader_epochs()
            .iter()
            .rev()
            .find(|e| e.start_offset <= offset)
            .map_or(-1, |e| e.epoch)
    };
    let storage = |e: rill_storage::LogError| {
        ApiError::new(
            e.error_code(),
            format!("offset lookup on {} failed: {e}", partition.tp),
        )
    };
    let ts = match timestamp {
        -2 => return Ok(Some((start, -1, epoch_at(start)))),
        -1 => return Ok(Some((hw, -1, log.latest_epoch().unwrap_or(-1)))),
        -3 => {
            // MAX_TIMESTAMP: the record with the largest timestamp (the first such, as Kafka).
            let max = log
                .segments()
                .iter()
                .map(|s| s.max_timestamp)
                .max()
                .unwrap_or(-1);
            if max < 0 {
                return Ok(None);
            }
            max
        }
        ts => ts,
    };
    match log.offset_for_timestamp(ts).map_err(storage)? {
        Some((offset, timestamp)) if offset < hw => Ok(Some((offset, timestamp, epoch_at(offset)))),
        _ => Ok(None),
    }
}
