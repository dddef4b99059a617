//! `rill perf produce|consume`, in the spirit of kafka-producer-perf-test: a progress bar while
//! running, then one line with records/s, MB/s and latency p50/p99/p999/max.

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
        /// No progress bar.
        #[arg(long)]
        quiet: bool,
    },
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
            let mut hist = Histogram::<u64>::new_with_bounds(1, 600_000_000, 3)?;
            let pb = bar(num_records, quiet);
            // Deliveries complete in send order per partition; check the oldest ones after each
            // send (no task per record), then wait for the rest.
            let mut outstanding: std::collections::VecDeque<(
                Instant,
                rill_producer::DeliveryFuture,
            )> = std::collections::VecDeque::new();
            let mut failures = 0u64;
            let mut first_error: Option<String> = None;
            let mut settle =
                |sent: Instant,
                 r: Result<rill_producer::RecordMetadata, rill_producer::ProducerError>,
                 hist: &mut Histogram<u64>| {
                    let _ = hist.record((sent.elapsed().as_micros() as u64).max(1));
                    pb.inc(1);
                    if let Err(e) = r {
                        failures += 1;
                        first_error.get_or_insert(e.to_string());
                    }
                };
            let start = Instant::now();
            for i in 0..num_records {
                if throughput > 0 {
                    // Wait for the send time while settling deliveries as they complete, so a
                    // latency is measured when the acknowledgement arrives, not at the next
                    // send (which quantised every latency to the send interval).
                    let due = start + Duration::from_secs_f64(i as f64 / throughput as f64);
                    let sleep = tokio::time::sleep_until(due.into());
                    tokio::pin!(sleep);
                    loop {
                        let Some((t, d)) = outstanding.front_mut() else {
                            sleep.as_mut().await;
                            break;
                        };
                        let t = *t;
                        tokio::select! {
                            _ = sleep.as_mut() => break,
                            r = d => {
                                outstanding.pop_front();
                                settle(t, r, &mut hist);
                            }
                        }
                    }
                }
                let sent = Instant::now();
                let delivery = producer
                    .send(ProducerRecord::new(
                        topic.clone(),
                        None::<Bytes>,
                        payload.clone(),
                    ))
                    .await?;
                outstanding.push_back((sent, delivery));
                while let Some((t, d)) = outstanding.front_mut() {
                    let Some(r) = d.try_result() else { break };
                    let t = *t;
                    outstanding.pop_front();
                    settle(t, r, &mut hist);
                }
            }
            for (t, d) in outstanding {
                let r = d.await;
                settle(t, r, &mut hist);
            }
            let elapsed = start.elapsed().as_secs_f64();
            pb.finish_and_clear();
            let h = hist;
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
            if let Ok(p) = Arc::try_unwrap(producer) {
                p.close().await;
            }
            if failures > 0 {
                anyhow::bail!("{failures} records were not delivered");
            }
        }
        PerfCmd::Consume {
            topic,
            messages,
            quiet,
        } => {
            let mut consumer = Consumer::new(ConsumerConfig {
                bootstrap: servers.to_vec(),
                auto_offset_reset: OffsetReset::Earliest,
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
