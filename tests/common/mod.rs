//! Test support: start the real `pushi` binary on ephemeral ports and talk
//! to it over raw sockets (for malformed input) or real client libraries.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A running server process, killed on drop.
pub struct Server {
    pub child: Child,
    /// The WebSocket listener.
    pub ws: SocketAddr,
    /// The REST listener.
    pub api: SocketAddr,
    /// Every log line the server printed so far.
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Server {
    /// Starts the server with the echo endpoint at /echo plus `env`.
    pub fn start(env: &[(&str, &str)]) -> Server {
        let data = std::env::temp_dir().join(format!("pushi-test-{}-{}", std::process::id(), rand_suffix()));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_pushi"));
        cmd.env_clear()
            .env("SERVER_HOST", "127.0.0.1")
            .env("SERVER_PORT", "0")
            .env("APP_HOST", "127.0.0.1")
            .env("APP_PORT", "0")
            .env("PUSHI_ECHO_PATH", "/echo")
            .env("PUSHI_DATA_DIR", &data)
            .env("RUST_LOG", "debug")
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("start pushi");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                for (marker, kind) in [("WebSocket listener on ws://", 0), ("REST listener on http://", 1)] {
                    if let Some(rest) = line.split(marker).nth(1) {
                        let addr: SocketAddr = rest.split_whitespace().next().unwrap().parse().unwrap();
                        let _ = tx.send((kind, addr));
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let mut ws = None;
        let mut api = None;
        while ws.is_none() || api.is_none() {
            let (kind, addr) = rx.recv_timeout(Duration::from_secs(20)).expect("server did not report its listeners");
            if kind == 0 {
                ws = Some(addr)
            } else {
                api = Some(addr)
            }
        }
        Server { child, ws: ws.unwrap(), api: api.unwrap(), log }
    }

    /// A raw TCP connection to the WebSocket listener.
    pub fn connect(&self) -> TcpStream {
        let s = TcpStream::connect(self.ws).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.set_nodelay(true).unwrap();
        s
    }

    /// Whether the process is still running.
    pub fn alive(&mut self) -> bool {
        self.child.try_wait().unwrap().is_none()
    }

    /// Sends a signal to the process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").arg(format!("-{sig}")).arg(self.child.id().to_string()).status().unwrap();
        assert!(ok.success());
    }

    /// Log lines containing `needle`.
    pub fn log_lines(&self, needle: &str) -> Vec<String> {
        self.log.lock().unwrap().iter().filter(|l| l.contains(needle)).cloned().collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn rand_suffix() -> u128 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos()
}

/// A parsed HTTP response.
#[derive(Debug)]
pub struct HttpReply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl HttpReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {:?}", String::from_utf8_lossy(&self.body)))
    }
}

/// Reads one HTTP response (Content-Length framed) from a stream.
pub fn read_response(stream: &mut impl Read) -> HttpReply {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        let n = stream.read(&mut byte).expect("read response head");
        assert!(n == 1, "connection closed before a response; got {:?}", String::from_utf8_lossy(&buf));
        buf.push(byte[0]);
    }
    let head = String::from_utf8(buf).unwrap();
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next().unwrap().split(' ').nth(1).unwrap().parse().unwrap();
    let headers: Vec<(String, String)> = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (n, v) = l.split_once(':').unwrap();
            (n.trim().to_string(), v.trim().to_string())
        })
        .collect();
    let len: usize =
        headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("content-length")).map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0; len];
    stream.read_exact(&mut body).unwrap();
    HttpReply { status, headers, body }
}

/// Sends raw bytes and reads one response.
pub fn http_raw(addr: SocketAddr, raw: &[u8]) -> HttpReply {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(raw).unwrap();
    read_response(&mut s)
}

/// A simple request: method, path and optional body.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> HttpReply {
    let body = body.unwrap_or("");
    let raw = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    http_raw(addr, raw.as_bytes())
}

/// Whether the peer closed the stream (EOF or reset) within the read timeout.
pub fn closed_by_peer(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {
                return false
            }
            Err(_) => return true,
        }
    }
    false
}

/// The upgrade request a browser would send.
pub fn upgrade_request(path: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
}

/// A raw WebSocket client: masked frames out, frames in, nothing hidden.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl RawWs {
    /// Connects and completes the handshake on `path`.
    pub fn open(server: &Server, path: &str) -> RawWs {
        let mut stream = server.connect();
        stream.write_all(upgrade_request(path).as_bytes()).unwrap();
        let reply = read_response(&mut stream);
        assert_eq!(reply.status, 101, "upgrade refused: {:?}", String::from_utf8_lossy(&reply.body));
        assert_eq!(reply.header("Sec-WebSocket-Accept"), Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        RawWs { stream, buf: Vec::new() }
    }

    /// A WebSocket on a stream whose 101 has already been read.
    pub fn from_stream(stream: TcpStream) -> RawWs {
        RawWs { stream, buf: Vec::new() }
    }

    /// Sends one masked frame with this first byte (FIN/RSV/opcode).
    pub fn send_frame(&mut self, first: u8, payload: &[u8]) {
        self.stream.write_all(&masked_frame(first, payload)).unwrap();
    }

    /// Reads the next server frame: (first byte, payload). Panics on EOF.
    pub fn read_frame(&mut self) -> (u8, Vec<u8>) {
        self.try_read_frame().expect("connection closed before a frame")
    }

    /// Reads the next server frame, or None at EOF.
    pub fn try_read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if self.buf.len() >= 2 {
                assert_eq!(self.buf[1] & 0x80, 0, "server frames must not be masked");
                let (len, start) = match self.buf[1] & 0x7f {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().unwrap()) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if len != usize::MAX && self.buf.len() >= start + len {
                    let first = self.buf[0];
                    let payload = self.buf[start..start + len].to_vec();
                    self.buf.drain(..start + len);
                    return Some((first, payload));
                }
            }
            let mut chunk = [0u8; 65536];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) => panic!("read failed: {e}"),
            }
        }
    }

    /// Reads frames until a close frame; returns its code (None for an empty close).
    pub fn expect_close(&mut self) -> Option<u16> {
        loop {
            let (first, payload) = self.read_frame();
            if first & 0x0f == 0x8 {
                return (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
            }
        }
    }
}

/// A masked client frame.
pub fn masked_frame(first: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let mut out = vec![first];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n if n <= 0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}
