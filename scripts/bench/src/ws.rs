//! The client side of WebSocket (RFC 6455), as much as the bench needs: the upgrade request, the
//! check of the `101` answer, parsing of unmasked server frames, and masked client frames.
//!
//! The `Sec-WebSocket-Accept` value is not verified (that would need SHA-1); the status line is.
//! Messages split over several frames are not reassembled: the server's pushes are small.

/// The upgrade request for `host` (e.g. `127.0.0.1:1234`), path `/`.
pub fn handshake_request(host: &str) -> Vec<u8> {
    handshake_request_to(host, "/")
}

/// The opening handshake's request for `path` (`/?since=…` for a recovering client).
pub fn handshake_request_to(host: &str, path: &str) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    .into_bytes()
}

/// What the start of a handshake answer says.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeReply {
    /// Not all of the header has arrived yet.
    Incomplete,
    /// `101 Switching Protocols`; the header occupied this many bytes.
    Switched(usize),
    /// Any other status line.
    Refused(String),
}

/// Looks for the end of the HTTP header in `buf` and checks the status line.
pub fn parse_handshake(buf: &[u8]) -> HandshakeReply {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 8192 {
            return HandshakeReply::Refused("handshake answer longer than 8 KiB".into());
        }
        return HandshakeReply::Incomplete;
    };
    let first = buf.split(|&b| b == b'\r').next().unwrap_or(&[]);
    let line = String::from_utf8_lossy(first);
    let mut parts = line.split_whitespace();
    let _version = parts.next();
    if parts.next() == Some("101") {
        HandshakeReply::Switched(end + 4)
    } else {
        HandshakeReply::Refused(line.into_owned())
    }
}

/// Opcode of a text frame.
pub const OP_TEXT: u8 = 0x1;
/// Opcode of a close frame.
pub const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
pub const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
pub const OP_PONG: u8 = 0xA;

/// Largest server frame payload accepted.
const MAX_PAYLOAD: u64 = 16 << 20;

/// One parsed frame, borrowing its payload from the input.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The opcode (low four bits of the first byte).
    pub opcode: u8,
    /// The payload (server frames are unmasked).
    pub payload: &'a [u8],
}

/// Parses one frame at the start of `buf`: `Ok(None)` when more bytes are needed, else the frame
/// and the number of bytes it took.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(Frame<'_>, usize)>, String> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let opcode = buf[0] & 0x0F;
    if buf[1] & 0x80 != 0 {
        return Err("server sent a masked frame".into());
    }
    let (len, hdr) = match buf[1] & 0x7F {
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
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 10)
        }
        n => (n as u64, 2),
    };
    if len > MAX_PAYLOAD {
        return Err(format!("server frame of {len} bytes"));
    }
    let total = hdr + len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Frame {
            opcode,
            payload: &buf[hdr..total],
        },
        total,
    )))
}

/// Appends a final, masked client frame with `opcode` and `payload` to `out`.
pub fn encode_masked(opcode: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
}

/// Appends an unmasked (server-style) text frame: what the `limit` server writes.
pub fn encode_server_text(payload: &[u8], out: &mut Vec<u8>) {
    out.push(0x80 | OP_TEXT);
    let n = payload.len();
    if n < 126 {
        out.push(n as u8);
    } else if n <= 0xFFFF {
        out.push(126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn handshake_answer() {
        let ok = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi";
        assert_eq!(parse_handshake(ok), HandshakeReply::Switched(ok.len() - 4));
        assert_eq!(
            parse_handshake(b"HTTP/1.1 101 Switching"),
            HandshakeReply::Incomplete
        );
        assert!(matches!(
            parse_handshake(b"HTTP/1.1 400 Bad Request\r\n\r\n"),
            HandshakeReply::Refused(_)
        ));
    }

    #[test]
    fn server_frames_round_trip() {
        for n in [0usize, 1, 100, 125, 126, 1000, 65535, 65536, 70000] {
            let payload: Vec<u8> = (0..n).map(|i| i as u8).collect();
            let mut buf = Vec::new();
            encode_server_text(&payload, &mut buf);
            buf.extend_from_slice(b"\x89\x00");
            let (f, used) = parse_frame(&buf).unwrap().unwrap();
            assert_eq!(f.opcode, OP_TEXT);
            assert_eq!(f.payload, &payload[..]);
            let (p, used2) = parse_frame(&buf[used..]).unwrap().unwrap();
            assert_eq!((p.opcode, used2), (OP_PING, 2));
            for cut in 0..used {
                assert_eq!(parse_frame(&buf[..cut]).unwrap(), None, "cut {cut}");
            }
        }
    }

    #[test]
    fn masked_frame_layout() {
        let mut out = Vec::new();
        encode_masked(OP_TEXT, b"u42", [1, 2, 3, 4], &mut out);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x83);
        assert_eq!(&out[2..6], &[1, 2, 3, 4]);
        let unmasked: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ [1, 2, 3, 4][i & 3])
            .collect();
        assert_eq!(unmasked, b"u42");
        let mut big = Vec::new();
        encode_masked(OP_PONG, &[0u8; 300], [0; 4], &mut big);
        assert_eq!(&big[..4], &[0x8A, 0x80 | 126, 1, 44]);
    }

    #[test]
    fn rejects_masked_and_huge_frames() {
        assert!(parse_frame(b"\x81\x85abcd").is_err());
        assert!(parse_frame(b"\x81\x7f\x00\x00\x00\x00\x10\x00\x00\x00").is_err());
    }
}
