//! TLS for either listener with rustls, on the loop thread: the session
//! decrypts into the shared read buffer and encrypts what the out-queue
//! flushes, so the rest of the loop sees plaintext either way.

use std::io::{self, IoSlice, Read, Write};
use std::path::Path;
use std::sync::Arc;

use mio::net::TcpStream;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ServerConfig, ServerConnection};

/// Builds a server configuration from PEM files (certificate chain, private key).
pub fn load_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, String> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?
        .collect::<Result<_, _>>()
        .map_err(|e| format!("certificate {}: {e}", cert.display()))?;
    if certs.is_empty() {
        return Err(format!("certificate {}: no certificate found", cert.display()));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("private key {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| format!("certificate and key do not match or are unusable: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What a read from a TLS connection produced.
pub enum TlsRead {
    /// Plaintext bytes in the buffer.
    Data(usize),
    /// Nothing more for now (handshake progress, or the socket is drained).
    Blocked,
    /// The peer closed (close_notify or EOF).
    Closed,
}

/// Reads ciphertext from the socket as needed and returns the next plaintext.
pub fn read(tls: &mut ServerConnection, socket: &mut TcpStream, buf: &mut [u8]) -> io::Result<TlsRead> {
    loop {
        match tls.reader().read(buf) {
            Ok(0) => return Ok(TlsRead::Closed),
            Ok(n) => return Ok(TlsRead::Data(n)),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(TlsRead::Closed),
            Err(e) => return Err(e),
        }
        match tls.read_tls(socket) {
            Ok(0) => return Ok(TlsRead::Closed),
            Ok(_) => {
                if let Err(e) = tls.process_new_packets() {
                    // Queue the alert for the peer before the connection is dropped.
                    let _ = tls.write_tls(socket);
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(TlsRead::Blocked),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Writes pending ciphertext; WouldBlock when the socket is full.
pub fn push(tls: &mut ServerConnection, socket: &mut TcpStream) -> io::Result<()> {
    while tls.wants_write() {
        match tls.write_tls(socket) {
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// The plaintext side of a TLS connection, for the out-queue's flush.
pub struct TlsSink<'a> {
    /// The session.
    pub tls: &'a mut ServerConnection,
    /// Its socket.
    pub socket: &'a mut TcpStream,
}

impl Write for TlsSink<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_vectored(&[IoSlice::new(buf)])
    }

    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        // Keep rustls' buffer short: encrypt only what the socket is taking.
        match push(self.tls, self.socket) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Err(e),
            Err(e) => return Err(e),
        }
        let n = self.tls.writer().write_vectored(bufs)?;
        if n == 0 {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        match push(self.tls, self.socket) {
            Ok(()) => Ok(n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
            Err(e) => Err(e),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        push(self.tls, self.socket)
    }
}
