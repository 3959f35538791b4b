//! The narrow interface through which the layers above the reactor act on
//! connections: queue a pre-encoded frame, or close. They never see sockets.

use std::rc::Rc;

use crate::http::Response;

/// A WebSocket frame encoded once and shared by every connection it is
/// queued to (a broadcast costs one encode and one allocation).
pub type SharedFrame = Rc<[u8]>;

/// Names a connection across time: `key` is its slab slot, `gen` tells a
/// later occupant of the same slot apart, so late replies cannot misdeliver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    /// Slab slot (also the mio token, offset by the reserved tokens).
    pub key: u32,
    /// Unique per accepted connection.
    pub gen: u32,
}

/// What upper layers may do to connections; implemented by the reactor's table.
pub trait Outbox {
    /// Queues a frame to an open WebSocket; false if the connection is gone,
    /// closing, or was just cut for being too far behind.
    fn send(&mut self, to: ConnId, frame: &SharedFrame) -> bool;
    /// Starts the closing handshake with this code and reason.
    fn close(&mut self, to: ConnId, code: u16, reason: &str);
    /// Answers the HTTP request this connection is waiting on (one whose
    /// handler returned no response because it waits for the store). Dropped
    /// if the connection is gone or no longer waiting.
    fn respond(&mut self, to: ConnId, response: Response);
    /// The peer's IP address, for limits kept per client (`/login`); None
    /// when the connection is gone or the outbox has no sockets (tests, fuzzing).
    fn peer_ip(&mut self, _conn: ConnId) -> Option<std::net::IpAddr> {
        None
    }
    /// Bytes queued to a connection and not yet written, so a sender that
    /// may skip (the console's feed) can hold back instead of being cut as
    /// a slow consumer; None when the connection is gone (or no sockets).
    fn backlog(&mut self, _conn: ConnId) -> Option<usize> {
        None
    }
}
