//! Kafka's server-side `RangeAssignor`: for each topic, its subscribers in order (static members
//! first by instance id, then the others by member id) get contiguous ranges of its partitions,
//! the first `partitions % subscribers` of them one more. Members subscribed to the same
//! co-partitioned topics get the same partition numbers of each (useful for joins).
//!
//! It is sticky in the only way ranges can be: the order is stable, so nothing moves unless the
//! subscribers of a topic or its partition count change, and static members keep their ranges
//! across restarts (their new member ids do not change the order).

use std::cmp::Ordering;
use std::collections::BTreeMap;

use super::{GroupAssignment, GroupSpec, MemberSpec, member_topics};

fn order(a: (&String, &MemberSpec), b: (&String, &MemberSpec)) -> Ordering {
    match (&a.1.instance_id, &b.1.instance_id) {
        (Some(x), Some(y)) => x.cmp(y).then_with(|| a.0.cmp(b.0)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => a.0.cmp(b.0),
    }
}

/// The range assignment of `spec`.
pub fn assign(spec: &GroupSpec) -> GroupAssignment {
    let mut members: Vec<(&String, &MemberSpec)> = spec.members.iter().collect();
    members.sort_by(|a, b| order(*a, *b));

    // Subscribers per topic, in member order.
    let mut subscribers: BTreeMap<&String, (i32, Vec<&String>)> = BTreeMap::new();
    for (id, member) in &members {
        for (topic, partitions) in member_topics(spec, member) {
            subscribers
                .entry(topic)
                .or_insert_with(|| (partitions, Vec::new()))
                .1
                .push(id);
        }
    }

    let mut result: GroupAssignment = spec
        .members
        .keys()
        .map(|id| (id.clone(), BTreeMap::new()))
        .collect();
    for (topic, (partitions, subs)) in subscribers {
        let n = subs.len() as i32;
        if n == 0 || partitions <= 0 {
            continue;
        }
        let quota = partitions / n;
        let mut extra = partitions % n;
        let mut start = 0;
        for id in subs {
            let mut count = quota;
            if extra > 0 {
                count += 1;
                extra -= 1;
            }
            let end = (start + count).min(partitions);
            if start < end
                && let Some(a) = result.get_mut(id)
            {
                a.insert(topic.clone(), (start..end).collect());
            }
            start = end;
        }
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assignor::MemberSpec;

    fn spec(members: &[(&str, Option<&str>, &[&str])], topics: &[(&str, i32)]) -> GroupSpec {
        GroupSpec {
            members: members
                .iter()
                .map(|(id, inst, subs)| {
                    (
                        id.to_string(),
                        MemberSpec {
                            instance_id: inst.map(str::to_string),
                            subscribed_topics: subs.iter().map(|s| s.to_string()).collect(),
                            current: BTreeMap::new(),
                        },
                    )
                })
                .collect(),
            topics: topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
        }
    }

    fn parts(a: &GroupAssignment, m: &str, t: &str) -> Vec<i32> {
        a[m].get(t)
            .map(|s| s.iter().copied().collect())
            .unwrap_or_default()
    }

    #[test]
    fn co_partitioned_ranges() {
        let s = spec(
            &[("m0", None, &["t1", "t2"]), ("m1", None, &["t1", "t2"])],
            &[("t1", 3), ("t2", 3)],
        );
        let a = assign(&s);
        assert_eq!(parts(&a, "m0", "t1"), vec![0, 1]);
        assert_eq!(parts(&a, "m0", "t2"), vec![0, 1]);
        assert_eq!(parts(&a, "m1", "t1"), vec![2]);
        assert_eq!(parts(&a, "m1", "t2"), vec![2]);
    }

    #[test]
    fn static_members_first_by_instance_id() {
        let s = spec(
            &[
                ("a", None, &["t"]),
                ("z", Some("i0"), &["t"]),
                ("y", Some("i1"), &["t"]),
            ],
            &[("t", 6)],
        );
        let a = assign(&s);
        assert_eq!(parts(&a, "z", "t"), vec![0, 1]);
        assert_eq!(parts(&a, "y", "t"), vec![2, 3]);
        assert_eq!(parts(&a, "a", "t"), vec![4, 5]);
    }

    #[test]
    fn heterogeneous_and_missing_topics() {
        let s = spec(
            &[("a", None, &["t1", "gone"]), ("b", None, &["t2"])],
            &[("t1", 2), ("t2", 1)],
        );
        let a = assign(&s);
        assert_eq!(parts(&a, "a", "t1"), vec![0, 1]);
        assert_eq!(parts(&a, "b", "t2"), vec![0]);
        assert!(!a["a"].contains_key("gone"));
        assert_eq!(a.len(), 2);
    }
}
