//! The web console's tap: the open console feeds and the events the rules
//! show them ([`crate::ports::Ports::observe`]). Bounded three ways, so a
//! console never holds back delivery to clients: an event is built only when
//! a feed watches its app, each feed buffers at most [`MAX_PENDING_EVENTS`]
//! events or [`MAX_PENDING_BYTES`] between flushes (more are dropped and
//! counted, and the page says how many), and a feed whose socket has not
//! taken the last batch ([`MAX_FEED_BACKLOG`]) is skipped, never cut.

use std::collections::HashMap;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use slab::Slab;

use crate::apps::AppIndex;
use crate::outbox::{ConnId, Outbox, SharedFrame};

/// Events one feed holds between two flushes; more are dropped and counted.
pub const MAX_PENDING_EVENTS: usize = 500;
/// Bytes of events one feed holds between two flushes.
pub const MAX_PENDING_BYTES: usize = 256 * 1024;
/// A feed whose socket still has this many bytes to write gets nothing new.
pub const MAX_FEED_BACKLOG: usize = 512 * 1024;
/// Longest event shown whole; a longer one's `data` is replaced by its size.
pub const MAX_EVENT_BYTES: usize = 4 * 1024;
/// Open feeds at most (each is a signed-in console's WebSocket).
pub const MAX_FEEDS: usize = 64;
/// How often buffered events go out.
pub const FLUSH_EVERY: Duration = Duration::from_millis(100);
/// How often each feed gets a snapshot of the state.
pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(500);

/// What a console session may see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    /// One app (signed in with its id and secret).
    App(AppIndex),
    /// Every app (signed in with `PUSHI_ADMIN_TOKEN`).
    Operator,
}

/// One open console WebSocket.
#[derive(Debug)]
pub struct Feed {
    /// Its connection.
    pub conn: ConnId,
    /// The app it shows; None: every app (operator only).
    pub app: Option<AppIndex>,
    /// The console session it was opened with; the feed ends with it.
    pub session: String,
    /// Events waiting for the next flush, as JSON texts joined by commas.
    pending: String,
    /// How many events `pending` holds.
    pending_events: usize,
    /// Events dropped since the feed opened (buffer full or socket behind).
    pub dropped: u64,
}

/// Every open feed, and which apps are watched.
#[derive(Debug)]
pub struct Tap {
    feeds: Slab<Feed>,
    /// Feeds per app slot.
    watchers: Vec<u32>,
    /// Feeds that show every app.
    watching_all: u32,
    last_flush: Instant,
    last_snapshot: Instant,
    /// Per watched app: messages published and frames delivered for them,
    /// counted while a feed watches (the page charts their rates).
    counts: HashMap<AppIndex, (u64, u64)>,
}

impl Default for Tap {
    fn default() -> Tap {
        Tap {
            feeds: Slab::new(),
            watchers: Vec::new(),
            watching_all: 0,
            last_flush: Instant::now(),
            last_snapshot: Instant::now() - SNAPSHOT_EVERY,
            counts: HashMap::new(),
        }
    }
}

/// Milliseconds since the Unix epoch (the page shows local times).
fn now_millis() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl Tap {
    /// Opens a feed for a connection; None when [`MAX_FEEDS`] are open.
    pub fn open(&mut self, conn: ConnId, app: Option<AppIndex>, session: String) -> Option<u32> {
        if self.feeds.len() >= MAX_FEEDS {
            return None;
        }
        match app {
            Some(a) => {
                if self.watchers.len() <= a.slot() {
                    self.watchers.resize(a.slot() + 1, 0);
                }
                self.watchers[a.slot()] += 1;
            }
            None => self.watching_all += 1,
        }
        // The first snapshot goes out at the end of this turn.
        self.last_snapshot = Instant::now() - SNAPSHOT_EVERY;
        let feed = Feed { conn, app, session, pending: String::new(), pending_events: 0, dropped: 0 };
        Some(self.feeds.insert(feed) as u32)
    }

    /// Forgets a feed whose connection is gone (a stale id is ignored).
    pub fn close(&mut self, id: u32) {
        let Some(feed) = self.feeds.try_remove(id as usize) else { return };
        match feed.app {
            Some(a) => {
                if let Some(n) = self.watchers.get_mut(a.slot()) {
                    *n = n.saturating_sub(1);
                }
            }
            None => self.watching_all = self.watching_all.saturating_sub(1),
        }
    }

    /// Whether any feed is open (the server keeps its console timers then).
    pub fn is_open(&self) -> bool {
        !self.feeds.is_empty()
    }

    /// Whether a feed shows this app.
    pub fn watching(&self, app: AppIndex) -> bool {
        self.watching_all > 0 || self.watchers.get(app.slot()).is_some_and(|&n| n > 0)
    }

    /// Buffers an event for every feed that shows its app: encoded once,
    /// stamped with the time, its `data` replaced by its size when long.
    pub fn observe(&mut self, app: AppIndex, mut event: Value) {
        if let Some("api_message" | "socket_message" | "client_event") = event.get("name").and_then(Value::as_str) {
            let count = self.counts.entry(app).or_default();
            count.0 += 1;
            count.1 += event.get("recipients").and_then(Value::as_u64).unwrap_or(0);
        }
        event["time"] = Value::from(now_millis());
        let mut text = event.to_string();
        if text.len() > MAX_EVENT_BYTES {
            let size = event.get("data").map(|d| d.to_string().len()).unwrap_or(0);
            event["data"] = Value::String(format!("({size} bytes, too long to show)"));
            text = event.to_string();
        }
        for (_, feed) in self.feeds.iter_mut().filter(|(_, f)| f.app.is_none_or(|a| a == app)) {
            if feed.pending_events >= MAX_PENDING_EVENTS || feed.pending.len() + text.len() > MAX_PENDING_BYTES {
                feed.dropped += 1;
                continue;
            }
            if !feed.pending.is_empty() {
                feed.pending.push(',');
            }
            feed.pending.push_str(&text);
            feed.pending_events += 1;
        }
    }

    /// Sends each feed its buffered events as one frame
    /// `{"type":"events","events":[...],"dropped":N}`, at most every
    /// [`FLUSH_EVERY`]; a feed whose socket is behind keeps them (and drops
    /// what no longer fits).
    pub fn flush(&mut self, out: &mut dyn Outbox) {
        if self.last_flush.elapsed() < FLUSH_EVERY {
            return;
        }
        self.last_flush = Instant::now();
        for (_, feed) in self.feeds.iter_mut().filter(|(_, f)| f.pending_events > 0) {
            if out.backlog(feed.conn).is_none_or(|b| b > MAX_FEED_BACKLOG) {
                continue;
            }
            let text = format!(r#"{{"type":"events","events":[{}],"dropped":{}}}"#, feed.pending, feed.dropped);
            feed.pending.clear();
            feed.pending_events = 0;
            out.send(feed.conn, &crate::protocol::text_frame(&text));
        }
    }

    /// Whether events wait for a flush (the server wakes for them).
    pub fn has_pending(&self) -> bool {
        self.feeds.iter().any(|(_, f)| f.pending_events > 0)
    }

    /// True (and the clock restarts) when snapshots are due.
    pub fn snapshot_due(&mut self) -> bool {
        if self.feeds.is_empty() || self.last_snapshot.elapsed() < SNAPSHOT_EVERY {
            return false;
        }
        self.last_snapshot = Instant::now();
        true
    }

    /// Messages published and frames delivered for an app since a feed
    /// first watched it.
    pub fn counts(&self, app: AppIndex) -> (u64, u64) {
        self.counts.get(&app).copied().unwrap_or_default()
    }

    /// The open feeds.
    pub fn feeds(&self) -> impl Iterator<Item = &Feed> {
        self.feeds.iter().map(|(_, f)| f)
    }

    /// Sends a snapshot frame to one feed unless its socket is behind.
    pub fn send_snapshot(out: &mut dyn Outbox, conn: ConnId, frame: &SharedFrame) {
        if out.backlog(conn).is_some_and(|b| b <= MAX_FEED_BACKLOG) {
            out.send(conn, frame);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// An outbox that records frames and reports a fixed backlog.
    #[derive(Default)]
    struct Sink {
        sent: Vec<String>,
        backlog: usize,
    }

    impl Outbox for Sink {
        fn send(&mut self, _: ConnId, frame: &SharedFrame) -> bool {
            let bytes = &frame[..];
            // Skip the WebSocket frame header (2 or 4 bytes for these sizes).
            let start = if bytes[1] & 0x7f == 126 { 4 } else { 2 };
            self.sent.push(String::from_utf8_lossy(&bytes[start..]).into_owned());
            true
        }
        fn close(&mut self, _: ConnId, _: u16, _: &str) {}
        fn respond(&mut self, _: ConnId, _: crate::http::Response) {}
        fn backlog(&mut self, _: ConnId) -> Option<usize> {
            Some(self.backlog)
        }
    }

    fn conn(key: u32) -> ConnId {
        ConnId { key, gen: key }
    }

    #[test]
    fn events_reach_only_feeds_of_their_app() {
        let mut tap = Tap::default();
        assert!(!tap.watching(AppIndex(0)));
        let a = tap.open(conn(1), Some(AppIndex(0)), String::new()).unwrap();
        tap.open(conn(2), Some(AppIndex(1)), String::new()).unwrap();
        assert!(tap.watching(AppIndex(0)) && tap.watching(AppIndex(1)) && !tap.watching(AppIndex(2)));
        tap.observe(AppIndex(0), json!({ "name": "connection" }));
        tap.last_flush -= FLUSH_EVERY;
        let mut sink = Sink::default();
        tap.flush(&mut sink);
        assert_eq!(sink.sent.len(), 1);
        let batch: Value = serde_json::from_str(&sink.sent[0]).unwrap();
        assert_eq!(batch["events"][0]["name"], "connection");
        assert!(batch["events"][0]["time"].as_u64().unwrap() > 0);
        tap.close(a);
        tap.close(a); // stale: ignored
        assert!(!tap.watching(AppIndex(0)));
    }

    #[test]
    fn a_full_buffer_drops_and_counts() {
        let mut tap = Tap::default();
        tap.open(conn(1), None, String::new()).unwrap();
        for i in 0..MAX_PENDING_EVENTS + 7 {
            tap.observe(AppIndex(3), json!({ "name": "api_message", "n": i }));
        }
        let mut sink = Sink { backlog: MAX_FEED_BACKLOG + 1, ..Sink::default() };
        tap.last_flush -= FLUSH_EVERY;
        tap.flush(&mut sink);
        assert!(sink.sent.is_empty(), "a socket that is behind gets nothing new");
        sink.backlog = 0;
        tap.last_flush -= FLUSH_EVERY;
        tap.flush(&mut sink);
        let batch: Value = serde_json::from_str(&sink.sent[0]).unwrap();
        assert_eq!(batch["events"].as_array().unwrap().len(), MAX_PENDING_EVENTS);
        assert_eq!(batch["dropped"], 7);
    }

    #[test]
    fn long_data_is_replaced_by_its_size() {
        let mut tap = Tap::default();
        tap.open(conn(1), None, String::new()).unwrap();
        tap.observe(AppIndex(0), json!({ "name": "api_message", "data": "x".repeat(10_000) }));
        tap.last_flush -= FLUSH_EVERY;
        let mut sink = Sink::default();
        tap.flush(&mut sink);
        let batch: Value = serde_json::from_str(&sink.sent[0]).unwrap();
        assert_eq!(batch["events"][0]["data"], "(10002 bytes, too long to show)");
    }

    #[test]
    fn feeds_are_bounded() {
        let mut tap = Tap::default();
        for i in 0..MAX_FEEDS as u32 {
            assert!(tap.open(conn(i), None, String::new()).is_some());
        }
        assert!(tap.open(conn(999), None, String::new()).is_none());
    }
}
