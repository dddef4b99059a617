//! Feeds arbitrary bytes to the batch reader: parsing, validation, decompression and record
//! iteration must return errors, never panic, hang or allocate beyond the configured limit.
//! Run with `cargo xtask fuzz --seconds 60`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rill_protocol::record_batch::{ValidationOptions, batches};

fuzz_target!(|data: &[u8]| {
    let opts = ValidationOptions {
        max_uncompressed_bytes: 1 << 20,
        producer_batch: data.first().is_some_and(|b| b & 1 == 1),
    };
    for batch in batches(data).flatten() {
        let _ = batch.validate(&opts);
        if let Ok(records) = batch.records(1 << 20) {
            for record in records.iter().flatten() {
                let _ = record.headers().count();
            }
        }
    }
});
