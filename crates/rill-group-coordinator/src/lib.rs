//! rill's group coordinator, as a state machine (Kafka's `group-coordinator` module): consumer
//! groups with the server-side rebalance protocol of KIP-848, their target assignments
//! (`uniform` and `range` assignors), member reconciliation, and committed offsets.
//!
//! The state of one `__consumer_offsets` partition is a [`GroupCoordinatorShard`]. Every change
//! is a [`Record`]: a request handler computes the records and its response, replays the records
//! on the shard, and returns both; the broker's coordinator runtime appends the records to the
//! partition and answers once they are committed. Loading a partition on a new leader replays
//! the same records, so a loaded shard equals the one that wrote them. Nothing here does I/O.
//!
//! There is no rollback: if the records of a handler cannot be appended (the broker lost
//! leadership, the write failed), the shard already holds their effect and must be dropped and
//! loaded again from the partition. So whatever could make an append fail is refused before
//! anything is replayed: a refused request writes nothing (except a FENCED_MEMBER_EPOCH
//! heartbeat answer, which records that the member may join again), and no record is ever
//! larger than [`GroupConfig::max_record_bytes`]. Timers (session and rebalance deadlines), the assignments
//! last sent to members and the time groups became empty live in memory only: [`on_loaded`]
//! starts them afresh.
//!
//! Classic groups ([`classic_group`]: Kafka clients' JoinGroup/SyncGroup protocol) are the one
//! exception to "state is the replay of records", as in Kafka: their membership between
//! rebalances lives in memory, and their record, written when a rebalance completes, is
//! replayed only when loading.
//!
//! Modules follow Kafka's: [`records`] (the record formats), [`assignor`] (`uniform`,
//! `range`), [`classic_group`], and privately `group_metadata_manager` (heartbeats, timers, group records),
//! `offset_metadata_manager` (offsets), `consumer_group` (a group and its members as replayed),
//! `current_assignment_builder` (reconciliation of one member) and `topic_regex`.
//!
//! [`on_loaded`]: GroupCoordinatorShard::on_loaded

#![warn(missing_docs)]

pub mod assignor;
pub mod classic_group;
mod consumer_group;
mod current_assignment_builder;
mod group_metadata_manager;
mod offset_metadata_manager;
pub mod records;
mod topic_regex;

#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap};

use bytes::Bytes;
use rill_protocol::ErrorCode;
use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::proto::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, DeletableGroupResult,
    DescribedGroup, ListedGroup, OffsetCommitRequest, OffsetCommitResponse,
    OffsetDeletePartitionResponse, OffsetDeleteRequest, OffsetDeleteResponse,
    OffsetDeleteTopicResponse, OffsetFetchRequest, OffsetFetchResponse,
};

use crate::classic_group::ClassicGroupManager;
use crate::consumer_group::{LEAVE_GROUP_MEMBER_EPOCH, LEAVE_GROUP_STATIC_MEMBER_EPOCH};
use crate::group_metadata_manager::GroupMetadataManager;
use crate::offset_metadata_manager::OffsetMetadataManager;
use crate::records::CoordinatorRecord;

/// The internal topic holding group state and committed offsets.
pub const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Longest member id, instance id, rack id, client id and server assignor name a heartbeat may
/// carry (bytes). Kafka has no such limits, but they are stored in records, and a record must
/// fit in a batch of `__consumer_offsets`.
pub const MAX_ID_BYTES: usize = 255;
/// Most topic names a member may subscribe to.
pub const MAX_SUBSCRIBED_TOPICS: usize = 10_000;
/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_NAME_BYTES: usize = 249;
/// Longest subscription regular expression (bytes).
pub const MAX_TOPIC_REGEX_BYTES: usize = 1024;

/// The `__consumer_offsets` partition that coordinates `group_id`: Kafka's
/// `Utils.abs(groupId.hashCode()) % partitions`, with Java's `String.hashCode` over UTF-16 code
/// units, so a group lands on the same partition number as in Kafka.
pub fn partition_for(group_id: &str, partitions: i32) -> i32 {
    if partitions <= 0 {
        return 0;
    }
    let hash = group_id.encode_utf16().fold(0i32, |h, unit| {
        h.wrapping_mul(31).wrapping_add(i32::from(unit))
    });
    // Kafka's Utils.abs: MIN_VALUE maps to 0 (not to itself, as Math.abs would).
    let abs = if hash == i32::MIN { 0 } else { hash.abs() };
    abs % partitions
}

/// Why `name` cannot be a topic name (Kafka's rules), if it cannot.
fn topic_name_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("it is empty".into());
    }
    if name == "." || name == ".." {
        return Some("\".\" and \"..\" are not topic names".into());
    }
    if name.len() > MAX_TOPIC_NAME_BYTES {
        return Some(format!(
            "it is {} bytes long; topic names have at most {MAX_TOPIC_NAME_BYTES}",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Some(format!(
            "it contains {c:?}; topic names use only ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    None
}

/// Broker settings the coordinator obeys, with Kafka's names.
#[derive(Clone, Debug)]
pub struct GroupConfig {
    /// `group.consumer.session.timeout.ms`: a member not heard from for this long is fenced
    /// (default 45 s).
    pub session_timeout_ms: i32,
    /// `group.consumer.heartbeat.interval.ms`: how often members heartbeat (default 5 s).
    pub heartbeat_interval_ms: i32,
    /// `group.consumer.max.size`: members per group (default unbounded: `i32::MAX`).
    pub max_size: usize,
    /// `group.consumer.assignors`: the server assignors, the first is the default
    /// (default `uniform,range`).
    pub assignors: Vec<String>,
    /// `offset.metadata.max.bytes`: longest commit metadata string (default 4096).
    pub offset_metadata_max_bytes: usize,
    /// `offsets.retention.minutes` in ms: an empty group's offsets expire this long after
    /// their commit (default 7 days).
    pub offsets_retention_ms: i64,
    /// `group.id.max.length` (rill): longest group id accepted (default 255 bytes).
    pub max_group_id_length: usize,
    /// Largest record (key and value bytes) the shard may write (default 1 000 000). The
    /// broker sets it below the `max.message.bytes` of `__consumer_offsets` (less the batch
    /// framing), so every record a handler returns can be appended: requests whose records
    /// would be larger are refused before anything is replayed (INVALID_REQUEST for a heartbeat,
    /// INVALID_COMMIT_OFFSET_SIZE for an offset), and a group's subscribed topics are capped so
    /// the records computed from them (subscribed topic metadata, target and current
    /// assignments) always fit: topics beyond the cap (the last ones by name) are not assigned,
    /// with a warning in the log.
    pub max_record_bytes: usize,
    /// `group.min.session.timeout.ms`: shortest session a classic member may ask for
    /// (default 6 s; INVALID_SESSION_TIMEOUT below).
    pub classic_min_session_timeout_ms: i32,
    /// `group.max.session.timeout.ms`: longest session a classic member may ask for
    /// (default 30 min).
    pub classic_max_session_timeout_ms: i32,
    /// `group.initial.rebalance.delay.ms`: how long the first rebalance of an empty classic
    /// group waits for more members, extended by as much while they keep arriving, up to the
    /// rebalance timeout (default 3 s), so a group starting several consumers at once does not
    /// rebalance once per consumer.
    pub classic_initial_rebalance_delay_ms: i64,
    /// `group.max.size`: members per classic group (default unbounded).
    pub classic_max_size: usize,
}

impl Default for GroupConfig {
    fn default() -> Self {
        GroupConfig {
            session_timeout_ms: 45_000,
            heartbeat_interval_ms: 5_000,
            max_size: i32::MAX as usize,
            assignors: vec!["uniform".into(), "range".into()],
            offset_metadata_max_bytes: 4096,
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            max_group_id_length: 255,
            max_record_bytes: 1_000_000,
            classic_min_session_timeout_ms: 6_000,
            classic_max_session_timeout_ms: 1_800_000,
            classic_initial_rebalance_delay_ms: 3_000,
            classic_max_size: i32::MAX as usize,
        }
    }
}

/// One record of `__consumer_offsets`: a key and a value, or no value (a tombstone, which
/// compaction eventually removes with every older record of the key).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Record {
    /// The record key (version-prefixed; see [`records`]).
    pub key: Bytes,
    /// The record value, `None` for a tombstone.
    pub value: Option<Bytes>,
}

/// What a request handler produced: records to append (already replayed on the shard) and the
/// answer to send once they are committed.
#[derive(Debug)]
pub struct CoordinatorResult<T> {
    /// Records to append to the shard's partition, in order.
    pub records: Vec<Record>,
    /// The response for the client.
    pub response: T,
}

/// The bytes a record takes against [`GroupConfig::max_record_bytes`]: key and value.
pub(crate) fn record_size(record: &Record) -> usize {
    record.key.len() + record.value.as_ref().map_or(0, |v| v.len())
}

/// Why a record could not be replayed (a corrupt or unknown record in the partition).
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    /// The key or value does not decode.
    #[error("undecodable __consumer_offsets record: {0}")]
    Decode(String),
}

/// A failed request or partition: the error code and a message a person can act on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct ApiErr {
    pub(crate) code: ErrorCode,
    pub(crate) message: String,
}

/// The groups and offsets of one `__consumer_offsets` partition.
pub struct GroupCoordinatorShard {
    config: GroupConfig,
    groups: GroupMetadataManager,
    classic: ClassicGroupManager,
    offsets: OffsetMetadataManager,
    /// When each group without members became empty (in memory: a loaded shard starts the
    /// clock at load time, so offsets never expire earlier than the retention promises).
    empty_since: HashMap<String, i64>,
}

impl GroupCoordinatorShard {
    /// An empty shard (a partition before loading).
    pub fn new(config: GroupConfig) -> Self {
        GroupCoordinatorShard {
            config,
            groups: GroupMetadataManager::default(),
            classic: ClassicGroupManager::default(),
            offsets: OffsetMetadataManager::default(),
            empty_since: HashMap::new(),
        }
    }

    /// Applies one record read from the partition while loading it.
    pub fn replay(&mut self, record: &Record) -> Result<(), RecordError> {
        match CoordinatorRecord::decode(record)? {
            None => Ok(()),
            Some(r @ CoordinatorRecord::OffsetCommit(..)) => {
                self.offsets.apply(r);
                Ok(())
            }
            Some(CoordinatorRecord::GroupMetadata(k, v)) => {
                self.classic.replay(k, v);
                Ok(())
            }
            Some(r) => {
                self.groups.apply(r);
                Ok(())
            }
        }
    }

    /// Called once every record is replayed: starts every member's session timer at `now_ms`,
    /// deletes the offsets of partitions `image` no longer has and brings target assignments up
    /// to date with it (topics created, deleted or grown while no one coordinated the group).
    /// `image` must be caught up with the cluster's metadata: what it lacks is taken as deleted.
    pub fn on_loaded(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<Record> {
        self.restart_sessions(now_ms);
        self.empty_since.clear();
        for id in self.known_group_ids() {
            self.refresh_empty_since(&id, now_ms);
        }
        self.catch_up(image, now_ms)
    }

    /// Gives every member a full session (and a member giving up partitions a full rebalance
    /// timeout) from `now_ms`: after a load, and after a time in which the coordinator could
    /// not serve its members (their heartbeats were refused), so none is fenced for it.
    pub fn restart_sessions(&mut self, now_ms: i64) {
        self.groups.start_timers(&self.config, now_ms);
        self.classic.start_timers(now_ms);
    }

    /// Offsets of deleted partitions go, and groups follow `image`.
    fn catch_up(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<Record> {
        let mut out = Vec::new();
        for group in self.offsets.delete_missing(image, &mut out) {
            if !self.group_exists(&group) {
                self.empty_since.remove(&group);
            } else {
                self.refresh_empty_since(&group, now_ms);
            }
        }
        self.groups
            .on_metadata_update(&self.config, image, &mut out);
        out
    }

    /// ConsumerGroupHeartbeat: join, stay, reconcile or leave. `client_host` is the member's
    /// peer address (shown by DescribeGroups).
    pub fn consumer_group_heartbeat(
        &mut self,
        request: ConsumerGroupHeartbeatRequest,
        client_host: &str,
        image: &MetadataImage,
        now_ms: i64,
    ) -> CoordinatorResult<ConsumerGroupHeartbeatResponse> {
        let mut records = Vec::new();
        let result = self
            .validate_heartbeat(&request)
            .and_then(|()| self.classic_holds(&request.group_id))
            .and_then(|()| {
                self.groups.consumer_group_heartbeat(
                    &self.config,
                    &request,
                    client_host,
                    image,
                    now_ms,
                    &mut records,
                )
            })
            .inspect(|_| {
                // Only an accepted heartbeat takes the id from an empty classic group: a
                // refused one changes nothing. Its tombstone goes first, as it happened first.
                let mut taken = Vec::new();
                self.take_over_classic(&request.group_id, &mut taken);
                records.splice(0..0, taken);
            });
        let response = match result {
            Ok(response) => response,
            Err(e) => {
                tracing::debug!(group = %request.group_id, member = %request.member_id, code = ?e.code, "heartbeat refused: {}", e.message);
                ConsumerGroupHeartbeatResponse {
                    error_code: e.code as i32,
                    error_message: e.message,
                    member_id: request.member_id.clone(),
                    member_epoch: 0,
                    heartbeat_interval_ms: self.config.heartbeat_interval_ms,
                    assignment: None,
                }
            }
        };
        self.refresh_empty_since(&request.group_id, now_ms);
        CoordinatorResult { records, response }
    }

    fn validate_group_id(&self, group_id: &str) -> Result<(), ApiErr> {
        if group_id.is_empty() {
            return Err(ApiErr {
                code: ErrorCode::InvalidGroupId,
                message: "the group id is empty".into(),
            });
        }
        if group_id.len() > self.config.max_group_id_length {
            return Err(ApiErr {
                code: ErrorCode::InvalidGroupId,
                message: format!(
                    "the group id is {} bytes long, longer than group.id.max.length ({})",
                    group_id.len(),
                    self.config.max_group_id_length
                ),
            });
        }
        Ok(())
    }

    /// The checks of a heartbeat that need no group state (Kafka's
    /// `throwIfConsumerGroupHeartbeatRequestIsInvalid`).
    fn validate_heartbeat(&self, r: &ConsumerGroupHeartbeatRequest) -> Result<(), ApiErr> {
        let invalid = |message: String| ApiErr {
            code: ErrorCode::InvalidRequest,
            message,
        };
        self.validate_group_id(&r.group_id)?;
        let ids = [
            ("member_id", Some(r.member_id.as_str())),
            ("instance_id", r.instance_id.as_deref()),
            ("rack_id", r.rack_id.as_deref()),
            ("client_id", Some(r.client_id.as_str())),
            ("server_assignor", r.server_assignor.as_deref()),
        ];
        for (field, value) in ids {
            if let Some(v) = value
                && v.len() > MAX_ID_BYTES
            {
                return Err(invalid(format!(
                    "{field} is {} bytes long; at most {MAX_ID_BYTES} are accepted",
                    v.len()
                )));
            }
        }
        if r.instance_id.as_deref() == Some("") {
            return Err(invalid("instance_id, when set, must not be empty".into()));
        }
        if r.rack_id.as_deref() == Some("") {
            return Err(invalid("rack_id, when set, must not be empty".into()));
        }
        if let Some(names) = &r.subscribed_topic_names {
            if names.names.len() > MAX_SUBSCRIBED_TOPICS {
                return Err(invalid(format!(
                    "subscribed_topic_names has {} names; at most {MAX_SUBSCRIBED_TOPICS} are accepted (subscribe with a regular expression instead)",
                    names.names.len()
                )));
            }
            if let Some((name, why)) = names
                .names
                .iter()
                .find_map(|n| topic_name_error(n).map(|why| (n, why)))
            {
                let shown: String = name.chars().take(64).collect();
                return Err(invalid(format!(
                    "subscribed_topic_names holds an invalid topic name {shown:?}: {why}"
                )));
            }
        }
        if let Some(regex) = &r.subscribed_topic_regex
            && regex.len() > MAX_TOPIC_REGEX_BYTES
        {
            return Err(invalid(format!(
                "subscribed_topic_regex is {} bytes long; at most {MAX_TOPIC_REGEX_BYTES} are accepted",
                regex.len()
            )));
        }
        match r.member_epoch {
            0 => {
                if r.rebalance_timeout_ms <= 0 {
                    return Err(invalid(format!(
                        "rebalance_timeout_ms must be positive when joining (got {})",
                        r.rebalance_timeout_ms
                    )));
                }
                if r.owned_partitions
                    .as_ref()
                    .is_some_and(|o| o.topics.iter().any(|t| !t.partitions.is_empty()))
                {
                    return Err(invalid(
                        "owned_partitions must be empty when joining (epoch 0): a joining member owns nothing".into(),
                    ));
                }
                if r.subscribed_topic_names.is_none() && r.subscribed_topic_regex.is_none() {
                    return Err(invalid(
                        "subscribed_topic_names or subscribed_topic_regex must be set when joining (epoch 0)".into(),
                    ));
                }
            }
            LEAVE_GROUP_STATIC_MEMBER_EPOCH => {
                if r.member_id.is_empty() {
                    return Err(invalid("member_id must be set to leave".into()));
                }
                if r.instance_id.is_none() {
                    return Err(invalid(
                        "epoch -2 (leave for a restart) is for static members: instance_id must be set".into(),
                    ));
                }
            }
            e if e > 0 || e == LEAVE_GROUP_MEMBER_EPOCH => {
                if r.member_id.is_empty() {
                    return Err(invalid(format!(
                        "member_id must be set with epoch {e} (only a join, epoch 0, may leave it empty)"
                    )));
                }
            }
            e => {
                return Err(invalid(format!(
                    "member epoch {e} is invalid: 0 joins, -1 leaves, -2 leaves for a restart, otherwise the epoch last received"
                )));
            }
        }
        if let Some(assignor) = &r.server_assignor
            && (!self.config.assignors.contains(assignor) || !assignor::is_known(assignor))
        {
            return Err(ApiErr {
                code: ErrorCode::UnsupportedAssignor,
                message: format!(
                    "server assignor {assignor:?} is not supported; supported: {}",
                    self.config.assignors.join(", ")
                ),
            });
        }
        Ok(())
    }

    /// OffsetCommit from a member (checked against its epoch and assignment) or from outside
    /// the group (epoch -1, only while the group has no members).
    pub fn offset_commit(
        &mut self,
        request: OffsetCommitRequest,
        image: &MetadataImage,
        now_ms: i64,
    ) -> CoordinatorResult<OffsetCommitResponse> {
        let mut records = Vec::new();
        if let Err(e) = self.validate_group_id(&request.group_id) {
            return CoordinatorResult {
                records,
                response: offset_metadata_manager::offset_commit_error(&request, &e),
            };
        }
        let response = if let Some(classic) = self.classic.group(&request.group_id) {
            if let Err((code, message)) =
                classic.validate_offset_commit(&request.member_id, request.member_epoch)
            {
                return CoordinatorResult {
                    records,
                    response: offset_metadata_manager::offset_commit_error(
                        &request,
                        &ApiErr { code, message },
                    ),
                };
            }
            // Validated as a classic commit (generation and member id, no partition
            // ownership: the leader's assignment is opaque here); stored as any commit is.
            let validated = OffsetCommitRequest {
                member_epoch: -1,
                member_id: String::new(),
                ..request.clone()
            };
            self.offsets
                .offset_commit(&self.config, &validated, None, image, now_ms, &mut records)
        } else {
            self.offsets.offset_commit(
                &self.config,
                &request,
                self.groups.group(&request.group_id),
                image,
                now_ms,
                &mut records,
            )
        };
        if !records.is_empty() {
            self.refresh_empty_since(&request.group_id, now_ms);
        }
        CoordinatorResult { records, response }
    }

    /// OffsetFetch: committed offsets of the requested partitions (all when none are named).
    pub fn offset_fetch(&self, request: &OffsetFetchRequest) -> OffsetFetchResponse {
        if let Err(e) = self.validate_group_id(&request.group_id) {
            return OffsetFetchResponse {
                error_code: e.code as i32,
                error_message: e.message,
                topics: Vec::new(),
            };
        }
        self.offsets.offset_fetch(request)
    }

    /// Ids of every group with state or offsets, sorted.
    fn known_group_ids(&self) -> Vec<String> {
        let ids: BTreeSet<&String> = self
            .groups
            .groups()
            .map(|g| &g.group_id)
            .chain(self.classic.groups().map(|g| &g.group_id))
            .chain(self.offsets.group_ids())
            .collect();
        ids.into_iter().cloned().collect()
    }

    fn group_exists(&self, group_id: &str) -> bool {
        self.groups.group(group_id).is_some()
            || self.classic.group(group_id).is_some()
            || self.offsets.has_offsets(group_id)
    }

    fn has_members(&self, group_id: &str) -> bool {
        self.groups
            .group(group_id)
            .is_some_and(|g| !g.members.is_empty())
            || self.classic.group(group_id).is_some_and(|g| !g.is_empty())
    }

    fn state_name(&self, group_id: &str) -> &'static str {
        if let Some(g) = self.classic.group(group_id) {
            return g.state.name();
        }
        self.groups
            .group(group_id)
            .map_or("Empty", |g| g.state().name())
    }

    /// Starts or stops the "empty since" clock of `group_id`.
    fn refresh_empty_since(&mut self, group_id: &str, now_ms: i64) {
        if !self.group_exists(group_id) || self.has_members(group_id) {
            self.empty_since.remove(group_id);
        } else {
            self.empty_since
                .entry(group_id.to_string())
                .or_insert(now_ms);
        }
    }

    /// ListGroups for this shard, filtered by state names (empty = all).
    pub fn list_groups(&self, states_filter: &[String]) -> Vec<ListedGroup> {
        self.known_group_ids()
            .into_iter()
            .filter_map(|id| {
                let state = self.state_name(&id);
                let classic = self.classic.group(&id).is_some();
                let wanted = states_filter.is_empty()
                    || states_filter.iter().any(|s| s.eq_ignore_ascii_case(state));
                wanted.then(|| ListedGroup {
                    group_id: id,
                    group_state: state.to_string(),
                    group_type: if classic {
                        "classic".to_string()
                    } else {
                        "consumer".to_string()
                    },
                    coordinator_id: 0,
                })
            })
            .collect()
    }

    /// DescribeGroups for one group of this shard (GROUP_ID_NOT_FOUND when unknown).
    pub fn describe_group(&self, group_id: &str) -> DescribedGroup {
        if let Some(group) = self.groups.group(group_id) {
            return self.groups.describe(&self.config, group);
        }
        if let Some(group) = self.classic.group(group_id) {
            return group.describe();
        }
        if self.offsets.has_offsets(group_id) {
            return DescribedGroup {
                error_code: ErrorCode::None as i32,
                error_message: String::new(),
                group_id: group_id.to_string(),
                group_state: "Empty".to_string(),
                group_epoch: 0,
                assignment_epoch: 0,
                assignor_name: self
                    .config
                    .assignors
                    .first()
                    .cloned()
                    .unwrap_or_else(|| assignor::UNIFORM.to_string()),
                members: Vec::new(),
            };
        }
        DescribedGroup {
            error_code: ErrorCode::GroupIdNotFound as i32,
            error_message: format!("group {group_id} does not exist"),
            group_id: group_id.to_string(),
            group_state: "Dead".to_string(),
            ..Default::default()
        }
    }

    /// DeleteGroups: each group must exist and have no members; its offsets go with it.
    pub fn delete_groups(
        &mut self,
        group_ids: &[String],
    ) -> CoordinatorResult<Vec<DeletableGroupResult>> {
        let mut records = Vec::new();
        let mut results = Vec::with_capacity(group_ids.len());
        for id in group_ids {
            let result = if let Err(e) = self.validate_group_id(id) {
                Err(e)
            } else if !self.group_exists(id) {
                Err(ApiErr {
                    code: ErrorCode::GroupIdNotFound,
                    message: format!("group {id} does not exist"),
                })
            } else if self.has_members(id) {
                let n = self.groups.group(id).map_or(0, |g| g.members.len())
                    + self.classic.group(id).map_or(0, |g| g.members.len());
                Err(ApiErr {
                    code: ErrorCode::NonEmptyGroup,
                    message: format!(
                        "group {id} still has {n} member(s): stop its consumers (or wait for their sessions to time out) first"
                    ),
                })
            } else {
                tracing::info!(group = %id, "deleting the group and its offsets");
                self.offsets.delete_all(id, &mut records);
                self.groups.delete_group(id, &mut records);
                self.classic.delete(id, &mut records);
                self.empty_since.remove(id);
                Ok(())
            };
            results.push(match result {
                Ok(()) => DeletableGroupResult {
                    group_id: id.clone(),
                    error_code: ErrorCode::None as i32,
                    error_message: String::new(),
                },
                Err(e) => DeletableGroupResult {
                    group_id: id.clone(),
                    error_code: e.code as i32,
                    error_message: e.message,
                },
            });
        }
        CoordinatorResult {
            records,
            response: results,
        }
    }

    /// OffsetDelete: removes committed offsets of topics no member subscribes to.
    pub fn offset_delete(
        &mut self,
        request: OffsetDeleteRequest,
    ) -> CoordinatorResult<OffsetDeleteResponse> {
        let mut records = Vec::new();
        let group_id = request.group_id.as_str();
        let whole = match self.validate_group_id(group_id) {
            Err(e) => Some(e),
            Ok(()) if !self.group_exists(group_id) => Some(ApiErr {
                code: ErrorCode::GroupIdNotFound,
                message: format!("group {group_id} does not exist"),
            }),
            Ok(()) => None,
        };
        if let Some(e) = whole {
            return CoordinatorResult {
                records,
                response: OffsetDeleteResponse {
                    error_code: e.code as i32,
                    error_message: e.message,
                    topics: Vec::new(),
                },
            };
        }
        let mut topics = Vec::with_capacity(request.topics.len());
        for topic in &request.topics {
            // A classic group's subscriptions are opaque protocol bytes: while it has members,
            // every topic counts as subscribed.
            let subscribed = self.groups.is_subscribed(group_id, &topic.name)
                || self.classic.group(group_id).is_some_and(|g| !g.is_empty());
            let mut partitions = Vec::with_capacity(topic.partition_indexes.len());
            for &p in &topic.partition_indexes {
                if subscribed {
                    partitions.push(OffsetDeletePartitionResponse {
                        index: p,
                        error_code: ErrorCode::GroupSubscribedToTopic as i32,
                        error_message: format!(
                            "a member of group {group_id} still subscribes to topic {}: its offsets can be deleted once no member does",
                            topic.name
                        ),
                    });
                } else {
                    self.offsets
                        .delete_offset(group_id, &topic.name, p, &mut records);
                    partitions.push(OffsetDeletePartitionResponse {
                        index: p,
                        error_code: ErrorCode::None as i32,
                        error_message: String::new(),
                    });
                }
            }
            topics.push(OffsetDeleteTopicResponse {
                name: topic.name.clone(),
                partitions,
            });
        }
        if !self.group_exists(group_id) {
            self.empty_since.remove(group_id);
        }
        CoordinatorResult {
            records,
            response: OffsetDeleteResponse {
                error_code: ErrorCode::None as i32,
                error_message: String::new(),
                topics,
            },
        }
    }

    /// Fences members whose session timeout (no heartbeat) or rebalance timeout (partitions not
    /// revoked in time) passed by `now_ms`, and lets static members that left for a restart go
    /// for good once their session timeout passed.
    pub fn expire_members(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<Record> {
        let mut out = Vec::new();
        let mut touched = self
            .groups
            .expire_members(&self.config, image, now_ms, &mut out);
        touched.extend(self.classic.expire(&self.config, now_ms, &mut out));
        for g in touched {
            self.refresh_empty_since(&g, now_ms);
        }
        out
    }

    /// The earliest time [`expire_members`](Self::expire_members) has something to do, if any.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        match (
            self.groups.next_deadline_ms(),
            self.classic.next_deadline_ms(),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Topic metadata changed (topics created, deleted, partitions added): committed offsets of
    /// partitions that no longer exist are deleted (Kafka's `onPartitionsDeleted`), and groups
    /// subscribed to a changed topic (by name or regex) get a new group epoch and target
    /// assignment. `image` must be caught up with the cluster's metadata: what it lacks is taken
    /// as deleted.
    pub fn on_metadata_update(&mut self, image: &MetadataImage, now_ms: i64) -> Vec<Record> {
        self.catch_up(image, now_ms)
    }

    /// Expires offsets of groups without members `offsets.retention.minutes` after their commit
    /// (and after the group became empty), and of a consumer group's topics that no member
    /// subscribes to after their commit; deletes groups left with no members and no offsets.
    pub fn cleanup_expired_offsets(&mut self, now_ms: i64) -> Vec<Record> {
        let mut out = Vec::new();
        for id in self.known_group_ids() {
            if self.has_members(&id) {
                // A consumer group's offsets of topics none of its members subscribes to any
                // more expire as if the group were empty, from their commit (Kafka's new
                // coordinator). A classic group's subscriptions are opaque protocol bytes:
                // while it has members, every topic counts as subscribed.
                if self.classic.group(&id).is_none_or(|g| g.is_empty()) {
                    let unsubscribed: std::collections::BTreeSet<String> = self
                        .offsets
                        .topics_of(&id)
                        .into_iter()
                        .filter(|t| !self.groups.is_subscribed(&id, t))
                        .collect();
                    if !unsubscribed.is_empty() {
                        self.offsets.expire_topics(
                            &self.config,
                            &id,
                            &unsubscribed,
                            now_ms,
                            &mut out,
                        );
                    }
                }
                continue;
            }
            let empty_since = *self.empty_since.entry(id.clone()).or_insert(now_ms);
            self.offsets
                .expire(&self.config, &id, empty_since, now_ms, &mut out);
            if !self.offsets.has_offsets(&id) {
                if self.groups.group(&id).is_some() {
                    tracing::info!(group = %id, "deleting the empty group: no members and no offsets left");
                    self.groups.delete_group(&id, &mut out);
                }
                if self.classic.group(&id).is_some() {
                    tracing::info!(group = %id, "deleting the empty classic group: no members and no offsets left");
                    self.classic.delete(&id, &mut out);
                }
                self.empty_since.remove(&id);
            }
        }
        out
    }

    /// Number of groups (for metrics).
    pub fn group_count(&self) -> usize {
        self.known_group_ids().len()
    }
}
