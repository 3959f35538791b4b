//! Pushi's personal channels, aliases, peer pairs, history and socket publishing.

use serde_json::json;

use super::{World, APP};
use crate::protocol::membership::peer_eligible;
use crate::protocol::pushi::alias_added;
use crate::store::pool::{Op, StoreReply};
use crate::store::SubscriptionRecord;

fn alias(w: &mut World, user: &str, channel: &str) {
    let rec = SubscriptionRecord { app: "1".into(), user_id: user.into(), event: channel.into(), created: 0 };
    w.st.pushi.add_alias(APP, &rec);
}

#[test]
fn peer_members_get_a_pair_channel_that_ends_with_them() {
    let mut w = World::new();
    let (a, b, c) = (w.connect(), w.connect(), w.connect());
    w.join(a, "presence-chat", "alice", true);
    w.join(b, "presence-chat", "bob", true);
    w.join(c, "presence-chat", "carol", false);
    assert_eq!(w.subscribers("peer-chat:alice&bob"), 2);
    assert_eq!(w.subscribers("peer-chat:alice&carol"), 1, "carol did not ask for pairs");
    assert!(peer_eligible(&w.st, b.session, "peer-chat:alice&bob"));
    assert!(!peer_eligible(&w.st, c.session, "peer-chat:alice&bob"));
    w.close(b);
    assert_eq!(w.subscribers("peer-chat:alice&bob"), 0);
}

#[test]
fn peer_user_ids_with_separators_are_refused() {
    let mut w = World::new();
    let c = w.connect();
    w.join(c, "presence-chat", "a&b", true);
    assert_eq!(w.got(c)[0]["data"]["status"], 400);
}

#[test]
fn a_personal_channel_joins_the_aliases_and_replies_with_history() {
    let mut w = World::new();
    alias(&mut w, "u1", "news");
    let c = w.connect_as(true);
    w.subscribe(c, "personal-u1");
    assert_eq!(w.subscribers("news"), 1, "joined at once");
    assert!(matches!(&w.fx.ops[..], [(APP, Op::UserEvents { user_id, .. })] if user_id == "u1"));
    assert!(w.got(c).is_empty(), "the reply waits for the store");
    w.answer_all(|| StoreReply::Events(Vec::new()));
    let reply = &w.got(c)[0];
    assert_eq!(reply["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(reply["channel"], "personal-u1");
}

#[test]
fn a_personal_subscription_is_confirmed_without_history_when_the_store_is_full() {
    let mut w = World::new();
    w.fx.full = true;
    let c = w.connect_as(true);
    w.subscribe(c, "personal-u1");
    assert_eq!(w.events(c), ["pusher_internal:subscription_succeeded"]);
}

#[test]
fn a_continuation_never_reaches_a_closed_session() {
    let mut w = World::new();
    let c = w.connect_as(true);
    w.subscribe(c, "personal-u1");
    w.close(c);
    w.connect_as(true); // may reuse the session slot
    w.answer_all(|| StoreReply::Events(Vec::new()));
    assert!(w.got(c).is_empty());
}

#[test]
fn a_new_alias_reaches_personal_sockets_live() {
    let mut w = World::new();
    let c = w.connect_as(true);
    w.subscribe(c, "personal-u1");
    alias(&mut w, "u1", "sports");
    alias_added(&mut w.st, APP, "u1", "sports", &mut w.wire);
    assert_eq!(w.subscribers("sports"), 1);
    w.close(c);
    assert_eq!(w.subscribers("sports"), 0);
    assert!(w.st.pushi.personal_sessions.is_empty());
}

#[test]
fn socket_publishing_is_off_unless_the_app_opts_in() {
    let mut w = World::new();
    let c = w.connect();
    w.subscribe(c, "private-a");
    w.got(c);
    w.say(c, json!({ "event": "note", "channel": "private-a", "data": "x" }));
    assert_eq!(w.events(c), ["pusher:error"]);
    assert!(w.fx.ops.is_empty());
}

#[test]
fn socket_publishing_needs_an_authenticated_channel_and_stores_only_with_client_persist() {
    let mut w = World::with(|a| a.client_publish = true);
    let (a, b) = (w.connect(), w.connect());
    w.subscribe(a, "news");
    w.subscribe(a, "private-a");
    w.subscribe(b, "private-a");
    w.got(a);
    w.got(b);
    w.say(a, json!({ "event": "note", "channel": "news", "data": "x" }));
    assert_eq!(w.events(a), ["pusher:error"], "anyone may open a socket: not on public channels");
    w.say(a, json!({ "event": "note", "channel": "private-a", "data": "x" }));
    assert_eq!(w.events(b), ["note"]);
    assert!(w.fx.ops.is_empty(), "not stored without client_persist");
    let mut w = World::with(|a| {
        a.client_publish = true;
        a.client_persist = true;
    });
    let a = w.connect();
    w.subscribe(a, "private-a");
    w.say(a, json!({ "event": "note", "channel": "private-a", "data": "x" }));
    assert!(matches!(&w.fx.ops[..], [(APP, Op::Write(_))]));
}

#[test]
fn latest_needs_the_channel_and_asks_the_store() {
    let mut w = World::new();
    let c = w.connect_as(true);
    w.say(c, json!({ "event": "pusher:latest", "data": { "channel": "private-a" } }));
    assert_eq!(w.events(c), ["pusher:error"], "not subscribed");
    w.subscribe(c, "private-a");
    w.got(c);
    w.say(c, json!({ "event": "pusher:latest", "data": { "channel": "private-a", "count": 1000 } }));
    assert!(matches!(&w.fx.ops[..], [(APP, Op::ChannelEvents { count: 100, .. })]), "pages are capped");
    w.answer_all(|| StoreReply::Events(Vec::new()));
    assert_eq!(w.events(c), ["pusher_internal:latest"]);
}

#[test]
fn pushi_sessions_get_an_unsubscribe_confirmation() {
    let mut w = World::new();
    let c = w.connect_as(true);
    w.subscribe(c, "news");
    w.got(c);
    w.say(c, json!({ "event": "pusher:unsubscribe", "data": { "channel": "news" } }));
    assert_eq!(w.events(c), ["pusher_internal:unsubscription_succeeded"]);
}
