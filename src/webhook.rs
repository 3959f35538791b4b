//! Pusher web hooks: events collected during a reactor turn are sent as one
//! signed batch per app (`{"time_ms", "events"}` with `X-Pusher-Key` and
//! `X-Pusher-Signature`) by worker threads, never on the reactor. The queue
//! is bounded; failures are retried with back-off, then counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use log::{debug, warn};
use serde_json::{json, Value};

use crate::apps::{AppIndex, Apps};
use crate::protocol::auth::hmac_hex;

/// Batches waiting for a worker; beyond this new batches are dropped (and counted).
pub const QUEUE_CAPACITY: usize = 10_000;
/// Worker threads sending web hooks.
pub const WORKERS: usize = 2;
/// Attempts per batch and URL (the first try plus retries).
pub const ATTEMPTS: u32 = 4;

/// Counters shared with the workers (atomics: they are bumped off the reactor).
#[derive(Debug, Default)]
pub struct WebhookStats {
    /// Batches delivered (2xx).
    pub sent: AtomicU64,
    /// Batches given up on after every attempt.
    pub failed: AtomicU64,
    /// Batches refused because the queue was full.
    pub dropped: AtomicU64,
    /// Batches queued and not yet finished.
    pub queued: AtomicU64,
}

struct Job {
    url: String,
    /// `(X-Pusher-Key, X-Pusher-Signature)` for Pusher batches; Pushi's `/webs` posts are unsigned.
    signed: Option<(String, String)>,
    body: String,
}

/// The reactor-side half: collects events and hands batches to the workers.
pub struct Webhooks {
    tx: SyncSender<Job>,
    /// Shared counters.
    pub stats: Arc<WebhookStats>,
    pending: Vec<(AppIndex, Value)>,
}

impl Webhooks {
    /// Starts the worker threads.
    pub fn start() -> Webhooks {
        let (tx, rx) = sync_channel::<Job>(QUEUE_CAPACITY);
        let rx = Arc::new(Mutex::new(rx));
        let stats = Arc::new(WebhookStats::default());
        for i in 0..WORKERS {
            let (rx, stats) = (rx.clone(), stats.clone());
            std::thread::Builder::new()
                .name(format!("webhook-{i}"))
                .spawn(move || worker(rx, stats))
                .expect("spawn web hook worker");
        }
        Webhooks { tx, stats, pending: Vec::new() }
    }

    /// Records an event for the app's web hooks (sent at the end of the turn).
    pub fn push(&mut self, apps: &Apps, app: AppIndex, event: Value) {
        if !apps.get(app).webhooks.is_empty() {
            self.pending.push((app, event));
        }
    }

    /// Sends what this turn collected: one batch per app, to each of its URLs.
    pub fn flush(&mut self, apps: &Apps) {
        if self.pending.is_empty() {
            return;
        }
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|(app, _)| *app);
        for chunk in pending.chunk_by(|a, b| a.0 == b.0) {
            let app = apps.get(chunk[0].0);
            let events: Vec<&Value> = chunk.iter().map(|(_, e)| e).collect();
            let body = json!({ "time_ms": time_ms, "events": events }).to_string();
            let signature = hmac_hex(&app.secret, &body);
            for url in &app.webhooks {
                let signed = Some((app.key.clone(), signature.clone()));
                self.enqueue(Job { url: url.clone(), signed, body: body.clone() });
            }
        }
    }

    /// Posts one event as JSON to a Pushi `/webs` subscriber (by the same workers).
    pub fn post(&self, url: &str, body: String) {
        self.enqueue(Job { url: url.to_string(), signed: None, body });
    }

    fn enqueue(&self, job: Job) {
        let url = job.url.clone();
        match self.tx.try_send(job) {
            Ok(()) => {
                self.stats.queued.fetch_add(1, Ordering::Relaxed);
            }
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                warn!("web hook queue full: dropped a post to {url}");
            }
        }
    }
}

fn worker(rx: Arc<Mutex<Receiver<Job>>>, stats: Arc<WebhookStats>) {
    let agent: ureq::Agent = ureq::Agent::config_builder().timeout_global(Some(Duration::from_secs(10))).build().into();
    loop {
        let job = match rx.lock().map(|r| r.recv()) {
            Ok(Ok(job)) => job,
            _ => return,
        };
        let mut delivered = false;
        for attempt in 0..ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(500 << (attempt - 1)));
            }
            let mut request = agent.post(&job.url).header("Content-Type", "application/json");
            if let Some((key, signature)) = &job.signed {
                request = request.header("X-Pusher-Key", key).header("X-Pusher-Signature", signature);
            }
            let result = request.send(job.body.as_str());
            match result {
                Ok(_) => {
                    delivered = true;
                    break;
                }
                // A 4xx will not get better by retrying.
                Err(ureq::Error::StatusCode(code)) if (400..500).contains(&code) => {
                    debug!("web hook {} answered {code}; not retried", job.url);
                    break;
                }
                Err(e) => debug!("web hook {} attempt {} failed: {e}", job.url, attempt + 1),
            }
        }
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        if delivered {
            stats.sent.fetch_add(1, Ordering::Relaxed);
        } else {
            stats.failed.fetch_add(1, Ordering::Relaxed);
            warn!("web hook to {} failed after {ATTEMPTS} attempts", job.url);
        }
    }
}
