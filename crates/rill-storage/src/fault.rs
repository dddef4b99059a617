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
//! file's content as of its last fsync (or as found on disk before the first write seen), and
//! for every directory its entries as of its last fsync (as found when tracking began, for
//! directories that existed then; none, for directories made since and never fsynced). A
//! [`power_cut`] puts back what was durable: each directory gets its fsynced entries again —
//! files and directories created or renamed into it since go, entries removed or renamed away
//! since come back — and each file its fsynced content. So a missing directory fsync (a segment
//! rolled, a checkpoint renamed into place, a partition set aside for deletion) loses what it
//! would lose on a filesystem without a journal. A cut loses all of a directory's changes since
//! its last fsync, never some of them: tests of the order of changes between two fsyncs use
//! [`record`] (which directory fsyncs came between which renames). [`crash_after`] stops the
//! storage layer's file operations at a chosen step, to cut power there.
//! What an fsync makes durable is captured just before it starts: what is written, created or
//! renamed while it runs does not count. A file written only by other code (not through
//! rill-storage) is durable as it was when tracking began, or empty if it was made since.

use std::collections::BTreeMap;
use std::ffi::OsString;
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
    /// The kind of operation matched; `None` matches every kind (a crash).
    op: Option<FileOp>,
    prefix: PathBuf,
    /// Matching operations still let through before the fault applies.
    skip: u64,
    /// How many more times the fault applies (`None`: until removed).
    remaining: Option<u64>,
    action: Action,
    hits: Arc<Mutex<u64>>,
}

/// A file or directory: (device, inode).
type Key = (u64, u64);

#[derive(Debug)]
struct FileState {
    /// Last path the file was seen under.
    path: PathBuf,
    /// Content as of the last fsync.
    synced: Vec<u8>,
    /// When `synced` was captured (a later capture wins, whichever fsync ends first).
    seq: u64,
}

/// A directory's durable entries.
#[derive(Debug)]
struct DirState {
    /// Last path the directory was seen under.
    path: PathBuf,
    /// Entries as of the directory's last fsync; `None` for a directory made after tracking
    /// began and not fsynced since (empty after a cut).
    durable: Option<BTreeMap<OsString, Node>>,
    /// When `durable` was captured.
    seq: u64,
}

/// What an fsync is about to make durable, captured just before it starts (so nothing done
/// while it runs counts), and recorded once it succeeded.
#[derive(Debug)]
pub(crate) enum SyncCapture {
    File {
        id: u64,
        content: Vec<u8>,
        seq: u64,
    },
    Dir {
        id: u64,
        entries: BTreeMap<OsString, Node>,
        seq: u64,
    },
}

/// What a durable directory entry names: a record in `file_states` or `dir_states`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Node {
    File(u64),
    Dir(u64),
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
    /// Live files under tracked directories → their records in `file_states`.
    files: BTreeMap<Key, u64>,
    /// Records of files, live or not: a removed file's record stays, as a durable directory
    /// entry may still name it until its directory is fsynced.
    file_states: BTreeMap<u64, FileState>,
    /// Live directories under tracked directories → their records in `dir_states`.
    dirs: BTreeMap<Key, u64>,
    dir_states: BTreeMap<u64, DirState>,
    next_node: u64,
}

static REGISTRY: Mutex<Registry> = Mutex::new(Registry {
    next_id: 0,
    rules: Vec::new(),
    recordings: Vec::new(),
    tracked: Vec::new(),
    files: BTreeMap::new(),
    file_states: BTreeMap::new(),
    dirs: BTreeMap::new(),
    dir_states: BTreeMap::new(),
    next_node: 0,
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
    op: Option<FileOp>,
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
    add_rule(Some(op), prefix.as_ref(), 0, None, Action::Fail)
}

/// The first `successes` matching operations succeed, then every later one fails with `EIO`
/// until the guard is dropped (e.g. fail the second rename of a compaction swap).
pub fn inject_after(op: FileOp, prefix: impl AsRef<Path>, successes: u64) -> FaultGuard {
    add_rule(Some(op), prefix.as_ref(), successes, None, Action::Fail)
}

/// The process dies after `successes` more file operations under `prefix` (of any kind): every
/// later write, truncation, fsync, rename and removal fails with `EIO` until the guard is
/// dropped, so nothing more the storage layer does reaches the disk. With [`power_cut`], a test
/// can crash an operation at each of its steps in turn.
pub fn crash_after(prefix: impl AsRef<Path>, successes: u64) -> FaultGuard {
    add_rule(None, prefix.as_ref(), successes, None, Action::Fail)
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
        Some(op),
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
        reg.forget_under(&self.dir);
    }
}

/// Starts recording, for every file written under `dir`, what content an fsync made durable,
/// and for every directory under it which entries an fsync made durable, so that
/// [`power_cut`] can throw away the rest. Call it before the log is opened: what is under
/// `dir` now counts as durable.
pub fn track_power_cuts(dir: impl AsRef<Path>) -> PowerCutTracking {
    let dir = dir.as_ref().to_owned();
    let mut reg = registry();
    reg.next_id += 1;
    let id = reg.next_id;
    reg.tracked.push((id, dir.clone()));
    // A directory that cannot be read now (not made yet) is found at its first fsync.
    let _ = reg.snapshot_tree(&dir);
    PowerCutTracking { id, dir }
}

/// What a [`power_cut`] threw away.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerCutReport {
    /// Files whose content differed from their last fsynced state and was rewound.
    pub files_rewound: usize,
    /// Bytes of file length lost (written but never fsynced).
    pub bytes_lost: u64,
    /// Directory entries put back as of their directory's last fsync: entries made since
    /// (created or renamed in) removed, entries removed or renamed away since restored.
    pub entries_undone: usize,
}

/// Simulates a machine crash under `dir` (which must be tracked by [`track_power_cuts`]):
/// every directory below it gets back its entries as of its last fsync, and every file written
/// through rill-storage its content at its last fsync (its content before its first write,
/// when never fsynced). Drop the logs of `dir` first (without closing them: closing flushes),
/// as the process dies with the machine. Afterwards everything under `dir` counts as durable.
pub fn power_cut(dir: impl AsRef<Path>) -> io::Result<PowerCutReport> {
    cut(dir.as_ref(), None)
}

/// [`power_cut`] on a filesystem that may write back any of its pending changes before a
/// crash: each change to a directory's entries since its last fsync — a creation, a removal,
/// a rename — independently stays or is undone, and each file keeps either its fsynced
/// content or all it holds now (written back without an fsync), chosen by `seed`. A rename
/// is taken as atomic (the file is under its old name or its new one, and a file it replaced
/// comes back with the old name), as a journaling filesystem commits it and as rill, like
/// Kafka, assumes; ext4 without a journal does not promise even that. Code that needs one
/// change durable before another must fsync the directory between them; this finds where it
/// does not.
pub fn power_cut_reordered(dir: impl AsRef<Path>, seed: u64) -> io::Result<PowerCutReport> {
    cut(dir.as_ref(), Some(seed))
}

fn cut(dir: &Path, reorder_seed: Option<u64>) -> io::Result<PowerCutReport> {
    let mut reg = registry();
    if !reg.tracked.iter().any(|(_, d)| d == dir) {
        return Err(io::Error::other(format!(
            "power_cut({}): not a tracked directory; call track_power_cuts on it first",
            dir.display()
        )));
    }
    let meta = std::fs::symlink_metadata(dir)?;
    let Some(&root) = reg.dirs.get(&key_of(&meta)) else {
        return Err(io::Error::other(format!(
            "power_cut({}): the directory did not exist when tracking began and was never fsynced",
            dir.display()
        )));
    };
    // Everything that survives is computed before anything is changed: a directory renamed
    // away and not fsynced may hold files that must come back under the old name.
    let survivors = match reorder_seed {
        None => reg.durable_entries(root),
        Some(seed) => reg.reordered_entries(dir, &mut SplitMix64(seed))?,
    };
    let mut report = PowerCutReport::default();
    reg.restore(dir, &survivors, &mut report)?;
    // What is on disk now is what the restarted machine finds: all of it durable.
    reg.forget_under(dir);
    reg.snapshot_tree(dir)?;
    Ok(report)
}

/// The coin of [`power_cut_reordered`]: SplitMix64, enough for choosing which changes a cut
/// keeps, reproducibly from a seed.
struct SplitMix64(u64);

impl SplitMix64 {
    fn coin(&mut self) -> bool {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) & 1 == 1
    }
}

/// What a directory holds after a cut.
enum Survivor {
    /// A file: its record and its durable content.
    File(u64, Vec<u8>),
    /// A directory, with its record and its entries.
    Dir(u64, BTreeMap<OsString, Survivor>),
}

fn key_of(meta: &std::fs::Metadata) -> Key {
    (meta.dev(), meta.ino())
}

impl Registry {
    fn new_node(&mut self) -> u64 {
        self.next_node += 1;
        self.next_node
    }

    /// The record of the live file `key`, made with `content` (read lazily) if it has none.
    fn file_record(
        &mut self,
        key: Key,
        path: &Path,
        content: impl FnOnce() -> Option<Vec<u8>>,
    ) -> Option<u64> {
        if let Some(&id) = self.files.get(&key) {
            if let Some(state) = self.file_states.get_mut(&id) {
                state.path = path.to_owned();
            }
            return Some(id);
        }
        let synced = content()?;
        let id = self.new_node();
        self.file_states.insert(
            id,
            FileState {
                path: path.to_owned(),
                synced,
                seq: 0,
            },
        );
        self.files.insert(key, id);
        Some(id)
    }

    /// The record of the live directory `key` (one with no durable entries if new).
    fn dir_record(&mut self, key: Key, path: &Path) -> u64 {
        if let Some(&id) = self.dirs.get(&key) {
            if let Some(state) = self.dir_states.get_mut(&id) {
                state.path = path.to_owned();
            }
            return id;
        }
        let id = self.new_node();
        self.dir_states.insert(
            id,
            DirState {
                path: path.to_owned(),
                durable: None,
                seq: 0,
            },
        );
        self.dirs.insert(key, id);
        id
    }

    /// `dir`'s entries now, for an fsync of it about to start. A file first seen here was
    /// never written through the storage layer: what it holds is durable only if it was there
    /// when tracking began (`initial`), else it counts as empty.
    fn capture_dir(&mut self, dir: &Path, initial: bool) -> io::Result<SyncCapture> {
        let dir_key = key_of(&std::fs::symlink_metadata(dir)?);
        let mut entries = BTreeMap::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            // Removed since `read_dir` listed it: not durable either way, leave it out.
            let Ok(meta) = std::fs::symlink_metadata(&path) else {
                continue;
            };
            let node = if meta.is_dir() {
                Node::Dir(self.dir_record(key_of(&meta), &path))
            } else if meta.is_file() {
                let found = || {
                    if initial {
                        std::fs::read(&path).ok()
                    } else {
                        Some(Vec::new())
                    }
                };
                match self.file_record(key_of(&meta), &path, found) {
                    Some(id) => Node::File(id),
                    None => continue,
                }
            } else {
                continue;
            };
            entries.insert(entry.file_name(), node);
        }
        let id = self.dir_record(dir_key, dir);
        Ok(SyncCapture::Dir {
            id,
            entries,
            seq: self.new_node(),
        })
    }

    /// Records what a successful fsync made durable, unless a later capture already was.
    fn commit(&mut self, capture: SyncCapture) {
        match capture {
            SyncCapture::File { id, content, seq } => {
                if let Some(state) = self.file_states.get_mut(&id)
                    && state.seq < seq
                {
                    state.synced = content;
                    state.seq = seq;
                }
            }
            SyncCapture::Dir { id, entries, seq } => {
                if let Some(state) = self.dir_states.get_mut(&id)
                    && state.seq < seq
                {
                    state.durable = Some(entries);
                    state.seq = seq;
                }
            }
        }
    }

    /// Records `dir`'s entries as durable as they are (when tracking begins, after a cut).
    fn snapshot_dir(&mut self, dir: &Path) -> io::Result<()> {
        let capture = self.capture_dir(dir, true)?;
        self.commit(capture);
        Ok(())
    }

    /// Records `dir` and every directory below it as durable as they are.
    fn snapshot_tree(&mut self, dir: &Path) -> io::Result<()> {
        self.snapshot_dir(dir)?;
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
                self.snapshot_tree(&path)?;
            }
        }
        Ok(())
    }

    /// Forgets the live files and directories at and below `path` (about to be removed, or
    /// replaced): their inodes may be handed to new files. Their records stay for the durable
    /// entries that name them.
    fn forget_live(&mut self, path: &Path) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(path) {
                for entry in entries.flatten() {
                    self.forget_live(&entry.path());
                }
            }
            self.dirs.remove(&key_of(&meta));
        } else {
            self.files.remove(&key_of(&meta));
        }
    }

    /// Drops every record under `dir` (tracking ends, or a cut made the disk the new truth).
    fn forget_under(&mut self, dir: &Path) {
        let files: Vec<u64> = (self.file_states.iter())
            .filter(|(_, f)| f.path.starts_with(dir))
            .map(|(id, _)| *id)
            .collect();
        let dirs: Vec<u64> = (self.dir_states.iter())
            .filter(|(_, d)| d.path.starts_with(dir))
            .map(|(id, _)| *id)
            .collect();
        for id in &files {
            self.file_states.remove(id);
        }
        for id in &dirs {
            self.dir_states.remove(id);
        }
        self.files.retain(|_, id| !files.contains(id));
        self.dirs.retain(|_, id| !dirs.contains(id));
    }

    /// The durable entries of the directory record `id`.
    fn durable_entries(&self, id: u64) -> BTreeMap<OsString, Survivor> {
        let mut out = BTreeMap::new();
        let Some(entries) = self.dir_states.get(&id).and_then(|d| d.durable.as_ref()) else {
            return out;
        };
        for (name, node) in entries {
            let survivor = match *node {
                Node::File(f) => match self.file_states.get(&f) {
                    Some(state) => Survivor::File(f, state.synced.clone()),
                    None => continue,
                },
                Node::Dir(d) => Survivor::Dir(d, self.durable_entries(d)),
            };
            out.insert(name.clone(), survivor);
        }
        out
    }

    /// What the live directory `dir` holds after a cut that keeps each change to its entries
    /// since its last fsync, or undoes it, at random (see [`power_cut_reordered`]).
    fn reordered_entries(
        &mut self,
        dir: &Path,
        rng: &mut SplitMix64,
    ) -> io::Result<BTreeMap<OsString, Survivor>> {
        let id = self.dir_record(key_of(&std::fs::symlink_metadata(dir)?), dir);
        let mut durable = self.durable_entries(id);
        let mut live = BTreeMap::new();
        let mut names: Vec<OsString> = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            let meta = std::fs::symlink_metadata(&path)?;
            let survivor = if meta.is_dir() {
                let id = self.dir_record(key_of(&meta), &path);
                Survivor::Dir(id, self.reordered_entries(&path, rng)?)
            } else if meta.is_file() {
                // Never written through the storage layer nor there when tracking began:
                // nothing of it is durable.
                let Some(id) = self.file_record(key_of(&meta), &path, || Some(Vec::new())) else {
                    continue;
                };
                // The filesystem may have written back what was not fsynced yet (a journal
                // commit, memory pressure): the file keeps its live content or its fsynced one.
                let content = if rng.coin() {
                    std::fs::read(&path)?
                } else {
                    (self.file_states.get(&id)).map_or_else(Vec::new, |f| f.synced.clone())
                };
                Survivor::File(id, content)
            } else {
                continue;
            };
            names.push(entry.file_name());
            live.insert(entry.file_name(), survivor);
        }
        names.extend(durable.keys().filter(|n| !live.contains_key(*n)).cloned());
        names.sort();
        // A rename is atomic (one directory's entries, as ext4 commits them): names that a
        // node moved between — from, to, and what a rename replaced — change together.
        let node_of = |s: &Survivor| match s {
            Survivor::File(id, _) | Survivor::Dir(id, _) => *id,
        };
        let mut group: Vec<usize> = (0..names.len()).collect();
        fn root(group: &mut [usize], mut i: usize) -> usize {
            while group[i] != i {
                group[i] = group[group[i]];
                i = group[i];
            }
            i
        }
        let mut first_name_of: BTreeMap<u64, usize> = BTreeMap::new();
        for (i, name) in names.iter().enumerate() {
            for node in [live.get(name), durable.get(name)].into_iter().flatten() {
                let j = *first_name_of.entry(node_of(node)).or_insert(i);
                let (a, b) = (root(&mut group, i), root(&mut group, j));
                group[a] = b;
            }
        }
        let mut keep_new: BTreeMap<usize, bool> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (i, name) in names.into_iter().enumerate() {
            let new = live.remove(&name);
            let old = durable.remove(&name);
            let unchanged = match (&new, &old) {
                (Some(a), Some(b)) => node_of(a) == node_of(b),
                _ => false,
            };
            // An unchanged entry is the live one (a directory's own entries are reordered
            // inside it); a changed one takes its group's state, new or old.
            let r = root(&mut group, i);
            let kept = if unchanged || *keep_new.entry(r).or_insert_with(|| rng.coin()) {
                new
            } else {
                old
            };
            if let Some(survivor) = kept {
                out.insert(name, survivor);
            }
        }
        Ok(out)
    }

    /// Makes `dir` hold exactly `survivors`, keeping files and directories that are still the
    /// same ones (rewinding files' content) and remaking the others.
    fn restore(
        &mut self,
        dir: &Path,
        survivors: &BTreeMap<OsString, Survivor>,
        report: &mut PowerCutReport,
    ) -> io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            if !survivors.contains_key(&entry.file_name()) {
                self.remove_any(&entry.path())?;
                report.entries_undone += 1;
            }
        }
        for (name, survivor) in survivors {
            let path = dir.join(name);
            let current = std::fs::symlink_metadata(&path).ok();
            match survivor {
                Survivor::File(id, synced) => {
                    let same = current
                        .as_ref()
                        .is_some_and(|m| m.is_file() && self.files.get(&key_of(m)) == Some(id));
                    if same {
                        let now = std::fs::read(&path)?;
                        if now != *synced {
                            report.files_rewound += 1;
                            report.bytes_lost +=
                                (now.len() as u64).saturating_sub(synced.len() as u64);
                            let f = File::options().write(true).open(&path)?;
                            f.set_len(synced.len() as u64)?;
                            f.write_all_at(synced, 0)?;
                            f.sync_all()?;
                        }
                    } else {
                        if current.is_some() {
                            self.remove_any(&path)?;
                        }
                        std::fs::write(&path, synced)?;
                        report.entries_undone += 1;
                    }
                }
                Survivor::Dir(id, entries) => {
                    let same = current
                        .as_ref()
                        .is_some_and(|m| m.is_dir() && self.dirs.get(&key_of(m)) == Some(id));
                    if !same {
                        if current.is_some() {
                            self.remove_any(&path)?;
                        }
                        std::fs::create_dir(&path)?;
                        report.entries_undone += 1;
                    }
                    self.restore(&path, entries, report)?;
                }
            }
        }
        Ok(())
    }

    /// Removes a file or a directory tree (the power cut's own removals, not hooked).
    fn remove_any(&mut self, path: &Path) -> io::Result<()> {
        self.forget_live(path);
        if std::fs::symlink_metadata(path)?.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        }
    }
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
            if rule.op.is_some_and(|o| o != op)
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
        let meta = file.metadata().ok()?;
        let mut buf = vec![0u8; meta.len() as usize];
        match file.read_exact_at(&mut buf, 0) {
            Ok(()) => Some(buf),
            // By name only while the name is still this file (not one made in its place).
            Err(_) => std::fs::symlink_metadata(path)
                .ok()
                .filter(|m| key_of(m) == key_of(&meta))
                .and_then(|_| std::fs::read(path).ok()),
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
        let key = key_of(&meta);
        if meta.nlink() == 0 {
            // Removed while still open: its inode may be handed to a new file once closed.
            reg.files.remove(&key);
            return Ok(());
        }
        reg.file_record(key, path, || content(file, path));
        Ok(())
    }

    /// Before an fsync of a file: faults, then what it is about to make durable (the file's
    /// content now: what is written while the fsync runs may or may not be covered by it).
    pub(crate) fn before_sync(file: &File, path: &Path) -> io::Result<Option<SyncCapture>> {
        before(FileOp::Fsync, path)?;
        let mut reg = registry();
        if !tracked(&reg, path) {
            return Ok(None);
        }
        let Ok(meta) = file.metadata() else {
            return Ok(None);
        };
        if !meta.is_file() {
            return Ok(None);
        }
        let key = key_of(&meta);
        if meta.nlink() == 0 {
            // An fsync of a file removed while open (a truncated log's segment still in group
            // commit's list): its name is gone, and its inode may be handed to a new file.
            reg.files.remove(&key);
            return Ok(None);
        }
        let Some(content) = content(file, path) else {
            return Ok(None);
        };
        let Some(id) = reg.file_record(key, path, || Some(Vec::new())) else {
            return Ok(None);
        };
        Ok(Some(SyncCapture::File {
            id,
            content,
            seq: reg.new_node(),
        }))
    }

    /// Before an fsync of a directory: faults, then its entries now.
    pub(crate) fn before_sync_dir(dir: &Path) -> io::Result<Option<SyncCapture>> {
        before(FileOp::Fsync, dir)?;
        let mut reg = registry();
        if !tracked(&reg, dir) {
            return Ok(None);
        }
        // A directory that cannot be listed now has nothing to record.
        Ok(reg.capture_dir(dir, false).ok())
    }

    /// After a successful fsync: what it captured is durable.
    pub(crate) fn after_sync(capture: Option<SyncCapture>) {
        if let Some(capture) = capture {
            registry().commit(capture);
        }
    }

    /// Removes a file or tree (`remove`): faults first, then the removal and forgetting the
    /// live files below `path` under the registry's lock, so no fsync of a handle still open
    /// elsewhere records the doomed inode in between. Their records stay: until the directory
    /// is fsynced, a power cut brings them back.
    pub(crate) fn remove(
        path: &Path,
        remove: impl FnOnce(&Path) -> io::Result<()>,
    ) -> io::Result<()> {
        before(FileOp::Remove, path)?;
        let mut reg = registry();
        if tracked(&reg, path) {
            reg.forget_live(path);
        }
        remove(path)
    }

    /// Renames `from` to `to`: faults (on `from`) first, then under the registry's lock the
    /// rename, forgetting the live file it replaced (whose inode is free for reuse) and
    /// recording the new name.
    pub(crate) fn rename(from: &Path, to: &Path) -> io::Result<()> {
        note(FileOp::Rename, from, Some(to));
        apply(FileOp::Rename, from, true)?;
        let mut reg = registry();
        let replaced = std::fs::symlink_metadata(to).ok();
        let moved = std::fs::symlink_metadata(from).ok();
        std::fs::rename(from, to)?;
        if let Some(meta) = replaced
            && moved.as_ref().is_none_or(|m| key_of(m) != key_of(&meta))
        {
            reg.files.remove(&key_of(&meta));
            reg.dirs.remove(&key_of(&meta));
        }
        // A renamed directory (a partition set aside for deletion) takes its files along.
        let moved_path = |path: &mut PathBuf| {
            if let Ok(rest) = path.strip_prefix(from) {
                *path = if rest.as_os_str().is_empty() {
                    to.to_owned()
                } else {
                    to.join(rest)
                };
            }
        };
        reg.file_states
            .values_mut()
            .for_each(|s| moved_path(&mut s.path));
        reg.dir_states
            .values_mut()
            .for_each(|s| moved_path(&mut s.path));
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

    /// A file written with `data` through the storage layer and fsynced.
    fn synced(path: &Path, data: &[u8]) -> File {
        let f = open(path);
        fsio::write_all_at(&f, path, data, 0).unwrap();
        fsio::sync(&f, path, false).unwrap();
        f
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
        let f = synced(&path, b"batches 13..20");
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
        let state = &reg.file_states[&reg.files[&new_inode]];
        assert_eq!(state.path, target);
        assert_eq!(state.synced, b"new");
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
        let f = synced(&path, b"data");
        let inode = key(&f.metadata().unwrap());
        drop(f);
        let aside = dir.path().join("t-0.1-delete");
        fsio::rename(&part, &aside).unwrap();
        {
            let reg = registry();
            let state = &reg.file_states[&reg.files[&inode]];
            assert_eq!(state.path, aside.join("00000000000000000000.log"));
        }
        fsio::remove_dir_all(&aside).unwrap();
        assert!(!registry().files.contains_key(&inode));
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// A file fsynced in a directory that was not: the file is gone after a cut; after the
    /// directory's fsync it stays.
    #[test]
    fn a_new_file_survives_a_cut_only_once_its_directory_is_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let _tracking = track_power_cuts(dir.path());
        let a = dir.path().join("00000000000000000000.log");
        let f = synced(&a, b"batch");
        drop(f);
        let report = power_cut(dir.path()).unwrap();
        assert_eq!(report.entries_undone, 1, "{report:?}");
        assert!(names(dir.path()).is_empty());

        let f = synced(&a, b"batch");
        fsio::sync_dir(dir.path()).unwrap();
        fsio::write_all_at(&f, &a, b" and more", 5).unwrap();
        drop(f);
        let report = power_cut(dir.path()).unwrap();
        assert_eq!(report.entries_undone, 0, "{report:?}");
        assert_eq!(std::fs::read(&a).unwrap(), b"batch");
    }

    /// Renames and removals not followed by a directory fsync are undone: the checkpoint
    /// renamed over comes back, the removed segment comes back with its fsynced content.
    #[test]
    fn renames_and_removals_are_undone_until_the_directory_is_fsynced() {
        let dir = tempfile::tempdir().unwrap();
        let _tracking = track_power_cuts(dir.path());
        let target = dir.path().join("checkpoint");
        let tmp = dir.path().join("checkpoint.tmp");
        let seg = dir.path().join("00000000000000000000.log");
        for (path, data) in [(&target, &b"old"[..]), (&seg, b"batches")] {
            synced(path, data);
        }
        fsio::sync_dir(dir.path()).unwrap();
        let f = synced(&tmp, b"new");
        drop(f);
        fsio::rename(&tmp, &target).unwrap();
        fsio::remove_file(&seg).unwrap();
        let report = power_cut(dir.path()).unwrap();
        assert_eq!(report.entries_undone, 2, "{report:?}");
        assert_eq!(
            names(dir.path()),
            ["00000000000000000000.log", "checkpoint"]
        );
        assert_eq!(std::fs::read(&target).unwrap(), b"old");
        assert_eq!(std::fs::read(&seg).unwrap(), b"batches");

        // Done right: the same steps, the directory fsynced after them.
        let f = synced(&tmp, b"new");
        drop(f);
        fsio::rename(&tmp, &target).unwrap();
        fsio::remove_file(&seg).unwrap();
        fsio::sync_dir(dir.path()).unwrap();
        let report = power_cut(dir.path()).unwrap();
        assert_eq!(report, PowerCutReport::default());
        assert_eq!(names(dir.path()), ["checkpoint"]);
        assert_eq!(std::fs::read(&target).unwrap(), b"new");
    }

    /// A reordered cut keeps or undoes each unsynced change on its own: over many seeds a file
    /// renamed aside is under its old name or its new one (never both, never neither), a file
    /// renamed over another is the new one or the old one, and a new file is there or not;
    /// what is there always has its fsynced content, and fsynced changes always stay.
    #[test]
    fn a_reordered_cut_keeps_any_subset_of_the_unsynced_changes() {
        use std::collections::BTreeSet;
        let mut outcomes = BTreeSet::new();
        for seed in 0..64 {
            let dir = tempfile::tempdir().unwrap();
            let _tracking = track_power_cuts(dir.path());
            let path = |name: &str| dir.path().join(name);
            synced(&path("kept"), b"kept");
            synced(&path("a"), b"batch");
            synced(&path("checkpoint"), b"old");
            fsio::sync_dir(dir.path()).unwrap();
            fsio::rename(&path("a"), &path("b")).unwrap();
            synced(&path("checkpoint.tmp"), b"new");
            fsio::rename(&path("checkpoint.tmp"), &path("checkpoint")).unwrap();
            synced(&path("c"), b"c");
            power_cut_reordered(dir.path(), seed).unwrap();
            let now = names(dir.path());
            for name in &now {
                let content = std::fs::read(path(name)).unwrap();
                match name.as_str() {
                    "kept" => assert_eq!(content, b"kept"),
                    "a" | "b" => assert_eq!(content, b"batch"),
                    "c" => assert_eq!(content, b"c"),
                    "checkpoint" => assert!(content == b"old" || content == b"new"),
                    other => panic!("seed {seed}: {other} should not be there"),
                }
            }
            let renamed: Vec<&str> = (now.iter().map(String::as_str))
                .filter(|n| *n == "a" || *n == "b")
                .collect();
            assert_eq!(renamed.len(), 1, "seed {seed}: {now:?}");
            assert!(now.contains(&"kept".to_owned()) && now.contains(&"checkpoint".to_owned()));
            let checkpoint = std::fs::read(path("checkpoint")).unwrap();
            outcomes.insert((now, checkpoint));
            // After the cut everything there is durable: a plain cut changes nothing.
            assert_eq!(power_cut(dir.path()).unwrap(), PowerCutReport::default());
        }
        // Every combination of the three independent changes came up.
        assert_eq!(outcomes.len(), 8, "{outcomes:?}");
    }

    /// A partition directory renamed aside (for deletion) and removed, its parent never
    /// fsynced: it comes back under its old name with its files' fsynced content.
    #[test]
    fn a_directory_removed_without_its_parents_fsync_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let part = dir.path().join("t-0");
        std::fs::create_dir(&part).unwrap();
        let seg = part.join("00000000000000000000.log");
        std::fs::write(&seg, b"before tracking").unwrap();
        let _tracking = track_power_cuts(dir.path());
        let f = synced(&seg, b"BEFORE");
        drop(f);
        let aside = dir.path().join("t-0.1-delete");
        fsio::rename(&part, &aside).unwrap();
        fsio::remove_dir_all(&aside).unwrap();
        power_cut(dir.path()).unwrap();
        assert_eq!(names(dir.path()), ["t-0"]);
        assert_eq!(std::fs::read(&seg).unwrap(), b"BEFORE tracking");
    }

    /// A directory made since tracking began comes back only if its parent was fsynced after,
    /// and then with the entries of its own last fsync (none if it never was).
    #[test]
    fn new_directories_come_back_as_their_last_fsyncs_saw_them() {
        let dir = tempfile::tempdir().unwrap();
        let _tracking = track_power_cuts(dir.path());
        std::fs::create_dir(dir.path().join("t-1")).unwrap();
        std::fs::write(dir.path().join("t-1").join("y"), b"y").unwrap();
        std::fs::create_dir(dir.path().join("t-2")).unwrap();
        let x = dir.path().join("t-2").join("x");
        synced(&x, b"x");
        // Written, never through the storage layer, never fsynced: there, but empty.
        std::fs::write(dir.path().join("t-2").join("z"), b"z").unwrap();
        fsio::sync_dir(&dir.path().join("t-2")).unwrap();
        fsio::sync_dir(dir.path()).unwrap();
        std::fs::create_dir(dir.path().join("t-3")).unwrap();
        let report = power_cut(dir.path()).unwrap();
        assert_eq!(report.entries_undone, 2, "{report:?}");
        assert_eq!(names(dir.path()), ["t-1", "t-2"]);
        assert!(names(&dir.path().join("t-1")).is_empty());
        assert_eq!(names(&dir.path().join("t-2")), ["x", "z"]);
        assert_eq!(std::fs::read(&x).unwrap(), b"x");
        assert!(
            std::fs::read(dir.path().join("t-2").join("z"))
                .unwrap()
                .is_empty()
        );
    }
}
