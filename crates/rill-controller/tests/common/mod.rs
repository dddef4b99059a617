//! Test harness: real `rill-controller` processes on 127.0.0.1 with ephemeral ports and
//! temporary directories, and a client that follows NOT_CONTROLLER hints like a real one.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rill_protocol::proto::controller_client::ControllerClient;
use rill_protocol::proto::*;
use rill_protocol::{ApiError, ErrorCode};
use tonic::transport::Channel;

pub struct ControllerProc {
    pub id: u64,
    pub addr: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

pub struct Quorum {
    pub procs: Vec<ControllerProc>,
    pub voters: String,
    overrides: Vec<String>,
    _tmp: tempfile::TempDir,
}

pub use rill_testkit::free_port;

impl Quorum {
    pub fn start(n: usize, overrides: &[&str]) -> Quorum {
        let tmp = tempfile::tempdir().unwrap();
        let ports: Vec<u16> = (0..n).map(|_| free_port()).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, p)| format!("{}@127.0.0.1:{p}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let procs = ports
            .iter()
            .enumerate()
            .map(|(i, p)| ControllerProc {
                id: i as u64 + 1,
                addr: format!("127.0.0.1:{p}"),
                dir: tmp.path().join(format!("controller-{}", i + 1)),
                child: None,
            })
            .collect();
        let mut q = Quorum {
            procs,
            voters,
            overrides: overrides.iter().map(|s| s.to_string()).collect(),
            _tmp: tmp,
        };
        for i in 0..n {
            q.spawn(i);
        }
        q
    }

    pub fn spawn(&mut self, i: usize) {
        let p = &mut self.procs[i];
        std::fs::create_dir_all(&p.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p.dir.join("stderr.log"))
            .unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_rill-controller"));
        cmd.arg("--node-id")
            .arg(p.id.to_string())
            .arg("--listeners")
            .arg(&p.addr)
            .arg("--voters")
            .arg(&self.voters)
            .arg("--metadata-log-dir")
            .arg(p.dir.join("metadata"))
            .arg("--override")
            .arg("controller.quorum.tick.ms=50")
            .arg("--override")
            .arg("controller.quorum.election.timeout.ms=500")
            .env("RUST_LOG", "info,raft=warn")
            .stdout(Stdio::null())
            .stderr(log);
        for o in &self.overrides {
            cmd.arg("--override").arg(o);
        }
        p.child = Some(cmd.spawn().expect("start rill-controller"));
    }

    /// SIGKILL, no graceful shutdown.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits up to `within` for controller `i` to exit on its own; its exit status, if it did.
    pub fn wait_exit(&mut self, i: usize, within: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            let child = self.procs[i].child.as_mut()?;
            if let Ok(Some(status)) = child.try_wait() {
                self.procs[i].child = None;
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What controller `i` logged so far (stderr).
    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.procs[i].dir.join("stderr.log")).unwrap_or_default()
    }

    /// Opens a metadata stream on controller `i` only (no retries, no hints followed).
    pub async fn fetch_metadata(
        &self,
        i: usize,
        from_offset: i64,
    ) -> Result<tonic::Streaming<MetadataBatch>, tonic::Status> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.procs[i].addr))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .connect_lazy();
        ControllerClient::new(ch)
            .fetch_metadata(FetchMetadataRequest {
                broker_id: -1,
                from_offset,
            })
            .await
            .map(tonic::Response::into_inner)
    }

    /// SIGTERM and wait for a clean exit.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut c) = self.procs[i].child.take() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(c.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(status)) = c.try_wait() {
                    assert!(status.success(), "controller exited with {status}");
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            panic!("controller {} did not stop within 10 s of SIGTERM", i + 1);
        }
    }

    pub async fn client(&self, i: usize) -> ControllerClient<Channel> {
        let ch = tonic::transport::Endpoint::from_shared(format!("http://{}", self.procs[i].addr))
            .unwrap()
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(10))
            .connect_lazy();
        ControllerClient::new(ch)
    }

    /// Index of the controller the quorum agrees leads, waiting up to `within`.
    pub async fn leader(&self, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            for i in 0..self.procs.len() {
                if self.procs[i].child.is_none() {
                    continue;
                }
                if let Ok(r) = self
                    .client(i)
                    .await
                    .describe_quorum(DescribeQuorumRequest {})
                    .await
                {
                    let leader = r.into_inner().leader_id as usize;
                    if leader == i + 1 {
                        return i;
                    }
                }
            }
            assert!(Instant::now() < deadline, "no leader within {within:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Runs `f` against controller `start`, following NOT_CONTROLLER hints and retrying while no
    /// leader is known, for up to 15 s.
    pub async fn call<T, F, Fut>(&self, start: usize, mut f: F) -> Result<T, ApiError>
    where
        F: FnMut(ControllerClient<Channel>) -> Fut,
        Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let deadline = Instant::now() + Duration::from_secs(15);
        let mut target = start;
        loop {
            match f(self.client(target).await).await {
                Ok(r) => return Ok(r.into_inner()),
                Err(status) => {
                    let e = ApiError::from(status);
                    let retriable = matches!(
                        e.code,
                        ErrorCode::NotController
                            | ErrorCode::BrokerNotAvailable
                            | ErrorCode::RequestTimedOut
                    );
                    if !retriable || Instant::now() > deadline {
                        return Err(e);
                    }
                    if let Some(hint) = &e.leader_hint
                        && let Some((id, _)) = hint.split_once('@')
                        && let Ok(id) = id.parse::<usize>()
                        && id >= 1
                        && id <= self.procs.len()
                        && self.procs[id - 1].child.is_some()
                    {
                        target = id - 1;
                    } else {
                        target = (target + 1) % self.procs.len();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        }
    }

    /// The full metadata image as seen by controller `i` (a snapshot from offset 0), waiting for
    /// the process to listen.
    pub async fn image(&self, i: usize) -> MetadataBatch {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let attempt = async {
                let mut stream = self
                    .client(i)
                    .await
                    .fetch_metadata(FetchMetadataRequest {
                        broker_id: -1,
                        from_offset: 0,
                    })
                    .await?
                    .into_inner();
                stream
                    .message()
                    .await?
                    .ok_or_else(|| tonic::Status::unavailable("empty stream"))
            };
            match attempt.await {
                Ok(batch) => return batch,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => panic!("controller {} serves no metadata: {e}", i + 1),
            }
        }
    }
}

impl Drop for Quorum {
    fn drop(&mut self) {
        for i in 0..self.procs.len() {
            self.kill(i);
        }
    }
}

/// A broker as the controller sees it: registers, heartbeats (in the background), can stop.
pub struct FakeBroker {
    pub id: i32,
    pub epoch: i64,
    stop: tokio_util::sync::CancellationToken,
}

impl FakeBroker {
    pub async fn start(q: &Quorum, id: i32) -> FakeBroker {
        let incarnation = format!("incarnation-{id}-{}", free_port());
        let reg = q
            .call(0, |mut c| {
                let incarnation = incarnation.clone();
                async move {
                    c.broker_registration(BrokerRegistrationRequest {
                        broker_id: id,
                        cluster_id: String::new(),
                        incarnation_id: incarnation,
                        listeners: vec![Endpoint {
                            name: "PLAINTEXT".into(),
                            host: "127.0.0.1".into(),
                            port: 9000 + id as u32,
                        }],
                        rack: None,
                    })
                    .await
                }
            })
            .await
            .unwrap();
        let epoch = reg.broker_epoch;
        let stop = tokio_util::sync::CancellationToken::new();
        let addrs: Vec<String> = q.procs.iter().map(|p| p.addr.clone()).collect();
        let token = stop.clone();
        tokio::spawn(async move {
            let mut target = 0;
            while !token.is_cancelled() {
                let ch =
                    tonic::transport::Endpoint::from_shared(format!("http://{}", addrs[target]))
                        .unwrap()
                        .connect_lazy();
                let r = ControllerClient::new(ch)
                    .broker_heartbeat(BrokerHeartbeatRequest {
                        broker_id: id,
                        broker_epoch: epoch,
                        current_metadata_offset: i64::MAX,
                        want_fence: false,
                        want_shut_down: false,
                    })
                    .await;
                if r.is_err() {
                    target = (target + 1) % addrs.len();
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        });
        // Wait until unfenced.
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let cluster = q
                .call(0, |mut c| async move {
                    c.describe_cluster(DescribeClusterRequest {}).await
                })
                .await
                .unwrap();
            if cluster.brokers.iter().any(|b| b.node_id == id && !b.fenced) {
                break;
            }
            assert!(Instant::now() < deadline, "broker {id} was never unfenced");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        FakeBroker { id, epoch, stop }
    }

    /// Stops heartbeating (the broker "dies").
    pub fn stop_heartbeats(&self) {
        self.stop.cancel();
    }
}

impl Drop for FakeBroker {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The metadata image a batch from offset 0 describes (a snapshot, or every record since 0).
pub fn image_of(batch: &MetadataBatch) -> rill_protocol::metadata_image::MetadataImage {
    if batch.is_snapshot {
        rill_protocol::metadata_image::MetadataImage::from_snapshot(
            &batch.records,
            batch.last_offset,
        )
    } else {
        let mut image = rill_protocol::metadata_image::MetadataImage::default();
        for r in &batch.records {
            image.apply(r);
        }
        image.next_offset = batch.last_offset + 1;
        image
    }
}

pub fn topic(name: &str, partitions: i32, rf: i32) -> CreatableTopic {
    CreatableTopic {
        name: name.into(),
        num_partitions: partitions,
        replication_factor: rf,
        configs: vec![],
    }
}

pub async fn create(q: &Quorum, via: usize, topics: Vec<CreatableTopic>) -> CreateTopicsResponse {
    q.call(via, |mut c| {
        let topics = topics.clone();
        async move {
            c.create_topics(CreateTopicsRequest {
                topics,
                validate_only: false,
            })
            .await
        }
    })
    .await
    .unwrap()
}

/// A plain HTTP/1.0 GET (status code, body), for the metrics endpoints.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// One topic config change (`operation`: 0 SET, 1 DELETE, anything else unknown).
pub fn topic_config(topic: &str, name: &str, operation: i32, value: &str) -> AlterConfigsResource {
    AlterConfigsResource {
        topic: topic.into(),
        configs: vec![AlterableConfig {
            name: name.into(),
            operation,
            value: Some(value.into()),
        }],
        ..Default::default()
    }
}

/// IncrementalAlterConfigs of `resources`, through any controller.
pub async fn alter_configs(
    q: &Quorum,
    resources: Vec<AlterConfigsResource>,
) -> IncrementalAlterConfigsResponse {
    let request = IncrementalAlterConfigsRequest {
        resources,
        validate_only: false,
    };
    q.call(0, |mut c| {
        let request = request.clone();
        async move { c.incremental_alter_configs(request).await }
    })
    .await
    .unwrap()
}
