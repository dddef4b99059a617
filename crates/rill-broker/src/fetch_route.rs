//! The Fetch RPC without tonic's encode copy. tonic's codec encodes every answer into one
//! contiguous buffer, so each fetched byte was copied once more after the segment read: about a
//! fifth of the broker's CPU while serving consumers. This route answers
//! `/rill.v1.Broker/Fetch` itself: it decodes the request with tonic's own decoder, runs the
//! same handler, and writes the protobuf answer as a list of chunks in which each partition's
//! `records` is the `Bytes` read from the segment, handed to HTTP/2 as is (h2 chains large DATA
//! payloads instead of copying them). The bytes on the wire are exactly prost's encoding, so
//! clients see no difference. Every other Broker method goes to the generated server.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::{BufMut, Bytes, BytesMut};
use http_body::Frame;
use http_body_util::StreamBody;
use prost::Message;
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint, key_len};
use rill_protocol::fetch_call::FETCH_PATH;
use rill_protocol::proto::broker_server::BrokerServer;
use rill_protocol::proto::{FetchRequest, FetchResponse};
use tonic::Status;
use tonic::body::Body;
use tonic::codec::{Codec, Streaming};
use tonic::codegen::{BoxFuture, Service, http};
use tonic::metadata::MetadataValue;
use tonic::server::NamedService;

use crate::apis;
use crate::network::BrokerService;

/// Field numbers in `broker.proto`: each is the last field of its message, which is what lets
/// the records go last and the encoding stay byte-for-byte prost's.
const FETCH_RESPONSE_TOPICS: u32 = 1;
const FETCH_TOPIC_PARTITIONS: u32 = 2;
const FETCH_PARTITION_RECORDS: u32 = 8;
/// Records smaller than this are copied into the surrounding chunk: a separate DATA payload
/// costs more than copying a few KiB.
const COPY_BELOW: usize = 4096;

/// `rill.v1.Broker` with Fetch answered by this module; everything else by the generated server.
#[derive(Clone)]
pub struct BrokerRoutes {
    generated: BrokerServer<BrokerService>,
    service: BrokerService,
    max_request_bytes: usize,
}

impl BrokerRoutes {
    /// Requests larger than `max_request_bytes` are refused, as the generated server does.
    /// Settings given to the generated server here (compression, limits) must also be given to
    /// the Fetch route, which does not go through it.
    pub fn new(service: BrokerService, max_request_bytes: usize) -> Self {
        BrokerRoutes {
            generated: BrokerServer::new(service.clone())
                .max_decoding_message_size(max_request_bytes)
                .max_encoding_message_size(usize::MAX),
            service,
            max_request_bytes,
        }
    }
}

impl NamedService for BrokerRoutes {
    const NAME: &'static str = "rill.v1.Broker";
}

impl Service<http::Request<Body>> for BrokerRoutes {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() != FETCH_PATH {
            return self.generated.call(req);
        }
        let service = self.service.clone();
        let max = self.max_request_bytes;
        Box::pin(async move {
            let answer = match decode_request(req, max).await {
                Ok(request) => apis::fetch::handle(&service, request).await,
                Err(status) => Err(status),
            };
            Ok(match answer.and_then(encode_response) {
                Ok(chunks) => grpc_response(chunks),
                Err(status) => status.into_http(),
            })
        })
    }
}

/// One unary request message, decoded by tonic's decoder with the generated server's limits
/// and read to the end of the stream as tonic's unary handler does (no request compression is
/// accepted there either; the refusal names what is accepted, as gRPC asks).
async fn decode_request(req: http::Request<Body>, max: usize) -> Result<FetchRequest, Status> {
    if let Some(encoding) = req.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        let mut status = Status::unimplemented(format!(
            "Content is compressed with `{}` which isn't supported",
            String::from_utf8_lossy(encoding.as_bytes())
        ));
        status.metadata_mut().insert(
            "grpc-accept-encoding",
            MetadataValue::from_static("identity"),
        );
        return Err(status);
    }
    let decoder = tonic_prost::ProstCodec::<FetchResponse, FetchRequest>::default().decoder();
    let mut stream = Streaming::new_request(decoder, req.into_body(), None, Some(max));
    let request = stream
        .message()
        .await?
        .ok_or_else(|| Status::internal("Missing request message."))?;
    stream.trailers().await?;
    Ok(request)
}

/// The gRPC-framed encoding of `answer` as chunks whose concatenation is the length prefix
/// followed by `answer.encode_to_vec()`; large `records` are their own chunks, not copies.
fn encode_response(mut answer: FetchResponse) -> Result<Vec<Bytes>, Status> {
    let mut topics = std::mem::take(&mut answer.topics);
    let mut records = Vec::new();
    let mut topic_lens = Vec::with_capacity(topics.len());
    let mut partition_lens = Vec::new();
    let mut len = answer.encoded_len();
    for topic in &mut topics {
        let mut topic_len = 0;
        for p in &mut topic.partitions {
            let r = std::mem::take(&mut p.records);
            let mut p_len = p.encoded_len();
            if !r.is_empty() {
                p_len += key_len(FETCH_PARTITION_RECORDS) + encoded_len_varint(r.len() as u64);
                p_len += r.len();
            }
            topic_len += key_len(FETCH_TOPIC_PARTITIONS) + encoded_len_varint(p_len as u64) + p_len;
            partition_lens.push(p_len);
            records.push(r);
        }
        let parts = std::mem::take(&mut topic.partitions);
        topic_len += topic.encoded_len();
        topic.partitions = parts;
        len += key_len(FETCH_RESPONSE_TOPICS) + encoded_len_varint(topic_len as u64) + topic_len;
        topic_lens.push(topic_len);
    }
    let len = u32::try_from(len).map_err(|_| {
        Status::resource_exhausted(format!(
            "the fetch answer is {len} bytes, more than a gRPC message can carry: lower max_bytes"
        ))
    })?;
    let mut chunks = Vec::new();
    let mut buf = BytesMut::with_capacity(1024);
    buf.put_u8(0);
    buf.put_u32(len);
    answer.encode_raw(&mut buf);
    let mut records = records.into_iter();
    let mut partition_lens = partition_lens.into_iter();
    for (mut topic, topic_len) in topics.into_iter().zip(topic_lens) {
        encode_key(FETCH_RESPONSE_TOPICS, WireType::LengthDelimited, &mut buf);
        encode_varint(topic_len as u64, &mut buf);
        let parts = std::mem::take(&mut topic.partitions);
        topic.encode_raw(&mut buf);
        for p in parts {
            let (Some(r), Some(p_len)) = (records.next(), partition_lens.next()) else {
                return Err(Status::internal("fetch answer changed while encoding"));
            };
            encode_key(FETCH_TOPIC_PARTITIONS, WireType::LengthDelimited, &mut buf);
            encode_varint(p_len as u64, &mut buf);
            p.encode_raw(&mut buf);
            if r.is_empty() {
                continue;
            }
            encode_key(FETCH_PARTITION_RECORDS, WireType::LengthDelimited, &mut buf);
            encode_varint(r.len() as u64, &mut buf);
            if r.len() < COPY_BELOW {
                buf.put_slice(&r);
            } else {
                chunks.push(buf.split().freeze());
                chunks.push(r);
            }
        }
    }
    if !buf.is_empty() {
        chunks.push(buf.freeze());
    }
    Ok(chunks)
}

/// A successful unary gRPC answer: the message chunks as DATA frames, then `grpc-status: 0`
/// in the trailers.
fn grpc_response(chunks: Vec<Bytes>) -> http::Response<Body> {
    let mut trailers = http::HeaderMap::new();
    trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
    let frames = chunks
        .into_iter()
        .map(Frame::data)
        .chain(std::iter::once(Frame::trailers(trailers)))
        .map(Ok::<_, Infallible>);
    let mut response = http::Response::new(Body::new(StreamBody::new(tokio_stream::iter(frames))));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use rill_protocol::proto::{
        EpochEndOffset, FetchPartitionResponse, FetchTopicResponse, LeaderIdAndEpoch,
    };

    /// gRPC's length-prefixed message header: compressed flag and a big-endian u32 length.
    const GRPC_HEADER: usize = 5;

    fn partition(index: i32, records: usize) -> FetchPartitionResponse {
        FetchPartitionResponse {
            index,
            error_code: (index % 3),
            error_message: if index % 2 == 0 { "" } else { "moved" }.into(),
            high_watermark: 1 << (index % 40),
            log_start_offset: i64::from(index),
            current_leader: (index % 4 == 1).then_some(LeaderIdAndEpoch {
                leader_id: 2,
                leader_epoch: 7,
            }),
            diverging_epoch: (index % 5 == 2).then_some(EpochEndOffset {
                epoch: 3,
                end_offset: 99,
            }),
            records: Bytes::from((0..records).map(|i| i as u8).collect::<Vec<_>>()),
        }
    }

    #[test]
    fn chunks_are_prosts_encoding_with_large_records_not_copied() {
        let big = [0, 1, 200, COPY_BELOW - 1, COPY_BELOW, 70_000, 1 << 20];
        let answer = FetchResponse {
            topics: vec![
                FetchTopicResponse {
                    name: "orders".into(),
                    partitions: big
                        .iter()
                        .enumerate()
                        .map(|(i, n)| partition(i as i32, *n))
                        .collect(),
                },
                FetchTopicResponse {
                    name: String::new(),
                    partitions: vec![],
                },
                FetchTopicResponse {
                    name: "t".repeat(300),
                    partitions: vec![partition(11, 5000), partition(12, 0)],
                },
            ],
        };
        let large: Vec<*const u8> = answer
            .topics
            .iter()
            .flat_map(|t| &t.partitions)
            .filter(|p| p.records.len() >= COPY_BELOW)
            .map(|p| p.records.as_ptr())
            .collect();
        let chunks = encode_response(answer.clone()).unwrap();
        let mut wire = Vec::new();
        for c in &chunks {
            wire.extend_from_slice(c);
        }
        let message = answer.encode_to_vec();
        assert_eq!(wire[0], 0, "not compressed");
        assert_eq!(
            u32::from_be_bytes(wire[1..5].try_into().unwrap()) as usize,
            message.len()
        );
        assert_eq!(
            &wire[GRPC_HEADER..],
            &message[..],
            "byte-for-byte prost's encoding"
        );
        // The large records are the very buffers read from the log, not copies.
        let passed: Vec<*const u8> = chunks.iter().map(|c| c.as_ptr()).collect();
        for p in large {
            assert!(passed.contains(&p), "a large records buffer was copied");
        }
    }

    #[test]
    fn an_empty_answer_is_just_the_header() {
        let chunks = encode_response(FetchResponse::default()).unwrap();
        let wire: Vec<u8> = chunks.iter().flat_map(|c| c.to_vec()).collect();
        assert_eq!(wire, [0, 0, 0, 0, 0]);
    }
}
