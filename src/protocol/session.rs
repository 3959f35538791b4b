//! A Pusher session's life: opening (app, protocol version, quota), each
//! client message dispatched to its rule, pings, sign-in with watchlists,
//! client events, termination by the app, and closing (leaving every channel).

use std::collections::HashMap;

use log::debug;
use serde_json::{json, Value};

use super::wire::{
    dialect_error, error_and_close, error_message, event_message, id_json, id_string, internal, parse_client_message,
    text_frame, watchlist_message, ClientMessage,
};
use super::{auth, code, hook, membership, pushi, subscribe, MAX_CLIENT_EVENT_BYTES, MAX_WATCHLIST};
use crate::apps::AppIndex;
use crate::channels::{valid_event_name, ChannelKind, Session, SessionKey, SignedInUser};
use crate::outbox::{ConnId, Outbox};
use crate::ports::{BusMessage, Ports, RegistryOp, RegistryReply};
use crate::state::State;

/// A new Pusher connection on `/app/<key>?protocol=N` (or Pushi's `/<key>`).
/// Returns the session key, or None when it was refused (error sent, closing).
pub fn open(
    st: &mut State,
    fx: &mut dyn Ports,
    conn: ConnId,
    key: &str,
    protocol: Option<&str>,
    pushi: bool,
    out: &mut dyn Outbox,
) -> Option<SessionKey> {
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
    let Some(app) = st.apps.by_key(key) else {
        return refuse(out, code::APP_NOT_FOUND, &format!("Could not find app by key {key}"));
    };
    let settings = st.apps.get(app);
    if !settings.enabled {
        return refuse(out, code::APP_DISABLED, "Application is disabled");
    }
    if settings.max_connections > 0 && st.connections_of(app) >= settings.max_connections {
        return refuse(out, code::OVER_QUOTA, "Application is over connection quota");
    }
    let limit = settings.max_connections;
    let socket_id = next_socket_id(st.sessions.vacant_key(), st.rules.socket_prefix);
    let established = internal(
        "pusher:connection_established",
        None,
        &json!({ "socket_id": socket_id, "activity_timeout": st.rules.activity_timeout.as_secs() }),
    );
    let clustered_quota = limit > 0 && fx.clustered();
    if !clustered_quota {
        out.send(conn, &text_frame(&established));
    }
    if st.app_connections.len() <= app.slot() {
        st.app_connections.resize(app.slot() + 1, 0);
    }
    st.app_connections[app.slot()] += 1;
    let session = st.sessions.insert(Session {
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
        quota: false,
    });
    if clustered_quota {
        // The quota counts the whole cluster: the registry admits, then the client hears of it.
        fx.registry(
            RegistryOp::Admit { app, limit },
            Some(Box::new(move |st, fx, answer, out| {
                let open = st.sessions.get(session).is_some_and(|s| s.conn == conn);
                let admitted = !matches!(answer, Ok(RegistryReply::Admitted(false)));
                let counted = matches!(answer, Ok(RegistryReply::Admitted(true)));
                if !open {
                    if counted {
                        fx.registry(RegistryOp::Release { app }, None);
                    }
                    return;
                }
                if let Some(s) = st.sessions.get_mut(session) {
                    s.quota = counted;
                }
                if admitted {
                    out.send(conn, &text_frame(&established));
                } else {
                    debug!("conn {}: refusing Pusher connection: over the cluster's quota", conn.key);
                    error_and_close(out, conn, pushi, code::OVER_QUOTA, "Application is over connection quota");
                }
            })),
        );
    }
    Some(session)
}

/// `<session key>.<random>`: Pusher's `digits.digits` form, and the session
/// is found from it without an index (the whole id is compared). The random
/// half comes from the OS CSPRNG, so no socket id reveals another. In a
/// cluster the random half starts with the node's prefix (unique among the
/// live nodes), so no two nodes can hand out the same id.
fn next_socket_id(session: SessionKey, node_prefix: u32) -> String {
    let random = crate::support::rand::u64() % 1_000_000_000;
    match node_prefix {
        0 => format!("{}.{random}", session.0),
        p => format!("{}.{p}{random:09}", session.0),
    }
}

/// One text message from a Pusher session.
pub fn message(st: &mut State, fx: &mut dyn Ports, session: SessionKey, text: &str, out: &mut dyn Outbox) {
    let Some(s) = st.sessions.get(session) else { return };
    let (conn, pushi) = (s.conn, s.pushi);
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
        "pusher:pong" => {} // any message counts as activity; the loop noted it
        "pusher:subscribe" => subscribe::subscribe(st, fx, session, &msg.data, out),
        "pusher:unsubscribe" => {
            if let Some(channel) = msg.data.get("channel").and_then(Value::as_str) {
                subscribe::unsubscribe(st, fx, session, channel, out);
            }
        }
        "pusher:signin" => signin(st, fx, session, &msg.data, out),
        "pusher:latest" => pushi::latest(st, fx, session, &msg.data, out),
        e if e.starts_with("client-") => client_event(st, fx, session, msg, text.len(), out),
        e if !e.starts_with("pusher:") && !e.starts_with("pusher_internal:") => {
            pushi::socket_publish(st, fx, session, msg, text.len(), out)
        }
        e => {
            let m = format!("Unsupported event {e:?}");
            dialect_error(out, conn, pushi, msg.channel.as_deref(), None, &m);
        }
    }
}

/// The connection of a session is gone: leave every channel, the user and
/// watchlist indexes (watchers are told when the user's last connection goes).
pub fn closed(st: &mut State, fx: &mut dyn Ports, session: SessionKey, out: &mut dyn Outbox) {
    let Some(s) = st.sessions.remove(session) else { return };
    if let Some(n) = st.app_connections.get_mut(s.app.slot()) {
        *n = n.saturating_sub(1);
    }
    super::observe(st, fx, s.app, || json!({ "name": "disconnection", "socket_id": s.socket_id }));
    membership::forget_personal(st, session, s.app, &s.personal);
    for sub in &s.subs {
        membership::leave_channel_as(st, fx, sub, session, &s.socket_id, out);
    }
    for watched in &s.watchlist {
        remove_from(&mut st.watchers, (s.app, watched.clone()), session);
    }
    if s.quota {
        fx.registry(RegistryOp::Release { app: s.app }, None);
    }
    if let Some(user) = &s.user {
        let last_here = remove_from(&mut st.users, (s.app, user.id.clone()), session);
        if fx.clustered() {
            // The registry says when the user's last connection anywhere is gone.
            let (app, user_id) = (s.app, user.id.clone());
            fx.registry(
                RegistryOp::SignOut { app, socket_id: s.socket_id.clone() },
                Some(Box::new(move |st, _fx, answer, out| {
                    if answer.is_err() && last_here {
                        membership::notify_watchers(st, app, &user_id, "offline", out);
                    }
                })),
            );
        } else if last_here {
            membership::notify_watchers(st, s.app, &user.id, "offline", out);
        }
    }
}

/// Removes a session from an index list; true when the list became empty (and was dropped).
fn remove_from(
    index: &mut HashMap<(AppIndex, String), Vec<SessionKey>>,
    key: (AppIndex, String),
    session: SessionKey,
) -> bool {
    let Some(list) = index.get_mut(&key) else { return false };
    list.retain(|s| *s != session);
    let empty = list.is_empty();
    if empty {
        index.remove(&key);
    }
    empty
}

/// Sends `pusher:ping` to a silent session (the loop closes it if nothing
/// comes back). Returns false when the loop should send a WebSocket ping
/// instead: Pushi's clients never answer `pusher:ping` (and fail on a
/// message without a channel); browsers answer WebSocket pings by themselves.
pub fn ping(st: &State, session: SessionKey, out: &mut dyn Outbox) -> bool {
    let Some(s) = st.sessions.get(session) else { return false };
    if s.pushi {
        return false;
    }
    out.send(s.conn, &text_frame(&internal("pusher:ping", None, &json!({}))));
    true
}

/// `client-*` events: relayed to the channel's other subscribers when the
/// app allows them, on private, presence and peer channels the sender is on,
/// within the size and rate limits; presence events carry the sender's `user_id`.
fn client_event(
    st: &mut State,
    fx: &mut dyn Ports,
    session: SessionKey,
    msg: ClientMessage,
    size: usize,
    out: &mut dyn Outbox,
) {
    let Some(s) = st.sessions.get(session) else { return };
    let (conn, app, pushi) = (s.conn, s.app, s.pushi);
    let fail = |out: &mut dyn Outbox, text: &str| {
        dialect_error(out, conn, pushi, msg.channel.as_deref(), None, text);
    };
    if !st.apps.get(app).client_events {
        return fail(out, "Client events are not enabled for this app");
    }
    if size > MAX_CLIENT_EVENT_BYTES {
        return fail(out, "Client event larger than 10 KB");
    }
    if !membership::within_client_rate(st, session, out) {
        return;
    }
    let Some(channel) = msg.channel.as_deref() else { return fail(out, "Client event without a channel") };
    let kind = ChannelKind::of(channel).0;
    if !matches!(kind, ChannelKind::Private | ChannelKind::Presence | ChannelKind::Peer) {
        return fail(out, "Client events are only allowed on private, presence and peer channels");
    }
    let Some(s) = st.sessions.get(session) else { return };
    let sub = st.channels.find(app, channel).and_then(|k| s.subscription(k).cloned());
    let Some(sub) = sub else { return fail(out, "Client event on a channel this connection is not subscribed to") };
    let user_id = sub.user_id.as_deref().map(|u| id_json(u, sub.user_numeric));
    let message = event_message(&msg.event, channel, &msg.data, user_id.as_ref());
    membership::broadcast(st, sub.channel, &text_frame(&message), Some(session), out);
    if fx.bus_listens() {
        let except = Some(s.socket_id.clone());
        let channel = channel.to_string();
        fx.bus(BusMessage::ChannelEvent { app, channel, message, except, cache: false });
    }
    if !st.apps.get(app).webhooks.is_empty() || fx.observing(app) {
        let data = match &msg.data {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        let mut event = json!({
            "name": "client_event", "channel": channel, "event": msg.event, "data": data,
            "socket_id": s.socket_id,
        });
        if let Some(uid) = user_id {
            event["user_id"] = uid;
        }
        hook(st, fx, app, || event);
    }
}

/// `pusher:signin`: checks the signature over `socket_id::user::user_data`,
/// records the user (watchers learn it came online) and its watchlist (it
/// learns which watched users are online). A bad sign-in closes with 4009.
fn signin(st: &mut State, fx: &mut dyn Ports, session: SessionKey, data: &Value, out: &mut dyn Outbox) {
    let Some(s) = st.sessions.get(session) else { return };
    let (conn, app) = (s.conn, s.app);
    let settings = st.apps.get(app);
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
    let Some(id) = user_id else { return };
    let already = s.user.is_some();
    let list = st.users.entry((app, id.clone())).or_default();
    let came_online = list.is_empty();
    if !list.contains(&session) {
        list.push(session);
    }
    let Some(s) = st.sessions.get_mut(session) else { return };
    s.user = Some(SignedInUser { id: id.clone(), data: user_data.to_string() });
    out.send(conn, &text_frame(&internal("pusher:signin_success", None, &json!({ "user_data": user_data }))));
    if already {
        return;
    }
    let clustered = fx.clustered();
    if came_online && !clustered {
        membership::notify_watchers(st, app, &id, "online", out);
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
        st.watchers.entry((app, watched.clone())).or_default().push(session);
    }
    if clustered {
        // Who is online anywhere, from the registry (which also tells every node's watchers of this user).
        let socket_id = st.sessions.get(session).map(|s| s.socket_id.clone()).unwrap_or_default();
        let op = RegistryOp::SignIn { app, user_id: id.clone(), socket_id, watchlist: watchlist.clone() };
        let watched = watchlist.clone();
        fx.registry(
            op,
            Some(Box::new(move |st, _fx, answer, out| {
                if st.sessions.get(session).is_none_or(|s| s.conn != conn) {
                    return;
                }
                let online = match answer {
                    Ok(RegistryReply::Online(online)) => online,
                    _ => {
                        // Registry unreachable: this node's users only.
                        if came_online {
                            membership::notify_watchers(st, app, &id, "online", out);
                        }
                        watched.into_iter().filter(|w| st.users.contains_key(&(app, w.clone()))).collect()
                    }
                };
                if !online.is_empty() {
                    let online: Vec<&str> = online.iter().map(String::as_str).collect();
                    out.send(conn, &text_frame(&watchlist_message("online", &online)));
                }
            })),
        );
    } else {
        let online: Vec<&str> =
            watchlist.iter().filter(|w| st.users.contains_key(&(app, (*w).clone()))).map(String::as_str).collect();
        if !online.is_empty() {
            out.send(conn, &text_frame(&watchlist_message("online", &online)));
        }
    }
    if let Some(s) = st.sessions.get_mut(session) {
        s.watchlist = watchlist;
    }
}

/// Closes every connection signed in as this user (HTTP API
/// `terminate_connections`), here and, through the bus, on other nodes.
pub fn terminate_user(st: &State, fx: &mut dyn Ports, app: AppIndex, user_id: &str, out: &mut dyn Outbox) {
    membership::terminate_local(st, app, user_id, out);
    if fx.bus_listens() {
        fx.bus(BusMessage::Terminate { app, user_id: user_id.to_string() });
    }
}

/// An app was deleted (REST `DELETE /apps/<id>`): its logins are dropped and
/// its sockets closed with 4003. Its slot stays as a tombstone so indexes
/// held elsewhere stay valid.
pub fn close_app(st: &mut State, app: AppIndex, out: &mut dyn Outbox) {
    st.apps.remove(app);
    st.pushi.remove_logins_of(app);
    for (_, s) in st.sessions.iter().filter(|(_, s)| s.app == app) {
        out.close(s.conn, code::APP_DISABLED, "App deleted");
    }
}
