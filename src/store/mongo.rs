//! The MongoDB store (`PUSHI_MONGO_URL`), with Pushi's collection names:
//! `app`, `pushievent`, `association`, `subscription`, and `target` for the
//! handler targets (field `kind`). It uses the driver's blocking `sync` API;
//! like every backend it only runs on store worker threads.
//!
//! Writes are idempotent through unique indexes (created at open): a
//! duplicate-key error (11000) on insert means "already stored" and counts as
//! success. Only standard commands are used (`insert`, `find`, `update`,
//! `findAndModify`, `createIndexes`, `ping`), so any MongoDB-protocol server
//! with unique indexes works; there are no transactions, so a batch is not
//! all-or-nothing, but a retried batch completes it without duplicates.

use std::collections::HashMap;
use std::time::Duration;

use mongodb::bson::{self, doc, Bson, Document};
use mongodb::error::{Error, ErrorKind, WriteFailure};
use mongodb::options::{ClientOptions, IndexOptions};
use mongodb::sync::{Client, Collection, Database};
use mongodb::IndexModel;

use super::*;

/// How long to look for a usable server, and to open a TCP connection, unless
/// the URL says otherwise: a dead database fails a worker's call quickly.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);

/// MongoDB's duplicate-key error code.
const DUPLICATE_KEY: i32 = 11000;

/// A connection (pool) to one MongoDB database.
pub struct MongoStore {
    db: Database,
    apps: Collection<Document>,
    events: Collection<Document>,
    associations: Collection<Document>,
    subscriptions: Collection<Document>,
    targets: Collection<Document>,
}

/// Connects to a MongoDB URL (database from its path, else `pushi`) and
/// creates the indexes; fails within a few seconds when no server answers.
pub fn open(url: &str) -> StoreResult<Box<dyn Backend>> {
    Ok(Box::new(MongoStore::open(url)?))
}

fn fail(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("mongodb: {e}"))
}

/// Whether every error in `e` is a duplicate key (the document is already stored).
fn is_duplicate(e: &Error) -> bool {
    match &*e.kind {
        ErrorKind::Write(WriteFailure::WriteError(w)) => w.code == DUPLICATE_KEY,
        ErrorKind::InsertMany(m) => {
            m.write_concern_error.is_none()
                && m.write_errors.as_ref().is_some_and(|errs| errs.iter().all(|w| w.code == DUPLICATE_KEY))
        }
        ErrorKind::Command(c) => c.code == DUPLICATE_KEY,
        _ => false,
    }
}

/// Success, or a duplicate key (idempotent insert).
fn ignore_duplicates<T>(r: Result<T, Error>) -> StoreResult<()> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if is_duplicate(&e) => Ok(()),
        Err(e) => Err(fail(e)),
    }
}

/// JSON → BSON through serde: integers stay integers (Int64), floats Double,
/// `$`-keys are plain keys (no extended-JSON interpretation).
fn to_bson(value: &Value) -> StoreResult<Bson> {
    bson::serialize_to_bson(value).map_err(fail)
}

/// BSON → JSON through serde: Int32/Int64 become integers, Double floats.
fn to_json(value: Bson) -> StoreResult<Value> {
    bson::deserialize_from_bson(value).map_err(fail)
}

/// Integer field, whatever width the server stored it with (servers may
/// answer a small Int64 as Int32).
fn int(d: &Document, key: &str) -> StoreResult<i64> {
    match d.get(key) {
        Some(Bson::Int64(v)) => Ok(*v),
        Some(Bson::Int32(v)) => Ok(i64::from(*v)),
        Some(Bson::Double(v)) if v.fract() == 0.0 => Ok(*v as i64),
        other => Err(StoreError(format!("mongodb: field {key} is not an integer: {other:?}"))),
    }
}

fn float(d: &Document, key: &str) -> StoreResult<f64> {
    match d.get(key) {
        Some(Bson::Double(v)) => Ok(*v),
        Some(Bson::Int64(v)) => Ok(*v as f64),
        Some(Bson::Int32(v)) => Ok(f64::from(*v)),
        other => Err(StoreError(format!("mongodb: field {key} is not a number: {other:?}"))),
    }
}

fn string(d: &Document, key: &str) -> StoreResult<String> {
    d.get_str(key).map(str::to_owned).map_err(|e| StoreError(format!("mongodb: field {key}: {e}")))
}

fn event_of(mut d: Document) -> StoreResult<EventRecord> {
    let owner_id = match d.get("owner_id") {
        Some(Bson::String(s)) => Some(s.clone()),
        _ => None,
    };
    Ok(EventRecord {
        seq: int(&d, "id")?,
        app: string(&d, "instance")?,
        mid: string(&d, "mid")?,
        channel: string(&d, "channel")?,
        owner_id,
        timestamp: float(&d, "timestamp")?,
        data: to_json(d.remove("data").unwrap_or(Bson::Null))?,
    })
}

fn subscription_of(d: Document) -> StoreResult<SubscriptionRecord> {
    Ok(SubscriptionRecord {
        app: string(&d, "instance")?,
        user_id: string(&d, "user_id")?,
        event: string(&d, "event")?,
        created: int(&d, "created")?,
    })
}

fn target_of(mut d: Document) -> StoreResult<TargetRecord> {
    Ok(TargetRecord {
        app: string(&d, "instance")?,
        kind: string(&d, "kind")?,
        target: string(&d, "target")?,
        event: string(&d, "event")?,
        extra: to_json(d.remove("extra").unwrap_or(Bson::Null))?,
        created: int(&d, "created")?,
    })
}

fn app_of(mut d: Document) -> StoreResult<App> {
    d.remove("_id");
    d.remove("ident");
    bson::deserialize_from_document(d).map_err(|e| StoreError(format!("mongodb: stored app: {e}")))
}

/// Oldest first: creation second, then `_id` (an ObjectId, increasing within a process).
fn oldest_first() -> Document {
    doc! { "created": 1, "_id": 1 }
}

fn index(keys: Document, unique: bool) -> IndexModel {
    IndexModel::builder().keys(keys).options(IndexOptions::builder().unique(unique).build()).build()
}

impl MongoStore {
    /// Connects and creates the collections' indexes (idempotent).
    pub fn open(url: &str) -> StoreResult<MongoStore> {
        let mut options = ClientOptions::parse(url).run().map_err(fail)?;
        options.server_selection_timeout.get_or_insert(DEFAULT_TIMEOUT);
        options.connect_timeout.get_or_insert(DEFAULT_TIMEOUT);
        options.app_name.get_or_insert_with(|| "pushi".into());
        let name = options.default_database.clone().unwrap_or_else(|| "pushi".into());
        let client = Client::with_options(options).map_err(fail)?;
        let db = client.database(&name);
        let store = MongoStore {
            apps: db.collection("app"),
            events: db.collection("pushievent"),
            associations: db.collection("association"),
            subscriptions: db.collection("subscription"),
            targets: db.collection("target"),
            db,
        };
        store.create_indexes()?;
        Ok(store)
    }

    fn create_indexes(&self) -> StoreResult<()> {
        let specs = [
            (&self.apps, vec![index(doc! { "ident": 1 }, true)]),
            (
                &self.events,
                vec![
                    index(doc! { "mid": 1 }, true),
                    index(doc! { "instance": 1, "channel": 1, "id": 1 }, false),
                    index(doc! { "instance": 1, "id": 1 }, false),
                    // max_seq: the global newest event.
                    index(doc! { "id": 1 }, false),
                ],
            ),
            (&self.associations, vec![index(doc! { "instance": 1, "user_id": 1, "id": 1 }, true)]),
            (
                &self.subscriptions,
                vec![
                    index(doc! { "instance": 1, "user_id": 1, "event": 1 }, true),
                    index(doc! { "instance": 1, "event": 1 }, false),
                ],
            ),
            (&self.targets, vec![index(doc! { "instance": 1, "kind": 1, "target": 1, "event": 1 }, true)]),
        ];
        for (collection, models) in specs {
            collection.create_indexes(models).run().map_err(fail)?;
        }
        Ok(())
    }

    /// Runs a find and converts every document.
    fn collect<T>(
        &self,
        collection: &Collection<Document>,
        filter: Document,
        sort: Document,
        page: Option<(usize, usize)>,
        convert: fn(Document) -> StoreResult<T>,
    ) -> StoreResult<Vec<T>> {
        let mut find = collection.find(filter).sort(sort);
        if let Some((skip, count)) = page {
            find = find.skip(skip as u64).limit(count as i64);
        }
        let mut out = Vec::new();
        for d in find.run().map_err(fail)? {
            out.push(convert(d.map_err(fail)?)?);
        }
        Ok(out)
    }
}

fn subscription_key(app: &str, user_id: &str, event: &str) -> Document {
    doc! { "instance": app, "user_id": user_id, "event": event }
}

fn target_filter(app: &str, kind: &str, target: Option<&str>, event: Option<&str>) -> Document {
    let mut filter = doc! { "instance": app, "kind": kind };
    if let Some(t) = target {
        filter.insert("target", t);
    }
    if let Some(e) = event {
        filter.insert("event", e);
    }
    filter
}

impl Backend for MongoStore {
    fn ping(&mut self) -> StoreResult<()> {
        self.db.run_command(doc! { "ping": 1 }).run().map(|_| ()).map_err(fail)
    }

    fn load_apps(&mut self) -> StoreResult<Vec<App>> {
        self.collect(&self.apps, doc! {}, doc! { "_id": 1 }, None, app_of)
    }

    fn put_app(&mut self, app: &App) -> StoreResult<()> {
        let mut d = match to_bson(&serde_json::to_value(app).map_err(fail)?)? {
            Bson::Document(d) => d,
            other => return Err(StoreError(format!("mongodb: app is not a document: {other:?}"))),
        };
        d.insert("ident", app.id.as_str());
        self.apps.replace_one(doc! { "ident": app.id.as_str() }, d).upsert(true).run().map(|_| ()).map_err(fail)
    }

    fn max_seq(&mut self) -> StoreResult<i64> {
        let mut cursor = self
            .events
            .find(doc! {})
            .sort(doc! { "id": -1 })
            .limit(1)
            .projection(doc! { "id": 1 })
            .run()
            .map_err(fail)?;
        match cursor.next() {
            Some(d) => int(&d.map_err(fail)?, "id"),
            None => Ok(0),
        }
    }

    fn insert_events(&mut self, batch: &[EventWrite]) -> StoreResult<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let mut events = Vec::with_capacity(batch.len());
        let mut associations = Vec::new();
        for w in batch {
            let e = &w.event;
            events.push(doc! {
                "id": e.seq,
                "instance": e.app.as_str(),
                "mid": e.mid.as_str(),
                "channel": e.channel.as_str(),
                "owner_id": e.owner_id.as_deref(),
                "timestamp": e.timestamp,
                "data": to_bson(&e.data)?,
            });
            for user in &w.users {
                associations.push(doc! {
                    "instance": e.app.as_str(),
                    "user_id": user.as_str(),
                    "mid": e.mid.as_str(),
                    "id": e.seq,
                });
            }
        }
        // Unordered: every new document is inserted even when others of the
        // batch are already there (a retry); those fail with 11000 only.
        ignore_duplicates(self.events.insert_many(events).ordered(false).run())?;
        if !associations.is_empty() {
            ignore_duplicates(self.associations.insert_many(associations).ordered(false).run())?;
        }
        Ok(())
    }

    fn channel_events(
        &mut self,
        app: &str,
        channel: Option<&str>,
        skip: usize,
        count: usize,
    ) -> StoreResult<Vec<EventRecord>> {
        if count == 0 {
            return Ok(Vec::new()); // limit 0 would mean "no limit"
        }
        let mut filter = doc! { "instance": app };
        if let Some(c) = channel {
            filter.insert("channel", c);
        }
        self.collect(&self.events, filter, doc! { "id": -1 }, Some((skip, count)), event_of)
    }

    fn user_events(&mut self, app: &str, user_id: &str, skip: usize, count: usize) -> StoreResult<Vec<EventRecord>> {
        if count == 0 {
            return Ok(Vec::new());
        }
        let filter = doc! { "instance": app, "user_id": user_id };
        let seqs =
            self.collect(&self.associations, filter, doc! { "id": -1 }, Some((skip, count)), |d| int(&d, "id"))?;
        if seqs.is_empty() {
            return Ok(Vec::new());
        }
        let filter = doc! { "instance": app, "id": { "$in": seqs.clone() } };
        let mut by_seq: HashMap<i64, EventRecord> = self
            .collect(&self.events, filter, doc! { "id": -1 }, None, event_of)?
            .into_iter()
            .map(|e| (e.seq, e))
            .collect();
        // In association order; an association whose event is missing is skipped.
        Ok(seqs.iter().filter_map(|seq| by_seq.remove(seq)).collect())
    }

    fn all_subscriptions(&mut self) -> StoreResult<Vec<SubscriptionRecord>> {
        self.collect(&self.subscriptions, doc! {}, oldest_first(), None, subscription_of)
    }

    fn subscriptions(
        &mut self,
        app: &str,
        user_id: Option<&str>,
        event: Option<&str>,
    ) -> StoreResult<Vec<SubscriptionRecord>> {
        let mut filter = doc! { "instance": app };
        if let Some(u) = user_id {
            filter.insert("user_id", u);
        }
        if let Some(e) = event {
            filter.insert("event", e);
        }
        self.collect(&self.subscriptions, filter, oldest_first(), None, subscription_of)
    }

    fn add_subscription(&mut self, sub: &SubscriptionRecord) -> StoreResult<(SubscriptionRecord, bool)> {
        let mut d = subscription_key(&sub.app, &sub.user_id, &sub.event);
        d.insert("created", sub.created);
        match self.subscriptions.insert_one(d).run() {
            Ok(_) => Ok((sub.clone(), true)),
            Err(e) if is_duplicate(&e) => {
                let key = subscription_key(&sub.app, &sub.user_id, &sub.event);
                let stored = self.collect(&self.subscriptions, key, oldest_first(), None, subscription_of)?;
                // Removed again in between: report the caller's record, not created by us.
                Ok((stored.into_iter().next().unwrap_or_else(|| sub.clone()), false))
            }
            Err(e) => Err(fail(e)),
        }
    }

    fn remove_subscription(
        &mut self,
        app: &str,
        user_id: &str,
        event: &str,
    ) -> StoreResult<Option<SubscriptionRecord>> {
        let removed =
            self.subscriptions.find_one_and_delete(subscription_key(app, user_id, event)).run().map_err(fail)?;
        removed.map(subscription_of).transpose()
    }

    fn all_targets(&mut self) -> StoreResult<Vec<TargetRecord>> {
        self.collect(&self.targets, doc! {}, oldest_first(), None, target_of)
    }

    fn targets(
        &mut self,
        app: &str,
        kind: &str,
        target: Option<&str>,
        event: Option<&str>,
    ) -> StoreResult<Vec<TargetRecord>> {
        self.collect(&self.targets, target_filter(app, kind, target, event), oldest_first(), None, target_of)
    }

    fn add_target(&mut self, rec: &TargetRecord) -> StoreResult<(TargetRecord, bool)> {
        let key = target_filter(&rec.app, &rec.kind, Some(&rec.target), Some(&rec.event));
        let mut d = key.clone();
        d.insert("extra", to_bson(&rec.extra)?);
        d.insert("created", rec.created);
        match self.targets.insert_one(d).run() {
            Ok(_) => Ok((rec.clone(), true)),
            Err(e) if is_duplicate(&e) => {
                let stored = self.collect(&self.targets, key, oldest_first(), None, target_of)?;
                Ok((stored.into_iter().next().unwrap_or_else(|| rec.clone()), false))
            }
            Err(e) => Err(fail(e)),
        }
    }

    fn remove_targets(
        &mut self,
        app: &str,
        kind: &str,
        target: &str,
        event: Option<&str>,
    ) -> StoreResult<Vec<TargetRecord>> {
        // One findAndModify per document: exactly what this call removed,
        // even with concurrent writers (a handful of events per target).
        let filter = target_filter(app, kind, Some(target), event);
        let mut removed = Vec::new();
        while let Some(d) = self.targets.find_one_and_delete(filter.clone()).sort(oldest_first()).run().map_err(fail)? {
            removed.push(target_of(d)?);
        }
        Ok(removed)
    }

    fn prune_events(&mut self, app: &str, keep: Retention) -> StoreResult<u64> {
        let seq_at = |filter: Document, skip: u64| -> StoreResult<Option<i64>> {
            let mut cursor = self
                .events
                .find(filter)
                .sort(doc! { "id": -1 })
                .skip(skip)
                .limit(1)
                .projection(doc! { "id": 1 })
                .run()
                .map_err(fail)?;
            match cursor.next() {
                Some(d) => Ok(Some(int(&d.map_err(fail)?, "id")?)),
                None => Ok(None),
            }
        };
        let by_count = seq_at(doc! { "instance": app }, keep.max_events)?;
        let by_age = if keep.max_age_secs > 0 {
            let oldest = super::now_seconds() - keep.max_age_secs as f64;
            seq_at(doc! { "instance": app, "timestamp": { "$lt": oldest } }, 0)?
        } else {
            None
        };
        let Some(cutoff) = by_count.max(by_age) else { return Ok(0) };
        let gone = self.events.delete_many(doc! { "instance": app, "id": { "$lte": cutoff } }).run().map_err(fail)?;
        self.associations.delete_many(doc! { "instance": app, "id": { "$lte": cutoff } }).run().map_err(fail)?;
        Ok(gone.deleted_count)
    }

    fn delete_app(&mut self, app: &str) -> StoreResult<()> {
        for collection in [&self.events, &self.associations, &self.subscriptions, &self.targets] {
            collection.delete_many(doc! { "instance": app }).run().map_err(fail)?;
        }
        self.apps.delete_many(doc! { "ident": app }).run().map_err(fail)?;
        Ok(())
    }
}
