//! The broker's configuration: Kafka property names (`log.dirs`, `num.io.threads`, ...), loaded
//! with figment from defaults → TOML file → `RILL_*` env vars → command-line overrides, then
//! checked against a table of known properties so a typo is an error, not a silent default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Value};
use rill_storage::LogConfig;

/// When appends become durable before they are acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FlushPolicy {
    /// fsync (group commit) before acknowledging: acknowledged means on disk.
    Commit,
    /// Acknowledge once in the page cache; fsync every `flush.messages` / `flush.ms` (Kafka's way).
    Interval,
}

/// Every broker property: name, default, and what it means.
const KNOWN: &[(&str, &str, &str)] = &[
    ("node.id", "1", "this broker's id"),
    ("listeners", "127.0.0.1:9092", "host:port to listen on"),
    (
        "advertised.listeners",
        "",
        "host:port clients should use (default: listeners)",
    ),
    (
        "kafka.listeners",
        "",
        "host:port of the Kafka-protocol listener (empty: off)",
    ),
    (
        "kafka.advertised.listeners",
        "",
        "host:port Kafka clients should use (default: kafka.listeners)",
    ),
    (
        "controller.quorum.voters",
        "1@127.0.0.1:9093",
        "id@host:port of every controller",
    ),
    (
        "log.dirs",
        "/tmp/rill-logs",
        "comma-separated directories for partition logs",
    ),
    (
        "num.io.threads",
        "4",
        "I/O worker threads appending produced batches",
    ),
    (
        "queued.max.requests",
        "500",
        "requests waiting for an I/O thread before producers wait",
    ),
    (
        "message.max.bytes",
        "1048588",
        "largest record batch accepted (topic default for max.message.bytes)",
    ),
    (
        "rill.decompressed.batch.max.bytes",
        "67108864",
        "largest records section a compressed produced batch may decompress to (at least max.message.bytes, which bounds the batch as sent)",
    ),
    (
        "fetch.max.bytes",
        "57671680",
        "most record bytes one fetch response may hold",
    ),
    (
        "max.incremental.fetch.session.cache.slots",
        "1000",
        "fetch sessions (KIP-227) the Kafka listener keeps; a new one evicts the least recently used (0: none)",
    ),
    (
        "kafka.max.in.flight.produce.requests.per.connection",
        "5",
        "Produce requests of one Kafka-listener connection waiting for durability at once, each appended before the next is read (1: one request at a time, as Kafka's broker)",
    ),
    (
        "socket.request.max.bytes",
        "104857600",
        "largest request accepted",
    ),
    (
        "log.flush.policy",
        "commit",
        "commit (fsync before ack) or interval (flush.messages/flush.ms)",
    ),
    (
        "log.retention.check.interval.ms",
        "300000",
        "how often retention runs",
    ),
    (
        "replica.lag.time.max.ms",
        "30000",
        "a follower that has not caught up for this long leaves the ISR",
    ),
    (
        "replica.fetch.wait.max.ms",
        "500",
        "longest a follower's fetch waits at the leader for new data",
    ),
    (
        "replica.fetch.max.bytes",
        "1048576",
        "record bytes a follower asks for per partition and fetch",
    ),
    (
        "replica.fetch.response.max.bytes",
        "10485760",
        "record bytes a follower asks for per fetch",
    ),
    (
        "replica.fetch.backoff.ms",
        "1000",
        "pause after a failed replica fetch call; a partition whose own fetch fails waits by itself, min(10 ms, this) at first, doubling up to this",
    ),
    (
        "num.replica.fetchers",
        "1",
        "fetch loops per source broker (partitions are spread over them)",
    ),
    (
        "replica.high.watermark.checkpoint.interval.ms",
        "5000",
        "how often high watermarks are written to replication-offset-checkpoint",
    ),
    (
        "producer.id.expiration.ms",
        "86400000",
        "an idempotent producer silent this long is forgotten (its next write must start a new sequence)",
    ),
    (
        "producer.id.expiration.check.interval.ms",
        "600000",
        "how often expired producer ids are removed",
    ),
    (
        "log.flush.offset.checkpoint.interval.ms",
        "60000",
        "how often each log dir's recovery-point checkpoint is written",
    ),
    (
        "log.segment.delete.delay.ms",
        "60000",
        "how long a log set aside as <dir>-delete (deleted topic, replica moved away) stays on disk",
    ),
    (
        "log.cleaner.backoff.ms",
        "15000",
        "how often the cleaner looks for dirty logs",
    ),
    (
        "log.cleaner.dedupe.buffer.size",
        "134217728",
        "memory for the cleaner's offset map",
    ),
    (
        "broker.heartbeat.interval.ms",
        "2000",
        "heartbeat period to the controller",
    ),
    ("broker.rack", "", "rack id for replica placement"),
    (
        "metrics.address",
        "",
        "host:port of the Prometheus /metrics and /health endpoint (empty: off)",
    ),
    (
        "request.timeout.ms",
        "30000",
        "longest a request may wait in the queue",
    ),
    // Group coordinator (consumer groups, KIP-848).
    (
        "offsets.topic.num.partitions",
        "50",
        "partitions of __consumer_offsets (fixed once the topic exists)",
    ),
    (
        "offsets.topic.replication.factor",
        "3",
        "replicas of __consumer_offsets; its creation waits until this many brokers are registered",
    ),
    (
        "offsets.topic.segment.bytes",
        "104857600",
        "segment size of __consumer_offsets (small segments compact sooner)",
    ),
    (
        "offsets.retention.minutes",
        "10080",
        "committed offsets of a group without members expire this long after their commit",
    ),
    (
        "offsets.retention.check.interval.ms",
        "600000",
        "how often expired offsets are removed",
    ),
    (
        "offsets.commit.timeout.ms",
        "5000",
        "longest a group write waits for every in-sync replica of its __consumer_offsets partition",
    ),
    (
        "offset.metadata.max.bytes",
        "4096",
        "longest metadata string kept with a committed offset",
    ),
    (
        "group.consumer.session.timeout.ms",
        "45000",
        "a group member not heard from for this long is fenced and its partitions reassigned",
    ),
    (
        "group.consumer.heartbeat.interval.ms",
        "5000",
        "how often group members heartbeat",
    ),
    (
        "group.consumer.max.size",
        "2147483647",
        "most members one consumer group may have",
    ),
    (
        "group.consumer.assignors",
        "uniform,range",
        "server-side assignors members may choose; the first is the default",
    ),
    (
        "group.id.max.length",
        "255",
        "longest group id accepted, in bytes",
    ),
    (
        "group.initial.rebalance.delay.ms",
        "3000",
        "classic groups (Kafka's JoinGroup protocol): how long the first rebalance of an empty group waits for more members, extended while they keep arriving, up to the rebalance timeout",
    ),
    (
        "group.min.session.timeout.ms",
        "6000",
        "classic groups: shortest session.timeout.ms a member may ask for",
    ),
    (
        "group.max.session.timeout.ms",
        "1800000",
        "classic groups: longest session.timeout.ms a member may ask for",
    ),
    (
        "group.max.size",
        "2147483647",
        "classic groups: most members one group may have",
    ),
    // Topic defaults, Kafka's broker-level names.
    ("log.retention.ms", "604800000", "default retention.ms"),
    ("log.retention.bytes", "-1", "default retention.bytes"),
    ("log.segment.bytes", "1073741824", "default segment.bytes"),
    ("log.preallocate", "true", "default preallocate"),
    ("log.roll.ms", "604800000", "default segment.ms"),
    ("log.cleanup.policy", "delete", "default cleanup.policy"),
    (
        "log.cleaner.delete.retention.ms",
        "86400000",
        "default delete.retention.ms",
    ),
    (
        "log.cleaner.min.cleanable.ratio",
        "0.5",
        "default min.cleanable.dirty.ratio",
    ),
    (
        "log.index.interval.bytes",
        "4096",
        "default index.interval.bytes",
    ),
    (
        "log.index.size.max.bytes",
        "10485760",
        "default segment.index.bytes",
    ),
    (
        "log.message.timestamp.type",
        "CreateTime",
        "default message.timestamp.type",
    ),
    (
        "log.message.timestamp.before.max.ms",
        "9223372036854775807",
        "default message.timestamp.before.max.ms",
    ),
    (
        "log.message.timestamp.after.max.ms",
        "3600000",
        "default message.timestamp.after.max.ms",
    ),
    (
        "log.flush.interval.messages",
        "9223372036854775807",
        "default flush.messages",
    ),
    (
        "log.flush.interval.ms",
        "9223372036854775807",
        "default flush.ms",
    ),
];

/// Broker-level names of topic configs.
const TOPIC_DEFAULTS: &[(&str, &str)] = &[
    ("log.retention.ms", "retention.ms"),
    ("log.retention.bytes", "retention.bytes"),
    ("log.segment.bytes", "segment.bytes"),
    ("log.preallocate", "preallocate"),
    ("log.roll.ms", "segment.ms"),
    ("log.cleanup.policy", "cleanup.policy"),
    ("log.cleaner.delete.retention.ms", "delete.retention.ms"),
    (
        "log.cleaner.min.cleanable.ratio",
        "min.cleanable.dirty.ratio",
    ),
    ("log.index.interval.bytes", "index.interval.bytes"),
    ("log.index.size.max.bytes", "segment.index.bytes"),
    ("log.message.timestamp.type", "message.timestamp.type"),
    (
        "log.message.timestamp.before.max.ms",
        "message.timestamp.before.max.ms",
    ),
    (
        "log.message.timestamp.after.max.ms",
        "message.timestamp.after.max.ms",
    ),
    ("log.flush.interval.messages", "flush.messages"),
    ("log.flush.interval.ms", "flush.ms"),
    ("message.max.bytes", "max.message.bytes"),
];

/// Config errors, naming the property and what is allowed.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment could not read a source.
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// An unknown property (probably a typo).
    #[error("unknown property {0:?}; see `rill-broker --help-config` for the known ones")]
    Unknown(String),
    /// A bad value.
    #[error("invalid {name}={value:?}: {reason}")]
    Invalid {
        /// The property name, as Kafka spells it.
        name: String,
        /// The value given.
        value: String,
        /// What is allowed.
        reason: String,
    },
}

/// The broker's settings.
#[derive(Clone, Debug)]
pub struct BrokerConfig {
    /// `node.id`.
    pub node_id: i32,
    /// `listeners`.
    pub listeners: SocketAddr,
    /// `advertised.listeners` (host, port).
    pub advertised: (String, u16),
    /// `kafka.listeners`: where the Kafka-protocol listener binds; `None` turns it off.
    pub kafka_listeners: Option<SocketAddr>,
    /// `kafka.advertised.listeners` (host, port): the Kafka endpoint registered with the
    /// controllers and named in Kafka Metadata answers; set when the Kafka listener is on.
    pub kafka_advertised: Option<(String, u16)>,
    /// `controller.quorum.voters` as `host:port`, by id.
    pub controller_voters: Vec<(u64, String)>,
    /// `log.dirs`.
    pub log_dirs: Vec<PathBuf>,
    /// `num.io.threads`.
    pub num_io_threads: usize,
    /// `queued.max.requests`.
    pub queued_max_requests: usize,
    /// `message.max.bytes`.
    pub message_max_bytes: usize,
    /// `socket.request.max.bytes`.
    pub socket_request_max_bytes: usize,
    /// `fetch.max.bytes`.
    pub fetch_max_bytes: usize,
    /// `max.incremental.fetch.session.cache.slots`: the Kafka listener's fetch sessions.
    pub max_incremental_fetch_session_cache_slots: usize,
    /// `kafka.max.in.flight.produce.requests.per.connection`: how many Produce requests of
    /// one Kafka-listener connection overlap their wait for durability.
    pub kafka_max_in_flight_produce: usize,
    /// `log.flush.policy`.
    pub flush_policy: FlushPolicy,
    /// `log.retention.check.interval.ms`.
    pub retention_check_interval_ms: u64,
    /// `replica.lag.time.max.ms`.
    pub replica_lag_time_max_ms: u64,
    /// `replica.fetch.wait.max.ms`.
    pub replica_fetch_wait_max_ms: u64,
    /// `replica.fetch.max.bytes`.
    pub replica_fetch_max_bytes: usize,
    /// `replica.fetch.response.max.bytes`.
    pub replica_fetch_response_max_bytes: usize,
    /// `replica.fetch.backoff.ms`.
    pub replica_fetch_backoff_ms: u64,
    /// `num.replica.fetchers`.
    pub num_replica_fetchers: usize,
    /// `replica.high.watermark.checkpoint.interval.ms`.
    pub hw_checkpoint_interval_ms: u64,
    /// `producer.id.expiration.ms`.
    pub producer_id_expiration_ms: u64,
    /// `producer.id.expiration.check.interval.ms`.
    pub producer_id_expiration_check_interval_ms: u64,
    /// `log.flush.offset.checkpoint.interval.ms`: a crash re-validates at most this much data.
    pub recovery_point_checkpoint_interval_ms: u64,
    /// `log.segment.delete.delay.ms`: how long a `-delete` log waits before removal.
    pub log_delete_delay_ms: u64,
    /// `log.cleaner.backoff.ms`.
    pub cleaner_backoff_ms: u64,
    /// `log.cleaner.dedupe.buffer.size`.
    pub cleaner_dedupe_buffer_size: usize,
    /// `broker.heartbeat.interval.ms`.
    pub heartbeat_interval_ms: u64,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// `metrics.address`.
    pub metrics_address: Option<SocketAddr>,
    /// `request.timeout.ms`.
    pub request_timeout_ms: u64,
    /// The group coordinator's settings (`group.consumer.*`, `offsets.*`).
    pub group: GroupCoordinatorConfig,
    /// Topic config defaults from the broker-level `log.*` properties.
    pub topic_defaults: LogConfig,
    /// Every property, resolved, for `--print-config`.
    pub properties: BTreeMap<String, String>,
}

/// The group coordinator's settings: where groups live and how members are timed.
#[derive(Clone, Debug)]
pub struct GroupCoordinatorConfig {
    /// `offsets.topic.num.partitions`.
    pub offsets_topic_num_partitions: i32,
    /// `offsets.topic.replication.factor`.
    pub offsets_topic_replication_factor: i16,
    /// `offsets.topic.segment.bytes`.
    pub offsets_topic_segment_bytes: u64,
    /// `offsets.retention.check.interval.ms`.
    pub offsets_retention_check_interval_ms: u64,
    /// `offsets.commit.timeout.ms`.
    pub offsets_commit_timeout_ms: u64,
    /// What each `__consumer_offsets` shard obeys.
    pub shard: rill_group_coordinator::GroupConfig,
}

/// `group.consumer.assignors`: known names, at least one.
fn assignors(value: &str) -> Result<Vec<String>, String> {
    let names: Vec<String> = value
        .split(',')
        .map(str::trim)
        .filter(|n| !n.is_empty())
        .map(str::to_owned)
        .collect();
    if names.is_empty() {
        return Err("name at least one assignor: uniform, range".into());
    }
    if let Some(bad) = names
        .iter()
        .find(|n| !matches!(n.as_str(), "uniform" | "range"))
    {
        return Err(format!(
            "unknown assignor {bad:?}; rill has uniform and range"
        ));
    }
    Ok(names)
}

impl BrokerConfig {
    /// Loads and validates the configuration.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut props: BTreeMap<String, String> = KNOWN
            .iter()
            .map(|(k, v, _)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        // Layers in order; the file and flags are strict (an unknown name is a typo), the
        // environment is lenient (RILL_* is shared with the CLI and tools).
        let layers: [(Figment, bool); 3] = [
            (
                match file {
                    Some(f) => Figment::from(Toml::file_exact(f)),
                    None => Figment::new(),
                },
                true,
            ),
            (
                Figment::from(
                    Env::prefixed("RILL_")
                        .split("_")
                        .map(|k| k.as_str().to_ascii_lowercase().into()),
                ),
                false,
            ),
            (
                overrides.iter().fold(Figment::new(), |f, (k, v)| {
                    f.merge(Serialized::global(k.as_str(), v.as_str()))
                }),
                true,
            ),
        ];
        for (layer, strict) in layers {
            let dict: Dict = layer.extract().map_err(Box::new)?;
            let mut given = BTreeMap::new();
            flatten("", &Value::from(dict), &mut given);
            for (k, v) in given {
                match props.get_mut(&k) {
                    Some(slot) => *slot = v,
                    None if strict => return Err(ConfigError::Unknown(k)),
                    None => {}
                }
            }
        }
        Self::from_properties(props)
    }

    /// Builds the typed config from resolved properties.
    pub fn from_properties(props: BTreeMap<String, String>) -> Result<Self, ConfigError> {
        let get = |k: &str| props.get(k).cloned().unwrap_or_default();
        let invalid = |name: &str, reason: &str| ConfigError::Invalid {
            name: name.to_owned(),
            value: get(name),
            reason: reason.to_owned(),
        };
        let int = |name: &str, min: i64, max: i64| -> Result<i64, ConfigError> {
            let v: i64 = get(name)
                .trim()
                .parse()
                .map_err(|_| invalid(name, "expected an integer"))?;
            if v < min || v > max {
                return Err(invalid(name, &format!("must be between {min} and {max}")));
            }
            Ok(v)
        };
        let addr = |name: &str| -> Result<SocketAddr, ConfigError> {
            get(name).trim().parse().map_err(|_| {
                invalid(
                    name,
                    "expected host:port with a numeric IP, e.g. 127.0.0.1:9092",
                )
            })
        };
        let listeners = addr("listeners")?;
        let advertised_of = |name: &str, bound: SocketAddr| -> Result<(String, u16), ConfigError> {
            let raw = get(name);
            if raw.trim().is_empty() {
                return Ok((bound.ip().to_string(), bound.port()));
            }
            let (h, p) = raw
                .trim()
                .rsplit_once(':')
                .ok_or_else(|| invalid(name, "expected host:port"))?;
            Ok((
                h.to_owned(),
                p.parse().map_err(|_| invalid(name, "bad port"))?,
            ))
        };
        let advertised = advertised_of("advertised.listeners", listeners)?;
        let kafka_listeners = if get("kafka.listeners").trim().is_empty() {
            None
        } else {
            Some(addr("kafka.listeners")?)
        };
        let kafka_advertised = match kafka_listeners {
            Some(bound) => Some(advertised_of("kafka.advertised.listeners", bound)?),
            None if !get("kafka.advertised.listeners").trim().is_empty() => {
                return Err(invalid(
                    "kafka.advertised.listeners",
                    "needs kafka.listeners (the Kafka listener is off)",
                ));
            }
            None => None,
        };
        let mut voters = Vec::new();
        for part in get("controller.quorum.voters")
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (id, a) = part
                .split_once('@')
                .ok_or_else(|| invalid("controller.quorum.voters", "expected id@host:port,..."))?;
            let id = id
                .parse()
                .map_err(|_| invalid("controller.quorum.voters", "bad node id"))?;
            voters.push((id, a.to_owned()));
        }
        if voters.is_empty() {
            return Err(invalid(
                "controller.quorum.voters",
                "at least one controller is required",
            ));
        }
        let log_dirs: Vec<PathBuf> = get("log.dirs")
            .split(',')
            .map(str::trim)
            .filter(|d| !d.is_empty())
            .map(PathBuf::from)
            .collect();
        if log_dirs.is_empty() {
            return Err(invalid("log.dirs", "at least one directory is required"));
        }
        let flush_policy = match get("log.flush.policy").trim() {
            "commit" => FlushPolicy::Commit,
            "interval" => FlushPolicy::Interval,
            _ => return Err(invalid("log.flush.policy", "must be commit or interval")),
        };
        let mut topic_defaults = LogConfig::default();
        for (broker_key, topic_key) in TOPIC_DEFAULTS {
            topic_defaults
                .set(topic_key, &get(broker_key))
                .map_err(|e| invalid(broker_key, &e.to_string()))?;
        }
        topic_defaults.decompressed_batch_max_bytes =
            int("rill.decompressed.batch.max.bytes", 1024, i32::MAX as i64)? as usize;
        let metrics = get("metrics.address");
        let rack = get("broker.rack");
        // Kafka's rule: a member must heartbeat more often than its session lasts, or it is
        // fenced between two heartbeats.
        if int("group.consumer.heartbeat.interval.ms", 1, i32::MAX as i64)?
            >= int("group.consumer.session.timeout.ms", 1, i32::MAX as i64)?
        {
            return Err(invalid(
                "group.consumer.heartbeat.interval.ms",
                "must be smaller than group.consumer.session.timeout.ms",
            ));
        }
        if int("group.min.session.timeout.ms", 1, i32::MAX as i64)?
            > int("group.max.session.timeout.ms", 1, i32::MAX as i64)?
        {
            return Err(invalid(
                "group.min.session.timeout.ms",
                "must not be larger than group.max.session.timeout.ms",
            ));
        }
        Ok(BrokerConfig {
            node_id: int("node.id", 0, i32::MAX as i64)? as i32,
            listeners,
            advertised,
            kafka_listeners,
            kafka_advertised,
            controller_voters: voters,
            log_dirs,
            num_io_threads: int("num.io.threads", 1, 256)? as usize,
            queued_max_requests: int("queued.max.requests", 1, 1_000_000)? as usize,
            message_max_bytes: int("message.max.bytes", 64, i32::MAX as i64)? as usize,
            socket_request_max_bytes: int("socket.request.max.bytes", 1024, i32::MAX as i64)?
                as usize,
            fetch_max_bytes: int("fetch.max.bytes", 1024, i32::MAX as i64)? as usize,
            max_incremental_fetch_session_cache_slots: int(
                "max.incremental.fetch.session.cache.slots",
                0,
                i32::MAX as i64,
            )? as usize,
            kafka_max_in_flight_produce: int(
                "kafka.max.in.flight.produce.requests.per.connection",
                1,
                100,
            )? as usize,
            flush_policy,
            retention_check_interval_ms: int("log.retention.check.interval.ms", 1, i64::MAX)?
                as u64,
            replica_lag_time_max_ms: int("replica.lag.time.max.ms", 1, i64::MAX)? as u64,
            replica_fetch_wait_max_ms: int("replica.fetch.wait.max.ms", 0, 60_000)? as u64,
            replica_fetch_max_bytes: int("replica.fetch.max.bytes", 1024, i32::MAX as i64)?
                as usize,
            replica_fetch_response_max_bytes: int(
                "replica.fetch.response.max.bytes",
                1024,
                i32::MAX as i64,
            )? as usize,
            replica_fetch_backoff_ms: int("replica.fetch.backoff.ms", 1, 3_600_000)? as u64,
            num_replica_fetchers: int("num.replica.fetchers", 1, 64)? as usize,
            hw_checkpoint_interval_ms: int(
                "replica.high.watermark.checkpoint.interval.ms",
                1,
                i64::MAX,
            )? as u64,
            producer_id_expiration_ms: int("producer.id.expiration.ms", 1, i64::MAX)? as u64,
            producer_id_expiration_check_interval_ms: int(
                "producer.id.expiration.check.interval.ms",
                1,
                i64::MAX,
            )? as u64,
            recovery_point_checkpoint_interval_ms: int(
                "log.flush.offset.checkpoint.interval.ms",
                1,
                i64::MAX,
            )? as u64,
            log_delete_delay_ms: int("log.segment.delete.delay.ms", 0, i64::MAX)? as u64,
            cleaner_backoff_ms: int("log.cleaner.backoff.ms", 1, i64::MAX)? as u64,
            cleaner_dedupe_buffer_size: int("log.cleaner.dedupe.buffer.size", 1024, i64::MAX)?
                as usize,
            heartbeat_interval_ms: int("broker.heartbeat.interval.ms", 10, 3_600_000)? as u64,
            rack: (!rack.trim().is_empty()).then(|| rack.trim().to_owned()),
            metrics_address: if metrics.trim().is_empty() {
                None
            } else {
                Some(addr("metrics.address")?)
            },
            request_timeout_ms: int("request.timeout.ms", 1, 3_600_000)? as u64,
            group: GroupCoordinatorConfig {
                offsets_topic_num_partitions: int("offsets.topic.num.partitions", 1, 10_000)?
                    as i32,
                offsets_topic_replication_factor: int(
                    "offsets.topic.replication.factor",
                    1,
                    i16::MAX as i64,
                )? as i16,
                offsets_topic_segment_bytes: int(
                    "offsets.topic.segment.bytes",
                    1024,
                    i32::MAX as i64,
                )? as u64,
                offsets_retention_check_interval_ms: int(
                    "offsets.retention.check.interval.ms",
                    1,
                    i64::MAX,
                )? as u64,
                offsets_commit_timeout_ms: int("offsets.commit.timeout.ms", 1, 3_600_000)? as u64,
                shard: rill_group_coordinator::GroupConfig {
                    session_timeout_ms: int(
                        "group.consumer.session.timeout.ms",
                        1,
                        i32::MAX as i64,
                    )? as i32,
                    heartbeat_interval_ms: int(
                        "group.consumer.heartbeat.interval.ms",
                        1,
                        i32::MAX as i64,
                    )? as i32,
                    max_size: int("group.consumer.max.size", 1, i32::MAX as i64)? as usize,
                    assignors: assignors(&get("group.consumer.assignors"))
                        .map_err(|why| invalid("group.consumer.assignors", &why))?,
                    offset_metadata_max_bytes: int("offset.metadata.max.bytes", 0, i32::MAX as i64)?
                        as usize,
                    offsets_retention_ms: int("offsets.retention.minutes", 1, i64::MAX / 60_000)?
                        * 60_000,
                    max_group_id_length: int("group.id.max.length", 1, 32_767)? as usize,
                    // A record goes in a batch of its own at worst: batch and record framing
                    // must still fit message.max.bytes (__consumer_offsets has no override).
                    max_record_bytes: (int("message.max.bytes", 64, i32::MAX as i64)? as usize)
                        .saturating_sub(1024)
                        .max(1),
                    classic_initial_rebalance_delay_ms: int(
                        "group.initial.rebalance.delay.ms",
                        0,
                        i32::MAX as i64,
                    )?,
                    classic_min_session_timeout_ms: int(
                        "group.min.session.timeout.ms",
                        1,
                        i32::MAX as i64,
                    )? as i32,
                    classic_max_session_timeout_ms: int(
                        "group.max.session.timeout.ms",
                        1,
                        i32::MAX as i64,
                    )? as i32,
                    classic_max_size: int("group.max.size", 1, i32::MAX as i64)? as usize,
                },
            },
            topic_defaults,
            properties: props,
        })
    }

    /// The log config of a topic: broker defaults overridden by the topic's configs.
    pub fn log_config(&self, topic_configs: &BTreeMap<String, String>) -> LogConfig {
        let mut c = self.topic_defaults.clone();
        for (k, v) in topic_configs {
            if LogConfig::KEYS.contains(&k.as_str()) && c.set(k, v).is_err() {
                tracing::warn!(config = %k, value = %v, "ignoring an invalid topic config");
            }
        }
        c
    }

    /// Known properties with defaults and meaning, for `--help-config`.
    pub fn known_properties() -> impl Iterator<Item = (&'static str, &'static str, &'static str)> {
        KNOWN.iter().copied()
    }
}

fn flatten(prefix: &str, value: &Value, out: &mut BTreeMap<String, String>) {
    match value {
        Value::Dict(_, dict) => {
            for (k, v) in dict {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        Value::String(_, s) => {
            out.insert(prefix.to_owned(), s.clone());
        }
        Value::Num(_, n) => {
            let text = n
                .to_u128()
                .map(|v| v.to_string())
                .or_else(|| n.to_i128().map(|v| v.to_string()))
                .or_else(|| n.to_f64().map(|v| v.to_string()))
                .unwrap_or_default();
            out.insert(prefix.to_owned(), text);
        }
        Value::Bool(_, b) => {
            out.insert(prefix.to_owned(), b.to_string());
        }
        Value::Array(_, items) => {
            let parts: Vec<String> = items
                .iter()
                .map(|v| match v {
                    Value::String(_, s) => s.clone(),
                    other => format!("{other:?}"),
                })
                .collect();
            out.insert(prefix.to_owned(), parts.join(","));
        }
        other => {
            out.insert(prefix.to_owned(), format!("{other:?}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layers_and_kafka_names() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("broker.toml");
        std::fs::write(
            &file,
            "node.id = 3\nlog.dirs = \"/a,/b\"\nlog.retention.ms = 1000\n[num.io]\nthreads = 2\n",
        )
        .unwrap();
        let mut o = BTreeMap::new();
        o.insert("num.io.threads".into(), "6".into());
        let c = BrokerConfig::load(Some(&file), &o).unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.log_dirs.len(), 2);
        assert_eq!(c.num_io_threads, 6);
        assert_eq!(c.topic_defaults.retention_ms, 1000);
        assert_eq!(c.flush_policy, FlushPolicy::Commit);
        assert_eq!(c.advertised, ("127.0.0.1".to_owned(), 9092));
        assert_eq!(c.kafka_listeners, None);
        assert_eq!(c.kafka_advertised, None);
    }

    #[test]
    fn classic_group_settings() {
        let c = BrokerConfig::load(None, &BTreeMap::new()).unwrap();
        assert_eq!(c.group.shard.classic_initial_rebalance_delay_ms, 3000);
        assert_eq!(c.group.shard.classic_min_session_timeout_ms, 6000);
        assert_eq!(c.group.shard.classic_max_session_timeout_ms, 1_800_000);
        let mut o = BTreeMap::new();
        o.insert("group.initial.rebalance.delay.ms".into(), "0".into());
        let c = BrokerConfig::load(None, &o).unwrap();
        assert_eq!(c.group.shard.classic_initial_rebalance_delay_ms, 0);
        o.insert("group.min.session.timeout.ms".into(), "60000".into());
        o.insert("group.max.session.timeout.ms".into(), "30000".into());
        assert!(BrokerConfig::load(None, &o).is_err());
        // A consumer-group member must heartbeat within its session.
        let mut o = BTreeMap::new();
        o.insert("group.consumer.session.timeout.ms".into(), "3000".into());
        let e = BrokerConfig::load(None, &o).unwrap_err();
        assert!(
            e.to_string()
                .contains("group.consumer.heartbeat.interval.ms"),
            "{e}"
        );
        o.insert("group.consumer.heartbeat.interval.ms".into(), "1000".into());
        BrokerConfig::load(None, &o).unwrap();
    }

    #[test]
    fn kafka_listener_and_its_advertised_address() {
        let mut o = BTreeMap::new();
        o.insert("kafka.listeners".into(), "127.0.0.1:9094".into());
        let c = BrokerConfig::load(None, &o).unwrap();
        assert_eq!(c.kafka_listeners, Some("127.0.0.1:9094".parse().unwrap()));
        assert_eq!(c.kafka_advertised, Some(("127.0.0.1".to_owned(), 9094)));
        o.insert(
            "kafka.advertised.listeners".into(),
            "broker-1.example:19094".into(),
        );
        let c = BrokerConfig::load(None, &o).unwrap();
        assert_eq!(
            c.kafka_advertised,
            Some(("broker-1.example".to_owned(), 19094))
        );
        // An advertised address without a listener is a mistake, not a silent no-op.
        let mut o = BTreeMap::new();
        o.insert("kafka.advertised.listeners".into(), "h:1".into());
        assert!(BrokerConfig::load(None, &o).is_err());
        let mut o = BTreeMap::new();
        o.insert("kafka.listeners".into(), "localhost".into());
        assert!(BrokerConfig::load(None, &o).is_err());
    }

    #[test]
    fn unknown_environment_variables_are_not_errors() {
        // SAFETY: the test sets a variable no other test reads.
        unsafe { std::env::set_var("RILL_SOME_TOOL_SETTING", "1") };
        assert!(BrokerConfig::load(None, &BTreeMap::new()).is_ok());
        unsafe { std::env::remove_var("RILL_SOME_TOOL_SETTING") };
    }

    #[test]
    fn typos_and_bad_values_are_errors() {
        let mut o = BTreeMap::new();
        o.insert("log.dir".into(), "/x".into());
        assert!(
            matches!(BrokerConfig::load(None, &o), Err(ConfigError::Unknown(k)) if k == "log.dir")
        );
        let mut o = BTreeMap::new();
        o.insert("num.io.threads".into(), "0".into());
        assert!(
            BrokerConfig::load(None, &o)
                .unwrap_err()
                .to_string()
                .contains("between 1 and 256")
        );
        let mut o = BTreeMap::new();
        o.insert("log.cleanup.policy".into(), "shred".into());
        assert!(BrokerConfig::load(None, &o).is_err());
    }
}
