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
pub mod nats;
pub mod redis;
pub mod registry;

use serde_json::Value;

use crate::apps::{AppIndex, Apps};
use crate::ports::{BusMessage, RegistryOp, RegistryReply};

/// What the cluster registry tells the reactor.
#[derive(Debug)]
pub enum Notice {
    /// The answer to the registry operation with this ticket.
    Answer(u64, Result<RegistryReply, String>),
    /// A web hook the registry decided outside any operation of this node
    /// (the sweep of a dead node): send it from here, once for the cluster.
    Hook(AppIndex, Value),
    /// The registry lost what this node registered, or the bus lost
    /// messages (Redis came back, the subscription was made again, the node
    /// was swept): send everything again and re-read presence members.
    Resync,
}

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
    /// Queues a registry operation, sent in order with the messages at
    /// [`Bus::flush`]; its answer comes back from [`Bus::notices`] under `ticket`.
    fn registry(&mut self, _ticket: u64, _op: RegistryOp) {}
    /// Registry answers, hooks and re-synchronisation requests since the last call.
    fn notices(&mut self, _apps: &Apps) -> Vec<Notice> {
        Vec::new()
    }
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
