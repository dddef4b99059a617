//! Idempotent producer state of one partition (KIP-98), as Kafka's `ProducerStateManager` keeps
//! it: for every producer id seen in the log, its epoch and the sequence and offset ranges of its
//! last [`NUM_BATCHES_TO_RETAIN`] batches.
//!
//! The leader checks every producer batch against it before anything of an append is written
//! ([`ProducerStateManager::check_append`], Kafka's `ProducerAppendInfo`):
//! - a batch whose epoch and sequence range equal one of the producer's last 5 batches is a
//!   **duplicate** (a retry of something already written): nothing is written and the original
//!   offsets are answered;
//! - a batch from an older epoch is refused: [`LogError::InvalidProducerEpoch`];
//! - a new epoch must start at sequence 0, and within an epoch the first sequence of a batch
//!   must follow the last one written (wrapping from `i32::MAX` to 0):
//!   [`LogError::OutOfOrderSequence`] otherwise;
//! - a producer id without state (never seen, or expired) must start at sequence 0:
//!   [`LogError::UnknownProducerId`] otherwise, upon which the producer bumps its epoch
//!   (KIP-360) and starts again at 0. Retention deleting a producer's batches does not forget
//!   it (KAFKA-7190): a retry of a batch written, acknowledged-or-not and then deleted, is still
//!   a duplicate, not a new write.
//!
//! Followers copy the leader's batches and update the state without checks, so a new leader
//! already knows every producer.
//!
//! The state is snapshotted beside the log as `<offset:020>.snapshot` — the state of every batch
//! below `offset` — when a segment is rolled and when the log is closed, written atomically and
//! guarded by a CRC-32. On open the newest snapshot at or below the log end offset is loaded and
//! the batches after it are replayed; snapshots above the log end (data lost in a crash, or cut by
//! truncation) are deleted first.
//!
//! Producers expire after `producer.id.expiration.ms` (Kafka's broker default, 86400000) without
//! an append; the time used is the broker clock at append (not the records' timestamps, which a
//! producer may set far in the past).

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::path::{Path, PathBuf};

use rill_protocol::record_batch::BatchHeader;

use crate::checkpoint::write_atomically;
use crate::error::{IoContext, LogError, Result};

/// Suffix of producer state snapshot files (`<offset:020>.snapshot`).
pub const PRODUCER_SNAPSHOT_SUFFIX: &str = ".snapshot";
/// Batches remembered per producer for duplicate detection. Kafka keeps 5 (its clients send at
/// most 5 single-batch requests per partition in flight); rill's producer sends one request per
/// partition carrying up to this many batches, so a retry of a request that was written after
/// all is recognised batch by batch. A superset of Kafka's guarantee; the snapshot format holds
/// up to 255.
pub const NUM_BATCHES_TO_RETAIN: usize = 64;
/// Kafka's default `producer.id.expiration.ms` (one day).
pub const DEFAULT_PRODUCER_ID_EXPIRATION_MS: i64 = 86_400_000;
/// Snapshots kept on disk (newest first); older ones are pruned. More than one, so that a
/// truncation just below the newest can start from the previous one instead of the log start.
const SNAPSHOTS_TO_KEEP: usize = 3;

const SNAPSHOT_MAGIC: &[u8; 4] = b"RPSS";
const SNAPSHOT_VERSION: u16 = 1;
/// Bytes of one batch entry in a snapshot.
const BATCH_ENTRY_BYTES: usize = 4 + 4 + 8 + 8 + 8;

/// One batch of a producer, as remembered for duplicate detection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchMetadata {
    /// Sequence of the first record.
    pub first_seq: i32,
    /// Sequence of the last record.
    pub last_seq: i32,
    /// Offset of the first record.
    pub first_offset: i64,
    /// Offset of the last record.
    pub last_offset: i64,
    /// The batch's max timestamp (the append time under LogAppendTime), answered again for a
    /// duplicate.
    pub max_timestamp: i64,
}

/// What the partition knows of one producer id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerStateEntry {
    /// The id InitProducerId granted (the key of this entry).
    pub producer_id: i64,
    /// Current epoch; batches of older epochs are fenced.
    pub producer_epoch: i16,
    /// The last batches of the current epoch, oldest first, at most [`NUM_BATCHES_TO_RETAIN`].
    pub batches: VecDeque<BatchMetadata>,
    /// Broker time of the last append (for `producer.id.expiration.ms`).
    pub last_timestamp: i64,
}

impl ProducerStateEntry {
    fn new(producer_id: i64, producer_epoch: i16) -> Self {
        ProducerStateEntry {
            producer_id,
            producer_epoch,
            batches: VecDeque::new(),
            last_timestamp: -1,
        }
    }

    /// Sequence of the last record written, if any in this epoch.
    pub fn last_seq(&self) -> Option<i32> {
        self.batches.back().map(|b| b.last_seq)
    }

    /// Offset of the last record written by this producer, if known.
    pub fn last_offset(&self) -> Option<i64> {
        self.batches.back().map(|b| b.last_offset)
    }

    fn find_duplicate(&self, epoch: i16, first_seq: i32, last_seq: i32) -> Option<BatchMetadata> {
        if epoch != self.producer_epoch {
            return None;
        }
        self.batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
            .copied()
    }

    /// Records a batch (Kafka's `ProducerStateEntry.addBatch`): a new epoch forgets the old
    /// epoch's batches.
    fn add_batch(&mut self, epoch: i16, batch: BatchMetadata, now: i64) {
        if epoch != self.producer_epoch {
            self.producer_epoch = epoch;
            self.batches.clear();
        }
        self.batches.push_back(batch);
        while self.batches.len() > NUM_BATCHES_TO_RETAIN {
            self.batches.pop_front();
        }
        self.last_timestamp = now;
    }
}

/// The sequence of the last record of a batch, wrapping at `i32::MAX` as Kafka does
/// (`DefaultRecordBatch.incrementSequence`).
pub fn last_sequence(base_sequence: i32, last_offset_delta: i32) -> i32 {
    increment_sequence(base_sequence, last_offset_delta)
}

fn increment_sequence(seq: i32, increment: i32) -> i32 {
    if seq > i32::MAX - increment {
        increment - (i32::MAX - seq) - 1
    } else {
        seq + increment
    }
}

/// True when `next` is the sequence right after `last`.
fn in_sequence(last: i32, next: i32) -> bool {
    i64::from(next) == i64::from(last) + 1 || (next == 0 && last == i32::MAX)
}

/// The result of checking a leader append against the producer state.
#[derive(Debug)]
pub enum AppendCheck {
    /// Every producer batch is new and in order: apply with [`ProducerStateManager::apply`]
    /// once the batches have offsets and were written.
    Valid,
    /// Every batch of the append was written before (an idempotent retry): write nothing and
    /// answer these original offsets.
    Duplicate {
        /// Offset of the first record of the first batch, as first written.
        first_offset: i64,
        /// Offset of the last record of the last batch, as first written.
        last_offset: i64,
        /// Max timestamp of the last batch, as first written.
        max_timestamp: i64,
    },
}

/// Per-producer state of one partition; see the module docs.
#[derive(Debug)]
pub struct ProducerStateManager {
    dir: PathBuf,
    producers: HashMap<i64, ProducerStateEntry>,
    /// Offsets of the snapshot files on disk.
    snapshots: BTreeSet<i64>,
    expiration_ms: i64,
}

impl ProducerStateManager {
    /// Empty state for the log in `dir` (nothing read from disk; see [`Self::load`]).
    pub fn new(dir: &Path, expiration_ms: i64) -> Self {
        ProducerStateManager {
            dir: dir.to_owned(),
            producers: HashMap::new(),
            snapshots: BTreeSet::new(),
            expiration_ms,
        }
    }

    /// Lists the snapshots in `dir`, deletes those above `log_end_offset` (their data is gone)
    /// and loads the newest readable one. Returns the offset replay must start from: the
    /// snapshot's offset, or `None` when no usable snapshot exists (replay everything).
    /// A damaged snapshot is deleted and an older one tried, as Kafka does.
    pub fn load(&mut self, log_end_offset: i64) -> Result<Option<i64>> {
        self.producers.clear();
        self.snapshots = list_snapshots(&self.dir)?;
        self.delete_snapshots_after(log_end_offset)?;
        while let Some(&offset) = self.snapshots.iter().next_back() {
            let path = snapshot_path(&self.dir, offset);
            match read_snapshot(&path) {
                Ok(entries) => {
                    // Expiry is left to `remove_expired_producers`: the log is opened before
                    // the broker's `producer.id.expiration.ms` is set, and a default here
                    // would forget producers that the configured value keeps.
                    for e in entries {
                        self.producers.insert(e.producer_id, e);
                    }
                    return Ok(Some(offset));
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e, "deleting an unreadable producer state snapshot");
                    self.delete_snapshot(offset)?;
                }
            }
        }
        Ok(None)
    }

    /// The producers known, by id.
    pub fn producers(&self) -> &HashMap<i64, ProducerStateEntry> {
        &self.producers
    }

    /// The state of `producer_id`, if known.
    pub fn entry(&self, producer_id: i64) -> Option<&ProducerStateEntry> {
        self.producers.get(&producer_id)
    }

    /// Offsets of the snapshot files on disk, oldest first.
    pub fn snapshot_offsets(&self) -> Vec<i64> {
        self.snapshots.iter().copied().collect()
    }

    /// `producer.id.expiration.ms`.
    pub fn expiration_ms(&self) -> i64 {
        self.expiration_ms
    }

    /// Changes `producer.id.expiration.ms`.
    pub fn set_expiration_ms(&mut self, ms: i64) {
        self.expiration_ms = ms;
    }

    fn is_expired(&self, e: &ProducerStateEntry, now: i64) -> bool {
        self.expiration_ms >= 0 && now.saturating_sub(e.last_timestamp) >= self.expiration_ms
    }

    /// Forgets producers idle for `producer.id.expiration.ms` or longer.
    pub fn remove_expired_producers(&mut self, now: i64) {
        let expiration = self.expiration_ms;
        if expiration < 0 {
            return;
        }
        self.producers
            .retain(|_, e| now.saturating_sub(e.last_timestamp) < expiration);
    }

    /// Checks the producer batches of a leader append (headers in append order, offsets not yet
    /// assigned) without changing anything. Batches without a producer id (-1) are not checked.
    pub fn check_append(&self, headers: &[BatchHeader], now: i64) -> Result<AppendCheck> {
        // Kafka's ProducerAppendInfo: later batches of the same append are checked against the
        // state the earlier ones leave.
        let mut updated: HashMap<i64, ProducerStateEntry> = HashMap::new();
        let mut duplicates: Vec<BatchMetadata> = Vec::new();
        let mut fresh = 0usize;
        for (index, h) in headers.iter().enumerate() {
            if h.producer_id < 0 {
                fresh += 1;
                continue;
            }
            let pid = h.producer_id;
            let epoch = h.producer_epoch;
            let first_seq = h.base_sequence;
            if epoch < 0 || first_seq < 0 {
                return Err(LogError::OutOfOrderSequence {
                    producer_id: pid,
                    producer_epoch: epoch,
                    first_seq,
                    reason: format!(
                        "batch {index} has producer id {pid} but epoch {epoch} and base sequence {first_seq}; an idempotent batch needs both ≥ 0"
                    ),
                });
            }
            let last_seq = last_sequence(first_seq, h.last_offset_delta);
            let current = match updated.get(&pid) {
                Some(e) => Some(e.clone()),
                None => self
                    .producers
                    .get(&pid)
                    .filter(|e| !self.is_expired(e, now))
                    .cloned(),
            };
            let Some(mut entry) = current else {
                if first_seq != 0 {
                    return Err(LogError::UnknownProducerId {
                        producer_id: pid,
                        producer_epoch: epoch,
                        first_seq,
                    });
                }
                let mut e = ProducerStateEntry::new(pid, epoch);
                e.add_batch(epoch, placeholder(first_seq, last_seq), now);
                updated.insert(pid, e);
                fresh += 1;
                continue;
            };
            if epoch < entry.producer_epoch {
                return Err(LogError::InvalidProducerEpoch {
                    producer_id: pid,
                    producer_epoch: epoch,
                    current_epoch: entry.producer_epoch,
                });
            }
            if let Some(d) = entry.find_duplicate(epoch, first_seq, last_seq) {
                duplicates.push(d);
                continue;
            }
            if epoch > entry.producer_epoch {
                if first_seq != 0 {
                    return Err(LogError::OutOfOrderSequence {
                        producer_id: pid,
                        producer_epoch: epoch,
                        first_seq,
                        reason: format!(
                            "a new epoch must start at sequence 0 (the partition knows epoch {})",
                            entry.producer_epoch
                        ),
                    });
                }
            } else {
                match entry.last_seq() {
                    Some(last) if in_sequence(last, first_seq) => {}
                    Some(last) => {
                        return Err(LogError::OutOfOrderSequence {
                            producer_id: pid,
                            producer_epoch: epoch,
                            first_seq,
                            reason: format!("expected sequence {}", increment_sequence(last, 1)),
                        });
                    }
                    None if first_seq == 0 => {}
                    None => {
                        return Err(LogError::OutOfOrderSequence {
                            producer_id: pid,
                            producer_epoch: epoch,
                            first_seq,
                            reason: "expected sequence 0".into(),
                        });
                    }
                }
            }
            entry.add_batch(epoch, placeholder(first_seq, last_seq), now);
            updated.insert(pid, entry);
            fresh += 1;
        }
        match (duplicates.first(), duplicates.last()) {
            (Some(first), Some(last)) if fresh == 0 => Ok(AppendCheck::Duplicate {
                first_offset: first.first_offset,
                last_offset: last.last_offset,
                max_timestamp: last.max_timestamp,
            }),
            (Some(d), _) => Err(LogError::OutOfOrderSequence {
                producer_id: -1,
                producer_epoch: -1,
                first_seq: d.first_seq,
                reason: "the append mixes batches written before with new ones; send one batch per partition per request".into(),
            }),
            _ => Ok(AppendCheck::Valid),
        }
    }

    /// Records appended batches (offsets assigned), without checks: after a checked leader
    /// append, for a follower copying its leader, and when replaying the log.
    pub fn apply(&mut self, headers: &[BatchHeader], now: i64) {
        for h in headers {
            self.apply_one(h, now);
        }
    }

    fn apply_one(&mut self, h: &BatchHeader, now: i64) {
        if h.producer_id < 0 {
            return;
        }
        let batch = BatchMetadata {
            first_seq: h.base_sequence,
            last_seq: last_sequence(h.base_sequence, h.last_offset_delta),
            first_offset: h.base_offset,
            last_offset: h.last_offset(),
            max_timestamp: h.max_timestamp,
        };
        self.producers
            .entry(h.producer_id)
            .or_insert_with(|| ProducerStateEntry::new(h.producer_id, h.producer_epoch))
            .add_batch(h.producer_epoch, batch, now);
    }

    /// Writes the state as the snapshot at `offset` (the log end offset: the state of every batch
    /// below it) and prunes older snapshots. Expired producers are dropped first.
    pub fn take_snapshot(&mut self, offset: i64, now: i64) -> Result<()> {
        self.remove_expired_producers(now);
        let path = snapshot_path(&self.dir, offset);
        write_atomically(&path, &encode_snapshot(&self.producers))?;
        self.snapshots.insert(offset);
        while self.snapshots.len() > SNAPSHOTS_TO_KEEP {
            if let Some(&oldest) = self.snapshots.iter().next() {
                self.delete_snapshot(oldest)?;
            }
        }
        Ok(())
    }

    /// Retention moved the log start to `log_start_offset`: snapshots below it are deleted,
    /// except the newest one, which keeps the producers whose batches are gone (Kafka keeps
    /// them too, KAFKA-7190: only `producer.id.expiration.ms` forgets a producer, else the
    /// retry of a batch retention deleted would be written again).
    pub fn truncate_head(&mut self, log_start_offset: i64) -> Result<()> {
        let newest = self.snapshots.iter().next_back().copied();
        let doomed: Vec<i64> = self
            .snapshots
            .range(..log_start_offset)
            .copied()
            .filter(|o| Some(*o) != newest)
            .collect();
        for o in doomed {
            self.delete_snapshot(o)?;
        }
        Ok(())
    }

    /// Deletes every snapshot and forgets every producer (the log restarts empty).
    pub fn clear(&mut self) -> Result<()> {
        self.producers.clear();
        let all: Vec<i64> = self.snapshots.iter().copied().collect();
        for o in all {
            self.delete_snapshot(o)?;
        }
        Ok(())
    }

    fn delete_snapshots_after(&mut self, offset: i64) -> Result<()> {
        let doomed: Vec<i64> = self.snapshots.range(offset + 1..).copied().collect();
        let any = !doomed.is_empty();
        for o in doomed {
            self.delete_snapshot(o)?;
        }
        if any {
            // A snapshot of data that is gone must not come back after a machine crash.
            crate::log::sync_dir(&self.dir)?;
        }
        Ok(())
    }

    fn delete_snapshot(&mut self, offset: i64) -> Result<()> {
        self.snapshots.remove(&offset);
        crate::log_segment::remove_if_exists(&snapshot_path(&self.dir, offset))
    }
}

/// A batch whose offsets are not known yet (checks only look at sequences).
fn placeholder(first_seq: i32, last_seq: i32) -> BatchMetadata {
    BatchMetadata {
        first_seq,
        last_seq,
        first_offset: -1,
        last_offset: -1,
        max_timestamp: -1,
    }
}

/// The path of the snapshot at `offset` in `dir`.
pub fn snapshot_path(dir: &Path, offset: i64) -> PathBuf {
    dir.join(format!("{offset:020}{PRODUCER_SNAPSHOT_SUFFIX}"))
}

fn list_snapshots(dir: &Path) -> Result<BTreeSet<i64>> {
    let mut out = BTreeSet::new();
    for entry in std::fs::read_dir(dir).at(dir)? {
        let name = entry.at(dir)?.file_name();
        let name = name.to_string_lossy();
        if let Some(stem) = name.strip_suffix(PRODUCER_SNAPSHOT_SUFFIX)
            && stem.len() == 20
            && stem.bytes().all(|b| b.is_ascii_digit())
            && let Ok(offset) = stem.parse::<i64>()
        {
            out.insert(offset);
        }
    }
    Ok(out)
}

/// Format (big endian): magic `RPSS`, version u16, CRC-32 u32 of everything after it, producer
/// count u32, then per producer: id i64, epoch i16, last timestamp i64, batch count u8, and per
/// batch: first seq i32, last seq i32, first offset i64, last offset i64, max timestamp i64.
fn encode_snapshot(producers: &HashMap<i64, ProducerStateEntry>) -> Vec<u8> {
    let mut body = Vec::new();
    let mut ids: Vec<&i64> = producers.keys().collect();
    ids.sort_unstable();
    body.extend_from_slice(&(ids.len() as u32).to_be_bytes());
    for id in ids {
        let e = &producers[id];
        body.extend_from_slice(&e.producer_id.to_be_bytes());
        body.extend_from_slice(&e.producer_epoch.to_be_bytes());
        body.extend_from_slice(&e.last_timestamp.to_be_bytes());
        body.push(e.batches.len() as u8);
        for b in &e.batches {
            body.extend_from_slice(&b.first_seq.to_be_bytes());
            body.extend_from_slice(&b.last_seq.to_be_bytes());
            body.extend_from_slice(&b.first_offset.to_be_bytes());
            body.extend_from_slice(&b.last_offset.to_be_bytes());
            body.extend_from_slice(&b.max_timestamp.to_be_bytes());
        }
    }
    let mut out = Vec::with_capacity(body.len() + 10);
    out.extend_from_slice(SNAPSHOT_MAGIC);
    out.extend_from_slice(&SNAPSHOT_VERSION.to_be_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

fn read_snapshot(path: &Path) -> Result<Vec<ProducerStateEntry>> {
    let bytes = std::fs::read(path).at(path)?;
    decode_snapshot(&bytes).map_err(|reason| LogError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    })
}

struct Reader<'a>(&'a [u8]);

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> std::result::Result<[u8; N], &'static str> {
        if self.0.len() < N {
            return Err("truncated");
        }
        let mut a = [0u8; N];
        a.copy_from_slice(&self.0[..N]);
        self.0 = &self.0[N..];
        Ok(a)
    }
}

fn decode_snapshot(bytes: &[u8]) -> std::result::Result<Vec<ProducerStateEntry>, &'static str> {
    if bytes.len() < 10 || &bytes[..4] != SNAPSHOT_MAGIC {
        return Err("not a producer state snapshot");
    }
    if u16::from_be_bytes([bytes[4], bytes[5]]) != SNAPSHOT_VERSION {
        return Err("unknown snapshot version");
    }
    let crc = u32::from_be_bytes([bytes[6], bytes[7], bytes[8], bytes[9]]);
    let body = &bytes[10..];
    if crc32fast::hash(body) != crc {
        return Err("CRC mismatch");
    }
    let mut r = Reader(body);
    let count = u32::from_be_bytes(r.take()?) as usize;
    // Each producer takes at least 19 bytes: bound the allocation by what the file can hold.
    let mut out = Vec::with_capacity(count.min(body.len() / 19));
    for _ in 0..count {
        let producer_id = i64::from_be_bytes(r.take()?);
        let producer_epoch = i16::from_be_bytes(r.take()?);
        let last_timestamp = i64::from_be_bytes(r.take()?);
        let [n] = r.take::<1>()?;
        if usize::from(n) > NUM_BATCHES_TO_RETAIN || r.0.len() < usize::from(n) * BATCH_ENTRY_BYTES
        {
            return Err("bad batch count");
        }
        let mut batches = VecDeque::with_capacity(usize::from(n));
        for _ in 0..n {
            batches.push_back(BatchMetadata {
                first_seq: i32::from_be_bytes(r.take()?),
                last_seq: i32::from_be_bytes(r.take()?),
                first_offset: i64::from_be_bytes(r.take()?),
                last_offset: i64::from_be_bytes(r.take()?),
                max_timestamp: i64::from_be_bytes(r.take()?),
            });
        }
        out.push(ProducerStateEntry {
            producer_id,
            producer_epoch,
            batches,
            last_timestamp,
        });
    }
    if !r.0.is_empty() {
        return Err("trailing bytes");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(pid: i64, epoch: i16, seq: i32, records: i32, base_offset: i64) -> BatchHeader {
        BatchHeader {
            base_offset,
            batch_length: 0,
            partition_leader_epoch: 0,
            magic: 2,
            crc: 0,
            attributes: 0,
            last_offset_delta: records - 1,
            base_timestamp: 0,
            max_timestamp: 7,
            producer_id: pid,
            producer_epoch: epoch,
            base_sequence: seq,
            record_count: records,
        }
    }

    fn manager() -> (tempfile::TempDir, ProducerStateManager) {
        let dir = tempfile::tempdir().unwrap();
        let m = ProducerStateManager::new(dir.path(), DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        (dir, m)
    }

    #[test]
    fn sequences_wrap_at_i32_max() {
        assert_eq!(last_sequence(i32::MAX, 0), i32::MAX);
        assert_eq!(last_sequence(i32::MAX, 1), 0);
        assert_eq!(last_sequence(i32::MAX - 1, 3), 1);
        assert!(in_sequence(i32::MAX, 0));
        assert!(!in_sequence(i32::MAX, 1));
        let (_d, mut m) = manager();
        m.apply(&[header(1, 0, i32::MAX - 1, 2, 0)], 0);
        assert!(matches!(
            m.check_append(&[header(1, 0, 0, 1, -1)], 0).unwrap(),
            AppendCheck::Valid
        ));
        assert!(m.check_append(&[header(1, 0, 1, 1, -1)], 0).is_err());
    }

    #[test]
    fn duplicates_gaps_epochs_and_unknown_producers() {
        let (_d, mut m) = manager();
        // Unknown producer: only sequence 0 starts it.
        assert!(matches!(
            m.check_append(&[header(1, 0, 5, 1, -1)], 0),
            Err(LogError::UnknownProducerId { .. })
        ));
        let n = NUM_BATCHES_TO_RETAIN as i32 + 2;
        for i in 0..n {
            let h = header(1, 0, i * 10, 10, i64::from(i) * 10);
            assert!(matches!(
                m.check_append(&[h], 0).unwrap(),
                AppendCheck::Valid
            ));
            m.apply(&[h], 0);
        }
        // The last NUM_BATCHES_TO_RETAIN batches are duplicates with their original offsets;
        // older ones are not.
        match m.check_append(&[header(1, 0, 30, 10, -1)], 0).unwrap() {
            AppendCheck::Duplicate {
                first_offset,
                last_offset,
                ..
            } => assert_eq!((first_offset, last_offset), (30, 39)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            m.check_append(&[header(1, 0, 10, 10, -1)], 0),
            Err(LogError::OutOfOrderSequence { .. })
        ));
        // A gap.
        assert!(matches!(
            m.check_append(&[header(1, 0, n * 10 + 1, 1, -1)], 0),
            Err(LogError::OutOfOrderSequence { .. })
        ));
        // Within one append, the second batch follows the first.
        let next = n * 10;
        assert!(matches!(
            m.check_append(
                &[header(1, 0, next, 2, -1), header(1, 0, next + 2, 1, -1)],
                0
            )
            .unwrap(),
            AppendCheck::Valid
        ));
        // A duplicate mixed with new batches is refused.
        assert!(
            m.check_append(
                &[header(1, 0, next - 10, 10, -1), header(1, 0, next, 1, -1)],
                0
            )
            .is_err()
        );
        // A new epoch starts at 0; then the old epoch is fenced.
        assert!(matches!(
            m.check_append(&[header(1, 1, 3, 1, -1)], 0),
            Err(LogError::OutOfOrderSequence { .. })
        ));
        m.apply(&[header(1, 1, 0, 1, 70)], 0);
        assert!(matches!(
            m.check_append(&[header(1, 0, 70, 1, -1)], 0),
            Err(LogError::InvalidProducerEpoch { .. })
        ));
        // Non-idempotent batches pass untouched.
        assert!(matches!(
            m.check_append(&[header(-1, -1, -1, 3, -1)], 0).unwrap(),
            AppendCheck::Valid
        ));
    }

    #[test]
    fn producers_expire_after_inactivity() {
        let (_d, mut m) = manager();
        m.set_expiration_ms(1000);
        m.apply(&[header(1, 0, 0, 1, 0)], 100);
        assert!(m.check_append(&[header(1, 0, 1, 1, -1)], 1099).is_ok());
        assert!(matches!(
            m.check_append(&[header(1, 0, 1, 1, -1)], 1100),
            Err(LogError::UnknownProducerId { .. })
        ));
        m.remove_expired_producers(1100);
        assert!(m.producers().is_empty());
    }

    #[test]
    fn snapshot_round_trip_and_damage() {
        let (dir, mut m) = manager();
        m.apply(&[header(1, 0, 0, 3, 0), header(2, 4, 9, 1, 3)], 50);
        m.take_snapshot(4, 50).unwrap();
        let before = m.producers().clone();
        let mut loaded = ProducerStateManager::new(dir.path(), DEFAULT_PRODUCER_ID_EXPIRATION_MS);
        assert_eq!(loaded.load(4).unwrap(), Some(4));
        assert_eq!(loaded.producers(), &before);
        // Above the log end: deleted, nothing loaded.
        assert_eq!(loaded.load(3).unwrap(), None);
        assert!(!snapshot_path(dir.path(), 4).exists());
        // Damaged: deleted, an older one used.
        m.take_snapshot(2, 50).unwrap();
        m.take_snapshot(6, 50).unwrap();
        let p = snapshot_path(dir.path(), 6);
        let mut bytes = std::fs::read(&p).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        std::fs::write(&p, bytes).unwrap();
        assert_eq!(loaded.load(10).unwrap(), Some(2));
        assert!(!p.exists());
    }
}
