//! Server-side assignors (Kafka's `ConsumerGroupPartitionAssignor`): from the members'
//! subscriptions and the partition counts of the subscribed topics, the target assignment.
//!
//! Both are deterministic: the same input gives the same output, so a coordinator that computes
//! the target again after a failover gets what its predecessor got.

use std::collections::{BTreeMap, BTreeSet};

pub mod range;
pub mod uniform;

/// Partitions by topic name: what one member owns or should own.
pub type Assignment = BTreeMap<String, BTreeSet<i32>>;

/// The uniform assignor's name (`group.consumer.assignors`).
pub const UNIFORM: &str = "uniform";
/// The range assignor's name (`group.consumer.assignors`).
pub const RANGE: &str = "range";

/// What an assignor knows of one member.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberSpec {
    /// `group.instance.id` of a static member (the range assignor orders static members by it,
    /// so a restarted static member gets its ranges back).
    pub instance_id: Option<String>,
    /// The existing topics the member subscribes to (names and regex matches).
    pub subscribed_topics: BTreeSet<String>,
    /// The member's current target assignment, which sticky assignors keep where they can.
    pub current: Assignment,
}

/// The input of an assignor.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupSpec {
    /// Members by member id.
    pub members: BTreeMap<String, MemberSpec>,
    /// Partition counts of the subscribed topics, by name. A subscribed topic missing here
    /// does not exist and gets no assignment.
    pub topics: BTreeMap<String, i32>,
}

/// The output of an assignor: every member of the spec with its assignment (possibly empty).
pub type GroupAssignment = BTreeMap<String, Assignment>;

/// Runs the assignor named `name`, `None` when there is no such assignor.
pub fn assign(name: &str, spec: &GroupSpec) -> Option<GroupAssignment> {
    match name {
        UNIFORM => Some(uniform::assign(spec)),
        RANGE => Some(range::assign(spec)),
        _ => None,
    }
}

/// Whether `name` is an assignor this crate implements.
pub fn is_known(name: &str) -> bool {
    matches!(name, UNIFORM | RANGE)
}

/// The topics `member` subscribes to that exist in `spec`, with their partition counts.
pub(crate) fn member_topics<'a>(
    spec: &'a GroupSpec,
    member: &'a MemberSpec,
) -> impl Iterator<Item = (&'a String, i32)> + 'a {
    member
        .subscribed_topics
        .iter()
        .filter_map(|t| spec.topics.get_key_value(t).map(|(k, n)| (k, (*n).max(0))))
}
