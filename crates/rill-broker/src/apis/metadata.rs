//! Metadata (Kafka's `handleTopicMetadataRequest`): brokers, topics, leaders and ISRs from this
//! broker's metadata image, plus the controllers (admin clients talk to them directly).

use std::time::Instant;

use rill_protocol::ErrorCode;
use rill_protocol::proto::*;
use tonic::Status;

use crate::network::BrokerService;

/// Handles one Metadata request.
pub async fn handle(svc: &BrokerService, req: MetadataRequest) -> Result<MetadataResponse, Status> {
    let request_in = req;
    let started = Instant::now();
    let req = request_in;
    let image = svc.rm.image();
    let names: Vec<String> = if req.topics.is_empty() {
        image.topics.keys().cloned().collect()
    } else {
        req.topics
    };
    let topics = names
        .into_iter()
        .map(|name| match image.topics.get(&name) {
            None => TopicMetadata {
                error_code: ErrorCode::UnknownTopicOrPartition as i32,
                error_message: format!("topic {name:?} does not exist"),
                name,
                ..Default::default()
            },
            Some(t) => TopicMetadata {
                error_code: 0,
                error_message: String::new(),
                name: t.name.clone(),
                topic_id: t.id.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .enumerate()
                    .map(|(i, p)| PartitionMetadata {
                        error_code: if p.leader == -1 {
                            ErrorCode::LeaderNotAvailable as i32
                        } else {
                            0
                        },
                        index: i as i32,
                        leader_id: p.leader,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                        offline_replicas: p
                            .replicas
                            .iter()
                            .copied()
                            .filter(|r| image.brokers.get(r).is_none_or(|b| b.fenced))
                            .collect(),
                    })
                    .collect(),
            },
        })
        .collect();
    let response = MetadataResponse {
        cluster_id: image.cluster_id.clone().unwrap_or_default(),
        brokers: image
            .brokers
            .values()
            .map(|b| BrokerDescription {
                node_id: b.id,
                endpoints: b.endpoints.clone(),
                rack: b.rack.clone(),
                fenced: b.fenced,
                broker_epoch: b.epoch,
            })
            .collect(),
        controller_id: svc
            .lifecycle
            .as_ref()
            .map_or(-1, |l| l.active_controller_id()),
        topics,
        controllers: svc.controllers.clone(),
    };
    svc.metrics
        .observe("Metadata", started.elapsed().as_secs_f64(), true);

    Ok(response)
}
