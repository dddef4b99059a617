//! Faults across hosts (issue 13) on containers: the compose cluster of `deploy/compose/` (3
//! controllers + 3 brokers, one container and address each), an RF 3 topic with
//! `min.insync.replicas=2`, idempotent acks=all writers on the host talking to the containers'
//! addresses, and faults only real hosts have:
//!
//! 1. the leader of a partition cut off from every other node (iptables in its network
//!    namespace; the host still reaches it, and asks it directly), then healed;
//! 2. the active controller cut off (`docker network disconnect`), then healed;
//! 3. a 1 | 2 split of brokers and controllers (the active controller and a partition leader
//!    on the minority side), then healed;
//! 4. a partition leader's container paused past the broker session timeout, then resumed;
//! 5. a partition leader's container killed and started again on the same volume (5c: the
//!    active controller's);
//! 6. a rolling restart of all six containers (graceful stop, start, wait for health and full
//!    ISRs) under continuous produce and a consumer group reading.
//!
//! Each ends with a full read and the history checker: 0 lost acknowledged records, 0
//! duplicates (every other finding 0 too), plus its own expectations; scenario 6 also checks
//! what the group was given (at least once: nothing skipped). Each measures the time from
//! healing until every partition acknowledges writes again, and until the cluster is healthy
//! with every ISR full again. A scenario runs to its end even when an expectation fails, so
//! every run is measured; it fails at the end with everything it found.
//!
//! Scenario 1 comes in three forms: `1` cuts the leader off from the other nodes only (the
//! host, so the writers and the probes, still reach it) and requires it to acknowledge nothing;
//! `1d` disconnects it from the network (nobody reaches it) and requires the writers to move
//! to the new leader; `1s` is `1` also requiring the writers to move while they still reach the
//! old leader.
//!
//! `docker_fault_scenarios` runs them all in sequence on one cluster (about five minutes;
//! `RILL_DOCKER_SCENARIOS=1,4` picks some). After a scenario that failed, or a cluster that does
//! not come back healthy, the next scenario gets a fresh cluster; a node that stops answering
//! gets its threads printed (gdb).
//!
//! Needs Docker, root (nsenter) and the test images: `cargo xtask image --profile dev
//! --no-build` after building the workspace (`cargo xtask ci` does both). Without Docker the
//! test fails saying so. `soak_docker_scenarios` (ignored; `cargo xtask soak --docker`) loops
//! them for `RILL_SOAK_SECS` with longer faults.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rill_chaos::PartitionState;
use rill_chaos::cluster::broker_client_at;
use rill_chaos::history::{ConsumedReport, History, Outcome, Report};
use rill_chaos::{
    ChaosError, ClusterView, DockerCluster, DockerConfig, GroupReaders, NodeName, Role, Workload,
    WorkloadConfig, probe_produce_via, read_all,
};
use rill_consumer::admin::GroupAdmin;
use rill_protocol::proto::controller_client::ControllerClient;
use rill_protocol::proto::{
    DescribeClusterRequest, ElectLeadersRequest, ElectLeadersTopic, FetchPartition, FetchRequest,
    FetchTopic,
};
use rill_protocol::record_batch::{BatchHeader, batches};

/// The shortest pause between acknowledgements counted as unavailability.
/// The shortest pause between acknowledgements counted as unavailability.
const GAP: Duration = Duration::from_secs(1);
/// Writer id of the single-shot probe produces (workload writers are 1..).
const PROBE: u32 = 900;
/// Partitions of each scenario's topic: one led by each broker.
const PARTITIONS: i32 = 3;

/// A scenario that could not run to its end, for people.
struct Failure(String);

impl fmt::Debug for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<ChaosError> for Failure {
    fn from(e: ChaosError) -> Self {
        Failure(e.to_string())
    }
}

type Result<T = ()> = std::result::Result<T, Failure>;

/// How long faults last: short in the test suite, longer in the soak.
#[derive(Clone, Copy, Debug)]
struct Tempo {
    /// Writing before the fault.
    steady: Duration,
    /// The fault held after the cluster has reacted to it.
    hold: Duration,
}

const SHORT: Tempo = Tempo {
    steady: Duration::from_secs(2),
    hold: Duration::from_secs(3),
};

const LONG: Tempo = Tempo {
    steady: Duration::from_secs(5),
    hold: Duration::from_secs(20),
};

/// What one scenario run measured and what it expected. A scenario runs to its end (heal,
/// read back, check) even when an expectation fails on the way, so every run is measured.
struct Run {
    name: &'static str,
    report: Option<Report>,
    /// From healing until every partition has acknowledged a write (`None`: not within 60 s).
    serving: Option<Duration>,
    /// From healing until every container is healthy and every ISR is full.
    replicated: Option<Duration>,
    /// The scenario's own observations.
    facts: Vec<String>,
    /// Expectations that failed.
    violations: Vec<String>,
    /// Scenario 6: what the consumer group was given.
    consumed: Option<ConsumedReport>,
}

impl Run {
    fn new(name: &'static str) -> Self {
        Run {
            name,
            report: None,
            serving: None,
            replicated: None,
            facts: Vec::new(),
            violations: Vec::new(),
            consumed: None,
        }
    }

    /// Records a fact.
    fn fact(&mut self, f: String) {
        eprintln!("  {f}");
        self.facts.push(f);
    }

    /// Records `what` as a failed expectation unless `ok`; returns `ok`.
    fn expect(&mut self, ok: bool, what: impl FnOnce() -> String) -> bool {
        if !ok {
            let v = what();
            eprintln!("  EXPECTATION FAILED: {v}");
            self.violations.push(v);
        }
        ok
    }

    /// The value of `r`, or `None` with its error recorded as a failed expectation.
    fn expect_ok<T, E: fmt::Display>(&mut self, r: std::result::Result<T, E>) -> Option<T> {
        match r {
            Ok(v) => Some(v),
            Err(e) => {
                self.expect(false, || e.to_string());
                None
            }
        }
    }

    /// The row of docs/reliability.md's table.
    fn row(&self) -> String {
        let secs =
            |d: Option<Duration>| d.map_or("—".to_owned(), |d| format!("{:.1}", d.as_secs_f64()));
        let r = self.report.clone().unwrap_or_default();
        format!(
            "| {} | {} | {} | {} | {} | {} | {} | {:.1} | {} | {} |",
            self.name,
            r.attempted,
            r.acknowledged,
            r.failed,
            r.unknown,
            r.lost,
            r.duplicated,
            r.longest_gap_secs,
            secs(self.serving),
            secs(self.replicated),
        )
    }

    /// Every failed expectation and checker finding.
    fn problems(&self) -> Vec<String> {
        let mut out = self.violations.clone();
        match &self.report {
            None => out.push("no report: the history was not checked".into()),
            Some(r) => {
                if r.acknowledged == 0 {
                    out.push(format!("nothing acknowledged:\n{r}"));
                }
                if !r.is_clean() {
                    out.push(format!("the history checker found:\n{r}"));
                }
            }
        }
        if let Some(c) = self.consumed.as_ref().filter(|c| !c.is_clean()) {
            out.push(format!("the consumer group:\n{c}"));
        }
        out
    }
}

// ---------------------------------------------------------------------------------------------
// Shared steps

async fn prepare(c: &DockerCluster, topic: &str) -> Result {
    c.create_topic(topic, PARTITIONS, 3, &[("min.insync.replicas", "2")])
        .await?;
    for p in 0..PARTITIONS {
        c.wait_isr(topic, p, 3, Duration::from_secs(30)).await?;
    }
    Ok(())
}

fn writers(c: &DockerCluster, topic: &str, history: &Arc<History>) -> Workload {
    Workload::start(
        WorkloadConfig::new(c.all_brokers(), topic, PARTITIONS),
        Arc::clone(history),
    )
}

/// The first acknowledgement on each partition completed at or after `since` (history time).
fn first_acks(history: &History, since: Duration) -> BTreeMap<i32, Duration> {
    let mut out: BTreeMap<i32, Duration> = BTreeMap::new();
    for a in history.attempts() {
        if let (Outcome::Ok { partition, .. }, Some(at)) = (a.outcome, a.completed_at)
            && at >= since
        {
            let e = out.entry(partition).or_insert(at);
            *e = (*e).min(at);
        }
    }
    out
}

/// Waits until every partition has an acknowledgement completed after `since`; returns how
/// long after `since` the last of them came.
async fn serving_after(
    history: &History,
    since: Duration,
    patience: Duration,
) -> std::result::Result<Duration, String> {
    let deadline = Instant::now() + patience;
    loop {
        let firsts = first_acks(history, since);
        if firsts.len() == PARTITIONS as usize {
            let last = firsts.values().copied().max().unwrap_or(since);
            return Ok(last.saturating_sub(since));
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "writes were not acknowledged on every partition within {patience:?} (only on {:?})",
                firsts.keys().collect::<Vec<_>>()
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until partition `p` has an acknowledgement completed after `since`; returns when.
async fn ack_on(
    history: &History,
    p: i32,
    since: Duration,
    patience: Duration,
) -> std::result::Result<Duration, String> {
    let deadline = Instant::now() + patience;
    loop {
        if let Some(at) = first_acks(history, since).get(&p) {
            return Ok(*at);
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "no write acknowledged on partition {p} within {patience:?}: the writers did not move to a new leader"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Acknowledgements completed in `[from, to]` (history time).
fn acks_between(history: &History, from: Duration, to: Duration) -> usize {
    history
        .attempts()
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Ok { .. }))
        .filter(|a| a.completed_at.is_some_and(|t| t >= from && t <= to))
        .count()
}

/// Waits until every container is healthy and every partition of `topics` has all its
/// replicas in sync.
async fn fully_replicated(c: &DockerCluster, topics: &[(&str, i32)]) -> Result {
    c.wait_healthy(Duration::from_secs(120)).await?;
    for (topic, partitions) in topics {
        for p in 0..*partitions {
            c.wait_isr(topic, p, 3, Duration::from_secs(90)).await?;
        }
    }
    Ok(())
}

/// Waits until the active controller reports every voter caught up with its commit index (a
/// controller that was cut off or restarted follows again); returns the active controller.
async fn quorum_caught_up(c: &DockerCluster, patience: Duration) -> Result<NodeName> {
    let deadline = Instant::now() + patience;
    let voters = c
        .nodes()
        .iter()
        .filter(|n| n.name.role == Role::Controller)
        .count();
    loop {
        let views = c.quorum_views().await;
        if let Some((active, q)) = views.iter().find(|(asked, q)| q.leader_id == asked.id)
            && q.voters.len() == voters
            && q.voters.iter().all(|v| v.lag == 0)
        {
            return Ok(*active);
        }
        if Instant::now() >= deadline {
            return Err(Failure(format!(
                "the controllers are not all caught up within {patience:?}: {views:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// How many brokers the controller at `addr` counts registered and unfenced (if it answers
/// within 5 s, as the active controller).
async fn unfenced_at(addr: &str) -> Option<usize> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .ok()?
        .connect_timeout(Duration::from_secs(1))
        .timeout(Duration::from_secs(5))
        .connect()
        .await
        .ok()?;
    let r = ControllerClient::new(channel)
        .describe_cluster(DescribeClusterRequest {})
        .await
        .ok()?;
    Some(r.into_inner().brokers.iter().filter(|b| !b.fenced).count())
}

/// A new leader of `topic`-`partition` (not `old`, newer than `epoch`) as the live brokers
/// see it, within 30 s.
async fn new_leader(
    c: &DockerCluster,
    topic: &str,
    partition: i32,
    old: NodeName,
    epoch: i32,
) -> std::result::Result<PartitionState, ChaosError> {
    c.wait_partition(topic, partition, Duration::from_secs(30), |s| {
        s.leader >= 0 && s.leader != old.id && s.leader_epoch > epoch
    })
    .await
}

/// `count` single-shot acks=all produces sent at once straight to the broker at `addr`
/// (whoever leads). Sent concurrently, they have no order between them: each is its own
/// writer (`PROBE + seq`, sequence 0) so the checker expects none.
async fn probes(
    history: &Arc<History>,
    addr: &str,
    topic: &str,
    partition: i32,
    first: u64,
    count: u64,
) -> Result<Vec<Outcome>> {
    let mut set = tokio::task::JoinSet::new();
    for seq in first..first + count {
        let broker = broker_client_at(addr)?;
        let history = Arc::clone(history);
        let topic = topic.to_owned();
        set.spawn(async move {
            probe_produce_via(broker, &history, &topic, partition, PROBE + seq as u32, 0).await
        });
    }
    let mut out = Vec::new();
    while let Some(o) = set.join_next().await {
        out.push(o.map_err(ChaosError::from)?);
    }
    Ok(out)
}

/// Expects no probe acknowledged; and, when another leader was elected meanwhile
/// (`superseded`), none visible in the final read: what only the cut-off leader appended must
/// be truncated when it rejoins. (Without a new leader, the followers copy its appends once
/// the cut heals, and they become visible: correct for writes whose outcome is unknown.)
fn expect_probes_refused(
    run: &mut Run,
    history: &History,
    sent: &[Outcome],
    to: NodeName,
    superseded: bool,
) {
    let acked: Vec<&Outcome> = sent
        .iter()
        .filter(|o| matches!(o, Outcome::Ok { .. }))
        .collect();
    run.expect(acked.is_empty(), || {
        format!("{to} acknowledged writes it could not replicate: {acked:?}")
    });
    let visible: Vec<String> = history
        .reads()
        .into_iter()
        .filter(|r| {
            r.value
                .strip_prefix('w')
                .and_then(|v| v.split_once('-'))
                .and_then(|(w, _)| w.parse::<u32>().ok())
                .is_some_and(|w| w >= PROBE)
        })
        .map(|r| r.value)
        .collect();
    run.expect(!superseded || visible.is_empty(), || {
        format!("writes only {to} appended, while cut off, are visible after healing: {visible:?}")
    });
}

/// After healing at `healed_at`: how long until every partition acknowledges writes, and
/// until the cluster is healthy with full ISRs (also for `more` topics).
async fn measure_heal(
    run: &mut Run,
    c: &DockerCluster,
    history: &History,
    topic: &str,
    more: &[(&str, i32)],
    healed_at: Duration,
) -> Result {
    let serving = serving_after(history, healed_at, Duration::from_secs(60)).await;
    run.serving = run.expect_ok(serving.map_err(|e| format!("after healing: {e}")));
    let mut topics = vec![(topic, PARTITIONS)];
    topics.extend_from_slice(more);
    fully_replicated(c, &topics).await?;
    run.replicated = Some(history.elapsed().saturating_sub(healed_at));
    Ok(())
}

/// Stops the writers, reads everything back and checks.
async fn finish(
    run: &mut Run,
    c: &DockerCluster,
    topic: &str,
    writers: Workload,
    history: &History,
) -> Result {
    tokio::time::sleep(Duration::from_secs(1)).await;
    writers.stop().await?;
    c.wait_healthy(Duration::from_secs(60)).await?;
    read_all(c.all_brokers(), topic, history, Duration::from_secs(60)).await?;
    let report = history.check(GAP);
    if report.duplicated > 0 {
        // Which batches hold the copies: the same producer id and sequence twice is the
        // broker's duplicate detection failing; different ones, the producer sending again.
        for line in explain_duplicates(c, topic).await? {
            run.fact(line);
        }
    }
    run.report = Some(report);
    Ok(())
}

/// For values stored more than once in `topic`: every copy's offset and the header of its
/// batch (leader epoch, producer id and epoch, base sequence), read straight from the leaders.
async fn explain_duplicates(c: &DockerCluster, topic: &str) -> Result<Vec<String>> {
    type Copy = (i64, BatchHeader);
    let mut places: BTreeMap<(i32, String), Vec<Copy>> = BTreeMap::new();
    for p in 0..PARTITIONS {
        let (state, leader) = match c.partition_state(topic, p).await {
            Some(s) if s.leader >= 0 => (s.clone(), NodeName::broker(s.leader)),
            _ => continue,
        };
        let mut broker = broker_client_at(&c.node(leader)?.addr)?;
        let mut offset = 0;
        loop {
            let request = FetchRequest {
                replica_id: -1,
                max_wait_ms: 0,
                min_bytes: 1,
                max_bytes: 1 << 20,
                topics: vec![FetchTopic {
                    name: topic.to_owned(),
                    partitions: vec![FetchPartition {
                        index: p,
                        current_leader_epoch: Some(state.leader_epoch),
                        fetch_offset: offset,
                        partition_max_bytes: 1 << 20,
                        ..Default::default()
                    }],
                }],
                ..Default::default()
            };
            let Ok(r) = broker.fetch(request).await else {
                break;
            };
            let Some(part) = r
                .into_inner()
                .topics
                .into_iter()
                .flat_map(|t| t.partitions)
                .next()
            else {
                break;
            };
            let mut next = offset;
            for batch in batches(&part.records).flatten() {
                let header = *batch.header();
                let Ok(records) = batch.records(64 << 20) else {
                    continue;
                };
                for r in records.iter().flatten() {
                    if r.offset < offset {
                        continue;
                    }
                    let value = String::from_utf8_lossy(r.value.unwrap_or_default()).into_owned();
                    places
                        .entry((p, value))
                        .or_default()
                        .push((r.offset, header));
                    next = next.max(r.offset + 1);
                }
            }
            if next == offset || next >= part.high_watermark {
                break;
            }
            offset = next;
        }
    }
    let mut out = Vec::new();
    let dups: Vec<_> = places.iter().filter(|(_, v)| v.len() > 1).collect();
    out.push(format!(
        "{} values stored more than once; the first few:",
        dups.len()
    ));
    for ((p, value), copies) in dups.into_iter().take(6) {
        let copies: Vec<String> = copies
            .iter()
            .map(|(o, h)| {
                format!(
                    "offset {o} in batch {}..={} (leader epoch {}, producer {} epoch {}, sequence {}, {} records)",
                    h.base_offset,
                    h.base_offset + i64::from(h.last_offset_delta),
                    h.partition_leader_epoch,
                    h.producer_id,
                    h.producer_epoch,
                    h.base_sequence,
                    h.record_count
                )
            })
            .collect();
        out.push(format!("{value} in {topic}-{p}: {}", copies.join("; ")));
    }
    Ok(out)
}

/// The current state of partition 0 of `topic` and its leader.
async fn leader_of_0(c: &DockerCluster, topic: &str) -> Result<(PartitionState, NodeName)> {
    let s = c
        .partition_state(topic, 0)
        .await
        .ok_or_else(|| Failure(format!("no broker describes {topic}-0")))?;
    let leader = NodeName::broker(s.leader);
    Ok((s, leader))
}

// ---------------------------------------------------------------------------------------------
// 1. The leader of a partition cut off from every other node, then healed.

/// How scenario 1 cuts the leader off, and what it requires of the writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LeaderCut {
    /// iptables between the nodes: the host (the writers, the probes) still reaches the cut-off
    /// leader. `require_move`: the writers must reach the new leader while the old one is cut
    /// off (else that is only measured).
    Nodes { require_move: bool },
    /// `docker network disconnect`: nobody reaches it, the writers included; they must move.
    Network,
}

async fn leader_cut_off(
    c: &mut DockerCluster,
    topic: &str,
    tempo: Tempo,
    how: LeaderCut,
) -> Result<Run> {
    let mut run = Run::new(match how {
        LeaderCut::Nodes {
            require_move: false,
        } => "1 partition leader cut off from the nodes",
        LeaderCut::Nodes { require_move: true } => {
            "1s partition leader cut off from the nodes, writers must move"
        }
        LeaderCut::Network => "1d partition leader disconnected",
    });
    prepare(c, topic).await?;
    let history = Arc::new(History::new());
    let w = writers(c, topic, &history);
    tokio::time::sleep(tempo.steady).await;
    let (before, leader) = leader_of_0(c, topic).await?;
    let addr = c.node(leader)?.addr.clone();
    let cut_at = history.elapsed();
    if how == LeaderCut::Network {
        c.disconnect(leader).await?;
    } else {
        c.partition(&[leader]).await?;
    }
    eprintln!(
        "scenario {}: {leader} (leads {topic}-0 in epoch {}) cut off",
        run.name, before.leader_epoch
    );
    // Asked directly (the host still reaches it), the cut-off leader must acknowledge nothing:
    // it cannot replicate.
    let mut sent = Vec::new();
    if how != LeaderCut::Network {
        sent.extend(probes(&history, &addr, topic, 0, 0, 3).await?);
    }
    let after = new_leader(c, topic, 0, leader, before.leader_epoch).await;
    let superseded = after.is_ok();
    if let Some(after) = run.expect_ok(after) {
        let elected = history.elapsed();
        run.fact(format!(
            "{leader} cut off; broker-{} leads from epoch {} ({:.1} s after the cut)",
            after.leader,
            after.leader_epoch,
            elected.saturating_sub(cut_at).as_secs_f64()
        ));
        // The writers find the new leader while the old one is still cut off.
        match ack_on(&history, 0, elected, Duration::from_secs(30)).await {
            Ok(moved) => run.fact(format!(
                "writes to {topic}-0 acknowledged again {:.1} s after the cut",
                moved.saturating_sub(cut_at).as_secs_f64()
            )),
            Err(e) => {
                let stuck = stuck_on(&history, 0, elected);
                let what = format!("{e}; {stuck}");
                if matches!(
                    how,
                    LeaderCut::Nodes {
                        require_move: false
                    }
                ) {
                    run.fact(format!("(not required here) {what}"));
                } else {
                    run.expect(false, || what);
                }
            }
        }
    }
    if how != LeaderCut::Network {
        sent.extend(probes(&history, &addr, topic, 0, 3, 3).await?);
    }
    tokio::time::sleep(tempo.hold).await;
    let healed_at = history.elapsed();
    if how == LeaderCut::Network {
        c.connect(leader).await?;
    } else {
        c.heal().await?;
    }
    measure_heal(&mut run, c, &history, topic, &[], healed_at).await?;
    finish(&mut run, c, topic, w, &history).await?;
    if how != LeaderCut::Network {
        run.fact(format!(
            "{} writes sent straight to the cut-off {leader}: {sent:?}",
            sent.len()
        ));
        expect_probes_refused(&mut run, &history, &sent, leader, superseded);
    }
    Ok(run)
}

/// What became of the writers' records to `partition` sent after `since`: how many have no
/// acknowledgement, and the last error.
fn stuck_on(history: &History, partition: i32, since: Duration) -> String {
    let mut unknown = 0;
    let mut last = None;
    for a in history.attempts() {
        if a.partition == Some(partition) && a.writer < PROBE && a.sent_at >= since {
            match &a.outcome {
                Outcome::Ok { .. } => {}
                Outcome::Unknown { error } | Outcome::Failed { error } => {
                    unknown += 1;
                    last = Some(error.clone());
                }
                Outcome::Pending => unknown += 1,
            }
        }
    }
    format!(
        "{unknown} records sent to partition {partition} since the election are not acknowledged (last error: {})",
        last.unwrap_or_else(|| "none yet".into())
    )
}

// ---------------------------------------------------------------------------------------------
// 2. The active controller cut off (docker network disconnect), then healed.

async fn controller_cut_off(c: &mut DockerCluster, topic: &str, tempo: Tempo) -> Result<Run> {
    let mut run = Run::new("2 active controller cut off");
    prepare(c, topic).await?;
    let history = Arc::new(History::new());
    let w = writers(c, topic, &history);
    tokio::time::sleep(tempo.steady).await;
    let active = c.active_controller(Duration::from_secs(15)).await?;
    let cut_at = history.elapsed();
    c.disconnect(active).await?;
    eprintln!("scenario 2: {active} (active) disconnected from the network");
    let next = c.active_controller(Duration::from_secs(30)).await;
    let next = run.expect_ok(next);
    if let Some(next) = next {
        run.expect(next != active, || format!("{active} is still named active"));
        run.fact(format!(
            "{active} disconnected; {next} active {:.1} s later",
            history.elapsed().saturating_sub(cut_at).as_secs_f64()
        ));
    }
    // Metadata changes go on through the new controller, and reach the brokers.
    let meta = format!("{topic}-created-while-cut");
    let created = c.create_topic(&meta, 1, 3, &[]).await;
    let created = run
        .expect_ok(created.map_err(|e| format!("a topic created while {active} is cut off: {e}")))
        .is_some();
    tokio::time::sleep(tempo.hold).await;
    let held_until = history.elapsed();
    // Writes go on without the old controller.
    let acked = acks_between(&history, cut_at + Duration::from_secs(5), held_until);
    run.expect(acked > 0, || {
        format!(
            "no write acknowledged from 5 s after {active} was cut off until the end of the cut ({:.1} s)",
            held_until.saturating_sub(cut_at).as_secs_f64()
        )
    });
    // Asked directly: an admin client may try the cut-off controller first and time out.
    let unfenced = match &next {
        Some(n) => unfenced_at(&c.node(*n)?.addr).await,
        None => None,
    };
    run.expect(unfenced == Some(3), || {
        format!(
            "while {active} is cut off the active controller counts {} brokers unfenced, not 3",
            unfenced.map_or("(no answer)".to_owned(), |n| n.to_string())
        )
    });
    let healed_at = history.elapsed();
    c.connect(active).await?;
    let more: Vec<(&str, i32)> = if created { vec![(&meta, 1)] } else { vec![] };
    measure_heal(&mut run, c, &history, topic, &more, healed_at).await?;
    let leader = quorum_caught_up(c, Duration::from_secs(60)).await?;
    run.fact(format!(
        "{acked} writes acknowledged during the cut; after reconnecting, every voter caught up with {leader}"
    ));
    finish(&mut run, c, topic, w, &history).await?;
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// 3. A 1 | 2 split: the active controller and a partition leader on one side, the other two
//    controllers and brokers on the other; then healed.

async fn one_two_split(c: &mut DockerCluster, topic: &str, tempo: Tempo) -> Result<Run> {
    let mut run = Run::new("3 1 | 2 split");
    prepare(c, topic).await?;
    let history = Arc::new(History::new());
    let w = writers(c, topic, &history);
    tokio::time::sleep(tempo.steady).await;
    let active = c.active_controller(Duration::from_secs(15)).await?;
    let (before, leader) = leader_of_0(c, topic).await?;
    let addr = c.node(leader)?.addr.clone();
    let cut_at = history.elapsed();
    c.partition(&[active, leader]).await?;
    eprintln!("scenario 3: {active} (active) and {leader} (leads {topic}-0) split from the rest");
    let mut sent = probes(&history, &addr, topic, 0, 0, 3).await?;
    let next = c.active_controller(Duration::from_secs(30)).await;
    if let Some(next) = run.expect_ok(next) {
        run.expect(next != active, || format!("{active} is still named active"));
        run.fact(format!(
            "minority {{{active}, {leader}}}; {next} active on the majority side {:.1} s after the split",
            history.elapsed().saturating_sub(cut_at).as_secs_f64()
        ));
    }
    let after = new_leader(c, topic, 0, leader, before.leader_epoch).await;
    let superseded = after.is_ok();
    if let Some(after) = run.expect_ok(after) {
        let elected = history.elapsed();
        let moved = ack_on(&history, 0, elected, Duration::from_secs(30)).await;
        if let Some(moved) = run.expect_ok(moved) {
            run.fact(format!(
                "broker-{} leads {topic}-0 from epoch {} ({:.1} s after the split); writes to it acknowledged again {:.1} s after the split",
                after.leader,
                after.leader_epoch,
                elected.saturating_sub(cut_at).as_secs_f64(),
                moved.saturating_sub(cut_at).as_secs_f64()
            ));
        }
    }
    sent.extend(probes(&history, &addr, topic, 0, 3, 3).await?);
    tokio::time::sleep(tempo.hold).await;
    let healed_at = history.elapsed();
    c.heal().await?;
    measure_heal(&mut run, c, &history, topic, &[], healed_at).await?;
    let agreed = quorum_caught_up(c, Duration::from_secs(60)).await?;
    run.fact(format!("healed: every voter caught up with {agreed}"));
    finish(&mut run, c, topic, w, &history).await?;
    run.fact(format!(
        "{} writes sent straight to {leader} on the minority side: {sent:?}",
        sent.len()
    ));
    expect_probes_refused(&mut run, &history, &sent, leader, superseded);
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// 4. A partition leader's container paused past the session timeout, then resumed.

async fn leader_paused(c: &mut DockerCluster, topic: &str, tempo: Tempo) -> Result<Run> {
    let mut run = Run::new("4 partition leader paused");
    prepare(c, topic).await?;
    let history = Arc::new(History::new());
    let w = writers(c, topic, &history);
    tokio::time::sleep(tempo.steady).await;
    let (before, leader) = leader_of_0(c, topic).await?;
    let addr = c.node(leader)?.addr.clone();
    let paused_at = history.elapsed();
    c.pause(leader).await?;
    eprintln!("scenario 4: {leader} (leads {topic}-0) paused");
    // Fenced after the session timeout (4 s): another replica leads.
    let after = new_leader(c, topic, 0, leader, before.leader_epoch).await;
    if let Some(after) = run.expect_ok(after) {
        run.fact(format!(
            "{leader} paused; broker-{} leads from epoch {} ({:.1} s after the pause)",
            after.leader,
            after.leader_epoch,
            history.elapsed().saturating_sub(paused_at).as_secs_f64()
        ));
    }
    tokio::time::sleep(tempo.hold).await;
    let healed_at = history.elapsed();
    c.unpause(leader).await?;
    // Straight after resuming, before it has caught up with the metadata, the deposed leader
    // must not acknowledge anything.
    let sent = probes(&history, &addr, topic, 0, 0, 5).await?;
    measure_heal(&mut run, c, &history, topic, &[], healed_at).await?;
    finish(&mut run, c, topic, w, &history).await?;
    run.fact(format!(
        "resumed after {:.1} s; {} writes sent straight to {leader} as it resumed: {sent:?}",
        healed_at.saturating_sub(paused_at).as_secs_f64(),
        sent.len()
    ));
    expect_probes_refused(&mut run, &history, &sent, leader, true);
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// 5. A partition leader's container killed and started again on its volume (5c: the active
//    controller's).

async fn leader_killed_and_restarted(
    c: &mut DockerCluster,
    topic: &str,
    tempo: Tempo,
) -> Result<Run> {
    let mut run = Run::new("5 partition leader killed, restarted on its volume");
    prepare(c, topic).await?;
    let history = Arc::new(History::new());
    let w = writers(c, topic, &history);
    tokio::time::sleep(tempo.steady).await;
    let (before, victim) = leader_of_0(c, topic).await?;
    let killed_at = history.elapsed();
    c.kill(victim).await?;
    eprintln!("scenario 5: docker kill {victim} (leads {topic}-0)");
    let after = new_leader(c, topic, 0, victim, before.leader_epoch).await;
    if let Some(after) = run.expect_ok(after) {
        run.fact(format!(
            "{victim} killed; broker-{} leads from epoch {} ({:.1} s later)",
            after.leader,
            after.leader_epoch,
            history.elapsed().saturating_sub(killed_at).as_secs_f64()
        ));
    }
    tokio::time::sleep(tempo.hold).await;
    let healed_at = history.elapsed();
    c.start(victim).await?;
    measure_heal(&mut run, c, &history, topic, &[], healed_at).await?;
    run.fact(format!(
        "{victim} started again on its volume {:.1} s after the kill; healthy and in every ISR {:.1} s later",
        healed_at.saturating_sub(killed_at).as_secs_f64(),
        run.replicated.unwrap_or_default().as_secs_f64()
    ));
    // Back in the ISR: make it lead again (it is the preferred replica when it led at the
    // start), so the final read of partition 0 comes from the broker that was killed.
    if before.replicas.first() == Some(&victim.id) {
        elect_preferred(c, topic, 0).await?;
        let back = c
            .wait_partition(topic, 0, Duration::from_secs(30), |s| s.leader == victim.id)
            .await;
        if run.expect_ok(back).is_some() {
            run.fact(format!(
                "{victim} leads {topic}-0 again (preferred leader election): the final read of it comes from the restarted broker"
            ));
        }
    }
    finish(&mut run, c, topic, w, &history).await?;
    Ok(run)
}

/// 5c: the active controller's container killed (its peers get no reset: their connections to
/// it go silent) and started again on its volume.
async fn controller_killed_and_restarted(
    c: &mut DockerCluster,
    topic: &str,
    tempo: Tempo,
) -> Result<Run> {
    let mut run = Run::new("5c active controller killed, restarted on its volume");
    prepare(c, topic).await?;
    let history = Arc::new(History::new());
    let w = writers(c, topic, &history);
    tokio::time::sleep(tempo.steady).await;
    let active = c.active_controller(Duration::from_secs(15)).await?;
    let killed_at = history.elapsed();
    c.kill(active).await?;
    eprintln!("scenario 5c: docker kill {active} (active)");
    let next = c.active_controller(Duration::from_secs(30)).await;
    if let Some(next) = run.expect_ok(next) {
        run.fact(format!(
            "{active} killed: {next} active {:.1} s later",
            history.elapsed().saturating_sub(killed_at).as_secs_f64()
        ));
    }
    // Metadata changes go on through the new controller, and reach the brokers.
    let meta = format!("{topic}-created-while-down");
    let created = c.create_topic(&meta, 1, 3, &[]).await;
    let created = run
        .expect_ok(created.map_err(|e| format!("a topic created while {active} is down: {e}")))
        .is_some();
    tokio::time::sleep(tempo.hold.min(Duration::from_secs(3))).await;
    let acked = acks_between(&history, killed_at, history.elapsed());
    run.expect(acked > 0, || {
        format!("no write acknowledged after {active} was killed")
    });
    let healed_at = history.elapsed();
    c.start(active).await?;
    let more: Vec<(&str, i32)> = if created { vec![(&meta, 1)] } else { vec![] };
    measure_heal(&mut run, c, &history, topic, &more, healed_at).await?;
    let agreed = quorum_caught_up(c, Duration::from_secs(60)).await?;
    run.fact(format!(
        "{active} started again on its volume after {:.1} s: every voter caught up with {agreed}; {acked} writes acknowledged while it was down",
        healed_at.saturating_sub(killed_at).as_secs_f64()
    ));
    finish(&mut run, c, topic, w, &history).await?;
    Ok(run)
}

async fn elect_preferred(c: &DockerCluster, topic: &str, partition: i32) -> Result {
    let request = ElectLeadersRequest {
        topics: vec![ElectLeadersTopic {
            name: topic.to_owned(),
            partitions: vec![partition],
        }],
    };
    let r = c
        .client()?
        .admin(Duration::from_secs(15), |mut ctl| {
            let request = request.clone();
            async move { ctl.elect_leaders(request).await }
        })
        .await
        .map_err(ChaosError::from)?;
    let result = r
        .topics
        .iter()
        .flat_map(|t| t.partitions.iter())
        .find(|p| p.index == partition);
    if result.is_some_and(|p| p.error_code == 0) {
        Ok(())
    } else {
        Err(Failure(format!(
            "the preferred leader election of {topic}-{partition} failed: {result:?}"
        )))
    }
}

// ---------------------------------------------------------------------------------------------
// 6. A rolling restart of all six containers under continuous produce and a consumer group.

async fn rolling_restart(c: &mut DockerCluster, topic: &str, tempo: Tempo) -> Result<Run> {
    let mut run = Run::new("6 rolling restart of all six");
    prepare(c, topic).await?;
    let history = Arc::new(History::new());
    let w = writers(c, topic, &history);
    let group = format!("{topic}-group");
    let readers = GroupReaders::start(c.all_brokers(), topic, &group, 2);
    tokio::time::sleep(tempo.steady).await;
    let offsets = "__consumer_offsets";
    let offsets_partitions = c
        .client()?
        .partitions_wait(offsets, Duration::from_secs(30))
        .await
        .map_err(ChaosError::from)?
        .len() as i32;
    let mut serving = Some(Duration::ZERO);
    let mut replicated = Duration::ZERO;
    let mut steps = Vec::new();
    for name in c.names() {
        let t0 = Instant::now();
        c.stop(name).await?;
        let stopped = t0.elapsed();
        let started_at = history.elapsed();
        let t1 = Instant::now();
        c.start(name).await?;
        fully_replicated(c, &[(topic, PARTITIONS), (offsets, offsets_partitions)]).await?;
        if name.role == Role::Controller {
            quorum_caught_up(c, Duration::from_secs(60)).await?;
        }
        let back = t1.elapsed();
        replicated = replicated.max(back);
        let acked = serving_after(&history, started_at, Duration::from_secs(60)).await;
        let acked = run.expect_ok(acked.map_err(|e| format!("after {name} restarted: {e}")));
        serving = serving.zip(acked).map(|(a, b)| a.max(b));
        eprintln!(
            "scenario 6: {name} stopped in {:.1} s, healthy with full ISRs {:.1} s after its start",
            stopped.as_secs_f64(),
            back.as_secs_f64()
        );
        steps.push(format!(
            "{name} {:.1} + {:.1} s",
            stopped.as_secs_f64(),
            back.as_secs_f64()
        ));
    }
    run.serving = serving;
    run.replicated = Some(replicated);
    run.fact(format!(
        "graceful stop + start until healthy with full ISRs: {}",
        steps.join(", ")
    ));
    tokio::time::sleep(tempo.hold.min(Duration::from_secs(3))).await;
    finish(&mut run, c, topic, w, &history).await?;
    // The members read on to the end of the log (everything the final read holds).
    let ends: BTreeMap<i32, i64> =
        history
            .reads()
            .iter()
            .filter(|r| r.topic == topic)
            .fold(BTreeMap::new(), |mut m, r| {
                let e = m.entry(r.partition).or_insert(0);
                *e = (*e).max(r.offset + 1);
                m
            });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let consumed = readers.consumed();
        let covered = ends.iter().all(|(p, end)| {
            consumed
                .iter()
                .any(|r| r.partition == *p && r.offset + 1 >= *end)
        });
        if covered || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (consumed, stats) = readers.stop().await?;
    let report = history.check_consumed(&consumed, topic);
    let admin =
        GroupAdmin::new(&c.all_brokers(), Duration::from_secs(10)).map_err(ChaosError::from)?;
    let lag = match admin.describe_group(&group).await {
        Ok(d) => admin.lag(&d).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    if let Some(lag) = run.expect_ok(lag) {
        run.expect(lag.total == 0, || {
            format!(
                "the group's committed offsets are behind the end after its members closed: {:?}",
                lag.partitions
            )
        });
    }
    run.fact(format!(
        "group {group} (2 members): {} records given, {} distinct, {} redelivered, {} skipped; {} poll errors, {} members replaced",
        report.delivered,
        report.distinct,
        report.redelivered,
        report.skipped,
        stats.errors,
        stats.replaced
    ));
    run.consumed = Some(report);
    Ok(run)
}

// ---------------------------------------------------------------------------------------------
// Running them

async fn run_one(id: &str, c: &mut DockerCluster, topic: &str, tempo: Tempo) -> Result<Run> {
    match id {
        "1" => {
            let how = LeaderCut::Nodes {
                require_move: false,
            };
            leader_cut_off(c, topic, tempo, how).await
        }
        "1s" => {
            let how = LeaderCut::Nodes { require_move: true };
            leader_cut_off(c, topic, tempo, how).await
        }
        "1d" => leader_cut_off(c, topic, tempo, LeaderCut::Network).await,
        "2" => controller_cut_off(c, topic, tempo).await,
        "3" => one_two_split(c, topic, tempo).await,
        "4" => leader_paused(c, topic, tempo).await,
        "5" => leader_killed_and_restarted(c, topic, tempo).await,
        "5c" => controller_killed_and_restarted(c, topic, tempo).await,
        "6" => rolling_restart(c, topic, tempo).await,
        other => Err(Failure(format!(
            "no scenario {other} (there are 1, 1s, 1d, 2, 3, 4, 5, 5c, 6)"
        ))),
    }
}

/// Prints the threads of every live node that does not answer within 3 s (a Metadata request
/// for a broker, DescribeQuorum for a controller): where it is stuck.
async fn dump_unresponsive(c: &DockerCluster) {
    let mut silent = Vec::new();
    for (name, addr) in c.live_brokers() {
        let answered = match broker_client_at(&addr) {
            Ok(mut b) => tokio::time::timeout(
                Duration::from_secs(3),
                b.metadata(rill_protocol::proto::MetadataRequest { topics: vec![] }),
            )
            .await
            .is_ok_and(|r| r.is_ok()),
            Err(_) => false,
        };
        if !answered {
            silent.push(name);
        }
    }
    for name in silent {
        match c.stacks(name).await {
            Ok(stacks) => eprintln!("--- {name} does not answer; its threads:\n{stacks}"),
            Err(e) => eprintln!("--- {name} does not answer; no stacks: {e}"),
        }
    }
}

/// The scenario ids in `var` (comma-separated), else `default`.
fn scenarios(var: &str, default: &str) -> Vec<String> {
    std::env::var(var)
        .unwrap_or_else(|_| default.into())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

const HEADER: &str = "| scenario | attempted | ok | failed | unknown | lost | duplicated | longest write pause s | heal → every partition acks s | heal → healthy, ISRs full s |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |";

/// Runs `which` in order on one cluster (a fresh one after a scenario that leaves it
/// unhealthy); `round` names the topics. Returns each scenario's failure, if any.
async fn run_all(
    config: &DockerConfig,
    which: &[String],
    tempo: Tempo,
    round: usize,
    cluster: &mut Option<DockerCluster>,
) -> Result<Vec<(String, Result)>> {
    let mut results = Vec::new();
    let mut rows = Vec::new();
    for (i, n) in which.iter().enumerate() {
        if cluster.is_none() {
            *cluster = Some(DockerCluster::up(config.clone()).await?);
        }
        let Some(c) = cluster.as_mut() else {
            continue;
        };
        let topic = format!("d{n}-{round}-{i}");
        let started = Instant::now();
        let outcome = run_one(n, c, &topic, tempo).await;
        let result = match outcome {
            Ok(run) => {
                let report = run
                    .report
                    .as_ref()
                    .map_or("(not checked)".to_owned(), |r| r.to_string());
                eprintln!(
                    "=== {} ({:.0} s) ===\n{report}",
                    run.name,
                    started.elapsed().as_secs_f64()
                );
                rows.push(run.row());
                let problems = run.problems();
                if problems.is_empty() {
                    Ok(())
                } else {
                    eprintln!("logs:\n{}", c.log_tails(25));
                    dump_unresponsive(c).await;
                    Err(Failure(problems.join("\n")))
                }
            }
            Err(e) => {
                eprintln!(
                    "=== scenario {n} could not run to its end after {:.0} s: {e:?}\nlogs:\n{}",
                    started.elapsed().as_secs_f64(),
                    c.log_tails(25)
                );
                dump_unresponsive(c).await;
                Err(e)
            }
        };
        // Back to a healthy cluster for the next one; a fresh one after a failure (the cluster
        // may be healthy by every measure and still wrong, e.g. a broker's metadata stale).
        if result.is_err() {
            *cluster = None;
        } else if let Err(e) = c.restore(Duration::from_secs(120)).await {
            eprintln!("the cluster did not recover after scenario {n} ({e}); starting a fresh one");
            *cluster = None;
        }
        results.push((n.clone(), result));
    }
    eprintln!("{HEADER}");
    for r in rows {
        eprintln!("{r}");
    }
    Ok(results)
}

fn assert_all_passed(results: &[(String, Result)]) {
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(n, r)| r.as_ref().err().map(|e| format!("scenario {n}: {e:?}")))
        .collect();
    assert!(failed.is_empty(), "{}", failed.join("\n\n"));
}

/// Every scenario, short, in sequence on one cluster (`cargo xtask ci`, about five minutes);
/// `RILL_DOCKER_SCENARIOS` picks others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_fault_scenarios() -> Result {
    run_short(&scenarios("RILL_DOCKER_SCENARIOS", "1,1d,1s,2,3,4,5,5c,6")).await
}

async fn run_short(which: &[String]) -> Result {
    let config = DockerConfig::for_tests()?;
    let mut cluster = None;
    let results = run_all(&config, which, SHORT, 0, &mut cluster).await?;
    drop(cluster);
    assert_all_passed(&results);
    Ok(())
}

/// The scenarios in a loop for `RILL_SOAK_SECS` (default 600) with longer faults;
/// `RILL_SOAK_SCENARIOS` picks them (`cargo xtask soak --docker`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "long-running; `cargo xtask soak --docker`"]
async fn soak_docker_scenarios() -> Result {
    let secs: u64 = std::env::var("RILL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(600);
    let config = DockerConfig::for_tests()?;
    let which = scenarios("RILL_SOAK_SCENARIOS", "1,1d,1s,2,3,4,5,5c,6");
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let mut cluster = None;
    let mut round = 0;
    while round == 0 || Instant::now() < stop_at {
        let results = run_all(&config, &which, LONG, round, &mut cluster).await?;
        assert_all_passed(&results);
        round += 1;
    }
    eprintln!("soak: {round} rounds of {which:?}, all clean");
    Ok(())
}
