//! One client connection: its transport (TCP or TLS), the phase it is in and the buffers it
//! owns. Phases move one way: `Http` → `Ws` (after a 101) → `Closing`;
//! any phase may go straight to `Closing` or be reaped.

use super::out_queue::OutQueue;
use super::service::WsRole;
use super::settings::NetLimits;
use super::transport::Transport;
use crate::outbox::ConnId;
use crate::ws::MessageReader;

/// Milliseconds since the loop started: the unit of every deadline.
pub type Millis = u64;

/// [`Conn::timer_at`] of a connection with no live timer entry (no real
/// deadline is this late).
pub const NO_TIMER: Millis = Millis::MAX;

/// A connection slot in the loop's table.
#[derive(Debug)]
pub struct Conn {
    /// The client's byte stream (its socket is registered under this slot's token).
    pub transport: Transport,
    /// Slot and generation, handed to upper layers.
    pub id: ConnId,
    /// What the bytes on this connection currently mean.
    pub phase: Phase,
    /// Unconsumed input (a partial request or frame); empty when idle.
    pub inbuf: Vec<u8>,
    /// Bytes waiting to be written; empty when idle.
    pub out: OutQueue,
    /// Last time the peer sent anything.
    pub last_active: Millis,
    /// Deadline of this connection's live entry in the timer heap;
    /// [`NO_TIMER`] when there is none (a sentinel, not an `Option`: 8 bytes
    /// less on every idle connection).
    pub timer_at: Millis,
    /// Listed for a flush after this loop turn.
    pub dirty: bool,
    /// Listed for removal after this loop turn; nothing more is done for it.
    pub doomed: bool,
    /// Input memory counted against the process-wide budget (allocated bytes
    /// of `inbuf` and of a WebSocket message in progress).
    pub held: u32,
    /// Bytes of unfinished input last seen (growth is progress).
    pub partial_len: u32,
    /// When the unfinished input last grew.
    pub progress_at: Millis,
}

/// The protocol stage of a connection.
#[derive(Debug)]
pub enum Phase {
    /// Reading HTTP/1.1 requests (keep-alive, pipelining).
    Http(HttpState),
    /// An upgraded WebSocket.
    Ws(WsState),
    /// Writing the last queued bytes, then half-closed, waiting for the
    /// peer's FIN (so our final bytes are not destroyed by a reset).
    Closing {
        /// When closing began (bounded by the close timeout).
        since: Millis,
        /// Our write side is already shut down.
        shut: bool,
        /// Wait for the peer's FIN after ours (HTTP: so our last answer is not
        /// destroyed by a reset). False after a completed WebSocket close
        /// handshake: the server closes TCP first (RFC 6455 §7.1.1).
        linger: bool,
    },
}

/// HTTP phase state.
#[derive(Debug, Default)]
pub struct HttpState {
    /// When the first byte of the request being read arrived.
    pub head_started: Option<Millis>,
    /// `100 Continue` was sent for the request being read.
    pub continued: bool,
    /// A request is being answered later (the store is working on it):
    /// since when, and whether the connection stays open after the answer.
    /// Further pipelined requests wait in `inbuf` until then.
    pub awaiting: Option<(Millis, bool)>,
    /// How far the request at the front of `inbuf` was parsed (scanned once).
    pub scan: crate::http::HeadScan,
}

/// WebSocket phase state.
#[derive(Debug)]
pub struct WsState {
    /// Fragment reassembly.
    pub reader: MessageReader,
    /// What the socket is attached to.
    pub role: WsRole,
    /// When we last pinged for liveness, if that ping is unanswered.
    pub ping_sent: Option<Millis>,
    /// When we sent our close frame, if we did.
    pub closed_by_us: Option<Millis>,
}

impl Conn {
    /// A freshly accepted connection waiting for its first request.
    pub fn new(transport: Transport, id: ConnId, now: Millis) -> Conn {
        Conn {
            transport,
            id,
            phase: Phase::Http(HttpState { head_started: Some(now), ..Default::default() }),
            inbuf: Vec::new(),
            out: OutQueue::default(),
            last_active: now,
            timer_at: NO_TIMER,
            dirty: false,
            doomed: false,
            held: 0,
            partial_len: 0,
            progress_at: now,
        }
    }

    /// Unfinished input this connection holds: (allocated, received) bytes.
    pub fn input_held(&self) -> (usize, usize) {
        let (cap, len) = match &self.phase {
            Phase::Ws(ws) => ws.reader.held(),
            _ => (0, 0),
        };
        (cap + self.inbuf.capacity(), len + self.inbuf.len())
    }

    /// Whether unfinished input is waiting on the peer (so a stall counts):
    /// not while a request is answered or a big reply is unread, when the
    /// server itself holds the bytes back.
    pub fn awaits_input(&self, limits: &NetLimits) -> bool {
        self.partial_len > 0
            && match &self.phase {
                Phase::Http(h) => h.awaiting.is_none() && self.out.pending() <= limits.write_high_water,
                Phase::Ws(ws) => ws.closed_by_us.is_none(),
                Phase::Closing { .. } => false,
            }
    }

    /// When unfinished input counts as stalled, if it is waited for.
    pub fn stall_deadline(&self, limits: &NetLimits) -> Option<Millis> {
        self.awaits_input(limits).then(|| self.progress_at + limits.input_stall_timeout.as_millis() as Millis)
    }

    /// When something must next happen to this connection if it stays silent.
    pub fn deadline(&self, limits: &NetLimits) -> Millis {
        let ms = |d: std::time::Duration| d.as_millis() as Millis;
        let phase_deadline = match &self.phase {
            Phase::Http(h) => match (h.awaiting, h.head_started) {
                (Some((since, _)), _) => since + ms(limits.answer_timeout),
                (None, Some(start)) => start + ms(limits.handshake_timeout),
                (None, None) => self.last_active + ms(limits.keepalive_timeout),
            },
            Phase::Ws(ws) => match (ws.closed_by_us, ws.ping_sent) {
                (Some(since), _) => since + ms(limits.close_timeout),
                (None, Some(at)) if self.last_active <= at => at + ms(limits.pong_timeout),
                _ => self.last_active + ms(limits.activity_timeout),
            },
            Phase::Closing { since, .. } => since + ms(limits.close_timeout),
        };
        self.stall_deadline(limits).map_or(phase_deadline, |stall| stall.min(phase_deadline))
    }

    /// Whether upper layers may still queue frames here.
    pub fn accepts_frames(&self) -> bool {
        !self.doomed && matches!(&self.phase, Phase::Ws(ws) if ws.closed_by_us.is_none())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_connection_is_small() {
        // Every idle connection pays this (plus the kernel's socket); keep it lean.
        // 200 since the input budget and stall timeout (held, partial_len,
        // progress_at): 160 KB more for 20 000 connections.
        // Measured on the release layout (the one that serves): debug builds
        // of dependencies carry extra checking fields.
        let size = std::mem::size_of::<Conn>();
        let limit = if cfg!(debug_assertions) { 256 } else { 200 };
        assert!(size <= limit, "Conn is {size} bytes");
    }
}
