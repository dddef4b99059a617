//! A broker's logs across several log dirs: placement, checkpoints, clean and unclean restarts.

mod common;

use std::sync::Arc;

use common::*;
use rill_storage::{
    CLEAN_SHUTDOWN_FILE, CLEANER_CHECKPOINT, CleanerConfig, CleanupPolicy, LogConfig, LogManager,
    ManualClock, OffsetCheckpointFile, RECOVERY_POINT_CHECKPOINT, SharedLog, TopicPartition,
};

fn manager(dirs: &[std::path::PathBuf], clock: &ManualClock) -> LogManager {
    LogManager::open(
        dirs.to_vec(),
        1,
        &LogConfig::default(),
        CleanerConfig::default(),
        Arc::new(clock.clone()),
    )
    .unwrap()
}

/// Appends `batch` and waits for group commit's fsync, as an acknowledged produce does.
fn append_acknowledged(log: &SharedLog, mut batch: Vec<u8>) {
    let end = {
        let mut log = log.write();
        log.append_as_leader(&mut batch, 0).unwrap();
        log.log_end_offset()
    };
    let commit = log.read().group_commit();
    commit.wait_durable(end).unwrap();
}

#[test]
fn logs_spread_over_dirs_and_survive_restarts() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a"), root.path().join("b")];
    let clock = ManualClock::new(0);
    let m = manager(&dirs, &clock);
    let tps: Vec<TopicPartition> = (0..4)
        .map(|p| TopicPartition::new("orders.v1-eu", p))
        .collect();
    for (i, tp) in tps.iter().enumerate() {
        let log = m.get_or_create(tp, LogConfig::default()).unwrap();
        log.write()
            .append_as_leader(&mut numbered(0, i + 1, 20, 0), 0)
            .unwrap();
    }
    for dir in &dirs {
        let n = std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().path().is_dir())
            .count();
        assert_eq!(n, 2, "two partitions per dir");
    }
    m.flush_all().unwrap();
    let mut checkpointed = 0;
    for dir in &dirs {
        let cp = OffsetCheckpointFile::new(dir.join(RECOVERY_POINT_CHECKPOINT))
            .read()
            .unwrap();
        checkpointed += cp.len();
        for (name, offset) in cp {
            let p: usize = name.rsplit_once('-').unwrap().1.parse().unwrap();
            assert_eq!(offset, p as i64 + 1, "{name}");
        }
    }
    assert_eq!(checkpointed, 4);

    // Clean restart.
    m.shutdown().unwrap();
    assert!(dirs.iter().all(|d| d.join(CLEAN_SHUTDOWN_FILE).exists()));
    drop(m);
    let m = manager(&dirs, &clock);
    assert!(
        dirs.iter().all(|d| !d.join(CLEAN_SHUTDOWN_FILE).exists()),
        "the marker is consumed"
    );
    assert_eq!(m.partitions(), tps);
    for (i, tp) in tps.iter().enumerate() {
        assert_eq!(m.get(tp).unwrap().read().log_end_offset(), i as i64 + 1);
    }

    // Crash: unflushed appends, then a torn tail in one partition.
    let len = {
        let log = m.get(&tps[3]).unwrap();
        let mut log = log.write();
        log.append_as_leader(&mut numbered(10, 3, 20, 0), 0)
            .unwrap();
        // In the page cache (what a broker does before acknowledging), but never fsynced.
        log.write_out().unwrap();
        // Where the data ends (the file may go on with zeros written ahead, `preallocate`).
        log.size_bytes()
    };
    let dir3 = m.get(&tps[3]).unwrap().read().dir().to_owned();
    drop(m);
    let seg = dir3.join("00000000000000000000.log");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&seg)
        .unwrap()
        .set_len(len - 5)
        .unwrap();
    let m = manager(&dirs, &clock);
    let log = m.get(&tps[3]).unwrap();
    assert_eq!(
        log.read().log_end_offset(),
        4,
        "the torn batch is dropped, the flushed data kept"
    );
    assert_eq!(read_all(&log.read()).len(), 4);

    // Deletion removes the data.
    assert!(m.delete(&tps[0]).unwrap());
    assert!(m.get(&tps[0]).is_none());
    assert!(
        !dirs
            .iter()
            .any(|d| d.join(rill_storage::partition_dir_name(&tps[0])).exists())
    );
}

#[test]
fn retention_and_cleaner_passes_run_across_logs() {
    let root = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let m = manager(&[root.path().to_owned()], &clock);
    let small = LogConfig {
        segment_bytes: 1024,
        retention_ms: 1000,
        ..LogConfig::default()
    };
    let compacted = LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        ..small.clone()
    };
    let deleting = m
        .get_or_create(&TopicPartition::new("events", 0), small)
        .unwrap();
    let compacting = m
        .get_or_create(&TopicPartition::new("profiles", 0), compacted)
        .unwrap();
    for i in 0..20 {
        let same_key = batch(
            &[(Some(b"user-1"), Some(format!("v{i}").repeat(40).as_bytes()))],
            0,
        );
        deleting
            .write()
            .append_as_leader(&mut numbered(i, 1, 300, 0), 0)
            .unwrap();
        compacting
            .write()
            .append_as_leader(&mut same_key.clone(), 0)
            .unwrap();
    }
    clock.advance(10_000);
    let deleted = m.run_retention(|_| i64::MAX).unwrap();
    assert!(deleted > 3);
    assert!(deleting.read().log_start_offset() > 0);
    assert_eq!(
        compacting.read().log_start_offset(),
        0,
        "compact-only logs keep old segments"
    );
    assert_eq!(m.run_cleaner(|_| i64::MAX).unwrap(), 1);
    let recs = read_all(&compacting.read());
    assert!(
        recs.len() < 5,
        "{} records left after compaction",
        recs.len()
    );
    assert_eq!(
        recs.last().unwrap().value.as_deref(),
        Some(b"v19".repeat(40).as_slice())
    );
}

/// The cleaner and retention run on their own threads while producers append, logs are set
/// aside and deleted, and the manager shuts down (each holds a log only to plan, swap or
/// delete): nothing deadlocks, retention deletes only whole old segments, no key's latest value
/// is lost, and the logs reopen to what they held.
#[test]
fn cleaning_and_retention_run_beside_appends_deletions_and_shutdown() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a")];
    let clock = ManualClock::new(0);
    let m = Arc::new(manager(&dirs, &clock));
    let small = LogConfig {
        segment_bytes: 4096,
        index_interval_bytes: 256,
        ..LogConfig::default()
    };
    let compacted = LogConfig {
        cleanup_policy: CleanupPolicy::COMPACT,
        min_cleanable_dirty_ratio: 0.01,
        ..small.clone()
    };
    let deleting = LogConfig {
        retention_bytes: 16 << 10,
        ..small.clone()
    };
    let tps: Vec<TopicPartition> = (0..3).map(|p| TopicPartition::new("profiles", p)).collect();
    for tp in &tps {
        m.get_or_create(tp, compacted.clone()).unwrap();
    }
    let events = TopicPartition::new("events", 0);
    m.get_or_create(&events, deleting).unwrap();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let background: Vec<_> = (0..2)
        .map(|which| {
            let (m, stop) = (Arc::clone(&m), Arc::clone(&stop));
            std::thread::spawn(move || {
                let mut passes = 0;
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    if which == 0 {
                        m.run_cleaner(|_| i64::MAX).unwrap();
                    } else {
                        m.run_retention(|_| i64::MAX).unwrap();
                    }
                    passes += 1;
                }
                passes
            })
        })
        .collect();
    // Latest value written per (partition, key); a log set aside and one deleted meanwhile.
    let mut latest = std::collections::HashMap::new();
    for round in 0..600usize {
        let tp = &tps[round % 3];
        let key = format!("user-{}", round % 17);
        let value = format!("v{round}-").repeat(20);
        if let Some(log) = m.get(tp) {
            log.write()
                .append_as_leader(
                    &mut batch(&[(Some(key.as_bytes()), Some(value.as_bytes()))], 0),
                    0,
                )
                .unwrap();
            latest.insert((tp.clone(), key), value);
        }
        m.get(&events)
            .unwrap()
            .write()
            .append_as_leader(&mut numbered(round, 1, 200, 0), 0)
            .unwrap();
        if round == 300 {
            let aside = m.set_aside(&tps[2], "stray").unwrap().unwrap();
            assert!(aside.exists());
            latest.retain(|(t, _), _| *t != tps[2]);
        }
        if round == 400 {
            let tp = TopicPartition::new("to-delete", 0);
            let log = m.get_or_create(&tp, compacted.clone()).unwrap();
            for i in 0..50 {
                log.write()
                    .append_as_leader(&mut numbered(i % 5, 1, 200, 0), 0)
                    .unwrap();
            }
            drop(log);
            assert!(m.delete(&tp).unwrap());
        }
    }
    // Shut down while the cleaner and retention still run: they stop touching the logs.
    m.shutdown().unwrap();
    stop.store(true, std::sync::atomic::Ordering::Release);
    for t in background {
        assert!(t.join().unwrap() > 0);
    }
    drop(m);
    let m = manager(&dirs, &clock);
    for ((tp, key), value) in &latest {
        let recs = read_all(&m.get(tp).unwrap().read());
        let last = recs
            .iter()
            .rfind(|r| r.key.as_deref() == Some(key.as_bytes()))
            .unwrap_or_else(|| panic!("{tp} {key} lost"));
        assert_eq!(last.value.as_deref(), Some(value.as_bytes()), "{tp} {key}");
    }
    let events = m.get(&events).unwrap();
    let events = events.read();
    assert!(events.log_start_offset() > 0, "retention deleted nothing");
    let kept: Vec<i64> = read_all(&events).iter().map(|r| r.offset).collect();
    let expected: Vec<i64> = (events.log_start_offset()..600).collect();
    assert_eq!(kept, expected, "retention left a hole");
    assert!(m.get(&TopicPartition::new("to-delete", 0)).is_none());
    assert!(m.get(&tps[2]).is_none());
    for entry in std::fs::read_dir(&dirs[0]).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        assert!(!name.starts_with("to-delete"), "{name} left behind");
    }
}

/// Runs `test` with a plain power cut, then with reordered ones (see
/// `fault::power_cut_reordered`): what must survive survives either way.
fn for_every_cut(test: impl Fn(Option<u64>)) {
    test(None);
    for seed in 1..=4 {
        test(Some(seed));
    }
}

fn power_cut(root: &std::path::Path, cut: Option<u64>) {
    match cut {
        None => rill_storage::fault::power_cut(root).unwrap(),
        Some(seed) => rill_storage::fault::power_cut_reordered(root, seed).unwrap(),
    };
}

/// After a clean shutdown and a restart, the clean-shutdown marker is consumed; a power cut
/// later must not bring it back, or the next start would trust logs (their ends, their zeros
/// written ahead) that were never closed.
#[test]
fn a_power_cut_after_a_clean_restart_is_recovered_as_a_crash() {
    for_every_cut(a_power_cut_after_a_clean_restart_is_recovered_as_a_crash_with);
}

fn a_power_cut_after_a_clean_restart_is_recovered_as_a_crash_with(cut: Option<u64>) {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a")];
    std::fs::create_dir_all(&dirs[0]).unwrap();
    let _tracking = rill_storage::fault::track_power_cuts(root.path());
    let clock = ManualClock::new(0);
    let tp = TopicPartition::new("orders", 0);
    let m = manager(&dirs, &clock);
    let log = m.get_or_create(&tp, LogConfig::default()).unwrap();
    log.write()
        .append_as_leader(&mut numbered(0, 3, 20, 0), 0)
        .unwrap();
    drop(log);
    m.shutdown().unwrap();
    drop(m);

    let m = manager(&dirs, &clock);
    let log = m.get(&tp).unwrap();
    // Acknowledged as a produce is: after group commit's fsync.
    append_acknowledged(&log, numbered(3, 2, 20, 0));
    drop(log);
    drop(m);
    power_cut(root.path(), cut);
    assert!(
        !dirs[0].join(CLEAN_SHUTDOWN_FILE).exists(),
        "the consumed clean-shutdown marker came back"
    );

    let m = manager(&dirs, &clock);
    let log = m.get(&tp).unwrap();
    assert_eq!(log.read().log_end_offset(), 5);
    log.write()
        .append_as_leader(&mut numbered(5, 1, 20, 0), 0)
        .unwrap();
    let records = read_all(&log.read());
    assert_eq!(records.len(), 6, "{records:?}");
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, r)| r.offset == i as i64)
    );
}

/// Partitions created, written and acknowledged, another set aside for deletion, then a
/// power cut: every acknowledged record is there after the restart, each new partition
/// directory with it, and the partition set aside does not come back.
#[test]
fn new_and_deleted_partitions_survive_a_power_cut_as_acknowledged() {
    for_every_cut(new_and_deleted_partitions_survive_a_power_cut_as_acknowledged_with);
}

fn new_and_deleted_partitions_survive_a_power_cut_as_acknowledged_with(cut: Option<u64>) {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a"), root.path().join("b")];
    let _tracking = rill_storage::fault::track_power_cuts(root.path());
    let clock = ManualClock::new(0);
    let m = manager(&dirs, &clock);
    let tps: Vec<TopicPartition> = (0..4).map(|p| TopicPartition::new("events", p)).collect();
    for (i, tp) in tps.iter().enumerate() {
        let log = m.get_or_create(tp, LogConfig::default()).unwrap();
        append_acknowledged(&log, numbered(0, i + 1, 20, 0));
    }
    let aside = m.set_aside(&tps[0], "delete").unwrap().unwrap();
    drop(m);
    power_cut(root.path(), cut);

    assert!(aside.exists(), "set aside durably, not removed yet");
    let m = manager(&dirs, &clock);
    assert_eq!(m.partitions(), tps[1..].to_vec());
    for (i, tp) in tps.iter().enumerate().skip(1) {
        let log = m.get(tp).unwrap();
        assert_eq!(read_all(&log.read()).len(), i + 1, "{tp}");
    }
}

/// A log dir that exists at start but whose own entry was never made durable (a `mkdir -p`
/// before the first start, or a run killed before its fsync): the records acknowledged in it
/// survive a power cut.
#[test]
fn an_existing_log_dir_is_made_durable_at_start() {
    for_every_cut(an_existing_log_dir_is_made_durable_at_start_with);
}

fn an_existing_log_dir_is_made_durable_at_start_with(cut: Option<u64>) {
    let root = tempfile::tempdir().unwrap();
    let _tracking = rill_storage::fault::track_power_cuts(root.path());
    let dirs = vec![root.path().join("logs")];
    std::fs::create_dir(&dirs[0]).unwrap();
    let clock = ManualClock::new(0);
    let m = manager(&dirs, &clock);
    let tp = TopicPartition::new("orders", 0);
    let log = m.get_or_create(&tp, LogConfig::default()).unwrap();
    append_acknowledged(&log, numbered(0, 3, 20, 0));
    drop(log);
    drop(m);
    power_cut(root.path(), cut);

    let m = manager(&dirs, &clock);
    assert_eq!(read_all(&m.get(&tp).unwrap().read()).len(), 3);
}

/// After shutdown (logs closed, clean-shutdown marker written) a late write — a request that
/// was already on its way — is refused, so the marker never vouches for data written after it.
#[test]
fn writes_after_shutdown_are_refused() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a")];
    let clock = ManualClock::new(0);
    let m = manager(&dirs, &clock);
    let tp = TopicPartition::new("orders", 0);
    let log = m.get_or_create(&tp, LogConfig::default()).unwrap();
    log.write()
        .append_as_leader(&mut numbered(0, 2, 20, 0), 0)
        .unwrap();
    m.shutdown().unwrap();
    let late = log.write().append_as_leader(&mut numbered(2, 1, 20, 0), 0);
    let err = late.unwrap_err();
    assert!(
        matches!(err, rill_storage::LogError::Closed { .. }),
        "{err}"
    );
    assert_eq!(
        err.error_code(),
        rill_protocol::ErrorCode::NotLeaderOrFollower
    );
    assert!(log.write().roll().is_err());
    drop(log);
    drop(m);
    let m = manager(&dirs, &clock);
    assert_eq!(m.get(&tp).unwrap().read().log_end_offset(), 2);
}

/// After shutdown no log is created (it would not be closed, yet its dir carries the
/// clean-shutdown marker, so the next start would skip its recovery) and none is set aside.
#[test]
fn no_log_is_created_or_set_aside_after_shutdown() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a")];
    let clock = ManualClock::new(0);
    let m = manager(&dirs, &clock);
    let kept = TopicPartition::new("orders", 0);
    m.get_or_create(&kept, LogConfig::default()).unwrap();
    m.shutdown().unwrap();
    let late = TopicPartition::new("orders", 1);
    let err = m.get_or_create(&late, LogConfig::default()).unwrap_err();
    assert!(
        matches!(err, rill_storage::LogError::Closed { .. }),
        "{err}"
    );
    assert!(m.get(&late).is_none());
    assert!(!dirs[0].join("orders-1").exists(), "no directory was made");
    let err = m.set_aside(&kept, "delete").unwrap_err();
    assert!(
        matches!(err, rill_storage::LogError::Closed { .. }),
        "{err}"
    );
    assert!(
        dirs[0].join("orders-0").exists(),
        "the log stays as shut down"
    );
    drop(m);
    let m = manager(&dirs, &clock);
    assert_eq!(m.partitions(), vec![kept]);
}

/// A partition set aside and created again (its topic deleted and re-created, its replica
/// moved away and back) starts over in the log dir's checkpoints: after a crash the new log
/// must not take the old one's cleaner checkpoint (its records would count as compacted and
/// never be) nor its recovery point.
#[test]
fn a_recreated_partition_does_not_inherit_the_old_checkpoints() {
    let root = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().join("a")];
    let clock = ManualClock::new(0);
    let m = manager(&dirs, &clock);
    let tp = TopicPartition::new("events", 0);
    let compacted = LogConfig {
        segment_bytes: 512,
        cleanup_policy: CleanupPolicy::COMPACT,
        ..LogConfig::default()
    };
    let log = m.get_or_create(&tp, compacted.clone()).unwrap();
    for i in 0..10 {
        append_acknowledged(&log, numbered(i * 20, 20, 20, 0));
    }
    log.write().set_cleaner_checkpoint(150);
    m.checkpoint().unwrap();
    m.set_aside(&tp, "delete").unwrap().unwrap();
    let log = m.get_or_create(&tp, compacted).unwrap();
    for i in 0..6 {
        append_acknowledged(&log, numbered(i * 5, 5, 20, 0));
        log.write().roll().unwrap();
    }
    assert_eq!(log.read().log_end_offset(), 30);
    for file in [RECOVERY_POINT_CHECKPOINT, CLEANER_CHECKPOINT] {
        let entries = OffsetCheckpointFile::new(dirs[0].join(file))
            .read()
            .unwrap();
        assert!(
            entries.get("events-0").is_none_or(|&o| o <= 30),
            "{file}: {entries:?}"
        );
    }
    drop(log);
    drop(m);

    let m = manager(&dirs, &clock);
    let log = m.get(&tp).unwrap();
    let log = log.read();
    assert_eq!(log.cleaner_checkpoint(), 0, "never cleaned");
    let records = read_all(&log);
    assert_eq!(records.len(), 30);
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.offset, i as i64);
    }
}

/// A second manager on log dirs another one holds is refused, naming the dir (Kafka's
/// `lockLogDirs`): it would recover and cut files the first is writing. Once the first is
/// gone, the dirs open again.
#[test]
fn a_second_manager_on_the_same_dirs_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let dirs = vec![tmp.path().join("a"), tmp.path().join("b")];
    let first = manager(&dirs, &clock);
    let e = match LogManager::open(
        vec![tmp.path().join("c"), dirs[1].clone()],
        1,
        &LogConfig::default(),
        CleanerConfig::default(),
        Arc::new(clock.clone()),
    ) {
        Err(e) => e,
        Ok(_) => panic!("a second manager opened dirs in use"),
    };
    assert!(e.to_string().contains(".lock"), "{e}");
    assert!(
        e.to_string().contains(&dirs[1].display().to_string()),
        "{e}"
    );
    first.shutdown().unwrap();
    drop(first);
    let again = manager(&dirs, &clock);
    again.shutdown().unwrap();
}

/// A failed log dir is left as it is at shutdown (no clean marker: recovered next start), while
/// the healthy ones close cleanly, with their checkpoints and marker (Kafka closes the dirs
/// still online).
#[test]
fn shutdown_closes_the_healthy_dirs_and_leaves_a_failed_one_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let dirs = vec![tmp.path().join("a"), tmp.path().join("b")];
    let logs = manager(&dirs, &clock);
    let mut per_dir = std::collections::BTreeMap::new();
    for p in 0..8 {
        let tp = TopicPartition::new("t", p);
        let log = logs.get_or_create(&tp, LogConfig::default()).unwrap();
        append_acknowledged(&log, numbered(0, 1, 10, 0));
        per_dir.entry(logs.log_dir_of(&tp).unwrap()).or_insert(tp);
    }
    assert_eq!(per_dir.len(), 2, "logs in both dirs");
    logs.shutdown_except(&[dirs[0].clone()]).unwrap();
    assert!(!dirs[0].join(".rill_clean_shutdown").exists());
    assert!(dirs[1].join(".rill_clean_shutdown").exists());
    let checkpoint =
        std::fs::read_to_string(dirs[1].join("recovery-point-offset-checkpoint")).unwrap();
    assert!(checkpoint.contains("t-"), "{checkpoint}");
}

/// Every dir is claimed for the node (`meta.properties`); dirs of two clusters, or of another
/// node, are refused before a log is opened; the cluster is recorded once, then checked.
#[test]
fn log_dirs_are_claimed_for_one_node_of_one_cluster() {
    let tmp = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let dirs = vec![tmp.path().join("a"), tmp.path().join("b")];
    let m = manager(&dirs, &clock);
    assert_eq!(m.cluster_id(), None);
    m.set_cluster_id("c1").unwrap();
    m.set_cluster_id("c1").unwrap();
    let e = m.set_cluster_id("c2").unwrap_err();
    assert!(
        matches!(e, rill_storage::LogError::ForeignLogDir { .. }),
        "{e}"
    );
    m.shutdown().unwrap();
    drop(m);
    for d in &dirs {
        let meta = rill_storage::MetaProperties::read(d).unwrap().unwrap();
        assert_eq!((meta.node_id, meta.cluster_id.as_deref()), (1, Some("c1")));
    }
    // A dir added to log.dirs since belongs to the same cluster.
    let grown = [dirs.clone(), vec![tmp.path().join("d")]].concat();
    assert_eq!(manager(&grown, &clock).cluster_id().as_deref(), Some("c1"));
    let added = rill_storage::MetaProperties::read(&grown[2])
        .unwrap()
        .unwrap();
    assert_eq!(added.cluster_id.as_deref(), Some("c1"));

    let open = |dirs: Vec<std::path::PathBuf>, node| {
        LogManager::open(
            dirs,
            node,
            &LogConfig::default(),
            CleanerConfig::default(),
            Arc::new(clock.clone()),
        )
    };
    let Err(e) = open(dirs.clone(), 2) else {
        panic!("another node's dirs opened")
    };
    assert!(e.to_string().contains("belongs to node.id 1"), "{e}");
    let mut other = rill_storage::MetaProperties::new(1);
    other.cluster_id = Some("c9".into());
    let c = tmp.path().join("c");
    std::fs::create_dir_all(&c).unwrap();
    other.write(&c).unwrap();
    let Err(e) = open(vec![dirs[0].clone(), c], 1) else {
        panic!("dirs of two clusters opened")
    };
    assert!(
        e.to_string().contains("c9") && e.to_string().contains("c1"),
        "{e}"
    );
}
