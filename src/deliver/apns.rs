//! Apple push over the token-based HTTP/2 APNs provider API: `POST
//! /3/device/<token>` with `authorization: bearer <ES256 JWT>` signed by the
//! app's `.p8` key (`apn_key`, `apn_key_id`, `apn_team_id`), `apns-topic`
//! (`apn_topic`). `apn_sandbox` picks Apple's sandbox host; `PUSHI_APNS_URL`
//! overrides both (tests, proxies). HTTP/2 comes from reqwest's blocking
//! client, which runs its own small tokio runtime on a background thread:
//! used from handler workers only, never from the reactor. Pushi's legacy
//! binary protocol with certificates (`apn_cer`) is gone at Apple and not offered.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::{app_field, es256_jwt, now_secs, DeliveryConfig, Outcome};
use crate::apps::App;

/// Apple's production host.
pub const PRODUCTION: &str = "https://api.push.apple.com";
/// Apple's sandbox host.
pub const SANDBOX: &str = "https://api.sandbox.push.apple.com";
/// Provider tokens are reused this long (Apple: refresh between 20 and 60 minutes).
const TOKEN_LIFETIME: Duration = Duration::from_secs(50 * 60);

/// What an app needs to send through APNs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApnCreds {
    /// The `.p8` signing key (PEM, PKCS#8).
    pub key: String,
    /// Its key id (`kid`).
    pub key_id: String,
    /// The team id (`iss`).
    pub team_id: String,
    /// The app's bundle id (`apns-topic`).
    pub topic: String,
    /// `https://api.push.apple.com`, the sandbox, or the override.
    pub base_url: String,
}

impl ApnCreds {
    /// From an app's fields; the error names what is missing.
    pub fn of(app: &App, config: &DeliveryConfig) -> Result<ApnCreds, String> {
        let sandbox = match app.extra.get("apn_sandbox") {
            Some(Value::Bool(b)) => *b,
            Some(Value::String(s)) => !matches!(s.as_str(), "" | "0" | "false" | "False"),
            Some(Value::Number(n)) => n.as_f64() != Some(0.0),
            _ => false,
        };
        ApnCreds::from_parts(
            app_field(app, "apn_key"),
            app_field(app, "apn_key_id"),
            app_field(app, "apn_team_id"),
            app_field(app, "apn_topic"),
            sandbox,
            config,
        )
    }

    /// From separate values (direct sends may override an app's).
    pub fn from_parts(
        key: Option<&str>,
        key_id: Option<&str>,
        team_id: Option<&str>,
        topic: Option<&str>,
        sandbox: bool,
        config: &DeliveryConfig,
    ) -> Result<ApnCreds, String> {
        let need = |v: Option<&str>, what: &str| v.map(str::to_string).ok_or_else(|| format!("No APN {what} defined"));
        let base_url = if !config.apns_url.is_empty() {
            config.apns_url.trim_end_matches('/').to_string()
        } else if sandbox {
            SANDBOX.to_string()
        } else {
            PRODUCTION.to_string()
        };
        Ok(ApnCreds {
            key: need(key, "key")?,
            key_id: need(key_id, "key id (apn_key_id)")?,
            team_id: need(team_id, "team id (apn_team_id)")?,
            topic: need(topic, "topic (apn_topic)")?,
            base_url,
        })
    }
}

/// Whether a device token looks like one (hex, 16 to 200 digits).
pub fn valid_token(t: &str) -> bool {
    (16..=200).contains(&t.len()) && t.len().is_multiple_of(2) && t.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The APNs payload of an event: its `apn`, else `push`, else `data` (first
/// key present) as the alert; an object with an `aps` key is sent as it is.
/// None when there is nothing to say.
pub fn payload_of(message: &Value) -> Option<String> {
    let value = ["apn", "push", "data"].iter().find_map(|k| message.get(*k))?;
    alert_payload(value)
}

/// The payload for one message value (direct sends).
pub fn alert_payload(value: &Value) -> Option<String> {
    match value {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::Object(o) if o.contains_key("aps") => Some(value.to_string()),
        Value::String(s) => Some(json!({ "aps": { "alert": s, "sound": "default", "badge": 0 } }).to_string()),
        other => Some(json!({ "aps": { "alert": other.to_string(), "sound": "default", "badge": 0 } }).to_string()),
    }
}

/// A provider token for these credentials, reused while fresh.
fn provider_token(c: &ApnCreds) -> Result<String, String> {
    let cache = tokens();
    let id = (c.team_id.clone(), c.key_id.clone());
    if let Some((token, at)) = cache.lock().unwrap_or_else(|p| p.into_inner()).get(&id) {
        if at.elapsed() < TOKEN_LIFETIME {
            return Ok(token.clone());
        }
    }
    let key = super::web_push::parse_secret(&c.key).map_err(|e| format!("apn_key: {e}"))?;
    let token =
        es256_jwt(&json!({ "alg": "ES256", "kid": c.key_id }), &json!({ "iss": c.team_id, "iat": now_secs() }), &key);
    cache.lock().unwrap_or_else(|p| p.into_inner()).insert(id, (token.clone(), Instant::now()));
    Ok(token)
}

type TokenCache = Mutex<HashMap<(String, String), (String, Instant)>>;

fn tokens() -> &'static TokenCache {
    static TOKENS: OnceLock<TokenCache> = OnceLock::new();
    TOKENS.get_or_init(Default::default)
}

/// Drops a token Apple rejected; the next attempt signs a new one.
fn forget_token(c: &ApnCreds) {
    tokens().lock().unwrap_or_else(|p| p.into_inner()).remove(&(c.team_id.clone(), c.key_id.clone()));
}

/// The shared HTTP/2 client (its connections are reused across sends).
fn client(timeout: Duration) -> Result<&'static reqwest::blocking::Client, String> {
    static CLIENT: OnceLock<Result<reqwest::blocking::Client, String>> = OnceLock::new();
    CLIENT
        .get_or_init(|| {
            reqwest::blocking::Client::builder()
                .http2_prior_knowledge()
                .timeout(timeout)
                .build()
                .map_err(|e| format!("cannot make the APNs client: {e}"))
        })
        .as_ref()
        .map_err(String::clone)
}

/// Sends one notification. 200: sent; 410: token gone; 429/5xx/network: retry; else failed.
pub fn send(c: &ApnCreds, token: &str, payload: &str, timeout: Duration) -> Outcome {
    let jwt = match provider_token(c) {
        Ok(t) => t,
        Err(e) => return Outcome::Failed(e),
    };
    let client = match client(timeout) {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(e),
    };
    let result = client
        .post(format!("{}/3/device/{token}", c.base_url))
        .header("authorization", format!("bearer {jwt}"))
        .header("apns-topic", &c.topic)
        .header("apns-push-type", "alert")
        .header("content-type", "application/json")
        .body(payload.to_string())
        .send();
    let response = match result {
        Ok(r) => r,
        Err(e) => return Outcome::Retry(format!("APNs {}: {e}", c.base_url)),
    };
    let status = response.status().as_u16();
    if status == 200 {
        return Outcome::Sent;
    }
    let reason = response
        .text()
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v.get("reason").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_default();
    match status {
        410 => Outcome::Gone(format!("APNs 410 {reason}: token no longer valid")),
        403 if reason == "ExpiredProviderToken" => {
            forget_token(c);
            Outcome::Retry(format!("APNs 403 {reason}"))
        }
        429 | 500..=599 => Outcome::Retry(format!("APNs {status} {reason}")),
        _ => Outcome::Failed(format!("APNs {status} {reason}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_and_tokens() {
        let p: Value = serde_json::from_str(&payload_of(&json!({"data": "d", "push": "p"})).unwrap()).unwrap();
        assert_eq!(p["aps"]["alert"], "p");
        let p: Value = serde_json::from_str(&payload_of(&json!({"apn": {"aps": {"badge": 3}}})).unwrap()).unwrap();
        assert_eq!(p, json!({"aps": {"badge": 3}}));
        assert_eq!(payload_of(&json!({"event": "e"})), None);
        assert!(valid_token(&"ab".repeat(32)) && !valid_token("xyz") && !valid_token("abc"));
    }

    #[test]
    fn missing_credentials_are_named() {
        let app = App::new("1", "k", "s", "n");
        assert_eq!(ApnCreds::of(&app, &DeliveryConfig::default()).unwrap_err(), "No APN key defined");
    }
}
