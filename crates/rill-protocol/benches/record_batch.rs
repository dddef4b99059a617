//! Batch encode and decode+validate throughput, against the bare CRC-32C over the same bytes
//! (the floor for validation). `cargo bench -p rill-protocol`.

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use rill_protocol::record_batch::{
    Compression, RecordBatch, RecordBatchBuilder, ValidationOptions,
};

const RECORD: usize = 1024;

/// 1 KiB values that compress like typical JSON-ish payloads (not all zeros, not random).
fn value(i: usize) -> Vec<u8> {
    format!(
        "{{\"id\":{i},\"user\":\"user-{}\",\"event\":\"click\",\"payload\":\"",
        i % 977
    )
    .into_bytes()
    .into_iter()
    .chain((0..RECORD).map(|j| b"abcdefghijklmnopqrstuvwxyz0123456789"[(i * 7 + j * 13) % 36]))
    .take(RECORD)
    .collect()
}

fn build(codec: Compression, batch_bytes: usize) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(codec);
    let mut i = 0;
    while b.estimated_size() + RECORD + 32 <= batch_bytes {
        let key = format!("key-{i}");
        b.append(
            1_700_000_000_000 + i as i64,
            Some(key.as_bytes()),
            Some(&value(i)),
            &[],
        );
        i += 1;
    }
    b.build().unwrap().to_vec()
}

fn benches(c: &mut Criterion) {
    for (label, batch_bytes) in [("16KiB", 16 << 10), ("1MiB", 1 << 20)] {
        let mut group = c.benchmark_group(format!("batch_{label}"));
        let raw = build(Compression::None, batch_bytes);
        // Throughput is counted in uncompressed bytes for every codec, so MB/s compare directly.
        group.throughput(Throughput::Bytes(raw.len() as u64));
        group.bench_function("crc32c_only", |b| {
            b.iter(|| crc32c::crc32c(std::hint::black_box(&raw[21..])))
        });
        for codec in Compression::ALL {
            let bytes = build(codec, batch_bytes);
            let records: Vec<(String, Vec<u8>)> = RecordBatch::parse(&bytes)
                .unwrap()
                .records(usize::MAX)
                .unwrap()
                .iter()
                .map(|r| {
                    let r = r.unwrap();
                    (
                        String::from_utf8(r.key.unwrap().to_vec()).unwrap(),
                        r.value.unwrap().to_vec(),
                    )
                })
                .collect();
            group.bench_with_input(BenchmarkId::new("encode", codec), &records, |b, recs| {
                b.iter(|| {
                    let mut builder = RecordBatchBuilder::new(codec);
                    for (i, (k, v)) in recs.iter().enumerate() {
                        builder.append(i as i64, Some(k.as_bytes()), Some(v), &[]);
                    }
                    builder.build().unwrap()
                })
            });
            let opts = ValidationOptions {
                producer_batch: true,
                max_uncompressed_bytes: 8 << 20,
            };
            group.bench_with_input(BenchmarkId::new("validate", codec), &bytes, |b, bytes| {
                b.iter(|| RecordBatch::parse(bytes).unwrap().validate(&opts).unwrap())
            });
        }
        group.finish();
    }
}

criterion_group! {
    name = record_batch;
    config = Criterion::default()
        .warm_up_time(std::time::Duration::from_millis(500))
        .measurement_time(std::time::Duration::from_secs(2));
    targets = benches
}
criterion_main!(record_batch);
