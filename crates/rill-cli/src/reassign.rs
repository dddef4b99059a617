//! `rill topic reassign` and `rill topic elect-leaders`: partition reassignment plans (explicit,
//! from a Kafka `kafka-reassign-partitions.sh` JSON file, or an even spread over the live
//! brokers), printed before anything is changed, and preferred-leader election.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use rill_protocol::client::ClusterClient;
use rill_protocol::proto::*;
use serde::{Deserialize, Serialize};

use crate::check;

/// Arguments of `rill topic reassign`.
#[derive(Args)]
pub struct ReassignArgs {
    /// Topics to plan for (--balance: all topics when omitted; --partition: exactly one).
    pub topics: Vec<String>,
    /// Partition to move (repeatable; pairs with --replicas in order).
    #[arg(long = "partition")]
    pub partitions: Vec<i32>,
    /// Target replicas of the matching --partition, comma-separated, preferred leader first.
    #[arg(long = "replicas")]
    pub replicas: Vec<String>,
    /// A plan in kafka-reassign-partitions.sh format:
    /// `{"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1,2,3]}]}`
    #[arg(long, value_name = "FILE")]
    pub plan: Option<std::path::PathBuf>,
    /// Spread every partition of the topics evenly over all live brokers, moving as few replicas
    /// as possible.
    #[arg(long)]
    pub balance: bool,
    /// Start the reassignment (without it the plan is only printed).
    #[arg(long)]
    pub execute: bool,
    /// Show reassignments in progress.
    #[arg(long, conflicts_with_all = ["plan", "balance", "execute", "cancel", "partitions", "replicas"])]
    pub list: bool,
    /// Cancel the reassignments in progress (of the topics given, or all).
    #[arg(long, conflicts_with_all = ["plan", "balance", "partitions", "replicas"])]
    pub cancel: bool,
}

/// A reassignment plan in Kafka's JSON format.
#[derive(Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    /// Always 1.
    pub version: i32,
    /// One entry per partition.
    pub partitions: Vec<PlanPartition>,
}

/// One partition of a [`Plan`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlanPartition {
    pub topic: String,
    /// Partition index, from 0.
    pub partition: i32,
    /// Replicas, preferred leader first.
    pub replicas: Vec<i32>,
}

fn parse_ids(s: &str) -> Result<Vec<i32>> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| {
            x.parse::<i32>()
                .with_context(|| format!("{x:?} in --replicas {s:?} is not a broker id"))
        })
        .collect()
}

/// Current replicas by (topic, partition), from broker metadata.
async fn current_assignment(
    client: &ClusterClient,
    topics: &[String],
) -> Result<BTreeMap<(String, i32), Vec<i32>>> {
    let md = client.refresh(topics).await?;
    let mut out = BTreeMap::new();
    for t in &md.topics {
        check(
            t.error_code,
            &t.error_message,
            &format!("describing {}", t.name),
        )?;
        for p in &t.partitions {
            out.insert((t.name.clone(), p.index), p.replicas.clone());
        }
    }
    Ok(out)
}

async fn live_brokers(client: &ClusterClient, patience: Duration) -> Result<Vec<i32>> {
    let c = client
        .admin(patience, |mut c| async move {
            c.describe_cluster(DescribeClusterRequest {}).await
        })
        .await?;
    Ok(c.brokers
        .iter()
        .filter(|b| !b.fenced)
        .map(|b| b.node_id)
        .collect())
}

/// An even spread of `current` (replicas per partition) over `brokers`, moving as few replicas
/// as possible: replicas on brokers outside `brokers` are replaced first, then one replica at a
/// time moves from the most to the least loaded broker until loads differ by at most one.
/// Replaced replicas keep their position, so preferred leaders move only when they must.
pub fn balance(
    current: &BTreeMap<(String, i32), Vec<i32>>,
    brokers: &[i32],
) -> Result<BTreeMap<(String, i32), Vec<i32>>> {
    if brokers.is_empty() {
        bail!("no live brokers to spread the replicas over");
    }
    let live: BTreeSet<i32> = brokers.iter().copied().collect();
    let mut load: BTreeMap<i32, usize> = live.iter().map(|b| (*b, 0)).collect();
    let mut out = current.clone();
    for ((t, p), replicas) in &out {
        if replicas.len() > live.len() {
            bail!(
                "{t}-{p} has {} replicas but only {} broker(s) are live",
                replicas.len(),
                live.len()
            );
        }
        for r in replicas {
            if let Some(n) = load.get_mut(r) {
                *n += 1;
            }
        }
    }
    // Replicas on brokers that are gone or fenced go to the least loaded live broker.
    for replicas in out.values_mut() {
        for i in 0..replicas.len() {
            if live.contains(&replicas[i]) {
                continue;
            }
            let to = *load
                .iter()
                .filter(|(b, _)| !replicas.contains(b))
                .min_by_key(|(b, n)| (**n, **b))
                .map(|(b, _)| b)
                .context("no live broker left for a replica")?;
            replicas[i] = to;
            *load.entry(to).or_default() += 1;
        }
    }
    // Then level the loads, one replica at a time.
    loop {
        let mut by_load: Vec<(i32, usize)> = load.iter().map(|(b, n)| (*b, *n)).collect();
        by_load.sort_by_key(|(b, n)| (std::cmp::Reverse(*n), *b));
        let mut moved = false;
        'pairs: for (from, n_from) in &by_load {
            for (to, n_to) in by_load.iter().rev() {
                if n_from <= &(n_to + 1) {
                    break;
                }
                // Prefer a partition where `from` is not the preferred leader.
                let candidate = out
                    .values_mut()
                    .filter(|r| r.contains(from) && !r.contains(to))
                    .min_by_key(|r| r.first() == Some(from));
                if let Some(replicas) = candidate {
                    for r in replicas.iter_mut() {
                        if r == from {
                            *r = *to;
                        }
                    }
                    *load.entry(*from).or_default() -= 1;
                    *load.entry(*to).or_default() += 1;
                    moved = true;
                    break 'pairs;
                }
            }
        }
        if !moved {
            break;
        }
    }
    Ok(out)
}

fn plan_json(entries: &BTreeMap<(String, i32), Vec<i32>>) -> Result<String> {
    let plan = Plan {
        version: 1,
        partitions: entries
            .iter()
            .map(|((topic, partition), replicas)| PlanPartition {
                topic: topic.clone(),
                partition: *partition,
                replicas: replicas.clone(),
            })
            .collect(),
    };
    Ok(serde_json::to_string(&plan)?)
}

/// Runs `rill topic reassign`.
pub async fn run(client: &ClusterClient, patience: Duration, args: ReassignArgs) -> Result<()> {
    if args.list {
        return list(client, patience, &args.topics).await;
    }
    if args.cancel {
        return cancel(client, patience, &args.topics).await;
    }
    let explicit = !args.partitions.is_empty() || !args.replicas.is_empty();
    let modes = [explicit, args.plan.is_some(), args.balance]
        .iter()
        .filter(|m| **m)
        .count();
    if modes != 1 {
        bail!(
            "say what to move with exactly one of: --partition N --replicas IDS (repeatable), --plan FILE, --balance (or --list / --cancel)"
        );
    }
    let mut proposed: BTreeMap<(String, i32), Vec<i32>> = BTreeMap::new();
    if explicit {
        let [topic] = args.topics.as_slice() else {
            bail!(
                "--partition/--replicas need exactly one topic: rill topic reassign TOPIC --partition 0 --replicas 1,2,3"
            );
        };
        if args.partitions.len() != args.replicas.len() {
            bail!(
                "{} --partition but {} --replicas: give one --replicas per --partition",
                args.partitions.len(),
                args.replicas.len()
            );
        }
        for (p, r) in args.partitions.iter().zip(&args.replicas) {
            if proposed
                .insert((topic.clone(), *p), parse_ids(r)?)
                .is_some()
            {
                bail!("partition {p} is given twice");
            }
        }
    } else if let Some(path) = &args.plan {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the plan {}", path.display()))?;
        let plan: Plan = serde_json::from_str(&text)
            .with_context(|| format!("{} is not a reassignment plan ({{\"version\":1,\"partitions\":[{{\"topic\":\"t\",\"partition\":0,\"replicas\":[1,2,3]}}]}})", path.display()))?;
        for p in plan.partitions {
            if proposed
                .insert((p.topic.clone(), p.partition), p.replicas)
                .is_some()
            {
                bail!("{}-{} appears twice in the plan", p.topic, p.partition);
            }
        }
    }
    let topics: Vec<String> = if args.balance {
        args.topics.clone()
    } else {
        proposed
            .keys()
            .map(|(t, _)| t.clone())
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect()
    };
    let current = current_assignment(client, &topics).await?;
    if args.balance {
        let brokers = live_brokers(client, patience).await?;
        proposed = balance(&current, &brokers)?;
    }
    for (t, p) in proposed.keys() {
        if !current.contains_key(&(t.clone(), *p)) {
            bail!("partition {t}-{p} does not exist");
        }
    }
    let moves: BTreeMap<(String, i32), Vec<i32>> = proposed
        .into_iter()
        .filter(|(k, v)| current.get(k) != Some(v))
        .collect();
    if moves.is_empty() {
        println!("Nothing to move: every partition already has the proposed replicas.");
        return Ok(());
    }
    let before: BTreeMap<(String, i32), Vec<i32>> = moves
        .keys()
        .filter_map(|k| Some((k.clone(), current.get(k)?.clone())))
        .collect();
    println!("Current partition replica assignment (keep it to roll back with --plan):");
    println!("{}", plan_json(&before)?);
    println!();
    println!("Proposed partition reassignment:");
    for ((t, p), r) in &moves {
        println!("\t{t}-{p}: {:?} -> {r:?}", before[&(t.clone(), *p)]);
    }
    println!("{}", plan_json(&moves)?);
    if !args.execute {
        println!();
        println!("Dry run: nothing was changed. Add --execute to start this reassignment.");
        return Ok(());
    }
    let mut by_topic: BTreeMap<String, Vec<ReassignablePartition>> = BTreeMap::new();
    for ((t, p), r) in &moves {
        by_topic
            .entry(t.clone())
            .or_default()
            .push(ReassignablePartition {
                index: *p,
                replicas: Some(IsrList { ids: r.clone() }),
            });
    }
    let request = AlterPartitionReassignmentsRequest {
        topics: by_topic
            .into_iter()
            .map(|(name, partitions)| ReassignableTopic { name, partitions })
            .collect(),
    };
    let r = client
        .admin(patience, |mut c| {
            let request = request.clone();
            async move { c.alter_partition_reassignments(request).await }
        })
        .await?;
    check(r.error_code, &r.error_message, "reassigning")?;
    println!();
    println!(
        "Started the reassignment of {} partition(s); new replicas catch up first, then the old ones are removed. `rill topic reassign --list` shows progress.",
        moves.len()
    );
    Ok(())
}

async fn ongoing(
    client: &ClusterClient,
    patience: Duration,
    topics: &[String],
) -> Result<ListPartitionReassignmentsResponse> {
    Ok(client
        .admin(patience, |mut c| {
            let topics = topics.to_vec();
            async move {
                c.list_partition_reassignments(ListPartitionReassignmentsRequest { topics })
                    .await
            }
        })
        .await?)
}

async fn list(client: &ClusterClient, patience: Duration, topics: &[String]) -> Result<()> {
    let r = ongoing(client, patience, topics).await?;
    if r.topics.is_empty() {
        println!("No reassignment in progress.");
    }
    for t in &r.topics {
        for p in &t.partitions {
            println!(
                "{}-{}\tReplicas: {:?}\tAdding: {:?}\tRemoving: {:?}\tIsr: {:?}\tLeader: {}",
                t.name,
                p.index,
                p.replicas,
                p.adding_replicas,
                p.removing_replicas,
                p.isr,
                p.leader
            );
        }
    }
    Ok(())
}

async fn cancel(client: &ClusterClient, patience: Duration, topics: &[String]) -> Result<()> {
    let r = ongoing(client, patience, topics).await?;
    if r.topics.is_empty() {
        println!("No reassignment in progress; nothing to cancel.");
        return Ok(());
    }
    let request = AlterPartitionReassignmentsRequest {
        topics: r
            .topics
            .iter()
            .map(|t| ReassignableTopic {
                name: t.name.clone(),
                partitions: t
                    .partitions
                    .iter()
                    .map(|p| ReassignablePartition {
                        index: p.index,
                        replicas: None,
                    })
                    .collect(),
            })
            .collect(),
    };
    let n: usize = request.topics.iter().map(|t| t.partitions.len()).sum();
    let r = client
        .admin(patience, |mut c| {
            let request = request.clone();
            async move { c.alter_partition_reassignments(request).await }
        })
        .await?;
    check(r.error_code, &r.error_message, "cancelling")?;
    println!("Cancelled the reassignment of {n} partition(s).");
    Ok(())
}

/// Runs `rill topic elect-leaders [TOPIC] [--partition N]...`.
pub async fn elect_leaders(
    client: &ClusterClient,
    patience: Duration,
    topic: Option<String>,
    partitions: Vec<i32>,
) -> Result<()> {
    let topics = match topic {
        Some(name) => vec![ElectLeadersTopic { name, partitions }],
        None if partitions.is_empty() => Vec::new(),
        None => bail!("--partition needs a topic: rill topic elect-leaders TOPIC --partition N"),
    };
    let r = client
        .admin(patience, |mut c| {
            let topics = topics.clone();
            async move { c.elect_leaders(ElectLeadersRequest { topics }).await }
        })
        .await?;
    let mut failed = 0;
    let mut elected = 0;
    for t in &r.topics {
        for p in &t.partitions {
            if p.error_code != 0 {
                failed += 1;
                let name = rill_protocol::ErrorCode::try_from(p.error_code)
                    .map(|c| c.as_kafka_name())
                    .unwrap_or("UNKNOWN");
                let what = if p.index < 0 {
                    t.name.clone()
                } else {
                    format!("{}-{}", t.name, p.index)
                };
                println!("{what}\t{name}: {}", p.error_message);
            } else if p.election_not_needed {
                println!(
                    "{}-{}\talready led by its preferred replica {}",
                    t.name, p.index, p.leader
                );
            } else {
                elected += 1;
                println!(
                    "{}-{}\tleader is now the preferred replica {}",
                    t.name, p.index, p.leader
                );
            }
        }
    }
    if failed > 0 {
        bail!("{failed} partition(s) could not get their preferred leader ({elected} moved)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment(parts: &[&[i32]]) -> BTreeMap<(String, i32), Vec<i32>> {
        parts
            .iter()
            .enumerate()
            .map(|(i, r)| (("t".to_owned(), i as i32), r.to_vec()))
            .collect()
    }

    fn loads(a: &BTreeMap<(String, i32), Vec<i32>>) -> BTreeMap<i32, usize> {
        let mut out = BTreeMap::new();
        for r in a.values() {
            for b in r {
                *out.entry(*b).or_default() += 1;
            }
        }
        out
    }

    fn moved(
        a: &BTreeMap<(String, i32), Vec<i32>>,
        b: &BTreeMap<(String, i32), Vec<i32>>,
    ) -> usize {
        a.iter()
            .map(|(k, r)| r.iter().filter(|x| !b[k].contains(x)).count())
            .sum()
    }

    #[test]
    fn balance_spreads_evenly_and_moves_little() {
        // 3 brokers, RF 2, 6 partitions; broker 4 joins empty.
        let current = assignment(&[&[1, 2], &[2, 3], &[3, 1], &[1, 2], &[2, 3], &[3, 1]]);
        let out = balance(&current, &[1, 2, 3, 4]).unwrap();
        let l = loads(&out);
        assert_eq!(l.len(), 4);
        assert!(
            l.values().max().unwrap() - l.values().min().unwrap() <= 1,
            "{l:?}"
        );
        // 12 replicas over 4 brokers: broker 4 takes 3, so exactly 3 move.
        assert_eq!(moved(&current, &out), 3);
        for r in out.values() {
            assert_eq!(
                r.iter().collect::<BTreeSet<_>>().len(),
                r.len(),
                "no duplicates"
            );
        }
        // Already balanced: nothing moves.
        assert_eq!(balance(&out, &[1, 2, 3, 4]).unwrap(), out);
    }

    #[test]
    fn balance_replaces_replicas_on_brokers_that_are_gone() {
        let current = assignment(&[&[1, 9], &[9, 2]]);
        let out = balance(&current, &[1, 2, 3]).unwrap();
        assert!(out.values().all(|r| !r.contains(&9)), "{out:?}");
        assert_eq!(
            out[&("t".to_owned(), 0)][0],
            1,
            "kept replicas keep their place"
        );
        assert!(balance(&assignment(&[&[1, 2, 3]]), &[1, 2]).is_err());
        assert!(balance(&current, &[]).is_err());
    }

    #[test]
    fn plans_read_kafka_json() {
        let plan: Plan = serde_json::from_str(
            r#"{"version":1,"partitions":[{"topic":"t","partition":0,"replicas":[1,2,3]}]}"#,
        )
        .unwrap();
        assert_eq!(plan.partitions[0].replicas, [1, 2, 3]);
        assert!(parse_ids("1, 2,x").is_err());
        assert_eq!(parse_ids("3,1").unwrap(), [3, 1]);
    }
}
