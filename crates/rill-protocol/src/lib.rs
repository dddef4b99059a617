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
