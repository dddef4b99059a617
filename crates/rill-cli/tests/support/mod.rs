//! A small real-process cluster for the replication admin tests: like rill-broker's test
//! harness, but the controllers take config overrides too (shortened leader-imbalance checks),
//! and brokers can join later or be stopped and restarted.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rill_protocol::client::ClusterClient;
use rill_protocol::proto::*;

pub use rill_testkit::free_port;

/// A workspace binary next to the test executable (`target/<profile>/<name>`).
pub fn sibling(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    let p = dir.join(name);
    assert!(
        p.exists(),
        "{} is not built; run `cargo build --workspace --bins` (cargo xtask ci does)",
        p.display()
    );
    p
}

pub struct Node {
    pub id: i32,
    pub addr: String,
    pub dir: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub controllers: Vec<Node>,
    pub brokers: Vec<Node>,
    voters: String,
    controller_overrides: Vec<String>,
    broker_overrides: Vec<String>,
    _tmp: tempfile::TempDir,
}

fn log_file(dir: &std::path::Path) -> std::fs::File {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("stderr.log"))
        .unwrap()
}

impl Cluster {
    /// One controller and `brokers` broker slots, of which the first `running` start now.
    pub async fn start(
        brokers: usize,
        running: usize,
        controller_overrides: &[&str],
        broker_overrides: &[&str],
    ) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let controller = Node {
            id: 1,
            addr: format!("127.0.0.1:{}", free_port()),
            dir: tmp.path().join("controller-1"),
            child: None,
        };
        let voters = format!("1@{}", controller.addr);
        let brokers = (0..brokers)
            .map(|i| Node {
                id: i as i32 + 1,
                addr: format!("127.0.0.1:{}", free_port()),
                dir: tmp.path().join(format!("broker-{}", i + 1)),
                child: None,
            })
            .collect();
        let mut c = Cluster {
            controllers: vec![controller],
            brokers,
            voters,
            controller_overrides: controller_overrides.iter().map(|s| s.to_string()).collect(),
            broker_overrides: broker_overrides.iter().map(|s| s.to_string()).collect(),
            _tmp: tmp,
        };
        c.start_controller();
        for i in 0..running {
            c.start_broker(i);
        }
        c.wait_live(running).await;
        c
    }

    fn start_controller(&mut self) {
        let n = &mut self.controllers[0];
        let mut cmd = Command::new(sibling("rill-controller"));
        cmd.args([
            "--node-id",
            "1",
            "--listeners",
            &n.addr,
            "--voters",
            &self.voters,
        ])
        .arg("--metadata-log-dir")
        .arg(n.dir.join("metadata"))
        .args([
            "--override",
            "controller.quorum.tick.ms=50",
            "--override",
            "controller.quorum.election.timeout.ms=500",
        ])
        .stdout(Stdio::null())
        .stderr(log_file(&n.dir));
        for o in &self.controller_overrides {
            cmd.args(["--override", o]);
        }
        n.child = Some(cmd.spawn().unwrap());
    }

    pub fn start_broker(&mut self, i: usize) {
        let n = &mut self.brokers[i];
        let mut cmd = Command::new(sibling("rill-broker"));
        cmd.args([
            "--node-id",
            &n.id.to_string(),
            "--listeners",
            &n.addr,
            "--voters",
            &self.voters,
        ])
        .arg("--log-dirs")
        .arg(n.dir.join("logs"))
        .args(["--override", "broker.heartbeat.interval.ms=200"])
        .stdout(Stdio::null())
        .stderr(log_file(&n.dir));
        for o in &self.broker_overrides {
            cmd.args(["--override", o]);
        }
        n.child = Some(cmd.spawn().unwrap());
    }

    /// SIGTERM (a controlled shutdown: the controller moves the broker's leaderships first)
    /// and wait for the exit.
    pub fn stop_broker(&mut self, i: usize) {
        let mut c = self.brokers[i].child.take().expect("broker running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        while c.try_wait().ok().flatten().is_none() {
            assert!(
                Instant::now() < deadline,
                "broker did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn bootstrap(&self) -> String {
        self.brokers
            .iter()
            .filter(|b| b.child.is_some())
            .map(|b| b.addr.clone())
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn client(&self) -> ClusterClient {
        let servers: Vec<String> = self.bootstrap().split(',').map(str::to_owned).collect();
        ClusterClient::new(&servers, Duration::from_secs(10)).unwrap()
    }

    /// Waits until at least `want` brokers are registered and unfenced.
    pub async fn wait_live(&self, want: usize) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(c) = self
                .client()
                .admin(Duration::from_secs(2), |mut c| async move {
                    c.describe_cluster(DescribeClusterRequest {}).await
                })
                .await
                && c.brokers.iter().filter(|b| !b.fenced).count() >= want
            {
                return;
            }
            if Instant::now() >= deadline {
                self.dump_logs();
                panic!("{want} brokers not live within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn dump_logs(&self) {
        for n in self.brokers.iter().chain(&self.controllers) {
            let log = std::fs::read_to_string(n.dir.join("stderr.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(15).collect();
            eprintln!(
                "--- {} ---\n{}",
                n.dir.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
    }

    /// The partitions of `topic` as the brokers report them.
    pub async fn partitions(&self, topic: &str) -> Vec<PartitionMetadata> {
        match self.client().refresh(&[topic.to_owned()]).await {
            Ok(md) => md
                .topics
                .into_iter()
                .find(|t| t.name == topic)
                .map(|t| t.partitions)
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        }
    }

    /// Polls `topic`'s partitions until `ok` holds, for up to `within`; the last state seen.
    pub async fn wait_for(
        &self,
        topic: &str,
        within: Duration,
        what: &str,
        ok: impl Fn(&[PartitionMetadata]) -> bool,
    ) -> Vec<PartitionMetadata> {
        let deadline = Instant::now() + within;
        loop {
            let parts = self.partitions(topic).await;
            if !parts.is_empty() && ok(&parts) {
                return parts;
            }
            if Instant::now() >= deadline {
                self.dump_logs();
                panic!("{what} within {within:?}; last seen: {parts:?}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for n in self.brokers.iter_mut().chain(self.controllers.iter_mut()) {
            if let Some(mut c) = n.child.take() {
                let _ = c.kill();
                let _ = c.wait();
            }
        }
    }
}
