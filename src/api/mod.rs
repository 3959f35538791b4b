//! The REST router: `(method, path pattern) → handler` in one static table,
//! so later features add rows, not reactor code. Handlers are plain functions
//! over the [`Hub`] and return a [`Response`]; they never touch sockets.

pub mod handlers;
pub mod messaging;
pub mod pusher;
pub mod pushi;

use std::collections::HashMap;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use crate::deliver::TargetKind;
use crate::http::{HttpError, Request, Response};
use crate::hub::Hub;
use crate::outbox::{ConnId, Outbox, SharedFrame};

/// What a handler gets besides the hub: the request, the path's captured
/// segments, the caller and the outbox for anything it publishes.
pub struct Call<'a> {
    /// The request being answered.
    pub req: &'a Request,
    /// Values of the `{name}` segments of the matched pattern, in order.
    pub params: Vec<&'a str>,
    /// The HTTP connection asking.
    pub from: ConnId,
    /// Where published frames go.
    pub out: &'a mut dyn Outbox,
}

/// A handler: answers one request now, or returns None and answers later
/// through [`Outbox::respond`] (when it waits for the store).
pub type Handler = fn(&mut Hub, &mut Call) -> Option<Response>;

/// One row of the route table.
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path with `{name}` placeholders for single segments.
    pub pattern: &'static str,
    /// The function that answers.
    pub handler: Handler,
}

/// Every REST route the server answers. Earlier rows win (`/apps/ping` before `/apps/{ident}`).
pub static ROUTES: &[Route] = &[
    Route { method: "GET", pattern: "/health", handler: |h, c| Some(health(h, c)) },
    Route {
        method: "GET",
        pattern: "/health/live",
        handler: |_, _| Some(Response::json(200, &json!({ "status": "ok" }))),
    },
    Route { method: "GET", pattern: "/health/ready", handler: health_ready },
    Route { method: "GET", pattern: "/health/detailed", handler: |h, c| Some(health_detailed(h, c)) },
    Route { method: "GET", pattern: "/metrics", handler: |h, c| Some(metrics(h, c)) },
    // Pusher HTTP API (signed).
    Route { method: "POST", pattern: "/apps/{id}/events", handler: |h, c| pusher::later(pusher::trigger(h, c)) },
    Route {
        method: "POST",
        pattern: "/apps/{id}/batch_events",
        handler: |h, c| pusher::later(pusher::batch_trigger(h, c)),
    },
    Route {
        method: "GET",
        pattern: "/apps/{id}/channels",
        handler: |h, c| Some(pusher::answer(pusher::channels(h, c))),
    },
    Route {
        method: "GET",
        pattern: "/apps/{id}/channels/{channel}",
        handler: |h, c| Some(pusher::answer(pusher::channel(h, c))),
    },
    Route {
        method: "GET",
        pattern: "/apps/{id}/channels/{channel}/users",
        handler: |h, c| Some(pusher::answer(pusher::channel_users(h, c))),
    },
    Route {
        method: "POST",
        pattern: "/apps/{id}/users/{user}/terminate_connections",
        handler: |h, c| Some(pusher::answer(pusher::terminate_connections(h, c))),
    },
    // Pushi's REST API (session token from /login).
    Route { method: "GET", pattern: "/login", handler: |h, c| pushi::run(pushi::login(h, c)) },
    Route { method: "POST", pattern: "/login", handler: |h, c| pushi::run(pushi::login(h, c)) },
    Route { method: "GET", pattern: "/logout", handler: |h, c| pushi::run(pushi::logout(h, c)) },
    Route { method: "POST", pattern: "/logout", handler: |h, c| pushi::run(pushi::logout(h, c)) },
    Route { method: "GET", pattern: "/apps", handler: |h, c| pushi::run(pushi::list_apps(h, c)) },
    Route { method: "POST", pattern: "/apps", handler: |h, c| pushi::run(pushi::create_app(h, c)) },
    Route { method: "GET", pattern: "/apps/ping", handler: |h, c| pushi::run(pushi::ping(h, c)) },
    Route { method: "GET", pattern: "/apps/{ident}", handler: |h, c| pushi::run(pushi::show_app(h, c)) },
    Route { method: "PUT", pattern: "/apps/{ident}", handler: |h, c| pushi::run(pushi::update_app(h, c)) },
    Route { method: "DELETE", pattern: "/apps/{ident}", handler: |h, c| pushi::run(pushi::delete_app(h, c)) },
    Route { method: "GET", pattern: "/events", handler: |h, c| pushi::run(pushi::list_events(h, c)) },
    Route { method: "POST", pattern: "/events", handler: |h, c| pushi::run(pushi::create_event(h, c)) },
    Route { method: "GET", pattern: "/subscriptions", handler: |h, c| pushi::run(pushi::list_subscriptions(h, c)) },
    Route { method: "POST", pattern: "/subscriptions", handler: |h, c| pushi::run(pushi::create_subscription(h, c)) },
    Route {
        method: "DELETE",
        pattern: "/subscriptions/{user_id}/{event}",
        handler: |h, c| pushi::run(pushi::delete_subscription(h, c)),
    },
    Route { method: "GET", pattern: "/sockets", handler: |h, c| pushi::run(pushi::list_sockets(h, c)) },
    Route { method: "GET", pattern: "/sockets/{socket_id}", handler: |h, c| pushi::run(pushi::show_socket(h, c)) },
    Route { method: "POST", pattern: "/sockets/{socket_id}", handler: |h, c| pushi::run(pushi::show_socket(h, c)) },
    Route { method: "GET", pattern: "/webs", handler: |h, c| pushi::run(handlers::list(h, c, TargetKind::Web)) },
    Route { method: "POST", pattern: "/webs", handler: |h, c| pushi::run(handlers::create(h, c, TargetKind::Web)) },
    Route {
        method: "DELETE",
        pattern: "/webs/{url}",
        handler: |h, c| pushi::run(handlers::delete(h, c, TargetKind::Web)),
    },
    Route {
        method: "DELETE",
        pattern: "/webs/{url}/{event}",
        handler: |h, c| pushi::run(handlers::delete(h, c, TargetKind::Web)),
    },
    Route { method: "GET", pattern: "/apns", handler: |h, c| pushi::run(handlers::list(h, c, TargetKind::Apn)) },
    Route { method: "POST", pattern: "/apns", handler: |h, c| pushi::run(handlers::create(h, c, TargetKind::Apn)) },
    Route {
        method: "DELETE",
        pattern: "/apns/{token}",
        handler: |h, c| pushi::run(handlers::delete(h, c, TargetKind::Apn)),
    },
    Route {
        method: "DELETE",
        pattern: "/apns/{token}/{event}",
        handler: |h, c| pushi::run(handlers::delete(h, c, TargetKind::Apn)),
    },
    Route { method: "GET", pattern: "/smtps", handler: |h, c| pushi::run(handlers::list(h, c, TargetKind::Smtp)) },
    Route { method: "POST", pattern: "/smtps", handler: |h, c| pushi::run(handlers::create(h, c, TargetKind::Smtp)) },
    Route {
        method: "DELETE",
        pattern: "/smtps/{email}",
        handler: |h, c| pushi::run(handlers::delete(h, c, TargetKind::Smtp)),
    },
    Route {
        method: "DELETE",
        pattern: "/smtps/{email}/{event}",
        handler: |h, c| pushi::run(handlers::delete(h, c, TargetKind::Smtp)),
    },
    Route {
        method: "GET",
        pattern: "/web_pushes",
        handler: |h, c| pushi::run(handlers::list(h, c, TargetKind::WebPush)),
    },
    Route {
        method: "POST",
        pattern: "/web_pushes",
        handler: |h, c| pushi::run(handlers::create(h, c, TargetKind::WebPush)),
    },
    Route {
        method: "DELETE",
        pattern: "/web_pushes/{endpoint}",
        handler: |h, c| pushi::run(handlers::delete(h, c, TargetKind::WebPush)),
    },
    Route { method: "GET", pattern: "/vapid_key", handler: |h, c| pushi::run(handlers::vapid_key(h, c)) },
    Route { method: "POST", pattern: "/messaging/send", handler: |h, c| pushi::run(messaging::send(h, c)) },
    Route { method: "POST", pattern: "/messaging/apn", handler: |h, c| pushi::run(messaging::apn_route(h, c)) },
    Route { method: "POST", pattern: "/messaging/email", handler: |h, c| pushi::run(messaging::email_route(h, c)) },
    Route { method: "POST", pattern: "/messaging/webhook", handler: |h, c| pushi::run(messaging::webhook_route(h, c)) },
    Route {
        method: "POST",
        pattern: "/messaging/web_push",
        handler: |h, c| pushi::run(messaging::web_push_route(h, c)),
    },
];

/// Matches `path` against a pattern, returning the captured segments.
fn match_pattern<'p>(pattern: &str, path: &'p str) -> Option<Vec<&'p str>> {
    let mut params = Vec::new();
    let mut pat = pattern.split('/');
    let mut segs = path.split('/');
    loop {
        match (pat.next(), segs.next()) {
            (None, None) => return Some(params),
            (Some(p), Some(s)) if p.starts_with('{') && !s.is_empty() => params.push(s),
            (Some(p), Some(s)) if p == s => {}
            _ => return None,
        }
    }
}

/// Late answers still owed to allowed cross-origin requests, at most this
/// many (one is left behind by each request the store never answered).
pub const MAX_CORS_PENDING: usize = 10_000;

/// Runs a REST request; for a browser page of an origin in
/// `PUSHI_CORS_ORIGINS`, answers its preflight and adds CORS headers to the
/// answer, now or (through [`CorsOutbox`]) when the store has answered.
pub fn dispatch(hub: &mut Hub, req: &Request, from: ConnId, out: &mut dyn Outbox) -> Option<Response> {
    let Some(origin) = allowed_origin(&hub.config.cors_origins, req) else {
        return route(hub, req, from, out);
    };
    if req.method == "OPTIONS" && req.header("access-control-request-method").is_some() {
        if let Some(r) = preflight(req, &origin) {
            return Some(r);
        }
    }
    match route(hub, req, from, out) {
        Some(mut r) => {
            allow_origin(&mut r, &origin);
            Some(r)
        }
        None => {
            if hub.cors_pending.len() >= MAX_CORS_PENDING {
                hub.cors_pending.clear();
            }
            hub.cors_pending.insert(from, origin);
            None
        }
    }
}

/// The `Access-Control-Allow-Origin` value for this request: its `Origin`
/// when listed, `*` when only the wildcard admits it, None when not allowed.
fn allowed_origin(allowed: &[String], req: &Request) -> Option<String> {
    if allowed.is_empty() {
        return None;
    }
    let origin = req.header("origin")?;
    if allowed.iter().any(|a| a.eq_ignore_ascii_case(origin)) {
        Some(origin.to_string())
    } else {
        allowed.iter().any(|a| a == "*").then(|| "*".to_string())
    }
}

/// Lets the page read this answer. A listed origin may send its cookies
/// (Pushi's `sid`); the wildcard never does, so no site can use a session
/// cookie of another (such pages pass `sid` themselves).
fn allow_origin(r: &mut Response, origin: &str) {
    r.headers.push(("Access-Control-Allow-Origin", origin.to_string()));
    if origin != "*" {
        r.headers.push(("Access-Control-Allow-Credentials", "true".into()));
        r.headers.push(("Vary", "Origin".into()));
    }
}

/// 204 to a CORS preflight for a path some route serves (None: no route, so 404 as usual).
fn preflight(req: &Request, origin: &str) -> Option<Response> {
    let path = req.path();
    let mut methods: Vec<&str> =
        ROUTES.iter().filter(|r| match_pattern(r.pattern, path).is_some()).map(|r| r.method).collect();
    if methods.is_empty() {
        return None;
    }
    methods.dedup();
    let headers = req.header("access-control-request-headers").unwrap_or("Content-Type, X-Session-Id");
    let mut r = Response { status: 204, headers: Vec::new(), body: Vec::new(), close: false };
    allow_origin(&mut r, origin);
    r.headers.push(("Access-Control-Allow-Methods", methods.join(", ")));
    r.headers.push(("Access-Control-Allow-Headers", headers.to_string()));
    r.headers.push(("Access-Control-Max-Age", "600".into()));
    Some(r)
}

/// The outbox store answers go through: a late answer to an allowed
/// cross-origin request gets its CORS headers on the way out.
pub struct CorsOutbox<'a> {
    /// The reactor's outbox.
    pub inner: &'a mut dyn Outbox,
    /// Connection → origin of the request it waits an answer for.
    pub pending: &'a mut HashMap<ConnId, String>,
}

impl Outbox for CorsOutbox<'_> {
    fn send(&mut self, to: ConnId, frame: &SharedFrame) -> bool {
        self.inner.send(to, frame)
    }

    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        self.inner.close(to, code, reason)
    }

    fn respond(&mut self, to: ConnId, mut response: Response) {
        if let Some(origin) = self.pending.remove(&to) {
            allow_origin(&mut response, &origin);
        }
        self.inner.respond(to, response)
    }
}

/// Finds the route for a request and runs it: 404 when no pattern matches the
/// path, 405 (with `Allow`) when one does but not for this method.
fn route(hub: &mut Hub, req: &Request, from: ConnId, out: &mut dyn Outbox) -> Option<Response> {
    let path = req.path();
    let mut allowed: Vec<&str> = Vec::new();
    for route in ROUTES {
        let Some(params) = match_pattern(route.pattern, path) else {
            continue;
        };
        if route.method != req.method {
            allowed.push(route.method);
            continue;
        }
        let mut call = Call { req, params, from, out };
        return (route.handler)(hub, &mut call);
    }
    Some(if allowed.is_empty() {
        HttpError::NotFound.response()
    } else {
        let mut r = Response::error(405, &format!("method not allowed (allowed: {})", allowed.join(", ")));
        r.headers.push(("Allow", allowed.join(", ")));
        r
    })
}

/// Whether the request carries the operator's `PUSHI_ADMIN_TOKEN` as
/// `Authorization: Bearer <token>` (compared in constant time).
pub fn is_admin(hub: &Hub, req: &Request) -> bool {
    let Some(token) = hub.config.admin_token.as_deref() else { return false };
    let given = req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
    crate::protocol::auth::constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Liveness and the store's state: `degraded` while writes keep failing
/// (they are being retried; live delivery goes on). Anyone sees the status;
/// the details (store location, queue, last error, connections) need the
/// operator's token or an app session.
fn health(hub: &mut Hub, call: &mut Call) -> Response {
    let h = &hub.store.health;
    let degraded = h.degraded.load(Relaxed);
    let mut body = json!({
        "status": if degraded { "degraded" } else { "ok" },
        "service": "pushi",
        "version": env!("CARGO_PKG_VERSION"),
        "store": { "status": if degraded { "error" } else { "ok" } },
    });
    if may_see_details(hub, call) {
        let h = &hub.store.health;
        let last_error = h.last_error.lock().map(|e| e.clone()).unwrap_or(None);
        body["connections"] = json!(hub.sessions.len());
        body["store"]["backend"] = json!(hub.config.store.describe());
        body["store"]["queued"] = json!(h.queued.load(Relaxed));
        body["store"]["queued_bytes"] = json!(h.queued_bytes.load(Relaxed));
        body["store"]["last_error"] = json!(last_error);
    }
    Response::json(200, &body)
}

/// The operator (admin token) or an app's owner (a Pushi session).
fn may_see_details(hub: &mut Hub, call: &Call) -> bool {
    is_admin(hub, call.req) || pushi::session_app(hub, call).is_ok()
}

/// `/health` plus `checks.handlers`: per handler subscription counts, queue
/// depth and counters. Needs the operator's token or an app session (403).
fn health_detailed(hub: &mut Hub, call: &mut Call) -> Response {
    if !may_see_details(hub, call) {
        return Response::error(
            403,
            "/health/detailed needs PUSHI_ADMIN_TOKEN (Authorization: Bearer) or an app session",
        );
    }
    let mut r = health(hub, call);
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
        v["timestamp"] = json!(crate::store::now_seconds());
        v["checks"] = json!({ "handlers": hub.handlers_health() });
        r = Response::json(200, &v);
    }
    r
}

/// Readiness: 503 while the store is failing, so a balancer can look elsewhere.
fn health_ready(hub: &mut Hub, _call: &mut Call) -> Option<Response> {
    Some(if hub.store.health.degraded.load(Relaxed) {
        Response::error(503, "store not ready: writes are failing and being retried")
    } else {
        Response::json(200, &json!({ "status": "ok", "ready": true }))
    })
}

fn metrics(hub: &mut Hub, _call: &mut Call) -> Response {
    let gauges = [
        ("sessions", "Open Pusher sessions.", hub.sessions.len() as u64),
        ("channels", "Channels held (occupied or caching).", hub.channels.len() as u64),
        ("subscriptions", "Channel subscriptions.", hub.sessions.iter().map(|(_, s)| s.subs.len() as u64).sum()),
        ("webhook_queue", "Web hook batches queued or in flight.", hub.webhooks.stats.queued.load(Relaxed)),
        ("webhooks_sent_total", "Web hook batches delivered.", hub.webhooks.stats.sent.load(Relaxed)),
        ("webhooks_failed_total", "Web hook batches given up on.", hub.webhooks.stats.failed.load(Relaxed)),
        ("webhooks_dropped_total", "Web hook batches dropped, queue full.", hub.webhooks.stats.dropped.load(Relaxed)),
        ("store_queue", "Store operations queued or running.", hub.store.health.queued.load(Relaxed)),
        ("store_refused_total", "Store operations refused, queue full (503).", hub.store.health.refused.load(Relaxed)),
        (
            "store_write_failures_total",
            "Failed store write attempts (retried).",
            hub.store.health.write_failures.load(Relaxed),
        ),
        ("store_degraded", "1 while store writes are failing.", hub.store.health.degraded.load(Relaxed) as u64),
    ];
    let mut text = hub.metrics.render(&gauges);
    text.push_str(&hub.handlers_metrics());
    Response::text(200, "text/plain; version=0.0.4", text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_capture_segments() {
        assert_eq!(match_pattern("/apps/{id}/events", "/apps/42/events"), Some(vec!["42"]));
        assert_eq!(match_pattern("/apps/{id}/events", "/apps//events"), None);
        assert_eq!(match_pattern("/apps/{id}", "/apps/42/events"), None);
        assert_eq!(match_pattern("/health", "/health"), Some(vec![]));
    }
}
