//! Counters shared by the reactor and the API on the one reactor thread
//! (plain `Cell`s: no atomics needed), rendered as Prometheus text.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Process-wide counters; gauges are computed when rendered.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Connections accepted since start.
    pub connections_accepted: Cell<u64>,
    /// Connections currently open (HTTP and WebSocket).
    pub connections_open: Cell<u64>,
    /// WebSocket connections currently open.
    pub websockets_open: Cell<u64>,
    /// Connections refused at the process limit.
    pub connections_refused: Cell<u64>,
    /// Connections cut because their out-queue passed the high-water mark.
    pub slow_consumers: Cell<u64>,
    /// REST calls refused by the per-app rate limit.
    pub api_rate_limited: Cell<u64>,
    /// HTTP requests answered.
    pub http_requests: Cell<u64>,
    /// WebSocket messages received.
    pub messages_in: Cell<u64>,
    /// WebSocket frames queued to clients.
    pub messages_out: Cell<u64>,
    /// Bytes read from sockets.
    pub bytes_in: Cell<u64>,
    /// Bytes written to sockets.
    pub bytes_out: Cell<u64>,
    /// HTTP error answers by status, counted as sent.
    http_errors: RefCell<BTreeMap<u16, u64>>,
    /// Close frames sent, by code.
    close_codes: RefCell<BTreeMap<u16, u64>>,
}

/// Adds `n` to a counter.
pub fn add(c: &Cell<u64>, n: u64) {
    c.set(c.get().wrapping_add(n));
}

/// Subtracts `n` from a gauge (saturating: gauges never go negative).
pub fn sub(c: &Cell<u64>, n: u64) {
    c.set(c.get().saturating_sub(n));
}

impl Metrics {
    /// Counts an HTTP error answer.
    pub fn http_error(&self, status: u16) {
        *self.http_errors.borrow_mut().entry(status).or_default() += 1;
    }

    /// Counts a close frame sent with this code.
    pub fn close_sent(&self, code: u16) {
        *self.close_codes.borrow_mut().entry(code).or_default() += 1;
    }

    /// Prometheus text exposition; `extra` lines come from upper layers.
    pub fn render(&self, extra: &[(&str, &str, u64)]) -> String {
        let mut out = String::new();
        let mut line = |name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(out, "# HELP pushi_{name} {help}\n# TYPE pushi_{name} {kind}\npushi_{name} {v}");
        };
        line("connections_accepted_total", "Connections accepted.", "counter", self.connections_accepted.get());
        line("connections", "Open connections.", "gauge", self.connections_open.get());
        line("websockets", "Open WebSocket connections.", "gauge", self.websockets_open.get());
        line(
            "connections_refused_total",
            "Connections refused at the limit.",
            "counter",
            self.connections_refused.get(),
        );
        line("slow_consumers_total", "Connections cut as slow consumers.", "counter", self.slow_consumers.get());
        line(
            "api_rate_limited_total",
            "REST calls refused by PUSHI_API_RATE (429).",
            "counter",
            self.api_rate_limited.get(),
        );
        line("http_requests_total", "HTTP requests answered.", "counter", self.http_requests.get());
        line("messages_in_total", "WebSocket messages received.", "counter", self.messages_in.get());
        line("messages_out_total", "WebSocket frames queued to clients.", "counter", self.messages_out.get());
        line("bytes_in_total", "Bytes read from sockets.", "counter", self.bytes_in.get());
        line("bytes_out_total", "Bytes written to sockets.", "counter", self.bytes_out.get());
        for (name, help, v) in extra {
            line(name, help, "gauge", *v);
        }
        let _ = writeln!(
            out,
            "# HELP pushi_http_errors_total HTTP error answers by status.\n# TYPE pushi_http_errors_total counter"
        );
        for (status, n) in self.http_errors.borrow().iter() {
            let _ = writeln!(out, "pushi_http_errors_total{{status=\"{status}\"}} {n}");
        }
        let _ = writeln!(out, "# HELP pushi_close_codes_total WebSocket close frames sent by code.\n# TYPE pushi_close_codes_total counter");
        for (code, n) in self.close_codes.borrow().iter() {
            let _ = writeln!(out, "pushi_close_codes_total{{code=\"{code}\"}} {n}");
        }
        out
    }
}
