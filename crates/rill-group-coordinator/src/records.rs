//! The records of `__consumer_offsets`, with Kafka's record types (`GroupCoordinatorRecordSerde`).
//!
//! A key is a 2-byte big-endian record type followed by the prost-encoded key message; a value
//! is a 2-byte big-endian version (0) followed by the prost-encoded value message. The same
//! logical key always encodes to the same bytes (prost writes fields in tag order and skips
//! defaults), so log compaction keeps exactly the latest record of each key. A record without a
//! value is a tombstone: it deletes what its key held.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;

use crate::{Record, RecordError};

/// Kafka's legacy offset commit key type (same key layout as [`OFFSET_COMMIT`]); read, never
/// written.
pub const LEGACY_OFFSET_COMMIT: u16 = 0;
/// A committed offset: (group, topic, partition) → offset.
pub const OFFSET_COMMIT: u16 = 1;
/// A classic group (JoinGroup/SyncGroup protocol): generation, protocol, leader and members
/// with their assignments, as of its last completed rebalance (Kafka's `GroupMetadata` record).
pub const GROUP_METADATA: u16 = 2;
/// A consumer group's epoch: group → epoch.
pub const CONSUMER_GROUP_METADATA: u16 = 3;
/// The topics a consumer group subscribes to, with their partition counts.
pub const CONSUMER_GROUP_PARTITION_METADATA: u16 = 4;
/// A member's subscription and client details: (group, member) → metadata.
pub const CONSUMER_GROUP_MEMBER_METADATA: u16 = 5;
/// The group epoch the target assignment was computed for.
pub const CONSUMER_GROUP_TARGET_ASSIGNMENT_METADATA: u16 = 6;
/// One member's target assignment.
pub const CONSUMER_GROUP_TARGET_ASSIGNMENT_MEMBER: u16 = 7;
/// One member's current epoch, state and owned partitions.
pub const CONSUMER_GROUP_CURRENT_MEMBER_ASSIGNMENT: u16 = 8;

/// The value version written (values carry it so a later rill can evolve them).
pub const VALUE_VERSION: u16 = 0;

/// Key of [`OFFSET_COMMIT`].
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct OffsetCommitKey {
    /// The group id.
    #[prost(string, tag = "1")]
    pub group: String,
    /// The topic name.
    #[prost(string, tag = "2")]
    pub topic: String,
    /// The partition index.
    #[prost(int32, tag = "3")]
    pub partition: i32,
}

/// Value of [`OFFSET_COMMIT`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct OffsetCommitValue {
    /// The next offset to consume.
    #[prost(int64, tag = "1")]
    pub offset: i64,
    /// The leader epoch of the last consumed record, -1 when unknown.
    #[prost(int32, tag = "2")]
    pub leader_epoch: i32,
    /// The client's free text.
    #[prost(string, tag = "3")]
    pub metadata: String,
    /// When the coordinator accepted the commit (ms since the epoch); offsets expire from it.
    #[prost(int64, tag = "4")]
    pub commit_timestamp_ms: i64,
    /// When the offset expires once its group has no members (ms since the epoch), when the
    /// commit asked for its own retention (Kafka's OffsetCommit v2-4 `retention_time_ms`);
    /// unset: `offsets.retention.minutes` after the later of the commit and the group emptying.
    #[prost(int64, optional, tag = "5")]
    pub expire_timestamp_ms: Option<i64>,
}

/// One member of a classic group in [`GroupMetadataValue`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ClassicMemberValue {
    /// The member id the coordinator gave it.
    #[prost(string, tag = "1")]
    pub member_id: String,
    /// `group.instance.id` (always unset: static classic membership is refused).
    #[prost(string, optional, tag = "2")]
    pub group_instance_id: Option<String>,
    /// `client.id`.
    #[prost(string, tag = "3")]
    pub client_id: String,
    /// The member's peer address.
    #[prost(string, tag = "4")]
    pub client_host: String,
    /// How long a rebalance may wait for it.
    #[prost(int32, tag = "5")]
    pub rebalance_timeout_ms: i32,
    /// How long it may go without a heartbeat.
    #[prost(int32, tag = "6")]
    pub session_timeout_ms: i32,
    /// Its metadata for the group's selected protocol (the consumer's subscription).
    #[prost(bytes = "bytes", tag = "7")]
    pub subscription: bytes::Bytes,
    /// The assignment the leader gave it (opaque bytes of the protocol).
    #[prost(bytes = "bytes", tag = "8")]
    pub assignment: bytes::Bytes,
}

/// Value of [`GROUP_METADATA`]: a classic group as of its last completed rebalance (or as it
/// became empty). The coordinator's live state is ahead of it (joins in flight are not
/// written), so it is replayed only when loading: a loaded group with members is `Stable` in
/// this generation, and its members carry on heartbeating or rejoin.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct GroupMetadataValue {
    /// The protocol type (`consumer` for Kafka consumers).
    #[prost(string, tag = "1")]
    pub protocol_type: String,
    /// The generation.
    #[prost(int32, tag = "2")]
    pub generation: i32,
    /// The selected protocol (the assignor name), unset when empty.
    #[prost(string, optional, tag = "3")]
    pub protocol: Option<String>,
    /// The leader's member id, unset when empty.
    #[prost(string, optional, tag = "4")]
    pub leader: Option<String>,
    /// When the record was written (ms since the epoch).
    #[prost(int64, tag = "5")]
    pub current_state_timestamp_ms: i64,
    /// The members and their assignments.
    #[prost(message, repeated, tag = "6")]
    pub members: Vec<ClassicMemberValue>,
}

/// Key of the group-level records ([`GROUP_METADATA`], [`CONSUMER_GROUP_METADATA`],
/// [`CONSUMER_GROUP_PARTITION_METADATA`], [`CONSUMER_GROUP_TARGET_ASSIGNMENT_METADATA`]).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct GroupKey {
    /// The group id.
    #[prost(string, tag = "1")]
    pub group: String,
}

/// Key of the member-level records ([`CONSUMER_GROUP_MEMBER_METADATA`],
/// [`CONSUMER_GROUP_TARGET_ASSIGNMENT_MEMBER`], [`CONSUMER_GROUP_CURRENT_MEMBER_ASSIGNMENT`]).
#[derive(Clone, PartialEq, Eq, Hash, prost::Message)]
pub struct MemberKey {
    /// The group id.
    #[prost(string, tag = "1")]
    pub group: String,
    /// The member id.
    #[prost(string, tag = "2")]
    pub member: String,
}

/// Value of [`CONSUMER_GROUP_METADATA`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConsumerGroupMetadataValue {
    /// The group epoch.
    #[prost(int32, tag = "1")]
    pub epoch: i32,
}

/// One subscribed topic in [`ConsumerGroupPartitionMetadataValue`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TopicMetadataValue {
    /// The topic name.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Its number of partitions.
    #[prost(int32, tag = "2")]
    pub partitions: i32,
    /// Its id (a topic deleted and created again is another topic).
    #[prost(string, tag = "3")]
    pub topic_id: String,
}

/// Value of [`CONSUMER_GROUP_PARTITION_METADATA`]: the existing topics the group subscribes to
/// (by name or regex), sorted by name.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConsumerGroupPartitionMetadataValue {
    /// The topics.
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<TopicMetadataValue>,
}

/// Value of [`CONSUMER_GROUP_MEMBER_METADATA`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConsumerGroupMemberMetadataValue {
    /// `group.instance.id` of a static member.
    #[prost(string, optional, tag = "1")]
    pub instance_id: Option<String>,
    /// `client.rack`.
    #[prost(string, optional, tag = "2")]
    pub rack_id: Option<String>,
    /// `client.id`.
    #[prost(string, tag = "3")]
    pub client_id: String,
    /// The member's peer address.
    #[prost(string, tag = "4")]
    pub client_host: String,
    /// Topics subscribed by name, sorted.
    #[prost(string, repeated, tag = "5")]
    pub subscribed_topic_names: Vec<String>,
    /// Topics subscribed by regular expression.
    #[prost(string, optional, tag = "6")]
    pub subscribed_topic_regex: Option<String>,
    /// How long the member may take to revoke partitions.
    #[prost(int32, tag = "7")]
    pub rebalance_timeout_ms: i32,
    /// The server assignor the member asked for.
    #[prost(string, optional, tag = "8")]
    pub server_assignor: Option<String>,
}

/// Value of [`CONSUMER_GROUP_TARGET_ASSIGNMENT_METADATA`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConsumerGroupTargetAssignmentMetadataValue {
    /// The group epoch the target assignment was computed for.
    #[prost(int32, tag = "1")]
    pub assignment_epoch: i32,
}

/// Partitions of one topic, in assignment values.
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct TopicPartitionsValue {
    /// The topic name.
    #[prost(string, tag = "1")]
    pub topic: String,
    /// Partition indexes, sorted.
    #[prost(int32, repeated, tag = "2")]
    pub partitions: Vec<i32>,
}

/// Value of [`CONSUMER_GROUP_TARGET_ASSIGNMENT_MEMBER`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConsumerGroupTargetAssignmentMemberValue {
    /// The partitions the member should own, sorted by topic.
    #[prost(message, repeated, tag = "1")]
    pub topic_partitions: Vec<TopicPartitionsValue>,
}

/// Value of [`CONSUMER_GROUP_CURRENT_MEMBER_ASSIGNMENT`].
#[derive(Clone, PartialEq, Eq, prost::Message)]
pub struct ConsumerGroupCurrentMemberAssignmentValue {
    /// The member's epoch.
    #[prost(int32, tag = "1")]
    pub member_epoch: i32,
    /// The epoch before it (a member may still use it once, when the answer bumping it was lost).
    #[prost(int32, tag = "2")]
    pub previous_member_epoch: i32,
    /// Kafka's `MemberState`: 0 stable, 1 unrevoked partitions, 2 unreleased partitions.
    #[prost(int32, tag = "3")]
    pub state: i32,
    /// Partitions the member owns, sorted by topic.
    #[prost(message, repeated, tag = "4")]
    pub assigned_partitions: Vec<TopicPartitionsValue>,
    /// Partitions the member still owns but must give up, sorted by topic.
    #[prost(message, repeated, tag = "5")]
    pub partitions_pending_revocation: Vec<TopicPartitionsValue>,
}

/// A decoded record of `__consumer_offsets`: its key and its value (`None` = tombstone).
#[derive(Clone, Debug, PartialEq)]
pub enum CoordinatorRecord {
    /// A committed offset (type 1, or legacy 0 on read).
    OffsetCommit(OffsetCommitKey, Option<OffsetCommitValue>),
    /// A classic group (type 2).
    GroupMetadata(GroupKey, Option<GroupMetadataValue>),
    /// A consumer group's epoch (type 3).
    ConsumerGroupMetadata(GroupKey, Option<ConsumerGroupMetadataValue>),
    /// A consumer group's subscribed topic metadata (type 4).
    ConsumerGroupPartitionMetadata(GroupKey, Option<ConsumerGroupPartitionMetadataValue>),
    /// A member's subscription (type 5).
    ConsumerGroupMemberMetadata(MemberKey, Option<ConsumerGroupMemberMetadataValue>),
    /// The target assignment's epoch (type 6).
    ConsumerGroupTargetAssignmentMetadata(
        GroupKey,
        Option<ConsumerGroupTargetAssignmentMetadataValue>,
    ),
    /// One member's target assignment (type 7).
    ConsumerGroupTargetAssignmentMember(
        MemberKey,
        Option<ConsumerGroupTargetAssignmentMemberValue>,
    ),
    /// One member's current assignment (type 8).
    ConsumerGroupCurrentMemberAssignment(
        MemberKey,
        Option<ConsumerGroupCurrentMemberAssignmentValue>,
    ),
}

fn encode_key<M: Message>(record_type: u16, key: &M) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + key.encoded_len());
    buf.put_u16(record_type);
    key.encode_raw(&mut buf);
    buf.freeze()
}

fn encode_value<M: Message>(value: &Option<M>) -> Option<Bytes> {
    value.as_ref().map(|v| {
        let mut buf = BytesMut::with_capacity(2 + v.encoded_len());
        buf.put_u16(VALUE_VERSION);
        v.encode_raw(&mut buf);
        buf.freeze()
    })
}

fn decode_key<M: Message + Default>(record_type: u16, bytes: &[u8]) -> Result<M, RecordError> {
    M::decode(bytes)
        .map_err(|e| RecordError::Decode(format!("key of record type {record_type}: {e}")))
}

fn decode_value<M: Message + Default>(
    record_type: u16,
    value: Option<&Bytes>,
) -> Result<Option<M>, RecordError> {
    let Some(value) = value else {
        return Ok(None);
    };
    if value.len() < 2 {
        return Err(RecordError::Decode(format!(
            "value of record type {record_type} is {} bytes, shorter than its 2-byte version",
            value.len()
        )));
    }
    M::decode(&value[2..])
        .map(Some)
        .map_err(|e| RecordError::Decode(format!("value of record type {record_type}: {e}")))
}

impl CoordinatorRecord {
    /// The record's type number (the key's 2-byte prefix).
    pub fn record_type(&self) -> u16 {
        match self {
            CoordinatorRecord::OffsetCommit(..) => OFFSET_COMMIT,
            CoordinatorRecord::GroupMetadata(..) => GROUP_METADATA,
            CoordinatorRecord::ConsumerGroupMetadata(..) => CONSUMER_GROUP_METADATA,
            CoordinatorRecord::ConsumerGroupPartitionMetadata(..) => {
                CONSUMER_GROUP_PARTITION_METADATA
            }
            CoordinatorRecord::ConsumerGroupMemberMetadata(..) => CONSUMER_GROUP_MEMBER_METADATA,
            CoordinatorRecord::ConsumerGroupTargetAssignmentMetadata(..) => {
                CONSUMER_GROUP_TARGET_ASSIGNMENT_METADATA
            }
            CoordinatorRecord::ConsumerGroupTargetAssignmentMember(..) => {
                CONSUMER_GROUP_TARGET_ASSIGNMENT_MEMBER
            }
            CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(..) => {
                CONSUMER_GROUP_CURRENT_MEMBER_ASSIGNMENT
            }
        }
    }

    /// The group the record belongs to.
    pub fn group_id(&self) -> &str {
        match self {
            CoordinatorRecord::OffsetCommit(k, _) => &k.group,
            CoordinatorRecord::GroupMetadata(k, _)
            | CoordinatorRecord::ConsumerGroupMetadata(k, _)
            | CoordinatorRecord::ConsumerGroupPartitionMetadata(k, _)
            | CoordinatorRecord::ConsumerGroupTargetAssignmentMetadata(k, _) => &k.group,
            CoordinatorRecord::ConsumerGroupMemberMetadata(k, _)
            | CoordinatorRecord::ConsumerGroupTargetAssignmentMember(k, _)
            | CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(k, _) => &k.group,
        }
    }

    /// Encodes the record as key and value bytes.
    pub fn encode(&self) -> Record {
        let t = self.record_type();
        let (key, value) = match self {
            CoordinatorRecord::OffsetCommit(k, v) => (encode_key(t, k), encode_value(v)),
            CoordinatorRecord::GroupMetadata(k, v) => (encode_key(t, k), encode_value(v)),
            CoordinatorRecord::ConsumerGroupMetadata(k, v) => (encode_key(t, k), encode_value(v)),
            CoordinatorRecord::ConsumerGroupPartitionMetadata(k, v) => {
                (encode_key(t, k), encode_value(v))
            }
            CoordinatorRecord::ConsumerGroupMemberMetadata(k, v) => {
                (encode_key(t, k), encode_value(v))
            }
            CoordinatorRecord::ConsumerGroupTargetAssignmentMetadata(k, v) => {
                (encode_key(t, k), encode_value(v))
            }
            CoordinatorRecord::ConsumerGroupTargetAssignmentMember(k, v) => {
                (encode_key(t, k), encode_value(v))
            }
            CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(k, v) => {
                (encode_key(t, k), encode_value(v))
            }
        };
        Record { key, value }
    }

    /// Decodes a record read from the partition. `Ok(None)` for a record type this version
    /// does not know (a newer rill or Kafka wrote it): the caller skips it.
    pub fn decode(record: &Record) -> Result<Option<CoordinatorRecord>, RecordError> {
        let key = &record.key;
        if key.len() < 2 {
            return Err(RecordError::Decode(format!(
                "key is {} bytes, shorter than its 2-byte record type",
                key.len()
            )));
        }
        let t = u16::from_be_bytes([key[0], key[1]]);
        let body = &key[2..];
        let value = record.value.as_ref();
        let decoded = match t {
            LEGACY_OFFSET_COMMIT | OFFSET_COMMIT => {
                CoordinatorRecord::OffsetCommit(decode_key(t, body)?, decode_value(t, value)?)
            }
            GROUP_METADATA => {
                CoordinatorRecord::GroupMetadata(decode_key(t, body)?, decode_value(t, value)?)
            }
            CONSUMER_GROUP_METADATA => CoordinatorRecord::ConsumerGroupMetadata(
                decode_key(t, body)?,
                decode_value(t, value)?,
            ),
            CONSUMER_GROUP_PARTITION_METADATA => CoordinatorRecord::ConsumerGroupPartitionMetadata(
                decode_key(t, body)?,
                decode_value(t, value)?,
            ),
            CONSUMER_GROUP_MEMBER_METADATA => CoordinatorRecord::ConsumerGroupMemberMetadata(
                decode_key(t, body)?,
                decode_value(t, value)?,
            ),
            CONSUMER_GROUP_TARGET_ASSIGNMENT_METADATA => {
                CoordinatorRecord::ConsumerGroupTargetAssignmentMetadata(
                    decode_key(t, body)?,
                    decode_value(t, value)?,
                )
            }
            CONSUMER_GROUP_TARGET_ASSIGNMENT_MEMBER => {
                CoordinatorRecord::ConsumerGroupTargetAssignmentMember(
                    decode_key(t, body)?,
                    decode_value(t, value)?,
                )
            }
            CONSUMER_GROUP_CURRENT_MEMBER_ASSIGNMENT => {
                CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
                    decode_key(t, body)?,
                    decode_value(t, value)?,
                )
            }
            other => {
                tracing::warn!(
                    record_type = other,
                    "skipping a __consumer_offsets record of an unknown type (written by a newer version?)"
                );
                return Ok(None);
            }
        };
        Ok(Some(decoded))
    }
}

/// Key of group `group`'s group-level records.
pub fn group_key(group: &str) -> GroupKey {
    GroupKey {
        group: group.to_string(),
    }
}

/// Key of member `member` of `group`'s member-level records.
pub fn member_key(group: &str, member: &str) -> MemberKey {
    MemberKey {
        group: group.to_string(),
        member: member.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_deterministic_and_typed() {
        let a = CoordinatorRecord::ConsumerGroupMemberMetadata(member_key("g", "m"), None).encode();
        let b = CoordinatorRecord::ConsumerGroupMemberMetadata(
            member_key("g", "m"),
            Some(ConsumerGroupMemberMetadataValue::default()),
        )
        .encode();
        assert_eq!(a.key, b.key);
        assert_eq!(&a.key[..2], &[0, 5]);
        assert_eq!(a.value, None);
        assert_eq!(&b.value.unwrap()[..2], &[0, 0]);
        let c = CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(member_key("g", "m"), None)
            .encode();
        assert_ne!(a.key, c.key, "same ids, different types: different keys");
    }

    #[test]
    fn round_trip() {
        let records = vec![
            CoordinatorRecord::OffsetCommit(
                OffsetCommitKey {
                    group: "g".into(),
                    topic: "t".into(),
                    partition: 3,
                },
                Some(OffsetCommitValue {
                    offset: 42,
                    leader_epoch: -1,
                    metadata: "m".into(),
                    commit_timestamp_ms: 7,
                    expire_timestamp_ms: Some(1007),
                }),
            ),
            CoordinatorRecord::ConsumerGroupMetadata(
                group_key("g"),
                Some(ConsumerGroupMetadataValue { epoch: 4 }),
            ),
            CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
                member_key("g", "m"),
                Some(ConsumerGroupCurrentMemberAssignmentValue {
                    member_epoch: 3,
                    previous_member_epoch: 2,
                    state: 1,
                    assigned_partitions: vec![TopicPartitionsValue {
                        topic: "t".into(),
                        partitions: vec![0, 1],
                    }],
                    partitions_pending_revocation: vec![],
                }),
            ),
            CoordinatorRecord::ConsumerGroupTargetAssignmentMember(member_key("g", "m"), None),
        ];
        for r in records {
            let decoded = CoordinatorRecord::decode(&r.encode()).unwrap().unwrap();
            assert_eq!(decoded, r);
        }
    }

    #[test]
    fn unknown_types_are_skipped_and_garbage_is_an_error() {
        let unknown = Record {
            key: Bytes::from_static(&[0, 99, 1, 2]),
            value: Some(Bytes::from_static(&[0, 0])),
        };
        assert!(CoordinatorRecord::decode(&unknown).unwrap().is_none());
        let short = Record {
            key: Bytes::from_static(&[0]),
            value: None,
        };
        assert!(CoordinatorRecord::decode(&short).is_err());
        let bad_value = Record {
            key: encode_key(CONSUMER_GROUP_METADATA, &group_key("g")),
            value: Some(Bytes::from_static(&[0])),
        };
        assert!(CoordinatorRecord::decode(&bad_value).is_err());
        let garbage_key = Record {
            key: Bytes::from_static(&[0, 3, 0xff, 0xff, 0xff]),
            value: None,
        };
        assert!(CoordinatorRecord::decode(&garbage_key).is_err());
    }
}
