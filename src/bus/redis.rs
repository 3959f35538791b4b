//! The Redis bus (`PUSHI_CLUSTER_URL=redis://host:port/db`): every node
//! publishes its cross-session effects on one pub/sub channel
//! (`<prefix>:bus`) and applies the others' to its own sessions.
//!
//! The reactor never touches a Redis socket. A **sender thread** owns one
//! connection: it takes the envelopes of a whole reactor turn from a bounded
//! queue and sends them as one pipeline of `PUBLISH`es (order kept), and
//! once a second refreshes this node's socket-id prefix. A **receiver
//! thread** owns the subscribed connection, queues what arrives and wakes the
//! reactor (once per batch). Both reconnect with a back-off; while Redis is
//! down each node goes on delivering to its own sessions, the envelopes it
//! could not send are counted as dropped, and `/health` says `degraded`.
//! Redis pub/sub is at most once: a gap (reconnect) is counted and logged.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use log::{error, info, warn};

use super::{envelope, Bus, BusStats};
use crate::apps::Apps;
use crate::ports::BusMessage;
use crate::store::pool::Wake;

/// Envelopes waiting for the sender thread at most; more are dropped (counted).
pub const SEND_QUEUE: usize = 65_536;
/// Envelopes received and not yet applied by the reactor at most; the
/// receiver stops reading meanwhile (Redis then buffers, up to its limit).
pub const RECEIVE_QUEUE: usize = 65_536;
/// Envelopes sent in one pipeline at most.
const PIPELINE: usize = 1024;
/// How long a socket-id prefix stays reserved without a refresh.
const PREFIX_TTL_SECONDS: u64 = 15;
/// How often the sender refreshes the prefix (and notices Redis is back).
const HEARTBEAT: Duration = Duration::from_secs(1);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Connect and I/O timeout of both connections.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the receiver looks at the stop flag while idle.
const RECEIVE_POLL: Duration = Duration::from_millis(200);

/// Counters of the bus, shared with the helper threads (`/health`, `/metrics`).
#[derive(Debug, Default)]
pub struct BusHealth {
    /// Both connections are up.
    pub connected: AtomicBool,
    /// Envelopes published.
    pub sent: AtomicU64,
    /// Envelopes received from other nodes.
    pub received: AtomicU64,
    /// Envelopes not published (Redis down, or the queue full).
    pub dropped: AtomicU64,
    /// Times the subscription was lost and made again (messages may be missing).
    pub gaps: AtomicU64,
    sender_up: AtomicBool,
    receiver_up: AtomicBool,
}

impl BusHealth {
    fn update(&self) {
        self.connected.store(self.sender_up.load(Relaxed) && self.receiver_up.load(Relaxed), Relaxed);
    }
}

/// Where the cluster's Redis is and what this node is called in it.
#[derive(Debug, Clone)]
pub struct RedisSettings {
    /// `redis://host:port/db`.
    pub url: String,
    /// Key and channel prefix (`PUSHI_CLUSTER_PREFIX`).
    pub prefix: String,
    /// This node's name (`PUSHI_NODE_ID`, or host and pid).
    pub node: String,
}

impl RedisSettings {
    fn channel(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    fn prefix_key(&self, socket_prefix: u32) -> String {
        format!("{}:sid:{socket_prefix}", self.prefix)
    }
}

fn connect(client: &redis::Client) -> redis::RedisResult<redis::Connection> {
    let conn = client.get_connection_with_timeout(IO_TIMEOUT)?;
    conn.set_write_timeout(Some(IO_TIMEOUT))?;
    conn.set_read_timeout(Some(IO_TIMEOUT))?;
    Ok(conn)
}

/// Takes (or keeps) a socket-id prefix for this node; 0: taken by another.
const CLAIM_PREFIX: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'EX', ARGV[2])
  return 1
end
return 0";

/// Reserves a socket-id prefix unique among the live nodes (1..=9999), so
/// socket ids never collide across nodes (`<slot>.<prefix><9 random digits>`).
/// Runs once at start-up, before the reactor; retries for a while.
pub fn reserve_socket_prefix(settings: &RedisSettings) -> Result<u32, String> {
    let client = redis::Client::open(settings.url.as_str()).map_err(|e| format!("PUSHI_CLUSTER_URL: {e}"))?;
    let script = redis::Script::new(CLAIM_PREFIX);
    let mut last = String::new();
    for attempt in 0..10 {
        if attempt > 0 {
            std::thread::sleep(Duration::from_secs(1));
        }
        let mut conn = match connect(&client) {
            Ok(c) => c,
            Err(e) => {
                last = e.to_string();
                warn!("cluster: Redis not reachable ({e}); retrying");
                continue;
            }
        };
        let start = (crate::support::rand::u64() % 9999) as u32;
        for i in 0..9999 {
            let candidate = (start + i) % 9999 + 1;
            let taken: i64 = script
                .key(settings.prefix_key(candidate))
                .arg(&settings.node)
                .arg(PREFIX_TTL_SECONDS)
                .invoke(&mut conn)
                .map_err(|e| format!("cluster: cannot reserve a socket-id prefix: {e}"))?;
            if taken == 1 {
                return Ok(candidate);
            }
        }
        return Err("cluster: every socket-id prefix (1-9999) is taken".into());
    }
    Err(format!("cluster: Redis at {} not reachable: {last}", settings.url))
}

/// The bus of a node: queues of envelopes to and from its two helper threads.
pub struct RedisBus {
    /// This process's id on the bus (its own envelopes come back and are skipped).
    origin: u64,
    outgoing: Vec<BusMessage>,
    to_sender: SyncSender<Vec<Vec<u8>>>,
    received: Arc<Mutex<VecDeque<Vec<u8>>>>,
    /// Set by the receiver when it woke the reactor; cleared when drained.
    woken: Arc<AtomicBool>,
    /// Counters, shared with the threads.
    pub health: Arc<BusHealth>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl RedisBus {
    /// Starts the sender and receiver threads; they connect on their own and
    /// keep retrying. `socket_prefix` is the one [`reserve_socket_prefix`] took.
    pub fn start(settings: RedisSettings, socket_prefix: u32, waker: Arc<dyn Wake>) -> Result<RedisBus, String> {
        let client = redis::Client::open(settings.url.as_str()).map_err(|e| format!("PUSHI_CLUSTER_URL: {e}"))?;
        let origin = crate::support::rand::u64();
        let health = Arc::new(BusHealth::default());
        let stop = Arc::new(AtomicBool::new(false));
        let (to_sender, batches) = sync_channel::<Vec<Vec<u8>>>(SEND_QUEUE / 64);
        let received = Arc::new(Mutex::new(VecDeque::new()));
        let woken = Arc::new(AtomicBool::new(false));
        let sender = {
            let (client, settings, health, stop) = (client.clone(), settings.clone(), health.clone(), stop.clone());
            std::thread::Builder::new()
                .name("pushi-bus-send".into())
                .spawn(move || send_loop(client, settings, socket_prefix, batches, health, stop))
                .map_err(|e| format!("cluster: cannot start the bus sender: {e}"))?
        };
        let receiver = {
            let (health, stop, received, woken) = (health.clone(), stop.clone(), received.clone(), woken.clone());
            std::thread::Builder::new()
                .name("pushi-bus-receive".into())
                .spawn(move || receive_loop(client, settings, received, woken, waker, health, stop))
                .map_err(|e| format!("cluster: cannot start the bus receiver: {e}"))?
        };
        Ok(RedisBus {
            origin,
            outgoing: Vec::new(),
            to_sender,
            received,
            woken,
            health,
            stop,
            threads: vec![sender, receiver],
        })
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // The sender wakes within a heartbeat, the receiver within its poll.
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Bus for RedisBus {
    fn listens(&self) -> bool {
        true
    }

    fn send(&mut self, message: BusMessage) {
        self.outgoing.push(message);
    }

    fn flush(&mut self, apps: &Apps) {
        if self.outgoing.is_empty() {
            return;
        }
        let batch: Vec<Vec<u8>> = self
            .outgoing
            .drain(..)
            .map(|m| {
                let app = match &m {
                    BusMessage::ChannelEvent { app, .. }
                    | BusMessage::UserEvent { app, .. }
                    | BusMessage::Terminate { app, .. }
                    | BusMessage::AliasChanged { app, .. } => *app,
                };
                envelope::encode(self.origin, &apps.get(app).id, &m)
            })
            .collect();
        let n = batch.len() as u64;
        match self.to_sender.try_send(batch) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.health.dropped.fetch_add(n, Relaxed);
                warn!("cluster: bus queue full; {n} message(s) for other nodes dropped");
            }
        }
    }

    fn received(&mut self, apps: &Apps) -> Vec<BusMessage> {
        self.woken.store(false, Relaxed);
        let raw: Vec<Vec<u8>> = match self.received.lock() {
            Ok(mut q) => q.drain(..).collect(),
            Err(_) => return Vec::new(),
        };
        raw.iter()
            .filter_map(|bytes| envelope::decode(bytes))
            .filter(|r| r.origin != self.origin)
            .filter_map(|r| {
                let app = apps.by_id(&r.app_id)?;
                r.into_message(app)
            })
            .collect()
    }

    fn connected(&self) -> Option<bool> {
        Some(self.health.connected.load(Relaxed))
    }

    fn stats(&self) -> Option<BusStats> {
        let h = &self.health;
        Some(BusStats {
            sent: h.sent.load(Relaxed),
            received: h.received.load(Relaxed),
            dropped: h.dropped.load(Relaxed),
            gaps: h.gaps.load(Relaxed),
        })
    }
}

/// The sender thread: one pipeline of `PUBLISH`es per batch (batches that
/// queued meanwhile join it), the prefix refreshed every second.
fn send_loop(
    client: redis::Client,
    settings: RedisSettings,
    socket_prefix: u32,
    batches: Receiver<Vec<Vec<u8>>>,
    health: Arc<BusHealth>,
    stop: Arc<AtomicBool>,
) {
    let channel = settings.channel();
    let claim = redis::Script::new(CLAIM_PREFIX);
    let mut conn: Option<redis::Connection> = None;
    let mut backoff = Duration::from_millis(100);
    let mut next_attempt = Instant::now();
    let mut last_beat = Instant::now() - HEARTBEAT;
    while !stop.load(Relaxed) {
        if conn.is_none() && Instant::now() >= next_attempt {
            match connect(&client) {
                Ok(c) => {
                    info!("cluster: bus sender connected to Redis");
                    conn = Some(c);
                    backoff = Duration::from_millis(100);
                    last_beat = Instant::now() - HEARTBEAT;
                }
                Err(e) => {
                    warn!("cluster: bus sender cannot reach Redis ({e}); delivering locally only");
                    next_attempt = Instant::now() + backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
        health.sender_up.store(conn.is_some(), Relaxed);
        health.update();
        let wait = if conn.is_some() { HEARTBEAT } else { next_attempt.saturating_duration_since(Instant::now()) };
        let mut envelopes = match batches.recv_timeout(wait.max(Duration::from_millis(10))) {
            Ok(batch) => batch,
            Err(RecvTimeoutError::Timeout) => Vec::new(),
            Err(RecvTimeoutError::Disconnected) => break,
        };
        while envelopes.len() < PIPELINE {
            match batches.try_recv() {
                Ok(more) => envelopes.extend(more),
                Err(_) => break,
            }
        }
        let Some(c) = conn.as_mut() else {
            health.dropped.fetch_add(envelopes.len() as u64, Relaxed);
            continue;
        };
        let mut failed = None;
        if !envelopes.is_empty() {
            let mut pipe = redis::pipe();
            for e in &envelopes {
                pipe.cmd("PUBLISH").arg(&channel).arg(e.as_slice()).ignore();
            }
            match pipe.query::<()>(c) {
                Ok(()) => {
                    health.sent.fetch_add(envelopes.len() as u64, Relaxed);
                }
                Err(e) => {
                    health.dropped.fetch_add(envelopes.len() as u64, Relaxed);
                    failed = Some(e);
                }
            }
        }
        if failed.is_none() && last_beat.elapsed() >= HEARTBEAT {
            last_beat = Instant::now();
            let key = settings.prefix_key(socket_prefix);
            match claim.key(key).arg(&settings.node).arg(PREFIX_TTL_SECONDS).invoke::<i64>(c) {
                Ok(1) => {}
                Ok(_) => error!("cluster: socket-id prefix {socket_prefix} was taken by another node; ids may collide"),
                Err(e) => failed = Some(e),
            }
        }
        if let Some(e) = failed {
            warn!("cluster: bus sender lost Redis ({e}); reconnecting");
            conn = None;
            health.sender_up.store(false, Relaxed);
            health.update();
        }
    }
}

/// The receiver thread: subscribes, queues every envelope and wakes the
/// reactor when the queue goes from empty to not.
fn receive_loop(
    client: redis::Client,
    settings: RedisSettings,
    received: Arc<Mutex<VecDeque<Vec<u8>>>>,
    woken: Arc<AtomicBool>,
    waker: Arc<dyn Wake>,
    health: Arc<BusHealth>,
    stop: Arc<AtomicBool>,
) {
    let channel = settings.channel();
    let mut backoff = Duration::from_millis(100);
    let mut ever_connected = false;
    while !stop.load(Relaxed) {
        let subscribed = connect(&client).and_then(|mut conn| {
            conn.set_read_timeout(Some(RECEIVE_POLL))?;
            let _ = redis::cmd("CLIENT").arg("SETNAME").arg(format!("pushi:{}", settings.node)).exec(&mut conn);
            Ok(conn)
        });
        let mut conn = match subscribed {
            Ok(c) => c,
            Err(e) => {
                warn!("cluster: bus receiver cannot reach Redis ({e})");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        let mut pubsub = conn.as_pubsub();
        if let Err(e) = pubsub.subscribe(&channel) {
            warn!("cluster: cannot subscribe to {channel} ({e})");
            std::thread::sleep(backoff);
            continue;
        }
        if ever_connected {
            health.gaps.fetch_add(1, Relaxed);
            warn!("cluster: bus subscription restored; messages sent meanwhile were missed");
        }
        ever_connected = true;
        backoff = Duration::from_millis(100);
        info!("cluster: bus receiver subscribed to {channel}");
        health.receiver_up.store(true, Relaxed);
        health.update();
        while !stop.load(Relaxed) {
            match pubsub.get_message() {
                Ok(msg) => {
                    let payload = msg.get_payload_bytes().to_vec();
                    health.received.fetch_add(1, Relaxed);
                    loop {
                        let Ok(mut q) = received.lock() else { return };
                        if q.len() < RECEIVE_QUEUE {
                            q.push_back(payload);
                            break;
                        }
                        // The reactor is behind: wait for it rather than grow.
                        drop(q);
                        waker.wake();
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    if !woken.swap(true, Relaxed) {
                        waker.wake();
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => {
                    warn!("cluster: bus receiver lost Redis ({e}); reconnecting");
                    break;
                }
            }
        }
        health.receiver_up.store(false, Relaxed);
        health.update();
    }
}
