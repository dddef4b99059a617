//! Per-log (topic) configuration, with Kafka's property names, defaults and validated ranges.
//!
//! The controller validates topic configs with [`LogConfig::set`] before committing them, and the
//! broker builds each partition's config the same way, so a value that is accepted is a value the
//! log can run with.

use rill_protocol::record_batch::TimestampType;

use crate::error::{LogError, Result};

const DAY_MS: i64 = 24 * 60 * 60 * 1000;

/// What happens to old data (`cleanup.policy`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CleanupPolicy {
    /// Delete old segments by `retention.ms` / `retention.bytes`.
    pub delete: bool,
    /// Keep only the latest record per key.
    pub compact: bool,
}

impl CleanupPolicy {
    /// `delete`, Kafka's default.
    pub const DELETE: CleanupPolicy = CleanupPolicy {
        delete: true,
        compact: false,
    };
    /// `compact`.
    pub const COMPACT: CleanupPolicy = CleanupPolicy {
        delete: false,
        compact: true,
    };
}

impl std::fmt::Display for CleanupPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.compact, self.delete) {
            (true, true) => f.write_str("compact,delete"),
            (true, false) => f.write_str("compact"),
            (false, true) => f.write_str("delete"),
            (false, false) => f.write_str(""),
        }
    }
}

/// Configuration of one partition log.
#[derive(Clone, Debug, PartialEq)]
pub struct LogConfig {
    /// `segment.bytes`: roll the active segment when it would grow past this size.
    pub segment_bytes: u64,
    /// `segment.ms`: roll the active segment when its first batch is this old.
    pub segment_ms: i64,
    /// `segment.index.bytes`: the largest offset/time index of a segment; roll when full.
    pub segment_index_bytes: u64,
    /// `index.interval.bytes`: log bytes between two offset index entries.
    pub index_interval_bytes: u64,
    /// `retention.ms`: delete segments whose newest record is older; -1 keeps forever.
    pub retention_ms: i64,
    /// `retention.bytes`: delete the oldest segments while the log is larger; -1 = no limit.
    pub retention_bytes: i64,
    /// `cleanup.policy`.
    pub cleanup_policy: CleanupPolicy,
    /// `delete.retention.ms`: how long tombstones survive once cleaned.
    pub delete_retention_ms: i64,
    /// `min.cleanable.dirty.ratio`: compact when dirty bytes / total bytes passes this.
    pub min_cleanable_dirty_ratio: f64,
    /// `max.message.bytes`: largest record batch accepted.
    pub max_message_bytes: usize,
    /// `message.timestamp.type`: keep producer timestamps or stamp the append time.
    pub message_timestamp_type: TimestampType,
    /// `message.timestamp.before.max.ms`: CreateTime records may be at most this much older
    /// than the broker's clock.
    pub message_timestamp_before_max_ms: i64,
    /// `message.timestamp.after.max.ms`: CreateTime records may be at most this much ahead of
    /// the broker's clock.
    pub message_timestamp_after_max_ms: i64,
    /// `flush.messages`: under `log.flush.policy=interval`, fsync after this many records.
    pub flush_messages: i64,
    /// `flush.ms`: under `log.flush.policy=interval`, fsync after this much time.
    pub flush_ms: i64,
    /// `message.timestamp.missing.allowed` (rill only): accept CreateTime records whose
    /// timestamp is -1 (`NO_TIMESTAMP`). Off by default: such records cannot be found by time
    /// and would leave retention only the segment file's modification time to go by. Kafka has
    /// no such switch and accepts them.
    pub message_timestamp_missing_allowed: bool,
    /// `preallocate`: keep the active segment's file written with zeros (and fsynced) a little
    /// ahead of its end, so that appends overwrite blocks the file already has. An fsync after
    /// an append that grows the file must also write the inode (new size, new blocks); after an
    /// overwrite it need not, which on ext4 about halves fsync-before-ack latency
    /// (docs/benchmarks.md). Kafka's `preallocate` (off by default there) sizes the whole
    /// segment with `ftruncate`, which leaves the blocks unallocated and saves little; rill's is
    /// on by default. The zeros past the end are cut when the segment rolls or the log closes,
    /// and by recovery after a crash.
    pub preallocate: bool,
    /// The largest records section a compressed batch may decompress to when a producer's
    /// batch is validated (the broker's `rill.decompressed.batch.max.bytes`; never below
    /// `max_message_bytes`). Not a topic config: it bounds the broker's memory against
    /// decompression bombs, while `max.message.bytes` bounds the batch as sent, as in Kafka.
    pub decompressed_batch_max_bytes: usize,
}

/// One topic config: its Kafka name, default, and what it means and allows. [`TOPIC_CONFIGS`]
/// is the one list of topic configs: validation ([`LogConfig::set`]), the message for an
/// unknown name, `rill topic describe` defaults and `docs/operations.md` follow it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TopicConfigDef {
    /// Property name, as in Kafka where Kafka has it.
    pub name: &'static str,
    /// Default value, as text.
    pub default: &'static str,
    /// Meaning and allowed values.
    pub doc: &'static str,
    /// True when the log itself uses it (a [`LogConfig`] field); false for replication configs
    /// that the controller and broker apply (validated here all the same).
    pub log_config: bool,
}

const fn def(name: &'static str, default: &'static str, doc: &'static str) -> TopicConfigDef {
    TopicConfigDef {
        name,
        default,
        doc,
        log_config: true,
    }
}

/// Every topic config rill accepts, in documentation order.
pub const TOPIC_CONFIGS: &[TopicConfigDef] = &[
    def(
        "segment.bytes",
        "1073741824",
        "roll the active segment when it would grow past this size; 1024..2147483647",
    ),
    def(
        "segment.ms",
        "604800000",
        "roll the active segment when its first batch is this old (record time); >= 1",
    ),
    def(
        "segment.index.bytes",
        "10485760",
        "largest offset/time index of a segment (roll when full); 64..2147483647",
    ),
    def(
        "index.interval.bytes",
        "4096",
        "log bytes between two offset index entries; 0..2147483647",
    ),
    def(
        "retention.ms",
        "604800000",
        "delete segments whose newest record is older; -1 keeps forever",
    ),
    def(
        "retention.bytes",
        "-1",
        "delete the oldest segments while the partition is larger; -1 = no limit",
    ),
    def(
        "cleanup.policy",
        "delete",
        "delete, compact or compact,delete",
    ),
    def(
        "delete.retention.ms",
        "86400000",
        "how long tombstones survive once compaction kept them; >= 0",
    ),
    def(
        "min.cleanable.dirty.ratio",
        "0.5",
        "compact when dirty bytes / cleanable bytes reaches this; 0..1",
    ),
    def(
        "max.message.bytes",
        "1048588",
        "largest record batch accepted; 0..2147483647",
    ),
    def(
        "message.timestamp.type",
        "CreateTime",
        "CreateTime (keep the producer's timestamps) or LogAppendTime (stamp the broker's time)",
    ),
    def(
        "message.timestamp.before.max.ms",
        "9223372036854775807",
        "CreateTime records may be at most this much older than the broker's clock; >= 0",
    ),
    def(
        "message.timestamp.after.max.ms",
        "3600000",
        "CreateTime records may be at most this much ahead of the broker's clock; >= 0",
    ),
    def(
        "message.timestamp.missing.allowed",
        "false",
        "rill only: accept CreateTime records with timestamp -1 (NO_TIMESTAMP), which Kafka always accepts; true or false",
    ),
    def(
        "flush.messages",
        "9223372036854775807",
        "log.flush.policy=interval: fsync after this many records; >= 1",
    ),
    def(
        "flush.ms",
        "9223372036854775807",
        "log.flush.policy=interval: fsync after this much time; >= 0",
    ),
    def(
        "preallocate",
        "true",
        "keep the active segment written with zeros (fsynced) up to 2 MiB past its end, so fsyncs overwrite blocks instead of growing the file (about half the fsync time on ext4); true or false",
    ),
    TopicConfigDef {
        name: "min.insync.replicas",
        default: "1",
        doc: "acks=all produces need at least this many in-sync replicas; >= 1",
        log_config: false,
    },
    TopicConfigDef {
        name: "unclean.leader.election.enable",
        default: "false",
        doc: "let an out-of-sync replica become leader (may lose acknowledged data); true or false",
        log_config: false,
    },
];

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            segment_bytes: 1 << 30,
            segment_ms: 7 * DAY_MS,
            segment_index_bytes: 10 << 20,
            index_interval_bytes: 4096,
            retention_ms: 7 * DAY_MS,
            retention_bytes: -1,
            cleanup_policy: CleanupPolicy::DELETE,
            delete_retention_ms: DAY_MS,
            min_cleanable_dirty_ratio: 0.5,
            max_message_bytes: 1_048_588,
            message_timestamp_type: TimestampType::CreateTime,
            message_timestamp_before_max_ms: i64::MAX,
            message_timestamp_after_max_ms: 3_600_000,
            flush_messages: i64::MAX,
            flush_ms: i64::MAX,
            message_timestamp_missing_allowed: false,
            preallocate: true,
            decompressed_batch_max_bytes: DEFAULT_DECOMPRESSED_BATCH_MAX_BYTES,
        }
    }
}

/// The default of [`LogConfig::decompressed_batch_max_bytes`]: 64 MiB.
pub const DEFAULT_DECOMPRESSED_BATCH_MAX_BYTES: usize = 64 << 20;

impl LogConfig {
    /// The names of the configs the log itself uses ([`TOPIC_CONFIGS`] entries with
    /// `log_config`, in the same order; kept as a constant for existing callers).
    pub const KEYS: &'static [&'static str] = &[
        "segment.bytes",
        "segment.ms",
        "segment.index.bytes",
        "index.interval.bytes",
        "retention.ms",
        "retention.bytes",
        "cleanup.policy",
        "delete.retention.ms",
        "min.cleanable.dirty.ratio",
        "max.message.bytes",
        "message.timestamp.type",
        "message.timestamp.before.max.ms",
        "message.timestamp.after.max.ms",
        "message.timestamp.missing.allowed",
        "flush.messages",
        "flush.ms",
        "preallocate",
    ];

    /// The defaults overridden by `entries` (name, value), each validated.
    pub fn from_entries<'a>(entries: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<Self> {
        let mut config = LogConfig::default();
        for (name, value) in entries {
            config.set(name, value)?;
        }
        Ok(config)
    }

    /// Sets one property from text, rejecting unknown names and out-of-range values.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let v = value.trim();
        match name {
            "segment.bytes" => self.segment_bytes = int(name, v, 1024, i32::MAX as i64)? as u64,
            "segment.ms" => self.segment_ms = int(name, v, 1, i64::MAX)?,
            "segment.index.bytes" => {
                self.segment_index_bytes = int(name, v, 64, i32::MAX as i64)? as u64
            }
            "index.interval.bytes" => {
                self.index_interval_bytes = int(name, v, 0, i32::MAX as i64)? as u64
            }
            "retention.ms" => self.retention_ms = int(name, v, -1, i64::MAX)?,
            "retention.bytes" => self.retention_bytes = int(name, v, -1, i64::MAX)?,
            "cleanup.policy" => self.cleanup_policy = policy(name, v)?,
            "delete.retention.ms" => self.delete_retention_ms = int(name, v, 0, i64::MAX)?,
            "min.cleanable.dirty.ratio" => {
                let ratio: f64 = v
                    .parse()
                    .map_err(|_| invalid(name, v, "expected a number"))?;
                if !(0.0..=1.0).contains(&ratio) {
                    return Err(invalid(name, v, "must be between 0 and 1"));
                }
                self.min_cleanable_dirty_ratio = ratio;
            }
            "max.message.bytes" => {
                self.max_message_bytes = int(name, v, 0, i32::MAX as i64)? as usize
            }
            "message.timestamp.type" => {
                self.message_timestamp_type = match v {
                    "CreateTime" => TimestampType::CreateTime,
                    "LogAppendTime" => TimestampType::LogAppendTime,
                    _ => return Err(invalid(name, v, "must be CreateTime or LogAppendTime")),
                }
            }
            "message.timestamp.before.max.ms" => {
                self.message_timestamp_before_max_ms = int(name, v, 0, i64::MAX)?
            }
            "message.timestamp.after.max.ms" => {
                self.message_timestamp_after_max_ms = int(name, v, 0, i64::MAX)?
            }
            "flush.messages" => self.flush_messages = int(name, v, 1, i64::MAX)?,
            "flush.ms" => self.flush_ms = int(name, v, 0, i64::MAX)?,
            "message.timestamp.missing.allowed" => {
                self.message_timestamp_missing_allowed = boolean(name, v)?
            }
            "preallocate" => self.preallocate = boolean(name, v)?,
            // Replication configs: validated here, applied by the controller and broker.
            "min.insync.replicas" => {
                int(name, v, 1, i32::MAX as i64)?;
            }
            "unclean.leader.election.enable" => {
                boolean(name, v)?;
            }
            _ => {
                let known: Vec<&str> = TOPIC_CONFIGS.iter().map(|c| c.name).collect();
                return Err(LogError::InvalidConfig {
                    name: name.to_owned(),
                    value: value.to_owned(),
                    reason: format!("unknown config; known: {}", known.join(", ")),
                });
            }
        }
        Ok(())
    }

    /// The current value of a property as text, for DescribeConfigs.
    pub fn get(&self, name: &str) -> Option<String> {
        Some(match name {
            "segment.bytes" => self.segment_bytes.to_string(),
            "segment.ms" => self.segment_ms.to_string(),
            "segment.index.bytes" => self.segment_index_bytes.to_string(),
            "index.interval.bytes" => self.index_interval_bytes.to_string(),
            "retention.ms" => self.retention_ms.to_string(),
            "retention.bytes" => self.retention_bytes.to_string(),
            "cleanup.policy" => self.cleanup_policy.to_string(),
            "delete.retention.ms" => self.delete_retention_ms.to_string(),
            "min.cleanable.dirty.ratio" => self.min_cleanable_dirty_ratio.to_string(),
            "max.message.bytes" => self.max_message_bytes.to_string(),
            "message.timestamp.type" => match self.message_timestamp_type {
                TimestampType::CreateTime => "CreateTime".into(),
                TimestampType::LogAppendTime => "LogAppendTime".into(),
            },
            "message.timestamp.before.max.ms" => self.message_timestamp_before_max_ms.to_string(),
            "message.timestamp.after.max.ms" => self.message_timestamp_after_max_ms.to_string(),
            "flush.messages" => self.flush_messages.to_string(),
            "flush.ms" => self.flush_ms.to_string(),
            "message.timestamp.missing.allowed" => {
                self.message_timestamp_missing_allowed.to_string()
            }
            "preallocate" => self.preallocate.to_string(),
            _ => return None,
        })
    }
}

fn invalid(name: &str, value: &str, reason: &str) -> LogError {
    LogError::InvalidConfig {
        name: name.to_owned(),
        value: value.to_owned(),
        reason: reason.to_owned(),
    }
}

fn int(name: &str, v: &str, min: i64, max: i64) -> Result<i64> {
    let n: i64 = v
        .parse()
        .map_err(|_| invalid(name, v, "expected an integer"))?;
    if n < min || n > max {
        return Err(invalid(
            name,
            v,
            &format!("must be between {min} and {max}"),
        ));
    }
    Ok(n)
}

fn boolean(name: &str, v: &str) -> Result<bool> {
    match v {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(invalid(name, v, "must be true or false")),
    }
}

fn policy(name: &str, v: &str) -> Result<CleanupPolicy> {
    let mut p = CleanupPolicy {
        delete: false,
        compact: false,
    };
    for part in v.split(',').map(str::trim) {
        match part {
            "delete" => p.delete = true,
            "compact" => p.compact = true,
            _ => {
                return Err(invalid(
                    name,
                    v,
                    "must be delete, compact or compact,delete",
                ));
            }
        }
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kafka_defaults() {
        let c = LogConfig::default();
        assert_eq!(c.segment_bytes, 1 << 30);
        assert_eq!(c.retention_ms, 7 * DAY_MS);
        assert_eq!(c.delete_retention_ms, DAY_MS);
        assert_eq!(c.index_interval_bytes, 4096);
        assert_eq!(c.segment_index_bytes, 10 << 20);
        assert_eq!(c.min_cleanable_dirty_ratio, 0.5);
    }

    #[test]
    fn every_key_round_trips_through_get() {
        let c = LogConfig::default();
        for key in LogConfig::KEYS {
            let v = c.get(key).unwrap();
            let mut d = LogConfig::default();
            d.set(key, &v).unwrap();
            assert_eq!(d, c, "{key}");
        }
    }

    /// The one table agrees with the defaults, with `KEYS`, with validation, and with the
    /// operations guide.
    #[test]
    fn the_topic_config_table_is_the_one_list() {
        let defaults = LogConfig::default();
        let log_keys: Vec<&str> = TOPIC_CONFIGS
            .iter()
            .filter(|c| c.log_config)
            .map(|c| c.name)
            .collect();
        assert_eq!(log_keys, LogConfig::KEYS);
        let guide = include_str!("../../../docs/operations.md");
        for c in TOPIC_CONFIGS {
            if c.log_config {
                assert_eq!(
                    defaults.get(c.name).as_deref(),
                    Some(c.default),
                    "{}",
                    c.name
                );
            }
            let mut d = LogConfig::default();
            d.set(c.name, c.default).unwrap();
            assert_eq!(
                d, defaults,
                "{}: setting the default changes nothing",
                c.name
            );
            assert!(
                guide.contains(&format!("| `{}` | {} |", c.name, c.default)),
                "docs/operations.md lacks the row for {} (default {})",
                c.name,
                c.default
            );
        }
        let e = defaults
            .clone()
            .set("no.such", "1")
            .unwrap_err()
            .to_string();
        for c in TOPIC_CONFIGS {
            assert!(e.contains(c.name), "{e} lacks {}", c.name);
        }
        assert!(
            LogConfig::default()
                .set("min.insync.replicas", "0")
                .is_err()
        );
    }

    #[test]
    fn bad_values_are_rejected_with_reasons() {
        let mut c = LogConfig::default();
        let e = c.set("retention.ms", "-5").unwrap_err().to_string();
        assert!(e.contains("between -1"), "{e}");
        assert!(c.set("cleanup.policy", "shred").is_err());
        assert!(c.set("segment.bytes", "lots").is_err());
        assert!(c.set("min.cleanable.dirty.ratio", "1.5").is_err());
        let e = c.set("retention.hours", "1").unwrap_err().to_string();
        assert!(e.contains("unknown config"), "{e}");
        assert_eq!(c, LogConfig::default(), "failed sets change nothing");
        c.set("cleanup.policy", "compact,delete").unwrap();
        assert_eq!(
            c.cleanup_policy,
            CleanupPolicy {
                delete: true,
                compact: true
            }
        );
    }
}
