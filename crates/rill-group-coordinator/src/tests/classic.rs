//! Classic groups (JoinGroup/SyncGroup/Heartbeat/LeaveGroup): member ids, held answers, the
//! initial delay, the leader's assignment, timeouts, persistence and the boundary with
//! consumer (KIP-848) groups.

use std::collections::BTreeMap;

use bytes::Bytes;
use rill_protocol::ErrorCode;
use rill_protocol::proto::{OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic};

use super::harness::{Client, Harness, config};
use crate::GroupConfig;
use crate::classic_group::*;

const DELAY: i64 = 100;

fn classic_config() -> GroupConfig {
    GroupConfig {
        classic_initial_rebalance_delay_ms: DELAY,
        ..config()
    }
}

/// A harness plus the answers delivered to waiters.
struct H {
    h: Harness,
    next_waiter: WaiterId,
    answers: BTreeMap<WaiterId, ClassicAnswer>,
}

impl H {
    fn new() -> Self {
        H {
            h: Harness::with_config(classic_config(), &[("t", 4)]),
            next_waiter: 1,
            answers: BTreeMap::new(),
        }
    }

    fn collect(&mut self) {
        for (w, a) in self.h.shard.take_classic_deliveries() {
            assert!(
                self.answers.insert(w, a).is_none(),
                "waiter {w} answered twice"
            );
        }
    }

    fn join(&mut self, member_id: &str, protocols: &[&str]) -> WaiterId {
        self.join_typed(member_id, "consumer", protocols)
    }

    fn join_typed(&mut self, member_id: &str, protocol_type: &str, protocols: &[&str]) -> WaiterId {
        let w = self.next_waiter;
        self.next_waiter += 1;
        let r = self.h.shard.classic_join_group(
            JoinGroupRequest {
                group_id: "g".into(),
                session_timeout_ms: 10_000,
                rebalance_timeout_ms: 20_000,
                member_id: member_id.into(),
                group_instance_id: None,
                protocol_type: protocol_type.into(),
                protocols: protocols
                    .iter()
                    .map(|p| Protocol {
                        name: p.to_string(),
                        metadata: Bytes::from(format!("{member_id}:{p}")),
                    })
                    .collect(),
                require_known_member_id: true,
                client_id: "c".into(),
                client_host: "/127.0.0.1".into(),
            },
            w,
            self.h.now,
        );
        self.h.append(r.records);
        self.collect();
        w
    }

    /// A first join: MEMBER_ID_REQUIRED with a new id, then the join with it.
    fn join_new(&mut self, protocols: &[&str]) -> (String, WaiterId) {
        let w = self.join("", protocols);
        let a = self.join_answer(w).expect("MEMBER_ID_REQUIRED at once");
        assert_eq!(a.error_code, MEMBER_ID_REQUIRED);
        assert!(a.member_id.starts_with("c-"), "{}", a.member_id);
        let id = a.member_id.clone();
        (id.clone(), self.join(&id, protocols))
    }

    fn join_answer(&self, w: WaiterId) -> Option<&JoinGroupResponse> {
        match self.answers.get(&w) {
            Some(ClassicAnswer::Join(a)) => Some(a),
            Some(other) => panic!("waiter {w} got {other:?}"),
            None => None,
        }
    }

    fn sync_answer(&self, w: WaiterId) -> Option<&SyncGroupResponse> {
        match self.answers.get(&w) {
            Some(ClassicAnswer::Sync(a)) => Some(a),
            Some(other) => panic!("waiter {w} got {other:?}"),
            None => None,
        }
    }

    fn sync(&mut self, member_id: &str, generation: i32, assignments: &[(&str, &str)]) -> WaiterId {
        let w = self.next_waiter;
        self.next_waiter += 1;
        let r = self.h.shard.classic_sync_group(
            SyncGroupRequest {
                group_id: "g".into(),
                generation_id: generation,
                member_id: member_id.into(),
                assignments: assignments
                    .iter()
                    .map(|(m, a)| (m.to_string(), Bytes::from(a.to_string())))
                    .collect(),
                ..Default::default()
            },
            w,
            self.h.now,
        );
        self.h.append(r.records);
        self.collect();
        w
    }

    fn heartbeat(&mut self, member_id: &str, generation: i32) -> i16 {
        self.h.shard.classic_heartbeat(
            &HeartbeatRequest {
                group_id: "g".into(),
                generation_id: generation,
                member_id: member_id.into(),
                group_instance_id: None,
            },
            self.h.now,
        )
    }

    fn advance(&mut self, ms: i64) {
        self.h.now += ms;
        self.h.expire();
        self.collect();
    }

    fn state(&self) -> Option<ClassicGroupState> {
        self.h.shard.classic_group_state("g")
    }

    fn commit(&mut self, member_id: &str, generation: i32, offset: i64) -> i32 {
        self.h
            .commit(OffsetCommitRequest {
                group_id: "g".into(),
                member_epoch: generation,
                member_id: member_id.into(),
                retention_time_ms: None,
                topics: vec![OffsetCommitTopic {
                    name: "t".into(),
                    partitions: vec![OffsetCommitPartition {
                        index: 0,
                        committed_offset: offset,
                        committed_leader_epoch: -1,
                        committed_metadata: String::new(),
                    }],
                }],
            })
            .topics[0]
            .partitions[0]
            .error_code
    }

    /// Two members joined and synced (generation 1): (leader, follower).
    fn stable_pair(&mut self) -> (String, String) {
        let (a, wa) = self.join_new(&["range", "roundrobin"]);
        let (b, wb) = self.join_new(&["roundrobin", "range"]);
        // The second member extended the initial delay once.
        self.advance(DELAY);
        self.advance(DELAY);
        let ja = self.join_answer(wa).expect("leader answered").clone();
        let jb = self.join_answer(wb).expect("follower answered").clone();
        assert_eq!(ja.generation_id, 1);
        let leader = ja.leader.clone();
        let follower = if leader == a { b.clone() } else { a.clone() };
        let sf = self.sync(&follower, 1, &[]);
        assert!(
            self.sync_answer(sf).is_none(),
            "the follower waits for the leader"
        );
        let sl = self.sync(&leader, 1, &[(&a, "for-a"), (&b, "for-b")]);
        assert_eq!(self.sync_answer(sl).unwrap().error_code, 0);
        assert_eq!(self.sync_answer(sf).unwrap().error_code, 0);
        assert_eq!(self.state(), Some(ClassicGroupState::Stable));
        let _ = jb;
        (leader, follower)
    }
}

#[test]
fn members_get_ids_wait_out_the_initial_delay_and_the_leader_assigns() {
    let mut h = H::new();
    let (a, wa) = h.join_new(&["range", "roundrobin"]);
    assert_eq!(h.state(), Some(ClassicGroupState::PreparingRebalance));
    assert!(h.join_answer(wa).is_none(), "held during the initial delay");
    // A second member arrives within the delay: the delay is extended once more.
    h.advance(DELAY / 2);
    let (b, wb) = h.join_new(&["roundrobin", "range"]);
    h.advance(DELAY / 2);
    assert!(
        h.join_answer(wa).is_none(),
        "a new member extended the delay"
    );
    h.advance(DELAY);
    let ja = h.join_answer(wa).expect("answered after the delay").clone();
    let jb = h.join_answer(wb).expect("answered after the delay").clone();
    assert_eq!((ja.error_code, jb.error_code), (0, 0));
    assert_eq!((ja.generation_id, jb.generation_id), (1, 1));
    assert_eq!(ja.leader, a, "the first member leads");
    assert_eq!(jb.leader, a);
    // One vote each, ties go to the leader's order.
    assert_eq!(ja.protocol_name.as_deref(), Some("range"));
    assert_eq!(ja.protocol_type.as_deref(), Some("consumer"));
    let mut ids: Vec<&str> = ja.members.iter().map(|m| m.member_id.as_str()).collect();
    ids.sort();
    let mut want = vec![a.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want, "the leader sees every member");
    let meta_b = ja.members.iter().find(|m| m.member_id == b).unwrap();
    assert_eq!(meta_b.metadata, Bytes::from(format!("{b}:range")));
    assert!(jb.members.is_empty(), "followers see no members");
    assert_eq!(h.state(), Some(ClassicGroupState::CompletingRebalance));

    // The follower's SyncGroup waits for the leader's.
    let sb = h.sync(&b, 1, &[]);
    assert!(h.sync_answer(sb).is_none());
    assert_eq!(
        h.heartbeat(&b, 1),
        0,
        "heartbeats are fine while completing"
    );
    let before = h.h.log.len();
    let sa = h.sync(&a, 1, &[(&a, "for-a"), (&b, "for-b")]);
    assert_eq!(
        h.h.log.len(),
        before + 1,
        "the leader's sync stores the group"
    );
    assert_eq!(h.sync_answer(sa).unwrap().assignment, Bytes::from("for-a"));
    assert_eq!(h.sync_answer(sb).unwrap().assignment, Bytes::from("for-b"));
    assert_eq!(h.state(), Some(ClassicGroupState::Stable));
    // A late SyncGroup in Stable gets its assignment at once.
    let again = h.sync(&b, 1, &[]);
    assert_eq!(
        h.sync_answer(again).unwrap().assignment,
        Bytes::from("for-b")
    );
}

#[test]
fn heartbeats_say_rebalance_unknown_member_and_illegal_generation() {
    let mut h = H::new();
    let (leader, follower) = h.stable_pair();
    assert_eq!(h.heartbeat(&leader, 1), 0);
    assert_eq!(
        h.heartbeat(&follower, 0),
        ErrorCode::IllegalGeneration as i16
    );
    assert_eq!(h.heartbeat("nobody", 1), ErrorCode::UnknownMemberId as i16);
    // A third member joins: the others are told to rejoin.
    let (c, wc) = h.join_new(&["range"]);
    assert_eq!(h.state(), Some(ClassicGroupState::PreparingRebalance));
    assert_eq!(
        h.heartbeat(&leader, 1),
        ErrorCode::RebalanceInProgress as i16
    );
    assert!(h.join_answer(wc).is_none());
    // Every known member rejoins: the join completes at once (no delay: the group was not empty).
    let wl = h.join(&leader, &["range", "roundrobin"]);
    assert!(h.join_answer(wl).is_none());
    let wf = h.join(&follower, &["roundrobin", "range"]);
    for w in [wc, wl, wf] {
        let a = h.join_answer(w).expect("joined");
        assert_eq!((a.error_code, a.generation_id), (0, 2));
    }
    assert_eq!(h.join_answer(wl).unwrap().members.len(), 3);
    // Generation 1 is over.
    assert_eq!(h.heartbeat(&c, 1), ErrorCode::IllegalGeneration as i16);
    let s = h.sync(&c, 1, &[]);
    assert_eq!(
        h.sync_answer(s).unwrap().error_code,
        ErrorCode::IllegalGeneration as i16
    );
}

#[test]
fn an_expired_session_removes_the_member_and_the_others_rebalance() {
    let mut h = H::new();
    let (leader, follower) = h.stable_pair();
    // Only the leader heartbeats.
    for _ in 0..3 {
        h.advance(3_000);
        assert_eq!(h.heartbeat(&leader, 1), 0);
    }
    h.advance(3_000);
    assert_eq!(h.state(), Some(ClassicGroupState::PreparingRebalance));
    assert_eq!(h.heartbeat(&follower, 1), ErrorCode::UnknownMemberId as i16);
    assert_eq!(
        h.heartbeat(&leader, 1),
        ErrorCode::RebalanceInProgress as i16
    );
    let w = h.join(&leader, &["range", "roundrobin"]);
    let a = h.join_answer(w).expect("alone: joined at once").clone();
    assert_eq!((a.generation_id, a.members.len()), (2, 1));
    assert_eq!(a.leader, leader);
}

#[test]
fn members_that_do_not_rejoin_in_time_are_dropped_and_the_last_leave_empties_the_group() {
    let mut h = H::new();
    let (leader, follower) = h.stable_pair();
    let (_c, wc) = h.join_new(&["range"]);
    let wl = h.join(&leader, &["range"]);
    // The follower keeps heartbeating but never rejoins: at the rebalance timeout it is out.
    h.advance(9_000);
    assert_eq!(
        h.heartbeat(&follower, 1),
        ErrorCode::RebalanceInProgress as i16
    );
    h.advance(11_000);
    assert_eq!(h.join_answer(wc).unwrap().generation_id, 2);
    assert_eq!(h.join_answer(wl).unwrap().members.len(), 2);
    assert_eq!(h.heartbeat(&follower, 2), ErrorCode::UnknownMemberId as i16);

    // The follower's pending sync timeout: the members never sync, and are removed.
    h.advance(20_000);
    assert_eq!(h.state(), Some(ClassicGroupState::Empty));

    // LeaveGroup of an unknown member; then a new pair and both leave.
    let mut h = H::new();
    let (leader, follower) = h.stable_pair();
    let r = h.h.shard.classic_leave_group(
        &LeaveGroupRequest {
            group_id: "g".into(),
            members: vec![
                LeavingMember {
                    member_id: follower.clone(),
                    group_instance_id: None,
                },
                LeavingMember {
                    member_id: "ghost".into(),
                    group_instance_id: None,
                },
            ],
        },
        h.h.now,
    );
    assert_eq!(r.response.members[0].2, 0);
    assert_eq!(r.response.members[1].2, ErrorCode::UnknownMemberId as i16);
    assert_eq!(h.state(), Some(ClassicGroupState::PreparingRebalance));
    let r = h.h.shard.classic_leave_group(
        &LeaveGroupRequest {
            group_id: "g".into(),
            members: vec![LeavingMember {
                member_id: leader.clone(),
                group_instance_id: None,
            }],
        },
        h.h.now,
    );
    assert_eq!(r.response.members[0].2, 0);
    assert_eq!(r.records.len(), 1, "the empty group is stored");
    assert_eq!(h.state(), Some(ClassicGroupState::Empty));
}

#[test]
fn protocols_must_be_compatible_and_static_members_are_refused() {
    let mut h = H::new();
    let (_a, _) = h.join_new(&["range"]);
    let w = h.join_typed("", "connect", &["range"]);
    assert_eq!(
        h.join_answer(w).unwrap().error_code,
        INCONSISTENT_GROUP_PROTOCOL
    );
    let w = h.join("", &["sticky"]);
    assert_eq!(
        h.join_answer(w).unwrap().error_code,
        INCONSISTENT_GROUP_PROTOCOL
    );
    let w = h.join_typed("", "consumer", &[]);
    assert_eq!(
        h.join_answer(w).unwrap().error_code,
        INCONSISTENT_GROUP_PROTOCOL
    );

    let r = h.h.shard.classic_join_group(
        JoinGroupRequest {
            group_id: "g".into(),
            session_timeout_ms: 10_000,
            member_id: String::new(),
            group_instance_id: Some("i-1".into()),
            protocol_type: "consumer".into(),
            protocols: vec![Protocol {
                name: "range".into(),
                metadata: Bytes::new(),
            }],
            ..Default::default()
        },
        99,
        h.h.now,
    );
    assert!(r.records.is_empty());
    h.collect();
    assert_eq!(h.join_answer(99).unwrap().error_code, UNSUPPORTED_VERSION);

    let r = h.h.shard.classic_join_group(
        JoinGroupRequest {
            group_id: "g".into(),
            session_timeout_ms: 10,
            protocol_type: "consumer".into(),
            protocols: vec![Protocol {
                name: "range".into(),
                metadata: Bytes::new(),
            }],
            ..Default::default()
        },
        100,
        h.h.now,
    );
    assert!(r.records.is_empty());
    h.collect();
    assert_eq!(
        h.join_answer(100).unwrap().error_code,
        ErrorCode::InvalidSessionTimeout as i16
    );
}

#[test]
fn classic_commits_check_generation_and_member() {
    let mut h = H::new();
    let (leader, follower) = h.stable_pair();
    assert_eq!(h.commit(&leader, 1, 10), 0);
    assert_eq!(
        h.commit(&follower, 0, 10),
        ErrorCode::IllegalGeneration as i32
    );
    assert_eq!(h.commit("ghost", 1, 10), ErrorCode::UnknownMemberId as i32);
    assert_eq!(
        h.commit("", -1, 10),
        ErrorCode::UnknownMemberId as i32,
        "outside commits only while empty"
    );
    // During PreparingRebalance the current generation may still commit (revocation commits).
    let _ = h.join_new(&["range"]);
    assert_eq!(h.commit(&follower, 1, 12), 0);
    let r =
        h.h.shard
            .offset_fetch(&rill_protocol::proto::OffsetFetchRequest {
                group_id: "g".into(),
                topics: Vec::new(),
            });
    assert_eq!(r.topics[0].partitions[0].committed_offset, 12);
}

#[test]
fn a_loaded_shard_has_the_stable_group_and_its_offsets() {
    let mut h = H::new();
    let (leader, follower) = h.stable_pair();
    assert_eq!(h.commit(&leader, 1, 7), 0);
    let mut loaded = h.h.load();
    let _ = loaded.on_loaded(&h.h.image, h.h.now);
    assert_eq!(
        loaded.classic_group_state("g"),
        Some(ClassicGroupState::Stable)
    );
    let hb = |s: &mut crate::GroupCoordinatorShard, m: &str| {
        s.classic_heartbeat(
            &HeartbeatRequest {
                group_id: "g".into(),
                generation_id: 1,
                member_id: m.into(),
                group_instance_id: None,
            },
            h.h.now,
        )
    };
    assert_eq!(
        hb(&mut loaded, &leader),
        0,
        "members carry on after a failover"
    );
    assert_eq!(hb(&mut loaded, &follower), 0);
    let w = 500;
    loaded.classic_sync_group(
        SyncGroupRequest {
            group_id: "g".into(),
            generation_id: 1,
            member_id: follower.clone(),
            ..Default::default()
        },
        w,
        h.h.now,
    );
    let got = loaded.take_classic_deliveries();
    // The live shard's answer to the same SyncGroup (Stable: the stored assignment).
    let live = h.sync(&follower, 1, &[]);
    let want = ClassicAnswer::Sync(h.sync_answer(live).unwrap().clone());
    assert_eq!(
        got,
        vec![(w, want)],
        "the loaded group hands out the stored assignment"
    );
    let r = loaded.offset_fetch(&rill_protocol::proto::OffsetFetchRequest {
        group_id: "g".into(),
        topics: Vec::new(),
    });
    assert_eq!(r.topics[0].partitions[0].committed_offset, 7);
    // Members that never come back are removed after their session: the group empties.
    let mut now = h.h.now;
    for _ in 0..3 {
        now += 10_000;
        let _ = loaded.expire_members(&h.h.image, now);
    }
    assert_eq!(
        loaded.classic_group_state("g"),
        Some(ClassicGroupState::Empty)
    );
}

#[test]
fn classic_and_consumer_groups_do_not_share_an_id_with_members() {
    let mut h = H::new();
    let (_leader, _follower) = h.stable_pair();
    let c = Client::new("g", "kip848", &["t"]);
    let r = h.h.heartbeat(c.join_request());
    assert_eq!(
        r.error_code,
        ErrorCode::GroupIdNotFound as i32,
        "{}",
        r.error_message
    );

    // A consumer group with members: JoinGroup is refused.
    let mut h = H::new();
    let mut c = Client::new("g", "kip848", &["t"]);
    assert_eq!(c.join(&mut h.h).error_code, 0);
    let w = h.join("", &["range"]);
    assert_eq!(
        h.join_answer(w).unwrap().error_code,
        INCONSISTENT_GROUP_PROTOCOL
    );
    assert_eq!(h.state(), None, "no classic group was made");
}

/// An empty classic group gives its id to a consumer group only when a heartbeat is
/// accepted: a refused one (here an unknown member) changes nothing and writes nothing.
#[test]
fn a_refused_heartbeat_leaves_an_empty_classic_group_alone() {
    let mut h = H::new();
    let _ = h.stable_pair();
    let mut now = h.h.now;
    for _ in 0..3 {
        now += 10_000;
        let _ = h.h.shard.expire_members(&h.h.image, now);
    }
    h.h.now = now;
    assert_eq!(h.state(), Some(ClassicGroupState::Empty));
    let c = Client::new("g", "kip848", &["t"]);
    let mut refused = c.join_request();
    refused.member_id = "not-a-member".into();
    refused.member_epoch = 5;
    let r = h.h.heartbeat(refused);
    assert_eq!(
        r.error_code,
        ErrorCode::UnknownMemberId as i32,
        "{}",
        r.error_message
    );
    assert_eq!(h.state(), Some(ClassicGroupState::Empty), "still there");
    // An accepted join takes the id; the classic group's tombstone comes first.
    let r =
        h.h.shard
            .consumer_group_heartbeat(c.join_request(), "/10.0.0.1", &h.h.image, now);
    assert_eq!(r.response.error_code, 0, "{}", r.response.error_message);
    assert_eq!(h.state(), None);
    h.h.append(r.records);
    let loaded = h.h.load();
    assert_eq!(
        loaded.classic_group_state("g"),
        None,
        "gone after a reload too"
    );
    assert_eq!(loaded.list_groups(&[]).len(), 1);
    assert_eq!(loaded.list_groups(&[])[0].group_type, "consumer");
}

#[test]
fn listed_and_described_as_classic_and_deleted_when_empty() {
    let mut h = H::new();
    let (leader, _follower) = h.stable_pair();
    let listed = h.h.shard.list_groups(&[]);
    assert_eq!(listed.len(), 1);
    assert_eq!(
        (
            listed[0].group_type.as_str(),
            listed[0].group_state.as_str()
        ),
        ("classic", "Stable")
    );
    let d = h.h.describe("g");
    assert_eq!((d.group_epoch, d.members.len()), (1, 2));
    assert_eq!(d.assignor_name, "range");
    let r = h.h.shard.delete_groups(&["g".to_string()]);
    assert_eq!(r.response[0].error_code, ErrorCode::NonEmptyGroup as i32);
    assert_eq!(h.commit(&leader, 1, 3), 0);
    let mut now = h.h.now;
    for _ in 0..3 {
        now += 10_000;
        let _ = h.h.shard.expire_members(&h.h.image, now);
    }
    assert_eq!(h.state(), Some(ClassicGroupState::Empty));
    let r = h.h.shard.delete_groups(&["g".to_string()]);
    assert_eq!(r.response[0].error_code, 0);
    assert_eq!(h.state(), None);
    assert!(h.h.shard.list_groups(&[]).is_empty());
}

#[test]
fn kafka_describe_shows_members_metadata_and_assignments_when_stable() {
    let mut h = H::new();
    let (leader, follower) = h.stable_pair();
    let d = h.h.shard.classic_describe("g", true);
    assert_eq!(d.error_code, 0);
    assert_eq!(
        (
            d.state.as_str(),
            d.protocol_type.as_str(),
            d.protocol_data.as_str()
        ),
        ("Stable", "consumer", "range")
    );
    let f = d.members.iter().find(|m| m.member_id == follower).unwrap();
    assert_eq!(f.metadata, Bytes::from(format!("{follower}:range")));
    assert!(!f.assignment.is_empty());
    assert!(d.members.iter().any(|m| m.member_id == leader));
    assert_eq!(h.h.shard.classic_describe("nope", false).state, "Dead");
    assert_eq!(h.h.shard.classic_describe("nope", false).error_code, 0);
    assert_eq!(
        h.h.shard.classic_describe("nope", true).error_code,
        ErrorCode::GroupIdNotFound as i16
    );
}
