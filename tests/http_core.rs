//! HTTP/1.1 on the real server: keep-alive, pipelining, partial input and
//! every documented error status, with other clients unaffected.

mod common;

use std::io::Write;
use std::time::Duration;

use common::*;

#[test]
fn health_on_both_listeners() {
    let server = Server::start(&[]);
    for addr in [server.ws, server.api] {
        let r = http(addr, "GET", "/health", None);
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Content-Type"), Some("application/json"));
        let body = r.json();
        assert_eq!(body["status"], "ok");
        assert_eq!(body["store"]["status"], "ok", "{body}");
    }
}

#[test]
fn pipelined_and_keep_alive_requests_are_answered_in_order() {
    let server = Server::start(&[]);
    let mut s = std::net::TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    // Three requests in one write, the last one split across writes.
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\nGET /nope HTTP/1.1\r\nHost: a\r\n\r\nGET /hea").unwrap();
    std::thread::sleep(Duration::from_millis(50));
    s.write_all(b"lth HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    let statuses: Vec<u16> = (0..3).map(|_| read_response(&mut s).status).collect();
    assert_eq!(statuses, vec![200, 404, 200]);
    // The connection is still usable afterwards (keep-alive).
    s.write_all(b"GET /health HTTP/1.1\r\nHost: a\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut s).status, 200);
    // Connection: close is honoured.
    s.write_all(b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n").unwrap();
    let r = read_response(&mut s);
    assert_eq!(r.header("Connection"), Some("close"));
    assert!(closed_by_peer(&mut s));
}

#[test]
fn request_sent_byte_by_byte() {
    let server = Server::start(&[]);
    let mut s = std::net::TcpStream::connect(server.api).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    for b in b"GET /health HTTP/1.1\r\nHost: slow\r\n\r\n" {
        s.write_all(&[*b]).unwrap();
    }
    assert_eq!(read_response(&mut s).status, 200);
}

#[test]
fn errors_have_documented_statuses_and_json_bodies() {
    let server = Server::start(&[("PUSHI_MAX_BODY_BYTES", "1000"), ("PUSHI_MAX_HEAD_BYTES", "2048")]);
    let big_header = format!("GET /health HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(3000));
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"GET /no/such/route HTTP/1.1\r\n\r\n".to_vec(), 404),
        (b"POST /health HTTP/1.1\r\nContent-Length: 0\r\n\r\n".to_vec(), 405),
        (b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 411),
        (b"POST /health HTTP/1.1\r\nContent-Length: 5000\r\n\r\n".to_vec(), 413),
        (big_header.into_bytes(), 431),
        (b"GET / HTTP/1.1\r\nBad Header Name: x\r\n\r\n".to_vec(), 400),
        (b"POST /health HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(), 400),
    ];
    for (raw, status) in cases {
        let r = http_raw(server.api, &raw);
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&raw[..40.min(raw.len())]));
        assert_eq!(r.json()["code"], status);
        assert!(r.json()["error"].is_string());
        if status == 405 {
            assert_eq!(r.header("Allow"), Some("GET"));
        }
    }
}

#[test]
fn garbage_gets_400_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    let mut bystander = std::net::TcpStream::connect(server.api).unwrap();
    bystander.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let garbage: Vec<u8> = (0..10_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let mut s = std::net::TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&garbage);
    let r = read_response(&mut s);
    assert_eq!(r.status, 400);
    assert!(closed_by_peer(&mut s));
    bystander.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut bystander).status, 200);
}

#[test]
fn slow_head_times_out_with_408() {
    let server = Server::start(&[("PUSHI_HANDSHAKE_TIMEOUT", "1")]);
    let mut s = std::net::TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /health HTTP/1.1\r\nHost: drip").unwrap();
    assert_eq!(read_response(&mut s).status, 408);
    assert!(closed_by_peer(&mut s));
}

#[test]
fn connection_limit_answers_503() {
    let server = Server::start(&[("PUSHI_MAX_CONNECTIONS", "2")]);
    let _a = std::net::TcpStream::connect(server.api).unwrap();
    let _b = std::net::TcpStream::connect(server.api).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let r = http(server.api, "GET", "/health", None);
    assert_eq!(r.status, 503);
    drop((_a, _b));
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(http(server.api, "GET", "/health", None).status, 200);
}

#[test]
fn metrics_are_prometheus_text() {
    let server = Server::start(&[]);
    http(server.api, "GET", "/nope", None);
    let r = http(server.api, "GET", "/metrics", None);
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body).unwrap();
    assert!(text.contains("# TYPE pushi_connections gauge"), "{text}");
    assert!(text.contains("pushi_http_errors_total{status=\"404\"} 1"), "{text}");
}

#[test]
fn expect_100_continue_is_answered_before_the_body() {
    let server = Server::start(&[]);
    let mut s = std::net::TcpStream::connect(server.api).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"POST /health HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n").unwrap();
    let mut interim = [0u8; 25];
    std::io::Read::read_exact(&mut s, &mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"{}").unwrap();
    assert_eq!(read_response(&mut s).status, 405);
}

/// Strict framing (request-smuggling defence): each refusal is a 400 with a
/// JSON body naming the problem, the connection is closed, and a bystander
/// on the same server is still served.
#[test]
fn ambiguous_framing_is_refused_with_400() {
    let server = Server::start(&[]);
    let mut bystander = std::net::TcpStream::connect(server.api).unwrap();
    bystander.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let cases: &[(&[u8], &str)] = &[
        (b"POST /health HTTP/1.1\r\nContent-Length: +2\r\n\r\n{}", "Content-Length"),
        (b"POST /health HTTP/1.1\r\nContent-Length: 2x\r\n\r\n{}", "Content-Length"),
        (b"POST /health HTTP/1.1\r\nContent-Length: 2, 2\r\n\r\n{}", "Content-Length"),
        (b"POST /health HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 2\r\n\r\n{}", "duplicate"),
        (b"POST /health HTTP/1.1\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}x", "duplicate"),
        (b"POST /health HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n{}", "Transfer-Encoding"),
        (b"GET /health HTTP/1.1\nHost: x\r\n\r\n", "bare LF"),
        (b"GET /health HTTP/1.1\r\nHost: x\n\n", "bare LF"),
    ];
    for (raw, why) in cases {
        let mut s = std::net::TcpStream::connect(server.api).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(raw).unwrap();
        let r = read_response(&mut s);
        let shown = String::from_utf8_lossy(raw);
        assert_eq!(r.status, 400, "{shown:?}");
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(error.contains(why), "{shown:?}: {error}");
        assert!(closed_by_peer(&mut s), "{shown:?}: connection closed after the refusal");
    }
    bystander.write_all(b"GET /health HTTP/1.1\r\n\r\n").unwrap();
    assert_eq!(read_response(&mut bystander).status, 200);
}

/// A head dripped a few bytes at a time, then a body likewise: parsed once
/// complete (the parser resumes where it stopped), answered normally.
#[test]
fn head_and_body_in_many_pieces() {
    let server = Server::start(&[]);
    let mut s = std::net::TcpStream::connect(server.api).unwrap();
    s.set_nodelay(true).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let padding = "p".repeat(2000);
    let raw = format!("POST /health HTTP/1.1\r\nX-Pad: {padding}\r\nContent-Length: 300\r\n\r\n{}", "b".repeat(300));
    for piece in raw.as_bytes().chunks(97) {
        s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(2));
    }
    assert_eq!(read_response(&mut s).status, 405, "the whole request was read and routed");
}
