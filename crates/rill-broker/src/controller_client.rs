//! Talks to the controller quorum: finds the active controller, follows NOT_CONTROLLER hints,
//! fails over when a controller is unreachable.
//!
//! A controller cut off by the network does not close its connections: requests to it just go
//! unanswered. So every attempt has its own timeout, well inside the caller's patience, so the
//! other voters are tried in time (a heartbeat must reach the new active controller before the
//! broker's session expires); the next call starts at another voter after a failure; and the
//! channels send HTTP/2 keepalive pings, so a long-lived stream (the metadata log) from a
//! silent controller fails within seconds instead of waiting forever.

use std::time::Duration;

use rill_protocol::proto::controller_client::ControllerClient as GrpcClient;
use rill_protocol::{ApiError, ErrorCode};

use parking_lot::Mutex;
use tonic::transport::Channel;

/// How often an idle connection to a controller is pinged.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(3);
/// How long a ping may go unanswered before the connection (and every stream on it) fails:
/// generous, since a busy but healthy controller's in-flight requests die with it.
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The timeout of one attempt of a call with `patience`: half of it, so a silent controller
/// costs at most half the patience and another voter is still tried; at least 500 ms so a busy
/// quorum can answer, at most 5 s.
fn attempt_timeout(patience: Duration) -> Duration {
    (patience / 2).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// A client of the controller quorum.
pub struct ControllerClient {
    voters: Vec<(i64, Channel)>,
    current: Mutex<usize>,
    answered: std::sync::atomic::AtomicBool,
}

impl ControllerClient {
    /// A client for `voters` (`(id, host:port)`); connections are made lazily.
    pub fn new(voters: &[(u64, String)]) -> Result<Self, ApiError> {
        let mut chans = Vec::new();
        for (id, addr) in voters {
            let ep = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
                .map_err(|e| {
                    ApiError::new(
                        ErrorCode::InvalidConfig,
                        format!("controller address {addr:?}: {e}"),
                    )
                })?
                .connect_timeout(Duration::from_millis(500))
                .timeout(Duration::from_secs(15))
                .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
                .keep_alive_timeout(KEEPALIVE_TIMEOUT)
                .keep_alive_while_idle(true);
            chans.push((*id as i64, ep.connect_lazy()));
        }
        Ok(ControllerClient {
            voters: chans,
            current: Mutex::new(0),
            answered: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn set_current(&self, i: usize) {
        *self.current.lock() = i;
    }

    fn current(&self) -> usize {
        *self.current.lock()
    }

    /// Calls the active controller, retrying on NOT_CONTROLLER, connection failures and
    /// unanswered attempts for up to `patience`; remembers which controller answered, and after
    /// a failure starts the next call at another voter.
    pub async fn call<T, F, Fut>(&self, patience: Duration, mut f: F) -> Result<T, ApiError>
    where
        F: FnMut(GrpcClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let per_attempt = attempt_timeout(patience);
        let attempt = |c| {
            let fut = f(c);
            async move {
                match tokio::time::timeout(per_attempt, fut).await {
                    Ok(r) => r,
                    Err(_) => Err(tonic::Status::deadline_exceeded(format!(
                        "the controller did not answer within {per_attempt:?}"
                    ))),
                }
            }
        };
        let start = self.current();
        let (r, i) =
            match rill_protocol::client::call_controller(&self.voters, start, patience, attempt)
                .await
            {
                Ok(ok) => ok,
                Err(e) => {
                    if is_unreachable(&e) {
                        self.move_on_from(start);
                    }
                    return Err(e);
                }
            };
        self.set_current(i);
        self.answered
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(r)
    }

    /// As [`call`](Self::call), but a request the controller did not answer in time is not
    /// sent again: for requests that are not idempotent (creating or deleting topics, adding
    /// partitions), where a second attempt could answer TOPIC_ALREADY_EXISTS to the request
    /// that created the topic. The caller gets REQUEST_TIMED_OUT saying the outcome is unknown,
    /// as Kafka's brokers answer when the controller does not. Requests refused without being
    /// processed (NOT_CONTROLLER, no connection) are still sent to the next controller.
    pub async fn call_at_most_once<T, F, Fut>(
        &self,
        patience: Duration,
        mut f: F,
    ) -> Result<T, ApiError>
    where
        F: FnMut(GrpcClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let per_attempt = attempt_timeout(patience);
        let timed_out = std::sync::atomic::AtomicBool::new(false);
        let timed_out_ref = &timed_out;
        let r = self
            .call(patience, |c| {
                let fut = f(c);
                async move {
                    let r = match tokio::time::timeout(per_attempt, fut).await {
                        Ok(r) => r,
                        Err(_) => Err(tonic::Status::deadline_exceeded("")),
                    };
                    match r {
                        Err(s)
                            if matches!(
                                s.code(),
                                tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                            ) =>
                        {
                            // Stop the retries: the request may have been processed.
                            timed_out_ref.store(true, std::sync::atomic::Ordering::Release);
                            Err(ApiError::new(ErrorCode::UnknownServerError, "timed out").into())
                        }
                        other => other,
                    }
                }
            })
            .await;
        match r {
            Err(_) if timed_out.load(std::sync::atomic::Ordering::Acquire) => Err(ApiError::new(
                ErrorCode::RequestTimedOut,
                format!(
                    "the controller did not answer within {per_attempt:?}; the operation may or may not have been applied"
                ),
            )),
            other => other,
        }
    }

    /// Node id of the controller that last answered a call (the active one), -1 before any.
    pub fn active_controller_id(&self) -> i32 {
        if self.answered.load(std::sync::atomic::Ordering::Acquire) {
            self.voters[self.current()].0 as i32
        } else {
            -1
        }
    }

    /// After a call that started at voter `from` failed to reach an active controller: the
    /// next call starts at the voter after it (unless another call already moved on).
    pub fn move_on_from(&self, from: usize) {
        let mut current = self.current.lock();
        if *current == from && !self.voters.is_empty() {
            *current = (from + 1) % self.voters.len();
        }
    }

    /// The voter the next call starts at.
    pub fn start(&self) -> usize {
        self.current()
    }
}

/// Whether a failed call's error says no active controller was reached (as opposed to an
/// answer from one).
fn is_unreachable(e: &ApiError) -> bool {
    matches!(
        e.code,
        ErrorCode::NotController | ErrorCode::BrokerNotAvailable | ErrorCode::RequestTimedOut
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_leave_room_for_another_voter() {
        assert_eq!(
            attempt_timeout(Duration::from_secs(2)),
            Duration::from_secs(1)
        );
        assert_eq!(
            attempt_timeout(Duration::from_millis(200)),
            Duration::from_millis(500)
        );
        assert_eq!(
            attempt_timeout(Duration::from_secs(60)),
            Duration::from_secs(5)
        );
    }

    /// A listener that accepts connections and never answers: a controller cut off from the
    /// quorum and the broker, whose connections the network does not close. Its address, and
    /// the task holding the connections (it ends with the test's runtime).
    async fn silent_controller() -> (String, tokio::task::JoinHandle<()>) {
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap().to_string();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                held.push(s);
            }
        });
        (addr, hold)
    }

    #[tokio::test]
    async fn a_silent_controller_is_left_for_the_next() {
        let (silent_addr, _hold) = silent_controller().await;
        let cc = ControllerClient::new(&[(1, silent_addr), (2, "127.0.0.1:9".into())]).unwrap();
        let started = std::time::Instant::now();
        let r = cc
            .call(Duration::from_secs(1), |mut c| async move {
                c.describe_quorum(rill_protocol::proto::DescribeQuorumRequest {})
                    .await
            })
            .await;
        assert!(r.is_err());
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "a silent controller held the call for {:?}",
            started.elapsed()
        );
        assert_eq!(cc.start(), 1, "the next call starts at the other voter");
    }

    #[tokio::test]
    async fn a_request_unanswered_in_time_is_not_sent_again_when_at_most_once() {
        let (silent_addr, _hold) = silent_controller().await;
        let cc = ControllerClient::new(&[(1, silent_addr.clone()), (2, silent_addr)]).unwrap();
        let sent = std::sync::atomic::AtomicUsize::new(0);
        let r = cc
            .call_at_most_once(Duration::from_secs(2), |mut c| {
                sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                async move {
                    c.describe_quorum(rill_protocol::proto::DescribeQuorumRequest {})
                        .await
                }
            })
            .await;
        let e = r.expect_err("no controller answers");
        assert_eq!(e.code, ErrorCode::RequestTimedOut, "{e}");
        assert!(e.message.contains("may or may not"), "{e}");
        assert_eq!(sent.load(std::sync::atomic::Ordering::Relaxed), 1);
    }
}
