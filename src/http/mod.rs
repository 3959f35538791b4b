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
    /// The process-wide budget for unfinished input is spent.
    InputBudget,
    /// An unfinished request stopped arriving for the stall timeout.
    Stalled,
    /// The service refused this request (a WebSocket upgrade it does not
    /// authorise: 401, 403, 503), with the reason.
    Refused(u16, &'static str),
}

impl HttpError {
    /// The status code sent for this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::BadRequest(_) => 400,
            HttpError::NotFound => 404,
            HttpError::MethodNotAllowed(_) => 405,
            HttpError::Timeout | HttpError::Stalled => 408,
            HttpError::LengthRequired => 411,
            HttpError::BodyTooLarge => 413,
            HttpError::UpgradeRequired => 426,
            HttpError::HeadTooLarge => 431,
            HttpError::Unavailable | HttpError::InputBudget => 503,
            HttpError::Refused(status, _) => *status,
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
            HttpError::InputBudget => "server busy: too much unfinished input buffered; retry shortly".into(),
            HttpError::Stalled => "request stopped arriving before it was complete".into(),
            HttpError::Refused(_, why) => why.to_string(),
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
        if let HttpError::InputBudget = self {
            r.headers.push(("Retry-After", "1".into()));
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

pub use crate::support::percent::{percent_decode, query_pairs};

/// How far the parser got in the request at the front of a connection's
/// input, so bytes that arrive in pieces are scanned once, not again from
/// the start at every read. Reset it (`Default`) when a request is consumed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadScan {
    /// Bytes of the head already checked (no end of head, no bare LF in them).
    scanned: u32,
    /// Once the head is complete and valid: the request's total length
    /// (head plus body), so a body arriving slowly is not parsed again.
    total: u32,
    /// The complete head asked for `100 Continue`.
    expect_continue: bool,
}

impl HeadScan {
    /// Whether the head is complete and asks for `100 Continue` before its body.
    pub fn wants_continue(&self) -> bool {
        self.expect_continue
    }

    /// Bytes of the request at the front of the input that are known so far
    /// to belong to it: the declared total once the head is parsed.
    pub fn declared_total(&self) -> Option<usize> {
        (self.total > 0).then_some(self.total as usize)
    }
}

/// Finds the end of the head (`\r\n\r\n`) in `buf`, starting at `from`;
/// refuses a line feed not preceded by a carriage return (bare LF: request
/// smuggling through front ends that split lines differently). Returns the
/// head length, or `Ok(None)` with `*from` advanced past what was checked.
fn find_head_end(buf: &[u8], from: &mut usize) -> Result<Option<usize>, HttpError> {
    // The terminator test looks backwards from each LF, so resuming exactly
    // where the last call stopped finds a terminator split across reads.
    let mut i = *from;
    while let Some(off) = buf[i..].iter().position(|&b| b == b'\n') {
        let lf = i + off;
        if lf == 0 || buf[lf - 1] != b'\r' {
            return Err(HttpError::BadRequest("bare LF line ending; use CRLF"));
        }
        if lf >= 3 && &buf[lf - 3..=lf] == b"\r\n\r\n" {
            return Ok(Some(lf + 1));
        }
        i = lf + 1;
    }
    *from = buf.len();
    Ok(None)
}

/// Parses one request from the front of `buf`, statelessly (tests, fuzzing).
///
/// `Ok(None)`: incomplete, call again with more bytes. `Ok(Some((req, n)))`:
/// a whole request (head and body) occupying the first `n` bytes.
pub fn parse_request(buf: &[u8], limits: ParseLimits) -> Result<Option<(Request, usize)>, HttpError> {
    parse_request_resumable(buf, limits, &mut HeadScan::default())
}

/// [`parse_request`] that remembers in `scan` how far it got, so each byte of
/// a head or body that arrives in pieces is examined once (no quadratic
/// rescans). `buf` must start with the same request on every call; reset
/// `scan` after a request is returned.
pub fn parse_request_resumable(
    buf: &[u8],
    limits: ParseLimits,
    scan: &mut HeadScan,
) -> Result<Option<(Request, usize)>, HttpError> {
    if scan.total > 0 && buf.len() < scan.total as usize {
        return Ok(None);
    }
    if scan.total == 0 {
        let mut from = scan.scanned as usize;
        let found = find_head_end(buf, &mut from)?;
        scan.scanned = from.min(u32::MAX as usize) as u32;
        match found {
            None if buf.len() > limits.max_head => return Err(HttpError::HeadTooLarge),
            None => return Ok(None),
            Some(end) if end > limits.max_head => return Err(HttpError::HeadTooLarge),
            Some(_) => {}
        }
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let head_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        // The terminator was found, so httparse sees it too; be safe anyway.
        Ok(httparse::Status::Partial) => return Err(HttpError::BadRequest("malformed request head")),
        Err(httparse::Error::TooManyHeaders) => return Err(HttpError::HeadTooLarge),
        Err(e) => return Err(HttpError::BadRequest(parse_error_text(e))),
    };
    if head_len > limits.max_head {
        return Err(HttpError::HeadTooLarge);
    }
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut expect_continue = false;
    let mut owned_headers = Vec::with_capacity(parsed.headers.len());
    for h in parsed.headers.iter() {
        let value = String::from_utf8_lossy(h.value).into_owned();
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = true;
        }
        if h.name.eq_ignore_ascii_case("expect") && h.value.eq_ignore_ascii_case(b"100-continue") {
            expect_continue = true;
        }
        if h.name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                return Err(HttpError::BadRequest("duplicate Content-Length headers"));
            }
            content_length = Some(parse_content_length(value.trim())?);
        }
        owned_headers.push((h.name.to_string(), value));
    }
    if chunked && content_length.is_some() {
        return Err(HttpError::BadRequest("both Transfer-Encoding and Content-Length"));
    }
    if chunked {
        return Err(HttpError::LengthRequired);
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > limits.max_body {
        return Err(HttpError::BodyTooLarge);
    }
    let total = head_len + body_len;
    if buf.len() < total {
        scan.total = total.min(u32::MAX as usize) as u32;
        scan.expect_continue = expect_continue;
        return Ok(None);
    }
    let request = Request {
        method: parsed.method.unwrap_or_default().to_string(),
        target: parsed.path.unwrap_or_default().to_string(),
        minor_version: parsed.version.unwrap_or(1),
        headers: owned_headers,
        body: buf[head_len..total].to_vec(),
    };
    *scan = HeadScan::default();
    Ok(Some((request, total)))
}

/// A Content-Length value: one to nineteen ASCII digits, nothing else (no
/// sign, no list, no spaces inside); RFC 9110 §8.6.
fn parse_content_length(value: &str) -> Result<usize, HttpError> {
    if value.is_empty() || value.len() > 19 || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HttpError::BadRequest("invalid Content-Length"));
    }
    value.parse().map_err(|_| HttpError::BadRequest("invalid Content-Length"))
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
    fn strict_framing_is_refused_with_400() {
        let cases: &[(&[u8], &str)] = &[
            (b"POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\nhello", "signed"),
            (b"POST / HTTP/1.1\r\nContent-Length: -0\r\n\r\n", "negative"),
            (b"POST / HTTP/1.1\r\nContent-Length: 0x5\r\n\r\nhello", "hex"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5, 5\r\n\r\nhello", "list"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5 5\r\n\r\nhello", "inner space"),
            (b"POST / HTTP/1.1\r\nContent-Length:\r\n\r\n", "empty"),
            (b"POST / HTTP/1.1\r\nContent-Length: 99999999999999999999999\r\n\r\n", "overflow"),
            (b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello", "duplicate"),
            (b"POST / HTTP/1.1\r\ncontent-length: 5\r\nContent-Length: 6\r\n\r\nhello!", "conflicting"),
            (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\nhello", "TE and CL"),
            (b"GET / HTTP/1.1\nHost: x\r\n\r\n", "bare LF after the request line"),
            (b"GET / HTTP/1.1\r\nHost: x\n\r\n", "bare LF after a header"),
            (b"GET / HTTP/1.1\n\n", "bare LF terminator"),
        ];
        for (raw, what) in cases {
            match parse(raw) {
                Err(e) => assert_eq!(e.status(), 400, "{what}: {e:?}"),
                other => panic!("{what}: accepted as {other:?}"),
            }
        }
        // A bare LF is refused as soon as it arrives, before the head is complete.
        assert_eq!(parse(b"GET / HTTP/1.1\nHo").unwrap_err().status(), 400);
        // Surrounding whitespace is not part of the value (RFC 9110 §5.5).
        let (req, _) = parse(b"POST / HTTP/1.1\r\nContent-Length:  2 \r\n\r\nhi").unwrap().unwrap();
        assert_eq!(req.body, b"hi");
    }

    #[test]
    fn resumable_parse_scans_each_byte_once() {
        let raw = b"POST /e HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 4\r\n\r\nbody";
        let head_len = raw.len() - 4;
        let mut scan = HeadScan::default();
        for end in 1..head_len {
            assert_eq!(parse_request_resumable(&raw[..end], LIMITS, &mut scan).unwrap(), None);
            // Everything received so far has been checked, and only once.
            assert_eq!(scan.scanned as usize, end, "after {end} bytes");
            assert!(!scan.wants_continue());
        }
        assert_eq!(parse_request_resumable(&raw[..head_len], LIMITS, &mut scan).unwrap(), None);
        assert_eq!(scan.declared_total(), Some(raw.len()));
        assert!(scan.wants_continue(), "the complete head asks for 100 Continue");
        assert_eq!(parse_request_resumable(&raw[..head_len + 2], LIMITS, &mut scan).unwrap(), None);
        let (req, n) = parse_request_resumable(raw, LIMITS, &mut scan).unwrap().unwrap();
        assert_eq!((req.body.as_slice(), n), (&b"body"[..], raw.len()));
        assert_eq!(scan, HeadScan::default(), "reset for the next request");
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
        let mut resumed = Vec::new();
        let mut scan = HeadScan::default();
        let mut buf2 = Vec::new();
        for chunk in chunks {
            buf.extend_from_slice(chunk);
            while let Some((req, n)) = parse(&buf).unwrap() {
                out.push(req);
                buf.drain(..n);
            }
            // The resumable parser, fed the same pieces, agrees.
            buf2.extend_from_slice(chunk);
            while let Some((req, n)) = parse_request_resumable(&buf2, LIMITS, &mut scan).unwrap() {
                resumed.push(req);
                buf2.drain(..n);
            }
        }
        assert!(buf.is_empty() && buf2.is_empty());
        assert_eq!(out, resumed);
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
