//! `rill-broker`: hosts partition logs and serves producers and consumers.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rill_broker::BrokerConfig;
use tokio_util::sync::CancellationToken;

/// Runs a rill broker.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML config file (Kafka property names as dotted keys).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// `node.id`.
    #[arg(long)]
    node_id: Option<i32>,
    /// `listeners` (host:port).
    #[arg(long)]
    listeners: Option<String>,
    /// `controller.quorum.voters` (id@host:port,...).
    #[arg(long)]
    voters: Option<String>,
    /// `log.dirs` (comma-separated).
    #[arg(long)]
    log_dirs: Option<String>,
    /// `metrics.address` (host:port).
    #[arg(long)]
    metrics_address: Option<String>,
    /// Any property, as name=value (repeatable), e.g. --override log.retention.ms=3600000.
    #[arg(long = "override", value_name = "NAME=VALUE")]
    overrides: Vec<String>,
    /// Print every known property with its default and meaning, then exit.
    #[arg(long)]
    help_config: bool,
}

fn main() -> anyhow::Result<()> {
    tune_malloc();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    if args.help_config {
        for (name, default, meaning) in BrokerConfig::known_properties() {
            println!("{name:<36} {default:<22} {meaning}");
        }
        return Ok(());
    }
    let mut overrides = BTreeMap::new();
    for o in &args.overrides {
        let (k, v) = o
            .split_once('=')
            .with_context(|| format!("--override {o:?} is not NAME=VALUE"))?;
        overrides.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    let flags = [
        ("node.id", args.node_id.map(|v| v.to_string())),
        ("listeners", args.listeners.clone()),
        ("controller.quorum.voters", args.voters.clone()),
        ("log.dirs", args.log_dirs.clone()),
        ("metrics.address", args.metrics_address.clone()),
    ];
    for (k, v) in flags {
        if let Some(v) = v {
            overrides.insert(k.into(), v);
        }
    }
    let config =
        BrokerConfig::load(args.config.as_deref(), &overrides).context("invalid configuration")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let shutdown = CancellationToken::new();
        let signal = shutdown.clone();
        tokio::spawn(async move {
            wait_for_signal().await;
            tracing::info!("shutdown requested");
            signal.cancel();
        });
        rill_broker::run(config, shutdown).await
    })?;
    Ok(())
}

async fn wait_for_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Fetch answers hold their segment reads (up to `max.partition.fetch.bytes` each) until the
/// socket has taken them, and another thread frees them. With glibc's defaults those buffers
/// went back to the kernel (`munmap`, heap trim) and the next reads page-faulted zeroed pages
/// back in (docs/benchmarks.md, "Fetch answers without tonic's copy"). Serving allocations
/// below 32 MiB from the heap and keeping up to 128 MiB of freed memory avoids that. An
/// operator's own settings of these two (`GLIBC_TUNABLES`, `MALLOC_*_THRESHOLD_`) win.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn tune_malloc() {
    let tunables = std::env::var("GLIBC_TUNABLES").unwrap_or_default();
    if tunables.contains("glibc.malloc.mmap_threshold")
        || tunables.contains("glibc.malloc.trim_threshold")
        || std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_some()
        || std::env::var_os("MALLOC_TRIM_THRESHOLD_").is_some()
    {
        return;
    }
    // SAFETY: mallopt only sets allocator parameters; no other thread exists yet.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 128 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn tune_malloc() {}
