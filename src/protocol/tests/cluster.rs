//! A cluster node's presence rules: joins wait for the registry, member
//! events apply once and in order, hooks come from the registry's answers.

use serde_json::json;

use super::{World, APP};
use crate::channels::ViewMember;
use crate::ports::{RegistryOp, RegistryReply};
use crate::protocol::cluster::apply_member;

fn member(name: &str) -> ViewMember {
    ViewMember { info: json!({ "name": name }), numeric: false, peer: false }
}

fn clustered() -> World {
    let mut w = World::hooked();
    w.fx.clustered = true;
    w
}

#[test]
fn a_join_waits_for_the_registry_and_member_events_apply_once_in_order() {
    let mut w = clustered();
    let c = w.connect();
    w.join(c, "presence-a", "u1", false);
    assert!(w.got(c).is_empty(), "nothing before the registry answers");
    // Another node's user joins while ours is on its way: held until the snapshot.
    apply_member(&mut w.st, &mut w.fx, APP, "presence-a", "u2", Some(member("u2")), 2, &mut w.wire);
    let op = w.registry_answers(Ok(RegistryReply::Joined {
        added: true,
        full: false,
        seq: 1,
        members: vec![("u1".into(), member("u1"))],
    }));
    assert!(matches!(op, RegistryOp::PresenceJoin { ref user_id, .. } if user_id == "u1"));
    let got = w.got(c);
    assert_eq!(got.len(), 1, "{got:?}");
    let data: serde_json::Value = serde_json::from_str(got[0]["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["count"], 2, "the snapshot and the held event: {data}");
    assert_eq!(w.fx.hook_names(), ["member_added"], "the registry said the user was added");

    // Events at or below the view's number are already in it; later ones apply once.
    apply_member(&mut w.st, &mut w.fx, APP, "presence-a", "u2", Some(member("u2")), 2, &mut w.wire);
    assert!(w.got(c).is_empty());
    apply_member(&mut w.st, &mut w.fx, APP, "presence-a", "u2", None, 3, &mut w.wire);
    apply_member(&mut w.st, &mut w.fx, APP, "presence-a", "u2", None, 3, &mut w.wire);
    assert_eq!(w.events(c), ["pusher_internal:member_removed"]);
}

#[test]
fn a_join_abandoned_before_the_answer_is_undone_and_a_full_channel_refused() {
    let mut w = clustered();
    let c = w.connect();
    w.join(c, "presence-a", "u1", false);
    w.close(c);
    let answer = RegistryReply::Joined { added: true, full: false, seq: 1, members: vec![] };
    w.registry_answers(Ok(answer));
    let undo = w.fx.registry.iter().find(|(op, _)| matches!(op, RegistryOp::PresenceLeave { .. }));
    assert!(undo.is_some(), "a compensating leave");

    let d = w.connect();
    w.join(d, "presence-b", "u2", false);
    while !matches!(w.fx.registry[0].0, RegistryOp::PresenceJoin { ref channel, .. } if channel == "presence-b") {
        w.fx.registry.remove(0);
    }
    w.registry_answers(Ok(RegistryReply::Joined { added: false, full: true, seq: 0, members: vec![] }));
    let got = w.got(d);
    assert_eq!(got[0]["event"], "pusher:subscription_error");
    assert_eq!(got[0]["data"]["type"], "LimitReached");
}

#[test]
fn with_the_registry_unreachable_a_node_shows_its_own_members() {
    let mut w = clustered();
    let (a, b) = (w.connect(), w.connect());
    w.join(a, "presence-a", "u1", false);
    w.registry_answers(Err("down".into()));
    assert_eq!(w.events(a), ["pusher_internal:subscription_succeeded"]);
    w.join(b, "presence-a", "u2", false);
    w.registry_answers(Err("down".into()));
    assert_eq!(w.events(a), ["pusher_internal:member_added"]);
    w.close(b);
    let leave = w.registry_answers(Err("down".into()));
    assert!(matches!(leave, RegistryOp::PresenceLeave { .. }));
    assert_eq!(w.events(a), ["pusher_internal:member_removed"]);
    assert!(w.fx.hook_names().is_empty(), "no hooks without the registry's decision");
}

#[test]
fn a_quota_counts_the_cluster_admitted_by_the_registry_and_released_on_close() {
    let mut w = World::with(|a| a.max_connections = 5);
    w.fx.clustered = true;
    let a = w.connect_pending();
    assert!(w.got(a).is_empty(), "no connection_established before the registry admits");
    assert!(matches!(w.registry_answers(Ok(RegistryReply::Admitted(true))), RegistryOp::Admit { limit: 5, .. }));
    assert_eq!(w.events(a), ["pusher:connection_established"]);
    let b = w.connect_pending();
    w.registry_answers(Ok(RegistryReply::Admitted(false)));
    assert_eq!(w.events(b), ["pusher:error"]);
    assert_eq!(w.wire.closed.get(&b.conn).map(|c| c.0), Some(4004));
    w.close(a);
    assert!(matches!(w.fx.registry.last(), Some((RegistryOp::Release { .. }, _))), "its place is given back");
}

#[test]
fn peer_members_of_other_nodes_are_told_and_paired() {
    let mut w = clustered();
    let a = w.connect();
    w.join(a, "presence-chat", "alice", true);
    let alice = ViewMember { info: json!({ "name": "alice" }), numeric: false, peer: true };
    w.registry_answers(Ok(RegistryReply::Joined {
        added: true,
        full: false,
        seq: 1,
        members: vec![("alice".into(), alice)],
    }));
    assert_eq!(w.events(a), ["pusher_internal:subscription_succeeded"]);
    let bob = ViewMember { info: json!({ "name": "bob" }), numeric: false, peer: true };
    apply_member(&mut w.st, &mut w.fx, APP, "presence-chat", "bob", Some(bob), 2, &mut w.wire);
    assert_eq!(w.events(a), ["pusher_internal:member_added"]);
    assert_eq!(w.subscribers("peer-chat:alice&bob"), 1, "alice is put on the pair");
    apply_member(&mut w.st, &mut w.fx, APP, "presence-chat", "bob", None, 3, &mut w.wire);
    assert_eq!(w.events(a), ["pusher_internal:member_removed"]);
    assert_eq!(w.subscribers("peer-chat:alice&bob"), 0, "and taken off it");
}
