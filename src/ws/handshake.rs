//! The opening handshake (RFC 6455 §4.2): checks an upgrade request and
//! builds the 101 answer with `Sec-WebSocket-Accept`.

use base64::Engine as _;
use sha1::{Digest, Sha1};

use crate::http::{HttpError, Request};

/// The GUID every server appends to the client's key (§1.3).
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key`.
pub fn accept_key(client_key: &str) -> String {
    let mut sha = Sha1::new();
    sha.update(client_key.trim().as_bytes());
    sha.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(sha.finalize())
}

/// Checks an upgrade request; on success returns the 101 response bytes.
///
/// 400 for a malformed upgrade (not GET, not HTTP/1.1, missing `Connection:
/// upgrade` or key), 426 with `Sec-WebSocket-Version: 13` for another version.
pub fn accept(req: &Request) -> Result<Vec<u8>, HttpError> {
    if req.method != "GET" {
        return Err(HttpError::BadRequest("WebSocket upgrade must use GET"));
    }
    if req.minor_version < 1 {
        return Err(HttpError::BadRequest("WebSocket upgrade needs HTTP/1.1"));
    }
    if !req.header_has_token("Connection", "upgrade") {
        return Err(HttpError::BadRequest("WebSocket upgrade without Connection: Upgrade"));
    }
    match req.header("Sec-WebSocket-Version").map(str::trim) {
        Some("13") => {}
        Some(_) => return Err(HttpError::UpgradeRequired),
        None => return Err(HttpError::BadRequest("missing Sec-WebSocket-Version")),
    }
    let key = req.header("Sec-WebSocket-Key").map(str::trim).unwrap_or("");
    let decoded_len = base64::engine::general_purpose::STANDARD.decode(key).map(|k| k.len()).unwrap_or(0);
    if decoded_len != 16 {
        return Err(HttpError::BadRequest("Sec-WebSocket-Key must be 16 bytes in base64"));
    }
    Ok(format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
        accept_key(key)
    )
    .into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::{parse_request, ParseLimits};

    fn request(raw: &str) -> Request {
        parse_request(raw.as_bytes(), ParseLimits { max_head: 4096, max_body: 0 }).unwrap().unwrap().0
    }

    const GOOD: &str = "GET /app/k HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n\
        Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n";

    #[test]
    fn rfc_example_key() {
        assert_eq!(accept_key("dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn accepts_a_good_upgrade() {
        let out = String::from_utf8(accept(&request(GOOD)).unwrap()).unwrap();
        assert!(out.starts_with("HTTP/1.1 101 "));
        assert!(out.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
    }

    #[test]
    fn refuses_bad_upgrades() {
        let cases = [
            (GOOD.replace("GET", "POST"), 400),
            (GOOD.replace("HTTP/1.1", "HTTP/1.0"), 400),
            (GOOD.replace("keep-alive, Upgrade", "keep-alive"), 400),
            (GOOD.replace("Version: 13", "Version: 8"), 426),
            (GOOD.replace("Sec-WebSocket-Version: 13\r\n", ""), 400),
            (GOOD.replace("dGhlIHNhbXBsZSBub25jZQ==", "short"), 400),
        ];
        for (raw, status) in cases {
            assert_eq!(accept(&request(&raw)).unwrap_err().status(), status, "{raw}");
        }
    }
}
