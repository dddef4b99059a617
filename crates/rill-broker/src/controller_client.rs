//! Talks to the controller quorum: finds the active controller, follows NOT_CONTROLLER hints,
//! fails over when a controller is unreachable.

use std::time::Duration;

use rill_protocol::proto::controller_client::ControllerClient as GrpcClient;
use rill_protocol::{ApiError, ErrorCode};

use parking_lot::Mutex;
use tonic::transport::Channel;

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
                .timeout(Duration::from_secs(15));
            chans.push((*id as i64, ep.connect_lazy()));
        }
        Ok(ControllerClient {
            voters: chans,
            current: Mutex::new(0),
            answered: std::sync::atomic::AtomicBool::new(false),
        })
    }

    fn client(&self, i: usize) -> GrpcClient<Channel> {
        GrpcClient::new(self.voters[i].1.clone()).max_decoding_message_size(256 << 20)
    }

    fn set_current(&self, i: usize) {
        *self.current.lock() = i;
    }

    fn current(&self) -> usize {
        *self.current.lock()
    }

    /// Calls the active controller, retrying on NOT_CONTROLLER and connection failures for up
    /// to `patience`; remembers which controller answered.
    pub async fn call<T, F, Fut>(&self, patience: Duration, f: F) -> Result<T, ApiError>
    where
        F: FnMut(GrpcClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (r, i) =
            rill_protocol::client::call_controller(&self.voters, self.current(), patience, f)
                .await?;
        self.set_current(i);
        self.answered
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(r)
    }

    /// Node id of the controller that last answered a call (the active one), -1 before any.
    pub fn active_controller_id(&self) -> i32 {
        if self.answered.load(std::sync::atomic::Ordering::Acquire) {
            self.voters[self.current()].0 as i32
        } else {
            -1
        }
    }

    /// Any controller that answers (for the metadata stream, which every controller serves).
    pub fn any(&self, attempt: usize) -> GrpcClient<Channel> {
        self.client((self.current() + attempt) % self.voters.len())
    }
}
