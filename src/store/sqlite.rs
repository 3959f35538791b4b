//! The embedded store: one SQLite database (`pushi.db`) in the data
//! directory, in WAL mode so readers never wait for the writer and a
//! committed write survives a crash of the process. Each worker thread opens
//! its own connection; SQLite serialises the writers (busy timeout 5 s).

use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OptionalExtension, Row};

use super::*;

/// An open connection to the embedded database.
pub struct SqliteStore {
    db: Connection,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS apps (id TEXT PRIMARY KEY, doc TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS events (
    seq INTEGER PRIMARY KEY,
    app TEXT NOT NULL,
    mid TEXT NOT NULL UNIQUE,
    channel TEXT NOT NULL,
    owner_id TEXT,
    timestamp REAL NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS events_by_channel ON events (app, channel, seq);
CREATE INDEX IF NOT EXISTS events_by_app ON events (app, seq);
CREATE TABLE IF NOT EXISTS associations (
    app TEXT NOT NULL,
    user_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    PRIMARY KEY (app, user_id, seq)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS subscriptions (
    app TEXT NOT NULL,
    user_id TEXT NOT NULL,
    event TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (app, user_id, event)
);
CREATE INDEX IF NOT EXISTS subscriptions_by_event ON subscriptions (app, event);
CREATE TABLE IF NOT EXISTS targets (
    app TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    event TEXT NOT NULL,
    extra TEXT NOT NULL,
    created INTEGER NOT NULL,
    UNIQUE (app, kind, target, event)
);
";

fn fail(e: impl std::fmt::Display) -> StoreError {
    StoreError(format!("sqlite: {e}"))
}

fn event_of(row: &Row) -> rusqlite::Result<EventRecord> {
    let data: String = row.get(6)?;
    Ok(EventRecord {
        seq: row.get(0)?,
        app: row.get(1)?,
        mid: row.get(2)?,
        channel: row.get(3)?,
        owner_id: row.get(4)?,
        timestamp: row.get(5)?,
        data: serde_json::from_str(&data).unwrap_or(Value::String(data)),
    })
}

fn subscription_of(row: &Row) -> rusqlite::Result<SubscriptionRecord> {
    Ok(SubscriptionRecord { app: row.get(0)?, user_id: row.get(1)?, event: row.get(2)?, created: row.get(3)? })
}

fn target_of(row: &Row) -> rusqlite::Result<TargetRecord> {
    let extra: String = row.get(4)?;
    Ok(TargetRecord {
        app: row.get(0)?,
        kind: row.get(1)?,
        target: row.get(2)?,
        event: row.get(3)?,
        extra: serde_json::from_str(&extra).unwrap_or(Value::Null),
        created: row.get(5)?,
    })
}

const EVENT_COLUMNS: &str = "seq, app, mid, channel, owner_id, timestamp, data";

impl SqliteStore {
    /// Opens (creating if needed) `pushi.db` in `dir`.
    pub fn open(dir: &Path) -> StoreResult<SqliteStore> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError(format!("data directory {}: {e}", dir.display())))?;
        let db = Connection::open(dir.join("pushi.db")).map_err(fail)?;
        db.busy_timeout(Duration::from_secs(5)).map_err(fail)?;
        // WAL: committed transactions survive a killed process; NORMAL syncs at checkpoints.
        db.pragma_update(None, "journal_mode", "WAL").map_err(fail)?;
        db.pragma_update(None, "synchronous", "NORMAL").map_err(fail)?;
        db.execute_batch(SCHEMA).map_err(fail)?;
        Ok(SqliteStore { db })
    }

    /// A private in-memory database (gone with the connection).
    pub fn open_memory() -> StoreResult<SqliteStore> {
        let db = Connection::open_in_memory().map_err(fail)?;
        db.execute_batch(SCHEMA).map_err(fail)?;
        Ok(SqliteStore { db })
    }
}

impl Backend for SqliteStore {
    fn ping(&mut self) -> StoreResult<()> {
        self.db.query_row("SELECT 1", [], |_| Ok(())).map_err(fail)
    }

    fn load_apps(&mut self) -> StoreResult<Vec<App>> {
        let mut stmt = self.db.prepare_cached("SELECT doc FROM apps ORDER BY rowid").map_err(fail)?;
        let docs = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(fail)?;
        let mut apps = Vec::new();
        for doc in docs {
            let doc = doc.map_err(fail)?;
            apps.push(serde_json::from_str(&doc).map_err(|e| StoreError(format!("stored app {doc}: {e}")))?);
        }
        Ok(apps)
    }

    fn put_app(&mut self, app: &App) -> StoreResult<()> {
        let doc = serde_json::to_string(app).map_err(fail)?;
        self.db
            .execute(
                "INSERT INTO apps (id, doc) VALUES (?1, ?2) ON CONFLICT (id) DO UPDATE SET doc = excluded.doc",
                params![app.id, doc],
            )
            .map_err(fail)?;
        Ok(())
    }

    fn prune_events(&mut self, app: &str, keep: Retention) -> StoreResult<u64> {
        let by_count: Option<i64> = self
            .db
            .query_row(
                "SELECT seq FROM events WHERE app = ?1 ORDER BY seq DESC LIMIT 1 OFFSET ?2",
                params![app, keep.max_events as i64],
                |r| r.get(0),
            )
            .optional()
            .map_err(fail)?;
        let by_age: Option<i64> = if keep.max_age_secs > 0 {
            let oldest = super::now_seconds() - keep.max_age_secs as f64;
            self.db
                .query_row("SELECT MAX(seq) FROM events WHERE app = ?1 AND timestamp < ?2", params![app, oldest], |r| {
                    r.get(0)
                })
                .map_err(fail)?
        } else {
            None
        };
        let Some(cutoff) = by_count.max(by_age) else { return Ok(0) };
        let tx = self.db.transaction().map_err(fail)?;
        let gone = tx.execute("DELETE FROM events WHERE app = ?1 AND seq <= ?2", params![app, cutoff]).map_err(fail)?;
        tx.execute("DELETE FROM associations WHERE app = ?1 AND seq <= ?2", params![app, cutoff]).map_err(fail)?;
        tx.commit().map_err(fail)?;
        Ok(gone as u64)
    }

    fn delete_app(&mut self, app: &str) -> StoreResult<()> {
        let tx = self.db.transaction().map_err(fail)?;
        for table in ["apps", "events", "associations", "subscriptions", "targets"] {
            let column = if table == "apps" { "id" } else { "app" };
            tx.execute(&format!("DELETE FROM {table} WHERE {column} = ?1"), params![app]).map_err(fail)?;
        }
        tx.commit().map_err(fail)
    }

    fn max_seq(&mut self) -> StoreResult<i64> {
        self.db.query_row("SELECT COALESCE(MAX(seq), 0) FROM events", [], |r| r.get(0)).map_err(fail)
    }

    fn insert_events(&mut self, batch: &[EventWrite]) -> StoreResult<()> {
        let tx = self.db.transaction().map_err(fail)?;
        {
            let mut event = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO events (seq, app, mid, channel, owner_id, timestamp, data)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                )
                .map_err(fail)?;
            let mut assoc = tx
                .prepare_cached("INSERT OR IGNORE INTO associations (app, user_id, seq) VALUES (?1, ?2, ?3)")
                .map_err(fail)?;
            for w in batch {
                let e = &w.event;
                let data = serde_json::to_string(&e.data).map_err(fail)?;
                event.execute(params![e.seq, e.app, e.mid, e.channel, e.owner_id, e.timestamp, data]).map_err(fail)?;
                for user in &w.users {
                    assoc.execute(params![e.app, user, e.seq]).map_err(fail)?;
                }
            }
        }
        tx.commit().map_err(fail)
    }

    fn channel_events(
        &mut self,
        app: &str,
        channel: Option<&str>,
        skip: usize,
        count: usize,
    ) -> StoreResult<Vec<EventRecord>> {
        let (limit, offset) = (count as i64, skip as i64);
        let rows = match channel {
            Some(c) => {
                let sql = format!(
                    "SELECT {EVENT_COLUMNS} FROM events WHERE app = ?1 AND channel = ?2 ORDER BY seq DESC LIMIT ?3 OFFSET ?4"
                );
                let mut stmt = self.db.prepare_cached(&sql).map_err(fail)?;
                let rows = stmt.query_map(params![app, c, limit, offset], event_of).map_err(fail)?;
                rows.collect::<Result<Vec<_>, _>>()
            }
            None => {
                let sql =
                    format!("SELECT {EVENT_COLUMNS} FROM events WHERE app = ?1 ORDER BY seq DESC LIMIT ?2 OFFSET ?3");
                let mut stmt = self.db.prepare_cached(&sql).map_err(fail)?;
                let rows = stmt.query_map(params![app, limit, offset], event_of).map_err(fail)?;
                rows.collect::<Result<Vec<_>, _>>()
            }
        };
        rows.map_err(fail)
    }

    fn user_events(&mut self, app: &str, user_id: &str, skip: usize, count: usize) -> StoreResult<Vec<EventRecord>> {
        let sql = "SELECT e.seq, e.app, e.mid, e.channel, e.owner_id, e.timestamp, e.data
                   FROM associations a JOIN events e ON e.seq = a.seq
                   WHERE a.app = ?1 AND a.user_id = ?2 ORDER BY a.seq DESC LIMIT ?3 OFFSET ?4";
        let mut stmt = self.db.prepare_cached(sql).map_err(fail)?;
        let rows = stmt.query_map(params![app, user_id, count as i64, skip as i64], event_of).map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    fn all_subscriptions(&mut self) -> StoreResult<Vec<SubscriptionRecord>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT app, user_id, event, created FROM subscriptions ORDER BY rowid")
            .map_err(fail)?;
        let rows = stmt.query_map([], subscription_of).map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    fn subscriptions(
        &mut self,
        app: &str,
        user_id: Option<&str>,
        event: Option<&str>,
    ) -> StoreResult<Vec<SubscriptionRecord>> {
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT app, user_id, event, created FROM subscriptions
                 WHERE app = ?1 AND (?2 IS NULL OR user_id = ?2) AND (?3 IS NULL OR event = ?3) ORDER BY rowid",
            )
            .map_err(fail)?;
        let rows = stmt.query_map(params![app, user_id, event], subscription_of).map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    fn add_subscription(&mut self, sub: &SubscriptionRecord) -> StoreResult<(SubscriptionRecord, bool)> {
        let created = self
            .db
            .execute(
                "INSERT OR IGNORE INTO subscriptions (app, user_id, event, created) VALUES (?1, ?2, ?3, ?4)",
                params![sub.app, sub.user_id, sub.event, sub.created],
            )
            .map_err(fail)?
            == 1;
        let stored = self
            .db
            .query_row(
                "SELECT app, user_id, event, created FROM subscriptions WHERE app = ?1 AND user_id = ?2 AND event = ?3",
                params![sub.app, sub.user_id, sub.event],
                subscription_of,
            )
            .map_err(fail)?;
        Ok((stored, created))
    }

    fn remove_subscription(
        &mut self,
        app: &str,
        user_id: &str,
        event: &str,
    ) -> StoreResult<Option<SubscriptionRecord>> {
        self.db
            .query_row(
                "DELETE FROM subscriptions WHERE app = ?1 AND user_id = ?2 AND event = ?3
                 RETURNING app, user_id, event, created",
                params![app, user_id, event],
                subscription_of,
            )
            .optional()
            .map_err(fail)
    }

    fn all_targets(&mut self) -> StoreResult<Vec<TargetRecord>> {
        let mut stmt = self
            .db
            .prepare_cached("SELECT app, kind, target, event, extra, created FROM targets ORDER BY rowid")
            .map_err(fail)?;
        let rows = stmt.query_map([], target_of).map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    fn targets(
        &mut self,
        app: &str,
        kind: &str,
        target: Option<&str>,
        event: Option<&str>,
    ) -> StoreResult<Vec<TargetRecord>> {
        let mut stmt = self
            .db
            .prepare_cached(
                "SELECT app, kind, target, event, extra, created FROM targets
                 WHERE app = ?1 AND kind = ?2 AND (?3 IS NULL OR target = ?3) AND (?4 IS NULL OR event = ?4)
                 ORDER BY rowid",
            )
            .map_err(fail)?;
        let rows = stmt.query_map(params![app, kind, target, event], target_of).map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }

    fn add_target(&mut self, rec: &TargetRecord) -> StoreResult<(TargetRecord, bool)> {
        let extra = serde_json::to_string(&rec.extra).map_err(fail)?;
        let created = self
            .db
            .execute(
                "INSERT OR IGNORE INTO targets (app, kind, target, event, extra, created) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![rec.app, rec.kind, rec.target, rec.event, extra, rec.created],
            )
            .map_err(fail)?
            == 1;
        let stored = self
            .db
            .query_row(
                "SELECT app, kind, target, event, extra, created FROM targets
                 WHERE app = ?1 AND kind = ?2 AND target = ?3 AND event = ?4",
                params![rec.app, rec.kind, rec.target, rec.event],
                target_of,
            )
            .map_err(fail)?;
        Ok((stored, created))
    }

    fn remove_targets(
        &mut self,
        app: &str,
        kind: &str,
        target: &str,
        event: Option<&str>,
    ) -> StoreResult<Vec<TargetRecord>> {
        let mut stmt = self
            .db
            .prepare_cached(
                "DELETE FROM targets WHERE app = ?1 AND kind = ?2 AND target = ?3 AND (?4 IS NULL OR event = ?4)
                 RETURNING app, kind, target, event, extra, created",
            )
            .map_err(fail)?;
        let rows = stmt.query_map(params![app, kind, target, event], target_of).map_err(fail)?;
        rows.collect::<Result<Vec<_>, _>>().map_err(fail)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_the_store_suite_and_survives_reopen() {
        let dir = std::env::temp_dir().join(format!("pushi-sqlite-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut store = SqliteStore::open(&dir).unwrap();
        suite::run(&mut store, "suite-app");
        let max = store.max_seq().unwrap();
        drop(store);
        let mut again = SqliteStore::open(&dir).unwrap();
        assert_eq!(again.max_seq().unwrap(), max, "events survive reopening");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
