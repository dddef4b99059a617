//! Arbitrary requests never panic, never write records when refused, and leave a state that
//! loads back identically.

use proptest::prelude::*;
use rill_protocol::proto::{
    ConsumerGroupHeartbeatRequest, OffsetCommitPartition, OffsetCommitRequest, OffsetCommitTopic,
    OffsetDeleteRequest, OffsetFetchRequest, OffsetFetchTopic, TopicNames, TopicPartitions,
    TopicPartitionsList,
};

use super::harness::*;

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just(String::new()),
        Just("g".to_string()),
        Just("t".to_string()),
        Just("u".to_string()),
        Just("m1".to_string()),
        Just("__consumer_offsets".to_string()),
        "[a-z(\\[.*|]{0,6}",
        "\\PC{0,4}",
    ]
}

fn partitions() -> impl Strategy<Value = Option<TopicPartitionsList>> {
    prop::option::of(
        prop::collection::vec((name(), prop::collection::vec(-2i32..8, 0..4)), 0..3).prop_map(
            |v| TopicPartitionsList {
                topics: v
                    .into_iter()
                    .map(|(topic, partitions)| TopicPartitions { topic, partitions })
                    .collect(),
            },
        ),
    )
}

prop_compose! {
    fn heartbeat()(
        group_id in prop_oneof![Just("g".to_string()), name()],
        member_id in prop_oneof![Just("m1".to_string()), Just("m2".to_string()), name()],
        member_epoch in prop_oneof![Just(0), Just(-1), Just(-2), -4i32..6, any::<i32>()],
        instance_id in prop::option::of(prop_oneof![Just("i1".to_string()), name()]),
        rack_id in prop::option::of(name()),
        rebalance_timeout_ms in prop_oneof![Just(-1), Just(30_000), any::<i32>()],
        names in prop::option::of(prop::collection::vec(name(), 0..3)),
        regex in prop::option::of(name()),
        server_assignor in prop::option::of(prop_oneof![Just("uniform".to_string()), Just("range".to_string()), name()]),
        owned in partitions(),
    ) -> ConsumerGroupHeartbeatRequest {
        ConsumerGroupHeartbeatRequest {
            group_id,
            member_id,
            member_epoch,
            instance_id,
            rack_id,
            rebalance_timeout_ms,
            subscribed_topic_names: names.map(|names| TopicNames { names }),
            subscribed_topic_regex: regex,
            server_assignor,
            owned_partitions: owned,
            client_id: "c".into(),
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Heartbeat(ConsumerGroupHeartbeatRequest),
    Commit(String, String, i32, String, i32, i64, String),
    Delete(String),
    OffsetDelete(String, String, i32),
    Advance(i64),
    Cleanup,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => heartbeat().prop_map(Op::Heartbeat),
        2 => (name(), name(), any::<i32>(), name(), -2i32..8, any::<i64>(), "\\PC{0,6}")
            .prop_map(|(g, m, e, t, p, o, md)| Op::Commit(g, m, e, t, p, o, md)),
        1 => name().prop_map(Op::Delete),
        1 => (name(), name(), -1i32..4).prop_map(|(g, t, p)| Op::OffsetDelete(g, t, p)),
        1 => (0i64..100_000).prop_map(Op::Advance),
        1 => Just(Op::Cleanup),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]

    #[test]
    fn arbitrary_requests_are_safe(
        ops in prop::collection::vec(op(), 1..40),
        max_record_bytes in prop_oneof![Just(1_000_000usize), 330usize..420],
    ) {
        let mut cfg = config();
        cfg.offset_metadata_max_bytes = 8;
        cfg.max_size = 3;
        cfg.offsets_retention_ms = 50_000;
        // Often small enough that some requests' records would not fit (refused) and that
        // the subscribed topics get capped.
        cfg.max_record_bytes = max_record_bytes;
        let mut h = Harness::with_config(cfg, &[("t", 3), ("u", 2), ("__consumer_offsets", 2)]);
        for op in ops {
            match op {
                Op::Heartbeat(r) => {
                    h.heartbeat(r);
                }
                Op::Commit(group_id, member_id, member_epoch, topic, index, offset, md) => {
                    h.commit(OffsetCommitRequest {
                        group_id,
                        member_epoch,
                        member_id,
                        retention_time_ms: None,
                        topics: vec![OffsetCommitTopic {
                            name: topic,
                            partitions: vec![OffsetCommitPartition {
                                index,
                                committed_offset: offset,
                                committed_leader_epoch: -1,
                                committed_metadata: md,
                            }],
                        }],
                    });
                }
                Op::Delete(g) => {
                    let r = h.shard.delete_groups(&[g]);
                    h.append(r.records);
                }
                Op::OffsetDelete(g, t, p) => {
                    let r = h.shard.offset_delete(OffsetDeleteRequest {
                        group_id: g,
                        topics: vec![OffsetFetchTopic { name: t, partition_indexes: vec![p] }],
                    });
                    h.append(r.records);
                }
                Op::Advance(ms) => {
                    h.now += ms;
                    h.expire();
                }
                Op::Cleanup => {
                    let r = h.shard.cleanup_expired_offsets(h.now);
                    h.append(r);
                }
            }
            // Reads never panic either.
            for g in h.shard.list_groups(&[]) {
                h.shard.describe_group(&g.group_id);
                h.shard.offset_fetch(&OffsetFetchRequest { group_id: g.group_id, topics: vec![] });
            }
            let _ = h.shard.next_deadline_ms();
        }
        h.assert_load_equals_live();
    }
}
