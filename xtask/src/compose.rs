//! `cargo xtask compose up|status|down`: the cluster of `deploy/compose/docker-compose.yml`
//! (3 controllers + 3 brokers, one container and address each on the network `rill`), with the
//! images of `cargo xtask image`.

use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ComposeAction;
use crate::cluster::root;
use crate::image;

/// The compose project name: containers, network and volumes are named after it.
const PROJECT: &str = "rill";
/// Where clients on the host bootstrap from (each broker publishes its port on 127.0.0.1:
/// 19092, 19192, 19292).
pub const BOOTSTRAP: &str = "127.0.0.1:19092,127.0.0.1:19192,127.0.0.1:19292";
/// Every container of the file, in start order.
const CONTAINERS: [&str; 6] = [
    "rill-controller-1",
    "rill-controller-2",
    "rill-controller-3",
    "rill-broker-1",
    "rill-broker-2",
    "rill-broker-3",
];

pub fn run(action: ComposeAction) -> Result<()> {
    match action {
        ComposeAction::Up { build } => up(build),
        ComposeAction::Status => status(),
        ComposeAction::Down { volumes } => down(volumes),
    }
}

/// The compose command: `docker compose` (v2 plugin) when there, else `docker-compose`.
pub fn compose_command() -> Result<Vec<&'static str>> {
    let works = |program: &str, args: &[&str]| {
        Command::new(program)
            .args(args)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if works("docker", &["compose", "version"]) {
        Ok(vec!["docker", "compose"])
    } else if works("docker-compose", &["version"]) {
        Ok(vec!["docker-compose"])
    } else {
        bail!(
            "neither `docker compose` nor `docker-compose` works: install Docker's compose tool (Debian: apt-get install docker-compose)"
        )
    }
}

fn compose_file() -> String {
    root()
        .join("deploy/compose/docker-compose.yml")
        .display()
        .to_string()
}

/// Runs `compose -f FILE -p rill ARGS...`.
pub fn compose(args: &[&str]) -> Result<()> {
    let cmd = compose_command()?;
    let file = compose_file();
    let mut all: Vec<&str> = cmd[1..].to_vec();
    all.extend(["-f", &file, "-p", PROJECT]);
    all.extend(args);
    crate::run(cmd[0], &all)
}

fn up(rebuild: bool) -> Result<()> {
    image::require_docker()?;
    let missing = ["rill-controller", "rill-broker"]
        .iter()
        .any(|name| !image::exists(name, "latest"));
    if rebuild || missing {
        image::build_all(true)?;
    }
    compose(&["up", "--detach"])?;
    // Healthy: every controller knows a quorum leader, every broker is registered and unfenced
    // (their HEALTHCHECK, /health).
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let states: Vec<(&str, String)> = CONTAINERS.iter().map(|c| (*c, health(c))).collect();
        if states.iter().all(|(_, s)| s == "healthy") {
            break;
        }
        if let Some((c, s)) = states.iter().find(|(_, s)| s == "exited" || s == "missing") {
            bail!("{c} is {s}; see `docker logs {c}`");
        }
        if Instant::now() > deadline {
            let waiting: Vec<String> = states
                .iter()
                .filter(|(_, s)| s != "healthy")
                .map(|(c, s)| format!("{c}: {s}"))
                .collect();
            bail!(
                "the cluster did not become healthy within 180 s ({}); see `docker logs NAME`",
                waiting.join(", ")
            );
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    describe();
    println!(
        "rill is up in containers (network `rill`, 10.213.13.0/24): bootstrap {BOOTSTRAP} from the host, e.g.\n  target/release/rill --bootstrap 127.0.0.1:19092 topic create orders --partitions 6 --replication-factor 3\nstatus: cargo xtask compose status; stop: cargo xtask compose down (data stays in the volumes; add --volumes to delete it)"
    );
    Ok(())
}

/// A container's health as Docker sees it (`healthy`, `starting`, `unhealthy`), or its state
/// when it is not running, or `missing`.
fn health(container: &str) -> String {
    let out = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{end}}",
            container,
        ])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            let text = String::from_utf8_lossy(&o.stdout);
            let mut parts = text.split_whitespace();
            match (parts.next(), parts.next()) {
                (Some("running"), Some(h)) => h.to_owned(),
                (Some(state), _) => state.to_owned(),
                (None, _) => "missing".into(),
            }
        }
        _ => "missing".into(),
    }
}

/// `rill cluster describe` from the host, when the CLI is built.
fn describe() {
    let rill = root().join("target/release/rill");
    if !rill.is_file() {
        return;
    }
    match Command::new(&rill)
        .args(["--bootstrap", BOOTSTRAP, "cluster", "describe"])
        .output()
    {
        Ok(o) => print!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => println!("(rill cluster describe: {e})"),
    }
}

fn status() -> Result<()> {
    compose(&["ps"])?;
    for c in CONTAINERS {
        println!("{c:<18} {}", health(c));
    }
    if CONTAINERS.iter().any(|c| health(c) == "healthy") {
        describe();
    }
    Ok(())
}

fn down(volumes: bool) -> Result<()> {
    // Brokers stop first, while the controllers can still move their leaderships (a controlled
    // shutdown); each service's stop_grace_period bounds the wait before SIGKILL.
    compose(&["stop", "broker-1", "broker-2", "broker-3"])?;
    if volumes {
        compose(&["down", "--volumes"])
    } else {
        compose(&["down"])
    }
    .context("compose down")?;
    println!(
        "{}",
        if volumes {
            "compose cluster removed, volumes deleted"
        } else {
            "compose cluster stopped (data kept in the volumes rill_*; `down --volumes` deletes it)"
        }
    );
    Ok(())
}
