//! Micro-benchmark of the pure codecs: WebSocket frame decode (with
//! unmasking) and HTTP request parsing, in bytes and items per second.
//! Run with `cargo bench --bench codec`; a smoke run (`cargo test --benches`)
//! uses few iterations.

use std::hint::black_box;
use std::time::Instant;

use pushi::http::{parse_request, ParseLimits};
use pushi::ws::frame;

fn masked(payload_len: usize) -> Vec<u8> {
    let mut out = vec![0x81, 0x80 | 126];
    out.extend_from_slice(&(payload_len as u16).to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out.extend(std::iter::repeat_n(b'a' ^ 1, payload_len));
    out
}

fn report(name: &str, items: u64, bytes: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!("{name:<28} {:>12.0} items/s {:>10.1} MB/s", items as f64 / secs, bytes as f64 / secs / 1e6);
}

fn main() {
    let quick = std::env::args().any(|a| a == "--test") || std::env::var_os("PUSHI_BENCH_QUICK").is_some();
    let rounds: u64 = if quick { 1_000 } else { 2_000_000 };

    let template = masked(200);
    let mut buf = template.clone();
    let start = Instant::now();
    for _ in 0..rounds {
        buf.copy_from_slice(&template);
        let (f, n) = frame::decode(&mut buf, 1 << 16).unwrap().unwrap();
        black_box((f.payload.len(), n));
    }
    report("ws decode 200 B text", rounds, rounds * template.len() as u64, start);

    let request =
        b"POST /apps/1/events?auth_key=k&auth_timestamp=1&auth_version=1.0&body_md5=x&auth_signature=y HTTP/1.1\r\n\
Host: 127.0.0.1:8080\r\nContent-Type: application/json\r\nContent-Length: 60\r\n\r\n\
{\"name\":\"e\",\"channel\":\"c\",\"data\":\"{\\\"hello\\\":\\\"world\\\"}\"}xxxx";
    let limits = ParseLimits { max_head: 16384, max_body: 1 << 20 };
    let start = Instant::now();
    for _ in 0..rounds / 4 {
        black_box(parse_request(black_box(request), limits).unwrap().unwrap().1);
    }
    report("http parse signed POST", rounds / 4, rounds / 4 * request.len() as u64, start);

    let payload = vec![b'x'; 100];
    let start = Instant::now();
    for _ in 0..rounds {
        black_box(frame::encoded(frame::OpCode::Text, black_box(&payload)));
    }
    report("ws encode 100 B text", rounds, rounds * 102, start);
}
