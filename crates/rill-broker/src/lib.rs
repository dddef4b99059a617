//! rill's broker. The request path, as the seed describes Kafka's:
//! [`network`] (gRPC decodes the request) → [`request_queue`] (bounded; backpressure) → I/O
//! threads (validate every batch, append to the partition log) → group-committed fsync →
//! response. Reads ([`network`]'s Fetch) long-poll on high-watermark changes and return the
//! stored batch bytes unchanged. [`replica_manager`] keeps the hosted partitions in step with the
//! metadata image that [`lifecycle`] follows from the controllers; [`background`] runs
//! retention and compaction; [`metrics`] exposes Prometheus metrics. [`kafka`] is the second
//! listener (`kafka.listeners`): Kafka's binary protocol in front of the same handlers.

#![warn(missing_docs)]

pub mod apis;
pub mod background;
pub mod config;
pub mod controller_client;
pub mod fetch_route;
pub mod group_coordinator;
pub mod kafka;
pub mod lifecycle;
pub mod metrics;
pub mod network;
pub mod partition;
pub mod replica_fetcher;
pub mod replica_manager;
pub mod request_queue;
pub mod throttle;

use std::sync::Arc;
use std::time::Duration;

use rill_protocol::proto::broker_server::BrokerServer;
use rill_storage::{CleanerConfig, LogManager, SystemClock};
use tokio_util::sync::CancellationToken;

pub use config::BrokerConfig;

/// Why the broker could not run.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The logs could not be opened or closed.
    #[error(transparent)]
    Log(#[from] rill_storage::LogError),
    /// The controller client could not be built.
    #[error(transparent)]
    Api(#[from] rill_protocol::ApiError),
    /// A log dir failed (a write or fsync error): the broker stopped so that its partitions'
    /// leadership moves and a supervisor can restart it once the disk is fixed.
    #[error("a log dir failed; the broker stopped: {0}")]
    LogDirFailure(String),
    /// The broker stopped for a reason a restart as it is cannot fix (its log dirs belong to
    /// another cluster).
    #[error("the broker stopped: {0}")]
    Fatal(String),
    /// The gRPC listener could not be bound or served, or a task it needs failed.
    #[error("listener {address}: {reason}")]
    Listener {
        /// The `host:port` of the listener (empty for failures not tied to one).
        address: String,
        /// The OS or task error.
        reason: String,
    },
}

/// Runs a broker until `shutdown` fires, then shuts down in order: controlled shutdown (leaders
/// move away) → stop serving → drain the I/O threads → flush logs, write checkpoints and the
/// clean-shutdown marker.
pub async fn run(config: BrokerConfig, shutdown: CancellationToken) -> Result<(), BrokerError> {
    let config = Arc::new(config);
    let dirs = config.log_dirs.clone();
    let node_id = config.node_id;
    let defaults = config.topic_defaults.clone();
    let cleaner = CleanerConfig {
        dedupe_buffer_size: config.cleaner_dedupe_buffer_size,
    };
    let logs = tokio::task::spawn_blocking(move || {
        LogManager::open(dirs, node_id, &defaults, cleaner, Arc::new(SystemClock))
    })
    .await
    .map_err(|e| BrokerError::Listener {
        address: String::new(),
        reason: format!("log recovery task failed: {e}"),
    })??;
    logs.set_producer_id_expiration_ms(config.producer_id_expiration_ms as i64);
    let rm = Arc::new(replica_manager::ReplicaManager::new(
        Arc::clone(&config),
        logs,
    ));
    let metrics = metrics::Metrics::new();
    let (queue, workers) = request_queue::start(
        config.num_io_threads,
        config.queued_max_requests,
        Arc::clone(&rm),
        config.flush_policy,
        Arc::clone(&metrics),
        tokio::runtime::Handle::current(),
    );
    let listener = tokio::net::TcpListener::bind(config.listeners)
        .await
        .map_err(|e| BrokerError::Listener {
            address: config.listeners.to_string(),
            reason: e.to_string(),
        })?;
    let kafka_listener =
        match config.kafka_listeners {
            Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| {
                BrokerError::Listener {
                    address: addr.to_string(),
                    reason: e.to_string(),
                }
            })?),
            None => None,
        };
    let background_stop = CancellationToken::new();
    background::start(
        &config,
        Arc::clone(&rm),
        Arc::clone(&metrics),
        background_stop.clone(),
    );
    if let Some(addr) = config.metrics_address {
        let m = Arc::clone(&metrics);
        let stop = background_stop.clone();
        tokio::spawn(async move {
            if let Err(e) = metrics::serve(addr, m, stop).await {
                tracing::error!(address = %addr, error = %e, "metrics endpoint failed");
            }
        });
    }
    // A failed log dir stops the broker (Kafka's KRaft brokers halt too): the controlled
    // shutdown below moves its leaderships away, and nothing more is acknowledged from that dir.
    let mut dir_failures = rm.log_dir_failures();
    {
        let shutdown = shutdown.clone();
        let stop = background_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = dir_failures.wait_for(Option::is_some) => {
                    if let Ok(reason) = r {
                        tracing::error!(error = reason.as_deref().unwrap_or_default(), "stopping the broker after a log dir failure");
                    }
                    shutdown.cancel();
                }
            }
        });
    }
    let lifecycle =
        lifecycle::Lifecycle::new(Arc::clone(&config), Arc::clone(&rm), Arc::clone(&metrics))?;
    let lifecycle_task = tokio::spawn(Arc::clone(&lifecycle).run(shutdown.clone()));
    // ISR changes the leaders propose go to the controller one by one (AlterPartition).
    {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        rm.set_isr_channel(tx);
        let lifecycle = Arc::clone(&lifecycle);
        let rm = Arc::clone(&rm);
        let stop = background_stop.clone();
        tokio::spawn(async move {
            loop {
                let change = tokio::select! {
                    _ = stop.cancelled() => return,
                    c = rx.recv() => match c { Some(c) => c, None => return },
                };
                let outcome = match lifecycle.alter_partition(&change).await {
                    Ok(()) => replica_manager::IsrChangeOutcome::Accepted,
                    Err(e) => {
                        let outcome = replica_manager::IsrChangeOutcome::of_error(e.code);
                        tracing::warn!(partition = %change.tp, isr = ?change.new_isr, error = %e, ?outcome, "AlterPartition failed");
                        outcome
                    }
                };
                rm.isr_change_done(&change, outcome);
            }
        });
    }

    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_serving::<BrokerServer<network::BrokerService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(rill_protocol::proto::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| BrokerError::Listener {
            address: config.listeners.to_string(),
            reason: format!("reflection: {e}"),
        })?;
    let controller_client = Arc::new(controller_client::ControllerClient::new(
        &config.controller_voters,
    )?);
    let service = network::BrokerService::new(
        Arc::clone(&rm),
        queue,
        Arc::clone(&metrics),
        Duration::from_millis(config.request_timeout_ms),
        &config.controller_voters,
        config.fetch_max_bytes,
    )
    .with_lifecycle(Arc::clone(&lifecycle))
    .with_controller_client(Arc::clone(&controller_client));
    let server_stop = CancellationToken::new();
    let coordinator = group_coordinator::GroupCoordinator::new(Arc::clone(&rm), &config)?;
    coordinator.start(background_stop.clone());
    if let Some(listener) = kafka_listener {
        let apis = Arc::new(
            kafka::KafkaApis::new(service.clone(), config.socket_request_max_bytes)
                .with_coordinator(Arc::clone(&coordinator))
                .with_controllers(controller_client),
        );
        tracing::info!(broker = config.node_id, address = ?config.kafka_listeners, "kafka listener listening");
        let lifecycle = Arc::clone(&lifecycle);
        let stop = server_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = lifecycle.wait_caught_up() => kafka::serve(listener, apis, stop).await,
                _ = stop.cancelled() => {}
            }
        });
    }
    let group_service =
        network::GroupCoordinatorService::new(Arc::clone(&coordinator), Arc::clone(&metrics));
    tracing::info!(broker = config.node_id, address = %config.listeners, "broker listening");
    let server = rill_protocol::transport::tune_server(tonic::transport::Server::builder())
        .tcp_nodelay(true)
        .add_service(health_service)
        .add_service(reflection)
        .add_service(fetch_route::BrokerRoutes::new(
            service,
            config.socket_request_max_bytes,
        ))
        .add_service(
            rill_protocol::proto::group_coordinator_server::GroupCoordinatorServer::new(
                group_service,
            )
            .max_decoding_message_size(config.socket_request_max_bytes)
            .max_encoding_message_size(usize::MAX),
        )
        .serve_with_incoming_shutdown(
            // Accepted sockets need TCP_NODELAY set here: the builder's tcp_nodelay only applies
            // to listeners tonic binds itself (Nagle + delayed ACKs cost 40 ms per response).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            server_stop.clone().cancelled_owned(),
        );
    // Bound now, served once caught up with the metadata log: until then clients wait in the
    // listen backlog instead of being told that existing topics are unknown.
    let server = {
        let lifecycle = Arc::clone(&lifecycle);
        let stop = server_stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = lifecycle.wait_caught_up() => server.await,
                _ = stop.cancelled() => Ok(()),
            }
        })
    };
    // The lifecycle ends after the controlled shutdown that `shutdown` triggers.
    let _ = lifecycle_task.await;
    server_stop.cancel();
    let served = server.await;
    background_stop.cancel();
    let fatal = lifecycle.fatal_error();
    // Dropping the last queue sender stops the I/O threads once they drain.
    drop(lifecycle);
    rm.shutdown_fetchers();
    let rm2 = Arc::clone(&rm);
    let closed = tokio::task::spawn_blocking(move || {
        for w in workers {
            let _ = w.join();
        }
        rm2.join_fetchers();
        // The last high watermark checkpoint before the dirs are judged: a dir it fails is
        // offline, and gets no clean-shutdown marker either.
        if let Err(e) = rm2.checkpoint_high_watermarks() {
            tracing::warn!(error = %e, "could not write the high watermark checkpoint");
        }
        // Decided once nothing appends any more: a log a fetcher's last round took offline
        // (after the background watcher stopped) counts too.
        let mut failed = rm2.offline_log_dirs();
        for p in rm2.all_partitions() {
            if p.log.read().is_offline()
                && let Some(dir) = rm2.logs().log_dir_of(&p.tp)
            {
                failed
                    .entry(dir)
                    .or_insert_with(|| format!("log of {} went offline", p.tp));
            }
        }
        // The failed dirs get no clean-shutdown marker (the next start recovers what the
        // failure left); the others close cleanly.
        let failed_dirs: Vec<std::path::PathBuf> = failed.keys().cloned().collect();
        let closed = rm2.logs().shutdown_except(&failed_dirs);
        (closed, failed)
    })
    .await
    .map_err(|e| BrokerError::Listener {
        address: String::new(),
        reason: format!("shutdown task failed: {e}"),
    });
    let (closed, failed) = closed?;
    closed?;
    if let Some((dir, reason)) = failed.into_iter().next() {
        return Err(BrokerError::LogDirFailure(format!(
            "{}: {reason}",
            dir.display()
        )));
    }
    if let Some(reason) = fatal {
        return Err(BrokerError::Fatal(reason));
    }
    tracing::info!(broker = config.node_id, "broker stopped cleanly");
    match served {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(BrokerError::Listener {
            address: config.listeners.to_string(),
            reason: e.to_string(),
        }),
        Err(e) => Err(BrokerError::Listener {
            address: config.listeners.to_string(),
            reason: e.to_string(),
        }),
    }
}
