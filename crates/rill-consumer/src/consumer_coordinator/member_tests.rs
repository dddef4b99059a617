//! Group membership against the fake coordinator of `crate::testing`: joining, reconciling
//! (commit before revoke, nothing returned after it), fencing, commits' epochs, coordinator
//! moves, the poll timeout and close.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rill_protocol::proto::ConsumerGroupHeartbeatResponse;
use rill_protocol::{ErrorCode, TopicPartition};

use super::heartbeat::partition_set;
use crate::testing::{Fake, assignment, numbered};
use crate::{
    Consumer, ConsumerConfig, ConsumerError, ConsumerRebalanceListener, ConsumerRecord,
    OffsetAndMetadata, OffsetReset,
};

/// Writes each callback into the fake's log, next to the coordinator's entries.
struct Recorder(Arc<Mutex<Vec<String>>>);

fn names(tps: &[TopicPartition]) -> String {
    tps.iter()
        .map(|t| t.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

impl ConsumerRebalanceListener for Recorder {
    fn on_partitions_revoked(&mut self, p: &[TopicPartition]) {
        self.0.lock().push(format!("revoked {}", names(p)));
    }
    fn on_partitions_assigned(&mut self, p: &[TopicPartition]) {
        self.0.lock().push(format!("assigned {}", names(p)));
    }
    fn on_partitions_lost(&mut self, p: &[TopicPartition]) {
        self.0.lock().push(format!("lost {}", names(p)));
    }
}

fn config(fake: &Fake) -> ConsumerConfig {
    ConsumerConfig {
        bootstrap: fake.bootstrap(),
        group_id: Some("g".into()),
        auto_offset_reset: OffsetReset::Earliest,
        auto_commit_interval: Duration::from_secs(600),
        ..Default::default()
    }
}

fn tp(t: &str, p: i32) -> TopicPartition {
    TopicPartition::new(t, p)
}

/// Polls until `done` holds for everything returned so far (or `limit` passes).
async fn poll_until(
    consumer: &mut Consumer,
    limit: Duration,
    mut done: impl FnMut(&[ConsumerRecord]) -> bool,
) -> Vec<ConsumerRecord> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while Instant::now() < deadline && !done(&seen) {
        seen.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
    }
    assert!(
        done(&seen),
        "not done within {limit:?}: {} records",
        seen.len()
    );
    seen
}

fn logged(fake: &Fake, entry: &str) -> Option<usize> {
    fake.log().lock().iter().position(|l| l == entry)
}

/// A coordinator giving `target` (shared, changeable by the test) with epoch `epoch`, sending
/// the assignment only when it changed, as the real one does.
fn scripted(fake: &Fake, target: Arc<Mutex<Vec<(&'static str, i32)>>>, epoch: Arc<AtomicI32>) {
    let mut last_sent: Option<Vec<(&str, i32)>> = None;
    fake.coordinator.lock().on_heartbeat = Box::new(move |r, _| {
        if r.member_epoch < 0 {
            return ConsumerGroupHeartbeatResponse {
                member_id: r.member_id.clone(),
                member_epoch: r.member_epoch,
                ..Default::default()
            };
        }
        let now = target.lock().clone();
        let changed = r.member_epoch == 0 || last_sent.as_ref() != Some(&now);
        last_sent = Some(now.clone());
        ConsumerGroupHeartbeatResponse {
            member_id: r.member_id.clone(),
            member_epoch: epoch.load(Ordering::Acquire),
            heartbeat_interval_ms: 100,
            assignment: changed.then(|| assignment(&now)),
            ..Default::default()
        }
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_joins_reconciles_and_leaves() {
    let fake = Fake::start(&[("t", 2)], numbered(i64::MAX)).await;
    fake.coordinator.lock().committed.insert(tp("t", 1), 5);
    let target = Arc::new(Mutex::new(vec![("t", 0), ("t", 1)]));
    let epoch = Arc::new(AtomicI32::new(1));
    scripted(&fake, Arc::clone(&target), Arc::clone(&epoch));
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();

    let seen = poll_until(&mut consumer, Duration::from_secs(10), |rs| {
        rs.iter().any(|r| r.partition == 0) && rs.iter().any(|r| r.partition == 1)
    })
    .await;
    // t-1 starts at its committed offset, t-0 (nothing committed) at the log start.
    assert_eq!(seen.iter().find(|r| r.partition == 1).unwrap().offset, 5);
    assert_eq!(seen.iter().find(|r| r.partition == 0).unwrap().offset, 0);
    assert!(logged(&fake, "assigned t-0,t-1").is_some());
    assert_eq!(consumer.assignment(), vec![tp("t", 0), tp("t", 1)]);
    // The assignment is acknowledged at once: a heartbeat reports it owned.
    let acked = |fake: &Fake| {
        fake.coordinator
            .lock()
            .heartbeats
            .iter()
            .filter_map(|h| h.owned_partitions.as_ref())
            .any(|o| partition_set(&o.topics) == BTreeSet::from([tp("t", 0), tp("t", 1)]))
    };
    poll_until(&mut consumer, Duration::from_secs(2), |_| acked(&fake)).await;
    {
        let c = fake.coordinator.lock();
        let join = &c.heartbeats[0];
        assert_eq!(join.member_epoch, 0);
        assert_eq!(join.member_id, consumer.member_id().unwrap());
        assert!(
            uuid::Uuid::parse_str(&join.member_id).is_ok(),
            "{}",
            join.member_id
        );
        assert_eq!(join.subscribed_topic_names.as_ref().unwrap().names, ["t"]);
        assert_eq!(join.owned_partitions.as_ref().unwrap().topics.len(), 0);
        assert_eq!(join.rebalance_timeout_ms, 300_000);
        assert_eq!(join.client_id, "rill-consumer");
    }

    // The coordinator takes t-0 away (the member keeps its epoch until it let go, as in
    // KIP-848; then its epoch moves on).
    *target.lock() = vec![("t", 1)];
    poll_until(&mut consumer, Duration::from_secs(10), |_| {
        logged(&fake, "revoked t-0").is_some()
    })
    .await;
    let revoked_at = logged(&fake, "revoked t-0").unwrap();
    let committed_t0 = fake.coordinator.lock().committed[&tp("t", 0)];
    assert!(committed_t0 > 0);
    let commit_at = logged(&fake, &format!("commit t-0@{committed_t0} epoch 1"))
        .expect("t-0 committed with the member's epoch");
    assert!(commit_at < revoked_at, "{:?}", fake.log().lock());
    assert_eq!(consumer.assignment(), vec![tp("t", 1)]);
    // Nothing of t-0 after the revocation, and t-1 goes on.
    let after = poll_until(&mut consumer, Duration::from_secs(10), |rs| rs.len() >= 5).await;
    assert!(after.iter().all(|r| r.partition == 1), "{after:?}");
    let released = fake
        .coordinator
        .lock()
        .heartbeats
        .iter()
        .filter_map(|h| h.owned_partitions.as_ref())
        .any(|o| partition_set(&o.topics) == BTreeSet::from([tp("t", 1)]));
    assert!(released, "the released partition was not reported");
    epoch.store(2, Ordering::Release);
    let deadline = Instant::now() + Duration::from_secs(5);
    while consumer.member_epoch() != Some(2) && Instant::now() < deadline {
        consumer.poll(Duration::from_millis(50)).await.unwrap();
    }
    assert_eq!(consumer.member_epoch(), Some(2));

    // close: commit, revoke, leave.
    consumer.close().await.unwrap();
    let log = fake.log().lock().clone();
    let position = log
        .iter()
        .rposition(|l| l.starts_with("commit t-1@") && l.ends_with("epoch 2"))
        .expect("t-1 committed on close");
    let revoked = log.iter().rposition(|l| l == "revoked t-1").unwrap();
    let left = log.iter().rposition(|l| l == "heartbeat epoch -1").unwrap();
    assert!(position < revoked && revoked < left, "{log:?}");
    assert!(consumer.poll(Duration::ZERO).await.is_err(), "closed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_member_loses_its_partitions_and_rejoins_with_epoch_0() {
    let fake = Fake::start(&[("t", 1)], numbered(i64::MAX)).await;
    let fenced = Arc::new(AtomicI32::new(0));
    let fenced_in = Arc::clone(&fenced);
    fake.coordinator.lock().on_heartbeat = Box::new(move |r, n| {
        let mut answer = ConsumerGroupHeartbeatResponse {
            member_id: r.member_id.clone(),
            member_epoch: if fenced_in.load(Ordering::Acquire) > 0 {
                7
            } else {
                3
            },
            heartbeat_interval_ms: 100,
            ..Default::default()
        };
        if r.member_epoch == 0 {
            answer.assignment = Some(assignment(&[("t", 0)]));
        } else if n == 4 && fenced_in.fetch_add(1, Ordering::AcqRel) == 0 {
            answer.error_code = ErrorCode::FencedMemberEpoch as i32;
            answer.error_message = "fenced".into();
        }
        answer
    });
    let mut consumer = Consumer::new(ConsumerConfig {
        auto_commit_interval: Duration::from_millis(1),
        ..config(&fake)
    })
    .unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    poll_until(&mut consumer, Duration::from_secs(10), |_| {
        logged(&fake, "lost t-0").is_some()
            && fake
                .log()
                .lock()
                .iter()
                .filter(|l| *l == "assigned t-0")
                .count()
                == 2
    })
    .await;
    let log = fake.log().lock().clone();
    let lost = logged(&fake, "lost t-0").unwrap();
    // Lost partitions are not committed: from the loss until the partition is assigned
    // again (auto commit runs on every poll here) only a commit sent before the member
    // learned of the fence may arrive, with the old epoch (which a coordinator refuses);
    // the rejoin comes after the loss.
    let again = lost
        + log[lost..]
            .iter()
            .position(|l| l == "assigned t-0")
            .unwrap();
    assert!(
        log[lost..again]
            .iter()
            .all(|l| !l.starts_with("commit") || l.ends_with("epoch 3")),
        "{log:?}"
    );
    let rejoin = log[lost..].iter().position(|l| l == "heartbeat epoch 0");
    assert!(rejoin.is_some(), "{log:?}");
    let c = fake.coordinator.lock();
    let rejoin = c
        .heartbeats
        .iter()
        .skip(1)
        .find(|h| h.member_epoch == 0)
        .unwrap();
    assert_eq!(
        rejoin.member_id, c.heartbeats[0].member_id,
        "the same member id"
    );
    assert_eq!(rejoin.subscribed_topic_names.as_ref().unwrap().names, ["t"]);
    assert_eq!(rejoin.owned_partitions.as_ref().unwrap().topics.len(), 0);
    assert_eq!(rejoin.rebalance_timeout_ms, 300_000);
    drop(c);
    assert_eq!(consumer.member_epoch(), Some(7));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_commit_is_retried_once_with_the_next_epoch() {
    let fake = Fake::start(&[("t", 1)], numbered(0)).await;
    fake.coordinator.lock().on_heartbeat = Box::new(|r, n| ConsumerGroupHeartbeatResponse {
        member_id: r.member_id.clone(),
        member_epoch: n as i32 + 1,
        heartbeat_interval_ms: 200,
        assignment: (r.member_epoch == 0).then(|| assignment(&[("t", 0)])),
        ..Default::default()
    });
    fake.coordinator.lock().on_commit =
        Box::new(|_, n| (n == 0).then_some(ErrorCode::StaleMemberEpoch));
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    poll_until(&mut consumer, Duration::from_secs(10), |_| {
        logged(&fake, "assigned t-0").is_some()
    })
    .await;
    let offsets = [(tp("t", 0), OffsetAndMetadata::new(3))].into();
    consumer.commit_sync(Some(offsets)).await.unwrap();
    {
        let c = fake.coordinator.lock();
        assert_eq!(c.commits.len(), 2);
        assert!(c.commits[1].member_epoch > c.commits[0].member_epoch);
        assert_eq!(c.commits[1].member_id, consumer.member_id().unwrap());
        assert_eq!(c.committed[&tp("t", 0)], 3);
    }

    // Stale twice: the error is returned.
    fake.coordinator.lock().on_commit = Box::new(|_, _| Some(ErrorCode::StaleMemberEpoch));
    let offsets = [(tp("t", 0), OffsetAndMetadata::new(4))].into();
    let handle = consumer.commit_async(Some(offsets)).unwrap();
    match handle.await.unwrap() {
        Err(e @ ConsumerError::Commit { .. }) => {
            assert_eq!(e.code(), Some(ErrorCode::StaleMemberEpoch))
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_assigned_consumer_commits_from_outside_the_group() {
    let fake = Fake::start(&[("t", 1)], numbered(20)).await;
    fake.coordinator.lock().committed.insert(tp("t", 0), 4);
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.assign([tp("t", 0)]);
    let seen = poll_until(&mut consumer, Duration::from_secs(10), |rs| !rs.is_empty()).await;
    assert_eq!(seen[0].offset, 4, "starts at the committed offset");
    consumer.commit_sync(None).await.unwrap();
    {
        let c = fake.coordinator.lock();
        let commit = c.commits.last().unwrap();
        assert_eq!((commit.member_epoch, commit.member_id.as_str()), (-1, ""));
        assert_eq!(
            c.committed[&tp("t", 0)],
            consumer.position(&tp("t", 0)).unwrap()
        );
        assert!(c.heartbeats.is_empty(), "no membership without subscribe");
    }
    let committed = consumer.committed(&[tp("t", 0)]).await.unwrap();
    assert_eq!(
        committed[&tp("t", 0)].as_ref().map(|o| o.offset),
        consumer.position(&tp("t", 0))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_offset_reset_none_fails_poll_for_partitions_without_a_committed_offset() {
    let fake = Fake::start(&[("t", 2)], numbered(20)).await;
    fake.coordinator.lock().committed.insert(tp("t", 1), 2);
    let mut consumer = Consumer::new(ConsumerConfig {
        auto_offset_reset: OffsetReset::None,
        ..config(&fake)
    })
    .unwrap();
    consumer.assign([tp("t", 0), tp("t", 1)]);
    match consumer.poll(Duration::from_millis(500)).await {
        Err(ConsumerError::NoOffset { partitions }) => assert_eq!(partitions, [tp("t", 0)]),
        other => panic!("{other:?}"),
    }
    assert_eq!(consumer.position(&tp("t", 1)), Some(2));
    consumer.seek(&tp("t", 0), 0);
    poll_until(&mut consumer, Duration::from_secs(10), |rs| {
        rs.iter().any(|r| r.partition == 0) && rs.iter().any(|r| r.partition == 1)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moved_coordinator_is_found_again() {
    let fake = Fake::start(&[("t", 1)], numbered(0)).await;
    fake.coordinator.lock().not_coordinator = 2;
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    poll_until(&mut consumer, Duration::from_secs(10), |_| {
        consumer_epoch_known(&fake)
    })
    .await;
    assert!(fake.coordinator.lock().find_coordinator_calls >= 3);
}

fn consumer_epoch_known(fake: &Fake) -> bool {
    !fake.coordinator.lock().heartbeats.is_empty()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_stops_polling_leaves_and_rejoins_on_the_next_poll() {
    let fake = Fake::start(&[("t", 1)], numbered(0)).await;
    let target = Arc::new(Mutex::new(vec![("t", 0)]));
    scripted(&fake, target, Arc::new(AtomicI32::new(1)));
    let mut consumer = Consumer::new(ConsumerConfig {
        max_poll_interval: Duration::from_millis(700),
        ..config(&fake)
    })
    .unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    poll_until(&mut consumer, Duration::from_secs(10), |_| {
        logged(&fake, "assigned t-0").is_some()
    })
    .await;
    // Heartbeats go on without polls until max.poll.interval.ms passes, then it leaves.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let left = logged(&fake, "heartbeat epoch -1").expect("left after the poll timeout");
    assert!(
        fake.log().lock()[..left]
            .iter()
            .filter(|l| *l == "heartbeat epoch 1")
            .count()
            >= 2
    );
    assert_eq!(
        fake.coordinator
            .lock()
            .heartbeats
            .last()
            .unwrap()
            .member_epoch,
        -1,
        "no heartbeats after leaving"
    );
    poll_until(&mut consumer, Duration::from_secs(10), |_| {
        fake.log()
            .lock()
            .iter()
            .filter(|l| *l == "assigned t-0")
            .count()
            == 2
    })
    .await;
    let log = fake.log().lock().clone();
    let lost = logged(&fake, "lost t-0").expect("partitions lost");
    assert!(
        lost > left && log[lost..].iter().any(|l| l == "heartbeat epoch 0"),
        "{log:?}"
    );
}

#[tokio::test]
async fn group_calls_without_a_group_id_say_what_is_missing() {
    let mut consumer = Consumer::new(ConsumerConfig::default()).unwrap();
    for e in [
        consumer
            .subscribe(["t"], crate::NoOpRebalanceListener)
            .unwrap_err(),
        consumer
            .subscribe_pattern("t.*", crate::NoOpRebalanceListener)
            .unwrap_err(),
        consumer.commit_sync(None).await.unwrap_err(),
        consumer.committed(&[tp("t", 0)]).await.unwrap_err(),
    ] {
        assert!(e.to_string().contains("group.id"), "{e}");
    }
    let mut grouped = Consumer::new(ConsumerConfig {
        group_id: Some("g".into()),
        ..Default::default()
    })
    .unwrap();
    assert!(
        grouped
            .subscribe_pattern("(", crate::NoOpRebalanceListener)
            .is_err()
    );
    assert!(
        grouped
            .subscribe(Vec::<String>::new(), crate::NoOpRebalanceListener)
            .is_err()
    );
    grouped.assign([tp("t", 0)]);
    let e = grouped
        .subscribe(["t"], crate::NoOpRebalanceListener)
        .unwrap_err();
    assert!(e.to_string().contains("unsubscribe"), "{e}");
    grouped.unsubscribe().await.unwrap();
    grouped.seek(&tp("t", 0), 1);
    let e = grouped.poll(Duration::ZERO).await.unwrap_err();
    assert!(e.to_string().contains("not assigned"), "{e}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_keeps_polling_stays_even_with_rare_heartbeats() {
    let fake = Fake::start(&[("t", 1)], numbered(0)).await;
    // Heartbeats every 5 s, polls needed every 700 ms: the task wakes for the poll deadline,
    // and must see the polls made meanwhile.
    fake.coordinator.lock().on_heartbeat = Box::new(|r, _| ConsumerGroupHeartbeatResponse {
        member_id: r.member_id.clone(),
        member_epoch: if r.member_epoch < 0 {
            r.member_epoch
        } else {
            1
        },
        heartbeat_interval_ms: 5_000,
        assignment: (r.member_epoch == 0).then(|| assignment(&[("t", 0)])),
        ..Default::default()
    });
    let mut consumer = Consumer::new(ConsumerConfig {
        max_poll_interval: Duration::from_millis(700),
        ..config(&fake)
    })
    .unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    let deadline = Instant::now() + Duration::from_millis(2_500);
    while Instant::now() < deadline {
        consumer.poll(Duration::from_millis(100)).await.unwrap();
    }
    let log = fake.log().lock().clone();
    assert!(
        !log.iter()
            .any(|l| l == "heartbeat epoch -1" || l.starts_with("lost")),
        "{log:?}"
    );
    assert_eq!(consumer.assignment(), vec![tp("t", 0)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_without_a_bound_and_tiny_timeouts_do_not_panic() {
    let fake = Fake::start(&[("t", 1)], numbered(3)).await;
    let mut consumer = Consumer::new(ConsumerConfig {
        request_timeout: Duration::from_millis(20),
        default_api_timeout: Duration::from_millis(20),
        ..config(&fake)
    })
    .unwrap();
    consumer.assign([tp("t", 0)]);
    // Looks the committed offset up (patience below 100 ms), then waits without a bound
    // until records come.
    let records = consumer.poll(Duration::MAX).await.unwrap();
    assert_eq!(records[0].offset, 0);
    // Closing commits with the same 20 ms patience: on a loaded machine (a CI run of the
    // whole suite) the commit may time out, which is an answer, not a panic.
    match consumer.close().await {
        Ok(()) | Err(ConsumerError::Commit { .. }) => {}
        Err(e) => panic!("close failed: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_join_the_next_heartbeat_reports_what_the_member_owns() {
    // A coordinator that took the join as a repeated one (it ignores owned_partitions at
    // epoch 0) and holds t-0 back until a heartbeat at the member's epoch reports ownership,
    // as KIP-848's UNREVOKED_PARTITIONS state does.
    let fake = Fake::start(&[("t", 1)], numbered(0)).await;
    fake.coordinator.lock().on_heartbeat = Box::new(|r, _| {
        let released = r.member_epoch > 0 && r.owned_partitions.is_some();
        ConsumerGroupHeartbeatResponse {
            member_id: r.member_id.clone(),
            member_epoch: match r.member_epoch {
                e if e < 0 => e,
                0 | 1 if !released => 1,
                _ => 2,
            },
            heartbeat_interval_ms: 50,
            assignment: match r.member_epoch {
                0 => Some(assignment(&[])),
                1 if released => Some(assignment(&[("t", 0)])),
                _ => None,
            },
            ..Default::default()
        }
    });
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    poll_until(&mut consumer, Duration::from_secs(3), |_| {
        logged(&fake, "assigned t-0").is_some()
    })
    .await;
    let c = fake.coordinator.lock();
    let after_join = c.heartbeats.iter().find(|h| h.member_epoch > 0).unwrap();
    assert_eq!(
        after_join.owned_partitions.as_ref().map(|o| o.topics.len()),
        Some(0),
        "the first heartbeat after the join reports owning nothing"
    );
}

/// A manual-commit application's listener that hands over, on revocation, the positions after
/// the records it processed (as a Kafka listener commits in `onPartitionsRevoked`).
struct CommitsOnRevoke {
    log: Arc<Mutex<Vec<String>>>,
    processed: Arc<Mutex<std::collections::BTreeMap<TopicPartition, i64>>>,
}

impl ConsumerRebalanceListener for CommitsOnRevoke {
    fn offsets_to_commit_on_revoke(
        &mut self,
        partitions: &[TopicPartition],
    ) -> std::collections::BTreeMap<TopicPartition, OffsetAndMetadata> {
        let processed = self.processed.lock();
        let mut offsets: std::collections::BTreeMap<_, _> = partitions
            .iter()
            .filter_map(|tp| {
                let offset = *processed.get(tp)?;
                Some((
                    tp.clone(),
                    OffsetAndMetadata {
                        offset,
                        leader_epoch: None,
                        metadata: String::new(),
                    },
                ))
            })
            .collect();
        // Not being revoked: left out.
        offsets.insert(
            tp("other", 0),
            OffsetAndMetadata {
                offset: 1,
                leader_epoch: None,
                metadata: String::new(),
            },
        );
        offsets
    }
    fn on_partitions_revoked(&mut self, p: &[TopicPartition]) {
        self.log.lock().push(format!("revoked {}", names(p)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manual_commit_listener_commits_what_it_processed_before_a_revocation() {
    let fake = Fake::start(&[("t", 2)], numbered(i64::MAX)).await;
    let target = Arc::new(Mutex::new(vec![("t", 0), ("t", 1)]));
    let epoch = Arc::new(AtomicI32::new(1));
    scripted(&fake, Arc::clone(&target), Arc::clone(&epoch));
    let mut consumer = Consumer::new(ConsumerConfig {
        enable_auto_commit: false,
        ..config(&fake)
    })
    .unwrap();
    let processed = Arc::new(Mutex::new(std::collections::BTreeMap::new()));
    consumer
        .subscribe(
            ["t"],
            CommitsOnRevoke {
                log: fake.log(),
                processed: Arc::clone(&processed),
            },
        )
        .unwrap();
    let process = |records: &[ConsumerRecord]| {
        let mut p = processed.lock();
        for r in records {
            p.insert(tp(&r.topic, r.partition), r.offset + 1);
        }
    };
    let seen = poll_until(&mut consumer, Duration::from_secs(10), |rs| {
        rs.iter().any(|r| r.partition == 0) && rs.iter().any(|r| r.partition == 1)
    })
    .await;
    process(&seen);
    let t0 = processed.lock()[&tp("t", 0)];

    *target.lock() = vec![("t", 1)];
    let deadline = Instant::now() + Duration::from_secs(10);
    while logged(&fake, "revoked t-0").is_none() {
        assert!(Instant::now() < deadline, "t-0 was not revoked");
        let records = consumer.poll(Duration::from_millis(100)).await.unwrap();
        // Records of t-0 returned by this poll were processed too.
        process(&records);
    }
    let t0 = processed.lock()[&tp("t", 0)].max(t0);
    let commit_at = logged(&fake, &format!("commit t-0@{t0} epoch 1"))
        .unwrap_or_else(|| panic!("t-0@{t0} committed: {:?}", fake.log().lock()));
    assert!(commit_at < logged(&fake, "revoked t-0").unwrap());
    assert!(
        !fake
            .coordinator
            .lock()
            .committed
            .contains_key(&tp("other", 0)),
        "only the revoked partitions' offsets are committed"
    );

    // close revokes what is left: its offsets go first too.
    let more = consumer.poll(Duration::from_millis(200)).await.unwrap();
    process(&more);
    let t1 = processed.lock()[&tp("t", 1)];
    consumer.close().await.unwrap();
    let log = fake.log().lock().clone();
    let committed = log
        .iter()
        .rposition(|l| l.starts_with(&format!("commit t-1@{t1} ")))
        .unwrap_or_else(|| panic!("t-1@{t1} committed on close: {log:?}"));
    let revoked = log.iter().rposition(|l| l == "revoked t-1").unwrap();
    assert!(committed < revoked, "{log:?}");
}

/// A partition given and taken back between two polls: the member never takes it, but the
/// coordinator, which saw no report since it gave it, counts it as owned and waits for it to
/// be given up. The member reports what it owns after reconciling the newest target even
/// when nothing changed for it, or the rebalance would wait for the rebalance timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_given_and_taken_back_between_polls_is_reported_not_owned() {
    let fake = Fake::start(&[("t", 2)], numbered(0)).await;
    let target = Arc::new(Mutex::new(vec![("t", 0)]));
    let epoch = Arc::new(AtomicI32::new(1));
    scripted(&fake, Arc::clone(&target), Arc::clone(&epoch));
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    let owned_reported = |fake: &Fake, from: usize, owned: &[TopicPartition]| {
        fake.coordinator.lock().heartbeats[from..]
            .iter()
            .filter_map(|h| h.owned_partitions.as_ref())
            .any(|o| partition_set(&o.topics) == owned.iter().cloned().collect())
    };
    poll_until(&mut consumer, Duration::from_secs(5), |_| {
        owned_reported(&fake, 0, &[tp("t", 0)])
    })
    .await;
    // Not polling: t-1 is given, then taken back, each seen by a heartbeat.
    let answered = |fake: &Fake| fake.coordinator.lock().heartbeats.len();
    let wait_heartbeats = |n: usize| {
        let fake = &fake;
        async move {
            let from = answered(fake);
            while answered(fake) < from + n {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    *target.lock() = vec![("t", 0), ("t", 1)];
    epoch.store(2, Ordering::Release);
    wait_heartbeats(2).await;
    *target.lock() = vec![("t", 0)];
    epoch.store(3, Ordering::Release);
    wait_heartbeats(2).await;
    let from = answered(&fake);
    poll_until(&mut consumer, Duration::from_secs(2), |_| {
        owned_reported(&fake, from, &[tp("t", 0)])
    })
    .await;
    assert!(
        logged(&fake, "assigned t-1").is_none(),
        "t-1 was never taken"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_keeps_its_timeout_while_a_reset_lookup_retries() {
    let fake = Fake::start(&[("t", 1)], numbered(3)).await;
    *fake.list_offsets_error.lock() = Some(ErrorCode::NotLeaderOrFollower);
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.assign([tp("t", 0)]);
    for _ in 0..3 {
        let started = Instant::now();
        assert!(
            consumer
                .poll(Duration::from_millis(200))
                .await
                .unwrap()
                .is_empty()
        );
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(consumer.position(&tp("t", 0)), None);
    *fake.list_offsets_error.lock() = None;
    let seen = poll_until(&mut consumer, Duration::from_secs(10), |rs| rs.len() >= 3).await;
    let offsets: Vec<i64> = seen.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, [0, 1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_commit_before_a_revocation_does_not_hold_poll_past_its_timeout() {
    let fake = Fake::start(&[("t", 2)], numbered(i64::MAX)).await;
    let target = Arc::new(Mutex::new(vec![("t", 0), ("t", 1)]));
    scripted(&fake, Arc::clone(&target), Arc::new(AtomicI32::new(1)));
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    let mut seen = poll_until(&mut consumer, Duration::from_secs(10), |rs| {
        rs.iter().any(|r| r.partition == 0)
    })
    .await;
    // The commit before t-0 is given up takes four retries (~1.5 s).
    fake.coordinator.lock().on_commit =
        Box::new(|_, n| (n < 4).then_some(ErrorCode::RequestTimedOut));
    *target.lock() = vec![("t", 1)];
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut slowest = Duration::ZERO;
    while logged(&fake, "revoked t-0").is_none() && Instant::now() < deadline {
        let started = Instant::now();
        seen.extend(consumer.poll(Duration::from_millis(100)).await.unwrap());
        slowest = slowest.max(started.elapsed());
    }
    let revoked = logged(&fake, "revoked t-0").expect("t-0 revoked");
    assert!(slowest < Duration::from_millis(600), "{slowest:?}");
    let committed = fake.coordinator.lock().committed[&tp("t", 0)];
    let last = seen
        .iter()
        .filter(|r| r.partition == 0)
        .map(|r| r.offset)
        .max()
        .unwrap();
    assert_eq!(
        committed,
        last + 1,
        "exactly what was returned of t-0 is committed, and nothing after it returned"
    );
    let commit = logged(&fake, &format!("commit t-0@{committed} epoch 1")).unwrap();
    assert!(commit < revoked, "{:?}", fake.log().lock());
    assert_eq!(consumer.assignment(), vec![tp("t", 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_queued_behind_others_keep_their_own_deadlines() {
    let fake = Fake::start(&[("t", 1)], numbered(0)).await;
    fake.coordinator.lock().on_commit = Box::new(|_, _| Some(ErrorCode::RequestTimedOut));
    let mut consumer = Consumer::new(ConsumerConfig {
        request_timeout: Duration::from_secs(1),
        default_api_timeout: Duration::from_secs(2),
        ..config(&fake)
    })
    .unwrap();
    consumer.assign([tp("t", 0)]);
    let at = |o: i64| Some([(tp("t", 0), OffsetAndMetadata::new(o))].into());
    let started = Instant::now();
    let queued: Vec<_> = (0..5)
        .map(|o| consumer.commit_async(at(o)).unwrap())
        .collect();
    let e = consumer.commit_sync(at(9)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::RequestTimedOut), "{e}");
    // The async commits end within request.timeout.ms of being made, the sync one within
    // default.api.timeout.ms: not one timeout after another.
    assert!(
        started.elapsed() < Duration::from_millis(3_500),
        "{:?}",
        started.elapsed()
    );
    for q in queued {
        let e = q.await.unwrap().unwrap_err();
        assert_eq!(e.code(), Some(ErrorCode::RequestTimedOut), "{e}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_epoch_for_a_partition_not_owned_fails_without_waiting_for_a_heartbeat() {
    let fake = Fake::start(&[("t", 2)], numbered(0)).await;
    fake.coordinator.lock().on_heartbeat = Box::new(|r, _| ConsumerGroupHeartbeatResponse {
        member_id: r.member_id.clone(),
        member_epoch: if r.member_epoch < 0 {
            r.member_epoch
        } else {
            1
        },
        heartbeat_interval_ms: 5_000,
        assignment: (r.member_epoch == 0).then(|| assignment(&[("t", 0)])),
        ..Default::default()
    });
    fake.coordinator.lock().on_commit = Box::new(|_, _| Some(ErrorCode::StaleMemberEpoch));
    let mut consumer = Consumer::new(config(&fake)).unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    poll_until(&mut consumer, Duration::from_secs(10), |_| {
        logged(&fake, "assigned t-0").is_some()
    })
    .await;
    let started = Instant::now();
    let offsets = [(tp("t", 1), OffsetAndMetadata::new(3))].into();
    let e = consumer.commit_sync(Some(offsets)).await.unwrap_err();
    assert_eq!(e.code(), Some(ErrorCode::StaleMemberEpoch), "{e}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(fake.coordinator.lock().commits.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_without_auto_commit_sends_queued_commits_before_leaving() {
    let fake = Fake::start(&[("t", 1)], numbered(0)).await;
    scripted(
        &fake,
        Arc::new(Mutex::new(vec![("t", 0)])),
        Arc::new(AtomicI32::new(1)),
    );
    // The commit takes three retries (~0.7 s).
    fake.coordinator.lock().on_commit =
        Box::new(|_, n| (n < 3).then_some(ErrorCode::RequestTimedOut));
    let mut consumer = Consumer::new(ConsumerConfig {
        enable_auto_commit: false,
        ..config(&fake)
    })
    .unwrap();
    consumer.subscribe(["t"], Recorder(fake.log())).unwrap();
    poll_until(&mut consumer, Duration::from_secs(10), |_| {
        logged(&fake, "assigned t-0").is_some()
    })
    .await;
    let queued = consumer
        .commit_async(Some([(tp("t", 0), OffsetAndMetadata::new(5))].into()))
        .unwrap();
    consumer.close().await.unwrap();
    let commit = logged(&fake, "commit t-0@5 epoch 1").expect("committed as the member");
    let left = logged(&fake, "heartbeat epoch -1").expect("left");
    assert!(commit < left, "{:?}", fake.log().lock());
    queued.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_offset_lookup_is_retried_after_its_backoff_while_a_fetch_is_out() {
    // t-0 is positioned and its fetch takes 1.5 s; t-1's committed offset (4) is "loading" at
    // the first lookup. The lookup is tried again when its backoff (100 ms) ends, so t-1's
    // record comes back while t-0's fetch is still out — not after it.
    let fake = Fake::start(
        &[("t", 2)],
        Arc::new(|tp, offset| match (tp.partition, offset) {
            (0, _) => {
                std::thread::sleep(Duration::from_millis(1_500));
                crate::testing::records(0, Vec::new())
            }
            (1, 4) => crate::testing::records(1, crate::testing::batch(4, &["committed"])),
            (p, _) => crate::testing::records(p, Vec::new()),
        }),
    )
    .await;
    {
        let mut c = fake.coordinator.lock();
        c.committed.insert(tp("t", 1), 4);
        c.offsets_loading = 1;
    }
    let mut consumer = Consumer::new(ConsumerConfig {
        max_in_flight_fetches_per_broker: 2,
        ..config(&fake)
    })
    .unwrap();
    consumer.assign([tp("t", 0), tp("t", 1)]);
    consumer.seek(&tp("t", 0), 0);
    let started = Instant::now();
    // One long poll: a new poll would look the offsets up again itself.
    let got = consumer.poll(Duration::from_secs(5)).await.unwrap();
    let values: Vec<_> = got
        .iter()
        .map(|r| (r.offset, r.value.clone().unwrap()))
        .collect();
    assert_eq!(values, [(4, "committed".into())]);
    assert_eq!(
        fake.coordinator.lock().offsets_loading,
        0,
        "the first lookup was refused"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_200),
        "t-1 waited {:?}, as long as t-0's fetch",
        started.elapsed()
    );
}
