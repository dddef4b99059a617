//! Replication admin on real processes: preferred leaders come back by themselves after a
//! restart (`auto.leader.rebalance.enable`), and `rill topic reassign` moves partitions onto a
//! broker that joined later (plan first, applied only with --execute).

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::Cluster;

/// Runs `rill` against `bootstrap` with `stdin`: (success, stdout, stderr).
fn rill(bootstrap: &str, args: &[&str], stdin: &[u8]) -> (bool, String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["--bootstrap", bootstrap])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin).unwrap();
    drop(input);
    // Every command here either finishes or is bounded by its own --timeout-ms / patience.
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn lines(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("record-{i}\n"))
        .collect::<String>()
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_broker_gets_its_preferred_leaderships_back() {
    let mut cluster =
        Cluster::start(3, 3, &["leader.imbalance.check.interval.seconds=1"], &[]).await;
    let b = cluster.bootstrap();
    let (ok, _, err) = rill(&b, &["topic", "create", "pref", "-p", "3", "-r", "3"], b"");
    assert!(ok, "{err}");
    let (ok, _, err) = rill(&b, &["produce", "pref", "--acks", "all"], &lines(300));
    assert!(ok, "{err}");
    let within = Duration::from_secs(60);
    let parts = cluster
        .wait_for(
            "pref",
            within,
            "every partition led by its preferred replica",
            |ps| {
                ps.iter()
                    .all(|p| p.leader_id == p.replicas[0] && p.isr.len() == 3)
            },
        )
        .await;
    let mine = parts
        .iter()
        .find(|p| p.replicas[0] == 1)
        .expect("broker 1 is the preferred leader of one partition")
        .index;

    // A controlled shutdown moves broker 1's leadership away.
    cluster.stop_broker(0);
    cluster
        .wait_for("pref", within, "broker 1 leads nothing", |ps| {
            ps.iter().all(|p| p.leader_id != 1 && p.leader_id >= 0)
        })
        .await;
    // Nothing can be elected back while it is down.
    let (ok, out, _) = rill(
        &cluster.bootstrap(),
        &["topic", "elect-leaders", "pref"],
        b"",
    );
    assert!(!ok, "{out}");
    assert!(out.contains("LEADER_NOT_AVAILABLE"), "{out}");

    // Back, caught up and in the ISR again: the controller's imbalance check (every second
    // here) hands the partition back without anyone asking.
    cluster.start_broker(0);
    let parts = cluster
        .wait_for(
            "pref",
            within,
            "broker 1 leads its preferred partition again",
            |ps| ps.iter().any(|p| p.index == mine && p.leader_id == 1),
        )
        .await;
    let p = parts.iter().find(|p| p.index == mine).unwrap();
    assert!(p.isr.contains(&1), "elected only from the ISR: {p:?}");
    let (ok, out, err) = rill(
        &cluster.bootstrap(),
        &["topic", "elect-leaders", "pref"],
        b"",
    );
    assert!(ok, "{out}{err}");
    assert_eq!(
        out.matches("already led by its preferred replica").count(),
        3,
        "{out}"
    );
    let (ok, _, err) = rill(
        &cluster.bootstrap(),
        &["topic", "elect-leaders", "nosuch"],
        b"",
    );
    assert!(!ok);
    assert!(
        err.contains("could not get their preferred leader"),
        "{err}"
    );
    // Every acknowledged record is still there.
    let (ok, out, err) = rill(
        &cluster.bootstrap(),
        &[
            "consume",
            "pref",
            "--from-beginning",
            "--max-messages",
            "300",
            "--timeout-ms",
            "15000",
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reassign_prints_the_plan_and_moves_partitions_only_with_execute() {
    // Brokers 1 and 2 hold the topic; broker 3 joins afterwards.
    let mut cluster = Cluster::start(3, 2, &[], &[]).await;
    let b = cluster.bootstrap();
    let (ok, _, err) = rill(&b, &["topic", "create", "grow", "-p", "4", "-r", "1"], b"");
    assert!(ok, "{err}");
    let (ok, _, err) = rill(&b, &["produce", "grow", "--acks", "all"], &lines(400));
    assert!(ok, "{err}");
    cluster.start_broker(2);
    cluster.wait_live(3).await;
    let b = cluster.bootstrap();
    let before: Vec<Vec<i32>> = cluster
        .partitions("grow")
        .await
        .iter()
        .map(|p| p.replicas.clone())
        .collect();
    assert_eq!(before.len(), 4);
    assert!(before.iter().flatten().all(|r| *r != 3), "{before:?}");

    // Without --execute: the plan, and nothing changes.
    let (ok, out, err) = rill(&b, &["topic", "reassign", "grow", "--balance"], b"");
    assert!(ok, "{err}");
    assert!(
        out.contains("Current partition replica assignment"),
        "{out}"
    );
    assert!(out.contains("Proposed partition reassignment"), "{out}");
    assert!(out.contains("-> [3]"), "{out}");
    assert!(out.contains("Dry run: nothing was changed"), "{out}");
    // Refused requests change nothing either.
    let (ok, _, err) = rill(
        &b,
        &[
            "topic",
            "reassign",
            "grow",
            "--partition",
            "0",
            "--replicas",
            "1,9",
            "--execute",
        ],
        b"",
    );
    assert!(!ok);
    assert!(
        err.contains("INVALID_REPLICA_ASSIGNMENT") && err.contains("[9]"),
        "{err}"
    );
    let (ok, _, err) = rill(
        &b,
        &[
            "topic",
            "reassign",
            "grow",
            "--partition",
            "7",
            "--replicas",
            "1",
            "--execute",
        ],
        b"",
    );
    assert!(!ok && err.contains("grow-7 does not exist"), "{err}");
    let unchanged: Vec<Vec<i32>> = cluster
        .partitions("grow")
        .await
        .iter()
        .map(|p| p.replicas.clone())
        .collect();
    assert_eq!(unchanged, before);
    let (ok, out, _) = rill(&b, &["topic", "reassign", "--list"], b"");
    assert!(ok && out.contains("No reassignment in progress"), "{out}");

    // With --execute: broker 3 takes its share once its new replica caught up.
    let (ok, out, err) = rill(
        &b,
        &["topic", "reassign", "grow", "--balance", "--execute"],
        b"",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("Started the reassignment of 1 partition(s)"),
        "{out}"
    );
    let within = Duration::from_secs(60);
    let parts = cluster
        .wait_for("grow", within, "broker 3 holds one replica", |ps| {
            ps.iter().filter(|p| p.replicas == [3]).count() == 1
                && ps
                    .iter()
                    .all(|p| p.replicas.len() == 1 && p.leader_id == p.replicas[0])
        })
        .await;
    // An explicit list may change the replication factor: 1 → 2, the new replica first.
    let p = parts.iter().find(|p| p.replicas != [3]).unwrap();
    let target = format!("3,{}", p.replicas[0]);
    let index = p.index.to_string();
    let (ok, out, err) = rill(
        &b,
        &[
            "topic",
            "reassign",
            "grow",
            "--partition",
            &index,
            "--replicas",
            &target,
            "--execute",
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert!(
        out.contains(&format!(
            "grow-{index}: [{}] -> [3, {}]",
            p.replicas[0], p.replicas[0]
        )),
        "{out}"
    );
    let want = vec![3, p.replicas[0]];
    cluster
        .wait_for(
            "grow",
            within,
            "the new replica list in target order",
            |ps| {
                ps.iter()
                    .any(|q| q.index == p.index && q.replicas == want && q.isr.len() == 2)
            },
        )
        .await;
    let (ok, out, _) = rill(&b, &["topic", "reassign", "--list"], b"");
    assert!(ok && out.contains("No reassignment in progress"), "{out}");
    // Completed by the leader's ISR expansion, not at once.
    let log = std::fs::read_to_string(cluster.controllers[0].dir.join("stderr.log")).unwrap();
    assert_eq!(
        log.matches("reassignment complete: every adding replica is in the ISR")
            .count(),
        2,
        "{log}"
    );
    // Every record is still there, wherever its partition went.
    let (ok, out, err) = rill(
        &b,
        &[
            "consume",
            "grow",
            "--from-beginning",
            "--max-messages",
            "400",
            "--timeout-ms",
            "15000",
        ],
        b"",
    );
    assert!(ok, "{err}");
    assert_eq!(out.lines().count(), 400);

    // The replication throttles are cluster-wide broker configs, validated.
    let (ok, _, err) = rill(
        &b,
        &[
            "cluster",
            "alter-config",
            "--set",
            "leader.replication.throttled.rate=1048576",
        ],
        b"",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = rill(
        &b,
        &[
            "cluster",
            "alter-config",
            "--set",
            "follower.replication.throttled.rate=-5",
        ],
        b"",
    );
    assert!(!ok && err.contains("INVALID_CONFIG"), "{err}");
    let (ok, _, err) = rill(
        &b,
        &["cluster", "alter-config", "--set", "replica.throttle=1"],
        b"",
    );
    assert!(!ok && err.contains("INVALID_CONFIG"), "{err}");
    let (ok, out, _) = rill(&b, &["cluster", "describe"], b"");
    assert!(
        ok && out.contains("leader.replication.throttled.rate=1048576"),
        "{out}"
    );
    assert!(
        !out.contains("follower.replication.throttled.rate"),
        "{out}"
    );
}
