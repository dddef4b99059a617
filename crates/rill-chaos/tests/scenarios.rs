//! Fault scenarios of issue 11 on real processes: 3 controllers + 3 brokers, an RF 3 topic with
//! `min.insync.replicas=2`, acks=all writers, faults injected per node, then a full read and the
//! history checker. Every scenario must end with 0 lost acknowledged records and 0 duplicates,
//! plus its own facts. Each is bounded in time and stops by itself.
//!
//! `soak_scenarios` (ignored) runs them in a loop for `RILL_SOAK_SECS` (`cargo xtask soak`). The binaries must be built:
//! `cargo build --workspace --bins`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rill_chaos::history::{History, Outcome, Report};
use rill_chaos::{
    ChaosError, ClusterConfig, ClusterView, LocalCluster, NodeName, Workload, WorkloadConfig,
    probe_produce, probe_produce_via, read_all,
};

/// The shortest pause between acknowledgements counted as unavailability.
const GAP: Duration = Duration::from_secs(1);
/// Writer id of single-shot probe produces (workload writers are 1..).
const PROBE: u32 = 900;

type Result<T = ()> = std::result::Result<T, ChaosError>;

async fn cluster_with_topic(topic: &str, partitions: i32) -> Result<LocalCluster> {
    let cluster = LocalCluster::start(ClusterConfig::default()).await?;
    cluster
        .create_topic(topic, partitions, 3, &[("min.insync.replicas", "2")])
        .await?;
    // Every replica in sync before faults start.
    for p in 0..partitions {
        cluster
            .wait_isr(topic, p, 3, Duration::from_secs(15))
            .await?;
    }
    Ok(cluster)
}

fn workload(cluster: &LocalCluster, topic: &str, partitions: i32) -> WorkloadConfig {
    WorkloadConfig::new(cluster.all_brokers(), topic, partitions)
}

/// Stops the writers, reads everything back, checks, prints the report (and a one-line summary
/// for docs/reliability.md).
async fn finish(
    name: &str,
    cluster: &LocalCluster,
    topic: &str,
    writers: Workload,
    history: &History,
) -> Result<Report> {
    writers.stop().await?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    read_all(
        cluster.all_brokers(),
        topic,
        history,
        Duration::from_secs(30),
    )
    .await?;
    let report = history.check(GAP);
    eprintln!("=== {name} ===\n{report}");
    eprintln!(
        "| {name} | {} | {} | {} | {} | {:.1} |",
        report.attempted,
        report.acknowledged,
        report.lost,
        report.duplicated,
        report.unavailable_secs
    );
    Ok(report)
}

fn assert_no_loss_no_duplicates(report: &Report) {
    assert!(report.acknowledged > 0, "nothing acknowledged:\n{report}");
    assert_eq!(report.lost, 0, "acknowledged records lost:\n{report}");
    assert_eq!(report.duplicated, 0, "duplicates:\n{report}");
    assert!(report.is_clean(), "{report}");
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

// ---------------------------------------------------------------------------------------------
// 1. The leader of a partition SIGKILLed again and again while producing, restarted each time.

async fn leader_killed_repeatedly(rounds: usize) -> Result<Report> {
    let topic = "s1";
    let cluster = cluster_with_topic(topic, 1).await?;
    let history = Arc::new(History::new());
    let writers = Workload::start(workload(&cluster, topic, 1), Arc::clone(&history));
    let mut cluster = cluster;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..rounds {
        let leader = cluster.leader_of(topic, 0, Duration::from_secs(20)).await?;
        eprintln!("scenario 1, round {round}: SIGKILL {leader}");
        cluster.kill(leader)?;
        tokio::time::sleep(Duration::from_secs(1)).await;
        cluster.start_node(leader)?;
        cluster.wait_healthy(Duration::from_secs(30)).await?;
        // Back in the ISR (caught up) before the next kill, else the next kill loses the
        // partition's last in-sync copy.
        cluster
            .wait_isr(topic, 0, 3, Duration::from_secs(30))
            .await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    finish(
        "1 leader SIGKILLed repeatedly",
        &cluster,
        topic,
        writers,
        &history,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_1_leader_sigkilled_repeatedly() -> Result {
    let report = leader_killed_repeatedly(3).await?;
    assert_no_loss_no_duplicates(&report);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 2. A leader SIGSTOPped past the session timeout, then SIGCONT: it is fenced, its late writes
//    are never acknowledged and never visible.

async fn paused_leader_fenced() -> Result<Report> {
    let topic = "s2";
    let cluster = cluster_with_topic(topic, 1).await?;
    let history = Arc::new(History::new());
    let writers = Workload::start(workload(&cluster, topic, 1), Arc::clone(&history));
    let mut cluster = cluster;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old = cluster.leader_of(topic, 0, Duration::from_secs(10)).await?;
    let before = cluster
        .partition_state(topic, 0)
        .await
        .map_or(-1, |s| s.leader_epoch);
    eprintln!("scenario 2: SIGSTOP {old} (leader epoch {before})");
    cluster.pause(old)?;
    // Past the session timeout (3 s): the controllers fence it and elect another leader.
    let after = cluster
        .wait_partition(topic, 0, Duration::from_secs(20), |s| {
            s.leader >= 0 && s.leader != old.id && s.leader_epoch > before
        })
        .await?;
    eprintln!(
        "scenario 2: new leader broker-{} epoch {}",
        after.leader, after.leader_epoch
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    cluster.resume(old)?;
    // Straight after SIGCONT, before it has caught up with the metadata, the deposed leader
    // must not acknowledge anything.
    let mut late = Vec::new();
    for i in 0..20 {
        let broker = cluster.broker_client(old)?;
        let o = probe_produce_via(broker, &history, topic, 0, PROBE, i).await;
        late.push(o);
    }
    eprintln!("scenario 2: late writes to {old}: {late:?}");
    assert!(
        !late.iter().any(|o| matches!(o, Outcome::Ok { .. })),
        "the deposed leader acknowledged a write after SIGCONT: {late:?}"
    );
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    cluster
        .wait_isr(topic, 0, 3, Duration::from_secs(30))
        .await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    finish(
        "2 leader SIGSTOPped, fenced",
        &cluster,
        topic,
        writers,
        &history,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_2_paused_leader_is_fenced() -> Result {
    let report = paused_leader_fenced().await?;
    assert_no_loss_no_duplicates(&report);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 3. The active controller SIGKILLed during produce (twice), restarted each time.

async fn active_controller_killed(rounds: usize) -> Result<Report> {
    let topic = "s3";
    let cluster = cluster_with_topic(topic, 3).await?;
    let history = Arc::new(History::new());
    let writers = Workload::start(workload(&cluster, topic, 3), Arc::clone(&history));
    let mut cluster = cluster;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for round in 0..rounds {
        let active = cluster.active_controller(Duration::from_secs(10)).await?;
        eprintln!("scenario 3, round {round}: SIGKILL {active}");
        let killed_at = history.elapsed();
        cluster.kill(active)?;
        let next = cluster.active_controller(Duration::from_secs(15)).await?;
        assert_ne!(next, active, "a new controller must take over");
        eprintln!("scenario 3: {next} is active");
        tokio::time::sleep(Duration::from_secs(2)).await;
        cluster.start_node(active)?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        // Writes went on without the old controller.
        let acked = acks_between(&history, killed_at, history.elapsed());
        assert!(acked > 0, "no write acknowledged after {active} was killed");
    }
    finish(
        "3 active controller SIGKILLed",
        &cluster,
        topic,
        writers,
        &history,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_3_active_controller_sigkilled_during_produce() -> Result {
    let report = active_controller_killed(2).await?;
    assert_no_loss_no_duplicates(&report);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 4. Two of three replicas down: produce refused (NOT_ENOUGH_REPLICAS), nothing acknowledged;
//    back up: resumes.

struct Outage {
    report: Report,
    probes: Vec<Outcome>,
    acked_while_down: usize,
}

async fn two_replicas_down(resume: bool, quiesce: bool) -> Result<Outage> {
    let topic = "s4";
    let cluster = cluster_with_topic(topic, 1).await?;
    let history = Arc::new(History::new());
    let mut config = workload(&cluster, topic, 1);
    // Records refused for the whole outage give up sooner (as Unknown: retried, so unknown).
    config.delivery_timeout = Duration::from_secs(8);
    let writers = Workload::start(config, Arc::clone(&history));
    let mut cluster = cluster;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.leader_of(topic, 0, Duration::from_secs(10)).await?;
    let followers: Vec<NodeName> = (1..=3)
        .map(NodeName::broker)
        .filter(|b| *b != leader)
        .collect();
    // Quiesced: no request is in flight when the replicas die, so no acks=all request is left
    // waiting for them (its timeout and the producer's retry would write it twice: that case
    // needs the idempotent producer and is what the full version below exercises).
    if quiesce {
        assert!(
            writers.quiesce(Duration::from_secs(10)).await,
            "writers did not quiesce"
        );
    }
    for f in &followers {
        eprintln!("scenario 4: SIGKILL {f} (leader is {leader})");
        cluster.kill(*f)?;
    }
    // Fenced after the session timeout: the ISR shrinks to the leader alone.
    cluster
        .wait_isr(topic, 0, 1, Duration::from_secs(20))
        .await?;
    writers.resume();
    // Writes appended just before the leader learned may still complete; after that, none.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let down_from = history.elapsed();
    let client = cluster.client()?;
    let mut probes = Vec::new();
    for i in 0..10 {
        probes.push(probe_produce(&client, &history, topic, 0, PROBE, i).await);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let down_to = history.elapsed();
    let acked_while_down = acks_between(&history, down_from, down_to);
    eprintln!("scenario 4: probes while down: {probes:?}");
    for f in &followers {
        eprintln!("scenario 4: restart {f}");
        cluster.start_node(*f)?;
    }
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    if resume {
        // Back in the ISR, then writes resume.
        cluster
            .wait_partition(topic, 0, Duration::from_secs(30), |s| s.isr.len() >= 2)
            .await?;
        let up_at = history.elapsed();
        let deadline = Instant::now() + Duration::from_secs(15);
        while acks_between(&history, up_at, history.elapsed()) == 0 && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        assert!(
            acks_between(&history, up_at, history.elapsed()) > 0,
            "writes did not resume once the replicas were back"
        );
    } else {
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let report = finish(
        "4 two of three replicas down",
        &cluster,
        topic,
        writers,
        &history,
    )
    .await?;
    Ok(Outage {
        report,
        probes,
        acked_while_down,
    })
}

fn assert_refused_while_down(o: &Outage) {
    assert_eq!(
        o.acked_while_down, 0,
        "acknowledged while 2 of 3 replicas were down"
    );
    assert!(
        o.probes.iter().all(
            |p| matches!(p, Outcome::Failed { error } if error.contains("NOT_ENOUGH_REPLICAS"))
        ),
        "every write while down must be refused with NOT_ENOUGH_REPLICAS: {:?}",
        o.probes
    );
    assert_eq!(o.report.failed_but_visible, 0, "{}", o.report);
}

/// The refusal half of scenario 4, which holds today: the ISR shrinks by fencing, and a write
/// below `min.insync.replicas` is refused before anything is appended.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_two_replicas_down_refuses_writes() -> Result {
    let o = two_replicas_down(false, true).await?;
    assert_refused_while_down(&o);
    assert_no_loss_no_duplicates(&o.report);
    Ok(())
}

/// All of scenario 4: once the replicas are back they rejoin the ISR and writes resume. Needs
/// followers to catch up and the leader to expand the ISR (AlterPartition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_4_two_replicas_down_then_back_resumes() -> Result {
    let o = two_replicas_down(true, false).await?;
    assert_refused_while_down(&o);
    assert_no_loss_no_duplicates(&o.report);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// 5. A follower held far behind (stopped), then back: it truncates if needed, catches up,
//    rejoins the ISR. Then it is made the only possible leader, which proves it has everything.

async fn follower_held_behind() -> Result<Report> {
    let topic = "s5";
    let cluster = cluster_with_topic(topic, 1).await?;
    let history = Arc::new(History::new());
    let mut config = workload(&cluster, topic, 1);
    config.rate_per_writer = 500;
    let writers = Workload::start(config, Arc::clone(&history));
    let mut cluster = cluster;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let leader = cluster.leader_of(topic, 0, Duration::from_secs(10)).await?;
    let (lagger, other) = {
        let f: Vec<NodeName> = (1..=3)
            .map(NodeName::broker)
            .filter(|b| *b != leader)
            .collect();
        (f[0], f[1])
    };
    eprintln!("scenario 5: SIGSTOP follower {lagger} (leader {leader})");
    cluster.pause(lagger)?;
    cluster
        .wait_isr(topic, 0, 2, Duration::from_secs(20))
        .await?;
    tokio::time::sleep(Duration::from_secs(6)).await;
    eprintln!("scenario 5: SIGCONT {lagger}");
    cluster.resume(lagger)?;
    cluster
        .wait_isr(topic, 0, 3, Duration::from_secs(40))
        .await?;
    // Only the caught-up follower can lead now: everything acknowledged must be on it.
    eprintln!("scenario 5: SIGKILL {leader} and {other}; {lagger} must lead");
    cluster.kill(leader)?;
    cluster.kill(other)?;
    let s = cluster
        .wait_partition(topic, 0, Duration::from_secs(20), |s| s.leader == lagger.id)
        .await?;
    eprintln!("scenario 5: {lagger} leads (epoch {})", s.leader_epoch);
    cluster.start_node(leader)?;
    cluster.start_node(other)?;
    cluster.wait_healthy(Duration::from_secs(30)).await?;
    cluster
        .wait_isr(topic, 0, 3, Duration::from_secs(30))
        .await?;
    finish("5 follower held behind", &cluster, topic, writers, &history).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_5_follower_held_behind_catches_up() -> Result {
    let report = follower_held_behind().await?;
    assert_no_loss_no_duplicates(&report);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The long run: the scenarios in a loop for RILL_SOAK_SECS (default 120). RILL_SOAK_SCENARIOS
// picks them (comma-separated numbers; default the ones that hold today: 3,4).

// ---------------------------------------------------------------------------------------------
// 6. Reassignment of a partition to a new broker under load: the leader's replica moves away to
//    a broker that joined with no data; writes go on and nothing is lost or duplicated.

async fn reassigned_under_load() -> Result<Report> {
    let topic = "s6";
    let cluster = LocalCluster::start(ClusterConfig {
        brokers: 4,
        ..ClusterConfig::default()
    })
    .await?;
    // Place the partition on brokers 1..3 explicitly, so broker 4 starts empty.
    cluster
        .create_topic(topic, 1, 3, &[("min.insync.replicas", "2")])
        .await?;
    cluster
        .wait_isr(topic, 0, 3, Duration::from_secs(15))
        .await?;
    let before = cluster
        .partition_state(topic, 0)
        .await
        .ok_or_else(|| ChaosError::Timeout("partition state".into()))?;
    let spare = (1..=4)
        .find(|b| !before.replicas.contains(b))
        .ok_or_else(|| ChaosError::Timeout("a spare broker".into()))?;
    // Move the leader's replica to the spare broker.
    let target: Vec<i32> = before
        .replicas
        .iter()
        .copied()
        .filter(|r| *r != before.leader)
        .chain([spare])
        .collect();
    let history = Arc::new(History::new());
    let writers = Workload::start(workload(&cluster, topic, 1), Arc::clone(&history));
    tokio::time::sleep(Duration::from_secs(3)).await;
    eprintln!(
        "scenario 6: {:?} (leader {}) -> {target:?}",
        before.replicas, before.leader
    );
    let client = cluster.client()?;
    let request = rill_protocol::proto::AlterPartitionReassignmentsRequest {
        topics: vec![rill_protocol::proto::ReassignableTopic {
            name: topic.into(),
            partitions: vec![rill_protocol::proto::ReassignablePartition {
                index: 0,
                replicas: Some(rill_protocol::proto::IsrList {
                    ids: target.clone(),
                }),
            }],
        }],
    };
    let r = client
        .admin(Duration::from_secs(10), |mut c| {
            let request = request.clone();
            async move { c.alter_partition_reassignments(request).await }
        })
        .await
        .map_err(|e| ChaosError::Timeout(format!("reassignment refused: {e}")))?;
    assert_eq!(r.error_code, 0, "{}", r.error_message);
    // Done when the replica list is the target and the spare is in sync.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(s) = cluster.partition_state(topic, 0).await {
            let mut replicas = s.replicas.clone();
            replicas.sort();
            let mut want = target.clone();
            want.sort();
            if replicas == want && s.isr.contains(&spare) && target.contains(&s.leader) {
                eprintln!(
                    "scenario 6: reassigned, leader {} isr {:?}",
                    s.leader, s.isr
                );
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout(format!(
                "reassignment to {target:?} did not complete; now {:?}",
                cluster.partition_state(topic, 0).await
            )));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    finish(
        "6 reassignment under load",
        &cluster,
        topic,
        writers,
        &history,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scenario_6_reassignment_under_load() -> Result {
    let report = reassigned_under_load().await?;
    assert_no_loss_no_duplicates(&report);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running; `cargo xtask soak`"]
async fn soak_scenarios() -> Result {
    let secs: u64 = std::env::var("RILL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let which: Vec<u32> = std::env::var("RILL_SOAK_SCENARIOS")
        .unwrap_or_else(|_| "1,2,3,4,5,6".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let mut runs = 0;
    'outer: loop {
        for &n in &which {
            if Instant::now() >= stop_at && runs > 0 {
                break 'outer;
            }
            let report = match n {
                1 => leader_killed_repeatedly(5).await?,
                2 => paused_leader_fenced().await?,
                3 => active_controller_killed(3).await?,
                4 => {
                    let o = two_replicas_down(false, true).await?;
                    assert_refused_while_down(&o);
                    o.report
                }
                5 => follower_held_behind().await?,
                6 => reassigned_under_load().await?,
                other => panic!("no scenario {other} (there are 1 to 6)"),
            };
            assert_no_loss_no_duplicates(&report);
            runs += 1;
        }
    }
    eprintln!("soak: {runs} scenario runs, all clean");
    Ok(())
}
