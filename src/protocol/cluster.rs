//! The rules of a cluster node: presence members and occupancy are decided
//! by the cluster registry (a Redis script per transition, see
//! `bus::registry`), and each node keeps a view of every presence channel
//! its sessions are on.
//!
//! - A presence join is registered first; the answer (the members and the
//!   channel's sequence number) completes it. The registry's script
//!   publishes `member_added` to every node once per user, however many
//!   nodes hold the user's connections; `member_removed` when the user's
//!   last connection anywhere leaves.
//! - A view applies member events in sequence order: an event at or below
//!   the view's number is already in it, events before the first snapshot
//!   wait, and a snapshot newer than the view replaces it and tells the
//!   subscribers the difference. So every session sees each change once.
//! - Local subscriber counts go to the registry at the end of each turn;
//!   `channel_occupied`/`channel_vacated` come from its answer, once.
//! - After Redis or the bus comes back, [`resync`] sends everything this
//!   node holds and re-reads every view.
//! - Registry unreachable: this node's view only (local members), and
//!   `/health` says degraded until the repair.

use std::collections::HashMap;

use serde_json::{json, Value};

use super::hook;
use super::membership::{peer_added, peer_leave, tell_member};
use super::wire::id_json;
use crate::apps::AppIndex;
use crate::channels::{ChannelKey, ChannelKind, PendingJoin, SessionKey, ViewMember};
use crate::outbox::{ConnId, Outbox};
use crate::ports::{Ports, RegistryOp, RegistryReply};
use crate::state::State;

/// A presence member as the subscription declares it: canonical id,
/// `user_info`, and whether the id was sent as a JSON number.
pub(crate) type MemberClaim = (String, Value, bool);

/// A subscription that passed its channel's rule, joined now (one node)
/// or when the cluster registry has answered (presence in a cluster).
pub(crate) struct Joining {
    /// The subscribing session.
    pub session: SessionKey,
    /// The channel (created before the join).
    pub key: ChannelKey,
    /// Its name.
    pub channel: String,
    /// Presence: the member it joins as.
    pub member: Option<MemberClaim>,
    /// Pushi: joined with `"peer": true`.
    pub peer: bool,
    /// A `cache-` channel.
    pub cached: bool,
    /// The channel's kind.
    pub kind: ChannelKind,
}

/// What finishes a join once the registry has answered (`full`: refused).
pub(crate) type Complete = fn(&mut State, &mut dyn Ports, Joining, bool, &mut dyn Outbox);

/// A presence subscription in a cluster: registered with the registry;
/// [`joined`] completes it.
pub(crate) fn request_join(st: &mut State, fx: &mut dyn Ports, j: Joining, complete: Complete, out: &mut dyn Outbox) {
    let Some(s) = st.sessions.get(j.session) else { return };
    let (conn, app, socket_id) = (s.conn, s.app, s.socket_id.clone());
    let Some((user_id, info, numeric)) = j.member.clone() else { return complete(st, fx, j, false, out) };
    let member = ViewMember { info, numeric, peer: j.peer };
    let Some(ch) = st.channels.get_mut(j.key) else { return };
    let view = ch.view.get_or_insert_with(Default::default);
    if view.pending.iter().any(|p| p.session == j.session) {
        return; // already joining: one answer will confirm
    }
    let pending = PendingJoin { session: j.session, socket_id: socket_id.clone(), user_id: user_id.clone(), member };
    let op = RegistryOp::PresenceJoin {
        app,
        channel: j.channel.clone(),
        socket_id,
        user_id,
        member: pending.member.clone(),
        limit: st.rules.max_presence_members,
    };
    let pending_socket = pending.socket_id.clone();
    view.pending.push(pending);
    let registered = (app, pending_socket);
    fx.registry(
        op,
        Some(Box::new(move |st, fx, answer, out| joined(st, fx, j, conn, registered, answer, complete, out))),
    );
}

/// The registry answered a presence join (`registered`: the app and socket id it was sent for).
#[allow(clippy::too_many_arguments)]
fn joined(
    st: &mut State,
    fx: &mut dyn Ports,
    j: Joining,
    conn: ConnId,
    registered: (AppIndex, String),
    answer: Result<RegistryReply, String>,
    complete: Complete,
    out: &mut dyn Outbox,
) {
    let (app, socket_id) = registered;
    let open = st.sessions.get(j.session).is_some_and(|s| s.conn == conn);
    let pending = st.channels.get_mut(j.key).and_then(|c| {
        let view = c.view.as_mut()?;
        let at = view.pending.iter().position(|p| p.session == j.session)?;
        Some(view.pending.swap_remove(at))
    });
    let Some(pending) = pending.filter(|_| open) else {
        // Closed or unsubscribed meanwhile: undo the registration.
        if matches!(answer, Ok(RegistryReply::Joined { full: false, .. })) {
            fx.registry(RegistryOp::PresenceLeave { app, channel: j.channel, socket_id }, None);
        }
        return;
    };
    match answer {
        Ok(RegistryReply::Joined { full: true, .. }) => complete(st, fx, j, true, out),
        Ok(RegistryReply::Joined { added, seq, members, .. }) => {
            merge(st, fx, j.key, seq, members, false, out);
            if added {
                let user_id = id_json(&pending.user_id, pending.member.numeric);
                let channel = j.channel.clone();
                hook(st, fx, app, || json!({ "name": "member_added", "channel": channel, "user_id": user_id }));
            }
            complete(st, fx, j, false, out);
        }
        _ => {
            // Registry unreachable: this node's members only, until the repair.
            let Some(view) = st.channels.get_mut(j.key).and_then(|c| c.view.as_mut()) else { return };
            view.synced = true;
            view.buffered.clear();
            let new = view.members.insert(pending.user_id.clone(), pending.member.clone()).is_none();
            if new {
                tell_member(st, j.key, &pending.user_id, &pending.member, true, out);
            }
            complete(st, fx, j, false, out);
        }
    }
}

/// Applies a snapshot of a channel's members to this node's view: when it
/// is newer than the view (or `force`: after a repair), the view becomes
/// it and the subscribers are told the difference; member events that
/// waited for the first snapshot follow.
fn merge(
    st: &mut State,
    fx: &mut dyn Ports,
    key: ChannelKey,
    seq: u64,
    members: Vec<(String, ViewMember)>,
    force: bool,
    out: &mut dyn Outbox,
) {
    let Some(view) = st.channels.get_mut(key).and_then(|c| c.view.as_mut()) else { return };
    if !force && view.synced && seq <= view.seq {
        return; // the bus brought newer changes already
    }
    let mut new: HashMap<String, ViewMember> = members.into_iter().collect();
    if force {
        view.repairing = false;
    } else if view.repairing {
        // Other nodes may not have registered their members again yet.
        for (u, m) in &view.members {
            new.entry(u.clone()).or_insert_with(|| m.clone());
        }
    }
    let removed: Vec<(String, ViewMember)> =
        view.members.iter().filter(|(u, _)| !new.contains_key(*u)).map(|(u, m)| (u.clone(), m.clone())).collect();
    let added: Vec<(String, ViewMember)> =
        new.iter().filter(|(u, _)| !view.members.contains_key(*u)).map(|(u, m)| (u.clone(), m.clone())).collect();
    view.members = new;
    view.seq = seq;
    let waiting = if view.synced { Vec::new() } else { std::mem::take(&mut view.buffered) };
    view.synced = true;
    for (user, member) in &removed {
        member_changed(st, fx, key, user, member, false, out);
    }
    for (user, member) in &added {
        member_changed(st, fx, key, user, member, true, out);
    }
    for (seq, user, member) in waiting {
        apply_member_at(st, fx, key, &user, member, seq, out);
    }
}

/// A member joined (`added`) or left the cluster's view of a channel: this
/// node's subscribers are told, and its peer-flagged sessions pair with the
/// newcomer (or drop their pair with the leaver), whatever node it is on.
fn member_changed(
    st: &mut State,
    fx: &mut dyn Ports,
    key: ChannelKey,
    user_id: &str,
    member: &ViewMember,
    added: bool,
    out: &mut dyn Outbox,
) {
    tell_member(st, key, user_id, member, added, out);
    let Some(ch) = st.channels.get(key) else { return };
    let (app, name) = (ch.app, ch.name.clone());
    if added {
        peer_added(st, key, user_id);
    } else {
        peer_leave(st, fx, None, app, &name, user_id, true, out);
    }
}

/// A member event the registry published: this node's view of the channel
/// (if it has one) applies it once, in sequence order.
#[allow(clippy::too_many_arguments)]
pub fn apply_member(
    st: &mut State,
    fx: &mut dyn Ports,
    app: AppIndex,
    channel: &str,
    user_id: &str,
    member: Option<ViewMember>,
    seq: u64,
    out: &mut dyn Outbox,
) {
    if let Some(key) = st.channels.find(app, channel) {
        apply_member_at(st, fx, key, user_id, member, seq, out);
    }
}

fn apply_member_at(
    st: &mut State,
    fx: &mut dyn Ports,
    key: ChannelKey,
    user_id: &str,
    member: Option<ViewMember>,
    seq: u64,
    out: &mut dyn Outbox,
) {
    let Some(view) = st.channels.get_mut(key).and_then(|c| c.view.as_mut()) else { return };
    if !view.synced {
        view.buffered.push((seq, user_id.to_string(), member));
        return;
    }
    if seq <= view.seq {
        return;
    }
    view.seq = seq;
    match member {
        Some(m) => {
            if view.members.insert(user_id.to_string(), m.clone()).is_none() {
                member_changed(st, fx, key, user_id, &m, true, out);
            }
        }
        None => {
            if let Some(m) = view.members.remove(user_id) {
                member_changed(st, fx, key, user_id, &m, false, out);
            }
        }
    }
}

/// End of a turn: the local subscriber counts that changed go to the
/// registry; its answer says when a channel became occupied or vacant in
/// the whole cluster, and this node sends that web hook.
pub fn flush_occupancy(st: &mut State, fx: &mut dyn Ports) {
    for (app, channel) in st.channels.take_touched() {
        let count = st.channels.find(app, &channel).and_then(|k| st.channels.get(k)).map_or(0, |c| c.subscribers.len());
        let notify = st.apps.get(app).subscription_count && ChannelKind::of(&channel).0 != ChannelKind::Presence;
        let op = RegistryOp::Occupancy { app, channel: channel.clone(), count, notify };
        fx.registry(
            op,
            Some(Box::new(move |st, fx, answer, _out| {
                let name = match answer {
                    Ok(RegistryReply::Occupancy(Some(true))) => "channel_occupied",
                    Ok(RegistryReply::Occupancy(Some(false))) => "channel_vacated",
                    _ => return,
                };
                hook(st, fx, app, || json!({ "name": name, "channel": channel }));
            })),
        );
    }
}

/// How long after a re-synchronisation the views are read again in full
/// (every node has registered its connections again by then).
pub const REFETCH_AFTER: std::time::Duration = std::time::Duration::from_secs(3);

/// The registry lost what this node registered, or the bus lost messages:
/// send everything this node holds: presence connections, subscriber
/// counts, signed-in connections, quota counts (the registry drops what it had under
/// this node and is not listed). Views wait for a snapshot (member events
/// are held) and only gain members until [`refetch`], which the caller
/// runs [`REFETCH_AFTER`] later.
pub fn resync(st: &mut State, fx: &mut dyn Ports) {
    let mut presence = Vec::new();
    let mut occupancy = Vec::new();
    for (key, ch) in st.channels.iter() {
        if !ch.subscribers.is_empty() {
            occupancy.push((ch.app, ch.name.clone(), ch.subscribers.len()));
        }
        let Some(view) = &ch.view else { continue };
        for (_, &s) in ch.subscribers.iter() {
            let Some(session) = st.sessions.get(s) else { continue };
            let Some(sub) = session.subscription(key) else { continue };
            let Some(uid) = &sub.user_id else { continue };
            let info = ch.members.get(uid).map_or(Value::Null, |m| m.info.clone());
            let member = ViewMember { info, numeric: sub.user_numeric, peer: sub.peer };
            presence.push((ch.app, ch.name.clone(), session.socket_id.clone(), uid.clone(), member));
        }
        for p in &view.pending {
            presence.push((ch.app, ch.name.clone(), p.socket_id.clone(), p.user_id.clone(), p.member.clone()));
        }
    }
    let mut users = Vec::new();
    let mut connections: HashMap<AppIndex, usize> = HashMap::new();
    for (_, s) in st.sessions.iter() {
        if let Some(u) = &s.user {
            users.push((s.app, u.id.clone(), s.socket_id.clone()));
        }
        if s.quota {
            *connections.entry(s.app).or_default() += 1;
        }
    }
    let connections: Vec<(AppIndex, usize)> = connections.into_iter().collect();
    let keys: Vec<ChannelKey> = st.channels.iter().filter(|(_, c)| c.view.is_some()).map(|(k, _)| k).collect();
    for key in keys {
        if let Some(view) = st.channels.get_mut(key).and_then(|c| c.view.as_mut()) {
            view.synced = false;
            view.repairing = true;
        }
    }
    log::info!(
        "cluster: registering {} presence connection(s) and {} channel(s) again",
        presence.len(),
        occupancy.len()
    );
    fx.registry(
        RegistryOp::Sync { presence, occupancy, users, connections },
        Some(Box::new(|st, fx, answer, _out| {
            let Ok(RegistryReply::Synced { hooks }) = answer else { return };
            for (app_id, event) in hooks {
                if let Some(app) = st.apps.by_id(&app_id) {
                    hook(st, fx, app, || event);
                }
            }
        })),
    );
}

/// Reads every presence view again in full (the end of a repair) and tells
/// the subscribers the difference.
pub fn refetch(st: &mut State, fx: &mut dyn Ports) {
    let views: Vec<(ChannelKey, AppIndex, String)> =
        st.channels.iter().filter(|(_, c)| c.view.is_some()).map(|(k, c)| (k, c.app, c.name.clone())).collect();
    for (key, app, channel) in views {
        fx.registry(
            RegistryOp::Members { app, channel },
            Some(Box::new(move |st, fx, answer, out| {
                if let Ok(RegistryReply::Members { seq, members }) = answer {
                    merge(st, fx, key, seq, members, true, out);
                }
            })),
        );
    }
}
