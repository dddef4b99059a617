//! A cluster of real `rill-controller` and `rill-broker` processes on 127.0.0.1 (ephemeral
//! ports, a temporary directory), with the faults scenarios need: SIGKILL, SIGTERM, SIGSTOP /
//! SIGCONT of one node, and restart on the same ports and data. Plus the questions scenarios
//! ask of it: who leads a partition, which controller is active, how large an ISR is.
//!
//! Every process is killed when the [`LocalCluster`] is dropped (paused ones are resumed first
//! so nothing is left stopped), so a failing test leaves nothing behind.

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rill_protocol::client::ClusterClient;
use rill_protocol::proto::broker_client::BrokerClient;
use rill_protocol::proto::controller_client::ControllerClient;
use rill_protocol::proto::*;
use tonic::transport::{Channel, Endpoint};

use crate::ChaosError;

/// Controller or broker.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    /// `rill-controller`.
    Controller,
    /// `rill-broker`.
    Broker,
}

/// One node, named as `cargo xtask cluster` names them: `controller-1`, `broker-2` (node id =
/// the number). Controllers sort before brokers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeName {
    #[allow(missing_docs)]
    pub role: Role,
    /// Its node id (1-based).
    pub id: i32,
}

impl NodeName {
    /// Broker `id`.
    pub fn broker(id: i32) -> Self {
        NodeName {
            role: Role::Broker,
            id,
        }
    }

    /// Controller `id`.
    pub fn controller(id: i32) -> Self {
        NodeName {
            role: Role::Controller,
            id,
        }
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.role {
            Role::Controller => write!(f, "controller-{}", self.id),
            Role::Broker => write!(f, "broker-{}", self.id),
        }
    }
}

impl std::str::FromStr for NodeName {
    type Err = ChaosError;
    fn from_str(s: &str) -> Result<Self, ChaosError> {
        let bad = || ChaosError::BadNodeName(s.to_owned());
        let (role, id) = s.rsplit_once('-').ok_or_else(bad)?;
        let id: i32 = id.parse().map_err(|_| bad())?;
        if id < 1 {
            return Err(bad());
        }
        match role {
            "controller" => Ok(NodeName::controller(id)),
            "broker" => Ok(NodeName::broker(id)),
            _ => Err(bad()),
        }
    }
}

/// What a cluster is started with.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// Number of controllers (voters).
    pub controllers: usize,
    /// Number of brokers.
    pub brokers: usize,
    /// `--override` properties for every broker.
    pub broker_overrides: Vec<String>,
    /// `--override` properties for every controller.
    pub controller_overrides: Vec<String>,
    /// Where `rill-broker` and `rill-controller` are; by default `RILL_BIN_DIR`, else the
    /// directory above the running test executable (`target/<profile>`).
    pub bin_dir: Option<PathBuf>,
}

impl Default for ClusterConfig {
    /// 3 controllers and 3 brokers with fast heartbeats and a short broker session (3 s), so
    /// fencing happens within a scenario's time budget; `log.flush.policy=commit` (acks mean
    /// fsynced) as `cargo xtask cluster up` runs.
    fn default() -> Self {
        ClusterConfig {
            controllers: 3,
            brokers: 3,
            broker_overrides: vec![
                "broker.heartbeat.interval.ms=200".into(),
                "log.flush.policy=commit".into(),
            ],
            controller_overrides: vec![
                "controller.quorum.tick.ms=50".into(),
                "controller.quorum.election.timeout.ms=500".into(),
                "broker.session.timeout.ms=3000".into(),
            ],
            bin_dir: None,
        }
    }
}

/// One process of the cluster.
#[derive(Debug)]
pub struct Node {
    /// Its name (`broker-2`).
    pub name: NodeName,
    /// Its gRPC address.
    pub addr: String,
    /// Its data directory (its log is `stderr.log` there).
    pub dir: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    /// True while its process runs (paused counts as running).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// True while it is stopped with SIGSTOP.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Its pid, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A partition as the brokers' metadata describes it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartitionState {
    /// Leader broker id, -1 when offline.
    pub leader: i32,
    /// Bumped by the controller on every leader change (-1 when unknown).
    pub leader_epoch: i32,
    /// Replicas, preferred leader first.
    pub replicas: Vec<i32>,
    /// In-sync replicas.
    pub isr: Vec<i32>,
}

/// The running cluster.
pub struct LocalCluster {
    /// Controllers, `controllers[i]` is `controller-{i+1}`.
    pub controllers: Vec<Node>,
    /// Brokers, `brokers[i]` is `broker-{i+1}`.
    pub brokers: Vec<Node>,
    voters: String,
    config: ClusterConfig,
    bin_dir: PathBuf,
    _tmp: tempfile::TempDir,
}

/// Where the harness finds `rill-broker` and `rill-controller`: `RILL_BIN_DIR`, else the
/// directory above the running test executable (`target/<profile>`).
pub fn default_bin_dir() -> Result<PathBuf, ChaosError> {
    if let Some(d) = std::env::var_os("RILL_BIN_DIR") {
        return Ok(PathBuf::from(d));
    }
    let exe = std::env::current_exe()?;
    // target/<profile>/deps/<test> → target/<profile>; target/<profile>/<bin> → target/<profile>.
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    Ok(dir)
}

/// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`) to `pid` with kill(1): no libc binding
/// needed for four signals.
pub fn signal(pid: u32, signal: &str) -> Result<(), ChaosError> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(ChaosError::Signal {
            pid,
            signal: signal.to_owned(),
        })
    }
}

impl LocalCluster {
    /// Starts the processes and waits (up to 30 s) until every broker is registered and
    /// unfenced.
    pub async fn start(config: ClusterConfig) -> Result<Self, ChaosError> {
        let bin_dir = match &config.bin_dir {
            Some(d) => d.clone(),
            None => default_bin_dir()?,
        };
        for b in ["rill-controller", "rill-broker"] {
            if !bin_dir.join(b).exists() {
                return Err(ChaosError::MissingBinary(bin_dir.join(b)));
            }
        }
        let tmp = tempfile::tempdir()?;
        let mut controllers = Vec::new();
        for i in 0..config.controllers {
            let name = NodeName::controller(i as i32 + 1);
            controllers.push(Node {
                name,
                addr: format!("127.0.0.1:{}", rill_testkit::free_port()),
                dir: tmp.path().join(name.to_string()),
                child: None,
                paused: false,
            });
        }
        let voters = controllers
            .iter()
            .map(|c| format!("{}@{}", c.name.id, c.addr))
            .collect::<Vec<_>>()
            .join(",");
        let mut brokers = Vec::new();
        for i in 0..config.brokers {
            let name = NodeName::broker(i as i32 + 1);
            brokers.push(Node {
                name,
                addr: format!("127.0.0.1:{}", rill_testkit::free_port()),
                dir: tmp.path().join(name.to_string()),
                child: None,
                paused: false,
            });
        }
        let mut c = LocalCluster {
            controllers,
            brokers,
            voters,
            config,
            bin_dir,
            _tmp: tmp,
        };
        let names: Vec<NodeName> = c.nodes().map(|n| n.name).collect();
        for n in names {
            c.start_node(n)?;
        }
        c.wait_healthy(Duration::from_secs(30)).await?;
        Ok(c)
    }

    /// Every node, controllers first.
    pub fn nodes(&self) -> impl Iterator<Item = &Node> {
        self.controllers.iter().chain(&self.brokers)
    }

    /// The node called `name`.
    pub fn node(&self, name: NodeName) -> Result<&Node, ChaosError> {
        let list = match name.role {
            Role::Controller => &self.controllers,
            Role::Broker => &self.brokers,
        };
        list.get((name.id - 1).max(0) as usize)
            .filter(|n| n.name == name)
            .ok_or(ChaosError::NoSuchNode(name))
    }

    fn node_mut(&mut self, name: NodeName) -> Result<&mut Node, ChaosError> {
        let list = match name.role {
            Role::Controller => &mut self.controllers,
            Role::Broker => &mut self.brokers,
        };
        list.get_mut((name.id - 1).max(0) as usize)
            .filter(|n| n.name == name)
            .ok_or(ChaosError::NoSuchNode(name))
    }

    /// Starts `name` (again) on its ports and data directory; its output is appended to
    /// `<dir>/stderr.log`. A node already running is left alone.
    pub fn start_node(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let voters = self.voters.clone();
        let bin_dir = self.bin_dir.clone();
        let overrides = match name.role {
            Role::Controller => self.config.controller_overrides.clone(),
            Role::Broker => self.config.broker_overrides.clone(),
        };
        let n = self.node_mut(name)?;
        if n.child.is_some() {
            return Ok(());
        }
        std::fs::create_dir_all(&n.dir)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("stderr.log"))?;
        let mut cmd = match name.role {
            Role::Controller => {
                let mut cmd = Command::new(bin_dir.join("rill-controller"));
                cmd.arg("--metadata-log-dir").arg(n.dir.join("metadata"));
                cmd
            }
            Role::Broker => {
                let mut cmd = Command::new(bin_dir.join("rill-broker"));
                cmd.arg("--log-dirs").arg(n.dir.join("logs"));
                cmd
            }
        };
        cmd.args(["--node-id", &name.id.to_string(), "--listeners", &n.addr])
            .args(["--voters", &voters])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        for o in overrides {
            cmd.args(["--override", &o]);
        }
        n.child = Some(cmd.spawn()?);
        n.paused = false;
        Ok(())
    }

    /// SIGKILL: the process dies at once, mid-write if need be.
    pub fn kill(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let n = self.node_mut(name)?;
        if let Some(mut c) = n.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        n.paused = false;
        Ok(())
    }

    /// SIGTERM and wait (up to 40 s, then SIGKILL): a graceful (controlled) shutdown.
    pub fn stop(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let n = self.node_mut(name)?;
        let Some(mut c) = n.child.take() else {
            return Ok(());
        };
        if n.paused {
            signal(c.id(), "CONT")?;
            n.paused = false;
        }
        signal(c.id(), "TERM")?;
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if c.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                return Err(ChaosError::Timeout(format!(
                    "{name} did not stop after SIGTERM"
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGSTOP: the process freezes (no heartbeats, no answers) but keeps its sockets and
    /// state, like a long GC pause or a VM stall.
    pub fn pause(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let n = self.node_mut(name)?;
        let pid = n.pid().ok_or(ChaosError::NotRunning(name))?;
        signal(pid, "STOP")?;
        n.paused = true;
        Ok(())
    }

    /// SIGCONT: a paused process carries on where it stopped.
    pub fn resume(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let n = self.node_mut(name)?;
        let pid = n.pid().ok_or(ChaosError::NotRunning(name))?;
        signal(pid, "CONT")?;
        n.paused = false;
        Ok(())
    }

    /// A Broker client talking to `name` itself (lazily connected), whatever the metadata
    /// says: to ask a deposed leader directly.
    pub fn broker_client(&self, name: NodeName) -> Result<BrokerClient<Channel>, ChaosError> {
        broker_client_at(&self.node(name)?.addr)
    }

    /// Waits until every running, unpaused broker is registered and unfenced.
    pub async fn wait_healthy(&self, patience: Duration) -> Result<(), ChaosError> {
        let want = self.live_brokers().len();
        self.wait_unfenced(want, patience)
            .await
            .map_err(|e| ChaosError::Timeout(format!("{e}; logs:\n{}", self.log_tails(8))))
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in self.nodes() {
            let log = std::fs::read_to_string(n.dir.join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(lines).collect();
            out.push_str(&format!("--- {} ---\n", n.name));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

impl ClusterView for LocalCluster {
    fn live_brokers(&self) -> Vec<(NodeName, String)> {
        self.brokers
            .iter()
            .filter(|b| b.is_running() && !b.paused)
            .map(|b| (b.name, b.addr.clone()))
            .collect()
    }

    fn live_controllers(&self) -> Vec<(NodeName, String)> {
        self.controllers
            .iter()
            .filter(|c| c.is_running() && !c.paused)
            .map(|c| (c.name, c.addr.clone()))
            .collect()
    }

    fn all_brokers(&self) -> Vec<String> {
        self.brokers.iter().map(|b| b.addr.clone()).collect()
    }
}

/// A Broker client for `addr` (lazily connected; 1 s to connect, 5 s per call).
pub fn broker_client_at(addr: &str) -> Result<BrokerClient<Channel>, ChaosError> {
    let ep = Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| ChaosError::Cluster(format!("bad address {addr}: {e}")))?;
    Ok(BrokerClient::new(
        ep.connect_timeout(Duration::from_secs(1))
            .timeout(Duration::from_secs(5))
            .connect_lazy(),
    ))
}

/// What fault scenarios ask of a cluster, whoever runs it: processes on 127.0.0.1
/// ([`LocalCluster`]) or containers ([`DockerCluster`](crate::docker::DockerCluster)).
///
/// The questions go to the *live* nodes only: those running, not paused and not on the
/// minority side of a network partition, whose answers describe the cluster as it is (a node
/// cut off keeps an old view of leaders and terms).
// The futures are awaited where they are made (no `Send` bound needed), so `async fn` is fine.
#[allow(async_fn_in_trait)]
pub trait ClusterView {
    /// `(name, address)` of the brokers whose answers count.
    fn live_brokers(&self) -> Vec<(NodeName, String)>;

    /// `(name, address)` of the controllers whose answers count.
    fn live_controllers(&self) -> Vec<(NodeName, String)>;

    /// Addresses of every broker, running or not (a client that must survive restarts).
    fn all_brokers(&self) -> Vec<String>;

    /// Addresses of the live brokers (all of them when none is live).
    fn bootstrap(&self) -> Vec<String> {
        let live: Vec<String> = self.live_brokers().into_iter().map(|(_, a)| a).collect();
        if live.is_empty() {
            self.all_brokers()
        } else {
            live
        }
    }

    /// A fresh cluster client over [`bootstrap`](Self::bootstrap).
    fn client(&self) -> Result<ClusterClient, ChaosError> {
        Ok(ClusterClient::new(
            &self.bootstrap(),
            Duration::from_secs(5),
        )?)
    }

    /// How many brokers the active controller counts as registered and unfenced, if it
    /// answers within 2 s.
    async fn unfenced_brokers(&self) -> Option<usize> {
        let client = self.client().ok()?;
        let c = client
            .admin(Duration::from_secs(2), |mut c| async move {
                c.describe_cluster(DescribeClusterRequest {}).await
            })
            .await
            .ok()?;
        Some(c.brokers.iter().filter(|b| !b.fenced).count())
    }

    /// Waits until at least `want` brokers are registered and unfenced.
    async fn wait_unfenced(&self, want: usize, patience: Duration) -> Result<(), ChaosError> {
        let deadline = Instant::now() + patience;
        loop {
            let have = self.unfenced_brokers().await;
            if have.is_some_and(|n| n >= want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ChaosError::Timeout(format!(
                    "{want} unfenced brokers wanted within {patience:?}, the controller counts {have:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates a topic and waits (15 s) until every partition has a leader.
    async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        rf: i32,
        configs: &[(&str, &str)],
    ) -> Result<(), ChaosError> {
        let topic = CreatableTopic {
            name: name.into(),
            num_partitions: partitions,
            replication_factor: rf,
            configs: configs
                .iter()
                .map(|(k, v)| ConfigEntry {
                    name: (*k).into(),
                    value: Some((*v).into()),
                })
                .collect(),
        };
        let r = self
            .client()?
            .admin(Duration::from_secs(10), |mut c| {
                let topic = topic.clone();
                async move {
                    c.create_topics(CreateTopicsRequest {
                        topics: vec![topic],
                        validate_only: false,
                    })
                    .await
                }
            })
            .await?;
        if let Some(t) = r.topics.first()
            && t.error_code != 0
        {
            return Err(ChaosError::Cluster(format!(
                "creating {name}: {}",
                t.error_message
            )));
        }
        for p in 0..partitions {
            self.wait_partition(name, p, Duration::from_secs(15), |s| s.leader >= 0)
                .await?;
        }
        Ok(())
    }

    /// The partition as each live broker's metadata shows it.
    async fn partition_views(
        &self,
        topic: &str,
        partition: i32,
    ) -> Vec<(NodeName, PartitionState)> {
        let mut out = Vec::new();
        for (name, addr) in self.live_brokers() {
            let Ok(ch) = Endpoint::from_shared(format!("http://{addr}")) else {
                continue;
            };
            let ch = ch
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2));
            let Ok(ch) = ch.connect().await else { continue };
            let Ok(r) = BrokerClient::new(ch)
                .metadata(MetadataRequest {
                    topics: vec![topic.to_owned()],
                })
                .await
            else {
                continue;
            };
            if let Some(p) = r
                .into_inner()
                .topics
                .iter()
                .find(|t| t.name == topic)
                .and_then(|t| t.partitions.iter().find(|p| p.index == partition))
            {
                out.push((
                    name,
                    PartitionState {
                        leader: p.leader_id,
                        leader_epoch: p.leader_epoch,
                        replicas: p.replicas.clone(),
                        isr: p.isr.clone(),
                    },
                ));
            }
        }
        out
    }

    /// The partition as the brokers agree on it (the newest leader epoch seen), if any answers.
    async fn partition_state(&self, topic: &str, partition: i32) -> Option<PartitionState> {
        self.partition_views(topic, partition)
            .await
            .into_iter()
            .map(|(_, s)| s)
            .max_by_key(|s| s.leader_epoch)
    }

    /// Waits until every live broker's view of the partition satisfies `ready`; returns it.
    async fn wait_partition(
        &self,
        topic: &str,
        partition: i32,
        patience: Duration,
        ready: impl Fn(&PartitionState) -> bool,
    ) -> Result<PartitionState, ChaosError> {
        let deadline = Instant::now() + patience;
        loop {
            let views = self.partition_views(topic, partition).await;
            if !views.is_empty() && views.iter().all(|(_, s)| ready(s)) {
                return Ok(views[0].1.clone());
            }
            if Instant::now() >= deadline {
                return Err(ChaosError::Timeout(format!(
                    "{topic}-{partition} did not reach the wanted state within {patience:?}; brokers see {views:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The leader of a partition (waits up to `patience` for one).
    async fn leader_of(
        &self,
        topic: &str,
        partition: i32,
        patience: Duration,
    ) -> Result<NodeName, ChaosError> {
        let s = self
            .wait_partition(topic, partition, patience, |s| s.leader >= 0)
            .await?;
        Ok(NodeName::broker(s.leader))
    }

    /// Waits until the partition's ISR has exactly `n` members; returns the state.
    async fn wait_isr(
        &self,
        topic: &str,
        partition: i32,
        n: usize,
        patience: Duration,
    ) -> Result<PartitionState, ChaosError> {
        self.wait_partition(topic, partition, patience, |s| s.isr.len() == n)
            .await
    }

    /// The Raft state as each live controller that answers reports it. Only the active
    /// controller answers (after a ReadIndex proved it still leads), so this is at most one
    /// entry unless a deposed leader has not noticed yet.
    async fn quorum_views(&self) -> Vec<(NodeName, DescribeQuorumResponse)> {
        let mut out = Vec::new();
        for (name, addr) in self.live_controllers() {
            let Ok(ep) = Endpoint::from_shared(format!("http://{addr}")) else {
                continue;
            };
            let Ok(ch) = ep
                .connect_timeout(Duration::from_secs(1))
                .timeout(Duration::from_secs(2))
                .connect()
                .await
            else {
                continue;
            };
            if let Ok(r) = ControllerClient::new(ch)
                .describe_quorum(DescribeQuorumRequest {})
                .await
            {
                out.push((name, r.into_inner()));
            }
        }
        out
    }

    /// The active controller: the leader named in the newest term the live controllers
    /// report, when it is live itself (waits up to `patience` for an election).
    async fn active_controller(&self, patience: Duration) -> Result<NodeName, ChaosError> {
        let deadline = Instant::now() + patience;
        loop {
            let live: Vec<NodeName> = self
                .live_controllers()
                .into_iter()
                .map(|(n, _)| n)
                .collect();
            let views: Vec<(NodeName, i32, u64)> = self
                .quorum_views()
                .await
                .into_iter()
                .map(|(asked, q)| (asked, q.leader_id, q.leader_epoch))
                .collect();
            if let Some(&(_, leader, _)) = views
                .iter()
                .filter(|(_, leader, _)| *leader > 0)
                .max_by_key(|(_, _, term)| *term)
                && live.contains(&NodeName::controller(leader))
            {
                return Ok(NodeName::controller(leader));
            }
            if Instant::now() >= deadline {
                return Err(ChaosError::Timeout(format!(
                    "no active controller within {patience:?}; the controllers report (asked, leader, term) {views:?}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for n in self.brokers.iter_mut().chain(self.controllers.iter_mut()) {
            if let Some(mut c) = n.child.take() {
                if n.paused {
                    let _ = signal(c.id(), "CONT");
                }
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_parse_as_xtask_prints_them() -> Result<(), ChaosError> {
        let b: NodeName = "broker-2".parse()?;
        assert_eq!(b, NodeName::broker(2));
        assert_eq!(b.to_string(), "broker-2");
        let c: NodeName = "controller-1".parse()?;
        assert_eq!(c, NodeName::controller(1));
        for bad in ["broker", "broker-0", "broker-x", "node-1", ""] {
            assert!(bad.parse::<NodeName>().is_err(), "{bad}");
        }
        Ok(())
    }
}
