//! The one place the event loop and the application meet: [`Hub`] serves
//! as the loop's [`Service`], and the loop's settings come from [`Config`].

use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::config::{Config, TlsFiles};
use crate::http::{HttpError, Request, Response};
use crate::hub::Hub;
use crate::net::{NetConfig, NetLimits, Service, WsRole, WsRoute};
use crate::outbox::{ConnId, Outbox};

/// The loop's settings: listeners, certificates, limits, shutdown grace.
pub fn net_config(config: &Config) -> NetConfig {
    let tls =
        |t: &Option<TlsFiles>| t.as_ref().map(|f| crate::net::TlsFiles { cert: f.cert.clone(), key: f.key.clone() });
    let l = &config.limits;
    NetConfig {
        ws_addr: config.server_addr,
        api_addr: config.app_addr,
        ws_tls: tls(&config.server_tls),
        api_tls: tls(&config.app_tls),
        limits: NetLimits {
            max_head_bytes: l.max_head_bytes,
            max_body_bytes: l.max_body_bytes,
            max_message_bytes: l.max_message_bytes,
            write_high_water: l.write_high_water,
            input_budget: l.input_budget,
            input_stall_timeout: l.input_stall_timeout,
            max_connections: l.max_connections,
            handshake_timeout: l.handshake_timeout,
            keepalive_timeout: l.keepalive_timeout,
            activity_timeout: l.activity_timeout,
            pong_timeout: l.pong_timeout,
            close_timeout: l.close_timeout,
            answer_timeout: l.store_timeout,
        },
        shutdown_grace: config.shutdown_grace,
    }
}

impl Service for Hub {
    fn http(&mut self, req: &Request, conn: ConnId, out: &mut dyn Outbox) -> Option<Response> {
        Hub::http(self, req, conn, out)
    }

    fn answer_timed_out(&mut self, conn: ConnId) -> Response {
        log::warn!("conn {}: the store did not answer in time; 504", conn.key);
        Response::error(504, "the store did not answer in time; a write stays queued and is retried")
    }

    fn ws_route(&self, req: &Request) -> Result<WsRoute, HttpError> {
        Hub::ws_route(self, req)
    }

    fn ws_open(&mut self, route: WsRoute, conn: ConnId, out: &mut dyn Outbox) -> WsRole {
        Hub::ws_open(self, route, conn, out)
    }

    fn ws_text(&mut self, session: u32, text: &str, out: &mut dyn Outbox) {
        Hub::ws_text(self, session, text, out)
    }

    fn ws_idle(&mut self, session: u32, out: &mut dyn Outbox) -> bool {
        Hub::ws_idle(self, session, out)
    }

    fn ws_closed(&mut self, session: u32, out: &mut dyn Outbox) {
        Hub::ws_closed(self, session, out)
    }

    fn unresponsive_close(&self, role: WsRole) -> (u16, &'static str) {
        Hub::unresponsive_close(self, role)
    }

    fn shutdown_close(&self, role: WsRole) -> (u16, &'static str) {
        Hub::shutdown_close(self, role)
    }

    fn on_wake(&mut self, out: &mut dyn Outbox) {
        self.on_store_answers(out)
    }

    fn end_of_turn(&mut self) {
        Hub::end_of_turn(self)
    }

    fn housekeeping_in(&self) -> Option<Duration> {
        Hub::housekeeping_in(self)
    }

    fn status(&self) -> String {
        let degraded = self.store.health.degraded.load(Ordering::Relaxed);
        format!("{} sessions{}", self.sessions.len(), if degraded { "; store degraded, writes retried" } else { "" })
    }
}
