//! The `uniform` assignor (Kafka's `UniformAssignor`): spreads partitions evenly over the
//! members subscribed to them, and moves as few as it can from one target assignment to the
//! next.
//!
//! Three steps, all in a fixed order so the result is deterministic:
//! 1. Stickiness: every member keeps the partitions of its current target that still exist and
//!    that it still subscribes to (the first member in id order wins a partition two claim).
//! 2. Unassigned partitions go, one by one, to the least loaded subscriber (topics with the fewest
//!    subscribers first, since they have the least choice).
//! 3. Balance: while a member with `c` partitions can pass a partition, directly or along a chain
//!    of members (each passing one of a topic the next subscribes to), to a member with at most
//!    `c - 2`, it does (shortest chains first). Each move lowers the sum of squared loads, so this
//!    ends; when it ends, members with identical subscriptions differ by at most one partition,
//!    and heterogeneous subscriptions are balanced as far as any chain of moves can balance them.
//!
//! Moving only overloaded members' partitions makes the assignment sticky: a new member takes
//! about `partitions / members` partitions from the others, and a leaving member's partitions go
//! to the least loaded members without moving anything else.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

use super::{GroupAssignment, GroupSpec, member_topics};

/// For each member, the member and topic it was reached from in a search for a chain.
type Parents = Vec<Option<(usize, usize)>>;

struct State<'a> {
    /// Topic names, indexed.
    topics: Vec<&'a String>,
    /// Partition counts by topic index.
    partitions: Vec<i32>,
    /// Subscribers (member indexes, ascending) by topic index.
    subscribers: Vec<Vec<usize>>,
    /// Per member: topic index → partitions.
    assigned: Vec<BTreeMap<usize, BTreeSet<i32>>>,
    /// Per member: its current target (topic index → partitions), to prefer moving new ones.
    current: Vec<HashMap<usize, BTreeSet<i32>>>,
    /// Per member: partitions assigned.
    count: Vec<usize>,
}

impl State<'_> {
    fn give(&mut self, member: usize, topic: usize, partition: i32) {
        if self.assigned[member]
            .entry(topic)
            .or_default()
            .insert(partition)
        {
            self.count[member] += 1;
        }
    }

    /// Moves one partition of `topic` from `from` to `to`: one `from` did not have before this
    /// assignment if it can, else its highest.
    fn move_one(&mut self, from: usize, to: usize, topic: usize) {
        let Some(held) = self.assigned[from].get(&topic) else {
            return;
        };
        let kept = self.current[from].get(&topic);
        let pick = held
            .iter()
            .rev()
            .find(|p| kept.is_none_or(|k| !k.contains(p)))
            .or_else(|| held.iter().next_back())
            .copied();
        let Some(p) = pick else { return };
        if let Some(held) = self.assigned[from].get_mut(&topic) {
            held.remove(&p);
            if held.is_empty() {
                self.assigned[from].remove(&topic);
            }
        }
        self.count[from] -= 1;
        self.give(to, topic, p);
    }

    /// A shortest chain of moves from `source` (holding `c` partitions) to a member holding at
    /// most `c - 2`: the members visited and, for each, the member and topic it was reached
    /// from. Returns the target (the least loaded of the nearest candidates) or `None`, and
    /// marks every member reached in `reached`.
    fn find_chain(&self, source: usize, reached: &mut [bool]) -> Option<(usize, Parents)> {
        let c = self.count[source];
        let n = self.count.len();
        let mut parent: Parents = vec![None; n];
        let mut visited = vec![false; n];
        visited[source] = true;
        reached[source] = true;
        let mut level = VecDeque::from([source]);
        while !level.is_empty() {
            let mut next = VecDeque::new();
            for &u in &level {
                for &t in self.assigned[u].keys() {
                    for &v in &self.subscribers[t] {
                        if !visited[v] {
                            visited[v] = true;
                            reached[v] = true;
                            parent[v] = Some((u, t));
                            next.push_back(v);
                        }
                    }
                }
            }
            let best = next
                .iter()
                .copied()
                .filter(|&v| self.count[v] + 2 <= c)
                .min_by_key(|&v| (self.count[v], v));
            if let Some(target) = best {
                return Some((target, parent));
            }
            level = next;
        }
        None
    }

    fn balance(&mut self) {
        let n = self.count.len();
        loop {
            let Some(&min) = self.count.iter().min() else {
                return;
            };
            let mut order: Vec<usize> = (0..n).collect();
            order.sort_by_key(|&i| (Reverse(self.count[i]), i));
            // A member reached from a source that found no chain cannot find one either when it
            // holds no more than that source (what it reaches, the source reaches).
            let mut dead = vec![false; n];
            let mut moved = false;
            for &s in &order {
                let c = self.count[s];
                if c < min + 2 {
                    break;
                }
                if dead[s] {
                    continue;
                }
                let mut reached = vec![false; n];
                match self.find_chain(s, &mut reached) {
                    Some((target, parent)) => {
                        let mut chain = Vec::new();
                        let mut v = target;
                        while let Some((u, t)) = parent[v] {
                            chain.push((u, v, t));
                            v = u;
                        }
                        // Source side first: each member passes on a partition after receiving one.
                        for &(u, v, t) in chain.iter().rev() {
                            self.move_one(u, v, t);
                        }
                        moved = true;
                        break;
                    }
                    None => {
                        for (i, r) in reached.iter().enumerate() {
                            if *r && self.count[i] <= c {
                                dead[i] = true;
                            }
                        }
                    }
                }
            }
            if !moved {
                return;
            }
        }
    }
}

/// The uniform assignment of `spec`.
pub fn assign(spec: &GroupSpec) -> GroupAssignment {
    let ids: Vec<&String> = spec.members.keys().collect();
    let mut topic_index: HashMap<&String, usize> = HashMap::new();
    let mut state = State {
        topics: Vec::new(),
        partitions: Vec::new(),
        subscribers: Vec::new(),
        assigned: vec![BTreeMap::new(); ids.len()],
        current: vec![HashMap::new(); ids.len()],
        count: vec![0; ids.len()],
    };
    for (m, member) in spec.members.values().enumerate() {
        for (topic, partitions) in member_topics(spec, member) {
            if partitions <= 0 {
                continue;
            }
            let t = *topic_index.entry(topic).or_insert_with(|| {
                state.topics.push(topic);
                state.partitions.push(partitions);
                state.subscribers.push(Vec::new());
                state.topics.len() - 1
            });
            state.subscribers[t].push(m);
        }
    }

    // 1. Keep what is still valid.
    let mut owner: HashMap<(usize, i32), usize> = HashMap::new();
    for (m, member) in spec.members.values().enumerate() {
        for (topic, parts) in &member.current {
            let Some(&t) = topic_index.get(topic) else {
                continue;
            };
            if !member.subscribed_topics.contains(topic) {
                continue;
            }
            for &p in parts {
                if p < 0 || p >= state.partitions[t] || owner.contains_key(&(t, p)) {
                    continue;
                }
                owner.insert((t, p), m);
                state.give(m, t, p);
                state.current[m].entry(t).or_default().insert(p);
            }
        }
    }

    // 2. Unassigned partitions to the least loaded subscriber.
    let mut topic_order: Vec<usize> = (0..state.topics.len()).collect();
    topic_order.sort_by_key(|&t| (state.subscribers[t].len(), state.topics[t]));
    for t in topic_order {
        for p in 0..state.partitions[t] {
            if owner.contains_key(&(t, p)) {
                continue;
            }
            let best = state.subscribers[t]
                .iter()
                .copied()
                .min_by_key(|&m| (state.count[m], m));
            if let Some(m) = best {
                owner.insert((t, p), m);
                state.give(m, t, p);
            }
        }
    }

    // 3. Balance.
    state.balance();

    ids.iter()
        .enumerate()
        .map(|(m, id)| {
            let assignment = state.assigned[m]
                .iter()
                .map(|(&t, parts)| (state.topics[t].clone(), parts.clone()))
                .collect();
            ((*id).clone(), assignment)
        })
        .collect()
}
