//! Opening, dispatch, pings, sign-in and watchlists, client events, termination.

use std::time::Duration;

use serde_json::{json, Value};

use super::{World, APP, KEY};
use crate::outbox::ConnId;
use crate::ports::BusMessage;
use crate::protocol::{code, session};

fn refused(w: &mut World, key: &str, protocol: Option<&str>) -> (u16, String) {
    let conn = ConnId { key: 99, gen: 1 };
    assert!(session::open(&mut w.st, &mut w.fx, conn, key, protocol, false, &mut w.wire).is_none());
    w.wire.closed.remove(&conn).expect("closed")
}

#[test]
fn open_tells_the_configured_activity_timeout_and_a_socket_id() {
    let mut w = World::new();
    w.st.rules.activity_timeout = Duration::from_secs(77);
    let conn = ConnId { key: 5, gen: 1 };
    let s = session::open(&mut w.st, &mut w.fx, conn, KEY, Some("7"), false, &mut w.wire).unwrap();
    let m = &w.wire.sent[&conn][0];
    assert_eq!(m["event"], "pusher:connection_established");
    let data: Value = serde_json::from_str(m["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["activity_timeout"], 77);
    let id = data["socket_id"].as_str().unwrap();
    let (a, b) = id.split_once('.').unwrap();
    assert!(a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()));
    assert_eq!(w.st.session_by_socket_id(APP, id), Some(s));
    assert_eq!(w.st.session_by_socket_id(APP, &format!("{a}.0{b}")), None, "the whole id is compared");
}

#[test]
fn open_refuses_unknown_key_and_bad_protocol() {
    let mut w = World::new();
    assert_eq!(refused(&mut w, "nope", Some("7")).0, code::APP_NOT_FOUND);
    assert_eq!(refused(&mut w, KEY, None).0, code::NO_PROTOCOL);
    assert_eq!(refused(&mut w, KEY, Some("3")).0, code::UNSUPPORTED_PROTOCOL);
    assert_eq!(refused(&mut w, KEY, Some("x")).0, code::UNSUPPORTED_PROTOCOL);
    assert!(w.st.sessions.is_empty());
}

#[test]
fn open_refuses_a_disabled_app() {
    let mut w = World::with(|a| a.enabled = false);
    assert_eq!(refused(&mut w, KEY, Some("7")).0, code::APP_DISABLED);
}

#[test]
fn connection_quota_counts_open_sessions() {
    let mut w = World::with(|a| a.max_connections = 2);
    let a = w.connect();
    w.connect();
    assert_eq!(refused(&mut w, KEY, Some("7")).0, code::OVER_QUOTA);
    w.close(a);
    w.connect();
    assert_eq!(w.st.connections_of(APP), 2);
}

#[test]
fn ping_is_answered_with_pong() {
    let mut w = World::new();
    let c = w.connect();
    w.say(c, json!({ "event": "pusher:ping", "data": {} }));
    assert_eq!(w.events(c), ["pusher:pong"]);
}

#[test]
fn bad_messages_get_an_error_in_the_sessions_dialect() {
    let mut w = World::new();
    let pusher = w.connect();
    session::message(&mut w.st, &mut w.fx, pusher.session, "not json", &mut w.wire);
    assert_eq!(w.events(pusher), ["pusher:error"]);
    w.say(pusher, json!({ "event": "pusher:nonsense" }));
    assert_eq!(w.events(pusher), ["pusher:error"]);
    assert!(w.wire.closed.is_empty(), "Pusher sessions stay open");
    let pushi = w.connect_as(true);
    session::message(&mut w.st, &mut w.fx, pushi.session, "not json", &mut w.wire);
    assert_eq!(w.wire.closed[&pushi.conn].0, code::INVALID_MESSAGE, "Pushi's clients need a channel: closed");
}

#[test]
fn a_stale_session_key_is_ignored() {
    let mut w = World::new();
    let c = w.connect();
    w.close(c);
    w.close(c);
    w.say(c, json!({ "event": "pusher:ping" }));
    assert!(!session::ping(&w.st, c.session, &mut w.wire));
    assert!(w.got(c).is_empty());
}

#[test]
fn pusher_sessions_get_pusher_ping_pushi_sessions_a_websocket_ping() {
    let mut w = World::new();
    let (a, b) = (w.connect(), w.connect_as(true));
    assert!(session::ping(&w.st, a.session, &mut w.wire));
    assert_eq!(w.events(a), ["pusher:ping"]);
    assert!(!session::ping(&w.st, b.session, &mut w.wire));
    assert!(w.got(b).is_empty());
}

#[test]
fn sign_in_with_a_valid_signature() {
    let mut w = World::new();
    let c = w.connect();
    w.sign_in(c, "u1", &[]);
    assert_eq!(w.events(c), ["pusher:signin_success"]);
    assert_eq!(w.st.users[&(APP, "u1".to_string())], [c.session]);
}

#[test]
fn sign_in_with_a_bad_signature_closes_4009() {
    let mut w = World::new();
    let c = w.connect();
    let user_data = json!({ "id": "u1" }).to_string();
    w.say(c, json!({ "event": "pusher:signin", "data": { "auth": "key:00", "user_data": user_data } }));
    assert_eq!(w.wire.closed[&c.conn].0, code::UNAUTHORIZED);
    assert!(w.st.users.is_empty());
}

#[test]
fn sign_in_as_another_user_is_refused() {
    let mut w = World::new();
    let c = w.connect();
    w.sign_in(c, "u1", &[]);
    w.sign_in(c, "u2", &[]);
    assert_eq!(w.wire.closed[&c.conn].0, code::UNAUTHORIZED);
    assert!(!w.st.users.contains_key(&(APP, "u2".to_string())));
}

#[test]
fn watchers_learn_online_and_offline_once_per_user() {
    let mut w = World::new();
    let watcher = w.connect();
    w.sign_in(watcher, "boss", &["u1"]);
    assert_eq!(w.events(watcher), ["pusher:signin_success"], "u1 is not online yet");
    let (a, b) = (w.connect(), w.connect());
    w.sign_in(a, "u1", &[]);
    let got = w.got(watcher);
    assert_eq!(got.len(), 1);
    assert_eq!(got[0]["event"], "pusher_internal:watchlist_events");
    assert!(got[0]["data"].as_str().unwrap().contains("online"));
    w.sign_in(b, "u1", &[]);
    assert!(w.got(watcher).is_empty(), "the user was online already");
    w.close(a);
    assert!(w.got(watcher).is_empty(), "u1 still has a connection");
    w.close(b);
    assert!(w.got(watcher)[0]["data"].as_str().unwrap().contains("offline"));
}

#[test]
fn a_watcher_signing_in_learns_who_is_online() {
    let mut w = World::new();
    let a = w.connect();
    w.sign_in(a, "u1", &[]);
    let watcher = w.connect();
    w.sign_in(watcher, "boss", &["u1", "u2"]);
    let got = w.got(watcher);
    assert_eq!(got[1]["event"], "pusher_internal:watchlist_events");
    assert!(got[1]["data"].as_str().unwrap().contains("u1") && !got[1]["data"].as_str().unwrap().contains("u2"));
}

#[test]
fn watchlists_are_capped_at_100_ids() {
    let mut w = World::new();
    let c = w.connect();
    let ids: Vec<String> = (0..150).map(|i| format!("u{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    w.sign_in(c, "boss", &refs);
    let got = w.got(c);
    assert!(got.iter().any(|m| m["event"] == "pusher:error" && m["data"]["code"] == code::WATCHLIST_LIMIT));
    assert_eq!(w.st.sessions.get(c.session).unwrap().watchlist.len(), 100);
}

#[test]
fn terminate_closes_every_connection_of_the_user_and_tells_the_bus() {
    let mut w = World::new();
    let (a, b, other) = (w.connect(), w.connect(), w.connect());
    w.sign_in(a, "u1", &[]);
    w.sign_in(b, "u1", &[]);
    w.sign_in(other, "u2", &[]);
    w.fx.listens = true;
    session::terminate_user(&w.st, &mut w.fx, APP, "u1", &mut w.wire);
    assert_eq!(w.wire.closed[&a.conn].0, code::UNAUTHORIZED);
    assert_eq!(w.wire.closed[&b.conn].0, code::UNAUTHORIZED);
    assert!(!w.wire.closed.contains_key(&other.conn));
    assert_eq!(w.fx.bus, [BusMessage::Terminate { app: APP, user_id: "u1".into() }]);
}

#[test]
fn client_events_need_the_app_switch() {
    let mut w = World::with(|a| a.client_events = false);
    let c = w.connect();
    w.subscribe(c, "private-a");
    w.got(c);
    w.say(c, json!({ "event": "client-x", "channel": "private-a", "data": {} }));
    assert_eq!(w.events(c), ["pusher:error"]);
}

#[test]
fn client_events_only_on_authenticated_channels_the_sender_is_on() {
    let mut w = World::new();
    let c = w.connect();
    w.subscribe(c, "news");
    w.got(c);
    w.say(c, json!({ "event": "client-x", "channel": "news", "data": {} }));
    assert_eq!(w.events(c), ["pusher:error"], "public channel");
    w.say(c, json!({ "event": "client-x", "channel": "private-b", "data": {} }));
    assert_eq!(w.events(c), ["pusher:error"], "not subscribed");
    w.say(c, json!({ "event": "client-x", "channel": "private-b", "data": "x".repeat(11 * 1024) }));
    assert_eq!(w.events(c), ["pusher:error"], "too large");
}

#[test]
fn client_events_reach_the_others_with_the_presence_user_id_and_a_web_hook() {
    let mut w = World::hooked();
    let (a, b) = (w.connect(), w.connect());
    w.join(a, "presence-room", "alice", false);
    w.join(b, "presence-room", "bob", false);
    w.got(a);
    w.got(b);
    w.say(a, json!({ "event": "client-typing", "channel": "presence-room", "data": { "k": 1 } }));
    assert!(w.got(a).is_empty(), "the sender does not get its own event");
    let got = w.got(b);
    assert_eq!(got[0]["event"], "client-typing");
    assert_eq!(got[0]["user_id"], "alice");
    let hook = w.fx.webhooks.iter().find(|(_, e)| e["name"] == "client_event").unwrap();
    assert_eq!(hook.1["user_id"], "alice");
    assert_eq!(hook.1["socket_id"], w.socket_id(a).as_str());
}

#[test]
fn client_event_rate_is_enforced_with_4301() {
    let mut w = World::new();
    w.st.rules.client_event_rate = 3;
    let c = w.connect();
    w.subscribe(c, "private-a");
    for _ in 0..4 {
        w.say(c, json!({ "event": "client-x", "channel": "private-a", "data": {} }));
    }
    assert_eq!(w.wire.closed[&c.conn].0, code::CLIENT_EVENT_RATE);
}

#[test]
fn closing_an_app_closes_its_sockets_with_4003() {
    let mut w = World::new();
    let c = w.connect();
    session::close_app(&mut w.st, APP, &mut w.wire);
    assert_eq!(w.wire.closed[&c.conn].0, code::APP_DISABLED);
    assert!(w.st.apps.by_key(KEY).is_none());
}
