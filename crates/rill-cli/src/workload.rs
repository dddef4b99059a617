//! `rill perf workload`: a workload runner in the spirit of the OpenMessaging Benchmark. N
//! producers and M consumers (a consumer group per subscription, or plainly assigned
//! partitions) on fresh topics; producers send on an open-loop schedule (record `i` of a
//! producer is due at `start + i / rate`) and every latency is measured from that intended send
//! time, so a stalled client or broker shows as latency instead of hiding behind a lower send
//! rate (coordinated omission). The intended time travels in the first 8 bytes of each value
//! (µs since the run's base instant, little endian) so consumers measure end-to-end latency.
//! Reports per interval and overall; `--json` writes every run; `--sweep` runs several rates.
//! `rill perf plot` (in [`crate::plot`]) draws the JSON as latency-vs-throughput SVG.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use hdrhistogram::Histogram;
use parking_lot::Mutex;
use rill_consumer::{Consumer, ConsumerConfig, NoOpRebalanceListener, OffsetReset, TopicPartition};
use rill_producer::{Producer, ProducerConfig, ProducerError, ProducerRecord, RecordMetadata};
use rill_protocol::client::ClusterClient;
use rill_protocol::proto::*;
use serde::{Deserialize, Serialize};

/// How the consumers of one subscription share a topic's partitions.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ConsumerMode {
    /// A consumer group per subscription; the group coordinator assigns the partitions.
    #[default]
    Group,
    /// Partitions dealt round-robin to the consumers (`assign`, no group).
    Assign,
}

/// A workload: what a TOML file holds (every key optional, these defaults otherwise).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Workload {
    /// Name, used in topic names and plot legends.
    pub name: String,
    /// Topics, created fresh for each run (and deleted after it).
    pub topics: usize,
    pub partitions_per_topic: i32,
    /// Replication factor (the cluster's default.replication.factor when absent).
    pub replication_factor: Option<i32>,
    /// Topic configs, `name=value`.
    pub topic_configs: Vec<String>,
    /// Producers per topic, each its own `Producer` (client).
    pub producers_per_topic: usize,
    /// Subscriptions per topic: each reads every record of the topic.
    pub subscriptions_per_topic: usize,
    /// Consumers per subscription.
    pub consumers_per_subscription: usize,
    pub consumer_mode: ConsumerMode,
    /// Bytes per record value (at least 8: the send time travels in the first 8).
    pub record_size: usize,
    /// Keys: 0 sends keyless records (the sticky partitioner spreads them); N cycles each
    /// producer through N keys, `key-<i mod N>` (OMB's round-robin key distributor), so records
    /// go to their key's partition and a compacted topic has something to compact.
    pub key_count: u64,
    /// Records/s over all producers; 0 sends as fast as the producers accept records.
    pub producer_rate: f64,
    pub warmup_secs: f64,
    pub test_secs: f64,
    /// Report interval.
    pub interval_secs: f64,
    /// After the test, how long to wait at most for consumers to catch up.
    pub drain_secs: f64,
    /// acks: 0, 1 or all.
    pub acks: String,
    pub linger_ms: u64,
    pub batch_size: usize,
    /// max.in.flight.requests.per.connection: produce requests a producer keeps open to one
    /// broker (each carries a share of that broker's ready partitions).
    pub max_in_flight: usize,
    /// none, gzip, snappy, lz4 or zstd.
    pub compression: String,
    /// Consumers' fetch.max.wait.ms (how long the broker may hold a fetch with no new data).
    pub fetch_max_wait_ms: u64,
}

impl Default for Workload {
    fn default() -> Self {
        Workload {
            name: "workload".into(),
            topics: 1,
            partitions_per_topic: 6,
            replication_factor: None,
            topic_configs: Vec::new(),
            producers_per_topic: 1,
            subscriptions_per_topic: 1,
            consumers_per_subscription: 1,
            consumer_mode: ConsumerMode::Group,
            record_size: 1024,
            key_count: 0,
            producer_rate: 10_000.0,
            warmup_secs: 5.0,
            test_secs: 60.0,
            interval_secs: 5.0,
            drain_secs: 60.0,
            acks: "all".into(),
            linger_ms: 5,
            batch_size: 16384,
            max_in_flight: ProducerConfig::default().max_in_flight,
            compression: "none".into(),
            fetch_max_wait_ms: 500,
        }
    }
}

/// `rill perf workload [FILE] [flags]`: flags override the file's values.
#[derive(Args, Debug)]
pub struct WorkloadArgs {
    /// Workload file (TOML, keys as in the JSON's "workload"); flags override it.
    file: Option<PathBuf>,
    /// Workload name (topic names, plot legends).
    #[arg(long)]
    name: Option<String>,
    /// Topics (created for the run, deleted after it).
    #[arg(long)]
    topics: Option<usize>,
    /// Partitions per topic.
    #[arg(long)]
    partitions: Option<i32>,
    /// Replication factor.
    #[arg(long)]
    replication_factor: Option<i32>,
    /// Topic config name=value (repeatable; replaces the file's list).
    #[arg(long = "topic-config")]
    topic_configs: Vec<String>,
    /// Producers per topic.
    #[arg(long)]
    producers: Option<usize>,
    /// Subscriptions per topic (each reads every record).
    #[arg(long)]
    subscriptions: Option<usize>,
    /// Consumers per subscription.
    #[arg(long)]
    consumers: Option<usize>,
    /// group: a consumer group per subscription; assign: partitions dealt to the consumers.
    #[arg(long, value_enum)]
    consumer_mode: Option<ConsumerMode>,
    /// Bytes per record value (≥ 8).
    #[arg(long)]
    record_size: Option<usize>,
    /// Keys per producer, cycled (0: keyless records).
    #[arg(long)]
    key_count: Option<u64>,
    /// Target records/s over all producers (0: as fast as possible).
    #[arg(long)]
    rate: Option<f64>,
    /// Warm-up seconds (reported, not counted in the overall figures).
    #[arg(long)]
    warmup_secs: Option<f64>,
    /// Test seconds.
    #[arg(long)]
    test_secs: Option<f64>,
    /// Seconds per report interval.
    #[arg(long)]
    interval_secs: Option<f64>,
    /// Longest wait for consumers to catch up after the test.
    #[arg(long)]
    drain_secs: Option<f64>,
    /// acks: 0, 1 or all.
    #[arg(long)]
    acks: Option<String>,
    /// linger.ms.
    #[arg(long)]
    linger_ms: Option<u64>,
    /// batch.size.
    #[arg(long)]
    batch_size: Option<usize>,
    /// max.in.flight.requests.per.connection.
    #[arg(long)]
    max_in_flight: Option<usize>,
    /// none, gzip, snappy, lz4 or zstd.
    #[arg(long)]
    compression: Option<String>,
    /// Consumers' fetch.max.wait.ms.
    #[arg(long)]
    fetch_max_wait_ms: Option<u64>,
    /// Write the results (every run, every interval) as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Rates to run, in percent of the max rate (e.g. 10,25,50,75,100); the max rate is
    /// --max-rate, or measured first by an unthrottled run of the same workload.
    #[arg(long, value_delimiter = ',')]
    sweep: Vec<f64>,
    /// The 100% of --sweep, in records/s (skips the unthrottled run).
    #[arg(long)]
    max_rate: Option<f64>,
    /// Keep the topics and groups after each run.
    #[arg(long)]
    keep_topics: bool,
}

impl WorkloadArgs {
    fn workload(&self) -> Result<Workload> {
        let mut w = match &self.file {
            Some(f) => {
                let text = std::fs::read_to_string(f)
                    .with_context(|| format!("reading {}", f.display()))?;
                toml::from_str(&text).with_context(|| format!("parsing {}", f.display()))?
            }
            None => Workload::default(),
        };
        macro_rules! set {
            ($($arg:ident => $field:ident),*) => {
                $(if let Some(v) = &self.$arg { w.$field = v.clone(); })*
            };
        }
        set!(name => name, topics => topics, partitions => partitions_per_topic,
            producers => producers_per_topic, subscriptions => subscriptions_per_topic,
            consumers => consumers_per_subscription, consumer_mode => consumer_mode,
            record_size => record_size, key_count => key_count, rate => producer_rate, warmup_secs => warmup_secs,
            test_secs => test_secs, interval_secs => interval_secs, drain_secs => drain_secs,
            acks => acks, linger_ms => linger_ms, batch_size => batch_size,
            max_in_flight => max_in_flight, compression => compression, fetch_max_wait_ms => fetch_max_wait_ms);
        if self.replication_factor.is_some() {
            w.replication_factor = self.replication_factor;
        }
        if !self.topic_configs.is_empty() {
            w.topic_configs = self.topic_configs.clone();
        }
        if w.record_size < 8 {
            bail!("record_size must be at least 8 (the send time travels in the value)");
        }
        if w.topics == 0 || w.producers_per_topic == 0 || w.partitions_per_topic < 1 {
            bail!("need at least one topic, partition and producer");
        }
        let finite = [w.test_secs, w.interval_secs, w.warmup_secs, w.drain_secs]
            .iter()
            .all(|s| s.is_finite());
        if !finite || w.test_secs <= 0.0 || w.interval_secs <= 0.0 || w.warmup_secs < 0.0 {
            bail!("test_secs and interval_secs must be positive, warmup_secs not negative");
        }
        if w.drain_secs < 0.0 {
            bail!("drain_secs must not be negative");
        }
        if w.producer_rate < 0.0 || !w.producer_rate.is_finite() {
            bail!("producer_rate must be ≥ 0 (0: unthrottled)");
        }
        if w.max_in_flight == 0 {
            bail!("max_in_flight must be at least 1");
        }
        crate::parse_acks(&w.acks)?;
        crate::parse_compression(&w.compression)?;
        Ok(w)
    }
}

/// Latency percentiles in milliseconds.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Percentiles::default();
        }
        let ms = |v: u64| v as f64 / 1000.0;
        Percentiles {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
            mean: h.mean() / 1000.0,
        }
    }

    fn line(&self) -> String {
        format!(
            "p50 {:.2} p99 {:.2} p999 {:.2} max {:.2} ms",
            self.p50, self.p99, self.p999, self.max
        )
    }
}

/// One report interval.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Interval {
    /// warmup, test or drain.
    pub phase: String,
    /// Seconds since the producers started, at the end of the interval.
    pub elapsed_secs: f64,
    pub duration_secs: f64,
    pub publish_rate: f64,
    pub publish_mb_s: f64,
    pub consume_rate: f64,
    pub consume_mb_s: f64,
    /// (Records sent − failed) × subscriptions − records consumed, at the end of the interval.
    pub backlog: i64,
    pub publish_errors: u64,
    pub publish_latency_ms: Percentiles,
    pub e2e_latency_ms: Percentiles,
}

/// One run at one target rate.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunResult {
    /// Target records/s (0: unthrottled, the max-rate run).
    pub target_rate: f64,
    /// Percent of the sweep's max rate, for sweep runs.
    pub percent_of_max: Option<f64>,
    pub topics: Vec<String>,
    pub intervals: Vec<Interval>,
    /// Length of the test phase as measured (the rates below are over it).
    pub test_secs: f64,
    /// Test phase: records acknowledged per second.
    pub publish_rate: f64,
    pub publish_mb_s: f64,
    /// Test phase: records received per second (all subscriptions).
    pub consume_rate: f64,
    pub consume_mb_s: f64,
    /// Test phase and drain: send (intended time) → acknowledgement.
    pub publish_latency_ms: Percentiles,
    /// Test phase and drain: send (intended time) → a consumer receives the record.
    pub e2e_latency_ms: Percentiles,
    /// Whole run (warm-up, test, drain): records due by the schedule before the end of the test
    /// (for throttled runs), handed to the producers, acknowledged, failed, consumed.
    pub records_scheduled: u64,
    pub records_sent: u64,
    pub records_acked: u64,
    pub records_failed: u64,
    pub records_consumed: u64,
    /// records_acked × subscriptions per topic: what the consumers should receive.
    pub records_expected: u64,
    pub backlog_after_drain: i64,
    pub first_error: Option<String>,
}

/// What `--json` writes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Results {
    pub workload: Workload,
    /// The max rate the sweep percentages refer to.
    pub max_rate: Option<f64>,
    pub runs: Vec<RunResult>,
}

const MAX_LATENCY_US: u64 = 3_600_000_000;

/// A latency histogram in microseconds, up to an hour (also for `perf fsync`).
pub(crate) fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// What one producer or consumer task has seen since the reporter last collected.
struct Recorder {
    publish: Histogram<u64>,
    e2e: Histogram<u64>,
    counts: Counts,
    first_error: Option<String>,
}

#[derive(Clone, Copy, Debug, Default)]
struct Counts {
    scheduled: u64,
    sent: u64,
    acked: u64,
    acked_bytes: u64,
    failed: u64,
    consumed: u64,
    consumed_bytes: u64,
}

impl Counts {
    fn add(&mut self, o: &Counts) {
        self.scheduled += o.scheduled;
        self.sent += o.sent;
        self.acked += o.acked;
        self.acked_bytes += o.acked_bytes;
        self.failed += o.failed;
        self.consumed += o.consumed;
        self.consumed_bytes += o.consumed_bytes;
    }
}

type Shared = Arc<Mutex<Recorder>>;

fn recorder() -> Shared {
    Arc::new(Mutex::new(Recorder {
        publish: histogram(),
        e2e: histogram(),
        counts: Counts::default(),
        first_error: None,
    }))
}

/// Everything the tasks recorded since the last collection (and resets them).
struct Collected {
    counts: Counts,
    publish: Histogram<u64>,
    e2e: Histogram<u64>,
    first_error: Option<String>,
}

fn collect(recorders: &[Shared]) -> Collected {
    let mut c = Collected {
        counts: Counts::default(),
        publish: histogram(),
        e2e: histogram(),
        first_error: None,
    };
    for r in recorders {
        let mut r = r.lock();
        let _ = c.publish.add(&r.publish);
        let _ = c.e2e.add(&r.e2e);
        r.publish.reset();
        r.e2e.reset();
        c.counts.add(&r.counts);
        r.counts = Counts::default();
        if c.first_error.is_none() {
            c.first_error = r.first_error.take();
        }
    }
    c
}

fn micros_since(base: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(base).as_micros() as u64
}

/// One producer on an open-loop schedule: record `i` is due at `start + (i + phase) / rate`
/// (sent at once when the producer is behind), until `end`. Latency counts from the due time.
#[allow(clippy::too_many_arguments)]
async fn produce_loop(
    producer: Producer,
    topic: String,
    rate: f64,
    phase: f64,
    record_size: usize,
    key_count: u64,
    base: Instant,
    start: Instant,
    end: Instant,
    rec: Shared,
) -> Result<()> {
    let template: Vec<u8> = (0..record_size)
        .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
        .collect();
    // Each acknowledgement is timestamped by its callback when it arrives (not behind an earlier
    // record of another partition, nor while `send` waits for buffer.memory), with no task or
    // future per record: the runner's own cost shares the machine with the cluster.
    let mut i = 0u64;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let intended = if rate > 0.0 {
            let due = start + Duration::from_secs_f64((i as f64 + phase) / rate);
            if due >= end {
                break;
            }
            if due > now {
                tokio::time::sleep_until(due.into()).await;
            }
            due
        } else {
            now
        };
        rec.lock().counts.scheduled += 1;
        let mut value = template.clone();
        value[..8].copy_from_slice(&micros_since(base, intended).to_le_bytes());
        let settled = Arc::clone(&rec);
        let key = (key_count > 0).then(|| Bytes::from(format!("key-{}", i % key_count)));
        match producer
            .send_with_callback(
                ProducerRecord::new(topic.clone(), key, Bytes::from(value)),
                move |r| settle(r, intended, record_size, &settled),
            )
            .await
        {
            Ok(()) => {
                rec.lock().counts.sent += 1;
            }
            Err(e) => {
                let mut g = rec.lock();
                g.counts.failed += 1;
                g.first_error.get_or_insert_with(|| e.to_string());
            }
        }
        i += 1;
    }
    if rate > 0.0 {
        // Records the schedule had due before the end that a late producer never reached.
        let due = ((end - start).as_secs_f64() * rate - phase).ceil().max(0.0) as u64;
        rec.lock().counts.scheduled += due.saturating_sub(i);
    }
    // Returns after every callback ran.
    producer.close().await;
    Ok(())
}

/// Records one record's outcome, with its latency from the intended send time.
fn settle(
    r: Result<RecordMetadata, ProducerError>,
    intended: Instant,
    record_size: usize,
    rec: &Shared,
) {
    let latency = Instant::now()
        .saturating_duration_since(intended)
        .as_micros() as u64;
    let mut g = rec.lock();
    match r {
        Ok(_) => {
            g.publish.saturating_record(latency.max(1));
            g.counts.acked += 1;
            g.counts.acked_bytes += record_size as u64;
        }
        Err(e) => {
            g.counts.failed += 1;
            g.first_error.get_or_insert_with(|| e.to_string());
        }
    }
}

/// One consumer: polls until `stop`, recording end-to-end latency from the send time in each
/// value; publishes its assignment for the stability check.
async fn consume_loop(
    mut consumer: Consumer,
    base: Instant,
    rec: Shared,
    assignment: Arc<Mutex<Vec<TopicPartition>>>,
    stop: Arc<AtomicBool>,
) -> Result<()> {
    while !stop.load(Ordering::Acquire) {
        let records = consumer.poll(Duration::from_millis(100)).await?;
        *assignment.lock() = consumer.assignment();
        if records.is_empty() {
            continue;
        }
        let now = micros_since(base, Instant::now());
        let mut g = rec.lock();
        for r in &records {
            let value = r.value.as_deref().unwrap_or(&[]);
            if let Some(sent) = value.get(..8) {
                let sent = u64::from_le_bytes(sent.try_into().expect("8 bytes"));
                g.e2e.saturating_record(now.saturating_sub(sent).max(1));
            }
            g.counts.consumed += 1;
            g.counts.consumed_bytes += value.len() as u64;
        }
    }
    consumer.close().await?;
    Ok(())
}

fn topic_safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '-'
            }
        })
        .collect()
}

async fn create_topics(client: &ClusterClient, w: &Workload, names: &[String]) -> Result<()> {
    let configs = w
        .topic_configs
        .iter()
        .map(|c| {
            crate::parse_kv(c).map(|(name, value)| ConfigEntry {
                name,
                value: Some(value),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let topics: Vec<CreatableTopic> = names
        .iter()
        .map(|name| CreatableTopic {
            name: name.clone(),
            num_partitions: w.partitions_per_topic,
            replication_factor: w.replication_factor.unwrap_or(-1),
            configs: configs.clone(),
        })
        .collect();
    let r = client
        .admin(Duration::from_secs(30), |mut c| {
            let topics = topics.clone();
            async move {
                c.create_topics(CreateTopicsRequest {
                    topics,
                    validate_only: false,
                })
                .await
            }
        })
        .await?;
    for t in &r.topics {
        crate::check(
            t.error_code,
            &t.error_message,
            &format!("creating {}", t.name),
        )?;
    }
    Ok(())
}

async fn delete_topics(client: &ClusterClient, names: &[String]) -> Result<()> {
    let names = names.to_vec();
    let r = client
        .admin(Duration::from_secs(30), |mut c| {
            let names = names.clone();
            async move { c.delete_topics(DeleteTopicsRequest { names }).await }
        })
        .await?;
    for t in &r.topics {
        crate::check(
            t.error_code,
            &t.error_message,
            &format!("deleting {}", t.name),
        )?;
    }
    Ok(())
}

struct ConsumerTask {
    /// Index of the subscription (topic × subscription) the consumer belongs to.
    subscription: usize,
    assignment: Arc<Mutex<Vec<TopicPartition>>>,
    task: tokio::task::JoinHandle<Result<()>>,
}

/// One run of `w` at `rate` records/s (0: unthrottled).
async fn run_once(
    servers: &[String],
    w: &Workload,
    rate: f64,
    percent_of_max: Option<f64>,
    keep_topics: bool,
) -> Result<RunResult> {
    let run_id = uuid::Uuid::new_v4().simple().to_string();
    let prefix = format!("{}-{}", topic_safe(&w.name), &run_id[..8]);
    let topics: Vec<String> = (0..w.topics).map(|i| format!("{prefix}-{i}")).collect();
    let admin = ClusterClient::new(servers, Duration::from_secs(30))?;
    create_topics(&admin, w, &topics).await?;
    let result = run_on_topics(
        servers,
        w,
        rate,
        percent_of_max,
        keep_topics,
        topics.clone(),
    )
    .await;
    if result.is_err() && !keep_topics {
        let _ = delete_topics(&admin, &topics).await;
    }
    result
}

async fn run_on_topics(
    servers: &[String],
    w: &Workload,
    rate: f64,
    percent_of_max: Option<f64>,
    keep_topics: bool,
    topics: Vec<String>,
) -> Result<RunResult> {
    let admin = ClusterClient::new(servers, Duration::from_secs(30))?;
    let base = Instant::now();
    let mut recorders: Vec<Shared> = Vec::new();

    // Producers first: their metadata wait covers the new topics reaching the brokers.
    let producer_config = ProducerConfig {
        bootstrap: servers.to_vec(),
        acks: crate::parse_acks(&w.acks)?,
        compression: crate::parse_compression(&w.compression)?,
        batch_size: w.batch_size,
        linger: Duration::from_millis(w.linger_ms),
        max_in_flight: w.max_in_flight,
        buffer_memory: 64 << 20,
        ..Default::default()
    };
    let mut producers = Vec::new();
    for topic in &topics {
        for _ in 0..w.producers_per_topic {
            let p = Producer::new(producer_config.clone())?;
            p.partitions_for(topic)
                .await
                .with_context(|| format!("metadata of {topic}"))?;
            producers.push((topic.clone(), p));
        }
    }

    // Consumers, positioned at the beginning of the fresh topics before anything is sent.
    let stop = Arc::new(AtomicBool::new(false));
    let mut consumers: Vec<ConsumerTask> = Vec::new();
    let mut groups = Vec::new();
    let mut partitions_of: Vec<Vec<TopicPartition>> = Vec::new();
    for topic in &topics {
        let probe = Consumer::new(ConsumerConfig {
            bootstrap: servers.to_vec(),
            ..Default::default()
        })?;
        let tps = probe.partitions_of(topic).await?;
        for s in 0..w.subscriptions_per_topic {
            let subscription = partitions_of.len();
            partitions_of.push(tps.clone());
            let group = format!("{topic}-sub{s}");
            if w.consumer_mode == ConsumerMode::Group {
                groups.push(group.clone());
            }
            for c in 0..w.consumers_per_subscription {
                let mut consumer = Consumer::new(ConsumerConfig {
                    bootstrap: servers.to_vec(),
                    auto_offset_reset: OffsetReset::Earliest,
                    group_id: (w.consumer_mode == ConsumerMode::Group).then(|| group.clone()),
                    client_id: "rill-perf-workload".into(),
                    enable_auto_commit: false,
                    fetch_max_wait: Duration::from_millis(w.fetch_max_wait_ms),
                    ..Default::default()
                })?;
                match w.consumer_mode {
                    ConsumerMode::Group => {
                        consumer.subscribe([topic.clone()], NoOpRebalanceListener)?;
                    }
                    ConsumerMode::Assign => {
                        let mine: Vec<TopicPartition> = tps
                            .iter()
                            .enumerate()
                            .filter(|(i, _)| i % w.consumers_per_subscription == c)
                            .map(|(_, tp)| tp.clone())
                            .collect();
                        consumer.assign(mine.clone());
                        consumer.seek_to_beginning(&mine).await?;
                    }
                }
                let rec = recorder();
                recorders.push(Arc::clone(&rec));
                let assignment = Arc::new(Mutex::new(Vec::new()));
                let task = tokio::spawn(consume_loop(
                    consumer,
                    base,
                    rec,
                    Arc::clone(&assignment),
                    Arc::clone(&stop),
                ));
                consumers.push(ConsumerTask {
                    subscription,
                    assignment,
                    task,
                });
            }
        }
    }
    if w.consumer_mode == ConsumerMode::Group {
        wait_for_assignments(&consumers, &partitions_of, w.consumers_per_subscription).await?;
    }

    // The run: warm-up, test, then drain until the consumers have everything.
    println!(
        "run: {} topic(s) × {} partitions, {} producer(s), {} consumer(s), target {}",
        w.topics,
        w.partitions_per_topic,
        producers.len(),
        consumers.len(),
        if rate > 0.0 {
            format!("{rate:.0} records/s")
        } else {
            "unthrottled".into()
        }
    );
    let start = Instant::now() + Duration::from_millis(20);
    let warm_end = start + Duration::from_secs_f64(w.warmup_secs);
    let end = warm_end + Duration::from_secs_f64(w.test_secs);
    let n = producers.len();
    let mut producer_tasks = Vec::new();
    for (k, (topic, p)) in producers.into_iter().enumerate() {
        let rec = recorder();
        recorders.push(Arc::clone(&rec));
        producer_tasks.push(tokio::spawn(produce_loop(
            p,
            topic,
            rate / n as f64,
            k as f64 / n as f64,
            w.record_size,
            w.key_count,
            base,
            start,
            end,
            rec,
        )));
    }
    let subs = w.subscriptions_per_topic as u64;
    let interval = Duration::from_secs_f64(w.interval_secs);
    let mut intervals = Vec::new();
    let mut total = Counts::default();
    let mut test = Counts::default();
    let mut test_secs = 0.0f64;
    let mut publish = histogram();
    let mut e2e = histogram();
    let mut first_error = None;
    let mut last = start;
    let mut record_interval = |phase: &str,
                               now: Instant,
                               last: Instant,
                               c: Collected,
                               total: &mut Counts| {
        total.add(&c.counts);
        if first_error.is_none() {
            first_error = c.first_error.clone();
        }
        let secs = now.saturating_duration_since(last).as_secs_f64().max(1e-9);
        let iv = Interval {
            phase: phase.into(),
            elapsed_secs: now.saturating_duration_since(start).as_secs_f64(),
            duration_secs: secs,
            publish_rate: c.counts.acked as f64 / secs,
            publish_mb_s: c.counts.acked_bytes as f64 / secs / 1e6,
            consume_rate: c.counts.consumed as f64 / secs,
            consume_mb_s: c.counts.consumed_bytes as f64 / secs / 1e6,
            // Records handed to the producers (less failures) not consumed yet: counting
            // acknowledged records instead goes negative, as a consumer can receive a record
            // before its producer task has seen the acknowledgement.
            backlog: ((total.sent.saturating_sub(total.failed) * subs) as i64
                - total.consumed as i64)
                .max(0),
            publish_errors: c.counts.failed,
            publish_latency_ms: Percentiles::of(&c.publish),
            e2e_latency_ms: Percentiles::of(&c.e2e),
        };
        println!(
            "[{:>6.1}s {:<6}] pub {:>9.1} rec/s {:>7.2} MB/s | cons {:>9.1} rec/s {:>7.2} MB/s | backlog {:>7} | pub {} | e2e {}{}",
            iv.elapsed_secs,
            phase,
            iv.publish_rate,
            iv.publish_mb_s,
            iv.consume_rate,
            iv.consume_mb_s,
            iv.backlog,
            iv.publish_latency_ms.line(),
            iv.e2e_latency_ms.line(),
            if c.counts.failed > 0 {
                format!(" | {} failed", c.counts.failed)
            } else {
                String::new()
            }
        );
        intervals.push(iv);
        c
    };
    // Warm-up and test intervals; a boundary always ends an interval.
    while last < end {
        let phase_end = if last < warm_end { warm_end } else { end };
        let now_tick = (last + interval).min(phase_end);
        tokio::time::sleep_until(now_tick.into()).await;
        let phase = if now_tick <= warm_end {
            "warmup"
        } else {
            "test"
        };
        // The reporter may wake late on a busy machine: rates use the real interval.
        let now = Instant::now().max(now_tick);
        let c = record_interval(phase, now, last, collect(&recorders), &mut total);
        if phase == "test" {
            test.add(&c.counts);
            test_secs += now.saturating_duration_since(last).as_secs_f64();
            let _ = publish.add(&c.publish);
            let _ = e2e.add(&c.e2e);
        }
        last = now;
    }
    // Drain: the producers settle what is in flight, the consumers catch up.
    let drain_deadline = Instant::now() + Duration::from_secs_f64(w.drain_secs);
    let mut producers_done = false;
    loop {
        if !producers_done && producer_tasks.iter().all(|t| t.is_finished()) {
            producers_done = true;
        }
        let peek_total = {
            let mut t = total;
            for r in &recorders {
                t.add(&r.lock().counts);
            }
            t
        };
        if producers_done && peek_total.consumed >= peek_total.acked * subs {
            break;
        }
        if Instant::now() >= drain_deadline {
            eprintln!(
                "drain: gave up after {:.0} s with {} of {} records consumed",
                w.drain_secs,
                peek_total.consumed,
                peek_total.acked * subs
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for t in producer_tasks {
        t.await??;
    }
    stop.store(true, Ordering::Release);
    let mut consumer_error = None;
    for c in consumers {
        if let Err(e) = c.task.await? {
            consumer_error.get_or_insert(e);
        }
    }
    let now = Instant::now();
    let c = record_interval("drain", now, last, collect(&recorders), &mut total);
    let _ = publish.add(&c.publish);
    let _ = e2e.add(&c.e2e);
    if let Some(e) = consumer_error {
        return Err(e.context("a consumer failed"));
    }
    if !keep_topics {
        if !groups.is_empty() {
            let admin = rill_consumer::admin::GroupAdmin::new(servers, Duration::from_secs(30))?;
            for (g, r) in admin.delete_groups(&groups).await {
                if let Err(e) = r {
                    eprintln!("deleting group {g}: {e}");
                }
            }
        }
        if let Err(e) = delete_topics(&admin, &topics).await {
            eprintln!("{e:#}");
        }
    }
    let secs = test_secs.max(1e-9);
    let result = RunResult {
        target_rate: rate,
        percent_of_max,
        topics,
        intervals,
        test_secs,
        publish_rate: test.acked as f64 / secs,
        publish_mb_s: test.acked_bytes as f64 / secs / 1e6,
        consume_rate: test.consumed as f64 / secs,
        consume_mb_s: test.consumed_bytes as f64 / secs / 1e6,
        publish_latency_ms: Percentiles::of(&publish),
        e2e_latency_ms: Percentiles::of(&e2e),
        records_scheduled: total.scheduled,
        records_sent: total.sent,
        records_acked: total.acked,
        records_failed: total.failed,
        records_consumed: total.consumed,
        records_expected: total.acked * subs,
        backlog_after_drain: (total.acked * subs) as i64 - total.consumed as i64,
        first_error,
    };
    println!(
        "overall: publish {:.1} rec/s {:.2} MB/s, consume {:.1} rec/s {:.2} MB/s, {} acked, {} consumed, {} failed\n  publish latency {}\n  end-to-end      {}",
        result.publish_rate,
        result.publish_mb_s,
        result.consume_rate,
        result.consume_mb_s,
        result.records_acked,
        result.records_consumed,
        result.records_failed,
        result.publish_latency_ms.line(),
        result.e2e_latency_ms.line()
    );
    Ok(result)
}

/// Waits until, in every subscription, each partition has exactly one owner and the shares
/// differ by at most one (as `perf group` does), so the test does not measure a rebalance.
async fn wait_for_assignments(
    consumers: &[ConsumerTask],
    partitions_of: &[Vec<TopicPartition>],
    members: usize,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let stable = partitions_of.iter().enumerate().all(|(s, tps)| {
            let owned: Vec<Vec<TopicPartition>> = consumers
                .iter()
                .filter(|c| c.subscription == s)
                .map(|c| c.assignment.lock().clone())
                .collect();
            let all: std::collections::BTreeSet<&TopicPartition> = owned.iter().flatten().collect();
            let fair = tps.len() / members;
            owned.iter().map(Vec::len).sum::<usize>() == tps.len()
                && all.len() == tps.len()
                && owned.iter().all(|o| o.len() == fair || o.len() == fair + 1)
        });
        if stable {
            return Ok(());
        }
        if consumers.iter().any(|c| c.task.is_finished()) {
            bail!("a consumer stopped before its group's assignment was stable");
        }
        if Instant::now() > deadline {
            bail!(
                "consumer groups not stable within 120 s (on a cluster with fewer brokers than \
                 offsets.topic.replication.factor, 3 by default, no group coordinator can start: \
                 set it to 1 on a one-broker cluster, or use --consumer-mode assign)"
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn write_json(path: &std::path::Path, results: &Results) -> Result<()> {
    let text = serde_json::to_string_pretty(results)?;
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

pub async fn run(servers: &[String], args: WorkloadArgs) -> Result<()> {
    let w = args.workload()?;
    if args.max_rate.is_some() && args.sweep.is_empty() {
        bail!("--max-rate is the rate --sweep's percentages refer to: give --sweep too");
    }
    if args.max_rate.is_some_and(|m| !m.is_finite() || m <= 0.0) {
        bail!("--max-rate must be a positive number of records/s");
    }
    let mut results = Results {
        workload: w.clone(),
        max_rate: None,
        runs: Vec::new(),
    };
    let save = |results: &Results| -> Result<()> {
        match &args.json {
            Some(p) => write_json(p, results),
            None => Ok(()),
        }
    };
    if args.sweep.is_empty() {
        results
            .runs
            .push(run_once(servers, &w, w.producer_rate, None, args.keep_topics).await?);
        save(&results)?;
    } else {
        let max = match args.max_rate {
            Some(m) => m,
            None => {
                println!("sweep: measuring the max rate (unthrottled run)");
                let r = run_once(servers, &w, 0.0, None, args.keep_topics).await?;
                let m = r.publish_rate;
                results.runs.push(r);
                save(&results)?;
                m
            }
        };
        if max <= 0.0 {
            bail!("max rate {max} records/s: nothing to sweep");
        }
        results.max_rate = Some(max);
        for pct in &args.sweep {
            let rate = max * pct / 100.0;
            println!("sweep: {pct}% of {max:.0} = {rate:.0} records/s");
            results
                .runs
                .push(run_once(servers, &w, rate, Some(*pct), args.keep_topics).await?);
            save(&results)?;
        }
        println!("sweep summary (target → publish rate, publish p99, e2e p50/p99/p999 ms):");
        for r in &results.runs {
            println!(
                "  {:>10} → {:>9.1} rec/s  pub p99 {:>8.2}  e2e {:.2} / {:.2} / {:.2}",
                if r.target_rate > 0.0 {
                    format!("{:.0}", r.target_rate)
                } else {
                    "max".into()
                },
                r.publish_rate,
                r.publish_latency_ms.p99,
                r.e2e_latency_ms.p50,
                r.e2e_latency_ms.p99,
                r.e2e_latency_ms.p999
            );
        }
    }
    if let Some(p) = &args.json {
        println!("results written to {}", p.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WorkloadArgs,
    }

    fn parse(args: &[&str]) -> Result<Workload> {
        let cli = Cli::try_parse_from(std::iter::once("workload").chain(args.iter().copied()))?;
        cli.args.workload()
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(
            &file,
            "name = \"w\"\ntopics = 3\nproducer_rate = 5000.0\nconsumer_mode = \"assign\"\n",
        )
        .unwrap();
        let w = parse(&[
            file.to_str().unwrap(),
            "--rate",
            "42",
            "--partitions",
            "2",
            "--max-in-flight",
            "1",
        ])
        .unwrap();
        assert_eq!(w.max_in_flight, 1);
        assert_eq!(w.name, "w");
        assert_eq!(w.topics, 3);
        assert_eq!(w.producer_rate, 42.0);
        assert_eq!(w.partitions_per_topic, 2);
        assert_eq!(w.consumer_mode, ConsumerMode::Assign);
        assert_eq!(w.record_size, 1024);
        assert_eq!(w.acks, "all");
        // What --json writes reads back as a workload file would.
        let json = serde_json::to_string(&w).unwrap();
        let back: Workload = serde_json::from_str(&json).unwrap();
        assert_eq!(back.topics, 3);
    }

    #[test]
    fn bad_workloads_are_refused() {
        assert!(parse(&["--record-size", "7"]).is_err());
        assert!(parse(&["--rate", "-1"]).is_err());
        assert!(parse(&["--acks", "2"]).is_err());
        assert!(parse(&["--test-secs", "0"]).is_err());
        assert!(parse(&["--max-in-flight", "0"]).is_err());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("w.toml");
        std::fs::write(&file, "producers = 2\n").unwrap();
        let e = parse(&[file.to_str().unwrap()]).unwrap_err();
        assert!(format!("{e:#}").contains("producers"), "{e:#}");
    }

    #[test]
    fn percentiles_of_an_empty_histogram_are_zero_and_ordered_otherwise() {
        let mut h = histogram();
        assert_eq!(Percentiles::of(&h).count, 0);
        for v in 1..=10_000u64 {
            h.record(v).unwrap();
        }
        let p = Percentiles::of(&h);
        assert!(p.p50 <= p.p99 && p.p99 <= p.p999 && p.p999 <= p.max);
        assert!((p.p50 - 5.0).abs() < 0.01, "{p:?}");
        assert!((p.max - 10.0).abs() < 0.01, "{p:?}");
    }
}
