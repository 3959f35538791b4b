//! What the console shows of the state, as one JSON value: per app its
//! connections, channels (subscription and user counts, presence members)
//! and message counts, plus the server's counters (store, web hooks,
//! delivery targets: process-wide, as `/health/detailed` shows any app
//! session). Lists are capped so a large server costs the same to watch.

use std::sync::atomic::Ordering::Relaxed;

use serde_json::{json, Value};

use crate::apps::AppIndex;
use crate::channels::ChannelKind;
use crate::effects::Effects;
use crate::state::State;

/// Channels listed per app (the busiest first); the count covers all.
pub const MAX_CHANNELS: usize = 100;
/// Connections listed per app; the count covers all.
pub const MAX_SOCKETS: usize = 100;
/// Presence members listed per channel.
pub const MAX_MEMBERS: usize = 50;
/// Apps detailed in the operator's all-apps view.
pub const MAX_APPS: usize = 50;

/// The snapshot of one app (`Some`) or of every app (the operator's view).
pub fn snapshot(st: &State, fx: &Effects, app: Option<AppIndex>) -> Value {
    let apps: Vec<Value> = match app {
        Some(app) => vec![app_snapshot(st, fx, app)],
        None => st
            .apps
            .iter()
            .filter_map(|a| st.apps.by_id(&a.id))
            .take(MAX_APPS)
            .map(|app| app_snapshot(st, fx, app))
            .collect(),
    };
    let h = &fx.store.health;
    let degraded = h.degraded.load(Relaxed);
    let hooks = &fx.webhooks.stats;
    json!({
        "type": "snapshot",
        "time": crate::store::now_seconds(),
        "server": {
            "version": env!("CARGO_PKG_VERSION"),
            "uptime": st.started.elapsed().as_secs(),
            "store": {
                "status": if degraded { "degraded" } else { "ok" },
                "queued": h.queued.load(Relaxed),
                "write_failures": h.write_failures.load(Relaxed),
            },
            "webhooks": {
                "queued": hooks.queued.load(Relaxed), "sent": hooks.sent.load(Relaxed),
                "failed": hooks.failed.load(Relaxed), "dropped": hooks.dropped.load(Relaxed),
            },
            "deliveries": fx.deliveries_health(st),
            "cluster": fx.bus.connected().map(|up| if up { "ok" } else { "disconnected" }),
        },
        "apps": apps,
    })
}

/// One app: connections, channels, members and message counts.
fn app_snapshot(st: &State, fx: &Effects, app: AppIndex) -> Value {
    let settings = st.apps.get(app);
    let mut channels: Vec<_> = st.channels.occupied(app).collect();
    let channel_count = channels.len();
    channels.sort_by(|a, b| b.subscribers.len().cmp(&a.subscribers.len()).then_with(|| a.name.cmp(&b.name)));
    let channels: Vec<Value> = channels
        .iter()
        .take(MAX_CHANNELS)
        .map(|ch| {
            let presence = ChannelKind::of(&ch.name).0 == ChannelKind::Presence;
            let mut v = json!({ "name": ch.name, "subscription_count": ch.subscribers.len() });
            if presence {
                let mut members: Vec<Value> = ch
                    .members
                    .iter()
                    .take(MAX_MEMBERS)
                    .map(|(id, m)| json!({ "id": id, "info": m.info, "connections": m.connections }))
                    .collect();
                members.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
                v["user_count"] = json!(ch.members.len());
                v["members"] = Value::Array(members);
            }
            v
        })
        .collect();
    let sockets: Vec<Value> = st
        .sessions
        .iter()
        .filter(|(_, s)| s.app == app)
        .take(MAX_SOCKETS)
        .map(|(_, s)| {
            let names: Vec<&str> =
                s.subs.iter().filter_map(|sub| st.channels.get(sub.channel)).map(|c| c.name.as_str()).collect();
            json!({
                "socket_id": s.socket_id,
                "user_id": s.user.as_ref().map(|u| u.id.as_str()),
                "channels": names.iter().take(20).collect::<Vec<_>>(),
                "channel_count": names.len(),
                "dialect": if s.pushi { "pushi" } else { "pusher" },
            })
        })
        .collect();
    let (messages, deliveries) = fx.tap.counts(app);
    json!({
        "id": settings.id,
        "name": settings.name,
        "key": settings.key,
        "enabled": settings.enabled,
        "connections": st.connections_of(app),
        "channel_count": channel_count,
        "channels": channels,
        "sockets": sockets,
        "messages": messages,
        "deliveries": deliveries,
        "webhooks": settings.webhooks.len(),
    })
}
