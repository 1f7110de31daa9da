//! The WebSocket protocol: the opening handshake and the client frame parser.
//!
//! The handshake request is parsed with httparse and answered with tungstenite's accept-key
//! derivation; frame headers are parsed with tungstenite's `FrameHeader`. Everything around
//! them is Herald's own so that no connection owns a read or write buffer while idle: bytes are
//! read into the worker's scratch buffer, whole frames are handled in place (unmasked where
//! they lie), and only an incomplete frame's bytes are kept with the connection.
//!
//! Both are strict where RFC 6455 is: the handshake must be an HTTP/1.1 (or later) `GET` with
//! exactly one `Host` and exactly one `Sec-WebSocket-Key` that is the base64 of 16 bytes
//! (section 4.2.1), else it is refused with 400; a frame whose 64-bit length has its most
//! significant bit set is a protocol error (section 5.2), closed with 1002.

use super::http;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use std::io::Cursor;
use thiserror::Error;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};
use tungstenite::protocol::frame::FrameHeader;

/// Why a client's frames end the connection, with the close code the RFC asks for.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum WsError {
    /// RFC 6455 violated (unmasked frame, reserved bits or opcode, bad control frame…): 1002.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// A frame or a message above `max_frame`: 1009.
    #[error("message too big")]
    TooBig,
    /// A text message (or close reason) that is not UTF-8: 1007.
    #[error("invalid UTF-8 in text")]
    BadUtf8,
}

impl WsError {
    /// The close code to send.
    pub fn close_code(&self) -> u16 {
        match self {
            WsError::Protocol(_) => 1002,
            WsError::TooBig => 1009,
            WsError::BadUtf8 => 1007,
        }
    }
}

/// The opening handshake's outcome.
#[derive(Debug, PartialEq, Eq)]
pub enum Handshake {
    /// The request head is not complete yet.
    Partial,
    /// A valid upgrade request.
    Upgrade {
        /// The `101 Switching Protocols` response to send.
        response: Vec<u8>,
        /// Bytes of the request head (frames may follow in the same read).
        consumed: usize,
        /// The request target (path and query), for `?token=`.
        target: String,
        /// The `Origin` header, if any.
        origin: Option<String>,
    },
    /// Not a WebSocket upgrade: send `response` and close.
    Reject {
        /// The response's status code (431 counts as oversize, the rest as rejected).
        status: u16,
        /// A complete HTTP error response.
        response: Vec<u8>,
        /// For the log.
        reason: &'static str,
    },
}

/// A refusal with `status`, a plain-text body, extra header lines, and the reason for the log.
fn refuse(status: u16, body: &str, extra: &str, reason: &'static str) -> Handshake {
    Handshake::Reject {
        status,
        response: http::response(
            status,
            "text/plain; charset=utf-8",
            body.as_bytes(),
            false,
            extra,
        ),
        reason,
    }
}

/// The `101 Switching Protocols` answer to a valid upgrade carrying `key`.
pub fn accept_response(key: &str) -> Vec<u8> {
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
    )
    .into_bytes()
}

/// Parses the client's opening handshake from `buf`. A head larger than `max_header` is
/// refused with 431.
pub fn handshake(buf: &[u8], max_header: usize) -> Handshake {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut req = httparse::Request::new(&mut headers);
    let consumed = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_header {
                return refuse(
                    431,
                    "headers too large\n",
                    "",
                    "handshake headers too large",
                );
            }
            return Handshake::Partial;
        }
        Err(httparse::Error::TooManyHeaders) => {
            return refuse(431, "too many headers\n", "", "too many handshake headers")
        }
        Err(_) => {
            return refuse(
                400,
                "malformed request\n",
                "",
                "malformed handshake request",
            )
        }
    };
    if consumed > max_header {
        return refuse(
            431,
            "headers too large\n",
            "",
            "handshake headers too large",
        );
    }
    // RFC 6455 section 4.2.1: "an HTTP/1.1 or higher GET request"; httparse reads only
    // HTTP/1.0 and HTTP/1.1, so anything but 1.1 here is 1.0.
    if req.version != Some(1) {
        return refuse(
            400,
            "WebSocket upgrade needs HTTP/1.1\n",
            "",
            "handshake is not HTTP/1.1",
        );
    }
    let count = |name: &str| {
        req.headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name))
            .count()
    };
    // RFC 9112 section 3.2: exactly one Host in an HTTP/1.1 request.
    if count("Host") != 1 {
        return refuse(
            400,
            "exactly one Host header is required\n",
            "",
            "handshake without exactly one Host",
        );
    }
    if req.method != Some("GET") {
        return refuse(
            405,
            "WebSocket upgrade needs GET\n",
            "Allow: GET\r\n",
            "handshake method is not GET",
        );
    }
    let header = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .and_then(|h| std::str::from_utf8(h.value).ok())
            .map(str::trim)
    };
    // The opening handshake has no body (RFC 6455 section 4.1): bytes after the head are
    // frames, so a GET that announces a body is refused rather than its body read as frames.
    let body_announced = count("Transfer-Encoding") > 0
        || req
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("Content-Length"))
            .any(|h| h.value.iter().any(|b| !matches!(b, b'0' | b' ' | b'\t')));
    if body_announced {
        return refuse(
            400,
            "a WebSocket handshake has no body\n",
            "",
            "handshake request with a body",
        );
    }
    let has_token = |name: &str, token: &str| {
        header(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if !has_token("Upgrade", "websocket") || !has_token("Connection", "upgrade") {
        return refuse(
            426,
            "this port speaks WebSocket\n",
            "Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n",
            "not a WebSocket upgrade",
        );
    }
    if header("Sec-WebSocket-Version") != Some("13") {
        return refuse(
            426,
            "unsupported WebSocket version\n",
            "Sec-WebSocket-Version: 13\r\n",
            "unsupported WebSocket version",
        );
    }
    let key = match (count("Sec-WebSocket-Key"), header("Sec-WebSocket-Key")) {
        (1, Some(k)) if key_is_valid(k) => k,
        (0, _) => {
            return refuse(
                400,
                "missing Sec-WebSocket-Key\n",
                "",
                "missing Sec-WebSocket-Key",
            )
        }
        (1, _) => {
            return refuse(
                400,
                "Sec-WebSocket-Key must be the base64 of 16 bytes\n",
                "",
                "Sec-WebSocket-Key is not the base64 of 16 bytes",
            )
        }
        _ => {
            return refuse(
                400,
                "more than one Sec-WebSocket-Key\n",
                "",
                "more than one Sec-WebSocket-Key",
            )
        }
    };
    Handshake::Upgrade {
        response: accept_response(key),
        consumed,
        target: req.path.unwrap_or("/").to_string(),
        origin: header("Origin").map(str::to_string),
    }
}

/// Whether `key` (a `Sec-WebSocket-Key` value, surrounding whitespace already removed) is what
/// RFC 6455 section 4.2.1 asks for: padded base64 (standard alphabet) that decodes to exactly
/// 16 bytes, which is always 24 characters ending in `==`. Non-canonical encodings (non-zero
/// bits in the last character's unused part) are refused too.
pub fn key_is_valid(key: &str) -> bool {
    let mut raw = [0u8; 18];
    key.len() == 24 && matches!(STANDARD.decode_slice(key, &mut raw), Ok(16))
}

/// One parsed client frame; its payload is unmasked in place at `payload` in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// The opcode nibble (0 continuation, 1 text, 2 binary, 8 close, 9 ping, 10 pong).
    pub opcode: u8,
    /// Where the payload lies in the buffer given to [`parse_frame`].
    pub payload: std::ops::Range<usize>,
}

/// Parses one client frame at the start of `buf`, unmasking its payload in place.
/// `Ok(None)`: incomplete, keep the bytes and read more. `Ok(Some((frame, used)))` otherwise.
pub fn parse_frame(buf: &mut [u8], max_frame: usize) -> Result<Option<(Frame, usize)>, WsError> {
    let mut cur = Cursor::new(&buf[..]);
    let (hdr, len) = match FrameHeader::parse(&mut cur) {
        Ok(Some(h)) => h,
        Ok(None) => return Ok(None),
        Err(_) => return Err(WsError::Protocol("malformed frame header")),
    };
    let head = cur.position() as usize;
    if hdr.rsv1 || hdr.rsv2 || hdr.rsv3 {
        return Err(WsError::Protocol("reserved bits set"));
    }
    let opcode = match hdr.opcode {
        OpCode::Data(Data::Continue) => 0,
        OpCode::Data(Data::Text) => 1,
        OpCode::Data(Data::Binary) => 2,
        OpCode::Control(Control::Close) => 8,
        OpCode::Control(Control::Ping) => 9,
        OpCode::Control(Control::Pong) => 10,
        OpCode::Data(Data::Reserved(_)) | OpCode::Control(Control::Reserved(_)) => {
            return Err(WsError::Protocol("reserved opcode"))
        }
    };
    if opcode >= 8 && (!hdr.is_final || len > 125) {
        return Err(WsError::Protocol("fragmented or oversized control frame"));
    }
    let Some(mask) = hdr.mask else {
        return Err(WsError::Protocol("client frame not masked"));
    };
    // RFC 6455 section 5.2: "the most significant bit MUST be 0" in a 64-bit length. Such a
    // length breaks the framing rules rather than a size limit, so it is not `TooBig`.
    if len >> 63 != 0 {
        return Err(WsError::Protocol("64-bit length with its top bit set"));
    }
    if len > max_frame as u64 {
        return Err(WsError::TooBig);
    }
    let len = len as usize;
    if buf.len() - head < len {
        return Ok(None);
    }
    let payload = head..head + len;
    for (i, b) in buf[payload.clone()].iter_mut().enumerate() {
        *b ^= mask[i & 3];
    }
    Ok(Some((
        Frame {
            fin: hdr.is_final,
            opcode,
            payload,
        },
        head + len,
    )))
}

/// Checks a close frame's payload: empty, or a valid code plus a UTF-8 reason. Returns the code
/// to echo (1000 when the client sent none).
pub fn close_code(payload: &[u8]) -> Result<u16, WsError> {
    match payload.len() {
        0 => Ok(1000),
        1 => Err(WsError::Protocol("one-byte close payload")),
        _ => {
            let code = u16::from_be_bytes([payload[0], payload[1]]);
            let valid = matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999);
            if !valid {
                return Err(WsError::Protocol("invalid close code"));
            }
            std::str::from_utf8(&payload[2..]).map_err(|_| WsError::BadUtf8)?;
            Ok(code)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1u8, 2, 3, 4];
        let mut v = vec![(if fin { 0x80 } else { 0 }) | opcode];
        if payload.len() < 126 {
            v.push(0x80 | payload.len() as u8);
        } else {
            v.push(0x80 | 126);
            v.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        }
        v.extend_from_slice(&mask);
        v.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i & 3]));
        v
    }

    #[test]
    fn handshake_accepts_rfc_example() {
        let req = b"GET /chat?token=x HTTP/1.1\r\nHost: server.example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nOrigin: http://example.com\r\nSec-WebSocket-Version: 13\r\n\r\n\x81";
        match handshake(req, 8192) {
            Handshake::Upgrade {
                response,
                consumed,
                target,
                origin,
            } => {
                let r = String::from_utf8(response).unwrap();
                assert!(r.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
                assert_eq!(consumed, req.len() - 1);
                assert_eq!(target, "/chat?token=x");
                assert_eq!(origin.as_deref(), Some("http://example.com"));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn handshake_partial_and_rejects() {
        assert_eq!(
            handshake(b"GET / HTTP/1.1\r\nHost: x\r\n", 8192),
            Handshake::Partial
        );
        assert!(matches!(
            handshake(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 8192),
            Handshake::Reject { .. }
        ));
        assert!(matches!(
            handshake(&[0xff; 100], 8192),
            Handshake::Reject { .. }
        ));
        let long = vec![b'a'; 9000];
        assert!(matches!(handshake(&long, 8192), Handshake::Reject { .. }));
    }

    /// An upgrade request with `key` and any `extra` header lines, on `version`.
    fn upgrade(version: &str, key_lines: &str, extra: &str) -> Vec<u8> {
        format!(
            "GET / {version}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Version: 13\r\n{key_lines}{extra}\r\n"
        )
        .into_bytes()
    }

    fn status_of(h: Handshake) -> u16 {
        match h {
            Handshake::Upgrade { .. } => 101,
            Handshake::Reject { status, .. } => status,
            Handshake::Partial => 0,
        }
    }

    #[test]
    fn handshake_key_must_be_base64_of_16_bytes() {
        let with_key = |k: &str| {
            status_of(handshake(
                &upgrade(
                    "HTTP/1.1",
                    &format!("Sec-WebSocket-Key: {k}\r\n"),
                    "Host: x\r\n",
                ),
                8192,
            ))
        };
        assert_eq!(with_key("dGhlIHNhbXBsZSBub25jZQ=="), 101);
        assert_eq!(with_key("AAAAAAAAAAAAAAAAAAAAAA=="), 101);
        for bad in [
            "dGhlIHNhbXBsZSBub25jZQ",       // padding missing (22 characters)
            "dGhlIHNhbXBsZSBub25jZQ=",      // half the padding
            "dGhlIHNhbXBsZSBub25jZR==",     // non-zero unused bits: not canonical
            "c2hvcnQ=",                     // 5 bytes
            "AAAAAAAAAAAAAAAAAAAAAAAA",     // 18 bytes
            "AAAAAAAAAAAAAAAAAAAAAAAAAAA=", // 20 bytes
            "dGhlIHNhbXBsZSBub25jZQ-_",     // URL-safe alphabet
            "not base64 at all!!!!!!!",
            "x",
        ] {
            assert_eq!(with_key(bad), 400, "{bad:?}");
        }
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let twice = upgrade("HTTP/1.1", &format!("{key}{key}"), "Host: x\r\n");
        assert_eq!(status_of(handshake(&twice, 8192)), 400);
        let none = upgrade("HTTP/1.1", "", "Host: x\r\n");
        assert_eq!(status_of(handshake(&none, 8192)), 400);
    }

    #[test]
    fn handshake_needs_http_1_1_and_one_host() {
        let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
        let ok = upgrade("HTTP/1.1", key, "Host: x\r\n");
        assert_eq!(status_of(handshake(&ok, 8192)), 101);
        let cases = [
            ("HTTP/1.0", "Host: x\r\n"),
            ("HTTP/1.0", ""),
            ("HTTP/1.1", ""),
            ("HTTP/1.1", "Host: x\r\nHost: y\r\n"),
            ("HTTP/1.1", "Host: x\r\nhost: x\r\n"),
        ];
        for (version, hosts) in cases {
            let req = upgrade(version, key, hosts);
            match handshake(&req, 8192) {
                Handshake::Reject {
                    status, response, ..
                } => {
                    assert_eq!(status, 400, "{version} {hosts:?}");
                    assert!(response.starts_with(b"HTTP/1.1 400 Bad Request\r\n"));
                }
                other => panic!("{version} {hosts:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn frames_parse_unmask_and_wait_for_more() {
        let mut f = masked(1, true, b"uid1");
        let whole = f.len();
        assert_eq!(parse_frame(&mut f[..whole - 1], 1024).unwrap(), None);
        let (fr, used) = parse_frame(&mut f, 1024).unwrap().unwrap();
        assert_eq!(used, whole);
        assert_eq!(&f[fr.payload], b"uid1");
    }

    #[test]
    fn hostile_frames_are_errors() {
        let mut unmasked = vec![0x81, 2, b'h', b'i'];
        assert_eq!(
            parse_frame(&mut unmasked, 1024),
            Err(WsError::Protocol("client frame not masked"))
        );
        let mut reserved = masked(3, true, b"x");
        assert!(parse_frame(&mut reserved, 1024).is_err());
        let mut rsv = masked(1, true, b"x");
        rsv[0] |= 0x40;
        assert!(parse_frame(&mut rsv, 1024).is_err());
        let mut big = vec![
            0x82, 0xff, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0,
        ];
        assert_eq!(parse_frame(&mut big, 1024), Err(WsError::TooBig));
        // The same length with the top bit set is no length at all: a protocol error, judged
        // as soon as the header is complete, whatever max_frame is.
        let mut top = vec![0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4];
        for max in [1024, usize::MAX] {
            let e = parse_frame(&mut top, max).unwrap_err();
            assert!(matches!(e, WsError::Protocol(_)), "{e:?}");
            assert_eq!(e.close_code(), 1002);
        }
        assert_eq!(parse_frame(&mut top[..13], 1024), Ok(None));
        let mut ping = masked(9, false, b"x");
        assert!(parse_frame(&mut ping, 1024).is_err());
    }

    #[test]
    fn close_payloads() {
        assert_eq!(close_code(&[]), Ok(1000));
        assert!(close_code(&[3]).is_err());
        assert_eq!(close_code(&[0x03, 0xe8, b'o', b'k']), Ok(1000));
        assert!(close_code(&[0x03, 0xed]).is_err()); // 1005 is reserved
        assert_eq!(close_code(&[0x03, 0xe8, 0xff]), Err(WsError::BadUtf8));
    }
}
