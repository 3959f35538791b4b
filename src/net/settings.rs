//! The loop's own settings: where to listen, with which certificates, and
//! the limits it enforces on every connection. Plain data, filled in by the
//! binary from its configuration.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// Everything the event loop needs to know before it runs.
#[derive(Clone, Debug)]
pub struct NetConfig {
    /// The WebSocket listener.
    pub ws_addr: SocketAddr,
    /// The REST listener; may equal `ws_addr` (then one socket serves both).
    pub api_addr: SocketAddr,
    /// TLS of the WebSocket listener; also of the REST one when they are one socket.
    pub ws_tls: Option<TlsFiles>,
    /// TLS of the REST listener.
    pub api_tls: Option<TlsFiles>,
    /// Sizes and timeouts enforced on every connection.
    pub limits: NetLimits,
    /// Grace period for draining on SIGINT/SIGTERM.
    pub shutdown_grace: Duration,
    /// Bind with SO_REUSEPORT: several processes share the ports (the kernel
    /// spreads new connections over them).
    pub reuse_port: bool,
}

/// The PEM files of a TLS listener, read at start and again on SIGHUP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain.
    pub cert: PathBuf,
    /// Private key.
    pub key: PathBuf,
}

/// Sizes and timeouts that protect the server from its peers.
#[derive(Clone, Debug)]
pub struct NetLimits {
    /// Request line plus headers.
    pub max_head_bytes: usize,
    /// Content-Length bodies.
    pub max_body_bytes: usize,
    /// One frame, and one reassembled fragmented message.
    pub max_message_bytes: usize,
    /// Unread backlog past which a connection is cut as a slow consumer.
    pub write_high_water: usize,
    /// Unfinished input buffered across all connections (bodies, fragments).
    pub input_budget: usize,
    /// Time an unfinished request or message may make no progress.
    pub input_stall_timeout: Duration,
    /// Open connections; more are answered 503 and closed.
    pub max_connections: usize,
    /// Time to send a complete request head.
    pub handshake_timeout: Duration,
    /// Idle time of a keep-alive HTTP connection between requests.
    pub keepalive_timeout: Duration,
    /// WebSocket silence before the peer is checked with a ping.
    pub activity_timeout: Duration,
    /// Time allowed for the answer to that ping.
    pub pong_timeout: Duration,
    /// Time allowed for the closing handshake or the peer's FIN.
    pub close_timeout: Duration,
    /// Time a request answered later may wait for its answer.
    pub answer_timeout: Duration,
}
