//! The event loop: one thread, one `mio::Poll`, every socket. It reads into
//! one shared buffer, feeds the pure codecs (`http`, `ws`), hands requests
//! and messages to a [`Service`], and writes what the service queued.
//! Timers, flushing and removal happen after each batch of events, never in
//! the middle of one. It knows nothing of apps: only its [`NetConfig`] and
//! the [`Service`] trait.
//!
//! - `listeners`: binding, socket activation, TLS configuration per listener
//! - `driver`: one connection's input through the codecs to the service
//! - `table`: the connection table, the [`crate::outbox::Outbox`] impl, flush and removal
//! - `conn`: a connection's phase machine; `transport`: TCP or TLS; `out_queue`; `tls`

mod conn;
mod driver;
mod listeners;
mod out_queue;
pub mod service;
mod settings;
mod table;
pub mod tls;
mod transport;

use std::cmp::Reverse;
use std::io::{self, Write};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, info, trace, warn};
use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;

use crate::http::HttpError;
use crate::metrics::{add, Metrics};
use crate::outbox::Outbox;
use crate::systemd::Notifier;
use crate::ws::{close_code, frame, OpCode};

pub use conn::Millis;
use conn::{Conn, Phase, NO_TIMER};
use driver::Driver;
pub use listeners::Listeners;
use listeners::{load_tls, ListenerTls};
pub use service::{Service, WsRole, WsRoute};
pub use settings::{NetConfig, NetLimits, TlsFiles};
use table::Table;
use transport::Transport;

/// Tokens below this are the listeners and the signal source; a connection
/// in slab slot `k` uses `Token(CONN_BASE + k)`.
const CONN_BASE: usize = 8;
/// The signal source (SIGINT/SIGTERM/SIGHUP).
const SIGNALS: Token = Token(4);
/// Woken by worker threads when answers are waiting for the service.
const WAKER: Token = Token(5);
/// Pusher's "reconnect now" close code (4200-4299), sent to Pusher sessions on shutdown.
const RECONNECT: u16 = 4200;
/// Sent instead of [`RECONNECT`] on shutdown when the listeners are not
/// socket-activated: Pusher's 4100-4199 range means "reconnect after a
/// back-off" (pusher-js: 1 s), long enough for a direct restart to bind again.
const RESTART_BACKOFF: u16 = 4199;
/// Pause before accepting again after the process ran out of descriptors.
const ACCEPT_BACKOFF_MS: Millis = 100;

/// The event loop and everything it owns.
pub struct Reactor<S> {
    poll: Poll,
    listeners: Vec<TcpListener>,
    listener_tls: Vec<ListenerTls>,
    signals: Signals,
    driver: Driver<S>,
    config: NetConfig,
    accept_paused_until: Option<Millis>,
    shutdown_at: Option<Millis>,
    started: Instant,
    systemd: Notifier,
    next_watchdog: Option<Millis>,
    /// The listeners came from systemd and stay open across a restart.
    activated: bool,
}

impl<S: Service> Reactor<S> {
    /// Registers the listeners and signal handlers, then builds the service
    /// with the waker its workers use; nothing runs until [`Reactor::run`].
    pub fn new(
        listeners: Listeners,
        config: NetConfig,
        metrics: Rc<Metrics>,
        make_service: impl FnOnce(Arc<Waker>) -> S,
    ) -> io::Result<Reactor<S>> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let service = make_service(waker);
        let mut sockets = listeners.sockets;
        for (i, l) in sockets.iter_mut().enumerate() {
            poll.registry().register(l, Token(i), Interest::READABLE)?;
        }
        let mut signals = Signals::new([SIGINT, SIGTERM, SIGHUP])?;
        poll.registry().register(&mut signals, SIGNALS, Interest::READABLE)?;
        let table = Table::new(config.limits.clone(), metrics);
        Ok(Reactor {
            poll,
            listeners: sockets,
            listener_tls: listeners.tls,
            signals,
            driver: Driver::new(table, service),
            config,
            accept_paused_until: None,
            shutdown_at: None,
            started: Instant::now(),
            systemd: Notifier::from_env(),
            next_watchdog: None,
            activated: listeners.activated,
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
            self.driver.table.now = self.now();
            for event in events.iter() {
                match event.token() {
                    SIGNALS => self.on_signal(),
                    WAKER => self.driver.on_wake(),
                    Token(t) if t < CONN_BASE => self.accept(t),
                    Token(t) => {
                        let key = t - CONN_BASE;
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.driver.on_readable(key);
                        }
                        if event.is_writable() {
                            self.driver.table.mark_dirty(key);
                        }
                    }
                }
            }
            self.driver.read_pending();
            if self.accept_paused_until.is_some_and(|t| t <= self.driver.table.now) {
                self.accept_paused_until = None;
                for i in 0..self.listeners.len() {
                    self.accept(i);
                }
            }
            self.fire_timers();
            self.driver.service.end_of_turn(&mut self.driver.table);
            self.watchdog();
            // Write before sleeping; removals may queue more (a session's
            // departure told to others), so repeat until both lists are empty.
            while self.driver.table.has_work() {
                self.driver.flush();
                while let Some(phase) = self.driver.table.reap_one(self.poll.registry()) {
                    self.driver.end_ws(phase);
                }
            }
            if let Some(at) = self.shutdown_at {
                let open = self.driver.table.conns.len();
                if open == 0 || self.driver.table.now >= at {
                    info!("shutdown complete ({open} connections left)");
                    return Ok(());
                }
            }
        }
    }

    /// The service, once the loop has ended (to finish its workers' writes).
    pub fn into_service(self) -> S {
        self.driver.service
    }

    fn now(&self) -> Millis {
        self.started.elapsed().as_millis() as Millis
    }

    fn poll_timeout(&self) -> Option<Duration> {
        if !self.driver.pending_reads.is_empty() {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        [
            self.driver.table.timers.peek().map(|Reverse((at, _, _))| *at),
            self.accept_paused_until,
            self.shutdown_at,
            self.next_watchdog,
        ]
        .into_iter()
        .flatten()
        .min()
        // +1 so a deadline is past, not just reached, when we wake.
        .map(|at| Duration::from_millis(at.saturating_sub(now) + 1))
        // The service's housekeeping needs turns even when idle.
        .into_iter()
        .chain(self.driver.service.housekeeping_in())
        .min()
    }

    /// Tells systemd's watchdog we are alive, with a status line.
    fn watchdog(&mut self) {
        let (Some(due), Some(every)) = (self.next_watchdog, self.systemd.watchdog_interval) else {
            return;
        };
        let now = self.driver.table.now;
        if due <= now {
            let status = format!(
                "WATCHDOG=1\nSTATUS=serving {} connections, {}",
                self.driver.table.conns.len(),
                self.driver.service.status()
            );
            self.systemd.notify(&status);
            self.next_watchdog = Some(now + every.as_millis() as Millis);
        }
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
                    self.accept_paused_until = Some(self.driver.table.now + ACCEPT_BACKOFF_MS);
                    return;
                }
            }
        }
    }

    fn admit(&mut self, mut socket: TcpStream, addr: SocketAddr, listener: usize) {
        let table = &mut self.driver.table;
        if table.conns.len() >= table.limits.max_connections {
            add(&table.metrics.connections_refused, 1);
            table.metrics.http_error(503);
            let _ = socket.write(&HttpError::Unavailable.response().encode(false));
            return;
        }
        let _ = socket.set_nodelay(true);
        let key = table.conns.vacant_key();
        let token = Token(CONN_BASE + key);
        if let Err(e) = self.poll.registry().register(&mut socket, token, Interest::READABLE | Interest::WRITABLE) {
            warn!("cannot register connection from {addr}: {e}");
            return;
        }
        let transport = match self.listener_tls.get(listener).cloned().flatten().map(rustls::ServerConnection::new) {
            None => Transport::Plain(socket),
            Some(Ok(session)) => Transport::Tls(socket, Box::new(session)),
            Some(Err(e)) => {
                warn!("TLS session for {addr} not created: {e}");
                let _ = self.poll.registry().deregister(&mut socket);
                return;
            }
        };
        let id = table.next_id(key);
        table.conns.insert(Conn::new(transport, id, table.now));
        add(&table.metrics.connections_accepted, 1);
        add(&table.metrics.connections_open, 1);
        trace!("conn {key}: accepted from {addr}");
        table.arm(key);
    }

    fn fire_timers(&mut self) {
        let now = self.driver.table.now;
        while let Some(&Reverse((at, key, gen))) = self.driver.table.timers.peek() {
            if at > now {
                break;
            }
            self.driver.table.timers.pop();
            let key = key as usize;
            let table = &mut self.driver.table;
            let Some(conn) = table.conns.get_mut(key) else {
                continue;
            };
            if conn.id.gen != gen || conn.timer_at != at || conn.doomed {
                continue; // stale entry
            }
            conn.timer_at = NO_TIMER;
            if conn.deadline(&table.limits) <= now {
                self.on_timeout(key);
            }
            self.driver.table.arm(key);
        }
    }

    /// A connection's deadline passed: what it means depends on its phase.
    fn on_timeout(&mut self, key: usize) {
        let Driver { table, service, .. } = &mut self.driver;
        let now = table.now;
        let Some(conn) = table.conns.get_mut(key) else {
            return;
        };
        if conn.stall_deadline(&table.limits).is_some_and(|at| at <= now) {
            let reason = "message stalled";
            return self.driver.refuse_input(key, HttpError::Stalled, close_code::POLICY, reason);
        }
        let last_active = conn.last_active;
        match &mut conn.phase {
            Phase::Http(h) if h.awaiting.is_some() => {
                let id = conn.id;
                h.awaiting = Some((now, false));
                let response = service.answer_timed_out(id);
                table.respond(id, response);
            }
            Phase::Http(h) if h.head_started.is_some() => self.driver.fail_http(key, HttpError::Timeout),
            Phase::Http(_) => table.doom(key, "keep-alive connection idle"),
            Phase::Ws(ws) if ws.closed_by_us.is_some() => table.doom(key, "no close frame from the peer in time"),
            Phase::Ws(ws) => {
                let role = ws.role;
                if ws.ping_sent.is_some_and(|at| last_active < at) {
                    let (code, reason) = service.unresponsive_close(role);
                    return table.close_ws(key, code, reason);
                }
                ws.ping_sent = Some(now);
                let pinged = match role {
                    WsRole::Session(s) => service.ws_idle(s, table),
                    WsRole::Echo | WsRole::Feed(_) | WsRole::Refused => false,
                };
                if !pinged {
                    table.queue(key, frame::encoded(OpCode::Ping, b"").into());
                }
            }
            Phase::Closing { .. } => table.doom(key, "close timeout"),
        }
    }

    /// SIGHUP: reads the certificates again; new connections use them,
    /// open ones keep theirs. A failed reload keeps the old certificates.
    fn reload_tls(&mut self) {
        if self.listener_tls.iter().all(Option::is_none) {
            return info!("SIGHUP: no TLS listener, nothing to reload");
        }
        match load_tls(&self.config, self.listener_tls.len()) {
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
        let now = self.driver.table.now;
        if self.shutdown_at.is_some() {
            info!("second signal: exiting now");
            self.shutdown_at = Some(now);
            return;
        }
        let grace = self.config.shutdown_grace.as_millis() as Millis;
        let open = self.driver.table.conns.len();
        info!("signal {}: stopping accepts, closing {open} connections (grace {grace} ms)", got[0]);
        for mut l in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.shutdown_at = Some(now + grace);
        self.systemd.notify(&format!("STOPPING=1\nSTATUS=draining {open} connections"));
        self.close_all();
    }

    /// Shutdown: answers requests in flight, then closes every connection
    /// (WebSockets with the service's close code).
    fn close_all(&mut self) {
        let keys: Vec<usize> = self.driver.table.conns.iter().map(|(k, _)| k).collect();
        for key in keys {
            let Driver { table, service, .. } = &mut self.driver;
            let Some(conn) = table.conns.get_mut(key) else {
                continue;
            };
            let idle = conn.out.is_empty() && conn.inbuf.is_empty();
            match &mut conn.phase {
                Phase::Http(h) if h.awaiting.is_some() => {
                    // Answer the request in flight (its write may be committing), then close.
                    h.awaiting = h.awaiting.map(|(since, _)| (since, false));
                }
                Phase::Http(_) if idle => table.doom(key, "shutdown"),
                Phase::Http(_) => self.driver.enter_closing(key),
                Phase::Ws(ws) => {
                    let (code, reason) = service.shutdown_close(ws.role);
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
                    table.close_ws(key, code, reason);
                }
                Phase::Closing { .. } => {}
            }
        }
    }
}
