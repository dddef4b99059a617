//! Idempotent producer state (KIP-98) in the log: duplicates answered with their original
//! offsets, gaps and fenced epochs refused with nothing written, and the state surviving clean
//! reopens, crashes, power cuts, truncation and retention.

mod common;

use common::*;
use rill_protocol::ErrorCode;
use rill_protocol::record_batch::{Compression, RecordBatchBuilder};
use rill_storage::fault;
use rill_storage::{Log, LogError, ManualClock, snapshot_path};

const T0: i64 = 1_000_000;

/// A producer batch of `n` records with values `v<seq>` where seq is the record's sequence.
fn pbatch(pid: i64, epoch: i16, seq: i32, n: i32) -> Vec<u8> {
    let mut b = RecordBatchBuilder::new(Compression::None).producer(pid, epoch, seq);
    for i in 0..n {
        let v = format!("p{pid}e{epoch}s{}", seq + i);
        b.append(T0 + i64::from(i), None, Some(v.as_bytes()), &[]);
    }
    b.build().unwrap().to_vec()
}

fn append(log: &mut Log, batch: &[u8]) -> Result<rill_storage::LogAppendInfo, LogError> {
    let mut bytes = batch.to_vec();
    log.append_as_leader(&mut bytes, 0)
}

fn values(log: &Log) -> Vec<String> {
    read_all(log)
        .into_iter()
        .map(|r| String::from_utf8(r.value.unwrap()).unwrap())
        .collect()
}

#[test]
fn a_duplicate_returns_the_original_offsets_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_config(), &clock);
    let first = pbatch(7, 0, 0, 3);
    let info = append(&mut log, &first).unwrap();
    assert_eq!(
        (info.first_offset, info.last_offset, info.duplicate),
        (0, 2, false)
    );
    append(&mut log, &batch(&[(None, Some(b"plain"))], T0)).unwrap();
    let second = pbatch(7, 0, 3, 2);
    assert_eq!(append(&mut log, &second).unwrap().first_offset, 4);
    let end = log.log_end_offset();

    for (b, expected) in [(&first, (0, 2)), (&second, (4, 5))] {
        let dup = append(&mut log, b).unwrap();
        assert!(dup.duplicate, "a retry must be recognised");
        assert_eq!((dup.first_offset, dup.last_offset), expected);
        assert_eq!((dup.record_count, dup.size_bytes), (0, 0));
    }
    assert_eq!(log.log_end_offset(), end, "a duplicate wrote something");
    assert_eq!(
        values(&log),
        ["p7e0s0", "p7e0s1", "p7e0s2", "plain", "p7e0s3", "p7e0s4"]
    );
}

#[test]
fn gaps_stale_epochs_and_unknown_producers_are_refused_with_nothing_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_config(), &clock);
    append(&mut log, &pbatch(1, 0, 0, 2)).unwrap();
    let end = log.log_end_offset();
    let refused = |log: &mut Log, b: Vec<u8>, code: ErrorCode| {
        let e = append(log, &b).unwrap_err();
        assert_eq!(e.error_code(), code, "{e}");
        assert_eq!(
            log.log_end_offset(),
            end,
            "a refused batch was written: {e}"
        );
    };
    // A gap: sequence 3 after 0..=1.
    refused(
        &mut log,
        pbatch(1, 0, 3, 1),
        ErrorCode::OutOfOrderSequenceNumber,
    );
    // A valid batch after a gap in the same append: the whole append is refused.
    let mut both = pbatch(1, 0, 2, 1);
    both.extend(pbatch(1, 0, 4, 1));
    refused(&mut log, both, ErrorCode::OutOfOrderSequenceNumber);
    // A new epoch must start at 0.
    refused(
        &mut log,
        pbatch(1, 1, 2, 1),
        ErrorCode::OutOfOrderSequenceNumber,
    );
    // An unknown producer must start at 0.
    refused(&mut log, pbatch(2, 0, 5, 1), ErrorCode::UnknownProducerId);
    // A valid non-idempotent batch does not carry an invalid idempotent one.
    let mut mixed = batch(&[(None, Some(b"plain"))], T0);
    mixed.extend(pbatch(1, 0, 9, 1));
    refused(&mut log, mixed, ErrorCode::OutOfOrderSequenceNumber);

    // The bumped epoch starts at 0; after it the old epoch is fenced.
    append(&mut log, &pbatch(1, 1, 0, 1)).unwrap();
    let end = log.log_end_offset();
    let e = append(&mut log, &pbatch(1, 0, 2, 1)).unwrap_err();
    assert!(
        matches!(
            e,
            LogError::InvalidProducerEpoch {
                current_epoch: 1,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(e.error_code(), ErrorCode::InvalidProducerEpoch);
    assert_eq!(log.log_end_offset(), end);
    assert_eq!(values(&log), ["p1e0s0", "p1e0s1", "p1e1s0"]);
}

/// Appends producer 9's batches of 10 records, sequences `from..to` step 10, rolling every three.
fn fill(log: &mut Log, from: i32, to: i32) {
    for (i, seq) in (from..to).step_by(10).enumerate() {
        append(log, &pbatch(9, 0, seq, 10)).unwrap();
        if i % 3 == 2 {
            log.roll().unwrap();
        }
    }
}

/// The producer's state is what it was: the last batch is a duplicate at `offset`, the next
/// sequence `next` is accepted.
fn check_state(log: &mut Log, last_seq_start: i32, offset: i64, next: i32) {
    let dup = append(log, &pbatch(9, 0, last_seq_start, 10)).unwrap();
    assert!(dup.duplicate, "the last batch must be a duplicate");
    assert_eq!(dup.first_offset, offset);
    let info = append(log, &pbatch(9, 0, next, 10)).unwrap();
    assert!(!info.duplicate);
}

#[test]
fn the_state_survives_a_clean_reopen_from_its_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 0, 100);
    assert!(
        !log.producer_state().snapshot_offsets().is_empty(),
        "rolls take snapshots"
    );
    let end = log.log_end_offset();
    log.close().unwrap();
    drop(log);
    assert!(
        snapshot_path(dir.path(), end).exists(),
        "close snapshots at the log end"
    );
    let mut log = reopen(dir.path(), small_config(), &clock, true, end);
    assert!(
        log.producer_state().snapshot_offsets().len() <= 3,
        "old snapshots are pruned"
    );
    check_state(&mut log, 90, 90, 100);
}

#[test]
fn the_state_is_rebuilt_after_a_crash_and_without_any_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 0, 100);
    log.write_out().unwrap();
    let rp = log.recovery_point();
    drop(log); // a process crash: no close, no final snapshot
    let mut log = reopen(dir.path(), small_config(), &clock, false, rp);
    check_state(&mut log, 90, 90, 100);
    log.write_out().unwrap();
    let rp = log.recovery_point();
    drop(log);

    // Without any snapshot the whole log is replayed.
    for o in 0..=200 {
        let _ = std::fs::remove_file(snapshot_path(dir.path(), o));
    }
    let mut log = reopen(dir.path(), small_config(), &clock, false, rp);
    check_state(&mut log, 100, 100, 110);
}

#[test]
fn after_a_power_cut_lost_batches_are_not_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let _tracking = fault::track_power_cuts(dir.path());
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 0, 50);
    log.group_commit()
        .wait_durable(log.log_end_offset())
        .unwrap();
    let durable = log.log_end_offset();
    // Acknowledged under an interval flush policy only: written out, never fsynced.
    append(&mut log, &pbatch(9, 0, 50, 10)).unwrap();
    log.write_out().unwrap();
    let rp = log.recovery_point();
    drop(log);
    fault::power_cut(dir.path()).unwrap();
    let mut log = reopen(dir.path(), small_config(), &clock, false, rp);
    assert_eq!(log.log_end_offset(), durable, "the unsynced batch is gone");
    // The producer's retry of the lost batch is written again, not answered as a duplicate.
    let info = append(&mut log, &pbatch(9, 0, 50, 10)).unwrap();
    assert!(
        !info.duplicate,
        "a batch lost in the power cut was taken for a duplicate"
    );
    assert_eq!(info.first_offset, durable);
    check_state(&mut log, 50, durable, 60);
}

#[test]
fn truncation_rebuilds_the_state_of_what_is_left() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_config(), &clock);
    fill(&mut log, 0, 100);
    let snapshots = log.producer_state().snapshot_offsets();
    // Cut below the newest snapshot: it must go, and batches ≥ the cut are no longer known.
    let cut = 55;
    log.truncate_to(cut).unwrap();
    assert!(log.log_end_offset() <= cut);
    let end = log.log_end_offset();
    assert!(
        log.producer_state()
            .snapshot_offsets()
            .iter()
            .all(|&o| o <= end),
        "snapshots past the cut survived: {snapshots:?} → {:?}",
        log.producer_state().snapshot_offsets()
    );
    let last = (end as i32) - 10;
    // The batch at the new end is not a duplicate any more (its retry is written again) and
    // the next one is out of order until it is.
    let e = append(&mut log, &pbatch(9, 0, last + 20, 10)).unwrap_err();
    assert_eq!(e.error_code(), ErrorCode::OutOfOrderSequenceNumber);
    check_state(&mut log, last, end - 10, last + 10);
    // And after a reopen.
    log.close().unwrap();
    drop(log);
    let mut log = reopen(dir.path(), small_config(), &clock, true, 0);
    check_state(&mut log, last + 10, end, last + 20);
}

#[test]
fn a_follower_copies_the_state_and_detects_duplicates_once_leader() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut leader = open(&dir.path().join("leader"), small_config(), &clock);
    let mut follower = open(&dir.path().join("follower"), small_config(), &clock);
    for seq in [0, 10, 20] {
        append(&mut leader, &pbatch(4, 2, seq, 10)).unwrap();
    }
    let bytes = leader.read(0, 1 << 20, None, true).unwrap().unwrap();
    follower.append_as_follower(&bytes).unwrap();
    // The new leader answers the producer's retry with the original offsets.
    let dup = append(&mut follower, &pbatch(4, 2, 20, 10)).unwrap();
    assert!(dup.duplicate);
    assert_eq!((dup.first_offset, dup.last_offset), (20, 29));
    let e = append(&mut follower, &pbatch(4, 1, 30, 10)).unwrap_err();
    assert_eq!(e.error_code(), ErrorCode::InvalidProducerEpoch);
}

/// Retention deleting a producer's batches does not forget the producer (KAFKA-7190): the retry
/// of a batch written and then deleted (its answer lost, the producer retrying after a
/// failover) is a duplicate, not a second copy. Only `producer.id.expiration.ms` forgets.
#[test]
fn retention_keeps_producers_and_expiry_forgets_them() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut config = small_config();
    config.retention_ms = 1000;
    let mut log = open(dir.path(), config, &clock);
    append(&mut log, &pbatch(1, 0, 0, 10)).unwrap();
    log.roll().unwrap();
    append(&mut log, &pbatch(2, 0, 0, 10)).unwrap();
    // Producer 1's only segment expires by retention; producer 2's segment is active.
    clock.set(T0 + 5000);
    append(&mut log, &batch(&[(None, Some(b"fresh"))], T0 + 5000)).unwrap();
    assert_eq!(log.delete_old_segments(10).unwrap().len(), 1);
    assert_eq!(log.log_start_offset(), 10);
    assert!(log.producer_state().entry(1).is_some());
    let retry = append(&mut log, &pbatch(1, 0, 0, 10)).unwrap();
    assert!(
        retry.duplicate,
        "the deleted batch's retry is not written again"
    );
    assert_eq!((retry.first_offset, retry.last_offset), (0, 9));
    assert!(!append(&mut log, &pbatch(1, 0, 10, 1)).unwrap().duplicate);
    // Still known after a clean reopen (its snapshot keeps it).
    let end = log.log_end_offset();
    log.close().unwrap();
    drop(log);
    let mut config = small_config();
    config.retention_ms = 1000;
    let mut log = reopen(dir.path(), config, &clock, true, end);
    assert!(append(&mut log, &pbatch(1, 0, 0, 10)).unwrap().duplicate);

    // producer.id.expiration.ms: idle producers are forgotten.
    log.set_producer_id_expiration_ms(60_000);
    clock.set(T0 + 5000 + 60_000);
    let e = append(&mut log, &pbatch(2, 0, 10, 1)).unwrap_err();
    assert_eq!(e.error_code(), ErrorCode::UnknownProducerId);
    // A new epoch at 0 starts again.
    assert!(!append(&mut log, &pbatch(2, 1, 0, 1)).unwrap().duplicate);
    log.remove_expired_producers();
    assert!(log.producer_state().entry(2).is_some(), "just written");
}

/// A reopened log keeps producers that the configured `producer.id.expiration.ms` keeps, even
/// if idle longer than the default (one day) it is opened with before the broker sets it.
#[test]
fn a_reopen_keeps_producers_the_configured_expiration_keeps() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let mut log = open(dir.path(), small_config(), &clock);
    let week = 7 * 24 * 3600 * 1000;
    log.set_producer_id_expiration_ms(week);
    append(&mut log, &pbatch(3, 0, 0, 10)).unwrap();
    let end = log.log_end_offset();
    log.close().unwrap();
    drop(log);
    clock.set(T0 + 2 * 24 * 3600 * 1000);
    let mut log = reopen(dir.path(), small_config(), &clock, true, end);
    log.set_producer_id_expiration_ms(week);
    log.remove_expired_producers();
    assert!(log.producer_state().entry(3).is_some());
    assert!(append(&mut log, &pbatch(3, 0, 0, 10)).unwrap().duplicate);
}

/// Compaction keeps each producer's last batch, empty if all its records were superseded
/// (Kafka's `RETAIN_EMPTY`): a replica that rebuilds producer state from the log (a new
/// follower copying it, a restart without snapshots) still knows the producer's last sequence,
/// so the producer's retry of that batch is a duplicate there too, and its next batch follows.
#[test]
fn compaction_keeps_each_producers_last_batch() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(T0);
    let config = || rill_storage::LogConfig {
        cleanup_policy: rill_storage::CleanupPolicy::COMPACT,
        ..small_config()
    };
    let mut log = open(&dir.path().join("leader"), config(), &clock);
    let keyed = |pid: i64, seq: i32, keys: &[&str]| {
        let mut b = RecordBatchBuilder::new(Compression::None).producer(pid, 0, seq);
        for k in keys {
            b.append(T0, Some(k.as_bytes()), Some(b"value"), &[]);
        }
        b.build().unwrap().to_vec()
    };
    // Producer 5 writes k0 and k1 twice; producer 6 then overwrites both, many times.
    append(&mut log, &keyed(5, 0, &["k0", "k1"])).unwrap();
    append(&mut log, &keyed(5, 2, &["k0", "k1"])).unwrap();
    for seq in 0..100 {
        append(&mut log, &keyed(6, seq * 2, &["k0", "k1"])).unwrap();
    }
    log.roll().unwrap();
    append(&mut log, &keyed(6, 200, &["k2"])).unwrap();
    let end = log.log_end_offset();
    log.clean(end, &rill_storage::CleanerConfig::default())
        .unwrap()
        .unwrap();
    assert!(
        read_all(&log).iter().all(|r| r.offset > 3),
        "producer 5's records are all superseded"
    );
    // A follower copying the compacted log from its start.
    let mut follower = open(&dir.path().join("follower"), config(), &clock);
    let mut from = 0;
    while let Some(bytes) = log.read(from, 1 << 20, None, true).unwrap() {
        follower.append_as_follower(&bytes).unwrap();
        from = follower.log_end_offset();
        if from >= end {
            break;
        }
    }
    let entry = follower
        .producer_state()
        .entry(5)
        .expect("producer 5 is known to the follower");
    assert_eq!(entry.last_offset(), Some(3));
    let retry = append(&mut follower, &keyed(5, 2, &["k0", "k1"])).unwrap();
    assert!(
        retry.duplicate,
        "the retry of its last batch is a duplicate"
    );
    assert!(
        !append(&mut follower, &keyed(5, 4, &["k9"]))
            .unwrap()
            .duplicate
    );

    // The kept batch keeps its times; once producer 5 wrote again it is not needed any more.
    let headers = |log: &Log| -> Vec<rill_protocol::record_batch::BatchHeader> {
        let bytes = log.read(0, 1 << 20, None, true).unwrap().unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        while at < bytes.len() {
            let h = rill_protocol::record_batch::BatchHeader::decode(&bytes[at..]).unwrap();
            at += h.total_size();
            out.push(h);
        }
        out
    };
    let kept = headers(&log)
        .into_iter()
        .find(|h| h.producer_id == 5)
        .expect("producer 5's last batch is kept");
    assert_eq!((kept.base_offset, kept.record_count), (2, 0));
    assert_eq!(kept.max_timestamp, T0, "its time is the batch's");
    append(&mut log, &keyed(5, 4, &["k9"])).unwrap();
    log.roll().unwrap();
    append(&mut log, &keyed(6, 201, &["k2"])).unwrap();
    log.clean(
        log.log_end_offset(),
        &rill_storage::CleanerConfig::default(),
    )
    .unwrap()
    .unwrap();
    assert!(
        !headers(&log)
            .iter()
            .any(|h| h.producer_id == 5 && h.record_count == 0),
        "the emptied batch went once it was no longer producer 5's last"
    );
}
