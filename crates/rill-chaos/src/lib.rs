//! Proof tooling for rill, in the spirit of Jepsen: record what clients were told, read back
//! what the log holds, and let a checker find every broken promise.
//!
//! - [`history`]: the [`History`] of produce attempts (ok / failed / unknown) and reads, and
//!   [`check`](history::check), which reports lost acknowledged records, duplicates, reorders,
//!   records nobody wrote, refused writes that became visible and records moved off their
//!   acknowledged offset.
//! - [`workload`]: writers producing unique values through `rill_producer::Producer` (acks=all)
//!   while faults happen, the members of a consumer group reading along ([`GroupReaders`]), and
//!   the final full read with `rill_consumer::Consumer`.
//! - [`cluster`]: real controller and broker processes with SIGKILL / SIGTERM / SIGSTOP /
//!   SIGCONT per node, and the questions scenarios ask of any cluster ([`ClusterView`]:
//!   leader, active controller, ISR).
//! - [`docker`]: the compose cluster of `deploy/compose/` (one container and address per node)
//!   with network partitions, `docker network disconnect`, pause, kill, stop and start.
//!
//! The fault scenarios themselves are this crate's integration tests (`tests/scenarios.rs` on
//! processes, `tests/docker_scenarios.rs` on containers).

#![warn(missing_docs)]

pub mod cluster;
pub mod docker;
pub mod history;
pub mod workload;

pub use cluster::{ClusterConfig, ClusterView, LocalCluster, NodeName, PartitionState, Role};
pub use docker::{DockerCluster, DockerConfig};
pub use history::{ConsumedReport, History, Outcome, Read, Report};
pub use workload::{
    GroupReaders, MemberStats, Workload, WorkloadConfig, probe_produce, probe_produce_via, read_all,
};

use std::path::PathBuf;

/// What can go wrong running a scenario (the checker itself cannot fail: it reports).
#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A process or file operation failed.
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    /// The cluster answered with an error.
    #[error(transparent)]
    Api(#[from] rill_protocol::ApiError),
    /// The producer could not be created.
    #[error("producer: {0}")]
    Producer(#[from] rill_producer::ProducerError),
    /// The consumer failed for good.
    #[error("consumer: {0}")]
    Consumer(#[from] rill_consumer::ConsumerError),
    /// A binary the harness starts is not built.
    #[error("{} is not built; run `cargo build --workspace --bins` (or set RILL_BIN_DIR)", .0.display())]
    MissingBinary(PathBuf),
    /// Not a node name like `broker-2` or `controller-1`.
    #[error("bad node name {0:?}: expected broker-N or controller-N")]
    BadNodeName(String),
    /// The cluster has no such node.
    #[error("the cluster has no {0}")]
    NoSuchNode(NodeName),
    /// The node is not running.
    #[error("{0} is not running")]
    NotRunning(NodeName),
    /// kill(1) failed.
    #[error("sending SIG{signal} to pid {pid} failed")]
    Signal {
        /// The node's process id.
        pid: u32,
        /// The signal name.
        signal: String,
    },
    /// Something did not happen in time.
    #[error("timed out: {0}")]
    Timeout(String),
    /// The cluster refused an admin operation.
    #[error("cluster: {0}")]
    Cluster(String),
    /// Docker is missing, a docker command failed, or the images are missing or stale.
    #[error("docker: {0}")]
    Docker(String),
    /// A task of the workload panicked or was cancelled.
    #[error("workload task: {0}")]
    Task(#[from] tokio::task::JoinError),
}
