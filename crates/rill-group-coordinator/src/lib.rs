//! rill's group coordinator, as a state machine (Kafka's `group-coordinator` module): consumer
//! groups with the server-side rebalance protocol of KIP-848, their target assignments
//! (`uniform` and `range` assignors), member reconciliation, and committed offsets.
//!
//! The state of one `__consumer_offsets` partition is a [`GroupCoordinatorShard`]. Every change
//! is a [`Record`]: a request handler computes the records and its response, replays the records
//! on the shard, and returns both; the broker's coordinator runtime appends the records to the
//! partition and answers once they are committed. Loading a partition on a new leader replays
//! the same records, so a loaded shard equals the one that wrote them. Nothing here does I/O.

#![warn(missing_docs)]

use bytes::Bytes;
use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::proto::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, DeletableGroupResult,
    DescribedGroup, ListedGroup, OffsetCommitRequest, OffsetCommitResponse, OffsetDeleteRequest,
    OffsetDeleteResponse, OffsetFetchRequest, OffsetFetchResponse,
};

/// The internal topic holding group state and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The `__consumer_offsets` partition that coordinates `group_id`: Kafka's
/// `Utils.abs(groupId.hashCode()) % partitions`, with Java's `String.hashCode` over UTF-16 code
/// units, so a group lands on the same partition number as in Kafka.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    todo!("{group_id} {partitions}")
}

/// Broker settings the coordinator obeys, with Kafka's names.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `group.consumer.session.timeout.ms`: a member not heard from for this long is fenced
    /// (default 45 s).
    pub session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`: how often members heartbeat (default 5 s).
    pub heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`: members per group (default unbounded: `i32::MAX`).
    pub max_size: usize,
    /// `group.consumer.assignors`: the server assignors, the first is the default
    /// (default `uniform,range`).
    pub assignors: Vec<String>,
    /// `offset.metadata.max.bytes`: longest commit metadata string (default 4096).
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes` in ms: an empty group's offsets expire this long after
    /// their commit (default 7 days).
    pub offsets_retention_ms: i64,
    /// `group.id.max.length` (rill): longest group id accepted (default 255 bytes).
    pub max_group_id_length: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            max_size: i32::MAX as usize,
            assignors: vec!["uniform".into(), "range".into()],
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            max_group_id_length: 255,
        }
    }
}

/// One record of `__consumer_offsets`: a key and a value, or no value (a tombstone, which
/// compaction eventually removes with every older record of the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record key (version-prefixed; see [`records`]).
    pub key: Bytes,
    /// The record value, `None` for a tombstone.
    pub value: Option<Bytes>,
}

/// What a request handler produced: records to append (already replayed on the shard) and the
/// answer to send once they are committed.
#[derive(Debug)]
pub struct CoordinatorResult<T> {
    /// Records to append to the shard's partition, in order.
    pub records: Vec<Record>,
    /// The response for the client.
    pub response: T,
}

/// Why a record could not be replayed (a corrupt or unknown record in the partition).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The key or value does not decode.
    #[error("undecodable __consumer_offsets record: {0}")]
    Decode(String),
}

/// The groups and offsets of one `__consumer_offsets` partition.
pub struct GroupCoordinatorShard {
    config: GroupConfig,
}

impl GroupCoordinatorShard {
    /// An empty shard (a partition before loading).
    pub fn new(config: GroupConfig) -> Self {
        GroupCoordinatorShard { config }
    }

    /// Applies one record read from the partition while loading it.
    pub fn replay(&mut self, record: &Record) -> Result<(), RecordError> {
        todo!("{record:?}")
    }

    /// Called once every record is replayed: starts every member's session timer at `now_ms`
    /// and brings target assignments up to date with `image` (topics created, deleted or grown
    /// while no one coordinated the group).
    pub fn on_loaded(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<Record> {
        todo!("{image:?} {now_ms}")
    }

    /// ConsumerGroupHeartbeat: join, stay, reconcile or leave. `client_host` is the member's
    /// peer address (shown by DescribeGroups).
    pub fn consumer_group_heartbeat(
        &mut self,
        request: ConsumerGroupHeartbeatRequest,
        client_host: &str,
        image: &MetadataImage,
        now_ms: i64,
    ) -> CoordinatorResult<ConsumerGroupHeartbeatResponse> {
        todo!("{request:?} {client_host} {image:?} {now_ms}")
    }

    /// OffsetCommit from a member (checked against its epoch and assignment) or from outside
    /// the group (epoch -1, only while the group has no members).
    pub fn offset_commit(
        &mut self,
        request: OffsetCommitRequest,
        image: &MetadataImage,
        now_ms: i64,
    ) -> CoordinatorResult<OffsetCommitResponse> {
        todo!("{request:?} {image:?} {now_ms}")
    }

    /// OffsetFetch: committed offsets of the requested partitions (all when none are named).
    pub fn offset_fetch(&self, request: &OffsetFetchRequest) -> OffsetFetchResponse {
        todo!("{request:?}")
    }

    /// ListGroups for this shard, filtered by state names (empty = all).
    pub fn list_groups(&self, states_filter: &[String]) -> Vec<ListedGroup> {
        todo!("{states_filter:?}")
    }

    /// DescribeGroups for one group of this shard (GROUP_ID_NOT_FOUND when unknown).
    pub fn describe_group(&self, group_id: &str) -> DescribedGroup {
        todo!("{group_id}")
    }

    /// DeleteGroups: each group must exist and have no members; its offsets go with it.
    pub fn delete_groups(
        &mut self,
        group_ids: &[String],
    ) -> CoordinatorResult<Vec<DeletableGroupResult>> {
        todo!("{group_ids:?}")
    }

    /// OffsetDelete: removes committed offsets of topics no member subscribes to.
    pub fn offset_delete(
        &mut self,
        request: OffsetDeleteRequest,
    ) -> CoordinatorResult<OffsetDeleteResponse> {
        todo!("{request:?}")
    }

    /// Fences members whose session timeout (no heartbeat) or rebalance timeout (partitions not
    /// revoked in time) passed by `now_ms`, and lets static members that left for a restart go
    /// for good once their session timeout passed.
    pub fn expire_members(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<Record> {
        todo!("{image:?} {now_ms}")
    }

    /// The earliest time [`expire_members`](Self::expire_members) has something to do, if any.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        todo!()
    }

    /// Topic metadata changed (topics created, deleted, partitions added): groups subscribed
    /// to a changed topic (by name or regex) get a new group epoch and target assignment.
    pub fn on_metadata_update(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<Record> {
        todo!("{image:?} {now_ms}")
    }

    /// Expires offsets of groups without members `offsets.retention.minutes` after their commit
    /// (and after the group became empty), and deletes groups left with no members and no
    /// offsets.
    pub fn cleanup_expired_offsets(&mut self, now_ms: i64) -> Vec<Record> {
        todo!("{now_ms}")
    }

    /// Number of groups (for metrics).
    pub fn group_count(&self) -> usize {
        todo!()
    }
}
