//! Test harness: real `rill-controller` and `rill-broker` processes on 127.0.0.1 with
//! ephemeral ports and temporary directories.
#![allow(dead_code)]

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rill_protocol::client::ClusterClient;
use rill_protocol::proto::*;

pub use rill_testkit::free_port;

/// A line of a Rust backtrace (`  12: frame` or `      at file:line`).
fn is_backtrace_line(line: &str) -> bool {
    let t = line.trim_start();
    t.starts_with("at ")
        || t == "Stack backtrace:"
        || t.split_once(':')
            .is_some_and(|(n, _)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

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
    /// The Kafka-protocol listener (`kafka.listeners`), when the cluster was started with one.
    pub kafka_addr: Option<String>,
    pub dir: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    pub controllers: Vec<Node>,
    pub brokers: Vec<Node>,
    pub voters: String,
    broker_overrides: Vec<String>,
    _tmp: tempfile::TempDir,
}

impl Cluster {
    pub async fn start(controllers: usize, brokers: usize, broker_overrides: &[&str]) -> Cluster {
        Self::start_inner(controllers, brokers, broker_overrides, false).await
    }

    /// As [`Cluster::start`], with a Kafka-protocol listener on every broker (`kafka_addr`).
    pub async fn start_with_kafka(
        controllers: usize,
        brokers: usize,
        broker_overrides: &[&str],
    ) -> Cluster {
        Self::start_inner(controllers, brokers, broker_overrides, true).await
    }

    async fn start_inner(
        controllers: usize,
        brokers: usize,
        broker_overrides: &[&str],
        kafka: bool,
    ) -> Cluster {
        let tmp = tempfile::tempdir().unwrap();
        let controllers: Vec<Node> = (0..controllers)
            .map(|i| Node {
                id: i as i32 + 1,
                addr: format!("127.0.0.1:{}", free_port()),
                kafka_addr: None,
                dir: tmp.path().join(format!("controller-{}", i + 1)),
                child: None,
            })
            .collect();
        let voters = controllers
            .iter()
            .map(|c| format!("{}@{}", c.id, c.addr))
            .collect::<Vec<_>>()
            .join(",");
        let brokers = (0..brokers)
            .map(|i| Node {
                id: i as i32 + 1,
                addr: format!("127.0.0.1:{}", free_port()),
                kafka_addr: kafka.then(|| format!("127.0.0.1:{}", free_port())),
                dir: tmp.path().join(format!("broker-{}", i + 1)),
                child: None,
            })
            .collect();
        let mut c = Cluster {
            controllers,
            brokers,
            voters,
            broker_overrides: broker_overrides.iter().map(|s| s.to_string()).collect(),
            _tmp: tmp,
        };
        for i in 0..c.controllers.len() {
            c.start_controller(i);
        }
        for i in 0..c.brokers.len() {
            c.start_broker(i);
        }
        c.wait_healthy().await;
        c
    }

    pub fn start_controller(&mut self, i: usize) {
        let n = &mut self.controllers[i];
        std::fs::create_dir_all(&n.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("stderr.log"))
            .unwrap();
        n.child = Some(
            Command::new(sibling("rill-controller"))
                .args([
                    "--node-id",
                    &n.id.to_string(),
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
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    pub fn start_broker(&mut self, i: usize) {
        let offsets_rf = self.brokers.len().min(3);
        let n = &mut self.brokers[i];
        std::fs::create_dir_all(&n.dir).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(n.dir.join("stderr.log"))
            .unwrap();
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
        .args([
            "--override",
            &format!("offsets.topic.replication.factor={offsets_rf}"),
        ])
        .stdout(Stdio::null())
        .stderr(log);
        if let Some(k) = &n.kafka_addr {
            cmd.args(["--override", &format!("kafka.listeners={k}")]);
        }
        for o in &self.broker_overrides {
            cmd.args(["--override", o]);
        }
        n.child = Some(cmd.spawn().unwrap());
    }

    pub fn kill_controller(&mut self, i: usize) {
        if let Some(mut c) = self.controllers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, …) to controller `i`.
    pub fn signal_controller(&self, i: usize, signal: &str) {
        let pid = self.controllers[i]
            .child
            .as_ref()
            .expect("controller running")
            .id();
        let status = Command::new("kill")
            .args([format!("-{signal}"), pid.to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} {pid}");
    }

    pub fn kill_broker(&mut self, i: usize) {
        if let Some(mut c) = self.brokers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn stop_broker(&mut self, i: usize) -> std::process::ExitStatus {
        let mut c = self.brokers[i].child.take().expect("broker running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(40);
        loop {
            if let Ok(Some(s)) = c.try_wait() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "broker did not stop after SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn bootstrap(&self) -> Vec<String> {
        self.brokers
            .iter()
            .filter(|b| b.child.is_some())
            .map(|b| b.addr.clone())
            .collect()
    }

    pub fn client(&self) -> ClusterClient {
        ClusterClient::new(&self.bootstrap(), Duration::from_secs(10)).unwrap()
    }

    /// Waits until every running broker is registered and unfenced.
    pub async fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let want = self.brokers.iter().filter(|b| b.child.is_some()).count();
        loop {
            let client = self.client();
            if let Ok(c) = client
                .admin(Duration::from_secs(2), |mut c| async move {
                    c.describe_cluster(DescribeClusterRequest {}).await
                })
                .await
            {
                let live = c.brokers.iter().filter(|b| !b.fenced).count();
                if live >= want {
                    return;
                }
            }
            if Instant::now() >= deadline {
                for n in self.brokers.iter().chain(&self.controllers) {
                    let log = std::fs::read_to_string(n.dir.join("stderr.log")).unwrap_or_default();
                    // A process that exited with an error ends its log with a backtrace; the
                    // lines worth showing are the ones before it.
                    let tail: Vec<&str> = log
                        .lines()
                        .rev()
                        .filter(|l| !is_backtrace_line(l))
                        .take(8)
                        .collect();
                    eprintln!(
                        "--- {} ---\n{}",
                        n.dir.display(),
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    );
                }
                panic!("cluster not healthy within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        rf: i32,
        configs: &[(&str, &str)],
    ) {
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
            .client()
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
            .await
            .unwrap();
        assert_eq!(r.topics[0].error_code, 0, "{}", r.topics[0].error_message);
        // Wait until every partition has a leader that knows it.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let client = self.client();
            if let Ok(parts) = client.partitions(name).await
                && parts.len() == partitions as usize
                && parts.iter().all(|p| p.leader >= 0)
            {
                let mut ready = true;
                for (i, p) in parts.iter().enumerate() {
                    let r = client
                        .broker(p.leader)
                        .unwrap()
                        .list_offsets(ListOffsetsRequest {
                            replica_id: None,
                            topics: vec![ListOffsetsTopic {
                                name: name.into(),
                                partitions: vec![ListOffsetsPartition {
                                    index: i as i32,
                                    current_leader_epoch: None,
                                    timestamp: -1,
                                }],
                            }],
                        })
                        .await;
                    ready &=
                        r.is_ok_and(|r| r.into_inner().topics[0].partitions[0].error_code == 0);
                }
                if ready {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "topic {name} not ready");
            tokio::time::sleep(Duration::from_millis(100)).await;
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

/// A plain HTTP/1.0 GET (status code, body), for the metrics endpoint.
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

/// The Python that runs the Kafka client tests: `$RILL_TEST_PYTHON`, else the venv
/// `cargo xtask ci` installs the client modules into (`target/python-clients`), else `python3`.
pub fn python3() -> String {
    if let Ok(p) = std::env::var("RILL_TEST_PYTHON") {
        return p;
    }
    let venv = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../target/python-clients/bin/python3"
    );
    if std::path::Path::new(venv).exists() {
        return venv.into();
    }
    "python3".into()
}

/// Whether [`python3`] can import `module` (the Python client tests skip, with a message, when
/// it cannot; `cargo xtask ci` installs the modules).
pub fn python_has(module: &str) -> bool {
    Command::new(python3())
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Runs `script` with `args` under [`python3`] (`timeout_secs` at most), from a file named
/// `name` in the first broker's directory; fails the test unless it exits 0 and prints `OK`.
/// Returns what it printed.
pub fn run_python_for(
    cluster: &Cluster,
    name: &str,
    script: &str,
    args: &[&str],
    timeout_secs: u32,
) -> String {
    let path = cluster.brokers[0].dir.join(name);
    std::fs::write(&path, script).unwrap();
    let output = Command::new("timeout")
        .arg(timeout_secs.to_string())
        .arg(python3())
        .arg(&path)
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.contains("OK"),
        "{name} failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// False (after a SKIPPED line) when [`python3`] cannot import `module`: the Python client
/// tests skip; `pip` names its package, `what` says what the test runs it as.
pub fn have(module: &str, pip: &str, what: &str) -> bool {
    if python_has(module) {
        return true;
    }
    eprintln!(
        "SKIPPED: {} cannot import {module} (pip install {pip}; `cargo xtask ci` installs it into \
         target/python-clients); this test runs it {what}",
        python3()
    );
    false
}

/// The first broker's Kafka listener (a cluster started with [`Cluster::start_with_kafka`]).
pub fn kafka_addr(cluster: &Cluster) -> String {
    cluster.brokers[0].kafka_addr.clone().unwrap()
}

/// Sends `records` with rill's gRPC producer (acks=all) and waits until every one is written.
pub async fn produce_grpc(cluster: &Cluster, records: Vec<rill_producer::ProducerRecord>) {
    let producer = rill_producer::Producer::new(rill_producer::ProducerConfig {
        bootstrap: cluster.bootstrap(),
        acks: -1,
        ..Default::default()
    })
    .unwrap();
    let mut pending = Vec::new();
    for record in records {
        pending.push(producer.send(record).await.unwrap());
    }
    for p in pending {
        p.await.unwrap();
    }
}

/// Reads `topic` from the earliest offset with rill's gRPC consumer (every partition assigned)
/// until `n` records came or 30 s passed; the records read.
pub async fn consume_grpc(
    cluster: &Cluster,
    topic: &str,
    n: usize,
) -> Vec<rill_consumer::ConsumerRecord> {
    let mut consumer = rill_consumer::Consumer::new(rill_consumer::ConsumerConfig {
        bootstrap: cluster.bootstrap(),
        auto_offset_reset: rill_consumer::OffsetReset::Earliest,
        ..Default::default()
    })
    .unwrap();
    let tps = consumer.partitions_of(topic).await.unwrap();
    consumer.assign(tps);
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while seen.len() < n && Instant::now() < deadline {
        seen.extend(consumer.poll(Duration::from_millis(500)).await.unwrap());
    }
    seen
}
