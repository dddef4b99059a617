//! Retention by time and by size, driven by an injected clock.

mod common;

use common::*;
use rill_storage::{CleanupPolicy, LogConfig, LogError, ManualClock};

const HOUR: i64 = 3_600_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        retention_ms: 24 * HOUR,
        ..LogConfig::default()
    }
}

/// Appends one ~1 KiB batch per hour for `hours` hours, records stamped with the clock.
fn fill(log: &mut rill_storage::Log, clock: &ManualClock, hours: usize) {
    for i in 0..hours {
        log.append_as_leader(&mut numbered(i, 1, 900, clock.now_ms()), 0)
            .unwrap();
        clock.advance(HOUR);
    }
}

use rill_storage::Clock;

#[test]
fn segments_older_than_retention_ms_are_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(100 * HOUR);
    let mut log = open(dir.path(), config(), &clock);
    fill(&mut log, &clock, 48);
    let before = log.segments();
    assert!(before.len() >= 20);
    let deleted = log.delete_old_segments(log.log_end_offset()).unwrap();
    assert!(!deleted.is_empty());
    let now = clock.now_ms();
    for s in &deleted {
        assert!(now - s.max_timestamp > 24 * HOUR, "{s:?} was not expired");
    }
    for s in log.segments() {
        assert!(
            now - s.max_timestamp <= 24 * HOUR || s.size_bytes == 0,
            "{s:?} should be gone"
        );
    }
    assert_eq!(log.log_start_offset(), log.segments()[0].base_offset);
    assert!(matches!(
        log.read(0, 100, None, true),
        Err(LogError::OffsetOutOfRange { .. })
    ));
    // No file of a deleted segment is left behind.
    for s in &deleted {
        let prefix = format!("{:020}.", s.base_offset);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
            .collect();
        assert!(left.is_empty());
    }
    // Reopening sees the same log.
    let start = log.log_start_offset();
    log.close().unwrap();
    drop(log);
    let log = reopen(dir.path(), config(), &clock, true, 0);
    assert_eq!(log.log_start_offset(), start);
}

#[test]
fn an_expired_active_segment_is_rolled_and_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), LogConfig::default(), &clock);
    log.append_as_leader(&mut numbered(0, 5, 10, 0), 0).unwrap();
    clock.advance(8 * 24 * HOUR);
    let deleted = log.delete_old_segments(5).unwrap();
    assert_eq!(deleted.len(), 1);
    assert_eq!((log.log_start_offset(), log.log_end_offset()), (5, 5));
    log.append_as_leader(&mut numbered(5, 1, 10, clock.now_ms()), 0)
        .unwrap();
    assert_eq!(read_all(&log)[0].offset, 5);
}

#[test]
fn retention_bytes_deletes_the_oldest_segments() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let config = LogConfig {
        segment_bytes: 2048,
        retention_ms: -1,
        retention_bytes: 6 * 1024,
        ..LogConfig::default()
    };
    let mut log = open(dir.path(), config, &clock);
    fill(&mut log, &clock, 30);
    let total = log.size_bytes();
    assert!(total > 12 * 1024);
    log.delete_old_segments(log.log_end_offset()).unwrap();
    assert!(
        log.size_bytes() <= 6 * 1024 + 2048,
        "{} bytes left",
        log.size_bytes()
    );
    assert!(log.size_bytes() >= 6 * 1024 - 2048);
    assert_eq!(
        read_all(&log).last().unwrap().offset,
        29,
        "the newest data stays"
    );
}

#[test]
fn nothing_above_the_high_watermark_or_without_delete_policy_is_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    fill(&mut log, &clock, 48);
    clock.advance(1000 * HOUR);
    assert!(
        log.delete_old_segments(0).unwrap().is_empty(),
        "high watermark 0 protects everything"
    );
    let segs = log.segments();
    let bound = segs[3].next_offset;
    let deleted = log.delete_old_segments(bound).unwrap();
    assert_eq!(deleted.len(), 4);
    assert_eq!(log.log_start_offset(), bound);

    let mut forever = config();
    forever.retention_ms = -1;
    log.set_config(forever);
    assert!(log.delete_old_segments(i64::MAX).unwrap().is_empty());

    log.set_config(LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        ..config()
    });
    assert!(log.delete_old_segments(i64::MAX).unwrap().is_empty());
}

/// A segment whose records carry no timestamp (-1) is aged by its file's modification time (as
/// Kafka does), not taken for infinitely old; the active segment is not deleted at once.
#[test]
fn segments_without_timestamps_age_by_modification_time() {
    let dir = tempfile::tempdir().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    let clock = ManualClock::new(now);
    let mut log = open(dir.path(), config(), &clock);
    // Followers copy whatever the leader stored: -1 timestamps included.
    let b = batch(&[(Some(b"k".as_slice()), Some(b"v".as_slice()))], -1);
    log.append_as_follower(&b).unwrap();
    assert_eq!(log.segments()[0].max_timestamp, -1);
    assert!(
        log.delete_old_segments(log.log_end_offset())
            .unwrap()
            .is_empty()
    );
    clock.advance(2 * 24 * HOUR);
    assert_eq!(
        log.delete_old_segments(log.log_end_offset()).unwrap().len(),
        1
    );
}

#[test]
fn produced_records_without_timestamp_are_refused_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(100 * HOUR);
    let mut log = open(dir.path(), config(), &clock);
    let no_ts = || batch(&[(Some(b"k".as_slice()), Some(b"v".as_slice()))], -1);
    let err = log.append_as_leader(&mut no_ts(), 0).unwrap_err();
    assert!(matches!(err, LogError::MissingTimestamp { .. }), "{err}");
    assert_eq!(err.error_code(), rill_protocol::ErrorCode::InvalidTimestamp);
    assert!(
        err.to_string()
            .contains("message.timestamp.missing.allowed"),
        "{err}"
    );
    assert_eq!(log.log_end_offset(), 0);
    let mut allowing = config();
    allowing
        .set("message.timestamp.missing.allowed", "true")
        .unwrap();
    log.set_config(allowing);
    log.append_as_leader(&mut no_ts(), 0).unwrap();
    assert_eq!(log.log_end_offset(), 1);
}
