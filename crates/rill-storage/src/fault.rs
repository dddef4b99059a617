//! Fault injection for tests (feature `fault-injection`): make the commit log's file operations
//! fail, pause them, or simulate a power cut that loses everything not fsynced.
//!
//! Every write, truncation, fsync (of files and directories), rename and removal the storage
//! layer makes goes through one internal function; with this feature on, each call first
//! consults a process-wide registry of faults. Faults are scoped by *path prefix* (normally a
//! test's temporary directory), so tests running in parallel in one process do not see each
//! other's faults. Without the feature the calls are the plain `std` ones: production pays
//! nothing.
//!
//! Enable it from another crate's tests with a dev-dependency:
//! ```toml
//! [dev-dependencies]
//! rill-storage = { workspace = true, features = ["fault-injection"] }
//! ```
//!
//! ```no_run
//! # use rill_storage::fault::{self, FileOp};
//! # let dir = std::path::Path::new("/tmp/x");
//! // Every fsync under `dir` fails with EIO until the guard is dropped.
//! let guard = fault::inject_fsync_failure(dir);
//! // ... append, wait for durability: the log reports `LogError::LogDirOffline` from now on.
//! assert!(guard.hits() >= 1);
//!
//! // Power cuts: record what is fsynced under `dir`, then lose everything else.
//! let tracking = fault::track_power_cuts(dir);
//! // ... write through a `Log`, drop it without closing ...
//! let report = fault::power_cut(dir).unwrap();
//! // ... reopen: only fsynced bytes are left.
//! ```
//!
//! The power-cut model: for every file written under a tracked directory, the layer keeps the
//! file's content as of its last fsync (or as found on disk before the first write seen). A
//! [`power_cut`] rewinds each such file to that content. Directory entries are not modelled:
//! creations, renames and removals survive a cut whether or not the directory was fsynced, so
//! missing directory fsyncs are not caught by it: tests check the order of the calls instead, with
//! [`record`] (which directory fsyncs came between which renames).
//! Files written by other code (not through rill-storage) are left alone.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The kind of file operation a fault applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FileOp {
    /// Writing data into a file (segment data, index entries, checkpoint contents).
    Write,
    /// Setting a file's length (truncation).
    Truncate,
    /// `fsync`/`fdatasync` of a file or a directory.
    Fsync,
    /// Renaming a file (the fault matches on the source path).
    Rename,
    /// Removing a file or a directory tree.
    Remove,
}

#[derive(Debug)]
enum Action {
    Fail,
    Pause(Arc<Gate>),
}

#[derive(Debug)]
struct Rule {
    id: u64,
    op: FileOp,
    prefix: PathBuf,
    /// Matching operations still let through before the fault applies.
    skip: u64,
    /// How many more times the fault applies (`None`: until removed).
    remaining: Option<u64>,
    action: Action,
    hits: Arc<Mutex<u64>>,
}

#[derive(Debug)]
struct FileState {
    /// Last path the file was seen under.
    path: PathBuf,
    /// Content as of the last fsync.
    synced: Vec<u8>,
}

/// One file operation seen by a [`Recording`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RecordedOp {
    /// What was done.
    pub op: FileOp,
    /// The file or directory it was done to (a rename's source).
    pub path: PathBuf,
    /// A rename's destination.
    pub to: Option<PathBuf>,
}

type Ops = Arc<Mutex<Vec<RecordedOp>>>;

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    rules: Vec<Rule>,
    /// (id, prefix, operations seen under it), for [`record`].
    recordings: Vec<(u64, PathBuf, Ops)>,
    tracked: Vec<(u64, PathBuf)>,
    /// (device, inode) → durable state, for files under tracked directories.
    files: BTreeMap<(u64, u64), FileState>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    rules: Vec::new(),
    recordings: Vec::new(),
    tracked: Vec::new(),
    files: BTreeMap::new(),
});

fn registry() -> MutexGuard<'static, Registry> {
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Removes its fault when dropped; tells how often the fault applied.
#[derive(Debug)]
#[must_use = "the fault is removed when the guard is dropped"]
pub struct FaultGuard {
    id: u64,
    hits: Arc<Mutex<u64>>,
}

impl FaultGuard {
    /// How many operations the fault has failed (or paused) so far.
    pub fn hits(&self) -> u64 {
        *self.hits.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Drop for FaultGuard {
    fn drop(&mut self) {
        registry().rules.retain(|r| r.id != self.id);
    }
}

fn add_rule(
    op: FileOp,
    prefix: &Path,
    skip: u64,
    remaining: Option<u64>,
    action: Action,
) -> FaultGuard {
    let hits = Arc::new(Mutex::new(0));
    let mut reg = registry();
    reg.next_id += 1;
    let id = reg.next_id;
    reg.rules.push(Rule {
        id,
        op,
        prefix: prefix.to_owned(),
        skip,
        remaining,
        action,
        hits: Arc::clone(&hits),
    });
    FaultGuard { id, hits }
}

/// Every `op` on a path under `prefix` fails with `EIO` until the guard is dropped.
pub fn inject(op: FileOp, prefix: impl AsRef<Path>) -> FaultGuard {
    add_rule(op, prefix.as_ref(), 0, None, Action::Fail)
}

/// The first `successes` matching operations succeed, then every later one fails with `EIO`
/// until the guard is dropped (e.g. fail the second rename of a compaction swap).
pub fn inject_after(op: FileOp, prefix: impl AsRef<Path>, successes: u64) -> FaultGuard {
    add_rule(op, prefix.as_ref(), successes, None, Action::Fail)
}

/// Every fsync of a file or directory under `prefix` fails with `EIO` (as a failing disk or a
/// full thin-provisioned volume does) until the guard is dropped.
pub fn inject_fsync_failure(prefix: impl AsRef<Path>) -> FaultGuard {
    inject(FileOp::Fsync, prefix)
}

/// Every data write under `prefix` fails with `EIO` until the guard is dropped.
pub fn inject_write_failure(prefix: impl AsRef<Path>) -> FaultGuard {
    inject(FileOp::Write, prefix)
}

#[derive(Debug, Default)]
struct Gate {
    state: Mutex<GateState>,
    cond: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    paused: usize,
    released: bool,
}

/// One paused operation (from [`pause_next`]): the next matching operation blocks until
/// [`PausedOp::release`] or until this value is dropped. Lets a test hold an fsync in flight
/// while it does something else, deterministically.
#[derive(Debug)]
pub struct PausedOp {
    gate: Arc<Gate>,
    _guard: FaultGuard,
}

impl PausedOp {
    /// Waits until an operation is blocked on this pause, up to `timeout`; true if one is.
    pub fn wait_until_paused(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut s = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        while s.paused == 0 {
            let now = Instant::now();
            if now >= deadline {
                return false;
            }
            s = self
                .gate
                .cond
                .wait_timeout(s, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        true
    }

    /// True when an operation is blocked on this pause now.
    pub fn is_paused(&self) -> bool {
        self.gate
            .state
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .paused
            > 0
    }

    /// Lets the paused operation (and any later one caught by this pause) continue.
    pub fn release(&self) {
        let mut s = self.gate.state.lock().unwrap_or_else(|p| p.into_inner());
        s.released = true;
        self.gate.cond.notify_all();
    }
}

impl Drop for PausedOp {
    fn drop(&mut self) {
        self.release();
    }
}

/// The next `op` on a path under `prefix` blocks until the returned pause is released (later
/// ones are not affected).
pub fn pause_next(op: FileOp, prefix: impl AsRef<Path>) -> PausedOp {
    let gate = Arc::new(Gate::default());
    let guard = add_rule(
        op,
        prefix.as_ref(),
        0,
        Some(1),
        Action::Pause(Arc::clone(&gate)),
    );
    PausedOp {
        gate,
        _guard: guard,
    }
}

/// Records, in order, every file operation under a prefix until dropped: for tests of the
/// order of operations the power-cut model does not cover (directory entries are not modelled,
/// so a rename made durable too late is caught by checking which directory fsyncs came between).
#[derive(Debug)]
#[must_use = "recording stops when the guard is dropped"]
pub struct Recording {
    id: u64,
    ops: Ops,
}

impl Recording {
    /// The operations recorded so far, oldest first.
    pub fn ops(&self) -> Vec<RecordedOp> {
        self.ops.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Drop for Recording {
    fn drop(&mut self) {
        registry().recordings.retain(|(id, _, _)| *id != self.id);
    }
}

/// Starts recording every write, truncation, fsync, rename and removal under `prefix`.
pub fn record(prefix: impl AsRef<Path>) -> Recording {
    let ops = Ops::default();
    let mut reg = registry();
    reg.next_id += 1;
    let id = reg.next_id;
    reg.recordings
        .push((id, prefix.as_ref().to_owned(), Arc::clone(&ops)));
    Recording { id, ops }
}

/// Keeps power-cut tracking of a directory on; dropping it stops tracking and forgets the
/// recorded state.
#[derive(Debug)]
#[must_use = "tracking stops when the guard is dropped"]
pub struct PowerCutTracking {
    id: u64,
    dir: PathBuf,
}

impl Drop for PowerCutTracking {
    fn drop(&mut self) {
        let mut reg = registry();
        reg.tracked.retain(|(id, _)| *id != self.id);
        let dir = self.dir.clone();
        reg.files.retain(|_, f| !f.path.starts_with(&dir));
    }
}

/// Starts recording, for every file written under `dir`, what content an fsync made durable,
/// so that [`power_cut`] can throw away the rest. Call it before the log is opened.
pub fn track_power_cuts(dir: impl AsRef<Path>) -> PowerCutTracking {
    let dir = dir.as_ref().to_owned();
    let mut reg = registry();
    reg.next_id += 1;
    let id = reg.next_id;
    reg.tracked.push((id, dir.clone()));
    PowerCutTracking { id, dir }
}

/// What a [`power_cut`] threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    /// Files whose content differed from their last fsynced state and was rewound.
    pub files_rewound: usize,
    /// Bytes of file length lost (written but never fsynced).
    pub bytes_lost: u64,
}

/// Simulates a machine crash under `dir` (which must be tracked by [`track_power_cuts`]):
/// every file written through rill-storage is rewound to its content at its last fsync (to its
/// content before its first write, when never fsynced). Drop the logs of `dir` first (without
/// closing them: closing flushes), as the process dies with the machine.
pub fn power_cut(dir: impl AsRef<Path>) -> io::Result<PowerCutReport> {
    let dir = dir.as_ref();
    let mut reg = registry();
    if !reg.tracked.iter().any(|(_, d)| dir.starts_with(d)) {
        return Err(io::Error::other(format!(
            "power_cut({}): the directory is not tracked; call track_power_cuts first",
            dir.display()
        )));
    }
    let mut report = PowerCutReport::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            if meta.is_dir() {
                stack.push(path);
                continue;
            }
            if !meta.is_file() {
                continue;
            }
            let key = (meta.dev(), meta.ino());
            let Some(state) = reg.files.remove(&key) else {
                continue;
            };
            let current = std::fs::read(&path)?;
            if current != state.synced {
                report.files_rewound += 1;
                report.bytes_lost +=
                    (current.len() as u64).saturating_sub(state.synced.len() as u64);
                let f = File::options().write(true).open(&path)?;
                f.set_len(state.synced.len() as u64)?;
                f.write_all_at(&state.synced, 0)?;
                f.sync_all()?;
            }
        }
    }
    // Anything still recorded under `dir` is gone from it (removed by other code).
    reg.files.retain(|_, f| !f.path.starts_with(dir));
    Ok(report)
}

/// The hooks the storage layer's file operations call (see `fsio`).
pub(crate) mod hook {
    use super::*;

    /// Applies the faults matching `op` on `path`: fails, pauses or lets it through.
    pub(crate) fn before(op: FileOp, path: &Path) -> io::Result<()> {
        note(op, path, None);
        apply(op, path, true)
    }

    /// Adds the operation to the recordings whose prefix it falls under.
    fn note(op: FileOp, path: &Path, to: Option<&Path>) {
        let reg = registry();
        for (_, prefix, ops) in &reg.recordings {
            if path.starts_with(prefix) {
                ops.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(RecordedOp {
                        op,
                        path: path.to_owned(),
                        to: to.map(Path::to_owned),
                    });
            }
        }
    }

    /// One operation is paused at most once; failures still apply after the pause.
    fn apply(op: FileOp, path: &Path, may_pause: bool) -> io::Result<()> {
        let mut reg = registry();
        let mut pause = None;
        for rule in reg.rules.iter_mut() {
            if rule.op != op
                || !path.starts_with(&rule.prefix)
                || rule.remaining == Some(0)
                || (!may_pause && matches!(rule.action, Action::Pause(_)))
            {
                continue;
            }
            if rule.skip > 0 {
                rule.skip -= 1;
                continue;
            }
            if let Some(n) = rule.remaining.as_mut() {
                *n -= 1;
            }
            *rule.hits.lock().unwrap_or_else(|p| p.into_inner()) += 1;
            match &rule.action {
                Action::Fail => {
                    return Err(io::Error::other(format!(
                        "injected {op:?} failure on {} (EIO)",
                        path.display()
                    )));
                }
                Action::Pause(gate) => {
                    pause = Some(Arc::clone(gate));
                    break;
                }
            }
        }
        drop(reg);
        if let Some(gate) = pause {
            let mut s = gate.state.lock().unwrap_or_else(|p| p.into_inner());
            s.paused += 1;
            gate.cond.notify_all();
            while !s.released {
                s = gate.cond.wait(s).unwrap_or_else(|p| p.into_inner());
            }
            s.paused -= 1;
            drop(s);
            // Faults added while paused (or after the pause in the list) still apply.
            return apply(op, path, false);
        }
        Ok(())
    }

    fn tracked(reg: &Registry, path: &Path) -> bool {
        reg.tracked.iter().any(|(_, d)| path.starts_with(d))
    }

    /// Reads a file's whole content through its handle, or by name when the handle is
    /// write-only.
    fn content(file: &File, path: &Path) -> Option<Vec<u8>> {
        let len = file.metadata().ok()?.len() as usize;
        let mut buf = vec![0u8; len];
        match file.read_exact_at(&mut buf, 0) {
            Ok(()) => Some(buf),
            Err(_) => std::fs::read(path).ok(),
        }
    }

    /// Before a write or truncation: faults, then (for tracked files seen for the first time)
    /// records the content on disk now as durable.
    pub(crate) fn before_data_change(op: FileOp, file: &File, path: &Path) -> io::Result<()> {
        before(op, path)?;
        let mut reg = registry();
        if !tracked(&reg, path) {
            return Ok(());
        }
        let Ok(meta) = file.metadata() else {
            return Ok(());
        };
        let key = (meta.dev(), meta.ino());
        if meta.nlink() == 0 {
            // Removed while still open: its inode may be handed to a new file once closed.
            reg.files.remove(&key);
            return Ok(());
        }
        if let Some(state) = reg.files.get_mut(&key) {
            state.path = path.to_owned();
        } else if let Some(synced) = content(file, path) {
            reg.files.insert(
                key,
                FileState {
                    path: path.to_owned(),
                    synced,
                },
            );
        }
        Ok(())
    }

    /// After a successful fsync: the file's current content is durable.
    pub(crate) fn after_sync(file: &File, path: &Path) {
        let mut reg = registry();
        if !tracked(&reg, path) {
            return;
        }
        let Ok(meta) = file.metadata() else {
            return;
        };
        if !meta.is_file() {
            return;
        }
        let key = (meta.dev(), meta.ino());
        if meta.nlink() == 0 {
            // An fsync of a file removed while open (a truncated log's segment still in group
            // commit's list): nothing of it survives a crash, and recording it would hand its
            // content to the next file that gets the inode.
            reg.files.remove(&key);
            return;
        }
        if let Some(synced) = content(file, path) {
            let path = reg
                .files
                .get(&key)
                .map_or_else(|| path.to_owned(), |s| s.path.clone());
            reg.files.insert(key, FileState { path, synced });
        }
    }

    /// Removes a file or tree (`remove`): faults first, then the removal and forgetting the
    /// recorded state below `path` under the registry's lock, so no fsync of a handle still open
    /// elsewhere records the doomed inode in between.
    pub(crate) fn remove(
        path: &Path,
        remove: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        before(FileOp::Remove, path)?;
        let mut reg = registry();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            reg.files.remove(&(meta.dev(), meta.ino()));
        }
        reg.files.retain(|_, f| !f.path.starts_with(path));
        remove(path)
    }

    /// Renames `from` to `to`: faults (on `from`) first, then under the registry's lock the
    /// rename, forgetting the file it replaced (whose inode is free for reuse) and recording the
    /// new name.
    pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
        note(FileOp::Rename, from, Some(to));
        apply(FileOp::Rename, from, true)?;
        let mut reg = registry();
        let replaced = std::fs::symlink_metadata(to).ok();
        let moved = std::fs::symlink_metadata(from).ok();
        std::fs::rename(from, to)?;
        if let Some(meta) = replaced
            && moved
                .as_ref()
                .is_none_or(|m| (m.dev(), m.ino()) != (meta.dev(), meta.ino()))
        {
            reg.files.remove(&(meta.dev(), meta.ino()));
        }
        if let Some(state) = moved.and_then(|m| reg.files.get_mut(&(m.dev(), m.ino()))) {
            state.path = to.to_owned();
        }
        // A renamed directory (a partition set aside for deletion) takes its files along.
        for state in reg.files.values_mut() {
            if let Ok(rest) = state.path.strip_prefix(from) {
                state.path = to.join(rest);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fsio;

    fn key(meta: &std::fs::Metadata) -> (u64, u64) {
        (meta.dev(), meta.ino())
    }

    fn open(path: &Path) -> File {
        File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)
            .unwrap()
    }

    /// A truncated log's segment stays in group commit's list and is fsynced after its removal:
    /// recording it then left a stale "synced" content that the next file given the inode
    /// inherited, and a power cut wrote the removed batches into it.
    #[test]
    fn removed_files_are_never_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let _tracking = track_power_cuts(dir.path());
        let path = dir.path().join("00000000000000000013.log");
        let f = open(&path);
        fsio::write_all_at(&f, &path, b"batches 13..20", 0).unwrap();
        fsio::sync(&f, &path, false).unwrap();
        let inode = key(&f.metadata().unwrap());
        assert!(registry().files.contains_key(&inode));
        fsio::remove_file(&path).unwrap();
        assert!(!registry().files.contains_key(&inode));
        fsio::sync(&f, &path, false).unwrap();
        fsio::write_all_at(&f, &path, b"more", 14).unwrap();
        assert!(
            !registry().files.contains_key(&inode),
            "an unlinked file must not be recorded"
        );
    }

    /// A rename over a file frees the replaced inode: its record goes with it; the moved file's
    /// record follows it to the new name.
    #[test]
    fn rename_forgets_the_replaced_file_and_follows_the_moved_one() {
        let dir = tempfile::tempdir().unwrap();
        let _tracking = track_power_cuts(dir.path());
        let target = dir.path().join("leader-epoch-checkpoint");
        let tmp = dir.path().join("leader-epoch-checkpoint.tmp");
        let old = open(&target);
        fsio::write_all_at(&old, &target, b"old", 0).unwrap();
        fsio::sync(&old, &target, true).unwrap();
        let old_inode = key(&old.metadata().unwrap());
        drop(old);
        let new = open(&tmp);
        fsio::write_all_at(&new, &tmp, b"new", 0).unwrap();
        fsio::sync(&new, &tmp, true).unwrap();
        let new_inode = key(&new.metadata().unwrap());
        fsio::rename(&tmp, &target).unwrap();
        let reg = registry();
        assert!(!reg.files.contains_key(&old_inode));
        assert_eq!(reg.files[&new_inode].path, target);
        assert_eq!(reg.files[&new_inode].synced, b"new");
    }

    /// A directory renamed (a partition set aside for deletion) takes its files' records along,
    /// so removing it under the new name forgets them.
    #[test]
    fn renamed_directories_take_their_records_along() {
        let dir = tempfile::tempdir().unwrap();
        let _tracking = track_power_cuts(dir.path());
        let part = dir.path().join("t-0");
        std::fs::create_dir(&part).unwrap();
        let path = part.join("00000000000000000000.log");
        let f = open(&path);
        fsio::write_all_at(&f, &path, b"data", 0).unwrap();
        fsio::sync(&f, &path, false).unwrap();
        drop(f);
        let aside = dir.path().join("t-0.1-delete");
        fsio::rename(&part, &aside).unwrap();
        fsio::remove_dir_all(&aside).unwrap();
        assert!(
            !registry()
                .files
                .values()
                .any(|s| s.path.starts_with(dir.path()))
        );
    }
}
