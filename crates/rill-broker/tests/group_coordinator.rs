//! The group coordinator over real processes, spoken to in raw gRPC: routing and creation of
//! `__consumer_offsets`, committed offsets and group membership surviving the SIGKILL of the
//! coordinator's broker, clear errors (nothing changed) for bad requests, and no offsets
//! carried over to a re-created topic.

mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use rill_protocol::proto::group_coordinator_client::GroupCoordinatorClient;
use rill_protocol::proto::*;
use rill_protocol::{ErrorCode, TopicPartition};
use tonic::transport::Channel;

const OFFSETS: &str = "__consumer_offsets";

async fn coordinator_client(addr: &str) -> GroupCoordinatorClient<Channel> {
    GroupCoordinatorClient::connect(format!("http://{addr}"))
        .await
        .unwrap()
}

/// Asks brokers (in turn) for the group's coordinator until one names a live broker that
/// serves the group.
async fn find_coordinator(cluster: &Cluster, group: &str) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut last = String::new();
    loop {
        for addr in cluster.bootstrap() {
            let Ok(mut c) = GroupCoordinatorClient::connect(format!("http://{addr}")).await else {
                continue;
            };
            match c
                .find_coordinator(FindCoordinatorRequest {
                    keys: vec![group.into()],
                })
                .await
            {
                Ok(r) => {
                    let c = &r.into_inner().coordinators[0];
                    if c.error_code == 0 {
                        let found = format!("{}:{}", c.host, c.port);
                        if !cluster.bootstrap().contains(&found) {
                            last = format!("{found} is not running");
                            continue;
                        }
                        // Ready once it serves the group (it may still be loading).
                        match coordinator_client(&found)
                            .await
                            .offset_fetch(OffsetFetchRequest {
                                group_id: group.into(),
                                topics: vec![],
                            })
                            .await
                        {
                            Ok(r) if r.get_ref().error_code == 0 => return (c.node_id, found),
                            Ok(r) => last = r.into_inner().error_message,
                            Err(e) => last = e.to_string(),
                        }
                    } else {
                        last = format!("{}: {}", c.error_code, c.error_message);
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator for {group}: {last}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn commit_request(
    group: &str,
    member: &str,
    epoch: i32,
    offsets: &[(&str, i32, i64)],
) -> OffsetCommitRequest {
    let mut topics: Vec<OffsetCommitTopic> = Vec::new();
    for (topic, partition, offset) in offsets {
        let p = OffsetCommitPartition {
            index: *partition,
            committed_offset: *offset,
            committed_leader_epoch: -1,
            committed_metadata: String::new(),
        };
        match topics.iter_mut().find(|t| t.name == *topic) {
            Some(t) => t.partitions.push(p),
            None => topics.push(OffsetCommitTopic {
                name: (*topic).into(),
                partitions: vec![p],
            }),
        }
    }
    OffsetCommitRequest {
        group_id: group.into(),
        member_epoch: epoch,
        member_id: member.into(),
        topics,
        retention_time_ms: None,
    }
}

fn commit_errors(r: &OffsetCommitResponse) -> Vec<(String, i32, ErrorCode, String)> {
    r.topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    t.name.clone(),
                    p.index,
                    ErrorCode::try_from(p.error_code).unwrap(),
                    p.error_message.clone(),
                )
            })
        })
        .collect()
}

/// Commits and asserts every partition was accepted.
async fn commit_ok(c: &mut GroupCoordinatorClient<Channel>, request: OffsetCommitRequest) {
    let r = c.offset_commit(request).await.unwrap().into_inner();
    assert!(
        commit_errors(&r).iter().all(|e| e.2 == ErrorCode::None),
        "{:?}",
        commit_errors(&r)
    );
}

async fn committed(
    c: &mut GroupCoordinatorClient<Channel>,
    group: &str,
) -> Result<Vec<(TopicPartition, i64)>, String> {
    let r = c
        .offset_fetch(OffsetFetchRequest {
            group_id: group.into(),
            topics: vec![],
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    if r.error_code != 0 {
        return Err(format!("{}: {}", r.error_code, r.error_message));
    }
    let mut out: Vec<(TopicPartition, i64)> = r
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    TopicPartition::new(t.name.clone(), p.index),
                    p.committed_offset,
                )
            })
        })
        .collect();
    out.sort();
    Ok(out)
}

fn join_request(group: &str, member: &str, topics: &[&str]) -> ConsumerGroupHeartbeatRequest {
    ConsumerGroupHeartbeatRequest {
        group_id: group.into(),
        member_id: member.into(),
        member_epoch: 0,
        rebalance_timeout_ms: 30_000,
        subscribed_topic_names: Some(TopicNames {
            names: topics.iter().map(|t| t.to_string()).collect(),
        }),
        owned_partitions: Some(TopicPartitionsList { topics: vec![] }),
        client_id: "test".into(),
        ..Default::default()
    }
}

fn owned(assignment: &Option<TopicPartitionsList>) -> Vec<(String, i32)> {
    let mut out: Vec<(String, i32)> = assignment
        .iter()
        .flat_map(|a| &a.topics)
        .flat_map(|t| t.partitions.iter().map(|p| (t.topic.clone(), *p)))
        .collect();
    out.sort();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn find_coordinator_creates_the_offsets_topic_and_only_the_coordinator_serves_the_group() {
    let cluster = Cluster::start(1, 3, &["offsets.topic.num.partitions=6"]).await;
    let (coordinator, addr) = find_coordinator(&cluster, "orders").await;
    // The topic: 6 compacted partitions with 3 replicas, and the group on Kafka's partition.
    let client = cluster.client();
    let parts = client.partitions(OFFSETS).await.unwrap();
    assert_eq!(parts.len(), 6);
    let md = client.refresh(&[OFFSETS.into()]).await.unwrap();
    assert!(
        md.topics[0]
            .partitions
            .iter()
            .all(|p| p.replicas.len() == 3),
        "{md:?}"
    );
    let index = rill_group_coordinator::partition_for("orders", 6);
    assert_eq!(parts[index as usize].leader, coordinator);
    let configs = client
        .admin(Duration::from_secs(10), |mut c| async move {
            c.describe_configs(DescribeConfigsRequest {
                topics: vec![OFFSETS.into()],
            })
            .await
        })
        .await
        .unwrap();
    let policy = configs.results[0]
        .configs
        .iter()
        .find(|c| c.name == "cleanup.policy")
        .map(|c| c.value.clone());
    assert_eq!(policy.as_deref(), Some("compact"));

    // The coordinator serves the group; another broker refuses with NOT_COORDINATOR.
    let mut c = coordinator_client(&addr).await;
    let r = c
        .consumer_group_heartbeat(join_request("orders", "", &["t"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert!(!r.member_id.is_empty());
    assert!(r.member_epoch > 0);
    assert_eq!(r.heartbeat_interval_ms, 5000);
    let other = cluster
        .bootstrap()
        .into_iter()
        .find(|a| *a != addr)
        .unwrap();
    let r = coordinator_client(&other)
        .await
        .consumer_group_heartbeat(join_request("orders", "", &["t"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::try_from(r.error_code).unwrap(),
        ErrorCode::NotCoordinator,
        "{}",
        r.error_message
    );
    assert!(
        r.error_message.contains("FindCoordinator"),
        "{}",
        r.error_message
    );

    // Nobody produces to the internal topic.
    let batch = {
        let mut b = rill_protocol::record_batch::RecordBatchBuilder::new(
            rill_protocol::record_batch::Compression::None,
        );
        b.append(0, Some(b"k"), Some(b"v"), &[]);
        b.build().unwrap()
    };
    let leader = parts[0].leader;
    let r = client
        .broker(leader)
        .unwrap()
        .produce(ProduceRequest {
            acks: -1,
            timeout_ms: 5000,
            topics: vec![TopicProduceData {
                name: OFFSETS.into(),
                partitions: vec![PartitionProduceData {
                    index: 0,
                    records: batch,
                }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::try_from(r.topics[0].partitions[0].error_code).unwrap(),
        ErrorCode::InvalidTopicException
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_and_members_survive_the_sigkill_of_the_coordinators_broker() {
    let mut cluster = Cluster::start(1, 3, &["offsets.topic.num.partitions=3"]).await;
    cluster.create_topic("events", 4, 3, &[]).await;
    let group = "survivors";
    let (coordinator, addr) = find_coordinator(&cluster, group).await;
    let mut c = coordinator_client(&addr).await;
    // A simple (memberless) commit, then a member that owns every partition and commits.
    commit_ok(
        &mut c,
        commit_request(group, "", -1, &[("events", 0, 10), ("events", 1, 11)]),
    )
    .await;
    let joined = c
        .consumer_group_heartbeat(join_request(group, "", &["events"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.error_code, 0, "{}", joined.error_message);
    let assignment = owned(&joined.assignment);
    assert_eq!(assignment.len(), 4, "{assignment:?}");
    commit_ok(
        &mut c,
        commit_request(
            group,
            &joined.member_id,
            joined.member_epoch,
            &[("events", 2, 12), ("events", 3, 13)],
        ),
    )
    .await;
    let before = committed(&mut c, group).await.unwrap();
    assert_eq!(before.len(), 4);

    let victim = cluster
        .brokers
        .iter()
        .position(|b| b.id == coordinator)
        .unwrap();
    cluster.kill_broker(victim);
    let deadline = Instant::now() + Duration::from_secs(60);
    let (new_coordinator, new_addr) = loop {
        let found = find_coordinator(&cluster, group).await;
        if found.0 != coordinator {
            break found;
        }
        assert!(Instant::now() < deadline, "the coordinator did not move");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut c = coordinator_client(&new_addr).await;
    let after = loop {
        match committed(&mut c, group).await {
            Ok(a) => break a,
            Err(e) => {
                assert!(Instant::now() < deadline, "offsets unavailable: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(
        after, before,
        "broker {new_coordinator} lost committed offsets"
    );
    // The member is still known, in the same epoch, with the same partitions.
    let r = c
        .consumer_group_heartbeat(ConsumerGroupHeartbeatRequest {
            group_id: group.into(),
            member_id: joined.member_id.clone(),
            member_epoch: joined.member_epoch,
            rebalance_timeout_ms: -1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    assert_eq!(r.member_epoch, joined.member_epoch);
    let described = c
        .describe_groups(DescribeGroupsRequest {
            group_ids: vec![group.into()],
        })
        .await
        .unwrap()
        .into_inner();
    let g = &described.groups[0];
    assert_eq!(g.error_code, 0, "{}", g.error_message);
    assert_eq!(g.members.len(), 1);
    assert_eq!(g.members[0].member_id, joined.member_id);
    let owned_now: usize = g.members[0]
        .assignment
        .iter()
        .map(|t| t.partitions.len())
        .sum();
    assert_eq!(owned_now, 4);
    // And it commits on the new coordinator.
    commit_ok(
        &mut c,
        commit_request(
            group,
            &joined.member_id,
            joined.member_epoch,
            &[("events", 0, 20)],
        ),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_group_requests_get_clear_errors_and_change_nothing() {
    let cluster = Cluster::start(1, 1, &["offsets.topic.num.partitions=2"]).await;
    cluster.create_topic("t", 2, 1, &[]).await;
    let group = "strict";
    let (_, addr) = find_coordinator(&cluster, group).await;
    let mut c = coordinator_client(&addr).await;
    let code = |c: i32| ErrorCode::try_from(c).unwrap();

    // Group ids: empty and too long.
    for bad in [String::new(), "g".repeat(300)] {
        let r = c
            .consumer_group_heartbeat(join_request(&bad, "", &["t"]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            code(r.error_code),
            ErrorCode::InvalidGroupId,
            "{}",
            r.error_message
        );
        assert!(!r.error_message.is_empty());
        let r = c
            .offset_commit(commit_request(&bad, "", -1, &[("t", 0, 1)]))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(commit_errors(&r)[0].2, ErrorCode::InvalidGroupId);
        let r = c
            .find_coordinator(FindCoordinatorRequest { keys: vec![bad] })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            code(r.coordinators[0].error_code),
            ErrorCode::InvalidGroupId
        );
    }
    // Unknown group.
    let r = c
        .describe_groups(DescribeGroupsRequest {
            group_ids: vec!["nobody".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.groups[0].error_code), ErrorCode::GroupIdNotFound);
    let r = c
        .delete_groups(DeleteGroupsRequest {
            group_ids: vec!["nobody".into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.results[0].error_code), ErrorCode::GroupIdNotFound);

    // Two members share the topic's two partitions.
    let a = c
        .consumer_group_heartbeat(join_request(group, "", &["t"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(a.error_code, 0, "{}", a.error_message);
    let b = c
        .consumer_group_heartbeat(join_request(group, "", &["t"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(b.error_code, 0, "{}", b.error_message);
    // a must give one partition up: report it released.
    let mut a_epoch = a.member_epoch;
    let mut a_owned = owned(&a.assignment);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = c
            .consumer_group_heartbeat(ConsumerGroupHeartbeatRequest {
                group_id: group.into(),
                member_id: a.member_id.clone(),
                member_epoch: a_epoch,
                rebalance_timeout_ms: -1,
                owned_partitions: Some(TopicPartitionsList {
                    topics: a_owned
                        .iter()
                        .map(|(t, p)| TopicPartitions {
                            topic: t.clone(),
                            partitions: vec![*p],
                        })
                        .collect(),
                }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        if r.assignment.is_some() {
            a_owned = owned(&r.assignment);
        }
        a_epoch = r.member_epoch;
        if a_owned.len() == 1 && a_epoch > a.member_epoch {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "member a never settled: {a_owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mine = a_owned[0].1;
    let not_mine = 1 - mine;
    let before = committed(&mut c, group).await.unwrap();

    // Stale epoch, a partition a does not own, unknown member, memberless commit to a live
    // group: each refused with its error, nothing stored.
    for (req, want) in [
        (
            commit_request(group, &a.member_id, a.member_epoch, &[("t", mine, 5)]),
            ErrorCode::StaleMemberEpoch,
        ),
        (
            commit_request(group, &a.member_id, a_epoch, &[("t", not_mine, 5)]),
            ErrorCode::StaleMemberEpoch,
        ),
        (
            commit_request(group, "no-such-member", 3, &[("t", mine, 5)]),
            ErrorCode::UnknownMemberId,
        ),
        (
            commit_request(group, "", -1, &[("t", mine, 5)]),
            ErrorCode::UnknownMemberId,
        ),
        (
            commit_request(group, &a.member_id, a_epoch, &[("no-such-topic", 0, 5)]),
            ErrorCode::UnknownTopicOrPartition,
        ),
    ] {
        let r = c.offset_commit(req.clone()).await.unwrap().into_inner();
        let errors = commit_errors(&r);
        assert_eq!(errors[0].2, want, "{req:?}: {errors:?}");
        assert!(!errors[0].3.is_empty());
    }
    let r = c
        .offset_commit(OffsetCommitRequest {
            topics: vec![OffsetCommitTopic {
                name: "t".into(),
                partitions: vec![OffsetCommitPartition {
                    index: mine,
                    committed_offset: 5,
                    committed_leader_epoch: -1,
                    committed_metadata: "m".repeat(5000),
                }],
            }],
            ..commit_request(group, &a.member_id, a_epoch, &[])
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(commit_errors(&r)[0].2, ErrorCode::OffsetMetadataTooLarge);
    assert_eq!(committed(&mut c, group).await.unwrap(), before);

    // Heartbeats from an unknown member, and with an epoch from the future.
    let r = c
        .consumer_group_heartbeat(ConsumerGroupHeartbeatRequest {
            group_id: group.into(),
            member_id: "no-such-member".into(),
            member_epoch: 4,
            rebalance_timeout_ms: -1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(r.error_code),
        ErrorCode::UnknownMemberId,
        "{}",
        r.error_message
    );
    let r = c
        .consumer_group_heartbeat(ConsumerGroupHeartbeatRequest {
            group_id: group.into(),
            member_id: a.member_id.clone(),
            member_epoch: a_epoch + 10,
            rebalance_timeout_ms: -1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        code(r.error_code),
        ErrorCode::FencedMemberEpoch,
        "{}",
        r.error_message
    );

    // The group has members: it cannot be deleted.
    let r = c
        .delete_groups(DeleteGroupsRequest {
            group_ids: vec![group.into()],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(code(r.results[0].error_code), ErrorCode::NonEmptyGroup);
    // A good commit still works.
    let r = c
        .offset_commit(commit_request(
            group,
            &a.member_id,
            a_epoch,
            &[("t", mine, 7)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        commit_errors(&r)[0].2,
        ErrorCode::None,
        "{:?}",
        commit_errors(&r)
    );
    assert_eq!(
        committed(&mut c, group).await.unwrap(),
        vec![(TopicPartition::new("t", mine), 7)]
    );
}

/// A topic deleted and re-created under the same name and size: the group's offsets of the old
/// incarnation go (its consumers would otherwise resume mid-way into the new one and skip
/// records), and offsets committed to the new one stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_topic_starts_without_the_old_committed_offsets() {
    let cluster = Cluster::start(1, 1, &["offsets.topic.num.partitions=1"]).await;
    cluster.create_topic("reborn", 2, 1, &[]).await;
    let group = "rebirth";
    let (_, addr) = find_coordinator(&cluster, group).await;
    let mut c = coordinator_client(&addr).await;
    commit_ok(
        &mut c,
        commit_request(group, "", -1, &[("reborn", 0, 42), ("reborn", 1, 43)]),
    )
    .await;
    assert_eq!(committed(&mut c, group).await.unwrap().len(), 2);

    // Deleted and created again at once. (The broker applies the two as separate metadata
    // updates here; when its group coordinator sees them as one, only the topic id tells:
    // the shard's unit test `offsets_of_a_recreated_topic_are_deleted` covers that case.)
    let deleted = cluster
        .client()
        .admin(Duration::from_secs(10), |mut c| async move {
            c.delete_topics(DeleteTopicsRequest {
                names: vec!["reborn".into()],
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(deleted.topics[0].error_code, 0, "{deleted:?}");
    cluster.create_topic("reborn", 2, 1, &[]).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = committed(&mut c, group).await;
        if left.as_ref().is_ok_and(|l| l.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old incarnation's offsets stayed: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    commit_ok(&mut c, commit_request(group, "", -1, &[("reborn", 0, 1)])).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        committed(&mut c, group).await.unwrap(),
        vec![(TopicPartition::new("reborn", 0), 1)]
    );
}
/// `min.insync.replicas=2` on `__consumer_offsets`, through the CLI as an operator sets it.
fn offsets_need_two_in_sync(cluster: &Cluster) {
    let altered = std::process::Command::new(common::sibling("rill"))
        .args([
            "topic",
            "alter-config",
            OFFSETS,
            "--set",
            "min.insync.replicas=2",
        ])
        .args(["--bootstrap", &cluster.bootstrap().join(",")])
        .output()
        .unwrap();
    assert!(altered.status.success(), "{altered:?}");
}

/// One heartbeat of a member that must not be fenced (answered, or refused while the offsets
/// partition is short of in-sync replicas); then the ISR size of that partition, if known.
async fn heartbeat_through_outage(
    c: &mut GroupCoordinatorClient<Channel>,
    client: &rill_protocol::client::ClusterClient,
    heartbeat: &ConsumerGroupHeartbeatRequest,
) -> Option<usize> {
    let r = c
        .consumer_group_heartbeat(heartbeat.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(
        r.error_code == 0 || r.error_code == ErrorCode::CoordinatorNotAvailable as i32,
        "{}: {}",
        r.error_code,
        r.error_message
    );
    if r.error_code == 0 {
        assert_eq!(r.member_epoch, heartbeat.member_epoch, "fenced");
    }
    offsets_isr(client).await
}

/// The ISR size of `__consumer_offsets-0`, if the metadata says.
async fn offsets_isr(client: &rill_protocol::client::ClusterClient) -> Option<usize> {
    client
        .refresh(&[OFFSETS.into()])
        .await
        .ok()
        .and_then(|md| md.topics.first()?.partitions.first().map(|p| p.isr.len()))
}

/// While the group's `__consumer_offsets` partition has fewer in-sync replicas than
/// `min.insync.replicas`, its requests are refused (heartbeats too, the client retries); once
/// it is back in sync every member gets a full session, or the whole group would be fenced the
/// moment the ISR recovers, for not having heartbeated during the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_keep_members_through_a_short_offsets_isr() {
    let mut cluster = Cluster::start(
        1,
        3,
        &[
            "offsets.topic.num.partitions=1",
            "replica.lag.time.max.ms=1000",
            "group.consumer.session.timeout.ms=3000",
            "group.consumer.heartbeat.interval.ms=500",
        ],
    )
    .await;
    cluster.create_topic("events", 1, 3, &[]).await;
    let group = "steady";
    let (coordinator, addr) = find_coordinator(&cluster, group).await;
    offsets_need_two_in_sync(&cluster);
    // Every broker has the config before the outage starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut c = coordinator_client(&addr).await;
    let joined = c
        .consumer_group_heartbeat(join_request(group, "", &["events"]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(joined.error_code, 0, "{}", joined.error_message);
    let heartbeat = ConsumerGroupHeartbeatRequest {
        group_id: group.into(),
        member_id: joined.member_id.clone(),
        member_epoch: joined.member_epoch,
        ..Default::default()
    };
    // Settled: the member's epoch and assignment are written and acknowledged.
    for _ in 0..3 {
        let r = c
            .consumer_group_heartbeat(heartbeat.clone())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(r.error_code, 0, "{}", r.error_message);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let others: Vec<usize> = (0..3)
        .filter(|i| cluster.brokers[*i].id != coordinator)
        .collect();
    for i in &others {
        cluster.kill_broker(*i);
    }
    // Until the ISR has shrunk below min.insync.replicas, then through more than a session.
    let client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut short_since = None;
    loop {
        let isr = heartbeat_through_outage(&mut c, &client, &heartbeat).await;
        if isr == Some(1) {
            short_since.get_or_insert_with(Instant::now);
        }
        if short_since.is_some_and(|t| t.elapsed() > Duration::from_secs(5)) {
            break;
        }
        assert!(Instant::now() < deadline, "the ISR never shrank: {isr:?}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // A commit needs the replicas: refused, with the reason.
    let refused = c
        .offset_commit(commit_request(
            group,
            &joined.member_id,
            joined.member_epoch,
            &[("events", 0, 1)],
        ))
        .await
        .unwrap()
        .into_inner();
    assert!(
        commit_errors(&refused)
            .iter()
            .all(|(_, _, code, _)| *code == ErrorCode::CoordinatorNotAvailable),
        "{refused:?}"
    );
    // The replicas come back: the member is still in the group, at its epoch.
    for i in &others {
        cluster.start_broker(*i);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let isr = heartbeat_through_outage(&mut c, &client, &heartbeat).await;
        if isr == Some(3) {
            break;
        }
        assert!(Instant::now() < deadline, "the ISR never grew back");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Past the timer that fences expired members (a pass every 250 ms): still a member, at
    // its epoch.
    let deadline = Instant::now() + Duration::from_secs(10);
    let r = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let r = c
            .consumer_group_heartbeat(heartbeat.clone())
            .await
            .unwrap()
            .into_inner();
        if r.error_code != ErrorCode::CoordinatorNotAvailable as i32 || Instant::now() > deadline {
            break r;
        }
    };
    assert_eq!(
        r.error_code, 0,
        "fenced after the outage: {}",
        r.error_message
    );
    assert_eq!(r.member_epoch, joined.member_epoch);
    commit_ok(
        &mut c,
        commit_request(
            group,
            &joined.member_id,
            joined.member_epoch,
            &[("events", 0, 1)],
        ),
    )
    .await;
}

/// A topic deleted and re-created while the group's `__consumer_offsets` partition is short of
/// in-sync replicas: the shard cannot write the old offsets' tombstones then, and writes them
/// once it can (the next metadata update), instead of keeping the old incarnation's offsets for
/// good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offsets_of_a_topic_recreated_during_an_offsets_outage_go_after_it() {
    let mut cluster = Cluster::start(
        1,
        2,
        &[
            "offsets.topic.num.partitions=1",
            "offsets.topic.replication.factor=2",
            "replica.lag.time.max.ms=1000",
        ],
    )
    .await;
    cluster.create_topic("phoenix", 1, 1, &[]).await;
    let group = "phoenix-readers";
    let (coordinator, addr) = find_coordinator(&cluster, group).await;
    offsets_need_two_in_sync(&cluster);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut c = coordinator_client(&addr).await;
    commit_ok(&mut c, commit_request(group, "", -1, &[("phoenix", 0, 42)])).await;
    let other = (0..2)
        .find(|i| cluster.brokers[*i].id != coordinator)
        .unwrap();
    cluster.kill_broker(other);
    let client = cluster.client();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let isr = offsets_isr(&client).await;
        if isr == Some(1) {
            break;
        }
        assert!(Instant::now() < deadline, "the ISR never shrank: {isr:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let deleted = cluster
        .client()
        .admin(Duration::from_secs(10), |mut c| async move {
            c.delete_topics(DeleteTopicsRequest {
                names: vec!["phoenix".into()],
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(deleted.topics[0].error_code, 0, "{deleted:?}");
    cluster.create_topic("phoenix", 1, 1, &[]).await;
    // The tombstones could not be written meanwhile; give the refusals time to happen.
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.start_broker(other);
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let left = committed(&mut c, group).await;
        if left.as_ref().is_ok_and(|l| l.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the old incarnation's offsets stayed: {left:?}"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
