//! A walk over a request body before the codec decodes it, checking every array length against
//! the bytes left in the frame.
//!
//! The `kafka-protocol` 0.18 decoders reserve an array's declared length up front
//! (`Vec::with_capacity(n)`), so 8 bytes declaring 2^31 Metadata topics make the process ask for
//! ~150 GB and abort (upstream kafka-protocol-rs PRs #152/#200, open). Every array element takes
//! at least one byte on the wire, so a length larger than what is left of the frame cannot be a
//! real request: the walk refuses it and the connection closes, the broker lives on. The walk
//! knows the layouts of the requests the listener decodes ([`walkable`]); anything else it does
//! not run out of — a short body is left to the codec, which reports it.

use kafka_protocol::messages::ApiKey;

/// Why a walk stopped early.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
    /// The body ended first: the codec will say so.
    Short,
    /// An array (or tagged-field count) longer than the rest of the frame.
    Impossible(String),
}

/// The versions of `key` [`check`] can walk (and the listener may decode).
pub(crate) fn walkable(key: ApiKey) -> Option<(i16, i16)> {
    match key {
        ApiKey::Produce => Some((3, 12)),
        ApiKey::Fetch => Some((4, 12)),
        ApiKey::ListOffsets => Some((1, 10)),
        ApiKey::Metadata => Some((0, 13)),
        ApiKey::FindCoordinator => Some((0, 3)),
        ApiKey::OffsetCommit => Some((2, 8)),
        ApiKey::OffsetFetch => Some((1, 7)),
        ApiKey::InitProducerId => Some((0, 4)),
        ApiKey::JoinGroup => Some((0, 9)),
        ApiKey::SyncGroup => Some((0, 5)),
        ApiKey::Heartbeat => Some((0, 4)),
        ApiKey::LeaveGroup => Some((0, 5)),
        ApiKey::ListGroups => Some((0, 5)),
        ApiKey::DescribeGroups => Some((0, 6)),
        ApiKey::DeleteGroups => Some((0, 2)),
        ApiKey::OffsetForLeaderEpoch => Some((2, 4)),
        ApiKey::CreateTopics => Some((2, 7)),
        ApiKey::DeleteTopics => Some((1, 6)),
        ApiKey::CreatePartitions => Some((0, 3)),
        ApiKey::DescribeConfigs => Some((1, 4)),
        ApiKey::IncrementalAlterConfigs => Some((0, 1)),
        ApiKey::DescribeCluster => Some((0, 2)),
        ApiKey::ConsumerGroupHeartbeat => Some((0, 1)),
        _ => None,
    }
}

/// Walks `body` as a `key` request of `version`: the bytes left after it, or
/// `Err(Stop::Impossible)` for a body the codec must not see. Versions outside [`walkable`] are
/// refused the same way.
pub(crate) fn check(key: ApiKey, version: i16, body: &[u8]) -> Result<usize, Stop> {
    let flexible = match key {
        ApiKey::Produce => version >= 9,
        ApiKey::Fetch => version >= 12,
        ApiKey::ListOffsets => version >= 6,
        ApiKey::Metadata => version >= 9,
        ApiKey::FindCoordinator => version >= 3,
        ApiKey::OffsetCommit => version >= 8,
        ApiKey::OffsetFetch => version >= 6,
        ApiKey::InitProducerId => version >= 2,
        ApiKey::JoinGroup => version >= 6,
        ApiKey::SyncGroup | ApiKey::Heartbeat | ApiKey::LeaveGroup => version >= 4,
        ApiKey::ListGroups => version >= 3,
        ApiKey::DescribeGroups => version >= 5,
        ApiKey::DeleteGroups => version >= 2,
        ApiKey::OffsetForLeaderEpoch => version >= 4,
        ApiKey::CreateTopics => version >= 5,
        ApiKey::DeleteTopics => version >= 4,
        ApiKey::CreatePartitions => version >= 2,
        ApiKey::DescribeConfigs => version >= 4,
        ApiKey::IncrementalAlterConfigs => version >= 1,
        ApiKey::DescribeCluster | ApiKey::ConsumerGroupHeartbeat => true,
        _ => false,
    };
    if !walkable(key).is_some_and(|(min, max)| (min..=max).contains(&version)) {
        return Err(Stop::Impossible(format!(
            "{key:?} v{version} bodies are not read"
        )));
    }
    let mut w = Walk {
        buf: body,
        flexible,
    };
    walk(&mut w, key, version)?;
    Ok(w.buf.len())
}

fn walk(w: &mut Walk<'_>, key: ApiKey, v: i16) -> Result<(), Stop> {
    match key {
        ApiKey::Produce => {
            w.string()?; // transactional_id
            w.skip(2 + 4)?; // acks, timeout_ms
            w.array(|w| {
                w.string()?; // name
                w.array(|w| {
                    w.skip(4)?; // index
                    w.bytes()?; // records
                    w.tagged()
                })?;
                w.tagged()
            })?;
            w.tagged()
        }
        ApiKey::Fetch => {
            w.skip(4 + 4 + 4 + 4 + 1)?; // replica_id, max_wait, min_bytes, max_bytes, isolation
            if v >= 7 {
                w.skip(4 + 4)?; // session_id, session_epoch
            }
            w.array(|w| {
                w.string()?; // topic
                w.array(|w| {
                    w.skip(4)?; // partition
                    if v >= 9 {
                        w.skip(4)?; // current_leader_epoch
                    }
                    w.skip(8)?; // fetch_offset
                    if v >= 12 {
                        w.skip(4)?; // last_fetched_epoch
                    }
                    if v >= 5 {
                        w.skip(8)?; // log_start_offset
                    }
                    w.skip(4)?; // partition_max_bytes
                    w.tagged()
                })?;
                w.tagged()
            })?;
            if v >= 7 {
                w.array(|w| {
                    w.string()?; // topic
                    w.array(|w| w.skip(4))?; // partitions
                    w.tagged()
                })?;
            }
            if v >= 11 {
                w.string()?; // rack_id
            }
            w.tagged()
        }
        ApiKey::ListOffsets => {
            w.skip(4)?; // replica_id
            if v >= 2 {
                w.skip(1)?; // isolation_level
            }
            w.array(|w| {
                w.string()?; // name
                w.array(|w| {
                    w.skip(4)?; // partition_index
                    if v >= 4 {
                        w.skip(4)?; // current_leader_epoch
                    }
                    w.skip(8)?; // timestamp
                    w.tagged()
                })?;
                w.tagged()
            })?;
            if v >= 10 {
                w.skip(4)?; // timeout_ms
            }
            w.tagged()
        }
        ApiKey::Metadata => {
            w.array(|w| {
                if v >= 10 {
                    w.skip(16)?; // topic_id
                }
                w.string()?; // name
                w.tagged()
            })?;
            if v >= 4 {
                w.skip(1)?; // allow_auto_topic_creation
            }
            if (8..=10).contains(&v) {
                w.skip(1)?; // include_cluster_authorized_operations
            }
            if v >= 8 {
                w.skip(1)?; // include_topic_authorized_operations
            }
            w.tagged()
        }
        ApiKey::FindCoordinator => {
            w.string()?; // key
            if v >= 1 {
                w.skip(1)?; // key_type
            }
            w.tagged()
        }
        ApiKey::OffsetCommit => {
            w.string()?; // group_id
            w.skip(4)?; // generation_id_or_member_epoch
            w.string()?; // member_id
            if v >= 7 {
                w.string()?; // group_instance_id
            }
            if v <= 4 {
                w.skip(8)?; // retention_time_ms
            }
            w.array(|w| {
                w.string()?; // name
                w.array(|w| {
                    w.skip(4 + 8)?; // partition_index, committed_offset
                    if v >= 6 {
                        w.skip(4)?; // committed_leader_epoch
                    }
                    w.string()?; // committed_metadata
                    w.tagged()
                })?;
                w.tagged()
            })?;
            w.tagged()
        }
        ApiKey::OffsetFetch => {
            w.string()?; // group_id
            w.array(|w| {
                w.string()?; // name
                w.array(|w| w.skip(4))?; // partition_indexes
                w.tagged()
            })?;
            if v >= 7 {
                w.skip(1)?; // require_stable
            }
            w.tagged()
        }
        ApiKey::JoinGroup => {
            w.string()?; // group_id
            w.skip(4)?; // session_timeout_ms
            if v >= 1 {
                w.skip(4)?; // rebalance_timeout_ms
            }
            w.string()?; // member_id
            if v >= 5 {
                w.string()?; // group_instance_id
            }
            w.string()?; // protocol_type
            w.array(|w| {
                w.string()?; // name
                w.bytes()?; // metadata
                w.tagged()
            })?;
            if v >= 8 {
                w.string()?; // reason
            }
            w.tagged()
        }
        ApiKey::SyncGroup => {
            w.string()?; // group_id
            w.skip(4)?; // generation_id
            w.string()?; // member_id
            if v >= 3 {
                w.string()?; // group_instance_id
            }
            if v >= 5 {
                w.string()?; // protocol_type
                w.string()?; // protocol_name
            }
            w.array(|w| {
                w.string()?; // member_id
                w.bytes()?; // assignment
                w.tagged()
            })?;
            w.tagged()
        }
        ApiKey::Heartbeat => {
            w.string()?; // group_id
            w.skip(4)?; // generation_id
            w.string()?; // member_id
            if v >= 3 {
                w.string()?; // group_instance_id
            }
            w.tagged()
        }
        ApiKey::LeaveGroup => {
            w.string()?; // group_id
            if v <= 2 {
                w.string()?; // member_id
            } else {
                w.array(|w| {
                    w.string()?; // member_id
                    w.string()?; // group_instance_id
                    if v >= 5 {
                        w.string()?; // reason
                    }
                    w.tagged()
                })?;
            }
            w.tagged()
        }
        ApiKey::ListGroups => {
            if v >= 4 {
                w.array(|w| w.string())?; // states_filter
            }
            if v >= 5 {
                w.array(|w| w.string())?; // types_filter
            }
            w.tagged()
        }
        ApiKey::DescribeGroups => {
            w.array(|w| w.string())?; // groups
            if v >= 3 {
                w.skip(1)?; // include_authorized_operations
            }
            w.tagged()
        }
        ApiKey::DeleteGroups => {
            w.array(|w| w.string())?; // groups_names
            w.tagged()
        }
        ApiKey::OffsetForLeaderEpoch => {
            if v >= 3 {
                w.skip(4)?; // replica_id
            }
            w.array(|w| {
                w.string()?; // topic
                w.array(|w| {
                    w.skip(4 + 4 + 4)?; // partition, current_leader_epoch, leader_epoch
                    w.tagged()
                })?;
                w.tagged()
            })?;
            w.tagged()
        }
        ApiKey::CreateTopics => {
            w.array(|w| {
                w.string()?; // name
                w.skip(4 + 2)?; // num_partitions, replication_factor
                w.array(|w| {
                    w.skip(4)?; // partition_index
                    w.array(|w| w.skip(4))?; // broker_ids
                    w.tagged()
                })?;
                w.array(|w| {
                    w.string()?; // name
                    w.string()?; // value
                    w.tagged()
                })?;
                w.tagged()
            })?;
            w.skip(4 + 1)?; // timeout_ms, validate_only
            w.tagged()
        }
        ApiKey::DeleteTopics => {
            if v >= 6 {
                w.array(|w| {
                    w.string()?; // name
                    w.skip(16)?; // topic_id
                    w.tagged()
                })?;
            } else {
                w.array(|w| w.string())?; // topic_names
            }
            w.skip(4)?; // timeout_ms
            w.tagged()
        }
        ApiKey::CreatePartitions => {
            w.array(|w| {
                w.string()?; // name
                w.skip(4)?; // count
                w.array(|w| {
                    w.array(|w| w.skip(4))?; // broker_ids
                    w.tagged()
                })?; // assignments (nullable)
                w.tagged()
            })?;
            w.skip(4 + 1)?; // timeout_ms, validate_only
            w.tagged()
        }
        ApiKey::DescribeConfigs => {
            w.array(|w| {
                w.skip(1)?; // resource_type
                w.string()?; // resource_name
                w.array(|w| w.string())?; // configuration_keys (nullable)
                w.tagged()
            })?;
            w.skip(1)?; // include_synonyms
            if v >= 3 {
                w.skip(1)?; // include_documentation
            }
            w.tagged()
        }
        ApiKey::IncrementalAlterConfigs => {
            w.array(|w| {
                w.skip(1)?; // resource_type
                w.string()?; // resource_name
                w.array(|w| {
                    w.string()?; // name
                    w.skip(1)?; // config_operation
                    w.string()?; // value
                    w.tagged()
                })?;
                w.tagged()
            })?;
            w.skip(1)?; // validate_only
            w.tagged()
        }
        ApiKey::DescribeCluster => {
            w.skip(1)?; // include_cluster_authorized_operations
            if v >= 1 {
                w.skip(1)?; // endpoint_type
            }
            if v >= 2 {
                w.skip(1)?; // include_fenced_brokers
            }
            w.tagged()
        }
        ApiKey::ConsumerGroupHeartbeat => {
            w.string()?; // group_id
            w.string()?; // member_id
            w.skip(4)?; // member_epoch
            w.string()?; // instance_id
            w.string()?; // rack_id
            w.skip(4)?; // rebalance_timeout_ms
            w.array(|w| w.string())?; // subscribed_topic_names
            if v >= 1 {
                w.string()?; // subscribed_topic_regex
            }
            w.string()?; // server_assignor
            w.array(|w| {
                w.skip(16)?; // topic_id
                w.array(|w| w.skip(4))?; // partitions
                w.tagged()
            })?; // topic_partitions
            w.tagged()
        }
        ApiKey::InitProducerId => {
            w.string()?; // transactional_id
            w.skip(4)?; // transaction_timeout_ms
            if v >= 3 {
                w.skip(8 + 2)?; // producer_id, producer_epoch
            }
            w.tagged()
        }
        _ => Ok(()),
    }
}

struct Walk<'a> {
    buf: &'a [u8],
    flexible: bool,
}

impl Walk<'_> {
    fn skip(&mut self, n: usize) -> Result<(), Stop> {
        if self.buf.len() < n {
            return Err(Stop::Short);
        }
        self.buf = &self.buf[n..];
        Ok(())
    }

    fn take<const N: usize>(&mut self) -> Result<[u8; N], Stop> {
        let Some((head, rest)) = self.buf.split_first_chunk::<N>() else {
            return Err(Stop::Short);
        };
        self.buf = rest;
        Ok(*head)
    }

    fn varint(&mut self) -> Result<u32, Stop> {
        let mut value = 0u32;
        for i in 0..5 {
            let [b] = self.take::<1>()?;
            value |= u32::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err(Stop::Impossible("a varint longer than 5 bytes".into()))
    }

    /// A length-prefixed run of bytes: nullable or not, string or bytes (`wide`: i32 length).
    fn sized(&mut self, wide: bool) -> Result<(), Stop> {
        let len = if self.flexible {
            i64::from(self.varint()?) - 1
        } else if wide {
            i32::from_be_bytes(self.take()?).into()
        } else {
            i16::from_be_bytes(self.take()?).into()
        };
        if len > 0 {
            self.skip(len as usize)?;
        }
        Ok(())
    }

    fn string(&mut self) -> Result<(), Stop> {
        self.sized(false)
    }

    fn bytes(&mut self) -> Result<(), Stop> {
        self.sized(true)
    }

    fn count(&mut self, what: &str) -> Result<usize, Stop> {
        let n = if self.flexible {
            i64::from(self.varint()?) - 1
        } else {
            i32::from_be_bytes(self.take()?).into()
        };
        let n = n.max(0) as usize;
        if n > self.buf.len() {
            return Err(Stop::Impossible(format!(
                "{what} of {n} entries in the {} bytes left of the request",
                self.buf.len()
            )));
        }
        Ok(n)
    }

    fn array(
        &mut self,
        mut element: impl FnMut(&mut Self) -> Result<(), Stop>,
    ) -> Result<(), Stop> {
        for _ in 0..self.count("an array")? {
            element(self)?;
        }
        Ok(())
    }

    fn tagged(&mut self) -> Result<(), Stop> {
        if !self.flexible {
            return Ok(());
        }
        let n = self.varint()? as usize;
        if n > self.buf.len() {
            return Err(Stop::Impossible(format!(
                "{n} tagged fields in the {} bytes left of the request",
                self.buf.len()
            )));
        }
        for _ in 0..n {
            self.varint()?; // tag
            let size = self.varint()? as usize;
            self.skip(size)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::{FetchRequest, MetadataRequest, ProduceRequest};
    use kafka_protocol::protocol::Encodable;

    #[test]
    fn huge_array_lengths_are_refused_before_decoding() {
        // Metadata v1: 2^31-1 topics in 0 bytes.
        assert!(matches!(
            check(ApiKey::Metadata, 1, &[0x7f, 0xff, 0xff, 0xff]),
            Err(Stop::Impossible(_))
        ));
        // Metadata v9 (compact): a varint count of 2^28.
        assert!(matches!(
            check(ApiKey::Metadata, 9, &[0x80, 0x80, 0x80, 0x80, 0x01]),
            Err(Stop::Impossible(_))
        ));
        assert_eq!(check(ApiKey::Metadata, 1, &[0, 0]), Err(Stop::Short));
    }

    #[test]
    fn requests_the_codec_writes_walk_to_their_end() {
        use bytes::BytesMut;
        fn walks<T: Encodable>(key: ApiKey, versions: std::ops::RangeInclusive<i16>, r: &T) {
            for v in versions {
                let mut buf = BytesMut::new();
                r.encode(&mut buf, v).unwrap();
                assert_eq!(check(key, v, &buf), Ok(0), "{key:?} v{v}");
            }
        }
        use kafka_protocol::messages::{TopicName, list_offsets_request};
        use kafka_protocol::messages::{fetch_request, metadata_request, produce_request};
        use kafka_protocol::protocol::StrBytes;
        let name = || TopicName(StrBytes::from_static_str("t"));
        walks(
            ApiKey::Metadata,
            0..=13,
            &MetadataRequest::default().with_topics(Some(vec![
                metadata_request::MetadataRequestTopic::default().with_name(Some(name())),
            ])),
        );
        walks(
            ApiKey::Produce,
            3..=12,
            &ProduceRequest::default().with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(name())
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_records(Some(bytes::Bytes::from_static(b"batch"))),
                    ]),
            ]),
        );
        walks(
            ApiKey::Fetch,
            4..=12,
            &FetchRequest::default().with_topics(vec![
                fetch_request::FetchTopic::default()
                    .with_topic(name())
                    .with_partitions(vec![fetch_request::FetchPartition::default()]),
            ]),
        );
        walks(
            ApiKey::FindCoordinator,
            0..=3,
            &kafka_protocol::messages::FindCoordinatorRequest::default()
                .with_key(StrBytes::from_static_str("g")),
        );
        use kafka_protocol::messages::{offset_commit_request, offset_fetch_request};
        walks(
            ApiKey::OffsetCommit,
            2..=8,
            &kafka_protocol::messages::OffsetCommitRequest::default()
                .with_member_id(StrBytes::from_static_str("m"))
                .with_topics(vec![
                    offset_commit_request::OffsetCommitRequestTopic::default()
                        .with_name(name())
                        .with_partitions(vec![
                            offset_commit_request::OffsetCommitRequestPartition::default()
                                .with_committed_metadata(Some(StrBytes::from_static_str("md"))),
                        ]),
                ]),
        );
        walks(
            ApiKey::OffsetFetch,
            1..=7,
            &kafka_protocol::messages::OffsetFetchRequest::default().with_topics(Some(vec![
                offset_fetch_request::OffsetFetchRequestTopic::default()
                    .with_name(name())
                    .with_partition_indexes(vec![0, 1]),
            ])),
        );
        use kafka_protocol::messages::{
            HeartbeatRequest, JoinGroupRequest, LeaveGroupRequest, SyncGroupRequest,
            join_group_request, leave_group_request, sync_group_request,
        };
        walks(
            ApiKey::JoinGroup,
            0..=9,
            &JoinGroupRequest::default()
                .with_member_id(StrBytes::from_static_str("m"))
                .with_protocol_type(StrBytes::from_static_str("consumer"))
                .with_protocols(vec![
                    join_group_request::JoinGroupRequestProtocol::default()
                        .with_name(StrBytes::from_static_str("range"))
                        .with_metadata(bytes::Bytes::from_static(b"subscription")),
                ]),
        );
        walks(
            ApiKey::SyncGroup,
            0..=5,
            &SyncGroupRequest::default()
                .with_member_id(StrBytes::from_static_str("m"))
                .with_assignments(vec![
                    sync_group_request::SyncGroupRequestAssignment::default()
                        .with_member_id(StrBytes::from_static_str("m"))
                        .with_assignment(bytes::Bytes::from_static(b"assignment")),
                ]),
        );
        walks(
            ApiKey::Heartbeat,
            0..=4,
            &HeartbeatRequest::default().with_member_id(StrBytes::from_static_str("m")),
        );
        for v in 0..=5 {
            let r = if v >= 3 {
                LeaveGroupRequest::default().with_members(vec![
                    leave_group_request::MemberIdentity::default()
                        .with_member_id(StrBytes::from_static_str("m")),
                ])
            } else {
                LeaveGroupRequest::default().with_member_id(StrBytes::from_static_str("m"))
            };
            walks(ApiKey::LeaveGroup, v..=v, &r);
        }
        let group = || kafka_protocol::messages::GroupId(StrBytes::from_static_str("g"));
        for v in 0..=5 {
            let mut r = kafka_protocol::messages::ListGroupsRequest::default();
            if v >= 4 {
                r = r.with_states_filter(vec![StrBytes::from_static_str("Stable")]);
            }
            if v >= 5 {
                r = r.with_types_filter(vec![StrBytes::from_static_str("classic")]);
            }
            walks(ApiKey::ListGroups, v..=v, &r);
        }
        walks(
            ApiKey::DescribeGroups,
            0..=6,
            &kafka_protocol::messages::DescribeGroupsRequest::default()
                .with_groups(vec![group(), group()]),
        );
        walks(
            ApiKey::DeleteGroups,
            0..=2,
            &kafka_protocol::messages::DeleteGroupsRequest::default()
                .with_groups_names(vec![group()]),
        );
        walks(
            ApiKey::InitProducerId,
            0..=4,
            &kafka_protocol::messages::InitProducerIdRequest::default(),
        );
        use kafka_protocol::messages as m;
        walks(
            ApiKey::OffsetForLeaderEpoch,
            2..=4,
            &m::OffsetForLeaderEpochRequest::default().with_topics(vec![
                m::offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(name())
                    .with_partitions(vec![
                        m::offset_for_leader_epoch_request::OffsetForLeaderPartition::default(),
                    ]),
            ]),
        );
        walks(
            ApiKey::CreateTopics,
            2..=7,
            &m::CreateTopicsRequest::default().with_topics(vec![
                m::create_topics_request::CreatableTopic::default()
                    .with_name(name())
                    .with_assignments(vec![
                        m::create_topics_request::CreatableReplicaAssignment::default()
                            .with_broker_ids(vec![m::BrokerId(1), m::BrokerId(2)]),
                    ])
                    .with_configs(vec![
                        m::create_topics_request::CreatableTopicConfig::default()
                            .with_name(StrBytes::from_static_str("retention.ms"))
                            .with_value(Some(StrBytes::from_static_str("1000"))),
                    ]),
            ]),
        );
        for v in 1..=6 {
            let r = if v >= 6 {
                m::DeleteTopicsRequest::default().with_topics(vec![
                    m::delete_topics_request::DeleteTopicState::default().with_name(Some(name())),
                ])
            } else {
                m::DeleteTopicsRequest::default().with_topic_names(vec![name(), name()])
            };
            walks(ApiKey::DeleteTopics, v..=v, &r);
        }
        walks(
            ApiKey::CreatePartitions,
            0..=3,
            &m::CreatePartitionsRequest::default().with_topics(vec![
                m::create_partitions_request::CreatePartitionsTopic::default()
                    .with_name(name())
                    .with_assignments(Some(vec![
                        m::create_partitions_request::CreatePartitionsAssignment::default()
                            .with_broker_ids(vec![m::BrokerId(1)]),
                    ])),
                m::create_partitions_request::CreatePartitionsTopic::default().with_name(name()),
            ]),
        );
        walks(
            ApiKey::DescribeConfigs,
            1..=4,
            &m::DescribeConfigsRequest::default().with_resources(vec![
                m::describe_configs_request::DescribeConfigsResource::default()
                    .with_resource_type(2)
                    .with_resource_name(StrBytes::from_static_str("t"))
                    .with_configuration_keys(Some(vec![StrBytes::from_static_str("a")])),
                m::describe_configs_request::DescribeConfigsResource::default(),
            ]),
        );
        walks(
            ApiKey::IncrementalAlterConfigs,
            0..=1,
            &m::IncrementalAlterConfigsRequest::default().with_resources(vec![
                m::incremental_alter_configs_request::AlterConfigsResource::default()
                    .with_resource_name(StrBytes::from_static_str("t"))
                    .with_configs(vec![
                        m::incremental_alter_configs_request::AlterableConfig::default()
                            .with_name(StrBytes::from_static_str("retention.ms"))
                            .with_value(Some(StrBytes::from_static_str("1"))),
                    ]),
            ]),
        );
        walks(
            ApiKey::DescribeCluster,
            0..=2,
            &m::DescribeClusterRequest::default(),
        );
        let heartbeat = m::ConsumerGroupHeartbeatRequest::default()
            .with_member_id(StrBytes::from_static_str("m"))
            .with_rack_id(Some(StrBytes::from_static_str("r")))
            .with_subscribed_topic_names(Some(vec![name(), name()]))
            .with_server_assignor(Some(StrBytes::from_static_str("uniform")))
            .with_topic_partitions(Some(vec![
                m::consumer_group_heartbeat_request::TopicPartitions::default()
                    .with_partitions(vec![0, 1, 2]),
            ]));
        walks(ApiKey::ConsumerGroupHeartbeat, 0..=0, &heartbeat);
        walks(
            ApiKey::ConsumerGroupHeartbeat,
            1..=1,
            &heartbeat.with_subscribed_topic_regex(Some(StrBytes::from_static_str("^t.*"))),
        );
        walks(
            ApiKey::ListOffsets,
            1..=10,
            &kafka_protocol::messages::ListOffsetsRequest::default().with_topics(vec![
                list_offsets_request::ListOffsetsTopic::default()
                    .with_name(name())
                    .with_partitions(vec![list_offsets_request::ListOffsetsPartition::default()]),
            ]),
        );
    }
}
