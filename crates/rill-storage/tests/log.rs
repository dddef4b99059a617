//! The commit log's basic contract on real files: append, read, roll, indexes, time lookups,
//! bad input, group commit.

mod common;

use common::*;
use rill_protocol::record_batch::{Compression, RecordBatch};
use rill_storage::{CleanupPolicy, LogConfig, LogError, ManualClock};

#[test]
fn append_assigns_offsets_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    let mut b1 = numbered(0, 3, 10, 1_000);
    let mut b2 = numbered(3, 2, 10, 2_000);
    let i1 = log.append_as_leader(&mut b1, 7).unwrap();
    let i2 = log.append_as_leader(&mut b2, 7).unwrap();
    assert_eq!(
        (i1.first_offset, i1.last_offset, i1.record_count),
        (0, 2, 3)
    );
    assert_eq!((i2.first_offset, i2.last_offset), (3, 4));
    assert_eq!(log.log_end_offset(), 5);
    let all = read_all(&log);
    assert_eq!(
        all.iter().map(|r| r.offset).collect::<Vec<_>>(),
        [0, 1, 2, 3, 4]
    );
    assert_eq!(all[3].key.as_deref(), Some(&b"key-3"[..]));
    // The stored batch carries the leader epoch and passes its CRC untouched.
    let bytes = log.read(3, 1 << 20, None, true).unwrap().unwrap();
    let batch = RecordBatch::parse(&bytes).unwrap();
    batch.verify_crc().unwrap();
    assert_eq!(batch.header().partition_leader_epoch, 7);
    assert_eq!(batch.header().base_offset, 3);
}

#[test]
fn read_returns_whole_batches_and_at_least_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    for i in 0..10 {
        log.append_as_leader(&mut numbered(i * 10, 10, 100, 0), 0)
            .unwrap();
    }
    let one = log.read(0, 1, None, true).unwrap().unwrap();
    assert_eq!(
        records_of(&one).len(),
        10,
        "one whole batch even when larger than max_bytes"
    );
    assert!(log.read(0, 1, None, false).unwrap().is_none());
    let some = log.read(25, 3_000, None, true).unwrap().unwrap();
    let recs = records_of(&some);
    assert_eq!(
        recs[0].offset, 20,
        "the batch holding offset 25 starts at 20"
    );
    assert!(recs.len().is_multiple_of(10) && some.len() <= 3_000);
    // Bounded by max_offset (the high watermark): nothing at or after 30.
    let hw = log.read(0, 1 << 20, Some(30), true).unwrap().unwrap();
    assert_eq!(records_of(&hw).last().unwrap().offset, 29);
    assert!(log.read(30, 1 << 20, Some(30), true).unwrap().is_none());
    assert!(
        log.read(100, 1 << 20, None, true).unwrap().is_none(),
        "at the end: nothing yet"
    );
    assert!(matches!(
        log.read(101, 1, None, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
}

#[test]
fn segments_roll_by_size_and_reads_cross_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..50 {
        log.append_as_leader(&mut numbered(i * 5, 5, 100, i as i64), 0)
            .unwrap();
    }
    let segments = log.segments();
    assert!(segments.len() > 5, "{segments:?}");
    for w in segments.windows(2) {
        assert_eq!(w[0].next_offset, w[1].base_offset);
        assert!(w[0].size_bytes <= 4096);
    }
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(names.contains(&"00000000000000000000.log".to_owned()));
    assert!(names.contains(&format!("{:020}.index", segments[1].base_offset)));
    assert!(names.contains(&format!("{:020}.timeindex", segments[1].base_offset)));
    assert_eq!(read_all(&log).len(), 250);
    for offset in [0, 1, 37, 120, 249] {
        let bytes = log.read(offset, 1, None, true).unwrap().unwrap();
        let recs = records_of(&bytes);
        assert!(recs.iter().any(|r| r.offset == offset), "offset {offset}");
    }
}

#[test]
fn segments_roll_by_time() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let config = LogConfig {
        segment_ms: 60_000,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    log.append_as_leader(&mut numbered(0, 1, 10, 1_000_000), 0)
        .unwrap();
    clock.advance(30_000);
    log.append_as_leader(&mut numbered(1, 1, 10, 1_030_000), 0)
        .unwrap();
    assert_eq!(log.segments().len(), 1);
    clock.advance(31_000);
    log.append_as_leader(&mut numbered(2, 1, 10, 1_061_000), 0)
        .unwrap();
    assert_eq!(log.segments().len(), 2);
    assert_eq!(log.segments()[1].base_offset, 2);
}

#[test]
fn offset_for_timestamp_uses_the_time_index() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    // Batch i holds 5 records with timestamps 1000*i + 0..5.
    for i in 0..40 {
        log.append_as_leader(&mut numbered(i * 5, 5, 100, 1_000 * i as i64), 0)
            .unwrap();
    }
    assert_eq!(log.offset_for_timestamp(0).unwrap(), Some((0, 0)));
    assert_eq!(log.offset_for_timestamp(7_002).unwrap(), Some((37, 7_002)));
    assert_eq!(log.offset_for_timestamp(7_004).unwrap(), Some((39, 7_004)));
    assert_eq!(log.offset_for_timestamp(7_005).unwrap(), Some((40, 8_000)));
    assert_eq!(
        log.offset_for_timestamp(39_004).unwrap(),
        Some((199, 39_004))
    );
    assert_eq!(log.offset_for_timestamp(39_005).unwrap(), None);
}

#[test]
fn bad_input_is_rejected_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    log.append_as_leader(&mut numbered(0, 2, 10, 0), 0).unwrap();
    let before = (log.log_end_offset(), log.size_bytes());

    // Wrong CRC in the second batch of a request: the first batch is not written either.
    let mut good = numbered(2, 2, 10, 0);
    let mut bad = numbered(4, 2, 10, 0);
    let last = bad.len() - 1;
    bad[last] ^= 1;
    good.extend_from_slice(&bad);
    let err = log.append_as_leader(&mut good, 0).unwrap_err();
    assert!(
        matches!(err, LogError::InvalidBatch { index: 1, .. }),
        "{err}"
    );
    assert_eq!(err.error_code(), rill_protocol::ErrorCode::CorruptMessage);

    // Oversize.
    log.set_config(LogConfig {
        max_message_bytes: 200,
        ..LogConfig::default()
    });
    let err = log
        .append_as_leader(&mut numbered(0, 5, 100, 0), 0)
        .unwrap_err();
    assert!(
        matches!(err, LogError::MessageTooLarge { max: 200, .. }),
        "{err}"
    );
    assert_eq!(err.error_code(), rill_protocol::ErrorCode::MessageTooLarge);

    // A decompression bomb (tiny compressed, huge uncompressed) is stopped at
    // decompressed_batch_max_bytes (rill.decompressed.batch.max.bytes), named in the error.
    let zeros = vec![0u8; 100_000];
    log.set_config(LogConfig {
        max_message_bytes: 200,
        decompressed_batch_max_bytes: 50_000,
        ..LogConfig::default()
    });
    let mut bomb = batch_with(Compression::Zstd, &[(Some(b"k"), Some(&zeros))], 0);
    assert!(bomb.len() < 200);
    let err = log.append_as_leader(&mut bomb, 0).unwrap_err();
    assert!(
        matches!(
            err,
            LogError::DecompressedTooLarge {
                index: 0,
                max: 50_000
            }
        ),
        "{err}"
    );
    assert!(
        err.to_string()
            .contains("rill.decompressed.batch.max.bytes"),
        "{err}"
    );
    assert_eq!(
        err.error_code(),
        rill_protocol::ErrorCode::MessageTooLarge,
        "{err}"
    );

    // Keyless record in a compacted log.
    log.set_config(LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        ..LogConfig::default()
    });
    let err = log
        .append_as_leader(
            &mut batch(&[(Some(b"k"), Some(b"v")), (None, Some(b"v"))], 0),
            0,
        )
        .unwrap_err();
    assert!(
        matches!(err, LogError::KeylessRecordInCompactedLog { index: 0 }),
        "{err}"
    );
    assert_eq!(err.error_code(), rill_protocol::ErrorCode::InvalidRecord);

    // Garbage and empty input.
    assert!(log.append_as_leader(&mut [0u8; 10], 0).is_err());
    assert!(matches!(
        log.append_as_leader(&mut [], 0),
        Err(LogError::EmptyAppend)
    ));

    assert_eq!((log.log_end_offset(), log.size_bytes()), before);
    assert_eq!(read_all(&log).len(), 2);
}

#[test]
fn compressed_batches_are_bounded_as_sent_and_decompressed_separately() {
    // As in Kafka, max.message.bytes bounds the batch as sent: a compressed batch that fits is
    // accepted however much larger it is decompressed, up to the decompression bound.
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        max_message_bytes: 200,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    let zeros = vec![0u8; 100_000];
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut large = batch_with(codec, &[(Some(b"k"), Some(&zeros))], 0);
        if large.len() > 200 {
            continue; // this codec does not squeeze 100 kB of zeros under 200 bytes
        }
        let end = log.log_end_offset();
        log.append_as_leader(&mut large, 0)
            .unwrap_or_else(|e| panic!("{codec:?}: {e}"));
        assert_eq!(log.log_end_offset(), end + 1, "{codec:?}");
    }
    assert!(
        log.log_end_offset() >= 1,
        "no codec made a batch under 200 bytes"
    );
    let stored = read_all(&log);
    assert_eq!(stored[0].value.as_deref().map(<[u8]>::len), Some(100_000));
    // The bound is never below max.message.bytes.
    log.set_config(LogConfig {
        max_message_bytes: 200_000,
        decompressed_batch_max_bytes: 1_000,
        ..LogConfig::default()
    });
    let mut large = batch_with(Compression::Zstd, &[(Some(b"k"), Some(&zeros))], 0);
    log.append_as_leader(&mut large, 0).unwrap();
}

#[test]
fn follower_appends_keep_leader_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut leader = open(&dir.path().join("leader"), LogConfig::default(), &clock);
    let mut follower = open(&dir.path().join("follower"), LogConfig::default(), &clock);
    for i in 0..5 {
        leader
            .append_as_leader(&mut numbered(i * 3, 3, 10, 0), 4)
            .unwrap();
    }
    let bytes = leader.read(0, 1 << 20, None, true).unwrap().unwrap();
    let info = follower.append_as_follower(&bytes).unwrap();
    assert_eq!((info.first_offset, info.last_offset), (0, 14));
    assert_eq!(read_all(&follower), read_all(&leader));
    // Replaying the same batches would go backwards.
    assert!(matches!(
        follower.append_as_follower(&bytes),
        Err(LogError::NonMonotonicOffset { .. })
    ));
}

#[test]
fn log_append_time_is_stamped_by_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(5_555);
    let mut config = LogConfig::default();
    config
        .set("message.timestamp.type", "LogAppendTime")
        .unwrap();
    let mut log = open(dir.path(), config, &clock);
    let info = log.append_as_leader(&mut numbered(0, 3, 10, 1), 0).unwrap();
    assert_eq!(info.log_append_time, Some(5_555));
    assert!(read_all(&log).iter().all(|r| r.timestamp == 5_555));
}

#[test]
fn truncation() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), small_config(), &clock);
    for i in 0..30 {
        log.append_as_leader(&mut numbered(i * 5, 5, 100, 0), 0)
            .unwrap();
    }
    log.truncate_to(102).unwrap();
    assert_eq!(
        log.log_end_offset(),
        100,
        "cut at the batch boundary at or below the target"
    );
    assert_eq!(read_all(&log).len(), 100);
    log.append_as_leader(&mut numbered(0, 1, 10, 0), 0).unwrap();
    assert_eq!(log.log_end_offset(), 101);
    log.truncate_fully_and_start_at(500).unwrap();
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (500, 500));
    assert!(read_all(&log).is_empty());
    log.append_as_leader(&mut numbered(0, 2, 10, 0), 0).unwrap();
    assert_eq!(
        read_all(&log).iter().map(|r| r.offset).collect::<Vec<_>>(),
        [500, 501]
    );
    // Finished restarts leave nothing for the next open to redo.
    log.flush().unwrap();
    drop(log);
    let log = open(dir.path(), small_config(), &clock);
    assert_eq!(
        read_all(&log).iter().map(|r| r.offset).collect::<Vec<_>>(),
        [500, 501]
    );
}

#[test]
fn group_commit_makes_appends_durable_with_shared_fsyncs() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let log = std::sync::Arc::new(std::sync::Mutex::new(open(
        dir.path(),
        LogConfig::default(),
        &clock,
    )));
    let threads: Vec<_> = (0..4)
        .map(|t| {
            let log = std::sync::Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let mut b = numbered(t * 1000 + i, 1, 100, 0);
                    let (end, gc) = {
                        let mut log = log.lock().unwrap();
                        let info = log.append_as_leader(&mut b, 0).unwrap();
                        (info.last_offset + 1, log.group_commit())
                    };
                    gc.wait_durable(end).unwrap();
                    assert!(gc.durable_offset() >= end);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let log = log.lock().unwrap();
    assert_eq!(log.log_end_offset(), 200);
    let syncs = log.group_commit().sync_count();
    assert!((1..=200).contains(&syncs), "{syncs} fsyncs for 200 appends");
}

#[test]
fn timestamps_far_from_the_clock_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(10_000_000);
    let mut config = LogConfig::default();
    config
        .set("message.timestamp.before.max.ms", "60000")
        .unwrap();
    config
        .set("message.timestamp.after.max.ms", "1000")
        .unwrap();
    let mut log = open(dir.path(), config, &clock);
    let err = log
        .append_as_leader(&mut numbered(0, 1, 10, 10_000_000 - 60_001), 0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::InvalidTimestamp {
                direction: "before",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(err.error_code(), rill_protocol::ErrorCode::InvalidTimestamp);
    let err = log
        .append_as_leader(&mut numbered(0, 1, 10, 10_001_001), 0)
        .unwrap_err();
    assert!(
        matches!(
            err,
            LogError::InvalidTimestamp {
                direction: "after",
                ..
            }
        ),
        "{err}"
    );
    log.append_as_leader(&mut numbered(0, 1, 10, 10_000_500), 0)
        .unwrap();
    assert_eq!(log.log_end_offset(), 1, "only the valid batch was written");
}

#[test]
fn leader_epochs_are_tracked_truncated_and_survive_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    for (epoch, n) in [(0, 3), (0, 2), (2, 4), (5, 1)] {
        log.append_as_leader(&mut numbered(0, n, 10, 0), epoch)
            .unwrap();
    }
    // Offsets: epoch 0 → 0..5, epoch 2 → 5..9, epoch 5 → 9.
    assert_eq!(log.latest_epoch(), Some(5));
    assert_eq!(log.end_offset_for_epoch(0), Some((0, 5)));
    assert_eq!(log.end_offset_for_epoch(1), Some((0, 5)));
    assert_eq!(log.end_offset_for_epoch(3), Some((2, 9)));
    assert_eq!(log.end_offset_for_epoch(7), Some((5, 10)));

    // A follower copying these batches learns the same history from their headers.
    let mut follower = open(&dir.path().join("follower"), LogConfig::default(), &clock);
    follower
        .append_as_follower(&log.read(0, 1 << 20, None, true).unwrap().unwrap())
        .unwrap();
    assert_eq!(follower.leader_epochs(), log.leader_epochs());

    // Truncation forgets the epochs that started after the cut.
    log.truncate_to(9).unwrap();
    assert_eq!(log.latest_epoch(), Some(2));
    assert_eq!(log.end_offset_for_epoch(9), Some((2, 9)));
    // Cutting inside epoch 2's only batch removes that batch, and the epoch with it.
    log.truncate_to(7).unwrap();
    assert_eq!(log.log_end_offset(), 5);
    assert_eq!(log.latest_epoch(), Some(0));
    log.append_as_leader(&mut numbered(0, 1, 10, 0), 6).unwrap();
    log.write_out().unwrap();
    drop(log);

    // Reopened (crash): the checkpoint agrees with the recovered log.
    let log = reopen(dir.path(), LogConfig::default(), &clock, false, 0);
    assert_eq!(log.latest_epoch(), Some(6));
    assert_eq!(log.end_offset_for_epoch(2), Some((0, 5)));
    assert_eq!(log.end_offset_for_epoch(6), Some((6, 6)));
    drop(log);
    // A lost checkpoint is rebuilt from the batch headers.
    std::fs::remove_file(dir.path().join(rill_storage::LEADER_EPOCH_CHECKPOINT)).unwrap();
    let log = reopen(dir.path(), LogConfig::default(), &clock, false, 0);
    assert_eq!(log.end_offset_for_epoch(0), Some((0, 5)));
    assert_eq!(log.latest_epoch(), Some(6));
}

/// Length of a segment's `.log` file on disk.
fn file_len(dir: &std::path::Path, base: i64) -> u64 {
    std::fs::metadata(dir.join(format!("{base:020}.log")))
        .unwrap()
        .len()
}

/// Waits (up to 10 s) for the preallocation thread to have written zeros past the data.
fn wait_for_zeros(dir: &std::path::Path, base: i64, data: u64) -> u64 {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let len = file_len(dir, base);
        if len > data {
            return len;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no zeros were written ahead of {data} bytes"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

#[test]
fn preallocation_writes_zeros_ahead_and_cuts_them_at_roll_and_close() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    assert_eq!(file_len(dir.path(), 0), 0, "an idle log writes no zeros");
    log.append_as_leader(&mut numbered(0, 10, 100, 1_000), 0)
        .unwrap();
    log.flush().unwrap();
    let data = log.size_bytes();
    let len = wait_for_zeros(dir.path(), 0, data);
    let bytes = std::fs::read(dir.path().join(format!("{:020}.log", 0))).unwrap();
    assert!(
        bytes[data as usize..].iter().all(|&b| b == 0),
        "only zeros past the data"
    );
    assert!(len - data <= 2 << 20, "{} bytes ahead", len - data);
    // Appends overwrite the zeros and read back as usual.
    log.append_as_leader(&mut numbered(10, 10, 100, 1_000), 0)
        .unwrap();
    assert_eq!(read_all(&log).len(), 20);
    // A rolled segment ends at its last batch.
    let first_size = log.size_bytes();
    log.roll().unwrap();
    assert_eq!(file_len(dir.path(), 0), first_size);
    log.append_as_leader(&mut numbered(20, 5, 100, 1_000), 0)
        .unwrap();
    log.flush().unwrap();
    wait_for_zeros(dir.path(), 20, log.size_bytes() - first_size);
    // So does the active one after close; a clean reopen finds exactly the data.
    log.close().unwrap();
    let active = log.size_bytes() - first_size;
    assert_eq!(file_len(dir.path(), 20), active);
    drop(log);
    let mut log = reopen(dir.path(), LogConfig::default(), &clock, true, 25);
    assert_eq!(read_all(&log).len(), 25);
    log.append_as_leader(&mut numbered(25, 1, 100, 1_000), 0)
        .unwrap();
    assert_eq!(log.log_end_offset(), 26);
}

#[test]
fn a_crash_with_zeros_ahead_loses_nothing_and_cuts_the_zeros() {
    for clean in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000);
        let mut log = open(dir.path(), LogConfig::default(), &clock);
        log.append_as_leader(&mut numbered(0, 10, 100, 1_000), 0)
            .unwrap();
        log.flush().unwrap();
        let data = log.size_bytes();
        let records = read_all(&log);
        wait_for_zeros(dir.path(), 0, data);
        // A crash: no close. (`clean`: reopened as if the shutdown had been clean, which must
        // not let the next append land after the zeros either.)
        drop(log);
        let mut log = reopen(dir.path(), LogConfig::default(), &clock, clean, 0);
        assert_eq!(read_all(&log), records, "clean={clean}");
        assert_eq!(log.size_bytes(), data);
        assert_eq!(file_len(dir.path(), 0), data, "clean={clean}");
        log.append_as_leader(&mut numbered(10, 3, 100, 1_000), 0)
            .unwrap();
        log.close().unwrap();
        drop(log);
        let log = reopen(dir.path(), LogConfig::default(), &clock, true, 13);
        assert_eq!(read_all(&log).len(), 13, "clean={clean}");
    }
}

#[test]
fn preallocate_false_writes_no_zeros() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let config = LogConfig::from_entries([("preallocate", "false")]).unwrap();
    let mut log = open(dir.path(), config.clone(), &clock);
    for i in 0..20 {
        log.append_as_leader(&mut numbered(i * 10, 10, 100, 1_000), 0)
            .unwrap();
        log.flush().unwrap();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert_eq!(file_len(dir.path(), 0), log.size_bytes());
    // Turned on by a config change, it starts with the next append.
    log.set_config(LogConfig::default());
    log.append_as_leader(&mut numbered(200, 1, 100, 1_000), 0)
        .unwrap();
    log.flush().unwrap();
    wait_for_zeros(dir.path(), 0, log.size_bytes());
    assert!(LogConfig::from_entries([("preallocate", "maybe")]).is_err());
}

/// `read_cached` answers from the page cache and refuses, having read nothing, when the data
/// is not there; `read` then reads it (and brings it back into the cache).
#[test]
fn read_cached_reads_only_what_the_page_cache_holds() {
    use std::os::fd::AsRawFd;
    // Not tmpfs: the data must be able to leave the page cache.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    {
        // A file system that cannot read without waiting (tmpfs says EOPNOTSUPP) has nothing
        // to test here: every `read_cached` there is refused.
        let probe = dir.path().join("probe");
        std::fs::write(&probe, b"x").unwrap();
        let f = std::fs::File::open(&probe).unwrap();
        let mut byte = 0u8;
        let iov = libc::iovec {
            iov_base: (&raw mut byte).cast(),
            iov_len: 1,
        };
        let n = unsafe { libc::preadv2(f.as_raw_fd(), &iov, 1, 0, libc::RWF_NOWAIT) };
        if n < 0 {
            eprintln!(
                "skipped: RWF_NOWAIT not supported under {}: {}",
                dir.path().display(),
                std::io::Error::last_os_error()
            );
            return;
        }
        std::fs::remove_file(&probe).unwrap();
    }
    let clock = ManualClock::new(0);
    // No zeros written ahead: that thread holds the segment while it writes them.
    let config = LogConfig {
        preallocate: false,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    for i in 0..20 {
        log.append_as_leader(&mut numbered(i * 10, 10, 1_000, 0), 0)
            .unwrap();
    }
    log.flush().unwrap();
    let cached = log
        .read_cached(50, 1 << 20, None, true, &mut { usize::MAX })
        .unwrap()
        .unwrap();
    assert_eq!(cached, log.read(50, 1 << 20, None, true).unwrap().unwrap());
    assert!(
        log.read_cached(200, 1 << 20, None, true, &mut { usize::MAX })
            .unwrap()
            .is_none()
    );
    // Drop the segment's (clean, fsynced) pages from the page cache. The kernel may keep a
    // page another CPU has just queued for its LRU lists, so drop them again until none is left.
    let mut evicted = false;
    for _ in 0..50 {
        for entry in std::fs::read_dir(dir.path()).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "log") {
                let f = std::fs::File::open(&path).unwrap();
                let rc =
                    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
                assert_eq!(rc, 0);
            }
        }
        if matches!(
            log.read_cached(50, 1 << 20, None, true, &mut { usize::MAX }),
            Err(LogError::WouldBlock)
        ) {
            evicted = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(evicted, "data not in the page cache is not waited for");
    let read = log.read(50, 1 << 20, None, true).unwrap().unwrap();
    assert_eq!(read, cached);
    assert_eq!(
        log.read_cached(50, 1 << 20, None, true, &mut { usize::MAX })
            .unwrap()
            .unwrap(),
        cached,
        "read back into the cache"
    );
    assert!(
        matches!(
            log.read_cached(50, 1 << 20, None, true, &mut 1_000),
            Err(LogError::WouldBlock)
        ),
        "a copy over the budget is left to a read that may wait"
    );
    let mut budget = 1 << 20;
    let read = log
        .read_cached(50, 5_000, None, true, &mut budget)
        .unwrap()
        .unwrap();
    assert!(
        budget <= (1 << 20) - read.len(),
        "the bytes copied are taken from the budget: {budget} left after {}",
        read.len()
    );
}

/// The time index keeps its last slot for the segment's final max timestamp (Kafka's
/// `TimeIndex.isFull`): a segment whose indexes filled in the middle of an append still
/// reopens knowing its newest timestamp, for time lookups and `retention.ms`.
#[test]
fn a_full_time_index_still_gets_the_final_max_timestamp() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    // 6 time entries, 8 offset entries; every batch indexed.
    let config = LogConfig {
        segment_index_bytes: 96,
        index_interval_bytes: 0,
        ..LogConfig::default()
    };
    let t = 1_000_000;
    let mut log = open(dir.path(), config.clone(), &clock);
    let stamps = [1, 2, 3, 4, 5, 6, 7, 100, 8, 9];
    let mut bytes = Vec::new();
    for (i, s) in stamps.iter().enumerate() {
        bytes.extend(numbered(i, 1, 10, t + s));
    }
    log.append_as_leader(&mut bytes, 0).unwrap();
    assert_eq!(log.segments().len(), 1);
    log.close().unwrap();
    let log = reopen(dir.path(), config, &clock, true, 10);
    assert_eq!(log.segments()[0].max_timestamp, t + 100);
    assert_eq!(
        log.offset_for_timestamp(t + 50).unwrap(),
        Some((7, t + 100))
    );
}

/// `segment.ms` for a segment whose first batch has no timestamp (-1) counts from when the
/// segment was made, as Kafka's `timeWaitedForRoll` does: not from -1 (a roll after the first
/// batch with a real timestamp), and not never (a segment of such batches rolls too).
#[test]
fn segments_without_a_first_timestamp_roll_by_the_clock() {
    let dir = tempfile::tempdir().unwrap();
    let now = 1_700_000_000_000;
    let clock = ManualClock::new(now);
    let config = LogConfig {
        segment_ms: 3_600_000,
        message_timestamp_missing_allowed: true,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    log.append_as_leader(&mut numbered(0, 1, 10, -1), 0)
        .unwrap();
    log.append_as_leader(&mut numbered(1, 1, 10, now), 0)
        .unwrap();
    assert_eq!(
        log.segments().len(),
        1,
        "a real timestamp after -1 is no age"
    );
    clock.advance(3_600_001);
    log.append_as_leader(&mut numbered(2, 1, 10, -1), 0)
        .unwrap();
    assert_eq!(log.segments().len(), 2, "an hour on the clock is");
    log.append_as_leader(&mut numbered(3, 1, 10, -1), 0)
        .unwrap();
    clock.advance(3_600_001);
    log.append_as_leader(&mut numbered(4, 1, 10, -1), 0)
        .unwrap();
    assert_eq!(log.segments().len(), 3, "a segment of -1 batches rolls too");
}
