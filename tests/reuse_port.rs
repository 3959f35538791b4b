//! `PUSHI_REUSE_PORT=1`: several processes bind the same ports (SO_REUSEPORT)
//! and the kernel spreads connections over them; without it the second
//! process cannot start.

mod common;

use common::*;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[test]
fn two_processes_share_the_ports_with_reuse_port() {
    let (ws, api) = (free_port().to_string(), free_port().to_string());
    let env = [("SERVER_PORT", ws.as_str()), ("APP_PORT", api.as_str()), ("PUSHI_REUSE_PORT", "1")];
    let first = Server::start(&env);
    let second = Server::start(&env);
    assert_eq!(first.ws, second.ws);
    // Both answer: over many connections the kernel hands some to each process.
    for _ in 0..40 {
        let r = http(first.api, "GET", "/health/live", None);
        assert_eq!(r.status, 200);
    }
    let served = |s: &Server| s.log_lines("upgraded to WebSocket").len();
    for _ in 0..40 {
        let mut ws = RawWs::open(&first, "/echo");
        ws.send_frame(0x81, b"hi");
        assert_eq!(ws.read_frame().1, b"hi");
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(served(&first) > 0 && served(&second) > 0, "{} / {}", served(&first), served(&second));
}
