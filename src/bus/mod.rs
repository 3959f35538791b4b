//! The bus: how cross-session effects reach the sessions of other nodes.
//! The single-node server uses [`Local`], which has nobody to tell; a
//! cluster uses [`redis::RedisBus`] (Redis pub/sub on two helper threads
//! that wake the reactor), and the reactor applies what it receives to its
//! own sessions exactly as a local publish
//! ([`crate::protocol::remote::apply_remote`]).
//!
//! Messages leave the rules during a turn ([`Bus::send`]) and go to the
//! helper thread at its end ([`Bus::flush`]), in order, one pipeline per
//! turn; apps travel by id ([`envelope`]), since slots differ per node.

pub mod envelope;
pub mod redis;

use crate::apps::Apps;
use crate::ports::BusMessage;

/// A transport of [`BusMessage`]s between the nodes of a cluster.
pub trait Bus {
    /// Whether other nodes listen (false: messages need not be built).
    fn listens(&self) -> bool;
    /// Queues a message for every other node (sent at [`Bus::flush`]).
    fn send(&mut self, message: BusMessage);
    /// End of a reactor turn: hands the queued messages to the sender,
    /// naming apps by id.
    fn flush(&mut self, _apps: &Apps) {}
    /// Messages received from other nodes since the last call, for this
    /// node's app slots (messages for apps it does not have are dropped).
    fn received(&mut self, apps: &Apps) -> Vec<BusMessage>;
    /// Whether the bus is connected; None when there is no bus (one node).
    fn connected(&self) -> Option<bool> {
        None
    }
    /// The bus's counters; None when there is no bus (one node).
    fn stats(&self) -> Option<BusStats> {
        None
    }
}

/// What a bus has done since start (`/metrics`, the console).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BusStats {
    /// Messages published to other nodes.
    pub sent: u64,
    /// Messages received from other nodes.
    pub received: u64,
    /// Messages for other nodes that could not be published (bus down, queue full).
    pub dropped: u64,
    /// Times the subscription was lost and made again (messages may have been missed).
    pub gaps: u64,
}

/// One node alone: nothing to send, nothing to receive.
#[derive(Debug, Default)]
pub struct Local;

impl Bus for Local {
    fn listens(&self) -> bool {
        false
    }

    fn send(&mut self, _message: BusMessage) {}

    fn received(&mut self, _apps: &Apps) -> Vec<BusMessage> {
        Vec::new()
    }
}
