//! The web console's HTTP and feed interface over real sockets: sign-in and
//! its refusals (wrong secret 401, failures limited 429, another origin
//! 403), the cookie's flags, the CSRF token on changes, the app scope (an app
//! session sees only its app, over HTTP and over the feed), the page's CSP,
//! no CORS for console routes, and the live feed (snapshots with
//! connections, channels and members; events as they pass). The browser
//! itself is driven in tests/node/console.test.js.

mod common;

use std::io::Write;
use std::time::{Duration, Instant};

use common::*;
use pushi::protocol::auth::hmac_hex;
use serde_json::{json, Value};

const APPS: &str = r#"[{"id":"1","key":"key1","secret":"secret1"},{"id":"2","key":"key2","secret":"secret2"}]"#;

fn start(extra: &[(&str, &str)]) -> (Server, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("pushi-console-{}-{}", std::process::id(), rand_suffix()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("apps.json");
    std::fs::write(&file, APPS).unwrap();
    let mut env = vec![("PUSHI_APPS_FILE", file.to_str().unwrap().to_string())];
    env.extend(extra.iter().map(|(k, v)| (*k, v.to_string())));
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    (Server::start(&env), dir)
}

/// One request with extra header lines; Host is `test`.
fn request(server: &Server, method: &str, path: &str, headers: &[(&str, &str)], body: Option<&str>) -> HttpReply {
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        raw.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", b.len()));
    }
    raw.push_str("\r\n");
    raw.push_str(body.unwrap_or(""));
    http_raw(server.api, raw.as_bytes())
}

/// Signs in; returns the cookie header value and the CSRF token.
fn sign_in(server: &Server, body: &str) -> (String, String) {
    let r = request(server, "POST", "/console/session", &[("Origin", "http://test")], Some(body));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    let set = r.header("Set-Cookie").expect("a session cookie").to_string();
    assert!(set.contains("HttpOnly") && set.contains("SameSite=Strict") && set.contains("Path=/console"), "{set}");
    let cookie = set.split(';').next().unwrap().to_string();
    (cookie, r.json()["csrf"].as_str().unwrap().to_string())
}

/// Opens the feed with these headers; the reply status (101 when opened) and the socket.
fn open_feed(server: &Server, path: &str, headers: &[(&str, &str)]) -> (u16, Option<RawWs>) {
    let mut stream = std::net::TcpStream::connect(server.api).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut raw = upgrade_request(path).trim_end().to_string();
    for (k, v) in headers {
        raw.push_str(&format!("\r\n{k}: {v}"));
    }
    raw.push_str("\r\n\r\n");
    stream.write_all(raw.as_bytes()).unwrap();
    let reply = read_response(&mut stream);
    if reply.status != 101 {
        return (reply.status, None);
    }
    (101, Some(RawWs::from_stream(stream)))
}

/// Reads feed messages until `want` accepts one (≤ 5 s).
fn feed_until(feed: &mut RawWs, mut want: impl FnMut(&Value) -> bool) -> Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let (first, payload) = feed.read_frame();
        if first & 0x0f != 0x1 {
            continue;
        }
        let v: Value = serde_json::from_slice(&payload).unwrap();
        if want(&v) {
            return v;
        }
    }
    panic!("the feed did not show it within 5 s");
}

fn has_event(batch: &Value, name: &str, channel: &str) -> bool {
    batch["type"] == "events"
        && batch["events"].as_array().unwrap().iter().any(|e| e["name"] == name && e["channel"] == channel)
}

#[test]
fn sign_in_refusals_cookie_flags_and_the_page_policy() {
    let (server, _dir) = start(&[("PUSHI_ADMIN_TOKEN", "admintoken"), ("PUSHI_CORS_ORIGINS", "*")]);
    let page = request(&server, "GET", "/console", &[], None);
    assert_eq!(page.status, 200);
    let csp = page.header("Content-Security-Policy").unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
    assert!(String::from_utf8_lossy(&page.body).contains("/console/console.js"));
    assert_eq!(request(&server, "GET", "/console/console.js", &[], None).status, 200);

    assert_eq!(request(&server, "GET", "/console/session", &[], None).status, 401);
    assert_eq!(request(&server, "GET", "/console/apps/1", &[], None).status, 401);
    let wrong = request(&server, "POST", "/console/session", &[], Some(r#"{"app_id":"1","secret":"nope"}"#));
    assert_eq!(wrong.status, 401);
    assert!(wrong.header("Set-Cookie").is_none());
    let token = request(&server, "POST", "/console/session", &[], Some(r#"{"token":"wrong"}"#));
    assert_eq!(token.status, 401);
    let elsewhere = request(
        &server,
        "POST",
        "/console/session",
        &[("Origin", "http://evil.example")],
        Some(r#"{"app_id":"1","secret":"secret1"}"#),
    );
    assert_eq!(elsewhere.status, 403);
    // Console routes never get CORS headers, even with PUSHI_CORS_ORIGINS=*.
    assert!(elsewhere.header("Access-Control-Allow-Origin").is_none());

    let (cookie, csrf) = sign_in(&server, r#"{"app_id":"1","secret":"secret1"}"#);
    let me = request(&server, "GET", "/console/session", &[("Cookie", &cookie)], None);
    assert_eq!(me.status, 200);
    assert_eq!(me.json()["scope"], "app");
    assert_eq!(me.json()["app_id"], "1");
    assert_eq!(me.json()["apps"].as_array().unwrap().len(), 1, "an app session lists only its app");
    assert_eq!(me.json()["csrf"], csrf.as_str());

    let (admin, _) = sign_in(&server, r#"{"token":"admintoken"}"#);
    let all = request(&server, "GET", "/console/session", &[("Cookie", &admin)], None);
    assert_eq!(all.json()["scope"], "operator");
    assert_eq!(all.json()["apps"].as_array().unwrap().len(), 2);
}

#[test]
fn failed_sign_ins_are_limited_per_address() {
    let (server, _dir) = start(&[]);
    let wrong = r#"{"app_id":"1","secret":"nope"}"#;
    let statuses: Vec<u16> =
        (0..12).map(|_| request(&server, "POST", "/console/session", &[], Some(wrong)).status).collect();
    assert!(statuses[..10].iter().all(|&s| s == 401), "{statuses:?}");
    assert_eq!(statuses[11], 429, "{statuses:?}");
    // Even the right secret waits now: guessing gains nothing.
    let right = request(&server, "POST", "/console/session", &[], Some(r#"{"app_id":"1","secret":"secret1"}"#));
    assert_eq!(right.status, 429);
    assert!(right.header("Retry-After").is_some());
}

#[test]
fn an_app_session_sees_only_its_app_and_changes_need_the_csrf_token() {
    let (server, _dir) = start(&[]);
    let (cookie, csrf) = sign_in(&server, r#"{"app_id":"1","secret":"secret1"}"#);
    let c = cookie.as_str();
    assert_eq!(request(&server, "GET", "/console/apps/1", &[("Cookie", c)], None).status, 200);
    assert_eq!(request(&server, "GET", "/console/apps/2", &[("Cookie", c)], None).status, 403);
    assert_eq!(request(&server, "GET", "/console/apps/nope", &[("Cookie", c)], None).status, 403);
    let forged = format!("{}x", &cookie);
    assert_eq!(request(&server, "GET", "/console/apps/1", &[("Cookie", &forged)], None).status, 401);

    let event = r#"{"channel":"news","name":"hello","data":"{}"}"#;
    let no_token = request(&server, "POST", "/console/events", &[("Cookie", c)], Some(event));
    assert_eq!(no_token.status, 403, "a change without the CSRF token");
    let other_origin = request(
        &server,
        "POST",
        "/console/events",
        &[("Cookie", c), ("X-Console-CSRF", &csrf), ("Origin", "http://evil.example")],
        Some(event),
    );
    assert_eq!(other_origin.status, 403, "a change from another origin");
    let other_app = request(
        &server,
        "POST",
        "/console/events",
        &[("Cookie", c), ("X-Console-CSRF", &csrf)],
        Some(r#"{"app_id":"2","channel":"news","name":"hello","data":"{}"}"#),
    );
    assert_eq!(other_app.status, 403, "a test event for another app");
    let bad = request(
        &server,
        "POST",
        "/console/events",
        &[("Cookie", c), ("X-Console-CSRF", &csrf)],
        Some(r#"{"channel":"news","data":"{}"}"#),
    );
    assert_eq!(bad.status, 400, "the Pusher API's validation applies");

    // The feed: the same cookie and origin rules at the upgrade.
    assert_eq!(open_feed(&server, "/console/feed", &[]).0, 401);
    assert_eq!(open_feed(&server, "/console/feed?app=2", &[("Cookie", c)]).0, 403);
    assert_eq!(open_feed(&server, "/console/feed", &[("Cookie", c), ("Origin", "http://evil.example")]).0, 403);
    let (status, feed) = open_feed(&server, "/console/feed", &[("Cookie", c), ("Origin", "http://test")]);
    assert_eq!(status, 101);
    let mut feed = feed.unwrap();

    // Signed out: the cookie is worth nothing, and its open feed ends (1008).
    let out = request(&server, "DELETE", "/console/session", &[("Cookie", c), ("X-Console-CSRF", &csrf)], None);
    assert_eq!(out.status, 200);
    assert!(out.header("Set-Cookie").unwrap().contains("Max-Age=0"));
    assert_eq!(request(&server, "GET", "/console/session", &[("Cookie", c)], None).status, 401);
    assert_eq!(feed.expect_close(), Some(1008));
}

#[test]
fn the_feed_shows_connections_channels_members_and_events_of_its_app_only() {
    let (server, _dir) = start(&[]);
    let (cookie, csrf) = sign_in(&server, r#"{"app_id":"1","secret":"secret1"}"#);
    let (status, feed) = open_feed(&server, "/console/feed?app=1", &[("Cookie", &cookie)]);
    assert_eq!(status, 101);
    let mut feed = feed.unwrap();
    let first = feed_until(&mut feed, |v| v["type"] == "snapshot");
    assert_eq!(first["apps"][0]["id"], "1");
    assert_eq!(first["apps"][0]["connections"], 0);

    // A client of app 2 is not shown; one of app 1 is, with its channel.
    let mut other = RawWs::open(&server, "/app/key2?protocol=7");
    let _ = other.read_frame();
    other.send_frame(0x81, br#"{"event":"pusher:subscribe","data":{"channel":"secret-plans"}}"#);
    let mut client = RawWs::open(&server, "/app/key1?protocol=7");
    let (_, established) = client.read_frame();
    let established: Value = serde_json::from_slice(&established).unwrap();
    let socket_id = serde_json::from_str::<Value>(established["data"].as_str().unwrap()).unwrap()["socket_id"]
        .as_str()
        .unwrap()
        .to_string();
    let presence_auth = {
        let data = r#"{"user_id":"alice","user_info":{"name":"Alice"}}"#;
        let sig = hmac_hex("secret1", &format!("{socket_id}:presence-room:{data}"));
        json!({ "event": "pusher:subscribe",
                "data": { "channel": "presence-room", "auth": format!("key1:{sig}"), "channel_data": data } })
    };
    client.send_frame(0x81, presence_auth.to_string().as_bytes());
    let batch = feed_until(&mut feed, |v| has_event(v, "member_added", "presence-room"));
    let names: Vec<&str> = batch["events"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert!(!names.contains(&"subscribed") || batch.to_string().contains(&socket_id));
    let snap = feed_until(&mut feed, |v| {
        v["type"] == "snapshot" && v["apps"][0]["channels"].as_array().is_some_and(|c| !c.is_empty())
    });
    let app = &snap["apps"][0];
    assert_eq!(app["connections"], 1);
    assert_eq!(app["sockets"][0]["socket_id"], socket_id.as_str());
    assert_eq!(app["channels"][0]["name"], "presence-room");
    assert_eq!(app["channels"][0]["user_count"], 1);
    assert_eq!(app["channels"][0]["members"][0]["id"], "alice");
    assert!(!snap.to_string().contains("secret-plans"), "nothing of app 2");

    // The test event reaches the client and passes through the feed.
    let r = request(
        &server,
        "POST",
        "/console/events",
        &[("Cookie", &cookie), ("X-Console-CSRF", &csrf), ("Origin", "http://test")],
        Some(r#"{"channel":"presence-room","name":"ping","data":"{\"n\":1}"}"#),
    );
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    loop {
        let (_, payload) = client.read_frame();
        let v: Value = serde_json::from_slice(&payload).unwrap();
        if v["event"] == "ping" {
            assert_eq!(v["data"], "{\"n\":1}");
            break;
        }
    }
    let batch = feed_until(&mut feed, |v| has_event(v, "api_message", "presence-room"));
    let e = batch["events"].as_array().unwrap().iter().find(|e| e["name"] == "api_message").unwrap();
    assert_eq!(e["event"], "ping");
    assert_eq!(e["recipients"], 1);
    assert_eq!(e["app"], "1");
    assert!(!batch.to_string().contains("secret-plans"));

    // The client goes: member_removed, vacated, disconnection.
    drop(client);
    feed_until(&mut feed, |v| has_event(v, "member_removed", "presence-room"));
}

#[test]
fn too_many_feeds_are_refused_with_1013() {
    let (server, _dir) = start(&[]);
    let (cookie, _) = sign_in(&server, r#"{"app_id":"1","secret":"secret1"}"#);
    let mut open = Vec::new();
    for _ in 0..64 {
        let (status, feed) = open_feed(&server, "/console/feed", &[("Cookie", &cookie)]);
        assert_eq!(status, 101);
        open.push(feed.unwrap());
    }
    let (status, feed) = open_feed(&server, "/console/feed", &[("Cookie", &cookie)]);
    assert_eq!(status, 101);
    assert_eq!(feed.unwrap().expect_close(), Some(1013));
}
