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

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::segment_file::SegmentFile;

/// Shared fsync coordinator of one log. Cloned as `Arc` to appenders.
#[derive(Debug)]
pub struct GroupCommit {
    state: Mutex<State>,
    cond: Condvar,
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
}

impl GroupCommit {
    pub(crate) fn new(durable: i64) -> Self {
        GroupCommit {
            state: Mutex::new(State {
                appended: durable,
                durable,
                syncing: false,
                pending: Vec::new(),
                syncs: 0,
            }),
            cond: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        s.durable = s.durable.max(end);
        if !s.syncing && s.durable >= s.appended {
            s.pending.clear();
        }
        self.cond.notify_all();
    }

    /// Records that the log was truncated to `end`.
    pub(crate) fn truncated(&self, end: i64) {
        let mut s = self.lock();
        s.appended = end;
        s.durable = s.durable.min(end);
    }

    /// Blocks until every offset below `end` is on disk, fsyncing as the group's leader when no
    /// fsync covering it is under way.
    pub fn wait_durable(&self, end: i64) -> std::io::Result<()> {
        let mut s = self.lock();
        loop {
            if s.durable >= end {
                return Ok(());
            }
            if s.syncing {
                s = self.cond.wait(s).unwrap_or_else(|p| p.into_inner());
                continue;
            }
            s.syncing = true;
            let target = s.appended;
            let files = std::mem::take(&mut s.pending);
            drop(s);
            let result = files.iter().try_for_each(|f| f.sync());
            s = self.lock();
            s.syncing = false;
            s.syncs += 1;
            match result {
                Ok(()) => s.durable = s.durable.max(target),
                Err(_) => {
                    // Keep the files so the next attempt syncs them again.
                    for f in files {
                        if !s.pending.iter().any(|p| Arc::ptr_eq(p, &f)) {
                            s.pending.push(f);
                        }
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concurrent_waiters_share_fsyncs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = Arc::new(SegmentFile::new(
            std::fs::File::create(&path).unwrap(),
            path,
            0,
        ));
        let gc = Arc::new(GroupCommit::new(0));
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
        assert!(gc.sync_count() <= 400, "never more fsyncs than appends");
        assert!(gc.sync_count() >= 1);
    }
}
