//! rill's controller: a Raft quorum (tikv raft-rs) that owns the cluster metadata, as Kafka's
//! KRaft controllers do.
//!
//! Map: [`config`] (figment config) → [`server::run`] wires the gRPC services ([`service`]), the
//! peer [`transport`] and the [`quorum_controller`] thread, which drives Raft over the durable
//! [`raft_log`] and applies committed records to the metadata image
//! (`rill_protocol::metadata_image`). [`commands`] holds the
//! rules of every operation.

#![warn(missing_docs)]

pub mod commands;
pub mod config;
mod logger;
pub mod metrics;
pub mod quorum_controller;
pub mod raft_log;
pub mod server;
pub mod service;
pub mod transport;

pub use config::ControllerConfig;
pub use server::run;

/// Why the controller could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The configuration (file, environment, flags) is unreadable or out of range.
    #[error(transparent)]
    Config(#[from] config::ConfigError),
    /// The metadata log could not be read or written.
    #[error(transparent)]
    Log(#[from] raft_log::RaftLogError),
    /// raft-rs refused its configuration or state.
    #[error("raft: {0}")]
    Raft(String),
    /// The listener could not be bound or served.
    #[error("listener {address}: {reason}")]
    Listener {
        /// `host:port` that could not be bound or served.
        address: String,
        /// The error from binding or serving (e.g. address already in use).
        reason: String,
    },
}
