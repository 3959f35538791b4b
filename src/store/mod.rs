//! Durable state: apps, persisted events, per-user (offline) subscriptions
//! with their event associations, and handler targets (`/webs`, ...).
//!
//! Two backends implement [`Backend`]: the embedded SQLite store (default,
//! `PUSHI_DATA_DIR`) and MongoDB (`PUSHI_MONGO_URL`). Both are blocking; they
//! only ever run on the worker threads of [`pool::Store`], which hands results
//! back to the reactor through a `mio::Waker`. The reactor never waits on them.

pub mod mongo;
pub mod ops;
pub mod pool;
pub mod sqlite;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apps::App;
pub use crate::config::{Retention, StoreConfig};

/// Why a store operation failed; the text is logged and reported as 503.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreError(pub String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

/// Result of a store operation.
pub type StoreResult<T> = Result<T, StoreError>;

/// A persisted event (Pushi's `pushievent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Global publish order, assigned on the reactor; history sorts on it (Pushi's `id`).
    pub seq: i64,
    /// Owning app id (Pushi's `instance`).
    pub app: String,
    /// Unique message id (UUID v4), also sent to live subscribers.
    pub mid: String,
    /// Channel it was published on.
    pub channel: String,
    /// Socket id of the publishing connection, when a client published it.
    pub owner_id: Option<String>,
    /// Seconds since the epoch, as sent to subscribers.
    pub timestamp: f64,
    /// The message as delivered, without `mid` and `timestamp`.
    pub data: Value,
}

/// A user subscribed (possibly offline) to a channel (Pushi's `subscription`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubscriptionRecord {
    /// Owning app id.
    pub app: String,
    /// The user whose `personal-<user_id>` channel aggregates `event`.
    pub user_id: String,
    /// The channel name (Pushi calls it the event).
    pub event: String,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

/// Someone receiving a channel's events by other means than a socket
/// (`/webs` URL, `/smtps` e-mail, `/apns` token, `/web_pushes` endpoint).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetRecord {
    /// Owning app id.
    pub app: String,
    /// Handler: `web`, `smtp`, `apn` or `web_push`.
    pub kind: String,
    /// URL, e-mail address, device token or push endpoint.
    pub target: String,
    /// Channel whose events are delivered (may be `personal-<user_id>`).
    pub event: String,
    /// Handler-specific fields (Web Push keys), an object.
    pub extra: Value,
    /// Creation time, seconds since the epoch.
    pub created: i64,
}

/// One persisted publish: the event and the users whose history gains it.
#[derive(Debug, Clone, PartialEq)]
pub struct EventWrite {
    /// The event.
    pub event: EventRecord,
    /// Users subscribed to its channel at publish time (one association each).
    pub users: Vec<String>,
    /// How much of its app's history to keep (pruned on the store worker).
    pub retention: Retention,
}

/// A blocking store. Every write is idempotent (events by `mid`, associations
/// by `(app, mid, user_id)`, subscriptions and targets by their natural key),
/// so a write retried after an unclear failure never duplicates.
pub trait Backend: Send {
    /// Cheap round trip, for health checks and reconnection.
    fn ping(&mut self) -> StoreResult<()>;
    /// Every stored app.
    fn load_apps(&mut self) -> StoreResult<Vec<App>>;
    /// Inserts or replaces the app with this id.
    fn put_app(&mut self, app: &App) -> StoreResult<()>;
    /// Highest event `seq` stored (0 when none), so numbering continues after a restart.
    fn max_seq(&mut self) -> StoreResult<i64>;
    /// Stores events and their associations, all or nothing where the backend allows.
    fn insert_events(&mut self, batch: &[EventWrite]) -> StoreResult<()>;
    /// Events of an app, newest first (`seq` descending), optionally of one channel.
    fn channel_events(
        &mut self,
        app: &str,
        channel: Option<&str>,
        skip: usize,
        count: usize,
    ) -> StoreResult<Vec<EventRecord>>;
    /// Events associated with a user (its personal history), newest first.
    fn user_events(&mut self, app: &str, user_id: &str, skip: usize, count: usize) -> StoreResult<Vec<EventRecord>>;
    /// Every subscription of every app (start-up: personal alias maps).
    fn all_subscriptions(&mut self) -> StoreResult<Vec<SubscriptionRecord>>;
    /// Subscriptions of an app, filtered by user and/or channel, oldest first.
    fn subscriptions(
        &mut self,
        app: &str,
        user_id: Option<&str>,
        event: Option<&str>,
    ) -> StoreResult<Vec<SubscriptionRecord>>;
    /// Adds a subscription unless `(app, user_id, event)` exists; returns the
    /// stored record and whether it was created.
    fn add_subscription(&mut self, sub: &SubscriptionRecord) -> StoreResult<(SubscriptionRecord, bool)>;
    /// Removes one subscription, returning it if it existed.
    fn remove_subscription(&mut self, app: &str, user_id: &str, event: &str)
        -> StoreResult<Option<SubscriptionRecord>>;
    /// Every handler target of every app (start-up: delivery maps).
    fn all_targets(&mut self) -> StoreResult<Vec<TargetRecord>>;
    /// Targets of one app and kind, filtered by target and/or event, oldest first.
    fn targets(
        &mut self,
        app: &str,
        kind: &str,
        target: Option<&str>,
        event: Option<&str>,
    ) -> StoreResult<Vec<TargetRecord>>;
    /// Adds a target unless `(app, kind, target, event)` exists; returns the
    /// stored record and whether it was created.
    fn add_target(&mut self, rec: &TargetRecord) -> StoreResult<(TargetRecord, bool)>;
    /// Removes the targets of `(app, kind, target)`, only the one for `event`
    /// when given; returns what was removed.
    fn remove_targets(
        &mut self,
        app: &str,
        kind: &str,
        target: &str,
        event: Option<&str>,
    ) -> StoreResult<Vec<TargetRecord>>;
    /// Deletes an app's history beyond its retention (oldest first, with
    /// their associations); returns how many events went.
    fn prune_events(&mut self, app: &str, keep: Retention) -> StoreResult<u64>;
    /// Deletes an app and everything stored for it.
    fn delete_app(&mut self, app: &str) -> StoreResult<()>;
}

/// Opens a backend from its settings ([`StoreConfig`] is plain data in `config`).
pub trait OpenBackend {
    /// Opens one connection (each worker thread opens its own).
    fn open(&self) -> StoreResult<Box<dyn Backend>>;
}

impl OpenBackend for StoreConfig {
    fn open(&self) -> StoreResult<Box<dyn Backend>> {
        Ok(match self {
            StoreConfig::Embedded(dir) => Box::new(sqlite::SqliteStore::open(dir)?),
            StoreConfig::Mongo(url) => mongo::open(url)?,
            StoreConfig::Memory => Box::new(sqlite::SqliteStore::open_memory()?),
        })
    }
}

/// Seconds since the epoch, as a float (Pushi's `timestamp`).
pub fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The shared test suite every backend must pass: it lives with the
/// integration tests (`tests/store_suite/`, run against both backends by
/// `tests/store.rs`) and is compiled here only for the unit tests.
#[cfg(test)]
#[path = "../../tests/store_suite/mod.rs"]
pub(crate) mod suite;
