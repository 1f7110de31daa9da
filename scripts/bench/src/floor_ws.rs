//! The least a WebSocket server must do to let a client in, for the handshake floor
//! (`limit-connect`, `limit-storm`): find the end of the upgrade request, answer `101` with the
//! `Sec-WebSocket-Accept` value derived from the client's key (SHA-1, base64), and recognise the
//! end of the client's first (masked) frame, the login, whose content is ignored. Nothing else of
//! the request is checked: the floor measures the cost of the bytes, not of validation.

use base64::Engine;
use sha1::{Digest, Sha1};

/// The GUID that RFC 6455 appends to the client's key before hashing.
const WS_GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Longest upgrade request accepted, bytes.
pub const MAX_REQUEST: usize = 8192;

/// Longest login frame payload accepted, bytes.
const MAX_LOGIN: u64 = 4096;

/// What the bytes of an upgrade request so far amount to.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// The blank line has not arrived yet.
    Incomplete,
    /// The request is complete: the `101` answer, and how many bytes the request took.
    Upgrade(Vec<u8>, usize),
    /// No key, or longer than [`MAX_REQUEST`]: the connection is closed.
    Bad,
}

/// The `Sec-WebSocket-Accept` value for `key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(WS_GUID);
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

/// Looks for the end of the upgrade request in `buf` and, once it is there, builds the answer.
pub fn request(buf: &[u8]) -> Request {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return if buf.len() > MAX_REQUEST {
            Request::Bad
        } else {
            Request::Incomplete
        };
    };
    let key = buf[..end].split(|&b| b == b'\n').find_map(|line| {
        let colon = line.iter().position(|&b| b == b':')?;
        let name = &line[..colon];
        name.eq_ignore_ascii_case(b"sec-websocket-key")
            .then(|| line[colon + 1..].trim_ascii())
    });
    match key {
        Some(k) if !k.is_empty() => {
            let answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
                 Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                accept_key(k)
            );
            Request::Upgrade(answer.into_bytes(), end + 4)
        }
        _ => Request::Bad,
    }
}

/// The length of the complete client frame at the start of `buf`: `Ok(None)` while more bytes
/// are needed, `Err(())` for a payload over 4 KiB.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, ()> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let (len, ext) = match buf[1] & 0x7F {
        126 if buf.len() >= 4 => (u16::from_be_bytes([buf[2], buf[3]]) as u64, 2),
        127 if buf.len() >= 10 => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[2..10]);
            (u64::from_be_bytes(b), 8)
        }
        126 | 127 => return Ok(None),
        n => (n as u64, 0),
    };
    if len > MAX_LOGIN {
        return Err(());
    }
    let mask = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let total = 2 + ext + mask + len as usize;
    Ok((buf.len() >= total).then_some(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_key() {
        // RFC 6455 section 1.3's example.
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn requests_complete_incomplete_and_bad() {
        let req = crate::ws::handshake_request("127.0.0.1:9");
        assert_eq!(request(&req[..req.len() - 2]), Request::Incomplete);
        let Request::Upgrade(answer, used) = request(&req) else {
            panic!("not an upgrade");
        };
        assert_eq!(used, req.len());
        let answer = String::from_utf8(answer).expect("ASCII");
        assert!(answer.starts_with("HTTP/1.1 101 "));
        assert!(answer.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert_eq!(
            crate::ws::parse_handshake(answer.as_bytes()),
            crate::ws::HandshakeReply::Switched(answer.len())
        );
        assert_eq!(request(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"), Request::Bad);
        assert_eq!(request(&[b'a'; MAX_REQUEST + 1]), Request::Bad);
    }

    #[test]
    fn login_frame_lengths() {
        let mut f = Vec::new();
        crate::ws::encode_masked(crate::ws::OP_TEXT, b"u42", [1, 2, 3, 4], &mut f);
        assert_eq!(frame_len(&f[..f.len() - 1]), Ok(None));
        assert_eq!(frame_len(&f), Ok(Some(f.len())));
        let mut long = Vec::new();
        crate::ws::encode_masked(crate::ws::OP_TEXT, &[b'x'; 300], [1, 2, 3, 4], &mut long);
        assert_eq!(frame_len(&long[..3]), Ok(None));
        assert_eq!(frame_len(&long), Ok(Some(long.len())));
        let mut huge = Vec::new();
        crate::ws::encode_masked(crate::ws::OP_TEXT, &[b'x'; 5000], [1, 2, 3, 4], &mut huge);
        assert_eq!(frame_len(&huge), Err(()));
    }
}
