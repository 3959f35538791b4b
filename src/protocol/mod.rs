//! The Pusher Channels protocol, version 7: client messages in, server
//! messages out (each encoded once into a shared WebSocket frame), and the
//! session rules: subscriptions with auth, presence, client events, cache
//! channels and user sign-in. Writes only through the [`Outbox`].

pub mod auth;
pub mod pushi;

use log::debug;
use serde::Serialize;
use serde_json::{json, Value};

use crate::apps::AppIndex;
use crate::apps::PresenceAuth;
use crate::channels::{
    source, valid_event_name, valid_pushi_channel_name, ChannelKind, Session, SignedInUser, Subscription,
};
use crate::hub::Hub;
use crate::outbox::{ConnId, Outbox, SharedFrame};
use crate::ws::frame::{encoded, OpCode};

/// Pusher close codes (sent in `pusher:error` and as the WebSocket close code).
pub mod code {
    // 4000-4099: the client must not reconnect unchanged.
    /// No app with this key.
    pub const APP_NOT_FOUND: u16 = 4001;
    /// The app is disabled.
    pub const APP_DISABLED: u16 = 4003;
    /// The app is over its connection quota.
    pub const OVER_QUOTA: u16 = 4004;
    /// No WebSocket endpoint at this path.
    pub const PATH_NOT_FOUND: u16 = 4005;
    /// Protocol version not supported.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// No protocol version given.
    pub const NO_PROTOCOL: u16 = 4008;
    /// Unauthorized (bad sign-in, terminated by the app).
    pub const UNAUTHORIZED: u16 = 4009;
    // 4100-4199: reconnect after a back-off.
    /// The server is over capacity.
    pub const OVER_CAPACITY: u16 = 4100;
    // 4200-4299: reconnect immediately.
    /// Generic: reconnect now (also used on shutdown).
    pub const RECONNECT: u16 = 4200;
    /// No pong to our ping.
    pub const PONG_TIMEOUT: u16 = 4201;
    // 4300-4399: other errors.
    /// Client events faster than the app allows.
    pub const CLIENT_EVENT_RATE: u16 = 4301;
    /// Watchlist longer than allowed; the first 100 ids are used.
    pub const WATCHLIST_LIMIT: u16 = 4302;
    /// Pushi-URL sessions only: a message that cannot be answered on a
    /// channel (not JSON, no `event`, an unknown `pusher:` event, no channel).
    /// Pushi's clients need a `channel` on every message, so this closes.
    pub const INVALID_MESSAGE: u16 = 4303;
}

/// Largest client event message, in bytes.
pub const MAX_CLIENT_EVENT_BYTES: usize = 10 * 1024;
/// Ids one watchlist may hold; more are ignored with a 4302 error.
pub const MAX_WATCHLIST: usize = 100;

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
fn error_and_close(out: &mut dyn Outbox, conn: ConnId, pushi: bool, close_code: u16, message: &str) {
    if !pushi {
        out.send(conn, &text_frame(&error_message(Some(close_code), message)));
    }
    out.close(conn, close_code, message);
}

/// A user id as the client sent it: a number stays a number.
pub(crate) fn id_json(id: &str, numeric: bool) -> Value {
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
fn pushi_member_event(event: &str, channel: &str, member: &Value) -> String {
    json!({ "event": event, "member": member.to_string(), "channel": channel }).to_string()
}

fn subscription_error(channel: &str, kind: &str, error: &str, status: u16) -> String {
    json!({
        "event": "pusher:subscription_error",
        "channel": channel,
        "data": { "type": kind, "error": error, "status": status }
    })
    .to_string()
}

/// `pusher_internal:watchlist_events` with one online or offline change.
fn watchlist_message(change: &str, user_ids: &[&str]) -> String {
    internal("pusher_internal:watchlist_events", None, &json!({ "events": [{ "name": change, "user_ids": user_ids }] }))
}

/// Removes a session from an index list; true when the list became empty (and was dropped).
fn remove_from(
    index: &mut std::collections::HashMap<(AppIndex, String), Vec<u32>>,
    key: (AppIndex, String),
    session: u32,
) -> bool {
    let Some(list) = index.get_mut(&key) else { return false };
    list.retain(|s| *s != session);
    let empty = list.is_empty();
    if empty {
        index.remove(&key);
    }
    empty
}

/// What a client message asks for; `data` stays as sent.
#[derive(Debug)]
pub(crate) struct ClientMessage {
    event: String,
    channel: Option<String>,
    data: Value,
    /// Pushi publish: the sender receives its own event too.
    echo: bool,
    /// Pushi publish: store the event (default true).
    persist: bool,
}

fn parse_client_message(text: &str) -> Option<ClientMessage> {
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
fn id_string(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

impl Hub {
    /// A new Pusher connection on `/app/<key>?protocol=N` (or Pushi's `/<key>`).
    /// Returns the session key, or None when it was refused (error sent, closing).
    pub fn pusher_open(
        &mut self,
        conn: ConnId,
        key: &str,
        protocol: Option<&str>,
        pushi: bool,
        out: &mut dyn Outbox,
    ) -> Option<u32> {
        let refuse = |out: &mut dyn Outbox, code: u16, message: &str| {
            debug!("conn {}: refusing Pusher connection: {code} {message}", conn.key);
            error_and_close(out, conn, pushi, code, message);
            None
        };
        match protocol.map(str::parse::<u32>) {
            None => return refuse(out, code::NO_PROTOCOL, "No protocol version supplied"),
            Some(Ok(4..=7)) => {}
            Some(_) => return refuse(out, code::UNSUPPORTED_PROTOCOL, "Unsupported protocol version"),
        }
        let Some(app) = self.apps.by_key(key) else {
            return refuse(out, code::APP_NOT_FOUND, &format!("Could not find app by key {key}"));
        };
        let settings = self.apps.get(app);
        if !settings.enabled {
            return refuse(out, code::APP_DISABLED, "Application is disabled");
        }
        if settings.max_connections > 0 && self.app_connections[app as usize] >= settings.max_connections {
            return refuse(out, code::OVER_QUOTA, "Application is over connection quota");
        }
        let socket_id = self.next_socket_id(self.sessions.vacant_key());
        let established = internal(
            "pusher:connection_established",
            None,
            &json!({ "socket_id": socket_id, "activity_timeout": self.config.limits.activity_timeout.as_secs() }),
        );
        out.send(conn, &text_frame(&established));
        self.app_connections[app as usize] += 1;
        let session = self.sessions.insert(Session {
            conn,
            app,
            socket_id,
            subs: Vec::new(),
            user: None,
            watchlist: Vec::new(),
            client_window: 0,
            client_count: 0,
            pushi,
            personal: Vec::new(),
        });
        Some(session as u32)
    }

    /// One text message from a Pusher session.
    pub fn pusher_message(&mut self, session: u32, text: &str, out: &mut dyn Outbox) {
        let (conn, pushi) = (self.sessions[session as usize].conn, self.sessions[session as usize].pushi);
        let Some(msg) = parse_client_message(text) else {
            let m = "Invalid message format: expected JSON with an event";
            return dialect_error(out, conn, pushi, None, None, m);
        };
        let sent_by_client = !msg.event.starts_with("pusher:") && !msg.event.starts_with("pusher_internal:");
        if sent_by_client && !valid_event_name(&msg.event) {
            let m = "Event name must be 1 to 200 characters, without control characters";
            return dialect_error(out, conn, pushi, msg.channel.as_deref(), None, m);
        }
        match msg.event.as_str() {
            "pusher:ping" => {
                out.send(conn, &text_frame(&internal("pusher:pong", None, &json!({}))));
            }
            "pusher:pong" => {} // any message counts as activity; the reactor noted it
            "pusher:subscribe" => self.subscribe(session, &msg.data, out),
            "pusher:unsubscribe" => {
                if let Some(channel) = msg.data.get("channel").and_then(Value::as_str) {
                    self.unsubscribe(session, channel, out);
                }
            }
            "pusher:signin" => self.signin(session, &msg.data, out),
            "pusher:latest" => self.latest(session, &msg.data, out),
            e if e.starts_with("client-") => self.client_event(session, msg, text.len(), out),
            e if !e.starts_with("pusher:") && !e.starts_with("pusher_internal:") => {
                self.socket_publish(session, msg, text.len(), out)
            }
            e => {
                let m = format!("Unsupported event {e:?}");
                dialect_error(out, conn, pushi, msg.channel.as_deref(), None, &m);
            }
        }
    }

    /// The connection of a session is gone: leave every channel.
    pub fn pusher_closed(&mut self, session: u32, out: &mut dyn Outbox) {
        let Some(s) = self.sessions.try_remove(session as usize) else { return };
        self.app_connections[s.app as usize] -= 1;
        self.forget_personal(session, s.app, &s.personal);
        for sub in &s.subs {
            self.leave_channel(sub, session, out);
        }
        for watched in &s.watchlist {
            remove_from(&mut self.watchers, (s.app, watched.clone()), session);
        }
        if let Some(user) = &s.user {
            if remove_from(&mut self.users, (s.app, user.id.clone()), session) {
                self.notify_watchers(s.app, &user.id, "offline", out);
            }
        }
    }

    /// Tells every session watching `user_id` that it went online or offline.
    fn notify_watchers(&self, app: AppIndex, user_id: &str, change: &str, out: &mut dyn Outbox) {
        let Some(list) = self.watchers.get(&(app, user_id.to_string())) else { return };
        let m = watchlist_message(change, &[user_id]);
        let frame = text_frame(&m);
        for &s in list {
            out.send(self.sessions[s as usize].conn, &frame);
        }
    }

    /// Sends `pusher:ping` to a silent session (the reactor closes it if nothing comes back).
    pub fn pusher_ping(&mut self, session: u32, out: &mut dyn Outbox) {
        let conn = self.sessions[session as usize].conn;
        out.send(conn, &text_frame(&internal("pusher:ping", None, &json!({}))));
    }

    /// `<session key>.<random>`: Pusher's `digits.digits` form, and the
    /// session is found from it without an index (the whole id is compared).
    fn next_socket_id(&mut self, session: usize) -> String {
        // From the OS CSPRNG, so no socket id reveals another.
        format!("{}.{}", session, crate::support::rand::u64() % 1_000_000_000)
    }

    /// The session with this socket_id in this app.
    pub fn session_by_socket_id(&self, app: AppIndex, socket_id: &str) -> Option<u32> {
        let key: usize = socket_id.split_once('.')?.0.parse().ok()?;
        let s = self.sessions.get(key)?;
        (s.app == app && s.socket_id == socket_id).then_some(key as u32)
    }

    fn subscribe(&mut self, session: u32, data: &Value, out: &mut dyn Outbox) {
        let s = &self.sessions[session as usize];
        let (conn, app, socket_id, pushi) = (s.conn, s.app, s.socket_id.clone(), s.pushi);
        let Some(channel) = data.get("channel").and_then(Value::as_str) else {
            return dialect_error(out, conn, pushi, None, None, "pusher:subscribe needs data.channel");
        };
        let reject = |out: &mut dyn Outbox, kind: &str, error: &str, status: u16| {
            debug!("conn {}: subscription to {channel} refused: {error}", conn.key);
            out.send(conn, &text_frame(&subscription_error(channel, kind, error, status)));
        };
        if !valid_pushi_channel_name(channel) {
            return reject(out, "InvalidChannel", "Invalid channel name", 400);
        }
        let (kind, cached) = ChannelKind::of(channel);
        let settings = self.apps.get(app);
        let auth = data.get("auth").and_then(Value::as_str).unwrap_or("");
        // A JSON string (Pusher) or an object (Pushi's clients; signed as its compact JSON, keys sorted).
        let channel_data_text = match data.get("channel_data") {
            Some(Value::String(s)) => Some(s.clone()),
            Some(o @ Value::Object(_)) => Some(o.to_string()),
            _ => None,
        };
        let channel_data = channel_data_text.as_deref();
        // (canonical id, user_info, id sent as a number)
        let mut member: Option<(String, Value, bool)> = None;
        let mut peer_flag = false;
        match kind {
            ChannelKind::Public => {}
            ChannelKind::Personal => {
                let user = &channel["personal-".len()..];
                let signed_in = self.sessions[session as usize].user.as_ref().is_some_and(|u| u.id == user);
                let message = auth::channel_message(&socket_id, channel, None);
                if user.is_empty() {
                    return reject(out, "InvalidChannel", "personal- needs a user id", 400);
                }
                if !signed_in && !auth::verify_token(&settings.key, &settings.secret, auth, &message) {
                    return reject(out, "AuthError", "Invalid signature", 401);
                }
                return self.subscribe_personal(session, user, out);
            }
            ChannelKind::Peer => {
                let message = auth::channel_message(&socket_id, channel, None);
                if !self.peer_eligible(session, channel)
                    && !auth::verify_token(&settings.key, &settings.secret, auth, &message)
                {
                    return reject(out, "AuthError", "Not one of this peer channel's pair", 403);
                }
                self.join_silently(session, channel, source::DIRECT);
                let reply = if pushi { self.pushi_info(app, channel, Some(&[])) } else { json!({}) };
                let m = internal("pusher_internal:subscription_succeeded", Some(channel), &reply);
                out.send(conn, &text_frame(&m));
                return;
            }
            ChannelKind::ServerToUser => {
                let user = self.sessions[session as usize].user.as_ref().map(|u| u.id.as_str());
                if user != channel.strip_prefix("#server-to-user-") {
                    return reject(out, "AuthError", "Sign in as this user first", 401);
                }
            }
            ChannelKind::Private | ChannelKind::PrivateEncrypted => {
                let message = auth::channel_message(&socket_id, channel, None);
                if !auth::verify_token(&settings.key, &settings.secret, auth, &message) {
                    return reject(out, "AuthError", "Invalid signature", 401);
                }
            }
            ChannelKind::Presence => {
                // Signed-in connections may omit channel_data (pusher-js 8): the user's data is used.
                let signed_user = self.sessions[session as usize].user.clone();
                let (signed, parsed) = match (channel_data, &signed_user) {
                    (Some(d), _) => (Some(d), serde_json::from_str::<Value>(d).ok()),
                    (None, Some(u)) => {
                        let user = serde_json::from_str::<Value>(&u.data).unwrap_or(Value::Null);
                        let id = user.get("id").cloned().unwrap_or_else(|| json!(u.id));
                        let info = user.get("user_info").cloned().unwrap_or(Value::Null);
                        (None, Some(json!({ "user_id": id, "user_info": info })))
                    }
                    (None, None) => return reject(out, "AuthError", "Presence channels need channel_data", 401),
                };
                let covers_data = auth::channel_message(&socket_id, channel, signed);
                let valid = auth::verify_token(&settings.key, &settings.secret, auth, &covers_data)
                    || (settings.presence_auth == PresenceAuth::Channel
                        && auth::verify_token(
                            &settings.key,
                            &settings.secret,
                            auth,
                            &auth::channel_message(&socket_id, channel, None),
                        ));
                if !valid {
                    return reject(out, "AuthError", "Invalid signature", 401);
                }
                let Some(parsed) = parsed else { return reject(out, "AuthError", "channel_data is not JSON", 400) };
                let Some(id) = parsed.get("user_id") else {
                    return reject(out, "AuthError", "channel_data needs a user_id", 400);
                };
                let Some(user_id) = id_string(id) else {
                    return reject(out, "AuthError", "channel_data needs a user_id", 400);
                };
                let info = parsed.get("user_info").cloned().unwrap_or(Value::Null);
                peer_flag = parsed.get("peer").and_then(Value::as_bool).unwrap_or(false);
                if peer_flag && !pushi::peer_safe(&user_id) {
                    // `peer-<base>:<a>&<b>` would be ambiguous (user `a&b` could read `a`/`b&c`'s pair).
                    return reject(out, "InvalidUserId", "Peer user ids may not contain '&' or ':'", 400);
                }
                member = Some((user_id, info, id.is_number()));
            }
        }
        if kind == ChannelKind::Presence {
            let key = self.channels.find(app, channel);
            let full = key.is_some_and(|k| {
                let members = &self.channels.get(k).members;
                let uid = &member.as_ref().expect("presence has a member").0;
                members.len() >= self.config.limits.max_presence_members && !members.contains_key(uid)
            });
            if full {
                return reject(out, "LimitReached", "Presence channel is full", code::OVER_CAPACITY);
            }
        }
        let existing = self.channels.find(app, channel);
        let s = &self.sessions[session as usize];
        let already = existing.is_some_and(|k| s.subscription(k).is_some());
        if !already && s.subs.len() + s.personal.len() >= self.config.limits.max_channels_per_connection {
            return reject(out, "LimitReached", "Too many channels on this connection", 429);
        }
        let key = self.channels.find_or_create(app, channel);
        if let Some(sub) = self.sessions[session as usize].subs.iter_mut().find(|sub| sub.channel == key) {
            // Already subscribed: confirm again, keeping the one membership.
            sub.sources |= source::DIRECT;
            let m = internal("pusher_internal:subscription_succeeded", Some(channel), &self.reply_data(key, pushi));
            out.send(conn, &text_frame(&m));
            return;
        }
        let member_ref = member.as_ref().map(|(id, info, _)| (id.as_str(), info.clone()));
        let (slot, first_join) = self.channels.join(key, session, member_ref);
        if self.channels.get(key).subscribers.len() == 1 {
            self.webhooks.push(&self.apps, app, json!({ "name": "channel_occupied", "channel": channel }));
        }
        if let (true, Some((uid, _, numeric))) = (first_join, &member) {
            if let Some(m) = self.channels.get_mut(key).members.get_mut(uid) {
                m.numeric = *numeric;
            }
            let user_id = id_json(uid, *numeric);
            self.webhooks.push(
                &self.apps,
                app,
                json!({ "name": "member_added", "channel": channel, "user_id": user_id }),
            );
        }
        let user_id = member.as_ref().map(|(id, _, _)| id.clone());
        let mut sub = Subscription::new(key, slot, user_id.clone(), source::DIRECT);
        sub.peer = peer_flag;
        sub.user_numeric = member.as_ref().is_some_and(|(_, _, numeric)| *numeric);
        self.sessions[session as usize].subs.push(sub);

        let reply_data = self.reply_data(key, pushi);
        out.send(conn, &text_frame(&internal("pusher_internal:subscription_succeeded", Some(channel), &reply_data)));
        if let (true, Some((uid, info, numeric))) = (first_join, &member) {
            let added = internal(
                "pusher_internal:member_added",
                Some(channel),
                &json!({ "user_id": id_json(uid, *numeric), "user_info": info }),
            );
            let pushi_added =
                pushi_member_event("pusher:member_added", channel, &pushi_member(uid, *numeric, info, peer_flag));
            self.broadcast_dialects(key, &added, &pushi_added, Some(session), out);
        }
        if cached {
            let ch = self.channels.get(key);
            let message = match &ch.cache {
                Some(c) if c.at.elapsed() < self.config.cache_ttl => c.message.clone(),
                _ => {
                    self.webhooks.push(&self.apps, app, json!({ "name": "cache_miss", "channel": channel }));
                    json!({ "event": "pusher:cache_miss", "channel": channel }).to_string()
                }
            };
            out.send(conn, &text_frame(&message));
        }
        if self.apps.get(app).subscription_count && kind != ChannelKind::Presence {
            self.send_subscription_count(key, out);
        }
        if let Some(uid) = &user_id {
            self.peer_join(session, key, uid, peer_flag);
        }
    }

    /// `subscription_succeeded` data: Pushi's `{name, members, alias, events}`
    /// for Pushi-URL sessions, else Pusher's member list (presence) or `{}`.
    fn reply_data(&self, key: u32, pushi: bool) -> Value {
        if pushi {
            let ch = self.channels.get(key);
            return self.pushi_info(ch.app, &ch.name, Some(&[]));
        }
        self.subscription_data(key)
    }

    /// `subscription_succeeded` data: the member list for presence, else `{}`.
    fn subscription_data(&self, key: u32) -> Value {
        let ch = self.channels.get(key);
        if ChannelKind::of(&ch.name).0 != ChannelKind::Presence {
            return json!({});
        }
        let ids: Vec<Value> = ch.members.iter().map(|(k, m)| id_json(k, m.numeric)).collect();
        let hash: serde_json::Map<String, Value> =
            ch.members.iter().map(|(k, m)| (k.clone(), m.info.clone())).collect();
        json!({ "presence": { "ids": ids, "hash": hash, "count": ch.members.len() } })
    }

    fn send_subscription_count(&self, key: u32, out: &mut dyn Outbox) {
        let ch = self.channels.get(key);
        let m = internal(
            "pusher_internal:subscription_count",
            Some(&ch.name),
            &json!({ "subscription_count": ch.subscribers.len() }),
        );
        self.broadcast(key, &text_frame(&m), None, out);
    }

    fn unsubscribe(&mut self, session: u32, channel: &str, out: &mut dyn Outbox) {
        let s = &self.sessions[session as usize];
        let (app, conn, pushi) = (s.app, s.conn, s.pushi);
        if let Some(user) = pushi::personal_user(channel) {
            self.unsubscribe_personal(session, user, out);
        } else if let Some(key) = self.channels.find(app, channel) {
            self.leave_source(session, key, source::DIRECT, out);
        }
        if pushi {
            // Pushi's clients expect a confirmation (Pusher's ignore it).
            let info = self.pushi_info(app, channel, Some(&[]));
            out.send(conn, &text_frame(&internal("pusher_internal:unsubscription_succeeded", Some(channel), &info)));
        }
    }

    pub(crate) fn leave_channel(&mut self, sub: &Subscription, session: u32, out: &mut dyn Outbox) {
        let ch = self.channels.get(sub.channel);
        let (name, app) = (ch.name.clone(), ch.app);
        // The leaver's user_info, for Pushi's `member` (gone from the channel once it has left).
        let info = sub.user_id.as_ref().and_then(|u| ch.members.get(u)).map(|m| m.info.clone());
        let left = self.channels.leave(sub, self.config.cache_ttl);
        if let Some(uid) = &sub.user_id {
            self.peer_leave(Some(session), app, &name, uid, left.member_removed.is_some(), out);
        }
        if let Some(uid) = &left.member_removed {
            let user_id = id_json(uid, sub.user_numeric);
            self.webhooks.push(
                &self.apps,
                app,
                json!({ "name": "member_removed", "channel": name, "user_id": user_id }),
            );
        }
        if left.vacated {
            self.webhooks.push(&self.apps, app, json!({ "name": "channel_vacated", "channel": name }));
        }
        if let Some(uid) = left.member_removed {
            if !left.vacated {
                let m = internal(
                    "pusher_internal:member_removed",
                    Some(&name),
                    &json!({ "user_id": id_json(&uid, sub.user_numeric) }),
                );
                let member = pushi_member(&uid, sub.user_numeric, &info.unwrap_or(Value::Null), sub.peer);
                let pushi_removed = pushi_member_event("pusher:member_removed", &name, &member);
                self.broadcast_dialects(sub.channel, &m, &pushi_removed, None, out);
            }
        }
        if !left.vacated && self.apps.get(app).subscription_count && ChannelKind::of(&name).0 != ChannelKind::Presence {
            self.send_subscription_count(sub.channel, out);
        }
    }

    fn client_event(&mut self, session: u32, msg: ClientMessage, size: usize, out: &mut dyn Outbox) {
        let s = &self.sessions[session as usize];
        let (conn, app, pushi) = (s.conn, s.app, s.pushi);
        let fail = |out: &mut dyn Outbox, text: &str| {
            dialect_error(out, conn, pushi, msg.channel.as_deref(), None, text);
        };
        if !self.apps.get(app).client_events {
            return fail(out, "Client events are not enabled for this app");
        }
        if size > MAX_CLIENT_EVENT_BYTES {
            return fail(out, "Client event larger than 10 KB");
        }
        if !self.within_client_rate(session, out) {
            return;
        }
        let Some(channel) = msg.channel.as_deref() else { return fail(out, "Client event without a channel") };
        let kind = ChannelKind::of(channel).0;
        if !matches!(kind, ChannelKind::Private | ChannelKind::Presence | ChannelKind::Peer) {
            return fail(out, "Client events are only allowed on private, presence and peer channels");
        }
        let s = &self.sessions[session as usize];
        let sub = self.channels.find(app, channel).and_then(|k| s.subscription(k).cloned());
        let Some(sub) = sub else { return fail(out, "Client event on a channel this connection is not subscribed to") };
        let user_id = sub.user_id.as_deref().map(|u| id_json(u, sub.user_numeric));
        let message = event_message(&msg.event, channel, &msg.data, user_id.as_ref());
        self.broadcast(sub.channel, &text_frame(&message), Some(session), out);
        if !self.apps.get(app).webhooks.is_empty() {
            let data = match &msg.data {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            let mut hook = json!({
                "name": "client_event", "channel": channel, "event": msg.event, "data": data,
                "socket_id": self.sessions[session as usize].socket_id,
            });
            if let Some(uid) = user_id {
                hook["user_id"] = uid;
            }
            self.webhooks.push(&self.apps, app, hook);
        }
    }

    /// Counts one client-sent event; false (and the connection closed with
    /// 4301) when the session is over the per-second rate.
    pub(crate) fn within_client_rate(&mut self, session: u32, out: &mut dyn Outbox) -> bool {
        let now_sec = self.started.elapsed().as_secs();
        let s = &mut self.sessions[session as usize];
        if s.client_window != now_sec {
            s.client_window = now_sec;
            s.client_count = 0;
        }
        s.client_count += 1;
        if s.client_count > self.config.limits.client_event_rate {
            let text = "Client event rejected due to rate limit";
            error_and_close(out, s.conn, s.pushi, code::CLIENT_EVENT_RATE, text);
            return false;
        }
        true
    }

    fn signin(&mut self, session: u32, data: &Value, out: &mut dyn Outbox) {
        let s = &self.sessions[session as usize];
        let (conn, app) = (s.conn, s.app);
        let settings = self.apps.get(app);
        let auth = data.get("auth").and_then(Value::as_str).unwrap_or("");
        let user_data = data.get("user_data").and_then(Value::as_str).unwrap_or("");
        let message = auth::signin_message(&s.socket_id, user_data);
        let user_id = serde_json::from_str::<Value>(user_data).ok().and_then(|v| v.get("id").and_then(id_string));
        let failure = if !auth::verify_token(&settings.key, &settings.secret, auth, &message) {
            Some("Invalid signature")
        } else if user_id.is_none() {
            Some("user_data needs an id")
        } else if s.user.as_ref().is_some_and(|u| Some(&u.id) != user_id.as_ref()) {
            Some("Already signed in as another user")
        } else {
            None
        };
        if let Some(why) = failure {
            error_and_close(out, conn, s.pushi, code::UNAUTHORIZED, why);
            return;
        }
        let id = user_id.expect("checked");
        let list = self.users.entry((app, id.clone())).or_default();
        let came_online = list.is_empty();
        if !list.contains(&session) {
            list.push(session);
        }
        let already = self.sessions[session as usize].user.is_some();
        self.sessions[session as usize].user = Some(SignedInUser { id: id.clone(), data: user_data.to_string() });
        out.send(conn, &text_frame(&internal("pusher:signin_success", None, &json!({ "user_data": user_data }))));
        if came_online {
            self.notify_watchers(app, &id, "online", out);
        }
        if already {
            return;
        }
        let parsed: Value = serde_json::from_str(user_data).unwrap_or(Value::Null);
        let mut watchlist: Vec<String> = parsed
            .get("watchlist")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(id_string).collect())
            .unwrap_or_default();
        if watchlist.len() > MAX_WATCHLIST {
            watchlist.truncate(MAX_WATCHLIST);
            let text = "Watchlist limit exceeded: only the first 100 ids are watched";
            out.send(conn, &text_frame(&error_message(Some(code::WATCHLIST_LIMIT), text)));
        }
        for watched in &watchlist {
            self.watchers.entry((app, watched.clone())).or_default().push(session);
        }
        let online: Vec<&str> =
            watchlist.iter().filter(|w| self.users.contains_key(&(app, (*w).clone()))).map(String::as_str).collect();
        if !online.is_empty() {
            out.send(conn, &text_frame(&watchlist_message("online", &online)));
        }
        self.sessions[session as usize].watchlist = watchlist;
    }

    /// Queues a message to every subscriber of a channel but one, in each
    /// session's dialect: `pusher` text for Pusher-URL sessions, `pushi` for Pushi-URL ones.
    pub(crate) fn broadcast_dialects(
        &self,
        key: u32,
        pusher: &str,
        pushi: &str,
        except: Option<u32>,
        out: &mut dyn Outbox,
    ) {
        let (mut pusher_frame, mut pushi_frame) = (None, None);
        for (_, &s) in self.channels.get(key).subscribers.iter() {
            if Some(s) == except {
                continue;
            }
            let session = &self.sessions[s as usize];
            let frame = if session.pushi {
                pushi_frame.get_or_insert_with(|| text_frame(pushi))
            } else {
                pusher_frame.get_or_insert_with(|| text_frame(pusher))
            };
            out.send(session.conn, frame);
        }
    }

    /// Queues a frame to every subscriber of a channel except one session.
    pub fn broadcast(&self, key: u32, frame: &SharedFrame, except: Option<u32>, out: &mut dyn Outbox) {
        for (_, &s) in self.channels.get(key).subscribers.iter() {
            if Some(s) != except {
                out.send(self.sessions[s as usize].conn, frame);
            }
        }
    }

    /// Closes every connection signed in as this user (HTTP API).
    pub fn terminate_user(&mut self, app: AppIndex, user_id: &str, out: &mut dyn Outbox) {
        for &s in self.users.get(&(app, user_id.to_string())).map(Vec::as_slice).unwrap_or_default() {
            let (conn, pushi) = (self.sessions[s as usize].conn, self.sessions[s as usize].pushi);
            error_and_close(out, conn, pushi, code::UNAUTHORIZED, "Connection terminated by the app");
        }
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
