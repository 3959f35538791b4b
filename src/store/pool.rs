//! The store's worker threads. The reactor submits [`Op`]s without waiting
//! (a bounded queue per worker: a full queue is refused, never blocked on);
//! each worker owns one backend connection, runs the op and sends the
//! [`StoreReply`] back, waking the reactor through its `mio::Waker`.
//!
//! Ops of one app always go to the same worker, so they run in submission
//! order: a history read sees every write submitted before it. Writes are
//! retried with back-off until they succeed (the database may be restarting);
//! reads are tried once and fail fast. Consecutive event writes are committed
//! as one batch.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{debug, error, info, warn};

use super::{Backend, EventWrite, OpenBackend, StoreConfig, StoreError};

pub use super::ops::{Op, StoreReply, Ticket};

/// Largest number of event writes committed together.
const MAX_BATCH: usize = 256;
/// First and longest pause between attempts of a failing write.
const RETRY_FIRST: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(5);
/// Longest time between two prunes of an app that keeps writing.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// Health shared with the workers, read by `/health` and `/metrics`.
#[derive(Debug, Default)]
pub struct StoreHealth {
    /// Set while a write keeps failing; cleared by the next success.
    pub degraded: AtomicBool,
    /// The last error seen, for `/health`.
    pub last_error: Mutex<Option<String>>,
    /// Ops submitted and not finished.
    pub queued: AtomicU64,
    /// Approximate bytes those ops hold.
    pub queued_bytes: AtomicU64,
    /// Ops refused because a worker's queue was full.
    pub refused: AtomicU64,
    /// Write attempts that failed (each retry counts).
    pub write_failures: AtomicU64,
    /// Writes abandoned at shutdown because the grace period ran out.
    pub abandoned: AtomicU64,
}

/// The queue was full; the caller answers 503 instead of losing the op.
#[derive(Debug, PartialEq, Eq)]
pub struct QueueFull;

struct StoreTask {
    ticket: Ticket,
    op: Op,
    weight: u64,
}

/// The reactor's handle on the workers.
pub struct Store {
    shards: Vec<SyncSender<StoreTask>>,
    replies: Receiver<(Ticket, StoreReply)>,
    /// Shared health and counters.
    pub health: Arc<StoreHealth>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    waker: Arc<dyn Wake>,
    /// Most bytes queued over all workers (`PUSHI_STORE_QUEUE_BYTES`).
    max_bytes: u64,
    /// Ops queued per worker, and each worker's capacity.
    shard_queued: Vec<Arc<AtomicU64>>,
    capacity: usize,
}

/// Something that wakes the reactor (a `mio::Waker` in the server).
pub trait Wake: Send + Sync + 'static {
    /// Makes the reactor's poll return.
    fn wake(&self);
}

impl Wake for mio::Waker {
    fn wake(&self) {
        if let Err(e) = mio::Waker::wake(self) {
            error!("cannot wake the reactor: {e}");
        }
    }
}

impl Store {
    /// Starts `workers` threads, each with its own connection and a queue of `capacity` ops.
    pub fn start(config: StoreConfig, workers: usize, capacity: usize, waker: Arc<dyn Wake>) -> Store {
        let (reply_tx, replies) = channel();
        let health = Arc::new(StoreHealth::default());
        let stop = Arc::new(AtomicBool::new(false));
        let mut shards = Vec::new();
        let mut threads = Vec::new();
        let mut shard_queued = Vec::new();
        for i in 0..workers.max(1) {
            let queued = Arc::new(AtomicU64::new(0));
            shard_queued.push(queued.clone());
            let (tx, rx) = sync_channel::<StoreTask>(capacity.max(1));
            shards.push(tx);
            let worker = StoreWorker {
                config: config.clone(),
                backend: None,
                rx,
                replies: reply_tx.clone(),
                waker: waker.clone(),
                health: health.clone(),
                stop: stop.clone(),
                held: None,
                queued,
                prunes: HashMap::new(),
            };
            threads.push(
                std::thread::Builder::new()
                    .name(format!("store-{i}"))
                    .spawn(move || worker.run())
                    .expect("spawn store worker"),
            );
        }
        Store { shards, replies, health, stop, threads, waker, max_bytes: u64::MAX, shard_queued, capacity }
    }

    /// Bounds the queue in bytes as well as in operations.
    pub fn with_max_bytes(mut self, max_bytes: u64) -> Store {
        self.max_bytes = max_bytes;
        self
    }

    /// Whether ops of this many bytes would be taken now (a multi-channel
    /// publish is admitted whole before anything is delivered or stored).
    pub fn has_room(&self, shard: u32, ops: usize, bytes: u64) -> bool {
        if self.shards.is_empty() {
            return false;
        }
        let queued = self.shard_queued[shard as usize % self.shards.len()].load(Relaxed) as usize;
        queued + ops <= self.capacity.max(1)
            && self.health.queued_bytes.load(Relaxed).saturating_add(bytes) <= self.max_bytes
    }

    /// The reactor's waker (shared with other worker pools that answer the reactor).
    pub fn waker(&self) -> Arc<dyn Wake> {
        self.waker.clone()
    }

    /// Queues an op on the worker for `shard` (the app index); never blocks.
    pub fn submit(&self, shard: u32, ticket: Ticket, op: Op) -> Result<(), QueueFull> {
        let index = shard as usize % self.shards.len();
        let tx = &self.shards[index];
        let weight = op.weight();
        if self.health.queued_bytes.load(Relaxed).saturating_add(weight) > self.max_bytes {
            self.health.refused.fetch_add(1, Relaxed);
            return Err(QueueFull);
        }
        // Counted before the send: the worker may finish the op before try_send returns.
        self.health.queued.fetch_add(1, Relaxed);
        self.health.queued_bytes.fetch_add(weight, Relaxed);
        self.shard_queued[index].fetch_add(1, Relaxed);
        match tx.try_send(StoreTask { ticket, op, weight }) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.health.queued.fetch_sub(1, Relaxed);
                self.health.queued_bytes.fetch_sub(weight, Relaxed);
                self.shard_queued[index].fetch_sub(1, Relaxed);
                self.health.refused.fetch_add(1, Relaxed);
                Err(QueueFull)
            }
        }
    }

    /// Answers that have arrived (called when the waker fires).
    pub fn answers(&self) -> impl Iterator<Item = (Ticket, StoreReply)> + '_ {
        self.replies.try_iter()
    }

    /// Stops taking ops and waits for the queued ones, at most `grace`; writes
    /// still failing then are abandoned (counted and logged).
    pub fn close(mut self, grace: Duration) {
        let queued = self.health.queued.load(Relaxed);
        if queued > 0 {
            info!("store: finishing {queued} queued operation(s)");
        }
        self.shards.clear(); // workers end when their queue is drained
        let deadline = Instant::now() + grace;
        while self.threads.iter().any(|t| !t.is_finished()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop.store(true, Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        let lost = self.health.abandoned.load(Relaxed);
        if lost > 0 {
            error!("store: {lost} write(s) could not be stored before shutdown");
        }
    }
}

struct StoreWorker {
    config: StoreConfig,
    backend: Option<Box<dyn Backend>>,
    rx: Receiver<StoreTask>,
    replies: Sender<(Ticket, StoreReply)>,
    waker: Arc<dyn Wake>,
    health: Arc<StoreHealth>,
    stop: Arc<AtomicBool>,
    /// A job taken while collecting a batch that was not a write.
    held: Option<StoreTask>,
    /// Ops queued to this worker (shared with the reactor's admission check).
    queued: Arc<AtomicU64>,
    /// Per app id: writes since its history was last pruned, and when.
    prunes: HashMap<String, (u64, Instant)>,
}

impl StoreWorker {
    fn run(mut self) {
        loop {
            let job = match self.held.take() {
                Some(j) => j,
                None => match self.rx.recv() {
                    Ok(j) => j,
                    Err(_) => return, // queue closed and drained
                },
            };
            match job.op {
                Op::Write(w) => {
                    let mut batch = vec![(job.ticket, w, job.weight)];
                    while batch.len() < MAX_BATCH {
                        match self.rx.try_recv() {
                            Ok(StoreTask { ticket, op: Op::Write(w), weight }) => batch.push((ticket, w, weight)),
                            Ok(other) => {
                                self.held = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    let writes: Vec<EventWrite> = batch.iter().map(|(_, w, _)| w.clone()).collect();
                    let ok = self.retry(|b| b.insert_events(&writes)).is_some();
                    for (ticket, _, weight) in batch {
                        let answer = if ok { StoreReply::Done } else { StoreReply::Failed(abandoned()) };
                        self.reply(ticket, answer, weight);
                    }
                    if ok {
                        self.prune_after(&writes);
                    }
                }
                op => {
                    let answer = if op.is_write() {
                        self.retry(|b| run_op(b, &op)).unwrap_or_else(|| StoreReply::Failed(abandoned()))
                    } else {
                        match self.connection().and_then(|b| run_op(b, &op)) {
                            Ok(a) => a,
                            Err(e) => {
                                self.note_failure(&e);
                                StoreReply::Failed(e)
                            }
                        }
                    };
                    self.reply(job.ticket, answer, job.weight);
                }
            }
        }
    }

    /// Prunes the history of the apps just written to, when due: after a
    /// tenth of the app's allowance of writes, or a minute (age limits).
    /// Failures are logged and retried at the next write.
    fn prune_after(&mut self, writes: &[EventWrite]) {
        let mut due = Vec::new();
        for w in writes {
            let app = &w.event.app;
            let entry = self.prunes.entry(app.clone()).or_insert((0, Instant::now()));
            entry.0 += 1;
            let every = (w.retention.max_events / 10).max(1);
            if (entry.0 >= every || entry.1.elapsed() >= PRUNE_EVERY) && !due.iter().any(|(a, _)| a == app) {
                due.push((app.clone(), w.retention));
            }
        }
        for (app, keep) in due {
            match self.connection().and_then(|b| b.prune_events(&app, keep)) {
                Ok(n) => {
                    if n > 0 {
                        debug!("store: pruned {n} event(s) of app {app} (retention)");
                    }
                    self.prunes.insert(app, (0, Instant::now()));
                }
                Err(e) => warn!("store: pruning the history of app {app} failed (retried later): {e}"),
            }
        }
        if self.prunes.len() > 10_000 {
            self.prunes.retain(|_, (n, _)| *n > 0);
        }
    }

    fn reply(&self, ticket: Ticket, answer: StoreReply, weight: u64) {
        self.health.queued.fetch_sub(1, Relaxed);
        self.health.queued_bytes.fetch_sub(weight, Relaxed);
        self.queued.fetch_sub(1, Relaxed);
        if ticket.is_some() && self.replies.send((ticket, answer)).is_ok() {
            self.waker.wake();
        }
    }

    fn connection(&mut self) -> Result<&mut dyn Backend, StoreError> {
        if self.backend.is_none() {
            self.backend = Some(self.config.open()?);
        }
        Ok(self.backend.as_deref_mut().expect("just opened"))
    }

    fn note_failure(&mut self, e: &StoreError) {
        self.backend = None; // reconnect on the next attempt
        *self.health.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.0.clone());
    }

    /// Runs a write until it succeeds; None when abandoned at shutdown.
    fn retry<T>(&mut self, mut f: impl FnMut(&mut dyn Backend) -> Result<T, StoreError>) -> Option<T> {
        let mut pause = RETRY_FIRST;
        let mut failures = 0u32;
        loop {
            match self.connection().and_then(&mut f) {
                Ok(v) => {
                    if self.health.degraded.swap(false, Relaxed) {
                        info!("store: writes succeed again ({})", self.config.describe());
                    }
                    return Some(v);
                }
                Err(e) => {
                    self.health.write_failures.fetch_add(1, Relaxed);
                    self.note_failure(&e);
                    if !self.health.degraded.swap(true, Relaxed) || failures == 0 {
                        warn!("store: write failed, retrying until it succeeds: {e}");
                    }
                    failures += 1;
                    if self.stop.load(Relaxed) {
                        self.health.abandoned.fetch_add(1, Relaxed);
                        return None;
                    }
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }
}

fn abandoned() -> StoreError {
    StoreError("the write was abandoned at shutdown".into())
}

fn run_op(b: &mut dyn Backend, op: &Op) -> Result<StoreReply, StoreError> {
    Ok(match op {
        Op::Write(w) => {
            b.insert_events(std::slice::from_ref(w))?;
            StoreReply::Done
        }
        Op::PutApp(app) => {
            b.put_app(app)?;
            StoreReply::Done
        }
        Op::DeleteApp(app) => {
            b.delete_app(app)?;
            StoreReply::Done
        }
        Op::ChannelEvents { app, channel, skip, count } => {
            StoreReply::Events(b.channel_events(app, channel.as_deref(), *skip, *count)?)
        }
        Op::UserEvents { app, user_id, skip, count } => StoreReply::Events(b.user_events(app, user_id, *skip, *count)?),
        Op::Subscriptions { app, user_id, event } => {
            StoreReply::Subscriptions(b.subscriptions(app, user_id.as_deref(), event.as_deref())?)
        }
        Op::AddSubscription(s) => {
            let (rec, created) = b.add_subscription(s)?;
            StoreReply::Subscription(rec, created)
        }
        Op::RemoveSubscription { app, user_id, event } => {
            StoreReply::Removed(b.remove_subscription(app, user_id, event)?)
        }
        Op::Targets { app, kind, target, event } => {
            StoreReply::Targets(b.targets(app, kind, target.as_deref(), event.as_deref())?)
        }
        Op::AddTarget(t) => {
            let (rec, created) = b.add_target(t)?;
            StoreReply::Target(rec, created)
        }
        Op::RemoveTargets { app, kind, target, event } => {
            StoreReply::Targets(b.remove_targets(app, kind, target, event.as_deref())?)
        }
        Op::Ping => {
            b.ping()?;
            StoreReply::Done
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apps::App;
    use crate::store::EventRecord;
    use std::sync::mpsc;

    struct Signal(Mutex<mpsc::Sender<()>>);
    impl Wake for Signal {
        fn wake(&self) {
            let _ = self.0.lock().unwrap().send(());
        }
    }

    #[test]
    fn answers_come_back_in_order_per_app() {
        let dir = std::env::temp_dir().join(format!("pushi-pool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (tx, woken) = mpsc::channel();
        let store = Store::start(StoreConfig::Embedded(dir.clone()), 2, 100, Arc::new(Signal(Mutex::new(tx))));
        for seq in 1..=50 {
            let event = EventRecord {
                seq,
                app: "a".into(),
                mid: format!("m{seq}"),
                channel: "c".into(),
                owner_id: None,
                timestamp: 0.0,
                data: serde_json::json!({}),
            };
            store
                .submit(
                    0,
                    None,
                    Op::Write(EventWrite { event, users: vec!["u".into()], retention: Default::default() }),
                )
                .unwrap();
        }
        let read = Op::UserEvents { app: "a".into(), user_id: "u".into(), skip: 0, count: 100 };
        store.submit(0, Some(7), read).unwrap();
        woken.recv_timeout(Duration::from_secs(10)).expect("woken");
        let answers: Vec<_> = store.answers().collect();
        assert_eq!(answers.len(), 1, "only ticketed ops answer");
        match &answers[0] {
            (Some(7), StoreReply::Events(events)) => assert_eq!(events.len(), 50, "the read saw every earlier write"),
            other => panic!("unexpected {other:?}"),
        }
        store.close(Duration::from_secs(5));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_full_queue_is_refused_not_blocked_on() {
        let dir = std::env::temp_dir().join(format!("pushi-pool-full-{}", std::process::id()));
        let (tx, _woken) = mpsc::channel();
        // A file where the data directory should be: every open fails, writes retry forever.
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::write(&dir, b"not a directory").unwrap();
        let store = Store::start(StoreConfig::Embedded(dir.clone()), 1, 2, Arc::new(Signal(Mutex::new(tx))));
        let app = App::new("x", "k", "s", "n");
        let mut refused = 0;
        for _ in 0..10 {
            if store.submit(0, None, Op::PutApp(app.clone())) == Err(QueueFull) {
                refused += 1;
            }
        }
        assert!(refused >= 7, "refused {refused}");
        std::thread::sleep(Duration::from_millis(300));
        let health = store.health.clone();
        assert!(health.degraded.load(Relaxed));
        assert!(health.write_failures.load(Relaxed) >= 1);
        store.close(Duration::from_millis(200));
        assert!(health.abandoned.load(Relaxed) >= 1, "the stuck write is counted as abandoned");
        std::fs::remove_file(&dir).unwrap();
    }
}
