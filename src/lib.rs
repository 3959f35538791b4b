//! pushi: a WebSocket push server that speaks the Pusher Channels protocol
//! and Pushi's REST API, on one single-threaded mio reactor.
//!
//! Data flows one way:
//!
//! ```text
//! socket ─▶ net ─▶ http / ws (pure codecs) ─▶ Service (hub) ─▶ api (REST routes)
//!            ▲                                      │
//!            └────────── Outbox (out-queues) ◀──────┘
//! ```
//!
//! The event loop (`net`) owns every socket and buffer and knows the
//! application only through the [`net::Service`] trait, which `server`
//! implements for the hub; the layers below it return values and write
//! through the [`outbox::Outbox`] trait, never to sockets.

#![deny(missing_docs)]

pub mod api;
pub mod apps;
pub mod bus;
pub mod channels;
pub mod config;
pub mod deliver;
pub mod effects;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
pub mod http;
pub mod metrics;
pub mod net;
pub mod outbound;
pub mod outbox;
pub mod ports;
pub mod protocol;
pub mod server;
pub mod state;
pub mod store;
pub mod support;
pub mod systemd;
pub mod ws;
