//! The protocol on the wire: every message the server sends is encoded
//! here (once, into a shared WebSocket frame) and every client message is
//! parsed here. Pure functions; the rules in the sibling modules decide
//! what to send.

use serde::Serialize;
use serde_json::{json, Value};

use super::code;
use crate::outbox::{ConnId, Outbox, SharedFrame};
use crate::ws::frame::{encoded, OpCode};

/// A text frame holding this JSON message.
pub fn text_frame(message: &str) -> SharedFrame {
    encoded(OpCode::Text, message.as_bytes()).into()
}

/// An event message as subscribers receive it.
#[derive(Serialize)]
struct EventMessage<'a> {
    event: &'a str,
    channel: &'a str,
    data: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    user_id: Option<&'a Value>,
}

/// Encodes `{"event","channel","data"[,"user_id"]}` (`user_id` as sent: string or number).
pub fn event_message(event: &str, channel: &str, data: &Value, user_id: Option<&Value>) -> String {
    serde_json::to_string(&EventMessage { event, channel, data, user_id }).expect("serialisable")
}

/// `pusher:` messages whose data is a JSON-encoded string (protocol convention).
pub(crate) fn internal(event: &str, channel: Option<&str>, data: &Value) -> String {
    let mut m = json!({ "event": event, "data": data.to_string() });
    if let Some(c) = channel {
        m["channel"] = json!(c);
    }
    m.to_string()
}

/// `pusher:error` carries an object.
pub(crate) fn error_message(code: Option<u16>, message: &str) -> String {
    json!({ "event": "pusher:error", "data": { "code": code, "message": message } }).to_string()
}

/// An error in the session's dialect. Pusher: `pusher:error`, unchanged.
/// Pushi-URL sessions (whose client reads `channel` from every message):
/// `pusher:error` with the `channel` it belongs to, or, when it belongs to
/// none, a close with `close_code` (4303 when None).
pub(crate) fn dialect_error(
    out: &mut dyn Outbox,
    conn: ConnId,
    pushi: bool,
    channel: Option<&str>,
    close_code: Option<u16>,
    message: &str,
) {
    match (pushi, channel) {
        (false, _) => {
            out.send(conn, &text_frame(&error_message(None, message)));
        }
        (true, Some(c)) => {
            let m = json!({ "event": "pusher:error", "data": { "code": null, "message": message }, "channel": c });
            out.send(conn, &text_frame(&m.to_string()));
        }
        (true, None) => out.close(conn, close_code.unwrap_or(code::INVALID_MESSAGE), message),
    }
}

/// `pusher:error` with a close code, then the close (Pushi-URL sessions: the close alone).
pub(crate) fn error_and_close(out: &mut dyn Outbox, conn: ConnId, pushi: bool, close_code: u16, message: &str) {
    if !pushi {
        out.send(conn, &text_frame(&error_message(Some(close_code), message)));
    }
    out.close(conn, close_code, message);
}

/// A user id as the client sent it: a number stays a number.
pub fn id_json(id: &str, numeric: bool) -> Value {
    if numeric {
        if let Ok(n) = id.parse::<serde_json::Number>() {
            return Value::Number(n);
        }
    }
    Value::String(id.to_string())
}

/// A presence member as Pushi's clients see it (`member` of
/// `pusher:member_added`/`removed`, values of `members`): its channel_data.
pub(crate) fn pushi_member(id: &str, numeric: bool, info: &Value, peer: bool) -> Value {
    let mut m = json!({ "user_id": id_json(id, numeric), "user_info": info });
    if peer {
        m["peer"] = json!(true);
    }
    m
}

/// Pushi's member event: `{"event", "member": <channel_data as a string>, "channel"}`.
pub(crate) fn pushi_member_event(event: &str, channel: &str, member: &Value) -> String {
    json!({ "event": event, "member": member.to_string(), "channel": channel }).to_string()
}

pub(crate) fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": { "type": kind, "error": error, "status": status }
    })
    .to_string()
}

/// `pusher_internal:watchlist_events` with one online or offline change.
pub(crate) fn watchlist_message(change: &str, user_ids: &[&str]) -> String {
    internal("pusher_internal:watchlist_events", None, &json!({ "events": [{ "name": change, "user_ids": user_ids }] }))
}

/// What a client message asks for; `data` stays as sent.
#[derive(Debug)]
pub(crate) struct ClientMessage {
    /// Event name.
    pub event: String,
    /// Channel, when the message names one.
    pub channel: Option<String>,
    /// `data` as sent.
    pub data: Value,
    /// Pushi publish: the sender receives its own event too.
    pub echo: bool,
    /// Pushi publish: store the event (default true).
    pub persist: bool,
}

pub(crate) fn parse_client_message(text: &str) -> Option<ClientMessage> {
    let mut v: Value = serde_json::from_str(text).ok()?;
    let event = v.get("event")?.as_str()?.to_string();
    let channel = v.get("channel").and_then(Value::as_str).map(str::to_string);
    let echo = v.get("echo").and_then(Value::as_bool).unwrap_or(false);
    let persist = v.get("persist").and_then(Value::as_bool).unwrap_or(true);
    let mut data = v.get_mut("data").map(Value::take).unwrap_or(Value::Null);
    // Some clients send data as a JSON string even for pusher: events.
    if event.starts_with("pusher:") {
        if let Some(parsed) = data.as_str().and_then(|s| serde_json::from_str::<Value>(s).ok()) {
            if parsed.is_object() {
                data = parsed;
            }
        }
    }
    Some(ClientMessage { event, channel, data, echo, persist })
}

/// Ids as Pusher SDKs send them: strings, or numbers kept as written.
pub(crate) fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_shapes() {
        let m = internal("pusher:connection_established", None, &json!({"socket_id": "1.2", "activity_timeout": 120}));
        let v: Value = serde_json::from_str(&m).unwrap();
        assert!(v["data"].is_string(), "data is a JSON-encoded string");
        let e: Value = serde_json::from_str(&error_message(Some(4001), "x")).unwrap();
        assert_eq!(e["data"]["code"], 4001, "pusher:error carries an object");
        let ev = event_message("client-a", "private-c", &json!({"k": 1}), Some(&json!("u1")));
        assert_eq!(ev, r#"{"event":"client-a","channel":"private-c","data":{"k":1},"user_id":"u1"}"#);
        let ev = event_message("client-a", "private-c", &json!("x"), Some(&id_json("7", true)));
        assert_eq!(ev, r#"{"event":"client-a","channel":"private-c","data":"x","user_id":7}"#);
        assert_eq!(id_json("7", false), json!("7"), "a string id stays a string");
        let m: Value = serde_json::from_str(&pushi_member_event(
            "pusher:member_added",
            "presence-a",
            &pushi_member("7", true, &json!({"n": 1}), false),
        ))
        .unwrap();
        assert_eq!(m["channel"], "presence-a", "Pushi's clients need a channel on every message");
        assert_eq!(serde_json::from_str::<Value>(m["member"].as_str().unwrap()).unwrap()["user_id"], 7);
    }

    #[test]
    fn client_messages() {
        let m = parse_client_message(r#"{"event":"pusher:subscribe","data":"{\"channel\":\"a\"}"}"#).unwrap();
        assert_eq!(m.data["channel"], "a", "string data of pusher: events is unwrapped");
        let m = parse_client_message(r#"{"event":"client-x","channel":"private-a","data":"{\"k\":1}"}"#).unwrap();
        assert_eq!(m.data, json!("{\"k\":1}"), "client event data is relayed as sent");
        assert!(parse_client_message("not json").is_none());
        assert!(parse_client_message(r#"{"data":1}"#).is_none());
        assert_eq!(id_string(&json!(10)).as_deref(), Some("10"));
        assert_eq!(id_string(&json!("")), None);
    }
}
