//! RFC 6455 frame codec, server role. Pure: `decode` turns the front of a
//! byte buffer into one frame (unmasking in place), `encode_*` produce the
//! bytes of an unmasked server frame. Incomplete input is `Ok(None)`.

use super::WsError;

/// The frame types of RFC 6455 §5.2 (reserved opcodes are rejected by `decode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OpCode {
    /// 0x0: the next fragment of a message.
    Continuation,
    /// 0x1: first frame of a UTF-8 text message.
    Text,
    /// 0x2: first frame of a binary message.
    Binary,
    /// 0x8: closing handshake.
    Close,
    /// 0x9: keepalive request.
    Ping,
    /// 0xA: keepalive answer.
    Pong,
}

impl OpCode {
    fn from_bits(bits: u8) -> Option<OpCode> {
        Some(match bits {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xA => OpCode::Pong,
            _ => return None,
        })
    }

    fn bits(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xA,
        }
    }

    /// Control frames (close, ping, pong) may interleave with fragments.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// One decoded frame; `payload` is already unmasked and borrows the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Last fragment of its message.
    pub fin: bool,
    /// Frame type.
    pub opcode: OpCode,
    /// Unmasked application data.
    pub payload: &'a [u8],
}

/// Decodes one client frame from the front of `buf`.
///
/// Returns the frame and the number of bytes it used, or `None` when more
/// bytes are needed (nothing is consumed). Frames whose payload exceeds
/// `max_payload` are refused from the header alone, before buffering them.
pub fn decode(buf: &mut [u8], max_payload: usize) -> Result<Option<(Frame<'_>, usize)>, WsError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (b0, b1) = (buf[0], buf[1]);
    let fin = b0 & 0x80 != 0;
    if b0 & 0x70 != 0 {
        // "MUST be 0 unless an extension is negotiated" (RFC 6455 §5.2); we negotiate none.
        return Err(WsError::Protocol("reserved bits set"));
    }
    let opcode = OpCode::from_bits(b0 & 0x0F).ok_or(WsError::Protocol("reserved opcode"))?;
    if b1 & 0x80 == 0 {
        // "The server MUST close the connection upon receiving a frame that is not masked" (§5.1).
        return Err(WsError::Protocol("client frame not masked"));
    }
    let (len, mut pos) = match b1 & 0x7F {
        126 => {
            if buf.len() < 4 {
                return Ok(None);
            }
            (u16::from_be_bytes([buf[2], buf[3]]) as u64, 4)
        }
        127 => {
            if buf.len() < 10 {
                return Ok(None);
            }
            let len = u64::from_be_bytes(buf[2..10].try_into().expect("8 bytes"));
            if len >> 63 != 0 {
                return Err(WsError::Protocol("payload length with the high bit set"));
            }
            (len, 10)
        }
        n => (n as u64, 2),
    };
    if opcode.is_control() {
        // "All control frames MUST have a payload length of 125 bytes or less
        // and MUST NOT be fragmented" (§5.5).
        if len > 125 {
            return Err(WsError::Protocol("control frame longer than 125 bytes"));
        }
        if !fin {
            return Err(WsError::Protocol("fragmented control frame"));
        }
    }
    if len > max_payload as u64 {
        return Err(WsError::MessageTooBig);
    }
    let len = len as usize;
    if buf.len() < pos + 4 + len {
        return Ok(None);
    }
    let mask: [u8; 4] = buf[pos..pos + 4].try_into().expect("4 bytes");
    pos += 4;
    let payload = &mut buf[pos..pos + len];
    apply_mask(payload, mask);
    Ok(Some((Frame { fin, opcode, payload }, pos + len)))
}

/// XORs `data` with the 4-byte masking key (RFC 6455 §5.3), eight bytes at a time.
pub fn apply_mask(data: &mut [u8], mask: [u8; 4]) {
    let wide = u64::from_ne_bytes([mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3]]);
    let mut chunks = data.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let v = u64::from_ne_bytes((&*chunk).try_into().expect("8 bytes")) ^ wide;
        chunk.copy_from_slice(&v.to_ne_bytes());
    }
    for (i, b) in chunks.into_remainder().iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
}

/// Appends an unmasked server frame (FIN set) carrying `payload`.
pub fn encode(opcode: OpCode, payload: &[u8], out: &mut Vec<u8>) {
    out.reserve(payload.len() + 10);
    out.push(0x80 | opcode.bits());
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= u16::MAX as usize => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// A whole server frame as a new buffer.
pub fn encoded(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 10);
    encode(opcode, payload, &mut out);
    out
}

/// A close frame with a status code and a reason (cut to fit 125 bytes on a char boundary).
pub fn encode_close(code: u16, reason: &str) -> Vec<u8> {
    let mut cut = reason.len().min(123);
    while !reason.is_char_boundary(cut) {
        cut -= 1;
    }
    let mut payload = Vec::with_capacity(2 + cut);
    payload.extend_from_slice(&code.to_be_bytes());
    payload.extend_from_slice(&reason.as_bytes()[..cut]);
    encoded(OpCode::Close, &payload)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a masked client frame, as a browser would send it.
    pub fn client_frame(first_byte: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = vec![first_byte];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn decode_all(mut bytes: Vec<u8>, max: usize) -> Result<Vec<(bool, OpCode, Vec<u8>)>, WsError> {
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some((f, n)) = decode(&mut bytes[pos..], max)? {
            out.push((f.fin, f.opcode, f.payload.to_vec()));
            pos += n;
        }
        assert_eq!(pos, bytes.len(), "trailing bytes");
        Ok(out)
    }

    #[test]
    fn decodes_rfc_examples() {
        // RFC 6455 §5.7: a masked "Hello".
        let bytes = vec![0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d, 0x7f, 0x9f, 0x4d, 0x51, 0x58];
        assert_eq!(decode_all(bytes, 100).unwrap(), vec![(true, OpCode::Text, b"Hello".to_vec())]);
    }

    #[test]
    fn all_length_forms() {
        for len in [0, 1, 125, 126, 127, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let got = decode_all(client_frame(0x82, &payload, [1, 2, 3, 4]), 1 << 20).unwrap();
            assert_eq!(got, vec![(true, OpCode::Binary, payload)], "len {len}");
        }
    }

    #[test]
    fn rejects_protocol_violations() {
        let m = [9, 9, 9, 9];
        let cases: Vec<(Vec<u8>, WsError)> = vec![
            (client_frame(0xC1, b"x", m), WsError::Protocol("reserved bits set")),
            (client_frame(0x83, b"x", m), WsError::Protocol("reserved opcode")),
            (client_frame(0x8B, b"x", m), WsError::Protocol("reserved opcode")),
            (vec![0x81, 0x01, b'x'], WsError::Protocol("client frame not masked")),
            (client_frame(0x89, &[0; 126], m), WsError::Protocol("control frame longer than 125 bytes")),
            (client_frame(0x09, b"", m), WsError::Protocol("fragmented control frame")),
            (client_frame(0x82, &[0; 101], m), WsError::MessageTooBig),
            (vec![0x82, 0xFF, 0x80, 0, 0, 0, 0, 0, 0, 0], WsError::Protocol("payload length with the high bit set")),
        ];
        for (bytes, want) in cases {
            assert_eq!(decode_all(bytes.clone(), 100).unwrap_err(), want, "{bytes:02x?}");
        }
    }

    #[test]
    fn oversized_frame_refused_from_its_header_alone() {
        let mut head = vec![0x82, 0xFF];
        head.extend_from_slice(&(1u64 << 40).to_be_bytes());
        assert_eq!(decode(&mut head, 1 << 16).unwrap_err(), WsError::MessageTooBig);
    }

    #[test]
    fn every_split_decodes_the_same() {
        let mut stream = client_frame(0x01, b"frag", [1, 2, 3, 4]);
        stream.extend(client_frame(0x89, b"ping", [5, 6, 7, 8]));
        stream.extend(client_frame(0x80, &[b'z'; 300], [0, 0xff, 0, 0xff]));
        stream.extend(client_frame(0x88, &[0x03, 0xe8], [1, 1, 1, 1]));
        let whole = decode_all(stream.clone(), 1000).unwrap();
        assert_eq!(whole.len(), 4);
        for cut in 0..=stream.len() {
            // Feed the first part, decode what is complete, then the rest.
            let mut buf = stream[..cut].to_vec();
            let mut got = Vec::new();
            let mut pos = 0;
            while let Some((f, n)) = decode(&mut buf[pos..], 1000).unwrap() {
                got.push((f.fin, f.opcode, f.payload.to_vec()));
                pos += n;
            }
            let mut rest = buf[pos..].to_vec();
            // The unmasked bytes were consumed; untouched leftovers are still masked.
            rest.extend_from_slice(&stream[cut..]);
            got.extend(decode_all(rest, 1000).unwrap());
            assert_eq!(got, whole, "split at {cut}");
        }
    }

    #[test]
    fn mask_matches_naive_for_every_length_and_key() {
        for len in 0..40 {
            for key in [[0u8, 0, 0, 0], [1, 2, 3, 4], [0xff, 0x00, 0xaa, 0x55]] {
                let data: Vec<u8> = (0..len as u8).map(|i| i.wrapping_mul(37)).collect();
                let mut fast = data.clone();
                apply_mask(&mut fast, key);
                let naive: Vec<u8> = data.iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
                assert_eq!(fast, naive);
            }
        }
    }

    #[test]
    fn encodes_server_frames() {
        assert_eq!(encoded(OpCode::Text, b"Hi"), vec![0x81, 0x02, b'H', b'i']);
        assert_eq!(&encoded(OpCode::Binary, &[0; 200])[..4], &[0x82, 126, 0, 200]);
        assert_eq!(&encoded(OpCode::Binary, &[0; 70000])[..10], &[0x82, 127, 0, 0, 0, 0, 0, 1, 0x11, 0x70]);
        assert_eq!(encode_close(1000, ""), vec![0x88, 0x02, 0x03, 0xe8]);
        let long = "é".repeat(100);
        let close = encode_close(4001, &long);
        assert!(close.len() <= 127 && std::str::from_utf8(&close[4..]).is_ok());
    }
}
