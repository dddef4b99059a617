//! What each controller operation means for the metadata: validation against the latest image
//! and the records that carry out the change. Pure functions, so the rules are testable alone.

use std::collections::BTreeSet;

use rill_protocol::proto::metadata_record::Record;
use rill_protocol::proto::{
    ConfigRecord, FenceBrokerRecord, IsrList, MetadataRecord, PartitionChangeRecord,
    PartitionRecord, ProducerIdsRecord, TopicRecord, UnfenceBrokerRecord,
};
use rill_protocol::{ApiError, ErrorCode};
use rill_storage::LogConfig;

use rill_protocol::metadata_image::{MetadataImage, PartitionInfo, TopicInfo};

/// Topic configs handled by the controller and brokers rather than the log.
pub const REPLICATION_CONFIGS: &[(&str, &str)] = &[
    ("min.insync.replicas", "1"),
    ("unclean.leader.election.enable", "false"),
];

/// Producer ids reserved per `ProducerIdsRecord` (Kafka's `ProducerIdsBlock.PRODUCER_ID_BLOCK_SIZE`).
pub const PRODUCER_ID_BLOCK_SIZE: i64 = 1000;

/// What InitProducerId hands out: the records to commit first (a new block, or none) and the
/// producer id and epoch.
#[derive(Debug, PartialEq)]
pub struct ProducerIdGrant {
    /// Records that must commit before the id is answered.
    pub records: Vec<MetadataRecord>,
    /// The producer id.
    pub producer_id: i64,
    /// The producer epoch.
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

/// Checks one topic config entry: known key, value in range.
pub fn validate_topic_config(name: &str, value: &str) -> Result<(), ApiError> {
    let invalid = |why: String| ApiError::new(ErrorCode::InvalidConfig, why);
    match name {
        "min.insync.replicas" => match value.trim().parse::<i32>() {
            Ok(n) if n >= 1 => Ok(()),
            _ => Err(invalid(format!(
                "invalid config min.insync.replicas={value:?}: must be an integer ≥ 1"
            ))),
        },
        "unclean.leader.election.enable" => match value.trim() {
            "true" | "false" => Ok(()),
            _ => Err(invalid(format!(
                "invalid config unclean.leader.election.enable={value:?}: must be true or false"
            ))),
        },
        _ => LogConfig::default()
            .set(name, value)
            .map_err(|e| invalid(e.to_string())),
    }
}

/// Every topic config key with its default value.
pub fn topic_config_defaults() -> Vec<(String, String)> {
    let defaults = LogConfig::default();
    let mut out: Vec<(String, String)> = LogConfig::KEYS
        .iter()
        .filter_map(|k| defaults.get(k).map(|v| ((*k).to_owned(), v)))
        .collect();
    out.extend(
        REPLICATION_CONFIGS
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
    );
    out.sort();
    out
}

/// The value of a topic config, override or default.
pub fn topic_config(topic: &TopicInfo, name: &str) -> Option<String> {
    topic.configs.get(name).cloned().or_else(|| {
        topic_config_defaults()
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
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
    /// Name.
    pub name: &'a str,
    /// Partition count.
    pub partitions: i32,
    /// Replicas per partition.
    pub replication_factor: i32,
    /// Config overrides.
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
        })));
    }
    for (k, v) in configs {
        records.push(record(Record::Config(ConfigRecord {
            topic: name.to_owned(),
            name: k.clone(),
            value: v.clone(),
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
            }))
        })
        .collect())
}

fn unclean_allowed(topic: &TopicInfo) -> bool {
    topic_config(topic, "unclean.leader.election.enable").as_deref() == Some("true")
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
        replicas: None,
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

/// Records unfencing `broker`, and electing it for offline partitions whose ISR names it.
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
                    isr: None,
                    leader: Some(broker),
                    replicas: None,
                })));
            }
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

#[cfg(test)]
mod tests {
    use super::*;
    use rill_protocol::proto::RegisterBrokerRecord;

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
}
