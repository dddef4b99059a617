//! Scenario tests of the shard: heartbeats, reconciliation, static membership, fencing,
//! offsets, admin, timers, and load == live.

mod admin;
mod assignors;
mod harness;
mod heartbeat;
mod offsets;
mod random;
