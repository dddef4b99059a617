//! rill's public wire contract: the gRPC services generated from `proto/rill/v1/*.proto`, the
//! error model shared by every crate, and Kafka's v2 record batch format.
//!
//! Everything a client or server needs to speak to rill lives here, and nothing else does: no
//! storage and no server. Also here: the metadata image (the state machine controllers and
//! brokers both build from the metadata log) and `client`, the small client-side core
//! (bootstrap, metadata cache, admin calls) shared by the producer, consumer and CLI.

#![warn(missing_docs)]

pub mod client;
pub mod error;
pub mod fetch_call;
pub mod metadata_image;
pub mod record_batch;
mod topic_partition;

pub use error::{ApiError, ERROR_CODE_METADATA, LEADER_HINT_METADATA};
pub use proto::ErrorCode;
pub use topic_partition::TopicPartition;

/// Generated protobuf messages and tonic clients/servers for package `rill.v1`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("rill.v1");

    /// Encoded `FileDescriptorSet` of the rill API, for gRPC server reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/rill_descriptor.bin"));
}

/// HTTP/2 settings of rill's gRPC connections, tuned for record data rather than small RPCs.
///
/// The HTTP/2 defaults (16 KiB frames, 64 KiB–2 MiB flow-control windows) cut a 6 MiB fetch
/// response into ~400 frames and stall it on window updates; fetch and produce carry megabytes
/// per call, so both sides advertise larger frames and windows: the broker's gRPC server, the
/// replica fetchers, and the clients (producers, consumers, the CLI). The controllers' small
/// metadata calls keep the defaults.
pub mod transport {
    /// Largest HTTP/2 frame this side accepts (`SETTINGS_MAX_FRAME_SIZE`; the protocol's own
    /// limit is 16 MiB − 1).
    pub const MAX_FRAME_SIZE: u32 = 1 << 20;
    /// Per-stream receive window: how much one call may send before the receiver reads it.
    pub const STREAM_WINDOW: u32 = 16 << 20;
    /// Per-connection receive window, over all calls on it.
    pub const CONNECTION_WINDOW: u32 = 32 << 20;

    /// `endpoint` with rill's HTTP/2 settings (see the module).
    pub fn tune(endpoint: tonic::transport::Endpoint) -> tonic::transport::Endpoint {
        endpoint
            .max_frame_size(MAX_FRAME_SIZE)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
    }

    /// `server` with rill's HTTP/2 settings (see the module).
    pub fn tune_server<L>(server: tonic::transport::Server<L>) -> tonic::transport::Server<L> {
        server
            .max_frame_size(MAX_FRAME_SIZE)
            .initial_stream_window_size(STREAM_WINDOW)
            .initial_connection_window_size(CONNECTION_WINDOW)
    }
}
