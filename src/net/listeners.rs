//! The listening sockets: bound here, or inherited from systemd (socket
//! activation), each with its TLS configuration.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use log::info;
use mio::net::TcpListener;

use super::settings::{NetConfig, TlsFiles};
use super::tls;
use crate::systemd::ActivatedListener;

/// TLS configuration of one listener (None: plain TCP).
pub type ListenerTls = Option<Arc<rustls::ServerConfig>>;

/// The bound listeners; created before the loop so start-up can report
/// the real addresses (port 0 gets an ephemeral port).
pub struct Listeners {
    pub(super) sockets: Vec<TcpListener>,
    /// TLS configuration of each listener.
    pub(super) tls: Vec<ListenerTls>,
    /// The sockets came from systemd (socket activation) and outlive this process.
    pub activated: bool,
}

impl Listeners {
    /// Takes the sockets passed by systemd socket activation (`LISTEN_FDS`,
    /// named `ws` and `api` by `LISTEN_FDNAMES`, else in that order; one
    /// socket serves both), or else binds the WebSocket and REST addresses
    /// (once if they are the same).
    pub fn bind(config: &NetConfig) -> io::Result<Listeners> {
        let (sockets, activated) = match crate::systemd::listen_fds(|k| std::env::var(k).ok())? {
            Some(passed) => (activated_sockets(passed)?, true),
            None => {
                let bind = |addr| if config.reuse_port { bind_reusable(addr) } else { TcpListener::bind(addr) };
                let mut sockets = vec![bind(config.ws_addr)?];
                if config.api_addr != config.ws_addr {
                    sockets.push(bind(config.api_addr)?);
                }
                (sockets, false)
            }
        };
        let tls = load_tls(config, sockets.len()).map_err(io::Error::other)?;
        Ok(Listeners { sockets, tls, activated })
    }

    /// Whether each listener speaks TLS (WebSocket listener first).
    pub fn tls_enabled(&self) -> Vec<bool> {
        self.tls.iter().map(Option::is_some).collect()
    }

    /// The bound addresses: WebSocket first, then REST (same as the first when shared).
    pub fn addrs(&self) -> io::Result<(SocketAddr, SocketAddr)> {
        let ws = self.sockets[0].local_addr()?;
        let api = match self.sockets.get(1) {
            Some(s) => s.local_addr()?,
            None => ws,
        };
        Ok((ws, api))
    }
}

/// Orders the sockets systemd passed: WebSocket listener first, then REST.
fn activated_sockets(passed: Vec<ActivatedListener>) -> io::Result<Vec<TcpListener>> {
    let named = |name: &str| passed.iter().position(|l| l.name.as_deref() == Some(name));
    let order: Vec<usize> = match (named("ws"), named("api")) {
        (Some(ws), Some(api)) => vec![ws, api],
        (Some(one), None) | (None, Some(one)) if passed.len() == 1 => vec![one],
        (None, None) if passed.len() <= 2 => (0..passed.len()).collect(),
        _ => {
            let names: Vec<String> = passed.iter().map(|l| l.name.clone().unwrap_or_default()).collect();
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "socket activation passed {} sockets named {names:?}; expected one, or two named ws and api",
                    passed.len()
                ),
            ));
        }
    };
    let mut slots: Vec<Option<std::net::TcpListener>> = passed.into_iter().map(|l| Some(l.socket)).collect();
    let mut out = Vec::new();
    for i in order {
        let socket = slots[i].take().expect("each index once");
        socket.set_nonblocking(true)?;
        info!("socket activation: listening on {} (inherited)", socket.local_addr()?);
        out.push(TcpListener::from_std(socket));
    }
    Ok(out)
}

/// Reads the certificates of the TLS listeners (once per listener; when the
/// two listeners are one socket, the WebSocket settings apply).
pub(super) fn load_tls(config: &NetConfig, listeners: usize) -> Result<Vec<ListenerTls>, String> {
    let load = |t: &Option<TlsFiles>| -> Result<_, String> {
        t.as_ref().map(|f| tls::load_config(&f.cert, &f.key)).transpose()
    };
    let mut out = vec![load(&config.ws_tls)?];
    if listeners > 1 {
        out.push(load(&config.api_tls)?);
    }
    Ok(out)
}

/// A listener bound with SO_REUSEPORT (and SO_REUSEADDR, as mio's own bind
/// sets), so several pushi processes can listen on the same address.
fn bind_reusable(addr: SocketAddr) -> io::Result<TcpListener> {
    use socket2::{Domain, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    Ok(TcpListener::from_std(socket.into()))
}
