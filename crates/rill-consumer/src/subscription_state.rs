//! What the consumer reads (Kafka's `SubscriptionState`): the subscription (topics or a
//! pattern, with a group) or the manual assignment, and for every assigned partition its fetch
//! position, the leader epoch of the last record returned and whether it is paused.
//!
//! A partition's position here is its consumed position: it moves only when `poll` hands
//! records to the application (the fetcher keeps where its next fetch starts, past records it
//! buffered), so it is exactly what was consumed and is what a commit stores.

use std::collections::{BTreeMap, BTreeSet};

use regex::Regex;

use crate::{ConsumerError, TopicPartition};

/// What a group consumer subscribed to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Subscription {
    /// These topics, by name.
    Topics(BTreeSet<String>),
    /// Every topic whose whole name matches this regular expression (Rust `regex` syntax),
    /// evaluated by the coordinator as topics come and go.
    Pattern(String),
}

/// Where fetching of a partition stands (Kafka's `FetchStates`, without validation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FetchState {
    /// Newly assigned: the group's committed offset is looked up first (with a group.id).
    Initializing,
    /// No committed offset, or the position fell out of the log: `auto.offset.reset` decides.
    AwaitReset,
    /// Fetching from this offset.
    At(i64),
}

#[derive(Clone, Copy, Debug)]
struct PartitionState {
    fetch: FetchState,
    /// The leader epoch of the batch holding the last record returned, -1 when unknown.
    last_epoch: i32,
    paused: bool,
    /// Being given up (its revocation waits for the commit before it): not fetched, nothing
    /// of it returned.
    pending_revocation: bool,
    /// Tells this assignment of the partition from an earlier one (revoked and assigned
    /// again), so a lookup started for the earlier one is not applied to it.
    incarnation: u64,
}

impl PartitionState {
    fn new(incarnation: u64) -> Self {
        PartitionState {
            fetch: FetchState::Initializing,
            last_epoch: -1,
            paused: false,
            pending_revocation: false,
            incarnation,
        }
    }
}

#[derive(Debug, Default)]
enum Mode {
    #[default]
    None,
    /// `assign`: the application chose the partitions.
    Assigned,
    /// `subscribe`: the group coordinator chooses them.
    Subscribed {
        subscription: Subscription,
        /// The pattern anchored to match whole topic names.
        pattern: Option<Regex>,
    },
}

/// The assigned partitions and their positions; see the module docs.
#[derive(Debug, Default)]
pub(crate) struct SubscriptionState {
    mode: Mode,
    partitions: BTreeMap<TopicPartition, PartitionState>,
    /// The incarnation of the next partition added.
    next_incarnation: u64,
}

/// Compiles a subscription pattern so it matches whole topic names, as the coordinator
/// evaluates it.
pub(crate) fn compile_pattern(pattern: &str) -> Result<Regex, ConsumerError> {
    Regex::new(&format!("^(?:{pattern})$")).map_err(|e| {
        ConsumerError::IllegalState(format!("invalid subscription pattern {pattern:?}: {e}"))
    })
}

impl SubscriptionState {
    /// Replaces a manual assignment; positions of partitions that stay are kept. Refused while
    /// subscribed (the coordinator owns the assignment then).
    pub fn assign(
        &mut self,
        partitions: impl IntoIterator<Item = TopicPartition>,
    ) -> Result<(), ConsumerError> {
        if matches!(self.mode, Mode::Subscribed { .. }) {
            return Err(ConsumerError::IllegalState(
                "assign() while subscribed to a group: call unsubscribe() first".into(),
            ));
        }
        let mut old = std::mem::take(&mut self.partitions);
        for tp in partitions {
            // Named twice: the first keeps its state (a set, as Kafka's `assign`).
            if self.partitions.contains_key(&tp) {
                continue;
            }
            let s = match old.remove(&tp) {
                Some(s) => s,
                None => self.new_partition(),
            };
            self.partitions.insert(tp, s);
        }
        self.mode = if self.partitions.is_empty() {
            Mode::None
        } else {
            Mode::Assigned
        };
        Ok(())
    }

    /// Sets the subscription (replacing an earlier one; owned partitions stay until the
    /// coordinator revokes them). Refused while partitions are assigned manually.
    pub fn subscribe(&mut self, subscription: Subscription) -> Result<(), ConsumerError> {
        if matches!(self.mode, Mode::Assigned) {
            return Err(ConsumerError::IllegalState(
                "subscribe() while partitions are assigned with assign(): call unsubscribe() first"
                    .into(),
            ));
        }
        let pattern = match &subscription {
            Subscription::Pattern(p) => Some(compile_pattern(p)?),
            Subscription::Topics(_) => None,
        };
        self.mode = Mode::Subscribed {
            subscription,
            pattern,
        };
        Ok(())
    }

    /// Forgets the subscription or assignment and every position.
    pub fn unsubscribe(&mut self) {
        self.mode = Mode::None;
        self.partitions.clear();
    }

    pub fn is_subscribed(&self) -> bool {
        matches!(self.mode, Mode::Subscribed { .. })
    }

    pub fn subscription(&self) -> Option<&Subscription> {
        match &self.mode {
            Mode::Subscribed { subscription, .. } => Some(subscription),
            _ => None,
        }
    }

    /// The assigned (owned) partitions, in order.
    pub fn assigned(&self) -> BTreeSet<TopicPartition> {
        self.partitions.keys().cloned().collect()
    }

    pub fn is_assigned(&self, tp: &TopicPartition) -> bool {
        self.partitions.contains_key(tp)
    }

    fn new_partition(&mut self) -> PartitionState {
        self.next_incarnation += 1;
        PartitionState::new(self.next_incarnation)
    }

    /// Adds a partition the coordinator gave this member; its position is looked up next.
    pub fn add_owned(&mut self, tp: TopicPartition) {
        if !self.partitions.contains_key(&tp) {
            let s = self.new_partition();
            self.partitions.insert(tp, s);
        }
    }

    /// Which assignment of `tp` this is (see `PartitionState::incarnation`).
    pub fn incarnation(&self, tp: &TopicPartition) -> Option<u64> {
        self.partitions.get(tp).map(|s| s.incarnation)
    }

    /// Marks `tp` as being given up: it is not fetched and nothing of it is returned any
    /// more. True when it was not marked yet.
    pub fn mark_pending_revocation(&mut self, tp: &TopicPartition) -> bool {
        match self.partitions.get_mut(tp) {
            Some(s) if !s.pending_revocation => {
                s.pending_revocation = true;
                true
            }
            _ => false,
        }
    }

    /// Ends the pending revocation of every partition but `keep` (the coordinator's target
    /// changed back meanwhile).
    pub fn keep_pending_revocation(&mut self, keep: &[TopicPartition]) {
        for (tp, s) in &mut self.partitions {
            if s.pending_revocation && !keep.contains(tp) {
                s.pending_revocation = false;
            }
        }
    }

    /// Drops a partition (revoked or lost): nothing of it is fetched or returned any more.
    pub fn remove(&mut self, tp: &TopicPartition) {
        self.partitions.remove(tp);
    }

    /// Drops every partition, keeping the subscription (partitions lost).
    pub fn clear_partitions(&mut self) {
        self.partitions.clear();
    }

    /// The next offset `poll` returns for `tp`, when known.
    pub fn position(&self, tp: &TopicPartition) -> Option<i64> {
        match self.partitions.get(tp)?.fetch {
            FetchState::At(p) => Some(p),
            _ => None,
        }
    }

    #[cfg(test)]
    pub fn fetch_state(&self, tp: &TopicPartition) -> Option<FetchState> {
        self.partitions.get(tp).map(|s| s.fetch)
    }

    /// Sets where `tp` stands; false (and nothing changes) when it is not assigned.
    pub fn set_fetch_state(&mut self, tp: &TopicPartition, fetch: FetchState) -> bool {
        match self.partitions.get_mut(tp) {
            Some(s) => {
                s.fetch = fetch;
                if !matches!(fetch, FetchState::At(_)) {
                    s.last_epoch = -1;
                }
                true
            }
            None => false,
        }
    }

    /// The leader epoch of the batch holding the record before `tp`'s position, -1 when
    /// unknown: sent with its fetches, so the leader can tell when that record is no longer in
    /// its log (KIP-320).
    pub fn last_epoch(&self, tp: &TopicPartition) -> i32 {
        self.partitions.get(tp).map_or(-1, |s| s.last_epoch)
    }

    /// Moves `tp` to `offset` once the records before it were handed to the application (or
    /// there were none), remembering the leader epoch of the last batch (-1 keeps the one
    /// known).
    pub fn advance(&mut self, tp: &TopicPartition, offset: i64, last_epoch: i32) {
        if let Some(s) = self.partitions.get_mut(tp) {
            s.fetch = FetchState::At(offset);
            if last_epoch >= 0 {
                s.last_epoch = last_epoch;
            }
        }
    }

    /// A seek: `tp` continues from `offset`. False when `tp` is not assigned.
    pub fn seek(&mut self, tp: &TopicPartition, offset: i64) -> bool {
        self.seek_with_epoch(tp, offset, -1)
    }

    /// A seek to a position whose leader epoch is known (a committed offset's): committing
    /// the position again before anything is consumed keeps that epoch (Kafka's
    /// `refreshCommittedOffsets`). False when `tp` is not assigned.
    pub fn seek_with_epoch(&mut self, tp: &TopicPartition, offset: i64, last_epoch: i32) -> bool {
        match self.partitions.get_mut(tp) {
            Some(s) => {
                s.fetch = FetchState::At(offset);
                s.last_epoch = last_epoch;
                true
            }
            None => false,
        }
    }

    /// Partitions in `state` (e.g. those whose committed offset is to be looked up).
    pub fn in_state(&self, state: FetchState) -> Vec<TopicPartition> {
        self.partitions
            .iter()
            .filter(|(_, s)| s.fetch == state)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// True when `tp` is still the assignment `incarnation` and in `state`: a lookup started
    /// for it then may be applied.
    pub fn still(&self, tp: &TopicPartition, incarnation: u64, state: FetchState) -> bool {
        self.partitions
            .get(tp)
            .is_some_and(|s| s.incarnation == incarnation && s.fetch == state)
    }

    pub fn pause(&mut self, tp: &TopicPartition) -> bool {
        self.partitions
            .get_mut(tp)
            .map(|s| s.paused = true)
            .is_some()
    }

    pub fn resume(&mut self, tp: &TopicPartition) -> bool {
        self.partitions
            .get_mut(tp)
            .map(|s| s.paused = false)
            .is_some()
    }

    pub fn paused(&self) -> Vec<TopicPartition> {
        self.partitions
            .iter()
            .filter(|(_, s)| s.paused)
            .map(|(tp, _)| tp.clone())
            .collect()
    }

    /// True when `tp` may be fetched now: assigned, positioned, not paused, not being given
    /// up, and (subscribed)
    /// of a topic still subscribed — partitions of topics dropped from the subscription wait
    /// for the coordinator to revoke them without being read.
    pub fn is_fetchable(&self, tp: &TopicPartition) -> bool {
        let Some(s) = self.partitions.get(tp) else {
            return false;
        };
        if s.paused || s.pending_revocation || !matches!(s.fetch, FetchState::At(_)) {
            return false;
        }
        match &self.mode {
            Mode::Subscribed {
                subscription: Subscription::Topics(t),
                ..
            } => t.contains(&tp.topic),
            Mode::Subscribed {
                pattern: Some(p), ..
            } => p.is_match(&tp.topic),
            _ => true,
        }
    }

    /// Fetchable partitions and their positions.
    pub fn fetchable(&self) -> Vec<(TopicPartition, i64)> {
        self.partitions
            .keys()
            .filter(|tp| self.is_fetchable(tp))
            .filter_map(|tp| self.position(tp).map(|p| (tp.clone(), p)))
            .collect()
    }

    /// The consumed position and leader epoch of every positioned partition: what a commit of
    /// "everything consumed" stores.
    pub fn consumed(&self) -> BTreeMap<TopicPartition, (i64, i32)> {
        self.partitions
            .iter()
            .filter_map(|(tp, s)| match s.fetch {
                FetchState::At(p) => Some((tp.clone(), (p, s.last_epoch))),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tp(t: &str, p: i32) -> TopicPartition {
        TopicPartition::new(t, p)
    }

    #[test]
    fn assign_and_subscribe_exclude_each_other() {
        let mut s = SubscriptionState::default();
        s.assign([tp("a", 0)]).unwrap();
        assert!(matches!(
            s.subscribe(Subscription::Pattern("a.*".into())),
            Err(ConsumerError::IllegalState(_))
        ));
        s.unsubscribe();
        s.subscribe(Subscription::Topics(["a".to_string()].into()))
            .unwrap();
        assert!(s.assign([tp("a", 0)]).is_err());
    }

    #[test]
    fn assign_keeps_positions_of_partitions_that_stay() {
        let mut s = SubscriptionState::default();
        s.assign([tp("a", 0), tp("a", 1)]).unwrap();
        assert!(s.seek(&tp("a", 0), 7));
        s.assign([tp("a", 0), tp("a", 2)]).unwrap();
        assert_eq!(s.position(&tp("a", 0)), Some(7));
        assert_eq!(s.fetch_state(&tp("a", 2)), Some(FetchState::Initializing));
        assert!(!s.seek(&tp("a", 1), 3), "not assigned any more");
        // A partition named twice keeps its position (a set, as Kafka's `assign`).
        s.assign([tp("a", 0), tp("a", 0)]).unwrap();
        assert_eq!(s.position(&tp("a", 0)), Some(7));
        // A committed offset's epoch is what the position is committed with until a record is
        // consumed.
        assert!(s.seek_with_epoch(&tp("a", 0), 10, 5));
        assert_eq!(s.consumed().get(&tp("a", 0)), Some(&(10, 5)));
    }

    #[test]
    fn only_positioned_unpaused_subscribed_partitions_are_fetched() {
        let mut s = SubscriptionState::default();
        s.subscribe(Subscription::Pattern("orders-.*".into()))
            .unwrap();
        for t in ["orders-eu", "orders-us", "other"] {
            s.add_owned(tp(t, 0));
            s.seek(&tp(t, 0), 1);
        }
        s.add_owned(tp("orders-x", 0));
        s.pause(&tp("orders-us", 0));
        assert_eq!(s.fetchable(), vec![(tp("orders-eu", 0), 1)]);
        s.resume(&tp("orders-us", 0));
        assert_eq!(s.fetchable().len(), 2);
        // The pattern matches whole names only.
        assert!(compile_pattern("orders").unwrap().is_match("orders"));
        assert!(!compile_pattern("orders").unwrap().is_match("orders-eu"));
        assert!(compile_pattern("(").is_err());
    }

    #[test]
    fn a_partition_assigned_again_is_a_new_incarnation_and_one_being_revoked_is_not_fetched() {
        let mut s = SubscriptionState::default();
        s.subscribe(Subscription::Topics(["a".to_string()].into()))
            .unwrap();
        s.add_owned(tp("a", 0));
        s.add_owned(tp("a", 1));
        let first = s.incarnation(&tp("a", 0)).unwrap();
        s.add_owned(tp("a", 0));
        assert_eq!(s.incarnation(&tp("a", 0)), Some(first), "still the same");
        assert!(s.still(&tp("a", 0), first, FetchState::Initializing));
        s.remove(&tp("a", 0));
        s.add_owned(tp("a", 0));
        assert!(!s.still(&tp("a", 0), first, FetchState::Initializing));

        s.seek(&tp("a", 0), 3);
        s.seek(&tp("a", 1), 4);
        assert!(s.mark_pending_revocation(&tp("a", 0)));
        assert!(!s.mark_pending_revocation(&tp("a", 0)));
        assert_eq!(s.fetchable(), vec![(tp("a", 1), 4)]);
        assert_eq!(s.consumed().len(), 2, "its position is still committed");
        s.keep_pending_revocation(&[]);
        assert_eq!(s.fetchable().len(), 2);
    }

    #[test]
    fn consumed_positions_carry_the_last_epoch() {
        let mut s = SubscriptionState::default();
        s.assign([tp("a", 0), tp("a", 1)]).unwrap();
        s.seek(&tp("a", 0), 5);
        s.advance(&tp("a", 0), 9, 3);
        assert_eq!(
            s.consumed(),
            [(tp("a", 0), (9, 3))]
                .into_iter()
                .collect::<BTreeMap<_, _>>()
        );
    }
}
