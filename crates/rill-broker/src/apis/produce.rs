//! Produce (Kafka's `handleProduceRequest`): the request goes to the bounded request queue; an
//! I/O thread appends and the completion (fsync, then for acks=all the high watermark) answers
//! it. acks=0 is answered once queued.

use std::time::{Duration, Instant};

use rill_protocol::proto::*;
use rill_protocol::{ApiError, ErrorCode};
use tonic::Status;

use crate::network::BrokerService;
use crate::request_queue::ProduceJob;

/// Handles one Produce request.
pub async fn handle(
    svc: &BrokerService,
    request: ProduceRequest,
) -> Result<ProduceResponse, Status> {
    let request_in = request;
    let started = Instant::now();
    let request = request_in;
    let timeout = if request.timeout_ms == 0 {
        svc.request_timeout
    } else {
        Duration::from_millis(request.timeout_ms.into())
    };
    let result = if request.acks == 0 {
        svc.queue
            .submit(
                ProduceJob {
                    request,
                    reply: None,
                },
                timeout,
            )
            .await
            .map(|_| ProduceResponse::default())
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        match svc
            .queue
            .submit(
                ProduceJob {
                    request,
                    reply: Some(tx),
                },
                timeout,
            )
            .await
        {
            Ok(()) => {
                match tokio::time::timeout(timeout.max(Duration::from_secs(1)) * 2, rx).await {
                    Ok(Ok(r)) => Ok(r),
                    Ok(Err(_)) => Err(ApiError::new(
                        ErrorCode::BrokerNotAvailable,
                        "the broker is shutting down",
                    )),
                    Err(_) => Err(ApiError::new(
                        ErrorCode::RequestTimedOut,
                        "the produce did not complete in time",
                    )),
                }
            }
            Err(e) => Err(e),
        }
    };
    svc.metrics
        .observe("Produce", started.elapsed().as_secs_f64(), result.is_ok());
    Ok(result?)
}
