//! The client side of the cluster, shared by the producer, the consumer and the CLI: bootstrap
//! from any broker, a metadata cache (partition leaders and epochs), one lazily connected
//! channel per broker, and admin calls to the controller quorum that follow NOT_CONTROLLER
//! hints. No retries of data requests here: the producer and consumer decide those.
//!
//! Metadata never goes backwards (KIP-320, Kafka's `Metadata.updateLatestMetadata`): a
//! partition's cached leader is replaced only by an answer with the same or a newer leader
//! epoch, so a broker with an old view (one cut off from the controllers, say) cannot send the
//! client back to a deposed leader. Refreshes ask the known brokers in turn, starting at a
//! different one each time and asking the one that failed last only when the others did too.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use parking_lot::RwLock;
use std::time::{Duration, Instant};

use tonic::transport::{Channel, Endpoint};

use crate::proto::broker_client::BrokerClient;
use crate::proto::controller_client::ControllerClient;
use crate::proto::{MetadataRequest, MetadataResponse};
use crate::{ApiError, ErrorCode};

/// Where a partition is led, as last seen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderInfo {
    /// Leader broker id, -1 when offline.
    pub leader: i32,
    /// The leader epoch this was learned at; a newer leader has a larger one (-1 when
    /// offline), so older news never replaces newer.
    pub epoch: i32,
}

/// A topic's cached metadata.
#[derive(Clone, Debug)]
struct TopicEntry {
    /// The topic id: a topic deleted and created again has a new one, and its leader epochs
    /// start again.
    id: String,
    partitions: Vec<LeaderInfo>,
    /// Invalidated: the next lookup asks the brokers again (the leader epochs are kept, so an
    /// older answer still cannot replace them).
    stale: bool,
    /// Partitions whose entry came from an error answer's hint ([`ClusterClient::update_leader`])
    /// rather than from Metadata. A hint names no topic id: it may come from a broker still
    /// holding a deleted incarnation of the topic, at that incarnation's (higher) epochs. So
    /// the next Metadata answer for this topic id replaces such an entry whatever its epoch —
    /// else the false epoch would outrank every true one until the new incarnation's epochs
    /// passed it, and a fetch naming it would be refused all that time.
    hinted: std::collections::HashSet<i32>,
    /// When it was last taken from an answer: older than `metadata.max.age.ms`, the next lookup
    /// asks again, so partitions added meanwhile are found without an error first.
    fetched: Instant,
}

#[derive(Default)]
struct Cache {
    brokers: HashMap<i32, String>,
    controllers: Vec<(i32, String)>,
    topics: HashMap<String, TopicEntry>,
    channels: HashMap<String, Channel>,
    refreshed: Option<Instant>,
    /// The broker address that failed last (a metadata request, or a request the caller
    /// reported with [`ClusterClient::broker_failed`]): asked for metadata last.
    failed: Option<String>,
    /// Leader epochs of topics dropped from `topics` by a topic-level error (topic id, epoch
    /// per partition), as Kafka's `lastSeenLeaderEpochs`: a broker whose view is older may
    /// answer with an error first and another with old leaders next, and those must not win.
    /// Kept for `metadata.max.age.ms` (at least [`SEEN_EPOCHS_MIN_KEEP`]) from the error — by
    /// then every broker's view has moved past it — so topics deleted for good do not pile up
    /// in a long-lived client.
    seen_epochs: HashMap<String, (String, Vec<i32>, Instant)>,
}

impl Cache {
    /// Takes the metadata of topic `t`: per partition, only a leader epoch at least as new as
    /// the cached one replaces it; a different topic id (the topic was re-created) replaces all.
    fn absorb_topic(&mut self, t: &crate::proto::TopicMetadata) {
        let len = t
            .partitions
            .iter()
            .map(|p| p.index as usize + 1)
            .max()
            .unwrap_or(0)
            .max(t.partitions.len());
        let offline = LeaderInfo {
            leader: -1,
            epoch: -1,
        };
        let seen = self.seen_epochs.remove(&t.name);
        let mut hinted = std::collections::HashSet::new();
        let mut parts = match self.topics.get(&t.name) {
            Some(e) if e.id == t.topic_id => {
                hinted = e.hinted.clone();
                e.partitions.clone()
            }
            // Dropped after an error: the leaders are unknown, the epochs still bind.
            _ => match seen {
                Some((id, epochs, _)) if id == t.topic_id => epochs
                    .into_iter()
                    .map(|epoch| LeaderInfo { leader: -1, epoch })
                    .collect(),
                _ => Vec::new(),
            },
        };
        if parts.len() < len {
            parts.resize(len, offline);
        }
        for p in &t.partitions {
            let was_hinted = hinted.remove(&p.index);
            if let Some(slot) = parts.get_mut(p.index as usize)
                && (p.leader_epoch >= slot.epoch || was_hinted)
            {
                *slot = LeaderInfo {
                    leader: p.leader_id,
                    epoch: p.leader_epoch,
                };
            }
        }
        self.topics.insert(
            t.name.clone(),
            TopicEntry {
                id: t.topic_id.clone(),
                partitions: parts,
                stale: false,
                hinted,
                fetched: Instant::now(),
            },
        );
    }
}

/// The shortest time the leader epochs of a topic dropped by an error are kept, however short
/// `metadata.max.age.ms` is: the window in which brokers' views of it may still differ.
const SEEN_EPOCHS_MIN_KEEP: Duration = Duration::from_secs(60);

/// A connection to a rill cluster.
#[derive(Clone)]
pub struct ClusterClient {
    bootstrap: Vec<String>,
    cache: Arc<RwLock<Cache>>,
    timeout: Duration,
    /// Where the next refresh starts among the known brokers.
    rotation: Arc<AtomicUsize>,
    /// `metadata.max.age.ms`: how long a topic's cached metadata is used before a lookup asks
    /// the brokers again.
    max_age: Duration,
}

/// Kafka's default `metadata.max.age.ms`: five minutes.
pub const DEFAULT_METADATA_MAX_AGE: Duration = Duration::from_secs(300);

fn unavailable(msg: String) -> ApiError {
    ApiError::new(ErrorCode::BrokerNotAvailable, msg)
}

impl ClusterClient {
    /// A client bootstrapping from `bootstrap` (`host:port` of brokers); connects lazily.
    pub fn new(bootstrap: &[String], request_timeout: Duration) -> Result<Self, ApiError> {
        if bootstrap.is_empty() {
            return Err(ApiError::new(
                ErrorCode::InvalidConfig,
                "no bootstrap address given (e.g. 127.0.0.1:9092)",
            ));
        }
        Ok(ClusterClient {
            bootstrap: bootstrap.to_vec(),
            cache: Arc::new(RwLock::new(Cache::default())),
            timeout: request_timeout,
            // Clients start at different brokers (std's per-instance random hash keys).
            rotation: Arc::new(AtomicUsize::new(
                std::hash::BuildHasher::hash_one(&std::collections::hash_map::RandomState::new(), 0)
                    as usize
                    % 1024,
            )),
            max_age: DEFAULT_METADATA_MAX_AGE,
        })
    }

    /// Sets `metadata.max.age.ms` (default [`DEFAULT_METADATA_MAX_AGE`]): a topic's metadata
    /// older than this is asked for again at the next lookup, as Kafka's clients refresh
    /// periodically, so a producer finds partitions added to a topic without an error first.
    pub fn with_metadata_max_age(mut self, max_age: Duration) -> Self {
        self.max_age = max_age;
        self
    }

    /// A channel to `address`, reused across calls.
    pub fn channel(&self, address: &str) -> Result<Channel, ApiError> {
        if let Some(c) = self.cache.read().channels.get(address).cloned() {
            return Ok(c);
        }
        let ch = Endpoint::from_shared(format!("http://{address}"))
            .map(crate::transport::tune)
            .map_err(|e| {
                ApiError::new(
                    ErrorCode::InvalidConfig,
                    format!("bad address {address:?}: {e}"),
                )
            })?
            .connect_timeout(Duration::from_secs(2))
            .timeout(self.timeout)
            .tcp_nodelay(true)
            .connect_lazy();
        self.cache
            .write()
            .channels
            .insert(address.to_owned(), ch.clone());
        Ok(ch)
    }

    /// A Broker client for broker `id` (from metadata).
    pub fn broker(&self, id: i32) -> Result<BrokerClient<Channel>, ApiError> {
        Ok(BrokerClient::new(self.broker_channel(id)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// The channel to broker `id` (from metadata), for calls made without the generated client
    /// ([`crate::fetch_call::fetch`]).
    pub fn broker_channel(&self, id: i32) -> Result<Channel, ApiError> {
        let addr =
            self.cache.read().brokers.get(&id).cloned().ok_or_else(|| {
                unavailable(format!("broker {id} is not in the cluster metadata"))
            })?;
        self.channel(&addr)
    }

    /// Notes that a request to broker `id` failed without an answer (unreachable, timed out):
    /// the next metadata refreshes ask the other brokers first, since a broker cut off from the
    /// cluster may still answer with its old view.
    pub fn broker_failed(&self, id: i32) {
        let mut c = self.cache.write();
        if let Some(addr) = c.brokers.get(&id).cloned() {
            c.failed = Some(addr);
        }
    }

    /// The addresses a refresh asks, in order: the known brokers starting at the next one in
    /// turn, then the bootstrap addresses not among them, and the one that failed last at the
    /// end.
    fn candidates(&self) -> Vec<String> {
        let (mut brokers, failed) = {
            let c = self.cache.read();
            let b: Vec<String> = c.brokers.values().cloned().collect();
            (b, c.failed.clone())
        };
        brokers.sort();
        brokers.dedup();
        if !brokers.is_empty() {
            let start = self.rotation.fetch_add(1, Ordering::Relaxed) % brokers.len();
            brokers.rotate_left(start);
        }
        for b in &self.bootstrap {
            if !brokers.contains(b) {
                brokers.push(b.clone());
            }
        }
        if let Some(f) = failed
            && brokers.len() > 1
            && let Some(i) = brokers.iter().position(|b| *b == f)
        {
            let f = brokers.remove(i);
            brokers.push(f);
        }
        brokers
    }

    /// Fetches metadata for `topics` (all when empty) from any reachable broker and caches it
    /// (never going back to an older leader epoch). The answer is returned as the broker gave it.
    pub async fn refresh(&self, topics: &[String]) -> Result<MetadataResponse, ApiError> {
        let candidates = self.candidates();
        let mut last = unavailable(format!(
            "no broker reachable at {}",
            self.bootstrap.join(",")
        ));
        let mut tried: Vec<String> = Vec::new();
        for addr in candidates {
            let mut client =
                BrokerClient::new(self.channel(&addr)?).max_decoding_message_size(usize::MAX);
            match client
                .metadata(MetadataRequest {
                    topics: topics.to_vec(),
                })
                .await
            {
                Ok(r) => {
                    let r = r.into_inner();
                    self.absorb(&r);
                    let mut c = self.cache.write();
                    if c.failed.as_ref() == Some(&addr) {
                        c.failed = None;
                    }
                    return Ok(r);
                }
                Err(status) => {
                    last = ApiError::from(status);
                    self.cache.write().failed = Some(addr.clone());
                    if !tried.contains(&addr) {
                        tried.push(addr);
                    }
                }
            }
        }
        // Name what was tried: "tcp connect error" alone does not say where.
        if !tried.is_empty() {
            last.message = format!("{} (tried {})", last.message, tried.join(", "));
        }
        Err(last)
    }

    fn absorb(&self, r: &MetadataResponse) {
        let mut c = self.cache.write();
        let keep = self.max_age.max(SEEN_EPOCHS_MIN_KEEP);
        c.seen_epochs
            .retain(|_, (_, _, dropped)| dropped.elapsed() < keep);
        for b in &r.brokers {
            if let Some(e) = b.endpoints.first() {
                c.brokers
                    .insert(b.node_id, format!("{}:{}", e.host, e.port));
            }
        }
        c.controllers = r
            .controllers
            .iter()
            .filter_map(|d| {
                d.endpoint
                    .as_ref()
                    .map(|e| (d.node_id, format!("{}:{}", e.host, e.port)))
            })
            .collect();
        for t in &r.topics {
            if t.error_code == 0 {
                c.absorb_topic(t);
            } else if let Some(e) = c.topics.remove(&t.name) {
                let epochs = e.partitions.iter().map(|p| p.epoch).collect();
                c.seen_epochs
                    .insert(t.name.clone(), (e.id, epochs, Instant::now()));
            }
        }
        c.refreshed = Some(Instant::now());
    }

    /// Cached partitions of `topic`, refreshing when unknown.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<LeaderInfo>, ApiError> {
        let aged = match self.cache.read().topics.get(topic) {
            Some(t) if !t.stale && t.fetched.elapsed() < self.max_age => {
                return Ok(t.partitions.clone());
            }
            // Only old, not known wrong: if no broker answers now, what is cached still serves
            // (a periodic refresh must not fail sends the cache could have routed).
            Some(t) if !t.stale => Some(t.partitions.clone()),
            _ => None,
        };
        let r = match (self.refresh(&[topic.to_owned()]).await, aged) {
            (Ok(r), _) => r,
            (Err(_), Some(cached)) => return Ok(cached),
            (Err(e), None) => return Err(e),
        };
        match r.topics.iter().find(|t| t.name == topic) {
            Some(t) if t.error_code != 0 => Err(ApiError::new(
                crate::ErrorCode::try_from(t.error_code).unwrap_or(ErrorCode::UnknownServerError),
                t.error_message.clone(),
            )),
            _ => self.cached_partitions(topic).ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {topic:?} does not exist"),
                )
            }),
        }
    }

    /// The cached partition count of `topic`, without any I/O.
    pub fn cached_partition_count(&self, topic: &str) -> Option<usize> {
        self.cache
            .read()
            .topics
            .get(topic)
            .map(|t| t.partitions.len())
    }

    /// Each partition's leader id (-1: none), as [`partitions`](Self::partitions) finds them:
    /// what a sender or fetcher looks up once per topic per round.
    pub async fn leaders(&self, topic: &str) -> Result<Vec<i32>, ApiError> {
        Ok(self
            .partitions(topic)
            .await?
            .iter()
            .map(|l| l.leader)
            .collect())
    }

    /// Each partition's leader (and its epoch) from the cache, without any I/O, unless `topic`
    /// was invalidated or is unknown; with whether it is younger than the metadata max age
    /// (what [`partitions`](Self::partitions) would answer at once) or only old, not known
    /// wrong (what it answers when a refresh fails).
    pub fn cached_leaders(&self, topic: &str) -> Option<(Vec<LeaderInfo>, bool)> {
        match self.cache.read().topics.get(topic) {
            Some(t) if !t.stale => Some((t.partitions.clone(), t.fetched.elapsed() < self.max_age)),
            _ => None,
        }
    }

    /// The cached partitions of `topic` (invalidated or not), without any I/O.
    pub fn cached_partitions(&self, topic: &str) -> Option<Vec<LeaderInfo>> {
        self.cache
            .read()
            .topics
            .get(topic)
            .map(|t| t.partitions.clone())
    }

    /// Like [`partitions`](Self::partitions), but waits up to `patience` for a topic that does
    /// not exist yet (metadata reaches brokers a moment after a topic is created).
    pub async fn partitions_wait(
        &self,
        topic: &str,
        patience: Duration,
    ) -> Result<Vec<LeaderInfo>, ApiError> {
        let deadline = Instant::now() + patience;
        loop {
            match self.partitions(topic).await {
                Err(e) if e.code.is_retriable() && Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                other => return other,
            }
        }
    }

    /// Records a newer leader learned from an error response.
    ///
    /// Returns whether the hint was taken. One with an older leader epoch is not — but it may
    /// come from a topic deleted and created again (epochs start over), so a caller that gets
    /// `false` should refresh the topic's metadata, which compares topic ids.
    pub fn update_leader(&self, topic: &str, partition: i32, info: LeaderInfo) -> bool {
        let mut cache = self.cache.write();
        let Some(t) = cache.topics.get_mut(topic) else {
            return false;
        };
        match t.partitions.get_mut(partition as usize) {
            Some(slot) if info.epoch >= slot.epoch => {
                *slot = info;
                t.hinted.insert(partition);
                true
            }
            _ => false,
        }
    }

    /// Takes the leader an error answer named (`current_leader`, KIP-951) when it names a broker
    /// and is at least as new as the cached one; says whether it was taken.
    pub fn take_leader_hint(
        &self,
        topic: &str,
        partition: i32,
        hint: Option<&crate::proto::LeaderIdAndEpoch>,
    ) -> bool {
        hint.is_some_and(|h| {
            h.leader_id >= 0
                && self.update_leader(
                    topic,
                    partition,
                    LeaderInfo {
                        leader: h.leader_id,
                        epoch: h.leader_epoch,
                    },
                )
        })
    }

    /// Marks a topic's metadata stale so the next lookup refreshes it. Its leader epochs are
    /// kept: the refresh cannot take an older leader over a newer one.
    pub fn invalidate(&self, topic: &str) {
        if let Some(t) = self.cache.write().topics.get_mut(topic) {
            t.stale = true;
        }
    }

    /// Calls the active controller (found through broker metadata), following NOT_CONTROLLER
    /// hints, for up to `patience`.
    pub async fn admin<T, F, Fut>(&self, patience: Duration, f: F) -> Result<T, ApiError>
    where
        F: FnMut(ControllerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let known = self.cache.read().controllers.clone();
        let controllers = if known.is_empty() {
            self.refresh(&[]).await?;
            self.cache.read().controllers.clone()
        } else {
            known
        };
        if controllers.is_empty() {
            return Err(unavailable("the brokers report no controllers".into()));
        }
        let channels = controllers
            .iter()
            .map(|(id, addr)| Ok((i64::from(*id), self.channel(addr)?)))
            .collect::<Result<Vec<_>, ApiError>>()?;
        call_controller(&channels, 0, patience, f)
            .await
            .map(|(r, _)| r)
    }
}

/// Calls the active controller among `controllers` (`(node id, channel)`), starting with
/// `start`: follows NOT_CONTROLLER leader hints, moves on from unreachable controllers, and
/// retries for up to `patience`. Returns the answer and the index of the controller that gave it.
pub async fn call_controller<T, F, Fut>(
    controllers: &[(i64, Channel)],
    start: usize,
    patience: Duration,
    mut f: F,
) -> Result<(T, usize), ApiError>
where
    F: FnMut(ControllerClient<Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    if controllers.is_empty() {
        return Err(unavailable("no controllers configured".into()));
    }
    let deadline = Instant::now() + patience;
    let mut i = start % controllers.len();
    loop {
        let client =
            ControllerClient::new(controllers[i].1.clone()).max_decoding_message_size(usize::MAX);
        match f(client).await {
            Ok(r) => return Ok((r.into_inner(), i)),
            Err(status) => {
                let e = ApiError::from(status);
                let retriable = matches!(
                    e.code,
                    ErrorCode::NotController
                        | ErrorCode::BrokerNotAvailable
                        | ErrorCode::RequestTimedOut
                        | ErrorCode::ThrottlingQuotaExceeded
                );
                if !retriable || Instant::now() >= deadline {
                    return Err(e);
                }
                let hinted = e
                    .leader_hint
                    .as_deref()
                    .and_then(|h| h.split_once('@'))
                    .and_then(|(id, _)| id.parse::<i64>().ok())
                    .and_then(|id| controllers.iter().position(|(c, _)| *c == id));
                match hinted {
                    Some(h) if h != i => i = h,
                    _ => {
                        i = (i + 1) % controllers.len();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{BrokerDescription, Endpoint, PartitionMetadata, TopicMetadata};

    /// A metadata answer for topic `t` (id `topic_id`): `(leader, leader epoch)` per partition,
    /// and brokers 1..=3 on ports 9001..=9003.
    fn answer(topic_id: &str, leaders: &[(i32, i32)]) -> MetadataResponse {
        MetadataResponse {
            brokers: (1..=3)
                .map(|id| BrokerDescription {
                    node_id: id,
                    endpoints: vec![Endpoint {
                        name: "PLAINTEXT".into(),
                        host: "127.0.0.1".into(),
                        port: 9000 + id as u32,
                    }],
                    ..Default::default()
                })
                .collect(),
            topics: vec![TopicMetadata {
                name: "t".into(),
                topic_id: topic_id.into(),
                partitions: leaders
                    .iter()
                    .enumerate()
                    .map(|(i, (leader, epoch))| PartitionMetadata {
                        index: i as i32,
                        leader_id: *leader,
                        leader_epoch: *epoch,
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn client() -> ClusterClient {
        ClusterClient::new(&["127.0.0.1:9001".into()], Duration::from_secs(1)).unwrap()
    }

    fn leaders(c: &ClusterClient) -> Vec<(i32, i32)> {
        c.cached_partitions("t")
            .unwrap()
            .iter()
            .map(|l| (l.leader, l.epoch))
            .collect()
    }

    /// Defect 3 of docs/reliability.md: `absorb` took whatever a broker answered, so a broker
    /// with an old view (a leader cut off from the controllers) sent the client back to it.
    #[test]
    fn an_older_leader_epoch_never_replaces_a_newer_one() {
        let c = client();
        c.absorb(&answer("id-1", &[(2, 5), (1, 3)]));
        // A stale broker: partition 0 at an older epoch (ignored), partition 1 at a newer one
        // (taken).
        c.absorb(&answer("id-1", &[(1, 4), (3, 4)]));
        assert_eq!(leaders(&c), [(2, 5), (3, 4)]);
        // The same epoch is accepted (the leader may come back online at it), a newer one too.
        c.absorb(&answer("id-1", &[(-1, 5), (2, 6)]));
        assert_eq!(leaders(&c), [(-1, 5), (2, 6)]);
        c.absorb(&answer("id-1", &[(2, 5), (3, 6)]));
        assert_eq!(leaders(&c), [(2, 5), (3, 6)]);
        // Invalidating keeps the epochs: the refresh that follows cannot go back either.
        c.invalidate("t");
        assert_eq!(c.cached_partition_count("t"), Some(2));
        c.absorb(&answer("id-1", &[(1, 0), (1, 0)]));
        assert_eq!(leaders(&c), [(2, 5), (3, 6)]);
        // update_leader (from an error response's current leader) follows the same rule.
        let older = LeaderInfo {
            leader: 1,
            epoch: 4,
        };
        assert!(
            !c.update_leader("t", 0, older),
            "an older hint is not taken"
        );
        let newer = LeaderInfo {
            leader: 1,
            epoch: 7,
        };
        assert!(c.update_leader("t", 1, newer));
        assert_eq!(leaders(&c), [(2, 5), (1, 7)]);
    }

    /// A hint names no topic id: one from a broker still holding a deleted incarnation of the
    /// topic carries that incarnation's epoch. The next Metadata answer for the topic's id
    /// replaces a hinted entry whatever its epoch (else the false epoch would outrank the true
    /// ones, and fetches naming it be refused, until the new epochs passed it); entries that
    /// came from Metadata still never go back.
    #[test]
    fn metadata_replaces_a_leader_taken_from_a_hint_whatever_its_epoch() {
        let c = client();
        c.absorb(&answer("id-2", &[(1, 0), (2, 0)]));
        let from_old_incarnation = LeaderInfo {
            leader: 1,
            epoch: 3,
        };
        assert!(c.update_leader("t", 0, from_old_incarnation));
        assert_eq!(leaders(&c), [(1, 3), (2, 0)]);
        c.invalidate("t");
        c.absorb(&answer("id-2", &[(1, 0), (2, 0)]));
        assert_eq!(leaders(&c), [(1, 0), (2, 0)], "the hinted epoch gave way");
        // Taken from Metadata, an epoch binds again.
        c.absorb(&answer("id-2", &[(3, 1), (2, 0)]));
        c.absorb(&answer("id-2", &[(1, 0), (2, 0)]));
        assert_eq!(leaders(&c), [(3, 1), (2, 0)]);
    }

    /// A topic-level error drops the topic from the cache, not its leader epochs: an older
    /// view answered next by another broker cannot bring back an older leader (Kafka keeps
    /// `lastSeenLeaderEpochs` the same way); a re-created topic (new id) starts over.
    #[test]
    fn a_topic_error_does_not_let_an_older_leader_epoch_back_in() {
        let c = client();
        c.absorb(&answer("id-1", &[(2, 5), (1, 3)]));
        let mut failed = answer("id-1", &[]);
        failed.topics[0].error_code = ErrorCode::UnknownTopicOrPartition as i32;
        c.absorb(&failed);
        assert!(c.cached_partitions("t").is_none(), "the topic is dropped");
        // A broker with an older view: partition 0 at epoch 4 (older: its leader stays
        // unknown), partition 1 at epoch 3 (the same: taken).
        c.absorb(&answer("id-1", &[(1, 4), (3, 3)]));
        assert_eq!(leaders(&c), [(-1, 5), (3, 3)]);
        c.absorb(&answer("id-1", &[(2, 5), (3, 3)]));
        assert_eq!(leaders(&c), [(2, 5), (3, 3)]);
        // Deleted and created again (a new id): its epochs start over.
        c.absorb(&failed);
        c.absorb(&answer("id-2", &[(1, 0), (2, 0)]));
        assert_eq!(leaders(&c), [(1, 0), (2, 0)]);
    }

    /// The epochs of a topic dropped by an error are kept for `metadata.max.age.ms` (at least
    /// a minute), then forgotten (a topic deleted for good must not stay in the client for
    /// ever).
    #[test]
    fn the_epochs_of_a_dropped_topic_are_forgotten_after_the_metadata_max_age() {
        let c = client().with_metadata_max_age(Duration::ZERO);
        c.absorb(&answer("id-1", &[(2, 5)]));
        let mut failed = answer("id-1", &[]);
        failed.topics[0].error_code = ErrorCode::UnknownTopicOrPartition as i32;
        c.absorb(&failed);
        assert_eq!(c.cache.read().seen_epochs.len(), 1);
        let mut brokers_only = answer("id-1", &[]);
        brokers_only.topics.clear();
        c.absorb(&brokers_only);
        assert_eq!(
            c.cache.read().seen_epochs.len(),
            1,
            "within the minimum: kept"
        );
        // Recorded long enough ago.
        let Some(long_ago) = Instant::now().checked_sub(SEEN_EPOCHS_MIN_KEEP) else {
            return; // the machine has been up for less than that
        };
        c.cache.write().seen_epochs.get_mut("t").unwrap().2 = long_ago;
        c.absorb(&brokers_only);
        assert!(
            c.cache.read().seen_epochs.is_empty(),
            "past the max age: gone"
        );
    }

    /// Metadata older than `metadata.max.age.ms` is asked for again; when no broker answers,
    /// the cached leaders still serve (an invalidated topic's do not).
    #[tokio::test]
    async fn aged_metadata_is_asked_for_again_and_serves_when_nobody_answers() {
        let c = client().with_metadata_max_age(Duration::ZERO);
        c.absorb(&answer("id-1", &[(2, 5)]));
        // Nobody listens at the bootstrap address: the refresh fails, the cache answers.
        assert_eq!(
            c.partitions("t").await.unwrap(),
            vec![LeaderInfo {
                leader: 2,
                epoch: 5
            }]
        );
        c.invalidate("t");
        assert!(c.partitions("t").await.is_err(), "invalidated: known wrong");
    }

    #[test]
    fn an_invalidated_topic_is_asked_for_again() {
        let c = client();
        c.absorb(&answer("id-1", &[(2, 5)]));
        assert!(!c.cache.read().topics["t"].stale);
        c.invalidate("t");
        assert!(
            c.cache.read().topics["t"].stale,
            "the next lookup refreshes"
        );
        c.absorb(&answer("id-1", &[(2, 5)]));
        assert!(!c.cache.read().topics["t"].stale);
    }

    #[test]
    fn a_recreated_topic_takes_the_new_metadata() {
        let c = client();
        c.absorb(&answer("id-1", &[(2, 5), (1, 3), (3, 9)]));
        // Deleted and created again with fewer partitions: a new id, epochs from 0.
        c.absorb(&answer("id-2", &[(1, 0), (3, 0)]));
        assert_eq!(leaders(&c), [(1, 0), (3, 0)]);
        // Deleted: forgotten.
        let mut gone = answer("id-2", &[]);
        gone.topics[0].error_code = ErrorCode::UnknownTopicOrPartition as i32;
        c.absorb(&gone);
        assert!(c.cached_partitions("t").is_none());
    }

    #[test]
    fn partitions_added_keep_the_known_ones() {
        let c = client();
        c.absorb(&answer("id-1", &[(2, 5)]));
        c.absorb(&answer("id-1", &[(1, 4), (3, 0), (1, 0)]));
        assert_eq!(leaders(&c), [(2, 5), (3, 0), (1, 0)]);
        // An answer from before the partitions were added does not drop them.
        c.absorb(&answer("id-1", &[(2, 6)]));
        assert_eq!(leaders(&c), [(2, 6), (3, 0), (1, 0)]);
    }

    #[test]
    fn refreshes_rotate_over_the_brokers_and_ask_the_failed_one_last() {
        let c = client();
        c.absorb(&answer("id-1", &[(2, 5)]));
        let firsts: std::collections::HashSet<String> =
            (0..3).map(|_| c.candidates()[0].clone()).collect();
        assert_eq!(firsts.len(), 3, "each broker is asked first in turn");
        let all = c.candidates();
        assert_eq!(
            all.len(),
            3,
            "bootstrap addresses already known are not repeated"
        );
        c.broker_failed(2);
        for _ in 0..3 {
            let order = c.candidates();
            assert_eq!(order.len(), 3);
            assert_eq!(
                order[2], "127.0.0.1:9002",
                "the failed broker last: {order:?}"
            );
        }
    }
}
