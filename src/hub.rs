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
use crate::deliver::{Deliveries, WebhookBatches};
use crate::http::{HttpError, Request, Response};
use crate::metrics::Metrics;
use crate::outbox::{ConnId, Outbox};
use crate::protocol::code;
use crate::store::pool::{Op, QueueFull, Store, StoreReply};
use crate::store::{SubscriptionRecord, TargetRecord};
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
    /// When the hub started (rate windows).
    pub started: Instant,
    /// Web hook batches collected this turn, sent by workers.
    pub webhooks: WebhookBatches,
    /// The store's worker pool.
    pub store: Store,
    /// Pushi's delivery handlers (e-mail, Web Push, APNs, direct sends), on worker threads.
    pub handlers: Deliveries,
    /// Direct sends (`/messaging/*`) waiting for their delivery results.
    pub(crate) direct_sends: crate::hub_deliveries::DirectSends,
    /// Continuations waiting for store answers, by ticket.
    pending: Slab<Then>,
    /// Last event sequence number handed out (continues the stored maximum).
    pub seq: i64,
    /// Pushi's personal channels: aliases, subscribed sockets, REST logins, web targets.
    pub pushi: PushiState,
    /// Per app: REST call tokens left and when they were last refilled.
    api_buckets: Vec<(f64, Instant)>,
    /// When vacant channels were last swept.
    last_sweep: Instant,
    /// Channels freed by sweeps since free memory was last handed back.
    swept: usize,
    /// When free memory was last handed back to the OS.
    last_trim: Instant,
    /// Apps created without the admin token (`PUSHI_APP_CREATION_RATE`).
    pub app_creation_bucket: crate::support::rate::TokenBucket,
    /// REST requests from allowed CORS origins waiting for the store: connection → origin.
    pub cors_pending: HashMap<ConnId, String>,
}

/// How often the incremental channel sweep runs, and how many slots it looks at.
const SWEEP_EVERY: std::time::Duration = std::time::Duration::from_millis(20);
const SWEEP_SLOTS: usize = 512;
const SWEEP_SLOTS_MAX: usize = 65_536;
/// Free memory goes back to the OS after this many channels are freed, at most this often.
const TRIM_AFTER_FREED: usize = 256;
const TRIM_EVERY: std::time::Duration = std::time::Duration::from_secs(2);
/// How often an idle server wakes for housekeeping while it holds channels.
const HOUSEKEEPING_IDLE: std::time::Duration = std::time::Duration::from_secs(1);

/// What runs when the store answers: it may queue frames or answer an HTTP request.
pub type Then = Box<dyn FnOnce(&mut Hub, StoreReply, &mut dyn Outbox)>;

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
    /// Session tokens per app (to cap them per app).
    pub logins_per_app: HashMap<AppIndex, usize>,
    /// `/login` attempts per client address and per app id.
    pub login_buckets: HashMap<LoginKey, crate::support::rate::TokenBucket>,
}

/// What a `/login` attempt is counted against.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LoginKey {
    /// The client's IP address.
    Address(std::net::IpAddr),
    /// The app id named in the attempt.
    App(String),
}

/// Most `/login` rate buckets remembered; full ones are forgotten first.
const MAX_LOGIN_BUCKETS: usize = 10_000;

impl PushiState {
    /// Counts a `/login` attempt against its address and app id; the error is
    /// the number of seconds to wait.
    pub fn login_allowed(&mut self, peer: Option<std::net::IpAddr>, app_id: &str, rate: f64) -> Result<(), u64> {
        use crate::api::pushi::{LOGIN_APP_FACTOR, LOGIN_BURST_PER_ADDRESS};
        if rate <= 0.0 {
            return Ok(());
        }
        let (app_rate, app_burst) = (rate * LOGIN_APP_FACTOR, LOGIN_BURST_PER_ADDRESS * LOGIN_APP_FACTOR);
        if self.login_buckets.len() >= MAX_LOGIN_BUCKETS {
            self.login_buckets.retain(|k, b| match k {
                LoginKey::Address(_) => !b.is_full(rate, LOGIN_BURST_PER_ADDRESS),
                LoginKey::App(_) => !b.is_full(app_rate, app_burst),
            });
        }
        let mut keys = vec![(LoginKey::App(app_id.chars().take(200).collect()), app_rate, app_burst)];
        if let Some(ip) = peer {
            keys.push((LoginKey::Address(ip), rate, LOGIN_BURST_PER_ADDRESS));
        }
        for (key, rate, burst) in keys {
            let bucket =
                self.login_buckets.entry(key).or_insert_with(|| crate::support::rate::TokenBucket::full(burst));
            if !bucket.take(rate, burst) {
                return Err(bucket.retry_after(rate));
            }
        }
        Ok(())
    }

    /// Records a new session token; past the app's cap its own least
    /// recently used token goes (never another app's).
    pub fn add_login(&mut self, app: AppIndex, token: String) {
        use crate::api::pushi::{LOGIN_TTL, MAX_LOGINS_PER_APP};
        let count = self.logins_per_app.entry(app).or_default();
        if *count >= MAX_LOGINS_PER_APP {
            let before = self.logins.len();
            self.logins.retain(|_, (a, used)| *a != app || used.elapsed() < LOGIN_TTL);
            *count -= before - self.logins.len();
            if *count >= MAX_LOGINS_PER_APP {
                let oldest = self.logins.iter().filter(|(_, (a, _))| *a == app).min_by_key(|(_, (_, used))| *used);
                if let Some(k) = oldest.map(|(k, _)| k.clone()) {
                    self.logins.remove(&k);
                    *count -= 1;
                }
            }
        }
        *count += 1;
        self.logins.insert(token, (app, Instant::now()));
    }

    /// Forgets a session token (logout, expiry).
    pub fn remove_login(&mut self, token: &str) {
        if let Some((app, _)) = self.logins.remove(token) {
            if let Some(n) = self.logins_per_app.get_mut(&app) {
                *n = n.saturating_sub(1);
            }
        }
    }

    /// Forgets every session token of an app (it was deleted).
    pub fn remove_logins_of(&mut self, app: AppIndex) {
        self.logins.retain(|_, (a, _)| *a != app);
        self.logins_per_app.remove(&app);
    }

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
        for t in boot.targets.iter().filter(|t| crate::deliver::TargetKind::of(&t.kind).is_some()) {
            if let Some(app) = apps.by_id(&t.app) {
                pushi.add_target(app, t);
            }
        }
        let handlers = Deliveries::start(config.handlers.clone(), store.waker());
        let config_creation_burst = (config.app_creation_rate as f64).max(1.0);
        Hub {
            config,
            metrics,
            apps,
            sessions: Slab::new(),
            channels: Channels::default(),
            users: HashMap::new(),
            watchers: HashMap::new(),
            app_connections,
            started: Instant::now(),
            webhooks: WebhookBatches::new(handlers.queue(), handlers.stats.pusher.clone()),
            store,
            handlers,
            direct_sends: Default::default(),
            pending: Slab::new(),
            seq: boot.seq,
            pushi,
            api_buckets: Vec::new(),
            last_sweep: Instant::now(),
            swept: 0,
            last_trim: Instant::now(),
            app_creation_bucket: crate::support::rate::TokenBucket::full(config_creation_burst),
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
        then: impl FnOnce(&mut Hub, StoreReply, &mut dyn Outbox) -> Response + 'static,
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
        if self.app_connections.len() <= index as usize {
            self.app_connections.resize(index as usize + 1, 0);
        }
        Ok(index)
    }

    /// Removes an app at run time (REST `DELETE /apps/<id>`): its key and id
    /// stop resolving, its sockets are closed (4003) and its logins dropped.
    /// The slot stays as a tombstone so indexes held elsewhere stay valid.
    pub fn remove_app(&mut self, app: AppIndex, out: &mut dyn Outbox) {
        self.apps.remove(app);
        self.pushi.remove_logins_of(app);
        let conns: Vec<ConnId> = self.sessions.iter().filter(|(_, s)| s.app == app).map(|(_, s)| s.conn).collect();
        for conn in conns {
            out.close(conn, code::APP_DISABLED, "App deleted");
        }
    }

    /// End of a reactor turn: hand this turn's web hook events to the workers.
    pub fn end_of_turn(&mut self) {
        self.webhooks.flush(&self.apps);
        // Vacant channels whose cache expired are freed a few slots at a time
        // (more after a quiet spell: the budget grows with the time since the last sweep).
        let since = self.last_sweep.elapsed();
        if !self.channels.is_empty() && since >= SWEEP_EVERY {
            self.last_sweep = Instant::now();
            let budget = SWEEP_SLOTS * (since.as_millis() / SWEEP_EVERY.as_millis()).max(1) as usize;
            self.swept += self.channels.sweep_some(self.config.cache_ttl, budget.min(SWEEP_SLOTS_MAX));
            // After much churn, hand the freed heap pages back to the OS (the
            // allocator keeps them otherwise, and RSS never comes down).
            if self.swept >= TRIM_AFTER_FREED && self.last_trim.elapsed() >= TRIM_EVERY {
                self.swept = 0;
                self.last_trim = Instant::now();
                crate::support::memory::release_free_memory();
            }
        }
    }

    /// When the loop should give the hub a turn even if nothing happens
    /// (idle housekeeping); None when there is nothing to keep.
    pub fn housekeeping_in(&self) -> Option<std::time::Duration> {
        (!self.channels.is_empty()).then_some(HOUSEKEEPING_IDLE)
    }

    /// The channel of a `cache-` publish, created (vacant, to hold the cached
    /// event) only while the app is under `PUSHI_MAX_CACHE_CHANNELS`; beyond
    /// it the event reaches the channel's subscribers (none) and is not cached.
    pub fn cache_channel(&mut self, app: AppIndex, channel: &str) -> Option<u32> {
        if let Some(key) = self.channels.find(app, channel) {
            return Some(key);
        }
        if self.channels.cached_count(app) >= self.config.max_cache_channels {
            log::debug!("app {app}: not caching {channel}: PUSHI_MAX_CACHE_CHANNELS reached");
            return None;
        }
        Some(self.channels.find_or_create(app, channel))
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
