//! `LeaderEpochFileCache`: which leader epoch started at which offset of a partition, as Kafka
//! keeps it (KIP-101/KIP-279). Replication uses it to find where a follower's log diverged from
//! the new leader's: the end offset of an epoch is the start offset of the next one.
//!
//! Persisted in `<partition dir>/leader-epoch-checkpoint`, rewritten atomically whenever an
//! epoch starts or the log is truncated (both rare), with a CRC-32 guarding the contents.

use std::path::PathBuf;

use crate::checkpoint::write_atomically;
use crate::error::{IoContext, LogError, Result};

/// File name of the epoch checkpoint in a partition directory.
pub const LEADER_EPOCH_CHECKPOINT: &str = "leader-epoch-checkpoint";

/// An epoch and the first offset appended under it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EpochEntry {
    /// The leader epoch (increases with every leader change of the partition).
    pub epoch: i32,
    /// First offset of that epoch.
    pub start_offset: i64,
}

/// The epoch → start offset history of one partition.
#[derive(Debug)]
pub struct LeaderEpochFileCache {
    path: PathBuf,
    entries: Vec<EpochEntry>,
}

impl LeaderEpochFileCache {
    /// Loads the checkpoint in `dir` (empty when missing). A damaged file is an error naming it.
    pub fn open(dir: &std::path::Path) -> Result<Self> {
        let path = dir.join(LEADER_EPOCH_CHECKPOINT);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(LeaderEpochFileCache {
                    path,
                    entries: Vec::new(),
                });
            }
            Err(e) => return Err(e).at(&path),
        };
        let corrupt = |reason: &str| LogError::Corrupt {
            path: path.clone(),
            reason: reason.to_owned(),
        };
        let (body, crc_line) = text
            .rsplit_once("crc32 ")
            .ok_or_else(|| corrupt("missing crc32 line"))?;
        let crc =
            u32::from_str_radix(crc_line.trim(), 16).map_err(|_| corrupt("unreadable crc32"))?;
        if crc32fast::hash(body.as_bytes()) != crc {
            return Err(corrupt("CRC mismatch"));
        }
        let mut entries = Vec::new();
        for line in body.lines().skip(1) {
            let (epoch, offset) = line.split_once(' ').ok_or_else(|| corrupt("bad entry"))?;
            entries.push(EpochEntry {
                epoch: epoch.parse().map_err(|_| corrupt("bad epoch"))?,
                start_offset: offset.parse().map_err(|_| corrupt("bad offset"))?,
            });
        }
        Ok(LeaderEpochFileCache { path, entries })
    }

    fn persist(&self) -> Result<()> {
        let mut body = format!("{}\n", self.entries.len());
        for e in &self.entries {
            body.push_str(&format!("{} {}\n", e.epoch, e.start_offset));
        }
        let crc = crc32fast::hash(body.as_bytes());
        body.push_str(&format!("crc32 {crc:08x}\n"));
        write_atomically(&self.path, body.as_bytes())
    }

    /// Records that `epoch` starts at `start_offset`. Epochs only grow: an older or equal epoch
    /// changes nothing.
    pub fn assign(&mut self, epoch: i32, start_offset: i64) -> Result<()> {
        if epoch < 0 || self.entries.last().is_some_and(|last| last.epoch >= epoch) {
            return Ok(());
        }
        self.entries.push(EpochEntry {
            epoch,
            start_offset,
        });
        self.persist()
    }

    /// The newest epoch, if any.
    pub fn latest_epoch(&self) -> Option<i32> {
        self.entries.last().map(|e| e.epoch)
    }

    /// The entries, oldest first.
    pub fn entries(&self) -> &[EpochEntry] {
        &self.entries
    }

    /// Kafka's `endOffsetFor`: for a follower at `epoch`, the largest epoch ≤ `epoch` this log
    /// has and the offset where it ended (the start of the next epoch, or `log_end_offset` for
    /// the latest). `None` when every epoch here is newer than `epoch`.
    pub fn end_offset_for(&self, epoch: i32, log_end_offset: i64) -> Option<(i32, i64)> {
        let i = self.entries.partition_point(|e| e.epoch <= epoch);
        let found = self.entries.get(i.checked_sub(1)?)?;
        let end = self
            .entries
            .get(i)
            .map_or(log_end_offset, |next| next.start_offset);
        Some((found.epoch, end))
    }

    /// Forgets epochs that start at or after `end_offset` (the log was truncated there).
    pub fn truncate_from_end(&mut self, end_offset: i64) -> Result<()> {
        let keep = self
            .entries
            .partition_point(|e| e.start_offset < end_offset);
        if keep < self.entries.len() {
            self.entries.truncate(keep);
            self.persist()?;
        }
        Ok(())
    }

    /// Drops epochs entirely before `start_offset` (retention moved the log start), keeping the
    /// one that covers it, moved up to the new start.
    pub fn truncate_from_start(&mut self, start_offset: i64) -> Result<()> {
        let covering = self
            .entries
            .partition_point(|e| e.start_offset <= start_offset);
        if covering == 0 {
            return Ok(());
        }
        let first = covering - 1;
        if first == 0 && self.entries[0].start_offset == start_offset {
            return Ok(());
        }
        self.entries.drain(..first);
        self.entries[0].start_offset = start_offset;
        self.persist()
    }

    /// Forgets everything (the log restarted empty).
    pub fn clear(&mut self) -> Result<()> {
        if self.entries.is_empty() {
            return Ok(());
        }
        self.entries.clear();
        self.persist()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(dir: &std::path::Path, entries: &[(i32, i64)]) -> LeaderEpochFileCache {
        let mut c = LeaderEpochFileCache::open(dir).unwrap();
        for (e, o) in entries {
            c.assign(*e, *o).unwrap();
        }
        c
    }

    #[test]
    fn end_offsets_follow_kafkas_rules() {
        let dir = tempfile::tempdir().unwrap();
        let c = cache(dir.path(), &[(0, 0), (2, 10), (5, 30)]);
        assert_eq!(c.end_offset_for(0, 50), Some((0, 10)));
        assert_eq!(
            c.end_offset_for(1, 50),
            Some((0, 10)),
            "an epoch this log never had ends where the older one did"
        );
        assert_eq!(c.end_offset_for(2, 50), Some((2, 30)));
        assert_eq!(c.end_offset_for(4, 50), Some((2, 30)));
        assert_eq!(
            c.end_offset_for(5, 50),
            Some((5, 50)),
            "the latest epoch ends at the log end"
        );
        assert_eq!(c.end_offset_for(9, 50), Some((5, 50)));
        assert_eq!(
            cache(tempfile::tempdir().unwrap().path(), &[(3, 7)]).end_offset_for(2, 9),
            None
        );
    }

    #[test]
    fn epochs_only_grow_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = cache(dir.path(), &[(1, 0), (1, 5), (0, 9), (3, 12)]);
        assert_eq!(c.entries().len(), 2);
        c.truncate_from_end(12).unwrap();
        assert_eq!(c.latest_epoch(), Some(1));
        c.assign(4, 12).unwrap();
        c.truncate_from_start(7).unwrap();
        let reopened = LeaderEpochFileCache::open(dir.path()).unwrap();
        assert_eq!(
            reopened.entries(),
            &[
                EpochEntry {
                    epoch: 1,
                    start_offset: 7
                },
                EpochEntry {
                    epoch: 4,
                    start_offset: 12
                }
            ]
        );
        let path = dir.path().join(LEADER_EPOCH_CHECKPOINT);
        let damaged = std::fs::read_to_string(&path)
            .unwrap()
            .replace("4 12", "4 13");
        std::fs::write(&path, damaged).unwrap();
        assert!(matches!(
            LeaderEpochFileCache::open(dir.path()),
            Err(LogError::Corrupt { .. })
        ));
    }
}
