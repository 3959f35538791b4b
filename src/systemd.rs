//! systemd readiness protocol (`sd_notify`): `READY=1` once the listeners are
//! bound, `STATUS=` lines, `WATCHDOG=1` pings when `WATCHDOG_USEC` is set,
//! and `STOPPING=1` on shutdown. A datagram to `$NOTIFY_SOCKET`; without
//! that variable (not under `Type=notify`) every call does nothing. Also
//! socket activation ([`listen_fds`]): listening sockets passed by systemd.

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

/// A listening socket handed over by the service manager (socket activation).
#[derive(Debug)]
pub struct ActivatedListener {
    /// Its name from `LISTEN_FDNAMES` (`FileDescriptorName=` in the .socket unit), if given.
    pub name: Option<String>,
    /// The socket, close-on-exec, not yet non-blocking.
    pub socket: std::net::TcpListener,
}

/// First descriptor passed by socket activation (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: i32 = 3;

/// Reads socket activation (`sd_listen_fds`): the listening sockets systemd
/// passed as descriptors 3, 4, ... when `LISTEN_PID` is this process and
/// `LISTEN_FDS` counts them. `Ok(None)` when not activated, so the caller
/// binds its own sockets. The sockets outlive a restart (systemd keeps them),
/// so clients reconnecting meanwhile wait in the backlog instead of being refused.
pub fn listen_fds(env: impl Fn(&str) -> Option<String>) -> std::io::Result<Option<Vec<ActivatedListener>>> {
    use std::os::fd::FromRawFd;
    let invalid = |why: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, why);
    let Some(pid) = env("LISTEN_PID") else {
        return Ok(None);
    };
    if pid.trim().parse::<u32>().ok() != Some(std::process::id()) {
        // Meant for another process (e.g. our parent); not ours to use.
        return Ok(None);
    }
    let count = env("LISTEN_FDS").unwrap_or_default();
    let count: i32 = count.trim().parse().map_err(|_| invalid(format!("LISTEN_FDS={count:?} is not a number")))?;
    if !(1..=16).contains(&count) {
        return Err(invalid(format!("LISTEN_FDS={count}: expected 1 or 2 listening sockets")));
    }
    let names: Vec<String> =
        env("LISTEN_FDNAMES").map(|n| n.split(':').map(str::to_string).collect()).unwrap_or_default();
    let mut out = Vec::new();
    for i in 0..count {
        let fd = LISTEN_FDS_START + i;
        // SAFETY: systemd passes these descriptors to this process (LISTEN_PID
        // matched) and nothing else in the process owns them.
        let inherited = unsafe { std::net::TcpListener::from_raw_fd(fd) };
        // A listening TCP socket has a local address; anything else is refused.
        inherited
            .local_addr()
            .map_err(|e| invalid(format!("descriptor {fd} from LISTEN_FDS is not a TCP socket: {e}")))?;
        // try_clone duplicates with close-on-exec; the inherited descriptor is then closed.
        let socket = inherited.try_clone()?;
        drop(inherited);
        out.push(ActivatedListener { name: names.get(i as usize).filter(|n| !n.is_empty()).cloned(), socket });
    }
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_activated_without_our_pid() {
        assert!(listen_fds(|_| None).unwrap().is_none());
        let other = (std::process::id() + 1).to_string();
        let env = move |k: &str| match k {
            "LISTEN_PID" => Some(other.clone()),
            "LISTEN_FDS" => Some("2".into()),
            _ => None,
        };
        assert!(listen_fds(env).unwrap().is_none(), "LISTEN_PID of another process is ignored");
    }

    #[test]
    fn bad_count_is_an_error() {
        let me = std::process::id().to_string();
        let env = move |k: &str| match k {
            "LISTEN_PID" => Some(me.clone()),
            "LISTEN_FDS" => Some("x".into()),
            _ => None,
        };
        assert!(listen_fds(env).unwrap_err().to_string().contains("LISTEN_FDS"));
    }
}
