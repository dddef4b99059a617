//! Consumer group administration, for `rill group` (Kafka's `Admin` group calls and
//! `kafka-consumer-groups.sh`): list the groups of every broker, describe a group (state,
//! epochs, members and their assignments), its lag per partition, delete groups, and plan and
//! apply offset resets.
//!
//! Offsets are reset from outside the group (OffsetCommit with epoch -1), which the coordinator
//! allows only while the group has no members; a group with members is refused with
//! [`ConsumerError::GroupNotEmpty`] ("the group has active members; stop them first").

use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;
use std::time::Duration;

use rill_protocol::client::ClusterClient;
use rill_protocol::proto::group_coordinator_client::GroupCoordinatorClient;
use rill_protocol::proto::{
    DeleteGroupsRequest, DescribeGroupsRequest, DescribedGroup, ListGroupsRequest,
};
use rill_protocol::{ApiError, ErrorCode, TopicPartition};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::{RetryPolicy, deadline_after};
use crate::consumer_coordinator::commit::{CommitBy, commit};
use crate::consumer_coordinator::heartbeat::MemberIdentity;
use crate::consumer_coordinator::{fetch_committed, group_has_members};
use crate::coordinator_client::{CoordinatorClient, OFFSETS_TOPIC};
use crate::error::{request_error, response_error};
use crate::offset_fetcher::{self, EARLIEST, LATEST};
use crate::{ConsumerError, OffsetAndMetadata};

pub use crate::coordinator_client::CoordinatorNode;

/// One group as a broker lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GroupListing {
    #[allow(missing_docs)]
    pub group_id: String,
    /// `Empty`, `Assigning`, `Reconciling`, `Stable` or `Dead`.
    pub state: String,
    /// `consumer`.
    pub group_type: String,
    /// The broker coordinating it.
    pub coordinator_id: i32,
}

/// The groups of the whole cluster: each broker lists the groups it coordinates.
#[derive(Clone, Debug, Default)]
pub struct GroupListings {
    /// Every group found, by id.
    pub groups: Vec<GroupListing>,
    /// Brokers that could not be asked (their groups are missing from `groups`).
    pub errors: Vec<(i32, ApiError)>,
}

/// A group as its coordinator describes it.
#[derive(Clone, Debug)]
pub struct GroupDescription {
    /// The broker coordinating the group.
    pub coordinator: CoordinatorNode,
    /// State, epochs, assignor, members with their current and target assignments.
    pub group: DescribedGroup,
}

/// The member a partition is assigned to, as `rill group describe` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberRef {
    #[allow(missing_docs)]
    pub member_id: String,
    /// `group.instance.id` of a static member.
    pub instance_id: Option<String>,
    #[allow(missing_docs)]
    pub client_id: String,
    /// The address the member's heartbeats come from.
    pub client_host: String,
}

/// How far a group is behind in one partition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PartitionLag {
    #[allow(missing_docs)]
    pub partition: TopicPartition,
    /// The committed offset, `None` when nothing is committed.
    pub committed: Option<i64>,
    /// The log end offset (high watermark), `None` when it could not be read.
    pub log_end: Option<i64>,
    /// `log_end - committed` when both are known.
    pub lag: Option<i64>,
    /// Who owns the partition now, if anyone.
    pub owner: Option<MemberRef>,
    /// Why `log_end` is unknown (e.g. the topic was deleted).
    pub error: Option<ApiError>,
}

/// A group's lag: every partition it has committed offsets for or owns.
#[derive(Clone, Debug, Default)]
pub struct GroupLag {
    /// By topic and partition.
    pub partitions: Vec<PartitionLag>,
    /// The sum of the known lags.
    pub total: i64,
}

/// Where `reset-offsets` moves a group's committed offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetTarget {
    /// The log start offset.
    Earliest,
    /// The log end offset (high watermark): skip everything not yet consumed.
    Latest,
    /// This offset, kept within [log start, log end].
    Offset(i64),
    /// The first offset whose record timestamp is at or after this time (ms since the epoch);
    /// the log end when every record is older.
    Datetime(i64),
    /// The committed offset moved by this many (negative: back), kept within the log.
    ShiftBy(i64),
}

/// Which partitions of which topic to reset: `topic` (every partition) or `topic:0,2`, as
/// `kafka-consumer-groups.sh --topic` takes them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopicSelection {
    #[allow(missing_docs)]
    pub topic: String,
    /// `None`: every partition.
    pub partitions: Option<Vec<i32>>,
}

impl FromStr for TopicSelection {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (topic, partitions) = match s.split_once(':') {
            None => (s, None),
            Some((t, list)) => {
                let parts = list
                    .split(',')
                    .map(|p| {
                        p.trim()
                            .parse::<i32>()
                            .ok()
                            .filter(|p| *p >= 0)
                            .ok_or_else(|| {
                                format!("{s:?}: {p:?} is not a partition number (topic:0,1,2)")
                            })
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                (t, Some(parts))
            }
        };
        if topic.trim().is_empty() {
            return Err(format!("{s:?} names no topic (topic or topic:0,1,2)"));
        }
        Ok(TopicSelection {
            topic: topic.trim().to_owned(),
            partitions,
        })
    }
}

/// One partition of a reset plan.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResetPlanEntry {
    #[allow(missing_docs)]
    pub partition: TopicPartition,
    /// The committed offset now, `None` when nothing is committed.
    pub current: Option<i64>,
    /// The offset the reset commits.
    pub new_offset: i64,
}

/// Parses an ISO-8601 / RFC 3339 date and time — `2026-11-27T10:00:00Z`,
/// `2026-11-27T10:00:00.250+01:00`, `2026-11-27T10:00` (no zone: UTC) — into ms since the
/// Unix epoch, as `--to-datetime` takes it.
pub fn parse_datetime(s: &str) -> Result<i64, String> {
    let bad = |why: &str| format!("{s:?} is not a date and time like 2026-11-27T10:00:00Z ({why})");
    let (date, time) = s
        .split_once(['T', 't', ' '])
        .ok_or_else(|| bad("no 'T' between date and time"))?;
    let d: Vec<&str> = date.split('-').collect();
    let [y, mo, da] = d[..] else {
        return Err(bad("the date is not YYYY-MM-DD"));
    };
    let num = |v: &str, what: &str, lo: i64, hi: i64| -> Result<i64, String> {
        if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
            return Err(bad(&format!("bad {what} {v:?}")));
        }
        let n: i64 = v.parse().map_err(|_| bad(&format!("bad {what} {v:?}")))?;
        if n < lo || n > hi {
            return Err(bad(&format!("{what} {n} is not within {lo}..={hi}")));
        }
        Ok(n)
    };
    let (year, month) = (num(y, "year", 1970, 9999)?, num(mo, "month", 1, 12)?);
    let leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    let days_in_month = [
        31,
        if leap { 29 } else { 28 },
        31,
        30,
        31,
        30,
        31,
        31,
        30,
        31,
        30,
        31,
    ];
    let day = num(da, "day", 1, days_in_month[(month - 1) as usize])?;
    // The zone: Z, ±HH:MM, ±HHMM, or none (UTC).
    let (clock, offset_min) = if let Some(c) = time.strip_suffix(['Z', 'z']) {
        (c, 0)
    } else if let Some(i) = time.rfind(['+', '-']) {
        let (c, zone) = time.split_at(i);
        let sign = if zone.starts_with('-') { -1 } else { 1 };
        let z = zone[1..].replace(':', "");
        if z.len() != 4 || !z.is_ascii() {
            return Err(bad("the zone is not ±HH:MM"));
        }
        let h = num(&z[..2], "zone hour", 0, 23)?;
        let m = num(&z[2..], "zone minute", 0, 59)?;
        (c, sign * (h * 60 + m))
    } else {
        (time, 0)
    };
    let (hms, frac) = match clock.split_once('.') {
        Some((a, f)) => (a, Some(f)),
        None => (clock, None),
    };
    let t: Vec<&str> = hms.split(':').collect();
    let (hour, minute, second) = match t[..] {
        [h, m] => (num(h, "hour", 0, 23)?, num(m, "minute", 0, 59)?, 0),
        [h, m, sec] => (
            num(h, "hour", 0, 23)?,
            num(m, "minute", 0, 59)?,
            num(sec, "second", 0, 60)?,
        ),
        _ => return Err(bad("the time is not HH:MM[:SS[.sss]]")),
    };
    let millis = match frac {
        None => 0,
        Some(f) => {
            if f.is_empty() || f.len() > 9 || !f.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad("bad fraction of a second"));
            }
            let padded = format!("{f:0<3}");
            padded[..3]
                .parse::<i64>()
                .map_err(|_| bad("bad fraction of a second"))?
        }
    };
    // Days since 1970-01-01 (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * m + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Ok(seconds * 1000 + millis)
}

/// The offset a reset moves to, kept within `[earliest, latest]` (Kafka's clamping).
/// `found` is the time lookup's answer for [`ResetTarget::Datetime`].
pub(crate) fn reset_offset(
    target: ResetTarget,
    current: Option<i64>,
    earliest: i64,
    latest: i64,
    found: Option<i64>,
) -> Result<i64, String> {
    let wanted = match target {
        ResetTarget::Earliest => earliest,
        ResetTarget::Latest => latest,
        ResetTarget::Offset(n) => n,
        ResetTarget::Datetime(_) => found.unwrap_or(latest),
        ResetTarget::ShiftBy(n) => match current {
            Some(c) => c.saturating_add(n),
            None => return Err("has no committed offset to shift".into()),
        },
    };
    Ok(wanted.clamp(earliest, latest.max(earliest)))
}

/// Group administration over a cluster; cheap to clone.
#[derive(Clone)]
pub struct GroupAdmin {
    client: ClusterClient,
    retry: RetryPolicy,
}

impl GroupAdmin {
    /// An admin bootstrapping from `bootstrap`; each call retries for up to `request_timeout`.
    pub fn new(bootstrap: &[String], request_timeout: Duration) -> Result<Self, ConsumerError> {
        Ok(Self::with_client(
            ClusterClient::new(bootstrap, request_timeout)?,
            request_timeout,
        ))
    }

    /// An admin over an existing cluster client.
    pub fn with_client(client: ClusterClient, request_timeout: Duration) -> Self {
        GroupAdmin {
            client,
            retry: RetryPolicy {
                backoff: Duration::from_millis(100),
                backoff_max: Duration::from_secs(1),
                timeout: request_timeout,
            },
        }
    }

    fn coordinator(&self, group: &str) -> Result<CoordinatorClient, ConsumerError> {
        if group.trim().is_empty() {
            return Err(ConsumerError::Config("the group id is empty".into()));
        }
        Ok(CoordinatorClient::new(
            self.client.clone(),
            group,
            self.retry,
        ))
    }

    /// Every group of the cluster (in `states` only, when given): each live broker lists the
    /// groups it coordinates; brokers that cannot be asked are reported, not fatal.
    pub async fn list_groups(&self, states: &[String]) -> Result<GroupListings, ConsumerError> {
        let metadata = self.client.refresh(&[OFFSETS_TOPIC.to_owned()]).await?;
        let mut asks = JoinSet::new();
        for b in metadata.brokers {
            let Some(e) = b.endpoints.first() else {
                continue;
            };
            let channel = self.client.channel(&format!("{}:{}", e.host, e.port))?;
            let request = ListGroupsRequest {
                states_filter: states.to_vec(),
            };
            asks.spawn(async move {
                let answer = GroupCoordinatorClient::new(channel)
                    .list_groups(request)
                    .await
                    .map(|r| r.into_inner())
                    .map_err(|s| request_error(b.node_id, s))
                    .and_then(|r| match response_error(r.error_code, &r.error_message) {
                        Some(e) => Err(e),
                        None => Ok(r),
                    });
                (b.node_id, answer)
            });
        }
        let mut groups: BTreeMap<String, GroupListing> = BTreeMap::new();
        let mut errors = Vec::new();
        while let Some(done) = asks.join_next().await {
            let Ok((broker, answer)) = done else {
                continue;
            };
            match answer {
                Ok(r) => {
                    for g in r.groups {
                        groups.entry(g.group_id.clone()).or_insert(GroupListing {
                            group_id: g.group_id,
                            state: g.group_state,
                            group_type: g.group_type,
                            coordinator_id: g.coordinator_id,
                        });
                    }
                }
                Err(e) => errors.push((broker, e)),
            }
        }
        errors.sort_by_key(|(b, _)| *b);
        Ok(GroupListings {
            groups: groups.into_values().collect(),
            errors,
        })
    }

    /// The group as its coordinator describes it; GROUP_ID_NOT_FOUND for a group that does not
    /// exist.
    pub async fn describe_group(&self, group: &str) -> Result<GroupDescription, ConsumerError> {
        let coordinator = self.coordinator(group)?;
        let request = DescribeGroupsRequest {
            group_ids: vec![group.to_owned()],
        };
        let response = coordinator
            .call(self.retry.timeout, |mut c| {
                let request = request.clone();
                async move { c.describe_groups(request).await }
            })
            .await?;
        let described = response
            .groups
            .into_iter()
            .find(|g| g.group_id == group)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::UnknownServerError,
                    format!("the coordinator did not describe group {group}"),
                )
            })?;
        if let Some(e) = response_error(described.error_code, &described.error_message) {
            if e.code == ErrorCode::GroupIdNotFound {
                return Err(ApiError::new(e.code, format!("group {group} does not exist")).into());
            }
            return Err(e.into());
        }
        Ok(GroupDescription {
            coordinator: coordinator.coordinator().await?,
            group: described,
        })
    }

    /// The group's committed offsets (every partition with one when `tps` is empty).
    pub async fn committed_offsets(
        &self,
        group: &str,
        tps: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, Option<OffsetAndMetadata>>, ConsumerError> {
        let coordinator = self.coordinator(group)?;
        let results = fetch_committed(&coordinator, tps, self.retry.timeout).await?;
        if let Some(e) = crate::consumer_coordinator::first_error(&results) {
            return Err(e.into());
        }
        Ok(results
            .into_iter()
            .filter_map(|(tp, r)| r.ok().map(|o| (tp, o)))
            .collect())
    }

    /// The lag of a described group in every partition it has committed offsets for or whose
    /// members own: log end offset (high watermark) minus committed offset.
    pub async fn lag(&self, description: &GroupDescription) -> Result<GroupLag, ConsumerError> {
        let group = &description.group;
        let committed = self.committed_offsets(&group.group_id, &[]).await?;
        let mut owners: BTreeMap<TopicPartition, MemberRef> = BTreeMap::new();
        for m in &group.members {
            for t in &m.assignment {
                for p in &t.partitions {
                    owners.insert(
                        TopicPartition::new(t.topic.as_str(), *p),
                        MemberRef {
                            member_id: m.member_id.clone(),
                            instance_id: m.instance_id.clone(),
                            client_id: m.client_id.clone(),
                            client_host: m.client_host.clone(),
                        },
                    );
                }
            }
        }
        let all: Vec<TopicPartition> = committed
            .keys()
            .chain(owners.keys())
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        let ends = offset_fetcher::list_offsets(&self.client, &self.retry, &all, LATEST).await;
        let mut lag = GroupLag::default();
        for (tp, end) in ends {
            let current = committed.get(&tp).cloned().flatten().map(|o| o.offset);
            let (log_end, error) = match end {
                Ok(found) => (found.map(|(o, _)| o), None),
                Err(e) => (None, Some(e)),
            };
            let partition_lag = match (current, log_end) {
                (Some(c), Some(e)) => Some((e - c).max(0)),
                _ => None,
            };
            lag.total += partition_lag.unwrap_or(0);
            lag.partitions.push(PartitionLag {
                owner: owners.get(&tp).cloned(),
                partition: tp,
                committed: current,
                log_end,
                lag: partition_lag,
                error,
            });
        }
        Ok(lag)
    }

    /// Deletes each group and its committed offsets; each gets its own outcome (a group with
    /// members is refused: [`ConsumerError::GroupNotEmpty`]).
    pub async fn delete_groups(
        &self,
        groups: &[String],
    ) -> Vec<(String, Result<(), ConsumerError>)> {
        let mut out = Vec::new();
        for group in groups {
            out.push((group.clone(), self.delete_group(group).await));
        }
        out
    }

    async fn delete_group(&self, group: &str) -> Result<(), ConsumerError> {
        let coordinator = self.coordinator(group)?;
        let request = DeleteGroupsRequest {
            group_ids: vec![group.to_owned()],
        };
        let response = coordinator
            .call(self.retry.timeout, |mut c| {
                let request = request.clone();
                async move { c.delete_groups(request).await }
            })
            .await?;
        let Some(r) = response.results.into_iter().find(|r| r.group_id == group) else {
            return Err(ApiError::new(
                ErrorCode::UnknownServerError,
                format!("the coordinator did not answer for group {group}"),
            )
            .into());
        };
        match response_error(r.error_code, &r.error_message) {
            None => Ok(()),
            Some(e) if group_has_members(e.code) => Err(ConsumerError::GroupNotEmpty {
                group: group.to_owned(),
            }),
            Some(e) if e.code == ErrorCode::GroupIdNotFound => {
                Err(ApiError::new(e.code, format!("group {group} does not exist")).into())
            }
            Some(e) => Err(e.into()),
        }
    }

    /// What resetting `group`'s offsets of `selections` to `target` would commit, partition by
    /// partition, with the committed offset now. Changes nothing.
    pub async fn plan_reset(
        &self,
        group: &str,
        selections: &[TopicSelection],
        target: ResetTarget,
    ) -> Result<Vec<ResetPlanEntry>, ConsumerError> {
        if selections.is_empty() {
            return Err(ConsumerError::Config("no topic to reset".into()));
        }
        let mut tps: BTreeSet<TopicPartition> = BTreeSet::new();
        for s in selections {
            let all = offset_fetcher::partitions_of(&self.client, &self.retry, &s.topic).await?;
            match &s.partitions {
                None => tps.extend(all),
                Some(list) => {
                    for p in list {
                        let tp = TopicPartition::new(s.topic.as_str(), *p);
                        if !all.contains(&tp) {
                            return Err(ApiError::new(
                                ErrorCode::UnknownTopicOrPartition,
                                format!(
                                    "topic {} has {} partitions; {tp} does not exist",
                                    s.topic,
                                    all.len()
                                ),
                            )
                            .into());
                        }
                        tps.insert(tp);
                    }
                }
            }
        }
        let tps: Vec<TopicPartition> = tps.into_iter().collect();
        let committed = self.committed_offsets(group, &tps).await?;
        let lookup = |ts| offset_fetcher::list_offsets(&self.client, &self.retry, &tps, ts);
        let offsets = |answers: Vec<(TopicPartition, Result<offset_fetcher::Found, ApiError>)>| {
            answers
                .into_iter()
                .map(|(tp, r)| r.map(|f| (tp, f.map(|(o, _)| o))))
                .collect::<Result<BTreeMap<_, _>, ApiError>>()
        };
        let earliest = offsets(lookup(EARLIEST).await)?;
        let latest = offsets(lookup(LATEST).await)?;
        let found = match target {
            ResetTarget::Datetime(ts) => offsets(lookup(ts).await)?,
            _ => BTreeMap::new(),
        };
        let mut plan = Vec::new();
        for tp in tps {
            let current = committed.get(&tp).cloned().flatten().map(|o| o.offset);
            let start = earliest.get(&tp).copied().flatten().unwrap_or(0);
            let end = latest.get(&tp).copied().flatten().unwrap_or(start);
            let new_offset = reset_offset(
                target,
                current,
                start,
                end,
                found.get(&tp).copied().flatten(),
            )
            .map_err(|why| ConsumerError::Config(format!("{tp} {why}")))?;
            plan.push(ResetPlanEntry {
                partition: tp,
                current,
                new_offset,
            });
        }
        Ok(plan)
    }

    /// Commits a reset plan from outside the group (epoch -1). Refused while the group has
    /// members ([`ConsumerError::GroupNotEmpty`]): they would commit over it.
    pub async fn apply_reset(
        &self,
        group: &str,
        plan: &[ResetPlanEntry],
    ) -> Result<(), ConsumerError> {
        match self.describe_group(group).await {
            Ok(d) if !d.group.members.is_empty() => {
                return Err(ConsumerError::GroupNotEmpty {
                    group: group.to_owned(),
                });
            }
            Ok(_) => {}
            Err(e) if e.code() == Some(ErrorCode::GroupIdNotFound) => {}
            Err(e) => return Err(e),
        }
        let coordinator = self.coordinator(group)?;
        let offsets: BTreeMap<TopicPartition, OffsetAndMetadata> = plan
            .iter()
            .map(|e| (e.partition.clone(), OffsetAndMetadata::new(e.new_offset)))
            .collect();
        if offsets.is_empty() {
            return Ok(());
        }
        let (_keep, mut outsider) = watch::channel(MemberIdentity {
            member_id: String::new(),
            epoch: -1,
        });
        let deadline = deadline_after(self.retry.timeout);
        let by = CommitBy::Outsider;
        match commit(
            &coordinator,
            &mut outsider,
            &self.retry,
            offsets,
            by,
            deadline,
        )
        .await
        {
            Err(ConsumerError::Commit { failed })
                if failed.iter().any(|(_, e)| group_has_members(e.code)) =>
            {
                Err(ConsumerError::GroupNotEmpty {
                    group: group.to_owned(),
                })
            }
            other => other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn datetimes_parse_to_epoch_millis() {
        assert_eq!(parse_datetime("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_datetime("2026-11-27T10:00:00Z"),
            Ok(1_795_773_600_000)
        );
        assert_eq!(parse_datetime("2026-11-27T10:00:00"), Ok(1_795_773_600_000));
        assert_eq!(parse_datetime("2026-11-27T10:00Z"), Ok(1_795_773_600_000));
        assert_eq!(
            parse_datetime("2026-11-27T11:00:00.250+01:00"),
            Ok(1_795_773_600_250)
        );
        assert_eq!(
            parse_datetime("2026-11-27T05:30:00-0430"),
            Ok(1_795_773_600_000)
        );
        assert_eq!(
            parse_datetime("2024-02-29T00:00:00Z"),
            Ok(1_709_164_800_000)
        );
        for bad in [
            "2026-11-27",
            "2026-13-01T00:00:00Z",
            "2025-02-29T00:00:00Z",
            "2026-11-27T25:00:00Z",
            "2026-11-27T10:00:00+1",
            "yesterday",
            "2026-11-27T10:00:00.Z",
        ] {
            assert!(parse_datetime(bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn datetimes_with_non_ascii_text_are_refused_not_a_panic() {
        assert!(parse_datetime("2026-11-27T10:00:00+1é1").is_err());
        let valid = "2026-11-27T11:00:00.250+01:00";
        for c in ['é', '€', '𝟙', '\u{301}'] {
            for i in (0..=valid.len()).filter(|i| valid.is_char_boundary(*i)) {
                let mut s = valid.to_owned();
                s.insert(i, c);
                assert!(parse_datetime(&s).is_err(), "{s} accepted");
                let mut s = valid.to_owned();
                if i < valid.len() {
                    s.replace_range(i..i + 1, &c.to_string());
                    assert!(parse_datetime(&s).is_err(), "{s} accepted");
                }
            }
        }
    }

    #[test]
    fn reset_offsets_stay_within_the_log() {
        use ResetTarget::*;
        let r = |t, cur| reset_offset(t, cur, 10, 100, Some(42));
        assert_eq!(r(Earliest, Some(50)), Ok(10));
        assert_eq!(r(Latest, None), Ok(100));
        assert_eq!(r(Offset(5), None), Ok(10));
        assert_eq!(r(Offset(500), None), Ok(100));
        assert_eq!(r(Offset(60), None), Ok(60));
        assert_eq!(r(Datetime(0), None), Ok(42));
        assert_eq!(reset_offset(Datetime(0), None, 10, 100, None), Ok(100));
        assert_eq!(r(ShiftBy(-45), Some(50)), Ok(10));
        assert_eq!(r(ShiftBy(5), Some(50)), Ok(55));
        assert!(r(ShiftBy(5), None).is_err());
    }

    #[test]
    fn topic_selections_parse_like_kafkas() {
        assert_eq!(
            "orders".parse::<TopicSelection>(),
            Ok(TopicSelection {
                topic: "orders".into(),
                partitions: None
            })
        );
        assert_eq!(
            "orders:0,2".parse::<TopicSelection>().unwrap().partitions,
            Some(vec![0, 2])
        );
        assert!("orders:x".parse::<TopicSelection>().is_err());
        assert!("orders:-1".parse::<TopicSelection>().is_err());
        assert!(":1".parse::<TopicSelection>().is_err());
    }
}
