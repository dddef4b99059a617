//! `rill perf produce|consume|group` (and `workload`/`plot`/`fsync`, in their own modules), in the spirit of kafka-producer-perf-test: a progress bar
//! while running, then one line with records/s, MB/s and latency p50/p99/p999/max. `group`
//! times consumer-group rebalances and offset commits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use clap::Subcommand;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use rill_consumer::{Consumer, ConsumerConfig, OffsetReset};
use rill_producer::{Producer, ProducerConfig, ProducerRecord};

#[derive(Subcommand)]
pub enum PerfCmd {
    /// Produce fixed-size records as fast as allowed and report throughput and latency.
    Produce {
        /// Topic (must exist).
        #[arg(long)]
        topic: String,
        /// Records to send.
        #[arg(long, default_value_t = 100_000)]
        num_records: u64,
        /// Bytes per record value.
        #[arg(long, default_value_t = 1024)]
        record_size: usize,
        /// Records/s cap (-1: no cap).
        #[arg(long, default_value_t = -1)]
        throughput: i64,
        /// acks: 0, 1 or all.
        #[arg(long, default_value = "1")]
        acks: String,
        /// none, gzip, snappy, lz4 or zstd.
        #[arg(long, default_value = "none")]
        compression: String,
        /// batch.size: bytes per batch before it is sent.
        #[arg(long, default_value_t = 16384)]
        batch_size: usize,
        /// linger.ms: how long a batch waits for more records.
        #[arg(long, default_value_t = 5)]
        linger_ms: u64,
        /// No progress bar (for logs and scripts).
        #[arg(long)]
        quiet: bool,
    },
    /// Consume a topic from the beginning and report throughput.
    Consume {
        /// Topic to read (every partition).
        #[arg(long)]
        topic: String,
        /// Records to read before stopping.
        #[arg(long)]
        messages: u64,
        /// The consumer's `max.partition.fetch.bytes` (kafka-consumer-perf-test's
        /// `--fetch-size`).
        #[arg(long, default_value_t = ConsumerConfig::default().max_partition_fetch_bytes)]
        max_partition_fetch_bytes: i32,
        /// The consumer's `fetch.max.bytes`.
        #[arg(long, default_value_t = ConsumerConfig::default().fetch_max_bytes)]
        fetch_max_bytes: i32,
        /// The consumer's `max.in.flight.fetches.per.broker` (1 = Kafka's consumer).
        #[arg(long, default_value_t = ConsumerConfig::default().max_in_flight_fetches_per_broker)]
        max_in_flight_fetches_per_broker: usize,
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
    /// Start N members of a fresh consumer group on a topic: time until the assignment is
    /// stable (every partition owned by exactly one member, shares even); then offset commit
    /// latency (one member, one commit at a time) and throughput (every member at once).
    Group {
        /// Topic (must exist).
        #[arg(long)]
        topic: String,
        /// Members joining at once.
        #[arg(long, default_value_t = 10)]
        members: usize,
        /// Commits for the latency run; the throughput run makes as many per member.
        #[arg(long, default_value_t = 2000)]
        commits: u64,
        /// Group id (default: a fresh `rill-perf-<uuid>`, deleted afterwards).
        #[arg(long)]
        group: Option<String>,
    },
    /// An OpenMessaging-Benchmark-style workload: producers on an open-loop schedule,
    /// consumers (groups or assigned), warm-up and test phases; publish and end-to-end latency
    /// per interval and overall; --json for the results, --sweep for several rates.
    Workload(Box<crate::workload::WorkloadArgs>),
    /// Latency (p50/p99/p999) against throughput, as SVG, from `perf workload --json` files.
    Plot(crate::plot::PlotArgs),
    /// The disk's floor for fsync-before-ack latency: files appended at a rate and
    /// group-committed as fast as the disk allows, with no broker (no cluster needed).
    Fsync(crate::fsync_limit::FsyncArgs),
}

fn bar(total: u64, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let pb = ProgressBar::new(total);
    if let Ok(style) =
        ProgressStyle::with_template("{bar:40} {pos}/{len} records  {per_sec}  eta {eta}")
    {
        pb.set_style(style);
    }
    pb
}

pub async fn run(servers: &[String], cmd: PerfCmd) -> Result<()> {
    match cmd {
        PerfCmd::Workload(args) => crate::workload::run(servers, *args).await?,
        PerfCmd::Plot(args) => crate::plot::run(args)?,
        PerfCmd::Fsync(args) => {
            tokio::task::spawn_blocking(move || crate::fsync_limit::run(args)).await??
        }
        PerfCmd::Group {
            topic,
            members,
            commits,
            group,
        } => group_perf(servers, &topic, members, commits, group).await?,
        PerfCmd::Produce {
            topic,
            num_records,
            record_size,
            throughput,
            acks,
            compression,
            batch_size,
            linger_ms,
            quiet,
        } => {
            let producer = Arc::new(Producer::new(ProducerConfig {
                bootstrap: servers.to_vec(),
                acks: crate::parse_acks(&acks)?,
                compression: crate::parse_compression(&compression)?,
                batch_size,
                linger: Duration::from_millis(linger_ms),
                buffer_memory: 64 << 20,
                ..Default::default()
            })?);
            let payload: Bytes = (0..record_size)
                .map(|i| b"abcdefghijklmnopqrstuvwxyz0123456789"[i % 36])
                .collect::<Vec<u8>>()
                .into();
            let pb = bar(num_records, quiet);
            // Each acknowledgement is counted by its callback when it arrives (no future or task
            // per record); `close` returns after the last callback ran.
            struct Tally {
                hist: Histogram<u64>,
                failures: u64,
                first_error: Option<String>,
            }
            let tally = Arc::new(parking_lot::Mutex::new(Tally {
                hist: Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?,
                failures: 0,
                first_error: None,
            }));
            let start = Instant::now();
            for i in 0..num_records {
                if throughput > 0 {
                    let due = start + Duration::from_secs_f64(i as f64 / throughput as f64);
                    tokio::time::sleep_until(due.into()).await;
                }
                let sent = Instant::now();
                let (tally, pb) = (Arc::clone(&tally), pb.clone());
                producer
                    .send_with_callback(
                        ProducerRecord::new(topic.clone(), None::<Bytes>, payload.clone()),
                        move |r| {
                            let mut t = tally.lock();
                            let _ = t.hist.record((sent.elapsed().as_micros() as u64).max(1));
                            if let Err(e) = r {
                                t.failures += 1;
                                t.first_error.get_or_insert(e.to_string());
                            }
                            pb.inc(1);
                        },
                    )
                    .await?;
            }
            match Arc::try_unwrap(producer) {
                Ok(p) => p.close().await,
                Err(p) => p.flush().await,
            }
            let elapsed = start.elapsed().as_secs_f64();
            pb.finish_and_clear();
            let mut t = tally.lock();
            let first_error = t.first_error.take();
            let (h, failures) = (&t.hist, t.failures);
            let ok = num_records - failures;
            println!(
                "{ok} records sent, {:.1} records/sec ({:.2} MB/sec), latency p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms{}",
                ok as f64 / elapsed,
                ok as f64 * record_size as f64 / elapsed / (1024.0 * 1024.0),
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.value_at_quantile(0.999) as f64 / 1000.0,
                h.max() as f64 / 1000.0,
                first_error
                    .map(|e| format!(", {failures} failed (first: {e})"))
                    .unwrap_or_default()
            );
            if failures > 0 {
                anyhow::bail!("{failures} records were not delivered");
            }
        }
        PerfCmd::Consume {
            topic,
            messages,
            max_partition_fetch_bytes,
            fetch_max_bytes,
            max_in_flight_fetches_per_broker,
            quiet,
        } => {
            let mut consumer = Consumer::new(ConsumerConfig {
                bootstrap: servers.to_vec(),
                auto_offset_reset: OffsetReset::Earliest,
                max_partition_fetch_bytes,
                fetch_max_bytes,
                max_in_flight_fetches_per_broker,
                ..Default::default()
            })?;
            let tps = consumer.partitions_of(&topic).await?;
            consumer.assign(tps.clone());
            consumer.seek_to_beginning(&tps).await?;
            let pb = bar(messages, quiet);
            let start = Instant::now();
            let (mut n, mut bytes) = (0u64, 0u64);
            let mut idle = Instant::now();
            while n < messages {
                let records = consumer.poll(Duration::from_millis(500)).await?;
                if records.is_empty() {
                    if idle.elapsed() > Duration::from_secs(10) {
                        anyhow::bail!("no records for 10 s after {n} of {messages}");
                    }
                    continue;
                }
                idle = Instant::now();
                n += records.len() as u64;
                bytes += records
                    .iter()
                    .map(|r| r.value.as_ref().map_or(0, |v| v.len()) as u64)
                    .sum::<u64>();
                pb.set_position(n.min(messages));
            }
            let elapsed = start.elapsed().as_secs_f64();
            pb.finish_and_clear();
            println!(
                "{n} records consumed, {:.1} records/sec ({:.2} MB/sec) in {:.2} s",
                n as f64 / elapsed,
                bytes as f64 / elapsed / (1024.0 * 1024.0),
                elapsed
            );
        }
    }
    Ok(())
}

/// What the driver tells a member task to do once the group is stable.
enum MemberCommand {
    /// Commit one owned partition `n` times, one after another; answer with the latencies.
    Commit(u64, tokio::sync::oneshot::Sender<Result<Histogram<u64>>>),
    /// Leave the group and stop.
    Close,
}

/// A group member polling in its own task: its assignment after every poll is visible to the
/// driver, and commands run between polls.
fn spawn_member(
    config: ConsumerConfig,
    topic: String,
    assignment: Arc<parking_lot::Mutex<Vec<rill_consumer::TopicPartition>>>,
    mut commands: tokio::sync::mpsc::Receiver<MemberCommand>,
) -> tokio::task::JoinHandle<Result<()>> {
    tokio::spawn(async move {
        let mut consumer = Consumer::new(config)?;
        consumer.subscribe([topic], rill_consumer::NoOpRebalanceListener)?;
        loop {
            match commands.try_recv() {
                Ok(MemberCommand::Commit(n, reply)) => {
                    let r = commit_loop(&mut consumer, n).await;
                    let _ = reply.send(r);
                }
                Ok(MemberCommand::Close)
                | Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => break,
                Err(tokio::sync::mpsc::error::TryRecvError::Empty) => {}
            }
            consumer.poll(Duration::from_millis(20)).await?;
            *assignment.lock() = consumer.assignment();
        }
        consumer.close().await?;
        Ok(())
    })
}

/// `n` synchronous commits of the member's first partition: their latencies in µs.
async fn commit_loop(consumer: &mut Consumer, n: u64) -> Result<Histogram<u64>> {
    let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    let tp = consumer.assignment().into_iter().next().ok_or_else(|| {
        anyhow::anyhow!("a member owns no partition; use more partitions than members")
    })?;
    for i in 0..n {
        let offsets = [(tp.clone(), rill_consumer::OffsetAndMetadata::new(i as i64))]
            .into_iter()
            .collect();
        let started = Instant::now();
        consumer.commit_sync(Some(offsets)).await?;
        hist.record((started.elapsed().as_micros() as u64).max(1))?;
    }
    Ok(hist)
}

fn latency_line(hist: &Histogram<u64>) -> String {
    let ms = |v: u64| v as f64 / 1000.0;
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, p999 {:.2} ms, max {:.2} ms",
        ms(hist.value_at_quantile(0.50)),
        ms(hist.value_at_quantile(0.99)),
        ms(hist.value_at_quantile(0.999)),
        ms(hist.max())
    )
}

async fn group_perf(
    servers: &[String],
    topic: &str,
    members: usize,
    commits: u64,
    group: Option<String>,
) -> Result<()> {
    if members == 0 {
        anyhow::bail!("--members must be at least 1");
    }
    let fresh = group.is_none();
    let group = group.unwrap_or_else(|| format!("rill-perf-{}", uuid::Uuid::new_v4()));
    let probe = Consumer::new(ConsumerConfig {
        bootstrap: servers.to_vec(),
        ..Default::default()
    })?;
    let partitions: std::collections::BTreeSet<_> = probe
        .partitions_of(topic)
        .await
        .map_err(|e| anyhow::anyhow!("topic {topic}: {e}"))?
        .into_iter()
        .collect();
    let config = ConsumerConfig {
        bootstrap: servers.to_vec(),
        group_id: Some(group.clone()),
        client_id: "rill-perf".into(),
        auto_offset_reset: OffsetReset::Latest,
        enable_auto_commit: false,
        ..Default::default()
    };
    let started = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..members {
        let assignment = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let task = spawn_member(
            config.clone(),
            topic.to_owned(),
            Arc::clone(&assignment),
            rx,
        );
        handles.push((assignment, tx, task));
    }
    // Stable: every partition owned by exactly one member, shares differing by at most one.
    let fair = partitions.len() / members;
    let deadline = started + Duration::from_secs(300);
    loop {
        let owned: Vec<Vec<_>> = handles.iter().map(|(a, _, _)| a.lock().clone()).collect();
        let total: usize = owned.iter().map(Vec::len).sum();
        let union: std::collections::BTreeSet<_> = owned.iter().flatten().cloned().collect();
        if total == partitions.len()
            && union == partitions
            && owned.iter().all(|o| o.len() == fair || o.len() == fair + 1)
        {
            break;
        }
        if handles.iter().any(|(_, _, t)| t.is_finished()) {
            anyhow::bail!("a member stopped before the group was stable");
        }
        if Instant::now() > deadline {
            anyhow::bail!("the group of {members} members was not stable within 300 s");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let stable_after = started.elapsed();
    println!(
        "join: {members} members, {} partitions: stable assignment after {:.0} ms",
        partitions.len(),
        stable_after.as_secs_f64() * 1000.0
    );

    // Latency: one member, one commit at a time.
    let (reply, answer) = tokio::sync::oneshot::channel();
    handles[0]
        .1
        .send(MemberCommand::Commit(commits, reply))
        .await?;
    let one = answer.await??;
    println!(
        "commit latency (1 member, sequential, {commits} commits): {}",
        latency_line(&one)
    );
    // Throughput: every member at once.
    let started = Instant::now();
    let mut answers = Vec::new();
    for (_, tx, _) in &handles {
        let (reply, answer) = tokio::sync::oneshot::channel();
        tx.send(MemberCommand::Commit(commits, reply)).await?;
        answers.push(answer);
    }
    let mut all = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
    for a in answers {
        all.add(a.await??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "commit throughput ({members} members at once): {:.0} commits/s, {}",
        (commits * members as u64) as f64 / elapsed,
        latency_line(&all)
    );
    for (_, tx, task) in handles {
        let _ = tx.send(MemberCommand::Close).await;
        task.await??;
    }
    if fresh {
        let admin = rill_consumer::admin::GroupAdmin::new(servers, Duration::from_secs(30))?;
        for (_, r) in admin.delete_groups(std::slice::from_ref(&group)).await {
            r?;
        }
    }
    Ok(())
}
