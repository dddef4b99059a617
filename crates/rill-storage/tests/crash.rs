//! Crash recovery on real files: torn tails, flipped bits, lost or garbled indexes, and
//! leftovers of interrupted operations.

mod common;

use std::path::Path;

use common::*;
use rill_storage::{LogConfig, ManualClock};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// A one-segment log of 10 batches; returns (dir, records, position where the last batch starts).
fn ten_batches() -> (tempfile::TempDir, Vec<Rec>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut last_start = 0;
    for i in 0..10 {
        last_start = log.size_bytes();
        log.append_as_leader(&mut numbered(i * 4, 4, 30, i as i64), 0)
            .unwrap();
    }
    log.flush().unwrap();
    let records = read_all(&log);
    // Closed, so the file ends at the last batch (no zeros written ahead, see `preallocate`).
    log.close().unwrap();
    (dir, records, last_start)
}

#[test]
fn a_torn_last_batch_is_cut_at_every_byte_boundary() {
    let (dir, records, last_start) = ten_batches();
    let seg = dir.path().join("00000000000000000000.log");
    let full = std::fs::read(&seg).unwrap();
    let clock = ManualClock::new(0);
    for cut in last_start..full.len() as u64 {
        let copy = tempfile::tempdir().unwrap();
        copy_dir(dir.path(), copy.path());
        std::fs::write(
            copy.path().join("00000000000000000000.log"),
            &full[..cut as usize],
        )
        .unwrap();
        let mut log = reopen(copy.path(), LogConfig::default(), &clock, false, 0);
        assert_eq!(log.log_end_offset(), 36, "cut at {cut}");
        assert_eq!(read_all(&log), records[..36], "cut at {cut}");
        assert_eq!(
            log.size_bytes(),
            last_start,
            "the torn bytes are gone from disk"
        );
        // The log keeps working after recovery.
        log.append_as_leader(&mut numbered(0, 1, 5, 0), 0).unwrap();
        assert_eq!(log.log_end_offset(), 37);
    }
}

#[test]
fn a_flipped_bit_in_the_last_batch_drops_exactly_that_batch() {
    let (dir, records, last_start) = ten_batches();
    let seg = dir.path().join("00000000000000000000.log");
    let full = std::fs::read(&seg).unwrap();
    let clock = ManualClock::new(0);
    // batch_length, magic, CRC and everything the CRC covers.
    let positions = (last_start as usize + 8..last_start as usize + 12)
        .chain(last_start as usize + 16..full.len());
    for pos in positions {
        for bit in [0, 3, 7] {
            let copy = tempfile::tempdir().unwrap();
            copy_dir(dir.path(), copy.path());
            let mut bytes = full.clone();
            bytes[pos] ^= 1 << bit;
            std::fs::write(copy.path().join("00000000000000000000.log"), &bytes).unwrap();
            let log = reopen(copy.path(), LogConfig::default(), &clock, false, 0);
            assert_eq!(read_all(&log), records[..36], "flip at {pos} bit {bit}");
        }
    }
}

#[test]
fn a_corrupt_middle_segment_during_recovery_drops_it_and_everything_after() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..40 {
        log.append_as_leader(&mut numbered(i * 5, 5, 100, 0), 0)
            .unwrap();
    }
    let segments = log.segments();
    let second = &segments[1];
    drop(log);
    let path = dir.path().join(format!("{:020}.log", second.base_offset));
    let mut bytes = std::fs::read(&path).unwrap();
    let len = bytes.len();
    bytes[len - 3] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    // Crash (no clean shutdown) with a recovery point before the damage: re-validated.
    let log = reopen(
        dir.path(),
        small_config(),
        &clock,
        false,
        second.base_offset,
    );
    let recs = read_all(&log);
    assert!(recs.len() < second.next_offset as usize);
    assert!(recs.len() as i64 >= second.base_offset);
    assert_eq!(
        log.segments().len(),
        2,
        "segments after the damaged one are gone"
    );
    assert_eq!(log.log_end_offset(), recs.last().unwrap().offset + 1);
}

fn sample_reads(log: &rill_storage::Log) -> Vec<Vec<u8>> {
    (0..log.log_end_offset())
        .step_by(7)
        .map(|o| log.read(o, 1000, None, true).unwrap().unwrap().to_vec())
        .collect()
}

#[test]
fn missing_or_garbled_indexes_are_rebuilt_and_reads_stay_identical() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..60 {
        log.append_as_leader(&mut numbered(i * 5, 5, 60, i as i64 * 10), 0)
            .unwrap();
    }
    log.close().unwrap();
    let expected = sample_reads(&log);
    let by_time = log.offset_for_timestamp(301).unwrap();
    drop(log);

    let index_files = |suffix: &str| -> Vec<std::path::PathBuf> {
        std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.to_string_lossy().ends_with(suffix))
            .collect()
    };
    assert!(index_files(".index").len() > 3);

    // Deleted.
    for p in index_files(".index")
        .into_iter()
        .chain(index_files(".timeindex"))
    {
        std::fs::remove_file(p).unwrap();
    }
    let log = reopen(dir.path(), small_config(), &clock, true, 0);
    assert_eq!(sample_reads(&log), expected);
    assert_eq!(log.offset_for_timestamp(301).unwrap(), by_time);
    assert!(
        index_files(".index").len() > 3,
        "indexes were written again"
    );
    drop(log);

    // Garbled: bytes overwritten, files truncated mid-entry.
    for (i, p) in index_files(".index")
        .into_iter()
        .chain(index_files(".timeindex"))
        .enumerate()
    {
        let mut bytes = std::fs::read(&p).unwrap();
        if bytes.is_empty() {
            continue;
        }
        if i % 2 == 0 {
            let n = bytes.len();
            bytes[n / 2] ^= 0x5a;
        } else {
            bytes.truncate(bytes.len() - 1);
        }
        std::fs::write(&p, bytes).unwrap();
    }
    let log = reopen(dir.path(), small_config(), &clock, true, 0);
    assert_eq!(sample_reads(&log), expected);
    assert_eq!(log.offset_for_timestamp(301).unwrap(), by_time);
}

#[test]
fn clean_shutdown_skips_recovery_and_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..30 {
        log.append_as_leader(&mut numbered(i * 5, 5, 60, i as i64), 0)
            .unwrap();
    }
    log.close().unwrap();
    let before = read_all(&log);
    let segments = log.segments();
    drop(log);
    let log = reopen(dir.path(), small_config(), &clock, true, 150);
    assert_eq!(read_all(&log), before);
    assert_eq!(
        log.segments(),
        segments,
        "sizes, offsets and max timestamps restored without a scan"
    );
}

#[test]
fn leftovers_of_interrupted_operations_are_removed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    log.append_as_leader(&mut numbered(0, 3, 10, 0), 0).unwrap();
    log.close().unwrap();
    drop(log);
    for name in [
        "00000000000000000000.log.deleted",
        "00000000000000000000.index.deleted",
        "00000000000000000100.log.cleaned",
        "00000000000000000100.timeindex.cleaned",
    ] {
        std::fs::write(dir.path().join(name), b"junk").unwrap();
    }
    let log = reopen(dir.path(), LogConfig::default(), &clock, false, 0);
    assert_eq!(read_all(&log).len(), 3);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        names
            .iter()
            .all(|n| !n.ends_with(".deleted") && !n.ends_with(".cleaned")),
        "{names:?}"
    );
}

#[test]
fn appends_not_written_out_are_lost_in_a_process_crash_but_never_corrupt_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    log.append_as_leader(&mut numbered(0, 2, 10, 0), 0).unwrap();
    log.write_out().unwrap();
    log.append_as_leader(&mut numbered(2, 2, 10, 0), 0).unwrap();
    drop(log); // a crash: the second append was still in the write buffer
    let log = reopen(dir.path(), LogConfig::default(), &clock, false, 0);
    assert_eq!(read_all(&log).len(), 2);
    assert_eq!(log.log_end_offset(), 2);
}
