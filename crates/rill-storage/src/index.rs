//! The sparse indexes of a segment: [`OffsetIndex`] (offset → file position) and [`TimeIndex`]
//! (timestamp → offset), kept in memory and persisted as fixed-size entries.
//!
//! Each entry on disk carries its own CRC-32, so a torn or garbled index is detected on open and
//! rebuilt from the `.log` file instead of silently sending readers to the wrong position. Entries
//! are written at flush and roll time, not per append: the `.log` is the source of truth, and
//! everything after the recovery point is re-indexed on recovery anyway.

use std::fs::{File, OpenOptions};

use std::path::{Path, PathBuf};

use crate::error::{IoContext, Result};

/// One fixed-size index entry.
pub trait IndexEntry: Copy + std::fmt::Debug {
    /// Encoded size without the CRC.
    const SIZE: usize;
    /// Encodes into `out` (exactly `SIZE` bytes).
    fn encode(&self, out: &mut [u8]);
    /// Decodes from exactly `SIZE` bytes.
    fn decode(buf: &[u8]) -> Self;
    /// Entries must be strictly increasing in this key.
    fn key(&self) -> i64;
    /// Slots kept for [`IndexFile::append_final`]: the index counts as full this many entries
    /// early.
    const RESERVED_FOR_FINAL: usize = 0;
}

/// Offset index entry: offset of a batch (relative to the segment base) → its file position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OffsetEntry {
    /// Batch base offset minus the segment base offset.
    pub relative_offset: u32,
    /// Byte position of the batch in the `.log` file.
    pub position: u32,
}

impl IndexEntry for OffsetEntry {
    const SIZE: usize = 8;
    fn encode(&self, out: &mut [u8]) {
        out[..4].copy_from_slice(&self.relative_offset.to_be_bytes());
        out[4..8].copy_from_slice(&self.position.to_be_bytes());
    }
    fn decode(buf: &[u8]) -> Self {
        OffsetEntry {
            relative_offset: u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]),
            position: u32::from_be_bytes([buf[4], buf[5], buf[6], buf[7]]),
        }
    }
    fn key(&self) -> i64 {
        self.relative_offset.into()
    }
}

/// Time index entry: the largest timestamp seen so far in the segment, and the relative offset of
/// the batch that brought it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeEntry {
    /// Largest record timestamp up to and including this batch.
    pub timestamp: i64,
    /// Base offset of that batch minus the segment base offset.
    pub relative_offset: u32,
}

impl IndexEntry for TimeEntry {
    const SIZE: usize = 12;
    fn encode(&self, out: &mut [u8]) {
        out[..8].copy_from_slice(&self.timestamp.to_be_bytes());
        out[8..12].copy_from_slice(&self.relative_offset.to_be_bytes());
    }
    fn decode(buf: &[u8]) -> Self {
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&buf[..8]);
        TimeEntry {
            timestamp: i64::from_be_bytes(ts),
            relative_offset: u32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]),
        }
    }
    fn key(&self) -> i64 {
        self.timestamp
    }
    /// The entry a segment gets when it stops being active (its final max timestamp) always
    /// fits, as in Kafka's `TimeIndex.isFull`: without it, a segment whose index filled
    /// mid-append would reopen with a max timestamp missing the batches after that point.
    const RESERVED_FOR_FINAL: usize = 1;
}

/// Offset → position index of a segment (`.index`).
pub type OffsetIndex = IndexFile<OffsetEntry>;
/// Timestamp → offset index of a segment (`.timeindex`).
pub type TimeIndex = IndexFile<TimeEntry>;

/// A sparse index: sorted entries in memory, persisted to `path` with a CRC per entry.
#[derive(Debug)]
pub struct IndexFile<E: IndexEntry> {
    path: PathBuf,
    entries: Vec<E>,
    /// Entries already written to the file.
    written: usize,
    /// Largest number of entries (`segment.index.bytes` / entry size).
    max_entries: usize,
}

impl<E: IndexEntry> IndexFile<E> {
    /// Bytes per entry on disk (entry + CRC-32).
    pub const DISK_SIZE: usize = E::SIZE + 4;

    /// An empty index that will be written to `path`.
    pub fn empty(path: PathBuf, max_bytes: u64) -> Self {
        IndexFile {
            path,
            entries: Vec::new(),
            written: 0,
            max_entries: (max_bytes as usize / Self::DISK_SIZE).max(1),
        }
    }

    /// Loads the index at `path`. Returns `None` when the file is missing or any entry fails its
    /// CRC, is out of order, or fails `valid` (e.g. points past the end of the log): the caller
    /// rebuilds the index from the log.
    pub fn load(path: PathBuf, max_bytes: u64, valid: impl Fn(&E) -> bool) -> Result<Option<Self>> {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).at(&path),
        };
        let mut index = Self::empty(path, max_bytes);
        if bytes.len() % Self::DISK_SIZE != 0 || bytes.len() / Self::DISK_SIZE > index.max_entries {
            return Ok(None);
        }
        for chunk in bytes.chunks_exact(Self::DISK_SIZE) {
            let (body, crc) = chunk.split_at(E::SIZE);
            if crc32fast::hash(body).to_be_bytes() != crc {
                return Ok(None);
            }
            let entry = E::decode(body);
            if index
                .entries
                .last()
                .is_some_and(|last| last.key() >= entry.key())
                || !valid(&entry)
            {
                return Ok(None);
            }
            index.entries.push(entry);
        }
        index.written = index.entries.len();
        Ok(Some(index))
    }

    /// Adds an entry; keys must increase. Returns false (adding nothing) when full or out of order.
    pub fn append(&mut self, entry: E) -> bool {
        !self.is_full() && self.append_final(entry)
    }

    /// Adds the segment's last entry, which may take the slot [`IndexEntry::RESERVED_FOR_FINAL`]
    /// keeps. Returns false (adding nothing) when no slot is left or it is out of order.
    pub fn append_final(&mut self, entry: E) -> bool {
        if self.entries.len() >= self.max_entries
            || self
                .entries
                .last()
                .is_some_and(|last| last.key() >= entry.key())
        {
            return false;
        }
        self.entries.push(entry);
        true
    }

    /// True when no more entries fit (`segment.index.bytes`), but for the reserved final one.
    pub fn is_full(&self) -> bool {
        self.entries.len() + E::RESERVED_FOR_FINAL >= self.max_entries
    }

    /// The entries, in order.
    pub fn entries(&self) -> &[E] {
        &self.entries
    }

    /// The last entry.
    pub fn last(&self) -> Option<&E> {
        self.entries.last()
    }

    /// The last entry whose key is at most `key`.
    pub fn floor(&self, key: i64) -> Option<&E> {
        let n = self.entries.partition_point(|e| e.key() <= key);
        n.checked_sub(1).map(|i| &self.entries[i])
    }

    /// Keeps only the entries for which `keep` holds, as a prefix (for truncation).
    pub fn truncate_while(&mut self, keep: impl Fn(&E) -> bool) {
        let n = self.entries.partition_point(keep);
        self.entries.truncate(n);
        self.written = self.written.min(n);
    }

    /// Drops every entry.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.written = 0;
    }

    /// Writes entries not yet on disk and trims the file to the entries held.
    pub fn write(&mut self) -> Result<()> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(false)
            .open(&self.path)
            .at(&self.path)?;
        let mut buf = Vec::with_capacity((self.entries.len() - self.written) * Self::DISK_SIZE);
        for entry in &self.entries[self.written..] {
            let start = buf.len();
            buf.resize(start + Self::DISK_SIZE, 0);
            entry.encode(&mut buf[start..start + E::SIZE]);
            let crc = crc32fast::hash(&buf[start..start + E::SIZE]);
            buf[start + E::SIZE..].copy_from_slice(&crc.to_be_bytes());
        }
        crate::fsio::write_all_at(
            &file,
            &self.path,
            &buf,
            (self.written * Self::DISK_SIZE) as u64,
        )
        .at(&self.path)?;
        crate::fsio::set_len(
            &file,
            &self.path,
            (self.entries.len() * Self::DISK_SIZE) as u64,
        )
        .at(&self.path)?;
        self.written = self.entries.len();
        Ok(())
    }

    /// Writes pending entries and fsyncs the file.
    pub fn flush(&mut self) -> Result<()> {
        self.write()?;
        File::open(&self.path)
            .and_then(|f| crate::fsio::sync(&f, &self.path, true))
            .at(&self.path)
    }

    /// The index file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Points the index at a new path (after the segment's files were renamed).
    pub fn set_path(&mut self, path: PathBuf) {
        self.path = path;
    }

    /// Forgets what was written, so the next `write` rewrites the whole file.
    pub fn mark_unwritten(&mut self) {
        self.written = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(o: u32, p: u32) -> OffsetEntry {
        OffsetEntry {
            relative_offset: o,
            position: p,
        }
    }

    #[test]
    fn write_load_and_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex::empty(path.clone(), 1 << 20);
        assert!(idx.append(entry(0, 0)));
        assert!(idx.append(entry(10, 4096)));
        assert!(!idx.append(entry(10, 5000)), "keys must increase");
        idx.write().unwrap();
        assert!(idx.append(entry(20, 8192)));
        idx.flush().unwrap();
        let loaded = OffsetIndex::load(path, 1 << 20, |_| true).unwrap().unwrap();
        assert_eq!(loaded.entries(), idx.entries());
        assert_eq!(loaded.floor(15), Some(&entry(10, 4096)));
        assert_eq!(loaded.floor(-1), None);
    }

    #[test]
    fn garbled_or_invalid_indexes_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("0.index");
        let mut idx = OffsetIndex::empty(path.clone(), 1 << 20);
        idx.append(entry(0, 0));
        idx.append(entry(10, 4096));
        idx.flush().unwrap();
        let mut bytes = std::fs::read(&path).unwrap();
        bytes[13] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            OffsetIndex::load(path.clone(), 1 << 20, |_| true)
                .unwrap()
                .is_none()
        );
        bytes[13] ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        assert!(
            OffsetIndex::load(path.clone(), 1 << 20, |e| e.position < 4096)
                .unwrap()
                .is_none()
        );
        std::fs::write(&path, &bytes[..15]).unwrap();
        assert!(
            OffsetIndex::load(path, 1 << 20, |_| true)
                .unwrap()
                .is_none()
        );
    }

    #[test]
    fn full_index_refuses_entries_but_keeps_the_final_slot() {
        let dir = tempfile::tempdir().unwrap();
        let mut idx = TimeIndex::empty(dir.path().join("t"), 32);
        let entry = |timestamp: i64| TimeEntry {
            timestamp,
            relative_offset: timestamp as u32,
        };
        assert!(idx.append(entry(1)));
        // Two slots; the second is the final entry's.
        assert!(idx.is_full());
        assert!(!idx.append(entry(2)));
        assert!(idx.append_final(entry(2)));
        assert!(!idx.append_final(entry(3)));
        // The offset index keeps none.
        let mut offsets = OffsetIndex::empty(dir.path().join("o"), 24);
        for i in 0..2 {
            assert!(offsets.append(OffsetEntry {
                relative_offset: i,
                position: i * 10,
            }));
        }
        assert!(offsets.is_full());
    }
}
