//! Talking to a group's coordinator (Kafka's `CoordinatorRequestManager`): FindCoordinator
//! against any live broker, the answer cached, and calls that find the coordinator again after
//! NOT_COORDINATOR, COORDINATOR_NOT_AVAILABLE or a transport failure, and retry with backoff
//! (COORDINATOR_LOAD_IN_PROGRESS too) until their patience runs out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rill_protocol::client::ClusterClient;
use rill_protocol::proto::group_coordinator_client::GroupCoordinatorClient;
use rill_protocol::proto::{
    ConsumerGroupHeartbeatResponse, DeleteGroupsResponse, DescribeGroupsResponse,
    FindCoordinatorRequest, OffsetCommitResponse, OffsetDeleteResponse, OffsetFetchResponse,
};
use rill_protocol::{ApiError, ErrorCode};
use tonic::transport::Channel;

use crate::config::{RetryPolicy, deadline_after};
use crate::error::{request_error, response_error};

/// The internal topic whose partition leaders coordinate groups.
pub(crate) const OFFSETS_TOPIC: &str = "__consumer_offsets";

/// The broker coordinating a group, as FindCoordinator named it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CoordinatorNode {
    /// The broker's node id.
    pub node_id: i32,
    /// `host:port`.
    pub address: String,
}

/// True for errors after which the coordinator is looked up again before retrying.
pub(crate) fn needs_rediscovery(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::NotCoordinator
            | ErrorCode::CoordinatorNotAvailable
            | ErrorCode::BrokerNotAvailable
            | ErrorCode::RequestTimedOut
    )
}

/// True for errors a coordinator call is retried after (the coordinator moved, is loading, or
/// could not be reached).
pub(crate) fn is_coordinator_retriable(code: ErrorCode) -> bool {
    needs_rediscovery(code) || code == ErrorCode::CoordinatorLoadInProgress
}

/// A response that can say "wrong or unready coordinator" inside its body (besides a gRPC
/// status): such answers are retried like failed calls.
pub(crate) trait CoordinatorResponse {
    /// The coordinator-level error of this response, if any.
    fn coordinator_error(&self) -> Option<ApiError>;
}

fn first_coordinator_error<'a>(
    errors: impl IntoIterator<Item = (i32, &'a str)>,
) -> Option<ApiError> {
    errors
        .into_iter()
        .filter_map(|(c, m)| response_error(c, m))
        .find(|e| is_coordinator_retriable(e.code))
}

impl CoordinatorResponse for ConsumerGroupHeartbeatResponse {
    fn coordinator_error(&self) -> Option<ApiError> {
        first_coordinator_error([(self.error_code, self.error_message.as_str())])
    }
}

impl CoordinatorResponse for OffsetFetchResponse {
    fn coordinator_error(&self) -> Option<ApiError> {
        first_coordinator_error([(self.error_code, self.error_message.as_str())])
    }
}

impl CoordinatorResponse for OffsetCommitResponse {
    fn coordinator_error(&self) -> Option<ApiError> {
        // Retried as a whole: a partition's REQUEST_TIMED_OUT is handled by the committer.
        first_coordinator_error(
            self.topics
                .iter()
                .flat_map(|t| &t.partitions)
                .map(|p| (p.error_code, p.error_message.as_str()))
                .filter(|(c, _)| *c != ErrorCode::RequestTimedOut as i32),
        )
    }
}

impl CoordinatorResponse for DescribeGroupsResponse {
    fn coordinator_error(&self) -> Option<ApiError> {
        first_coordinator_error(
            self.groups
                .iter()
                .map(|g| (g.error_code, g.error_message.as_str())),
        )
    }
}

impl CoordinatorResponse for DeleteGroupsResponse {
    fn coordinator_error(&self) -> Option<ApiError> {
        first_coordinator_error(
            self.results
                .iter()
                .map(|g| (g.error_code, g.error_message.as_str())),
        )
    }
}

impl CoordinatorResponse for OffsetDeleteResponse {
    fn coordinator_error(&self) -> Option<ApiError> {
        first_coordinator_error([(self.error_code, self.error_message.as_str())])
    }
}

/// Calls to one group's coordinator; cheap to clone (clones share the cached coordinator).
#[derive(Clone)]
pub(crate) struct CoordinatorClient {
    client: ClusterClient,
    group_id: String,
    retry: RetryPolicy,
    cached: Arc<Mutex<Option<CoordinatorNode>>>,
}

impl CoordinatorClient {
    pub fn new(client: ClusterClient, group_id: &str, retry: RetryPolicy) -> Self {
        CoordinatorClient {
            client,
            group_id: group_id.to_owned(),
            retry,
            cached: Arc::new(Mutex::new(None)),
        }
    }

    pub fn group_id(&self) -> &str {
        &self.group_id
    }

    /// Forgets the coordinator, so the next call looks it up again.
    pub fn invalidate(&self) {
        *self.cached.lock() = None;
    }

    /// The coordinator, cached, or asked of the live brokers (one round: every broker until
    /// one answers).
    pub async fn coordinator(&self) -> Result<CoordinatorNode, ApiError> {
        if let Some(c) = self.cached.lock().clone() {
            return Ok(c);
        }
        let found = find_coordinator(&self.client, &self.group_id).await?;
        *self.cached.lock() = Some(found.clone());
        Ok(found)
    }

    /// One call to the coordinator: `f` gets a client for it. A transport failure, or an
    /// answer saying the coordinator moved or is unavailable, forgets the coordinator.
    pub async fn call_once<T, F, Fut>(&self, f: F) -> Result<T, ApiError>
    where
        T: CoordinatorResponse,
        F: FnOnce(GroupCoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let node = self.coordinator().await?;
        let channel = self.client.channel(&node.address)?;
        let client = GroupCoordinatorClient::new(channel)
            .max_decoding_message_size(usize::MAX)
            .max_encoding_message_size(usize::MAX);
        let result = f(client)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| request_error(node.node_id, s))
            .and_then(|r| match r.coordinator_error() {
                Some(e) => Err(e),
                None => Ok(r),
            });
        if let Err(e) = &result
            && needs_rediscovery(e.code)
        {
            tracing::debug!(group = %self.group_id, coordinator = node.node_id, error = %e, "finding the group coordinator again");
            self.invalidate();
        }
        result
    }

    /// [`call_once`](Self::call_once), retried with backoff after coordinator errors for up to
    /// `patience`.
    pub async fn call<T, F, Fut>(&self, patience: Duration, mut f: F) -> Result<T, ApiError>
    where
        T: CoordinatorResponse,
        F: FnMut(GroupCoordinatorClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = deadline_after(patience);
        let mut failures = 0;
        loop {
            match self.call_once(&mut f).await {
                Err(e) if is_coordinator_retriable(e.code) => {
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    if remaining.is_zero() {
                        return Err(e);
                    }
                    failures += 1;
                    tokio::time::sleep(self.retry.delay(failures).min(remaining)).await;
                }
                other => return other,
            }
        }
    }
}

/// Asks the live brokers, in turn, which broker coordinates `group_id`.
pub(crate) async fn find_coordinator(
    client: &ClusterClient,
    group_id: &str,
) -> Result<CoordinatorNode, ApiError> {
    // Metadata for one (possibly absent) topic still lists every live broker.
    let metadata = client.refresh(&[OFFSETS_TOPIC.to_owned()]).await?;
    let mut last = ApiError::new(
        ErrorCode::CoordinatorNotAvailable,
        "no live broker to ask for the group coordinator",
    );
    for b in &metadata.brokers {
        let Some(e) = b.endpoints.first() else {
            continue;
        };
        let address = format!("{}:{}", e.host, e.port);
        let mut c = GroupCoordinatorClient::new(client.channel(&address)?);
        let answer = c
            .find_coordinator(FindCoordinatorRequest {
                keys: vec![group_id.to_owned()],
            })
            .await;
        let r = match answer {
            Ok(r) => r.into_inner(),
            Err(s) => {
                last = request_error(b.node_id, s);
                continue;
            }
        };
        let Some(found) = r.coordinators.into_iter().find(|c| c.key == group_id) else {
            last = ApiError::new(
                ErrorCode::CoordinatorNotAvailable,
                format!(
                    "broker {} did not say who coordinates {group_id}",
                    b.node_id
                ),
            );
            continue;
        };
        if let Some(e) = response_error(found.error_code, &found.error_message) {
            // Every broker gives the same answer; only "not available" is worth waiting for.
            return Err(e);
        }
        if found.node_id < 0 {
            return Err(ApiError::new(
                ErrorCode::CoordinatorNotAvailable,
                format!("no coordinator for group {group_id} yet"),
            ));
        }
        return Ok(CoordinatorNode {
            node_id: found.node_id,
            address: format!("{}:{}", found.host, found.port),
        });
    }
    Err(last)
}
