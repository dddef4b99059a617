//! The network side of the broker: the `rill.v1.Broker` gRPC service. It decodes each request,
//! hands it to its handler in [`crate::apis`] and encodes the answer; the handlers hold the
//! logic.

use std::sync::Arc;
use std::time::Duration;

use rill_protocol::proto::broker_server::Broker;
use rill_protocol::proto::*;
use tonic::{Request, Response, Status};

use crate::apis;
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
        }
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
}
