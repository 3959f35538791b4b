//! Pushi's REST API at the HTTP level: requests answered after the store
//! commits (the reactor's "awaiting" state), pipelining across such
//! requests, and the Pushi error shapes. The `pushi` PyPI client suite
//! (tests/python/test_pushi_client.py) covers the API as users call it.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const APP: [(&str, &str); 3] = [("PUSHI_APP_ID", "7"), ("PUSHI_APP_KEY", "key7"), ("PUSHI_APP_SECRET", "secret7")];

fn login(server: &Server) -> String {
    let r = http(server.api, "GET", "/login?app_id=7&app_key=key7&app_secret=secret7", None);
    assert_eq!(r.status, 200);
    assert!(r.header("Set-Cookie").is_some_and(|c| c.starts_with("sid=")));
    r.json()["token"].as_str().unwrap().to_string()
}

fn post(path: &str, body: &Value, close: bool) -> String {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
        body.len(),
        if close { "Connection: close\r\n" } else { "" }
    )
}

#[test]
fn pipelined_persisted_publishes_are_answered_in_order_after_commit() {
    let server = Server::start(&APP);
    let sid = login(&server);
    let mut s = TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Three requests in one write: two persisted publishes (answered by the store) around a read.
    let mut batch = post(&format!("/events?sid={sid}"), &json!({"channel": "c", "data": "one"}), false);
    batch += &format!("GET /events?sid={sid}&count=5 HTTP/1.1\r\nHost: t\r\n\r\n");
    batch += &post(&format!("/events?sid={sid}"), &json!({"channel": "c", "data": "two", "persist": false}), false);
    batch += &post(&format!("/events?sid={sid}"), &json!({"channel": "c", "data": "three"}), true);
    s.write_all(batch.as_bytes()).unwrap();
    let first = read_response(&mut s);
    assert_eq!((first.status, first.json()), (200, json!({"result": "success"})));
    let listed = read_response(&mut s);
    let events = listed.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 1, "the read follows the write before it: {events:?}");
    assert_eq!(events[0]["data"]["data"], "one");
    assert!(events[0]["mid"].as_str().is_some_and(|m| m.len() == 36));
    assert_eq!(read_response(&mut s).status, 200, "unpersisted publish");
    let last = read_response(&mut s);
    assert_eq!(last.status, 200);
    assert!(closed_by_peer(&mut s), "Connection: close honoured after a late answer");
    let all = http(server.api, "GET", &format!("/events?sid={sid}"), None).json();
    let data: Vec<&str> =
        all["events"].as_array().unwrap().iter().map(|e| e["data"]["data"].as_str().unwrap()).collect();
    assert_eq!(data, ["three", "one"], "newest first; persist=false is not stored");
}

#[test]
fn pushi_errors_have_pushi_shapes() {
    let server = Server::start(&APP);
    let r = http(server.api, "GET", "/subscriptions", None);
    assert_eq!(r.status, 403);
    assert_eq!(r.json()["result"], "error");
    assert_eq!(r.json()["message"], "User not authenticated");
    let sid = login(&server);
    let r = http(server.api, "POST", &format!("/subscriptions?sid={sid}"), Some(r#"{"user_id":""}"#));
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["errors"]["user_id"][0], "value is empty");
    let r = http(server.api, "GET", &format!("/apps/other?sid={sid}"), None);
    assert_eq!(r.status, 404, "another app's id");
    let r = http(server.api, "PUT", &format!("/apps/7?sid={sid}"), Some(r#"{"name":"renamed","key":"stolen"}"#));
    assert_eq!(r.status, 200);
    assert_eq!(
        (r.json()["name"].as_str(), r.json()["key"].as_str()),
        (Some("renamed"), Some("key7")),
        "key is protected"
    );
    let cookie = format!("GET /apps HTTP/1.1\r\nHost: t\r\nCookie: lang=en; sid={sid}\r\nConnection: close\r\n\r\n");
    assert_eq!(http_raw(server.api, cookie.as_bytes()).status, 200, "sid from the cookie");
    let header = format!("GET /apps HTTP/1.1\r\nHost: t\r\nX-Session-Id: {sid}\r\nConnection: close\r\n\r\n");
    assert_eq!(http_raw(server.api, header.as_bytes()).status, 200, "sid from X-Session-Id");
    let r = http(server.api, "POST", "/logout", None);
    assert_eq!(r.status, 200);
    let r = http(server.api, "GET", &format!("/logout?sid={sid}"), None);
    assert_eq!(r.json(), json!({"result": "success"}));
    assert_eq!(http(server.api, "GET", &format!("/apps?sid={sid}"), None).status, 401, "logged out");
}

#[test]
fn app_creation_can_be_closed() {
    let mut env = APP.to_vec();
    env.push(("PUSHI_APP_CREATION", "closed"));
    let server = Server::start(&env);
    let r = http(server.api, "POST", "/apps", Some(r#"{"name":"x"}"#));
    assert_eq!(r.status, 403);
}

#[test]
fn cors_for_listed_origins_only() {
    let mut env = APP.to_vec();
    env.push(("PUSHI_CORS_ORIGINS", "http://tool.test, https://other.test/"));
    let server = Server::start(&env);
    let sid = login(&server);
    let ask = |raw: String| http_raw(server.api, raw.as_bytes());

    // Preflight from a listed origin: 204 naming the route's methods.
    let pre = ask(
        "OPTIONS /events HTTP/1.1\r\nHost: t\r\nOrigin: http://tool.test\r\nAccess-Control-Request-Method: POST\r\n\
         Access-Control-Request-Headers: content-type\r\nConnection: close\r\n\r\n"
            .to_string(),
    );
    assert_eq!(pre.status, 204);
    assert_eq!(pre.header("Access-Control-Allow-Origin"), Some("http://tool.test"));
    assert_eq!(pre.header("Access-Control-Allow-Credentials"), Some("true"));
    assert_eq!(pre.header("Access-Control-Allow-Methods"), Some("GET, POST"));
    assert_eq!(pre.header("Access-Control-Allow-Headers"), Some("content-type"));

    // An answer given at once, and one given after the store has answered, both carry it.
    let get = |origin: &str, path: &str| {
        ask(format!("GET {path} HTTP/1.1\r\nHost: t\r\nOrigin: {origin}\r\nConnection: close\r\n\r\n"))
    };
    let now = get("https://other.test", "/events");
    assert_eq!((now.status, now.header("Access-Control-Allow-Origin")), (403, Some("https://other.test")));
    let late = get("http://tool.test", &format!("/events?sid={sid}"));
    assert_eq!((late.status, late.header("Access-Control-Allow-Origin")), (200, Some("http://tool.test")));

    // Any other origin gets no CORS headers, and its preflight is an ordinary 405.
    let foreign = get("http://evil.test", &format!("/events?sid={sid}"));
    assert_eq!((foreign.status, foreign.header("Access-Control-Allow-Origin")), (200, None));
    let pre = ask(
        "OPTIONS /events HTTP/1.1\r\nHost: t\r\nOrigin: http://evil.test\r\nAccess-Control-Request-Method: POST\r\n\
         Connection: close\r\n\r\n"
            .to_string(),
    );
    assert_eq!((pre.status, pre.header("Access-Control-Allow-Origin")), (405, None));

    // `*` admits every other origin, never with cookies.
    let mut env = APP.to_vec();
    env.push(("PUSHI_CORS_ORIGINS", "http://tool.test,*"));
    let server = Server::start(&env);
    let any =
        http_raw(server.api, b"GET /events HTTP/1.1\r\nHost: t\r\nOrigin: http://x.test\r\nConnection: close\r\n\r\n");
    assert_eq!(any.header("Access-Control-Allow-Origin"), Some("*"));
    assert_eq!(any.header("Access-Control-Allow-Credentials"), None);
}
