//! Model-based test: random sequences of append / read / roll / truncate / close-and-reopen /
//! crash-and-reopen / group-commit fsync / power cut, checked after every step against an
//! in-memory model of the log. Power cuts go through the fault layer (`fault-injection`), which
//! throws away every byte not fsynced, so a missing fsync shows up as lost or resurrected data.

mod common;

use common::*;
use proptest::prelude::*;
use rill_storage::{Log, LogConfig, ManualClock};

#[derive(Clone, Debug)]
enum Op {
    /// Append a batch of `n` records with values of `len` bytes.
    Append {
        n: usize,
        len: usize,
    },
    /// Read from the offset at `at` (a fraction of the log) with `max_bytes`.
    Read {
        at: f64,
        max_bytes: usize,
    },
    Roll,
    /// Truncate to the offset at `at` (a fraction of the log).
    Truncate {
        at: f64,
    },
    /// Close cleanly and reopen.
    Reopen,
    /// Write out buffered appends (what a broker does before acknowledging), drop without
    /// closing, reopen with the last recovery point.
    Crash,
    /// Drop with appends still in the write buffer: some suffix of batches may be lost.
    CrashUnwritten,
    /// Group commit: fsync everything appended (what a broker does before acknowledging under
    /// `log.flush.policy=commit`).
    WaitDurable,
    /// Machine crash: drop the log and lose every byte not fsynced (fault layer), then reopen
    /// with the recovery point the log reported. Everything below the durable offset reported
    /// before the cut must be intact; nothing may appear that was never appended.
    PowerCut,
    /// A power cut that keeps a random subset of what was not fsynced (`power_cut_reordered`).
    PowerCutReordered(u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (1usize..6, 0usize..400).prop_map(|(n, len)| Op::Append { n, len }),
        3 => (0.0f64..1.0, 1usize..3000).prop_map(|(at, max_bytes)| Op::Read { at, max_bytes }),
        1 => Just(Op::Roll),
        1 => (0.0f64..1.0).prop_map(|at| Op::Truncate { at }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Crash),
        1 => Just(Op::CrashUnwritten),
        2 => Just(Op::WaitDurable),
        2 => Just(Op::PowerCut),
        2 => any::<u64>().prop_map(Op::PowerCutReordered),
    ]
}

/// The model: the records in order, and batch boundaries (first offset of each batch).
#[derive(Default)]
struct Model {
    start: i64,
    records: Vec<Rec>,
    batch_starts: Vec<i64>,
}

impl Model {
    fn end(&self) -> i64 {
        self.records.last().map_or(self.start, |r| r.offset + 1)
    }

    fn offset_at(&self, at: f64) -> i64 {
        self.start + ((self.end() - self.start) as f64 * at) as i64
    }
}

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 3000,
        index_interval_bytes: 300,
        segment_index_bytes: 64,
        ..LogConfig::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn log_behaves_like_the_model(ops in prop::collection::vec(op(), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let _tracking = rill_storage::fault::track_power_cuts(dir.path());
        let clock = ManualClock::new(1_000);
        let mut log: Log = open(dir.path(), config(), &clock);
        let mut model = Model::default();
        let mut counter = 0usize;
        // Everything below this offset was written out (or closed) and must survive any crash.
        let mut safe_end = 0i64;
        for op in ops {
            let op_done = op.clone();
            match op {
                Op::Append { n, len } => {
                    let mut b = numbered(counter, n, len, counter as i64);
                    let info = log.append_as_leader(&mut b, 0).unwrap();
                    prop_assert_eq!(info.first_offset, model.end());
                    model.batch_starts.push(model.end());
                    let appended = records_of(&b);
                    for (i, mut r) in appended.into_iter().enumerate() {
                        r.offset = info.first_offset + i as i64;
                        model.records.push(r);
                    }
                    counter += n;
                }
                Op::Read { at, max_bytes } => {
                    let offset = model.offset_at(at);
                    let got = log.read(offset, max_bytes, None, true).unwrap();
                    if offset == model.end() {
                        prop_assert!(got.is_none());
                    } else {
                        let got = records_of(&got.unwrap());
                        let first_batch = *model.batch_starts.iter().rfind(|b| **b <= offset).unwrap();
                        prop_assert_eq!(got[0].offset, first_batch, "starts at the batch holding the offset");
                        let want: Vec<Rec> = model.records.iter().filter(|r| r.offset >= first_batch).take(got.len()).cloned().collect();
                        prop_assert_eq!(got, want);
                    }
                }
                Op::Roll => log.roll().unwrap(),
                Op::Truncate { at } => {
                    let target = model.offset_at(at);
                    log.truncate_to(target).unwrap();
                    // The cut is at the start of the batch holding `target`.
                    let cut = if target >= model.end() {
                        model.end()
                    } else {
                        *model.batch_starts.iter().rfind(|b| **b <= target).unwrap_or(&model.start)
                    };
                    model.records.retain(|r| r.offset < cut);
                    model.batch_starts.retain(|b| *b < cut);
                }
                Op::Reopen => {
                    log.close().unwrap();
                    safe_end = model.end();
                    drop(log);
                    log = reopen(dir.path(), config(), &clock, true, 0);
                }
                Op::Crash => {
                    log.write_out().unwrap();
                    let recovery_point = log.recovery_point();
                    drop(log);
                    log = reopen(dir.path(), config(), &clock, false, recovery_point);
                }
                Op::CrashUnwritten => {
                    let recovery_point = log.recovery_point();
                    drop(log);
                    log = reopen(dir.path(), config(), &clock, false, recovery_point);
                    let end = log.log_end_offset();
                    prop_assert!(end >= safe_end && end <= model.end(), "{} not in [{}, {}]", end, safe_end, model.end());
                    prop_assert!(end == model.end() || model.batch_starts.contains(&end), "lost data at a batch boundary");
                    model.records.retain(|r| r.offset < end);
                    model.batch_starts.retain(|b| *b < end);
                }
                Op::WaitDurable => {
                    let end = log.log_end_offset();
                    log.group_commit().wait_durable(end).unwrap();
                    prop_assert!(log.recovery_point() == end, "the recovery point follows group commit");
                }
                Op::PowerCut | Op::PowerCutReordered(_) => {
                    let durable = log.group_commit().durable_offset();
                    let recovery_point = log.recovery_point();
                    prop_assert!(recovery_point <= durable, "recovery point {} beyond the durable offset {}", recovery_point, durable);
                    drop(log);
                    match op {
                        Op::PowerCutReordered(seed) => {
                            rill_storage::fault::power_cut_reordered(dir.path(), seed).unwrap();
                        }
                        _ => {
                            rill_storage::fault::power_cut(dir.path()).unwrap();
                        }
                    }
                    log = reopen(dir.path(), config(), &clock, false, recovery_point);
                    let end = log.log_end_offset();
                    prop_assert!(end >= durable && end >= recovery_point, "lost durable data: end {} < durable {} / recovery point {}", end, durable, recovery_point);
                    prop_assert!(end <= model.end(), "invented data: end {} > {}", end, model.end());
                    prop_assert!(end == model.end() || model.batch_starts.contains(&end), "lost data at a batch boundary");
                    model.records.retain(|r| r.offset < end);
                    model.batch_starts.retain(|b| *b < end);
                    prop_assert_eq!(read_all(&log), model.records.clone());
                    safe_end = end;
                }
            }
            if matches!(op_done, Op::Crash | Op::Roll) {
                safe_end = model.end();
            }
            safe_end = safe_end.min(model.end());
            prop_assert_eq!(log.log_start_offset(), model.start);
            prop_assert_eq!(log.log_end_offset(), model.end());
        }
        prop_assert_eq!(read_all(&log), model.records);
    }
}
