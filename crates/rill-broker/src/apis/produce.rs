//! Produce (Kafka's `handleProduceRequest`): the request goes to the bounded request queue; an
//! I/O thread appends and the completion (fsync, then for acks=all the high watermark) answers
//! it. acks=0 is answered once appended.

use std::time::{Duration, Instant};

use rill_protocol::proto::*;
use rill_protocol::{ApiError, ErrorCode};
use tonic::Status;

use crate::network::BrokerService;
use crate::request_queue::ProduceJob;

/// Handles one Produce request (a gRPC call: nothing else of the client waits on its append).
///
/// acks=0 is answered once appended; otherwise the handler sleeps until the answer is ready —
/// one wake-up, where waiting for the append first (as a pipelining caller must, see
/// [`start`]) cost another thread hop per request.
pub async fn handle(
    svc: &BrokerService,
    request: ProduceRequest,
) -> Result<ProduceResponse, Status> {
    if request.acks == 0 {
        return Ok(start(svc, request).await.await?);
    }
    let started = Instant::now();
    let timeout = timeout_of(svc, &request);
    let (reply, rx) = tokio::sync::oneshot::channel();
    let job = ProduceJob {
        request,
        reply: Some(reply),
        appended: None,
    };
    let result = match svc.queue.submit(job, timeout).await {
        // Bounded like `start`'s two waits together: an I/O thread that never takes the job,
        // or a completion that never comes, still ends in an answer.
        Ok(()) => answer(tokio::time::timeout(answer_limit(timeout) * 2, rx).await),
        Err(e) => Err(e),
    };
    svc.metrics
        .observe("Produce", started.elapsed().as_secs_f64(), result.is_ok());
    Ok(result?)
}

fn timeout_of(svc: &BrokerService, request: &ProduceRequest) -> Duration {
    if request.timeout_ms == 0 {
        svc.request_timeout
    } else {
        Duration::from_millis(request.timeout_ms.into())
    }
}

/// The answer the I/O threads gave, or why there is none: the completion was dropped (the
/// broker shut down) or never came in time.
fn answer(
    waited: Result<
        Result<ProduceResponse, tokio::sync::oneshot::error::RecvError>,
        tokio::time::error::Elapsed,
    >,
) -> Result<ProduceResponse, ApiError> {
    match waited {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(_)) => Err(ApiError::new(
            ErrorCode::BrokerNotAvailable,
            "the broker is shutting down",
        )),
        Err(_) => Err(ApiError::new(
            ErrorCode::RequestTimedOut,
            "the produce did not complete in time (the broker's I/O threads or disk are stalled)",
        )),
    }
}

/// How long each wait for the I/O threads may take before the request fails.
fn answer_limit(timeout: Duration) -> Duration {
    timeout.max(Duration::from_secs(1)) * 2
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
    let timeout = timeout_of(svc, &request);
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
    let limit = answer_limit(timeout);
    let queued = match submitted {
        // Told after the append, or dropped when the broker shut down first; either way
        // nothing of this request is appended after this point.
        Ok(()) => match tokio::time::timeout(limit, appended).await {
            Ok(failed) => match rx {
                Some(rx) => Queued::Waiting(rx),
                // acks=0: what failed, so the client learns of it (a gRPC client reads it; the
                // Kafka listener closes the connection, as Kafka does).
                None => Queued::Done(Ok(failed.unwrap_or_default())),
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
            Queued::Waiting(rx) => answer(tokio::time::timeout_at(deadline, rx).await),
        };
        metrics.observe("Produce", started.elapsed().as_secs_f64(), result.is_ok());
        result
    }
}
