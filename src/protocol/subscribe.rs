//! Subscriptions: `pusher:subscribe` with each channel kind's auth rule,
//! presence members (first join and last leave per user), cache channels,
//! subscription counts, leaving, and fan-out to a channel's subscribers in
//! each session's dialect.

use log::debug;
use serde_json::{json, Value};

use super::cluster::{self, Joining, MemberClaim};
use super::membership::{
    broadcast_dialects, join_silently, leave_source, peer_eligible, peer_join, send_subscription_count,
};
use super::wire::{
    dialect_error, id_json, id_string, internal, pushi_member, pushi_member_event, subscription_error, text_frame,
};
use super::{auth, code, hook, observe, pushi};
use crate::apps::PresenceAuth;
use crate::channels::{source, valid_pushi_channel_name, ChannelKey, ChannelKind, SessionKey, Subscription};
use crate::outbox::Outbox;
use crate::ports::Ports;
use crate::state::State;

/// `pusher:subscribe`: checks the channel kind's rule, joins, replies
/// `subscription_succeeded` (or `subscription_error` with a status), and
/// tells the others (member_added, subscription_count), web hooks and peers.
pub fn subscribe(st: &mut State, fx: &mut dyn Ports, session: SessionKey, data: &Value, out: &mut dyn Outbox) {
    let Some(s) = st.sessions.get(session) else { return };
    let (conn, app, pushi) = (s.conn, s.app, s.pushi);
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
    let settings = st.apps.get(app);
    let auth = data.get("auth").and_then(Value::as_str).unwrap_or("");
    let signed = |message: &str| auth::verify_token(&settings.key, &settings.secret, auth, message);
    let plain_message = || auth::channel_message(&s.socket_id, channel, None);
    let mut member: Option<MemberClaim> = None;
    let mut peer_flag = false;
    match kind {
        ChannelKind::Public => {}
        ChannelKind::Personal => {
            let user = &channel["personal-".len()..];
            if user.is_empty() {
                return reject(out, "InvalidChannel", "personal- needs a user id", 400);
            }
            let signed_in = s.user.as_ref().is_some_and(|u| u.id == user);
            if !signed_in && !signed(&plain_message()) {
                return reject(out, "AuthError", "Invalid signature", 401);
            }
            let user = user.to_string();
            return pushi::subscribe_personal(st, fx, session, &user, out);
        }
        ChannelKind::Peer => {
            if !peer_eligible(st, session, channel) && !signed(&plain_message()) {
                return reject(out, "AuthError", "Not one of this peer channel's pair", 403);
            }
            join_silently(st, session, channel, source::DIRECT);
            observe_subscription(st, fx, session, channel, "subscribed");
            let reply = if pushi { pushi::pushi_info(st, app, channel, Some(&[])) } else { json!({}) };
            let m = internal("pusher_internal:subscription_succeeded", Some(channel), &reply);
            out.send(conn, &text_frame(&m));
            return;
        }
        ChannelKind::ServerToUser => {
            let user = s.user.as_ref().map(|u| u.id.as_str());
            if user != channel.strip_prefix("#server-to-user-") {
                return reject(out, "AuthError", "Sign in as this user first", 401);
            }
        }
        ChannelKind::Private | ChannelKind::PrivateEncrypted => {
            if !signed(&plain_message()) {
                return reject(out, "AuthError", "Invalid signature", 401);
            }
        }
        ChannelKind::Presence => match presence_claim(st, session, channel, data, auth) {
            Ok((claim, peer)) => {
                member = Some(claim);
                peer_flag = peer;
            }
            Err((kind, error, status)) => return reject(out, kind, error, status),
        },
    }
    if let (Some((uid, _, _)), false) = (&member, fx.clustered()) {
        // (A cluster's registry checks the limit for all nodes.)
        let full = st
            .channels
            .find(app, channel)
            .and_then(|k| st.channels.get(k))
            .is_some_and(|ch| ch.members.len() >= st.rules.max_presence_members && !ch.members.contains_key(uid));
        if full {
            return reject(out, "LimitReached", "Presence channel is full", code::OVER_CAPACITY);
        }
    }
    let Some(s) = st.sessions.get(session) else { return };
    let already = st.channels.find(app, channel).is_some_and(|k| s.subscription(k).is_some());
    if !already && s.subs.len() + s.personal.len() >= st.rules.max_channels_per_connection {
        return reject(out, "LimitReached", "Too many channels on this connection", 429);
    }
    let key = st.channels.find_or_create(app, channel);
    let Some(s) = st.sessions.get_mut(session) else { return };
    if let Some(sub) = s.subs.iter_mut().find(|sub| sub.channel == key) {
        // Already subscribed: confirm again, keeping the one membership.
        sub.sources |= source::DIRECT;
        let m = internal("pusher_internal:subscription_succeeded", Some(channel), &reply_data(st, key, pushi));
        out.send(conn, &text_frame(&m));
        return;
    }
    let joining = Joining { session, key, channel: channel.to_string(), member, peer: peer_flag, cached, kind };
    if fx.clustered() && joining.member.is_some() {
        // Presence in a cluster: the registry decides first (members, limit).
        return cluster::request_join(st, fx, joining, complete_join, out);
    }
    complete_join(st, fx, joining, false, out);
}

/// Joins the channel and replies `subscription_succeeded`, then member
/// events and web hooks (a cluster's come from its registry instead), the
/// cached event, the subscription count and peer pairs. `full`: the
/// registry refused the member (the channel has the most allowed).
fn complete_join(st: &mut State, fx: &mut dyn Ports, j: Joining, full: bool, out: &mut dyn Outbox) {
    let Joining { session, key, channel, member, peer: peer_flag, cached, kind } = j;
    let channel = channel.as_str();
    let Some(s) = st.sessions.get(session) else { return };
    let (conn, app, pushi) = (s.conn, s.app, s.pushi);
    if full {
        let m = subscription_error(channel, "LimitReached", "Presence channel is full", code::OVER_CAPACITY);
        out.send(conn, &text_frame(&m));
        return;
    }
    let clustered = fx.clustered();
    let member_ref = member.as_ref().map(|(id, info, _)| (id.as_str(), info.clone()));
    let (slot, first_join) = st.channels.join(key, session, member_ref);
    if !clustered && st.channels.get(key).is_some_and(|ch| ch.subscribers.len() == 1) {
        hook(st, fx, app, || json!({ "name": "channel_occupied", "channel": channel }));
    }
    if let (true, Some((uid, _, numeric))) = (first_join, &member) {
        if let Some(m) = st.channels.get_mut(key).and_then(|ch| ch.members.get_mut(uid)) {
            m.numeric = *numeric;
        }
        if !clustered {
            let user_id = id_json(uid, *numeric);
            hook(st, fx, app, || json!({ "name": "member_added", "channel": channel, "user_id": user_id }));
        }
    }
    let user_id = member.as_ref().map(|(id, _, _)| id.clone());
    let mut sub = Subscription::new(key, slot, user_id.clone(), source::DIRECT);
    sub.peer = peer_flag;
    sub.user_numeric = member.as_ref().is_some_and(|(_, _, numeric)| *numeric);
    if let Some(s) = st.sessions.get_mut(session) {
        s.subs.push(sub);
    }
    observe_subscription(st, fx, session, channel, "subscribed");

    let reply = reply_data(st, key, pushi);
    out.send(conn, &text_frame(&internal("pusher_internal:subscription_succeeded", Some(channel), &reply)));
    if let (true, false, Some((uid, info, numeric))) = (first_join, clustered, &member) {
        let added = internal(
            "pusher_internal:member_added",
            Some(channel),
            &json!({ "user_id": id_json(uid, *numeric), "user_info": info }),
        );
        let pushi_added =
            pushi_member_event("pusher:member_added", channel, &pushi_member(uid, *numeric, info, peer_flag));
        broadcast_dialects(st, key, &added, &pushi_added, Some(session), out);
    }
    if cached {
        let cache = st.channels.get(key).and_then(|ch| ch.cache.as_ref());
        let message = match cache {
            Some(c) if c.at.elapsed() < st.rules.cache_ttl => c.message.clone(),
            _ => {
                hook(st, fx, app, || json!({ "name": "cache_miss", "channel": channel }));
                json!({ "event": "pusher:cache_miss", "channel": channel }).to_string()
            }
        };
        out.send(conn, &text_frame(&message));
    }
    if st.apps.get(app).subscription_count && kind != ChannelKind::Presence && !clustered {
        send_subscription_count(st, key, out);
    }
    if let Some(uid) = &user_id {
        peer_join(st, session, key, uid, peer_flag);
    }
}

/// The member a presence subscription claims, when its auth covers it:
/// the signature covers `channel_data` (or, with the app's
/// `presence_auth: channel`, the channel alone); signed-in connections may
/// omit channel_data (pusher-js 8) and join as their signed-in user.
/// Errors are `(type, message, status)` of `pusher:subscription_error`.
fn presence_claim(
    st: &State,
    session: SessionKey,
    channel: &str,
    data: &Value,
    auth: &str,
) -> Result<(MemberClaim, bool), (&'static str, &'static str, u16)> {
    let Some(s) = st.sessions.get(session) else { return Err(("AuthError", "Session closed", 401)) };
    let settings = st.apps.get(s.app);
    // A JSON string (Pusher) or an object (Pushi's clients; signed as its compact JSON, keys sorted).
    let channel_data = match data.get("channel_data") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(o @ Value::Object(_)) => Some(o.to_string()),
        _ => None,
    };
    let (signed, parsed) = match (channel_data.as_deref(), &s.user) {
        (Some(d), _) => (Some(d), serde_json::from_str::<Value>(d).ok()),
        (None, Some(u)) => {
            let user = serde_json::from_str::<Value>(&u.data).unwrap_or(Value::Null);
            let id = user.get("id").cloned().unwrap_or_else(|| json!(u.id));
            let info = user.get("user_info").cloned().unwrap_or(Value::Null);
            (None, Some(json!({ "user_id": id, "user_info": info })))
        }
        (None, None) => return Err(("AuthError", "Presence channels need channel_data", 401)),
    };
    let verify = |message: &str| auth::verify_token(&settings.key, &settings.secret, auth, message);
    let valid = verify(&auth::channel_message(&s.socket_id, channel, signed))
        || (settings.presence_auth == PresenceAuth::Channel
            && verify(&auth::channel_message(&s.socket_id, channel, None)));
    if !valid {
        return Err(("AuthError", "Invalid signature", 401));
    }
    let Some(parsed) = parsed else { return Err(("AuthError", "channel_data is not JSON", 400)) };
    let Some(id) = parsed.get("user_id") else { return Err(("AuthError", "channel_data needs a user_id", 400)) };
    let Some(user_id) = id_string(id) else { return Err(("AuthError", "channel_data needs a user_id", 400)) };
    let info = parsed.get("user_info").cloned().unwrap_or(Value::Null);
    let peer = parsed.get("peer").and_then(Value::as_bool).unwrap_or(false);
    if peer && !pushi::peer_safe(&user_id) {
        // `peer-<base>:<a>&<b>` would be ambiguous (user `a&b` could read `a`/`b&c`'s pair).
        return Err(("InvalidUserId", "Peer user ids may not contain '&' or ':'", 400));
    }
    Ok(((user_id, info, id.is_number()), peer))
}

/// `subscription_succeeded` data: Pushi's `{name, members, alias, events}`
/// for Pushi-URL sessions, else Pusher's member list (presence) or `{}`.
fn reply_data(st: &State, key: ChannelKey, pushi: bool) -> Value {
    if pushi {
        let Some(ch) = st.channels.get(key) else { return json!({}) };
        return pushi::pushi_info(st, ch.app, &ch.name, Some(&[]));
    }
    subscription_data(st, key)
}

/// `subscription_succeeded` data: the member list for presence, else `{}`.
fn subscription_data(st: &State, key: ChannelKey) -> Value {
    let Some(ch) = st.channels.get(key) else { return json!({}) };
    if ChannelKind::of(&ch.name).0 != ChannelKind::Presence {
        return json!({});
    }
    if let Some(view) = &ch.view {
        // A cluster: the members of every node.
        let ids: Vec<Value> = view.members.iter().map(|(k, m)| id_json(k, m.numeric)).collect();
        let hash: serde_json::Map<String, Value> =
            view.members.iter().map(|(k, m)| (k.clone(), m.info.clone())).collect();
        return json!({ "presence": { "ids": ids, "hash": hash, "count": view.members.len() } });
    }
    let ids: Vec<Value> = ch.members.iter().map(|(k, m)| id_json(k, m.numeric)).collect();
    let hash: serde_json::Map<String, Value> = ch.members.iter().map(|(k, m)| (k.clone(), m.info.clone())).collect();
    json!({ "presence": { "ids": ids, "hash": hash, "count": ch.members.len() } })
}

/// Shows a session's (un)subscription to the app's open consoles.
fn observe_subscription(st: &State, fx: &mut dyn Ports, session: SessionKey, channel: &str, name: &str) {
    let Some(s) = st.sessions.get(session) else { return };
    observe(st, fx, s.app, || json!({ "name": name, "channel": channel, "socket_id": s.socket_id }));
}

/// `pusher:unsubscribe` (Pushi-URL sessions get a confirmation).
pub fn unsubscribe(st: &mut State, fx: &mut dyn Ports, session: SessionKey, channel: &str, out: &mut dyn Outbox) {
    let Some(s) = st.sessions.get(session) else { return };
    let (app, conn, pushi) = (s.app, s.conn, s.pushi);
    observe_subscription(st, fx, session, channel, "unsubscribed");
    if let Some(user) = pushi::personal_user(channel) {
        pushi::unsubscribe_personal(st, fx, session, user, out);
    } else if let Some(key) = st.channels.find(app, channel) {
        // A join still waiting for the cluster registry is called off (its answer then undoes it).
        if let Some(view) = st.channels.get_mut(key).and_then(|c| c.view.as_mut()) {
            view.pending.retain(|p| p.session != session);
        }
        leave_source(st, fx, session, key, source::DIRECT, out);
    }
    if pushi {
        // Pushi's clients expect a confirmation (Pusher's ignore it).
        let info = pushi::pushi_info(st, app, channel, Some(&[]));
        out.send(conn, &text_frame(&internal("pusher_internal:unsubscription_succeeded", Some(channel), &info)));
    }
}
