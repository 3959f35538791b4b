//! Pushi's extensions to the protocol: personal channels (a user's REST
//! subscriptions plus stored history), `pusher:latest`, Pushi-style
//! publishing from sockets, and the `{name, members, alias, events}`
//! replies Pushi's clients read. Peer channels are in [`super::peer`].

use log::{debug, warn};
use serde_json::{json, Map, Value};

use super::membership::{forget_personal, join_silently, leave_source, peer_eligible, within_client_rate};
use super::publish::{publish, Publication};
use super::wire::{dialect_error, internal, pushi_member, text_frame, ClientMessage};
use super::MAX_CLIENT_EVENT_BYTES;
use crate::apps::AppIndex;
use crate::channels::{source, ChannelKind, SessionKey};
use crate::outbox::Outbox;
use crate::ports::{BusMessage, Ports, Then};
use crate::state::State;
use crate::store::pool::{Op, StoreReply};
use crate::store::{EventRecord, SubscriptionRecord};

pub use super::peer::{pair_name, peer_safe};

/// Events returned with a personal subscription and by default for `pusher:latest`.
pub const HISTORY_DEFAULT: usize = 10;
/// Largest page of history one request may ask for.
pub const HISTORY_MAX: usize = 100;

/// A stored event as Pushi's API and history replies show it.
pub fn event_json(e: &EventRecord) -> Value {
    json!({
        "id": e.seq,
        "mid": e.mid,
        "channel": e.channel,
        "owner_id": e.owner_id,
        "timestamp": e.timestamp,
        "created": e.timestamp as i64,
        "instance": e.app,
        "enabled": true,
        "data": e.data,
    })
}

/// `personal-<user_id>` → `<user_id>`.
pub fn personal_user(channel: &str) -> Option<&str> {
    channel.strip_prefix("personal-").filter(|u| !u.is_empty())
}

/// The `{name, members, alias, events}` object of Pushi's replies
/// (`members`: user id → that member's channel_data).
pub fn pushi_info(st: &State, app: AppIndex, channel: &str, events: Option<&[EventRecord]>) -> Value {
    let alias: Vec<String> =
        personal_user(channel).and_then(|u| st.pushi.aliases.get(&(app, u.to_string()))).cloned().unwrap_or_default();
    let members: Map<String, Value> = st
        .channels
        .find(app, channel)
        .and_then(|k| st.channels.get(k))
        .map(|ch| match &ch.view {
            // A cluster: the members of every node.
            Some(v) => {
                v.members.iter().map(|(id, m)| (id.clone(), pushi_member(id, m.numeric, &m.info, m.peer))).collect()
            }
            None => {
                ch.members.iter().map(|(id, m)| (id.clone(), pushi_member(id, m.numeric, &m.info, false))).collect()
            }
        })
        .unwrap_or_default();
    let mut info = json!({ "name": channel, "members": members, "alias": alias });
    if let Some(events) = events {
        info["events"] = Value::Array(events.iter().map(event_json).collect());
    }
    info
}

/// Whether the session at `session` is still the one on `conn` (a
/// continuation must not reach a session that closed meanwhile).
fn still_open(st: &State, session: SessionKey, conn: crate::outbox::ConnId) -> bool {
    st.sessions.get(session).is_some_and(|s| s.conn == conn)
}

/// `pusher:subscribe` to `personal-<user_id>` (auth already checked): joins
/// every aliased channel now; the reply with the history follows when the
/// store answers.
pub(crate) fn subscribe_personal(
    st: &mut State,
    fx: &mut dyn Ports,
    session: SessionKey,
    user_id: &str,
    out: &mut dyn Outbox,
) {
    let Some(s) = st.sessions.get_mut(session) else { return };
    let (app, conn) = (s.app, s.conn);
    let channel = format!("personal-{user_id}");
    if !s.personal.iter().any(|u| u == user_id) {
        s.personal.push(user_id.to_string());
        st.pushi.personal_sessions.entry((app, user_id.to_string())).or_default().push(session);
        for alias in st.pushi.aliases.get(&(app, user_id.to_string())).cloned().unwrap_or_default() {
            join_silently(st, session, &alias, source::PERSONAL);
        }
    }
    let op = Op::UserEvents {
        app: st.apps.get(app).id.clone(),
        user_id: user_id.to_string(),
        skip: 0,
        count: HISTORY_DEFAULT,
    };
    let reply_channel = channel.clone();
    let then: Then = Box::new(move |st, _, answer, out| {
        if !still_open(st, session, conn) {
            return;
        }
        let events = match answer {
            StoreReply::Events(e) => e,
            other => {
                warn!("personal history of {reply_channel} unavailable: {other:?}");
                Vec::new()
            }
        };
        let info = pushi_info(st, app, &reply_channel, Some(&events));
        let m = internal("pusher_internal:subscription_succeeded", Some(&reply_channel), &info);
        out.send(conn, &text_frame(&m));
    });
    if fx.store(app, op, Some(then)).is_err() {
        // The store is saturated: confirm the live subscription without history.
        let info = pushi_info(st, app, &channel, Some(&[]));
        out.send(conn, &text_frame(&internal("pusher_internal:subscription_succeeded", Some(&channel), &info)));
    }
}

/// Leaves `personal-<user_id>` and the channels it aggregated.
pub(crate) fn unsubscribe_personal(
    st: &mut State,
    fx: &mut dyn Ports,
    session: SessionKey,
    user_id: &str,
    out: &mut dyn Outbox,
) {
    let Some(s) = st.sessions.get_mut(session) else { return };
    let app = s.app;
    let Some(pos) = s.personal.iter().position(|u| u == user_id) else { return };
    s.personal.swap_remove(pos);
    forget_personal(st, session, app, &[user_id.to_string()]);
    for alias in st.pushi.aliases.get(&(app, user_id.to_string())).cloned().unwrap_or_default() {
        if let Some(key) = st.channels.find(app, &alias) {
            leave_source(st, fx, session, key, source::PERSONAL, out);
        }
    }
}

/// A REST subscription changed, here (after the store committed it) or on
/// another node (through the bus): the alias index and the user's personal
/// sockets on this node follow. Here, other nodes are told too.
pub fn alias_changed(
    st: &mut State,
    fx: &mut dyn Ports,
    app: AppIndex,
    user_id: &str,
    channel: &str,
    added: bool,
    out: &mut dyn Outbox,
) {
    apply_alias(st, fx, app, user_id, channel, added, out);
    if fx.bus_listens() {
        let (user_id, channel) = (user_id.to_string(), channel.to_string());
        fx.bus(BusMessage::AliasChanged { app, user_id, channel, added });
    }
}

/// The local part of [`alias_changed`] (what a message from another node does).
pub fn apply_alias(
    st: &mut State,
    fx: &mut dyn Ports,
    app: AppIndex,
    user_id: &str,
    channel: &str,
    added: bool,
    out: &mut dyn Outbox,
) {
    if added {
        let rec = SubscriptionRecord {
            app: st.apps.get(app).id.clone(),
            user_id: user_id.to_string(),
            event: channel.to_string(),
            created: 0,
        };
        if st.pushi.add_alias(app, &rec) {
            alias_added(st, app, user_id, channel, out);
        }
    } else if st.pushi.remove_alias(app, user_id, channel) {
        alias_removed(st, fx, app, user_id, channel, out);
    }
}

/// A REST subscription was added: personal sockets of the user join the
/// channel at once and are told the new alias list.
pub fn alias_added(st: &mut State, app: AppIndex, user_id: &str, channel: &str, out: &mut dyn Outbox) {
    let personal = format!("personal-{user_id}");
    for session in st.pushi.personal_sessions.get(&(app, user_id.to_string())).cloned().unwrap_or_default() {
        join_silently(st, session, channel, source::PERSONAL);
        let info = pushi_info(st, app, &personal, None);
        let m = internal("pusher_internal:subscription_succeeded", Some(&personal), &info);
        if let Some(s) = st.sessions.get(session) {
            out.send(s.conn, &text_frame(&m));
        }
    }
}

/// A REST subscription was removed: personal sockets of the user leave the channel.
pub fn alias_removed(
    st: &mut State,
    fx: &mut dyn Ports,
    app: AppIndex,
    user_id: &str,
    channel: &str,
    out: &mut dyn Outbox,
) {
    let Some(key) = st.channels.find(app, channel) else { return };
    for session in st.pushi.personal_sessions.get(&(app, user_id.to_string())).cloned().unwrap_or_default() {
        leave_source(st, fx, session, key, source::PERSONAL, out);
    }
}

/// `pusher:latest {channel, skip, count}` → `pusher_internal:latest` with a
/// history page, for a channel the session is on (or may use, for peers).
pub(crate) fn latest(st: &mut State, fx: &mut dyn Ports, session: SessionKey, data: &Value, out: &mut dyn Outbox) {
    let Some(s) = st.sessions.get(session) else { return };
    let (app, conn, pushi) = (s.app, s.conn, s.pushi);
    let Some(channel) = data.get("channel").and_then(Value::as_str).map(str::to_string) else {
        return dialect_error(out, conn, pushi, None, None, "pusher:latest needs data.channel");
    };
    let number = |k: &str, d: usize| data.get(k).and_then(Value::as_u64).map(|n| n as usize).unwrap_or(d);
    let (skip, count) = (number("skip", 0), number("count", HISTORY_DEFAULT).min(HISTORY_MAX));
    let app_id = st.apps.get(app).id.clone();
    let op = match personal_user(&channel) {
        Some(user) if s.personal.iter().any(|u| u == user) => {
            Op::UserEvents { app: app_id, user_id: user.to_string(), skip, count }
        }
        _ => {
            let on = st.channels.find(app, &channel).is_some_and(|k| s.subscription(k).is_some());
            if !on && !peer_eligible(st, session, &channel) {
                let m = "Not subscribed or eligible to this channel";
                return dialect_error(out, conn, pushi, Some(&channel), None, m);
            }
            Op::ChannelEvents { app: app_id, channel: Some(channel.clone()), skip, count }
        }
    };
    let channel_name = channel.clone();
    let then: Then = Box::new(move |st, _, answer, out| {
        if !still_open(st, session, conn) {
            return;
        }
        match answer {
            StoreReply::Events(events) => {
                let info = pushi_info(st, app, &channel, Some(&events));
                out.send(conn, &text_frame(&internal("pusher_internal:latest", Some(&channel), &info)));
            }
            other => {
                warn!("history of {channel} unavailable: {other:?}");
                dialect_error(out, conn, pushi, Some(&channel), None, "History is unavailable right now");
            }
        }
    });
    if fx.store(app, op, Some(then)).is_err() {
        let m = "History is unavailable right now (store busy)";
        dialect_error(out, conn, pushi, Some(&channel_name), None, m);
    }
}

/// A Pushi-style publish from a socket: any event name but `pusher:` and
/// `client-`, on an authenticated channel the socket is on, with `echo` and
/// `persist`; only when the app opted in (`client_publish`, `client_persist`).
pub(crate) fn socket_publish(
    st: &mut State,
    fx: &mut dyn Ports,
    session: SessionKey,
    msg: ClientMessage,
    size: usize,
    out: &mut dyn Outbox,
) {
    let Some(s) = st.sessions.get(session) else { return };
    let (conn, app, pushi, on_channel) = (s.conn, s.app, s.pushi, msg.channel.clone());
    let fail = |out: &mut dyn Outbox, text: &str| {
        dialect_error(out, conn, pushi, on_channel.as_deref(), None, text);
    };
    let settings = st.apps.get(app);
    let (allowed, stored) = (settings.client_publish, settings.client_persist);
    if !allowed {
        return fail(out, &format!("Unsupported event {:?} (publishing from sockets is off for this app)", msg.event));
    }
    let Some(channel) = msg.channel.clone() else { return fail(out, "Publishing needs a channel") };
    if size > MAX_CLIENT_EVENT_BYTES {
        return fail(out, "Published message larger than 10 KB");
    }
    let kind = ChannelKind::of(&channel).0;
    match kind {
        ChannelKind::PrivateEncrypted => return fail(out, "Sockets cannot publish on encrypted channels"),
        ChannelKind::Private | ChannelKind::Presence | ChannelKind::Personal | ChannelKind::Peer => {}
        // Anyone holding the public key may open a socket: publishing needs an authenticated channel.
        _ => return fail(out, "Sockets may publish only on private, presence, personal and peer channels"),
    }
    let on = st.channels.find(app, &channel).is_some_and(|k| s.subscription(k).is_some());
    if !on && !peer_eligible(st, session, &channel) {
        return fail(out, "Publishing on a channel this connection is not subscribed to");
    }
    if !within_client_rate(st, session, out) {
        return;
    }
    let data = match msg.data {
        Value::String(s) => Value::String(s),
        Value::Null => Value::String(String::new()),
        other => Value::String(other.to_string()),
    };
    let Some(s) = st.sessions.get(session) else { return };
    let owner_id = Some(s.socket_id.clone());
    let mut extra = Map::new();
    if kind == ChannelKind::Presence {
        // Who published, as the channel authenticated them (as client events carry it).
        let user = st.channels.find(app, &channel).and_then(|k| s.subscription(k)).and_then(|sub| sub.user_id.clone());
        if let Some(uid) = user {
            extra.insert("user_id".into(), json!(uid));
        }
    }
    let p = Publication {
        app,
        channels: vec![channel],
        event: msg.event,
        data,
        extra,
        persist: msg.persist && stored,
        except: if msg.echo { None } else { Some(session) },
        except_socket: None,
        owner_id,
        once_per_socket: true,
    };
    if publish(st, fx, p, None, out).is_err() {
        debug!("conn {}: socket publish refused, store busy", conn.key);
        fail(out, "The store is busy; the event was not published");
    }
}
