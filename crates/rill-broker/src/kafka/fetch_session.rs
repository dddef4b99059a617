//! Fetch sessions (KIP-227, Kafka's `FetchSession.scala`): a consumer's full fetch (session id
//! 0, epoch 0) creates a session holding its partitions and their fetch positions; its next
//! fetches (the session's id and epoch 1, 2, …) are incremental: they name only the partitions
//! whose fetch position changed, added ones and `forgotten_topics_data`, and the answer carries
//! only the partitions with something new (records, a moved high watermark or log start
//! offset, an error). A session's epoch moves by one per fetch, so a repeated or lost fetch is
//! noticed (INVALID_FETCH_SESSION_EPOCH); a session not (or no longer) in the cache gets
//! FETCH_SESSION_ID_NOT_FOUND and the client starts over with a full fetch. Epoch -1 is a
//! sessionless fetch (and closes the session named). At most
//! `max.incremental.fetch.session.cache.slots` sessions are kept. When all are taken, a new
//! session evicts one unused for [`EVICTION_AFTER`], else the smallest if the new one has more
//! partitions, else gets none (its client fetches without a session) — Kafka's
//! `FetchSessionCache.tryEvict`, so busy sessions do not evict each other in turn.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use rill_protocol::proto as rp;
use uuid::Uuid;

/// Kafka's INVALID_FETCH_SESSION_EPOCH.
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;
/// Kafka's FETCH_SESSION_TOPIC_ID_ERROR: a session created with topic ids (Fetch v13+) used
/// with names, or the other way round.
pub const FETCH_SESSION_TOPIC_ID_ERROR: i16 = 106;
/// Kafka's FETCH_SESSION_ID_NOT_FOUND.
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;

/// A partition of a session: topic name and index.
pub type Key = (String, i32);

/// What a session remembers of one partition: the client's fetch parameters (from the last
/// request naming it) and what the last answer told the client.
#[derive(Clone, Debug, PartialEq)]
pub struct Cached {
    /// The topic's id (v13+ names topics by id; nil below).
    pub topic_id: Uuid,
    /// Where the client reads from.
    pub fetch_offset: i64,
    /// The client's per-partition byte budget.
    pub partition_max_bytes: i32,
    /// The leader epoch the client knows (-1: none).
    pub current_leader_epoch: i32,
    /// The high watermark the client was last told; -1 after an error, so the partition is
    /// answered again when the error is gone.
    pub high_watermark: i64,
    /// The log start offset the client was last told.
    pub log_start_offset: i64,
}

impl Cached {
    /// A partition as a request names it, not yet answered.
    pub fn requested(
        topic_id: Uuid,
        fetch_offset: i64,
        partition_max_bytes: i32,
        current_leader_epoch: i32,
    ) -> Self {
        Cached {
            topic_id,
            fetch_offset,
            partition_max_bytes,
            current_leader_epoch,
            high_watermark: -1,
            log_start_offset: -1,
        }
    }
}

/// How long a session must have gone unused before any new one may evict it (Kafka's
/// `MIN_INCREMENTAL_FETCH_SESSION_EVICTION_MS`).
pub const EVICTION_AFTER: Duration = Duration::from_secs(120);

struct Session {
    epoch: i32,
    /// Order of last use, for picking the least recently used.
    last_used: u64,
    /// When last used, for [`EVICTION_AFTER`].
    last_used_at: Instant,
    uses_topic_ids: bool,
    /// Fetch order: partitions answered move to the back, so a partition with a lot of data
    /// cannot starve the others of the response's byte budget (as Kafka rotates them).
    order: Vec<Key>,
    partitions: HashMap<Key, Cached>,
}

/// How one fetch is served.
#[derive(Debug, PartialEq)]
pub enum Context {
    /// No session: the request's partitions, every one answered, session id 0.
    Sessionless,
    /// A full fetch that asks for a session: the request's partitions, every one answered;
    /// [`FetchSessions::create`] makes the session from the answer.
    Full,
    /// An incremental fetch of session `id`: read `partitions` (every partition of the session,
    /// in fetch order), then [`FetchSessions::answered`] keeps only what is new.
    Incremental {
        /// The session.
        id: i32,
        /// Its partitions with the client's fetch parameters.
        partitions: Vec<(Key, Cached)>,
    },
    /// The fetch is refused with this top-level error (and session id 0).
    Error(i16),
}

/// The broker's fetch session cache (Kafka's `FetchSessionCache`).
pub struct FetchSessions {
    slots: usize,
    eviction_after: Duration,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    sessions: HashMap<i32, Session>,
    tick: u64,
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }
}

/// The epoch after `epoch` (Kafka's `FetchMetadata.nextEpoch`: 1 after `i32::MAX`).
fn next_epoch(epoch: i32) -> i32 {
    if epoch == i32::MAX { 1 } else { epoch + 1 }
}

impl FetchSessions {
    /// A cache of at most `slots` sessions (0: no sessions, every fetch is a full one).
    pub fn new(slots: usize) -> Self {
        Self::with_eviction_after(slots, EVICTION_AFTER)
    }

    /// [`Self::new`] with another idle time before a session may be evicted (tests).
    fn with_eviction_after(slots: usize, eviction_after: Duration) -> Self {
        FetchSessions {
            slots,
            eviction_after,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// The sessions held now.
    pub fn len(&self) -> usize {
        self.inner.lock().sessions.len()
    }

    /// Whether no session is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How a fetch naming `session_id` and `epoch` is served (Kafka's
    /// `FetchManager.newContext`). `wanted` are the partitions the request names (for an
    /// incremental fetch: added or changed), `forgotten` those it drops; `uses_topic_ids`
    /// whether the request names topics by id (v13+). An incremental fetch moves the session's
    /// epoch on.
    pub fn context(
        &self,
        session_id: i32,
        epoch: i32,
        uses_topic_ids: bool,
        wanted: Vec<(Key, Cached)>,
        forgotten: &[Key],
    ) -> Context {
        let mut inner = self.inner.lock();
        if epoch == 0 || epoch == -1 {
            // A full fetch closes the session it names.
            if session_id != 0 {
                inner.sessions.remove(&session_id);
            }
            return if epoch == -1 || self.slots == 0 {
                Context::Sessionless
            } else {
                Context::Full
            };
        }
        let now = inner.tick();
        let Some(session) = inner.sessions.get_mut(&session_id) else {
            return Context::Error(FETCH_SESSION_ID_NOT_FOUND);
        };
        if session.epoch != epoch {
            return Context::Error(INVALID_FETCH_SESSION_EPOCH);
        }
        if session.uses_topic_ids != uses_topic_ids {
            return Context::Error(FETCH_SESSION_TOPIC_ID_ERROR);
        }
        for (key, asked) in wanted {
            match session.partitions.get_mut(&key) {
                Some(cached) => {
                    cached.topic_id = asked.topic_id;
                    cached.fetch_offset = asked.fetch_offset;
                    cached.partition_max_bytes = asked.partition_max_bytes;
                    cached.current_leader_epoch = asked.current_leader_epoch;
                }
                None => {
                    session.order.push(key.clone());
                    session.partitions.insert(key, asked);
                }
            }
        }
        for key in forgotten {
            session.partitions.remove(key);
        }
        if !forgotten.is_empty() {
            let partitions = &session.partitions;
            session.order.retain(|k| partitions.contains_key(k));
        }
        if session.partitions.is_empty() {
            // Everything forgotten: the session is over, and the fetch reads nothing.
            inner.sessions.remove(&session_id);
            return Context::Sessionless;
        }
        session.last_used = now;
        session.last_used_at = Instant::now();
        session.epoch = next_epoch(session.epoch);
        Context::Incremental {
            id: session_id,
            partitions: session
                .order
                .iter()
                .map(|k| (k.clone(), session.partitions[k].clone()))
                .collect(),
        }
    }

    /// Creates a session of `partitions` (as the full fetch named them, in its order) from the
    /// full fetch's `answer`; its id, or 0 when it gets none (no slots, or a full cache with
    /// nothing it may evict: see the module).
    pub fn create(
        &self,
        partitions: Vec<(Key, Cached)>,
        uses_topic_ids: bool,
        answer: &rp::FetchResponse,
    ) -> i32 {
        if self.slots == 0 {
            return 0;
        }
        let mut by_key: HashMap<Key, Cached> = partitions.iter().cloned().collect();
        for t in &answer.topics {
            for p in &t.partitions {
                if let Some(c) = by_key.get_mut(&(t.name.clone(), p.index)) {
                    remember(c, p);
                }
            }
        }
        let mut seen = HashSet::with_capacity(partitions.len());
        let order: Vec<Key> = partitions
            .into_iter()
            .map(|(k, _)| k)
            .filter(|k| seen.insert(k.clone()))
            .collect();
        let mut inner = self.inner.lock();
        let at = Instant::now();
        while inner.sessions.len() >= self.slots {
            let stale = inner
                .sessions
                .iter()
                .filter(|(_, s)| at.duration_since(s.last_used_at) >= self.eviction_after)
                .min_by_key(|(_, s)| s.last_used)
                .map(|(id, _)| *id);
            let smaller = || {
                inner
                    .sessions
                    .iter()
                    .min_by_key(|(_, s)| (s.partitions.len(), s.last_used))
                    .filter(|(_, s)| s.partitions.len() < order.len())
                    .map(|(id, _)| *id)
            };
            let Some(evicted) = stale.or_else(smaller) else {
                tracing::debug!(
                    partitions = order.len(),
                    "kafka fetch session cache full of busy sessions; fetching without one"
                );
                return 0;
            };
            inner.sessions.remove(&evicted);
            tracing::debug!(
                session = evicted,
                "kafka fetch session evicted (cache full)"
            );
        }
        let id = loop {
            // Random ids, as Kafka's: a client cannot guess another's session.
            let id = (Uuid::new_v4().as_u128() as u32 & 0x7fff_ffff) as i32;
            if id != 0 && !inner.sessions.contains_key(&id) {
                break id;
            }
        };
        let now = inner.tick();
        inner.sessions.insert(
            id,
            Session {
                epoch: 1,
                last_used: now,
                last_used_at: at,
                uses_topic_ids,
                order,
                partitions: by_key,
            },
        );
        id
    }

    /// Keeps of an incremental fetch's `answer` (of session `id`) the partitions the client
    /// must hear about, remembering what it is told (Kafka's
    /// `CachedPartition.maybeUpdateResponseData`): records, a changed high watermark or log
    /// start offset, an error. Answered partitions move to the back of the session's order. A
    /// session evicted meanwhile leaves the answer whole.
    pub fn answered(&self, id: i32, answer: &mut rp::FetchResponse) {
        let mut inner = self.inner.lock();
        let Some(session) = inner.sessions.get_mut(&id) else {
            return;
        };
        let mut moved: Vec<Key> = Vec::new();
        for t in &mut answer.topics {
            t.partitions.retain(|p| {
                let key = (t.name.clone(), p.index);
                let Some(c) = session.partitions.get_mut(&key) else {
                    return true;
                };
                let mut respond = !p.records.is_empty();
                if c.high_watermark != p.high_watermark {
                    respond = true;
                }
                if c.log_start_offset != p.log_start_offset {
                    respond = true;
                }
                if p.error_code != 0 {
                    respond = true;
                }
                remember(c, p);
                if respond {
                    moved.push(key);
                }
                respond
            });
        }
        answer.topics.retain(|t| !t.partitions.is_empty());
        if !moved.is_empty() {
            let gone: HashSet<&Key> = moved.iter().collect();
            session.order.retain(|k| !gone.contains(k));
            session.order.extend(moved);
        }
    }
}

/// Remembers what an answer told the client of a partition.
fn remember(c: &mut Cached, p: &rp::FetchPartitionResponse) {
    c.log_start_offset = p.log_start_offset;
    c.high_watermark = if p.error_code != 0 {
        -1
    } else {
        p.high_watermark
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(t: &str, p: i32) -> Key {
        (t.to_owned(), p)
    }

    fn asked(offset: i64) -> Cached {
        Cached::requested(Uuid::nil(), offset, 1 << 20, -1)
    }

    fn answer(parts: &[(&str, i32, i64, bool)]) -> rp::FetchResponse {
        let mut r = rp::FetchResponse::default();
        for (t, p, hw, data) in parts {
            r.topics.push(rp::FetchTopicResponse {
                name: (*t).to_owned(),
                partitions: vec![rp::FetchPartitionResponse {
                    index: *p,
                    high_watermark: *hw,
                    log_start_offset: 0,
                    records: if *data {
                        bytes::Bytes::from_static(b"x")
                    } else {
                        bytes::Bytes::new()
                    },
                    ..Default::default()
                }],
            });
        }
        r
    }

    fn kept(r: &rp::FetchResponse) -> Vec<Key> {
        r.topics
            .iter()
            .flat_map(|t| t.partitions.iter().map(|p| key(&t.name, p.index)))
            .collect()
    }

    #[test]
    fn a_session_answers_only_what_changed_and_checks_its_epoch() {
        let cache = FetchSessions::new(10);
        let wanted = vec![(key("a", 0), asked(0)), (key("a", 1), asked(0))];
        assert_eq!(
            cache.context(0, 0, false, wanted.clone(), &[]),
            Context::Full
        );
        let id = cache.create(
            wanted,
            false,
            &answer(&[("a", 0, 5, true), ("a", 1, 0, false)]),
        );
        assert_ne!(id, 0);
        // Epoch 1: a moved on, nothing new.
        let Context::Incremental { partitions, .. } =
            cache.context(id, 1, false, vec![(key("a", 0), asked(5))], &[])
        else {
            panic!("incremental expected");
        };
        assert_eq!(partitions.len(), 2);
        let mut r = answer(&[("a", 0, 5, false), ("a", 1, 0, false)]);
        cache.answered(id, &mut r);
        assert!(kept(&r).is_empty());
        // A repeated epoch is refused; an unknown session too.
        assert_eq!(
            cache.context(id, 1, false, vec![], &[]),
            Context::Error(INVALID_FETCH_SESSION_EPOCH)
        );
        assert_eq!(
            cache.context(id + 1, 1, false, vec![], &[]),
            Context::Error(FETCH_SESSION_ID_NOT_FOUND)
        );
        assert_eq!(
            cache.context(id, 2, true, vec![], &[]),
            Context::Error(FETCH_SESSION_TOPIC_ID_ERROR)
        );
        // A moved high watermark is answered, data too; forgotten partitions are not read.
        let Context::Incremental { partitions, .. } =
            cache.context(id, 2, false, vec![], &[key("a", 0)])
        else {
            panic!("incremental expected");
        };
        assert_eq!(
            partitions.iter().map(|p| &p.0).collect::<Vec<_>>(),
            [&key("a", 1)]
        );
        let mut r = answer(&[("a", 1, 3, true)]);
        cache.answered(id, &mut r);
        assert_eq!(kept(&r), [key("a", 1)]);
        // Forgetting the last partition ends the session.
        assert_eq!(
            cache.context(id, 3, false, vec![], &[key("a", 1)]),
            Context::Sessionless
        );
        assert!(cache.is_empty());
    }

    #[test]
    fn errors_are_answered_until_they_clear_and_answered_partitions_go_last() {
        let cache = FetchSessions::new(10);
        let wanted = vec![(key("a", 0), asked(0)), (key("b", 0), asked(0))];
        let id = cache.create(
            wanted,
            false,
            &answer(&[("a", 0, 1, false), ("b", 0, 1, false)]),
        );
        let Context::Incremental { .. } = cache.context(id, 1, false, vec![], &[]) else {
            panic!()
        };
        let mut r = answer(&[("a", 0, 1, true), ("b", 0, 1, false)]);
        r.topics[1].partitions[0].error_code = 6;
        cache.answered(id, &mut r);
        assert_eq!(kept(&r), [key("a", 0), key("b", 0)]);
        let Context::Incremental { partitions, .. } = cache.context(id, 2, false, vec![], &[])
        else {
            panic!()
        };
        // Both were answered, in that order: a, then b at the back.
        assert_eq!(partitions[1].0, key("b", 0));
        // b's error cleared: answered once more (its high watermark was forgotten), then quiet.
        let mut r = answer(&[("a", 0, 1, false), ("b", 0, 1, false)]);
        cache.answered(id, &mut r);
        assert_eq!(kept(&r), [key("b", 0)]);
    }

    #[test]
    fn a_full_cache_evicts_the_least_recently_used_idle_session_and_epoch_minus_one_closes() {
        // Every session idle long enough: the least recently used goes.
        let cache = FetchSessions::with_eviction_after(2, Duration::ZERO);
        let one = vec![(key("a", 0), asked(0))];
        let empty = answer(&[("a", 0, 0, false)]);
        let first = cache.create(one.clone(), false, &empty);
        let second = cache.create(one.clone(), false, &empty);
        // first is used, so second is the least recently used when a third arrives.
        assert!(matches!(
            cache.context(first, 1, false, vec![], &[]),
            Context::Incremental { .. }
        ));
        let third = cache.create(one.clone(), false, &empty);
        assert_eq!(cache.len(), 2);
        assert_eq!(
            cache.context(second, 1, false, vec![], &[]),
            Context::Error(FETCH_SESSION_ID_NOT_FOUND)
        );
        assert!(matches!(
            cache.context(third, 1, false, vec![], &[]),
            Context::Incremental { .. }
        ));
        // Epoch -1 closes the session it names and fetches without one.
        assert_eq!(
            cache.context(third, -1, false, one, &[]),
            Context::Sessionless
        );
        assert_eq!(cache.len(), 1);
        // No slots: no sessions.
        let none = FetchSessions::new(0);
        assert_eq!(none.context(0, 0, false, vec![], &[]), Context::Sessionless);
    }

    /// A full cache of sessions in use is not churned by newcomers (each would evict another
    /// busy session, whose client then starts over, and so on): a new session evicts only a
    /// smaller one, else goes without.
    #[test]
    fn busy_sessions_are_evicted_only_by_larger_ones() {
        let cache = FetchSessions::new(2);
        let one = vec![(key("a", 0), asked(0))];
        let two = vec![(key("a", 0), asked(0)), (key("a", 1), asked(0))];
        let empty = answer(&[("a", 0, 0, false), ("a", 1, 0, false)]);
        let small = cache.create(one.clone(), false, &empty);
        let large = cache.create(two.clone(), false, &empty);
        assert_eq!(
            cache.create(one, false, &empty),
            0,
            "no room for another small one"
        );
        assert_eq!(cache.len(), 2);
        let larger = vec![
            (key("a", 0), asked(0)),
            (key("a", 1), asked(0)),
            (key("a", 2), asked(0)),
        ];
        let newest = cache.create(larger, false, &empty);
        assert_ne!(newest, 0, "a larger session evicts the smallest");
        assert_eq!(
            cache.context(small, 1, false, vec![], &[]),
            Context::Error(FETCH_SESSION_ID_NOT_FOUND)
        );
        assert!(matches!(
            cache.context(large, 1, false, vec![], &[]),
            Context::Incremental { .. }
        ));
    }
}
