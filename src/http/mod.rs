//! HTTP/1.1 request parsing (server side) over httparse. Pure: bytes in,
//! requests out. Partial input is `Ok(None)`, never an error; the caller keeps
//! the bytes and calls again when more arrive. Knows nothing of sockets.

mod response;

pub use response::{reason_phrase, Response};

/// Headers beyond this count are answered with 431, like an oversized head.
const MAX_HEADERS: usize = 64;

/// Why a request could not be served; each maps to one status in [`HttpError::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpError {
    /// Malformed request line, header or Content-Length.
    BadRequest(&'static str),
    /// A request body framed as chunked: unsupported, send Content-Length.
    LengthRequired,
    /// Body larger than the configured limit.
    BodyTooLarge,
    /// Request head (or header count) larger than the configured limit.
    HeadTooLarge,
    /// The route exists, the method does not; carries the allowed methods.
    MethodNotAllowed(&'static str),
    /// No route for this path.
    NotFound,
    /// A WebSocket upgrade with an unsupported `Sec-WebSocket-Version`.
    UpgradeRequired,
    /// The head was not complete within the handshake timeout.
    Timeout,
    /// The process is at its connection limit.
    Unavailable,
}

impl HttpError {
    /// The status code sent for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed(_) => 405,
            HttpError::Timeout => 408,
            HttpError::LengthRequired => 411,
            HttpError::BodyTooLarge => 413,
            HttpError::UpgradeRequired => 426,
            HttpError::HeadTooLarge => 431,
            HttpError::Unavailable => 503,
        }
    }

    /// A sentence for the JSON error body.
    pub fn message(&self) -> String {
        match self {
            HttpError::BadRequest(why) => format!("bad request: {why}"),
            HttpError::LengthRequired => "chunked request bodies are not supported; send Content-Length".into(),
            HttpError::BodyTooLarge => "request body too large".into(),
            HttpError::HeadTooLarge => "request head too large".into(),
            HttpError::MethodNotAllowed(allow) => format!("method not allowed (allowed: {allow})"),
            HttpError::NotFound => "not found".into(),
            HttpError::UpgradeRequired => "unsupported WebSocket version; use 13".into(),
            HttpError::Timeout => "request head not received in time".into(),
            HttpError::Unavailable => "server at its connection limit".into(),
        }
    }

    /// The response that reports this error. It keeps the connection; the
    /// reactor closes after errors in the request's framing.
    pub fn response(&self) -> Response {
        let mut r = Response::error(self.status(), &self.message());
        if let HttpError::MethodNotAllowed(allow) = self {
            r.headers.push(("Allow", allow.to_string()));
        }
        if let HttpError::UpgradeRequired = self {
            r.headers.push(("Sec-WebSocket-Version", "13".into()));
        }
        r
    }
}

/// Limits the parser enforces; copied from [`crate::config::Limits`].
#[derive(Clone, Copy, Debug)]
pub struct ParseLimits {
    /// Largest request line plus headers.
    pub max_head: usize,
    /// Largest Content-Length accepted.
    pub max_body: usize,
}

/// One parsed request, owned so it can outlive the read buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, ... as sent.
    pub method: String,
    /// The request target as sent, including any query string.
    pub target: String,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    /// Header names as sent; look them up with [`Request::header`].
    pub headers: Vec<(String, String)>,
    /// The Content-Length body (empty when there is none).
    pub body: Vec<u8>,
}

impl Request {
    /// The first header with this name (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    /// Whether a header's comma-separated list holds this token (case-insensitive).
    pub fn header_has_token(&self, name: &str, token: &str) -> bool {
        self.headers
            .iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .flat_map(|(_, v)| v.split(','))
            .any(|t| t.trim().eq_ignore_ascii_case(token))
    }

    /// The path without the query string.
    pub fn path(&self) -> &str {
        self.target.split_once('?').map_or(self.target.as_str(), |(p, _)| p)
    }

    /// The raw query string (without `?`), empty when absent.
    pub fn query(&self) -> &str {
        self.target.split_once('?').map_or("", |(_, q)| q)
    }

    /// A query parameter, percent-decoded.
    pub fn query_param(&self, name: &str) -> Option<String> {
        query_pairs(self.query()).find(|(k, _)| k == name).map(|(_, v)| v)
    }

    /// Whether the connection stays open after the response (HTTP/1.1 default).
    pub fn keep_alive(&self) -> bool {
        if self.minor_version == 0 {
            self.header_has_token("Connection", "keep-alive")
        } else {
            !self.header_has_token("Connection", "close")
        }
    }

    /// Whether this asks for a WebSocket upgrade (the handshake validates the rest).
    pub fn is_websocket_upgrade(&self) -> bool {
        self.header_has_token("Upgrade", "websocket")
    }
}

/// Splits `a=1&b=x%20y` into decoded pairs, in order.
pub fn query_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter(|p| !p.is_empty()).map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (percent_decode(k), percent_decode(v))
    })
}

/// Decodes `%XX` escapes and `+` (form encoding); invalid escapes stay as they are.
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 3;
                    }
                    None => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses one request from the front of `buf`.
///
/// `Ok(None)`: incomplete, call again with more bytes. `Ok(Some((req, n)))`:
/// a whole request (head and body) occupying the first `n` bytes.
pub fn parse_request(buf: &[u8], limits: ParseLimits) -> Result<Option<(Request, usize)>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > limits.max_head { Err(HttpError::HeadTooLarge) } else { Ok(None) };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::BadRequest(parse_error_text(e))),
    };
    if head_len > limits.max_head {
        return Err(HttpError::HeadTooLarge);
    }
    let mut content_length: Option<usize> = None;
    let mut owned_headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(HttpError::LengthRequired);
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            let n: usize = value.trim().parse().map_err(|_| HttpError::BadRequest("invalid Content-Length"))?;
            if content_length.is_some_and(|m| m != n) {
                return Err(HttpError::BadRequest("conflicting Content-Length headers"));
            }
            content_length = Some(n);
        }
        owned_headers.push((h.name.to_string(), value));
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body {
        return Err(HttpError::BodyTooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        return Ok(None);
    }
    let request = Request {
        method: parsed.method.unwrap_or_default().to_string(),
        target: parsed.path.unwrap_or_default().to_string(),
        minor_version: parsed.version.unwrap_or(1),
        headers: owned_headers,
        body: buf[head_len..total].to_vec(),
    };
    Ok(Some((request, total)))
}

/// Whether `buf` holds a complete head that asks for `100 Continue` before
/// its body (curl does this for bodies over 1 KiB).
pub fn wants_continue(buf: &[u8]) -> bool {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    matches!(parsed.parse(buf), Ok(httparse::Status::Complete(_)))
        && parsed
            .headers
            .iter()
            .any(|h| h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue"))
}

fn parse_error_text(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token in request line",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: ParseLimits = ParseLimits { max_head: 1024, max_body: 64 };

    fn parse(bytes: &[u8]) -> Result<Option<(Request, usize)>, HttpError> {
        parse_request(bytes, LIMITS)
    }

    #[test]
    fn simple_get() {
        let raw = b"GET /a/b?x=1&y=%41+B HTTP/1.1\r\nHost: h\r\n\r\n";
        let (req, n) = parse(raw).unwrap().unwrap();
        assert_eq!(n, raw.len());
        assert_eq!(req.method, "GET");
        assert_eq!(req.path(), "/a/b");
        assert_eq!(req.query_param("y").as_deref(), Some("A B"));
        assert_eq!(req.header("host"), Some("h"));
        assert!(req.keep_alive());
    }

    #[test]
    fn body_by_content_length() {
        let raw = b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nhelloGET";
        let (req, n) = parse(raw).unwrap().unwrap();
        assert_eq!(req.body, b"hello");
        assert_eq!(&raw[n..], b"GET");
        assert_eq!(parse(&raw[..raw.len() - 5]).unwrap(), None, "body incomplete is partial");
    }

    #[test]
    fn errors_map_to_statuses() {
        let cases: &[(&[u8], u16)] = &[
            (b"GET / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", 411),
            (b"POST / HTTP/1.1\r\nContent-Length: 65\r\n\r\n", 413),
            (b"POST / HTTP/1.1\r\nContent-Length: x\r\n\r\n", 400),
            (b"POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
            (b"\x00\x01garbage\r\n\r\n", 400),
            (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        ];
        for (raw, status) in cases {
            assert_eq!(parse(raw).unwrap_err().status(), *status, "{:?}", String::from_utf8_lossy(raw));
        }
        let huge = [b"GET / HTTP/1.1\r\nX: ".as_slice(), &[b'a'; 2000]].concat();
        assert_eq!(parse(&huge).unwrap_err().status(), 431, "partial head over the limit");
        let many: String = (0..70).map(|i| format!("H{i}: v\r\n")).collect();
        let raw = format!("GET / HTTP/1.1\r\n{many}\r\n");
        assert_eq!(
            parse_request(raw.as_bytes(), ParseLimits { max_head: 4096, max_body: 0 }).unwrap_err().status(),
            431
        );
    }

    #[test]
    fn expect_continue_is_seen_once_the_head_is_complete() {
        let head = b"POST / HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert!(wants_continue(head));
        assert!(!wants_continue(&head[..20]));
        assert!(!wants_continue(b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"));
    }

    #[test]
    fn connection_semantics() {
        let (r, _) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive());
        let (r, _) = parse(b"GET / HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n").unwrap().unwrap();
        assert!(!r.keep_alive());
        let (r, _) = parse(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: WebSocket\r\n\r\n").unwrap().unwrap();
        assert!(r.is_websocket_upgrade());
    }

    #[test]
    fn percent_decoding_is_lenient() {
        assert_eq!(percent_decode("a%2Cb%zz%4"), "a,b%zz%4");
        assert_eq!(percent_decode("%E2%82%AC"), "€");
    }

    /// Every split of a valid pipelined stream parses to the same requests.
    fn parse_stream(chunks: &[&[u8]]) -> Vec<Request> {
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some((req, n)) = parse(&buf).unwrap() {
                out.push(req);
                buf.drain(..n);
            }
        }
        assert!(buf.is_empty());
        out
    }

    const PIPELINE: &[u8] = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\nPOST /e?a=1 HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.0\r\n\r\n";

    #[test]
    fn every_two_way_split_parses_the_same() {
        let whole = parse_stream(&[PIPELINE]);
        assert_eq!(whole.len(), 3);
        for i in 0..=PIPELINE.len() {
            assert_eq!(parse_stream(&[&PIPELINE[..i], &PIPELINE[i..]]), whole, "split at {i}");
        }
        let bytewise: Vec<&[u8]> = PIPELINE.chunks(1).collect();
        assert_eq!(parse_stream(&bytewise), whole);
    }

    proptest! {
        #[test]
        fn arbitrary_splits_parse_the_same(cuts in proptest::collection::vec(0..PIPELINE.len(), 0..8)) {
            let mut cuts = cuts;
            cuts.sort();
            let mut chunks = Vec::new();
            let mut last = 0;
            for c in cuts { chunks.push(&PIPELINE[last..c]); last = c; }
            chunks.push(&PIPELINE[last..]);
            prop_assert_eq!(parse_stream(&chunks), parse_stream(&[PIPELINE]));
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let _ = parse(&bytes);
        }
    }
}
