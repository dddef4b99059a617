//! `rill group`: consumer groups — list, describe (members, assignments, lag), delete, and
//! reset committed offsets (Kafka's `kafka-consumer-groups.sh`).

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::{ArgGroup, Args, Subcommand};
use rill_consumer::admin::{
    GroupAdmin, ResetPlanEntry, ResetTarget, TopicSelection, parse_datetime,
};
use rill_protocol::proto::TopicPartitions;

#[derive(Subcommand)]
pub enum GroupCmd {
    /// Consumer groups of the cluster, one per line (every broker lists those it coordinates).
    List {
        /// Show each group's state and coordinator too.
        #[arg(long)]
        state: bool,
    },
    /// A group's state, epochs, assignor and members with their partitions, and its lag per
    /// partition (committed offset, log end offset, lag) with the total.
    Describe {
        /// The group id.
        group: String,
    },
    /// Delete groups and their committed offsets (only groups without members).
    Delete {
        /// Group ids.
        #[arg(required = true)]
        groups: Vec<String>,
    },
    /// Move a group's committed offsets (only while the group has no members): prints the plan,
    /// and commits it only with --execute.
    ResetOffsets(ResetArgs),
}

#[derive(Args)]
#[command(group(
    ArgGroup::new("target")
        .required(true)
        .args(["to_earliest", "to_latest", "to_offset", "to_datetime", "shift_by"])
))]
#[command(group(ArgGroup::new("topics").required(true).args(["topic", "all_topics"])))]
pub struct ResetArgs {
    /// The group id.
    group: String,
    /// A topic (every partition) or topic:0,1,2 (those partitions); repeatable.
    #[arg(long)]
    topic: Vec<String>,
    /// Every topic the group has committed offsets for.
    #[arg(long)]
    all_topics: bool,
    /// To the log start offset.
    #[arg(long)]
    to_earliest: bool,
    /// To the log end offset (skip everything not consumed yet).
    #[arg(long)]
    to_latest: bool,
    /// To this offset (kept within the log).
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    to_offset: Option<i64>,
    /// To the first record at or after this time, e.g. 2026-11-27T10:00:00Z (no zone: UTC).
    #[arg(long, value_name = "DATETIME")]
    to_datetime: Option<String>,
    /// Move the committed offsets by N (negative: back), kept within the log.
    #[arg(long, value_name = "N", allow_negative_numbers = true)]
    shift_by: Option<i64>,
    /// Commit the new offsets (without it, only the plan is printed).
    #[arg(long)]
    execute: bool,
}

/// Left-aligned columns, as kafka-consumer-groups.sh prints them.
fn print_table(header: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let n = cells.len();
        let mut s = String::new();
        for (i, (c, w)) in cells.into_iter().zip(&widths).enumerate() {
            if i + 1 == n {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
}

/// `t(0,1) u(2)`, as Kafka shows assignments.
fn show_assignment(list: &[TopicPartitions]) -> String {
    if list.is_empty() {
        return "-".into();
    }
    list.iter()
        .map(|t| {
            let ps: Vec<String> = t.partitions.iter().map(i32::to_string).collect();
            format!("{}({})", t.topic, ps.join(","))
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn or_dash(v: Option<impl ToString>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}

/// The reset target the flags ask for.
fn reset_target(args: &ResetArgs) -> Result<ResetTarget> {
    Ok(if args.to_earliest {
        ResetTarget::Earliest
    } else if args.to_latest {
        ResetTarget::Latest
    } else if let Some(n) = args.to_offset {
        if n < 0 {
            bail!("--to-offset {n}: an offset is 0 or more");
        }
        ResetTarget::Offset(n)
    } else if let Some(t) = &args.to_datetime {
        ResetTarget::Datetime(parse_datetime(t).map_err(anyhow::Error::msg)?)
    } else if let Some(n) = args.shift_by {
        ResetTarget::ShiftBy(n)
    } else {
        bail!("say where to: --to-earliest, --to-latest, --to-offset, --to-datetime or --shift-by");
    })
}

pub async fn run(servers: &[String], cmd: GroupCmd) -> Result<()> {
    let admin = GroupAdmin::new(servers, Duration::from_secs(30))?;
    match cmd {
        GroupCmd::List { state } => {
            let listed = admin.list_groups(&[]).await?;
            if state {
                let rows: Vec<Vec<String>> = listed
                    .groups
                    .iter()
                    .map(|g| {
                        vec![
                            g.group_id.clone(),
                            g.state.clone(),
                            g.coordinator_id.to_string(),
                        ]
                    })
                    .collect();
                print_table(&["GROUP", "STATE", "COORDINATOR"], &rows);
            } else {
                for g in &listed.groups {
                    println!("{}", g.group_id);
                }
            }
            if !listed.errors.is_empty() {
                let why: Vec<String> = listed
                    .errors
                    .iter()
                    .map(|(b, e)| format!("broker {b}: {e}"))
                    .collect();
                bail!("not every broker listed its groups ({})", why.join("; "));
            }
        }
        GroupCmd::Describe { group } => describe(&admin, &group).await?,
        GroupCmd::Delete { groups } => {
            let mut failed = Vec::new();
            for (g, r) in admin.delete_groups(&groups).await {
                match r {
                    Ok(()) => println!("deleted group {g}"),
                    Err(e) => failed.push(e.to_string()),
                }
            }
            if !failed.is_empty() {
                bail!("{}", failed.join("; "));
            }
        }
        GroupCmd::ResetOffsets(args) => reset_offsets(&admin, args).await?,
    }
    Ok(())
}

async fn describe(admin: &GroupAdmin, group: &str) -> Result<()> {
    let d = admin.describe_group(group).await?;
    let g = &d.group;
    println!(
        "Group: {}\tState: {}\tGroup epoch: {}\tAssignment epoch: {}\tAssignor: {}\tCoordinator: {} ({})",
        g.group_id,
        g.group_state,
        g.group_epoch,
        g.assignment_epoch,
        if g.assignor_name.is_empty() {
            "-"
        } else {
            &g.assignor_name
        },
        d.coordinator.node_id,
        d.coordinator.address
    );
    println!();
    if g.members.is_empty() {
        println!("The group has no members.");
    } else {
        let rows: Vec<Vec<String>> = g
            .members
            .iter()
            .map(|m| {
                vec![
                    m.member_id.clone(),
                    or_dash(m.instance_id.as_ref()),
                    m.client_id.clone(),
                    m.client_host.clone(),
                    m.member_epoch.to_string(),
                    m.member_state.clone(),
                    show_assignment(&m.assignment),
                    show_assignment(&m.target_assignment),
                ]
            })
            .collect();
        print_table(
            &[
                "MEMBER-ID",
                "INSTANCE-ID",
                "CLIENT-ID",
                "HOST",
                "EPOCH",
                "STATE",
                "ASSIGNMENT",
                "TARGET-ASSIGNMENT",
            ],
            &rows,
        );
    }
    println!();
    let lag = admin.lag(&d).await?;
    if lag.partitions.is_empty() {
        println!("The group has no committed offsets and owns no partitions.");
        return Ok(());
    }
    let rows: Vec<Vec<String>> = lag
        .partitions
        .iter()
        .map(|p| {
            let owner = p.owner.as_ref();
            vec![
                p.partition.topic.clone(),
                p.partition.partition.to_string(),
                or_dash(p.committed),
                or_dash(p.log_end),
                or_dash(p.lag),
                or_dash(owner.map(|o| o.member_id.as_str())),
                or_dash(owner.map(|o| o.client_host.as_str())),
                or_dash(owner.map(|o| o.client_id.as_str())),
            ]
        })
        .collect();
    print_table(
        &[
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "LOG-END-OFFSET",
            "LAG",
            "CONSUMER-ID",
            "HOST",
            "CLIENT-ID",
        ],
        &rows,
    );
    println!();
    println!("Total lag: {}", lag.total);
    for p in lag.partitions.iter().filter(|p| p.error.is_some()) {
        if let Some(e) = &p.error {
            eprintln!("warning: no log end offset for {}: {e}", p.partition);
        }
    }
    Ok(())
}

async fn reset_offsets(admin: &GroupAdmin, args: ResetArgs) -> Result<()> {
    let target = reset_target(&args)?;
    let mut selections = args
        .topic
        .iter()
        .map(|t| t.parse::<TopicSelection>().map_err(anyhow::Error::msg))
        .collect::<Result<Vec<_>>>()?;
    if args.all_topics {
        let committed = admin.committed_offsets(&args.group, &[]).await?;
        let topics: BTreeSet<String> = committed.keys().map(|tp| tp.topic.clone()).collect();
        if topics.is_empty() {
            bail!(
                "group {} has no committed offsets: name the topics with --topic",
                args.group
            );
        }
        selections.extend(topics.into_iter().map(|topic| TopicSelection {
            topic,
            partitions: None,
        }));
    }
    let plan = admin.plan_reset(&args.group, &selections, target).await?;
    print_plan(&args.group, &plan);
    if args.execute {
        admin.apply_reset(&args.group, &plan).await?;
        println!();
        println!(
            "committed the new offsets of group {} for {} partitions",
            args.group,
            plan.len()
        );
    } else {
        eprintln!("dry run: nothing changed; add --execute to commit these offsets");
    }
    Ok(())
}

fn print_plan(group: &str, plan: &[ResetPlanEntry]) {
    let rows: Vec<Vec<String>> = plan
        .iter()
        .map(|e| {
            vec![
                group.to_owned(),
                e.partition.topic.clone(),
                e.partition.partition.to_string(),
                or_dash(e.current),
                e.new_offset.to_string(),
            ]
        })
        .collect();
    print_table(
        &[
            "GROUP",
            "TOPIC",
            "PARTITION",
            "CURRENT-OFFSET",
            "NEW-OFFSET",
        ],
        &rows,
    );
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        cmd: GroupCmd,
    }

    fn parse(args: &[&str]) -> Result<GroupCmd, clap::Error> {
        Cli::try_parse_from(std::iter::once("group").chain(args.iter().copied())).map(|c| c.cmd)
    }

    #[test]
    fn reset_offsets_needs_exactly_one_target_and_some_topics() {
        let Ok(GroupCmd::ResetOffsets(a)) =
            parse(&["reset-offsets", "g", "--topic", "t:0,1", "--to-offset", "5"])
        else {
            panic!("not parsed");
        };
        assert_eq!(reset_target(&a).unwrap(), ResetTarget::Offset(5));
        assert!(!a.execute);
        let Ok(GroupCmd::ResetOffsets(a)) = parse(&[
            "reset-offsets",
            "g",
            "--all-topics",
            "--shift-by",
            "-3",
            "--execute",
        ]) else {
            panic!("not parsed");
        };
        assert_eq!(reset_target(&a).unwrap(), ResetTarget::ShiftBy(-3));
        let Ok(GroupCmd::ResetOffsets(a)) = parse(&[
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "2026-11-27T10:00:00Z",
        ]) else {
            panic!("not parsed");
        };
        assert_eq!(
            reset_target(&a).unwrap(),
            ResetTarget::Datetime(1_795_773_600_000)
        );
        for bad in [
            &["reset-offsets", "g", "--topic", "t"][..],
            &["reset-offsets", "g", "--to-earliest"],
            &[
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--to-earliest",
                "--to-latest",
            ],
            &[
                "reset-offsets",
                "g",
                "--topic",
                "t",
                "--all-topics",
                "--to-latest",
            ],
            &["delete"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} accepted");
        }
        let Ok(GroupCmd::ResetOffsets(a)) = parse(&[
            "reset-offsets",
            "g",
            "--topic",
            "t",
            "--to-datetime",
            "tomorrow",
        ]) else {
            panic!("not parsed");
        };
        assert!(
            reset_target(&a)
                .unwrap_err()
                .to_string()
                .contains("2026-11-27T10:00:00Z")
        );
        let Ok(GroupCmd::ResetOffsets(a)) =
            parse(&["reset-offsets", "g", "--topic", "t", "--to-offset", "-1"])
        else {
            panic!("not parsed");
        };
        assert!(reset_target(&a).is_err());
    }

    #[test]
    fn assignments_show_as_kafka_shows_them() {
        let list = vec![
            TopicPartitions {
                topic: "t".into(),
                partitions: vec![0, 1],
            },
            TopicPartitions {
                topic: "u".into(),
                partitions: vec![2],
            },
        ];
        assert_eq!(show_assignment(&list), "t(0,1) u(2)");
        assert_eq!(show_assignment(&[]), "-");
    }
}
