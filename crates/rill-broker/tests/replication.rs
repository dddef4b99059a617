//! Follower replication with real brokers: an RF 3 partition keeps every acknowledged record
//! when its leader dies, followers rejoin the ISR by themselves, and acks=all waits for the
//! in-sync replicas.

mod common;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use common::*;
use rill_consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};

async fn produce(
    bootstrap: Vec<String>,
    topic: &str,
    from: usize,
    n: usize,
) -> Vec<(i32, i64, String)> {
    let producer = Producer::new(ProducerConfig {
        bootstrap,
        acks: -1,
        ..Default::default()
    })
    .unwrap();
    let mut pending = Vec::new();
    for i in from..from + n {
        let value = format!("v{i}");
        pending.push((
            value.clone(),
            producer
                .send(ProducerRecord::new(topic, Some(format!("k{i}")), value))
                .await
                .unwrap(),
        ));
    }
    let mut acked = Vec::new();
    for (value, f) in pending {
        let md = f.await.unwrap();
        acked.push((md.partition, md.offset, value));
    }
    producer.close().await;
    acked
}

async fn consume(bootstrap: &[String], topic: &str, expected: usize) -> Vec<(i32, i64, String)> {
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_vec(),
        auto_offset_reset: OffsetReset::Earliest,
        fetch_max_wait: Duration::from_millis(200),
        ..Default::default()
    })
    .unwrap();
    let tps = consumer.partitions_of(topic).await.unwrap();
    consumer.assign(tps.clone());
    consumer.seek_to_beginning(&tps).await.unwrap();
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected && Instant::now() < deadline {
        if let Ok(batch) = consumer.poll(Duration::from_millis(500)).await {
            out.extend(batch.iter().map(|r| {
                (
                    r.partition,
                    r.offset,
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                )
            }));
        }
    }
    out
}

/// (leader, isr) of partition 0 of `topic`, as the brokers' metadata says.
async fn state(cluster: &Cluster, topic: &str) -> Option<(i32, Vec<i32>)> {
    let md = cluster.client().refresh(&[topic.to_owned()]).await.ok()?;
    let p = md.topics.first()?.partitions.first()?;
    let mut isr = p.isr.clone();
    isr.sort();
    Some((p.leader_id, isr))
}

async fn wait_for(cluster: &Cluster, topic: &str, what: &str, ok: impl Fn(i32, &[i32]) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        if let Some((leader, isr)) = state(cluster, topic).await
            && ok(leader, &isr)
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: still {:?}",
            state(cluster, topic).await
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The reproduction: 1000 records with acks=all on an RF 3 topic, the leader SIGKILLed:
/// all 1000 are read from the new leader, at the offsets acknowledged; the old leader comes
/// back, catches up and rejoins the ISR by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rf3_partition_keeps_every_acknowledged_record_when_its_leader_dies() {
    let mut cluster = Cluster::start(1, 3, &["replica.lag.time.max.ms=5000"]).await;
    cluster
        .create_topic("rf3", 1, 3, &[("min.insync.replicas", "2")])
        .await;
    wait_for(&cluster, "rf3", "ISR of 3", |_, isr| isr.len() == 3).await;
    let acked = produce(cluster.bootstrap(), "rf3", 0, 1000).await;
    assert_eq!(acked.len(), 1000);
    let (leader, _) = state(&cluster, "rf3").await.unwrap();
    cluster.kill_broker((leader - 1) as usize);
    wait_for(&cluster, "rf3", "a new leader", |l, _| {
        l >= 0 && l != leader
    })
    .await;
    let got: HashSet<(i32, i64, String)> = consume(&cluster.bootstrap(), "rf3", acked.len())
        .await
        .into_iter()
        .collect();
    let lost: Vec<_> = acked.iter().filter(|a| !got.contains(*a)).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );

    // More writes while it is down (ISR of 2 = min.insync.replicas), then it comes back.
    let more = produce(cluster.bootstrap(), "rf3", 1000, 500).await;
    cluster.start_broker((leader - 1) as usize);
    wait_for(
        &cluster,
        "rf3",
        "the old leader back in the ISR",
        |_, isr| isr.contains(&leader) && isr.len() == 3,
    )
    .await;
    let all: HashSet<(i32, i64, String)> =
        consume(&cluster.bootstrap(), "rf3", acked.len() + more.len())
            .await
            .into_iter()
            .collect();
    for a in acked.iter().chain(&more) {
        assert!(all.contains(a), "{a:?} lost");
    }
    assert_eq!(all.len(), 1500, "no record read twice at different offsets");
}

/// Reverses the replica order of every partition of `topic` and elects the preferred leaders:
/// every partition changes leader, as an auto-rebalance after a restart does. Returns each
/// partition's new leader and the epoch it had before.
async fn flip_leaders(cluster: &Cluster, topic: &str) -> Vec<(i32, i32)> {
    use rill_protocol::proto::*;
    let md = cluster.client().refresh(&[topic.to_owned()]).await.unwrap();
    let expected = md.topics[0]
        .partitions
        .iter()
        .map(|p| (*p.replicas.last().unwrap(), p.leader_epoch))
        .collect();
    let partitions = md.topics[0]
        .partitions
        .iter()
        .map(|p| ReassignablePartition {
            index: p.index,
            replicas: Some(IsrList {
                ids: p.replicas.iter().rev().copied().collect(),
            }),
        })
        .collect::<Vec<_>>();
    let reassign = AlterPartitionReassignmentsRequest {
        topics: vec![ReassignableTopic {
            name: topic.to_owned(),
            partitions,
        }],
    };
    let r = cluster
        .client()
        .admin(Duration::from_secs(10), |mut c| {
            let reassign = reassign.clone();
            async move { c.alter_partition_reassignments(reassign).await }
        })
        .await
        .unwrap();
    assert!(
        r.topics[0].partitions.iter().all(|p| p.error_code == 0),
        "{r:?}"
    );
    let elect = ElectLeadersRequest {
        topics: vec![ElectLeadersTopic {
            name: topic.to_owned(),
            partitions: vec![],
        }],
    };
    cluster
        .client()
        .admin(Duration::from_secs(10), |mut c| {
            let elect = elect.clone();
            async move { c.elect_leaders(elect).await }
        })
        .await
        .unwrap();
    expected
}

/// One partition's fetch error holds back that partition only. Around a leadership change one
/// broker applies the change before the other, so a follower's fetch for a moved partition
/// fails (NOT_LEADER_OR_FOLLOWER from a leader that already let go, UNKNOWN_LEADER_EPOCH from
/// one that has not taken over yet). With `replica.fetch.backoff.ms` at a minute, a fetch loop
/// that paused as a whole would hold every acks=all write of the partitions it carries for that
/// minute; here each such write must be acknowledged within seconds while every partition of
/// another topic changes leader, six times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_changes_elsewhere_do_not_hold_up_acks_all_writes() {
    let cluster = Cluster::start(1, 2, &["replica.fetch.backoff.ms=60000"]).await;
    cluster
        .create_topic("w", 2, 2, &[("min.insync.replicas", "2")])
        .await;
    cluster.create_topic("moving", 16, 2, &[]).await;
    wait_for(&cluster, "w", "ISR of 2", |_, isr| isr.len() == 2).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: -1,
        ..Default::default()
    })
    .unwrap();
    let mut slowest = Duration::ZERO;
    for round in 0..6 {
        let _ = flip_leaders(&cluster, "moving").await;
        // Writes to both partitions of "w" (both brokers lead one, each follows the other) for
        // the next second, each waited for.
        let until = Instant::now() + Duration::from_secs(1);
        let mut i = 0;
        while Instant::now() < until {
            let started = Instant::now();
            let r = tokio::time::timeout(
                Duration::from_secs(20),
                producer
                    .send(ProducerRecord::new(
                        "w",
                        Some(format!("k{i}")),
                        format!("r{round}-{i}"),
                    ))
                    .await
                    .unwrap(),
            )
            .await;
            assert!(
                matches!(r, Ok(Ok(_))),
                "round {round}: write {i} not acknowledged within 20 s: {r:?}"
            );
            slowest = slowest.max(started.elapsed());
            i += 1;
        }
    }
    producer.close().await;
    assert!(
        slowest < Duration::from_secs(10),
        "an acks=all write waited {slowest:?} while other partitions changed leader"
    );
}

/// Waits until every broker's own metadata names each partition's `expected` leader in an
/// epoch after the one it had (what [`flip_leaders`] returns), so no broker lags behind.
async fn wait_all_brokers_see(
    cluster: &Cluster,
    topic: &str,
    brokers: i32,
    expected: &[(i32, i32)],
) {
    use rill_protocol::proto::MetadataRequest;
    let deadline = Instant::now() + Duration::from_secs(20);
    let client = cluster.client();
    'retry: loop {
        assert!(
            Instant::now() < deadline,
            "brokers never agreed on the new leaders"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
        // Learns the brokers' addresses.
        let _ = client.refresh(&[topic.to_owned()]).await;
        for id in 1..=brokers {
            let Ok(mut b) = client.broker(id) else {
                continue 'retry;
            };
            let Ok(md) = b
                .metadata(MetadataRequest {
                    topics: vec![topic.to_owned()],
                })
                .await
            else {
                continue 'retry;
            };
            let md = md.into_inner();
            let Some(t) = md.topics.first() else {
                continue 'retry;
            };
            if t.partitions.len() != expected.len()
                || t.partitions.iter().any(|p| {
                    let (leader, old_epoch) = expected[p.index as usize];
                    p.leader_id != leader || p.leader_epoch <= old_epoch
                })
            {
                continue 'retry;
            }
        }
        return;
    }
}

/// KIP-951: a client whose metadata still names the old leader learns the new one from the
/// old leader's NOT_LEADER_OR_FOLLOWER answer and goes there at once, not after
/// `retry.backoff.ms` and a metadata refresh. With the backoffs at 30 s, a write and a read
/// after every partition changed leader must each be done within 10 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_follow_a_moved_leader_at_once() {
    let cluster = Cluster::start(1, 2, &[]).await;
    cluster
        .create_topic("moved", 2, 2, &[("min.insync.replicas", "2")])
        .await;
    wait_for(&cluster, "moved", "ISR of 2", |_, isr| isr.len() == 2).await;
    let backoff = Duration::from_secs(30);
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: -1,
        retry_backoff: backoff,
        ..Default::default()
    })
    .unwrap();
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        auto_offset_reset: OffsetReset::Earliest,
        fetch_max_wait: Duration::from_millis(200),
        retry_backoff: backoff,
        retry_backoff_max: backoff,
        ..Default::default()
    })
    .unwrap();
    let tps = consumer.partitions_of("moved").await.unwrap();
    consumer.assign(tps.clone());
    consumer.seek_to_beginning(&tps).await.unwrap();
    let mut read = 0;
    for round in 0..3 {
        if round > 0 {
            let expected = flip_leaders(&cluster, "moved").await;
            wait_all_brokers_see(&cluster, "moved", 2, &expected).await;
        }
        let started = Instant::now();
        for partition in 0..2 {
            let mut record = ProducerRecord::new("moved", None::<String>, format!("r{round}"));
            record.partition = Some(partition);
            let d = producer.send(record).await.unwrap();
            let r = tokio::time::timeout(Duration::from_secs(10), d).await;
            assert!(
                matches!(r, Ok(Ok(_))),
                "round {round}: a write to partition {partition} not acknowledged within 10 s \
                 of the leaders moving: {r:?}"
            );
        }
        let want = read + 2;
        while read < want {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "round {round}: {read} of {want} records read 10 s after the leaders moved"
            );
            read += consumer
                .poll(Duration::from_millis(200))
                .await
                .map_or(0, |b| b.len());
        }
    }
    producer.close().await;
}

/// A leader stopped under acks=all writes (SIGTERM: a controlled shutdown) hands its
/// partitions over before it stops taking writes: it applies the leadership moves itself, so a
/// write waiting on it is answered NOT_LEADER_OR_FOLLOWER naming the new leader and retried
/// there, instead of being cut off by the shutdown and left to the client's 30 s request
/// timeout; and the broker stops within seconds. (Three controllers: with one, the moves
/// reached the followers late enough that the old shutdown slipped through.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_leader_hands_its_waiting_writes_over() {
    let mut cluster = Cluster::start(3, 3, &[]).await;
    cluster
        .create_topic("s", 3, 3, &[("min.insync.replicas", "2")])
        .await;
    wait_for(&cluster, "s", "ISR of 3", |_, isr| isr.len() == 3).await;
    let producer = std::sync::Arc::new(
        Producer::new(ProducerConfig {
            bootstrap: cluster.bootstrap(),
            acks: -1,
            ..Default::default()
        })
        .unwrap(),
    );
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    // One writer per partition keeping up to 64 records outstanding: every partition has a
    // request waiting for its replicas almost all the time.
    let writers: Vec<_> = (0..3)
        .map(|partition| {
            let (producer, stop) = (producer.clone(), stop.clone());
            tokio::spawn(async move {
                let mut slowest = Duration::ZERO;
                let mut n = 0;
                let mut pending = std::collections::VecDeque::new();
                loop {
                    let stopping = stop.load(std::sync::atomic::Ordering::Acquire);
                    if pending.len() >= 64 || (stopping && !pending.is_empty()) {
                        let (started, d): (Instant, _) = pending.pop_front().unwrap();
                        let r = tokio::time::timeout(Duration::from_secs(20), d).await;
                        assert!(
                            matches!(r, Ok(Ok(_))),
                            "partition {partition}: a write not acknowledged within 20 s: {r:?}"
                        );
                        slowest = slowest.max(started.elapsed());
                        continue;
                    }
                    if stopping {
                        break;
                    }
                    let mut record = ProducerRecord::new("s", None::<String>, format!("{n}"));
                    record.partition = Some(partition);
                    pending.push_back((Instant::now(), producer.send(record).await.unwrap()));
                    n += 1;
                }
                (slowest, n)
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (leader, _) = state(&cluster, "s").await.unwrap();
    let started = Instant::now();
    let status = tokio::task::block_in_place(|| cluster.stop_broker((leader - 1) as usize));
    let stopping = started.elapsed();
    assert!(status.success(), "broker {leader} exited with {status}");
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.store(true, std::sync::atomic::Ordering::Release);
    for (partition, w) in writers.into_iter().enumerate() {
        let (slowest, n) = w.await.unwrap();
        assert!(n > 0, "partition {partition}: no write");
        assert!(
            slowest < Duration::from_secs(10),
            "partition {partition}: a write waited {slowest:?} while broker {leader} stopped"
        );
    }
    assert!(
        stopping < Duration::from_secs(15),
        "broker {leader} took {stopping:?} to stop"
    );
}

/// KIP-320 for consumers: an unclean election cuts away records a consumer had already read,
/// and the new leader writes others at those offsets. The consumer's next fetch carries the
/// leader epoch of the last record it read; the new leader answers where that epoch ends in
/// its log, and the consumer reads on from there — the new records — instead of finding its
/// position out of range and skipping them (a reset to the latest offset).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reads_what_an_unclean_election_wrote_below_its_position() {
    let mut cluster = Cluster::start(1, 2, &["replica.lag.time.max.ms=2000"]).await;
    cluster
        .create_topic(
            "u",
            1,
            2,
            &[
                ("min.insync.replicas", "1"),
                ("unclean.leader.election.enable", "true"),
            ],
        )
        .await;
    wait_for(&cluster, "u", "ISR of 2", |_, isr| isr.len() == 2).await;
    produce(cluster.bootstrap(), "u", 0, 10).await;
    let (leader, _) = state(&cluster, "u").await.unwrap();
    let follower = 3 - leader;
    cluster.kill_broker((follower - 1) as usize);
    wait_for(&cluster, "u", "the follower out of the ISR", |_, isr| {
        isr == [leader]
    })
    .await;
    // Only the leader has these.
    produce(cluster.bootstrap(), "u", 10, 10).await;
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: cluster.brokers.iter().map(|b| b.addr.clone()).collect(),
        auto_offset_reset: OffsetReset::Latest,
        fetch_max_wait: Duration::from_millis(200),
        ..Default::default()
    })
    .unwrap();
    let tp = rill_consumer::TopicPartition::new("u", 0);
    consumer.assign([tp.clone()]);
    consumer.seek(&tp, 0);
    let mut read = 0;
    let deadline = Instant::now() + Duration::from_secs(30);
    while read < 20 && Instant::now() < deadline {
        read += consumer
            .poll(Duration::from_millis(500))
            .await
            .unwrap()
            .len();
    }
    assert_eq!(read, 20);

    // The leader dies; the follower, missing offsets 10–19, is elected uncleanly and takes
    // other records there. The consumer does not poll meanwhile.
    cluster.kill_broker((leader - 1) as usize);
    cluster.start_broker((follower - 1) as usize);
    wait_for(&cluster, "u", "the old follower leading", |l, _| {
        l == follower
    })
    .await;
    let rewritten = produce(cluster.bootstrap(), "u", 100, 5).await;
    assert_eq!(
        rewritten.iter().map(|r| r.1).collect::<Vec<_>>(),
        (10..15).collect::<Vec<i64>>()
    );
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while got.len() < 5 && Instant::now() < deadline {
        let polled = consumer.poll(Duration::from_millis(500)).await;
        eprintln!(
            "DBG poll {:?} pos {:?}",
            polled.as_ref().map(|r| r.len()),
            consumer.position(&tp)
        );
        if let Ok(records) = polled {
            got.extend(records.iter().map(|r| {
                (
                    r.offset,
                    String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).into_owned(),
                )
            }));
        }
    }
    let want: Vec<(i64, String)> = rewritten.into_iter().map(|r| (r.1, r.2)).collect();
    assert_eq!(got, want, "the new leader's records below the old position");
}
