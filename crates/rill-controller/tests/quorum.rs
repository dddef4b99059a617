//! The controller quorum with real processes: election, failover, restarts, snapshots.

mod common;

use std::time::{Duration, Instant};

use common::*;
use rill_protocol::ErrorCode;
use rill_protocol::proto::*;

fn topic_names(image: &MetadataBatch) -> Vec<String> {
    let mut v: Vec<String> = image
        .records
        .iter()
        .filter_map(|r| match &r.record {
            Some(metadata_record::Record::Topic(t)) => Some(t.name.clone()),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_controllers_elect_a_leader_and_admin_works_through_any() {
    let q = Quorum::start(3, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    for via in 0..3 {
        let r = create(&q, via, vec![topic(&format!("via-{via}"), 2, 1)]).await;
        assert_eq!(
            r.topics[0].error_code,
            ErrorCode::None as i32,
            "{:?}",
            r.topics[0]
        );
        assert!(!r.topics[0].topic_id.is_empty());
    }
    // A follower answers NOT_CONTROLLER with the leader's address.
    let follower = (leader + 1) % 3;
    let status = q
        .client(follower)
        .await
        .describe_cluster(DescribeClusterRequest {})
        .await
        .unwrap_err();
    let e = rill_protocol::ApiError::from(status);
    assert_eq!(e.code, ErrorCode::NotController);
    assert_eq!(
        e.leader_hint.as_deref(),
        Some(format!("{}@{}", leader + 1, q.procs[leader].addr).as_str())
    );
    let cluster = q
        .call(follower, |mut c| async move {
            c.describe_cluster(DescribeClusterRequest {}).await
        })
        .await
        .unwrap();
    assert_eq!(cluster.controller_id as usize, leader + 1);
    assert_eq!(cluster.controllers.len(), 3);
    assert!(!cluster.cluster_id.is_empty());
    // The active controller streams every committed write, whichever controller took it.
    assert_eq!(
        topic_names(&q.image(leader).await),
        ["via-0", "via-1", "via-2"]
    );
}

/// Waits until controller `i` has replicated everything the leader committed (Raft level).
async fn caught_up(q: &Quorum, leader: usize, i: usize, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let quorum = q
            .call(leader, |mut c| async move {
                c.describe_quorum(DescribeQuorumRequest {}).await
            })
            .await
            .unwrap();
        let voter = quorum.voters.iter().find(|v| v.node_id as usize == i + 1);
        if voter.is_some_and(|v| v.match_index >= quorum.commit_index) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "controller {} did not catch up: {quorum:?}",
            i + 1
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Brokers build their image from FetchMetadata and delete what it lacks, so only the active
/// controller serves it, proven current: followers refuse with NOT_CONTROLLER and the leader's
/// address, and an open stream ends when its controller loses leadership.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_active_controller_serves_the_metadata_stream() {
    let mut q = Quorum::start(3, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    create(&q, leader, vec![topic("t", 1, 1)]).await;
    let hint = format!("{}@{}", leader + 1, q.procs[leader].addr);
    for follower in (0..3).filter(|i| *i != leader) {
        caught_up(&q, leader, follower, Duration::from_secs(10)).await;
        let e = match q.fetch_metadata(follower, 0).await {
            Ok(_) => panic!("follower {} served the metadata stream", follower + 1),
            Err(status) => rill_protocol::ApiError::from(status),
        };
        assert_eq!(e.code, ErrorCode::NotController, "{e:?}");
        assert_eq!(e.leader_hint.as_deref(), Some(hint.as_str()));
    }
    let mut stream = q.fetch_metadata(leader, 0).await.unwrap();
    let first = stream.message().await.unwrap().unwrap();
    assert_eq!(topic_names(&first), ["t"]);
    // Without its followers the leader steps down (check quorum): the stream must end.
    for follower in (0..3).filter(|i| *i != leader) {
        q.kill(follower);
    }
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(status),
            }
        }
    })
    .await
    .expect("the metadata stream outlived the leadership");
    let status = end.expect("the stream ended without saying why");
    assert_eq!(
        rill_protocol::ApiError::from(status).code,
        ErrorCode::NotController
    );
    // And the former leader refuses new streams.
    let e = match q.fetch_metadata(leader, 0).await {
        Ok(_) => panic!("a controller that lost its quorum served metadata"),
        Err(status) => rill_protocol::ApiError::from(status),
    };
    assert_eq!(e.code, ErrorCode::NotController, "{e:?}");
}

/// A controller restarted without a quorum must not hand brokers the image it had: it may be
/// arbitrarily old.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_without_a_quorum_refuses_the_metadata_stream() {
    let mut q = Quorum::start(3, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    create(&q, leader, vec![topic("t", 1, 1)]).await;
    for i in 0..3 {
        q.kill(i);
    }
    q.spawn(0);
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut refused = 0;
    while Instant::now() < deadline {
        match q.fetch_metadata(0, 0).await {
            Ok(mut s) => panic!(
                "a controller without a quorum served metadata: {:?}",
                s.message().await
            ),
            Err(status) => {
                let e = rill_protocol::ApiError::from(status);
                if e.code == ErrorCode::NotController {
                    refused += 1;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(refused > 0, "the controller never answered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_elects_another_and_keeps_every_commit() {
    let mut q = Quorum::start(3, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    for i in 0..5 {
        create(&q, 0, vec![topic(&format!("before-{i}"), 1, 1)]).await;
    }
    let killed_at = Instant::now();
    q.kill(leader);
    let new_leader = q.leader(Duration::from_secs(10)).await;
    let failover = killed_at.elapsed();
    assert_ne!(new_leader, leader);
    assert!(
        failover < Duration::from_secs(5),
        "failover took {failover:?}"
    );
    let image = q.image(new_leader).await;
    assert_eq!(
        topic_names(&image).len(),
        5,
        "every committed topic survived"
    );
    create(&q, new_leader, vec![topic("after", 1, 1)]).await;
    // The old leader comes back as a follower and catches up.
    q.spawn(leader);
    caught_up(&q, new_leader, leader, Duration::from_secs(10)).await;
    assert_eq!(
        q.leader(Duration::from_secs(5)).await,
        new_leader,
        "the old leader rejoined as a follower"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_restores_the_same_image() {
    let mut q = Quorum::start(3, &[]);
    q.leader(Duration::from_secs(10)).await;
    let b1 = FakeBroker::start(&q, 1).await;
    for i in 0..10 {
        create(&q, 0, vec![topic(&format!("t{i}"), 3, 1)]).await;
    }
    let before_cluster = q
        .call(0, |mut c| async move {
            c.describe_cluster(DescribeClusterRequest {}).await
        })
        .await
        .unwrap();
    let leader = q.leader(Duration::from_secs(5)).await;
    let before = q.image(leader).await;
    b1.stop_heartbeats();
    for i in 0..3 {
        q.stop(i);
    }
    for i in 0..3 {
        q.spawn(i);
    }
    let leader = q.leader(Duration::from_secs(10)).await;
    let after = q.image(leader).await;
    assert_eq!(after.last_offset, before.last_offset);
    assert!(
        image_of(&after) == image_of(&before),
        "the image changed across a full restart"
    );
    let after_cluster = q
        .call(0, |mut c| async move {
            c.describe_cluster(DescribeClusterRequest {}).await
        })
        .await
        .unwrap();
    assert_eq!(after_cluster.cluster_id, before_cluster.cluster_id);
    assert_eq!(after_cluster.brokers, before_cluster.brokers);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_kept_down_gets_a_snapshot_and_converges() {
    let mut q = Quorum::start(
        3,
        &["metadata.log.max.record.bytes.between.snapshots=65536"],
    );
    let leader = q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    let down = (leader + 1) % 3;
    q.kill(down);
    // 10 topics × 1000 partitions ≈ 10,000 records while the voter is down.
    for i in 0..10 {
        let r = create(&q, leader, vec![topic(&format!("big-{i}"), 1000, 1)]).await;
        assert_eq!(
            r.topics[0].error_code,
            ErrorCode::None as i32,
            "{:?}",
            r.topics[0]
        );
    }
    let leader_image = q.image(leader).await;
    assert!(
        leader_image.last_offset >= 10_000,
        "{}",
        leader_image.last_offset
    );
    assert!(
        q.procs[leader].dir.join("metadata/raft.snapshot").exists(),
        "the leader compacted its log"
    );
    q.spawn(down);
    caught_up(&q, leader, down, Duration::from_secs(20)).await;
    assert!(
        q.procs[down].dir.join("metadata/raft.snapshot").exists(),
        "it caught up through a snapshot"
    );
    // Only the active controller serves metadata: fail over and compare what the survivors
    // (the caught-up voter among them) serve with what the old leader served.
    let before = image_of(&q.image(leader).await);
    q.kill(leader);
    let leader = q.leader(Duration::from_secs(10)).await;
    assert!(
        image_of(&q.image(leader).await) == before,
        "the image changed across the failover"
    );
    let quorum = q
        .call(leader, |mut c| async move {
            c.describe_quorum(DescribeQuorumRequest {}).await
        })
        .await
        .unwrap();
    assert_eq!(quorum.voters.len(), 3);
}

/// A controller whose quorum thread died on a metadata log error must not linger as a zombie
/// that answers `/health` 200: it reports unhealthy and exits non-zero so a supervisor restarts
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_metadata_log_failure_stops_the_controller_with_an_error() {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut q = Quorum::start(
        1,
        &[
            "metadata.log.max.record.bytes.between.snapshots=65536",
            &format!("metrics.address={metrics}"),
        ],
    );
    q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    assert_eq!(http_get(&metrics, "/health").await.0, 200);
    // The snapshot's temp file cannot be created: the next snapshot fails.
    std::fs::create_dir(q.procs[0].dir.join("metadata/raft.tmp")).unwrap();
    let mut status = None;
    for i in 0..20 {
        let _ = q
            .client(0)
            .await
            .create_topics(CreateTopicsRequest {
                topics: vec![topic(&format!("big-{i}"), 1000, 1)],
                validate_only: false,
            })
            .await;
        status = q.wait_exit(0, Duration::from_millis(500));
        if status.is_some() {
            break;
        }
    }
    let status = status
        .or_else(|| q.wait_exit(0, Duration::from_secs(10)))
        .expect("the controller kept running without its quorum thread");
    assert!(!status.success(), "exited with {status}");
    let log = q.log(0);
    assert!(
        log.contains("the quorum thread stopped on a metadata log error"),
        "{log}"
    );
    assert!(
        log.contains("raft.tmp"),
        "the log names the failing file: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_are_served() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let q = Quorum::start(1, &[&format!("metrics.address={addr}")]);
    q.leader(Duration::from_secs(10)).await;
    let _b = FakeBroker::start(&q, 1).await;
    create(&q, 0, vec![topic("m", 3, 1)]).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (status, body) = http_get(&addr, "/metrics").await;
        assert_eq!(status, 200);
        if body.contains("rill_controller_partitions 3") {
            assert!(body.contains("rill_controller_is_leader 1"), "{body}");
            assert!(
                body.contains("rill_controller_brokers_unfenced 1"),
                "{body}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "metrics never showed the topic: {body}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(http_get(&addr, "/health").await.0, 200);
}

/// Writes keep coming while the leader is killed: every write that was acknowledged is in the
/// image afterwards (acknowledged means committed by the quorum).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_acknowledged_write_is_lost_when_the_leader_dies_mid_stream() {
    let mut q = Quorum::start(3, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let _b1 = FakeBroker::start(&q, 1).await;
    let addrs: Vec<String> = q.procs.iter().map(|p| p.addr.clone()).collect();
    let writer = tokio::spawn(async move {
        let mut acked = Vec::new();
        let started = Instant::now();
        let mut i = 0;
        while started.elapsed() < Duration::from_secs(6) {
            let name = format!("during-{i}");
            i += 1;
            for addr in &addrs {
                let ch = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                    .unwrap()
                    .timeout(Duration::from_secs(2))
                    .connect_lazy();
                let r = rill_protocol::proto::controller_client::ControllerClient::new(ch)
                    .create_topics(CreateTopicsRequest {
                        topics: vec![topic(&name, 1, 1)],
                        validate_only: false,
                    })
                    .await;
                if let Ok(r) = r
                    && r.get_ref().topics[0].error_code == 0
                {
                    acked.push(name.clone());
                    break;
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    q.kill(leader);
    let acked = writer.await.unwrap();
    assert!(
        acked.len() > 10,
        "the writer made progress ({} acked)",
        acked.len()
    );
    let new_leader = q.leader(Duration::from_secs(10)).await;
    let image = image_of(&q.image(new_leader).await);
    for name in &acked {
        assert!(
            image.topics.contains_key(name),
            "acknowledged topic {name} lost after failover"
        );
    }
}

/// An open metadata stream must not hold a controller's graceful shutdown hostage: the stream
/// ends and the process exits cleanly on SIGTERM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_open_metadata_streams_and_exits_cleanly() {
    let mut q = Quorum::start(1, &[]);
    let leader = q.leader(Duration::from_secs(10)).await;
    let mut stream = q.fetch_metadata(leader, 0).await.unwrap();
    stream.message().await.unwrap().unwrap();
    let reader = tokio::spawn(async move {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                Ok(None) => return None,
                Err(status) => return Some(rill_protocol::ApiError::from(status).code),
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        q.stop(leader);
    })
    .await
    .unwrap();
    let end = tokio::time::timeout(Duration::from_secs(5), reader)
        .await
        .expect("the stream outlived the controller")
        .unwrap();
    assert!(
        matches!(end, None | Some(ErrorCode::NotController)),
        "{end:?}"
    );
}
