//! Wiring: bind the listener, start the quorum thread and the peer transport, serve gRPC (with
//! health and reflection) until the shutdown token fires, then stop everything in order.

use std::sync::Arc;

use rill_protocol::proto::controller_server::ControllerServer;
use rill_protocol::proto::quorum_server::QuorumServer;
use tokio_util::sync::CancellationToken;

use crate::ControllerError;
use crate::config::ControllerConfig;
use crate::quorum_controller::{Event, QuorumController, QuorumHandle};
use crate::service::{ControllerService, QuorumService};
use crate::transport::Transport;

/// Runs a controller until `shutdown` is cancelled. `bound` receives the listening address once
/// the listener is up (useful with port 0).
pub async fn run(
    config: ControllerConfig,
    shutdown: CancellationToken,
    bound: Option<tokio::sync::oneshot::Sender<std::net::SocketAddr>>,
) -> Result<(), ControllerError> {
    config.validate()?;
    let addr = config.listen_addr()?;
    let listener =
        tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|e| ControllerError::Listener {
                address: addr.to_string(),
                reason: e.to_string(),
            })?;
    let local = listener
        .local_addr()
        .map_err(|e| ControllerError::Listener {
            address: addr.to_string(),
            reason: e.to_string(),
        })?;
    let (handle, rx) = QuorumHandle::bounded(config.queued.max.requests);
    let voters = config.voters()?;
    let transport = Transport::start(
        config.node.id,
        &voters,
        config.cluster.id.clone(),
        handle.clone(),
        shutdown.clone(),
    );
    let metrics = crate::metrics::ControllerMetrics::new();
    if !config.metrics.address.is_empty() {
        let addr: std::net::SocketAddr =
            config
                .metrics
                .address
                .parse()
                .map_err(|_| ControllerError::Listener {
                    address: config.metrics.address.clone(),
                    reason: "not host:port".into(),
                })?;
        let (m, stop) = (Arc::clone(&metrics), shutdown.clone());
        tokio::spawn(async move {
            if let Err(e) = crate::metrics::serve(addr, m, stop).await {
                tracing::error!(address = %addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    let controller = QuorumController::new(config.clone(), transport, Arc::clone(&metrics))?;
    // `true` when the thread stopped on an error (or panicked: the sender is dropped unsent).
    let (stopped_tx, stopped_rx) = tokio::sync::oneshot::channel::<bool>();
    let thread = std::thread::Builder::new()
        .name("quorum-controller".into())
        .spawn(move || {
            let result = controller.run(rx);
            let _ = stopped_tx.send(result.is_err());
            result
        })
        .map_err(|e| ControllerError::Raft(format!("cannot start the quorum thread: {e}")))?;

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<ControllerServer<ControllerService>>()
        .await;
    // A controller without its quorum thread can answer nothing correctly: report unhealthy
    // (HTTP and gRPC health) and stop the whole process, so a supervisor restarts it and it
    // recovers from its log, instead of lingering as a zombie that looks alive.
    {
        let (health, metrics, shutdown) = (health.clone(), Arc::clone(&metrics), shutdown.clone());
        let node = config.node.id;
        tokio::spawn(async move {
            if let Ok(false) = stopped_rx.await {
                return;
            }
            metrics.mark_failed();
            health
                .set_not_serving::<ControllerServer<ControllerService>>()
                .await;
            health
                .set_service_status("", tonic_health::ServingStatus::NotServing)
                .await;
            tracing::error!(
                node,
                "the quorum thread stopped on a metadata log error; the controller exits"
            );
            shutdown.cancel();
        });
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rill_protocol::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ControllerError::Listener {
            address: local.to_string(),
            reason: format!("reflection: {e}"),
        })?;
    let config = Arc::new(config);
    let controller_service = ControllerServer::new(ControllerService::new(
        handle.clone(),
        Arc::clone(&config),
        shutdown.clone(),
    ))
    .max_decoding_message_size(16 << 20);
    let quorum_service = QuorumServer::new(QuorumService::new(
        handle.clone(),
        config.node.id,
        config.cluster.id.clone(),
    ))
    .max_decoding_message_size(256 << 20)
    .max_encoding_message_size(256 << 20);
    tracing::info!(node = config.node.id, address = %local, voters = %config.controller.quorum.voters, "controller listening");
    if let Some(bound) = bound {
        let _ = bound.send(local);
    }
    // TCP_NODELAY on accepted sockets (the builder setting only covers listeners tonic binds).
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let served = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(controller_service)
        .add_service(quorum_service)
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned())
        .await;
    shutdown.cancel();
    let _ = handle.send(Event::Shutdown);
    let quorum = match tokio::task::spawn_blocking(move || thread.join()).await {
        Ok(Ok(result)) => result,
        Ok(Err(_)) | Err(_) => Err(ControllerError::Raft("the quorum thread panicked".into())),
    };
    if let Err(e) = quorum {
        tracing::error!(node = config.node.id, error = %e, "controller stopped on a fatal error");
        return Err(e);
    }
    tracing::info!(node = config.node.id, "controller stopped");
    served.map_err(|e| ControllerError::Listener {
        address: local.to_string(),
        reason: e.to_string(),
    })
}
