//! One segment of a partition log: a `.log` file of whole record batches plus its sparse
//! `.index` (offset → position) and `.timeindex` (timestamp → offset).
//!
//! Segments are named by their base offset, zero-padded to 20 digits, as in Kafka. Only the last
//! (active) segment of a log is appended to; the others are immutable until deleted by retention
//! or replaced by the cleaner.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use rill_protocol::record_batch::{
    BatchHeader, LOG_OVERHEAD, MAGIC_V2, RECORD_BATCH_OVERHEAD, RecordBatch,
};

use crate::error::{IoContext, Result};
use crate::index::{OffsetEntry, OffsetIndex, TimeEntry, TimeIndex};
use crate::segment_file::SegmentFile;

/// Suffix of segment data files.
pub const LOG_SUFFIX: &str = ".log";
/// Suffix of offset index files.
pub const INDEX_SUFFIX: &str = ".index";
/// Suffix of time index files.
pub const TIME_INDEX_SUFFIX: &str = ".timeindex";

/// `<dir>/<base offset, 20 digits><suffix>`.
pub fn segment_file(dir: &Path, base_offset: i64, suffix: &str) -> PathBuf {
    dir.join(format!("{base_offset:020}{suffix}"))
}

/// What the log knows about a batch it is appending.
#[derive(Clone, Copy, Debug)]
pub(crate) struct BatchInfo {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub size: usize,
}

impl BatchInfo {
    pub fn of(h: &BatchHeader) -> Self {
        BatchInfo {
            base_offset: h.base_offset,
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
            size: h.total_size(),
        }
    }
}

/// A public summary of a segment, for operators and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SegmentInfo {
    /// First offset the segment may hold.
    pub base_offset: i64,
    /// Offset after its last batch (its base offset when empty).
    pub next_offset: i64,
    /// Size of the `.log` file in bytes.
    pub size_bytes: u64,
    /// Largest record timestamp in it, or -1 when empty.
    pub max_timestamp: i64,
}

/// A segment: the `.log` file and its indexes.
#[derive(Debug)]
pub struct LogSegment {
    base_offset: i64,
    dir: PathBuf,
    file: Arc<SegmentFile>,
    size: u64,
    offset_index: OffsetIndex,
    time_index: TimeIndex,
    index_interval_bytes: u64,
    bytes_since_last_index_entry: u64,
    max_timestamp: i64,
    offset_of_max_timestamp: i64,
    next_offset: i64,
    /// Max timestamp of the first batch: `segment.ms` counts from here.
    rolling_timestamp: Option<i64>,
    /// Where a recovery found the data invalid: the file still holds the bytes from here on
    /// until [`Self::finish_recovery`] cuts them (see [`Self::open`]).
    torn_from: Option<u64>,
}

/// Index sizing shared by a log's segments.
#[derive(Clone, Copy, Debug)]
pub(crate) struct IndexSizing {
    pub index_bytes: u64,
    pub interval_bytes: u64,
}

impl Drop for LogSegment {
    /// A log dropped without `close` (a crash in tests, a log set aside) must not have zeros
    /// written into its file afterwards, where a reopened log may already have appended.
    fn drop(&mut self) {
        self.file.set_preallocation(false, 0);
    }
}

impl LogSegment {
    /// Creates a new, empty segment (fails if its `.log` file exists).
    pub(crate) fn create(dir: &Path, base_offset: i64, sizing: IndexSizing) -> Result<Self> {
        let path = segment_file(dir, base_offset, LOG_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        // Stale indexes of an earlier segment with the same name must not survive.
        for suffix in [INDEX_SUFFIX, TIME_INDEX_SUFFIX] {
            remove_if_exists(&segment_file(dir, base_offset, suffix))?;
        }
        Ok(Self::new(dir, base_offset, file, 0, sizing))
    }

    fn new(dir: &Path, base_offset: i64, file: File, file_len: u64, sizing: IndexSizing) -> Self {
        LogSegment {
            base_offset,
            dir: dir.to_owned(),
            file: Arc::new(SegmentFile::new(
                file,
                segment_file(dir, base_offset, LOG_SUFFIX),
                file_len,
            )),
            size: 0,
            offset_index: OffsetIndex::empty(
                segment_file(dir, base_offset, INDEX_SUFFIX),
                sizing.index_bytes,
            ),
            time_index: TimeIndex::empty(
                segment_file(dir, base_offset, TIME_INDEX_SUFFIX),
                sizing.index_bytes,
            ),
            index_interval_bytes: sizing.interval_bytes,
            bytes_since_last_index_entry: 0,
            max_timestamp: -1,
            offset_of_max_timestamp: base_offset,
            next_offset: base_offset,
            rolling_timestamp: None,
            torn_from: None,
        }
    }

    /// Opens an existing segment. With `recover`, every batch is re-validated (CRC and offsets)
    /// up to the first bad one and the indexes rebuilt; otherwise the indexes are loaded (and
    /// rebuilt the same way only if missing or corrupt) and only the tail is scanned.
    /// Returns the segment and the number of bytes to truncate. Those bytes are still in the
    /// file, untouched: the caller first removes what must go with them (the segments after a
    /// hole) durably, then cuts them with [`Self::finish_recovery`] before anything else uses
    /// the segment. A cut made earlier could reach the disk (a journal commit) while the
    /// later segments survive a crash, behind a hole.
    pub(crate) fn open(
        dir: &Path,
        base_offset: i64,
        sizing: IndexSizing,
        recover: bool,
    ) -> Result<(Self, u64)> {
        let path = segment_file(dir, base_offset, LOG_SUFFIX);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .at(&path)?;
        let size = file.metadata().at(&path)?.len();
        let mut seg = Self::new(dir, base_offset, file, size, sizing);
        seg.size = size;
        if recover {
            let truncated = seg.recover()?;
            return Ok((seg, truncated));
        }
        let max_rel = (size as i64).min(u32::MAX as i64);
        let offset_index = OffsetIndex::load(
            seg.offset_index.path().to_owned(),
            sizing.index_bytes,
            |e| i64::from(e.position) < max_rel,
        )?;
        let time_index =
            TimeIndex::load(seg.time_index.path().to_owned(), sizing.index_bytes, |_| {
                true
            })?;
        match (offset_index, time_index) {
            (Some(oi), Some(ti)) if seg.index_matches_log(&oi)? => {
                seg.offset_index = oi;
                seg.time_index = ti;
                if let Some(last) = seg.time_index.last() {
                    seg.max_timestamp = last.timestamp;
                    seg.offset_of_max_timestamp = base_offset + i64::from(last.relative_offset);
                }
                seg.scan_tail()?;
                Ok((seg, 0))
            }
            _ => {
                tracing::warn!(segment = %path.display(), "index missing or corrupt; rebuilding from the log");
                let truncated = seg.recover()?;
                if truncated == 0 {
                    // Otherwise `finish_recovery` writes them, with the cut: indexes durable
                    // beside the torn bytes would let the next open skip recovering them.
                    seg.offset_index.flush()?;
                    seg.time_index.flush()?;
                }
                Ok((seg, truncated))
            }
        }
    }

    /// The last index entry must point at a batch with the offset it claims.
    fn index_matches_log(&self, index: &OffsetIndex) -> Result<bool> {
        Ok(match index.last() {
            None => true,
            Some(e) => self
                .read_header_at(u64::from(e.position))?
                .is_some_and(|h| h.base_offset == self.base_offset + i64::from(e.relative_offset)),
        })
    }

    /// Reads batch headers from the last indexed position to the end, to learn the next offset,
    /// the newest timestamps and the first batch's timestamp.
    fn scan_tail(&mut self) -> Result<()> {
        if self.size > 0
            && let Some(first) = self.read_header_at(0)?
        {
            self.rolling_timestamp = Some(first.max_timestamp);
        }
        let mut pos = self
            .offset_index
            .last()
            .map_or(0, |e| u64::from(e.position));
        while pos < self.size {
            let Some(h) = self.read_header_at(pos)? else {
                break;
            };
            let total = h.total_size() as u64;
            if pos + total > self.size {
                break;
            }
            self.note_batch(&BatchInfo::of(&h));
            pos += total;
        }
        if pos < self.size && self.only_zeros_after(pos)? {
            // Zeros written ahead (`preallocate`) that a close did not cut: the next append
            // must land right after the last batch.
            self.cut_tail(pos)?;
        }
        self.bytes_since_last_index_entry = pos
            - self
                .offset_index
                .last()
                .map_or(0, |e| u64::from(e.position));
        Ok(())
    }

    /// Re-validates every batch and rebuilds the indexes; the first invalid batch and all after
    /// it are left for [`Self::finish_recovery`] to cut. Returns how many bytes that is.
    fn recover(&mut self) -> Result<u64> {
        self.offset_index.clear();
        self.time_index.clear();
        self.max_timestamp = -1;
        self.offset_of_max_timestamp = self.base_offset;
        self.next_offset = self.base_offset;
        self.rolling_timestamp = None;
        self.bytes_since_last_index_entry = 0;
        let path = self.log_path();
        let file = Arc::clone(&self.file);
        let mut reader = BufReader::with_capacity(1 << 20, file.raw());
        reader.seek(SeekFrom::Start(0)).at(&path)?;
        let mut pos = 0u64;
        let mut buf = Vec::new();
        let valid_end = loop {
            if self.size - pos < RECORD_BATCH_OVERHEAD as u64 {
                break pos;
            }
            buf.resize(RECORD_BATCH_OVERHEAD, 0);
            reader.read_exact(&mut buf).at(&path)?;
            let Ok(h) = BatchHeader::decode(&buf) else {
                break pos;
            };
            let total = h.total_size() as u64;
            if h.magic != MAGIC_V2
                || (total as usize) < RECORD_BATCH_OVERHEAD
                || total > self.size - pos
                || h.base_offset < self.next_offset
                || h.last_offset_delta < 0
                || h.last_offset() - self.base_offset > u32::MAX as i64
            {
                break pos;
            }
            buf.resize(total as usize, 0);
            reader
                .read_exact(&mut buf[RECORD_BATCH_OVERHEAD..])
                .at(&path)?;
            let valid = RecordBatch::parse(&buf).and_then(|b| b.verify_crc());
            if valid.is_err() {
                break pos;
            }
            self.index_batch(pos, &BatchInfo::of(&h));
            pos += total;
        };
        let truncated = self.size - valid_end;
        self.torn_from = (truncated > 0).then_some(valid_end);
        Ok(truncated)
    }

    /// Cuts what a recovery found invalid ([`Self::open`]) and makes the cut and the rebuilt
    /// indexes durable.
    pub(crate) fn finish_recovery(&mut self) -> Result<()> {
        if let Some(end) = self.torn_from.take() {
            self.cut_tail(end)?;
        }
        // The time index first: an offset index that matches the log makes the next clean
        // open trust both, so it must not be durable beside a stale time index.
        self.time_index.flush()?;
        self.offset_index.flush()
    }

    /// Durably cuts the `.log` file at `end`, saying whether it cut zeros written ahead
    /// (`preallocate`) or invalid or torn data.
    fn cut_tail(&mut self, end: u64) -> Result<()> {
        let path = self.log_path();
        let cut = self.size - end;
        if self.only_zeros_after(end)? {
            tracing::info!(segment = %path.display(), valid_bytes = end, cut_bytes = cut,
                "cutting the zeros written ahead of the data (preallocate)");
        } else {
            tracing::warn!(segment = %path.display(), valid_bytes = end, truncated_bytes = cut,
                "truncating invalid or torn data at the end of the segment");
        }
        self.file.set_len(end).at(&path)?;
        self.file.sync_all().at(&path)?;
        self.size = end;
        Ok(())
    }

    /// True when every byte from `pos` to the end is zero, as preallocation leaves them (only
    /// looked at when they are few enough to be its zeros).
    fn only_zeros_after(&self, pos: u64) -> Result<bool> {
        let len = self.size - pos;
        if len > 2 * crate::segment_file::PREALLOCATE_AHEAD_BYTES {
            return Ok(false);
        }
        let mut buf = vec![0u8; len as usize];
        std::os::unix::fs::FileExt::read_exact_at(self.file.raw(), &mut buf, pos)
            .at(self.log_path())?;
        Ok(buf.iter().all(|&b| b == 0))
    }

    /// Reads and sanity-checks the batch header at `pos`; `None` if there is no whole header.
    pub(crate) fn read_header_at(&self, pos: u64) -> Result<Option<BatchHeader>> {
        header_at(&self.file, self.size, pos, || self.log_path())
    }

    /// Appends whole, already validated batches (`bytes` holds them back to back).
    pub(crate) fn append(&mut self, bytes: &[u8], batches: &[BatchInfo]) -> Result<()> {
        debug_assert!(self.torn_from.is_none(), "append before finish_recovery");
        self.file.append(bytes).at(self.log_path())?;
        let mut pos = self.size;
        for b in batches {
            self.index_batch(pos, b);
            pos += b.size as u64;
        }
        debug_assert_eq!(pos, self.size);
        Ok(())
    }

    /// Updates size, offsets, timestamps and indexes for a batch at `pos`.
    fn index_batch(&mut self, pos: u64, b: &BatchInfo) {
        if self.rolling_timestamp.is_none() {
            self.rolling_timestamp = Some(b.max_timestamp);
        }
        if self.bytes_since_last_index_entry > self.index_interval_bytes {
            self.offset_index.append(OffsetEntry {
                relative_offset: (b.base_offset - self.base_offset) as u32,
                position: pos as u32,
            });
            self.maybe_append_time_entry(false);
            self.bytes_since_last_index_entry = 0;
        }
        self.note_batch(b);
        self.bytes_since_last_index_entry += b.size as u64;
        self.size = self.size.max(pos + b.size as u64);
    }

    fn note_batch(&mut self, b: &BatchInfo) {
        if b.max_timestamp > self.max_timestamp {
            self.max_timestamp = b.max_timestamp;
            self.offset_of_max_timestamp = b.base_offset;
        }
        self.next_offset = b.last_offset + 1;
    }

    /// `last`: the segment's final entry (roll, close, a cleaned segment), which may take the
    /// slot the time index keeps for it.
    fn maybe_append_time_entry(&mut self, last: bool) {
        if self.max_timestamp >= 0
            && self
                .time_index
                .last()
                .is_none_or(|e| e.timestamp < self.max_timestamp)
        {
            let entry = TimeEntry {
                timestamp: self.max_timestamp,
                relative_offset: (self.offset_of_max_timestamp - self.base_offset) as u32,
            };
            if last {
                self.time_index.append_final(entry);
            } else {
                self.time_index.append(entry);
            }
        }
    }

    /// Called when the segment stops being active (roll, close): records its final max timestamp
    /// in the time index so retention and time lookups need no scan after a restart, and fsyncs
    /// the data. Every segment but the last is therefore durable in full: a machine crash can
    /// never leave a next segment (whose base offset says where this one ended) after a segment
    /// that lost its tail, a hole recovery could not see.
    pub(crate) fn on_become_inactive(&mut self) -> Result<()> {
        self.file.trim().at(self.log_path())?;
        self.file.sync().at(self.log_path())?;
        self.maybe_append_time_entry(true);
        self.offset_index.flush()?;
        self.time_index.flush()
    }

    /// Whether the `.log` file is kept written with zeros ahead of the data (`preallocate`; the
    /// active segment only, see [`SegmentFile`]).
    pub(crate) fn set_preallocation(&self, on: bool, limit: u64) {
        self.file.set_preallocation(on, limit);
    }

    /// Position and header of the first batch whose last offset is ≥ `offset`.
    pub(crate) fn translate_offset(&self, offset: i64) -> Result<Option<(u64, BatchHeader)>> {
        let rel = offset - self.base_offset;
        let start = match self.offset_index.floor(rel) {
            Some(e) => {
                let pos = u64::from(e.position);
                // Trust the index only if it points at the batch it names.
                match self.read_header_at(pos)? {
                    Some(h) if h.base_offset == self.base_offset + i64::from(e.relative_offset) => {
                        pos
                    }
                    _ => 0,
                }
            }
            None => 0,
        };
        let mut pos = start;
        while let Some(h) = self.read_header_at(pos)? {
            if h.last_offset() >= offset {
                return Ok(Some((pos, h)));
            }
            pos += h.total_size() as u64;
        }
        Ok(None)
    }

    /// Whole batches starting with the one holding `offset`, up to `max_bytes` (but at least one
    /// batch when `min_one`), skipping batches whose base offset is ≥ `max_offset`.
    pub(crate) fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
        min_one: bool,
    ) -> Result<Option<Bytes>> {
        if let Some(found) = self.read_near_index_entry(offset, max_bytes, max_offset, min_one)? {
            return Ok(found);
        }
        let Some((pos, first)) = self.translate_offset(offset)? else {
            return Ok(None);
        };
        if first.base_offset >= max_offset {
            return Ok(None);
        }
        let available = (self.size - pos) as usize;
        let first_size = first.total_size();
        let want = if min_one {
            max_bytes.max(first_size)
        } else {
            max_bytes
        }
        .min(available);
        if want < first_size {
            return Ok(None);
        }
        let mut buf = self.file.read_vec_at(pos, want).at(self.log_path())?;
        let mut end = 0;
        while end + LOG_OVERHEAD + 5 <= buf.len() {
            let Ok(h) = BatchHeader::decode(&buf[end..]) else {
                break;
            };
            let total = h.total_size();
            if h.base_offset >= max_offset
                || end + total > buf.len()
                || total < RECORD_BATCH_OVERHEAD
            {
                break;
            }
            end += total;
        }
        buf.truncate(end);
        Ok((end > 0).then(|| Bytes::from(buf)))
    }

    /// The common read in one system call: read from the index entry at or before `offset`
    /// enough bytes to cover the gap to `offset` plus `max_bytes`, then find the batches in
    /// memory. `Ok(None)` when that does not work out (index entry not trusted, first batch
    /// larger than what was read, ...): the caller takes the batch-by-batch path.
    fn read_near_index_entry(
        &self,
        offset: i64,
        max_bytes: usize,
        max_offset: i64,
        min_one: bool,
    ) -> Result<Option<Option<Bytes>>> {
        let entry = self.offset_index.floor(offset - self.base_offset);
        let pos = entry.map_or(0, |e| u64::from(e.position));
        let available = self.size.saturating_sub(pos) as usize;
        let gap = (self.index_interval_bytes as usize).saturating_add(RECORD_BATCH_OVERHEAD);
        let want = max_bytes.saturating_add(gap).min(available);
        if want < RECORD_BATCH_OVERHEAD {
            return Ok(None);
        }
        let buf = self.file.read_vec_at(pos, want).at(self.log_path())?;
        let mut at = 0;
        let mut start = None;
        let mut end = 0;
        while at + RECORD_BATCH_OVERHEAD <= buf.len() {
            let Ok(h) = BatchHeader::decode(&buf[at..]) else {
                return Ok(None);
            };
            let total = h.total_size();
            if h.magic != MAGIC_V2 || total < RECORD_BATCH_OVERHEAD {
                return Ok(None);
            }
            if at == 0
                && entry.is_some_and(|e| {
                    h.base_offset != self.base_offset + i64::from(e.relative_offset)
                })
            {
                return Ok(None);
            }
            match start {
                None if h.last_offset() < offset => {}
                None => {
                    if h.base_offset >= max_offset {
                        return Ok(Some(None));
                    }
                    if at + total > buf.len() || (!min_one && total > max_bytes) {
                        // The first batch does not fit what was read: let the slow path decide.
                        return Ok(None);
                    }
                    start = Some(at);
                    end = at + total;
                }
                Some(first) => {
                    if h.base_offset >= max_offset
                        || at + total > buf.len()
                        || at + total - first > max_bytes
                    {
                        break;
                    }
                    end = at + total;
                }
            }
            at += total;
        }
        let Some(first) = start else {
            // Ran out of bytes before reaching the offset.
            return Ok(None);
        };
        Ok(Some(Some(Bytes::from(buf).slice(first..end))))
    }

    /// Offset and timestamp of the first record with timestamp ≥ `ts`, if this segment has one.
    pub(crate) fn find_offset_by_timestamp(
        &self,
        ts: i64,
        start_offset: i64,
    ) -> Result<Option<(i64, i64)>> {
        if self.max_timestamp < ts {
            return Ok(None);
        }
        let from = match self.time_index.floor(ts - 1) {
            Some(e) => self.base_offset + i64::from(e.relative_offset),
            None => self.base_offset,
        }
        .max(start_offset);
        let Some((mut pos, _)) = self.translate_offset(from)? else {
            return Ok(None);
        };
        while let Some(h) = self.read_header_at(pos)? {
            if h.max_timestamp >= ts {
                let mut buf = vec![0u8; h.total_size()];
                self.file.read_exact_at(&mut buf, pos).at(self.log_path())?;
                let batch = RecordBatch::parse(&buf).map_err(|e| self.corrupt(pos, e))?;
                let records = batch.records(64 << 20).map_err(|e| self.corrupt(pos, e))?;
                for record in records.iter() {
                    let record = record.map_err(|e| self.corrupt(pos, e))?;
                    if record.timestamp >= ts && record.offset >= start_offset {
                        return Ok(Some((record.offset, record.timestamp)));
                    }
                }
            }
            pos += h.total_size() as u64;
        }
        Ok(None)
    }

    fn corrupt(&self, pos: u64, e: impl std::fmt::Display) -> crate::LogError {
        crate::LogError::Corrupt {
            path: self.log_path(),
            reason: format!("batch at position {pos}: {e}"),
        }
    }

    /// Removes every batch whose last offset is ≥ `offset`. Returns true if anything was removed.
    pub(crate) fn truncate_to(&mut self, offset: i64) -> Result<bool> {
        let Some((pos, _)) = self.translate_offset(offset)? else {
            return Ok(false);
        };
        let path = self.log_path();
        self.file.set_len(pos).at(&path)?;
        self.size = pos;
        // Rebuild stats and indexes from what is left: truncation is rare (replica divergence).
        self.recover()?;
        self.offset_index.mark_unwritten();
        self.time_index.mark_unwritten();
        // The cut must be durable: truncated batches must not come back after a machine crash.
        self.file.sync_all().at(&path)?;
        self.finish_recovery()?;
        Ok(true)
    }

    /// fsyncs the `.log` data and the index files.
    pub(crate) fn flush(&mut self) -> Result<()> {
        self.file.sync().at(self.log_path())?;
        self.offset_index.flush()?;
        self.time_index.flush()
    }

    /// Renames the segment's files to `<name><suffix>` (e.g. `.deleted`) and returns the new paths.
    /// The indexes go first: a crash between the renames must never leave a segment's old
    /// indexes beside a `.log` that a cleaner's swap puts under the same name on open.
    pub(crate) fn rename_files(&mut self, suffix: &str) -> Result<Vec<PathBuf>> {
        let mut renamed = Vec::new();
        for base in [INDEX_SUFFIX, TIME_INDEX_SUFFIX, LOG_SUFFIX] {
            let from = segment_file(&self.dir, self.base_offset, base);
            let to = segment_file(&self.dir, self.base_offset, &format!("{base}{suffix}"));
            match crate::fsio::rename(&from, &to) {
                Ok(()) => renamed.push(to),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e).at(&from),
            }
        }
        Ok(renamed)
    }

    /// Writes a cleaned segment's indexes to their suffixed files and fsyncs them: done while
    /// the segment is built, so its swap only renames them.
    pub(crate) fn write_indexes(&mut self) -> Result<()> {
        self.maybe_append_time_entry(true);
        self.offset_index.flush()?;
        self.time_index.flush()
    }

    /// Renames the indexes [`Self::write_indexes`] wrote to their final names (in a cleaned
    /// segment's swap, before the directory is fsynced). Indexes are caches: a crash before
    /// the rename is durable leaves them missing, and they are rebuilt on open.
    pub(crate) fn rename_indexes_to_final(&mut self) -> Result<()> {
        let offsets = segment_file(&self.dir, self.base_offset, INDEX_SUFFIX);
        crate::fsio::rename(self.offset_index.path(), &offsets).at(self.offset_index.path())?;
        self.offset_index.set_path(offsets);
        let times = segment_file(&self.dir, self.base_offset, TIME_INDEX_SUFFIX);
        crate::fsio::rename(self.time_index.path(), &times).at(self.time_index.path())?;
        self.time_index.set_path(times);
        Ok(())
    }

    /// Creates a segment writing to `<base>.log<suffix>` (the cleaner's `.cleaned` output).
    pub(crate) fn create_with_suffix(
        dir: &Path,
        base_offset: i64,
        sizing: IndexSizing,
        suffix: &str,
    ) -> Result<Self> {
        let path = segment_file(dir, base_offset, &format!("{LOG_SUFFIX}{suffix}"));
        remove_if_exists(&path)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .at(&path)?;
        let mut seg = Self::new(dir, base_offset, file, 0, sizing);
        let idx = |s: &str| segment_file(dir, base_offset, &format!("{s}{suffix}"));
        seg.offset_index.set_path(idx(INDEX_SUFFIX));
        seg.time_index.set_path(idx(TIME_INDEX_SUFFIX));
        Ok(seg)
    }

    /// Base offset (the file name).
    pub fn base_offset(&self) -> i64 {
        self.base_offset
    }

    /// Offset after the last batch.
    pub fn next_offset(&self) -> i64 {
        self.next_offset
    }

    pub(crate) fn set_next_offset(&mut self, next: i64) {
        self.next_offset = next;
    }

    /// Bytes in the `.log` file.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Largest record timestamp, -1 when empty.
    pub fn max_timestamp(&self) -> i64 {
        self.max_timestamp
    }

    /// The segment's age for retention, as Kafka's `LogSegment.largestTimestamp`: its largest
    /// record timestamp, or, when no record has one (-1: `NO_TIMESTAMP`), the `.log` file's
    /// last-modified time; `i64::MAX` (never expired) when even that is unknown.
    pub(crate) fn largest_timestamp(&self) -> i64 {
        if self.max_timestamp >= 0 {
            return self.max_timestamp;
        }
        self.file
            .raw()
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(i64::MAX, |d| {
                i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
            })
    }

    /// Max timestamp of the first batch, which `segment.ms` counts from.
    pub(crate) fn rolling_timestamp(&self) -> Option<i64> {
        self.rolling_timestamp
    }

    /// True when an index cannot take another entry.
    pub(crate) fn indexes_full(&self) -> bool {
        self.offset_index.is_full() || self.time_index.is_full()
    }

    /// The open `.log` file, for group commit.
    pub(crate) fn file(&self) -> &Arc<SegmentFile> {
        &self.file
    }

    /// Path of the `.log` file.
    pub fn log_path(&self) -> PathBuf {
        segment_file(&self.dir, self.base_offset, LOG_SUFFIX)
    }

    /// Offsets, times and sizes of the segment, for callers outside the log (retention, tools).
    pub fn info(&self) -> SegmentInfo {
        SegmentInfo {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size_bytes: self.size,
            max_timestamp: self.max_timestamp,
        }
    }

    /// Every batch header with its position, in order (recovery's and tests' view).
    pub(crate) fn batch_positions(&self) -> Result<Vec<(u64, BatchHeader)>> {
        self.view().batch_positions()
    }

    /// The segment's data as it is now, readable without the log (see [`SegmentView`]).
    pub(crate) fn view(&self) -> SegmentView {
        SegmentView {
            base_offset: self.base_offset,
            next_offset: self.next_offset,
            size: self.size,
            file: Arc::clone(&self.file),
            path: self.log_path(),
        }
    }
}

/// A sealed segment's `.log` as the cleaner reads it without holding the log's lock (appends
/// and reads go on meanwhile). The open file keeps answering even if retention deletes the
/// segment or a truncation cuts it in the meantime; the cleaner then finds the segment changed
/// ([`SegmentView::is_view_of`]) and throws away what it built from it.
#[derive(Clone, Debug)]
pub(crate) struct SegmentView {
    pub base_offset: i64,
    pub next_offset: i64,
    pub size: u64,
    file: Arc<SegmentFile>,
    path: PathBuf,
}

impl SegmentView {
    /// True while `segment` is still the one this view was taken of, unchanged.
    pub fn is_view_of(&self, segment: &LogSegment) -> bool {
        Arc::ptr_eq(&self.file, &segment.file)
            && segment.base_offset == self.base_offset
            && segment.size == self.size
            && segment.next_offset == self.next_offset
    }

    /// Path of the `.log` file (for errors).
    pub fn log_path(&self) -> &Path {
        &self.path
    }

    /// Every batch header with its position, in order.
    pub fn batch_positions(&self) -> Result<Vec<(u64, BatchHeader)>> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(h) = header_at(&self.file, self.size, pos, || self.path.clone())? {
            let total = h.total_size() as u64;
            if pos + total > self.size {
                break;
            }
            out.push((pos, h));
            pos += total;
        }
        Ok(out)
    }

    /// Reads `len` bytes at `pos`.
    pub fn read_at(&self, pos: u64, len: usize) -> Result<Vec<u8>> {
        self.file.read_vec_at(pos, len).at(&self.path)
    }
}

/// Reads and sanity-checks the batch header at `pos` of a `.log` holding `size` bytes; `None`
/// if there is no whole header.
fn header_at(
    file: &SegmentFile,
    size: u64,
    pos: u64,
    path: impl FnOnce() -> PathBuf,
) -> Result<Option<BatchHeader>> {
    if pos + RECORD_BATCH_OVERHEAD as u64 > size {
        return Ok(None);
    }
    let mut buf = [0u8; RECORD_BATCH_OVERHEAD];
    file.read_exact_at(&mut buf, pos).at(path())?;
    Ok(BatchHeader::decode(&buf)
        .ok()
        .filter(|h| h.magic == MAGIC_V2 && h.total_size() >= RECORD_BATCH_OVERHEAD))
}

pub(crate) fn remove_if_exists(path: &Path) -> Result<()> {
    match crate::fsio::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e).at(path),
    }
}
