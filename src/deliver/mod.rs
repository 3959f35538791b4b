//! Delivery of everything the server sends on a tenant's behalf to other
//! systems: Pusher web hook batches ([`WebhookBatches`]), and Pushi's
//! delivery targets (web hooks, e-mail over SMTP, Web Push and Apple push).
//! The reactor only builds [`DeliveryJob`]s (one per target and publish) and
//! hands them to a pool of worker threads through one bounded queue, fair
//! between apps ([`pool`]); tenants' targets go through the outbound policy
//! ([`crate::outbound`]); the workers ([`worker`]) do the blocking network
//! work, retry transient failures with back-off (one timer thread re-queues
//! them, so a dead target never holds a worker), count in one set of
//! counters ([`DeliveryStats`]) and send [`DeliveryReport`]s back through a
//! channel drained on the reactor when the shared waker fires: targets the
//! remote reports gone and the results of direct sends.
//!
//! This module only reports data; it never names the hub, HTTP responses or
//! connections (`crate::hub_deliveries` turns its reports into those).

pub mod apns;
pub mod pool;
pub mod smtp;
mod web;
pub mod web_push;
mod webhooks;
mod worker;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, Receiver};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use log::warn;
use serde_json::Value;

use crate::apps::{App, AppIndex};
pub use crate::config::DeliveryConfig;
use crate::store::pool::Wake;
pub use web::classify_ureq;
pub use webhooks::{WebhookBatches, WebhookStats};

/// What a delivery target is (Pushi calls them handlers; also the stored `kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TargetKind {
    /// Apple push notifications (`/apns`).
    Apn,
    /// E-mail (`/smtps`).
    Smtp,
    /// Web hooks (`/webs`): the event JSON POSTed to a URL.
    Web,
    /// Browser Web Push (`/web_pushes`).
    WebPush,
}

impl TargetKind {
    /// Every kind, in Pushi's dispatch order.
    pub const ALL: [TargetKind; 4] = [TargetKind::Apn, TargetKind::Smtp, TargetKind::Web, TargetKind::WebPush];

    /// The stored `kind` and the name in health reports.
    pub fn name(self) -> &'static str {
        match self {
            TargetKind::Apn => "apn",
            TargetKind::Smtp => "smtp",
            TargetKind::Web => "web",
            TargetKind::WebPush => "web_push",
        }
    }

    /// The kind with this stored name.
    pub fn of(name: &str) -> Option<TargetKind> {
        TargetKind::ALL.into_iter().find(|k| k.name() == name)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// Counters of one target kind (or of Pusher web hook batches), bumped by the workers.
#[derive(Debug, Default)]
pub struct TargetStats {
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

/// The one set of delivery counters: per target kind, and of Pusher web hook batches (same pool).
#[derive(Debug, Default)]
pub struct DeliveryStats {
    kinds: [TargetStats; 4],
    /// Pusher web hook batches (`pushi_webhooks_*` in `/metrics`).
    pub pusher: Arc<TargetStats>,
}

impl DeliveryStats {
    /// The counters of one target kind.
    pub fn of(&self, kind: TargetKind) -> &TargetStats {
        &self.kinds[kind.index()]
    }

    /// The counters a job is counted in.
    fn of_job(&self, job: &DeliveryJob) -> &TargetStats {
        if job.pusher {
            &self.pusher
        } else {
            self.of(job.delivery.kind())
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
    pub fn of(app: &App, config: &DeliveryConfig) -> Creds {
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
    pub fn kind(&self) -> TargetKind {
        match self {
            Delivery::Email { .. } => TargetKind::Smtp,
            Delivery::WebPush { .. } => TargetKind::WebPush,
            Delivery::Apn { .. } => TargetKind::Apn,
            Delivery::Web { .. } => TargetKind::Web,
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
pub struct DeliveryJob {
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

impl DeliveryJob {
    /// A job at its first attempt.
    pub fn new(app: AppIndex, creds: Arc<Creds>, delivery: Delivery, origin: Origin) -> DeliveryJob {
        DeliveryJob { app, creds, delivery, origin, lane: None, pusher: false, attempt: 0 }
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
pub enum DeliveryReport {
    /// Remove this stored subscription.
    Gone {
        /// The app.
        app: AppIndex,
        /// Its handler.
        kind: TargetKind,
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

/// The reactor-side half of the delivery pool: queue, counters, settings and
/// the reports of the workers.
pub struct Deliveries {
    queue: Queue,
    reports: Receiver<DeliveryReport>,
    /// Shared counters.
    pub stats: Arc<DeliveryStats>,
    /// Settings.
    pub config: Arc<DeliveryConfig>,
}

impl Deliveries {
    /// Starts the worker threads and the retry timer; reports wake the reactor through `waker`.
    pub fn start(config: DeliveryConfig, waker: Arc<dyn Wake>) -> Deliveries {
        let config = Arc::new(config);
        let (report_tx, reports) = channel::<DeliveryReport>();
        let stats = Arc::new(DeliveryStats::default());
        let pool = Arc::new(pool::Pool::new(config.queue, config.app_queue, config.app_workers));
        worker::start(config.clone(), pool.clone(), stats.clone(), report_tx, waker);
        let queue = Queue { pool, stats: stats.clone() };
        Deliveries { queue, reports, stats, config }
    }

    /// Queues a job; false (and counted as dropped) when the pool or the app's share of it is full.
    pub fn submit(&self, job: DeliveryJob) -> bool {
        self.queue.submit(job)
    }

    /// The submitting side of the pool, for the Pusher web hooks.
    pub fn queue(&self) -> Queue {
        self.queue.clone()
    }

    /// Reports that have arrived.
    pub fn reports(&self) -> Vec<DeliveryReport> {
        self.reports.try_iter().collect()
    }
}

/// The submitting side of the delivery pool (cheap to clone).
#[derive(Clone)]
pub struct Queue {
    pool: Arc<pool::Pool>,
    stats: Arc<DeliveryStats>,
}

impl Queue {
    /// Queues a job; false (and counted as dropped) when the pool or the app's share of it is full.
    pub fn submit(&self, job: DeliveryJob) -> bool {
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

/// Checks the delivery settings `config` cannot check alone (it knows no
/// SMTP URL syntax): start-up refuses a bad `SMTP_URL` with this message.
pub fn check_config(config: &DeliveryConfig) -> Result<(), String> {
    if !config.smtp.url.is_empty() {
        smtp::parse_url(&config.smtp.url).map_err(|e| format!("SMTP_URL: {e}"))?;
    }
    Ok(())
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
    use serde_json::json;

    #[test]
    fn kinds_round_trip() {
        for k in TargetKind::ALL {
            assert_eq!(TargetKind::of(k.name()), Some(k));
        }
        assert_eq!(TargetKind::of("fax"), None);
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
        let jwt = es256_jwt(&json!({"alg": "ES256"}), &json!({"sub": "x"}), &key);
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let sig = p256::ecdsa::Signature::from_slice(&b64_decode(parts[2]).unwrap()).unwrap();
        let vk = p256::ecdsa::VerifyingKey::from(key.public_key());
        vk.verify(format!("{}.{}", parts[0], parts[1]).as_bytes(), &sig).unwrap();
    }
}
