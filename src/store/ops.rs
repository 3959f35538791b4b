//! The store's vocabulary: the operations the event loop submits ([`Op`])
//! and what comes back ([`StoreReply`]), apart from the worker pool that runs them.

use super::{EventRecord, EventWrite, StoreError, SubscriptionRecord, TargetRecord};
use crate::apps::App;

/// What the reactor asks of the store.
#[derive(Debug, Clone)]
pub enum Op {
    /// Store a persisted event and its associations.
    Write(EventWrite),
    /// Insert or replace an app.
    PutApp(App),
    /// History of an app or one of its channels, newest first.
    ChannelEvents {
        /// App id.
        app: String,
        /// Only this channel, when given.
        channel: Option<String>,
        /// Events to skip.
        skip: usize,
        /// Page size.
        count: usize,
    },
    /// A user's personal history, newest first.
    UserEvents {
        /// App id.
        app: String,
        /// The user.
        user_id: String,
        /// Events to skip.
        skip: usize,
        /// Page size.
        count: usize,
    },
    /// List subscriptions.
    Subscriptions {
        /// App id.
        app: String,
        /// Filter by user.
        user_id: Option<String>,
        /// Filter by channel.
        event: Option<String>,
    },
    /// Add a subscription (idempotent).
    AddSubscription(SubscriptionRecord),
    /// Remove a subscription.
    RemoveSubscription {
        /// App id.
        app: String,
        /// The user.
        user_id: String,
        /// The channel.
        event: String,
    },
    /// List handler targets.
    Targets {
        /// App id.
        app: String,
        /// Handler kind.
        kind: String,
        /// Filter by target.
        target: Option<String>,
        /// Filter by channel.
        event: Option<String>,
    },
    /// Add a handler target (idempotent).
    AddTarget(TargetRecord),
    /// Remove targets of one target value (one event, or all).
    RemoveTargets {
        /// App id.
        app: String,
        /// Handler kind.
        kind: String,
        /// URL, e-mail, token or endpoint.
        target: String,
        /// Only this channel, when given.
        event: Option<String>,
    },
    /// Delete an app and everything stored for it.
    DeleteApp(String),
    /// Round trip (readiness checks).
    Ping,
}

impl Op {
    /// Writes must not be lost: they are retried until they succeed.
    pub(crate) fn is_write(&self) -> bool {
        matches!(
            self,
            Op::Write(_)
                | Op::PutApp(_)
                | Op::AddSubscription(_)
                | Op::RemoveSubscription { .. }
                | Op::AddTarget(_)
                | Op::RemoveTargets { .. }
                | Op::DeleteApp(_)
        )
    }

    /// Roughly the memory this op holds while queued (the byte bound of the queue).
    pub(crate) fn weight(&self) -> u64 {
        fn value(v: &serde_json::Value) -> usize {
            match v {
                serde_json::Value::String(s) => s.len() + 2,
                serde_json::Value::Array(a) => a.iter().map(value).sum::<usize>() + 2,
                serde_json::Value::Object(o) => o.iter().map(|(k, v)| k.len() + 3 + value(v)).sum::<usize>() + 2,
                _ => 8,
            }
        }
        let size = match self {
            Op::Write(w) => {
                value(&w.event.data) + w.event.channel.len() + w.users.iter().map(|u| u.len() + 16).sum::<usize>()
            }
            Op::AddTarget(t) => value(&t.extra) + t.target.len(),
            _ => 0,
        };
        (size + 128) as u64
    }
}

/// What came back.
#[derive(Debug, Clone)]
pub enum StoreReply {
    /// A write (or ping) completed.
    Done,
    /// Events, newest first.
    Events(Vec<EventRecord>),
    /// Subscriptions.
    Subscriptions(Vec<SubscriptionRecord>),
    /// The stored subscription and whether it was created.
    Subscription(SubscriptionRecord, bool),
    /// The removed subscription, if it existed.
    Removed(Option<SubscriptionRecord>),
    /// Targets (listed or removed).
    Targets(Vec<TargetRecord>),
    /// The stored target and whether it was created.
    Target(TargetRecord, bool),
    /// The operation failed (reads only; writes are retried).
    Failed(StoreError),
}

/// Identifies the continuation waiting for an answer (`None`: nobody waits).
pub type Ticket = Option<u32>;
