//! Kafka clients nobody here wrote against rill's Kafka listener, beyond `kafka_listener.rs`:
//! confluent-kafka-python (librdkafka) producing idempotently with every codec, aiokafka
//! (asyncio, its own protocol code) producing, consuming and in a group of two, kafka-python's
//! committed offsets across a consumer restart, and records crossing between rill's gRPC
//! clients and a Kafka client with keys, headers and timestamps intact.
//!
//! The Python clients come from the venv `cargo xtask ci` creates (`target/python-clients`,
//! or `$RILL_TEST_PYTHON`); a test whose module is missing is skipped with a message.

mod common;

use bytes::Bytes;
use common::*;
use rill_producer::ProducerRecord;

/// confluent-kafka-python: one idempotent producer per codec, then a consumer reading every
/// partition from the start: each record exactly once, in the order it was produced.
const CONFLUENT_CODECS_SCRIPT: &str = r#"
import sys, time
from confluent_kafka import Producer, Consumer, TopicPartition

addr, topic, partitions = sys.argv[1], sys.argv[2], int(sys.argv[3])
codecs = ["none", "gzip", "snappy", "lz4", "zstd"]
N = 300
produced = {}   # partition -> values in the order they were produced
offsets = {}    # partition -> offsets the producer was told, in delivery order
errors = []
def report(err, msg):
    if err is not None:
        errors.append(str(err))
        return
    produced.setdefault(msg.partition(), []).append(msg.value().decode())
    offsets.setdefault(msg.partition(), []).append(msg.offset())
for codec in codecs:
    p = Producer({"bootstrap.servers": addr, "enable.idempotence": True, "acks": "all",
                  "compression.type": codec, "linger.ms": 20, "batch.num.messages": 40,
                  "max.in.flight.requests.per.connection": 5})
    for i in range(N):
        p.produce(topic, key="k%d" % (i % 7), value="%s-%d" % (codec, i),
                  headers=[("codec", codec.encode())], on_delivery=report)
        p.poll(0)
    left = p.flush(60)
    assert left == 0, "%d records of %s not delivered" % (left, codec)
assert not errors, errors
for part, offs in offsets.items():
    assert offs == sorted(offs) and len(set(offs)) == len(offs), (part, offs)
total = N * len(codecs)
assert sum(len(v) for v in produced.values()) == total

c = Consumer({"bootstrap.servers": addr, "group.id": "codecs-reader",
              "enable.auto.commit": False, "auto.offset.reset": "earliest"})
c.assign([TopicPartition(topic, i, 0) for i in range(partitions)])
got = {}
seen = 0
deadline = time.time() + 60
while seen < total and time.time() < deadline:
    m = c.poll(0.5)
    if m is None:
        continue
    if m.error() is not None:
        sys.exit("consume error: %s" % m.error())
    got.setdefault(m.partition(), []).append((m.offset(), m.value().decode()))
    codec = dict(m.headers())["codec"].decode()
    assert m.value().decode().startswith(codec + "-"), (m.value(), codec)
    seen += 1
# Nothing after them: no record twice.
for m in c.consume(num_messages=100, timeout=2):
    if m.error() is None:
        sys.exit("an extra record: %s at %d" % (m.value(), m.offset()))
c.close()
for part, want in produced.items():
    have = got.get(part, [])
    assert [v for _, v in have] == want, "partition %d: %r != %r" % (part, have[:20], want[:20])
    assert [o for o, _ in have] == offsets[part], part
assert seen == total, (seen, total)
print("OK", {p: len(v) for p, v in sorted(got.items())})
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn confluent_kafka_python_produces_idempotently_with_every_codec_exactly_once_in_order() {
    if !have(
        "confluent_kafka",
        "confluent-kafka",
        "as an idempotent producer with every codec",
    ) {
        return;
    }
    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("py-codecs", 3, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    tokio::task::block_in_place(|| {
        run_python_for(
            &cluster,
            "codecs_test.py",
            CONFLUENT_CODECS_SCRIPT,
            &[&addr, "py-codecs", "3"],
            180,
        )
    });
}

/// aiokafka: an idempotent producer (uncompressed, then gzip), a consumer reading it back by
/// assignment, then a group of two members splitting the partitions, committing, and one
/// leaving so the other takes every partition and resumes from the commits.
const AIOKAFKA_SCRIPT: &str = r#"
import sys, asyncio, time
from aiokafka import AIOKafkaProducer, AIOKafkaConsumer, TopicPartition
from aiokafka.structs import OffsetAndMetadata

addr, topic, group, partitions = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
N = 60

async def produce(start, end, compression):
    p = AIOKafkaProducer(bootstrap_servers=addr, enable_idempotence=True, acks="all",
                         compression_type=compression, linger_ms=10)
    await p.start()
    try:
        futs = [await p.send(topic, key=b"k%d" % i, value=b"aio-%d" % i,
                             headers=[("n", b"%d" % i)]) for i in range(start, end)]
        metas = [await f for f in futs]
    finally:
        await p.stop()
    return metas

def member(name):
    return AIOKafkaConsumer(topic, bootstrap_servers=addr, group_id=group, client_id=name,
                            auto_offset_reset="earliest", enable_auto_commit=False,
                            session_timeout_ms=6000, heartbeat_interval_ms=500,
                            max_poll_interval_ms=30000)

async def main():
    metas = await produce(0, N // 2, None) + await produce(N // 2, N, "gzip")
    assert len(metas) == N

    # Read back by assignment: every record once, its header with it.
    c = AIOKafkaConsumer(bootstrap_servers=addr, enable_auto_commit=False,
                         auto_offset_reset="earliest")
    await c.start()
    c.assign([TopicPartition(topic, i) for i in range(partitions)])
    got = []
    deadline = time.time() + 30
    while len(got) < N and time.time() < deadline:
        for tp, msgs in (await c.getmany(timeout_ms=500)).items():
            for m in msgs:
                assert dict(m.headers)["n"] == m.value[4:], (m.headers, m.value)
                got.append(m.value.decode())
    await c.stop()
    assert sorted(got) == sorted("aio-%d" % i for i in range(N)), got

    # A group of two.
    a, b = member("aio-a"), member("aio-b")
    await a.start()
    await b.start()
    seen = []
    def parts(m):
        return {tp.partition for tp in m.assignment()}
    async def poll(members, until, what, timeout=45):
        deadline = time.time() + timeout
        while not until():
            if time.time() > deadline:
                sys.exit("timed out: %s (a=%s b=%s, %d seen)" % (what, parts(a), parts(b), len(seen)))
            for m in members:
                for tp, msgs in (await m.getmany(timeout_ms=100)).items():
                    for r in msgs:
                        assert tp.partition in parts(m), "a record of a partition not owned"
                        seen.append((m, r))
    await poll([a, b], lambda: parts(a) and parts(b) and not (parts(a) & parts(b))
               and (parts(a) | parts(b)) == set(range(partitions)) and len(seen) >= N,
               "two members splitting the partitions and reading every record")
    values = sorted(r.value.decode() for _, r in seen)
    assert values == sorted("aio-%d" % i for i in range(N)), values
    for m in (a, b):
        await m.commit()
    # A leaves; B takes every partition and, with everything committed, reads nothing old.
    await a.stop()
    seen.clear()
    await poll([b], lambda: parts(b) == set(range(partitions)), "B owning every partition")
    assert not seen, [r.value for _, r in seen]
    await produce(N, N + 10, "gzip")
    await poll([b], lambda: len(seen) >= 10, "B reading the 10 new records")
    assert sorted(r.value.decode() for _, r in seen) == sorted("aio-%d" % i for i in range(N, N + 10)), \
        [r.value for _, r in seen]
    await b.commit()
    committed = [await b.committed(TopicPartition(topic, i)) for i in range(partitions)]
    assert sum(committed) == N + 10, committed
    await b.stop()
    print("OK")

asyncio.run(main())
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aiokafka_produces_consumes_and_runs_a_group_of_two() {
    if !have(
        "aiokafka",
        "aiokafka",
        "as a producer, a consumer and a group of two",
    ) {
        return;
    }
    let cluster = Cluster::start_with_kafka(1, 1, &["group.initial.rebalance.delay.ms=300"]).await;
    cluster.create_topic("aio", 4, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    tokio::task::block_in_place(|| {
        run_python_for(
            &cluster,
            "aiokafka_test.py",
            AIOKAFKA_SCRIPT,
            &[&addr, "aio", "aio-g", "4"],
            180,
        )
    });
}

/// kafka-python: a member reads part of a partition and commits where it stopped, closes; the
/// next member of the group starts at the commit (not at `auto_offset_reset`), reads the rest and
/// commits; a third finds nothing new and the committed offset at the end.
const KAFKA_PYTHON_RESTART_SCRIPT: &str = r#"
import sys, time
from kafka import KafkaProducer, KafkaConsumer, TopicPartition
from kafka.structs import OffsetAndMetadata

addr, topic, group = sys.argv[1], sys.argv[2], sys.argv[3]
tp = TopicPartition(topic, 0)
p = KafkaProducer(bootstrap_servers=addr, acks="all")
for i in range(20):
    p.send(topic, key=b"k%d" % i, value=b"v%d" % i, partition=0)
p.flush(30)
p.close()

def member():
    c = KafkaConsumer(bootstrap_servers=addr, group_id=group, auto_offset_reset="earliest",
                      enable_auto_commit=False, session_timeout_ms=6000,
                      heartbeat_interval_ms=500)
    c.subscribe([topic])
    return c
def read(c, n, timeout=30):
    out = []
    deadline = time.time() + timeout
    while len(out) < n and time.time() < deadline:
        for _, msgs in c.poll(timeout_ms=300).items():
            out.extend(msgs)
    return out
def offset_and_metadata(offset):
    fields = len(OffsetAndMetadata._fields)  # (offset, metadata[, leader_epoch])
    return OffsetAndMetadata(offset, "restart-test", *([-1] * (fields - 2)))

first = member()
got = read(first, 12)
assert len(got) >= 12, len(got)
assert [m.offset for m in got[:12]] == list(range(12)), [m.offset for m in got]
first.commit({tp: offset_and_metadata(12)})
assert first.committed(tp) == 12, first.committed(tp)
first.close()

second = member()
got = read(second, 8)
assert [m.value for m in got] == [b"v%d" % i for i in range(12, 20)], [(m.offset, m.value) for m in got]
assert got[0].key == b"k12"
second.commit()
second.close()

third = member()
extra = read(third, 1, timeout=5)
assert not extra, [(m.offset, m.value) for m in extra]
assert third.committed(tp) == 20, third.committed(tp)
third.close()
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_python_resumes_from_committed_offsets_after_a_consumer_restart() {
    if !have(
        "kafka",
        "kafka-python",
        "as a group member restarted mid-partition",
    ) {
        return;
    }
    let cluster = Cluster::start_with_kafka(1, 1, &["group.initial.rebalance.delay.ms=100"]).await;
    cluster.create_topic("py-restart", 1, 1, &[]).await;
    let addr = kafka_addr(&cluster);
    tokio::task::block_in_place(|| {
        run_python_for(
            &cluster,
            "restart_test.py",
            KAFKA_PYTHON_RESTART_SCRIPT,
            &[&addr, "py-restart", "py-restart-g"],
            120,
        )
    });
}

/// confluent-kafka-python's side of the crossover: `consume N` prints every record of the topic
/// as `REC key|value|timestamp type|timestamp|headers` (headers `k=v` joined by `,`, a null
/// value as `k`), `produce` sends records with keys, headers (a repeated key, a null value) and
/// timestamps.
const CROSSOVER_SCRIPT: &str = r#"
import sys, time
from confluent_kafka import Producer, Consumer, TopicPartition

addr, topic, partitions, mode = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
def headers(hs):
    return ",".join(k if v is None else "%s=%s" % (k, v.decode()) for k, v in (hs or []))
if mode == "consume":
    n = int(sys.argv[5])
    c = Consumer({"bootstrap.servers": addr, "group.id": "crossover-reader",
                  "enable.auto.commit": False})
    c.assign([TopicPartition(topic, i, 0) for i in range(partitions)])
    got = 0
    deadline = time.time() + 30
    while got < n and time.time() < deadline:
        m = c.poll(0.5)
        if m is None:
            continue
        if m.error() is not None:
            sys.exit("consume error: %s" % m.error())
        ts_type, ts = m.timestamp()
        print("REC %s|%s|%d|%d|%s" % (m.key().decode(), m.value().decode(), ts_type, ts,
                                      headers(m.headers())))
        got += 1
    c.close()
    assert got == n, got
else:
    p = Producer({"bootstrap.servers": addr, "enable.idempotence": True})
    for i in range(5):
        p.produce(topic, key="py-%d" % i, value="from-kafka-%d" % i,
                  headers=[("trace", b"py-%d" % i), ("dup", b"a"), ("dup", b"b"), ("none", None)],
                  timestamp=1_600_000_100_000 + i)
    assert p.flush(30) == 0
print("OK")
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_headers_and_timestamps_cross_between_grpc_and_kafka_clients() {
    if !have(
        "confluent_kafka",
        "confluent-kafka",
        "on the Kafka side of the gRPC/Kafka crossover",
    ) {
        return;
    }
    let cluster = Cluster::start_with_kafka(1, 1, &[]).await;
    cluster.create_topic("crossover", 2, 1, &[]).await;
    let addr = kafka_addr(&cluster);

    // rill's gRPC producer → confluent-kafka-python.
    let records = (0..5)
        .map(|i| {
            let mut record = ProducerRecord::new(
                "crossover",
                Some(Bytes::from(format!("grpc-{i}"))),
                Bytes::from(format!("from-grpc-{i}")),
            );
            record.headers = vec![
                ("trace".into(), Some(Bytes::from(format!("grpc-{i}")))),
                ("dup".into(), Some(Bytes::from_static(b"a"))),
                ("dup".into(), Some(Bytes::from_static(b"b"))),
                ("none".into(), None),
            ];
            record.timestamp = Some(1_600_000_000_000 + i);
            record
        })
        .collect();
    produce_grpc(&cluster, records).await;
    let out = tokio::task::block_in_place(|| {
        run_python_for(
            &cluster,
            "crossover.py",
            CROSSOVER_SCRIPT,
            &[&addr, "crossover", "2", "consume", "5"],
            60,
        )
    });
    let mut got: Vec<&str> = out.lines().filter_map(|l| l.strip_prefix("REC ")).collect();
    got.sort();
    // Timestamp type 1: CreateTime, the producer's.
    let want: Vec<String> = (0..5)
        .map(|i| {
            format!(
                "grpc-{i}|from-grpc-{i}|1|{}|trace=grpc-{i},dup=a,dup=b,none",
                1_600_000_000_000i64 + i
            )
        })
        .collect();
    assert_eq!(got, want, "what confluent-kafka-python read:\n{out}");

    // confluent-kafka-python → rill's gRPC consumer.
    tokio::task::block_in_place(|| {
        run_python_for(
            &cluster,
            "crossover.py",
            CROSSOVER_SCRIPT,
            &[&addr, "crossover", "2", "produce"],
            60,
        )
    });
    let seen = consume_grpc(&cluster, "crossover", 10).await;
    let mut from_kafka: Vec<_> = seen
        .iter()
        .filter(|r| r.key.as_deref().is_some_and(|k| k.starts_with(b"py-")))
        .collect();
    from_kafka.sort_by_key(|r| r.key.clone());
    assert_eq!(from_kafka.len(), 5, "{seen:?}");
    for (i, r) in from_kafka.iter().enumerate() {
        assert_eq!(r.key.as_deref(), Some(format!("py-{i}").as_bytes()));
        assert_eq!(
            r.value.as_deref(),
            Some(format!("from-kafka-{i}").as_bytes())
        );
        assert_eq!(r.timestamp, 1_600_000_100_000 + i as i64);
        assert_eq!(
            r.headers,
            vec![
                ("trace".to_string(), Some(Bytes::from(format!("py-{i}")))),
                ("dup".to_string(), Some(Bytes::from_static(b"a"))),
                ("dup".to_string(), Some(Bytes::from_static(b"b"))),
                ("none".to_string(), None),
            ]
        );
    }
    assert_eq!(seen.len(), 10, "each record once: {seen:?}");
}

/// Forwards Kafka connections from `listener` to `upstream`, keeping every request frame the
/// clients send (without its length).
async fn recording_proxy(
    listener: tokio::net::TcpListener,
    upstream: String,
    frames: std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        let Ok((client, _)) = listener.accept().await else {
            return;
        };
        let upstream = upstream.clone();
        let frames = frames.clone();
        tokio::spawn(async move {
            let Ok(server) = tokio::net::TcpStream::connect(&upstream).await else {
                return;
            };
            let (mut cr, mut cw) = client.into_split();
            let (mut sr, mut sw) = server.into_split();
            tokio::spawn(async move {
                let _ = tokio::io::copy(&mut sr, &mut cw).await;
            });
            loop {
                let mut len = [0u8; 4];
                if cr.read_exact(&mut len).await.is_err() {
                    return;
                }
                let mut frame = vec![0u8; i32::from_be_bytes(len).max(0) as usize];
                if cr.read_exact(&mut frame).await.is_err() {
                    return;
                }
                if sw.write_all(&len).await.is_err() || sw.write_all(&frame).await.is_err() {
                    return;
                }
                frames.lock().unwrap().push(frame);
            }
        });
    }
}

/// Refreshes the captured seeds of the `kafka_request` fuzz target: runs kcat and the three
/// Python clients through a recording proxy (the broker advertises the proxy as its Kafka
/// endpoint, so every connection passes it) and writes up to two frames per API and version,
/// under 64 KiB, to `fuzz/seeds/kafka_request/captured-*`. Run by hand:
/// `cargo test -p rill-broker --test kafka_clients -- --ignored capture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "writes fuzz/seeds/kafka_request; run by hand to refresh the captured seeds"]
async fn capture_fuzz_seeds_from_real_clients() {
    let proxy = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap().to_string();
    let advertised = format!("kafka.advertised.listeners={proxy_addr}");
    let cluster =
        Cluster::start_with_kafka(1, 1, &[&advertised, "group.initial.rebalance.delay.ms=100"])
            .await;
    let frames = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    tokio::spawn(recording_proxy(proxy, kafka_addr(&cluster), frames.clone()));
    cluster.create_topic("py-codecs", 3, 1, &[]).await;
    cluster.create_topic("py-restart", 1, 1, &[]).await;
    cluster.create_topic("aio", 4, 1, &[]).await;
    cluster.create_topic("crossover", 2, 1, &[]).await;
    let a = proxy_addr.as_str();
    tokio::task::block_in_place(|| {
        let kcat = |args: &[&str], input: &str| {
            use std::io::Write;
            let mut child = std::process::Command::new("timeout")
                .args(["30", "kcat"])
                .args(args)
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::null())
                .spawn()
                .unwrap();
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
            child.wait().unwrap();
        };
        kcat(&["-L", "-b", a], "");
        for codec in ["none", "gzip", "snappy", "lz4", "zstd"] {
            kcat(
                &[
                    "-P",
                    "-b",
                    a,
                    "-t",
                    "py-codecs",
                    "-K:",
                    "-z",
                    codec,
                    "-H",
                    "h=v",
                ],
                "k1:v1\nk2:v2\n",
            );
        }
        kcat(
            &["-C", "-b", a, "-t", "py-codecs", "-e", "-o", "beginning"],
            "",
        );
        kcat(
            &[
                "-b",
                a,
                "-G",
                "kcat-g",
                "py-codecs",
                "-e",
                "-o",
                "beginning",
                "-X",
                "enable.partition.eof=true",
            ],
            "",
        );
        let scripts: [(&str, &str, Vec<&str>); 4] = [
            (
                "codecs.py",
                CONFLUENT_CODECS_SCRIPT,
                vec![a, "py-codecs", "3"],
            ),
            (
                "restart.py",
                KAFKA_PYTHON_RESTART_SCRIPT,
                vec![a, "py-restart", "py-restart-g"],
            ),
            ("aio.py", AIOKAFKA_SCRIPT, vec![a, "aio", "aio-g", "4"]),
            (
                "cross.py",
                CROSSOVER_SCRIPT,
                vec![a, "crossover", "2", "produce"],
            ),
        ];
        for (name, script, args) in scripts {
            // A script that fails here (the records of kcat's runs above) still sent its frames.
            let path = cluster.brokers[0].dir.join(name);
            std::fs::write(&path, script).unwrap();
            let _ = std::process::Command::new("timeout")
                .arg("120")
                .arg(python3())
                .arg(&path)
                .args(&args)
                .output();
        }
    });
    let frames = frames.lock().unwrap().clone();
    let dir =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../fuzz/seeds/kafka_request");
    std::fs::create_dir_all(&dir).unwrap();
    let mut kept = std::collections::BTreeMap::<(i16, i16), usize>::new();
    for frame in &frames {
        if frame.len() < 8 || frame.len() > 64 * 1024 {
            continue;
        }
        let key = i16::from_be_bytes([frame[0], frame[1]]);
        let version = i16::from_be_bytes([frame[2], frame[3]]);
        let n = kept.entry((key, version)).or_default();
        if *n >= 2 {
            continue;
        }
        *n += 1;
        let api = kafka_protocol::messages::ApiKey::try_from(key)
            .map(|k| format!("{k:?}"))
            .unwrap_or_else(|_| key.to_string());
        std::fs::write(dir.join(format!("captured-{api}-v{version}-{n}")), frame).unwrap();
    }
    eprintln!(
        "{} frames captured, {} kept: {:?}",
        frames.len(),
        kept.values().sum::<usize>(),
        kept.keys().collect::<Vec<_>>()
    );
    assert!(kept.len() > 10);
}
