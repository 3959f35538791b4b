//! The REST router: `(method, path pattern) → handler` in one static table,
//! so later features add rows, not reactor code. Handlers are plain functions
//! over the [`Hub`] and return a [`Response`]; they never touch sockets.

pub mod pusher;

use std::sync::atomic::Ordering::Relaxed;

use serde_json::json;

use crate::http::{HttpError, Request, Response};
use crate::hub::Hub;
use crate::outbox::{ConnId, Outbox};

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

/// A handler: answers one request.
pub type Handler = fn(&mut Hub, &mut Call) -> Response;

/// One row of the route table.
pub struct Route {
    /// HTTP method.
    pub method: &'static str,
    /// Path with `{name}` placeholders for single segments.
    pub pattern: &'static str,
    /// The function that answers.
    pub handler: Handler,
}

/// Every REST route the server answers.
pub static ROUTES: &[Route] = &[
    Route { method: "GET", pattern: "/health", handler: health },
    Route { method: "GET", pattern: "/metrics", handler: metrics },
    // Pusher HTTP API (signed).
    Route { method: "POST", pattern: "/apps/{id}/events", handler: |h, c| pusher::answer(pusher::trigger(h, c)) },
    Route {
        method: "POST",
        pattern: "/apps/{id}/batch_events",
        handler: |h, c| pusher::answer(pusher::batch_trigger(h, c)),
    },
    Route { method: "GET", pattern: "/apps/{id}/channels", handler: |h, c| pusher::answer(pusher::channels(h, c)) },
    Route {
        method: "GET",
        pattern: "/apps/{id}/channels/{channel}",
        handler: |h, c| pusher::answer(pusher::channel(h, c)),
    },
    Route {
        method: "GET",
        pattern: "/apps/{id}/channels/{channel}/users",
        handler: |h, c| pusher::answer(pusher::channel_users(h, c)),
    },
    Route {
        method: "POST",
        pattern: "/apps/{id}/users/{user}/terminate_connections",
        handler: |h, c| pusher::answer(pusher::terminate_connections(h, c)),
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

/// Finds the route for a request and runs it: 404 when no pattern matches the
/// path, 405 (with `Allow`) when one does but not for this method.
pub fn dispatch(hub: &mut Hub, req: &Request, from: ConnId, out: &mut dyn Outbox) -> Response {
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
    if allowed.is_empty() {
        HttpError::NotFound.response()
    } else {
        let mut r = Response::error(405, &format!("method not allowed (allowed: {})", allowed.join(", ")));
        r.headers.push(("Allow", allowed.join(", ")));
        r
    }
}

fn health(_hub: &mut Hub, _call: &mut Call) -> Response {
    Response::json(200, &json!({ "status": "ok" }))
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
    ];
    Response::text(200, "text/plain; version=0.0.4", hub.metrics.render(&gauges))
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
