//! Feeds arbitrary bytes, as one request frame (header + body, the 4-byte length already
//! read), to the Kafka listener's decoder: the header, the version checks, the array-length
//! walk (`guard`) and the codec must return an error or a request, never panic, hang or
//! allocate much beyond the frame (the run sets `-malloc_limit_mb`). Seeds: `fuzz/seeds/kafka_request`.
//! Run with `cargo xtask fuzz --seconds 60`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = rill_broker::kafka::decode_request(bytes::Bytes::copy_from_slice(data));
});
