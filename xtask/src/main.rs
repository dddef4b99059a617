//! `cargo xtask <command>`: the project's build and test automation, in Rust so it runs wherever
//! cargo does.

use std::process::Command;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod cluster;
mod compose;
mod deploy_check;
mod image;

#[derive(Parser)]
#[command(about = "rill project automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Everything CI checks: formatting, clippy with warnings denied, and all tests.
    Ci,
    /// A local cluster on 127.0.0.1: `up`, `status`, `down`, and faults on one node: `kill`,
    /// `stop`, `start`, `pause`, `resume`.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Soak run with faults against real processes: process kills under a steady producer,
    /// then the fault scenarios of `rill-chaos` in a loop with the history checker (no
    /// acknowledged record lost, no duplicate).
    Soak {
        /// Minutes to run each part.
        #[arg(long, default_value_t = 5)]
        minutes: u64,
        /// Which fault scenarios to loop (1-6, comma-separated; see docs/reliability.md).
        #[arg(long, default_value = "1,2,3,4,5,6")]
        scenarios: String,
        /// Loop the docker fault scenarios (`rill-chaos`'s `docker_scenarios`: containers of
        /// the release binaries, network partitions, pause, kill, rolling restart) instead.
        #[arg(long)]
        docker: bool,
    },
    /// Build the container images `rill-controller`, `rill-broker` and `rill` (FROM scratch:
    /// the release binaries, their shared libraries and a non-root user; nothing is pulled).
    Image {
        /// Use the binaries already in target/release (target/debug) instead of building them.
        #[arg(long)]
        no_build: bool,
        /// `release`: the images to deploy, tagged with the version and `latest`. `dev`: the
        /// debug binaries of target/debug in `rill-controller` and `rill-broker` images tagged
        /// only for the docker fault scenarios of `rill-chaos` (`test-<hash>`; kept when already
        /// built from the same binaries).
        #[arg(long, value_enum, default_value = "release")]
        profile: image::Profile,
    },
    /// The containerized cluster of deploy/compose: `up` (builds the images if missing),
    /// `status`, `down`.
    Compose {
        #[command(subcommand)]
        action: ComposeAction,
    },
    /// Check deploy/: the Kubernetes overlays render with kustomize and validate against the
    /// Kubernetes schemas offline; the compose file is valid (installs missing tools).
    DeployCheck,
    /// Run a fuzzer (needs nightly and cargo-fuzz; installs cargo-fuzz if absent): by default
    /// the Kafka listener's request decoder (`fuzz/`), or rill-protocol's record batch reader.
    Fuzz {
        /// Seconds to fuzz for.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Which fuzz target: `kafka_request` or `record_batch`.
        #[arg(long, default_value = "kafka_request")]
        target: String,
    },
    /// Instruction counts of the per-batch hot paths (build, validate, read; rill-protocol's
    /// `hot_paths` bench) under valgrind's callgrind: figures that do not move with machine
    /// load. Installs valgrind and gungraun-runner when missing.
    Callgrind,
    /// Benchmark a Kafka-protocol broker (rill's Kafka listener or any other) with librdkafka
    /// (confluent-kafka-python, installed in target/python-clients): unthrottled produce,
    /// produce at a fixed rate with p50/p99/p999 latency, then consume everything back.
    KafkaBench {
        /// Kafka bootstrap address, e.g. 127.0.0.1:9096 (`cargo xtask cluster up`'s first broker).
        #[arg(long, default_value = "127.0.0.1:9096")]
        bootstrap: String,
        /// Further options of xtask/kafka_bench.py (`--records`, `--rate`, `--acks`,
        /// `--name`, ...), after `--`.
        #[arg(last = true)]
        args: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ComposeAction {
    /// Start the 3 controllers and 3 brokers (building the images first if they are missing)
    /// and wait until every container is healthy.
    Up {
        /// Rebuild the release binaries and images first, even if the images exist.
        #[arg(long)]
        build: bool,
    },
    /// The containers, their health, and the cluster as the controllers see it.
    Status,
    /// Stop and remove the containers and the network (brokers first, gracefully).
    Down {
        /// Also delete the data volumes.
        #[arg(long)]
        volumes: bool,
    },
}

#[derive(Subcommand)]
enum ClusterAction {
    /// Build release binaries and start controllers (first on 9093) and brokers (first on 9092),
    /// data and logs under `.rill/`; wait until healthy, run a short produce/consume demo.
    Up {
        /// Number of controllers.
        #[arg(long, default_value_t = 3)]
        controllers: usize,
        /// Number of brokers.
        #[arg(long, default_value_t = 3)]
        brokers: usize,
        /// Skip the produce/consume demo.
        #[arg(long)]
        no_demo: bool,
    },
    /// Show the processes `up` started and the cluster as the controllers see it.
    Status,
    /// Stop exactly the processes `up` started.
    Down,
    /// SIGKILL one node (a crash), e.g. `broker-2` or `controller-1`.
    Kill {
        /// `broker-N` or `controller-N`.
        node: String,
    },
    /// SIGTERM one node and wait until it has exited (a graceful stop).
    Stop {
        /// `broker-N` or `controller-N`.
        node: String,
    },
    /// Start a killed or stopped node again, with the ports and data `up` gave it.
    Start {
        /// `broker-N` or `controller-N`.
        node: String,
    },
    /// SIGSTOP one node: frozen (no heartbeats, no answers) until `resume`.
    Pause {
        /// `broker-N` or `controller-N`.
        node: String,
    },
    /// SIGCONT a paused node.
    Resume {
        /// `broker-N` or `controller-N`.
        node: String,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Cmd::Ci => ci(),
        Cmd::Cluster { action } => cluster::run(action),
        Cmd::Image { no_build, profile } => {
            let tagging = match profile {
                image::Profile::Release => image::Tagging::Deploy,
                image::Profile::Dev => image::Tagging::Test,
            };
            image::build_images(profile, tagging, !no_build)
        }
        Cmd::Compose { action } => compose::run(action),
        Cmd::DeployCheck => deploy_check::run(),
        Cmd::Fuzz { seconds, target } => fuzz(seconds, &target),
        Cmd::Callgrind => callgrind(),
        Cmd::KafkaBench { bootstrap, args } => {
            let python = python_clients()?;
            let script = cluster::root().join("xtask/kafka_bench.py");
            let script = script
                .to_str()
                .context("the repository path is not UTF-8")?;
            let mut all = vec![script, "--bootstrap", &bootstrap];
            all.extend(args.iter().map(String::as_str));
            run(&python, &all)
        }
        Cmd::Soak {
            minutes,
            scenarios,
            docker,
        } => {
            if docker {
                soak_docker(minutes, &scenarios)
            } else {
                soak(minutes, &scenarios)
            }
        }
    }
}

fn ci() -> Result<()> {
    install_missing_tools()?;
    run("cargo", &["fmt", "--all", "--check"])?;
    run(
        "cargo",
        &[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ],
    )?;
    // Documentation builds without broken links or stray HTML.
    run_with_env(
        "cargo",
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // The multi-process tests start the workspace's binaries (broker, controller, CLI).
    run("cargo", &["build", "--workspace", "--bins"])?;
    // deploy/: the Kubernetes overlays render and validate offline, the compose file parses,
    // the broker knows every property the deploy files set.
    deploy_check::run()?;
    // Doc tests are not run by nextest; run them first so the test summary closes the output.
    run("cargo", &["test", "--workspace", "--doc"])?;
    // The test build links the binaries again when dev-dependencies change their features, so
    // build it first: the images below must hold the binaries the tests run with.
    run("cargo", &["nextest", "run", "--workspace", "--no-run"])?;
    // The docker fault scenarios of rill-chaos run these binaries in containers of the project's
    // images (tagged for the tests; rebuilt only when the binaries changed).
    image::build_images(image::Profile::Dev, image::Tagging::Test, false)?;
    run(
        "cargo",
        &["nextest", "run", "--workspace", "--no-fail-fast"],
    )
}

/// The `hot_paths` bench under callgrind, with its tools installed first.
fn callgrind() -> Result<()> {
    if !succeeds("valgrind", &["--version"]) {
        deploy_check::apt_install("valgrind")
            .context("valgrind is missing and could not be installed")?;
    }
    // The runner must be the version of the gungraun library the bench links (the workspace
    // pins it exactly).
    let manifest = std::fs::read_to_string(cluster::root().join("Cargo.toml"))?;
    let version = manifest
        .lines()
        .find_map(|l| l.strip_prefix("gungraun = \"="))
        .and_then(|v| v.strip_suffix('"'))
        .context("Cargo.toml pins no gungraun version (gungraun = \"=X.Y.Z\")")?;
    let installed = Command::new("gungraun-runner")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).contains(version))
        .unwrap_or(false);
    if !installed {
        run(
            "cargo",
            &[
                "install",
                "gungraun-runner",
                "--locked",
                "--version",
                version,
            ],
        )
        .context("could not install gungraun-runner")?;
    }
    run(
        "cargo",
        &["bench", "-p", "rill-protocol", "--bench", "hot_paths"],
    )
}

/// `ci` is the README's test command, so it must work on a fresh machine with only a Rust
/// toolchain: install what it uses (rustfmt, clippy, cargo-nextest, kcat, the Python Kafka
/// clients) when it is missing.
fn install_missing_tools() -> Result<()> {
    for (component, probe) in [("rustfmt", "fmt"), ("clippy", "clippy")] {
        if !succeeds("cargo", &[probe, "--version"]) {
            run("rustup", &["component", "add", component]).with_context(|| {
                format!("`cargo {probe}` is missing and rustup could not add it")
            })?;
        }
    }
    if !succeeds("cargo", &["nextest", "--version"]) {
        run("cargo", &["install", "cargo-nextest", "--locked"])
            .context("cargo-nextest is missing and could not be installed")?;
    }
    // rill-broker's Kafka-listener tests run kcat (librdkafka), a Kafka client nobody here wrote.
    if !succeeds("kcat", &["-V"]) {
        deploy_check::apt_install("kcat")
            .context("kcat is missing and could not be installed (Debian: apt-get install kcat)")?;
    }
    python_clients()?;
    Ok(())
}

/// Three Python Kafka clients, confluent-kafka-python (librdkafka), kafka-python (pure Python)
/// and aiokafka (asyncio, its own protocol code), in a venv of their own that the tests find at
/// target/python-clients (Debian's python3 refuses system-wide pip installs, PEP 668); created
/// when missing. Returns its python.
fn python_clients() -> Result<String> {
    let venv = cluster::root().join("target/python-clients");
    let python = venv.join("bin/python3");
    let python = python.to_str().context("the venv path is not UTF-8")?;
    if !succeeds(python, &["-c", "import confluent_kafka, kafka, aiokafka"]) {
        if !succeeds("python3", &["-c", "import ensurepip, venv"]) {
            for package in ["python3-venv", "python3-pip"] {
                deploy_check::apt_install(package)
                    .with_context(|| format!("{package} is missing and could not be installed"))?;
            }
        }
        let venv = venv.to_str().context("the venv path is not UTF-8")?;
        run("python3", &["-m", "venv", venv])
            .context("could not create the Python clients' venv")?;
        run(
            python,
            &[
                "-m",
                "pip",
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "confluent-kafka>=2.3,<3",
                "kafka-python>=2.0.2,<3",
                "aiokafka>=0.10,<1",
            ],
        )
        .context(
            "could not install confluent-kafka, kafka-python and aiokafka into target/python-clients",
        )?;
    }
    Ok(python.to_owned())
}

/// True when `program args` runs and exits successfully (its output is discarded).
pub(crate) fn succeeds(program: &str, args: &[&str]) -> bool {
    Command::new(program)
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The long fault runs: the broker's kill-and-restart soak, then the issue-11 scenarios
/// (`rill-chaos`) in a loop with the history checker, each for `minutes`. `scenarios` picks
/// which (comma-separated numbers; default the ones that hold before follower replication).
fn soak(minutes: u64, scenarios: &str) -> Result<()> {
    run("cargo", &["build", "--release", "--workspace", "--bins"])?;
    let secs = (minutes * 60).to_string();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    // (package, test target, test name filter)
    let runs = [
        ("rill-broker", "soak", None),
        ("rill-chaos", "scenarios", Some("soak_scenarios")),
    ];
    for (package, test, filter) in runs {
        let mut args = vec!["test", "--release", "-p", package, "--test", test];
        args.extend(filter);
        args.extend(["--", "--ignored", "--nocapture"]);
        eprintln!("$ RILL_SOAK_SECS={secs} cargo {}", args.join(" "));
        let status = Command::new("cargo")
            .args(&args)
            .env("RILL_SOAK_SECS", &secs)
            .env("RILL_SOAK_SCENARIOS", scenarios)
            .current_dir(&root)
            .status()
            .context("failed to start cargo")?;
        if !status.success() {
            bail!("the soak run of {package} failed: {status}");
        }
    }
    Ok(())
}

/// The docker fault scenarios in a loop for `minutes`, on images of the release binaries.
fn soak_docker(minutes: u64, scenarios: &str) -> Result<()> {
    run("cargo", &["build", "--release", "--workspace", "--bins"])?;
    run(
        "cargo",
        &[
            "test",
            "--release",
            "-p",
            "rill-chaos",
            "--test",
            "docker_scenarios",
            "--no-run",
        ],
    )?;
    image::build_images(image::Profile::Release, image::Tagging::Test, false)?;
    let secs = (minutes * 60).to_string();
    let args = [
        "test",
        "--release",
        "-p",
        "rill-chaos",
        "--test",
        "docker_scenarios",
        "soak_docker_scenarios",
        "--",
        "--ignored",
        "--nocapture",
    ];
    eprintln!(
        "$ RILL_SOAK_SECS={secs} RILL_SOAK_SCENARIOS={scenarios} cargo {}",
        args.join(" ")
    );
    let status = Command::new("cargo")
        .args(args)
        .env("RILL_SOAK_SECS", &secs)
        .env("RILL_SOAK_SCENARIOS", scenarios)
        .current_dir(cluster::root())
        .status()
        .context("failed to start cargo")?;
    if !status.success() {
        bail!("the docker soak run failed: {status}");
    }
    Ok(())
}

fn fuzz(seconds: u64, target: &str) -> Result<()> {
    if !succeeds("cargo", &["fuzz", "--version"]) {
        run("cargo", &["install", "cargo-fuzz", "--locked"])?;
    }
    let secs = format!("-max_total_time={seconds}");
    match target {
        "record_batch" => run_in(
            "crates/rill-protocol",
            "cargo",
            &["+nightly", "fuzz", "run", "record_batch", "--", &secs],
        ),
        // New inputs go to fuzz/corpus (ignored by git), read with the committed seeds; a crash
        // is written to fuzz/artifacts. A single allocation over 64 MiB counts as a crash (a
        // frame is at most socket.request.max.bytes, and these inputs are at most 64 KiB).
        "kafka_request" => {
            for dir in ["corpus", "regressions"] {
                std::fs::create_dir_all(
                    cluster::root().join("fuzz").join(dir).join("kafka_request"),
                )?;
            }
            run_in(
                ".",
                "cargo",
                &[
                    "+nightly",
                    "fuzz",
                    "run",
                    "--fuzz-dir",
                    "fuzz",
                    "kafka_request",
                    "fuzz/corpus/kafka_request",
                    "fuzz/seeds/kafka_request",
                    "fuzz/regressions/kafka_request",
                    "--",
                    &secs,
                    "-max_len=65536",
                    "-malloc_limit_mb=64",
                    "-rss_limit_mb=2048",
                ],
            )
        }
        other => bail!("no fuzz target {other:?} (kafka_request, record_batch)"),
    }
}

fn run_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    eprintln!(
        "$ {} {program} {}",
        env.iter()
            .map(|(k, v)| format!("{k}={v:?}"))
            .collect::<Vec<_>>()
            .join(" "),
        args.join(" ")
    );
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .current_dir(root)
        .status()
        .with_context(|| format!("failed to start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}

pub(crate) fn run(program: &str, args: &[&str]) -> Result<()> {
    run_in(".", program, args)
}

fn run_in(dir: &str, program: &str, args: &[&str]) -> Result<()> {
    eprintln!("$ {program} {}", args.join(" "));
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let status = Command::new(program)
        .args(args)
        .current_dir(root.join(dir))
        .status()
        .with_context(|| format!("failed to start {program}"))?;
    if !status.success() {
        bail!("`{program} {}` failed with {status}", args.join(" "));
    }
    Ok(())
}
