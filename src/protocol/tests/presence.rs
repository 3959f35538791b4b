//! Presence channels: auth over channel_data, members, first join and last leave per user.

use serde_json::{json, Value};

use super::World;
use crate::apps::PresenceAuth;
use crate::protocol::code;

fn data_of(m: &Value) -> Value {
    serde_json::from_str(m["data"].as_str().unwrap()).unwrap()
}

#[test]
fn presence_needs_a_signature_over_channel_data() {
    let mut w = World::new();
    let c = w.connect();
    let data = json!({ "user_id": "u1" }).to_string();
    let auth = w.auth(c, "presence-a", None);
    w.say(
        c,
        json!({ "event": "pusher:subscribe", "data": { "channel": "presence-a", "auth": auth, "channel_data": data } }),
    );
    assert_eq!(w.got(c)[0]["data"]["status"], 401, "signed without channel_data");
    w.say(c, json!({ "event": "pusher:subscribe", "data": { "channel": "presence-a", "auth": auth } }));
    assert_eq!(w.got(c)[0]["data"]["status"], 401, "no channel_data at all");
}

#[test]
fn presence_auth_channel_accepts_the_channel_signature_alone() {
    let mut w = World::with(|a| a.presence_auth = PresenceAuth::Channel);
    let c = w.connect();
    let data = json!({ "user_id": "u1" }).to_string();
    let auth = w.auth(c, "presence-a", None);
    w.say(
        c,
        json!({ "event": "pusher:subscribe", "data": { "channel": "presence-a", "auth": auth, "channel_data": data } }),
    );
    assert_eq!(w.events(c), ["pusher_internal:subscription_succeeded"]);
}

#[test]
fn channel_data_needs_a_user_id() {
    let mut w = World::new();
    let c = w.connect();
    let data = json!({ "user_info": {} }).to_string();
    let auth = w.auth(c, "presence-a", Some(&data));
    w.say(
        c,
        json!({ "event": "pusher:subscribe", "data": { "channel": "presence-a", "auth": auth, "channel_data": data } }),
    );
    assert_eq!(w.got(c)[0]["data"]["status"], 400);
}

#[test]
fn the_reply_lists_members_with_ids_hash_and_count() {
    let mut w = World::new();
    let (a, b) = (w.connect(), w.connect());
    w.join(a, "presence-room", "alice", false);
    w.join(b, "presence-room", "bob", false);
    let reply = data_of(&w.got(b)[0]);
    assert_eq!(reply["presence"]["count"], 2);
    assert_eq!(reply["presence"]["hash"]["alice"]["name"], "alice");
    let mut ids: Vec<&str> = reply["presence"]["ids"].as_array().unwrap().iter().filter_map(Value::as_str).collect();
    ids.sort();
    assert_eq!(ids, ["alice", "bob"]);
}

#[test]
fn member_added_goes_to_the_others_on_the_users_first_connection_only() {
    let mut w = World::hooked();
    let (a, b, b2) = (w.connect(), w.connect(), w.connect());
    w.join(a, "presence-room", "alice", false);
    w.got(a);
    w.join(b, "presence-room", "bob", false);
    assert_eq!(w.events(b), ["pusher_internal:subscription_succeeded"], "no member_added to oneself");
    let added = w.got(a);
    assert_eq!(added[0]["event"], "pusher_internal:member_added");
    assert_eq!(data_of(&added[0])["user_id"], "bob");
    w.join(b2, "presence-room", "bob", false);
    assert!(w.got(a).is_empty(), "bob was there already");
    let hooks = w.fx.hook_names();
    assert_eq!(hooks.iter().filter(|n| *n == "member_added").count(), 2);
}

#[test]
fn member_removed_when_the_users_last_connection_leaves() {
    let mut w = World::hooked();
    let (a, b, b2) = (w.connect(), w.connect(), w.connect());
    w.join(a, "presence-room", "alice", false);
    w.join(b, "presence-room", "bob", false);
    w.join(b2, "presence-room", "bob", false);
    w.got(a);
    w.close(b);
    assert!(w.got(a).is_empty(), "bob still has a connection");
    w.close(b2);
    let removed = w.got(a);
    assert_eq!(removed[0]["event"], "pusher_internal:member_removed");
    assert_eq!(data_of(&removed[0])["user_id"], "bob");
    assert_eq!(w.fx.hook_names().iter().filter(|n| *n == "member_removed").count(), 1);
}

#[test]
fn numeric_user_ids_stay_numbers() {
    let mut w = World::new();
    let (a, b) = (w.connect(), w.connect());
    w.join(a, "presence-room", "alice", false);
    w.got(a);
    let data = json!({ "user_id": 42 }).to_string();
    let auth = w.auth(b, "presence-room", Some(&data));
    w.say(b, json!({ "event": "pusher:subscribe", "data": { "channel": "presence-room", "auth": auth, "channel_data": data } }));
    assert_eq!(data_of(&w.got(a)[0])["user_id"], 42);
}

#[test]
fn a_full_presence_channel_refuses_new_users_with_4100() {
    let mut w = World::new();
    w.st.rules.max_presence_members = 1;
    let (a, b, a2) = (w.connect(), w.connect(), w.connect());
    w.join(a, "presence-room", "alice", false);
    w.join(b, "presence-room", "bob", false);
    assert_eq!(w.got(b)[0]["data"]["status"], code::OVER_CAPACITY);
    w.join(a2, "presence-room", "alice", false);
    assert_eq!(w.events(a2), ["pusher_internal:subscription_succeeded"], "a member's second connection fits");
}

#[test]
fn a_signed_in_connection_may_join_without_channel_data() {
    let mut w = World::new();
    let c = w.connect();
    w.sign_in(c, "u7", &[]);
    w.got(c);
    let auth = w.auth(c, "presence-room", None);
    w.say(c, json!({ "event": "pusher:subscribe", "data": { "channel": "presence-room", "auth": auth } }));
    let reply = data_of(&w.got(c)[0]);
    assert_eq!(reply["presence"]["ids"], json!(["u7"]));
}

#[test]
fn pushi_sessions_get_pushis_member_events() {
    let mut w = World::new();
    let (a, b) = (w.connect_as(true), w.connect());
    w.join(a, "presence-room", "alice", false);
    w.got(a);
    w.join(b, "presence-room", "bob", false);
    let m = &w.got(a)[0];
    assert_eq!(m["event"], "pusher:member_added");
    assert_eq!(m["channel"], "presence-room");
    let member: Value = serde_json::from_str(m["member"].as_str().unwrap()).unwrap();
    assert_eq!(member["user_id"], "bob");
}
