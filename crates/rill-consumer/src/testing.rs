//! A fake cluster for unit tests: one server on an ephemeral port playing a broker that leads
//! every partition (Fetch answers come from a closure) and a group coordinator whose heartbeat
//! and commit answers are scripted, recording what it was sent.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use parking_lot::Mutex;
use rill_protocol::proto::broker_server::{Broker, BrokerServer};
use rill_protocol::proto::group_coordinator_server::{GroupCoordinator, GroupCoordinatorServer};
use rill_protocol::proto::*;
use rill_protocol::record_batch::{Compression, RecordBatchBuilder, set_base_offset};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tonic::{Request, Response, Status};

/// Fetch answers: given the partition and fetch offset.
pub type FetchAnswer =
    Arc<dyn Fn(&TopicPartition, i64) -> Result<FetchPartitionResponse, Status> + Send + Sync>;
/// Heartbeat answers: given the request and how many heartbeats came before it.
pub type HeartbeatAnswer =
    Box<dyn FnMut(&ConsumerGroupHeartbeatRequest, usize) -> ConsumerGroupHeartbeatResponse + Send>;
/// Commit answers: given the request and how many commits came before it; `None` accepts.
pub type CommitAnswer = Box<dyn FnMut(&OffsetCommitRequest, usize) -> Option<ErrorCode> + Send>;

/// What the fake coordinator saw and does.
pub struct CoordinatorState {
    pub heartbeats: Vec<ConsumerGroupHeartbeatRequest>,
    pub commits: Vec<OffsetCommitRequest>,
    pub committed: BTreeMap<TopicPartition, i64>,
    pub find_coordinator_calls: usize,
    /// Answers NOT_COORDINATOR to this many heartbeats first.
    pub not_coordinator: usize,
    /// Answers this many OffsetFetch requests first with COORDINATOR_LOAD_IN_PROGRESS for
    /// every partition (a retriable per-partition error).
    pub offsets_loading: usize,
    pub on_heartbeat: HeartbeatAnswer,
    pub on_commit: CommitAnswer,
    /// Everything in order, with what the test's listener records.
    pub log: Arc<Mutex<Vec<String>>>,
}

#[derive(Clone)]
pub struct Fake {
    pub port: u16,
    topics: Vec<(String, i32)>,
    answer: FetchAnswer,
    pub fetches: Arc<AtomicUsize>,
    pub coordinator: Arc<Mutex<CoordinatorState>>,
    /// ListOffsets answers every partition with this error while set.
    pub list_offsets_error: Arc<Mutex<Option<ErrorCode>>>,
    /// How long Metadata requests wait before being answered.
    pub metadata_delay: Arc<Mutex<Duration>>,
    /// Every partition's leader epoch: what Metadata says, and what a Fetch naming another
    /// epoch is fenced against (as a broker does).
    pub leader_epoch: Arc<Mutex<i32>>,
    /// The `current_leader_epoch` of every partition fetched, in order.
    pub fetched_epochs: Arc<Mutex<Vec<Option<i32>>>>,
    /// The `current_leader_epoch` of every partition listed (ListOffsets), in order.
    pub listed_epochs: Arc<Mutex<Vec<Option<i32>>>>,
    /// Metadata requests answered.
    pub metadata_calls: Arc<AtomicUsize>,
}

impl Fake {
    /// Serves `topics` (name, partition count) on a fresh port.
    pub async fn start(topics: &[(&str, i32)], answer: FetchAnswer) -> Fake {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = Fake {
            port,
            topics: topics.iter().map(|(t, n)| (t.to_string(), *n)).collect(),
            answer,
            fetches: Arc::new(AtomicUsize::new(0)),
            list_offsets_error: Arc::new(Mutex::new(None)),
            metadata_delay: Arc::new(Mutex::new(Duration::ZERO)),
            leader_epoch: Arc::new(Mutex::new(0)),
            fetched_epochs: Arc::new(Mutex::new(Vec::new())),
            metadata_calls: Arc::new(AtomicUsize::new(0)),
            listed_epochs: Arc::new(Mutex::new(Vec::new())),
            coordinator: Arc::new(Mutex::new(CoordinatorState {
                heartbeats: Vec::new(),
                commits: Vec::new(),
                committed: BTreeMap::new(),
                find_coordinator_calls: 0,
                not_coordinator: 0,
                offsets_loading: 0,
                on_heartbeat: Box::new(|r, _| ConsumerGroupHeartbeatResponse {
                    member_id: r.member_id.clone(),
                    member_epoch: r.member_epoch.max(1),
                    heartbeat_interval_ms: 100,
                    ..Default::default()
                }),
                on_commit: Box::new(|_, _| None),
                log: Arc::new(Mutex::new(Vec::new())),
            })),
        };
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(BrokerServer::new(fake.clone()))
                .add_service(GroupCoordinatorServer::new(fake.clone()))
                .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        fake
    }

    pub fn bootstrap(&self) -> Vec<String> {
        vec![format!("127.0.0.1:{}", self.port)]
    }

    pub fn log(&self) -> Arc<Mutex<Vec<String>>> {
        Arc::clone(&self.coordinator.lock().log)
    }
}

/// A batch of `values` at `base_offset`.
pub fn batch(base_offset: i64, values: &[&str]) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Compression::None);
    for v in values {
        b.append(1_000, None, Some(v.as_bytes()), &[]);
    }
    let mut bytes = b.build().unwrap().to_vec();
    set_base_offset(&mut bytes, base_offset);
    bytes
}

/// A fetch answer for partition `index` holding `bytes`.
pub fn records(index: i32, bytes: Vec<u8>) -> Result<FetchPartitionResponse, Status> {
    Ok(FetchPartitionResponse {
        index,
        high_watermark: 100,
        records: bytes.into(),
        ..Default::default()
    })
}

/// Fetch answers with one record `<topic>-<partition>@<offset>` per offset below `end`, and
/// nothing from `end` on (the fake then waits a little, as a broker's long poll).
pub fn numbered(end: i64) -> FetchAnswer {
    Arc::new(move |tp, offset| {
        if offset >= end {
            return records(tp.partition, Vec::new());
        }
        let v = format!("{tp}@{offset}");
        records(tp.partition, batch(offset, &[v.as_str()]))
    })
}

/// Partitions as the protocol lists them.
pub fn assignment(tps: &[(&str, i32)]) -> TopicPartitionsList {
    let set = tps
        .iter()
        .map(|(t, p)| TopicPartition::new(*t, *p))
        .collect();
    crate::consumer_coordinator::heartbeat::partitions_list(&set)
}

#[tonic::async_trait]
impl Broker for Fake {
    async fn produce(
        &self,
        _: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        self.fetches.fetch_add(1, Ordering::AcqRel);
        // Answers may block (tests make a broker slow with a sleep): they run on the blocking
        // pool, as a real broker's reads do, so they never stall the runtime the client shares.
        let answer = Arc::clone(&self.answer);
        let request = request.into_inner();
        let leader_epoch = *self.leader_epoch.lock();
        let fetched_epochs = Arc::clone(&self.fetched_epochs);
        let topics = tokio::task::spawn_blocking(move || {
            let mut topics = Vec::new();
            for t in request.topics {
                let mut partitions = Vec::new();
                for p in t.partitions {
                    fetched_epochs.lock().push(p.current_leader_epoch);
                    if let Some(asked) = p.current_leader_epoch.filter(|e| *e != leader_epoch) {
                        partitions.push(FetchPartitionResponse {
                            index: p.index,
                            error_code: if asked < leader_epoch {
                                ErrorCode::FencedLeaderEpoch
                            } else {
                                ErrorCode::UnknownLeaderEpoch
                            } as i32,
                            current_leader: Some(LeaderIdAndEpoch {
                                leader_id: 1,
                                leader_epoch,
                            }),
                            ..Default::default()
                        });
                        continue;
                    }
                    let tp = TopicPartition::new(t.name.as_str(), p.index);
                    partitions.push(answer(&tp, p.fetch_offset)?);
                }
                topics.push(FetchTopicResponse {
                    name: t.name,
                    partitions,
                });
            }
            Ok::<_, Status>(topics)
        })
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()))?;
        let empty = topics
            .iter()
            .flat_map(|t| &t.partitions)
            .all(|p| p.records.is_empty() && p.error_code == 0);
        if empty {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Response::new(FetchResponse { topics }))
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let error = *self.list_offsets_error.lock();
        let leader_epoch = *self.leader_epoch.lock();
        let topics = request
            .into_inner()
            .topics
            .into_iter()
            .map(|t| ListOffsetsTopicResponse {
                name: t.name,
                partitions: t
                    .partitions
                    .into_iter()
                    .map(|p| {
                        self.listed_epochs.lock().push(p.current_leader_epoch);
                        let fenced = p
                            .current_leader_epoch
                            .filter(|e| *e != leader_epoch)
                            .map(|_| ErrorCode::FencedLeaderEpoch);
                        ListOffsetsPartitionResponse {
                            index: p.index,
                            timestamp: -1,
                            offset: if p.timestamp == -2 { 0 } else { 10 },
                            leader_epoch: -1,
                            error_code: error.or(fenced).map_or(0, |e| e as i32),
                            ..Default::default()
                        }
                    })
                    .collect(),
            })
            .collect();
        Ok(Response::new(ListOffsetsResponse { topics }))
    }

    async fn metadata(
        &self,
        _: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        let delay = *self.metadata_delay.lock();
        tokio::time::sleep(delay).await;
        let leader_epoch = *self.leader_epoch.lock();
        self.metadata_calls.fetch_add(1, Ordering::AcqRel);
        Ok(Response::new(MetadataResponse {
            brokers: vec![BrokerDescription {
                node_id: 1,
                endpoints: vec![Endpoint {
                    name: "PLAINTEXT".into(),
                    host: "127.0.0.1".into(),
                    port: u32::from(self.port),
                }],
                ..Default::default()
            }],
            topics: self
                .topics
                .iter()
                .map(|(name, n)| TopicMetadata {
                    name: name.clone(),
                    partitions: (0..*n)
                        .map(|index| PartitionMetadata {
                            index,
                            leader_id: 1,
                            leader_epoch,
                            ..Default::default()
                        })
                        .collect(),
                    ..Default::default()
                })
                .collect(),
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

#[tonic::async_trait]
impl GroupCoordinator for Fake {
    async fn find_coordinator(
        &self,
        request: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        self.coordinator.lock().find_coordinator_calls += 1;
        let coordinators = request
            .into_inner()
            .keys
            .into_iter()
            .map(|key| Coordinator {
                key,
                node_id: 1,
                host: "127.0.0.1".into(),
                port: u32::from(self.port),
                ..Default::default()
            })
            .collect();
        Ok(Response::new(FindCoordinatorResponse { coordinators }))
    }

    async fn consumer_group_heartbeat(
        &self,
        request: Request<ConsumerGroupHeartbeatRequest>,
    ) -> Result<Response<ConsumerGroupHeartbeatResponse>, Status> {
        let request = request.into_inner();
        let mut s = self.coordinator.lock();
        if s.not_coordinator > 0 {
            s.not_coordinator -= 1;
            return Err(ApiError::new(ErrorCode::NotCoordinator, "moved").into());
        }
        let n = s.heartbeats.len();
        s.log
            .lock()
            .push(format!("heartbeat epoch {}", request.member_epoch));
        s.heartbeats.push(request.clone());
        let answer = (s.on_heartbeat)(&request, n);
        Ok(Response::new(answer))
    }

    async fn offset_commit(
        &self,
        request: Request<OffsetCommitRequest>,
    ) -> Result<Response<OffsetCommitResponse>, Status> {
        let request = request.into_inner();
        let mut s = self.coordinator.lock();
        let n = s.commits.len();
        s.commits.push(request.clone());
        let error = (s.on_commit)(&request, n);
        let mut topics = Vec::new();
        for t in &request.topics {
            let mut partitions = Vec::new();
            for p in &t.partitions {
                if error.is_none() {
                    s.committed.insert(
                        TopicPartition::new(t.name.as_str(), p.index),
                        p.committed_offset,
                    );
                    s.log.lock().push(format!(
                        "commit {}-{}@{} epoch {}",
                        t.name, p.index, p.committed_offset, request.member_epoch
                    ));
                }
                partitions.push(OffsetCommitPartitionResponse {
                    index: p.index,
                    error_code: error.map_or(0, |e| e as i32),
                    error_message: String::new(),
                });
            }
            topics.push(OffsetCommitTopicResponse {
                name: t.name.clone(),
                partitions,
            });
        }
        Ok(Response::new(OffsetCommitResponse { topics }))
    }

    async fn offset_fetch(
        &self,
        request: Request<OffsetFetchRequest>,
    ) -> Result<Response<OffsetFetchResponse>, Status> {
        let mut s = self.coordinator.lock();
        let loading = s.offsets_loading > 0;
        s.offsets_loading = s.offsets_loading.saturating_sub(1);
        let topics = request
            .into_inner()
            .topics
            .into_iter()
            .map(|t| OffsetFetchTopicResponse {
                partitions: t
                    .partition_indexes
                    .iter()
                    .map(|p| OffsetFetchPartitionResponse {
                        index: *p,
                        committed_offset: s
                            .committed
                            .get(&TopicPartition::new(t.name.as_str(), *p))
                            .copied()
                            .unwrap_or(-1),
                        committed_leader_epoch: -1,
                        error_code: if loading {
                            ErrorCode::CoordinatorLoadInProgress as i32
                        } else {
                            0
                        },
                        ..Default::default()
                    })
                    .collect(),
                name: t.name,
            })
            .collect();
        Ok(Response::new(OffsetFetchResponse {
            topics,
            ..Default::default()
        }))
    }

    async fn list_groups(
        &self,
        _: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn describe_groups(
        &self,
        _: Request<DescribeGroupsRequest>,
    ) -> Result<Response<DescribeGroupsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn delete_groups(
        &self,
        _: Request<DeleteGroupsRequest>,
    ) -> Result<Response<DeleteGroupsResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }

    async fn offset_delete(
        &self,
        _: Request<OffsetDeleteRequest>,
    ) -> Result<Response<OffsetDeleteResponse>, Status> {
        Err(Status::unimplemented("fake"))
    }
}
