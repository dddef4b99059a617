//! Brokers act on committed metadata only, and only ever move forward: a lagging controller
//! cannot make them delete acknowledged data, a deleted topic's logs are set aside before they
//! are removed, and data of unclear origin is kept aside (`-stray`), never deleted.

mod common;

use std::collections::HashSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rill_consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};
use rill_protocol::proto::*;

/// Every record of `topic` from the beginning, until `expected` arrived or 60 s passed.
async fn consume(bootstrap: &[String], topic: &str, expected: usize) -> Vec<(i32, i64)> {
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
            out.extend(batch.iter().map(|r| (r.partition, r.offset)));
        }
    }
    out
}

/// Names of the entries of `dir` that start with `prefix`.
fn entries(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

async fn produce(bootstrap: Vec<String>, topic: &str, n: usize) -> Vec<(i32, i64)> {
    let producer = Producer::new(ProducerConfig {
        bootstrap,
        acks: -1,
        ..Default::default()
    })
    .unwrap();
    let mut pending = Vec::new();
    for i in 0..n {
        pending.push(
            producer
                .send(ProducerRecord::new(
                    topic,
                    Some(format!("k{i}")),
                    format!("v{i}"),
                ))
                .await
                .unwrap(),
        );
    }
    let mut acked = Vec::new();
    for f in pending {
        let md = f.await.unwrap();
        acked.push((md.partition, md.offset));
    }
    producer.close().await;
    acked
}

/// The reproduction: controller 1 misses a topic's creation, the other two die, and
/// controller 1 comes back alone while every broker restarts. The brokers must not take its
/// stale view for the truth: every acknowledged record is readable once the quorum is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lagging_controller_cannot_make_brokers_delete_acknowledged_data() {
    let mut cluster = Cluster::start(3, 3, &[]).await;
    cluster.kill_controller(0);
    // RF 1 until follower replication lands: with RF 3 a new leader has no copy of the data yet.
    cluster.create_topic("t", 3, 1, &[]).await;
    let acked = produce(cluster.bootstrap(), "t", 3000).await;
    assert_eq!(acked.len(), 3000);
    let before: Vec<Vec<String>> = cluster
        .brokers
        .iter()
        .map(|b| entries(&b.dir.join("logs"), "t-"))
        .collect();
    assert_eq!(before.iter().map(Vec::len).sum::<usize>(), 3, "{before:?}");

    cluster.kill_controller(1);
    cluster.kill_controller(2);
    cluster.start_controller(0);
    for i in 0..3 {
        cluster.kill_broker(i);
        cluster.start_broker(i);
    }
    // Give the brokers time to talk to the lagging controller (it knows no topic "t").
    tokio::time::sleep(Duration::from_secs(5)).await;
    for (i, b) in cluster.brokers.iter().enumerate() {
        assert_eq!(
            entries(&b.dir.join("logs"), "t-"),
            before[i],
            "broker {} changed its logs of topic t on a lagging controller's word",
            b.id
        );
    }

    cluster.start_controller(1);
    cluster.start_controller(2);
    cluster.wait_healthy().await;
    let got: HashSet<(i32, i64)> = consume(&cluster.bootstrap(), "t", acked.len())
        .await
        .into_iter()
        .collect();
    let lost = acked.iter().filter(|a| !got.contains(a)).count();
    assert_eq!(
        lost,
        0,
        "{lost} of {} acknowledged records lost",
        acked.len()
    );
}

/// A deleted topic's logs are renamed `-delete` and removed after `log.segment.delete.delay.ms`;
/// a partition directory nobody knows is set aside as `-stray` and kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleted_logs_are_set_aside_then_removed_and_strays_are_kept() {
    let mut cluster = Cluster::start(1, 1, &["log.segment.delete.delay.ms=1500"]).await;
    let logs = cluster.brokers[0].dir.join("logs");
    // A log left from some other cluster or topic incarnation: the broker cannot know.
    cluster.kill_broker(0);
    let stray = logs.join("ghost-0");
    std::fs::create_dir_all(&stray).unwrap();
    std::fs::write(stray.join("partition.metadata"), "no-such-topic-id").unwrap();
    cluster.start_broker(0);
    cluster.wait_healthy().await;

    cluster.create_topic("gone", 2, 1, &[]).await;
    produce(cluster.bootstrap(), "gone", 100).await;
    assert_eq!(entries(&logs, "gone-").len(), 2);
    let client = cluster.client();
    let r = client
        .admin(Duration::from_secs(10), |mut c| async move {
            c.delete_topics(DeleteTopicsRequest {
                names: vec!["gone".into()],
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0, "{}", r.topics[0].error_message);

    // First set aside (nothing serves it any more), then removed after the delay.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut saw_delete = false;
    loop {
        let now = entries(&logs, "gone-");
        saw_delete |= !now.is_empty() && now.iter().all(|n| n.ends_with("-delete"));
        if now.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deleted logs still there: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        saw_delete,
        "the logs were removed without being set aside first"
    );

    let ghosts = entries(&logs, "ghost-0");
    assert_eq!(ghosts.len(), 1, "{ghosts:?}");
    assert!(ghosts[0].ends_with("-stray"), "{ghosts:?}");
    assert!(
        logs.join(&ghosts[0]).join("partition.metadata").exists(),
        "stray data must be kept"
    );
}

/// `key` of a log dir's `meta.properties`, if it has one.
fn meta_property(dir: &Path, key: &str) -> Option<String> {
    let text = std::fs::read_to_string(dir.join("meta.properties")).ok()?;
    text.lines()
        .filter_map(|l| l.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v.to_owned())
}

/// Runs a broker binary on `log_dir` against `voters` until it exits by itself (at most 30 s);
/// returns its exit status and stderr.
fn run_broker_until_exit(
    node_id: i32,
    log_dir: &Path,
    voters: &str,
) -> (std::process::ExitStatus, String) {
    let mut child = std::process::Command::new(sibling("rill-broker"))
        .args([
            "--node-id",
            &node_id.to_string(),
            "--listeners",
            "127.0.0.1:0",
            "--voters",
            voters,
        ])
        .arg("--log-dirs")
        .arg(log_dir)
        .args(["--override", "broker.heartbeat.interval.ms=200"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the broker on {} did not stop by itself", log_dir.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

/// Log dirs belong to one node of one cluster (`meta.properties`, as Kafka's): a broker started
/// with another node.id, or against another cluster's controllers, refuses to run on them
/// instead of serving their data as its own replicas — and the data stays as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_dirs_of_another_node_or_cluster_are_refused() {
    let mut cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("owned", 1, 1, &[]).await;
    produce_grpc(
        &cluster,
        (0..5)
            .map(|i| ProducerRecord::new("owned", None::<Vec<u8>>, format!("v{i}")))
            .collect(),
    )
    .await;
    let logs = cluster.brokers[0].dir.join("logs");
    // The cluster the broker joined is written into its dir once it has learned it.
    let client = cluster.client();
    client.refresh(&["owned".to_owned()]).await.unwrap();
    let mut b = client.broker(1).unwrap();
    let served = b
        .metadata(MetadataRequest { topics: vec![] })
        .await
        .unwrap()
        .into_inner()
        .cluster_id;
    assert!(!served.is_empty());
    assert_eq!(meta_property(&logs, "node.id").as_deref(), Some("1"));
    assert_eq!(meta_property(&logs, "cluster.id"), Some(served.clone()));
    assert!(cluster.stop_broker(0).success());

    // Another node.id on the same dir: refused at start, before any log is opened.
    let (status, err) = run_broker_until_exit(2, &logs, &cluster.voters);
    assert!(!status.success());
    assert!(
        err.contains("belongs to node.id 1") && err.contains("node.id 2"),
        "{err}"
    );

    // The right node.id against another cluster's quorum: the registration is refused and the
    // broker stops.
    let other = Cluster::start(1, 1, &[]).await;
    let (status, err) = run_broker_until_exit(1, &logs, &other.voters);
    assert!(!status.success());
    assert!(err.contains(&served) && err.contains("cluster"), "{err}");
    assert_eq!(meta_property(&logs, "cluster.id"), Some(served));

    // Back on its own cluster, the broker serves its data as before.
    cluster.start_broker(0);
    cluster.wait_healthy().await;
    assert_eq!(consume(&cluster.bootstrap(), "owned", 5).await.len(), 5);
}

/// A restarted broker serves requests only once it has caught up with the metadata log (as
/// Kafka's brokers open their listeners only then): while the controller is paused, clients
/// get no answer from it — not an answer saying that an existing topic is unknown — and its
/// first answer afterwards knows the topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_serves_only_once_caught_up_with_metadata() {
    let mut cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("known", 2, 1, &[]).await;
    assert!(cluster.stop_broker(0).success());
    cluster.signal_controller(0, "STOP");
    cluster.start_broker(0);
    let addr = format!("http://{}", cluster.brokers[0].addr);
    let ask = || {
        let addr = addr.clone();
        async move {
            let channel = tonic::transport::Endpoint::from_shared(addr)
                .unwrap()
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_millis(500))
                .connect()
                .await
                .ok()?;
            rill_protocol::proto::broker_client::BrokerClient::new(channel)
                .metadata(MetadataRequest {
                    topics: vec!["known".into()],
                })
                .await
                .ok()
                .map(|r| r.into_inner())
        }
    };
    // The broker is up (its log dirs are locked) but cannot catch up: it must not answer.
    let paused = Instant::now();
    while paused.elapsed() < Duration::from_secs(3) {
        if let Some(md) = ask().await {
            cluster.signal_controller(0, "CONT");
            panic!("answered before catching up with metadata: {:?}", md.topics);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    cluster.signal_controller(0, "CONT");
    let deadline = Instant::now() + Duration::from_secs(30);
    let md = loop {
        if let Some(md) = ask().await {
            break md;
        }
        assert!(Instant::now() < deadline, "the broker never served");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let t = &md.topics[0];
    assert_eq!(t.error_code, 0, "first answer: {t:?}");
    assert_eq!(t.partitions.len(), 2, "{t:?}");
}
