//! Helpers shared by the storage tests: build batches, read records back.
#![allow(dead_code)]

use std::sync::Arc;

use rill_protocol::record_batch::{Compression, RecordBatchBuilder, batches};
use rill_storage::{Log, LogConfig, LogOpenOptions, ManualClock};

/// A `(key, value)` pair to append; `None` is null.
pub type Kv<'a> = (Option<&'a [u8]>, Option<&'a [u8]>);

/// A record as the tests see it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Vec<u8>>,
    pub value: Option<Vec<u8>>,
}

/// A producer batch of `(key, value)` records, all stamped `timestamp`.
pub fn batch(records: &[Kv<'_>], timestamp: i64) -> Vec<u8> {
    batch_with(Compression::None, records, timestamp)
}

pub fn batch_with(codec: Compression, records: &[Kv<'_>], timestamp: i64) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(codec);
    for (i, (k, v)) in records.iter().enumerate() {
        b.append(timestamp + i as i64, *k, *v, &[]);
    }
    b.build().unwrap().to_vec()
}

/// `n` records `key-<i>` → `value-<i>` padded to `value_len`.
pub fn numbered(start: usize, n: usize, value_len: usize, timestamp: i64) -> Vec<u8> {
    let keys: Vec<Vec<u8>> = (start..start + n)
        .map(|i| format!("key-{i}").into_bytes())
        .collect();
    let values: Vec<Vec<u8>> = (start..start + n)
        .map(|i| {
            let mut v = format!("value-{i}-").into_bytes();
            v.resize(value_len.max(v.len()), b'x');
            v
        })
        .collect();
    let recs: Vec<Kv<'_>> = keys
        .iter()
        .zip(&values)
        .map(|(k, v)| (Some(k.as_slice()), Some(v.as_slice())))
        .collect();
    batch(&recs, timestamp)
}

/// Every record in concatenated batches.
pub fn records_of(bytes: &[u8]) -> Vec<Rec> {
    let mut out = Vec::new();
    for b in batches(bytes) {
        let b = b.unwrap();
        b.verify_crc().unwrap();
        for r in b.records(usize::MAX).unwrap().iter() {
            let r = r.unwrap();
            out.push(Rec {
                offset: r.offset,
                timestamp: r.timestamp,
                key: r.key.map(<[u8]>::to_vec),
                value: r.value.map(<[u8]>::to_vec),
            });
        }
    }
    out
}

/// Reads the whole log (from the start), batch by batch.
pub fn read_all(log: &Log) -> Vec<Rec> {
    let mut out = Vec::new();
    let mut offset = log.log_start_offset();
    while offset < log.log_end_offset() {
        let Some(bytes) = log.read(offset, 64 << 10, None, true).unwrap() else {
            break;
        };
        out.extend(
            records_of(&bytes)
                .into_iter()
                .filter(|r| r.offset >= offset),
        );
        // Advance by batch headers: compacted batches may end with (or be) offsets without records.
        let next = batches(&bytes)
            .map(|b| b.unwrap().header().next_offset())
            .max()
            .unwrap();
        assert!(next > offset, "reads must make progress");
        offset = next;
    }
    out
}

pub fn small_config() -> LogConfig {
    LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    }
}

pub fn open(dir: &std::path::Path, config: LogConfig, clock: &ManualClock) -> Log {
    Log::open(
        dir,
        config,
        LogOpenOptions::default(),
        Arc::new(clock.clone()),
    )
    .unwrap()
}

pub fn reopen(
    dir: &std::path::Path,
    config: LogConfig,
    clock: &ManualClock,
    clean: bool,
    recovery_point: i64,
) -> Log {
    Log::open(
        dir,
        config,
        LogOpenOptions {
            recovery_point,
            clean_shutdown: clean,
        },
        Arc::new(clock.clone()),
    )
    .unwrap()
}
