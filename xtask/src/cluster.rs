//! `cargo xtask cluster up|status|down`: a local rill cluster of real processes on 127.0.0.1.
//!
//! Ports: controller i listens on 9093 + 100·i (metrics 9095 + 100·i), broker i on
//! 9092 + 100·i (metrics 9094 + 100·i). Everything lives under `.rill/` in the repository: data
//! directories, one log file per process (`.rill/logs/<name>.log`, both its stdout and its
//! stderr), and `pids` (what `down` stops, and nothing else).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::ClusterAction;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
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
    let voters: Vec<String> = (0..controllers)
        .map(|i| format!("{}@127.0.0.1:{}", i + 1, 9093 + 100 * i))
        .collect();
    let voters = voters.join(",");
    let mut started = Vec::new();
    for i in 0..controllers {
        let name = format!("controller-{}", i + 1);
        let log = dir.join("logs").join(format!("{name}.log"));
        let child = detached(logging_to(
            &log,
            Command::new(bin("rill-controller"))
                .args([
                    "--node-id",
                    &(i + 1).to_string(),
                    "--listeners",
                    &format!("127.0.0.1:{}", 9093 + 100 * i),
                ])
                .args(["--voters", &voters])
                .arg("--metadata-log-dir")
                .arg(dir.join(&name))
                .args([
                    "--metrics-address",
                    &format!("127.0.0.1:{}", 9095 + 100 * i),
                ]),
        )?)?;
        started.push((name, child));
    }
    for i in 0..brokers {
        let name = format!("broker-{}", i + 1);
        let log = dir.join("logs").join(format!("{name}.log"));
        let child = detached(logging_to(
            &log,
            Command::new(bin("rill-broker"))
                .args([
                    "--node-id",
                    &(i + 1).to_string(),
                    "--listeners",
                    &format!("127.0.0.1:{}", 9092 + 100 * i),
                ])
                .args(["--voters", &voters])
                .arg("--log-dirs")
                .arg(dir.join(&name))
                .args([
                    "--metrics-address",
                    &format!("127.0.0.1:{}", 9094 + 100 * i),
                ])
                .args(["--override", "log.flush.policy=commit"]),
        )?)?;
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
        "rill is up: bootstrap 127.0.0.1:9092 ({controllers} controllers, {brokers} brokers); data and logs in .rill/"
    );
    if demo {
        run_demo(brokers)?;
    }
    println!("stop it with: cargo xtask cluster down");
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
            if alive(*pid) { "running" } else { "stopped" }
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
