//! Effects: the server's handles on the world beyond the reactor thread's
//! state (the store's worker pool, the delivery pool, the bus, web hook
//! batches) and the limits kept at the REST port. It implements
//! [`Ports`], so the protocol rules reach all of it through one interface;
//! the REST API and the server use it directly.

pub mod console_sessions;
pub mod deliveries;
pub mod tap;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use serde_json::Value;
use slab::Slab;

use crate::apps::{App, AppIndex};
use crate::bus::Bus;
use crate::config::Config;
use crate::deliver::Deliveries;
use crate::deliver::WebhookBatches;
use crate::http::Response;
use crate::metrics::Metrics;
use crate::outbox::{ConnId, Outbox};
use crate::ports::{BusMessage, Ports, RegistryOp, RegistryReply, RegistryThen, Then};
use crate::state::State;
use crate::store::pool::{Op, QueueFull, Store, StoreReply};
use crate::store::TargetRecord;
use crate::support::rate::TokenBucket;

/// Everything the server holds besides the [`State`].
pub struct Effects {
    /// The configuration the server started with.
    pub config: Config,
    /// Counters shared with the event loop.
    pub metrics: Rc<Metrics>,
    /// The store's worker pool.
    pub store: Store,
    /// The delivery pool (Pushi's handler targets and direct sends).
    pub deliveries: Deliveries,
    /// Pusher web hook events of this turn, sent as batches at its end.
    pub webhooks: WebhookBatches,
    /// Cross-session effects for other nodes.
    pub bus: Box<dyn Bus>,
    /// Continuations waiting for store answers, by ticket.
    pending: Slab<Then>,
    /// Continuations waiting for the cluster registry, by ticket.
    registry_pending: Slab<RegistryThen>,
    /// Direct sends (`/messaging/*`) waiting for their results.
    direct_sends: Slab<deliveries::Pending>,
    /// Per app: REST call tokens left and when they were last refilled.
    api_buckets: Vec<(f64, Instant)>,
    /// Cluster: REST calls accepted here and not yet reported, per app, and
    /// the second they were counted in.
    api_unreported: HashMap<AppIndex, (u64, u64)>,
    /// Cluster: the calls every node reported in the current second, per app.
    api_cluster: Rc<RefCell<HashMap<AppIndex, (u64, u64)>>>,
    /// Apps created without the admin token (`PUSHI_APP_CREATION_RATE`).
    pub app_creation_bucket: TokenBucket,
    /// REST requests from allowed CORS origins waiting for the store: connection → origin.
    pub cors_pending: HashMap<ConnId, String>,
    /// Open web console feeds and the events shown to them.
    pub tap: tap::Tap,
    /// Signed-in web consoles.
    pub consoles: console_sessions::ConsoleSessions,
}

impl Effects {
    /// Starts the delivery pool next to `store`; reports wake the reactor through the store's waker.
    pub fn new(config: Config, metrics: Rc<Metrics>, store: Store, bus: Box<dyn Bus>) -> Effects {
        let deliveries = Deliveries::start(config.deliveries.clone(), store.waker());
        let creation_burst = (config.app_creation_rate as f64).max(1.0);
        Effects {
            webhooks: WebhookBatches::new(deliveries.queue(), deliveries.stats.pusher.clone()),
            config,
            metrics,
            store,
            deliveries,
            bus,
            pending: Slab::new(),
            registry_pending: Slab::new(),
            direct_sends: Slab::new(),
            api_buckets: Vec::new(),
            api_unreported: HashMap::new(),
            api_cluster: Rc::default(),
            app_creation_bucket: TokenBucket::full(creation_burst),
            cors_pending: HashMap::new(),
            tap: tap::Tap::default(),
            consoles: console_sessions::ConsoleSessions::default(),
        }
    }

    /// Takes one REST call from the app's budget (`PUSHI_API_RATE` per
    /// second, bursts up to one second's worth); the error is the wait in
    /// seconds when it is spent.
    pub fn api_allowed(&mut self, app: AppIndex) -> Result<(), u64> {
        let rate = self.config.limits.api_rate as f64;
        if rate == 0.0 {
            return Ok(());
        }
        let i = app.slot();
        if self.api_buckets.len() <= i {
            self.api_buckets.resize(i + 1, (rate, Instant::now()));
        }
        let (tokens, at) = &mut self.api_buckets[i];
        let now = Instant::now();
        *tokens = (*tokens + now.duration_since(*at).as_secs_f64() * rate).min(rate);
        *at = now;
        if *tokens < 1.0 {
            crate::metrics::add(&self.metrics.api_rate_limited, 1);
            return Err(1);
        }
        if self.bus.listens() {
            // The cluster's calls this second (reported each turn) count too.
            let second = unix_second();
            let seen = self.api_cluster.borrow().get(&app).filter(|(s, _)| *s == second).map_or(0, |(_, n)| *n);
            let mine = self.api_unreported.entry(app).or_insert((second, 0));
            if mine.0 != second {
                *mine = (second, 0);
            }
            if seen + mine.1 >= rate as u64 {
                crate::metrics::add(&self.metrics.api_rate_limited, 1);
                return Err(1);
            }
            mine.1 += 1;
        }
        *tokens -= 1.0;
        Ok(())
    }

    /// Cluster: reports this turn's accepted REST calls; the answers keep
    /// each app's cluster-wide count for the current second.
    fn report_api_calls(&mut self) {
        let reports: Vec<(AppIndex, (u64, u64))> =
            self.api_unreported.drain().filter(|(_, (_, calls))| *calls > 0).collect();
        for (app, (second, calls)) in reports {
            let seen = self.api_cluster.clone();
            self.registry(
                RegistryOp::ApiCalls { app, second, calls },
                Some(Box::new(move |_st, _fx, answer, _out| {
                    if let Ok(RegistryReply::Calls(total)) = answer {
                        let mut seen = seen.borrow_mut();
                        let entry = seen.entry(app).or_insert((second, 0));
                        if entry.0 < second || (entry.0 == second && entry.1 < total) {
                            *entry = (second, total);
                        }
                    }
                })),
            );
        }
    }

    /// Submits a store op for an HTTP request: the response is built by
    /// `then` from the answer and sent to `from`. Err when the store's queue
    /// is full (nothing was queued).
    pub fn store_for_request(
        &mut self,
        app: AppIndex,
        from: ConnId,
        op: Op,
        then: impl FnOnce(&mut State, &mut dyn Ports, StoreReply, &mut dyn Outbox) -> Response + 'static,
    ) -> Result<(), QueueFull> {
        let wrapped: Then = Box::new(move |st, fx, answer, out| {
            let response = then(st, fx, answer, out);
            out.respond(from, response);
        });
        self.store(app, op, Some(wrapped))
    }

    /// Runs a registry read for an HTTP request: the response is built by
    /// `then` from the answer (Err: the registry is unreachable) and sent to `from`.
    pub fn registry_for_request(
        &mut self,
        op: RegistryOp,
        from: ConnId,
        then: impl FnOnce(&mut State, Result<RegistryReply, String>) -> Response + 'static,
    ) {
        let wrapped: RegistryThen = Box::new(move |st, _fx, answer, out| {
            let response = then(st, answer);
            out.respond(from, response);
        });
        self.registry(op, Some(wrapped));
    }

    /// Runs the continuation of a registry answer.
    pub fn registry_answered(
        &mut self,
        st: &mut State,
        ticket: u64,
        answer: Result<RegistryReply, String>,
        out: &mut dyn Outbox,
    ) {
        if let Some(then) = self.registry_pending.try_remove(ticket as usize) {
            then(st, self, answer, out);
        }
    }

    /// Runs the continuations of every store answer that has arrived, then
    /// the delivery workers' reports.
    pub fn on_wake(&mut self, st: &mut State, out: &mut dyn Outbox) {
        let answers: Vec<_> = self.store.answers().collect();
        for (ticket, answer) in answers {
            if let Some(then) = ticket.and_then(|t| self.pending.try_remove(t as usize)) {
                then(st, self, answer, out);
            }
        }
        self.on_delivery_reports(st, out);
    }

    /// End of a reactor turn: this turn's web hook events go out as batches.
    pub fn end_of_turn(&mut self, st: &State) {
        self.webhooks.flush(&st.apps);
        if !self.api_unreported.is_empty() {
            self.report_api_calls();
        }
    }
}

impl Ports for Effects {
    fn webhook(&mut self, app: AppIndex, event: Value) {
        self.webhooks.push(app, event);
    }

    fn store(&mut self, app: AppIndex, op: Op, then: Option<Then>) -> Result<(), QueueFull> {
        let Some(then) = then else { return self.store.submit(app.0, None, op) };
        let ticket = self.pending.insert(then) as u32;
        let submitted = self.store.submit(app.0, Some(ticket), op);
        if submitted.is_err() {
            drop(self.pending.remove(ticket as usize));
        }
        submitted
    }

    fn store_has_room(&self, app: AppIndex, ops: usize, bytes: u64) -> bool {
        self.store.has_room(app.0, ops, bytes)
    }

    fn deliver(&mut self, app: AppIndex, settings: &App, targets: Vec<TargetRecord>, message: &str) {
        self.deliver_to_targets(app, settings, targets, message);
    }

    fn delivers(&self) -> bool {
        self.deliveries.config.enabled
    }

    fn bus_listens(&self) -> bool {
        self.bus.listens()
    }

    fn bus(&mut self, message: BusMessage) {
        self.bus.send(message);
    }

    fn clustered(&self) -> bool {
        self.bus.listens()
    }

    fn registry(&mut self, op: RegistryOp, then: Option<RegistryThen>) {
        // Every op gets a ticket, so the answer is always drained (a None continuation is a no-op).
        let ticket = self.registry_pending.insert(then.unwrap_or_else(|| Box::new(|_, _, _, _| {})));
        self.bus.registry(ticket as u64, op);
    }

    fn observing(&self, app: AppIndex) -> bool {
        self.tap.watching(app)
    }

    fn observe(&mut self, app: AppIndex, event: Value) {
        self.tap.observe(app, event);
    }
}

/// The current Unix second (the cluster's REST rate windows).
fn unix_second() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}
