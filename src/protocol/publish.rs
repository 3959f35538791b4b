//! The one publish pipeline. Every publish (Pusher HTTP API, batch, Pushi's
//! REST API, a socket publish) goes through [`publish`]: build each
//! channel's message and store write, admit the writes (all or nothing),
//! persist → local fan-out → bus → delivery targets. Messages received from
//! other nodes come back through [`super::remote::apply_remote`] and take
//! the local fan-out step only.

use std::collections::HashSet;

use log::warn;
use serde_json::{json, Map, Value};

use super::wire::{event_message, text_frame};
use crate::apps::AppIndex;
use crate::channels::{CachedEvent, ChannelKey, ChannelKind, SessionKey};
use crate::outbox::Outbox;
use crate::ports::{BusMessage, Ports, Then};
use crate::state::State;
use crate::store::pool::{Op, QueueFull};
use crate::store::{now_seconds, EventRecord, EventWrite, Retention, TargetRecord};

/// One publish, from the Pusher API, Pushi's API or a socket.
#[derive(Debug, Clone)]
pub struct Publication {
    /// The app.
    pub app: AppIndex,
    /// Target channels, in order.
    pub channels: Vec<String>,
    /// Event name.
    pub event: String,
    /// `data` as subscribers receive it.
    pub data: Value,
    /// Pushi REST extras copied into the message (`push`, `subject`, custom keys).
    pub extra: Map<String, Value>,
    /// Store it (gives it `mid` and `timestamp`).
    pub persist: bool,
    /// The session that must not receive it.
    pub except: Option<SessionKey>,
    /// The socket id that must not receive it on any node (the Pusher API's
    /// `socket_id`, which may name a connection of another node).
    pub except_socket: Option<String>,
    /// Socket id of the publishing socket.
    pub owner_id: Option<String>,
    /// Pushi semantics: a socket on several of the channels receives it once.
    pub once_per_socket: bool,
}

/// Delivers a publication to every subscriber, persists it (an event per
/// channel plus an association per user subscribed to that channel through
/// the REST API) and hands it to the delivery targets (`/webs`, `/smtps`,
/// `/apns`, `/web_pushes`, each at most once). `ack` runs when the last
/// write is committed (persisted publications only). Returns the `mid`s.
///
/// All or nothing: every channel's write is admitted by the store's queue
/// (operations and bytes) before anything is delivered or stored; when it
/// is not, nothing happens and `QueueFull` is returned.
pub fn publish(
    st: &mut State,
    fx: &mut dyn Ports,
    p: Publication,
    ack: Option<Then>,
    out: &mut dyn Outbox,
) -> Result<Vec<String>, QueueFull> {
    let (texts, writes, mids) = prepare(st, &p);
    persist(st, fx, p.app, writes, &texts, ack)?;
    let many = p.channels.len() > 1;
    let mut seen_sessions: HashSet<SessionKey> = HashSet::new();
    let mut seen_targets: HashSet<(String, String)> = HashSet::new();
    // (Only a cluster needs the excluded socket's id: other nodes know no session keys.)
    let except_socket = if fx.bus_listens() {
        p.except_socket.clone().or_else(|| p.except.and_then(|s| st.sessions.get(s)).map(|s| s.socket_id.clone()))
    } else {
        None
    };
    for (channel, text) in p.channels.iter().zip(texts) {
        let frame = text_frame(&text);
        let key = channel_of(st, p.app, channel, &text);
        let st = &*st;
        let mut recipients = 0usize;
        let mut deliver = |s: SessionKey| {
            if Some(s) != p.except && (!many || !p.once_per_socket || seen_sessions.insert(s)) {
                if let Some(session) = st.sessions.get(s) {
                    recipients += usize::from(out.send(session.conn, &frame));
                }
            }
        };
        match channel.strip_prefix("#server-to-user-") {
            Some(uid) => st.users.get(&(p.app, uid.to_string())).into_iter().flatten().for_each(|&s| deliver(s)),
            None => {
                if let Some(ch) = key.and_then(|k| st.channels.get(k)) {
                    ch.subscribers.iter().for_each(|(_, &s)| deliver(s));
                }
            }
        }
        if fx.bus_listens() {
            let message = text.clone();
            let bus = match channel.strip_prefix("#server-to-user-") {
                Some(uid) => BusMessage::UserEvent { app: p.app, user_id: uid.to_string(), message },
                None => BusMessage::ChannelEvent {
                    app: p.app,
                    channel: channel.clone(),
                    message,
                    except: except_socket.clone(),
                    cache: ChannelKind::of(channel).1,
                },
            };
            fx.bus(bus);
        }
        super::observe(st, fx, p.app, || {
            let name = if p.owner_id.is_some() { "socket_message" } else { "api_message" };
            json!({ "name": name, "channel": channel, "event": p.event, "data": p.data, "recipients": recipients })
        });
        deliver_to_targets(st, fx, p.app, channel, &text, &mut seen_targets);
    }
    Ok(mids)
}

/// The message text of each channel, the store writes and their `mid`s,
/// without any effect (only the sequence numbers are not yet taken).
fn prepare(st: &State, p: &Publication) -> (Vec<String>, Vec<Op>, Vec<String>) {
    let app = st.apps.get(p.app);
    let retention = Retention {
        max_events: app.history_max_events.unwrap_or(st.rules.retention.max_events),
        max_age_secs: app.history_max_age.unwrap_or(st.rules.retention.max_age_secs),
    };
    let mut seen_users: HashSet<&String> = HashSet::new();
    let mut texts = Vec::with_capacity(p.channels.len());
    let (mut writes, mut mids) = (Vec::new(), Vec::new());
    let mut seq = st.seq;
    for channel in &p.channels {
        if p.extra.is_empty() && !p.persist {
            texts.push(event_message(&p.event, channel, &p.data, None));
            continue;
        }
        let mut m = p.extra.clone();
        m.insert("channel".into(), json!(channel));
        m.insert("event".into(), json!(p.event));
        m.insert("data".into(), p.data.clone());
        if p.persist {
            let stored = Value::Object(m.clone());
            let mid = crate::support::rand::uuid4();
            let timestamp = now_seconds();
            m.insert("mid".into(), json!(mid));
            m.insert("timestamp".into(), json!(timestamp));
            // (Lookups skipped when nothing is registered: the Pusher-only hot path.)
            let aliased = if st.pushi.alias_users.is_empty() {
                None
            } else {
                st.pushi.alias_users.get(&(p.app, channel.clone()))
            };
            let users: Vec<String> =
                aliased.map(|u| u.iter().filter(|u| seen_users.insert(*u)).cloned().collect()).unwrap_or_default();
            seq += 1;
            let event = EventRecord {
                seq,
                app: app.id.clone(),
                mid: mid.clone(),
                channel: channel.clone(),
                owner_id: p.owner_id.clone(),
                timestamp,
                data: stored,
            };
            writes.push(Op::Write(EventWrite { event, users, retention }));
            mids.push(mid);
        }
        texts.push(Value::Object(m).to_string());
    }
    (texts, writes, mids)
}

/// Admits and submits the writes of a publish (the last carries `ack`: it
/// commits after the others); refused whole when the app's queue is full.
fn persist(
    st: &mut State,
    fx: &mut dyn Ports,
    app: AppIndex,
    writes: Vec<Op>,
    texts: &[String],
    mut ack: Option<Then>,
) -> Result<(), QueueFull> {
    if writes.is_empty() {
        return Ok(());
    }
    let bytes: u64 = texts.iter().map(|t| 2 * t.len() as u64 + 256).sum();
    if !fx.store_has_room(app, writes.len(), bytes) {
        return Err(QueueFull);
    }
    let last = writes.len() - 1;
    for (i, op) in writes.into_iter().enumerate() {
        if let Op::Write(w) = &op {
            st.seq = st.seq.max(w.event.seq);
        }
        let then = if i == last { ack.take() } else { None };
        if fx.store(app, op, then).is_err() {
            // Admitted above on this thread; a refusal now is a bug, not a state.
            warn!("store refused a write it had admitted (app {app})");
        }
    }
    Ok(())
}

/// The channel a message goes to on this node, if it exists (the cached
/// event of a `cache-` channel is kept on the way).
pub(crate) fn channel_of(st: &mut State, app: AppIndex, channel: &str, text: &str) -> Option<ChannelKey> {
    let (kind, cached) = ChannelKind::of(channel);
    if kind == ChannelKind::ServerToUser {
        return None;
    }
    if !cached {
        return st.channels.find(app, channel);
    }
    let key = cache_channel(st, app, channel)?;
    st.channels.set_cache(key, CachedEvent { message: text.to_string(), at: std::time::Instant::now() });
    Some(key)
}

/// The channel of a `cache-` publish, created (vacant, to hold the cached
/// event) only while the app is under `PUSHI_MAX_CACHE_CHANNELS`; beyond it
/// the event reaches the channel's subscribers (none) and is not cached.
pub fn cache_channel(st: &mut State, app: AppIndex, channel: &str) -> Option<ChannelKey> {
    if let Some(key) = st.channels.find(app, channel) {
        return Some(key);
    }
    if st.channels.cached_count(app) >= st.rules.max_cache_channels {
        log::debug!("app {app}: not caching {channel}: PUSHI_MAX_CACHE_CHANNELS reached");
        return None;
    }
    Some(st.channels.find_or_create(app, channel))
}

/// Pushi's handler targets of a published message: those of the channel and
/// of the personal channels aliasing it, each once per publish (`seen`).
fn deliver_to_targets(
    st: &State,
    fx: &mut dyn Ports,
    app: AppIndex,
    channel: &str,
    text: &str,
    seen: &mut HashSet<(String, String)>,
) {
    if st.pushi.targets.is_empty() || !fx.delivers() {
        return;
    }
    let mut found: Vec<TargetRecord> = st.pushi.targets.get(&(app, channel.to_string())).cloned().unwrap_or_default();
    for user in st.pushi.alias_users.get(&(app, channel.to_string())).into_iter().flatten() {
        if let Some(more) = st.pushi.targets.get(&(app, format!("personal-{user}"))) {
            found.extend(more.iter().cloned());
        }
    }
    found.retain(|t| seen.insert((t.kind.clone(), t.target.clone())));
    if !found.is_empty() {
        fx.deliver(app, st.apps.get(app), found, text);
    }
}
