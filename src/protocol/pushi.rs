//! Pushi's extensions to the protocol: publishing with persistence (every
//! source goes through [`Hub::publish`]), personal channels (a user's REST
//! subscriptions plus stored history), peer pair channels created by presence
//! channels, `pusher:latest`, and Pushi-style publishing from sockets.

use std::collections::HashSet;

use log::{debug, warn};
use serde_json::{json, Map, Value};

use super::{dialect_error, internal, pushi_member, text_frame, ClientMessage, MAX_CLIENT_EVENT_BYTES};
use crate::apps::AppIndex;
use crate::channels::{source, CachedEvent, ChannelKind, Subscription};
use crate::hub::{Hub, Then};
use crate::outbox::{ConnId, Outbox};
use crate::store::pool::{Op, QueueFull, StoreReply};
use crate::store::{now_seconds, EventRecord, EventWrite};

/// Events returned with a personal subscription and by default for `pusher:latest`.
pub const HISTORY_DEFAULT: usize = 10;
/// Largest page of history one request may ask for.
pub const HISTORY_MAX: usize = 100;

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
    pub except: Option<u32>,
    /// Socket id of the publishing socket.
    pub owner_id: Option<String>,
    /// Pushi semantics: a socket on several of the channels receives it once.
    pub once_per_socket: bool,
}

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

/// `peer-<base>:<a>&<b>` with the two user ids in code-point order.
pub fn pair_name(base: &str, a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("peer-{base}:{x}&{y}")
}

/// Whether a user id can be half of a pair channel name: `&` separates the
/// pair and `:` the base, so ids holding them would make names ambiguous.
pub fn peer_safe(user_id: &str) -> bool {
    !user_id.is_empty() && !user_id.contains(['&', ':'])
}

/// `personal-<user_id>` → `<user_id>`.
pub fn personal_user(channel: &str) -> Option<&str> {
    channel.strip_prefix("personal-").filter(|u| !u.is_empty())
}

impl Hub {
    /// A fresh event id: a version-4 UUID from the OS CSPRNG (ids must not reveal each other).
    fn next_mid(&mut self) -> String {
        crate::support::rand::uuid4()
    }

    /// Delivers a publication to every subscriber, persists it (an event per
    /// channel plus an association per user subscribed to that channel
    /// through the REST API) and hands it to the delivery handlers (`/webs`,
    /// `/smtps`, `/apns`, `/web_pushes` targets, each at most once). `ack` runs when
    /// the last write is committed (persisted publications only).
    ///
    /// All or nothing: every channel's write is admitted by the store's queue
    /// (operations and bytes) before anything is delivered or stored; when it
    /// is not, nothing happens and `QueueFull` is returned.
    pub fn publish(
        &mut self,
        p: Publication,
        mut ack: Option<Then>,
        out: &mut dyn Outbox,
    ) -> Result<Vec<String>, QueueFull> {
        let app = self.apps.get(p.app);
        let app_id = app.id.clone();
        let retention = crate::store::Retention {
            max_events: app.history_max_events.unwrap_or(self.config.retention.max_events),
            max_age_secs: app.history_max_age.unwrap_or(self.config.retention.max_age_secs),
        };
        let mut seen_users: HashSet<String> = HashSet::new();
        // First the messages and the writes of every channel, without effects.
        let mut texts = Vec::with_capacity(p.channels.len());
        let mut writes = Vec::new();
        let mut mids = Vec::new();
        let mut seq = self.seq;
        for channel in &p.channels {
            let plain = p.extra.is_empty() && !p.persist;
            let text = if plain {
                super::event_message(&p.event, channel, &p.data, None)
            } else {
                let mut m = p.extra.clone();
                m.insert("channel".into(), json!(channel));
                m.insert("event".into(), json!(p.event));
                m.insert("data".into(), p.data.clone());
                if p.persist {
                    let stored = Value::Object(m.clone());
                    let mid = self.next_mid();
                    let timestamp = now_seconds();
                    m.insert("mid".into(), json!(mid));
                    m.insert("timestamp".into(), json!(timestamp));
                    // (Lookups skipped when nothing is registered: the Pusher-only hot path.)
                    let aliased = if self.pushi.alias_users.is_empty() {
                        None
                    } else {
                        self.pushi.alias_users.get(&(p.app, channel.clone()))
                    };
                    let users: Vec<String> = aliased
                        .map(|u| u.iter().filter(|u| seen_users.insert((*u).clone())).cloned().collect())
                        .unwrap_or_default();
                    seq += 1;
                    let event = EventRecord {
                        seq,
                        app: app_id.clone(),
                        mid: mid.clone(),
                        channel: channel.clone(),
                        owner_id: p.owner_id.clone(),
                        timestamp,
                        data: stored,
                    };
                    writes.push(Op::Write(EventWrite { event, users, retention }));
                    mids.push(mid);
                }
                Value::Object(m).to_string()
            };
            texts.push(text);
        }
        if !writes.is_empty() {
            let bytes: u64 = texts.iter().map(|t| 2 * t.len() as u64 + 256).sum();
            if !self.store.has_room(p.app, writes.len(), bytes) {
                return Err(QueueFull);
            }
            let last = writes.len() - 1;
            for (i, op) in writes.into_iter().enumerate() {
                // (Only the last write carries the ack: it commits after the others.)
                let submitted = match if i == last { ack.take() } else { None } {
                    Some(then) => self.store_then(p.app, op, then),
                    None => self.store.submit(p.app, None, op),
                };
                if submitted.is_err() {
                    // Admitted above on this thread; a refusal now is a bug, not a state.
                    warn!("store refused a write it had admitted (app {app_id})");
                }
            }
            self.seq = seq;
        }
        // Then the deliveries.
        let many = p.channels.len() > 1;
        let mut seen_sessions: HashSet<u32> = HashSet::new();
        let mut seen_targets: HashSet<(crate::deliver::TargetKind, String)> = HashSet::new();
        for (channel, text) in p.channels.iter().zip(texts) {
            let frame = text_frame(&text);
            let mut deliver = |hub: &Hub, s: u32, out: &mut dyn Outbox| {
                if Some(s) != p.except && (!many || !p.once_per_socket || seen_sessions.insert(s)) {
                    if let Some(session) = hub.sessions.get(s as usize) {
                        out.send(session.conn, &frame);
                    }
                }
            };
            if let Some(uid) = channel.strip_prefix("#server-to-user-") {
                let list = self.users.get(&(p.app, uid.to_string())).cloned().unwrap_or_default();
                for s in list {
                    deliver(self, s, out);
                }
            } else {
                let (_, cached) = ChannelKind::of(channel);
                let key = if cached { self.cache_channel(p.app, channel) } else { self.channels.find(p.app, channel) };
                if let Some(key) = key {
                    if cached {
                        self.channels
                            .set_cache(key, CachedEvent { message: text.clone(), at: std::time::Instant::now() });
                    }
                    for (_, &s) in self.channels.get(key).subscribers.iter() {
                        deliver(self, s, out);
                    }
                }
            }
            // Pushi's handler targets: of the channel, and of the personal channels aliasing it.
            self.deliver_to_targets(p.app, channel, &text, &mut seen_targets);
        }
        Ok(mids)
    }

    /// Adds a reason for a session to be on a channel, joining it if it was not.
    pub(crate) fn join_silently(&mut self, session: u32, channel: &str, why: u8) -> u32 {
        let app = self.sessions[session as usize].app;
        let key = self.channels.find_or_create(app, channel);
        let s = &mut self.sessions[session as usize];
        if let Some(sub) = s.subs.iter_mut().find(|sub| sub.channel == key) {
            sub.sources |= why;
            return key;
        }
        let (slot, _) = self.channels.join(key, session, None);
        self.sessions[session as usize].subs.push(Subscription::new(key, slot, None, why));
        key
    }

    /// Removes a reason; the session leaves the channel when none is left.
    pub(crate) fn leave_source(&mut self, session: u32, key: u32, why: u8, out: &mut dyn Outbox) {
        let s = &mut self.sessions[session as usize];
        let Some(pos) = s.subs.iter().position(|sub| sub.channel == key) else { return };
        s.subs[pos].sources &= !why;
        if s.subs[pos].sources == 0 {
            let sub = s.subs.swap_remove(pos);
            self.leave_channel(&sub, session, out);
        }
    }

    /// The `{name, members, alias, events}` object of Pushi's replies
    /// (`members`: user id → that member's channel_data).
    pub(crate) fn pushi_info(&self, app: AppIndex, channel: &str, events: Option<&[EventRecord]>) -> Value {
        let alias: Vec<String> = personal_user(channel)
            .and_then(|u| self.pushi.aliases.get(&(app, u.to_string())))
            .cloned()
            .unwrap_or_default();
        let members: Map<String, Value> = self
            .channels
            .find(app, channel)
            .map(|k| {
                let members = &self.channels.get(k).members;
                members.iter().map(|(id, m)| (id.clone(), pushi_member(id, m.numeric, &m.info, false))).collect()
            })
            .unwrap_or_default();
        let mut info = json!({ "name": channel, "members": members, "alias": alias });
        if let Some(events) = events {
            info["events"] = Value::Array(events.iter().map(event_json).collect());
        }
        info
    }

    /// `pusher:subscribe` to `personal-<user_id>` (auth already checked):
    /// joins every aliased channel now; the reply with the history follows
    /// when the store answers.
    pub(crate) fn subscribe_personal(&mut self, session: u32, user_id: &str, out: &mut dyn Outbox) {
        let (app, conn) = (self.sessions[session as usize].app, self.sessions[session as usize].conn);
        let channel = format!("personal-{user_id}");
        if !self.sessions[session as usize].personal.iter().any(|u| u == user_id) {
            self.sessions[session as usize].personal.push(user_id.to_string());
            self.pushi.personal_sessions.entry((app, user_id.to_string())).or_default().push(session);
            for alias in self.pushi.aliases.get(&(app, user_id.to_string())).cloned().unwrap_or_default() {
                self.join_silently(session, &alias, source::PERSONAL);
            }
        }
        let op = Op::UserEvents {
            app: self.apps.get(app).id.clone(),
            user_id: user_id.to_string(),
            skip: 0,
            count: HISTORY_DEFAULT,
        };
        let reply_channel = channel.clone();
        let then: Then = Box::new(move |hub, answer, out| {
            if hub.sessions.get(session as usize).is_none_or(|s| s.conn != conn) {
                return; // gone meanwhile
            }
            let events = match answer {
                StoreReply::Events(e) => e,
                other => {
                    warn!("personal history of {reply_channel} unavailable: {other:?}");
                    Vec::new()
                }
            };
            let info = hub.pushi_info(app, &reply_channel, Some(&events));
            let m = internal("pusher_internal:subscription_succeeded", Some(&reply_channel), &info);
            out.send(conn, &text_frame(&m));
        });
        if self.store_then(app, op, then).is_err() {
            // The store is saturated: confirm the live subscription without history.
            let info = self.pushi_info(app, &channel, Some(&[]));
            out.send(conn, &text_frame(&internal("pusher_internal:subscription_succeeded", Some(&channel), &info)));
        }
    }

    /// Leaves `personal-<user_id>` and the channels it aggregated.
    pub(crate) fn unsubscribe_personal(&mut self, session: u32, user_id: &str, out: &mut dyn Outbox) {
        let app = self.sessions[session as usize].app;
        let s = &mut self.sessions[session as usize];
        let Some(pos) = s.personal.iter().position(|u| u == user_id) else { return };
        s.personal.swap_remove(pos);
        if let Some(list) = self.pushi.personal_sessions.get_mut(&(app, user_id.to_string())) {
            list.retain(|x| *x != session);
            if list.is_empty() {
                self.pushi.personal_sessions.remove(&(app, user_id.to_string()));
            }
        }
        for alias in self.pushi.aliases.get(&(app, user_id.to_string())).cloned().unwrap_or_default() {
            if let Some(key) = self.channels.find(app, &alias) {
                self.leave_source(session, key, source::PERSONAL, out);
            }
        }
    }

    /// A disconnected session leaves the personal index (its channels are left by the caller).
    pub(crate) fn forget_personal(&mut self, session: u32, app: AppIndex, users: &[String]) {
        for user in users {
            if let Some(list) = self.pushi.personal_sessions.get_mut(&(app, user.clone())) {
                list.retain(|x| *x != session);
                if list.is_empty() {
                    self.pushi.personal_sessions.remove(&(app, user.clone()));
                }
            }
        }
    }

    /// A REST subscription was added: personal sockets of the user join the
    /// channel at once and are told the new alias list.
    pub fn alias_added(&mut self, app: AppIndex, user_id: &str, channel: &str, out: &mut dyn Outbox) {
        let personal = format!("personal-{user_id}");
        for session in self.pushi.personal_sessions.get(&(app, user_id.to_string())).cloned().unwrap_or_default() {
            self.join_silently(session, channel, source::PERSONAL);
            let info = self.pushi_info(app, &personal, None);
            let m = internal("pusher_internal:subscription_succeeded", Some(&personal), &info);
            out.send(self.sessions[session as usize].conn, &text_frame(&m));
        }
    }

    /// A REST subscription was removed: personal sockets of the user leave the channel.
    pub fn alias_removed(&mut self, app: AppIndex, user_id: &str, channel: &str, out: &mut dyn Outbox) {
        let Some(key) = self.channels.find(app, channel) else { return };
        for session in self.pushi.personal_sessions.get(&(app, user_id.to_string())).cloned().unwrap_or_default() {
            self.leave_source(session, key, source::PERSONAL, out);
        }
    }

    /// Whether a session may use a peer channel: it is on the base presence
    /// channel as one of the pair.
    pub(crate) fn peer_eligible(&self, session: u32, channel: &str) -> bool {
        let Some((base, tail)) = channel.strip_prefix("peer-").and_then(|r| r.split_once(':')) else { return false };
        let s = &self.sessions[session as usize];
        let Some(key) = self.channels.find(s.app, &format!("presence-{base}")) else { return false };
        let Some(me) = s.subscription(key).and_then(|sub| sub.user_id.as_deref()) else { return false };
        if !peer_safe(me) {
            return false;
        }
        let mine = |other: &str| peer_safe(other) && other != me && pair_name(base, me, other) == channel;
        tail.strip_prefix(&format!("{me}&")).is_some_and(mine) || tail.strip_suffix(&format!("&{me}")).is_some_and(mine)
    }

    /// A session joined presence channel `key` as `me`: pair channels with
    /// every other member for each peer-flagged socket involved.
    pub(crate) fn peer_join(&mut self, session: u32, key: u32, me: &str, my_flag: bool) {
        let ch = self.channels.get(key);
        let Some(base) = ch.name.strip_prefix("presence-").map(str::to_string) else { return };
        let others: Vec<(u32, String, bool)> = ch
            .subscribers
            .iter()
            .filter(|(_, &s)| s != session)
            .filter_map(|(_, &s)| {
                let sub = self.sessions[s as usize].subscription(key)?;
                let uid = sub.user_id.clone()?;
                (uid != me && peer_safe(&uid) && peer_safe(me)).then_some((s, uid, sub.peer))
            })
            .collect();
        let mut paired: HashSet<String> = HashSet::new();
        for (other, uid, flag) in others {
            let pair = pair_name(&base, me, &uid);
            if my_flag && paired.insert(uid.clone()) {
                self.join_silently(session, &pair, source::PEER);
            }
            if flag {
                self.join_silently(other, &pair, source::PEER);
            }
        }
    }

    /// `me` left presence channel `name` (`gone`: its last connection):
    /// the leaving session drops its pair channels there, and when the user
    /// is gone the others drop their pair channel with it.
    pub(crate) fn peer_leave(
        &mut self,
        session: Option<u32>,
        app: AppIndex,
        name: &str,
        me: &str,
        gone: bool,
        out: &mut dyn Outbox,
    ) {
        let Some(base) = name.strip_prefix("presence-") else { return };
        if let Some(s) = session.filter(|s| self.sessions.contains(*s as usize)) {
            let prefix = format!("peer-{base}:");
            let mine: Vec<u32> = self.sessions[s as usize]
                .subs
                .iter()
                .filter(|sub| self.channels.get(sub.channel).name.starts_with(&prefix))
                .map(|sub| sub.channel)
                .collect();
            for key in mine {
                // A pair channel lives as long as the pair: a direct subscription to it ends too.
                self.leave_source(s, key, source::PEER | source::DIRECT, out);
            }
        }
        if !gone {
            return;
        }
        let Some(key) = self.channels.find(app, name) else { return };
        let others: Vec<(u32, String)> = self
            .channels
            .get(key)
            .subscribers
            .iter()
            .filter_map(|(_, &s)| {
                let sub = self.sessions.get(s as usize)?.subscription(key)?;
                Some((s, sub.user_id.clone()?))
            })
            .collect();
        for (other, uid) in others {
            if let Some(pair) = self.channels.find(app, &pair_name(base, &uid, me)) {
                self.leave_source(other, pair, source::PEER | source::DIRECT, out);
            }
        }
    }

    /// `pusher:latest {channel, skip, count}` → `pusher_internal:latest` with a history page.
    pub(crate) fn latest(&mut self, session: u32, data: &Value, out: &mut dyn Outbox) {
        let s = &self.sessions[session as usize];
        let (app, conn, pushi) = (s.app, s.conn, s.pushi);
        let Some(channel) = data.get("channel").and_then(Value::as_str).map(str::to_string) else {
            return dialect_error(out, conn, pushi, None, None, "pusher:latest needs data.channel");
        };
        let number = |k: &str, d: usize| data.get(k).and_then(Value::as_u64).map(|n| n as usize).unwrap_or(d);
        let (skip, count) = (number("skip", 0), number("count", HISTORY_DEFAULT).min(HISTORY_MAX));
        let app_id = self.apps.get(app).id.clone();
        let op = match personal_user(&channel) {
            Some(user) if s.personal.iter().any(|u| u == user) => {
                Op::UserEvents { app: app_id, user_id: user.to_string(), skip, count }
            }
            _ => {
                let on = self.channels.find(app, &channel).is_some_and(|k| s.subscription(k).is_some());
                if !on && !self.peer_eligible(session, &channel) {
                    let m = "Not subscribed or eligible to this channel";
                    return dialect_error(out, conn, pushi, Some(&channel), None, m);
                }
                Op::ChannelEvents { app: app_id, channel: Some(channel.clone()), skip, count }
            }
        };
        let channel_name = channel.clone();
        let then: Then = Box::new(move |hub, answer, out| {
            if hub.sessions.get(session as usize).is_none_or(|s| s.conn != conn) {
                return;
            }
            match answer {
                StoreReply::Events(events) => {
                    let info = hub.pushi_info(app, &channel, Some(&events));
                    out.send(conn, &text_frame(&internal("pusher_internal:latest", Some(&channel), &info)));
                }
                other => {
                    warn!("history of {channel} unavailable: {other:?}");
                    dialect_error(out, conn, pushi, Some(&channel), None, "History is unavailable right now");
                }
            }
        });
        if self.store_then(app, op, then).is_err() {
            let m = "History is unavailable right now (store busy)";
            dialect_error(out, conn, pushi, Some(&channel_name), None, m);
        }
    }

    /// A Pushi-style publish from a socket: any event name but `pusher:` and
    /// `client-`, on a channel the socket is on, with `echo` and `persist`.
    pub(crate) fn socket_publish(&mut self, session: u32, msg: ClientMessage, size: usize, out: &mut dyn Outbox) {
        let s = &self.sessions[session as usize];
        let (conn, app, pushi, on_channel) = (s.conn, s.app, s.pushi, msg.channel.clone());
        let fail = |out: &mut dyn Outbox, text: &str| {
            dialect_error(out, conn, pushi, on_channel.as_deref(), None, text);
        };
        let settings = self.apps.get(app);
        let (allowed, stored) = (settings.client_publish, settings.client_persist);
        if !allowed {
            return fail(
                out,
                &format!("Unsupported event {:?} (publishing from sockets is off for this app)", msg.event),
            );
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
        let on = self.channels.find(app, &channel).is_some_and(|k| s.subscription(k).is_some());
        if !on && !self.peer_eligible(session, &channel) {
            return fail(out, "Publishing on a channel this connection is not subscribed to");
        }
        if !self.within_client_rate(session, out) {
            return;
        }
        let data = match msg.data {
            Value::String(s) => Value::String(s),
            Value::Null => Value::String(String::new()),
            other => Value::String(other.to_string()),
        };
        let s = &self.sessions[session as usize];
        let owner_id = Some(s.socket_id.clone());
        let mut extra = Map::new();
        if kind == ChannelKind::Presence {
            // Who published, as the channel authenticated them (as client events carry it).
            let user =
                self.channels.find(app, &channel).and_then(|k| s.subscription(k)).and_then(|sub| sub.user_id.clone());
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
            owner_id,
            once_per_socket: true,
        };
        if self.publish(p, None, out).is_err() {
            debug!("conn {}: socket publish refused, store busy", conn.key);
            fail(out, "The store is busy; the event was not published");
        }
    }

    /// Whether a session is on a channel by any means (for the REST `/sockets`).
    pub fn session_channels(&self, session: u32) -> Vec<String> {
        let s = &self.sessions[session as usize];
        let mut names: Vec<String> = s.subs.iter().map(|sub| self.channels.get(sub.channel).name.clone()).collect();
        names.extend(s.personal.iter().map(|u| format!("personal-{u}")));
        names
    }

    /// The connection of a session, if it is still open.
    pub fn session_conn(&self, session: u32) -> Option<ConnId> {
        self.sessions.get(session as usize).map(|s| s.conn)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pair_names_sort_user_ids() {
        assert_eq!(pair_name("chat", "bob", "alice"), "peer-chat:alice&bob");
        assert_eq!(pair_name("chat", "alice", "bob"), "peer-chat:alice&bob");
        assert_eq!(personal_user("personal-u1"), Some("u1"));
        assert_eq!(personal_user("personal-"), None);
        assert!(peer_safe("alice") && !peer_safe("a&b") && !peer_safe("a:b") && !peer_safe(""));
    }
}
