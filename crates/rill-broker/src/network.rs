//! The network side of the broker: the `rill.v1.Broker` gRPC service. Produce requests go to the
//! request queue; Fetch long-polls on high-watermark changes; ListOffsets and Metadata are
//! answered from the replica manager and the local metadata image.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use rill_protocol::proto::broker_server::Broker;
use rill_protocol::proto::*;
use rill_protocol::{ApiError, ErrorCode};
use rill_storage::TopicPartition;
use tonic::{Request, Response, Status};

use crate::metrics::Metrics;
use crate::replica_manager::ReplicaManager;
use crate::request_queue::{ProduceJob, RequestQueue};

/// Implements `rill.v1.Broker`.
#[derive(Clone)]
pub struct BrokerService {
    rm: Arc<ReplicaManager>,
    queue: RequestQueue,
    metrics: Arc<Metrics>,
    request_timeout: Duration,
    controllers: Vec<ControllerDescription>,
    fetch_max_bytes: usize,
    lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
}

impl BrokerService {
    /// The service.
    pub fn new(
        rm: Arc<ReplicaManager>,
        queue: RequestQueue,
        metrics: Arc<Metrics>,
        request_timeout: Duration,
        voters: &[(u64, String)],
        fetch_max_bytes: usize,
    ) -> Self {
        let controllers = voters
            .iter()
            .map(|(id, addr)| {
                let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
                ControllerDescription {
                    node_id: *id as i32,
                    endpoint: Some(Endpoint {
                        name: "CONTROLLER".into(),
                        host: host.to_owned(),
                        port: port.parse().unwrap_or(0),
                    }),
                }
            })
            .collect();
        BrokerService {
            rm,
            queue,
            metrics,
            request_timeout,
            controllers,
            fetch_max_bytes,
            lifecycle: None,
        }
    }

    /// Lets Metadata answers name the active controller.
    pub fn with_lifecycle(mut self, lifecycle: Arc<crate::lifecycle::Lifecycle>) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }
}

fn blocking_err(e: tokio::task::JoinError) -> Status {
    Status::internal(format!("worker failed: {e}"))
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        let started = Instant::now();
        let request = request.into_inner();
        let timeout = if request.timeout_ms == 0 {
            self.request_timeout
        } else {
            Duration::from_millis(request.timeout_ms.into())
        };
        let result = if request.acks == 0 {
            self.queue
                .submit(
                    ProduceJob {
                        request,
                        reply: None,
                    },
                    timeout,
                )
                .await
                .map(|_| ProduceResponse::default())
        } else {
            let (tx, rx) = tokio::sync::oneshot::channel();
            match self
                .queue
                .submit(
                    ProduceJob {
                        request,
                        reply: Some(tx),
                    },
                    timeout,
                )
                .await
            {
                Ok(()) => {
                    match tokio::time::timeout(timeout.max(Duration::from_secs(1)) * 2, rx).await {
                        Ok(Ok(r)) => Ok(r),
                        Ok(Err(_)) => Err(ApiError::new(
                            ErrorCode::BrokerNotAvailable,
                            "the broker is shutting down",
                        )),
                        Err(_) => Err(ApiError::new(
                            ErrorCode::RequestTimedOut,
                            "the produce did not complete in time",
                        )),
                    }
                }
                Err(e) => Err(e),
            }
        };
        self.metrics
            .observe("Produce", started.elapsed().as_secs_f64(), result.is_ok());
        Ok(Response::new(result?))
    }

    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let deadline = started + Duration::from_millis(req.max_wait_ms.min(60_000).into());
        let mut hw_changes = self.rm.subscribe_hw();
        // A follower waits for new data at the leader (the high watermark waits for it).
        let mut appended = self.rm.subscribe_appended();
        let replica = req.replica_id >= 0;
        loop {
            hw_changes.borrow_and_update();
            appended.borrow_and_update();
            let rm = Arc::clone(&self.rm);
            let r = req.clone();
            let fetch_max_bytes = self.fetch_max_bytes;
            let (response, bytes) =
                tokio::task::spawn_blocking(move || read_all(&rm, &r, fetch_max_bytes))
                    .await
                    .map_err(blocking_err)?;
            let min_bytes = req.min_bytes.max(1) as usize;
            let has_error = response
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .any(|p| p.error_code != 0);
            // A diverged follower must truncate now, not after a long poll.
            let diverged = response
                .topics
                .iter()
                .flat_map(|t| &t.partitions)
                .any(|p| p.diverging_epoch.is_some());
            if bytes >= min_bytes || has_error || diverged || Instant::now() >= deadline {
                self.metrics.bytes_out.inc_by(bytes as u64);
                self.metrics
                    .observe("Fetch", started.elapsed().as_secs_f64(), !has_error);
                return Ok(Response::new(response));
            }
            // Long poll: sleep until some high watermark (or, for followers, log end) moves or
            // the wait is over.
            let _ = tokio::time::timeout_at(deadline.into(), async {
                if replica {
                    tokio::select! {
                        _ = hw_changes.changed() => {}
                        _ = appended.changed() => {}
                    }
                } else {
                    let _ = hw_changes.changed().await;
                }
            })
            .await;
        }
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let rm = Arc::clone(&self.rm);
        let response = tokio::task::spawn_blocking(move || ListOffsetsResponse {
            topics: req
                .topics
                .iter()
                .map(|t| ListOffsetsTopicResponse {
                    name: t.name.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .map(|p| list_offset(&rm, &t.name, p))
                        .collect(),
                })
                .collect(),
        })
        .await
        .map_err(blocking_err)?;
        let ok = response
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .all(|p| p.error_code == 0);
        self.metrics
            .observe("ListOffsets", started.elapsed().as_secs_f64(), ok);
        Ok(Response::new(response))
    }

    async fn metadata(
        &self,
        request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        let started = Instant::now();
        let req = request.into_inner();
        let image = self.rm.image();
        let names: Vec<String> = if req.topics.is_empty() {
            image.topics.keys().cloned().collect()
        } else {
            req.topics
        };
        let topics = names
            .into_iter()
            .map(|name| match image.topics.get(&name) {
                None => TopicMetadata {
                    error_code: ErrorCode::UnknownTopicOrPartition as i32,
                    error_message: format!("topic {name:?} does not exist"),
                    name,
                    ..Default::default()
                },
                Some(t) => TopicMetadata {
                    error_code: 0,
                    error_message: String::new(),
                    name: t.name.clone(),
                    topic_id: t.id.clone(),
                    partitions: t
                        .partitions
                        .iter()
                        .enumerate()
                        .map(|(i, p)| PartitionMetadata {
                            error_code: if p.leader == -1 {
                                ErrorCode::LeaderNotAvailable as i32
                            } else {
                                0
                            },
                            index: i as i32,
                            leader_id: p.leader,
                            leader_epoch: p.leader_epoch,
                            replicas: p.replicas.clone(),
                            isr: p.isr.clone(),
                            offline_replicas: p
                                .replicas
                                .iter()
                                .copied()
                                .filter(|r| image.brokers.get(r).is_none_or(|b| b.fenced))
                                .collect(),
                        })
                        .collect(),
                },
            })
            .collect();
        let response = MetadataResponse {
            cluster_id: image.cluster_id.clone().unwrap_or_default(),
            brokers: image
                .brokers
                .values()
                .map(|b| BrokerDescription {
                    node_id: b.id,
                    endpoints: b.endpoints.clone(),
                    rack: b.rack.clone(),
                    fenced: b.fenced,
                    broker_epoch: b.epoch,
                })
                .collect(),
            controller_id: self
                .lifecycle
                .as_ref()
                .map_or(-1, |l| l.active_controller_id()),
            topics,
            controllers: self.controllers.clone(),
        };
        self.metrics
            .observe("Metadata", started.elapsed().as_secs_f64(), true);
        Ok(Response::new(response))
    }
}

/// The `current_leader` field from a known (leader id, leader epoch).
pub(crate) fn leader_hint(current: Option<(i32, i32)>) -> Option<LeaderIdAndEpoch> {
    current.map(|(leader_id, leader_epoch)| LeaderIdAndEpoch {
        leader_id,
        leader_epoch,
    })
}

/// Reads every requested partition once; returns the response and the record bytes in it.
fn read_all(
    rm: &ReplicaManager,
    req: &FetchRequest,
    fetch_max_bytes: usize,
) -> (FetchResponse, usize) {
    let mut total = 0usize;
    // The broker's fetch.max.bytes caps what one fetch may hold, whatever the client asks.
    let max_total = if req.max_bytes <= 0 {
        fetch_max_bytes
    } else {
        (req.max_bytes as usize).min(fetch_max_bytes)
    };
    let mut response = FetchResponse::default();
    for t in &req.topics {
        let mut tr = FetchTopicResponse {
            name: t.name.clone(),
            partitions: Vec::with_capacity(t.partitions.len()),
        };
        for p in &t.partitions {
            let tp = TopicPartition::new(t.name.clone(), p.index);
            let mut pr = FetchPartitionResponse {
                index: p.index,
                high_watermark: -1,
                log_start_offset: -1,
                ..Default::default()
            };
            match rm.leader_partition(&tp) {
                Err((e, current)) => {
                    pr.error_code = e.code as i32;
                    pr.error_message = e.message;
                    pr.current_leader = leader_hint(current);
                }
                Ok(partition) if req.replica_id >= 0 => {
                    let budget =
                        (max_total.saturating_sub(total)).min(if p.partition_max_bytes <= 0 {
                            1 << 20
                        } else {
                            p.partition_max_bytes as usize
                        });
                    pr = rm.fetch_for_follower(
                        &partition,
                        req.replica_id,
                        req.replica_epoch,
                        p,
                        budget.max(1),
                    );
                    total += pr.records.len();
                }
                Ok(partition) => {
                    let state = partition.state();
                    let (start, hw) = match rm.offsets(&partition) {
                        Ok(o) => o,
                        Err(e) => {
                            pr.error_code = e.code as i32;
                            pr.error_message = e.message;
                            tr.partitions.push(pr);
                            continue;
                        }
                    };
                    pr.high_watermark = hw;
                    pr.log_start_offset = start;
                    if p.current_leader_epoch >= 0 && p.current_leader_epoch != state.leader_epoch {
                        let (code, what) = if p.current_leader_epoch < state.leader_epoch {
                            (ErrorCode::FencedLeaderEpoch, "older")
                        } else {
                            (ErrorCode::UnknownLeaderEpoch, "newer")
                        };
                        pr.error_code = code as i32;
                        pr.error_message = format!(
                            "leader epoch {} is {what} than the current {}",
                            p.current_leader_epoch, state.leader_epoch
                        );
                        pr.current_leader = Some(LeaderIdAndEpoch {
                            leader_id: state.leader,
                            leader_epoch: state.leader_epoch,
                        });
                    } else if p.fetch_offset < start || p.fetch_offset > partition.log_end_offset()
                    {
                        // Between the high watermark and the log end is not out of range: a
                        // new leader's high watermark can trail what consumers already read.
                        pr.error_code = ErrorCode::OffsetOutOfRange as i32;
                        pr.error_message = format!(
                            "offset {} is outside [{start}, {hw}] of {tp}",
                            p.fetch_offset
                        );
                    } else if total < max_total {
                        let budget = (max_total - total).min(if p.partition_max_bytes <= 0 {
                            1 << 20
                        } else {
                            p.partition_max_bytes as usize
                        });
                        match rm.read(&partition, p.fetch_offset, budget, total == 0) {
                            Ok(Some(bytes)) => {
                                total += bytes.len();
                                pr.records = bytes;
                            }
                            Ok(None) => pr.records = Bytes::new(),
                            Err(e) => {
                                pr.error_code = e.code as i32;
                                pr.error_message = e.message;
                            }
                        }
                    }
                }
            }
            tr.partitions.push(pr);
        }
        response.topics.push(tr);
    }
    (response, total)
}

fn list_offset(
    rm: &ReplicaManager,
    topic: &str,
    p: &ListOffsetsPartition,
) -> ListOffsetsPartitionResponse {
    let tp = TopicPartition::new(topic.to_owned(), p.index);
    let mut r = ListOffsetsPartitionResponse {
        index: p.index,
        timestamp: -1,
        offset: -1,
        leader_epoch: -1,
        ..Default::default()
    };
    let fail = |mut r: ListOffsetsPartitionResponse, e: ApiError| {
        r.error_code = e.code as i32;
        r.error_message = e.message;
        r
    };
    let partition = match rm.leader_partition(&tp) {
        Ok(p) => p,
        Err((e, _)) => return fail(r, e),
    };
    match lookup_offset(rm, &partition, p.timestamp) {
        Ok(Some((offset, timestamp, epoch))) => {
            r.offset = offset;
            r.timestamp = timestamp;
            r.leader_epoch = epoch;
            r
        }
        Ok(None) => r,
        Err(e) => fail(r, e),
    }
}

/// ListOffsets for one partition: (offset, timestamp, leader epoch of the batch at that
/// offset) — or `None` when no record matches a time lookup. `timestamp` is a time in ms, -2
/// (earliest), -1 (latest: the high watermark) or -3 (the record with the largest timestamp).
fn lookup_offset(
    rm: &ReplicaManager,
    partition: &crate::replica_manager::Partition,
    timestamp: i64,
) -> Result<Option<(i64, i64, i32)>, ApiError> {
    if !(timestamp >= 0 || matches!(timestamp, -3..=-1)) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "timestamp {timestamp} is not supported: use -2 (earliest), -1 (latest), -3 (max timestamp) or a time in ms"
            ),
        ));
    }
    let (start, hw) = rm.offsets(partition)?;
    let log = partition.log.read();
    // The epoch of the leader that wrote `offset` (Kafka answers the batch's epoch, so a client
    // can detect truncation with OffsetForLeaderEpoch); -1 when the log has no epoch for it.
    let epoch_at = |offset: i64| {
        log.leader_epochs()
            .iter()
            .rev()
            .find(|e| e.start_offset <= offset)
            .map_or(-1, |e| e.epoch)
    };
    let storage = |e: rill_storage::LogError| {
        ApiError::new(
            e.error_code(),
            format!("offset lookup on {} failed: {e}", partition.tp),
        )
    };
    let ts = match timestamp {
        -2 => return Ok(Some((start, -1, epoch_at(start)))),
        -1 => return Ok(Some((hw, -1, log.latest_epoch().unwrap_or(-1)))),
        -3 => {
            // MAX_TIMESTAMP: the record with the largest timestamp (the first such, as Kafka).
            let max = log
                .segments()
                .iter()
                .map(|s| s.max_timestamp)
                .max()
                .unwrap_or(-1);
            if max < 0 {
                return Ok(None);
            }
            max
        }
        ts => ts,
    };
    match log.offset_for_timestamp(ts).map_err(storage)? {
        Some((offset, timestamp)) if offset < hw => Ok(Some((offset, timestamp, epoch_at(offset)))),
        _ => Ok(None),
    }
}
