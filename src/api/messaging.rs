//! Pushi's direct messaging API (no subscriptions): `POST /messaging/send`
//! (several adapters in one call, a result per adapter) and
//! `/messaging/{apn,email,webhook,web_push}`. Every send runs on the handler
//! workers; the request is answered through the reactor once each target
//! has succeeded or failed (after one retry). Unlike Pushi, targets sent to
//! before are not skipped. A result is `{"success", "<targets>": [sent],
//! "failed": [{"target", "error"}], "error"}`; a single-adapter call that
//! delivered nothing answers 502 with that result in `details`.

use std::sync::Arc;

use serde_json::{json, Map, Value};

use super::errors::PushiError;
use super::pushi::{invalid, session_app, truthy, PushiResult};
use super::targets::{check_target, json_body};
use super::Call;
use crate::apps::AppIndex;
use crate::deliver::{apns, smtp, web_push, Creds, Delivery, DeliveryJob, Origin, TargetKind};
use crate::effects::deliveries::Slot;
use crate::effects::Effects;
use crate::outbound::{check_header, MAX_RECIPIENTS, MAX_TARGETS};
use crate::state::State;

/// What one adapter of a request comes to.
enum Built {
    /// Jobs to run, reported into a slot.
    Jobs(Slot, Vec<DeliveryJob>),
    /// A result known without sending (settings missing).
    Fixed(Value),
    /// No targets: left out of the answer.
    Empty,
}

/// A string or a list of strings (anything else: none).
fn list_of(v: Option<&Value>) -> Vec<String> {
    let mut out: Vec<String> = match v {
        Some(Value::String(s)) if !s.is_empty() => vec![s.clone()],
        Some(Value::Array(a)) => {
            a.iter().filter_map(Value::as_str).filter(|s| !s.is_empty()).map(String::from).collect()
        }
        _ => Vec::new(),
    };
    let mut seen = std::collections::HashSet::new();
    out.retain(|s| seen.insert(s.clone()));
    out
}

fn text(body: &Map<String, Value>, k: &str) -> Option<String> {
    match body.get(k) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// The first of these keys holding a value (not null, not "").
fn first<'a>(body: &'a Map<String, Value>, keys: &[&str]) -> Option<&'a Value> {
    keys.iter().filter_map(|k| body.get(*k)).find(|v| !v.is_null() && v.as_str() != Some(""))
}

/// At most `max` targets in one list of one call (outbound policy caps).
fn cap(len: usize, field: &str, max: usize, what: &str) -> Result<(), PushiError> {
    if len > max {
        return Err(invalid(field, &format!("at most {max} {what} per call")));
    }
    Ok(())
}

fn failed(error: &str) -> Value {
    json!({ "success": false, "error": error })
}

fn creds(st: &State, fx: &Effects, app: AppIndex) -> Creds {
    Creds::of(st.apps.get(app), &fx.deliveries.config)
}

fn jobs(app: AppIndex, creds: Creds, deliveries: Vec<Delivery>, kind: TargetKind, list: &'static str) -> Built {
    if deliveries.is_empty() {
        return Built::Empty;
    }
    let creds = Arc::new(creds);
    let slot = Slot::new(kind, list, deliveries.len());
    let jobs = deliveries.into_iter().map(|d| DeliveryJob::new(app, creds.clone(), d, Origin::Subscription)).collect();
    Built::Jobs(slot, jobs)
}

#[allow(clippy::too_many_arguments)]
fn email(
    st: &State,
    fx: &Effects,
    app: AppIndex,
    to: Vec<String>,
    to_field: &str,
    subject: String,
    body: String,
    html: bool,
    explicit: Option<smtp::Partial>,
) -> Result<Built, PushiError> {
    cap(to.len(), to_field, MAX_RECIPIENTS, "recipients")?;
    for address in &to {
        if !smtp::valid_address(address) {
            return Err(invalid(to_field, &format!("not an e-mail address: {address}")));
        }
    }
    if to.is_empty() {
        return Ok(Built::Empty);
    }
    let mut c = creds(st, fx, app);
    let app_url = crate::deliver::app_field(st.apps.get(app), "smtp_url");
    c.smtp = smtp::resolve(explicit, app_url, &fx.deliveries.config.smtp);
    if let Err(e) = &c.smtp {
        return Ok(Built::Fixed(failed(e)));
    }
    let deliveries =
        to.into_iter().map(|to| Delivery::Email { to, subject: subject.clone(), body: body.clone(), html }).collect();
    Ok(jobs(app, c, deliveries, TargetKind::Smtp, "recipients"))
}

fn apn(app: AppIndex, tokens: Vec<String>, field: &str, payload: String, c: Creds) -> Result<Built, PushiError> {
    cap(tokens.len(), field, MAX_TARGETS, "targets")?;
    for t in &tokens {
        check_target(TargetKind::Apn, field, t)?;
    }
    if tokens.is_empty() {
        return Ok(Built::Empty);
    }
    if let Err(e) = &c.apn {
        return Ok(Built::Fixed(failed(e)));
    }
    let payload = Arc::new(payload);
    let deliveries = tokens.into_iter().map(|token| Delivery::Apn { token, payload: payload.clone() }).collect();
    Ok(jobs(app, c, deliveries, TargetKind::Apn, "tokens"))
}

#[allow(clippy::too_many_arguments)]
fn webhook(
    st: &State,
    fx: &Effects,
    app: AppIndex,
    urls: Vec<String>,
    field: &str,
    data: &Value,
    headers: Option<&Value>,
    method: Option<&Value>,
    prefix: &str,
) -> Result<Built, PushiError> {
    cap(urls.len(), field, MAX_TARGETS, "targets")?;
    for u in &urls {
        check_target(TargetKind::Web, field, u)?;
    }
    let method = method.and_then(Value::as_str).unwrap_or("POST").to_ascii_uppercase();
    if !matches!(method.as_str(), "POST" | "PUT" | "GET" | "DELETE") {
        return Err(invalid(&format!("{prefix}method"), "one of POST, PUT, GET, DELETE"));
    }
    let headers: Vec<(String, String)> = match headers {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Object(m)) => {
            let list: Vec<(String, String)> = m
                .iter()
                .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string())))
                .collect();
            for (k, v) in &list {
                check_header(k, v).map_err(|why| invalid(&format!("{prefix}headers"), &why))?;
            }
            list
        }
        Some(_) => return Err(invalid(&format!("{prefix}headers"), "an object of header names to values")),
    };
    if urls.is_empty() {
        return Ok(Built::Empty);
    }
    let body = match method.as_str() {
        "GET" | "DELETE" => None,
        _ => Some(Arc::new(match data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })),
    };
    let deliveries = urls
        .into_iter()
        .map(|url| Delivery::Web { url, method: method.clone(), headers: headers.clone(), body: body.clone() })
        .collect();
    let mut built = jobs(app, creds(st, fx, app), deliveries, TargetKind::Web, "urls");
    if let Built::Jobs(slot, _) = &mut built {
        slot.extra.insert("method".into(), json!(method));
    }
    Ok(built)
}

/// `(endpoint, p256dh, auth)` of each subscription object.
fn push_subscriptions(list: Option<&Value>, field: &str) -> Result<Vec<(String, String, String)>, PushiError> {
    let Some(Value::Array(items)) = list else { return Ok(Vec::new()) };
    cap(items.len(), field, MAX_TARGETS, "targets")?;
    let mut out = Vec::new();
    for item in items {
        let get = |k: &str| item.get(k).and_then(Value::as_str).unwrap_or("").to_string();
        let (endpoint, p256dh, auth) = (get("endpoint"), get("p256dh"), get("auth"));
        // Browsers' PushSubscription.toJSON() nests the keys.
        let key = |k: &str| item.get("keys").and_then(|v| v.get(k)).and_then(Value::as_str).map(str::to_string);
        let p256dh = if p256dh.is_empty() { key("p256dh").unwrap_or_default() } else { p256dh };
        let auth = if auth.is_empty() { key("auth").unwrap_or_default() } else { auth };
        check_target(TargetKind::WebPush, field, &endpoint)?;
        web_push::validate_keys(&p256dh, &auth).map_err(|(k, why)| invalid(field, &format!("{k}: {why}")))?;
        out.push((endpoint, p256dh, auth));
    }
    Ok(out)
}

fn web_push_built(app: AppIndex, subs: Vec<(String, String, String)>, payload: Vec<u8>, c: Creds) -> Built {
    if subs.is_empty() {
        return Built::Empty;
    }
    if let Err(e) = &c.vapid {
        return Built::Fixed(failed(e));
    }
    if let Err(e) = c.vapid.as_deref().map_err(String::clone).and_then(web_push::parse_secret) {
        return Built::Fixed(failed(&format!("VAPID key: {e}")));
    }
    if payload.len() > web_push::MAX_PAYLOAD {
        return Built::Fixed(failed(&format!("message larger than {} bytes", web_push::MAX_PAYLOAD)));
    }
    let payload = Arc::new(payload);
    let deliveries = subs
        .into_iter()
        .map(|(endpoint, p256dh, auth)| Delivery::WebPush { endpoint, p256dh, auth, payload: payload.clone() })
        .collect();
    jobs(app, c, deliveries, TargetKind::WebPush, "endpoints")
}

/// Runs the adapters: answers when every send is done.
fn run(fx: &mut Effects, call: &Call, single: bool, built: Vec<(String, Built)>) -> PushiResult {
    let targets: usize = built
        .iter()
        .map(|(_, b)| match b {
            Built::Jobs(slot, jobs) if slot.kind != TargetKind::Smtp => jobs.len(),
            _ => 0,
        })
        .sum();
    cap(targets, "adapters", MAX_TARGETS, "targets (tokens, URLs and endpoints together)")?;
    let mut slots = Vec::new();
    let mut fixed = Map::new();
    let mut all = Vec::new();
    for (name, b) in built {
        match b {
            Built::Jobs(slot, jobs) => {
                let i = slots.len();
                slots.push(slot);
                all.extend(jobs.into_iter().map(|j| (i, j)));
            }
            Built::Fixed(v) => {
                fixed.insert(name, v);
            }
            Built::Empty => {}
        }
    }
    Ok(fx.direct_send(call.from, single, slots, fixed, all))
}

fn required_list(
    body: &Map<String, Value>,
    keys: &[&str],
    field: &str,
    message: &str,
) -> Result<Vec<String>, PushiError> {
    let list: Vec<String> = keys.iter().flat_map(|k| list_of(body.get(*k))).collect();
    if list.is_empty() {
        return Err(invalid(field, message));
    }
    Ok(list)
}

/// `POST /messaging/send {adapters, data, apn_tokens, apn_message, email_to,
/// email_subject, email_body, email_html, webhook_urls, webhook_headers,
/// webhook_method, web_push_subscriptions, web_push_message}`.
pub fn send(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let body = json_body(call)?;
    let mut adapters: Vec<String> = Vec::new();
    for a in list_of(body.get("adapters")) {
        let a = match a.to_ascii_lowercase().as_str() {
            "smtp" => "email".to_string(),
            "web" => "webhook".to_string(),
            "webpush" => "web_push".to_string(),
            other => other.to_string(),
        };
        if !adapters.contains(&a) {
            adapters.push(a);
        }
    }
    if adapters.is_empty() {
        return Err(invalid("adapters", "No adapters specified"));
    }
    let data = body.get("data").cloned().unwrap_or(Value::Null);
    let mut built = Vec::new();
    for adapter in adapters {
        let b = match adapter.as_str() {
            "apn" => {
                let message = first(&body, &["apn_message", "data"]).cloned().unwrap_or(Value::Null);
                let tokens = list_of(body.get("apn_tokens"));
                match apns::alert_payload(&message) {
                    Some(payload) => apn(app, tokens, "apn_tokens", payload, creds(st, fx, app))?,
                    None if tokens.is_empty() => Built::Empty,
                    None => return Err(invalid("apn_message", "No message specified")),
                }
            }
            "email" => {
                let subject = text(&body, "email_subject").unwrap_or_else(|| "Notification".into());
                let text_body = text(&body, "email_body").unwrap_or_else(|| match &data {
                    Value::Null => String::new(),
                    Value::String(s) => s.clone(),
                    other => serde_json::to_string_pretty(other).unwrap_or_default(),
                });
                let html = truthy(body.get("email_html"), false);
                email(st, fx, app, list_of(body.get("email_to")), "email_to", subject, text_body, html, None)?
            }
            "webhook" => {
                let data = if data.is_null() { json!({}) } else { data.clone() };
                let urls = list_of(body.get("webhook_urls"));
                webhook(
                    st,
                    fx,
                    app,
                    urls,
                    "webhook_urls",
                    &data,
                    body.get("webhook_headers"),
                    body.get("webhook_method"),
                    "webhook_",
                )?
            }
            "web_push" => {
                let subs = push_subscriptions(body.get("web_push_subscriptions"), "web_push_subscriptions")?;
                let message = first(&body, &["web_push_message", "data"]).cloned().unwrap_or(Value::Null);
                web_push_built(app, subs, web_push::payload_bytes(&message), creds(st, fx, app))
            }
            other => Built::Fixed(failed(&format!("Unknown adapter: {other}"))),
        };
        built.push((adapter, b));
    }
    run(fx, call, false, built)
}

/// `POST /messaging/apn {tokens, message[, key_data, key_id, team_id, topic, sandbox]}`.
pub fn apn_route(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let body = json_body(call)?;
    let tokens = required_list(&body, &["tokens", "token"], "tokens", "No device tokens specified")?;
    let message = first(&body, &["message"]).cloned().ok_or_else(|| invalid("message", "No message specified"))?;
    let payload = apns::alert_payload(&message).ok_or_else(|| invalid("message", "No message specified"))?;
    let mut c = creds(st, fx, app);
    let overrides = ["key_data", "key_id", "team_id", "topic", "sandbox"].iter().any(|k| body.contains_key(*k));
    if overrides {
        let a = st.apps.get(app);
        let pick =
            |k: &str, field: &str| text(&body, k).or_else(|| crate::deliver::app_field(a, field).map(String::from));
        let sandbox = match body.get("sandbox") {
            Some(v) => truthy(Some(v), false),
            None => truthy(a.extra.get("apn_sandbox"), false),
        };
        c.apn = apns::ApnCreds::from_parts(
            pick("key_data", "apn_key").as_deref(),
            pick("key_id", "apn_key_id").as_deref(),
            pick("team_id", "apn_team_id").as_deref(),
            pick("topic", "apn_topic").as_deref(),
            sandbox,
            &fx.deliveries.config,
        );
    }
    let b = apn(app, tokens, "tokens", payload, c)?;
    run(fx, call, true, vec![("apn".into(), b)])
}

/// `POST /messaging/email {to, subject, body[, html, smtp_host, smtp_port, smtp_user,
/// smtp_password, smtp_starttls, smtp_sender]}`.
pub fn email_route(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let body = json_body(call)?;
    let to = required_list(&body, &["to"], "to", "No recipient specified")?;
    let subject = text(&body, "subject").ok_or_else(|| invalid("subject", "No subject specified"))?;
    let text_body = text(&body, "body").ok_or_else(|| invalid("body", "No body specified"))?;
    let explicit = match text(&body, "smtp_host") {
        None => None,
        Some(host) => {
            let starttls = truthy(body.get("smtp_starttls"), false);
            let port = match body.get("smtp_port") {
                None | Some(Value::Null) => {
                    if starttls {
                        587
                    } else {
                        25
                    }
                }
                Some(v) => v
                    .as_u64()
                    .or_else(|| v.as_str().and_then(|s| s.parse().ok()))
                    .filter(|p| (1..=65535).contains(p))
                    .ok_or_else(|| invalid("smtp_port", "not a port"))? as u16,
            };
            Some(smtp::Partial {
                host,
                port,
                user: text(&body, "smtp_user"),
                password: text(&body, "smtp_password"),
                security: if starttls { smtp::Security::StartTls } else { smtp::Security::Plain },
                sender: text(&body, "smtp_sender"),
            })
        }
    };
    if let Some(sender) = explicit.as_ref().and_then(|p| p.sender.as_deref()) {
        if !smtp::valid_address(sender) {
            return Err(invalid("smtp_sender", "not an e-mail address"));
        }
    }
    let html = truthy(body.get("html"), false);
    let b = email(st, fx, app, to, "to", subject, text_body, html, explicit)?;
    run(fx, call, true, vec![("email".into(), b)])
}

/// `POST /messaging/webhook {urls|url, data[, headers, method]}`.
pub fn webhook_route(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let body = json_body(call)?;
    let urls = required_list(&body, &["urls", "url"], "urls", "No webhook URL specified")?;
    let data = match body.get("data") {
        None | Some(Value::Null) => return Err(invalid("data", "No data specified")),
        Some(d) => d.clone(),
    };
    let b = webhook(st, fx, app, urls, "urls", &data, body.get("headers"), body.get("method"), "")?;
    run(fx, call, true, vec![("webhook".into(), b)])
}

/// `POST /messaging/web_push {message, subscriptions | endpoint+p256dh+auth
/// [, vapid_private_key, vapid_email]}`.
pub fn web_push_route(st: &mut State, fx: &mut Effects, call: &mut Call) -> PushiResult {
    let app = session_app(st, fx, call)?;
    let body = json_body(call)?;
    let subs = if body.get("subscriptions").is_some_and(|s| s.as_array().is_some_and(|a| !a.is_empty())) {
        push_subscriptions(body.get("subscriptions"), "subscriptions")?
    } else {
        let endpoint = text(&body, "endpoint").ok_or_else(|| invalid("endpoint", "No endpoint specified"))?;
        let p256dh = text(&body, "p256dh").ok_or_else(|| invalid("p256dh", "No p256dh key specified"))?;
        let auth = text(&body, "auth").ok_or_else(|| invalid("auth", "No auth secret specified"))?;
        check_target(TargetKind::WebPush, "endpoint", &endpoint)?;
        web_push::validate_keys(&p256dh, &auth).map_err(|(k, why)| invalid(k, &why))?;
        vec![(endpoint, p256dh, auth)]
    };
    let mut c = creds(st, fx, app);
    if let Some(key) = text(&body, "vapid_private_key") {
        web_push::parse_secret(&key).map_err(|e| invalid("vapid_private_key", &e))?;
        c.vapid = Ok(key);
    }
    if let Some(email) = text(&body, "vapid_email") {
        c.vapid_email = Some(email);
    }
    let message = body.get("message").cloned().unwrap_or(Value::Null);
    let b = web_push_built(app, subs, web_push::payload_bytes(&message), c);
    run(fx, call, true, vec![("web_push".into(), b)])
}
