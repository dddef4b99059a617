//! The gRPC face of the controller: `Controller` (brokers and admin clients) and `Quorum`
//! (other controllers). Handlers turn requests into writes and reads for the quorum thread.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use protobuf::Message as _;
use rill_protocol::proto::controller_server::Controller;
use rill_protocol::proto::metadata_record::Record;
use rill_protocol::proto::quorum_server::Quorum;
use rill_protocol::proto::*;
use rill_protocol::{ApiError, ErrorCode};
use tokio_stream::Stream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::commands::{self, record};
use crate::config::ControllerConfig;
use crate::quorum_controller::{Event, QuorumHandle};
use rill_protocol::metadata_image::MetadataImage;

/// Implements `rill.v1.Controller`.
#[derive(Clone)]
pub struct ControllerService {
    handle: QuorumHandle,
    config: Arc<ControllerConfig>,
    shutdown: CancellationToken,
}

impl ControllerService {
    /// A service feeding the quorum thread behind `handle`. Metadata streams end when
    /// `shutdown` fires: the server's graceful shutdown waits for open streams, and brokers
    /// hold theirs open for as long as they run.
    pub fn new(
        handle: QuorumHandle,
        config: Arc<ControllerConfig>,
        shutdown: CancellationToken,
    ) -> Self {
        ControllerService {
            handle,
            config,
            shutdown,
        }
    }
}

fn err(code: ErrorCode, msg: impl Into<String>) -> ApiError {
    ApiError::new(code, msg)
}

fn describe_broker(b: &rill_protocol::metadata_image::BrokerInfo) -> BrokerDescription {
    BrokerDescription {
        node_id: b.id,
        endpoints: b.endpoints.clone(),
        rack: b.rack.clone(),
        fenced: b.fenced,
        broker_epoch: b.epoch,
    }
}

type DoneFn<T> = Box<dyn FnOnce(&MetadataImage) -> T + Send>;

#[tonic::async_trait]
impl Controller for ControllerService {
    async fn broker_registration(
        &self,
        request: Request<BrokerRegistrationRequest>,
    ) -> Result<Response<BrokerRegistrationResponse>, Status> {
        let req = request.into_inner();
        let session = Duration::from_millis(self.config.broker.session.timeout.ms);
        let reply = self
            .handle
            .write(move |ctx| {
                let id = req.broker_id;
                if id < 0 {
                    return Err(err(ErrorCode::InvalidRequest, format!("broker id {id} must be ≥ 0")));
                }
                if req.incarnation_id.is_empty() {
                    return Err(err(ErrorCode::InvalidRequest, "incarnation_id must be set (a random id per broker start)"));
                }
                if let Some(cluster) = &ctx.latest.cluster_id
                    && !req.cluster_id.is_empty()
                    && &req.cluster_id != cluster
                {
                    return Err(err(
                        ErrorCode::InconsistentClusterId,
                        format!("this controller quorum serves cluster {cluster}, not {}", req.cluster_id),
                    ));
                }
                let done: DoneFn<i64> = Box::new(move |image| image.brokers.get(&id).map_or(-1, |b| b.epoch));
                let mut records = Vec::new();
                match ctx.latest.brokers.get(&id) {
                    Some(b) if b.incarnation_id == req.incarnation_id => {}
                    Some(b) => {
                        let alive = ctx.liveness.get(&id).is_some_and(|t| ctx.now.duration_since(*t) < session);
                        if !b.fenced && alive {
                            return Err(err(
                                ErrorCode::DuplicateBrokerRegistration,
                                format!("broker {id} is registered by another live process (incarnation {}); give this broker a different node.id", b.incarnation_id),
                            ));
                        }
                        records.push(register_record(&req));
                        records.extend(commands::leadership_moves(ctx.latest, id));
                    }
                    None => records.push(register_record(&req)),
                }
                ctx.liveness.insert(id, ctx.now);
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(BrokerRegistrationResponse {
            error_code: ErrorCode::None as i32,
            error_message: String::new(),
            broker_epoch: reply,
        }))
    }

    async fn broker_heartbeat(
        &self,
        request: Request<BrokerHeartbeatRequest>,
    ) -> Result<Response<BrokerHeartbeatResponse>, Status> {
        let req = request.into_inner();
        let reply = self
            .handle
            .write(move |ctx| {
                let id = req.broker_id;
                let b = ctx.latest.brokers.get(&id).ok_or_else(|| {
                    err(ErrorCode::BrokerIdNotRegistered, format!("broker {id} is not registered; register first"))
                })?;
                if b.epoch != req.broker_epoch {
                    return Err(err(
                        ErrorCode::StaleBrokerEpoch,
                        format!("broker {id} epoch {} is not the current registration ({}); register again", req.broker_epoch, b.epoch),
                    ));
                }
                ctx.liveness.insert(id, ctx.now);
                let caught_up = req.current_metadata_offset >= b.epoch;
                let records = if req.want_shut_down {
                    if b.fenced { Vec::new() } else { commands::fence_broker(ctx.latest, id) }
                } else if b.fenced && !req.want_fence && caught_up {
                    commands::unfence_broker(ctx.latest, id)
                } else {
                    Vec::new()
                };
                let want_shut_down = req.want_shut_down;
                let done: DoneFn<BrokerHeartbeatResponse> = Box::new(move |image| {
                    let fenced = image.brokers.get(&id).is_none_or(|b| b.fenced);
                    BrokerHeartbeatResponse {
                        error_code: ErrorCode::None as i32,
                        error_message: String::new(),
                        is_caught_up: caught_up,
                        is_fenced: fenced,
                        should_shut_down: want_shut_down && commands::leaderships(image, id) == 0,
                    }
                });
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn create_topics(
        &self,
        request: Request<CreateTopicsRequest>,
    ) -> Result<Response<CreateTopicsResponse>, Status> {
        let req = request.into_inner();
        let start: usize = rand::random::<u16>() as usize;
        let results = self
            .handle
            .write(move |ctx| {
                let mut records = Vec::new();
                let mut taken = BTreeSet::new();
                let mut results = Vec::new();
                for (i, t) in req.topics.iter().enumerate() {
                    let partitions = if t.num_partitions == -1 {
                        ctx.config.num.partitions
                    } else {
                        t.num_partitions
                    };
                    let rf = if t.replication_factor == -1 {
                        ctx.config.default.replication.factor
                    } else {
                        t.replication_factor
                    };
                    let configs: Vec<(String, Option<String>)> = t
                        .configs
                        .iter()
                        .map(|c| (c.name.clone(), c.value.clone()))
                        .collect();
                    let mut result = CreatableTopicResult {
                        name: t.name.clone(),
                        num_partitions: partitions,
                        replication_factor: rf,
                        ..Default::default()
                    };
                    match commands::create_topic(
                        ctx.latest,
                        &taken,
                        &commands::TopicRequest {
                            name: &t.name,
                            partitions,
                            replication_factor: rf,
                            configs: &configs,
                        },
                        start + i,
                        ctx.config.max.partitions.per.topic,
                    ) {
                        Ok((recs, id)) => {
                            taken.insert(t.name.clone());
                            result.topic_id = id;
                            if !req.validate_only {
                                records.extend(recs);
                            }
                        }
                        Err(e) => {
                            result.error_code = e.code as i32;
                            result.error_message = e.message;
                        }
                    }
                    results.push(result);
                }
                let done: DoneFn<Vec<CreatableTopicResult>> = Box::new(move |_| results);
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(CreateTopicsResponse { topics: results }))
    }

    async fn delete_topics(
        &self,
        request: Request<DeleteTopicsRequest>,
    ) -> Result<Response<DeleteTopicsResponse>, Status> {
        let req = request.into_inner();
        let results = self
            .handle
            .write(move |ctx| {
                let mut records = Vec::new();
                let mut seen = BTreeSet::new();
                let mut results = Vec::new();
                for name in req.names {
                    let mut r = DeletableTopicResult {
                        name: name.clone(),
                        ..Default::default()
                    };
                    let internal = commands::check_internal_topic_change(
                        &name,
                        commands::InternalTopicChange::Delete,
                    );
                    match ctx.latest.topics.get(&name) {
                        Some(_) if let Err(e) = internal => {
                            r.error_code = e.code as i32;
                            r.error_message = e.message;
                        }
                        Some(t) if seen.insert(name.clone()) => {
                            records.push(record(Record::RemoveTopic(RemoveTopicRecord {
                                topic_id: t.id.clone(),
                            })));
                        }
                        _ => {
                            r.error_code = ErrorCode::UnknownTopicOrPartition as i32;
                            r.error_message = format!("topic {name:?} does not exist");
                        }
                    }
                    results.push(r);
                }
                let done: DoneFn<Vec<DeletableTopicResult>> = Box::new(move |_| results);
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(DeleteTopicsResponse { topics: results }))
    }

    async fn create_partitions(
        &self,
        request: Request<CreatePartitionsRequest>,
    ) -> Result<Response<CreatePartitionsResponse>, Status> {
        let req = request.into_inner();
        let start: usize = rand::random::<u16>() as usize;
        let results = self
            .handle
            .write(move |ctx| {
                let mut records = Vec::new();
                let mut results = Vec::new();
                let mut seen = BTreeSet::new();
                for t in req.topics {
                    let mut r = CreatePartitionsTopicResult {
                        name: t.name.clone(),
                        ..Default::default()
                    };
                    let outcome = if seen.insert(t.name.clone()) {
                        commands::create_partitions(
                            ctx.latest,
                            &t.name,
                            t.count,
                            start,
                            ctx.config.max.partitions.per.topic,
                        )
                    } else {
                        Err(err(
                            ErrorCode::InvalidRequest,
                            format!("topic {:?} appears twice in the request", t.name),
                        ))
                    };
                    match outcome {
                        Ok(recs) if !req.validate_only => records.extend(recs),
                        Ok(_) => {}
                        Err(e) => {
                            r.error_code = e.code as i32;
                            r.error_message = e.message;
                        }
                    }
                    results.push(r);
                }
                let done: DoneFn<Vec<CreatePartitionsTopicResult>> = Box::new(move |_| results);
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(CreatePartitionsResponse { topics: results }))
    }

    async fn incremental_alter_configs(
        &self,
        request: Request<IncrementalAlterConfigsRequest>,
    ) -> Result<Response<IncrementalAlterConfigsResponse>, Status> {
        let req = request.into_inner();
        let results = self
            .handle
            .write(move |ctx| {
                let mut records = Vec::new();
                let mut results = Vec::new();
                // A resource named twice is refused (Kafka: "Duplicate resource"): each would
                // be checked against the same state, and the later undo what the first decided
                // (an unclean election recorded for a topic left not allowing it, say).
                let mut named = BTreeMap::new();
                for res in &req.resources {
                    *named
                        .entry((res.resource_type, res.topic.clone()))
                        .or_insert(0) += 1;
                }
                for res in req.resources {
                    let mut r = AlterConfigsResult {
                        topic: res.topic.clone(),
                        resource_type: res.resource_type,
                        ..Default::default()
                    };
                    let twice = named.get(&(res.resource_type, res.topic.clone())) > Some(&1);
                    let outcome: Result<Vec<MetadataRecord>, ApiError> = (|| {
                        if twice {
                            return Err(err(
                                ErrorCode::InvalidRequest,
                                format!(
                                    "resource {:?} appears more than once in the request",
                                    res.topic
                                ),
                            ));
                        }
                        match ConfigResourceType::try_from(res.resource_type) {
                            Ok(ConfigResourceType::Topic) => {}
                            Ok(ConfigResourceType::Broker) => return cluster_config_records(&res),
                            Err(_) => {
                                return Err(err(
                                    ErrorCode::InvalidRequest,
                                    format!("unknown config resource type {}", res.resource_type),
                                ));
                            }
                        }
                        if !ctx.latest.topics.contains_key(&res.topic) {
                            return Err(err(
                                ErrorCode::UnknownTopicOrPartition,
                                format!("topic {:?} does not exist", res.topic),
                            ));
                        }
                        let mut recs = Vec::new();
                        for c in &res.configs {
                            check_operation(c)?;
                            // Setting one is refused; removing one (made before this rule) is not.
                            if c.name == "max.message.bytes"
                                && c.operation != ConfigOperation::Delete as i32
                            {
                                commands::check_internal_topic_change(
                                    &res.topic,
                                    commands::InternalTopicChange::MaxMessageBytes,
                                )?;
                            }
                            if c.name == "cleanup.policy" {
                                let policy = (c.operation != ConfigOperation::Delete as i32)
                                    .then_some(c.value.as_deref())
                                    .flatten();
                                commands::check_internal_topic_change(
                                    &res.topic,
                                    commands::InternalTopicChange::CleanupPolicy(policy),
                                )?;
                            }
                            let value = if c.operation == ConfigOperation::Delete as i32 {
                                commands::validate_topic_config_name(&c.name)?;
                                None
                            } else {
                                let v = c.value.clone().ok_or_else(|| {
                                    err(
                                        ErrorCode::InvalidConfig,
                                        format!("SET {} needs a value", c.name),
                                    )
                                })?;
                                commands::validate_topic_config(&c.name, &v)?;
                                // Stored as validated: every reader sees what was checked.
                                Some(v.trim().to_owned())
                            };
                            recs.push(record(Record::Config(ConfigRecord {
                                topic: res.topic.clone(),
                                name: c.name.clone(),
                                value,
                            })));
                        }
                        // Allowing unclean election elects for the topic's offline partitions
                        // at once, as the fencing that left them offline would have.
                        let unclean_now = res
                            .configs
                            .iter()
                            .rev()
                            .find(|c| c.name == "unclean.leader.election.enable");
                        if let Some(c) = unclean_now
                            && c.operation != ConfigOperation::Delete as i32
                            && c.value.as_deref().map(str::trim) == Some("true")
                            && let Some(t) = ctx.latest.topics.get(&res.topic)
                        {
                            recs.extend(commands::unclean_elections(ctx.latest, t, None));
                        }
                        Ok(recs)
                    })();
                    match outcome {
                        Ok(recs) if !req.validate_only => records.extend(recs),
                        Ok(_) => {}
                        Err(e) => {
                            r.error_code = e.code as i32;
                            r.error_message = e.message;
                        }
                    }
                    results.push(r);
                }
                let done: DoneFn<Vec<AlterConfigsResult>> = Box::new(move |_| results);
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(IncrementalAlterConfigsResponse { results }))
    }

    async fn describe_configs(
        &self,
        request: Request<DescribeConfigsRequest>,
    ) -> Result<Response<DescribeConfigsResponse>, Status> {
        let req = request.into_inner();
        let results = self
            .handle
            .read(move |image, _| {
                let names: Vec<String> = if req.topics.is_empty() {
                    image.topics.keys().cloned().collect()
                } else {
                    req.topics
                };
                names
                    .into_iter()
                    .map(|name| match image.topics.get(&name) {
                        Some(t) => DescribeConfigsResult {
                            topic: name,
                            error_code: ErrorCode::None as i32,
                            error_message: String::new(),
                            configs: commands::topic_config_defaults()
                                .into_iter()
                                .map(|(k, default)| {
                                    let (value, is_default, source) = match t.configs.get(&k) {
                                        Some(v) => {
                                            (v.clone(), false, ConfigSource::DynamicTopicConfig)
                                        }
                                        None => (default, true, ConfigSource::DefaultConfig),
                                    };
                                    DescribedConfig {
                                        value,
                                        is_default,
                                        source: source as i32,
                                        name: k,
                                    }
                                })
                                .collect(),
                        },
                        None => DescribeConfigsResult {
                            error_code: ErrorCode::UnknownTopicOrPartition as i32,
                            error_message: format!("topic {name:?} does not exist"),
                            topic: name,
                            configs: Vec::new(),
                        },
                    })
                    .collect::<Vec<_>>()
            })
            .await?;
        Ok(Response::new(DescribeConfigsResponse { results }))
    }

    async fn describe_cluster(
        &self,
        _request: Request<DescribeClusterRequest>,
    ) -> Result<Response<DescribeClusterResponse>, Status> {
        let voters = self
            .config
            .voters()
            .map_err(|e| Status::internal(e.to_string()))?;
        let reply = self
            .handle
            .read(move |image, info| DescribeClusterResponse {
                cluster_id: image.cluster_id.clone().unwrap_or_default(),
                controller_id: info.leader_id as i32,
                brokers: image.brokers.values().map(describe_broker).collect(),
                controllers: voters
                    .iter()
                    .map(|v| {
                        let (host, port) = v.address.rsplit_once(':').unwrap_or((&v.address, "0"));
                        ControllerDescription {
                            node_id: v.id as i32,
                            endpoint: Some(Endpoint {
                                name: "CONTROLLER".into(),
                                host: host.to_owned(),
                                port: port.parse().unwrap_or(0),
                            }),
                        }
                    })
                    .collect(),
                metadata_offset: image.next_offset - 1,
                cluster_configs: image
                    .cluster_configs
                    .iter()
                    .map(|(name, value)| ConfigEntry {
                        name: name.clone(),
                        value: Some(value.clone()),
                    })
                    .collect(),
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn describe_quorum(
        &self,
        _request: Request<DescribeQuorumRequest>,
    ) -> Result<Response<DescribeQuorumResponse>, Status> {
        let reply = self
            .handle
            .read(|_, info| DescribeQuorumResponse {
                leader_id: info.leader_id as i32,
                leader_epoch: info.term,
                commit_index: info.commit_index,
                voters: info
                    .voters
                    .iter()
                    .map(|(id, matched)| VoterState {
                        node_id: *id as i32,
                        match_index: *matched,
                        lag: info.commit_index.saturating_sub(*matched),
                    })
                    .collect(),
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn alter_partition(
        &self,
        request: Request<AlterPartitionRequest>,
    ) -> Result<Response<AlterPartitionResponse>, Status> {
        let req = request.into_inner();
        let reply = self
            .handle
            .write(move |ctx| {
                let broker = ctx.latest.brokers.get(&req.broker_id).ok_or_else(|| {
                    err(
                        ErrorCode::BrokerIdNotRegistered,
                        format!("broker {} is not registered", req.broker_id),
                    )
                })?;
                if broker.epoch != req.broker_epoch {
                    return Err(err(
                        ErrorCode::StaleBrokerEpoch,
                        format!(
                            "broker epoch {} is stale (current {})",
                            req.broker_epoch, broker.epoch
                        ),
                    ));
                }
                // Each entry is checked against the same state: a second one for a partition
                // would be applied on top of the first without its checks.
                let mut seen = BTreeSet::new();
                for t in &req.topics {
                    for p in &t.partitions {
                        if !seen.insert((t.name.as_str(), p.index)) {
                            return Err(err(
                                ErrorCode::InvalidRequest,
                                format!(
                                    "{}-{} appears more than once in one AlterPartition request",
                                    t.name, p.index
                                ),
                            ));
                        }
                    }
                }
                let mut records = Vec::new();
                let mut failures: Vec<(String, i32, ApiError)> = Vec::new();
                for t in &req.topics {
                    for p in &t.partitions {
                        match alter_one(ctx.latest, req.broker_id, t, p) {
                            Ok(r) => records.push(r),
                            Err(e) => failures.push((t.name.clone(), p.index, e)),
                        }
                    }
                }
                let topics = req.topics.clone();
                let done: DoneFn<AlterPartitionResponse> =
                    Box::new(move |image| AlterPartitionResponse {
                        error_code: ErrorCode::None as i32,
                        error_message: String::new(),
                        topics: topics
                            .iter()
                            .map(|t| AlterPartitionTopicResult {
                                name: t.name.clone(),
                                partitions: t
                                    .partitions
                                    .iter()
                                    .map(|p| {
                                        let state = image.topics.get(&t.name).and_then(|topic| {
                                            topic.partitions.get(p.index.max(0) as usize)
                                        });
                                        let failure = failures
                                            .iter()
                                            .find(|(n, i, _)| *n == t.name && *i == p.index);
                                        AlterPartitionResult {
                                            index: p.index,
                                            error_code: failure
                                                .map_or(ErrorCode::None, |(_, _, e)| e.code)
                                                as i32,
                                            error_message: failure
                                                .map(|(_, _, e)| e.message.clone())
                                                .unwrap_or_default(),
                                            leader_id: state.map_or(-1, |s| s.leader),
                                            leader_epoch: state.map_or(-1, |s| s.leader_epoch),
                                            isr: state.map(|s| s.isr.clone()).unwrap_or_default(),
                                            partition_epoch: state
                                                .map_or(-1, |s| s.partition_epoch),
                                        }
                                    })
                                    .collect(),
                            })
                            .collect(),
                    });
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn alter_partition_reassignments(
        &self,
        request: Request<AlterPartitionReassignmentsRequest>,
    ) -> Result<Response<AlterPartitionReassignmentsResponse>, Status> {
        let req = request.into_inner();
        let reply = self
            .handle
            .write(move |ctx| {
                if req.topics.iter().all(|t| t.partitions.is_empty()) {
                    return Err(err(
                        ErrorCode::InvalidRequest,
                        "no partitions given: name at least one topic partition with its target replicas (or none to cancel)",
                    ));
                }
                let mut records = Vec::new();
                let mut first_error: Option<ApiError> = None;
                let mut seen = BTreeSet::new();
                let mut topics = Vec::new();
                for t in &req.topics {
                    let mut partitions = Vec::new();
                    for p in &t.partitions {
                        let outcome = if seen.insert((t.name.clone(), p.index)) {
                            commands::reassign_partition(
                                ctx.latest,
                                &t.name,
                                p.index,
                                p.replicas.as_ref().map(|r| r.ids.as_slice()),
                            )
                        } else {
                            Err(err(
                                ErrorCode::InvalidRequest,
                                format!("{}-{} appears twice in the request", t.name, p.index),
                            ))
                        };
                        let mut result = ReassignablePartitionResult {
                            index: p.index,
                            ..Default::default()
                        };
                        match outcome {
                            Ok(Some(change)) => {
                                records.push(record(Record::PartitionChange(change)));
                            }
                            Ok(None) => {}
                            Err(e) => {
                                result.error_code = e.code as i32;
                                result.error_message = e.message.clone();
                                first_error.get_or_insert(e);
                            }
                        }
                        partitions.push(result);
                    }
                    topics.push(ReassignableTopicResult {
                        name: t.name.clone(),
                        partitions,
                    });
                }
                let mut response = AlterPartitionReassignmentsResponse {
                    topics,
                    ..Default::default()
                };
                if let Some(e) = first_error {
                    // All or nothing: a plan applied in part is harder to reason about.
                    records.clear();
                    response.error_code = e.code as i32;
                    response.error_message = format!("nothing was changed: {}", e.message);
                }
                let done: DoneFn<AlterPartitionReassignmentsResponse> =
                    Box::new(move |_| response);
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn list_partition_reassignments(
        &self,
        request: Request<ListPartitionReassignmentsRequest>,
    ) -> Result<Response<ListPartitionReassignmentsResponse>, Status> {
        let req = request.into_inner();
        let reply = self
            .handle
            .read(move |image, _| {
                let mut topics = Vec::new();
                for t in image.topics.values() {
                    if !req.topics.is_empty() && !req.topics.contains(&t.name) {
                        continue;
                    }
                    let partitions: Vec<OngoingPartitionReassignment> = t
                        .partitions
                        .iter()
                        .enumerate()
                        .filter_map(|(i, p)| {
                            let r = image.reassignments.get(&(t.id.clone(), i as i32))?;
                            Some(OngoingPartitionReassignment {
                                index: i as i32,
                                replicas: p.replicas.clone(),
                                adding_replicas: r.adding_replicas.clone(),
                                removing_replicas: r.removing_replicas.clone(),
                                isr: p.isr.clone(),
                                leader: p.leader,
                            })
                        })
                        .collect();
                    if !partitions.is_empty() {
                        topics.push(OngoingTopicReassignment {
                            name: t.name.clone(),
                            partitions,
                        });
                    }
                }
                ListPartitionReassignmentsResponse { topics }
            })
            .await?;
        Ok(Response::new(reply))
    }

    async fn elect_leaders(
        &self,
        request: Request<ElectLeadersRequest>,
    ) -> Result<Response<ElectLeadersResponse>, Status> {
        let req = request.into_inner();
        let reply = self
            .handle
            .write(move |ctx| {
                let image = ctx.latest;
                // (topic, partitions); an empty request means everything.
                let wanted: Vec<(String, Vec<i32>)> = if req.topics.is_empty() {
                    image
                        .topics
                        .values()
                        .map(|t| (t.name.clone(), Vec::new()))
                        .collect()
                } else {
                    req.topics
                        .iter()
                        .map(|t| (t.name.clone(), t.partitions.clone()))
                        .collect()
                };
                let mut records = Vec::new();
                // (topic, index, error, election not needed)
                let mut outcomes: Vec<(String, i32, Option<ApiError>, bool)> = Vec::new();
                let mut seen = BTreeSet::new();
                for (name, partitions) in wanted {
                    let indexes: Vec<i32> = if partitions.is_empty() {
                        match image.topics.get(&name) {
                            Some(t) => (0..t.partitions.len() as i32).collect(),
                            None => vec![-1],
                        }
                    } else {
                        partitions
                    };
                    for index in indexes {
                        if !seen.insert((name.clone(), index)) {
                            continue;
                        }
                        match commands::preferred_leader_election(image, &name, index) {
                            Ok(Some(change)) => {
                                records.push(record(Record::PartitionChange(change)));
                                outcomes.push((name.clone(), index, None, false));
                            }
                            Ok(None) => outcomes.push((name.clone(), index, None, true)),
                            Err(e) => outcomes.push((name.clone(), index, Some(e), false)),
                        }
                    }
                }
                let done: DoneFn<ElectLeadersResponse> = Box::new(move |image| {
                    let mut topics: Vec<ElectLeadersTopicResult> = Vec::new();
                    for (name, index, error, not_needed) in outcomes {
                        let leader = image
                            .topics
                            .get(&name)
                            .and_then(|t| t.partitions.get(usize::try_from(index).ok()?))
                            .map_or(-1, |p| p.leader);
                        let result = ElectLeadersPartitionResult {
                            index,
                            error_code: error.as_ref().map_or(ErrorCode::None, |e| e.code) as i32,
                            error_message: error.map(|e| e.message).unwrap_or_default(),
                            leader,
                            election_not_needed: not_needed,
                        };
                        match topics.iter_mut().find(|t| t.name == name) {
                            Some(t) => t.partitions.push(result),
                            None => topics.push(ElectLeadersTopicResult {
                                name,
                                partitions: vec![result],
                            }),
                        }
                    }
                    ElectLeadersResponse { topics }
                });
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(reply))
    }

    type FetchMetadataStream = Pin<Box<dyn Stream<Item = Result<MetadataBatch, Status>> + Send>>;

    /// Streams the committed metadata log. Only the active controller answers, after a
    /// ReadIndex: any other controller fails with NOT_CONTROLLER and the leader hint. The stream
    /// ends (NOT_CONTROLLER, or "shutting down") when this controller loses leadership.
    async fn init_producer_id(
        &self,
        request: Request<InitProducerIdRequest>,
    ) -> Result<Response<InitProducerIdResponse>, Status> {
        let req = request.into_inner();
        // Validation failures are answered in the body (Kafka's InitProducerId carries its error
        // code); NOT_CONTROLLER and timeouts stay gRPC statuses, so clients follow leader hints.
        let reply = self
            .handle
            .write(move |ctx| {
                let grant = commands::init_producer_id(
                    ctx.latest,
                    ctx.producer_ids,
                    req.transactional_id.as_deref(),
                    req.producer_id,
                    req.producer_epoch,
                );
                let (records, answer) = match grant {
                    Ok(g) => (g.records, Ok((g.producer_id, g.producer_epoch))),
                    Err(e) => (Vec::new(), Err(e)),
                };
                let done: DoneFn<Result<(i64, i16), ApiError>> = Box::new(move |image| {
                    let (id, epoch) = answer?;
                    // Only ever answer an id the committed log has reserved.
                    if id >= image.next_producer_id_block_start {
                        return Err(err(
                            ErrorCode::NotController,
                            "the producer id block was not committed; retry",
                        ));
                    }
                    Ok((id, epoch))
                });
                Ok((records, done))
            })
            .await?;
        Ok(Response::new(match reply {
            Ok((producer_id, epoch)) => InitProducerIdResponse {
                error_code: ErrorCode::None as i32,
                error_message: String::new(),
                producer_id,
                producer_epoch: i32::from(epoch),
            },
            Err(e) if e.code == ErrorCode::NotController => return Err(e.into()),
            Err(e) => InitProducerIdResponse {
                error_code: e.code as i32,
                error_message: e.message,
                producer_id: -1,
                producer_epoch: -1,
            },
        }))
    }

    async fn fetch_metadata(
        &self,
        request: Request<FetchMetadataRequest>,
    ) -> Result<Response<Self::FetchMetadataStream>, Status> {
        let from = request.into_inner().from_offset.max(0);
        let handle = self.handle.clone();
        let shutdown = self.shutdown.clone();
        let start = handle.fetch_metadata(from).await?;
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<MetadataBatch, Status>>(16);
        tokio::spawn(async move {
            tokio::select! {
                _ = feed_metadata(handle, start, tx.clone()) => {}
                // The server's graceful shutdown waits for open streams: end them.
                _ = shutdown.cancelled() => {
                    let e = ApiError::new(ErrorCode::NotController, "the controller is shutting down");
                    let _ = tx.try_send(Err(e.into()));
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}

/// Feeds one metadata stream: the initial batch, then every committed batch after it. Ends when
/// the broker goes away, or when this controller stops being the active one (the feed closes and
/// the restart from `next` is refused with NOT_CONTROLLER and the new leader's hint).
async fn feed_metadata(
    handle: QuorumHandle,
    start: crate::quorum_controller::MetadataStart,
    tx: tokio::sync::mpsc::Sender<Result<MetadataBatch, Status>>,
) {
    let mut next = start.initial.last_offset + 1;
    if tx.send(Ok(start.initial)).await.is_err() {
        return;
    }
    let mut updates = start.updates;
    loop {
        match updates.recv().await {
            Ok(batch) => {
                if batch.is_snapshot {
                    next = batch.last_offset + 1;
                    if tx.send(Ok((*batch).clone())).await.is_err() {
                        return;
                    }
                    continue;
                }
                let records: Vec<MetadataRecord> = batch
                    .records
                    .iter()
                    .filter(|r| r.offset >= next)
                    .cloned()
                    .collect();
                if records.is_empty() {
                    continue;
                }
                next = batch.last_offset + 1;
                let out = MetadataBatch {
                    is_snapshot: false,
                    last_offset: batch.last_offset,
                    records,
                };
                if tx.send(Ok(out)).await.is_err() {
                    return;
                }
            }
            Err(
                tokio::sync::broadcast::error::RecvError::Lagged(_)
                | tokio::sync::broadcast::error::RecvError::Closed,
            ) => {
                // Too slow for the live feed, or the feed closed because this controller
                // stopped being the active one: start again from where we are. That goes
                // through the leadership check and a ReadIndex, so after a step-down the
                // stream ends with NOT_CONTROLLER and the new leader's hint (or
                // "shutting down"), and the broker reconnects to the active controller.
                if tx.is_closed() {
                    return;
                }
                match handle.fetch_metadata(next).await {
                    Ok(again) => {
                        next = again.initial.last_offset + 1;
                        updates = again.updates;
                        if !again.initial.records.is_empty()
                            && tx.send(Ok(again.initial)).await.is_err()
                        {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(e.into())).await;
                        return;
                    }
                }
            }
        }
    }
}

/// An operation rill knows (SET or DELETE): Kafka's APPEND and SUBTRACT, or any other value,
/// are refused rather than taken for SET.
fn check_operation(c: &AlterableConfig) -> Result<(), ApiError> {
    ConfigOperation::try_from(c.operation)
        .map(drop)
        .map_err(|_| {
            err(
                ErrorCode::InvalidRequest,
                format!(
                    "unknown config operation {} for {}: use SET (0) or DELETE (1)",
                    c.operation, c.name
                ),
            )
        })
}

/// Records for a BROKER config resource: only the cluster-wide default (empty name) exists, and
/// only the names in `commands::CLUSTER_CONFIGS`; all of the resource's changes or none.
fn cluster_config_records(res: &AlterConfigsResource) -> Result<Vec<MetadataRecord>, ApiError> {
    if !res.topic.is_empty() {
        return Err(err(
            ErrorCode::InvalidRequest,
            format!(
                "per-broker configs (broker {:?}) are not supported; use the cluster-wide default (an empty name)",
                res.topic
            ),
        ));
    }
    let mut recs = Vec::new();
    for c in &res.configs {
        check_operation(c)?;
        let value = if c.operation == ConfigOperation::Delete as i32 {
            None
        } else {
            Some(c.value.clone().ok_or_else(|| {
                err(
                    ErrorCode::InvalidConfig,
                    format!("SET {} needs a value", c.name),
                )
            })?)
        };
        commands::validate_cluster_config(&c.name, value.as_deref())?;
        recs.push(record(Record::Config(ConfigRecord {
            topic: String::new(),
            name: c.name.clone(),
            value: value.map(|v| v.trim().to_owned()),
        })));
    }
    Ok(recs)
}

fn register_record(req: &BrokerRegistrationRequest) -> MetadataRecord {
    record(Record::RegisterBroker(RegisterBrokerRecord {
        broker_id: req.broker_id,
        incarnation_id: req.incarnation_id.clone(),
        broker_epoch: 0,
        endpoints: req.listeners.clone(),
        rack: req.rack.clone(),
        fenced: true,
    }))
}

fn alter_one(
    image: &MetadataImage,
    broker: i32,
    requested: &AlterPartitionTopic,
    p: &AlterPartitionData,
) -> Result<MetadataRecord, ApiError> {
    let topic = requested.name.as_str();
    let t = image.topics.get(topic).ok_or_else(|| {
        err(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic {topic:?} does not exist"),
        )
    })?;
    if !requested.topic_id.is_empty() && requested.topic_id != t.id {
        return Err(err(
            ErrorCode::InconsistentTopicId,
            format!(
                "topic {topic:?} is {} now, not {}: the change was meant for a deleted incarnation",
                t.id, requested.topic_id
            ),
        ));
    }
    let state = t
        .partitions
        .get(p.index.max(0) as usize)
        .filter(|_| p.index >= 0)
        .ok_or_else(|| {
            err(
                ErrorCode::UnknownTopicOrPartition,
                format!("{topic}-{} does not exist", p.index),
            )
        })?;
    if state.leader != broker {
        return Err(err(
            ErrorCode::NotLeaderOrFollower,
            format!(
                "broker {broker} does not lead {topic}-{} (leader {})",
                p.index, state.leader
            ),
        ));
    }
    if p.leader_epoch < state.leader_epoch {
        return Err(err(
            ErrorCode::FencedLeaderEpoch,
            format!(
                "leader epoch {} is older than {}",
                p.leader_epoch, state.leader_epoch
            ),
        ));
    }
    if p.leader_epoch > state.leader_epoch {
        return Err(err(
            ErrorCode::UnknownLeaderEpoch,
            format!(
                "leader epoch {} is newer than {}",
                p.leader_epoch, state.leader_epoch
            ),
        ));
    }
    if p.partition_epoch != state.partition_epoch {
        return Err(err(
            ErrorCode::InvalidUpdateVersion,
            format!(
                "partition epoch {} is stale (current {}); refresh and retry",
                p.partition_epoch, state.partition_epoch
            ),
        ));
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = p.new_isr.iter().find(|id| !seen.insert(**id)) {
        // A repeated id would count twice towards min.insync.replicas.
        return Err(err(
            ErrorCode::InvalidRequest,
            format!(
                "the new ISR of {topic}-{} lists broker {dup} more than once",
                p.index
            ),
        ));
    }
    if !p.new_isr.contains(&broker) {
        return Err(err(
            ErrorCode::InvalidRequest,
            "the new ISR must contain the leader",
        ));
    }
    for id in &p.new_isr {
        if !state.replicas.contains(id) {
            return Err(err(
                ErrorCode::InvalidRequest,
                format!("broker {id} is not a replica of {topic}-{}", p.index),
            ));
        }
        if !state.isr.contains(id) && image.brokers.get(id).is_none_or(|b| b.fenced) {
            return Err(err(
                ErrorCode::IneligibleReplica,
                format!("broker {id} is fenced and cannot join the ISR"),
            ));
        }
    }
    // KIP-903: a member this change adds must still be the registration the leader saw catch
    // up; one that restarted since may have lost what it had fetched (an unflushed tail).
    if !p.new_isr_broker_epochs.is_empty() && p.new_isr_broker_epochs.len() != p.new_isr.len() {
        return Err(err(
            ErrorCode::InvalidRequest,
            format!(
                "new_isr_broker_epochs has {} entries for {} ISR members",
                p.new_isr_broker_epochs.len(),
                p.new_isr.len()
            ),
        ));
    }
    for (id, epoch) in p.new_isr.iter().zip(&p.new_isr_broker_epochs) {
        let current = image.brokers.get(id).map_or(-1, |b| b.epoch);
        if *epoch >= 0 && !state.isr.contains(id) && current != *epoch {
            return Err(err(
                ErrorCode::IneligibleReplica,
                format!(
                    "broker {id} caught up as registration {epoch}, but is registration {current} now: it must catch up again"
                ),
            ));
        }
    }
    let mut change = PartitionChangeRecord {
        topic_id: t.id.clone(),
        partition: p.index,
        isr: Some(IsrList {
            ids: p.new_isr.clone(),
        }),
        ..Default::default()
    };
    // The leader's ISR expansion is what brings an adding replica in: finish the partition's
    // reassignment in the same record when it was the last one missing.
    if commands::complete_reassignment_on_isr_change(image, t, p.index, &p.new_isr, &mut change) {
        tracing::info!(
            topic,
            partition = p.index,
            replicas = ?change.replicas.as_ref().map(|r| &r.ids),
            leader = ?change.leader,
            "reassignment complete: every adding replica is in the ISR"
        );
    }
    Ok(record(Record::PartitionChange(change)))
}

/// Implements `rill.v1.Quorum`: delivers peers' Raft messages to the quorum thread.
pub struct QuorumService {
    handle: QuorumHandle,
    me: u64,
    cluster_id: String,
}

impl QuorumService {
    /// A transport endpoint for controller `me`.
    pub fn new(handle: QuorumHandle, me: u64, cluster_id: String) -> Self {
        QuorumService {
            handle,
            me,
            cluster_id,
        }
    }
}

#[tonic::async_trait]
impl Quorum for QuorumService {
    async fn step(
        &self,
        request: Request<RaftMessageBatch>,
    ) -> Result<Response<RaftMessageAck>, Status> {
        let batch = request.into_inner();
        if batch.to != self.me {
            return Err(Status::invalid_argument(format!(
                "this is controller {}, not {}",
                self.me, batch.to
            )));
        }
        if !self.cluster_id.is_empty()
            && !batch.cluster_id.is_empty()
            && batch.cluster_id != self.cluster_id
        {
            return Err(Status::failed_precondition(format!(
                "cluster id {} is not this cluster ({})",
                batch.cluster_id, self.cluster_id
            )));
        }
        let mut msgs = Vec::with_capacity(batch.messages.len());
        for m in &batch.messages {
            msgs.push(
                raft::prelude::Message::parse_from_bytes(m).map_err(|e| {
                    Status::invalid_argument(format!("undecodable raft message: {e}"))
                })?,
            );
        }
        self.handle.send(Event::Raft(msgs))?;
        Ok(Response::new(RaftMessageAck {}))
    }
}
