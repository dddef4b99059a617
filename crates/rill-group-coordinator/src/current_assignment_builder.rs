//! Moves one member from what it owns towards its target assignment (Kafka's
//! `CurrentAssignmentBuilder`), without ever giving it a partition another member still owns.
//!
//! - STABLE at an older epoch: keep `owned ∩ target`; partitions no longer in the target must
//!   be revoked first (UNREVOKED_PARTITIONS, epoch unchanged); otherwise take the new
//!   partitions that are free and move to the target epoch (STABLE, or UNRELEASED_PARTITIONS
//!   while some are still owned by others).
//! - UNREVOKED_PARTITIONS: wait until the member reports (in `owned_partitions`) that it gave
//!   the revoked partitions up, then compute again.
//! - UNRELEASED_PARTITIONS: compute again, picking up partitions other members released.

use crate::assignor::Assignment;
use crate::consumer_group::{ConsumerGroupMember, MemberAssignmentState, MemberState};

/// The member's next assignment state. `owned` is what the member reported owning in this
/// heartbeat (`None`: not reported); `owned_by_other(topic, partition)` says whether another
/// member owns a partition now (assigned or pending revocation).
pub fn build(
    member: &ConsumerGroupMember,
    target_epoch: i32,
    target: &Assignment,
    owned: Option<&Assignment>,
    owned_by_other: impl Fn(&str, i32) -> bool,
) -> MemberAssignmentState {
    let current = &member.assignment;
    match current.state {
        MemberState::Stable => {
            if current.member_epoch != target_epoch {
                next(
                    current,
                    current.member_epoch,
                    target_epoch,
                    target,
                    owned,
                    &owned_by_other,
                )
            } else {
                current.clone()
            }
        }
        MemberState::UnrevokedPartitions => {
            if owns_any(owned, &current.pending_revocation) {
                current.clone()
            } else {
                next(
                    current,
                    current.member_epoch,
                    target_epoch,
                    target,
                    owned,
                    &owned_by_other,
                )
            }
        }
        MemberState::UnreleasedPartitions => next(
            current,
            current.member_epoch,
            target_epoch,
            target,
            owned,
            &owned_by_other,
        ),
    }
}

/// Whether the member still owns any of `revoked`, by its report (`None` counts as yes).
fn owns_any(owned: Option<&Assignment>, revoked: &Assignment) -> bool {
    let Some(owned) = owned else {
        return true;
    };
    owned.iter().any(|(t, ps)| {
        revoked
            .get(t)
            .is_some_and(|r| ps.iter().any(|p| r.contains(p)))
    })
}

fn with_epoch(current: &MemberAssignmentState, epoch: i32) -> (i32, i32) {
    if current.member_epoch == epoch {
        (current.member_epoch, current.previous_member_epoch)
    } else {
        (epoch, current.member_epoch)
    }
}

fn next(
    current: &MemberAssignmentState,
    member_epoch: i32,
    target_epoch: i32,
    target: &Assignment,
    owned: Option<&Assignment>,
    owned_by_other: &impl Fn(&str, i32) -> bool,
) -> MemberAssignmentState {
    let mut assigned = Assignment::new();
    let mut revoke = Assignment::new();
    let mut add = Assignment::new();
    let mut unreleased = false;

    let topics: std::collections::BTreeSet<&String> =
        target.keys().chain(current.assigned.keys()).collect();
    for topic in topics {
        let want = target.get(topic);
        let have = current.assigned.get(topic);
        for &p in have.into_iter().flatten() {
            if want.is_some_and(|w| w.contains(&p)) {
                assigned.entry(topic.clone()).or_default().insert(p);
            } else {
                revoke.entry(topic.clone()).or_default().insert(p);
            }
        }
        for &p in want.into_iter().flatten() {
            if have.is_some_and(|h| h.contains(&p)) {
                continue;
            }
            // Pending revocation from this very member is not "owned by another": it may get
            // a partition it was giving up back.
            if owned_by_other(topic, p) {
                unreleased = true;
            } else {
                add.entry(topic.clone()).or_default().insert(p);
            }
        }
    }

    if !revoke.is_empty() && owns_any(owned, &revoke) {
        let (epoch, previous) = with_epoch(current, member_epoch);
        return MemberAssignmentState {
            member_epoch: epoch,
            previous_member_epoch: previous,
            state: MemberState::UnrevokedPartitions,
            assigned,
            pending_revocation: revoke,
        };
    }
    for (t, ps) in add {
        assigned.entry(t).or_default().extend(ps);
    }
    let (epoch, previous) = with_epoch(current, target_epoch);
    MemberAssignmentState {
        member_epoch: epoch,
        previous_member_epoch: previous,
        state: if unreleased {
            MemberState::UnreleasedPartitions
        } else {
            MemberState::Stable
        },
        assigned,
        pending_revocation: Assignment::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn a(parts: &[(&str, &[i32])]) -> Assignment {
        parts
            .iter()
            .map(|(t, ps)| (t.to_string(), ps.iter().copied().collect::<BTreeSet<_>>()))
            .collect()
    }

    fn member(
        epoch: i32,
        state: MemberState,
        assigned: Assignment,
        pending: Assignment,
    ) -> ConsumerGroupMember {
        let mut m = ConsumerGroupMember::new("m".into());
        m.assignment = MemberAssignmentState {
            member_epoch: epoch,
            previous_member_epoch: epoch - 1,
            state,
            assigned,
            pending_revocation: pending,
        };
        m
    }

    #[test]
    fn stable_to_unrevoked_then_to_next_epoch() {
        let m = member(10, MemberState::Stable, a(&[("t", &[0, 1, 2])]), a(&[]));
        let target = a(&[("t", &[0, 3])]);
        let owned = a(&[("t", &[0, 1, 2])]);
        let s = build(&m, 11, &target, Some(&owned), |_, _| false);
        assert_eq!(s.state, MemberState::UnrevokedPartitions);
        assert_eq!(s.member_epoch, 10);
        assert_eq!(s.assigned, a(&[("t", &[0])]));
        assert_eq!(s.pending_revocation, a(&[("t", &[1, 2])]));

        // Still owns 1: no progress.
        let mut m2 = m.clone();
        m2.assignment = s.clone();
        let again = build(&m2, 11, &target, Some(&a(&[("t", &[0, 1])])), |_, _| false);
        assert_eq!(again, s);
        // Not reported: no progress.
        assert_eq!(build(&m2, 11, &target, None, |_, _| false), s);
        // Revoked: moves to epoch 11 and gets 3.
        let done = build(&m2, 11, &target, Some(&a(&[("t", &[0])])), |_, _| false);
        assert_eq!(done.state, MemberState::Stable);
        assert_eq!(done.member_epoch, 11);
        assert_eq!(done.previous_member_epoch, 10);
        assert_eq!(done.assigned, target);
    }

    #[test]
    fn unreleased_partitions_wait_for_their_owner() {
        let m = member(5, MemberState::Stable, a(&[("t", &[0])]), a(&[]));
        let target = a(&[("t", &[0, 1])]);
        let s = build(&m, 6, &target, Some(&a(&[("t", &[0])])), |_, p| p == 1);
        assert_eq!(s.state, MemberState::UnreleasedPartitions);
        assert_eq!(s.member_epoch, 6);
        assert_eq!(s.assigned, a(&[("t", &[0])]));
        let mut m2 = m.clone();
        m2.assignment = s;
        let s2 = build(&m2, 6, &target, None, |_, _| false);
        assert_eq!(s2.state, MemberState::Stable);
        assert_eq!(s2.assigned, target);
        assert_eq!(s2.previous_member_epoch, 5);
    }

    #[test]
    fn revoked_partitions_not_owned_anymore_skip_the_wait() {
        let m = member(3, MemberState::Stable, a(&[("t", &[0, 1])]), a(&[]));
        let target = a(&[("t", &[0])]);
        let s = build(&m, 4, &target, Some(&a(&[("t", &[0])])), |_, _| false);
        assert_eq!(s.state, MemberState::Stable);
        assert_eq!(s.member_epoch, 4);
        assert_eq!(s.assigned, target);
    }
}
