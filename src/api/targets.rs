//! Pushi's handler subscriptions, one set of routes per handler: `/webs`
//! (`url`), `/smtps` (`email`), `/apns` (`token`), `/web_pushes` (`endpoint`,
//! `p256dh`, `auth`: JSON body), each list / create / delete, scoped to the
//! session's app and kept in the store; plus `GET /vapid_key`.
//!
//! Creating checks the channel signature (`auth` over `<target>:<event>`)
//! for private-like channels, honours `unsubscribe` (removes the target's
//! other subscriptions first) and returns the existing record for a
//! duplicate. Deleting a missing record succeeds unless `force` is set (404).

use serde_json::{json, Map, Value};

use super::errors::{ApiError, PushiError};
use super::pushi::{
    error, fields, invalid, required, session_app, success, truthy, unavailable, valid_target_channel, via_store,
    PushiResult,
};
use super::Call;
use crate::apps::AppIndex;
use crate::channels::ChannelKind;
use crate::deliver::{apns, smtp, web_push, TargetKind};
use crate::effects::Effects;
use crate::http::{percent_decode, Response};
use crate::ports::{Ports, Then};
use crate::protocol::auth::verify_token;
use crate::state::State;
use crate::store::pool::{Op, StoreReply};
use crate::store::{now_seconds, TargetRecord};

/// Longest URL or endpoint accepted.
const MAX_URL: usize = 2048;

/// The field naming a handler's target in requests and answers.
pub fn target_field(kind: TargetKind) -> &'static str {
    match kind {
        TargetKind::Web => "url",
        TargetKind::Smtp => "email",
        TargetKind::Apn => "token",
        TargetKind::WebPush => "endpoint",
    }
}

/// A stored target as Pushi's API shows it.
pub fn target_json(t: &TargetRecord) -> Value {
    let kind = TargetKind::of(&t.kind).unwrap_or(TargetKind::Web);
    let mut v = json!({ "event": t.event, "instance": t.app, "created": t.created, "enabled": true });
    v[target_field(kind)] = json!(t.target);
    if kind == TargetKind::WebPush {
        v["p256dh"] = t.extra.get("p256dh").cloned().unwrap_or(Value::Null);
        v["auth"] = t.extra.get("auth").cloned().unwrap_or(Value::Null);
    }
    v
}

fn is_http_url(u: &str) -> bool {
    (u.starts_with("http://") || u.starts_with("https://")) && u.len() <= MAX_URL && web_push::origin(u).is_some()
}

/// Checks a target value for its handler; the 400 names the field.
pub fn check_target(kind: TargetKind, field: &str, value: &str) -> Result<(), PushiError> {
    let ok = match kind {
        TargetKind::Web | TargetKind::WebPush => is_http_url(value),
        TargetKind::Smtp => smtp::valid_address(value),
        TargetKind::Apn => apns::valid_token(value),
    };
    if ok {
        return Ok(());
    }
    Err(invalid(
        field,
        match kind {
            TargetKind::Web | TargetKind::WebPush => "an http:// or https:// URL",
            TargetKind::Smtp => "not an e-mail address",
            TargetKind::Apn => "not a device token (hex digits)",
        },
    ))
}

/// The request body as a JSON object (empty body: empty object).
pub fn json_body(call: &Call) -> Result<Map<String, Value>, PushiError> {
    if call.req.body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&call.req.body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(error(400, "ValidationError", "the body must be a JSON object")),
        Err(e) => Err(error(400, "ValidationError", &format!("invalid JSON body: {e}"))),
    }
}

/// `GET /<handler>[?<target>=&event=]`
pub fn list(st: &mut State, fx: &mut Effects, call: &mut Call, kind: TargetKind) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let filter = |n: &str| call.req.query_param(n).filter(|v| !v.is_empty());
    let op = Op::Targets {
        app: st.apps.get(app).id.clone(),
        kind: kind.name().into(),
        target: filter(target_field(kind)),
        event: filter("event"),
    };
    via_store(fx, app, call, op, |_, _, answer, _out| match answer {
        StoreReply::Targets(list) => {
            Response::json(200, &json!({ "subscriptions": list.iter().map(target_json).collect::<Vec<_>>() }))
        }
        other => unavailable(&other),
    })
}

/// Gives the app a VAPID key when it has none (stored; `then` runs once it is).
fn ensure_vapid_key(st: &mut State, app: AppIndex) -> Option<Op> {
    if crate::deliver::app_field(st.apps.get(app), "vapid_key").is_some() {
        return None;
    }
    let mut updated = st.apps.get(app).clone();
    updated.extra.insert("vapid_key".into(), json!(web_push::generate_key()));
    st.apps.replace(app, updated.clone());
    Some(Op::PutApp(updated))
}

/// `POST /<handler>`: subscribes a target to a channel's events.
pub fn create(st: &mut State, fx: &mut Effects, call: &mut Call, kind: TargetKind) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let f = fields(call)?;
    let field = target_field(kind);
    // Web Push reads its model from the JSON body only: there `auth` is the
    // browser's secret and the query's `auth` is the channel signature.
    let (target, event, extra, signature) = if kind == TargetKind::WebPush {
        let body = json_body(call)?;
        let (endpoint, event) = (required(&body, "endpoint")?, required(&body, "event")?);
        let (p256dh, secret) = (required(&body, "p256dh")?, required(&body, "auth")?);
        check_target(kind, "endpoint", &endpoint)?;
        web_push::validate_keys(&p256dh, &secret).map_err(|(field, why)| invalid(field, &why))?;
        let signature = call.req.query_param("auth").unwrap_or_default();
        (endpoint, event, json!({ "p256dh": p256dh, "auth": secret }), signature)
    } else {
        let (target, event) = (required(&f, field)?, required(&f, "event")?);
        check_target(kind, field, &target)?;
        let signature = f.get("auth").and_then(Value::as_str).unwrap_or("").to_string();
        (target, event, json!({}), signature)
    };
    if !valid_target_channel(&event) && !event.starts_with("personal-") {
        return Err(invalid("event", "not a channel name"));
    }
    let settings = st.apps.get(app);
    if ChannelKind::of(&event).0.needs_auth()
        && !verify_token(&settings.key, &settings.secret, &signature, &format!("{target}:{event}"))
    {
        return Err(error(401, "SecurityError", "Invalid signature"));
    }
    let app_id = settings.id.clone();
    if kind == TargetKind::WebPush {
        if let Some(op) = ensure_vapid_key(st, app) {
            fx.store.submit(app.0, None, op).map_err(|_| ApiError::store_busy())?;
        }
    }
    if truthy(f.get("unsubscribe"), false) {
        let op =
            Op::RemoveTargets { app: app_id.clone(), kind: kind.name().into(), target: target.clone(), event: None };
        let forget: Then = Box::new(move |st, _, answer, _out| {
            if let StoreReply::Targets(removed) = answer {
                for t in &removed {
                    st.pushi.remove_target(app, t);
                }
            }
        });
        fx.store(app, op, Some(forget)).map_err(|_| ApiError::store_busy())?;
    }
    let rec =
        TargetRecord { app: app_id, kind: kind.name().into(), target, event, extra, created: now_seconds() as i64 };
    via_store(fx, app, call, Op::AddTarget(rec), move |st, _, answer, _out| match answer {
        StoreReply::Target(stored, _) => {
            st.pushi.add_target(app, &stored);
            Response::json(200, &target_json(&stored))
        }
        other => unavailable(&other),
    })
}

/// `DELETE /<handler>/{target}` (all of a target), `DELETE /<handler>/{target}/{event}`
/// and `DELETE /web_pushes/{endpoint}?event=` (one); `?force=1`: 404 when missing.
/// The target is percent-encoded in the path.
pub fn delete(st: &mut State, fx: &mut Effects, call: &mut Call, kind: TargetKind) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let target = percent_decode(call.params[0]);
    let event = match call.params.get(1) {
        Some(e) => Some(percent_decode(e)),
        None => call.req.query_param("event").filter(|e| !e.is_empty()),
    };
    let one = event.is_some();
    let force = truthy(call.req.query_param("force").map(Value::String).as_ref(), false);
    let op = Op::RemoveTargets { app: st.apps.get(app).id.clone(), kind: kind.name().into(), target, event };
    via_store(fx, app, call, op, move |st, _, answer, _out| match answer {
        StoreReply::Targets(removed) => {
            for t in &removed {
                st.pushi.remove_target(app, t);
            }
            match (one, removed.first()) {
                (true, Some(t)) => Response::json(200, &target_json(t)),
                (true, None) if force => error(404, "NotFoundError", "Subscription not found").0,
                (true, None) => success(),
                (false, _) => Response::json(
                    200,
                    &json!({ "subscriptions": removed.iter().map(target_json).collect::<Vec<_>>() }),
                ),
            }
        }
        other => unavailable(&other),
    })
}

/// `GET /vapid_key` → `{"vapid_public_key": <base64url uncompressed point>}`;
/// an app without a key gets one (stored before the answer).
pub fn vapid_key(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let answer = move |st: &State| -> Response {
        let key = crate::deliver::app_field(st.apps.get(app), "vapid_key").unwrap_or("");
        match web_push::parse_secret(key) {
            Ok(secret) => Response::json(200, &json!({ "vapid_public_key": web_push::public_key_b64(&secret) })),
            Err(e) => error(500, "OperationalError", &format!("Failed to derive VAPID public key: {e}")).0,
        }
    };
    match ensure_vapid_key(st, app) {
        None => Ok(Some(answer(st))),
        Some(op) => via_store(fx, app, call, op, move |st, _, stored, _out| match stored {
            StoreReply::Done => answer(st),
            other => unavailable(&other),
        }),
    }
}
