//! Raft message transport between controllers over the `Quorum` gRPC service.
//!
//! One task per peer owns a bounded queue and a lazily connected channel. It sends whatever is
//! queued as one `Step` batch; on failure it reports the peer unreachable, backs off and drops
//! the batch (Raft retransmits). A slow or dead peer only fills its own queue, never blocks the
//! quorum thread or the other peers. A message that does not fit in the queue is dropped and
//! handed back to the quorum thread as [`Dropped`], which reports it to Raft
//! (`report_unreachable`, or `report_snapshot(Failure)` for a snapshot): Raft must not believe
//! a message is on its way when it was never sent.

use std::collections::HashMap;
use std::time::Duration;

use protobuf::Message as _;
use raft::prelude::{Message, MessageType};
use rill_protocol::proto::RaftMessageBatch;
use rill_protocol::proto::quorum_client::QuorumClient;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::Voter;
use crate::quorum_controller::{Event, QuorumHandle};

/// Messages queued per peer before new ones are dropped.
const PEER_QUEUE: usize = 4096;
/// Largest batch sent in one call.
const MAX_BATCH_BYTES: usize = 8 << 20;

/// Outbound Raft messages, by peer.
pub struct Transport {
    peers: HashMap<u64, mpsc::Sender<Message>>,
}

/// A message [`Transport::send`] could not queue (the peer's queue was full or its task gone).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    /// The peer it was for.
    pub peer: u64,
    /// It was a `MsgSnapshot` (Raft must hear the snapshot failed, not just the peer).
    pub snapshot: bool,
}

impl Transport {
    /// Starts one sender task per peer (every voter but `me`) on the current runtime.
    pub fn start(
        me: u64,
        voters: &[Voter],
        cluster_id: String,
        events: QuorumHandle,
        shutdown: CancellationToken,
    ) -> Self {
        let mut peers = HashMap::new();
        for v in voters.iter().filter(|v| v.id != me) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            peers.insert(v.id, tx);
            tokio::spawn(peer_task(
                me,
                v.clone(),
                cluster_id.clone(),
                rx,
                events.clone(),
                shutdown.clone(),
            ));
        }
        Transport { peers }
    }

    /// Queues messages for their peers (never blocks). Returns the messages it had to drop,
    /// which the caller must report to Raft.
    #[must_use = "dropped messages must be reported to Raft"]
    pub fn send(&self, msgs: Vec<Message>) -> Vec<Dropped> {
        let mut dropped = Vec::new();
        for m in msgs {
            let Some(peer) = self.peers.get(&m.to) else {
                continue;
            };
            let (to, snapshot) = (m.to, m.get_msg_type() == MessageType::MsgSnapshot);
            if let Err(e) = peer.try_send(m) {
                tracing::debug!(
                    peer = to,
                    snapshot,
                    full = matches!(e, mpsc::error::TrySendError::Full(_)),
                    "peer queue full or closed; dropping a raft message"
                );
                dropped.push(Dropped { peer: to, snapshot });
            }
        }
        dropped
    }

    /// A transport over given queues, without sender tasks (tests).
    #[cfg(test)]
    pub(crate) fn with_queues(peers: HashMap<u64, mpsc::Sender<Message>>) -> Self {
        Transport { peers }
    }
}

async fn peer_task(
    me: u64,
    peer: Voter,
    cluster_id: String,
    mut rx: mpsc::Receiver<Message>,
    events: QuorumHandle,
    shutdown: CancellationToken,
) {
    let endpoint = match tonic::transport::Endpoint::from_shared(format!("http://{}", peer.address))
    {
        Ok(e) => e
            .connect_timeout(Duration::from_millis(500))
            .timeout(Duration::from_secs(5)),
        Err(e) => {
            tracing::error!(peer = peer.id, address = %peer.address, error = %e, "bad voter address");
            return;
        }
    };
    let mut client = QuorumClient::new(endpoint.connect_lazy())
        .max_encoding_message_size(64 << 20)
        .max_decoding_message_size(64 << 20);
    let mut backoff = Duration::from_millis(50);
    loop {
        let first = tokio::select! {
            _ = shutdown.cancelled() => return,
            m = rx.recv() => match m { Some(m) => m, None => return },
        };
        let mut batch = vec![first];
        let mut bytes = 0usize;
        while bytes < MAX_BATCH_BYTES {
            match rx.try_recv() {
                Ok(m) => {
                    bytes += m.compute_size() as usize;
                    batch.push(m);
                }
                Err(_) => break,
            }
        }
        let snapshots: Vec<u64> = batch
            .iter()
            .filter(|m| m.get_msg_type() == MessageType::MsgSnapshot)
            .map(|m| m.to)
            .collect();
        let messages: Vec<bytes::Bytes> = batch
            .iter()
            .filter_map(|m| m.write_to_bytes().ok().map(bytes::Bytes::from))
            .collect();
        let request = RaftMessageBatch {
            from: me,
            to: peer.id,
            cluster_id: cluster_id.clone(),
            messages,
        };
        match client.step(request).await {
            Ok(_) => {
                backoff = Duration::from_millis(50);
                for to in snapshots {
                    let _ = events.send(Event::SnapshotSent(to, true));
                }
            }
            Err(status) => {
                tracing::debug!(peer = peer.id, error = %status, "raft send failed");
                let _ = events.send(Event::Unreachable(peer.id));
                for to in snapshots {
                    let _ = events.send(Event::SnapshotSent(to, false));
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(to: u64, t: MessageType) -> Message {
        let mut m = Message {
            to,
            ..Default::default()
        };
        m.set_msg_type(t);
        m
    }

    #[test]
    fn messages_that_do_not_fit_are_handed_back_for_reporting() {
        let (tx2, _rx2) = mpsc::channel(1);
        let (tx3, _rx3) = mpsc::channel(2);
        let transport = Transport::with_queues(HashMap::from([(2, tx2), (3, tx3)]));
        let dropped = transport.send(vec![
            msg(2, MessageType::MsgAppend),
            msg(2, MessageType::MsgAppend),
            msg(2, MessageType::MsgSnapshot),
            msg(3, MessageType::MsgHeartbeat),
            msg(3, MessageType::MsgSnapshot),
            msg(9, MessageType::MsgAppend),
        ]);
        assert_eq!(
            dropped,
            vec![
                Dropped {
                    peer: 2,
                    snapshot: false
                },
                Dropped {
                    peer: 2,
                    snapshot: true
                },
            ]
        );
    }

    #[test]
    fn a_gone_peer_task_counts_as_dropped() {
        let (tx, rx) = mpsc::channel(8);
        drop(rx);
        let transport = Transport::with_queues(HashMap::from([(2, tx)]));
        let dropped = transport.send(vec![msg(2, MessageType::MsgHeartbeat)]);
        assert_eq!(
            dropped,
            vec![Dropped {
                peer: 2,
                snapshot: false
            }]
        );
    }
}
