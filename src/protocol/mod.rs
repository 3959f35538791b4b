//! The Pusher Channels protocol, version 7, and Pushi's extensions: the
//! rules of every session as functions over the reactor thread's
//! [`State`](crate::state::State), with every effect beyond it passed to
//! [`Ports`](crate::ports::Ports) and every frame written through the
//! [`Outbox`](crate::outbox::Outbox). Nothing here names the store, the API,
//! the delivery pool or the event loop, so unit tests (`tests`) run the rules
//! on a bare state.
//!
//! - [`wire`]: encoders and the client-message parser (pure);
//! - [`session`]: open, dispatch, ping, sign-in, client events, close;
//! - [`subscribe`]: each channel kind's auth, presence, cache channels, fan-out;
//! - [`publish`]: the one publish pipeline (persist → local → bus → targets);
//! - [`remote`]: what other nodes send, applied to this node's sessions;
//! - [`cluster`]: presence and occupancy decided by the cluster registry;
//! - [`pushi`], [`peer`]: personal channels, history, socket publishing, pairs;
//! - [`auth`]: Pusher's signatures.

pub mod auth;
pub mod cluster;
pub mod membership;
pub mod peer;
pub mod publish;
pub mod pushi;
pub mod remote;
pub mod session;
pub mod subscribe;
pub mod wire;

#[cfg(test)]
mod tests;

use serde_json::Value;

use crate::apps::AppIndex;
use crate::ports::Ports;
use crate::state::State;

pub use publish::Publication;
pub use wire::{event_message, text_frame};

/// Pusher close codes (sent in `pusher:error` and as the WebSocket close code).
pub mod code {
    // 4000-4099: the client must not reconnect unchanged.
    /// No app with this key.
    pub const APP_NOT_FOUND: u16 = 4001;
    /// The app is disabled.
    pub const APP_DISABLED: u16 = 4003;
    /// The app is over its connection quota.
    pub const OVER_QUOTA: u16 = 4004;
    /// No WebSocket endpoint at this path.
    pub const PATH_NOT_FOUND: u16 = 4005;
    /// Protocol version not supported.
    pub const UNSUPPORTED_PROTOCOL: u16 = 4007;
    /// No protocol version given.
    pub const NO_PROTOCOL: u16 = 4008;
    /// Unauthorized (bad sign-in, terminated by the app).
    pub const UNAUTHORIZED: u16 = 4009;
    // 4100-4199: reconnect after a back-off.
    /// The server is over capacity.
    pub const OVER_CAPACITY: u16 = 4100;
    // 4200-4299: reconnect immediately.
    /// Generic: reconnect now (also used on shutdown).
    pub const RECONNECT: u16 = 4200;
    /// No pong to our ping.
    pub const PONG_TIMEOUT: u16 = 4201;
    // 4300-4399: other errors.
    /// Client events faster than the app allows.
    pub const CLIENT_EVENT_RATE: u16 = 4301;
    /// Watchlist longer than allowed; the first 100 ids are used.
    pub const WATCHLIST_LIMIT: u16 = 4302;
    /// Pushi-URL sessions only: a message that cannot be answered on a
    /// channel (not JSON, no `event`, an unknown `pusher:` event, no channel).
    /// Pushi's clients need a `channel` on every message, so this closes.
    pub const INVALID_MESSAGE: u16 = 4303;
}

/// Largest client event message, in bytes.
pub const MAX_CLIENT_EVENT_BYTES: usize = 10 * 1024;
/// Ids one watchlist may hold; more are ignored with a 4302 error.
pub const MAX_WATCHLIST: usize = 100;

/// Raises a Pusher web hook event when the app has web hooks, and shows it
/// to the app's open consoles (the event is only built when one of them
/// wants it: most apps have no web hooks and no console open).
pub(crate) fn hook(st: &State, fx: &mut dyn Ports, app: AppIndex, event: impl FnOnce() -> Value) {
    let hooked = !st.apps.get(app).webhooks.is_empty();
    let watched = fx.observing(app);
    if !hooked && !watched {
        return;
    }
    let event = event();
    if watched {
        observe(st, fx, app, || event.clone());
    }
    if hooked {
        fx.webhook(app, event);
    }
}

/// Shows an event to the app's open consoles, tagged with the app's id;
/// built only when a console watches the app.
pub fn observe(st: &State, fx: &mut dyn Ports, app: AppIndex, event: impl FnOnce() -> Value) {
    if fx.observing(app) {
        let mut event = event();
        event["app"] = Value::String(st.apps.get(app).id.clone());
        fx.observe(app, event);
    }
}
