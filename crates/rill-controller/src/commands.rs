//! What each controller operation means for the metadata: validation against the latest image
//! and the records that carry out the change. Pure functions, so the rules are testable alone.

use std::collections::BTreeSet;

use rill_protocol::proto::metadata_record::Record;
use rill_protocol::proto::{
    ConfigRecord, FenceBrokerRecord, IsrList, MetadataRecord, PartitionChangeRecord,
    PartitionRecord, ProducerIdsRecord, TopicRecord, UnfenceBrokerRecord,
};
use rill_protocol::{ApiError, ErrorCode};
use rill_storage::{LogConfig, TOPIC_CONFIGS};

use rill_protocol::metadata_image::{
    MetadataImage, PartitionInfo, PartitionReassignment, TopicInfo,
};

/// Producer ids reserved per `ProducerIdsRecord` (Kafka's `ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// What InitProducerId hands out: the records to commit first (a new block, or none) and the
/// producer id and epoch.
#[derive(Debug, PartialEq)]
pub struct ProducerIdGrant {
    /// Records that must commit before the id is answered.
    pub records: Vec<MetadataRecord>,
    /// The id to answer: a new one, or the producer's own when its epoch was bumped.
    pub producer_id: i64,
    /// 0 for a new id, the next epoch for a bump.
    pub producer_epoch: i16,
}

/// InitProducerId (KIP-98, KIP-360) for an idempotent producer: a new id with epoch 0, or, for a
/// producer that sends the id and epoch it has, the next epoch of that id (a new id once the
/// epoch is exhausted, as Kafka does). Transactions are not supported.
pub fn init_producer_id(
    latest: &MetadataImage,
    block: &mut crate::quorum_controller::ProducerIdBlock,
    transactional_id: Option<&str>,
    producer_id: Option<i64>,
    producer_epoch: Option<i32>,
) -> Result<ProducerIdGrant, ApiError> {
    if let Some(t) = transactional_id.filter(|t| !t.is_empty()) {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!(
                "transactions are not supported (transactional.id {t:?}); leave transactional.id unset for an idempotent producer"
            ),
        ));
    }
    match (producer_id, producer_epoch) {
        (None, None) => {}
        (Some(id), Some(epoch)) => {
            if id < 0 || id >= latest.next_producer_id_block_start {
                return Err(ApiError::new(
                    ErrorCode::InvalidProducerIdMapping,
                    format!(
                        "producer id {id} was never handed out by this cluster; ask for a new one (send no producer id)"
                    ),
                ));
            }
            if !(0..=i32::from(i16::MAX)).contains(&epoch) {
                return Err(ApiError::new(
                    ErrorCode::InvalidRequest,
                    format!("producer epoch {epoch} is outside 0..={}", i16::MAX),
                ));
            }
            // Kafka bumps until the epoch is exhausted, then hands out a new id.
            if epoch < i32::from(i16::MAX) - 1 {
                return Ok(ProducerIdGrant {
                    records: Vec::new(),
                    producer_id: id,
                    producer_epoch: (epoch + 1) as i16,
                });
            }
        }
        _ => {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                "producer_id and producer_epoch go together: send both to bump an epoch, or neither for a new producer id",
            ));
        }
    }
    // The block is usable only while `latest` ends where it does (its record was proposed and
    // not lost).
    if block.next < block.end && block.end == latest.next_producer_id_block_start {
        let id = block.next;
        block.next += 1;
        return Ok(ProducerIdGrant {
            records: Vec::new(),
            producer_id: id,
            producer_epoch: 0,
        });
    }
    let start = latest.next_producer_id_block_start;
    let end = start + PRODUCER_ID_BLOCK_SIZE;
    *block = crate::quorum_controller::ProducerIdBlock {
        next: start + 1,
        end,
    };
    Ok(ProducerIdGrant {
        records: vec![record(Record::ProducerIds(ProducerIdsRecord {
            broker_id: -1,
            broker_epoch: -1,
            next_producer_id_block_start: end,
        }))],
        producer_id: start,
        producer_epoch: 0,
    })
}

/// Wraps a record.
pub fn record(r: Record) -> MetadataRecord {
    MetadataRecord {
        offset: 0,
        record: Some(r),
    }
}

/// The group coordinators' internal topic. Groups are placed on its partitions by hash and
/// their records must never be deleted by time, so its partition count and compaction are
/// fixed: [`check_internal_topic_change`] refuses what would break them.
pub const CONSUMER_OFFSETS_TOPIC: &str = "__consumer_offsets";

/// Refuses deleting `__consumer_offsets`, adding partitions to it, and any `cleanup.policy`
/// for it without `compact` (`policy` is the new value, `None` when unchanged or removed).
pub fn check_internal_topic_change(
    name: &str,
    change: InternalTopicChange<'_>,
) -> Result<(), ApiError> {
    if name != CONSUMER_OFFSETS_TOPIC {
        return Ok(());
    }
    let why = match change {
        InternalTopicChange::Delete => {
            "it holds every consumer group's state and committed offsets; delete groups instead (rill group delete)".to_owned()
        }
        InternalTopicChange::AddPartitions => {
            "groups are placed on its partitions by hash, so a new partition count would lose every group's offsets".to_owned()
        }
        InternalTopicChange::CleanupPolicy(policy) if policy.is_some_and(|p| p.split(',').any(|p| p.trim() == "compact")) => {
            return Ok(());
        }
        InternalTopicChange::CleanupPolicy(policy) => format!(
            "its cleanup.policy must keep compact (got {}), or group records would expire",
            policy.unwrap_or("the default")
        ),
        InternalTopicChange::MaxMessageBytes => {
            "the group coordinators size its batches by the brokers' message.max.bytes; set that instead of a max.message.bytes override".to_owned()
        }
    };
    Err(ApiError::new(
        ErrorCode::InvalidRequest,
        format!("{CONSUMER_OFFSETS_TOPIC} is an internal topic: {why}"),
    ))
}

/// A change to a topic that [`check_internal_topic_change`] vets.
#[derive(Clone, Copy, Debug)]
pub enum InternalTopicChange<'a> {
    /// DeleteTopics.
    Delete,
    /// CreatePartitions.
    AddPartitions,
    /// A `cleanup.policy` set (Some) or removed (None), at creation or later.
    CleanupPolicy(Option<&'a str>),
    /// A `max.message.bytes` override, at creation or later: a smaller one would refuse the
    /// coordinators' batches, and reloading a partition would fail for ever.
    MaxMessageBytes,
}

/// Kafka's topic name rules.
pub fn validate_topic_name(name: &str) -> Result<(), ApiError> {
    let bad = |why: &str| {
        Err(ApiError::new(
            ErrorCode::InvalidTopicException,
            format!("invalid topic name {name:?}: {why}"),
        ))
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name == "." || name == ".." {
        return bad("\".\" and \"..\" are not allowed");
    }
    if name.len() > 249 {
        return bad("it is longer than 249 characters");
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '.' || *c == '_' || *c == '-'))
    {
        return bad(&format!(
            "{c:?} is not allowed; use ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    Ok(())
}

/// Checks one topic config entry: a name in [`TOPIC_CONFIGS`] and a value in its range.
/// `LogConfig::set` knows every name, the replication configs (`min.insync.replicas`,
/// `unclean.leader.election.enable`) included, and its message for an unknown name lists them
/// all.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), ApiError> {
    LogConfig::default()
        .set(name, value)
        .map_err(|e| ApiError::new(ErrorCode::InvalidConfig, e.to_string()))
}

/// Checks that `name` is a topic config (what removing an override needs: it has no value).
pub fn validate_topic_config_name(name: &str) -> Result<(), ApiError> {
    if TOPIC_CONFIGS.iter().any(|c| c.name == name) {
        return Ok(());
    }
    let known: Vec<&str> = TOPIC_CONFIGS.iter().map(|c| c.name).collect();
    Err(ApiError::new(
        ErrorCode::InvalidConfig,
        format!("unknown config {name:?}; known: {}", known.join(", ")),
    ))
}

/// Every topic config name with its default value, in [`TOPIC_CONFIGS`] order.
pub fn topic_config_defaults() -> Vec<(String, String)> {
    TOPIC_CONFIGS
        .iter()
        .map(|c| (c.name.to_owned(), c.default.to_owned()))
        .collect()
}

/// The value of a topic config, override or default.
pub fn topic_config(topic: &TopicInfo, name: &str) -> Option<String> {
    topic.configs.get(name).cloned().or_else(|| {
        TOPIC_CONFIGS
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.default.to_owned())
    })
}

/// Spreads `partitions` × `replication_factor` replicas over the live brokers, round-robin from
/// `start`, alternating racks when brokers have them (Kafka's assignment, simplified): leaders
/// rotate over brokers and no partition has two replicas on one broker.
pub fn assign_replicas(
    image: &MetadataImage,
    partitions: i32,
    replication_factor: i32,
    first_partition: i32,
    start: usize,
) -> Vec<Vec<i32>> {
    let brokers = rack_alternated(image);
    let n = brokers.len();
    (first_partition..first_partition + partitions)
        .map(|p| {
            let first = (start + p as usize) % n;
            // Followers are shifted by a per-round amount so load spreads beyond the next broker.
            let shift = 1 + (p as usize / n) % (n.max(2) - 1);
            let mut replicas = vec![brokers[first]];
            let mut j = 0;
            while replicas.len() < replication_factor as usize {
                let candidate = brokers[(first + shift + j) % n];
                if !replicas.contains(&candidate) {
                    replicas.push(candidate);
                }
                j += 1;
            }
            replicas
        })
        .collect()
}

fn rack_alternated(image: &MetadataImage) -> Vec<i32> {
    let live = image.live_brokers();
    let mut by_rack: std::collections::BTreeMap<String, Vec<i32>> =
        std::collections::BTreeMap::new();
    for b in &live {
        by_rack
            .entry(b.rack.clone().unwrap_or_default())
            .or_default()
            .push(b.id);
    }
    if by_rack.len() <= 1 {
        return live.iter().map(|b| b.id).collect();
    }
    let mut out = Vec::new();
    let mut i = 0;
    while out.len() < live.len() {
        for ids in by_rack.values() {
            if let Some(id) = ids.get(i) {
                out.push(*id);
            }
        }
        i += 1;
    }
    out
}

/// A topic to create, as asked.
#[derive(Clone, Copy, Debug)]
pub struct TopicRequest<'a> {
    /// Topic name, not yet validated (length, characters, `.`/`..`).
    pub name: &'a str,
    /// Partition count (the caller has already turned a request's -1 into `num.partitions`);
    /// 1..=`max.partitions.per.topic`.
    pub partitions: i32,
    /// Replicas per partition (-1 already turned into `default.replication.factor`); at most
    /// the live brokers.
    pub replication_factor: i32,
    /// Topic config overrides (name, value), validated against [`TOPIC_CONFIGS`]; a missing
    /// value is refused.
    pub configs: &'a [(String, Option<String>)],
}

/// Records creating a topic, after validating it against `image` and names already taken by this
/// request.
pub fn create_topic(
    image: &MetadataImage,
    taken: &BTreeSet<String>,
    request: &TopicRequest<'_>,
    start: usize,
    max_partitions: i32,
) -> Result<(Vec<MetadataRecord>, String), ApiError> {
    let TopicRequest {
        name,
        partitions: num_partitions,
        replication_factor,
        configs,
    } = *request;
    validate_topic_name(name)?;
    let policy = configs
        .iter()
        .find(|(k, _)| k == "cleanup.policy")
        .and_then(|(_, v)| v.as_deref());
    check_internal_topic_change(name, InternalTopicChange::CleanupPolicy(policy))?;
    if configs.iter().any(|(k, _)| k == "max.message.bytes") {
        check_internal_topic_change(name, InternalTopicChange::MaxMessageBytes)?;
    }
    if image.topics.contains_key(name) || taken.contains(name) {
        return Err(ApiError::new(
            ErrorCode::TopicAlreadyExists,
            format!("topic {name:?} already exists"),
        ));
    }
    if num_partitions < 1 {
        return Err(ApiError::new(
            ErrorCode::InvalidPartitions,
            format!("topic {name:?}: the partition count must be at least 1, got {num_partitions}"),
        ));
    }
    if num_partitions > max_partitions {
        return Err(ApiError::new(
            ErrorCode::InvalidPartitions,
            format!(
                "topic {name:?}: {num_partitions} partitions is more than max.partitions.per.topic = {max_partitions}"
            ),
        ));
    }
    let live = image.live_brokers().len() as i32;
    if replication_factor < 1 {
        return Err(ApiError::new(
            ErrorCode::InvalidReplicationFactor,
            format!(
                "topic {name:?}: the replication factor must be at least 1, got {replication_factor}"
            ),
        ));
    }
    if replication_factor > live {
        return Err(ApiError::new(
            ErrorCode::InvalidReplicationFactor,
            format!(
                "topic {name:?}: replication factor {replication_factor} is larger than the {live} available (unfenced) broker(s)"
            ),
        ));
    }
    for (k, v) in configs {
        let v = v.as_deref().ok_or_else(|| {
            ApiError::new(ErrorCode::InvalidConfig, format!("config {k} has no value"))
        })?;
        validate_topic_config(k, v)?;
    }
    let topic_id = uuid::Uuid::new_v4().to_string();
    let mut records = vec![record(Record::Topic(TopicRecord {
        name: name.to_owned(),
        topic_id: topic_id.clone(),
    }))];
    for (p, replicas) in assign_replicas(image, num_partitions, replication_factor, 0, start)
        .into_iter()
        .enumerate()
    {
        records.push(record(Record::Partition(PartitionRecord {
            topic_id: topic_id.clone(),
            partition: p as i32,
            leader: replicas[0],
            isr: replicas.clone(),
            replicas,
            leader_epoch: 0,
            partition_epoch: 0,
            ..Default::default()
        })));
    }
    for (k, v) in configs {
        // Stored as validated (trimmed): every reader sees the value the check accepted.
        records.push(record(Record::Config(ConfigRecord {
            topic: name.to_owned(),
            name: k.clone(),
            value: v.as_deref().map(|v| v.trim().to_owned()),
        })));
    }
    Ok((records, topic_id))
}

/// Records adding partitions to a topic, up to `count` in total.
pub fn create_partitions(
    image: &MetadataImage,
    name: &str,
    count: i32,
    start: usize,
    max_partitions: i32,
) -> Result<Vec<MetadataRecord>, ApiError> {
    check_internal_topic_change(name, InternalTopicChange::AddPartitions)?;
    if count > max_partitions {
        return Err(ApiError::new(
            ErrorCode::InvalidPartitions,
            format!(
                "topic {name:?}: {count} partitions is more than max.partitions.per.topic = {max_partitions}"
            ),
        ));
    }
    let topic = image.topics.get(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic {name:?} does not exist"),
        )
    })?;
    let current = topic.partitions.len() as i32;
    if count <= current {
        return Err(ApiError::new(
            ErrorCode::InvalidPartitions,
            format!(
                "topic {name:?} has {current} partitions; the new count {count} must be larger"
            ),
        ));
    }
    let rf = topic
        .partitions
        .first()
        .map_or(1, |p| p.replicas.len() as i32);
    let live = image.live_brokers().len() as i32;
    if rf > live {
        return Err(ApiError::new(
            ErrorCode::InvalidReplicationFactor,
            format!(
                "topic {name:?} needs {rf} replicas per partition but only {live} broker(s) are available"
            ),
        ));
    }
    Ok(assign_replicas(image, count - current, rf, current, start)
        .into_iter()
        .enumerate()
        .map(|(i, replicas)| {
            record(Record::Partition(PartitionRecord {
                topic_id: topic.id.clone(),
                partition: current + i as i32,
                leader: replicas[0],
                isr: replicas.clone(),
                replicas,
                leader_epoch: 0,
                partition_epoch: 0,
                ..Default::default()
            }))
        })
        .collect())
}

fn unclean_allowed(topic: &TopicInfo) -> bool {
    topic_config(topic, "unclean.leader.election.enable").is_some_and(|v| v.trim() == "true")
}

/// The partition change that takes `broker` out of leadership and the ISR of `p`, if any.
fn without_broker(
    image: &MetadataImage,
    topic: &TopicInfo,
    index: usize,
    p: &PartitionInfo,
    broker: i32,
) -> Option<PartitionChangeRecord> {
    if !p.isr.contains(&broker) && p.leader != broker {
        return None;
    }
    let live = |id: &i32| *id != broker && image.brokers.get(id).is_some_and(|b| !b.fenced);
    let mut isr: Vec<i32> = p.isr.iter().copied().filter(|id| *id != broker).collect();
    let mut leader = p.leader;
    if p.leader == broker || p.leader == -1 {
        leader = p
            .replicas
            .iter()
            .copied()
            .find(|r| isr.contains(r) && live(r))
            .unwrap_or(-1);
        if leader == -1 && unclean_allowed(topic) {
            // Unclean election: any live replica, accepting possible data loss.
            if let Some(r) = p.replicas.iter().copied().find(live) {
                leader = r;
                isr = vec![r];
            }
        }
    }
    if isr.is_empty() {
        // Keep the last in-sync replica recorded, so a later clean election can find it.
        isr = vec![broker];
    }
    Some(PartitionChangeRecord {
        topic_id: topic.id.clone(),
        partition: index as i32,
        isr: (isr != p.isr).then_some(IsrList { ids: isr }),
        leader: (leader != p.leader).then_some(leader),
        ..Default::default()
    })
}

/// Records fencing `broker`: the fence itself, then moving each of its leaderships to the next
/// in-sync replica (in replica order) and removing it from every ISR.
pub fn fence_broker(image: &MetadataImage, broker: i32) -> Vec<MetadataRecord> {
    let epoch = image.brokers.get(&broker).map_or(-1, |b| b.epoch);
    let mut out = vec![record(Record::FenceBroker(FenceBrokerRecord {
        broker_id: broker,
        broker_epoch: epoch,
    }))];
    out.extend(leadership_moves(image, broker));
    out
}

/// Partition changes that take `broker` out of every leadership and ISR.
pub fn leadership_moves(image: &MetadataImage, broker: i32) -> Vec<MetadataRecord> {
    let mut out = Vec::new();
    for topic in image.topics.values() {
        for (i, p) in topic.partitions.iter().enumerate() {
            if let Some(change) = without_broker(image, topic, i, p, broker) {
                out.push(record(Record::PartitionChange(change)));
            }
        }
    }
    out
}

/// Records unfencing `broker`, and electing it for offline partitions whose ISR names it —
/// or, where the topic allows unclean election and no ISR member is live, for those it is a
/// replica of (Kafka's `handleBrokerUnfenced`).
pub fn unfence_broker(image: &MetadataImage, broker: i32) -> Vec<MetadataRecord> {
    let epoch = image.brokers.get(&broker).map_or(-1, |b| b.epoch);
    let mut out = vec![record(Record::UnfenceBroker(UnfenceBrokerRecord {
        broker_id: broker,
        broker_epoch: epoch,
    }))];
    for topic in image.topics.values() {
        for (i, p) in topic.partitions.iter().enumerate() {
            if p.leader == -1 && p.isr.contains(&broker) {
                out.push(record(Record::PartitionChange(PartitionChangeRecord {
                    topic_id: topic.id.clone(),
                    partition: i as i32,
                    leader: Some(broker),
                    ..Default::default()
                })));
            }
        }
        if unclean_allowed(topic) {
            out.extend(unclean_elections(image, topic, Some(broker)));
        }
    }
    out
}

/// Unclean elections for `topic`'s offline partitions that no live ISR member can lead: the
/// first live replica (in replica order) leads, alone in the ISR, accepting the loss of what
/// only the old ISR had. `unfencing` counts as live (it is being unfenced in the same batch).
/// The caller checks that the topic allows it (or is about to).
pub fn unclean_elections(
    image: &MetadataImage,
    topic: &TopicInfo,
    unfencing: Option<i32>,
) -> Vec<MetadataRecord> {
    let live =
        |id: &i32| Some(*id) == unfencing || image.brokers.get(id).is_some_and(|b| !b.fenced);
    let mut out = Vec::new();
    for (i, p) in topic.partitions.iter().enumerate() {
        if p.leader != -1 || p.isr.iter().any(live) {
            continue;
        }
        if let Some(r) = p.replicas.iter().copied().find(live) {
            tracing::warn!(topic = %topic.name, partition = i, leader = r, isr = ?p.isr, "unclean leader election: records only the old ISR had are lost");
            out.push(record(Record::PartitionChange(PartitionChangeRecord {
                topic_id: topic.id.clone(),
                partition: i as i32,
                leader: Some(r),
                isr: Some(IsrList { ids: vec![r] }),
                ..Default::default()
            })));
        }
    }
    out
}

/// Partitions led by `broker`.
pub fn leaderships(image: &MetadataImage, broker: i32) -> usize {
    image
        .topics
        .values()
        .flat_map(|t| &t.partitions)
        .filter(|p| p.leader == broker)
        .count()
}

/// Cluster-wide dynamic broker configs (Kafka's `--entity-type brokers --entity-default`) the
/// controller accepts; brokers read them from `MetadataImage::cluster_configs`.
pub const CLUSTER_CONFIGS: &[&str] = &[
    "leader.replication.throttled.rate",
    "follower.replication.throttled.rate",
];

/// Checks one cluster-wide broker config: a known name and, for the replication throttles, a
/// non-negative integer in bytes/s (absent means unlimited, as Kafka's `Long.MAX_VALUE` default).
pub fn validate_cluster_config(name: &str, value: Option<&str>) -> Result<(), ApiError> {
    if !CLUSTER_CONFIGS.contains(&name) {
        return Err(ApiError::new(
            ErrorCode::InvalidConfig,
            format!(
                "unknown cluster-level broker config {name:?}; supported: {}",
                CLUSTER_CONFIGS.join(", ")
            ),
        ));
    }
    let Some(value) = value else { return Ok(()) };
    match value.trim().parse::<i64>() {
        Ok(n) if n > 0 => Ok(()),
        _ => Err(ApiError::new(
            ErrorCode::InvalidConfig,
            format!(
                "invalid config {name}={value:?}: must be a positive integer (bytes/s); delete it for no limit"
            ),
        )),
    }
}

fn is_live(image: &MetadataImage, broker: i32) -> bool {
    image.brokers.get(&broker).is_some_and(|b| !b.fenced)
}

fn find_partition<'a>(
    image: &'a MetadataImage,
    topic: &str,
    index: i32,
) -> Result<(&'a TopicInfo, &'a PartitionInfo), ApiError> {
    let t = image.topics.get(topic).ok_or_else(|| {
        ApiError::new(
            ErrorCode::UnknownTopicOrPartition,
            format!("topic {topic:?} does not exist"),
        )
    })?;
    let p = usize::try_from(index)
        .ok()
        .and_then(|i| t.partitions.get(i))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::UnknownTopicOrPartition,
                format!(
                    "partition {topic}-{index} does not exist ({topic} has {} partition(s))",
                    t.partitions.len()
                ),
            )
        })?;
    Ok((t, p))
}

/// The state a reassignment ends in once every target replica is in the ISR `isr` (Kafka's
/// `maybeCompleteReassignment`: not only the adding ones — dropping the removed replicas while
/// a kept one lags would leave fewer in-sync copies than before): replicas = the target (in
/// target order), ISR = ISR ∩ target, and a new leader from the target's live in-sync replicas
/// if the leader is being removed. `None` while it cannot complete yet.
///
/// Returns (replicas, isr, new leader if it changes).
pub fn completed_reassignment(
    image: &MetadataImage,
    replicas: &[i32],
    isr: &[i32],
    leader: i32,
    r: &PartitionReassignment,
) -> Option<(Vec<i32>, Vec<i32>, Option<i32>)> {
    let target = r.target(replicas);
    if !target.iter().all(|t| isr.contains(t)) {
        return None;
    }
    let new_isr: Vec<i32> = isr.iter().copied().filter(|i| target.contains(i)).collect();
    if new_isr.is_empty() {
        return None;
    }
    let new_leader = if target.contains(&leader) {
        None
    } else {
        Some(
            target
                .iter()
                .copied()
                .find(|t| new_isr.contains(t) && is_live(image, *t))?,
        )
    };
    Some((target, new_isr, new_leader))
}

/// Fills `change` (a change of partition `p` that leaves ISR `isr`) with the completion of the
/// reassignment `r` when that ISR allows it.
fn complete_into(
    image: &MetadataImage,
    p: &PartitionInfo,
    replicas: &[i32],
    isr: &[i32],
    r: &PartitionReassignment,
    change: &mut PartitionChangeRecord,
) -> bool {
    let Some((target, new_isr, leader)) = completed_reassignment(image, replicas, isr, p.leader, r)
    else {
        return false;
    };
    change.replicas = (target != p.replicas).then_some(IsrList { ids: target });
    change.isr = (new_isr != p.isr).then_some(IsrList { ids: new_isr });
    change.leader = leader;
    change.adding_replicas = Some(IsrList::default());
    change.removing_replicas = Some(IsrList::default());
    true
}

/// After an AlterPartition set the ISR of `topic`-`index` to `new_isr` (in `change`): completes
/// the partition's reassignment in the same record when every adding replica is now in the ISR.
pub fn complete_reassignment_on_isr_change(
    image: &MetadataImage,
    topic: &TopicInfo,
    index: i32,
    new_isr: &[i32],
    change: &mut PartitionChangeRecord,
) -> bool {
    let Some(r) = image.reassignments.get(&(topic.id.clone(), index)) else {
        return false;
    };
    let Some(p) = usize::try_from(index)
        .ok()
        .and_then(|i| topic.partitions.get(i))
    else {
        return false;
    };
    complete_into(image, p, &p.replicas, new_isr, r, change)
}

/// AlterPartitionReassignments for one partition (KIP-455): `Some(target)` starts (or replaces)
/// a reassignment to `target`, `None` cancels the one in progress. Returns the change to record,
/// or `None` when there is nothing to do (the replicas already are the target).
///
/// As Kafka, the replica list becomes target ++ (current − target), so the target (and its
/// order) is the list without the removing replicas; `adding` = target − current, `removing` =
/// current − target. A reassignment replacing one in progress starts from the full current list.
/// A cancel drops the adding replicas (the original set, in the merged order). When every
/// target replica is already in the ISR, it completes in the same record.
pub fn reassign_partition(
    image: &MetadataImage,
    topic: &str,
    index: i32,
    target: Option<&[i32]>,
) -> Result<Option<PartitionChangeRecord>, ApiError> {
    let (t, p) = find_partition(image, topic, index)?;
    let ongoing = image.reassignments.get(&(t.id.clone(), index));
    let mut change = PartitionChangeRecord {
        topic_id: t.id.clone(),
        partition: index,
        ..Default::default()
    };
    let Some(target) = target else {
        // Cancel: back to the replicas without the ones being added.
        let Some(r) = ongoing else {
            return Err(ApiError::new(
                ErrorCode::InvalidRequest,
                format!("no reassignment of {topic}-{index} is in progress; nothing to cancel"),
            ));
        };
        let replicas: Vec<i32> = p
            .replicas
            .iter()
            .copied()
            .filter(|x| !r.adding_replicas.contains(x))
            .collect();
        let isr: Vec<i32> = p
            .isr
            .iter()
            .copied()
            .filter(|x| replicas.contains(x))
            .collect();
        if !replicas.contains(&p.leader) && p.leader != -1 {
            let leader = replicas
                .iter()
                .copied()
                .find(|x| isr.contains(x) && is_live(image, *x))
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::LeaderNotAvailable,
                        format!(
                            "cannot cancel the reassignment of {topic}-{index}: its leader {} is a replica being added and none of the original replicas {replicas:?} is live and in the ISR {:?}",
                            p.leader, p.isr
                        ),
                    )
                })?;
            change.leader = Some(leader);
        }
        if isr.is_empty() {
            return Err(ApiError::new(
                ErrorCode::LeaderNotAvailable,
                format!(
                    "cannot cancel the reassignment of {topic}-{index}: none of the original replicas {replicas:?} is in the ISR {:?}",
                    p.isr
                ),
            ));
        }
        change.isr = (isr != p.isr).then_some(IsrList { ids: isr });
        change.replicas = Some(IsrList { ids: replicas });
        change.adding_replicas = Some(IsrList::default());
        change.removing_replicas = Some(IsrList::default());
        return Ok(Some(change));
    };
    let invalid = |why: String| {
        Err(ApiError::new(
            ErrorCode::InvalidReplicaAssignment,
            format!("invalid replica list {target:?} for {topic}-{index}: {why}"),
        ))
    };
    if target.is_empty() {
        return invalid("it is empty; give at least one broker id".into());
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = target.iter().find(|id| !seen.insert(**id)) {
        return invalid(format!("broker {dup} appears more than once"));
    }
    let unknown: Vec<i32> = target
        .iter()
        .copied()
        .filter(|id| !image.brokers.contains_key(id))
        .collect();
    if !unknown.is_empty() {
        let known: Vec<i32> = image.brokers.keys().copied().collect();
        return invalid(format!(
            "broker(s) {unknown:?} are not registered (registered brokers: {known:?})"
        ));
    }
    if ongoing.is_none() && target == p.replicas.as_slice() {
        return Ok(None);
    }
    let current = &p.replicas;
    let mut replicas = target.to_vec();
    replicas.extend(current.iter().copied().filter(|x| !target.contains(x)));
    let r = PartitionReassignment {
        adding_replicas: target
            .iter()
            .copied()
            .filter(|x| !current.contains(x))
            .collect(),
        removing_replicas: current
            .iter()
            .copied()
            .filter(|x| !target.contains(x))
            .collect(),
    };
    if !complete_into(image, p, &replicas, &p.isr, &r, &mut change) {
        change.replicas = (replicas != p.replicas).then_some(IsrList { ids: replicas });
        change.adding_replicas = Some(IsrList {
            ids: r.adding_replicas,
        });
        change.removing_replicas = Some(IsrList {
            ids: r.removing_replicas,
        });
    }
    Ok(Some(change))
}

/// Preferred-leader election for one partition: the change that hands leadership to its first
/// replica, `Ok(None)` when that replica already leads (Kafka's ELECTION_NOT_NEEDED), or
/// LEADER_NOT_AVAILABLE when it is fenced or not in the ISR.
pub fn preferred_leader_election(
    image: &MetadataImage,
    topic: &str,
    index: i32,
) -> Result<Option<PartitionChangeRecord>, ApiError> {
    let (t, p) = find_partition(image, topic, index)?;
    let Some(&preferred) = p.replicas.first() else {
        return Err(ApiError::new(
            ErrorCode::LeaderNotAvailable,
            format!("{topic}-{index} has no replicas"),
        ));
    };
    if p.leader == preferred {
        return Ok(None);
    }
    if !is_live(image, preferred) {
        return Err(ApiError::new(
            ErrorCode::LeaderNotAvailable,
            format!(
                "the preferred leader {preferred} of {topic}-{index} is fenced or not registered"
            ),
        ));
    }
    if !p.isr.contains(&preferred) {
        return Err(ApiError::new(
            ErrorCode::LeaderNotAvailable,
            format!(
                "the preferred leader {preferred} of {topic}-{index} is not in the ISR {:?} yet",
                p.isr
            ),
        ));
    }
    Ok(Some(PartitionChangeRecord {
        topic_id: t.id.clone(),
        partition: index,
        leader: Some(preferred),
        ..Default::default()
    }))
}

/// Kafka's automatic leader rebalance (`auto.leader.rebalance.enable`): for every broker, the
/// imbalance ratio is the share of the partitions it is the preferred replica of (first in the
/// replica list) that some other broker leads. For each broker whose ratio exceeds
/// `percentage`%, leadership goes back to it on those partitions where it is live and in the
/// ISR. Partitions being reassigned are left alone, as Kafka does.
pub fn auto_leader_rebalance(image: &MetadataImage, percentage: u32) -> Vec<MetadataRecord> {
    use std::collections::BTreeMap;
    // preferred broker → (partitions it is preferred for, those it does not lead)
    let mut counts: BTreeMap<i32, (u64, u64)> = BTreeMap::new();
    for t in image.topics.values() {
        for p in &t.partitions {
            if let Some(&preferred) = p.replicas.first() {
                let c = counts.entry(preferred).or_default();
                c.0 += 1;
                if p.leader != preferred {
                    c.1 += 1;
                }
            }
        }
    }
    let imbalanced: BTreeSet<i32> = counts
        .iter()
        .filter(|(_, (total, not_led))| not_led * 100 > u64::from(percentage) * total)
        .map(|(b, _)| *b)
        .collect();
    let mut out = Vec::new();
    for t in image.topics.values() {
        for (i, p) in t.partitions.iter().enumerate() {
            let Some(&preferred) = p.replicas.first() else {
                continue;
            };
            if !imbalanced.contains(&preferred)
                || image.reassignments.contains_key(&(t.id.clone(), i as i32))
            {
                continue;
            }
            if let Ok(Some(change)) = preferred_leader_election(image, &t.name, i as i32) {
                out.push(record(Record::PartitionChange(change)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_protocol::proto::RegisterBrokerRecord;

    /// A value is stored as validated (trimmed): " 2" must not pass the check and then fail
    /// every reader's parse (min.insync.replicas silently 1).
    #[test]
    fn topic_config_values_are_stored_trimmed() {
        let image = image_with_brokers(1);
        let (records, _) = create_topic(
            &image,
            &BTreeSet::new(),
            &TopicRequest {
                name: "t",
                partitions: 1,
                replication_factor: 1,
                configs: &[
                    ("min.insync.replicas".into(), Some(" 2".into())),
                    (
                        "unclean.leader.election.enable".into(),
                        Some("true ".into()),
                    ),
                ],
            },
            0,
            100_000,
        )
        .unwrap();
        let mut image = image;
        for mut r in records {
            image.append(&mut r);
        }
        let t = &image.topics["t"];
        assert_eq!(t.configs["min.insync.replicas"], "2");
        assert_eq!(t.configs["unclean.leader.election.enable"], "true");
        assert!(unclean_allowed(t));
        assert!(validate_cluster_config("leader.replication.throttled.rate", Some("0")).is_err());
    }

    #[test]
    fn topic_configs_come_from_the_one_table() {
        // An unknown name (set or removed) is refused with every accepted name listed, the
        // replication configs included.
        for e in [
            validate_topic_config("retention.hours", "1").unwrap_err(),
            validate_topic_config_name("retention.hours").unwrap_err(),
        ] {
            assert_eq!(e.code, ErrorCode::InvalidConfig);
            assert!(e.message.contains("retention.hours"), "{}", e.message);
            for c in TOPIC_CONFIGS {
                assert!(
                    e.message.contains(c.name),
                    "{} missing: {}",
                    c.name,
                    e.message
                );
            }
        }
        // Every name in the table is accepted with its default, and has it as its default.
        for c in TOPIC_CONFIGS {
            validate_topic_config(c.name, c.default).unwrap();
            validate_topic_config_name(c.name).unwrap();
        }
        let defaults = topic_config_defaults();
        assert_eq!(defaults.len(), TOPIC_CONFIGS.len());
        assert!(defaults.contains(&("min.insync.replicas".into(), "1".into())));
        assert!(defaults.contains(&("unclean.leader.election.enable".into(), "false".into())));
        // Ranges apply to the replication configs too.
        for (name, value) in [
            ("min.insync.replicas", "0"),
            ("min.insync.replicas", "two"),
            ("unclean.leader.election.enable", "yes"),
            ("retention.ms", "soon"),
        ] {
            let e = validate_topic_config(name, value).unwrap_err();
            assert_eq!(e.code, ErrorCode::InvalidConfig, "{name}={value}");
            assert!(e.message.contains(name), "{}", e.message);
        }
        validate_topic_config("min.insync.replicas", "2").unwrap();
        validate_topic_config("unclean.leader.election.enable", "true").unwrap();
    }

    #[test]
    fn producer_ids_come_from_blocks_reserved_in_the_log() {
        use crate::quorum_controller::ProducerIdBlock;
        let mut latest = MetadataImage::default();
        let mut block = ProducerIdBlock::default();
        let grant = |latest: &mut MetadataImage, block: &mut ProducerIdBlock| {
            let g = init_producer_id(latest, block, None, None, None).unwrap();
            for mut r in g.records.clone() {
                latest.append(&mut r);
            }
            g
        };
        let first = grant(&mut latest, &mut block);
        assert_eq!((first.producer_id, first.records.len()), (0, 1));
        assert_eq!(latest.next_producer_id_block_start, PRODUCER_ID_BLOCK_SIZE);
        let second = grant(&mut latest, &mut block);
        assert_eq!((second.producer_id, second.records.len()), (1, 0));
        // A new leader (empty block) starts above every reserved id.
        let mut fresh = ProducerIdBlock::default();
        let third = grant(&mut latest, &mut fresh);
        assert_eq!(third.producer_id, PRODUCER_ID_BLOCK_SIZE);
        // A reservation that never reached the log is not used.
        let mut lost = ProducerIdBlock::default();
        let g = init_producer_id(&latest, &mut lost, None, None, None).unwrap();
        assert_eq!(g.producer_id, 2 * PRODUCER_ID_BLOCK_SIZE);
        let mut other = latest.clone();
        other.next_producer_id_block_start = 5 * PRODUCER_ID_BLOCK_SIZE;
        let g = init_producer_id(&other, &mut lost, None, None, None).unwrap();
        assert_eq!(g.producer_id, 5 * PRODUCER_ID_BLOCK_SIZE);
        // Bumps, exhausted epochs, bad ids, transactions.
        let b = init_producer_id(&latest, &mut block, Some(""), Some(1), Some(3)).unwrap();
        assert_eq!(
            (b.producer_id, b.producer_epoch, b.records.len()),
            (1, 4, 0)
        );
        let b = init_producer_id(
            &latest,
            &mut block,
            None,
            Some(1),
            Some(i32::from(i16::MAX) - 1),
        )
        .unwrap();
        assert_ne!(b.producer_id, 1);
        assert_eq!(b.producer_epoch, 0);
        let e = init_producer_id(&latest, &mut block, None, Some(1 << 40), Some(0)).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidProducerIdMapping);
        let e = init_producer_id(&latest, &mut block, Some("tx"), None, None).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
        assert!(e.message.contains("transactions are not supported"), "{e}");
        let e = init_producer_id(&latest, &mut block, None, Some(1), None).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidRequest);
    }

    fn image_with_brokers(n: i32) -> MetadataImage {
        let mut image = MetadataImage::default();
        for id in 1..=n {
            image.append(&mut record(Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: id,
                ..Default::default()
            })));
        }
        image
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(validate_topic_name("orders.v1_eu-west").is_ok());
        for bad in ["", ".", "..", "a/b", "spaces here", "ü"] {
            assert_eq!(
                validate_topic_name(bad).unwrap_err().code,
                ErrorCode::InvalidTopicException,
                "{bad:?}"
            );
        }
        assert!(validate_topic_name(&"a".repeat(249)).is_ok());
        assert!(validate_topic_name(&"a".repeat(250)).is_err());
    }

    #[test]
    fn replicas_spread_and_never_repeat() {
        let image = image_with_brokers(3);
        let a = assign_replicas(&image, 6, 3, 0, 0);
        for r in &a {
            let set: BTreeSet<_> = r.iter().collect();
            assert_eq!(set.len(), 3);
        }
        let leaders: Vec<i32> = a.iter().map(|r| r[0]).collect();
        assert_eq!(leaders, [1, 2, 3, 1, 2, 3]);
    }

    #[test]
    fn create_topic_rejects_bad_requests_precisely() {
        let image = image_with_brokers(2);
        let taken = BTreeSet::new();
        let err = |name: &str, p, rf, cfg: &[(String, Option<String>)]| {
            create_topic(
                &image,
                &taken,
                &TopicRequest {
                    name,
                    partitions: p,
                    replication_factor: rf,
                    configs: cfg,
                },
                0,
                100_000,
            )
            .unwrap_err()
            .code
        };
        assert_eq!(err("t", 0, 1, &[]), ErrorCode::InvalidPartitions);
        assert_eq!(err("t", 1, 3, &[]), ErrorCode::InvalidReplicationFactor);
        assert_eq!(
            err("t", 1, 1, &[("retention.hours".into(), Some("1".into()))]),
            ErrorCode::InvalidConfig
        );
        assert_eq!(
            err("t", 1, 1, &[("retention.ms".into(), Some("soon".into()))]),
            ErrorCode::InvalidConfig
        );
        assert_eq!(err("bad name", 1, 1, &[]), ErrorCode::InvalidTopicException);
        // The internal topic exists only compacted, keeps its partition count, stays, and
        // takes no max.message.bytes override.
        assert_eq!(
            err(CONSUMER_OFFSETS_TOPIC, 1, 1, &[]),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            err(
                CONSUMER_OFFSETS_TOPIC,
                1,
                1,
                &[
                    ("cleanup.policy".into(), Some("compact".into())),
                    ("max.message.bytes".into(), Some("100000".into()))
                ]
            ),
            ErrorCode::InvalidRequest
        );
        assert_eq!(
            err(
                CONSUMER_OFFSETS_TOPIC,
                1,
                1,
                &[("cleanup.policy".into(), Some("delete".into()))]
            ),
            ErrorCode::InvalidRequest
        );
        for change in [
            InternalTopicChange::Delete,
            InternalTopicChange::AddPartitions,
            InternalTopicChange::CleanupPolicy(None),
            InternalTopicChange::CleanupPolicy(Some("delete")),
            InternalTopicChange::MaxMessageBytes,
        ] {
            let e = check_internal_topic_change(CONSUMER_OFFSETS_TOPIC, change).unwrap_err();
            assert!(e.message.contains("internal topic"), "{}", e.message);
            check_internal_topic_change("t", change).unwrap();
        }
        check_internal_topic_change(
            CONSUMER_OFFSETS_TOPIC,
            InternalTopicChange::CleanupPolicy(Some("compact,delete")),
        )
        .unwrap();
        create_topic(
            &image,
            &taken,
            &TopicRequest {
                name: CONSUMER_OFFSETS_TOPIC,
                partitions: 3,
                replication_factor: 1,
                configs: &[("cleanup.policy".into(), Some("compact".into()))],
            },
            0,
            100_000,
        )
        .unwrap();
        let (records, _) = create_topic(
            &image,
            &taken,
            &TopicRequest {
                name: "t",
                partitions: 4,
                replication_factor: 2,
                configs: &[("cleanup.policy".into(), Some("compact".into()))],
            },
            0,
            100_000,
        )
        .unwrap();
        assert_eq!(records.len(), 1 + 4 + 1);
    }

    #[test]
    fn fencing_moves_leadership_to_the_next_isr_member() {
        let mut image = image_with_brokers(3);
        let (records, _) = create_topic(
            &image,
            &BTreeSet::new(),
            &TopicRequest {
                name: "t",
                partitions: 3,
                replication_factor: 3,
                configs: &[],
            },
            0,
            100_000,
        )
        .unwrap();
        for mut r in records {
            image.append(&mut r);
        }
        let led_by_1 = leaderships(&image, 1);
        assert_eq!(led_by_1, 1);
        for mut r in fence_broker(&image, 1) {
            image.append(&mut r);
        }
        assert_eq!(leaderships(&image, 1), 0);
        for p in &image.topics["t"].partitions {
            assert!(!p.isr.contains(&1));
            assert_ne!(p.leader, -1);
        }
        // Fence the rest: the last ISR member stays recorded, the partition goes offline.
        for b in [2, 3] {
            for mut r in fence_broker(&image, b) {
                image.append(&mut r);
            }
        }
        for p in &image.topics["t"].partitions {
            assert_eq!(p.leader, -1);
            assert_eq!(p.isr.len(), 1);
        }
        // Unfencing the recorded ISR member brings the partition back.
        let last = image.topics["t"].partitions[0].isr[0];
        for mut r in unfence_broker(&image, last) {
            image.append(&mut r);
        }
        assert_eq!(image.topics["t"].partitions[0].leader, last);
    }

    fn topic_on(image: &mut MetadataImage, name: &str, partitions: i32, rf: i32) {
        let (records, _) = create_topic(
            image,
            &BTreeSet::new(),
            &TopicRequest {
                name,
                partitions,
                replication_factor: rf,
                configs: &[],
            },
            0,
            100_000,
        )
        .unwrap();
        for mut r in records {
            image.append(&mut r);
        }
    }

    fn apply(image: &mut MetadataImage, change: PartitionChangeRecord) {
        image.append(&mut record(Record::PartitionChange(change)));
    }

    /// Sets the ISR as the partition leader's AlterPartition would, through `alter`'s rules.
    fn expand_isr(image: &mut MetadataImage, topic: &str, index: i32, isr: Vec<i32>) {
        let t = image.topics[topic].clone();
        let mut change = PartitionChangeRecord {
            topic_id: t.id.clone(),
            partition: index,
            isr: Some(IsrList { ids: isr.clone() }),
            ..Default::default()
        };
        complete_reassignment_on_isr_change(image, &t, index, &isr, &mut change);
        apply(image, change);
    }

    #[test]
    fn reassignment_adds_first_then_completes_when_the_adding_replicas_are_in_sync() {
        let mut image = image_with_brokers(4);
        topic_on(&mut image, "t", 1, 2);
        let before = image.topics["t"].partitions[0].clone();
        assert_eq!(before.replicas, [1, 2]);
        let change = reassign_partition(&image, "t", 0, Some(&[3, 2]))
            .unwrap()
            .unwrap();
        apply(&mut image, change);
        let p = image.topics["t"].partitions[0].clone();
        assert_eq!(p.replicas, [3, 2, 1], "target first, then the rest");
        assert_eq!(p.isr, [1, 2]);
        assert_eq!(p.leader, 1);
        let r = image.reassignment("t", 0).unwrap();
        assert_eq!(
            (r.adding_replicas.clone(), r.removing_replicas.clone()),
            (vec![3], vec![1])
        );
        // The leader's ISR expansion brings 3 in: the reassignment completes, the leader (1)
        // is removed, so leadership moves to the first in-sync target replica.
        expand_isr(&mut image, "t", 0, vec![1, 2, 3]);
        let p = image.topics["t"].partitions[0].clone();
        assert_eq!(p.replicas, [3, 2], "target order");
        assert_eq!(p.isr, [2, 3]);
        assert_eq!(p.leader, 3);
        assert_eq!(p.leader_epoch, before.leader_epoch + 1);
        assert_eq!(image.reassignment("t", 0), None);
    }

    /// Kafka's `maybeCompleteReassignment`: every target replica must be in sync, not only
    /// the adding ones — dropping two in-sync replicas while a kept one lags would leave one
    /// copy.
    #[test]
    fn reassignment_waits_for_every_target_replica_to_be_in_sync() {
        let mut image = image_with_brokers(4);
        topic_on(&mut image, "t", 1, 3);
        expand_isr(&mut image, "t", 0, vec![1, 2]);
        let p = image.topics["t"].partitions[0].clone();
        assert_eq!(
            (p.replicas.clone(), p.isr.clone()),
            (vec![1, 2, 3], vec![1, 2])
        );
        let change = reassign_partition(&image, "t", 0, Some(&[3, 4]))
            .unwrap()
            .unwrap();
        apply(&mut image, change);
        // 4 joins, 3 still lags: still in progress, nothing removed.
        expand_isr(&mut image, "t", 0, vec![1, 2, 4]);
        let p = image.topics["t"].partitions[0].clone();
        assert_eq!(p.replicas, [3, 4, 1, 2]);
        assert_eq!(p.isr, [1, 2, 4]);
        assert!(image.reassignment("t", 0).is_some(), "in progress");
        // 3 catches up: complete.
        expand_isr(&mut image, "t", 0, vec![1, 2, 4, 3]);
        let p = image.topics["t"].partitions[0].clone();
        assert_eq!(p.replicas, [3, 4]);
        assert_eq!(p.isr, [4, 3]);
        assert_eq!(image.reassignment("t", 0), None);
        // Nothing to add, but a kept replica lags: not complete at once either.
        let mut image = image_with_brokers(3);
        topic_on(&mut image, "u", 1, 3);
        expand_isr(&mut image, "u", 0, vec![1, 3]);
        let change = reassign_partition(&image, "u", 0, Some(&[1, 2]))
            .unwrap()
            .unwrap();
        apply(&mut image, change);
        let p = image.topics["u"].partitions[0].clone();
        assert_eq!(
            (p.replicas.clone(), p.isr.clone()),
            (vec![1, 2, 3], vec![1, 3])
        );
        assert!(image.reassignment("u", 0).is_some(), "waits for 2");
        expand_isr(&mut image, "u", 0, vec![1, 3, 2]);
        let p = image.topics["u"].partitions[0].clone();
        assert_eq!(
            (p.replicas.clone(), p.isr.clone()),
            (vec![1, 2], vec![1, 2])
        );
        assert_eq!(image.reassignment("u", 0), None);
    }

    #[test]
    fn reassignment_completes_at_once_when_nothing_needs_to_catch_up() {
        let mut image = image_with_brokers(3);
        topic_on(&mut image, "t", 1, 3);
        // Lower the replication factor: nothing to add, so it completes in one record.
        let change = reassign_partition(&image, "t", 0, Some(&[2, 3]))
            .unwrap()
            .unwrap();
        apply(&mut image, change);
        let p = image.topics["t"].partitions[0].clone();
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![2, 3], vec![2, 3], 2)
        );
        assert_eq!(image.reassignment("t", 0), None);
        // The same list again: nothing to do.
        assert_eq!(
            reassign_partition(&image, "t", 0, Some(&[2, 3])).unwrap(),
            None
        );
        // A new order of the same set completes at once too (the leader stays).
        let change = reassign_partition(&image, "t", 0, Some(&[3, 2]))
            .unwrap()
            .unwrap();
        apply(&mut image, change);
        let p = image.topics["t"].partitions[0].clone();
        assert_eq!((p.replicas.clone(), p.leader), (vec![3, 2], 2));
    }

    #[test]
    fn reassignment_can_be_cancelled_and_bad_requests_are_refused() {
        let mut image = image_with_brokers(4);
        topic_on(&mut image, "t", 1, 2);
        let code = |image: &MetadataImage, topic: &str, index: i32, target: Option<&[i32]>| {
            reassign_partition(image, topic, index, target)
                .unwrap_err()
                .code
        };
        assert_eq!(
            code(&image, "nosuch", 0, Some(&[1])),
            ErrorCode::UnknownTopicOrPartition
        );
        assert_eq!(
            code(&image, "t", 1, Some(&[1])),
            ErrorCode::UnknownTopicOrPartition
        );
        assert_eq!(
            code(&image, "t", -1, Some(&[1])),
            ErrorCode::UnknownTopicOrPartition
        );
        assert_eq!(
            code(&image, "t", 0, Some(&[])),
            ErrorCode::InvalidReplicaAssignment
        );
        assert_eq!(
            code(&image, "t", 0, Some(&[1, 1])),
            ErrorCode::InvalidReplicaAssignment
        );
        let e = reassign_partition(&image, "t", 0, Some(&[1, 9])).unwrap_err();
        assert_eq!(e.code, ErrorCode::InvalidReplicaAssignment);
        assert!(
            e.message.contains("[9]") && e.message.contains("not registered"),
            "{e}"
        );
        assert_eq!(
            code(&image, "t", 0, None),
            ErrorCode::InvalidRequest,
            "nothing to cancel"
        );
        // Start, then cancel: the original replicas, nothing in progress.
        let change = reassign_partition(&image, "t", 0, Some(&[3, 4]))
            .unwrap()
            .unwrap();
        apply(&mut image, change);
        assert_eq!(image.topics["t"].partitions[0].replicas, [3, 4, 1, 2]);
        let change = reassign_partition(&image, "t", 0, None).unwrap().unwrap();
        apply(&mut image, change);
        let p = image.topics["t"].partitions[0].clone();
        assert_eq!(
            (p.replicas.clone(), p.isr.clone(), p.leader),
            (vec![1, 2], vec![1, 2], 1)
        );
        assert_eq!(image.reassignment("t", 0), None);
    }

    #[test]
    fn preferred_leaders_come_back_when_live_and_in_sync() {
        let mut image = image_with_brokers(3);
        topic_on(&mut image, "t", 3, 3);
        let preferred: Vec<i32> = image.topics["t"]
            .partitions
            .iter()
            .map(|p| p.replicas[0])
            .collect();
        assert!(auto_leader_rebalance(&image, 10).is_empty(), "balanced");
        for mut r in fence_broker(&image, 1) {
            image.append(&mut r);
        }
        assert_eq!(leaderships(&image, 1), 0);
        // Fenced: no election.
        assert!(auto_leader_rebalance(&image, 10).is_empty());
        let p1 = preferred.iter().position(|b| *b == 1).unwrap() as i32;
        assert_eq!(
            preferred_leader_election(&image, "t", p1).unwrap_err().code,
            ErrorCode::LeaderNotAvailable
        );
        for mut r in unfence_broker(&image, 1) {
            image.append(&mut r);
        }
        // Live but not in the ISR yet: still no election.
        assert!(auto_leader_rebalance(&image, 10).is_empty());
        let mut isr = image.topics["t"].partitions[p1 as usize].isr.clone();
        isr.push(1);
        expand_isr(&mut image, "t", p1, isr);
        // Broker 1 leads none of its 1 preferred partitions: 100% > 10%.
        let epoch = image.topics["t"].partitions[p1 as usize].leader_epoch;
        let records = auto_leader_rebalance(&image, 10);
        assert_eq!(records.len(), 1);
        for mut r in records {
            image.append(&mut r);
        }
        let p = &image.topics["t"].partitions[p1 as usize];
        assert_eq!((p.leader, p.leader_epoch), (1, epoch + 1));
        assert_eq!(
            preferred_leader_election(&image, "t", p1).unwrap(),
            None,
            "not needed"
        );
        // 100% allows any imbalance.
        let mut other = image.clone();
        for mut r in fence_broker(&other, 2) {
            other.append(&mut r);
        }
        for mut r in unfence_broker(&other, 2) {
            other.append(&mut r);
        }
        let p2 = preferred.iter().position(|b| *b == 2).unwrap() as i32;
        let mut isr = other.topics["t"].partitions[p2 as usize].isr.clone();
        isr.push(2);
        expand_isr(&mut other, "t", p2, isr);
        assert!(auto_leader_rebalance(&other, 100).is_empty());
        assert_eq!(auto_leader_rebalance(&other, 10).len(), 1);
    }

    #[test]
    fn cluster_configs_are_the_replication_throttles() {
        for name in CLUSTER_CONFIGS {
            assert!(validate_cluster_config(name, Some("1048576")).is_ok());
            assert!(
                validate_cluster_config(name, Some("0")).is_err(),
                "0 is refused: no limit is a deleted config"
            );
            assert!(validate_cluster_config(name, None).is_ok());
            for bad in ["-1", "1.5", "fast", ""] {
                assert_eq!(
                    validate_cluster_config(name, Some(bad)).unwrap_err().code,
                    ErrorCode::InvalidConfig,
                    "{bad:?}"
                );
            }
        }
        let e = validate_cluster_config("replica.throttled.rate", Some("1")).unwrap_err();
        assert!(
            e.message.contains("leader.replication.throttled.rate"),
            "{e}"
        );
    }
}
