//! Consumer groups against real `rill-controller` and `rill-broker` processes: members split a
//! topic and hand partitions over on leave without losing or repeating a record; a frozen
//! member is fenced, loses its partitions and rejoins; the group admin lists, describes (lag),
//! resets offsets and deletes groups.

#[path = "../../rill-broker/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Cluster;
use parking_lot::Mutex;
use rill_consumer::admin::{GroupAdmin, ResetTarget, TopicSelection};
use rill_consumer::{
    Consumer, ConsumerConfig, ConsumerError, ConsumerRebalanceListener, OffsetReset, TopicPartition,
};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};
use rill_protocol::ErrorCode;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Fast group timers: heartbeats every 200 ms, a silent member fenced after 3 s.
const GROUP_OVERRIDES: &[&str] = &[
    "offsets.topic.num.partitions=3",
    "group.consumer.heartbeat.interval.ms=200",
    "group.consumer.session.timeout.ms=3000",
];

async fn produce(cluster: &Cluster, topic: &str, from: usize, n: usize) {
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        ..Default::default()
    })
    .unwrap();
    let mut pending = Vec::new();
    for i in from..from + n {
        let record = ProducerRecord::new(topic, Some(format!("k{i}")), format!("v{i}"));
        pending.push(producer.send(record).await.unwrap());
    }
    for p in pending {
        p.await.unwrap();
    }
    producer.close().await;
}

fn config(cluster: &Cluster, group: &str) -> ConsumerConfig {
    ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        group_id: Some(group.into()),
        auto_offset_reset: OffsetReset::Earliest,
        auto_commit_interval: Duration::from_millis(500),
        fetch_max_wait: Duration::from_millis(100),
        ..Default::default()
    }
}

type Log = Arc<Mutex<Vec<String>>>;

/// Records what happens to one member's partitions.
struct Callbacks(Log, &'static str);

impl ConsumerRebalanceListener for Callbacks {
    fn on_partitions_revoked(&mut self, p: &[TopicPartition]) {
        self.0.lock().push(format!("{} revoked {p:?}", self.1));
    }
    fn on_partitions_assigned(&mut self, p: &[TopicPartition]) {
        self.0.lock().push(format!("{} assigned {p:?}", self.1));
    }
    fn on_partitions_lost(&mut self, p: &[TopicPartition]) {
        self.0.lock().push(format!("{} lost {p:?}", self.1));
    }
}

/// A member polling in its own task until told to stop, then closing.
struct Member {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ConsumerError>>,
    assignment: Arc<Mutex<Vec<TopicPartition>>>,
}

type Seen = Arc<Mutex<Vec<(TopicPartition, i64, String)>>>;

fn spawn_member(
    config: ConsumerConfig,
    topic: &str,
    name: &'static str,
    seen: Seen,
    log: Log,
) -> Member {
    let (stop, mut stopped) = watch::channel(false);
    let assignment = Arc::new(Mutex::new(Vec::new()));
    let owned = Arc::clone(&assignment);
    let topic = topic.to_owned();
    let task = tokio::spawn(async move {
        let mut consumer = Consumer::new(config)?;
        consumer.subscribe([topic], Callbacks(log, name))?;
        while !*stopped.borrow_and_update() {
            for r in consumer.poll(Duration::from_millis(200)).await? {
                let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned();
                let tp = TopicPartition::new(r.topic.as_str(), r.partition);
                seen.lock().push((tp, r.offset, value));
            }
            *owned.lock() = consumer.assignment();
        }
        consumer.close().await
    });
    Member {
        stop,
        task,
        assignment,
    }
}

impl Member {
    async fn close(self) {
        self.stop.send_replace(true);
        tokio::time::timeout(Duration::from_secs(60), self.task)
            .await
            .expect("member closed in time")
            .unwrap()
            .unwrap();
    }
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn values(seen: &Seen) -> Vec<String> {
    seen.lock().iter().map(|(_, _, v)| v.clone()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn members_split_a_topic_and_hand_partitions_over_without_loss_or_repeats() {
    let cluster = Cluster::start(1, 2, GROUP_OVERRIDES).await;
    cluster.create_topic("orders", 4, 2, &[]).await;
    produce(&cluster, "orders", 0, 200).await;
    let seen: Seen = Arc::default();
    let log: Log = Arc::default();

    let a = spawn_member(
        config(&cluster, "g"),
        "orders",
        "a",
        Arc::clone(&seen),
        Arc::clone(&log),
    );
    wait_until("a owns every partition", Duration::from_secs(60), || {
        a.assignment.lock().len() == 4
    })
    .await;
    let b = spawn_member(
        config(&cluster, "g"),
        "orders",
        "b",
        Arc::clone(&seen),
        Arc::clone(&log),
    );
    wait_until(
        "a and b own two partitions each",
        Duration::from_secs(60),
        || {
            let (x, y) = (a.assignment.lock().clone(), b.assignment.lock().clone());
            let union: BTreeSet<_> = x.iter().chain(&y).collect();
            x.len() == 2 && y.len() == 2 && union.len() == 4
        },
    )
    .await;
    produce(&cluster, "orders", 200, 200).await;

    let admin = GroupAdmin::new(&cluster.bootstrap(), Duration::from_secs(10)).unwrap();
    let described = admin.describe_group("g").await.unwrap();
    assert_eq!(described.group.members.len(), 2, "{:?}", described.group);
    let listed = admin.list_groups(&[]).await.unwrap();
    assert!(listed.errors.is_empty(), "{:?}", listed.errors);
    assert!(
        listed.groups.iter().any(|g| g.group_id == "g"),
        "{listed:?}"
    );
    // Members are there: offsets cannot be reset, the group cannot be deleted.
    let orders = "orders".parse::<TopicSelection>().unwrap();
    let plan = admin
        .plan_reset("g", std::slice::from_ref(&orders), ResetTarget::Earliest)
        .await
        .unwrap();
    assert_eq!(plan.len(), 4);
    let refused = admin.apply_reset("g", &plan).await.unwrap_err();
    assert!(
        refused
            .to_string()
            .contains("the group has active members; stop them first"),
        "{refused}"
    );
    let refused = admin
        .delete_groups(&["g".into()])
        .await
        .remove(0)
        .1
        .unwrap_err();
    assert!(
        matches!(refused, ConsumerError::GroupNotEmpty { .. }),
        "{refused}"
    );

    // a leaves: b takes everything over and reads on from a's commits.
    a.close().await;
    wait_until("b owns every partition", Duration::from_secs(60), || {
        b.assignment.lock().len() == 4
    })
    .await;
    produce(&cluster, "orders", 400, 100).await;
    wait_until("every record read", Duration::from_secs(60), || {
        values(&seen).into_iter().collect::<BTreeSet<_>>().len() == 500
    })
    .await;
    b.close().await;

    let all = values(&seen);
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for v in &all {
        *counts.entry(v.as_str()).or_default() += 1;
    }
    let repeated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    let log = log.lock().clone();
    assert!(repeated.is_empty(), "read twice: {repeated:?}\n{log:?}");
    assert!(log.iter().any(|l| l.starts_with("a revoked")), "{log:?}");
    assert!(!log.iter().any(|l| l.contains("lost")), "{log:?}");

    // Without members: the lag is 0, offsets can be reset and the group deleted.
    let described = admin.describe_group("g").await.unwrap();
    assert!(described.group.members.is_empty(), "{:?}", described.group);
    let lag = admin.lag(&described).await.unwrap();
    assert_eq!(lag.partitions.len(), 4);
    assert_eq!(lag.total, 0, "{:?}", lag.partitions);
    let plan = admin
        .plan_reset("g", &["orders:0,1".parse().unwrap()], ResetTarget::Earliest)
        .await
        .unwrap();
    assert_eq!(plan.len(), 2);
    assert!(
        plan.iter()
            .all(|e| e.new_offset == 0 && e.current.is_some_and(|c| c > 0)),
        "{plan:?}"
    );
    admin.apply_reset("g", &plan).await.unwrap();
    let lag = admin
        .lag(&admin.describe_group("g").await.unwrap())
        .await
        .unwrap();
    let reset: i64 = plan.iter().map(|e| e.current.unwrap()).sum();
    assert_eq!(lag.total, reset, "{:?}", lag.partitions);
    for (g, r) in admin.delete_groups(&["g".into()]).await {
        r.unwrap_or_else(|e| panic!("{g}: {e}"));
    }
    let gone = admin.describe_group("g").await;
    assert!(
        matches!(&gone, Err(e) if e.code() == Some(ErrorCode::GroupIdNotFound))
            || gone.as_ref().is_ok_and(|d| d.group.group_state == "Dead"),
        "{gone:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_member_is_fenced_loses_its_partitions_and_rejoins() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    cluster.create_topic("t", 2, 1, &[]).await;
    produce(&cluster, "t", 0, 50).await;
    let log: Log = Arc::default();

    // Member a lives on its own single-threaded runtime, which the test freezes (no
    // heartbeats, no polls) for longer than the session timeout.
    let (owns_all_tx, owns_all) = std::sync::mpsc::channel();
    let (stop_a, stop_rx) = std::sync::mpsc::channel::<()>();
    let a_config = config(&cluster, "h");
    let a_log = Arc::clone(&log);
    let a = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut a = Consumer::new(a_config).unwrap();
            a.subscribe(["t"], Callbacks(Arc::clone(&a_log), "a"))
                .unwrap();
            while a.assignment().len() < 2 {
                a.poll(Duration::from_millis(100)).await.unwrap();
            }
            owns_all_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_secs(7)); // frozen
            // Awake: fenced, it gives everything up and joins again.
            let deadline = Instant::now() + Duration::from_secs(60);
            while stop_rx.try_recv().is_err() {
                assert!(Instant::now() < deadline, "a was never stopped");
                a.poll(Duration::from_millis(100)).await.unwrap();
            }
            a.close().await.unwrap();
        });
    });
    owns_all.recv_timeout(Duration::from_secs(60)).unwrap();
    let seen: Seen = Arc::default();
    let b = spawn_member(
        config(&cluster, "h"),
        "t",
        "b",
        Arc::clone(&seen),
        Arc::clone(&log),
    );
    wait_until(
        "b gets every partition of the fenced a",
        Duration::from_secs(30),
        || b.assignment.lock().len() == 2,
    )
    .await;
    assert!(
        !log.lock().iter().any(|l| l.starts_with("a revoked")),
        "a was frozen: {:?}",
        log.lock()
    );
    wait_until(
        "a loses its partitions and rejoins",
        Duration::from_secs(60),
        || {
            let log = log.lock();
            log.iter().any(|l| l.starts_with("a lost"))
                && log.iter().filter(|l| l.starts_with("a assigned")).count() >= 2
        },
    )
    .await;
    wait_until("b gives a partition back", Duration::from_secs(30), || {
        b.assignment.lock().len() == 1
    })
    .await;
    stop_a.send(()).unwrap();
    tokio::task::spawn_blocking(move || a.join().unwrap())
        .await
        .unwrap();
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pattern_subscription_follows_matching_topics() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    for t in ["orders-eu", "orders-us", "other"] {
        cluster.create_topic(t, 1, 1, &[]).await;
    }
    let mut consumer = Consumer::new(config(&cluster, "p")).unwrap();
    consumer
        .subscribe_pattern("orders-.*", Callbacks(Arc::default(), "p"))
        .unwrap();
    let tp = |t: &str| TopicPartition::new(t, 0);
    let deadline = Instant::now() + Duration::from_secs(30);
    while consumer.assignment() != [tp("orders-eu"), tp("orders-us")] {
        assert!(Instant::now() < deadline, "{:?}", consumer.assignment());
        consumer.poll(Duration::from_millis(100)).await.unwrap();
    }
    cluster.create_topic("orders-asia", 1, 1, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while consumer.assignment().len() != 3 {
        assert!(
            Instant::now() < deadline,
            "a new matching topic is not assigned: {:?}",
            consumer.assignment()
        );
        consumer.poll(Duration::from_millis(100)).await.unwrap();
    }
    assert!(consumer.assignment().contains(&tp("orders-asia")));
    consumer.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_static_member_gets_its_partitions_back_after_a_quick_restart() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    cluster.create_topic("t", 2, 1, &[]).await;
    let log: Log = Arc::default();
    let seen: Seen = Arc::default();
    let static_config = || ConsumerConfig {
        group_instance_id: Some("i1".into()),
        ..config(&cluster, "s")
    };
    let mut a = Consumer::new(static_config()).unwrap();
    a.subscribe(["t"], Callbacks(Arc::clone(&log), "a"))
        .unwrap();
    let b = spawn_member(
        config(&cluster, "s"),
        "t",
        "b",
        Arc::clone(&seen),
        Arc::clone(&log),
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(a.assignment().len() == 1 && b.assignment.lock().len() == 1) {
        assert!(
            Instant::now() < deadline,
            "{:?} {:?}",
            a.assignment(),
            b.assignment.lock()
        );
        a.poll(Duration::from_millis(100)).await.unwrap();
    }
    let mine = a.assignment();
    let theirs = b.assignment.lock().clone();
    a.close().await.unwrap(); // leaves with epoch -2: the partition waits for it
    let mut again = Consumer::new(static_config()).unwrap();
    again
        .subscribe(["t"], Callbacks(Arc::clone(&log), "a2"))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while again.assignment() != mine {
        assert!(Instant::now() < deadline, "{:?}", again.assignment());
        again.poll(Duration::from_millis(100)).await.unwrap();
    }
    assert_eq!(
        *b.assignment.lock(),
        theirs,
        "b never took the static member's partition"
    );
    let admin = GroupAdmin::new(&cluster.bootstrap(), Duration::from_secs(10)).unwrap();
    let described = admin.describe_group("s").await.unwrap();
    assert!(
        described
            .group
            .members
            .iter()
            .any(|m| m.instance_id.as_deref() == Some("i1")),
        "{:?}",
        described.group
    );
    again.close().await.unwrap();
    b.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_added_to_a_subscribed_topic_are_shared_out() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    cluster.create_topic("grow", 2, 1, &[]).await;
    let seen: Seen = Arc::default();
    let log: Log = Arc::default();
    let member = |name| {
        spawn_member(
            config(&cluster, "growing"),
            "grow",
            name,
            Arc::clone(&seen),
            Arc::clone(&log),
        )
    };
    let (a, b) = (member("a"), member("b"));
    let split = |n: usize| {
        let (x, y) = (a.assignment.lock().clone(), b.assignment.lock().clone());
        let union: BTreeSet<_> = x.iter().chain(&y).collect();
        x.len() == n / 2 && y.len() == n / 2 && union.len() == n
    };
    wait_until(
        "a and b own one partition each",
        Duration::from_secs(60),
        || split(2),
    )
    .await;
    let r = cluster
        .client()
        .admin(Duration::from_secs(10), |mut c| async move {
            c.create_partitions(rill_protocol::proto::CreatePartitionsRequest {
                topics: vec![rill_protocol::proto::CreatePartitionsTopic {
                    name: "grow".into(),
                    count: 6,
                }],
                validate_only: false,
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(r.topics[0].error_code, 0, "{}", r.topics[0].error_message);
    wait_until(
        "the four new partitions are shared out, three each",
        Duration::from_secs(60),
        || split(6),
    )
    .await;
    a.close().await;
    b.close().await;
}

/// A position taken from a committed offset keeps that offset's leader epoch: committed again
/// before anything is consumed (an idle partition under auto-commit, say), the epoch is not
/// replaced by "unknown" (Kafka's `refreshCommittedOffsets`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_committed_epoch_survives_a_recommit_before_anything_is_consumed() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    cluster.create_topic("idle", 1, 1, &[]).await;
    produce(&cluster, "idle", 0, 5).await;
    let tp = TopicPartition::new("idle", 0);
    let mut first = Consumer::new(config(&cluster, "keep-epoch")).unwrap();
    first.assign([tp.clone()]);
    let offset = rill_consumer::OffsetAndMetadata {
        offset: 3,
        leader_epoch: Some(7),
        metadata: String::new(),
    };
    first
        .commit_sync(Some(BTreeMap::from([(tp.clone(), offset)])))
        .await
        .unwrap();
    first.close().await.unwrap();
    let mut second = Consumer::new(config(&cluster, "keep-epoch")).unwrap();
    second.assign([tp.clone()]);
    second.pause(std::slice::from_ref(&tp));
    let until = Instant::now() + Duration::from_secs(20);
    while second.position(&tp).is_none() {
        assert!(Instant::now() < until, "never positioned");
        assert!(
            second
                .poll(Duration::from_millis(200))
                .await
                .unwrap()
                .is_empty()
        );
    }
    assert_eq!(second.position(&tp), Some(3));
    second.commit_sync(None).await.unwrap();
    let committed = second.committed(std::slice::from_ref(&tp)).await.unwrap();
    let c = committed[&tp].clone().unwrap();
    assert_eq!((c.offset, c.leader_epoch), (3, Some(7)));
    second.close().await.unwrap();
}

/// A commit whose records together exceed a broker's (lowered) `message.max.bytes` is written
/// in batches within it: the coordinator's batches were a fixed 512 KiB, so the append was
/// refused and the shard reloaded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_commit_fits_a_small_message_max_bytes() {
    let mut overrides = GROUP_OVERRIDES.to_vec();
    overrides.push("message.max.bytes=200000");
    let cluster = Cluster::start(1, 1, &overrides).await;
    cluster.create_topic("wide", 100, 1, &[]).await;
    let mut consumer = Consumer::new(config(&cluster, "wide-commit")).unwrap();
    let tps: Vec<TopicPartition> = (0..100).map(|p| TopicPartition::new("wide", p)).collect();
    consumer.assign(tps.clone());
    let offsets: BTreeMap<TopicPartition, rill_consumer::OffsetAndMetadata> = tps
        .iter()
        .map(|tp| {
            let o = rill_consumer::OffsetAndMetadata {
                offset: 0,
                leader_epoch: None,
                metadata: "m".repeat(4000),
            };
            (tp.clone(), o)
        })
        .collect();
    consumer.commit_sync(Some(offsets)).await.unwrap();
    let committed = consumer.committed(&tps).await.unwrap();
    assert!(
        committed
            .values()
            .all(|c| c.as_ref().is_some_and(|c| c.metadata.len() == 4000))
    );
    consumer.close().await.unwrap();
}
