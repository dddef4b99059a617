//! Commit log throughput against the machine's own limits, measured in the same run:
//! `cargo bench -p rill-storage --bench log`.
//!
//! - limit/write: the same batch bytes written with a buffered `write_all` loop + one fsync;
//! - limit/read: those bytes read back sequentially (page cache);
//! - append: `Log::append_as_leader` (validation, offset assignment, write, index) + one flush;
//! - append+fsync: each append waits for durability (group commit), 1 and 4 writer threads;
//! - read: `Log::read` sequentially from offset 0 in 1 MiB fetches.
//!
//! Records are 1 KiB with a short key; batches are 16 KiB or 1 MiB. Each figure is the best of
//! several runs (five for the write figures). Set RILL_BENCH_DIR to measure a particular disk (default: the system temp dir).

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rill_protocol::record_batch::{Compression, RecordBatchBuilder};
use rill_storage::{Log, LogConfig, LogOpenOptions, SystemClock};

const RECORD: usize = 1024;
const TOTAL: usize = 512 << 20;

fn batch(batch_bytes: usize) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Compression::None);
    let mut i = 0;
    while b.estimated_size() + RECORD + 40 <= batch_bytes {
        let key = format!("key-{i}");
        let value: Vec<u8> = (0..RECORD).map(|j| (i * 31 + j) as u8).collect();
        b.append(
            1_700_000_000_000 + i as i64,
            Some(key.as_bytes()),
            Some(&value),
            &[],
        );
        i += 1;
    }
    b.build().unwrap().to_vec()
}

fn bench_dir() -> tempfile::TempDir {
    match std::env::var_os("RILL_BENCH_DIR") {
        Some(d) => tempfile::tempdir_in(d).unwrap(),
        None => tempfile::tempdir().unwrap(),
    }
}

fn open_log(dir: &std::path::Path) -> Log {
    Log::open(
        dir,
        LogConfig::default(),
        LogOpenOptions::default(),
        Arc::new(SystemClock),
    )
    .unwrap()
}

fn mbps(bytes: usize, d: Duration) -> f64 {
    bytes as f64 / d.as_secs_f64() / (1024.0 * 1024.0)
}

fn best_of(runs: usize, mut f: impl FnMut() -> (usize, Duration)) -> (f64, usize) {
    let mut best = 0.0f64;
    let mut count = 0;
    for _ in 0..runs {
        let (bytes, d) = f();
        best = best.max(mbps(bytes, d));
        count = bytes;
    }
    (best, count)
}

fn report(name: &str, (mb, bytes): (f64, usize), limit: Option<f64>) {
    match limit {
        Some(l) => println!(
            "{name:<40} {mb:>9.0} MB/s  ({:.0}% of limit, {} MiB)",
            100.0 * mb / l,
            bytes >> 20
        ),
        None => println!("{name:<40} {mb:>9.0} MB/s  ({} MiB)", bytes >> 20),
    }
}

fn main() {
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need to honour.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    for (label, batch_bytes) in [("16KiB", 16 << 10), ("1MiB", 1 << 20)] {
        let template = batch(batch_bytes);
        let n = TOTAL / template.len();
        println!(
            "-- batches of {label} ({} bytes, {n} per run)",
            template.len()
        );

        let write_limit = best_of(5, || {
            let dir = bench_dir();
            let path = dir.path().join("plain.log");
            let start = Instant::now();
            let mut f =
                std::io::BufWriter::with_capacity(1 << 20, std::fs::File::create(&path).unwrap());
            for _ in 0..n {
                f.write_all(&template).unwrap();
            }
            let f = f.into_inner().unwrap();
            f.sync_all().unwrap();
            (n * template.len(), start.elapsed())
        });
        report("limit/write_all+fsync", write_limit, None);

        let unbuffered = best_of(3, || {
            let dir = bench_dir();
            let path = dir.path().join("plain.log");
            let f = std::fs::File::create(&path).unwrap();
            let start = Instant::now();
            let mut pos = 0u64;
            for _ in 0..n {
                std::os::unix::fs::FileExt::write_all_at(&f, &template, pos).unwrap();
                pos += template.len() as u64;
            }
            f.sync_all().unwrap();
            (n * template.len(), start.elapsed())
        });
        report(
            "limit/one pwrite per batch+fsync",
            unbuffered,
            Some(write_limit.0),
        );

        let append = best_of(5, || {
            let dir = bench_dir();
            let mut log = open_log(dir.path());
            let mut buf = template.clone();
            let start = Instant::now();
            for _ in 0..n {
                buf.copy_from_slice(&template);
                log.append_as_leader(&mut buf, 0).unwrap();
            }
            log.flush().unwrap();
            (n * template.len(), start.elapsed())
        });
        report("append (one flush at end)", append, Some(write_limit.0));

        for threads in [1usize, 4] {
            let count = if batch_bytes < (1 << 20) { 2000 } else { 200 };
            let fsynced = best_of(3, || {
                let dir = bench_dir();
                let log = Arc::new(Mutex::new(open_log(dir.path())));
                let start = Instant::now();
                std::thread::scope(|s| {
                    for _ in 0..threads {
                        let log = Arc::clone(&log);
                        let template = &template;
                        s.spawn(move || {
                            let mut buf = template.clone();
                            for _ in 0..count / threads {
                                buf.copy_from_slice(template);
                                let (end, gc) = {
                                    let mut log = log.lock().unwrap();
                                    let info = log.append_as_leader(&mut buf, 0).unwrap();
                                    (info.last_offset + 1, log.group_commit())
                                };
                                gc.wait_durable(end).unwrap();
                            }
                        });
                    }
                });
                (count / threads * threads * template.len(), start.elapsed())
            });
            report(
                &format!("append+fsync each ({threads} writer(s))"),
                fsynced,
                Some(write_limit.0),
            );
        }

        // Reads: one log written once, read three times.
        let dir = bench_dir();
        let mut log = open_log(dir.path());
        let mut buf = template.clone();
        for _ in 0..n {
            buf.copy_from_slice(&template);
            log.append_as_leader(&mut buf, 0).unwrap();
        }
        log.flush().unwrap();
        let read_limit = best_of(3, || {
            let mut total = 0;
            let start = Instant::now();
            for seg in std::fs::read_dir(dir.path()).unwrap() {
                let path = seg.unwrap().path();
                if path.extension().is_some_and(|e| e == "log") {
                    let mut f = std::fs::File::open(path).unwrap();
                    let mut chunk = vec![0u8; 1 << 20];
                    loop {
                        let r = f.read(&mut chunk).unwrap();
                        if r == 0 {
                            break;
                        }
                        total += r;
                    }
                }
            }
            (total, start.elapsed())
        });
        report("limit/read (page cache)", read_limit, None);
        // A fetch cannot reuse one buffer: its bytes leave in a response. The same reads into a
        // fresh 1 MiB buffer each show what that costs (allocation and first-touch page faults).
        let fresh = best_of(3, || {
            let mut total = 0;
            let start = Instant::now();
            for seg in std::fs::read_dir(dir.path()).unwrap() {
                let path = seg.unwrap().path();
                if path.extension().is_some_and(|e| e == "log") {
                    let mut f = std::fs::File::open(path).unwrap();
                    loop {
                        let mut chunk = vec![0u8; 1 << 20];
                        let r = f.read(&mut chunk).unwrap();
                        if r == 0 {
                            break;
                        }
                        total += r;
                        std::hint::black_box(chunk);
                    }
                }
            }
            (total, start.elapsed())
        });
        report(
            "limit/read, fresh buffer per 1 MiB",
            fresh,
            Some(read_limit.0),
        );
        let read = best_of(3, || {
            let mut total = 0;
            let mut offset = 0;
            let start = Instant::now();
            while let Some(bytes) = log.read(offset, 1 << 20, None, true).unwrap() {
                total += bytes.len();
                let last = rill_protocol::record_batch::batches(&bytes)
                    .last()
                    .unwrap()
                    .unwrap();
                offset = last.header().next_offset();
            }
            (total, start.elapsed())
        });
        report("read (1 MiB fetches)", read, Some(read_limit.0));
    }
}
