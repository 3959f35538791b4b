//! Load generator for pushi and peer Pusher Channels servers (protocol 7).
//!
//! One binary, one subcommand per scenario; `benches/run.sh` drives it and
//! prints the table (see benches/README.md). The WebSocket side is a single
//! mio loop (edge-triggered, one shared read buffer, a short read ends a
//! socket's turn) so the client stays cheaper than the server it measures;
//! HTTP API publishers run on a second thread with their own loop and sign
//! every request (HMAC-SHA256, body MD5) exactly as the Pusher SDKs do.
//!
//! ```text
//! loadgen connections --ws 127.0.0.1:9090 --n 10000 --pid PID
//! loadgen fanout      --ws .. --api 127.0.0.1:8080 --n 10000 --rates 5,10,20,.. --pid PID
//! loadgen fanout      --bare --ws 127.0.0.1:PORT --n 10000 --pid BARE_PID
//! loadgen bare-server --listen 127.0.0.1:PORT --n 10000 --seconds 12
//! loadgen latency     --ws .. --api .. --n 10000 --channels 100 --rate 1000 --seconds 10
//! loadgen publish     --api .. --conns 32 --seconds 5
//! loadgen presence    --ws .. --members 100 --churners 10 --seconds 5
//! loadgen hold        --ws A,B,C --sources 127.0.0.2,127.0.0.3 --n 12500 --expect 5 --max-secs 300
//! loadgen send        --api 127.0.0.1:8080 --channel many --count 5 --interval-ms 500
//! ```
//!
//! `hold` (benches/many.sh) opens N subscribed connections spread round-robin
//! over the `--ws` addresses, prints `READY ..` on stdout once every one has
//! subscribed or failed, then holds them (answering pings) until each has
//! received `--expect` benchmark events or `--max-secs` pass, prints `DONE ..`,
//! holds them `--linger` seconds more; its RESULT counts the connections
//! that got all of them. `send` makes `--count`
//! signed REST publishes, one at a time, and reports how many were accepted.
//!
//! Common options: `--app-id bench --key benchkey --secret benchsecret`,
//! `--pid` (the server whose RSS/CPU is read from /proc), `--concurrency`
//! (handshakes in flight), `--sources N|auto|IP,IP,..` (source addresses 127.0.0.1..N or the
//! listed ones; auto = one per 10 000 connections, bound before connect with
//! IP_BIND_ADDRESS_NO_PORT, so more than the ~28 000 ephemeral ports of one
//! address can reach one server port; past ~14 000 connections from one
//! address the kernel's port search alone slows connect() several-fold,
//! since connect() tries one port parity first). Every scenario ends with one line
//! `RESULT scenario=.. key=value ..` for the script. Linux only (/proc, bind).
//!
//! Run without a subcommand (as `cargo test --all-targets` and `cargo bench`
//! do) it prints this usage and exits 0.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, ToSocketAddrs};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use md5::{Digest, Md5};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use sha2::Sha256;

const USAGE: &str = "loadgen <connections|fanout|latency|publish|presence|bare-server|hold|send> [--option value]..
  see the header of benches/loadgen.rs and benches/README.md; benches/run.sh runs everything";

/// Event name of every benchmark publication (what subscribers count).
const EVENT: &str = "lg-ev";
/// Marker in front of the publish timestamp inside the payload.
const STAMP: &[u8] = b"LG";
const READ_BUF: usize = 256 * 1024;

// ---------------------------------------------------------------- options

struct Args(BTreeMap<String, String>);

impl Args {
    fn parse(argv: &[String]) -> Args {
        let mut map = BTreeMap::new();
        let mut i = 0;
        while i < argv.len() {
            let key = argv[i].trim_start_matches("--").to_string();
            if i + 1 < argv.len() && !argv[i + 1].starts_with("--") {
                map.insert(key, argv[i + 1].clone());
                i += 2;
            } else {
                map.insert(key, "true".into());
                i += 1;
            }
        }
        Args(map)
    }

    fn str(&self, key: &str, default: &str) -> String {
        self.0.get(key).cloned().unwrap_or_else(|| default.to_string())
    }

    fn num<T: std::str::FromStr>(&self, key: &str, default: T) -> T {
        match self.0.get(key) {
            None => default,
            Some(v) => v.parse().unwrap_or_else(|_| die(&format!("--{key}: not a number: {v}"))),
        }
    }

    fn flag(&self, key: &str) -> bool {
        self.0.get(key).is_some_and(|v| v != "false" && v != "0")
    }

    fn addr(&self, key: &str, default: &str) -> SocketAddrV4 {
        let text = self.str(key, default);
        match text.to_socket_addrs().ok().and_then(|mut it| it.find(|a| a.is_ipv4())) {
            Some(SocketAddr::V4(a)) => a,
            _ => die(&format!("--{key}: not an IPv4 address: {text}")),
        }
    }
}

fn die(msg: &str) -> ! {
    eprintln!("loadgen: {msg}");
    std::process::exit(2)
}

// ---------------------------------------------------------------- clock, /proc

fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(Instant::now)
}

/// Microseconds since the process started its clock; publish stamps use it.
fn micros() -> u64 {
    base().elapsed().as_micros() as u64
}

/// Write-type system calls (write, writev, send*) a process has made, all
/// threads: deliveries / calls is how many frames one call carried.
fn write_calls(pid: u32) -> Option<u64> {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    let line = io.lines().find(|l| l.starts_with("syscw:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU seconds of a process, all threads.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { sys::sysconf(sys::SC_CLK_TCK) }.max(1) as f64;
    Some(ticks as f64 / hz)
}

/// CPU use of a process over an interval, in percent of one core.
struct CpuMeter {
    pid: Option<u32>,
    at: Instant,
    cpu: f64,
}

impl CpuMeter {
    fn start(pid: Option<u32>) -> CpuMeter {
        CpuMeter { pid, at: Instant::now(), cpu: pid.and_then(cpu_secs).unwrap_or(0.0) }
    }

    fn percent(&self) -> f64 {
        let Some(now) = self.pid.and_then(cpu_secs) else { return f64::NAN };
        100.0 * (now - self.cpu) / self.at.elapsed().as_secs_f64()
    }
}

/// Busy share of one CPU (everything but idle and iowait, softirq included:
/// loopback TCP work done in interrupt context is charged to no process).
struct CoreMeter {
    core: Option<usize>,
    busy: u64,
    total: u64,
}

fn core_ticks(core: usize) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.split_whitespace().next() == Some(&format!("cpu{core}")))?;
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let total: u64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4)?;
    Some((total - idle, total))
}

impl CoreMeter {
    fn start(core: Option<usize>) -> CoreMeter {
        let (busy, total) = core.and_then(core_ticks).unwrap_or((0, 0));
        CoreMeter { core, busy, total }
    }

    fn percent(&self) -> f64 {
        let Some((busy, total)) = self.core.and_then(core_ticks) else { return f64::NAN };
        100.0 * (busy - self.busy) as f64 / (total - self.total).max(1) as f64
    }
}

// ---------------------------------------------------------------- sockets

mod sys {
    use std::os::raw::{c_int, c_long, c_void};

    pub const AF_INET: c_int = 2;
    pub const SOCK_STREAM: c_int = 1;
    pub const SOCK_NONBLOCK: c_int = 0o4000;
    pub const SOCK_CLOEXEC: c_int = 0o2000000;
    pub const IPPROTO_IP: c_int = 0;
    pub const IP_BIND_ADDRESS_NO_PORT: c_int = 24;
    pub const EINPROGRESS: i32 = 115;
    pub const SC_CLK_TCK: c_int = 2;

    #[repr(C)]
    pub struct SockaddrIn {
        pub family: u16,
        pub port: [u8; 2],
        pub addr: [u8; 4],
        pub zero: [u8; 8],
    }

    extern "C" {
        pub fn socket(domain: c_int, ty: c_int, protocol: c_int) -> c_int;
        pub fn bind(fd: c_int, addr: *const SockaddrIn, len: u32) -> c_int;
        pub fn connect(fd: c_int, addr: *const SockaddrIn, len: u32) -> c_int;
        pub fn setsockopt(fd: c_int, level: c_int, name: c_int, value: *const c_void, len: u32) -> c_int;
        pub fn close(fd: c_int) -> c_int;
        pub fn sysconf(name: c_int) -> c_long;
    }

    pub fn sockaddr(a: std::net::SocketAddrV4) -> SockaddrIn {
        SockaddrIn { family: AF_INET as u16, port: a.port().to_be_bytes(), addr: a.ip().octets(), zero: [0; 8] }
    }
}

/// Starts a non-blocking connect, optionally from a given source address
/// (bound with IP_BIND_ADDRESS_NO_PORT, so the port is picked per 4-tuple).
fn connect_from(src: Option<Ipv4Addr>, dst: SocketAddrV4) -> io::Result<TcpStream> {
    // SAFETY: plain socket calls on a descriptor we own; it is closed on
    // every error path and otherwise handed to TcpStream, which owns it.
    unsafe {
        let fd = sys::socket(sys::AF_INET, sys::SOCK_STREAM | sys::SOCK_NONBLOCK | sys::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        if let Some(ip) = src {
            let one: i32 = 1;
            sys::setsockopt(fd, sys::IPPROTO_IP, sys::IP_BIND_ADDRESS_NO_PORT, (&one as *const i32).cast(), 4);
            let sa = sys::sockaddr(SocketAddrV4::new(ip, 0));
            if sys::bind(fd, &sa, 16) != 0 {
                let e = io::Error::last_os_error();
                sys::close(fd);
                return Err(e);
            }
        }
        let sa = sys::sockaddr(dst);
        if sys::connect(fd, &sa, 16) != 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(sys::EINPROGRESS) {
                sys::close(fd);
                return Err(e);
            }
        }
        let stream = TcpStream::from_std(std::net::TcpStream::from_raw_fd(fd));
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// Source addresses for `n` connections: `--sources auto` uses one per
/// 10 000 connections (127.0.0.1, 127.0.0.2, ..), a number forces that many.
fn sources(args: &Args, n: usize) -> Vec<Ipv4Addr> {
    let wanted = args.str("sources", "auto");
    if wanted.contains('.') {
        return wanted
            .split(',')
            .map(|a| a.trim().parse().unwrap_or_else(|_| die(&format!("--sources: not an IPv4 address: {a}"))))
            .collect();
    }
    let k = if wanted == "auto" { n.div_ceil(10_000) } else { wanted.parse().unwrap_or(1) };
    if k <= 1 {
        return Vec::new();
    }
    (1..=k as u8).map(|i| Ipv4Addr::new(127, 0, 0, i)).collect()
}

// ---------------------------------------------------------------- WebSocket frames

const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

fn frame(opcode: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(0x80 | opcode);
    let bit = if masked { 0x80 } else { 0 };
    let n = payload.len();
    if n < 126 {
        out.push(bit | n as u8);
    } else if n < 65536 {
        out.push(bit | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(bit | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    if masked {
        out.extend_from_slice(&MASK);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i & 3]));
    } else {
        out.extend_from_slice(payload);
    }
    out
}

/// One frame at the start of `buf`: (opcode, payload range, frame length),
/// unmasking in place if the peer masked it; None until it is complete.
fn parse_frame(buf: &mut [u8]) -> Option<(u8, usize, usize, usize)> {
    if buf.len() < 2 {
        return None;
    }
    let opcode = buf[0] & 0x0f;
    let masked = buf[1] & 0x80 != 0;
    let (len, mut at) = match buf[1] & 0x7f {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as usize, 4),
        127 if buf.len() >= 10 => (u64::from_be_bytes(buf[2..10].try_into().unwrap()) as usize, 10),
        126 | 127 => return None,
        n => (n as usize, 2),
    };
    let key = if masked {
        let k: [u8; 4] = buf.get(at..at + 4)?.try_into().unwrap();
        at += 4;
        Some(k)
    } else {
        None
    };
    if buf.len() < at + len {
        return None;
    }
    if let Some(k) = key {
        for (i, b) in buf[at..at + len].iter_mut().enumerate() {
            *b ^= k[i & 3];
        }
    }
    Some((opcode, at, at + len, at + len))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The `event` member of a Pusher message, without a JSON parse.
fn event_name(msg: &[u8]) -> &[u8] {
    let Some(at) = find(msg, b"\"event\"") else { return b"" };
    let rest = &msg[at + 7..];
    let Some(q) = rest.iter().position(|&b| b == b'"') else { return b"" };
    let rest = &rest[q + 1..];
    let end = rest.iter().position(|&b| b == b'"').unwrap_or(rest.len());
    &rest[..end]
}

/// The socket id inside `connection_established` (digits and one dot).
fn socket_id(msg: &[u8]) -> Option<String> {
    let at = find(msg, b"socket_id")? + 9;
    let rest = &msg[at..];
    let start = rest.iter().position(|b| b.is_ascii_digit())?;
    let len = rest[start..].iter().position(|&b| !(b.is_ascii_digit() || b == b'.')).unwrap_or(rest.len() - start);
    Some(String::from_utf8_lossy(&rest[start..start + len]).into_owned())
}

/// The publish timestamp (µs since `base()`) carried in the payload.
fn stamp(msg: &[u8]) -> Option<u64> {
    let at = find(msg, STAMP)? + STAMP.len();
    let digits = msg.get(at..at + 16)?;
    std::str::from_utf8(digits).ok()?.parse().ok()
}

// ---------------------------------------------------------------- signatures

fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

fn hmac_hex(secret: &str, text: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(text.as_bytes());
    hex(&mac.finalize().into_bytes())
}

fn unix_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The query string of a signed Pusher HTTP API call (auth_signature last).
fn signed_query(method: &str, path: &str, key: &str, secret: &str, body: &[u8], ts: u64) -> String {
    let md5 = hex(&Md5::digest(body));
    let query = format!("auth_key={key}&auth_timestamp={ts}&auth_version=1.0&body_md5={md5}");
    let sig = hmac_hex(secret, &format!("{method}\n{path}\n{query}"));
    format!("{query}&auth_signature={sig}")
}

// ---------------------------------------------------------------- the WebSocket fleet

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum St {
    Connecting,
    Handshake,
    Open,
    Subscribed,
    Closed,
}

struct Ws {
    stream: TcpStream,
    st: St,
    idx: usize,
    started: Instant,
    /// Bytes of an incomplete handshake or frame, kept between reads.
    inbuf: Vec<u8>,
    /// Bytes the socket did not take yet.
    out: Vec<u8>,
    /// Churners: unsubscribe + subscribe, sent after each subscription.
    resub: Option<Vec<u8>>,
    /// Benchmark events this connection received.
    got: u32,
}

struct Plan {
    dst: SocketAddrV4,
    /// Several servers (`--ws A,B,..`): connection i goes to dsts[i % len].
    dsts: Vec<SocketAddrV4>,
    sources: Vec<Ipv4Addr>,
    n: usize,
    path: String,
    /// Connection i subscribes to channels[i % len].
    channels: Vec<String>,
    /// Presence: connection i is user `u<i>`; the last `churners` churn.
    presence: bool,
    churners: usize,
    key: String,
    secret: String,
    /// Raw TCP to the bare-write server: no handshake, no subscription.
    raw: bool,
    latency: bool,
    concurrency: usize,
}

#[derive(Default)]
struct Stats {
    connected: u64,
    subscribed: u64,
    failed_open: u64,
    /// Connections lost after they had subscribed.
    closed: u64,
    resubscribed: u64,
    member_events: u64,
    app_msgs: u64,
    other_msgs: u64,
    pings: u64,
    errors: BTreeMap<String, u64>,
    latency: Vec<u32>,
    /// Latency samples are kept for stamps in [lat_from, lat_until).
    lat_from: u64,
    lat_until: u64,
}

impl Stats {
    fn error(&mut self, what: String) {
        *self.errors.entry(what).or_default() += 1;
    }

    fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    fn error_text(&self) -> String {
        if self.errors.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = self.errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        parts.join(",").replace(' ', "_")
    }
}

struct Fleet {
    plan: Plan,
    poll: Poll,
    events: Events,
    conns: Vec<Option<Ws>>,
    next: usize,
    stats: Stats,
    rbuf: Vec<u8>,
    churn_on: bool,
    /// Pause between drained turns (fanout): each read then takes several
    /// frames, so the client spends far less per delivery than the server.
    nap: Duration,
}

impl Fleet {
    fn new(plan: Plan) -> Fleet {
        let n = plan.n;
        Fleet {
            plan,
            poll: Poll::new().expect("epoll"),
            events: Events::with_capacity(4096),
            conns: (0..n).map(|_| None).collect(),
            next: 0,
            stats: Stats { lat_from: u64::MAX, lat_until: u64::MAX, ..Stats::default() },
            rbuf: vec![0; READ_BUF],
            churn_on: false,
            nap: Duration::ZERO,
        }
    }

    fn in_flight(&self) -> usize {
        self.next - (self.stats.subscribed + self.stats.failed_open) as usize
    }

    fn live(&self) -> usize {
        self.conns.iter().filter(|c| c.as_ref().is_some_and(|w| w.st == St::Subscribed)).count()
    }

    fn start(&mut self, idx: usize) {
        let src =
            if self.plan.sources.is_empty() { None } else { Some(self.plan.sources[idx % self.plan.sources.len()]) };
        let dst = if self.plan.dsts.is_empty() { self.plan.dst } else { self.plan.dsts[idx % self.plan.dsts.len()] };
        match connect_from(src, dst) {
            Ok(mut stream) => {
                let interest = Interest::READABLE | Interest::WRITABLE;
                if let Err(e) = self.poll.registry().register(&mut stream, Token(idx), interest) {
                    self.stats.failed_open += 1;
                    self.stats.error(format!("register: {e}"));
                    return;
                }
                let ws = Ws {
                    stream,
                    st: St::Connecting,
                    idx,
                    started: Instant::now(),
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    resub: None,
                    got: 0,
                };
                self.conns[idx] = Some(ws);
            }
            Err(e) => {
                self.stats.failed_open += 1;
                self.stats.error(format!("connect: {}", e.kind()));
            }
        }
    }

    /// Opens every connection (at most `concurrency` handshakes at once) and
    /// waits until each is subscribed or failed. Returns the time it took.
    fn open(&mut self, limit: Duration) -> Duration {
        let t0 = Instant::now();
        let mut last_sweep = Instant::now();
        while self.next < self.plan.n || self.in_flight() > 0 {
            while self.next < self.plan.n && self.in_flight() < self.plan.concurrency {
                self.start(self.next);
                self.next += 1;
            }
            self.turn(Duration::from_millis(5));
            if last_sweep.elapsed() > Duration::from_millis(250) {
                last_sweep = Instant::now();
                self.sweep(Duration::from_secs(20));
            }
            if t0.elapsed() > limit {
                self.sweep(Duration::ZERO);
                break;
            }
        }
        t0.elapsed()
    }

    /// Fails connections that have been opening for longer than `limit`.
    fn sweep(&mut self, limit: Duration) {
        for slot in self.conns.iter_mut() {
            let Some(ws) = slot else { continue };
            if ws.st != St::Subscribed && ws.started.elapsed() >= limit {
                self.stats.failed_open += 1;
                self.stats.error(format!("open timeout ({:?})", ws.st).to_lowercase());
                let _ = self.poll.registry().deregister(&mut ws.stream);
                *slot = None;
            }
        }
    }

    fn pump(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            let drained = self.turn(Duration::from_millis(5).min(end.saturating_duration_since(Instant::now())));
            if drained && !self.nap.is_zero() {
                std::thread::sleep(self.nap.min(end.saturating_duration_since(Instant::now())));
            }
        }
    }

    /// Lets churners start cycling: each sends unsubscribe + subscribe.
    fn start_churn(&mut self) {
        self.churn_on = true;
        for slot in self.conns.iter_mut() {
            let Some(ws) = slot else { continue };
            if ws.st == St::Subscribed {
                if let Some(r) = ws.resub.clone() {
                    send(ws, &r, &mut self.stats);
                }
            }
        }
    }

    /// One poll and its events; true when the poll returned fewer events
    /// than it could hold (every ready socket was seen).
    fn turn(&mut self, timeout: Duration) -> bool {
        if let Err(e) = self.poll.poll(&mut self.events, Some(timeout)) {
            if e.kind() != io::ErrorKind::Interrupted {
                die(&format!("poll: {e}"));
            }
            return false;
        }
        let drained = self.events.iter().count() < self.events.capacity();
        let ready: Vec<(usize, bool, bool)> = self
            .events
            .iter()
            .map(|e| (e.token().0, e.is_writable(), e.is_readable() || e.is_read_closed() || e.is_error()))
            .collect();
        let mut rbuf = std::mem::take(&mut self.rbuf);
        for (idx, writable, readable) in ready {
            let Some(mut ws) = self.conns[idx].take() else { continue };
            let mut ctx = Ctx { plan: &self.plan, stats: &mut self.stats, churn_on: self.churn_on };
            ctx.ready(&mut ws, writable, readable, &mut rbuf);
            if ws.st == St::Closed {
                let _ = self.poll.registry().deregister(&mut ws.stream);
            } else {
                self.conns[idx] = Some(ws);
            }
        }
        self.rbuf = rbuf;
        drained
    }

    fn close_all(&mut self) {
        for slot in self.conns.iter_mut() {
            if let Some(mut ws) = slot.take() {
                let _ = self.poll.registry().deregister(&mut ws.stream);
            }
        }
    }
}

fn send(ws: &mut Ws, bytes: &[u8], stats: &mut Stats) {
    if !ws.out.is_empty() {
        ws.out.extend_from_slice(bytes);
        return;
    }
    match ws.stream.write(bytes) {
        Ok(n) if n == bytes.len() => {}
        Ok(n) => ws.out.extend_from_slice(&bytes[n..]),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => ws.out.extend_from_slice(bytes),
        Err(e) => fail(ws, stats, format!("write: {}", e.kind())),
    }
}

fn fail(ws: &mut Ws, stats: &mut Stats, why: String) {
    if ws.st == St::Closed {
        return;
    }
    if ws.st == St::Subscribed {
        stats.closed += 1;
    } else {
        stats.failed_open += 1;
    }
    stats.error(why);
    ws.st = St::Closed;
}

struct Ctx<'a> {
    plan: &'a Plan,
    stats: &'a mut Stats,
    churn_on: bool,
}

impl Ctx<'_> {
    fn ready(&mut self, ws: &mut Ws, writable: bool, readable: bool, rbuf: &mut [u8]) {
        if ws.st == St::Connecting {
            if let Ok(Some(e)) | Err(e) = ws.stream.take_error() {
                return fail(ws, self.stats, format!("connect: {}", e.kind()));
            }
            match ws.stream.peer_addr() {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotConnected => return,
                Err(e) => return fail(ws, self.stats, format!("connect: {}", e.kind())),
            }
            self.stats.connected += 1;
            if self.plan.raw {
                ws.st = St::Subscribed;
                self.stats.subscribed += 1;
            } else {
                let req = format!(
                    "GET {} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
                    self.plan.path, self.plan.dst
                );
                ws.st = St::Handshake;
                send(ws, req.as_bytes(), self.stats);
            }
        }
        if writable && !ws.out.is_empty() && ws.st != St::Closed {
            match ws.stream.write(&ws.out) {
                Ok(n) => {
                    ws.out.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return fail(ws, self.stats, format!("write: {}", e.kind())),
            }
        }
        if readable && ws.st != St::Closed {
            self.read(ws, rbuf);
        }
    }

    fn read(&mut self, ws: &mut Ws, buf: &mut [u8]) {
        let mut len = ws.inbuf.len();
        buf[..len].copy_from_slice(&ws.inbuf);
        ws.inbuf = Vec::new();
        loop {
            let space = buf.len() - len;
            match ws.stream.read(&mut buf[len..]) {
                Ok(0) => {
                    let why = if ws.st == St::Subscribed { "eof after subscribe" } else { "eof while opening" };
                    return fail(ws, self.stats, why.into());
                }
                Ok(n) => {
                    len += n;
                    let used = self.process(ws, &mut buf[..len]);
                    if ws.st == St::Closed {
                        return;
                    }
                    buf.copy_within(used..len, 0);
                    len -= used;
                    if len == buf.len() {
                        return fail(ws, self.stats, "frame larger than the read buffer".into());
                    }
                    if n < space {
                        break;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return fail(ws, self.stats, format!("read: {}", e.kind())),
            }
        }
        if len > 0 {
            ws.inbuf = buf[..len].to_vec();
        }
    }

    /// Handles the complete handshake/frames at the start of `data`; returns
    /// how many bytes were used.
    fn process(&mut self, ws: &mut Ws, data: &mut [u8]) -> usize {
        let mut at = 0;
        if ws.st == St::Handshake {
            let Some(end) = find(data, b"\r\n\r\n") else {
                if data.len() > 16384 {
                    fail(ws, self.stats, "handshake: response head too large".into());
                }
                return 0;
            };
            if !data.starts_with(b"HTTP/1.1 101") {
                let line = data.split(|&b| b == b'\r').next().unwrap_or_default();
                fail(ws, self.stats, format!("handshake: {}", String::from_utf8_lossy(line)));
                return 0;
            }
            ws.st = St::Open;
            at = end + 4;
        }
        while let Some((opcode, start, end, len)) = parse_frame(&mut data[at..]) {
            let (start, end) = (at + start, at + end);
            at += len;
            match opcode {
                0 | 1 => self.message(ws, &data[start..end]),
                8 => {
                    let code = data.get(start..start + 2).map(|c| u16::from_be_bytes([c[0], c[1]])).unwrap_or(1005);
                    let reason = String::from_utf8_lossy(&data[(start + 2).min(end)..end]).into_owned();
                    fail(ws, self.stats, format!("close {code} {reason}"));
                }
                9 => {
                    let pong = frame(10, &data[start..end], true);
                    send(ws, &pong, self.stats);
                }
                10 => {}
                _ => self.stats.error(format!("opcode {opcode}")),
            }
            if ws.st == St::Closed {
                break;
            }
        }
        at
    }

    fn message(&mut self, ws: &mut Ws, msg: &[u8]) {
        const FAST: &[u8] = b"{\"event\":\"lg-ev\"";
        let name = if msg.starts_with(FAST) { EVENT.as_bytes() } else { event_name(msg) };
        if name == EVENT.as_bytes() {
            self.stats.app_msgs += 1;
            ws.got += 1;
            if self.plan.latency {
                if let Some(t) = stamp(msg) {
                    if t >= self.stats.lat_from && t < self.stats.lat_until {
                        let lat = micros().saturating_sub(t);
                        self.stats.latency.push(lat.min(u32::MAX as u64) as u32);
                    }
                }
            }
            return;
        }
        match name {
            b"pusher:connection_established" => {
                let Some(sid) = socket_id(msg) else {
                    return fail(ws, self.stats, "connection_established without socket_id".into());
                };
                let sub = self.subscribe(ws.idx, &sid);
                let bytes = frame(1, sub.as_bytes(), true);
                if self.plan.presence && ws.idx >= self.plan.n - self.plan.churners {
                    let channel = &self.plan.channels[ws.idx % self.plan.channels.len()];
                    let unsub = format!(r#"{{"event":"pusher:unsubscribe","data":{{"channel":"{channel}"}}}}"#);
                    let mut resub = frame(1, unsub.as_bytes(), true);
                    resub.extend_from_slice(&bytes);
                    ws.resub = Some(resub);
                }
                send(ws, &bytes, self.stats);
            }
            b"pusher_internal:subscription_succeeded" => {
                if ws.st == St::Open {
                    ws.st = St::Subscribed;
                    self.stats.subscribed += 1;
                } else {
                    self.stats.resubscribed += 1;
                }
                if self.churn_on {
                    if let Some(r) = ws.resub.clone() {
                        send(ws, &r, self.stats);
                    }
                }
            }
            b"pusher_internal:member_added" | b"pusher_internal:member_removed" => self.stats.member_events += 1,
            b"pusher:ping" => {
                self.stats.pings += 1;
                send(ws, &frame(1, br#"{"event":"pusher:pong","data":{}}"#, true), self.stats);
            }
            b"pusher:error" | b"pusher:subscription_error" => {
                let text = String::from_utf8_lossy(msg);
                let short: String = text.chars().filter(|c| !c.is_whitespace()).take(120).collect();
                self.stats.error(short);
                if ws.st == St::Open {
                    fail(ws, self.stats, "subscribe refused".into());
                }
            }
            _ => self.stats.other_msgs += 1,
        }
    }

    fn subscribe(&self, idx: usize, socket_id: &str) -> String {
        let channel = &self.plan.channels[idx % self.plan.channels.len()];
        if !self.plan.presence {
            return format!(r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}"}}}}"#);
        }
        let data = format!(r#"{{"user_id":"u{idx}","user_info":{{"name":"user {idx}"}}}}"#);
        let sig = hmac_hex(&self.plan.secret, &format!("{socket_id}:{channel}:{data}"));
        let escaped = data.replace('"', "\\\"");
        format!(
            r#"{{"event":"pusher:subscribe","data":{{"channel":"{channel}","auth":"{}:{sig}","channel_data":"{escaped}"}}}}"#,
            self.plan.key
        )
    }
}

fn plan(args: &Args, n: usize, channels: Vec<String>) -> Plan {
    let key = args.str("key", "benchkey");
    let ws = args.str("ws", "127.0.0.1:9090");
    let dsts: Vec<SocketAddrV4> = if ws.contains(',') {
        ws.split(',')
            .map(|a| a.trim().parse().unwrap_or_else(|_| die(&format!("--ws: not an IPv4 address: {a}"))))
            .collect()
    } else {
        Vec::new()
    };
    Plan {
        dst: dsts.first().copied().unwrap_or_else(|| args.addr("ws", "127.0.0.1:9090")),
        dsts,
        sources: sources(args, n),
        n,
        path: format!("/app/{key}?protocol=7&client=loadgen&version=1.0&flash=false"),
        channels,
        presence: false,
        churners: 0,
        key,
        secret: args.str("secret", "benchsecret"),
        raw: args.flag("bare"),
        latency: false,
        // Below the 128-entry accept backlog both servers listen with, so
        // the connect rate is not made of SYN retransmissions (1 s each).
        concurrency: args.num("concurrency", 100),
    }
}

fn channel_names(base: &str, count: usize) -> Vec<String> {
    if count <= 1 {
        vec![base.to_string()]
    } else {
        (0..count).map(|i| format!("{base}-{i}")).collect()
    }
}

fn open_fleet(fleet: &mut Fleet) -> Duration {
    let took = fleet.open(Duration::from_secs(300));
    let s = &fleet.stats;
    eprintln!(
        "  opened {}/{} connections in {:.2}s ({} failed{})",
        s.subscribed,
        fleet.plan.n,
        took.as_secs_f64(),
        s.failed_open,
        if s.errors.is_empty() { String::new() } else { format!(": {}", s.error_text()) }
    );
    took
}

// ---------------------------------------------------------------- HTTP API publishers

/// Publication rate the publisher thread aims at, per second: 0 pauses it,
/// infinity means closed loop (each connection sends as soon as answered).
struct PubCtl {
    rate: AtomicU64,
    epoch: AtomicU64,
    stop: AtomicBool,
    sent: AtomicU64,
    ok: AtomicU64,
    failed: AtomicU64,
    /// API connections the server closed after a response (no keep-alive).
    reconnects: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

impl PubCtl {
    fn new() -> Arc<PubCtl> {
        Arc::new(PubCtl {
            rate: AtomicU64::new(0f64.to_bits()),
            epoch: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            sent: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            reconnects: AtomicU64::new(0),
            errors: Mutex::new(BTreeMap::new()),
        })
    }

    fn set_rate(&self, per_sec: f64) {
        self.rate.store(per_sec.to_bits(), Relaxed);
        self.epoch.fetch_add(1, Relaxed);
    }

    fn error(&self, what: String) {
        *self.errors.lock().unwrap().entry(what).or_default() += 1;
    }

    fn error_text(&self) -> String {
        let errors = self.errors.lock().unwrap();
        if errors.is_empty() {
            return "none".into();
        }
        let parts: Vec<String> = errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
        parts.join(",").replace(' ', "_")
    }
}

struct PubPlan {
    dst: SocketAddrV4,
    app_id: String,
    key: String,
    secret: String,
    channels: Vec<String>,
    payload: usize,
    conns: usize,
    /// Stamp every payload with its send time (latency); otherwise one
    /// signed request per channel and second is built and sent again, so
    /// the client's signing cost stays out of the publish-rate figure.
    stamped: bool,
}

fn pub_plan(args: &Args, channels: Vec<String>, conns: usize) -> PubPlan {
    PubPlan {
        dst: args.addr("api", "127.0.0.1:8080"),
        app_id: args.str("app-id", "bench"),
        key: args.str("key", "benchkey"),
        secret: args.str("secret", "benchsecret"),
        channels,
        payload: args.num("payload", 100),
        conns,
        stamped: true,
    }
}

struct HttpConn {
    stream: TcpStream,
    busy: Option<Instant>,
    inbuf: Vec<u8>,
    out: Vec<u8>,
}

/// A signed `POST /apps/<id>/events` whose data is `payload` bytes starting
/// with the publish timestamp.
fn publish_request(p: &PubPlan, channel: &str) -> Vec<u8> {
    let mut data = format!("LG{:016}", micros());
    while data.len() < p.payload {
        data.push('x');
    }
    let body = format!(r#"{{"name":"{EVENT}","channel":"{channel}","data":"{data}"}}"#);
    let path = format!("/apps/{}/events", p.app_id);
    let query = signed_query("POST", &path, &p.key, &p.secret, body.as_bytes(), unix_secs());
    let mut req = format!(
        "POST {path}?{query} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        p.dst,
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(body.as_bytes());
    req
}

/// Length of the first complete HTTP response in `buf` and its status.
fn parse_response(buf: &[u8]) -> Option<(usize, u16, bool)> {
    let head_end = find(buf, b"\r\n\r\n")? + 4;
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let status: u16 = head.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
    let close = head.contains("\r\nconnection: close");
    if head.contains("transfer-encoding: chunked") {
        let end = find(&buf[head_end..], b"0\r\n\r\n")? + 5;
        return Some((head_end + end, status, close));
    }
    let len = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
        .unwrap_or(0);
    (buf.len() >= head_end + len).then_some((head_end + len, status, close))
}

fn http_connect(poll: &Poll, dst: SocketAddrV4, token: usize) -> io::Result<HttpConn> {
    let std = std::net::TcpStream::connect_timeout(&SocketAddr::V4(dst), Duration::from_secs(5))?;
    std.set_nonblocking(true)?;
    std.set_nodelay(true)?;
    let mut stream = TcpStream::from_std(std);
    poll.registry().register(&mut stream, Token(token), Interest::READABLE | Interest::WRITABLE)?;
    Ok(HttpConn { stream, busy: None, inbuf: Vec::new(), out: Vec::new() })
}

/// The publisher thread: returns the response times (µs) it saw.
fn publisher(plan: PubPlan, ctl: Arc<PubCtl>) -> Vec<u32> {
    let mut poll = Poll::new().expect("epoll");
    let mut events = Events::with_capacity(256);
    let mut conns: Vec<Option<HttpConn>> = Vec::new();
    for i in 0..plan.conns {
        match http_connect(&poll, plan.dst, i) {
            Ok(c) => conns.push(Some(c)),
            Err(e) => {
                ctl.error(format!("api connect: {}", e.kind()));
                conns.push(None);
            }
        }
    }
    let mut times = Vec::new();
    let mut epoch = u64::MAX;
    let mut step_start = Instant::now();
    let mut issued: u64 = 0;
    let mut next_channel = 0;
    let mut rr = 0;
    let mut buf = vec![0u8; 65536];
    let mut cache: Vec<(u64, Vec<u8>)> = vec![(0, Vec::new()); plan.channels.len()];
    while !ctl.stop.load(Relaxed) {
        let rate = f64::from_bits(ctl.rate.load(Relaxed));
        let e = ctl.epoch.load(Relaxed);
        if e != epoch {
            epoch = e;
            step_start = Instant::now();
            issued = 0;
        }
        let due = if rate.is_infinite() { u64::MAX } else { (step_start.elapsed().as_secs_f64() * rate) as u64 };
        // Round robin from the connection after the last one used, so every
        // connection carries requests (an unused one would be timed out).
        let count = conns.len();
        for k in 0..count {
            if issued >= due {
                break;
            }
            let i = (rr + k) % count;
            let slot = &mut conns[i];
            if slot.is_none() {
                match http_connect(&poll, plan.dst, i) {
                    Ok(c) => *slot = Some(c),
                    Err(e) => {
                        ctl.error(format!("api connect: {}", e.kind()));
                        continue;
                    }
                }
            }
            let c = slot.as_mut().unwrap();
            if c.busy.is_some() {
                continue;
            }
            rr = i + 1;
            let ci = next_channel % plan.channels.len();
            next_channel += 1;
            let fresh;
            let req: &[u8] = if plan.stamped {
                fresh = publish_request(&plan, &plan.channels[ci]);
                &fresh
            } else {
                let now = unix_secs();
                if cache[ci].0 != now {
                    cache[ci] = (now, publish_request(&plan, &plan.channels[ci]));
                }
                &cache[ci].1
            };
            c.busy = Some(Instant::now());
            issued += 1;
            ctl.sent.fetch_add(1, Relaxed);
            match c.stream.write(req) {
                Ok(n) => c.out.extend_from_slice(&req[n..]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => c.out.extend_from_slice(req),
                Err(e) => {
                    ctl.failed.fetch_add(1, Relaxed);
                    ctl.error(format!("api write: {}", e.kind()));
                    let _ = poll.registry().deregister(&mut c.stream);
                    *slot = None;
                }
            }
        }
        let wait = if rate == 0.0 || issued < due {
            Duration::from_millis(1)
        } else if rate.is_finite() {
            let next_at = (issued + 1) as f64 / rate;
            Duration::from_secs_f64((next_at - step_start.elapsed().as_secs_f64()).clamp(0.0, 0.005))
        } else {
            Duration::from_millis(5)
        };
        if poll.poll(&mut events, Some(wait)).is_err() {
            continue;
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(c) = conns[i].as_mut() else { continue };
            let mut dead: Option<String> = None;
            if ev.is_writable() && !c.out.is_empty() {
                match c.stream.write(&c.out) {
                    Ok(n) => {
                        c.out.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => dead = Some(format!("api write: {}", e.kind())),
                }
            }
            if ev.is_readable() || ev.is_read_closed() {
                loop {
                    match c.stream.read(&mut buf) {
                        Ok(0) => {
                            dead = Some("api connection closed by server".into());
                            break;
                        }
                        Ok(n) => {
                            c.inbuf.extend_from_slice(&buf[..n]);
                            if n < buf.len() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(e) => {
                            dead = Some(format!("api read: {}", e.kind()));
                            break;
                        }
                    }
                }
                while let Some((len, status, close)) = parse_response(&c.inbuf) {
                    if c.busy.is_none() {
                        ctl.error(format!("api unsolicited {status}"));
                    } else if status == 200 {
                        ctl.ok.fetch_add(1, Relaxed);
                    } else {
                        ctl.failed.fetch_add(1, Relaxed);
                        let body = String::from_utf8_lossy(&c.inbuf[..len]);
                        let tail: String = body.rsplit("\r\n\r\n").next().unwrap_or("").chars().take(60).collect();
                        ctl.error(format!("api {status} {tail}"));
                    }
                    if let Some(t) = c.busy.take() {
                        times.push(t.elapsed().as_micros().min(u32::MAX as u128) as u32);
                    }
                    c.inbuf.drain(..len);
                    if close {
                        ctl.reconnects.fetch_add(1, Relaxed);
                        let _ = poll.registry().deregister(&mut c.stream);
                        conns[i] = None;
                        break;
                    }
                }
            }
            if let Some(why) = dead {
                let Some(c) = conns[i].as_mut() else { continue };
                if c.busy.is_some() {
                    ctl.failed.fetch_add(1, Relaxed);
                }
                ctl.error(why);
                let _ = poll.registry().deregister(&mut c.stream);
                conns[i] = None;
            }
        }
    }
    times
}

fn spawn_publisher(plan: PubPlan, ctl: &Arc<PubCtl>) -> std::thread::JoinHandle<Vec<u32>> {
    let ctl = ctl.clone();
    std::thread::Builder::new().name("publisher".into()).spawn(move || publisher(plan, ctl)).expect("thread")
}

// ---------------------------------------------------------------- results

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)] as f64
}

fn result(scenario: &str, pairs: &[(&str, String)]) {
    let mut line = format!("RESULT scenario={scenario}");
    for (k, v) in pairs {
        line.push_str(&format!(" {k}={v}"));
    }
    println!("{line}");
}

fn pid_of(args: &Args) -> Option<u32> {
    args.0.get("pid").and_then(|p| p.parse().ok())
}

/// The CPU the server is pinned to (`--server-core`), for its busy share.
fn core_of(args: &Args) -> Option<usize> {
    args.0.get("server-core").and_then(|p| p.parse().ok())
}

// ---------------------------------------------------------------- scenarios

/// N connections, each subscribed to a public channel: connect rate, server
/// RSS per connection above its idle baseline, errors, losses while idle.
fn connections(args: &Args) {
    let n: usize = args.num("n", 10_000);
    let channels: usize = args.num("channels", 1);
    let pid = pid_of(args);
    let base_kb = pid.and_then(rss_kb).unwrap_or(0);
    let mut fleet = Fleet::new(plan(args, n, channel_names(&args.str("channel", "bench"), channels)));
    let took = open_fleet(&mut fleet);
    let rate = fleet.stats.subscribed as f64 / took.as_secs_f64();
    fleet.pump(Duration::from_secs(args.num("settle", 3)));
    let rss = pid.and_then(rss_kb).unwrap_or(0);
    let subscribed = fleet.stats.subscribed.max(1);
    let per_conn = (rss.saturating_sub(base_kb) * 1024) as f64 / subscribed as f64;
    let hold: u64 = args.num("hold", 5);
    fleet.pump(Duration::from_secs(hold));
    let live = fleet.live();
    let s = &fleet.stats;
    eprintln!(
        "  rss {base_kb} kB idle -> {rss} kB with {} subscribed: {per_conn:.0} B/connection; {live} still open after {hold}s",
        s.subscribed
    );
    result(
        "connections",
        &[
            ("n", n.to_string()),
            ("channels", channels.to_string()),
            ("subscribed", s.subscribed.to_string()),
            ("open_secs", format!("{:.3}", took.as_secs_f64())),
            ("connect_rate", format!("{rate:.0}")),
            ("rss_base_kb", base_kb.to_string()),
            ("rss_kb", rss.to_string()),
            ("bytes_per_conn", format!("{per_conn:.0}")),
            ("live_after_hold", live.to_string()),
            ("closed", s.closed.to_string()),
            ("errors", s.error_count().to_string()),
            ("error_kinds", s.error_text()),
        ],
    );
    fleet.close_all();
}

/// N subscribers on one channel; publish through the HTTP API at increasing
/// rates (or, with --bare, read what the bare-write server sends).
fn fanout(args: &Args) {
    let n: usize = args.num("n", 10_000);
    let pid = pid_of(args);
    let channel = args.str("channel", "bench");
    let mut fleet = Fleet::new(plan(args, n, vec![channel.clone()]));
    open_fleet(&mut fleet);
    fleet.nap = Duration::from_millis(args.num("nap-ms", 50));
    let subs = fleet.stats.subscribed;
    let me = Some(std::process::id());
    if args.flag("bare") {
        fleet.pump(Duration::from_secs(1));
        let (c0, cpu, mine) = (fleet.stats.app_msgs, CpuMeter::start(pid), CpuMeter::start(me));
        let (core, t0) = (CoreMeter::start(core_of(args)), Instant::now());
        fleet.pump(Duration::from_secs(args.num("seconds", 5)));
        let rate = (fleet.stats.app_msgs - c0) as f64 / t0.elapsed().as_secs_f64();
        let (server_cpu, client_cpu, core_busy) = (cpu.percent(), mine.percent(), core.percent());
        eprintln!(
            "  bare write: {rate:.0} deliveries/s, writer cpu {server_cpu:.0}% (its core {core_busy:.0}% busy), client cpu {client_cpu:.0}%"
        );
        result(
            "bare",
            &[
                ("n", n.to_string()),
                ("subscribed", subs.to_string()),
                ("delivered_per_sec", format!("{rate:.0}")),
                ("server_cpu", format!("{server_cpu:.0}")),
                ("core_busy", format!("{core_busy:.0}")),
                ("client_cpu", format!("{client_cpu:.0}")),
                ("errors", fleet.stats.error_count().to_string()),
            ],
        );
        fleet.close_all();
        return;
    }
    let ctl = PubCtl::new();
    let publisher = spawn_publisher(pub_plan(args, vec![channel], args.num("pub-conns", 8)), &ctl);
    let rates: Vec<f64> = args
        .str("rates", "5,10,20,40,80,160,320,640,1280")
        .split(',')
        .map(|r| r.trim().parse().unwrap_or_else(|_| die("--rates: comma-separated numbers")))
        .collect();
    let step: f64 = args.num("step", 4.0);
    let (mut best, mut best_cpu, mut best_pub, mut best_rate) = (0f64, f64::NAN, 0f64, 0f64);
    let (mut client_at_best, mut best_core, mut best_fpw) = (f64::NAN, f64::NAN, f64::NAN);
    let mut saturated = false;
    for &r in &rates {
        ctl.set_rate(r);
        fleet.pump(Duration::from_secs_f64(1.0));
        let (m0, p0) = (fleet.stats.app_msgs, ctl.ok.load(Relaxed));
        let (cpu, mine, t0) = (CpuMeter::start(pid), CpuMeter::start(me), Instant::now());
        let (core, w0) = (CoreMeter::start(core_of(args)), pid.and_then(write_calls));
        fleet.pump(Duration::from_secs_f64((step - 1.0).max(1.0)));
        let calls = match (w0, pid.and_then(write_calls)) {
            (Some(a), Some(b)) if b > a => (b - a) as f64,
            _ => f64::NAN,
        };
        let secs = t0.elapsed().as_secs_f64();
        let delivered = (fleet.stats.app_msgs - m0) as f64 / secs;
        let published = (ctl.ok.load(Relaxed) - p0) as f64 / secs;
        let fpw = (fleet.stats.app_msgs - m0) as f64 / calls;
        let (server_cpu, client_cpu, core_busy) = (cpu.percent(), mine.percent(), core.percent());
        let offered = r * subs as f64;
        eprintln!(
            "  {r:>6} pub/s offered: {published:>8.0} pub/s answered, {delivered:>10.0} deliveries/s ({:>3.0}% of offered), {fpw:>4.1} frames/write, server cpu {server_cpu:>3.0}% (core {core_busy:>3.0}%), client cpu {client_cpu:>3.0}%, lost connections {}",
            100.0 * delivered / offered,
            fleet.stats.closed
        );
        if delivered > best {
            (best, best_cpu, best_pub, best_rate, client_at_best) = (delivered, server_cpu, published, r, client_cpu);
            best_core = core_busy;
            best_fpw = fpw;
        }
        if fleet.stats.closed > 0 {
            break;
        }
        // Saturated: one more (higher) step, since a busier server coalesces
        // more frames per write and may still deliver more; then stop.
        if delivered < 0.9 * offered || published < 0.9 * r {
            if saturated {
                break;
            }
            saturated = true;
        }
    }
    ctl.set_rate(0.0);
    // Drain: whatever was published must arrive (every subscriber, every message).
    let mut last = u64::MAX;
    let drain_end = Instant::now() + Duration::from_secs(30);
    while fleet.stats.app_msgs != last && Instant::now() < drain_end {
        last = fleet.stats.app_msgs;
        fleet.pump(Duration::from_secs(1));
    }
    ctl.stop.store(true, Relaxed);
    publisher.join().ok();
    let published = ctl.ok.load(Relaxed);
    let expected = published * fleet.live() as u64;
    let s = &fleet.stats;
    let missing = (published * subs).saturating_sub(s.app_msgs);
    eprintln!(
        "  published {published}, delivered {} (to {} still-open subscribers: expected {expected}), missing {missing}",
        s.app_msgs,
        fleet.live()
    );
    result(
        "fanout",
        &[
            ("n", n.to_string()),
            ("subscribed", subs.to_string()),
            ("payload", args.num::<usize>("payload", 100).to_string()),
            ("peak_delivered_per_sec", format!("{best:.0}")),
            ("peak_offered_pub_rate", format!("{best_rate:.0}")),
            ("peak_pub_rate", format!("{best_pub:.0}")),
            ("server_cpu", format!("{best_cpu:.0}")),
            ("core_busy", format!("{best_core:.0}")),
            ("frames_per_write", format!("{best_fpw:.1}")),
            ("client_cpu", format!("{client_at_best:.0}")),
            ("saturated", saturated.to_string()),
            ("published", published.to_string()),
            ("delivered", s.app_msgs.to_string()),
            ("missing", missing.to_string()),
            ("closed", s.closed.to_string()),
            ("errors", (s.error_count() + ctl.failed.load(Relaxed)).to_string()),
            ("error_kinds", format!("{}|{}", s.error_text(), ctl.error_text())),
        ],
    );
    fleet.close_all();
}

/// N subscribers spread over C channels, R publishes/s round-robin over the
/// channels; publish-to-receive latency from the stamp inside each payload.
fn latency(args: &Args) {
    let n: usize = args.num("n", 10_000);
    let channels: usize = args.num("channels", 100);
    let rate: f64 = args.num("rate", 1000.0);
    let seconds: f64 = args.num("seconds", 10.0);
    let pid = pid_of(args);
    let names = channel_names(&args.str("channel", "lat"), channels);
    let mut p = plan(args, n, names.clone());
    p.latency = true;
    let mut fleet = Fleet::new(p);
    open_fleet(&mut fleet);
    let ctl = PubCtl::new();
    let publisher = spawn_publisher(pub_plan(args, names, args.num("pub-conns", 8)), &ctl);
    ctl.set_rate(rate);
    fleet.pump(Duration::from_secs_f64(args.num("warm", 2.0)));
    fleet.stats.lat_from = micros();
    let (p0, cpu, t0) = (ctl.ok.load(Relaxed), CpuMeter::start(pid), Instant::now());
    let (core, mine) = (CoreMeter::start(core_of(args)), CpuMeter::start(Some(std::process::id())));
    fleet.pump(Duration::from_secs_f64(seconds));
    fleet.stats.lat_until = micros();
    let (core_busy, client_cpu) = (core.percent(), mine.percent());
    let published = (ctl.ok.load(Relaxed) - p0) as f64 / t0.elapsed().as_secs_f64();
    let server_cpu = cpu.percent();
    ctl.set_rate(0.0);
    fleet.pump(Duration::from_secs(2));
    ctl.stop.store(true, Relaxed);
    let mut api = publisher.join().unwrap_or_default();
    api.sort_unstable();
    let mut lat = std::mem::take(&mut fleet.stats.latency);
    lat.sort_unstable();
    let ms = |p: f64| format!("{:.3}", percentile(&lat, p) / 1000.0);
    let api_ms = |p: f64| format!("{:.3}", percentile(&api, p) / 1000.0);
    eprintln!("  HTTP API response time: p50 {} ms, p99 {} ms, max {} ms", api_ms(50.0), api_ms(99.0), api_ms(100.0));
    let expected = published * seconds * (fleet.stats.subscribed as f64 / channels as f64);
    eprintln!(
        "  {published:.0} pub/s, {} samples (~{expected:.0} expected): p50 {} ms, p99 {} ms, p99.9 {} ms, max {} ms; server cpu {server_cpu:.0}% (core {core_busy:.0}%), client cpu {client_cpu:.0}%",
        lat.len(),
        ms(50.0),
        ms(99.0),
        ms(99.9),
        ms(100.0)
    );
    let s = &fleet.stats;
    result(
        "latency",
        &[
            ("n", n.to_string()),
            ("channels", channels.to_string()),
            ("rate", format!("{rate:.0}")),
            ("pub_rate", format!("{published:.0}")),
            ("samples", lat.len().to_string()),
            ("p50_ms", ms(50.0)),
            ("p99_ms", ms(99.0)),
            ("p999_ms", ms(99.9)),
            ("max_ms", ms(100.0)),
            ("api_p99_ms", api_ms(99.0)),
            ("server_cpu", format!("{server_cpu:.0}")),
            ("core_busy", format!("{core_busy:.0}")),
            ("client_cpu", format!("{client_cpu:.0}")),
            ("closed", s.closed.to_string()),
            ("errors", (s.error_count() + ctl.failed.load(Relaxed)).to_string()),
            ("error_kinds", format!("{}|{}", s.error_text(), ctl.error_text())),
        ],
    );
    fleet.close_all();
}

/// HTTP API throughput: C keep-alive connections, one request in flight on
/// each, closed loop, to a channel with `--subscribers` listeners.
fn publish(args: &Args) {
    let conns: usize = args.num("conns", 32);
    let seconds: f64 = args.num("seconds", 5.0);
    let subscribers: usize = args.num("subscribers", 1);
    let pid = pid_of(args);
    let channel = args.str("channel", "pub");
    let mut fleet = Fleet::new(plan(args, subscribers, vec![channel.clone()]));
    if subscribers > 0 {
        open_fleet(&mut fleet);
    }
    let ctl = PubCtl::new();
    let mut pp = pub_plan(args, vec![channel], conns);
    pp.stamped = false;
    let publisher = spawn_publisher(pp, &ctl);
    ctl.set_rate(f64::INFINITY);
    fleet.pump(Duration::from_secs(1));
    let (p0, cpu, t0) = (ctl.ok.load(Relaxed), CpuMeter::start(pid), Instant::now());
    let (mine, core) = (CpuMeter::start(Some(std::process::id())), CoreMeter::start(core_of(args)));
    fleet.pump(Duration::from_secs_f64(seconds));
    let rate = (ctl.ok.load(Relaxed) - p0) as f64 / t0.elapsed().as_secs_f64();
    let (server_cpu, client_cpu, core_busy) = (cpu.percent(), mine.percent(), core.percent());
    ctl.stop.store(true, Relaxed);
    let mut times = publisher.join().unwrap_or_default();
    fleet.pump(Duration::from_millis(500));
    times.sort_unstable();
    let ms = |p: f64| format!("{:.3}", percentile(&times, p) / 1000.0);
    eprintln!(
        "  {rate:.0} requests/s on {conns} connections, p50 {} ms, p99 {} ms, server cpu {server_cpu:.0}%, client cpu {client_cpu:.0}%, failed {}",
        ms(50.0),
        ms(99.0),
        ctl.failed.load(Relaxed)
    );
    result(
        "publish",
        &[
            ("conns", conns.to_string()),
            ("subscribers", subscribers.to_string()),
            ("req_per_sec", format!("{rate:.0}")),
            ("p50_ms", ms(50.0)),
            ("p99_ms", ms(99.0)),
            ("server_cpu", format!("{server_cpu:.0}")),
            ("core_busy", format!("{core_busy:.0}")),
            ("client_cpu", format!("{client_cpu:.0}")),
            ("delivered", fleet.stats.app_msgs.to_string()),
            ("api_reconnects", ctl.reconnects.load(Relaxed).to_string()),
            ("errors", (ctl.failed.load(Relaxed) + fleet.stats.error_count()).to_string()),
            ("error_kinds", format!("{}|{}", fleet.stats.error_text(), ctl.error_text())),
        ],
    );
    fleet.close_all();
}

/// A presence channel with `members` members, the last `churners` of which
/// unsubscribe and resubscribe as fast as the server answers.
fn presence(args: &Args) {
    let members: usize = args.num("members", 100);
    let churners: usize = args.num("churners", 10).min(members);
    let seconds: f64 = args.num("seconds", 5.0);
    let pid = pid_of(args);
    let mut p = plan(args, members, vec![args.str("channel", "presence-bench")]);
    p.presence = true;
    p.churners = churners;
    let mut fleet = Fleet::new(p);
    open_fleet(&mut fleet);
    let (r0, m0) = (fleet.stats.resubscribed, fleet.stats.member_events);
    let (cpu, t0, core) = (CpuMeter::start(pid), Instant::now(), CoreMeter::start(core_of(args)));
    fleet.start_churn();
    fleet.pump(Duration::from_secs_f64(seconds));
    let secs = t0.elapsed().as_secs_f64();
    let cycles = (fleet.stats.resubscribed - r0) as f64 / secs;
    let member_events = (fleet.stats.member_events - m0) as f64 / secs;
    let (server_cpu, core_busy) = (cpu.percent(), core.percent());
    let s = &fleet.stats;
    eprintln!(
        "  {cycles:.0} unsubscribe+subscribe cycles/s, {member_events:.0} member events/s delivered, server cpu {server_cpu:.0}%, errors {}",
        s.error_text()
    );
    result(
        "presence",
        &[
            ("members", members.to_string()),
            ("churners", churners.to_string()),
            ("subscribed", s.subscribed.to_string()),
            ("cycles_per_sec", format!("{cycles:.0}")),
            ("member_events_per_sec", format!("{member_events:.0}")),
            ("server_cpu", format!("{server_cpu:.0}")),
            ("core_busy", format!("{core_busy:.0}")),
            ("closed", s.closed.to_string()),
            ("errors", s.error_count().to_string()),
            ("error_kinds", s.error_text()),
        ],
    );
    fleet.close_all();
}

/// The bare-write baseline: accept N plain TCP connections, then write the
/// same pre-encoded Pusher frame to each of them in turn, one write() per
/// frame and socket, for `--seconds`. No parsing, no queues, no JSON.
fn bare_server(args: &Args) {
    let listen = args.addr("listen", "127.0.0.1:9099");
    let n: usize = args.num("n", 10_000);
    let seconds: f64 = args.num("seconds", 12.0);
    let payload: usize = args.num("payload", 100);
    let listener = std::net::TcpListener::bind(listen).unwrap_or_else(|e| die(&format!("bind {listen}: {e}")));
    listener.set_nonblocking(true).ok();
    println!("READY");
    io::stdout().flush().ok();
    let mut socks = Vec::with_capacity(n);
    let mut last = Instant::now();
    while socks.len() < n && last.elapsed() < Duration::from_secs(60) {
        match listener.accept() {
            Ok((s, _)) => {
                s.set_nonblocking(false).ok();
                s.set_nodelay(true).ok();
                socks.push(s);
                last = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(1)),
            Err(e) => die(&format!("accept: {e}")),
        }
    }
    let mut data = format!("LG{:016}", 0);
    while data.len() < payload {
        data.push('x');
    }
    let msg = format!(r#"{{"event":"{EVENT}","channel":"bench","data":"{data}"}}"#);
    let one = frame(1, msg.as_bytes(), false);
    // --batch K: K copies per write() (what a server coalescing K publishes
    // per socket and turn does); the default 1 is the plain bare write.
    let batch: usize = args.num("batch", 1).max(1);
    let bytes = one.repeat(batch);
    let t0 = Instant::now();
    let end = t0 + Duration::from_secs_f64(seconds);
    let mut writes: u64 = 0;
    while Instant::now() < end && !socks.is_empty() {
        let mut i = 0;
        while i < socks.len() {
            if socks[i].write_all(&bytes).is_ok() {
                writes += batch as u64;
                i += 1;
            } else {
                socks.swap_remove(i);
            }
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    eprintln!(
        "  bare writer: {} sockets, {writes} frames of {} bytes ({batch} per write) in {secs:.1}s",
        socks.len(),
        one.len()
    );
    result("bare-server", &[("writes_per_sec", format!("{:.0}", writes as f64 / secs))]);
}

/// Many connections held open (benches/many.sh): see the header.
fn hold(args: &Args) {
    let n: usize = args.num("n", 10_000);
    let expect: u64 = args.num("expect", 0);
    let max = Duration::from_secs(args.num("max-secs", 300));
    let t0 = Instant::now();
    let mut fleet = Fleet::new(plan(args, n, vec![args.str("channel", "many")]));
    let took = open_fleet(&mut fleet);
    let subscribed = fleet.stats.subscribed;
    println!(
        "READY subscribed={subscribed} failed={} open_secs={:.2} connect_rate={:.0}",
        fleet.stats.failed_open,
        took.as_secs_f64(),
        subscribed as f64 / took.as_secs_f64()
    );
    let _ = io::stdout().flush();
    fleet.nap = Duration::from_millis(20);
    while t0.elapsed() < max {
        fleet.pump(Duration::from_millis(200));
        if expect > 0 && fleet.stats.app_msgs >= subscribed * expect {
            break;
        }
    }
    println!("DONE delivered={} expected={}", fleet.stats.app_msgs, subscribed * expect);
    let _ = io::stdout().flush();
    // A moment more (`--linger`, seconds): duplicates would show, and the
    // connections stay open while the script reads memory after the events.
    fleet.pump(Duration::from_secs_f64(args.num("linger", 0.5)));
    let (mut complete, mut extra) = (0u64, 0u64);
    for ws in fleet.conns.iter().flatten() {
        if ws.st == St::Subscribed && u64::from(ws.got) >= expect {
            complete += 1;
        }
        extra += u64::from(ws.got).saturating_sub(expect);
    }
    let live = fleet.live();
    let s = &fleet.stats;
    eprintln!(
        "  held {live}/{n}: {} deliveries, {complete} connections got all {expect} events ({extra} extra), {} lost, errors: {}",
        s.app_msgs,
        s.closed,
        s.error_text()
    );
    result(
        "hold",
        &[
            ("n", n.to_string()),
            ("subscribed", subscribed.to_string()),
            ("open_secs", format!("{:.3}", took.as_secs_f64())),
            ("connect_rate", format!("{:.0}", subscribed as f64 / took.as_secs_f64())),
            ("expect", expect.to_string()),
            ("delivered", s.app_msgs.to_string()),
            ("complete", complete.to_string()),
            ("extra", extra.to_string()),
            ("live", live.to_string()),
            ("closed", s.closed.to_string()),
            ("errors", s.error_count().to_string()),
            ("error_kinds", s.error_text()),
        ],
    );
    fleet.close_all();
}

/// `--count` signed REST publishes on one keep-alive connection, one at a time.
fn send_events(args: &Args) {
    let count: usize = args.num("count", 1);
    let gap = Duration::from_millis(args.num("interval-ms", 0));
    let p = pub_plan(args, vec![args.str("channel", "many")], 1);
    let (mut ok, mut failed, mut errors) = (0u64, 0u64, BTreeMap::<String, u64>::new());
    let mut conn: Option<std::net::TcpStream> = None;
    let mut buf = vec![0u8; 65536];
    for i in 0..count {
        if i > 0 {
            std::thread::sleep(gap);
        }
        if conn.is_none() {
            match std::net::TcpStream::connect_timeout(&SocketAddr::V4(p.dst), Duration::from_secs(5)) {
                Ok(c) => {
                    let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
                    conn = Some(c);
                }
                Err(e) => {
                    failed += 1;
                    *errors.entry(format!("connect: {}", e.kind())).or_default() += 1;
                    continue;
                }
            }
        }
        let c = conn.as_mut().unwrap();
        let req = publish_request(&p, &p.channels[0]);
        let mut got = Vec::new();
        let answer = c.write_all(&req).and_then(|_| loop {
            if let Some((_, status, close)) = parse_response(&got) {
                break Ok((status, close));
            }
            let k = c.read(&mut buf)?;
            if k == 0 {
                break Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            got.extend_from_slice(&buf[..k]);
        });
        match answer {
            Ok((200, close)) => {
                ok += 1;
                if close {
                    conn = None;
                }
            }
            Ok((status, _)) => {
                failed += 1;
                *errors.entry(format!("status {status}")).or_default() += 1;
                conn = None;
            }
            Err(e) => {
                failed += 1;
                *errors.entry(format!("api: {}", e.kind())).or_default() += 1;
                conn = None;
            }
        }
    }
    let kinds: Vec<String> = errors.iter().map(|(k, v)| format!("{k}:{v}")).collect();
    let kinds = if kinds.is_empty() { "none".to_string() } else { kinds.join(",").replace(' ', "_") };
    result(
        "send",
        &[("count", count.to_string()), ("ok", ok.to_string()), ("failed", failed.to_string()), ("error_kinds", kinds)],
    );
}

fn self_check() {
    // The Pusher HTTP API worked example (docs; spec/pusher-research.md §2.2).
    let body = br#"{"name":"foo","channels":["project-3"],"data":"{\"some\":\"data\"}"}"#;
    let q = signed_query("POST", "/apps/3/events", "278d425bdf160c739803", "7ad3773142a6692b25b8", body, 1353088179);
    assert!(q.contains("body_md5=ec365a775a4cd0599faeb73354201b6f"), "{q}");
    assert!(q.ends_with("auth_signature=da454824c97ba181a32ccc17a72625ba02771f50b50e1e7430e47a1f3f457e6c"), "{q}");
    let mut f = frame(1, b"{\"event\":\"x\",\"data\":\"LG0000000000001234\"}", true);
    let (op, s, e, len) = parse_frame(&mut f).expect("frame");
    assert_eq!((op, len), (1, f.len()));
    assert_eq!(event_name(&f[s..e]), b"x");
    assert_eq!(stamp(&f[s..e]), Some(1234));
    let est =
        br#"{"event":"pusher:connection_established","data":"{\"socket_id\":\"123.456\",\"activity_timeout\":120}"}"#;
    assert_eq!(socket_id(est).as_deref(), Some("123.456"));
}

fn main() {
    base();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = argv.first().filter(|a| !a.starts_with("--")) else {
        // `cargo test --all-targets` / `cargo bench` land here.
        self_check();
        println!("{USAGE}");
        return;
    };
    let args = Args::parse(&argv[1..]);
    match cmd.as_str() {
        "connections" => connections(&args),
        "fanout" => fanout(&args),
        "latency" => latency(&args),
        "publish" => publish(&args),
        "presence" => presence(&args),
        "bare-server" => bare_server(&args),
        "hold" => hold(&args),
        "send" => send_events(&args),
        "self-check" => self_check(),
        other => die(&format!("unknown scenario {other}\n{USAGE}")),
    }
}
