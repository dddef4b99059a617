//! `rill consume --group` and `rill group` against a real cluster: consuming as a group member
//! commits exactly what was printed, Ctrl-C leaves the group, and list / describe (lag) /
//! reset-offsets (plan, --execute, refused with members) / delete print what
//! kafka-consumer-groups.sh would, with one-line errors.

#[path = "../../rill-broker/tests/common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const GROUP_OVERRIDES: &[&str] = &[
    "offsets.topic.num.partitions=3",
    "group.consumer.heartbeat.interval.ms=200",
];

fn rill(cluster: &Cluster, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["--bootstrap", &cluster.bootstrap().join(",")])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The number after "Total lag: " in `rill group describe` output.
fn total_lag(describe: &str) -> i64 {
    describe
        .lines()
        .find_map(|l| l.strip_prefix("Total lag: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("no total lag in:\n{describe}"))
}

fn one_line_error(ok: bool, err: &str, contains: &str) {
    assert!(!ok, "succeeded; stderr: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(err.contains(contains), "{contains:?} not in {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_with_a_group_and_manage_the_group() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    cluster.create_topic("t", 2, 1, &[]).await;
    let mut produce = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args([
            "--bootstrap",
            &cluster.bootstrap().join(","),
            "produce",
            "t",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lines: Vec<String> = (0..10).map(|i| format!("line{i}")).collect();
    produce
        .stdin
        .as_mut()
        .unwrap()
        .write_all(format!("{}\n", lines.join("\n")).as_bytes())
        .unwrap();
    drop(produce.stdin.take());
    assert!(produce.wait().unwrap().success());

    // Two runs of the same group read every record once: the first commits only the 4 it
    // printed.
    let consume = |n: &str| {
        rill(
            &cluster,
            &[
                "consume",
                "t",
                "--group",
                "g",
                "--from-beginning",
                "--max-messages",
                n,
                "--timeout-ms",
                "20000",
            ],
        )
    };
    let (ok, first, err) = consume("4");
    assert!(ok, "{err}");
    assert_eq!(first.lines().count(), 4, "{first}");
    let (ok, second, err) = consume("6");
    assert!(ok, "{err}");
    let all: BTreeSet<&str> = first.lines().chain(second.lines()).collect();
    assert_eq!(all.len(), 10, "first:\n{first}second:\n{second}");

    let (ok, out, err) = rill(&cluster, &["group", "list"]);
    assert!(ok, "{err}");
    assert!(out.lines().any(|l| l == "g"), "{out}");
    let (ok, out, err) = rill(&cluster, &["group", "list", "--state"]);
    assert!(ok, "{err}");
    assert!(
        out.lines()
            .any(|l| l.starts_with("g ") && l.contains("Empty")),
        "{out}"
    );
    let (ok, out, err) = rill(&cluster, &["group", "describe", "g"]);
    assert!(ok, "{err}");
    assert!(out.contains("Group: g\tState: Empty"), "{out}");
    assert!(out.contains("The group has no members."), "{out}");
    for column in ["CURRENT-OFFSET", "LOG-END-OFFSET", "LAG", "CONSUMER-ID"] {
        assert!(out.contains(column), "{column} missing:\n{out}");
    }
    assert_eq!(total_lag(&out), 0, "{out}");

    // A plan alone changes nothing; --execute commits it.
    let (ok, out, err) = rill(
        &cluster,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-earliest",
        ],
    );
    assert!(ok, "{err}");
    assert!(err.contains("dry run"), "{err}");
    assert!(
        out.contains("NEW-OFFSET") && out.lines().count() == 3,
        "{out}"
    );
    let (_, out, _) = rill(&cluster, &["group", "describe", "g"]);
    assert_eq!(total_lag(&out), 0, "{out}");
    let (ok, out, err) = rill(
        &cluster,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t:0,1",
            "--to-earliest",
            "--execute",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("committed the new offsets of group g for 2 partitions"),
        "{out}"
    );
    let (_, out, _) = rill(&cluster, &["group", "describe", "g"]);
    assert_eq!(total_lag(&out), 10, "{out}");
    let (ok, out, err) = rill(
        &cluster,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "2000-01-01T00:00:00Z",
            "--execute",
        ],
    );
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().filter(|l| l.starts_with("g ")).collect();
    assert!(
        rows.len() == 2 && rows.iter().all(|l| l.ends_with(" 0")),
        "{out}"
    );

    // Bad input: one clear line each.
    let (ok, _, err) = rill(
        &cluster,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "noon",
        ],
    );
    one_line_error(ok, &err, "2026-11-27T10:00:00Z");
    let (ok, _, err) = rill(
        &cluster,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t:7",
            "--to-latest",
        ],
    );
    one_line_error(ok, &err, "does not exist");
    let (ok, _, err) = rill(
        &cluster,
        &["consume", "t", "--group", "g", "--partition", "0"],
    );
    one_line_error(ok, &err, "--group");
    let (ok, _, err) = rill(&cluster, &["group", "describe", "nosuch"]);
    one_line_error(ok, &err, "GROUP_ID_NOT_FOUND");

    // A running member: resets and deletes are refused; Ctrl-C makes it leave.
    let mut member = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args([
            "--bootstrap",
            &cluster.bootstrap().join(","),
            "consume",
            "t",
            "--group",
            "g",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (_, out, _) = rill(&cluster, &["group", "describe", "g"]);
        if out.contains("rill-cli") && out.contains("Stable") {
            break;
        }
        assert!(Instant::now() < deadline, "the member never joined:\n{out}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let (ok, _, err) = rill(
        &cluster,
        &[
            "group",
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-latest",
            "--execute",
        ],
    );
    one_line_error(ok, &err, "the group has active members; stop them first");
    let (ok, _, err) = rill(&cluster, &["group", "delete", "g"]);
    one_line_error(ok, &err, "the group has active members; stop them first");
    let _ = Command::new("kill")
        .args(["-INT", &member.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = member.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the member did not stop on SIGINT"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    // It left (no session timeout to wait for) and committed what it read: all of it.
    let (_, out, _) = rill(&cluster, &["group", "describe", "g"]);
    assert!(out.contains("The group has no members."), "{out}");
    assert_eq!(total_lag(&out), 0, "{out}");

    let (ok, out, err) = rill(&cluster, &["group", "delete", "g"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "deleted group g");
    let (ok, _, err) = rill(&cluster, &["group", "delete", "g"]);
    one_line_error(ok, &err, "does not exist");
}
