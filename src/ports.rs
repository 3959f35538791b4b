//! The ports of the protocol rules: every effect that leaves the reactor
//! thread's state is a value handed to [`Ports`]: a Pusher web hook event,
//! a store operation with its continuation, a delivery to Pushi's handler
//! targets, a message for other nodes ([`BusMessage`]). The server's
//! `Effects` implements it with worker pools; unit tests implement it with
//! a recorder, so the rules run on a bare [`State`] without threads.

use serde_json::Value;

use crate::apps::{App, AppIndex};
use crate::channels::ViewMember;
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
    /// A presence member change decided by the cluster registry (received
    /// only: the registry's script publishes it, numbered per channel).
    Member {
        /// The app.
        app: AppIndex,
        /// The presence channel.
        channel: String,
        /// The user id.
        user_id: String,
        /// The member that joined; None: the user's last connection left.
        member: Option<ViewMember>,
        /// The channel's member sequence number after this change.
        seq: u64,
    },
    /// A channel's subscriber count in the whole cluster changed (received
    /// only, from the registry): its subscribers here are told.
    SubscriptionCount {
        /// The app.
        app: AppIndex,
        /// The channel.
        channel: String,
        /// Subscribers in the cluster.
        count: u64,
    },
    /// A user's first signed-in connection anywhere, or its last one gone
    /// (received only, from the registry): watchers are told.
    UserPresence {
        /// The app.
        app: AppIndex,
        /// The user id.
        user_id: String,
        /// Online (true) or offline.
        online: bool,
    },
}

/// What runs on the reactor when the cluster registry answers (Err: the
/// registry is unreachable; the rules fall back to this node's view).
pub type RegistryThen = Box<dyn FnOnce(&mut State, &mut dyn Ports, Result<RegistryReply, String>, &mut dyn Outbox)>;

/// A change or a read of the cluster's shared state (a Redis script, run
/// atomically: each transition is decided once for the whole cluster).
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryOp {
    /// A connection joins a presence channel (idempotent per socket).
    PresenceJoin {
        /// The app.
        app: AppIndex,
        /// The channel.
        channel: String,
        /// The joining socket.
        socket_id: String,
        /// The user.
        user_id: String,
        /// Its member record.
        member: ViewMember,
        /// Members per channel at most (0: no limit).
        limit: usize,
    },
    /// A connection left a presence channel.
    PresenceLeave {
        /// The app.
        app: AppIndex,
        /// The channel.
        channel: String,
        /// The leaving socket.
        socket_id: String,
    },
    /// This node's subscriber count of a channel (0: none left here).
    Occupancy {
        /// The app.
        app: AppIndex,
        /// The channel.
        channel: String,
        /// Local subscribers.
        count: usize,
        /// Publish the cluster's new total to every node
        /// (`pusher_internal:subscription_count`).
        notify: bool,
    },
    /// REST calls of an app accepted by this node in the current second;
    /// the answer is the cluster's total for that second.
    ApiCalls {
        /// The app.
        app: AppIndex,
        /// Unix second.
        second: u64,
        /// Calls accepted here since the last report.
        calls: u64,
    },
    /// Occupied channels of an app whose names start with a prefix.
    Channels {
        /// The app.
        app: AppIndex,
        /// Name prefix ("" for all).
        prefix: String,
    },
    /// One channel's counts.
    Channel {
        /// The app.
        app: AppIndex,
        /// The channel.
        channel: String,
    },
    /// A presence channel's members and sequence number.
    Members {
        /// The app.
        app: AppIndex,
        /// The channel.
        channel: String,
    },
    /// A new connection, counted against the app's quota for the cluster.
    Admit {
        /// The app.
        app: AppIndex,
        /// The app's most connections.
        limit: usize,
    },
    /// A connection counted by [`RegistryOp::Admit`] closed.
    Release {
        /// The app.
        app: AppIndex,
    },
    /// A connection signed in (watchlists); the answer lists the watched
    /// users online anywhere.
    SignIn {
        /// The app.
        app: AppIndex,
        /// The user.
        user_id: String,
        /// The connection.
        socket_id: String,
        /// The user ids it watches.
        watchlist: Vec<String>,
    },
    /// A signed-in connection closed.
    SignOut {
        /// The app.
        app: AppIndex,
        /// The connection.
        socket_id: String,
    },
    /// Everything this node holds, replacing what the registry has under
    /// its name (after Redis or the bus came back, or at start).
    Sync {
        /// Presence connections: app, channel, socket id, user id, member.
        presence: Vec<(AppIndex, String, String, String, ViewMember)>,
        /// Local subscriber counts: app, channel, count.
        occupancy: Vec<(AppIndex, String, usize)>,
        /// Signed-in connections: app, user id, socket id.
        users: Vec<(AppIndex, String, String)>,
        /// Connections counted against quotas: app, count.
        connections: Vec<(AppIndex, usize)>,
    },
}

/// The registry's answer to a [`RegistryOp`].
#[derive(Debug, Clone, PartialEq)]
pub enum RegistryReply {
    /// A presence join: whether it added the user (its first connection
    /// anywhere), or was refused because the channel is full; the members
    /// and sequence number after it.
    Joined {
        /// The user's first connection in the cluster.
        added: bool,
        /// Refused: the channel has the most members allowed.
        full: bool,
        /// Sequence number after the join.
        seq: u64,
        /// Every member.
        members: Vec<(String, ViewMember)>,
    },
    /// A presence leave: the user's last connection anywhere left.
    Left {
        /// The member was removed.
        removed: bool,
    },
    /// Occupancy: Some(true) when the channel became occupied in the
    /// cluster, Some(false) when it became vacant.
    Occupancy(Option<bool>),
    /// Occupied channels: name, subscriptions, presence users.
    Channels(Vec<(String, u64, u64)>),
    /// One channel: subscriptions and presence users in the cluster.
    Channel {
        /// Subscriptions.
        subscriptions: u64,
        /// Presence users.
        users: u64,
    },
    /// A presence channel's members.
    Members {
        /// Sequence number.
        seq: u64,
        /// Every member.
        members: Vec<(String, ViewMember)>,
    },
    /// [`RegistryOp::ApiCalls`]: the cluster's calls in that second.
    Calls(u64),
    /// [`RegistryOp::Admit`]: the connection fits the app's quota.
    Admitted(bool),
    /// [`RegistryOp::SignIn`]: the watched users online anywhere.
    Online(Vec<String>),
    /// Done, nothing to say.
    Done,
    /// [`RegistryOp::Sync`] done: the web hooks it decided (app id, event).
    Synced {
        /// Hooks for members and channels that came or went unseen.
        hooks: Vec<(String, Value)>,
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

    /// Whether a cluster registry keeps the shared state (presence,
    /// occupancy); false on a single node, where the state is the truth.
    fn clustered(&self) -> bool {
        false
    }

    /// Runs a registry operation; `then` gets the answer on the reactor.
    /// Single node: never called.
    fn registry(&mut self, _op: RegistryOp, _then: Option<RegistryThen>) {}

    /// Whether a web console watches this app: the rules build the events
    /// it shows only then, so an unwatched server pays one lookup per event.
    fn observing(&self, _app: AppIndex) -> bool {
        false
    }

    /// Shows an event (`{"name", "app", ...}`) to the consoles watching the
    /// app; bounded, it never holds back delivery to clients.
    fn observe(&mut self, _app: AppIndex, _event: Value) {}
}
