//! The `rill` command-line tool against a real cluster: topic admin, produce/consume, cluster
//! description, and one-line errors with a non-zero exit.

#[path = "../../rill-broker/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::*;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_manages_topics_and_moves_data() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let (ok, out, err) = rill(
        &cluster,
        &[
            "topic",
            "create",
            "orders",
            "-p",
            "3",
            "-c",
            "retention.ms=3600000",
        ],
    );
    assert!(ok, "{err}");
    assert!(out.contains("created topic orders (3 partitions"), "{out}");
    let (ok, _, err) = rill(&cluster, &["topic", "create", "orders", "-p", "3"]);
    assert!(!ok);
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    assert!(err.contains("TOPIC_ALREADY_EXISTS"), "{err}");
    let (ok, _, err) = rill(&cluster, &["topic", "create", "bad name"]);
    assert!(!ok && err.contains("INVALID_TOPIC_EXCEPTION"), "{err}");
    let (ok, out, _) = rill(&cluster, &["topic", "list"]);
    assert!(ok && out.lines().any(|l| l == "orders"), "{out}");
    let (ok, out, err) = rill(&cluster, &["topic", "describe", "orders"]);
    assert!(ok, "{err}");
    assert!(
        out.contains("Partitions: 3") && out.contains("retention.ms=3600000"),
        "{out}"
    );
    let (ok, _, err) = rill(
        &cluster,
        &[
            "topic",
            "alter-config",
            "orders",
            "--set",
            "retention.ms=60000",
        ],
    );
    assert!(ok, "{err}");
    let (_, out, _) = rill(&cluster, &["topic", "describe", "orders"]);
    assert!(out.contains("retention.ms=60000"), "{out}");
    let (ok, _, err) = rill(
        &cluster,
        &[
            "topic",
            "alter-config",
            "orders",
            "--set",
            "retention.ms=soon",
        ],
    );
    assert!(!ok && err.contains("INVALID_CONFIG"), "{err}");

    let mut produce = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args([
            "--bootstrap",
            &cluster.bootstrap().join(","),
            "produce",
            "orders",
            "--key-separator",
            ":",
        ])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    produce
        .stdin
        .as_mut()
        .unwrap()
        .write_all(b"a:1\nb:2\na:3\n")
        .unwrap();
    drop(produce.stdin.take());
    assert!(produce.wait().unwrap().success());
    let (ok, out, err) = rill(
        &cluster,
        &[
            "consume",
            "orders",
            "--from-beginning",
            "--print-key",
            "--max-messages",
            "3",
            "--timeout-ms",
            "10000",
        ],
    );
    assert!(ok, "{err}");
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort();
    assert_eq!(lines, ["a\t1", "a\t3", "b\t2"]);
    let (ok, out, _) = rill(&cluster, &["cluster", "describe"]);
    assert!(
        ok && out.contains("Active controller: 1") && out.contains("active"),
        "{out}"
    );
    let (ok, out, err) = rill(
        &cluster,
        &[
            "perf",
            "produce",
            "--topic",
            "orders",
            "--num-records",
            "2000",
            "--record-size",
            "100",
            "--quiet",
        ],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("2000 records sent") && out.contains("p999"),
        "{out}"
    );
    let (ok, out, _) = rill(&cluster, &["topic", "delete", "orders"]);
    assert!(ok && out.contains("deleted topic orders"));
}

#[test]
fn errors_without_a_cluster_are_one_line_and_non_zero() {
    let out = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args([
            "--bootstrap",
            &format!("127.0.0.1:{}", free_port()),
            "topic",
            "list",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.starts_with("error: "), "{err}");
}
