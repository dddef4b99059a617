//! The client side of the cluster, shared by the producer, the consumer and the CLI: bootstrap
//! from any broker, a metadata cache (partition leaders and epochs), one lazily connected
//! channel per broker, and admin calls to the controller quorum that follow NOT_CONTROLLER
//! hints. No retries of data requests here: the producer and consumer decide those.

use std::collections::HashMap;
use std::sync::Arc;

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

#[derive(Default)]
struct Cache {
    brokers: HashMap<i32, String>,
    controllers: Vec<(i32, String)>,
    topics: HashMap<String, Vec<LeaderInfo>>,
    channels: HashMap<String, Channel>,
    refreshed: Option<Instant>,
}

/// A connection to a rill cluster.
#[derive(Clone)]
pub struct ClusterClient {
    bootstrap: Vec<String>,
    cache: Arc<RwLock<Cache>>,
    timeout: Duration,
}

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
        })
    }

    /// A channel to `address`, reused across calls.
    pub fn channel(&self, address: &str) -> Result<Channel, ApiError> {
        if let Some(c) = self.cache.read().channels.get(address).cloned() {
            return Ok(c);
        }
        let ch = Endpoint::from_shared(format!("http://{address}"))
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
        let addr =
            self.cache.read().brokers.get(&id).cloned().ok_or_else(|| {
                unavailable(format!("broker {id} is not in the cluster metadata"))
            })?;
        Ok(BrokerClient::new(self.channel(&addr)?)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX))
    }

    /// Fetches metadata for `topics` (all when empty) from any reachable broker and caches it.
    pub async fn refresh(&self, topics: &[String]) -> Result<MetadataResponse, ApiError> {
        let mut candidates: Vec<String> = self.cache.read().brokers.values().cloned().collect();
        candidates.extend(self.bootstrap.iter().cloned());
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
                    return Ok(r);
                }
                Err(status) => {
                    last = ApiError::from(status);
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
                let mut parts = vec![
                    LeaderInfo {
                        leader: -1,
                        epoch: -1
                    };
                    t.partitions.len()
                ];
                for p in &t.partitions {
                    if let Some(slot) = parts.get_mut(p.index as usize) {
                        *slot = LeaderInfo {
                            leader: p.leader_id,
                            epoch: p.leader_epoch,
                        };
                    }
                }
                c.topics.insert(t.name.clone(), parts);
            } else {
                c.topics.remove(&t.name);
            }
        }
        c.refreshed = Some(Instant::now());
    }

    /// Cached partitions of `topic`, refreshing when unknown.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<LeaderInfo>, ApiError> {
        if let Some(p) = self.cache.read().topics.get(topic).cloned() {
            return Ok(p);
        }
        let r = self.refresh(&[topic.to_owned()]).await?;
        match r.topics.iter().find(|t| t.name == topic) {
            Some(t) if t.error_code != 0 => Err(ApiError::new(
                crate::ErrorCode::try_from(t.error_code).unwrap_or(ErrorCode::UnknownServerError),
                t.error_message.clone(),
            )),
            _ => self.cache.read().topics.get(topic).cloned().ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownTopicOrPartition,
                    format!("topic {topic:?} does not exist"),
                )
            }),
        }
    }

    /// The cached partition count of `topic`, without any I/O.
    pub fn cached_partition_count(&self, topic: &str) -> Option<usize> {
        self.cache.read().topics.get(topic).map(Vec::len)
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
    pub fn update_leader(&self, topic: &str, partition: i32, info: LeaderInfo) {
        if let Some(slot) = self
            .cache
            .write()
            .topics
            .get_mut(topic)
            .and_then(|p| p.get_mut(partition as usize))
            && info.epoch >= slot.epoch
        {
            *slot = info;
        }
    }

    /// Forgets a topic so the next lookup refreshes it.
    pub fn invalidate(&self, topic: &str) {
        self.cache.write().topics.remove(topic);
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
