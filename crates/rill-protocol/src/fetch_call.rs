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
//! Errors are tonic's: a transport failure, a timeout and an error status read the same as from
//! the generated client.

use std::collections::VecDeque;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http_body_util::BodyExt;
use prost::Message;
use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tonic::transport::Channel;

use crate::proto::{FetchRequest, FetchResponse};

const FETCH_PATH: &str = "/rill.v1.Broker/Fetch";
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
    if let Some(status) = Status::from_header_map(response.headers()) {
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
            Ok(data) => payloads.push(data),
            Err(frame) => {
                if let Ok(t) = frame.into_trailers() {
                    trailers = Some(t);
                }
            }
        }
    }
    match trailers.as_ref().and_then(Status::from_header_map) {
        Some(status) if status.code() != tonic::Code::Ok => return Err(status),
        Some(_) => {}
        None if http_status != http::StatusCode::OK => {
            return Err(Status::unavailable(format!(
                "the fetch answer has HTTP status {http_status} and no gRPC status"
            )));
        }
        None => {
            return Err(Status::unknown(
                "the fetch answer ended without a gRPC status",
            ));
        }
    }
    decode_message(payloads)
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
    remaining: usize,
}

impl Payloads {
    fn push(&mut self, data: Bytes) {
        if !data.is_empty() {
            self.remaining += data.len();
            self.chunks.push_back(data);
        }
    }
}

impl Buf for Payloads {
    fn remaining(&self) -> usize {
        self.remaining
    }

    fn chunk(&self) -> &[u8] {
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
