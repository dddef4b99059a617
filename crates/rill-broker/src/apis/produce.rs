//! Produce (Kafka's `handleProduceRequest`): the request goes to the bounded request queue; an
//! I/O thread appends and the completion (fsync, then for acks=all the high watermark) answers
//! it. acks=0 is answered once appended.

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

/// Queues one Produce request and returns once its batches are appended, with the answer still
/// to come (after the fsync, and for acks=all the replication). Callers
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
    // acks=0 gets no answer, but its appends too must come before the next request's.
    let (reply, rx) = if request.acks == 0 {
        (None, None)
    } else {
        let (tx, rx) = tokio::sync::oneshot::channel();
        (Some(tx), Some(rx))
    };
    let (appended_tx, appended) = tokio::sync::oneshot::channel();
    let submitted = svc
        .queue
        .submit(
            ProduceJob {
                request,
                reply,
                appended: Some(appended_tx),
            },
            timeout,
        )
        .await;
    let limit = timeout.max(Duration::from_secs(1)) * 2;
    let queued = match submitted {
        // Told after the append, or dropped when the broker shut down first; either way
        // nothing of this request is appended after this point.
        Ok(()) => match tokio::time::timeout(limit, appended).await {
            Ok(_) => match rx {
                Some(rx) => Queued::Waiting(rx),
                None => Queued::Done(Ok(ProduceResponse::default())),
            },
            Err(_) => Queued::Done(Err(ApiError::new(
                ErrorCode::RequestTimedOut,
                "the produce was not appended in time (the broker's I/O threads are stalled)",
            ))),
        },
        Err(e) => Queued::Done(Err(e)),
    };
    let deadline = tokio::time::Instant::now() + limit;
    async move {
        let result = match queued {
            Queued::Done(r) => r,
            Queued::Waiting(rx) => match tokio::time::timeout_at(deadline, rx).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(_)) => Err(ApiError::new(
                    ErrorCode::BrokerNotAvailable,
                    "the broker is shutting down",
                )),
                Err(_) => Err(ApiError::new(
                    ErrorCode::RequestTimedOut,
                    "the produce did not complete in time",
                )),
            },
        };
        metrics.observe("Produce", started.elapsed().as_secs_f64(), result.is_ok());
        result
    }
}
