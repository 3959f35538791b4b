//! The ports of the protocol rules: every effect that leaves the reactor
//! thread's state is a value handed to [`Ports`]: a Pusher web hook event,
//! a store operation with its continuation, a delivery to Pushi's handler
//! targets, a message for other nodes ([`BusMessage`]). The server's
//! `Effects` implements it with worker pools; unit tests implement it with
//! a recorder, so the rules run on a bare [`State`] without threads.

use serde_json::Value;

use crate::apps::{App, AppIndex};
use crate::outbox::Outbox;
use crate::state::State;
use crate::store::pool::{Op, QueueFull, StoreReply};
use crate::store::TargetRecord;

/// What runs on the reactor when the store answers an operation: it may
/// change the state, use the ports again, queue frames or answer a request.
pub type Then = Box<dyn FnOnce(&mut State, &mut dyn Ports, StoreReply, &mut dyn Outbox)>;

/// A cross-session effect that other nodes of a cluster must repeat for
/// their own sessions. Single node: nobody listens ([`crate::bus::Local`]).
#[derive(Debug, Clone, PartialEq)]
pub enum BusMessage {
    /// A message for every subscriber of an app's channel, except one socket.
    ChannelEvent {
        /// The app.
        app: AppIndex,
        /// The channel.
        channel: String,
        /// The message as subscribers receive it.
        message: String,
        /// Socket id that must not receive it.
        except: Option<String>,
        /// Kept as the channel's last event (a publish to a `cache-`
        /// channel; client events are not).
        cache: bool,
    },
    /// A message for every connection signed in as a user.
    UserEvent {
        /// The app.
        app: AppIndex,
        /// The user id.
        user_id: String,
        /// The message.
        message: String,
    },
    /// Close every connection signed in as a user (HTTP API).
    Terminate {
        /// The app.
        app: AppIndex,
        /// The user id.
        user_id: String,
    },
    /// Pushi: a user was subscribed to a channel through the REST API (or
    /// no longer is), so its `personal-` sockets join (or leave) it.
    AliasChanged {
        /// The app.
        app: AppIndex,
        /// The user id.
        user_id: String,
        /// The channel aliased to the user's personal channel.
        channel: String,
        /// Added (true) or removed.
        added: bool,
    },
}

/// Every effect the protocol rules may cause outside the state.
pub trait Ports {
    /// Records a Pusher web hook event of an app (sent in batches at the end
    /// of the reactor turn). The rules raise it only when the app has web hooks.
    fn webhook(&mut self, app: AppIndex, event: Value);

    /// Submits a store operation; `then` runs on the reactor with the answer.
    /// Refused (nothing queued) when the app's store queue is full.
    fn store(&mut self, app: AppIndex, op: Op, then: Option<Then>) -> Result<(), QueueFull>;

    /// Whether the app's store queue admits `ops` more operations of `bytes`
    /// in all (a publish is admitted whole or not at all).
    fn store_has_room(&self, app: AppIndex, ops: usize, bytes: u64) -> bool;

    /// Hands a published message to Pushi's handler targets (web, e-mail,
    /// Web Push, APNs), each already chosen once for this publish.
    fn deliver(&mut self, app: AppIndex, settings: &App, targets: Vec<TargetRecord>, message: &str);

    /// Whether delivery targets are served at all (`PUSHI_HANDLERS`).
    fn delivers(&self) -> bool;

    /// Whether anyone beyond this process listens to the bus (a cluster);
    /// false lets the rules skip building [`BusMessage`]s.
    fn bus_listens(&self) -> bool;

    /// Sends a cross-session effect to the other nodes.
    fn bus(&mut self, message: BusMessage);

    /// Whether a web console watches this app: the rules build the events
    /// it shows only then, so an unwatched server pays one lookup per event.
    fn observing(&self, _app: AppIndex) -> bool {
        false
    }

    /// Shows an event (`{"name", "app", ...}`) to the consoles watching the
    /// app; bounded, it never holds back delivery to clients.
    fn observe(&mut self, _app: AppIndex, _event: Value) {}
}
