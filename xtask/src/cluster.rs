//! `cargo xtask cluster up|status|down`: a local rill cluster of real processes on 127.0.0.1;
//! `cargo xtask cluster kill|stop|start|pause|resume NODE`: faults on one node of it (SIGKILL,
//! SIGTERM, start again on the same ports and data, SIGSTOP, SIGCONT), to try failover by hand.
//!
//! Ports: controller i listens on 9093 + 100·i (metrics 9095 + 100·i), broker i on
//! 9092 + 100·i (metrics 9094 + 100·i, Kafka protocol 9096 + 100·i). Everything lives under `.rill/` in the repository: data
//! directories, one log file per process (`.rill/logs/<name>.log`, both its stdout and its
//! stderr), and `pids` (what `down` stops, and nothing else).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ClusterAction;

pub(crate) fn root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

fn state_dir() -> PathBuf {
    root().join(".rill")
}

fn bin(name: &str) -> PathBuf {
    root().join("target/release").join(name)
}

pub fn run(action: ClusterAction) -> Result<()> {
    match action {
        ClusterAction::Up {
            controllers,
            brokers,
            no_demo,
        } => up(controllers, brokers, !no_demo),
        ClusterAction::Status => status(),
        ClusterAction::Down => down(),
        ClusterAction::Kill { node } => kill(&node),
        ClusterAction::Stop { node } => stop(&node),
        ClusterAction::Start { node } => start(&node),
        ClusterAction::Pause { node } => signal_node(&node, "STOP", "paused"),
        ClusterAction::Resume { node } => signal_node(&node, "CONT", "resumed"),
    }
}

fn pids() -> Result<Vec<(String, u32)>> {
    let path = state_dir().join("pids");
    let Ok(text) = std::fs::read_to_string(&path) else {
        return Ok(Vec::new());
    };
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, pid)| Ok((name.to_owned(), pid.trim().parse().context("bad pid file")?)))
        .collect()
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map(|s| !s.contains(") Z "))
            .unwrap_or(false)
}

fn up(controllers: usize, brokers: usize, demo: bool) -> Result<()> {
    if controllers == 0 || brokers == 0 {
        bail!("a cluster needs at least one controller and one broker");
    }
    if pids()?.iter().any(|(_, p)| alive(*p)) {
        bail!("a cluster from .rill/ is already running; `cargo xtask cluster down` first");
    }
    crate::run(
        "cargo",
        &[
            "build",
            "--release",
            "-p",
            "rill-controller",
            "-p",
            "rill-broker",
            "-p",
            "rill-cli",
        ],
    )?;
    let dir = state_dir();
    std::fs::create_dir_all(dir.join("logs"))?;
    // Restarted brokers read it back: __consumer_offsets can have at most this many replicas.
    std::fs::write(dir.join("brokers"), brokers.to_string())?;
    let voters = voters(controllers);
    let mut started = Vec::new();
    let names = (1..=controllers)
        .map(|i| format!("controller-{i}"))
        .chain((1..=brokers).map(|i| format!("broker-{i}")));
    for name in names {
        let node = Node::parse(&name)?;
        let child = spawn(&node, &voters)?;
        started.push((name, child));
    }
    let pid_lines: String = started.iter().map(|(n, p)| format!("{n} {p}\n")).collect();
    std::fs::write(dir.join("pids"), pid_lines)?;
    // Healthy: every broker registered and unfenced.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = Command::new(bin("rill"))
            .args(["--bootstrap", "127.0.0.1:9092", "cluster", "describe"])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        if out.status.success() && text.matches("\tactive\t").count() >= brokers {
            println!("{text}");
            break;
        }
        for (name, pid) in &started {
            if !alive(*pid) {
                bail!("{name} exited; see .rill/logs/{name}.log");
            }
        }
        if Instant::now() > deadline {
            bail!("the cluster did not become healthy within 60 s; see .rill/logs/");
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    println!(
        "rill is up: bootstrap 127.0.0.1:9092 (Kafka clients: 127.0.0.1:9096) ({controllers} controllers, {brokers} brokers); data and logs in .rill/"
    );
    if demo {
        run_demo(brokers)?;
    }
    println!("stop it with: cargo xtask cluster down");
    Ok(())
}

/// One node of the local cluster, named as `.rill/pids` names it: `controller-N` or
/// `broker-N` (node id N, ports from N).
#[derive(Debug, PartialEq, Eq)]
struct Node {
    controller: bool,
    id: usize,
}

impl Node {
    fn parse(name: &str) -> Result<Node> {
        let (role, id) = name.rsplit_once('-').with_context(|| {
            format!("bad node name {name:?}: expected broker-N or controller-N")
        })?;
        let id: usize = id
            .parse()
            .ok()
            .filter(|id| *id >= 1)
            .with_context(|| format!("bad node name {name:?}: N must be a number from 1"))?;
        let controller = match role {
            "controller" => true,
            "broker" => false,
            _ => bail!("bad node name {name:?}: expected broker-N or controller-N"),
        };
        Ok(Node { controller, id })
    }

    fn name(&self) -> String {
        let role = if self.controller {
            "controller"
        } else {
            "broker"
        };
        format!("{role}-{}", self.id)
    }
}

/// `controller.quorum.voters` of a cluster of `controllers` controllers on the fixed ports.
fn voters(controllers: usize) -> String {
    (0..controllers)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, 9093 + 100 * i))
        .collect::<Vec<_>>()
        .join(",")
}

/// Starts `node` detached, with the arguments, ports and data directory `up` gives it; its
/// log (truncated) is `.rill/logs/<name>.log`. Returns the pid.
fn spawn(node: &Node, voters: &str) -> Result<u32> {
    let dir = state_dir();
    let name = node.name();
    let log = dir.join("logs").join(format!("{name}.log"));
    let i = node.id - 1;
    let mut cmd = if node.controller {
        let mut cmd = Command::new(bin("rill-controller"));
        cmd.args([
            "--node-id",
            &node.id.to_string(),
            "--listeners",
            &format!("127.0.0.1:{}", 9093 + 100 * i),
        ])
        .args(["--voters", voters])
        .arg("--metadata-log-dir")
        .arg(dir.join(&name))
        .args([
            "--metrics-address",
            &format!("127.0.0.1:{}", 9095 + 100 * i),
        ]);
        cmd
    } else {
        let mut cmd = Command::new(bin("rill-broker"));
        cmd.args([
            "--node-id",
            &node.id.to_string(),
            "--listeners",
            &format!("127.0.0.1:{}", 9092 + 100 * i),
        ])
        .args(["--voters", voters])
        .arg("--log-dirs")
        .arg(dir.join(&name))
        .args([
            "--metrics-address",
            &format!("127.0.0.1:{}", 9094 + 100 * i),
        ])
        .args(["--override", "log.flush.policy=commit"])
        .args([
            "--override",
            &format!("kafka.listeners=127.0.0.1:{}", 9096 + 100 * i),
        ])
        .args([
            "--override",
            &format!(
                "offsets.topic.replication.factor={}",
                cluster_brokers().min(3)
            ),
        ]);
        cmd
    };
    detached(logging_to(&log, &mut cmd)?)
}

/// How many brokers `cluster up` started (3 when unknown).
fn cluster_brokers() -> usize {
    std::fs::read_to_string(state_dir().join("brokers"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(3)
}

/// `pids` with `name`'s pid set to `pid` (replaced, or added).
fn with_pid(pids: &[(String, u32)], name: &str, pid: u32) -> Vec<(String, u32)> {
    let mut out: Vec<(String, u32)> = pids.to_vec();
    match out.iter_mut().find(|(n, _)| n == name) {
        Some(slot) => slot.1 = pid,
        None => out.push((name.to_owned(), pid)),
    }
    out
}

fn write_pids(pids: &[(String, u32)]) -> Result<()> {
    let text: String = pids.iter().map(|(n, p)| format!("{n} {p}\n")).collect();
    std::fs::write(state_dir().join("pids"), text).context("writing .rill/pids")
}

/// The pid `up` (or `start`) recorded for `name`.
fn pid_of(name: &str) -> Result<u32> {
    let pids = pids()?;
    if pids.is_empty() {
        bail!("no cluster started from .rill/; `cargo xtask cluster up` first");
    }
    pids.iter()
        .find(|(n, _)| n == name)
        .map(|(_, p)| *p)
        .with_context(|| {
            let known: Vec<&str> = pids.iter().map(|(n, _)| n.as_str()).collect();
            format!("the cluster has no {name}; its nodes: {}", known.join(", "))
        })
}

/// The process state letter of `/proc/<pid>/stat` (R, S, T for stopped, Z, ...).
fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(") ")?.1.chars().next()
}

fn send(pid: u32, signal: &str) -> Result<()> {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .context("running kill")?;
    if !status.success() {
        bail!("kill -{signal} {pid} failed");
    }
    Ok(())
}

fn wait_gone(pid: u32, patience: Duration) -> bool {
    let deadline = Instant::now() + patience;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

/// SIGKILL: the node dies at once (a crash); `start` brings it back on its data.
fn kill(name: &str) -> Result<()> {
    let node = Node::parse(name)?;
    let pid = pid_of(&node.name())?;
    if !alive(pid) {
        println!("{name} (pid {pid}) is not running");
        return Ok(());
    }
    send(pid, "KILL")?;
    if !wait_gone(pid, Duration::from_secs(10)) {
        bail!("{name} (pid {pid}) is still there 10 s after SIGKILL");
    }
    println!("killed {name} (pid {pid}, SIGKILL)");
    Ok(())
}

/// SIGTERM and wait: a graceful stop (a broker hands over its leaderships first).
fn stop(name: &str) -> Result<()> {
    let node = Node::parse(name)?;
    let pid = pid_of(&node.name())?;
    if !alive(pid) {
        println!("{name} (pid {pid}) is not running");
        return Ok(());
    }
    if proc_state(pid) == Some('T') {
        // A paused process would never see the SIGTERM.
        send(pid, "CONT")?;
    }
    send(pid, "TERM")?;
    println!("stopping {name} (pid {pid}, SIGTERM)");
    if !wait_gone(pid, Duration::from_secs(40)) {
        send(pid, "KILL")?;
        println!("{name} did not stop within 40 s; killed");
    } else {
        println!("stopped {name}");
    }
    Ok(())
}

/// Starts a node that `up` started before, again with the same arguments, ports and data.
fn start(name: &str) -> Result<()> {
    let node = Node::parse(name)?;
    let name = node.name();
    let pids = pids()?;
    let old = pid_of(&name)?;
    if alive(old) {
        bail!("{name} is already running (pid {old}); `kill` or `stop` it first");
    }
    let controllers = pids
        .iter()
        .filter(|(n, _)| n.starts_with("controller-"))
        .count();
    let pid = spawn(&node, &voters(controllers))?;
    write_pids(&with_pid(&pids, &name, pid))?;
    std::thread::sleep(Duration::from_millis(500));
    if !alive(pid) {
        bail!("{name} exited at once; see .rill/logs/{name}.log");
    }
    println!("started {name} (pid {pid}); log: .rill/logs/{name}.log");
    Ok(())
}

/// SIGSTOP / SIGCONT: freeze a node (no heartbeats, no answers, sockets kept) and thaw it.
fn signal_node(name: &str, signal: &str, done: &str) -> Result<()> {
    let node = Node::parse(name)?;
    let pid = pid_of(&node.name())?;
    if !alive(pid) {
        bail!("{name} (pid {pid}) is not running");
    }
    send(pid, signal)?;
    println!("{done} {name} (pid {pid}, SIG{signal})");
    Ok(())
}

/// Sends both output streams of `cmd` to a new file at `log`: the binaries log to stderr, but
/// anything they print to stdout belongs in the same place, where the README says to look.
fn logging_to<'a>(log: &Path, cmd: &'a mut Command) -> Result<&'a mut Command> {
    let file = std::fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    Ok(cmd.stdout(file.try_clone()?).stderr(file))
}

fn detached(cmd: &mut Command) -> Result<u32> {
    use std::os::unix::process::CommandExt;
    let child = cmd
        .process_group(0)
        .spawn()
        .with_context(|| format!("starting {:?}", cmd.get_program()))?;
    Ok(child.id())
}

fn run_demo(brokers: usize) -> Result<()> {
    let rill = bin("rill");
    let rf = brokers.min(3).to_string();
    let create = Command::new(&rill)
        .args([
            "topic",
            "create",
            "demo",
            "--partitions",
            "3",
            "--replication-factor",
            &rf,
        ])
        .output()?;
    if !create.status.success()
        && !String::from_utf8_lossy(&create.stderr).contains("TOPIC_ALREADY_EXISTS")
    {
        bail!(
            "creating the demo topic failed: {}",
            String::from_utf8_lossy(&create.stderr)
        );
    }
    let mut produce = Command::new(&rill)
        .args(["produce", "demo", "--key-separator", ":"])
        .stdin(Stdio::piped())
        .spawn()?;
    if let Some(stdin) = produce.stdin.as_mut() {
        use std::io::Write;
        stdin.write_all(b"alice:signed up\nbob:signed up\nalice:ordered a book\nbob:ordered a lamp\nalice:paid\n")?;
    }
    produce.stdin.take();
    if !produce.wait()?.success() {
        bail!("the demo produce failed");
    }
    let out = Command::new(&rill)
        .args([
            "consume",
            "demo",
            "--from-beginning",
            "--print-key",
            "--max-messages",
            "5",
            "--timeout-ms",
            "10000",
        ])
        .output()?;
    println!("demo: produced 5 records to topic `demo`, consumed them back:");
    print!("{}", String::from_utf8_lossy(&out.stdout));
    Ok(())
}

fn status() -> Result<()> {
    let pids = pids()?;
    if pids.is_empty() {
        println!("no cluster started from .rill/");
        return Ok(());
    }
    for (name, pid) in &pids {
        println!(
            "{name:<14} pid {pid:<8} {}",
            match (alive(*pid), proc_state(*pid)) {
                (true, Some('T')) => "paused",
                (true, _) => "running",
                (false, _) => "stopped",
            }
        );
    }
    let out = Command::new(bin("rill"))
        .args(["--bootstrap", "127.0.0.1:9092", "cluster", "describe"])
        .output()?;
    print!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

fn down() -> Result<()> {
    let pids = pids()?;
    // Brokers first (controlled shutdown needs the controllers), then controllers.
    for phase in ["broker", "controller"] {
        for (name, pid) in pids.iter().filter(|(n, _)| n.starts_with(phase)) {
            if alive(*pid) {
                let _ = Command::new("kill")
                    .args(["-TERM", &pid.to_string()])
                    .status();
                println!("stopping {name} (pid {pid})");
            }
        }
        let deadline = Instant::now() + Duration::from_secs(40);
        while pids
            .iter()
            .filter(|(n, _)| n.starts_with(phase))
            .any(|(_, p)| alive(*p))
            && Instant::now() < deadline
        {
            std::thread::sleep(Duration::from_millis(100));
        }
        for (name, pid) in pids.iter().filter(|(n, _)| n.starts_with(phase)) {
            if alive(*pid) {
                let _ = Command::new("kill")
                    .args(["-KILL", &pid.to_string()])
                    .status();
                println!("{name} did not stop in time; killed");
            }
        }
    }
    let _ = std::fs::remove_file(state_dir().join("pids"));
    println!("cluster stopped (data kept in .rill/)");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_names_are_the_pid_file_names() -> Result<()> {
        let b = Node::parse("broker-2")?;
        assert_eq!(
            b,
            Node {
                controller: false,
                id: 2
            }
        );
        assert_eq!(b.name(), "broker-2");
        assert_eq!(Node::parse("controller-3")?.name(), "controller-3");
        for bad in ["broker", "broker-0", "broker-x", "zookeeper-1", ""] {
            assert!(Node::parse(bad).is_err(), "{bad}");
        }
        Ok(())
    }

    #[test]
    fn a_restarted_node_replaces_its_pid_and_keeps_the_others() {
        let pids = vec![("controller-1".to_owned(), 10), ("broker-1".to_owned(), 11)];
        assert_eq!(
            with_pid(&pids, "broker-1", 99),
            vec![("controller-1".to_owned(), 10), ("broker-1".to_owned(), 99)]
        );
        assert_eq!(with_pid(&pids, "broker-2", 7).len(), 3);
        assert_eq!(
            voters(3),
            "1@127.0.0.1:9093,2@127.0.0.1:9193,3@127.0.0.1:9293"
        );
    }

    #[test]
    fn a_paused_process_shows_state_t() -> Result<()> {
        let mut child = Command::new("sleep").arg("30").spawn()?;
        let pid = child.id();
        send(pid, "STOP")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while proc_state(pid) != Some('T') && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let paused = proc_state(pid);
        send(pid, "CONT")?;
        child.kill()?;
        child.wait()?;
        assert_eq!(paused, Some('T'));
        Ok(())
    }

    #[test]
    fn a_process_log_gets_both_stdout_and_stderr() -> Result<()> {
        let dir = std::env::temp_dir().join(format!("xtask-log-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        let log = dir.join("p.log");
        let status = logging_to(
            &log,
            Command::new("sh").args(["-c", "echo to-stdout; echo to-stderr >&2"]),
        )?
        .status()?;
        assert!(status.success());
        let text = std::fs::read_to_string(&log)?;
        std::fs::remove_dir_all(&dir)?;
        assert!(text.contains("to-stdout"), "{text:?}");
        assert!(text.contains("to-stderr"), "{text:?}");
        Ok(())
    }
}
