//! `rill-controller`: one voter of the metadata quorum.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use rill_controller::ControllerConfig;
use tokio_util::sync::CancellationToken;

/// Runs a rill controller (a voter of the Raft metadata quorum).
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// TOML config file (Kafka property names as dotted keys).
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// `node.id`.
    #[arg(long)]
    node_id: Option<u64>,
    /// `listeners` (host:port).
    #[arg(long)]
    listeners: Option<String>,
    /// `controller.quorum.voters` (id@host:port,...).
    #[arg(long)]
    voters: Option<String>,
    /// `metadata.log.dir`.
    #[arg(long)]
    metadata_log_dir: Option<PathBuf>,
    /// `metrics.address` (host:port of /metrics and /health).
    #[arg(long)]
    metrics_address: Option<String>,
    /// Any property, as name=value (repeatable), e.g. --override broker.session.timeout.ms=6000.
    #[arg(long = "override", value_name = "NAME=VALUE")]
    overrides: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,raft=warn".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let mut overrides = BTreeMap::new();
    for o in &args.overrides {
        let (k, v) = o
            .split_once('=')
            .with_context(|| format!("--override {o:?} is not NAME=VALUE"))?;
        overrides.insert(k.trim().to_owned(), v.trim().to_owned());
    }
    if let Some(v) = args.node_id {
        overrides.insert("node.id".into(), v.to_string());
    }
    if let Some(v) = &args.listeners {
        overrides.insert("listeners".into(), v.clone());
    }
    if let Some(v) = &args.voters {
        overrides.insert("controller.quorum.voters".into(), v.clone());
    }
    if let Some(v) = &args.metrics_address {
        overrides.insert("metrics.address".into(), v.clone());
    }
    if let Some(v) = &args.metadata_log_dir {
        overrides.insert("metadata.log.dir".into(), v.display().to_string());
    }
    let config = ControllerConfig::load(args.config.as_deref(), &overrides)
        .context("invalid configuration")?;
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
        rill_controller::run(config, shutdown, None).await
    })?;
    Ok(())
}

async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return std::future::pending().await,
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
