//! Regular expression subscriptions (Kafka's `TopicRegexResolver`): a member's regex is matched
//! against whole topic names, never internal topics (names starting with `__`).

use std::collections::HashMap;

use regex::{Regex, RegexBuilder};

/// Compiled programs larger than this are refused (a regex is a request field).
const SIZE_LIMIT: usize = 1 << 20;
/// Cached patterns before the cache starts over.
const MAX_CACHED: usize = 4096;

/// Whether `topic` is internal (never matched by a regex subscription).
pub fn is_internal(topic: &str) -> bool {
    topic.starts_with("__")
}

fn compile(pattern: &str) -> Result<Regex, regex::Error> {
    // Compile the pattern alone first: a balanced pattern cannot escape the anchoring group.
    RegexBuilder::new(pattern).size_limit(SIZE_LIMIT).build()?;
    RegexBuilder::new(&format!("^(?:{pattern})$"))
        .size_limit(SIZE_LIMIT)
        .build()
}

/// Checks a pattern sent by a member; the error says what is wrong with it.
pub fn validate(pattern: &str) -> Result<(), String> {
    compile(pattern).map(|_| ()).map_err(|e| e.to_string())
}

/// Compiled patterns by source text.
#[derive(Default)]
pub struct RegexCache {
    compiled: HashMap<String, Option<Regex>>,
}

impl RegexCache {
    /// Whether `pattern` matches the whole of `topic` (never an internal topic; an invalid
    /// pattern matches nothing).
    pub fn matches(&mut self, pattern: &str, topic: &str) -> bool {
        if is_internal(topic) {
            return false;
        }
        self.get(pattern).is_some_and(|r| r.is_match(topic))
    }

    /// The compiled `pattern`, `None` when it does not compile.
    pub fn get(&mut self, pattern: &str) -> Option<&Regex> {
        if !self.compiled.contains_key(pattern) {
            if self.compiled.len() >= MAX_CACHED {
                self.compiled.clear();
            }
            let compiled = compile(pattern).ok();
            self.compiled.insert(pattern.to_string(), compiled);
        }
        self.compiled.get(pattern).and_then(Option::as_ref)
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
        assert!(validate("a)|(b").is_err());
        assert!(validate("(").is_err());
        assert!(validate("x{100000}{100000}").is_err());
        let mut c = RegexCache::default();
        assert!(!c.matches("(", "("));
    }
}
