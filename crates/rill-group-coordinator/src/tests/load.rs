//! Loading a partition: replay, timers started at load time, catching up with the image.

use bytes::Bytes;

use super::harness::*;
use crate::Record;

#[test]
fn timers_start_at_load_time() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    h.now += 40_000;
    let load_time = h.now;
    let mut loaded = h.load();
    assert_eq!(
        loaded.next_deadline_ms(),
        None,
        "no timers before on_loaded"
    );
    loaded.on_loaded(&h.image, load_time);
    assert_eq!(loaded.next_deadline_ms(), Some(load_time + 45_000));
    assert!(
        loaded
            .expire_members(&h.image, load_time + 44_999)
            .is_empty()
    );
    assert!(
        !loaded
            .expire_members(&h.image, load_time + 45_000)
            .is_empty()
    );
    assert_eq!(loaded.describe_group("g").members.len(), 0);
    assert_eq!(loaded.next_deadline_ms(), None);
}

#[test]
fn unrevoked_members_get_a_rebalance_timer_on_load() {
    let mut h = Harness::new(&[("t", 4)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.revoke = Revoke::WhenReleased;
    a.join(&mut h);
    let mut b = Client::new("g", "b", &["t"]);
    b.join(&mut h);
    a.heartbeat(&mut h);
    let d = h.describe("g");
    assert!(
        d.members
            .iter()
            .any(|m| m.member_state == "UnrevokedPartitions")
    );
    let mut loaded = h.load();
    loaded.on_loaded(&h.image, h.now);
    assert_eq!(
        loaded.next_deadline_ms(),
        Some(h.now + 30_000),
        "a's rebalance timeout"
    );
    let out = loaded.expire_members(&h.image, h.now + 30_000);
    assert!(!out.is_empty());
    let members: Vec<String> = loaded
        .describe_group("g")
        .members
        .into_iter()
        .map(|m| m.member_id)
        .collect();
    assert_eq!(members, vec!["b"]);
}

#[test]
fn on_loaded_catches_up_with_the_image() {
    let mut h = Harness::new(&[("t", 2)]);
    let mut a = Client::new("g", "a", &["t"]);
    let mut b = Client::new("g", "b", &["t"]);
    a.join(&mut h);
    b.join(&mut h);
    let mut clients = vec![a, b];
    settle(&mut h, &mut clients);
    let old_image = h.image.clone();
    // The topic grew while no one coordinated the group.
    h.image.topics.insert("t".into(), topic("t", 6));
    let mut loaded = h.load();
    let records = loaded.on_loaded(&h.image, h.now);
    assert!(!records.is_empty());
    // The live shard, told of the same change, ends in the same state.
    h.metadata_update();
    assert_eq!(loaded.describe_group("g"), h.describe("g"));
    let d = h.describe("g");
    assert_eq!(d.group_state, "Reconciling");
    let targets: usize = d
        .members
        .iter()
        .flat_map(|m| m.target_assignment.iter().map(|t| t.partitions.len()))
        .sum();
    assert_eq!(targets, 6);
    assert_ne!(old_image, h.image);
    settle(&mut h, &mut clients);
    assert_eq!(h.describe("g").group_state, "Stable");
    h.assert_load_equals_live();
}

#[test]
fn replay_skips_unknown_types_and_rejects_garbage() {
    let mut h = Harness::new(&[("t", 2)]);
    Client::new("g", "a", &["t"]).join(&mut h);
    let mut loaded = h.load();
    loaded
        .replay(&Record {
            key: Bytes::from_static(&[0, 99, 1, 2, 3]),
            value: Some(Bytes::from_static(&[0, 3, 9, 9])),
        })
        .expect("a record type this version does not know (99) is skipped");
    loaded
        .replay(&Record {
            key: Bytes::from_static(&[0x7f, 0x00]),
            value: None,
        })
        .expect("an unknown type is skipped");
    assert!(
        loaded
            .replay(&Record {
                key: Bytes::from_static(&[0, 5, 0xff]),
                value: None,
            })
            .is_err()
    );
    assert!(
        loaded
            .replay(&Record {
                key: Bytes::new(),
                value: None,
            })
            .is_err()
    );
    loaded.on_loaded(&h.image, h.now);
    assert_eq!(loaded.describe_group("g"), h.describe("g"));
}

#[test]
fn tombstones_for_unknown_groups_are_harmless() {
    let mut h = Harness::new(&[("t", 2)]);
    let mut a = Client::new("g", "a", &["t"]);
    a.join(&mut h);
    h.heartbeat(a.leave_request(-1));
    let cleanup = h.shard.cleanup_expired_offsets(h.now);
    assert!(
        !cleanup.is_empty(),
        "the empty group without offsets is deleted"
    );
    assert!(cleanup.iter().all(|r| r.value.is_none()));
    h.log.extend(cleanup.clone());
    // Replaying only the tombstones (of a group never seen) is fine.
    let mut tail_only = crate::GroupCoordinatorShard::new(config());
    for r in &cleanup {
        tail_only.replay(r).unwrap();
    }
    assert_eq!(tail_only.group_count(), 0);
    h.assert_load_equals_live();
}
