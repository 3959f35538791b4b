//! The bus: how cross-session effects reach the sessions of other nodes.
//! The single-node server uses [`Local`], which has nobody to tell; a
//! cluster adapter (Redis, NATS) implements [`Bus`] on a helper thread and
//! hands what it receives back to the reactor, which applies it to its own
//! sessions exactly as a local publish.

use crate::ports::BusMessage;

/// A transport of [`BusMessage`]s between the nodes of a cluster.
pub trait Bus {
    /// Whether other nodes listen (false: messages need not be built).
    fn listens(&self) -> bool;
    /// Sends a message to every other node.
    fn send(&mut self, message: BusMessage);
    /// Messages received from other nodes since the last call.
    fn received(&mut self) -> Vec<BusMessage>;
}

/// One node alone: nothing to send, nothing to receive.
#[derive(Debug, Default)]
pub struct Local;

impl Bus for Local {
    fn listens(&self) -> bool {
        false
    }

    fn send(&mut self, _message: BusMessage) {}

    fn received(&mut self) -> Vec<BusMessage> {
        Vec::new()
    }
}
