//! Consumer settings with Kafka's names and defaults, and their validation.

use std::time::{Duration, Instant};

use crate::ConsumerError;

/// Where to start when a partition has no position (no committed offset either, for a group
/// consumer) or its position fell out of the log: Kafka's `auto.offset.reset`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OffsetReset {
    /// The log start.
    Earliest,
    /// The high watermark (new records only).
    Latest,
    /// Kafka's `none`: no guess; `poll` fails with [`ConsumerError::NoOffset`] for the
    /// partition until the application seeks it.
    None,
}

/// The largest duration a setting takes, in milliseconds: Kafka's settings are `int`s.
const MAX_MS: u128 = i32::MAX as u128;

/// The most fetches a consumer keeps in flight to one broker.
pub(crate) const MAX_IN_FLIGHT_FETCHES: usize = 16;

/// Consumer settings, with Kafka's names and defaults.
#[derive(Clone, Debug)]
pub struct ConsumerConfig {
    /// `bootstrap.servers`: `host:port` of brokers to ask for metadata first (any one will do).
    pub bootstrap: Vec<String>,
    /// `fetch.max.wait.ms`: how long a broker may hold a fetch waiting for `fetch.min.bytes`
    /// (default 500 ms).
    pub fetch_max_wait: Duration,
    /// `fetch.min.bytes`: the broker answers a fetch once it has this much data, or when
    /// `fetch.max.wait.ms` passes (default 1: as soon as anything is there).
    pub fetch_min_bytes: i32,
    /// `fetch.max.bytes`: a soft cap on one fetch response; a batch larger than it still comes
    /// back alone, so consuming never stalls (default 50 MiB).
    pub fetch_max_bytes: i32,
    /// `max.partition.fetch.bytes`: the same per partition (default 1 MiB).
    pub max_partition_fetch_bytes: i32,
    /// `max.in.flight.fetches.per.broker` (rill's; Kafka's consumer has one fetch per broker
    /// in flight, which this is at 1): fetches in flight to one broker at a time, over
    /// disjoint sets of its partitions, so the broker prepares one answer while the client
    /// takes in another. Each may bring up to `fetch.max.bytes` (default 2, 1 to 16).
    pub max_in_flight_fetches_per_broker: usize,
    /// `auto.offset.reset`: where a partition without a position (and, in a group, without a
    /// committed offset), or whose position fell out of the log, starts (default latest).
    pub auto_offset_reset: OffsetReset,
    /// `check.crcs`: verify each batch's CRC-32C on receipt (default true).
    pub check_crcs: bool,
    /// `request.timeout.ms`: how long one request may take, and how long lookups such as
    /// [`Consumer::partitions_of`](crate::Consumer::partitions_of) and asynchronous commits
    /// keep retrying (default 30 s).
    pub request_timeout: Duration,
    /// `default.api.timeout.ms`: the bound of a call that waits for the cluster without a
    /// timeout of its own — [`commit_sync`](crate::Consumer::commit_sync), the commits of
    /// [`close`](crate::Consumer::close) and `unsubscribe` (also waiting for the commits queued
    /// before them) and the commit before partitions are revoked (default 60 s).
    pub default_api_timeout: Duration,
    /// `retry.backoff.ms`: the first wait before fetching a partition again after a retriable
    /// error, so a failing broker is not hammered (none when the answer names a new leader:
    /// fetched there at once, KIP-951).
    pub retry_backoff: Duration,
    /// `retry.backoff.max.ms`: the wait doubles with each consecutive failure up to this.
    pub retry_backoff_max: Duration,
    /// `group.id`: the consumer group whose committed offsets this consumer reads and writes,
    /// and which [`subscribe`](crate::Consumer::subscribe) joins. `None` (the default): no
    /// group, so no subscribe and no commits.
    pub group_id: Option<String>,
    /// `group.instance.id`: makes the member static — a restart within the session timeout
    /// keeps its partitions (it leaves with epoch -2 instead of -1). Needs `group_id`.
    pub group_instance_id: Option<String>,
    /// `client.id`: shown by `rill group describe` next to the member (default
    /// `rill-consumer`).
    pub client_id: String,
    /// `client.rack`: the rack of this consumer, sent to the coordinator (DescribeGroups shows
    /// it). Informational: rill's assignors are not rack-aware and fetches always go to the
    /// leader (no KIP-392 fetch from a follower).
    pub client_rack: Option<String>,
    /// `enable.auto.commit`: commit consumed positions every `auto_commit_interval` from
    /// `poll`, before partitions are revoked, and on `close` (default true; only takes effect
    /// with a `group_id`).
    pub enable_auto_commit: bool,
    /// `auto.commit.interval.ms` (default 5 s).
    pub auto_commit_interval: Duration,
    /// `max.poll.interval.ms`: a member whose application does not call `poll` for this long
    /// leaves the group so its partitions go to others; also how long the coordinator waits
    /// for it to give partitions up (the rebalance timeout). Default 300 s.
    pub max_poll_interval: Duration,
    /// `group.remote.assignor`: the coordinator's assignor to use (`uniform` or `range`);
    /// `None` lets the broker choose (its first `group.consumer.assignors`).
    pub group_remote_assignor: Option<String>,
}

impl Default for ConsumerConfig {
    fn default() -> Self {
        ConsumerConfig {
            bootstrap: vec!["127.0.0.1:9092".into()],
            fetch_max_wait: Duration::from_millis(500),
            fetch_min_bytes: 1,
            fetch_max_bytes: 50 << 20,
            max_partition_fetch_bytes: 1 << 20,
            max_in_flight_fetches_per_broker: 2,
            auto_offset_reset: OffsetReset::Latest,
            check_crcs: true,
            request_timeout: Duration::from_secs(30),
            default_api_timeout: Duration::from_secs(60),
            retry_backoff: Duration::from_millis(100),
            retry_backoff_max: Duration::from_secs(1),
            group_id: None,
            group_instance_id: None,
            client_id: "rill-consumer".into(),
            client_rack: None,
            enable_auto_commit: true,
            auto_commit_interval: Duration::from_secs(5),
            max_poll_interval: Duration::from_secs(300),
            group_remote_assignor: None,
        }
    }
}

impl ConsumerConfig {
    /// Refuses settings that cannot work, naming the setting (Kafka's
    /// `InvalidConfigurationException`): an empty `group.id`, a `group.instance.id` without a
    /// group, zero intervals and timeouts, and durations that do not fit Kafka's (and the
    /// protocol's) `i32` milliseconds.
    pub fn validate(&self) -> Result<(), ConsumerError> {
        let bad = |m: String| Err(ConsumerError::Config(m));
        if self.bootstrap.is_empty() {
            return bad("bootstrap.servers is empty (e.g. 127.0.0.1:9092)".into());
        }
        if let Some(g) = &self.group_id
            && g.trim().is_empty()
        {
            return bad("group.id must not be empty (leave it unset for no group)".into());
        }
        if let Some(i) = &self.group_instance_id {
            if self.group_id.is_none() {
                return bad("group.instance.id needs a group.id".into());
            }
            if i.trim().is_empty() {
                return bad("group.instance.id must not be empty".into());
            }
        }
        if self
            .group_remote_assignor
            .as_deref()
            .is_some_and(|a| a.trim().is_empty())
        {
            return bad(
                "group.remote.assignor must not be empty (leave it unset for the broker's default)"
                    .into(),
            );
        }
        for (name, value) in [
            ("auto.commit.interval.ms", self.auto_commit_interval),
            ("max.poll.interval.ms", self.max_poll_interval),
            ("request.timeout.ms", self.request_timeout),
            ("default.api.timeout.ms", self.default_api_timeout),
        ] {
            let ms = value.as_millis();
            if ms == 0 || ms > MAX_MS {
                return bad(format!(
                    "{name} must be between 1 and {MAX_MS} ms (got {value:?})"
                ));
            }
        }
        for (name, value) in [
            ("fetch.max.bytes", self.fetch_max_bytes),
            ("max.partition.fetch.bytes", self.max_partition_fetch_bytes),
        ] {
            if value < 1 {
                return bad(format!("{name} must be at least 1 byte (got {value})"));
            }
        }
        if !(1..=MAX_IN_FLIGHT_FETCHES).contains(&self.max_in_flight_fetches_per_broker) {
            return bad(format!(
                "max.in.flight.fetches.per.broker must be between 1 and {MAX_IN_FLIGHT_FETCHES} (got {})",
                self.max_in_flight_fetches_per_broker
            ));
        }
        for (name, value) in [
            ("retry.backoff.ms", self.retry_backoff),
            ("retry.backoff.max.ms", self.retry_backoff_max),
            ("fetch.max.wait.ms", self.fetch_max_wait),
        ] {
            if value.as_millis() > MAX_MS {
                return bad(format!(
                    "{name} must be at most {MAX_MS} ms (got {value:?})"
                ));
            }
        }
        Ok(())
    }

    /// True when offsets are committed automatically: `enable.auto.commit` with a group.
    pub(crate) fn auto_commit(&self) -> bool {
        self.enable_auto_commit && self.group_id.is_some()
    }

    pub(crate) fn retry(&self) -> RetryPolicy {
        RetryPolicy {
            backoff: self.retry_backoff,
            backoff_max: self.retry_backoff_max,
            timeout: self.request_timeout,
        }
    }
}

/// `timeout` from now, or (a timeout too long for the clock) a time that never comes.
pub(crate) fn deadline_after(timeout: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(timeout)
        .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 86_400)))
        .unwrap_or(now)
}

/// How retriable failures are retried: exponential backoff up to a cap, for up to `timeout`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RetryPolicy {
    pub backoff: Duration,
    pub backoff_max: Duration,
    pub timeout: Duration,
}

impl RetryPolicy {
    /// `retry.backoff.ms` doubled for each failure after the first, capped at
    /// `retry.backoff.max.ms` (Kafka's exponential backoff, without its jitter).
    pub fn delay(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(20);
        self.backoff
            .saturating_mul(1 << doublings)
            .min(self.backoff_max.max(self.backoff))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let retry = ConsumerConfig::default().retry();
        let ms = |n| retry.delay(n).as_millis();
        assert_eq!(
            [ms(1), ms(2), ms(3), ms(4), ms(5), ms(40)],
            [100, 200, 400, 800, 1000, 1000]
        );
    }

    #[test]
    fn small_timeouts_are_valid_and_deadlines_never_overflow() {
        ConsumerConfig {
            request_timeout: Duration::from_millis(1),
            default_api_timeout: Duration::from_millis(1),
            ..Default::default()
        }
        .validate()
        .unwrap();
        assert!(deadline_after(Duration::MAX) > Instant::now() + Duration::from_secs(86_400));
        assert!(deadline_after(Duration::ZERO) <= Instant::now());
    }

    #[test]
    fn defaults_are_valid_and_kafkas() {
        let c = ConsumerConfig::default();
        c.validate().unwrap();
        assert!(
            c.enable_auto_commit && !c.auto_commit(),
            "no group, no auto commit"
        );
        assert_eq!(c.auto_commit_interval, Duration::from_secs(5));
        assert_eq!(c.max_poll_interval, Duration::from_secs(300));
        assert_eq!(c.default_api_timeout, Duration::from_secs(60));
        let g = ConsumerConfig {
            group_id: Some("g".into()),
            ..Default::default()
        };
        g.validate().unwrap();
        assert!(g.auto_commit());
    }

    #[test]
    fn bad_settings_are_refused_by_name() {
        let cases: Vec<(ConsumerConfig, &str)> = vec![
            (
                ConsumerConfig {
                    group_id: Some(" ".into()),
                    ..Default::default()
                },
                "group.id",
            ),
            (
                ConsumerConfig {
                    group_instance_id: Some("i".into()),
                    ..Default::default()
                },
                "group.instance.id needs a group.id",
            ),
            (
                ConsumerConfig {
                    group_id: Some("g".into()),
                    group_instance_id: Some(String::new()),
                    ..Default::default()
                },
                "group.instance.id",
            ),
            (
                ConsumerConfig {
                    max_partition_fetch_bytes: 0,
                    ..Default::default()
                },
                "max.partition.fetch.bytes",
            ),
            (
                ConsumerConfig {
                    fetch_max_bytes: -1,
                    ..Default::default()
                },
                "fetch.max.bytes",
            ),
            (
                ConsumerConfig {
                    auto_commit_interval: Duration::ZERO,
                    ..Default::default()
                },
                "auto.commit.interval.ms",
            ),
            (
                ConsumerConfig {
                    max_poll_interval: Duration::from_secs(u64::from(u32::MAX)),
                    ..Default::default()
                },
                "max.poll.interval.ms",
            ),
            (
                ConsumerConfig {
                    group_remote_assignor: Some(String::new()),
                    ..Default::default()
                },
                "group.remote.assignor",
            ),
            (
                ConsumerConfig {
                    bootstrap: Vec::new(),
                    ..Default::default()
                },
                "bootstrap.servers",
            ),
            (
                ConsumerConfig {
                    max_in_flight_fetches_per_broker: 0,
                    ..Default::default()
                },
                "max.in.flight.fetches.per.broker",
            ),
            (
                ConsumerConfig {
                    max_in_flight_fetches_per_broker: 17,
                    ..Default::default()
                },
                "max.in.flight.fetches.per.broker",
            ),
            (
                ConsumerConfig {
                    request_timeout: Duration::MAX,
                    ..Default::default()
                },
                "request.timeout.ms",
            ),
            (
                ConsumerConfig {
                    request_timeout: Duration::from_micros(10),
                    ..Default::default()
                },
                "request.timeout.ms",
            ),
            (
                ConsumerConfig {
                    default_api_timeout: Duration::ZERO,
                    ..Default::default()
                },
                "default.api.timeout.ms",
            ),
            (
                ConsumerConfig {
                    auto_commit_interval: Duration::MAX,
                    ..Default::default()
                },
                "auto.commit.interval.ms",
            ),
            (
                ConsumerConfig {
                    retry_backoff_max: Duration::from_secs(u64::MAX),
                    ..Default::default()
                },
                "retry.backoff.max.ms",
            ),
        ];
        for (config, name) in cases {
            match config.validate() {
                Err(ConsumerError::Config(m)) => assert!(m.contains(name), "{m} lacks {name}"),
                other => panic!("{name}: expected a config error, got {other:?}"),
            }
        }
    }
}
