//! Classic consumer groups (Kafka's `ClassicGroup` and the classic half of its
//! `GroupMetadataManager`): the JoinGroup / SyncGroup / Heartbeat / LeaveGroup protocol that
//! every Kafka client before KIP-848 speaks, with the assignment computed by the group's leader
//! (a client) and handed to the others through the coordinator.
//!
//! States: `Empty` (no members), `PreparingRebalance` (waiting for every known member to
//! rejoin, or for the rebalance timeout; the first rebalance of an empty group waits
//! `group.initial.rebalance.delay.ms` more for others to arrive), `CompletingRebalance` (the
//! members have their JoinGroup answers; waiting for the leader's SyncGroup with the
//! assignment), `Stable`, and `Dead` (deleted). A member id is given by the coordinator
//! (MEMBER_ID_REQUIRED on a first join from v4 on).
//!
//! JoinGroup and SyncGroup answers are held until the rebalance gets that far: a request
//! names a [`WaiterId`] (the broker's handle on the connection waiting), and every operation
//! may leave answers for waiters, taken with [`take_classic_deliveries`]; the broker sends
//! them once the records of the operation are committed.
//!
//! [`take_classic_deliveries`]: crate::GroupCoordinatorShard::take_classic_deliveries
//!
//! Unlike consumer groups, a classic group's live state is not the replay of its records
//! (Kafka's classic groups are not either): joins in flight and timers are memory only. The
//! one record, [`GroupMetadataValue`], is written when a rebalance completes (the leader's
//! SyncGroup) and when the group becomes empty, and is replayed only when a shard is loaded: a
//! group with members then comes back `Stable` in that generation, so its members keep
//! heartbeating and committing after a coordinator failover; one that went away is removed by
//! its session timeout, which starts a rebalance. Static membership (`group.instance.id`) is
//! refused (UNSUPPORTED_VERSION, as a broker that predates it answers).

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use rill_protocol::ErrorCode;

use crate::records::{
    ClassicMemberValue, CoordinatorRecord, GroupKey, GroupMetadataValue, group_key,
};
use crate::{GroupConfig, Record, record_size};

/// The broker's handle on a JoinGroup or SyncGroup waiting for its answer.
pub type WaiterId = u64;

/// Kafka's INCONSISTENT_GROUP_PROTOCOL (not in rill's gRPC error model: classic groups only
/// exist over the Kafka listener).
pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
/// Kafka's UNSUPPORTED_VERSION.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// Kafka's MEMBER_ID_REQUIRED: join again with the member id in the answer (KIP-394).
pub const MEMBER_ID_REQUIRED: i16 = 79;

fn code(e: ErrorCode) -> i16 {
    e as i16
}

/// One protocol (assignor) a member supports, with its metadata (the subscription).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Protocol {
    /// The protocol name (`range`, `roundrobin`, `cooperative-sticky`, ...).
    pub name: String,
    /// The member's metadata for it, opaque to the coordinator.
    pub metadata: Bytes,
}

/// JoinGroup, as the coordinator needs it.
#[derive(Clone, Debug, Default)]
pub struct JoinGroupRequest {
    /// The group id.
    pub group_id: String,
    /// `session.timeout.ms`.
    pub session_timeout_ms: i32,
    /// `max.poll.interval.ms` (v1+; v0 uses the session timeout).
    pub rebalance_timeout_ms: i32,
    /// Empty on a first join.
    pub member_id: String,
    /// `group.instance.id` (refused).
    pub group_instance_id: Option<String>,
    /// `consumer` for Kafka consumers.
    pub protocol_type: String,
    /// The protocols the member supports, preferred first.
    pub protocols: Vec<Protocol>,
    /// v4+: a first join gets MEMBER_ID_REQUIRED and a member id to join with.
    pub require_known_member_id: bool,
    /// The request header's client id.
    pub client_id: String,
    /// The member's peer address.
    pub client_host: String,
}

/// One member in the leader's JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct JoinGroupMember {
    /// The member id.
    pub member_id: String,
    /// Its `group.instance.id` (always `None` here).
    pub group_instance_id: Option<String>,
    /// Its metadata for the selected protocol.
    pub metadata: Bytes,
}

/// The JoinGroup answer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct JoinGroupResponse {
    /// Kafka's error code (0 = none).
    pub error_code: i16,
    /// The generation joined, -1 on error.
    pub generation_id: i32,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The selected protocol.
    pub protocol_name: Option<String>,
    /// The leader's member id.
    pub leader: String,
    /// The member's id (the new one with MEMBER_ID_REQUIRED).
    pub member_id: String,
    /// Every member with its metadata: for the leader only.
    pub members: Vec<JoinGroupMember>,
}

impl JoinGroupResponse {
    fn error(error_code: i16, member_id: &str) -> Self {
        JoinGroupResponse {
            error_code,
            generation_id: -1,
            member_id: member_id.to_string(),
            ..Default::default()
        }
    }
}

/// SyncGroup, as the coordinator needs it.
#[derive(Clone, Debug, Default)]
pub struct SyncGroupRequest {
    /// The group id.
    pub group_id: String,
    /// The generation the member joined.
    pub generation_id: i32,
    /// The member id.
    pub member_id: String,
    /// `group.instance.id` (refused).
    pub group_instance_id: Option<String>,
    /// v5+: the protocol type the member joined with.
    pub protocol_type: Option<String>,
    /// v5+: the protocol the member was told.
    pub protocol_name: Option<String>,
    /// The leader's assignment: member id → assignment bytes (empty from followers).
    pub assignments: Vec<(String, Bytes)>,
}

/// The SyncGroup answer.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct SyncGroupResponse {
    /// Kafka's error code (0 = none).
    pub error_code: i16,
    /// The group's protocol type.
    pub protocol_type: Option<String>,
    /// The selected protocol.
    pub protocol_name: Option<String>,
    /// The member's assignment.
    pub assignment: Bytes,
}

impl SyncGroupResponse {
    /// A member's assignment (no error), in the group's protocol.
    fn assigned(
        protocol_type: &Option<String>,
        protocol_name: &Option<String>,
        assignment: &Bytes,
    ) -> Self {
        SyncGroupResponse {
            error_code: 0,
            protocol_type: protocol_type.clone(),
            protocol_name: protocol_name.clone(),
            assignment: assignment.clone(),
        }
    }

    fn error(error_code: i16) -> Self {
        SyncGroupResponse {
            error_code,
            ..Default::default()
        }
    }
}

/// Heartbeat, as the coordinator needs it.
#[derive(Clone, Debug, Default)]
pub struct HeartbeatRequest {
    /// The group id.
    pub group_id: String,
    /// The generation the member is in.
    pub generation_id: i32,
    /// The member id.
    pub member_id: String,
    /// `group.instance.id` (refused).
    pub group_instance_id: Option<String>,
}

/// One member leaving.
#[derive(Clone, Debug, Default)]
pub struct LeavingMember {
    /// The member id.
    pub member_id: String,
    /// `group.instance.id`.
    pub group_instance_id: Option<String>,
}

/// LeaveGroup (v3+ names several members; v0-2 one).
#[derive(Clone, Debug, Default)]
pub struct LeaveGroupRequest {
    /// The group id.
    pub group_id: String,
    /// The members leaving.
    pub members: Vec<LeavingMember>,
}

/// The LeaveGroup answer: a group-level error, and one per member.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LeaveGroupResponse {
    /// Kafka's error code for the whole request.
    pub error_code: i16,
    /// (member id, instance id, error code) per member, in request order.
    pub members: Vec<(String, Option<String>, i16)>,
}

/// An answer for a waiting JoinGroup or SyncGroup.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClassicAnswer {
    /// A JoinGroup answer.
    Join(JoinGroupResponse),
    /// A SyncGroup answer.
    Sync(SyncGroupResponse),
}

/// The states of a classic group (Kafka's `ClassicGroupState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClassicGroupState {
    /// No members.
    Empty,
    /// Waiting for members to (re)join.
    PreparingRebalance,
    /// Waiting for the leader's assignment.
    CompletingRebalance,
    /// Every member has its assignment.
    Stable,
    /// Deleted.
    Dead,
}

impl ClassicGroupState {
    /// Kafka's name of the state (ListGroups, DescribeGroups).
    pub fn name(self) -> &'static str {
        match self {
            ClassicGroupState::Empty => "Empty",
            ClassicGroupState::PreparingRebalance => "PreparingRebalance",
            ClassicGroupState::CompletingRebalance => "CompletingRebalance",
            ClassicGroupState::Stable => "Stable",
            ClassicGroupState::Dead => "Dead",
        }
    }
}

/// A member of a classic group.
#[derive(Clone, Debug)]
pub(crate) struct ClassicMember {
    pub member_id: String,
    pub client_id: String,
    pub client_host: String,
    pub rebalance_timeout_ms: i32,
    pub session_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<Protocol>,
    pub assignment: Bytes,
    awaiting_join: Option<WaiterId>,
    awaiting_sync: Option<WaiterId>,
    session_deadline_ms: i64,
}

impl ClassicMember {
    /// Starts the member's session timeout again at `now_ms` (it was heard from).
    fn restart_session(&mut self, now_ms: i64) {
        self.session_deadline_ms = now_ms + i64::from(self.session_timeout_ms);
    }

    /// The member's metadata for `protocol` (empty when it does not support it).
    pub fn metadata(&self, protocol: &str) -> Bytes {
        self.protocols
            .iter()
            .find(|p| p.name == protocol)
            .map(|p| p.metadata.clone())
            .unwrap_or_default()
    }

    fn same_protocols(&self, protocols: &[Protocol]) -> bool {
        self.protocols == protocols
    }
}

/// One classic group.
#[derive(Clone, Debug)]
pub(crate) struct ClassicGroup {
    pub group_id: String,
    pub state: ClassicGroupState,
    pub generation_id: i32,
    pub protocol_type: Option<String>,
    pub protocol_name: Option<String>,
    pub leader_id: Option<String>,
    pub members: BTreeMap<String, ClassicMember>,
    /// Members told MEMBER_ID_REQUIRED, until they join with it: id → deadline.
    pending_members: BTreeMap<String, i64>,
    /// Members that have not sent SyncGroup since the last join completed.
    pending_sync: BTreeSet<String>,
    /// When the join phase ends (PreparingRebalance).
    join_deadline_ms: Option<i64>,
    /// The initial delayed join of a group that was empty: the rebalance time left to extend
    /// the delay with when new members keep arriving.
    initial_delay_remaining_ms: Option<i64>,
    new_member_added: bool,
    /// When members still in `pending_sync` are removed.
    sync_deadline_ms: Option<i64>,
}

impl ClassicGroup {
    fn new(group_id: &str) -> Self {
        ClassicGroup {
            group_id: group_id.to_string(),
            state: ClassicGroupState::Empty,
            generation_id: 0,
            protocol_type: None,
            protocol_name: None,
            leader_id: None,
            members: BTreeMap::new(),
            pending_members: BTreeMap::new(),
            pending_sync: BTreeSet::new(),
            join_deadline_ms: None,
            initial_delay_remaining_ms: None,
            new_member_added: false,
            sync_deadline_ms: None,
        }
    }

    /// True without members, joined or pending.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.pending_members.is_empty()
    }

    fn rebalance_timeout_ms(&self) -> i64 {
        self.members
            .values()
            .map(|m| i64::from(m.rebalance_timeout_ms))
            .max()
            .unwrap_or(0)
    }

    fn all_joined(&self) -> bool {
        self.pending_members.is_empty() && self.members.values().all(|m| m.awaiting_join.is_some())
    }

    /// Kafka's `supportsProtocols`: an empty group takes any non-empty type and protocol list;
    /// otherwise the type must match and one protocol must be supported by every member.
    fn supports(&self, protocol_type: &str, protocols: &[Protocol]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        self.protocol_type.as_deref() == Some(protocol_type)
            && protocols.iter().any(|p| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|q| q.name == p.name))
            })
    }

    /// Kafka's `selectProtocol`: among the protocols every member supports, the one most
    /// members prefer (each votes for its first supported candidate); ties go to the leader's
    /// order.
    fn select_protocol(&self) -> Option<String> {
        let leader = self.leader_id.as_ref().and_then(|l| self.members.get(l))?;
        let candidates: Vec<&str> = leader
            .protocols
            .iter()
            .map(|p| p.name.as_str())
            .filter(|name| {
                self.members
                    .values()
                    .all(|m| m.protocols.iter().any(|q| q.name == *name))
            })
            .collect();
        let mut votes: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(p) = m
                .protocols
                .iter()
                .find(|p| candidates.contains(&p.name.as_str()))
            {
                *votes.entry(p.name.as_str()).or_default() += 1;
            }
        }
        let mut best: Option<(&str, usize)> = None;
        for c in candidates {
            let n = votes.get(c).copied().unwrap_or(0);
            if best.is_none_or(|(_, b)| n > b) {
                best = Some((c, n));
            }
        }
        best.map(|(c, _)| c.to_string())
    }

    /// The record of the group as it is now (members with their metadata for the selected
    /// protocol and their assignments).
    fn record(&self, now_ms: i64) -> GroupMetadataValue {
        let protocol = self.protocol_name.clone();
        GroupMetadataValue {
            protocol_type: self.protocol_type.clone().unwrap_or_default(),
            generation: self.generation_id,
            protocol: protocol.clone(),
            leader: self.leader_id.clone(),
            current_state_timestamp_ms: now_ms,
            members: self
                .members
                .values()
                .map(|m| ClassicMemberValue {
                    member_id: m.member_id.clone(),
                    group_instance_id: None,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    subscription: protocol
                        .as_deref()
                        .map(|p| m.metadata(p))
                        .unwrap_or_default(),
                    assignment: m.assignment.clone(),
                })
                .collect(),
        }
    }

    /// Kafka's `ClassicGroup.validateOffsetCommit`: a commit of `generation_id` by `member_id`
    /// is accepted from a member of the current generation, or from outside the group (no
    /// member id, negative generation) while it is empty.
    pub fn validate_offset_commit(
        &self,
        member_id: &str,
        generation_id: i32,
    ) -> Result<(), (ErrorCode, String)> {
        let group_id = &self.group_id;
        if self.state == ClassicGroupState::Dead {
            return Err((
                ErrorCode::CoordinatorNotAvailable,
                format!("group {group_id} is being deleted; retry"),
            ));
        }
        if generation_id < 0 && self.state == ClassicGroupState::Empty {
            return Ok(());
        }
        if generation_id >= 0 || !member_id.is_empty() {
            if !self.members.contains_key(member_id) {
                return Err((
                    ErrorCode::UnknownMemberId,
                    format!("member {member_id:?} is not a member of group {group_id}: rejoin"),
                ));
            }
            if generation_id != self.generation_id {
                return Err((
                    ErrorCode::IllegalGeneration,
                    format!(
                        "member {member_id} committed in generation {generation_id}; group {group_id} is in generation {}: rejoin",
                        self.generation_id
                    ),
                ));
            }
        } else if self.state != ClassicGroupState::Empty {
            return Err((
                ErrorCode::UnknownMemberId,
                format!(
                    "group {group_id} has members: offsets can be committed from outside it (no member id, generation -1) only while it is empty"
                ),
            ));
        }
        if self.state == ClassicGroupState::CompletingRebalance {
            return Err((
                ErrorCode::RebalanceInProgress,
                format!("group {group_id} is completing a rebalance: sync, then commit"),
            ));
        }
        Ok(())
    }
}

/// The classic groups of a shard, and the answers waiting to be sent.
#[derive(Default)]
pub(crate) struct ClassicGroupManager {
    groups: BTreeMap<String, ClassicGroup>,
    deliveries: Vec<(WaiterId, ClassicAnswer)>,
}

impl ClassicGroupManager {
    /// The group `group_id`, if it exists.
    pub fn group(&self, group_id: &str) -> Option<&ClassicGroup> {
        self.groups.get(group_id)
    }

    /// All groups.
    pub fn groups(&self) -> impl Iterator<Item = &ClassicGroup> {
        self.groups.values()
    }

    /// Answers for waiters, in the order they were decided.
    pub fn take_deliveries(&mut self) -> Vec<(WaiterId, ClassicAnswer)> {
        std::mem::take(&mut self.deliveries)
    }

    fn deliver(&mut self, waiter: WaiterId, answer: ClassicAnswer) {
        self.deliveries.push((waiter, answer));
    }

    /// Replays a [`GroupMetadataValue`] record (loading): the group as it was written, its
    /// members `Stable` (or `Empty` without members). Session timers start at [`start_timers`].
    ///
    /// [`start_timers`]: Self::start_timers
    pub fn replay(&mut self, key: GroupKey, value: Option<GroupMetadataValue>) {
        let Some(v) = value else {
            self.groups.remove(&key.group);
            return;
        };
        let mut g = ClassicGroup::new(&key.group);
        g.generation_id = v.generation;
        g.protocol_type = (!v.protocol_type.is_empty()).then_some(v.protocol_type.clone());
        g.protocol_name = v.protocol.clone();
        for m in v.members {
            let protocols = v
                .protocol
                .as_ref()
                .map(|p| {
                    vec![Protocol {
                        name: p.clone(),
                        metadata: m.subscription.clone(),
                    }]
                })
                .unwrap_or_default();
            g.members.insert(
                m.member_id.clone(),
                ClassicMember {
                    member_id: m.member_id,
                    client_id: m.client_id,
                    client_host: m.client_host,
                    rebalance_timeout_ms: m.rebalance_timeout_ms,
                    session_timeout_ms: m.session_timeout_ms,
                    protocol_type: v.protocol_type.clone(),
                    protocols,
                    assignment: m.assignment,
                    awaiting_join: None,
                    awaiting_sync: None,
                    session_deadline_ms: i64::MAX,
                },
            );
        }
        g.leader_id = v.leader.filter(|l| g.members.contains_key(l));
        if g.leader_id.is_none() {
            g.leader_id = g.members.keys().next().cloned();
        }
        g.state = if g.members.is_empty() {
            ClassicGroupState::Empty
        } else {
            ClassicGroupState::Stable
        };
        self.groups.insert(key.group, g);
    }

    /// Starts every loaded member's session at `now_ms`.
    pub fn start_timers(&mut self, now_ms: i64) {
        for g in self.groups.values_mut() {
            for m in g.members.values_mut() {
                m.restart_session(now_ms);
            }
        }
    }

    /// Removes a group without members (DeleteGroups, expiry, or its id taken by a consumer
    /// group): its tombstone.
    pub fn delete(&mut self, group_id: &str, out: &mut Vec<Record>) {
        if let Some(mut g) = self.groups.remove(group_id) {
            g.state = ClassicGroupState::Dead;
            out.push(CoordinatorRecord::GroupMetadata(group_key(group_id), None).encode());
        }
    }

    /// Writes the group's record: the members' metadata and assignments when it fits in a
    /// record, else the generation alone (the membership then rebalances after a failover).
    fn store(config: &GroupConfig, g: &ClassicGroup, now_ms: i64, out: &mut Vec<Record>) {
        let full = CoordinatorRecord::GroupMetadata(group_key(&g.group_id), Some(g.record(now_ms)))
            .encode();
        if record_size(&full) <= config.max_record_bytes {
            out.push(full);
            return;
        }
        tracing::warn!(group = %g.group_id, bytes = record_size(&full), "the classic group's members and assignments do not fit in one record; storing its generation only");
        let mut bare = g.record(now_ms);
        bare.members.clear();
        out.push(CoordinatorRecord::GroupMetadata(group_key(&g.group_id), Some(bare)).encode());
    }

    // ---------------------------------------------------------------------------------------
    // JoinGroup

    /// JoinGroup of a valid group id (not a consumer group's): answers `waiter` now or when the
    /// rebalance completes.
    pub fn join(
        &mut self,
        config: &GroupConfig,
        request: JoinGroupRequest,
        waiter: WaiterId,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let fail = |this: &mut Self, error: i16, why: String| {
            tracing::debug!(group = %request.group_id, member = %request.member_id, error, "JoinGroup refused: {why}");
            this.deliver(
                waiter,
                ClassicAnswer::Join(JoinGroupResponse::error(error, &request.member_id)),
            );
        };
        if request.group_instance_id.is_some() {
            return fail(
                self,
                UNSUPPORTED_VERSION,
                "static membership (group.instance.id) is not supported for classic groups; unset group.instance.id".into(),
            );
        }
        let session = request.session_timeout_ms;
        if session < config.classic_min_session_timeout_ms
            || session > config.classic_max_session_timeout_ms
        {
            return fail(
                self,
                code(ErrorCode::InvalidSessionTimeout),
                format!(
                    "session timeout {session} ms is outside [group.min.session.timeout.ms, group.max.session.timeout.ms] = [{}, {}]",
                    config.classic_min_session_timeout_ms, config.classic_max_session_timeout_ms
                ),
            );
        }
        let group_id = request.group_id.clone();
        let known = !request.member_id.is_empty();
        if known && !self.groups.contains_key(&group_id) {
            return fail(
                self,
                code(ErrorCode::UnknownMemberId),
                "the group does not exist".into(),
            );
        }
        let g = self
            .groups
            .entry(group_id.clone())
            .or_insert_with(|| ClassicGroup::new(&group_id));
        if g.state == ClassicGroupState::Dead {
            return fail(
                self,
                code(ErrorCode::CoordinatorNotAvailable),
                "the group is being deleted".into(),
            );
        }
        if !g.supports(&request.protocol_type, &request.protocols) {
            let why = format!(
                "protocol type {:?} with protocols {:?} is not compatible with the group's (type {:?}, protocols every member supports)",
                request.protocol_type,
                request
                    .protocols
                    .iter()
                    .map(|p| &p.name)
                    .collect::<Vec<_>>(),
                g.protocol_type
            );
            if g.is_empty() && g.generation_id == 0 && g.state == ClassicGroupState::Empty {
                self.groups.remove(&group_id);
            }
            return fail(self, INCONSISTENT_GROUP_PROTOCOL, why);
        }
        if !known {
            if g.members.len() + g.pending_members.len() >= config.classic_max_size {
                return fail(
                    self,
                    code(ErrorCode::GroupMaxSizeReached),
                    format!(
                        "the group has group.max.size = {} members",
                        config.classic_max_size
                    ),
                );
            }
            let member_id = format!("{}-{}", request.client_id, uuid::Uuid::new_v4());
            if request.require_known_member_id {
                g.pending_members
                    .insert(member_id.clone(), now_ms + i64::from(session));
                self.deliver(
                    waiter,
                    ClassicAnswer::Join(JoinGroupResponse::error(MEMBER_ID_REQUIRED, &member_id)),
                );
                return;
            }
            return self.add_member_and_rebalance(
                config, &group_id, member_id, request, waiter, now_ms, out,
            );
        }
        let member_id = request.member_id.clone();
        if g.pending_members.remove(&member_id).is_some() {
            return self.add_member_and_rebalance(
                config, &group_id, member_id, request, waiter, now_ms, out,
            );
        }
        let Some(member) = g.members.get(&member_id) else {
            return fail(
                self,
                code(ErrorCode::UnknownMemberId),
                "the member is not in the group (its session expired, or it left)".into(),
            );
        };
        let unchanged = member.same_protocols(&request.protocols);
        let is_leader = g.leader_id.as_deref() == Some(member_id.as_str());
        match g.state {
            ClassicGroupState::PreparingRebalance => {
                self.update_member_and_rebalance(config, &group_id, request, waiter, now_ms, out)
            }
            ClassicGroupState::CompletingRebalance if unchanged => {
                // The member lost the answer it was sent: send it again.
                let answer = join_answer(g, &member_id);
                self.deliver(waiter, ClassicAnswer::Join(answer));
            }
            ClassicGroupState::Stable if unchanged && !is_leader => {
                let answer = join_answer(g, &member_id);
                self.deliver(waiter, ClassicAnswer::Join(answer));
            }
            ClassicGroupState::CompletingRebalance | ClassicGroupState::Stable => {
                self.update_member_and_rebalance(config, &group_id, request, waiter, now_ms, out)
            }
            ClassicGroupState::Empty | ClassicGroupState::Dead => fail(
                self,
                code(ErrorCode::UnknownMemberId),
                "the group has no members".into(),
            ),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn add_member_and_rebalance(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        member_id: String,
        request: JoinGroupRequest,
        waiter: WaiterId,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let rebalance_timeout_ms = if request.rebalance_timeout_ms > 0 {
            request.rebalance_timeout_ms
        } else {
            request.session_timeout_ms
        };
        if g.members.is_empty() {
            g.protocol_type = Some(request.protocol_type.clone());
        }
        g.members.insert(
            member_id.clone(),
            ClassicMember {
                member_id: member_id.clone(),
                client_id: request.client_id,
                client_host: request.client_host,
                rebalance_timeout_ms,
                session_timeout_ms: request.session_timeout_ms,
                protocol_type: request.protocol_type,
                protocols: request.protocols,
                assignment: Bytes::new(),
                awaiting_join: Some(waiter),
                awaiting_sync: None,
                session_deadline_ms: now_ms + i64::from(request.session_timeout_ms),
            },
        );
        if g.leader_id.is_none() {
            g.leader_id = Some(member_id.clone());
        }
        if g.state == ClassicGroupState::PreparingRebalance
            && g.initial_delay_remaining_ms.is_some()
        {
            g.new_member_added = true;
        }
        tracing::debug!(group = %group_id, member = %member_id, "a member joined the classic group");
        self.maybe_prepare_rebalance(config, group_id, now_ms, out);
        self.maybe_complete_join(config, group_id, now_ms, out);
    }

    fn update_member_and_rebalance(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        request: JoinGroupRequest,
        waiter: WaiterId,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let Some(m) = g.members.get_mut(&request.member_id) else {
            return;
        };
        m.protocols = request.protocols;
        m.protocol_type = request.protocol_type;
        m.session_timeout_ms = request.session_timeout_ms;
        if request.rebalance_timeout_ms > 0 {
            m.rebalance_timeout_ms = request.rebalance_timeout_ms;
        }
        m.client_host = request.client_host;
        m.session_deadline_ms = now_ms + i64::from(request.session_timeout_ms);
        let replaced = m.awaiting_join.replace(waiter);
        if let Some(old) = replaced {
            self.deliver(
                old,
                ClassicAnswer::Join(JoinGroupResponse::error(
                    code(ErrorCode::RebalanceInProgress),
                    &request.member_id,
                )),
            );
        }
        self.maybe_prepare_rebalance(config, group_id, now_ms, out);
        self.maybe_complete_join(config, group_id, now_ms, out);
    }

    fn maybe_prepare_rebalance(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let can = self.groups.get(group_id).is_some_and(|g| {
            matches!(
                g.state,
                ClassicGroupState::Empty
                    | ClassicGroupState::Stable
                    | ClassicGroupState::CompletingRebalance
            )
        });
        if can {
            self.prepare_rebalance(config, group_id, now_ms, out);
        }
    }

    /// Kafka's `prepareRebalance`: to PreparingRebalance, with the initial delay when the group
    /// was empty, else the group's rebalance timeout; pending SyncGroups are told to rejoin.
    fn prepare_rebalance(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let mut told = Vec::new();
        if g.state == ClassicGroupState::CompletingRebalance {
            for m in g.members.values_mut() {
                m.assignment = Bytes::new();
                if let Some(w) = m.awaiting_sync.take() {
                    told.push(w);
                }
            }
        }
        g.pending_sync.clear();
        g.sync_deadline_ms = None;
        let was_empty = g.state == ClassicGroupState::Empty;
        g.state = ClassicGroupState::PreparingRebalance;
        let timeout = g.rebalance_timeout_ms();
        if was_empty {
            let delay = config
                .classic_initial_rebalance_delay_ms
                .min(timeout)
                .max(0);
            g.join_deadline_ms = Some(now_ms + delay);
            g.initial_delay_remaining_ms = Some((timeout - delay).max(0));
            g.new_member_added = false;
        } else {
            g.join_deadline_ms = Some(now_ms + timeout);
            g.initial_delay_remaining_ms = None;
        }
        tracing::info!(group = %group_id, generation = g.generation_id, members = g.members.len(), "classic group rebalancing");
        for w in told {
            self.deliver(
                w,
                ClassicAnswer::Sync(SyncGroupResponse::error(code(
                    ErrorCode::RebalanceInProgress,
                ))),
            );
        }
        self.maybe_complete_join(config, group_id, now_ms, out);
    }

    /// Completes the join phase early when every member has rejoined (not during the initial
    /// delay, which always runs its course).
    fn maybe_complete_join(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let ready = self.groups.get(group_id).is_some_and(|g| {
            g.state == ClassicGroupState::PreparingRebalance
                && g.initial_delay_remaining_ms.is_none()
                && g.all_joined()
        });
        if ready {
            self.complete_join(config, group_id, now_ms, out);
        }
    }

    /// Kafka's `onCompleteJoin`: members that did not rejoin are removed, the next generation
    /// starts (CompletingRebalance, or Empty without members), and every member gets its
    /// JoinGroup answer, the leader with everyone's metadata.
    fn complete_join(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let gone: Vec<String> = g
            .members
            .values()
            .filter(|m| m.awaiting_join.is_none())
            .map(|m| m.member_id.clone())
            .collect();
        for id in &gone {
            tracing::info!(group = %group_id, member = %id, "removing a member that did not rejoin within the rebalance timeout");
            g.members.remove(id);
        }
        if g.leader_id
            .as_ref()
            .is_none_or(|l| !g.members.contains_key(l))
        {
            g.leader_id = g.members.keys().next().cloned();
        }
        g.join_deadline_ms = None;
        g.initial_delay_remaining_ms = None;
        g.new_member_added = false;
        g.generation_id += 1;
        if g.members.is_empty() {
            g.protocol_name = None;
            g.state = ClassicGroupState::Empty;
            tracing::info!(group = %group_id, generation = g.generation_id, "classic group is empty");
            Self::store(config, g, now_ms, out);
            return;
        }
        g.protocol_name = g.select_protocol();
        g.state = ClassicGroupState::CompletingRebalance;
        g.pending_sync = g.members.keys().cloned().collect();
        g.sync_deadline_ms = Some(now_ms + g.rebalance_timeout_ms());
        tracing::info!(group = %group_id, generation = g.generation_id, members = g.members.len(), protocol = ?g.protocol_name, "classic group joined");
        let mut answers = Vec::new();
        let ids: Vec<String> = g.members.keys().cloned().collect();
        for id in ids {
            let answer = join_answer(g, &id);
            if let Some(m) = g.members.get_mut(&id) {
                m.restart_session(now_ms);
                if let Some(w) = m.awaiting_join.take() {
                    answers.push((w, answer));
                }
            }
        }
        for (w, a) in answers {
            self.deliver(w, ClassicAnswer::Join(a));
        }
    }

    // ---------------------------------------------------------------------------------------
    // SyncGroup

    /// SyncGroup of a valid group id: answers `waiter` now (errors, Stable) or once the
    /// leader's assignment arrives.
    pub fn sync(
        &mut self,
        config: &GroupConfig,
        request: SyncGroupRequest,
        waiter: WaiterId,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let result = self.check_member(
            &request.group_id,
            &request.member_id,
            request.group_instance_id.as_deref(),
            request.generation_id,
        );
        if let Err(e) = result {
            return self.deliver(waiter, ClassicAnswer::Sync(SyncGroupResponse::error(e)));
        }
        let Some(g) = self.groups.get_mut(&request.group_id) else {
            return;
        };
        let type_ok = request
            .protocol_type
            .as_ref()
            .is_none_or(|t| g.protocol_type.as_ref() == Some(t));
        let name_ok = request
            .protocol_name
            .as_ref()
            .is_none_or(|n| g.protocol_name.as_ref() == Some(n));
        if !type_ok || !name_ok {
            return self.deliver(
                waiter,
                ClassicAnswer::Sync(SyncGroupResponse::error(INCONSISTENT_GROUP_PROTOCOL)),
            );
        }
        let member_id = request.member_id.clone();
        match g.state {
            ClassicGroupState::Empty | ClassicGroupState::Dead => self.deliver(
                waiter,
                ClassicAnswer::Sync(SyncGroupResponse::error(code(ErrorCode::UnknownMemberId))),
            ),
            ClassicGroupState::PreparingRebalance => self.deliver(
                waiter,
                ClassicAnswer::Sync(SyncGroupResponse::error(code(
                    ErrorCode::RebalanceInProgress,
                ))),
            ),
            ClassicGroupState::Stable => {
                g.pending_sync.remove(&member_id);
                let answer = g.members.get_mut(&member_id).map(|m| {
                    m.restart_session(now_ms);
                    SyncGroupResponse::assigned(&g.protocol_type, &g.protocol_name, &m.assignment)
                });
                if g.pending_sync.is_empty() {
                    g.sync_deadline_ms = None;
                }
                if let Some(a) = answer {
                    self.deliver(waiter, ClassicAnswer::Sync(a));
                }
            }
            ClassicGroupState::CompletingRebalance => {
                g.pending_sync.remove(&member_id);
                let mut replaced = None;
                if let Some(m) = g.members.get_mut(&member_id) {
                    m.restart_session(now_ms);
                    replaced = m.awaiting_sync.replace(waiter);
                }
                if let Some(old) = replaced {
                    self.deliver(
                        old,
                        ClassicAnswer::Sync(SyncGroupResponse::error(code(
                            ErrorCode::RebalanceInProgress,
                        ))),
                    );
                }
                let Some(g) = self.groups.get_mut(&request.group_id) else {
                    return;
                };
                if g.leader_id.as_deref() != Some(member_id.as_str()) {
                    return;
                }
                let mut given: BTreeMap<String, Bytes> = request.assignments.into_iter().collect();
                for m in g.members.values_mut() {
                    m.assignment = given.remove(&m.member_id).unwrap_or_default();
                }
                g.state = ClassicGroupState::Stable;
                if g.pending_sync.is_empty() {
                    g.sync_deadline_ms = None;
                }
                tracing::info!(group = %request.group_id, generation = g.generation_id, "classic group stable: the leader's assignment is out");
                Self::store(config, g, now_ms, out);
                let mut answers = Vec::new();
                for m in g.members.values_mut() {
                    if let Some(w) = m.awaiting_sync.take() {
                        answers.push((
                            w,
                            SyncGroupResponse::assigned(
                                &g.protocol_type,
                                &g.protocol_name,
                                &m.assignment,
                            ),
                        ));
                    }
                }
                for (w, a) in answers {
                    self.deliver(w, ClassicAnswer::Sync(a));
                }
            }
        }
    }

    /// The checks SyncGroup and Heartbeat share: the group, the member and the generation.
    fn check_member(
        &self,
        group_id: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation_id: i32,
    ) -> Result<(), i16> {
        if instance_id.is_some() {
            return Err(UNSUPPORTED_VERSION);
        }
        let Some(g) = self.groups.get(group_id) else {
            return Err(code(ErrorCode::UnknownMemberId));
        };
        if g.state == ClassicGroupState::Dead {
            return Err(code(ErrorCode::CoordinatorNotAvailable));
        }
        if !g.members.contains_key(member_id) {
            return Err(code(ErrorCode::UnknownMemberId));
        }
        if generation_id != g.generation_id {
            return Err(code(ErrorCode::IllegalGeneration));
        }
        Ok(())
    }

    // ---------------------------------------------------------------------------------------
    // Heartbeat and LeaveGroup

    /// Heartbeat of a valid group id: Kafka's error code.
    pub fn heartbeat(&mut self, request: &HeartbeatRequest, now_ms: i64) -> i16 {
        if let Err(e) = self.check_member(
            &request.group_id,
            &request.member_id,
            request.group_instance_id.as_deref(),
            request.generation_id,
        ) {
            return e;
        }
        let Some(g) = self.groups.get_mut(&request.group_id) else {
            return code(ErrorCode::UnknownMemberId);
        };
        let state = g.state;
        if let Some(m) = g.members.get_mut(&request.member_id) {
            m.restart_session(now_ms);
        }
        match state {
            ClassicGroupState::PreparingRebalance => code(ErrorCode::RebalanceInProgress),
            ClassicGroupState::CompletingRebalance | ClassicGroupState::Stable => 0,
            ClassicGroupState::Empty | ClassicGroupState::Dead => code(ErrorCode::UnknownMemberId),
        }
    }

    /// LeaveGroup of a valid group id.
    pub fn leave(
        &mut self,
        config: &GroupConfig,
        request: &LeaveGroupRequest,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> LeaveGroupResponse {
        if !self.groups.contains_key(&request.group_id) {
            return LeaveGroupResponse {
                error_code: code(ErrorCode::UnknownMemberId),
                members: request
                    .members
                    .iter()
                    .map(|m| {
                        (
                            m.member_id.clone(),
                            m.group_instance_id.clone(),
                            code(ErrorCode::UnknownMemberId),
                        )
                    })
                    .collect(),
            };
        }
        let mut members = Vec::with_capacity(request.members.len());
        for leaving in &request.members {
            let error = if leaving.group_instance_id.is_some() && leaving.member_id.is_empty() {
                code(ErrorCode::UnknownMemberId)
            } else {
                let (pending, member) = self
                    .groups
                    .get_mut(&request.group_id)
                    .map(|g| {
                        (
                            g.pending_members.remove(&leaving.member_id).is_some(),
                            g.members.contains_key(&leaving.member_id),
                        )
                    })
                    .unwrap_or_default();
                match (pending, member) {
                    (true, _) => {
                        self.maybe_complete_join(config, &request.group_id, now_ms, out);
                        0
                    }
                    (false, true) => {
                        tracing::info!(group = %request.group_id, member = %leaving.member_id, "a member left the classic group");
                        self.remove_member_and_update(
                            config,
                            &request.group_id,
                            &leaving.member_id,
                            now_ms,
                            out,
                        );
                        0
                    }
                    _ => code(ErrorCode::UnknownMemberId),
                }
            };
            members.push((
                leaving.member_id.clone(),
                leaving.group_instance_id.clone(),
                error,
            ));
        }
        LeaveGroupResponse {
            error_code: 0,
            members,
        }
    }

    /// Kafka's `removeMemberAndUpdateClassicGroup`: the member goes (its waiting requests are
    /// told UNKNOWN_MEMBER_ID) and the group rebalances, or completes the rebalance it was
    /// waiting on the member for.
    fn remove_member_and_update(
        &mut self,
        config: &GroupConfig,
        group_id: &str,
        member_id: &str,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) {
        let Some(g) = self.groups.get_mut(group_id) else {
            return;
        };
        let Some(m) = g.members.remove(member_id) else {
            return;
        };
        g.pending_sync.remove(member_id);
        if g.leader_id.as_deref() == Some(member_id) {
            g.leader_id = g
                .members
                .values()
                .find(|m| m.awaiting_join.is_some())
                .or_else(|| g.members.values().next())
                .map(|m| m.member_id.clone());
        }
        let state = g.state;
        if let Some(w) = m.awaiting_join {
            self.deliver(
                w,
                ClassicAnswer::Join(JoinGroupResponse::error(
                    code(ErrorCode::UnknownMemberId),
                    member_id,
                )),
            );
        }
        if let Some(w) = m.awaiting_sync {
            self.deliver(
                w,
                ClassicAnswer::Sync(SyncGroupResponse::error(code(ErrorCode::UnknownMemberId))),
            );
        }
        match state {
            ClassicGroupState::Empty | ClassicGroupState::Dead => {}
            ClassicGroupState::PreparingRebalance => {
                self.maybe_complete_join(config, group_id, now_ms, out)
            }
            ClassicGroupState::Stable | ClassicGroupState::CompletingRebalance => {
                self.prepare_rebalance(config, group_id, now_ms, out)
            }
        }
    }

    // ---------------------------------------------------------------------------------------
    // Timers

    /// The earliest deadline of any classic group.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.groups
            .values()
            .flat_map(|g| {
                let sessions = g
                    .members
                    .values()
                    .filter(|m| m.awaiting_join.is_none() && m.awaiting_sync.is_none())
                    .map(|m| m.session_deadline_ms);
                g.pending_members
                    .values()
                    .copied()
                    .chain(sessions)
                    .chain(g.join_deadline_ms)
                    .chain(g.sync_deadline_ms.filter(|_| !g.pending_sync.is_empty()))
                    .collect::<Vec<_>>()
            })
            .min()
    }

    /// Runs every deadline passed by `now_ms`: pending members that never joined, join phases
    /// (the initial delay extended while members keep arriving), members that did not sync in
    /// time, and expired sessions. Returns the groups touched.
    pub fn expire(
        &mut self,
        config: &GroupConfig,
        now_ms: i64,
        out: &mut Vec<Record>,
    ) -> Vec<String> {
        let mut touched = Vec::new();
        let ids: Vec<String> = self.groups.keys().cloned().collect();
        for id in ids {
            let mut hit = false;
            // Pending members that never came back with their id.
            if let Some(g) = self.groups.get_mut(&id) {
                let before = g.pending_members.len();
                g.pending_members.retain(|_, d| *d > now_ms);
                if g.pending_members.len() != before {
                    hit = true;
                    self.maybe_complete_join(config, &id, now_ms, out);
                }
            }
            // The join phase.
            if let Some(g) = self.groups.get_mut(&id)
                && g.state == ClassicGroupState::PreparingRebalance
                && g.join_deadline_ms.is_some_and(|d| d <= now_ms)
            {
                hit = true;
                match g.initial_delay_remaining_ms {
                    Some(remaining) if g.new_member_added && remaining > 0 => {
                        let delay = config
                            .classic_initial_rebalance_delay_ms
                            .min(remaining)
                            .max(0);
                        g.new_member_added = false;
                        g.initial_delay_remaining_ms = Some(remaining - delay);
                        g.join_deadline_ms = Some(now_ms + delay);
                    }
                    _ => self.complete_join(config, &id, now_ms, out),
                }
            }
            // Members that did not sync within the rebalance timeout.
            if let Some(g) = self.groups.get_mut(&id)
                && matches!(
                    g.state,
                    ClassicGroupState::CompletingRebalance | ClassicGroupState::Stable
                )
                && g.sync_deadline_ms.is_some_and(|d| d <= now_ms)
            {
                g.sync_deadline_ms = None;
                let late: Vec<String> = std::mem::take(&mut g.pending_sync).into_iter().collect();
                for m in late {
                    hit = true;
                    tracing::info!(group = %id, member = %m, "removing a member that did not send SyncGroup within the rebalance timeout");
                    self.remove_member_and_update(config, &id, &m, now_ms, out);
                }
            }
            // Sessions.
            let expired: Vec<String> = self
                .groups
                .get(&id)
                .map(|g| {
                    g.members
                        .values()
                        .filter(|m| {
                            m.awaiting_join.is_none()
                                && m.awaiting_sync.is_none()
                                && m.session_deadline_ms <= now_ms
                        })
                        .map(|m| m.member_id.clone())
                        .collect()
                })
                .unwrap_or_default();
            for m in expired {
                hit = true;
                tracing::info!(group = %id, member = %m, "a classic group member's session expired");
                self.remove_member_and_update(config, &id, &m, now_ms, out);
            }
            if hit {
                touched.push(id);
            }
        }
        touched
    }
}

/// The JoinGroup answer of `member_id` in `g`'s current generation (the leader's lists every
/// member's metadata for the selected protocol).
fn join_answer(g: &ClassicGroup, member_id: &str) -> JoinGroupResponse {
    let leader = g.leader_id.clone().unwrap_or_default();
    let protocol = g.protocol_name.clone().unwrap_or_default();
    let members = if leader == member_id {
        g.members
            .values()
            .map(|m| JoinGroupMember {
                member_id: m.member_id.clone(),
                group_instance_id: None,
                metadata: m.metadata(&protocol),
            })
            .collect()
    } else {
        Vec::new()
    };
    JoinGroupResponse {
        error_code: 0,
        generation_id: g.generation_id,
        protocol_type: g.protocol_type.clone(),
        protocol_name: g.protocol_name.clone(),
        leader,
        member_id: member_id.to_string(),
        members,
    }
}

impl ClassicGroup {
    /// DescribeGroups of a classic group (the generation as its epoch, the selected protocol as
    /// its assignor; assignments are opaque protocol bytes, so none are listed).
    pub fn describe(&self) -> rill_protocol::proto::DescribedGroup {
        rill_protocol::proto::DescribedGroup {
            error_code: ErrorCode::None as i32,
            error_message: String::new(),
            group_id: self.group_id.clone(),
            group_state: self.state.name().to_string(),
            group_epoch: self.generation_id,
            assignment_epoch: self.generation_id,
            assignor_name: self.protocol_name.clone().unwrap_or_default(),
            members: self
                .members
                .values()
                .map(|m| rill_protocol::proto::GroupMember {
                    member_id: m.member_id.clone(),
                    member_epoch: self.generation_id,
                    client_id: m.client_id.clone(),
                    client_host: m.client_host.clone(),
                    member_state: self.state.name().to_string(),
                    ..Default::default()
                })
                .collect(),
        }
    }
}

impl crate::GroupCoordinatorShard {
    /// JoinGroup: the answer goes to `waiter` through [`take_classic_deliveries`], now or when
    /// the rebalance gets that far. A group id held by a consumer (KIP-848) group with members
    /// is refused (INCONSISTENT_GROUP_PROTOCOL); an empty one gives its id up.
    ///
    /// [`take_classic_deliveries`]: Self::take_classic_deliveries
    pub fn classic_join_group(
        &mut self,
        request: JoinGroupRequest,
        waiter: WaiterId,
        now_ms: i64,
    ) -> crate::CoordinatorResult<()> {
        let mut records = Vec::new();
        let group_id = request.group_id.clone();
        if let Err(e) = self.validate_group_id(&group_id) {
            tracing::debug!(group = %group_id, "JoinGroup refused: {}", e.message);
            self.classic.deliver(
                waiter,
                ClassicAnswer::Join(JoinGroupResponse::error(e.code as i16, &request.member_id)),
            );
            return crate::CoordinatorResult {
                records,
                response: (),
            };
        }
        if let Some(g) = self.groups.group(&group_id) {
            if !g.members.is_empty() {
                tracing::info!(group = %group_id, "JoinGroup refused: the group is a consumer group (KIP-848 protocol) with members");
                self.classic.deliver(
                    waiter,
                    ClassicAnswer::Join(JoinGroupResponse::error(
                        INCONSISTENT_GROUP_PROTOCOL,
                        &request.member_id,
                    )),
                );
                return crate::CoordinatorResult {
                    records,
                    response: (),
                };
            }
            tracing::info!(group = %group_id, "an empty consumer group becomes a classic group");
            self.groups.delete_group(&group_id, &mut records);
        }
        self.classic
            .join(&self.config, request, waiter, now_ms, &mut records);
        self.refresh_empty_since(&group_id, now_ms);
        crate::CoordinatorResult {
            records,
            response: (),
        }
    }

    /// SyncGroup: the answer goes to `waiter` through [`take_classic_deliveries`], now or once
    /// the leader sent the assignment.
    ///
    /// [`take_classic_deliveries`]: Self::take_classic_deliveries
    pub fn classic_sync_group(
        &mut self,
        request: SyncGroupRequest,
        waiter: WaiterId,
        now_ms: i64,
    ) -> crate::CoordinatorResult<()> {
        let mut records = Vec::new();
        if let Err(e) = self.validate_group_id(&request.group_id) {
            self.classic.deliver(
                waiter,
                ClassicAnswer::Sync(SyncGroupResponse::error(e.code as i16)),
            );
        } else {
            self.classic
                .sync(&self.config, request, waiter, now_ms, &mut records);
        }
        crate::CoordinatorResult {
            records,
            response: (),
        }
    }

    /// Heartbeat: Kafka's error code (REBALANCE_IN_PROGRESS tells the member to rejoin).
    pub fn classic_heartbeat(&mut self, request: &HeartbeatRequest, now_ms: i64) -> i16 {
        if let Err(e) = self.validate_group_id(&request.group_id) {
            return e.code as i16;
        }
        self.classic.heartbeat(request, now_ms)
    }

    /// LeaveGroup: the members named leave; the group rebalances without them.
    pub fn classic_leave_group(
        &mut self,
        request: &LeaveGroupRequest,
        now_ms: i64,
    ) -> crate::CoordinatorResult<LeaveGroupResponse> {
        let mut records = Vec::new();
        let response = match self.validate_group_id(&request.group_id) {
            Err(e) => LeaveGroupResponse {
                error_code: e.code as i16,
                members: Vec::new(),
            },
            Ok(()) => self
                .classic
                .leave(&self.config, request, now_ms, &mut records),
        };
        self.refresh_empty_since(&request.group_id, now_ms);
        crate::CoordinatorResult { records, response }
    }

    /// The JoinGroup and SyncGroup answers decided since the last call, for the waiters they
    /// belong to. The broker sends them once the records of the same operation are committed.
    pub fn take_classic_deliveries(&mut self) -> Vec<(WaiterId, ClassicAnswer)> {
        self.classic.take_deliveries()
    }

    /// The state of classic group `group_id`, if it exists.
    pub fn classic_group_state(&self, group_id: &str) -> Option<ClassicGroupState> {
        self.classic.group(group_id).map(|g| g.state)
    }

    /// Before a consumer-group heartbeat: a classic group with members keeps its id
    /// (GROUP_ID_NOT_FOUND, as Kafka answers for a group of the other type).
    pub(crate) fn classic_holds(&self, group_id: &str) -> Result<(), crate::ApiErr> {
        match self.classic.group(group_id) {
            Some(g) if !g.is_empty() => Err(crate::ApiErr {
                code: ErrorCode::GroupIdNotFound,
                message: format!(
                    "group {group_id} is a classic group (JoinGroup/SyncGroup protocol) with {} member(s), not a consumer group: use another group id, or stop its classic members first",
                    g.members.len()
                ),
            }),
            _ => Ok(()),
        }
    }

    /// After an accepted consumer-group heartbeat: an empty classic group of that id gives it
    /// up (its tombstone into `out`).
    pub(crate) fn take_over_classic(&mut self, group_id: &str, out: &mut Vec<Record>) {
        if self.classic.group(group_id).is_some_and(|g| g.is_empty()) {
            tracing::info!(group = %group_id, "an empty classic group becomes a consumer group");
            self.classic.delete(group_id, out);
        }
    }
}

/// A group as Kafka's DescribeGroups (the classic admin API) shows it.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ClassicDescription {
    /// Kafka's error code.
    pub error_code: i16,
    /// Why, when there is an error.
    pub error_message: Option<String>,
    /// The group id.
    pub group_id: String,
    /// The state's name (`Dead` for a group that does not exist).
    pub state: String,
    /// The protocol type (empty for a group with only offsets).
    pub protocol_type: String,
    /// The selected protocol, when one is.
    pub protocol_data: String,
    /// The members.
    pub members: Vec<ClassicMemberDescription>,
}

/// One member in a [`ClassicDescription`].
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct ClassicMemberDescription {
    /// The member id.
    pub member_id: String,
    /// `client.id`.
    pub client_id: String,
    /// The peer address.
    pub client_host: String,
    /// Its metadata for the selected protocol (the consumer's subscription).
    pub metadata: Bytes,
    /// Its assignment (only in `Stable`, as Kafka shows it).
    pub assignment: Bytes,
}

impl crate::GroupCoordinatorShard {
    /// DescribeGroups over Kafka's classic admin API: a classic group with its members'
    /// metadata and assignments (opaque protocol bytes that admin tools decode), a group with
    /// only offsets as `Empty`, an unknown group as `Dead` (GROUP_ID_NOT_FOUND when
    /// `not_found_error`, as Kafka answers from DescribeGroups v6), and a consumer (KIP-848)
    /// group as GROUP_ID_NOT_FOUND: it is not a classic group.
    pub fn classic_describe(&self, group_id: &str, not_found_error: bool) -> ClassicDescription {
        let base = ClassicDescription {
            group_id: group_id.to_string(),
            ..Default::default()
        };
        if let Err(e) = self.validate_group_id(group_id) {
            return ClassicDescription {
                error_code: e.code as i16,
                error_message: Some(e.message),
                state: ClassicGroupState::Dead.name().into(),
                ..base
            };
        }
        if let Some(g) = self.classic.group(group_id) {
            let stable = g.state == ClassicGroupState::Stable;
            let protocol = g.protocol_name.clone().unwrap_or_default();
            return ClassicDescription {
                state: g.state.name().into(),
                protocol_type: g.protocol_type.clone().unwrap_or_default(),
                protocol_data: if stable {
                    protocol.clone()
                } else {
                    String::new()
                },
                members: g
                    .members
                    .values()
                    .map(|m| ClassicMemberDescription {
                        member_id: m.member_id.clone(),
                        client_id: m.client_id.clone(),
                        client_host: m.client_host.clone(),
                        metadata: if stable {
                            m.metadata(&protocol)
                        } else {
                            Bytes::new()
                        },
                        assignment: if stable {
                            m.assignment.clone()
                        } else {
                            Bytes::new()
                        },
                    })
                    .collect(),
                ..base
            };
        }
        if self.groups.group(group_id).is_some() {
            return ClassicDescription {
                error_code: ErrorCode::GroupIdNotFound as i16,
                error_message: Some(format!(
                    "group {group_id} is a consumer group (KIP-848 protocol), not a classic group"
                )),
                state: ClassicGroupState::Dead.name().into(),
                ..base
            };
        }
        if self.offsets.has_offsets(group_id) {
            return ClassicDescription {
                state: ClassicGroupState::Empty.name().into(),
                ..base
            };
        }
        ClassicDescription {
            error_code: if not_found_error {
                ErrorCode::GroupIdNotFound as i16
            } else {
                0
            },
            error_message: not_found_error.then(|| format!("group {group_id} does not exist")),
            state: ClassicGroupState::Dead.name().into(),
            ..base
        }
    }
}
