use rill_protocol::ErrorCode;
use rill_protocol::proto::{
    OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic, OffsetDeleteRequest,
    OffsetFetchRequest, OffsetFetchTopic,
};

use super::harness::*;

fn code(c: ErrorCode) -> i32 {
    c as i32
}

fn outside_commit(h: &mut Harness, group: &str, topic: &str, partition: i32) {
    let r = h.commit(OffsetCommitRequest {
        group_id: group.into(),
        member_epoch: -1,
        member_id: String::new(),
        retention_time_ms: None,
        topics: vec![OffsetCommitTopic {
            name: topic.into(),
            partitions: vec![OffsetCommitPartition {
                index: partition,
                committed_offset: 1,
                committed_leader_epoch: -1,
                committed_metadata: String::new(),
            }],
        }],
    });
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
}

#[test]
fn list_and_describe() {
    let mut h = Harness::new(&[("t", 3)]);
    let mut a = Client::new("g1", "b-member", &["t"]);
    let mut b = Client::new("g1", "a-member", &["t"]);
    a.join(&mut h);
    b.join(&mut h);
    outside_commit(&mut h, "g2", "t", 0);
    let all = h.shard.list_groups(&[]);
    let states: Vec<(&str, &str)> = all
        .iter()
        .map(|g| (g.group_id.as_str(), g.group_state.as_str()))
        .collect();
    assert_eq!(states, vec![("g1", "Reconciling"), ("g2", "Empty")]);
    assert_eq!(h.shard.list_groups(&["empty".into()]).len(), 1);
    assert_eq!(
        h.shard.list_groups(&["Stable".into(), "Dead".into()]).len(),
        0
    );
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    assert_eq!(h.shard.list_groups(&["Stable".into()])[0].group_id, "g1");
    let d = h.describe("g1");
    let ids: Vec<&str> = d.members.iter().map(|m| m.member_id.as_str()).collect();
    assert_eq!(ids, vec!["a-member", "b-member"], "sorted members");
    for m in &d.members {
        assert_eq!(m.assignment, m.target_assignment);
        for tp in &m.assignment {
            assert!(tp.partitions.windows(2).all(|w| w[0] < w[1]));
        }
    }
    let missing = h.describe("nope");
    assert_eq!(missing.error_code, code(ErrorCode::GroupIdNotFound));
    assert_eq!(h.shard.group_count(), 2);
}

#[test]
fn delete_groups() {
    let mut h = Harness::new(&[("t", 3)]);
    let mut a = Client::new("live", "a", &["t"]);
    a.join(&mut h);
    outside_commit(&mut h, "offsets-only", "t", 0);
    let mut b = Client::new("left", "b", &["t"]);
    b.join(&mut h);
    b.commit(&mut h, "t", 1, 5);
    h.heartbeat(b.leave_request(-1));

    let r = h.shard.delete_groups(&[
        "live".into(),
        "offsets-only".into(),
        "left".into(),
        "unknown".into(),
        String::new(),
    ]);
    h.log.extend(r.records);
    let codes: Vec<i32> = r.response.iter().map(|x| x.error_code).collect();
    assert_eq!(
        codes,
        vec![
            code(ErrorCode::NonEmptyGroup),
            0,
            0,
            code(ErrorCode::GroupIdNotFound),
            code(ErrorCode::InvalidGroupId)
        ]
    );
    assert!(r.response[0].error_message.contains("member"));
    let ids: Vec<String> = h
        .shard
        .list_groups(&[])
        .into_iter()
        .map(|g| g.group_id)
        .collect();
    assert_eq!(ids, vec!["live"]);
    let f = h.shard.offset_fetch(&OffsetFetchRequest {
        group_id: "left".into(),
        topics: vec![OffsetFetchTopic {
            name: "t".into(),
            partition_indexes: vec![1],
        }],
    });
    assert_eq!(f.topics[0].partitions[0].committed_offset, -1);
    h.assert_load_equals_live();
    // Deleted groups start over.
    let mut b2 = Client::new("left", "b", &["t"]);
    let r = b2.join(&mut h);
    assert_eq!(r.member_epoch, 1);
    h.assert_load_equals_live();
}

#[test]
fn offset_delete() {
    let mut h = Harness::new(&[("t", 2), ("u", 2), ("v-1", 1)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.regex = Some("v-.*".into());
    a.join(&mut h);
    let mut c = Client::new("other", "c", &["u"]);
    c.join(&mut h);
    h.heartbeat(c.leave_request(-1));
    outside_commit(&mut h, "other", "u", 0);
    outside_commit(&mut h, "other", "u", 1);
    a.commit(&mut h, "t", 0, 3);

    let r = h.shard.offset_delete(OffsetDeleteRequest {
        group_id: "g".into(),
        topics: vec![
            OffsetFetchTopic {
                name: "t".into(),
                partition_indexes: vec![0],
            },
            OffsetFetchTopic {
                name: "v-1".into(),
                partition_indexes: vec![0],
            },
            OffsetFetchTopic {
                name: "u".into(),
                partition_indexes: vec![0],
            },
        ],
    });
    h.log.extend(r.records.clone());
    assert!(r.records.is_empty(), "nothing deletable had an offset");
    let codes: Vec<i32> = r
        .response
        .topics
        .iter()
        .map(|t| t.partitions[0].error_code)
        .collect();
    assert_eq!(
        codes,
        vec![
            code(ErrorCode::GroupSubscribedToTopic),
            code(ErrorCode::GroupSubscribedToTopic),
            0
        ]
    );

    let r = h.shard.offset_delete(OffsetDeleteRequest {
        group_id: "other".into(),
        topics: vec![OffsetFetchTopic {
            name: "u".into(),
            partition_indexes: vec![0, 1],
        }],
    });
    assert_eq!(r.records.len(), 2);
    h.log.extend(r.records);
    let r = h.shard.offset_delete(OffsetDeleteRequest {
        group_id: "nope".into(),
        topics: vec![],
    });
    assert_eq!(r.response.error_code, code(ErrorCode::GroupIdNotFound));
    h.assert_load_equals_live();
}
