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

/// A partition whose next batch is larger than `max.partition.fetch.bytes` is served even while
/// another partition of the same broker always has data: a broker gives such a batch only to
/// the first partition with data in a request, so fetches list the least recently served
/// partition first (Kafka's `movePartitionToEnd`). Before, the busy partition always came
/// first and the large batch waited until its whole backlog was read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_batch_is_not_starved_by_a_busy_partition() {
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster
        .create_topic("fair", 2, 1, &[("max.message.bytes", "2000000")])
        .await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        max_request_size: 4 << 20,
        ..Default::default()
    })
    .unwrap();
    // A backlog of 16 MB on partition 0, then one 1.5 MB record on partition 1.
    let mut sent = Vec::new();
    for i in 0..16_000 {
        let mut r = ProducerRecord::new("fair", None::<String>, format!("{i:0>1000}"));
        r.partition = Some(0);
        sent.push(producer.send(r).await.unwrap());
    }
    let mut big = ProducerRecord::new("fair", None::<String>, "b".repeat(1_500_000));
    big.partition = Some(1);
    sent.push(producer.send(big).await.unwrap());
    for d in sent {
        d.await.unwrap();
    }
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        auto_offset_reset: OffsetReset::Earliest,
        max_in_flight_fetches_per_broker: 1,
        ..Default::default()
    })
    .unwrap();
    consumer.assign([
        TopicPartition::new("fair", 0),
        TopicPartition::new("fair", 1),
    ]);
    let mut busy_before_big = 0usize;
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < until, "the large record never came");
        let records = consumer.poll(Duration::from_secs(1)).await.unwrap();
        if records.iter().any(|r| r.partition == 1) {
            break;
        }
        busy_before_big += records.len();
    }
    // One or two fetches of partition 0 (about 1 MB each) before it, not the 16 MB backlog.
    assert!(
        busy_before_big < 4_000,
        "{busy_before_big} records of the busy partition came first"
    );
    producer.close().await;
    consumer.close().await.unwrap();
}

/// `poll` returns by its timeout while no broker answers a metadata lookup (here a listener
/// that takes connections and never speaks): the lookup goes on in the background, it is not
/// waited for past the poll's timeout (it used to block for the whole request timeout, 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_returns_by_its_timeout_while_no_broker_answers_metadata() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: vec![silent.local_addr().unwrap().to_string()],
        request_timeout: Duration::from_secs(30),
        ..Default::default()
    })
    .unwrap();
    let tp = TopicPartition::new("t", 0);
    consumer.assign([tp.clone()]);
    consumer.seek(&tp, 0);
    for _ in 0..3 {
        let started = Instant::now();
        let records = consumer.poll(Duration::from_millis(300)).await.unwrap();
        assert!(records.is_empty());
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "poll(300 ms) took {:?}",
            started.elapsed()
        );
    }
}
