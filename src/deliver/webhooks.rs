//! Pusher web hooks: events collected during a reactor turn are sent as one
//! signed batch per app and web hook (`{"time_ms", "events"}` with
//! `X-Pusher-Key` and `X-Pusher-Signature`), never from the reactor: each
//! batch is a job of the delivery pool ([`super::pool`]), which is
//! fair between apps, retries from a timer (no worker sleeps) and keeps the
//! batches of one app's web hook in order (one lane per URL: a retried batch
//! is not overtaken). A web hook may ask for some event types only
//! (`{"url", "event_types"}`); it gets batches of those alone.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use super::{Creds, Delivery, DeliveryJob, Origin, Queue, TargetStats};
use crate::apps::{AppIndex, Apps};
use crate::support::crypto::hmac_hex;

/// Counters of Pusher web hook batches (sent, failed, dropped, queued).
pub type WebhookStats = TargetStats;

/// The reactor-side half: collects events and hands batches to the pool.
pub struct WebhookBatches {
    queue: Queue,
    /// Shared counters.
    pub stats: Arc<WebhookStats>,
    pending: Vec<(AppIndex, Value)>,
}

impl WebhookBatches {
    /// Sends through the delivery pool behind `queue`, counting in `stats`.
    pub fn new(queue: Queue, stats: Arc<WebhookStats>) -> WebhookBatches {
        WebhookBatches { queue, stats, pending: Vec::new() }
    }

    /// Records an event for the app's web hooks (sent at the end of the turn;
    /// the caller raises it only for apps with web hooks).
    pub fn push(&mut self, app: AppIndex, event: Value) {
        self.pending.push((app, event));
    }

    /// Sends what this turn collected: per app, one batch to each web hook
    /// holding the events it wants (in the order they happened).
    pub fn flush(&mut self, apps: &Apps) {
        if self.pending.is_empty() {
            return;
        }
        let time_ms = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0);
        let mut pending = std::mem::take(&mut self.pending);
        pending.sort_by_key(|(app, _)| *app); // stable: events keep their order
        for chunk in pending.chunk_by(|a, b| a.0 == b.0) {
            let index = chunk[0].0;
            let app = apps.get(index);
            let creds = Arc::new(Creds::none(&app.id));
            for hook in &app.webhooks {
                let events: Vec<&Value> = chunk
                    .iter()
                    .map(|(_, e)| e)
                    .filter(|e| hook.wants(e.get("name").and_then(Value::as_str).unwrap_or("")))
                    .collect();
                if events.is_empty() {
                    continue;
                }
                let body = json!({ "time_ms": time_ms, "events": events }).to_string();
                let signature = hmac_hex(&app.secret, &body);
                let delivery = Delivery::Web {
                    url: hook.url().to_string(),
                    method: "POST".into(),
                    headers: vec![("X-Pusher-Key".into(), app.key.clone()), ("X-Pusher-Signature".into(), signature)],
                    body: Some(Arc::new(body)),
                };
                let mut job = DeliveryJob::new(index, creds.clone(), delivery, Origin::Subscription);
                job.lane = Some(hook.url().to_string());
                job.pusher = true;
                self.queue.submit(job);
            }
        }
    }
}
