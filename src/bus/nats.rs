//! A minimal NATS core client (`PUB`, `SUB`, `MSG`, `PING`/`PONG`), for
//! the bus's helper threads when `PUSHI_CLUSTER_URL=nats://host:port`: the
//! nodes' envelopes travel on subject `<prefix>.bus`, while the cluster
//! registry stays in Redis. Blocking I/O with timeouts, one connection per
//! thread; written here because only a sliver of the protocol is needed and
//! the async clients would bring a runtime to threads that need none.
//!
//! Protocol lines end with `\r\n`; `MSG <subject> <sid> [reply-to] <bytes>`
//! is followed by the payload and `\r\n`. The server's `PING`s are answered
//! so it keeps the connection.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// Largest payload accepted from the server (nats-server's default max is 1 MiB).
const MAX_PAYLOAD: usize = 64 * 1024 * 1024;

/// One connection to a NATS server.
pub struct NatsConn {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    /// A control line being read (kept across read timeouts).
    line: Vec<u8>,
    /// A message whose payload is being read: its size with the CRLF, and what came.
    payload: Option<(usize, Vec<u8>)>,
}

/// `nats://host:port` → `host:port`.
pub fn address(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("nats://")?;
    let rest = rest.trim_end_matches('/');
    (!rest.is_empty() && !rest.contains('/')).then_some(rest)
}

fn protocol_error(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
}

impl NatsConn {
    /// Connects, reads the server's `INFO`, sends `CONNECT` and waits for
    /// the `PONG` that answers a `PING` (so the server has accepted us).
    pub fn connect(url: &str, name: &str, timeout: Duration) -> io::Result<NatsConn> {
        let addr = address(url).ok_or_else(|| protocol_error(format!("{url:?} is not nats://host:port")))?;
        let target = addr.to_socket_addrs()?.next().ok_or_else(|| protocol_error(format!("{addr} has no address")))?;
        let stream = TcpStream::connect_timeout(&target, timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let mut conn =
            NatsConn { writer: stream.try_clone()?, reader: BufReader::new(stream), line: Vec::new(), payload: None };
        let info = conn.read_line()?.unwrap_or_default();
        if !info.starts_with(b"INFO ") {
            return Err(protocol_error(format!("expected INFO, got {:?}", String::from_utf8_lossy(&info))));
        }
        let connect = serde_json::json!({
            "verbose": false, "pedantic": false, "name": name, "lang": "rust-pushi", "version": env!("CARGO_PKG_VERSION"),
        });
        conn.writer.write_all(format!("CONNECT {connect}\r\nPING\r\n").as_bytes())?;
        loop {
            let line = conn.read_line()?.ok_or_else(|| protocol_error("no PONG after CONNECT".into()))?;
            match line.as_slice() {
                b"PONG" => return Ok(conn),
                b"PING" => conn.writer.write_all(b"PONG\r\n")?,
                l if l.starts_with(b"-ERR") => return Err(protocol_error(String::from_utf8_lossy(l).into_owned())),
                _ => {}
            }
        }
    }

    /// Sets how long [`NatsConn::next_message`] waits.
    pub fn set_read_timeout(&self, timeout: Duration) -> io::Result<()> {
        self.reader.get_ref().set_read_timeout(Some(timeout))
    }

    /// Publishes every payload on `subject` in one write.
    pub fn publish_all(&mut self, subject: &str, payloads: &[&[u8]]) -> io::Result<()> {
        let size: usize = payloads.iter().map(|p| p.len() + subject.len() + 24).sum();
        let mut out = Vec::with_capacity(size);
        for p in payloads {
            out.extend_from_slice(format!("PUB {subject} {}\r\n", p.len()).as_bytes());
            out.extend_from_slice(p);
            out.extend_from_slice(b"\r\n");
        }
        self.writer.write_all(&out)
    }

    /// Subscribes to `subject` under subscription id `sid`.
    pub fn subscribe(&mut self, subject: &str, sid: u32) -> io::Result<()> {
        self.writer.write_all(format!("SUB {subject} {sid}\r\n").as_bytes())
    }

    /// Answers the server's `PING`s waiting on a publishing connection
    /// (which never reads otherwise); returns without waiting.
    pub fn keep_alive(&mut self) -> io::Result<()> {
        self.reader.get_ref().set_nonblocking(true)?;
        let result = loop {
            match self.next_message() {
                Ok(Some(_)) => continue, // a publisher subscribes to nothing
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
            }
        };
        self.reader.get_ref().set_nonblocking(false)?;
        result
    }

    /// The next message's payload; None when nothing came within the read
    /// timeout. Control lines are handled on the way (`PING` answered).
    pub fn next_message(&mut self) -> io::Result<Option<Vec<u8>>> {
        loop {
            if let Some((size, mut got)) = self.payload.take() {
                let mut chunk = vec![0; size - got.len()];
                match self.reader.read(&mut chunk) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => got.extend_from_slice(&chunk[..n]),
                    Err(e) if is_timeout(&e) => {
                        self.payload = Some((size, got));
                        return Ok(None);
                    }
                    Err(e) => return Err(e),
                }
                if got.len() < size {
                    self.payload = Some((size, got));
                    continue;
                }
                got.truncate(size - 2); // the payload's CRLF
                return Ok(Some(got));
            }
            let Some(line) = self.read_line()? else { return Ok(None) };
            if line == b"PING" {
                self.writer.write_all(b"PONG\r\n")?;
            } else if let Some(rest) = line.strip_prefix(b"MSG ") {
                let text = String::from_utf8_lossy(rest);
                let size = text
                    .split_ascii_whitespace()
                    .last()
                    .and_then(|n| n.parse::<usize>().ok())
                    .filter(|n| *n <= MAX_PAYLOAD)
                    .ok_or_else(|| protocol_error(format!("bad MSG line {text:?}")))?;
                self.payload = Some((size + 2, Vec::with_capacity(size + 2)));
            } else if line.starts_with(b"-ERR") {
                return Err(protocol_error(String::from_utf8_lossy(&line).into_owned()));
            }
            // INFO (cluster changes), +OK, PONG: nothing to do.
        }
    }

    /// One control line without its CRLF; None on a read timeout (what was
    /// read so far is kept for the next call).
    fn read_line(&mut self) -> io::Result<Option<Vec<u8>>> {
        match self.reader.read_until(b'\n', &mut self.line) {
            Ok(0) => Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) if self.line.ends_with(b"\n") => {
                let mut line = std::mem::take(&mut self.line);
                line.truncate(line.len() - 1);
                if line.ends_with(b"\r") {
                    line.pop();
                }
                Ok(Some(line))
            }
            Ok(_) => Ok(None),
            Err(e) if is_timeout(&e) => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn urls() {
        assert_eq!(address("nats://127.0.0.1:4222"), Some("127.0.0.1:4222"));
        assert_eq!(address("nats://h:1/"), Some("h:1"));
        assert_eq!(address("redis://h:1"), None);
        assert_eq!(address("nats://"), None);
    }

    /// A scripted server on a real socket: INFO, PONG, then a message cut
    /// in pieces around a PING; the client answers the PING and reads it whole.
    #[test]
    fn reads_messages_in_pieces_and_answers_pings() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            s.write_all(b"INFO {\"server_id\":\"x\"}\r\n").unwrap();
            let mut r = BufReader::new(s.try_clone().unwrap());
            let mut line = String::new();
            r.read_line(&mut line).unwrap(); // CONNECT
            assert!(line.starts_with("CONNECT {"), "{line}");
            line.clear();
            r.read_line(&mut line).unwrap(); // PING
            s.write_all(b"+OK\r\nPONG\r\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "SUB p.bus 1\r\n");
            s.write_all(b"PING\r\nMSG p.bus 1 5\r\nhe").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(b"llo\r\nMSG p.bus 1 reply.to 2\r\nok\r\n").unwrap();
            line.clear();
            r.read_line(&mut line).unwrap();
            assert_eq!(line, "PONG\r\n");
        });
        let mut c = NatsConn::connect(&format!("nats://{addr}"), "t", Duration::from_secs(2)).unwrap();
        c.subscribe("p.bus", 1).unwrap();
        c.set_read_timeout(Duration::from_millis(10)).unwrap();
        let mut got = Vec::new();
        for _ in 0..500 {
            if let Some(m) = c.next_message().unwrap() {
                got.push(m);
            }
            if got.len() == 2 {
                break;
            }
        }
        assert_eq!(got, [b"hello".to_vec(), b"ok".to_vec()]);
        server.join().unwrap();
    }
}
