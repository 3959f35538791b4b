//! One byte stream over plain TCP or TLS: a read that yields plaintext, a
//! flush that takes the out-queue, a half-close. The connection code calls
//! these and never asks which of the two it holds.

use std::io::{self, Read};
use std::net::{IpAddr, Shutdown};

use mio::net::TcpStream;
use rustls::ServerConnection;

use super::out_queue::OutQueue;
use super::tls;

/// A client's byte stream.
#[derive(Debug)]
pub enum Transport {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS over TCP (rustls, driven on the loop's thread).
    Tls(TcpStream, Box<ServerConnection>),
}

/// What one read produced.
pub enum Input {
    /// Plaintext bytes at the front of the buffer; `drained` when the read
    /// emptied the socket (a new edge will come for later bytes).
    Data {
        /// How many bytes.
        n: usize,
        /// No read is needed until the next readiness event.
        drained: bool,
    },
    /// Nothing more for now (the socket is drained, or handshake progress only).
    Blocked,
    /// The peer closed its side.
    Closed,
}

impl Transport {
    /// The socket, to register with or deregister from the poll.
    pub fn socket(&mut self) -> &mut TcpStream {
        match self {
            Transport::Plain(s) | Transport::Tls(s, _) => s,
        }
    }

    /// The peer's address, while the socket knows it.
    pub fn peer_ip(&self) -> Option<IpAddr> {
        match self {
            Transport::Plain(s) | Transport::Tls(s, _) => s.peer_addr().ok().map(|a| a.ip()),
        }
    }

    /// Reads the next plaintext into `buf`.
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<Input> {
        match self {
            Transport::Plain(socket) => loop {
                match socket.read(buf) {
                    Ok(0) => return Ok(Input::Closed),
                    // A short read emptied the socket: new bytes raise a new edge, so
                    // skip the read that would only say WouldBlock (tokio does the same).
                    Ok(n) => return Ok(Input::Data { n, drained: n < buf.len() }),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Input::Blocked),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            },
            Transport::Tls(socket, session) => Ok(match tls::read(session, socket, buf)? {
                tls::TlsRead::Data(n) => Input::Data { n, drained: false },
                tls::TlsRead::Blocked => Input::Blocked,
                tls::TlsRead::Closed => Input::Closed,
            }),
        }
    }

    /// Bytes of its own wait to be sent (TLS handshake, alerts, ciphertext).
    pub fn wants_write(&self) -> bool {
        match self {
            Transport::Plain(_) => false,
            Transport::Tls(_, session) => session.wants_write(),
        }
    }

    /// Writes as much of the out-queue as the socket takes; returns the
    /// plaintext bytes taken.
    pub fn flush(&mut self, out: &mut OutQueue) -> io::Result<usize> {
        match self {
            Transport::Plain(socket) => out.flush(socket),
            Transport::Tls(socket, session) => {
                let mut sink = tls::TlsSink { tls: session, socket };
                out.flush(&mut sink).and_then(|n| match tls::push(session, socket) {
                    Err(e) if e.kind() != io::ErrorKind::WouldBlock => Err(e),
                    _ => Ok(n),
                })
            }
        }
    }

    /// Shuts our write side down once everything is out (TLS: close_notify
    /// first, best effort).
    pub fn shutdown_write(&mut self) -> io::Result<()> {
        if let Transport::Tls(socket, session) = self {
            session.send_close_notify();
            let _ = tls::push(session, socket);
        }
        self.socket().shutdown(Shutdown::Write)
    }

    /// Whether this is a TLS stream (for log lines).
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(..))
    }
}
