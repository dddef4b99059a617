//! Group commit: many appenders, one fsync.
//!
//! Appends happen under the log's lock and only write to the page cache. An appender that needs
//! its write durable calls [`GroupCommit::wait_durable`] *after* releasing that lock. The first
//! waiter becomes the leader: it takes every file with unsynced data, fsyncs them with no lock
//! held, and publishes the offset they cover. Appenders arriving meanwhile wait and are covered by
//! the next fsync, so under load one fsync acknowledges many appends.
//!
//! Invariant: `durable` only ever covers offsets whose bytes were written before the fsync that
//! published it started (the target is read together with the file list, under the lock).
//!
//! Failures are sticky ("fsyncgate"): Linux drops the dirty pages of a failed fsync and reports
//! the error once, so a later fsync that succeeds proves nothing about the lost data. The first
//! failed fsync (or failed write of buffered data) therefore fails the group commit for good:
//! `durable` never advances again and every waiter, now or later, gets an error
//! ([`LogError::LogDirOffline`]); the log refuses further writes. Only a restart, recovering
//! from what really reached the disk, brings the log back.
//!
//! Truncation moves `appended` (and `durable`) back; an fsync that started before a truncation
//! may cover bytes that were cut and re-appended after it started, so it publishes nothing
//! (a truncation generation tells).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::error::{IoContext, LogError, Result};
use crate::segment_file::SegmentFile;

/// Shared fsync coordinator of one log. Cloned as `Arc` to appenders.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<State>,
    /// Set (under the lock) when `failed` is: lets readers check without the lock.
    failed_flag: AtomicBool,
    cond: Condvar,
    /// The log's directory, for errors.
    dir: PathBuf,
}

#[derive(Debug)]
struct State {
    /// Log end offset after the last append.
    appended: i64,
    /// Every offset below this is on disk.
    durable: i64,
    /// A leader is fsyncing.
    syncing: bool,
    /// Files written since the last fsync started.
    pending: Vec<Arc<SegmentFile>>,
    /// Number of fsync calls made, for metrics and tests.
    syncs: u64,
    /// Appenders blocked waiting for a leader's fsync.
    waiters: usize,
    /// Bumped by every truncation: an fsync started in an older generation publishes nothing.
    generation: u64,
    /// The first write or fsync failure; once set, nothing becomes durable any more.
    failed: Option<String>,
}

impl GroupCommit {
    pub(crate) fn new(durable: i64, dir: &Path) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                appended: durable,
                durable,
                syncing: false,
                pending: Vec::new(),
                syncs: 0,
                waiters: 0,
                generation: 0,
                failed: None,
            }),
            cond: Condvar::new(),
            failed_flag: AtomicBool::new(false),
            dir: dir.to_owned(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn offline(&self, reason: &str) -> LogError {
        LogError::LogDirOffline {
            dir: self.dir.clone(),
            reason: reason.to_owned(),
        }
    }

    /// Records that `file` now holds data up to (excluding) `end`.
    pub(crate) fn appended(&self, file: &Arc<SegmentFile>, end: i64) {
        let mut s = self.lock();
        if !s.pending.iter().any(|f| Arc::ptr_eq(f, file)) {
            s.pending.push(Arc::clone(file));
        }
        s.appended = s.appended.max(end);
    }

    /// Records that everything below `end` was flushed by a full log flush.
    pub(crate) fn flushed(&self, end: i64) {
        let mut s = self.lock();
        if s.failed.is_some() {
            return;
        }
        s.durable = s.durable.max(end);
        if !s.syncing && s.durable >= s.appended {
            s.pending.clear();
        }
        self.cond.notify_all();
    }

    /// Records that the log was truncated to `end`.
    pub(crate) fn truncated(&self, end: i64) {
        let mut s = self.lock();
        s.generation += 1;
        s.appended = end;
        s.durable = s.durable.min(end);
    }

    /// Marks the log failed (a write or fsync failed): nothing becomes durable any more and
    /// every waiter gets an error. The first reason is kept.
    pub(crate) fn fail(&self, reason: String) {
        let mut s = self.lock();
        if s.failed.is_none() {
            tracing::error!(dir = %self.dir.display(), %reason, durable = s.durable, "log failed: no more writes, durable offset frozen");
            s.failed = Some(reason);
            self.failed_flag.store(true, Ordering::Release);
        }
        self.cond.notify_all();
    }

    /// `Err(LogDirOffline)` once the log failed.
    pub(crate) fn check(&self) -> Result<()> {
        if !self.failed_flag.load(Ordering::Acquire) {
            return Ok(());
        }
        match &self.lock().failed {
            Some(reason) => Err(self.offline(reason)),
            None => Ok(()),
        }
    }

    /// Blocks until every offset below `end` is on disk, fsyncing as the group's leader when no
    /// fsync covering it is under way. Fails (for good: see the module docs) when an fsync
    /// failed: the leader that saw the failure gets the I/O error, everyone else
    /// [`LogError::LogDirOffline`]. Fails with [`LogError::Truncated`] when the log was
    /// truncated below `end` meanwhile (those offsets will never be durable).
    pub fn wait_durable(&self, end: i64) -> Result<()> {
        let mut s = self.lock();
        loop {
            if let Some(reason) = &s.failed {
                return Err(self.offline(reason));
            }
            if s.durable >= end {
                return Ok(());
            }
            if s.appended < end {
                // Only a truncation moves `appended` below an offset that was appended.
                return Err(LogError::Truncated {
                    end,
                    log_end: s.appended,
                });
            }
            if s.syncing {
                s.waiters += 1;
                self.cond.notify_all();
                s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
                s.waiters -= 1;
                continue;
            }
            s.syncing = true;
            let target = s.appended;
            let generation = s.generation;
            let files = std::mem::take(&mut s.pending);
            drop(s);
            let result = files.iter().try_for_each(|f| f.sync().at(f.path()));
            s = self.lock();
            s.syncing = false;
            s.syncs += 1;
            match &result {
                Ok(()) if s.failed.is_none() && s.generation == generation => {
                    s.durable = s.durable.max(target);
                }
                // Truncated meanwhile: the files re-appended to are pending again.
                Ok(()) => {}
                Err(e) => {
                    if s.failed.is_none() {
                        tracing::error!(dir = %self.dir.display(), error = %e, durable = s.durable, "fsync failed: log goes offline, durable offset frozen");
                        s.failed = Some(e.to_string());
                        self.failed_flag.store(true, Ordering::Release);
                    }
                }
            }
            self.cond.notify_all();
            result?;
        }
    }

    /// Offset below which everything is on disk.
    pub fn durable_offset(&self) -> i64 {
        self.lock().durable
    }

    /// How many fsyncs group commit has issued.
    pub fn sync_count(&self) -> u64 {
        self.lock().syncs
    }

    /// Appenders blocked right now waiting for another appender's fsync (for metrics, and for
    /// tests that need appenders to overlap).
    pub fn waiting(&self) -> usize {
        self.lock().waiters
    }

    /// True once a write or fsync failed: the log is offline until it is reopened.
    pub fn is_failed(&self) -> bool {
        self.failed_flag.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every waiter ends up durable under contention. That fsyncs are really shared is asserted
    /// deterministically (a held fsync, queued appenders) in `tests/faults.rs`.
    #[test]
    fn concurrent_waiters_all_become_durable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(SegmentFile::new(
            std::fs::File::create(&path).unwrap(),
            path,
            0,
        ));
        let gc = Arc::new(GroupCommit::new(0, dir.path()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let gc = Arc::clone(&gc);
                let file = Arc::clone(&file);
                std::thread::spawn(move || {
                    for i in 0..50 {
                        let end = (t * 1000 + i + 1) as i64;
                        gc.appended(&file, end);
                        gc.wait_durable(end).unwrap();
                        assert!(gc.durable_offset() >= end);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(gc.sync_count() >= 1);
        assert_eq!(gc.durable_offset(), 7050);
    }

    /// A waiter whose offsets were truncated away is told so at once (it used to loop,
    /// "fsyncing" nothing, until the log grew past its offset again).
    #[test]
    fn offsets_truncated_away_are_never_waited_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(SegmentFile::new(
            std::fs::File::create(&path).unwrap(),
            path,
            0,
        ));
        let gc = GroupCommit::new(0, dir.path());
        gc.appended(&file, 10);
        gc.truncated(5);
        match gc.wait_durable(10) {
            Err(LogError::Truncated { end, log_end }) => assert_eq!((end, log_end), (10, 5)),
            other => panic!("expected Truncated, got {other:?}"),
        }
        gc.wait_durable(5).unwrap();
        assert!(!gc.is_failed(), "a truncation is no failure");
    }
}
