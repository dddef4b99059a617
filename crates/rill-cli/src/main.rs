//! `rill`: manage topics, inspect the cluster, produce and consume from the shell, and measure
//! throughput and latency (`rill perf`). Errors print one line and exit non-zero.

mod fsync_limit;
mod group;
mod perf;
mod plot;
mod reassign;
mod workload;

use std::io::{BufRead, Write};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use rill_consumer::{
    Consumer, ConsumerConfig, ConsumerRecord, NoOpRebalanceListener, OffsetReset, TopicPartition,
};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};
use rill_protocol::client::ClusterClient;
use rill_protocol::proto::*;
use rill_protocol::record_batch::Compression;

/// mimalloc keeps freed fetch buffers for reuse across threads; glibc's malloc gave them back
/// and page-faulted zeroed memory in for the next ones (a third of the consumer's CPU with two
/// fetches in flight).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "rill", version, about = "rill command-line tool")]
struct Cli {
    /// Broker address(es) to bootstrap from, comma-separated.
    #[arg(
        long,
        global = true,
        env = "RILL_BOOTSTRAP",
        default_value = "127.0.0.1:9092"
    )]
    bootstrap: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create, list, describe, delete and configure topics.
    #[command(subcommand)]
    Topic(TopicCmd),
    /// Brokers, controllers and the quorum leader.
    #[command(subcommand)]
    Cluster(ClusterCmd),
    /// Send lines from stdin as records.
    Produce(ProduceArgs),
    /// Print the records of a topic, one per line (as a consumer group member with --group).
    Consume(ConsumeArgs),
    /// Consumer groups: list, describe (members, lag), delete, reset offsets.
    #[command(subcommand)]
    Group(group::GroupCmd),
    /// Throughput and latency tests.
    #[command(subcommand)]
    Perf(perf::PerfCmd),
}

#[derive(Subcommand)]
enum TopicCmd {
    /// Create a topic.
    Create {
        /// Topic name: ASCII letters, digits, '.', '_' and '-'.
        name: String,
        /// Partitions (default: the cluster's num.partitions).
        #[arg(long, short)]
        partitions: Option<i32>,
        /// Replication factor (default: the cluster's default.replication.factor).
        #[arg(long, short = 'r')]
        replication_factor: Option<i32>,
        /// Topic config, name=value (repeatable).
        #[arg(long = "config", short = 'c')]
        configs: Vec<String>,
    },
    /// Names of all topics, one per line.
    List,
    /// Partitions, leaders, replicas and configs of topics.
    Describe {
        /// Topics (all when omitted).
        names: Vec<String>,
        /// Every topic config with its value as the brokers apply it, marked `override`,
        /// `broker default` (a broker's own `log.*` setting) or `default`, not only the
        /// overrides.
        #[arg(long)]
        all_configs: bool,
    },
    /// Delete topics and all their data.
    Delete {
        /// Topics to delete.
        names: Vec<String>,
    },
    /// Set or remove topic configs.
    AlterConfig {
        /// Topic whose configs change.
        name: String,
        /// name=value to set (repeatable).
        #[arg(long)]
        set: Vec<String>,
        /// Name to reset to the default (repeatable).
        #[arg(long)]
        delete: Vec<String>,
    },
    /// Move partitions to other brokers (Kafka's kafka-reassign-partitions.sh): prints the
    /// plan, and starts it only with --execute.
    Reassign(reassign::ReassignArgs),
    /// Give leadership back to each partition's preferred (first) replica, where it is live and
    /// in sync.
    ElectLeaders {
        /// Topic (every topic when omitted).
        topic: Option<String>,
        /// Only this partition (repeatable; all partitions of the topic when omitted).
        #[arg(long = "partition")]
        partitions: Vec<i32>,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Brokers, controllers and the active controller.
    Describe,
    /// Set or remove cluster-wide broker configs (the replication throttles
    /// leader.replication.throttled.rate and follower.replication.throttled.rate, bytes/s).
    AlterConfig {
        /// name=value to set (repeatable).
        #[arg(long)]
        set: Vec<String>,
        /// Name to remove (no limit) (repeatable).
        #[arg(long)]
        delete: Vec<String>,
    },
}

#[derive(Args)]
struct ProduceArgs {
    /// Topic to write to (it must exist).
    topic: String,
    /// Split each line into key and value at the first occurrence of this separator.
    #[arg(long)]
    key_separator: Option<String>,
    /// acks: 0, 1 or all.
    #[arg(long, default_value = "all")]
    acks: String,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long, default_value = "none")]
    compression: String,
    /// A key or value equal to this string is sent as null (Kafka's `null.marker`). A null value
    /// is a tombstone: compaction removes its key.
    #[arg(long, value_name = "STR")]
    null_marker: Option<String>,
}

#[derive(Args)]
struct ConsumeArgs {
    /// Topic to read (it must exist).
    topic: String,
    /// Start at the beginning of the log (default: only new records). With --group: where
    /// partitions without a committed offset start (auto.offset.reset=earliest).
    #[arg(long)]
    from_beginning: bool,
    /// Start at this offset (with --partition, or in every partition). Not with --group.
    #[arg(long)]
    offset: Option<i64>,
    /// Only this partition. Not with --group.
    #[arg(long)]
    partition: Option<i32>,
    /// Consume as a member of this consumer group: the group's coordinator assigns the
    /// partitions, each starts at the group's committed offset, and positions are committed as
    /// records are printed and on exit (Ctrl-C included).
    #[arg(long, value_name = "GROUP")]
    group: Option<String>,
    /// Stop after this many records.
    #[arg(long)]
    max_messages: Option<usize>,
    /// Stop once no record has arrived for this long (ms), counting from the start and then
    /// from the last record; runs until interrupted when omitted. Every wait counts, finding the
    /// topic's partitions and offsets included.
    #[arg(long)]
    timeout_ms: Option<u64>,
    /// Print keys (key, a tab, then the value).
    #[arg(long)]
    print_key: bool,
    /// How a null key or null value (a tombstone) is printed, to tell it apart from any text.
    #[arg(long, value_name = "STR", default_value = NULL_SHOWN_AS)]
    null_marker: String,
    /// Print timestamps and partition/offset.
    #[arg(long)]
    print_timestamp: bool,
    /// With --group: print every change of this member's partitions to stderr, one line each:
    /// `rebalance<TAB>assigned|revoked|lost<TAB>unix time in µs<TAB>topic-partition,...`.
    #[arg(long, requires = "group")]
    print_rebalances: bool,
}

/// Prints a member's rebalance callbacks to stderr (`--print-rebalances`).
struct PrintRebalances;

impl PrintRebalances {
    fn print(event: &str, partitions: &[TopicPartition]) {
        let micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_micros());
        let list: Vec<String> = partitions.iter().map(|tp| tp.to_string()).collect();
        eprintln!("rebalance\t{event}\t{micros}\t{}", list.join(","));
    }
}

impl rill_consumer::ConsumerRebalanceListener for PrintRebalances {
    fn on_partitions_revoked(&mut self, partitions: &[TopicPartition]) {
        Self::print("revoked", partitions);
    }
    fn on_partitions_assigned(&mut self, partitions: &[TopicPartition]) {
        Self::print("assigned", partitions);
    }
    fn on_partitions_lost(&mut self, partitions: &[TopicPartition]) {
        Self::print("lost", partitions);
    }
}

/// How `rill consume` prints a null key or value unless `--null-marker` says otherwise: Kafka's
/// console consumer prints `null`, which a record whose value is the text "null" also prints.
const NULL_SHOWN_AS: &str = "<null>";

fn main() {
    let cli = Cli::parse();
    // The clients' own logs (retries, metadata refreshes), on stderr and only when asked for
    // with RUST_LOG (e.g. `RUST_LOG=rill_producer=debug`): the CLI's output stays its own.
    if let Ok(filter) = tracing_subscriber::EnvFilter::try_from_default_env() {
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init();
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = runtime.block_on(run(cli)) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn bootstrap(s: &str) -> Vec<String> {
    s.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect()
}

pub(crate) fn check(code: i32, message: &str, what: &str) -> Result<()> {
    if code != 0 {
        let name = rill_protocol::ErrorCode::try_from(code)
            .map(|c| c.as_kafka_name())
            .unwrap_or("UNKNOWN");
        bail!("{what}: {name}: {message}");
    }
    Ok(())
}

pub(crate) fn parse_kv(s: &str) -> Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .with_context(|| format!("{s:?} is not name=value"))?;
    Ok((k.trim().to_owned(), v.trim().to_owned()))
}

/// The IncrementalAlterConfigs operations for `--set name=value` and `--delete name`.
fn config_changes(set: &[String], delete: &[String]) -> Result<Vec<AlterableConfig>> {
    let mut configs = Vec::new();
    for s in set {
        let (k, v) = parse_kv(s)?;
        configs.push(AlterableConfig {
            name: k,
            operation: ConfigOperation::Set as i32,
            value: Some(v),
        });
    }
    for d in delete {
        configs.push(AlterableConfig {
            name: d.clone(),
            operation: ConfigOperation::Delete as i32,
            value: None,
        });
    }
    if configs.is_empty() {
        bail!("nothing to change: give --set name=value or --delete name");
    }
    Ok(configs)
}

/// Sends one IncrementalAlterConfigs for `resource` to the active controller.
async fn alter_configs(
    client: &ClusterClient,
    patience: Duration,
    resource: AlterConfigsResource,
    what: &str,
) -> Result<()> {
    let r = client
        .admin(patience, |mut c| {
            let resource = resource.clone();
            async move {
                c.incremental_alter_configs(IncrementalAlterConfigsRequest {
                    resources: vec![resource],
                    validate_only: false,
                })
                .await
            }
        })
        .await?;
    check(r.results[0].error_code, &r.results[0].error_message, what)
}

/// The configs of `topics` as a broker applies them (its own `log.*` defaults included, which
/// the controllers do not know), asked of the unfenced brokers of `metadata` in turn while one
/// cannot be reached; from the controllers (built-in defaults only) when the brokers predate
/// `Broker.DescribeConfigs`.
async fn describe_configs(
    client: &ClusterClient,
    metadata: &MetadataResponse,
    topics: &[String],
    patience: Duration,
) -> Result<DescribeConfigsResponse> {
    let request = DescribeConfigsRequest {
        topics: topics.to_vec(),
    };
    let mut last = None;
    for b in metadata.brokers.iter().filter(|b| !b.fenced) {
        let answer = match client.broker(b.node_id) {
            Ok(mut c) => c.describe_configs(request.clone()).await,
            Err(e) => Err(tonic::Status::from(e)),
        };
        match answer {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) if s.code() == tonic::Code::Unimplemented => {
                let r = client
                    .admin(patience, |mut c| {
                        let request = request.clone();
                        async move { c.describe_configs(request).await }
                    })
                    .await?;
                return Ok(r);
            }
            // Not reached (another broker may be): try the next. Anything else came from the
            // controllers, which every broker would ask the same.
            Err(s) if s.code() == tonic::Code::Unavailable => {
                last = Some(anyhow::anyhow!("broker {}: {}", b.node_id, s.message()));
            }
            Err(s) => {
                return Err(anyhow::Error::from(rill_protocol::ApiError::from(s)))
                    .context("describing topic configs");
            }
        }
    }
    Err(last
        .unwrap_or_else(|| anyhow::anyhow!("no unfenced broker in the cluster metadata"))
        .context("describing topic configs"))
}

async fn run(cli: Cli) -> Result<()> {
    let servers = bootstrap(&cli.bootstrap);
    let admin = || ClusterClient::new(&servers, Duration::from_secs(30));
    let patience = Duration::from_secs(15);
    match cli.command {
        Command::Topic(cmd) => {
            let client = admin()?;
            match cmd {
                TopicCmd::Create {
                    name,
                    partitions,
                    replication_factor,
                    configs,
                } => {
                    let configs = configs
                        .iter()
                        .map(|c| {
                            parse_kv(c).map(|(name, value)| ConfigEntry {
                                name,
                                value: Some(value),
                            })
                        })
                        .collect::<Result<Vec<_>>>()?;
                    let topic = CreatableTopic {
                        name: name.clone(),
                        num_partitions: partitions.unwrap_or(-1),
                        replication_factor: replication_factor.unwrap_or(-1),
                        configs,
                    };
                    let r = client
                        .admin(patience, |mut c| {
                            let topic = topic.clone();
                            async move {
                                c.create_topics(CreateTopicsRequest {
                                    topics: vec![topic],
                                    validate_only: false,
                                })
                                .await
                            }
                        })
                        .await?;
                    let t = &r.topics[0];
                    check(t.error_code, &t.error_message, &format!("creating {name}"))?;
                    println!(
                        "created topic {name} ({} partitions, replication factor {}, id {})",
                        t.num_partitions, t.replication_factor, t.topic_id
                    );
                }
                TopicCmd::List => {
                    let r = client.refresh(&[]).await?;
                    let mut names: Vec<_> = r.topics.iter().map(|t| t.name.clone()).collect();
                    names.sort();
                    for n in names {
                        println!("{n}");
                    }
                }
                TopicCmd::Describe { names, all_configs } => {
                    let r = client.refresh(&names).await?;
                    let configs = describe_configs(&client, &r, &names, patience).await?;
                    for t in &r.topics {
                        check(
                            t.error_code,
                            &t.error_message,
                            &format!("describing {}", t.name),
                        )?;
                        let described: &[DescribedConfig] = configs
                            .results
                            .iter()
                            .find(|c| c.topic == t.name)
                            .map_or(&[], |c| &c.configs);
                        let overrides: Vec<String> = described
                            .iter()
                            .filter(|c| !c.is_default)
                            .map(|c| format!("{}={}", c.name, c.value))
                            .collect();
                        println!(
                            "Topic: {}\tTopicId: {}\tPartitions: {}\tConfigs: {}",
                            t.name,
                            t.topic_id,
                            t.partitions.len(),
                            overrides.join(",")
                        );
                        if all_configs {
                            for c in described {
                                println!(
                                    "\tConfig: {}={}\t{}",
                                    c.name,
                                    c.value,
                                    match ConfigSource::try_from(c.source) {
                                        Ok(ConfigSource::StaticBrokerConfig) => "broker default",
                                        _ if !c.is_default => "override",
                                        _ => "default",
                                    }
                                );
                            }
                        }
                        for p in &t.partitions {
                            println!(
                                "\tPartition: {}\tLeader: {}\tEpoch: {}\tReplicas: {:?}\tIsr: {:?}{}",
                                p.index,
                                p.leader_id,
                                p.leader_epoch,
                                p.replicas,
                                p.isr,
                                if p.offline_replicas.is_empty() {
                                    String::new()
                                } else {
                                    format!("\tOffline: {:?}", p.offline_replicas)
                                }
                            );
                        }
                    }
                }
                TopicCmd::Delete { names } => {
                    let r = client
                        .admin(patience, |mut c| {
                            let names = names.clone();
                            async move { c.delete_topics(DeleteTopicsRequest { names }).await }
                        })
                        .await?;
                    for t in &r.topics {
                        check(
                            t.error_code,
                            &t.error_message,
                            &format!("deleting {}", t.name),
                        )?;
                        println!("deleted topic {}", t.name);
                    }
                }
                TopicCmd::AlterConfig { name, set, delete } => {
                    let resource = AlterConfigsResource {
                        topic: name.clone(),
                        configs: config_changes(&set, &delete)?,
                        ..Default::default()
                    };
                    alter_configs(&client, patience, resource, &format!("altering {name}")).await?;
                    println!("updated configs of {name}");
                }
                TopicCmd::Reassign(args) => reassign::run(&client, patience, args).await?,
                TopicCmd::ElectLeaders { topic, partitions } => {
                    reassign::elect_leaders(&client, patience, topic, partitions).await?
                }
            }
        }
        Command::Cluster(ClusterCmd::AlterConfig { set, delete }) => {
            let client = admin()?;
            let resource = AlterConfigsResource {
                topic: String::new(),
                configs: config_changes(&set, &delete)?,
                resource_type: ConfigResourceType::Broker as i32,
            };
            alter_configs(&client, patience, resource, "altering cluster configs").await?;
            println!("updated cluster-wide broker configs");
        }
        Command::Cluster(ClusterCmd::Describe) => {
            let client = admin()?;
            let c = client
                .admin(patience, |mut c| async move {
                    c.describe_cluster(DescribeClusterRequest {}).await
                })
                .await?;
            let q = client
                .admin(patience, |mut c| async move {
                    c.describe_quorum(DescribeQuorumRequest {}).await
                })
                .await?;
            println!("Cluster id: {}", c.cluster_id);
            println!(
                "Active controller: {} (term {}, commit index {})",
                c.controller_id, q.leader_epoch, q.commit_index
            );
            println!("Controllers:");
            for ctl in &c.controllers {
                let e = ctl.endpoint.clone().unwrap_or_default();
                let lag = q
                    .voters
                    .iter()
                    .find(|v| v.node_id == ctl.node_id)
                    .map(|v| v.lag.to_string())
                    .unwrap_or_else(|| "?".into());
                println!(
                    "\t{}\t{}:{}\tlag {}{}",
                    ctl.node_id,
                    e.host,
                    e.port,
                    lag,
                    if ctl.node_id == c.controller_id {
                        "\t(leader)"
                    } else {
                        ""
                    }
                );
            }
            println!("Brokers:");
            for b in &c.brokers {
                let e = b.endpoints.first().cloned().unwrap_or_default();
                println!(
                    "\t{}\t{}:{}\t{}\tepoch {}",
                    b.node_id,
                    e.host,
                    e.port,
                    if b.fenced { "fenced" } else { "active" },
                    b.broker_epoch
                );
            }
            if !c.cluster_configs.is_empty() {
                println!("Cluster configs:");
                for e in &c.cluster_configs {
                    println!("\t{}={}", e.name, e.value.as_deref().unwrap_or(""));
                }
            }
        }
        Command::Produce(args) => produce(&servers, args).await?,
        Command::Consume(args) => consume(&servers, args).await?,
        Command::Group(cmd) => group::run(&servers, cmd).await?,
        Command::Perf(cmd) => perf::run(&servers, cmd).await?,
    }
    Ok(())
}

pub(crate) fn parse_acks(s: &str) -> Result<i32> {
    Ok(match s {
        "all" | "-1" => -1,
        "0" => 0,
        "1" => 1,
        _ => bail!("--acks must be 0, 1 or all"),
    })
}

pub(crate) fn parse_compression(s: &str) -> Result<Compression> {
    s.parse::<Compression>().map_err(anyhow::Error::msg)
}

/// Adds what to do about a topic that does not exist to UNKNOWN_TOPIC_OR_PARTITION: rill
/// creates no topics on first use.
fn explain_topic_error(e: rill_protocol::ApiError, topic: &str) -> anyhow::Error {
    if e.code == rill_protocol::ErrorCode::UnknownTopicOrPartition {
        anyhow::anyhow!("{e}; create it with `rill topic create {topic}`")
    } else {
        e.into()
    }
}

fn producer_error(e: rill_producer::ProducerError, topic: &str) -> anyhow::Error {
    match e {
        rill_producer::ProducerError::Api(e) => explain_topic_error(e, topic),
        e => e.into(),
    }
}

fn consumer_error(e: rill_consumer::ConsumerError, topic: &str) -> anyhow::Error {
    match e {
        rill_consumer::ConsumerError::Api(e) => explain_topic_error(e, topic),
        e => e.into(),
    }
}

/// `None` for text equal to the null marker, else the text's bytes.
fn bytes_or_null(text: &str, null_marker: Option<&str>) -> Option<Bytes> {
    (null_marker != Some(text)).then(|| Bytes::from(text.to_owned()))
}

async fn produce(servers: &[String], args: ProduceArgs) -> Result<()> {
    let producer = Producer::new(ProducerConfig {
        bootstrap: servers.to_vec(),
        acks: parse_acks(&args.acks)?,
        compression: parse_compression(&args.compression)?,
        ..Default::default()
    })?;
    // A topic that does not exist fails here, before any input is read.
    producer
        .partitions_for(&args.topic)
        .await
        .map_err(|e| producer_error(e, &args.topic))?;
    let null_marker = args.null_marker.as_deref();
    let stdin = std::io::stdin();
    let mut pending = Vec::new();
    let mut count = 0usize;
    for line in stdin.lock().lines() {
        let line = line.context("reading stdin")?;
        let (key, value) = match &args.key_separator {
            Some(sep) => match line.split_once(sep.as_str()) {
                Some((k, v)) => (bytes_or_null(k, null_marker), bytes_or_null(v, null_marker)),
                None => bail!("line {} has no key separator {sep:?}: {line:?}", count + 1),
            },
            None => (None, bytes_or_null(&line, null_marker)),
        };
        let record = ProducerRecord {
            topic: args.topic.clone(),
            key,
            value,
            ..Default::default()
        };
        pending.push(
            producer
                .send(record)
                .await
                .map_err(|e| producer_error(e, &args.topic))?,
        );
        count += 1;
        if pending.len() >= 10_000 {
            for f in pending.drain(..) {
                f.await?;
            }
        }
    }
    for f in pending {
        f.await?;
    }
    producer.close().await;
    eprintln!("produced {count} records to {}", args.topic);
    Ok(())
}

async fn consume(servers: &[String], args: ConsumeArgs) -> Result<()> {
    if args.max_messages == Some(0) {
        bail!("--max-messages must be at least 1");
    }
    if args.offset.is_some_and(|o| o < 0) {
        bail!("--offset must be 0 or more (--from-beginning starts at the log start)");
    }
    if args.offset.is_some() && args.from_beginning {
        bail!("--offset and --from-beginning say different things: give one of them");
    }
    let limit = args.timeout_ms.map(Duration::from_millis);
    let started = std::time::Instant::now();
    let setup = start_consuming(servers, &args);
    let mut consumer = match limit {
        None => setup.await?,
        Some(limit) => tokio::time::timeout(limit, setup).await.map_err(|_| {
            anyhow::anyhow!(
                "timed out after {} ms (--timeout-ms) finding the partitions and offsets of {}",
                limit.as_millis(),
                args.topic
            )
        })??,
    };
    // A group member leaves its group on Ctrl-C (committing what was printed); without a
    // group, Ctrl-C ends the process as usual.
    let interrupted = async {
        if args.group.is_some() {
            let _ = tokio::signal::ctrl_c().await;
        } else {
            std::future::pending::<()>().await;
        }
    };
    tokio::pin!(interrupted);
    let printed = print_records(&mut consumer, &args, limit, started, &mut interrupted).await;
    // Close even after an error: a group member commits what was printed and leaves.
    let closed = consumer.close().await;
    printed?;
    closed.map_err(|e| {
        anyhow::anyhow!(
            "committing the consumed offsets of group {}: {e}",
            args.group.as_deref().unwrap_or("-")
        )
    })
}

/// Polls and prints until --max-messages, --timeout-ms, an interrupt or an error. A batch cut
/// short by --max-messages puts the partitions back at their first record not printed, so a
/// group commits only what was printed.
async fn print_records(
    consumer: &mut Consumer,
    args: &ConsumeArgs,
    limit: Option<Duration>,
    started: std::time::Instant,
    interrupted: &mut (impl std::future::Future<Output = ()> + Unpin),
) -> Result<()> {
    let mut seen = 0usize;
    let mut idle_since = started;
    let stdout = std::io::stdout();
    loop {
        // --timeout-ms bounds every wait, whatever the consumer is waiting for.
        let idle_left = limit.map(|l| l.saturating_sub(idle_since.elapsed()));
        if idle_left.is_some_and(|l| l.is_zero()) {
            return Ok(());
        }
        let wait = idle_left.map_or(Duration::from_millis(500), |l| {
            l.min(Duration::from_millis(500))
        });
        let polled = tokio::select! {
            r = tokio::time::timeout(wait + Duration::from_millis(100), consumer.poll(wait)) => r,
            _ = &mut *interrupted => return Ok(()),
        };
        let records = match polled {
            Ok(r) => r.map_err(|e| consumer_error(e, &args.topic))?,
            Err(_) => Vec::new(),
        };
        if records.is_empty() {
            continue;
        }
        idle_since = std::time::Instant::now();
        let mut out = stdout.lock();
        for (i, r) in records.iter().enumerate() {
            if args.print_timestamp {
                write!(
                    out,
                    "{}\t{}-{}@{}\t",
                    r.timestamp, r.topic, r.partition, r.offset
                )?;
            }
            let show = |b: &Option<Bytes>| {
                b.as_deref().map_or_else(
                    || args.null_marker.clone(),
                    |b| String::from_utf8_lossy(b).into_owned(),
                )
            };
            if args.print_key {
                write!(out, "{}\t", show(&r.key))?;
            }
            writeln!(out, "{}", show(&r.value))?;
            seen += 1;
            if args.max_messages.is_some_and(|m| seen >= m) {
                out.flush()?;
                rewind_unprinted(consumer, &records[i + 1..]);
                return Ok(());
            }
        }
        out.flush()?;
    }
}

/// Seeks each partition with records in `unprinted` back to the first of them.
fn rewind_unprinted(consumer: &mut Consumer, unprinted: &[ConsumerRecord]) {
    let mut first: std::collections::BTreeMap<TopicPartition, i64> = Default::default();
    for r in unprinted {
        first
            .entry(TopicPartition::new(r.topic.as_str(), r.partition))
            .or_insert(r.offset);
    }
    for (tp, offset) in first {
        consumer.seek(&tp, offset);
    }
}

/// A consumer assigned to the partitions `args` asks for, at the requested start positions.
async fn start_consuming(servers: &[String], args: &ConsumeArgs) -> Result<Consumer> {
    if let Some(group) = &args.group {
        return join_group(servers, args, group).await;
    }
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: servers.to_vec(),
        auto_offset_reset: if args.from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        },
        ..Default::default()
    })?;
    // Every partition of the topic: this also fails at once for a topic that does not exist.
    let all = consumer
        .partitions_of(&args.topic)
        .await
        .map_err(|e| consumer_error(e, &args.topic))?;
    let tps = match args.partition {
        Some(p) if p >= 0 && (p as usize) < all.len() => {
            vec![TopicPartition::new(args.topic.clone(), p)]
        }
        Some(p) => bail!(
            "topic {} has {} partitions; partition {p} does not exist",
            args.topic,
            all.len()
        ),
        None => all,
    };
    consumer.assign(tps.clone());
    if let Some(offset) = args.offset {
        for tp in &tps {
            consumer.seek(tp, offset);
        }
    } else if args.from_beginning {
        consumer
            .seek_to_beginning(&tps)
            .await
            .map_err(|e| consumer_error(e, &args.topic))?;
    }
    Ok(consumer)
}

/// A member of `group` subscribed to the topic (which must exist).
async fn join_group(servers: &[String], args: &ConsumeArgs, group: &str) -> Result<Consumer> {
    if args.partition.is_some() || args.offset.is_some() {
        bail!(
            "--partition and --offset cannot be used with --group: the group's coordinator assigns \
             the partitions and the group's committed offsets say where each starts (move them \
             with `rill group reset-offsets`)"
        );
    }
    if group.trim().is_empty() {
        bail!("--group needs a group id");
    }
    let mut consumer = Consumer::new(ConsumerConfig {
        bootstrap: servers.to_vec(),
        group_id: Some(group.to_owned()),
        client_id: "rill-cli".into(),
        auto_offset_reset: if args.from_beginning {
            OffsetReset::Earliest
        } else {
            OffsetReset::Latest
        },
        ..Default::default()
    })?;
    consumer
        .partitions_of(&args.topic)
        .await
        .map_err(|e| consumer_error(e, &args.topic))?;
    if args.print_rebalances {
        consumer.subscribe([args.topic.clone()], PrintRebalances)?;
    } else {
        consumer.subscribe([args.topic.clone()], NoOpRebalanceListener)?;
    }
    Ok(consumer)
}
