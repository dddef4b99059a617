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
use rill_producer::ProducerRecord;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Starts `cmd` (a kcat command). Fails the test when kcat is not installed (`cargo xtask ci`
/// installs it) or cannot start.
fn spawn_kcat(cmd: &mut Command) -> std::process::Child {
    match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
            "kcat is not installed: these tests run a real Kafka client against the broker's \
             Kafka listener. Install it (Debian: apt-get install kcat); `cargo xtask ci` does."
        ),
        Err(e) => panic!("kcat could not start: {e}"),
    }
}

/// Runs kcat with `args` and `stdin`; its stdout. Fails the test when kcat is not installed
/// (`cargo xtask ci` installs it) or exits with an error.
fn kcat(args: &[&str], stdin: &str) -> String {
    let mut child = spawn_kcat(
        Command::new("kcat")
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped()),
    );
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

/// `kcat -P` of `input`'s `key:value` lines to `topic`.
fn kcat_produce(addr: &str, topic: &str, input: &str) {
    kcat(&["-P", "-b", addr, "-t", topic, "-K:"], input);
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
    let records = (0..10)
        .map(|i| {
            ProducerRecord::new(
                "crossing",
                Some(Bytes::from(format!("g{i}"))),
                Bytes::from(format!("from-grpc-{i}")),
            )
        })
        .collect();
    produce_grpc(&cluster, records).await;
    let mut from_grpc: Vec<String> = (0..10).map(|i| format!("g{i}:from-grpc-{i}")).collect();
    from_grpc.sort();
    let got = tokio::task::block_in_place(|| kcat_consume_all(&addr, "crossing"));
    assert_eq!(got, from_grpc);

    // Kafka produce (kcat) → gRPC consume (rill's consumer).
    let input: String = (0..10).map(|i| format!("k{i}:from-kafka-{i}\n")).collect();
    tokio::task::block_in_place(|| kcat_produce(&addr, "crossing", &input));
    let mut seen: Vec<String> = consume_grpc(&cluster, "crossing", 20)
        .await
        .iter()
        .map(|r| {
            format!(
                "{}:{}",
                String::from_utf8_lossy(r.key.as_deref().unwrap_or_default()),
                String::from_utf8_lossy(r.value.as_deref().unwrap_or_default())
            )
        })
        .collect();
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
    match tokio::time::timeout(Duration::from_secs(20), s.read_exact(&mut len)).await {
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
    tokio::task::block_in_place(|| kcat_produce(&addr, "committed", &input));

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
    tokio::task::block_in_place(|| kcat_produce(&addr, "committed", &input));
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
    tokio::task::block_in_place(|| kcat_produce(&addr, "spread", &input));
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
async fn acks_zero_gets_no_answer_and_an_unknown_fetch_session_is_refused() {
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
    let acks_zero = |partition: i32| {
        ProduceRequest::default()
            .with_acks(0)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(name())
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(partition)
                            .with_records(Some(batch.clone())),
                    ]),
            ])
    };
    s.write_all(&frame(ApiKey::Produce, 9, 1, &acks_zero(0)))
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
    assert_ne!(
        r.session_id, 0,
        "a full fetch with epoch 0 creates a fetch session"
    );
    let p = &r.responses[0].partitions[0];
    assert_eq!((p.error_code, p.high_watermark), (0, 1));
    let records = p.records.clone().unwrap_or_default();
    // The stored batch comes back as sent: only the base offset and the partition leader epoch
    // (bytes 0..8 and 12..16, outside the CRC) are the broker's.
    assert_eq!(records.len(), batch.len());
    assert_eq!(records[8..12], batch[8..12]);
    assert_eq!(records[16..], batch[16..]);
    // A client naming a session the broker does not have is told to start over.
    s.write_all(&frame(ApiKey::Fetch, 12, 3, &fetch(77, 4)))
        .await
        .unwrap();
    let mut answer = read_answer(&mut s).await.expect("a Fetch answer");
    ResponseHeader::decode(&mut answer, header_version).unwrap();
    let r = FetchResponse::decode(&mut answer, 12).unwrap();
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");

    // An acks=0 produce that fails (a partition that does not exist) cannot be answered: the
    // connection is closed, as Kafka does, so the client refreshes its metadata instead of
    // losing every later record unseen.
    s.write_all(&frame(ApiKey::Produce, 9, 4, &acks_zero(7)))
        .await
        .unwrap();
    assert!(
        read_answer(&mut s).await.is_none(),
        "a failed acks=0 produce closes its connection"
    );
}

/// InitProducerId while no controller answers is COORDINATOR_LOAD_IN_PROGRESS, which Kafka
/// clients retry; the Java producer gives up for good on the BROKER_NOT_AVAILABLE it got before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn init_producer_id_without_controllers_is_retriable() {
    use kafka_protocol::messages::{InitProducerIdRequest, InitProducerIdResponse, ProducerId};
    let mut cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let request = InitProducerIdRequest::default()
        .with_transactional_id(None)
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let r: InitProducerIdResponse = call(&mut s, ApiKey::InitProducerId, 4, &request).await;
    assert_eq!(r.error_code, 0, "{r:?}");
    cluster.kill_controller(0);
    let r: InitProducerIdResponse = call(&mut s, ApiKey::InitProducerId, 4, &request).await;
    assert_eq!(r.error_code, 14, "COORDINATOR_LOAD_IN_PROGRESS: {r:?}");
    assert_eq!(r.producer_id.0, -1);
}

/// Answers a Kafka client would act on wrongly if rill got them wrong: Metadata for unknown
/// topic ids only (not every topic), `is_internal` (Kafka's internal topics only, not any
/// `__` name), DescribeGroups v5 of a group with an error (answered: a message set for v6+
/// only made the answer unencodable and the connection closed), and FindCoordinator for a
/// transaction (an error a transactional producer stops on, not one it retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_kafka_clients_act_on() {
    use kafka_protocol::messages::{
        DescribeGroupsRequest, DescribeGroupsResponse, FindCoordinatorRequest,
        FindCoordinatorResponse, GroupId,
    };
    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("__events", 1, 1, &[]).await;
    cluster.create_topic("plain", 1, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let mut s = TcpStream::connect(&addr).await.unwrap();

    // Errors that come with a message inside rill (an invalid id; no coordinator yet, as a new
    // cluster without __consumer_offsets has) are answered, and the connection goes on.
    for (group, codes) in [("", &[24][..]), ("no-such-group", &[0, 14, 15][..])] {
        let r: DescribeGroupsResponse = call(
            &mut s,
            ApiKey::DescribeGroups,
            5,
            &DescribeGroupsRequest::default()
                .with_groups(vec![GroupId(StrBytes::from_static_str(group))]),
        )
        .await;
        assert_eq!(r.groups.len(), 1);
        assert!(
            codes.contains(&r.groups[0].error_code),
            "{group:?}: {:?}",
            r.groups[0]
        );
    }

    let r: FindCoordinatorResponse = call(
        &mut s,
        ApiKey::FindCoordinator,
        3,
        &FindCoordinatorRequest::default()
            .with_key(StrBytes::from_static_str("my-transactional-id"))
            .with_key_type(1),
    )
    .await;
    assert_eq!(r.error_code, 42, "INVALID_REQUEST: {r:?}");
    let why = r.error_message.as_deref().unwrap_or_default();
    assert!(why.contains("transactions are not supported"), "{why}");

    let unknown = uuid::Uuid::from_u128(7);
    let md: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default()
                .with_name(None)
                .with_topic_id(unknown),
        ])),
    )
    .await;
    assert_eq!(md.topics.len(), 1, "only the id asked for: {:?}", md.topics);
    assert_eq!(md.topics[0].error_code, 100, "UNKNOWN_TOPIC_ID");
    assert_eq!(md.topics[0].topic_id, unknown);

    let md: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(None),
    )
    .await;
    let internal = |topic: &str| {
        md.topics
            .iter()
            .find(|t| t.name.as_ref().is_some_and(|n| n.as_str() == topic))
            .unwrap_or_else(|| panic!("{topic} listed"))
            .is_internal
    };
    assert!(!internal("__events"), "a user's topic is not internal");
    assert!(!internal("plain"));
}

/// A long-running `kcat -G` balanced consumer (librdkafka's classic consumer group protocol:
/// FindCoordinator, JoinGroup, SyncGroup, Heartbeat, OffsetCommit, LeaveGroup), its output
/// lines (`partition:offset:value`) and the partitions of its latest assignment, read from
/// kcat's rebalance log lines on stderr.
struct GroupMember {
    name: &'static str,
    child: Option<std::process::Child>,
    records: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    log: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl GroupMember {
    fn start(name: &'static str, addr: &str, group: &str, topic: &str) -> GroupMember {
        Self::start_with_session(name, addr, group, topic, 6000)
    }

    /// As [`start`](Self::start) with `session.timeout.ms` = `session_ms`.
    fn start_with_session(
        name: &'static str,
        addr: &str,
        group: &str,
        topic: &str,
        session_ms: u32,
    ) -> GroupMember {
        Self::start_with(name, addr, group, topic, session_ms, &[])
    }

    /// As [`start_with_session`](Self::start_with_session), with more kcat arguments.
    fn start_with(
        name: &'static str,
        addr: &str,
        group: &str,
        topic: &str,
        session_ms: u32,
        extra: &[&str],
    ) -> GroupMember {
        use std::io::BufRead;
        let mut child = spawn_kcat(
            Command::new("kcat")
                .args([
                    "-b",
                    addr,
                    "-G",
                    group,
                    topic,
                    "-u",
                    "-f",
                    "%p:%o:%s\n",
                    "-X",
                    "auto.offset.reset=earliest",
                    "-X",
                    &format!("session.timeout.ms={session_ms}"),
                    "-X",
                    "heartbeat.interval.ms=500",
                    "-X",
                    "auto.commit.interval.ms=200",
                    "-X",
                    &format!("client.id={name}"),
                ])
                .args(extra)
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped()),
        );
        let records = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let sink = std::sync::Arc::clone(&records);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        let err = child.stderr.take().unwrap();
        let sink = std::sync::Arc::clone(&log);
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        GroupMember {
            name,
            child: Some(child),
            records,
            log,
        }
    }

    /// The partitions the member owns, from kcat's rebalance lines: an eager "assigned:"
    /// replaces the assignment and "revoked:" clears it; a cooperative ("incremental") line
    /// adds or removes its partitions. `None` before the first assignment or after an eager
    /// revocation.
    fn assignment(&self) -> Option<std::collections::BTreeSet<i32>> {
        let log = self.log.lock().unwrap();
        let mut owned: Option<std::collections::BTreeSet<i32>> = None;
        for line in log.iter().filter(|l| l.contains("rebalanced")) {
            // Eager: "... (memberid M): assigned: t [0], t [1]" (or "revoked: ...");
            // cooperative: "... incremental assignment of 2 partition(s) (memberid M,
            // COOPERATIVE rebalance protocol): t [0], t [1]" (or "incremental revoke ...").
            let incremental = line.contains("incremental");
            let (assign, parts) = if incremental {
                let Some((_, p)) = line.split_once("protocol): ") else {
                    continue;
                };
                (line.contains("incremental assign"), p)
            } else if let Some((_, p)) = line.split_once("assigned: ") {
                (true, p)
            } else if let Some((_, p)) = line.split_once("revoked: ") {
                (false, p)
            } else {
                continue;
            };
            let parts = parts.split(", ").filter_map(|p| {
                let (_, rest) = p.split_once('[')?;
                rest.trim_end_matches(']').trim().parse::<i32>().ok()
            });
            match (incremental, assign) {
                (false, true) => owned = Some(parts.collect()),
                (false, false) => owned = None,
                (true, true) => owned.get_or_insert_with(Default::default).extend(parts),
                (true, false) => {
                    let gone: Vec<i32> = parts.collect();
                    if let Some(o) = owned.as_mut() {
                        o.retain(|p| !gone.contains(p));
                    }
                }
            }
        }
        owned
    }

    fn records(&self) -> Vec<String> {
        self.records.lock().unwrap().clone()
    }

    fn dump(&self) -> String {
        format!(
            "--- {} stderr ---\n{}\n--- {} stdout ---\n{}",
            self.name,
            self.log.lock().unwrap().join("\n"),
            self.name,
            self.records.lock().unwrap().join("\n")
        )
    }

    /// SIGKILL: no LeaveGroup, no last commit; the coordinator finds out by the session timeout.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: kcat commits and leaves the group.
    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for GroupMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Waits until `check` holds (polling), or fails with `what` and the members' output.
async fn wait_until(
    what: &str,
    timeout: Duration,
    members: &[&GroupMember],
    mut check: impl FnMut() -> bool,
) {
    let deadline = Instant::now() + timeout;
    while !check() {
        if Instant::now() >= deadline {
            let dumps: Vec<String> = members.iter().map(|m| m.dump()).collect();
            panic!("{what} within {timeout:?}\n{}", dumps.join("\n"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The values (`%s`) of `partition:offset:value` lines.
fn values(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .filter_map(|l| l.splitn(3, ':').nth(2).map(str::to_owned))
        .collect()
}

/// The group's committed offsets, summed over the topic's partitions (gRPC OffsetFetch: the
/// same coordinator and store the Kafka listener uses).
async fn committed_total(cluster: &Cluster, group: &str, topic: &str, partitions: i32) -> i64 {
    use rill_protocol::proto::group_coordinator_client::GroupCoordinatorClient;
    use rill_protocol::proto::{OffsetFetchRequest, OffsetFetchTopic};
    // The coordinator answers; the other brokers say NOT_COORDINATOR.
    for addr in cluster.bootstrap() {
        let Ok(mut gc) = GroupCoordinatorClient::connect(format!("http://{addr}")).await else {
            continue;
        };
        let Ok(r) = gc
            .offset_fetch(OffsetFetchRequest {
                group_id: group.into(),
                topics: vec![OffsetFetchTopic {
                    name: topic.into(),
                    partition_indexes: (0..partitions).collect(),
                }],
            })
            .await
        else {
            continue;
        };
        let r = r.into_inner();
        if r.error_code == 0 {
            return r
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| p.committed_offset.max(0))
                .sum();
        }
    }
    -1
}

/// Polls [`committed_total`] until it is `want` or `timeout` passed; the last total.
async fn committed_reaches(
    cluster: &Cluster,
    group: &str,
    topic: &str,
    partitions: i32,
    want: i64,
    timeout: Duration,
) -> i64 {
    let deadline = Instant::now() + timeout;
    loop {
        let committed = committed_total(cluster, group, topic, partitions).await;
        if committed == want || Instant::now() >= deadline {
            return committed;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn produce_numbered(addr: &str, topic: &str, range: std::ops::Range<usize>) -> Vec<String> {
    let values: Vec<String> = range.map(|i| format!("record-{i}")).collect();
    let input: String = values.iter().map(|v| format!("key-{v}:{v}\n")).collect();
    kcat_produce(addr, topic, &input);
    values
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_balanced_consumers_split_partitions_rebalance_and_resume_from_commits() {
    const TOPIC: &str = "balanced";
    const GROUP: &str = "kcat-balanced";
    const PARTITIONS: i32 = 6;
    let mut cluster =
        Cluster::start_with_kafka(1, 1, &["group.initial.rebalance.delay.ms=500"]).await;
    cluster.create_topic(TOPIC, PARTITIONS, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let all: std::collections::BTreeSet<i32> = (0..PARTITIONS).collect();

    // Three members form the group; the partitions are split between them.
    let mut a = GroupMember::start("member-a", &addr, GROUP, TOPIC);
    let mut b = GroupMember::start("member-b", &addr, GROUP, TOPIC);
    let mut c = GroupMember::start("member-c", &addr, GROUP, TOPIC);
    let split = |ms: &[&GroupMember]| {
        let sets: Vec<_> = ms.iter().map(|m| m.assignment()).collect();
        if sets.iter().any(|s| s.as_ref().is_none_or(|s| s.is_empty())) {
            return false;
        }
        let sets: Vec<_> = sets.into_iter().flatten().collect();
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let union: std::collections::BTreeSet<i32> = sets.iter().flatten().copied().collect();
        total == all.len() && union == all
    };
    wait_until(
        "three members did not split the partitions",
        Duration::from_secs(40),
        &[&a, &b, &c],
        || split(&[&a, &b, &c]),
    )
    .await;

    // Every record is consumed exactly once, each by the member that owns its partition.
    let first = tokio::task::block_in_place(|| produce_numbered(&addr, TOPIC, 0..60));
    wait_until(
        "the members did not consume the first 60 records",
        Duration::from_secs(30),
        &[&a, &b, &c],
        || a.records().len() + b.records().len() + c.records().len() >= first.len(),
    )
    .await;
    for m in [&a, &b, &c] {
        let owned = m.assignment().unwrap();
        for line in m.records() {
            let p: i32 = line.split(':').next().unwrap().parse().unwrap();
            assert!(
                owned.contains(&p),
                "{} read partition {p} it does not own ({owned:?})\n{}",
                m.name,
                m.dump()
            );
        }
    }
    let mut got: Vec<String> = [&a, &b, &c]
        .iter()
        .flat_map(|m| values(&m.records()))
        .collect();
    got.sort();
    let mut want = first.clone();
    want.sort();
    assert_eq!(got, want, "each record exactly once across the members");

    // Auto commits reach the coordinator; then member A dies without leaving.
    let mut produced = first.len() as i64;
    let committed = committed_reaches(
        &cluster,
        GROUP,
        TOPIC,
        PARTITIONS,
        produced,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(
        committed, produced,
        "the members' commits did not all arrive"
    );
    let a_owned = a.assignment().unwrap();
    a.kill();
    // Its session expires: B and C rejoin and take its partitions over.
    wait_until(
        "A's partitions did not move to B and C",
        Duration::from_secs(40),
        &[&b, &c],
        || split(&[&b, &c]),
    )
    .await;
    let moved: Vec<i32> = a_owned.iter().copied().collect();
    assert!(
        moved
            .iter()
            .all(|p| b.assignment().unwrap().contains(p) || c.assignment().unwrap().contains(p)),
        "A's partitions {moved:?} not reassigned"
    );
    let (b_before, c_before) = (b.records().len(), c.records().len());
    let second = tokio::task::block_in_place(|| produce_numbered(&addr, TOPIC, 60..90));
    produced += second.len() as i64;
    wait_until(
        "B and C did not consume the next 30 records",
        Duration::from_secs(30),
        &[&b, &c],
        || b.records().len() - b_before + c.records().len() - c_before >= second.len(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: Vec<String> = values(&b.records()[b_before..]);
    got.extend(values(&c.records()[c_before..]));
    got.sort();
    let mut want = second.clone();
    want.sort();
    assert_eq!(
        got, want,
        "after the rebalance each new record is read once, and nothing A committed is read again"
    );

    // The group stops (kcat commits and leaves), the broker — the coordinator — restarts, and
    // a new member resumes from the committed offsets.
    let committed = committed_reaches(
        &cluster,
        GROUP,
        TOPIC,
        PARTITIONS,
        produced,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(committed, produced);
    b.stop();
    c.stop();
    cluster.kill_broker(0);
    cluster.start_broker(0);
    cluster.wait_healthy().await;
    let third = tokio::task::block_in_place(|| produce_numbered(&addr, TOPIC, 90..100));
    let d = GroupMember::start("member-d", &addr, GROUP, TOPIC);
    wait_until(
        "the new member did not consume the last 10 records",
        Duration::from_secs(40),
        &[&d],
        || d.records().len() >= third.len(),
    )
    .await;
    assert_eq!(d.assignment(), Some(all.clone()));
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got = values(&d.records());
    got.sort();
    let mut want = third;
    want.sort();
    assert_eq!(
        got,
        want,
        "the new member resumes where the group committed, across a coordinator restart\n{}",
        d.dump()
    );
}

/// The confluent-kafka-python side of [`confluent_kafka_python_group_and_admin_calls`].
const PYTHON_GROUP_SCRIPT: &str = r#"
import sys, time
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

addr, topic, group, partitions = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
def consumer(name):
    c = Consumer({"bootstrap.servers": addr, "group.id": group, "client.id": name,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c.subscribe([topic])
    return c
def parts(c):
    return {tp.partition for tp in c.assignment()}
def wait(what, check, members, timeout=40):
    deadline = time.time() + timeout
    while not check():
        if time.time() > deadline:
            sys.exit("timed out: " + what)
        for c in members:
            m = c.poll(0.1)
            if m is not None and m.error() is None:
                got.append((c, m))
got = []
a, b = consumer("py-a"), consumer("py-b")
wait("the two members to split the partitions",
     lambda: parts(a) and parts(b) and not (parts(a) & parts(b))
             and (parts(a) | parts(b)) == set(range(partitions)), [a, b])
p = Producer({"bootstrap.servers": addr})
for i in range(40):
    p.produce(topic, key=str(i), value="py-%d" % i)
p.flush(30)
wait("40 records", lambda: len(got) >= 40, [a, b])
values = sorted(m.value().decode() for _, m in got)
assert values == sorted("py-%d" % i for i in range(40)), values
for c, m in got:
    assert m.partition() in parts(c), "a record of a partition the member does not own"
a.commit(asynchronous=False)
b.commit(asynchronous=False)

admin = AdminClient({"bootstrap.servers": addr})
listed = admin.list_consumer_groups().result(30)
assert group in [g.group_id for g in listed.valid], listed.valid
described = admin.describe_consumer_groups([group])[group].result(30)
assert str(described.state).endswith("STABLE"), described.state
assert len(described.members) == 2, described.members
assigned = sorted(tp.partition for mm in described.members for tp in mm.assignment.topic_partitions)
assert assigned == list(range(partitions)), assigned

# A leaves (LeaveGroup): B takes every partition.
a.close()
wait("B to own every partition", lambda: parts(b) == set(range(partitions)), [b])
committed = b.committed([TopicPartition(topic, i) for i in range(partitions)], timeout=30)
assert sum(tp.offset for tp in committed) == 40, committed
b.close()
deleted = admin.delete_consumer_groups([group])[group].result(30)
listed = admin.list_consumer_groups().result(30)
assert group not in [g.group_id for g in listed.valid], listed.valid
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_python_group_and_admin_calls() {
    if !have(
        "confluent_kafka",
        "confluent-kafka",
        "as a consumer group and admin client",
    ) {
        return;
    }
    let cluster = Cluster::start_with_kafka(1, 1, &["group.initial.rebalance.delay.ms=300"]).await;
    cluster.create_topic("py-group", 4, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    tokio::task::block_in_place(|| {
        run_python_for(
            &cluster,
            "group_test.py",
            PYTHON_GROUP_SCRIPT,
            &[&addr, "py-group", "py-group-g", "4"],
            120,
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_group_survives_its_coordinator_failing_over() {
    use rill_protocol::proto::FindCoordinatorRequest;
    use rill_protocol::proto::group_coordinator_client::GroupCoordinatorClient;
    const TOPIC: &str = "failover";
    const GROUP: &str = "kcat-failover";
    const PARTITIONS: i32 = 4;
    let mut cluster =
        Cluster::start_with_kafka(1, 3, &["group.initial.rebalance.delay.ms=500"]).await;
    cluster.create_topic(TOPIC, PARTITIONS, 3, &[]).await;
    let addrs: Vec<String> = cluster
        .brokers
        .iter()
        .map(|b| b.kafka_addr.clone().unwrap())
        .collect();
    let bootstrap = addrs.join(",");
    // Sessions longer than the failover (the controller declares the broker dead, a new leader
    // loads the partition), so the members do not give up on their own.
    let a = GroupMember::start_with_session("member-a", &bootstrap, GROUP, TOPIC, 30_000);
    let b = GroupMember::start_with_session("member-b", &bootstrap, GROUP, TOPIC, 30_000);
    let all: std::collections::BTreeSet<i32> = (0..PARTITIONS).collect();
    let split = || {
        let (Some(x), Some(y)) = (a.assignment(), b.assignment()) else {
            return false;
        };
        !x.is_empty() && !y.is_empty() && x.is_disjoint(&y) && &x | &y == all
    };
    wait_until(
        "two members did not split the partitions",
        Duration::from_secs(40),
        &[&a, &b],
        split,
    )
    .await;
    let first = tokio::task::block_in_place(|| produce_numbered(&bootstrap, TOPIC, 0..40));
    wait_until(
        "the members did not consume the first 40 records",
        Duration::from_secs(30),
        &[&a, &b],
        || a.records().len() + b.records().len() >= first.len(),
    )
    .await;
    let committed = committed_reaches(
        &cluster,
        GROUP,
        TOPIC,
        PARTITIONS,
        40,
        Duration::from_secs(20),
    )
    .await;
    assert_eq!(committed, 40);

    // Kill the group's coordinator: another broker leads its __consumer_offsets partition,
    // loads the group (its offsets and its last generation) and the members carry on there.
    let mut gc = GroupCoordinatorClient::connect(format!("http://{}", cluster.brokers[0].addr))
        .await
        .unwrap();
    let coordinator = gc
        .find_coordinator(FindCoordinatorRequest {
            keys: vec![GROUP.into()],
        })
        .await
        .unwrap()
        .into_inner()
        .coordinators[0]
        .node_id;
    let index = cluster
        .brokers
        .iter()
        .position(|n| n.id == coordinator)
        .expect("a coordinator among the brokers");
    let rebalances = |m: &GroupMember| {
        m.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains("rebalanced"))
            .count()
    };
    let before = (rebalances(&a), rebalances(&b));
    let (a_seen, b_seen) = (a.records().len(), b.records().len());
    cluster.kill_broker(index);
    let live: Vec<String> = addrs
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != index)
        .map(|(_, a)| a.clone())
        .collect();
    let second = tokio::task::block_in_place(|| produce_numbered(&live.join(","), TOPIC, 40..80));
    wait_until(
        "the members did not consume the next 40 records after the failover",
        Duration::from_secs(60),
        &[&a, &b],
        || {
            let mut got: Vec<String> = values(&a.records()[a_seen..]);
            got.extend(values(&b.records()[b_seen..]));
            second.iter().all(|v| got.contains(v))
        },
    )
    .await;
    // Committed at the new coordinator, on top of what the old one had.
    let committed = committed_reaches(
        &cluster,
        GROUP,
        TOPIC,
        PARTITIONS,
        80,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(
        committed,
        80,
        "commits after the failover\n{}\n{}",
        a.dump(),
        b.dump()
    );
    let after = (rebalances(&a), rebalances(&b));
    eprintln!("rebalance log lines (a, b): {before:?} before the failover, {after:?} after");
    assert_eq!(
        after,
        before,
        "the new coordinator loaded the group in its generation: no rebalance\n{}\n{}",
        a.dump(),
        b.dump()
    );
    let mut got: Vec<String> = values(&a.records()[a_seen..]);
    got.extend(values(&b.records()[b_seen..]));
    got.sort();
    let mut want = second.clone();
    want.sort();
    assert_eq!(got, want, "each record once across the failover");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kcat_cooperative_sticky_members_rebalance_incrementally() {
    const TOPIC: &str = "cooperative";
    const GROUP: &str = "kcat-cooperative";
    const PARTITIONS: i32 = 6;
    let cluster = Cluster::start_with_kafka(1, 1, &["group.initial.rebalance.delay.ms=300"]).await;
    cluster.create_topic(TOPIC, PARTITIONS, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let all: std::collections::BTreeSet<i32> = (0..PARTITIONS).collect();
    let coop = ["-X", "partition.assignment.strategy=cooperative-sticky"];
    let a = GroupMember::start_with("coop-a", &addr, GROUP, TOPIC, 6000, &coop);
    let split = |ms: &[&GroupMember]| {
        let sets: Vec<_> = ms
            .iter()
            .map(|m| m.assignment().unwrap_or_default())
            .collect();
        let total: usize = sets.iter().map(|s| s.len()).sum();
        let union: std::collections::BTreeSet<i32> = sets.iter().flatten().copied().collect();
        sets.iter().all(|s| !s.is_empty()) && total == all.len() && union == all
    };
    wait_until(
        "the first member did not get every partition",
        Duration::from_secs(30),
        &[&a],
        || split(&[&a]),
    )
    .await;
    // A second member joins: the leader revokes only what moves (an incremental rebalance,
    // then a second join), and A keeps the rest throughout.
    let b = GroupMember::start_with("coop-b", &addr, GROUP, TOPIC, 6000, &coop);
    wait_until(
        "the two cooperative members did not split the partitions",
        Duration::from_secs(40),
        &[&a, &b],
        || split(&[&a, &b]),
    )
    .await;
    let a_log = a.log.lock().unwrap().join("\n");
    assert!(
        a_log.contains("incremental") && a_log.contains("COOPERATIVE"),
        "A did not rebalance cooperatively:\n{a_log}"
    );
    assert!(
        !a_log.contains("rebalanced (memberid"),
        "an eager rebalance line in a cooperative group:\n{a_log}"
    );
    let values_in = tokio::task::block_in_place(|| produce_numbered(&addr, TOPIC, 0..40));
    wait_until(
        "the members did not consume 40 records",
        Duration::from_secs(30),
        &[&a, &b],
        || a.records().len() + b.records().len() >= values_in.len(),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut got: Vec<String> = values(&a.records());
    got.extend(values(&b.records()));
    got.sort();
    let mut want = values_in;
    want.sort();
    assert_eq!(got, want, "each record once");
}

/// confluent-kafka-python's AdminClient against the Kafka listener: the topic and config
/// admin APIs, forwarded to the controllers.
const PYTHON_ADMIN_SCRIPT: &str = r#"
import sys
from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource,
                                   ConfigSource, NewPartitions, NewTopic, ResourceType)

addr = sys.argv[1]
admin = AdminClient({"bootstrap.servers": addr})

def error(future):
    try:
        future.result(30)
        return None
    except KafkaException as e:
        return e.args[0]

def expect(future, code, what):
    e = error(future)
    assert e is not None and e.code() == code, (what, e)
    assert e.str(), (what, "no message")
    return e

def topics():
    return admin.list_topics(timeout=10).topics

def describe(kind, name):
    r = ConfigResource(kind, name)
    return admin.describe_configs([r])[r].result(30)

# validate_only creates nothing.
fs = admin.create_topics([NewTopic("adm-a", 3, 1, config={"retention.ms": "60000"})],
                         validate_only=True)
assert error(fs["adm-a"]) is None
assert "adm-a" not in topics()

# Configs, and the broker defaults (-1 partitions, -1 replication factor).
fs = admin.create_topics([
    NewTopic("adm-a", 3, 1, config={"retention.ms": "60000", "cleanup.policy": "compact"}),
    NewTopic("adm-b"),
])
for name, f in fs.items():
    assert error(f) is None, (name, error(f))
t = topics()
assert len(t["adm-a"].partitions) == 3, t["adm-a"].partitions
assert len(t["adm-b"].partitions) >= 1

expect(admin.create_topics([NewTopic("adm-a", 1, 1)])["adm-a"],
       KafkaError.TOPIC_ALREADY_EXISTS, "an existing topic")
e = expect(admin.create_topics([NewTopic("adm-c", 1, 5)])["adm-c"],
           KafkaError.INVALID_REPLICATION_FACTOR, "5 replicas on 1 broker")
expect(admin.create_topics([NewTopic("adm-d", 1, 1, config={"retention.ms": "soon"})])["adm-d"],
       KafkaError.INVALID_CONFIG, "a bad config value")
expect(admin.create_topics([NewTopic("adm-e", 1, 1, config={"no.such.config": "1"})])["adm-e"],
       KafkaError.INVALID_CONFIG, "an unknown config")
assert "adm-c" not in topics() and "adm-d" not in topics()

configs = describe(ResourceType.TOPIC, "adm-a")
assert configs["retention.ms"].value == "60000", configs["retention.ms"]
assert configs["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value, configs["retention.ms"].source
assert configs["cleanup.policy"].value == "compact"
# Not overridden: the broker's own default (log.segment.bytes), as Kafka reports it.
assert configs["segment.bytes"].value == "536870912", configs["segment.bytes"]
assert configs["segment.bytes"].source == ConfigSource.STATIC_BROKER_CONFIG.value, configs["segment.bytes"].source
assert configs["segment.ms"].is_default, configs["segment.ms"]
expect(admin.describe_configs([ConfigResource(ResourceType.TOPIC, "adm-zzz")])[
           ConfigResource(ResourceType.TOPIC, "adm-zzz")],
       KafkaError.UNKNOWN_TOPIC_OR_PART, "describing a missing topic")

broker = describe(ResourceType.BROKER, "1")
assert broker["node.id"].value == "1", broker["node.id"]
assert broker["node.id"].is_read_only
assert "message.max.bytes" in broker

# IncrementalAlterConfigs: SET one, DELETE another (back to its default).
r = ConfigResource(ResourceType.TOPIC, "adm-a", incremental_configs=[
    ConfigEntry("retention.ms", "120000", incremental_operation=AlterConfigOpType.SET),
    ConfigEntry("cleanup.policy", None, incremental_operation=AlterConfigOpType.DELETE),
])
admin.incremental_alter_configs([r])[r].result(30)
configs = describe(ResourceType.TOPIC, "adm-a")
assert configs["retention.ms"].value == "120000", configs["retention.ms"]
assert configs["cleanup.policy"].value == "delete" and configs["cleanup.policy"].is_default
r = ConfigResource(ResourceType.TOPIC, "adm-a", incremental_configs=[
    ConfigEntry("retention.ms", "soon", incremental_operation=AlterConfigOpType.SET)])
expect(admin.incremental_alter_configs([r])[r], KafkaError.INVALID_CONFIG, "a bad value")

# CreatePartitions: grow, and refuse to shrink.
assert error(admin.create_partitions([NewPartitions("adm-a", 5)])["adm-a"]) is None
assert len(topics()["adm-a"].partitions) == 5
expect(admin.create_partitions([NewPartitions("adm-a", 2)])["adm-a"],
       KafkaError.INVALID_PARTITIONS, "fewer partitions")

cluster = admin.describe_cluster().result(30)
assert cluster.cluster_id, cluster
assert [n.id for n in cluster.nodes] == [1], cluster.nodes
assert cluster.nodes[0].port == int(addr.rsplit(":", 1)[1]), cluster.nodes

fs = admin.delete_topics(["adm-a", "adm-b"])
for name, f in fs.items():
    assert error(f) is None, (name, error(f))
t = topics()
assert "adm-a" not in t and "adm-b" not in t, list(t)
expect(admin.delete_topics(["adm-zzz"])["adm-zzz"], KafkaError.UNKNOWN_TOPIC_OR_PART,
       "deleting a missing topic")
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_python_admin_creates_describes_alters_and_deletes_topics() {
    if !have(
        "confluent_kafka",
        "confluent-kafka",
        "as an AdminClient against the Kafka listener",
    ) {
        return;
    }
    let cluster = Cluster::start_with_kafka(1, 1, &["log.segment.bytes=536870912"]).await;
    let addr = kafka_addr(&cluster);
    tokio::task::block_in_place(|| {
        run_python_for(
            &cluster,
            "admin_test.py",
            PYTHON_ADMIN_SCRIPT,
            &[&addr],
            120,
        )
    });
}

/// Sends one request on `s` and decodes its answer.
async fn call<Req: Encodable, Resp: Decodable>(
    s: &mut TcpStream,
    key: ApiKey,
    version: i16,
    req: &Req,
) -> Resp {
    s.write_all(&frame(key, version, 1, req)).await.unwrap();
    let mut answer = read_answer(s).await.expect("an answer");
    ResponseHeader::decode(&mut answer, key.response_header_version(version)).unwrap();
    Resp::decode(&mut answer, version).unwrap()
}

/// The leader and leader epoch of `topic`'s partition 0, as Kafka Metadata tells them.
async fn leader_of(addr: &str, topic: &str) -> (i32, i32) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let md: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default()
            .with_topics(Some(vec![MetadataRequestTopic::default().with_name(Some(
                TopicName(StrBytes::from_string(topic.to_owned())),
            ))])),
    )
    .await;
    let p = &md.topics[0].partitions[0];
    (p.leader_id.0, p.leader_epoch)
}

/// OffsetForLeaderEpoch of partition 0 of `topic` at `addr`: (error, epoch, end offset).
async fn epoch_end(
    addr: &str,
    version: i16,
    topic: &str,
    current_leader_epoch: i32,
    leader_epoch: i32,
) -> (i16, i32, i64) {
    use kafka_protocol::messages::{
        OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, offset_for_leader_epoch_request,
    };
    let mut s = TcpStream::connect(addr).await.unwrap();
    let r: OffsetForLeaderEpochResponse = call(
        &mut s,
        ApiKey::OffsetForLeaderEpoch,
        version,
        &OffsetForLeaderEpochRequest::default()
            .with_replica_id(kafka_protocol::messages::BrokerId(-1))
            .with_topics(vec![
                offset_for_leader_epoch_request::OffsetForLeaderTopic::default()
                    .with_topic(TopicName(StrBytes::from_string(topic.to_owned())))
                    .with_partitions(vec![
                        offset_for_leader_epoch_request::OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(current_leader_epoch)
                            .with_leader_epoch(leader_epoch),
                    ]),
            ]),
    )
    .await;
    let p = &r.topics[0].partitions[0];
    (p.error_code, p.leader_epoch, p.end_offset)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offset_for_leader_epoch_finds_where_each_epoch_ended_across_a_leader_change() {
    let mut cluster = Cluster::start_with_kafka(1, 2, &[]).await;
    cluster
        .create_topic("epochs", 1, 2, &[("min.insync.replicas", "1")])
        .await;
    let addrs: Vec<String> = cluster
        .brokers
        .iter()
        .map(|b| b.kafka_addr.clone().unwrap())
        .collect();
    let (leader, first) = leader_of(&addrs[0], "epochs").await;
    let leader_addr = addrs[(leader - 1) as usize].clone();
    let follower = if leader == 1 { 2 } else { 1 };
    let follower_addr = addrs[(follower - 1) as usize].clone();
    tokio::task::block_in_place(|| produce_numbered(&leader_addr, "epochs", 0..5));

    for v in 2..=4 {
        assert_eq!(
            epoch_end(&leader_addr, v, "epochs", first, first).await,
            (0, first, 5),
            "v{v}: the current epoch ends at the log end"
        );
    }
    // -1: no current epoch to check (v2 clients that do not know it).
    assert_eq!(
        epoch_end(&leader_addr, 4, "epochs", -1, first).await,
        (0, first, 5)
    );
    assert_eq!(
        epoch_end(&leader_addr, 4, "epochs", first + 1, first)
            .await
            .0,
        75,
        "a newer current epoch than the leader's: UNKNOWN_LEADER_EPOCH"
    );
    assert_eq!(
        epoch_end(&follower_addr, 4, "epochs", first, first).await.0,
        6,
        "a follower: NOT_LEADER_OR_FOLLOWER"
    );
    assert_eq!(
        epoch_end(&leader_addr, 4, "no-such-topic", -1, 0).await.0,
        3,
        "UNKNOWN_TOPIC_OR_PARTITION"
    );

    // The leader dies; the follower (in the ISR) takes over in a newer epoch and gets 3 more.
    cluster.kill_broker((leader - 1) as usize);
    let deadline = Instant::now() + Duration::from_secs(30);
    let second = loop {
        let (l, e) = leader_of(&follower_addr, "epochs").await;
        if l == follower {
            break e;
        }
        assert!(Instant::now() < deadline, "no new leader within 30 s");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert!(second > first);
    tokio::task::block_in_place(|| produce_numbered(&follower_addr, "epochs", 5..8));
    // A consumer that read in the first epoch learns where it ended; the current one ends at
    // the log end; the old epoch is now fenced as a current epoch.
    assert_eq!(
        epoch_end(&follower_addr, 4, "epochs", second, first).await,
        (0, first, 5)
    );
    assert_eq!(
        epoch_end(&follower_addr, 4, "epochs", second, second).await,
        (0, second, 8)
    );
    assert_eq!(
        epoch_end(&follower_addr, 4, "epochs", first, first).await.0,
        74,
        "an older current epoch: FENCED_LEADER_EPOCH"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compressed_batches_over_message_max_bytes_decompressed_are_accepted_up_to_the_decompression_bound()
 {
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, produce_request};
    use rill_protocol::record_batch::{Compression, RecordBatchBuilder};

    let cluster = Cluster::start_with_kafka(
        1,
        1,
        &[
            "message.max.bytes=100000",
            "rill.decompressed.batch.max.bytes=2000000",
        ],
    )
    .await;
    cluster.create_topic("squeezed", 1, 1, &[]).await;
    let addr = kafka_addr(&cluster);

    // kcat (librdkafka, zstd): a 600 kB record, six times message.max.bytes, compresses to a
    // batch far below it, and is stored and read back whole.
    let value = "z".repeat(600_000);
    tokio::task::block_in_place(|| {
        kcat(
            &[
                "-P",
                "-b",
                &addr,
                "-t",
                "squeezed",
                "-K:",
                "-z",
                "zstd",
                "-X",
                "message.max.bytes=1000000",
            ],
            &format!("big:{value}\n"),
        )
    });
    let out = tokio::task::block_in_place(|| {
        kcat(
            &[
                "-C",
                "-b",
                &addr,
                "-t",
                "squeezed",
                "-e",
                "-o",
                "beginning",
                "-q",
                "-f",
                "%k:%S\n",
            ],
            "",
        )
    });
    assert_eq!(out.trim(), "big:600000", "kcat reads the record back whole");

    // Over the decompression bound: MESSAGE_TOO_LARGE with a message naming the property.
    let produce = |value: &[u8]| {
        let mut builder = RecordBatchBuilder::new(Compression::Zstd);
        builder.append(1, Some(b"k"), Some(value), &[]);
        let batch = builder.build().unwrap();
        assert!(
            batch.len() < 100_000,
            "the batch as sent fits message.max.bytes"
        );
        ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("squeezed")))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(batch)),
                    ]),
            ])
    };
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let ok: ProduceResponse = call(&mut s, ApiKey::Produce, 9, &produce(&[0u8; 1_500_000])).await;
    let p = &ok.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 0, "{:?}", p.error_message);
    let refused: ProduceResponse =
        call(&mut s, ApiKey::Produce, 9, &produce(&[0u8; 3_000_000])).await;
    let p = &refused.responses[0].partition_responses[0];
    assert_eq!(p.error_code, 10, "MESSAGE_TOO_LARGE");
    let message = p.error_message.as_deref().unwrap_or_default();
    assert!(
        message.contains("rill.decompressed.batch.max.bytes"),
        "the refusal names the bound: {message:?}"
    );
}

/// kafka-python (a pure-Python client, its own protocol code) against the Kafka listener:
/// admin calls, produce and consume, a group of two.
const KAFKA_PYTHON_SCRIPT: &str = r#"import sys, time
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic
from kafka.errors import TopicAlreadyExistsError, UnknownTopicOrPartitionError

addr, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
admin = KafkaAdminClient(bootstrap_servers=addr, client_id="kp-admin")

# Admin: create (with a config), refuse a second create, describe, grow, and later delete.
admin.create_topics([NewTopic(topic, num_partitions=2, replication_factor=1,
                              topic_configs={"retention.ms": "3600000"})])
try:
    admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1)])
    sys.exit("a second create of the topic succeeded")
except TopicAlreadyExistsError:
    pass
assert topic in admin.list_topics(), admin.list_topics()
described = admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
entries = {}
for response in described:
    for resource in response.resources:
        assert resource[0] == 0, resource
        for entry in resource[4]:
            entries[entry[0]] = entry[1]
assert entries.get("retention.ms") == "3600000", entries
admin.create_partitions({topic: NewPartitions(4)})
parts = [t for t in admin.describe_topics([topic]) if t["topic"] == topic][0]["partitions"]
assert len(parts) == 4, parts

# Produce (gzip, acks=all), then read everything back without a group.
producer = KafkaProducer(bootstrap_servers=addr, acks="all", compression_type="gzip")
for i in range(40):
    producer.send(topic, key=str(i).encode(), value=("kp-%d" % i).encode())
producer.flush(30)
producer.close()
reader = KafkaConsumer(bootstrap_servers=addr, auto_offset_reset="earliest",
                       enable_auto_commit=False, consumer_timeout_ms=10000)
reader.assign([TopicPartition(topic, p) for p in range(4)])
values = sorted(m.value.decode() for m in reader)
reader.close()
assert values == sorted("kp-%d" % i for i in range(40)), values

# A group of two: the partitions are split, every record read once, offsets committed; when
# one leaves, the other takes every partition and starts at the commits (nothing more to read).
def member(name):
    return KafkaConsumer(topic, bootstrap_servers=addr, group_id=group, client_id=name,
                         auto_offset_reset="earliest", enable_auto_commit=False,
                         session_timeout_ms=6000, heartbeat_interval_ms=500)
a, b = member("kp-a"), member("kp-b")
got = {a: [], b: []}
def pump(members, until, what, timeout=60):
    deadline = time.time() + timeout
    while not until():
        if time.time() > deadline:
            sys.exit("timed out: " + what)
        for c in members:
            for tp, records in c.poll(timeout_ms=100).items():
                got[c].extend((tp.partition, r.value.decode()) for r in records)
owned = lambda c: {tp.partition for tp in c.assignment()}
pump([a, b], lambda: len(got[a]) + len(got[b]) >= 40 and owned(a) and owned(b)
     and not (owned(a) & owned(b)) and (owned(a) | owned(b)) == set(range(4)),
     "the two members to split the partitions and read 40 records")
values = sorted(v for c in (a, b) for _, v in got[c])
assert values == sorted("kp-%d" % i for i in range(40)), values
for c in (a, b):
    assert all(p in owned(c) for p, _ in got[c]), "a record of a partition the member does not own"
    c.commit()
a.close()
pump([b], lambda: owned(b) == set(range(4)), "b to own every partition")
committed = sum(b.committed(TopicPartition(topic, p)) or 0 for p in range(4))
assert committed == 40, committed
b.close()

admin.delete_topics([topic])
assert topic not in admin.list_topics(), admin.list_topics()
try:
    admin.delete_topics([topic])
    sys.exit("deleting a missing topic succeeded")
except UnknownTopicOrPartitionError:
    pass
admin.close()
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_admin_produce_consume_and_a_group_of_two() {
    if !have(
        "kafka",
        "kafka-python",
        "as producer, consumers of a group and admin client",
    ) {
        return;
    }
    let cluster = Cluster::start_with_kafka(1, 1, &["group.initial.rebalance.delay.ms=300"]).await;
    let addr = kafka_addr(&cluster);
    tokio::task::block_in_place(|| {
        run_python_for(
            &cluster,
            "kafka_python_test.py",
            KAFKA_PYTHON_SCRIPT,
            &[&addr, "kp-topic", "kp-group"],
            120,
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_requests_by_topic_id_and_what_rill_refuses() {
    use kafka_protocol::messages::{
        BrokerId, CreateTopicsRequest, CreateTopicsResponse, DeleteTopicsRequest,
        DeleteTopicsResponse, IncrementalAlterConfigsRequest, IncrementalAlterConfigsResponse,
        create_topics_request, delete_topics_request, incremental_alter_configs_request,
    };
    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("by-id", 2, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let name = |n: &str| TopicName(StrBytes::from_string(n.to_owned()));

    // Manual replica assignments: refused, with a message.
    let r: CreateTopicsResponse = call(
        &mut s,
        ApiKey::CreateTopics,
        7,
        &CreateTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                create_topics_request::CreatableTopic::default()
                    .with_name(name("placed"))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
                    .with_assignments(vec![
                        create_topics_request::CreatableReplicaAssignment::default()
                            .with_broker_ids(vec![BrokerId(1)]),
                    ]),
            ]),
    )
    .await;
    assert_eq!(r.topics[0].error_code, 39, "INVALID_REPLICA_ASSIGNMENT");
    assert!(r.topics[0].error_message.is_some());

    // APPEND is not one of rill's operations: INVALID_REQUEST saying so.
    let r: IncrementalAlterConfigsResponse = call(
        &mut s,
        ApiKey::IncrementalAlterConfigs,
        1,
        &IncrementalAlterConfigsRequest::default().with_resources(vec![
            incremental_alter_configs_request::AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("by-id"))
                .with_configs(vec![
                    incremental_alter_configs_request::AlterableConfig::default()
                        .with_name(StrBytes::from_static_str("cleanup.policy"))
                        .with_config_operation(2)
                        .with_value(Some(StrBytes::from_static_str("compact"))),
                ]),
        ]),
    )
    .await;
    assert_eq!(r.responses[0].error_code, 42, "INVALID_REQUEST");
    let why = r.responses[0].error_message.as_deref().unwrap_or_default();
    assert!(why.contains("APPEND"), "{why}");

    // DeleteTopics v6 by topic id: the id is resolved to the name; an unknown id is
    // UNKNOWN_TOPIC_ID.
    let md: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("by-id"))),
        ])),
    )
    .await;
    let id = md.topics[0].topic_id;
    assert!(!id.is_nil());
    let unknown = uuid::Uuid::from_u128(7);
    let r: DeleteTopicsResponse = call(
        &mut s,
        ApiKey::DeleteTopics,
        6,
        &DeleteTopicsRequest::default()
            .with_timeout_ms(10_000)
            .with_topics(vec![
                delete_topics_request::DeleteTopicState::default().with_topic_id(id),
                delete_topics_request::DeleteTopicState::default().with_topic_id(unknown),
            ]),
    )
    .await;
    assert_eq!(r.responses[0].error_code, 0, "{:?}", r.responses[0]);
    assert_eq!(
        r.responses[0].name.as_ref().map(|n| n.as_str()),
        Some("by-id")
    );
    assert_eq!(r.responses[0].topic_id, id);
    assert_eq!(r.responses[1].error_code, 100, "UNKNOWN_TOPIC_ID");
    // Gone from this broker's metadata by the time the answer came.
    let md: MetadataResponse = call(
        &mut s,
        ApiKey::Metadata,
        12,
        &MetadataRequest::default().with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(name("by-id"))),
        ])),
    )
    .await;
    assert_eq!(md.topics[0].error_code, 3, "UNKNOWN_TOPIC_OR_PARTITION");
}

/// Fetch sessions (KIP-227) driven by hand: a full fetch creates one, incremental fetches name
/// only what changed and are answered only with what changed (nothing: after max_wait), new
/// records show up, forgotten partitions stop showing up, a wrong epoch and a closed session
/// are refused. librdkafka (kcat, confluent-kafka-python) never asks for a session (its
/// fetches are session 0, epoch -1: the sessionless path the kcat tests use); kafka-python's
/// consumer does (its test goes through incremental fetches).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incremental_fetch_sessions_answer_only_what_changed() {
    use kafka_protocol::messages::{
        FetchRequest, FetchResponse, ProduceRequest, ProduceResponse, fetch_request,
        produce_request,
    };
    use rill_protocol::record_batch::{Compression, RecordBatchBuilder};

    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("sess", 2, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let name = || TopicName(StrBytes::from_static_str("sess"));
    let mut s = TcpStream::connect(&addr).await.unwrap();
    let produce_to = async |s: &mut TcpStream, partition: i32, value: &str| {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.append(1, None, Some(value.as_bytes()), &[]);
        let r: ProduceResponse = call(
            s,
            ApiKey::Produce,
            9,
            &ProduceRequest::default()
                .with_acks(-1)
                .with_timeout_ms(5000)
                .with_topic_data(vec![
                    produce_request::TopicProduceData::default()
                        .with_name(name())
                        .with_partition_data(vec![
                            produce_request::PartitionProduceData::default()
                                .with_index(partition)
                                .with_records(Some(builder.build().unwrap())),
                        ]),
                ]),
        )
        .await;
        assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    };
    let part = |partition: i32, offset: i64| {
        fetch_request::FetchPartition::default()
            .with_partition(partition)
            .with_current_leader_epoch(-1)
            .with_fetch_offset(offset)
            .with_log_start_offset(-1)
            .with_partition_max_bytes(1 << 20)
    };
    let fetch =
        |id: i32, epoch: i32, parts: Vec<fetch_request::FetchPartition>, forget: Vec<i32>| {
            FetchRequest::default()
                .with_replica_id(kafka_protocol::messages::BrokerId(-1))
                .with_max_wait_ms(400)
                .with_min_bytes(1)
                .with_max_bytes(1 << 20)
                .with_session_id(id)
                .with_session_epoch(epoch)
                .with_topics(if parts.is_empty() {
                    vec![]
                } else {
                    vec![
                        fetch_request::FetchTopic::default()
                            .with_topic(name())
                            .with_partitions(parts),
                    ]
                })
                .with_forgotten_topics_data(if forget.is_empty() {
                    vec![]
                } else {
                    vec![
                        fetch_request::ForgottenTopic::default()
                            .with_topic(name())
                            .with_partitions(forget),
                    ]
                })
        };
    // (partition, high watermark, record bytes) of an answer.
    let seen = |r: &FetchResponse| -> Vec<(i32, i64, usize)> {
        r.responses
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| {
                assert_eq!(p.error_code, 0);
                (
                    p.partition_index,
                    p.high_watermark,
                    p.records.as_ref().map_or(0, |r| r.len()),
                )
            })
            .collect()
    };

    produce_to(&mut s, 0, "first").await;
    // Full fetch, epoch 0: a session, and every partition answered.
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &fetch(0, 0, vec![part(0, 0), part(1, 0)], vec![]),
    )
    .await;
    assert_eq!(r.error_code, 0);
    let id = r.session_id;
    assert_ne!(id, 0, "a session was created");
    let got = seen(&r);
    assert_eq!(got.len(), 2);
    assert!(got[0].0 == 0 && got[0].1 == 1 && got[0].2 > 0, "{got:?}");
    assert_eq!(got[1], (1, 0, 0));

    // Epoch 1: partition 0 moved on, nothing new anywhere: an empty answer after max_wait.
    let started = Instant::now();
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &fetch(id, 1, vec![part(0, 1)], vec![]),
    )
    .await;
    let waited = started.elapsed();
    assert_eq!((r.error_code, r.session_id), (0, id));
    assert!(seen(&r).is_empty(), "nothing changed: {:?}", seen(&r));
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_secs(3),
        "an empty incremental fetch waits max_wait (400 ms), took {waited:?}"
    );

    // New records on partition 1: only it is answered, though the fetch names nothing.
    produce_to(&mut s, 1, "second").await;
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &fetch(id, 2, vec![], vec![])).await;
    let got = seen(&r);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].0 == 1 && got[0].1 == 1 && got[0].2 > 0, "{got:?}");

    // Partition 1 forgotten: new records there no longer show up; partition 0's do.
    produce_to(&mut s, 1, "third").await;
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &fetch(id, 3, vec![], vec![1])).await;
    assert!(
        seen(&r).is_empty(),
        "a forgotten partition is not read: {:?}",
        seen(&r)
    );
    produce_to(&mut s, 0, "fourth").await;
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &fetch(id, 4, vec![], vec![])).await;
    let got = seen(&r);
    assert_eq!(got.len(), 1, "{got:?}");
    assert!(got[0].0 == 0 && got[0].1 == 2 && got[0].2 > 0, "{got:?}");

    // A repeated epoch is refused (the session stays); so is a session that does not exist.
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &fetch(id, 4, vec![], vec![])).await;
    assert_eq!(
        (r.error_code, r.session_id),
        (71, 0),
        "INVALID_FETCH_SESSION_EPOCH"
    );
    assert!(r.responses.is_empty());
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &fetch(id, 5, vec![part(0, 2)], vec![]),
    )
    .await;
    assert_eq!(
        (r.error_code, r.session_id),
        (0, id),
        "the right epoch still works"
    );
    // Epoch -1 closes the session and fetches without one; the session is gone after.
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &fetch(id, -1, vec![part(1, 0)], vec![]),
    )
    .await;
    assert_eq!((r.error_code, r.session_id), (0, 0));
    assert_eq!(
        seen(&r).len(),
        1,
        "a sessionless fetch answers every partition it names"
    );
    let r: FetchResponse = call(&mut s, ApiKey::Fetch, 12, &fetch(id, 6, vec![], vec![])).await;
    assert_eq!(r.error_code, 70, "FETCH_SESSION_ID_NOT_FOUND");
    // Sessionless fetches (librdkafka's) keep working, with no session.
    let r: FetchResponse = call(
        &mut s,
        ApiKey::Fetch,
        12,
        &fetch(0, -1, vec![part(0, 0), part(1, 0)], vec![]),
    )
    .await;
    assert_eq!((r.error_code, r.session_id), (0, 0));
    assert_eq!(seen(&r).len(), 2);
}

/// The confluent-kafka-python side of [`a_kafka_consumer_protocol_member_and_a_rill_consumer_share_a_group`]:
/// a `group.protocol=consumer` member (KIP-848 ConsumerGroupHeartbeat over the Kafka listener)
/// printing its assignments (`ASSIGN p,p`) and records (`REC partition value`) until the stop
/// file appears, then leaving the group.
const PYTHON_CONSUMER_PROTOCOL_SCRIPT: &str = r#"
import os, sys
from confluent_kafka import Consumer

addr, topic, group, stop = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
c = Consumer({"bootstrap.servers": addr, "group.id": group, "client.id": "py-848",
              "group.protocol": "consumer", "auto.offset.reset": "earliest",
              "enable.auto.commit": False})
c.subscribe([topic])
last = None
while not os.path.exists(stop):
    m = c.poll(0.1)
    now = sorted(tp.partition for tp in c.assignment())
    if now != last:
        print("ASSIGN " + ",".join(str(p) for p in now), flush=True)
        last = now
    if m is not None:
        if m.error() is not None:
            print("ERROR %s" % m.error(), flush=True)
        else:
            print("REC %d %s" % (m.partition(), m.value().decode()), flush=True)
c.close()
print("OK", flush=True)
"#;

/// KIP-848 over the Kafka listener: a confluent-kafka-python consumer with
/// `group.protocol=consumer` (ConsumerGroupHeartbeat) and a rill consumer (gRPC
/// ConsumerGroupHeartbeat) in one group: the partitions are split between them, every record
/// is read exactly once, by the member owning its partition, and when the Kafka member leaves
/// the rill consumer takes every partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_consumer_protocol_member_and_a_rill_consumer_share_a_group() {
    use std::collections::BTreeSet;
    use std::io::BufRead;
    use std::sync::{Arc, Mutex};

    if !have(
        "confluent_kafka",
        "confluent-kafka",
        "as a group.protocol=consumer member",
    ) {
        return;
    }
    let cluster =
        Cluster::start_with_kafka(1, 1, &["group.consumer.heartbeat.interval.ms=500"]).await;
    cluster.create_topic("mixed", 4, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let (topic, group) = ("mixed", "mixed-g");

    let script = cluster.brokers[0].dir.join("consumer_protocol.py");
    std::fs::write(&script, PYTHON_CONSUMER_PROTOCOL_SCRIPT).unwrap();
    let stop = cluster.brokers[0].dir.join("stop-python-consumer");
    let mut child = Command::new("timeout")
        .arg("120")
        .arg(python3())
        .arg(&script)
        .args([&addr, topic, group, stop.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The Python member's output lines, as they come.
    let lines = Arc::new(Mutex::new(Vec::<String>::new()));
    let reader = {
        let lines = Arc::clone(&lines);
        let out = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(out).lines().map_while(Result::ok) {
                lines.lock().unwrap().push(line);
            }
        })
    };
    let py_assignment = |lines: &[String]| -> BTreeSet<i32> {
        lines
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("ASSIGN "))
            .map(|s| s.split(',').filter_map(|p| p.parse().ok()).collect())
            .unwrap_or_default()
    };
    let py_records = |lines: &[String]| -> Vec<(i32, String)> {
        lines
            .iter()
            .filter_map(|l| l.strip_prefix("REC "))
            .map(|r| {
                let (p, v) = r.split_once(' ').unwrap();
                (p.parse().unwrap(), v.to_owned())
            })
            .collect()
    };

    let mut rill = Consumer::new(ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        group_id: Some(group.into()),
        client_id: "rill-848".into(),
        auto_offset_reset: OffsetReset::Earliest,
        enable_auto_commit: false,
        ..Default::default()
    })
    .unwrap();
    rill.subscribe([topic], rill_consumer::NoOpRebalanceListener)
        .unwrap();
    let rill_assignment =
        |c: &Consumer| -> BTreeSet<i32> { c.assignment().iter().map(|tp| tp.partition).collect() };
    let mut rill_records: Vec<(i32, String)> = Vec::new();
    let fail = |what: &str, lines: &Arc<Mutex<Vec<String>>>| -> ! {
        panic!(
            "timed out waiting for {what}; the Python member said:\n{}",
            lines.lock().unwrap().join("\n")
        )
    };

    // Both members join; the four partitions end up split between them.
    let all: BTreeSet<i32> = (0..4).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for r in rill.poll(Duration::from_millis(200)).await.unwrap() {
            rill_records.push((
                r.partition,
                String::from_utf8_lossy(&r.value.unwrap_or_default()).into(),
            ));
        }
        let (mine, theirs) = (
            rill_assignment(&rill),
            py_assignment(&lines.lock().unwrap()),
        );
        if !mine.is_empty()
            && !theirs.is_empty()
            && mine.is_disjoint(&theirs)
            && mine.union(&theirs).copied().collect::<BTreeSet<_>>() == all
        {
            break;
        }
        if Instant::now() > deadline {
            fail(
                &format!("the split (rill has {mine:?}, python {theirs:?})"),
                &lines,
            );
        }
    }
    assert!(rill_records.is_empty(), "nothing was produced yet");

    // 40 records over the four partitions: each read once, by the member owning its partition.
    let records = (0..40)
        .map(|i| ProducerRecord {
            partition: Some(i % 4),
            ..ProducerRecord::new(topic, None::<Bytes>, Bytes::from(format!("v{i}")))
        })
        .collect();
    produce_grpc(&cluster, records).await;
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for r in rill.poll(Duration::from_millis(200)).await.unwrap() {
            rill_records.push((
                r.partition,
                String::from_utf8_lossy(&r.value.unwrap_or_default()).into(),
            ));
        }
        let theirs = py_records(&lines.lock().unwrap());
        if rill_records.len() + theirs.len() >= 40 {
            break;
        }
        if Instant::now() > deadline {
            fail(
                &format!(
                    "40 records (rill read {}, python {})",
                    rill_records.len(),
                    theirs.len()
                ),
                &lines,
            );
        }
    }
    let (mine, theirs) = (
        rill_assignment(&rill),
        py_assignment(&lines.lock().unwrap()),
    );
    let py_read = py_records(&lines.lock().unwrap());
    assert!(
        !py_read.is_empty() && !rill_records.is_empty(),
        "both members read"
    );
    for (p, v) in &rill_records {
        assert!(
            mine.contains(p),
            "rill read {v} of partition {p}, not its own ({mine:?})"
        );
    }
    for (p, v) in &py_read {
        assert!(
            theirs.contains(p),
            "python read {v} of partition {p}, not its own ({theirs:?})"
        );
    }
    let mut values: Vec<String> = rill_records
        .iter()
        .chain(py_read.iter())
        .map(|(_, v)| v.clone())
        .collect();
    values.sort();
    let mut expected: Vec<String> = (0..40).map(|i| format!("v{i}")).collect();
    expected.sort();
    assert_eq!(values, expected, "every record read exactly once");

    // The Kafka member leaves (epoch -1): the rill consumer gets every partition.
    std::fs::write(&stop, "").unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while rill_assignment(&rill) != all {
        rill.poll(Duration::from_millis(200)).await.unwrap();
        if Instant::now() > deadline {
            fail("the rill consumer to own every partition", &lines);
        }
    }
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    reader.join().unwrap();
    let said = lines.lock().unwrap().join("\n");
    assert!(
        status.success() && said.contains("OK") && !said.contains("ERROR"),
        "the Python member failed ({status}):\n{said}"
    );
    rill.close().await.unwrap();
}

/// ConsumerGroupHeartbeat driven by hand (kafka-protocol codecs, v0 and v1): a join gets a
/// member id and epoch, then the assignment by topic id (Kafka's) of every partition; a second
/// member joining splits them; leaving (epoch -1) is answered with epoch -1; a stale epoch is
/// fenced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_group_heartbeat_joins_gets_an_assignment_by_topic_id_and_leaves() {
    use kafka_protocol::messages::{
        ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, GroupId,
    };
    use std::collections::BTreeSet;

    let cluster =
        Cluster::start_with_kafka(1, 1, &["group.consumer.heartbeat.interval.ms=300"]).await;
    cluster.create_topic("hb", 4, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let topic_id = {
        let mut s = TcpStream::connect(&addr).await.unwrap();
        let md: MetadataResponse = call(
            &mut s,
            ApiKey::Metadata,
            12,
            &MetadataRequest::default().with_topics(Some(vec![
                MetadataRequestTopic::default()
                    .with_name(Some(TopicName(StrBytes::from_static_str("hb")))),
            ])),
        )
        .await;
        md.topics[0].topic_id
    };
    let heartbeat = |member_id: &str, epoch: i32| {
        ConsumerGroupHeartbeatRequest::default()
            .with_group_id(GroupId(StrBytes::from_static_str("hb-g")))
            .with_member_id(StrBytes::from_string(member_id.to_owned()))
            .with_member_epoch(epoch)
            .with_rebalance_timeout_ms(if epoch == 0 { 30_000 } else { -1 })
            .with_subscribed_topic_names(
                (epoch == 0).then(|| vec![TopicName(StrBytes::from_static_str("hb"))]),
            )
            .with_topic_partitions((epoch == 0).then(Vec::new))
    };
    // (member id, epoch, partitions once assigned) after heartbeats until `done` holds.
    async fn beat_until(
        s: &mut TcpStream,
        version: i16,
        mut req: ConsumerGroupHeartbeatRequest,
        topic_id: uuid::Uuid,
        done: impl Fn(&BTreeSet<i32>) -> bool,
    ) -> (String, i32, BTreeSet<i32>) {
        let mut owned = BTreeSet::new();
        for _ in 0..100 {
            let r: ConsumerGroupHeartbeatResponse =
                call(s, ApiKey::ConsumerGroupHeartbeat, version, &req).await;
            if r.error_code == 14 {
                // COORDINATOR_LOAD_IN_PROGRESS: retriable.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            assert_eq!(r.error_code, 0, "{:?}", r.error_message);
            assert!(r.heartbeat_interval_ms > 0);
            let member = r.member_id.expect("a member id").to_string();
            if let Some(a) = r.assignment {
                owned = a
                    .topic_partitions
                    .iter()
                    .inspect(|t| assert_eq!(t.topic_id, topic_id, "assignments name topic ids"))
                    .flat_map(|t| t.partitions.iter().copied())
                    .collect();
            }
            // Report what is owned now, as clients do after an assignment changes.
            req = req
                .with_member_id(StrBytes::from_string(member.clone()))
                .with_member_epoch(r.member_epoch)
                .with_subscribed_topic_names(None)
                .with_rebalance_timeout_ms(-1)
                .with_topic_partitions(Some(vec![
                    kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions::default()
                        .with_topic_id(topic_id)
                        .with_partitions(owned.iter().copied().collect()),
                ]));
            if done(&owned) {
                // Acknowledge it (a revocation completes only when the member reports it gave
                // the partitions up: until then the other member cannot get them).
                let ack: ConsumerGroupHeartbeatResponse =
                    call(s, ApiKey::ConsumerGroupHeartbeat, version, &req).await;
                assert_eq!(ack.error_code, 0, "{:?}", ack.error_message);
                return (member, ack.member_epoch, owned);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("no assignment satisfying the test after 100 heartbeats (owned {owned:?})");
    }

    let mut a = TcpStream::connect(&addr).await.unwrap();
    // Clients find the coordinator first (which creates __consumer_offsets).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        use kafka_protocol::messages::{FindCoordinatorRequest, FindCoordinatorResponse};
        let r: FindCoordinatorResponse = call(
            &mut a,
            ApiKey::FindCoordinator,
            3,
            &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str("hb-g")),
        )
        .await;
        if r.error_code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no coordinator: {}",
            r.error_code
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let (a_id, a_epoch, a_owned) =
        beat_until(&mut a, 0, heartbeat("", 0), topic_id, |o| o.len() == 4).await;
    assert!(a_epoch >= 1, "a joined member has an epoch");
    assert_eq!(a_owned, (0..4).collect());

    // A second member (v1, a client-generated member id, as Kafka 4 clients send): the
    // partitions are split once a gives some up.
    let mut b = TcpStream::connect(&addr).await.unwrap();
    let b_member = "b-member-0000000000000000000";
    let b_join = tokio::spawn(async move {
        let r = beat_until(&mut b, 1, heartbeat(b_member, 0), topic_id, |o| {
            o.len() == 2
        })
        .await;
        (b, r)
    });
    let (a_id, a_epoch, a_owned) = beat_until(
        &mut a,
        0,
        heartbeat(&a_id, a_epoch).with_topic_partitions(Some(vec![
            kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions::default()
                .with_topic_id(topic_id)
                .with_partitions((0..4).collect()),
        ])),
        topic_id,
        |o| o.len() == 2,
    )
    .await;
    let (mut b, (b_id, _, b_owned)) = b_join.await.unwrap();
    assert_eq!(b_id, b_member, "the client's member id is kept");
    assert!(a_owned.is_disjoint(&b_owned), "{a_owned:?} {b_owned:?}");
    assert_eq!(a_owned.union(&b_owned).count(), 4);

    // A stale epoch is fenced (FENCED_MEMBER_EPOCH); leaving answers epoch -1.
    let r: ConsumerGroupHeartbeatResponse = call(
        &mut a,
        ApiKey::ConsumerGroupHeartbeat,
        0,
        &heartbeat(&a_id, a_epoch + 100),
    )
    .await;
    assert_eq!(
        r.error_code, 110,
        "FENCED_MEMBER_EPOCH: {:?}",
        r.error_message
    );
    let r: ConsumerGroupHeartbeatResponse = call(
        &mut b,
        ApiKey::ConsumerGroupHeartbeat,
        1,
        &heartbeat(&b_id, -1),
    )
    .await;
    assert_eq!((r.error_code, r.member_epoch), (0, -1));
}

/// Produce requests pipelined on one connection (as librdkafka and the Java client send up to
/// five) overlap their wait for durability, yet are appended in the order sent and answered
/// in that order; an acks=0 produce gets no answer and a request of another kind between them
/// is answered in its place. A malformed frame after them closes the connection only once
/// every produce before it is answered (a client left without answers would retry them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_produce_requests_are_appended_and_answered_in_order() {
    use kafka_protocol::messages::{ProduceRequest, ProduceResponse, produce_request};
    use rill_protocol::record_batch::{Compression, RecordBatchBuilder};

    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("pipe", 1, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let produce = |i: usize, acks: i16| {
        let mut builder = RecordBatchBuilder::new(Compression::None);
        builder.append(1, Some(format!("k{i}").as_bytes()), Some(b"v"), &[]);
        ProduceRequest::default()
            .with_acks(acks)
            .with_timeout_ms(5000)
            .with_topic_data(vec![
                produce_request::TopicProduceData::default()
                    .with_name(TopicName(StrBytes::from_static_str("pipe")))
                    .with_partition_data(vec![
                        produce_request::PartitionProduceData::default()
                            .with_index(0)
                            .with_records(Some(builder.build().unwrap())),
                    ]),
            ])
    };
    // 12 records, more than the 5 produce requests a connection may have waiting: request i
    // carries record i; request 5 is acks=0; an ApiVersions sits between requests 7 and 8.
    let mut sent = BytesMut::new();
    let mut expected = Vec::new(); // correlation id, base offset (-1: ApiVersions)
    for i in 0..12 {
        let acks = match i {
            5 => 0,
            i if i % 2 == 0 => -1,
            _ => 1,
        };
        let correlation = 100 + i as i32;
        sent.put(frame(ApiKey::Produce, 9, correlation, &produce(i, acks)));
        if acks != 0 {
            expected.push((correlation, i as i64));
        }
        if i == 7 {
            sent.put(frame(
                ApiKey::ApiVersions,
                3,
                999,
                &ApiVersionsRequest::default(),
            ));
            expected.push((999, -1));
        }
    }
    // Then a frame with an API key that does not exist.
    sent.put_i32(10);
    sent.put_i16(999);
    sent.put_slice(&[0u8; 8]);
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(&sent).await.unwrap();
    for (correlation, base_offset) in expected {
        let mut answer = read_answer(&mut s).await.expect("an answer");
        let key = if base_offset < 0 {
            ApiKey::ApiVersions
        } else {
            ApiKey::Produce
        };
        let version = if base_offset < 0 { 3 } else { 9 };
        let header =
            ResponseHeader::decode(&mut answer, key.response_header_version(version)).unwrap();
        assert_eq!(
            header.correlation_id, correlation,
            "answers in request order"
        );
        if base_offset < 0 {
            assert_eq!(
                ApiVersionsResponse::decode(&mut answer, 3)
                    .unwrap()
                    .error_code,
                0
            );
            continue;
        }
        let r = ProduceResponse::decode(&mut answer, 9).unwrap();
        let p = &r.responses[0].partition_responses[0];
        assert_eq!(
            p.error_code, 0,
            "request {correlation}: {:?}",
            p.error_message
        );
        assert_eq!(
            p.base_offset, base_offset,
            "request {correlation} is appended in the order sent"
        );
    }
    assert!(
        read_answer(&mut s).await.is_none(),
        "the malformed frame closes the connection"
    );
    let mut want: Vec<String> = (0..12).map(|i| format!("k{i}:v")).collect();
    want.sort();
    assert_eq!(kcat_consume_all(&addr, "pipe"), want);
}

/// Kafka's OffsetCommit v2-4 carries the client's own `retention_time_ms`: an offset committed
/// with one expires that long after the commit (its group has no members) instead of after
/// `offsets.retention.minutes`; -1 keeps the brokers' retention.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offset_commit_with_its_own_retention_time_expires_by_it() {
    use kafka_protocol::messages::offset_commit_request::{
        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
    };
    use kafka_protocol::messages::{
        FindCoordinatorRequest, FindCoordinatorResponse, GroupId, OffsetCommitRequest,
        OffsetCommitResponse,
    };
    use rill_protocol::proto::group_coordinator_client::GroupCoordinatorClient;
    use rill_protocol::proto::{OffsetFetchRequest, OffsetFetchTopic};

    let cluster =
        Cluster::start_with_kafka(1, 1, &["offsets.retention.check.interval.ms=100"]).await;
    cluster.create_topic("kept", 1, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    let commit = |group: &'static str, offset: i64, retention_time_ms: i64| {
        let addr = addr.clone();
        async move {
            let req = OffsetCommitRequest::default()
                .with_group_id(GroupId(StrBytes::from_static_str(group)))
                .with_generation_id_or_member_epoch(-1)
                .with_retention_time_ms(retention_time_ms)
                .with_topics(vec![
                    OffsetCommitRequestTopic::default()
                        .with_name(TopicName(StrBytes::from_static_str("kept")))
                        .with_partitions(vec![
                            OffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(offset),
                        ]),
                ]);
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                // FindCoordinator first, as a client does: it creates the offsets topic.
                let mut s = TcpStream::connect(&addr).await.unwrap();
                let _: FindCoordinatorResponse = call(
                    &mut s,
                    ApiKey::FindCoordinator,
                    1,
                    &FindCoordinatorRequest::default().with_key(StrBytes::from_static_str(group)),
                )
                .await;
                let r: OffsetCommitResponse = call(&mut s, ApiKey::OffsetCommit, 2, &req).await;
                let code = r.topics[0].partitions[0].error_code;
                if code == 0 {
                    return;
                }
                // The offsets topic's coordinator may still be loading.
                assert!(Instant::now() < deadline, "commit refused: {code}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // The one kept by the brokers' retention first: a commit may wait for its offsets
    // partition to load, which must not eat into the other's retention.
    commit("brokers-retention", 4, -1).await;
    commit("own-retention", 3, 4_000).await;
    let gc = GroupCoordinatorClient::connect(format!("http://{}", cluster.brokers[0].addr))
        .await
        .unwrap();
    let committed = |group: &'static str| {
        let mut gc = gc.clone();
        async move {
            let r = gc
                .offset_fetch(OffsetFetchRequest {
                    group_id: group.into(),
                    topics: vec![OffsetFetchTopic {
                        name: "kept".into(),
                        partition_indexes: vec![0],
                    }],
                })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.error_code, 0, "{}", r.error_message);
            r.topics[0].partitions[0].committed_offset
        }
    };
    let started = Instant::now();
    assert_eq!(committed("own-retention").await, 3);
    while committed("own-retention").await != -1 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the offset with a 4 s retention never expired"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        committed("brokers-retention").await,
        4,
        "kept by the brokers' retention"
    );
}
