//! The application state the reactor drives: apps, Pusher sessions, the
//! channel table and metrics. The reactor hands it requests and messages; it
//! answers through return values and the [`Outbox`], never by touching
//! sockets. The protocol rules live in `protocol`, the REST routes in `api`.

use std::collections::HashMap;
use std::rc::Rc;
use std::time::Instant;

use slab::Slab;

use crate::apps::{AppIndex, Apps};
use crate::channels::{Channels, Session};
use crate::config::Config;
use crate::http::{HttpError, Request, Response};
use crate::metrics::Metrics;
use crate::outbox::{ConnId, Outbox};
use crate::protocol::code;
use crate::webhook::Webhooks;
use crate::ws::close_code;

/// Which endpoint a WebSocket upgrade asked for, decided before the 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsRoute {
    /// The conformance echo endpoint (`PUSHI_ECHO_PATH`).
    Echo,
    /// Pusher's `/app/<key>?protocol=N`, or Pushi's `/<key>` (protocol 7 implied).
    Pusher {
        /// App key from the path.
        key: String,
        /// `protocol` query parameter.
        protocol: Option<String>,
    },
    /// Any other path: upgraded, then closed with 4005 as Pusher clients expect.
    NotFound,
}

/// What an open WebSocket is attached to; kept by the reactor's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRole {
    /// Echoes every message back (testing aid).
    Echo,
    /// A Pusher session held by the hub under this key.
    Session(u32),
    /// Refused at open; closing.
    Refused,
}

/// Application state owned by the reactor thread.
pub struct Hub {
    /// The configuration the server started with.
    pub config: Config,
    /// Counters shared with the reactor.
    pub metrics: Rc<Metrics>,
    /// Every app.
    pub apps: Apps,
    /// Open Pusher sessions.
    pub sessions: Slab<Session>,
    /// Channels of every app.
    pub channels: Channels,
    /// Sessions signed in as each user, per app.
    pub users: HashMap<(AppIndex, String), Vec<u32>>,
    /// Sessions watching each user (sign-in watchlists), per app.
    pub watchers: HashMap<(AppIndex, String), Vec<u32>>,
    /// Open sessions per app (for per-app connection quotas).
    pub app_connections: Vec<usize>,
    /// Socket-id generator state.
    pub rng: u64,
    /// When the hub started (rate windows).
    pub started: Instant,
    /// Web hook batches collected this turn, sent by workers.
    pub webhooks: Webhooks,
}

impl Hub {
    /// A hub for this configuration and these apps.
    pub fn new(config: Config, apps: Apps, metrics: Rc<Metrics>) -> Hub {
        let app_connections = vec![0; apps.len()];
        Hub {
            config,
            metrics,
            apps,
            sessions: Slab::new(),
            channels: Channels::default(),
            users: HashMap::new(),
            watchers: HashMap::new(),
            app_connections,
            rng: crate::apps::random_u64() | 1,
            started: Instant::now(),
            webhooks: Webhooks::start(),
        }
    }

    /// End of a reactor turn: hand this turn's web hook events to the workers.
    pub fn end_of_turn(&mut self) {
        self.webhooks.flush(&self.apps);
    }

    /// Answers an HTTP request (not an upgrade).
    pub fn http(&mut self, req: &Request, from: ConnId, out: &mut dyn Outbox) -> Response {
        crate::api::dispatch(self, req, from, out)
    }

    /// Chooses the endpoint for an upgrade.
    pub fn ws_route(&self, req: &Request) -> Result<WsRoute, HttpError> {
        let path = req.path();
        if self.config.echo_path.as_deref() == Some(path) {
            return Ok(WsRoute::Echo);
        }
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let key = match segments.as_slice() {
            ["app", key] if !key.is_empty() => Some((key.to_string(), req.query_param("protocol"))),
            [key] if !key.is_empty() => Some((key.to_string(), Some("7".to_string()))),
            _ => None,
        };
        Ok(match key {
            Some((key, protocol)) => WsRoute::Pusher { key, protocol },
            None => WsRoute::NotFound,
        })
    }

    /// Called right after the 101 is queued; may queue the first frames.
    pub fn ws_open(&mut self, route: WsRoute, conn: ConnId, out: &mut dyn Outbox) -> WsRole {
        match route {
            WsRoute::Echo => WsRole::Echo,
            WsRoute::Pusher { key, protocol } => match self.pusher_open(conn, &key, protocol.as_deref(), out) {
                Some(session) => WsRole::Session(session),
                None => WsRole::Refused,
            },
            WsRoute::NotFound => {
                out.close(conn, code::PATH_NOT_FOUND, "Path not found");
                WsRole::Refused
            }
        }
    }

    /// A text message for a session.
    pub fn ws_text(&mut self, session: u32, text: &str, out: &mut dyn Outbox) {
        self.pusher_message(session, text, out);
    }

    /// The session has been silent for the activity timeout: ping it.
    /// Returns false when the reactor should send a WebSocket ping instead.
    pub fn ws_idle(&mut self, session: u32, out: &mut dyn Outbox) -> bool {
        self.pusher_ping(session, out);
        true
    }

    /// The session's connection is gone (closed, failed or cut).
    pub fn ws_closed(&mut self, session: u32, out: &mut dyn Outbox) {
        self.pusher_closed(session, out);
    }

    /// The close code and reason for a connection that did not answer a ping.
    pub fn unresponsive_close(&self, role: WsRole) -> (u16, &'static str) {
        match role {
            WsRole::Echo | WsRole::Refused => (close_code::GOING_AWAY, "no pong received"),
            WsRole::Session(_) => (code::PONG_TIMEOUT, "Pong reply not received"),
        }
    }

    /// The close code and reason sent to open WebSockets on shutdown.
    pub fn shutdown_close(&self, role: WsRole) -> (u16, &'static str) {
        match role {
            WsRole::Echo | WsRole::Refused => (close_code::GOING_AWAY, "server shutting down"),
            // Pusher clients reconnect at once on 4200 (to another server, or to us after restart).
            WsRole::Session(_) => (code::RECONNECT, "server shutting down"),
        }
    }
}
