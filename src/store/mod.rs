//! Durable state: apps, persisted events, per-user (offline) subscriptions
//! with their event associations, and handler targets (`/webs`, ...).
//!
//! Two backends implement [`Backend`]: the embedded SQLite store (default,
//! `PUSHI_DATA_DIR`) and MongoDB (`PUSHI_MONGO_URL`). Both are blocking; they
//! only ever run on the worker threads of [`pool::Store`], which hands results
//! back to the reactor through a `mio::Waker`. The reactor never waits on them.

pub mod mongo;
pub mod pool;
pub mod sqlite;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::apps::App;

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

/// How much history an app keeps: the newest `max_events` events, none older
/// than `max_age_secs` seconds (0: no age limit). Keeps one tenant from
/// filling the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retention {
    /// Most events stored per app.
    pub max_events: u64,
    /// Oldest event kept, in seconds (0: no limit).
    pub max_age_secs: u64,
}

impl Default for Retention {
    fn default() -> Retention {
        Retention { max_events: 10_000, max_age_secs: 30 * 24 * 3600 }
    }
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

/// Which backend to open, from configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreConfig {
    /// SQLite database `pushi.db` in this directory.
    Embedded(std::path::PathBuf),
    /// A MongoDB URL (database from its path, else `pushi`).
    Mongo(String),
    /// A private in-memory SQLite database per worker (fuzzing and tests; not durable).
    Memory,
}

impl StoreConfig {
    /// Opens one connection (each worker thread opens its own).
    pub fn open(&self) -> StoreResult<Box<dyn Backend>> {
        Ok(match self {
            StoreConfig::Embedded(dir) => Box::new(sqlite::SqliteStore::open(dir)?),
            StoreConfig::Mongo(url) => mongo::open(url)?,
            StoreConfig::Memory => Box::new(sqlite::SqliteStore::open_memory()?),
        })
    }

    /// For logs: where the data lives (no credentials).
    pub fn describe(&self) -> String {
        match self {
            StoreConfig::Embedded(dir) => format!("embedded SQLite store in {}", dir.join("pushi.db").display()),
            StoreConfig::Memory => "in-memory SQLite store (not durable)".to_string(),
            StoreConfig::Mongo(url) => {
                // mongodb://user:pass@host/db → mongodb://host/db
                let shown = match (url.find("://"), url.rfind('@')) {
                    (Some(s), Some(at)) if at > s => format!("{}{}", &url[..s + 3], &url[at + 1..]),
                    _ => url.clone(),
                };
                format!("MongoDB at {shown}")
            }
        }
    }
}

/// Seconds since the epoch, as a float (Pushi's `timestamp`).
pub fn now_seconds() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The shared test suite every backend must pass (run against SQLite in unit
/// tests and against a real MongoDB-protocol server in `tests/store.rs`).
pub mod suite {
    use super::*;

    fn event(seq: i64, app: &str, channel: &str, mid: &str) -> EventWrite {
        EventWrite {
            event: EventRecord {
                seq,
                app: app.into(),
                mid: mid.into(),
                channel: channel.into(),
                owner_id: None,
                timestamp: 1_700_000_000.0 + seq as f64,
                data: serde_json::json!({ "channel": channel, "event": "message", "data": format!("m{seq}") }),
            },
            users: Vec::new(),
            retention: Retention::default(),
        }
    }

    /// Runs every check against a fresh, empty backend; panics on the first failure.
    /// `app` must be unique per run when the backend is shared between runs.
    pub fn run(store: &mut dyn Backend, app: &str) {
        store.ping().expect("ping");

        // Apps: insert, replace, list.
        let mut a = App::new(app, &format!("{app}-key"), &format!("{app}-secret"), "suite");
        store.put_app(&a).expect("put app");
        a.name = "renamed".into();
        a.client_events = false;
        store.put_app(&a).expect("replace app");
        let apps = store.load_apps().expect("load apps");
        let mine: Vec<&App> = apps.iter().filter(|x| x.id == app).collect();
        assert_eq!(mine.len(), 1, "one app per id");
        assert_eq!(mine[0], &a, "app round-trips");

        // Events: batch insert, idempotent retry, newest-first pages, per channel.
        let base = store.max_seq().expect("max seq");
        let mut e1 = event(base + 1, app, "news", &format!("{app}-m1"));
        e1.users = vec!["alice".into(), "bob".into()];
        let e2 = event(base + 2, app, "other", &format!("{app}-m2"));
        let mut e3 = event(base + 3, app, "news", &format!("{app}-m3"));
        e3.users = vec!["alice".into()];
        e3.event.owner_id = Some("1.2".into());
        store.insert_events(&[e1.clone(), e2.clone()]).expect("insert");
        store.insert_events(&[e3.clone(), e1.clone()]).expect("insert again (retry)");
        assert_eq!(store.max_seq().unwrap(), base + 3);
        let all = store.channel_events(app, None, 0, 10).unwrap();
        assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![base + 3, base + 2, base + 1]);
        assert_eq!(all[0], e3.event, "event round-trips");
        let news = store.channel_events(app, Some("news"), 0, 10).unwrap();
        assert_eq!(news.iter().map(|e| e.mid.as_str()).collect::<Vec<_>>(), [&e3.event.mid, &e1.event.mid]);
        let page = store.channel_events(app, Some("news"), 1, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert_eq!(page[0].mid, e1.event.mid);
        assert!(store.channel_events(app, Some("none"), 0, 10).unwrap().is_empty());
        assert!(store.channel_events(&format!("{app}-other"), None, 0, 10).unwrap().is_empty(), "scoped by app");

        // Personal history through associations.
        let alice = store.user_events(app, "alice", 0, 10).unwrap();
        assert_eq!(alice.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![base + 3, base + 1]);
        let bob = store.user_events(app, "bob", 0, 10).unwrap();
        assert_eq!(bob.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![base + 1], "no duplicate association");
        assert_eq!(store.user_events(app, "alice", 1, 5).unwrap().len(), 1);
        assert!(store.user_events(app, "carol", 0, 10).unwrap().is_empty());

        // Subscriptions: idempotent add, filters, remove.
        let sub = |user: &str, event: &str| SubscriptionRecord {
            app: app.into(),
            user_id: user.into(),
            event: event.into(),
            created: 1_700_000_000,
        };
        let (s1, created) = store.add_subscription(&sub("alice", "news")).unwrap();
        assert!(created);
        assert_eq!(s1, sub("alice", "news"));
        let (_, created) = store.add_subscription(&sub("alice", "news")).unwrap();
        assert!(!created, "duplicate subscription is not created twice");
        store.add_subscription(&sub("alice", "sport")).unwrap();
        store.add_subscription(&sub("bob", "news")).unwrap();
        assert_eq!(store.subscriptions(app, None, None).unwrap().len(), 3);
        assert_eq!(store.subscriptions(app, Some("alice"), None).unwrap().len(), 2);
        assert_eq!(store.subscriptions(app, None, Some("news")).unwrap().len(), 2);
        assert_eq!(store.subscriptions(app, Some("bob"), Some("news")).unwrap(), vec![sub("bob", "news")]);
        assert!(store.all_subscriptions().unwrap().iter().filter(|s| s.app == app).count() == 3);
        assert_eq!(store.remove_subscription(app, "alice", "sport").unwrap(), Some(sub("alice", "sport")));
        assert_eq!(store.remove_subscription(app, "alice", "sport").unwrap(), None);
        assert_eq!(store.subscriptions(app, Some("alice"), None).unwrap().len(), 1);

        // Targets.
        let target = |t: &str, event: &str| TargetRecord {
            app: app.into(),
            kind: "web".into(),
            target: t.into(),
            event: event.into(),
            extra: serde_json::json!({}),
            created: 1_700_000_000,
        };
        let (_, created) = store.add_target(&target("http://a/", "news")).unwrap();
        assert!(created);
        let (_, created) = store.add_target(&target("http://a/", "news")).unwrap();
        assert!(!created);
        store.add_target(&target("http://a/", "sport")).unwrap();
        let mut push = target("https://push/1", "news");
        push.kind = "web_push".into();
        push.extra = serde_json::json!({ "p256dh": "k", "auth": "a" });
        store.add_target(&push).unwrap();
        assert_eq!(store.targets(app, "web", None, None).unwrap().len(), 2);
        assert_eq!(store.targets(app, "web", Some("http://a/"), Some("news")).unwrap().len(), 1);
        assert_eq!(store.targets(app, "web_push", None, None).unwrap(), vec![push.clone()]);
        assert!(store.all_targets().unwrap().iter().filter(|t| t.app == app).count() == 3);
        assert_eq!(store.remove_targets(app, "web", "http://a/", Some("sport")).unwrap().len(), 1);
        store.add_target(&target("http://a/", "sport")).unwrap();
        assert_eq!(store.remove_targets(app, "web", "http://a/", None).unwrap().len(), 2);
        assert!(store.targets(app, "web", None, None).unwrap().is_empty());
        assert_eq!(store.targets(app, "web_push", None, None).unwrap().len(), 1, "other kinds untouched");

        // Retention: by count (the newest stay), then by age; associations follow.
        let base = store.max_seq().unwrap();
        let batch: Vec<EventWrite> = (1..=5)
            .map(|i| {
                let mut e = event(base + i, app, "news", &format!("{app}-r{i}"));
                e.users = vec!["dora".into()];
                e
            })
            .collect();
        store.insert_events(&batch).unwrap();
        let before = store.channel_events(app, None, 0, 100).unwrap().len() as u64;
        let pruned = store.prune_events(app, Retention { max_events: 4, max_age_secs: 0 }).unwrap();
        assert_eq!(pruned, before - 4, "pruned down to 4");
        let kept = store.channel_events(app, None, 0, 100).unwrap();
        assert_eq!(kept.iter().map(|e| e.seq).collect::<Vec<_>>(), (base + 2..=base + 5).rev().collect::<Vec<_>>());
        assert_eq!(store.user_events(app, "dora", 0, 100).unwrap().len(), 4, "associations of pruned events go");
        // Suite timestamps are from 2023: an age limit of a day removes them all.
        store.prune_events(app, Retention { max_events: 100, max_age_secs: 24 * 3600 }).unwrap();
        assert!(store.channel_events(app, None, 0, 100).unwrap().is_empty(), "old events pruned");
        assert!(store.user_events(app, "dora", 0, 100).unwrap().is_empty());

        // Deleting an app removes it and its data only.
        store.insert_events(&[event(base + 10, app, "news", &format!("{app}-d1"))]).unwrap();
        store.delete_app(app).unwrap();
        assert!(store.load_apps().unwrap().iter().all(|x| x.id != app), "app deleted");
        assert!(store.channel_events(app, None, 0, 10).unwrap().is_empty());
        assert!(store.subscriptions(app, None, None).unwrap().is_empty());
        assert!(store.targets(app, "web_push", None, None).unwrap().is_empty());
    }
}
