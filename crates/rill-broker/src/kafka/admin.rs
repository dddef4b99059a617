//! Kafka's admin APIs, forwarded to the controllers as rill's own admin client calls them
//! (CreateTopics, DeleteTopics, CreatePartitions, IncrementalAlterConfigs, DescribeConfigs of
//! topics), or answered from this broker's metadata image and configuration (DescribeCluster,
//! DescribeConfigs of brokers). rill's error codes are Kafka's, so they pass through with their
//! messages; what rill does not do (manual replica assignments, APPEND/SUBTRACT, per-broker
//! dynamic configs) is refused with INVALID_REQUEST or INVALID_REPLICA_ASSIGNMENT and a message
//! saying so.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use kafka_protocol::ResponseError;
use kafka_protocol::messages::{self as m, BrokerId, TopicName};
use kafka_protocol::protocol::StrBytes;
use rill_protocol::proto as rp;
use rill_protocol::proto::controller_client::ControllerClient as GrpcClient;
use rill_protocol::{ApiError, ErrorCode};
use tonic::transport::Channel;

use super::KafkaApis;

/// Kafka's config resource types (`ConfigResource.Type`).
const RESOURCE_TOPIC: i8 = 2;
const RESOURCE_BROKER: i8 = 4;

/// Kafka's config sources (`DescribeConfigsResponse.ConfigSource`).
const SOURCE_DYNAMIC_TOPIC: i8 = 1;
const SOURCE_DYNAMIC_DEFAULT_BROKER: i8 = 3;
const SOURCE_STATIC_BROKER: i8 = 4;
const SOURCE_DEFAULT: i8 = 5;

/// Broker properties that can be changed at run time, cluster-wide (IncrementalAlterConfigs of
/// the default broker resource); every other broker property is read-only.
const DYNAMIC_BROKER_CONFIGS: &[&str] = &[
    "leader.replication.throttled.rate",
    "follower.replication.throttled.rate",
];

fn text(s: impl Into<String>) -> StrBytes {
    StrBytes::from_string(s.into())
}

fn opt_message(s: String) -> Option<StrBytes> {
    (!s.is_empty()).then(|| StrBytes::from_string(s))
}

/// An error decided here rather than at the controllers: code and message.
type LocalError = (i16, String);

fn code(c: i32) -> i16 {
    c as i16
}

/// How long an admin request may take at the controllers and for its result to reach this
/// broker's metadata: the request's timeout, within 1-30 s.
fn patience(timeout_ms: i32) -> Duration {
    Duration::from_millis(timeout_ms.clamp(1_000, 30_000) as u64)
}

/// Whether a request may be sent again after the controller did not answer it in time.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Resend {
    /// Idempotent (describing, setting configs): sent again.
    Yes,
    /// Creating or deleting: answered REQUEST_TIMED_OUT instead, as Kafka's brokers do.
    No,
}

/// Calls the active controller (following NOT_CONTROLLER hints, failing over) with `call` and
/// `rill`, the request to forward; `None` (nothing to forward) answers the empty answer at once.
async fn controller<Req, T, F, Fut>(
    apis: &KafkaApis,
    patience: Duration,
    resend: Resend,
    rill: Option<Req>,
    mut call: F,
) -> Result<T, ApiError>
where
    Req: Clone,
    T: Default,
    F: FnMut(GrpcClient<Channel>, Req) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let Some(rill) = rill else {
        return Ok(T::default());
    };
    let Some(controllers) = &apis.controllers else {
        return Err(ApiError::new(
            ErrorCode::NotController,
            "this broker has no connection to the controllers",
        ));
    };
    let f = |c| call(c, rill.clone());
    match resend {
        Resend::Yes => controllers.call(patience, f).await,
        Resend::No => controllers.call_at_most_once(patience, f).await,
    }
}

/// A forwarded topic's error code and message: the one decided here (`local`), else the
/// controllers' failure (`answer`), else the controllers' result for it (`result`: code and
/// message), else UNKNOWN_SERVER_ERROR for a topic they did not answer for.
fn topic_outcome<T>(
    local: Option<LocalError>,
    answer: &Result<T, ApiError>,
    result: Option<(i32, &str)>,
) -> LocalError {
    match (local, answer, result) {
        (Some(e), _, _) => e,
        (None, Err(e), _) => (e.code as i16, e.message.clone()),
        (None, Ok(_), Some((c, message))) => (code(c), message.to_owned()),
        (None, Ok(_), None) => (
            ErrorCode::UnknownServerError as i16,
            "the controller did not answer for this topic".to_owned(),
        ),
    }
}

/// Waits (up to `patience`) until this broker's metadata image satisfies `done`, so a client's
/// next request here sees what an admin call changed, as it does at Kafka's broker.
async fn await_image(
    apis: &KafkaApis,
    patience: Duration,
    done: impl Fn(&rill_protocol::metadata_image::MetadataImage) -> bool,
) {
    let rm = &apis.svc.rm;
    let mut updates = rm.subscribe_metadata();
    let _ = tokio::time::timeout(patience, async {
        while !done(&rm.image()) {
            if updates.changed().await.is_err() {
                return;
            }
        }
    })
    .await;
}

/// CreateTopics (v2-7): `num_partitions`/`replication_factor` -1 take the cluster's defaults;
/// `validate_only` checks without creating. Manual replica assignments are refused. A created
/// topic is in this broker's metadata before the answer (within the request's timeout).
pub async fn create_topics(
    apis: &KafkaApis,
    req: m::CreateTopicsRequest,
) -> m::CreateTopicsResponse {
    let patience = patience(req.timeout_ms);
    let mut results: Vec<m::create_topics_response::CreatableTopicResult> = Vec::new();
    let mut forwarded = Vec::new();
    for t in &req.topics {
        let result = m::create_topics_response::CreatableTopicResult::default()
            .with_name(t.name.clone())
            .with_num_partitions(-1)
            .with_replication_factor(-1);
        if !t.assignments.is_empty() {
            results.push(
                result
                    .with_error_code(ErrorCode::InvalidReplicaAssignment as i16)
                    .with_error_message(Some(text(
                        "manual replica assignments are not supported: rill places replicas \
                         (give num_partitions and replication_factor instead)",
                    ))),
            );
            continue;
        }
        forwarded.push(rp::CreatableTopic {
            name: t.name.0.to_string(),
            num_partitions: t.num_partitions,
            replication_factor: t.replication_factor.into(),
            configs: t
                .configs
                .iter()
                .map(|c| rp::ConfigEntry {
                    name: c.name.to_string(),
                    value: c.value.as_ref().map(|v| v.to_string()),
                })
                .collect(),
        });
        results.push(result);
    }
    if forwarded.is_empty() {
        return m::CreateTopicsResponse::default().with_topics(results);
    }
    let rill = rp::CreateTopicsRequest {
        topics: forwarded,
        validate_only: req.validate_only,
    };
    let answer = controller(
        apis,
        patience,
        Resend::No,
        Some(rill),
        |mut c, r| async move { c.create_topics(r).await },
    )
    .await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            for r in results.iter_mut().filter(|r| r.error_code == 0) {
                r.error_code = e.code as i16;
                r.error_message = Some(text(e.message.clone()));
            }
            return m::CreateTopicsResponse::default().with_topics(results);
        }
    };
    let by_name: BTreeMap<String, rp::CreatableTopicResult> = answer
        .topics
        .into_iter()
        .map(|t| (t.name.clone(), t))
        .collect();
    let mut created = Vec::new();
    for (r, t) in results.iter_mut().zip(&req.topics) {
        if r.error_code != 0 {
            continue;
        }
        let Some(a) = by_name.get(t.name.as_str()) else {
            r.error_code = ErrorCode::UnknownServerError as i16;
            r.error_message = Some(text("the controller did not answer for this topic"));
            continue;
        };
        r.error_code = code(a.error_code);
        r.error_message = opt_message(a.error_message.clone());
        if a.error_code == 0 {
            r.topic_id = uuid::Uuid::parse_str(&a.topic_id).unwrap_or_default();
            r.num_partitions = a.num_partitions;
            r.replication_factor = i16::try_from(a.replication_factor).unwrap_or(-1);
            r.configs = Some(
                t.configs
                    .iter()
                    .map(|c| {
                        m::create_topics_response::CreatableTopicConfigs::default()
                            .with_name(c.name.clone())
                            .with_value(c.value.clone())
                            .with_config_source(SOURCE_DYNAMIC_TOPIC)
                    })
                    .collect(),
            );
            if !req.validate_only {
                created.push(a.name.clone());
            }
        }
    }
    if !created.is_empty() {
        await_image(apis, patience, |image| {
            created.iter().all(|n| image.topics.contains_key(n))
        })
        .await;
    }
    m::CreateTopicsResponse::default().with_topics(results)
}

/// DeleteTopics (v1-6): by name, or from v6 by topic id. A deleted topic is gone from this
/// broker's metadata before the answer (within the request's timeout).
pub async fn delete_topics(
    apis: &KafkaApis,
    req: m::DeleteTopicsRequest,
    version: i16,
) -> m::DeleteTopicsResponse {
    let patience = patience(req.timeout_ms);
    let image = apis.svc.rm.image();
    // (name if known, id as asked, local error)
    let asked: Vec<(Option<String>, uuid::Uuid, Option<LocalError>)> = if version >= 6 {
        req.topics
            .iter()
            .map(|t| match &t.name {
                Some(n) => (Some(n.0.to_string()), t.topic_id, None),
                None => match image.topic_names.get(&t.topic_id.to_string()) {
                    Some(n) => (Some(n.clone()), t.topic_id, None),
                    None => (
                        None,
                        t.topic_id,
                        Some((
                            ResponseError::UnknownTopicId.code(),
                            format!("no topic has id {}", t.topic_id),
                        )),
                    ),
                },
            })
            .collect()
    } else {
        req.topic_names
            .iter()
            .map(|n| (Some(n.0.to_string()), uuid::Uuid::nil(), None))
            .collect()
    };
    let names: Vec<String> = asked
        .iter()
        .filter(|(_, _, e)| e.is_none())
        .filter_map(|(n, _, _)| n.clone())
        .collect();
    let rill = (!names.is_empty()).then_some(rp::DeleteTopicsRequest { names });
    let answer = controller(apis, patience, Resend::No, rill, |mut c, r| async move {
        c.delete_topics(r).await
    })
    .await;
    let by_name: BTreeMap<String, rp::DeletableTopicResult> = match &answer {
        Ok(a) => a
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let mut deleted = Vec::new();
    let responses = asked
        .into_iter()
        .map(|(name, id, local)| {
            let id = name
                .as_ref()
                .and_then(|n| image.topics.get(n))
                .and_then(|t| uuid::Uuid::parse_str(&t.id).ok())
                .unwrap_or(id);
            let result = name.as_ref().and_then(|n| by_name.get(n));
            let (error, message) = topic_outcome(
                local,
                &answer,
                result.map(|r| (r.error_code, r.error_message.as_str())),
            );
            if error == 0
                && let Some(n) = &name
            {
                deleted.push(n.clone());
            }
            m::delete_topics_response::DeletableTopicResult::default()
                // Below v6 the name is not nullable.
                .with_name(Some(TopicName(text(name.unwrap_or_default()))))
                .with_topic_id(id)
                .with_error_code(error)
                .with_error_message(opt_message(message))
        })
        .collect();
    if !deleted.is_empty() {
        await_image(apis, patience, |image| {
            deleted.iter().all(|n| !image.topics.contains_key(n))
        })
        .await;
    }
    m::DeleteTopicsResponse::default().with_responses(responses)
}

/// CreatePartitions (v0-3): a topic's new partition count; manual assignments are refused.
pub async fn create_partitions(
    apis: &KafkaApis,
    req: m::CreatePartitionsRequest,
) -> m::CreatePartitionsResponse {
    let patience = patience(req.timeout_ms);
    let mut local: Vec<Option<LocalError>> = Vec::new();
    let mut forwarded = Vec::new();
    for t in &req.topics {
        if t.assignments.as_ref().is_some_and(|a| !a.is_empty()) {
            local.push(Some((
                ErrorCode::InvalidReplicaAssignment as i16,
                "manual replica assignments are not supported: rill places the new replicas"
                    .to_owned(),
            )));
        } else {
            local.push(None);
            forwarded.push(rp::CreatePartitionsTopic {
                name: t.name.0.to_string(),
                count: t.count,
            });
        }
    }
    let rill = (!forwarded.is_empty()).then_some(rp::CreatePartitionsRequest {
        topics: forwarded,
        validate_only: req.validate_only,
    });
    let answer = controller(apis, patience, Resend::No, rill, |mut c, r| async move {
        c.create_partitions(r).await
    })
    .await;
    let by_name: BTreeMap<String, rp::CreatePartitionsTopicResult> = match &answer {
        Ok(a) => a
            .topics
            .iter()
            .map(|t| (t.name.clone(), t.clone()))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let mut grown = Vec::new();
    let results = req
        .topics
        .iter()
        .zip(local)
        .map(|(t, local)| {
            let result = by_name.get(t.name.as_str());
            let (error, message) = topic_outcome(
                local,
                &answer,
                result.map(|r| (r.error_code, r.error_message.as_str())),
            );
            if error == 0 && !req.validate_only {
                grown.push((t.name.0.to_string(), t.count));
            }
            m::create_partitions_response::CreatePartitionsTopicResult::default()
                .with_name(t.name.clone())
                .with_error_code(error)
                .with_error_message(opt_message(message))
        })
        .collect();
    if !grown.is_empty() {
        await_image(apis, patience, |image| {
            grown.iter().all(|(n, count)| {
                image
                    .topics
                    .get(n)
                    .is_some_and(|t| t.partitions.len() >= *count as usize)
            })
        })
        .await;
    }
    m::CreatePartitionsResponse::default().with_results(results)
}

fn described(
    name: &str,
    value: Option<String>,
    source: i8,
    read_only: bool,
    doc: Option<&str>,
) -> m::describe_configs_response::DescribeConfigsResourceResult {
    m::describe_configs_response::DescribeConfigsResourceResult::default()
        .with_name(text(name))
        .with_value(value.map(text))
        .with_read_only(read_only)
        .with_config_source(source)
        .with_documentation(doc.map(text))
}

/// DescribeConfigs (v1-4): topics (from the controllers: every topic config, overrides as
/// DYNAMIC_TOPIC_CONFIG, the rest DEFAULT_CONFIG), this broker (its resolved properties,
/// STATIC_BROKER_CONFIG where set, and the cluster-wide dynamic ones) and the cluster-wide
/// broker default (an empty name). No synonyms.
pub async fn describe_configs(
    apis: &KafkaApis,
    req: m::DescribeConfigsRequest,
    version: i16,
) -> m::DescribeConfigsResponse {
    let topics: Vec<String> = req
        .resources
        .iter()
        .filter(|r| r.resource_type == RESOURCE_TOPIC && !r.resource_name.is_empty())
        .map(|r| r.resource_name.to_string())
        .collect();
    let rill = (!topics.is_empty()).then_some(rp::DescribeConfigsRequest { topics });
    let answer = controller(
        apis,
        patience(10_000),
        Resend::Yes,
        rill,
        |mut c, r| async move { c.describe_configs(r).await },
    )
    .await;
    let by_topic: BTreeMap<String, rp::DescribeConfigsResult> = match &answer {
        Ok(a) => a
            .results
            .iter()
            .map(|r| (r.topic.clone(), r.clone()))
            .collect(),
        Err(_) => BTreeMap::new(),
    };
    let with_docs = version >= 3 && req.include_documentation;
    let image = apis.svc.rm.image();
    let config = apis.svc.rm.config();
    let results = req
        .resources
        .iter()
        .map(|res| {
            let keys: Option<Vec<String>> = res
                .configuration_keys
                .as_ref()
                .map(|k| k.iter().map(|s| s.to_string()).collect());
            let wanted = |name: &str| keys.as_ref().is_none_or(|k| k.iter().any(|w| w == name));
            let result = m::describe_configs_response::DescribeConfigsResult::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone());
            let failed = |code: i16, why: String| {
                result
                    .clone()
                    .with_error_code(code)
                    .with_error_message(Some(text(why)))
            };
            match res.resource_type {
                RESOURCE_TOPIC if res.resource_name.is_empty() => failed(
                    ErrorCode::InvalidTopicException as i16,
                    "a topic resource needs a topic name".into(),
                ),
                RESOURCE_TOPIC => match (&answer, by_topic.get(res.resource_name.as_str())) {
                    (Err(e), _) => failed(e.code as i16, e.message.clone()),
                    (Ok(_), None) => failed(
                        ErrorCode::UnknownServerError as i16,
                        "the controller did not answer for this topic".into(),
                    ),
                    (Ok(_), Some(r)) if r.error_code != 0 => {
                        failed(code(r.error_code), r.error_message.clone())
                    }
                    (Ok(_), Some(r)) => {
                        // Not overridden: what this broker applies is its own default (its
                        // `log.*` settings), reported as Kafka does.
                        let mut r = r.clone();
                        crate::apis::describe_configs::apply_broker_defaults(
                            &mut r,
                            &config.topic_defaults,
                        );
                        result.with_configs(
                            r.configs
                                .into_iter()
                                .filter(|c| wanted(&c.name))
                                .map(|c| {
                                    let source = match rp::ConfigSource::try_from(c.source) {
                                        Ok(rp::ConfigSource::DynamicTopicConfig) => {
                                            SOURCE_DYNAMIC_TOPIC
                                        }
                                        Ok(rp::ConfigSource::StaticBrokerConfig) => {
                                            SOURCE_STATIC_BROKER
                                        }
                                        _ => SOURCE_DEFAULT,
                                    };
                                    described(&c.name, Some(c.value), source, false, None)
                                })
                                .collect(),
                        )
                    }
                },
                RESOURCE_BROKER if res.resource_name.is_empty() => result.with_configs(
                    image
                        .cluster_configs
                        .iter()
                        .filter(|(k, _)| wanted(k))
                        .map(|(k, v)| {
                            described(k, Some(v.clone()), SOURCE_DYNAMIC_DEFAULT_BROKER, false, None)
                        })
                        .collect(),
                ),
                RESOURCE_BROKER if res.resource_name.as_str() == config.node_id.to_string() => {
                    let defaults: BTreeMap<&str, (&str, &str)> =
                        crate::config::BrokerConfig::known_properties()
                            .map(|(k, d, doc)| (k, (d, doc)))
                            .collect();
                    let mut configs: Vec<_> = config
                        .properties
                        .iter()
                        .filter(|(k, _)| wanted(k) && !image.cluster_configs.contains_key(*k))
                        .map(|(k, v)| {
                            let (default, doc) = defaults.get(k.as_str()).copied().unwrap_or_default();
                            let source = if v == default {
                                SOURCE_DEFAULT
                            } else {
                                SOURCE_STATIC_BROKER
                            };
                            let read_only = !DYNAMIC_BROKER_CONFIGS.contains(&k.as_str());
                            described(k, Some(v.clone()), source, read_only, with_docs.then_some(doc))
                        })
                        .collect();
                    configs.extend(
                        image
                            .cluster_configs
                            .iter()
                            .filter(|(k, _)| wanted(k))
                            .map(|(k, v)| {
                                described(k, Some(v.clone()), SOURCE_DYNAMIC_DEFAULT_BROKER, false, None)
                            }),
                    );
                    result.with_configs(configs)
                }
                RESOURCE_BROKER => failed(
                    ErrorCode::InvalidRequest as i16,
                    format!(
                        "unexpected broker id {}: this is broker {} (ask each broker for its own \
                         configs, or an empty name for the cluster-wide default)",
                        res.resource_name, config.node_id
                    ),
                ),
                other => failed(
                    ErrorCode::InvalidRequest as i16,
                    format!("config resource type {other} is not supported: rill describes topics (2) and brokers (4)"),
                ),
            }
        })
        .collect();
    m::DescribeConfigsResponse::default().with_results(results)
}

/// IncrementalAlterConfigs (v0-1): SET and DELETE of topic configs and of the cluster-wide
/// broker default (an empty broker name: the replication throttles). APPEND/SUBTRACT and
/// per-broker configs are refused.
pub async fn incremental_alter_configs(
    apis: &KafkaApis,
    req: m::IncrementalAlterConfigsRequest,
) -> m::IncrementalAlterConfigsResponse {
    let mut local: Vec<Option<LocalError>> = Vec::new();
    let mut forwarded = Vec::new();
    for res in &req.resources {
        let resource_type = match res.resource_type {
            RESOURCE_TOPIC => rp::ConfigResourceType::Topic,
            RESOURCE_BROKER if res.resource_name.is_empty() => rp::ConfigResourceType::Broker,
            RESOURCE_BROKER => {
                local.push(Some((
                    ErrorCode::InvalidRequest as i16,
                    format!(
                        "per-broker dynamic configs are not supported (broker {}): alter the \
                         cluster-wide default, an empty broker name",
                        res.resource_name
                    ),
                )));
                continue;
            }
            other => {
                local.push(Some((
                    ErrorCode::InvalidRequest as i16,
                    format!(
                        "config resource type {other} is not supported: rill alters topics (2) \
                         and the cluster-wide broker default (4)"
                    ),
                )));
                continue;
            }
        };
        let mut configs = Vec::new();
        let mut refused = None;
        for c in &res.configs {
            let operation = match c.config_operation {
                0 => rp::ConfigOperation::Set,
                1 => rp::ConfigOperation::Delete,
                op => {
                    refused = Some(format!(
                        "config operation {op} ({}) on {} is not supported: rill does SET (0) and \
                         DELETE (1); SET the whole list instead",
                        if op == 2 {
                            "APPEND"
                        } else if op == 3 {
                            "SUBTRACT"
                        } else {
                            "unknown"
                        },
                        c.name
                    ));
                    break;
                }
            };
            configs.push(rp::AlterableConfig {
                name: c.name.to_string(),
                operation: operation as i32,
                value: c.value.as_ref().map(|v| v.to_string()),
            });
        }
        if let Some(why) = refused {
            local.push(Some((ErrorCode::InvalidRequest as i16, why)));
            continue;
        }
        local.push(None);
        forwarded.push(rp::AlterConfigsResource {
            topic: res.resource_name.to_string(),
            configs,
            resource_type: resource_type as i32,
        });
    }
    let rill = (!forwarded.is_empty()).then_some(rp::IncrementalAlterConfigsRequest {
        resources: forwarded,
        validate_only: req.validate_only,
    });
    let answer = controller(
        apis,
        patience(10_000),
        Resend::Yes,
        rill,
        |mut c, r| async move { c.incremental_alter_configs(r).await },
    )
    .await;
    // The controller answers every resource, in order.
    let mut answered = match &answer {
        Ok(a) => a.results.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let responses = req
        .resources
        .iter()
        .zip(local)
        .map(|(res, local)| {
            let (error, message) = match (local, &answer) {
                (Some(e), _) => e,
                (None, Err(e)) => (e.code as i16, e.message.clone()),
                (None, Ok(_)) => match answered.next() {
                    Some(r) => (code(r.error_code), r.error_message),
                    None => (
                        ErrorCode::UnknownServerError as i16,
                        "the controller did not answer for this resource".to_owned(),
                    ),
                },
            };
            m::incremental_alter_configs_response::AlterConfigsResourceResponse::default()
                .with_resource_type(res.resource_type)
                .with_resource_name(res.resource_name.clone())
                .with_error_code(error)
                .with_error_message(opt_message(message))
        })
        .collect();
    m::IncrementalAlterConfigsResponse::default().with_responses(responses)
}

/// DescribeCluster (v0-2): the cluster id, this broker as the controller (admin requests sent
/// to it are forwarded to the active controller) and the brokers at their
/// Kafka endpoints (fenced ones too when asked, v2). Controllers are not reachable over the
/// Kafka protocol, so the CONTROLLERS endpoint type is refused.
pub async fn describe_cluster(
    apis: &KafkaApis,
    req: m::DescribeClusterRequest,
    version: i16,
) -> m::DescribeClusterResponse {
    let resp = m::DescribeClusterResponse::default()
        .with_endpoint_type(1)
        .with_controller_id(BrokerId(-1))
        .with_cluster_authorized_operations(if req.include_cluster_authorized_operations {
            super::apis::CLUSTER_OPERATIONS
        } else {
            i32::MIN
        });
    if version >= 1 && req.endpoint_type != 1 {
        return resp
            .with_endpoint_type(req.endpoint_type)
            .with_error_code(ResponseError::UnsupportedEndpointType.code())
            .with_error_message(Some(text(format!(
                "endpoint type {} is not supported: rill's Kafka listener describes brokers (1)",
                req.endpoint_type
            ))));
    }
    let answer =
        crate::apis::metadata::handle(&apis.svc, rp::MetadataRequest { topics: Vec::new() }).await;
    let answer = match answer {
        Ok(a) => a,
        Err(e) => {
            let e = ApiError::from(e);
            return resp
                .with_error_code(e.code as i16)
                .with_error_message(Some(text(e.message)));
        }
    };
    let with_fenced = version >= 2 && req.include_fenced_brokers;
    resp.with_cluster_id(text(answer.cluster_id))
        // As in Metadata: a broker that forwards admin requests (this one), not a controller.
        .with_controller_id(BrokerId(apis.svc.rm.config().node_id))
        .with_brokers(
            answer
                .brokers
                .iter()
                .filter(|b| with_fenced || !b.fenced)
                .filter_map(|b| {
                    let e = super::apis::kafka_endpoint(&b.endpoints)?;
                    Some(
                        m::describe_cluster_response::DescribeClusterBroker::default()
                            .with_broker_id(BrokerId(b.node_id))
                            .with_host(text(e.host.clone()))
                            .with_port(e.port as i32)
                            .with_rack(b.rack.clone().map(text))
                            .with_is_fenced(b.fenced),
                    )
                })
                .collect(),
        )
}
