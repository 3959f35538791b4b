//! The server's state on the reactor thread: apps, Pusher sessions, the
//! channel table, signed-in users and watchlists, and Pushi's indexes. Plain
//! data: no threads, no sockets, no store. The protocol rules
//! ([`crate::protocol`]) are functions over it, which is what lets unit tests
//! drive them directly on a bare `State`.

pub mod pushi;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use slab::Slab;

use crate::apps::{App, AppIndex, Apps};
use crate::channels::{Channels, Session, SessionKey};
use crate::store::Retention;

pub use pushi::{LoginKey, PushiState};

/// The settings the protocol rules read (copied from the configuration at
/// start-up, so the rules never see the whole `Config`).
#[derive(Debug, Clone)]
pub struct Rules {
    /// Told to clients in `pusher:connection_established` (`PUSHI_ACTIVITY_TIMEOUT`).
    pub activity_timeout: Duration,
    /// Client events (and socket publishes) per connection per second.
    pub client_event_rate: u32,
    /// Distinct users per presence channel.
    pub max_presence_members: usize,
    /// Channels per connection.
    pub max_channels_per_connection: usize,
    /// How long a cache channel keeps its last event.
    pub cache_ttl: Duration,
    /// Cached channels per app.
    pub max_cache_channels: usize,
    /// History kept per app unless the app says otherwise.
    pub retention: Retention,
    /// This node's socket-id prefix in a cluster (0: one node), so socket
    /// ids never collide across nodes.
    pub socket_prefix: u32,
}

impl Default for Rules {
    /// The documented defaults (the rows of `config::SETTINGS`).
    fn default() -> Rules {
        let config = crate::config::Config::defaults();
        Rules::of(&config)
    }
}

impl Rules {
    /// The rules' part of a configuration.
    pub fn of(config: &crate::config::Config) -> Rules {
        Rules {
            activity_timeout: config.limits.activity_timeout,
            client_event_rate: config.limits.client_event_rate,
            max_presence_members: config.limits.max_presence_members,
            max_channels_per_connection: config.limits.max_channels_per_connection,
            cache_ttl: config.cache_ttl,
            max_cache_channels: config.max_cache_channels,
            retention: config.retention,
            socket_prefix: 0,
        }
    }
}

/// Open Pusher sessions, by [`SessionKey`]. There is no `[]`: a stale key
/// (a session closed meanwhile) finds nothing instead of panicking the one
/// thread that serves everyone.
#[derive(Debug, Default)]
pub struct Sessions {
    table: Slab<Session>,
}

impl Sessions {
    /// The session at a key.
    pub fn get(&self, key: SessionKey) -> Option<&Session> {
        self.table.get(key.0 as usize)
    }

    /// Mutable access to the session at a key.
    pub fn get_mut(&mut self, key: SessionKey) -> Option<&mut Session> {
        self.table.get_mut(key.0 as usize)
    }

    /// The key the next inserted session will get (its socket id starts with it).
    pub fn vacant_key(&self) -> SessionKey {
        SessionKey(self.table.vacant_key() as u32)
    }

    /// Adds a session.
    pub fn insert(&mut self, session: Session) -> SessionKey {
        SessionKey(self.table.insert(session) as u32)
    }

    /// Removes a session, if it is still there.
    pub fn remove(&mut self, key: SessionKey) -> Option<Session> {
        self.table.try_remove(key.0 as usize)
    }

    /// Every open session with its key.
    pub fn iter(&self) -> impl Iterator<Item = (SessionKey, &Session)> {
        self.table.iter().map(|(k, s)| (SessionKey(k as u32), s))
    }

    /// Open sessions.
    pub fn len(&self) -> usize {
        self.table.len()
    }

    /// No session open.
    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }
}

/// Everything the protocol rules read and change.
pub struct State {
    /// Settings the rules read.
    pub rules: Rules,
    /// Every app.
    pub apps: Apps,
    /// Open Pusher sessions.
    pub sessions: Sessions,
    /// Channels of every app.
    pub channels: Channels,
    /// Sessions signed in as each user, per app.
    pub users: HashMap<(AppIndex, String), Vec<SessionKey>>,
    /// Sessions watching each user (sign-in watchlists), per app.
    pub watchers: HashMap<(AppIndex, String), Vec<SessionKey>>,
    /// Open sessions per app (for per-app connection quotas).
    pub app_connections: Vec<usize>,
    /// Pushi's personal channels, aliases, handler targets and REST logins.
    pub pushi: PushiState,
    /// When the state was made (client-event rate windows).
    pub started: Instant,
    /// Last event sequence number handed out (continues the stored maximum).
    pub seq: i64,
}

impl State {
    /// A state holding these apps and nothing else.
    pub fn new(rules: Rules, apps: Apps) -> State {
        State {
            rules,
            app_connections: vec![0; apps.len()],
            apps,
            sessions: Sessions::default(),
            channels: Channels::default(),
            users: HashMap::new(),
            watchers: HashMap::new(),
            pushi: PushiState::default(),
            started: Instant::now(),
            seq: 0,
        }
    }

    /// Adds an app at run time (REST `POST /apps`).
    pub fn add_app(&mut self, app: App) -> Result<AppIndex, String> {
        let index = self.apps.insert(app)?;
        if self.app_connections.len() <= index.slot() {
            self.app_connections.resize(index.slot() + 1, 0);
        }
        Ok(index)
    }

    /// Open sessions of an app.
    pub fn connections_of(&self, app: AppIndex) -> usize {
        self.app_connections.get(app.slot()).copied().unwrap_or(0)
    }

    /// The session with this socket_id in this app (the session key is the
    /// id's first half; the whole id is compared).
    pub fn session_by_socket_id(&self, app: AppIndex, socket_id: &str) -> Option<SessionKey> {
        let key = SessionKey(socket_id.split_once('.')?.0.parse().ok()?);
        let s = self.sessions.get(key)?;
        (s.app == app && s.socket_id == socket_id).then_some(key)
    }

    /// Every channel a session is on, by any means (for the REST `/sockets`).
    pub fn session_channels(&self, session: SessionKey) -> Vec<String> {
        let Some(s) = self.sessions.get(session) else { return Vec::new() };
        let mut names: Vec<String> = s.subs.iter().map(|sub| self.channels.name(sub.channel).to_string()).collect();
        names.extend(s.personal.iter().map(|u| format!("personal-{u}")));
        names
    }
}
