//! The security model through real sockets: who may create apps, what an
//! anonymous socket may publish, history retention, freed cache channels,
//! unambiguous peer channels, per-app logins and `/login` rate limits,
//! all-or-nothing publishes and what `/health` shows to whom.

mod common;

use std::time::{Duration, Instant};

use common::*;
use pushi::protocol::auth::{channel_message, hmac_hex};
use serde_json::{json, Value};

const APP: [(&str, &str); 3] = [("PUSHI_APP_ID", "7"), ("PUSHI_APP_KEY", "key7"), ("PUSHI_APP_SECRET", "secret7")];

fn env<'a>(extra: &[(&'a str, &'a str)]) -> Vec<(&'a str, &'a str)> {
    APP.iter().copied().chain(extra.iter().copied()).collect()
}

fn login(server: &Server) -> String {
    let r = http(server.api, "GET", "/login?app_id=7&app_key=key7&app_secret=secret7", None);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    r.json()["token"].as_str().unwrap().to_string()
}

/// An HTTP request with headers and an optional JSON body.
fn request(addr: std::net::SocketAddr, method: &str, path: &str, headers: &[&str], body: Option<&Value>) -> HttpReply {
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n");
    for h in headers {
        raw += &format!("{h}\r\n");
    }
    if !body.is_empty() {
        raw += &format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len());
    }
    raw += "\r\n";
    raw += &body;
    http_raw(addr, raw.as_bytes())
}

struct Client {
    ws: RawWs,
    socket_id: String,
}

impl Client {
    fn connect(server: &Server, key: &str) -> Client {
        let mut ws = RawWs::open(server, &format!("/app/{key}?protocol=7"));
        let hello = read_json(&mut ws);
        assert_eq!(hello["event"], "pusher:connection_established");
        let data: Value = serde_json::from_str(hello["data"].as_str().unwrap()).unwrap();
        Client { ws, socket_id: data["socket_id"].as_str().unwrap().to_string() }
    }

    fn send(&mut self, v: Value) {
        self.ws.send_frame(0x81, v.to_string().as_bytes());
    }

    fn next(&mut self) -> Value {
        read_json(&mut self.ws)
    }

    /// Reads until an event of this name.
    fn until(&mut self, event: &str) -> Value {
        loop {
            let m = self.next();
            if m["event"] == event {
                return m;
            }
        }
    }

    fn subscribe(&mut self, channel: &str, channel_data: Option<&str>) -> Value {
        let auth = if channel.starts_with("private-") || channel.starts_with("presence-") {
            format!("key7:{}", hmac_hex("secret7", &channel_message(&self.socket_id, channel, channel_data)))
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

fn events(server: &Server, sid: &str, channel: &str) -> Vec<Value> {
    let r = http(server.api, "GET", &format!("/events?sid={sid}&count=1000&channel={channel}"), None);
    assert_eq!(r.status, 200);
    r.json()["events"].as_array().unwrap().clone()
}

fn put_app(server: &Server, sid: &str, fields: Value) -> HttpReply {
    request(server.api, "PUT", &format!("/apps/7?sid={sid}"), &[], Some(&fields))
}

#[test]
fn auto_app_creation_is_closed_unless_every_listener_is_loopback() {
    let load = |server: &str| {
        let vars = [("SERVER_HOST", server), ("APP_HOST", "127.0.0.1")];
        pushi::config::Config::load(|k| vars.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string()), &[]).unwrap()
    };
    assert!(load("127.0.0.1").app_creation_open);
    assert!(!load("0.0.0.0").app_creation_open, "a public WebSocket listener answers REST routes too");
}

#[test]
fn app_creation_needs_the_admin_token_when_closed_and_is_capped() {
    let server = Server::start(&env(&[
        ("PUSHI_APP_CREATION", "closed"),
        ("PUSHI_ADMIN_TOKEN", "op-token"),
        ("PUSHI_MAX_APPS", "2"),
    ]));
    for addr in [server.ws, server.api] {
        let r = request(addr, "POST", "/apps", &[], Some(&json!({"name": "evil"})));
        assert_eq!(r.status, 403, "anonymous creation refused on {addr}");
        assert_eq!(r.json()["result"], "error");
        let r = request(addr, "POST", "/apps", &["Authorization: Bearer wrong"], Some(&json!({"name": "evil"})));
        assert_eq!(r.status, 403, "a wrong token is no token");
    }
    let r = request(server.ws, "POST", "/apps", &["Authorization: Bearer op-token"], Some(&json!({"name": "ops"})));
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["name"], "ops");
    let r = request(server.api, "POST", "/apps", &["Authorization: Bearer op-token"], Some(&json!({"name": "more"})));
    assert_eq!(r.status, 403, "PUSHI_MAX_APPS=2 (the configured app and one more)");
    assert_eq!(r.json()["name"], "LimitError");
}

#[test]
fn open_creation_is_rate_limited_and_fields_are_bounded() {
    let server = Server::start(&[("PUSHI_APP_CREATION", "open"), ("PUSHI_APP_CREATION_RATE", "2")]);
    let create = |name: &str| request(server.api, "POST", "/apps", &[], Some(&json!({ "name": name })));
    let long = "n".repeat(101);
    assert_eq!(create(&long).status, 400, "names over 100 characters");
    let big =
        request(server.api, "POST", "/apps", &[], Some(&json!({"name": "big", "description": "x".repeat(17_000)})));
    assert_eq!(big.status, 400, "a field over 16 KiB");
    assert_eq!(create("one").status, 200);
    assert_eq!(create("two").status, 200);
    let third = create("three");
    assert_eq!(third.status, 429, "PUSHI_APP_CREATION_RATE=2 per minute");
    assert!(third.header("Retry-After").is_some_and(|v| v.parse::<u64>().unwrap() >= 1));
}

#[test]
fn an_owner_can_disable_re_enable_and_delete_an_app() {
    let server = Server::start(&APP);
    let sid = login(&server);
    assert_eq!(put_app(&server, &sid, json!({"enabled": false})).status, 200);
    let r = http(server.api, "GET", &format!("/events?sid={sid}"), None);
    assert_eq!(r.status, 403, "a disabled app's API is off");
    let r = put_app(&server, &sid, json!({"enabled": true}));
    assert_eq!((r.status, r.json()["enabled"].clone()), (200, json!(true)), "the owner re-enables it");
    assert_eq!(http(server.api, "GET", &format!("/events?sid={sid}"), None).status, 200);

    let mut c = Client::connect(&server, "key7");
    c.subscribe("news", None);
    let r = request(server.api, "DELETE", &format!("/apps/7?sid={sid}"), &[], None);
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(c.ws.expect_close(), Some(4003), "its sockets are closed");
    assert_eq!(http(server.api, "GET", &format!("/events?sid={sid}"), None).status, 401, "its sessions end");
    let r = http(server.api, "GET", "/login?app_id=7&app_key=key7&app_secret=secret7", None);
    assert_eq!(r.status, 401, "the app is gone");
}

#[test]
fn sockets_publish_only_where_the_app_allows_and_only_on_authenticated_channels() {
    let server = Server::start(&APP);
    let sid = login(&server);
    let mut a = Client::connect(&server, "key7");
    let mut b = Client::connect(&server, "key7");
    for c in [&mut a, &mut b] {
        c.subscribe("room", None);
        c.subscribe("private-room", None);
    }
    // Off by default, whatever the channel.
    a.send(json!({"event": "order-shipped", "channel": "room", "data": "x"}));
    let refused = a.until("pusher:error");
    assert!(refused["data"]["message"].as_str().unwrap().contains("off for this app"), "{refused}");

    assert_eq!(put_app(&server, &sid, json!({"client_publish": true})).status, 200);
    a.send(json!({"event": "order-shipped", "channel": "room", "data": "x"}));
    let refused = a.until("pusher:error");
    assert!(refused["data"]["message"].as_str().unwrap().contains("only on private"), "public channels refused");
    a.send(json!({"event": "chat", "channel": "private-room", "data": "hi", "persist": true}));
    let got = b.until("chat");
    assert_eq!(got["data"], "hi");
    assert!(got.get("mid").is_none(), "not stored without client_persist");
    assert!(events(&server, &sid, "private-room").is_empty());

    assert_eq!(put_app(&server, &sid, json!({"client_persist": true})).status, 200);
    a.send(json!({"event": "chat", "channel": "private-room", "data": "kept", "persist": true}));
    assert!(b.until("chat")["mid"].is_string());
    let stored = events(&server, &sid, "private-room");
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["data"]["data"], "kept");

    // On presence channels the publish carries the publisher's user id.
    let (da, db) = (r#"{"user_id":"ann"}"#, r#"{"user_id":"bob"}"#);
    assert_eq!(a.subscribe("presence-team", Some(da))["event"], "pusher_internal:subscription_succeeded");
    assert_eq!(b.subscribe("presence-team", Some(db))["event"], "pusher_internal:subscription_succeeded");
    a.send(json!({"event": "note", "channel": "presence-team", "data": "from ann", "persist": false}));
    assert_eq!(b.until("note")["user_id"], "ann");
}

#[test]
fn history_is_pruned_to_the_apps_retention() {
    let server = Server::start(&APP);
    let sid = login(&server);
    assert_eq!(put_app(&server, &sid, json!({"history_max_events": 5})).status, 200);
    for i in 0..20 {
        let r = request(
            server.api,
            "POST",
            &format!("/events?sid={sid}"),
            &[],
            Some(&json!({"channel": "log", "data": format!("e{i}")})),
        );
        assert_eq!(r.status, 200);
    }
    // Pruning runs on the store worker after the writes; a read queued after them sees it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut kept = events(&server, &sid, "log");
    while kept.len() > 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        kept = events(&server, &sid, "log");
    }
    let data: Vec<&str> = kept.iter().map(|e| e["data"]["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["e19", "e18", "e17", "e16", "e15"], "the newest 5 stay");
}

fn rss_kib(server: &Server) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", server.child.id())).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn churned_cache_channels_are_freed_and_capped_per_app() {
    let server = Server::start(&env(&[("PUSHI_CACHE_TTL", "1"), ("PUSHI_MAX_CACHE_CHANNELS", "20000")]));
    let sid = login(&server);
    let publish_round = |round: usize| {
        for batch in 0..100 {
            let channels: Vec<String> = (0..100).map(|i| format!("cache-r{round}-{batch}-{i}")).collect();
            let body = json!({"channel": channels, "data": "x".repeat(200), "persist": false});
            let r = request(server.api, "POST", &format!("/events?sid={sid}"), &[], Some(&body));
            assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        }
    };
    // Warm up (allocator arenas, tables), then measure a baseline.
    publish_round(0);
    std::thread::sleep(Duration::from_secs(3));
    let baseline = rss_kib(&server);
    publish_round(1);
    let peak = rss_kib(&server);
    // TTL 1 s, then the idle sweep (each second) and the release of free pages (every 2 s at most).
    std::thread::sleep(Duration::from_secs(6));
    let after = rss_kib(&server);
    let metrics = String::from_utf8(http(server.api, "GET", "/metrics", None).body).unwrap();
    let held = metrics.lines().find(|l| l.starts_with("pushi_channels ")).unwrap_or("?").to_string();
    eprintln!("cache channel churn: baseline {baseline} KiB, peak {peak} KiB, after TTL {after} KiB ({held})");
    assert!(after * 10 <= baseline * 11, "RSS back within 10% of baseline: {baseline} → {peak} → {after} KiB");

    // Every cached event is gone: a new subscriber gets a cache miss.
    let mut c = Client::connect(&server, "key7");
    c.subscribe("cache-r1-0-0", None);
    assert_eq!(c.next()["event"], "pusher:cache_miss");
}

#[test]
fn cache_channels_beyond_the_cap_are_not_cached() {
    let server = Server::start(&env(&[("PUSHI_MAX_CACHE_CHANNELS", "3")]));
    let sid = login(&server);
    let channels: Vec<String> = (0..6).map(|i| format!("cache-c{i}")).collect();
    let body = json!({"channel": channels, "data": "v", "persist": false});
    assert_eq!(request(server.api, "POST", &format!("/events?sid={sid}"), &[], Some(&body)).status, 200);
    let mut c = Client::connect(&server, "key7");
    c.subscribe("cache-c0", None);
    assert_eq!(c.next()["data"], "v", "under the cap: cached");
    c.subscribe("cache-c5", None);
    assert_eq!(c.next()["event"], "pusher:cache_miss", "over the cap: not cached");
}

#[test]
fn peer_user_ids_with_separators_are_refused() {
    let server = Server::start(&APP);
    let mut a = Client::connect(&server, "key7");
    let reply = a.subscribe("presence-chat", Some(r#"{"user_id":"a&b","peer":true}"#));
    assert_eq!(reply["event"], "pusher:subscription_error");
    assert_eq!(reply["data"]["status"], 400);
    // Without the peer flag the same id is an ordinary member, and gets no pair channel.
    let ok = a.subscribe("presence-chat", Some(r#"{"user_id":"a&b"}"#));
    assert_eq!(ok["event"], "pusher_internal:subscription_succeeded");
    let mut b = Client::connect(&server, "key7");
    assert_eq!(
        b.subscribe("presence-chat", Some(r#"{"user_id":"a","peer":true}"#))["event"],
        "pusher_internal:subscription_succeeded"
    );
    b.send(json!({"event": "pusher:subscribe", "data": {"channel": "peer-chat:a&a&b"}}));
    assert_eq!(b.until("pusher:subscription_error")["data"]["status"], 403, "no pair with an unsafe id");
}

#[test]
fn login_is_rate_limited_per_address_and_tokens_are_capped_per_app() {
    let server = Server::start(&APP);
    let mut statuses = Vec::new();
    for _ in 0..32 {
        let r = http(server.api, "GET", "/login?app_id=7&app_key=key7&app_secret=wrong", None);
        if r.status == 429 {
            assert!(r.header("Retry-After").is_some());
            assert_eq!(r.json()["result"], "error");
        }
        statuses.push(r.status);
    }
    assert_eq!(&statuses[..30], &[401; 30], "a burst of 30 is answered");
    assert_eq!(&statuses[30..], &[429, 429], "then 429");

    // Per-app token cap: app 8's many logins never log app 7 out.
    let apps = r#"[{"id":"7","key":"key7","secret":"secret7"},{"id":"8","key":"key8","secret":"secret8"}]"#;
    let path = std::env::temp_dir().join(format!("pushi-apps-login-{}.json", std::process::id()));
    std::fs::write(&path, apps).unwrap();
    let server = Server::start(&[("PUSHI_APPS_FILE", path.to_str().unwrap()), ("PUSHI_LOGIN_RATE", "0")]);
    let seven = login(&server);
    let first8 = http(server.api, "GET", "/login?app_id=8&app_key=key8&app_secret=secret8", None).json()["token"]
        .as_str()
        .unwrap()
        .to_string();
    for _ in 0..300 {
        assert_eq!(http(server.api, "GET", "/login?app_id=8&app_key=key8&app_secret=secret8", None).status, 200);
    }
    assert_eq!(http(server.api, "GET", &format!("/events?sid={seven}"), None).status, 200, "app 7 still logged in");
    assert_eq!(http(server.api, "GET", &format!("/events?sid={first8}"), None).status, 401, "app 8's oldest went");
    std::fs::remove_file(path).unwrap();
}

#[test]
fn pushi_publishes_are_bounded_and_all_or_nothing() {
    let server = Server::start(&env(&[("PUSHI_STORE_QUEUE", "2")]));
    let sid = login(&server);
    let post = |body: Value| request(server.api, "POST", &format!("/events?sid={sid}"), &[], Some(&body));
    let many: Vec<String> = (0..101).map(|i| format!("c{i}")).collect();
    assert_eq!(post(json!({"channel": many, "data": "x"})).status, 413, "at most 100 channels");
    assert_eq!(post(json!({"channel": "c", "data": "x", "extra": "y".repeat(11_000)})).status, 413, "extras ≤ 10 KB");

    // A store queue of 2 cannot take a 3-channel persisted publish: nothing is delivered or stored.
    let mut c = Client::connect(&server, "key7");
    c.subscribe("a", None);
    let r = post(json!({"channel": ["a", "b", "c"], "data": "whole"}));
    assert_eq!(r.status, 503, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(post(json!({"channel": ["a", "b"], "data": "fits"})).status, 200);
    assert_eq!(c.until("message")["data"], "fits", "the refused publish reached nobody");
    let stored: Vec<Value> = events(&server, &sid, "a").iter().map(|e| e["data"]["data"].clone()).collect();
    assert_eq!(stored, [json!("fits")], "and stored nothing");
}

#[test]
fn the_largest_accepted_publish_does_not_stall_a_bystander() {
    let server = Server::start(&APP);
    let sid = login(&server);
    let mut bystander = Client::connect(&server, "key7");
    bystander.subscribe("other", None);
    let channels: Vec<String> = (0..100).map(|i| format!("big{i}")).collect();
    let body = json!({"channel": channels, "data": "d".repeat(60_000), "extra": "e".repeat(9_000)});
    let api = server.api;
    let big = std::thread::spawn(move || {
        for _ in 0..3 {
            assert_eq!(request(api, "POST", &format!("/events?sid={sid}"), &[], Some(&body)).status, 200);
        }
    });
    // Pings from the bystander while the big publishes run; the worst round trip is reported.
    let mut worst = Duration::ZERO;
    while !big.is_finished() {
        let t = Instant::now();
        bystander.send(json!({"event": "pusher:ping", "data": {}}));
        assert_eq!(bystander.until("pusher:pong")["event"], "pusher:pong");
        worst = worst.max(t.elapsed());
    }
    big.join().unwrap();
    eprintln!("bystander worst ping round trip during 3 × 100-channel 69 KB publishes: {worst:?}");
    assert!(worst < Duration::from_secs(2), "the reactor kept serving others ({worst:?})");
}

#[test]
fn health_shows_details_only_to_the_operator_or_an_app_session() {
    let server = Server::start(&env(&[("PUSHI_ADMIN_TOKEN", "op-token")]));
    let public = http(server.api, "GET", "/health", None).json();
    assert_eq!(public["status"], "ok");
    assert!(public["store"].get("backend").is_none() && public.get("connections").is_none(), "{public}");
    let admin = request(server.api, "GET", "/health", &["Authorization: Bearer op-token"], None).json();
    assert!(admin["store"]["backend"].as_str().unwrap().contains("SQLite"), "{admin}");
    let sid = login(&server);
    assert!(http(server.api, "GET", &format!("/health?sid={sid}"), None).json()["store"]["backend"].is_string());
    assert_eq!(http(server.api, "GET", "/health/detailed", None).status, 403);
    let detailed = request(server.api, "GET", "/health/detailed", &["Authorization: Bearer op-token"], None);
    assert_eq!(detailed.status, 200);
    assert!(detailed.json()["checks"]["handlers"].is_object());
}

#[test]
fn socket_ids_and_mids_are_unrelated_random_values() {
    let server = Server::start(&APP);
    let ids: Vec<u64> = (0..20)
        .map(|_| Client::connect(&server, "key7").socket_id.split_once('.').unwrap().1.parse().unwrap())
        .collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), ids.len());
    let sid = login(&server);
    for _ in 0..2 {
        let body = json!({"channel": "m", "data": "x"});
        assert_eq!(request(server.api, "POST", &format!("/events?sid={sid}"), &[], Some(&body)).status, 200);
    }
    let mids: Vec<String> = events(&server, &sid, "m").iter().map(|e| e["mid"].as_str().unwrap().to_string()).collect();
    assert!(mids.iter().all(|m| m.len() == 36 && &m[14..15] == "4"), "UUID v4: {mids:?}");
    // Two consecutive xorshift outputs shared most of their state; OS randomness shares nothing.
    let a = u128::from_str_radix(&mids[0].replace('-', ""), 16).unwrap();
    let b = u128::from_str_radix(&mids[1].replace('-', ""), 16).unwrap();
    assert!((a ^ b).count_ones() > 20, "independent: {mids:?}");
}
