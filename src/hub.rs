//! The application state the reactor drives: configuration, metrics and the
//! endpoints behind WebSocket and HTTP connections. The reactor hands it
//! requests and messages; it answers through return values and the
//! [`Outbox`], never by touching sockets.

use std::rc::Rc;

use crate::config::Config;
use crate::http::{HttpError, Request, Response};
use crate::metrics::Metrics;
use crate::outbox::{ConnId, Outbox};
use crate::ws::close_code;

/// Which endpoint a WebSocket upgrade asked for, decided before the 101.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsRoute {
    /// The conformance echo endpoint (`PUSHI_ECHO_PATH`).
    Echo,
}

/// What an open WebSocket is attached to; kept by the reactor's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRole {
    /// Echoes every message back (testing aid).
    Echo,
    /// A protocol session held by the hub under this key.
    Session(u32),
}

/// Application state owned by the reactor thread.
pub struct Hub {
    /// The configuration the server started with.
    pub config: Config,
    /// Counters shared with the reactor.
    pub metrics: Rc<Metrics>,
}

impl Hub {
    /// A hub for this configuration.
    pub fn new(config: Config, metrics: Rc<Metrics>) -> Hub {
        Hub { config, metrics }
    }

    /// Answers an HTTP request (not an upgrade).
    pub fn http(&mut self, req: &Request, from: ConnId, out: &mut dyn Outbox) -> Response {
        crate::api::dispatch(self, req, from, out)
    }

    /// Chooses the endpoint for an upgrade; unknown paths get 404 before any 101.
    pub fn ws_route(&self, req: &Request) -> Result<WsRoute, HttpError> {
        match &self.config.echo_path {
            Some(echo) if req.path() == echo => Ok(WsRoute::Echo),
            _ => Err(HttpError::NotFound),
        }
    }

    /// Called right after the 101 is queued; may queue the first frames.
    pub fn ws_open(&mut self, route: WsRoute, _conn: ConnId, _out: &mut dyn Outbox) -> WsRole {
        match route {
            WsRoute::Echo => WsRole::Echo,
        }
    }

    /// A text message for a session.
    pub fn ws_text(&mut self, _session: u32, _conn: ConnId, _text: &str, _out: &mut dyn Outbox) {}

    /// The session has been silent for the activity timeout: check it is alive.
    /// Returns false when the reactor should send a WebSocket ping instead.
    pub fn ws_idle(&mut self, _session: u32, _conn: ConnId, _out: &mut dyn Outbox) -> bool {
        false
    }

    /// The session's connection is gone (closed, failed or cut).
    pub fn ws_closed(&mut self, _session: u32, _out: &mut dyn Outbox) {}

    /// The close code and reason for a session that did not answer a ping.
    pub fn unresponsive_close(&self, role: WsRole) -> (u16, &'static str) {
        match role {
            WsRole::Echo => (close_code::GOING_AWAY, "no pong received"),
            WsRole::Session(_) => (4201, "Pong reply not received"),
        }
    }

    /// The close code and reason sent to open WebSockets on shutdown.
    pub fn shutdown_close(&self, role: WsRole) -> (u16, &'static str) {
        match role {
            WsRole::Echo => (close_code::GOING_AWAY, "server shutting down"),
            // Pusher clients reconnect at once on 4200 (to another server, or to us after restart).
            WsRole::Session(_) => (4200, "server shutting down"),
        }
    }
}
