//! Regular expression subscriptions (Kafka's `TopicRegexResolver`): a member's regex is matched
//! against whole topic names, never internal topics (names starting with `__`).

use std::collections::HashMap;

use regex::{Regex, RegexBuilder};

/// Compiled programs larger than this are refused (a regex is a request field).
const SIZE_LIMIT: usize = 1 << 20;
/// Patterns kept compiled, at most.
const MAX_CACHED: usize = 1024;
/// Total length of the patterns kept compiled, at most (bytes; one longer pattern, replayed
/// from an older writer, may still be kept alone).
const MAX_CACHED_BYTES: usize = 256 * 1024;

/// Whether `topic` is internal (never matched by a regex subscription).
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

#[cfg(test)]
thread_local! {
    static COMPILED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Patterns this thread compiled so far (for tests).
#[cfg(test)]
pub fn compiled_count() -> u64 {
    COMPILED.with(|c| c.get())
}

fn compile(pattern: &str) -> Result<Regex, String> {
    #[cfg(test)]
    COMPILED.with(|c| c.set(c.get() + 1));
    // Compile the pattern alone first: a balanced pattern cannot escape the anchoring group.
    RegexBuilder::new(pattern)
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())?;
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(SIZE_LIMIT)
        .build()
        .map_err(|e| e.to_string())
}

/// A compiled pattern (or why it does not compile) and when it was last used.
struct Entry {
    compiled: Result<Regex, String>,
    used: u64,
}

/// Compiled patterns by source text, so a member's pattern is compiled once, not on every
/// heartbeat or metadata update. Bounded by count and total pattern length; the least recently
/// used pattern goes first (it is compiled again when next needed).
#[derive(Default)]
pub struct RegexCache {
    entries: HashMap<String, Entry>,
    bytes: usize,
    clock: u64,
}

impl RegexCache {
    /// Whether `pattern` matches the whole of `topic` (never an internal topic; an invalid
    /// pattern matches nothing).
    pub fn matches(&mut self, pattern: &str, topic: &str) -> bool {
        if is_internal(topic) {
            return false;
        }
        self.get(pattern).is_ok_and(|r| r.is_match(topic))
    }

    /// Checks a pattern sent by a member; the error says what is wrong with it.
    pub fn check(&mut self, pattern: &str) -> Result<(), String> {
        self.get(pattern).map(|_| ()).map_err(str::to_string)
    }

    /// The compiled `pattern` (anchored: it matches whole names), or why it does not compile.
    pub fn get(&mut self, pattern: &str) -> Result<&Regex, &str> {
        self.clock += 1;
        let now = self.clock;
        if !self.entries.contains_key(pattern) {
            self.make_room(pattern.len());
            self.bytes += pattern.len();
            self.entries.insert(
                pattern.to_string(),
                Entry {
                    compiled: compile(pattern),
                    used: now,
                },
            );
        }
        let entry = self
            .entries
            .get_mut(pattern)
            .expect("inserted above when missing");
        entry.used = now;
        entry.compiled.as_ref().map_err(String::as_str)
    }

    /// Evicts the least recently used patterns until one of `len` bytes fits.
    fn make_room(&mut self, len: usize) {
        while !self.entries.is_empty()
            && (self.entries.len() >= MAX_CACHED || self.bytes + len > MAX_CACHED_BYTES)
        {
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.used)
                .map(|(p, _)| p.clone())
            else {
                break;
            };
            self.entries.remove(&oldest);
            self.bytes -= oldest.len();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whole_names_only_and_no_internal_topics() {
        let mut c = RegexCache::default();
        assert!(c.matches("orders-.*", "orders-eu"));
        assert!(!c.matches("orders", "orders-eu"));
        assert!(!c.matches(".*", "__consumer_offsets"));
        assert!(c.matches("a|b", "b"));
        assert!(!c.matches("a|b", "ab"));
    }

    #[test]
    fn invalid_patterns_are_reported_and_match_nothing() {
        let mut c = RegexCache::default();
        let start = compiled_count();
        assert!(c.check("a)|(b").is_err());
        assert!(c.check("(").is_err());
        assert!(c.check("x{100000}{100000}").is_err());
        assert!(!c.matches("(", "("));
        assert!(c.check("(").is_err());
        assert_eq!(
            compiled_count() - start,
            3,
            "an invalid pattern is remembered too"
        );
    }

    #[test]
    fn patterns_are_compiled_once_and_the_cache_is_bounded() {
        let mut c = RegexCache::default();
        let start = compiled_count();
        for _ in 0..10 {
            assert!(c.matches("orders-.*", "orders-eu"));
            assert!(c.check("orders-.*").is_ok());
        }
        assert_eq!(compiled_count() - start, 1);
        // Many patterns: at most MAX_CACHED are kept, the most recently used stay.
        for i in 0..MAX_CACHED + 10 {
            c.check(&format!("p{i}")).unwrap();
            c.check("orders-.*").unwrap();
        }
        assert!(c.entries.len() <= MAX_CACHED);
        let before = compiled_count();
        c.check("orders-.*").unwrap();
        assert_eq!(compiled_count(), before, "still cached");
        c.check("p0").unwrap();
        assert_eq!(compiled_count(), before + 1, "evicted, compiled again");
        // Long patterns: bounded by their total length.
        let mut c = RegexCache::default();
        for i in 0..1000 {
            let long = format!("{i}{}", "a".repeat(crate::MAX_TOPIC_REGEX_BYTES - 4));
            c.check(&long).unwrap();
        }
        assert!(c.bytes <= MAX_CACHED_BYTES);
        assert_eq!(c.bytes, c.entries.keys().map(String::len).sum::<usize>());
    }
}
