//! What happens to one connection when its bytes arrive: read through its
//! transport into the one shared buffer, parse with the pure codecs, hand
//! requests and messages to the [`Service`], and move the connection
//! through its phases (`Http` → `Ws` → `Closing`).

use std::mem;
use std::rc::Rc;

use log::{debug, warn};

use super::conn::{Phase, WsState};
use super::service::{Service, WsRole};
use super::table::Table;
use super::transport::Input;
use crate::http::{self, HttpError, ParseLimits, Request};
use crate::metrics::{add, sub};
use crate::outbox::ConnId;
use crate::ws::{close_code, frame, handshake, Message, OpCode, WsError};

/// Size of the one read buffer every connection reads into.
const READ_BUF_BYTES: usize = 64 * 1024;
/// Reads per connection per turn, so one fire-hose cannot starve the rest.
const READS_PER_TURN: usize = 16;

/// The connection table, the service, and the buffer they share.
pub(super) struct Driver<S> {
    /// Every connection; the service's [`crate::outbox::Outbox`].
    pub table: Table,
    /// The application.
    pub service: S,
    read_buf: Vec<u8>,
    /// Connections whose read budget ran out with bytes possibly left.
    pub pending_reads: Vec<ConnId>,
}

/// A connection's leftover input, with its memory given back when a large
/// message left a buffer much bigger than what remains in it.
fn shrunk(mut buf: Vec<u8>) -> Vec<u8> {
    if buf.capacity() > 2 * buf.len().max(READ_BUF_BYTES) {
        buf.shrink_to(buf.len());
    }
    buf
}

impl<S: Service> Driver<S> {
    /// A driver over an empty table.
    pub fn new(table: Table, service: S) -> Driver<S> {
        Driver { table, service, read_buf: vec![0; READ_BUF_BYTES], pending_reads: Vec::new() }
    }

    /// Reads what the connection has (up to the per-turn budget) and processes it.
    pub fn on_readable(&mut self, key: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(conn) = self.table.conns.get_mut(key) else {
                return;
            };
            if conn.doomed {
                return;
            }
            let result = conn.transport.read(&mut self.read_buf);
            let tls = if conn.transport.is_tls() { "TLS " } else { "" };
            if matches!(result, Ok(Input::Data { .. })) {
                conn.last_active = self.table.now;
            }
            // A TLS handshake message to answer, or an alert to send: the flush does it.
            if conn.transport.wants_write() {
                self.table.mark_dirty(key);
            }
            match result {
                Ok(Input::Data { n, drained }) => {
                    add(&self.table.metrics.bytes_in, n as u64);
                    self.consume(key, n);
                    self.table.arm(key);
                    if drained {
                        return;
                    }
                }
                Ok(Input::Blocked) => return,
                Ok(Input::Closed) => return self.table.doom(key, &format!("peer closed the {tls}connection")),
                Err(e) if tls.is_empty() => return self.table.doom(key, &format!("read error: {e}")),
                Err(e) => return self.table.doom(key, &format!("TLS error: {e}")),
            }
        }
        if let Some(conn) = self.table.conns.get(key) {
            self.pending_reads.push(conn.id);
        }
    }

    /// Reads again from connections whose read budget ran out last turn.
    pub fn read_pending(&mut self) {
        for id in mem::take(&mut self.pending_reads) {
            if self.table.get(id).is_some() {
                self.on_readable(id.key as usize);
            }
        }
    }

    /// The waker fired: the service takes its workers' answers, then HTTP
    /// connections answered late parse their pipelined requests.
    pub fn on_wake(&mut self) {
        self.service.on_wake(&mut self.table);
        for key in mem::take(&mut self.table.resumable) {
            self.resume(key);
        }
    }

    /// Writes out every connection listed this turn, then parses the
    /// pipelined requests a drained big reply was holding back.
    pub fn flush(&mut self) {
        for key in self.table.flush_dirty() {
            self.resume(key);
        }
    }

    /// Processes `n` fresh bytes in the shared buffer, keeping any unconsumed
    /// tail in the connection's own buffer.
    fn consume(&mut self, key: usize, n: usize) {
        let Some(conn) = self.table.conns.get_mut(key) else {
            return;
        };
        let mut own = mem::take(&mut conn.inbuf);
        let mut shared = mem::take(&mut self.read_buf);
        let rest = if own.is_empty() {
            let used = self.process(key, &mut shared[..n]);
            own.extend_from_slice(&shared[used..n]);
            own
        } else {
            own.extend_from_slice(&shared[..n]);
            let used = self.process(key, &mut own);
            own.drain(..used);
            own
        };
        self.read_buf = shared;
        if let Some(conn) = self.table.conns.get_mut(key) {
            if let Phase::Http(h) = &mut conn.phase {
                if !rest.is_empty() && h.head_started.is_none() {
                    h.head_started = Some(self.table.now);
                }
            }
            conn.inbuf = if rest.is_empty() { Vec::new() } else { shrunk(rest) };
        }
        self.after_input(key);
    }

    /// Parses requests that arrived while an earlier one was being answered.
    fn resume(&mut self, key: usize) {
        let Some(conn) = self.table.conns.get_mut(key) else {
            return;
        };
        let mut own = mem::take(&mut conn.inbuf);
        let used = self.process(key, &mut own);
        own.drain(..used);
        let now = self.table.now;
        if let Some(conn) = self.table.conns.get_mut(key) {
            if let Phase::Http(h) = &mut conn.phase {
                if !own.is_empty() && h.head_started.is_none() && h.awaiting.is_none() {
                    h.head_started = Some(now);
                }
            }
            conn.inbuf = if own.is_empty() { Vec::new() } else { shrunk(own) };
        }
        self.table.account(key);
    }

    /// Accounts a connection's unfinished input after new bytes; refuses it
    /// when that pushed the process over `PUSHI_INPUT_BUDGET`.
    fn after_input(&mut self, key: usize) {
        if !self.table.account(key) {
            return;
        }
        let now = self.table.now;
        if self.table.budget_warned_at.is_none_or(|at| now >= at + 1000) {
            self.table.budget_warned_at = Some(now);
            warn!(
                "input budget spent ({} bytes of unfinished input held, PUSHI_INPUT_BUDGET={}); refusing the connections adding more",
                self.table.input_held, self.table.limits.input_budget
            );
        }
        self.refuse_input(key, HttpError::InputBudget, close_code::TRY_AGAIN_LATER, "server busy: input budget spent");
    }

    /// Ends a connection whose unfinished input cannot be kept: an HTTP error
    /// answer, or a close frame on a WebSocket; then closing.
    pub fn refuse_input(&mut self, key: usize, http: HttpError, ws_code: u16, reason: &str) {
        match self.table.conns.get(key).map(|c| &c.phase) {
            Some(Phase::Http(_)) => self.fail_http(key, http),
            Some(Phase::Ws(ws)) => {
                debug!("conn {key}: closing WebSocket {ws_code} ({reason})");
                if ws.closed_by_us.is_none() {
                    self.table.metrics.close_sent(ws_code);
                    self.table.queue(key, frame::encode_close(ws_code, reason).into());
                }
                self.enter_closing(key);
            }
            _ => self.table.doom(key, reason),
        }
    }

    /// Consumes whole requests or frames from `buf`; returns the bytes used.
    fn process(&mut self, key: usize, buf: &mut [u8]) -> usize {
        let limits = &self.table.limits;
        let parse_limits = ParseLimits { max_head: limits.max_head_bytes, max_body: limits.max_body_bytes };
        let (max_message, high_water) = (limits.max_message_bytes, limits.write_high_water);
        let mut pos = 0;
        loop {
            let Some(conn) = self.table.conns.get_mut(key) else {
                return buf.len();
            };
            if conn.doomed {
                return buf.len();
            }
            // A big reply is still being read by the client: later pipelined
            // requests wait (resumed by the flush) instead of piling up replies.
            let replies_unread = conn.out.pending() > high_water;
            match &mut conn.phase {
                // An earlier request is still being answered: later ones wait their turn.
                Phase::Http(h) if h.awaiting.is_some() || replies_unread => {
                    if buf.len() - pos > parse_limits.max_head + parse_limits.max_body {
                        self.table.doom(key, "pipelined too much while a request was being answered");
                        return buf.len();
                    }
                    return pos;
                }
                Phase::Http(h) => match http::parse_request_resumable(&buf[pos..], parse_limits, &mut h.scan) {
                    Ok(None) => {
                        if !h.continued && h.scan.wants_continue() {
                            h.continued = true;
                            self.table.queue(key, Rc::from(&b"HTTP/1.1 100 Continue\r\n\r\n"[..]));
                        }
                        return pos;
                    }
                    Ok(Some((req, used))) => {
                        pos += used;
                        self.on_request(key, req);
                    }
                    Err(e) => {
                        self.fail_http(key, e);
                        return buf.len();
                    }
                },
                Phase::Ws(ws) => {
                    let decoded = match frame::decode(&mut buf[pos..], max_message) {
                        Ok(None) => return pos,
                        Ok(Some((f, used))) => {
                            pos += used;
                            ws.reader.push(f, max_message)
                        }
                        Err(e) => Err(e),
                    };
                    match decoded {
                        Ok(Some(message)) => self.on_message(key, message),
                        Ok(None) => {}
                        Err(e) => {
                            self.fail_ws(key, e);
                            return buf.len();
                        }
                    }
                }
                Phase::Closing { .. } => return buf.len(),
            }
        }
    }

    fn on_request(&mut self, key: usize, req: Request) {
        add(&self.table.metrics.http_requests, 1);
        if req.is_websocket_upgrade() {
            return self.upgrade(key, req);
        }
        let Some(id) = self.table.conns.get(key).map(|c| c.id) else {
            return;
        };
        let Some(response) = self.service.http(&req, id, &mut self.table) else {
            // Answered later through `Outbox::respond`, when the service has the answer.
            let now = self.table.now;
            if let Some(Phase::Http(h)) = self.table.conns.get_mut(key).map(|c| &mut c.phase) {
                h.awaiting = Some((now, req.keep_alive()));
            }
            self.table.arm(key);
            return;
        };
        if response.status >= 400 {
            self.table.metrics.http_error(response.status);
        }
        let keep_alive = req.keep_alive() && !response.close;
        self.table.queue(key, response.encode(keep_alive).into());
        if keep_alive {
            if let Some(Phase::Http(h)) = self.table.conns.get_mut(key).map(|c| &mut c.phase) {
                h.head_started = None;
                h.continued = false;
            }
        } else {
            self.enter_closing(key);
        }
    }

    fn upgrade(&mut self, key: usize, req: Request) {
        let accepted = handshake::accept(&req).and_then(|reply| Ok((reply, self.service.ws_route(&req)?)));
        let (reply, route) = match accepted {
            Ok(ok) => ok,
            Err(e) => return self.fail_http(key, e),
        };
        self.table.queue(key, reply.into());
        let Some(conn) = self.table.conns.get_mut(key) else {
            return;
        };
        let id = conn.id;
        conn.phase =
            Phase::Ws(WsState { reader: Default::default(), role: WsRole::Echo, ping_sent: None, closed_by_us: None });
        add(&self.table.metrics.websockets_open, 1);
        debug!("conn {key}: upgraded to WebSocket on {}", req.path());
        let role = self.service.ws_open(route, id, &mut self.table);
        if let Some(Phase::Ws(ws)) = self.table.conns.get_mut(key).map(|c| &mut c.phase) {
            ws.role = role;
        }
    }

    fn on_message(&mut self, key: usize, message: Message<'_>) {
        let Some(Phase::Ws(ws)) = self.table.conns.get_mut(key).map(|c| &mut c.phase) else {
            return;
        };
        let (role, closing) = (ws.role, ws.closed_by_us.is_some());
        match message {
            Message::Ping(payload) => {
                self.table.queue(key, frame::encoded(OpCode::Pong, payload).into());
            }
            Message::Pong(_) => ws.ping_sent = None,
            Message::Close(received) => {
                if !closing {
                    // "It SHOULD do so by sending a Close frame with the status code it received" (RFC 6455 §5.5.1).
                    let echo = match received {
                        Some((code, _)) => frame::encode_close(code, ""),
                        None => frame::encoded(OpCode::Close, &[]),
                    };
                    self.table.queue(key, echo.into());
                }
                // Both close frames are (about to be) exchanged: the server
                // closes TCP first once ours is out (RFC 6455 §7.1.1), so a
                // client that keeps its socket open costs nothing at shutdown.
                self.enter_closing_with(key, false);
            }
            _ if closing => {} // after our close frame, data is discarded (§1.4)
            Message::Text(text) => {
                add(&self.table.metrics.messages_in, 1);
                match role {
                    WsRole::Echo => {
                        self.table.queue(key, frame::encoded(OpCode::Text, text.as_bytes()).into());
                    }
                    WsRole::Session(s) => self.service.ws_text(s, &text, &mut self.table),
                    WsRole::Feed(_) | WsRole::Refused => {}
                }
            }
            Message::Binary(bytes) => {
                add(&self.table.metrics.messages_in, 1);
                match role {
                    WsRole::Echo => {
                        self.table.queue(key, frame::encoded(OpCode::Binary, &bytes).into());
                    }
                    WsRole::Session(_) | WsRole::Feed(_) | WsRole::Refused => {
                        self.table.close_ws(key, 1003, "binary messages are not supported")
                    }
                }
            }
        }
    }

    /// Answers a bad request with its status and closes after the answer.
    pub fn fail_http(&mut self, key: usize, e: HttpError) {
        debug!("conn {key}: HTTP {} ({})", e.status(), e.message());
        self.table.metrics.http_error(e.status());
        self.table.queue(key, e.response().encode(false).into());
        self.enter_closing(key);
    }

    /// Fails the WebSocket: close frame with the error's code, then close (RFC 6455 §7.1.7).
    fn fail_ws(&mut self, key: usize, e: WsError) {
        debug!("conn {key}: WebSocket error {} ({})", e.close_code(), e.reason());
        let already_closing =
            matches!(self.table.conns.get(key).map(|c| &c.phase), Some(Phase::Ws(ws)) if ws.closed_by_us.is_some());
        if !already_closing {
            self.table.metrics.close_sent(e.close_code());
            self.table.queue(key, frame::encode_close(e.close_code(), e.reason()).into());
        }
        self.enter_closing(key);
    }

    /// Moves to `Closing`: flush, half-close, wait for FIN. A WebSocket
    /// session ends here, so the service releases it at once.
    pub fn enter_closing(&mut self, key: usize) {
        self.enter_closing_with(key, true);
    }

    /// [`Driver::enter_closing`]; `linger` false closes the socket as soon
    /// as the queued bytes are out (the WebSocket close handshake is done).
    fn enter_closing_with(&mut self, key: usize, linger: bool) {
        let now = self.table.now;
        let Some(conn) = self.table.conns.get_mut(key) else {
            return;
        };
        let old = mem::replace(&mut conn.phase, Phase::Closing { since: now, shut: false, linger });
        conn.inbuf = Vec::new();
        self.table.account(key);
        self.table.mark_dirty(key);
        self.table.arm(key);
        self.end_ws(old);
    }

    /// A connection left the phase `old`: a WebSocket session it held ends.
    pub fn end_ws(&mut self, old: Phase) {
        if let Phase::Ws(ws) = old {
            sub(&self.table.metrics.websockets_open, 1);
            match ws.role {
                WsRole::Session(s) => self.service.ws_closed(s, &mut self.table),
                WsRole::Feed(f) => self.service.feed_closed(f),
                WsRole::Echo | WsRole::Refused => {}
            }
        }
    }
}
