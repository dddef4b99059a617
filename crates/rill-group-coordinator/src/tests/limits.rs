//! No record the shard writes exceeds `max_record_bytes`: requests that would write one are
//! refused before anything is replayed, and a group's subscribed topics are capped.

use rill_protocol::ErrorCode;
use rill_protocol::proto::{
    OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic, TopicNames,
};

use super::harness::*;
use crate::GroupConfig;

fn code(c: ErrorCode) -> i32 {
    c as i32
}

#[test]
fn a_heartbeat_whose_member_record_would_be_too_large_is_refused() {
    let cfg = GroupConfig {
        max_record_bytes: 2_000,
        ..config()
    };
    let names: Vec<String> = (0..100).map(|i| format!("{i:0>40}")).collect();
    let mut topics: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 1)).collect();
    topics.push(("t", 2));
    let mut h = Harness::with_config(cfg, &topics);
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    let before = h.log.len();
    let mut req = a.heartbeat_request();
    req.subscribed_topic_names = Some(TopicNames {
        names: names.clone(),
    });
    let r = h.heartbeat(req);
    assert_eq!(r.error_code, code(ErrorCode::InvalidRequest));
    assert!(
        r.error_message.contains("max_record_bytes"),
        "{}",
        r.error_message
    );
    assert_eq!(h.log.len(), before, "nothing written");
    // The member goes on with its subscription.
    let r = h.heartbeat(a.heartbeat_request());
    assert_eq!(r.error_code, 0);
    assert_eq!(
        h.describe("g").members[0].subscribed_topic_names,
        vec!["t".to_string()]
    );
    // The same on a join.
    let mut join = Client::new("g", "b", &[]).join_request();
    join.subscribed_topic_names = Some(TopicNames { names });
    let r = h.heartbeat(join);
    assert_eq!(r.error_code, code(ErrorCode::InvalidRequest));
    assert_eq!(h.describe("g").members.len(), 1);
    h.assert_load_equals_live();
}

#[test]
fn an_offset_whose_record_would_be_too_large_is_refused() {
    let cfg = GroupConfig {
        max_record_bytes: 300,
        offset_metadata_max_bytes: 4096,
        ..config()
    };
    let mut h = Harness::with_config(cfg, &[("t", 2)]);
    let r = h.commit(OffsetCommitRequest {
        group_id: "g".into(),
        member_epoch: -1,
        member_id: String::new(),
        retention_time_ms: None,
        topics: vec![OffsetCommitTopic {
            name: "t".into(),
            partitions: vec![
                OffsetCommitPartition {
                    index: 0,
                    committed_offset: 1,
                    committed_leader_epoch: -1,
                    committed_metadata: "m".repeat(400),
                },
                OffsetCommitPartition {
                    index: 1,
                    committed_offset: 2,
                    committed_leader_epoch: -1,
                    committed_metadata: "small".into(),
                },
            ],
        }],
    });
    let p = &r.topics[0].partitions;
    assert_eq!(p[0].error_code, code(ErrorCode::InvalidCommitOffsetSize));
    assert!(
        p[0].error_message.contains("max_record_bytes"),
        "{}",
        p[0].error_message
    );
    assert_eq!(p[1].error_code, 0);
    assert_eq!(h.log.len(), 1, "only the partition that fits is written");
    h.assert_load_equals_live();
}

#[test]
fn a_regex_group_in_a_large_cluster_is_capped_to_what_its_records_hold() {
    let cfg = GroupConfig {
        max_record_bytes: 4_000,
        ..config()
    };
    let names: Vec<String> = (0..300).map(|i| format!("orders-{i:04}")).collect();
    let topics: Vec<(&str, usize)> = names.iter().map(|n| (n.as_str(), 3)).collect();
    let mut h = Harness::with_config(cfg, &topics);
    let mut a = Client::new("g", "a", &[]);
    a.regex = Some("orders-.*".into());
    let mut join = a.join_request();
    join.subscribed_topic_names = None;
    let r = h.heartbeat(join);
    a.apply(&r);
    let mut s = Client::new("g", "s1", &[]).static_member("i1");
    s.regex = Some("orders-.*".into());
    let mut join = s.join_request();
    join.subscribed_topic_names = None;
    let r = h.heartbeat(join);
    s.apply(&r);
    let mut clients = vec![a, s];
    settle(&mut h, &mut clients);
    let assigned: std::collections::BTreeSet<String> = clients
        .iter()
        .flat_map(|c| c.owned.keys().cloned())
        .collect();
    assert!(!assigned.is_empty());
    assert!(assigned.len() < names.len(), "capped: {}", assigned.len());
    // The first topics by name are the ones assigned.
    let first: std::collections::BTreeSet<String> =
        names.iter().take(assigned.len()).cloned().collect();
    assert_eq!(assigned, first);

    // More topics, grown topics, a deleted one: every record still fits (the harness checks).
    for i in 300..400 {
        let n = format!("orders-{i:04}");
        h.image.topics.insert(n.clone(), topic(&n, 2));
    }
    h.image
        .topics
        .insert("orders-0000".into(), topic("orders-0000", 40));
    h.image.topics.remove("orders-0001");
    h.metadata_update();
    settle(&mut h, &mut clients);
    // A static member restarting under a new id takes its assignment over.
    h.heartbeat(clients[1].leave_request(-2));
    clients[1].reset();
    clients[1].member_id = "s2".into();
    let mut join = clients[1].join_request();
    join.subscribed_topic_names = None;
    let r = h.heartbeat(join);
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    clients[1].apply(&r);
    settle(&mut h, &mut clients);
    assert_exclusive(&h, &clients);
    h.assert_load_equals_live();

    // Loaded with a smaller image, on_loaded's records fit too.
    h.image.topics.retain(|n, _| n.as_str() < "orders-0020");
    let mut loaded = h.load();
    let out = loaded.on_loaded(&h.image, h.now);
    assert!(!out.is_empty());
    assert_fit(&h.config, &out);
}
