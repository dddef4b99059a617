//! `rill perf workload` and `rill perf plot` against a real cluster: short, slow workloads (a
//! consumer group sweep from flags, assigned consumers from a TOML file) whose JSON must add
//! up — every acknowledged record consumed by every subscription, nothing failed, latencies
//! positive and ordered — and a plot of both that is an SVG. No assertion on speed.

#[path = "../../rill-broker/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use serde_json::Value;

const GROUP_OVERRIDES: &[&str] = &[
    "offsets.topic.num.partitions=3",
    "group.consumer.heartbeat.interval.ms=200",
];

fn rill(bootstrap: &str, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_rill"))
        .args(["--bootstrap", bootstrap])
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn read_json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn ordered_latencies(what: &str, p: &Value) {
    let get = |k: &str| {
        p[k].as_f64()
            .unwrap_or_else(|| panic!("{what}: no {k} in {p}"))
    };
    assert!(p["count"].as_u64().unwrap() > 0, "{what}: no samples: {p}");
    assert!(get("p50") > 0.0, "{what}: {p}");
    assert!(
        get("p50") <= get("p99") && get("p99") <= get("p999") && get("p999") <= get("max"),
        "{what}: percentiles out of order: {p}"
    );
}

/// Every run of a results file: counts add up, latencies are sane.
fn check_runs(results: &Value, subscriptions: u64, test_intervals: usize) {
    let runs = results["runs"].as_array().unwrap();
    assert!(!runs.is_empty());
    for run in runs {
        let n = |k: &str| run[k].as_u64().unwrap_or_else(|| panic!("no {k} in run"));
        assert_eq!(n("records_failed"), 0, "{}", run["first_error"]);
        assert!(n("records_acked") > 0);
        assert_eq!(n("records_sent"), n("records_acked"));
        assert_eq!(n("records_expected"), n("records_acked") * subscriptions);
        assert_eq!(
            n("records_consumed"),
            n("records_expected"),
            "every subscription received every acknowledged record once"
        );
        assert_eq!(run["backlog_after_drain"].as_i64(), Some(0));
        assert!(run["publish_rate"].as_f64().unwrap() > 0.0);
        assert!(run["consume_rate"].as_f64().unwrap() > 0.0);
        ordered_latencies("publish", &run["publish_latency_ms"]);
        ordered_latencies("end-to-end", &run["e2e_latency_ms"]);
        assert!(n("records_scheduled") >= n("records_sent"));
        let intervals = run["intervals"].as_array().unwrap();
        assert!(
            intervals
                .iter()
                .all(|i| i["backlog"].as_i64().unwrap() >= 0)
        );
        let phase = |p: &str| intervals.iter().filter(|i| i["phase"] == p).count();
        assert_eq!(phase("warmup"), 1, "{intervals:?}");
        assert_eq!(phase("test"), test_intervals, "{intervals:?}");
        assert_eq!(phase("drain"), 1, "{intervals:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workload_reports_what_it_sent_and_received_and_plots_it() {
    let cluster = Cluster::start(1, 1, GROUP_OVERRIDES).await;
    let bootstrap = cluster.bootstrap().join(",");
    let dir = tempfile::tempdir().unwrap();

    // A consumer group per subscription (two subscriptions of two members), two producers,
    // a sweep of two rates of a given max rate.
    let grouped = dir.path().join("grouped.json");
    let (ok, out, err) = rill(
        &bootstrap,
        &[
            "perf",
            "workload",
            "--name",
            "grouped",
            "--partitions",
            "4",
            "--producers",
            "2",
            "--subscriptions",
            "2",
            "--consumers",
            "2",
            "--record-size",
            "100",
            "--warmup-secs",
            "1",
            "--test-secs",
            "2",
            "--interval-secs",
            "1",
            "--max-rate",
            "400",
            "--sweep",
            "50,100",
            "--json",
            grouped.to_str().unwrap(),
        ],
    );
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    println!("{out}");
    assert!(out.contains("end-to-end"), "{out}");
    let results = read_json(&grouped);
    assert_eq!(results["workload"]["consumer_mode"], "group");
    assert_eq!(results["max_rate"].as_f64(), Some(400.0));
    let runs = results["runs"].as_array().unwrap();
    assert_eq!(runs.len(), 2);
    assert_eq!(runs[0]["target_rate"].as_f64(), Some(200.0));
    assert_eq!(runs[1]["percent_of_max"].as_f64(), Some(100.0));
    check_runs(&results, 2, 2);

    // Assigned consumers, from a workload file with a flag overriding it.
    let file = dir.path().join("assigned.toml");
    std::fs::write(
        &file,
        r#"
name = "assigned"
topics = 2
partitions_per_topic = 3
producers_per_topic = 1
consumers_per_subscription = 2
consumer_mode = "assign"
record_size = 64
producer_rate = 1000.0
warmup_secs = 1
test_secs = 3
interval_secs = 1
acks = "1"
linger_ms = 1
"#,
    )
    .unwrap();
    let assigned = dir.path().join("assigned.json");
    let (ok, out, err) = rill(
        &bootstrap,
        &[
            "perf",
            "workload",
            file.to_str().unwrap(),
            "--rate",
            "300",
            "--json",
            assigned.to_str().unwrap(),
        ],
    );
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    let results = read_json(&assigned);
    assert_eq!(results["workload"]["producer_rate"].as_f64(), Some(300.0));
    assert_eq!(results["workload"]["topics"].as_u64(), Some(2));
    assert_eq!(results["runs"].as_array().unwrap().len(), 1);
    check_runs(&results, 1, 3);

    // A key the file format does not know is an error, not silently ignored.
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "producer_rates = 10\n").unwrap();
    let (ok, _, err) = rill(&bootstrap, &["perf", "workload", bad.to_str().unwrap()]);
    assert!(!ok && err.contains("producer_rates"), "{err}");

    // The plot of both files: an SVG with a line per file and percentile in each panel.
    let svg = dir.path().join("latency.svg");
    let (ok, out, err) = rill(
        &bootstrap,
        &[
            "perf",
            "plot",
            grouped.to_str().unwrap(),
            assigned.to_str().unwrap(),
            "--out",
            svg.to_str().unwrap(),
        ],
    );
    assert!(ok, "stdout:\n{out}\nstderr:\n{err}");
    let text = std::fs::read_to_string(&svg).unwrap();
    if let Ok(keep) = std::env::var("RILL_TEST_KEEP_SVG") {
        std::fs::write(keep, &text).unwrap();
    }
    assert!(text.trim_start().starts_with("<svg"), "{}", &text[..200]);
    assert!(text.trim_end().ends_with("</svg>"));
    assert!(text.contains("end-to-end latency"), "panel caption missing");
    assert!(text.contains("grouped p99") && text.contains("assigned p999"));
    // 2 panels × 2 files × 3 percentiles; the legend draws one more path per line.
    assert!(text.matches("<polyline").count() >= 12, "lines missing");
}
