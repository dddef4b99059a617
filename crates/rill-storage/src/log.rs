//! A partition's commit log: an ordered set of [`LogSegment`]s in one directory, the last of which
//! is active.
//!
//! The append path, in order (the order is the correctness argument):
//! 1. validate every batch of the request (CRC, framing, size, key rules) — nothing is written
//!    unless all pass;
//! 2. assign offsets by patching each batch's `base_offset` and `partition_leader_epoch` in place
//!    (outside the CRC, so records are never re-encoded);
//! 3. roll the active segment if the append would overflow it;
//! 4. write the bytes (page cache) and update the in-memory indexes;
//! 5. advance the log end offset and register the file with [`GroupCommit`];
//! 6. the caller acknowledges only after [`Log::write_out`] (the bytes reached the page cache:
//!    safe against a process crash) or [`GroupCommit::wait_durable`] (fsynced: safe against a
//!    machine crash), as the flush policy demands. Small appends are buffered in between so that
//!    many of them cost one `write` system call.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rill_protocol::record_batch::{
    BatchError, BatchHeader, TimestampType, ValidationOptions, batches, set_base_offset,
    set_log_append_time, set_partition_leader_epoch,
};

use crate::clock::SharedClock;
use crate::config::LogConfig;
use crate::error::{IoContext, LogError, Result};
use crate::group_commit::GroupCommit;
use crate::leader_epoch_cache::{EpochEntry, LeaderEpochFileCache};
use crate::log_segment::{
    BatchInfo, INDEX_SUFFIX, IndexSizing, LOG_SUFFIX, LogSegment, SegmentInfo, TIME_INDEX_SUFFIX,
    remove_if_exists, segment_file,
};
use crate::producer_state::{AppendCheck, DEFAULT_PRODUCER_ID_EXPIRATION_MS, ProducerStateManager};

/// Suffix of files being deleted (crash-safe deletion: rename, then remove).
pub(crate) const DELETED_SUFFIX: &str = ".deleted";
/// Suffix of the cleaner's output while it is written.
pub(crate) const CLEANED_SUFFIX: &str = ".cleaned";
/// Suffix of a complete cleaner output waiting to replace the segments it cleaned.
pub(crate) const SWAP_SUFFIX: &str = ".swap";

/// Written (holding the new start offset) while [`Log::truncate_fully_and_start_at`] runs, and
/// removed once it is done: found at open, it means that restart was cut short.
pub(crate) const RESTART_OFFSET_FILE: &str = "restart-offset";

/// The offset of an unfinished full truncation of the log in `dir`, if one was under way.
fn read_restart_offset(dir: &Path) -> Result<Option<i64>> {
    let path = dir.join(RESTART_OFFSET_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).at(&path),
    };
    match text.trim().parse::<i64>() {
        Ok(offset) if offset >= 0 => Ok(Some(offset)),
        _ => Err(LogError::Corrupt {
            path,
            reason: format!("{text:?} is not an offset"),
        }),
    }
}

/// How to open a log.
#[derive(Clone, Copy, Debug, Default)]
pub struct LogOpenOptions {
    /// Everything below this offset was fsynced (from the recovery-point checkpoint); segments
    /// that may hold later offsets are re-validated.
    pub recovery_point: i64,
    /// The last shutdown flushed everything and wrote its checkpoints: skip re-validation.
    pub clean_shutdown: bool,
}

/// What an append did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LogAppendInfo {
    /// Offset of the first record appended.
    pub first_offset: i64,
    /// Offset of the last record appended.
    pub last_offset: i64,
    /// Largest record timestamp appended.
    pub max_timestamp: i64,
    /// The broker time stamped on the batches under LogAppendTime.
    pub log_append_time: Option<i64>,
    /// Number of records.
    pub record_count: i64,
    /// Number of batches.
    pub batch_count: usize,
    /// Bytes appended to the `.log` file (the batches' total size; 0 for a duplicate).
    pub size_bytes: usize,
    /// True when the append was an idempotent producer's retry of batches already in the log:
    /// nothing was written, and the offsets and max timestamp are those of the original append.
    /// Answer it as a success (Kafka returns the original offsets; counts here are 0).
    pub duplicate: bool,
}

/// Keeps a log's background work (a cleaning pass, a retention round) and its removal apart:
/// no pass or round writes into, or unlinks in, a directory being removed or a closed log.
#[derive(Debug, Default)]
pub(crate) struct MaintenanceGate {
    /// Held by a cleaning pass from its plan to its end, by a retention round, and by whatever
    /// takes the log out of service (delete, set aside, shutdown).
    pub lock: parking_lot::Mutex<()>,
    /// Set before taking the log out of service: a running pass stops before its next group
    /// instead of being waited for to the end.
    pub retiring: std::sync::atomic::AtomicBool,
}

/// A partition's commit log. Not internally synchronised: the owner serialises mutations
/// (appends, rolls, retention, cleaning); reads take `&self`.
#[derive(Debug)]
pub struct Log {
    pub(crate) dir: PathBuf,
    pub(crate) config: LogConfig,
    pub(crate) clock: SharedClock,
    pub(crate) segments: BTreeMap<i64, LogSegment>,
    log_start_offset: i64,
    log_end_offset: i64,
    recovery_point: i64,
    group_commit: Arc<GroupCommit>,
    unflushed_records: i64,
    last_flush_ms: i64,
    /// When the active segment was made (or, for one found on disk, opened): what `segment.ms`
    /// counts from when its first batch carries no timestamp (Kafka's `created`).
    active_created_ms: i64,
    /// First offset the cleaner has not cleaned yet.
    pub(crate) cleaner_checkpoint: i64,
    /// Counts truncations: a cleaning pass planned before one is not swapped in (the segments
    /// it read may since hold other data under the same names).
    pub(crate) truncations: u64,
    /// Set by [`Log::close`]: later writes are refused, so nothing reaches the files after the
    /// clean-shutdown marker says they are closed.
    closed: bool,
    /// Coordinates cleaning passes and retention rounds (which work without the log's lock for
    /// a while) with taking the log out of service.
    maintenance: Arc<MaintenanceGate>,
    /// Which leader epoch started where.
    epochs: LeaderEpochFileCache,
    /// Idempotent producers' sequences (`<offset>.snapshot` files beside the segments).
    producer_state: ProducerStateManager,
}

impl Log {
    /// Opens (or creates) the log in `dir`, finishing interrupted deletions and compactions and
    /// recovering everything after the recovery point.
    pub fn open(
        dir: impl AsRef<Path>,
        config: LogConfig,
        options: LogOpenOptions,
        clock: SharedClock,
    ) -> Result<Self> {
        let dir = dir.as_ref().to_owned();
        // A new partition directory must survive a machine crash with its first segment.
        create_dir_durably(&dir)?;
        let sizing = sizing(&config);
        complete_interrupted_operations(&dir)?;
        let bases = segment_bases(&dir)?;
        let mut segments = BTreeMap::new();
        let mut truncated_at = None;
        let mut cut = Vec::new();
        for (i, &base) in bases.iter().enumerate() {
            if truncated_at.is_some() {
                // Data after a truncated segment follows a hole: it cannot be trusted.
                tracing::warn!(dir = %dir.display(), base, "removing segment after a truncated one");
                delete_segment_files(&dir, base)?;
                continue;
            }
            let next_base = bases.get(i + 1).copied();
            let recover =
                !options.clean_shutdown && next_base.is_none_or(|n| n > options.recovery_point);
            let (segment, truncated) = LogSegment::open(&dir, base, sizing, recover)?;
            if truncated > 0 {
                cut.push(base);
            }
            // Cut bytes leave a hole unless the segment still ends where the next one begins
            // (zeros written ahead and not cut before a crash, say).
            if truncated > 0 && next_base.is_some_and(|n| n != segment.next_offset()) {
                truncated_at = Some(base);
            }
            segments.insert(base, segment);
        }
        if segments.is_empty() {
            segments.insert(0, LogSegment::create(&dir, 0, sizing)?);
            sync_dir(&dir)?;
        } else if truncated_at.is_some() {
            // The segments removed after the hole stay removed: appends go on from the cut.
            sync_dir(&dir)?;
        }
        // Only now are torn bytes cut: were the cut on disk while segments after a hole still
        // were, a crash would leave a clean segment followed by data after the hole.
        for base in cut {
            if let Some(segment) = segments.get_mut(&base) {
                segment.finish_recovery()?;
            }
        }
        let log_start_offset = *segments.keys().next().unwrap_or(&0);
        let log_end_offset = segments.values().next_back().map_or(0, |s| s.next_offset());
        let now = clock.now_ms();
        let epochs = load_epochs(&dir, &segments, log_start_offset, log_end_offset)?;
        let group_commit_dir = dir.clone();
        let producer_state = ProducerStateManager::new(&dir, DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        let mut log = Log {
            dir,
            config,
            clock,
            segments,
            log_start_offset,
            log_end_offset,
            recovery_point: options.recovery_point.min(log_end_offset),
            group_commit: Arc::new(GroupCommit::new(0, &group_commit_dir)),
            unflushed_records: 0,
            last_flush_ms: now,
            active_created_ms: now,
            cleaner_checkpoint: log_start_offset,
            truncations: 0,
            closed: false,
            maintenance: Arc::default(),
            epochs,
            producer_state,
        };
        log.rebuild_producer_state()?;
        if let Some(offset) = read_restart_offset(&log.dir)? {
            // A full truncation was cut short by a crash: finish it, so the log restarts at the
            // offset it was restarting at, not at 0 or with part of its old segments.
            tracing::warn!(dir = %log.dir.display(), offset, "finishing a full truncation interrupted by a crash");
            log.truncate_fully_inner(offset)?;
        }
        log.apply_preallocation();
        // What recovery validated is now made durable, so the recovery point can move to the end.
        log.flush()?;
        Ok(log)
    }

    /// Appends batches from a producer: validates them, assigns offsets from the log end offset
    /// and stamps `leader_epoch`, patching `records` in place. Nothing is written unless every
    /// batch is valid.
    pub fn append_as_leader(
        &mut self,
        records: &mut [u8],
        leader_epoch: i32,
    ) -> Result<LogAppendInfo> {
        self.check_open()?;
        self.guarded(|log| log.append_as_leader_inner(records, leader_epoch))
    }

    fn append_as_leader_inner(
        &mut self,
        records: &mut [u8],
        leader_epoch: i32,
    ) -> Result<LogAppendInfo> {
        // Kafka bounds the batch as sent (`max.message.bytes`, checked below), not what it
        // decompresses to: a compressed batch that fits may hold more. Decompression has its
        // own, larger bound against decompression bombs.
        let max_decompressed = self
            .config
            .decompressed_batch_max_bytes
            .max(self.config.max_message_bytes);
        let opts = ValidationOptions {
            max_uncompressed_bytes: max_decompressed,
            producer_batch: true,
        };
        let mut infos = Vec::new();
        let mut headers: Vec<BatchHeader> = Vec::new();
        let mut record_count = 0i64;
        let mut max_timestamp = -1i64;
        for (index, batch) in batches(records).enumerate() {
            let batch = batch.map_err(|source| LogError::InvalidBatch { index, source })?;
            let size = batch.as_bytes().len();
            if size > self.config.max_message_bytes {
                return Err(LogError::MessageTooLarge {
                    size,
                    max: self.config.max_message_bytes,
                });
            }
            let summary = batch.validate(&opts).map_err(|source| match source {
                BatchError::DecompressedTooLarge { .. } => LogError::DecompressedTooLarge {
                    index,
                    max: max_decompressed,
                },
                source => LogError::InvalidBatch { index, source },
            })?;
            if self.config.cleanup_policy.compact && summary.has_null_key {
                return Err(LogError::KeylessRecordInCompactedLog { index });
            }
            if batch.header().timestamp_type() == TimestampType::CreateTime
                && self.config.message_timestamp_type == TimestampType::CreateTime
                && summary.record_count > 0
            {
                if summary.min_record_timestamp < 0
                    && !self.config.message_timestamp_missing_allowed
                {
                    return Err(LogError::MissingTimestamp {
                        index,
                        timestamp: summary.min_record_timestamp,
                    });
                }
                self.check_timestamps(
                    index,
                    summary.min_record_timestamp,
                    summary.max_record_timestamp,
                )?;
            }
            record_count += i64::from(summary.record_count);
            infos.push(BatchInfo::of(batch.header()));
            headers.push(*batch.header());
        }
        if infos.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        // Idempotent producers: duplicates, gaps and fenced epochs, before anything is written.
        let now = self.clock.now_ms();
        if let AppendCheck::Duplicate {
            first_offset,
            last_offset,
            max_timestamp,
        } = self.producer_state.check_append(&headers, now)?
        {
            let log_append_time = (self.config.message_timestamp_type
                == TimestampType::LogAppendTime)
                .then_some(max_timestamp);
            return Ok(LogAppendInfo {
                first_offset,
                last_offset,
                max_timestamp,
                log_append_time,
                record_count: 0,
                batch_count: 0,
                size_bytes: 0,
                duplicate: true,
            });
        }
        // All valid: assign offsets and epochs in place.
        let log_append_time =
            (self.config.message_timestamp_type == TimestampType::LogAppendTime).then_some(now);
        let mut next = self.log_end_offset;
        let mut pos = 0usize;
        for (info, header) in infos.iter_mut().zip(headers.iter_mut()) {
            let bytes = &mut records[pos..pos + info.size];
            set_base_offset(bytes, next);
            set_partition_leader_epoch(bytes, leader_epoch);
            if let Some(now) = log_append_time {
                set_log_append_time(bytes, now);
                info.max_timestamp = now;
            }
            let delta = info.last_offset - info.base_offset;
            info.base_offset = next;
            info.last_offset = next + delta;
            next = info.last_offset + 1;
            max_timestamp = max_timestamp.max(info.max_timestamp);
            header.base_offset = info.base_offset;
            header.max_timestamp = info.max_timestamp;
            pos += info.size;
        }
        // The epoch's start is checkpointed before its records are written (as Kafka assigns
        // it first): group commit may fsync the records at any moment after they are written,
        // and after a crash a record on disk must never belong to an epoch the cache lacks.
        self.epochs.assign(leader_epoch, infos[0].base_offset)?;
        self.append_batches(&records[..pos], &infos, max_timestamp)?;
        self.producer_state.apply(&headers, now);
        Ok(LogAppendInfo {
            first_offset: infos[0].base_offset,
            last_offset: next - 1,
            max_timestamp,
            log_append_time,
            record_count,
            batch_count: infos.len(),
            size_bytes: pos,
            duplicate: false,
        })
    }

    /// Appends batches copied from the partition leader, offsets already assigned. They must
    /// continue the log (base offset ≥ log end offset, increasing) and pass CRC and framing checks.
    pub fn append_as_follower(&mut self, records: &[u8]) -> Result<LogAppendInfo> {
        self.check_open()?;
        self.guarded(|log| log.append_as_follower_inner(records))
    }

    fn append_as_follower_inner(&mut self, records: &[u8]) -> Result<LogAppendInfo> {
        let opts = ValidationOptions {
            max_uncompressed_bytes: usize::MAX,
            producer_batch: false,
        };
        let mut infos: Vec<BatchInfo> = Vec::new();
        let mut record_count = 0i64;
        let mut expected = self.log_end_offset;
        let mut pos = 0;
        let mut epoch_starts = Vec::new();
        let mut headers = Vec::new();
        for (index, batch) in batches(records).enumerate() {
            let batch = batch.map_err(|source| LogError::InvalidBatch { index, source })?;
            batch
                .verify_crc()
                .map_err(|source| LogError::InvalidBatch { index, source })?;
            let h = batch.header();
            if h.base_offset < expected {
                return Err(LogError::NonMonotonicOffset {
                    base_offset: h.base_offset,
                    log_end_offset: expected,
                });
            }
            // Full record validation costs a decompression; the CRC already proves the leader's
            // bytes arrived intact, so only check framing when cheap (uncompressed).
            if h.compression()
                .map_err(|source| LogError::InvalidBatch { index, source })?
                == rill_protocol::record_batch::Compression::None
            {
                batch
                    .validate(&opts)
                    .map_err(|source| LogError::InvalidBatch { index, source })?;
            }
            record_count += i64::from(h.record_count);
            expected = h.next_offset();
            pos += batch.as_bytes().len();
            epoch_starts.push((h.partition_leader_epoch, h.base_offset));
            infos.push(BatchInfo::of(h));
            headers.push(*h);
        }
        let (Some(first), Some(last)) = (infos.first(), infos.last()) else {
            return Err(LogError::EmptyAppend);
        };
        let (first_offset, last_offset) = (first.base_offset, last.last_offset);
        let max_timestamp = infos.iter().map(|i| i.max_timestamp).max().unwrap_or(-1);
        // Epoch starts first, as for the leader's appends.
        for (epoch, start) in epoch_starts {
            self.epochs.assign(epoch, start)?;
        }
        self.append_batches(&records[..pos], &infos, max_timestamp)?;
        // Followers copy the leader's decisions: state updated without checks.
        self.producer_state.apply(&headers, self.clock.now_ms());
        Ok(LogAppendInfo {
            first_offset,
            last_offset,
            max_timestamp,
            log_append_time: None,
            record_count,
            batch_count: infos.len(),
            size_bytes: pos,
            duplicate: false,
        })
    }

    /// `message.timestamp.before.max.ms` / `after.max.ms` against the log's clock.
    fn check_timestamps(&self, index: usize, min: i64, max: i64) -> Result<()> {
        let now = self.clock.now_ms();
        let (before, after) = (
            self.config.message_timestamp_before_max_ms,
            self.config.message_timestamp_after_max_ms,
        );
        if now.saturating_sub(min) > before {
            return Err(LogError::InvalidTimestamp {
                index,
                timestamp: min,
                now,
                direction: "before",
                limit_ms: before,
            });
        }
        if max.saturating_sub(now) > after {
            return Err(LogError::InvalidTimestamp {
                index,
                timestamp: max,
                now,
                direction: "after",
                limit_ms: after,
            });
        }
        Ok(())
    }

    fn append_batches(
        &mut self,
        bytes: &[u8],
        infos: &[BatchInfo],
        max_timestamp: i64,
    ) -> Result<()> {
        let first = infos[0].base_offset;
        let last = infos[infos.len() - 1].last_offset;
        self.maybe_roll(bytes.len(), first, last, max_timestamp)?;
        let segment = self.active_segment_mut();
        segment.append(bytes, infos)?;
        let file = Arc::clone(segment.file());
        self.log_end_offset = last + 1;
        self.unflushed_records += last - first + 1;
        self.group_commit.appended(&file, self.log_end_offset);
        Ok(())
    }

    /// Rolls when the append would not fit the active segment: size, age (`segment.ms`, judged
    /// as Kafka does by record time: the incoming batch's max timestamp against the segment's
    /// first batch, so producers with skewed clocks cannot force a roll per batch; by the clock
    /// since the segment was made when that first batch has no timestamp), full indexes, or
    /// offsets too far from the segment's base for 32-bit relative offsets.
    fn maybe_roll(
        &mut self,
        size: usize,
        first_offset: i64,
        last_offset: i64,
        max_timestamp: i64,
    ) -> Result<()> {
        let seg = self.active_segment();
        let full = seg.size() > 0 && seg.size() + size as u64 > self.config.segment_bytes;
        let waited = match seg.rolling_timestamp() {
            Some(t) if t >= 0 => max_timestamp.saturating_sub(t),
            _ => self.clock.now_ms().saturating_sub(self.active_created_ms),
        };
        let old = seg.size() > 0 && waited > self.config.segment_ms;
        let overflow =
            last_offset - seg.base_offset() > i32::MAX as i64 || first_offset < seg.base_offset();
        if full || old || seg.indexes_full() || overflow {
            self.roll_at(first_offset.max(self.log_end_offset))?;
        }
        Ok(())
    }

    /// Starts a new active segment at the log end offset (no-op if the active one is empty).
    pub fn roll(&mut self) -> Result<()> {
        self.check_open()?;
        self.guarded(Log::roll_inner)
    }

    fn roll_inner(&mut self) -> Result<()> {
        if self.active_segment().size() == 0 {
            return Ok(());
        }
        self.roll_at(self.log_end_offset)
    }

    fn roll_at(&mut self, base: i64) -> Result<()> {
        if self.active_segment().size() == 0 {
            // An empty active segment is simply replaced.
            let old_base = self.active_segment().base_offset();
            if old_base == base {
                return Ok(());
            }
            self.segments.remove(&old_base);
            delete_segment_files(&self.dir, old_base)?;
        } else {
            self.active_segment_mut().on_become_inactive()?;
            // Kafka snapshots producer state at every roll, so recovery replays one segment.
            let (end, now) = (self.log_end_offset, self.clock.now_ms());
            self.producer_state.take_snapshot(end, now)?;
        }
        let segment = LogSegment::create(&self.dir, base, sizing(&self.config))?;
        self.segments.insert(base, segment);
        self.active_created_ms = self.clock.now_ms();
        sync_dir(&self.dir)?;
        self.apply_preallocation();
        Ok(())
    }

    /// Whole batches from `offset` on, at most `max_bytes` of them (but at least one batch when
    /// `min_one`, so a large batch never stalls a reader), leaving out batches whose base offset
    /// is ≥ `max_offset` (the high watermark for consumers). `Ok(None)` when nothing is readable
    /// yet; `OffsetOutOfRange` outside [log start, log end].
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: Option<i64>,
        min_one: bool,
    ) -> Result<Option<Bytes>> {
        // An offline log may be half way through an operation that failed (segments cut or
        // deleted on disk but not yet in memory, or the reverse): it serves nothing.
        self.group_commit.check()?;
        if offset < self.log_start_offset || offset > self.log_end_offset {
            return Err(LogError::OffsetOutOfRange {
                offset,
                log_start_offset: self.log_start_offset,
                log_end_offset: self.log_end_offset,
            });
        }
        let max_offset = max_offset
            .unwrap_or(self.log_end_offset)
            .min(self.log_end_offset);
        if offset >= max_offset {
            return Ok(None);
        }
        let start = self
            .segments
            .range(..=offset)
            .next_back()
            .map_or(self.log_start_offset, |(b, _)| *b);
        for segment in self.segments.range(start..).map(|(_, s)| s) {
            if segment.base_offset() >= max_offset {
                break;
            }
            if let Some(bytes) = segment.read(offset, max_bytes, max_offset, min_one)? {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }

    /// [`Log::read`] from the page cache only: `Err(LogError::WouldBlock)`, having read nothing,
    /// when it would wait for the disk or for a write holding the segment, or copy more than is
    /// left of `copy_budget` (which it takes the bytes it copies from: a first batch larger than
    /// `max_bytes` is still read whole, and the read starts at an index entry up to
    /// `index.interval.bytes` before `offset` and may reach past `max_offset`). For async
    /// callers: data just written is read in microseconds on the calling thread, and only the
    /// rest goes to a thread that may block.
    pub fn read_cached(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: Option<i64>,
        min_one: bool,
        copy_budget: &mut usize,
    ) -> Result<Option<Bytes>> {
        crate::segment_file::without_waiting(copy_budget, || {
            self.read(offset, max_bytes, max_offset, min_one)
        })
    }

    /// Offset and timestamp of the first record whose timestamp is ≥ `timestamp`, or `None` when
    /// every record is older.
    pub fn offset_for_timestamp(&self, timestamp: i64) -> Result<Option<(i64, i64)>> {
        for segment in self.segments.values() {
            if let Some(found) =
                segment.find_offset_by_timestamp(timestamp, self.log_start_offset)?
            {
                return Ok(Some(found));
            }
        }
        Ok(None)
    }

    /// Removes every record at or after `offset` (a follower whose log diverged from the
    /// leader's). The cut is at a batch boundary; the log end offset becomes ≤ `offset`. The cut
    /// is fsynced before this returns, so truncated batches cannot come back after a machine
    /// crash, and the recovery point drops to the cut. The recovery-point checkpoint on disk may
    /// still be higher: persist it before anything is appended past the cut
    /// ([`crate::LogManager::truncate_to`] does both).
    pub fn truncate_to(&mut self, offset: i64) -> Result<()> {
        self.check_open()?;
        self.guarded(|log| log.truncate_to_inner(offset))
    }

    fn truncate_to_inner(&mut self, offset: i64) -> Result<()> {
        if offset >= self.log_end_offset {
            return Ok(());
        }
        if offset <= self.log_start_offset {
            return self.truncate_fully_and_start_at(offset);
        }
        self.truncations += 1;
        let doomed: Vec<i64> = self.segments.range(offset..).map(|(b, _)| *b).collect();
        // Every directory change so far is made durable before the cut is: after a crash the
        // log is then a prefix of what it was, never with a hole — the later segments' unlinks,
        // and a cleaner swap's renames not yet fsynced (`Swapped::finish`), cannot be lost
        // while the cut survives. Each removal's own fsync does it, or this one.
        if doomed.is_empty() {
            sync_dir(&self.dir)?;
        }
        // Newest first, each removal durable before the next: whatever a crash keeps of them
        // is the oldest ones, never one behind a hole.
        for base in doomed.into_iter().rev() {
            delete_segment_files(&self.dir, base)?;
            sync_dir(&self.dir)?;
            self.segments.remove(&base);
        }
        let seg = self.active_segment_mut();
        seg.truncate_to(offset)?;
        let end = seg.next_offset().min(offset);
        seg.set_next_offset(end);
        // The new active segment may be one that `trim` turned it off for.
        self.apply_preallocation();
        self.log_end_offset = end;
        self.recovery_point = self.recovery_point.min(end);
        self.cleaner_checkpoint = self.cleaner_checkpoint.min(end);
        self.group_commit.truncated(end);
        self.epochs.truncate_from_end(end)?;
        sync_dir(&self.dir)?;
        // Snapshots past the cut go; the state is rebuilt from the newest one at or below it.
        self.rebuild_producer_state()
    }

    /// Deletes all data and restarts the log, empty, at `offset` (a follower too far behind).
    pub fn truncate_fully_and_start_at(&mut self, offset: i64) -> Result<()> {
        self.check_open()?;
        self.guarded(|log| log.truncate_fully_inner(offset))
    }

    fn truncate_fully_inner(&mut self, offset: i64) -> Result<()> {
        self.truncations += 1;
        // Durable before anything is deleted: a crash from here on leaves the marker, and the
        // next open finishes the restart at `offset` (a log emptied by the deletions below
        // would otherwise restart at 0).
        let marker = self.dir.join(RESTART_OFFSET_FILE);
        crate::checkpoint::write_atomically(&marker, format!("{offset}\n").as_bytes())?;
        let bases: Vec<i64> = self.segments.keys().copied().collect();
        // Newest first, each removal durable before the next, as in `truncate_to`; so the old
        // segments are gone for good before the new one exists: a crash in between can leave
        // the log empty, never old segments beside the new one (a gap below it).
        for base in bases.into_iter().rev() {
            delete_segment_files(&self.dir, base)?;
            sync_dir(&self.dir)?;
            self.segments.remove(&base);
        }
        self.segments.insert(
            offset,
            LogSegment::create(&self.dir, offset, sizing(&self.config))?,
        );
        self.active_created_ms = self.clock.now_ms();
        sync_dir(&self.dir)?;
        self.apply_preallocation();
        self.log_start_offset = offset;
        self.log_end_offset = offset;
        self.recovery_point = offset;
        self.cleaner_checkpoint = offset;
        self.group_commit.truncated(offset);
        self.group_commit.flushed(offset);
        self.producer_state.clear()?;
        self.epochs.clear()?;
        // Gone for good before anything is appended at `offset`: a marker left behind would
        // make the next open throw the new records away.
        remove_if_exists(&marker)?;
        sync_dir(&self.dir)
    }

    /// Moves buffered appends to the page cache (no fsync), so they survive a process crash.
    pub fn write_out(&self) -> Result<()> {
        self.group_commit.check()?;
        let segment = self.active_segment();
        let result = segment.file().write_out().at(segment.log_path());
        self.note_failure(result)
    }

    /// fsyncs every segment with data after the recovery point, data then indexes, and moves the
    /// recovery point to the log end offset. A failure takes the log offline (see
    /// [`GroupCommit`]): the recovery point stays where fsyncs really got.
    pub fn flush(&mut self) -> Result<()> {
        self.guarded(Log::flush_inner)
    }

    fn flush_inner(&mut self) -> Result<()> {
        let end = self.log_end_offset;
        let recovery_point = self.recovery_point();
        let from = self
            .segments
            .range(..=recovery_point)
            .next_back()
            .map_or(i64::MIN, |(b, _)| *b);
        for segment in self.segments.range_mut(from..).map(|(_, s)| s) {
            segment.flush()?;
        }
        self.recovery_point = end;
        self.unflushed_records = 0;
        self.last_flush_ms = self.clock.now_ms();
        self.group_commit.flushed(end);
        Ok(())
    }

    /// True when `flush.messages` records are unflushed: Kafka flushes then, in the append
    /// (interval flush policy); `flush.ms` is the background task's.
    pub fn flush_messages_due(&self) -> bool {
        self.unflushed_records > 0 && self.unflushed_records >= self.config.flush_messages
    }

    /// True when `flush.messages` or `flush.ms` says a flush is due (interval flush policy).
    pub fn flush_due(&self) -> bool {
        self.unflushed_records > 0
            && (self.unflushed_records >= self.config.flush_messages
                || self.clock.now_ms().saturating_sub(self.last_flush_ms) >= self.config.flush_ms)
    }

    /// Applies `retention.ms` and `retention.bytes` (when `cleanup.policy` includes delete),
    /// deleting whole segments, oldest first, that end at or below `upper_bound` (the high
    /// watermark: unreplicated data is never deleted). Returns the deleted segments.
    pub fn delete_old_segments(&mut self, upper_bound: i64) -> Result<Vec<SegmentInfo>> {
        let (deleted, doomed) = self.delete_old_segments_deferred(upper_bound)?;
        for path in doomed {
            remove_if_exists(&path)?;
        }
        Ok(deleted)
    }

    /// [`Log::delete_old_segments`], leaving the deleted segments' files (renamed `.deleted`,
    /// which the log no longer uses and [`Log::open`] removes) for the caller to remove once it
    /// released the log: unlinking a large file takes a while, and appends wait for the log.
    pub(crate) fn delete_old_segments_deferred(
        &mut self,
        upper_bound: i64,
    ) -> Result<(Vec<SegmentInfo>, Vec<PathBuf>)> {
        self.guarded(|log| log.delete_old_segments_inner(upper_bound))
    }

    fn delete_old_segments_inner(
        &mut self,
        upper_bound: i64,
    ) -> Result<(Vec<SegmentInfo>, Vec<PathBuf>)> {
        if !self.config.cleanup_policy.delete {
            return Ok((Vec::new(), Vec::new()));
        }
        let now = self.clock.now_ms();
        let retention_ms = self.config.retention_ms;
        let mut excess = if self.config.retention_bytes >= 0 {
            self.size_bytes() as i64 - self.config.retention_bytes
        } else {
            0
        };
        let active = self.active_segment().base_offset();
        let mut doomed = Vec::new();
        for segment in self.segments.values() {
            let is_active = segment.base_offset() == active;
            if segment.size() == 0 {
                // An empty segment (left by the cleaner) holds nothing to keep.
                if is_active {
                    break;
                }
                doomed.push(segment.base_offset());
                continue;
            }
            if segment.next_offset() > upper_bound {
                break;
            }
            let expired =
                retention_ms >= 0 && now.saturating_sub(segment.largest_timestamp()) > retention_ms;
            let over_size = !is_active && excess > 0 && excess - segment.size() as i64 >= 0;
            if !(expired || over_size) {
                break;
            }
            excess -= segment.size() as i64;
            doomed.push(segment.base_offset());
        }
        if doomed.last() == Some(&active) {
            self.roll()?;
        }
        let mut deleted = Vec::new();
        let mut renamed = Vec::new();
        // Oldest first, each rename durable before the next: whatever a crash keeps of them
        // is the newest ones, never a segment behind a hole.
        for base in doomed {
            if let Some(mut segment) = self.segments.remove(&base) {
                deleted.push(segment.info());
                renamed.extend(segment.rename_files(DELETED_SUFFIX)?);
                sync_dir(&self.dir)?;
            }
        }
        if !deleted.is_empty() {
            self.log_start_offset = self
                .log_start_offset
                .max(*self.segments.keys().next().unwrap_or(&self.log_end_offset));
            self.cleaner_checkpoint = self.cleaner_checkpoint.max(self.log_start_offset);
            self.epochs.truncate_from_start(self.log_start_offset)?;
            self.producer_state.truncate_head(self.log_start_offset)?;
            sync_dir(&self.dir)?;
            tracing::info!(dir = %self.dir.display(), segments = deleted.len(), log_start_offset = self.log_start_offset, "deleted segments by retention");
        }
        Ok((deleted, renamed))
    }

    /// Flushes everything and records final index entries: after `close`, reopening with
    /// `clean_shutdown` needs no recovery. Writes after it are refused (`LogError::Closed`).
    pub fn close(&mut self) -> Result<()> {
        self.guarded(|log| {
            log.closed = true;
            log.active_segment_mut().on_become_inactive()?;
            log.flush_inner()?;
            let (end, now) = (log.log_end_offset, log.clock.now_ms());
            log.producer_state.take_snapshot(end, now)
        })
    }

    /// Removes the log and its directory (topic deletion), durably (the parent is fsynced).
    pub fn delete(self) -> Result<()> {
        let dir = self.dir.clone();
        drop(self);
        remove_dir_durably(&dir)
    }

    /// Loads the newest producer state snapshot at or below the log end offset (deleting newer
    /// ones) and replays the batches after it (all of them when there is none).
    fn rebuild_producer_state(&mut self) -> Result<()> {
        let now = self.clock.now_ms();
        let from = self
            .producer_state
            .load(self.log_end_offset)?
            .map_or(self.log_start_offset, |o| o.max(self.log_start_offset));
        for segment in self.segments.values() {
            if segment.next_offset() <= from || segment.size() == 0 {
                continue;
            }
            let headers: Vec<BatchHeader> = segment
                .batch_positions()?
                .into_iter()
                .map(|(_, h)| h)
                .filter(|h| h.base_offset >= from)
                .collect();
            self.producer_state.apply(&headers, now);
        }
        self.producer_state.truncate_head(self.log_start_offset)
    }

    /// The idempotent producers' state (epochs, last sequences and offsets).
    pub fn producer_state(&self) -> &ProducerStateManager {
        &self.producer_state
    }

    /// Sets `producer.id.expiration.ms`: producers idle this long are forgotten (their next batch
    /// must start a new epoch at sequence 0). Kafka's default is [`DEFAULT_PRODUCER_ID_EXPIRATION_MS`].
    pub fn set_producer_id_expiration_ms(&mut self, ms: i64) {
        self.producer_state.set_expiration_ms(ms);
    }

    /// Forgets producers idle for `producer.id.expiration.ms` (also done at every snapshot); for
    /// a periodic broker task (Kafka's `producer.id.expiration.check.interval.ms`).
    pub fn remove_expired_producers(&mut self) {
        let now = self.clock.now_ms();
        self.producer_state.remove_expired_producers(now);
    }

    /// Runs a mutation of the log: refused once the log failed; an I/O failure during it takes
    /// the log offline (see [`GroupCommit`]).
    pub(crate) fn guarded<T>(&mut self, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        self.group_commit.check()?;
        let result = f(self);
        self.note_failure(result)
    }

    /// `Err(Closed)` after [`Log::close`].
    fn check_open(&self) -> Result<()> {
        if self.closed {
            return Err(LogError::Closed {
                dir: self.dir.clone(),
            });
        }
        Ok(())
    }

    fn note_failure<T>(&self, result: Result<T>) -> Result<T> {
        if let Err(e) = &result
            && e.is_log_dir_failure()
        {
            self.group_commit.fail(e.to_string());
        }
        result
    }

    /// True once a write or fsync of this log failed: it refuses writes and its durable offset
    /// and recovery point are frozen until it is reopened (its directory should go offline).
    pub fn is_offline(&self) -> bool {
        self.group_commit.is_failed()
    }

    /// The gate between this log's background work and taking it out of service.
    pub(crate) fn maintenance(&self) -> Arc<MaintenanceGate> {
        Arc::clone(&self.maintenance)
    }

    /// First offset in the log.
    pub fn log_start_offset(&self) -> i64 {
        self.log_start_offset
    }

    /// Offset the next appended record gets.
    pub fn log_end_offset(&self) -> i64 {
        self.log_end_offset
    }

    /// Everything below this offset is known to be on disk and valid: the last full flush, or
    /// what group commit has fsynced since (its durable offset), whichever is further. This is
    /// what `LogManager::checkpoint` records; recovery re-validates only what lies after it.
    /// Trusting segments below it needs only their `.log` data fsynced: their indexes were
    /// fsynced when they were rolled, and any index is checked (per-entry CRC, last entry
    /// against the log) and rebuilt when wrong.
    pub fn recovery_point(&self) -> i64 {
        self.recovery_point
            .max(self.group_commit.durable_offset())
            .min(self.log_end_offset)
    }

    /// The newest leader epoch this log has data from.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.epochs.latest_epoch()
    }

    /// For a follower at `epoch`: the largest epoch ≤ `epoch` in this log and where it ended
    /// (Kafka's OffsetsForLeaderEpoch), to find where two logs diverged.
    pub fn end_offset_for_epoch(&self, epoch: i32) -> Option<(i32, i64)> {
        self.epochs.end_offset_for(epoch, self.log_end_offset)
    }

    /// The epoch history, oldest first.
    pub fn leader_epochs(&self) -> &[EpochEntry] {
        self.epochs.entries()
    }

    /// The group-commit handle: wait for durability without holding the log.
    pub fn group_commit(&self) -> Arc<GroupCommit> {
        Arc::clone(&self.group_commit)
    }

    /// Total size of all segments.
    pub fn size_bytes(&self) -> u64 {
        self.segments.values().map(LogSegment::size).sum()
    }

    /// The segments, oldest first.
    pub fn segments(&self) -> Vec<SegmentInfo> {
        self.segments.values().map(LogSegment::info).collect()
    }

    /// The log's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The log's config.
    pub fn config(&self) -> &LogConfig {
        &self.config
    }

    /// Replaces the config (topic config change); takes effect on the next append or cleanup.
    pub fn set_config(&mut self, config: LogConfig) {
        self.config = config;
        self.apply_preallocation();
    }

    /// Starts or stops writing zeros ahead of the active segment, as `preallocate` says.
    fn apply_preallocation(&self) {
        // No segment at all only after a full truncation failed (the log is offline).
        if let Some(active) = self.segments.values().next_back() {
            active.set_preallocation(self.config.preallocate, self.config.segment_bytes);
        }
    }

    pub(crate) fn active_segment(&self) -> &LogSegment {
        self.segments
            .values()
            .next_back()
            .expect("a log always has an active segment")
    }

    fn active_segment_mut(&mut self) -> &mut LogSegment {
        self.segments
            .values_mut()
            .next_back()
            .expect("a log always has an active segment")
    }
}

/// Loads the epoch checkpoint and makes it agree with the recovered log; rebuilds it from the
/// batch headers when it is missing (with data present) or damaged.
fn load_epochs(
    dir: &Path,
    segments: &BTreeMap<i64, LogSegment>,
    start: i64,
    end: i64,
) -> Result<LeaderEpochFileCache> {
    let cache = match LeaderEpochFileCache::open(dir) {
        Ok(c) if !(c.entries().is_empty() && end > start) => Some(c),
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), error = %e, "rebuilding the leader epoch checkpoint from the log");
            None
        }
    };
    let mut cache = match cache {
        Some(c) => c,
        None => {
            crate::log_segment::remove_if_exists(
                &dir.join(crate::leader_epoch_cache::LEADER_EPOCH_CHECKPOINT),
            )?;
            let mut c = LeaderEpochFileCache::open(dir)?;
            for segment in segments.values() {
                for (_, h) in segment.batch_positions()? {
                    c.assign(h.partition_leader_epoch, h.base_offset)?;
                }
            }
            c
        }
    };
    cache.truncate_from_end(end)?;
    cache.truncate_from_start(start)?;
    Ok(cache)
}

pub(crate) fn sizing(config: &LogConfig) -> IndexSizing {
    IndexSizing {
        index_bytes: config.segment_index_bytes,
        interval_bytes: config.index_interval_bytes,
    }
}

/// Base offsets of the `.log` files in `dir`, ascending.
fn segment_bases(dir: &Path) -> Result<Vec<i64>> {
    let mut bases = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name();
        let name = name.to_string_lossy();
        if let Some(base) = name.strip_suffix(LOG_SUFFIX).and_then(parse_base) {
            bases.push(base);
        }
    }
    bases.sort_unstable();
    Ok(bases)
}

fn parse_base(stem: &str) -> Option<i64> {
    (stem.len() == 20 && stem.bytes().all(|b| b.is_ascii_digit()))
        .then(|| stem.parse().ok())
        .flatten()
}

/// Finishes what a crash interrupted: removes `.deleted` and `.cleaned` leftovers, and completes
/// any `.swap` (a cleaned segment that was fully written): the segments it replaces are removed
/// and it takes its final name. Indexes of swapped segments are rebuilt on open.
fn complete_interrupted_operations(dir: &Path) -> Result<()> {
    let mut swaps = Vec::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let path = entry.at(dir)?.path();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if name.ends_with(DELETED_SUFFIX) || name.ends_with(CLEANED_SUFFIX) {
            remove_if_exists(&path)?;
        } else if let Some(stem) = name.strip_suffix(SWAP_SUFFIX) {
            if let Some(base) = stem.strip_suffix(LOG_SUFFIX).and_then(parse_base) {
                swaps.push(base);
            } else {
                remove_if_exists(&path)?;
            }
        }
    }
    swaps.sort_unstable();
    for base in swaps {
        let swap = segment_file(dir, base, &format!("{LOG_SUFFIX}{SWAP_SUFFIX}"));
        let end = crate::log_cleaner::swap_end_offset(&swap)?;
        for old in segment_bases(dir)? {
            if old >= base && old < end {
                delete_segment_files(dir, old)?;
            }
        }
        // As in the live swap: the old segments are gone for good before the new one takes
        // their place, or a crash could leave both, holding the same offsets.
        sync_dir(dir)?;
        crate::fsio::rename(&swap, &segment_file(dir, base, LOG_SUFFIX)).at(&swap)?;
        tracing::info!(dir = %dir.display(), base, "completed an interrupted compaction swap");
    }
    sync_dir(dir)
}

/// Removes a segment's `.log`, `.index` and `.timeindex`.
pub(crate) fn delete_segment_files(dir: &Path, base: i64) -> Result<()> {
    for suffix in [LOG_SUFFIX, INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
        remove_if_exists(&segment_file(dir, base, suffix))?;
    }
    Ok(())
}

/// Creates `dir` and any missing parents, fsyncing the parent of each directory it creates,
/// so the new directories survive a machine crash with what is then written into them (as
/// Kafka flushes a new log dir's parent).
pub(crate) fn create_dir_durably(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|d| !d.exists()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    std::fs::create_dir_all(dir).at(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = parent_dir(created) {
            sync_dir(parent)?;
        }
    }
    Ok(())
}

/// The directory holding `path`'s entry: `.` for a relative single name (whose `parent()` is
/// empty), `None` for a root.
pub(crate) fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    })
}

/// Removes a directory tree and fsyncs its parent, so the removal survives a machine crash.
pub(crate) fn remove_dir_durably(dir: &Path) -> Result<()> {
    crate::fsio::remove_dir_all(dir).at(dir)?;
    if let Some(parent) = parent_dir(dir) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsyncs a directory so renames and creations in it are durable.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    crate::fsio::sync_dir(dir).at(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relative single-name log dir (`log.dirs=data`) lives in the working directory: that is
    /// the directory to fsync for its entry, not none.
    #[test]
    fn the_parent_of_a_single_name_is_the_working_directory() {
        assert_eq!(parent_dir(Path::new("data")), Some(Path::new(".")));
        assert_eq!(parent_dir(Path::new("a/data")), Some(Path::new("a")));
        assert_eq!(parent_dir(Path::new("/var/rill")), Some(Path::new("/var")));
        assert_eq!(parent_dir(Path::new("/")), None);
    }
}
