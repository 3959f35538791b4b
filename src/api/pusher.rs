//! The Pusher HTTP API (signed requests): trigger, batch trigger, channel
//! queries and user termination. Answers are exactly what the official
//! SDKs expect: `{}` on success, JSON errors with the documented statuses.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Map, Value};

use super::errors::{ApiError, PusherError};
use super::Call;
use crate::apps::AppIndex;
use crate::channels::{valid_channel_name, valid_event_name, ChannelKind};
use crate::effects::Effects;
use crate::http::Response;
use crate::ports::{Ports, RegistryOp, RegistryReply, Then};
use crate::protocol::auth::verify_api_request;
use crate::protocol::publish::publish;
use crate::protocol::publish::Publication;
use crate::protocol::session;
use crate::state::State;
use crate::store::pool::StoreReply as StoreAnswer;

/// Largest event `data`, in bytes (Pusher's documented 10 KB).
pub const MAX_EVENT_DATA_BYTES: usize = 10 * 1024;
/// Channels one trigger may name.
pub const MAX_TRIGGER_CHANNELS: usize = 100;
/// Events one batch may hold.
pub const MAX_BATCH_EVENTS: usize = 10;

/// Resolves the app of `/apps/{id}/...` and checks the request signature.
fn signed_app(st: &mut State, fx: &mut Effects, call: &Call) -> Result<AppIndex, PusherError> {
    let id = call.params[0];
    let index = st.apps.by_id(id).ok_or_else(|| PusherError::new(404, &format!("unknown app {id}")))?;
    let app = st.apps.get(index);
    if !app.enabled {
        return Err(PusherError::new(403, "app is disabled"));
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let req = call.req;
    verify_api_request(&app.key, &app.secret, &req.method, req.path(), req.query(), &req.body, now)
        .map_err(|e| PusherError::new(401, &e.message()))?;
    fx.api_allowed(index).map_err(ApiError::rate_limited)?;
    Ok(index)
}

fn socket_id_ok(id: &str) -> bool {
    let mut parts = id.split('.');
    let digits = |p: Option<&str>| p.is_some_and(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()));
    digits(parts.next()) && digits(parts.next()) && parts.next().is_none()
}

/// One event to publish, validated.
struct Trigger {
    name: String,
    channels: Vec<String>,
    data: Value,
    socket_id: Option<String>,
    info: Vec<String>,
}

fn parse_trigger(v: &Value, single_channel_only: bool) -> Result<Trigger, PusherError> {
    let bad = |m: &str| PusherError::new(400, m);
    let name = v.get("name").and_then(Value::as_str).ok_or_else(|| bad("name is required"))?;
    if !valid_event_name(name) {
        return Err(bad("invalid event name"));
    }
    let data = match v.get("data") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => return Err(bad("data is required")),
        Some(other) => other.to_string(), // lenient: JSON-encode non-string data
    };
    if data.len() > MAX_EVENT_DATA_BYTES {
        return Err(PusherError::new(413, "event data larger than 10 KB"));
    }
    let channels: Vec<String> = match (v.get("channel"), v.get("channels")) {
        (Some(Value::String(c)), _) => vec![c.clone()],
        (_, Some(Value::Array(list))) if !single_channel_only => list
            .iter()
            .map(|c| c.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("channels must be strings"))?,
        _ => return Err(bad("channel or channels is required")),
    };
    if channels.is_empty() || channels.len() > MAX_TRIGGER_CHANNELS {
        return Err(bad("between 1 and 100 channels"));
    }
    if let Some(c) = channels.iter().find(|c| !valid_channel_name(c)) {
        return Err(bad(&format!("invalid channel name {c:?}")));
    }
    let socket_id = match v.get("socket_id") {
        Some(Value::String(s)) if socket_id_ok(s) => Some(s.clone()),
        Some(Value::Null) | None => None,
        Some(_) => return Err(bad("invalid socket_id")),
    };
    let info = v.get("info").and_then(Value::as_str).map(split_info).unwrap_or_default();
    Ok(Trigger { name: name.to_string(), channels, data: Value::String(data), socket_id, info })
}

fn split_info(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_string).collect()
}

fn json_body(call: &Call) -> Result<Value, PusherError> {
    serde_json::from_slice(&call.req.body).map_err(|e| PusherError::new(400, &format!("invalid JSON body: {e}")))
}

/// `info` attributes of one channel (user_count for presence, subscription_count, cache).
fn channel_attributes(st: &State, app: AppIndex, name: &str, info: &[String]) -> Map<String, Value> {
    let key = st.channels.find(app, name);
    let channel = key.and_then(|k| st.channels.get(k));
    let mut out = Map::new();
    for attr in info {
        match attr.as_str() {
            "user_count" if ChannelKind::of(name).0 == ChannelKind::Presence => {
                out.insert(attr.clone(), json!(channel.map_or(0, |c| c.members.len())));
            }
            "subscription_count" => {
                out.insert(attr.clone(), json!(channel.map_or(0, |c| c.subscribers.len())));
            }
            "cache" if ChannelKind::of(name).1 => {
                let ttl = st.rules.cache_ttl;
                let cached = channel.and_then(|c| c.cache.as_ref()).filter(|c| c.at.elapsed() < ttl);
                let value = cached.map(|c| {
                    let message: Value = serde_json::from_str(&c.message).unwrap_or(Value::Null);
                    json!({ "event": message["event"], "data": message["data"], "ttl": ttl.saturating_sub(c.at.elapsed()).as_secs() })
                });
                out.insert(attr.clone(), value.unwrap_or(Value::Null));
            }
            _ => {}
        }
    }
    out
}

/// A Pusher API route's answer: a response, or a refusal in Pusher's shape.
pub type PusherResult = Result<Response, PusherError>;

/// Sends a [`PusherResult`], whichever side it is.
pub fn answer(result: PusherResult) -> Response {
    result.unwrap_or_else(|refusal| refusal.0)
}

/// Like [`answer`] for routes that may answer later (None).
pub fn later(result: Result<Option<Response>, PusherError>) -> Option<Response> {
    result.unwrap_or_else(|refusal| Some(refusal.0))
}

/// `POST /apps/{id}/events`
pub fn trigger(st: &mut State, fx: &mut Effects, call: &mut Call) -> Result<Option<Response>, PusherError> {
    let app = signed_app(st, fx, call)?;
    let t = parse_trigger(&json_body(call)?, false)?;
    let response = if t.info.is_empty() {
        Response::json(200, &json!({}))
    } else {
        let channels: Map<String, Value> =
            t.channels.iter().map(|c| (c.clone(), Value::Object(channel_attributes(st, app, c, &t.info)))).collect();
        Response::json(200, &json!({ "channels": channels }))
    };
    publish_all(st, fx, app, &[t], response, call)
}

/// The web console's test event: a Pusher trigger body (`name`, `channel` or
/// `channels`, `data`, optional `socket_id`) published for `app` exactly as
/// `POST /apps/{id}/events` would, once the console session is checked.
pub(crate) fn console_trigger(
    st: &mut State,
    fx: &mut Effects,
    app: AppIndex,
    body: &Value,
    call: &mut Call,
) -> Result<Option<Response>, PusherError> {
    let t = parse_trigger(body, false)?;
    publish_all(st, fx, app, &[t], Response::json(200, &json!({})), call)
}

/// Publishes validated triggers. With `PUSHI_PUSHER_PERSIST` they are stored
/// too, and the answer waits until the store has committed them.
fn publish_all(
    st: &mut State,
    fx: &mut Effects,
    app: AppIndex,
    triggers: &[Trigger],
    response: Response,
    call: &mut Call,
) -> Result<Option<Response>, PusherError> {
    let persist = fx.config.pusher_persist;
    let mut response = Some(response);
    let from = call.from;
    for (i, t) in triggers.iter().enumerate() {
        let except = t.socket_id.as_deref().and_then(|sid| st.session_by_socket_id(app, sid));
        let p = Publication {
            app,
            channels: t.channels.clone(),
            event: t.name.clone(),
            data: t.data.clone(),
            extra: Map::new(),
            persist,
            except,
            except_socket: t.socket_id.clone(),
            owner_id: None,
            once_per_socket: false,
        };
        let ack: Option<Then> = match (persist && i + 1 == triggers.len(), response.take()) {
            (true, Some(r)) => Some(Box::new(move |_, _, answer, out| {
                let r = match answer {
                    StoreAnswer::Failed(e) => PusherError::new(503, &format!("not stored: {e}")).0,
                    _ => r,
                };
                out.respond(from, r);
            })),
            (_, r) => {
                response = r;
                None
            }
        };
        publish(st, fx, p, ack, call.out).map_err(|_| ApiError::store_busy())?;
    }
    Ok(response)
}

/// `POST /apps/{id}/batch_events`
pub fn batch_trigger(st: &mut State, fx: &mut Effects, call: &mut Call) -> Result<Option<Response>, PusherError> {
    let app = signed_app(st, fx, call)?;
    let body = json_body(call)?;
    let list = body.get("batch").and_then(Value::as_array).ok_or_else(|| PusherError::new(400, "batch is required"))?;
    if list.len() > MAX_BATCH_EVENTS {
        return Err(PusherError::new(400, "at most 10 events per batch"));
    }
    // Validate everything before publishing anything.
    let events: Vec<Trigger> = list.iter().map(|e| parse_trigger(e, true)).collect::<Result<_, _>>()?;
    let response = if events.iter().all(|t| t.info.is_empty()) {
        Response::json(200, &json!({}))
    } else {
        let batch: Vec<Value> =
            events.iter().map(|t| Value::Object(channel_attributes(st, app, &t.channels[0], &t.info))).collect();
        Response::json(200, &json!({ "batch": batch }))
    };
    publish_all(st, fx, app, &events, response, call)
}

/// `GET /apps/{id}/channels?filter_by_prefix=&info=user_count`
/// (a cluster: the registry's occupied channels and counts, every node's).
pub fn channels(st: &mut State, fx: &mut Effects, call: &mut Call) -> Result<Option<Response>, PusherError> {
    let app = signed_app(st, fx, call)?;
    let prefix = call.req.query_param("filter_by_prefix").unwrap_or_default();
    let info = call.req.query_param("info").map(|s| split_info(&s)).unwrap_or_default();
    if info.iter().any(|a| a == "user_count") && !prefix.starts_with("presence-") {
        return Err(PusherError::new(400, "info=user_count needs filter_by_prefix=presence-"));
    }
    if fx.clustered() {
        let op = RegistryOp::Channels { app, prefix: prefix.clone() };
        fx.registry_for_request(op, call.from, move |st, answer| match answer {
            Ok(RegistryReply::Channels(rows)) => {
                let mut rows: Vec<_> = rows.into_iter().filter(|(n, _, _)| !n.starts_with('#')).collect();
                rows.sort_unstable();
                let list: Map<String, Value> = rows
                    .into_iter()
                    .map(|(name, subscriptions, users)| {
                        let mut attrs = channel_attributes(st, app, &name, &info);
                        cluster_counts(&mut attrs, &name, subscriptions, users);
                        (name, Value::Object(attrs))
                    })
                    .collect();
                Response::json(200, &json!({ "channels": list }))
            }
            _ => local_channels(st, app, &prefix, &info),
        });
        return Ok(None);
    }
    Ok(Some(local_channels(st, app, &prefix, &info)))
}

/// The cluster's counts in place of this node's (attributes asked for only).
fn cluster_counts(attrs: &mut Map<String, Value>, name: &str, subscriptions: u64, users: u64) {
    if attrs.contains_key("subscription_count") {
        attrs.insert("subscription_count".into(), json!(subscriptions));
    }
    if attrs.contains_key("user_count") && ChannelKind::of(name).0 == ChannelKind::Presence {
        attrs.insert("user_count".into(), json!(users));
    }
}

/// `GET /channels` from this node's state (one node, or the registry unreachable).
fn local_channels(st: &State, app: AppIndex, prefix: &str, info: &[String]) -> Response {
    let mut names: Vec<&str> = st
        .channels
        .occupied(app)
        .map(|c| c.name.as_str())
        .filter(|n| n.starts_with(prefix) && !n.starts_with('#'))
        .collect();
    names.sort_unstable();
    let list: Map<String, Value> =
        names.iter().map(|n| (n.to_string(), Value::Object(channel_attributes(st, app, n, info)))).collect();
    Response::json(200, &json!({ "channels": list }))
}

/// `GET /apps/{id}/channels/{channel}?info=user_count,subscription_count,cache`
pub fn channel(st: &mut State, fx: &mut Effects, call: &mut Call) -> Result<Option<Response>, PusherError> {
    let app = signed_app(st, fx, call)?;
    let name = crate::http::percent_decode(call.params[1]);
    if !valid_channel_name(&name) {
        return Err(PusherError::new(400, "invalid channel name"));
    }
    let info = call.req.query_param("info").map(|s| split_info(&s)).unwrap_or_default();
    if info.iter().any(|a| a == "user_count") && ChannelKind::of(&name).0 != ChannelKind::Presence {
        return Err(PusherError::new(400, "user_count is only available for presence channels"));
    }
    if fx.clustered() {
        let op = RegistryOp::Channel { app, channel: name.clone() };
        fx.registry_for_request(op, call.from, move |st, answer| match answer {
            Ok(RegistryReply::Channel { subscriptions, users }) => {
                let mut body = channel_attributes(st, app, &name, &info);
                cluster_counts(&mut body, &name, subscriptions, users);
                body.insert("occupied".into(), json!(subscriptions > 0));
                Response::json(200, &Value::Object(body))
            }
            _ => local_channel(st, app, &name, &info),
        });
        return Ok(None);
    }
    Ok(Some(local_channel(st, app, &name, &info)))
}

fn local_channel(st: &State, app: AppIndex, name: &str, info: &[String]) -> Response {
    let occupied =
        st.channels.find(app, name).and_then(|k| st.channels.get(k)).is_some_and(|c| !c.subscribers.is_empty());
    let mut body = channel_attributes(st, app, name, info);
    body.insert("occupied".into(), json!(occupied));
    Response::json(200, &Value::Object(body))
}

/// `GET /apps/{id}/channels/{channel}/users` (presence channels only).
pub fn channel_users(st: &mut State, fx: &mut Effects, call: &mut Call) -> Result<Option<Response>, PusherError> {
    let app = signed_app(st, fx, call)?;
    let name = crate::http::percent_decode(call.params[1]);
    if ChannelKind::of(&name).0 != ChannelKind::Presence {
        return Err(PusherError::new(400, "users are only available for presence channels"));
    }
    if fx.clustered() {
        let op = RegistryOp::Members { app, channel: name.clone() };
        fx.registry_for_request(op, call.from, move |st, answer| match answer {
            Ok(RegistryReply::Members { members, .. }) => {
                let users: Vec<Value> = members
                    .iter()
                    .map(|(id, m)| json!({ "id": crate::protocol::wire::id_json(id, m.numeric) }))
                    .collect();
                Response::json(200, &json!({ "users": users }))
            }
            _ => local_users(st, app, &name),
        });
        return Ok(None);
    }
    Ok(Some(local_users(st, app, &name)))
}

fn local_users(st: &State, app: AppIndex, name: &str) -> Response {
    let users: Vec<Value> = st
        .channels
        .find(app, name)
        .and_then(|k| st.channels.get(k))
        .map(|ch| {
            // Ids as the clients sent them: a number stays a number.
            ch.members.iter().map(|(id, m)| json!({ "id": crate::protocol::wire::id_json(id, m.numeric) })).collect()
        })
        .unwrap_or_default();
    Response::json(200, &json!({ "users": users }))
}

/// `POST /apps/{id}/users/{user_id}/terminate_connections`
pub fn terminate_connections(st: &mut State, fx: &mut Effects, call: &mut Call) -> PusherResult {
    let app = signed_app(st, fx, call)?;
    let user = crate::http::percent_decode(call.params[1]);
    session::terminate_user(st, fx, app, &user, call.out);
    Ok(Response::json(200, &json!({})))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_ids() {
        assert!(socket_id_ok("123.456"));
        assert!(!socket_id_ok("123"));
        assert!(!socket_id_ok("1.2.3"));
        assert!(!socket_id_ok("a.1"));
        assert!(!socket_id_ok(".1"));
    }

    #[test]
    fn trigger_validation() {
        let ok = parse_trigger(
            &json!({"name":"e","channels":["a","b"],"data":"{}","socket_id":"1.2","info":"user_count"}),
            false,
        );
        let t = ok.ok().unwrap();
        assert_eq!(t.channels, vec!["a", "b"]);
        assert_eq!(t.info, vec!["user_count"]);
        let status = |v: Value| parse_trigger(&v, false).err().unwrap().0.status;
        assert_eq!(status(json!({"channel":"a","data":"x"})), 400);
        assert_eq!(status(json!({"name":"e","channel":"a b","data":"x"})), 400);
        assert_eq!(status(json!({"name":"e","channel":"a","data":"x".repeat(10241)})), 413);
        assert_eq!(
            status(json!({"name":"e","channels":(0..101).map(|i| i.to_string()).collect::<Vec<_>>(),"data":"x"})),
            400
        );
        assert_eq!(status(json!({"name":"e","channel":"a","data":"x","socket_id":"nope"})), 400);
    }
}
