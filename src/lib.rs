//! pushi: a WebSocket push server that speaks the Pusher Channels protocol
//! and Pushi's REST API, on one single-threaded mio reactor.
//!
//! Data flows one way:
//!
//! ```text
//! socket ─▶ reactor ─▶ http / ws (pure codecs) ─▶ hub ─▶ api (REST routes)
//!              ▲                                    │
//!              └──────── Outbox (out-queues) ◀──────┘
//! ```
//!
//! The reactor owns every socket and buffer; the layers below it return
//! values and write through the [`outbox::Outbox`] trait, never to sockets.

#![deny(missing_docs)]

pub mod api;
pub mod apps;
pub mod channels;
pub mod config;
pub mod deliver;
pub mod fuzzing;
pub mod http;
pub mod hub;
pub mod hub_deliveries;
pub mod metrics;
pub mod outbound;
pub mod outbox;
pub mod protocol;
pub mod reactor;
pub mod store;
pub mod support;
pub mod systemd;
pub mod ws;
