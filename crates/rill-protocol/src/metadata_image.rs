//! The metadata image: the state machine built by applying committed metadata records in order.
//! Every controller and broker holds one; they are equal at equal offsets.
//!
//! Records are applied unconditionally: the active controller validated them against its image
//! before proposing, and a new leader accepts commands only after applying its whole log, so a
//! committed record is always valid for the image it lands on.

use std::collections::{BTreeMap, HashMap};

use crate::proto::metadata_record::Record;
use crate::proto::{
    ClusterIdRecord, ConfigRecord, Endpoint, MetadataRecord, PartitionRecord, ProducerIdsRecord,
    RegisterBrokerRecord, TopicRecord,
};

/// A registered broker.
#[derive(Clone, Debug, PartialEq)]
pub struct BrokerInfo {
    /// `node.id`.
    pub id: i32,
    /// Random id of the broker process that registered.
    pub incarnation_id: String,
    /// Offset of the registration record.
    pub epoch: i64,
    /// Where clients reach it (its advertised listeners, first one used).
    pub endpoints: Vec<Endpoint>,
    /// `broker.rack`.
    pub rack: Option<String>,
    /// Fenced brokers lead nothing and are not in any ISR.
    pub fenced: bool,
}

/// One partition's replica state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionInfo {
    /// All replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
    /// Leader broker, -1 when offline.
    pub leader: i32,
    /// Bumped on every leader change.
    pub leader_epoch: i32,
    /// Bumped on every change.
    pub partition_epoch: i32,
}

/// A partition reassignment in progress (KIP-455), kept beside [`PartitionInfo`] in
/// [`MetadataImage::reassignments`]. Both sets are also in the partition's `replicas`: the adding
/// ones follow the leader and catch up; when they are all in the ISR the controller makes the
/// target (`replicas` minus `removing_replicas`) the replica list.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionReassignment {
    /// Replicas being added (not replicas before the reassignment started).
    pub adding_replicas: Vec<i32>,
    /// Replicas that leave once every adding replica is in the ISR.
    pub removing_replicas: Vec<i32>,
}

impl PartitionReassignment {
    /// The replica list the partition ends with: `replicas` without the removing ones.
    pub fn target(&self, replicas: &[i32]) -> Vec<i32> {
        replicas
            .iter()
            .copied()
            .filter(|r| !self.removing_replicas.contains(r))
            .collect()
    }
}

/// A topic as the committed metadata has it: id, partitions and config overrides.
#[derive(Clone, Debug, PartialEq)]
pub struct TopicInfo {
    #[allow(missing_docs)]
    pub name: String,
    /// Unique id (UUID text).
    pub id: String,
    /// Partitions by index.
    pub partitions: Vec<PartitionInfo>,
    /// Topic config overrides (name → value); a config not here has its default.
    pub configs: BTreeMap<String, String>,
}

/// The cluster metadata at an offset.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MetadataImage {
    /// Set by the first active controller.
    pub cluster_id: Option<String>,
    /// Registered brokers by `node.id`, fenced ones included.
    pub brokers: BTreeMap<i32, BrokerInfo>,
    /// Topics by name.
    pub topics: BTreeMap<String, TopicInfo>,
    /// Topic id → name.
    pub topic_names: HashMap<String, String>,
    /// Cluster-wide config overrides.
    pub cluster_configs: BTreeMap<String, String>,
    /// Reassignments in progress by (topic id, partition). Kept beside the partitions rather
    /// than in [`PartitionInfo`] so code building `PartitionInfo` values keeps compiling; read
    /// it with [`MetadataImage::reassignment`].
    pub reassignments: BTreeMap<(String, i32), PartitionReassignment>,
    /// Offset the next record gets (= records applied so far).
    pub next_offset: i64,
    /// Every producer id below this was handed out in a block (`ProducerIdsRecord`); the next
    /// block starts here, so ids are never reused, across controller failovers included.
    pub next_producer_id_block_start: i64,
}

impl MetadataImage {
    /// Assigns the next offset to `record` (and, for registrations, the broker epoch) and applies it.
    pub fn append(&mut self, record: &mut MetadataRecord) {
        record.offset = self.next_offset;
        if let Some(Record::RegisterBroker(r)) = &mut record.record {
            r.broker_epoch = record.offset;
        }
        self.apply(record);
        self.next_offset += 1;
    }

    /// Applies a record with its fields as given.
    pub fn apply(&mut self, record: &MetadataRecord) {
        let Some(r) = &record.record else { return };
        match r {
            Record::ClusterId(c) => self.cluster_id = Some(c.cluster_id.clone()),
            Record::RegisterBroker(r) => {
                self.brokers.insert(
                    r.broker_id,
                    BrokerInfo {
                        id: r.broker_id,
                        incarnation_id: r.incarnation_id.clone(),
                        epoch: r.broker_epoch,
                        endpoints: r.endpoints.clone(),
                        rack: r.rack.clone(),
                        fenced: r.fenced,
                    },
                );
            }
            Record::FenceBroker(f) => {
                if let Some(b) = self.brokers.get_mut(&f.broker_id) {
                    b.fenced = true;
                }
            }
            Record::UnfenceBroker(u) => {
                if let Some(b) = self.brokers.get_mut(&u.broker_id) {
                    b.fenced = false;
                }
            }
            Record::UnregisterBroker(u) => {
                self.brokers.remove(&u.broker_id);
            }
            Record::Topic(t) => {
                self.topic_names.insert(t.topic_id.clone(), t.name.clone());
                self.topics.insert(
                    t.name.clone(),
                    TopicInfo {
                        name: t.name.clone(),
                        id: t.topic_id.clone(),
                        partitions: Vec::new(),
                        configs: BTreeMap::new(),
                    },
                );
            }
            Record::Partition(p) => {
                if let Some(topic) = self.topic_by_id_mut(&p.topic_id) {
                    let idx = p.partition.max(0) as usize;
                    let info = PartitionInfo {
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        leader: p.leader,
                        leader_epoch: p.leader_epoch,
                        partition_epoch: p.partition_epoch,
                    };
                    if idx < topic.partitions.len() {
                        topic.partitions[idx] = info;
                    } else if idx == topic.partitions.len() {
                        topic.partitions.push(info);
                    } else {
                        return;
                    }
                    self.set_reassignment(
                        &p.topic_id,
                        p.partition,
                        PartitionReassignment {
                            adding_replicas: p.adding_replicas.clone(),
                            removing_replicas: p.removing_replicas.clone(),
                        },
                    );
                }
            }
            Record::PartitionChange(c) => {
                if let Some(p) = self
                    .topic_by_id_mut(&c.topic_id)
                    .and_then(|t| t.partitions.get_mut(c.partition.max(0) as usize))
                {
                    if let Some(isr) = &c.isr {
                        p.isr = isr.ids.clone();
                    }
                    if let Some(replicas) = &c.replicas {
                        p.replicas = replicas.ids.clone();
                    }
                    if let Some(leader) = c.leader {
                        p.leader = leader;
                        p.leader_epoch += 1;
                    }
                    p.partition_epoch += 1;
                    if c.adding_replicas.is_some() || c.removing_replicas.is_some() {
                        let key = (c.topic_id.clone(), c.partition);
                        let mut r = self.reassignments.get(&key).cloned().unwrap_or_default();
                        if let Some(adding) = &c.adding_replicas {
                            r.adding_replicas = adding.ids.clone();
                        }
                        if let Some(removing) = &c.removing_replicas {
                            r.removing_replicas = removing.ids.clone();
                        }
                        self.set_reassignment(&c.topic_id, c.partition, r);
                    }
                }
            }
            Record::Config(c) => {
                let map = if c.topic.is_empty() {
                    Some(&mut self.cluster_configs)
                } else {
                    self.topics.get_mut(&c.topic).map(|t| &mut t.configs)
                };
                if let Some(map) = map {
                    match &c.value {
                        Some(v) => map.insert(c.name.clone(), v.clone()),
                        None => map.remove(&c.name),
                    };
                }
            }
            Record::ProducerIds(p) => {
                self.next_producer_id_block_start = self
                    .next_producer_id_block_start
                    .max(p.next_producer_id_block_start);
            }
            Record::RemoveTopic(r) => {
                if let Some(name) = self.topic_names.remove(&r.topic_id) {
                    self.topics.remove(&name);
                }
                self.reassignments.retain(|(id, _), _| *id != r.topic_id);
            }
        }
    }

    fn set_reassignment(&mut self, topic_id: &str, partition: i32, r: PartitionReassignment) {
        let key = (topic_id.to_owned(), partition);
        if r.adding_replicas.is_empty() && r.removing_replicas.is_empty() {
            self.reassignments.remove(&key);
        } else {
            self.reassignments.insert(key, r);
        }
    }

    /// The reassignment in progress for partition `partition` of topic `topic` (by name), if any.
    pub fn reassignment(&self, topic: &str, partition: i32) -> Option<&PartitionReassignment> {
        let id = &self.topics.get(topic)?.id;
        self.reassignments.get(&(id.clone(), partition))
    }

    fn topic_by_id_mut(&mut self, id: &str) -> Option<&mut TopicInfo> {
        let name = self.topic_names.get(id)?;
        self.topics.get_mut(name)
    }

    /// Records that rebuild this image from nothing (a snapshot). Their offsets are all
    /// `next_offset - 1`, the offset the snapshot stands for.
    pub fn snapshot_records(&self) -> Vec<MetadataRecord> {
        let at = self.next_offset - 1;
        let mut out = Vec::new();
        let mut push = |r: Record| {
            out.push(MetadataRecord {
                offset: at,
                record: Some(r),
            })
        };
        if let Some(id) = &self.cluster_id {
            push(Record::ClusterId(ClusterIdRecord {
                cluster_id: id.clone(),
            }));
        }
        if self.next_producer_id_block_start > 0 {
            push(Record::ProducerIds(ProducerIdsRecord {
                broker_id: -1,
                broker_epoch: -1,
                next_producer_id_block_start: self.next_producer_id_block_start,
            }));
        }
        for b in self.brokers.values() {
            push(Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: b.id,
                incarnation_id: b.incarnation_id.clone(),
                broker_epoch: b.epoch,
                endpoints: b.endpoints.clone(),
                rack: b.rack.clone(),
                fenced: b.fenced,
            }));
        }
        for (name, value) in &self.cluster_configs {
            push(Record::Config(ConfigRecord {
                topic: String::new(),
                name: name.clone(),
                value: Some(value.clone()),
            }));
        }
        for t in self.topics.values() {
            push(Record::Topic(TopicRecord {
                name: t.name.clone(),
                topic_id: t.id.clone(),
            }));
            for (i, p) in t.partitions.iter().enumerate() {
                let reassignment = self
                    .reassignments
                    .get(&(t.id.clone(), i as i32))
                    .cloned()
                    .unwrap_or_default();
                push(Record::Partition(PartitionRecord {
                    topic_id: t.id.clone(),
                    partition: i as i32,
                    replicas: p.replicas.clone(),
                    isr: p.isr.clone(),
                    leader: p.leader,
                    leader_epoch: p.leader_epoch,
                    partition_epoch: p.partition_epoch,
                    adding_replicas: reassignment.adding_replicas,
                    removing_replicas: reassignment.removing_replicas,
                }));
            }
            for (name, value) in &t.configs {
                push(Record::Config(ConfigRecord {
                    topic: t.name.clone(),
                    name: name.clone(),
                    value: Some(value.clone()),
                }));
            }
        }
        out
    }

    /// Rebuilds an image from snapshot records standing for offset `last_offset`.
    pub fn from_snapshot(records: &[MetadataRecord], last_offset: i64) -> Self {
        let mut image = MetadataImage::default();
        for r in records {
            image.apply(r);
        }
        image.next_offset = last_offset + 1;
        image
    }

    /// Unfenced brokers, by id.
    pub fn live_brokers(&self) -> Vec<&BrokerInfo> {
        self.brokers.values().filter(|b| !b.fenced).collect()
    }

    /// Topic by id.
    pub fn topic_by_id(&self, id: &str) -> Option<&TopicInfo> {
        self.topics.get(self.topic_names.get(id)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FenceBrokerRecord, IsrList, PartitionChangeRecord};

    fn rec(r: Record) -> MetadataRecord {
        MetadataRecord {
            offset: 0,
            record: Some(r),
        }
    }

    #[test]
    fn apply_and_snapshot_round_trip() {
        let mut image = MetadataImage::default();
        let records = vec![
            Record::ClusterId(ClusterIdRecord {
                cluster_id: "c1".into(),
            }),
            Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: 1,
                incarnation_id: "a".into(),
                fenced: true,
                ..Default::default()
            }),
            Record::RegisterBroker(RegisterBrokerRecord {
                broker_id: 2,
                incarnation_id: "b".into(),
                ..Default::default()
            }),
            Record::Topic(TopicRecord {
                name: "t".into(),
                topic_id: "id-t".into(),
            }),
            Record::Partition(PartitionRecord {
                topic_id: "id-t".into(),
                partition: 0,
                replicas: vec![1, 2],
                isr: vec![1, 2],
                leader: 1,
                ..Default::default()
            }),
            Record::PartitionChange(PartitionChangeRecord {
                topic_id: "id-t".into(),
                partition: 0,
                isr: Some(IsrList { ids: vec![2] }),
                leader: Some(2),
                replicas: None,
                adding_replicas: None,
                removing_replicas: None,
            }),
            Record::FenceBroker(FenceBrokerRecord {
                broker_id: 2,
                broker_epoch: 2,
            }),
            Record::Config(ConfigRecord {
                topic: "t".into(),
                name: "retention.ms".into(),
                value: Some("1000".into()),
            }),
            Record::ProducerIds(ProducerIdsRecord {
                broker_id: -1,
                broker_epoch: -1,
                next_producer_id_block_start: 1000,
            }),
        ];
        for r in records {
            image.append(&mut rec(r));
        }
        assert_eq!(image.next_offset, 9);
        assert_eq!(image.next_producer_id_block_start, 1000);
        assert_eq!(
            image.brokers[&2].epoch, 2,
            "broker epoch = registration offset"
        );
        let p = &image.topics["t"].partitions[0];
        assert_eq!(
            (p.leader, p.leader_epoch, p.partition_epoch, p.isr.clone()),
            (2, 1, 1, vec![2])
        );
        let rebuilt =
            MetadataImage::from_snapshot(&image.snapshot_records(), image.next_offset - 1);
        assert_eq!(rebuilt, image);
    }

    #[test]
    fn reassignments_apply_clear_and_survive_snapshots() {
        let mut image = MetadataImage::default();
        for r in [
            Record::Topic(TopicRecord {
                name: "t".into(),
                topic_id: "id-t".into(),
            }),
            Record::Partition(PartitionRecord {
                topic_id: "id-t".into(),
                partition: 0,
                replicas: vec![1, 2],
                isr: vec![1, 2],
                leader: 1,
                ..Default::default()
            }),
            Record::PartitionChange(PartitionChangeRecord {
                topic_id: "id-t".into(),
                partition: 0,
                replicas: Some(IsrList { ids: vec![1, 2, 3] }),
                adding_replicas: Some(IsrList { ids: vec![3] }),
                removing_replicas: Some(IsrList { ids: vec![1] }),
                ..Default::default()
            }),
        ] {
            image.append(&mut rec(r));
        }
        let r = image.reassignment("t", 0).cloned().unwrap();
        assert_eq!(
            (r.adding_replicas.clone(), r.removing_replicas.clone()),
            (vec![3], vec![1])
        );
        assert_eq!(r.target(&image.topics["t"].partitions[0].replicas), [2, 3]);
        assert_eq!(image.topics["t"].partitions[0].partition_epoch, 1);
        let rebuilt =
            MetadataImage::from_snapshot(&image.snapshot_records(), image.next_offset - 1);
        assert_eq!(rebuilt, image, "kept in snapshots");
        // Completion clears both sets.
        image.append(&mut rec(Record::PartitionChange(PartitionChangeRecord {
            topic_id: "id-t".into(),
            partition: 0,
            replicas: Some(IsrList { ids: vec![2, 3] }),
            adding_replicas: Some(IsrList { ids: vec![] }),
            removing_replicas: Some(IsrList { ids: vec![] }),
            ..Default::default()
        })));
        assert_eq!(image.reassignment("t", 0), None);
        assert!(image.reassignments.is_empty());
        // A deleted topic leaves nothing behind.
        let mut other = rebuilt.clone();
        other.append(&mut rec(Record::RemoveTopic(
            crate::proto::RemoveTopicRecord {
                topic_id: "id-t".into(),
            },
        )));
        assert!(other.reassignments.is_empty());
    }
}
