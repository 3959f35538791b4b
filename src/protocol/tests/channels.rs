//! Subscribing to each channel kind, cache channels, counts and the publish pipeline.

use serde_json::{json, Map, Value};

use super::{World, APP};
use crate::ports::BusMessage;
use crate::protocol::publish::{publish, Publication};
use crate::protocol::remote::apply_remote;
use crate::store::pool::Op;

fn publication(channels: &[&str]) -> Publication {
    Publication {
        app: APP,
        channels: channels.iter().map(|c| c.to_string()).collect(),
        event: "ev".into(),
        data: json!("hello"),
        extra: Map::new(),
        persist: false,
        except: None,
        except_socket: None,
        owner_id: None,
        once_per_socket: false,
    }
}

fn error_status(m: &Value) -> u64 {
    assert_eq!(m["event"], "pusher:subscription_error", "{m}");
    m["data"]["status"].as_u64().unwrap()
}

#[test]
fn public_channels_need_no_auth_and_raise_occupied_and_vacated_once() {
    let mut w = World::hooked();
    let (a, b) = (w.connect(), w.connect());
    w.say(a, json!({ "event": "pusher:subscribe", "data": { "channel": "news" } }));
    w.say(b, json!({ "event": "pusher:subscribe", "data": { "channel": "news" } }));
    assert_eq!(w.events(a), ["pusher_internal:subscription_succeeded"]);
    assert_eq!(w.subscribers("news"), 2);
    w.close(a);
    w.close(b);
    assert_eq!(w.fx.hook_names(), ["channel_occupied", "channel_vacated"]);
    assert!(w.st.channels.find(APP, "news").is_none(), "a vacant channel is freed");
}

#[test]
fn private_channels_need_a_valid_signature() {
    let mut w = World::new();
    let c = w.connect();
    w.say(c, json!({ "event": "pusher:subscribe", "data": { "channel": "private-a", "auth": "key:bad" } }));
    assert_eq!(error_status(&w.got(c)[0]), 401);
    let other = w.connect();
    let stolen = w.auth(other, "private-a", None);
    w.say(c, json!({ "event": "pusher:subscribe", "data": { "channel": "private-a", "auth": stolen } }));
    assert_eq!(error_status(&w.got(c)[0]), 401, "an auth for another socket");
    w.subscribe(c, "private-a");
    assert_eq!(w.events(c), ["pusher_internal:subscription_succeeded"]);
    w.subscribe(c, "private-encrypted-b");
    assert_eq!(w.events(c), ["pusher_internal:subscription_succeeded"]);
}

#[test]
fn invalid_channel_names_are_refused_with_400() {
    let mut w = World::new();
    let c = w.connect();
    for name in ["", "a b", "#other", &"x".repeat(201)] {
        w.say(c, json!({ "event": "pusher:subscribe", "data": { "channel": name } }));
        assert_eq!(error_status(&w.got(c)[0]), 400, "{name:?}");
    }
}

#[test]
fn server_to_user_channels_need_sign_in_as_that_user() {
    let mut w = World::new();
    let c = w.connect();
    w.subscribe(c, "#server-to-user-u1");
    assert_eq!(error_status(&w.got(c)[0]), 401);
    w.sign_in(c, "u2", &[]);
    w.got(c);
    w.subscribe(c, "#server-to-user-u1");
    assert_eq!(error_status(&w.got(c)[0]), 401, "signed in as someone else");
    let d = w.connect();
    w.sign_in(d, "u1", &[]);
    w.got(d);
    w.subscribe(d, "#server-to-user-u1");
    assert_eq!(w.events(d), ["pusher_internal:subscription_succeeded"]);
}

#[test]
fn channels_per_connection_are_capped_with_429() {
    let mut w = World::new();
    w.st.rules.max_channels_per_connection = 2;
    let c = w.connect();
    w.subscribe(c, "a");
    w.subscribe(c, "b");
    w.got(c);
    w.subscribe(c, "c");
    assert_eq!(error_status(&w.got(c)[0]), 429);
    w.subscribe(c, "a");
    assert_eq!(w.events(c), ["pusher_internal:subscription_succeeded"], "a channel it is on is confirmed again");
    assert_eq!(w.subscribers("a"), 1, "one membership");
}

#[test]
fn subscription_count_goes_to_every_subscriber_when_the_app_wants_it() {
    let mut w = World::with(|a| a.subscription_count = true);
    let (a, b) = (w.connect(), w.connect());
    w.subscribe(a, "news");
    w.got(a);
    w.subscribe(b, "news");
    let got = w.got(a);
    assert_eq!(got[0]["event"], "pusher_internal:subscription_count");
    assert!(got[0]["data"].as_str().unwrap().contains("2"));
    w.close(b);
    assert!(w.got(a)[0]["data"].as_str().unwrap().contains("1"));
}

#[test]
fn unsubscribe_leaves_and_frees_the_channel() {
    let mut w = World::new();
    let c = w.connect();
    w.subscribe(c, "news");
    w.say(c, json!({ "event": "pusher:unsubscribe", "data": { "channel": "news" } }));
    assert_eq!(w.subscribers("news"), 0);
    assert!(w.st.sessions.get(c.session).unwrap().subs.is_empty());
}

#[test]
fn a_cache_channel_gives_new_subscribers_the_last_event_or_a_miss() {
    let mut w = World::hooked();
    let c = w.connect();
    w.subscribe(c, "cache-a");
    let got = w.got(c);
    assert_eq!(got[1]["event"], "pusher:cache_miss");
    assert!(w.fx.hook_names().contains(&"cache_miss".to_string()));
    publish(&mut w.st, &mut w.fx, publication(&["cache-b"]), None, &mut w.wire).unwrap();
    let d = w.connect();
    w.subscribe(d, "cache-b");
    let got = w.got(d);
    assert_eq!(got[1]["event"], "ev", "the cached event follows the confirmation");
    assert_eq!(got[1]["data"], "hello");
}

#[test]
fn cache_channels_are_capped_per_app() {
    let mut w = World::new();
    w.st.rules.max_cache_channels = 3;
    for i in 0..5 {
        publish(&mut w.st, &mut w.fx, publication(&[&format!("cache-{i}")]), None, &mut w.wire).unwrap();
    }
    assert_eq!(w.st.channels.cached_count(APP), 3);
}

#[test]
fn publish_skips_the_excluded_socket_and_reaches_the_rest() {
    let mut w = World::new();
    let (a, b) = (w.connect(), w.connect());
    w.subscribe(a, "news");
    w.subscribe(b, "news");
    w.got(a);
    w.got(b);
    let mut p = publication(&["news"]);
    p.except = Some(a.session);
    publish(&mut w.st, &mut w.fx, p, None, &mut w.wire).unwrap();
    assert!(w.got(a).is_empty());
    assert_eq!(w.got(b)[0], json!({ "event": "ev", "channel": "news", "data": "hello" }));
}

#[test]
fn a_publish_the_store_cannot_take_has_no_effect_at_all() {
    let mut w = World::new();
    let c = w.connect();
    w.subscribe(c, "news");
    w.got(c);
    w.fx.full = true;
    let mut p = publication(&["news", "other"]);
    p.persist = true;
    assert!(publish(&mut w.st, &mut w.fx, p.clone(), None, &mut w.wire).is_err());
    assert!(w.got(c).is_empty(), "nothing delivered");
    assert_eq!(w.st.seq, 0);
    w.fx.full = false;
    let mids = publish(&mut w.st, &mut w.fx, p, None, &mut w.wire).unwrap();
    assert_eq!(mids.len(), 2);
    assert_eq!(w.fx.ops.iter().filter(|(_, op)| matches!(op, Op::Write(_))).count(), 2);
    assert_eq!(w.st.seq, 2);
    assert_eq!(w.got(c)[0]["mid"], mids[0].as_str());
}

#[test]
fn server_to_user_publishes_reach_that_users_connections_only() {
    let mut w = World::new();
    let (a, b) = (w.connect(), w.connect());
    w.sign_in(a, "u1", &[]);
    w.sign_in(b, "u2", &[]);
    w.got(a);
    w.got(b);
    publish(&mut w.st, &mut w.fx, publication(&["#server-to-user-u1"]), None, &mut w.wire).unwrap();
    assert_eq!(w.events(a), ["ev"]);
    assert!(w.got(b).is_empty());
}

#[test]
fn once_per_socket_delivers_one_copy_across_channels() {
    let mut w = World::new();
    let c = w.connect();
    w.subscribe(c, "a");
    w.subscribe(c, "b");
    w.got(c);
    let mut p = publication(&["a", "b"]);
    publish(&mut w.st, &mut w.fx, p.clone(), None, &mut w.wire).unwrap();
    assert_eq!(w.got(c).len(), 2, "Pusher: one per channel");
    p.once_per_socket = true;
    publish(&mut w.st, &mut w.fx, p, None, &mut w.wire).unwrap();
    assert_eq!(w.got(c).len(), 1, "Pushi: once per socket");
}

#[test]
fn the_bus_carries_publishes_and_remote_ones_reach_local_subscribers() {
    let mut w = World::new();
    let (a, b) = (w.connect(), w.connect());
    w.subscribe(a, "news");
    w.subscribe(b, "news");
    w.got(a);
    w.got(b);
    w.fx.listens = true;
    let mut p = publication(&["news"]);
    p.except = Some(a.session);
    publish(&mut w.st, &mut w.fx, p, None, &mut w.wire).unwrap();
    let sid = w.socket_id(a);
    match &w.fx.bus[..] {
        [BusMessage::ChannelEvent { channel, except, .. }] => {
            assert_eq!(channel, "news");
            assert_eq!(except.as_deref(), Some(sid.as_str()));
        }
        other => panic!("{other:?}"),
    }
    w.got(b);
    let remote = BusMessage::ChannelEvent {
        app: APP,
        channel: "news".into(),
        message: json!({ "event": "far", "channel": "news", "data": "x" }).to_string(),
        except: Some(sid),
        cache: false,
    };
    apply_remote(&mut w.st, &mut w.fx, &remote, &mut w.wire);
    assert!(w.got(a).is_empty(), "the excluded socket id is honoured on every node");
    assert_eq!(w.events(b), ["far"]);

    // A REST socket_id of another node's connection still travels with the message.
    w.fx.bus.clear();
    let mut p = publication(&["news"]);
    p.except_socket = Some("7.123456789".into());
    publish(&mut w.st, &mut w.fx, p, None, &mut w.wire).unwrap();
    match &w.fx.bus[..] {
        [BusMessage::ChannelEvent { except, .. }] => assert_eq!(except.as_deref(), Some("7.123456789")),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_remote_publish_to_a_cache_channel_is_cached_here_too() {
    let mut w = World::new();
    let text = json!({ "event": "headline", "channel": "cache-news", "data": "far" }).to_string();
    let remote = |cache| BusMessage::ChannelEvent {
        app: APP,
        channel: "cache-news".into(),
        message: text.clone(),
        except: None,
        cache,
    };
    apply_remote(&mut w.st, &mut w.fx, &remote(true), &mut w.wire);
    let c = w.connect();
    w.subscribe(c, "cache-news");
    let got = w.got(c);
    assert_eq!(got.last().unwrap()["event"], "headline", "{got:?}");

    // A client event on a cache channel is not kept (as locally).
    let mut w = World::new();
    apply_remote(&mut w.st, &mut w.fx, &remote(false), &mut w.wire);
    let c = w.connect();
    w.subscribe(c, "cache-news");
    assert_eq!(w.got(c).last().unwrap()["event"], "pusher:cache_miss");
}

#[test]
fn delivery_targets_get_a_publish_once_per_target() {
    let mut w = World::new();
    let t = crate::store::TargetRecord {
        app: "1".into(),
        kind: "web".into(),
        target: "https://example.com/hook".into(),
        event: "news".into(),
        extra: json!({}),
        created: 0,
    };
    w.st.pushi.add_target(APP, &t);
    let mut other = t.clone();
    other.event = "more".into();
    w.st.pushi.add_target(APP, &other);
    publish(&mut w.st, &mut w.fx, publication(&["news", "more"]), None, &mut w.wire).unwrap();
    assert_eq!(w.fx.delivered.len(), 1, "the same target on two channels gets it once");
    assert_eq!(w.fx.delivered[0].1[0].target, "https://example.com/hook");
}
