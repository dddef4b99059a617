//! rill's consumer, as Kafka's `KafkaConsumer`: partitions chosen with `assign`, or handed out
//! by a consumer group's coordinator with `subscribe` (KIP-848's "consumer" protocol: the
//! coordinator computes assignments, members reconcile to them); seek, poll, commits, and
//! offsets by time. [`admin`] holds the group administration `rill group` uses.
//!
//! Modules follow Kafka's client: [`Consumer`] (the application's calls) over
//! `subscription_state` (what is assigned, positions, pauses), `fetcher` (pipelined fetches,
//! CRC checks), `offset_fetcher` (ListOffsets lookups), `coordinator_client` (finding and
//! calling the group coordinator) and `consumer_coordinator` (membership: the heartbeat task,
//! reconciliation inside `poll`, commits).
//!
//! `poll` returns what earlier prefetches brought and immediately starts the next fetch to each
//! leader in the background (pipelining), so the network wait overlaps with the caller's work.
//! Every batch is CRC-checked and decompressed on receipt; leader changes are followed by
//! refreshing metadata; positions advance by batch headers, so compacted batches with offset
//! gaps (or no records at all) never stall a reader.

#![warn(missing_docs)]

pub mod admin;
mod config;
mod consumer;
mod consumer_coordinator;
mod coordinator_client;
mod error;
mod fetcher;
mod offset_fetcher;
mod subscription_state;

#[cfg(test)]
mod testing;

use bytes::Bytes;

pub use config::{ConsumerConfig, OffsetReset};
pub use consumer::Consumer;
pub use consumer_coordinator::{ConsumerRebalanceListener, NoOpRebalanceListener};
pub use error::ConsumerError;
pub use rill_protocol::TopicPartition;
pub use subscription_state::Subscription;

/// A consumed record.
///
/// Its key, value and header values are slices of the fetch answer they came in (as
/// librdkafka's messages point into their fetch buffer), not copies: a record kept keeps that
/// whole answer (up to `max.partition.fetch.bytes` per partition) in memory. An application
/// that keeps a few records for long should copy what it keeps (`Bytes::copy_from_slice`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConsumerRecord {
    #[allow(missing_docs)]
    pub topic: String,
    #[allow(missing_docs)]
    pub partition: i32,
    #[allow(missing_docs)]
    pub offset: i64,
    /// Milliseconds since the Unix epoch: the producer's time (CreateTime) or the broker's
    /// (topics with `message.timestamp.type=LogAppendTime`).
    pub timestamp: i64,
    /// `None` for a record sent without a key.
    pub key: Option<Bytes>,
    /// Value (`None` is a tombstone).
    pub value: Option<Bytes>,
    /// Header keys and values, in the order the producer added them (keys may repeat).
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// A committed position (Kafka's `OffsetAndMetadata`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct OffsetAndMetadata {
    /// The next offset to consume: the last processed offset + 1.
    pub offset: i64,
    /// The leader epoch of the last record consumed, when known (lets a later reader detect
    /// a truncated log).
    pub leader_epoch: Option<i32>,
    /// Free text stored with the offset (at most the broker's `offset.metadata.max.bytes`).
    pub metadata: String,
}

impl OffsetAndMetadata {
    /// `offset` with no epoch and no metadata.
    pub fn new(offset: i64) -> Self {
        OffsetAndMetadata {
            offset,
            ..Default::default()
        }
    }
}

impl From<i64> for OffsetAndMetadata {
    fn from(offset: i64) -> Self {
        OffsetAndMetadata::new(offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send_sync<T: Send + Sync>() {}

    #[test]
    fn a_consumer_can_move_between_tasks_and_be_shared() {
        send_sync::<Consumer>();
        send_sync::<admin::GroupAdmin>();
    }
}
