//! rill's commit log: each partition is an append-only log of Kafka v2 record batches, split
//! into segments (`.log` + `.index` + `.timeindex`), CRC-checked, recovered after crashes,
//! trimmed by retention and compacted by key.
//!
//! Map: [`Log`] (one partition) → [`LogSegment`] (one file set) → [`OffsetIndex`]/[`TimeIndex`];
//! [`LogManager`] (all partitions of a broker, checkpoints); `log_cleaner` (compaction);
//! [`GroupCommit`] (shared fsyncs). Everything is synchronous: callers run it on threads meant
//! for blocking I/O.

#![warn(missing_docs)]

mod checkpoint;
mod clock;
mod config;
mod error;
#[cfg(feature = "fault-injection")]
pub mod fault;
mod fsio;
mod group_commit;
mod index;
mod leader_epoch_cache;
mod log;
mod log_cleaner;
mod log_manager;
mod log_segment;
mod meta_properties;
mod producer_state;
mod segment_file;

pub use checkpoint::{OffsetCheckpointFile, write_atomically};
pub use clock::{Clock, ManualClock, SharedClock, SystemClock};
pub use config::{
    CleanupPolicy, DEFAULT_DECOMPRESSED_BATCH_MAX_BYTES, LogConfig, TOPIC_CONFIGS, TopicConfigDef,
};
pub use error::{LogError, Result};
pub use group_commit::GroupCommit;
pub use index::{OffsetIndex, TimeIndex};
pub use leader_epoch_cache::{EpochEntry, LEADER_EPOCH_CHECKPOINT, LeaderEpochFileCache};
pub use log::{Log, LogAppendInfo, LogOpenOptions};
pub use log_cleaner::{CleanedGroup, CleanerConfig, CleanerStats, CleaningPass, Swapped};
pub use log_manager::{
    CLEAN_SHUTDOWN_FILE, CLEANER_CHECKPOINT, LogManager, RECOVERY_POINT_CHECKPOINT, SharedLog,
    TopicPartition, parse_partition_dir, partition_dir_name,
};
pub use log_segment::{LogSegment, SegmentInfo};
pub use meta_properties::{META_PROPERTIES, MetaProperties};
pub use producer_state::{
    AppendCheck, BatchMetadata, DEFAULT_PRODUCER_ID_EXPIRATION_MS, NUM_BATCHES_TO_RETAIN,
    PRODUCER_SNAPSHOT_SUFFIX, ProducerStateEntry, ProducerStateManager, last_sequence,
    snapshot_path,
};
pub use segment_file::{SegmentFile, WRITE_BUFFER_BYTES};
