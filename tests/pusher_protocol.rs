//! The Pusher protocol on the wire, with raw frames (exact shapes), and the
//! signed HTTP API with requests signed here. The pusher-js and SDK suites
//! under tests/node and tests/python prove the same with real clients.

mod common;

use std::time::{SystemTime, UNIX_EPOCH};

use common::*;
use pushi::protocol::auth::{channel_message, hmac_hex, md5_hex};
use serde_json::{json, Value};

const APP: [(&str, &str); 3] = [("PUSHI_APP_ID", "42"), ("PUSHI_APP_KEY", "key42"), ("PUSHI_APP_SECRET", "secret42")];

struct Client {
    ws: RawWs,
    socket_id: String,
}

impl Client {
    fn connect(server: &Server) -> Client {
        let mut ws = RawWs::open(server, "/app/key42?protocol=7&client=js&version=8.4.0&flash=false");
        let hello = read_json(&mut ws);
        assert_eq!(hello["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(hello["data"].as_str().expect("data is a string")).unwrap();
        assert_eq!(data["activity_timeout"], 120);
        let socket_id = data["socket_id"].as_str().unwrap().to_string();
        let (a, b) = socket_id.split_once('.').unwrap();
        assert!(a.bytes().chain(b.bytes()).all(|c| c.is_ascii_digit()) && !a.is_empty() && !b.is_empty());
        Client { ws, socket_id }
    }

    fn send(&mut self, v: Value) {
        self.ws.send_frame(0x81, v.to_string().as_bytes());
    }

    fn next(&mut self) -> Value {
        read_json(&mut self.ws)
    }

    fn subscribe(&mut self, channel: &str, channel_data: Option<&str>) -> Value {
        let auth = if channel.starts_with("private-") || channel.starts_with("presence-") {
            format!("key42:{}", hmac_hex("secret42", &channel_message(&self.socket_id, channel, channel_data)))
        } else {
            String::new()
        };
        let mut data = json!({ "channel": channel, "auth": auth });
        if let Some(d) = channel_data {
            data["channel_data"] = json!(d);
        }
        self.send(json!({ "event": "pusher:subscribe", "data": data }));
        self.next()
    }
}

fn read_json(ws: &mut RawWs) -> Value {
    let (first, payload) = ws.read_frame();
    assert_eq!(first, 0x81, "text frame expected, got {first:#x} {:?}", String::from_utf8_lossy(&payload));
    serde_json::from_slice(&payload).unwrap()
}

/// A signed Pusher HTTP API request, as the SDKs build it.
fn api(
    server: &Server,
    method: &str,
    path: &str,
    params: &[(&str, &str)],
    body: Option<Value>,
    secret: &str,
) -> HttpReply {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let ts = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs().to_string();
    let mut query: Vec<(String, String)> =
        vec![("auth_key".into(), "key42".into()), ("auth_timestamp".into(), ts), ("auth_version".into(), "1.0".into())];
    if !body.is_empty() {
        query.push(("body_md5".into(), md5_hex(body.as_bytes())));
    }
    query.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    query.sort();
    let q = query.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join("&");
    let sig = hmac_hex(secret, &format!("{method}\n{path}\n{q}"));
    let target = format!("{path}?{q}&auth_signature={sig}");
    let raw = format!(
        "{method} {target} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_raw(server.api, raw.as_bytes())
}

fn trigger(server: &Server, body: Value) -> HttpReply {
    api(server, "POST", "/apps/42/events", &[], Some(body), "secret42")
}

#[test]
fn connection_errors() {
    let server = Server::start(&APP);
    for (path, code) in [("/app/nokey?protocol=7", 4001), ("/app/key42", 4008), ("/app/key42?protocol=2", 4007)] {
        let mut ws = RawWs::open(&server, path);
        let err = read_json(&mut ws);
        assert_eq!(err["event"], "pusher:error", "{path}");
        assert_eq!(err["data"]["code"], code, "{path}");
        assert_eq!(ws.expect_close(), Some(code), "{path}");
    }
    // Pushi's own URL form: /<app_key>.
    let mut ws = RawWs::open(&server, "/key42");
    assert_eq!(read_json(&mut ws)["event"], "pusher:connection_established");
}

#[test]
fn public_subscribe_trigger_and_exclusion() {
    let server = Server::start(&APP);
    let mut a = Client::connect(&server);
    let mut b = Client::connect(&server);
    for c in [&mut a, &mut b] {
        let ok = c.subscribe("news", None);
        assert_eq!(ok, json!({"event": "pusher_internal:subscription_succeeded", "channel": "news", "data": "{}"}));
    }
    let r = trigger(&server, json!({"name": "flash", "channel": "news", "data": "{\"n\":1}"}));
    assert_eq!((r.status, r.json()), (200, json!({})));
    for c in [&mut a, &mut b] {
        assert_eq!(c.next(), json!({"event": "flash", "channel": "news", "data": "{\"n\":1}"}));
    }
    let r = trigger(&server, json!({"name": "flash", "channels": ["news"], "data": "2", "socket_id": a.socket_id}));
    assert_eq!(r.status, 200);
    assert_eq!(b.next()["data"], "2");
    // a was excluded: its next message is the pong to this ping, not the event.
    a.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(a.next(), json!({"event": "pusher:pong", "data": "{}"}));
}

#[test]
fn private_and_presence_channels() {
    let server = Server::start(&APP);
    let mut a = Client::connect(&server);
    assert_eq!(a.subscribe("private-x", None)["event"], "pusher_internal:subscription_succeeded");
    a.send(json!({"event": "pusher:subscribe", "data": {"channel": "private-y", "auth": "key42:00"}}));
    let err = a.next();
    assert_eq!(err["event"], "pusher:subscription_error");
    assert_eq!(err["data"]["status"], 401);

    let alice = r#"{"user_id":"alice","user_info":{"name":"Alice"}}"#;
    let ok = a.subscribe("presence-room", Some(alice));
    let data: Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["count"], 1);
    let mut b = Client::connect(&server);
    let ok = b.subscribe("presence-room", Some(r#"{"user_id":7,"user_info":{}}"#));
    let data: Value = serde_json::from_str(ok["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["count"], 2);
    assert_eq!(data["presence"]["hash"]["alice"], json!({"name": "Alice"}));
    let added = a.next();
    assert_eq!(added["event"], "pusher_internal:member_added");
    // A numeric user_id stays a number (this used to come back as "7").
    assert_eq!(serde_json::from_str::<Value>(added["data"].as_str().unwrap()).unwrap()["user_id"], 7);
    let ids = &serde_json::from_str::<Value>(ok["data"].as_str().unwrap()).unwrap()["presence"]["ids"];
    assert!(ids.as_array().unwrap().contains(&json!(7)) && ids.as_array().unwrap().contains(&json!("alice")));

    // Client events: relayed to the other member with user_id, never echoed.
    b.send(json!({"event": "client-typing", "channel": "presence-room", "data": {"t": true}}));
    assert_eq!(
        a.next(),
        json!({"event": "client-typing", "channel": "presence-room", "data": {"t": true}, "user_id": 7})
    );
    b.send(json!({"event": "client-typing", "channel": "news", "data": {}}));
    assert_eq!(b.next()["event"], "pusher:error", "client events need a private channel");

    let users = api(&server, "GET", "/apps/42/channels/presence-room/users", &[], None, "secret42");
    let mut ids: Vec<Value> = users.json()["users"].as_array().unwrap().iter().map(|u| u["id"].clone()).collect();
    ids.sort_by_key(|v| v.to_string());
    assert_eq!(ids, vec![json!("alice"), json!(7)], "ids as sent: a number stays a number");
    let info = api(
        &server,
        "GET",
        "/apps/42/channels",
        &[("filter_by_prefix", "presence-"), ("info", "user_count")],
        None,
        "secret42",
    );
    assert_eq!(info.json(), json!({"channels": {"presence-room": {"user_count": 2}}}));

    drop(b);
    let removed = a.next();
    assert_eq!(removed["event"], "pusher_internal:member_removed");
    assert_eq!(removed["data"], "{\"user_id\":7}");
}

#[test]
fn cache_channels_replay_the_last_event() {
    let server = Server::start(&APP);
    let mut a = Client::connect(&server);
    a.subscribe("cache-weather", None);
    assert_eq!(a.next(), json!({"event": "pusher:cache_miss", "channel": "cache-weather"}));
    assert_eq!(trigger(&server, json!({"name": "temp", "channel": "cache-weather", "data": "21"})).status, 200);
    assert_eq!(a.next()["data"], "21");
    let mut b = Client::connect(&server);
    b.subscribe("cache-weather", None);
    assert_eq!(b.next(), json!({"event": "temp", "channel": "cache-weather", "data": "21"}));
}

#[test]
fn bad_input_keeps_the_connection() {
    let server = Server::start(&APP);
    let mut a = Client::connect(&server);
    a.ws.send_frame(0x81, b"{not json");
    assert_eq!(a.next()["event"], "pusher:error");
    a.send(json!({"event": "pusher:subscribe", "data": {"channel": "bad name!"}}));
    assert_eq!(a.next()["event"], "pusher:subscription_error");
    a.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(a.next()["event"], "pusher:pong");
}

#[test]
fn api_rejects_bad_requests() {
    let server = Server::start(&APP);
    let body = json!({"name": "e", "channel": "c", "data": "x"});
    assert_eq!(api(&server, "POST", "/apps/42/events", &[], Some(body.clone()), "wrong").status, 401);
    assert_eq!(api(&server, "POST", "/apps/43/events", &[], Some(body), "secret42").status, 404);
    let unsigned = http(server.api, "POST", "/apps/42/events", Some("{}"));
    assert_eq!(unsigned.status, 401);
    let big = json!({"name": "e", "channel": "c", "data": "x".repeat(11_000)});
    assert_eq!(trigger(&server, big).status, 413);
    assert_eq!(trigger(&server, json!({"name": "e", "channel": "c"})).status, 400);
    let batch: Vec<Value> = (0..11).map(|i| json!({"name": "e", "channel": format!("c{i}"), "data": "x"})).collect();
    assert_eq!(
        api(&server, "POST", "/apps/42/batch_events", &[], Some(json!({"batch": batch})), "secret42").status,
        400
    );
}

fn signin(c: &mut Client, user_data: &str) -> Value {
    let auth = format!("key42:{}", hmac_hex("secret42", &format!("{}::user::{user_data}", c.socket_id)));
    c.send(json!({"event": "pusher:signin", "data": {"auth": auth, "user_data": user_data}}));
    c.next()
}

#[test]
fn signin_watchlist_send_to_user_and_terminate() {
    let server = Server::start(&APP);
    let mut watcher = Client::connect(&server);
    let ok = signin(&mut watcher, r#"{"id":"w","watchlist":["u1","u2"]}"#);
    assert_eq!(ok["event"], "pusher:signin_success");
    let mut u1 = Client::connect(&server);
    assert_eq!(signin(&mut u1, r#"{"id":"u1"}"#)["event"], "pusher:signin_success");
    let online = watcher.next();
    assert_eq!(online["event"], "pusher_internal:watchlist_events");
    let events: Value = serde_json::from_str(online["data"].as_str().unwrap()).unwrap();
    assert_eq!(events, json!({"events": [{"name": "online", "user_ids": ["u1"]}]}));

    // pusher-js subscribes to #server-to-user-<id> after signin; events for the user arrive there.
    assert_eq!(u1.subscribe("#server-to-user-u1", None)["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(watcher.subscribe("#server-to-user-u1", None)["event"], "pusher:subscription_error");
    let r = trigger(&server, json!({"name": "dm", "channel": "#server-to-user-u1", "data": "hi"}));
    assert_eq!(r.status, 200);
    assert_eq!(u1.next(), json!({"event": "dm", "channel": "#server-to-user-u1", "data": "hi"}));

    let r = api(&server, "POST", "/apps/42/users/u1/terminate_connections", &[], Some(json!({})), "secret42");
    assert_eq!((r.status, r.json()), (200, json!({})));
    assert_eq!(u1.next()["data"]["code"], 4009);
    assert_eq!(u1.ws.expect_close(), Some(4009));
    let offline = watcher.next();
    let events: Value = serde_json::from_str(offline["data"].as_str().unwrap()).unwrap();
    assert_eq!(events, json!({"events": [{"name": "offline", "user_ids": ["u1"]}]}));

    // A bad signature closes with 4009.
    let mut bad = Client::connect(&server);
    bad.send(json!({"event": "pusher:signin", "data": {"auth": "key42:00", "user_data": "{\"id\":\"x\"}"}}));
    assert_eq!(bad.next()["data"]["code"], 4009);
    assert_eq!(bad.ws.expect_close(), Some(4009));
}

#[test]
fn client_event_rate_limit_closes_with_4301() {
    let server = Server::start(&APP);
    let mut a = Client::connect(&server);
    a.subscribe("private-chat", None);
    // 25 in a burst: even if a one-second window boundary falls inside it, one window sees more than 10.
    for _ in 0..25 {
        a.send(json!({"event": "client-x", "channel": "private-chat", "data": {}}));
    }
    let err = a.next();
    assert_eq!(err["data"]["code"], 4301);
    assert_eq!(a.ws.expect_close(), Some(4301));
}

#[test]
fn subscribing_twice_keeps_one_membership() {
    let server = Server::start(&APP);
    let mut a = Client::connect(&server);
    let me = r#"{"user_id":"solo"}"#;
    a.subscribe("presence-dup", Some(me));
    let again = a.subscribe("presence-dup", Some(me));
    assert_eq!(again["event"], "pusher_internal:subscription_succeeded");
    let data: Value = serde_json::from_str(again["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["presence"]["count"], 1);
    assert_eq!(trigger(&server, json!({"name": "once", "channel": "presence-dup", "data": "1"})).status, 200);
    assert_eq!(a.next()["event"], "once");
    a.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(a.next()["event"], "pusher:pong", "the event came exactly once");
    let socket_excluded =
        trigger(&server, json!({"name": "x", "channel": "presence-dup", "data": "1", "socket_id": a.socket_id}));
    assert_eq!(socket_excluded.status, 200);
    a.send(json!({"event": "pusher:ping", "data": {}}));
    assert_eq!(a.next()["event"], "pusher:pong", "excluded by socket_id");
}

#[test]
fn presence_member_limit_is_configurable() {
    let mut env = APP.to_vec();
    env.push(("PUSHI_MAX_PRESENCE_MEMBERS", "2"));
    let server = Server::start(&env);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(&server)).collect();
    for (i, c) in clients.iter_mut().enumerate().take(2) {
        let data = format!(r#"{{"user_id":"u{i}"}}"#);
        assert_eq!(c.subscribe("presence-small", Some(&data))["event"], "pusher_internal:subscription_succeeded");
    }
    // A second connection of an existing member still fits; a third user does not.
    let third = clients[2].subscribe("presence-small", Some(r#"{"user_id":"u9"}"#));
    assert_eq!(third["event"], "pusher:subscription_error");
    assert_eq!(third["data"]["status"], 4100);
    let again = clients[2].subscribe("presence-small", Some(r#"{"user_id":"u0"}"#));
    assert_eq!(again["event"], "pusher_internal:subscription_succeeded");
}

#[test]
fn app_connection_quota_refuses_with_4004_and_spares_the_others() {
    let dir = std::env::temp_dir().join(format!("pushi-quota-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("apps.json");
    std::fs::write(&file, r#"[{"id":"42","key":"key42","secret":"secret42","max_connections":2}]"#).unwrap();
    let server = Server::start(&[("PUSHI_APPS_FILE", file.to_str().unwrap())]);
    let mut first: Vec<Client> = (0..2).map(|_| Client::connect(&server)).collect();
    for c in &mut first {
        assert_eq!(c.subscribe("news", None)["event"], "pusher_internal:subscription_succeeded");
    }
    let mut third = RawWs::open(&server, "/app/key42?protocol=7");
    let err = read_json(&mut third);
    assert_eq!((err["event"].as_str(), err["data"]["code"].as_u64()), (Some("pusher:error"), Some(4004)));
    assert_eq!(third.expect_close(), Some(4004));
    assert_eq!(trigger(&server, json!({"name": "e", "channel": "news", "data": "still here"})).status, 200);
    for c in &mut first {
        assert_eq!(c.next()["data"], "still here");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn channels_per_connection_are_limited() {
    let mut env = APP.to_vec();
    env.push(("PUSHI_MAX_CHANNELS_PER_CONNECTION", "3"));
    let server = Server::start(&env);
    let mut c = Client::connect(&server);
    for i in 0..3 {
        assert_eq!(c.subscribe(&format!("c{i}"), None)["event"], "pusher_internal:subscription_succeeded");
    }
    let refused = c.subscribe("c3", None);
    assert_eq!(refused["event"], "pusher:subscription_error");
    assert_eq!(refused["data"]["status"], 429);
    assert_eq!(c.subscribe("c0", None)["event"], "pusher_internal:subscription_succeeded", "re-subscribing fits");
    c.send(json!({"event": "pusher:unsubscribe", "data": {"channel": "c1"}}));
    assert_eq!(c.subscribe("c3", None)["event"], "pusher_internal:subscription_succeeded", "room again after leaving");
}

#[test]
fn api_rate_limit_answers_429_and_delivery_goes_on() {
    let mut env = APP.to_vec();
    env.push(("PUSHI_API_RATE", "2"));
    let server = Server::start(&env);
    let mut c = Client::connect(&server);
    c.subscribe("news", None);
    let replies: Vec<HttpReply> =
        (0..12).map(|i| trigger(&server, json!({"name": "e", "channel": "news", "data": i.to_string()}))).collect();
    let statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    assert!((2..12).contains(&ok), "a burst of one second's budget, then refusals: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 200 || *s == 429), "{statuses:?}");
    let limited = replies.iter().find(|r| r.status == 429).unwrap();
    assert_eq!(limited.header("Retry-After"), Some("1"));
    for _ in 0..ok {
        assert_eq!(c.next()["event"], "e", "accepted events are delivered");
    }
}

#[test]
fn client_event_names_are_limited_to_200_characters() {
    let server = Server::start(&APP);
    let mut a = Client::connect(&server);
    let mut b = Client::connect(&server);
    a.subscribe("private-room", None);
    b.subscribe("private-room", None);
    let long = format!("client-{}", "x".repeat(300));
    a.send(json!({"event": long, "channel": "private-room", "data": {}}));
    let err = a.next();
    assert_eq!(err["event"], "pusher:error", "{err}");
    assert!(err["data"]["message"].as_str().unwrap().contains("200"), "{err}");
    let ok = format!("client-{}", "x".repeat(193));
    a.send(json!({"event": ok, "channel": "private-room", "data": {}}));
    assert_eq!(b.next()["event"], ok.as_str(), "200 characters are relayed; the long one was not");
}

#[test]
fn pushi_url_sessions_get_no_message_without_a_channel() {
    let server = Server::start(&APP);
    let mut ws = RawWs::open(&server, "/key42");
    assert_eq!(read_json(&mut ws)["event"], "pusher:connection_established");
    // A refusal belonging to a channel carries it.
    ws.send_frame(0x81, json!({"event": "say", "channel": "news", "data": "x"}).to_string().as_bytes());
    let err = read_json(&mut ws);
    assert_eq!((err["event"].as_str(), err["channel"].as_str()), (Some("pusher:error"), Some("news")), "{err}");
    // Anything else closes with 4303 instead of a channel-less message.
    ws.send_frame(0x81, b"{not json");
    assert_eq!(ws.expect_close(), Some(4303));
}

#[test]
fn clients_are_told_the_configured_activity_timeout() {
    let server = Server::start(&[APP[0], APP[1], APP[2], ("PUSHI_ACTIVITY_TIMEOUT", "45")]);
    let mut ws = RawWs::open(&server, "/app/key42?protocol=7");
    let hello = read_json(&mut ws);
    let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
    assert_eq!(data["activity_timeout"], 45);
}
