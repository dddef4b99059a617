use rill_protocol::ErrorCode;
use rill_protocol::proto::{
    OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic, OffsetFetchRequest,
    OffsetFetchTopic,
};

use super::harness::*;
use crate::GroupConfig;

fn code(c: ErrorCode) -> i32 {
    c as i32
}

fn commit_request(
    group: &str,
    member: &str,
    epoch: i32,
    parts: &[(&str, i32, i64)],
) -> OffsetCommitRequest {
    OffsetCommitRequest {
        group_id: group.to_string(),
        member_epoch: epoch,
        member_id: member.to_string(),
        retention_time_ms: None,
        topics: parts
            .iter()
            .map(|(t, p, o)| OffsetCommitTopic {
                name: t.to_string(),
                partitions: vec![OffsetCommitPartition {
                    index: *p,
                    committed_offset: *o,
                    committed_leader_epoch: 3,
                    committed_metadata: "meta".into(),
                }],
            })
            .collect(),
    }
}

fn fetch(h: &Harness, group: &str, topics: &[(&str, &[i32])]) -> Vec<(String, i32, i64)> {
    let r = h.shard.offset_fetch(&OffsetFetchRequest {
        group_id: group.to_string(),
        topics: topics
            .iter()
            .map(|(t, ps)| OffsetFetchTopic {
                name: t.to_string(),
                partition_indexes: ps.to_vec(),
            })
            .collect(),
    });
    assert_eq!(r.error_code, 0);
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions
                .iter()
                .map(|p| (t.name.clone(), p.index, p.committed_offset))
        })
        .collect()
}

#[test]
fn commits_from_outside_the_group() {
    let mut h = Harness::new(&[("t", 2)]);
    let r = h.commit(commit_request("g", "", -1, &[("t", 0, 10), ("t", 1, 20)]));
    assert!(
        r.topics
            .iter()
            .all(|t| t.partitions.iter().all(|p| p.error_code == 0))
    );
    assert_eq!(
        fetch(&h, "g", &[]),
        vec![("t".into(), 0, 10), ("t".into(), 1, 20)]
    );
    assert_eq!(
        fetch(&h, "g", &[("t", &[1, 5])]),
        vec![("t".into(), 1, 20), ("t".into(), 5, -1)]
    );
    assert_eq!(
        fetch(&h, "unknown", &[("t", &[0])]),
        vec![("t".into(), 0, -1)]
    );
    assert!(fetch(&h, "unknown", &[]).is_empty());
    let listed = h.shard.list_groups(&[]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].group_state, "Empty");
    assert_eq!(listed[0].group_type, "consumer");
    let d = h.describe("g");
    assert_eq!(d.error_code, 0);
    assert_eq!(d.group_state, "Empty");
    let full = h.shard.offset_fetch(&OffsetFetchRequest {
        group_id: "g".into(),
        topics: vec![],
    });
    let p = &full.topics[0].partitions[0];
    assert_eq!(
        (
            p.committed_leader_epoch,
            p.metadata.as_str(),
            p.commit_timestamp_ms
        ),
        (3, "meta", h.now)
    );

    // Once the group has members, outside commits are refused.
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    let r = h.commit(commit_request("g", "", -1, &[("t", 0, 11)]));
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, code(ErrorCode::UnknownMemberId));
    assert!(
        p.error_message.contains("active members"),
        "{}",
        p.error_message
    );
    h.assert_load_equals_live();
}

#[test]
fn member_commits_are_checked_against_epoch_and_assignment() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.revoke = Revoke::WhenReleased;
    a.join(&mut h);
    assert_eq!(a.commit(&mut h, "t", 0, 5), 0);
    let mut b = Client::new("g", "b", &["t"]);
    b.join(&mut h);
    a.heartbeat(&mut h); // 2 partitions pending revocation, still a's

    // a may commit what it is revoking, at its epoch.
    let revoking = *a.releasing.values().next().unwrap().iter().next().unwrap();
    assert_eq!(a.commit(&mut h, "t", revoking, 7), 0);
    // b owns nothing yet.
    assert_eq!(
        b.commit(&mut h, "t", revoking, 8),
        code(ErrorCode::StaleMemberEpoch)
    );
    let r = h.commit(commit_request("g", "b", b.epoch, &[("t", revoking, 8)]));
    let msg = &r.topics[0].partitions[0].error_message;
    assert!(
        msg.contains(&format!("t-{revoking}")) && msg.contains('b'),
        "{msg}"
    );

    let stale = Client {
        epoch: a.epoch - 1,
        ..a.clone()
    };
    assert_eq!(
        stale.commit(&mut h, "t", revoking, 9),
        code(ErrorCode::StaleMemberEpoch)
    );
    let ahead = Client {
        epoch: a.epoch + 5,
        ..a.clone()
    };
    // Ahead of the coordinator is stale too (Kafka's new protocol): a commit never fences.
    assert_eq!(
        ahead.commit(&mut h, "t", revoking, 9),
        code(ErrorCode::StaleMemberEpoch)
    );
    let r = h.commit(commit_request("g", "a", a.epoch + 5, &[("t", revoking, 9)]));
    let msg = &r.topics[0].partitions[0].error_message;
    assert!(msg.contains("ahead of"), "{msg}");
    let r = h.commit(commit_request("g", "a", a.epoch - 1, &[("t", revoking, 9)]));
    let msg = &r.topics[0].partitions[0].error_message;
    assert!(msg.contains("behind"), "{msg}");
    let unknown = Client {
        epoch: 1,
        ..Client::new("g", "zz", &["t"])
    };
    assert_eq!(
        unknown.commit(&mut h, "t", 0, 9),
        code(ErrorCode::UnknownMemberId)
    );
    assert_eq!(
        a.commit(&mut h, "nope", 0, 9),
        code(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        a.commit(&mut h, "t", 99, 9),
        code(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        a.commit(&mut h, "t", -1, 9),
        code(ErrorCode::UnknownTopicOrPartition)
    );
    assert_eq!(
        fetch(&h, "g", &[("t", &[revoking])]),
        vec![("t".into(), revoking, 7)]
    );
    h.assert_load_equals_live();
}

#[test]
fn per_partition_errors_and_metadata_limit() {
    let cfg = GroupConfig {
        offset_metadata_max_bytes: 4,
        ..config()
    };
    let mut h = Harness::with_config(cfg, &[("t", 2)]);
    let mut req = commit_request("g", "", -1, &[("t", 0, 1), ("t", 1, 2), ("missing", 0, 3)]);
    req.topics[1].partitions[0].committed_metadata = "too long".into();
    let r = h.commit(req);
    let codes: Vec<i32> = r
        .topics
        .iter()
        .map(|t| t.partitions[0].error_code)
        .collect();
    assert_eq!(
        codes,
        vec![
            0,
            code(ErrorCode::OffsetMetadataTooLarge),
            code(ErrorCode::UnknownTopicOrPartition)
        ]
    );
    assert_eq!(h.log.len(), 1, "only the accepted partition is written");
    let r = h.commit(commit_request("", "", -1, &[("t", 0, 1), ("t", 1, 1)]));
    assert!(
        r.topics
            .iter()
            .all(|t| t.partitions[0].error_code == code(ErrorCode::InvalidGroupId))
    );
    let f = h.shard.offset_fetch(&OffsetFetchRequest {
        group_id: String::new(),
        topics: vec![],
    });
    assert_eq!(f.error_code, code(ErrorCode::InvalidGroupId));
}

#[test]
fn offsets_expire_only_in_empty_groups_after_retention() {
    let cfg = GroupConfig {
        offsets_retention_ms: 100_000,
        ..config()
    };
    let mut h = Harness::with_config(cfg, &[("t", 2)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    assert_eq!(a.commit(&mut h, "t", 0, 5), 0);
    h.now += 200_000;
    a.heartbeat(&mut h);
    h.log.extend(h.shard.cleanup_expired_offsets(h.now));
    assert_eq!(
        fetch(&h, "g", &[("t", &[0])]),
        vec![("t".into(), 0, 5)],
        "the group has members"
    );
    h.heartbeat(a.leave_request(-1));
    let empty_at = h.now;
    h.now = empty_at + 99_999;
    let out = h.shard.cleanup_expired_offsets(h.now);
    assert!(
        out.is_empty(),
        "retention counts from when the group became empty"
    );
    h.now = empty_at + 100_000;
    let out = h.shard.cleanup_expired_offsets(h.now);
    h.log.extend(out.clone());
    assert!(!out.is_empty());
    assert!(fetch(&h, "g", &[]).is_empty());
    assert_eq!(h.shard.group_count(), 0, "no members, no offsets: deleted");
    assert_eq!(h.describe("g").error_code, code(ErrorCode::GroupIdNotFound));
    h.assert_load_equals_live();
    assert_eq!(h.load().group_count(), 0);
}

/// Kafka's OffsetCommit v2-4 `retention_time_ms`: an offset committed with its own retention
/// expires that long after its commit once the group is empty — not after
/// `offsets.retention.minutes` — and keeps its expiry through a reload; the group's other
/// offsets keep the brokers' retention.
#[test]
fn an_offset_committed_with_its_own_retention_expires_by_it() {
    let cfg = GroupConfig {
        offsets_retention_ms: 100_000,
        ..config()
    };
    let mut h = Harness::with_config(cfg, &[("t", 2)]);
    let committed_at = h.now;
    let mut own = commit_request("g", "", -1, &[("t", 0, 7)]);
    own.retention_time_ms = Some(5_000);
    h.commit(own);
    let mut default = commit_request("g", "", -1, &[("t", 1, 9)]);
    default.retention_time_ms = Some(-1);
    h.commit(default);
    h.now = committed_at + 4_999;
    assert!(h.shard.cleanup_expired_offsets(h.now).is_empty());
    h.now = committed_at + 5_000;
    let out = h.shard.cleanup_expired_offsets(h.now);
    h.log.extend(out.clone());
    assert_eq!(out.len(), 1, "only the offset with its own retention");
    assert_eq!(fetch(&h, "g", &[]), vec![("t".into(), 1, 9)]);
    h.assert_load_equals_live();
    // Its expiry is in the record: a reloaded shard expires such an offset on time too.
    let mut again = commit_request("g", "", -1, &[("t", 0, 8)]);
    again.retention_time_ms = Some(1_000);
    h.commit(again);
    let mut loaded = h.load();
    loaded.on_loaded(&h.image, h.now);
    assert_eq!(loaded.cleanup_expired_offsets(h.now + 1_000).len(), 1);
}

/// A consumer group's offsets of a topic none of its members subscribes to expire
/// `offsets.retention.minutes` after their commit even while it has members (Kafka's new
/// coordinator); the subscribed topics' offsets stay.
#[test]
fn offsets_of_topics_no_member_subscribes_to_expire_while_the_group_has_members() {
    let cfg = GroupConfig {
        offsets_retention_ms: 100_000,
        ..config()
    };
    let mut h = Harness::with_config(cfg, &[("t", 1), ("u", 1)]);
    // Committed while the group had no members (a consumer that used `assign`).
    h.commit(commit_request("g", "", -1, &[("u", 0, 4)]));
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    settle(&mut h, std::slice::from_mut(&mut a));
    // With its own (short) retention: still kept while a member subscribes to t.
    let mut own = commit_request("g", "a", a.epoch, &[("t", 0, 5)]);
    own.retention_time_ms = Some(1_000);
    let r = h.commit(own);
    assert_eq!(r.topics[0].partitions[0].error_code, 0, "{r:?}");
    h.now += 99_999;
    a.heartbeat(&mut h);
    assert!(h.shard.cleanup_expired_offsets(h.now).is_empty());
    h.now += 1;
    a.heartbeat(&mut h);
    let out = h.shard.cleanup_expired_offsets(h.now);
    h.log.extend(out.clone());
    assert_eq!(out.len(), 1, "only u's offset");
    assert_eq!(fetch(&h, "g", &[]), vec![("t".into(), 0, 5)]);
    h.assert_load_equals_live();
}

#[test]
fn loaded_shard_restarts_the_retention_clock() {
    let cfg = GroupConfig {
        offsets_retention_ms: 100_000,
        ..config()
    };
    let mut h = Harness::with_config(cfg, &[("t", 2)]);
    h.commit(commit_request("g", "", -1, &[("t", 0, 1)]));
    h.now += 90_000;
    let mut loaded = h.load();
    loaded.on_loaded(&h.image, h.now);
    assert!(loaded.cleanup_expired_offsets(h.now + 20_000).is_empty());
    assert!(!loaded.cleanup_expired_offsets(h.now + 100_000).is_empty());
    // The live shard expires it on time.
    assert!(!h.shard.cleanup_expired_offsets(h.now + 10_000).is_empty());
}

#[test]
fn offsets_of_deleted_partitions_are_deleted() {
    let mut h = Harness::new(&[("t", 4), ("u", 1), ("keep", 1)]);
    h.commit(commit_request(
        "g",
        "",
        -1,
        &[("t", 0, 1), ("t", 3, 2), ("u", 0, 3), ("keep", 0, 4)],
    ));
    h.commit(commit_request("only-u", "", -1, &[("u", 0, 5)]));
    assert_eq!(h.shard.group_count(), 2);

    // u is deleted; t is deleted and created again with 2 partitions.
    h.image.topics.remove("u");
    h.image.topics.insert("t".into(), topic("t", 2));
    let before = h.log.len();
    assert_eq!(h.metadata_update(), 3);
    assert!(
        h.log[before..].iter().all(|r| r.value.is_none()),
        "tombstones"
    );
    assert_eq!(
        fetch(&h, "g", &[]),
        vec![("keep".into(), 0, 4), ("t".into(), 0, 1)]
    );
    assert!(fetch(&h, "only-u", &[]).is_empty());
    assert_eq!(
        h.shard.group_count(),
        1,
        "a group left without offsets is gone"
    );
    assert_eq!(h.metadata_update(), 0, "nothing more to delete");
    h.assert_load_equals_live();

    // A shard loaded with an image that lost a topic deletes its offsets too.
    h.commit(commit_request("g", "", -1, &[("t", 1, 6)]));
    h.image.topics.remove("keep");
    let mut loaded = h.load();
    let out = loaded.on_loaded(&h.image, h.now);
    assert_eq!(out.len(), 1, "the tombstone of keep-0 (already replayed)");
    let f = loaded.offset_fetch(&OffsetFetchRequest {
        group_id: "g".into(),
        topics: vec![],
    });
    let left: Vec<(String, i32)> = f
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.clone(), p.index)))
        .collect();
    assert_eq!(left, vec![("t".into(), 0), ("t".into(), 1)]);
}

/// A topic deleted and re-created under the same name and size between two metadata updates
/// (or before a commit to the new one) loses the old incarnation's offsets: they would make
/// its consumers resume mid-way and skip records.
#[test]
fn offsets_of_a_recreated_topic_are_deleted() {
    let mut h = Harness::new(&[("t", 2), ("keep", 1)]);
    h.commit(commit_request(
        "g",
        "",
        -1,
        &[("t", 0, 10), ("t", 1, 20), ("keep", 0, 4)],
    ));
    h.commit(commit_request("other", "", -1, &[("t", 1, 30)]));
    assert_eq!(h.metadata_update(), 0);

    // Re-created, same size, new id: seen by a metadata update.
    let mut recreated = topic("t", 2);
    recreated.id = "id-t-2".into();
    h.image.topics.insert("t".into(), recreated);
    assert_eq!(h.metadata_update(), 3);
    assert_eq!(fetch(&h, "g", &[]), vec![("keep".into(), 0, 4)]);
    assert!(fetch(&h, "other", &[]).is_empty());
    h.assert_load_equals_live();

    // Re-created again, and committed to before any metadata update: the commit goes in, the
    // old incarnation's offsets do not stay beside it.
    h.commit(commit_request("g", "", -1, &[("t", 0, 11), ("t", 1, 21)]));
    let mut again = topic("t", 2);
    again.id = "id-t-3".into();
    h.image.topics.insert("t".into(), again);
    h.commit(commit_request("other", "", -1, &[("t", 0, 1)]));
    assert_eq!(fetch(&h, "g", &[]), vec![("keep".into(), 0, 4)]);
    assert_eq!(fetch(&h, "other", &[]), vec![("t".into(), 0, 1)]);
    assert_eq!(h.metadata_update(), 0, "nothing more to delete");
    h.assert_load_equals_live();
}
