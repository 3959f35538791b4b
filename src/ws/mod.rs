//! WebSocket (RFC 6455), server role: the frame codec, message reassembly
//! with UTF-8 validation across fragments, close-code rules and the upgrade
//! handshake. Pure: no sockets here; the reactor feeds bytes and acts on the
//! returned messages and errors.

pub mod frame;
pub mod handshake;

use std::borrow::Cow;

pub use frame::{Frame, OpCode};

/// Close status codes this server sends (RFC 6455 §7.4.1).
pub mod close_code {
    /// Normal closure.
    pub const NORMAL: u16 = 1000;
    /// The server is going away (shutdown).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Text that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (used for slow consumers and overload).
    pub const POLICY: u16 = 1008;
    /// Frame or message above the configured limit.
    pub const TOO_BIG: u16 = 1009;
    /// Try again later (IANA registry): the process-wide input budget is spent.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Everything that ends a WebSocket because of what the peer sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WsError {
    /// A rule of RFC 6455 was broken; the text says which.
    Protocol(&'static str),
    /// A text message or close reason is not valid UTF-8.
    InvalidUtf8,
    /// A frame or message is larger than the configured limit.
    MessageTooBig,
}

impl WsError {
    /// The close code that reports this error to the peer.
    pub fn close_code(self) -> u16 {
        match self {
            WsError::Protocol(_) => close_code::PROTOCOL_ERROR,
            WsError::InvalidUtf8 => close_code::INVALID_PAYLOAD,
            WsError::MessageTooBig => close_code::TOO_BIG,
        }
    }

    /// A short reason for the close frame and the debug log.
    pub fn reason(self) -> &'static str {
        match self {
            WsError::Protocol(why) => why,
            WsError::InvalidUtf8 => "invalid UTF-8",
            WsError::MessageTooBig => "message too big",
        }
    }
}

/// A complete message, borrowed from the frame when it came whole and owned
/// when it was reassembled from fragments.
#[derive(Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// A UTF-8 text message (already validated).
    Text(Cow<'a, str>),
    /// A binary message.
    Binary(Cow<'a, [u8]>),
    /// A ping; the caller answers with a pong carrying the same bytes.
    Ping(&'a [u8]),
    /// A pong (proof of life).
    Pong(&'a [u8]),
    /// A close request with its status code and reason, if any.
    Close(Option<(u16, &'a str)>),
}

/// A message being reassembled from fragments. Boxed in [`MessageReader`]
/// so idle connections pay one pointer for it.
#[derive(Debug)]
struct Partial {
    text: bool,
    data: Vec<u8>,
    /// Prefix of `data` already known to be valid UTF-8 (text only).
    valid_up_to: usize,
}

/// Turns frames into messages: fragmentation, interleaved control frames,
/// size limit across fragments and UTF-8 validation that fails as soon as an
/// invalid sequence arrives, not only at the end.
#[derive(Debug, Default)]
pub struct MessageReader {
    partial: Option<Box<Partial>>,
}

impl MessageReader {
    /// Feeds one frame; returns a message when one is complete.
    pub fn push<'a>(&mut self, frame: Frame<'a>, max_message: usize) -> Result<Option<Message<'a>>, WsError> {
        match frame.opcode {
            OpCode::Ping => Ok(Some(Message::Ping(frame.payload))),
            OpCode::Pong => Ok(Some(Message::Pong(frame.payload))),
            OpCode::Close => parse_close(frame.payload).map(|c| Some(Message::Close(c))),
            OpCode::Text | OpCode::Binary => {
                if self.partial.is_some() {
                    return Err(WsError::Protocol("new message before the previous one finished"));
                }
                let text = frame.opcode == OpCode::Text;
                if frame.fin {
                    return whole_message(text, frame.payload).map(Some);
                }
                let mut partial = Box::new(Partial { text, data: Vec::new(), valid_up_to: 0 });
                partial.append(frame.payload, max_message)?;
                self.partial = Some(partial);
                Ok(None)
            }
            OpCode::Continuation => {
                let partial = self.partial.as_mut().ok_or(WsError::Protocol("continuation without a message"))?;
                partial.append(frame.payload, max_message)?;
                if !frame.fin {
                    return Ok(None);
                }
                let done = self.partial.take().expect("checked above");
                if done.text && done.valid_up_to != done.data.len() {
                    return Err(WsError::InvalidUtf8);
                }
                Ok(Some(if done.text {
                    Message::Text(Cow::Owned(String::from_utf8(done.data).map_err(|_| WsError::InvalidUtf8)?))
                } else {
                    Message::Binary(Cow::Owned(done.data))
                }))
            }
        }
    }

    /// Whether a fragmented message is in progress (it holds memory).
    pub fn is_mid_message(&self) -> bool {
        self.partial.is_some()
    }

    /// Memory held by the message in progress: (allocated, received) bytes.
    pub fn held(&self) -> (usize, usize) {
        self.partial.as_ref().map_or((0, 0), |p| (p.data.capacity(), p.data.len()))
    }
}

impl Partial {
    fn append(&mut self, bytes: &[u8], max_message: usize) -> Result<(), WsError> {
        if self.data.len() + bytes.len() > max_message {
            return Err(WsError::MessageTooBig);
        }
        self.data.extend_from_slice(bytes);
        if self.text {
            match std::str::from_utf8(&self.data[self.valid_up_to..]) {
                Ok(_) => self.valid_up_to = self.data.len(),
                // An incomplete sequence at the end may be finished by the next fragment.
                Err(e) if e.error_len().is_none() => self.valid_up_to += e.valid_up_to(),
                Err(_) => return Err(WsError::InvalidUtf8),
            }
        }
        Ok(())
    }
}

fn whole_message(text: bool, payload: &[u8]) -> Result<Message<'_>, WsError> {
    if text {
        std::str::from_utf8(payload).map(|s| Message::Text(Cow::Borrowed(s))).map_err(|_| WsError::InvalidUtf8)
    } else {
        Ok(Message::Binary(Cow::Borrowed(payload)))
    }
}

/// Parses a close payload: empty, or a valid status code plus a UTF-8 reason (§5.5.1).
fn parse_close(payload: &[u8]) -> Result<Option<(u16, &str)>, WsError> {
    match payload.len() {
        0 => Ok(None),
        1 => Err(WsError::Protocol("close payload of one byte")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            if !is_valid_close_code(code) {
                return Err(WsError::Protocol("invalid close code"));
            }
            let reason = std::str::from_utf8(&payload[2..]).map_err(|_| WsError::InvalidUtf8)?;
            Ok(Some((code, reason)))
        }
    }
}

/// Codes a peer may send (§7.4): 1000–1003, 1007–1011 and 3000–4999;
/// 1004–1006 and 1015 are reserved and never sent on the wire.
pub fn is_valid_close_code(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1011 | 3000..=4999)
}

#[cfg(test)]
mod tests {
    use super::frame::tests::client_frame;
    use super::*;

    /// Decodes a byte stream and feeds every frame to a reader.
    fn messages(mut bytes: Vec<u8>, max: usize) -> Result<Vec<String>, WsError> {
        let mut reader = MessageReader::default();
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((f, n)) = frame::decode(&mut bytes[pos..], max)? {
            pos += n;
            if let Some(m) = reader.push(f, max)? {
                out.push(format!("{m:?}"));
            }
        }
        Ok(out)
    }

    const M: [u8; 4] = [0x11, 0x22, 0x33, 0x44];

    #[test]
    fn reassembles_fragments_with_interleaved_ping() {
        let mut s = client_frame(0x01, b"Hel", M);
        s.extend(client_frame(0x89, b"p", M));
        s.extend(client_frame(0x00, b"lo ", M));
        s.extend(client_frame(0x80, "wörld".as_bytes(), M));
        assert_eq!(messages(s, 100).unwrap(), vec!["Ping([112])".to_string(), "Text(\"Hello wörld\")".to_string()]);
    }

    #[test]
    fn utf8_split_across_fragments_is_fine() {
        let euro = "€".as_bytes();
        let mut s = client_frame(0x01, &euro[..1], M);
        s.extend(client_frame(0x00, &euro[1..2], M));
        s.extend(client_frame(0x80, &euro[2..], M));
        assert_eq!(messages(s, 100).unwrap(), vec!["Text(\"€\")".to_string()]);
    }

    #[test]
    fn invalid_utf8_fails_fast_in_the_first_bad_fragment() {
        let mut s = client_frame(0x01, b"ok", M);
        s.extend(client_frame(0x00, &[0xC0, 0xAF], M)); // overlong encoding
        assert_eq!(messages(s, 100).unwrap_err(), WsError::InvalidUtf8);
        assert_eq!(messages(client_frame(0x81, &[0xff], M), 100).unwrap_err(), WsError::InvalidUtf8);
        // Unfinished sequence at the end of the final fragment.
        let mut s = client_frame(0x01, b"a", M);
        s.extend(client_frame(0x80, &"€".as_bytes()[..2], M));
        assert_eq!(messages(s, 100).unwrap_err(), WsError::InvalidUtf8);
    }

    #[test]
    fn fragment_ordering_rules() {
        assert!(matches!(messages(client_frame(0x80, b"x", M), 100), Err(WsError::Protocol(_))));
        let mut s = client_frame(0x01, b"a", M);
        s.extend(client_frame(0x81, b"b", M));
        assert!(matches!(messages(s, 100), Err(WsError::Protocol(_))));
    }

    #[test]
    fn message_limit_spans_fragments() {
        let mut s = client_frame(0x02, &[0; 60], M);
        s.extend(client_frame(0x80, &[0; 60], M));
        assert_eq!(messages(s, 100).unwrap_err(), WsError::MessageTooBig);
    }

    #[test]
    fn close_payload_rules() {
        assert_eq!(messages(client_frame(0x88, b"", M), 100).unwrap(), vec!["Close(None)".to_string()]);
        assert_eq!(
            messages(client_frame(0x88, &[0x03, 0xe8, b'b', b'y', b'e'], M), 100).unwrap(),
            vec!["Close(Some((1000, \"bye\")))".to_string()]
        );
        assert!(matches!(messages(client_frame(0x88, &[0x03], M), 100), Err(WsError::Protocol(_))));
        for bad in [0u16, 999, 1004, 1005, 1006, 1012, 1015, 2999, 5000] {
            let p = bad.to_be_bytes();
            assert!(matches!(messages(client_frame(0x88, &p, M), 100), Err(WsError::Protocol(_))), "{bad}");
        }
        assert_eq!(messages(client_frame(0x88, &[0x03, 0xe8, 0xff], M), 100).unwrap_err(), WsError::InvalidUtf8);
    }

    #[test]
    fn error_codes() {
        assert_eq!(WsError::Protocol("x").close_code(), 1002);
        assert_eq!(WsError::InvalidUtf8.close_code(), 1007);
        assert_eq!(WsError::MessageTooBig.close_code(), 1009);
    }
}
