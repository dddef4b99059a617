//! Why consuming, committing or a group admin call failed.

use rill_protocol::{ApiError, ErrorCode, TopicPartition};

/// Why consuming failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsumerError {
    /// The cluster said no.
    #[error(transparent)]
    Api(#[from] ApiError),
    /// A batch failed its CRC or could not be decoded.
    #[error("corrupt batch from {topic}-{partition} at offset {offset}: {reason}")]
    Corrupt {
        #[allow(missing_docs)]
        topic: String,
        #[allow(missing_docs)]
        partition: i32,
        /// The consumer's position, or the corrupt batch's base offset when it is past the
        /// position; consuming stays here until the caller seeks.
        offset: i64,
        /// What is wrong with the batch (CRC mismatch, bad framing, failed decompression).
        reason: String,
    },
    /// A setting cannot work (the message names it); nothing was sent.
    #[error("invalid consumer config: {0}")]
    Config(String),
    /// A call that does not fit the consumer's state (subscribe after assign, commit without
    /// a group, seek of a partition not assigned, use after close); the message says what to do.
    #[error("{0}")]
    IllegalState(String),
    /// Partitions have no committed offset (or their position fell out of the log) and
    /// `auto.offset.reset` is `none` (Kafka's `NoOffsetForPartitionException`): seek them.
    #[error(
        "no offset to start {} from and auto.offset.reset=none: seek them first",
        list(partitions)
    )]
    NoOffset {
        /// The partitions without a position.
        partitions: Vec<TopicPartition>,
    },
    /// What was read of a partition up to `position` is no longer in its log from
    /// `divergent_offset` on (an unclean leader election cut it away; KIP-320), and
    /// `auto.offset.reset` is `none` (Kafka's `LogTruncationException`): seek the partition —
    /// to `divergent_offset` to read on from where the logs part.
    #[error(
        "{partition}: the records read from offset {divergent_offset} up to the position {position} are no longer in the log (truncated by a leader change) and auto.offset.reset=none: seek it"
    )]
    LogTruncation {
        /// The partition.
        partition: TopicPartition,
        /// The consumer's position, which stays until the caller seeks.
        position: i64,
        /// Where the partition's log parts from what was read.
        divergent_offset: i64,
    },
    /// Some partitions' offsets were not committed (Kafka's `CommitFailedException`).
    #[error("commit failed: {}", describe(failed))]
    Commit {
        /// Each partition that failed and why; the other partitions were committed.
        failed: Vec<(TopicPartition, ApiError)>,
    },
    /// Offsets of a group with members can only be changed by its members.
    #[error("group {group}: the group has active members; stop them first")]
    GroupNotEmpty {
        #[allow(missing_docs)]
        group: String,
    },
}

fn list(tps: &[TopicPartition]) -> String {
    tps.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn describe(failed: &[(TopicPartition, ApiError)]) -> String {
    failed
        .iter()
        .map(|(tp, e)| format!("{tp}: {e}"))
        .collect::<Vec<_>>()
        .join("; ")
}

impl ConsumerError {
    /// The protocol error code, for errors that carry one (a commit reports its first).
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ConsumerError::Api(e) => Some(e.code),
            ConsumerError::Commit { failed } => failed.first().map(|(_, e)| e.code),
            _ => None,
        }
    }
}

/// A failed request as an [`ApiError`]. A status the broker sent carries its error code; one
/// without it is the transport failing (connection refused or reset, a broker killed
/// mid-request), which is the retriable BROKER_NOT_AVAILABLE — never the broker's
/// UNKNOWN_SERVER_ERROR, which is not retried.
pub(crate) fn request_error(broker: impl std::fmt::Display, status: tonic::Status) -> ApiError {
    if status
        .metadata()
        .get(rill_protocol::ERROR_CODE_METADATA)
        .is_some()
    {
        return ApiError::from(status);
    }
    let e = ApiError::from(status);
    if e.code == ErrorCode::UnknownServerError {
        return ApiError::new(
            ErrorCode::BrokerNotAvailable,
            format!("request to broker {broker} failed: {}", e.message),
        );
    }
    e
}

/// The [`ApiError`] of a per-partition or per-response `error_code` + `error_message`, `None`
/// for NONE.
pub(crate) fn response_error(code: i32, message: &str) -> Option<ApiError> {
    if code == 0 {
        return None;
    }
    let code = ErrorCode::try_from(code).unwrap_or(ErrorCode::UnknownServerError);
    Some(ApiError::new(code, message))
}
