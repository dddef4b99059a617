//! Fetching against real `rill-controller` and `rill-broker` processes.

#[path = "../../rill-broker/tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::Cluster;
use rill_consumer::{Consumer, ConsumerConfig, OffsetReset, TopicPartition};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};

/// A consumer reading several partitions of one broker gets new records of the partition it
/// just received from without waiting out `fetch.max.wait.ms`: the next fetch, started as
/// `poll` returns, includes that partition (it used to start while the records were still
/// buffered, leave their partition out, and wait the full `fetch.max.wait.ms` on the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn new_records_of_a_partition_just_read_arrive_without_waiting_out_the_fetch_wait() {
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("two", 2, 1, &[]).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        linger: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    let send = |i: usize| {
        let mut r = ProducerRecord::new("two", None::<String>, format!("v{i}"));
        r.partition = Some(0);
        let producer = &producer;
        async move { producer.send(r).await.unwrap().await.unwrap() }
    };
    let fetch_wait = Duration::from_secs(5);
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        auto_offset_reset: OffsetReset::Earliest,
        fetch_max_wait: fetch_wait,
        ..Default::default()
    })
    .unwrap();
    consumer.assign([TopicPartition::new("two", 0), TopicPartition::new("two", 1)]);
    send(0).await;
    let mut got = 0;
    let until = Instant::now() + Duration::from_secs(30);
    while got == 0 && Instant::now() < until {
        got += consumer.poll(Duration::from_secs(1)).await.unwrap().len();
    }
    assert_eq!(got, 1, "the first record");
    for i in 1..4 {
        send(i).await;
        let sent = Instant::now();
        let mut records = Vec::new();
        while records.is_empty() && sent.elapsed() < fetch_wait * 3 {
            records = consumer.poll(Duration::from_secs(1)).await.unwrap();
        }
        assert_eq!(records.len(), 1, "record {i}");
        // Well under the 5 s fetch wait: the fetch that returns it was already waiting on
        // partition 0 when it was written.
        assert!(
            sent.elapsed() < fetch_wait / 2,
            "record {i} took {:?} (fetch.max.wait.ms = {fetch_wait:?})",
            sent.elapsed()
        );
    }
    producer.close().await;
    consumer.close().await.unwrap();
}
