//! RFC 6455 on the real server through its echo endpoint: a real client
//! library (tungstenite) for the happy paths, raw frames for the bad ones.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

use common::*;
use tungstenite::Message;

fn client(server: &Server) -> tungstenite::WebSocket<TcpStream> {
    let stream = server.connect();
    let (ws, resp) = tungstenite::client(format!("ws://{}/echo", server.ws), stream).expect("handshake");
    assert_eq!(resp.status(), 101);
    ws
}

#[test]
fn tungstenite_client_echo_ping_and_close() {
    let server = Server::start(&[]);
    let mut ws = client(&server);
    ws.send(Message::text("hello wörld")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello wörld"));
    ws.send(Message::binary(vec![0u8, 1, 2, 255])).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(vec![0u8, 1, 2, 255]));
    ws.send(Message::Ping(b"are you there".to_vec())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"are you there".to_vec()));
    let big = "x".repeat(60_000);
    ws.send(Message::text(big.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text(big));
    ws.close(None).unwrap();
    // The server answers the close; tungstenite then reports the connection closed.
    loop {
        match ws.read() {
            Ok(Message::Close(_)) => continue,
            Err(tungstenite::Error::ConnectionClosed) => break,
            other => panic!("unexpected {other:?}"),
        }
    }
}

#[test]
fn upgrade_on_the_rest_listener_too() {
    let server = Server::start(&[]);
    let stream = TcpStream::connect(server.api).unwrap();
    let (mut ws, _) = tungstenite::client(format!("ws://{}/echo", server.api), stream).unwrap();
    ws.send(Message::text("one port")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("one port"));
}

#[test]
fn fragmented_text_with_interleaved_ping() {
    let server = Server::start(&[]);
    let mut ws = RawWs::open(&server, "/echo");
    ws.send_frame(0x01, "frag".as_bytes());
    ws.send_frame(0x89, b"mid");
    ws.send_frame(0x00, &"€".as_bytes()[..1]); // a code point split across fragments
    ws.send_frame(0x80, &"€".as_bytes()[1..]);
    assert_eq!(ws.read_frame(), (0x8A, b"mid".to_vec()), "pong comes first");
    assert_eq!(ws.read_frame(), (0x81, "frag€".as_bytes().to_vec()));
}

#[test]
fn close_handshake_echoes_the_code_and_server_closes_tcp() {
    let server = Server::start(&[]);
    let mut ws = RawWs::open(&server, "/echo");
    ws.send_frame(0x88, &[0x0f, 0xa0, b'b', b'y', b'e']); // 4000
    assert_eq!(ws.expect_close(), Some(4000));
    assert!(closed_by_peer(&mut ws.stream));
}

#[test]
fn protocol_violations_get_their_close_codes() {
    let server = Server::start(&[("PUSHI_MAX_MESSAGE_BYTES", "1000")]);
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked frame", vec![0x81, 0x02, b'h', b'i'], 1002),
        (
            "invalid UTF-8",
            masked_frame(0x81, &[0xce, 0xba, 0xe1, 0xbd, 0xb9, 0xcf, 0x83, 0xce, 0xbc, 0xce, 0xb5, 0xed, 0xa0, 0x80]),
            1007,
        ),
        ("frame above the limit", masked_frame(0x82, &[7; 1001]), 1009),
        ("fragments above the limit", [masked_frame(0x02, &[7; 600]), masked_frame(0x80, &[7; 600])].concat(), 1009),
        ("reserved bits", masked_frame(0xC1, b"x"), 1002),
        ("reserved opcode", masked_frame(0x83, b"x"), 1002),
        ("continuation first", masked_frame(0x80, b"x"), 1002),
        ("fragmented ping", masked_frame(0x09, b"x"), 1002),
        ("bad close code", masked_frame(0x88, &[0x03, 0xed]), 1002),
    ];
    let mut bystander = client(&server);
    for (what, bytes, code) in cases {
        let mut ws = RawWs::open(&server, "/echo");
        ws.stream.write_all(&bytes).unwrap();
        assert_eq!(ws.expect_close(), Some(code), "{what}");
        assert!(closed_by_peer(&mut ws.stream), "{what}: TCP not closed");
        bystander.send(Message::text(what)).unwrap();
        assert_eq!(bystander.read().unwrap(), Message::text(what), "bystander after {what}");
    }
}

#[test]
fn bad_upgrades_get_http_errors() {
    let server = Server::start(&[]);
    let good = upgrade_request("/echo");
    let cases = [
        (good.replace("Version: 13", "Version: 8"), 426),
        (good.replace("Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", ""), 400),
        (good.replace("Connection: Upgrade", "Connection: keep-alive"), 400),
    ];
    for (raw, status) in cases {
        let r = http_raw(server.ws, raw.as_bytes());
        assert_eq!(r.status, status, "{raw}");
        if status == 426 {
            assert_eq!(r.header("Sec-WebSocket-Version"), Some("13"));
        }
    }
}

#[test]
fn echo_endpoint_is_off_unless_configured() {
    // Without PUSHI_ECHO_PATH, /echo is Pushi's /<app_key> route: an unknown app (4001).
    // Pushi's dialect sends no message without a channel: the refusal is the close code.
    let server = Server::start(&[("PUSHI_ECHO_PATH", "")]);
    let mut ws = RawWs::open(&server, "/echo");
    assert_eq!(ws.expect_close(), Some(4001));
}

#[test]
fn unknown_websocket_path_closes_with_4005() {
    let server = Server::start(&[]);
    let mut ws = RawWs::open(&server, "/no/such/path");
    assert_eq!(ws.expect_close(), Some(4005));
}

#[test]
fn silent_client_is_pinged_then_closed() {
    let server = Server::start(&[("PUSHI_ACTIVITY_TIMEOUT", "1"), ("PUSHI_PONG_TIMEOUT", "1")]);
    let mut ws = RawWs::open(&server, "/echo");
    assert_eq!(ws.read_frame().0, 0x89, "server pings an idle connection");
    // Answering keeps it open: the next thing is another ping, not a close.
    ws.send_frame(0x8A, b"");
    assert_eq!(ws.read_frame().0, 0x89);
    // Not answering closes it.
    assert_eq!(ws.expect_close(), Some(1001));
}

#[test]
fn slow_reader_is_cut_while_others_keep_receiving() {
    let server = Server::start(&[("PUSHI_WRITE_HIGH_WATER", "262144"), ("PUSHI_MAX_MESSAGE_BYTES", "65536")]);
    let mut fast = client(&server);
    // The slow client asks for echoes and never reads them; its kernel buffers
    // fill, then its out-queue passes the high-water mark and it is cut.
    let mut slow = server.connect();
    slow.write_all(upgrade_request("/echo").as_bytes()).unwrap();
    slow.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let frame = masked_frame(0x82, &[b's'; 60_000]);
    let mut cut = false;
    for i in 0..2000 {
        if slow.write_all(&frame).is_err() {
            cut = true;
            break;
        }
        if i % 20 == 0 {
            fast.send(Message::text(format!("still here {i}"))).unwrap();
            assert_eq!(fast.read().unwrap(), Message::text(format!("still here {i}")));
        }
    }
    assert!(cut, "slow consumer was never cut");
    fast.send(Message::text("after")).unwrap();
    assert_eq!(fast.read().unwrap(), Message::text("after"));
    let metrics = String::from_utf8(http(server.api, "GET", "/metrics", None).body).unwrap();
    assert!(metrics.contains("pushi_slow_consumers_total 1"), "{metrics}");
}

#[test]
fn sigterm_closes_websockets_and_exits_zero() {
    let mut server = Server::start(&[]);
    let mut ws = RawWs::open(&server, "/echo");
    server.signal("TERM");
    assert_eq!(ws.expect_close(), Some(1001));
    ws.send_frame(0x88, &[0x03, 0xe9]);
    let status = server.child.wait().unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(!server.log_lines("shutdown complete").is_empty());
}

#[test]
fn systemd_notifications_ready_and_stopping() {
    let dir = std::env::temp_dir().join(format!("pushi-notify-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("notify.sock");
    let sock = std::os::unix::net::UnixDatagram::bind(&path).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let path_str = path.to_str().unwrap().to_string();
    let mut server = Server::start(&[("NOTIFY_SOCKET", &path_str), ("WATCHDOG_USEC", "200000")]);
    let mut buf = [0u8; 256];
    let recv = |buf: &mut [u8]| {
        let n = sock.recv(buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    assert!(recv(&mut buf).starts_with("READY=1"));
    // Watchdog pings every WATCHDOG_USEC / 2.
    let ping = recv(&mut buf);
    assert!(ping.starts_with("WATCHDOG=1\nSTATUS=serving "), "{ping}");
    assert!(ping.contains("connections"), "{ping}");
    server.signal("TERM");
    let mut saw_stopping = false;
    for _ in 0..20 {
        if recv(&mut buf).starts_with("STOPPING=1") {
            saw_stopping = true;
            break;
        }
    }
    assert!(saw_stopping);
    assert!(server.child.wait().unwrap().success());
    let _ = std::fs::remove_dir_all(&dir);
}
