//! The Kafka listener's request decoder ([`decode_request`]) against hostile frames: the
//! CI-sized counterpart of the `kafka_request` fuzz target (`fuzz/`, `cargo xtask fuzz`).
//!
//! Seeds are real requests encoded by the `kafka-protocol` crate, one per API and version the
//! listener reads, plus the files of `fuzz/seeds/kafka_request` (captured and generated frames)
//! and `fuzz/regressions/kafka_request` (inputs a fuzz run once broke). Every seed must decode;
//! then thousands of deterministic mutations of them — truncations, bit flips, length fields
//! inflated to huge values, every version and a few foreign API keys — must be refused or
//! decoded, never panic, and never allocate more than a bound proportional to the frame (a
//! counting global allocator checks it). `RILL_WRITE_FUZZ_SEEDS=1` writes the encoded seeds to
//! `fuzz/seeds/kafka_request`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::path::{Path, PathBuf};

use bytes::{Bytes, BytesMut};
use kafka_protocol::messages::consumer_group_heartbeat_request::TopicPartitions;
use kafka_protocol::messages::create_partitions_request::{
    CreatePartitionsAssignment, CreatePartitionsTopic,
};
use kafka_protocol::messages::create_topics_request::{
    CreatableReplicaAssignment, CreatableTopic, CreatableTopicConfig,
};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic, ForgottenTopic};
use kafka_protocol::messages::incremental_alter_configs_request::{
    AlterConfigsResource, AlterableConfig,
};
use kafka_protocol::messages::join_group_request::JoinGroupRequestProtocol;
use kafka_protocol::messages::leave_group_request::MemberIdentity;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::offset_fetch_request::OffsetFetchRequestTopic;
use kafka_protocol::messages::offset_for_leader_epoch_request::{
    OffsetForLeaderPartition, OffsetForLeaderTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::sync_group_request::SyncGroupRequestAssignment;
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Encodable, StrBytes};
use rill_broker::kafka::decode_request;
use rill_protocol::record_batch::{Compression, RecordBatchBuilder, RecordHeader};

/// Counts, on the thread that asks, the largest single allocation and the peak of live bytes
/// while tracking is on.
struct Counting;

thread_local! {
    static TRACKING: Cell<bool> = const { Cell::new(false) };
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

/// A single allocation above this while decoding is refused (the test aborts with a message)
/// rather than attempted: without the guard, a declared array length of 2^31 asks for ~150 GB.
const REFUSED: usize = 1 << 30;

/// Notes an allocation; false when it must be refused.
fn note_alloc(size: usize) -> bool {
    TRACKING
        .try_with(|t| {
            if t.get() {
                if size > REFUSED {
                    use std::io::Write;
                    let _ = std::io::stderr().write_all(
                        b"kafka_decode: decode_request asked for more than 1 GiB at once \
                      (an array length the guard let through); aborting\n",
                    );
                    return false;
                }
                LARGEST.with(|l| l.set(l.get().max(size)));
                LIVE.with(|live| {
                    live.set(live.get() + size as isize);
                    PEAK.with(|p| p.set(p.get().max(live.get())));
                });
            }
            true
        })
        .unwrap_or(true)
}

fn note_free(size: usize) {
    let _ = TRACKING.try_with(|t| {
        if t.get() {
            LIVE.with(|live| live.set(live.get() - size as isize));
        }
    });
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !note_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        note_free(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !note_alloc(layout.size()) {
            return std::ptr::null_mut();
        }
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !note_alloc(new_size) {
            return std::ptr::null_mut();
        }
        note_free(layout.size());
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// What one decode allocated: (largest single allocation, peak live bytes).
fn decode_counting(frame: &[u8]) -> (bool, usize, isize) {
    let input = Bytes::copy_from_slice(frame);
    LIVE.with(|l| l.set(0));
    PEAK.with(|p| p.set(0));
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    let ok = std::panic::catch_unwind(|| decode_request(input).is_ok());
    TRACKING.with(|t| t.set(false));
    let ok = ok.unwrap_or_else(|_| panic!("decode_request panicked on {}", hex::encode(frame)));
    (ok, LARGEST.with(Cell::get), PEAK.with(Cell::get))
}

/// The most a frame of `len` bytes may make the decoder allocate at once (and hold): decoded
/// structs are larger than their wire form (an array element of a few bytes becomes a struct of
/// ~100), but never more than a constant factor of it.
fn bound(len: usize) -> usize {
    64 * 1024 + 512 * len
}

fn frame<T: Encodable>(key: ApiKey, version: i16, body: &T) -> Option<Bytes> {
    let mut buf = BytesMut::new();
    RequestHeader::default()
        .with_request_api_key(key as i16)
        .with_request_api_version(version)
        .with_correlation_id(7)
        .with_client_id(Some(StrBytes::from_static_str("rill-seed")))
        .encode(&mut buf, key.request_header_version(version))
        .ok()?;
    body.encode(&mut buf, version).ok()?;
    Some(buf.freeze())
}

fn s(v: &'static str) -> StrBytes {
    StrBytes::from_static_str(v)
}

fn topic(name: &'static str) -> TopicName {
    TopicName(s(name))
}

fn group(name: &'static str) -> GroupId {
    GroupId(s(name))
}

fn batch() -> Bytes {
    let mut b = RecordBatchBuilder::new(Compression::None);
    let headers = [RecordHeader {
        key: b"h",
        value: Some(b"v".as_slice()),
    }];
    b.append(
        1_700_000_000_000,
        Some(b"key-1"),
        Some(b"value-1"),
        &headers,
    );
    b.append(1_700_000_000_001, None, Some(b"value-2"), &[]);
    b.build().unwrap()
}

/// One request per API and version the listener reads (versions a body cannot be written at
/// are skipped), named `<api>-v<version>`.
fn encoded_seeds() -> Vec<(String, Bytes)> {
    let mut out = Vec::new();
    let mut add =
        |key: ApiKey, versions: std::ops::RangeInclusive<i16>, f: &dyn Fn(i16) -> Option<Bytes>| {
            for v in versions {
                if let Some(b) = f(v) {
                    out.push((format!("{key:?}-v{v}"), b));
                }
            }
        };
    add(ApiKey::ApiVersions, 0..=3, &|v| {
        let mut r = ApiVersionsRequest::default();
        if v >= 3 {
            r = r
                .with_client_software_name(s("rill-seed"))
                .with_client_software_version(s("1.0"));
        }
        frame(ApiKey::ApiVersions, v, &r)
    });
    add(ApiKey::Metadata, 0..=13, &|v| {
        let t = MetadataRequestTopic::default().with_name(Some(topic("orders")));
        let r = MetadataRequest::default()
            .with_topics(Some(vec![t.clone(), t.with_name(Some(topic("b")))]))
            .with_allow_auto_topic_creation(v >= 4);
        frame(ApiKey::Metadata, v, &r)
    });
    add(ApiKey::Produce, 3..=12, &|v| {
        let p = PartitionProduceData::default()
            .with_index(1)
            .with_records(Some(batch()));
        let r = ProduceRequest::default()
            .with_acks(-1)
            .with_timeout_ms(30_000)
            .with_topic_data(vec![
                TopicProduceData::default()
                    .with_name(topic("orders"))
                    .with_partition_data(vec![p.clone(), p.with_index(2)]),
            ]);
        frame(ApiKey::Produce, v, &r)
    });
    add(ApiKey::Fetch, 4..=12, &|v| {
        let mut p = FetchPartition::default()
            .with_partition(0)
            .with_fetch_offset(42)
            .with_partition_max_bytes(1 << 20);
        if v >= 9 {
            p = p.with_current_leader_epoch(3);
        }
        let mut r = FetchRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_max_wait_ms(500)
            .with_min_bytes(1)
            .with_max_bytes(50 << 20)
            .with_topics(vec![
                FetchTopic::default()
                    .with_topic(topic("orders"))
                    .with_partitions(vec![p.clone(), p.with_partition(1)]),
            ]);
        if v >= 7 {
            r = r
                .with_session_id(12)
                .with_session_epoch(2)
                .with_forgotten_topics_data(vec![
                    ForgottenTopic::default()
                        .with_topic(topic("gone"))
                        .with_partitions(vec![0, 1]),
                ]);
        }
        if v >= 11 {
            r = r.with_rack_id(s("rack-a"));
        }
        frame(ApiKey::Fetch, v, &r)
    });
    add(ApiKey::ListOffsets, 1..=10, &|v| {
        let r = ListOffsetsRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                ListOffsetsTopic::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![
                        ListOffsetsPartition::default()
                            .with_partition_index(0)
                            .with_timestamp(-2),
                    ]),
            ]);
        frame(ApiKey::ListOffsets, v, &r)
    });
    add(ApiKey::FindCoordinator, 0..=6, &|v| {
        let r = if v >= 4 {
            FindCoordinatorRequest::default().with_coordinator_keys(vec![s("g1"), s("g2")])
        } else {
            FindCoordinatorRequest::default().with_key(s("g1"))
        };
        frame(ApiKey::FindCoordinator, v, &r)
    });
    add(ApiKey::JoinGroup, 0..=9, &|v| {
        let r = JoinGroupRequest::default()
            .with_group_id(group("g1"))
            .with_session_timeout_ms(10_000)
            .with_rebalance_timeout_ms(if v >= 1 { 30_000 } else { -1 })
            .with_member_id(s("m-1"))
            .with_protocol_type(s("consumer"))
            .with_protocols(vec![
                JoinGroupRequestProtocol::default()
                    .with_name(s("range"))
                    .with_metadata(Bytes::from_static(&[
                        0, 1, 0, 0, 0, 1, 0, 6, b'o', b'r', b'd', b'e', b'r', b's', 0, 0, 0, 0,
                    ])),
            ]);
        frame(ApiKey::JoinGroup, v, &r)
    });
    add(ApiKey::SyncGroup, 0..=5, &|v| {
        let r = SyncGroupRequest::default()
            .with_group_id(group("g1"))
            .with_generation_id(3)
            .with_member_id(s("m-1"))
            .with_assignments(vec![
                SyncGroupRequestAssignment::default()
                    .with_member_id(s("m-1"))
                    .with_assignment(Bytes::from_static(&[
                        0, 1, 0, 0, 0, 1, 0, 1, b't', 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0,
                    ])),
            ]);
        frame(ApiKey::SyncGroup, v, &r)
    });
    add(ApiKey::Heartbeat, 0..=4, &|v| {
        let r = HeartbeatRequest::default()
            .with_group_id(group("g1"))
            .with_generation_id(3)
            .with_member_id(s("m-1"));
        frame(ApiKey::Heartbeat, v, &r)
    });
    add(ApiKey::LeaveGroup, 0..=5, &|v| {
        let r = if v >= 3 {
            LeaveGroupRequest::default()
                .with_group_id(group("g1"))
                .with_members(vec![MemberIdentity::default().with_member_id(s("m-1"))])
        } else {
            LeaveGroupRequest::default()
                .with_group_id(group("g1"))
                .with_member_id(s("m-1"))
        };
        frame(ApiKey::LeaveGroup, v, &r)
    });
    add(ApiKey::ListGroups, 0..=5, &|v| {
        let mut r = ListGroupsRequest::default();
        if v >= 4 {
            r = r.with_states_filter(vec![s("Stable")]);
        }
        if v >= 5 {
            r = r.with_types_filter(vec![s("classic")]);
        }
        frame(ApiKey::ListGroups, v, &r)
    });
    add(ApiKey::DescribeGroups, 0..=6, &|v| {
        let r = DescribeGroupsRequest::default().with_groups(vec![group("g1"), group("g2")]);
        frame(ApiKey::DescribeGroups, v, &r)
    });
    add(ApiKey::DeleteGroups, 0..=2, &|v| {
        let r = DeleteGroupsRequest::default().with_groups_names(vec![group("g1")]);
        frame(ApiKey::DeleteGroups, v, &r)
    });
    add(ApiKey::OffsetCommit, 2..=8, &|v| {
        let r = OffsetCommitRequest::default()
            .with_group_id(group("g1"))
            .with_generation_id_or_member_epoch(3)
            .with_member_id(s("m-1"))
            .with_topics(vec![
                OffsetCommitRequestTopic::default()
                    .with_name(topic("orders"))
                    .with_partitions(vec![
                        OffsetCommitRequestPartition::default()
                            .with_partition_index(0)
                            .with_committed_offset(42)
                            .with_committed_metadata(Some(s(""))),
                    ]),
            ]);
        frame(ApiKey::OffsetCommit, v, &r)
    });
    add(ApiKey::OffsetFetch, 1..=7, &|v| {
        let r = OffsetFetchRequest::default()
            .with_group_id(group("g1"))
            .with_topics(Some(vec![
                OffsetFetchRequestTopic::default()
                    .with_name(topic("orders"))
                    .with_partition_indexes(vec![0, 1, 2]),
            ]));
        frame(ApiKey::OffsetFetch, v, &r)
    });
    add(ApiKey::InitProducerId, 0..=4, &|v| {
        let mut r = InitProducerIdRequest::default().with_transaction_timeout_ms(60_000);
        if v >= 3 {
            r = r.with_producer_id(ProducerId(-1)).with_producer_epoch(-1);
        }
        frame(ApiKey::InitProducerId, v, &r)
    });
    add(ApiKey::OffsetForLeaderEpoch, 2..=4, &|v| {
        let r = OffsetForLeaderEpochRequest::default()
            .with_replica_id(BrokerId(-1))
            .with_topics(vec![
                OffsetForLeaderTopic::default()
                    .with_topic(topic("orders"))
                    .with_partitions(vec![
                        OffsetForLeaderPartition::default()
                            .with_partition(0)
                            .with_current_leader_epoch(2)
                            .with_leader_epoch(1),
                    ]),
            ]);
        frame(ApiKey::OffsetForLeaderEpoch, v, &r)
    });
    add(ApiKey::CreateTopics, 2..=7, &|v| {
        let r = CreateTopicsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![
                CreatableTopic::default()
                    .with_name(topic("new"))
                    .with_num_partitions(3)
                    .with_replication_factor(1)
                    .with_configs(vec![
                        CreatableTopicConfig::default()
                            .with_name(s("cleanup.policy"))
                            .with_value(Some(s("compact"))),
                    ]),
                CreatableTopic::default()
                    .with_name(topic("placed"))
                    .with_num_partitions(-1)
                    .with_replication_factor(-1)
                    .with_assignments(vec![
                        CreatableReplicaAssignment::default()
                            .with_partition_index(0)
                            .with_broker_ids(vec![BrokerId(1), BrokerId(2)]),
                    ]),
            ]);
        frame(ApiKey::CreateTopics, v, &r)
    });
    add(ApiKey::DeleteTopics, 1..=6, &|v| {
        let r = if v >= 6 {
            DeleteTopicsRequest::default().with_topics(vec![
                DeleteTopicState::default().with_name(Some(topic("old"))),
            ])
        } else {
            DeleteTopicsRequest::default().with_topic_names(vec![topic("old")])
        };
        frame(ApiKey::DeleteTopics, v, &r.with_timeout_ms(30_000))
    });
    add(ApiKey::CreatePartitions, 0..=3, &|v| {
        let r = CreatePartitionsRequest::default()
            .with_timeout_ms(30_000)
            .with_topics(vec![
                CreatePartitionsTopic::default()
                    .with_name(topic("orders"))
                    .with_count(6)
                    .with_assignments(Some(vec![
                        CreatePartitionsAssignment::default().with_broker_ids(vec![BrokerId(1)]),
                    ])),
            ]);
        frame(ApiKey::CreatePartitions, v, &r)
    });
    add(ApiKey::DescribeConfigs, 1..=4, &|v| {
        let r = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("orders"))
                .with_configuration_keys(Some(vec![s("retention.ms")])),
            DescribeConfigsResource::default()
                .with_resource_type(4)
                .with_resource_name(s("1")),
        ]);
        frame(ApiKey::DescribeConfigs, v, &r)
    });
    add(ApiKey::IncrementalAlterConfigs, 0..=1, &|v| {
        let r = IncrementalAlterConfigsRequest::default().with_resources(vec![
            AlterConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(s("orders"))
                .with_configs(vec![
                    AlterableConfig::default()
                        .with_name(s("retention.ms"))
                        .with_config_operation(0)
                        .with_value(Some(s("1000"))),
                ]),
        ]);
        frame(ApiKey::IncrementalAlterConfigs, v, &r)
    });
    add(ApiKey::ConsumerGroupHeartbeat, 0..=1, &|v| {
        let r = ConsumerGroupHeartbeatRequest::default()
            .with_group_id(group("g1"))
            .with_member_id(s("m-1"))
            .with_member_epoch(0)
            .with_rebalance_timeout_ms(30_000)
            .with_subscribed_topic_names(Some(vec![topic("orders")]))
            .with_topic_partitions(Some(vec![
                TopicPartitions::default()
                    .with_topic_id(uuid::Uuid::from_u128(0x1234))
                    .with_partitions(vec![0, 1]),
            ]));
        frame(ApiKey::ConsumerGroupHeartbeat, v, &r)
    });
    add(ApiKey::DescribeCluster, 0..=2, &|v| {
        let r = DescribeClusterRequest::default().with_include_cluster_authorized_operations(true);
        frame(ApiKey::DescribeCluster, v, &r)
    });
    out
}

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The files of `fuzz/<dir>/kafka_request`, if any.
fn files(dir: &str) -> Vec<(String, Bytes)> {
    let Ok(entries) = std::fs::read_dir(workspace().join("fuzz").join(dir).join("kafka_request"))
    else {
        return Vec::new();
    };
    let mut out: Vec<(String, Bytes)> = entries
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                format!("{dir}/{}", e.file_name().to_string_lossy()),
                Bytes::from(std::fs::read(e.path()).unwrap()),
            )
        })
        .collect();
    out.sort();
    out
}

/// A small deterministic generator (xorshift), so every run tries the same mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// Deterministic mutations of `seed`, each handed to `f`.
fn mutations(seed: &[u8], rng: &mut Rng, mut f: impl FnMut(&[u8])) {
    let n = seed.len();
    // Truncations: every length of the header and the first bytes, then a stride.
    for len in (0..n.min(64)).chain((64..n).step_by((n / 64).max(1))) {
        f(&seed[..len]);
    }
    // Single bit flips at every position (each bit for the header, one for the body).
    let mut m = seed.to_vec();
    for i in 0..n {
        let bits: &[u8] = if i < 12 { &[0, 1, 7] } else { &[(i % 8) as u8] };
        for &bit in bits {
            m[i] ^= 1 << bit;
            f(&m);
            m[i] ^= 1 << bit;
        }
    }
    // Length fields inflated: at each position, a huge or negative int32/int16 or varint.
    const INFLATED: &[&[u8]] = &[
        &[0x7f, 0xff, 0xff, 0xff],
        &[0x00, 0xff, 0xff, 0xff],
        &[0xff, 0xff, 0xff, 0xfe],
        &[0x80, 0x00, 0x00, 0x00],
        &[0x7f, 0xff],
        &[0xff, 0xfe],
        &[0xff, 0xff, 0xff, 0xff, 0x0f],
        &[0xff, 0xff, 0xff, 0x7f],
        &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01],
    ];
    for i in 4..n {
        for ins in INFLATED {
            let mut m = seed.to_vec();
            let end = (i + ins.len()).min(n);
            m[i..end].copy_from_slice(&ins[..end - i]);
            f(&m);
        }
    }
    // Every version (and a few impossible ones) of the same API, and the body under other APIs.
    for v in (-2i16..=20).chain([i16::MAX, i16::MIN]) {
        let mut m = seed.to_vec();
        if m.len() >= 4 {
            m[2..4].copy_from_slice(&v.to_be_bytes());
            f(&m);
        }
    }
    for key in [
        0i16, 1, 3, 8, 9, 10, 11, 19, 20, 32, 44, 60, 68, 74, 1000, -1,
    ] {
        let mut m = seed.to_vec();
        if m.len() >= 2 {
            m[0..2].copy_from_slice(&key.to_be_bytes());
            f(&m);
        }
    }
    // Random multi-byte damage: a few random bytes overwritten, bytes inserted, removed.
    for _ in 0..200 {
        let mut m = seed.to_vec();
        for _ in 0..1 + rng.below(4) {
            match rng.below(3) {
                0 if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m[i] = rng.next() as u8;
                }
                1 => {
                    let i = rng.below(m.len() + 1);
                    m.insert(i, rng.next() as u8);
                }
                _ if !m.is_empty() => {
                    let i = rng.below(m.len());
                    m.remove(i);
                }
                _ => {}
            }
        }
        f(&m);
    }
}

#[test]
fn hostile_request_frames_are_refused_without_panics_or_large_allocations() {
    // The counter counts.
    LARGEST.with(|l| l.set(0));
    TRACKING.with(|t| t.set(true));
    drop(std::hint::black_box(Vec::<u8>::with_capacity(1 << 20)));
    TRACKING.with(|t| t.set(false));
    assert!(LARGEST.with(Cell::get) >= 1 << 20);

    let encoded = encoded_seeds();
    if std::env::var_os("RILL_WRITE_FUZZ_SEEDS").is_some() {
        let dir = workspace().join("fuzz/seeds/kafka_request");
        std::fs::create_dir_all(&dir).unwrap();
        for (name, bytes) in &encoded {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
    }
    let mut seeds = encoded;
    // Files that are not one of the encoded seeds (captured frames, older encodings).
    for (name, bytes) in files("seeds") {
        if !seeds.iter().any(|(_, b)| *b == bytes) {
            seeds.push((name, bytes));
        }
    }
    let regressions = files("regressions");
    assert!(seeds.len() > 100, "only {} seeds", seeds.len());

    // Every seed is a request a client sends: it decodes.
    for (name, bytes) in &seeds {
        let decoded = decode_request(bytes.clone());
        assert!(
            decoded.is_ok(),
            "seed {name} does not decode: {:?}\n{}",
            decoded.err(),
            hex::encode(bytes)
        );
    }

    let mut rng = Rng(0x5eed_1e55_0dd5_eed5);
    let (mut tried, mut decoded) = (0usize, 0usize);
    let mut worst = (0usize, 0usize, String::new());
    for (name, seed) in seeds.iter().chain(&regressions) {
        mutations(seed, &mut rng, |input| {
            let (ok, largest, peak) = decode_counting(input);
            tried += 1;
            decoded += ok as usize;
            let limit = bound(input.len());
            assert!(
                largest <= limit && peak as usize <= limit,
                "decoding a {}-byte mutation of {name} allocated {largest} bytes at once, \
                 {peak} at its peak (bound {limit}): {}",
                input.len(),
                hex::encode(input)
            );
            if largest > worst.0 {
                worst = (largest, input.len(), name.clone());
            }
        });
    }
    eprintln!(
        "{} seeds, {} regressions: {tried} mutated frames, {decoded} of them decoded; \
         largest allocation {} bytes (a {}-byte mutation of {})",
        seeds.len(),
        regressions.len(),
        worst.0,
        worst.1,
        worst.2
    );
    assert!(tried > 10_000);
}
