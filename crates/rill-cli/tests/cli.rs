//! The `rill` command-line tool against a real cluster: topic admin, produce/consume, cluster
//! description, and one-line errors with a non-zero exit.

#[path = "../../rill-broker/tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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
    // A broker-level topic default (`log.segment.bytes`), which only the broker knows.
    let cluster = Cluster::start(1, 1, &["log.segment.bytes=536870912"]).await;
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
    // Brokers learn of a new topic from the metadata log a moment after the controllers
    // answered the create (as in Kafka): list until it shows.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (ok, out, _) = rill(&cluster, &["topic", "list"]);
        if ok && out.lines().any(|l| l == "orders") {
            break;
        }
        assert!(Instant::now() < deadline, "orders never listed: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
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
    // An unknown name is refused naming every accepted one (replication configs included).
    let (ok, _, err) = rill(
        &cluster,
        &[
            "topic",
            "alter-config",
            "orders",
            "--set",
            "retention.hours=1",
        ],
    );
    assert!(!ok && err.contains("INVALID_CONFIG"), "{err}");
    for name in [
        "retention.ms",
        "min.insync.replicas",
        "unclean.leader.election.enable",
    ] {
        assert!(err.contains(name), "{name} not listed: {err}");
    }
    // --all-configs shows every config as the brokers apply it: overrides, the broker's own
    // defaults (its `log.*` properties) and the built-in ones.
    let (ok, out, err) = rill(&cluster, &["topic", "describe", "orders", "--all-configs"]);
    assert!(ok, "{err}");
    for line in [
        "\tConfig: retention.ms=60000\toverride",
        "\tConfig: segment.bytes=536870912\tbroker default",
        "\tConfig: min.insync.replicas=1\tdefault",
        "\tConfig: unclean.leader.election.enable=false\tdefault",
    ] {
        assert!(out.contains(line), "{line:?} missing: {out}");
    }

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

/// Flags that cannot mean anything are refused before any connection, naming the flag.
#[test]
fn meaningless_flags_are_refused_naming_them() {
    let bootstrap = format!("127.0.0.1:{}", free_port());
    for (args, flag) in [
        (
            &["consume", "t", "--max-messages", "0"][..],
            "--max-messages",
        ),
        (&["consume", "t", "--offset=-5"][..], "--offset"),
        (
            &["consume", "t", "--offset", "3", "--from-beginning"][..],
            "--from-beginning",
        ),
        (
            &["perf", "workload", "--max-rate", "1000"][..],
            "--max-rate",
        ),
        (&["perf", "workload", "--drain-secs=-1"][..], "drain_secs"),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_rill"))
            .args(["--bootstrap", &bootstrap])
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "{args:?} succeeded");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{args:?}: {err}");
        assert!(err.contains(flag), "{args:?}: {err}");
    }
}

#[test]
fn a_bootstrap_failure_names_the_addresses_tried() {
    let (a, b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let out = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["--bootstrap", &format!("{a},{b}"), "topic", "list"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&a) && err.contains(&b), "{err}");
}

/// Runs `rill` with `stdin`, killing it after `limit`: (success, stdout, stderr, how long it
/// ran). A command still running at `limit` fails the test.
fn rill_within(
    bootstrap: &str,
    args: &[&str],
    stdin: &[u8],
    limit: Duration,
) -> (bool, String, String, Duration) {
    let started = Instant::now();
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
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("`rill {}` still ran after {limit:?}", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_does_not_exist_is_an_immediate_plain_error() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let bootstrap = cluster.bootstrap().join(",");
    let limit = Duration::from_secs(20);
    for args in [
        &["produce", "nosuch"][..],
        &[
            "consume",
            "nosuch",
            "--from-beginning",
            "--timeout-ms",
            "2000",
        ][..],
        &["consume", "nosuch", "--from-beginning"][..],
    ] {
        let (ok, _, err, _) = rill_within(&bootstrap, args, b"x\n", limit);
        assert!(!ok, "{args:?}");
        assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
        assert!(
            err.contains("UNKNOWN_TOPIC_OR_PARTITION")
                && err.contains("topic nosuch does not exist")
                && err.contains("create it with `rill topic create nosuch`"),
            "{args:?}: {err}"
        );
    }
    // A topic created a moment ago is not mistaken for a missing one.
    let (ok, _, err, _) = rill_within(&bootstrap, &["topic", "create", "fresh"], b"", limit);
    assert!(ok, "{err}");
    let (ok, _, err, _) = rill_within(&bootstrap, &["produce", "fresh"], b"x\n", limit);
    assert!(ok, "{err}");

    // The binaries log to stderr (the harness keeps it in stderr.log), without colour codes
    // when it is not a terminal.
    for node in cluster.brokers.iter().chain(&cluster.controllers) {
        let log = std::fs::read_to_string(node.dir.join("stderr.log")).unwrap();
        assert!(log.contains("INFO"), "{}: {log:?}", node.dir.display());
        assert!(!log.contains('\x1b'), "{}: {log:?}", node.dir.display());
    }
}

#[test]
fn timeout_ms_ends_consume_even_when_the_cluster_never_answers() {
    // Accepts connections (the kernel completes them) but never answers a request.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let bootstrap = silent.local_addr().unwrap().to_string();
    let (_, _, err, took) = rill_within(
        &bootstrap,
        &["consume", "t", "--timeout-ms", "1000"],
        b"",
        Duration::from_secs(15),
    );
    assert!(took < Duration::from_secs(10), "took {took:?}: {err}");
    assert!(err.contains("--timeout-ms"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn null_marker_writes_tombstones_and_consume_shows_nulls() {
    let cluster = Cluster::start(1, 1, &[]).await;
    let bootstrap = cluster.bootstrap().join(",");
    let limit = Duration::from_secs(30);
    let (ok, _, err, _) = rill_within(
        &bootstrap,
        &[
            "topic",
            "create",
            "users",
            "-p",
            "1",
            "-c",
            "cleanup.policy=compact",
        ],
        b"",
        limit,
    );
    assert!(ok, "{err}");
    // A compacted topic needs keys; the null value is the tombstone that deletes alice.
    let (ok, _, err, _) = rill_within(
        &bootstrap,
        &[
            "produce",
            "users",
            "--key-separator",
            ":",
            "--null-marker",
            "NULL",
        ],
        b"alice:1\nbob:2\nalice:NULL\nbob:null\n",
        limit,
    );
    assert!(ok, "{err}");
    let (ok, _, err, _) = rill_within(
        &bootstrap,
        &["topic", "create", "notes", "-p", "1"],
        b"",
        limit,
    );
    assert!(ok, "{err}");
    let (ok, _, err, _) = rill_within(
        &bootstrap,
        &[
            "produce",
            "notes",
            "--key-separator",
            ":",
            "--null-marker",
            "NULL",
        ],
        b"NULL:keyless\n",
        limit,
    );
    assert!(ok, "{err}");
    let consume = |topic: &str, n: &str, extra: &[&str]| {
        let mut args = vec![
            "consume",
            topic,
            "--from-beginning",
            "--print-key",
            "--max-messages",
            n,
            "--timeout-ms",
            "15000",
        ];
        args.extend_from_slice(extra);
        let (ok, out, err, _) = rill_within(&bootstrap, &args, b"", limit);
        assert!(ok, "{err}");
        out
    };
    // A null prints as <null>; the text "null" stays text.
    assert_eq!(
        consume("users", "4", &[]).lines().collect::<Vec<_>>(),
        ["alice\t1", "bob\t2", "alice\t<null>", "bob\tnull"]
    );
    assert_eq!(consume("notes", "1", &[]), "<null>\tkeyless\n");
    // With the producer's marker, the output reads back as the input.
    assert_eq!(
        consume("users", "4", &["--null-marker", "NULL"])
            .lines()
            .collect::<Vec<_>>(),
        ["alice\t1", "bob\t2", "alice\tNULL", "bob\tnull"]
    );
}
