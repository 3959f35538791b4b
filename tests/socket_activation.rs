//! systemd socket activation, emulated: this test binds the listeners (as
//! systemd would from conf/pushi.socket), starts pushi with them as
//! descriptors 3 and 4 and `LISTEN_FDS`/`LISTEN_PID`/`LISTEN_FDNAMES`, and
//! checks it serves on them; across a restart a client that connects while no
//! process runs waits in the backlog and is served by the next process.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;

/// A pushi process started on inherited sockets; killed on drop.
struct Activated {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
    /// The addresses pushi reported for its WebSocket and REST listeners.
    reported: (SocketAddr, SocketAddr),
}

impl Drop for Activated {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts pushi with `first` as descriptor 3 and `second` as descriptor 4.
/// std creates sockets close-on-exec, so they travel as the wrapper shell's
/// stdin and stdout, which it moves to 3 and 4 before exec'ing pushi with
/// its own pid in LISTEN_PID (as systemd does).
fn start(first: &TcpListener, second: &TcpListener, names: &str, data: &std::path::Path) -> Activated {
    let fd = |l: &TcpListener| Stdio::from(OwnedFd::from(l.try_clone().unwrap()));
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(r#"exec 3<&0 4>&1 0</dev/null 1>/dev/null; LISTEN_PID=$$ LISTEN_FDS=2 exec "$0""#)
        .arg(env!("CARGO_BIN_EXE_pushi"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("LISTEN_FDNAMES", names)
        // Would be bound without activation; never used here.
        .env("SERVER_HOST", "127.0.0.1")
        .env("SERVER_PORT", "0")
        .env("APP_HOST", "127.0.0.1")
        .env("APP_PORT", "0")
        .env("PUSHI_ECHO_PATH", "/echo")
        .env("PUSHI_DATA_DIR", data)
        .env("RUST_LOG", "info")
        .stdin(fd(first))
        .stdout(fd(second))
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sh");
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
    let (mut ws, mut api) = (None, None);
    while ws.is_none() || api.is_none() {
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok((0, addr)) => ws = Some(addr),
            Ok((_, addr)) => api = Some(addr),
            Err(_) => panic!("pushi did not report its listeners: {:?}", log.lock().unwrap()),
        }
    }
    Activated { child, log, reported: (ws.unwrap(), api.unwrap()) }
}

#[test]
fn serves_on_inherited_sockets_and_keeps_the_backlog_across_a_restart() {
    let data = std::env::temp_dir().join(format!("pushi-activation-{}", std::process::id()));
    let ws = TcpListener::bind("127.0.0.1:0").unwrap();
    let api = TcpListener::bind("127.0.0.1:0").unwrap();
    let (ws_addr, api_addr) = (ws.local_addr().unwrap(), api.local_addr().unwrap());

    // Passed in the "wrong" order: the names tell them apart.
    let mut first = start(&api, &ws, "api:ws", &data);
    assert_eq!(first.reported, (ws_addr, api_addr), "the inherited sockets, told apart by name");
    assert!(first.log.lock().unwrap().iter().any(|l| l.contains("socket activation")));
    assert_eq!(http(api_addr, "GET", "/health", None).status, 200);
    let mut echo = TcpStream::connect(ws_addr).unwrap();
    echo.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    echo.write_all(upgrade_request("/echo").as_bytes()).unwrap();
    assert_eq!(read_response(&mut echo).status, 101);

    // Stop it; the sockets stay open here (as systemd keeps them).
    let ok = Command::new("kill").arg("-TERM").arg(first.child.id().to_string()).status().unwrap();
    assert!(ok.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    while first.child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "first process did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    // No process now: a client still connects (the kernel queues it) and sends its request.
    let mut waiting = TcpStream::connect(api_addr).expect("connect while no process runs: queued, not refused");
    waiting.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    waiting.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n").unwrap();

    // Without names, the order decides: WebSocket first.
    let second = start(&ws, &api, "", &data);
    assert_eq!(second.reported, (ws_addr, api_addr));
    assert_eq!(read_response(&mut waiting).status, 200, "the queued client is served by the next process");
    drop(second);
    let _ = std::fs::remove_dir_all(&data);
}
