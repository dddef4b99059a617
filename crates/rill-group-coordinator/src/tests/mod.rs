//! Scenario tests of the shard: heartbeats, reconciliation, static membership, fencing,
//! offsets, admin, timers, and load == live.

mod admin;
mod assignors;
mod classic;
mod fuzz;
mod harness;
mod heartbeat;
mod limits;
mod load;
mod offsets;
mod random;
