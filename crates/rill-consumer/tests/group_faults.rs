//! Consumer groups through membership changes and failures, against real processes: members
//! in this process and `rill consume --group` processes that the tests SIGKILL.
//!
//! - Twelve partitions shared by three members, then a fourth joining, one leaving and one
//!   SIGKILLed: each time every partition is owned by exactly one member, and the members' own
//!   callbacks (timestamped) never show a partition held by two members at once.
//! - At least once: a member SIGKILLed mid-stream and restarted resumes at its committed offsets,
//!   and over the whole run every produced record is processed.
//! - The coordinator's broker SIGKILLed: the group goes on through the new coordinator, its
//!   committed offsets intact.

#[path = "../../rill-broker/tests/common/mod.rs"]
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{Cluster, sibling};
use parking_lot::Mutex;
use rill_consumer::admin::GroupAdmin;
use rill_consumer::{
    Consumer, ConsumerConfig, ConsumerError, ConsumerRebalanceListener, OffsetReset, TopicPartition,
};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Fast group timers: heartbeats every 200 ms, a silent member fenced after 3 s.
const SESSION_TIMEOUT: Duration = Duration::from_secs(3);
const GROUP_OVERRIDES: &[&str] = &[
    "offsets.topic.num.partitions=3",
    "group.consumer.heartbeat.interval.ms=200",
    "group.consumer.session.timeout.ms=3000",
];

fn now_micros() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros()
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Assigned,
    Revoked,
    Lost,
}

/// One rebalance callback of one member, with the wall-clock time it ran (all members run on
/// this machine, so their clocks agree).
#[derive(Clone, Debug)]
struct Event {
    member: String,
    kind: Kind,
    at: u128,
    partitions: Vec<TopicPartition>,
}

type Events = Arc<Mutex<Vec<Event>>>;

struct Recorder {
    member: String,
    events: Events,
}

impl Recorder {
    fn push(&self, kind: Kind, partitions: &[TopicPartition]) {
        self.events.lock().push(Event {
            member: self.member.clone(),
            kind,
            at: now_micros(),
            partitions: partitions.to_vec(),
        });
    }
}

impl ConsumerRebalanceListener for Recorder {
    fn on_partitions_revoked(&mut self, p: &[TopicPartition]) {
        self.push(Kind::Revoked, p);
    }
    fn on_partitions_assigned(&mut self, p: &[TopicPartition]) {
        self.push(Kind::Assigned, p);
    }
    fn on_partitions_lost(&mut self, p: &[TopicPartition]) {
        self.push(Kind::Lost, p);
    }
}

/// The `rebalance` lines a `rill consume --print-rebalances` process wrote to stderr.
fn cli_events(member: &str, stderr: &str) -> Vec<Event> {
    stderr
        .lines()
        .filter_map(|line| {
            let mut f = line.split('\t');
            if f.next()? != "rebalance" {
                return None;
            }
            let kind = match f.next()? {
                "assigned" => Kind::Assigned,
                "revoked" => Kind::Revoked,
                "lost" => Kind::Lost,
                _ => return None,
            };
            let at = f.next()?.parse().ok()?;
            let partitions = f
                .next()
                .unwrap_or("")
                .split(',')
                .filter(|s| !s.is_empty())
                .map(|s| {
                    let (t, p) = s.rsplit_once('-').unwrap();
                    TopicPartition::new(t, p.parse().unwrap())
                })
                .collect();
            Some(Event {
                member: member.into(),
                kind,
                at,
                partitions,
            })
        })
        .collect()
}

/// Fails when two members' ownership of one partition overlapped in time. A member owns a
/// partition from its `assigned` callback to its `revoked`/`lost` callback, or until it died
/// (`deaths`), or until the end.
fn check_exclusive(events: &[Event], deaths: &BTreeMap<String, u128>) {
    let mut events = events.to_vec();
    events.sort_by_key(|e| e.at);
    // (partition) -> intervals (member, from, to)
    let mut open: BTreeMap<(String, TopicPartition), u128> = BTreeMap::new();
    let mut intervals: BTreeMap<TopicPartition, Vec<(String, u128, u128)>> = BTreeMap::new();
    for e in &events {
        for tp in &e.partitions {
            let key = (e.member.clone(), tp.clone());
            match e.kind {
                Kind::Assigned => {
                    assert!(
                        open.insert(key, e.at).is_none(),
                        "{} was assigned {tp} twice without giving it up",
                        e.member
                    );
                }
                Kind::Revoked | Kind::Lost => {
                    let from = open.remove(&key).unwrap_or_else(|| {
                        panic!("{} gave up {tp}, which it was never assigned", e.member)
                    });
                    intervals
                        .entry(tp.clone())
                        .or_default()
                        .push((e.member.clone(), from, e.at));
                }
            }
        }
    }
    for ((member, tp), from) in open {
        let to = deaths.get(&member).copied().unwrap_or(u128::MAX);
        intervals.entry(tp).or_default().push((member, from, to));
    }
    for (tp, mut list) in intervals {
        list.sort_by_key(|(_, from, _)| *from);
        for pair in list.windows(2) {
            let ((a, _, a_to), (b, b_from, _)) = (&pair[0], &pair[1]);
            assert!(
                b_from >= a_to,
                "{tp} was held by {a} and {b} at once ({a} until {a_to}, {b} from {b_from})"
            );
        }
    }
}

/// What each member owns according to its own callbacks, at the end of `events`.
fn owned_by(events: &[Event]) -> BTreeMap<String, BTreeSet<TopicPartition>> {
    let mut events = events.to_vec();
    events.sort_by_key(|e| e.at);
    let mut owned: BTreeMap<String, BTreeSet<TopicPartition>> = BTreeMap::new();
    for e in events {
        let mine = owned.entry(e.member.clone()).or_default();
        for tp in e.partitions {
            match e.kind {
                Kind::Assigned => mine.insert(tp),
                Kind::Revoked | Kind::Lost => mine.remove(&tp),
            };
        }
    }
    owned
}

/// A member polling in its own task until told to stop, then closing (leaving the group).
struct Member {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ConsumerError>>,
}

fn config(cluster: &Cluster, group: &str) -> ConsumerConfig {
    ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        group_id: Some(group.into()),
        auto_offset_reset: OffsetReset::Earliest,
        auto_commit_interval: Duration::from_millis(300),
        fetch_max_wait: Duration::from_millis(100),
        ..Default::default()
    }
}

type Seen = Arc<Mutex<Vec<(TopicPartition, i64, String)>>>;

fn spawn_member(
    config: ConsumerConfig,
    topic: &str,
    name: &str,
    events: Events,
    seen: Seen,
) -> Member {
    let (stop, mut stopped) = watch::channel(false);
    let topic = topic.to_owned();
    let recorder = Recorder {
        member: name.to_owned(),
        events,
    };
    let task = tokio::spawn(async move {
        let mut consumer = Consumer::new(config)?;
        consumer.subscribe([topic], recorder)?;
        while !*stopped.borrow_and_update() {
            for r in consumer.poll(Duration::from_millis(100)).await? {
                let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or(b"")).into_owned();
                seen.lock().push((
                    TopicPartition::new(r.topic.as_str(), r.partition),
                    r.offset,
                    value,
                ));
            }
        }
        consumer.close().await
    });
    Member { stop, task }
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

/// `rill consume TOPIC --group GROUP` with its stdout and stderr in files under `dir`.
struct CliMember {
    child: Child,
    stdout: std::path::PathBuf,
    stderr: std::path::PathBuf,
}

fn spawn_cli_member(
    cluster: &Cluster,
    topic: &str,
    group: &str,
    dir: &std::path::Path,
    name: &str,
) -> CliMember {
    let stdout = dir.join(format!("{name}.out"));
    let stderr = dir.join(format!("{name}.err"));
    let child = Command::new(sibling("rill"))
        .args(["--bootstrap", &cluster.bootstrap().join(",")])
        .args([
            "consume",
            topic,
            "--group",
            group,
            "--from-beginning",
            "--print-timestamp",
            "--print-rebalances",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&stdout).unwrap())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    CliMember {
        child,
        stdout,
        stderr,
    }
}

impl CliMember {
    /// SIGKILL; returns the time it died.
    fn kill(&mut self) -> u128 {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
        now_micros()
    }

    fn events(&self, name: &str) -> Vec<Event> {
        cli_events(
            name,
            &std::fs::read_to_string(&self.stderr).unwrap_or_default(),
        )
    }

    fn records(&self) -> Vec<(TopicPartition, i64, String)> {
        printed_records(&self.stdout)
    }
}

/// Records a `rill consume --print-timestamp` printed: (partition, offset, value).
fn printed_records(stdout: &std::path::Path) -> Vec<(TopicPartition, i64, String)> {
    std::fs::read_to_string(stdout)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut f = l.split('\t');
            let _timestamp = f.next()?;
            let (tp, offset) = f.next()?.rsplit_once('@')?;
            let (topic, p) = tp.rsplit_once('-')?;
            let value = f.next()?.to_owned();
            Some((
                TopicPartition::new(topic, p.parse().ok()?),
                offset.parse().ok()?,
                value,
            ))
        })
        .collect()
}

/// The group's committed offsets (partitions without one left out).
async fn committed(admin: &GroupAdmin, group: &str) -> BTreeMap<TopicPartition, i64> {
    admin
        .committed_offsets(group, &[])
        .await
        .map(|c| {
            c.into_iter()
                .filter_map(|(tp, o)| o.map(|o| (tp, o.offset)))
                .collect()
        })
        .unwrap_or_default()
}

impl Drop for CliMember {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_until(what: &str, within: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// True when the members' callbacks show every partition of `all` owned by exactly one of
/// `members`, each holding its fair share.
fn settled(events: &[Event], members: &[&str], all: &BTreeSet<TopicPartition>) -> bool {
    let owned = owned_by(events);
    let mut union = BTreeSet::new();
    let fair = all.len() / members.len();
    for m in members {
        let mine = owned.get(*m).cloned().unwrap_or_default();
        if mine.len() < fair || mine.len() > fair + 1 {
            return false;
        }
        for tp in mine {
            if !union.insert(tp) {
                return false;
            }
        }
    }
    let others = owned
        .iter()
        .filter(|(m, _)| !members.contains(&m.as_str()))
        .any(|(_, p)| !p.is_empty());
    union == *all && !others
}

async fn produce(
    bootstrap: Vec<String>,
    topic: &str,
    range: std::ops::Range<usize>,
    pause: Duration,
) {
    let producer = Producer::new(ProducerConfig {
        bootstrap,
        ..Default::default()
    })
    .unwrap();
    let mut pending = Vec::new();
    for i in range {
        let record = ProducerRecord::new(topic, Some(format!("k{i}")), format!("v{i}"));
        pending.push(producer.send(record).await.unwrap());
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    for p in pending {
        p.await.unwrap();
    }
    producer.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn twelve_partitions_move_through_joins_leaves_and_a_sigkill_never_held_twice() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    cluster.create_topic("t", 12, 1, &[]).await;
    let all: BTreeSet<TopicPartition> = (0..12).map(|p| TopicPartition::new("t", p)).collect();
    let events: Events = Arc::default();
    let seen: Seen = Arc::default();
    let dir = tempfile::tempdir().unwrap();
    let member = |name: &str| {
        spawn_member(
            config(&cluster, "g"),
            "t",
            name,
            Arc::clone(&events),
            Arc::clone(&seen),
        )
    };
    let all_events = |cli: &[(&str, &CliMember)]| {
        let mut e = events.lock().clone();
        for (name, m) in cli {
            e.extend(m.events(name));
        }
        e
    };

    let m1 = member("m1");
    let m2 = member("m2");
    let m3 = member("m3");
    wait_until(
        "three members own 4 partitions each",
        Duration::from_secs(60),
        || settled(&all_events(&[]), &["m1", "m2", "m3"], &all),
    )
    .await;

    // A fourth member, a `rill consume --group` process.
    let mut m4 = spawn_cli_member(&cluster, "t", "g", dir.path(), "m4");
    wait_until(
        "four members own 3 partitions each",
        Duration::from_secs(60),
        || settled(&all_events(&[("m4", &m4)]), &["m1", "m2", "m3", "m4"], &all),
    )
    .await;

    // One leaves.
    m2.close().await;
    wait_until(
        "three members again after m2 left",
        Duration::from_secs(60),
        || settled(&all_events(&[("m4", &m4)]), &["m1", "m3", "m4"], &all),
    )
    .await;

    // One is SIGKILLed: its partitions move once its session times out.
    let died = m4.kill();
    let mut deaths = BTreeMap::new();
    deaths.insert("m4".to_string(), died);
    let killed_at = Instant::now();
    wait_until(
        "the survivors own every partition after m4's session timed out",
        SESSION_TIMEOUT + Duration::from_secs(10),
        || {
            let mut e = all_events(&[("m4", &m4)]);
            // The dead member's partitions count as released at its death for `settled`.
            for (tp_member, tps) in owned_by(&e) {
                if tp_member == "m4" {
                    e.push(Event {
                        member: "m4".into(),
                        kind: Kind::Lost,
                        at: died,
                        partitions: tps.into_iter().collect(),
                    });
                }
            }
            settled(&e, &["m1", "m3"], &all)
        },
    )
    .await;
    let moved_after = killed_at.elapsed();
    assert!(
        moved_after >= SESSION_TIMEOUT - Duration::from_millis(500),
        "m4's partitions moved {moved_after:?} after its death, before its session timed out"
    );

    let final_events = all_events(&[("m4", &m4)]);
    check_exclusive(&final_events, &deaths);
    let revocations = final_events
        .iter()
        .filter(|e| e.kind == Kind::Revoked && !e.partitions.is_empty())
        .count();
    assert!(
        revocations >= 2,
        "joins must have moved partitions: {final_events:?}"
    );
    m1.close().await;
    m3.close().await;
}

/// Produces `v0`, `v1`, ... (acknowledged, in order per key) every few ms until `stop`;
/// returns how many.
async fn produce_until(
    bootstrap: Vec<String>,
    topic: &str,
    mut stop: watch::Receiver<bool>,
) -> usize {
    let producer = Producer::new(ProducerConfig {
        bootstrap,
        ..Default::default()
    })
    .unwrap();
    let mut pending = Vec::new();
    let mut i = 0;
    while !*stop.borrow_and_update() {
        let record = ProducerRecord::new(topic, Some(format!("k{i}")), format!("v{i}"));
        pending.push(producer.send(record).await.unwrap());
        i += 1;
        tokio::time::sleep(Duration::from_millis(4)).await;
    }
    for p in pending {
        p.await.unwrap();
    }
    producer.close().await;
    i
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_killed_mid_stream_resumes_at_its_committed_offsets_and_nothing_is_skipped() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    cluster.create_topic("stream", 4, 1, &[]).await;
    let dir = tempfile::tempdir().unwrap();
    // Records keep coming (v0, v1, ...) until the kills are over: every run starts mid-stream.
    let (stop_producing, stopped) = watch::channel(false);
    let producing = tokio::spawn(produce_until(cluster.bootstrap(), "stream", stopped));
    let admin = GroupAdmin::new(&cluster.bootstrap(), Duration::from_secs(10)).unwrap();
    let mut processed: Vec<(TopicPartition, i64, String)> = Vec::new();
    for run in 0..3 {
        let mut m = spawn_cli_member(&cluster, "stream", "alo", dir.path(), &format!("run{run}"));
        // Let it process (and auto-commit) for a while, mid-stream, then SIGKILL it.
        wait_until("the member prints records", Duration::from_secs(60), || {
            m.records().len() >= 200
        })
        .await;
        tokio::time::sleep(Duration::from_millis(5500)).await;
        m.kill();
        let committed = committed(&admin, "alo").await;
        assert!(!committed.is_empty(), "nothing committed after run {run}");
        // The killed run printed at least everything it committed.
        let records = m.records();
        for (tp, offset) in &committed {
            let printed_to = records
                .iter()
                .filter(|(p, _, _)| p == tp)
                .map(|(_, o, _)| o + 1)
                .max();
            let earlier = processed
                .iter()
                .filter(|(p, _, _)| p == tp)
                .map(|(_, o, _)| o + 1)
                .max();
            assert!(
                printed_to.max(earlier).is_some_and(|p| p >= *offset),
                "run {run} committed {tp} at {offset} beyond what was printed ({printed_to:?})"
            );
        }
        processed.extend(records);
        // The next run starts where the group committed, not earlier, not later (checked on
        // the partitions with records past their committed offset).
        let behind: BTreeSet<TopicPartition> = admin
            .lag(&admin.describe_group("alo").await.unwrap())
            .await
            .unwrap()
            .partitions
            .into_iter()
            .filter(|p| p.lag.is_some_and(|l| l > 0))
            .map(|p| p.partition)
            .collect();
        if run < 2 && !behind.is_empty() {
            let next = spawn_cli_member(
                &cluster,
                "stream",
                "alo",
                dir.path(),
                &format!("probe{run}"),
            );
            wait_until(
                "the restarted member prints records",
                Duration::from_secs(60),
                || {
                    let r = next.records();
                    behind.iter().all(|tp| r.iter().any(|(p, _, _)| p == tp))
                },
            )
            .await;
            let first: BTreeMap<TopicPartition, i64> =
                next.records()
                    .iter()
                    .fold(BTreeMap::new(), |mut m, (tp, o, _)| {
                        m.entry(tp.clone()).or_insert(*o);
                        m
                    });
            for (tp, offset) in committed.iter().filter(|(tp, _)| behind.contains(*tp)) {
                assert_eq!(
                    first.get(tp),
                    Some(offset),
                    "after run {run}, {tp} resumed elsewhere than its committed offset"
                );
            }
            drop(next); // SIGKILL too: its uncommitted work is read again by the next run
            processed.extend(printed_records(&dir.path().join(format!("probe{run}.out"))));
        }
    }
    stop_producing.send_replace(true);
    let total = producing.await.unwrap();
    // The last member reads to the end and leaves cleanly.
    let last = Command::new(sibling("rill"))
        .args(["--bootstrap", &cluster.bootstrap().join(",")])
        .args([
            "consume",
            "stream",
            "--group",
            "alo",
            "--from-beginning",
            "--print-timestamp",
            "--timeout-ms",
            "8000",
        ])
        .output()
        .unwrap();
    assert!(
        last.status.success(),
        "{}",
        String::from_utf8_lossy(&last.stderr)
    );
    std::fs::write(dir.path().join("last.out"), &last.stdout).unwrap();
    processed.extend(printed_records(&dir.path().join("last.out")));

    let values: BTreeSet<&str> = processed.iter().map(|(_, _, v)| v.as_str()).collect();
    let missing: Vec<usize> = (0..total)
        .filter(|i| !values.contains(format!("v{i}").as_str()))
        .collect();
    assert!(
        missing.is_empty(),
        "{} records were never processed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let lag = admin
        .lag(&admin.describe_group("alo").await.unwrap())
        .await
        .unwrap();
    assert_eq!(lag.total, 0, "{:?}", lag.partitions);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_group_goes_on_through_a_new_coordinator_after_a_sigkill() {
    let mut cluster = Cluster::start(1, 3, GROUP_OVERRIDES).await;
    cluster
        .create_topic("orders", 6, 3, &[("min.insync.replicas", "2")])
        .await;
    let events: Events = Arc::default();
    let seen: Seen = Arc::default();
    let a = spawn_member(
        config(&cluster, "survive"),
        "orders",
        "a",
        Arc::clone(&events),
        Arc::clone(&seen),
    );
    let b = spawn_member(
        config(&cluster, "survive"),
        "orders",
        "b",
        Arc::clone(&events),
        Arc::clone(&seen),
    );
    let all: BTreeSet<TopicPartition> = (0..6).map(|p| TopicPartition::new("orders", p)).collect();
    wait_until(
        "a and b share the partitions",
        Duration::from_secs(60),
        || settled(&events.lock(), &["a", "b"], &all),
    )
    .await;
    produce(cluster.bootstrap(), "orders", 0..500, Duration::ZERO).await;
    wait_until(
        "the first 500 records are read",
        Duration::from_secs(60),
        || {
            seen.lock()
                .iter()
                .map(|(_, _, v)| v.clone())
                .collect::<BTreeSet<_>>()
                .len()
                == 500
        },
    )
    .await;
    let admin = GroupAdmin::new(&cluster.bootstrap(), Duration::from_secs(10)).unwrap();
    // Wait for the auto commits to cover the first 500.
    let deadline = Instant::now() + Duration::from_secs(30);
    let before = loop {
        let c = committed(&admin, "survive").await;
        if c.values().sum::<i64>() == 500 {
            break c;
        }
        assert!(Instant::now() < deadline, "offsets not committed: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };

    let coordinator = admin
        .describe_group("survive")
        .await
        .unwrap()
        .coordinator
        .node_id;
    let victim = cluster
        .brokers
        .iter()
        .position(|n| n.id == coordinator)
        .unwrap();
    cluster.kill_broker(victim);
    let killed = Instant::now();
    // The group goes on: new records are read, commits land on the new coordinator.
    produce(cluster.bootstrap(), "orders", 500..1000, Duration::ZERO).await;
    wait_until(
        "every record read after the coordinator died",
        Duration::from_secs(90),
        || {
            seen.lock()
                .iter()
                .map(|(_, _, v)| v.clone())
                .collect::<BTreeSet<_>>()
                .len()
                == 1000
        },
    )
    .await;
    let described = loop {
        match admin.describe_group("survive").await {
            Ok(d) if d.coordinator.node_id != coordinator && d.group.members.len() == 2 => break d,
            other => {
                assert!(killed.elapsed() < Duration::from_secs(90), "{other:?}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    assert_eq!(
        described.group.group_state, "Stable",
        "{:?}",
        described.group
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let after = loop {
        let c = committed(&admin, "survive").await;
        if c.values().sum::<i64>() == 1000 {
            break c;
        }
        assert!(Instant::now() < deadline, "not all committed: {c:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (tp, offset) in &before {
        assert!(
            after.get(tp).is_some_and(|a| a >= offset),
            "{tp}: {offset} before, {:?} after",
            after.get(tp)
        );
    }
    check_exclusive(&events.lock(), &BTreeMap::new());
    a.close().await;
    b.close().await;
}
