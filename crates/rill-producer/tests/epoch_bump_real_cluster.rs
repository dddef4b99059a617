//! The producer against real `rill-controller` and `rill-broker` processes, with brokers paused
//! (SIGSTOP): a paused broker holds only its own requests, `flush` waits only for what was sent
//! before it, and defect 2 of docs/reliability.md:
//! the follower of a partition is paused (SIGSTOP), so the leader keeps appending but its
//! acks=all answers stall past `delivery.timeout.ms`; the producer fails those batches as
//! timeouts and bumps its epoch. Once the follower resumes (SIGCONT) every value must be in the
//! log at most once, and every acknowledged one exactly where its offset says. Before the fix the
//! bump renumbered batches already sent (and appended) under the old epoch from sequence 0, and
//! the leader wrote them again.
//!
//! The binaries are found in `RILL_BIN_DIR`, else next to the test executable
//! (`cargo build --workspace --bins`, as `cargo xtask ci` does).

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_producer::{Producer, ProducerConfig, ProducerError, ProducerRecord};
use rill_protocol::client::ClusterClient;
use rill_protocol::proto::*;
use rill_protocol::record_batch::batches;

use rill_testkit::free_port;

fn binary(name: &str) -> PathBuf {
    let dir = match std::env::var_os("RILL_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => {
            let exe = std::env::current_exe().unwrap();
            exe.parent().and_then(|deps| deps.parent()).unwrap().into()
        }
    };
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` or set RILL_BIN_DIR",
        p.display()
    );
    p
}

/// One controller and two brokers; the processes are killed on drop.
struct Cluster {
    brokers: Vec<(i32, String, Child)>,
    controller: Child,
    dir: TempDir,
}

/// A directory removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let p =
            std::env::temp_dir().join(format!("rill-producer-test-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }

    fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in self
            .brokers
            .iter_mut()
            .map(|b| &mut b.2)
            .chain(std::iter::once(&mut self.controller))
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stderr_to(dir: &std::path::Path) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::File::create(dir.join("stderr.log")).unwrap()
}

impl Cluster {
    async fn start() -> Cluster {
        let dir = TempDir::new();
        let caddr = format!("127.0.0.1:{}", free_port());
        let voters = format!("1@{caddr}");
        let cdir = dir.path().join("controller-1");
        let controller = Command::new(binary("rill-controller"))
            .args(["--node-id", "1", "--listeners", &caddr, "--voters", &voters])
            .arg("--metadata-log-dir")
            .arg(cdir.join("metadata"))
            .args(["--override", "controller.quorum.tick.ms=50"])
            .args(["--override", "controller.quorum.election.timeout.ms=500"])
            .stdout(Stdio::null())
            .stderr(stderr_to(&cdir))
            .spawn()
            .unwrap();
        let mut brokers = Vec::new();
        for id in 1..=2 {
            let addr = format!("127.0.0.1:{}", free_port());
            let bdir = dir.path().join(format!("broker-{id}"));
            let child = Command::new(binary("rill-broker"))
                .args(["--node-id", &id.to_string(), "--listeners", &addr])
                .args(["--voters", &voters])
                .arg("--log-dirs")
                .arg(bdir.join("logs"))
                .args(["--override", "broker.heartbeat.interval.ms=200"])
                .args(["--override", "offsets.topic.replication.factor=2"])
                // The paused follower stays in the ISR: acks=all stalls for the whole pause.
                .args(["--override", "replica.lag.time.max.ms=60000"])
                .stdout(Stdio::null())
                .stderr(stderr_to(&bdir))
                .spawn()
                .unwrap();
            brokers.push((id, addr, child));
        }
        let cluster = Cluster {
            brokers,
            controller,
            dir,
        };
        cluster.wait_healthy().await;
        cluster
    }

    fn bootstrap(&self) -> Vec<String> {
        self.brokers.iter().map(|b| b.1.clone()).collect()
    }

    fn client(&self) -> ClusterClient {
        ClusterClient::new(&self.bootstrap(), Duration::from_secs(5)).unwrap()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for name in ["controller-1", "broker-1", "broker-2"] {
            let log = std::fs::read_to_string(self.dir.path().join(name).join("stderr.log"))
                .unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(10).collect();
            out += &format!("--- {name} ---\n");
            out += &tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            out += "\n";
        }
        out
    }

    async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = self
                .client()
                .admin(Duration::from_secs(2), |mut c| async move {
                    c.describe_cluster(DescribeClusterRequest {}).await
                })
                .await;
            if answer.is_ok_and(|c| c.brokers.iter().filter(|b| !b.fenced).count() >= 2) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "cluster not healthy within 30 s\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates `topic` with `partitions` of `rf` replicas and `configs`.
    async fn create(&self, topic: &str, partitions: i32, rf: i32, configs: &[(&str, &str)]) {
        let request = CreateTopicsRequest {
            topics: vec![CreatableTopic {
                name: topic.into(),
                num_partitions: partitions,
                replication_factor: rf,
                configs: configs
                    .iter()
                    .map(|(name, value)| ConfigEntry {
                        name: (*name).into(),
                        value: Some((*value).into()),
                    })
                    .collect(),
            }],
            validate_only: false,
        };
        let r = self
            .client()
            .admin(Duration::from_secs(10), |mut c| {
                let request = request.clone();
                async move { c.create_topics(request).await }
            })
            .await
            .unwrap();
        assert_eq!(r.topics[0].error_code, 0, "{}", r.topics[0].error_message);
    }

    /// Creates `topic` (one partition on both brokers) and returns its leader once it answers.
    async fn create_topic(&self, topic: &str) -> i32 {
        self.create(topic, 1, 2, &[("min.insync.replicas", "2")])
            .await;
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let client = self.client();
            if let Ok(p) = client.partitions(topic).await
                && p[0].leader >= 0
                && fetch(&client, p[0].leader, topic, 0).await.is_ok()
            {
                return p[0].leader;
            }
            assert!(Instant::now() < deadline, "topic {topic} not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn signal(&self, broker: i32, signal: &str) {
        let pid = self.brokers.iter().find(|b| b.0 == broker).unwrap().2.id();
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }
}

/// One consumer fetch of partition 0 of `topic` from `offset`: (high watermark, batches).
async fn fetch(
    client: &ClusterClient,
    leader: i32,
    topic: &str,
    offset: i64,
) -> Result<(i64, Bytes), String> {
    let r = client
        .broker(leader)
        .map_err(|e| e.to_string())?
        .fetch(FetchRequest {
            replica_id: -1,
            replica_epoch: -1,
            max_wait_ms: 0,
            min_bytes: 0,
            max_bytes: 4 << 20,
            topics: vec![FetchTopic {
                name: topic.into(),
                partitions: vec![FetchPartition {
                    index: 0,
                    current_leader_epoch: None,
                    fetch_offset: offset,
                    partition_max_bytes: 4 << 20,
                    last_fetched_epoch: None,
                    log_start_offset: -1,
                }],
            }],
        })
        .await
        .map_err(|e| e.to_string())?
        .into_inner();
    let p = &r.topics[0].partitions[0];
    if p.error_code != 0 {
        return Err(p.error_message.clone());
    }
    Ok((p.high_watermark, p.records.clone()))
}

/// Every record of the partition below the high watermark: (offset, value, producer epoch,
/// sequence).
async fn read_all(
    client: &ClusterClient,
    leader: i32,
    topic: &str,
) -> Vec<(i64, String, i16, i32)> {
    let mut out = Vec::new();
    let mut offset = 0;
    loop {
        let (hw, bytes) = fetch(client, leader, topic, offset).await.unwrap();
        if offset >= hw {
            return out;
        }
        let mut progressed = false;
        for b in batches(&bytes) {
            let b = b.unwrap();
            let h = *b.header();
            for (i, r) in b.records(usize::MAX).unwrap().iter().enumerate() {
                let r = r.unwrap();
                if r.offset < offset || r.offset >= hw {
                    continue;
                }
                let value = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                out.push((
                    r.offset,
                    value,
                    h.producer_epoch,
                    h.base_sequence + i as i32,
                ));
                offset = r.offset + 1;
                progressed = true;
            }
        }
        assert!(
            progressed,
            "no progress reading at offset {offset} (hw {hw})"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_stalled_past_the_delivery_timeout_write_no_value_twice() {
    let cluster = Cluster::start().await;
    let topic = "stalled";
    let leader = cluster.create_topic(topic).await;
    let follower = if leader == 1 { 2 } else { 1 };
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        // One record per batch.
        batch_size: 64,
        linger: Duration::from_millis(2),
        retry_backoff: Duration::from_millis(50),
        request_timeout: Duration::from_millis(1000),
        delivery_timeout: Duration::from_millis(2500),
        ..Default::default()
    })
    .unwrap();
    assert!(producer.is_idempotent());

    let mut pending = Vec::new();
    let started = Instant::now();
    let mut paused = false;
    let mut resumed = false;
    let mut i = 0;
    while started.elapsed() < Duration::from_secs(9) {
        let at = started.elapsed();
        if !paused && at >= Duration::from_secs(1) {
            cluster.signal(follower, "STOP");
            paused = true;
        }
        if paused && !resumed && at >= Duration::from_millis(5500) {
            cluster.signal(follower, "CONT");
            resumed = true;
        }
        // Several one-record batches per request: the request stalled holds many of them.
        for _ in 0..4 {
            let record = ProducerRecord::new(topic, None::<Bytes>, format!("v{i:06}"));
            pending.push(producer.send(record).await.unwrap());
            i += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::timeout(Duration::from_secs(60), producer.flush())
        .await
        .expect("flush finishes");
    let mut acked = HashMap::new();
    let mut timed_out = 0;
    for (i, p) in pending.into_iter().enumerate() {
        match p.await {
            Ok(m) => {
                acked.insert(format!("v{i:06}"), m.offset);
            }
            Err(ProducerError::Timeout(_)) => timed_out += 1,
            Err(e) => panic!("record {i} failed otherwise: {e}"),
        }
    }
    let epoch = producer.producer_id_and_epoch().map(|p| p.1);

    let client = cluster.client();
    assert_eq!(client.partitions(topic).await.unwrap()[0].leader, leader);
    // Everything the leader appended is committed once the follower has caught up: wait for the
    // high watermark to settle.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut last = -1;
    loop {
        let (hw, _) = fetch(&client, leader, topic, 0).await.unwrap();
        if hw == last || Instant::now() >= deadline {
            break;
        }
        last = hw;
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let log = read_all(&client, leader, topic).await;
    eprintln!(
        "{} records sent: {} acknowledged, {timed_out} timed out; producer epoch {epoch:?}; {} records in the log",
        i,
        acked.len(),
        log.len()
    );
    let mut seen: HashMap<&str, (i64, i16, i32)> = HashMap::new();
    let mut twice = Vec::new();
    for (offset, value, epoch, seq) in &log {
        if let Some(first) = seen.insert(value, (*offset, *epoch, *seq)) {
            twice.push(format!(
                "{value} at {} (epoch {}, sequence {}) and at {offset} (epoch {epoch}, sequence {seq})",
                first.0, first.1, first.2
            ));
        }
    }
    assert!(
        twice.is_empty(),
        "{} values written twice, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(3)]
    );
    for (value, offset) in &acked {
        assert_eq!(
            seen.get(value.as_str()).map(|s| s.0),
            Some(*offset),
            "{value} acknowledged at {offset}"
        );
    }
    // The fault did what it is meant to.
    assert!(timed_out > 0, "the stall outlasted delivery.timeout.ms");
    assert!(epoch >= Some(1), "the epoch was bumped: {epoch:?}");
    assert!(
        acked.len() > 100,
        "records were acknowledged: {}",
        acked.len()
    );
}

/// A broker that stops answering (SIGSTOP) holds only its own requests: with its request slots
/// (`max.in.flight`) taken, batches for it wait, and batches for the other broker still go at
/// once (Kafka's sender skips a node without a free slot; it never blocks on one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_broker_does_not_hold_up_sends_to_the_other() {
    let cluster = Cluster::start().await;
    let (producer, leaders) = spread_topic(&cluster).await;
    let send = |partition: i32, value: &str| producer.send(to(partition, value));
    let paused = leaders[0];
    let of = |b: i32| -> Vec<i32> { (0..4).filter(|p| leaders[*p as usize] == b).collect() };
    let (on_paused, on_other) = (of(paused), of(3 - paused));
    assert!(
        on_paused.len() >= 2 && !on_other.is_empty(),
        "replicas spread over both brokers: {leaders:?}"
    );
    cluster.signal(paused, "STOP");
    // The paused broker's one slot is taken by the first request; the second partition's batch
    // waits for it.
    let stuck_a = send(on_paused[0], "stuck a").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let stuck_b = send(on_paused[1], "stuck b").await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    let free = send(on_other[0], "free").await.unwrap();
    let sent = tokio::time::timeout(Duration::from_secs(5), free).await;
    let waited = started.elapsed();
    cluster.signal(paused, "CONT");
    sent.expect("the other broker's record is not held up by the paused one")
        .unwrap();
    assert!(waited < Duration::from_secs(5), "{waited:?}");
    // Once resumed, the held ones are delivered too.
    for d in [stuck_a, stuck_b] {
        tokio::time::timeout(Duration::from_secs(30), d)
            .await
            .expect("delivered after the resume")
            .unwrap();
    }
    tokio::time::timeout(Duration::from_secs(20), producer.close())
        .await
        .expect("close returns");
}

/// `flush` waits for the records sent before it, not for those another task sends meanwhile
/// (Kafka's `flush`): a producer shared with a busy sender still flushes. Both brokers are
/// paused so that neither record can finish early; the one sent before the flush is let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flush_waits_for_records_sent_before_it_only() {
    let cluster = Cluster::start().await;
    let (producer, leaders) = spread_topic(&cluster).await;
    let producer = std::sync::Arc::new(producer);
    let (a, b) = (leaders[0], 3 - leaders[0]);
    let on = |broker: i32| (0..4).find(|p| leaders[*p as usize] == broker).unwrap();
    cluster.signal(a, "STOP");
    cluster.signal(b, "STOP");
    let mut mine = producer.send(to(on(a), "before the flush")).await.unwrap();
    let flush = {
        let producer = producer.clone();
        tokio::spawn(async move { producer.flush().await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let late = producer
        .send(to(on(b), "after the flush began"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    cluster.signal(a, "CONT");
    let flushed = tokio::time::timeout(Duration::from_secs(10), flush).await;
    cluster.signal(b, "CONT");
    flushed
        .expect("flush returns once the records sent before it are finished")
        .unwrap();
    assert!(
        futures_poll(&mut mine),
        "the record sent before the flush is finished"
    );
    tokio::time::timeout(Duration::from_secs(30), late)
        .await
        .expect("the later record is delivered after the resume")
        .unwrap();
}

/// Whether a delivery future is finished, without waiting.
fn futures_poll<F: std::future::Future + Unpin>(f: &mut F) -> bool {
    let waker = std::task::Waker::noop();
    let mut cx = std::task::Context::from_waker(waker);
    std::pin::Pin::new(f).poll(&mut cx).is_ready()
}

/// Topic "spread": 4 partitions of one replica over both brokers, each answering; a producer
/// with one request slot per broker, and each partition's leader.
async fn spread_topic(cluster: &Cluster) -> (Producer, Vec<i32>) {
    cluster.create("spread", 4, 1, &[]).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        max_in_flight: 1,
        linger: Duration::ZERO,
        request_timeout: Duration::from_secs(20),
        delivery_timeout: Duration::from_secs(40),
        ..Default::default()
    })
    .unwrap();
    let send = |partition: i32, value: &str| producer.send(to(partition, value));
    // Every partition answers (a first record each), then find who leads what.
    let deadline = Instant::now() + Duration::from_secs(20);
    for p in 0..4 {
        let d = send(p, "warm-up").await.unwrap();
        let left = deadline.saturating_duration_since(Instant::now());
        tokio::time::timeout(left, d)
            .await
            .expect("warm-up delivered in time")
            .unwrap();
    }
    let leaders: Vec<i32> = cluster
        .client()
        .partitions("spread")
        .await
        .unwrap()
        .iter()
        .map(|p| p.leader)
        .collect();
    (producer, leaders)
}

/// A record for partition `partition` of "spread".
fn to(partition: i32, value: &str) -> ProducerRecord {
    let mut record = ProducerRecord::new("spread", None::<Bytes>, value.to_string());
    record.partition = Some(partition);
    record
}

/// A record for a partition the producer's metadata does not have yet (the topic just grew)
/// waits for fresh metadata, up to max.block.ms (Kafka's `waitOnMetadata`), instead of
/// failing until the next periodic refresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_added_after_the_metadata_was_cached_is_found() {
    let cluster = Cluster::start().await;
    cluster.create_topic("grows").await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        max_block: Duration::from_secs(10),
        ..Default::default()
    })
    .unwrap();
    let record = |p: i32| {
        let mut r = ProducerRecord::new("grows", None::<Bytes>, format!("to {p}"));
        r.partition = Some(p);
        r
    };
    producer.send(record(0)).await.unwrap().await.unwrap();
    let request = CreatePartitionsRequest {
        topics: vec![CreatePartitionsTopic {
            name: "grows".into(),
            count: 2,
        }],
        validate_only: false,
    };
    let r = cluster
        .client()
        .admin(Duration::from_secs(10), |mut c| {
            let request = request.clone();
            async move { c.create_partitions(request).await }
        })
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0, "{r:?}");
    let sent = tokio::time::timeout(Duration::from_secs(20), async {
        producer.send(record(1)).await.unwrap().await
    })
    .await
    .expect("delivered in time")
    .unwrap();
    assert_eq!(sent.partition, 1);
    // A partition that never comes: refused after max.block.ms, naming the count.
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        max_block: Duration::from_secs(1),
        ..Default::default()
    })
    .unwrap();
    let started = Instant::now();
    let Err(e) = producer.send(record(7)).await else {
        panic!("partition 7 of 2 was accepted");
    };
    assert!(e.to_string().contains("has 2 partitions"), "{e}");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
}

/// Keyless records go to partitions with a leader (Kafka's `availablePartitionsForTopic`):
/// none waits, and fails, on a partition whose only replica is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_avoid_partitions_without_a_leader() {
    let cluster = Cluster::start().await;
    let (warm, leaders) = spread_topic(&cluster).await;
    warm.close().await;
    let gone = leaders[0];
    cluster.signal(gone, "TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let client = cluster.client();
        client.invalidate("spread");
        if let Ok(p) = client.partitions("spread").await
            && (0..4).all(|i| (p[i].leader == -1) == (leaders[i] == gone))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "broker {gone}'s partitions never went offline"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        // Small batches: the partitioner moves on often.
        batch_size: 256,
        linger: Duration::ZERO,
        delivery_timeout: Duration::from_secs(10),
        request_timeout: Duration::from_secs(5),
        ..Default::default()
    })
    .unwrap();
    let mut deliveries = Vec::new();
    for i in 0..300 {
        let r = ProducerRecord::new("spread", None::<Bytes>, format!("keyless {i:0>100}"));
        deliveries.push(producer.send(r).await.unwrap());
    }
    let mut used = std::collections::BTreeSet::new();
    for d in deliveries {
        let m = tokio::time::timeout(Duration::from_secs(30), d)
            .await
            .expect("finished in time")
            .expect("delivered");
        assert_ne!(leaders[m.partition as usize], gone, "{m:?}");
        used.insert(m.partition);
    }
    assert!(used.len() >= 2, "spread over the live partitions: {used:?}");
}

/// A request refused whole for one batch's sake (here a record larger than the topic's
/// `max.message.bytes`, sent in the same request as small ones) fails that batch only: the
/// others are sent again alone and delivered, with and without idempotence.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_oversized_batch_does_not_fail_the_batches_sent_with_it() {
    let cluster = Cluster::start().await;
    cluster
        .create("strict", 1, 1, &[("max.message.bytes", "100000")])
        .await;
    for idempotence in [false, true] {
        let producer = Producer::new(ProducerConfig {
            bootstrap: cluster.bootstrap(),
            acks: if idempotence { -1 } else { 1 },
            // Long enough for every record below to be in the first request.
            linger: Duration::from_millis(300),
            enable_idempotence: Some(idempotence),
            ..Default::default()
        })
        .unwrap();
        let mut small = Vec::new();
        let send = |value: String| {
            let mut r = ProducerRecord::new("strict", None::<Bytes>, value);
            r.partition = Some(0);
            producer.send(r)
        };
        for i in 0..5 {
            small.push(send(format!("before {i}")).await.unwrap());
        }
        let big = send("x".repeat(200_000)).await.unwrap();
        for i in 0..5 {
            small.push(send(format!("after {i}")).await.unwrap());
        }
        match tokio::time::timeout(Duration::from_secs(20), big).await {
            Ok(Err(ProducerError::Api(e))) => {
                assert_eq!(e.code, rill_protocol::ErrorCode::MessageTooLarge, "{e}")
            }
            other => panic!("idempotence {idempotence}: expected MESSAGE_TOO_LARGE, got {other:?}"),
        }
        for d in small {
            tokio::time::timeout(Duration::from_secs(20), d)
                .await
                .expect("finished in time")
                .unwrap_or_else(|e| panic!("idempotence {idempotence}: {e}"));
        }
        producer.close().await;
    }
}

/// A batch of many records larger than the topic's `max.message.bytes` (a long linger and a
/// large `batch.size`) is split until its pieces fit, as Kafka's producer does: every record
/// is delivered, once and in order — with and without idempotence, and compressed — and the
/// idempotent pieces keep the batch's sequence range.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_larger_than_max_message_bytes_is_split_until_it_fits() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut noise = move || {
        // xorshift: values LZ4 cannot shrink much.
        (0..250)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:02x}", x as u8)
            })
            .collect::<String>()
    };
    for (i, (idempotence, compression)) in [
        (false, rill_protocol::record_batch::Compression::None),
        (true, rill_protocol::record_batch::Compression::None),
        (true, rill_protocol::record_batch::Compression::Lz4),
    ]
    .into_iter()
    .enumerate()
    {
        let topic = format!("small-{i}");
        cluster
            .create(&topic, 1, 1, &[("max.message.bytes", "3000")])
            .await;
        let producer = Producer::new(ProducerConfig {
            bootstrap: cluster.bootstrap(),
            acks: -1,
            linger: Duration::from_millis(300),
            batch_size: 64 << 10,
            compression,
            enable_idempotence: Some(idempotence),
            ..Default::default()
        })
        .unwrap();
        let values: Vec<String> = (0..60).map(|n| format!("{n:03} {}", noise())).collect();
        let mut pending = Vec::new();
        for v in &values {
            let mut r = ProducerRecord::new(topic.as_str(), None::<Bytes>, v.clone());
            r.partition = Some(0);
            pending.push(producer.send(r).await.unwrap());
        }
        let mut offsets = Vec::new();
        for p in pending {
            let m = tokio::time::timeout(Duration::from_secs(30), p)
                .await
                .expect("finished in time")
                .unwrap_or_else(|e| panic!("{topic}: {e}"));
            offsets.push(m.offset);
        }
        assert_eq!(offsets, (0..60).collect::<Vec<i64>>(), "{topic}");
        producer.close().await;
        let leader = client.partitions(&topic).await.unwrap()[0].leader;
        let log = read_all(&client, leader, &topic).await;
        let read: Vec<&str> = log.iter().map(|r| r.1.as_str()).collect();
        assert_eq!(read, values, "{topic}: every record once, in order");
        if idempotence {
            let seqs: Vec<i32> = log.iter().map(|r| r.3).collect();
            assert_eq!(seqs, (0..60).collect::<Vec<i32>>(), "{topic}");
        }
    }
}

/// An idempotent producer's record refused as too large was never written: its sequence goes
/// to the next record (Kafka's `adjustSequencesDueToFailedBatch`) instead of leaving a gap that
/// only an epoch bump (a round trip to the controllers, every partition renumbered) closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_refused_as_too_large_gives_its_sequence_to_the_next() {
    let cluster = Cluster::start().await;
    let client = cluster.client();
    cluster
        .create("refused", 1, 1, &[("max.message.bytes", "3000")])
        .await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: -1,
        linger: Duration::ZERO,
        enable_idempotence: Some(true),
        ..Default::default()
    })
    .unwrap();
    let send = |value: String| {
        let mut r = ProducerRecord::new("refused", None::<Bytes>, value);
        r.partition = Some(0);
        let p = &producer;
        async move {
            tokio::time::timeout(Duration::from_secs(30), p.send(r).await.unwrap())
                .await
                .expect("finished in time")
        }
    };
    assert_eq!(send("a".into()).await.unwrap().offset, 0);
    let e = send("x".repeat(5_000)).await.unwrap_err().to_string();
    assert!(e.contains("MESSAGE_TOO_LARGE"), "{e}");
    assert_eq!(send("b".into()).await.unwrap().offset, 1);
    assert_eq!(send("c".into()).await.unwrap().offset, 2);
    producer.close().await;
    let leader = client.partitions("refused").await.unwrap()[0].leader;
    let log = read_all(&client, leader, "refused").await;
    let read: Vec<(&str, i16, i32)> = log.iter().map(|r| (r.1.as_str(), r.2, r.3)).collect();
    let epoch = log[0].2;
    assert_eq!(
        read,
        [("a", epoch, 0), ("b", epoch, 1), ("c", epoch, 2)],
        "one epoch, no sequence gap"
    );
}
