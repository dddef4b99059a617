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
    Ok(start(svc, request).await.await?)
}

/// Queues one Produce request and returns once its batches are appended (acks=0: once queued),
/// with the answer still to come (after the fsync, and for acks=all the replication). Callers
/// that pipeline a connection's requests start the next one only then, so its appends follow
/// this one's.
pub async fn start(
    svc: &BrokerService,
    request: ProduceRequest,
) -> impl Future<Output = Result<ProduceResponse, ApiError>> + Send + 'static {
    let started = Instant::now();
    let metrics = std::sync::Arc::clone(&svc.metrics);
    let timeout = if request.timeout_ms == 0 {
        svc.request_timeout
    } else {
        Duration::from_millis(request.timeout_ms.into())
    };
    enum Queued {
        Done(Result<ProduceResponse, ApiError>),
        Waiting(tokio::sync::oneshot::Receiver<ProduceResponse>),
    }
    let queued = if request.acks == 0 {
        let submitted = svc
            .queue
            .submit(
                ProduceJob {
                    request,
                    reply: None,
                    appended: None,
                },
                timeout,
            )
            .await;
        Queued::Done(submitted.map(|_| ProduceResponse::default()))
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (appended_tx, appended) = tokio::sync::oneshot::channel();
        let submitted = svc
            .queue
            .submit(
                ProduceJob {
                    request,
                    reply: Some(tx),
                    appended: Some(appended_tx),
                },
                timeout,
            )
            .await;
        match submitted {
            Ok(()) => {
                // Told after the append, or dropped when the broker shut down first; either
                // way nothing of this request is appended after this point.
                let _ = appended.await;
                Queued::Waiting(rx)
            }
            Err(e) => Queued::Done(Err(e)),
        }
    };
    async move {
        let result = match queued {
            Queued::Done(r) => r,
            Queued::Waiting(rx) => {
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
        };
        metrics.observe("Produce", started.elapsed().as_secs_f64(), result.is_ok());
        result
    }
}
