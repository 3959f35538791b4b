//! The network layer's memory bounds on the real server: big replies are
//! delivered whole while a reader that never reads is still cut (and logged);
//! the process-wide input budget refuses new partial input once spent; stalled
//! partial input is closed; the close handshake ends with the server closing TCP.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const APP: [(&str, &str); 3] = [("PUSHI_APP_ID", "9"), ("PUSHI_APP_KEY", "key9"), ("PUSHI_APP_SECRET", "secret9")];

fn login(server: &Server) -> String {
    let r = http(server.api, "GET", "/login?app_id=9&app_key=key9&app_secret=secret9", None);
    assert_eq!(r.status, 200);
    r.json()["token"].as_str().unwrap().to_string()
}

fn publish(server: &Server, sid: &str, body: &Value) -> HttpReply {
    http(server.api, "POST", &format!("/events?sid={sid}"), Some(&body.to_string()))
}

fn read_json(ws: &mut RawWs) -> Value {
    let (first, payload) = ws.read_frame();
    assert_eq!(first, 0x81, "text frame expected, got {first:#x}");
    serde_json::from_slice(&payload).unwrap()
}

fn pusher_client(server: &Server) -> RawWs {
    let mut ws = RawWs::open(server, "/app/key9?protocol=7&client=js&version=8.4.0&flash=false");
    assert_eq!(read_json(&mut ws)["event"], "pusher:connection_established");
    ws
}

/// 24 stored events of 240 KB: one history page of about 5.8 MB, far above
/// the 1 MiB high-water mark, comes back whole over HTTP and WebSocket, and
/// the connection stays usable afterwards.
#[test]
fn history_page_larger_than_the_high_water_mark_is_delivered_whole() {
    let mut env = APP.to_vec();
    env.push(("PUSHI_MAX_MESSAGE_BYTES", "262144"));
    env.push(("PUSHI_WRITE_HIGH_WATER", "1048576"));
    let server = Server::start(&env);
    let sid = login(&server);
    let filler = "x".repeat(240_000);
    for i in 0..24 {
        let r = publish(&server, &sid, &json!({"channel": "big", "data": format!("{i}:{filler}")}));
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    }

    // HTTP: GET /events on a keep-alive connection, then another request on it.
    let mut s = TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(format!("GET /events?sid={sid}&channel=big&count=24 HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes()).unwrap();
    let page = read_response(&mut s);
    assert_eq!(page.status, 200);
    assert!(page.body.len() > 5 * 1024 * 1024, "page of {} bytes", page.body.len());
    let events = page.json()["events"].as_array().unwrap().clone();
    assert_eq!(events.len(), 24);
    assert!(events.iter().all(|e| e["data"]["data"].as_str().is_some_and(|d| d.len() > 240_000)));
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).status, 200, "the connection survives the big reply");

    // WebSocket: pusher:latest on a subscribed channel.
    let mut ws = pusher_client(&server);
    ws.stream.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    ws.send_frame(0x81, json!({"event": "pusher:subscribe", "data": {"channel": "big"}}).to_string().as_bytes());
    let mut latest = None;
    ws.send_frame(
        0x81,
        json!({"event": "pusher:latest", "data": {"channel": "big", "count": 24}}).to_string().as_bytes(),
    );
    for _ in 0..5 {
        let (first, payload) = ws.read_frame();
        assert_eq!(first, 0x81);
        let v: Value = serde_json::from_slice(&payload).unwrap();
        if v["event"] == "pusher_internal:latest" {
            latest = Some((payload.len(), v));
            break;
        }
    }
    let (size, v) = latest.expect("pusher_internal:latest");
    assert!(size > 5 * 1024 * 1024, "latest frame of {size} bytes");
    assert!(v["data"].to_string().matches("23:xxx").count() >= 1, "the newest event is in the page");
    ws.send_frame(0x89, b"still there?");
    let (first, payload) = ws.read_frame();
    assert_eq!((first, payload.as_slice()), (0x8a, &b"still there?"[..]), "the WebSocket survives the big reply");
}

/// A subscriber that never reads while broadcasts pile up is cut once its
/// unread backlog passes the high-water mark, and the cut is logged at warn.
#[test]
fn reader_that_never_reads_is_cut_and_logged_at_warn() {
    let mut env = APP.to_vec();
    env.push(("PUSHI_WRITE_HIGH_WATER", "262144"));
    let server = Server::start(&env);
    let sid = login(&server);
    let mut idle = pusher_client(&server);
    idle.send_frame(0x81, json!({"event": "pusher:subscribe", "data": {"channel": "feed"}}).to_string().as_bytes());
    assert_eq!(read_json(&mut idle)["event"], "pusher_internal:subscription_succeeded");
    let data = "y".repeat(60_000);
    // Bounded: at most 600 x 60 KB (36 MB) published, far beyond the socket
    // buffers plus the 256 KB mark.
    let mut cut = false;
    for _ in 0..600 {
        let r = publish(&server, &sid, &json!({"channel": "feed", "data": data, "persist": false}));
        assert_eq!(r.status, 200);
        if !server.log_lines("slow consumer cut").is_empty() {
            cut = true;
            break;
        }
    }
    assert!(cut, "never cut; log: {:?}", server.log_lines("conn"));
    let line = server.log_lines("slow consumer cut").remove(0);
    assert!(line.contains("WARN"), "logged at warn: {line}");
    // The idle client now finds the end of its stream after what was in flight.
    idle.stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut sink = vec![0u8; 1 << 16];
    let mut total = 0usize;
    loop {
        match idle.stream.read(&mut sink) {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
        assert!(total < 64 << 20, "bounded");
    }
    let metrics = String::from_utf8(http(server.api, "GET", "/metrics", None).body).unwrap();
    assert!(metrics.lines().any(|l| l.starts_with("pushi_slow_consumers_total") && !l.ends_with(" 0")), "{metrics}");
}

/// Half-sent bodies hold input memory until the process-wide budget is spent;
/// then the connection adding more is refused (503 with Retry-After) while a
/// small request on another connection is still answered.
#[test]
fn input_budget_refuses_new_partial_bodies_and_keeps_serving() {
    let server = Server::start(&[("PUSHI_INPUT_BUDGET", "2000000"), ("PUSHI_INPUT_STALL_TIMEOUT", "60")]);
    let half = vec![b'a'; 200_000];
    let mut held = Vec::new();
    let mut refused = None;
    // 40 x 200 KB = 8 MB offered against a 2 MB budget.
    for i in 0..40 {
        let mut s = TcpStream::connect(server.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 400000\r\n\r\n").unwrap();
        s.write_all(&half).unwrap();
        // A refused connection gets its answer at once; a held one gets nothing yet.
        s.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
        let mut probe = [0u8; 1];
        match s.peek(&mut probe) {
            Ok(n) if n > 0 => {
                s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                refused = Some((i, read_response(&mut s)));
                break;
            }
            _ => held.push(s),
        }
    }
    let (i, r) = refused.expect("no connection was refused within 40 half bodies");
    assert!((5..=12).contains(&i), "refused after {i} half bodies of 200 KB with a 2 MB budget");
    assert_eq!(r.status, 503);
    assert_eq!(r.header("Retry-After"), Some("1"));
    assert!(r.json()["error"].as_str().unwrap().contains("unfinished input"), "{:?}", r.json());
    // Small complete requests need no buffering: still served.
    assert_eq!(http(server.api, "GET", "/health", None).status, 200);
    assert!(server.log_lines("input budget spent").iter().any(|l| l.contains("WARN")));
    // Closed connections give their share back; a held body can then finish.
    drop(held.drain(1..4));
    std::thread::sleep(Duration::from_millis(300));
    let mut first = held.remove(0);
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    first.write_all(&half).unwrap();
    assert_eq!(read_response(&mut first).status, 405, "POST /health: routed once complete");
}

/// A body and a fragmented WebSocket message that stop arriving are closed
/// after PUSHI_INPUT_STALL_TIMEOUT (408 / close 1008), even though the
/// WebSocket peer keeps pinging; a complete exchange afterwards still works.
#[test]
fn stalled_partial_input_is_closed() {
    let server = Server::start(&[("PUSHI_INPUT_STALL_TIMEOUT", "1"), ("PUSHI_HANDSHAKE_TIMEOUT", "30")]);
    let mut s = TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /health HTTP/1.1\r\nHost: t\r\nContent-Length: 1000\r\n\r\nabc").unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.status, 408);
    assert!(r.json()["error"].as_str().unwrap().contains("stopped arriving"));
    assert!(closed_by_peer(&mut s));

    let mut ws = RawWs::open(&server, "/echo");
    ws.send_frame(0x01, b"first half, ");
    // Pings are not progress on the unfinished message: send some meanwhile
    // (at most 15, from another thread; errors once closed are expected).
    let mut pinger = ws.stream.try_clone().unwrap();
    let pings = std::thread::spawn(move || {
        for _ in 0..15 {
            if pinger.write_all(&masked_frame(0x89, b"")).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    });
    assert_eq!(ws.expect_close(), Some(1008), "stalled fragmented message closed with 1008");
    pings.join().unwrap();

    let mut fine = RawWs::open(&server, "/echo");
    fine.send_frame(0x01, b"one ");
    fine.send_frame(0x80, b"two");
    assert_eq!(fine.read_frame(), (0x81, b"one two".to_vec()));
}

/// After the close handshake the server closes TCP itself: a client that
/// answers the close frame but keeps its socket open sees EOF long before
/// PUSHI_CLOSE_TIMEOUT (60 s here), and the server exits on SIGTERM.
#[test]
fn server_closes_tcp_after_the_close_handshake() {
    let mut server = Server::start(&[("PUSHI_CLOSE_TIMEOUT", "60"), ("PUSHI_SHUTDOWN_GRACE", "60")]);
    // Client-initiated: we send close, the server echoes and closes TCP.
    let mut ws = RawWs::open(&server, "/echo");
    ws.send_frame(0x88, &1000u16.to_be_bytes());
    assert_eq!(ws.expect_close(), Some(1000));
    assert_eq!(ws.try_read_frame(), None, "EOF after the echoed close");
    // Server-initiated (shutdown): we answer and keep the socket open.
    let mut ws = RawWs::open(&server, "/echo");
    server.signal("TERM");
    assert_eq!(ws.expect_close(), Some(1001));
    ws.send_frame(0x88, &1001u16.to_be_bytes());
    assert_eq!(ws.try_read_frame(), None, "EOF after our answer");
    let deadline = Instant::now() + Duration::from_secs(20);
    while server.alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!server.alive(), "the server exited without waiting for the client's FIN");
}
