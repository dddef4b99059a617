//! The first end-to-end path with real processes: produce, consume, long-poll, errors,
//! crash safety, retention and compaction through the broker.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use rill_consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};
use rill_protocol::ErrorCode;
use rill_protocol::proto::*;
use rill_protocol::record_batch::{Compression, RecordBatchBuilder};

/// Keys and the partition Kafka's default partitioner gives them among 6 (independent vectors).
fn reference_keys() -> Vec<(Vec<u8>, i32)> {
    include_str!("../../rill-producer/testdata/murmur2.tsv")
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split('\t').collect();
            (hex::decode(c[0]).unwrap(), c[2].parse().unwrap())
        })
        .collect()
}

async fn consume_all(
    bootstrap: &[String],
    topic: &str,
    expected: usize,
) -> Vec<rill_consumer::ConsumerRecord> {
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_vec(),
        auto_offset_reset: OffsetReset::Earliest,
        ..Default::default()
    })
    .unwrap();
    let tps = consumer.partitions_of(topic).await.unwrap();
    consumer.assign(tps);
    let mut out = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while out.len() < expected && Instant::now() < deadline {
        out.extend(consumer.poll(Duration::from_millis(500)).await.unwrap());
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_thousand_keyed_records_round_trip_in_order_on_kafka_partitions() {
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("orders", 6, 1, &[]).await;
    let keys = reference_keys();
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        linger: Duration::from_millis(10),
        compression: Compression::Lz4,
        ..Default::default()
    })
    .unwrap();
    const N: usize = 100_000;
    let mut pending = Vec::with_capacity(N);
    for i in 0..N {
        let (key, _) = &keys[i % keys.len()];
        let record = ProducerRecord::new(
            "orders",
            Some(Bytes::from(key.clone())),
            Bytes::from(i.to_string()),
        );
        pending.push(producer.send(record).await.unwrap());
    }
    for (i, f) in pending.into_iter().enumerate() {
        let md = f.await.unwrap();
        assert_eq!(
            md.partition,
            keys[i % keys.len()].1,
            "record {i}: murmur2 partition differs from Kafka's"
        );
    }
    producer.close().await;

    let records = consume_all(&cluster.bootstrap(), "orders", N).await;
    assert_eq!(records.len(), N);
    let expected: HashMap<Vec<u8>, i32> = keys.into_iter().collect();
    let mut last_seq: HashMap<i32, i64> = HashMap::new();
    let mut last_offset: HashMap<i32, i64> = HashMap::new();
    for r in &records {
        let key = r.key.as_ref().unwrap().to_vec();
        assert_eq!(
            expected[&key], r.partition,
            "same key, same (Kafka) partition"
        );
        let seq: i64 = std::str::from_utf8(r.value.as_ref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert!(
            seq > *last_seq.get(&r.partition).unwrap_or(&-1),
            "per-partition order kept"
        );
        assert!(r.offset > *last_offset.get(&r.partition).unwrap_or(&-1));
        last_seq.insert(r.partition, seq);
        last_offset.insert(r.partition, r.offset);
    }
}

/// `send_with_callback` (Kafka's `send(record, callback)`): every callback runs exactly once,
/// in send order within a partition, with the offset the record really has; a panicking
/// callback does not stop the others; `flush` returns only after the callbacks ran; a record
/// refused by `send_with_callback` itself never calls its callback.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callbacks_report_each_record_once_in_partition_order_with_its_offset() {
    use std::sync::{Arc, Mutex};
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("callbacks", 3, 1, &[]).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: -1,
        max_request_size: 64 << 10,
        ..Default::default()
    })
    .unwrap();
    const N: usize = 3_000;
    // (value, partition, offset) in the order the callbacks ran.
    let seen: Arc<Mutex<Vec<(usize, i32, i64)>>> = Arc::default();
    for i in 0..N {
        let key = Bytes::from(format!("key-{}", i % 17));
        let seen = Arc::clone(&seen);
        producer
            .send_with_callback(
                ProducerRecord::new("callbacks", Some(key), Bytes::from(i.to_string())),
                move |r| {
                    let md = r.expect("every record is acknowledged");
                    seen.lock().unwrap().push((i, md.partition, md.offset));
                    if i == 10 {
                        panic!("a callback that panics (on purpose)");
                    }
                },
            )
            .await
            .unwrap();
    }
    let called = Arc::new(Mutex::new(false));
    let c = Arc::clone(&called);
    let too_large = producer
        .send_with_callback(
            ProducerRecord::new(
                "callbacks",
                None::<Bytes>,
                Bytes::from(vec![0u8; 128 << 10]),
            ),
            move |_| *c.lock().unwrap() = true,
        )
        .await;
    assert!(
        too_large.is_err(),
        "a record over max.request.size is refused"
    );
    producer.flush().await;
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen.len(),
        N,
        "flush returns after every callback ran, each once"
    );
    assert!(
        !*called.lock().unwrap(),
        "a refused record's callback is never called"
    );
    let mut values: Vec<usize> = seen.iter().map(|s| s.0).collect();
    values.sort_unstable();
    values.dedup();
    assert_eq!(values.len(), N);
    let mut last: HashMap<i32, (usize, i64)> = HashMap::new();
    for &(i, p, offset) in &seen {
        if let Some(&(pi, po)) = last.get(&p) {
            assert!(
                i > pi && offset > po,
                "partition {p}: callbacks in send order"
            );
        }
        last.insert(p, (i, offset));
    }
    producer.close().await;
    let at: HashMap<(i32, i64), usize> = seen.iter().map(|&(i, p, o)| ((p, o), i)).collect();
    let records = consume_all(&cluster.bootstrap(), "callbacks", N).await;
    assert_eq!(records.len(), N);
    for r in &records {
        let value: usize = std::str::from_utf8(r.value.as_ref().unwrap())
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            at.get(&(r.partition, r.offset)),
            Some(&value),
            "the callback's offset is where the record is"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_fetch_returns_right_after_a_produce() {
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("events", 1, 1, &[]).await;
    let client = cluster.client();
    let mut broker = client
        .broker(client.partitions("events").await.unwrap()[0].leader)
        .unwrap();
    let fetch = tokio::spawn(async move {
        let started = Instant::now();
        let r = broker
            .fetch(FetchRequest {
                replica_id: -1,
                replica_epoch: -1,
                max_wait_ms: 10_000,
                min_bytes: 1,
                max_bytes: 1 << 20,
                topics: vec![FetchTopic {
                    name: "events".into(),
                    partitions: vec![FetchPartition {
                        index: 0,
                        current_leader_epoch: None,
                        fetch_offset: 0,
                        partition_max_bytes: 1 << 20,
                        last_fetched_epoch: None,
                        log_start_offset: -1,
                    }],
                }],
            })
            .await
            .unwrap()
            .into_inner();
        (r, Instant::now(), started)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        linger: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    producer
        .send(ProducerRecord::new("events", None::<Bytes>, "hello"))
        .await
        .unwrap()
        .await
        .unwrap();
    let acked = Instant::now();
    let (response, returned, started) = fetch.await.unwrap();
    let p = &response.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    assert!(!p.records.is_empty(), "the fetch carries the new record");
    let after_ack = returned.saturating_duration_since(acked);
    assert!(
        returned.duration_since(started) < Duration::from_secs(5),
        "the fetch waited for its timeout instead of waking"
    );
    eprintln!("long-poll returned {after_ack:?} after the produce was acknowledged");
    assert!(
        after_ack < Duration::from_millis(500),
        "woke {after_ack:?} after the produce"
    );
}

/// As Kafka: a fetch of no partitions (a fetch session's closing one), or with min_bytes 0,
/// is answered at once, not after max_wait_ms; and a produce refused for a batch still says
/// where the log starts (a Java producer told UNKNOWN_PRODUCER_ID decides by it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetches_that_ask_for_nothing_are_answered_at_once() {
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("quiet", 1, 1, &[]).await;
    let client = cluster.client();
    let mut broker = client
        .broker(client.partitions("quiet").await.unwrap()[0].leader)
        .unwrap();
    for (topics, min_bytes) in [(vec![], 1), (fetch_req("quiet", 0, 0).topics, 0)] {
        let started = Instant::now();
        let r = broker
            .fetch(FetchRequest {
                max_wait_ms: 5_000,
                min_bytes,
                topics,
                ..fetch_req("quiet", 0, 0)
            })
            .await
            .unwrap()
            .into_inner();
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "waited {:?} (min_bytes {min_bytes}, {} topics)",
            started.elapsed(),
            r.topics.len()
        );
    }
    let mut corrupt = {
        let mut b = RecordBatchBuilder::new(Compression::None);
        b.append(1_000, None, Some(b"x"), &[]);
        b.build().unwrap().to_vec()
    };
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let r = broker
        .produce(ProduceRequest {
            acks: 1,
            timeout_ms: 5_000,
            topics: vec![TopicProduceData {
                name: "quiet".into(),
                partitions: vec![PartitionProduceData {
                    index: 0,
                    records: corrupt.into(),
                }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    let p = &r.topics[0].partitions[0];
    assert_ne!(p.error_code, 0, "{p:?}");
    assert_eq!(p.log_start_offset, 0, "{p:?}");
}

fn fetch_req(topic: &str, partition: i32, offset: i64) -> FetchRequest {
    FetchRequest {
        replica_id: -1,
        replica_epoch: -1,
        max_wait_ms: 0,
        min_bytes: 0,
        max_bytes: 1 << 20,
        topics: vec![FetchTopic {
            name: topic.into(),
            partitions: vec![FetchPartition {
                index: partition,
                current_leader_epoch: None,
                fetch_offset: offset,
                partition_max_bytes: 1 << 20,
                last_fetched_epoch: None,
                log_start_offset: -1,
            }],
        }],
    }
}

/// `fetch_call::fetch` (the consumer's and the follower's Fetch, which reads the answer's DATA
/// frames without gathering them) decodes exactly what the generated client decodes: answers
/// whose records fit one frame, span several frames or are empty, partition errors, and an
/// error status for the whole call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fetch_call_reads_what_the_generated_client_reads() {
    let cluster = Cluster::start(1, 1, &["socket.request.max.bytes=1048576"]).await;
    cluster.create_topic("f", 3, 1, &[]).await;
    let client = cluster.client();
    let leader = client.partitions("f").await.unwrap()[0].leader;
    let mut generated = client.broker(leader).unwrap();
    let mut channel = client.broker_channel(leader).unwrap();
    // Partition p holds (p + 1) × 1.5 MiB in batches of 64 records of 2–6 KiB.
    for p in 0..3i32 {
        let mut written = 0;
        let mut n = 0usize;
        while written < ((p as usize + 1) * 3) << 19 {
            let mut builder = RecordBatchBuilder::new(Compression::None);
            for _ in 0..64 {
                n += 1;
                let value = vec![(n % 251) as u8; 2048 + (n * 37) % 4096];
                written += value.len();
                builder.append(1, Some(format!("k{n}").as_bytes()), Some(&value), &[]);
            }
            let r = generated
                .produce(ProduceRequest {
                    acks: 1,
                    timeout_ms: 5000,
                    topics: vec![TopicProduceData {
                        name: "f".into(),
                        partitions: vec![PartitionProduceData {
                            index: p,
                            records: builder.build().unwrap(),
                        }],
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.topics[0].partitions[0].error_code, 0);
        }
    }
    let request = |partition_max_bytes: i32, offset: i64| {
        let mut r = fetch_req("f", 0, offset);
        r.max_bytes = 64 << 20;
        r.topics[0].partitions = (0..4)
            .map(|index| FetchPartition {
                index,
                current_leader_epoch: None,
                fetch_offset: offset,
                partition_max_bytes,
                last_fetched_epoch: None,
                log_start_offset: -1,
            })
            .collect();
        r
    };
    // 1 KiB (one batch each), 1 MiB (one frame), 8 MiB (several frames), and an offset past
    // the end of partitions 0 and 1 (errors next to data); partition 3 does not exist.
    for (max, offset) in [(1 << 10, 0), (1 << 20, 0), (8 << 20, 0), (8 << 20, 800)] {
        let want = generated
            .fetch(request(max, offset))
            .await
            .unwrap()
            .into_inner();
        let got = rill_protocol::fetch_call::fetch(&mut channel, &request(max, offset))
            .await
            .unwrap();
        assert_eq!(got, want, "partition_max_bytes {max}, offset {offset}");
        let sizes: Vec<usize> = got.topics[0]
            .partitions
            .iter()
            .map(|p| p.records.len())
            .collect();
        assert!(sizes[..3].iter().any(|s| *s > 0), "no records: {sizes:?}");
        if max == 8 << 20 && offset == 0 {
            assert!(sizes[2] > 4 << 20, "not several frames: {sizes:?}");
        }
    }
    // A request over socket.request.max.bytes: the same refusal, with the limit named.
    let mut huge = request(1 << 20, 0);
    huge.topics[0].name = "f".repeat(2 << 20);
    let want = generated.fetch(huge.clone()).await.unwrap_err();
    let got = rill_protocol::fetch_call::fetch(&mut channel, &huge)
        .await
        .unwrap_err();
    assert_eq!((got.code(), got.message()), (want.code(), want.message()));
    assert!(got.message().contains("1048576"), "{got}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_error_is_reported_per_partition_and_the_rest_is_served() {
    let cluster = Cluster::start(
        1,
        2,
        &["message.max.bytes=2048", "socket.request.max.bytes=65536"],
    )
    .await;
    cluster.create_topic("t", 2, 1, &[]).await;
    let client = cluster.client();
    let parts = client.partitions("t").await.unwrap();
    let leader0 = parts[0].leader;
    let mut b = client.broker(leader0).unwrap();
    let good = || {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.append(1, Some(b"k"), Some(b"v"), &[]);
        builder.build().unwrap()
    };
    let mut corrupt = good().to_vec();
    let last = corrupt.len() - 1;
    corrupt[last] ^= 0xff;
    let mut big = RecordBatchBuilder::new(Compression::None);
    big.append(1, Some(b"k"), Some(&[7u8; 4000]), &[]);
    let big = big.build().unwrap();
    let other = parts
        .iter()
        .enumerate()
        .find(|(_, p)| p.leader != leader0)
        .map(|(i, _)| i as i32);
    let mut partitions = vec![PartitionProduceData {
        index: 0,
        records: Bytes::from(corrupt),
    }];
    if let Some(o) = other {
        partitions.push(PartitionProduceData {
            index: o,
            records: good(),
        });
    }
    let r = b
        .produce(ProduceRequest {
            acks: 1,
            timeout_ms: 5000,
            topics: vec![
                TopicProduceData {
                    name: "t".into(),
                    partitions,
                },
                TopicProduceData {
                    name: "nope".into(),
                    partitions: vec![PartitionProduceData {
                        index: 0,
                        records: good(),
                    }],
                },
            ],
        })
        .await
        .unwrap()
        .into_inner();
    let code =
        |t: usize, p: usize| ErrorCode::try_from(r.topics[t].partitions[p].error_code).unwrap();
    assert_eq!(
        code(0, 0),
        ErrorCode::CorruptMessage,
        "{}",
        r.topics[0].partitions[0].error_message
    );
    if other.is_some() {
        assert_eq!(code(0, 1), ErrorCode::NotLeaderOrFollower);
        assert!(r.topics[0].partitions[1].current_leader.is_some());
    }
    assert_eq!(code(1, 0), ErrorCode::UnknownTopicOrPartition);
    // Too large, then a good batch in the same request still lands.
    let r = b
        .produce(ProduceRequest {
            acks: 1,
            timeout_ms: 5000,
            topics: vec![TopicProduceData {
                name: "t".into(),
                partitions: vec![PartitionProduceData {
                    index: 0,
                    records: big,
                }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::try_from(r.topics[0].partitions[0].error_code).unwrap(),
        ErrorCode::MessageTooLarge
    );
    let r = b
        .produce(ProduceRequest {
            acks: 1,
            timeout_ms: 5000,
            topics: vec![TopicProduceData {
                name: "t".into(),
                partitions: vec![PartitionProduceData {
                    index: 0,
                    records: good(),
                }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.topics[0].partitions[0].error_code, 0);
    assert_eq!(
        r.topics[0].partitions[0].base_offset, 0,
        "rejected batches wrote nothing"
    );
    // Fetch beyond the log.
    let f = b.fetch(fetch_req("t", 0, 99)).await.unwrap().into_inner();
    assert_eq!(
        ErrorCode::try_from(f.topics[0].partitions[0].error_code).unwrap(),
        ErrorCode::OffsetOutOfRange
    );
    // A request larger than socket.request.max.bytes is refused as a whole, with the limit named.
    let huge = PartitionProduceData {
        index: 0,
        records: Bytes::from(vec![0u8; 100_000]),
    };
    let status = b
        .produce(ProduceRequest {
            acks: 1,
            timeout_ms: 5000,
            topics: vec![TopicProduceData {
                name: "t".into(),
                partitions: vec![huge],
            }],
        })
        .await
        .unwrap_err();
    assert!(status.message().contains("65536"), "{status}");
    // So is a Fetch that large (Fetch has its own route, `fetch_route`, with the same limit).
    let mut huge = fetch_req("t", 0, 0);
    huge.topics[0].name = "t".repeat(100_000);
    let status = b.fetch(huge).await.unwrap_err();
    assert!(status.message().contains("65536"), "{status}");
    // Bad acks.
    let r = b
        .produce(ProduceRequest {
            acks: 7,
            timeout_ms: 5000,
            topics: vec![TopicProduceData {
                name: "t".into(),
                partitions: vec![PartitionProduceData {
                    index: 0,
                    records: good(),
                }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        ErrorCode::try_from(r.topics[0].partitions[0].error_code).unwrap(),
        ErrorCode::InvalidRequiredAcks
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_with_sigkill_keeps_every_acknowledged_record() {
    let mut cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("durable", 3, 1, &[]).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        ..Default::default()
    })
    .unwrap();
    let mut acked = Vec::new();
    let mut pending = Vec::new();
    for i in 0..5_000 {
        pending.push(
            producer
                .send(ProducerRecord::new(
                    "durable",
                    Some(format!("k{i}")),
                    format!("v{i}"),
                ))
                .await
                .unwrap(),
        );
    }
    for f in pending {
        acked.push(f.await.unwrap());
    }
    cluster.kill_broker(0);
    drop(producer);
    cluster.start_broker(0);
    cluster.wait_healthy().await;
    let records = consume_all(&cluster.bootstrap(), "durable", acked.len()).await;
    let got: std::collections::HashSet<(i32, i64)> =
        records.iter().map(|r| (r.partition, r.offset)).collect();
    for md in &acked {
        assert!(
            got.contains(&(md.partition, md.offset)),
            "acknowledged record {md:?} lost"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_all_needs_min_insync_replicas() {
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster
        .create_topic("strict", 1, 1, &[("min.insync.replicas", "2")])
        .await;
    let send = |acks: i32| {
        let bootstrap = cluster.bootstrap();
        async move {
            let producer = Producer::new(ProducerConfig {
                bootstrap,
                acks,
                delivery_timeout: Duration::from_secs(2),
                ..Default::default()
            })
            .unwrap();
            let r = producer
                .send(ProducerRecord::new("strict", Some("k"), "v"))
                .await
                .unwrap()
                .await;
            producer.close().await;
            r
        }
    };
    let err = send(-1).await.unwrap_err().to_string();
    assert!(
        err.contains("NOT_ENOUGH_REPLICAS") && err.contains("min.insync.replicas = 2"),
        "{err}"
    );
    let ok = send(1).await.unwrap();
    assert_eq!(ok.offset, 0, "the acks=all attempts wrote nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_offsets_by_time_earliest_latest_and_max_timestamp() {
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("times", 1, 1, &[]).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        linger: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    let now = rill_now();
    for ts in [now - 3000, now - 1000, now - 2000, now - 500] {
        let mut r = ProducerRecord::new("times", None::<Bytes>, "x");
        r.timestamp = Some(ts);
        producer.send(r).await.unwrap().await.unwrap();
    }
    producer.close().await;
    let client = cluster.client();
    let b = client
        .broker(client.partitions("times").await.unwrap()[0].leader)
        .unwrap();
    let lookup = |ts: i64| {
        let req = ListOffsetsRequest {
            replica_id: None,
            topics: vec![ListOffsetsTopic {
                name: "times".into(),
                partitions: vec![ListOffsetsPartition {
                    index: 0,
                    current_leader_epoch: None,
                    timestamp: ts,
                }],
            }],
        };
        let mut b = b.clone();
        async move { b.list_offsets(req).await.unwrap().into_inner().topics[0].partitions[0].clone() }
    };
    assert_eq!(lookup(-2).await.offset, 0);
    assert_eq!(lookup(-1).await.offset, 4);
    let max = lookup(-3).await;
    assert_eq!((max.offset, max.timestamp), (3, now - 500));
    let by_time = lookup(now - 1500).await;
    assert_eq!((by_time.offset, by_time.timestamp), (1, now - 1000));
    assert_eq!(lookup(now).await.offset, -1, "no record that new");
    assert_eq!(
        lookup(-7).await.error_code,
        ErrorCode::InvalidRequest as i32
    );

    // Each answer carries the epoch of the leader that wrote the batch found, not the current
    // one: after a restart (a new leader epoch) the old records still report the old epoch.
    let first_epoch = lookup(-2).await.leader_epoch;
    assert!(first_epoch >= 0);
    let mut cluster = cluster;
    cluster.kill_broker(0);
    cluster.start_broker(0);
    cluster.wait_healthy().await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while lookup(-1).await.error_code != 0 {
        assert!(Instant::now() < deadline, "partition not back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        ..Default::default()
    })
    .unwrap();
    producer
        .send(ProducerRecord::new("times", None::<Bytes>, "y"))
        .await
        .unwrap()
        .await
        .unwrap();
    producer.close().await;
    let latest = lookup(-1).await;
    assert_eq!(latest.offset, 5);
    assert!(
        latest.leader_epoch > first_epoch,
        "a restart starts a new leader epoch"
    );
    assert_eq!(lookup(-2).await.leader_epoch, first_epoch);
    assert_eq!(lookup(now - 1500).await.leader_epoch, first_epoch);

    // A client naming a stale or future leader epoch is told so.
    let with_epoch = |epoch: i32| {
        let req = ListOffsetsRequest {
            replica_id: None,
            topics: vec![ListOffsetsTopic {
                name: "times".into(),
                partitions: vec![ListOffsetsPartition {
                    index: 0,
                    current_leader_epoch: Some(epoch),
                    timestamp: -1,
                }],
            }],
        };
        let mut b = b.clone();
        async move { b.list_offsets(req).await.unwrap().into_inner().topics[0].partitions[0].clone() }
    };
    assert_eq!(
        with_epoch(first_epoch).await.error_code,
        ErrorCode::FencedLeaderEpoch as i32
    );
    assert_eq!(
        with_epoch(latest.leader_epoch + 1).await.error_code,
        ErrorCode::UnknownLeaderEpoch as i32
    );
    assert_eq!(with_epoch(latest.leader_epoch).await.error_code, 0);
    assert_eq!(with_epoch(-1).await.error_code, 0, "-1: no check");
    // Only consumers' lookups are served: a replica id is refused, not ignored.
    let as_replica = ListOffsetsRequest {
        replica_id: Some(1),
        topics: vec![ListOffsetsTopic {
            name: "times".into(),
            partitions: vec![ListOffsetsPartition {
                index: 0,
                current_leader_epoch: None,
                timestamp: -1,
            }],
        }],
    };
    let mut as_consumer = as_replica.clone();
    as_consumer.replica_id = Some(-1);
    let answer = b
        .clone()
        .list_offsets(as_consumer)
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.topics[0].partitions[0].offset, 5,
        "-1, as unset: a consumer"
    );
    let refused = b.clone().list_offsets(as_replica).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    assert!(refused.message().contains("replica_id 1"), "{refused:?}");

    // Fetch is fenced the same way. A client that leaves the epoch unset is not checked: a
    // generated client in another language that does not track epochs sends nothing (proto3's
    // 0), and must not be told its epoch 0 is stale after every leader change.
    let fetch = |epoch: Option<i32>| {
        let mut req = fetch_req("times", 0, 0);
        req.topics[0].partitions[0].current_leader_epoch = epoch;
        let mut b = b.clone();
        async move { b.fetch(req).await.unwrap().into_inner().topics[0].partitions[0].clone() }
    };
    let unset = fetch(None).await;
    assert_eq!(unset.error_code, 0, "{unset:?}");
    assert!(!unset.records.is_empty());
    // The epoch a client fences with is Metadata's (what rill's consumer sends).
    client.invalidate("times");
    let from_metadata = client.partitions("times").await.unwrap()[0].epoch;
    assert_eq!(from_metadata, latest.leader_epoch);
    let current = fetch(Some(from_metadata)).await;
    assert_eq!(
        (current.error_code, current.records.len()),
        (0, unset.records.len())
    );
    let stale = fetch(Some(first_epoch)).await;
    assert_eq!(
        stale.error_code,
        ErrorCode::FencedLeaderEpoch as i32,
        "{stale:?}"
    );
    assert!(stale.records.is_empty());
    assert_eq!(
        stale.current_leader.map(|l| l.leader_epoch),
        Some(latest.leader_epoch),
        "the answer names the current epoch"
    );
    let ahead = fetch(Some(latest.leader_epoch + 1)).await;
    assert_eq!(ahead.error_code, ErrorCode::UnknownLeaderEpoch as i32);
    let minus_one = fetch(Some(-1)).await;
    assert_eq!(
        (minus_one.error_code, minus_one.records.len()),
        (0, unset.records.len()),
        "-1: no check"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_max_bytes_caps_what_a_fetch_returns() {
    let cluster = Cluster::start(1, 1, &["fetch.max.bytes=2048"]).await;
    cluster.create_topic("capped", 1, 1, &[]).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        linger: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    for i in 0..50 {
        producer
            .send(ProducerRecord::new(
                "capped",
                None::<Bytes>,
                vec![b'x'; 100 + i],
            ))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let client = cluster.client();
    let mut b = client
        .broker(client.partitions("capped").await.unwrap()[0].leader)
        .unwrap();
    let r = b
        .fetch(fetch_req("capped", 0, 0))
        .await
        .unwrap()
        .into_inner();
    let records = &r.topics[0].partitions[0].records;
    assert!(
        !records.is_empty() && records.len() <= 2048,
        "{} bytes despite fetch.max.bytes=2048",
        records.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_endpoints() {
    let addr = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::start(1, 1, &[&format!("metrics.address={addr}")]).await;
    cluster.create_topic("m", 2, 1, &[]).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        ..Default::default()
    })
    .unwrap();
    producer
        .send(ProducerRecord::new("m", Some("k"), "v"))
        .await
        .unwrap()
        .await
        .unwrap();
    producer.close().await;
    let (status, body) = http_get(&addr, "/metrics").await;
    assert_eq!(status, 200);
    for needle in [
        "rill_broker_requests_total{rpc=\"Produce\"}",
        "rill_broker_request_duration_seconds_bucket",
        "rill_broker_request_queue_depth",
        "rill_broker_bytes_in_total",
    ] {
        assert!(body.contains(needle), "{needle} missing from /metrics");
    }
    assert!(
        !body.contains("rill_broker_bytes_in_total 0\n"),
        "bytes in were counted"
    );
    assert!(
        !body.contains("rill_broker_request_errors_total{rpc=\"Fetch\"} 1"),
        "no failed fetch yet"
    );
    // A fetch that fails (no such partition) counts as a failed request.
    let client = cluster.client();
    let leader = client.partitions("m").await.unwrap()[0].leader;
    let r = client
        .broker(leader)
        .unwrap()
        .fetch(fetch_req("m", 99, 0))
        .await
        .unwrap()
        .into_inner();
    assert_ne!(r.topics[0].partitions[0].error_code, 0);
    let (_, body) = http_get(&addr, "/metrics").await;
    assert!(
        body.contains("rill_broker_request_errors_total{rpc=\"Fetch\"} 1"),
        "the failed fetch was counted as a success"
    );
    // Every fetch pass counts where it ran (both series are there from the start).
    let passes = |body: &str| -> u64 {
        ["request_task", "blocking_thread"]
            .iter()
            .map(|on| {
                let name = format!("rill_broker_fetch_passes_total{{on=\"{on}\"}} ");
                body.lines()
                    .find_map(|l| l.strip_prefix(name.as_str()))
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .unwrap_or_else(|| panic!("{name} missing from /metrics"))
            })
            .sum()
    };
    let (_, before) = http_get(&addr, "/metrics").await;
    for p in 0..2 {
        client
            .broker(leader)
            .unwrap()
            .fetch(fetch_req("m", p, 0))
            .await
            .unwrap();
    }
    let (_, after) = http_get(&addr, "/metrics").await;
    assert!(
        passes(&after) >= passes(&before) + 2,
        "fetch passes not counted"
    );
    assert_eq!(http_get(&addr, "/health").await.0, 200);
    let md = cluster.client().refresh(&[]).await.unwrap();
    assert_eq!(md.controller_id, 1, "Metadata names the active controller");
    assert_eq!(md.controllers.len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_a_controlled_shutdown_and_exits_zero() {
    let mut cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("x", 1, 1, &[]).await;
    let status = cluster.stop_broker(0);
    assert!(status.success(), "{status}");
    assert!(
        cluster.brokers[0]
            .dir
            .join("logs/.rill_clean_shutdown")
            .exists()
    );
}

/// A log dir whose last high watermark checkpoint fails at shutdown is offline: it gets no
/// clean-shutdown marker (its logs are recovered on the next start) and the broker says so
/// in its exit status instead of "stopped cleanly".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_high_watermark_checkpoint_failing_at_shutdown_leaves_no_clean_marker() {
    // No periodic checkpoint runs in the test: only the one at shutdown.
    let mut cluster = Cluster::start(
        1,
        1,
        &["replica.high.watermark.checkpoint.interval.ms=3600000"],
    )
    .await;
    cluster.create_topic("x", 1, 1, &[]).await;
    let logs = cluster.brokers[0].dir.join("logs");
    // Unreadable, and in the way of the rename that writes it.
    std::fs::remove_file(logs.join("replication-offset-checkpoint")).ok();
    std::fs::create_dir_all(logs.join("replication-offset-checkpoint/x")).unwrap();
    let status = cluster.stop_broker(0);
    assert!(!status.success(), "{status}");
    assert!(!logs.join(".rill_clean_shutdown").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_and_compaction_are_visible_through_the_broker() {
    let cluster = Cluster::start(
        1,
        1,
        &[
            "log.retention.check.interval.ms=300",
            "log.cleaner.backoff.ms=300",
        ],
    )
    .await;
    cluster
        .create_topic(
            "short-lived",
            1,
            1,
            &[("segment.bytes", "1024"), ("retention.ms", "1000")],
        )
        .await;
    cluster
        .create_topic(
            "profiles",
            1,
            1,
            &[
                ("segment.bytes", "1024"),
                ("cleanup.policy", "compact"),
                ("min.cleanable.dirty.ratio", "0.01"),
            ],
        )
        .await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: 1,
        linger: Duration::ZERO,
        ..Default::default()
    })
    .unwrap();
    for i in 0..60 {
        let ts = rill_now() - 10_000; // already older than retention.ms
        let mut r = ProducerRecord::new("short-lived", None::<Bytes>, vec![b'x'; 200]);
        r.timestamp = Some(ts);
        producer.send(r).await.unwrap().await.unwrap();
        producer
            .send(ProducerRecord::new(
                "profiles",
                Some(format!("user-{}", i % 5)),
                format!("v{i}-padding-padding-padding"),
            ))
            .await
            .unwrap()
            .await
            .unwrap();
    }
    producer.close().await;
    let client = cluster.client();
    let leader = client.partitions("short-lived").await.unwrap()[0].leader;
    let mut b = client.broker(leader).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r = b
            .list_offsets(ListOffsetsRequest {
                replica_id: None,
                topics: vec![ListOffsetsTopic {
                    name: "short-lived".into(),
                    partitions: vec![ListOffsetsPartition {
                        index: 0,
                        current_leader_epoch: None,
                        timestamp: -2,
                    }],
                }],
            })
            .await
            .unwrap()
            .into_inner();
        let earliest = r.topics[0].partitions[0].offset;
        if earliest > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "old segments were never deleted");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let records = consume_everything(&cluster.bootstrap(), "profiles").await;
        let mut seen = HashMap::new();
        for r in &records {
            seen.insert(r.key.clone(), r.value.clone());
        }
        // The latest value of every key is always there.
        for k in 0..5 {
            let key = Some(Bytes::from(format!("user-{k}")));
            let last = 55 + k;
            assert_eq!(
                seen.get(&key).cloned().flatten(),
                Some(Bytes::from(format!("v{last}-padding-padding-padding")))
            );
        }
        if records.len() < 60 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "compaction never removed superseded values ({} records)",
            records.len()
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Everything currently in `topic`: polls until a poll comes back empty.
async fn consume_everything(
    bootstrap: &[String],
    topic: &str,
) -> Vec<rill_consumer::ConsumerRecord> {
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: bootstrap.to_vec(),
        auto_offset_reset: OffsetReset::Earliest,
        fetch_max_wait: Duration::from_millis(200),
        ..Default::default()
    })
    .unwrap();
    let tps = consumer.partitions_of(topic).await.unwrap();
    consumer.assign(tps.clone());
    consumer.seek_to_beginning(&tps).await.unwrap();
    let mut out = Vec::new();
    loop {
        let batch = consumer.poll(Duration::from_millis(1000)).await.unwrap();
        if batch.is_empty() {
            return out;
        }
        out.extend(batch);
    }
}

fn rill_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// A broker killed while producers are writing: every record acknowledged before the kill is
/// there after the restart, and the log is consistent (offsets dense, no torn batch served).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_produce_stream_loses_no_acknowledged_record() {
    let mut cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("stream", 2, 1, &[]).await;
    let bootstrap = cluster.bootstrap();
    let writer = tokio::spawn(async move {
        let producer = Producer::new(ProducerConfig {
            bootstrap,
            acks: 1,
            delivery_timeout: Duration::from_secs(1),
            request_timeout: Duration::from_secs(1),
            // Once the broker is gone, `send` fails after this instead of waiting a minute
            // for metadata (Kafka's max.block.ms).
            max_block: Duration::from_secs(2),
            ..Default::default()
        })
        .unwrap();
        let mut pending = std::collections::VecDeque::new();
        let mut acked = Vec::new();
        for i in 0..200_000u64 {
            match producer
                .send(ProducerRecord::new(
                    "stream",
                    Some(format!("k{}", i % 7)),
                    format!("v{i}"),
                ))
                .await
            {
                Ok(f) => pending.push_back(f),
                Err(_) => break,
            }
            while pending.len() > 2000 {
                match pending.pop_front().unwrap().await {
                    Ok(md) => acked.push(md),
                    Err(_) => return acked,
                }
            }
        }
        for f in pending {
            if let Ok(md) = f.await {
                acked.push(md);
            }
        }
        acked
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    cluster.kill_broker(0);
    let acked = writer.await.unwrap();
    assert!(
        !acked.is_empty(),
        "records were acknowledged before the kill"
    );
    cluster.start_broker(0);
    cluster.wait_healthy().await;
    let records = consume_everything(&cluster.bootstrap(), "stream").await;
    let got: std::collections::HashSet<(i32, i64)> =
        records.iter().map(|r| (r.partition, r.offset)).collect();
    for md in &acked {
        assert!(
            got.contains(&(md.partition, md.offset)),
            "acknowledged record {md:?} lost"
        );
    }
    for p in 0..2 {
        let offsets: Vec<i64> = records
            .iter()
            .filter(|r| r.partition == p)
            .map(|r| r.offset)
            .collect();
        assert!(
            offsets.windows(2).all(|w| w[1] == w[0] + 1),
            "partition {p} has gaps or disorder"
        );
    }
}

/// With a one-slot request queue, one I/O thread and a 1 ms queue wait, a burst of produce
/// requests meets a full queue: those callers get RESOURCE_EXHAUSTED right away instead of the
/// broker buffering without bound, and the accepted ones are all stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_request_queue_pushes_back() {
    let cluster = Cluster::start(
        1,
        1,
        &[
            "queued.max.requests=1",
            "num.io.threads=1",
            "request.timeout.ms=1",
        ],
    )
    .await;
    cluster.create_topic("burst", 1, 1, &[]).await;
    let client = cluster.client();
    let leader = client.partitions("burst").await.unwrap()[0].leader;
    let mut b = RecordBatchBuilder::new(Compression::None);
    for i in 0..64 {
        b.append(rill_now(), None, Some(&[i as u8; 1000]), &[]);
    }
    let batch = b.build().unwrap();
    let mut tasks = Vec::new();
    for _ in 0..200 {
        let mut c = client.broker(leader).unwrap();
        let records = batch.clone();
        tasks.push(tokio::spawn(async move {
            c.produce(ProduceRequest {
                acks: 1,
                timeout_ms: 1,
                topics: vec![TopicProduceData {
                    name: "burst".into(),
                    partitions: vec![PartitionProduceData { index: 0, records }],
                }],
            })
            .await
        }));
    }
    let (mut accepted, mut pushed_back) = (0i64, 0);
    for t in tasks {
        match t.await.unwrap() {
            Ok(r) => {
                assert_eq!(r.get_ref().topics[0].partitions[0].error_code, 0);
                accepted += 1;
            }
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status}");
                assert!(status.message().contains("queued.max.requests"), "{status}");
                pushed_back += 1;
            }
        }
    }
    assert!(
        pushed_back > 0,
        "no request met a full queue ({accepted} accepted)"
    );
    assert!(accepted > 0);
    let r = client
        .broker(leader)
        .unwrap()
        .list_offsets(ListOffsetsRequest {
            replica_id: None,
            topics: vec![ListOffsetsTopic {
                name: "burst".into(),
                partitions: vec![ListOffsetsPartition {
                    index: 0,
                    current_leader_epoch: None,
                    timestamp: -1,
                }],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        r.topics[0].partitions[0].offset,
        accepted * 64,
        "exactly the accepted requests were stored"
    );
}

/// Keyless records move to another partition at a batch boundary (KIP-794 with Kafka's
/// `allBatchesFull`): a burst fills whole batches, one partition after another, and leaves no
/// batch of one or two records behind at each switch (those waited `linger.ms` and went out in
/// requests of their own). Every batch on the brokers is as full as `batch.size` allows, but
/// the last one the final flush sends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyless_records_switch_partitions_at_batch_boundaries() {
    let cluster = Cluster::start(1, 1, &[]).await;
    // 1,000-byte records, and 1-byte ones: the partitioner's byte count must be the bytes
    // really appended (a record's size bound is twice the real size of a tiny record).
    for (topic, value_len, total) in [("aligned", 1000, 400), ("tiny", 1, 12_000)] {
        cluster.create_topic(topic, 4, 1, &[]).await;
        let batch_size = 16384;
        let producer = Producer::new(ProducerConfig {
            bootstrap: cluster.bootstrap(),
            // Nothing ships by linger during the test: batches ship when they are full.
            linger: Duration::from_secs(30),
            batch_size,
            ..Default::default()
        })
        .unwrap();
        let value = vec![7u8; value_len];
        let mut pending = Vec::new();
        for _ in 0..total {
            pending.push(
                producer
                    .send(ProducerRecord::new(topic, None::<Bytes>, value.clone()))
                    .await
                    .unwrap(),
            );
        }
        let mut pending = pending.into_iter();
        // The first batch filled and shipped without waiting for linger or a flush.
        tokio::time::timeout(Duration::from_secs(5), pending.next().unwrap())
            .await
            .expect("a full batch ships at once, not after linger.ms")
            .unwrap();
        producer.flush().await;
        for p in pending {
            p.await.unwrap();
        }
        let client = cluster.client();
        let mut broker = client
            .broker(client.partitions(topic).await.unwrap()[0].leader)
            .unwrap();
        // (bytes, records) of every stored batch.
        let mut batches = Vec::new();
        for partition in 0..4 {
            let mut offset = 0;
            loop {
                let r = broker
                    .fetch(fetch_req(topic, partition, offset))
                    .await
                    .unwrap()
                    .into_inner();
                let records = &r.topics[0].partitions[0].records;
                if records.is_empty() {
                    break;
                }
                for b in rill_protocol::record_batch::batches(records) {
                    let b = b.unwrap();
                    batches.push((b.as_bytes().len(), b.header().record_count));
                    offset = b.header().next_offset();
                }
            }
        }
        assert_eq!(
            batches.iter().map(|b| b.1).sum::<i32>(),
            total,
            "{topic}: every record is stored once"
        );
        // Full: the next record would not have fit (a record adds at most value + 30 bytes).
        let short = batches
            .iter()
            .filter(|(bytes, _)| bytes + value_len + 30 <= batch_size)
            .count();
        assert!(
            batches.len() > 2 && short <= 1,
            "{topic}: batches (bytes, records) {batches:?}: all but the last should be full"
        );
        producer.close().await;
    }
}

/// Partitions added to a topic are used by a producer that knew the topic before, once its
/// metadata is older than `metadata.max.age.ms` (as Kafka's clients refresh periodically),
/// without any error telling it first.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_uses_partitions_added_to_its_topic_after_metadata_max_age() {
    let cluster = Cluster::start(1, 1, &[]).await;
    cluster.create_topic("grow", 1, 1, &[]).await;
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        linger: Duration::ZERO,
        metadata_max_age: Duration::from_millis(300),
        // Keyless records move to another partition every 100 bytes (KIP-794).
        batch_size: 100,
        ..Default::default()
    })
    .unwrap();
    let send = |i: usize| {
        let producer = &producer;
        async move {
            producer
                .send(ProducerRecord::new("grow", None::<String>, format!("v{i}")))
                .await
                .unwrap()
                .await
                .unwrap()
        }
    };
    assert_eq!(send(0).await.partition, 0);
    let created = cluster
        .client()
        .admin(Duration::from_secs(10), |mut c| async move {
            c.create_partitions(CreatePartitionsRequest {
                topics: vec![CreatePartitionsTopic {
                    name: "grow".into(),
                    count: 3,
                }],
                validate_only: false,
            })
            .await
        })
        .await
        .unwrap();
    assert_eq!(created.topics[0].error_code, 0, "{:?}", created.topics[0]);
    let mut used = std::collections::BTreeSet::new();
    let until = Instant::now() + Duration::from_secs(20);
    let mut i = 1;
    while used.len() < 3 && Instant::now() < until {
        used.insert(send(i).await.partition);
        i += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        used,
        (0..3).collect(),
        "keyless records after {i} sends went to {used:?}"
    );
    producer.close().await;
}
