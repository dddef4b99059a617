//! The network side of the broker: the `rill.v1.Broker` and `rill.v1.GroupCoordinator` gRPC
//! services. It decodes each request,
//! hands it to its handler in [`crate::apis`] and encodes the answer; the handlers hold the
//! logic.

use std::sync::Arc;
use std::time::Duration;

use rill_protocol::proto::broker_server::Broker;
use rill_protocol::proto::group_coordinator_server::GroupCoordinator as GroupCoordinatorApi;
use rill_protocol::proto::*;
use tonic::{Request, Response, Status};

use crate::apis;
use crate::group_coordinator::GroupCoordinator;
use crate::metrics::Metrics;
use crate::replica_manager::ReplicaManager;
use crate::request_queue::RequestQueue;

/// Implements `rill.v1.Broker`.
#[derive(Clone)]
pub struct BrokerService {
    pub(crate) rm: Arc<ReplicaManager>,
    pub(crate) queue: RequestQueue,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) request_timeout: Duration,
    pub(crate) controllers: Vec<ControllerDescription>,
    pub(crate) fetch_max_bytes: usize,
    pub(crate) lifecycle: Option<Arc<crate::lifecycle::Lifecycle>>,
    /// For the requests forwarded to the controllers (DescribeConfigs).
    pub(crate) controller_client: Option<Arc<crate::controller_client::ControllerClient>>,
}

impl BrokerService {
    /// The service over `rm` and the produce `queue`; `voters` are listed in Metadata answers
    /// so admin clients can reach the controllers.
    pub fn new(
        rm: Arc<ReplicaManager>,
        queue: RequestQueue,
        metrics: Arc<Metrics>,
        request_timeout: Duration,
        voters: &[(u64, String)],
        fetch_max_bytes: usize,
    ) -> Self {
        let controllers = voters
            .iter()
            .map(|(id, addr)| {
                let (host, port) = addr.rsplit_once(':').unwrap_or((addr, "0"));
                ControllerDescription {
                    node_id: *id as i32,
                    endpoint: Some(Endpoint {
                        name: "CONTROLLER".into(),
                        host: host.to_owned(),
                        port: port.parse().unwrap_or(0),
                    }),
                }
            })
            .collect();
        BrokerService {
            rm,
            queue,
            metrics,
            request_timeout,
            controllers,
            fetch_max_bytes,
            lifecycle: None,
            controller_client: None,
        }
    }

    /// Lets the service forward DescribeConfigs to the controllers.
    pub fn with_controller_client(
        mut self,
        client: Arc<crate::controller_client::ControllerClient>,
    ) -> Self {
        self.controller_client = Some(client);
        self
    }

    /// Lets Metadata answers name the active controller.
    pub fn with_lifecycle(mut self, lifecycle: Arc<crate::lifecycle::Lifecycle>) -> Self {
        self.lifecycle = Some(lifecycle);
        self
    }
}

#[tonic::async_trait]
impl Broker for BrokerService {
    async fn produce(
        &self,
        request: Request<ProduceRequest>,
    ) -> Result<Response<ProduceResponse>, Status> {
        apis::produce::handle(self, request.into_inner())
            .await
            .map(Response::new)
    }

    /// Served through the generated server only in in-process uses of `BrokerServer`: the
    /// broker's listener answers Fetch in [`crate::fetch_route`], which calls the same handler.
    async fn fetch(
        &self,
        request: Request<FetchRequest>,
    ) -> Result<Response<FetchResponse>, Status> {
        apis::fetch::handle(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_offsets(
        &self,
        request: Request<ListOffsetsRequest>,
    ) -> Result<Response<ListOffsetsResponse>, Status> {
        apis::list_offsets::handle(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn metadata(
        &self,
        request: Request<MetadataRequest>,
    ) -> Result<Response<MetadataResponse>, Status> {
        apis::metadata::handle(self, request.into_inner())
            .await
            .map(Response::new)
    }

    async fn describe_configs(
        &self,
        request: Request<DescribeConfigsRequest>,
    ) -> Result<Response<DescribeConfigsResponse>, Status> {
        apis::describe_configs::handle(self, request.into_inner())
            .await
            .map(Response::new)
    }
}

/// Implements `rill.v1.GroupCoordinator`: decodes, hands to [`GroupCoordinator`], encodes.
#[derive(Clone)]
pub struct GroupCoordinatorService {
    coordinator: Arc<GroupCoordinator>,
    metrics: Arc<Metrics>,
}

impl GroupCoordinatorService {
    /// The service over the broker's coordinator.
    pub fn new(coordinator: Arc<GroupCoordinator>, metrics: Arc<Metrics>) -> Self {
        GroupCoordinatorService {
            coordinator,
            metrics,
        }
    }

    fn observe(&self, rpc: &'static str, started: std::time::Instant, error_code: i32) {
        self.metrics
            .observe(rpc, started.elapsed().as_secs_f64(), error_code == 0);
    }
}

#[tonic::async_trait]
impl GroupCoordinatorApi for GroupCoordinatorService {
    async fn find_coordinator(
        &self,
        request: Request<FindCoordinatorRequest>,
    ) -> Result<Response<FindCoordinatorResponse>, Status> {
        let started = std::time::Instant::now();
        let r = self
            .coordinator
            .find_coordinator(request.into_inner().keys)
            .await;
        let code = r
            .coordinators
            .iter()
            .map(|c| c.error_code)
            .max()
            .unwrap_or(0);
        self.observe("FindCoordinator", started, code);
        Ok(Response::new(r))
    }

    async fn consumer_group_heartbeat(
        &self,
        request: Request<ConsumerGroupHeartbeatRequest>,
    ) -> Result<Response<ConsumerGroupHeartbeatResponse>, Status> {
        let started = std::time::Instant::now();
        let host = request
            .remote_addr()
            .map(|a| a.ip().to_string())
            .unwrap_or_default();
        let r = self
            .coordinator
            .consumer_group_heartbeat(request.into_inner(), host)
            .await;
        self.observe("ConsumerGroupHeartbeat", started, r.error_code);
        Ok(Response::new(r))
    }

    async fn offset_commit(
        &self,
        request: Request<OffsetCommitRequest>,
    ) -> Result<Response<OffsetCommitResponse>, Status> {
        let started = std::time::Instant::now();
        let r = self.coordinator.offset_commit(request.into_inner()).await;
        let code = r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .map(|p| p.error_code)
            .max()
            .unwrap_or(0);
        self.observe("OffsetCommit", started, code);
        Ok(Response::new(r))
    }

    async fn offset_fetch(
        &self,
        request: Request<OffsetFetchRequest>,
    ) -> Result<Response<OffsetFetchResponse>, Status> {
        let started = std::time::Instant::now();
        let r = self.coordinator.offset_fetch(request.into_inner()).await;
        self.observe("OffsetFetch", started, r.error_code);
        Ok(Response::new(r))
    }

    async fn list_groups(
        &self,
        request: Request<ListGroupsRequest>,
    ) -> Result<Response<ListGroupsResponse>, Status> {
        let started = std::time::Instant::now();
        let r = self.coordinator.list_groups(request.into_inner()).await;
        self.observe("ListGroups", started, r.error_code);
        Ok(Response::new(r))
    }

    async fn describe_groups(
        &self,
        request: Request<DescribeGroupsRequest>,
    ) -> Result<Response<DescribeGroupsResponse>, Status> {
        let started = std::time::Instant::now();
        let r = self.coordinator.describe_groups(request.into_inner()).await;
        self.observe("DescribeGroups", started, 0);
        Ok(Response::new(r))
    }

    async fn delete_groups(
        &self,
        request: Request<DeleteGroupsRequest>,
    ) -> Result<Response<DeleteGroupsResponse>, Status> {
        let started = std::time::Instant::now();
        let r = self.coordinator.delete_groups(request.into_inner()).await;
        self.observe("DeleteGroups", started, 0);
        Ok(Response::new(r))
    }

    async fn offset_delete(
        &self,
        request: Request<OffsetDeleteRequest>,
    ) -> Result<Response<OffsetDeleteResponse>, Status> {
        let started = std::time::Instant::now();
        let r = self.coordinator.offset_delete(request.into_inner()).await;
        self.observe("OffsetDelete", started, r.error_code);
        Ok(Response::new(r))
    }
}
