//! The server's side of Pushi's delivery targets: the jobs of a publish's
//! targets, the reports the delivery workers send back (gone targets are
//! removed; direct sends answer their request when every target reported),
//! and the counters shown by `/health/detailed` and `/metrics`.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use log::{debug, warn};
use serde_json::{json, Map, Value};

use super::Effects;
use crate::apps::{App, AppIndex};
use crate::deliver::{
    apns, smtp, web_push, Creds, Delivery, DeliveryJob, DeliveryReport, Origin, TargetKind, TargetStats,
};
use crate::http::Response;
use crate::outbox::{ConnId, Outbox};
use crate::state::State;
use crate::store::pool::Op;
use crate::store::TargetRecord;

/// A direct send waiting for its results.
pub struct Pending {
    from: ConnId,
    /// `/messaging/<adapter>` answers the one result object; `/messaging/send` a map.
    single: bool,
    slots: Vec<Slot>,
    /// Results decided without sending (unknown adapters, missing settings).
    fixed: Map<String, Value>,
}

/// One adapter of a direct send.
pub struct Slot {
    /// Its handler.
    pub kind: TargetKind,
    /// Name of the list of delivered targets in the result (`urls`, `recipients`, ...).
    pub list: &'static str,
    /// Extra fields of a result (`method` of web hooks).
    pub extra: Map<String, Value>,
    remaining: usize,
    sent: Vec<String>,
    failed: Vec<Value>,
}

impl Slot {
    /// An adapter slot waiting for `remaining` results.
    pub fn new(kind: TargetKind, list: &'static str, remaining: usize) -> Slot {
        Slot { kind, list, extra: Map::new(), remaining, sent: Vec::new(), failed: Vec::new() }
    }

    fn result(&self) -> Value {
        let mut r = Map::new();
        r.insert("success".into(), json!(self.failed.is_empty()));
        r.insert(self.list.into(), json!(self.sent));
        if !self.failed.is_empty() {
            r.insert("failed".into(), Value::Array(self.failed.clone()));
            let first = self.failed[0]["error"].clone();
            r.insert("error".into(), first);
        }
        r.extend(self.extra.clone());
        Value::Object(r)
    }
}

/// The adapter name of a handler in direct-send results.
pub fn adapter_name(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Apn => "apn",
        TargetKind::Smtp => "email",
        TargetKind::Web => "webhook",
        TargetKind::WebPush => "web_push",
    }
}

impl Effects {
    /// Builds and queues the jobs of a publish's handler targets (the rules chose them).
    pub(crate) fn deliver_to_targets(&mut self, app: AppIndex, settings: &App, found: Vec<TargetRecord>, text: &str) {
        let message: Value = serde_json::from_str(text).unwrap_or(Value::Null);
        let creds = Arc::new(Creds::of(settings, &self.deliveries.config));
        let mut email: Option<(String, String)> = None;
        let mut push: Option<Arc<Vec<u8>>> = None;
        let mut apn: Option<Option<Arc<String>>> = None;
        for t in found {
            let delivery = match TargetKind::of(&t.kind) {
                Some(TargetKind::Web) => Delivery::Web {
                    url: t.target,
                    method: "POST".into(),
                    headers: Vec::new(),
                    body: Some(Arc::new(text.to_string())),
                },
                Some(TargetKind::Smtp) => {
                    let (subject, body) = email.get_or_insert_with(|| smtp::subject_and_body(&message)).clone();
                    Delivery::Email { to: t.target, subject, body, html: false }
                }
                Some(TargetKind::WebPush) => {
                    let payload = push.get_or_insert_with(|| Arc::new(web_push::payload_of(&message))).clone();
                    let key = |k: &str| t.extra.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                    Delivery::WebPush { p256dh: key("p256dh"), auth: key("auth"), endpoint: t.target, payload }
                }
                Some(TargetKind::Apn) => {
                    let Some(payload) = apn.get_or_insert_with(|| apns::payload_of(&message).map(Arc::new)).clone()
                    else {
                        debug!("APNs: event without apn/push/data (app {app}); not sent");
                        continue;
                    };
                    Delivery::Apn { token: t.target, payload }
                }
                None => continue,
            };
            self.deliveries.submit(DeliveryJob::new(app, creds.clone(), delivery, Origin::Subscription));
        }
    }

    /// Runs what the handler workers reported (called when the waker fires).
    pub fn on_delivery_reports(&mut self, st: &mut State, out: &mut dyn Outbox) {
        for report in self.deliveries.reports() {
            match report {
                DeliveryReport::Gone { app, kind, target } => {
                    let op = Op::RemoveTargets {
                        app: st.apps.get(app).id.clone(),
                        kind: kind.name().into(),
                        target: target.clone(),
                        event: None,
                    };
                    st.pushi.remove_target_everywhere(app, kind.name(), &target);
                    if self.store.submit(app.0, None, op).is_err() {
                        warn!("store busy: gone {} subscription {target} stays stored", kind.name());
                    }
                }
                DeliveryReport::Direct { ticket, slot, target, result } => {
                    let Some(p) = self.direct_sends.get_mut(ticket as usize) else { continue };
                    let s = &mut p.slots[slot];
                    s.remaining = s.remaining.saturating_sub(1);
                    match result {
                        Ok(()) => s.sent.push(target),
                        Err(error) => s.failed.push(json!({ "target": target, "error": error })),
                    }
                    if p.slots.iter().all(|s| s.remaining == 0) {
                        let p = self.direct_sends.remove(ticket as usize);
                        out.respond(p.from, direct_response(&p));
                    }
                }
            }
        }
    }

    /// Starts a direct send: `jobs` are `(slot, job)` pairs; the request is
    /// answered when every job reported. Answers at once when nothing is sent.
    pub fn direct_send(
        &mut self,
        from: ConnId,
        single: bool,
        slots: Vec<Slot>,
        fixed: Map<String, Value>,
        jobs: Vec<(usize, DeliveryJob)>,
    ) -> Option<Response> {
        let mut p = Pending { from, single, slots, fixed };
        if jobs.is_empty() {
            return Some(direct_response(&p));
        }
        let ticket = self.direct_sends.vacant_key() as u32;
        let mut refused = Vec::new();
        for (slot, mut job) in jobs {
            job.origin = Origin::Direct { ticket, slot };
            let target = job.delivery.target().to_string();
            if !self.deliveries.submit(job) {
                refused.push((slot, target));
            }
        }
        for (slot, target) in refused {
            let s = &mut p.slots[slot];
            s.remaining -= 1;
            s.failed
                .push(json!({ "target": target, "error": "the delivery queue (or this app's share of it) is full" }));
        }
        if p.slots.iter().all(|s| s.remaining == 0) {
            return Some(direct_response(&p));
        }
        self.direct_sends.insert(p);
        None
    }

    /// Per-handler subscription counts, queue depth and counters (`/health/detailed`).
    pub fn deliveries_health(&self, st: &State) -> Value {
        let mut counts: HashMap<&str, (usize, HashSet<AppIndex>)> = HashMap::new();
        for ((app, _), list) in &st.pushi.targets {
            for t in list {
                let e = counts.entry(t.kind.as_str()).or_default();
                e.0 += 1;
                e.1.insert(*app);
            }
        }
        let handlers: Vec<Value> = TargetKind::ALL
            .iter()
            .map(|k| {
                let s = self.deliveries.stats.of(*k);
                let (subs, apps) = counts.get(k.name()).map(|(n, a)| (*n, a.len())).unwrap_or((0, 0));
                let (queued, sent, failed, dropped, retried, gone) = (
                    s.queued.load(Relaxed),
                    s.sent.load(Relaxed),
                    s.failed.load(Relaxed),
                    s.dropped.load(Relaxed),
                    s.retried.load(Relaxed),
                    s.gone.load(Relaxed),
                );
                json!({
                    "name": k.name(),
                    "status": "ok",
                    "stats": {
                        "subscription_count": subs, "app_count": apps, "queued": queued,
                        "sent": sent, "failed": failed, "dropped": dropped, "retried": retried, "gone": gone,
                    },
                })
            })
            .collect();
        json!({ "status": if self.deliveries.config.enabled { "ok" } else { "disabled" }, "handlers": handlers })
    }

    /// Prometheus lines of the handler counters (labelled by handler).
    pub fn deliveries_metrics(&self) -> String {
        let mut out = String::new();
        type Field = fn(&TargetStats) -> &AtomicU64;
        let rows: [(&str, &str, &str, Field); 6] = [
            ("handler_sent_total", "counter", "Handler deliveries that reached the remote.", |s| &s.sent),
            ("handler_failed_total", "counter", "Handler deliveries given up on.", |s| &s.failed),
            ("handler_dropped_total", "counter", "Handler deliveries dropped, queue full.", |s| &s.dropped),
            ("handler_retried_total", "counter", "Handler attempts failed transiently and retried.", |s| &s.retried),
            ("handler_gone_total", "counter", "Subscriptions removed because the remote reported them gone.", |s| {
                &s.gone
            }),
            ("handler_queue", "gauge", "Handler deliveries queued, running or waiting to retry.", |s| &s.queued),
        ];
        for (name, kind, help, field) in rows {
            out.push_str(&format!("# HELP pushi_{name} {help}\n# TYPE pushi_{name} {kind}\n"));
            for k in TargetKind::ALL {
                let v = field(self.deliveries.stats.of(k)).load(Relaxed);
                out.push_str(&format!("pushi_{name}{{handler=\"{}\"}} {v}\n", k.name()));
            }
        }
        out
    }
}

fn direct_response(p: &Pending) -> Response {
    if p.single {
        let (result, delivered) = match p.slots.first() {
            Some(s) => (s.result(), !s.sent.is_empty() || s.failed.is_empty()),
            None => {
                let r = p.fixed.values().next().cloned().unwrap_or_else(|| json!({ "success": true }));
                let ok = r["success"] != json!(false);
                (r, ok)
            }
        };
        if !delivered {
            // Nothing delivered at all: the request failed (502, with the per-target errors).
            let message = result["error"].as_str().unwrap_or("delivery failed").to_string();
            let body = json!({
                "result": "error", "name": "DeliveryError", "code": 502, "message": message, "details": result,
            });
            return Response::json(502, &body);
        }
        return Response::json(200, &result);
    }
    let mut all = p.fixed.clone();
    for s in &p.slots {
        all.insert(adapter_name(s.kind).into(), s.result());
    }
    if all.is_empty() {
        return Response::json(200, &json!({ "result": "success" }));
    }
    Response::json(200, &Value::Object(all))
}
