//! The REST router: `(method, path pattern) → handler` in one static table,
//! so later features add rows, not event-loop code. Routes are plain functions
//! over the [`State`] and the [`Effects`] and return a [`Response`]; they never touch sockets.

pub mod console;
pub mod errors;
pub mod landing;
pub mod messaging;
pub mod pusher;
pub mod pushi;
pub mod targets;

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use crate::deliver::TargetKind;
use crate::effects::Effects;
use crate::http::{HttpError, Request, Response};
use crate::outbox::{ConnId, Outbox, SharedFrame};
use crate::state::State;

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
pub type Handler = fn(&mut State, &mut Effects, &mut Call) -> Option<Response>;

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
    Route { method: "GET", pattern: "/", handler: landing::landing },
    // The web console (cookie session, CSRF token on changes; see api::console).
    Route { method: "GET", pattern: "/console", handler: console::page },
    Route { method: "GET", pattern: "/console/console.js", handler: console::script },
    Route { method: "GET", pattern: "/console/console.css", handler: console::style },
    Route { method: "GET", pattern: "/console/session", handler: console::session_info },
    Route { method: "POST", pattern: "/console/session", handler: console::sign_in },
    Route { method: "DELETE", pattern: "/console/session", handler: console::sign_out },
    Route { method: "GET", pattern: "/console/apps/{id}", handler: console::app_state },
    Route { method: "POST", pattern: "/console/events", handler: console::test_event },
    Route { method: "GET", pattern: "/health", handler: |s, f, c| Some(health(s, f, c)) },
    Route {
        method: "GET",
        pattern: "/health/live",
        handler: |_, _, _| Some(Response::json(200, &json!({ "status": "ok" }))),
    },
    Route { method: "GET", pattern: "/health/ready", handler: health_ready },
    Route { method: "GET", pattern: "/health/detailed", handler: |s, f, c| Some(health_detailed(s, f, c)) },
    Route { method: "GET", pattern: "/metrics", handler: |s, f, c| Some(metrics(s, f, c)) },
    // Pusher HTTP API (signed).
    Route { method: "POST", pattern: "/apps/{id}/events", handler: |s, f, c| pusher::later(pusher::trigger(s, f, c)) },
    Route {
        method: "POST",
        pattern: "/apps/{id}/batch_events",
        handler: |s, f, c| pusher::later(pusher::batch_trigger(s, f, c)),
    },
    Route {
        method: "GET",
        pattern: "/apps/{id}/channels",
        handler: |s, f, c| pusher::later(pusher::channels(s, f, c)),
    },
    Route {
        method: "GET",
        pattern: "/apps/{id}/channels/{channel}",
        handler: |s, f, c| pusher::later(pusher::channel(s, f, c)),
    },
    Route {
        method: "GET",
        pattern: "/apps/{id}/channels/{channel}/users",
        handler: |s, f, c| pusher::later(pusher::channel_users(s, f, c)),
    },
    Route {
        method: "POST",
        pattern: "/apps/{id}/users/{user}/terminate_connections",
        handler: |s, f, c| Some(pusher::answer(pusher::terminate_connections(s, f, c))),
    },
    // Pushi's REST API (session token from /login).
    Route { method: "GET", pattern: "/login", handler: |s, f, c| pushi::run(pushi::login(s, f, c)) },
    Route { method: "POST", pattern: "/login", handler: |s, f, c| pushi::run(pushi::login(s, f, c)) },
    Route { method: "GET", pattern: "/logout", handler: |s, f, c| pushi::run(pushi::logout(s, f, c)) },
    Route { method: "POST", pattern: "/logout", handler: |s, f, c| pushi::run(pushi::logout(s, f, c)) },
    Route { method: "GET", pattern: "/apps", handler: |s, f, c| pushi::run(pushi::list_apps(s, f, c)) },
    Route { method: "POST", pattern: "/apps", handler: |s, f, c| pushi::run(pushi::create_app(s, f, c)) },
    Route { method: "GET", pattern: "/apps/ping", handler: |s, f, c| pushi::run(pushi::ping(s, f, c)) },
    Route { method: "GET", pattern: "/apps/{ident}", handler: |s, f, c| pushi::run(pushi::show_app(s, f, c)) },
    Route { method: "PUT", pattern: "/apps/{ident}", handler: |s, f, c| pushi::run(pushi::update_app(s, f, c)) },
    Route { method: "DELETE", pattern: "/apps/{ident}", handler: |s, f, c| pushi::run(pushi::delete_app(s, f, c)) },
    Route { method: "GET", pattern: "/events", handler: |s, f, c| pushi::run(pushi::list_events(s, f, c)) },
    Route { method: "POST", pattern: "/events", handler: |s, f, c| pushi::run(pushi::create_event(s, f, c)) },
    Route {
        method: "GET",
        pattern: "/subscriptions",
        handler: |s, f, c| pushi::run(pushi::list_subscriptions(s, f, c)),
    },
    Route {
        method: "POST",
        pattern: "/subscriptions",
        handler: |s, f, c| pushi::run(pushi::create_subscription(s, f, c)),
    },
    Route {
        method: "DELETE",
        pattern: "/subscriptions/{user_id}/{event}",
        handler: |s, f, c| pushi::run(pushi::delete_subscription(s, f, c)),
    },
    Route { method: "GET", pattern: "/sockets", handler: |s, f, c| pushi::run(pushi::list_sockets(s, f, c)) },
    Route {
        method: "GET",
        pattern: "/sockets/{socket_id}",
        handler: |s, f, c| pushi::run(pushi::show_socket(s, f, c)),
    },
    Route {
        method: "POST",
        pattern: "/sockets/{socket_id}",
        handler: |s, f, c| pushi::run(pushi::show_socket(s, f, c)),
    },
    Route { method: "GET", pattern: "/webs", handler: |s, f, c| pushi::run(targets::list(s, f, c, TargetKind::Web)) },
    Route {
        method: "POST",
        pattern: "/webs",
        handler: |s, f, c| pushi::run(targets::create(s, f, c, TargetKind::Web)),
    },
    Route {
        method: "DELETE",
        pattern: "/webs/{url}",
        handler: |s, f, c| pushi::run(targets::delete(s, f, c, TargetKind::Web)),
    },
    Route {
        method: "DELETE",
        pattern: "/webs/{url}/{event}",
        handler: |s, f, c| pushi::run(targets::delete(s, f, c, TargetKind::Web)),
    },
    Route { method: "GET", pattern: "/apns", handler: |s, f, c| pushi::run(targets::list(s, f, c, TargetKind::Apn)) },
    Route {
        method: "POST",
        pattern: "/apns",
        handler: |s, f, c| pushi::run(targets::create(s, f, c, TargetKind::Apn)),
    },
    Route {
        method: "DELETE",
        pattern: "/apns/{token}",
        handler: |s, f, c| pushi::run(targets::delete(s, f, c, TargetKind::Apn)),
    },
    Route {
        method: "DELETE",
        pattern: "/apns/{token}/{event}",
        handler: |s, f, c| pushi::run(targets::delete(s, f, c, TargetKind::Apn)),
    },
    Route { method: "GET", pattern: "/smtps", handler: |s, f, c| pushi::run(targets::list(s, f, c, TargetKind::Smtp)) },
    Route {
        method: "POST",
        pattern: "/smtps",
        handler: |s, f, c| pushi::run(targets::create(s, f, c, TargetKind::Smtp)),
    },
    Route {
        method: "DELETE",
        pattern: "/smtps/{email}",
        handler: |s, f, c| pushi::run(targets::delete(s, f, c, TargetKind::Smtp)),
    },
    Route {
        method: "DELETE",
        pattern: "/smtps/{email}/{event}",
        handler: |s, f, c| pushi::run(targets::delete(s, f, c, TargetKind::Smtp)),
    },
    Route {
        method: "GET",
        pattern: "/web_pushes",
        handler: |s, f, c| pushi::run(targets::list(s, f, c, TargetKind::WebPush)),
    },
    Route {
        method: "POST",
        pattern: "/web_pushes",
        handler: |s, f, c| pushi::run(targets::create(s, f, c, TargetKind::WebPush)),
    },
    Route {
        method: "DELETE",
        pattern: "/web_pushes/{endpoint}",
        handler: |s, f, c| pushi::run(targets::delete(s, f, c, TargetKind::WebPush)),
    },
    Route { method: "GET", pattern: "/vapid_key", handler: |s, f, c| pushi::run(targets::vapid_key(s, f, c)) },
    Route { method: "POST", pattern: "/messaging/send", handler: |s, f, c| pushi::run(messaging::send(s, f, c)) },
    Route { method: "POST", pattern: "/messaging/apn", handler: |s, f, c| pushi::run(messaging::apn_route(s, f, c)) },
    Route {
        method: "POST",
        pattern: "/messaging/email",
        handler: |s, f, c| pushi::run(messaging::email_route(s, f, c)),
    },
    Route {
        method: "POST",
        pattern: "/messaging/webhook",
        handler: |s, f, c| pushi::run(messaging::webhook_route(s, f, c)),
    },
    Route {
        method: "POST",
        pattern: "/messaging/web_push",
        handler: |s, f, c| pushi::run(messaging::web_push_route(s, f, c)),
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
pub fn dispatch(
    st: &mut State,
    fx: &mut Effects,
    req: &Request,
    from: ConnId,
    out: &mut dyn Outbox,
) -> Option<Response> {
    // The console is never shared with other origins (its cookie is its own).
    let console = req.path() == "/console" || req.path().starts_with("/console/");
    let Some(origin) = allowed_origin(&fx.config.cors_origins, req).filter(|_| !console) else {
        return route(st, fx, req, from, out);
    };
    if req.method == "OPTIONS" && req.header("access-control-request-method").is_some() {
        if let Some(r) = preflight(req, &origin) {
            return Some(r);
        }
    }
    match route(st, fx, req, from, out) {
        Some(mut r) => {
            allow_origin(&mut r, &origin);
            Some(r)
        }
        None => {
            if fx.cors_pending.len() >= MAX_CORS_PENDING {
                fx.cors_pending.clear();
            }
            fx.cors_pending.insert(from, origin);
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
fn route(st: &mut State, fx: &mut Effects, req: &Request, from: ConnId, out: &mut dyn Outbox) -> Option<Response> {
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
        return (route.handler)(st, fx, &mut call);
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
pub fn is_admin(fx: &Effects, req: &Request) -> bool {
    let Some(token) = fx.config.admin_token.as_deref() else { return false };
    let given = req.header("authorization").and_then(|h| h.strip_prefix("Bearer ")).unwrap_or("");
    crate::protocol::auth::constant_time_eq(given.trim().as_bytes(), token.as_bytes())
}

/// Liveness and the store's state: `degraded` while writes keep failing
/// (they are being retried; live delivery goes on). Anyone sees the status;
/// the details (store location, queue, last error, connections) need the
/// operator's token or an app session.
fn health(st: &mut State, fx: &mut Effects, call: &mut Call) -> Response {
    let h = &fx.store.health;
    let store_degraded = h.degraded.load(Relaxed);
    let bus = fx.bus.connected();
    let degraded = store_degraded || bus == Some(false);
    let mut body = json!({
        "status": if degraded { "degraded" } else { "ok" },
        "service": "pushi",
        "version": env!("CARGO_PKG_VERSION"),
        "store": { "status": if store_degraded { "error" } else { "ok" } },
    });
    if let Some(up) = bus {
        // Bus down: this node still delivers to its own connections.
        body["cluster"] = json!({ "status": if up { "ok" } else { "disconnected" } });
    }
    if may_see_details(st, fx, call) {
        let h = &fx.store.health;
        let last_error = h.last_error.lock().map(|e| e.clone()).unwrap_or(None);
        body["connections"] = json!(st.sessions.len());
        body["store"]["backend"] = json!(fx.config.store.describe());
        body["store"]["queued"] = json!(h.queued.load(Relaxed));
        body["store"]["queued_bytes"] = json!(h.queued_bytes.load(Relaxed));
        body["store"]["last_error"] = json!(last_error);
    }
    Response::json(200, &body)
}

/// The operator (admin token) or an app's owner (a Pushi session).
fn may_see_details(st: &mut State, fx: &mut Effects, call: &Call) -> bool {
    is_admin(fx, call.req) || pushi::session_app(st, fx, call).is_ok()
}

/// `/health` plus `checks.handlers`: per handler subscription counts, queue
/// depth and counters. Needs the operator's token or an app session (403).
fn health_detailed(st: &mut State, fx: &mut Effects, call: &mut Call) -> Response {
    if !may_see_details(st, fx, call) {
        return Response::error(
            403,
            "/health/detailed needs PUSHI_ADMIN_TOKEN (Authorization: Bearer) or an app session",
        );
    }
    let mut r = health(st, fx, call);
    if let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&r.body) {
        v["timestamp"] = json!(crate::store::now_seconds());
        v["checks"] = json!({ "handlers": fx.deliveries_health(st) });
        r = Response::json(200, &v);
    }
    r
}

/// Readiness: 503 while the store is failing, so a balancer can look elsewhere.
fn health_ready(_: &mut State, fx: &mut Effects, _call: &mut Call) -> Option<Response> {
    Some(if fx.store.health.degraded.load(Relaxed) {
        Response::error(503, "store not ready: writes are failing and being retried")
    } else {
        Response::json(200, &json!({ "status": "ok", "ready": true }))
    })
}

fn metrics(st: &mut State, fx: &mut Effects, _call: &mut Call) -> Response {
    let gauges = [
        ("sessions", "Open Pusher sessions.", st.sessions.len() as u64),
        ("channels", "Channels held (occupied or caching).", st.channels.len() as u64),
        ("subscriptions", "Channel subscriptions.", st.sessions.iter().map(|(_, s)| s.subs.len() as u64).sum()),
        ("webhook_queue", "Web hook batches queued or in flight.", fx.webhooks.stats.queued.load(Relaxed)),
        ("webhooks_sent_total", "Web hook batches delivered.", fx.webhooks.stats.sent.load(Relaxed)),
        ("webhooks_failed_total", "Web hook batches given up on.", fx.webhooks.stats.failed.load(Relaxed)),
        ("webhooks_dropped_total", "Web hook batches dropped, queue full.", fx.webhooks.stats.dropped.load(Relaxed)),
        ("store_queue", "Store operations queued or running.", fx.store.health.queued.load(Relaxed)),
        ("store_refused_total", "Store operations refused, queue full (503).", fx.store.health.refused.load(Relaxed)),
        (
            "store_write_failures_total",
            "Failed store write attempts (retried).",
            fx.store.health.write_failures.load(Relaxed),
        ),
        ("store_degraded", "1 while store writes are failing.", fx.store.health.degraded.load(Relaxed) as u64),
    ];
    let mut text = fx.metrics.render(&gauges);
    if let Some(b) = fx.bus.stats() {
        let up = fx.bus.connected().unwrap_or(false) as u64;
        let bus = [
            ("cluster_connected", "1 while the cluster bus (Redis) is connected.", up),
            ("cluster_sent_total", "Messages published to other nodes.", b.sent),
            ("cluster_received_total", "Messages received from other nodes.", b.received),
            ("cluster_dropped_total", "Messages for other nodes not published (bus down or queue full).", b.dropped),
            ("cluster_gaps_total", "Times the bus subscription was lost and made again.", b.gaps),
        ];
        for (name, help, v) in bus {
            let _ = writeln!(text, "# HELP pushi_{name} {help}\n# TYPE pushi_{name} gauge\npushi_{name} {v}");
        }
    }
    text.push_str(&fx.deliveries_metrics());
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
