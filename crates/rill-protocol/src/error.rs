//! The error model: an [`ErrorCode`] (Kafka's numbering) plus a message a person can act on.
//!
//! Per-partition failures travel inside responses as `error_code` + `error_message`. Whole-request
//! failures travel as a gRPC [`Status`]; [`ApiError`] converts both ways, keeping the ErrorCode
//! and any leader hint in trailing metadata so no information is lost across the wire.

use tonic::{Code, Status};

use crate::ErrorCode;

/// Trailing metadata key carrying the decimal [`ErrorCode`] of a failed call.
pub const ERROR_CODE_METADATA: &str = "rill-error-code";
/// Trailing metadata key carrying where to retry: `<node id>@<host>:<port>`.
pub const LEADER_HINT_METADATA: &str = "rill-leader-hint";

/// A failure with its Kafka error code and an actionable message.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}: {message}", code.as_kafka_name())]
pub struct ApiError {
    /// What failed, in Kafka's terms.
    pub code: ErrorCode,
    /// What happened and what to do about it.
    pub message: String,
    /// Where to retry (`<node id>@<host>:<port>`), for NOT_CONTROLLER and the like.
    pub leader_hint: Option<String>,
}

impl ApiError {
    /// An error with no leader hint.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError {
            code,
            message: message.into(),
            leader_hint: None,
        }
    }

    /// Adds a leader hint.
    pub fn with_leader_hint(mut self, hint: impl Into<String>) -> Self {
        self.leader_hint = Some(hint.into());
        self
    }

    /// The gRPC status code a whole-request failure with this error code uses.
    pub fn grpc_code(&self) -> Code {
        use ErrorCode as E;
        match self.code {
            E::None => Code::Ok,
            E::InvalidRequest
            | E::InvalidTopicException
            | E::InvalidConfig
            | E::InvalidPartitions
            | E::InvalidReplicationFactor
            | E::InvalidReplicaAssignment
            | E::InvalidRequiredAcks
            | E::InvalidRecord
            | E::InvalidTimestamp
            | E::InvalidGroupId
            | E::InvalidSessionTimeout
            | E::CorruptMessage
            | E::MessageTooLarge
            | E::RecordListTooLarge
            | E::UnsupportedCompressionType
            | E::OffsetMetadataTooLarge
            | E::InvalidCommitOffsetSize
            | E::UnsupportedAssignor => Code::InvalidArgument,
            E::UnknownTopicOrPartition
            | E::BrokerIdNotRegistered
            | E::UnknownMemberId
            | E::GroupIdNotFound => Code::NotFound,
            E::TopicAlreadyExists | E::DuplicateBrokerRegistration => Code::AlreadyExists,
            E::RequestTimedOut => Code::DeadlineExceeded,
            E::ThrottlingQuotaExceeded => Code::ResourceExhausted,
            E::LeaderNotAvailable
            | E::BrokerNotAvailable
            | E::CoordinatorLoadInProgress
            | E::CoordinatorNotAvailable
            | E::NotEnoughReplicas => Code::Unavailable,
            E::UnknownServerError | E::KafkaStorageError => Code::Internal,
            _ => Code::FailedPrecondition,
        }
    }
}

impl From<ApiError> for Status {
    fn from(err: ApiError) -> Status {
        let mut status = Status::new(err.grpc_code(), err.message);
        let md = status.metadata_mut();
        if let Ok(v) = (err.code as i32).to_string().parse() {
            md.insert(ERROR_CODE_METADATA, v);
        }
        if let Some(hint) = err.leader_hint.and_then(|h| h.parse().ok()) {
            md.insert(LEADER_HINT_METADATA, hint);
        }
        status
    }
}

impl From<Status> for ApiError {
    fn from(status: Status) -> ApiError {
        let md = status.metadata();
        let code = md
            .get(ERROR_CODE_METADATA)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i32>().ok())
            .and_then(|v| ErrorCode::try_from(v).ok())
            .unwrap_or_else(|| match status.code() {
                Code::DeadlineExceeded | Code::Cancelled => ErrorCode::RequestTimedOut,
                Code::Unavailable => ErrorCode::BrokerNotAvailable,
                Code::ResourceExhausted => ErrorCode::ThrottlingQuotaExceeded,
                Code::InvalidArgument => ErrorCode::InvalidRequest,
                Code::NotFound => ErrorCode::UnknownTopicOrPartition,
                // A status without rill's error code did not come from a rill handler (which
                // always sets it): the transport failed — connection reset, a peer killed
                // mid-request. Kafka's clients retry network errors; never take it for the
                // server's own UNKNOWN_SERVER_ERROR, which is not retried.
                _ => ErrorCode::BrokerNotAvailable,
            });
        let leader_hint = md
            .get(LEADER_HINT_METADATA)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        ApiError {
            code,
            message: status.message().to_owned(),
            leader_hint,
        }
    }
}

impl ErrorCode {
    /// Kafka's name for the code (`NOT_LEADER_OR_FOLLOWER`), as Kafka users know it.
    pub fn as_kafka_name(&self) -> &'static str {
        self.as_str_name()
            .strip_prefix("ERROR_CODE_")
            .unwrap_or(self.as_str_name())
    }

    /// True when retrying the same request (after a metadata refresh) may succeed.
    pub fn is_retriable(&self) -> bool {
        use ErrorCode as E;
        matches!(
            self,
            E::CorruptMessage
                | E::UnknownTopicOrPartition
                | E::LeaderNotAvailable
                | E::NotLeaderOrFollower
                | E::RequestTimedOut
                | E::BrokerNotAvailable
                | E::CoordinatorLoadInProgress
                | E::CoordinatorNotAvailable
                | E::NotCoordinator
                | E::NotEnoughReplicas
                | E::NotEnoughReplicasAfterAppend
                | E::NotController
                | E::KafkaStorageError
                | E::FencedLeaderEpoch
                | E::UnknownLeaderEpoch
                | E::ThrottlingQuotaExceeded
                | E::OffsetNotAvailable
        )
    }

    /// True for NONE.
    pub fn is_ok(&self) -> bool {
        *self == ErrorCode::None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_round_trip_keeps_code_message_and_hint() {
        let err = ApiError::new(ErrorCode::NotController, "controller 2 is not the leader")
            .with_leader_hint("1@127.0.0.1:9093");
        let status = Status::from(err.clone());
        assert_eq!(status.code(), Code::FailedPrecondition);
        assert_eq!(ApiError::from(status), err);
    }

    #[test]
    fn plain_status_maps_to_a_code() {
        let err = ApiError::from(Status::unavailable("connection refused"));
        assert_eq!(err.code, ErrorCode::BrokerNotAvailable);
        assert_eq!(err.message, "connection refused");
    }

    #[test]
    fn a_transport_failure_is_retriable_and_a_server_error_is_not() {
        // What tonic hands a client when the connection is reset mid-request.
        let cut = ApiError::from(Status::unknown("transport error: connection reset"));
        assert_eq!(cut.code, ErrorCode::BrokerNotAvailable);
        assert!(cut.code.is_retriable());
        let server = ApiError::from(Status::from(ApiError::new(
            ErrorCode::UnknownServerError,
            "a bug",
        )));
        assert_eq!(server.code, ErrorCode::UnknownServerError);
        assert!(!server.code.is_retriable());
    }

    #[test]
    fn kafka_names_and_numbers() {
        assert_eq!(
            ErrorCode::NotLeaderOrFollower.as_kafka_name(),
            "NOT_LEADER_OR_FOLLOWER"
        );
        assert_eq!(ErrorCode::NotLeaderOrFollower as i32, 6);
        assert_eq!(ErrorCode::UnknownServerError as i32, -1);
        assert_eq!(ErrorCode::CorruptMessage as i32, 2);
        assert_eq!(ErrorCode::FencedLeaderEpoch as i32, 74);
    }
}
