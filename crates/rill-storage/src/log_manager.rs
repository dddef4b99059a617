//! The logs of one broker across its `log.dirs`: opening and recovering them at start-up,
//! creating and deleting partition logs, retention and cleaning passes, and the per-directory
//! checkpoint files that make restarts fast and safe.
//!
//! Each log dir holds one directory per partition (`<topic>-<partition>`), plus:
//! - `recovery-point-offset-checkpoint`: per partition, the offset below which data was fsynced;
//!   recovery re-validates only what lies after it;
//! - `cleaner-offset-checkpoint`: per partition, how far compaction has cleaned;
//! - `.rill_clean_shutdown`: present only after a clean shutdown (skip recovery entirely).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::{Mutex, RwLock};

use crate::checkpoint::{OffsetCheckpointFile, write_atomically};
use crate::clock::SharedClock;
use crate::config::LogConfig;
use crate::error::{IoContext, LogError, Result};
use crate::log::{Log, LogOpenOptions};
use crate::log_cleaner::{CleanerConfig, CleanerStats, CleaningPass};
use crate::meta_properties::MetaProperties;

/// File name of the recovery point checkpoint in each log dir.
pub const RECOVERY_POINT_CHECKPOINT: &str = "recovery-point-offset-checkpoint";
/// File name of the cleaner checkpoint in each log dir.
pub const CLEANER_CHECKPOINT: &str = "cleaner-offset-checkpoint";
/// Marker of a clean shutdown.
pub const CLEAN_SHUTDOWN_FILE: &str = ".rill_clean_shutdown";

pub use rill_protocol::TopicPartition;

/// The log directory name of a partition, `<topic>-<partition>` (as Kafka names it).
pub fn partition_dir_name(tp: &TopicPartition) -> String {
    format!("{}-{}", tp.topic, tp.partition)
}

/// The partition a log directory name stands for; `None` for other entries (`-delete` and
/// `-stray` logs, files).
pub fn parse_partition_dir(name: &str) -> Option<TopicPartition> {
    let (topic, partition) = name.rsplit_once('-')?;
    let partition = partition.parse().ok().filter(|p: &i32| *p >= 0)?;
    (!topic.is_empty()).then(|| TopicPartition::new(topic, partition))
}

/// A log shared between the request handlers and background tasks.
pub type SharedLog = Arc<RwLock<Log>>;

/// The broker's logs.
#[derive(Debug)]
pub struct LogManager {
    log_dirs: Vec<PathBuf>,
    clock: SharedClock,
    logs: RwLock<HashMap<TopicPartition, (usize, SharedLog)>>,
    cleaner: CleanerConfig,
    /// Serialises checkpoint writes (they share a temp file name per log dir).
    checkpoint_lock: Mutex<()>,
    /// Set by [`LogManager::shutdown`]: no cleaning pass starts on a closed log.
    shut_down: AtomicBool,
    /// Held (read) by whatever adds or sets aside logs, for its whole run, and taken (write)
    /// by [`LogManager::shutdown`] to set `shut_down`: none is under way while shutdown
    /// closes the logs, so none can put back or add a log it would not close.
    open_gate: RwLock<()>,
    /// `producer.id.expiration.ms` for every log (a broker setting, as in Kafka).
    producer_id_expiration_ms: std::sync::atomic::AtomicI64,
    /// Each log dir's `.lock`, held (an exclusive `flock`) while this manager lives: a second
    /// process on the same dirs would recover, cut and rewrite files this one is writing
    /// (Kafka's `LogManager.lockLogDirs`).
    _dir_locks: Vec<std::fs::File>,
    /// This broker's `node.id`, written into every dir's `meta.properties`.
    node_id: i32,
    /// The cluster the dirs belong to (their `meta.properties`), once known.
    cluster_id: Mutex<Option<String>>,
}

/// Checks every dir's `meta.properties` against `node_id`, writes it where missing, and
/// returns the cluster the dirs belong to (the same in all, or refused).
fn claim_log_dirs(dirs: &[PathBuf], node_id: i32) -> Result<Option<String>> {
    let mut cluster: Option<(String, &PathBuf)> = None;
    let mut unclustered = Vec::new();
    for dir in dirs {
        let meta = match MetaProperties::read(dir)? {
            Some(m) => m,
            None => {
                let m = MetaProperties::new(node_id);
                m.write(dir)?;
                m
            }
        };
        if meta.node_id != node_id {
            return Err(crate::meta_properties::foreign(
                dir,
                format!(
                    "belongs to node.id {} (its meta.properties), not to this broker's node.id {node_id}: \
                     start node {} on it, or give this broker its own log.dirs",
                    meta.node_id, meta.node_id
                ),
            ));
        }
        let Some(c) = meta.cluster_id.clone() else {
            unclustered.push((dir, meta));
            continue;
        };
        match &cluster {
            Some((other, other_dir)) if *other != c => {
                return Err(crate::meta_properties::foreign(
                    dir,
                    format!(
                        "belongs to cluster {c}, but log dir {} to cluster {other} (their meta.properties): \
                         a broker's log.dirs must all come from one cluster",
                        other_dir.display()
                    ),
                ));
            }
            Some(_) => {}
            None => cluster = Some((c, dir)),
        }
    }
    if let Some((c, _)) = &cluster {
        // A dir added to log.dirs since: it belongs to the cluster of the others.
        for (dir, mut meta) in unclustered {
            meta.cluster_id = Some(c.clone());
            meta.write(dir)?;
        }
    }
    Ok(cluster.map(|(c, _)| c))
}

/// The lock file in every log dir.
const LOCK_FILE: &str = ".lock";

/// Takes `dir`'s lock, or says who holds it.
fn lock_dir(dir: &std::path::Path) -> Result<std::fs::File> {
    let path = dir.join(LOCK_FILE);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .at(&path)?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(LogError::InvalidConfig {
            name: "log.dirs".into(),
            value: dir.display().to_string(),
            reason: "another process (a rill broker still running?) holds this log dir's .lock; \
                     stop it, or give this broker its own log.dirs"
                .into(),
        }),
        Err(std::fs::TryLockError::Error(e)) => Err(e).at(&path),
    }
}

impl LogManager {
    /// Opens every partition log found in `log_dirs` (creating the dirs if needed), recovering
    /// what the last shutdown left unflushed. Every dir is claimed for `node_id` first (its
    /// `meta.properties`): a dir of another node, or dirs of different clusters, are refused
    /// before any of their logs is opened.
    pub fn open(
        log_dirs: Vec<PathBuf>,
        node_id: i32,
        default_config: &LogConfig,
        cleaner: CleanerConfig,
        clock: SharedClock,
    ) -> Result<Self> {
        if log_dirs.is_empty() {
            return Err(LogError::InvalidConfig {
                name: "log.dirs".into(),
                value: String::new(),
                reason: "at least one log directory is required".into(),
            });
        }
        let mut logs = HashMap::new();
        let mut dir_locks = Vec::new();
        for dir in &log_dirs {
            let existed = dir.exists();
            crate::log::create_dir_durably(dir)?;
            dir_locks.push(lock_dir(dir)?);
            // Also when it existed: an earlier run (or a `mkdir -p` before the first start) may
            // have made it without this fsync, and every acknowledged record lives under it.
            // Best effort: a parent this process cannot open must not stop the broker.
            if existed
                && let Some(parent) = crate::log::parent_dir(dir)
                && let Err(e) = crate::log::sync_dir(parent)
            {
                tracing::warn!(dir = %dir.display(), error = %e, "could not fsync the parent of a log dir: its entry may not survive a power cut if it was made without one");
            }
        }
        let cluster_id = claim_log_dirs(&log_dirs, node_id)?;
        for (i, dir) in log_dirs.iter().enumerate() {
            let clean_marker = dir.join(CLEAN_SHUTDOWN_FILE);
            let clean_shutdown = clean_marker.exists();
            // As Kafka: a damaged recovery-point checkpoint only costs a full recovery (every
            // log re-validated from offset 0), never a broker that cannot start.
            let recovery_points = OffsetCheckpointFile::new(dir.join(RECOVERY_POINT_CHECKPOINT))
                .read()
                .unwrap_or_else(|e| {
                    tracing::warn!(dir = %dir.display(), error = %e, "ignoring a damaged recovery-point checkpoint: recovering every log of this directory from offset 0");
                    BTreeMap::new()
                });
            let cleaner_points = OffsetCheckpointFile::new(dir.join(CLEANER_CHECKPOINT))
                .read()
                .unwrap_or_default();
            for entry in std::fs::read_dir(dir).at(dir)? {
                let entry = entry.at(dir)?;
                if !entry.file_type().at(entry.path())?.is_dir() {
                    continue;
                }
                let name = entry.file_name().to_string_lossy().into_owned();
                let Some(tp) = parse_partition_dir(&name) else {
                    continue;
                };
                let options = LogOpenOptions {
                    recovery_point: recovery_points.get(&name).copied().unwrap_or(0),
                    clean_shutdown,
                };
                let mut log = Log::open(
                    entry.path(),
                    default_config.clone(),
                    options,
                    Arc::clone(&clock),
                )?;
                if let Some(&c) = cleaner_points.get(&name) {
                    log.set_cleaner_checkpoint(c);
                }
                logs.insert(tp, (i, Arc::new(RwLock::new(log))));
            }
            // The marker speaks only of the shutdown before this start.
            crate::log_segment::remove_if_exists(&clean_marker)?;
        }
        let manager = LogManager {
            log_dirs,
            clock,
            logs: RwLock::new(logs),
            cleaner,
            checkpoint_lock: Mutex::new(()),
            shut_down: AtomicBool::new(false),
            open_gate: RwLock::new(()),
            producer_id_expiration_ms: std::sync::atomic::AtomicI64::new(
                crate::producer_state::DEFAULT_PRODUCER_ID_EXPIRATION_MS,
            ),
            _dir_locks: dir_locks,
            node_id,
            cluster_id: Mutex::new(cluster_id),
        };
        manager.checkpoint()?;
        Ok(manager)
    }

    /// The cluster these dirs belong to, when they know it: the broker registers with it, and
    /// a controller quorum of another cluster refuses the registration.
    pub fn cluster_id(&self) -> Option<String> {
        self.cluster_id.lock().clone()
    }

    /// Records the cluster the broker joined in every dir's `meta.properties`, the first time;
    /// afterwards checks it is the same. An error when the dirs belong to another cluster
    /// ([`LogError::ForeignLogDir`]) or a dir could not be written.
    pub fn set_cluster_id(&self, id: &str) -> Result<()> {
        let mut known = self.cluster_id.lock();
        match known.as_deref() {
            Some(k) if k == id => return Ok(()),
            Some(k) => {
                return Err(crate::meta_properties::foreign(
                    &self.log_dirs[0],
                    format!(
                        "belongs to cluster {k} (its meta.properties), but the controller quorum serves cluster {id}: \
                         point the broker at its own cluster's controllers, or give it empty log.dirs to join this one"
                    ),
                ));
            }
            None => {}
        }
        for dir in &self.log_dirs {
            let mut meta =
                MetaProperties::read(dir)?.unwrap_or_else(|| MetaProperties::new(self.node_id));
            meta.cluster_id = Some(id.to_owned());
            meta.write(dir)?;
        }
        tracing::info!(
            cluster = id,
            "log dirs now belong to this cluster (meta.properties)"
        );
        *known = Some(id.to_owned());
        Ok(())
    }

    /// The log dir (one of `log.dirs`) holding the log of `tp`, if this broker has one: the
    /// directory to take offline when an operation on that log fails with an error for which
    /// [`LogError::is_log_dir_failure`] holds.
    pub fn log_dir_of(&self, tp: &TopicPartition) -> Option<PathBuf> {
        self.read_logs()
            .get(tp)
            .and_then(|(i, _)| self.log_dirs.get(*i).cloned())
    }

    /// The log of `tp`, if this broker has one.
    pub fn get(&self, tp: &TopicPartition) -> Option<SharedLog> {
        self.read_logs().get(tp).map(|(_, l)| Arc::clone(l))
    }

    /// The log of `tp`, created (in the least loaded log dir) with `config` if missing; an
    /// existing log gets `config` applied. After [`Self::shutdown`] none is created: it would
    /// not be closed, yet its dir would get the clean-shutdown marker.
    pub fn get_or_create(&self, tp: &TopicPartition, config: LogConfig) -> Result<SharedLog> {
        let _open = self.open_gate.read();
        self.refuse_after_shutdown(tp)?;
        let mut logs = self.logs.write();
        if let Some((_, log)) = logs.get(tp) {
            let log = Arc::clone(log);
            // Not under the map's lock: a truncation holds its log while it checkpoints, which
            // reads the map.
            drop(logs);
            log.write().set_config(config);
            return Ok(log);
        }
        let mut load = vec![0usize; self.log_dirs.len()];
        for (dir, _) in logs.values() {
            load[*dir] += 1;
        }
        let dir = (0..load.len()).min_by_key(|&i| load[i]).unwrap_or(0);
        let mut log = Log::open(
            self.log_dirs[dir].join(partition_dir_name(tp)),
            config,
            LogOpenOptions::default(),
            Arc::clone(&self.clock),
        )?;
        log.set_producer_id_expiration_ms(
            self.producer_id_expiration_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        let log = Arc::new(RwLock::new(log));
        logs.insert(tp.clone(), (dir, Arc::clone(&log)));
        Ok(log)
    }

    /// Sets `producer.id.expiration.ms` (Kafka's broker config, default one day) for every log,
    /// present and future: an idempotent producer idle this long is forgotten by its partitions.
    pub fn set_producer_id_expiration_ms(&self, ms: i64) {
        self.producer_id_expiration_ms
            .store(ms, std::sync::atomic::Ordering::Relaxed);
        for (_, log) in self.logs_by_partition() {
            log.write().set_producer_id_expiration_ms(ms);
        }
    }

    /// Forgets expired producers in every log (Kafka runs this every
    /// `producer.id.expiration.check.interval.ms`, 10 minutes).
    pub fn remove_expired_producers(&self) {
        for (_, log) in self.logs_by_partition() {
            log.write().remove_expired_producers();
        }
    }

    /// Deletes the log of `tp` and its data.
    pub fn delete(&self, tp: &TopicPartition) -> Result<bool> {
        let Some((index, log)) = self.take_out_of_service(tp) else {
            return Ok(false);
        };
        let dir = log.read().dir().to_owned();
        drop(log);
        // A removal that fails part way leaves the log out of service: its files may be gone.
        crate::log::remove_dir_durably(&dir)?;
        self.forget_in_checkpoints(&BTreeSet::from([index]))?;
        Ok(true)
    }

    /// Takes the log of `tp` out of service and renames its directory to
    /// `<topic>-<partition>.<unique id>-<suffix>` (Kafka's `-delete` and `-stray`), so its data
    /// leaves the partition's name free but stays on disk until it is removed on purpose.
    /// Returns the new path, or `None` when there was no such log. See [`Self::set_aside_all`].
    pub fn set_aside(&self, tp: &TopicPartition, suffix: &str) -> Result<Option<PathBuf>> {
        let (mut renamed, checkpointed) = self.set_aside_all(&[(tp.clone(), suffix)]);
        checkpointed?;
        renamed.pop().unwrap_or(Ok(None))
    }

    /// [`Self::set_aside`] for several logs, then each affected log dir's checkpoints written
    /// once without them (as Kafka's `asyncDelete` does): a log created later under one of
    /// their names (a topic deleted and re-created) must not take over their recovery points
    /// and cleaner checkpoints. Returns each rename's result, in order, and the checkpoints'.
    /// A log whose rename failed stays in service under its name (one renamed whose rename
    /// could not be made durable does not: the error is then the log dir's); a crash before the
    /// checkpoints are written leaves stale entries that the next start drops (it checkpoints
    /// the logs it found before any new one is created).
    pub fn set_aside_all(
        &self,
        logs: &[(TopicPartition, &str)],
    ) -> (Vec<Result<Option<PathBuf>>>, Result<()>) {
        // Held throughout: a log whose rename fails is put back, and shutdown must see it.
        let _open = self.open_gate.read();
        let mut dirs = BTreeSet::new();
        let renamed = logs
            .iter()
            .map(|(tp, suffix)| {
                // A closed broker's dirs are as `shutdown` left them, marker and checkpoints.
                self.refuse_after_shutdown(tp)?;
                let Some((index, log)) = self.take_out_of_service(tp) else {
                    return Ok(None);
                };
                let dir = log.read().dir().to_owned();
                let aside = aside_path(&dir, tp, suffix);
                if let Err(e) = crate::fsio::rename(&dir, &aside).at(&dir) {
                    self.restore(tp, index, log);
                    return Err(e);
                }
                // Renamed: the log is out for good, even if the rename cannot be made durable
                // (then the log dir is failing, and the error says so).
                dirs.insert(index);
                if let Some(parent) = aside.parent() {
                    crate::log::sync_dir(parent)?;
                }
                Ok(Some(aside))
            })
            .collect();
        (renamed, self.forget_in_checkpoints(&dirs))
    }

    /// `Closed` once [`Self::shutdown`] has begun.
    fn refuse_after_shutdown(&self, tp: &TopicPartition) -> Result<()> {
        if self.shut_down.load(Ordering::Acquire) {
            let name = partition_dir_name(tp);
            let dir = self
                .log_dirs
                .first()
                .map_or_else(|| PathBuf::from(&name), |d| d.join(&name));
            return Err(LogError::Closed { dir });
        }
        Ok(())
    }

    /// Puts back a log taken out of service whose directory could not be moved, unless
    /// another took its place meanwhile.
    fn restore(&self, tp: &TopicPartition, index: usize, log: SharedLog) {
        log.read()
            .maintenance()
            .retiring
            .store(false, Ordering::Release);
        self.logs.write().entry(tp.clone()).or_insert((index, log));
    }

    /// Rewrites the checkpoints of log dirs `dirs` from the logs in service.
    fn forget_in_checkpoints(&self, dirs: &BTreeSet<usize>) -> Result<()> {
        if dirs.is_empty() {
            return Ok(());
        }
        let _serial = self.checkpoint_lock.lock();
        self.checkpoint_dirs(Some(dirs), None)
    }

    /// Removes the log of `tp` from service once no cleaning pass runs on it (one that runs is
    /// waited for; none starts after), so its directory can go. Returns its log dir's index
    /// with it.
    fn take_out_of_service(&self, tp: &TopicPartition) -> Option<(usize, SharedLog)> {
        loop {
            let log = self.get(tp)?;
            let gate = log.read().maintenance();
            gate.retiring.store(true, Ordering::Release);
            let _gate = gate.lock.lock();
            let mut logs = self.logs.write();
            if let Some(&(index, ref l)) = logs.get(tp)
                && Arc::ptr_eq(l, &log)
            {
                logs.remove(tp);
                return Some((index, log));
            }
            // Replaced meanwhile: take out the one there now.
        }
    }

    /// Every partition with a log here.
    pub fn partitions(&self) -> Vec<TopicPartition> {
        let mut v: Vec<_> = self.read_logs().keys().cloned().collect();
        v.sort();
        v
    }

    /// fsyncs every log and writes the checkpoints. Logs that are offline (an earlier write or
    /// fsync failed) are skipped; a log that fails now goes offline, the others are still
    /// flushed and checkpointed, and the first error is returned.
    pub fn flush_all(&self) -> Result<()> {
        let mut first_error = None;
        for (tp, log) in self.logs_by_partition() {
            let mut log = log.write();
            if log.is_offline() {
                continue;
            }
            if let Err(e) = log.flush() {
                tracing::error!(partition = %tp, error = %e, "flush failed");
                first_error.get_or_insert(e);
            }
        }
        let checkpointed = self.checkpoint();
        match first_error {
            Some(e) => Err(e),
            None => checkpointed,
        }
    }

    /// Writes each log dir's recovery-point and cleaner checkpoints (the broker calls this every
    /// `log.flush.offset.checkpoint.interval.ms`). A log's recovery point follows what group
    /// commit fsynced, so a crash re-validates only what came after. An offline log is recorded
    /// at the recovery point it had when it failed (never beyond what was really fsynced). A
    /// directory whose checkpoint cannot be written does not stop the others; the first error
    /// is returned.
    pub fn checkpoint(&self) -> Result<()> {
        let _serial = self.checkpoint_lock.lock();
        self.checkpoint_dirs(None, None)
    }

    /// [`Self::checkpoint`] of the log dirs in `only` (all when `None`), with `except`'s
    /// recovery point and cleaner checkpoint given rather than read from its log (whose lock
    /// the caller holds). Lock order: the caller holds `checkpoint_lock` first, then log locks
    /// — never a log lock while waiting for `checkpoint_lock`, or two checkpointing threads
    /// could deadlock on each other's logs.
    fn checkpoint_dirs(
        &self,
        only: Option<&BTreeSet<usize>>,
        except: Option<(&TopicPartition, i64, i64)>,
    ) -> Result<()> {
        let logs = self.logs_by_dir();
        let mut first_error = None;
        for (i, dir) in self.log_dirs.iter().enumerate() {
            if only.is_some_and(|only| !only.contains(&i)) {
                continue;
            }
            let mut recovery = BTreeMap::new();
            let mut cleaner = BTreeMap::new();
            for (tp, d, log) in &logs {
                if *d != i {
                    continue;
                }
                if let Some((skip, recovery_point, cleaned)) = except
                    && skip == tp
                {
                    recovery.insert(partition_dir_name(tp), recovery_point);
                    cleaner.insert(partition_dir_name(tp), cleaned);
                    continue;
                }
                let log = log.read();
                recovery.insert(partition_dir_name(tp), log.recovery_point());
                cleaner.insert(partition_dir_name(tp), log.cleaner_checkpoint());
            }
            let written = OffsetCheckpointFile::new(dir.join(RECOVERY_POINT_CHECKPOINT))
                .write(&recovery)
                .and_then(|()| {
                    OffsetCheckpointFile::new(dir.join(CLEANER_CHECKPOINT)).write(&cleaner)
                });
            if let Err(e) = written {
                tracing::error!(dir = %dir.display(), error = %e, "writing checkpoints failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Truncates the log of `tp` to `offset` (see [`Log::truncate_to`]) and, before anything can
    /// be appended past the cut, writes its log dir's checkpoint with the lowered recovery
    /// point, so that a crash cannot make recovery trust re-appended, unsynced data below an
    /// old, higher recovery point.
    pub fn truncate_to(&self, tp: &TopicPartition, offset: i64) -> Result<()> {
        let Some(log) = self.get(tp) else {
            return Ok(());
        };
        let _serial = self.checkpoint_lock.lock();
        let mut log = log.write();
        log.truncate_to(offset)?;
        self.checkpoint_dirs(
            None,
            Some((tp, log.recovery_point(), log.cleaner_checkpoint())),
        )
    }

    /// One retention pass over every log; `upper_bound` gives each partition's high watermark.
    /// Returns the number of segments deleted (a failure on one log does not stop the others;
    /// the first is returned). Each log is held only to take its segments out; their files are
    /// unlinked after.
    pub fn run_retention(&self, upper_bound: impl Fn(&TopicPartition) -> i64) -> Result<usize> {
        let mut deleted = 0;
        let mut first_error = None;
        for (tp, log) in self.logs_by_partition() {
            let gate = log.read().maintenance();
            // A log a cleaning pass works on waits for the next round.
            let Some(_gate) = gate.lock.try_lock() else {
                continue;
            };
            if !self.in_service(&tp, &log) {
                continue;
            }
            let bound = upper_bound(&tp);
            // Its own statement: the log's lock is released before the files are unlinked.
            let taken = log.write().delete_old_segments_deferred(bound);
            let round = taken.and_then(|(segments, doomed)| {
                deleted += segments.len();
                remove_all(doomed)
            });
            if let Err(e) = round {
                tracing::error!(partition = %tp, error = %e, "retention failed");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(deleted), Err)
    }

    /// True while `log` is the log of `tp` here and the manager is not shut down (checked under
    /// the log's maintenance gate: it stays so until the gate is released).
    fn in_service(&self, tp: &TopicPartition, log: &SharedLog) -> bool {
        !self.shut_down.load(Ordering::Acquire)
            && self
                .read_logs()
                .get(tp)
                .is_some_and(|(_, l)| Arc::ptr_eq(l, log))
    }

    /// Cleans every compacted log whose dirty ratio calls for it. Returns the logs cleaned.
    /// Like Kafka's cleaner, a pass holds the log's lock only to plan and to swap its output
    /// in: reading the log and writing the cleaned segments (seconds for a large log) leave
    /// the log's appends and reads alone.
    pub fn run_cleaner(&self, upper_bound: impl Fn(&TopicPartition) -> i64) -> Result<usize> {
        let mut cleaned = 0;
        let mut first_error = None;
        for (tp, log) in self.logs_by_partition() {
            let gate = log.read().maintenance();
            let _gate = gate.lock.lock();
            if !self.in_service(&tp, &log) {
                continue;
            }
            let bound = upper_bound(&tp);
            let pass = {
                let log = log.read();
                if !log.needs_cleaning() {
                    continue;
                }
                log.plan_cleaning(bound, &self.cleaner)
            };
            let Some(mut pass) = pass else { continue };
            let stop =
                || gate.retiring.load(Ordering::Acquire) || self.shut_down.load(Ordering::Acquire);
            match clean_with_lock(&log, &mut pass, stop) {
                Ok(Some(_)) => cleaned += 1,
                Ok(None) => {}
                Err(e) => {
                    tracing::error!(partition = %tp, error = %e, "cleaning failed");
                    first_error.get_or_insert(e);
                }
            }
            // The pass's last handles of deleted segments close here, not under the log's lock.
            drop(pass);
        }
        if cleaned > 0 {
            self.checkpoint()?;
        }
        first_error.map_or(Ok(cleaned), Err)
    }

    /// Closes every log (flush, final index entries), writes checkpoints and the clean-shutdown
    /// marker, so the next start skips recovery. Offline logs are skipped, and a log dir with
    /// an offline (or failing) log gets no clean-shutdown marker: its logs are recovered on the
    /// next start. The first error is returned after doing everything else.
    pub fn shutdown(&self) -> Result<()> {
        self.shutdown_except(&[])
    }

    /// [`Self::shutdown`], leaving the log dirs in `failed` as they are: their logs are not
    /// closed nor checkpointed, and they get no clean-shutdown marker (the next start recovers
    /// them), while every other dir closes cleanly — as Kafka's `LogManager.shutdown` closes
    /// the dirs still online.
    pub fn shutdown_except(&self, failed: &[PathBuf]) -> Result<()> {
        {
            // Waits for logs being added or set aside; none starts after.
            let _closing = self.open_gate.write();
            self.shut_down.store(true, Ordering::Release);
        }
        let mut first_error = None;
        let skipped: Vec<bool> = self.log_dirs.iter().map(|d| failed.contains(d)).collect();
        let mut unclean = skipped.clone();
        for (tp, d, log) in self.logs_by_dir() {
            if skipped[d] {
                continue;
            }
            // A pass running on it stops at its next group; none starts after.
            let gate = log.read().maintenance();
            gate.retiring.store(true, Ordering::Release);
            let _gate = gate.lock.lock();
            let mut log = log.write();
            if log.is_offline() {
                unclean[d] = true;
                continue;
            }
            if let Err(e) = log.close() {
                tracing::error!(partition = %tp, error = %e, "closing the log failed");
                unclean[d] = true;
                first_error.get_or_insert(e);
            }
        }
        let online: BTreeSet<usize> = (0..self.log_dirs.len()).filter(|d| !skipped[*d]).collect();
        let checkpointed = {
            let _serial = self.checkpoint_lock.lock();
            self.checkpoint_dirs(Some(&online), None)
        };
        if let Err(e) = checkpointed {
            unclean.iter_mut().for_each(|u| *u = true);
            first_error.get_or_insert(e);
        }
        for (dir, unclean) in self.log_dirs.iter().zip(unclean) {
            if unclean {
                tracing::warn!(dir = %dir.display(), "no clean-shutdown marker: this log dir is recovered on the next start");
                continue;
            }
            if let Err(e) = write_atomically(&dir.join(CLEAN_SHUTDOWN_FILE), b"") {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The configured log dirs.
    pub fn log_dirs(&self) -> &[PathBuf] {
        &self.log_dirs
    }

    /// A snapshot of the logs, so passes over them hold no lock on the map.
    fn logs_by_partition(&self) -> Vec<(TopicPartition, SharedLog)> {
        self.read_logs()
            .iter()
            .map(|(tp, (_, l))| (tp.clone(), Arc::clone(l)))
            .collect()
    }

    /// A snapshot of the logs with the index of their log dir.
    fn logs_by_dir(&self) -> Vec<(TopicPartition, usize, SharedLog)> {
        self.read_logs()
            .iter()
            .map(|(tp, (d, l))| (tp.clone(), *d, Arc::clone(l)))
            .collect()
    }

    fn read_logs(
        &self,
    ) -> parking_lot::RwLockReadGuard<'_, HashMap<TopicPartition, (usize, SharedLog)>> {
        self.logs.read()
    }
}

/// Where the log directory `dir` of `tp` goes when set aside with `suffix`.
fn aside_path(dir: &Path, tp: &TopicPartition, suffix: &str) -> PathBuf {
    // Unique per set-aside, like Kafka's UUID suffix: the same partition can be set aside twice.
    let unique = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let unique = format!("{unique:x}");
    dir.with_file_name(format!("{}.{unique}-{suffix}", partition_dir_name(tp)))
}

/// Removes files a log no longer uses (renamed `.deleted`; a crash before this leaves them to
/// [`Log::open`]).
fn remove_all(paths: Vec<PathBuf>) -> Result<()> {
    for path in paths {
        crate::log_segment::remove_if_exists(&path)?;
    }
    Ok(())
}

/// Runs a planned pass (see [`Log::plan_cleaning`]) holding `log`'s lock only for each group's
/// swap and the pass's end. Stops before the next group once `stop` says so (the groups
/// swapped in stay; the cleaner checkpoint does not move).
fn clean_with_lock(
    log: &SharedLog,
    pass: &mut CleaningPass,
    stop: impl Fn() -> bool,
) -> Result<Option<CleanerStats>> {
    if let Err(e) = pass.build_map() {
        return log.write().abandon_cleaning(pass, e).map(|()| None);
    }
    loop {
        if stop() {
            return Ok(None);
        }
        let Some(group) = pass.build_next_group() else {
            break;
        };
        let group = match group {
            Ok(group) => group,
            Err(e) => return log.write().abandon_cleaning(pass, e).map(|()| None),
        };
        let swapped = log.write().swap_cleaned_group(pass, group)?;
        if let Err(e) = swapped.finish() {
            // The directory's fsync or an unlink failed: the log dir is failing, as if it had
            // under the lock.
            return log.write().guarded(|_| Err(e));
        }
    }
    Ok(log.write().finish_cleaning(pass))
}
