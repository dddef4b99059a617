//! Committed offsets of one shard (Kafka's `OffsetMetadataManager`): OffsetCommit validation
//! against the committing member, OffsetFetch, OffsetDelete and expiration.
//!
//! Offsets are keyed by group id alone: a group may have offsets without any consumer group
//! state (commits from outside the group, epoch -1), and keeps them after its members left.

use std::collections::BTreeMap;

use rill_protocol::ErrorCode;
use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::proto::{
    OffsetCommitPartitionResponse, OffsetCommitRequest, OffsetCommitResponse,
    OffsetCommitTopicResponse, OffsetFetchPartitionResponse, OffsetFetchRequest,
    OffsetFetchResponse, OffsetFetchTopicResponse,
};

use crate::consumer_group::{ConsumerGroup, ConsumerGroupMember};
use crate::records::{CoordinatorRecord, OffsetCommitKey, OffsetCommitValue};
use crate::{ApiErr, GroupConfig, Record, record_size};

/// Offsets of one group: (topic, partition) → committed offset.
pub(crate) type GroupOffsets = BTreeMap<(String, i32), OffsetCommitValue>;

/// The committed offsets of a shard.
#[derive(Default)]
pub(crate) struct OffsetMetadataManager {
    offsets: BTreeMap<String, GroupOffsets>,
    /// The topic id each topic with offsets had when last seen (at a commit or a metadata
    /// update): offsets are stored by topic name, and a topic deleted and re-created under the
    /// same name between two updates must not keep the old incarnation's offsets (its
    /// consumers would resume there and skip records). Offsets replayed at load are taken to be
    /// of the topic the load's metadata names.
    topic_ids: BTreeMap<String, String>,
}

fn key(group: &str, topic: &str, partition: i32) -> OffsetCommitKey {
    OffsetCommitKey {
        group: group.to_string(),
        topic: topic.to_string(),
        partition,
    }
}

impl OffsetMetadataManager {
    /// Groups with committed offsets.
    pub fn group_ids(&self) -> impl Iterator<Item = &String> {
        self.offsets.keys()
    }

    /// Whether `group_id` has committed offsets.
    pub fn has_offsets(&self, group_id: &str) -> bool {
        self.offsets.contains_key(group_id)
    }

    /// Applies an offset record (replay). Group records are not ours and are ignored.
    pub fn apply(&mut self, record: CoordinatorRecord) {
        let CoordinatorRecord::OffsetCommit(k, v) = record else {
            return;
        };
        match v {
            Some(v) => {
                self.offsets
                    .entry(k.group)
                    .or_default()
                    .insert((k.topic, k.partition), v);
            }
            None => {
                if let Some(g) = self.offsets.get_mut(&k.group) {
                    g.remove(&(k.topic, k.partition));
                    if g.is_empty() {
                        self.offsets.remove(&k.group);
                    }
                }
            }
        }
    }

    fn emit(&mut self, out: &mut Vec<Record>, record: CoordinatorRecord) {
        self.emit_encoded(out, record.encode());
    }

    fn emit_encoded(&mut self, out: &mut Vec<Record>, encoded: Record) {
        match CoordinatorRecord::decode(&encoded) {
            Ok(Some(decoded)) => self.apply(decoded),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "a record this coordinator wrote does not decode")
            }
        }
        out.push(encoded);
    }

    /// OffsetCommit of a valid group id; `group` is its consumer group state, if any.
    pub fn offset_commit(
        &mut self,
        config: &GroupConfig,
        request: &OffsetCommitRequest,
        group: Option<&ConsumerGroup>,
        image: &MetadataImage,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> OffsetCommitResponse {
        let group_id = request.group_id.as_str();
        let (whole, member) = match validate_member(request, group) {
            Ok(member) => (None, member),
            Err(e) => (Some(e), None),
        };
        let mut records = Vec::new();
        let topics = request
            .topics
            .iter()
            .map(|topic| OffsetCommitTopicResponse {
                name: topic.name.clone(),
                partitions: topic
                    .partitions
                    .iter()
                    .map(|p| {
                        let result = if let Some(e) = &whole {
                            Err(e.clone())
                        } else {
                            check_partition(config, group_id, member, &topic.name, p, image)
                        }
                        .and_then(|()| {
                            let record = CoordinatorRecord::OffsetCommit(
                                key(group_id, &topic.name, p.index),
                                Some(OffsetCommitValue {
                                    offset: p.committed_offset,
                                    leader_epoch: p.committed_leader_epoch,
                                    metadata: p.committed_metadata.clone(),
                                    commit_timestamp_ms: now_ms,
                                    expire_timestamp_ms: request
                                        .retention_time_ms
                                        .filter(|r| *r >= 0)
                                        .map(|r| now_ms.saturating_add(r)),
                                }),
                            )
                            .encode();
                            let size = record_size(&record);
                            if size > config.max_record_bytes {
                                return Err(ApiErr {
                                    code: ErrorCode::InvalidCommitOffsetSize,
                                    message: format!(
                                        "the offset of {}-{} would take {size} bytes in one record of __consumer_offsets, more than max_record_bytes ({}): commit shorter metadata",
                                        topic.name, p.index, config.max_record_bytes
                                    ),
                                });
                            }
                            Ok(record)
                        });
                        match result {
                            Ok(record) => {
                                records.push(record);
                                OffsetCommitPartitionResponse {
                                    index: p.index,
                                    error_code: ErrorCode::None as i32,
                                    error_message: String::new(),
                                }
                            }
                            Err(e) => OffsetCommitPartitionResponse {
                                index: p.index,
                                error_code: e.code as i32,
                                error_message: e.message,
                            },
                        }
                    })
                    .collect(),
            })
            .collect();
        if !records.is_empty() {
            // Offsets of an older incarnation of a topic committed to now go first.
            for topic in &request.topics {
                if let Some(t) = image.topics.get(&topic.name) {
                    self.see_topic(&topic.name, &t.id, out);
                }
            }
        }
        for r in records {
            self.emit_encoded(out, r);
        }
        OffsetCommitResponse { topics }
    }

    /// OffsetFetch of a valid group id.
    pub fn offset_fetch(&self, request: &OffsetFetchRequest) -> OffsetFetchResponse {
        let offsets = self.offsets.get(&request.group_id);
        let entry = |topic: &str, partition: i32| {
            let found = offsets.and_then(|o| o.get(&(topic.to_string(), partition)));
            match found {
                Some(v) => OffsetFetchPartitionResponse {
                    index: partition,
                    committed_offset: v.offset,
                    committed_leader_epoch: v.leader_epoch,
                    metadata: v.metadata.clone(),
                    commit_timestamp_ms: v.commit_timestamp_ms,
                    error_code: ErrorCode::None as i32,
                    error_message: String::new(),
                },
                None => OffsetFetchPartitionResponse {
                    index: partition,
                    committed_offset: -1,
                    committed_leader_epoch: -1,
                    metadata: String::new(),
                    commit_timestamp_ms: -1,
                    error_code: ErrorCode::None as i32,
                    error_message: String::new(),
                },
            }
        };
        let topics = if request.topics.is_empty() {
            let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
            for (t, p) in offsets.into_iter().flat_map(|o| o.keys()) {
                by_topic.entry(t).or_default().push(*p);
            }
            by_topic
                .into_iter()
                .map(|(t, ps)| OffsetFetchTopicResponse {
                    name: t.to_string(),
                    partitions: ps.into_iter().map(|p| entry(t, p)).collect(),
                })
                .collect()
        } else {
            request
                .topics
                .iter()
                .map(|t| OffsetFetchTopicResponse {
                    name: t.name.clone(),
                    partitions: t
                        .partition_indexes
                        .iter()
                        .map(|p| entry(&t.name, *p))
                        .collect(),
                })
                .collect()
        };
        OffsetFetchResponse {
            error_code: ErrorCode::None as i32,
            error_message: String::new(),
            topics,
        }
    }

    /// Tombstones the offset of `topic`-`partition` of `group_id`, if there is one.
    pub fn delete_offset(
        &mut self,
        group_id: &str,
        topic: &str,
        partition: i32,
        out: &mut Vec<Record>,
    ) {
        let exists = self
            .offsets
            .get(group_id)
            .is_some_and(|o| o.contains_key(&(topic.to_string(), partition)));
        if exists {
            self.emit(
                out,
                CoordinatorRecord::OffsetCommit(key(group_id, topic, partition), None),
            );
        }
    }

    /// Tombstones the offsets of partitions `image` no longer has (Kafka's
    /// `onPartitionsDeleted`): of deleted topics, and beyond a topic's partition count (a topic
    /// deleted and created again smaller). `image` must be authoritative (caught up). Returns the
    /// groups that lost offsets.
    pub fn delete_missing(&mut self, image: &MetadataImage, out: &mut Vec<Record>) -> Vec<String> {
        let mut gone: Vec<(String, String, i32)> = Vec::new();
        for (group, offsets) in &self.offsets {
            for (topic, partition) in offsets.keys() {
                let exists = image.topics.get(topic).is_some_and(|t| {
                    *partition >= 0
                        && (*partition as usize) < t.partitions.len()
                        && self.topic_ids.get(topic).is_none_or(|id| *id == t.id)
                });
                if !exists {
                    gone.push((group.clone(), topic.clone(), *partition));
                }
            }
        }
        if !gone.is_empty() {
            tracing::info!(
                count = gone.len(),
                "deleting the committed offsets of partitions that no longer exist"
            );
        }
        let mut groups: Vec<String> = Vec::new();
        for (group, topic, partition) in gone {
            self.emit(
                out,
                CoordinatorRecord::OffsetCommit(key(&group, &topic, partition), None),
            );
            if groups.last() != Some(&group) {
                groups.push(group);
            }
        }
        // What is left is of the topics as `image` has them.
        let mut ids = BTreeMap::new();
        for offsets in self.offsets.values() {
            for (topic, _) in offsets.keys() {
                if let Some(t) = image.topics.get(topic) {
                    ids.insert(topic.clone(), t.id.clone());
                }
            }
        }
        self.topic_ids = ids;
        groups
    }

    /// Notes that `topic` has id `id` now; if offsets were committed to another incarnation of
    /// it (deleted and re-created since the last metadata update), they are tombstoned first.
    fn see_topic(&mut self, topic: &str, id: &str, out: &mut Vec<Record>) {
        let known = self.topic_ids.insert(topic.to_owned(), id.to_owned());
        if known.is_none_or(|known| known == id) {
            return;
        }
        let stale: Vec<(String, i32)> = self
            .offsets
            .iter()
            .flat_map(|(group, offsets)| {
                offsets
                    .keys()
                    .filter(|(t, _)| t == topic)
                    .map(|(_, p)| (group.clone(), *p))
            })
            .collect();
        tracing::info!(
            topic,
            count = stale.len(),
            "deleting the committed offsets of a deleted incarnation of the topic"
        );
        for (group, partition) in stale {
            self.emit(
                out,
                CoordinatorRecord::OffsetCommit(key(&group, topic, partition), None),
            );
        }
    }

    /// Tombstones every offset of `group_id`.
    pub fn delete_all(&mut self, group_id: &str, out: &mut Vec<Record>) {
        let keys: Vec<(String, i32)> = self
            .offsets
            .get(group_id)
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        for (t, p) in keys {
            self.emit(
                out,
                CoordinatorRecord::OffsetCommit(key(group_id, &t, p), None),
            );
        }
    }

    /// The topics `group_id` has committed offsets of.
    pub fn topics_of(&self, group_id: &str) -> std::collections::BTreeSet<String> {
        self.offsets
            .get(group_id)
            .map(|o| o.keys().map(|(t, _)| t.clone()).collect())
            .unwrap_or_default()
    }

    /// Tombstones the offsets of `group_id` (which has no members) that expired at `now_ms`:
    /// at their own expiry time when the commit asked for one (Kafka's old explicit
    /// retention), else `offsets_retention_ms` after the later of their commit and
    /// `empty_since_ms`.
    pub fn expire(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        empty_since_ms: i64,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        self.expire_where(config, group_id, now_ms, out, |_, v| {
            v.commit_timestamp_ms.max(empty_since_ms)
        });
    }

    /// Tombstones the offsets of `topics` in `group_id` (a consumer group whose members
    /// subscribe to none of them) that expired at `now_ms`: at their own expiry time, else
    /// `offsets_retention_ms` after their commit (Kafka's new coordinator does the same for a
    /// consumer group's unsubscribed topics).
    pub fn expire_topics(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        topics: &std::collections::BTreeSet<String>,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        self.expire_where(config, group_id, now_ms, out, |topic, v| {
            if topics.contains(topic) {
                v.commit_timestamp_ms
            } else {
                i64::MAX
            }
        });
    }

    /// Tombstones the offsets of `group_id` past their expiry at `now_ms`: their own, or
    /// `offsets_retention_ms` after `base(topic, value)` (`i64::MAX`: never).
    fn expire_where(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        now_ms: i64,
        out: &mut Vec<Record>,
        base: impl Fn(&str, &OffsetCommitValue) -> i64,
    ) {
        let expired: Vec<(String, i32)> = self
            .offsets
            .get(group_id)
            .map(|o| {
                o.iter()
                    .filter(|((topic, _), v)| {
                        let base = base(topic, v);
                        match v.expire_timestamp_ms {
                            _ if base == i64::MAX => false,
                            Some(at) => now_ms >= at,
                            None => now_ms.saturating_sub(base) >= config.offsets_retention_ms,
                        }
                    })
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default();
        if !expired.is_empty() {
            tracing::info!(
                group = group_id,
                count = expired.len(),
                "expiring committed offsets"
            );
        }
        for (t, p) in expired {
            self.emit(
                out,
                CoordinatorRecord::OffsetCommit(key(group_id, &t, p), None),
            );
        }
    }
}

/// The answer to a commit failing as a whole: `error` for every partition.
pub(crate) fn offset_commit_error(
    request: &OffsetCommitRequest,
    error: &ApiErr,
) -> OffsetCommitResponse {
    OffsetCommitResponse {
        topics: request
            .topics
            .iter()
            .map(|t| OffsetCommitTopicResponse {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| OffsetCommitPartitionResponse {
                        index: p.index,
                        error_code: error.code as i32,
                        error_message: error.message.clone(),
                    })
                    .collect(),
            })
            .collect(),
    }
}

/// The commit's member (`None` for a commit from outside the group), or why the whole commit
/// fails.
fn validate_member<'a>(
    request: &OffsetCommitRequest,
    group: Option<&'a ConsumerGroup>,
) -> Result<Option<&'a ConsumerGroupMember>, ApiErr> {
    let group_id = &request.group_id;
    let member_id = &request.member_id;
    let epoch = request.member_epoch;
    let has_members = group.is_some_and(|g| !g.members.is_empty());
    if epoch < 0 && !has_members {
        // From outside the group (an admin, or a consumer using assign): allowed while empty.
        return Ok(None);
    }
    let member = group.and_then(|g| g.members.get(member_id));
    let Some(member) = member else {
        let message = if member_id.is_empty() {
            format!(
                "group {group_id} has active members: offsets can be committed from outside the group (epoch -1, no member id) only while it has none"
            )
        } else {
            format!("member {member_id} is not a member of group {group_id}")
        };
        return Err(ApiErr {
            code: ErrorCode::UnknownMemberId,
            message,
        });
    };
    let known = member.assignment.member_epoch;
    if epoch != known {
        // Kafka's new protocol: any other epoch is stale, ahead or behind (a commit never fences
        // the member; its heartbeat does when the epoch is really wrong).
        let how = if epoch > known { "ahead of" } else { "behind" };
        return Err(ApiErr {
            code: ErrorCode::StaleMemberEpoch,
            message: format!(
                "member {member_id} of group {group_id} committed with epoch {epoch}, {how} its epoch {known} at the coordinator: heartbeat, then commit with the epoch it returns"
            ),
        });
    }
    Ok(Some(member))
}

fn check_partition(
    config: &GroupConfig,
    group_id: &str,
    member: Option<&ConsumerGroupMember>,
    topic: &str,
    partition: &rill_protocol::proto::OffsetCommitPartition,
    image: &MetadataImage,
) -> Result<(), ApiErr> {
    let index = partition.index;
    let exists = image
        .topics
        .get(topic)
        .is_some_and(|t| index >= 0 && (index as usize) < t.partitions.len());
    if !exists {
        return Err(ApiErr {
            code: ErrorCode::UnknownTopicOrPartition,
            message: format!("partition {topic}-{index} does not exist"),
        });
    }
    let len = partition.committed_metadata.len();
    if len > config.offset_metadata_max_bytes {
        return Err(ApiErr {
            code: ErrorCode::OffsetMetadataTooLarge,
            message: format!(
                "the metadata of the offset of {topic}-{index} is {len} bytes, more than offset.metadata.max.bytes ({})",
                config.offset_metadata_max_bytes
            ),
        });
    }
    if let Some(member) = member
        && !member.owns(topic, index)
    {
        return Err(ApiErr {
            code: ErrorCode::StaleMemberEpoch,
            message: format!(
                "member {} of group {group_id} does not own partition {topic}-{index} in epoch {}: commit only partitions it owns",
                member.member_id, member.assignment.member_epoch
            ),
        });
    }
    Ok(())
}
