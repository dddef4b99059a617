//! Errors of the commit log, each mapped to the Kafka error code a client should see.

use std::path::PathBuf;

use rill_protocol::ErrorCode;
use rill_protocol::record_batch::BatchError;

/// Why a log operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// A batch in an append failed validation; nothing of the append was written.
    #[error("batch {index} of the request is invalid: {source}")]
    InvalidBatch {
        /// Position of the batch in the appended buffer.
        index: usize,
        /// What is wrong with it.
        #[source]
        source: BatchError,
    },
    /// A batch is larger than `max.message.bytes`.
    #[error(
        "batch of {size} bytes exceeds max.message.bytes = {max}; raise the topic's max.message.bytes or send smaller batches"
    )]
    MessageTooLarge {
        /// The batch's size in bytes.
        size: usize,
        /// The topic's `max.message.bytes`.
        max: usize,
    },
    /// A compressed batch whose records decompress to more than the broker allows.
    #[error(
        "batch {index} decompresses to more than {max} bytes (rill.decompressed.batch.max.bytes); send smaller batches or raise rill.decompressed.batch.max.bytes on the broker"
    )]
    DecompressedTooLarge {
        /// Position of the batch in the appended buffer.
        index: usize,
        /// The bound: `rill.decompressed.batch.max.bytes` (at least `max.message.bytes`).
        max: usize,
    },
    /// A record without key was sent to a compacted topic.
    #[error(
        "compacted topics need a key on every record (batch {index} has a record with a null key); set a key or use cleanup.policy=delete"
    )]
    KeylessRecordInCompactedLog {
        /// Position of the batch in the appended buffer.
        index: usize,
    },
    /// A CreateTime record's timestamp is too far from the broker's clock.
    #[error(
        "batch {index} has a record timestamp {timestamp} more than {limit_ms} ms {direction} the broker's clock ({now}); fix the producer's clock or raise message.timestamp.{direction}.max.ms"
    )]
    InvalidTimestamp {
        /// Position of the batch in the appended buffer.
        index: usize,
        /// The offending timestamp.
        timestamp: i64,
        /// The broker's time.
        now: i64,
        /// "before" or "after".
        direction: &'static str,
        /// The configured bound.
        limit_ms: i64,
    },
    /// A CreateTime record has no timestamp (-1, `NO_TIMESTAMP`) or a negative one, and the
    /// topic does not allow it (`message.timestamp.missing.allowed`).
    #[error(
        "batch {index} has a record with timestamp {timestamp} (-1 means no timestamp was set); set record timestamps in the producer, use message.timestamp.type=LogAppendTime, or allow them with message.timestamp.missing.allowed=true"
    )]
    MissingTimestamp {
        /// Position of the batch in the appended buffer.
        index: usize,
        /// The smallest record timestamp of the batch.
        timestamp: i64,
    },
    /// An append brought nothing to append.
    #[error("the request holds no record batch")]
    EmptyAppend,
    /// Replicated batches must continue the log exactly.
    #[error(
        "replicated batch starts at offset {base_offset}, but the log ends at {log_end_offset}"
    )]
    NonMonotonicOffset {
        /// The batch's base offset.
        base_offset: i64,
        /// The log end offset.
        log_end_offset: i64,
    },
    /// An idempotent producer's batch does not continue its sequence: a gap (an earlier batch
    /// was not written), a new epoch not starting at 0, or a malformed producer header. Nothing
    /// of the append was written. The producer retries (when an earlier batch of its is still
    /// being retried) or bumps its epoch (KIP-360).
    #[error(
        "out of order sequence for producer {producer_id} epoch {producer_epoch}: batch starts at sequence {first_seq}; {reason}"
    )]
    OutOfOrderSequence {
        /// The producer id the batch carries.
        producer_id: i64,
        /// The batch's producer epoch.
        producer_epoch: i16,
        /// The batch's first sequence.
        first_seq: i32,
        /// What was expected.
        reason: String,
    },
    /// A batch from an older epoch than the partition knows for its producer id: a newer
    /// producer instance fenced this one (or it bumped its epoch). Nothing was written.
    #[error(
        "producer {producer_id} epoch {producer_epoch} is fenced: the partition has epoch {current_epoch}"
    )]
    InvalidProducerEpoch {
        /// The producer id the batch carries.
        producer_id: i64,
        /// The batch's epoch.
        producer_epoch: i16,
        /// The epoch the partition knows.
        current_epoch: i16,
    },
    /// The partition has no state for this producer id (never seen, expired after
    /// `producer.id.expiration.ms`, or its batches were deleted by retention) and the batch does
    /// not start at sequence 0. Nothing was written; the producer bumps its epoch (KIP-360).
    #[error(
        "unknown producer id {producer_id} (epoch {producer_epoch}, sequence {first_seq}): the partition has no state for it; start a new epoch at sequence 0"
    )]
    UnknownProducerId {
        /// The producer id the batch carries.
        producer_id: i64,
        /// The batch's epoch.
        producer_epoch: i16,
        /// The batch's first sequence.
        first_seq: i32,
    },
    /// A read or lookup outside the log.
    #[error("offset {offset} is outside the log [{log_start_offset}, {log_end_offset}]")]
    OffsetOutOfRange {
        /// The offset asked for.
        offset: i64,
        /// First offset in the log.
        log_start_offset: i64,
        /// Offset after the last record.
        log_end_offset: i64,
    },
    /// A config value is unknown or out of range.
    #[error("invalid config {name}={value:?}: {reason}")]
    InvalidConfig {
        /// Config name, as given (known or not).
        name: String,
        /// The value refused, as given.
        value: String,
        /// What is allowed.
        reason: String,
    },
    /// A log dir belongs to another node or another cluster (its `meta.properties`): serving
    /// its data as this broker's replicas could lose acknowledged records.
    #[error("log dir {dir} {reason}")]
    ForeignLogDir {
        /// The log dir (one of `log.dirs`).
        dir: PathBuf,
        /// Whose it is, and what to do.
        reason: String,
    },
    /// On-disk data is not what the log wrote.
    #[error("corrupt log data in {path}: {reason}")]
    Corrupt {
        /// The file whose contents are wrong.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// The log can no longer be trusted with writes: an earlier write or fsync failed. Linux
    /// drops the dirty pages of a failed fsync ("fsyncgate"), so retrying could only pretend
    /// that lost data is durable; the log stays failed until the broker restarts and recovers it
    /// from what really reached the disk. The broker takes the whole log directory offline, as
    /// Kafka's `LogDirFailureChannel` does.
    #[error(
        "log {dir} is offline after an I/O failure ({reason}); nothing more is written or acknowledged until the broker restarts and recovers it"
    )]
    LogDirOffline {
        /// The partition directory of the failed log (its parent is the log dir).
        dir: PathBuf,
        /// The first failure, as reported when it happened.
        reason: String,
    },
    /// The offsets waited for were truncated away (this replica stopped leading and took
    /// another leader's log) before they became durable: they will never be.
    #[error(
        "offsets up to {end} were truncated (the log now ends at {log_end}) before they were on disk"
    )]
    Truncated {
        /// The end offset waited for.
        end: i64,
        /// The log end after the truncation.
        log_end: i64,
    },
    /// The log was closed (the broker is shutting down): nothing more is written to it.
    #[error("log {dir} is closed: the broker is shutting down")]
    Closed {
        /// The partition directory.
        dir: PathBuf,
    },
    /// A read made with [`crate::Log::read_cached`] would have waited (for the disk, or for a
    /// write holding the segment); nothing was read. Read again with [`crate::Log::read`].
    #[error("the read would wait for the disk or for a write")]
    WouldBlock,
    /// An I/O error on a log file.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl LogError {
    /// The Kafka error code for this failure.
    pub fn error_code(&self) -> ErrorCode {
        match self {
            LogError::InvalidBatch { source, .. } => source.error_code(),
            LogError::MessageTooLarge { .. } | LogError::DecompressedTooLarge { .. } => {
                ErrorCode::MessageTooLarge
            }
            LogError::KeylessRecordInCompactedLog { .. } => ErrorCode::InvalidRecord,
            LogError::InvalidTimestamp { .. } | LogError::MissingTimestamp { .. } => {
                ErrorCode::InvalidTimestamp
            }
            LogError::EmptyAppend => ErrorCode::InvalidRequest,
            LogError::NonMonotonicOffset { .. } => ErrorCode::CorruptMessage,
            LogError::OutOfOrderSequence { .. } => ErrorCode::OutOfOrderSequenceNumber,
            LogError::InvalidProducerEpoch { .. } => ErrorCode::InvalidProducerEpoch,
            LogError::UnknownProducerId { .. } => ErrorCode::UnknownProducerId,
            LogError::OffsetOutOfRange { .. } => ErrorCode::OffsetOutOfRange,
            LogError::Truncated { .. } | LogError::Closed { .. } => ErrorCode::NotLeaderOrFollower,
            LogError::InvalidConfig { .. } => ErrorCode::InvalidConfig,
            LogError::ForeignLogDir { .. } => ErrorCode::InconsistentClusterId,
            LogError::Corrupt { .. } | LogError::Io { .. } | LogError::LogDirOffline { .. } => {
                ErrorCode::KafkaStorageError
            }
            // Answered by reading again where waiting is fine; never meant for a client.
            LogError::WouldBlock => ErrorCode::UnknownServerError,
        }
    }

    /// True when this error means the log directory can no longer be trusted and must be taken
    /// offline (Kafka's `LogDirFailureChannel`): every I/O error of the log layer (a failed write
    /// or fsync may have lost acknowledged-to-be data; Kafka treats any `IOException` of a log
    /// this way) and [`LogError::LogDirOffline`]. Validation errors, out-of-range reads and
    /// corrupt data found by a read concern one request or one batch, not the directory.
    pub fn is_log_dir_failure(&self) -> bool {
        matches!(self, LogError::Io { .. } | LogError::LogDirOffline { .. })
    }
}

/// Shorthand for results of log operations.
pub type Result<T, E = LogError> = std::result::Result<T, E>;

/// Attaches a path to an I/O error.
pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| {
            // Reads under `segment_file::without_waiting` that refused to wait.
            if source.kind() == std::io::ErrorKind::WouldBlock
                && crate::segment_file::refusing_to_wait()
            {
                return LogError::WouldBlock;
            }
            LogError::Io {
                path: path.into(),
                source,
            }
        })
    }
}
