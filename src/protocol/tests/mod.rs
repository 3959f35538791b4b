//! Unit tests of the protocol rules on a bare [`State`]: no threads, no
//! sockets, no store. A [`World`] holds the state, a recorder of every port
//! effect and an outbox that keeps what each connection was sent.

mod channels;
mod cluster;
mod presence;
mod pushi;
mod sessions;

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::apps::{App, AppIndex, Apps, Webhook};
use crate::channels::SessionKey;
use crate::http::Response;
use crate::outbox::{ConnId, Outbox, SharedFrame};
use crate::ports::{BusMessage, Ports, RegistryOp, RegistryReply, RegistryThen, Then};
use crate::state::{Rules, State};
use crate::store::pool::{Op, QueueFull, StoreReply};
use crate::store::TargetRecord;

use super::auth::{channel_message, hmac_hex, signin_message};
use super::session;

/// Every effect the rules asked for.
#[derive(Default)]
pub(super) struct Recorder {
    pub webhooks: Vec<(AppIndex, Value)>,
    pub ops: Vec<(AppIndex, Op)>,
    pub thens: Vec<Then>,
    pub delivered: Vec<(AppIndex, Vec<TargetRecord>, String)>,
    pub bus: Vec<BusMessage>,
    /// The store refuses everything.
    pub full: bool,
    /// Pretend other nodes listen to the bus.
    pub listens: bool,
    /// Pretend a cluster registry keeps presence and occupancy.
    pub clustered: bool,
    /// Registry operations asked for, with their continuations.
    pub registry: Vec<(RegistryOp, Option<RegistryThen>)>,
}

impl Recorder {
    /// Names of the web hook events raised so far.
    pub fn hook_names(&self) -> Vec<String> {
        self.webhooks.iter().map(|(_, e)| e["name"].as_str().unwrap_or("").to_string()).collect()
    }
}

impl Ports for Recorder {
    fn webhook(&mut self, app: AppIndex, event: Value) {
        self.webhooks.push((app, event));
    }
    fn store(&mut self, app: AppIndex, op: Op, then: Option<Then>) -> Result<(), QueueFull> {
        if self.full {
            return Err(QueueFull);
        }
        self.ops.push((app, op));
        self.thens.extend(then);
        Ok(())
    }
    fn store_has_room(&self, _app: AppIndex, _ops: usize, _bytes: u64) -> bool {
        !self.full
    }
    fn deliver(&mut self, app: AppIndex, _settings: &App, targets: Vec<TargetRecord>, message: &str) {
        self.delivered.push((app, targets, message.to_string()));
    }
    fn delivers(&self) -> bool {
        true
    }
    fn bus_listens(&self) -> bool {
        self.listens
    }
    fn bus(&mut self, message: BusMessage) {
        self.bus.push(message);
    }
    fn clustered(&self) -> bool {
        self.clustered
    }
    fn registry(&mut self, op: RegistryOp, then: Option<RegistryThen>) {
        self.registry.push((op, then));
    }
}

/// What each connection was sent.
#[derive(Default)]
pub(super) struct Wire {
    pub sent: HashMap<ConnId, Vec<Value>>,
    pub closed: HashMap<ConnId, (u16, String)>,
}

/// The payload of an unmasked server frame.
fn payload(frame: &[u8]) -> &[u8] {
    let len = (frame[1] & 0x7f) as usize;
    match len {
        126 => &frame[4..],
        127 => &frame[10..],
        _ => &frame[2..],
    }
}

impl Outbox for Wire {
    fn send(&mut self, to: ConnId, frame: &SharedFrame) -> bool {
        let v = serde_json::from_slice(payload(frame)).expect("the server sends JSON");
        self.sent.entry(to).or_default().push(v);
        true
    }
    fn close(&mut self, to: ConnId, code: u16, reason: &str) {
        self.closed.insert(to, (code, reason.to_string()));
    }
    fn respond(&mut self, _to: ConnId, _response: Response) {}
}

/// One client of the world: its session and connection.
#[derive(Clone, Copy)]
pub(super) struct Client {
    pub session: SessionKey,
    pub conn: ConnId,
}

/// A state with one app (`key`/`secret`, id `1`), a recorder and an outbox.
pub(super) struct World {
    pub st: State,
    pub fx: Recorder,
    pub wire: Wire,
    next_conn: u32,
}

/// The one app of every world.
pub(super) const APP: AppIndex = AppIndex(0);
pub(super) const KEY: &str = "key";
pub(super) const SECRET: &str = "secret";

impl World {
    pub fn new() -> World {
        World::with(|_| {})
    }

    /// A world whose app is changed by `edit` first.
    pub fn with(edit: impl FnOnce(&mut App)) -> World {
        let mut app = App::new("1", KEY, SECRET, "test");
        edit(&mut app);
        let mut apps = Apps::default();
        apps.insert(app).unwrap();
        World { st: State::new(Rules::default(), apps), fx: Recorder::default(), wire: Wire::default(), next_conn: 1 }
    }

    /// A world whose app has a web hook.
    pub fn hooked() -> World {
        World::with(|a| a.webhooks = vec![Webhook::Url("http://hooks.example/".into())])
    }

    /// Opens a session (a Pushi-URL one when `pushi`).
    pub fn connect_as(&mut self, pushi: bool) -> Client {
        let conn = ConnId { key: self.next_conn, gen: 1 };
        self.next_conn += 1;
        let session =
            session::open(&mut self.st, &mut self.fx, conn, KEY, Some("7"), pushi, &mut self.wire).expect("opened");
        self.wire.sent.remove(&conn);
        Client { session, conn }
    }

    /// Opens a session and keeps what it was sent (a cluster's quota answers later).
    pub fn connect_pending(&mut self) -> Client {
        let conn = ConnId { key: self.next_conn, gen: 1 };
        self.next_conn += 1;
        let session = session::open(&mut self.st, &mut self.fx, conn, KEY, Some("7"), false, &mut self.wire);
        Client { session: session.expect("opened"), conn }
    }

    pub fn connect(&mut self) -> Client {
        self.connect_as(false)
    }

    pub fn socket_id(&self, c: Client) -> String {
        self.st.sessions.get(c.session).unwrap().socket_id.clone()
    }

    /// Sends a client message.
    pub fn say(&mut self, c: Client, message: Value) {
        session::message(&mut self.st, &mut self.fx, c.session, &message.to_string(), &mut self.wire);
    }

    /// Messages a connection received since the last call.
    pub fn got(&mut self, c: Client) -> Vec<Value> {
        self.wire.sent.remove(&c.conn).unwrap_or_default()
    }

    /// Event names a connection received since the last call.
    pub fn events(&mut self, c: Client) -> Vec<String> {
        self.got(c).iter().map(|m| m["event"].as_str().unwrap_or("").to_string()).collect()
    }

    /// A valid auth for a channel (and channel_data).
    pub fn auth(&self, c: Client, channel: &str, data: Option<&str>) -> String {
        let m = channel_message(&self.socket_id(c), channel, data);
        format!("{KEY}:{}", hmac_hex(SECRET, &m))
    }

    /// Subscribes with a valid auth where one is needed.
    pub fn subscribe(&mut self, c: Client, channel: &str) {
        let auth = self.auth(c, channel, None);
        self.say(c, json!({ "event": "pusher:subscribe", "data": { "channel": channel, "auth": auth } }));
    }

    /// Joins a presence channel as `user` with a valid auth.
    pub fn join(&mut self, c: Client, channel: &str, user: &str, peer: bool) {
        let data = json!({ "user_id": user, "user_info": { "name": user }, "peer": peer }).to_string();
        let auth = self.auth(c, channel, Some(&data));
        self.say(
            c,
            json!({ "event": "pusher:subscribe", "data": { "channel": channel, "auth": auth, "channel_data": data } }),
        );
    }

    /// Signs in as `user` (with a watchlist).
    pub fn sign_in(&mut self, c: Client, user: &str, watchlist: &[&str]) {
        let user_data = json!({ "id": user, "watchlist": watchlist }).to_string();
        let m = signin_message(&self.socket_id(c), &user_data);
        let auth = format!("{KEY}:{}", hmac_hex(SECRET, &m));
        self.say(c, json!({ "event": "pusher:signin", "data": { "auth": auth, "user_data": user_data } }));
    }

    pub fn close(&mut self, c: Client) {
        session::closed(&mut self.st, &mut self.fx, c.session, &mut self.wire);
    }

    /// Runs the continuations the store would run, with this answer each.
    pub fn answer_all(&mut self, answer: impl Fn() -> StoreReply) {
        for then in std::mem::take(&mut self.fx.thens) {
            then(&mut self.st, &mut self.fx, answer(), &mut self.wire);
        }
    }

    /// Answers the oldest registry operation asked for; returns it.
    pub fn registry_answers(&mut self, answer: Result<RegistryReply, String>) -> RegistryOp {
        let (op, then) = self.fx.registry.remove(0);
        if let Some(then) = then {
            then(&mut self.st, &mut self.fx, answer, &mut self.wire);
        }
        op
    }

    /// The channel's subscriber count (0 when it does not exist).
    pub fn subscribers(&self, channel: &str) -> usize {
        self.st.channels.find(APP, channel).and_then(|k| self.st.channels.get(k)).map_or(0, |c| c.subscribers.len())
    }
}
