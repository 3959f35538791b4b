//! What other nodes of a cluster send (a [`BusMessage`]), applied to this
//! node's sessions: the local fan-out step of a publish made elsewhere (it
//! was persisted, hooked and delivered to targets where it was published),
//! a user's events and termination, Pushi's alias changes.

use super::membership;
use super::publish::channel_of;
use super::wire::text_frame;
use crate::outbox::Outbox;
use crate::ports::{BusMessage, Ports};
use crate::state::State;

/// A message another node published: fan-out to this node's sessions only
/// (it was persisted, hooked and delivered where it was published).
pub fn apply_remote(st: &mut State, fx: &mut dyn Ports, message: &BusMessage, out: &mut dyn Outbox) {
    match message {
        BusMessage::ChannelEvent { app, channel, message, except, cache } => {
            // A cache- channel keeps the event on every node, for its next subscriber.
            let key = if *cache { channel_of(st, *app, channel, message) } else { st.channels.find(*app, channel) };
            let Some(ch) = key.and_then(|k| st.channels.get(k)) else { return };
            let frame = text_frame(message);
            for (_, &s) in ch.subscribers.iter() {
                if let Some(session) = st.sessions.get(s) {
                    if except.as_deref() != Some(session.socket_id.as_str()) {
                        out.send(session.conn, &frame);
                    }
                }
            }
        }
        BusMessage::UserEvent { app, user_id, message } => {
            let frame = text_frame(message);
            for s in st.users.get(&(*app, user_id.clone())).into_iter().flatten() {
                if let Some(session) = st.sessions.get(*s) {
                    out.send(session.conn, &frame);
                }
            }
        }
        BusMessage::Terminate { app, user_id } => membership::terminate_local(st, *app, user_id, out),
        BusMessage::AliasChanged { app, user_id, channel, added } => {
            super::pushi::apply_alias(st, fx, *app, user_id, channel, *added, out)
        }
        BusMessage::Member { app, channel, user_id, member, seq } => {
            super::cluster::apply_member(st, fx, *app, channel, user_id, member.clone(), *seq, out)
        }
        BusMessage::SubscriptionCount { app, channel, count } => {
            if let Some(key) = st.channels.find(*app, channel) {
                membership::send_count(st, key, *count, out);
            }
        }
        BusMessage::UserPresence { app, user_id, online } => {
            membership::notify_watchers(st, *app, user_id, if *online { "online" } else { "offline" }, out)
        }
    }
}
