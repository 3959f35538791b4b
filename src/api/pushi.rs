//! Pushi's own REST API, as the `pushi` Python client calls it: `/login`
//! gives a session token (`sid`, sent back as a query parameter, header or
//! cookie); every other call is scoped to that token's app. Errors use
//! Pushi's shape `{"result":"error","name","message","code"}` (plus
//! `errors` for field validation). Anything that touches the store answers
//! when the store has answered; writes are acknowledged only once committed.

use std::time::Instant;

use serde_json::{json, Map, Value};

use super::errors::{ApiError, PushiError};
use super::Call;
use crate::apps::{App, AppIndex};
use crate::channels::{valid_event_name, valid_pushi_channel_name, ChannelKind};
use crate::effects::Effects;
use crate::http::{percent_decode, query_pairs, Response};
use crate::outbox::Outbox;
use crate::ports::{Ports, Then};
use crate::protocol::publish::{publish, Publication};
use crate::protocol::pushi::{alias_changed, event_json};
use crate::protocol::session;
use crate::state::State;
use crate::store::pool::{Op, StoreReply};
use crate::store::{now_seconds, SubscriptionRecord};

/// A handler's outcome: an answer now, later (None), or a refusal.
pub type PushiResult = Result<Option<Response>, PushiError>;

pub use crate::state::pushi::{LOGIN_APP_FACTOR, LOGIN_BURST_PER_ADDRESS, LOGIN_TTL, MAX_LOGINS_PER_APP};
/// Longest app name (`POST /apps`, `PUT /apps/<id>`).
pub const MAX_APP_NAME_CHARS: usize = 100;
/// Largest value of any one app field, as JSON.
pub const MAX_APP_FIELD_BYTES: usize = 16 * 1024;
/// Largest page of `GET /events`.
pub const MAX_EVENTS_PAGE: usize = 1000;
/// Most channels one `POST /events` may name (as the Pusher API).
pub const MAX_EVENT_CHANNELS: usize = 100;
/// Largest size of an event's extra fields (`push`, `subject`, custom keys), as JSON.
pub const MAX_EVENT_EXTRAS_BYTES: usize = 10 * 1024;

/// Turns a handler's outcome into the router's.
pub fn run(result: PushiResult) -> Option<Response> {
    result.unwrap_or_else(|e| Some(e.0))
}

/// Pushi's error body.
pub fn error(code: u16, name: &str, message: &str) -> PushiError {
    PushiError::new(code, name, message)
}

/// A 400 naming the field at fault (Pushi's `errors` map).
pub(crate) fn invalid(field: &str, message: &str) -> PushiError {
    PushiError(Response::json(
        400,
        &json!({
            "result": "error", "name": "ValidationError", "code": 400,
            "message": format!("{field}: {message}"), "errors": { field: [message] },
        }),
    ))
}

/// Pushi's `{"result": "success"}`.
pub(crate) fn success() -> Response {
    Response::json(200, &json!({ "result": "success" }))
}

/// Answers a store failure (reads are not retried; the client may).
pub(crate) fn unavailable(answer: &StoreReply) -> Response {
    let message = match answer {
        StoreReply::Failed(e) => format!("the store is unavailable: {e}"),
        other => format!("unexpected store answer {other:?}"),
    };
    error(503, "StoreError", &message).0
}

/// The request's fields: JSON body, then form body, then query (later ones win).
pub(crate) fn fields(call: &Call) -> Result<Map<String, Value>, PushiError> {
    let mut map = Map::new();
    let body = &call.req.body;
    let form = call.req.header("content-type").is_some_and(|t| t.starts_with("application/x-www-form-urlencoded"));
    // Some clients label JSON as a form (urllib's default): a body opening with `{` is JSON.
    let looks_json = body.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{');
    if form && !looks_json {
        let text = String::from_utf8_lossy(body);
        map.extend(query_pairs(&text).map(|(k, v)| (k, Value::String(v))));
    } else if !body.is_empty() {
        match serde_json::from_slice::<Value>(body) {
            Ok(Value::Object(m)) => map.extend(m),
            Ok(_) => return Err(error(400, "ValidationError", "the body must be a JSON object")),
            Err(e) => return Err(error(400, "ValidationError", &format!("invalid JSON body: {e}"))),
        }
    }
    map.extend(query_pairs(call.req.query()).map(|(k, v)| (k, Value::String(v))));
    Ok(map)
}

/// A required non-empty string field.
pub(crate) fn required(map: &Map<String, Value>, field: &str) -> Result<String, PushiError> {
    match map.get(field) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(Value::Number(n)) => Ok(n.to_string()),
        Some(Value::String(_)) => Err(invalid(field, "value is empty")),
        _ => Err(invalid(field, "value is not set")),
    }
}

/// Pushi's boolean casting: anything but "", "0", "false", "False" (or JSON false/null) is true.
pub(crate) fn truthy(v: Option<&Value>, default: bool) -> bool {
    match v {
        None | Some(Value::Null) => default,
        Some(Value::Bool(b)) => *b,
        Some(Value::String(s)) => !matches!(s.as_str(), "" | "0" | "false" | "False"),
        Some(Value::Number(n)) => n.as_f64() != Some(0.0),
        Some(_) => true,
    }
}

/// The session token of a request: `X-Session-Id`, query `sid`/`session_id`/`_sid`, or cookie `sid`.
fn session_token(call: &Call) -> Option<String> {
    if let Some(h) = call.req.header("x-session-id").filter(|h| !h.is_empty()) {
        return Some(h.to_string());
    }
    for name in ["sid", "session_id", "_sid"] {
        if let Some(v) = call.req.query_param(name).filter(|v| !v.is_empty()) {
            return Some(v);
        }
    }
    call.req.header("cookie").and_then(|c| {
        c.split(';').filter_map(|kv| kv.trim().split_once('=')).find(|(k, _)| *k == "sid").map(|(_, v)| v.to_string())
    })
}

/// The app of the request's session: 403 without a token, 401 for an unknown or expired one.
pub(crate) fn session_app(st: &mut State, fx: &mut Effects, call: &Call) -> Result<AppIndex, PushiError> {
    session_app_of(st, fx, call, false)
}

/// [`session_app`], optionally letting the owner of a disabled app in (to see,
/// re-enable or delete it).
fn session_app_of(st: &mut State, fx: &mut Effects, call: &Call, disabled_ok: bool) -> Result<AppIndex, PushiError> {
    let Some(token) = session_token(call) else {
        return Err(error(403, "AppierException", "User not authenticated"));
    };
    match st.pushi.logins.get_mut(&token) {
        Some((app, used)) if used.elapsed() < LOGIN_TTL => {
            *used = Instant::now();
            let app = *app;
            if !st.apps.get(app).enabled && !disabled_ok {
                return Err(error(403, "AppierException", "App is disabled"));
            }
            fx.api_allowed(app).map_err(ApiError::rate_limited)?;
            Ok(app)
        }
        _ => {
            st.pushi.remove_login(&token);
            Err(error(401, "AppierException", "Session expired or unknown; log in again"))
        }
    }
}

/// An app as Pushi's API shows it (with its secret: only its owner or creator sees it).
fn app_json(app: &App) -> Value {
    let mut v = serde_json::to_value(app).unwrap_or(Value::Null);
    v["ident"] = json!(app.id);
    v["instance"] = json!(app.id);
    // The numeric id the `pusher` SDKs need (they refuse Pushi's 64-hex ids).
    v["pusher_id"] = json!(app.pusher_id());
    v
}

fn subscription_json(s: &SubscriptionRecord) -> Value {
    json!({ "user_id": s.user_id, "event": s.event, "instance": s.app, "created": s.created, "enabled": true })
}

/// Waits for a store answer on behalf of the request.
pub(crate) fn via_store(
    fx: &mut Effects,
    app: AppIndex,
    call: &Call,
    op: Op,
    then: impl FnOnce(&mut State, &mut dyn Ports, StoreReply, &mut dyn Outbox) -> Response + 'static,
) -> PushiResult {
    fx.store_for_request(app, call.from, op, then).map_err(|_| ApiError::store_busy())?;
    Ok(None)
}

/// `GET|POST /login?app_id=&app_key=&app_secret=` → `{"token": sid}`.
/// Rate-limited per client address and per app (429 + `Retry-After`), so
/// secrets cannot be guessed at speed.
pub fn login(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let q = |n: &str| call.req.query_param(n).unwrap_or_default();
    let (id, key, secret) = (q("app_id"), q("app_key"), q("app_secret"));
    let peer = call.out.peer_ip(call.from);
    let rate = fx.config.login_rate as f64;
    st.pushi.login_allowed(peer, &id, rate).map_err(|retry| {
        crate::metrics::add(&fx.metrics.api_rate_limited, 1);
        let mut r = error(429, "RateLimitError", "too many /login attempts; retry later");
        r.0.headers.push(("Retry-After", retry.to_string()));
        r
    })?;
    let app = st.apps.by_id(&id).filter(|&a| {
        let app = st.apps.get(a);
        app.key == key && crate::protocol::auth::constant_time_eq(app.secret.as_bytes(), secret.as_bytes())
    });
    let Some(app) = app else {
        return Err(error(401, "NotAuthenticated", "No app with these app_id, app_key and app_secret"));
    };
    let token = crate::support::rand::hex_token(32);
    st.pushi.add_login(app, token.clone());
    let mut r = Response::json(200, &json!({ "token": token }));
    r.headers.push(("Set-Cookie", format!("sid={token}; Path=/; HttpOnly; Max-Age={}", LOGIN_TTL.as_secs())));
    Ok(Some(r))
}

/// `GET|POST /logout`: forgets the session token, if one is given.
pub fn logout(st: &mut State, _: &mut Effects, call: &mut Call) -> PushiResult {
    if let Some(token) = session_token(call) {
        st.pushi.remove_login(&token);
    }
    Ok(Some(success()))
}

/// `GET /apps` → the session's app.
pub fn list_apps(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    Ok(Some(Response::json(200, &json!({ "apps": [app_json(st.apps.get(app))] }))))
}

/// `POST /apps {name}` → a new app with fresh id, key and secret.
/// Allowed with the operator's token (`Authorization: Bearer`), or without it
/// when `PUSHI_APP_CREATION` is open (by default only when every listener is
/// on a loopback address); then rate-limited. At most `PUSHI_MAX_APPS` apps.
pub fn create_app(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let admin = super::is_admin(fx, call.req);
    if !admin && !fx.config.app_creation_open {
        return Err(error(
            403,
            "AppierException",
            "App creation is closed on this server (PUSHI_APP_CREATION; the operator's PUSHI_ADMIN_TOKEN may create apps)",
        ));
    }
    let f = fields(call)?;
    let name = required(&f, "name")?;
    if st.apps.len() >= fx.config.max_apps {
        return Err(error(403, "LimitError", "This server holds its maximum number of apps (PUSHI_MAX_APPS)"));
    }
    if st.apps.iter().any(|a| a.name == name) {
        return Err(invalid("name", "value is duplicate"));
    }
    let token = || crate::support::rand::hex_token(32);
    let mut app = App::new(&token(), &token(), &token(), &name);
    apply_fields(&mut app, &f)?;
    if !admin {
        let rate = fx.config.app_creation_rate as f64 / 60.0;
        let burst = (fx.config.app_creation_rate as f64).max(1.0);
        if !fx.app_creation_bucket.take(rate, burst) {
            let mut r = error(429, "RateLimitError", "too many apps created; retry later (PUSHI_APP_CREATION_RATE)");
            r.0.headers.push(("Retry-After", fx.app_creation_bucket.retry_after(rate).to_string()));
            return Err(r);
        }
    }
    let index = st.add_app(app.clone()).map_err(|e| error(500, "OperationalError", &e))?;
    via_store(fx, index, call, Op::PutApp(app.clone()), move |_, _, answer, _out| match answer {
        StoreReply::Done => Response::json(200, &app_json(&app)),
        other => unavailable(&other),
    })
}

/// `DELETE /apps/{ident}`: the owner removes the app. Its sockets are closed
/// (4003), its sessions logged out, and its stored data deleted.
pub fn delete_app(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let index = own_app(st, fx, call)?;
    let id = st.apps.get(index).id.clone();
    session::close_app(st, index, call.out);
    via_store(fx, index, call, Op::DeleteApp(id), move |_, _, answer, _out| match answer {
        StoreReply::Done => success(),
        other => unavailable(&other),
    })
}

/// Writable app fields from a request; identity fields are ignored.
fn apply_fields(app: &mut App, f: &Map<String, Value>) -> Result<(), PushiError> {
    let mut v = serde_json::to_value(&*app).map_err(|e| error(500, "OperationalError", &e.to_string()))?;
    const PROTECTED: &[&str] =
        &["id", "_id", "ident", "key", "secret", "secrets", "instance", "created", "modified", "sid", "pusher_id"];
    for (k, val) in f {
        if PROTECTED.contains(&k.as_str()) {
            continue;
        }
        if val.to_string().len() > MAX_APP_FIELD_BYTES {
            return Err(invalid(k, "value is larger than 16 KiB"));
        }
        // Form and query values arrive as strings; booleans and numbers are cast like Pushi does.
        let cast = match (k.as_str(), val) {
            ("enabled" | "client_events" | "client_publish" | "subscription_count", Value::String(_)) => {
                json!(truthy(Some(val), false))
            }
            ("max_connections", Value::String(s)) => {
                json!(s.parse::<u64>().map_err(|_| invalid(k, "value is not a whole number"))?)
            }
            _ => val.clone(),
        };
        v[k] = cast;
    }
    *app = serde_json::from_value(v).map_err(|e| error(400, "ValidationError", &format!("invalid app field: {e}")))?;
    if app.name.chars().count() > MAX_APP_NAME_CHARS {
        return Err(invalid("name", "value is longer than 100 characters"));
    }
    crate::outbound::check_webhooks(&app.webhooks).map_err(|e| invalid("webhooks", &e))?;
    Ok(())
}

/// `GET /apps/ping`: publishes `ping` on `global` (not stored).
pub fn ping(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let p = Publication {
        app,
        channels: vec!["global".into()],
        event: "ping".into(),
        data: json!("ping"),
        extra: Map::new(),
        persist: false,
        except: None,
        except_socket: None,
        owner_id: None,
        once_per_socket: true,
    };
    publish(st, fx, p, None, call.out).map_err(|_| ApiError::store_busy())?;
    Ok(Some(success()))
}

/// The session's app when the path names it; a disabled app's owner gets in
/// (to see, re-enable or delete it).
fn own_app(st: &mut State, fx: &mut Effects, call: &Call) -> Result<AppIndex, PushiError> {
    let app = session_app_of(st, fx, call, true)?;
    let asked = percent_decode(call.params[0]);
    let own = st.apps.get(app);
    if own.id != asked && own.pusher_id() != asked {
        return Err(error(404, "NotFoundError", "App not found"));
    }
    Ok(app)
}

/// `GET /apps/{ident}`
pub fn show_app(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = own_app(st, fx, call)?;
    Ok(Some(Response::json(200, &app_json(st.apps.get(app)))))
}

/// `PUT /apps/{ident}`: updates writable fields; answers the app (JSON, not Pushi's text name).
pub fn update_app(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let index = own_app(st, fx, call)?;
    let f = fields(call)?;
    let mut app = st.apps.get(index).clone();
    apply_fields(&mut app, &f)?;
    if st.apps.iter().any(|a| a.name == app.name && a.id != app.id) {
        return Err(invalid("name", "value is duplicate"));
    }
    st.apps.replace(index, app.clone());
    via_store(fx, index, call, Op::PutApp(app.clone()), move |_, _, answer, _out| match answer {
        StoreReply::Done => Response::json(200, &app_json(&app)),
        other => unavailable(&other),
    })
}

/// `GET /events?count=10[&skip=0][&channel=]` → newest first.
pub fn list_events(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let number = |n: &str, d: usize| call.req.query_param(n).and_then(|v| v.parse().ok()).unwrap_or(d);
    let op = Op::ChannelEvents {
        app: st.apps.get(app).id.clone(),
        channel: call.req.query_param("channel").filter(|c| !c.is_empty()),
        skip: number("skip", 0),
        count: number("count", 10).min(MAX_EVENTS_PAGE),
    };
    via_store(fx, app, call, op, |_, _, answer, _out| match answer {
        StoreReply::Events(events) => {
            Response::json(200, &json!({ "events": events.iter().map(event_json).collect::<Vec<_>>() }))
        }
        other => unavailable(&other),
    })
}

/// Whether handler subscriptions may name this channel.
pub(crate) fn valid_target_channel(c: &str) -> bool {
    valid_pushi_channel_name(c)
}

/// `POST /events {data, event="message", channel="global"|[...], persist=true, ...extras}`:
/// delivered at once; answered when stored (persisted events).
pub fn create_event(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let mut body = match serde_json::from_slice::<Value>(&call.req.body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(error(400, "ValidationError", "the body must be a JSON object")),
        Err(e) => return Err(error(400, "ValidationError", &format!("invalid JSON body: {e}"))),
    };
    body.remove("sid");
    let data = match body.remove("data") {
        None | Some(Value::Null) | Some(Value::Bool(false)) => None,
        Some(Value::String(s)) if s.is_empty() => None,
        Some(Value::Array(a)) if a.is_empty() => None,
        Some(Value::Object(o)) if o.is_empty() => None,
        Some(Value::Number(n)) if n.as_f64() == Some(0.0) => None,
        Some(Value::String(s)) => Some(s),
        Some(other) => Some(other.to_string()),
    };
    let Some(data) = data else { return Err(invalid("data", "No data set for event")) };
    if data.len() > fx.config.limits.max_message_bytes {
        return Err(error(413, "ValidationError", "data is larger than PUSHI_MAX_MESSAGE_BYTES"));
    }
    let event = match body.remove("event") {
        None | Some(Value::Null) => "message".to_string(),
        Some(Value::String(s)) if s.is_empty() => "message".to_string(),
        Some(Value::String(s)) if valid_event_name(&s) => s,
        Some(_) => return Err(invalid("event", "invalid event name")),
    };
    let channels: Vec<String> = match body.remove("channel") {
        None | Some(Value::Null) => vec!["global".into()],
        Some(Value::String(s)) if s.is_empty() => vec!["global".into()],
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(list)) if list.is_empty() => vec!["global".into()],
        Some(Value::Array(list)) => list
            .into_iter()
            .map(|c| c.as_str().map(str::to_string).ok_or_else(|| invalid("channel", "channels must be strings")))
            .collect::<Result<_, _>>()?,
        Some(_) => return Err(invalid("channel", "a channel name or a list of them")),
    };
    if channels.len() > MAX_EVENT_CHANNELS {
        return Err(error(413, "ValidationError", "an event may name at most 100 channels"));
    }
    if let Some(bad) = channels.iter().find(|c| !valid_target_channel(c)) {
        return Err(invalid("channel", &format!("invalid channel name {bad:?}")));
    }
    let persist = truthy(body.get("persist"), true);
    if Value::Object(body.clone()).to_string().len() > MAX_EVENT_EXTRAS_BYTES {
        return Err(error(413, "ValidationError", "the event's extra fields are larger than 10 KB"));
    }
    if persist && (body.contains_key("mid") || body.contains_key("timestamp")) {
        return Err(error(400, "ValidationError", "mid and timestamp are set by the server"));
    }
    let p = Publication {
        app,
        channels,
        event,
        data: Value::String(data),
        extra: body,
        persist,
        except: None,
        except_socket: None,
        owner_id: None,
        once_per_socket: true,
    };
    let from = call.from;
    let ack: Option<Then> = persist.then(|| {
        let then: Then = Box::new(move |_, _, answer, out| {
            let r = match answer {
                StoreReply::Done => success(),
                other => unavailable(&other),
            };
            out.respond(from, r);
        });
        then
    });
    publish(st, fx, p, ack, call.out).map_err(|_| ApiError::store_busy())?;
    Ok(if persist { None } else { Some(success()) })
}

/// `GET /subscriptions[?user_id=&event=]`
pub fn list_subscriptions(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let filter = |n: &str| call.req.query_param(n).filter(|v| !v.is_empty());
    let op = Op::Subscriptions { app: st.apps.get(app).id.clone(), user_id: filter("user_id"), event: filter("event") };
    via_store(fx, app, call, op, |_, _, answer, _out| match answer {
        StoreReply::Subscriptions(list) => {
            Response::json(200, &json!({ "subscriptions": list.iter().map(subscription_json).collect::<Vec<_>>() }))
        }
        other => unavailable(&other),
    })
}

/// `POST /subscriptions {user_id, event}`: idempotent; personal sockets of the user join at once.
pub fn create_subscription(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let f = fields(call)?;
    let (user_id, event) = (required(&f, "user_id")?, required(&f, "event")?);
    if !valid_target_channel(&event) || ChannelKind::of(&event).0 == ChannelKind::Personal {
        return Err(invalid("event", "not a channel a user can be subscribed to"));
    }
    let rec = SubscriptionRecord { app: st.apps.get(app).id.clone(), user_id, event, created: now_seconds() as i64 };
    via_store(fx, app, call, Op::AddSubscription(rec), move |st, fx, answer, out| match answer {
        StoreReply::Subscription(stored, _created) => {
            alias_changed(st, fx, app, &stored.user_id, &stored.event, true, out);
            Response::json(200, &subscription_json(&stored))
        }
        other => unavailable(&other),
    })
}

/// `DELETE /subscriptions/{user_id}/{event}[?force=1]`: 404 only with `force` when absent.
pub fn delete_subscription(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let (user_id, event) = (percent_decode(call.params[0]), percent_decode(call.params[1]));
    let force = truthy(call.req.query_param("force").map(Value::String).as_ref(), false);
    let op =
        Op::RemoveSubscription { app: st.apps.get(app).id.clone(), user_id: user_id.clone(), event: event.clone() };
    via_store(fx, app, call, op, move |st, fx, answer, out| match answer {
        StoreReply::Removed(Some(rec)) => {
            alias_changed(st, fx, app, &rec.user_id, &rec.event, false, out);
            Response::json(200, &subscription_json(&rec))
        }
        StoreReply::Removed(None) if force => error(404, "NotFoundError", "Subscription not found").0,
        StoreReply::Removed(None) => success(),
        other => unavailable(&other),
    })
}

/// `GET /sockets` → every open socket of the app with its channels.
pub fn list_sockets(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let sockets: Vec<Value> = st
        .sessions
        .iter()
        .filter(|(_, s)| s.app == app)
        .map(|(k, s)| json!({ "socket_id": s.socket_id, "channels": st.session_channels(k) }))
        .collect();
    Ok(Some(Response::json(200, &json!({ "sockets": sockets }))))
}

/// `GET|POST /sockets/{socket_id}` → its channels (empty when unknown).
pub fn show_socket(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let id = percent_decode(call.params[0]);
    let channels = st.session_by_socket_id(app, &id).map(|s| st.session_channels(s)).unwrap_or_default();
    Ok(Some(Response::json(200, &json!({ "channels": channels }))))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pushi_booleans() {
        for (v, want) in [("", false), ("0", false), ("false", false), ("False", false), ("True", true), ("1", true)] {
            assert_eq!(truthy(Some(&json!(v)), true), want, "{v:?}");
        }
        assert!(truthy(None, true));
        assert!(!truthy(Some(&json!(false)), true));
    }
}
