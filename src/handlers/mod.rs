//! Pushi's delivery handlers: web hooks, e-mail (SMTP), Web Push and Apple
//! push (APNs), and the pool that also sends Pusher web hooks. The reactor
//! only builds [`Job`]s (one per target and publish) and hands them to a pool
//! of worker threads through a bounded queue fair between apps ([`pool`]);
//! tenants' targets go through the outbound policy ([`crate::outbound`]); the
//! workers do the blocking network work, retry transient failures with
//! back-off (a timer thread re-queues them, so a dead target never holds a
//! worker), and send [`Report`]s back through a channel drained on the
//! reactor when the shared `mio::Waker` fires: subscriptions the remote
//! reports gone (removed through the store) and the results of direct sends
//! (`/messaging/*`, answered once every send is done).

pub mod apns;
pub mod pool;
pub mod smtp;
pub mod web_push;

use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use log::{debug, warn};
use serde_json::Value;

use crate::apps::{App, AppIndex};
use crate::outbound::{Policy, UNREACHABLE};
use crate::store::pool::Wake;

/// A delivery handler (also the `kind` of its stored targets).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    /// Apple push notifications (`/apns`).
    Apn,
    /// E-mail (`/smtps`).
    Smtp,
    /// Web hooks (`/webs`): the event JSON POSTed to a URL.
    Web,
    /// Browser Web Push (`/web_pushes`).
    WebPush,
}

impl Kind {
    /// Every handler, in Pushi's dispatch order.
    pub const ALL: [Kind; 4] = [Kind::Apn, Kind::Smtp, Kind::Web, Kind::WebPush];

    /// The stored `kind` and the name in health reports.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Apn => "apn",
            Kind::Smtp => "smtp",
            Kind::Web => "web",
            Kind::WebPush => "web_push",
        }
    }

    /// The kind with this stored name.
    pub fn of(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one handler, bumped by the workers.
#[derive(Debug, Default)]
pub struct KindStats {
    /// Deliveries that reached the remote.
    pub sent: AtomicU64,
    /// Deliveries given up on (permanent error, or transient after every attempt).
    pub failed: AtomicU64,
    /// Deliveries refused because the queue was full.
    pub dropped: AtomicU64,
    /// Attempts that failed transiently and were scheduled again.
    pub retried: AtomicU64,
    /// Subscriptions the remote reported gone (removed).
    pub gone: AtomicU64,
    /// Deliveries queued, running or waiting for a retry.
    pub queued: AtomicU64,
}

/// Counters of every handler, and of Pusher web hook batches (same pool).
#[derive(Debug, Default)]
pub struct Stats {
    kinds: [KindStats; 4],
    /// Pusher web hook batches (`pushi_webhooks_*` in `/metrics`).
    pub pusher: Arc<KindStats>,
}

impl Stats {
    /// The counters of one handler.
    pub fn of(&self, kind: Kind) -> &KindStats {
        &self.kinds[kind.index()]
    }

    /// The counters a job is counted in.
    fn of_job(&self, job: &Job) -> &KindStats {
        if job.pusher {
            &self.pusher
        } else {
            self.of(job.delivery.kind())
        }
    }
}

/// Server-wide handler settings (from `config`).
#[derive(Debug, Clone)]
pub struct HandlerConfig {
    /// Dispatch handlers on publishes at all (`PUSHI_HANDLERS`).
    pub enabled: bool,
    /// Worker threads (`PUSHI_HANDLER_WORKERS`).
    pub workers: usize,
    /// Deliveries queued, running or waiting for a retry, beyond which new ones are dropped.
    pub queue: usize,
    /// Time allowed for one attempt (`PUSHI_HANDLER_TIMEOUT`).
    pub timeout: Duration,
    /// Most deliveries of one app queued, running or waiting to retry (`PUSHI_DELIVERY_APP_QUEUE`).
    pub app_queue: usize,
    /// Most workers one app holds at once (`PUSHI_DELIVERY_APP_WORKERS`).
    pub app_workers: usize,
    /// Where tenants' requests may go (`PUSHI_OUTBOUND_ALLOW`).
    pub outbound: Arc<Policy>,
    /// Server default SMTP settings (`SMTP_*`).
    pub smtp: smtp::SmtpDefaults,
    /// `TTL` header of Web Push requests, seconds.
    pub web_push_ttl: u64,
    /// APNs base URL overriding Apple's hosts (tests, proxies); empty: Apple's.
    pub apns_url: String,
}

impl Default for HandlerConfig {
    fn default() -> HandlerConfig {
        HandlerConfig {
            enabled: true,
            workers: 4,
            queue: 10_000,
            timeout: Duration::from_secs(5),
            app_queue: 1000,
            app_workers: 2,
            outbound: Arc::new(Policy::default()),
            smtp: smtp::SmtpDefaults::default(),
            web_push_ttl: 86_400,
            apns_url: String::new(),
        }
    }
}

/// An app's delivery settings, resolved on the reactor and shared by its jobs.
#[derive(Debug, Clone)]
pub struct Creds {
    /// The app's id (logs).
    pub app_id: String,
    /// SMTP settings, or why there are none.
    pub smtp: Result<smtp::SmtpSettings, String>,
    /// VAPID signing key (Web Push), or why there is none.
    pub vapid: Result<String, String>,
    /// VAPID contact (`sub` claim).
    pub vapid_email: Option<String>,
    /// APNs credentials, or why there are none.
    pub apn: Result<apns::ApnCreds, String>,
}

/// A string field of an app's Pushi extras, when set and non-empty.
pub fn app_field<'a>(app: &'a App, name: &str) -> Option<&'a str> {
    app.extra.get(name).and_then(Value::as_str).filter(|s| !s.is_empty())
}

impl Creds {
    /// No settings at all (Pusher web hooks need none).
    pub fn none(app_id: &str) -> Creds {
        let missing = "not configured".to_string();
        Creds {
            app_id: app_id.into(),
            smtp: Err(missing.clone()),
            vapid: Err(missing.clone()),
            vapid_email: None,
            apn: Err(missing),
        }
    }

    /// The delivery settings of an app (its fields, else the server's defaults).
    pub fn of(app: &App, config: &HandlerConfig) -> Creds {
        Creds {
            app_id: app.id.clone(),
            smtp: smtp::resolve(None, app_field(app, "smtp_url"), &config.smtp),
            vapid: app_field(app, "vapid_key")
                .map(str::to_string)
                .ok_or_else(|| "VAPID private key not configured".to_string()),
            vapid_email: app_field(app, "vapid_email").map(str::to_string),
            apn: apns::ApnCreds::of(app, config),
        }
    }
}

/// What one job sends to one target.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// One e-mail to one recipient.
    Email {
        /// Recipient.
        to: String,
        /// Subject line.
        subject: String,
        /// Body text.
        body: String,
        /// The body is HTML.
        html: bool,
    },
    /// One encrypted Web Push message.
    WebPush {
        /// Push service URL.
        endpoint: String,
        /// The browser's P-256 public key (base64url).
        p256dh: String,
        /// The browser's auth secret (base64url).
        auth: String,
        /// Clear-text payload.
        payload: Arc<Vec<u8>>,
    },
    /// One APNs notification.
    Apn {
        /// Device token (hex).
        token: String,
        /// JSON payload (`{"aps": ...}`).
        payload: Arc<String>,
    },
    /// One HTTP request to a web hook URL.
    Web {
        /// URL.
        url: String,
        /// POST, PUT, GET or DELETE.
        method: String,
        /// Extra request headers.
        headers: Vec<(String, String)>,
        /// Body (JSON), none for GET and DELETE.
        body: Option<Arc<String>>,
    },
}

impl Delivery {
    /// The target as reported (URL, address, token or endpoint).
    pub fn target(&self) -> &str {
        match self {
            Delivery::Email { to, .. } => to,
            Delivery::WebPush { endpoint, .. } => endpoint,
            Delivery::Apn { token, .. } => token,
            Delivery::Web { url, .. } => url,
        }
    }

    /// The handler doing it.
    pub fn kind(&self) -> Kind {
        match self {
            Delivery::Email { .. } => Kind::Smtp,
            Delivery::WebPush { .. } => Kind::WebPush,
            Delivery::Apn { .. } => Kind::Apn,
            Delivery::Web { .. } => Kind::Web,
        }
    }
}

/// Who waits for a job.
#[derive(Debug, Clone, Copy)]
pub enum Origin {
    /// A publish to a stored subscription: gone targets are removed.
    Subscription,
    /// A direct send; the result goes to the waiting request.
    Direct {
        /// The pending request.
        ticket: u32,
        /// Its adapter slot.
        slot: usize,
    },
}

/// One delivery to one target.
#[derive(Debug, Clone)]
pub struct Job {
    /// The app.
    pub app: AppIndex,
    /// The app's settings when the job was made.
    pub creds: Arc<Creds>,
    /// What to send.
    pub delivery: Delivery,
    /// Who waits for it.
    pub origin: Origin,
    /// Jobs of one app with the same lane run one at a time, in order (a web hook URL).
    pub lane: Option<String>,
    /// A Pusher web hook batch (counted apart from handler deliveries).
    pub pusher: bool,
    attempt: u32,
}

impl Job {
    /// A job at its first attempt.
    pub fn new(app: AppIndex, creds: Arc<Creds>, delivery: Delivery, origin: Origin) -> Job {
        Job { app, creds, delivery, origin, lane: None, pusher: false, attempt: 0 }
    }

    fn attempts(&self) -> u32 {
        match self.origin {
            Origin::Subscription => ATTEMPTS,
            // Somebody waits for the answer: one retry only.
            Origin::Direct { .. } => 2,
        }
    }
}

/// Attempts per subscription delivery (first try plus retries).
pub const ATTEMPTS: u32 = 4;
/// Pause before the first retry; doubled for each further one.
pub const RETRY_FIRST: Duration = Duration::from_millis(500);

/// What one attempt came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Delivered.
    Sent,
    /// Failed in a way that may pass (network, 5xx, 429): try again later.
    Retry(String),
    /// Failed for good (bad configuration, 4xx).
    Failed(String),
    /// The remote says the subscription no longer exists (Web Push 404/410, APNs 410).
    Gone(String),
}

/// What workers tell the reactor.
#[derive(Debug, Clone)]
pub enum Report {
    /// Remove this stored subscription.
    Gone {
        /// The app.
        app: AppIndex,
        /// Its handler.
        kind: Kind,
        /// Endpoint or token.
        target: String,
    },
    /// A direct send finished.
    Direct {
        /// The pending request.
        ticket: u32,
        /// Its adapter slot.
        slot: usize,
        /// The target.
        target: String,
        /// Ok, or why not.
        result: Result<(), String>,
    },
}

/// The reactor-side half of the handlers: queue, counters, reports, and the
/// direct sends waiting for their results.
pub struct Handlers {
    queue: Queue,
    reports: Receiver<Report>,
    /// Shared counters.
    pub stats: Arc<Stats>,
    /// Settings.
    pub config: Arc<HandlerConfig>,
}

impl Handlers {
    /// Starts the worker threads and the retry timer; reports wake the reactor through `waker`.
    pub fn start(config: HandlerConfig, waker: Arc<dyn Wake>) -> Handlers {
        let config = Arc::new(config);
        let (report_tx, reports) = channel::<Report>();
        let (retry_tx, retry_rx) = channel::<(Instant, Job)>();
        let stats = Arc::new(Stats::default());
        let pool = Arc::new(pool::Pool::new(config.queue, config.app_queue, config.app_workers));
        for i in 0..config.workers.max(1) {
            let w = Worker {
                pool: pool.clone(),
                retry: retry_tx.clone(),
                reports: report_tx.clone(),
                waker: waker.clone(),
                stats: stats.clone(),
                config: config.clone(),
            };
            std::thread::Builder::new()
                .name(format!("handler-{i}"))
                .spawn(move || w.run())
                .expect("spawn handler worker");
        }
        let again = pool.clone();
        std::thread::Builder::new()
            .name("handler-retry".into())
            .spawn(move || retry_timer(retry_rx, again))
            .expect("spawn handler retry timer");
        let queue = Queue { pool, stats: stats.clone() };
        Handlers { queue, reports, stats, config }
    }

    /// Queues a job; false (and counted as dropped) when the pool or the app's share of it is full.
    pub fn submit(&self, job: Job) -> bool {
        self.queue.submit(job)
    }

    /// The submitting side of the pool, for the Pusher web hooks.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// Reports that have arrived.
    pub fn reports(&self) -> Vec<Report> {
        self.reports.try_iter().collect()
    }
}

/// The submitting side of the delivery pool (cheap to clone).
#[derive(Clone)]
pub struct Queue {
    pool: Arc<pool::Pool>,
    stats: Arc<Stats>,
}

impl Queue {
    /// Queues a job; false (and counted as dropped) when the pool or the app's share of it is full.
    pub fn submit(&self, job: Job) -> bool {
        let s = self.stats.of_job(&job);
        let (kind, target, app) = (job.delivery.kind(), job.delivery.target().to_string(), job.creds.app_id.clone());
        s.queued.fetch_add(1, Relaxed);
        match self.pool.submit(job) {
            Ok(()) => true,
            Err(why) => {
                s.queued.fetch_sub(1, Relaxed);
                s.dropped.fetch_add(1, Relaxed);
                let share = if why == pool::Refused::AppFull { "this app's share of " } else { "" };
                warn!("{share}the delivery queue is full: dropped a {} delivery to {target} (app {app})", kind.name());
                false
            }
        }
    }
}

struct Worker {
    pool: Arc<pool::Pool>,
    retry: Sender<(Instant, Job)>,
    reports: Sender<Report>,
    waker: Arc<dyn Wake>,
    stats: Arc<Stats>,
    config: Arc<HandlerConfig>,
}

impl Worker {
    fn run(self) {
        // Every HTTP target here is a tenant's: the policy agent (no redirects, checked addresses).
        let agent = crate::outbound::agent(self.config.outbound.clone(), self.config.timeout);
        while let Some(job) = self.pool.take() {
            let outcome = match &job.delivery {
                Delivery::Email { to, subject, body, html } => match &job.creds.smtp {
                    Ok(settings) => {
                        smtp::send(settings, to, subject, body, *html, self.config.timeout, &self.config.outbound)
                    }
                    Err(e) => Outcome::Failed(e.clone()),
                },
                Delivery::WebPush { endpoint, p256dh, auth, payload } => {
                    web_push::send(&agent, &job.creds, endpoint, p256dh, auth, payload, self.config.web_push_ttl)
                }
                Delivery::Apn { token, payload } => match &job.creds.apn {
                    Ok(creds) => apns::send(creds, token, payload, self.config.timeout),
                    Err(e) => Outcome::Failed(e.clone()),
                },
                Delivery::Web { url, method, headers, body } => {
                    send_web(&agent, url, method, headers, body.as_deref().map(String::as_str))
                }
            };
            self.finish(job, outcome);
        }
    }

    fn finish(&self, mut job: Job, outcome: Outcome) {
        let kind = job.delivery.kind();
        let stats = self.stats.clone();
        let s = stats.of_job(&job);
        let target = job.delivery.target().to_string();
        let (app, lane) = (job.app, job.lane.clone());
        let result = match outcome {
            Outcome::Sent => Ok(()),
            Outcome::Retry(why) if job.attempt + 1 < job.attempts() => {
                s.retried.fetch_add(1, Relaxed);
                debug!("{} to {target} attempt {} failed, retrying: {why}", kind.name(), job.attempt + 1);
                let pause = RETRY_FIRST * (1 << job.attempt);
                job.attempt += 1;
                self.pool.done(app, lane.as_deref(), false);
                if self.retry.send((Instant::now() + pause, job)).is_err() {
                    s.queued.fetch_sub(1, Relaxed);
                    self.pool.forget(app, lane.as_deref());
                }
                return;
            }
            Outcome::Retry(why) | Outcome::Failed(why) => Err(why),
            Outcome::Gone(why) => {
                s.gone.fetch_add(1, Relaxed);
                if let Origin::Subscription = job.origin {
                    let _ = self.reports.send(Report::Gone { app: job.app, kind, target: target.clone() });
                    self.waker.wake();
                }
                Err(why)
            }
        };
        s.queued.fetch_sub(1, Relaxed);
        self.pool.done(app, lane.as_deref(), true);
        match &result {
            Ok(()) => {
                s.sent.fetch_add(1, Relaxed);
            }
            Err(why) => {
                s.failed.fetch_add(1, Relaxed);
                warn!("{} delivery to {target} (app {}) failed: {why}", kind.name(), job.creds.app_id);
            }
        }
        if let Origin::Direct { ticket, slot } = job.origin {
            let _ = self.reports.send(Report::Direct { ticket, slot, target, result });
            self.waker.wake();
        }
    }
}

/// Holds failed jobs until their retry is due, then queues them again.
fn retry_timer(rx: Receiver<(Instant, Job)>, pool: Arc<pool::Pool>) {
    struct Due(Instant, u64, Job);
    impl PartialEq for Due {
        fn eq(&self, o: &Self) -> bool {
            (self.0, self.1) == (o.0, o.1)
        }
    }
    impl Eq for Due {}
    impl PartialOrd for Due {
        fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
            Some(self.cmp(o))
        }
    }
    impl Ord for Due {
        fn cmp(&self, o: &Self) -> std::cmp::Ordering {
            (o.0, o.1).cmp(&(self.0, self.1)) // earliest first in the max-heap
        }
    }
    let mut heap: BinaryHeap<Due> = BinaryHeap::new();
    let mut n = 0u64;
    loop {
        let wait = heap.peek().map(|d| d.0.saturating_duration_since(Instant::now()));
        let got = match wait {
            Some(w) => rx.recv_timeout(w).map_err(|e| matches!(e, std::sync::mpsc::RecvTimeoutError::Disconnected)),
            None => rx.recv().map_err(|_| true),
        };
        match got {
            Ok((at, job)) => {
                n += 1;
                heap.push(Due(at, n, job));
            }
            Err(true) => return,
            Err(false) => {}
        }
        while heap.peek().is_some_and(|d| d.0 <= Instant::now()) {
            let Due(_, _, job) = heap.pop().expect("peeked");
            pool.retry(job);
        }
    }
}

/// One web hook request: Pusher batches, `/webs` posts and direct sends.
fn send_web(agent: &ureq::Agent, url: &str, method: &str, headers: &[(String, String)], body: Option<&str>) -> Outcome {
    let result = match method {
        "GET" | "DELETE" => {
            let mut r = if method == "GET" { agent.get(url) } else { agent.delete(url) };
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.call()
        }
        _ => {
            let mut r = if method == "PUT" { agent.put(url) } else { agent.post(url) };
            r = r.header("Content-Type", "application/json");
            for (k, v) in headers {
                r = r.header(k, v);
            }
            r.send(body.unwrap_or(""))
        }
    };
    classify_ureq(result.map(|r| r.status().as_u16()))
}

/// Sorts a ureq result (the status of the answer): 2xx sent; 3xx failed (redirects
/// are not followed); 429/5xx and connection failures retried; other statuses failed.
/// Every connection failure reads [`UNREACHABLE`], whatever its cause.
pub fn classify_ureq(result: Result<u16, ureq::Error>) -> Outcome {
    match result {
        Ok(code) if (300..400).contains(&code) => Outcome::Failed(format!("HTTP {code}: redirects are not followed")),
        Ok(_) => Outcome::Sent,
        Err(ureq::Error::StatusCode(code)) if code == 429 || code >= 500 => Outcome::Retry(format!("HTTP {code}")),
        Err(ureq::Error::StatusCode(code)) => Outcome::Failed(format!("HTTP {code}")),
        Err(e) => {
            debug!("outbound request failed: {e}");
            Outcome::Retry(UNREACHABLE.to_string())
        }
    }
}

/// A compact ES256 JWT (`header.claims.signature`, base64url), signed with a P-256 key.
pub fn es256_jwt(header: &Value, claims: &Value, key: &p256::SecretKey) -> String {
    use p256::ecdsa::signature::Signer;
    let signing_input =
        format!("{}.{}", URL_SAFE_NO_PAD.encode(header.to_string()), URL_SAFE_NO_PAD.encode(claims.to_string()));
    let signer = p256::ecdsa::SigningKey::from(key);
    let signature: p256::ecdsa::Signature = signer.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// Decodes base64url or standard base64, with or without padding.
pub fn b64_decode(s: &str) -> Option<Vec<u8>> {
    let norm: String = s
        .trim()
        .trim_end_matches('=')
        .chars()
        .map(|c| {
            if c == '+' {
                '-'
            } else if c == '/' {
                '_'
            } else {
                c
            }
        })
        .collect();
    URL_SAFE_NO_PAD.decode(norm).ok()
}

/// Seconds since the epoch.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip() {
        for k in Kind::ALL {
            assert_eq!(Kind::of(k.name()), Some(k));
        }
        assert_eq!(Kind::of("fax"), None);
    }

    #[test]
    fn lenient_base64() {
        assert_eq!(b64_decode("-_8"), Some(vec![0xfb, 0xff]));
        assert_eq!(b64_decode("+/8="), Some(vec![0xfb, 0xff]));
        assert_eq!(b64_decode("!!"), None);
    }

    #[test]
    fn jwt_verifies() {
        use p256::ecdsa::signature::Verifier;
        let key = web_push::generate_secret();
        let jwt = es256_jwt(&serde_json::json!({"alg": "ES256"}), &serde_json::json!({"sub": "x"}), &key);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let sig = p256::ecdsa::Signature::from_slice(&b64_decode(parts[2]).unwrap()).unwrap();
        let vk = p256::ecdsa::VerifyingKey::from(key.public_key());
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).unwrap();
    }
}
