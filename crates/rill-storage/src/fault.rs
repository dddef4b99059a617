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
//! missing directory fsyncs are not caught by it (they are tested by inspection of the calls).
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

#[derive(Debug, Default)]
struct Registry {
    next_id: u64,
    rules: Vec<Rule>,
    tracked: Vec<(u64, PathBuf)>,
    /// (device, inode) → durable state, for files under tracked directories.
    files: BTreeMap<(u64, u64), FileState>,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    rules: Vec::new(),
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
        apply(op, path, true)
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
        if let Some(synced) = content(file, path) {
            let path = reg
                .files
                .get(&key)
                .map_or_else(|| path.to_owned(), |s| s.path.clone());
            reg.files.insert(key, FileState { path, synced });
        }
    }

    /// Before removing a file or tree: faults, then forgets recorded state below it.
    pub(crate) fn before_remove(path: &Path) -> io::Result<()> {
        before(FileOp::Remove, path)?;
        let mut reg = registry();
        if let Ok(meta) = std::fs::symlink_metadata(path) {
            reg.files.remove(&(meta.dev(), meta.ino()));
        }
        reg.files.retain(|_, f| !f.path.starts_with(path));
        Ok(())
    }
}
