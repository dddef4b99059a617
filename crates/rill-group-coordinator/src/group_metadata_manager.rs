//! Consumer groups of one shard (Kafka's `GroupMetadataManager`): the KIP-848 heartbeat (join,
//! reconcile, leave), target assignments, member timers, and the group records.
//!
//! Every change is made by emitting a record, which is replayed on the spot ([`emit`]), so the
//! state after a request is exactly the replay of the records it returned.
//!
//! [`emit`]: GroupMetadataManager::emit

use std::collections::{BTreeMap, BTreeSet, HashMap};

use prost::encoding::encoded_len_varint;
use rill_protocol::ErrorCode;
use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::proto::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, DescribedGroup, GroupMember,
    TopicPartitionsList,
};

use crate::assignor::{self, Assignment, GroupSpec, MemberSpec};
use crate::consumer_group::{
    ConsumerGroup, ConsumerGroupMember, LEAVE_GROUP_MEMBER_EPOCH, LEAVE_GROUP_STATIC_MEMBER_EPOCH,
    MemberMetadata, MemberState, TopicMetadata, assignment_from_proto, assignment_to_proto,
    assignment_to_value, is_subset,
};
use crate::current_assignment_builder;
use crate::records::{
    ConsumerGroupMetadataValue, ConsumerGroupPartitionMetadataValue,
    ConsumerGroupTargetAssignmentMemberValue, ConsumerGroupTargetAssignmentMetadataValue,
    CoordinatorRecord, TopicMetadataValue, group_key, member_key,
};
use crate::topic_regex::{self, RegexCache};
use crate::{ApiErr, GroupConfig, MAX_ID_BYTES, Record, record_size};

/// A member's timers (in memory only: a new coordinator starts them again on load).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct MemberTimers {
    /// Fenced when no heartbeat came by then.
    session_deadline_ms: i64,
    /// Fenced when still in UNREVOKED_PARTITIONS by then.
    rebalance_deadline_ms: Option<i64>,
}

/// How a heartbeat with epoch 0 or more finds its member.
enum Plan {
    /// A new member.
    Join,
    /// A member of the group. `rejoin`: it sent epoch 0 (see [`rejoin`]), so its request says
    /// nothing about what it owns.
    Existing { rejoin: bool },
    /// A static member coming back (under a new member id, or its own) after it left with -2:
    /// it takes over that member's subscription, target and partitions at epoch 0.
    ReplaceStatic(String),
}

/// A join (epoch 0) from `member`, which the group already has (Kafka's
/// `throwIfMemberEpochIsInvalid`): accepted only as the repeat of a join whose answer was lost
/// (its previous epoch is 0: it never acknowledged a later epoch, or the coordinator fenced it
/// since, see `allow_rejoin`). Any other epoch-0 request is stale (delayed, or duplicated) and
/// must not count as "the member gave everything up": FENCED_MEMBER_EPOCH. A static member that
/// left for a restart (-2) comes back with its assignment.
fn rejoin(group_id: &str, member: &ConsumerGroupMember) -> Result<Plan, ApiErr> {
    let a = &member.assignment;
    if a.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH {
        return Ok(Plan::ReplaceStatic(member.member_id.clone()));
    }
    if a.previous_member_epoch == 0 || a.member_epoch == 0 {
        return Ok(Plan::Existing { rejoin: true });
    }
    Err(err(
        ErrorCode::FencedMemberEpoch,
        format!(
            "member {} of group {group_id} sent epoch 0 (a join) but is at epoch {} (state {}) at the coordinator: a stale or repeated join; it must give up all its partitions and join again with epoch 0",
            member.member_id,
            a.member_epoch,
            a.state.name()
        ),
    ))
}

/// FENCED_INSTANCE_ID: another member took over `instance`.
fn fenced_instance(group_id: &str, member_id: &str, instance: &str, holder: &str) -> ApiErr {
    err(
        ErrorCode::FencedInstanceId,
        format!(
            "static member {member_id} with instance id {instance} was fenced in group {group_id}: member {holder} took the instance id over (a newer process with the same group.instance.id); this one must stop"
        ),
    )
}

/// The consumer groups of a shard, with their timers.
#[derive(Default)]
pub(crate) struct GroupMetadataManager {
    groups: BTreeMap<String, ConsumerGroup>,
    timers: HashMap<(String, String), MemberTimers>,
    /// The assignment last sent to each member, so a response carries one only when it changed.
    last_sent: HashMap<(String, String), Assignment>,
    regexes: RegexCache,
}

fn err(code: ErrorCode, message: impl Into<String>) -> ApiErr {
    ApiErr {
        code,
        message: message.into(),
    }
}

impl GroupMetadataManager {
    /// The group `group_id`, if it has state.
    pub fn group(&self, group_id: &str) -> Option<&ConsumerGroup> {
        self.groups.get(group_id)
    }

    /// All groups.
    pub fn groups(&self) -> impl Iterator<Item = &ConsumerGroup> {
        self.groups.values()
    }

    /// Applies a group record (replay). Offset records are not ours and are ignored.
    pub fn apply(&mut self, record: CoordinatorRecord) {
        match record {
            CoordinatorRecord::OffsetCommit(..) | CoordinatorRecord::GroupMetadata(..) => {}
            CoordinatorRecord::ConsumerGroupMetadata(k, v) => match v {
                Some(v) => self.group_mut(&k.group).group_epoch = v.epoch,
                None => {
                    if self.groups.remove(&k.group).is_some() {
                        self.timers.retain(|(g, _), _| *g != k.group);
                        self.last_sent.retain(|(g, _), _| *g != k.group);
                    }
                }
            },
            CoordinatorRecord::ConsumerGroupPartitionMetadata(k, v) => match v {
                Some(v) => {
                    self.group_mut(&k.group).subscription_metadata = v
                        .topics
                        .into_iter()
                        .map(|t| {
                            (
                                t.name,
                                TopicMetadata {
                                    topic_id: t.topic_id,
                                    partitions: t.partitions,
                                },
                            )
                        })
                        .collect()
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&k.group) {
                        g.subscription_metadata.clear();
                    }
                }
            },
            CoordinatorRecord::ConsumerGroupMemberMetadata(k, v) => match v {
                Some(v) => self
                    .group_mut(&k.group)
                    .apply_member_metadata(&k.member, MemberMetadata::from_value(&v)),
                None => {
                    if let Some(g) = self.groups.get_mut(&k.group) {
                        g.remove_member(&k.member);
                    }
                    let key = (k.group, k.member);
                    self.timers.remove(&key);
                    self.last_sent.remove(&key);
                }
            },
            CoordinatorRecord::ConsumerGroupTargetAssignmentMetadata(k, v) => match v {
                Some(v) => self.group_mut(&k.group).assignment_epoch = v.assignment_epoch,
                None => {
                    if let Some(g) = self.groups.get_mut(&k.group) {
                        g.assignment_epoch = 0;
                    }
                }
            },
            CoordinatorRecord::ConsumerGroupTargetAssignmentMember(k, v) => match v {
                Some(v) => {
                    let a = crate::consumer_group::assignment_from_value(&v.topic_partitions);
                    self.group_mut(&k.group)
                        .target_assignment
                        .insert(k.member, a);
                }
                None => {
                    if let Some(g) = self.groups.get_mut(&k.group) {
                        g.target_assignment.remove(&k.member);
                    }
                }
            },
            CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(k, v) => match v {
                Some(v) => self.group_mut(&k.group).set_member_assignment(
                    &k.member,
                    Some(crate::consumer_group::MemberAssignmentState::from_value(&v)),
                ),
                None => {
                    if let Some(g) = self.groups.get_mut(&k.group) {
                        g.set_member_assignment(&k.member, None);
                    }
                }
            },
        }
    }

    fn group_mut(&mut self, group_id: &str) -> &mut ConsumerGroup {
        self.groups
            .entry(group_id.to_string())
            .or_insert_with(|| ConsumerGroup::new(group_id.to_string()))
    }

    /// Encodes `record`, replays it and adds it to `out`.
    fn emit(&mut self, out: &mut Vec<Record>, record: CoordinatorRecord) {
        self.emit_encoded(out, record.encode());
    }

    /// Replays an encoded record and adds it to `out`. Records that could exceed
    /// `max_record_bytes` are checked by their callers first.
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

    // ---------------------------------------------------------------------------------------
    // Heartbeat

    /// ConsumerGroupHeartbeat after the request-level checks (see `validate_heartbeat`).
    pub fn consumer_group_heartbeat(
        &mut self,
        config: &GroupConfig,
        request: &ConsumerGroupHeartbeatRequest,
        client_host: &str,
        image: &MetadataImage,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> Result<ConsumerGroupHeartbeatResponse, ApiErr> {
        // Compiled once per pattern (cached), not on every heartbeat that repeats it.
        if let Some(pattern) = request
            .subscribed_topic_regex
            .as_deref()
            .filter(|r| !r.is_empty())
            && let Err(e) = self.regexes.check(pattern)
        {
            return Err(err(
                ErrorCode::InvalidRequest,
                format!(
                    "subscribed_topic_regex {pattern:?} is not a valid regular expression: {e}"
                ),
            ));
        }
        if request.member_epoch == LEAVE_GROUP_MEMBER_EPOCH
            || request.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH
        {
            self.leave(config, request, image, now_ms, out)
        } else {
            self.join_or_stay(config, request, client_host, image, now_ms, out)
        }
    }

    fn plan(
        &self,
        config: &GroupConfig,
        request: &ConsumerGroupHeartbeatRequest,
        member_id: &str,
        owned: Option<&Assignment>,
    ) -> Result<Plan, ApiErr> {
        let group_id = &request.group_id;
        let epoch = request.member_epoch;
        let group = self.groups.get(group_id);
        let existing = group.and_then(|g| g.members.get(member_id));
        let plan = if epoch == 0 {
            let holder = match (&request.instance_id, group) {
                (Some(instance), Some(g)) => g
                    .static_members
                    .get(instance)
                    .and_then(|h| g.members.get(h))
                    .map(|h| (instance, h)),
                _ => None,
            };
            match holder {
                Some((_, h)) if h.member_id == member_id => rejoin(group_id, h)?,
                Some((instance, h)) => {
                    if h.assignment.member_epoch != LEAVE_GROUP_STATIC_MEMBER_EPOCH {
                        return Err(err(
                            ErrorCode::UnreleasedInstanceId,
                            format!(
                                "static member {member_id} with instance id {instance} cannot join group {group_id}: the instance id is used by live member {} (epoch {}); it must leave first (epoch -2 or -1) or its session must time out",
                                h.member_id, h.assignment.member_epoch
                            ),
                        ));
                    }
                    Plan::ReplaceStatic(h.member_id.clone())
                }
                None => match existing {
                    Some(m) => rejoin(group_id, m)?,
                    None => Plan::Join,
                },
            }
        } else {
            let Some(g) = group else {
                return Err(err(
                    ErrorCode::UnknownMemberId,
                    format!(
                        "member {member_id} is not a member of group {group_id}: the group does not exist; join with epoch 0"
                    ),
                ));
            };
            if let Some(instance) = &request.instance_id {
                match g.static_members.get(instance) {
                    None => {
                        return Err(err(
                            ErrorCode::UnknownMemberId,
                            format!(
                                "instance id {instance} is unknown in group {group_id} (its member left or timed out); join with epoch 0"
                            ),
                        ));
                    }
                    Some(holder) if holder != member_id => {
                        return Err(fenced_instance(group_id, member_id, instance, holder));
                    }
                    Some(_) => {}
                }
            }
            let Some(member) = existing else {
                return Err(err(
                    ErrorCode::UnknownMemberId,
                    format!(
                        "member {member_id} is not a member of group {group_id} (it left or its session timed out); join again with epoch 0"
                    ),
                ));
            };
            let known = member.assignment.member_epoch;
            if epoch > known {
                return Err(err(
                    ErrorCode::FencedMemberEpoch,
                    format!(
                        "member {member_id} of group {group_id} sent epoch {epoch}, greater than its epoch {known} at the coordinator; it must give up all its partitions and join again with epoch 0"
                    ),
                ));
            }
            if epoch < known {
                // The previous epoch is accepted with owned partitions the member still has: the
                // answer that bumped the epoch may have been lost.
                let lost_answer = epoch == member.assignment.previous_member_epoch
                    && owned.is_some_and(|o| is_subset(o, &member.assignment.assigned));
                if !lost_answer {
                    return Err(err(
                        ErrorCode::FencedMemberEpoch,
                        format!(
                            "member {member_id} of group {group_id} sent epoch {epoch}, older than its epoch {known} at the coordinator; it must give up all its partitions and join again with epoch 0"
                        ),
                    ));
                }
            }
            Plan::Existing { rejoin: false }
        };
        if matches!(plan, Plan::Join) {
            let size = group.map_or(0, |g| g.members.len());
            if size >= config.max_size {
                return Err(err(
                    ErrorCode::GroupMaxSizeReached,
                    format!(
                        "group {group_id} has reached its maximum size of {} members (group.consumer.max.size)",
                        config.max_size
                    ),
                ));
            }
        }
        Ok(plan)
    }

    /// After a FENCED_MEMBER_EPOCH answer to a member the group still has: its next join
    /// (epoch 0, same member id) is accepted, by recording 0 as its previous epoch. The member
    /// keeps what it owns at the coordinator until a later heartbeat reports it given up, so
    /// answering a request that was only delayed (the client never sees the answer and still
    /// consumes) gives nothing of it to another member.
    fn allow_rejoin(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        member_id: &str,
        out: &mut Vec<Record>,
    ) {
        let Some(member) = self
            .groups
            .get(group_id)
            .and_then(|g| g.members.get(member_id))
        else {
            return;
        };
        if member.assignment.previous_member_epoch == 0 {
            return;
        }
        let mut next = member.assignment.clone();
        next.previous_member_epoch = 0;
        let record = CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
            member_key(group_id, member_id),
            Some(next.to_value()),
        )
        .encode();
        // Never larger than the member's current record; checked all the same.
        if record_size(&record) <= config.max_record_bytes {
            self.emit_encoded(out, record);
        }
    }

    fn join_or_stay(
        &mut self,
        config: &GroupConfig,
        request: &ConsumerGroupHeartbeatRequest,
        client_host: &str,
        image: &MetadataImage,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> Result<ConsumerGroupHeartbeatResponse, ApiErr> {
        let group_id = request.group_id.as_str();
        let epoch = request.member_epoch;
        let member_id = if request.member_id.is_empty() {
            uuid::Uuid::new_v4().to_string()
        } else {
            request.member_id.clone()
        };
        let reported: Option<Assignment> = if epoch == 0 {
            // A joining member owns nothing, whatever it sent.
            Some(Assignment::new())
        } else {
            request.owned_partitions.as_ref().map(assignment_from_proto)
        };

        let plan = match self.plan(config, request, &member_id, reported.as_ref()) {
            Ok(plan) => plan,
            Err(e) => {
                if e.code == ErrorCode::FencedMemberEpoch {
                    self.allow_rejoin(config, group_id, &member_id, out);
                }
                return Err(e);
            }
        };
        // What the request says the member owns. A join of a member the group already has may
        // be a delayed or repeated request while the member still consumes: it says nothing, so
        // partitions it must revoke stay its own until a heartbeat at its epoch reports them
        // given up.
        let owned = match plan {
            Plan::Existing { rejoin: true } => None,
            _ => reported,
        };

        // The member as it is (a new one, or the static member it takes over at epoch 0), and
        // the records that follow from what the request carries, refused as a whole (before any
        // is replayed) when one would not fit in a record of the partition.
        let is_new = matches!(plan, Plan::Join);
        let current = |id: &str| {
            self.groups
                .get(group_id)
                .and_then(|g| g.members.get(id))
                .cloned()
        };
        let mut member = match &plan {
            Plan::Join => ConsumerGroupMember::new(member_id.clone()),
            Plan::Existing { .. } => {
                current(&member_id).unwrap_or_else(|| ConsumerGroupMember::new(member_id.clone()))
            }
            Plan::ReplaceStatic(old) => {
                let mut m = current(old).unwrap_or_default();
                m.member_id = member_id.clone();
                m.assignment.member_epoch = 0;
                m.assignment.previous_member_epoch = 0;
                m
            }
        };
        let before = member.metadata.clone();
        member.metadata = updated_metadata(&before, request, client_host);
        let md = &member.metadata;
        let bump = is_new
            || md.subscribed_topic_names != before.subscribed_topic_names
            || md.subscribed_topic_regex != before.subscribed_topic_regex
            || md.server_assignor != before.server_assignor;
        let metadata_record = || {
            CoordinatorRecord::ConsumerGroupMemberMetadata(
                member_key(group_id, &member_id),
                Some(member.metadata.to_value()),
            )
        };
        let mut records = Vec::new();
        match &plan {
            Plan::ReplaceStatic(old) if *old != member_id => {
                let target = self
                    .groups
                    .get(group_id)
                    .and_then(|g| g.target_assignment.get(old))
                    .cloned()
                    .unwrap_or_default();
                records.extend(member_tombstones(group_id, old));
                records.push(metadata_record());
                records.push(CoordinatorRecord::ConsumerGroupTargetAssignmentMember(
                    member_key(group_id, &member_id),
                    Some(ConsumerGroupTargetAssignmentMemberValue {
                        topic_partitions: assignment_to_value(&target),
                    }),
                ));
                records.push(CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
                    member_key(group_id, &member_id),
                    Some(member.assignment.to_value()),
                ));
            }
            Plan::ReplaceStatic(_) => {
                // The same member comes back after its own -2: its epoch starts again at 0.
                records.push(CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
                    member_key(group_id, &member_id),
                    Some(member.assignment.to_value()),
                ));
                if member.metadata != before {
                    records.push(metadata_record());
                }
            }
            _ => {
                if is_new || member.metadata != before {
                    records.push(metadata_record());
                }
            }
        }
        let encoded: Vec<Record> = records.iter().map(CoordinatorRecord::encode).collect();
        if let Some(size) = encoded
            .iter()
            .map(record_size)
            .find(|size| *size > config.max_record_bytes)
        {
            return Err(err(
                ErrorCode::InvalidRequest,
                format!(
                    "member {member_id} of group {group_id} would take {size} bytes in one record of __consumer_offsets, more than max_record_bytes ({}): subscribe to fewer topics (or with a regular expression), or use shorter names",
                    config.max_record_bytes
                ),
            ));
        }

        // Everything below succeeds.
        match &plan {
            Plan::Join => {
                tracing::info!(group = group_id, member = %member_id, "member joins the consumer group");
            }
            Plan::Existing { rejoin: true } => {
                tracing::info!(group = group_id, member = %member_id, "member joins again (a join whose answer was lost, or after being fenced); it keeps what it owns until it reports it");
            }
            Plan::Existing { rejoin: false } => {}
            Plan::ReplaceStatic(old) => {
                tracing::info!(
                    group = group_id,
                    old = %old,
                    new = %member_id,
                    instance = ?member.metadata.instance_id,
                    "static member rejoins and gets its assignment back"
                );
            }
        }
        for r in encoded {
            self.emit_encoded(out, r);
        }

        self.maybe_bump_and_assign(config, group_id, image, bump, out);
        self.maybe_reconcile(config, group_id, &member_id, owned.as_ref(), now_ms, out);

        let timers = self
            .timers
            .entry((group_id.to_string(), member_id.clone()))
            .or_insert(MemberTimers {
                session_deadline_ms: 0,
                rebalance_deadline_ms: None,
            });
        timers.session_deadline_ms = now_ms.saturating_add(i64::from(config.session_timeout_ms));

        let Some(member) = self
            .groups
            .get(group_id)
            .and_then(|g| g.members.get(&member_id))
        else {
            return Err(err(
                ErrorCode::UnknownServerError,
                format!("member {member_id} of group {group_id} vanished while joining"),
            ));
        };
        let assigned = member.assignment.assigned.clone();
        let member_epoch = member.assignment.member_epoch;
        let full_request = request.rebalance_timeout_ms > 0
            && (request.subscribed_topic_names.is_some()
                || request.subscribed_topic_regex.is_some())
            && request.owned_partitions.is_some();
        let key = (group_id.to_string(), member_id.clone());
        // Sent on a join, on a full request (Kafka's rule), when it changed since the last
        // answer, and when the member did not know its epoch (it missed an answer, which may
        // have carried an assignment).
        let send = epoch == 0
            || full_request
            || epoch != member_epoch
            || self.last_sent.get(&key) != Some(&assigned);
        let assignment = send.then(|| TopicPartitionsList {
            topics: assignment_to_proto(&assigned),
        });
        if send {
            self.last_sent.insert(key, assigned);
        }
        Ok(ConsumerGroupHeartbeatResponse {
            error_code: ErrorCode::None as i32,
            error_message: String::new(),
            member_id,
            member_epoch,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            assignment,
        })
    }

    /// Tombstones of a member's records, in Kafka's order.
    fn remove_member_records(&mut self, group_id: &str, member_id: &str, out: &mut Vec<Record>) {
        for r in member_tombstones(group_id, member_id) {
            self.emit(out, r);
        }
    }

    /// Refreshes the subscribed topic metadata from `image`, bumps the group epoch when it (or
    /// `bump`) says so, and computes a new target assignment when the group epoch is ahead of
    /// it.
    fn maybe_bump_and_assign(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        image: &MetadataImage,
        mut bump: bool,
        out: &mut Vec<Record>,
    ) {
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        let budget = metadata_budget(config, group_id);
        let (metadata, left_out) = subscription_metadata(group, image, &mut self.regexes, budget);
        if metadata != group.subscription_metadata {
            bump = true;
            if !left_out.is_empty() {
                tracing::warn!(
                    group = group_id,
                    subscribed = metadata.len() + left_out.len(),
                    left_out = left_out.len(),
                    first_left_out = %left_out[0],
                    max_record_bytes = config.max_record_bytes,
                    "the group subscribes to more topics and partitions than its records can hold (max_record_bytes): the topics after the first {} (by name) are not assigned",
                    metadata.len()
                );
            }
            let value = ConsumerGroupPartitionMetadataValue {
                topics: metadata
                    .iter()
                    .map(|(name, t)| TopicMetadataValue {
                        name: name.clone(),
                        partitions: t.partitions,
                        topic_id: t.topic_id.clone(),
                    })
                    .collect(),
            };
            self.emit(
                out,
                CoordinatorRecord::ConsumerGroupPartitionMetadata(group_key(group_id), Some(value)),
            );
        }
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        if bump {
            let epoch = group.group_epoch.saturating_add(1);
            tracing::info!(group = group_id, epoch, "bumped the group epoch");
            self.emit(
                out,
                CoordinatorRecord::ConsumerGroupMetadata(
                    group_key(group_id),
                    Some(ConsumerGroupMetadataValue { epoch }),
                ),
            );
        }
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        if group.group_epoch > group.assignment_epoch {
            self.update_target_assignment(config, group_id, out);
        }
    }

    /// Computes the target assignment for the group epoch and records what changed.
    fn update_target_assignment(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        out: &mut Vec<Record>,
    ) {
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        let name = group.preferred_assignor(&config.assignors);
        let topic_names: Vec<&String> = group.subscription_metadata.keys().collect();
        let mut spec = GroupSpec {
            members: BTreeMap::new(),
            topics: group
                .subscription_metadata
                .iter()
                .map(|(t, m)| (t.clone(), m.partitions))
                .collect(),
        };
        for (id, m) in &group.members {
            let mut topics: BTreeSet<String> = m
                .metadata
                .subscribed_topic_names
                .iter()
                .filter(|t| group.subscription_metadata.contains_key(*t))
                .cloned()
                .collect();
            if let Some(pattern) = &m.metadata.subscribed_topic_regex
                && let Ok(regex) = self.regexes.get(pattern)
            {
                for t in &topic_names {
                    if !topic_regex::is_internal(t) && regex.is_match(t) {
                        topics.insert((*t).clone());
                    }
                }
            }
            spec.members.insert(
                id.clone(),
                MemberSpec {
                    instance_id: m.metadata.instance_id.clone(),
                    subscribed_topics: topics,
                    current: group.target_assignment.get(id).cloned().unwrap_or_default(),
                },
            );
        }
        let result = assignor::assign(&name, &spec).unwrap_or_else(|| {
            tracing::warn!(group = group_id, assignor = %name, "unknown assignor configured; using uniform");
            assignor::uniform::assign(&spec)
        });
        let mut records = Vec::new();
        for (id, a) in &result {
            if group.target_assignment.get(id) != Some(a) {
                records.push(CoordinatorRecord::ConsumerGroupTargetAssignmentMember(
                    member_key(group_id, id),
                    Some(ConsumerGroupTargetAssignmentMemberValue {
                        topic_partitions: assignment_to_value(a),
                    }),
                ));
            }
        }
        for id in group.target_assignment.keys() {
            if !group.members.contains_key(id) {
                records.push(CoordinatorRecord::ConsumerGroupTargetAssignmentMember(
                    member_key(group_id, id),
                    None,
                ));
            }
        }
        let epoch = group.group_epoch;
        tracing::info!(group = group_id, epoch, assignor = %name, "computed a new target assignment");
        records.push(CoordinatorRecord::ConsumerGroupTargetAssignmentMetadata(
            group_key(group_id),
            Some(ConsumerGroupTargetAssignmentMetadataValue {
                assignment_epoch: epoch,
            }),
        ));
        // Targets hold subscribed partitions only, which fit (see `metadata_budget`); should one
        // not (max_record_bytes lowered since), the group keeps its target and stays Assigning.
        let encoded: Vec<Record> = records.iter().map(CoordinatorRecord::encode).collect();
        if let Some(size) = encoded
            .iter()
            .map(record_size)
            .find(|size| *size > config.max_record_bytes)
        {
            tracing::error!(
                group = group_id,
                epoch,
                size,
                max_record_bytes = config.max_record_bytes,
                "a target assignment record would exceed max_record_bytes; the target assignment is not updated"
            );
            return;
        }
        for r in encoded {
            self.emit_encoded(out, r);
        }
    }

    /// Moves the member towards its target assignment (see [`current_assignment_builder`]).
    fn maybe_reconcile(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        member_id: &str,
        owned: Option<&Assignment>,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        let Some(member) = group.members.get(member_id) else {
            return;
        };
        if member.is_reconciled_to(group.assignment_epoch) {
            return;
        }
        let empty = Assignment::new();
        let target = group.target_assignment.get(member_id).unwrap_or(&empty);
        let next = current_assignment_builder::build(
            member,
            group.assignment_epoch,
            target,
            owned,
            |t, p| group.owner(t, p).is_some_and(|o| o != member_id),
        );
        if next == member.assignment {
            return;
        }
        let rebalance_timeout = i64::from(member.metadata.rebalance_timeout_ms.max(0));
        let unrevoked = next.state == MemberState::UnrevokedPartitions;
        tracing::debug!(
            group = group_id,
            member = member_id,
            epoch = next.member_epoch,
            state = next.state.name(),
            "member assignment changed"
        );
        let record = CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
            member_key(group_id, member_id),
            Some(next.to_value()),
        )
        .encode();
        // Fits by construction (see `metadata_budget`) unless max_record_bytes was lowered:
        // then the member stays as it is, owning what it owns.
        if record_size(&record) > config.max_record_bytes {
            tracing::error!(
                group = group_id,
                member = member_id,
                size = record_size(&record),
                max_record_bytes = config.max_record_bytes,
                "a member's assignment record would exceed max_record_bytes; the member is not moved"
            );
            return;
        }
        self.emit_encoded(out, record);
        if let Some(t) = self
            .timers
            .get_mut(&(group_id.to_string(), member_id.to_string()))
        {
            t.rebalance_deadline_ms = unrevoked.then(|| now_ms.saturating_add(rebalance_timeout));
        } else {
            self.timers.insert(
                (group_id.to_string(), member_id.to_string()),
                MemberTimers {
                    session_deadline_ms: i64::MAX,
                    rebalance_deadline_ms: unrevoked
                        .then(|| now_ms.saturating_add(rebalance_timeout)),
                },
            );
        }
    }

    fn leave(
        &mut self,
        config: &GroupConfig,
        request: &ConsumerGroupHeartbeatRequest,
        image: &MetadataImage,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> Result<ConsumerGroupHeartbeatResponse, ApiErr> {
        let group_id = request.group_id.as_str();
        let member_id = request.member_id.as_str();
        let Some(group) = self.groups.get(group_id) else {
            return Err(err(
                ErrorCode::UnknownMemberId,
                format!(
                    "member {member_id} cannot leave group {group_id}: the group does not exist"
                ),
            ));
        };
        let target = if let Some(instance) = &request.instance_id {
            match group.static_members.get(instance) {
                None => {
                    return Err(err(
                        ErrorCode::UnknownMemberId,
                        format!("instance id {instance} is unknown in group {group_id}"),
                    ));
                }
                Some(holder) if holder != member_id => {
                    return Err(fenced_instance(group_id, member_id, instance, holder));
                }
                Some(holder) => holder.clone(),
            }
        } else {
            if !group.members.contains_key(member_id) {
                return Err(err(
                    ErrorCode::UnknownMemberId,
                    format!("member {member_id} is not a member of group {group_id}"),
                ));
            }
            member_id.to_string()
        };
        if request.member_epoch == LEAVE_GROUP_STATIC_MEMBER_EPOCH {
            self.static_leave(config, group_id, &target, image, now_ms, out);
        } else {
            tracing::info!(
                group = group_id,
                member = member_id,
                "member leaves the consumer group"
            );
            self.fence_member(config, group_id, &target, image, out);
        }
        Ok(ConsumerGroupHeartbeatResponse {
            error_code: ErrorCode::None as i32,
            error_message: String::new(),
            member_id: member_id.to_string(),
            member_epoch: request.member_epoch,
            heartbeat_interval_ms: config.heartbeat_interval_ms,
            assignment: None,
        })
    }

    /// A static member leaves for a restart: epoch -2, assignment kept (nothing pending).
    fn static_leave(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        member_id: &str,
        image: &MetadataImage,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let Some(member) = self
            .groups
            .get(group_id)
            .and_then(|g| g.members.get(member_id))
        else {
            return;
        };
        tracing::info!(
            group = group_id,
            member = member_id,
            "static member leaves for a restart"
        );
        let mut next = member.assignment.clone();
        next.member_epoch = LEAVE_GROUP_STATIC_MEMBER_EPOCH;
        next.pending_revocation.clear();
        if next.state == MemberState::UnrevokedPartitions {
            next.state = MemberState::Stable;
        }
        let record = CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
            member_key(group_id, member_id),
            Some(next.to_value()),
        )
        .encode();
        if record_size(&record) > config.max_record_bytes {
            // Smaller than the member's current record, so only after max_record_bytes was
            // lowered: the member leaves for good instead.
            tracing::error!(
                group = group_id,
                member = member_id,
                "a static member's assignment record would exceed max_record_bytes; it leaves for good instead"
            );
            self.fence_member(config, group_id, member_id, image, out);
            return;
        }
        self.emit_encoded(out, record);
        self.timers.insert(
            (group_id.to_string(), member_id.to_string()),
            MemberTimers {
                session_deadline_ms: now_ms.saturating_add(i64::from(config.session_timeout_ms)),
                rebalance_deadline_ms: None,
            },
        );
        self.last_sent
            .remove(&(group_id.to_string(), member_id.to_string()));
    }

    /// Removes a member (leave, or fenced by a timer): tombstones, new subscribed topic
    /// metadata, group epoch bump and a new target assignment.
    fn fence_member(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        member_id: &str,
        image: &MetadataImage,
        out: &mut Vec<Record>,
    ) {
        if self
            .groups
            .get(group_id)
            .is_none_or(|g| !g.members.contains_key(member_id))
        {
            return;
        }
        self.remove_member_records(group_id, member_id, out);
        self.maybe_bump_and_assign(config, group_id, image, true, out);
    }

    // ---------------------------------------------------------------------------------------
    // Timers and metadata

    /// Starts every member's timers at `now_ms` (a freshly loaded shard).
    pub fn start_timers(&mut self, config: &GroupConfig, now_ms: i64) {
        self.timers.clear();
        self.last_sent.clear();
        for g in self.groups.values() {
            for m in g.members.values() {
                let rebalance =
                    (m.assignment.state == MemberState::UnrevokedPartitions).then(|| {
                        now_ms.saturating_add(i64::from(m.metadata.rebalance_timeout_ms.max(0)))
                    });
                self.timers.insert(
                    (g.group_id.clone(), m.member_id.clone()),
                    MemberTimers {
                        session_deadline_ms: now_ms
                            .saturating_add(i64::from(config.session_timeout_ms)),
                        rebalance_deadline_ms: rebalance,
                    },
                );
            }
        }
    }

    /// Groups whose subscribed topics changed in `image` get a new epoch and target.
    pub fn on_metadata_update(
        &mut self,
        config: &GroupConfig,
        image: &MetadataImage,
        out: &mut Vec<Record>,
    ) {
        let ids: Vec<String> = self
            .groups
            .values()
            .filter(|g| !g.members.is_empty() || g.group_epoch > g.assignment_epoch)
            .map(|g| g.group_id.clone())
            .collect();
        for id in ids {
            self.maybe_bump_and_assign(config, &id, image, false, out);
        }
    }

    /// Fences members whose session or rebalance timeout passed; returns the groups touched.
    pub fn expire_members(
        &mut self,
        config: &GroupConfig,
        image: &MetadataImage,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> Vec<String> {
        let mut expired: Vec<((String, String), &'static str)> = self
            .timers
            .iter()
            .filter_map(|(k, t)| {
                if t.session_deadline_ms <= now_ms {
                    Some((k.clone(), "its session timed out (no heartbeat)"))
                } else if t.rebalance_deadline_ms.is_some_and(|d| d <= now_ms) {
                    Some((
                        k.clone(),
                        "it did not revoke its partitions within its rebalance timeout",
                    ))
                } else {
                    None
                }
            })
            .collect();
        expired.sort();
        let mut touched = Vec::new();
        for ((group_id, member_id), reason) in expired {
            self.timers.remove(&(group_id.clone(), member_id.clone()));
            if self
                .groups
                .get(&group_id)
                .is_some_and(|g| g.members.contains_key(&member_id))
            {
                tracing::info!(group = %group_id, member = %member_id, "fencing member: {reason}");
                self.fence_member(config, &group_id, &member_id, image, out);
                touched.push(group_id);
            }
        }
        touched.dedup();
        touched
    }

    /// The earliest timer.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.timers
            .values()
            .map(|t| {
                t.rebalance_deadline_ms
                    .map_or(t.session_deadline_ms, |r| r.min(t.session_deadline_ms))
            })
            .min()
    }

    /// Whether a member of `group_id` subscribes to `topic`, by name or regex.
    pub fn is_subscribed(&mut self, group_id: &str, topic: &str) -> bool {
        let Some(group) = self.groups.get(group_id) else {
            return false;
        };
        group.members.values().any(|m| {
            m.metadata.subscribed_topic_names.iter().any(|t| t == topic)
                || m.metadata
                    .subscribed_topic_regex
                    .as_deref()
                    .is_some_and(|r| self.regexes.matches(r, topic))
        })
    }

    /// Tombstones of every record of a group (which must have no members to make sense).
    pub fn delete_group(&mut self, group_id: &str, out: &mut Vec<Record>) {
        let Some(group) = self.groups.get(group_id) else {
            return;
        };
        let members: Vec<String> = group.members.keys().cloned().collect();
        let targets: Vec<String> = group.target_assignment.keys().cloned().collect();
        for m in &members {
            self.emit(
                out,
                CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
                    member_key(group_id, m),
                    None,
                ),
            );
        }
        for m in &targets {
            self.emit(
                out,
                CoordinatorRecord::ConsumerGroupTargetAssignmentMember(
                    member_key(group_id, m),
                    None,
                ),
            );
        }
        self.emit(
            out,
            CoordinatorRecord::ConsumerGroupTargetAssignmentMetadata(group_key(group_id), None),
        );
        for m in &members {
            self.emit(
                out,
                CoordinatorRecord::ConsumerGroupMemberMetadata(member_key(group_id, m), None),
            );
        }
        self.emit(
            out,
            CoordinatorRecord::ConsumerGroupPartitionMetadata(group_key(group_id), None),
        );
        self.emit(
            out,
            CoordinatorRecord::ConsumerGroupMetadata(group_key(group_id), None),
        );
    }

    // ---------------------------------------------------------------------------------------
    // Describe

    /// DescribeGroups of a group with state (members sorted by id, partitions sorted).
    pub fn describe(&self, config: &GroupConfig, group: &ConsumerGroup) -> DescribedGroup {
        let empty = Assignment::new();
        DescribedGroup {
            error_code: ErrorCode::None as i32,
            error_message: String::new(),
            group_id: group.group_id.clone(),
            group_state: group.state().name().to_string(),
            group_epoch: group.group_epoch,
            assignment_epoch: group.assignment_epoch,
            assignor_name: group.preferred_assignor(&config.assignors),
            members: group
                .members
                .values()
                .map(|m| GroupMember {
                    member_id: m.member_id.clone(),
                    instance_id: m.metadata.instance_id.clone(),
                    rack_id: m.metadata.rack_id.clone(),
                    member_epoch: m.assignment.member_epoch,
                    client_id: m.metadata.client_id.clone(),
                    client_host: m.metadata.client_host.clone(),
                    subscribed_topic_names: m.metadata.subscribed_topic_names.clone(),
                    subscribed_topic_regex: m.metadata.subscribed_topic_regex.clone(),
                    assignment: assignment_to_proto(&m.owned()),
                    target_assignment: assignment_to_proto(
                        group.target_assignment.get(&m.member_id).unwrap_or(&empty),
                    ),
                    member_state: m.assignment.state.name().to_string(),
                })
                .collect(),
        }
    }
}

/// What the request makes of a member's metadata (`client_host`: its peer address).
fn updated_metadata(
    before: &MemberMetadata,
    request: &ConsumerGroupHeartbeatRequest,
    client_host: &str,
) -> MemberMetadata {
    let mut md = before.clone();
    if let Some(instance) = &request.instance_id {
        md.instance_id = Some(instance.clone());
    }
    if let Some(rack) = &request.rack_id {
        md.rack_id = Some(rack.clone());
    }
    if request.rebalance_timeout_ms > 0 {
        md.rebalance_timeout_ms = request.rebalance_timeout_ms;
    }
    if let Some(assignor) = &request.server_assignor {
        md.server_assignor = Some(assignor.clone());
    }
    if let Some(names) = &request.subscribed_topic_names {
        let mut names = names.names.clone();
        names.sort();
        names.dedup();
        md.subscribed_topic_names = names;
    }
    if let Some(regex) = &request.subscribed_topic_regex {
        md.subscribed_topic_regex = (!regex.is_empty()).then(|| regex.clone());
    }
    md.client_id = request.client_id.clone();
    md.client_host = client_host.to_string();
    md
}

/// Tombstones of a member's records, in Kafka's order.
fn member_tombstones(group_id: &str, member_id: &str) -> [CoordinatorRecord; 3] {
    [
        CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(
            member_key(group_id, member_id),
            None,
        ),
        CoordinatorRecord::ConsumerGroupTargetAssignmentMember(
            member_key(group_id, member_id),
            None,
        ),
        CoordinatorRecord::ConsumerGroupMemberMetadata(member_key(group_id, member_id), None),
    ]
}

/// How many bytes of its records a group may spend on subscribed topics: `max_record_bytes`
/// less the keys (group id, a member id of at most [`MAX_ID_BYTES`]) and the fixed fields of
/// member-level values.
fn metadata_budget(config: &GroupConfig, group_id: &str) -> usize {
    config
        .max_record_bytes
        .saturating_sub(group_id.len() + MAX_ID_BYTES + 64)
}

/// Bytes of one topic in the records of its group, at most: its entry in the subscribed topic
/// metadata record, or twice its entry in an assignment of every one of its partitions —
/// whichever is larger. A target assignment lists subscribed partitions; a member's current
/// assignment lists what it owns and what it revokes, each from a subscription that fit. So
/// when the costs of a group's subscribed topics add up to at most [`metadata_budget`], none of
/// its records can exceed `max_record_bytes`.
fn topic_cost(name: &str, topic: &TopicMetadata) -> usize {
    // A length-delimited field (tag, length, bytes); empty strings and zeros are not written.
    let field = |len: usize| 1 + encoded_len_varint(len as u64) + len;
    let string = |s: &str| if s.is_empty() { 0 } else { field(s.len()) };
    let n = u64::try_from(topic.partitions.max(0)).unwrap_or(0);
    // A `TopicMetadataValue`: name, partitions, topic id.
    let metadata = field(
        string(name) + if n > 0 { 1 + encoded_len_varint(n) } else { 0 } + string(&topic.topic_id),
    );
    // Partitions 0..n, packed: one varint each.
    let packed: u64 = [
        (0u64, 1u64 << 7),
        (1 << 7, 1 << 14),
        (1 << 14, 1 << 21),
        (1 << 21, 1 << 28),
    ]
    .iter()
    .zip(1u64..)
    .map(|(&(lo, hi), bytes)| n.clamp(lo, hi).saturating_sub(lo) * bytes)
    .sum::<u64>()
        + n.saturating_sub(1 << 28) * 5;
    // A `TopicPartitionsValue` of partitions 0..n.
    let mut inner = string(name);
    if n > 0 {
        inner += field(packed as usize);
    }
    metadata.max(2 * field(inner))
}

/// The existing topics the members of `group` subscribe to (names, and regex matches among the
/// non-internal topics), with their partition counts: the first ones by name whose costs (see
/// [`topic_cost`]) fit in `budget`, and the names of the others.
fn subscription_metadata(
    group: &ConsumerGroup,
    image: &MetadataImage,
    regexes: &mut RegexCache,
    budget: usize,
) -> (BTreeMap<String, TopicMetadata>, Vec<String>) {
    let mut topics: BTreeSet<&str> = BTreeSet::new();
    let mut patterns: BTreeSet<&str> = BTreeSet::new();
    for m in group.members.values() {
        for t in &m.metadata.subscribed_topic_names {
            if image.topics.contains_key(t) {
                topics.insert(t);
            }
        }
        if let Some(r) = &m.metadata.subscribed_topic_regex {
            patterns.insert(r);
        }
    }
    for p in patterns {
        let Ok(regex) = regexes.get(p) else {
            continue;
        };
        for t in image.topics.keys() {
            if !topic_regex::is_internal(t) && regex.is_match(t) {
                topics.insert(t);
            }
        }
    }
    let mut metadata = BTreeMap::new();
    let mut left_out = Vec::new();
    let mut spent = 0usize;
    for t in topics {
        let Some(info) = image.topics.get(t) else {
            continue;
        };
        let topic = TopicMetadata {
            topic_id: info.id.clone(),
            partitions: i32::try_from(info.partitions.len()).unwrap_or(i32::MAX),
        };
        let cost = topic_cost(t, &topic);
        if left_out.is_empty() && spent + cost <= budget {
            spent += cost;
            metadata.insert(t.to_string(), topic);
        } else {
            left_out.push(t.to_string());
        }
    }
    (metadata, left_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::records::TopicPartitionsValue;
    use prost::Message;

    #[test]
    fn topic_cost_bounds_the_real_encodings() {
        for (name, id) in [("t", "AAAAAAAAAAAAAAAAAAAAAA"), (&*"x".repeat(249), "")] {
            for n in [0, 1, 127, 128, 129, 16_383, 16_384, 20_000] {
                let topic = TopicMetadata {
                    topic_id: id.into(),
                    partitions: n,
                };
                let metadata = ConsumerGroupPartitionMetadataValue {
                    topics: vec![TopicMetadataValue {
                        name: name.to_string(),
                        partitions: n,
                        topic_id: topic.topic_id.clone(),
                    }],
                }
                .encoded_len();
                let full = ConsumerGroupTargetAssignmentMemberValue {
                    topic_partitions: vec![TopicPartitionsValue {
                        topic: name.to_string(),
                        partitions: (0..n).collect(),
                    }],
                }
                .encoded_len();
                let cost = topic_cost(name, &topic);
                assert_eq!(
                    cost,
                    metadata.max(2 * full),
                    "{} bytes, {n} partitions",
                    name.len()
                );
            }
        }
    }
}
