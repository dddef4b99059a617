//! Log compaction: keep only the latest record per key in the cleanable part of a log.
//!
//! The cleanable part is every segment before the active one, up to the high watermark. A pass:
//! 1. builds an offset map (key hash → latest offset) over the dirty section (from the cleaner
//!    checkpoint on), bounded by `dedupe_buffer_size`;
//! 2. rewrites the cleanable segments, in groups that fit one segment, keeping a record only if
//!    no later record has its key. Offsets are kept (gaps are allowed); a batch whose records all
//!    survive is copied byte for byte, others are rebuilt with their original base offset;
//! 3. tombstones (null values) survive `delete.retention.ms` from the first pass that keeps them:
//!    that pass stamps the batch's delete horizon (KIP-534), a pass after the horizon drops them;
//! 4. swaps each group in crash-safely: write `<base>.log.cleaned`, fsync, rename to
//!    `<base>.log.swap`, remove the replaced segments, rename the swap to `<base>.log`. On open,
//!    `.cleaned` files are discarded and `.swap` files completed (`Log::open`).
//!
//! As in Kafka, the log's lock is held only to plan a pass ([`Log::plan_cleaning`]: which
//! sealed segments it reads) and to swap each group in as soon as it is built
//! ([`Log::swap_cleaned_group`]). Steps 1–3 and the fsync run without it
//! ([`CleaningPass::build_map`], [`CleaningPass::build_next_group`]), on the segments' open
//! files, while the log goes on appending and serving reads; so do the directory fsync that
//! makes a swap's last renames durable and the replaced files' unlinks ([`Swapped::finish`]).
//! A group whose segments retention deleted meanwhile is thrown away, and so is every group
//! after a truncation.
//!
//! Keys are compared by a 128-bit hash (xxh3), as Kafka's cleaner compares MD5 digests.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};

use rill_protocol::record_batch::{
    BatchHeader, RECORD_BATCH_OVERHEAD, RecordBatch, RecordBatchBuilder, RecordHeader,
};

use crate::error::{IoContext, LogError, Result};
use crate::log::{CLEANED_SUFFIX, DELETED_SUFFIX, Log, SWAP_SUFFIX, sizing, sync_dir};
use crate::log_segment::{
    BatchInfo, INDEX_SUFFIX, IndexSizing, LOG_SUFFIX, LogSegment, SegmentView, TIME_INDEX_SUFFIX,
    remove_if_exists, segment_file,
};

/// Bytes one offset map entry costs (hash, offset, table overhead).
const MAP_ENTRY_BYTES: usize = 40;

/// Settings shared by all logs a cleaner serves (broker-level in Kafka).
#[derive(Clone, Copy, Debug)]
pub struct CleanerConfig {
    /// `log.cleaner.dedupe.buffer.size`: memory for the offset map of one pass.
    pub dedupe_buffer_size: usize,
}

impl Default for CleanerConfig {
    fn default() -> Self {
        CleanerConfig {
            dedupe_buffer_size: 128 << 20,
        }
    }
}

/// What a cleaning pass did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CleanerStats {
    /// Segments of the cleaned range read (the dirty ones included).
    pub segments_read: usize,
    /// Cleaned segments written in their place (groups of small segments merge into one).
    pub segments_written: usize,
    /// `.log` bytes read.
    pub bytes_read: u64,
    /// `.log` bytes written; `bytes_read - bytes_written` is what the pass reclaimed.
    pub bytes_written: u64,
    /// Records dropped because a later record has the same key.
    pub records_superseded: u64,
    /// Tombstones dropped because their delete horizon passed.
    pub tombstones_removed: u64,
    /// First offset not cleaned by this pass (the new cleaner checkpoint).
    pub cleaned_up_to: i64,
}

impl Log {
    /// Dirty bytes / cleanable bytes: how much of the cleanable part was never cleaned.
    pub fn dirty_ratio(&self) -> f64 {
        // No segment at all only after a full truncation failed (the log is offline).
        let Some(&end) = self.segments.keys().next_back() else {
            return 0.0;
        };
        let (mut dirty, mut total) = (0u64, 0u64);
        for s in self.segments.range(..end).map(|(_, s)| s) {
            total += s.size();
            if s.base_offset() >= self.cleaner_checkpoint {
                dirty += s.size();
            }
        }
        if total == 0 {
            0.0
        } else {
            dirty as f64 / total as f64
        }
    }

    /// True when the log is compacted and its dirty ratio reached `min.cleanable.dirty.ratio`.
    pub fn needs_cleaning(&self) -> bool {
        self.config.cleanup_policy.compact
            && !self.is_offline()
            && self.dirty_ratio() > 0.0
            && self.dirty_ratio() >= self.config.min_cleanable_dirty_ratio
    }

    /// The cleaner checkpoint: offsets below it have been cleaned at least once.
    pub fn cleaner_checkpoint(&self) -> i64 {
        self.cleaner_checkpoint
    }

    /// Restores the cleaner checkpoint (from the log dir's `cleaner-offset-checkpoint`).
    pub fn set_cleaner_checkpoint(&mut self, offset: i64) {
        self.cleaner_checkpoint = offset.clamp(self.log_start_offset(), self.log_end_offset());
    }

    /// Runs one cleaning pass over the segments before the active one that end at or below
    /// `upper_bound` (the high watermark). Returns `None` when there is nothing to clean.
    /// Holds the log throughout; [`LogManager`](crate::LogManager) runs the same steps holding
    /// the log's lock only to plan the pass and to swap each group in, so appends and reads go
    /// on while it reads and writes segments.
    pub fn clean(
        &mut self,
        upper_bound: i64,
        cleaner: &CleanerConfig,
    ) -> Result<Option<CleanerStats>> {
        let Some(mut pass) = self.plan_cleaning(upper_bound, cleaner) else {
            return Ok(None);
        };
        if let Err(e) = pass.build_map() {
            return self.abandon_cleaning(&pass, e).map(|()| None);
        }
        while let Some(group) = pass.build_next_group() {
            match group {
                Ok(group) => {
                    let swapped = self.swap_cleaned_group(&mut pass, group)?;
                    self.guarded(|_| swapped.finish())?;
                }
                Err(e) => return self.abandon_cleaning(&pass, e).map(|()| None),
            }
        }
        Ok(self.finish_cleaning(&pass))
    }

    /// Plans a cleaning pass: the sealed segments it reads (as views that stay readable
    /// without the log) and the settings it cleans with. `None` when the log is not compacted
    /// or nothing below `upper_bound` is cleanable. The pass is then built without the log
    /// ([`CleaningPass::build_map`], [`CleaningPass::build_next_group`]), each group swapped
    /// in as soon as it is built ([`Log::swap_cleaned_group`]), and the pass ended with
    /// [`Log::finish_cleaning`] (or [`Log::abandon_cleaning`] when building failed).
    pub fn plan_cleaning(&self, upper_bound: i64, cleaner: &CleanerConfig) -> Option<CleaningPass> {
        if !self.config.cleanup_policy.compact || self.is_offline() {
            return None;
        }
        let active = self.active_segment().base_offset();
        let cleanable: Vec<SegmentView> = self
            .segments
            .range(..active)
            .filter(|(_, s)| s.next_offset() <= upper_bound)
            .map(|(_, s)| s.view())
            .collect();
        if cleanable.is_empty() {
            return None;
        }
        if !cleanable
            .iter()
            .any(|s| s.next_offset > self.cleaner_checkpoint)
            && self.dirty_ratio() > 0.0
        {
            // The dirty segments all end above `upper_bound` (a follower holds the high
            // watermark back): wait for them, instead of rewriting the cleaned part on every
            // backoff. (With nothing dirty at all, a pass still runs when asked, for tombstones
            // whose `delete.retention.ms` passed.)
            return None;
        }
        Some(CleaningPass {
            dir: self.dir.clone(),
            sizing: sizing(&self.config),
            segment_bytes: self.config.segment_bytes,
            now: self.clock.now_ms(),
            delete_retention_ms: self.config.delete_retention_ms,
            checkpoint: self.cleaner_checkpoint,
            max_entries: (cleaner.dedupe_buffer_size / MAP_ENTRY_BYTES).max(1),
            truncations: self.truncations,
            cleanable,
            map: HashMap::new(),
            producers_last: self
                .producer_state()
                .producers()
                .iter()
                .filter_map(|(id, e)| Some((*id, e.last_offset()?)))
                .collect(),
            clean_end: self.cleaner_checkpoint,
            groups: VecDeque::new(),
            reading: Vec::new(),
            stats: CleanerStats::default(),
            truncated: false,
        })
    }

    /// Swaps one built group in, if nothing was truncated since the pass was planned and the
    /// segments it replaces are all still there, unchanged and sealed (retention may have
    /// deleted some meanwhile); otherwise its output is removed and the cleaner checkpoint
    /// will not pass its start, so a later pass cleans what is left. Crash-safe: `.cleaned` →
    /// `.swap` and the directory fsynced (from here a crash completes the swap on open), then
    /// the old segments → `.deleted`, the directory fsynced again, and `.swap` → `.log`. What is
    /// left — the fsync that makes that last rename durable, and unlinking the replaced files —
    /// is [`Swapped::finish`], for once the log's lock is released: appends to the log need not
    /// wait for a third directory fsync (which on a busy disk waits for the journal) nor for a
    /// large file's unlink.
    pub fn swap_cleaned_group(
        &mut self,
        pass: &mut CleaningPass,
        group: CleanedGroup,
    ) -> Result<Swapped> {
        let nothing = Swapped {
            dir: self.dir.clone(),
            doomed: Vec::new(),
        };
        if self.is_offline() {
            group.discard();
            return self.guarded(|_| Ok(nothing));
        }
        if self.truncations != pass.truncations {
            // The data under these offsets may have changed: nothing of this pass goes in,
            // and the checkpoint stays as the truncation left it.
            pass.truncated = true;
            group.discard();
            return Ok(nothing);
        }
        let active = self.active_segment().base_offset();
        let unchanged = group.replaces.iter().all(|v| {
            v.base_offset != active
                && self
                    .segments
                    .get(&v.base_offset)
                    .is_some_and(|s| v.is_view_of(s))
        });
        if !unchanged {
            pass.clean_end = pass.clean_end.min(group.cleaned.base_offset());
            group.discard();
            return Ok(nothing);
        }
        let stats = group.stats;
        let doomed = self.guarded(|log| log.swap_in(group))?;
        pass.stats.segments_read += stats.segments_read;
        pass.stats.bytes_read += stats.bytes_read;
        pass.stats.bytes_written += stats.bytes_written;
        pass.stats.records_superseded += stats.records_superseded;
        pass.stats.tombstones_removed += stats.tombstones_removed;
        pass.stats.segments_written += 1;
        Ok(Swapped {
            dir: self.dir.clone(),
            doomed,
        })
    }

    /// Ends a pass whose groups were all built: moves the cleaner checkpoint past what it
    /// cleaned (not after a truncation: nothing of the pass went in after it). `None` when no
    /// group was swapped in.
    pub fn finish_cleaning(&mut self, pass: &CleaningPass) -> Option<CleanerStats> {
        let mut stats = pass.stats;
        if !pass.truncated && self.truncations == pass.truncations {
            self.cleaner_checkpoint = self
                .cleaner_checkpoint
                .max(pass.clean_end.min(self.log_end_offset()));
        }
        if stats.segments_written == 0 {
            return None;
        }
        stats.cleaned_up_to = self.cleaner_checkpoint;
        tracing::info!(dir = %self.dir.display(), ?stats, "cleaned log");
        Some(stats)
    }

    /// Ends a pass whose building failed with `e`. An error only if the segments it was
    /// reading did not change under it: a truncation may cut a file the pass was reading, and
    /// that is no fault of the disk.
    pub fn abandon_cleaning(&mut self, pass: &CleaningPass, e: LogError) -> Result<()> {
        let changed = self.truncations != pass.truncations
            || pass.reading.iter().any(|v| {
                self.segments
                    .get(&v.base_offset)
                    .is_none_or(|s| !v.is_view_of(s))
            });
        if changed {
            tracing::info!(dir = %self.dir.display(), error = %e, "the log changed under a cleaning pass; its work is thrown away");
            return Ok(());
        }
        self.guarded(|_| Err(e))
    }

    /// Swaps one group's cleaned segment (written and fsynced) in for the segments it
    /// replaces. Returns the old segments' files.
    fn swap_in(&mut self, group: CleanedGroup) -> Result<Vec<PathBuf>> {
        let base = group.cleaned.base_offset();
        let cleaned_path = segment_file(&self.dir, base, &format!("{LOG_SUFFIX}{CLEANED_SUFFIX}"));
        let swap_path = segment_file(&self.dir, base, &format!("{LOG_SUFFIX}{SWAP_SUFFIX}"));
        if let Err(e) = crate::fsio::rename(&cleaned_path, &swap_path).at(&cleaned_path) {
            group.discard();
            return Err(e);
        }
        let CleanedGroup {
            replaces,
            mut cleaned,
            ..
        } = group;
        sync_dir(&self.dir)?;
        // From here the swap is decided on disk (a crash completes it on open). In memory the old
        // segments stay until every step succeeded: their open files keep serving reads even
        // after a rename, so an error (a full disk) leaves the log readable, never with a hole.
        let mut deleted = Vec::new();
        for v in &replaces {
            if let Some(old) = self.segments.get_mut(&v.base_offset) {
                deleted.extend(old.rename_files(DELETED_SUFFIX)?);
            }
        }
        // The old segments' renames are durable before the swap takes its final name: a crash
        // must never leave the new `.log` beside an old one whose records it also holds (open
        // would read both). POSIX does not order two renames' durability without this fsync.
        if !deleted.is_empty() {
            sync_dir(&self.dir)?;
        }
        let final_path = segment_file(&self.dir, base, LOG_SUFFIX);
        crate::fsio::rename(&swap_path, &final_path).at(&swap_path)?;
        cleaned.rename_indexes_to_final()?;
        for v in &replaces {
            self.segments.remove(&v.base_offset);
        }
        self.segments.insert(base, cleaned);
        Ok(deleted)
    }
}

/// A group swapped in under the log's lock, to finish without it ([`Log::swap_cleaned_group`]).
#[must_use = "the swap's renames are durable, and the replaced files gone, only once finished"]
pub struct Swapped {
    dir: PathBuf,
    /// The replaced segments' files, renamed `.deleted`.
    doomed: Vec<PathBuf>,
}

impl Swapped {
    /// fsyncs the log's directory, so the swap's renames survive a crash (until then a crash
    /// completes the swap on open, from its `.swap` file), and unlinks the replaced files.
    /// A change the log made meanwhile (a truncation removing the new segment) is made durable
    /// by its own directory fsync, which covers these renames too.
    pub fn finish(self) -> Result<()> {
        if self.doomed.is_empty() {
            return Ok(());
        }
        sync_dir(&self.dir)?;
        for path in &self.doomed {
            remove_if_exists(path)?;
        }
        Ok(())
    }
}

/// A cleaning pass: planned under the log's lock ([`Log::plan_cleaning`]), built without it
/// (nothing in it refers to the log), swapped in group by group under it.
pub struct CleaningPass {
    dir: PathBuf,
    sizing: IndexSizing,
    segment_bytes: u64,
    now: i64,
    delete_retention_ms: i64,
    checkpoint: i64,
    max_entries: usize,
    truncations: u64,
    /// The sealed segments below the upper bound, in offset order (until the map is built).
    /// The last handle of a replaced or deleted segment is dropped by the pass (in
    /// `build_map` or when the next group is built), not under the log's lock.
    cleanable: Vec<SegmentView>,
    /// Key hash → latest offset over the dirty section.
    map: HashMap<u128, i64>,
    /// Producer id → last offset of its last batch, for the producers the log knows: that
    /// batch is kept (empty if all its records go), so a replica rebuilding producer state
    /// from the log still learns the producer's last sequence (Kafka's `RETAIN_EMPTY`).
    producers_last: HashMap<i64, i64>,
    /// First offset the pass does not clean (lowered to the start of a group thrown away).
    clean_end: i64,
    /// Groups still to build.
    groups: VecDeque<Vec<SegmentView>>,
    /// The segments the step in progress reads (for [`Log::abandon_cleaning`]).
    reading: Vec<SegmentView>,
    /// Of the groups swapped in.
    stats: CleanerStats,
    /// A truncation came after the plan: nothing more of this pass goes in.
    truncated: bool,
}

/// One group's cleaned segment, written as `<base>.log.cleaned` and fsynced, for
/// [`Log::swap_cleaned_group`].
pub struct CleanedGroup {
    replaces: Vec<SegmentView>,
    cleaned: LogSegment,
    stats: CleanerStats,
}

impl CleanedGroup {
    /// Removes the group's output (best effort: a `.cleaned` file left behind is removed when
    /// the log is next opened).
    fn discard(self) {
        // (Named from the directory and base offset: a cleaned segment's file is created under
        // the suffixed name, but its final name belongs to the live segment until the swap.)
        let log_path = self.cleaned.log_path();
        let dir = log_path.parent().unwrap_or(Path::new("."));
        let base = self.cleaned.base_offset();
        drop(self.cleaned);
        for name in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            let path = segment_file(dir, base, &format!("{name}{CLEANED_SUFFIX}"));
            if let Err(e) = remove_if_exists(&path) {
                tracing::warn!(path = %path.display(), error = %e, "could not remove a cleaner's output");
            }
        }
    }
}

impl CleaningPass {
    /// Builds the offset map over the dirty section (whole segments, as many as
    /// `log.cleaner.dedupe.buffer.size` allows, at least one) and groups the segments to
    /// rewrite. Reads files only.
    pub fn build_map(&mut self) -> Result<()> {
        let mut map: HashMap<u128, i64> = HashMap::new();
        let mut clean_end = self.checkpoint;
        // From the segment holding the checkpoint, which is mid-segment after a truncation
        // into a cleaned segment (what was written after the cut is dirty), as Kafka's
        // `buildOffsetMap` does; records below the checkpoint are clean and not mapped.
        self.reading = self
            .cleanable
            .iter()
            .filter(|s| s.next_offset > self.checkpoint)
            .cloned()
            .collect();
        let checkpoint = self.checkpoint;
        for segment in &self.reading {
            let mut segment_map = Vec::new();
            for_each_record(segment, |record| {
                if let Some(key) = record.key
                    && record.offset >= checkpoint
                {
                    segment_map.push((key_hash(key), record.offset));
                }
                Ok(())
            })?;
            // Always map at least one segment so every pass makes progress.
            if !map.is_empty() && map.len() + segment_map.len() > self.max_entries {
                break;
            }
            map.extend(segment_map);
            clean_end = segment.next_offset;
        }
        self.map = map;
        self.clean_end = clean_end;
        let to_clean: Vec<&SegmentView> = self
            .cleanable
            .iter()
            .filter(|s| s.next_offset <= clean_end)
            .collect();
        self.groups = group_segments(&to_clean, self.segment_bytes).into();
        // From here the groups (and `reading`) hold what is still needed: a replaced segment's
        // file closes once its group is done, so its blocks are freed as the pass goes, not at
        // its end (each group needs one segment of extra disk, not the whole log).
        self.cleanable = Vec::new();
        Ok(())
    }

    /// Writes and fsyncs the next group's cleaned segment; `None` when every group is done
    /// (or a truncation ended the pass). Reads and writes files only.
    pub fn build_next_group(&mut self) -> Option<Result<CleanedGroup>> {
        if self.truncated {
            return None;
        }
        let group = self.groups.pop_front()?;
        self.reading.clone_from(&group);
        Some(self.clean_group(group))
    }

    fn clean_group(&self, group: Vec<SegmentView>) -> Result<CleanedGroup> {
        let base = group[0].base_offset;
        let mut cleaned =
            LogSegment::create_with_suffix(&self.dir, base, self.sizing, CLEANED_SUFFIX)?;
        let written = self.write_group(&group, &mut cleaned);
        let mut out = CleanedGroup {
            replaces: group,
            cleaned,
            stats: CleanerStats::default(),
        };
        match written {
            Ok(stats) => {
                out.stats = stats;
                Ok(out)
            }
            Err(e) => {
                out.discard();
                Err(e)
            }
        }
    }

    fn write_group(&self, group: &[SegmentView], cleaned: &mut LogSegment) -> Result<CleanerStats> {
        let mut stats = CleanerStats::default();
        let now = self.now;
        let horizon = now.saturating_add(self.delete_retention_ms);
        let mut last_header = None;
        for segment in group {
            stats.segments_read += 1;
            stats.bytes_read += segment.size;
            for (pos, header) in segment.batch_positions()? {
                last_header = Some(header);
                let bytes = segment.read_at(pos, header.total_size())?;
                let producers_last = header.producer_id >= 0
                    && self.producers_last.get(&header.producer_id) == Some(&header.last_offset());
                if let Some(out) = filter_batch(
                    segment,
                    pos,
                    &header,
                    &bytes,
                    &self.map,
                    now,
                    horizon,
                    producers_last,
                    &mut stats,
                )? {
                    let out_header =
                        BatchHeader::decode(&out).map_err(|e| corrupt(segment, pos, e))?;
                    cleaned.append(&out, &[BatchInfo::of(&out_header)])?;
                    stats.bytes_written += out.len() as u64;
                }
            }
        }
        // Keep the group's offset span even if its last batch lost every record: an empty batch
        // marks the end, so the swap (and its recovery) knows exactly which segments it replaces.
        if let Some(last) = last_header.filter(|h| h.next_offset() > cleaned.next_offset()) {
            let marker = RecordBatchBuilder::new(rill_protocol::record_batch::Compression::None)
                .base_offset(last.base_offset)
                .last_offset_delta(last.last_offset_delta)
                .partition_leader_epoch(last.partition_leader_epoch)
                .producer(last.producer_id, last.producer_epoch, last.base_sequence)
                .build()
                .map_err(|e| LogError::Corrupt {
                    path: self.dir.clone(),
                    reason: format!("building an empty marker batch: {e}"),
                })?;
            let h = BatchHeader::decode(&marker).map_err(|e| LogError::Corrupt {
                path: self.dir.clone(),
                reason: e.to_string(),
            })?;
            cleaned.append(&marker, &[BatchInfo::of(&h)])?;
        }
        cleaned.file().sync().at(segment_file(
            &self.dir,
            cleaned.base_offset(),
            &format!("{LOG_SUFFIX}{CLEANED_SUFFIX}"),
        ))?;
        // The indexes too, so that the swap (under the log's lock) only renames files.
        cleaned.write_indexes()?;
        Ok(stats)
    }
}

/// Consecutive segments whose combined size fits one segment (`segment_bytes`) and whose
/// offsets fit 32-bit relative offsets from the first.
fn group_segments(segments: &[&SegmentView], segment_bytes: u64) -> Vec<Vec<SegmentView>> {
    let mut groups: Vec<Vec<SegmentView>> = Vec::new();
    let mut size = 0u64;
    for &s in segments {
        let fits = groups.last().is_some_and(|g| {
            size + s.size <= segment_bytes && s.next_offset - g[0].base_offset <= i32::MAX as i64
        });
        if fits {
            size += s.size;
            if let Some(g) = groups.last_mut() {
                g.push(s.clone());
            }
        } else {
            size = s.size;
            groups.push(vec![s.clone()]);
        }
    }
    groups
}

/// Keeps the records of one batch that survive; `None` when none do, unless the batch is its
/// producer's last (`producers_last`), which is kept empty. A batch that survives whole and
/// needs no delete horizon is returned byte for byte.
#[allow(clippy::too_many_arguments)]
fn filter_batch(
    segment: &SegmentView,
    pos: u64,
    header: &BatchHeader,
    bytes: &[u8],
    map: &HashMap<u128, i64>,
    now: i64,
    horizon: i64,
    producers_last: bool,
    stats: &mut CleanerStats,
) -> Result<Option<Vec<u8>>> {
    let batch = RecordBatch::parse(bytes).map_err(|e| corrupt(segment, pos, e))?;
    if header.is_control() {
        return Ok(Some(bytes.to_vec()));
    }
    let records = batch
        .records(usize::MAX)
        .map_err(|e| corrupt(segment, pos, e))?;
    let existing_horizon = header.delete_horizon_ms();
    let mut kept = Vec::new();
    let mut has_tombstone = false;
    let mut total = 0usize;
    for record in records.iter() {
        let record = record.map_err(|e| corrupt(segment, pos, e))?;
        total += 1;
        let Some(key) = record.key else {
            stats.records_superseded += 1;
            continue;
        };
        if map
            .get(&key_hash(key))
            .is_some_and(|&latest| latest > record.offset)
        {
            stats.records_superseded += 1;
            continue;
        }
        if record.value.is_none() {
            if existing_horizon.is_some_and(|h| now > h) {
                stats.tombstones_removed += 1;
                continue;
            }
            has_tombstone = true;
        }
        kept.push(record);
    }
    let needs_horizon = has_tombstone && existing_horizon.is_none();
    if total == 0 && !producers_last {
        // An emptied batch kept as its producer's last, and its producer wrote since (or
        // expired): no longer needed. (A group's end marker is written again if need be.)
        return Ok(None);
    }
    if kept.len() == total && !needs_horizon {
        return Ok(Some(bytes.to_vec()));
    }
    if kept.is_empty() && !producers_last {
        return Ok(None);
    }
    // Empty here only as its producer's last batch: kept without records (offsets, producer
    // id, epoch and sequences as they were).
    let compression = if kept.is_empty() {
        rill_protocol::record_batch::Compression::None
    } else {
        header.compression().map_err(|e| corrupt(segment, pos, e))?
    };
    let mut builder = RecordBatchBuilder::new(compression)
        .empty_timestamps(header.base_timestamp, header.max_timestamp)
        .base_offset(header.base_offset)
        .partition_leader_epoch(header.partition_leader_epoch)
        .producer(
            header.producer_id,
            header.producer_epoch,
            header.base_sequence,
        )
        .timestamp_type(header.timestamp_type())
        .transactional(header.is_transactional())
        .last_offset_delta(header.last_offset_delta);
    if has_tombstone {
        builder = builder.delete_horizon_ms(existing_horizon.unwrap_or(horizon));
    }
    for record in kept {
        let headers: Vec<RecordHeader<'_>> = record.headers().collect();
        builder
            .append_with_offset_delta(
                record.offset_delta,
                record.timestamp,
                record.key,
                record.value,
                &headers,
            )
            .map_err(|e| corrupt(segment, pos, e))?;
    }
    let out = builder.build().map_err(|e| corrupt(segment, pos, e))?;
    Ok(Some(out.to_vec()))
}

/// Calls `f` for every record of every batch in `segment`.
fn for_each_record(
    segment: &SegmentView,
    mut f: impl FnMut(rill_protocol::record_batch::Record<'_>) -> Result<()>,
) -> Result<()> {
    for (pos, header) in segment.batch_positions()? {
        if header.is_control() {
            continue;
        }
        let bytes = segment.read_at(pos, header.total_size())?;
        let batch = RecordBatch::parse(&bytes).map_err(|e| corrupt(segment, pos, e))?;
        let records = batch
            .records(usize::MAX)
            .map_err(|e| corrupt(segment, pos, e))?;
        for record in records.iter() {
            f(record.map_err(|e| corrupt(segment, pos, e))?)?;
        }
    }
    Ok(())
}

fn key_hash(key: &[u8]) -> u128 {
    xxhash_rust::xxh3::xxh3_128(key)
}

fn corrupt(segment: &SegmentView, pos: u64, e: impl std::fmt::Display) -> LogError {
    LogError::Corrupt {
        path: segment.log_path().to_owned(),
        reason: format!("batch at position {pos}: {e}"),
    }
}

/// The offset after the last whole batch of a `.swap` file (its base offset when empty): the
/// end of the range of old segments the swap replaces.
pub(crate) fn swap_end_offset(path: &Path) -> Result<i64> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let base: i64 = name.get(..20).and_then(|s| s.parse().ok()).unwrap_or(0);
    let bytes = std::fs::read(path).at(path)?;
    let mut end = base;
    let mut pos = 0;
    while pos + RECORD_BATCH_OVERHEAD <= bytes.len() {
        let Ok(h) = BatchHeader::decode(&bytes[pos..]) else {
            break;
        };
        let total = h.total_size();
        if total < RECORD_BATCH_OVERHEAD || pos + total > bytes.len() {
            break;
        }
        end = h.next_offset();
        pos += total;
    }
    Ok(end)
}
