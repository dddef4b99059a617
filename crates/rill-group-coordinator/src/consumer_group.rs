//! A consumer group as its records build it (Kafka's `ConsumerGroup` and
//! `ConsumerGroupMember`): epochs, subscribed topic metadata, members, target assignment, and
//! which member owns each partition now.

use std::collections::{BTreeMap, HashMap};

use rill_protocol::TopicPartition;
use rill_protocol::proto::{TopicPartitions, TopicPartitionsList};

use crate::assignor::Assignment;
use crate::records::{
    ConsumerGroupCurrentMemberAssignmentValue, ConsumerGroupMemberMetadataValue,
    TopicPartitionsValue,
};

/// Epoch of a member that left for good (and of a leave request).
pub const LEAVE_GROUP_MEMBER_EPOCH: i32 = -1;
/// Epoch of a static member that left for a restart; it keeps its assignment until its session
/// times out.
pub const LEAVE_GROUP_STATIC_MEMBER_EPOCH: i32 = -2;

/// Where a member is in reconciling towards its target assignment (Kafka's `MemberState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum MemberState {
    /// The member owns its target assignment (or all of it it can get).
    #[default]
    Stable,
    /// The member must give partitions up before it moves to the next epoch.
    UnrevokedPartitions,
    /// The member waits for other members to give up partitions of its target.
    UnreleasedPartitions,
}

impl MemberState {
    /// The record value (Kafka's numbering).
    pub fn value(self) -> i32 {
        match self {
            MemberState::Stable => 0,
            MemberState::UnrevokedPartitions => 1,
            MemberState::UnreleasedPartitions => 2,
        }
    }

    /// From a record value. An unknown state (a newer writer) reads as unrevoked partitions:
    /// the member must report what it owns before it gets anything new.
    pub fn from_value(value: i32) -> MemberState {
        match value {
            0 => MemberState::Stable,
            2 => MemberState::UnreleasedPartitions,
            _ => MemberState::UnrevokedPartitions,
        }
    }

    /// The name DescribeGroups shows.
    pub fn name(self) -> &'static str {
        match self {
            MemberState::Stable => "Stable",
            MemberState::UnrevokedPartitions => "UnrevokedPartitions",
            MemberState::UnreleasedPartitions => "UnreleasedPartitions",
        }
    }
}

/// The part of a member the current assignment record holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberAssignmentState {
    /// The member's epoch.
    pub member_epoch: i32,
    /// Its epoch before the last bump.
    pub previous_member_epoch: i32,
    /// Its reconciliation state.
    pub state: MemberState,
    /// Partitions it owns.
    pub assigned: Assignment,
    /// Partitions it still owns but must give up.
    pub pending_revocation: Assignment,
}

/// The part of a member the member metadata record holds.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberMetadata {
    /// `group.instance.id`.
    pub instance_id: Option<String>,
    /// `client.rack`.
    pub rack_id: Option<String>,
    /// `client.id`.
    pub client_id: String,
    /// The member's peer address.
    pub client_host: String,
    /// Topics subscribed by name, sorted and without duplicates.
    pub subscribed_topic_names: Vec<String>,
    /// Topics subscribed by regular expression (never `Some("")`).
    pub subscribed_topic_regex: Option<String>,
    /// How long the member may take to revoke partitions.
    pub rebalance_timeout_ms: i32,
    /// The server assignor it asked for.
    pub server_assignor: Option<String>,
}

/// One member of a consumer group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerGroupMember {
    /// The member id.
    pub member_id: String,
    /// Subscription and client details.
    pub metadata: MemberMetadata,
    /// Epoch, state and owned partitions.
    pub assignment: MemberAssignmentState,
}

impl ConsumerGroupMember {
    /// A member not yet in the group: epoch 0, nothing owned.
    pub fn new(member_id: String) -> Self {
        ConsumerGroupMember {
            member_id,
            ..Default::default()
        }
    }

    /// Whether the member owns its target at `target_epoch` (Kafka's `isReconciledTo`).
    pub fn is_reconciled_to(&self, target_epoch: i32) -> bool {
        self.assignment.state == MemberState::Stable && self.assignment.member_epoch == target_epoch
    }

    /// Whether the member owns `topic`-`partition`, assigned or pending revocation.
    pub fn owns(&self, topic: &str, partition: i32) -> bool {
        let has = |a: &Assignment| a.get(topic).is_some_and(|p| p.contains(&partition));
        has(&self.assignment.assigned) || has(&self.assignment.pending_revocation)
    }

    /// Assigned and pending revocation together.
    pub fn owned(&self) -> Assignment {
        let mut all = self.assignment.assigned.clone();
        for (t, ps) in &self.assignment.pending_revocation {
            all.entry(t.clone()).or_default().extend(ps.iter().copied());
        }
        all
    }
}

impl MemberMetadata {
    /// The record value.
    pub fn to_value(&self) -> ConsumerGroupMemberMetadataValue {
        ConsumerGroupMemberMetadataValue {
            instance_id: self.instance_id.clone(),
            rack_id: self.rack_id.clone(),
            client_id: self.client_id.clone(),
            client_host: self.client_host.clone(),
            subscribed_topic_names: self.subscribed_topic_names.clone(),
            subscribed_topic_regex: self.subscribed_topic_regex.clone(),
            rebalance_timeout_ms: self.rebalance_timeout_ms,
            server_assignor: self.server_assignor.clone(),
        }
    }

    /// From the record value.
    pub fn from_value(v: &ConsumerGroupMemberMetadataValue) -> Self {
        let mut names = v.subscribed_topic_names.clone();
        names.sort();
        names.dedup();
        MemberMetadata {
            instance_id: v.instance_id.clone(),
            rack_id: v.rack_id.clone(),
            client_id: v.client_id.clone(),
            client_host: v.client_host.clone(),
            subscribed_topic_names: names,
            subscribed_topic_regex: v.subscribed_topic_regex.clone().filter(|r| !r.is_empty()),
            rebalance_timeout_ms: v.rebalance_timeout_ms,
            server_assignor: v.server_assignor.clone(),
        }
    }
}

impl MemberAssignmentState {
    /// The record value.
    pub fn to_value(&self) -> ConsumerGroupCurrentMemberAssignmentValue {
        ConsumerGroupCurrentMemberAssignmentValue {
            member_epoch: self.member_epoch,
            previous_member_epoch: self.previous_member_epoch,
            state: self.state.value(),
            assigned_partitions: assignment_to_value(&self.assigned),
            partitions_pending_revocation: assignment_to_value(&self.pending_revocation),
        }
    }

    /// From the record value.
    pub fn from_value(v: &ConsumerGroupCurrentMemberAssignmentValue) -> Self {
        MemberAssignmentState {
            member_epoch: v.member_epoch,
            previous_member_epoch: v.previous_member_epoch,
            state: MemberState::from_value(v.state),
            assigned: assignment_from_value(&v.assigned_partitions),
            pending_revocation: assignment_from_value(&v.partitions_pending_revocation),
        }
    }
}

/// An assignment as record partitions, sorted.
pub fn assignment_to_value(a: &Assignment) -> Vec<TopicPartitionsValue> {
    a.iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(t, p)| TopicPartitionsValue {
            topic: t.clone(),
            partitions: p.iter().copied().collect(),
        })
        .collect()
}

/// An assignment from record partitions.
pub fn assignment_from_value(v: &[TopicPartitionsValue]) -> Assignment {
    let mut a = Assignment::new();
    for tp in v {
        if tp.partitions.is_empty() {
            continue;
        }
        a.entry(tp.topic.clone())
            .or_default()
            .extend(tp.partitions.iter().copied());
    }
    a
}

/// An assignment as API partitions, sorted.
pub fn assignment_to_proto(a: &Assignment) -> Vec<TopicPartitions> {
    a.iter()
        .filter(|(_, p)| !p.is_empty())
        .map(|(t, p)| TopicPartitions {
            topic: t.clone(),
            partitions: p.iter().copied().collect(),
        })
        .collect()
}

/// An assignment from API partitions (duplicates merged).
pub fn assignment_from_proto(list: &TopicPartitionsList) -> Assignment {
    let mut a = Assignment::new();
    for tp in &list.topics {
        if tp.partitions.is_empty() {
            continue;
        }
        a.entry(tp.topic.clone())
            .or_default()
            .extend(tp.partitions.iter().copied());
    }
    a
}

/// Whether every partition of `owned` is in `of`.
pub fn is_subset(owned: &Assignment, of: &Assignment) -> bool {
    owned.iter().all(|(t, ps)| {
        ps.is_empty()
            || of
                .get(t)
                .is_some_and(|have| ps.iter().all(|p| have.contains(p)))
    })
}

/// A subscribed topic as the group last saw it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TopicMetadata {
    /// The topic id.
    pub topic_id: String,
    /// Its number of partitions.
    pub partitions: i32,
}

/// The group states ListGroups and DescribeGroups show.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsumerGroupState {
    /// No members.
    Empty,
    /// The group epoch is ahead of the target assignment.
    Assigning,
    /// Some member does not own its target yet.
    Reconciling,
    /// Every member owns its target.
    Stable,
}

impl ConsumerGroupState {
    /// Kafka's name of the state.
    pub fn name(self) -> &'static str {
        match self {
            ConsumerGroupState::Empty => "Empty",
            ConsumerGroupState::Assigning => "Assigning",
            ConsumerGroupState::Reconciling => "Reconciling",
            ConsumerGroupState::Stable => "Stable",
        }
    }
}

/// A consumer group.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConsumerGroup {
    /// The group id.
    pub group_id: String,
    /// Bumped on every membership, subscription or subscribed topic change.
    pub group_epoch: i32,
    /// The group epoch the target assignment was computed for.
    pub assignment_epoch: i32,
    /// The existing topics the members subscribe to, by name.
    pub subscription_metadata: BTreeMap<String, TopicMetadata>,
    /// Members by id.
    pub members: BTreeMap<String, ConsumerGroupMember>,
    /// Member id by instance id, for static members.
    pub static_members: BTreeMap<String, String>,
    /// The target assignment by member id.
    pub target_assignment: BTreeMap<String, Assignment>,
    /// Which member owns each partition now (assigned or pending revocation). Derived.
    owners: HashMap<TopicPartition, String>,
}

impl ConsumerGroup {
    /// A group with no state yet.
    pub fn new(group_id: String) -> Self {
        ConsumerGroup {
            group_id,
            ..Default::default()
        }
    }

    /// The group's state.
    pub fn state(&self) -> ConsumerGroupState {
        if self.members.is_empty() {
            ConsumerGroupState::Empty
        } else if self.group_epoch > self.assignment_epoch {
            ConsumerGroupState::Assigning
        } else if self
            .members
            .values()
            .any(|m| !m.is_reconciled_to(self.assignment_epoch))
        {
            ConsumerGroupState::Reconciling
        } else {
            ConsumerGroupState::Stable
        }
    }

    /// The member owning `topic`-`partition` now, if any.
    pub fn owner(&self, topic: &str, partition: i32) -> Option<&str> {
        self.owners
            .get(&TopicPartition::new(topic, partition))
            .map(String::as_str)
    }

    /// Creates or updates a member's metadata (replay of a member metadata record).
    pub fn apply_member_metadata(&mut self, member_id: &str, metadata: MemberMetadata) {
        let member = self
            .members
            .entry(member_id.to_string())
            .or_insert_with(|| ConsumerGroupMember::new(member_id.to_string()));
        if let Some(old) = &member.metadata.instance_id
            && self.static_members.get(old).map(String::as_str) == Some(member_id)
        {
            self.static_members.remove(old);
        }
        if let Some(new) = &metadata.instance_id {
            self.static_members
                .insert(new.clone(), member_id.to_string());
        }
        member.metadata = metadata;
    }

    /// Removes a member (replay of a member metadata tombstone).
    pub fn remove_member(&mut self, member_id: &str) {
        self.set_member_assignment(member_id, None);
        if let Some(member) = self.members.remove(member_id)
            && let Some(instance) = &member.metadata.instance_id
            && self.static_members.get(instance).map(String::as_str) == Some(member_id)
        {
            self.static_members.remove(instance);
        }
    }

    /// Sets a member's epoch and owned partitions (replay of a current assignment record; a
    /// tombstone, `None`, clears them).
    pub fn set_member_assignment(&mut self, member_id: &str, state: Option<MemberAssignmentState>) {
        let Some(member) = self.members.get(member_id) else {
            if let Some(state) = state {
                let mut member = ConsumerGroupMember::new(member_id.to_string());
                member.assignment = state;
                self.add_owners(&member);
                self.members.insert(member_id.to_string(), member);
            }
            return;
        };
        let old = member.clone();
        self.remove_owners(&old);
        let new_state = state.unwrap_or_default();
        if let Some(member) = self.members.get_mut(member_id) {
            member.assignment = new_state;
            let member = member.clone();
            self.add_owners(&member);
        }
    }

    fn remove_owners(&mut self, member: &ConsumerGroupMember) {
        for (t, ps) in member
            .assignment
            .assigned
            .iter()
            .chain(member.assignment.pending_revocation.iter())
        {
            for p in ps {
                let tp = TopicPartition::new(t.clone(), *p);
                if self.owners.get(&tp) == Some(&member.member_id) {
                    self.owners.remove(&tp);
                }
            }
        }
    }

    fn add_owners(&mut self, member: &ConsumerGroupMember) {
        for (t, ps) in member
            .assignment
            .assigned
            .iter()
            .chain(member.assignment.pending_revocation.iter())
        {
            for p in ps {
                let tp = TopicPartition::new(t.clone(), *p);
                if let Some(previous) = self.owners.insert(tp.clone(), member.member_id.clone())
                    && previous != member.member_id
                {
                    tracing::warn!(
                        group = %self.group_id,
                        partition = %tp,
                        previous = %previous,
                        member = %member.member_id,
                        "replayed an assignment of a partition another member still owns"
                    );
                }
            }
        }
    }

    /// The server assignor the group uses: the configured one most members ask for (ties: the
    /// earlier in `configured`), else the first configured one.
    pub fn preferred_assignor(&self, configured: &[String]) -> String {
        let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
        for m in self.members.values() {
            if let Some(a) = &m.metadata.server_assignor
                && configured.contains(a)
                && crate::assignor::is_known(a)
            {
                *counts.entry(a.as_str()).or_default() += 1;
            }
        }
        let rank = |name: &str| {
            configured
                .iter()
                .position(|c| c == name)
                .unwrap_or(usize::MAX)
        };
        counts
            .into_iter()
            .max_by(|a, b| {
                a.1.cmp(&b.1)
                    .then_with(|| rank(b.0).cmp(&rank(a.0)))
                    .then_with(|| b.0.cmp(a.0))
            })
            .map(|(name, _)| name.to_string())
            .or_else(|| configured.first().cloned())
            .unwrap_or_else(|| crate::assignor::UNIFORM.to_string())
    }
}
