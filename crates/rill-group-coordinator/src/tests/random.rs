//! Random join / heartbeat / leave / restart / timeout sequences: no partition is ever held by
//! two clients, the group always settles, and loading the log gives the live state.

use proptest::prelude::*;
use rill_protocol::ErrorCode;

use super::harness::*;

#[derive(Clone, Debug)]
enum Action {
    Join(usize),
    Heartbeat(usize),
    Release(usize),
    Leave(usize),
    StaticLeave(usize),
    Advance(i64),
    Grow,
    Resubscribe(usize, bool),
    Assignor(usize, bool),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0usize..5).prop_map(Action::Join),
        8 => (0usize..5).prop_map(Action::Heartbeat),
        3 => (0usize..5).prop_map(Action::Release),
        1 => (0usize..5).prop_map(Action::Leave),
        1 => (0usize..5).prop_map(Action::StaticLeave),
        2 => (1_000i64..30_000).prop_map(Action::Advance),
        1 => Just(Action::Grow),
        1 => (0usize..5, any::<bool>()).prop_map(|(i, b)| Action::Resubscribe(i, b)),
        1 => (0usize..5, any::<bool>()).prop_map(|(i, b)| Action::Assignor(i, b)),
    ]
}

fn clients() -> Vec<Client> {
    (0..5)
        .map(|i| {
            let mut c = Client::new("g", &format!("m{i}"), &["t", "u"]);
            if i % 2 == 0 {
                c.revoke = Revoke::WhenReleased;
            }
            if i >= 3 {
                c = c.static_member(&format!("inst{i}"));
            }
            c
        })
        .collect()
}

/// Sends a heartbeat and handles the answer like a client: fenced or unknown means start over.
fn send(
    h: &mut Harness,
    c: &mut Client,
    request: rill_protocol::proto::ConsumerGroupHeartbeatRequest,
) {
    let r = h.heartbeat(request);
    if r.error_code == ErrorCode::None as i32 {
        c.apply(&r);
    } else {
        assert!(
            r.error_code == ErrorCode::FencedMemberEpoch as i32
                || r.error_code == ErrorCode::UnknownMemberId as i32
                || r.error_code == ErrorCode::UnreleasedInstanceId as i32
                || r.error_code == ErrorCode::FencedInstanceId as i32,
            "unexpected error {}: {}",
            r.error_code,
            r.error_message
        );
        c.reset();
    }
}

/// Clients the coordinator fenced know it (their own session and poll timers tell them).
fn drop_fenced(h: &Harness, clients: &mut [Client]) {
    let members: Vec<String> = h
        .describe("g")
        .members
        .into_iter()
        .map(|m| m.member_id)
        .collect();
    for c in clients.iter_mut() {
        if c.joined && !members.contains(&c.member_id) {
            c.reset();
        }
    }
}

fn run(actions: Vec<Action>) {
    let mut h = Harness::new(&[("t", 5), ("u", 3)]);
    let mut cs = clients();
    let mut restarts = 0;
    for a in actions {
        match a {
            Action::Join(i) if !cs[i].joined => {
                let req = cs[i].join_request();
                send(&mut h, &mut cs[i], req);
            }
            Action::Join(_) => {}
            Action::Heartbeat(i) if cs[i].joined => {
                let req = cs[i].heartbeat_request();
                send(&mut h, &mut cs[i], req);
            }
            Action::Heartbeat(_) => {}
            Action::Release(i) => cs[i].release(),
            Action::Leave(i) if cs[i].joined => {
                let req = cs[i].leave_request(-1);
                let r = h.heartbeat(req);
                assert_eq!(r.error_code, 0, "{}", r.error_message);
                cs[i].reset();
            }
            Action::StaticLeave(i) if cs[i].joined && cs[i].instance_id.is_some() => {
                let req = cs[i].leave_request(-2);
                let r = h.heartbeat(req);
                assert_eq!(r.error_code, 0, "{}", r.error_message);
                cs[i].reset();
                // The restarted process has a new member id.
                restarts += 1;
                cs[i].member_id = format!("m{i}-r{restarts}");
            }
            Action::Leave(_) | Action::StaticLeave(_) => {}
            Action::Advance(ms) => {
                h.now += ms;
                h.expire();
                drop_fenced(&h, &mut cs);
            }
            Action::Grow => {
                let n = h.image.topics["t"].partitions.len();
                h.image.topics.insert("t".into(), topic("t", n + 1));
                h.metadata_update();
            }
            Action::Resubscribe(i, both) if cs[i].joined => {
                cs[i].topics = if both {
                    vec!["t".into(), "u".into()]
                } else {
                    vec!["u".into()]
                };
                let mut req = cs[i].heartbeat_request();
                req.subscribed_topic_names = Some(rill_protocol::proto::TopicNames {
                    names: cs[i].topics.clone(),
                });
                send(&mut h, &mut cs[i], req);
            }
            Action::Resubscribe(..) => {}
            Action::Assignor(i, range) if cs[i].joined => {
                let mut req = cs[i].heartbeat_request();
                req.server_assignor = Some(if range { "range" } else { "uniform" }.into());
                send(&mut h, &mut cs[i], req);
            }
            Action::Assignor(..) => {}
        }
        assert_exclusive(&h, &cs);
    }
    h.assert_load_equals_live();
    // Everyone still in the group heartbeats (releasing as told): it settles to the target.
    drop_fenced(&h, &mut cs);
    settle(&mut h, &mut cs);
    // Static members that left for a restart and never came back go after their session
    // timeout; their partitions then move too.
    h.now += 46_000;
    for c in cs.iter_mut().filter(|c| c.joined) {
        let req = c.heartbeat_request();
        send(&mut h, c, req);
    }
    h.expire();
    drop_fenced(&h, &mut cs);
    settle(&mut h, &mut cs);
    let d = h.describe("g");
    if !d.members.is_empty() {
        for m in &d.members {
            if m.member_epoch >= 0 {
                assert_eq!(
                    m.assignment, m.target_assignment,
                    "{} did not reach its target",
                    m.member_id
                );
                assert_eq!(m.member_state, "Stable");
            }
        }
    }
    h.assert_load_equals_live();
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_sequences_keep_partitions_exclusive(actions in prop::collection::vec(action(), 1..60)) {
        run(actions);
    }
}
