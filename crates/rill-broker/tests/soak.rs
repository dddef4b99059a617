//! A soak run with faults: 3 controllers and 3 brokers, a producer writing without pause, and
//! every few seconds a broker or a controller killed with SIGKILL and restarted. At the end every
//! acknowledged record must be readable. Ignored in the normal test run; run it with
//! `cargo xtask soak --minutes N` (RILL_SOAK_SECS sets the length; default 60 s).

mod common;

use std::time::{Duration, Instant};

use common::*;
use rill_consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long-running; `cargo xtask soak`"]
async fn soak_with_process_kills_loses_no_acknowledged_record() {
    let secs: u64 = std::env::var("RILL_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let mut cluster = Cluster::start(3, 3, &[]).await;
    cluster.create_topic("soak", 6, 1, &[]).await;
    let bootstrap = cluster.bootstrap();
    let stop_at = Instant::now() + Duration::from_secs(secs);
    let writer = tokio::spawn(async move {
        let producer = Producer::new(ProducerConfig {
            bootstrap,
            acks: -1,
            delivery_timeout: Duration::from_secs(30),
            ..Default::default()
        })
        .unwrap();
        let mut pending = std::collections::VecDeque::new();
        let (mut acked, mut failed) = (Vec::new(), 0u64);
        let mut i = 0u64;
        while Instant::now() < stop_at {
            if let Ok(f) = producer
                .send(ProducerRecord::new(
                    "soak",
                    Some(format!("k{}", i % 101)),
                    format!("v{i}"),
                ))
                .await
            {
                pending.push_back(f);
            }
            i += 1;
            while pending.len() > 5000 {
                match pending.pop_front().unwrap().await {
                    Ok(md) => acked.push(md),
                    Err(_) => failed += 1,
                }
            }
        }
        for f in pending {
            match f.await {
                Ok(md) => acked.push(md),
                Err(_) => failed += 1,
            }
        }
        (acked, failed)
    });
    let mut round = 0usize;
    while Instant::now() + Duration::from_secs(8) < stop_at {
        tokio::time::sleep(Duration::from_secs(4)).await;
        if round % 3 == 2 {
            let c = round % cluster.controllers.len();
            eprintln!("soak: killing controller {}", c + 1);
            cluster.kill_controller(c);
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.start_controller(c);
        } else {
            let b = round % cluster.brokers.len();
            eprintln!("soak: killing broker {}", b + 1);
            cluster.kill_broker(b);
            tokio::time::sleep(Duration::from_secs(1)).await;
            cluster.start_broker(b);
        }
        round += 1;
    }
    let (acked, failed) = writer.await.unwrap();
    eprintln!(
        "soak: {} records acknowledged, {failed} not delivered, {round} kills",
        acked.len()
    );
    cluster.wait_healthy().await;
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        auto_offset_reset: OffsetReset::Earliest,
        ..Default::default()
    })
    .unwrap();
    let tps = consumer.partitions_of("soak").await.unwrap();
    consumer.assign(tps.clone());
    consumer.seek_to_beginning(&tps).await.unwrap();
    let mut got = std::collections::HashSet::new();
    let mut idle = 0;
    while idle < 5 {
        let batch = consumer.poll(Duration::from_secs(1)).await.unwrap();
        if batch.is_empty() {
            idle += 1;
        } else {
            idle = 0;
        }
        got.extend(batch.iter().map(|r| (r.partition, r.offset)));
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|md| !got.contains(&(md.partition, md.offset)))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        lost.len(),
        lost.first()
    );
}
