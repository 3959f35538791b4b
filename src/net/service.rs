//! What the event loop asks of the application, and nothing else. The loop
//! owns sockets, buffers and timers; the service sees parsed requests and
//! messages and answers through return values and the [`Outbox`].

use std::time::Duration;

use crate::http::{HttpError, Request, Response};
use crate::outbox::{ConnId, Outbox};

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
        /// Pushi's URL form: the session gets Pushi's extra replies.
        pushi: bool,
    },
    /// A server-push feed the service authorised at the upgrade (the web
    /// console's live view): `grant` is the service's own token for it.
    Feed {
        /// What the service decided the feed may see.
        grant: String,
    },
    /// Any other path: upgraded, then closed with 4005 as Pusher clients expect.
    NotFound,
}

/// What an open WebSocket is attached to; kept by the loop's connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsRole {
    /// Echoes every message back (testing aid); the loop answers it alone.
    Echo,
    /// A session held by the service under this key.
    Session(u32),
    /// A server-push feed held by the service under this key: the loop
    /// discards its text, pings it when idle, and tells the service when it ends.
    Feed(u32),
    /// Refused at open; closing.
    Refused,
}

/// The application behind the event loop. Every call runs on the loop's
/// thread, between reads; none may block.
pub trait Service {
    /// Answers an HTTP request (not an upgrade); None when the answer comes
    /// later through [`Outbox::respond`].
    fn http(&mut self, req: &Request, conn: ConnId, out: &mut dyn Outbox) -> Option<Response>;

    /// The answer sent when a request left unanswered (see [`Service::http`])
    /// waited longer than `NetLimits::answer_timeout`.
    fn answer_timed_out(&mut self, conn: ConnId) -> Response;

    /// Chooses the endpoint for an upgrade; an error is answered instead of the 101.
    fn ws_route(&self, req: &Request) -> Result<WsRoute, HttpError>;

    /// Called right after the 101 is queued; may queue the first frames.
    fn ws_open(&mut self, route: WsRoute, conn: ConnId, out: &mut dyn Outbox) -> WsRole;

    /// A text message for a session.
    fn ws_text(&mut self, session: u32, text: &str, out: &mut dyn Outbox);

    /// The session was silent for the activity timeout; false when the loop
    /// should send a WebSocket ping instead of the service's own.
    fn ws_idle(&mut self, session: u32, out: &mut dyn Outbox) -> bool;

    /// The session's connection is gone (closed, failed or cut).
    fn ws_closed(&mut self, session: u32, out: &mut dyn Outbox);

    /// A feed's connection is gone (closed, failed, cut or refused).
    fn feed_closed(&mut self, feed: u32);

    /// The close code and reason for a WebSocket that did not answer a ping.
    fn unresponsive_close(&self, role: WsRole) -> (u16, &'static str);

    /// The close code and reason sent to open WebSockets on shutdown.
    fn shutdown_close(&self, role: WsRole) -> (u16, &'static str);

    /// The loop's waker fired: worker threads have answers waiting.
    fn on_wake(&mut self, out: &mut dyn Outbox);

    /// End of a loop turn, before the out-queues are flushed; may queue frames.
    fn end_of_turn(&mut self, out: &mut dyn Outbox);

    /// When the loop should give the service a turn even if nothing happens;
    /// None when it has nothing to keep.
    fn housekeeping_in(&self) -> Option<Duration>;

    /// The service's part of the periodic status line (systemd `STATUS=`),
    /// following "serving N connections, ".
    fn status(&self) -> String;
}
