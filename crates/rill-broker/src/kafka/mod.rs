//! The Kafka-protocol listener (`kafka.listeners`): Kafka's own binary protocol over TCP, so
//! existing Kafka clients (librdkafka and its bindings, kcat, the Java client) work unchanged.
//!
//! One task accepts connections; one task per connection reads 4-byte length-prefixed frames
//! (at most `socket.request.max.bytes`), decodes the request header and body with the
//! `kafka-protocol` crate, hands the request to the same handlers the gRPC service uses
//! ([`crate::apis`], translated by [`apis`]) and writes the answer back. Requests of one
//! connection are answered one at a time, in order, as Kafka's broker does (it mutes a
//! connection while its request is in flight). Record batches pass through as the bytes the
//! client sent and the bytes on disk.
//!
//! APIs (the versions ApiVersions lists, [`apis::SUPPORTED`]): ApiVersions 0-3, Metadata 1-12
//! (brokers at their `KAFKA` endpoints), Produce 3-9, Fetch 4-12 (with the fetch sessions of
//! KIP-227 from v7, [`fetch_session`]; v13+, topics by id, not yet), ListOffsets 1-7,
//! FindCoordinator 0-3, OffsetCommit 2-8 and OffsetFetch 1-7 (the broker's group coordinator),
//! InitProducerId 0-4 (forwarded to the controllers), and the classic group protocol: JoinGroup
//! 0-9, SyncGroup 0-5, Heartbeat 0-4, LeaveGroup 0-5, and ListGroups 0-5, DescribeGroups 0-5, DeleteGroups 0-2 (the
//! broker's group coordinator; JoinGroup
//! and SyncGroup answers are held until the rebalance gets that far, which holds the
//! connection, as Kafka's broker does); OffsetForLeaderEpoch 2-4 (the leader's epoch cache); the
//! admin APIs ([`admin`]): CreateTopics 2-7, DeleteTopics 1-6, CreatePartitions 0-3,
//! IncrementalAlterConfigs 0-1 and DescribeConfigs 1-4 of topics (forwarded to the
//! controllers), DescribeConfigs of this broker and of the cluster-wide broker default, and
//! DescribeCluster 0-2 (from the metadata image); ConsumerGroupHeartbeat 0-1 (KIP-848, the
//! group protocol of rill's own consumers, so `group.protocol=consumer` Kafka clients and rill
//! consumers share groups; topic ids translated to names through the metadata image).
//!
//! Failures stay on their connection: a version outside those of an API rill implements gets
//! that API's UNSUPPORTED_VERSION answer (for ApiVersions, error 35 with the supported versions,
//! as Kafka does; for a few unimplemented APIs with a top-level error code, that code); a frame
//! that is too large, truncated or undecodable, an unknown API key, or an API without such an
//! answer closes that connection with a log line. Array lengths are checked against the frame
//! before the codec runs (`guard`). The listener itself only stops on the broker's
//! cancellation token.

pub mod admin;
pub mod apis;
pub mod fetch_session;
mod guard;

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::{ApiKey, RequestHeader, RequestKind, ResponseHeader};
use kafka_protocol::protocol::{Decodable, Encodable};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::network::BrokerService;

/// The name of the Kafka-protocol endpoint a broker registers with the controllers, beside its
/// gRPC `PLAINTEXT` endpoint (which stays first: gRPC clients take the first endpoint).
pub const ENDPOINT_NAME: &str = "KAFKA";

/// Why a connection was closed.
#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    /// The socket failed or the peer closed it mid-frame.
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    /// A frame longer than `socket.request.max.bytes` (or a negative length).
    #[error("request of {size} bytes is larger than socket.request.max.bytes ({max})")]
    FrameTooLarge {
        /// The length the frame announced.
        size: i64,
        /// `socket.request.max.bytes`.
        max: usize,
    },
    /// A request that could not be decoded (truncated, garbage, unknown API key).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// An acks=0 produce that failed: it gets no answer, so the connection is closed.
    #[error(
        "an acks=0 produce failed ({0}); closing the connection so the client refreshes its metadata"
    )]
    AcksZeroFailed(String),
    /// A response that could not be encoded (a field out of range for the version).
    #[error("could not encode the {api:?} v{version} response: {reason}")]
    Encode {
        /// The API answered.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// What the codec reported.
        reason: String,
    },
}

/// What the listener needs from the broker: the gRPC service's handlers and state.
#[derive(Clone)]
pub struct KafkaApis {
    pub(crate) svc: BrokerService,
    pub(crate) coordinator: Option<Arc<crate::group_coordinator::GroupCoordinator>>,
    pub(crate) controllers: Option<Arc<crate::controller_client::ControllerClient>>,
    pub(crate) max_request_bytes: usize,
    /// Fetch sessions (KIP-227), `max.incremental.fetch.session.cache.slots` of them.
    pub(crate) fetch_sessions: Arc<fetch_session::FetchSessions>,
    /// `kafka.max.in.flight.produce.requests.per.connection` (see [`connection`]).
    pub(crate) max_in_flight_produce: usize,
}

impl KafkaApis {
    /// The Kafka-protocol front of `svc` (the handlers of the gRPC `Broker` service); frames
    /// longer than `max_request_bytes` close their connection.
    pub fn new(svc: BrokerService, max_request_bytes: usize) -> Self {
        let slots = svc.rm.config().max_incremental_fetch_session_cache_slots;
        let max_in_flight_produce = svc.rm.config().kafka_max_in_flight_produce;
        KafkaApis {
            max_in_flight_produce,
            fetch_sessions: Arc::new(fetch_session::FetchSessions::new(slots)),
            svc,
            coordinator: None,
            controllers: None,
            max_request_bytes,
        }
    }

    /// Answers FindCoordinator, OffsetCommit and OffsetFetch with the broker's group
    /// coordinator (the one the gRPC `GroupCoordinator` service uses).
    pub fn with_coordinator(
        mut self,
        coordinator: Arc<crate::group_coordinator::GroupCoordinator>,
    ) -> Self {
        self.coordinator = Some(coordinator);
        self
    }

    /// Forwards InitProducerId and the admin APIs to the controllers (they hand out producer
    /// ids and own topics and configs).
    pub fn with_controllers(
        mut self,
        controllers: Arc<crate::controller_client::ControllerClient>,
    ) -> Self {
        self.controllers = Some(controllers);
        self
    }
}

/// Accepts Kafka-protocol connections on `listener` until `stop` fires; each connection is
/// served by its own task, which also ends when `stop` fires.
pub async fn serve(listener: TcpListener, apis: Arc<KafkaApis>, stop: CancellationToken) {
    loop {
        let (socket, peer) = tokio::select! {
            _ = stop.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off rather than spin.
                    tracing::warn!(error = %e, "kafka listener: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = socket.set_nodelay(true);
        let apis = Arc::clone(&apis);
        let stop = stop.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                r = connection(socket, &apis) => {
                    if let Err(e) = r {
                        tracing::warn!(peer = %peer, error = %e, "kafka listener: closing the connection");
                    }
                }
            }
        });
    }
}

/// An answer being completed: `None` for a request that gets none (acks=0).
type Answer = Pin<Box<dyn Future<Output = Result<Option<Bytes>, KafkaError>> + Send>>;

/// A Produce appended, with its answer to come.
struct Started(Answer);

/// Serves one connection: frames in, answers out, in order, until the peer closes it or a frame
/// is malformed.
///
/// Kafka's broker takes one request of a connection at a time, which with fsync before ack
/// would cost an fsync per request in flight. Here consecutive Produce requests overlap:
/// each is appended before the next is read (so appends keep the client's order and
/// idempotent sequences stay in order), and up to
/// `kafka.max.in.flight.produce.requests.per.connection` of them wait for durability at once.
/// Any other request first waits for the answers before it, then is handled alone, as in
/// Kafka; answers always go out in request order. One limit: a Produce whose append outlasts
/// twice its timeout (a stalled disk) is answered REQUEST_TIMED_OUT and the next one is read,
/// so the two may be appended in either order — an idempotent producer's sequence check
/// catches that, as it catches a client's own retries.
async fn connection(socket: TcpStream, apis: &KafkaApis) -> Result<(), KafkaError> {
    let peer: Option<SocketAddr> = socket.peer_addr().ok();
    let (read, mut write) = socket.into_split();
    let max_request_bytes = apis.max_request_bytes;
    // Frames are read by a task of their own, so a partly read frame is never lost while
    // this task writes an answer; one frame waits at most.
    let (frames_tx, mut frames) = tokio::sync::mpsc::channel(1);
    let _reader = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(async move {
        let mut read = BufReader::new(read);
        loop {
            let frame = read_frame(&mut read, max_request_bytes).await;
            let end = !matches!(frame, Ok(Some(_)));
            if frames_tx.send(frame).await.is_err() || end {
                return;
            }
        }
    }));
    let max_in_flight = apis.max_in_flight_produce.max(1);
    let mut pending: VecDeque<Answer> = VecDeque::new();
    // A Produce being queued and appended: nothing more is read meanwhile, but answers that
    // are due still go out.
    let mut starting: Option<Pin<Box<dyn Future<Output = Started> + Send + '_>>> = None;
    let ended = loop {
        tokio::select! {
            biased;
            answer = async { pending.front_mut().expect("checked non-empty").await },
                if !pending.is_empty() =>
            {
                pending.pop_front();
                // An answer that cannot be encoded breaks the stream of answers: stop here,
                // as the drains below do (`?`), rather than answer later requests without it.
                if let Some(answer) = answer? {
                    write.write_all(&answer).await?;
                }
            }
            // Disabled branches' expressions are still evaluated: the `expect`s run only when
            // polled, inside the async blocks.
            Started(started) = async { starting.as_mut().expect("checked some").await },
                if starting.is_some() =>
            {
                starting = None;
                pending.push_back(started);
            }
            frame = frames.recv(), if starting.is_none() && pending.len() < max_in_flight => {
                let frame = match frame.transpose() {
                    Ok(Some(Some(frame))) => frame,
                    // The peer closed the connection.
                    Ok(_) => break Ok(()),
                    Err(e) => break Err(e),
                };
                let request = match decode_request(frame) {
                    Ok(r) => r,
                    Err(e) => break Err(e),
                };
                if request.key == ApiKey::Produce
                    && request.in_range
                    && matches!(&request.body, Some(RequestKind::Produce(r)) if r.acks != 0)
                {
                    starting = Some(Box::pin(async move {
                        Started(start_produce(apis, request).await)
                    }));
                    continue;
                }
                write_answers(&mut pending, &mut write).await?;
                if let Some(answer) = handle_request(apis, request, peer).await? {
                    write.write_all(&answer).await?;
                }
            }
        }
        tracing::trace!(peer = ?peer, "kafka request answered");
    };
    // However the connection ends, the produces before that point are appended: answer them
    // (as Kafka, which reads one request at a time, would have before reading further), or
    // their client retries, and a retry that is not idempotent duplicates.
    if let Some(started) = starting.take() {
        pending.push_back(started.await.0);
    }
    write_answers(&mut pending, &mut write).await?;
    ended
}

/// Awaits and writes every pending answer, in order; stops at the first that cannot be
/// encoded or written.
async fn write_answers(
    pending: &mut VecDeque<Answer>,
    write: &mut tokio::net::tcp::OwnedWriteHalf,
) -> Result<(), KafkaError> {
    while let Some(answer) = pending.pop_front() {
        if let Some(answer) = answer.await? {
            write.write_all(&answer).await?;
        }
    }
    Ok(())
}

/// Appends a Produce request's batches and returns its answer to await (see [`connection`]).
async fn start_produce(apis: &KafkaApis, request: Request) -> Answer {
    let Request {
        key,
        version,
        header,
        body: Some(RequestKind::Produce(req)),
        ..
    } = request
    else {
        unreachable!("start_produce is only called with a Produce request");
    };
    let answer = apis::produce_start(apis, req).await;
    Box::pin(async move {
        let resp = answer.await;
        encode(key, version, header.correlation_id, &resp).map(Some)
    })
}

/// Reads one length-prefixed frame; `None` when the peer closed the connection between frames.
async fn read_frame<R: AsyncReadExt + Unpin>(
    read: &mut R,
    max: usize,
) -> Result<Option<Bytes>, KafkaError> {
    let mut len = [0u8; 4];
    match read.read_exact(&mut len).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(len);
    if size < 0 || size as usize > max {
        return Err(KafkaError::FrameTooLarge {
            size: size.into(),
            max,
        });
    }
    let size = size as usize;
    // Grow with what arrives rather than trusting the length up front.
    let mut buf = BytesMut::with_capacity(size.min(64 * 1024));
    while buf.len() < size {
        let want = size - buf.len();
        if buf.capacity() == buf.len() {
            buf.reserve(want.min(1 << 20));
        }
        let n = (&mut *read).take(want as u64).read_buf(&mut buf).await?;
        if n == 0 {
            return Err(KafkaError::Malformed(format!(
                "connection closed after {} of {size} request bytes",
                buf.len()
            )));
        }
    }
    Ok(Some(buf.freeze()))
}

/// A request header read from a frame, and the body after it.
struct Decoded {
    key: ApiKey,
    version: i16,
    header: RequestHeader,
    body: Bytes,
}

fn decode_header(mut frame: Bytes) -> Result<Decoded, KafkaError> {
    if frame.len() < 8 {
        return Err(KafkaError::Malformed(format!(
            "a request header needs at least 8 bytes, the frame has {}",
            frame.len()
        )));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key = ApiKey::try_from(raw_key)
        .map_err(|_| KafkaError::Malformed(format!("unknown API key {raw_key}")))?;
    let valid = key.valid_versions();
    // Headers of versions the codec does not know are read as its newest version's header.
    let header_version = key.request_header_version(version.clamp(valid.min, valid.max));
    let header = RequestHeader::decode(&mut frame, header_version)
        .map_err(|e| KafkaError::Malformed(format!("{key:?} v{version} header: {e}")))?;
    Ok(Decoded {
        key,
        version,
        header,
        body: frame,
    })
}

/// A request frame as the listener reads it ([`decode_request`]).
#[derive(Debug)]
pub struct Request {
    /// The API called.
    pub key: ApiKey,
    /// Its version, as the client sent it.
    pub version: i16,
    /// The request header (correlation id, client id).
    pub header: RequestHeader,
    /// Whether rill answers `key` at `version` ([`apis::SUPPORTED`]); if not, the answer is that
    /// API's UNSUPPORTED_VERSION one.
    pub in_range: bool,
    /// The decoded body, for the APIs and versions whose bodies the listener reads; `None` for
    /// ApiVersions (its body is informational) and for requests answered without a body.
    pub body: Option<RequestKind>,
}

/// Decodes one request frame (header and body, without the 4-byte length): the header, the
/// version checks, the array-length walk of `guard`, then the codec. Pure (no I/O, no
/// broker state), so the fuzzer and the decode tests run exactly what a connection runs; a
/// frame it refuses closes its connection.
pub fn decode_request(frame: Bytes) -> Result<Request, KafkaError> {
    let Decoded {
        key,
        version,
        header,
        mut body,
    } = decode_header(frame)?;
    let supported = apis::supported_versions(key);
    let in_range = supported.is_some_and(|(min, max)| (min..=max).contains(&version));
    if key == ApiKey::ApiVersions {
        return Ok(Request {
            key,
            version,
            header,
            in_range,
            body: None,
        });
    }
    let codec = key.valid_versions();
    if !in_range && !(codec.min..=codec.max).contains(&version) {
        return Err(KafkaError::Malformed(format!(
            "{key:?} v{version} is not a version of this API rill can read (it supports {:?})",
            supported
        )));
    }
    // Only bodies the guard can walk are decoded, and only after it found every array length
    // possible (the codec reserves declared lengths up front).
    let readable = guard::walkable(key).is_some_and(|(min, max)| (min..=max).contains(&version));
    if readable && let Err(guard::Stop::Impossible(why)) = guard::check(key, version, &body) {
        return Err(KafkaError::Malformed(format!("{key:?} v{version}: {why}")));
    }
    let decoded = match key {
        // Answered UNSUPPORTED_VERSION per topic/partition, so read at any version they walk.
        ApiKey::Metadata | ApiKey::Produce | ApiKey::Fetch | ApiKey::ListOffsets => readable,
        ApiKey::FindCoordinator
        | ApiKey::OffsetCommit
        | ApiKey::OffsetFetch
        | ApiKey::InitProducerId => in_range,
        ApiKey::JoinGroup
        | ApiKey::SyncGroup
        | ApiKey::Heartbeat
        | ApiKey::LeaveGroup
        | ApiKey::ListGroups
        | ApiKey::DescribeGroups
        | ApiKey::DeleteGroups
        | ApiKey::OffsetForLeaderEpoch
        | ApiKey::CreateTopics
        | ApiKey::DeleteTopics
        | ApiKey::CreatePartitions
        | ApiKey::DescribeConfigs
        | ApiKey::IncrementalAlterConfigs
        | ApiKey::DescribeCluster
        | ApiKey::ConsumerGroupHeartbeat => readable && in_range,
        _ => false,
    };
    let body = if decoded {
        Some(
            RequestKind::decode(key, &mut body, version)
                .map_err(|e| KafkaError::Malformed(format!("{key:?} v{version} body: {e}")))?,
        )
    } else {
        None
    };
    Ok(Request {
        key,
        version,
        header,
        in_range,
        body,
    })
}

/// Answers one request; `None` when it gets no answer (acks=0 produce).
async fn handle_request(
    apis: &KafkaApis,
    request: Request,
    peer: Option<SocketAddr>,
) -> Result<Option<Bytes>, KafkaError> {
    let Request {
        key,
        version,
        header,
        in_range,
        body,
    } = request;
    let correlation_id = header.correlation_id;
    if key == ApiKey::ApiVersions {
        return if in_range {
            // The body (client name and version, v3+) is informational.
            encode(key, version, correlation_id, &apis::api_versions(0)).map(Some)
        } else {
            // Kafka answers an ApiVersions it cannot parse with a v0 answer: error 35 and the
            // versions it supports, so the client can retry with one of them.
            encode(
                key,
                0,
                correlation_id,
                &apis::api_versions(apis::UNSUPPORTED_VERSION),
            )
            .map(Some)
        };
    }
    use RequestKind as R;
    match body {
        Some(R::Metadata(req)) => {
            let resp = if in_range {
                apis::metadata(apis, req).await
            } else {
                apis::metadata_unsupported(req)
            };
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::Produce(req)) => {
            let acks = req.acks;
            let resp = if in_range {
                apis::produce(apis, req).await
            } else {
                apis::produce_unsupported(req)
            };
            if acks == 0 && in_range {
                // No answer to carry an error: Kafka closes the connection instead, so the
                // client refreshes its metadata and finds the partition's leader.
                if let Some(p) = resp
                    .responses
                    .iter()
                    .flat_map(|t| t.partition_responses.iter().map(move |p| (t, p)))
                    .find(|(_, p)| p.error_code != 0)
                {
                    return Err(KafkaError::AcksZeroFailed(format!(
                        "{}-{}: error {}",
                        p.0.name.0, p.1.index, p.1.error_code
                    )));
                }
                return Ok(None);
            }
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::Fetch(req)) => {
            let resp = if in_range {
                apis::fetch(apis, req, version).await
            } else {
                apis::fetch_unsupported(req)
            };
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::ListOffsets(req)) => {
            let resp = if in_range {
                apis::list_offsets(apis, req, version).await
            } else {
                apis::list_offsets_unsupported(req)
            };
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::FindCoordinator(req)) => {
            let resp = apis::find_coordinator(apis, req, version).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::OffsetCommit(req)) => {
            let resp = apis::offset_commit(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::OffsetFetch(req)) => {
            let resp = apis::offset_fetch(apis, req, version).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::JoinGroup(req)) => {
            let resp = apis::join_group(apis, req, version, &caller(&header, peer)).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::ConsumerGroupHeartbeat(req)) => {
            let resp = apis::consumer_group_heartbeat(apis, req, &caller(&header, peer)).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::SyncGroup(req)) => {
            let resp = apis::sync_group(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::Heartbeat(req)) => {
            let resp = apis::heartbeat(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::LeaveGroup(req)) => {
            let resp = apis::leave_group(apis, req, version).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::ListGroups(req)) => {
            let resp = apis::list_groups(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::DescribeGroups(req)) => {
            let resp = apis::describe_groups(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::DeleteGroups(req)) => {
            let resp = apis::delete_groups(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::OffsetForLeaderEpoch(req)) => {
            let resp = apis::offset_for_leader_epoch(apis, req);
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::CreateTopics(req)) => {
            let resp = admin::create_topics(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::DeleteTopics(req)) => {
            let resp = admin::delete_topics(apis, req, version).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::CreatePartitions(req)) => {
            let resp = admin::create_partitions(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::DescribeConfigs(req)) => {
            let resp = admin::describe_configs(apis, req, version).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::IncrementalAlterConfigs(req)) => {
            let resp = admin::incremental_alter_configs(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::DescribeCluster(req)) => {
            let resp = admin::describe_cluster(apis, req, version).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        Some(R::InitProducerId(req)) => {
            let resp = apis::init_producer_id(apis, req).await;
            encode(key, version, correlation_id, &resp).map(Some)
        }
        _ => match apis::unsupported_answer(key, version, correlation_id) {
            Some(answer) => answer.map(Some),
            None => Err(KafkaError::Malformed(format!(
                "{key:?} v{version} is not implemented by rill's Kafka listener"
            ))),
        },
    }
}

/// Who sent a request: its header's client id and the peer's address.
fn caller(header: &RequestHeader, peer: Option<SocketAddr>) -> apis::Caller {
    apis::Caller {
        client_id: header
            .client_id
            .as_ref()
            .map(|c| c.to_string())
            .unwrap_or_default(),
        host: peer.map(|p| format!("/{}", p.ip())).unwrap_or_default(),
    }
}

/// Frames a response: length, header (v0, or v1 for flexible versions), body.
pub(crate) fn encode<T: Encodable>(
    key: ApiKey,
    version: i16,
    correlation_id: i32,
    body: &T,
) -> Result<Bytes, KafkaError> {
    let fail = |e: anyhow::Error| KafkaError::Encode {
        api: key,
        version,
        reason: e.to_string(),
    };
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    ResponseHeader::default()
        .with_correlation_id(correlation_id)
        .encode(&mut buf, key.response_header_version(version))
        .map_err(fail)?;
    body.encode(&mut buf, version).map_err(fail)?;
    let len = i32::try_from(buf.len() - 4).map_err(|_| KafkaError::Encode {
        api: key,
        version,
        reason: format!("{} bytes do not fit a frame", buf.len()),
    })?;
    buf[..4].copy_from_slice(&len.to_be_bytes());
    Ok(buf.freeze())
}

#[cfg(test)]
mod tests;
