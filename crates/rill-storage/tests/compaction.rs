//! Log compaction checked against a model: the latest record per key survives with its offset,
//! tombstones live `delete.retention.ms` after the first pass that keeps them, and a crash in any
//! phase of the segment swap recovers to a consistent log.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use proptest::prelude::*;
use rill_storage::{CleanerConfig, CleanupPolicy, Log, LogConfig, ManualClock};

const DAY: i64 = 24 * 3_600_000;

fn config() -> LogConfig {
    LogConfig {
        segment_bytes: 2048,
        index_interval_bytes: 128,
        cleanup_policy: CleanupPolicy::COMPACT,
        ..LogConfig::default()
    }
}

/// One produced record: key index, value (None = tombstone).
type Op = (u8, Option<u16>);

fn append_ops(log: &mut Log, ops: &[Op], per_batch: usize) {
    for chunk in ops.chunks(per_batch) {
        let keys: Vec<Vec<u8>> = chunk
            .iter()
            .map(|(k, _)| format!("k{k}").into_bytes())
            .collect();
        let values: Vec<Option<Vec<u8>>> = chunk
            .iter()
            .map(|(_, v)| v.map(|v| format!("value-{v}-padding-padding").into_bytes()))
            .collect();
        let recs: Vec<Kv<'_>> = keys
            .iter()
            .zip(&values)
            .map(|(k, v)| (Some(k.as_slice()), v.as_deref()))
            .collect();
        log.append_as_leader(&mut batch(&recs, 0), 0).unwrap();
    }
}

/// Checks the compaction invariants of `after` against the uncompacted `before`:
/// every surviving record is the original record at its offset; offsets increase; in the
/// cleaned range no superseded record survives; every key's latest record of the cleaned range
/// survives unless it is a tombstone the rules allow to drop; the rest is untouched.
fn check(before: &[Rec], after: &[Rec], cleaned_up_to: i64, tombstones_may_go: bool) {
    let by_offset: HashMap<i64, &Rec> = before.iter().map(|r| (r.offset, r)).collect();
    // The cleaner judges by the latest record within the range it cleaned.
    let mut latest: HashMap<&Option<Vec<u8>>, i64> = HashMap::new();
    for r in before.iter().filter(|r| r.offset < cleaned_up_to) {
        latest.insert(&r.key, r.offset);
    }
    for w in after.windows(2) {
        assert!(w[0].offset < w[1].offset, "offsets must increase");
    }
    for r in after {
        assert_eq!(
            by_offset.get(&r.offset),
            Some(&r),
            "record at {} changed",
            r.offset
        );
        if r.offset < cleaned_up_to {
            assert_eq!(
                latest[&r.key], r.offset,
                "superseded record {} survived",
                r.offset
            );
        }
    }
    let present: std::collections::HashSet<i64> = after.iter().map(|r| r.offset).collect();
    for (&key, &offset) in &latest {
        let rec = by_offset[&offset];
        let droppable = tombstones_may_go && rec.value.is_none() && offset < cleaned_up_to;
        assert!(
            present.contains(&offset) || droppable,
            "latest record of {key:?} at {offset} lost"
        );
    }
    // Records past the cleaned range are untouched.
    let tail_before: Vec<&Rec> = before
        .iter()
        .filter(|r| r.offset >= cleaned_up_to)
        .collect();
    let tail_after: Vec<&Rec> = after.iter().filter(|r| r.offset >= cleaned_up_to).collect();
    assert_eq!(tail_before, tail_after);
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        (0u8..20, prop::option::weighted(0.85, any::<u16>())),
        50..400,
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    #[test]
    fn compaction_matches_the_model(ops in ops(), per_batch in 1usize..8) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let mut log = open(dir.path(), config(), &clock);
        append_ops(&mut log, &ops, per_batch);
        let before = read_all(&log);
        let end = log.log_end_offset();
        let stats = log.clean(end, &CleanerConfig::default()).unwrap();
        let after = read_all(&log);
        if let Some(stats) = stats {
            check(&before, &after, stats.cleaned_up_to, false);
            // Tombstones survive until delete.retention.ms has passed since that pass...
            clock.advance(DAY / 2);
            log.clean(end, &CleanerConfig::default()).unwrap();
            let still = read_all(&log);
            check(&before, &still, stats.cleaned_up_to, false);
            // ... and are gone after it.
            clock.advance(DAY);
            log.clean(end, &CleanerConfig::default()).unwrap();
            let later = read_all(&log);
            check(&before, &later, stats.cleaned_up_to, true);
            prop_assert!(later.iter().all(|r| r.value.is_some() || r.offset >= stats.cleaned_up_to));
            // A reopened log reads the same.
            log.close().unwrap();
            drop(log);
            let reopened = reopen(dir.path(), config(), &clock, false, 0);
            prop_assert_eq!(read_all(&reopened), later);
        } else {
            prop_assert_eq!(before, after);
        }
    }
}

#[test]
fn latest_value_per_key_survives_and_offsets_are_kept() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    // The seed's example: key1, key2, key1, key2 → keep offsets 2 and 3.
    let ops: Vec<Op> = (0..200).map(|i| ((i % 2) as u8, Some(i as u16))).collect();
    append_ops(&mut log, &ops, 4);
    log.append_as_leader(&mut numbered(0, 1, 10, 0), 0).unwrap(); // key-0 keeps the active segment busy
    let before_segments = log.segments().len();
    assert!(before_segments > 3);
    assert!(log.needs_cleaning());
    let stats = log
        .clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap()
        .unwrap();
    assert!(stats.records_superseded > 150);
    // Segments are grouped by their size before a pass (as Kafka does), so the segments this
    // pass shrank are merged by the next one.
    log.clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap()
        .unwrap();
    assert!(
        log.segments().len() < before_segments,
        "small cleaned segments are merged"
    );
    let after = read_all(&log);
    let cleaned: Vec<_> = after
        .iter()
        .filter(|r| r.offset < stats.cleaned_up_to)
        .collect();
    assert_eq!(cleaned.len(), 2);
    assert!(cleaned.iter().all(|r| r.offset >= 190), "{cleaned:?}");
    assert!(!log.needs_cleaning());
    assert_eq!(log.dirty_ratio(), 0.0);
}

#[test]
fn a_tombstone_lives_delete_retention_ms_then_goes() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), config(), &clock);
    let mut ops: Vec<Op> = (0..60).map(|i| ((i % 3) as u8, Some(i as u16))).collect();
    ops.push((1, None)); // delete k1
    ops.extend((0..40).map(|i| (5u8, Some(i as u16))));
    append_ops(&mut log, &ops, 5);
    let end = log.log_end_offset();
    let cfg = CleanerConfig::default();
    log.clean(end, &cfg).unwrap().unwrap();
    let k1: Vec<Rec> = read_all(&log)
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(b"k1"))
        .collect();
    assert_eq!(k1.len(), 1, "only the tombstone remains for k1");
    assert_eq!(k1[0].value, None);
    clock.advance(DAY - 1);
    log.clean(end, &cfg).unwrap();
    assert!(
        read_all(&log)
            .iter()
            .any(|r| r.key.as_deref() == Some(b"k1"))
    );
    clock.advance(2);
    let stats = log.clean(end, &cfg).unwrap().unwrap();
    assert_eq!(stats.tombstones_removed, 1);
    assert!(
        read_all(&log)
            .iter()
            .all(|r| r.key.as_deref() != Some(b"k1"))
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

fn bases(dir: &Path) -> Vec<i64> {
    let mut v: Vec<i64> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(|e| {
            let n = e.unwrap().file_name().to_string_lossy().into_owned();
            n.strip_suffix(".log").and_then(|s| s.parse().ok())
        })
        .collect();
    v.sort();
    v
}

/// A named crash state: how to damage a copy of the original log directory.
type Phase<'a> = (&'static str, Box<dyn Fn(&Path) + 'a>);

/// A crash in each phase of the swap: before the swap file exists, with the swap file and all
/// old segments, with some old segments already removed, and after the rename (no indexes).
#[test]
fn a_crash_in_each_phase_of_the_swap_recovers_consistently() {
    let clock = ManualClock::new(0);
    let original = tempfile::tempdir().unwrap();
    let mut log = open(original.path(), config(), &clock);
    let ops: Vec<Op> = (0..300).map(|i| ((i % 7) as u8, Some(i as u16))).collect();
    append_ops(&mut log, &ops, 3);
    // A first pass shrinks the segments; new records then supersede some keys, and the second
    // pass (below) both drops records and merges several segments into one.
    log.clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap()
        .unwrap();
    let more: Vec<Op> = (0..60)
        .map(|i| ((i % 4) as u8, Some(1000 + i as u16)))
        .collect();
    append_ops(&mut log, &more, 3);
    log.close().unwrap();
    let before = read_all(&log);
    drop(log);
    let old_bases = bases(original.path());

    let cleaned = tempfile::tempdir().unwrap();
    copy_dir(original.path(), cleaned.path());
    let mut log = reopen(cleaned.path(), config(), &clock, true, 0);
    let stats = log
        .clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap()
        .unwrap();
    let expected = read_all(&log);
    log.close().unwrap();
    drop(log);
    let new_bases = bases(cleaned.path());
    let group_base = new_bases[0];
    let group_end = new_bases.get(1).copied().unwrap_or(i64::MAX);
    let replaced: Vec<i64> = old_bases
        .iter()
        .copied()
        .filter(|b| *b >= group_base && *b < group_end)
        .collect();
    assert!(
        replaced.len() > 1,
        "the first cleaned segment replaces several"
    );
    let cleaned_first =
        std::fs::read(cleaned.path().join(format!("{group_base:020}.log"))).unwrap();

    let phases: Vec<Phase<'_>> = vec![
        (
            "cleaned file written, not yet swapped",
            Box::new(|d: &Path| {
                std::fs::write(
                    d.join(format!("{group_base:020}.log.cleaned")),
                    &cleaned_first,
                )
                .unwrap();
            }),
        ),
        (
            "swap file present, old segments intact",
            Box::new(|d: &Path| {
                std::fs::write(d.join(format!("{group_base:020}.log.swap")), &cleaned_first)
                    .unwrap();
            }),
        ),
        (
            "swap file present, some old segments deleted",
            Box::new(|d: &Path| {
                std::fs::write(d.join(format!("{group_base:020}.log.swap")), &cleaned_first)
                    .unwrap();
                for b in replaced.iter().skip(1).take(2) {
                    std::fs::rename(
                        d.join(format!("{b:020}.log")),
                        d.join(format!("{b:020}.log.deleted")),
                    )
                    .unwrap();
                }
            }),
        ),
        (
            "swapped, old segments gone, indexes not yet written",
            Box::new(|d: &Path| {
                for b in &replaced {
                    for s in ["log", "index", "timeindex"] {
                        let _ = std::fs::remove_file(d.join(format!("{b:020}.{s}")));
                    }
                }
                std::fs::write(d.join(format!("{group_base:020}.log")), &cleaned_first).unwrap();
            }),
        ),
    ];
    for (name, setup) in phases {
        let dir = tempfile::tempdir().unwrap();
        copy_dir(original.path(), dir.path());
        setup(dir.path());
        let log = reopen(dir.path(), config(), &clock, false, 0);
        let recovered = read_all(&log);
        if name.starts_with("cleaned file") {
            assert_eq!(
                recovered, before,
                "{name}: the old segments are still the log"
            );
        } else {
            let part = |recs: &[Rec], first: bool| -> Vec<Rec> {
                recs.iter()
                    .filter(|r| (r.offset < group_end) == first)
                    .cloned()
                    .collect()
            };
            assert_eq!(
                part(&recovered, true),
                part(&expected, true),
                "{name}: the swap completed"
            );
            assert_eq!(
                part(&recovered, false),
                part(&before, false),
                "{name}: the rest is untouched"
            );
            assert!(
                part(&recovered, true).len() < part(&before, true).len(),
                "the swap dropped records"
            );
        }
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".swap") || n.contains(".cleaned") || n.contains(".deleted"))
            .collect();
        assert!(leftovers.is_empty(), "{name}: {leftovers:?}");
    }
    assert!(stats.records_superseded > 0);
}

/// Files of the cleaner's output left in `dir` (a pass thrown away must leave none).
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".cleaned") || n.ends_with(".swap") || n.ends_with(".deleted"))
        .collect()
}

/// Runs a planned pass as `LogManager` does (building without the log, each group swapped in
/// as soon as it is built, the swap finished after), calling `meanwhile` with the log between
/// the steps: 0 before the offset map, then 1 before the first group is built, 2 before it is
/// swapped in, 3 before its swap is finished, 4 before the second group is built, and so on.
fn run_pass(
    log: &mut Log,
    mut pass: rill_storage::CleaningPass,
    mut meanwhile: impl FnMut(&mut Log, usize),
) -> Option<rill_storage::CleanerStats> {
    meanwhile(log, 0);
    if let Err(e) = pass.build_map() {
        log.abandon_cleaning(&pass, e).unwrap();
        return None;
    }
    let mut step = 1;
    loop {
        meanwhile(log, step);
        step += 1;
        match pass.build_next_group() {
            None => break,
            Some(Ok(group)) => {
                meanwhile(log, step);
                step += 1;
                let swapped = log.swap_cleaned_group(&mut pass, group).unwrap();
                meanwhile(log, step);
                step += 1;
                swapped.finish().unwrap();
            }
            Some(Err(e)) => {
                log.abandon_cleaning(&pass, e).unwrap();
                return None;
            }
        }
    }
    log.finish_cleaning(&pass)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(16))]

    /// A pass is built without the log, so the log appends (and rolls) between its steps: the
    /// records appended meanwhile are all there after the swaps, untouched, and the cleaned
    /// range matches the model.
    #[test]
    fn a_pass_built_between_appends_swaps_in_and_keeps_the_new_records(
        ops in ops(),
        during in ops(),
        per_batch in 1usize..8,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(0);
        let mut log = open(dir.path(), config(), &clock);
        append_ops(&mut log, &ops, per_batch);
        let Some(pass) = log.plan_cleaning(log.log_end_offset(), &CleanerConfig::default()) else {
            return Ok(());
        };
        let mut uncleaned = read_all(&log);
        let mut chunks = during.chunks(during.len() / 4 + 1);
        let stats = run_pass(&mut log, pass, |log, _| {
            if let Some(chunk) = chunks.next() {
                let end = log.log_end_offset();
                append_ops(log, chunk, per_batch);
                uncleaned.extend(read_all(log).into_iter().filter(|r| r.offset >= end));
            }
        })
        .unwrap();
        let end = log.log_end_offset();
        let after = read_all(&log);
        check(&uncleaned, &after, stats.cleaned_up_to, false);
        prop_assert!(after.iter().any(|r| r.offset >= end - 1));
        prop_assert!(leftovers(dir.path()).is_empty(), "{:?}", leftovers(dir.path()));
        let segments = log.segments();
        // (The active segment's indexes are written when it is flushed or rolled.)
        for s in &segments[..segments.len() - 1] {
            for suffix in ["index", "timeindex"] {
                let index = dir.path().join(format!("{:020}.{suffix}", s.base_offset));
                prop_assert!(index.exists(), "{} missing", index.display());
            }
        }
        log.close().unwrap();
        drop(log);
        prop_assert_eq!(read_all(&reopen(dir.path(), config(), &clock, false, 0)), after);
    }
}

/// A truncation while a pass runs (a follower cutting a diverged tail) may cut the files the
/// pass reads: nothing of the pass goes in after it, without an error and without taking the
/// log offline, its output is removed, and the cleaner checkpoint does not cover the new data.
#[test]
fn a_pass_is_thrown_away_from_a_truncation_on() {
    let clock = ManualClock::new(0);
    let ops: Vec<Op> = (0..300).map(|i| ((i % 7) as u8, Some(i as u16))).collect();
    // Before the offset map, before the first group is built, before it is swapped in, before
    // its swap is finished (the directory not yet fsynced), before the second is built.
    for truncate_at_step in 0..5 {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open(dir.path(), config(), &clock);
        append_ops(&mut log, &ops, 3);
        // Small cleaned segments first, so that the pass below has groups of several.
        log.clean(log.log_end_offset(), &CleanerConfig::default())
            .unwrap()
            .unwrap();
        append_ops(&mut log, &ops, 3);
        let pass = log
            .plan_cleaning(log.log_end_offset(), &CleanerConfig::default())
            .unwrap();
        let mut truncated = None;
        let stats = run_pass(&mut log, pass, |log, step| {
            if step == truncate_at_step {
                // Into the middle of the third segment: later segments go, that one's file
                // shrinks, and new data is appended past the cut.
                let segments = log.segments();
                let cut = (segments[2].base_offset + segments[2].next_offset) / 2;
                log.truncate_to(cut).unwrap();
                append_ops(log, &ops[..20], 3);
                truncated = Some((read_all(log), cut));
            }
        });
        let (expected, cut) = truncated.unwrap();
        assert!(!log.is_offline(), "step {truncate_at_step}");
        if truncate_at_step < 3 {
            // Before the first swap: nothing of the pass went in.
            assert_eq!(stats, None, "step {truncate_at_step}");
        }
        // Nothing of the pass goes in after the truncation.
        assert_eq!(read_all(&log), expected, "step {truncate_at_step}");
        assert!(
            log.cleaner_checkpoint() <= cut,
            "step {truncate_at_step}: checkpoint {} past the cut {cut}",
            log.cleaner_checkpoint()
        );
        assert!(
            leftovers(dir.path()).is_empty(),
            "{:?}",
            leftovers(dir.path())
        );
        // The next pass cleans what is there, and the files hold what the log served.
        let before = read_all(&log);
        clean_to_the_model(&mut log, &before);
        let served = read_all(&log);
        log.close().unwrap();
        drop(log);
        assert_eq!(
            read_all(&reopen(dir.path(), config(), &clock, false, 0)),
            served,
            "step {truncate_at_step}"
        );
    }
}

/// Retention deleting the oldest segment while a pass runs (`cleanup.policy=compact,delete`):
/// the group that would bring it back is thrown away, the others swap in, and the segments of
/// the thrown-away group stay dirty for the next pass.
#[test]
fn a_group_whose_segment_retention_deleted_meanwhile_is_not_swapped_in() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut cfg = config();
    cfg.cleanup_policy.delete = true;
    let mut log = open(dir.path(), cfg.clone(), &clock);
    // Keys written once at the start (their only value is in the oldest segments, which a
    // cleaned group would keep), then keys repeated within each segment.
    let ops: Vec<Op> = (0..400)
        .map(|i| {
            let key = if i < 100 {
                100 + i as u8
            } else {
                (i % 10) as u8
            };
            (key, Some(i as u16))
        })
        .collect();
    append_ops(&mut log, &ops, 2);
    assert!(log.segments().len() > 8);
    let pass = log
        .plan_cleaning(log.log_end_offset(), &CleanerConfig::default())
        .unwrap();
    let mut retained = None;
    let stats = run_pass(&mut log, pass, |log, step| {
        if step == 1 {
            // The oldest segment goes.
            let first = log.segments()[0].size_bytes;
            log.set_config(LogConfig {
                retention_bytes: (log.size_bytes() - first) as i64,
                ..cfg.clone()
            });
            assert_eq!(
                log.delete_old_segments(log.log_end_offset()).unwrap().len(),
                1
            );
            retained = Some(read_all(log));
        }
    })
    .unwrap();
    let before = retained.unwrap();
    let start = log.log_start_offset();
    assert!(stats.segments_written > 0, "{stats:?}");
    assert_eq!(
        log.segments()[0].base_offset,
        start,
        "a deleted segment came back"
    );
    let after = read_all(&log);
    assert!(after.iter().all(|r| r.offset >= start));
    // The groups after the thrown-away one were cleaned (past the checkpoint, which stays at
    // the thrown-away group): every record left is an original, and every key's latest stays.
    assert!(after.iter().all(|r| before.contains(r)));
    let mut latest = HashMap::new();
    for r in &before {
        latest.insert(&r.key, r);
    }
    for r in latest.values() {
        assert!(after.contains(r), "latest record of {:?} lost", r.key);
    }
    assert!(after.len() < before.len(), "nothing was cleaned");
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
    // What the thrown-away group held is cleaned by the next pass.
    assert!(log.cleaner_checkpoint() <= log.segments()[1].base_offset);
    clean_to_the_model(&mut log, &before);
}

/// A full pass over `log` cleans it as the model says, `before` being what it held uncleaned.
fn clean_to_the_model(log: &mut Log, before: &[Rec]) {
    let stats = log
        .clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap()
        .unwrap();
    check(before, &read_all(log), stats.cleaned_up_to, false);
}

/// A truncation into an already-cleaned segment (a follower cutting a diverged tail below its
/// high watermark, after an unclean election) moves the cleaner checkpoint into that segment.
/// What is written after the cut must enter the next pass's offset map: it supersedes older
/// values of its keys, and a tombstone among it must take the old value with it, not leave it
/// to come back once the tombstone goes.
#[test]
fn records_written_after_a_truncation_into_a_cleaned_segment_are_mapped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), config(), &clock);
    let ops: Vec<Op> = (0..120).map(|i| ((i % 4) as u8, Some(i as u16))).collect();
    append_ops(&mut log, &ops, 1);
    let stats = log
        .clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap()
        .unwrap();
    let survivors: Vec<Rec> = read_all(&log)
        .into_iter()
        .filter(|r| r.offset < stats.cleaned_up_to)
        .collect();
    assert_eq!(survivors.len(), 4, "one record per key: {survivors:?}");
    let segments = log.segments();
    assert!(
        segments[..segments.len() - 1]
            .iter()
            .any(|s| s.base_offset <= survivors[0].offset && survivors[3].offset < s.next_offset),
        "the survivors share a sealed, cleaned segment: {segments:?}"
    );
    // Cut inside the cleaned segment, keeping the first two survivors.
    log.truncate_to(survivors[2].offset).unwrap();
    let deleted: u8 = String::from_utf8(survivors[0].key.clone().unwrap()).unwrap()[1..]
        .parse()
        .unwrap();
    let mut after: Vec<Op> = vec![(deleted, None)];
    after.extend((0..30).map(|i| (10 + (i % 3) as u8, Some(i as u16))));
    append_ops(&mut log, &after, 1);
    log.roll().unwrap();
    append_ops(&mut log, &after[1..], 1);
    log.roll().unwrap();
    append_ops(&mut log, &[(20, Some(1))], 1);
    let before = read_all(&log);
    clean_to_the_model(&mut log, &before);
    // And once the tombstone may go, the key is gone, not back at its old value.
    clock.advance(DAY + 1);
    log.clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap();
    let key = format!("k{deleted}").into_bytes();
    let left: Vec<Rec> = read_all(&log)
        .into_iter()
        .filter(|r| r.key.as_deref() == Some(key.as_slice()))
        .collect();
    assert!(
        left.iter().all(|r| r.value.is_none()),
        "a deleted key came back: {left:?}"
    );
}

/// Dirty segments that all end above the high watermark (a slow follower holds it back) are
/// waited for: a pass would map nothing and rewrite the already-cleaned segments on every
/// backoff.
#[test]
fn dirty_data_above_the_high_watermark_does_not_rewrite_the_cleaned_part() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut log = open(dir.path(), config(), &clock);
    let ops: Vec<Op> = (0..120).map(|i| ((i % 4) as u8, Some(i as u16))).collect();
    append_ops(&mut log, &ops, 1);
    let cleaned = log
        .clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap()
        .unwrap()
        .cleaned_up_to;
    append_ops(&mut log, &ops, 1);
    log.roll().unwrap();
    assert!(log.needs_cleaning());
    assert_eq!(
        log.clean(cleaned, &CleanerConfig::default()).unwrap(),
        None,
        "nothing dirty below the high watermark"
    );
    let stats = log
        .clean(log.log_end_offset(), &CleanerConfig::default())
        .unwrap()
        .unwrap();
    assert!(stats.cleaned_up_to > cleaned);
}

/// A segment truncated and refilled to the same size and end between a group's build and its
/// swap (a follower truncating a diverged tail and fetching again) holds other data under the
/// same name and file: the group built from the old data must not go in.
#[test]
fn a_segment_refilled_to_the_same_size_is_not_replaced_by_output_built_from_its_old_data() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(0);
    let mut log = open(dir.path(), config(), &clock);
    // Values of one length, so that rewritten batches have the same sizes.
    let ops: Vec<Op> = (0..300)
        .map(|i| ((i % 7) as u8, Some(1000 + i as u16)))
        .collect();
    append_ops(&mut log, &ops, 3);
    let first = log.segments()[0].clone();
    let pass = log
        .plan_cleaning(log.log_end_offset(), &CleanerConfig::default())
        .unwrap();
    let mut refilled = None;
    let stats = run_pass(&mut log, pass, |log, step| {
        if step == 2 {
            // After the first group (the first segment alone) was built from the old data.
            let cut = (first.base_offset + first.next_offset) / 2 / 3 * 3;
            log.truncate_to(cut).unwrap();
            let other: Vec<Op> = ops[cut as usize..first.next_offset as usize]
                .iter()
                .map(|(k, v)| (*k, v.map(|v| v + 1000)))
                .collect();
            append_ops(log, &other, 3);
            log.roll().unwrap();
            assert_eq!(log.segments()[0], first.clone(), "same name, size and end");
            append_ops(log, &ops[first.next_offset as usize..], 3);
            refilled = Some(read_all(log));
        }
    });
    assert_eq!(stats, None);
    assert_eq!(Some(read_all(&log)), refilled);
    assert!(
        leftovers(dir.path()).is_empty(),
        "{:?}",
        leftovers(dir.path())
    );
}
