//! Kafka requests translated to rill's (the `rill.v1` messages [`crate::apis`] answers) and
//! the answers translated back. rill's `ErrorCode` numbers are Kafka's, so error codes pass
//! through; record batches pass through as they are (Kafka v2 RecordBatch bytes both sides).

use bytes::Bytes;
use kafka_protocol::messages::{self as m, ApiKey, BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use rill_protocol::ApiError;
use rill_protocol::proto as rp;

use super::{KafkaApis, KafkaError, encode};

/// Kafka's UNSUPPORTED_VERSION.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// Kafka's UNKNOWN_TOPIC_ID.
pub const UNKNOWN_TOPIC_ID: i16 = 100;

/// The operations on a topic (Kafka's `AclOperation` bits: READ, WRITE, CREATE, DELETE, ALTER,
/// DESCRIBE, DESCRIBE_CONFIGS, ALTER_CONFIGS), all allowed: rill has no authorization.
pub const TOPIC_OPERATIONS: i32 =
    1 << 3 | 1 << 4 | 1 << 5 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 10 | 1 << 11;
/// The operations on the cluster (CREATE, ALTER, DESCRIBE, CLUSTER_ACTION, DESCRIBE_CONFIGS,
/// ALTER_CONFIGS, IDEMPOTENT_WRITE), all allowed.
pub const CLUSTER_OPERATIONS: i32 = 1 << 5 | 1 << 7 | 1 << 8 | 1 << 9 | 1 << 10 | 1 << 11 | 1 << 12;

/// The APIs and versions this listener answers, as ApiVersions lists them.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 9),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 1, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::FindCoordinator, 0, 3),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetCommit, 2, 8),
    (ApiKey::OffsetFetch, 1, 7),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 2),
    (ApiKey::ConsumerGroupHeartbeat, 0, 1),
];

/// The (min, max) versions of `key` this listener answers, `None` when it does not.
pub fn supported_versions(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, min, max)| (*min, *max))
}

fn text(s: &str) -> StrBytes {
    StrBytes::from_string(s.to_owned())
}

fn topic_name(s: &str) -> TopicName {
    TopicName(text(s))
}

fn error_of(e: tonic::Status) -> (i16, String) {
    let e = ApiError::from(e);
    (e.code as i16, e.message)
}

fn message(s: String) -> Option<StrBytes> {
    (!s.is_empty()).then(|| StrBytes::from_string(s))
}

/// ApiVersions: the versions of [`SUPPORTED`], with `error_code`.
pub fn api_versions(error_code: i16) -> m::ApiVersionsResponse {
    m::ApiVersionsResponse::default()
        .with_error_code(error_code)
        .with_api_keys(
            SUPPORTED
                .iter()
                .map(|(k, min, max)| {
                    m::api_versions_response::ApiVersion::default()
                        .with_api_key(*k as i16)
                        .with_min_version(*min)
                        .with_max_version(*max)
                })
                .collect(),
        )
}

/// Metadata: brokers with their Kafka endpoints, this broker as the controller (it forwards
/// admin requests), topics with leaders, replicas and ISRs, topic ids.
pub async fn metadata(apis: &KafkaApis, req: m::MetadataRequest) -> m::MetadataResponse {
    let image = apis.svc.rm.image();
    // null: every topic; an empty list (v1+): none. A topic may be named by id (v10+).
    let mut unknown_ids = Vec::new();
    // rill has no authorization: asked for (v8+), every operation is allowed.
    let topic_ops = if req.include_topic_authorized_operations {
        TOPIC_OPERATIONS
    } else {
        i32::MIN
    };
    let cluster_ops = if req.include_cluster_authorized_operations {
        CLUSTER_OPERATIONS
    } else {
        i32::MIN
    };
    let names: Option<Vec<String>> = req.topics.map(|topics| {
        topics
            .into_iter()
            .filter_map(|t| match t.name {
                Some(n) => Some(n.0.to_string()),
                None => {
                    let name = image.topic_names.get(&t.topic_id.to_string()).cloned();
                    if name.is_none() {
                        unknown_ids.push(t.topic_id);
                    }
                    name
                }
            })
            .collect()
    });
    // Topics were asked for and none is known by name (an empty list, or ids only, all
    // unknown): no topic but the unknown ids' errors, not every topic.
    let wanted_none = names.as_ref().is_some_and(Vec::is_empty);
    let answer = crate::apis::metadata::handle(
        &apis.svc,
        rp::MetadataRequest {
            topics: names.clone().unwrap_or_default(),
        },
    )
    .await;
    let mut resp = m::MetadataResponse::default()
        .with_controller_id(BrokerId(-1))
        .with_cluster_authorized_operations(cluster_ops);
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let (code, _) = error_of(e);
            resp.error_code = code;
            return resp;
        }
    };
    resp.cluster_id = (!answer.cluster_id.is_empty()).then(|| text(&answer.cluster_id));
    // Kafka clients send admin requests to the "controller" of Metadata. rill's controllers do
    // not speak Kafka (and their ids may be no broker's), so, as a KRaft broker of Kafka does,
    // name a broker: this one, which forwards admin requests to the controllers.
    resp.controller_id = BrokerId(apis.svc.rm.config().node_id);
    // Kafka clients only see brokers they can reach over Kafka: live ones with a Kafka endpoint.
    resp.brokers = answer
        .brokers
        .iter()
        .filter(|b| !b.fenced)
        .filter_map(|b| {
            let e = kafka_endpoint(&b.endpoints)?;
            Some(
                m::metadata_response::MetadataResponseBroker::default()
                    .with_node_id(BrokerId(b.node_id))
                    .with_host(text(&e.host))
                    .with_port(e.port as i32)
                    .with_rack(b.rack.as_deref().map(text)),
            )
        })
        .collect();
    if !wanted_none {
        resp.topics = answer
            .topics
            .into_iter()
            .map(|t| {
                let id = uuid::Uuid::parse_str(&t.topic_id).unwrap_or_default();
                m::metadata_response::MetadataResponseTopic::default()
                    .with_error_code(t.error_code as i16)
                    .with_is_internal(is_internal(&t.name))
                    .with_name(Some(topic_name(&t.name)))
                    .with_topic_id(id)
                    .with_topic_authorized_operations(topic_ops)
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                m::metadata_response::MetadataResponsePartition::default()
                                    .with_error_code(p.error_code as i16)
                                    .with_partition_index(p.index)
                                    .with_leader_id(BrokerId(p.leader_id))
                                    .with_leader_epoch(p.leader_epoch)
                                    .with_replica_nodes(
                                        p.replicas.into_iter().map(BrokerId).collect(),
                                    )
                                    .with_isr_nodes(p.isr.into_iter().map(BrokerId).collect())
                                    .with_offline_replicas(
                                        p.offline_replicas.into_iter().map(BrokerId).collect(),
                                    )
                            })
                            .collect(),
                    )
            })
            .collect();
    }
    for id in unknown_ids {
        resp.topics.push(
            m::metadata_response::MetadataResponseTopic::default()
                .with_error_code(UNKNOWN_TOPIC_ID)
                .with_topic_id(id)
                .with_topic_authorized_operations(i32::MIN),
        );
    }
    resp
}

/// Kafka's internal topics (a user's `__events` is not one): hidden from pattern
/// subscriptions and topic listings that leave internal topics out.
fn is_internal(topic: &str) -> bool {
    matches!(topic, "__consumer_offsets" | "__transaction_state")
}

/// Metadata at a version rill does not answer: every topic asked for gets UNSUPPORTED_VERSION.
pub fn metadata_unsupported(req: m::MetadataRequest) -> m::MetadataResponse {
    m::MetadataResponse::default()
        .with_controller_id(BrokerId(-1))
        .with_error_code(UNSUPPORTED_VERSION)
        .with_topics(
            req.topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    m::metadata_response::MetadataResponseTopic::default()
                        .with_error_code(UNSUPPORTED_VERSION)
                        .with_name(t.name)
                        .with_topic_id(t.topic_id)
                })
                .collect(),
        )
}

/// Produce: the rill ProduceRequest with the same acks, timeout and batch bytes.
pub async fn produce(apis: &KafkaApis, req: m::ProduceRequest) -> m::ProduceResponse {
    produce_start(apis, req).await.await
}

/// [`produce`] in two steps: returns once the batches are appended, with the answer still to
/// come (the fsync, and for acks=all the replication), so a connection can read and append its
/// next Produce while this one becomes durable.
pub async fn produce_start(
    apis: &KafkaApis,
    req: m::ProduceRequest,
) -> impl Future<Output = m::ProduceResponse> + Send + 'static {
    let rill = rp::ProduceRequest {
        acks: req.acks.into(),
        timeout_ms: req.timeout_ms.max(0) as u32,
        topics: req
            .topic_data
            .iter()
            .map(|t| rp::TopicProduceData {
                name: t.name.0.to_string(),
                partitions: t
                    .partition_data
                    .iter()
                    .map(|p| rp::PartitionProduceData {
                        index: p.index,
                        records: p.records.clone().unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let answer = crate::apis::produce::start(&apis.svc, rill).await;
    // The answer needs the request's topics and partitions, not its record bytes.
    let mut req = req;
    for p in req
        .topic_data
        .iter_mut()
        .flat_map(|t| t.partition_data.iter_mut())
    {
        p.records = None;
    }
    async move { produce_answer(&req, answer.await) }
}

fn produce_answer(
    req: &m::ProduceRequest,
    answer: Result<rp::ProduceResponse, ApiError>,
) -> m::ProduceResponse {
    match answer {
        Ok(answer) => m::ProduceResponse::default().with_responses(
            answer
                .topics
                .into_iter()
                .map(|t| {
                    m::produce_response::TopicProduceResponse::default()
                        .with_name(topic_name(&t.name))
                        .with_partition_responses(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    let leader = current_leader(p.current_leader);
                                    m::produce_response::PartitionProduceResponse::default()
                                        .with_index(p.index)
                                        .with_error_code(p.error_code as i16)
                                        .with_error_message(message(p.error_message))
                                        .with_base_offset(p.base_offset)
                                        .with_log_append_time_ms(p.log_append_time_ms)
                                        .with_log_start_offset(p.log_start_offset)
                                        .with_current_leader(
                                            m::produce_response::LeaderIdAndEpoch::default()
                                                .with_leader_id(BrokerId(leader.leader_id))
                                                .with_leader_epoch(leader.leader_epoch),
                                        )
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        // A request queue that stayed full: rill's own clients back off on
        // THROTTLING_QUOTA_EXCEEDED, but Kafka never answers a Produce with it and librdkafka
        // takes it for a permanent failure. Nothing was appended; REQUEST_TIMED_OUT is
        // retried by every Kafka client.
        Err(e) if e.code == rill_protocol::ErrorCode::ThrottlingQuotaExceeded => {
            produce_failed(req, REQUEST_TIMED_OUT, &e.message)
        }
        Err(e) => produce_failed(req, e.code as i16, &e.message),
    }
}

/// Every partition of `req` failed with `code`.
fn produce_failed(req: &m::ProduceRequest, code: i16, msg: &str) -> m::ProduceResponse {
    m::ProduceResponse::default().with_responses(
        req.topic_data
            .iter()
            .map(|t| {
                m::produce_response::TopicProduceResponse::default()
                    .with_name(t.name.clone())
                    .with_topic_id(t.topic_id)
                    .with_partition_responses(
                        t.partition_data
                            .iter()
                            .map(|p| {
                                m::produce_response::PartitionProduceResponse::default()
                                    .with_index(p.index)
                                    .with_error_code(code)
                                    .with_base_offset(-1)
                                    .with_log_append_time_ms(-1)
                                    .with_log_start_offset(-1)
                                    .with_error_message(message(msg.to_owned()))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Produce at a version rill does not answer.
pub fn produce_unsupported(req: m::ProduceRequest) -> m::ProduceResponse {
    produce_failed(
        &req,
        UNSUPPORTED_VERSION,
        "this Produce version is not supported",
    )
}

/// Fetch (v4-12) with fetch sessions from v7 ([`super::fetch_session`]): a full fetch (epoch 0)
/// creates a session, an incremental one (its id and epoch) reads every partition of the
/// session and answers only those with something new; epoch -1 (and v4-6) fetches without one.
pub async fn fetch(apis: &KafkaApis, req: m::FetchRequest, version: i16) -> m::FetchResponse {
    use super::fetch_session::{Cached, Context, Key};
    let wanted: Vec<(Key, Cached)> = req
        .topics
        .iter()
        .flat_map(|t| {
            t.partitions.iter().map(|p| {
                (
                    (t.topic.0.to_string(), p.partition),
                    Cached::requested(
                        t.topic_id,
                        p.fetch_offset,
                        p.partition_max_bytes,
                        p.current_leader_epoch,
                    ),
                )
            })
        })
        .collect();
    let context = if version >= 7 {
        let forgotten: Vec<Key> = req
            .forgotten_topics_data
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| (t.topic.0.to_string(), *p)))
            .collect();
        apis.fetch_sessions.context(
            req.session_id,
            req.session_epoch,
            version >= 13,
            wanted.clone(),
            &forgotten,
        )
    } else {
        Context::Sessionless
    };
    let (read, session_id) = match &context {
        Context::Error(code) => {
            return m::FetchResponse::default()
                .with_error_code(*code)
                .with_session_id(0);
        }
        Context::Sessionless | Context::Full => (wanted.clone(), 0),
        Context::Incremental { id, partitions } => (partitions.clone(), *id),
    };
    // Consecutive partitions of one topic go together (a topic may come again later in a
    // session's order, as in Kafka's answers).
    let mut topics: Vec<rp::FetchTopic> = Vec::new();
    for ((topic, index), c) in &read {
        let p = rp::FetchPartition {
            index: *index,
            current_leader_epoch: Some(c.current_leader_epoch),
            fetch_offset: c.fetch_offset,
            partition_max_bytes: c.partition_max_bytes,
            last_fetched_epoch: None,
            log_start_offset: -1,
        };
        match topics.last_mut() {
            Some(t) if t.name == *topic => t.partitions.push(p),
            _ => topics.push(rp::FetchTopic {
                name: topic.clone(),
                partitions: vec![p],
            }),
        }
    }
    let rill = rp::FetchRequest {
        // This listener serves consumers; followers fetch over gRPC.
        replica_id: -1,
        replica_epoch: -1,
        max_wait_ms: req.max_wait_ms.max(0) as u32,
        min_bytes: req.min_bytes,
        max_bytes: req.max_bytes,
        topics,
    };
    let mut answer = match crate::apis::fetch::handle(&apis.svc, rill.clone()).await {
        Ok(a) => a,
        Err(e) => {
            // The whole fetch failed: every partition read carries the error.
            let (code, message) = error_of(e);
            rp::FetchResponse {
                topics: rill
                    .topics
                    .iter()
                    .map(|t| rp::FetchTopicResponse {
                        name: t.name.clone(),
                        partitions: t
                            .partitions
                            .iter()
                            .map(|p| rp::FetchPartitionResponse {
                                index: p.index,
                                error_code: code.into(),
                                error_message: message.clone(),
                                high_watermark: -1,
                                log_start_offset: -1,
                                ..Default::default()
                            })
                            .collect(),
                    })
                    .collect(),
            }
        }
    };
    let session_id = match context {
        Context::Full => apis.fetch_sessions.create(read, version >= 13, &answer),
        Context::Incremental { .. } => {
            apis.fetch_sessions.answered(session_id, &mut answer);
            session_id
        }
        _ => 0,
    };
    m::FetchResponse::default()
        .with_session_id(session_id)
        .with_responses(fetch_answer(answer))
}

/// A partition's current leader as rill answered it; unknown (-1, -1) when it did not.
fn current_leader(leader: Option<rp::LeaderIdAndEpoch>) -> rp::LeaderIdAndEpoch {
    leader.unwrap_or(rp::LeaderIdAndEpoch {
        leader_id: -1,
        leader_epoch: -1,
    })
}

/// The Kafka listener's endpoint among a broker's endpoints (`None`: it has no Kafka listener).
pub(super) fn kafka_endpoint(endpoints: &[rp::Endpoint]) -> Option<&rp::Endpoint> {
    endpoints.iter().find(|e| e.name == super::ENDPOINT_NAME)
}

/// A partition error as Kafka's Fetch answers it: a partition without a leader is
/// NOT_LEADER_OR_FOLLOWER there (Kafka never answers LEADER_NOT_AVAILABLE to a fetch, and the
/// Java consumer throws on it instead of refreshing its metadata).
fn fetch_error_code(code: i32) -> i16 {
    use rill_protocol::ErrorCode;
    if code == ErrorCode::LeaderNotAvailable as i32 {
        ErrorCode::NotLeaderOrFollower as i16
    } else {
        code as i16
    }
}

/// rill's Fetch answer as Kafka's topics.
fn fetch_answer(answer: rp::FetchResponse) -> Vec<m::fetch_response::FetchableTopicResponse> {
    answer
        .topics
        .into_iter()
        .map(|t| {
            m::fetch_response::FetchableTopicResponse::default()
                .with_topic(topic_name(&t.name))
                .with_partitions(
                    t.partitions
                        .into_iter()
                        .map(|p| {
                            let leader = current_leader(p.current_leader);
                            m::fetch_response::PartitionData::default()
                                .with_partition_index(p.index)
                                .with_error_code(fetch_error_code(p.error_code))
                                .with_high_watermark(p.high_watermark)
                                // No transactions: everything below the high watermark is
                                // stable.
                                .with_last_stable_offset(p.high_watermark)
                                .with_log_start_offset(p.log_start_offset)
                                .with_aborted_transactions(Some(Vec::new()))
                                .with_preferred_read_replica(BrokerId(-1))
                                .with_current_leader(
                                    m::fetch_response::LeaderIdAndEpoch::default()
                                        .with_leader_id(BrokerId(leader.leader_id))
                                        .with_leader_epoch(leader.leader_epoch),
                                )
                                .with_records(Some(p.records))
                        })
                        .collect(),
                )
        })
        .collect()
}

/// Every partition of `req` failed with `code`.
fn fetch_failed(req: &m::FetchRequest, code: i16) -> m::FetchResponse {
    m::FetchResponse::default().with_responses(
        req.topics
            .iter()
            .map(|t| {
                m::fetch_response::FetchableTopicResponse::default()
                    .with_topic(t.topic.clone())
                    .with_topic_id(t.topic_id)
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                m::fetch_response::PartitionData::default()
                                    .with_partition_index(p.partition)
                                    .with_error_code(code)
                                    .with_high_watermark(-1)
                                    .with_last_stable_offset(-1)
                                    .with_log_start_offset(-1)
                                    .with_preferred_read_replica(BrokerId(-1))
                                    .with_records(Some(Bytes::new()))
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// Fetch at a version rill does not answer.
pub fn fetch_unsupported(req: m::FetchRequest) -> m::FetchResponse {
    fetch_failed(&req, UNSUPPORTED_VERSION).with_error_code(UNSUPPORTED_VERSION)
}

/// ListOffsets: earliest (-2), latest (-1), max timestamp (-3) or a time; the leader epoch of
/// the batch found from v4 on (the codec refuses it below).
pub async fn list_offsets(
    apis: &KafkaApis,
    req: m::ListOffsetsRequest,
    version: i16,
) -> m::ListOffsetsResponse {
    let rill = rp::ListOffsetsRequest {
        replica_id: None,
        topics: req
            .topics
            .iter()
            .map(|t| rp::ListOffsetsTopic {
                name: t.name.0.to_string(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| rp::ListOffsetsPartition {
                        index: p.partition_index,
                        current_leader_epoch: Some(p.current_leader_epoch),
                        timestamp: p.timestamp,
                    })
                    .collect(),
            })
            .collect(),
    };
    match crate::apis::list_offsets::handle(&apis.svc, rill).await {
        Ok(answer) => m::ListOffsetsResponse::default().with_topics(
            answer
                .topics
                .into_iter()
                .map(|t| {
                    m::list_offsets_response::ListOffsetsTopicResponse::default()
                        .with_name(topic_name(&t.name))
                        .with_partitions(
                            t.partitions
                                .into_iter()
                                .map(|p| {
                                    m::list_offsets_response::ListOffsetsPartitionResponse::default(
                                    )
                                    .with_partition_index(p.index)
                                    .with_error_code(p.error_code as i16)
                                    .with_timestamp(p.timestamp)
                                    .with_offset(p.offset)
                                    .with_leader_epoch(
                                        if version >= 4 { p.leader_epoch } else { -1 },
                                    )
                                })
                                .collect(),
                        )
                })
                .collect(),
        ),
        Err(e) => list_offsets_failed(&req, error_of(e).0),
    }
}

fn list_offsets_failed(req: &m::ListOffsetsRequest, code: i16) -> m::ListOffsetsResponse {
    m::ListOffsetsResponse::default().with_topics(
        req.topics
            .iter()
            .map(|t| {
                m::list_offsets_response::ListOffsetsTopicResponse::default()
                    .with_name(t.name.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| {
                                m::list_offsets_response::ListOffsetsPartitionResponse::default()
                                    .with_partition_index(p.partition_index)
                                    .with_error_code(code)
                                    .with_timestamp(-1)
                                    .with_offset(-1)
                                    .with_leader_epoch(-1)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// ListOffsets at a version rill does not answer.
pub fn list_offsets_unsupported(req: m::ListOffsetsRequest) -> m::ListOffsetsResponse {
    list_offsets_failed(&req, UNSUPPORTED_VERSION)
}

/// The UNSUPPORTED_VERSION answer of an API this listener does not implement, for the APIs
/// whose answer carries a top-level error code; `None` for the others (the connection closes).
pub fn unsupported_answer(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
) -> Option<Result<Bytes, KafkaError>> {
    macro_rules! answer {
        ($ty:ty) => {
            Some(encode(
                key,
                version,
                correlation_id,
                &<$ty>::default().with_error_code(UNSUPPORTED_VERSION),
            ))
        };
    }
    match key {
        ApiKey::SaslHandshake => answer!(m::SaslHandshakeResponse),
        ApiKey::DescribeCluster => answer!(m::DescribeClusterResponse),
        ApiKey::ConsumerGroupHeartbeat => answer!(m::ConsumerGroupHeartbeatResponse),
        // Versions of the implemented APIs whose bodies the listener does not read.
        ApiKey::Fetch if version >= 7 => answer!(m::FetchResponse),
        ApiKey::Metadata if version >= 13 => answer!(m::MetadataResponse),
        ApiKey::Produce => Some(encode(
            key,
            version,
            correlation_id,
            &m::ProduceResponse::default(),
        )),
        _ => None,
    }
}

/// Kafka's COORDINATOR_NOT_AVAILABLE.
const COORDINATOR_NOT_AVAILABLE: i16 = 15;
const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
const REQUEST_TIMED_OUT: i16 = 7;
const INVALID_REQUEST: i16 = 42;

/// FindCoordinator (v0-3, one key): the broker leading the group's `__consumer_offsets`
/// partition, at its Kafka endpoint. Only groups (key type 0): rill has no transactions.
pub async fn find_coordinator(
    apis: &KafkaApis,
    req: m::FindCoordinatorRequest,
    version: i16,
) -> m::FindCoordinatorResponse {
    let failed = |code: i16, why: String| {
        m::FindCoordinatorResponse::default()
            .with_error_code(code)
            .with_error_message((version >= 1).then(|| StrBytes::from_string(why)))
            .with_node_id(BrokerId(-1))
            .with_host(text(""))
            .with_port(-1)
    };
    if req.key_type != 0 {
        // Not COORDINATOR_NOT_AVAILABLE, which a transactional producer retries until
        // max.block.ms: an error it stops on, with the reason.
        let why = match req.key_type {
            1 => "transactions are not supported (transactional.id): rill coordinates groups only"
                .to_owned(),
            other => format!("key type {other} is not supported: rill coordinates groups only"),
        };
        return failed(INVALID_REQUEST, why);
    }
    let Some(coordinator) = &apis.coordinator else {
        return failed(
            COORDINATOR_NOT_AVAILABLE,
            "no group coordinator here".into(),
        );
    };
    let answer = coordinator
        .find_coordinator(vec![req.key.as_str().to_owned()])
        .await;
    let Some(c) = answer.coordinators.into_iter().next() else {
        return failed(COORDINATOR_NOT_AVAILABLE, "no answer for the group".into());
    };
    if c.error_code != 0 {
        return failed(c.error_code as i16, c.error_message);
    }
    let image = apis.svc.rm.image();
    let endpoint = image
        .brokers
        .get(&c.node_id)
        .and_then(|b| kafka_endpoint(&b.endpoints).cloned());
    match endpoint {
        Some(e) => m::FindCoordinatorResponse::default()
            .with_node_id(BrokerId(c.node_id))
            .with_host(text(&e.host))
            .with_port(e.port as i32),
        None => failed(
            COORDINATOR_NOT_AVAILABLE,
            format!(
                "the coordinator, broker {}, has no Kafka listener",
                c.node_id
            ),
        ),
    }
}

/// OffsetCommit: the generation id (or member epoch) and member id go to the coordinator as
/// they are; a commit from outside the group (generation -1, as a client using `assign`
/// sends) is allowed while the group has no members.
pub async fn offset_commit(
    apis: &KafkaApis,
    req: m::OffsetCommitRequest,
) -> m::OffsetCommitResponse {
    let failed = |code: i16| {
        m::OffsetCommitResponse::default().with_topics(
            req.topics
                .iter()
                .map(|t| {
                    m::offset_commit_response::OffsetCommitResponseTopic::default()
                        .with_name(t.name.clone())
                        .with_partitions(
                            t.partitions
                                .iter()
                                .map(|p| {
                                    m::offset_commit_response::OffsetCommitResponsePartition::default()
                                        .with_partition_index(p.partition_index)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect(),
        )
    };
    let Some(coordinator) = &apis.coordinator else {
        return failed(COORDINATOR_NOT_AVAILABLE);
    };
    let rill = rp::OffsetCommitRequest {
        group_id: req.group_id.0.to_string(),
        member_epoch: req.generation_id_or_member_epoch,
        member_id: req.member_id.to_string(),
        // v2-4 only (later versions decode it as -1): the client's own retention.
        retention_time_ms: (req.retention_time_ms >= 0).then_some(req.retention_time_ms),
        topics: req
            .topics
            .iter()
            .map(|t| rp::OffsetCommitTopic {
                name: t.name.0.to_string(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| rp::OffsetCommitPartition {
                        index: p.partition_index,
                        committed_offset: p.committed_offset,
                        committed_leader_epoch: p.committed_leader_epoch,
                        committed_metadata: p
                            .committed_metadata
                            .as_ref()
                            .map(|m| m.to_string())
                            .unwrap_or_default(),
                    })
                    .collect(),
            })
            .collect(),
    };
    let answer = coordinator.offset_commit(rill).await;
    m::OffsetCommitResponse::default().with_topics(
        answer
            .topics
            .into_iter()
            .map(|t| {
                m::offset_commit_response::OffsetCommitResponseTopic::default()
                    .with_name(topic_name(&t.name))
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                m::offset_commit_response::OffsetCommitResponsePartition::default()
                                    .with_partition_index(p.index)
                                    .with_error_code(p.error_code as i16)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// OffsetFetch (v1-7, one group): committed offsets, every partition with one when no topics
/// are named.
pub async fn offset_fetch(
    apis: &KafkaApis,
    req: m::OffsetFetchRequest,
    version: i16,
) -> m::OffsetFetchResponse {
    let Some(coordinator) = &apis.coordinator else {
        return m::OffsetFetchResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE);
    };
    let rill = rp::OffsetFetchRequest {
        group_id: req.group_id.0.to_string(),
        topics: req
            .topics
            .iter()
            .flatten()
            .map(|t| rp::OffsetFetchTopic {
                name: t.name.0.to_string(),
                partition_indexes: t.partition_indexes.clone(),
            })
            .collect(),
    };
    let answer = coordinator.offset_fetch(rill).await;
    let code = answer.error_code as i16;
    let mut resp = m::OffsetFetchResponse::default().with_topics(
        answer
            .topics
            .into_iter()
            .map(|t| {
                m::offset_fetch_response::OffsetFetchResponseTopic::default()
                    .with_name(topic_name(&t.name))
                    .with_partitions(
                        t.partitions
                            .into_iter()
                            .map(|p| {
                                m::offset_fetch_response::OffsetFetchResponsePartition::default()
                                    .with_partition_index(p.index)
                                    .with_committed_offset(p.committed_offset)
                                    .with_committed_leader_epoch(p.committed_leader_epoch)
                                    .with_metadata(Some(StrBytes::from_string(p.metadata)))
                                    // v1 has no group-level error: every partition carries it.
                                    .with_error_code(if p.error_code != 0 || version >= 2 {
                                        p.error_code as i16
                                    } else {
                                        code
                                    })
                            })
                            .collect(),
                    )
            })
            .collect(),
    );
    resp.error_code = code;
    resp
}

/// InitProducerId (v0-4), forwarded to the controllers: a new producer id, or with the id and
/// epoch a producer has (v3+), the next epoch of that id (KIP-360). No transactions: a
/// transactional id is refused by the controllers.
pub async fn init_producer_id(
    apis: &KafkaApis,
    req: m::InitProducerIdRequest,
) -> m::InitProducerIdResponse {
    let failed = |code: i16| {
        m::InitProducerIdResponse::default()
            .with_error_code(code)
            .with_producer_id(m::ProducerId(-1))
            .with_producer_epoch(-1)
    };
    let Some(controllers) = &apis.controllers else {
        return failed(COORDINATOR_NOT_AVAILABLE);
    };
    let known = req.producer_id.0 >= 0;
    let rill = rp::InitProducerIdRequest {
        transactional_id: req.transactional_id.as_ref().map(|t| t.0.to_string()),
        producer_id: known.then_some(req.producer_id.0),
        producer_epoch: known.then_some(req.producer_epoch.into()),
    };
    let answer = controllers
        .call(std::time::Duration::from_secs(10), |mut c| {
            let rill = rill.clone();
            async move { c.init_producer_id(rill).await }
        })
        .await;
    match answer {
        Ok(a) if a.error_code == 0 => match i16::try_from(a.producer_epoch) {
            Ok(epoch) => m::InitProducerIdResponse::default()
                .with_producer_id(m::ProducerId(a.producer_id))
                .with_producer_epoch(epoch),
            // Kafka's epochs are 16-bit; a producer past that needs a new id.
            Err(_) => failed(rill_protocol::ErrorCode::InvalidRequest as i16),
        },
        Ok(a) => failed(a.error_code as i16),
        // The controllers could not be reached (or answered late): Kafka's
        // COORDINATOR_LOAD_IN_PROGRESS, which clients retry — the Java producer gives up for good
        // on BROKER_NOT_AVAILABLE here.
        Err(e) if e.code.is_retriable() => failed(COORDINATOR_LOAD_IN_PROGRESS),
        Err(e) => failed(e.code as i16),
    }
}

/// Who sent a request: the header's client id and the peer address (a classic member's
/// `client.id` and host, as DescribeGroups shows them).
#[derive(Clone, Debug, Default)]
pub struct Caller {
    /// The request header's client id.
    pub client_id: String,
    /// The peer address, `/ip` as Kafka shows it.
    pub host: String,
}

fn opt_text(s: Option<String>) -> Option<StrBytes> {
    s.map(StrBytes::from_string)
}

/// JoinGroup (v0-9): joins a classic group; the answer is held until the rebalance completes
/// (every known member rejoined, or the rebalance timeout passed). From v4 a first join is
/// answered MEMBER_ID_REQUIRED with the member id to join with.
pub async fn join_group(
    apis: &KafkaApis,
    req: m::JoinGroupRequest,
    version: i16,
    caller: &Caller,
) -> m::JoinGroupResponse {
    use rill_group_coordinator::classic_group as cg;
    let Some(coordinator) = &apis.coordinator else {
        return m::JoinGroupResponse::default()
            .with_error_code(COORDINATOR_NOT_AVAILABLE)
            .with_generation_id(-1)
            .with_member_id(req.member_id);
    };
    let request = cg::JoinGroupRequest {
        group_id: req.group_id.0.to_string(),
        session_timeout_ms: req.session_timeout_ms,
        // v0 has no rebalance timeout: the session timeout bounds the rebalance.
        rebalance_timeout_ms: if version >= 1 {
            req.rebalance_timeout_ms
        } else {
            req.session_timeout_ms
        },
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        protocol_type: req.protocol_type.to_string(),
        protocols: req
            .protocols
            .iter()
            .map(|p| cg::Protocol {
                name: p.name.to_string(),
                metadata: p.metadata.clone(),
            })
            .collect(),
        require_known_member_id: version >= 4,
        client_id: caller.client_id.clone(),
        client_host: caller.host.clone(),
    };
    let a = coordinator.join_group(request).await;
    m::JoinGroupResponse::default()
        .with_error_code(a.error_code)
        .with_generation_id(a.generation_id)
        .with_protocol_type(opt_text(a.protocol_type))
        // Below v7 the name is not nullable: an error answer carries an empty one.
        .with_protocol_name(Some(StrBytes::from_string(
            a.protocol_name.unwrap_or_default(),
        )))
        .with_leader(StrBytes::from_string(a.leader))
        .with_member_id(StrBytes::from_string(a.member_id))
        .with_members(
            a.members
                .into_iter()
                .map(|m| {
                    m::join_group_response::JoinGroupResponseMember::default()
                        .with_member_id(StrBytes::from_string(m.member_id))
                        .with_group_instance_id(opt_text(m.group_instance_id))
                        .with_metadata(m.metadata)
                })
                .collect(),
        )
}

/// SyncGroup (v0-5): the leader hands in the assignment; every member gets its own, held
/// until the leader's arrives.
pub async fn sync_group(apis: &KafkaApis, req: m::SyncGroupRequest) -> m::SyncGroupResponse {
    use rill_group_coordinator::classic_group as cg;
    let Some(coordinator) = &apis.coordinator else {
        return m::SyncGroupResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE);
    };
    let request = cg::SyncGroupRequest {
        group_id: req.group_id.0.to_string(),
        generation_id: req.generation_id,
        member_id: req.member_id.to_string(),
        group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        protocol_type: req.protocol_type.as_ref().map(|s| s.to_string()),
        protocol_name: req.protocol_name.as_ref().map(|s| s.to_string()),
        assignments: req
            .assignments
            .iter()
            .map(|a| (a.member_id.to_string(), a.assignment.clone()))
            .collect(),
    };
    let a = coordinator.sync_group(request).await;
    m::SyncGroupResponse::default()
        .with_error_code(a.error_code)
        .with_protocol_type(opt_text(a.protocol_type))
        .with_protocol_name(opt_text(a.protocol_name))
        .with_assignment(a.assignment)
}

/// Heartbeat (v0-4): REBALANCE_IN_PROGRESS tells the member to rejoin.
pub async fn heartbeat(apis: &KafkaApis, req: m::HeartbeatRequest) -> m::HeartbeatResponse {
    use rill_group_coordinator::classic_group as cg;
    let Some(coordinator) = &apis.coordinator else {
        return m::HeartbeatResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE);
    };
    let code = coordinator
        .heartbeat(cg::HeartbeatRequest {
            group_id: req.group_id.0.to_string(),
            generation_id: req.generation_id,
            member_id: req.member_id.to_string(),
            group_instance_id: req.group_instance_id.as_ref().map(|s| s.to_string()),
        })
        .await;
    m::HeartbeatResponse::default().with_error_code(code)
}

/// LeaveGroup (v0-2: one member id; v3-5: a batch of members).
pub async fn leave_group(
    apis: &KafkaApis,
    req: m::LeaveGroupRequest,
    version: i16,
) -> m::LeaveGroupResponse {
    use rill_group_coordinator::classic_group as cg;
    let Some(coordinator) = &apis.coordinator else {
        return m::LeaveGroupResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE);
    };
    let members = if version >= 3 {
        req.members
            .iter()
            .map(|m| cg::LeavingMember {
                member_id: m.member_id.to_string(),
                group_instance_id: m.group_instance_id.as_ref().map(|s| s.to_string()),
            })
            .collect()
    } else {
        vec![cg::LeavingMember {
            member_id: req.member_id.to_string(),
            group_instance_id: None,
        }]
    };
    let a = coordinator
        .leave_group(cg::LeaveGroupRequest {
            group_id: req.group_id.0.to_string(),
            members,
        })
        .await;
    if version < 3 {
        // One member: its error is the request's.
        let code = if a.error_code != 0 {
            a.error_code
        } else {
            a.members.first().map_or(0, |m| m.2)
        };
        return m::LeaveGroupResponse::default().with_error_code(code);
    }
    m::LeaveGroupResponse::default()
        .with_error_code(a.error_code)
        .with_members(
            a.members
                .into_iter()
                .map(|(member_id, instance_id, code)| {
                    m::leave_group_response::MemberResponse::default()
                        .with_member_id(StrBytes::from_string(member_id))
                        .with_group_instance_id(opt_text(instance_id))
                        .with_error_code(code)
                })
                .collect(),
        )
}

/// ListGroups (v0-5): the groups coordinated by this broker (clients ask every broker), of both
/// kinds; `states_filter` (v4+) and `types_filter` (v5+: `classic`, `consumer`) narrow them.
pub async fn list_groups(apis: &KafkaApis, req: m::ListGroupsRequest) -> m::ListGroupsResponse {
    let Some(coordinator) = &apis.coordinator else {
        return m::ListGroupsResponse::default().with_error_code(COORDINATOR_NOT_AVAILABLE);
    };
    let answer = coordinator
        .list_groups(rp::ListGroupsRequest {
            states_filter: req.states_filter.iter().map(|s| s.to_string()).collect(),
        })
        .await;
    let types: Vec<String> = req.types_filter.iter().map(|t| t.to_lowercase()).collect();
    m::ListGroupsResponse::default()
        .with_error_code(answer.error_code as i16)
        .with_groups(
            answer
                .groups
                .into_iter()
                .filter(|g| types.is_empty() || types.contains(&g.group_type.to_lowercase()))
                .map(|g| {
                    m::list_groups_response::ListedGroup::default()
                        .with_group_id(m::GroupId(StrBytes::from_string(g.group_id)))
                        // Both kinds hold Kafka consumers.
                        .with_protocol_type(text("consumer"))
                        .with_group_state(StrBytes::from_string(g.group_state))
                        .with_group_type(StrBytes::from_string(g.group_type))
                })
                .collect(),
        )
}

/// DescribeGroups (v0-5): classic groups with their members' metadata and assignments; a group
/// that does not exist is `Dead` (no error, as Kafka answers below v6).
pub async fn describe_groups(
    apis: &KafkaApis,
    req: m::DescribeGroupsRequest,
) -> m::DescribeGroupsResponse {
    let ids: Vec<String> = req.groups.iter().map(|g| g.0.to_string()).collect();
    let Some(coordinator) = &apis.coordinator else {
        return m::DescribeGroupsResponse::default().with_groups(
            req.groups
                .into_iter()
                .map(|g| {
                    m::describe_groups_response::DescribedGroup::default()
                        .with_group_id(g)
                        .with_error_code(COORDINATOR_NOT_AVAILABLE)
                })
                .collect(),
        );
    };
    let described = coordinator.classic_describe_groups(ids, false).await;
    m::DescribeGroupsResponse::default().with_groups(
        described
            .into_iter()
            .map(|d| {
                m::describe_groups_response::DescribedGroup::default()
                    // No error_message: it exists from v6, and rill answers v0-5.
                    .with_error_code(d.error_code)
                    .with_group_id(m::GroupId(StrBytes::from_string(d.group_id)))
                    .with_group_state(StrBytes::from_string(d.state))
                    .with_protocol_type(StrBytes::from_string(d.protocol_type))
                    .with_protocol_data(StrBytes::from_string(d.protocol_data))
                    .with_authorized_operations(i32::MIN)
                    .with_members(
                        d.members
                            .into_iter()
                            .map(|mm| {
                                m::describe_groups_response::DescribedGroupMember::default()
                                    .with_member_id(StrBytes::from_string(mm.member_id))
                                    .with_client_id(StrBytes::from_string(mm.client_id))
                                    .with_client_host(StrBytes::from_string(mm.client_host))
                                    .with_member_metadata(mm.metadata)
                                    .with_member_assignment(mm.assignment)
                            })
                            .collect(),
                    )
            })
            .collect(),
    )
}

/// DeleteGroups (v0-2): groups without members go, with their committed offsets.
pub async fn delete_groups(
    apis: &KafkaApis,
    req: m::DeleteGroupsRequest,
) -> m::DeleteGroupsResponse {
    let Some(coordinator) = &apis.coordinator else {
        return m::DeleteGroupsResponse::default().with_results(
            req.groups_names
                .into_iter()
                .map(|g| {
                    m::delete_groups_response::DeletableGroupResult::default()
                        .with_group_id(g)
                        .with_error_code(COORDINATOR_NOT_AVAILABLE)
                })
                .collect(),
        );
    };
    let answer = coordinator
        .delete_groups(rp::DeleteGroupsRequest {
            group_ids: req.groups_names.iter().map(|g| g.0.to_string()).collect(),
        })
        .await;
    m::DeleteGroupsResponse::default().with_results(
        answer
            .results
            .into_iter()
            .map(|r| {
                m::delete_groups_response::DeletableGroupResult::default()
                    .with_group_id(m::GroupId(StrBytes::from_string(r.group_id)))
                    .with_error_code(r.error_code as i16)
            })
            .collect(),
    )
}

/// OffsetForLeaderEpoch (v2-4, KIP-101/320): per partition, the largest leader epoch ≤ the one
/// asked for in the leader's log and the offset where it ended (the log end for the latest
/// epoch), so a consumer that read under an older leader finds whether the log was truncated
/// under it. Answered by the leader only; `current_leader_epoch` (unless -1) must be the
/// leader's: older is FENCED_LEADER_EPOCH, newer UNKNOWN_LEADER_EPOCH. An epoch older than
/// the log's history gets (-1, -1), Kafka's UNDEFINED.
pub fn offset_for_leader_epoch(
    apis: &KafkaApis,
    req: m::OffsetForLeaderEpochRequest,
) -> m::OffsetForLeaderEpochResponse {
    use m::offset_for_leader_epoch_response::OffsetForLeaderTopicResult;
    m::OffsetForLeaderEpochResponse::default().with_topics(
        req.topics
            .iter()
            .map(|t| {
                OffsetForLeaderTopicResult::default()
                    .with_topic(t.topic.clone())
                    .with_partitions(
                        t.partitions
                            .iter()
                            .map(|p| end_offset_for_epoch(apis, t.topic.as_str(), p))
                            .collect(),
                    )
            })
            .collect(),
    )
}

fn end_offset_for_epoch(
    apis: &KafkaApis,
    topic: &str,
    p: &m::offset_for_leader_epoch_request::OffsetForLeaderPartition,
) -> m::offset_for_leader_epoch_response::EpochEndOffset {
    let answer = m::offset_for_leader_epoch_response::EpochEndOffset::default()
        .with_partition(p.partition)
        .with_leader_epoch(-1)
        .with_end_offset(-1);
    let tp = rill_storage::TopicPartition::new(topic, p.partition);
    let partition = match apis.svc.rm.leader_partition(&tp) {
        Ok(partition) => partition,
        Err((e, _)) => return answer.with_error_code(e.code as i16),
    };
    let leader_epoch = partition.state().leader_epoch;
    if let Err((code, _)) =
        crate::apis::check_consumer_epoch(Some(p.current_leader_epoch), leader_epoch)
    {
        return answer.with_error_code(code as i16);
    }
    match partition.log.read().end_offset_for_epoch(p.leader_epoch) {
        Some((epoch, end)) => answer.with_leader_epoch(epoch).with_end_offset(end),
        None => answer,
    }
}

/// ConsumerGroupHeartbeat (v0-1, KIP-848): the consumer group protocol of rill's own consumers
/// (the same coordinator and groups as the gRPC `ConsumerGroupHeartbeat`), so a Kafka client
/// with `group.protocol=consumer` and a rill consumer can share a group. Kafka names topics by
/// id in owned partitions and assignments, rill by name: ids are translated through the
/// metadata image (an id it does not know is dropped from what the member says it owns).
pub async fn consumer_group_heartbeat(
    apis: &KafkaApis,
    req: m::ConsumerGroupHeartbeatRequest,
    caller: &Caller,
) -> m::ConsumerGroupHeartbeatResponse {
    use m::consumer_group_heartbeat_response as r;
    let Some(coordinator) = &apis.coordinator else {
        return m::ConsumerGroupHeartbeatResponse::default()
            .with_error_code(COORDINATOR_NOT_AVAILABLE)
            .with_member_epoch(-1);
    };
    let image = apis.svc.rm.image();
    let rill = rp::ConsumerGroupHeartbeatRequest {
        group_id: req.group_id.0.to_string(),
        member_id: req.member_id.to_string(),
        member_epoch: req.member_epoch,
        instance_id: req.instance_id.as_ref().map(|s| s.to_string()),
        rack_id: req.rack_id.as_ref().map(|s| s.to_string()),
        rebalance_timeout_ms: req.rebalance_timeout_ms,
        subscribed_topic_names: req
            .subscribed_topic_names
            .as_ref()
            .map(|names| rp::TopicNames {
                names: names.iter().map(|n| n.0.to_string()).collect(),
            }),
        subscribed_topic_regex: req.subscribed_topic_regex.as_ref().map(|s| s.to_string()),
        server_assignor: req.server_assignor.as_ref().map(|s| s.to_string()),
        owned_partitions: req
            .topic_partitions
            .as_ref()
            .map(|owned| rp::TopicPartitionsList {
                topics: owned
                    .iter()
                    .filter_map(|t| {
                        Some(rp::TopicPartitions {
                            topic: image.topic_names.get(&t.topic_id.to_string())?.clone(),
                            partitions: t.partitions.clone(),
                        })
                    })
                    .collect(),
            }),
        client_id: caller.client_id.clone(),
    };
    // The gRPC side records the bare address.
    let host = caller.host.trim_start_matches('/').to_owned();
    let a = coordinator.consumer_group_heartbeat(rill, host).await;
    // The image may have moved on while the heartbeat ran (a topic created): read it again.
    let image = apis.svc.rm.image();
    m::ConsumerGroupHeartbeatResponse::default()
        .with_error_code(a.error_code as i16)
        .with_error_message(message(a.error_message))
        .with_member_id((!a.member_id.is_empty()).then(|| StrBytes::from_string(a.member_id)))
        .with_member_epoch(a.member_epoch)
        .with_heartbeat_interval_ms(a.heartbeat_interval_ms)
        .with_assignment(a.assignment.map(|assigned| {
            r::Assignment::default().with_topic_partitions(
                assigned
                    .topics
                    .into_iter()
                    .filter_map(|t| {
                        let id = image.topics.get(&t.topic)?.id.parse().ok()?;
                        Some(
                            r::TopicPartitions::default()
                                .with_topic_id(id)
                                .with_partitions(t.partitions),
                        )
                    })
                    .collect(),
            )
        }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_protocol::ErrorCode;

    /// A partition without a leader is NOT_LEADER_OR_FOLLOWER in a Kafka Fetch answer: the
    /// Java consumer throws on LEADER_NOT_AVAILABLE there instead of refreshing metadata.
    #[test]
    fn a_leaderless_partition_is_not_leader_in_a_kafka_fetch() {
        let answer = rp::FetchResponse {
            topics: vec![rp::FetchTopicResponse {
                name: "t".into(),
                partitions: vec![
                    rp::FetchPartitionResponse {
                        index: 0,
                        error_code: ErrorCode::LeaderNotAvailable as i32,
                        ..Default::default()
                    },
                    rp::FetchPartitionResponse {
                        index: 1,
                        error_code: ErrorCode::OffsetOutOfRange as i32,
                        ..Default::default()
                    },
                ],
            }],
        };
        let topics = fetch_answer(answer);
        let codes: Vec<i16> = topics[0].partitions.iter().map(|p| p.error_code).collect();
        assert_eq!(
            codes,
            [
                ErrorCode::NotLeaderOrFollower as i16,
                ErrorCode::OffsetOutOfRange as i16
            ]
        );
    }
}
