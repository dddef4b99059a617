//! A history of produce attempts and reads, and the checker that judges it.
//!
//! Like Jepsen's queue checkers, the checker trusts nothing but the history: every attempt has
//! a unique value (`w<writer>-<seq>`), an outcome (acknowledged at an offset, definitely failed,
//! or unknown), and the final read lists what the log holds. From that alone it finds records
//! lost after acknowledgement, duplicated, reordered, moved away from the acknowledged offset,
//! read without ever being written, or visible although the write was refused.
//!
//! Unknown outcomes are never findings either way: a timed-out write may or may not be in the
//! log, and both are correct.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How many examples of each finding a [`Report`] keeps (counts are always exact).
const EXAMPLES: usize = 5;

/// What became of a produce attempt.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// No answer yet (the workload stopped before it came, or it is still in flight).
    Pending,
    /// Acknowledged: the record is at `offset` of `partition`. Kafka promises both.
    Ok {
        /// Partition the broker stored it in.
        partition: i32,
        /// Offset the broker assigned.
        offset: i64,
    },
    /// Definitely not written: refused before anything was appended (NOT_ENOUGH_REPLICAS), or
    /// never sent. Such a record must never be read.
    Failed {
        /// The producer's error, as text.
        error: String,
    },
    /// May or may not have been written: a timeout or a lost connection after the request may
    /// have left. Reading it or not are both correct.
    Unknown {
        /// The producer's error (or why no outcome came), as text.
        error: String,
    },
}

/// One produce attempt.
#[derive(Clone, Debug)]
pub struct Attempt {
    /// The unique value sent (`w<writer>-<seq>`).
    pub value: String,
    /// Which writer (one producer each) sent it.
    pub writer: u32,
    /// The writer's sequence number: its send order.
    pub seq: u64,
    #[allow(missing_docs)]
    pub topic: String,
    /// The partition it was sent to, when chosen by the writer.
    pub partition: Option<i32>,
    /// What became of it; [`Outcome::Pending`] until recorded.
    pub outcome: Outcome,
    /// When it was sent, since the history began.
    pub sent_at: Duration,
    /// When the outcome arrived, since the history began.
    pub completed_at: Option<Duration>,
}

/// One record read back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Read {
    #[allow(missing_docs)]
    pub topic: String,
    #[allow(missing_docs)]
    pub partition: i32,
    #[allow(missing_docs)]
    pub offset: i64,
    /// The value read (lossily decoded; values the workload writes are ASCII).
    pub value: String,
}

#[derive(Default)]
struct Inner {
    attempts: Vec<Attempt>,
    by_value: HashMap<String, usize>,
    reads: Vec<Read>,
}

/// Every produce attempt and every record read, recorded concurrently by the workload tasks.
pub struct History {
    start: Instant,
    inner: Mutex<Inner>,
}

/// A handle to one recorded attempt, to record its outcome later.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AttemptId(usize);

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

/// The canonical value of attempt `seq` of `writer`; unique as long as writer ids are.
pub fn value_of(writer: u32, seq: u64) -> String {
    format!("w{writer}-{seq}")
}

impl History {
    /// An empty history; times are measured from now.
    pub fn new() -> Self {
        History {
            start: Instant::now(),
            inner: Mutex::new(Inner::default()),
        }
    }

    fn lock(&self) -> parking_lot::MutexGuard<'_, Inner> {
        // parking_lot does not poison: a panicking recorder leaves the data as it was, and
        // recording goes on.
        self.inner.lock()
    }

    /// Time since the history began (what `sent_at`/`completed_at` are measured in).
    pub fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }

    /// Records that `writer` is about to send its attempt `seq` (value [`value_of`]); its
    /// outcome is [`Outcome::Pending`] until [`complete`](Self::complete).
    pub fn attempt(
        &self,
        writer: u32,
        seq: u64,
        topic: &str,
        partition: Option<i32>,
    ) -> (AttemptId, String) {
        let value = value_of(writer, seq);
        let sent_at = self.elapsed();
        let mut inner = self.lock();
        let id = inner.attempts.len();
        inner.by_value.insert(value.clone(), id);
        inner.attempts.push(Attempt {
            value: value.clone(),
            writer,
            seq,
            topic: topic.to_owned(),
            partition,
            outcome: Outcome::Pending,
            sent_at,
            completed_at: None,
        });
        (AttemptId(id), value)
    }

    /// Records the outcome of an attempt.
    pub fn complete(&self, id: AttemptId, outcome: Outcome) {
        let at = self.elapsed();
        let mut inner = self.lock();
        if let Some(a) = inner.attempts.get_mut(id.0) {
            a.outcome = outcome;
            a.completed_at = Some(at);
        }
    }

    /// Records a record read back.
    pub fn read(&self, read: Read) {
        self.lock().reads.push(read);
    }

    /// A copy of the attempts so far.
    pub fn attempts(&self) -> Vec<Attempt> {
        self.lock().attempts.clone()
    }

    /// A copy of the reads so far.
    pub fn reads(&self) -> Vec<Read> {
        self.lock().reads.clone()
    }

    /// Judges what a consumer group was given against this history and its reads (see
    /// [`check_consumed`]).
    pub fn check_consumed(&self, consumed: &[Read], topic: &str) -> ConsumedReport {
        let inner = self.lock();
        check_consumed(&inner.attempts, &inner.reads, consumed, topic)
    }

    /// Judges the history (see [`Report`]); `gap` is the shortest pause between successive
    /// acknowledgements counted as unavailability.
    pub fn check(&self, gap: Duration) -> Report {
        let inner = self.lock();
        check(&inner.attempts, &inner.reads, gap)
    }
}

/// A finding about one value, with where it was seen.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The value concerned.
    pub value: String,
    /// What was found, for people.
    pub detail: String,
}

/// Counts and findings of one checked history. Clean means all finding counts are zero.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Report {
    /// Produce attempts recorded, whatever their outcome.
    pub attempted: usize,
    /// Attempts with an [`Outcome::Ok`]: each must be read exactly once.
    pub acknowledged: usize,
    /// Attempts that definitely failed.
    pub failed: usize,
    /// Attempts with unknown outcome (including ones still pending).
    pub unknown: usize,
    /// Distinct (partition, offset) positions read.
    pub read: usize,
    /// Acknowledged, never read.
    pub lost: usize,
    /// Read at more than one offset.
    pub duplicated: usize,
    /// Within a partition, read after a value its writer sent later.
    pub reordered: usize,
    /// Read but never attempted (or not a workload value).
    pub unexpected: usize,
    /// Definitely failed, yet read.
    pub failed_but_visible: usize,
    /// Acknowledged at one offset, read only at others.
    pub moved: usize,
    /// One (partition, offset) read with two different values (reads disagree).
    pub conflicting: usize,
    /// Unknown outcomes that were read (informational: they were in fact written).
    pub unknown_visible: usize,
    /// Seconds in pauses of at least `gap` between successive acknowledgements (and from the
    /// first send to the first acknowledgement): how long writes were unavailable.
    pub unavailable_secs: f64,
    /// The longest such pause, in seconds.
    pub longest_gap_secs: f64,
    /// Examples of each finding kind, at most a few each.
    pub examples: BTreeMap<&'static str, Vec<Finding>>,
}

impl Report {
    /// True when nothing was lost, duplicated, reordered, moved, conflicting, unexpected or
    /// visible after a definite failure.
    pub fn is_clean(&self) -> bool {
        self.lost == 0
            && self.duplicated == 0
            && self.reordered == 0
            && self.unexpected == 0
            && self.failed_but_visible == 0
            && self.moved == 0
            && self.conflicting == 0
    }

    fn note(&mut self, kind: &'static str, value: &str, detail: String) {
        note(&mut self.examples, kind, value, detail);
    }
}

/// Keeps up to [`EXAMPLES`] findings of each kind, for a report to show.
fn note(
    examples: &mut BTreeMap<&'static str, Vec<Finding>>,
    kind: &'static str,
    value: &str,
    detail: String,
) {
    let list = examples.entry(kind).or_default();
    if list.len() < EXAMPLES {
        list.push(Finding {
            value: value.to_owned(),
            detail,
        });
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "attempted {} | acknowledged {} | failed {} | unknown {} (read {}) | read {}",
            self.attempted,
            self.acknowledged,
            self.failed,
            self.unknown,
            self.unknown_visible,
            self.read
        )?;
        writeln!(
            f,
            "lost {} | duplicated {} | reordered {} | unexpected {} | failed-but-visible {} | moved {} | conflicting {}",
            self.lost,
            self.duplicated,
            self.reordered,
            self.unexpected,
            self.failed_but_visible,
            self.moved,
            self.conflicting
        )?;
        write!(
            f,
            "unavailable {:.1} s (longest pause {:.1} s) — {}",
            self.unavailable_secs,
            self.longest_gap_secs,
            if self.is_clean() { "CLEAN" } else { "FINDINGS" }
        )?;
        for (kind, list) in &self.examples {
            for e in list {
                write!(f, "\n  {kind}: {} — {}", e.value, e.detail)?;
            }
        }
        Ok(())
    }
}

/// What a consumer group was given while faults happened, judged against the history and the
/// final full read of the topic. A group promises at least once: every record below the end
/// reaches some member, possibly more than once (after a rebalance or a member's restart the
/// next one starts at the last committed offset).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConsumedReport {
    /// Records delivered to the members, repeats included.
    pub delivered: usize,
    /// Distinct (partition, offset) positions delivered.
    pub distinct: usize,
    /// Deliveries of a position delivered before (allowed: at least once).
    pub redelivered: usize,
    /// Positions the final read holds that no member was given.
    pub skipped: usize,
    /// Acknowledged records no member was given.
    pub acknowledged_not_delivered: usize,
    /// Positions delivered with another value than the final read found there.
    pub conflicting: usize,
    /// Examples of each finding kind, at most a few each.
    pub examples: BTreeMap<&'static str, Vec<Finding>>,
}

impl ConsumedReport {
    /// True when nothing was skipped, every acknowledged record was delivered, and no delivered
    /// record disagrees with the log.
    pub fn is_clean(&self) -> bool {
        self.skipped == 0 && self.acknowledged_not_delivered == 0 && self.conflicting == 0
    }

    fn note(&mut self, kind: &'static str, value: &str, detail: String) {
        note(&mut self.examples, kind, value, detail);
    }
}

impl fmt::Display for ConsumedReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "group: delivered {} ({} distinct, {} redelivered) | skipped {} | acknowledged not delivered {} | conflicting {} — {}",
            self.delivered,
            self.distinct,
            self.redelivered,
            self.skipped,
            self.acknowledged_not_delivered,
            self.conflicting,
            if self.is_clean() { "CLEAN" } else { "FINDINGS" }
        )?;
        for (kind, list) in &self.examples {
            for e in list {
                write!(f, "\n  {kind}: {} — {}", e.value, e.detail)?;
            }
        }
        Ok(())
    }
}

/// Judges what a consumer group was given (`consumed`, from the members) against the attempts
/// and the final full read `reads` (which covers the topic up to its end). Only records of
/// `topic` count.
pub fn check_consumed(
    attempts: &[Attempt],
    reads: &[Read],
    consumed: &[Read],
    topic: &str,
) -> ConsumedReport {
    let mut r = ConsumedReport::default();
    let log: BTreeMap<(i32, i64), &str> = reads
        .iter()
        .filter(|rd| rd.topic == topic)
        .map(|rd| ((rd.partition, rd.offset), rd.value.as_str()))
        .collect();
    let mut given: BTreeMap<(i32, i64), &str> = BTreeMap::new();
    for c in consumed.iter().filter(|c| c.topic == topic) {
        r.delivered += 1;
        let at = (c.partition, c.offset);
        if given.insert(at, c.value.as_str()).is_some() {
            r.redelivered += 1;
        }
        if let Some(v) = log.get(&at)
            && *v != c.value
        {
            r.conflicting += 1;
            r.note(
                "conflicting",
                &c.value,
                format!(
                    "{topic}-{} offset {}: a member was given {:?}, the log holds {v:?}",
                    c.partition, c.offset, c.value
                ),
            );
        }
    }
    r.distinct = given.len();
    for (&(p, o), &v) in &log {
        if !given.contains_key(&(p, o)) {
            r.skipped += 1;
            r.note(
                "skipped",
                v,
                format!("{topic}-{p} offset {o} was never given to a member"),
            );
        }
    }
    let values: std::collections::HashSet<&str> = given.values().copied().collect();
    for a in attempts.iter().filter(|a| a.topic == topic) {
        if let Outcome::Ok { partition, offset } = a.outcome
            && !values.contains(a.value.as_str())
        {
            r.acknowledged_not_delivered += 1;
            r.note(
                "acknowledged-not-delivered",
                &a.value,
                format!(
                    "acknowledged at {topic}-{partition} offset {offset}, never given to a member"
                ),
            );
        }
    }
    r
}

/// Judges `attempts` against `reads`. Pure, so it can be tested on hand-made histories.
pub fn check(attempts: &[Attempt], reads: &[Read], gap: Duration) -> Report {
    let mut r = Report {
        attempted: attempts.len(),
        ..Report::default()
    };
    let by_value: HashMap<&str, &Attempt> =
        attempts.iter().map(|a| (a.value.as_str(), a)).collect();
    for a in attempts {
        match a.outcome {
            Outcome::Ok { .. } => r.acknowledged += 1,
            Outcome::Failed { .. } => r.failed += 1,
            Outcome::Unknown { .. } | Outcome::Pending => r.unknown += 1,
        }
    }

    // Distinct positions: reading one offset twice is not a duplicate, two values there is a
    // conflict.
    let mut at: BTreeMap<(&str, i32, i64), &str> = BTreeMap::new();
    for rd in reads {
        let key = (rd.topic.as_str(), rd.partition, rd.offset);
        match at.get(&key) {
            Some(v) if *v != rd.value => {
                r.conflicting += 1;
                let detail = format!(
                    "{}-{} offset {} read as {v:?} and as {:?}",
                    rd.topic, rd.partition, rd.offset, rd.value
                );
                r.note("conflicting", &rd.value, detail);
            }
            Some(_) => {}
            None => {
                at.insert(key, rd.value.as_str());
            }
        }
    }
    r.read = at.len();

    // Where each value was read.
    let mut seen: HashMap<&str, Vec<(&str, i32, i64)>> = HashMap::new();
    for (&(topic, p, o), &v) in &at {
        seen.entry(v).or_default().push((topic, p, o));
    }
    for (&v, places) in &seen {
        let Some(a) = by_value.get(v) else {
            r.unexpected += 1;
            let (t, p, o) = places[0];
            r.note(
                "unexpected",
                v,
                format!("read at {t}-{p} offset {o}, never written"),
            );
            continue;
        };
        if places.len() > 1 {
            r.duplicated += 1;
            r.note("duplicated", v, format!("read at {places:?}"));
        }
        match &a.outcome {
            Outcome::Failed { error } => {
                r.failed_but_visible += 1;
                r.note(
                    "failed-but-visible",
                    v,
                    format!("failed ({error}) yet read at {places:?}"),
                );
            }
            Outcome::Ok { partition, offset } => {
                if !places
                    .iter()
                    .any(|&(t, p, o)| t == a.topic && p == *partition && o == *offset)
                {
                    r.moved += 1;
                    r.note(
                        "moved",
                        v,
                        format!("acknowledged at {partition}/{offset}, read at {places:?}"),
                    );
                }
            }
            Outcome::Unknown { .. } | Outcome::Pending => r.unknown_visible += 1,
        }
    }
    for a in attempts {
        if let Outcome::Ok { partition, offset } = a.outcome
            && !seen.contains_key(a.value.as_str())
        {
            r.lost += 1;
            r.note(
                "lost",
                &a.value,
                format!(
                    "acknowledged at {}-{partition} offset {offset}, never read",
                    a.topic
                ),
            );
        }
    }

    // Order: per partition and writer, the first copy of each value must come in send order
    // (one producer, one partition: Kafka stores records in send order, retries included).
    let mut first: HashMap<&str, (&str, i32, i64)> = HashMap::new();
    for (&(t, p, o), &v) in &at {
        first.entry(v).or_insert((t, p, o));
    }
    // (topic, partition, writer) → (offset, seq, value) of each first copy.
    type Lane<'a> = Vec<(i64, u64, &'a str)>;
    let mut lanes: BTreeMap<(&str, i32, u32), Lane<'_>> = BTreeMap::new();
    for (&v, &(t, p, o)) in &first {
        if let Some(a) = by_value.get(v) {
            lanes
                .entry((t, p, a.writer))
                .or_default()
                .push((o, a.seq, v));
        }
    }
    for ((t, p, w), mut lane) in lanes {
        lane.sort_unstable();
        let mut max: Option<(u64, i64, &str)> = None;
        for (o, seq, v) in lane {
            match max {
                Some((mseq, mo, mv)) if seq < mseq => {
                    r.reordered += 1;
                    r.note(
                        "reordered",
                        v,
                        format!(
                            "writer {w} on {t}-{p}: read at offset {o}, after {mv} (sent later) at offset {mo}"
                        ),
                    );
                }
                _ => max = Some((seq, o, v)),
            }
        }
    }

    // Unavailability: pauses between acknowledgements, from the first send on.
    let mut acks: Vec<Duration> = attempts
        .iter()
        .filter(|a| matches!(a.outcome, Outcome::Ok { .. }))
        .filter_map(|a| a.completed_at)
        .collect();
    acks.sort_unstable();
    let mut last = attempts.iter().map(|a| a.sent_at).min();
    let until = attempts
        .iter()
        .filter_map(|a| a.completed_at)
        .chain(attempts.iter().map(|a| a.sent_at))
        .max();
    if let Some(end) = until {
        acks.push(end);
    }
    for t in acks {
        if let Some(prev) = last {
            let pause = t.saturating_sub(prev);
            if pause >= gap {
                r.unavailable_secs += pause.as_secs_f64();
                r.longest_gap_secs = r.longest_gap_secs.max(pause.as_secs_f64());
            }
        }
        last = Some(t);
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attempt(writer: u32, seq: u64, outcome: Outcome) -> Attempt {
        Attempt {
            value: value_of(writer, seq),
            writer,
            seq,
            topic: "t".into(),
            partition: Some(0),
            outcome,
            sent_at: Duration::from_millis(seq * 10),
            completed_at: Some(Duration::from_millis(seq * 10 + 5)),
        }
    }

    fn ok(writer: u32, seq: u64, offset: i64) -> Attempt {
        attempt(
            writer,
            seq,
            Outcome::Ok {
                partition: 0,
                offset,
            },
        )
    }

    fn read(offset: i64, value: &str) -> Read {
        Read {
            topic: "t".into(),
            partition: 0,
            offset,
            value: value.into(),
        }
    }

    const GAP: Duration = Duration::from_secs(1);

    #[test]
    fn a_clean_history_is_clean() {
        let attempts = vec![
            ok(1, 0, 0),
            ok(2, 0, 1),
            ok(1, 1, 2),
            attempt(
                1,
                2,
                Outcome::Unknown {
                    error: "timeout".into(),
                },
            ),
            attempt(
                1,
                3,
                Outcome::Unknown {
                    error: "timeout".into(),
                },
            ),
            attempt(
                2,
                1,
                Outcome::Failed {
                    error: "NOT_ENOUGH_REPLICAS".into(),
                },
            ),
        ];
        // w1-2 (unknown) made it, w1-3 (unknown) did not: both fine. Offset 0 read twice.
        let reads = vec![
            read(0, "w1-0"),
            read(0, "w1-0"),
            read(1, "w2-0"),
            read(2, "w1-1"),
            read(3, "w1-2"),
        ];
        let r = check(&attempts, &reads, GAP);
        assert!(r.is_clean(), "{r}");
        assert_eq!(
            (r.attempted, r.acknowledged, r.failed, r.unknown, r.read),
            (6, 3, 1, 2, 4)
        );
        assert_eq!(r.unknown_visible, 1);
        assert_eq!(r.unavailable_secs, 0.0);
    }

    #[test]
    fn a_lost_acknowledged_record_is_found() {
        let attempts = vec![ok(1, 0, 0), ok(1, 1, 1)];
        let r = check(&attempts, &[read(0, "w1-0")], GAP);
        assert_eq!(r.lost, 1, "{r}");
        assert_eq!(r.examples["lost"][0].value, "w1-1");
        assert!(!r.is_clean());
    }

    #[test]
    fn a_duplicate_is_found_and_not_taken_for_a_reorder() {
        // A retried batch after a lost answer: w1-0 w1-1 w1-0 w1-1.
        let attempts = vec![ok(1, 0, 2), ok(1, 1, 3)];
        let reads = vec![
            read(0, "w1-0"),
            read(1, "w1-1"),
            read(2, "w1-0"),
            read(3, "w1-1"),
        ];
        let r = check(&attempts, &reads, GAP);
        assert_eq!(r.duplicated, 2, "{r}");
        assert_eq!(r.reordered, 0, "{r}");
        assert_eq!(r.moved, 0, "read at the acknowledged offsets too: {r}");
    }

    #[test]
    fn a_reorder_within_a_writer_and_partition_is_found() {
        let attempts = vec![ok(1, 0, 1), ok(1, 1, 0), ok(2, 0, 2)];
        let reads = vec![read(0, "w1-1"), read(1, "w1-0"), read(2, "w2-0")];
        let r = check(&attempts, &reads, GAP);
        assert_eq!(r.reordered, 1, "{r}");
        assert_eq!(r.examples["reordered"][0].value, "w1-0");
        // Different writers interleave freely, and different partitions are separate lanes.
        let attempts = vec![ok(1, 1, 0), ok(2, 0, 1)];
        let r = check(&attempts, &[read(0, "w1-1"), read(1, "w2-0")], GAP);
        assert!(r.is_clean(), "{r}");
    }

    #[test]
    fn an_unexpected_record_is_found() {
        let r = check(&[ok(1, 0, 0)], &[read(0, "w1-0"), read(1, "garbage")], GAP);
        assert_eq!(r.unexpected, 1, "{r}");
        assert!(!r.is_clean());
    }

    #[test]
    fn a_failed_write_that_is_visible_is_found() {
        let attempts = vec![attempt(
            1,
            0,
            Outcome::Failed {
                error: "NOT_ENOUGH_REPLICAS".into(),
            },
        )];
        let r = check(&attempts, &[read(0, "w1-0")], GAP);
        assert_eq!(r.failed_but_visible, 1, "{r}");
        assert!(!r.is_clean());
    }

    #[test]
    fn an_acknowledged_record_read_at_another_offset_is_found() {
        let r = check(&[ok(1, 0, 5)], &[read(7, "w1-0")], GAP);
        assert_eq!(r.moved, 1, "{r}");
        assert_eq!(r.lost, 0);
        // Another partition is also another place.
        let mut a = ok(1, 0, 5);
        a.outcome = Outcome::Ok {
            partition: 1,
            offset: 5,
        };
        let r = check(&[a], &[read(5, "w1-0")], GAP);
        assert_eq!(r.moved, 1, "{r}");
    }

    #[test]
    fn two_values_at_one_offset_conflict() {
        let attempts = vec![
            ok(1, 0, 0),
            attempt(1, 1, Outcome::Unknown { error: "x".into() }),
        ];
        let r = check(&attempts, &[read(0, "w1-0"), read(0, "w1-1")], GAP);
        assert_eq!(r.conflicting, 1, "{r}");
    }

    #[test]
    fn pauses_between_acknowledgements_count_as_unavailable() {
        let mut a = ok(1, 0, 0);
        a.sent_at = Duration::ZERO;
        a.completed_at = Some(Duration::from_millis(100));
        let mut b = ok(1, 1, 1);
        b.sent_at = Duration::from_millis(200);
        b.completed_at = Some(Duration::from_millis(3200));
        let r = check(&[a, b], &[read(0, "w1-0"), read(1, "w1-1")], GAP);
        assert!((r.unavailable_secs - 3.1).abs() < 1e-9, "{r}");
        assert!((r.longest_gap_secs - 3.1).abs() < 1e-9, "{r}");
    }

    #[test]
    fn a_group_must_be_given_every_record_at_least_once() {
        let attempts = vec![ok(1, 0, 0), ok(1, 1, 1), ok(1, 2, 2)];
        let log = vec![read(0, "w1-0"), read(1, "w1-1"), read(2, "w1-2")];
        // Offset 1 twice (a restart from the committed offset) is fine.
        let given = vec![
            read(0, "w1-0"),
            read(1, "w1-1"),
            read(1, "w1-1"),
            read(2, "w1-2"),
        ];
        let r = check_consumed(&attempts, &log, &given, "t");
        assert!(r.is_clean(), "{r}");
        assert_eq!((r.delivered, r.distinct, r.redelivered), (4, 3, 1));
        // Offset 1 never given: skipped, and an acknowledged record not delivered.
        let r = check_consumed(&attempts, &log, &[read(0, "w1-0"), read(2, "w1-2")], "t");
        assert_eq!((r.skipped, r.acknowledged_not_delivered), (1, 1), "{r}");
        assert_eq!(r.examples["skipped"][0].value, "w1-1");
        // A member given another value than the log holds.
        let r = check_consumed(
            &attempts,
            &log,
            &[read(0, "w1-0"), read(1, "w1-2"), read(2, "w1-2")],
            "t",
        );
        assert_eq!(r.conflicting, 1, "{r}");
        assert!(!r.is_clean());
    }

    #[test]
    fn the_recorder_records_outcomes() {
        let h = History::new();
        let (id, v) = h.attempt(3, 9, "t", Some(0));
        assert_eq!(v, "w3-9");
        h.complete(
            id,
            Outcome::Ok {
                partition: 0,
                offset: 0,
            },
        );
        h.read(read(0, "w3-9"));
        let r = h.check(GAP);
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.acknowledged, 1);
    }
}
