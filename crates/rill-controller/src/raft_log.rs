//! Durable storage for the controllers' Raft log, implementing `raft::Storage`.
//!
//! Two files in `metadata.log.dir`:
//! - `raft.wal`: an append-only write-ahead log of records `[len u32][crc32 u32][kind u8][body]`
//!   (entries, hard state, conf state). Replayed on start; a torn or CRC-failing tail is cut.
//! - `raft.snapshot`: the latest snapshot (metadata image + Raft metadata), written atomically.
//!
//! After a snapshot the WAL is rewritten with only what follows it (temp file, fsync, rename), so
//! the log stays bounded. The in-memory copy answers every `Storage` call.
//!
//! Every file created or renamed here has its directory fsynced before anything relies on it
//! (and a newly created `metadata.log.dir` its parent): an fsynced file whose directory entry
//! is lost in a machine crash takes the term and vote with it, and a voter that forgets its
//! vote can vote twice in one term.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use protobuf::Message as _;
use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState, StorageError};

const WAL: &str = "raft.wal";
const SNAPSHOT: &str = "raft.snapshot";
const KIND_ENTRY: u8 = 1;
const KIND_HARD_STATE: u8 = 2;
const KIND_CONF_STATE: u8 = 3;

/// Errors of the Raft log files.
#[derive(Debug, thiserror::Error)]
pub enum RaftLogError {
    /// An I/O error.
    #[error("I/O error on {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        #[allow(missing_docs)]
        #[source]
        source: std::io::Error,
    },
    /// A file's contents are not what this module wrote.
    #[error("corrupt {path}: {reason}")]
    Corrupt {
        /// The WAL or snapshot file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
}

type Result<T> = std::result::Result<T, RaftLogError>;

fn io<T>(path: &Path, r: std::io::Result<T>) -> Result<T> {
    r.map_err(|source| RaftLogError::Io {
        path: path.to_owned(),
        source,
    })
}

/// The controller's Raft log: in memory, persisted to a WAL and a snapshot file.
pub struct RaftLog {
    dir: PathBuf,
    wal: File,
    hard_state: HardState,
    conf_state: ConfState,
    snapshot: Snapshot,
    /// `entries[0].index == snapshot index + 1`.
    entries: Vec<Entry>,
    /// Bytes of entry data appended since the last snapshot.
    bytes_since_snapshot: u64,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog")
            .field("dir", &self.dir)
            .field("first_index", &self.first())
            .field("last_index", &self.last())
            .field("commit", &self.hard_state.commit)
            .finish()
    }
}

impl RaftLog {
    /// Opens (or creates) the log in `dir`. A new log starts with `voters` as its configuration.
    pub fn open(dir: &Path, voters: &[u64]) -> Result<Self> {
        create_dir_durably(dir)?;
        let snapshot = read_snapshot(&dir.join(SNAPSHOT))?;
        let wal_path = dir.join(WAL);
        let wal = io(
            &wal_path,
            OpenOptions::new().create(true).append(true).open(&wal_path),
        )?;
        // The WAL may have just been created (or created by a run that crashed before syncing
        // its directory): make its directory entry durable before it holds a vote.
        sync_dir(dir)?;
        let mut log = RaftLog {
            dir: dir.to_owned(),
            wal,
            hard_state: HardState::default(),
            conf_state: snapshot.get_metadata().get_conf_state().clone(),
            snapshot,
            entries: Vec::new(),
            bytes_since_snapshot: 0,
        };
        log.hard_state.commit = log.snapshot.get_metadata().index;
        log.hard_state.term = log.snapshot.get_metadata().term;
        log.replay()?;
        // A crash between writing a snapshot and rewriting the WAL leaves an older hard state in
        // the WAL: never let it point below what the snapshot already covers. Nor may entries
        // of an older term than the snapshot's follow it (terms never go back along a log):
        // they are from a history the snapshot's overwrote.
        let snap = log.snapshot.get_metadata();
        if let Some(stale) = log.entries.iter().position(|e| e.term < snap.term) {
            log.entries.truncate(stale);
        }
        log.hard_state.commit = log.hard_state.commit.max(snap.index);
        log.hard_state.term = log.hard_state.term.max(snap.term);
        if log.conf_state.voters.is_empty() {
            let cs = ConfState {
                voters: voters.to_vec(),
                ..Default::default()
            };
            log.set_conf_state(cs)?;
            log.sync()?;
        }
        Ok(log)
    }

    fn replay(&mut self) -> Result<()> {
        let path = self.dir.join(WAL);
        let mut bytes = Vec::new();
        io(
            &path,
            File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)),
        )?;
        let mut pos = 0usize;
        while pos + 9 <= bytes.len() {
            let len =
                u32::from_be_bytes([bytes[pos], bytes[pos + 1], bytes[pos + 2], bytes[pos + 3]])
                    as usize;
            let crc = u32::from_be_bytes([
                bytes[pos + 4],
                bytes[pos + 5],
                bytes[pos + 6],
                bytes[pos + 7],
            ]);
            let end = pos + 8 + len;
            if len == 0 || end > bytes.len() || crc32fast::hash(&bytes[pos + 8..end]) != crc {
                break;
            }
            let (kind, body) = (bytes[pos + 8], &bytes[pos + 9..end]);
            let corrupt = |what: &str| RaftLogError::Corrupt {
                path: path.clone(),
                reason: format!("unreadable {what} at byte {pos}"),
            };
            match kind {
                KIND_ENTRY => {
                    let e = Entry::parse_from_bytes(body).map_err(|_| corrupt("entry"))?;
                    self.append_in_memory(e);
                }
                KIND_HARD_STATE => {
                    self.hard_state =
                        HardState::parse_from_bytes(body).map_err(|_| corrupt("hard state"))?
                }
                KIND_CONF_STATE => {
                    self.conf_state =
                        ConfState::parse_from_bytes(body).map_err(|_| corrupt("conf state"))?
                }
                _ => return Err(corrupt("record kind")),
            }
            pos = end;
        }
        if pos < bytes.len() {
            tracing::warn!(wal = %path.display(), valid = pos, dropped = bytes.len() - pos, "cutting a torn raft WAL tail");
            io(
                &path,
                OpenOptions::new().write(true).open(&path).and_then(|f| {
                    f.set_len(pos as u64)?;
                    f.sync_all()
                }),
            )?;
        }
        Ok(())
    }

    fn append_in_memory(&mut self, e: Entry) {
        let snap_index = self.snapshot.get_metadata().index;
        if e.index <= snap_index {
            // Only in a replay of a WAL older than the snapshot (a crash before its rewrite
            // was durable): this append overwrote everything from its index on, so what the
            // replay holds past the snapshot came before it and was overwritten too. What
            // survived is appended again later in the WAL.
            self.entries.clear();
            return;
        }
        // A new entry at index i replaces everything from i on (a leader overwrote them).
        let keep = (e.index - snap_index - 1) as usize;
        self.entries.truncate(keep.min(self.entries.len()));
        self.bytes_since_snapshot += e.data.len() as u64;
        self.entries.push(e);
    }

    fn write_record(&mut self, kind: u8, body: &[u8]) -> Result<()> {
        let mut rec = Vec::with_capacity(body.len() + 9);
        rec.extend_from_slice(&((body.len() + 1) as u32).to_be_bytes());
        let mut h = crc32fast::Hasher::new();
        h.update(&[kind]);
        h.update(body);
        rec.extend_from_slice(&h.finalize().to_be_bytes());
        rec.push(kind);
        rec.extend_from_slice(body);
        let path = self.dir.join(WAL);
        io(&path, self.wal.write_all(&rec))
    }

    /// Appends entries (overwriting any conflicting suffix). Durable after [`sync`](Self::sync).
    pub fn append(&mut self, entries: &[Entry]) -> Result<()> {
        for e in entries {
            let body = e.write_to_bytes().map_err(|err| RaftLogError::Corrupt {
                path: self.dir.join(WAL),
                reason: err.to_string(),
            })?;
            self.write_record(KIND_ENTRY, &body)?;
            self.append_in_memory(e.clone());
        }
        Ok(())
    }

    /// Records the hard state (term, vote, commit). Durable after [`sync`](Self::sync).
    pub fn set_hard_state(&mut self, hs: HardState) -> Result<()> {
        let body = hs.write_to_bytes().map_err(|e| RaftLogError::Corrupt {
            path: self.dir.join(WAL),
            reason: e.to_string(),
        })?;
        self.write_record(KIND_HARD_STATE, &body)?;
        self.hard_state = hs;
        Ok(())
    }

    /// Records only a new commit index.
    pub fn set_commit(&mut self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state.clone();
        hs.commit = commit;
        self.set_hard_state(hs)
    }

    fn set_conf_state(&mut self, cs: ConfState) -> Result<()> {
        let body = cs.write_to_bytes().map_err(|e| RaftLogError::Corrupt {
            path: self.dir.join(WAL),
            reason: e.to_string(),
        })?;
        self.write_record(KIND_CONF_STATE, &body)?;
        self.conf_state = cs;
        Ok(())
    }

    /// fsyncs the WAL.
    pub fn sync(&mut self) -> Result<()> {
        let path = self.dir.join(WAL);
        io(&path, self.wal.sync_data())
    }

    /// Installs a snapshot received from the leader: replaces the log up to its index.
    pub fn apply_snapshot(&mut self, snapshot: Snapshot) -> Result<()> {
        let meta = snapshot.get_metadata();
        let index = meta.index;
        // raft-rs installs a snapshot only when the log does not hold its last entry, so
        // whatever follows here is from a diverged history: the whole log goes, as raft-rs's
        // `MemStorage::apply_snapshot` does (Raft's InstallSnapshot, rule 7).
        self.entries.clear();
        self.hard_state.commit = self.hard_state.commit.max(index);
        self.hard_state.term = self.hard_state.term.max(meta.term);
        self.conf_state = meta.get_conf_state().clone();
        self.snapshot = snapshot;
        self.persist_snapshot_and_rewrite_wal()
    }

    /// Takes a snapshot of the state machine at `index` (already applied) with `data`, and drops
    /// the log entries it covers.
    pub fn compact_to_snapshot(&mut self, index: u64, data: Vec<u8>) -> Result<()> {
        let term = raft::Storage::term(self, index).map_err(|e| RaftLogError::Corrupt {
            path: self.dir.join(WAL),
            reason: format!("no term for snapshot index {index}: {e}"),
        })?;
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Default::default()
        };
        let meta = snapshot.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(self.conf_state.clone());
        self.entries.retain(|e| e.index > index);
        self.snapshot = snapshot;
        self.persist_snapshot_and_rewrite_wal()
    }

    fn persist_snapshot_and_rewrite_wal(&mut self) -> Result<()> {
        let snap_path = self.dir.join(SNAPSHOT);
        let body = self
            .snapshot
            .write_to_bytes()
            .map_err(|e| RaftLogError::Corrupt {
                path: snap_path.clone(),
                reason: e.to_string(),
            })?;
        let mut file = crc32fast::hash(&body).to_be_bytes().to_vec();
        file.extend_from_slice(&body);
        write_atomically(&snap_path, &file)?;
        // Rewrite the WAL with what follows the snapshot.
        let wal_path = self.dir.join(WAL);
        let tmp = self.dir.join("raft.wal.tmp");
        let _ = std::fs::remove_file(&tmp);
        self.wal = io(
            &tmp,
            OpenOptions::new().create(true).append(true).open(&tmp),
        )?;
        let hs = self.hard_state.clone();
        let cs = self.conf_state.clone();
        let entries = std::mem::take(&mut self.entries);
        self.bytes_since_snapshot = 0;
        self.set_hard_state(hs)?;
        self.set_conf_state(cs)?;
        // Re-append entries to the new file (dir stays `self.dir`, path of `wal` is the temp).
        let saved_dir = self.dir.clone();
        for e in &entries {
            let body = e.write_to_bytes().map_err(|err| RaftLogError::Corrupt {
                path: saved_dir.join(WAL),
                reason: err.to_string(),
            })?;
            self.write_record(KIND_ENTRY, &body)?;
            self.bytes_since_snapshot += e.data.len() as u64;
        }
        self.entries = entries;
        io(&tmp, self.wal.sync_all())?;
        io(&wal_path, std::fs::rename(&tmp, &wal_path))?;
        sync_dir(&self.dir)
    }

    /// The latest snapshot (its data is the metadata image).
    pub fn snapshot_ref(&self) -> &Snapshot {
        &self.snapshot
    }

    /// Bytes of entry data since the last snapshot (`metadata.log.max.record.bytes.between.snapshots`).
    pub fn bytes_since_snapshot(&self) -> u64 {
        self.bytes_since_snapshot
    }

    /// The hard state.
    pub fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    fn first(&self) -> u64 {
        self.snapshot.get_metadata().index + 1
    }

    fn last(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot.get_metadata().index, |e| e.index)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(
            self.hard_state.clone(),
            self.conf_state.clone(),
        ))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _ctx: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if high > self.last() + 1 || low > high {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        let offset = self.first();
        let mut out: Vec<Entry> =
            self.entries[(low - offset) as usize..(high - offset) as usize].to_vec();
        if let Some(max) = max_size.into() {
            let mut size = 0u64;
            let mut keep = 0;
            for e in &out {
                size += u64::from(protobuf::Message::compute_size(e));
                if keep > 0 && size > max {
                    break;
                }
                keep += 1;
            }
            out.truncate(keep);
        }
        Ok(out)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        let snap = self.snapshot.get_metadata();
        if idx == snap.index {
            return Ok(snap.term);
        }
        if idx < self.first() {
            return Err(raft::Error::Store(StorageError::Compacted));
        }
        if idx > self.last() {
            return Err(raft::Error::Store(StorageError::Unavailable));
        }
        Ok(self.entries[(idx - self.first()) as usize].term)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.first())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.last())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        if self.snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }
}

fn read_snapshot(path: &Path) -> Result<Snapshot> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Snapshot::default()),
        Err(e) => return io(path, Err(e)),
    };
    let corrupt = |reason: &str| RaftLogError::Corrupt {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    if bytes.len() < 4 {
        return Err(corrupt("too short"));
    }
    let (crc, body) = bytes.split_at(4);
    if crc32fast::hash(body).to_be_bytes() != crc {
        return Err(corrupt("CRC mismatch"));
    }
    Snapshot::parse_from_bytes(body).map_err(|e| corrupt(&e.to_string()))
}

fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    io(
        &tmp,
        File::create(&tmp).and_then(|mut f| {
            f.write_all(bytes)?;
            f.sync_all()
        }),
    )?;
    io(path, std::fs::rename(&tmp, path))?;
    if let Some(dir) = path.parent() {
        sync_dir(dir)?;
    }
    Ok(())
}

/// Creates `dir` and any missing ancestors, fsyncing the parent of each one created.
fn create_dir_durably(dir: &Path) -> Result<()> {
    let missing: Vec<&Path> = dir.ancestors().take_while(|a| !a.exists()).collect();
    io(dir, std::fs::create_dir_all(dir))?;
    for created in missing.iter().rev() {
        if let Some(parent) = parent_dir(created) {
            sync_dir(parent)?;
        }
    }
    // Also when `dir` existed: an earlier run (or a `mkdir -p` before the first start) may have
    // made it without this fsync, and the WAL with its votes lives under it.
    // Best effort: a parent this process cannot open must not stop the controller.
    if missing.is_empty()
        && let Some(parent) = parent_dir(dir)
        && let Err(e) = sync_dir(parent)
    {
        tracing::warn!(dir = %dir.display(), error = %e, "could not fsync the parent of the metadata dir: its entry may not survive a power cut if it was made without one");
    }
    Ok(())
}

/// The directory holding `path`'s entry: `.` for a relative single name (whose `parent()` is
/// empty), `None` for a root.
fn parent_dir(path: &Path) -> Option<&Path> {
    path.parent().map(|p| {
        if p.as_os_str().is_empty() {
            Path::new(".")
        } else {
            p
        }
    })
}

fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(test)]
    DIR_SYNCS.with(|s| s.borrow_mut().push(dir.to_owned()));
    io(dir, File::open(dir).and_then(|d| d.sync_all()))
}

#[cfg(test)]
thread_local! {
    /// Directories fsynced by this thread, for tests.
    static DIR_SYNCS: std::cell::RefCell<Vec<PathBuf>> = const { std::cell::RefCell::new(Vec::new()) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use raft::Storage;

    fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
        Entry {
            index,
            term,
            data: data.to_vec().into(),
            ..Default::default()
        }
    }

    #[test]
    fn creating_the_log_fsyncs_every_directory_it_adds_an_entry_to() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("a").join("metadata");
        DIR_SYNCS.with(|s| s.borrow_mut().clear());
        let mut log = RaftLog::open(&dir, &[1, 2, 3]).unwrap();
        let synced = DIR_SYNCS.with(|s| s.borrow().clone());
        for d in [tmp.path().to_owned(), tmp.path().join("a"), dir.clone()] {
            assert!(
                synced.contains(&d),
                "{} not fsynced: {synced:?}",
                d.display()
            );
        }
        // The term and vote written after creation are durable through the WAL's fsync; a
        // rewrite after a snapshot renames into place and fsyncs the directory again.
        log.set_hard_state(HardState {
            term: 3,
            vote: 2,
            commit: 0,
            ..Default::default()
        })
        .unwrap();
        log.sync().unwrap();
        DIR_SYNCS.with(|s| s.borrow_mut().clear());
        log.append(&[entry(1, 3, b"a")]).unwrap();
        log.set_commit(1).unwrap();
        log.compact_to_snapshot(1, b"image".to_vec()).unwrap();
        assert!(DIR_SYNCS.with(|s| s.borrow().iter().filter(|d| **d == dir).count()) >= 2);
        drop(log);
        // Reopened, the directory's own entry is made durable again (an earlier run may have
        // crashed before its fsync, or a `mkdir -p` made it).
        DIR_SYNCS.with(|s| s.borrow_mut().clear());
        let log = RaftLog::open(&dir, &[1, 2, 3]).unwrap();
        assert!(DIR_SYNCS.with(|s| s.borrow().contains(&tmp.path().join("a"))));
        assert_eq!((log.hard_state().term, log.hard_state().vote), (3, 2));
    }

    #[test]
    fn survives_reopen_with_overwrites_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(dir.path(), &[1, 2, 3]).unwrap();
        log.append(&[entry(1, 1, b"a"), entry(2, 1, b"b"), entry(3, 1, b"c")])
            .unwrap();
        log.append(&[entry(3, 2, b"C"), entry(4, 2, b"d")]).unwrap();
        let hs = HardState {
            term: 2,
            vote: 1,
            commit: 3,
            ..Default::default()
        };
        log.set_hard_state(hs.clone()).unwrap();
        log.sync().unwrap();
        drop(log);
        // A torn record at the end.
        let wal = dir.path().join(WAL);
        let mut f = OpenOptions::new().append(true).open(&wal).unwrap();
        f.write_all(&[0, 0, 0, 50, 1, 2, 3]).unwrap();
        drop(f);
        let log = RaftLog::open(dir.path(), &[1, 2, 3]).unwrap();
        assert_eq!(log.last_index().unwrap(), 4);
        assert_eq!(log.term(3).unwrap(), 2);
        assert_eq!(
            &log.entries(3, 5, None, GetEntriesContext::empty(false))
                .unwrap()[0]
                .data[..],
            b"C"
        );
        assert_eq!(log.initial_state().unwrap().hard_state, hs);
        assert_eq!(
            log.initial_state().unwrap().conf_state.voters,
            vec![1, 2, 3]
        );
    }

    #[test]
    fn snapshots_compact_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(dir.path(), &[1]).unwrap();
        let entries: Vec<Entry> = (1..=100).map(|i| entry(i, 1, b"xxxxxxxx")).collect();
        log.append(&entries).unwrap();
        log.set_commit(100).unwrap();
        log.compact_to_snapshot(90, b"image".to_vec()).unwrap();
        assert_eq!(log.first_index().unwrap(), 91);
        assert!(matches!(
            log.entries(50, 60, None, GetEntriesContext::empty(false)),
            Err(raft::Error::Store(StorageError::Compacted))
        ));
        drop(log);
        let log = RaftLog::open(dir.path(), &[1]).unwrap();
        assert_eq!(
            (log.first_index().unwrap(), log.last_index().unwrap()),
            (91, 100)
        );
        assert_eq!(&log.snapshot(0, 2).unwrap().data[..], b"image");
        assert_eq!(log.term(90).unwrap(), 1);
        assert!(std::fs::metadata(dir.path().join(WAL)).unwrap().len() < 100 * 30);
    }

    #[test]
    fn a_crash_between_snapshot_and_wal_rewrite_keeps_the_commit_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(dir.path(), &[1]).unwrap();
        let entries: Vec<Entry> = (1..=10).map(|i| entry(i, 1, b"x")).collect();
        log.append(&entries).unwrap();
        log.set_commit(4).unwrap();
        log.sync().unwrap();
        let old_wal = std::fs::read(dir.path().join(WAL)).unwrap();
        log.set_commit(10).unwrap();
        log.compact_to_snapshot(8, b"image".to_vec()).unwrap();
        drop(log);
        // The new snapshot survived, the WAL rewrite did not.
        std::fs::write(dir.path().join(WAL), old_wal).unwrap();
        let log = RaftLog::open(dir.path(), &[1]).unwrap();
        assert_eq!(log.first_index().unwrap(), 9);
        assert_eq!(log.last_index().unwrap(), 10);
        assert!(
            log.hard_state().commit >= 8,
            "commit {} fell below the snapshot",
            log.hard_state().commit
        );
    }

    /// The same crash after a new leader overwrote part of the log: replaying the old WAL must
    /// not bring back the overwritten entries past the snapshot (a node holding them could
    /// vote for a candidate missing committed entries).
    #[test]
    fn a_crash_between_snapshot_and_wal_rewrite_does_not_bring_back_overwritten_entries() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(dir.path(), &[1]).unwrap();
        let first: Vec<Entry> = (1..=20).map(|i| entry(i, 1, b"old")).collect();
        log.append(&first).unwrap();
        let second: Vec<Entry> = (12..=14).map(|i| entry(i, 2, b"new")).collect();
        log.append(&second).unwrap();
        log.set_commit(14).unwrap();
        log.sync().unwrap();
        assert_eq!(log.last_index().unwrap(), 14);
        let old_wal = std::fs::read(dir.path().join(WAL)).unwrap();
        log.compact_to_snapshot(14, b"image".to_vec()).unwrap();
        drop(log);
        std::fs::write(dir.path().join(WAL), old_wal).unwrap();
        let log = RaftLog::open(dir.path(), &[1]).unwrap();
        assert_eq!(
            log.last_index().unwrap(),
            14,
            "entries 15..20 of term 1 came back"
        );
        assert_eq!(log.term(14).unwrap(), 2);
    }

    /// A snapshot from the leader replaces the whole log: raft-rs installs one only when the
    /// log does not hold its last entry, so what follows it here is from a diverged history.
    #[test]
    fn an_installed_snapshot_replaces_the_whole_log() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = RaftLog::open(dir.path(), &[1]).unwrap();
        let entries: Vec<Entry> = (1..=20).map(|i| entry(i, 1, b"x")).collect();
        log.append(&entries).unwrap();
        log.sync().unwrap();
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = 17;
        snapshot.mut_metadata().term = 2;
        snapshot.mut_metadata().mut_conf_state().voters = vec![1];
        log.apply_snapshot(snapshot).unwrap();
        assert_eq!(log.last_index().unwrap(), 17);
        drop(log);
        let log = RaftLog::open(dir.path(), &[1]).unwrap();
        assert_eq!(log.last_index().unwrap(), 17);
    }
}
