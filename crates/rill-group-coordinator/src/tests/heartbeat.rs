use rill_protocol::ErrorCode;
use rill_protocol::proto::{
    ConsumerGroupHeartbeatRequest, TopicNames, TopicPartitions, TopicPartitionsList,
};

use super::harness::*;
use crate::consumer_group::assignment_from_proto;
use crate::records::{CONSUMER_GROUP_MEMBER_METADATA, CoordinatorRecord};
use crate::{GroupConfig, partition_for};

fn code(c: ErrorCode) -> i32 {
    c as i32
}

fn count_parts(a: &crate::assignor::Assignment) -> usize {
    a.values().map(|p| p.len()).sum()
}

#[test]
fn partition_for_matches_java() {
    // Java: "".hashCode() = 0, "group".hashCode() = 98629247, "my-group" = -1906497762,
    // "日本語" = 25921943, "😀" (a surrogate pair) = 1772899, and
    // "polygenelubricants".hashCode() = Integer.MIN_VALUE, which Utils.abs maps to 0.
    assert_eq!(partition_for("", 50), 0);
    assert_eq!(partition_for("group", 50), 98629247 % 50);
    assert_eq!(partition_for("my-group", 50), 1906497762 % 50);
    assert_eq!(partition_for("héllo", 50), 103094734 % 50);
    assert_eq!(partition_for("日本語", 50), 25921943 % 50);
    assert_eq!(partition_for("😀", 50), 1772899 % 50);
    assert_eq!(partition_for("polygenelubricants", 50), 0);
    assert_eq!(partition_for("group", 1), 0);
    assert_eq!(
        partition_for("group", 0),
        0,
        "no panic on a bad partition count"
    );
}

#[test]
fn first_member_gets_everything_and_assignment_only_when_changed() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    let r = a.join(&mut h);
    assert_eq!(r.member_epoch, 1);
    assert_eq!(r.heartbeat_interval_ms, 5_000);
    assert_eq!(a.owned, assignment(&[("t", &[0, 1, 2, 3])]));
    let r = a.heartbeat(&mut h);
    assert!(r.assignment.is_none(), "unchanged: no assignment");
    assert_eq!(r.member_epoch, 1);
    let d = h.describe("g");
    assert_eq!(d.group_state, "Stable");
    assert_eq!(d.group_epoch, 1);
    assert_eq!(d.assignment_epoch, 1);
    assert_eq!(d.assignor_name, "uniform");
    assert_eq!(d.members[0].member_state, "Stable");
    assert_eq!(d.members[0].client_host, "/10.0.0.1");
    h.assert_load_equals_live();
}

#[test]
fn join_without_member_id_gets_a_uuid() {
    let mut h = Harness::new(&[("t", 1)]);
    let mut a = Client::new("g", "", &["t"]);
    let r = a.join(&mut h);
    let id = uuid::Uuid::parse_str(&r.member_id).expect("a uuid");
    assert_eq!(id.get_version_num(), 4);
}

#[test]
fn second_member_waits_for_revocation() {
    let mut h = Harness::new(&[("t", 6)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.revoke = Revoke::WhenReleased;
    let mut b = Client::new("g", "b", &["t"]);
    a.join(&mut h);
    assert_eq!(count_parts(&a.owned), 6);

    let r = b.join(&mut h);
    assert_eq!(r.member_epoch, 2);
    assert!(b.owned.is_empty(), "everything is still a's");
    let d = h.describe("g");
    assert_eq!(d.group_state, "Reconciling");
    let bm = d.members.iter().find(|m| m.member_id == "b").unwrap();
    assert_eq!(bm.member_state, "UnreleasedPartitions");
    assert_eq!(
        bm.target_assignment
            .iter()
            .map(|t| t.partitions.len())
            .sum::<usize>(),
        3
    );

    // a is told to give 3 up, stays at epoch 1 until it did.
    let r = a.heartbeat(&mut h);
    assert_eq!(r.member_epoch, 1);
    assert_eq!(count_parts(&a.owned), 3);
    assert_eq!(count_parts(&a.releasing), 3);
    assert_exclusive(&h, &[a.clone(), b.clone()]);
    let am = h
        .describe("g")
        .members
        .into_iter()
        .find(|m| m.member_id == "a")
        .unwrap();
    assert_eq!(am.member_state, "UnrevokedPartitions");

    // b still gets nothing while a holds them.
    let r = b.heartbeat(&mut h);
    assert!(r.assignment.is_none());
    assert!(b.owned.is_empty());
    let r = a.heartbeat(&mut h);
    assert_eq!(r.member_epoch, 1, "still holding the revoked partitions");

    a.release();
    let r = a.heartbeat(&mut h);
    assert_eq!(r.member_epoch, 2);
    let r = b.heartbeat(&mut h);
    assert_eq!(r.member_epoch, 2);
    assert_eq!(count_parts(&b.owned), 3);
    assert_exclusive(&h, &[a.clone(), b.clone()]);
    assert_eq!(h.describe("g").group_state, "Stable");
    h.assert_load_equals_live();
}

#[test]
fn leave_removes_the_member_and_reassigns() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    let mut b = Client::new("g", "b", &["t"]);
    a.join(&mut h);
    b.join(&mut h);
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    let before = h.log.len();
    let r = h.heartbeat(clients[0].leave_request(-1));
    assert_eq!(r.error_code, 0);
    assert_eq!(r.member_epoch, -1);
    let written: Vec<_> = h.log[before..]
        .iter()
        .map(|r| CoordinatorRecord::decode(r).unwrap().unwrap())
        .collect();
    let tombstones = written
        .iter()
        .filter(|r| {
            matches!(r, CoordinatorRecord::ConsumerGroupMemberMetadata(k, None) if k.member == "a")
                || matches!(r, CoordinatorRecord::ConsumerGroupTargetAssignmentMember(k, None) if k.member == "a")
                || matches!(r, CoordinatorRecord::ConsumerGroupCurrentMemberAssignment(k, None) if k.member == "a")
        })
        .count();
    assert_eq!(tombstones, 3);
    clients[0].reset();
    clients[0].joined = false;
    let d = h.describe("g");
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.group_epoch, 3);
    settle(&mut h, &mut clients);
    assert_eq!(count_parts(&clients[1].owned), 4);
    // The last member leaves: empty group, offsets-less.
    h.heartbeat(clients[1].leave_request(-1));
    assert_eq!(h.describe("g").group_state, "Empty");
    h.assert_load_equals_live();
    // Unknown member leaving.
    let r = h.heartbeat(clients[1].leave_request(-1));
    assert_eq!(r.error_code, code(ErrorCode::UnknownMemberId));
}

#[test]
fn static_member_restart_keeps_its_assignment() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    let mut s = Client::new("g", "s1", &["t"]).static_member("i1");
    a.join(&mut h);
    s.join(&mut h);
    let mut clients = vec![a, s];
    settle(&mut h, &mut clients);
    let kept = clients[1].owned.clone();
    assert_eq!(count_parts(&kept), 2);
    let epoch = h.describe("g").group_epoch;

    // Leaves for a restart: kept, epoch -2.
    let r = h.heartbeat(clients[1].leave_request(-2));
    assert_eq!(r.member_epoch, -2);
    clients[1].reset();
    let d = h.describe("g");
    let sm = d.members.iter().find(|m| m.member_id == "s1").unwrap();
    assert_eq!(sm.member_epoch, -2);
    assert_eq!(
        assignment_from_proto(&TopicPartitionsList {
            topics: sm.assignment.clone()
        }),
        kept
    );
    assert_eq!(d.group_epoch, epoch, "no rebalance");
    // The other member does not get its partitions meanwhile.
    clients[0].heartbeat(&mut h);
    assert_eq!(count_parts(&clients[0].owned), 2);

    // Another process with the same instance id cannot join while s1 is live...
    let mut live = Client::new("g", "x", &["t"]).static_member("a-live");
    live.join(&mut h);
    let r = h.heartbeat(
        Client::new("g", "y", &["t"])
            .static_member("a-live")
            .join_request(),
    );
    assert_eq!(r.error_code, code(ErrorCode::UnreleasedInstanceId));
    assert!(r.error_message.contains("x"), "{}", r.error_message);
    let r = h.heartbeat(live.leave_request(-1));
    assert_eq!(r.error_code, 0);
    settle(&mut h, &mut clients);
    let epoch = h.describe("g").group_epoch;

    // ...but the restarted s1 (new member id, same instance id) takes over its assignment.
    let mut s2 = Client::new("g", "s2", &["t"]).static_member("i1");
    let r = s2.join(&mut h);
    assert_eq!(r.member_id, "s2");
    assert_eq!(s2.owned, kept);
    let d = h.describe("g");
    assert_eq!(
        d.group_epoch, epoch,
        "same subscription: no new group epoch"
    );
    assert!(d.members.iter().all(|m| m.member_id != "s1"));
    assert_eq!(r.member_epoch, d.assignment_epoch);
    // The old member id is fenced for good (Kafka's FENCED_INSTANCE_ID), heartbeat or leave.
    let old = Client {
        epoch: 4,
        ..Client::new("g", "s1", &["t"]).static_member("i1")
    };
    let r = h.heartbeat(old.heartbeat_request());
    assert_eq!(r.error_code, code(ErrorCode::FencedInstanceId));
    assert!(
        r.error_message.contains("s2") && r.error_message.contains("i1"),
        "{}",
        r.error_message
    );
    let r = h.heartbeat(old.leave_request(-2));
    assert_eq!(r.error_code, code(ErrorCode::FencedInstanceId));
    // Without the instance id it is simply unknown.
    let r = h.heartbeat(
        Client {
            epoch: 4,
            ..Client::new("g", "s1", &["t"])
        }
        .heartbeat_request(),
    );
    assert_eq!(r.error_code, code(ErrorCode::UnknownMemberId));
    h.assert_load_equals_live();
}

#[test]
fn left_static_member_goes_after_its_session_timeout() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    let mut s = Client::new("g", "s1", &["t"]).static_member("i1");
    a.join(&mut h);
    s.join(&mut h);
    let mut clients = vec![a, s];
    settle(&mut h, &mut clients);
    h.heartbeat(clients[1].leave_request(-2));
    clients[1].reset();
    clients[1].joined = false;
    let epoch = h.describe("g").group_epoch;
    h.now += 30_000;
    clients[0].heartbeat(&mut h);
    assert_eq!(h.expire(), 0);
    h.now += 16_000;
    assert!(h.shard.next_deadline_ms().unwrap() <= h.now);
    assert!(h.expire() > 0);
    let d = h.describe("g");
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.group_epoch, epoch + 1);
    settle(&mut h, &mut clients);
    assert_eq!(count_parts(&clients[0].owned), 4);
    h.assert_load_equals_live();
}

#[test]
fn epochs_are_checked() {
    let mut h = Harness::new(&[("t", 2)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    let mut b = Client::new("g", "b", &["t"]);
    b.join(&mut h);
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    let a = clients[0].clone();
    assert_eq!(a.epoch, 2);

    // The previous epoch with owned partitions it still has: the bump answer was lost.
    let previous = Client {
        epoch: 1,
        ..a.clone()
    };
    let r = h.heartbeat(previous.heartbeat_request());
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(r.member_epoch, 2);
    assert_eq!(
        r.assignment.map(|x| assignment_from_proto(&x)),
        Some(a.owned.clone()),
        "the missed answer's assignment comes again"
    );

    // The previous epoch claiming partitions it does not own: fenced.
    let mut claims = previous.clone();
    claims.owned = assignment(&[("t", &[0, 1])]);
    let r = h.heartbeat(claims.heartbeat_request());
    assert_eq!(r.error_code, code(ErrorCode::FencedMemberEpoch));
    assert!(r.error_message.contains("older"));

    let ahead = Client {
        epoch: 3,
        ..a.clone()
    };
    let r = h.heartbeat(ahead.heartbeat_request());
    assert_eq!(r.error_code, code(ErrorCode::FencedMemberEpoch));
    assert!(r.error_message.contains("greater"), "{}", r.error_message);
    // Once fenced, the member is expected to join again, not to repeat its previous epoch.
    let r = h.heartbeat(previous.heartbeat_request());
    assert_eq!(r.error_code, code(ErrorCode::FencedMemberEpoch));

    let unknown = Client {
        epoch: 2,
        ..Client::new("g", "nobody", &["t"])
    };
    let r = h.heartbeat(unknown.heartbeat_request());
    assert_eq!(r.error_code, code(ErrorCode::UnknownMemberId));
    let no_group = Client {
        epoch: 2,
        ..Client::new("other", "a", &["t"])
    };
    let r = h.heartbeat(no_group.heartbeat_request());
    assert_eq!(r.error_code, code(ErrorCode::UnknownMemberId));

    // The fenced answers above let the member join again: with epoch 0 and its member id it
    // gets its epoch and what it has back.
    let r = h.heartbeat(a.join_request());
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(r.member_epoch, 2);
    assert_eq!(
        r.assignment.map(|x| assignment_from_proto(&x)),
        Some(a.owned.clone())
    );
    h.assert_load_equals_live();
}

#[test]
fn a_stale_join_of_a_known_member_is_fenced() {
    let mut h = Harness::new(&[("t", 2)]);
    let mut a = Client::new("g", "a", &["t"]);
    let mut b = Client::new("g", "b", &["t"]);
    a.join(&mut h);
    b.join(&mut h);
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    let a = clients[0].clone();
    assert!(a.epoch >= 2);
    // A join the coordinator already answered (epoch 0 and previous epoch 0 are behind it):
    // FENCED_MEMBER_EPOCH, Kafka's rule.
    let r = h.heartbeat(a.join_request());
    assert_eq!(r.error_code, code(ErrorCode::FencedMemberEpoch));
    assert!(r.error_message.contains("epoch 0"), "{}", r.error_message);
    // The member still owns what it had: nothing moved.
    let d = h.describe("g");
    let am = d.members.iter().find(|m| m.member_id == "a").unwrap();
    assert_eq!(
        assignment_from_proto(&TopicPartitionsList {
            topics: am.assignment.clone()
        }),
        a.owned
    );
    assert_eq!(am.member_epoch, a.epoch);
    // The client that really was fenced joins again with its member id: accepted.
    let r = h.heartbeat(a.join_request());
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(r.member_epoch, a.epoch);
    h.assert_load_equals_live();
}

#[test]
fn requests_are_validated() {
    let cfg = GroupConfig {
        max_group_id_length: 5,
        ..config()
    };
    let mut h = Harness::with_config(cfg, &[("t", 2)]);
    let base = Client::new("g", "a", &["t"]).join_request();
    let cases = vec![
        (
            "empty group",
            {
                let mut r = base.clone();
                r.group_id = String::new();
                r
            },
            ErrorCode::InvalidGroupId,
        ),
        (
            "long group",
            {
                let mut r = base.clone();
                r.group_id = "toolong".into();
                r
            },
            ErrorCode::InvalidGroupId,
        ),
        (
            "no subscription",
            {
                let mut r = base.clone();
                r.subscribed_topic_names = None;
                r
            },
            ErrorCode::InvalidRequest,
        ),
        (
            "no rebalance timeout",
            {
                let mut r = base.clone();
                r.rebalance_timeout_ms = -1;
                r
            },
            ErrorCode::InvalidRequest,
        ),
        (
            "owned on join",
            {
                let mut r = base.clone();
                r.owned_partitions = Some(TopicPartitionsList {
                    topics: vec![TopicPartitions {
                        topic: "t".into(),
                        partitions: vec![0],
                    }],
                });
                r
            },
            ErrorCode::InvalidRequest,
        ),
        (
            "bad regex",
            {
                let mut r = base.clone();
                r.subscribed_topic_regex = Some("(".into());
                r
            },
            ErrorCode::InvalidRequest,
        ),
        (
            "unknown assignor",
            {
                let mut r = base.clone();
                r.server_assignor = Some("sticky".into());
                r
            },
            ErrorCode::UnsupportedAssignor,
        ),
        (
            "bad epoch",
            {
                let mut r = base.clone();
                r.member_epoch = -3;
                r
            },
            ErrorCode::InvalidRequest,
        ),
        (
            "-2 without instance",
            {
                let mut r = base.clone();
                r.member_epoch = -2;
                r
            },
            ErrorCode::InvalidRequest,
        ),
        (
            "empty instance",
            {
                let mut r = base.clone();
                r.instance_id = Some(String::new());
                r
            },
            ErrorCode::InvalidRequest,
        ),
        (
            "no member id",
            {
                let mut r = base.clone();
                r.member_id = String::new();
                r.member_epoch = 3;
                r
            },
            ErrorCode::InvalidRequest,
        ),
    ];
    for (what, request, expected) in cases {
        let r = h.heartbeat(request);
        assert_eq!(r.error_code, code(expected), "{what}: {}", r.error_message);
        assert!(!r.error_message.is_empty(), "{what}");
        assert_eq!(r.heartbeat_interval_ms, 5_000);
    }
    let mut r = base.clone();
    r.subscribed_topic_regex = Some("(".into());
    let msg = h.heartbeat(r).error_message;
    assert!(msg.contains("regular expression"), "{msg}");
    // Unset owned partitions on join is accepted (lenient, like Kafka clients expect).
    let mut r = base.clone();
    r.owned_partitions = None;
    assert_eq!(h.heartbeat(r).error_code, 0);
    assert_eq!(h.shard.list_groups(&[]).len(), 1);
}

#[test]
fn group_max_size() {
    let cfg = GroupConfig {
        max_size: 2,
        ..config()
    };
    let mut h = Harness::with_config(cfg, &[("t", 2)]);
    Client::new("g", "a", &["t"]).join(&mut h);
    let mut b = Client::new("g", "b", &["t"]);
    b.join(&mut h);
    let r = h.heartbeat(Client::new("g", "c", &["t"]).join_request());
    assert_eq!(r.error_code, code(ErrorCode::GroupMaxSizeReached));
    // Members already in the group go on.
    assert_eq!(h.heartbeat(b.heartbeat_request()).error_code, 0);
}

#[test]
fn session_timeout_fences() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    let mut b = Client::new("g", "b", &["t"]);
    a.join(&mut h);
    let joined = h.now;
    assert_eq!(h.shard.next_deadline_ms(), Some(joined + 45_000));
    b.join(&mut h);
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    // b goes silent; a keeps heartbeating.
    for _ in 0..10 {
        h.now += 5_000;
        clients[0].heartbeat(&mut h);
        h.expire();
    }
    let d = h.describe("g");
    assert_eq!(d.members.len(), 1, "b was fenced");
    assert_eq!(d.members[0].member_id, "a");
    clients[1].joined = false;
    clients[1].reset();
    settle(&mut h, &mut clients);
    assert_eq!(count_parts(&clients[0].owned), 4);
    // b comes back with its old epoch: unknown.
    let r = h.heartbeat(
        Client {
            epoch: 2,
            ..Client::new("g", "b", &["t"])
        }
        .heartbeat_request(),
    );
    assert_eq!(r.error_code, code(ErrorCode::UnknownMemberId));
    h.assert_load_equals_live();
}

#[test]
fn rebalance_timeout_fences_a_member_that_does_not_revoke() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.revoke = Revoke::WhenReleased;
    let mut b = Client::new("g", "b", &["t"]);
    a.join(&mut h);
    b.join(&mut h);
    a.heartbeat(&mut h); // told to revoke 2, does not
    let told = h.now;
    let mut fenced_at = None;
    for _ in 0..8 {
        h.now += 5_000;
        let r = h.heartbeat(a.heartbeat_request());
        if r.error_code != 0 {
            assert_eq!(r.error_code, code(ErrorCode::UnknownMemberId));
            a.reset();
            break;
        }
        a.apply(&r);
        b.heartbeat(&mut h);
        if h.expire() > 0 {
            fenced_at = Some(h.now);
        }
        assert_exclusive(&h, &[a.clone(), b.clone()]);
    }
    assert_eq!(
        fenced_at,
        Some(told + 30_000),
        "a missed its 30 s rebalance timeout"
    );
    let d = h.describe("g");
    assert_eq!(d.members.len(), 1);
    assert_eq!(d.members[0].member_id, "b");
    b.heartbeat(&mut h);
    assert_eq!(count_parts(&b.owned), 4);
    h.assert_load_equals_live();
}

#[test]
fn regex_subscription_follows_topic_creation() {
    let mut h = Harness::new(&[
        ("orders-eu", 2),
        ("orders-us", 2),
        ("payments", 2),
        ("__orders-internal", 2),
    ]);
    let mut a = Client::new("g", "a", &[]);
    a.regex = Some("orders-.*".into());
    let mut req = a.join_request();
    req.subscribed_topic_names = None;
    let r = h.heartbeat(req);
    a.apply(&r);
    assert_eq!(
        a.owned,
        assignment(&[("orders-eu", &[0, 1]), ("orders-us", &[0, 1])])
    );
    let epoch = h.describe("g").group_epoch;
    assert_eq!(h.metadata_update(), 0, "nothing changed");
    h.image
        .topics
        .insert("orders-asia".into(), topic("orders-asia", 1));
    h.image.topics.insert("other".into(), topic("other", 1));
    assert!(h.metadata_update() > 0);
    assert_eq!(h.describe("g").group_epoch, epoch + 1);
    a.heartbeat(&mut h);
    assert!(a.owned.contains_key("orders-asia"));
    assert!(!a.owned.contains_key("other"));
    // Partitions added.
    h.image
        .topics
        .insert("orders-eu".into(), topic("orders-eu", 3));
    assert!(h.metadata_update() > 0);
    a.heartbeat(&mut h);
    assert_eq!(a.owned["orders-eu"].len(), 3);
    // Topic deleted.
    h.image.topics.remove("orders-us");
    assert!(h.metadata_update() > 0);
    let mut clients = vec![a];
    settle(&mut h, &mut clients);
    assert!(!clients[0].owned.contains_key("orders-us"));
    h.assert_load_equals_live();
}

#[test]
fn subscription_and_assignor_changes_bump_the_epoch() {
    let mut h = Harness::new(&[("t", 2), ("u", 2)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    let mut clients = vec![a];
    let e1 = h.describe("g").group_epoch;
    let mut req = clients[0].heartbeat_request();
    req.subscribed_topic_names = Some(TopicNames {
        names: vec!["u".into(), "t".into()],
    });
    let r = h.heartbeat(req);
    clients[0].apply(&r);
    assert_eq!(h.describe("g").group_epoch, e1 + 1);
    assert_eq!(clients[0].owned.len(), 2);
    // Same names in another order: no bump.
    let mut req = clients[0].heartbeat_request();
    req.subscribed_topic_names = Some(TopicNames {
        names: vec!["t".into(), "u".into()],
    });
    let r = h.heartbeat(req);
    clients[0].apply(&r);
    assert_eq!(h.describe("g").group_epoch, e1 + 1);
    // Assignor change.
    let mut req = clients[0].heartbeat_request();
    req.server_assignor = Some("range".into());
    let r = h.heartbeat(req);
    clients[0].apply(&r);
    let d = h.describe("g");
    assert_eq!(d.group_epoch, e1 + 2);
    assert_eq!(d.assignor_name, "range");
    settle(&mut h, &mut clients);
    h.assert_load_equals_live();
}

#[test]
fn a_topic_no_longer_subscribed_is_revoked() {
    let mut h = Harness::new(&[("t", 2), ("u", 2)]);
    let mut a = Client::new("g", "a", &["t", "u"]);
    a.revoke = Revoke::WhenReleased;
    a.join(&mut h);
    let mut b = Client::new("g", "b", &["t", "u"]);
    b.join(&mut h);
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    let mut req = clients[0].heartbeat_request();
    req.subscribed_topic_names = Some(TopicNames {
        names: vec!["t".into()],
    });
    let r = h.heartbeat(req);
    clients[0].apply(&r);
    assert_exclusive(&h, &clients);
    settle(&mut h, &mut clients);
    assert!(!clients[0].owned.contains_key("u"));
    assert_eq!(clients[1].owned["u"].len(), 2);
}

#[test]
fn member_metadata_record_written_only_on_change() {
    let mut h = Harness::new(&[("t", 1)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    let before = h.log.len();
    a.heartbeat(&mut h);
    a.heartbeat(&mut h);
    let metadata_records = h.log[before..]
        .iter()
        .filter(|r| r.key[..2] == CONSUMER_GROUP_MEMBER_METADATA.to_be_bytes())
        .count();
    assert_eq!(metadata_records, 0);
    assert_eq!(h.log.len(), before, "a steady heartbeat writes nothing");
}

/// (member, topic, partition) for every partition a member of `group` owns at the coordinator.
fn holders_of(h: &Harness, group: &str) -> Vec<(String, String, i32)> {
    let mut out = Vec::new();
    for m in h.describe(group).members {
        for tp in m.assignment {
            for p in tp.partitions {
                out.push((m.member_id.clone(), tp.topic.clone(), p));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_delayed_join_never_releases_what_a_member_still_revokes() {
    // Previous epoch 0: a's join was answered (epoch 1), then a was asked to revoke at epoch 1.
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.revoke = Revoke::WhenReleased;
    let delayed = a.join_request();
    a.join(&mut h);
    let mut b = Client::new("g", "b", &["t"]);
    b.join(&mut h);
    a.heartbeat(&mut h);
    assert_eq!(count_parts(&a.releasing), 2);
    let before = holders_of(&h, "g");
    // The join arrives again (delayed or duplicated on the way); the client never sees the
    // answer and goes on consuming the partitions it was told to revoke.
    let r = h.heartbeat(delayed.clone());
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(r.member_epoch, 1);
    assert_eq!(holders_of(&h, "g"), before, "nothing changes owner");
    let d = h.describe("g");
    let am = d.members.iter().find(|m| m.member_id == "a").unwrap();
    assert_eq!(am.member_state, "UnrevokedPartitions");
    b.heartbeat(&mut h);
    assert!(b.owned.is_empty(), "b gets nothing a still holds");
    assert_exclusive(&h, &[a.clone(), b.clone()]);
    // Once a really gave them up, b gets them.
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    assert_eq!(count_parts(&clients[1].owned), 2);
    h.assert_load_equals_live();

    // Previous epoch not 0: a join the coordinator answered long ago is fenced, twice delayed
    // it is accepted as a rejoin, and neither releases anything.
    let mut h = Harness::new(&[("t", 6)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.revoke = Revoke::WhenReleased;
    let delayed = a.join_request();
    a.join(&mut h);
    let mut b = Client::new("g", "b", &["t"]);
    b.join(&mut h);
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    let mut c = Client::new("g", "c", &["t"]);
    c.join(&mut h);
    clients[0].heartbeat(&mut h);
    assert!(count_parts(&clients[0].releasing) > 0);
    let d = h.describe("g");
    let am = d.members.iter().find(|m| m.member_id == "a").unwrap();
    assert_eq!(am.member_state, "UnrevokedPartitions");
    let before = holders_of(&h, "g");
    let r = h.heartbeat(delayed.clone());
    assert_eq!(r.error_code, code(ErrorCode::FencedMemberEpoch));
    assert_eq!(holders_of(&h, "g"), before);
    let r = h.heartbeat(delayed);
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(holders_of(&h, "g"), before);
    c.heartbeat(&mut h);
    clients[1].heartbeat(&mut h);
    clients.push(c);
    assert_exclusive(&h, &clients);
    settle(&mut h, &mut clients);
    assert_eq!(count_parts(&clients[2].owned), 2);
    h.assert_load_equals_live();
}

#[test]
fn a_member_regex_is_compiled_once() {
    let mut h = Harness::new(&[("orders-eu", 2), ("orders-us", 2), ("payments", 2)]);
    let start = crate::topic_regex::compiled_count();
    let mut a = Client::new("g", "a", &[]);
    a.regex = Some("orders-.*".into());
    let mut join = a.join_request();
    join.subscribed_topic_names = None;
    let r = h.heartbeat(join);
    a.apply(&r);
    // A client that sends its pattern on every heartbeat, and metadata updates.
    for i in 0..5 {
        let mut req = a.heartbeat_request();
        req.subscribed_topic_regex = Some("orders-.*".into());
        let r = h.heartbeat(req);
        a.apply(&r);
        h.image
            .topics
            .insert(format!("orders-{i}"), topic(&format!("orders-{i}"), 1));
        h.metadata_update();
    }
    a.heartbeat(&mut h);
    assert!(a.owned.contains_key("orders-4"));
    assert_eq!(crate::topic_regex::compiled_count() - start, 1);
}

#[test]
fn client_strings_are_bounded() {
    use crate::{MAX_ID_BYTES, MAX_SUBSCRIBED_TOPICS, MAX_TOPIC_REGEX_BYTES};
    let mut h = Harness::new(&[("t", 2)]);
    let base = Client::new("g", "a", &["t"]).join_request();
    let long = "x".repeat(MAX_ID_BYTES + 1);
    let mut cases: Vec<(&str, String, ConsumerGroupHeartbeatRequest)> = Vec::new();
    let mut r = base.clone();
    r.member_id = long.clone();
    cases.push(("member_id", MAX_ID_BYTES.to_string(), r));
    let mut r = base.clone();
    r.instance_id = Some(long.clone());
    cases.push(("instance_id", MAX_ID_BYTES.to_string(), r));
    let mut r = base.clone();
    r.rack_id = Some(long.clone());
    cases.push(("rack_id", MAX_ID_BYTES.to_string(), r));
    let mut r = base.clone();
    r.client_id = long.clone();
    cases.push(("client_id", MAX_ID_BYTES.to_string(), r));
    let mut r = base.clone();
    r.server_assignor = Some(long.clone());
    cases.push(("server_assignor", MAX_ID_BYTES.to_string(), r));
    let mut r = base.clone();
    r.subscribed_topic_regex = Some("a".repeat(MAX_TOPIC_REGEX_BYTES + 1));
    cases.push((
        "subscribed_topic_regex",
        MAX_TOPIC_REGEX_BYTES.to_string(),
        r,
    ));
    let mut r = base.clone();
    r.subscribed_topic_names = Some(TopicNames {
        names: (0..=MAX_SUBSCRIBED_TOPICS)
            .map(|i| format!("t{i}"))
            .collect(),
    });
    cases.push((
        "subscribed_topic_names",
        MAX_SUBSCRIBED_TOPICS.to_string(),
        r,
    ));
    for bad in ["a".repeat(250), String::new(), "..".into(), "a b".into()] {
        let mut r = base.clone();
        r.subscribed_topic_names = Some(TopicNames {
            names: vec!["t".into(), bad],
        });
        cases.push(("subscribed_topic_names", String::new(), r));
    }
    for (field, limit, request) in cases {
        let r = h.heartbeat(request);
        assert_eq!(
            r.error_code,
            code(ErrorCode::InvalidRequest),
            "{field}: {}",
            r.error_message
        );
        assert!(
            r.error_message.contains(field) && r.error_message.contains(&limit),
            "{field}: {}",
            r.error_message
        );
    }
    assert_eq!(h.shard.group_count(), 0, "nothing was written");
    // At the limits: accepted.
    let mut r = base.clone();
    r.member_id = "m".repeat(MAX_ID_BYTES);
    r.client_id = "c".repeat(MAX_ID_BYTES);
    r.rack_id = Some("r".repeat(MAX_ID_BYTES));
    r.instance_id = Some("i".repeat(MAX_ID_BYTES));
    r.subscribed_topic_names = Some(TopicNames {
        names: vec!["t".into(), "a".repeat(249), "A.b_c-9".into()],
    });
    let r = h.heartbeat(r);
    assert_eq!(r.error_code, 0, "{}", r.error_message);
}
