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

use super::registry::{self, Script, ScriptEvent};
use super::{envelope, Bus, BusStats, Notice};
use crate::apps::Apps;
use crate::ports::{BusMessage, RegistryOp};
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
const HEARTBEAT: Duration = Duration::from_millis(500);
/// Longest wait between reconnection attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Connect and I/O timeout of both connections.
const IO_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the receiver looks at the stop flag while idle.
const RECEIVE_POLL: Duration = Duration::from_millis(200);
/// A node whose heartbeat is older than this is dead and swept (ms).
pub const DEAD_AFTER_MS: u64 = 3500;
/// Registry entries one sweep call removes at most.
const SWEEP_BATCH: usize = 500;
/// Sweep calls per heartbeat at most (the rest waits a second).
const SWEEP_CALLS: usize = 20;

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
    /// NATS as the bus: its subscription is up (always true without NATS).
    nats_up: AtomicBool,
    /// NATS as the bus: whether it is used at all.
    nats_used: AtomicBool,
}

impl BusHealth {
    fn update(&self) {
        let nats = !self.nats_used.load(Relaxed) || self.nats_up.load(Relaxed);
        self.connected.store(self.sender_up.load(Relaxed) && self.receiver_up.load(Relaxed) && nats, Relaxed);
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
    /// `nats://host:port`: the envelopes travel on NATS (subject
    /// `<prefix>.bus`); the registry and its events stay in Redis.
    pub nats: Option<String>,
}

impl RedisSettings {
    fn channel(&self) -> String {
        format!("{}:bus", self.prefix)
    }

    /// The NATS subject of the envelopes.
    fn subject(&self) -> String {
        format!("{}.bus", self.prefix)
    }

    /// `P` and `NODE`, the first two arguments of every registry script.
    fn script_args(&self) -> [&str; 2] {
        [&self.prefix, &self.node]
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

/// One unit of work for the sender thread, in the reactor's order.
enum Job {
    /// A bus envelope to publish.
    Publish(Vec<u8>),
    /// A registry script; its reply goes back under the ticket.
    Run { ticket: u64, script: Script, args: Vec<String> },
}

/// What the sender thread hands back to the reactor.
enum Back {
    Reply(u64, Script, Result<redis::Value, String>),
    Hooks(Vec<registry::ScriptHook>),
    Resync,
}

/// What the reactor queued this turn, in order.
enum Outgoing {
    Message(BusMessage),
    Op(u64, RegistryOp),
}

/// The bus of a node: queues of envelopes to and from its two helper threads.
pub struct RedisBus {
    /// This process's id on the bus (its own envelopes come back and are skipped).
    origin: u64,
    outgoing: Vec<Outgoing>,
    to_sender: SyncSender<Vec<Job>>,
    received: Arc<Mutex<VecDeque<Vec<u8>>>>,
    back: Arc<Mutex<Vec<Back>>>,
    /// Set by the receiver when it woke the reactor; cleared when drained.
    woken: Arc<AtomicBool>,
    /// Set by the receiver when its subscription was made again.
    gap: Arc<AtomicBool>,
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
        let (to_sender, batches) = sync_channel::<Vec<Job>>(SEND_QUEUE / 64);
        let received = Arc::new(Mutex::new(VecDeque::new()));
        let back = Arc::new(Mutex::new(Vec::new()));
        let woken = Arc::new(AtomicBool::new(false));
        let gap = Arc::new(AtomicBool::new(false));
        let sender = {
            let (client, settings, health, stop) = (client.clone(), settings.clone(), health.clone(), stop.clone());
            let sender = Sender {
                client,
                settings,
                socket_prefix,
                back: back.clone(),
                waker: waker.clone(),
                health,
                shas: Vec::new(),
                nats: None,
                nats_retry: Instant::now(),
            };
            std::thread::Builder::new()
                .name("pushi-bus-send".into())
                .spawn(move || sender.run(batches, stop))
                .map_err(|e| format!("cluster: cannot start the bus sender: {e}"))?
        };
        let inbox =
            Inbox { received: received.clone(), woken: woken.clone(), gap: gap.clone(), waker, health: health.clone() };
        let mut threads = vec![sender];
        if let Some(url) = settings.nats.clone() {
            health.nats_used.store(true, Relaxed);
            let (settings, inbox, stop) = (settings.clone(), inbox.clone(), stop.clone());
            let nats = std::thread::Builder::new()
                .name("pushi-bus-nats".into())
                .spawn(move || nats_receive_loop(url, settings, inbox, stop))
                .map_err(|e| format!("cluster: cannot start the NATS receiver: {e}"))?;
            threads.push(nats);
        }
        let receiver = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("pushi-bus-receive".into())
                .spawn(move || receive_loop(client, settings, inbox, stop))
                .map_err(|e| format!("cluster: cannot start the bus receiver: {e}"))?
        };
        threads.push(receiver);
        Ok(RedisBus { origin, outgoing: Vec::new(), to_sender, received, back, woken, gap, health, stop, threads })
    }
}

impl Drop for RedisBus {
    fn drop(&mut self) {
        self.stop.store(true, Relaxed);
        // The sender sends what is queued and says goodbye; the receiver stops within its poll.
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
        self.outgoing.push(Outgoing::Message(message));
    }

    fn registry(&mut self, ticket: u64, op: RegistryOp) {
        self.outgoing.push(Outgoing::Op(ticket, op));
    }

    fn flush(&mut self, apps: &Apps) {
        if self.outgoing.is_empty() {
            return;
        }
        let batch: Vec<Job> = self
            .outgoing
            .drain(..)
            .map(|o| match o {
                Outgoing::Message(m) => {
                    let app = match &m {
                        BusMessage::ChannelEvent { app, .. }
                        | BusMessage::UserEvent { app, .. }
                        | BusMessage::Terminate { app, .. }
                        | BusMessage::AliasChanged { app, .. }
                        | BusMessage::Member { app, .. }
                        | BusMessage::UserPresence { app, .. }
                        | BusMessage::SubscriptionCount { app, .. } => *app,
                    };
                    Job::Publish(envelope::encode(self.origin, &apps.get(app).id, &m))
                }
                Outgoing::Op(ticket, op) => {
                    let (script, args) = registry::encode(&op, apps);
                    Job::Run { ticket, script, args }
                }
            })
            .collect();
        if let Err(TrySendError::Full(batch) | TrySendError::Disconnected(batch)) = self.to_sender.try_send(batch) {
            // Answer the operations now (as failed) so nothing waits for them.
            let mut failed = Vec::new();
            let mut dropped = 0;
            for job in batch {
                match job {
                    Job::Publish(_) => dropped += 1,
                    Job::Run { ticket, script, .. } => {
                        failed.push(Back::Reply(ticket, script, Err("bus queue full".into())))
                    }
                }
            }
            self.health.dropped.fetch_add(dropped, Relaxed);
            warn!("cluster: bus queue full; {dropped} message(s) for other nodes dropped");
            if let Ok(mut b) = self.back.lock() {
                b.extend(failed);
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
            .filter_map(|bytes| {
                if bytes.first() == Some(&b'{') {
                    // Published by a registry script (any node's, this one's too).
                    return match registry::decode_script_event(bytes)? {
                        ScriptEvent::Member(e) => Some(BusMessage::Member {
                            app: apps.by_id(&e.app_id)?,
                            channel: e.channel,
                            user_id: e.user_id,
                            member: e.member,
                            seq: e.seq,
                        }),
                        ScriptEvent::Count(app, channel, count) => {
                            Some(BusMessage::SubscriptionCount { app: apps.by_id(&app)?, channel, count })
                        }
                        ScriptEvent::User(e) => Some(BusMessage::UserPresence {
                            app: apps.by_id(&e.app_id)?,
                            user_id: e.user_id,
                            online: e.online,
                        }),
                    };
                }
                let r = envelope::decode(bytes)?;
                if r.origin == self.origin {
                    return None;
                }
                let app = apps.by_id(&r.app_id)?;
                r.into_message(app)
            })
            .collect()
    }

    fn notices(&mut self, apps: &Apps) -> Vec<Notice> {
        let back = match self.back.lock() {
            Ok(mut b) if !b.is_empty() => std::mem::take(&mut *b),
            _ => Vec::new(),
        };
        let mut notices = Vec::with_capacity(back.len() + 1);
        if self.gap.swap(false, Relaxed) {
            notices.push(Notice::Resync);
        }
        for b in back {
            match b {
                Back::Reply(ticket, script, reply) => {
                    let answer = reply.and_then(|v| {
                        registry::decode(script, &v).ok_or_else(|| format!("unexpected registry reply {v:?}"))
                    });
                    notices.push(Notice::Answer(ticket, answer));
                }
                Back::Hooks(hooks) => {
                    for h in hooks {
                        if let Some(app) = apps.by_id(&h.app_id) {
                            notices.push(Notice::Hook(app, h.event_json()));
                        }
                    }
                }
                Back::Resync => notices.push(Notice::Resync),
            }
        }
        notices
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

/// The sender thread's side: one connection, the scripts loaded on it.
struct Sender {
    client: redis::Client,
    settings: RedisSettings,
    socket_prefix: u32,
    back: Arc<Mutex<Vec<Back>>>,
    waker: Arc<dyn Wake>,
    health: Arc<BusHealth>,
    /// SHA1 of each script in [`Script::ALL`] order, loaded on the current connection.
    shas: Vec<String>,
    /// NATS as the bus: the publishing connection, when up.
    nats: Option<super::nats::NatsConn>,
    /// When to try NATS again after a failure.
    nats_retry: Instant,
}

impl Sender {
    fn give_back(&self, items: Vec<Back>) {
        if items.is_empty() {
            return;
        }
        if let Ok(mut b) = self.back.lock() {
            b.extend(items);
        }
        self.waker.wake();
    }

    /// Connects and loads every script.
    fn connect(&mut self) -> redis::RedisResult<redis::Connection> {
        let mut conn = connect(&self.client)?;
        self.shas = Script::ALL
            .iter()
            .map(|s| redis::cmd("SCRIPT").arg("LOAD").arg(s.source()).query::<String>(&mut conn))
            .collect::<redis::RedisResult<_>>()?;
        Ok(conn)
    }

    fn evalsha<'a>(&self, pipe: &'a mut redis::Pipeline, script: Script, args: &[String]) -> &'a mut redis::Pipeline {
        let cmd = pipe.cmd("EVALSHA").arg(&self.shas[script.index()]).arg(0);
        cmd.arg(&self.settings.script_args()[..]).arg(args)
    }

    /// The sender's loop: one pipeline per batch (batches that queued
    /// meanwhile join it), the prefix claim and the heartbeat twice a second.
    fn run(mut self, batches: Receiver<Vec<Job>>, stop: Arc<AtomicBool>) {
        let channel = self.settings.channel();
        let claim = redis::Script::new(CLAIM_PREFIX);
        let mut conn: Option<redis::Connection> = None;
        let mut backoff = Duration::from_millis(100);
        let mut next_attempt = Instant::now();
        let mut last_beat = Instant::now() - HEARTBEAT;
        let mut ever = false;
        loop {
            let stopping = stop.load(Relaxed);
            if conn.is_none() && (Instant::now() >= next_attempt || stopping) {
                match self.connect() {
                    Ok(c) => {
                        info!("cluster: bus sender connected to Redis");
                        conn = Some(c);
                        backoff = Duration::from_millis(100);
                        last_beat = Instant::now() - HEARTBEAT;
                        if ever {
                            // Operations may have failed meanwhile: register everything again.
                            self.give_back(vec![Back::Resync]);
                        }
                        ever = true;
                    }
                    Err(e) => {
                        warn!("cluster: bus sender cannot reach Redis ({e}); delivering locally only");
                        next_attempt = Instant::now() + backoff;
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                }
            }
            self.health.sender_up.store(conn.is_some(), Relaxed);
            self.health.update();
            let wait = if conn.is_some() { HEARTBEAT } else { next_attempt.saturating_duration_since(Instant::now()) };
            let wait = if stopping { Duration::ZERO } else { wait.max(Duration::from_millis(10)) };
            let mut jobs = match batches.recv_timeout(wait) {
                Ok(batch) => batch,
                Err(RecvTimeoutError::Timeout) => Vec::new(),
                Err(RecvTimeoutError::Disconnected) => break,
            };
            while jobs.len() < PIPELINE {
                match batches.try_recv() {
                    Ok(more) => jobs.extend(more),
                    Err(_) => break,
                }
            }
            if self.settings.nats.is_some() {
                jobs = self.publish_on_nats(jobs);
            }
            if stopping && jobs.is_empty() {
                if let Some(c) = conn.as_mut() {
                    let mut pipe = redis::pipe();
                    let _ = self.evalsha(&mut pipe, Script::Bye, &[]).query::<redis::Value>(c);
                }
                break;
            }
            let Some(c) = conn.as_mut() else {
                self.fail(jobs, "cluster registry unreachable");
                if stopping {
                    break;
                }
                continue;
            };
            let mut failed = None;
            if !jobs.is_empty() {
                if let Err(e) = self.send(c, &channel, jobs) {
                    failed = Some(e);
                }
            }
            if failed.is_none() && last_beat.elapsed() >= HEARTBEAT && !stopping {
                last_beat = Instant::now();
                let key = self.settings.prefix_key(self.socket_prefix);
                let claimed = claim.key(key).arg(&self.settings.node).arg(PREFIX_TTL_SECONDS).invoke::<i64>(c);
                match claimed {
                    Ok(1) => {}
                    Ok(_) => error!(
                        "cluster: socket-id prefix {} was taken by another node; ids may collide",
                        self.socket_prefix
                    ),
                    Err(e) => failed = Some(e),
                }
                if failed.is_none() {
                    if let Err(e) = self.heartbeat(c) {
                        failed = Some(e);
                    }
                }
            }
            if let Some(e) = failed {
                warn!("cluster: bus sender lost Redis ({e}); reconnecting");
                conn = None;
                self.health.sender_up.store(false, Relaxed);
                self.health.update();
            }
        }
    }

    /// NATS as the bus: publishes the batch's envelopes there (in order, one
    /// write) and returns the registry operations, for Redis. Keeps the
    /// connection alive between batches.
    fn publish_on_nats(&mut self, jobs: Vec<Job>) -> Vec<Job> {
        let (envelopes, rest): (Vec<Job>, Vec<Job>) = jobs.into_iter().partition(|j| matches!(j, Job::Publish(_)));
        if self.nats.is_none() && Instant::now() >= self.nats_retry {
            let url = self.settings.nats.clone().unwrap_or_default();
            match super::nats::NatsConn::connect(&url, &format!("pushi:{}", self.settings.node), IO_TIMEOUT) {
                Ok(c) => {
                    info!("cluster: bus sender connected to NATS");
                    self.nats = Some(c);
                }
                Err(e) => {
                    warn!("cluster: bus sender cannot reach NATS ({e}); delivering locally only");
                    self.nats_retry = Instant::now() + MAX_BACKOFF;
                }
            }
        }
        let payloads: Vec<&[u8]> =
            envelopes.iter().filter_map(|j| if let Job::Publish(e) = j { Some(e.as_slice()) } else { None }).collect();
        let n = payloads.len() as u64;
        let subject = self.settings.subject();
        let sent = match self.nats.as_mut() {
            Some(c) if n > 0 => c.publish_all(&subject, &payloads),
            Some(c) => c.keep_alive(),
            None => Err(std::io::ErrorKind::NotConnected.into()),
        };
        match sent {
            Ok(()) => {
                self.health.sent.fetch_add(n, Relaxed);
            }
            Err(e) => {
                self.health.dropped.fetch_add(n, Relaxed);
                if self.nats.take().is_some() {
                    warn!("cluster: bus sender lost NATS ({e}); reconnecting");
                }
            }
        }
        rest
    }

    /// Answers every operation of a batch that could not be sent as failed.
    fn fail(&self, jobs: Vec<Job>, why: &str) {
        let mut back = Vec::new();
        for job in jobs {
            match job {
                Job::Publish(_) => {
                    self.health.dropped.fetch_add(1, Relaxed);
                }
                Job::Run { ticket, script, .. } => back.push(Back::Reply(ticket, script, Err(why.to_string()))),
            }
        }
        self.give_back(back);
    }

    /// One pipeline for a batch, in order; replies go back by ticket.
    fn send(&mut self, c: &mut redis::Connection, channel: &str, jobs: Vec<Job>) -> redis::RedisResult<()> {
        let mut pipe = redis::pipe();
        for job in &jobs {
            match job {
                Job::Publish(e) => {
                    pipe.cmd("PUBLISH").arg(channel).arg(e.as_slice());
                }
                Job::Run { script, args, .. } => {
                    self.evalsha(&mut pipe, *script, args);
                }
            }
        }
        let replies = match pipe.query::<Vec<redis::Value>>(c) {
            Ok(r) if r.len() == jobs.len() => r,
            Ok(_) => {
                self.fail(jobs, "registry pipeline answered out of step");
                return Err(redis::RedisError::from((redis::ErrorKind::Client, "pipeline out of step")));
            }
            Err(e) => {
                self.fail(jobs, &format!("cluster registry: {e}"));
                return Err(e);
            }
        };
        let mut back = Vec::new();
        for (job, reply) in jobs.into_iter().zip(replies) {
            match job {
                Job::Publish(_) => {
                    self.health.sent.fetch_add(1, Relaxed);
                }
                Job::Run { ticket, script, args } => {
                    let reply = match reply {
                        redis::Value::ServerError(e) if e.code() == "NOSCRIPT" => {
                            // Scripts flushed under us: run it with its source.
                            let source = script.source();
                            let mut run = redis::cmd("EVAL");
                            run.arg(source).arg(0).arg(&self.settings.script_args()[..]).arg(&args);
                            run.query::<redis::Value>(c).map_err(|e| e.to_string())
                        }
                        redis::Value::ServerError(e) => Err(format!("{e:?}")),
                        v => Ok(v),
                    };
                    back.push(Back::Reply(ticket, script, reply));
                }
            }
        }
        self.give_back(back);
        Ok(())
    }

    /// This node's heartbeat, and the sweep of nodes that stopped beating.
    fn heartbeat(&mut self, c: &mut redis::Connection) -> redis::RedisResult<()> {
        let args = [DEAD_AFTER_MS.to_string(), SWEEP_BATCH.to_string()];
        for call in 0..SWEEP_CALLS {
            let mut pipe = redis::pipe();
            let reply: Vec<redis::Value> = self.evalsha(&mut pipe, Script::Heartbeat, &args).query(c)?;
            let Some(reply) = reply.into_iter().next() else { return Ok(()) };
            if let redis::Value::ServerError(e) = &reply {
                return Err(redis::RedisError::from((redis::ErrorKind::Client, "heartbeat", format!("{e:?}"))));
            }
            let (registered, more) = registry::heartbeat_flags(&reply);
            let hooks = registry::hooks(&reply, 2);
            if !hooks.is_empty() {
                info!("cluster: swept a dead node ({} web hook(s))", hooks.len());
            }
            let mut back = vec![Back::Hooks(hooks)];
            if registered && call == 0 {
                back.push(Back::Resync);
            }
            self.give_back(back);
            if !more {
                break;
            }
        }
        Ok(())
    }
}

/// Where the receiver threads put what they receive: the queue the reactor
/// drains, the flags it reads, its waker, the counters.
#[derive(Clone)]
struct Inbox {
    received: Arc<Mutex<VecDeque<Vec<u8>>>>,
    woken: Arc<AtomicBool>,
    gap: Arc<AtomicBool>,
    waker: Arc<dyn Wake>,
    health: Arc<BusHealth>,
}

impl Inbox {
    /// A subscription was made (`again`: after one was lost). Whatever was
    /// published before it was missed: the reactor re-synchronises.
    fn subscribed(&self, again: bool, what: &str) {
        if again {
            self.health.gaps.fetch_add(1, Relaxed);
            warn!("cluster: {what} restored; messages sent meanwhile were missed, re-synchronising");
        }
        self.gap.store(true, Relaxed);
        self.waker.wake();
    }

    /// Queues one envelope, waiting while the reactor is behind (the
    /// server then buffers), and wakes the reactor when the queue was idle.
    /// False when the queue is gone (the reactor stopped).
    fn push(&self, payload: Vec<u8>) -> bool {
        self.health.received.fetch_add(1, Relaxed);
        loop {
            let Ok(mut q) = self.received.lock() else { return false };
            if q.len() < RECEIVE_QUEUE {
                q.push_back(payload);
                break;
            }
            drop(q);
            self.waker.wake();
            std::thread::sleep(Duration::from_millis(1));
        }
        if !self.woken.swap(true, Relaxed) {
            self.waker.wake();
        }
        true
    }
}

/// The receiver thread: subscribes to `<prefix>:bus` (envelopes, and the
/// registry's events) and queues every message for the reactor.
fn receive_loop(client: redis::Client, settings: RedisSettings, inbox: Inbox, stop: Arc<AtomicBool>) {
    let channel = settings.channel();
    let health = inbox.health.clone();
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
        inbox.subscribed(ever_connected, "bus subscription");
        ever_connected = true;
        backoff = Duration::from_millis(100);
        info!("cluster: bus receiver subscribed to {channel}");
        health.receiver_up.store(true, Relaxed);
        health.update();
        while !stop.load(Relaxed) {
            match pubsub.get_message() {
                Ok(msg) => {
                    if !inbox.push(msg.get_payload_bytes().to_vec()) {
                        return;
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

/// NATS as the bus: the receiver of the envelopes (subject `<prefix>.bus`),
/// queued like Redis's; a lost subscription is a gap (re-synchronisation).
fn nats_receive_loop(url: String, settings: RedisSettings, inbox: Inbox, stop: Arc<AtomicBool>) {
    let subject = settings.subject();
    let name = format!("pushi:{}:receive", settings.node);
    let health = inbox.health.clone();
    let mut backoff = Duration::from_millis(100);
    let mut ever_connected = false;
    while !stop.load(Relaxed) {
        let subscribed = super::nats::NatsConn::connect(&url, &name, IO_TIMEOUT).and_then(|mut c| {
            c.subscribe(&subject, 1)?;
            c.set_read_timeout(RECEIVE_POLL)?;
            Ok(c)
        });
        let mut conn = match subscribed {
            Ok(c) => c,
            Err(e) => {
                warn!("cluster: NATS receiver cannot reach {url} ({e})");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        };
        inbox.subscribed(ever_connected, "NATS subscription");
        ever_connected = true;
        backoff = Duration::from_millis(100);
        info!("cluster: bus receiver subscribed to NATS subject {subject}");
        health.nats_up.store(true, Relaxed);
        health.update();
        while !stop.load(Relaxed) {
            match conn.next_message() {
                Ok(Some(payload)) => {
                    if !inbox.push(payload) {
                        return;
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    warn!("cluster: NATS receiver lost {url} ({e}); reconnecting");
                    break;
                }
            }
        }
        health.nats_up.store(false, Relaxed);
        health.update();
    }
}
