//! `rill perf fsync`: the disk's own limit for "fsync before acknowledging", measured the way
//! the workload runner measures rill, so a publish latency has a floor to be compared with.
//!
//! One file per partition, each appended by its own thread on an open-loop schedule (record `i`
//! of a partition is due at `i / rate`): a thread writes every record that is due in one
//! `write`, `fdatasync`s the file, and counts each of those records' latency from its due time
//! to the end of that fsync — group commit with no network, no protocol and no other work, as
//! fast as the disk allows. What rill adds on top of this floor is rill's cost.
//!
//! `--zero-ahead BYTES` measures the other way to lay out a file: a helper thread per file
//! keeps up to two chunks of BYTES written with zeros and fdatasync'd ahead of the writer, which
//! then overwrites them in place. An fdatasync after an append must also write the inode (the
//! size changed, blocks were allocated); one after an overwrite of written blocks need not.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use hdrhistogram::Histogram;

/// `rill perf fsync` flags.
#[derive(Args, Clone, Debug)]
pub struct FsyncArgs {
    /// Directory to write in (a temporary directory is made inside it and removed after); put
    /// it on the disk that holds `log.dirs`.
    #[arg(long, default_value = ".")]
    dir: PathBuf,
    /// Files written at once (one per partition).
    #[arg(long, default_value_t = 6)]
    partitions: usize,
    /// Bytes per record.
    #[arg(long, default_value_t = 1024)]
    record_size: usize,
    /// Records/s over all files.
    #[arg(long, default_value_t = 80_000.0)]
    rate: f64,
    /// Seconds to run.
    #[arg(long, default_value_t = 15.0)]
    secs: f64,
    /// Overwrite files zero-filled ahead in chunks of this many bytes instead of appending
    /// (0: append).
    #[arg(long, default_value_t = 0)]
    zero_ahead: u64,
}

/// What one file's writer measured, or (summed) a whole run.
struct Outcome {
    latency: Histogram<u64>,
    records: u64,
    fsyncs: u64,
}

/// What a run measured, and in how many seconds.
struct Summary {
    total: Outcome,
    elapsed: f64,
}

pub fn run(args: FsyncArgs) -> Result<()> {
    let Summary {
        total: Outcome {
            latency,
            records,
            fsyncs,
        },
        elapsed,
    } = measure(&args)?;
    let ms = |q: f64| latency.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "fsync limit in {}: {} files, {:.1} rec/s {:.2} MB/s, {:.0} fsyncs/s",
        args.dir.display(),
        args.partitions,
        records as f64 / elapsed,
        records as f64 * args.record_size as f64 / elapsed / 1e6,
        fsyncs as f64 / elapsed,
    );
    println!(
        "  latency (due → fsynced) p50 {:.2} p99 {:.2} p999 {:.2} max {:.2} ms",
        ms(0.5),
        ms(0.99),
        ms(0.999),
        latency.max() as f64 / 1000.0
    );
    Ok(())
}

fn measure(args: &FsyncArgs) -> Result<Summary> {
    if args.partitions == 0 || args.record_size == 0 {
        bail!("--partitions and --record-size must be at least 1");
    }
    let positive = |x: f64| x > 0.0 && x.is_finite();
    if !positive(args.rate) || !positive(args.secs) {
        bail!("--rate and --secs must be positive");
    }
    let dir = tempfile::Builder::new()
        .prefix("rill-perf-fsync-")
        .tempdir_in(&args.dir)
        .with_context(|| format!("making a directory in {}", args.dir.display()))?;
    if !args.zero_ahead.is_multiple_of(4096) {
        bail!("--zero-ahead must be a multiple of 4096 (whole pages)");
    }
    let per_partition = args.rate / args.partitions as f64;
    let mut files = Vec::with_capacity(args.partitions);
    for p in 0..args.partitions {
        let path = dir.path().join(format!("{p}.log"));
        let file = std::fs::OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        files.push((path, file));
    }
    // The schedule starts once the files exist.
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(args.secs);
    let outcomes: Vec<Result<Outcome>> = std::thread::scope(|s| {
        let handles: Vec<_> = files
            .into_iter()
            .map(|(path, file)| {
                let record_size = args.record_size;
                let zero_ahead = args.zero_ahead;
                s.spawn(move || {
                    if zero_ahead == 0 {
                        append_loop(path, file, record_size, per_partition, start, end, None)
                    } else {
                        let file = std::sync::Arc::new(file);
                        let zeroer = ZeroAhead::start(file.clone(), path.clone(), zero_ahead)?;
                        let out = append_loop(
                            path,
                            &*file,
                            record_size,
                            per_partition,
                            start,
                            end,
                            Some(&zeroer),
                        );
                        zeroer.stop()?;
                        out
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("a writer thread panicked")))
            })
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let mut total = Outcome {
        latency: crate::workload::histogram(),
        records: 0,
        fsyncs: 0,
    };
    for o in outcomes {
        let o = o?;
        total.latency.add(&o.latency)?;
        total.records += o.records;
        total.fsyncs += o.fsyncs;
    }
    Ok(Summary { total, elapsed })
}

/// A thread that keeps a file written with zeros (and fdatasync'd) up to two chunks past the
/// writer's end. The writer never waits for it: when it outruns the zeros it appends, as a
/// broker would, and the zeros resume past its end. One lock orders the two threads' writes
/// (into the page cache, not the fsyncs), so zeros never land on data.
struct ZeroAhead {
    state: std::sync::Arc<ZeroState>,
    thread: std::thread::JoinHandle<Result<()>>,
}

struct ZeroState {
    /// (end of the writer's data, end of the zeros written), under the lock both threads take
    /// to write.
    ends: std::sync::Mutex<(u64, u64)>,
    stop: std::sync::atomic::AtomicBool,
}

impl ZeroAhead {
    fn start(file: std::sync::Arc<std::fs::File>, path: PathBuf, chunk: u64) -> Result<Self> {
        use std::os::unix::fs::FileExt;
        use std::sync::atomic::Ordering::Acquire;
        let zeros = vec![0u8; chunk as usize];
        // The first two chunks before the clock starts, as a segment made ahead of time would be.
        for i in 0..2 {
            file.write_all_at(&zeros, i * chunk)
                .with_context(|| format!("zero-filling {}", path.display()))?;
        }
        file.sync_data()
            .with_context(|| format!("fsync of {}", path.display()))?;
        let state = std::sync::Arc::new(ZeroState {
            ends: std::sync::Mutex::new((0, 2 * chunk)),
            stop: false.into(),
        });
        let st = state.clone();
        let thread = std::thread::spawn(move || -> Result<()> {
            while !st.stop.load(Acquire) {
                {
                    let mut ends = st.ends.lock().unwrap_or_else(|p| p.into_inner());
                    let (data_end, zero_end) = *ends;
                    if zero_end.saturating_sub(data_end) >= 2 * chunk {
                        drop(ends);
                        std::thread::park_timeout(Duration::from_millis(5));
                        continue;
                    }
                    let at = zero_end.max(data_end);
                    file.write_all_at(&zeros, at)
                        .with_context(|| format!("zero-filling {}", path.display()))?;
                    ends.1 = at + chunk;
                }
                file.sync_data()
                    .with_context(|| format!("fsync of {}", path.display()))?;
            }
            Ok(())
        });
        Ok(ZeroAhead { state, thread })
    }

    /// Writes `bytes` at the end of the writer's data.
    fn write(&self, file: &std::fs::File, bytes: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        let mut ends = self.state.ends.lock().unwrap_or_else(|p| p.into_inner());
        file.write_all_at(bytes, ends.0)?;
        ends.0 += bytes.len() as u64;
        drop(ends);
        self.thread.thread().unpark();
        Ok(())
    }

    fn stop(self) -> Result<()> {
        self.state
            .stop
            .store(true, std::sync::atomic::Ordering::Release);
        self.thread.thread().unpark();
        self.thread
            .join()
            .unwrap_or_else(|_| Err(anyhow::anyhow!("a zero-fill thread panicked")))
    }
}

/// One partition: write what is due, fsync, count; sleep while nothing is due.
fn append_loop(
    path: PathBuf,
    file: impl std::borrow::Borrow<std::fs::File>,
    record_size: usize,
    rate: f64,
    start: Instant,
    end: Instant,
    zero_ahead: Option<&ZeroAhead>,
) -> Result<Outcome> {
    use std::os::unix::fs::FileExt;
    let file = file.borrow();
    let chunk = vec![b'r'; 1 << 20];
    let mut latency = crate::workload::histogram();
    let due = |i: u64| start + Duration::from_secs_f64(i as f64 / rate);
    let (mut written, mut fsyncs, mut pos) = (0u64, 0u64, 0u64);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due_now = ((now - start).as_secs_f64() * rate).floor() as u64 + 1;
        if due_now <= written {
            std::thread::sleep(due(written).saturating_duration_since(now));
            continue;
        }
        let mut left = (due_now - written) as usize * record_size;
        while left > 0 {
            let n = left.min(chunk.len());
            match zero_ahead {
                Some(z) => z.write(file, &chunk[..n]),
                None => file.write_all_at(&chunk[..n], pos),
            }
            .with_context(|| format!("writing {}", path.display()))?;
            pos += n as u64;
            left -= n;
        }
        file.sync_data()
            .with_context(|| format!("fsync of {}", path.display()))?;
        fsyncs += 1;
        let done = Instant::now();
        for i in written..due_now {
            let us = done.saturating_duration_since(due(i)).as_micros() as u64;
            latency.saturating_record(us.max(1));
        }
        written = due_now;
    }
    Ok(Outcome {
        latency,
        records: written,
        fsyncs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_due_record_is_written_fsynced_and_timed_and_nothing_is_left_behind() {
        let parent = tempfile::tempdir().unwrap();
        let args = FsyncArgs {
            dir: parent.path().to_path_buf(),
            partitions: 2,
            record_size: 100,
            rate: 2_000.0,
            secs: 0.5,
            zero_ahead: 0,
        };
        let m = measure(&args).unwrap().total;
        // 1,000 records are due in 0.5 s (+1 per file for the one due at the start); those due
        // during a file's last fsync before the end are not written (a slow disk: many).
        assert!((500..=1_002).contains(&m.records), "{} records", m.records);
        assert_eq!(m.latency.len(), m.records, "each record timed once");
        assert!(
            m.fsyncs >= 2 && m.fsyncs <= m.records,
            "{} fsyncs",
            m.fsyncs
        );
        assert!(m.latency.min() >= 1);
        assert_eq!(
            std::fs::read_dir(parent.path()).unwrap().count(),
            0,
            "the files are removed"
        );
        // Overwriting zeros written ahead: the same accounting, the zero-fill thread included.
        let zeroed = FsyncArgs {
            zero_ahead: 64 << 10,
            ..args.clone()
        };
        let z = measure(&zeroed).unwrap().total;
        assert!((500..=1_002).contains(&z.records), "{} records", z.records);
        assert_eq!(z.latency.len(), z.records, "each record timed once");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
        let unaligned = FsyncArgs {
            zero_ahead: 1000,
            ..args.clone()
        };
        assert!(measure(&unaligned).is_err());
        let refused = FsyncArgs { rate: 0.0, ..args };
        assert!(measure(&refused).is_err());
    }
}
