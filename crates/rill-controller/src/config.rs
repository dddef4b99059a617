//! The controller's configuration, loaded with figment: defaults → TOML file → `RILL_` env vars →
//! command-line flags. Property names are Kafka's (`node.id`, `controller.quorum.voters`, ...);
//! in TOML write them as dotted keys (`node.id = 1`), in the environment as `RILL_NODE_ID=1`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use serde::{Deserialize, Serialize};

/// Everything `rill-controller` reads at start-up.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ControllerConfig {
    /// `node.*`.
    pub node: Node,
    /// `listeners`: where the Controller and Quorum gRPC services listen (`host:port`).
    pub listeners: String,
    /// `controller.*`.
    pub controller: ControllerSection,
    /// `metadata.*`.
    pub metadata: MetadataSection,
    /// `broker.*` (how the controller judges brokers).
    pub broker: BrokerSection,
    /// `num.*`.
    pub num: Num,
    /// `default.*`.
    pub default: DefaultSection,
    /// `cluster.*`.
    pub cluster: ClusterSection,
    /// `queued.*`.
    pub queued: Queued,
    /// `metrics.*`.
    pub metrics: MetricsSection,
    /// `max.*`.
    pub max: MaxLimits,
    /// `auto.leader.rebalance.enable`.
    pub auto: Auto,
    /// `leader.imbalance.*`.
    pub leader: LeaderSection,
}

/// `auto.leader.rebalance.enable`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Auto {
    /// `auto.leader.*`.
    pub leader: AutoLeader,
}

/// `auto.leader.rebalance.enable`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct AutoLeader {
    /// `auto.leader.rebalance.*`.
    pub rebalance: Enable,
}

/// An `*.enable` switch.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Enable {
    /// On or off.
    pub enable: bool,
}

/// `leader.imbalance.*`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LeaderSection {
    /// `leader.imbalance.*`.
    pub imbalance: Imbalance,
}

/// `leader.imbalance.check.interval.seconds`, `leader.imbalance.per.broker.percentage`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Imbalance {
    /// `leader.imbalance.check.*`.
    pub check: ImbalanceCheck,
    /// `leader.imbalance.per.*`.
    pub per: ImbalancePer,
}

/// `leader.imbalance.check.interval.seconds`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImbalanceCheck {
    /// `leader.imbalance.check.interval.*`.
    pub interval: Seconds,
}

/// A `*.seconds` value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Seconds {
    #[allow(missing_docs)]
    pub seconds: u64,
}

/// `leader.imbalance.per.broker.percentage`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ImbalancePer {
    /// `leader.imbalance.per.broker.*`.
    pub broker: Percentage,
}

/// A `*.percentage` value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Percentage {
    /// 0..=100.
    pub percentage: u32,
}

/// `max.partitions.per.topic`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MaxLimits {
    /// `max.partitions.*`.
    pub partitions: MaxPartitions,
}

/// `max.partitions.per.*`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MaxPartitions {
    /// `max.partitions.per.topic`.
    pub per: PerTopic,
}

/// `max.partitions.per.topic`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PerTopic {
    /// Largest partition count a topic may have (CreateTopics, CreatePartitions).
    pub topic: i32,
}

/// `metrics.address`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct MetricsSection {
    /// host:port of the Prometheus `/metrics` and `/health` endpoint; empty turns it off.
    pub address: String,
}

/// `node.id`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Node {
    /// This controller's id within `controller.quorum.voters`.
    pub id: u64,
}

/// `controller.quorum.*`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ControllerSection {
    /// `controller.quorum.*`.
    pub quorum: Quorum,
}

/// Raft quorum settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Quorum {
    /// `controller.quorum.voters`: `id@host:port,...`, the same on every controller.
    pub voters: String,
    /// `controller.quorum.tick.ms`: the Raft clock.
    pub tick: Ms,
    /// `controller.quorum.election.timeout.ms`: followers start an election after this long
    /// without hearing from a leader (randomised up to twice this).
    pub election: Timeout,
    /// `controller.quorum.request.timeout.ms`: how long a write waits to commit.
    pub request: Timeout,
}

/// A `*.ms` value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Ms {
    #[allow(missing_docs)]
    pub ms: u64,
}

/// A `*.timeout.ms` value.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Timeout {
    /// `timeout.ms`.
    pub timeout: Ms,
}

/// `metadata.log.*`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetadataSection {
    /// `metadata.log.*`.
    pub log: MetadataLog,
}

/// Metadata log settings.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MetadataLog {
    /// `metadata.log.dir`: where the Raft log and snapshots live.
    pub dir: PathBuf,
    /// `metadata.log.max.record.bytes.between.snapshots`.
    pub max: MaxSection,
}

/// `metadata.log.max.*`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MaxSection {
    /// `metadata.log.max.record.*`.
    pub record: MaxRecord,
}

/// `metadata.log.max.record.bytes.*`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct MaxRecord {
    /// `metadata.log.max.record.bytes.*`.
    pub bytes: BytesBetween,
}

/// `...bytes.between.snapshots`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BytesBetween {
    /// `...between.*`.
    pub between: Snapshots,
}

/// `...between.snapshots`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Snapshots {
    /// Snapshot (and compact the Raft log) after this many bytes of new metadata records.
    pub snapshots: u64,
}

/// `broker.session.timeout.ms`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct BrokerSection {
    /// `broker.session.*`.
    pub session: Timeout,
}

/// `num.partitions`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Num {
    /// Partitions of a topic created without a count.
    pub partitions: i32,
}

/// `default.replication.factor`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DefaultSection {
    /// `default.replication.*`.
    pub replication: Replication,
}

/// `default.replication.factor`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Replication {
    /// Replicas of a topic created without a replication factor.
    pub factor: i32,
}

/// `cluster.id`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Default)]
pub struct ClusterSection {
    /// Fixed cluster id; when empty the first active controller generates one.
    pub id: String,
}

/// `queued.max.requests`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Queued {
    /// `queued.max.*`.
    pub max: QueuedMax,
}

/// `queued.max.requests`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QueuedMax {
    /// Requests waiting for the quorum thread before callers get RESOURCE_EXHAUSTED.
    pub requests: usize,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        ControllerConfig {
            node: Node { id: 1 },
            listeners: "127.0.0.1:9093".into(),
            controller: ControllerSection {
                quorum: Quorum {
                    voters: "1@127.0.0.1:9093".into(),
                    tick: Ms { ms: 100 },
                    election: Timeout {
                        timeout: Ms { ms: 1000 },
                    },
                    request: Timeout {
                        timeout: Ms { ms: 30_000 },
                    },
                },
            },
            metadata: MetadataSection {
                log: MetadataLog {
                    dir: PathBuf::from("/tmp/rill-metadata"),
                    max: MaxSection {
                        record: MaxRecord {
                            bytes: BytesBetween {
                                between: Snapshots {
                                    snapshots: 20 << 20,
                                },
                            },
                        },
                    },
                },
            },
            broker: BrokerSection {
                session: Timeout {
                    timeout: Ms { ms: 9000 },
                },
            },
            num: Num { partitions: 1 },
            default: DefaultSection {
                replication: Replication { factor: 1 },
            },
            cluster: ClusterSection::default(),
            queued: Queued {
                max: QueuedMax { requests: 500 },
            },
            metrics: MetricsSection::default(),
            max: MaxLimits {
                partitions: MaxPartitions {
                    per: PerTopic { topic: 100_000 },
                },
            },
            // Kafka's defaults.
            auto: Auto {
                leader: AutoLeader {
                    rebalance: Enable { enable: true },
                },
            },
            leader: LeaderSection {
                imbalance: Imbalance {
                    check: ImbalanceCheck {
                        interval: Seconds { seconds: 300 },
                    },
                    per: ImbalancePer {
                        broker: Percentage { percentage: 10 },
                    },
                },
            },
        }
    }
}

/// A voter of the quorum.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Voter {
    /// The voter's `node.id` (its Raft id; ≥ 1).
    pub id: u64,
    /// `host:port`.
    pub address: String,
}

/// Config errors, with what to change.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// figment could not read or merge the sources.
    #[error("{0}")]
    Load(#[from] Box<figment::Error>),
    /// A value is out of range or malformed.
    #[error("invalid {name}: {reason}")]
    Invalid {
        /// The property, by its config-file name.
        name: &'static str,
        /// What is wrong and what is allowed.
        reason: String,
    },
    /// A property name no controller setting has (probably a typo): refused rather than
    /// silently ignored.
    #[error(
        "unknown property {name:?} in {given_in}; the known ones are listed in docs/operations.md"
    )]
    Unknown {
        /// The dotted property name as given.
        name: String,
        /// Where it was given: the config file or the command line.
        given_in: &'static str,
    },
}

/// Dotted names of the leaves of `figment`'s data (`node.id`, ...).
fn property_names(figment: &Figment) -> Result<std::collections::BTreeSet<String>, ConfigError> {
    fn walk(
        prefix: &str,
        value: &figment::value::Value,
        out: &mut std::collections::BTreeSet<String>,
    ) {
        match value {
            figment::value::Value::Dict(_, dict) => {
                for (k, v) in dict {
                    let key = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&key, v, out);
                }
            }
            _ => {
                out.insert(prefix.to_owned());
            }
        }
    }
    let dict: figment::value::Dict = figment.extract().map_err(Box::new)?;
    let mut out = std::collections::BTreeSet::new();
    walk("", &figment::value::Value::from(dict), &mut out);
    Ok(out)
}

impl ControllerConfig {
    /// Loads defaults, then `file` (TOML), then `RILL_*` env vars, then `overrides`
    /// (`name=value` pairs from the command line), and validates the result.
    pub fn load(
        file: Option<&std::path::Path>,
        overrides: &BTreeMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(ControllerConfig::default()));
        // The file and the flags are strict (an unknown name is a typo); the environment is
        // lenient (RILL_* is shared with the broker, the CLI and tools).
        let known = property_names(&figment)?;
        let check = |layer: &Figment, source: &'static str| -> Result<(), ConfigError> {
            match property_names(layer)?
                .into_iter()
                .find(|k| !known.contains(k))
            {
                Some(name) => Err(ConfigError::Unknown {
                    name,
                    given_in: source,
                }),
                None => Ok(()),
            }
        };
        if let Some(file) = file {
            check(&Figment::from(Toml::file_exact(file)), "the config file")?;
            figment = figment.merge(Toml::file_exact(file));
        }
        let flags = overrides.iter().fold(Figment::new(), |f, (k, v)| {
            f.merge(Serialized::global(k.as_str(), parse_value(v)))
        });
        check(&flags, "the command line")?;
        figment = figment.merge(
            Env::prefixed("RILL_")
                .split("_")
                .map(|k| k.as_str().to_ascii_lowercase().into()),
        );
        for (k, v) in overrides {
            figment = figment.merge(Serialized::global(k.as_str(), parse_value(v)));
        }
        let config: ControllerConfig = figment.extract().map_err(Box::new)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks ranges and cross-field rules.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let voters = self.voters()?;
        if !voters.iter().any(|v| v.id == self.node.id) {
            return Err(ConfigError::Invalid {
                name: "node.id",
                reason: format!(
                    "{} is not one of controller.quorum.voters ({})",
                    self.node.id, self.controller.quorum.voters
                ),
            });
        }
        self.listen_addr()?;
        let q = &self.controller.quorum;
        if q.tick.ms == 0 || q.election.timeout.ms < 2 * q.tick.ms {
            return Err(ConfigError::Invalid {
                name: "controller.quorum.election.timeout.ms",
                reason: "must be at least twice controller.quorum.tick.ms (and the tick > 0)"
                    .into(),
            });
        }
        if self.num.partitions < 1 {
            return Err(ConfigError::Invalid {
                name: "num.partitions",
                reason: "must be at least 1".into(),
            });
        }
        if self.default.replication.factor < 1 {
            return Err(ConfigError::Invalid {
                name: "default.replication.factor",
                reason: "must be at least 1".into(),
            });
        }
        if !self.metrics.address.is_empty() && self.metrics.address.parse::<SocketAddr>().is_err() {
            return Err(ConfigError::Invalid {
                name: "metrics.address",
                reason: format!(
                    "{:?} is not host:port with a numeric IP",
                    self.metrics.address
                ),
            });
        }
        if self.max.partitions.per.topic < 1 {
            return Err(ConfigError::Invalid {
                name: "max.partitions.per.topic",
                reason: "must be at least 1".into(),
            });
        }
        if self.leader.imbalance.check.interval.seconds == 0 {
            return Err(ConfigError::Invalid {
                name: "leader.imbalance.check.interval.seconds",
                reason: "must be at least 1".into(),
            });
        }
        if self.leader.imbalance.per.broker.percentage > 100 {
            return Err(ConfigError::Invalid {
                name: "leader.imbalance.per.broker.percentage",
                reason: "must be between 0 and 100".into(),
            });
        }
        if self.queued.max.requests == 0 {
            return Err(ConfigError::Invalid {
                name: "queued.max.requests",
                reason: "must be at least 1".into(),
            });
        }
        // Zero would expire every write at once, fence every broker at once, or snapshot after
        // every record.
        for (name, value) in [
            ("controller.quorum.request.timeout.ms", q.request.timeout.ms),
            ("broker.session.timeout.ms", self.broker.session.timeout.ms),
            (
                "metadata.log.max.record.bytes.between.snapshots",
                self.metadata.log.max.record.bytes.between.snapshots,
            ),
        ] {
            if value == 0 {
                return Err(ConfigError::Invalid {
                    name,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }

    /// Parses `controller.quorum.voters`.
    pub fn voters(&self) -> Result<Vec<Voter>, ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            name: "controller.quorum.voters",
            reason,
        };
        let mut voters = Vec::new();
        for part in self
            .controller
            .quorum
            .voters
            .split(',')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let (id, address) = part
                .split_once('@')
                .ok_or_else(|| invalid(format!("{part:?} is not id@host:port")))?;
            let id: u64 = id
                .parse()
                .map_err(|_| invalid(format!("{id:?} is not a node id")))?;
            if id == 0 {
                return Err(invalid("node ids start at 1".into()));
            }
            if !address.contains(':') {
                return Err(invalid(format!("{address:?} has no port")));
            }
            if voters.iter().any(|v: &Voter| v.id == id) {
                return Err(invalid(format!("node id {id} appears twice")));
            }
            voters.push(Voter {
                id,
                address: address.to_owned(),
            });
        }
        if voters.is_empty() {
            return Err(invalid("at least one voter is required".into()));
        }
        Ok(voters)
    }

    /// The address to bind.
    pub fn listen_addr(&self) -> Result<SocketAddr, ConfigError> {
        self.listeners.parse().map_err(|_| ConfigError::Invalid {
            name: "listeners",
            reason: format!("{:?} is not host:port with a numeric IP", self.listeners),
        })
    }
}

fn parse_value(v: &str) -> figment::value::Value {
    if let Ok(n) = v.parse::<i64>() {
        return n.into();
    }
    if let Ok(b) = v.parse::<bool>() {
        return b.into();
    }
    v.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_in_the_file_or_on_the_command_line_are_errors() {
        let mut flags = BTreeMap::new();
        flags.insert("num.partition".to_owned(), "6".to_owned());
        let e = ControllerConfig::load(None, &flags).unwrap_err();
        assert!(
            matches!(&e, ConfigError::Unknown { name, .. } if name == "num.partition"),
            "{e}"
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("controller.toml");
        std::fs::write(&file, "node.id = 1\nbroker.session.timeout = 5000\n").unwrap();
        let e = ControllerConfig::load(Some(&file), &BTreeMap::new()).unwrap_err();
        assert!(e.to_string().contains("broker.session.timeout"), "{e}");
        assert!(e.to_string().contains("config file"), "{e}");
        // Every documented name is known.
        let mut flags = BTreeMap::new();
        flags.insert("broker.session.timeout.ms".to_owned(), "5000".to_owned());
        ControllerConfig::load(None, &flags).unwrap();
    }

    #[test]
    fn timeouts_and_snapshot_sizes_of_zero_are_refused() {
        for name in [
            "controller.quorum.request.timeout.ms",
            "broker.session.timeout.ms",
            "metadata.log.max.record.bytes.between.snapshots",
        ] {
            let mut flags = BTreeMap::new();
            flags.insert(name.to_owned(), "0".to_owned());
            let e = ControllerConfig::load(None, &flags)
                .and_then(|c| c.validate().map(|()| c))
                .unwrap_err();
            assert!(e.to_string().contains(name), "{name}: {e}");
        }
    }

    #[test]
    fn defaults_file_env_and_flags_layer_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("controller.toml");
        std::fs::write(
            &file,
            "node.id = 2\nlisteners = \"127.0.0.1:9200\"\ncontroller.quorum.voters = \"1@127.0.0.1:9100,2@127.0.0.1:9200\"\nnum.partitions = 3\n",
        )
        .unwrap();
        let mut flags = BTreeMap::new();
        flags.insert("num.partitions".to_owned(), "6".to_owned());
        let c = ControllerConfig::load(Some(&file), &flags).unwrap();
        assert_eq!(c.node.id, 2);
        assert_eq!(c.num.partitions, 6, "flags win over the file");
        assert_eq!(c.broker.session.timeout.ms, 9000, "defaults fill the rest");
        assert_eq!(c.voters().unwrap().len(), 2);
        assert!(c.auto.leader.rebalance.enable, "Kafka's default");
        assert_eq!(c.leader.imbalance.check.interval.seconds, 300);
        assert_eq!(c.leader.imbalance.per.broker.percentage, 10);
        let mut flags = BTreeMap::new();
        flags.insert(
            "auto.leader.rebalance.enable".to_owned(),
            "false".to_owned(),
        );
        flags.insert(
            "leader.imbalance.check.interval.seconds".to_owned(),
            "2".to_owned(),
        );
        let c = ControllerConfig::load(None, &flags).unwrap();
        assert!(!c.auto.leader.rebalance.enable);
        assert_eq!(c.leader.imbalance.check.interval.seconds, 2);
    }

    #[test]
    fn bad_values_are_explained() {
        let mut flags = BTreeMap::new();
        flags.insert("node.id".to_owned(), "7".to_owned());
        let e = ControllerConfig::load(None, &flags)
            .unwrap_err()
            .to_string();
        assert!(e.contains("not one of controller.quorum.voters"), "{e}");
        let mut flags = BTreeMap::new();
        flags.insert(
            "leader.imbalance.check.interval.seconds".to_owned(),
            "0".to_owned(),
        );
        let e = ControllerConfig::load(None, &flags)
            .unwrap_err()
            .to_string();
        assert!(e.contains("leader.imbalance.check.interval.seconds"), "{e}");
        let mut c = ControllerConfig::default();
        c.controller.quorum.voters = "1@nowhere".into();
        assert!(c.validate().unwrap_err().to_string().contains("no port"));
    }
}
