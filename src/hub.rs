//! The application state the reactor drives: apps, Pusher sessions, the
//! channel table and metrics. The reactor hands it requests and messages; it
//! answers through return values and the [`Outbox`], never by touching
//! sockets. The protocol rules live in `protocol`, the REST routes in `api`.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use slab::Slab;

use crate::apps::{AppIndex, Apps};
use crate::channels::{Channels, Session};
use crate::config::Config;
use crate::handlers::Handlers;
use crate::http::{HttpError, Request, Response};
use crate::metrics::Metrics;
use crate::outbox::{ConnId, Outbox};
use crate::protocol::code;
use crate::store::pool::{Answer, Op, QueueFull, Store};
use crate::store::{SubscriptionRecord, TargetRecord};
use crate::webhook::Webhooks;
use crate::ws::close_code;

/// Which endpoint a WebSocket upgrade asked for, decided before the 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsRoute {
    /// The conformance echo endpoint (`PUSHI_ECHO_PATH`).
    Echo,
    /// Pusher's `/app/<key>?protocol=N`, or Pushi's `/<key>` (protocol 7 implied).
    Pusher {
        /// App key from the path.
        key: String,
        /// `protocol` query parameter.
        protocol: Option<String>,
        /// Pushi's URL form: the session gets Pushi's extra replies.
        pushi: bool,
    },
    /// Any other path: upgraded, then closed with 4005 as Pusher clients expect.
    NotFound,
}

/// What an open WebSocket is attached to; kept by the reactor's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRole {
    /// Echoes every message back (testing aid).
    Echo,
    /// A Pusher session held by the hub under this key.
    Session(u32),
    /// Refused at open; closing.
    Refused,
}

/// Application state owned by the reactor thread.
pub struct Hub {
    /// The configuration the server started with.
    pub config: Config,
    /// Counters shared with the reactor.
    pub metrics: Rc<Metrics>,
    /// Every app.
    pub apps: Apps,
    /// Open Pusher sessions.
    pub sessions: Slab<Session>,
    /// Channels of every app.
    pub channels: Channels,
    /// Sessions signed in as each user, per app.
    pub users: HashMap<(AppIndex, String), Vec<u32>>,
    /// Sessions watching each user (sign-in watchlists), per app.
    pub watchers: HashMap<(AppIndex, String), Vec<u32>>,
    /// Open sessions per app (for per-app connection quotas).
    pub app_connections: Vec<usize>,
    /// Socket-id generator state.
    pub rng: u64,
    /// When the hub started (rate windows).
    pub started: Instant,
    /// Web hook batches collected this turn, sent by workers.
    pub webhooks: Webhooks,
    /// The store's worker pool.
    pub store: Store,
    /// Pushi's delivery handlers (e-mail, Web Push, APNs, direct sends), on worker threads.
    pub handlers: Handlers,
    /// Continuations waiting for store answers, by ticket.
    pending: Slab<Then>,
    /// Last event sequence number handed out (continues the stored maximum).
    pub seq: i64,
    /// Pushi's personal channels: aliases, subscribed sockets, REST logins, web targets.
    pub pushi: PushiState,
    /// Per app: REST call tokens left and when they were last refilled.
    api_buckets: Vec<(f64, Instant)>,
    /// REST requests from allowed CORS origins waiting for the store: connection → origin.
    pub cors_pending: HashMap<ConnId, String>,
}

/// What runs when the store answers: it may queue frames or answer an HTTP request.
pub type Then = Box<dyn FnOnce(&mut Hub, Answer, &mut dyn Outbox)>;

/// In-memory indexes of Pushi's stored state, kept in step with the store.
#[derive(Default)]
pub struct PushiState {
    /// `(app, user_id)` → channels aggregated by `personal-<user_id>`.
    pub aliases: HashMap<(AppIndex, String), Vec<String>>,
    /// `(app, channel)` → users subscribed to it (who get an association per persisted event).
    pub alias_users: HashMap<(AppIndex, String), Vec<String>>,
    /// `(app, user_id)` → sessions subscribed to `personal-<user_id>`.
    pub personal_sessions: HashMap<(AppIndex, String), Vec<u32>>,
    /// `(app, channel)` → handler targets receiving its events (`/webs`, `/smtps`, `/apns`, `/web_pushes`).
    pub targets: HashMap<(AppIndex, String), Vec<TargetRecord>>,
    /// REST session tokens (`/login`) → app and last use.
    pub logins: HashMap<String, (AppIndex, Instant)>,
}

impl PushiState {
    /// Registers a stored subscription in the alias maps; false if already known.
    pub fn add_alias(&mut self, app: AppIndex, sub: &SubscriptionRecord) -> bool {
        let channels = self.aliases.entry((app, sub.user_id.clone())).or_default();
        if channels.contains(&sub.event) {
            return false;
        }
        channels.push(sub.event.clone());
        self.alias_users.entry((app, sub.event.clone())).or_default().push(sub.user_id.clone());
        true
    }

    /// Forgets a removed subscription; false if it was not known.
    pub fn remove_alias(&mut self, app: AppIndex, user_id: &str, channel: &str) -> bool {
        let key = (app, user_id.to_string());
        let Some(channels) = self.aliases.get_mut(&key) else { return false };
        let before = channels.len();
        channels.retain(|c| c != channel);
        let removed = channels.len() != before;
        if channels.is_empty() {
            self.aliases.remove(&key);
        }
        let ukey = (app, channel.to_string());
        if let Some(users) = self.alias_users.get_mut(&ukey) {
            users.retain(|u| u != user_id);
            if users.is_empty() {
                self.alias_users.remove(&ukey);
            }
        }
        removed
    }

    /// Registers a handler target; false if already known.
    pub fn add_target(&mut self, app: AppIndex, t: &TargetRecord) -> bool {
        let list = self.targets.entry((app, t.event.clone())).or_default();
        if list.iter().any(|x| x.kind == t.kind && x.target == t.target) {
            return false;
        }
        list.push(t.clone());
        true
    }

    /// Forgets a removed handler target.
    pub fn remove_target(&mut self, app: AppIndex, t: &TargetRecord) {
        let key = (app, t.event.clone());
        if let Some(list) = self.targets.get_mut(&key) {
            list.retain(|x| !(x.kind == t.kind && x.target == t.target));
            if list.is_empty() {
                self.targets.remove(&key);
            }
        }
    }

    /// Forgets a target on every channel (the remote reported it gone).
    pub fn remove_target_everywhere(&mut self, app: AppIndex, kind: &str, target: &str) {
        self.targets.retain(|(a, _), list| {
            if *a == app {
                list.retain(|x| !(x.kind == kind && x.target == target));
            }
            !list.is_empty()
        });
    }
}

/// What start-up read from the store for the hub's indexes.
#[derive(Default)]
pub struct Boot {
    /// Highest stored event sequence number.
    pub seq: i64,
    /// Every stored subscription.
    pub subscriptions: Vec<SubscriptionRecord>,
    /// Every stored handler target.
    pub targets: Vec<TargetRecord>,
}

impl Hub {
    /// A hub for this configuration, these apps, this store and what was read from it.
    pub fn new(config: Config, apps: Apps, metrics: Rc<Metrics>, store: Store, boot: Boot) -> Hub {
        let app_connections = vec![0; apps.len()];
        let mut pushi = PushiState::default();
        for sub in &boot.subscriptions {
            if let Some(app) = apps.by_id(&sub.app) {
                pushi.add_alias(app, sub);
            }
        }
        for t in boot.targets.iter().filter(|t| crate::handlers::Kind::of(&t.kind).is_some()) {
            if let Some(app) = apps.by_id(&t.app) {
                pushi.add_target(app, t);
            }
        }
        let handlers = Handlers::start(config.handlers.clone(), store.waker());
        Hub {
            config,
            metrics,
            apps,
            sessions: Slab::new(),
            channels: Channels::default(),
            users: HashMap::new(),
            watchers: HashMap::new(),
            app_connections,
            rng: crate::apps::random_u64() | 1,
            started: Instant::now(),
            webhooks: Webhooks::start(),
            store,
            handlers,
            pending: Slab::new(),
            seq: boot.seq,
            pushi,
            api_buckets: Vec::new(),
            cors_pending: HashMap::new(),
        }
    }

    /// Takes one REST call from the app's budget (`PUSHI_API_RATE` per
    /// second, bursts up to one second's worth); 429 when it is spent.
    pub fn api_allowed(&mut self, app: AppIndex) -> Result<(), Response> {
        let rate = self.config.limits.api_rate as f64;
        if rate == 0.0 {
            return Ok(());
        }
        let i = app as usize;
        if self.api_buckets.len() <= i {
            self.api_buckets.resize(i + 1, (rate, Instant::now()));
        }
        let (tokens, at) = &mut self.api_buckets[i];
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens < 1.0 {
            crate::metrics::add(&self.metrics.api_rate_limited, 1);
            let mut r = Response::error(429, "too many API calls for this app; slow down (PUSHI_API_RATE)");
            r.headers.push(("Retry-After", "1".to_string()));
            return Err(r);
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// Submits a store op whose answer is handed to `then` on the reactor.
    pub fn store_then(&mut self, app: AppIndex, op: Op, then: Then) -> Result<(), QueueFull> {
        let ticket = self.pending.insert(then) as u32;
        let submitted = self.store.submit(app, Some(ticket), op);
        if submitted.is_err() {
            drop(self.pending.remove(ticket as usize));
        }
        submitted
    }

    /// Submits a store op for an HTTP request: the response is built by
    /// `then` from the answer. Returns None (answered later), or 503 now
    /// when the store's queue is full.
    pub fn store_http(
        &mut self,
        app: AppIndex,
        from: ConnId,
        op: Op,
        then: impl FnOnce(&mut Hub, Answer, &mut dyn Outbox) -> Response + 'static,
    ) -> Option<Response> {
        let wrapped: Then = Box::new(move |hub, answer, out| {
            let response = then(hub, answer, out);
            out.respond(from, response);
        });
        match self.store_then(app, op, wrapped) {
            Ok(()) => None,
            Err(QueueFull) => Some(store_busy()),
        }
    }

    /// Runs the continuations of every answer that has arrived.
    pub fn on_store_answers(&mut self, out: &mut dyn Outbox) {
        if !self.cors_pending.is_empty() {
            // Late answers to allowed cross-origin requests get their CORS headers.
            let mut pending = std::mem::take(&mut self.cors_pending);
            self.run_store_answers(&mut crate::api::CorsOutbox { inner: out, pending: &mut pending });
            self.cors_pending = pending;
            return;
        }
        self.run_store_answers(out);
    }

    fn run_store_answers(&mut self, out: &mut dyn Outbox) {
        let answers: Vec<_> = self.store.answers().collect();
        for (ticket, answer) in answers {
            if let Some(then) = ticket.and_then(|t| self.pending.try_remove(t as usize)) {
                then(self, answer, out);
            }
        }
        self.on_handler_reports(out);
    }

    /// Lets the store finish its queued writes (bounded by `grace`) at exit.
    pub fn close_store(self, grace: std::time::Duration) {
        self.store.close(grace);
    }

    /// Adds an app at run time (REST `POST /apps`).
    pub fn add_app(&mut self, app: crate::apps::App) -> Result<AppIndex, String> {
        let index = self.apps.insert(app)?;
        self.app_connections.push(0);
        Ok(index)
    }

    /// End of a reactor turn: hand this turn's web hook events to the workers.
    pub fn end_of_turn(&mut self) {
        self.webhooks.flush(&self.apps);
    }

    /// Answers an HTTP request (not an upgrade); None when the answer comes
    /// later through [`Outbox::respond`] (it waits for the store).
    pub fn http(&mut self, req: &Request, from: ConnId, out: &mut dyn Outbox) -> Option<Response> {
        crate::api::dispatch(self, req, from, out)
    }

    /// Chooses the endpoint for an upgrade.
    pub fn ws_route(&self, req: &Request) -> Result<WsRoute, HttpError> {
        let path = req.path();
        if self.config.echo_path.as_deref() == Some(path) {
            return Ok(WsRoute::Echo);
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let key = match segments.as_slice() {
            ["app", key] if !key.is_empty() => Some((key.to_string(), req.query_param("protocol"), false)),
            [key] if !key.is_empty() => Some((key.to_string(), Some("7".to_string()), true)),
            _ => None,
        };
        Ok(match key {
            Some((key, protocol, pushi)) => WsRoute::Pusher { key, protocol, pushi },
            None => WsRoute::NotFound,
        })
    }

    /// Called right after the 101 is queued; may queue the first frames.
    pub fn ws_open(&mut self, route: WsRoute, conn: ConnId, out: &mut dyn Outbox) -> WsRole {
        match route {
            WsRoute::Echo => WsRole::Echo,
            WsRoute::Pusher { key, protocol, pushi } => {
                match self.pusher_open(conn, &key, protocol.as_deref(), pushi, out) {
                    Some(session) => WsRole::Session(session),
                    None => WsRole::Refused,
                }
            }
            WsRoute::NotFound => {
                out.close(conn, code::PATH_NOT_FOUND, "Path not found");
                WsRole::Refused
            }
        }
    }

    /// A text message for a session.
    pub fn ws_text(&mut self, session: u32, text: &str, out: &mut dyn Outbox) {
        self.pusher_message(session, text, out);
    }

    /// The session has been silent for the activity timeout: ping it.
    /// Returns false when the reactor should send a WebSocket ping instead.
    pub fn ws_idle(&mut self, session: u32, out: &mut dyn Outbox) -> bool {
        if self.sessions[session as usize].pushi {
            // Pushi's clients never answer `pusher:ping` (and fail on a message
            // without a channel); browsers answer WebSocket pings by themselves.
            return false;
        }
        self.pusher_ping(session, out);
        true
    }

    /// The session's connection is gone (closed, failed or cut).
    pub fn ws_closed(&mut self, session: u32, out: &mut dyn Outbox) {
        self.pusher_closed(session, out);
    }

    /// The close code and reason for a connection that did not answer a ping.
    pub fn unresponsive_close(&self, role: WsRole) -> (u16, &'static str) {
        match role {
            WsRole::Echo | WsRole::Refused => (close_code::GOING_AWAY, "no pong received"),
            WsRole::Session(_) => (code::PONG_TIMEOUT, "Pong reply not received"),
        }
    }

    /// The close code and reason sent to open WebSockets on shutdown.
    pub fn shutdown_close(&self, role: WsRole) -> (u16, &'static str) {
        match role {
            WsRole::Echo | WsRole::Refused => (close_code::GOING_AWAY, "server shutting down"),
            // Pusher clients reconnect at once on 4200 (to another server, or to us after restart).
            WsRole::Session(_) => (code::RECONNECT, "server shutting down"),
        }
    }
}

/// The store's queue is full: nothing was accepted, the client may retry.
pub fn store_busy() -> Response {
    let mut r = Response::error(503, "the store is busy; nothing was accepted, retry shortly");
    r.headers.push(("Retry-After", "1".to_string()));
    r
}
