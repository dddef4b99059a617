//! Partition reassignment, preferred-leader election and cluster-level configs against a real
//! controller, with brokers played by the test (registrations, heartbeats, AlterPartition).

mod common;

use std::time::Duration;

use common::*;
use rill_protocol::ErrorCode;
use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::proto::*;

async fn image(q: &Quorum, leader: usize) -> MetadataImage {
    image_of(&q.image(leader).await)
}

fn reassign(name: &str, parts: &[(i32, Option<Vec<i32>>)]) -> AlterPartitionReassignmentsRequest {
    AlterPartitionReassignmentsRequest {
        topics: vec![ReassignableTopic {
            name: name.into(),
            partitions: parts
                .iter()
                .map(|(index, r)| ReassignablePartition {
                    index: *index,
                    replicas: r.clone().map(|ids| IsrList { ids }),
                })
                .collect(),
        }],
    }
}

async fn alter_reassignments(
    q: &Quorum,
    leader: usize,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    q.call(leader, |mut c| {
        let req = req.clone();
        async move { c.alter_partition_reassignments(req).await }
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassignment_adds_then_removes_replicas_once_the_new_ones_are_in_sync() {
    let q = Quorum::start(1, &["auto.leader.rebalance.enable=false"]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let _b = [
        FakeBroker::start(&q, 1).await,
        FakeBroker::start(&q, 2).await,
        FakeBroker::start(&q, 3).await,
    ];
    create(&q, leader, vec![topic("t", 2, 1)]).await;
    let before = image(&q, leader).await;
    let p0 = before.topics["t"].partitions[0].clone();
    let old = p0.leader;
    let new = (1..=3).find(|b| *b != old).unwrap();

    // One bad partition refuses the whole request: nothing changes.
    let r = alter_reassignments(
        &q,
        leader,
        reassign("t", &[(0, Some(vec![new])), (1, Some(vec![9]))]),
    )
    .await;
    assert_eq!(
        r.error_code,
        ErrorCode::InvalidReplicaAssignment as i32,
        "{r:?}"
    );
    assert!(r.error_message.contains("nothing was changed"), "{r:?}");
    let results = &r.topics[0].partitions;
    assert_eq!(results[0].error_code, ErrorCode::None as i32);
    assert_eq!(
        results[1].error_code,
        ErrorCode::InvalidReplicaAssignment as i32
    );
    for (parts, code) in [
        (
            vec![(0, Some(vec![new])), (0, Some(vec![old]))],
            ErrorCode::InvalidRequest,
        ),
        (
            vec![(5, Some(vec![new]))],
            ErrorCode::UnknownTopicOrPartition,
        ),
        (vec![(0, Some(vec![]))], ErrorCode::InvalidReplicaAssignment),
        (
            vec![(0, Some(vec![new, new]))],
            ErrorCode::InvalidReplicaAssignment,
        ),
        (vec![(0, None)], ErrorCode::InvalidRequest),
    ] {
        let r = alter_reassignments(&q, leader, reassign("t", &parts)).await;
        assert_eq!(r.error_code, code as i32, "{parts:?}: {r:?}");
    }
    let r = alter_reassignments(&q, leader, reassign("nosuch", &[(0, Some(vec![1]))])).await;
    assert_eq!(r.error_code, ErrorCode::UnknownTopicOrPartition as i32);
    let unchanged = image(&q, leader).await;
    assert_eq!(unchanged.topics, before.topics);
    assert!(unchanged.reassignments.is_empty());

    // Start: the new replica is added, the old one stays until the new one is in sync.
    let r = alter_reassignments(&q, leader, reassign("t", &[(0, Some(vec![new]))])).await;
    assert_eq!(r.error_code, 0, "{r:?}");
    let during = image(&q, leader).await;
    let p = &during.topics["t"].partitions[0];
    assert_eq!((p.replicas.clone(), p.leader), (vec![new, old], old));
    let ongoing = during.reassignment("t", 0).unwrap();
    assert_eq!(
        (
            ongoing.adding_replicas.clone(),
            ongoing.removing_replicas.clone()
        ),
        (vec![new], vec![old])
    );
    let listed = q
        .call(leader, |mut c| async move {
            c.list_partition_reassignments(ListPartitionReassignmentsRequest { topics: vec![] })
                .await
        })
        .await
        .unwrap();
    let l = &listed.topics[0].partitions[0];
    assert_eq!(
        (
            l.index,
            l.adding_replicas.clone(),
            l.removing_replicas.clone()
        ),
        (0, vec![new], vec![old])
    );

    // The leader's ISR expansion brings the new replica in: the reassignment completes, and
    // since the leader was being removed, leadership moves (new leader epoch).
    let leader_epoch = during.brokers[&old].epoch;
    let r = q
        .call(leader, |mut c| async move {
            c.alter_partition(AlterPartitionRequest {
                broker_id: old,
                broker_epoch: leader_epoch,
                topics: vec![AlterPartitionTopic {
                    name: "t".into(),
                    topic_id: String::new(),
                    partitions: vec![AlterPartitionData {
                        index: 0,
                        leader_epoch: p0.leader_epoch,
                        new_isr: vec![old, new],
                        partition_epoch: p0.partition_epoch + 1,
                        ..Default::default()
                    }],
                }],
            })
            .await
        })
        .await
        .unwrap();
    let a = &r.topics[0].partitions[0];
    assert_eq!(a.error_code, 0, "{a:?}");
    assert_eq!((a.leader_id, a.isr.clone()), (new, vec![new]));
    let after = image(&q, leader).await;
    let p = &after.topics["t"].partitions[0];
    assert_eq!(
        (p.replicas.clone(), p.isr.clone(), p.leader),
        (vec![new], vec![new], new)
    );
    assert_eq!(p.leader_epoch, p0.leader_epoch + 1);
    assert!(after.reassignments.is_empty());

    // Cancel puts the original replicas back.
    let p1 = after.topics["t"].partitions[1].clone();
    let other = (1..=3).find(|b| !p1.replicas.contains(b)).unwrap();
    let r = alter_reassignments(&q, leader, reassign("t", &[(1, Some(vec![other]))])).await;
    assert_eq!(r.error_code, 0, "{r:?}");
    let r = alter_reassignments(&q, leader, reassign("t", &[(1, None)])).await;
    assert_eq!(r.error_code, 0, "{r:?}");
    let cancelled = image(&q, leader).await;
    let p = &cancelled.topics["t"].partitions[1];
    assert_eq!(
        (p.replicas.clone(), p.leader),
        (p1.replicas.clone(), p1.leader)
    );
    assert!(cancelled.reassignments.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn elect_leaders_and_cluster_configs() {
    let q = Quorum::start(1, &["auto.leader.rebalance.enable=false"]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    create(&q, leader, vec![topic("t", 1, 1)]).await;
    let elect = |topics: Vec<ElectLeadersTopic>| {
        let q = &q;
        async move {
            q.call(leader, |mut c| {
                let topics = topics.clone();
                async move { c.elect_leaders(ElectLeadersRequest { topics }).await }
            })
            .await
            .unwrap()
        }
    };
    let r = elect(vec![]).await;
    let p = &r.topics[0].partitions[0];
    assert!(
        p.election_not_needed && p.error_code == 0 && p.leader == 1,
        "{r:?}"
    );
    let r = elect(vec![ElectLeadersTopic {
        name: "nosuch".into(),
        partitions: vec![],
    }])
    .await;
    assert_eq!(
        r.topics[0].partitions[0].error_code,
        ErrorCode::UnknownTopicOrPartition as i32
    );

    let alter = |name: &str, configs: Vec<(&str, Option<&str>)>| {
        let q = &q;
        let resource = AlterConfigsResource {
            topic: name.into(),
            resource_type: ConfigResourceType::Broker as i32,
            configs: configs
                .into_iter()
                .map(|(k, v)| AlterableConfig {
                    name: k.into(),
                    operation: if v.is_some() {
                        ConfigOperation::Set
                    } else {
                        ConfigOperation::Delete
                    } as i32,
                    value: v.map(Into::into),
                })
                .collect(),
        };
        async move {
            q.call(leader, |mut c| {
                let resource = resource.clone();
                async move {
                    c.incremental_alter_configs(IncrementalAlterConfigsRequest {
                        resources: vec![resource],
                        validate_only: false,
                    })
                    .await
                }
            })
            .await
            .unwrap()
            .results[0]
                .clone()
        }
    };
    let ok = alter(
        "",
        vec![
            ("leader.replication.throttled.rate", Some("1048576")),
            ("follower.replication.throttled.rate", Some("2048")),
        ],
    )
    .await;
    assert_eq!(ok.error_code, 0, "{ok:?}");
    for (name, configs, code) in [
        (
            "1",
            vec![("leader.replication.throttled.rate", Some("1"))],
            ErrorCode::InvalidRequest,
        ),
        (
            "",
            vec![("leader.replication.throttled.rate", Some("-1"))],
            ErrorCode::InvalidConfig,
        ),
        (
            "",
            vec![("retention.ms", Some("1"))],
            ErrorCode::InvalidConfig,
        ),
    ] {
        let r = alter(name, configs.clone()).await;
        assert_eq!(r.error_code, code as i32, "{configs:?}: {r:?}");
    }
    let r = alter("", vec![("follower.replication.throttled.rate", None)]).await;
    assert_eq!(r.error_code, 0, "{r:?}");
    // What brokers see: the cluster configs in their metadata image.
    let image = image(&q, leader).await;
    assert_eq!(
        image.cluster_configs.into_iter().collect::<Vec<_>>(),
        [(
            "leader.replication.throttled.rate".to_owned(),
            "1048576".to_owned()
        )]
    );
}
