//! Properties of the assignors: complete, balanced, sticky, deterministic.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use crate::assignor::{self, Assignment, GroupAssignment, GroupSpec, MemberSpec};

fn homogeneous(members: usize, topics: &[(String, i32)]) -> GroupSpec {
    GroupSpec {
        members: (0..members)
            .map(|i| {
                (
                    format!("m{i:02}"),
                    MemberSpec {
                        instance_id: None,
                        subscribed_topics: topics.iter().map(|(t, _)| t.clone()).collect(),
                        current: Assignment::new(),
                    },
                )
            })
            .collect(),
        topics: topics.iter().cloned().collect(),
    }
}

fn count(a: &Assignment) -> usize {
    a.values().map(|p| p.len()).sum()
}

/// Every partition of a subscribed topic is assigned exactly once, to a subscriber.
fn assert_complete(spec: &GroupSpec, result: &GroupAssignment) {
    assert_eq!(
        result.keys().collect::<Vec<_>>(),
        spec.members.keys().collect::<Vec<_>>()
    );
    let mut owner: BTreeMap<(String, i32), &String> = BTreeMap::new();
    for (m, a) in result {
        for (t, ps) in a {
            assert!(
                spec.members[m].subscribed_topics.contains(t),
                "{m} got {t} it does not subscribe to"
            );
            for p in ps {
                assert!(*p >= 0 && *p < spec.topics[t], "{t}-{p} does not exist");
                assert!(
                    owner.insert((t.clone(), *p), m).is_none(),
                    "{t}-{p} assigned twice"
                );
            }
        }
    }
    for (t, n) in &spec.topics {
        let subscribed = spec
            .members
            .values()
            .any(|m| m.subscribed_topics.contains(t));
        for p in 0..*n {
            assert_eq!(
                owner.contains_key(&(t.clone(), p)),
                subscribed,
                "{t}-{p} assignment vs subscription"
            );
        }
    }
}

/// Members with identical subscriptions differ by at most one partition.
fn assert_balanced(spec: &GroupSpec, result: &GroupAssignment) {
    let mut by_subscription: BTreeMap<&BTreeSet<String>, Vec<usize>> = BTreeMap::new();
    for (m, s) in &spec.members {
        by_subscription
            .entry(&s.subscribed_topics)
            .or_default()
            .push(count(&result[m]));
    }
    for counts in by_subscription.values() {
        let max = counts.iter().max().unwrap();
        let min = counts.iter().min().unwrap();
        assert!(max - min <= 1, "unbalanced: {counts:?}");
    }
}

fn with_current(mut spec: GroupSpec, result: &GroupAssignment) -> GroupSpec {
    for (m, s) in spec.members.iter_mut() {
        s.current = result.get(m).cloned().unwrap_or_default();
    }
    spec
}

fn moved(before: &GroupAssignment, after: &GroupAssignment) -> usize {
    let owner = |a: &GroupAssignment| -> BTreeMap<(String, i32), String> {
        a.iter()
            .flat_map(|(m, a)| {
                a.iter()
                    .flat_map(move |(t, ps)| ps.iter().map(move |p| ((t.clone(), *p), m.clone())))
            })
            .collect()
    };
    let b = owner(before);
    let a = owner(after);
    b.iter()
        .filter(|(k, m)| a.get(*k).is_some_and(|n| n != *m))
        .count()
}

fn topics_strategy() -> impl Strategy<Value = Vec<(String, i32)>> {
    prop::collection::vec(1i32..20, 1..4).prop_map(|ns| {
        ns.into_iter()
            .enumerate()
            .map(|(i, n)| (format!("t{i}"), n))
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn uniform_homogeneous_complete_balanced_sticky(members in 1usize..9, topics in topics_strategy()) {
        let spec = homogeneous(members, &topics);
        let first = assignor::uniform::assign(&spec);
        assert_complete(&spec, &first);
        assert_balanced(&spec, &first);
        prop_assert_eq!(&assignor::uniform::assign(&spec), &first, "deterministic");
        let total: usize = topics.iter().map(|(_, n)| *n as usize).sum();

        // Same input again with its own result as current: nothing moves.
        let again = assignor::uniform::assign(&with_current(spec.clone(), &first));
        prop_assert_eq!(&again, &first);

        // One member joins: it takes about its share, nothing else moves.
        let mut grown = with_current(homogeneous(members + 1, &topics), &first);
        grown.members.get_mut(&format!("m{members:02}")).unwrap().current.clear();
        let after_join = assignor::uniform::assign(&grown);
        assert_complete(&grown, &after_join);
        assert_balanced(&grown, &after_join);
        let limit = total.div_ceil(members + 1);
        prop_assert!(moved(&first, &after_join) <= limit, "moved {} > {}", moved(&first, &after_join), limit);

        // One member leaves: only its partitions move.
        if members > 1 {
            let gone = "m00".to_string();
            let mut shrunk = with_current(spec.clone(), &first);
            shrunk.members.remove(&gone);
            let after_leave = assignor::uniform::assign(&shrunk);
            assert_complete(&shrunk, &after_leave);
            assert_balanced(&shrunk, &after_leave);
            for (m, a) in &after_leave {
                for (t, ps) in &first[m] {
                    for p in ps {
                        prop_assert!(a.get(t).is_some_and(|x| x.contains(p)), "{} lost {}-{}", m, t, p);
                    }
                }
            }
        }
    }

    #[test]
    fn uniform_heterogeneous_complete_and_balanced(
        topics in topics_strategy(),
        subs in prop::collection::vec(prop::collection::btree_set(0usize..4, 0..4), 1..8),
        churn in prop::collection::vec(prop::collection::btree_set(0usize..4, 0..4), 0..3),
    ) {
        let make = |subs: &[BTreeSet<usize>]| GroupSpec {
            members: subs
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    (
                        format!("m{i}"),
                        MemberSpec {
                            instance_id: None,
                            // Index 3 may be a topic that does not exist.
                            subscribed_topics: s.iter().map(|t| format!("t{t}")).collect(),
                            current: Assignment::new(),
                        },
                    )
                })
                .collect(),
            topics: topics.iter().cloned().collect(),
        };
        let spec = make(&subs);
        let first = assignor::uniform::assign(&spec);
        assert_complete(&spec, &first);
        assert_balanced(&spec, &first);
        // Members change subscriptions: still complete and balanced from the old assignment.
        let mut subs2 = subs.clone();
        for (i, s) in churn.into_iter().enumerate() {
            if i < subs2.len() {
                subs2[i] = s;
            } else {
                subs2.push(s);
            }
        }
        let spec2 = with_current(make(&subs2), &first);
        let second = assignor::uniform::assign(&spec2);
        assert_complete(&spec2, &second);
        assert_balanced(&spec2, &second);
    }

    #[test]
    fn range_complete_contiguous_balanced(
        members in 1usize..8,
        topics in topics_strategy(),
        statics in prop::collection::vec(any::<bool>(), 8),
    ) {
        let mut spec = homogeneous(members, &topics);
        for (i, m) in spec.members.values_mut().enumerate() {
            if statics[i] {
                m.instance_id = Some(format!("i{}", 9 - i));
            }
        }
        let result = assignor::range::assign(&spec);
        assert_complete(&spec, &result);
        prop_assert_eq!(&assignor::range::assign(&spec), &result);
        for (t, _) in &topics {
            let counts: Vec<usize> = result.values().map(|a| a.get(t).map_or(0, |p| p.len())).collect();
            let max = counts.iter().max().unwrap();
            let min = counts.iter().min().unwrap();
            prop_assert!(max - min <= 1);
            for a in result.values() {
                if let Some(ps) = a.get(t) {
                    let v: Vec<i32> = ps.iter().copied().collect();
                    prop_assert_eq!(v.last().unwrap() - v[0] + 1, v.len() as i32, "contiguous");
                }
            }
        }
    }
}

#[test]
fn uniform_chain_moves_balance_heterogeneous_groups() {
    // b (t1 only) has 3, a (t1, t2) 2, c (t2 only) 1: only a chain b→a→c balances it.
    let mk = |subs: &[&str], current: &[(&str, &[i32])]| MemberSpec {
        instance_id: None,
        subscribed_topics: subs.iter().map(|s| s.to_string()).collect(),
        current: current
            .iter()
            .map(|(t, ps)| (t.to_string(), ps.iter().copied().collect()))
            .collect(),
    };
    let spec = GroupSpec {
        members: [
            (
                "a".to_string(),
                mk(&["t1", "t2"], &[("t1", &[0]), ("t2", &[0])]),
            ),
            ("b".to_string(), mk(&["t1"], &[("t1", &[1, 2, 3])])),
            ("c".to_string(), mk(&["t2"], &[("t2", &[1])])),
        ]
        .into_iter()
        .collect(),
        topics: [("t1".to_string(), 4), ("t2".to_string(), 2)]
            .into_iter()
            .collect(),
    };
    let result = assignor::uniform::assign(&spec);
    assert_complete(&spec, &result);
    let counts: Vec<usize> = result.values().map(count).collect();
    assert_eq!(counts, vec![2, 2, 2]);
}

#[test]
fn uniform_scales() {
    let topics: Vec<(String, i32)> = (0..10).map(|i| (format!("t{i}"), 100)).collect();
    let spec = homogeneous(200, &topics);
    let start = std::time::Instant::now();
    let first = assignor::uniform::assign(&spec);
    let mut grown = with_current(homogeneous(201, &topics), &first);
    grown.members.get_mut("m200").unwrap().current.clear();
    let after = assignor::uniform::assign(&grown);
    assert_balanced(&grown, &after);
    assert!(start.elapsed() < std::time::Duration::from_secs(20));
}
