//! A shard driven like the broker runtime drives it, with simulated clients.

use std::collections::BTreeMap;

use rill_protocol::ErrorCode;
use rill_protocol::metadata_image::{MetadataImage, PartitionInfo, TopicInfo};
use rill_protocol::proto::{
    ConsumerGroupHeartbeatRequest, ConsumerGroupHeartbeatResponse, DescribedGroup,
    OffsetCommitPartition, OffsetCommitRequest, OffsetCommitResponse, OffsetCommitTopic,
    OffsetFetchRequest, TopicNames, TopicPartitionsList,
};

use crate::assignor::Assignment;
use crate::consumer_group::{assignment_from_proto, assignment_to_proto};
use crate::{GroupConfig, GroupCoordinatorShard, Record};

pub fn topic(name: &str, partitions: usize) -> TopicInfo {
    TopicInfo {
        name: name.to_string(),
        id: format!("id-{name}"),
        partitions: vec![
            PartitionInfo {
                replicas: vec![1],
                isr: vec![1],
                leader: 1,
                leader_epoch: 0,
                partition_epoch: 0,
            };
            partitions
        ],
        configs: BTreeMap::new(),
    }
}

pub fn image(topics: &[(&str, usize)]) -> MetadataImage {
    let mut image = MetadataImage::default();
    for (name, n) in topics {
        image.topics.insert(name.to_string(), topic(name, *n));
    }
    image
}

pub fn assignment(parts: &[(&str, &[i32])]) -> Assignment {
    parts
        .iter()
        .map(|(t, ps)| (t.to_string(), ps.iter().copied().collect()))
        .collect()
}

/// Every record fits in `config.max_record_bytes`.
pub fn assert_fit(config: &GroupConfig, records: &[Record]) {
    for r in records {
        let size = crate::record_size(r);
        assert!(
            size <= config.max_record_bytes,
            "a {size}-byte record (type {:?}) exceeds max_record_bytes = {}",
            &r.key[..2],
            config.max_record_bytes
        );
    }
}

pub fn config() -> GroupConfig {
    GroupConfig {
        session_timeout_ms: 45_000,
        heartbeat_interval_ms: 5_000,
        ..GroupConfig::default()
    }
}

/// A shard, the image it sees, a clock and every record it wrote, in order.
pub struct Harness {
    pub shard: GroupCoordinatorShard,
    pub config: GroupConfig,
    pub image: MetadataImage,
    pub now: i64,
    pub log: Vec<Record>,
}

impl Harness {
    pub fn new(topics: &[(&str, usize)]) -> Self {
        Self::with_config(config(), topics)
    }

    pub fn with_config(config: GroupConfig, topics: &[(&str, usize)]) -> Self {
        Harness {
            shard: GroupCoordinatorShard::new(config.clone()),
            config,
            image: image(topics),
            now: 1_000_000,
            log: Vec::new(),
        }
    }

    pub fn heartbeat(
        &mut self,
        request: ConsumerGroupHeartbeatRequest,
    ) -> ConsumerGroupHeartbeatResponse {
        let r = self
            .shard
            .consumer_group_heartbeat(request, "/10.0.0.1", &self.image, self.now);
        // A refused request writes nothing, except FENCED_MEMBER_EPOCH, which may record that
        // the member's next join is accepted.
        if r.response.error_code != ErrorCode::None as i32
            && r.response.error_code != ErrorCode::FencedMemberEpoch as i32
        {
            assert!(
                r.records.is_empty(),
                "an error wrote records: {:?}",
                r.response
            );
        }
        self.append(r.records);
        r.response
    }

    /// Appends records a handler returned, checking each fits in a record of the partition.
    pub fn append(&mut self, records: Vec<Record>) {
        assert_fit(&self.config, &records);
        self.log.extend(records);
    }

    pub fn commit(&mut self, request: OffsetCommitRequest) -> OffsetCommitResponse {
        let r = self.shard.offset_commit(request, &self.image, self.now);
        self.append(r.records);
        r.response
    }

    pub fn expire(&mut self) -> usize {
        let records = self.shard.expire_members(&self.image, self.now);
        let n = records.len();
        self.append(records);
        n
    }

    pub fn metadata_update(&mut self) -> usize {
        let records = self.shard.on_metadata_update(&self.image, self.now);
        let n = records.len();
        self.append(records);
        n
    }

    pub fn describe(&self, group: &str) -> DescribedGroup {
        self.shard.describe_group(group)
    }

    /// A fresh shard loaded from the log.
    pub fn load(&self) -> GroupCoordinatorShard {
        let mut loaded = GroupCoordinatorShard::new(self.config.clone());
        for r in &self.log {
            loaded.replay(r).expect("every written record replays");
        }
        loaded
    }

    /// Loading the log gives the live state (nothing to add on load with the same image).
    pub fn assert_load_equals_live(&self) {
        let mut loaded = self.load();
        let extra = loaded.on_loaded(&self.image, self.now);
        assert_fit(&self.config, &extra);
        assert!(
            extra.is_empty(),
            "on_loaded wrote {} records with an unchanged image",
            extra.len()
        );
        assert_eq!(loaded.list_groups(&[]), self.shard.list_groups(&[]));
        for g in self.shard.list_groups(&[]) {
            assert_eq!(
                loaded.describe_group(&g.group_id),
                self.shard.describe_group(&g.group_id)
            );
            let fetch = OffsetFetchRequest {
                group_id: g.group_id.clone(),
                topics: vec![],
            };
            assert_eq!(loaded.offset_fetch(&fetch), self.shard.offset_fetch(&fetch));
        }
        assert_eq!(loaded.group_count(), self.shard.group_count());
        // Compacting the log (latest record per key, tombstones dropped) loads the same too.
        let mut latest: BTreeMap<Vec<u8>, (usize, &Record)> = BTreeMap::new();
        for (i, r) in self.log.iter().enumerate() {
            latest.insert(r.key.to_vec(), (i, r));
        }
        let mut compacted: Vec<(usize, &Record)> = latest
            .into_values()
            .filter(|(_, r)| r.value.is_some())
            .collect();
        compacted.sort_by_key(|(i, _)| *i);
        let mut from_compacted = GroupCoordinatorShard::new(self.config.clone());
        for (_, r) in compacted {
            from_compacted.replay(r).expect("replays");
        }
        from_compacted.on_loaded(&self.image, self.now);
        for g in self.shard.list_groups(&[]) {
            assert_eq!(
                from_compacted.describe_group(&g.group_id),
                self.shard.describe_group(&g.group_id)
            );
        }
    }
}

/// How a simulated client gives partitions up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Revoke {
    /// As soon as an assignment without them arrives.
    Immediately,
    /// Only when told to (`release`): until then it keeps reporting them as owned.
    WhenReleased,
}

/// A consumer following the KIP-848 protocol.
#[derive(Clone, Debug)]
pub struct Client {
    pub group: String,
    pub member_id: String,
    pub instance_id: Option<String>,
    pub epoch: i32,
    /// What the client consumes now.
    pub owned: Assignment,
    /// Partitions it was told to give up but still holds (`Revoke::WhenReleased`).
    pub releasing: Assignment,
    pub topics: Vec<String>,
    pub regex: Option<String>,
    pub revoke: Revoke,
    pub joined: bool,
}

impl Client {
    pub fn new(group: &str, member_id: &str, topics: &[&str]) -> Self {
        Client {
            group: group.to_string(),
            member_id: member_id.to_string(),
            instance_id: None,
            epoch: 0,
            owned: Assignment::new(),
            releasing: Assignment::new(),
            topics: topics.iter().map(|t| t.to_string()).collect(),
            regex: None,
            revoke: Revoke::Immediately,
            joined: false,
        }
    }

    pub fn static_member(mut self, instance: &str) -> Self {
        self.instance_id = Some(instance.to_string());
        self
    }

    /// Everything the client holds (owned plus not yet released).
    pub fn holds(&self) -> Assignment {
        let mut all = self.owned.clone();
        for (t, ps) in &self.releasing {
            all.entry(t.clone()).or_default().extend(ps.iter().copied());
        }
        all
    }

    pub fn join_request(&self) -> ConsumerGroupHeartbeatRequest {
        ConsumerGroupHeartbeatRequest {
            group_id: self.group.clone(),
            member_id: self.member_id.clone(),
            member_epoch: 0,
            instance_id: self.instance_id.clone(),
            rack_id: None,
            rebalance_timeout_ms: 30_000,
            subscribed_topic_names: Some(TopicNames {
                names: self.topics.clone(),
            }),
            subscribed_topic_regex: self.regex.clone(),
            server_assignor: None,
            owned_partitions: Some(TopicPartitionsList::default()),
            client_id: "client".into(),
        }
    }

    pub fn heartbeat_request(&self) -> ConsumerGroupHeartbeatRequest {
        ConsumerGroupHeartbeatRequest {
            group_id: self.group.clone(),
            member_id: self.member_id.clone(),
            member_epoch: self.epoch,
            instance_id: self.instance_id.clone(),
            rack_id: None,
            rebalance_timeout_ms: -1,
            subscribed_topic_names: None,
            subscribed_topic_regex: None,
            server_assignor: None,
            owned_partitions: Some(TopicPartitionsList {
                topics: assignment_to_proto(&self.holds()),
            }),
            client_id: "client".into(),
        }
    }

    pub fn leave_request(&self, epoch: i32) -> ConsumerGroupHeartbeatRequest {
        ConsumerGroupHeartbeatRequest {
            member_epoch: epoch,
            owned_partitions: None,
            ..self.heartbeat_request()
        }
    }

    /// Takes a successful response into account.
    pub fn apply(&mut self, response: &ConsumerGroupHeartbeatResponse) {
        assert_eq!(
            response.error_code,
            ErrorCode::None as i32,
            "{}: {}",
            self.member_id,
            response.error_message
        );
        self.member_id = response.member_id.clone();
        self.epoch = response.member_epoch;
        self.joined = true;
        if let Some(a) = &response.assignment {
            let new = assignment_from_proto(a);
            if self.revoke == Revoke::WhenReleased {
                for (t, ps) in &self.owned {
                    for p in ps {
                        if !new.get(t).is_some_and(|n| n.contains(p)) {
                            self.releasing.entry(t.clone()).or_default().insert(*p);
                        }
                    }
                }
            }
            self.owned = new;
        }
    }

    /// Gives up what it was told to give up.
    pub fn release(&mut self) {
        self.releasing.clear();
    }

    /// Forgets everything (fenced, or left).
    pub fn reset(&mut self) {
        self.epoch = 0;
        self.owned.clear();
        self.releasing.clear();
        self.joined = false;
    }

    pub fn join(&mut self, h: &mut Harness) -> ConsumerGroupHeartbeatResponse {
        let r = h.heartbeat(self.join_request());
        self.apply(&r);
        r
    }

    pub fn heartbeat(&mut self, h: &mut Harness) -> ConsumerGroupHeartbeatResponse {
        let r = h.heartbeat(self.heartbeat_request());
        self.apply(&r);
        r
    }

    pub fn commit(&self, h: &mut Harness, topic: &str, partition: i32, offset: i64) -> i32 {
        let r = h.commit(OffsetCommitRequest {
            group_id: self.group.clone(),
            member_epoch: self.epoch,
            member_id: self.member_id.clone(),
            retention_time_ms: None,
            topics: vec![OffsetCommitTopic {
                name: topic.to_string(),
                partitions: vec![OffsetCommitPartition {
                    index: partition,
                    committed_offset: offset,
                    committed_leader_epoch: -1,
                    committed_metadata: String::new(),
                }],
            }],
        });
        r.topics[0].partitions[0].error_code
    }
}

/// No partition is held by two clients, nor owned by two members at the coordinator.
pub fn assert_exclusive(h: &Harness, clients: &[Client]) {
    let mut holder: BTreeMap<(String, i32), &str> = BTreeMap::new();
    for c in clients {
        for (t, ps) in c.holds() {
            for p in ps {
                if let Some(other) = holder.insert((t.clone(), p), &c.member_id) {
                    panic!("{t}-{p} held by both {other} and {}", c.member_id);
                }
            }
        }
    }
    let groups: std::collections::BTreeSet<&String> = clients.iter().map(|c| &c.group).collect();
    for g in groups {
        let d = h.describe(g);
        let mut owner: BTreeMap<(String, i32), String> = BTreeMap::new();
        for m in &d.members {
            for tp in &m.assignment {
                for p in &tp.partitions {
                    if let Some(other) = owner.insert((tp.topic.clone(), *p), m.member_id.clone()) {
                        panic!(
                            "{}-{p} owned by both {other} and {} at the coordinator",
                            tp.topic, m.member_id
                        );
                    }
                }
            }
        }
    }
}

/// Heartbeats every joined client (releasing what they were told to) until nothing changes;
/// returns the rounds it took.
pub fn settle(h: &mut Harness, clients: &mut [Client]) -> usize {
    for round in 0..20 {
        let before: Vec<(i32, Assignment)> = clients.iter().map(|c| (c.epoch, c.holds())).collect();
        for i in 0..clients.len() {
            if !clients[i].joined {
                continue;
            }
            clients[i].release();
            clients[i].heartbeat(h);
            assert_exclusive(h, clients);
        }
        let after: Vec<(i32, Assignment)> = clients.iter().map(|c| (c.epoch, c.holds())).collect();
        if before == after && round > 0 {
            return round;
        }
    }
    panic!("the group did not settle in 20 rounds");
}
