//! The Kafka-protocol listener against a Kafka client nobody here wrote: kcat (librdkafka),
//! started by the test against real broker and controller processes. Records cross between
//! the two listeners (gRPC produce → Kafka consume and back), and malformed frames close only
//! their own connection.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use common::*;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsRequest, ApiVersionsResponse, MetadataRequest, MetadataResponse,
    RequestHeader, ResponseHeader, TopicName, metadata_request::MetadataRequestTopic,
};
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use rill_consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Runs kcat with `args` and `stdin`; its stdout. Fails the test when kcat is not installed
/// (`cargo xtask ci` installs it) or exits with an error.
fn kcat(args: &[&str], stdin: &str) -> String {
    let mut child = match Command::new("kcat")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "kcat is not installed: these tests run a real Kafka client against the broker's \
             Kafka listener. Install it (Debian: apt-get install kcat); `cargo xtask ci` does."
        ),
        Err(e) => panic!("kcat could not start: {e}"),
    };
    if let Some(mut input) = child.stdin.take() {
        input.write_all(stdin.as_bytes()).unwrap();
    }
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let output = match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(o) => o.unwrap(),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("kcat {args:?} did not finish within 60 s");
        }
    };
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "kcat {args:?} failed ({}): {}\n{stdout}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

fn kafka_addr(cluster: &Cluster) -> String {
    cluster.brokers[0].kafka_addr.clone().unwrap()
}

/// `kcat -C` from the beginning to the end of every partition, as `key:value` lines, sorted.
fn kcat_consume_all(addr: &str, topic: &str) -> Vec<String> {
    let out = kcat(
        &[
            "-C",
            "-b",
            addr,
            "-t",
            topic,
            "-e",
            "-o",
            "beginning",
            "-q",
            "-f",
            "%k:%s\n",
        ],
        "",
    );
    let mut lines: Vec<String> = out.lines().map(str::to_owned).collect();
    lines.sort();
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_lists_metadata_produces_and_consumes_keyed_messages() {
    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("kcat-orders", 3, 1, &[]).await;
    let addr = kafka_addr(&cluster);

    let listing = tokio::task::block_in_place(|| kcat(&["-L", "-b", &addr], ""));
    assert!(
        listing.contains(&format!("broker 1 at {addr}")),
        "kcat -L does not show the broker's Kafka endpoint:\n{listing}"
    );
    assert!(
        listing.contains("topic \"kcat-orders\" with 3 partitions"),
        "kcat -L does not show the topic:\n{listing}"
    );
    assert!(
        listing.contains("partition 2, leader 1, replicas: 1, isrs: 1"),
        "{listing}"
    );

    let mut expected: Vec<String> = (0..30).map(|i| format!("key-{i}:value-{i}")).collect();
    let input: String = expected.iter().map(|l| format!("{l}\n")).collect();
    tokio::task::block_in_place(|| kcat(&["-P", "-b", &addr, "-t", "kcat-orders", "-K:"], &input));
    let got = tokio::task::block_in_place(|| kcat_consume_all(&addr, "kcat-orders"));
    expected.sort();
    assert_eq!(got, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_cross_between_the_grpc_and_kafka_listeners() {
    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("crossing", 2, 1, &[]).await;
    let addr = kafka_addr(&cluster);

    // gRPC produce (rill's producer) → Kafka consume (kcat).
    let producer = Producer::new(ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: -1,
        ..Default::default()
    })
    .unwrap();
    let mut pending = Vec::new();
    for i in 0..10 {
        pending.push(
            producer
                .send(ProducerRecord::new(
                    "crossing",
                    Some(Bytes::from(format!("g{i}"))),
                    Bytes::from(format!("from-grpc-{i}")),
                ))
                .await
                .unwrap(),
        );
    }
    for p in pending {
        p.await.unwrap();
    }
    let mut from_grpc: Vec<String> = (0..10).map(|i| format!("g{i}:from-grpc-{i}")).collect();
    from_grpc.sort();
    let got = tokio::task::block_in_place(|| kcat_consume_all(&addr, "crossing"));
    assert_eq!(got, from_grpc);

    // Kafka produce (kcat) → gRPC consume (rill's consumer).
    let input: String = (0..10).map(|i| format!("k{i}:from-kafka-{i}\n")).collect();
    tokio::task::block_in_place(|| kcat(&["-P", "-b", &addr, "-t", "crossing", "-K:"], &input));
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        auto_offset_reset: OffsetReset::Earliest,
        ..Default::default()
    })
    .unwrap();
    let tps = consumer.partitions_of("crossing").await.unwrap();
    consumer.assign(tps);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < 20 && Instant::now() < deadline {
        for r in consumer.poll(Duration::from_millis(500)).await.unwrap() {
            seen.push(format!(
                "{}:{}",
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()),
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
            ));
        }
    }
    seen.sort();
    let mut expected: Vec<String> = from_grpc;
    expected.extend((0..10).map(|i| format!("k{i}:from-kafka-{i}")));
    expected.sort();
    assert_eq!(seen, expected);
}

/// A request frame: length, header, body.
fn frame<T: Encodable>(key: ApiKey, version: i16, correlation_id: i32, body: &T) -> Bytes {
    let mut buf = BytesMut::new();
    buf.put_i32(0);
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(correlation_id)
        .with_client_id(Some(StrBytes::from_static_str("malformed-test")))
        .encode(&mut buf, key.request_header_version(version))
        .unwrap();
    body.encode(&mut buf, version).unwrap();
    let len = (buf.len() - 4) as i32;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

/// Reads one response frame (after its length); `None` when the broker closed the connection.
async fn read_answer(s: &mut TcpStream) -> Option<Bytes> {
    let mut len = [0u8; 4];
    match tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut len)).await {
        Ok(Ok(_)) => {}
        Ok(Err(_)) => return None,
        Err(_) => panic!("the broker neither answered nor closed the connection"),
    }
    let mut body = vec![0u8; i32::from_be_bytes(len) as usize];
    s.read_exact(&mut body).await.ok()?;
    Some(Bytes::from(body))
}

/// Sends `bytes` on a new connection and expects the broker to close it without an answer.
async fn closes(addr: &str, bytes: &[u8], what: &str) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    // A truncated request is only known to be truncated once the client stops sending.
    let _ = s.shutdown().await;
    assert!(
        read_answer(&mut s).await.is_none(),
        "{what}: the broker answered instead of closing the connection"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_their_connection_and_the_broker_keeps_serving() {
    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("sturdy", 1, 1, &[]).await;
    let addr = kafka_addr(&cluster);

    // A connection that stays open and well-behaved throughout.
    let mut good = TcpStream::connect(&addr).await.unwrap();

    closes(&addr, b"\x00\x00\x00\x0cgarbage!!!!!", "garbage bytes").await;
    closes(&addr, &[0, 0, 0, 2, 0x7f, 0x7f], "a 2-byte header").await;
    closes(
        &addr,
        &[0, 0, 0, 10, 0x7f, 0x7f, 0, 0, 0, 0, 0, 1, 0xff, 0xff],
        "an unknown API key",
    )
    .await;
    closes(&addr, &[0x7f, 0xff, 0xff, 0xff, 0, 0], "a 2 GiB frame").await;
    closes(&addr, &[0xff, 0xff, 0xff, 0xfe], "a negative length").await;
    // A Metadata v1 request declaring 2^31-1 topics: the codec would reserve ~150 GB up front and
    // abort the process; the listener refuses the length first.
    closes(
        &addr,
        &[
            0, 0, 0, 14, 0, 3, 0, 1, 0, 0, 0, 1, 0xff, 0xff, 0x7f, 0xff, 0xff, 0xff,
        ],
        "2^31 Metadata topics in 4 bytes",
    )
    .await;
    // The same in a flexible version (compact array, varint count).
    closes(
        &addr,
        &[
            0, 0, 0, 16, 0, 3, 0, 12, 0, 0, 0, 1, 0xff, 0xff, 0, 0xff, 0xff, 0xff, 0xff, 0x07,
        ],
        "2^31 Metadata v12 topics in 5 bytes",
    )
    .await;
    let metadata = frame(
        ApiKey::Metadata,
        12,
        5,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("sturdy")))),
        ])),
    );
    closes(
        &addr,
        &metadata[..metadata.len() - 3],
        "a truncated Metadata request",
    )
    .await;
    // The body cut inside the frame (the length counts only what was sent).
    let mut cut = BytesMut::from(&metadata[..metadata.len() - 3]);
    let len = (cut.len() - 4) as i32;
    cut[..4].copy_from_slice(&len.to_be_bytes());
    closes(&addr, &cut, "a Metadata body cut short").await;

    // An ApiVersions version the broker does not know: error 35 and the versions it has.
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&frame(
        ApiKey::ApiVersions,
        4,
        9,
        &ApiVersionsRequest::default(),
    ))
    .await
    .unwrap();
    let mut answer = read_answer(&mut s).await.expect("an ApiVersions answer");
    assert_eq!(
        ResponseHeader::decode(&mut answer, 0)
            .unwrap()
            .correlation_id,
        9
    );
    let versions = ApiVersionsResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(versions.error_code, 35);
    assert!(
        versions
            .api_keys
            .iter()
            .any(|k| k.api_key == ApiKey::Produce as i16)
    );
    // Metadata v0 (readable, not answered by rill): UNSUPPORTED_VERSION, connection kept.
    s.write_all(&frame(
        ApiKey::Metadata,
        0,
        10,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default()
                .with_name(Some(TopicName(StrBytes::from_static_str("sturdy")))),
        ])),
    ))
    .await
    .unwrap();
    let mut answer = read_answer(&mut s).await.expect("a Metadata answer");
    assert_eq!(
        ResponseHeader::decode(&mut answer, 0)
            .unwrap()
            .correlation_id,
        10
    );
    let md = MetadataResponse::decode(&mut answer, 0).unwrap();
    assert_eq!(md.topics[0].error_code, 35);

    // The well-behaved connection still gets answers, in request order.
    for (cid, version) in [(1, 12), (2, 1), (3, 9)] {
        good.write_all(&frame(
            ApiKey::Metadata,
            version,
            cid,
            &MetadataRequest::default().with_topics(None),
        ))
        .await
        .unwrap();
    }
    for (cid, version) in [(1, 12), (2, 1), (3, 9)] {
        let mut answer = read_answer(&mut good).await.expect("a Metadata answer");
        let header_version = ApiKey::Metadata.response_header_version(version);
        assert_eq!(
            ResponseHeader::decode(&mut answer, header_version)
                .unwrap()
                .correlation_id,
            cid
        );
        let md = MetadataResponse::decode(&mut answer, version).unwrap();
        assert_eq!(md.brokers.len(), 1);
        assert_eq!(
            format!("{}:{}", md.brokers[0].host.as_str(), md.brokers[0].port),
            addr
        );
        assert!(
            md.topics
                .iter()
                .any(|t| t.name.as_ref().is_some_and(|n| n.0.as_str() == "sturdy"))
        );
    }
    // And a real client still works.
    let listing = tokio::task::block_in_place(|| kcat(&["-L", "-b", &addr, "-t", "sturdy"], ""));
    assert!(
        listing.contains("topic \"sturdy\" with 1 partitions"),
        "{listing}"
    );
}

/// `kcat -C -o stored` as a member of `group` (librdkafka's broker offset store: FindCoordinator,
/// OffsetFetch, OffsetCommit with generation -1), as `key:value` lines in order.
fn kcat_consume_stored(addr: &str, topic: &str, group: &str) -> Vec<String> {
    let group = format!("group.id={group}");
    let out = kcat(
        &[
            "-C",
            "-b",
            addr,
            "-t",
            topic,
            "-e",
            "-o",
            "stored",
            "-X",
            &group,
            "-X",
            "auto.offset.reset=earliest",
            "-q",
            "-f",
            "%k:%s\n",
        ],
        "",
    );
    out.lines().map(str::to_owned).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_commits_offsets_that_the_next_run_and_grpc_see() {
    use rill_protocol::proto::group_coordinator_client::GroupCoordinatorClient;
    use rill_protocol::proto::{OffsetFetchRequest, OffsetFetchTopic};

    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("committed", 1, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let input: String = (0..5).map(|i| format!("k{i}:first-{i}\n")).collect();
    tokio::task::block_in_place(|| kcat(&["-P", "-b", &addr, "-t", "committed", "-K:"], &input));

    let first = tokio::task::block_in_place(|| kcat_consume_stored(&addr, "committed", "kg"));
    let want: Vec<String> = (0..5).map(|i| format!("k{i}:first-{i}")).collect();
    assert_eq!(first, want);

    // The commit is the coordinator's: the gRPC OffsetFetch sees it.
    let mut gc = GroupCoordinatorClient::connect(format!("http://{}", cluster.brokers[0].addr))
        .await
        .unwrap();
    let committed = gc
        .offset_fetch(OffsetFetchRequest {
            group_id: "kg".into(),
            topics: vec![OffsetFetchTopic {
                name: "committed".into(),
                partition_indexes: vec![0],
            }],
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(committed.error_code, 0, "{}", committed.error_message);
    assert_eq!(committed.topics[0].partitions[0].committed_offset, 5);

    // The next run starts where the first committed.
    let input: String = (0..3).map(|i| format!("k{i}:second-{i}\n")).collect();
    tokio::task::block_in_place(|| kcat(&["-P", "-b", &addr, "-t", "committed", "-K:"], &input));
    let second = tokio::task::block_in_place(|| kcat_consume_stored(&addr, "committed", "kg"));
    let want: Vec<String> = (0..3).map(|i| format!("k{i}:second-{i}")).collect();
    assert_eq!(second, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_broker_advertises_its_kafka_endpoint_and_kcat_follows_the_leaders() {
    let cluster = Cluster::start_with_kafka(1, 3, &[]).await;
    // Six single-replica partitions: the controller spreads their leaders over the brokers.
    cluster.create_topic("spread", 6, 1, &[]).await;
    // Any broker's Metadata names every broker at its Kafka endpoint (gRPC stays first for
    // gRPC clients: the harness's ClusterClient just created the topic through it).
    for b in &cluster.brokers {
        let addr = b.kafka_addr.clone().unwrap();
        let listing = tokio::task::block_in_place(|| kcat(&["-L", "-b", &addr], ""));
        for other in &cluster.brokers {
            let want = format!(
                "broker {} at {}",
                other.id,
                other.kafka_addr.as_ref().unwrap()
            );
            assert!(listing.contains(&want), "{want:?} missing from:\n{listing}");
        }
    }
    let leaders: std::collections::BTreeSet<i32> = cluster
        .client()
        .partitions("spread")
        .await
        .unwrap()
        .iter()
        .map(|p| p.leader)
        .collect();
    assert!(leaders.len() > 1, "all leaders on one broker: {leaders:?}");
    // Bootstrapping from one broker, kcat produces to and consumes from every leader.
    let addr = kafka_addr(&cluster);
    let input: String = (0..60).map(|i| format!("key-{i}:v{i}\n")).collect();
    tokio::task::block_in_place(|| kcat(&["-P", "-b", &addr, "-t", "spread", "-K:"], &input));
    let got = tokio::task::block_in_place(|| kcat_consume_all(&addr, "spread"));
    let mut want: Vec<String> = (0..60).map(|i| format!("key-{i}:v{i}")).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_produces_idempotently_with_every_codec() {
    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("codecs", 2, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let mut want = Vec::new();
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
        let lines: Vec<String> = (0..20)
            .map(|i| format!("{codec}-{i}:{codec} value {i}"))
            .collect();
        let input: String = lines.iter().map(|l| format!("{l}\n")).collect();
        // Idempotence: InitProducerId (forwarded to the controllers), then batches stamped with
        // the producer id, epoch and sequences.
        tokio::task::block_in_place(|| {
            kcat(
                &[
                    "-P",
                    "-b",
                    &addr,
                    "-t",
                    "codecs",
                    "-K:",
                    "-z",
                    codec,
                    "-X",
                    "enable.idempotence=true",
                ],
                &input,
            )
        });
        want.extend(lines);
    }
    want.sort();
    let got = tokio::task::block_in_place(|| kcat_consume_all(&addr, "codecs"));
    assert_eq!(got, want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_zero_gets_no_answer_and_fetch_sessions_fall_back_to_full_fetches() {
    use kafka_protocol::messages::{
        FetchRequest, FetchResponse, ProduceRequest, fetch_request, produce_request,
    };
    use rill_protocol::record_batch::{Compression, RecordBatchBuilder};

    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("raw", 1, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let name = || TopicName(StrBytes::from_static_str("raw"));
    let mut s = TcpStream::connect(&addr).await.unwrap();

    // acks=0: no answer at all; the next request's answer is the next frame.
    let mut builder = RecordBatchBuilder::new(Compression::None);
    builder.append(1, Some(b"k"), Some(b"fire and forget"), &[]);
    let batch = builder.build().unwrap();
    let produce = ProduceRequest::default()
        .with_acks(0)
        .with_timeout_ms(5000)
        .with_topic_data(vec![
            produce_request::TopicProduceData::default()
                .with_name(name())
                .with_partition_data(vec![
                    produce_request::PartitionProduceData::default()
                        .with_index(0)
                        .with_records(Some(batch.clone())),
                ]),
        ]);
    s.write_all(&frame(ApiKey::Produce, 9, 1, &produce))
        .await
        .unwrap();

    let fetch = |session_id: i32, session_epoch: i32| {
        FetchRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_max_wait_ms(2000)
            .with_min_bytes(1)
            .with_max_bytes(1 << 20)
            .with_session_id(session_id)
            .with_session_epoch(session_epoch)
            .with_topics(vec![
                fetch_request::FetchTopic::default()
                    .with_topic(name())
                    .with_partitions(vec![
                        fetch_request::FetchPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(-1)
                            .with_fetch_offset(0)
                            .with_log_start_offset(-1)
                            .with_partition_max_bytes(1 << 20),
                    ]),
            ])
    };
    // A client asking for a new session (id 0, epoch 0) gets a full fetch and no session.
    s.write_all(&frame(ApiKey::Fetch, 12, 2, &fetch(0, 0)))
        .await
        .unwrap();
    let mut answer = read_answer(&mut s).await.expect("a Fetch answer");
    let header_version = ApiKey::Fetch.response_header_version(12);
    assert_eq!(
        ResponseHeader::decode(&mut answer, header_version)
            .unwrap()
            .correlation_id,
        2,
        "the acks=0 produce must not be answered"
    );
    let r = FetchResponse::decode(&mut answer, 12).unwrap();
    assert_eq!(r.error_code, 0);
    assert_eq!(r.session_id, 0);
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 1));
    let records = p.records.clone().unwrap_or_default();
    // The stored batch comes back as sent: only the base offset and the partition leader epoch
    // (bytes 0..8 and 12..16, outside the CRC) are the broker's.
    assert_eq!(records.len(), batch.len());
    assert_eq!(records[8..12], batch[8..12]);
    assert_eq!(records[16..], batch[16..]);
    // A client naming a session rill never created is told to start over.
    s.write_all(&frame(ApiKey::Fetch, 12, 3, &fetch(77, 4)))
        .await
        .unwrap();
    let mut answer = read_answer(&mut s).await.expect("a Fetch answer");
    ResponseHeader::decode(&mut answer, header_version).unwrap();
    let r = FetchResponse::decode(&mut answer, 12).unwrap();
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
}
