//! Metadata commit latency and CreateTopics throughput of a 3-voter quorum (real processes,
//! fsync on), against the latency of one fsync on the same disk measured in the same run:
//! `cargo bench -p rill-controller --bench quorum`.

#[path = "../tests/common/mod.rs"]
mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use rill_protocol::proto::*;

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn report(name: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{name:<44} p50 {:>8.2} ms   p99 {:>8.2} ms   max {:>8.2} ms   ({} samples)",
        percentile(&samples, 0.5).as_secs_f64() * 1e3,
        percentile(&samples, 0.99).as_secs_f64() * 1e3,
        samples.last().unwrap().as_secs_f64() * 1e3,
        samples.len()
    );
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // The limit: one small write + fdatasync on this disk.
    let dir = tempfile::tempdir().unwrap();
    let mut f = std::fs::File::create(dir.path().join("probe")).unwrap();
    let fsyncs: Vec<Duration> = (0..300)
        .map(|_| {
            let t = Instant::now();
            f.write_all(&[7u8; 512]).unwrap();
            f.sync_data().unwrap();
            t.elapsed()
        })
        .collect();
    report("fsync (512 B append + fdatasync)", fsyncs);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let q = Quorum::start(3, &["broker.session.timeout.ms=60000"]);
        let leader = q.leader(Duration::from_secs(15)).await;
        let _b = FakeBroker::start(&q, 1).await;
        let client = q.client(leader).await;
        // Warm up.
        for i in 0..20 {
            create(&q, leader, vec![topic(&format!("warm-{i}"), 1, 1)]).await;
        }
        // Sequential: each CreateTopics commits 2 records (topic + partition) through the quorum.
        let mut latencies = Vec::new();
        for i in 0..300 {
            let mut c = client.clone();
            let t = Instant::now();
            let r = c
                .create_topics(CreateTopicsRequest {
                    topics: vec![topic(&format!("seq-{i}"), 1, 1)],
                    validate_only: false,
                })
                .await
                .unwrap()
                .into_inner();
            latencies.push(t.elapsed());
            assert_eq!(r.topics[0].error_code, 0);
        }
        report("CreateTopics commit latency, sequential", latencies);

        // Concurrent: 32 clients for 5 s.
        let start = Instant::now();
        let run_for = Duration::from_secs(5);
        let mut tasks = Vec::new();
        for w in 0..32 {
            let mut c = client.clone();
            tasks.push(tokio::spawn(async move {
                let mut lat = Vec::new();
                let mut i = 0;
                while start.elapsed() < run_for {
                    let t = Instant::now();
                    let r = c
                        .create_topics(CreateTopicsRequest {
                            topics: vec![topic(&format!("c{w}-{i}"), 1, 1)],
                            validate_only: false,
                        })
                        .await;
                    if r.is_ok() {
                        lat.push(t.elapsed());
                    }
                    i += 1;
                }
                lat
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let elapsed = start.elapsed().as_secs_f64();
        println!(
            "CreateTopics throughput, 32 concurrent clients: {:.0} topics/s ({} in {:.1} s)",
            all.len() as f64 / elapsed,
            all.len(),
            elapsed
        );
        report("CreateTopics latency, 32 concurrent clients", all);
    });
}
