//! Instruction counts (callgrind, through gungraun) of the per-batch hot paths: what a producer
//! does to build a batch, what a broker does to validate one, what a consumer does to read one.
//! Counts do not move with machine load the way timings do, so a regression shows as a number.
//! Run with `cargo xtask callgrind` (installs valgrind and the matching gungraun-runner);
//! figures in docs/benchmarks.md.

use std::hint::black_box;

use gungraun::{library_benchmark, library_benchmark_group, main};
use rill_protocol::record_batch::{
    Compression, RecordBatch, RecordBatchBuilder, ValidationOptions,
};

/// 16 records of 1 KiB: one `batch.size=16384` batch, the producer default.
const RECORDS: usize = 16;
const RECORD: usize = 1024;

/// Values that compress like JSON-ish payloads (not all zeros, not random).
fn value(i: usize) -> Vec<u8> {
    (0..RECORD)
        .map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789{}\":,"[(i * 7 + j * 13) % 41])
        .collect()
}

/// Keys and values of one batch.
type Records = Vec<(Vec<u8>, Vec<u8>)>;

fn records() -> Records {
    (0..RECORDS)
        .map(|i| (format!("key-{i}").into_bytes(), value(i)))
        .collect()
}

fn batch(codec: Compression) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(codec);
    for (i, (k, v)) in records().iter().enumerate() {
        b.append(1_700_000_000_000 + i as i64, Some(k), Some(v), &[]);
    }
    b.build().expect("a batch builds").to_vec()
}

fn none() -> Compression {
    Compression::None
}
fn lz4() -> Compression {
    Compression::Lz4
}
fn zstd() -> Compression {
    Compression::Zstd
}

fn records_and(codec: fn() -> Compression) -> (Records, Compression) {
    (records(), codec())
}

fn batch_of(codec: fn() -> Compression) -> Vec<u8> {
    batch(codec())
}

// Producer: append 16 records and build (compress, CRC) the batch.
#[library_benchmark]
#[bench::none(args = (none), setup = records_and)]
#[bench::lz4(args = (lz4), setup = records_and)]
#[bench::zstd(args = (zstd), setup = records_and)]
fn build_batch(input: (Records, Compression)) -> usize {
    let (recs, codec) = input;
    let mut b = RecordBatchBuilder::new(codec);
    for (i, (k, v)) in recs.iter().enumerate() {
        b.append(i as i64, Some(k), Some(v), &[]);
    }
    black_box(b.build().expect("a batch builds").len())
}

// Broker: what a produce request's batch goes through before it is appended (CRC, header
// checks, decompression, every record parsed).
#[library_benchmark]
#[bench::none(args = (none), setup = batch_of)]
#[bench::lz4(args = (lz4), setup = batch_of)]
#[bench::zstd(args = (zstd), setup = batch_of)]
fn validate_batch(bytes: Vec<u8>) -> bool {
    let opts = ValidationOptions {
        producer_batch: true,
        max_uncompressed_bytes: 8 << 20,
    };
    let batch = RecordBatch::parse(black_box(&bytes)).expect("parses");
    black_box(batch.validate(&opts).is_ok())
}

// Consumer (`check.crcs`): the CRC, decompression and a walk over every record's key and
// value.
#[library_benchmark]
#[bench::none(args = (none), setup = batch_of)]
#[bench::lz4(args = (lz4), setup = batch_of)]
#[bench::zstd(args = (zstd), setup = batch_of)]
fn read_batch(bytes: Vec<u8>) -> usize {
    let batch = RecordBatch::parse(black_box(&bytes)).expect("parses");
    batch.verify_crc().expect("the CRC matches");
    let records = batch.records(8 << 20).expect("decompresses");
    let mut total = 0;
    for r in records.iter() {
        let r = r.expect("a record");
        total += r.key.map_or(0, <[u8]>::len) + r.value.map_or(0, <[u8]>::len);
    }
    black_box(total)
}

library_benchmark_group!(
    name = hot_paths;
    benchmarks = build_batch, validate_batch, read_batch
);

main!(library_benchmark_groups = hot_paths);
