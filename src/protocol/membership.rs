//! Membership: how sessions join and leave channels, and what that changes
//! for the others (member_removed, channel_vacated, subscription counts,
//! peer pairs); fan-out to a channel's subscribers in each session's
//! dialect; the per-session limits every rule shares. The lowest layer of
//! the rules: it calls no other rule module.

use std::collections::HashSet;

use serde_json::{json, Value};

use super::peer::{pair_name, peer_safe};
use super::wire::{
    error_and_close, id_json, internal, pushi_member, pushi_member_event, text_frame, watchlist_message,
};
use super::{code, hook};
use crate::apps::AppIndex;
use crate::channels::{source, ChannelKey, ChannelKind, SessionKey, Subscription, ViewMember};
use crate::outbox::{Outbox, SharedFrame};
use crate::ports::{Ports, RegistryOp, RegistryReply};
use crate::state::State;

/// A session leaves a channel: member_removed when it was the user's last
/// connection there, channel_vacated when it was the last subscriber, the
/// new subscription count, and its peer pairs there end.
pub(crate) fn leave_channel(
    st: &mut State,
    fx: &mut dyn Ports,
    sub: &Subscription,
    session: SessionKey,
    out: &mut dyn Outbox,
) {
    let socket_id = st.sessions.get(session).map(|s| s.socket_id.clone()).unwrap_or_default();
    leave_channel_as(st, fx, sub, session, &socket_id, out);
}

/// [`leave_channel`] for a session known by its socket id (a closed
/// session is no longer in the table).
pub(crate) fn leave_channel_as(
    st: &mut State,
    fx: &mut dyn Ports,
    sub: &Subscription,
    session: SessionKey,
    socket_id: &str,
    out: &mut dyn Outbox,
) {
    let Some(ch) = st.channels.get(sub.channel) else { return };
    let (name, app) = (ch.name.clone(), ch.app);
    // The leaver's user_info, for Pushi's `member` (gone from the channel once it has left).
    let info = sub.user_id.as_ref().and_then(|u| ch.members.get(u)).map(|m| m.info.clone());
    let left = st.channels.leave(sub, st.rules.cache_ttl);
    if let Some(uid) = &sub.user_id {
        // A cluster: the others drop their pair when the registry says the user left everywhere.
        let gone = left.member_removed.is_some() && !fx.clustered();
        peer_leave(st, fx, Some(session), app, &name, uid, gone, out);
    }
    if fx.clustered() {
        // The registry decides member_removed and channel_vacated for the cluster.
        if let Some(uid) = sub.user_id.clone() {
            leave_presence(fx, app, name.clone(), socket_id, uid, sub.user_numeric, left.member_removed.is_some());
        }
    } else {
        if let Some(uid) = &left.member_removed {
            let user_id = id_json(uid, sub.user_numeric);
            hook(st, fx, app, || json!({ "name": "member_removed", "channel": name, "user_id": user_id }));
        }
        if left.vacated {
            hook(st, fx, app, || json!({ "name": "channel_vacated", "channel": name }));
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
                broadcast_dialects(st, sub.channel, &m, &pushi_removed, None, out);
            }
        }
    }
    // (A cluster's counts come from its registry, once per turn.)
    let counted = st.apps.get(app).subscription_count && ChannelKind::of(&name).0 != ChannelKind::Presence;
    if !left.vacated && counted && !fx.clustered() {
        send_subscription_count(st, sub.channel, out);
    }
}

/// Cluster: a presence connection left; the registry says whether it was
/// the user's last anywhere (then its script has told every node, and this
/// node sends the web hook). Registry unreachable: this node's view loses
/// the member when its last local connection left.
fn leave_presence(
    fx: &mut dyn Ports,
    app: AppIndex,
    channel: String,
    socket_id: &str,
    user_id: String,
    numeric: bool,
    last_here: bool,
) {
    let op = RegistryOp::PresenceLeave { app, channel: channel.clone(), socket_id: socket_id.to_string() };
    fx.registry(
        op,
        Some(Box::new(move |st, fx, answer, out| match answer {
            Ok(RegistryReply::Left { removed: true }) => {
                let user_id = id_json(&user_id, numeric);
                hook(st, fx, app, || json!({ "name": "member_removed", "channel": channel, "user_id": user_id }));
            }
            Err(_) if last_here => {
                let Some(key) = st.channels.find(app, &channel) else { return };
                let gone = st.channels.get_mut(key).and_then(|c| c.view.as_mut()?.members.remove(&user_id));
                if let Some(member) = gone {
                    tell_member(st, key, &user_id, &member, false, out);
                    peer_leave(st, fx, None, app, &channel, &user_id, true, out);
                }
            }
            _ => {}
        })),
    );
}

/// Tells a presence channel's subscribers on this node that a member
/// joined (`added`) or left, in each session's dialect.
pub(crate) fn tell_member(
    st: &State,
    key: ChannelKey,
    user_id: &str,
    member: &ViewMember,
    added: bool,
    out: &mut dyn Outbox,
) {
    let Some(ch) = st.channels.get(key) else { return };
    let uid = id_json(user_id, member.numeric);
    let (event, pushi_event, data) = if added {
        ("pusher_internal:member_added", "pusher:member_added", json!({ "user_id": uid, "user_info": member.info }))
    } else {
        ("pusher_internal:member_removed", "pusher:member_removed", json!({ "user_id": uid }))
    };
    let m = internal(event, Some(&ch.name), &data);
    let p =
        pushi_member_event(pushi_event, &ch.name, &pushi_member(user_id, member.numeric, &member.info, member.peer));
    broadcast_dialects(st, key, &m, &p, None, out);
}

/// Adds a reason for a session to be on a channel, joining it if it was not.
pub(crate) fn join_silently(st: &mut State, session: SessionKey, channel: &str, why: u8) -> Option<ChannelKey> {
    let app = st.sessions.get(session)?.app;
    let key = st.channels.find_or_create(app, channel);
    let s = st.sessions.get_mut(session)?;
    if let Some(sub) = s.subs.iter_mut().find(|sub| sub.channel == key) {
        sub.sources |= why;
        return Some(key);
    }
    let (slot, _) = st.channels.join(key, session, None);
    s.subs.push(Subscription::new(key, slot, None, why));
    Some(key)
}

/// Removes a reason; the session leaves the channel when none is left.
pub(crate) fn leave_source(
    st: &mut State,
    fx: &mut dyn Ports,
    session: SessionKey,
    key: ChannelKey,
    why: u8,
    out: &mut dyn Outbox,
) {
    let Some(s) = st.sessions.get_mut(session) else { return };
    let Some(pos) = s.subs.iter().position(|sub| sub.channel == key) else { return };
    s.subs[pos].sources &= !why;
    if s.subs[pos].sources == 0 {
        let sub = s.subs.swap_remove(pos);
        leave_channel(st, fx, &sub, session, out);
    }
}

/// Queues a message to every subscriber of a channel but one, in each
/// session's dialect: `pusher` text for Pusher-URL sessions, `pushi` for Pushi-URL ones.
pub(crate) fn broadcast_dialects(
    st: &State,
    key: ChannelKey,
    pusher: &str,
    pushi: &str,
    except: Option<SessionKey>,
    out: &mut dyn Outbox,
) {
    let Some(ch) = st.channels.get(key) else { return };
    let (mut pusher_frame, mut pushi_frame) = (None, None);
    for (_, &s) in ch.subscribers.iter() {
        if Some(s) == except {
            continue;
        }
        let Some(session) = st.sessions.get(s) else { continue };
        let frame = if session.pushi {
            pushi_frame.get_or_insert_with(|| text_frame(pushi))
        } else {
            pusher_frame.get_or_insert_with(|| text_frame(pusher))
        };
        out.send(session.conn, frame);
    }
}

/// Queues a frame to every subscriber of a channel except one session.
pub fn broadcast(st: &State, key: ChannelKey, frame: &SharedFrame, except: Option<SessionKey>, out: &mut dyn Outbox) {
    let Some(ch) = st.channels.get(key) else { return };
    for (_, &s) in ch.subscribers.iter() {
        if Some(s) != except {
            if let Some(session) = st.sessions.get(s) {
                out.send(session.conn, frame);
            }
        }
    }
}

/// `pusher_internal:subscription_count` to every subscriber of a channel.
pub(crate) fn send_subscription_count(st: &State, key: ChannelKey, out: &mut dyn Outbox) {
    let Some(ch) = st.channels.get(key) else { return };
    send_count(st, key, ch.subscribers.len() as u64, out);
}

/// `pusher_internal:subscription_count` with this count (a cluster's total).
pub(crate) fn send_count(st: &State, key: ChannelKey, count: u64, out: &mut dyn Outbox) {
    let Some(ch) = st.channels.get(key) else { return };
    let m = internal("pusher_internal:subscription_count", Some(&ch.name), &json!({ "subscription_count": count }));
    broadcast(st, key, &text_frame(&m), None, out);
}

/// Whether a session may use a peer channel: it is on the base presence
/// channel as one of the pair.
pub(crate) fn peer_eligible(st: &State, session: SessionKey, channel: &str) -> bool {
    let Some((base, tail)) = channel.strip_prefix("peer-").and_then(|r| r.split_once(':')) else { return false };
    let Some(s) = st.sessions.get(session) else { return false };
    let Some(key) = st.channels.find(s.app, &format!("presence-{base}")) else { return false };
    let Some(me) = s.subscription(key).and_then(|sub| sub.user_id.as_deref()) else { return false };
    if !peer_safe(me) {
        return false;
    }
    let mine = |other: &str| peer_safe(other) && other != me && pair_name(base, me, other) == channel;
    tail.strip_prefix(&format!("{me}&")).is_some_and(mine) || tail.strip_suffix(&format!("&{me}")).is_some_and(mine)
}

/// A session joined presence channel `key` as `me`: pair channels with
/// every other member for each peer-flagged socket involved.
pub(crate) fn peer_join(st: &mut State, session: SessionKey, key: ChannelKey, me: &str, my_flag: bool) {
    let Some(ch) = st.channels.get(key) else { return };
    let Some(base) = ch.name.strip_prefix("presence-").map(str::to_string) else { return };
    let others: Vec<(SessionKey, String, bool)> = ch
        .subscribers
        .iter()
        .filter(|(_, &s)| s != session)
        .filter_map(|(_, &s)| {
            let sub = st.sessions.get(s)?.subscription(key)?;
            let uid = sub.user_id.clone()?;
            (uid != me && peer_safe(&uid) && peer_safe(me)).then_some((s, uid, sub.peer))
        })
        .collect();
    let mut paired: HashSet<String> = HashSet::new();
    if my_flag && peer_safe(me) {
        // A cluster: pairs with the members of every node (their nodes pair their sessions with us).
        let remote: Vec<String> = ch
            .view
            .iter()
            .flat_map(|v| v.members.keys())
            .filter(|uid| uid.as_str() != me && peer_safe(uid))
            .cloned()
            .collect();
        for uid in remote {
            if paired.insert(uid.clone()) {
                join_silently(st, session, &pair_name(&base, me, &uid), source::PEER);
            }
        }
    }
    for (other, uid, flag) in others {
        let pair = pair_name(&base, me, &uid);
        if my_flag && paired.insert(uid.clone()) {
            join_silently(st, session, &pair, source::PEER);
        }
        if flag {
            join_silently(st, other, &pair, source::PEER);
        }
    }
}

/// Cluster: `newcomer` joined presence channel `key` on some node: this
/// node's peer-flagged sessions there pair with it.
pub(crate) fn peer_added(st: &mut State, key: ChannelKey, newcomer: &str) {
    let Some(ch) = st.channels.get(key) else { return };
    let Some(base) = ch.name.strip_prefix("presence-").map(str::to_string) else { return };
    if !peer_safe(newcomer) {
        return;
    }
    let flagged: Vec<(SessionKey, String)> = ch
        .subscribers
        .iter()
        .filter_map(|(_, &s)| {
            let sub = st.sessions.get(s)?.subscription(key)?;
            let uid = sub.user_id.clone()?;
            (sub.peer && uid != newcomer && peer_safe(&uid)).then_some((s, uid))
        })
        .collect();
    for (s, uid) in flagged {
        join_silently(st, s, &pair_name(&base, &uid, newcomer), source::PEER);
    }
}

/// `me` left presence channel `name` (`gone`: its last connection): the
/// leaving session drops its pair channels there, and when the user is gone
/// the others drop their pair channel with it.
#[allow(clippy::too_many_arguments)]
pub(crate) fn peer_leave(
    st: &mut State,
    fx: &mut dyn Ports,
    session: Option<SessionKey>,
    app: AppIndex,
    name: &str,
    me: &str,
    gone: bool,
    out: &mut dyn Outbox,
) {
    let Some(base) = name.strip_prefix("presence-") else { return };
    if let Some((s, session)) = session.and_then(|s| Some((s, st.sessions.get(s)?))) {
        let prefix = format!("peer-{base}:");
        let mine: Vec<ChannelKey> = session
            .subs
            .iter()
            .filter(|sub| st.channels.name(sub.channel).starts_with(&prefix))
            .map(|sub| sub.channel)
            .collect();
        for key in mine {
            // A pair channel lives as long as the pair: a direct subscription to it ends too.
            leave_source(st, fx, s, key, source::PEER | source::DIRECT, out);
        }
    }
    if !gone {
        return;
    }
    let Some(key) = st.channels.find(app, name) else { return };
    let Some(ch) = st.channels.get(key) else { return };
    let others: Vec<(SessionKey, String)> = ch
        .subscribers
        .iter()
        .filter_map(|(_, &s)| {
            let sub = st.sessions.get(s)?.subscription(key)?;
            Some((s, sub.user_id.clone()?))
        })
        .collect();
    for (other, uid) in others {
        if let Some(pair) = st.channels.find(app, &pair_name(base, &uid, me)) {
            leave_source(st, fx, other, pair, source::PEER | source::DIRECT, out);
        }
    }
}

/// A session leaves the personal index of these users (its channels are left by the caller).
pub(crate) fn forget_personal(st: &mut State, session: SessionKey, app: AppIndex, users: &[String]) {
    for user in users {
        let key = (app, user.clone());
        if let Some(list) = st.pushi.personal_sessions.get_mut(&key) {
            list.retain(|x| *x != session);
            if list.is_empty() {
                st.pushi.personal_sessions.remove(&key);
            }
        }
    }
}

/// Counts one client-sent event; false (and the connection closed with
/// 4301) when the session is over the per-second rate.
pub(crate) fn within_client_rate(st: &mut State, session: SessionKey, out: &mut dyn Outbox) -> bool {
    let now_sec = st.started.elapsed().as_secs();
    let limit = st.rules.client_event_rate;
    let Some(s) = st.sessions.get_mut(session) else { return false };
    if s.client_window != now_sec {
        s.client_window = now_sec;
        s.client_count = 0;
    }
    s.client_count += 1;
    if s.client_count > limit {
        let text = "Client event rejected due to rate limit";
        error_and_close(out, s.conn, s.pushi, code::CLIENT_EVENT_RATE, text);
        return false;
    }
    true
}

/// Closes this node's connections signed in as this user.
pub(crate) fn terminate_local(st: &State, app: AppIndex, user_id: &str, out: &mut dyn Outbox) {
    let Some(list) = st.users.get(&(app, user_id.to_string())) else { return };
    for s in list.iter().filter_map(|&s| st.sessions.get(s)) {
        error_and_close(out, s.conn, s.pushi, code::UNAUTHORIZED, "Connection terminated by the app");
    }
}

/// Tells every session watching `user_id` that it went online or offline.
pub(crate) fn notify_watchers(st: &State, app: AppIndex, user_id: &str, change: &str, out: &mut dyn Outbox) {
    let Some(list) = st.watchers.get(&(app, user_id.to_string())) else { return };
    let frame = text_frame(&watchlist_message(change, &[user_id]));
    for s in list.iter().filter_map(|&s| st.sessions.get(s)) {
        out.send(s.conn, &frame);
    }
}
