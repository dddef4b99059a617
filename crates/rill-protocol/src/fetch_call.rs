//! The Fetch RPC's client side without tonic's decode copy. tonic's decoder copies every
//! HTTP/2 DATA payload of an answer into one contiguous buffer before prost reads it, so each
//! fetched byte was copied once more after the socket read: about a fifth of a consumer's CPU.
//! [`fetch`] sends the same request to the same path and reads the answer's DATA payloads as
//! they arrive; prost decodes straight from them, and a `records` field that lies within one
//! payload is a slice of it. The broker's Fetch route hands each large `records` to HTTP/2 as
//! its own payload, which arrives as its own DATA frame (frames are up to
//! [`crate::transport::MAX_FRAME_SIZE`], one partition's records up to
//! `max.partition.fetch.bytes`), so in the common case no record byte is copied; a field that
//! spans frames (another server, a larger partition answer) is copied, and is still correct.
//!
//! Errors read as from the generated client: the same status for a transport failure, a
//! timeout, an error status in the headers or trailers, and an answer without one (mapped from
//! its HTTP status). Two differences: `grpc-status-details-bin` is dropped (tonic panics on one
//! that is not base64; rill's details travel in metadata), and bytes past the one message are
//! an error (tonic's unary client ignores them), raised as soon as they arrive.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::transport::Channel;

use crate::proto::{FetchRequest, FetchResponse};

/// The Fetch method's HTTP/2 path (the broker's own Fetch route answers it too).
pub const FETCH_PATH: &str = "/rill.v1.Broker/Fetch";
/// gRPC's message prefix: a compressed flag and a big-endian u32 length.
const GRPC_HEADER: usize = 5;

/// Sends `request` to the broker behind `channel` and decodes its answer (see the module).
pub async fn fetch(channel: &mut Channel, request: &FetchRequest) -> Result<FetchResponse, Status> {
    let mut body = BytesMut::with_capacity(GRPC_HEADER + request.encoded_len());
    body.put_u8(0);
    body.put_u32(u32::try_from(request.encoded_len()).map_err(|_| {
        Status::invalid_argument("the fetch request is larger than a gRPC message can carry")
    })?);
    request
        .encode(&mut body)
        .map_err(|e| Status::internal(format!("encoding the fetch request: {e}")))?;
    let mut http_request = http::Request::new(Body::new(http_body_util::Full::new(body.freeze())));
    *http_request.method_mut() = http::Method::POST;
    *http_request.version_mut() = http::Version::HTTP_2;
    *http_request.uri_mut() = http::Uri::from_static(FETCH_PATH);
    let headers = http_request.headers_mut();
    headers.insert(http::header::TE, http::HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/grpc"),
    );

    std::future::poll_fn(|cx| channel.poll_ready(cx))
        .await
        .map_err(|e| Status::unknown(format!("Service was not ready: {e}")))?;
    let response = channel
        .call(http_request)
        .await
        .map_err(|e| Status::from_error(Box::new(e)))?;
    read_answer(response).await
}

/// The one message of a unary answer and its final status, as tonic's unary client reads them.
async fn read_answer(response: http::Response<Body>) -> Result<FetchResponse, Status> {
    // A trailers-only answer carries its status in the headers.
    if let Some(status) = status_in(response.headers()) {
        if status.code() != tonic::Code::Ok {
            return Err(status);
        }
        return Err(Status::internal("Missing response message."));
    }
    if let Some(encoding) = response.headers().get("grpc-encoding")
        && encoding != "identity"
    {
        return Err(Status::unimplemented(format!(
            "the fetch answer is compressed with `{}`, which was not asked for",
            String::from_utf8_lossy(encoding.as_bytes())
        )));
    }
    let http_status = response.status();
    let mut body = response.into_body();
    let mut payloads = Payloads::default();
    let mut trailers = None;
    while let Some(frame) = body.frame().await {
        match frame?.into_data() {
            Ok(data) => {
                payloads.push(data);
                // Fail at the first byte past the one message, as tonic's decoder would,
                // instead of buffering whatever else the server sends.
                if let Some(len) = payloads.message_len()
                    && payloads.remaining() > GRPC_HEADER + len
                {
                    return Err(Status::internal(format!(
                        "the fetch answer holds more than its one {len}-byte message"
                    )));
                }
            }
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    match trailers.as_ref().and_then(status_in) {
        Some(status) if status.code() != tonic::Code::Ok => return Err(status),
        Some(_) => {}
        None => return Err(status_without_grpc_status(http_status)),
    }
    payloads.finish();
    decode_message(payloads)
}

/// The gRPC status in `headers`, if any. `grpc-status-details-bin` is left out: tonic panics on
/// a value that is not base64, and rill carries its error details in metadata instead.
fn status_in(headers: &http::HeaderMap) -> Option<Status> {
    if headers.contains_key(Status::GRPC_STATUS_DETAILS) {
        let mut headers = headers.clone();
        headers.remove(Status::GRPC_STATUS_DETAILS);
        return Status::from_header_map(&headers);
    }
    Status::from_header_map(headers)
}

/// The status of an answer that ended without `grpc-status`, from its HTTP status as gRPC maps
/// them (and tonic's client does).
fn status_without_grpc_status(http_status: http::StatusCode) -> Status {
    use http::StatusCode as H;
    let code = match http_status {
        H::OK => {
            return Status::unknown("the fetch answer ended without a gRPC status");
        }
        H::BAD_REQUEST => tonic::Code::Internal,
        H::UNAUTHORIZED => tonic::Code::Unauthenticated,
        H::FORBIDDEN => tonic::Code::PermissionDenied,
        H::NOT_FOUND => tonic::Code::Unimplemented,
        H::TOO_MANY_REQUESTS | H::BAD_GATEWAY | H::SERVICE_UNAVAILABLE | H::GATEWAY_TIMEOUT => {
            tonic::Code::Unavailable
        }
        _ => tonic::Code::Unknown,
    };
    Status::new(
        code,
        format!("the fetch answer has HTTP status {http_status} and no gRPC status"),
    )
}

/// The length-prefixed message that `payloads` hold, decoded from them without gathering them.
fn decode_message(mut payloads: Payloads) -> Result<FetchResponse, Status> {
    if payloads.remaining() < GRPC_HEADER {
        return Err(Status::internal("Missing response message."));
    }
    if payloads.get_u8() != 0 {
        return Err(Status::internal(
            "the fetch answer is compressed, which was not asked for",
        ));
    }
    let len = payloads.get_u32() as usize;
    if payloads.remaining() != len {
        return Err(Status::internal(format!(
            "the fetch answer's gRPC frame says {len} bytes but {} arrived (one message expected)",
            payloads.remaining()
        )));
    }
    FetchResponse::decode(payloads)
        .map_err(|e| Status::internal(format!("decoding the fetch answer: {e}")))
}

/// The DATA payloads of one answer read as one buffer: a field that lies within one payload is
/// taken as a slice of it, one that spans payloads is copied.
#[derive(Default)]
struct Payloads {
    /// Never holds an empty payload (`chunk` must be non-empty while bytes remain).
    chunks: VecDeque<Bytes>,
    /// Consecutive small payloads, gathered (a server sending tiny frames must not cost a queue
    /// entry per byte); moved to `chunks` before a large one and by `finish`.
    small: BytesMut,
    remaining: usize,
}

/// Payloads smaller than this are gathered into one chunk rather than kept apart.
const GATHER_BELOW: usize = 4096;

impl Payloads {
    fn push(&mut self, data: Bytes) {
        self.remaining += data.len();
        if data.len() < GATHER_BELOW {
            self.small.extend_from_slice(&data);
            return;
        }
        self.gathered();
        self.chunks.push_back(data);
    }

    /// Moves the gathered small payloads to the chunks, in order.
    fn gathered(&mut self) {
        if !self.small.is_empty() {
            let small = self.small.split().freeze();
            self.chunks.push_back(small);
        }
    }

    /// Makes every pushed byte readable through `Buf`.
    fn finish(&mut self) {
        self.gathered();
    }

    /// The message length the gRPC prefix declares, once its 5 bytes arrived.
    fn message_len(&self) -> Option<usize> {
        let mut prefix = [0u8; GRPC_HEADER];
        let mut filled = 0;
        for part in self.chunks.iter().map(|c| &c[..]).chain([&self.small[..]]) {
            let n = part.len().min(GRPC_HEADER - filled);
            prefix[filled..filled + n].copy_from_slice(&part[..n]);
            filled += n;
            if filled == GRPC_HEADER {
                let len = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
                return Some(len as usize);
            }
        }
        None
    }
}

impl Buf for Payloads {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
        debug_assert!(self.small.is_empty(), "read before finish");
        self.chunks.front().map_or(&[], |c| c)
    }

    fn advance(&mut self, mut cnt: usize) {
        assert!(cnt <= self.remaining, "advance past the end");
        self.remaining -= cnt;
        while cnt > 0 {
            let Some(front) = self.chunks.front_mut() else {
                break;
            };
            if cnt < front.len() {
                front.advance(cnt);
                break;
            }
            cnt -= front.len();
            self.chunks.pop_front();
        }
    }

    fn copy_to_bytes(&mut self, len: usize) -> Bytes {
        assert!(len <= self.remaining, "copy_to_bytes past the end");
        if let Some(front) = self.chunks.front_mut()
            && front.len() >= len
        {
            let taken = front.split_to(len);
            if front.is_empty() {
                self.chunks.pop_front();
            }
            self.remaining -= len;
            return taken;
        }
        let mut copy = BytesMut::with_capacity(len);
        copy.put((&mut *self).take(len));
        copy.freeze()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{FetchPartitionResponse, FetchTopicResponse};

    fn answer() -> FetchResponse {
        FetchResponse {
            topics: vec![FetchTopicResponse {
                name: "orders".into(),
                partitions: (0..4)
                    .map(|i| FetchPartitionResponse {
                        index: i,
                        high_watermark: 1000 + i64::from(i),
                        records: Bytes::from(vec![i as u8; 3000 * (i as usize + 1)]),
                        ..Default::default()
                    })
                    .collect(),
            }],
        }
    }

    fn framed(message: &FetchResponse) -> Vec<u8> {
        let mut wire = vec![0];
        wire.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
        wire.extend_from_slice(&message.encode_to_vec());
        wire
    }

    /// The wire bytes cut at `cuts`, as DATA payloads.
    fn payloads(wire: &[u8], cuts: &[usize]) -> Payloads {
        let mut p = Payloads::default();
        let mut start = 0;
        for &end in cuts.iter().chain(std::iter::once(&wire.len())) {
            p.push(Bytes::copy_from_slice(&wire[start..end]));
            start = end;
        }
        p.finish();
        p
    }

    #[test]
    fn any_cut_of_the_payloads_decodes_to_the_same_answer() {
        let message = answer();
        let wire = framed(&message);
        for step in [1, 2, 3, 5, 7, 64, 1000, 4099, wire.len()] {
            let cuts: Vec<usize> = (step..wire.len()).step_by(step).collect();
            assert_eq!(
                decode_message(payloads(&wire, &cuts)).unwrap(),
                message,
                "payloads of {step} bytes"
            );
        }
        // Empty payloads (which HTTP/2 allows) change nothing.
        assert_eq!(
            decode_message(payloads(&wire, &[0, 0, 3, 3, 5, 5])).unwrap(),
            message
        );
    }

    #[test]
    fn records_within_one_payload_are_slices_of_it() {
        let message = answer();
        let wire = Bytes::from(framed(&message));
        let mut p = Payloads::default();
        p.push(wire.clone());
        p.finish();
        let decoded = decode_message(p).unwrap();
        let range = wire.as_ptr_range();
        for part in &decoded.topics[0].partitions {
            assert!(
                range.contains(&part.records.as_ptr()),
                "partition {} records were copied",
                part.index
            );
        }
    }

    /// An HTTP answer with `headers`, then `frames` (data or trailers, or a body error).
    fn answer_of(
        status: u16,
        headers: &[(&'static str, &'static str)],
        frames: Vec<Result<http_body::Frame<Bytes>, Status>>,
    ) -> http::Response<Body> {
        let body = http_body_util::StreamBody::new(tokio_stream::iter(frames));
        let mut response = http::Response::new(Body::new(body));
        *response.status_mut() = http::StatusCode::from_u16(status).unwrap();
        for (k, v) in headers {
            response
                .headers_mut()
                .insert(*k, http::HeaderValue::from_static(v));
        }
        response
    }

    fn trailers(pairs: &[(&'static str, &'static str)]) -> Result<http_body::Frame<Bytes>, Status> {
        let mut map = http::HeaderMap::new();
        for (k, v) in pairs {
            map.insert(*k, http::HeaderValue::from_static(v));
        }
        Ok(http_body::Frame::trailers(map))
    }

    fn data(b: &[u8]) -> Result<http_body::Frame<Bytes>, Status> {
        Ok(http_body::Frame::data(Bytes::copy_from_slice(b)))
    }

    #[tokio::test]
    async fn answers_read_as_tonics_client_reads_them() {
        let message = answer();
        let wire = framed(&message);
        let ok = || trailers(&[("grpc-status", "0")]);
        // Data in pieces, then status 0.
        let (a, b) = wire.split_at(7);
        let got = read_answer(answer_of(200, &[], vec![data(a), data(b), ok()])).await;
        assert_eq!(got.unwrap(), message);
        // Trailers-only: the error in the headers, even with undecodable status details.
        let err = read_answer(answer_of(
            200,
            &[
                ("grpc-status", "14"),
                ("grpc-message", "going%20away"),
                ("grpc-status-details-bin", "!!not base64!!"),
            ],
            vec![],
        ))
        .await
        .unwrap_err();
        assert_eq!(
            (err.code(), err.message()),
            (tonic::Code::Unavailable, "going away")
        );
        // An error in the trailers after the data wins over the data.
        let err = read_answer(answer_of(
            200,
            &[],
            vec![
                data(&wire),
                trailers(&[("grpc-status", "8"), ("grpc-message", "slow")]),
            ],
        ))
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        // No gRPC status at all: from the HTTP status, as gRPC maps it.
        for (http, code) in [
            (200, tonic::Code::Unknown),
            (404, tonic::Code::Unimplemented),
            (503, tonic::Code::Unavailable),
            (500, tonic::Code::Unknown),
        ] {
            let err = read_answer(answer_of(http, &[], vec![data(&wire)]))
                .await
                .unwrap_err();
            assert_eq!(err.code(), code, "HTTP {http}");
        }
        // A compressed answer (never asked for), a body that fails, and bytes past the message.
        let err = read_answer(answer_of(
            200,
            &[("grpc-encoding", "gzip")],
            vec![data(&wire)],
        ))
        .await
        .unwrap_err();
        assert!(err.message().contains("gzip"), "{err}");
        let err = read_answer(answer_of(
            200,
            &[],
            vec![data(a), Err(Status::cancelled("reset")), ok()],
        ))
        .await
        .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Cancelled);
        let mut longer = wire.clone();
        longer.extend_from_slice(&[0; 10]);
        let err = read_answer(answer_of(200, &[], vec![data(&longer), ok()]))
            .await
            .unwrap_err();
        assert!(err.message().contains("more than"), "{err}");
        // A successful status with no message.
        let err = read_answer(answer_of(200, &[], vec![ok()]))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::Internal);
    }

    #[test]
    fn a_wrong_length_or_compression_is_refused() {
        let message = answer();
        let mut wire = framed(&message);
        let short = payloads(&wire[..wire.len() - 1], &[]);
        assert!(
            decode_message(short)
                .unwrap_err()
                .message()
                .contains("says")
        );
        wire.push(0);
        assert!(decode_message(payloads(&wire, &[])).is_err());
        wire.pop();
        wire[0] = 1;
        assert!(
            decode_message(payloads(&wire, &[]))
                .unwrap_err()
                .message()
                .contains("compressed")
        );
        assert!(decode_message(payloads(&[0, 0], &[])).is_err());
    }
}
