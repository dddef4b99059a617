//! A cluster of containers: the 3 controllers and 3 brokers of `deploy/compose/`, each its own
//! container with its own address on a project network, and the faults that need real hosts:
//! a node cut off from the others (iptables in its network namespace, or `docker network
//! disconnect`), `docker pause`, `docker kill`, `docker stop` and `docker start` on the same
//! volume.
//!
//! [`DockerCluster::up`] starts the workspace's compose file under a project name of its own
//! (`rillchaos-<pid>-<n>`), so several clusters (parallel tests, a `cargo xtask compose`
//! cluster) run side by side. The file is used as it is, except for what would clash between
//! them, rewritten in a temporary copy: the subnet (a free `10.213.X.0/24` instead of
//! `10.213.13.0/24`, in the compose file and both `.toml` files), the fixed container names,
//! the network's fixed name and the ports published on the host. A second file overrides the
//! image tag, the restart policy (`no`: a crash must show, not be hidden by a restart) and
//! adds `RILL_*` settings (faster timers).
//!
//! Clients run on the host and talk to the containers' own addresses, which Docker on Linux
//! routes from the host (the brokers advertise them). A partition made with
//! [`partition`](DockerCluster::partition) drops traffic between nodes only: the host still
//! reaches every node, so a test can ask a cut-off leader directly whether it acknowledges
//! anything. That needs root (`nsenter` into the container's network namespace).
//!
//! Everything is removed when the [`DockerCluster`] is dropped (`down --volumes`, then anything
//! left with the project's label), and clusters left behind by test processes that no longer
//! exist are removed by the next [`up`](DockerCluster::up).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::ChaosError;
use crate::cluster::{ClusterView, NodeName, Role};

/// The port every broker listens on and advertises (the image's `RILL_LISTENERS`).
pub const BROKER_PORT: u16 = 9092;
/// The port every controller listens on (the image's `RILL_LISTENERS`).
pub const CONTROLLER_PORT: u16 = 9093;
/// The label `cargo xtask image` gives each image: the binaries it was built from, as
/// [`binaries_fingerprint`] writes them.
pub const BINARIES_LABEL: &str = "org.rill.binaries";
/// The subnet of `deploy/compose/` (its first three octets), replaced by a free one.
const COMPOSE_PREFIX: &str = "10.213.13.";
/// Project names of the clusters this module starts: `rillchaos-<pid>-<n>`.
const PROJECT_PREFIX: &str = "rillchaos-";

/// The server images a cluster runs and the binaries in each (`cargo xtask image`).
pub const SERVER_IMAGES: [(&str, &[&str]); 2] = [
    ("rill-controller", &["rill-controller", "rill-healthcheck"]),
    ("rill-broker", &["rill-broker", "rill-healthcheck"]),
];

/// What a [`DockerCluster`] is started from.
#[derive(Clone, Debug)]
pub struct DockerConfig {
    /// The compose file (its `controller.toml` and `broker.toml` are read from beside it).
    pub compose_file: PathBuf,
    /// The tag of `rill-controller` and `rill-broker` to run.
    pub image_tag: String,
    /// `RILL_*` settings added to every controller.
    pub controller_env: Vec<(String, String)>,
    /// `RILL_*` settings added to every broker.
    pub broker_env: Vec<(String, String)>,
    /// How long [`DockerCluster::up`] waits for every container to be healthy.
    pub startup: Duration,
}

impl DockerConfig {
    /// The workspace's `deploy/compose/docker-compose.yml` with the images `cargo xtask image
    /// --profile dev` built for the binaries the tests run
    /// ([`default_bin_dir`](crate::cluster::default_bin_dir), checked by [`test_images`]), and
    /// faster timers than the defaults, so faults play out within a test: broker heartbeats
    /// every 500 ms and a 4 s broker session, replicas out of the ISR after 10 s behind, group
    /// members heartbeating every 500 ms with a 6 s session, 6 `__consumer_offsets`
    /// partitions.
    pub fn for_tests() -> Result<Self, ChaosError> {
        let image_tag = test_images(&crate::cluster::default_bin_dir()?)?;
        let env = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect()
        };
        Ok(DockerConfig {
            compose_file: workspace_root().join("deploy/compose/docker-compose.yml"),
            image_tag,
            controller_env: env(&[("RILL_BROKER_SESSION_TIMEOUT_MS", "4000")]),
            broker_env: env(&[
                ("RILL_BROKER_HEARTBEAT_INTERVAL_MS", "500"),
                ("RILL_REPLICA_LAG_TIME_MAX_MS", "10000"),
                ("RILL_OFFSETS_TOPIC_NUM_PARTITIONS", "6"),
                ("RILL_GROUP_CONSUMER_HEARTBEAT_INTERVAL_MS", "500"),
                ("RILL_GROUP_CONSUMER_SESSION_TIMEOUT_MS", "6000"),
            ]),
            startup: Duration::from_secs(120),
        })
    }
}

/// The workspace this crate was built in.
pub fn workspace_root() -> PathBuf {
    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).unwrap_or(here).to_path_buf()
}

/// The tag `cargo xtask image --profile dev` gives the images of the binaries in `bin_dir`:
/// `test-` and the FNV-1a hash of the directory's canonical path, so every checkout (and
/// profile) on one Docker daemon has its own images and none overwrites another's.
pub fn test_image_tag(bin_dir: &Path) -> String {
    let dir = bin_dir
        .canonicalize()
        .unwrap_or_else(|_| bin_dir.to_path_buf());
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in dir.to_string_lossy().bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("test-{hash:016x}")
}

/// What identifies a build of `binaries` in `bin_dir`: `name:size:mtime-ns` of each, joined by
/// commas (`cargo xtask image` stores it in the label [`BINARIES_LABEL`]).
pub fn binaries_fingerprint(bin_dir: &Path, binaries: &[&str]) -> Result<String, ChaosError> {
    let mut parts = Vec::new();
    for name in binaries {
        let path = bin_dir.join(name);
        let meta = std::fs::metadata(&path).map_err(|_| ChaosError::MissingBinary(path.clone()))?;
        let mtime = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        parts.push(format!("{name}:{}:{mtime}", meta.len()));
    }
    Ok(parts.join(","))
}

/// Checks that the images for the binaries in `bin_dir` exist and were built from exactly
/// those binaries; returns their tag. Fails with what to run otherwise: a test must not run
/// an older build than the one it was compiled with.
pub fn test_images(bin_dir: &Path) -> Result<String, ChaosError> {
    require_docker()?;
    let tag = test_image_tag(bin_dir);
    let profile = if bin_dir.ends_with("release") {
        "release"
    } else {
        "dev"
    };
    let build = format!("cargo xtask image --profile {profile} --no-build");
    for (image, binaries) in SERVER_IMAGES {
        let want = binaries_fingerprint(bin_dir, binaries)?;
        let reference = format!("{image}:{tag}");
        let label = docker(&[
            "image",
            "inspect",
            "--format",
            &format!("{{{{index .Config.Labels \"{BINARIES_LABEL}\"}}}}"),
            &reference,
        ]);
        match label {
            Err(_) => {
                return Err(ChaosError::Docker(format!(
                    "the image {reference} (the binaries in {}) is missing: run `{build}` (`cargo xtask ci` does)",
                    bin_dir.display()
                )));
            }
            Ok(have) if have.trim() != want => {
                return Err(ChaosError::Docker(format!(
                    "the image {reference} was built from other binaries than those in {} now ({} vs {want}): run `{build}` (`cargo xtask ci` does)",
                    bin_dir.display(),
                    have.trim()
                )));
            }
            Ok(_) => {}
        }
    }
    Ok(tag)
}

/// Fails with a clear message when the docker CLI or daemon is not there.
pub fn require_docker() -> Result<(), ChaosError> {
    match Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
    {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(ChaosError::Docker(format!(
            "the Docker daemon does not answer (`docker version`: {}): the docker fault scenarios need Docker Engine running and usable by this user",
            String::from_utf8_lossy(&o.stderr).trim()
        ))),
        Err(e) => Err(ChaosError::Docker(format!(
            "the docker CLI cannot be run ({e}): the docker fault scenarios need Docker Engine and its CLI"
        ))),
    }
}

/// Runs `program args` and returns its standard output, or its standard error as the error.
fn run(program: &str, args: &[&str]) -> Result<String, ChaosError> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| ChaosError::Docker(format!("cannot run {program}: {e}")))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(ChaosError::Docker(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn docker(args: &[&str]) -> Result<String, ChaosError> {
    run("docker", args)
}

/// [`run`] on a blocking thread, so a slow command (`docker stop` waits for a controlled
/// shutdown) does not hold up the runtime the workload runs on.
async fn run_async(program: &str, args: &[&str]) -> Result<String, ChaosError> {
    let program = program.to_owned();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run(&program, &args)
    })
    .await?
}

async fn docker_async(args: &[&str]) -> Result<String, ChaosError> {
    run_async("docker", args).await
}

/// The compose command: `docker compose` (v2 plugin) when there, else `docker-compose`.
fn compose_command() -> Result<Vec<String>, ChaosError> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("docker", &["compose", "version"]) {
        Ok(vec!["docker".into(), "compose".into()])
    } else if works("docker-compose", &["version"]) {
        Ok(vec!["docker-compose".into()])
    } else {
        Err(ChaosError::Docker(
            "neither `docker compose` nor `docker-compose` works: install Docker's compose tool (Debian: apt-get install docker-compose)".into(),
        ))
    }
}

/// One container of the cluster.
#[derive(Clone, Debug)]
pub struct DockerNode {
    /// Its name (`broker-2`), also its compose service.
    pub name: NodeName,
    /// Its container id.
    pub container: String,
    /// Its address on the project network.
    pub ip: String,
    /// Its gRPC address (`ip:9092` for a broker, `ip:9093` for a controller).
    pub addr: String,
    running: bool,
    paused: bool,
    connected: bool,
}

impl DockerNode {
    /// True unless killed or stopped (paused counts as running).
    pub fn is_running(&self) -> bool {
        self.running
    }

    /// True while paused (`docker pause`).
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// False while disconnected from the project network (`docker network disconnect`).
    pub fn is_connected(&self) -> bool {
        self.connected
    }
}

/// The compose cluster, removed (with its volumes) when dropped.
pub struct DockerCluster {
    project: String,
    compose: Vec<String>,
    files: Vec<String>,
    network: String,
    subnet: String,
    nodes: Vec<DockerNode>,
    /// The minority side of the current partition (cut off from every other node).
    minority: BTreeSet<NodeName>,
    /// The DROP rules in place: node → addresses it no longer exchanges packets with.
    cuts: BTreeMap<NodeName, Vec<String>>,
    /// Set once `down` ran.
    removed: bool,
    _dir: tempfile::TempDir,
}

static CLUSTERS: AtomicU32 = AtomicU32::new(0);

impl DockerCluster {
    /// Starts the cluster under a fresh project name and waits until every container is
    /// healthy and the controllers count every broker unfenced.
    pub async fn up(config: DockerConfig) -> Result<Self, ChaosError> {
        require_docker()?;
        let compose = compose_command()?;
        remove_abandoned();
        let dir = config
            .compose_file
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_default();
        let read = |p: &Path| {
            std::fs::read_to_string(p)
                .map_err(|e| ChaosError::Docker(format!("reading {}: {e}", p.display())))
        };
        let compose_text = read(&config.compose_file)?;
        let tomls = [
            ("controller.toml", read(&dir.join("controller.toml"))?),
            ("broker.toml", read(&dir.join("broker.toml"))?),
        ];
        let mut last_error = None;
        // A subnet another network took since we looked makes `up` fail: try another.
        for attempt in 0..4 {
            let project = format!(
                "{PROJECT_PREFIX}{}-{}",
                std::process::id(),
                CLUSTERS.fetch_add(1, Ordering::Relaxed)
            );
            let octet = free_octet(attempt)?;
            let prefix = format!("10.213.{octet}.");
            let tmp = tempfile::tempdir()?;
            let base = rewrite_compose(&compose_text, &prefix, &project)?;
            let base_path = tmp.path().join("docker-compose.yml");
            std::fs::write(&base_path, base)?;
            for (name, text) in &tomls {
                std::fs::write(tmp.path().join(name), text.replace(COMPOSE_PREFIX, &prefix))?;
            }
            let services = services(&compose_text);
            let override_path = tmp.path().join("override.yml");
            std::fs::write(&override_path, override_file(&config, &services))?;
            let mut cluster = DockerCluster {
                project: project.clone(),
                compose: compose.clone(),
                files: vec![
                    base_path.display().to_string(),
                    override_path.display().to_string(),
                ],
                network: project.clone(),
                subnet: format!("{prefix}0/24"),
                nodes: Vec::new(),
                minority: BTreeSet::new(),
                cuts: BTreeMap::new(),
                removed: false,
                _dir: tmp,
            };
            match cluster.compose_async(&["up", "--detach"]).await {
                Ok(_) => {
                    cluster.nodes = cluster.find_nodes(&services)?;
                    cluster.wait_healthy(config.startup).await?;
                    return Ok(cluster);
                }
                Err(e) => {
                    let overlap = e.to_string().contains("overlap");
                    last_error = Some(e);
                    drop(cluster);
                    if !overlap {
                        break;
                    }
                }
            }
        }
        Err(last_error.unwrap_or_else(|| ChaosError::Docker("compose up failed".into())))
    }

    /// The compose project name (containers, network and volumes are named after it).
    pub fn project(&self) -> &str {
        &self.project
    }

    /// The project network's subnet.
    pub fn subnet(&self) -> &str {
        &self.subnet
    }

    /// Every node, controllers first.
    pub fn nodes(&self) -> &[DockerNode] {
        &self.nodes
    }

    /// The node called `name`.
    pub fn node(&self, name: NodeName) -> Result<&DockerNode, ChaosError> {
        self.nodes
            .iter()
            .find(|n| n.name == name)
            .ok_or(ChaosError::NoSuchNode(name))
    }

    fn node_mut(&mut self, name: NodeName) -> Result<&mut DockerNode, ChaosError> {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .ok_or(ChaosError::NoSuchNode(name))
    }

    /// Names of the controllers, then the brokers.
    pub fn names(&self) -> Vec<NodeName> {
        self.nodes.iter().map(|n| n.name).collect()
    }

    fn compose_args<'a>(&'a self, args: &[&'a str]) -> Vec<&'a str> {
        let mut all: Vec<&str> = self.compose[1..].iter().map(String::as_str).collect();
        all.extend(["--project-name", &self.project]);
        for f in &self.files {
            all.extend(["--file", f.as_str()]);
        }
        all.extend(args);
        all
    }

    async fn compose_async(&self, args: &[&str]) -> Result<String, ChaosError> {
        run_async(&self.compose[0], &self.compose_args(args)).await
    }

    /// The containers of the services that are nodes, with their addresses.
    fn find_nodes(&self, services: &[String]) -> Result<Vec<DockerNode>, ChaosError> {
        let mut nodes = Vec::new();
        for service in services {
            let Ok(name) = service.parse::<NodeName>() else {
                continue;
            };
            let id = docker(&[
                "ps",
                "--all",
                "--quiet",
                "--no-trunc",
                "--filter",
                &format!("label=com.docker.compose.project={}", self.project),
                "--filter",
                &format!("label=com.docker.compose.service={service}"),
            ])?;
            let container = id.trim().to_owned();
            if container.is_empty() || container.contains('\n') {
                return Err(ChaosError::Docker(format!(
                    "expected one container for the service {service} of {}, found {container:?}",
                    self.project
                )));
            }
            let ip = docker(&[
                "inspect",
                "--format",
                &format!(
                    "{{{{(index .NetworkSettings.Networks \"{}\").IPAddress}}}}",
                    self.network
                ),
                &container,
            ])?
            .trim()
            .to_owned();
            let port = match name.role {
                Role::Broker => BROKER_PORT,
                Role::Controller => CONTROLLER_PORT,
            };
            nodes.push(DockerNode {
                name,
                addr: format!("{ip}:{port}"),
                ip,
                container,
                running: true,
                paused: false,
                connected: true,
            });
        }
        nodes.sort_by_key(|n| (n.name.role == Role::Broker, n.name.id));
        if nodes.is_empty() {
            return Err(ChaosError::Docker(format!(
                "the compose file has no services named controller-N or broker-N ({services:?})"
            )));
        }
        Ok(nodes)
    }

    /// Each container's state: `running`, `paused`, `exited`, ... and its health when it has
    /// one (`healthy`, `starting`, `unhealthy`).
    pub async fn states(&self) -> BTreeMap<NodeName, (String, String)> {
        let ids: Vec<(NodeName, String)> = self
            .nodes
            .iter()
            .map(|n| (n.name, n.container.clone()))
            .collect();
        tokio::task::spawn_blocking(move || {
            ids.into_iter()
                .map(|(name, id)| {
                    let state = docker(&[
                        "inspect",
                        "--format",
                        "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
                        &id,
                    ])
                    .unwrap_or_else(|_| "missing".into());
                    let mut parts = state.split_whitespace();
                    let status = parts.next().unwrap_or("missing").to_owned();
                    let health = parts.next().unwrap_or("").to_owned();
                    (name, (status, health))
                })
                .collect()
        })
        .await
        .unwrap_or_default()
    }

    /// True for a node that should be serving: running, not paused, connected and not cut off.
    fn is_normal(&self, n: &DockerNode) -> bool {
        n.running && !n.paused && n.connected && !self.minority.contains(&n.name)
    }

    /// Waits until every node that should be serving (running, not paused, connected, not cut
    /// off) is healthy (its health check: a broker registered and unfenced, a controller
    /// knowing a quorum leader) and the active controller counts every such broker unfenced.
    /// Fails at once, with its log, when such a node has exited (a crash).
    pub async fn wait_healthy(&self, patience: Duration) -> Result<(), ChaosError> {
        let deadline = Instant::now() + patience;
        let want = self
            .nodes
            .iter()
            .filter(|n| n.name.role == Role::Broker && self.is_normal(n))
            .count();
        loop {
            let states = self.states().await;
            let mut waiting = Vec::new();
            for n in self.nodes.iter().filter(|n| self.is_normal(n)) {
                let (status, health) = states
                    .get(&n.name)
                    .cloned()
                    .unwrap_or_else(|| ("missing".into(), String::new()));
                if status != "running" {
                    return Err(ChaosError::Docker(format!(
                        "{} is {status} although it should run; its log:\n{}",
                        n.name,
                        self.logs(n.name, 30)
                    )));
                }
                if health != "healthy" {
                    waiting.push(format!("{}: {health}", n.name));
                }
            }
            let unfenced = if waiting.is_empty() {
                self.unfenced_brokers().await
            } else {
                None
            };
            if waiting.is_empty() && unfenced.is_some_and(|u| u >= want) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(ChaosError::Timeout(format!(
                    "the cluster {} was not healthy within {patience:?} (waiting for [{}], unfenced brokers {unfenced:?} of {want}); logs:\n{}",
                    self.project,
                    waiting.join(", "),
                    self.log_tails(10)
                )));
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }

    /// The last `lines` lines of a node's log (`docker logs`).
    pub fn logs(&self, name: NodeName, lines: usize) -> String {
        let Ok(n) = self.node(name) else {
            return String::new();
        };
        match Command::new("docker")
            .args(["logs", "--tail", &lines.to_string(), &n.container])
            .output()
        {
            Ok(o) => format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
            Err(e) => format!("(docker logs: {e})"),
        }
    }

    /// The last `lines` lines of every node's log, for failure messages.
    pub fn log_tails(&self, lines: usize) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            let _ = writeln!(out, "--- {} ---\n{}", n.name, self.logs(n.name, lines));
        }
        out
    }

    /// `docker kill`: SIGKILL, the container stops at once (its volume stays).
    pub async fn kill(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let id = self.node(name)?.container.clone();
        docker_async(&["kill", &id]).await?;
        let n = self.node_mut(name)?;
        n.running = false;
        n.paused = false;
        self.cuts.remove(&name);
        Ok(())
    }

    /// `docker stop`: SIGTERM (a broker's controlled shutdown), up to 60 s before SIGKILL.
    pub async fn stop(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let id = self.node(name)?.container.clone();
        if self.node(name)?.paused {
            self.unpause(name).await?;
        }
        docker_async(&["stop", "--time", "60", &id]).await?;
        self.node_mut(name)?.running = false;
        self.cuts.remove(&name);
        Ok(())
    }

    /// `docker start`: the node starts again on its volume, with its address.
    pub async fn start(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let id = self.node(name)?.container.clone();
        docker_async(&["start", &id]).await?;
        let n = self.node_mut(name)?;
        n.running = true;
        n.paused = false;
        Ok(())
    }

    /// `docker pause`: every process of the container is frozen (no heartbeats, no answers,
    /// connections kept open), like a long stall.
    pub async fn pause(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let id = self.node(name)?.container.clone();
        docker_async(&["pause", &id]).await?;
        self.node_mut(name)?.paused = true;
        Ok(())
    }

    /// `docker unpause`: the container carries on where it stopped.
    pub async fn unpause(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let id = self.node(name)?.container.clone();
        docker_async(&["unpause", &id]).await?;
        self.node_mut(name)?.paused = false;
        Ok(())
    }

    /// `docker network disconnect`: the node loses its interface on the project network, so
    /// neither the other nodes nor the host reach it (nor it them).
    pub async fn disconnect(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let id = self.node(name)?.container.clone();
        docker_async(&["network", "disconnect", &self.network, &id]).await?;
        self.node_mut(name)?.connected = false;
        Ok(())
    }

    /// `docker network connect` with the node's own address: it is reachable again.
    pub async fn connect(&mut self, name: NodeName) -> Result<(), ChaosError> {
        let n = self.node(name)?.clone();
        docker_async(&[
            "network",
            "connect",
            "--ip",
            &n.ip,
            &self.network,
            &n.container,
        ])
        .await?;
        self.node_mut(name)?.connected = true;
        Ok(())
    }

    /// Cuts `minority` off from every other node: each drops every packet to and from the
    /// other side (iptables in its network namespace, entered with `nsenter`: needs root).
    /// The host still reaches every node. Until [`heal`](Self::heal), the [`ClusterView`]
    /// questions go to the other side only.
    pub async fn partition(&mut self, minority: &[NodeName]) -> Result<(), ChaosError> {
        let minority: BTreeSet<NodeName> = minority.iter().copied().collect();
        for m in &minority {
            self.node(*m)?;
        }
        let others: Vec<NodeName> = self
            .names()
            .into_iter()
            .filter(|n| !minority.contains(n))
            .collect();
        for m in &minority {
            for o in &others {
                let (mip, oip) = (self.node(*m)?.ip.clone(), self.node(*o)?.ip.clone());
                self.drop_between(*m, &oip).await?;
                self.drop_between(*o, &mip).await?;
            }
        }
        self.minority.extend(minority);
        Ok(())
    }

    /// Adds DROP rules on `node` for every packet to and from `ip`.
    async fn drop_between(&mut self, node: NodeName, ip: &str) -> Result<(), ChaosError> {
        let pid = self.pid(node).await?;
        for rule in [["INPUT", "-s"], ["OUTPUT", "-d"]] {
            nsenter_iptables(&pid, &["-A", rule[0], rule[1], ip, "-j", "DROP"]).await?;
        }
        self.cuts.entry(node).or_default().push(ip.to_owned());
        Ok(())
    }

    /// The pid of the container's first process, to enter its namespaces.
    async fn pid(&self, node: NodeName) -> Result<String, ChaosError> {
        let n = self.node(node)?;
        let pid = docker_async(&["inspect", "--format", "{{.State.Pid}}", &n.container])
            .await?
            .trim()
            .to_owned();
        if pid.is_empty() || pid == "0" {
            return Err(ChaosError::NotRunning(node));
        }
        Ok(pid)
    }

    /// Every thread's backtrace in a node's process (gdb on the host attaches to it; needs
    /// root and gdb): to see where a node that stopped answering is stuck.
    pub async fn stacks(&self, node: NodeName) -> Result<String, ChaosError> {
        let pid = self.pid(node).await?;
        run_async(
            "gdb",
            &[
                "--batch",
                "--quiet",
                "-p",
                &pid,
                "-ex",
                "thread apply all bt 40",
            ],
        )
        .await
    }

    /// Removes every rule [`partition`](Self::partition) added: all nodes talk again.
    pub async fn heal(&mut self) -> Result<(), ChaosError> {
        let cuts = std::mem::take(&mut self.cuts);
        for (node, ips) in cuts {
            if !self.node(node)?.running {
                continue;
            }
            let pid = self.pid(node).await?;
            for ip in ips {
                for rule in [["INPUT", "-s"], ["OUTPUT", "-d"]] {
                    nsenter_iptables(&pid, &["-D", rule[0], rule[1], &ip, "-j", "DROP"]).await?;
                }
            }
        }
        self.minority.clear();
        Ok(())
    }

    /// Undoes every fault: heals the partition, reconnects, unpauses and starts every node,
    /// then waits (up to `patience`) until the cluster is healthy.
    pub async fn restore(&mut self, patience: Duration) -> Result<(), ChaosError> {
        self.heal().await?;
        for name in self.names() {
            let n = self.node(name)?.clone();
            if !n.connected {
                self.connect(name).await?;
            }
            if n.paused {
                self.unpause(name).await?;
            }
            if !n.running {
                self.start(name).await?;
            }
        }
        self.wait_healthy(patience).await
    }

    /// Stops and removes the containers, the network and the volumes. Dropping the cluster
    /// does the same; this says whether it worked.
    pub fn down(&mut self) -> Result<(), ChaosError> {
        // A frozen container cannot be stopped gracefully.
        for n in self.nodes.iter_mut().filter(|n| n.paused) {
            let _ = docker(&["unpause", &n.container]);
            n.paused = false;
        }
        let args = self.compose_args(&["down", "--volumes", "--remove-orphans", "--timeout", "5"]);
        let result = run(&self.compose[0], &args);
        remove_project(&self.project);
        self.removed = true;
        result.map(|_| ())
    }
}

impl ClusterView for DockerCluster {
    fn live_brokers(&self) -> Vec<(NodeName, String)> {
        self.nodes
            .iter()
            .filter(|n| n.name.role == Role::Broker && self.is_normal(n))
            .map(|n| (n.name, n.addr.clone()))
            .collect()
    }

    fn live_controllers(&self) -> Vec<(NodeName, String)> {
        self.nodes
            .iter()
            .filter(|n| n.name.role == Role::Controller && self.is_normal(n))
            .map(|n| (n.name, n.addr.clone()))
            .collect()
    }

    fn all_brokers(&self) -> Vec<String> {
        self.nodes
            .iter()
            .filter(|n| n.name.role == Role::Broker)
            .map(|n| n.addr.clone())
            .collect()
    }
}

impl Drop for DockerCluster {
    fn drop(&mut self) {
        if !self.removed {
            let _ = self.down();
        }
    }
}

/// `iptables -w ARGS` in the network namespace of process `pid`.
async fn nsenter_iptables(pid: &str, args: &[&str]) -> Result<(), ChaosError> {
    let mut all = vec!["--target", pid, "--net", "iptables", "-w", "5"];
    all.extend(args);
    run_async("nsenter", &all).await.map(|_| ()).map_err(|e| {
        ChaosError::Docker(format!(
            "{e} (cutting the network between containers runs iptables in their network namespace with nsenter, which needs root)"
        ))
    })
}

/// The services of a compose file (the keys under `services:`).
fn services(compose: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut inside = false;
    for line in compose.lines() {
        if !line.starts_with(' ') && !line.trim().is_empty() && !line.starts_with('#') {
            inside = line.trim_end() == "services:";
            continue;
        }
        if inside
            && let Some(key) = line.strip_prefix("  ")
            && !key.starts_with(' ')
            && !key.starts_with('#')
            && let Some(name) = key.trim_end().strip_suffix(':')
        {
            out.push(name.to_owned());
        }
    }
    out
}

/// The compose file with what would clash between clusters rewritten: the subnet prefix
/// (`10.213.13.` → `prefix`), no fixed container names, no published ports, and the
/// network's fixed name replaced by `network`.
fn rewrite_compose(text: &str, prefix: &str, network: &str) -> Result<String, ChaosError> {
    let layout = |what: &str| {
        ChaosError::Docker(format!(
            "the compose file no longer looks as the harness expects ({what}): update crates/rill-chaos/src/docker.rs"
        ))
    };
    if !text.contains(COMPOSE_PREFIX) {
        return Err(layout("no address in 10.213.13.0/24"));
    }
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = String::new();
    let mut skip_deeper_than: Option<usize> = None;
    let mut top = "";
    let mut renamed = false;
    for line in text.lines() {
        let t = line.trim_start();
        if let Some(depth) = skip_deeper_than {
            if t.is_empty() || indent(line) > depth {
                continue;
            }
            skip_deeper_than = None;
        }
        if !line.starts_with(' ') && !t.is_empty() && !t.starts_with('#') {
            top = line.trim_end();
        }
        if t.starts_with("container_name:") || t.starts_with("ports:") {
            // A block value (`ports:` then `- ...` lines) goes with its key.
            if t.trim_end().ends_with(':') {
                skip_deeper_than = Some(indent(line));
            }
            continue;
        }
        if top == "networks:" && indent(line) == 4 && t.starts_with("name:") {
            let _ = writeln!(out, "{}name: {network}", &line[..indent(line)]);
            renamed = true;
            continue;
        }
        out.push_str(&line.replace(COMPOSE_PREFIX, prefix));
        out.push('\n');
    }
    if !renamed {
        return Err(layout("no `name:` under the top-level network"));
    }
    Ok(out)
}

/// The override file: the image tag, no restarts, the extra settings.
fn override_file(config: &DockerConfig, services: &[String]) -> String {
    let mut out = String::from("services:\n");
    for service in services {
        let Ok(name) = service.parse::<NodeName>() else {
            continue;
        };
        let (image, env) = match name.role {
            Role::Controller => ("rill-controller", &config.controller_env),
            Role::Broker => ("rill-broker", &config.broker_env),
        };
        let _ = writeln!(out, "  {service}:");
        let _ = writeln!(out, "    image: {image}:{}", config.image_tag);
        let _ = writeln!(out, "    restart: \"no\"");
        if !env.is_empty() {
            let _ = writeln!(out, "    environment:");
            for (k, v) in env {
                let _ = writeln!(out, "      {k}: {v:?}");
            }
        }
    }
    out
}

/// The third octet of a `10.213.X.0/24` no Docker network overlaps; `attempt` moves the
/// starting point so retries try other subnets.
fn free_octet(attempt: u32) -> Result<u32, ChaosError> {
    let ids = docker(&["network", "ls", "--quiet"])?;
    let mut used: Vec<(u32, u32)> = Vec::new();
    let ids: Vec<&str> = ids.split_whitespace().collect();
    if !ids.is_empty() {
        let mut args = vec![
            "network",
            "inspect",
            "--format",
            "{{range .IPAM.Config}}{{.Subnet}} {{end}}",
        ];
        args.extend(ids);
        // A network removed meanwhile fails the inspect; then assume nothing is used.
        for cidr in docker(&args).unwrap_or_default().split_whitespace() {
            if let Some(net) = parse_cidr(cidr) {
                used.push(net);
            }
        }
    }
    let start = (std::process::id() + attempt * 37) % 150;
    for i in 0..150 {
        let octet = 100 + (start + i) % 150;
        let ours = (u32::from_be_bytes([10, 213, octet as u8, 0]), 24);
        if !used.iter().any(|&u| overlaps(u, ours)) {
            return Ok(octet);
        }
    }
    Err(ChaosError::Docker(
        "no free subnet 10.213.100-249.0/24 for the project network".into(),
    ))
}

/// `a.b.c.d/len` as (address, prefix length); `None` for IPv6 and garbage.
fn parse_cidr(cidr: &str) -> Option<(u32, u32)> {
    let (addr, len) = cidr.split_once('/')?;
    let addr: std::net::Ipv4Addr = addr.parse().ok()?;
    let len: u32 = len.parse().ok()?;
    (len <= 32).then_some((u32::from(addr), len))
}

fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    let len = a.1.min(b.1);
    let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
    a.0 & mask == b.0 & mask
}

/// Removes whatever is left of `project`: containers, its network, its volumes.
fn remove_project(project: &str) {
    let label = format!("label=com.docker.compose.project={project}");
    if let Ok(ids) = docker(&["ps", "--all", "--quiet", "--filter", &label]) {
        for id in ids.split_whitespace() {
            let _ = docker(&["unpause", id]);
            let _ = docker(&["rm", "--force", "--volumes", id]);
        }
    }
    if let Ok(ids) = docker(&["network", "ls", "--quiet", "--filter", &label]) {
        for id in ids.split_whitespace() {
            let _ = docker(&["network", "rm", id]);
        }
    }
    if let Ok(names) = docker(&["volume", "ls", "--quiet", "--filter", &label]) {
        for name in names.split_whitespace() {
            let _ = docker(&["volume", "rm", "--force", name]);
        }
    }
}

/// Removes the clusters of test processes that ended without removing them (killed before
/// their `Drop` ran): projects `rillchaos-<pid>-<n>` whose pid no longer runs here.
fn remove_abandoned() {
    let mut projects = BTreeSet::new();
    for what in [
        vec![
            "ps",
            "--all",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ],
        vec!["network", "ls", "--format", "{{.Name}}"],
        vec![
            "volume",
            "ls",
            "--format",
            "{{.Label \"com.docker.compose.project\"}}",
        ],
    ] {
        if let Ok(out) = docker(&what) {
            projects.extend(
                out.lines()
                    .filter(|p| p.starts_with(PROJECT_PREFIX))
                    .map(str::to_owned),
            );
        }
    }
    for project in projects {
        let pid = project
            .strip_prefix(PROJECT_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok());
        if let Some(pid) = pid
            && pid != std::process::id()
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            remove_project(&project);
            // The network is named after the project, not labelled by every compose version.
            let _ = docker(&["network", "rm", &project]);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const COMPOSE: &str = "\
x-broker: &broker
  image: rill-broker:latest
  restart: unless-stopped

services:
  controller-1:
    container_name: rill-controller-1
    networks:
      rill: {ipv4_address: 10.213.13.11}
  broker-1:
    <<: *broker
    container_name: rill-broker-1
    environment:
      RILL_ADVERTISED_LISTENERS: 10.213.13.21:9092
    ports: [\"127.0.0.1:19092:9092\"]
    networks:
      rill: {ipv4_address: 10.213.13.21}
  broker-2:
    ports:
      - \"127.0.0.1:19192:9092\"
    networks:
      rill: {ipv4_address: 10.213.13.22}

networks:
  rill:
    name: rill
    ipam:
      config:
        - subnet: 10.213.13.0/24

volumes:
  broker-1:
";

    #[test]
    fn the_compose_file_is_rewritten_to_clash_with_nothing() -> Result<(), ChaosError> {
        let out = rewrite_compose(COMPOSE, "10.213.150.", "rillchaos-1-0")?;
        assert!(!out.contains("10.213.13."), "{out}");
        assert!(!out.contains("container_name"), "{out}");
        assert!(!out.contains("ports") && !out.contains("19192"), "{out}");
        assert!(out.contains("    name: rillchaos-1-0\n"), "{out}");
        assert!(
            out.contains("RILL_ADVERTISED_LISTENERS: 10.213.150.21:9092"),
            "{out}"
        );
        assert!(out.contains("- subnet: 10.213.150.0/24"), "{out}");
        // What follows a dropped block is kept.
        assert!(out.contains("  broker-2:\n    networks:\n"), "{out}");
        assert!(rewrite_compose("services: {}\n", "10.213.150.", "x").is_err());
        Ok(())
    }

    #[test]
    fn services_are_the_keys_under_services() {
        assert_eq!(
            services(COMPOSE),
            vec!["controller-1", "broker-1", "broker-2"]
        );
    }

    #[test]
    fn the_override_sets_image_restart_and_settings() {
        let config = DockerConfig {
            compose_file: PathBuf::new(),
            image_tag: "test-1".into(),
            controller_env: vec![("RILL_A".into(), "1".into())],
            broker_env: vec![],
            startup: Duration::from_secs(1),
        };
        let out = override_file(&config, &services(COMPOSE));
        assert_eq!(
            out,
            "services:\n  controller-1:\n    image: rill-controller:test-1\n    restart: \"no\"\n    environment:\n      RILL_A: \"1\"\n  broker-1:\n    image: rill-broker:test-1\n    restart: \"no\"\n  broker-2:\n    image: rill-broker:test-1\n    restart: \"no\"\n"
        );
    }

    #[test]
    fn subnets_overlap_when_their_common_prefix_matches() {
        let net = |s| parse_cidr(s).unwrap_or((0, 33));
        assert!(overlaps(net("10.0.0.0/8"), net("10.213.150.0/24")));
        assert!(overlaps(net("10.213.150.0/24"), net("10.213.150.0/24")));
        assert!(!overlaps(net("10.213.151.0/24"), net("10.213.150.0/24")));
        assert!(!overlaps(net("172.17.0.0/16"), net("10.213.150.0/24")));
        assert!(parse_cidr("fd00::/64").is_none());
    }

    #[test]
    fn test_tags_differ_per_directory() {
        let a = test_image_tag(Path::new("/nonexistent/a/target/debug"));
        let b = test_image_tag(Path::new("/nonexistent/b/target/debug"));
        assert_ne!(a, b);
        assert!(a.starts_with("test-") && a.len() == 21, "{a}");
    }
}
