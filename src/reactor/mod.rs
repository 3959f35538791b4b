//! The event loop: one thread, one `mio::Poll`, every socket. It reads into
//! one shared buffer, feeds the pure codecs (`http`, `ws`), hands requests
//! and messages to the [`Hub`], and writes what the hub queued. Timers,
//! flushing and removal happen after each batch of events, never in the
//! middle of one.

mod conn;
mod out_queue;
pub mod tls;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io::{self, Read, Write};
use std::mem;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use slab::Slab;

use crate::config::{Config, Limits};
use crate::http::{self, HttpError, ParseLimits, Request, Response};
use crate::metrics::{add, sub, Metrics};
use crate::outbox::{ConnId, Outbox, SharedFrame};
use crate::server::{Server as Hub, WsRole};
use crate::systemd::Notifier;
use crate::ws::{close_code, frame, handshake, Message, OpCode, WsError};

pub use conn::Millis;
use conn::{Conn, Phase, WsState};

/// Tokens below this are the listeners and the signal source; a connection
/// in slab slot `k` uses `Token(CONN_BASE + k)`.
const CONN_BASE: usize = 8;
/// The signal source (SIGINT/SIGTERM).
const SIGNALS: Token = Token(4);
/// Woken by the store's worker threads when answers are waiting.
const WAKER: Token = Token(5);
/// Size of the one read buffer every connection reads into.
const READ_BUF_BYTES: usize = 64 * 1024;
/// Reads per connection per turn, so one fire-hose cannot starve the rest.
const READS_PER_TURN: usize = 16;
/// Pusher's "reconnect now" close code (4200-4299), sent to Pusher sessions on shutdown.
const RECONNECT: u16 = 4200;
/// Sent instead of [`RECONNECT`] on shutdown when the listeners are not
/// socket-activated: Pusher's 4100-4199 range means "reconnect after a
/// back-off" (pusher-js: 1 s), long enough for a direct restart to bind again.
const RESTART_BACKOFF: u16 = 4199;
/// Pause before accepting again after the process ran out of descriptors.
const ACCEPT_BACKOFF_MS: Millis = 100;

/// The bound listeners; created before the reactor so start-up can report
/// the real addresses (port 0 gets an ephemeral port).
pub struct Listeners {
    sockets: Vec<TcpListener>,
    /// TLS configuration of each listener (None: plain TCP).
    tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    /// The sockets came from systemd (socket activation) and outlive this process.
    pub activated: bool,
}

impl Listeners {
    /// Takes the sockets passed by systemd socket activation (`LISTEN_FDS`,
    /// named `ws` and `api` by `LISTEN_FDNAMES`, else in that order; one
    /// socket serves both), or else binds the WebSocket and REST addresses
    /// (once if they are the same).
    pub fn bind(config: &Config) -> io::Result<Listeners> {
        let (sockets, activated) = match crate::systemd::listen_fds(|k| std::env::var(k).ok())? {
            Some(passed) => (activated_sockets(passed)?, true),
            None => {
                let mut sockets = vec![TcpListener::bind(config.server_addr)?];
                if config.app_addr != config.server_addr {
                    sockets.push(TcpListener::bind(config.app_addr)?);
                }
                (sockets, false)
            }
        };
        let tls = load_tls(config, sockets.len()).map_err(io::Error::other)?;
        Ok(Listeners { sockets, tls, activated })
    }

    /// Whether each listener speaks TLS (WebSocket listener first).
    pub fn tls_enabled(&self) -> Vec<bool> {
        self.tls.iter().map(Option::is_some).collect()
    }

    /// The bound addresses: WebSocket first, then REST (same as the first when shared).
    pub fn addrs(&self) -> io::Result<(SocketAddr, SocketAddr)> {
        let ws = self.sockets[0].local_addr()?;
        let api = match self.sockets.get(1) {
            Some(s) => s.local_addr()?,
            None => ws,
        };
        Ok((ws, api))
    }
}

/// A connection's leftover input, with its memory given back when a large
/// message left a buffer much bigger than what remains in it.
fn shrunk(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.capacity() > 2 * buf.len().max(READ_BUF_BYTES) {
        buf.shrink_to(buf.len());
    }
    buf
}

/// Orders the sockets systemd passed: WebSocket listener first, then REST.
fn activated_sockets(passed: Vec<crate::systemd::ActivatedListener>) -> io::Result<Vec<TcpListener>> {
    let named = |name: &str| passed.iter().position(|l| l.name.as_deref() == Some(name));
    let order: Vec<usize> = match (named("ws"), named("api")) {
        (Some(ws), Some(api)) => vec![ws, api],
        (Some(one), None) | (None, Some(one)) if passed.len() == 1 => vec![one],
        (None, None) if passed.len() <= 2 => (0..passed.len()).collect(),
        _ => {
            let names: Vec<String> = passed.iter().map(|l| l.name.clone().unwrap_or_default()).collect();
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket activation passed {} sockets named {names:?}; expected one, or two named ws and api",
                    passed.len()
                ),
            ));
        }
    };
    let mut slots: Vec<Option<std::net::TcpListener>> = passed.into_iter().map(|l| Some(l.socket)).collect();
    let mut out = Vec::new();
    for i in order {
        let socket = slots[i].take().expect("each index once");
        socket.set_nonblocking(true)?;
        info!("socket activation: listening on {} (inherited)", socket.local_addr()?);
        out.push(TcpListener::from_std(socket));
    }
    Ok(out)
}

/// Reads the certificates of the TLS listeners (once per listener; when the
/// two listeners are one socket, the WebSocket settings apply).
fn load_tls(config: &Config, listeners: usize) -> Result<Vec<Option<Arc<rustls::ServerConfig>>>, String> {
    let load = |t: &Option<crate::config::TlsFiles>| -> Result<_, String> {
        t.as_ref().map(|f| tls::load_config(&f.cert, &f.key)).transpose()
    };
    let mut out = vec![load(&config.server_tls)?];
    if listeners > 1 {
        out.push(load(&config.app_tls)?);
    }
    Ok(out)
}

/// The connection table, and everything that may be done to a connection
/// without the hub: queue bytes, arm timers, mark for flush or removal.
/// It is the [`Outbox`] upper layers write to.
pub struct Table {
    conns: Slab<Conn>,
    /// `(deadline, slot, generation)`, earliest first; stale entries are skipped.
    timers: BinaryHeap<Reverse<(Millis, u32, u32)>>,
    dirty: Vec<usize>,
    doomed: Vec<usize>,
    /// HTTP connections answered late with pipelined requests still buffered.
    resumable: Vec<usize>,
    now: Millis,
    limits: Limits,
    metrics: Rc<Metrics>,
    next_gen: u32,
    /// Unfinished input held across all connections (see [`Conn::held`]).
    input_held: usize,
    /// Last time a refusal for the input budget was logged at warn.
    budget_warned_at: Option<Millis>,
}

impl Table {
    fn get(&mut self, id: ConnId) -> Option<(usize, &mut Conn)> {
        let key = id.key as usize;
        self.conns.get_mut(key).filter(|c| c.id.gen == id.gen).map(|c| (key, c))
    }

    /// Ensures the timer heap holds an entry no later than the connection's deadline.
    fn arm(&mut self, key: usize) {
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let due = conn.deadline(&self.limits);
        if conn.timer_at.is_none_or(|at| due < at) {
            conn.timer_at = Some(due);
            self.timers.push(Reverse((due, conn.id.key, conn.id.gen)));
        }
    }

    fn mark_dirty(&mut self, key: usize) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.dirty && !conn.doomed {
                conn.dirty = true;
                self.dirty.push(key);
            }
        }
    }

    /// Brings the connection's share of the input budget up to date and
    /// notes progress. True when its input grew and the process is now over
    /// the budget: the caller refuses this connection.
    fn account(&mut self, key: usize) -> bool {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        let (cap, len) = conn.input_held();
        let (cap, len) = (cap.min(u32::MAX as usize), len.min(u32::MAX as usize));
        let old = conn.held as usize;
        conn.held = cap as u32;
        // Any change is progress (bytes added, or a message completed); a
        // ping between fragments changes nothing and is not.
        if len != conn.partial_len as usize {
            conn.progress_at = now;
        }
        conn.partial_len = len as u32;
        self.input_held = self.input_held - old + cap;
        cap > old && self.input_held > self.limits.input_budget
    }

    /// Schedules removal after this turn; the reason is logged at debug.
    fn doom(&mut self, key: usize, why: &str) {
        if let Some(conn) = self.conns.get_mut(key) {
            if !conn.doomed {
                debug!("conn {key}: closing ({why})");
                conn.doomed = true;
                conn.out.clear();
                self.doomed.push(key);
            }
        }
    }

    /// Queues bytes. Only backlog the peer fails to read counts against the
    /// high-water mark: one frame larger than the mark (a big reply) is
    /// queued as exempt and sent whole. A connection whose backlog would pass
    /// the mark is cut as a slow consumer, logged at warn.
    fn queue(&mut self, key: usize, bytes: SharedFrame) -> bool {
        let high_water = self.limits.write_high_water;
        let Some(conn) = self.conns.get_mut(key) else {
            return false;
        };
        if conn.doomed {
            return false;
        }
        if bytes.len() > high_water && conn.out.push_exempt(bytes.clone()) {
            self.mark_dirty(key);
            return true;
        }
        let backlog = conn.out.backlog();
        if backlog + bytes.len() > high_water {
            add(&self.metrics.slow_consumers, 1);
            warn!(
                "conn {key}: slow consumer cut: {backlog} bytes unread plus {} more is above PUSHI_WRITE_HIGH_WATER ({high_water})",
                bytes.len()
            );
            self.doom(key, "slow consumer: out-queue above the high-water mark");
            return false;
        }
        conn.out.push(bytes);
        self.mark_dirty(key);
        true
    }

    /// Sends our close frame and waits (bounded) for the peer's.
    fn close_ws(&mut self, key: usize, code: u16, reason: &str) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        let Phase::Ws(ws) = &mut conn.phase else {
            return;
        };
        if ws.closed_by_us.is_some() || conn.doomed {
            return;
        }
        ws.closed_by_us = Some(now);
        debug!("conn {key}: sending close {code} ({reason})");
        self.metrics.close_sent(code);
        self.queue(key, frame::encode_close(code, reason).into());
        self.arm(key);
    }
}

impl Table {
    /// Ends an HTTP connection after its queued bytes: flush, half-close, wait for FIN.
    fn close_http(&mut self, key: usize) {
        let now = self.now;
        let Some(conn) = self.conns.get_mut(key) else {
            return;
        };
        if matches!(conn.phase, Phase::Http(_)) {
            conn.phase = Phase::Closing { since: now, shut: false, linger: true };
            conn.inbuf = Vec::new();
            self.account(key);
            self.mark_dirty(key);
            self.arm(key);
        }
    }
}

impl Outbox for Table {
    fn peer_ip(&mut self, to: ConnId) -> Option<std::net::IpAddr> {
        self.get(to).and_then(|(_, c)| c.socket.peer_addr().ok()).map(|a| a.ip())
    }

    fn respond(&mut self, to: ConnId, response: Response) {
        let Some((key, conn)) = self.get(to) else {
            return debug!("conn {}: late answer dropped (connection gone)", to.key);
        };
        let Phase::Http(h) = &mut conn.phase else {
            return;
        };
        let Some((_, keep_alive)) = h.awaiting.take() else {
            return debug!("conn {key}: late answer dropped (no request waiting)");
        };
        let keep_alive = keep_alive && !response.close;
        h.head_started = None;
        h.continued = false;
        let buffered = !conn.inbuf.is_empty();
        if response.status >= 400 {
            self.metrics.http_error(response.status);
        }
        self.queue(key, response.encode(keep_alive).into());
        if !keep_alive {
            self.close_http(key);
        } else {
            self.arm(key);
            if buffered {
                self.resumable.push(key);
            }
        }
    }

    fn send(&mut self, to: ConnId, frame: &SharedFrame) -> bool {
        match self.get(to) {
            Some((key, conn)) if conn.accepts_frames() => {
                add(&self.metrics.messages_out, 1);
                self.queue(key, frame.clone())
            }
            _ => false,
        }
    }

    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        if let Some((key, _)) = self.get(to) {
            self.close_ws(key, code, reason);
        }
    }
}

/// The event loop and everything it owns.
pub struct Reactor {
    poll: Poll,
    listeners: Vec<TcpListener>,
    listener_tls: Vec<Option<Arc<rustls::ServerConfig>>>,
    signals: Signals,
    table: Table,
    hub: Hub,
    read_buf: Vec<u8>,
    /// Connections whose read budget ran out with bytes possibly left.
    pending_reads: Vec<ConnId>,
    accept_paused_until: Option<Millis>,
    shutdown_at: Option<Millis>,
    started: Instant,
    systemd: Notifier,
    next_watchdog: Option<Millis>,
    /// The listeners came from systemd and stay open across a restart.
    activated: bool,
}

impl Reactor {
    /// Registers the listeners and signal handlers, then builds the hub with
    /// the waker its store workers use; nothing runs until [`Reactor::run`].
    pub fn new(
        listeners: Listeners,
        metrics: Rc<Metrics>,
        make_hub: impl FnOnce(Arc<Waker>) -> Hub,
    ) -> io::Result<Reactor> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let hub = make_hub(waker);
        let activated = listeners.activated;
        let mut sockets = listeners.sockets;
        for (i, l) in sockets.iter_mut().enumerate() {
            poll.registry().register(l, Token(i), Interest::READABLE)?;
        }
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let limits = hub.fx.config.limits.clone();
        Ok(Reactor {
            poll,
            listeners: sockets,
            listener_tls: listeners.tls,
            signals,
            table: Table {
                conns: Slab::new(),
                timers: BinaryHeap::new(),
                dirty: Vec::new(),
                doomed: Vec::new(),
                resumable: Vec::new(),
                now: 0,
                limits,
                metrics,
                next_gen: 1,
                input_held: 0,
                budget_warned_at: None,
            },
            hub,
            read_buf: vec![0; READ_BUF_BYTES],
            pending_reads: Vec::new(),
            accept_paused_until: None,
            shutdown_at: None,
            started: Instant::now(),
            systemd: Notifier::from_env(),
            next_watchdog: None,
            activated,
        })
    }

    /// Runs until a shutdown signal has been handled and the connections drained.
    pub fn run(&mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        // The listeners are bound and registered: ready for traffic.
        self.systemd.notify("READY=1\nSTATUS=serving");
        self.next_watchdog = self.systemd.watchdog_interval.map(|_| 0);
        loop {
            let timeout = self.poll_timeout();
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            self.table.now = self.started.elapsed().as_millis() as Millis;
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signal(),
                    WAKER => {
                        self.hub.on_wake(&mut self.table);
                        for key in mem::take(&mut self.table.resumable) {
                            self.resume(key);
                        }
                    }
                    Token(t) if t < CONN_BASE => self.accept(t),
                    Token(t) => {
                        let key = t - CONN_BASE;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.on_readable(key);
                        }
                        if event.is_writable() {
                            self.table.mark_dirty(key);
                        }
                    }
                }
            }
            for id in mem::take(&mut self.pending_reads) {
                if self.table.get(id).is_some() {
                    self.on_readable(id.key as usize);
                }
            }
            if self.accept_paused_until.is_some_and(|t| t <= self.table.now) {
                self.accept_paused_until = None;
                for i in 0..self.listeners.len() {
                    self.accept(i);
                }
            }
            self.fire_timers();
            self.hub.end_of_turn();
            if let (Some(due), Some(every)) = (self.next_watchdog, self.systemd.watchdog_interval) {
                if due <= self.table.now {
                    let status = format!(
                        "WATCHDOG=1\nSTATUS=serving {} connections, {} sessions{}",
                        self.table.conns.len(),
                        self.hub.state.sessions.len(),
                        if self.hub.fx.store.health.degraded.load(std::sync::atomic::Ordering::Relaxed) {
                            "; store degraded, writes retried"
                        } else {
                            ""
                        }
                    );
                    self.systemd.notify(&status);
                    self.next_watchdog = Some(self.table.now + every.as_millis() as Millis);
                }
            }
            while !self.table.dirty.is_empty() || !self.table.doomed.is_empty() {
                self.flush_dirty();
                self.reap();
            }
            if let Some(at) = self.shutdown_at {
                if self.table.conns.is_empty() || self.table.now >= at {
                    info!("shutdown complete ({} connections left)", self.table.conns.len());
                    return Ok(());
                }
            }
        }
    }

    /// The hub, once the loop has ended (to finish the store's writes).
    pub fn into_hub(self) -> Hub {
        self.hub
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.pending_reads.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.started.elapsed().as_millis() as Millis;
        [
            self.table.timers.peek().map(|Reverse((at, _, _))| *at),
            self.accept_paused_until,
            self.shutdown_at,
            self.next_watchdog,
        ]
        .into_iter()
        .flatten()
        .min()
        // +1 so a deadline is past, not just reached, when we wake.
        .map(|at| Duration::from_millis(at.saturating_sub(now) + 1))
        // The hub's housekeeping (freeing expired channels) needs turns even when idle.
        .into_iter()
        .chain(self.hub.housekeeping_in())
        .min()
    }

    fn accept(&mut self, index: usize) {
        if self.accept_paused_until.is_some() {
            return;
        }
        loop {
            let Some(listener) = self.listeners.get(index) else {
                return;
            };
            match listener.accept() {
                Ok((socket, addr)) => self.admit(socket, addr, index),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    // Usually EMFILE: back off instead of spinning on a full process.
                    warn!("accept failed: {e}; pausing accepts for {ACCEPT_BACKOFF_MS} ms");
                    self.accept_paused_until = Some(self.table.now + ACCEPT_BACKOFF_MS);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut socket: TcpStream, addr: SocketAddr, listener: usize) {
        let metrics = &self.table.metrics;
        if self.table.conns.len() >= self.table.limits.max_connections {
            add(&metrics.connections_refused, 1);
            metrics.http_error(503);
            let _ = socket.write(&HttpError::Unavailable.response().encode(false));
            return;
        }
        let _ = socket.set_nodelay(true);
        let entry = self.table.conns.vacant_entry();
        let key = entry.key();
        let token = Token(CONN_BASE + key);
        if let Err(e) = self.poll.registry().register(&mut socket, token, Interest::READABLE | Interest::WRITABLE) {
            warn!("cannot register connection from {addr}: {e}");
            return;
        }
        let tls = match self.listener_tls.get(listener).cloned().flatten().map(rustls::ServerConnection::new) {
            None => None,
            Some(Ok(session)) => Some(Box::new(session)),
            Some(Err(e)) => {
                warn!("TLS session for {addr} not created: {e}");
                let _ = self.poll.registry().deregister(&mut socket);
                return;
            }
        };
        let id = ConnId { key: key as u32, gen: self.table.next_gen };
        self.table.next_gen = self.table.next_gen.wrapping_add(1).max(1);
        entry.insert(Conn::new(socket, tls, id, self.table.now));
        add(&metrics.connections_accepted, 1);
        add(&metrics.connections_open, 1);
        trace!("conn {key}: accepted from {addr}");
        self.table.arm(key);
    }

    fn on_readable(&mut self, key: usize) {
        if self.table.conns.get(key).is_some_and(|c| c.tls.is_some()) {
            return self.on_readable_tls(key);
        }
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.table.conns.get_mut(key) else {
                return;
            };
            if conn.doomed {
                return;
            }
            match conn.socket.read(&mut self.read_buf) {
                Ok(0) => {
                    self.table.doom(key, "peer closed the connection");
                    return;
                }
                Ok(n) => {
                    conn.last_active = self.table.now;
                    add(&self.table.metrics.bytes_in, n as u64);
                    self.consume(key, n);
                    self.table.arm(key);
                    if n < self.read_buf.len() {
                        // A short read emptied the socket: new bytes raise a new edge, so
                        // skip the read that would only say WouldBlock (tokio does the same).
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.table.doom(key, &format!("read error: {e}"));
                    return;
                }
            }
        }
        if let Some(conn) = self.table.conns.get(key) {
            self.pending_reads.push(conn.id);
        }
    }

    /// `on_readable` for a TLS connection: decrypts into the shared buffer
    /// until the socket is drained (handshake messages are answered by the flush).
    fn on_readable_tls(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.table.conns.get_mut(key) else {
                return;
            };
            if conn.doomed {
                return;
            }
            let session = conn.tls.as_mut().expect("a TLS connection");
            let result = tls::read(session, &mut conn.socket, &mut self.read_buf);
            let wants_write = session.wants_write();
            if wants_write {
                self.table.mark_dirty(key);
            }
            match result {
                Ok(tls::TlsRead::Data(n)) => {
                    if let Some(conn) = self.table.conns.get_mut(key) {
                        conn.last_active = self.table.now;
                    }
                    add(&self.table.metrics.bytes_in, n as u64);
                    self.consume(key, n);
                    self.table.arm(key);
                }
                Ok(tls::TlsRead::Blocked) => return,
                Ok(tls::TlsRead::Closed) => {
                    self.table.doom(key, "peer closed the TLS connection");
                    return;
                }
                Err(e) => {
                    self.table.doom(key, &format!("TLS error: {e}"));
                    return;
                }
            }
        }
        if let Some(conn) = self.table.conns.get(key) {
            self.pending_reads.push(conn.id);
        }
    }

    /// Processes `n` fresh bytes in the shared buffer, keeping any unconsumed
    /// tail in the connection's own buffer.
    fn consume(&mut self, key: usize, n: usize) {
        let mut own = mem::take(&mut self.table.conns[key].inbuf);
        let mut shared = mem::take(&mut self.read_buf);
        let rest = if own.is_empty() {
            let used = self.process(key, &mut shared[..n]);
            own.extend_from_slice(&shared[used..n]);
            own
        } else {
            own.extend_from_slice(&shared[..n]);
            let used = self.process(key, &mut own);
            own.drain(..used);
            own
        };
        self.read_buf = shared;
        if let Some(conn) = self.table.conns.get_mut(key) {
            if let Phase::Http(h) = &mut conn.phase {
                if !rest.is_empty() && h.head_started.is_none() {
                    h.head_started = Some(self.table.now);
                }
            }
            conn.inbuf = if rest.is_empty() { Vec::new() } else { shrunk(rest) };
        }
        self.after_input(key);
    }

    /// Accounts a connection's unfinished input after new bytes; refuses it
    /// when that pushed the process over `PUSHI_INPUT_BUDGET`.
    fn after_input(&mut self, key: usize) {
        if !self.table.account(key) {
            return;
        }
        let now = self.table.now;
        if self.table.budget_warned_at.is_none_or(|at| now >= at + 1000) {
            self.table.budget_warned_at = Some(now);
            warn!(
                "input budget spent ({} bytes of unfinished input held, PUSHI_INPUT_BUDGET={}); refusing the connections adding more",
                self.table.input_held, self.table.limits.input_budget
            );
        }
        self.refuse_input(key, HttpError::InputBudget, close_code::TRY_AGAIN_LATER, "server busy: input budget spent");
    }

    /// Ends a connection whose unfinished input cannot be kept: an HTTP error
    /// answer, or a close frame on a WebSocket; then closing.
    fn refuse_input(&mut self, key: usize, http: HttpError, ws_code: u16, reason: &str) {
        match self.table.conns.get(key).map(|c| &c.phase) {
            Some(Phase::Http(_)) => self.fail_http(key, http),
            Some(Phase::Ws(ws)) => {
                debug!("conn {key}: closing WebSocket {ws_code} ({reason})");
                if ws.closed_by_us.is_none() {
                    self.table.metrics.close_sent(ws_code);
                    self.table.queue(key, frame::encode_close(ws_code, reason).into());
                }
                self.enter_closing(key);
            }
            _ => self.table.doom(key, reason),
        }
    }

    /// Consumes whole requests or frames from `buf`; returns the bytes used.
    fn process(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let parse_limits =
            ParseLimits { max_head: self.table.limits.max_head_bytes, max_body: self.table.limits.max_body_bytes };
        let max_message = self.table.limits.max_message_bytes;
        let high_water = self.table.limits.write_high_water;
        let mut pos = 0;
        loop {
            let Some(conn) = self.table.conns.get_mut(key) else {
                return buf.len();
            };
            if conn.doomed {
                return buf.len();
            }
            // A big reply is still being read by the client: later pipelined
            // requests wait (resumed by the flush) instead of piling up replies.
            let replies_unread = conn.out.pending() > high_water;
            match &mut conn.phase {
                // An earlier request is still being answered: later ones wait their turn.
                Phase::Http(h) if h.awaiting.is_some() || replies_unread => {
                    if buf.len() - pos > parse_limits.max_head + parse_limits.max_body {
                        self.table.doom(key, "pipelined too much while a request was being answered");
                        return buf.len();
                    }
                    return pos;
                }
                Phase::Http(h) => match http::parse_request_resumable(&buf[pos..], parse_limits, &mut h.scan) {
                    Ok(None) => {
                        if !h.continued && h.scan.wants_continue() {
                            h.continued = true;
                            self.table.queue(key, Rc::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]));
                        }
                        return pos;
                    }
                    Ok(Some((req, used))) => {
                        pos += used;
                        self.on_request(key, req);
                    }
                    Err(e) => {
                        self.fail_http(key, e);
                        return buf.len();
                    }
                },
                Phase::Ws(ws) => {
                    let decoded = match frame::decode(&mut buf[pos..], max_message) {
                        Ok(None) => return pos,
                        Ok(Some((f, used))) => {
                            pos += used;
                            ws.reader.push(f, max_message)
                        }
                        Err(e) => Err(e),
                    };
                    match decoded {
                        Ok(Some(message)) => self.on_message(key, message),
                        Ok(None) => {}
                        Err(e) => {
                            self.fail_ws(key, e);
                            return buf.len();
                        }
                    }
                }
                Phase::Closing { .. } => return buf.len(),
            }
        }
    }

    fn on_request(&mut self, key: usize, req: Request) {
        add(&self.table.metrics.http_requests, 1);
        if req.is_websocket_upgrade() {
            return self.upgrade(key, req);
        }
        let id = self.table.conns[key].id;
        let Some(response) = self.hub.http(&req, id, &mut self.table) else {
            // Answered later through `Outbox::respond`, when the store replies.
            let now = self.table.now;
            if let Some(Phase::Http(h)) = self.table.conns.get_mut(key).map(|c| &mut c.phase) {
                h.awaiting = Some((now, req.keep_alive()));
            }
            self.table.arm(key);
            return;
        };
        if response.status >= 400 {
            self.table.metrics.http_error(response.status);
        }
        let keep_alive = req.keep_alive() && !response.close;
        self.table.queue(key, response.encode(keep_alive).into());
        if keep_alive {
            if let Some(Phase::Http(h)) = self.table.conns.get_mut(key).map(|c| &mut c.phase) {
                h.head_started = None;
                h.continued = false;
            }
        } else {
            self.enter_closing(key);
        }
    }

    /// Parses requests that arrived while an earlier one was being answered.
    fn resume(&mut self, key: usize) {
        let Some(conn) = self.table.conns.get_mut(key) else {
            return;
        };
        let mut own = mem::take(&mut conn.inbuf);
        let used = self.process(key, &mut own);
        own.drain(..used);
        let now = self.table.now;
        if let Some(conn) = self.table.conns.get_mut(key) {
            if let Phase::Http(h) = &mut conn.phase {
                if !own.is_empty() && h.head_started.is_none() && h.awaiting.is_none() {
                    h.head_started = Some(now);
                }
            }
            conn.inbuf = if own.is_empty() { Vec::new() } else { shrunk(own) };
        }
        self.table.account(key);
    }

    fn upgrade(&mut self, key: usize, req: Request) {
        let accepted = handshake::accept(&req).and_then(|reply| Ok((reply, self.hub.ws_route(&req)?)));
        let (reply, route) = match accepted {
            Ok(ok) => ok,
            Err(e) => return self.fail_http(key, e),
        };
        self.table.queue(key, reply.into());
        let conn = &mut self.table.conns[key];
        let id = conn.id;
        conn.phase =
            Phase::Ws(WsState { reader: Default::default(), role: WsRole::Echo, ping_sent: None, closed_by_us: None });
        add(&self.table.metrics.websockets_open, 1);
        debug!("conn {key}: upgraded to WebSocket on {}", req.path());
        let role = self.hub.ws_open(route, id, &mut self.table);
        if let Some(Phase::Ws(ws)) = self.table.conns.get_mut(key).map(|c| &mut c.phase) {
            ws.role = role;
        }
    }

    fn on_message(&mut self, key: usize, message: Message<'_>) {
        let conn = &mut self.table.conns[key];
        let Phase::Ws(ws) = &mut conn.phase else {
            return;
        };
        let (role, closing) = (ws.role, ws.closed_by_us.is_some());
        match message {
            Message::Ping(payload) => {
                self.table.queue(key, frame::encoded(OpCode::Pong, payload).into());
            }
            Message::Pong(_) => ws.ping_sent = None,
            Message::Close(received) => {
                if !closing {
                    // "It SHOULD do so by sending a Close frame with the status code it received" (RFC 6455 §5.5.1).
                    let echo = match received {
                        Some((code, _)) => frame::encode_close(code, ""),
                        None => frame::encoded(OpCode::Close, &[]),
                    };
                    self.table.queue(key, echo.into());
                }
                // Both close frames are (about to be) exchanged: the server
                // closes TCP first once ours is out (RFC 6455 §7.1.1), so a
                // client that keeps its socket open costs nothing at shutdown.
                self.enter_closing_with(key, false);
            }
            _ if closing => {} // after our close frame, data is discarded (§1.4)
            Message::Text(text) => {
                add(&self.table.metrics.messages_in, 1);
                match role {
                    WsRole::Echo => {
                        self.table.queue(key, frame::encoded(OpCode::Text, text.as_bytes()).into());
                    }
                    WsRole::Session(s) => self.hub.ws_text(s, &text, &mut self.table),
                    WsRole::Refused => {}
                }
            }
            Message::Binary(bytes) => {
                add(&self.table.metrics.messages_in, 1);
                match role {
                    WsRole::Echo => {
                        self.table.queue(key, frame::encoded(OpCode::Binary, &bytes).into());
                    }
                    WsRole::Session(_) | WsRole::Refused => {
                        self.table.close_ws(key, 1003, "binary messages are not supported")
                    }
                }
            }
        }
    }

    /// Answers a bad request with its status and closes after the answer.
    fn fail_http(&mut self, key: usize, e: HttpError) {
        debug!("conn {key}: HTTP {} ({})", e.status(), e.message());
        self.table.metrics.http_error(e.status());
        self.table.queue(key, e.response().encode(false).into());
        self.enter_closing(key);
    }

    /// Fails the WebSocket: close frame with the error's code, then close (RFC 6455 §7.1.7).
    fn fail_ws(&mut self, key: usize, e: WsError) {
        debug!("conn {key}: WebSocket error {} ({})", e.close_code(), e.reason());
        let already_closing = matches!(&self.table.conns[key].phase, Phase::Ws(ws) if ws.closed_by_us.is_some());
        if !already_closing {
            self.table.metrics.close_sent(e.close_code());
            self.table.queue(key, frame::encode_close(e.close_code(), e.reason()).into());
        }
        self.enter_closing(key);
    }

    /// Moves to `Closing`: flush, half-close, wait for FIN. A WebSocket
    /// session ends here, so its hub state is released at once.
    fn enter_closing(&mut self, key: usize) {
        self.enter_closing_with(key, true);
    }

    /// [`Reactor::enter_closing`]; `linger` false closes the socket as soon
    /// as the queued bytes are out (the WebSocket close handshake is done).
    fn enter_closing_with(&mut self, key: usize, linger: bool) {
        let now = self.table.now;
        let Some(conn) = self.table.conns.get_mut(key) else {
            return;
        };
        let old = mem::replace(&mut conn.phase, Phase::Closing { since: now, shut: false, linger });
        conn.inbuf = Vec::new();
        self.table.account(key);
        self.table.mark_dirty(key);
        self.table.arm(key);
        self.end_ws(old);
    }

    fn end_ws(&mut self, old: Phase) {
        if let Phase::Ws(ws) = old {
            sub(&self.table.metrics.websockets_open, 1);
            if let WsRole::Session(s) = ws.role {
                self.hub.ws_closed(s, &mut self.table);
            }
        }
    }

    fn fire_timers(&mut self) {
        let now = self.table.now;
        while let Some(&Reverse((at, key, gen))) = self.table.timers.peek() {
            if at > now {
                break;
            }
            self.table.timers.pop();
            let key = key as usize;
            let Some(conn) = self.table.conns.get_mut(key) else {
                continue;
            };
            if conn.id.gen != gen || conn.timer_at != Some(at) || conn.doomed {
                continue; // stale entry
            }
            conn.timer_at = None;
            if conn.deadline(&self.table.limits) <= now {
                self.on_timeout(key);
            }
            self.table.arm(key);
        }
    }

    fn on_timeout(&mut self, key: usize) {
        let now = self.table.now;
        let conn = &mut self.table.conns[key];
        if conn.stall_deadline(&self.table.limits).is_some_and(|at| at <= now) {
            return self.refuse_input(key, HttpError::Stalled, close_code::POLICY, "message stalled");
        }
        let last_active = conn.last_active;
        match &mut conn.phase {
            Phase::Http(h) if h.awaiting.is_some() => {
                let id = conn.id;
                h.awaiting = Some((now, false));
                warn!("conn {key}: the store did not answer in time; 504");
                let r = Response::error(504, "the store did not answer in time; a write stays queued and is retried");
                self.table.respond(id, r);
            }
            Phase::Http(h) if h.head_started.is_some() => self.fail_http(key, HttpError::Timeout),
            Phase::Http(_) => self.table.doom(key, "keep-alive connection idle"),
            Phase::Ws(ws) if ws.closed_by_us.is_some() => self.table.doom(key, "no close frame from the peer in time"),
            Phase::Ws(ws) => {
                let role = ws.role;
                if ws.ping_sent.is_some_and(|at| last_active < at) {
                    let (code, reason) = self.hub.unresponsive_close(role);
                    return self.table.close_ws(key, code, reason);
                }
                ws.ping_sent = Some(now);
                let pinged = match role {
                    WsRole::Session(s) => self.hub.ws_idle(s, &mut self.table),
                    WsRole::Echo | WsRole::Refused => false,
                };
                if !pinged {
                    self.table.queue(key, frame::encoded(OpCode::Ping, b"").into());
                }
            }
            Phase::Closing { .. } => self.table.doom(key, "close timeout"),
        }
    }

    fn flush_dirty(&mut self) {
        let high_water = self.table.limits.write_high_water;
        let mut unpaused = Vec::new();
        for key in mem::take(&mut self.table.dirty) {
            let Some(conn) = self.table.conns.get_mut(key) else {
                continue;
            };
            conn.dirty = false;
            if conn.doomed {
                continue;
            }
            let was_paused = conn.out.pending() > high_water;
            let written = match conn.tls.as_mut() {
                None => conn.out.flush(&mut conn.socket),
                Some(session) => {
                    let mut sink = tls::TlsSink { tls: session, socket: &mut conn.socket };
                    conn.out.flush(&mut sink).and_then(|n| match tls::push(session, &mut conn.socket) {
                        Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                        _ => Ok(n),
                    })
                }
            };
            match written {
                Ok(n) => add(&self.table.metrics.bytes_out, n as u64),
                Err(e) => {
                    self.table.doom(key, &format!("write error: {e}"));
                    continue;
                }
            }
            if was_paused
                && conn.out.pending() <= high_water
                && !conn.inbuf.is_empty()
                && matches!(&conn.phase, Phase::Http(h) if h.awaiting.is_none())
            {
                unpaused.push(key);
            }
            let ciphertext_pending = conn.tls.as_ref().is_some_and(|t| t.wants_write());
            if let Phase::Closing { shut, linger, .. } = &mut conn.phase {
                if conn.out.is_empty() && !ciphertext_pending && !*shut {
                    if let Some(session) = conn.tls.as_mut() {
                        // close_notify before the FIN, best effort (the data before it is out).
                        session.send_close_notify();
                        let _ = tls::push(session, &mut conn.socket);
                    }
                    *shut = true;
                    let linger = *linger;
                    if conn.socket.shutdown(std::net::Shutdown::Write).is_err() {
                        self.table.doom(key, "shutdown failed");
                    } else if !linger {
                        self.table.doom(key, "close handshake complete");
                    }
                }
            }
        }
        // Pipelined requests held back while a big reply was unread.
        for key in unpaused {
            self.resume(key);
        }
    }

    fn reap(&mut self) {
        while let Some(key) = self.table.doomed.pop() {
            let Some(mut conn) = self.table.conns.try_remove(key) else {
                continue;
            };
            let _ = self.poll.registry().deregister(&mut conn.socket);
            self.table.input_held -= conn.held as usize;
            sub(&self.table.metrics.connections_open, 1);
            trace!("conn {key}: removed");
            self.end_ws(conn.phase);
        }
    }

    /// SIGHUP: reads the certificates again; new connections use them,
    /// open ones keep theirs. A failed reload keeps the old certificates.
    fn reload_tls(&mut self) {
        if self.listener_tls.iter().all(Option::is_none) {
            return info!("SIGHUP: no TLS listener, nothing to reload");
        }
        match load_tls(&self.hub.fx.config, self.listener_tls.len()) {
            Ok(fresh) => {
                self.listener_tls = fresh;
                info!("SIGHUP: TLS certificates reloaded");
            }
            Err(e) => error!("SIGHUP: TLS certificates not reloaded, keeping the old ones: {e}"),
        }
    }

    fn on_signal(&mut self) {
        let mut got: Vec<i32> = self.signals.pending().collect();
        if got.contains(&SIGHUP) {
            got.retain(|s| *s != SIGHUP);
            self.reload_tls();
        }
        if got.is_empty() {
            return;
        }
        if self.shutdown_at.is_some() {
            info!("second signal: exiting now");
            self.shutdown_at = Some(self.table.now);
            return;
        }
        let grace = self.hub.fx.config.shutdown_grace.as_millis() as Millis;
        info!(
            "signal {}: stopping accepts, closing {} connections (grace {} ms)",
            got[0],
            self.table.conns.len(),
            grace
        );
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.shutdown_at = Some(self.table.now + grace);
        self.systemd.notify(&format!("STOPPING=1\nSTATUS=draining {} connections", self.table.conns.len()));
        let keys: Vec<usize> = self.table.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let conn = &self.table.conns[key];
            match &conn.phase {
                Phase::Http(h) if h.awaiting.is_some() => {
                    // Answer the request in flight (its write may be committing), then close.
                    if let Some(Phase::Http(h)) = self.table.conns.get_mut(key).map(|c| &mut c.phase) {
                        h.awaiting = h.awaiting.map(|(since, _)| (since, false));
                    }
                }
                Phase::Http(_) if conn.out.is_empty() && conn.inbuf.is_empty() => self.table.doom(key, "shutdown"),
                Phase::Http(_) => self.enter_closing(key),
                Phase::Ws(ws) => {
                    let (code, reason) = self.hub.shutdown_close(ws.role);
                    // 4200 makes pusher-js retry at once; without socket activation
                    // no one listens until the next process binds, the retry is
                    // refused and pusher-js then waits out its 15 s attempt timeout.
                    // A back-off code makes it retry after 1 s instead. With
                    // socket activation the retry waits in the kept backlog.
                    let (code, reason) = if code == RECONNECT && !self.activated {
                        (RESTART_BACKOFF, "server restarting; reconnect after back-off")
                    } else {
                        (code, reason)
                    };
                    self.table.close_ws(key, code, reason);
                }
                Phase::Closing { .. } => {}
            }
        }
    }
}
