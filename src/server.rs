//! The server: the [`State`] and its [`Effects`], the event loop's one
//! [`Service`].
//! This is the one place that names every layer: it routes HTTP requests to
//! the REST API, WebSocket messages to the protocol rules, store answers and
//! delivery reports to their continuations, and keeps the housekeeping
//! (web hook batches, the incremental channel sweep) at the end of each turn.

use std::rc::Rc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crate::apps::Apps;
use crate::bus::{Bus, Local, Notice};
use crate::channels::SessionKey;
use crate::config::{Config, TlsFiles};
use crate::effects::tap::{FLUSH_EVERY, SNAPSHOT_EVERY};
use crate::effects::Effects;
use crate::http::{HttpError, Request, Response};
use crate::metrics::Metrics;
use crate::net::{NetConfig, NetLimits, Service, WsRole, WsRoute};
use crate::outbox::{ConnId, Outbox};
use crate::protocol::{cluster, code, remote, session};
use crate::state::{Rules, State};
use crate::store::pool::Store;
use crate::store::{SubscriptionRecord, TargetRecord};
use crate::ws::close_code;

/// What start-up read from the store for the state's indexes.
#[derive(Default)]
pub struct Boot {
    /// Highest stored event sequence number.
    pub seq: i64,
    /// Every stored subscription.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Every stored handler target.
    pub targets: Vec<TargetRecord>,
}

/// How often the incremental channel sweep runs, and how many slots it looks at.
const SWEEP_EVERY: Duration = Duration::from_millis(20);
const SWEEP_SLOTS: usize = 512;
const SWEEP_SLOTS_MAX: usize = 65_536;
/// Free memory goes back to the OS after this many channels are freed, at most this often.
const TRIM_AFTER_FREED: usize = 256;
const TRIM_EVERY: Duration = Duration::from_secs(2);
/// How often an idle server wakes for housekeeping while it holds channels.
const HOUSEKEEPING_IDLE: Duration = Duration::from_secs(1);

/// The application behind the event loop.
pub struct Server {
    /// Apps, sessions, channels and indexes.
    pub state: State,
    /// Store, deliveries, bus, web hooks and REST limits.
    pub fx: Effects,
    /// When vacant channels were last swept.
    last_sweep: Instant,
    /// Channels freed by sweeps since free memory was last handed back.
    swept: usize,
    /// When free memory was last handed back to the OS.
    last_trim: Instant,
    /// Cluster: when the presence views are read again after a repair.
    refetch_at: Option<Instant>,
}

impl Server {
    /// A server for this configuration, these apps, this store and what was
    /// read from it; starts the delivery pool.
    pub fn new(config: Config, apps: Apps, metrics: Rc<Metrics>, store: Store, boot: Boot) -> Server {
        Server::with_bus(config, apps, metrics, store, boot, Box::new(Local), 0)
    }

    /// A server whose cross-session effects also go to other nodes through
    /// `bus`; `socket_prefix` keeps its socket ids apart from theirs.
    pub fn with_bus(
        config: Config,
        apps: Apps,
        metrics: Rc<Metrics>,
        store: Store,
        boot: Boot,
        bus: Box<dyn Bus>,
        socket_prefix: u32,
    ) -> Server {
        let mut rules = Rules::of(&config);
        rules.socket_prefix = socket_prefix;
        let mut state = State::new(rules, apps);
        state.seq = boot.seq;
        for sub in &boot.subscriptions {
            if let Some(app) = state.apps.by_id(&sub.app) {
                state.pushi.add_alias(app, sub);
            }
        }
        for t in boot.targets.iter().filter(|t| crate::deliver::TargetKind::of(&t.kind).is_some()) {
            if let Some(app) = state.apps.by_id(&t.app) {
                state.pushi.add_target(app, t);
            }
        }
        let fx = Effects::new(config, metrics, store, bus);
        if fx.bus.listens() {
            // A cluster: local subscriber counts go to the registry each turn.
            state.channels.track_occupancy();
        }
        Server { state, fx, last_sweep: Instant::now(), swept: 0, last_trim: Instant::now(), refetch_at: None }
    }

    /// Lets the store finish its queued writes (bounded by `grace`) at exit.
    pub fn close_store(self, grace: Duration) {
        self.fx.store.close(grace);
    }
}

/// The loop's settings: listeners, certificates, limits, shutdown grace.
pub fn net_config(config: &Config) -> NetConfig {
    let tls =
        |t: &Option<TlsFiles>| t.as_ref().map(|f| crate::net::TlsFiles { cert: f.cert.clone(), key: f.key.clone() });
    let l = &config.limits;
    NetConfig {
        ws_addr: config.server_addr,
        api_addr: config.app_addr,
        ws_tls: tls(&config.server_tls),
        api_tls: tls(&config.app_tls),
        limits: NetLimits {
            max_head_bytes: l.max_head_bytes,
            max_body_bytes: l.max_body_bytes,
            max_message_bytes: l.max_message_bytes,
            write_high_water: l.write_high_water,
            input_budget: l.input_budget,
            input_stall_timeout: l.input_stall_timeout,
            max_connections: l.max_connections,
            handshake_timeout: l.handshake_timeout,
            keepalive_timeout: l.keepalive_timeout,
            activity_timeout: l.activity_timeout,
            pong_timeout: l.pong_timeout,
            close_timeout: l.close_timeout,
            answer_timeout: l.store_timeout,
        },
        shutdown_grace: config.shutdown_grace,
        reuse_port: config.reuse_port,
    }
}

impl Service for Server {
    /// Answers an HTTP request (not an upgrade); None when the answer comes
    /// later through [`Outbox::respond`] (it waits for the store).
    fn http(&mut self, req: &Request, from: ConnId, out: &mut dyn Outbox) -> Option<Response> {
        crate::api::dispatch(&mut self.state, &mut self.fx, req, from, out)
    }

    /// Chooses the endpoint for an upgrade.
    fn ws_route(&self, req: &Request) -> Result<WsRoute, HttpError> {
        let path = req.path();
        if self.fx.config.echo_path.as_deref() == Some(path) {
            return Ok(WsRoute::Echo);
        }
        if path == "/console/feed" {
            let grant = crate::api::console::feed_grant(&self.state, &self.fx, req)?;
            return Ok(WsRoute::Feed { grant });
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        Ok(match segments.as_slice() {
            ["app", key] if !key.is_empty() => {
                WsRoute::Pusher { key: key.to_string(), protocol: req.query_param("protocol"), pushi: false }
            }
            [key] if !key.is_empty() => {
                WsRoute::Pusher { key: key.to_string(), protocol: Some("7".to_string()), pushi: true }
            }
            _ => WsRoute::NotFound,
        })
    }

    /// Called right after the 101 is queued; may queue the first frames.
    fn ws_open(&mut self, route: WsRoute, conn: ConnId, out: &mut dyn Outbox) -> WsRole {
        match route {
            WsRoute::Echo => WsRole::Echo,
            WsRoute::Pusher { key, protocol, pushi } => {
                match session::open(&mut self.state, &mut self.fx, conn, &key, protocol.as_deref(), pushi, out) {
                    Some(session) => {
                        if let Some(s) = self.state.sessions.get(session) {
                            let (app, socket_id) = (s.app, &s.socket_id);
                            crate::protocol::observe(
                                &self.state,
                                &mut self.fx,
                                app,
                                || serde_json::json!({ "name": "connection", "socket_id": socket_id }),
                            );
                        }
                        WsRole::Session(session.0)
                    }
                    None => WsRole::Refused,
                }
            }
            WsRoute::Feed { grant } => match crate::api::console::feed_open(&mut self.fx, &grant, conn) {
                Some(feed) => WsRole::Feed(feed),
                None => {
                    out.close(conn, close_code::TRY_AGAIN_LATER, "too many console feeds open");
                    WsRole::Refused
                }
            },
            WsRoute::NotFound => {
                out.close(conn, code::PATH_NOT_FOUND, "Path not found");
                WsRole::Refused
            }
        }
    }

    /// A text message for a session.
    fn ws_text(&mut self, session: u32, text: &str, out: &mut dyn Outbox) {
        session::message(&mut self.state, &mut self.fx, SessionKey(session), text, out);
    }

    /// The session has been silent for the activity timeout: ping it.
    /// Returns false when the loop should send a WebSocket ping instead.
    fn ws_idle(&mut self, session: u32, out: &mut dyn Outbox) -> bool {
        session::ping(&self.state, SessionKey(session), out)
    }

    /// The session's connection is gone (closed, failed or cut).
    fn ws_closed(&mut self, session: u32, out: &mut dyn Outbox) {
        session::closed(&mut self.state, &mut self.fx, SessionKey(session), out);
    }

    /// A console feed's connection is gone.
    fn feed_closed(&mut self, feed: u32) {
        self.fx.tap.close(feed);
    }

    /// The close code and reason for a connection that did not answer a ping.
    fn unresponsive_close(&self, role: WsRole) -> (u16, &'static str) {
        match role {
            WsRole::Echo | WsRole::Feed(_) | WsRole::Refused => (close_code::GOING_AWAY, "no pong received"),
            WsRole::Session(_) => (code::PONG_TIMEOUT, "Pong reply not received"),
        }
    }

    /// The close code and reason sent to open WebSockets on shutdown.
    fn shutdown_close(&self, role: WsRole) -> (u16, &'static str) {
        match role {
            WsRole::Echo | WsRole::Feed(_) | WsRole::Refused => (close_code::GOING_AWAY, "server shutting down"),
            // Pusher clients reconnect at once on 4200 (to another server, or to us after restart).
            WsRole::Session(_) => (code::RECONNECT, "server shutting down"),
        }
    }

    /// The waker fired: store answers, delivery reports and messages from
    /// other nodes are handled. Late answers to allowed cross-origin requests
    /// get their CORS headers on the way out.
    fn on_wake(&mut self, out: &mut dyn Outbox) {
        for message in self.fx.bus.received(&self.state.apps) {
            remote::apply_remote(&mut self.state, &mut self.fx, &message, out);
        }
        for notice in self.fx.bus.notices(&self.state.apps) {
            match notice {
                Notice::Answer(ticket, answer) => self.fx.registry_answered(&mut self.state, ticket, answer, out),
                Notice::Hook(app, event) => crate::protocol::hook(&self.state, &mut self.fx, app, || event),
                Notice::Resync => {
                    cluster::resync(&mut self.state, &mut self.fx);
                    self.refetch_at = Some(Instant::now() + cluster::REFETCH_AFTER);
                }
            }
        }
        if self.fx.cors_pending.is_empty() {
            return self.fx.on_wake(&mut self.state, out);
        }
        let mut pending = std::mem::take(&mut self.fx.cors_pending);
        self.fx.on_wake(&mut self.state, &mut crate::api::CorsOutbox { inner: out, pending: &mut pending });
        self.fx.cors_pending = pending;
    }

    /// End of a reactor turn: hand this turn's web hook events to the
    /// workers, and free a few vacant channels whose cache expired (more
    /// after a quiet spell: the budget grows with the time since the last sweep).
    fn end_of_turn(&mut self, out: &mut dyn Outbox) {
        self.fx.end_of_turn(&self.state);
        if self.fx.bus.listens() {
            cluster::flush_occupancy(&mut self.state, &mut self.fx);
            if self.refetch_at.is_some_and(|at| Instant::now() >= at) {
                self.refetch_at = None;
                cluster::refetch(&mut self.state, &mut self.fx);
            }
        }
        self.fx.bus.flush(&self.state.apps);
        crate::api::console::end_of_turn(&self.state, &mut self.fx, out);
        let since = self.last_sweep.elapsed();
        let channels = &mut self.state.channels;
        if !channels.is_empty() && since >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            let budget = SWEEP_SLOTS * (since.as_millis() / SWEEP_EVERY.as_millis()).max(1) as usize;
            self.swept += channels.sweep_some(self.state.rules.cache_ttl, budget.min(SWEEP_SLOTS_MAX));
            // After much churn, hand the freed heap pages back to the OS (the
            // allocator keeps them otherwise, and RSS never comes down).
            if self.swept >= TRIM_AFTER_FREED && self.last_trim.elapsed() >= TRIM_EVERY {
                self.swept = 0;
                self.last_trim = Instant::now();
                crate::support::memory::release_free_memory();
            }
        }
    }

    /// When the loop should give the server a turn even if nothing happens
    /// (idle housekeeping); None when there is nothing to keep.
    fn housekeeping_in(&self) -> Option<Duration> {
        let tap = &self.fx.tap;
        if tap.is_open() {
            // Open consoles get their events and snapshots on time.
            let next = if tap.has_pending() { FLUSH_EVERY } else { SNAPSHOT_EVERY };
            return Some(next);
        }
        if let Some(at) = self.refetch_at {
            return Some(at.saturating_duration_since(Instant::now()).min(HOUSEKEEPING_IDLE));
        }
        (!self.state.channels.is_empty()).then_some(HOUSEKEEPING_IDLE)
    }

    fn answer_timed_out(&mut self, conn: ConnId) -> Response {
        log::warn!("conn {}: the store did not answer in time; 504", conn.key);
        Response::error(504, "the store did not answer in time; a write stays queued and is retried")
    }

    fn status(&self) -> String {
        let degraded = self.fx.store.health.degraded.load(Ordering::Relaxed);
        format!(
            "{} sessions{}",
            self.state.sessions.len(),
            if degraded { "; store degraded, writes retried" } else { "" }
        )
    }
}
