//! The web console (`/console`): a single page embedded in the binary (no
//! CDN, no build step), its sign-in, its JSON routes and its live feed.
//!
//! - Sign in with an app's id and secret (an app session: that app only) or
//!   with `PUSHI_ADMIN_TOKEN` (the operator: every app). The session is a
//!   random token in the `pushi_console` cookie (`HttpOnly`,
//!   `SameSite=Strict`, `Path=/console`); failed sign-ins are limited per
//!   client address (429).
//! - Every change (`POST /console/events`, `DELETE /console/session`) must
//!   carry the session's CSRF token in `X-Console-CSRF`, and a request whose
//!   `Origin` is not this server's is refused (403): another site can neither
//!   read nor drive a console. Console routes never get CORS headers.
//! - The live feed is the WebSocket `/console/feed?app=<id>` (the same
//!   cookie and origin rule at the upgrade): a snapshot every half second
//!   and the app's events as they pass, through the bounded tap
//!   ([`crate::effects::tap`]).
//! - Pages get a strict Content-Security-Policy: scripts and styles from
//!   this server only, nothing inline, no frames.

pub mod snapshot;

use serde_json::{json, Value};

use super::Call;
use crate::apps::AppIndex;
use crate::effects::tap::Scope;
use crate::effects::Effects;
use crate::http::{HttpError, Request, Response};
use crate::outbox::Outbox;
use crate::state::State;

/// The page, its script and its style, embedded at build time.
const PAGE: &str = include_str!("page.html");
const SCRIPT: &str = include_str!("console.js");
const STYLE: &str = include_str!("console.css");

/// Close codes of the console's feed.
pub mod code {
    /// The console session was signed out, expired, or its app deleted.
    pub const SESSION_ENDED: u16 = 1008;
}

/// The session cookie's name.
pub const COOKIE: &str = "pushi_console";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-console-csrf";

/// Headers every console answer carries.
fn harden(mut r: Response, csp: Option<String>) -> Response {
    r.headers.push(("Cache-Control", "no-store".into()));
    r.headers.push(("X-Content-Type-Options", "nosniff".into()));
    r.headers.push(("Referrer-Policy", "no-referrer".into()));
    r.headers.push(("X-Frame-Options", "DENY".into()));
    if let Some(csp) = csp {
        r.headers.push(("Content-Security-Policy", csp));
    }
    r
}

/// The page's policy: its own script and style only; the feed's WebSocket
/// on this host (named too, for browsers where `'self'` covers no `ws:`).
fn page_csp(req: &Request) -> String {
    let host = req.header("host").filter(|h| h.bytes().all(|b| b.is_ascii_alphanumeric() || b".-[]:".contains(&b)));
    let ws = host.map(|h| format!(" ws://{h} wss://{h}")).unwrap_or_default();
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'{ws}; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// `GET /console`: the page (it asks `/console/session` whether it is signed in).
pub fn page(_: &mut State, _: &mut Effects, call: &mut Call) -> Option<Response> {
    let csp = page_csp(call.req);
    Some(harden(Response::text(200, "text/html; charset=utf-8", PAGE.to_string()), Some(csp)))
}

/// `GET /console/console.js`.
pub fn script(_: &mut State, _: &mut Effects, _: &mut Call) -> Option<Response> {
    Some(harden(Response::text(200, "text/javascript; charset=utf-8", SCRIPT.to_string()), None))
}

/// `GET /console/console.css`.
pub fn style(_: &mut State, _: &mut Effects, _: &mut Call) -> Option<Response> {
    Some(harden(Response::text(200, "text/css; charset=utf-8", STYLE.to_string()), None))
}

/// A console error: `{"error", "code"}` with the console's headers.
fn refuse(status: u16, message: &str) -> Option<Response> {
    Some(harden(Response::error(status, message), None))
}

/// Whether the request's `Origin` (browsers send it on every POST, DELETE
/// and WebSocket upgrade) names this server's host; no `Origin` (a
/// non-browser client) passes, it has no ambient cookie to abuse.
pub fn same_origin(req: &Request) -> bool {
    let Some(origin) = req.header("origin") else { return true };
    let host = req.header("host").unwrap_or("");
    let Some((_, rest)) = origin.split_once("://") else { return false };
    !host.is_empty() && rest.eq_ignore_ascii_case(host)
}

/// The console session token of a request's cookie.
fn cookie_token(req: &Request) -> Option<&str> {
    req.header("cookie")?
        .split(';')
        .filter_map(|c| c.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The scope of the request's console session, if it is signed in (an app
/// session whose app has been deleted is not).
fn signed_in(st: &State, fx: &Effects, req: &Request) -> Option<(Scope, String)> {
    let session = fx.consoles.get(cookie_token(req)?)?;
    if let Scope::App(app) = session.scope {
        st.apps.by_id(&st.apps.get(app).id).filter(|&a| a == app)?;
    }
    Some((session.scope, session.csrf.clone()))
}

/// Which app a scope may look at: `wanted` (an id) for the operator or the
/// session's own app; Err(403) for another app, Err(404) for no such app.
fn app_in_scope(st: &State, scope: Scope, wanted: Option<&str>) -> Result<Option<AppIndex>, (u16, &'static str)> {
    let wanted = match wanted.filter(|w| !w.is_empty()) {
        None => {
            return Ok(match scope {
                Scope::App(app) => Some(app),
                Scope::Operator => None,
            })
        }
        Some(id) => st.apps.by_id(id),
    };
    match (scope, wanted) {
        (Scope::Operator, Some(app)) => Ok(Some(app)),
        (Scope::App(own), Some(app)) if own == app => Ok(Some(app)),
        (Scope::App(_), _) => Err((403, "this console session may only see its own app")),
        (Scope::Operator, None) => Err((404, "no such app")),
    }
}

/// What `/console/session` tells the page about its session.
fn describe(st: &State, scope: Scope, csrf: &str) -> Value {
    match scope {
        Scope::App(app) => {
            let a = st.apps.get(app);
            json!({ "scope": "app", "app_id": a.id, "apps": [{ "id": a.id, "name": a.name }], "csrf": csrf })
        }
        Scope::Operator => {
            let apps: Vec<Value> = st.apps.iter().map(|a| json!({ "id": a.id, "name": a.name })).collect();
            json!({ "scope": "operator", "app_id": null, "apps": apps, "csrf": csrf })
        }
    }
}

/// `GET /console/session`: who is signed in (401 when nobody).
pub fn session_info(st: &mut State, fx: &mut Effects, call: &mut Call) -> Option<Response> {
    match signed_in(st, fx, call.req) {
        Some((scope, csrf)) => Some(harden(Response::json(200, &describe(st, scope, &csrf)), None)),
        None => refuse(401, "not signed in"),
    }
}

/// `POST /console/session` with `{"app_id", "secret"}` or `{"token"}`:
/// signs in and sets the session cookie. 401 on wrong credentials, 429
/// after too many failures from one address, 403 from another origin.
pub fn sign_in(st: &mut State, fx: &mut Effects, call: &mut Call) -> Option<Response> {
    if !same_origin(call.req) {
        return refuse(403, "sign-in from another origin");
    }
    let ip = call.out.peer_ip(call.from);
    if fx.consoles.locked_out(ip) {
        let mut r = refuse(429, "too many failed sign-ins; wait a minute")?;
        r.headers.push(("Retry-After", "60".into()));
        return Some(r);
    }
    let Ok(body) = serde_json::from_slice::<Value>(&call.req.body) else {
        return refuse(400, "send JSON: {\"app_id\", \"secret\"} or {\"token\"}");
    };
    let text = |k: &str| body.get(k).and_then(Value::as_str).unwrap_or("");
    let scope = if !text("token").is_empty() {
        let admin = fx.config.admin_token.as_deref();
        admin
            .filter(|t| crate::support::crypto::constant_time_eq(text("token").as_bytes(), t.as_bytes()))
            .map(|_| Scope::Operator)
    } else {
        st.apps
            .by_id(text("app_id"))
            .filter(|&app| {
                let secret = &st.apps.get(app).secret;
                crate::support::crypto::constant_time_eq(text("secret").as_bytes(), secret.as_bytes())
            })
            .map(Scope::App)
    };
    let Some(scope) = scope else {
        fx.consoles.failure_allowed(ip);
        return refuse(401, "wrong app id and secret, or wrong admin token");
    };
    let (token, csrf) = fx.consoles.create(scope);
    let mut r = harden(Response::json(200, &describe(st, scope, &csrf)), None);
    let ttl = crate::effects::console_sessions::SESSION_TTL.as_secs();
    r.headers
        .push(("Set-Cookie", format!("{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={ttl}")));
    Some(r)
}

/// The session of a change request: signed in, same origin, CSRF token sent.
fn changing(st: &State, fx: &Effects, req: &Request) -> Result<Scope, Option<Response>> {
    if !same_origin(req) {
        return Err(refuse(403, "request from another origin"));
    }
    let Some((scope, csrf)) = signed_in(st, fx, req) else { return Err(refuse(401, "not signed in")) };
    let sent = req.header(CSRF_HEADER).unwrap_or("");
    if !crate::support::crypto::constant_time_eq(sent.as_bytes(), csrf.as_bytes()) {
        return Err(refuse(403, "missing or wrong X-Console-CSRF token"));
    }
    Ok(scope)
}

/// `DELETE /console/session`: signs out (the cookie is cleared).
pub fn sign_out(st: &mut State, fx: &mut Effects, call: &mut Call) -> Option<Response> {
    if let Err(r) = changing(st, fx, call.req) {
        return r;
    }
    if let Some(token) = cookie_token(call.req) {
        fx.consoles.remove(token);
    }
    let mut r = harden(Response::json(200, &json!({})), None);
    r.headers.push(("Set-Cookie", format!("{COOKIE}=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0")));
    Some(r)
}

/// `GET /console/apps/{id}`: the snapshot of one app, as the feed sends it.
pub fn app_state(st: &mut State, fx: &mut Effects, call: &mut Call) -> Option<Response> {
    let Some((scope, _)) = signed_in(st, fx, call.req) else { return refuse(401, "not signed in") };
    match app_in_scope(st, scope, call.params.first().copied()) {
        Ok(app) => Some(harden(Response::json(200, &snapshot::snapshot(st, fx, app)), None)),
        Err((status, why)) => refuse(status, why),
    }
}

/// `POST /console/events` with a Pusher trigger body (`app_id` too for the
/// operator): publishes the test event as `POST /apps/{id}/events` would.
pub fn test_event(st: &mut State, fx: &mut Effects, call: &mut Call) -> Option<Response> {
    let scope = match changing(st, fx, call.req) {
        Ok(scope) => scope,
        Err(r) => return r,
    };
    let Ok(body) = serde_json::from_slice::<Value>(&call.req.body) else {
        return refuse(400, "send a JSON body: {\"channel\", \"name\", \"data\"}");
    };
    let app = match app_in_scope(st, scope, body.get("app_id").and_then(Value::as_str)) {
        Ok(Some(app)) => app,
        Ok(None) => return refuse(400, "app_id is required"),
        Err((status, why)) => return refuse(status, why),
    };
    match super::pusher::console_trigger(st, fx, app, &body, call) {
        Ok(r) => r.map(|r| harden(r, None)),
        Err(e) => Some(harden(e.0, None)),
    }
}

/// Decides a `/console/feed` upgrade: signed in, same origin, the app in
/// scope. The grant names the app's slot (empty: every app) and the session
/// (`slot/token`): the feed ends when the session does.
pub fn feed_grant(st: &State, fx: &Effects, req: &Request) -> Result<String, HttpError> {
    if !same_origin(req) {
        return Err(HttpError::Refused(403, "console feed from another origin"));
    }
    let Some((scope, _)) = signed_in(st, fx, req) else {
        return Err(HttpError::Refused(401, "not signed in to the console"));
    };
    match app_in_scope(st, scope, req.query_param("app").as_deref()) {
        Ok(app) => {
            let token = cookie_token(req).unwrap_or_default();
            Ok(format!("{}/{token}", app.map(|a| a.0.to_string()).unwrap_or_default()))
        }
        Err((403, _)) => Err(HttpError::Refused(403, "this console session may only see its own app")),
        Err(_) => Err(HttpError::NotFound),
    }
}

/// Opens a granted feed; None when too many are open (the loop closes it).
pub fn feed_open(fx: &mut Effects, grant: &str, conn: crate::outbox::ConnId) -> Option<u32> {
    let (app, token) = grant.split_once('/')?;
    fx.tap.open(conn, app.parse::<u32>().ok().map(AppIndex), token.to_string())
}

/// End of a reactor turn with feeds open: buffered events go out, and
/// snapshots when they are due.
pub fn end_of_turn(st: &State, fx: &mut Effects, out: &mut dyn Outbox) {
    if !fx.tap.is_open() {
        return;
    }
    fx.tap.flush(out);
    if fx.tap.snapshot_due() {
        let feeds: Vec<_> = fx.tap.feeds().map(|f| (f.conn, f.app, f.dropped, f.session.clone())).collect();
        for (conn, app, dropped, session) in feeds {
            // Signed out, expired, or its app deleted: the feed ends too.
            let live = fx.consoles.get(&session).is_some_and(|s| match s.scope {
                Scope::App(a) => st.apps.by_id(&st.apps.get(a).id) == Some(a),
                Scope::Operator => true,
            });
            if !live {
                out.close(conn, code::SESSION_ENDED, "console session ended");
                continue;
            }
            let mut v = snapshot::snapshot(st, fx, app);
            v["dropped"] = json!(dropped);
            crate::effects::tap::Tap::send_snapshot(out, conn, &crate::protocol::text_frame(&v.to_string()));
        }
    }
}
