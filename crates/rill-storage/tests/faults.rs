//! Storage under injected faults (feature `fault-injection`): failed fsyncs and writes, fsyncs
//! held in flight, power cuts that lose everything not fsynced, failures in a compaction swap.
//! Every wait is bounded; overlaps are made deterministic with paused operations, not sleeps.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use rill_protocol::ErrorCode;
use rill_storage::fault::{self, FileOp};
use rill_storage::{
    CLEAN_SHUTDOWN_FILE, CleanerConfig, CleanupPolicy, Clock, Log, LogConfig, LogError, LogManager,
    ManualClock, OffsetCheckpointFile, RECOVERY_POINT_CHECKPOINT, TopicPartition,
};

const WAIT: Duration = Duration::from_secs(20);

/// Polls `cond` until it holds or [`WAIT`] passes.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + WAIT;
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(1));
    }
}

/// Appends `n` one-record batches; returns the log end offset.
fn append_n(log: &mut Log, start: usize, n: usize) -> i64 {
    for i in start..start + n {
        log.append_as_leader(&mut numbered(i, 1, 40, 1_000), 0)
            .unwrap();
    }
    log.log_end_offset()
}

fn values(records: &[Rec]) -> Vec<i64> {
    records.iter().map(|r| r.offset).collect()
}

/// `small_config` without `preallocate`: the fault hits and the bytes a power cut loses that
/// these tests count must come from the log's own operations, not from the preallocation
/// thread's fsyncs (which also make appended data durable). Preallocation's own crash
/// behaviour is tested in tests/log.rs.
fn config() -> LogConfig {
    LogConfig {
        preallocate: false,
        ..small_config()
    }
}

#[test]
fn a_failed_fsync_is_sticky_and_loses_only_unsynced_data() {
    let dir = tempfile::tempdir().unwrap();
    let _tracking = fault::track_power_cuts(dir.path());
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), config(), &clock);
    let gc = log.group_commit();
    let synced_end = append_n(&mut log, 0, 5);
    gc.wait_durable(synced_end).unwrap();
    let synced = read_all(&log);
    let end = append_n(&mut log, 5, 5);
    {
        let failing = fault::inject_fsync_failure(dir.path());
        let err = gc.wait_durable(end).unwrap_err();
        assert!(err.is_log_dir_failure(), "{err}");
        assert_eq!(err.error_code(), ErrorCode::KafkaStorageError);
        assert_eq!(failing.hits(), 1);
    }
    // The disk "works" again, but the pages of the failed fsync are gone: nothing more may
    // ever be reported durable.
    let err = gc.wait_durable(end).unwrap_err();
    assert!(
        matches!(err, LogError::LogDirOffline { .. }) && err.is_log_dir_failure(),
        "{err}"
    );
    assert_eq!(gc.durable_offset(), synced_end);
    assert!(gc.is_failed() && log.is_offline());
    assert!(matches!(
        log.append_as_leader(&mut numbered(10, 1, 40, 1_000), 0),
        Err(LogError::LogDirOffline { .. })
    ));
    assert!(matches!(log.flush(), Err(LogError::LogDirOffline { .. })));
    assert!(matches!(log.roll(), Err(LogError::LogDirOffline { .. })));
    assert!(matches!(
        log.write_out(),
        Err(LogError::LogDirOffline { .. })
    ));
    assert!(matches!(log.close(), Err(LogError::LogDirOffline { .. })));
    assert_eq!(gc.durable_offset(), synced_end);
    assert_eq!(
        log.recovery_point(),
        synced_end,
        "frozen at what was fsynced"
    );
    let recovery_point = log.recovery_point();
    drop(log);

    let report = fault::power_cut(dir.path()).unwrap();
    assert!(report.bytes_lost > 0, "{report:?}");
    let log = reopen(dir.path(), config(), &clock, false, recovery_point);
    assert_eq!(log.log_end_offset(), synced_end);
    assert_eq!(read_all(&log), synced);
    assert!(!log.is_offline(), "reopening recovers the log");
}

#[test]
fn a_failed_write_of_buffered_data_takes_the_log_offline() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), config(), &clock);
    let end = append_n(&mut log, 0, 3);
    let failing = fault::inject_write_failure(dir.path());
    assert!(log.write_out().unwrap_err().is_log_dir_failure());
    drop(failing);
    assert!(log.is_offline());
    assert!(matches!(
        log.group_commit().wait_durable(end),
        Err(LogError::LogDirOffline { .. })
    ));
    assert_eq!(log.group_commit().durable_offset(), 0);
}

#[test]
fn every_waiter_of_a_failed_fsync_gets_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let log = Arc::new(Mutex::new(open(dir.path(), config(), &clock)));
    let gc = log.lock().unwrap().group_commit();
    // The first append writes the leader epoch checkpoint (an fsync): not the one to hold.
    let synced = append_n(&mut log.lock().unwrap(), 100, 1);
    gc.wait_durable(synced).unwrap();
    let paused = fault::pause_next(FileOp::Fsync, dir.path());
    let _failing = fault::inject_fsync_failure(dir.path());
    let spawn = |i: usize| {
        let (log, gc) = (Arc::clone(&log), Arc::clone(&gc));
        std::thread::spawn(move || {
            let end = append_n(&mut log.lock().unwrap(), i, 1);
            gc.wait_durable(end)
        })
    };
    let leader = spawn(0);
    assert!(paused.wait_until_paused(WAIT), "the leader's fsync is held");
    let waiters: Vec<_> = (1..4).map(spawn).collect();
    eventually("three queued waiters", || gc.waiting() == 3);
    paused.release();
    let err = leader.join().unwrap().unwrap_err();
    assert!(matches!(err, LogError::Io { .. }), "{err}");
    for w in waiters {
        let err = w.join().unwrap().unwrap_err();
        assert!(matches!(err, LogError::LogDirOffline { .. }), "{err}");
    }
    assert_eq!(gc.durable_offset(), synced);
}

/// Issue 10: concurrent appenders share fsyncs. One appender's fsync is held in flight while
/// seven others append and queue; when it completes, one more fsync covers all seven.
#[test]
fn concurrent_appenders_share_one_fsync() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let log = Arc::new(Mutex::new(open(dir.path(), config(), &clock)));
    let gc = log.lock().unwrap().group_commit();
    // The first append writes the leader epoch checkpoint (an fsync): not the one to hold.
    let synced = append_n(&mut log.lock().unwrap(), 100, 1);
    gc.wait_durable(synced).unwrap();
    let before = gc.sync_count();
    let paused = fault::pause_next(FileOp::Fsync, dir.path());
    let spawn = |i: usize| {
        let (log, gc) = (Arc::clone(&log), Arc::clone(&gc));
        std::thread::spawn(move || {
            let end = append_n(&mut log.lock().unwrap(), i, 1);
            gc.wait_durable(end).unwrap();
            assert!(gc.durable_offset() >= end);
        })
    };
    let first = spawn(0);
    assert!(paused.wait_until_paused(WAIT));
    let others: Vec<_> = (1..8).map(spawn).collect();
    eventually("seven queued appenders", || gc.waiting() == 7);
    paused.release();
    first.join().unwrap();
    for t in others {
        t.join().unwrap();
    }
    assert_eq!(gc.durable_offset(), synced + 8);
    assert_eq!(
        gc.sync_count() - before,
        2,
        "8 appends, 2 fsyncs: the held one and one shared by the seven queued appenders"
    );
}

/// An fsync that started before a truncation must not publish its old target over data
/// re-appended (and not yet synced) after the cut.
#[test]
fn an_fsync_in_flight_across_a_truncation_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), config(), &clock);
    let gc = log.group_commit();
    let end = append_n(&mut log, 0, 5);
    let first = fault::pause_next(FileOp::Fsync, dir.path());
    let waiter = {
        let gc = Arc::clone(&gc);
        std::thread::spawn(move || gc.wait_durable(end))
    };
    assert!(first.wait_until_paused(WAIT));
    log.truncate_to(2).unwrap();
    assert_eq!(
        append_n(&mut log, 100, 3),
        end,
        "re-appended up to the old end"
    );
    let second = fault::pause_next(FileOp::Fsync, dir.path());
    first.release();
    // The waiter either publishes (the bug) and returns, or fsyncs again for the new data.
    eventually("the waiter to finish or fsync again", || {
        second.is_paused() || waiter.is_finished()
    });
    assert!(
        gc.durable_offset() <= 2,
        "durable {} covers re-appended, unsynced data",
        gc.durable_offset()
    );
    second.release();
    waiter.join().unwrap().unwrap();
    assert_eq!(gc.durable_offset(), end);
}

#[test]
fn a_truncation_survives_a_power_cut() {
    let dir = tempfile::tempdir().unwrap();
    let _tracking = fault::track_power_cuts(dir.path());
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), config(), &clock);
    let end = append_n(&mut log, 0, 10);
    log.group_commit().wait_durable(end).unwrap();
    log.truncate_to(4).unwrap();
    assert!(log.recovery_point() <= 4);
    let recovery_point = log.recovery_point();
    drop(log);
    fault::power_cut(dir.path()).unwrap();
    let log = reopen(dir.path(), config(), &clock, false, recovery_point);
    assert_eq!(log.log_end_offset(), 4, "truncated batches came back");
    assert_eq!(values(&read_all(&log)), vec![0, 1, 2, 3]);
}

fn manager(dirs: &[std::path::PathBuf], clock: &ManualClock) -> LogManager {
    LogManager::open(
        dirs.to_vec(),
        1,
        &config(),
        CleanerConfig::default(),
        Arc::new(clock.clone()),
    )
    .unwrap()
}

fn checkpointed(dir: &Path, tp: &TopicPartition) -> Option<i64> {
    OffsetCheckpointFile::new(dir.join(RECOVERY_POINT_CHECKPOINT))
        .read()
        .unwrap()
        .get(&rill_storage::partition_dir_name(tp))
        .copied()
}

#[test]
fn the_recovery_point_checkpoint_follows_group_commit() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a")];
    let clock = ManualClock::new(1_000);
    let m = manager(&dirs, &clock);
    let tp = TopicPartition::new("t", 0);
    let log = m.get_or_create(&tp, config()).unwrap();
    let end = append_n(&mut log.write(), 0, 6);
    m.checkpoint().unwrap();
    assert_eq!(checkpointed(&dirs[0], &tp), Some(0), "nothing fsynced yet");
    log.read().group_commit().wait_durable(end).unwrap();
    m.checkpoint().unwrap();
    assert_eq!(checkpointed(&dirs[0], &tp), Some(end));
    // A truncation lowers the checkpoint at once.
    m.truncate_to(&tp, 3).unwrap();
    assert_eq!(checkpointed(&dirs[0], &tp), Some(3));
    assert_eq!(m.log_dir_of(&tp), Some(dirs[0].clone()));
    assert_eq!(m.log_dir_of(&TopicPartition::new("t", 9)), None);
}

#[test]
fn a_damaged_recovery_point_checkpoint_means_full_recovery() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a")];
    let clock = ManualClock::new(1_000);
    let tp = TopicPartition::new("t", 0);
    let before = {
        let m = manager(&dirs, &clock);
        let log = m.get_or_create(&tp, config()).unwrap();
        append_n(&mut log.write(), 0, 6);
        m.flush_all().unwrap();
        read_all(&log.read())
    };
    std::fs::write(
        dirs[0].join(RECOVERY_POINT_CHECKPOINT),
        "1\n1\nt-0 6\ncrc32 0\n",
    )
    .unwrap();
    let m = manager(&dirs, &clock);
    let log = m.get(&tp).unwrap();
    assert_eq!(read_all(&log.read()), before);
    assert_eq!(
        checkpointed(&dirs[0], &tp),
        Some(6),
        "rewritten after recovery"
    );
}

#[test]
fn an_offline_log_is_skipped_by_flush_checkpoint_and_shutdown() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a"), root.path().join("b")];
    let clock = ManualClock::new(1_000);
    let m = manager(&dirs, &clock);
    let (bad, good) = (TopicPartition::new("t", 0), TopicPartition::new("t", 1));
    let bad_log = m.get_or_create(&bad, config()).unwrap();
    let good_log = m.get_or_create(&good, config()).unwrap();
    let bad_dir = m.log_dir_of(&bad).unwrap();
    let good_dir = m.log_dir_of(&good).unwrap();
    assert_ne!(bad_dir, good_dir, "one log per dir");
    let synced = append_n(&mut bad_log.write(), 0, 3);
    bad_log.read().group_commit().wait_durable(synced).unwrap();
    let bad_end = append_n(&mut bad_log.write(), 3, 3);
    let good_end = append_n(&mut good_log.write(), 0, 4);
    {
        let _failing = fault::inject_fsync_failure(&bad_dir);
        let gc = bad_log.read().group_commit();
        assert!(gc.wait_durable(bad_end).unwrap_err().is_log_dir_failure());
        // The bad dir's checkpoint cannot be written either; the good dir's still is.
        assert!(m.flush_all().is_err());
        assert_eq!(checkpointed(&good_dir, &good), Some(good_end));
    }
    m.flush_all().unwrap();
    assert_eq!(checkpointed(&good_dir, &good), Some(good_end));
    assert_eq!(
        checkpointed(&bad_dir, &bad),
        Some(synced),
        "an offline log's recovery point stays at what was fsynced"
    );
    m.shutdown().unwrap();
    assert!(good_dir.join(CLEAN_SHUTDOWN_FILE).exists());
    assert!(
        !bad_dir.join(CLEAN_SHUTDOWN_FILE).exists(),
        "a dir with an offline log must be recovered on the next start"
    );
}

fn compacted_config() -> LogConfig {
    LogConfig {
        segment_bytes: 1024,
        index_interval_bytes: 128,
        cleanup_policy: CleanupPolicy::COMPACT,
        ..LogConfig::default()
    }
}

/// A compacted log of several sealed segments, 60 records over 5 keys: a pass rewrites them.
fn compactable_log(dir: &Path, clock: &ManualClock) -> Log {
    let mut log = open(dir, compacted_config(), clock);
    for i in 0..60usize {
        let key = format!("k{}", i % 5);
        let value = format!("value-{i}-padding-padding-padding");
        let mut b = batch(&[(Some(key.as_bytes()), Some(value.as_bytes()))], 1_000);
        log.append_as_leader(&mut b, 0).unwrap();
    }
    log.roll().unwrap();
    assert!(log.segments().len() > 3);
    log
}

/// A compaction swap makes its directory changes durable in order: the old segments' renames
/// to `.deleted` before the `.swap` takes its final name (else a crash could leave the new `.log`
/// beside old ones holding the same offsets), and that last rename before the pass ends.
#[test]
fn a_cleaner_swap_fsyncs_its_directory_between_renames() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = compactable_log(dir.path(), &clock);
    let end = log.log_end_offset();
    let recording = fault::record(dir.path());
    log.clean(end, &CleanerConfig::default()).unwrap();
    let ops = recording.ops();
    drop(recording);
    let ends = |p: &Option<std::path::PathBuf>, suffix: &str| {
        p.as_ref()
            .is_some_and(|p| p.to_string_lossy().ends_with(suffix))
    };
    let dir_fsync = |op: &fault::RecordedOp| op.op == FileOp::Fsync && op.path == dir.path();
    let finals: Vec<usize> = ops
        .iter()
        .enumerate()
        .filter(|(_, o)| o.op == FileOp::Rename && o.path.to_string_lossy().ends_with(".log.swap"))
        .map(|(i, _)| i)
        .collect();
    assert!(!finals.is_empty(), "the pass swapped a group in: {ops:#?}");
    for &f in &finals {
        let last_deleted = ops[..f]
            .iter()
            .rposition(|o| o.op == FileOp::Rename && ends(&o.to, ".deleted"))
            .unwrap_or_else(|| panic!("old segments renamed .deleted before {:?}", ops[f]));
        assert!(
            ops[last_deleted..f].iter().any(dir_fsync),
            "no directory fsync between the old segments' renames and the swap's final one: {:#?}",
            &ops[last_deleted..=f]
        );
        assert!(
            ops[f..].iter().any(dir_fsync),
            "the final rename is made durable: {:#?}",
            &ops[f..]
        );
    }
}

/// A failure in the middle of a compaction swap (a full disk) takes the log offline, and the
/// log reopened from disk keeps the latest value of every key.
#[test]
fn a_failed_cleaner_swap_leaves_no_hole() {
    for successes in 1..4 {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000);
        let mut log = compactable_log(dir.path(), &clock);
        let before = read_all(&log);
        let end = log.log_end_offset();
        let failing = fault::inject_after(FileOp::Rename, dir.path(), successes);
        let result = log.clean(end, &CleanerConfig::default());
        assert!(failing.hits() > 0, "the swap renamed files");
        assert!(result.unwrap_err().is_log_dir_failure());
        drop(failing);
        // Offline: it serves nothing more (see
        // `a_truncation_that_fails_part_way_leaves_a_log_that_refuses_reads`).
        assert!(log.is_offline(), "rename #{} failed", successes + 1);
        assert!(log.read(0, 1 << 20, None, true).is_err());
        assert_eq!(log.log_end_offset(), end);
        drop(log);
        // On disk the swap is completed or rolled back on open; the latest value of every key
        // is there either way.
        let log = open(dir.path(), compacted_config(), &clock);
        let after = read_all(&log);
        for k in 0..5 {
            let key = Some(format!("k{k}").into_bytes());
            let want = before.iter().rfind(|r| r.key == key).unwrap();
            assert_eq!(after.iter().rfind(|r| r.key == key), Some(want));
        }
    }
}

/// Power cuts tried at each crash point of [`crash_at_every_step`] besides the plain one: cuts
/// that keep a random subset of the directory changes made since the last fsyncs.
const REORDERED_CUTS: u64 = 4;

/// Cuts power under `dir` after a crash at `step`: the plain cut for `cut` 0, else a reordered
/// one with a seed made of both. Returns where, for messages.
fn cut_power(dir: &Path, step: u64, cut: u64) -> String {
    if cut == 0 {
        fault::power_cut(dir).unwrap();
        format!("step {step}")
    } else {
        let seed = step * 1_000 + cut;
        fault::power_cut_reordered(dir, seed).unwrap();
        format!("step {step}, reordered cut {seed}")
    }
}

/// Crashes `op` at each of its file operations in turn: for step 0, 1, 2, … a fresh log from
/// `setup` (everything in it made durable first, as acknowledged records are), `op` with every
/// file operation after the first `step` failing (the process stopped there), a power cut —
/// the plain one, then [`REORDERED_CUTS`] reordered ones, each on a fresh run — and
/// `check(where, crashed, records before, log end before, reopened log)`. The last round is the
/// one `op` finishes without reaching its crash point (`crashed` false; `op` must succeed).
/// Returns how many crash points there were.
fn crash_at_every_step(
    setup: impl Fn(&Path, &ManualClock) -> Log,
    config: impl Fn() -> LogConfig,
    op: impl Fn(&mut Log) -> rill_storage::Result<()>,
    check: impl Fn(&str, bool, &[Rec], i64, &mut Log),
) -> u64 {
    for step in 0.. {
        let mut crashed = false;
        for cut in 0..=REORDERED_CUTS {
            let dir = tempfile::tempdir().unwrap();
            let _tracking = fault::track_power_cuts(dir.path());
            let clock = ManualClock::new(1_000);
            let mut log = setup(dir.path(), &clock);
            log.flush().unwrap();
            let before = read_all(&log);
            let end = log.log_end_offset();
            let crash = fault::crash_after(dir.path(), step);
            let result = op(&mut log);
            crashed = crash.hits() > 0;
            drop(log);
            drop(crash);
            let at = cut_power(dir.path(), step, cut);
            let mut log = reopen(dir.path(), config(), &clock, false, 0);
            check(&at, crashed, &before, end, &mut log);
            if !crashed {
                result.unwrap();
            }
        }
        if !crashed {
            return step;
        }
    }
    unreachable!()
}

/// A machine crash at any step of a compaction pass loses nothing: the log reopens with the
/// same end, every record in it is one written at that offset, and every key keeps its latest
/// value. (A cut keeps a directory as its last fsync saw it; that the swap's renames between
/// two fsyncs cannot be kept out of order is `a_cleaner_swap_fsyncs_its_directory_between_renames`.)
#[test]
fn a_power_cut_at_any_step_of_a_cleaner_pass_loses_nothing() {
    let steps = crash_at_every_step(
        compactable_log,
        compacted_config,
        |log| {
            let end = log.log_end_offset();
            log.clean(end, &CleanerConfig::default()).map(drop)
        },
        |step, crashed, before, end, log| {
            let after = read_all(log);
            assert_eq!(log.log_end_offset(), end, "crash at {step}");
            assert!(
                after.windows(2).all(|w| w[0].offset < w[1].offset),
                "crash at {step}: offsets out of order"
            );
            for r in &after {
                assert!(
                    before.contains(r),
                    "crash at {step}: {r:?} was never written"
                );
            }
            for k in 0..5 {
                let key = Some(format!("k{k}").into_bytes());
                let want = before.iter().rfind(|r| r.key == key).unwrap();
                assert_eq!(
                    after.iter().rfind(|r| r.key == key),
                    Some(want),
                    "crash at {step}"
                );
            }
            if !crashed {
                assert!(after.len() < before.len(), "the pass compacted");
            }
        },
    );
    assert!(steps > 10, "the pass took {steps} file operations");
}

/// `log` with 40 one-record batches of ~450 bytes: five or more small segments.
fn forty_records(mut log: Log) -> Log {
    for i in 0..40 {
        log.append_as_leader(&mut numbered(i, 1, 400, 1_000), 0)
            .unwrap();
    }
    assert!(log.segments().len() > 3);
    log
}

/// A machine crash at any step of a truncation across segments (a follower cutting its
/// divergent tail) leaves a prefix of the log: no hole, nothing below the cut lost, every
/// record the one written at its offset.
#[test]
fn a_power_cut_at_any_step_of_a_truncation_leaves_a_prefix() {
    const CUT: i64 = 7;
    let steps = crash_at_every_step(
        |dir, clock| forty_records(open(dir, small_config(), clock)),
        small_config,
        |log| log.truncate_to(CUT),
        |step, crashed, before, _, log| {
            let end = log.log_end_offset();
            assert!(end >= CUT, "crash at {step}: end {end} below the cut");
            assert_eq!(
                read_all(log),
                before[..end as usize],
                "crash at {step}: not a prefix"
            );
            if !crashed {
                assert_eq!(end, CUT);
            }
        },
    );
    assert!(steps > 3, "the truncation took {steps} file operations");
}

fn retention_config() -> LogConfig {
    LogConfig {
        retention_ms: 60_000,
        ..config()
    }
}

/// A machine crash at any step of a retention round that deletes several segments: the log
/// keeps its end and is a suffix of what it was — the oldest segments gone, never one behind
/// a hole — and the round, finished, deleted every expired one.
#[test]
fn a_power_cut_at_any_step_of_retention_leaves_a_suffix() {
    let steps = crash_at_every_step(
        |dir, clock| {
            let mut log = open(dir, retention_config(), clock);
            for i in 0..30 {
                log.append_as_leader(&mut numbered(i, 1, 400, clock.now_ms()), 0)
                    .unwrap();
            }
            clock.advance(3_600_000);
            for i in 30..40 {
                log.append_as_leader(&mut numbered(i, 1, 400, clock.now_ms()), 0)
                    .unwrap();
            }
            assert!(log.segments().len() > 4);
            log
        },
        retention_config,
        |log| log.delete_old_segments(log.log_end_offset()).map(drop),
        |step, crashed, before, end, log| {
            assert_eq!(log.log_end_offset(), end, "crash at {step}");
            let start = log.log_start_offset();
            assert_eq!(
                read_all(log),
                before[start as usize..],
                "crash at {step}: not a suffix (log start {start})"
            );
            if !crashed {
                assert!(
                    start >= 24,
                    "crash at {step}: expired segments left (start {start})"
                );
            }
        },
    );
    assert!(steps > 6, "retention took {steps} file operations");
}

/// A machine crash at any step of a full truncation (a follower starting over at its leader's
/// log start): the log is what it was, or the new empty log at the new start — never part of
/// the old one, and never an empty log at 0 (the follower would fetch from 0 again).
#[test]
fn a_power_cut_at_any_step_of_a_full_truncation_leaves_the_old_log_or_the_new_one() {
    const START: i64 = 100;
    let steps = crash_at_every_step(
        |dir, clock| forty_records(open(dir, config(), clock)),
        config,
        |log| log.truncate_fully_and_start_at(START),
        |step, crashed, before, old_end, log| {
            let (start, end) = (log.log_start_offset(), log.log_end_offset());
            if start == START {
                assert_eq!(end, START, "crash at {step}");
                assert!(read_all(log).is_empty(), "crash at {step}");
                // The new log takes appends at its start.
                log.append_as_leader(&mut numbered(START as usize, 1, 100, 1_000), 0)
                    .unwrap();
                assert_eq!(log.log_end_offset(), START + 1, "crash at {step}");
            } else {
                assert_eq!((start, end), (0, old_end), "crash at {step}");
                assert_eq!(read_all(log), before, "crash at {step}: not the old log");
                assert!(crashed, "crash at {step}: the truncation finished");
            }
        },
    );
    assert!(steps > 6, "the truncation took {steps} file operations");
}

/// A machine crash at any step of a segment roll and of the first acknowledged append into
/// the new segment: nothing durable before is lost, the append is there once acknowledged (the
/// new segment's name is durable before it holds anything), and the log goes on from its end.
#[test]
fn a_power_cut_at_any_step_of_a_roll_loses_nothing() {
    let steps = crash_at_every_step(
        |dir, clock| {
            let mut log = open(dir, small_config(), clock);
            for i in 0..5 {
                log.append_as_leader(&mut numbered(i, 1, 100, 1_000), 0)
                    .unwrap();
            }
            log
        },
        small_config,
        |log| {
            log.roll()?;
            log.append_as_leader(&mut numbered(5, 1, 100, 1_000), 0)?;
            let end = log.log_end_offset();
            log.group_commit().wait_durable(end)
        },
        |step, crashed, before, end, log| {
            let now = log.log_end_offset();
            assert!(now == end || now == end + 1, "crash at {step}: end {now}");
            let after = read_all(log);
            assert_eq!(after[..before.len()], *before, "crash at {step}");
            if !crashed {
                assert_eq!(now, end + 1, "the acknowledged append was lost");
            }
            log.append_as_leader(&mut numbered(6, 1, 100, 1_000), 0)
                .unwrap();
            assert_eq!(read_all(log).len() as i64, now + 1, "crash at {step}");
        },
    );
    assert!(steps > 2, "the roll took {steps} file operations");
}

/// Opening a log that a crash left with a compaction `.swap` finishes the swap in the live
/// swap's order: the old segments' removal is durable (a directory fsync) before the `.swap`
/// takes its final name, so a crash during open cannot leave both holding the same offsets.
#[test]
fn finishing_an_interrupted_swap_on_open_fsyncs_between_removal_and_rename() {
    let mut found = false;
    for step in 0.. {
        let dir = tempfile::tempdir().unwrap();
        let _tracking = fault::track_power_cuts(dir.path());
        let clock = ManualClock::new(1_000);
        let mut log = compactable_log(dir.path(), &clock);
        log.flush().unwrap();
        let end = log.log_end_offset();
        let crash = fault::crash_after(dir.path(), step);
        let _ = log.clean(end, &CleanerConfig::default());
        let crashed = crash.hits() > 0;
        drop(log);
        drop(crash);
        fault::power_cut(dir.path()).unwrap();
        assert!(crashed, "no crash point left a .swap behind");
        let swap = std::fs::read_dir(dir.path()).unwrap().any(|e| {
            e.unwrap()
                .file_name()
                .to_string_lossy()
                .ends_with(".log.swap")
        });
        if !swap {
            continue;
        }
        let recording = fault::record(dir.path());
        let log = reopen(dir.path(), compacted_config(), &clock, false, 0);
        let ops = recording.ops();
        let rename = ops
            .iter()
            .position(|o| o.op == FileOp::Rename && o.path.to_string_lossy().ends_with(".log.swap"))
            .unwrap_or_else(|| panic!("the swap is finished on open: {ops:#?}"));
        let last_removal = ops[..rename]
            .iter()
            .rposition(|o| o.op == FileOp::Remove && o.path.to_string_lossy().ends_with(".log"))
            .unwrap_or_else(|| panic!("old segments removed before the rename: {ops:#?}"));
        assert!(
            ops[last_removal..rename]
                .iter()
                .any(|o| o.op == FileOp::Fsync && o.path == dir.path()),
            "no directory fsync between the removals and the rename: {ops:#?}"
        );
        assert_eq!(log.log_end_offset(), end);
        found = true;
        break;
    }
    assert!(found);
}

/// Recovering a segment torn in the middle of the log (a bad batch with segments after it)
/// cuts the segment and removes the segments after the hole. A machine crash at any step of
/// that recovery must not leave the cut (or indexes that would skip recovering the segment)
/// durable while the later segments survive: the next open would find a clean segment
/// followed by data after a hole and keep both. Both ways a segment is recovered: after an
/// unclean shutdown, and after a clean one with its index lost.
#[test]
fn a_power_cut_while_recovering_a_torn_middle_segment_leaves_a_prefix() {
    for index_lost in [false, true] {
        let mut steps = 0;
        for step in 0.. {
            let mut crashed = false;
            for cut in 0..=REORDERED_CUTS {
                let dir = tempfile::tempdir().unwrap();
                let clock = ManualClock::new(1_000);
                let mut log = forty_records(open(dir.path(), config(), &clock));
                log.flush().unwrap();
                let before = read_all(&log);
                let segments = log.segments();
                assert!(segments.len() > 3, "{segments:?}");
                if index_lost {
                    log.close().unwrap();
                }
                drop(log);
                // Damage the second segment in its middle, as a bad sector would.
                let torn = &segments[1];
                let path = dir.path().join(format!("{:020}.log", torn.base_offset));
                let mut bytes = std::fs::read(&path).unwrap();
                let mid = bytes.len() / 2;
                bytes[mid] ^= 0xff;
                std::fs::write(&path, &bytes).unwrap();
                if index_lost {
                    std::fs::remove_file(path.with_extension("index")).unwrap();
                }
                // After a clean shutdown the marker stays until every log is open: a crash
                // while opening leaves it for the next start too.
                let (clean, recovery_point) = if index_lost { (true, 40) } else { (false, 0) };

                let _tracking = fault::track_power_cuts(dir.path());
                let crash = fault::crash_after(dir.path(), step);
                let opened = Log::open(
                    dir.path(),
                    config(),
                    rill_storage::LogOpenOptions {
                        recovery_point,
                        clean_shutdown: clean,
                    },
                    Arc::new(clock.clone()),
                );
                crashed = crash.hits() > 0;
                drop(opened);
                drop(crash);
                let at = format!(
                    "index lost {index_lost}, {}",
                    cut_power(dir.path(), step, cut)
                );
                let log = reopen(dir.path(), config(), &clock, clean, recovery_point);
                let end = log.log_end_offset();
                assert!(
                    end > torn.base_offset && end < torn.next_offset,
                    "crash at {at}: end {end}, torn segment {torn:?}"
                );
                assert_eq!(
                    read_all(&log),
                    before[..end as usize],
                    "crash at {at}: not a prefix"
                );
                assert_eq!(log.segments().len(), 2, "crash at {at}");
            }
            if !crashed {
                steps = step;
                break;
            }
        }
        assert!(steps > 6, "recovery took {steps} file operations");
    }
}

/// A truncation that fails part way (any of its file operations, the disk failing from there
/// on) takes the log offline, and the log it leaves in memory neither serves a record nor
/// panics, whatever is asked of it next: its segments may be half gone, and what a deleted
/// file still holds through an open handle was cut.
#[test]
fn a_truncation_that_fails_part_way_leaves_a_log_that_refuses_reads() {
    type Truncation = fn(&mut Log) -> rill_storage::Result<()>;
    let truncations: [(&str, Truncation); 2] = [
        ("truncate_to", |log| log.truncate_to(7)),
        ("truncate_fully_and_start_at", |log| {
            log.truncate_fully_and_start_at(100)
        }),
    ];
    for (name, truncate) in truncations {
        for step in 0.. {
            let dir = tempfile::tempdir().unwrap();
            let clock = ManualClock::new(1_000);
            let mut log = forty_records(open(dir.path(), config(), &clock));
            log.flush().unwrap();
            let crash = fault::crash_after(dir.path(), step);
            let result = truncate(&mut log);
            let failed = crash.hits() > 0;
            if !failed {
                result.unwrap();
                break;
            }
            let at = format!("{name}, failing from step {step}");
            assert!(result.is_err(), "{at}");
            assert!(log.is_offline(), "{at}");
            for offset in [0, 7, 20, 39, 100] {
                assert!(
                    log.read(offset, 1 << 20, None, true).is_err(),
                    "{at}: read at {offset}"
                );
            }
            log.set_config(compacted_config());
            let _ = log.dirty_ratio();
            assert!(!log.needs_cleaning(), "{at}");
            assert!(
                log.plan_cleaning(i64::MAX, &CleanerConfig::default())
                    .is_none(),
                "{at}"
            );
            assert!(
                log.append_as_leader(&mut numbered(0, 1, 40, 1_000), 0)
                    .is_err()
            );
            assert!(log.flush().is_err(), "{at}");
            drop(crash);
        }
    }
}

/// A log whose directory cannot be renamed aside (deleted topic, failing disk) stays in
/// service under its name, so that no log created under that name opens its files; once the
/// disk works again it can be set aside.
#[test]
fn a_log_that_cannot_be_set_aside_stays_in_service() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a")];
    let clock = ManualClock::new(1_000);
    let m = manager(&dirs, &clock);
    let tp = TopicPartition::new("events", 0);
    let log = m.get_or_create(&tp, config()).unwrap();
    append_n(&mut log.write(), 0, 5);
    let failing = fault::inject(FileOp::Rename, root.path());
    assert!(m.set_aside(&tp, "delete").is_err());
    assert!(failing.hits() > 0);
    drop(failing);
    let kept = m.get(&tp).expect("still in service");
    assert!(Arc::ptr_eq(&kept, &log));
    assert_eq!(read_all(&kept.read()).len(), 5);
    let aside = m.set_aside(&tp, "delete").unwrap().unwrap();
    assert!(aside.exists());
    assert!(m.get(&tp).is_none());

    // Renamed, but the rename cannot be made durable: the log is out for good (its directory
    // has another name now), and the error is the log dir's.
    let log = m.get_or_create(&tp, config()).unwrap();
    append_n(&mut log.write(), 0, 5);
    let failing = fault::inject_fsync_failure(root.path());
    let e = m.set_aside(&tp, "delete").unwrap_err();
    assert!(e.is_log_dir_failure(), "{e}");
    drop(failing);
    assert!(m.get(&tp).is_none());
    assert!(!dirs[0].join("events-0").exists());
}
