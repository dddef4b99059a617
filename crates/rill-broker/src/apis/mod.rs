//! Per-request handlers (Kafka's `KafkaApis`): one module per API, each taking the decoded
//! request and answering it. The gRPC service (`network`) only decodes, delegates and encodes;
//! future listeners (the Kafka protocol) call the same handlers.

pub mod describe_configs;
pub mod fetch;
pub mod list_offsets;
pub mod metadata;
pub mod produce;

use rill_protocol::ErrorCode;
use rill_protocol::proto::LeaderIdAndEpoch;

use crate::partition::Partition;

/// The `current_leader` field from a known (leader id, leader epoch).
pub(crate) fn leader_hint(current: Option<(i32, i32)>) -> Option<LeaderIdAndEpoch> {
    current.map(|(leader_id, leader_epoch)| LeaderIdAndEpoch {
        leader_id,
        leader_epoch,
    })
}

/// The `current_leader` for an error found after the partition's checks passed: when it is
/// NOT_LEADER_OR_FOLLOWER, leadership moved meanwhile, and naming the new leader lets the client
/// go there at once (KIP-951) instead of after a backoff and a metadata refresh.
pub(crate) fn moved_leader_hint(
    code: ErrorCode,
    partition: &Partition,
) -> Option<LeaderIdAndEpoch> {
    if code == ErrorCode::NotLeaderOrFollower {
        leader_hint(Some(partition.leader_and_epoch()))
    } else {
        None
    }
}

/// A blocking-pool task that died (a panic): the request fails as a whole.
pub(crate) fn blocking_err(e: tokio::task::JoinError) -> tonic::Status {
    tonic::Status::internal(format!("worker failed: {e}"))
}

/// KIP-320's leader-epoch fence for Fetch and ListOffsets: `asked` is the epoch the client
/// believes current. An older one means the client missed a leader change (FENCED_LEADER_EPOCH:
/// refresh metadata); a newer one means this broker has not yet learned of it
/// (UNKNOWN_LEADER_EPOCH: retry). Consumers that do not track epochs leave it unset or -1 and
/// are not checked (`check_consumer_epoch`); followers always are.
pub(crate) fn check_leader_epoch(asked: i32, current: i32) -> Result<(), (ErrorCode, String)> {
    if asked == current {
        return Ok(());
    }
    let (code, what) = if asked < current {
        (ErrorCode::FencedLeaderEpoch, "older")
    } else {
        (ErrorCode::UnknownLeaderEpoch, "newer")
    };
    Err((
        code,
        format!("leader epoch {asked} is {what} than the current {current}"),
    ))
}

/// [`check_leader_epoch`] for a consumer's request: none is made when the epoch is unset or
/// negative.
pub(crate) fn check_consumer_epoch(
    asked: Option<i32>,
    current: i32,
) -> Result<(), (ErrorCode, String)> {
    match asked {
        Some(asked) if asked >= 0 => check_leader_epoch(asked, current),
        _ => Ok(()),
    }
}
