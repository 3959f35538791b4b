//! systemd readiness protocol (`sd_notify`): `READY=1` once the listeners are
//! bound, `STATUS=` lines, `WATCHDOG=1` pings when `WATCHDOG_USEC` is set,
//! and `STOPPING=1` on shutdown. A datagram to `$NOTIFY_SOCKET`; without
//! that variable (not under `Type=notify`) every call does nothing.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use log::debug;

/// A connection to the service manager's notification socket, if any.
pub struct Notifier {
    socket: Option<(UnixDatagram, String)>,
    /// Half the watchdog period, when the manager asked for watchdog pings.
    pub watchdog_interval: Option<Duration>,
}

impl Notifier {
    /// Reads `NOTIFY_SOCKET` and `WATCHDOG_USEC` from the environment.
    pub fn from_env() -> Notifier {
        let path = std::env::var("NOTIFY_SOCKET").ok().filter(|p| !p.is_empty());
        // Abstract sockets ("@name") need the Linux-only abstract-address API; systemd uses a path.
        let socket = path.filter(|p| p.starts_with('/')).and_then(|p| UnixDatagram::unbound().ok().map(|s| (s, p)));
        let watchdog_interval = std::env::var("WATCHDOG_USEC")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|usec| *usec > 0)
            .map(|usec| Duration::from_micros(usec / 2));
        Notifier { socket, watchdog_interval }
    }

    /// Sends one notification (newline-separated `KEY=value` lines).
    pub fn notify(&self, state: &str) {
        if let Some((socket, path)) = &self.socket {
            if let Err(e) = socket.send_to(state.as_bytes(), path) {
                debug!("sd_notify to {path} failed: {e}");
            }
        }
    }
}
