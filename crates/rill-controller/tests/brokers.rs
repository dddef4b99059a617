//! Broker lifecycle against a real quorum: registration, heartbeats, fencing and leadership
//! moves, controlled shutdown, ISR changes.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rill_protocol::ErrorCode;
use rill_protocol::proto::*;

async fn partitions(
    q: &Quorum,
    leader: usize,
    topic: &str,
) -> Vec<rill_protocol::metadata_image::PartitionInfo> {
    image_of(&q.image(leader).await).topics[topic]
        .partitions
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_fenced_and_its_leaderships_move() {
    let q = Quorum::start(3, &["broker.session.timeout.ms=1500"]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let b1 = FakeBroker::start(&q, 1).await;
    let _b2 = FakeBroker::start(&q, 2).await;
    let _b3 = FakeBroker::start(&q, 3).await;
    let r = create(&q, leader, vec![topic("orders", 6, 3)]).await;
    assert_eq!(
        r.topics[0].error_code,
        ErrorCode::None as i32,
        "{:?}",
        r.topics[0]
    );
    let before = partitions(&q, leader, "orders").await;
    assert!(before.iter().filter(|p| p.leader == 1).count() >= 1);
    let stopped = Instant::now();
    b1.stop_heartbeats();
    loop {
        let image = image_of(&q.image(leader).await);
        let fenced = image.brokers[&1].fenced;
        let parts = &image.topics["orders"].partitions;
        if fenced && parts.iter().all(|p| p.leader != 1 && !p.isr.contains(&1)) {
            for (old, new) in before.iter().zip(parts) {
                assert_ne!(new.leader, -1, "another in-sync replica took over");
                if old.leader == 1 {
                    assert_eq!(
                        new.leader_epoch,
                        old.leader_epoch + 1,
                        "a leader change bumps the epoch"
                    );
                    let expected = old.replicas.iter().copied().find(|r| *r != 1).unwrap();
                    assert_eq!(
                        new.leader, expected,
                        "the next ISR member in replica order leads"
                    );
                }
            }
            break;
        }
        assert!(
            stopped.elapsed() < Duration::from_millis(1500 + 2500),
            "broker 1 not fenced in time"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = stopped.elapsed();
    assert!(
        elapsed >= Duration::from_millis(1200),
        "fenced too early ({elapsed:?})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_rules_and_controlled_shutdown() {
    let q = Quorum::start(1, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let b1 = FakeBroker::start(&q, 1).await;
    let _b2 = FakeBroker::start(&q, 2).await;
    // A second live process with the same node.id is refused.
    let dup = q
        .call(leader, |mut c| async move {
            c.broker_registration(BrokerRegistrationRequest {
                broker_id: 1,
                cluster_id: String::new(),
                incarnation_id: "someone-else".into(),
                listeners: vec![],
                rack: None,
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(dup.code, ErrorCode::DuplicateBrokerRegistration, "{dup}");
    // A wrong cluster id is refused.
    let wrong = q
        .call(leader, |mut c| async move {
            c.broker_registration(BrokerRegistrationRequest {
                broker_id: 9,
                cluster_id: "not-this-cluster".into(),
                incarnation_id: "x".into(),
                listeners: vec![],
                rack: None,
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(wrong.code, ErrorCode::InconsistentClusterId);
    // Heartbeats with a stale epoch or from strangers are refused.
    let stale = q
        .call(leader, |mut c| async move {
            c.broker_heartbeat(BrokerHeartbeatRequest {
                broker_id: 1,
                broker_epoch: 12345,
                ..Default::default()
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(stale.code, ErrorCode::StaleBrokerEpoch);
    let unknown = q
        .call(leader, |mut c| async move {
            c.broker_heartbeat(BrokerHeartbeatRequest {
                broker_id: 77,
                broker_epoch: 1,
                ..Default::default()
            })
            .await
        })
        .await
        .unwrap_err();
    assert_eq!(unknown.code, ErrorCode::BrokerIdNotRegistered);

    // Controlled shutdown: leaderships move away before the broker is told it may stop.
    create(&q, leader, vec![topic("t", 4, 2)]).await;
    assert!(
        partitions(&q, leader, "t")
            .await
            .iter()
            .any(|p| p.leader == 1)
    );
    let epoch = b1.epoch;
    let reply = q
        .call(leader, |mut c| async move {
            c.broker_heartbeat(BrokerHeartbeatRequest {
                broker_id: 1,
                broker_epoch: epoch,
                current_metadata_offset: i64::MAX,
                want_fence: false,
                want_shut_down: true,
            })
            .await
        })
        .await
        .unwrap();
    assert!(reply.should_shut_down && reply.is_fenced, "{reply:?}");
    assert!(
        partitions(&q, leader, "t")
            .await
            .iter()
            .all(|p| p.leader == 2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_partition_changes_the_isr_and_rejects_stale_epochs() {
    let q = Quorum::start(1, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let b1 = FakeBroker::start(&q, 1).await;
    let _b2 = FakeBroker::start(&q, 2).await;
    create(&q, leader, vec![topic("t", 1, 2)]).await;
    let p = partitions(&q, leader, "t").await[0].clone();
    let (lead, follower) = (
        p.leader,
        p.replicas.iter().copied().find(|r| *r != p.leader).unwrap(),
    );
    let epoch = if lead == 1 {
        b1.epoch
    } else {
        image_of(&q.image(leader).await).brokers[&lead].epoch
    };
    let topic_id = image_of(&q.image(leader).await).topics["t"].id.clone();
    let alter_with = |topic_id: String, isr: Vec<i32>, partition_epoch: i32, epochs: Vec<i64>| {
        let q = &q;
        async move {
            q.call(leader, |mut c| {
                let isr = isr.clone();
                let topic_id = topic_id.clone();
                let epochs = epochs.clone();
                async move {
                    c.alter_partition(AlterPartitionRequest {
                        broker_id: lead,
                        broker_epoch: epoch,
                        topics: vec![AlterPartitionTopic {
                            name: "t".into(),
                            topic_id,
                            partitions: vec![AlterPartitionData {
                                index: 0,
                                leader_epoch: 0,
                                new_isr: isr,
                                partition_epoch,
                                new_isr_broker_epochs: epochs,
                            }],
                        }],
                    })
                    .await
                }
            })
            .await
            .unwrap()
        }
    };
    let alter_as = |topic_id: String, isr: Vec<i32>, partition_epoch: i32| {
        alter_with(topic_id, isr, partition_epoch, Vec::new())
    };
    let alter =
        |isr: Vec<i32>, partition_epoch: i32| alter_as(topic_id.clone(), isr, partition_epoch);
    // Meant for another incarnation of "t" (deleted and created again, same epochs): refused.
    let other = alter_as("an-old-topic-id".into(), vec![lead], 0).await;
    let r = &other.topics[0].partitions[0];
    assert_eq!(r.error_code, ErrorCode::InconsistentTopicId as i32, "{r:?}");
    let shrunk = alter(vec![lead], 0).await;
    let r = &shrunk.topics[0].partitions[0];
    assert_eq!(r.error_code, ErrorCode::None as i32, "{r:?}");
    assert_eq!((r.isr.clone(), r.partition_epoch), (vec![lead], 1));
    let stale = alter(vec![lead, follower], 0).await;
    assert_eq!(
        stale.topics[0].partitions[0].error_code,
        ErrorCode::InvalidUpdateVersion as i32
    );
    let grown = alter(vec![lead, follower], 1).await;
    assert_eq!(grown.topics[0].partitions[0].isr.len(), 2);
    let without_leader = alter(vec![follower], 2).await;
    assert_eq!(
        without_leader.topics[0].partitions[0].error_code,
        ErrorCode::InvalidRequest as i32
    );
    // A repeated id would count twice towards min.insync.replicas: refused, nothing changes.
    let before = partitions(&q, leader, "t").await[0].clone();
    let duplicated = alter(vec![lead, lead], 2).await;
    let r = &duplicated.topics[0].partitions[0];
    assert_eq!(r.error_code, ErrorCode::InvalidRequest as i32, "{r:?}");
    assert!(r.error_message.contains("more than once"), "{r:?}");
    assert_eq!((r.isr.len(), r.partition_epoch), (2, 2), "{r:?}");
    assert!(partitions(&q, leader, "t").await[0] == before);
    // The same partition twice in one request: each entry would pass against the same state
    // and both be applied. Refused whole.
    let entry = |isr: Vec<i32>| AlterPartitionData {
        index: 0,
        leader_epoch: 0,
        new_isr: isr,
        partition_epoch: 2,
        ..Default::default()
    };
    let twice = AlterPartitionRequest {
        broker_id: lead,
        broker_epoch: epoch,
        topics: vec![AlterPartitionTopic {
            name: "t".into(),
            topic_id: topic_id.clone(),
            partitions: vec![entry(vec![lead]), entry(vec![lead, follower])],
        }],
    };
    let e = q
        .call(leader, |mut c| {
            let twice = twice.clone();
            async move { c.alter_partition(twice).await }
        })
        .await
        .unwrap_err();
    assert_eq!(e.code, ErrorCode::InvalidRequest, "{e}");
    assert!(e.message.contains("more than once"), "{e}");
    assert!(partitions(&q, leader, "t").await[0] == before);
    // KIP-903: a member the change adds must still be the registration the leader saw catch
    // up. The follower leaves the ISR, then is added back as of an older registration.
    let r = alter(vec![lead], 2).await;
    assert_eq!(r.topics[0].partitions[0].partition_epoch, 3, "{r:?}");
    let current = image_of(&q.image(leader).await).brokers[&follower].epoch;
    let stale = alter_with(
        topic_id.clone(),
        vec![lead, follower],
        3,
        vec![-1, current - 1],
    )
    .await;
    let r = &stale.topics[0].partitions[0];
    assert_eq!(r.error_code, ErrorCode::IneligibleReplica as i32, "{r:?}");
    assert_eq!(r.isr, [lead], "{r:?}");
    let short = alter_with(topic_id.clone(), vec![lead, follower], 3, vec![current]).await;
    let r = &short.topics[0].partitions[0];
    assert_eq!(r.error_code, ErrorCode::InvalidRequest as i32, "{r:?}");
    let fresh = alter_with(topic_id.clone(), vec![lead, follower], 3, vec![-1, current]).await;
    let r = &fresh.topics[0].partitions[0];
    assert_eq!(r.error_code, 0, "{r:?}");
    assert_eq!(r.isr, [lead, follower]);
}

/// A write that produces no records (here a repeated registration) is validated against the
/// leader's uncommitted proposals, so it must not be answered before they commit: its answer
/// may only reflect committed state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_without_records_is_answered_from_committed_state_only() {
    // A long election timeout keeps the leader leading for a while after its followers die.
    let mut q = Quorum::start(3, &["controller.quorum.election.timeout.ms=4000"]);
    let leader = q.leader(Duration::from_secs(20)).await;
    let addr = q.procs[leader].addr.clone();
    let register = move |incarnation: &'static str| {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_lazy();
        async move {
            controller_client::ControllerClient::new(ch)
                .broker_registration(BrokerRegistrationRequest {
                    broker_id: 5,
                    cluster_id: String::new(),
                    incarnation_id: incarnation.into(),
                    listeners: vec![],
                    rack: None,
                })
                .await
        }
    };
    for i in (0..3).filter(|i| *i != leader) {
        q.kill(i);
    }
    // Proposed, never committed: no quorum.
    let first = tokio::spawn(register("incarnation-a"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Same incarnation: no new records, but the broker is only registered in uncommitted state.
    let again = tokio::time::timeout(Duration::from_secs(2), register("incarnation-a")).await;
    assert!(
        !matches!(again, Ok(Ok(_))),
        "answered from uncommitted state: {again:?}"
    );
    first.abort();
    for i in (0..3).filter(|i| *i != leader) {
        q.spawn(i);
    }
    // Once it committed, the repeated registration gets the committed epoch.
    let leader = q.leader(Duration::from_secs(30)).await;
    let epoch = q
        .call(leader, |mut c| async move {
            c.broker_registration(BrokerRegistrationRequest {
                broker_id: 5,
                cluster_id: String::new(),
                incarnation_id: "incarnation-a".into(),
                listeners: vec![],
                rack: None,
            })
            .await
        })
        .await
        .unwrap()
        .broker_epoch;
    assert_eq!(image_of(&q.image(leader).await).brokers[&5].epoch, epoch);
}

async fn wait_image(
    q: &Quorum,
    leader: usize,
    what: &str,
    f: impl Fn(&rill_protocol::metadata_image::MetadataImage) -> bool,
) -> rill_protocol::metadata_image::MetadataImage {
    let deadline = Instant::now() + Duration::from_secs(8);
    loop {
        let image = image_of(&q.image(leader).await);
        if f(&image) {
            return image;
        }
        assert!(Instant::now() < deadline, "{what}: {:?}", image.topics);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Kafka's unclean leader election: a partition whose whole ISR is gone comes back on another
/// replica only where the topic allows it — when that replica is unfenced, or at once when the
/// topic is changed to allow it — and then with that replica alone in the ISR.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unclean_election_when_a_replica_returns_or_the_topic_allows_it() {
    let q = Quorum::start(1, &["broker.session.timeout.ms=1500"]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let b1 = FakeBroker::start(&q, 1).await;
    let b2 = FakeBroker::start(&q, 2).await;
    let unclean = |name: &str, allow: bool| {
        let mut t = topic(name, 1, 2);
        t.configs = vec![ConfigEntry {
            name: "unclean.leader.election.enable".into(),
            value: Some(allow.to_string()),
        }];
        t
    };
    let r = create(
        &q,
        leader,
        vec![unclean("dirty", true), unclean("clean", false)],
    )
    .await;
    assert!(r.topics.iter().all(|t| t.error_code == 0), "{r:?}");
    // One broker is fenced, then the other: every ISR is left naming the last one only.
    let (first, last) = (b1, b2);
    let (returning, gone) = (first.id, last.id);
    first.stop_heartbeats();
    wait_image(&q, leader, "first fenced", |i| i.brokers[&returning].fenced).await;
    last.stop_heartbeats();
    let image = wait_image(&q, leader, "both offline", |i| {
        i.brokers[&gone].fenced && i.topics.values().all(|t| t.partitions[0].leader == -1)
    })
    .await;
    for t in ["dirty", "clean"] {
        assert_eq!(image.topics[t].partitions[0].isr, [gone], "{t}");
    }
    // The other comes back: "dirty" is elected uncleanly onto it, alone in the ISR; "clean"
    // stays offline.
    drop(first);
    let _back = FakeBroker::start(&q, returning).await;
    let image = wait_image(&q, leader, "dirty led by the returning replica", |i| {
        i.topics["dirty"].partitions[0].leader == returning
    })
    .await;
    assert_eq!(image.topics["dirty"].partitions[0].isr, [returning]);
    let clean = &image.topics["clean"].partitions[0];
    assert_eq!((clean.leader, clean.isr.clone()), (-1, vec![gone]));
    // Allowed now: elected at once.
    let allow = topic_config("clean", "unclean.leader.election.enable", 0, "true");
    let r = alter_configs(&q, vec![allow]).await;
    assert_eq!(r.results[0].error_code, 0, "{r:?}");
    let image = wait_image(&q, leader, "clean led after the change", |i| {
        i.topics["clean"].partitions[0].leader == returning
    })
    .await;
    assert_eq!(image.topics["clean"].partitions[0].isr, [returning]);
}
