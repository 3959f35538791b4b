//! Pushi's peer channels: two members of `presence-<base>` who joined with
//! `"peer": true` share the private pair channel `peer-<base>:<a>&<b>`,
//! created when the second joins and ended when either leaves.

use std::collections::HashSet;

use crate::apps::AppIndex;
use crate::channels::{source, ChannelKey, SessionKey};
use crate::outbox::Outbox;
use crate::ports::Ports;
use crate::state::State;

use super::subscribe::{join_silently, leave_source};

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
