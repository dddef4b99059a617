//! The broker's relationship with the controller quorum: register (with a fresh incarnation id),
//! follow the metadata log, heartbeat, become unfenced once caught up, and on shutdown ask for
//! leaderships to be moved away before stopping (controlled shutdown).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::time::Duration;

use rill_protocol::metadata_image::MetadataImage;
use rill_protocol::proto::{
    AlterPartitionData, AlterPartitionRequest, AlterPartitionTopic, BrokerHeartbeatRequest,
    BrokerRegistrationRequest, Endpoint, FetchMetadataRequest,
};
use rill_protocol::{ApiError, ErrorCode};
use tokio_util::sync::CancellationToken;

use crate::config::BrokerConfig;
use crate::controller_client::ControllerClient;
use crate::metrics::Metrics;
use crate::replica_manager::ReplicaManager;

/// Shared lifecycle state.
pub struct Lifecycle {
    config: Arc<BrokerConfig>,
    cc: ControllerClient,
    rm: Arc<ReplicaManager>,
    metrics: Arc<Metrics>,
    epoch: AtomicI64,
    applied: AtomicI64,
    fenced: AtomicBool,
    incarnation: String,
    /// True once this broker has applied the metadata log up to its own registration: only
    /// then does it serve requests (Kafka's brokers open their listeners at that point too);
    /// before, it would answer "unknown topic" for topics that exist.
    caught_up: tokio::sync::watch::Sender<bool>,
    /// Why the broker must stop and not come back by itself (its log dirs belong to another
    /// cluster), once known.
    fatal: parking_lot::Mutex<Option<String>>,
}

impl Lifecycle {
    /// Prepares the lifecycle (nothing is sent yet).
    pub fn new(
        config: Arc<BrokerConfig>,
        rm: Arc<ReplicaManager>,
        metrics: Arc<Metrics>,
    ) -> Result<Arc<Self>, ApiError> {
        Ok(Arc::new(Lifecycle {
            cc: ControllerClient::new(&config.controller_voters)?,
            config,
            rm,
            metrics,
            epoch: AtomicI64::new(-1),
            applied: AtomicI64::new(-1),
            fenced: AtomicBool::new(true),
            incarnation: uuid::Uuid::new_v4().to_string(),
            fatal: parking_lot::Mutex::new(None),
            caught_up: tokio::sync::watch::Sender::new(false),
        }))
    }

    /// Waits until this broker has caught up with the metadata log (see `caught_up`).
    pub async fn wait_caught_up(&self) {
        let mut caught_up = self.caught_up.subscribe();
        // Ends only with the sender, which `self` holds.
        let _ = caught_up.wait_for(|c| *c).await;
    }

    /// Why the broker stopped by itself, if it did: restarting it as it is cannot help.
    pub fn fatal_error(&self) -> Option<String> {
        self.fatal.lock().clone()
    }

    /// Stops the broker (`stop` is its shutdown) for a reason a restart cannot fix.
    fn halt(&self, stop: &CancellationToken, reason: String) {
        tracing::error!(error = %reason, "stopping the broker");
        self.fatal.lock().get_or_insert(reason);
        stop.cancel();
    }

    /// The endpoints this broker registers: gRPC (`PLAINTEXT`) first — gRPC clients take the
    /// first endpoint — then the Kafka-protocol listener (`KAFKA`) when it is on.
    fn endpoints(&self) -> Vec<Endpoint> {
        let mut endpoints = vec![Endpoint {
            name: "PLAINTEXT".into(),
            host: self.config.advertised.0.clone(),
            port: self.config.advertised.1.into(),
        }];
        if let Some((host, port)) = &self.config.kafka_advertised {
            endpoints.push(Endpoint {
                name: crate::kafka::ENDPOINT_NAME.into(),
                host: host.clone(),
                port: (*port).into(),
            });
        }
        endpoints
    }

    async fn register(&self, stop: &CancellationToken) -> Option<i64> {
        loop {
            let req = BrokerRegistrationRequest {
                broker_id: self.config.node_id,
                // The log dirs' cluster when they know it: a quorum of another cluster refuses.
                cluster_id: self
                    .rm
                    .logs()
                    .cluster_id()
                    .or_else(|| self.rm.image().cluster_id.clone())
                    .unwrap_or_default(),
                incarnation_id: self.incarnation.clone(),
                listeners: self.endpoints(),
                rack: self.config.rack.clone(),
            };
            let r = self
                .cc
                .call(Duration::from_secs(5), |mut c| {
                    let req = req.clone();
                    async move { c.broker_registration(req).await }
                })
                .await;
            match r {
                Ok(r) => {
                    self.epoch.store(r.broker_epoch, Ordering::Release);
                    self.rm.set_broker_epoch(r.broker_epoch);
                    tracing::info!(
                        broker = self.config.node_id,
                        epoch = r.broker_epoch,
                        "registered with the controller quorum"
                    );
                    return Some(r.broker_epoch);
                }
                Err(e) if e.code == ErrorCode::InconsistentClusterId => {
                    self.halt(
                        stop,
                        format!(
                            "the controller quorum refused this broker's log dirs: {}; point the broker at its own cluster's controllers, or give it empty log.dirs to join this one",
                            e.message
                        ),
                    );
                    return None;
                }
                Err(e) => tracing::warn!(error = %e, "registration failed; retrying"),
            }
            tokio::select! {
                _ = stop.cancelled() => return None,
                _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
    }

    /// Sends an ISR change to the controller (AlterPartition with this broker's epoch and the
    /// partition epoch the change is based on). `Ok` when the controller accepted it.
    pub async fn alter_partition(
        &self,
        change: &crate::partition::IsrChange,
    ) -> Result<(), ApiError> {
        let req = AlterPartitionRequest {
            broker_id: self.config.node_id,
            broker_epoch: self.epoch.load(Ordering::Acquire),
            topics: vec![AlterPartitionTopic {
                name: change.tp.topic.clone(),
                topic_id: change.topic_id.clone(),
                partitions: vec![AlterPartitionData {
                    index: change.tp.partition,
                    leader_epoch: change.leader_epoch,
                    new_isr: change.new_isr.clone(),
                    partition_epoch: change.partition_epoch,
                    new_isr_broker_epochs: change.new_isr_broker_epochs.clone(),
                }],
            }],
        };
        let r = self
            .cc
            .call(Duration::from_secs(5), |mut c| {
                let req = req.clone();
                async move { c.alter_partition(req).await }
            })
            .await?;
        let result = r
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .next()
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownServerError,
                    "empty AlterPartition response",
                )
            })?;
        match ErrorCode::try_from(result.error_code).unwrap_or(ErrorCode::UnknownServerError) {
            ErrorCode::None => Ok(()),
            code => Err(ApiError::new(code, result.error_message.clone())),
        }
    }

    /// The active controller as last seen by this broker, -1 when unknown.
    pub fn active_controller_id(&self) -> i32 {
        self.cc.active_controller_id()
    }

    /// Registers, then runs the metadata stream and heartbeats until `stop`; then performs a
    /// controlled shutdown, still applying metadata: that is how this broker's partitions learn
    /// their leaders moved, which answers the acks=all writes waiting on them.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        if self.register(&stop).await.is_none() {
            return;
        }
        let metadata_stop = CancellationToken::new();
        let metadata =
            tokio::spawn(Arc::clone(&self).follow_metadata(metadata_stop.clone(), stop.clone()));
        let interval = Duration::from_millis(self.config.heartbeat_interval_ms);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
            }
            self.heartbeat(false, &stop).await;
        }
        if self.fatal_error().is_none() {
            self.controlled_shutdown().await;
        }
        // Waited for, not aborted: an abort would leave a metadata update being applied (its
        // blocking half cannot be cancelled) while the broker goes on to close its logs.
        metadata_stop.cancel();
        if tokio::time::timeout(Duration::from_secs(10), metadata)
            .await
            .is_err()
        {
            tracing::warn!("a metadata update was still being applied at shutdown");
        }
    }

    async fn heartbeat(&self, want_shut_down: bool, stop: &CancellationToken) -> Option<bool> {
        let epoch = self.epoch.load(Ordering::Acquire);
        let applied = self.applied.load(Ordering::Acquire);
        let req = BrokerHeartbeatRequest {
            broker_id: self.config.node_id,
            broker_epoch: epoch,
            current_metadata_offset: applied,
            want_fence: applied < epoch,
            want_shut_down,
        };
        let r = self
            .cc
            .call(Duration::from_secs(2), |mut c| async move {
                c.broker_heartbeat(req).await
            })
            .await;
        match r {
            Ok(r) => {
                let was = self.fenced.swap(r.is_fenced, Ordering::AcqRel);
                if was != r.is_fenced {
                    tracing::info!(fenced = r.is_fenced, "broker fencing changed");
                }
                self.metrics.ready.store(!r.is_fenced, Ordering::Release);
                Some(r.should_shut_down)
            }
            Err(e)
                if matches!(
                    e.code,
                    ErrorCode::StaleBrokerEpoch | ErrorCode::BrokerIdNotRegistered
                ) =>
            {
                tracing::warn!(error = %e, "the controller no longer knows this registration; registering again");
                if !want_shut_down {
                    self.register(stop).await;
                }
                None
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                None
            }
        }
    }

    /// Follows the metadata log from the active controller. The image only moves forward: a
    /// snapshot older than what this broker already applied — in this run, or before a restart
    /// (`metadata-offset-checkpoint`) — comes from a lagging controller and is refused, and
    /// nothing is applied to the local logs until the image has reached that offset again.
    async fn follow_metadata(
        self: Arc<Self>,
        stop: CancellationToken,
        shutdown: CancellationToken,
    ) {
        let rm = Arc::clone(&self.rm);
        let floor = tokio::task::spawn_blocking(move || rm.persisted_metadata_offset())
            .await
            .unwrap_or(-1);
        if floor >= 0 {
            tracing::info!(
                offset = floor,
                "waiting for metadata at least as new as this broker applied before its restart"
            );
        }
        let mut image = MetadataImage::default();
        while !stop.is_cancelled() {
            let req = FetchMetadataRequest {
                broker_id: self.config.node_id,
                from_offset: image.next_offset,
            };
            // Only the active controller serves the log: the call follows NOT_CONTROLLER hints
            // and leaves silent controllers, as heartbeats do.
            let stream = tokio::select! {
                _ = stop.cancelled() => return,
                s = self.cc.call(Duration::from_secs(4), |mut c| async move {
                    c.fetch_metadata(req).await
                }) => s,
            };
            let source = self.cc.start();
            let mut stream = match stream {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(error = %e, "metadata stream unavailable; trying again");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            loop {
                let batch = tokio::select! {
                    _ = stop.cancelled() => return,
                    b = stream.message() => b,
                };
                let batch = match batch {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        // Keepalive failed, or the controller went away: start elsewhere.
                        tracing::info!(error = %e, "metadata stream ended; reconnecting");
                        self.cc.move_on_from(source);
                        break;
                    }
                };
                let applied = image.next_offset - 1;
                if batch.is_snapshot {
                    if batch.last_offset < applied.max(floor) {
                        tracing::warn!(
                            snapshot = batch.last_offset,
                            applied = applied.max(floor),
                            "refusing a metadata snapshot older than what this broker has applied (a lagging controller); trying another controller"
                        );
                        self.cc.move_on_from(source);
                        break;
                    }
                    image = MetadataImage::from_snapshot(&batch.records, batch.last_offset);
                } else {
                    let mut gap = false;
                    for r in &batch.records {
                        if r.offset > image.next_offset {
                            gap = true;
                            break;
                        }
                        if r.offset == image.next_offset {
                            image.apply(r);
                            image.next_offset = r.offset + 1;
                        }
                    }
                    if gap {
                        tracing::warn!(
                            expected = image.next_offset,
                            "metadata stream skipped records; reconnecting"
                        );
                        break;
                    }
                    image.next_offset = image.next_offset.max(batch.last_offset + 1);
                }
                let offset = image.next_offset - 1;
                if offset < floor {
                    // Still behind what this broker knew before: act on nothing yet.
                    continue;
                }
                if let Some(id) = image.cluster_id.clone()
                    && self.rm.logs().cluster_id().as_deref() != Some(id.as_str())
                {
                    // The first time: the log dirs now belong to this cluster.
                    let rm = Arc::clone(&self.rm);
                    match tokio::task::spawn_blocking(move || rm.logs().set_cluster_id(&id)).await {
                        Ok(Ok(())) => {}
                        Ok(Err(e @ rill_storage::LogError::ForeignLogDir { .. })) => {
                            self.halt(&shutdown, e.to_string());
                            return;
                        }
                        Ok(Err(e)) => {
                            tracing::warn!(error = %e, "could not record the cluster id in the log dirs' meta.properties")
                        }
                        Err(e) => tracing::warn!(error = %e, "cluster id task failed"),
                    }
                }
                let snapshot = Arc::new(image.clone());
                let rm = Arc::clone(&self.rm);
                let persisted = tokio::task::spawn_blocking(move || {
                    rm.apply_image(snapshot);
                    rm.persist_metadata_offset(offset)
                })
                .await;
                match persisted {
                    Ok(Ok(())) => {
                        self.applied.store(offset, Ordering::Release);
                        let epoch = self.epoch.load(Ordering::Acquire);
                        if epoch >= 0 && offset >= epoch && !*self.caught_up.borrow() {
                            tracing::info!(
                                offset,
                                "caught up with the metadata log; serving requests"
                            );
                            self.caught_up.send_replace(true);
                        }
                    }
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "could not record the applied metadata offset")
                    }
                    Err(e) => tracing::error!(error = %e, "metadata apply task failed"),
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Asks the controller to move this broker's leaderships away, then waits until this
    /// broker has applied the moves itself (Kafka's controller waits for the broker's metadata
    /// offset the same way): until then its partitions still take writes as leaders, and an
    /// acks=all write waiting on one would be cut off by the shutdown instead of answered
    /// NOT_LEADER_OR_FOLLOWER with its new leader. Up to 30 s in all.
    async fn controlled_shutdown(&self) {
        tracing::info!("controlled shutdown: asking the controller to move leaderships away");
        let never = CancellationToken::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while tokio::time::Instant::now() < deadline {
            if self.heartbeat(true, &never).await == Some(true) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        while tokio::time::Instant::now() < deadline {
            let leading = self.rm.leader_count();
            if leading == 0 {
                tracing::info!("controlled shutdown complete");
                return;
            }
            tracing::debug!(
                leading,
                "controlled shutdown: waiting to apply the leadership moves"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tracing::warn!("controlled shutdown timed out; stopping anyway");
    }
}
