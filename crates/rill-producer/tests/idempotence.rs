//! The idempotent producer against a fake cluster (one broker that is also the controller) whose
//! partition log checks sequences as a real leader does (duplicates answered with the original
//! offset, gaps refused) and injects failures: requests refused before the append, responses lost
//! after it, producer state lost. Every record must end up in the log exactly once, in send order.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_producer::{DeliveryFuture, Producer, ProducerConfig, ProducerRecord};
use rill_protocol::ErrorCode;
use rill_protocol::proto::broker_server::{Broker, BrokerServer};
use rill_protocol::proto::*;
use rill_protocol::record_batch::batches;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct Faults {
    /// Request numbers (from 1) refused with NOT_LEADER_OR_FOLLOWER before anything is appended.
    refuse: HashSet<u64>,
    /// Request numbers appended, then answered with a timeout (the response is "lost").
    lose_response: HashSet<u64>,
    /// Request numbers lost on the way: answered with a timeout, nothing appended.
    lose_request: HashSet<u64>,
    /// Request numbers refused for good (MESSAGE_TOO_LARGE), nothing appended.
    reject: HashSet<u64>,
    /// Before this request number, the leader forgets every producer (as after an unclean
    /// failover or expiry).
    forget_producers_before: Option<u64>,
    /// How long each produce takes (so requests overlap).
    delay: Duration,
    /// From this request number on, for this long, every request is appended (or recognised
    /// as a duplicate) but its answer is lost: a leader whose acks=all answers stall past
    /// `delivery.timeout.ms` while it keeps appending.
    stall: Option<(u64, Duration)>,
    /// During the stall requests are lost before they reach the log (nothing is appended).
    stall_drops: bool,
}

/// A producer's last batches: (first seq, last seq, first offset).
type RecentBatches = VecDeque<(i32, i32, i64)>;

/// One record in the fake log: value, producer id, epoch, sequence.
type Entry = (String, i64, i16, i32);

#[derive(Default)]
struct State {
    faults: Faults,
    requests: u64,
    in_flight: usize,
    max_in_flight: usize,
    log: Vec<Entry>,
    /// Producer id → (epoch, last five batches as (first seq, last seq, first offset)).
    producers: HashMap<i64, (i16, RecentBatches)>,
    next_producer_id: i64,
    init_requests: Vec<InitProducerIdRequest>,
    /// When the stall of `faults.stall` began.
    stall_began: Option<Instant>,
}

#[derive(Clone)]
struct FakeCluster {
    port: u16,
    state: Arc<Mutex<State>>,
}

type Refusal = (ErrorCode, String);

impl FakeCluster {
    /// Appends one partition's records as a leader with idempotence checks.
    fn append(&self, records: &[u8]) -> Result<i64, Refusal> {
        let mut st = self.state.lock().unwrap();
        let mut first = None;
        for b in batches(records) {
            let b = b.map_err(|e| (ErrorCode::CorruptMessage, e.to_string()))?;
            b.verify_crc()
                .map_err(|e| (ErrorCode::CorruptMessage, e.to_string()))?;
            let h = *b.header();
            let (last_seq, base) = (h.base_sequence + h.last_offset_delta, st.log.len() as i64);
            if h.producer_id >= 0 {
                match st.producers.get(&h.producer_id) {
                    None if h.base_sequence != 0 => {
                        return Err((ErrorCode::UnknownProducerId, "no state".into()));
                    }
                    Some((epoch, _)) if h.producer_epoch < *epoch => {
                        return Err((ErrorCode::InvalidProducerEpoch, "fenced".into()));
                    }
                    Some((epoch, _)) if h.producer_epoch > *epoch && h.base_sequence != 0 => {
                        return Err((ErrorCode::OutOfOrderSequenceNumber, "new epoch".into()));
                    }
                    Some((epoch, recent)) if h.producer_epoch == *epoch => {
                        if let Some(d) = recent
                            .iter()
                            .find(|d| d.0 == h.base_sequence && d.1 == last_seq)
                        {
                            return Ok(d.2);
                        }
                        if recent.back().is_some_and(|d| d.1 + 1 != h.base_sequence) {
                            return Err((ErrorCode::OutOfOrderSequenceNumber, "gap".into()));
                        }
                    }
                    _ => {}
                }
                let entry = st
                    .producers
                    .entry(h.producer_id)
                    .or_insert((h.producer_epoch, VecDeque::new()));
                if entry.0 != h.producer_epoch {
                    *entry = (h.producer_epoch, VecDeque::new());
                }
                entry.1.push_back((h.base_sequence, last_seq, base));
                // As rill's leaders (rill_storage::NUM_BATCHES_TO_RETAIN).
                if entry.1.len() > 64 {
                    entry.1.pop_front();
                }
            }
            for (i, r) in b.records(usize::MAX).unwrap().iter().enumerate() {
                let r = r.unwrap();
                let v = String::from_utf8(r.value.unwrap().to_vec()).unwrap();
                let seq = if h.base_sequence < 0 {
                    -1
                } else {
                    h.base_sequence + i as i32
                };
                st.log.push((v, h.producer_id, h.producer_epoch, seq));
            }
            first.get_or_insert(base);
        }
        Ok(first.unwrap_or(-1))
    }
}

#[tonic::async_trait]
impl Broker for FakeCluster {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let (n, delay) = {
            let mut st = self.state.lock().unwrap();
            st.requests += 1;
            st.in_flight += 1;
            st.max_in_flight = st.max_in_flight.max(st.in_flight);
            if st.faults.forget_producers_before == Some(st.requests) {
                st.producers.clear();
            }
            (st.requests, st.faults.delay)
        };
        tokio::time::sleep(delay).await;
        let (refuse, lose, drop) = {
            let mut st = self.state.lock().unwrap();
            let stalled = match st.faults.stall {
                Some((from, _)) if n == from => {
                    st.stall_began = Some(Instant::now());
                    true
                }
                Some((_, d)) => st.stall_began.is_some_and(|t| t.elapsed() < d),
                None => false,
            };
            (
                st.faults.refuse.contains(&n),
                st.faults.lose_response.contains(&n) || stalled,
                (stalled && st.faults.stall_drops) || st.faults.lose_request.contains(&n),
            )
        };
        if drop {
            self.state.lock().unwrap().in_flight -= 1;
            return Err(Status::deadline_exceeded("injected: request lost"));
        }
        let mut topics = Vec::new();
        for t in request.into_inner().topics {
            let mut partitions = Vec::new();
            for p in t.partitions {
                let mut r = PartitionProduceResponse {
                    index: p.index,
                    log_append_time_ms: -1,
                    ..Default::default()
                };
                let outcome = if refuse {
                    Err((ErrorCode::NotLeaderOrFollower, "injected".to_owned()))
                } else if self.state.lock().unwrap().faults.reject.contains(&n) {
                    Err((ErrorCode::MessageTooLarge, "injected".to_owned()))
                } else {
                    self.append(&p.records)
                };
                match outcome {
                    Ok(base) => r.base_offset = base,
                    Err((code, msg)) => {
                        r.error_code = code as i32;
                        r.error_message = msg;
                    }
                }
                partitions.push(r);
            }
            topics.push(TopicProduceResponse {
                name: t.name,
                partitions,
            });
        }
        self.state.lock().unwrap().in_flight -= 1;
        if lose {
            return Err(Status::deadline_exceeded("injected: response lost"));
        }
        Ok(Response::new(ProduceResponse { topics }))
    }
    async fn fetch(&self, _: Request<FetchRequest>) -> Result<Response<FetchResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn list_offsets(
        &self,
        _: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
    async fn metadata(
        &self,
        _: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        let endpoint = Endpoint {
            name: "PLAINTEXT".into(),
            host: "127.0.0.1".into(),
            port: u32::from(self.port),
        };
        Ok(Response::new(MetadataResponse {
            brokers: vec![BrokerDescription {
                node_id: 1,
                endpoints: vec![endpoint.clone()],
                ..Default::default()
            }],
            controllers: vec![ControllerDescription {
                node_id: 1,
                endpoint: Some(endpoint),
            }],
            topics: vec![TopicMetadata {
                name: "t".into(),
                partitions: vec![PartitionMetadata {
                    index: 0,
                    leader_id: 1,
                    leader_epoch: 0,
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        }))
    }
    async fn describe_configs(
        &self,
        _: tonic::Request<DescribeConfigsRequest>,
    ) -> Result<tonic::Response<DescribeConfigsResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("fake"))
    }
}

impl FakeCluster {
    /// InitProducerId: a new id (from 100) with epoch 0, or the next epoch of the id sent.
    fn init_producer_id(&self, req: InitProducerIdRequest) -> InitProducerIdResponse {
        let mut st = self.state.lock().unwrap();
        st.init_requests.push(req.clone());
        let (producer_id, producer_epoch) = match (req.producer_id, req.producer_epoch) {
            (Some(id), Some(epoch)) => (id, epoch + 1),
            _ => {
                st.next_producer_id += 1;
                (st.next_producer_id + 99, 0)
            }
        };
        InitProducerIdResponse {
            producer_id,
            producer_epoch,
            ..Default::default()
        }
    }
}

/// The controller side of the fake: only `rill.v1.Controller/InitProducerId` (the one controller
/// call an idempotent producer makes), served without implementing the whole `Controller` trait.
#[derive(Clone)]
struct FakeController(FakeCluster);

impl tonic::server::NamedService for FakeController {
    const NAME: &'static str = "rill.v1.Controller";
}

struct InitProducerIdSvc(FakeCluster);

impl tonic::server::UnaryService<InitProducerIdRequest> for InitProducerIdSvc {
    type Response = InitProducerIdResponse;
    type Future =
        Pin<Box<dyn Future<Output = Result<Response<InitProducerIdResponse>, Status>> + Send>>;
    fn call(&mut self, request: Request<InitProducerIdRequest>) -> Self::Future {
        let answer = self.0.init_producer_id(request.into_inner());
        Box::pin(async move { Ok(Response::new(answer)) })
    }
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for FakeController {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        let cluster = self.0.clone();
        Box::pin(async move {
            assert_eq!(request.uri().path(), "/rill.v1.Controller/InitProducerId");
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::default());
            Ok(grpc.unary(InitProducerIdSvc(cluster), request).await)
        })
    }
}

async fn start(faults: Faults) -> FakeCluster {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let cluster = FakeCluster {
        port,
        state: Arc::new(Mutex::new(State {
            faults,
            ..Default::default()
        })),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(BrokerServer::new(cluster.clone()))
            .add_service(FakeController(cluster.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    cluster
}

fn config(cluster: &FakeCluster) -> ProducerConfig {
    ProducerConfig {
        bootstrap: vec![format!("127.0.0.1:{}", cluster.port)],
        linger: Duration::ZERO,
        // About one record per batch and two batches per request, so that there are many
        // requests to fail and many batches to keep in order.
        batch_size: 64,
        max_request_size: 200,
        retry_backoff: Duration::from_millis(5),
        delivery_timeout: Duration::from_secs(60),
        request_timeout: Duration::from_secs(10),
        ..Default::default()
    }
}

/// Sends the records `v{i:04}` of `range` to `t`; their delivery futures.
async fn send_numbered(producer: &Producer, range: std::ops::Range<usize>) -> Vec<DeliveryFuture> {
    let mut pending = Vec::new();
    for i in range {
        let record = ProducerRecord::new("t", None::<Bytes>, format!("v{i:04}"));
        pending.push(producer.send(record).await.unwrap());
    }
    pending
}

/// Flushes `producer`, failing the test unless it finishes within `secs`.
async fn flush_within(producer: &Producer, secs: u64) {
    tokio::time::timeout(Duration::from_secs(secs), producer.flush())
        .await
        .unwrap_or_else(|_| panic!("flush finishes within {secs} s"));
}

/// A producer of `config` sending many batches per request (up to 1 MiB).
fn many_batches_per_request(cluster: &FakeCluster) -> Producer {
    Producer::new(ProducerConfig {
        max_request_size: 1 << 20,
        ..config(cluster)
    })
    .unwrap()
}

/// Sends `n` records; returns their acknowledged offsets.
async fn produce(producer: &Producer, n: usize) -> Vec<i64> {
    let pending = send_numbered(producer, 0..n).await;
    flush_within(producer, 60).await;
    let mut offsets = Vec::new();
    for p in pending {
        offsets.push(p.await.expect("every record is acknowledged").offset);
    }
    offsets
}

fn expect_exactly_once_in_order(cluster: &FakeCluster, offsets: &[i64]) {
    let st = cluster.state.lock().unwrap();
    let values: Vec<&str> = st.log.iter().map(|r| r.0.as_str()).collect();
    let expected: Vec<String> = (0..offsets.len()).map(|i| format!("v{i:04}")).collect();
    assert_eq!(values, expected, "records lost, duplicated or reordered");
    let positions: Vec<i64> = (0..offsets.len() as i64).collect();
    assert_eq!(
        offsets, positions,
        "acknowledged offsets are where the records are"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_after_refusals_and_lost_responses_neither_duplicate_nor_reorder() {
    let cluster = start(Faults {
        refuse: [3, 10, 17, 30].into(),
        lose_response: [5, 12, 25, 40].into(),
        delay: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let producer = Producer::new(config(&cluster)).unwrap();
    assert!(producer.is_idempotent(), "on by default");
    let offsets = produce(&producer, 300).await;
    expect_exactly_once_in_order(&cluster, &offsets);
    let st = cluster.state.lock().unwrap();
    assert!(
        st.log.iter().all(|r| r.1 == 100 && r.2 == 0),
        "every batch carries the producer id and epoch"
    );
    let seqs: Vec<i32> = st.log.iter().map(|r| r.3).collect();
    assert_eq!(
        seqs,
        (0..300).collect::<Vec<i32>>(),
        "sequences follow the records"
    );
    // One request of a partition in flight at a time (the broker appends one connection's
    // requests concurrently, so order is kept by the producer); each may carry many batches.
    assert_eq!(st.max_in_flight, 1, "one request per partition in flight");
    assert!(
        st.requests >= 40,
        "the faults were injected: {} requests",
        st.requests
    );
    assert_eq!(st.init_requests.len(), 1, "one InitProducerId");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_producer_state_bumps_the_epoch_and_renumbers() {
    let cluster = start(Faults {
        forget_producers_before: Some(8),
        delay: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let producer = Producer::new(config(&cluster)).unwrap();
    let offsets = produce(&producer, 100).await;
    expect_exactly_once_in_order(&cluster, &offsets);
    let st = cluster.state.lock().unwrap();
    let bumps: Vec<_> = st
        .init_requests
        .iter()
        .filter(|r| r.producer_id.is_some())
        .collect();
    assert_eq!(
        bumps.len(),
        1,
        "one epoch bump (KIP-360): {:?}",
        st.init_requests
    );
    assert_eq!(producer.producer_id_and_epoch(), Some((100, 1)));
    // After the bump the sequences start again at 0 under epoch 1.
    let first_bumped = st.log.iter().position(|r| r.2 == 1).unwrap();
    assert_eq!(st.log[first_bumped].3, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_idempotence_one_request_per_partition_is_in_flight() {
    let cluster = start(Faults {
        delay: Duration::from_millis(5),
        ..Default::default()
    })
    .await;
    let producer = Producer::new(ProducerConfig {
        enable_idempotence: Some(false),
        ..config(&cluster)
    })
    .unwrap();
    let offsets = produce(&producer, 100).await;
    expect_exactly_once_in_order(&cluster, &offsets);
    let st = cluster.state.lock().unwrap();
    assert_eq!(st.max_in_flight, 1);
    assert!(st.log.iter().all(|r| r.1 == -1 && r.3 == -1));
    assert!(st.init_requests.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotence_settings_follow_kafka() {
    let cluster = start(Faults::default()).await;
    let base = config(&cluster);
    let refused = |c: ProducerConfig| match Producer::new(c) {
        Err(e) => e.to_string(),
        Ok(_) => panic!("accepted"),
    };
    let e = refused(ProducerConfig {
        acks: 1,
        enable_idempotence: Some(true),
        ..base.clone()
    });
    assert!(e.contains("acks=-1") && e.contains("INVALID_CONFIG"), "{e}");
    let e = refused(ProducerConfig {
        max_in_flight: 6,
        enable_idempotence: Some(true),
        ..base.clone()
    });
    assert!(
        e.contains("max.in.flight.requests.per.connection ≤ 5"),
        "{e}"
    );
    // Left unset, idempotence gives way to acks≠-1, as in Kafka.
    let p = Producer::new(ProducerConfig {
        acks: 1,
        ..base.clone()
    })
    .unwrap();
    assert!(!p.is_idempotent());
    assert!(Producer::new(base).unwrap().is_idempotent());
}

/// A request of many batches is written but its answer is lost: the retry must be recognised
/// batch by batch as duplicates (the leader remembers only its last 64 batches), not refused as
/// a gap and written again under a new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_answer_to_a_full_request_is_not_written_twice() {
    let cluster = start(Faults {
        lose_response: [2, 3, 6].into(),
        delay: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    // Many small batches queue up while a request is in flight.
    let producer = many_batches_per_request(&cluster);
    let offsets = produce(&producer, 600).await;
    expect_exactly_once_in_order(&cluster, &offsets);
    let st = cluster.state.lock().unwrap();
    assert!(
        st.init_requests.iter().all(|r| r.producer_id.is_none()),
        "no epoch bump was needed: {:?}",
        st.init_requests
    );
}

/// Defect 2 of docs/reliability.md: the leader appends but its answers stall past
/// `delivery.timeout.ms`. The batches of unknown outcome fail to their senders (a timeout), and
/// the epoch bump that follows must not renumber and send again batches already sent under the
/// old epoch — the leader could not recognise them and would write them twice. Before the fix
/// every unacknowledged batch was renumbered from sequence 0 under the new epoch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_of_unknown_outcome_are_never_sent_again_under_a_new_epoch() {
    stall_past_the_delivery_timeout(false).await;
}

/// As above, but the stalled requests never reach the log: the batches of unknown outcome fail,
/// the epoch is bumped once none is left, and what follows is written once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_lost_past_the_delivery_timeout_end_in_an_epoch_bump_not_in_duplicates() {
    stall_past_the_delivery_timeout(true).await;
}

async fn stall_past_the_delivery_timeout(drops: bool) {
    let cluster = start(Faults {
        stall: Some((3, Duration::from_millis(1500))),
        stall_drops: drops,
        delay: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let producer = Producer::new(ProducerConfig {
        // Many one-record batches per request, so a stalled request holds many of them.
        max_request_size: 1 << 20,
        delivery_timeout: Duration::from_millis(800),
        request_timeout: Duration::from_millis(500),
        ..config(&cluster)
    })
    .unwrap();
    let mut pending = Vec::new();
    for i in 0..400 {
        let record = ProducerRecord::new("t", None::<Bytes>, format!("v{i:04}"));
        pending.push(producer.send(record).await.unwrap());
        if i % 20 == 19 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    flush_within(&producer, 60).await;
    // After the stall the producer carries on.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    pending.extend(send_numbered(&producer, 400..450).await);
    flush_within(&producer, 60).await;
    let mut acked = HashMap::new();
    let mut timed_out = 0;
    for (i, p) in pending.into_iter().enumerate() {
        match p.await {
            Ok(m) => {
                acked.insert(format!("v{i:04}"), m.offset);
            }
            Err(rill_producer::ProducerError::Timeout(_)) => timed_out += 1,
            Err(e) => panic!("record {i} failed otherwise: {e}"),
        }
        if i >= 400 && !acked.contains_key(&format!("v{i:04}")) {
            panic!("record {i}, sent after the stall, is not acknowledged");
        }
    }
    let st = cluster.state.lock().unwrap();
    let mut seen = HashMap::new();
    for (offset, r) in st.log.iter().enumerate() {
        if let Some(first) = seen.insert(r.0.clone(), (offset, r.2, r.3)) {
            panic!(
                "{} written twice: at offset {} (epoch {}, sequence {}) and at {offset} (epoch {}, sequence {})",
                r.0, first.0, first.1, first.2, r.2, r.3
            );
        }
    }
    for (value, offset) in &acked {
        assert_eq!(
            st.log.get(*offset as usize).map(|r| r.0.as_str()),
            Some(value.as_str()),
            "an acknowledged record is where its offset says"
        );
    }
    let values: Vec<&str> = st.log.iter().map(|r| r.0.as_str()).collect();
    assert!(values.is_sorted(), "records reordered: {values:?}");
    assert!(timed_out > 0, "the stall outlasted delivery.timeout.ms");
    assert!(
        st.init_requests.iter().any(|r| r.producer_id.is_some()),
        "the epoch was bumped: {:?}",
        st.init_requests
    );
}

/// A request of many batches is lost with its outcome unknown; the retry of its first batch is
/// then refused for good. That batch fails (its outcome unknown to the producer), and the next
/// one, refused as a sequence gap, proves it missing: the rest of the request is renumbered under
/// a new epoch and written once — not retried as it is until `delivery.timeout.ms`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_failed_for_good_is_followed_by_an_epoch_bump_not_a_retry_loop() {
    let cluster = start(Faults {
        lose_request: [3].into(),
        reject: [4].into(),
        delay: Duration::from_millis(20),
        ..Default::default()
    })
    .await;
    let producer = many_batches_per_request(&cluster);
    let pending = send_numbered(&producer, 0..300).await;
    // Well before delivery.timeout.ms.
    flush_within(&producer, 20).await;
    let mut failed = Vec::new();
    let mut acked = Vec::new();
    for (i, p) in pending.into_iter().enumerate() {
        match p.await {
            Ok(m) => acked.push((format!("v{i:04}"), m.offset)),
            Err(e) => {
                assert!(e.to_string().contains("MESSAGE_TOO_LARGE"), "{e}");
                failed.push(i);
            }
        }
    }
    assert_eq!(
        failed.len(),
        1,
        "one batch of one record refused: {failed:?}"
    );
    let st = cluster.state.lock().unwrap();
    let values: Vec<String> = st.log.iter().map(|r| r.0.clone()).collect();
    let expected: Vec<String> = acked.iter().map(|a| a.0.clone()).collect();
    assert_eq!(values, expected, "every other record once, in order");
    for (value, offset) in &acked {
        assert_eq!(&st.log[*offset as usize].0, value);
    }
    let bumps = st.init_requests.iter().filter(|r| r.producer_id.is_some());
    assert_eq!(bumps.count(), 1, "{:?}", st.init_requests);
    let first_bumped = st.log.iter().position(|r| r.2 == 1).unwrap();
    assert_eq!(st.log[first_bumped].3, 0, "the new epoch starts at 0");
    assert!(
        values[first_bumped] > format!("v{:04}", failed[0]),
        "only batches after the refused one are renumbered"
    );
}

/// A batch refused for good before anything was written gives its sequences to the next batch
/// (no epoch bump) — but only if no earlier attempt of it may have been written: a leader
/// validates a retried batch before it recognises it as a duplicate, so a written batch whose
/// answer was lost can be refused on its retry (a config changed meanwhile). Reusing its
/// sequences then would make the next batch look like that duplicate and drop it silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_gives_its_sequences_back_only_if_never_maybe_written() {
    for (lost_first, expected) in [(false, vec!["b"]), (true, vec!["a", "b"])] {
        let cluster = start(Faults {
            lose_response: if lost_first {
                [1].into()
            } else {
                HashSet::new()
            },
            reject: [if lost_first { 2 } else { 1 }].into(),
            ..Default::default()
        })
        .await;
        let producer = Producer::new(config(&cluster)).unwrap();
        let send = |v: &str| producer.send(ProducerRecord::new("t", None::<Bytes>, v.to_owned()));
        let a = send("a").await.unwrap();
        let e = tokio::time::timeout(Duration::from_secs(30), a)
            .await
            .expect("finished in time")
            .unwrap_err();
        assert!(e.to_string().contains("MESSAGE_TOO_LARGE"), "{e}");
        let b = send("b").await.unwrap();
        let b = tokio::time::timeout(Duration::from_secs(30), b)
            .await
            .expect("finished in time")
            .unwrap();
        let st = cluster.state.lock().unwrap();
        let values: Vec<&str> = st.log.iter().map(|r| r.0.as_str()).collect();
        assert_eq!(values, expected, "lost first: {lost_first}");
        assert_eq!(
            b.offset as usize,
            expected.len() - 1,
            "b is where it was written"
        );
        let bumps = st
            .init_requests
            .iter()
            .filter(|r| r.producer_id.is_some())
            .count();
        assert_eq!(bumps, usize::from(lost_first), "{:?}", st.init_requests);
    }
}
