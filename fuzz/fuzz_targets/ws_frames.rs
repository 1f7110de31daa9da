//! Fuzz target for the WebSocket path: `herald_worker::proto::websocket::handshake`, `parse_frame`
//! and `close_code`.
//!
//! Input layout: byte 0 picks `max_frame` (tiny to default, so `TooBig` is reached), bytes
//! 1..4 pick up to three split points, the rest is what the client sent. If the rest starts
//! with a complete upgrade request, the frames are what follows it (as in the event loop);
//! otherwise the whole rest is parsed as frames. Asserted, besides "never panics":
//!
//! - handshake: `Upgrade.consumed <= len`, a `101` response carrying `Sec-WebSocket-Accept`,
//!   `Reject` with a complete HTTP error response; the handshake is a pure function of the bytes
//!   so far (every prefix shorter than `consumed` is `Partial`, every longer one the same
//!   `Upgrade`);
//! - frame loop (`parse_frame(&mut buf[pos..])` until `Ok(None)` or `Err`): `used > 0`,
//!   `pos + used <= len`, the payload range inside the frame, control frames final and at most
//!   125 bytes, data frames at most `max_frame`, opcodes 0, 1, 2, 8, 9, 10 only; `close_code`
//!   on every close payload returns a code the RFC allows on the wire;
//! - the frames (fin, opcode, unmasked payload bytes) and the outcome (error kind, or the
//!   length of the incomplete tail) equal those of an independent reference decoder of
//!   RFC 6455 client frames written here;
//! - parsing incrementally, as the server does (each read appended to the kept incomplete
//!   tail, whole frames handled, the tail kept), yields the same frames and outcome as parsing
//!   the whole buffer at once, for the split points chosen by the input.
//!
//! `parse_frame` unmasks in place, so every pass works on its own copy of the bytes.
#![no_main]

use herald_worker::proto::websocket::{close_code, handshake, parse_frame, Handshake, WsError};
use libfuzzer_sys::fuzz_target;

const FRAME_LIMITS: [usize; 8] = [0, 1, 2, 125, 126, 1000, 65_535, 64 * 1024];
const MAX_HEADER: usize = 16 * 1024;

/// One parsed frame: fin, opcode, unmasked payload.
type Frame = (bool, u8, Vec<u8>);

/// How a run over the bytes ended.
#[derive(Debug, PartialEq, Eq, Clone, Copy)]
enum End {
    /// All frames whole; this many bytes of an incomplete frame are left over.
    Tail(usize),
    /// A frame was refused.
    Protocol,
    TooBig,
    BadUtf8,
}

fn end_of(e: &WsError) -> End {
    match e {
        WsError::Protocol(_) => End::Protocol,
        WsError::TooBig => End::TooBig,
        WsError::BadUtf8 => End::BadUtf8,
    }
}

/// Runs the server's frame loop over `buf` (modified in place), checking each frame.
/// Returns the frames and how many bytes were consumed, plus the outcome.
fn frame_loop(buf: &mut [u8], max_frame: usize, frames: &mut Vec<Frame>) -> (usize, End) {
    let len = buf.len();
    let mut pos = 0;
    loop {
        match parse_frame(&mut buf[pos..], max_frame) {
            Ok(None) => return (pos, End::Tail(len - pos)),
            Err(e) => {
                assert_ne!(e, WsError::BadUtf8, "parse_frame does not check UTF-8");
                return (len, end_of(&e));
            }
            Ok(Some((f, used))) => {
                assert!(used > 0, "a frame of zero bytes");
                assert!(
                    pos + used <= len,
                    "frame of {used} bytes at {pos} past {len}"
                );
                assert!(
                    f.payload.start <= f.payload.end && f.payload.end <= used,
                    "payload {:?} outside a frame of {used} bytes",
                    f.payload
                );
                assert!(f.payload.start >= 2, "payload overlaps the frame header");
                assert!(
                    matches!(f.opcode, 0 | 1 | 2 | 8 | 9 | 10),
                    "opcode {} passed",
                    f.opcode
                );
                let plen = f.payload.len();
                if f.opcode >= 8 {
                    assert!(f.fin && plen <= 125, "bad control frame passed");
                }
                assert!(plen <= max_frame, "frame of {plen} bytes over {max_frame}");
                let payload = buf[pos + f.payload.start..pos + f.payload.end].to_vec();
                if f.opcode == 8 {
                    if let Ok(code) = close_code(&payload) {
                        assert!(
                            matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999),
                            "close code {code} accepted"
                        );
                        if payload.is_empty() {
                            assert_eq!(code, 1000);
                        } else {
                            assert_eq!(code, u16::from_be_bytes([payload[0], payload[1]]));
                            assert!(std::str::from_utf8(&payload[2..]).is_ok());
                        }
                    }
                }
                frames.push((f.fin, f.opcode, payload));
                pos += used;
            }
        }
    }
}

/// An independent decoder of one RFC 6455 client frame (section 5.2), for comparison.
/// `Ok(None)` when the header or payload is incomplete.
fn reference_frame(b: &[u8], max_frame: usize) -> Result<Option<(Frame, usize)>, End> {
    if b.len() < 2 {
        return Ok(None);
    }
    let fin = b[0] & 0x80 != 0;
    let rsv = b[0] & 0x70;
    let opcode = b[0] & 0x0f;
    let masked = b[1] & 0x80 != 0;
    let (len, mut at) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            (u64::from(u16::from_be_bytes([b[2], b[3]])), 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut n = [0u8; 8];
            n.copy_from_slice(&b[2..10]);
            (u64::from_be_bytes(n), 10)
        }
        n => (u64::from(n), 2),
    };
    let mask = if masked {
        if b.len() < at + 4 {
            return Ok(None);
        }
        let m = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        at += 4;
        Some(m)
    } else {
        None
    };
    // The whole header is here: now it is judged.
    if rsv != 0 || !matches!(opcode, 0 | 1 | 2 | 8 | 9 | 10) {
        return Err(End::Protocol);
    }
    if opcode >= 8 && (!fin || len > 125) {
        return Err(End::Protocol);
    }
    let Some(mask) = mask else {
        return Err(End::Protocol);
    };
    if len >> 63 != 0 {
        return Err(End::Protocol);
    }
    if len > max_frame as u64 {
        return Err(End::TooBig);
    }
    let len = len as usize;
    if b.len() - at < len {
        return Ok(None);
    }
    let payload = b[at..at + len]
        .iter()
        .enumerate()
        .map(|(i, x)| x ^ mask[i % 4])
        .collect();
    Ok(Some(((fin, opcode, payload), at + len)))
}

fn reference_all(b: &[u8], max_frame: usize) -> (Vec<Frame>, End) {
    let mut frames = Vec::new();
    let mut pos = 0;
    loop {
        match reference_frame(&b[pos..], max_frame) {
            Ok(None) => return (frames, End::Tail(b.len() - pos)),
            Err(e) => return (frames, e),
            Ok(Some((f, used))) => {
                frames.push(f);
                pos += used;
            }
        }
    }
}

/// Feeds `bytes` in reads cut at `cuts`, keeping the unparsed tail between reads as the event
/// loop does. Returns the frames and the outcome after the last read.
fn incremental(bytes: &[u8], cuts: &[usize], max_frame: usize) -> (Vec<Frame>, End) {
    let mut frames = Vec::new();
    let mut kept: Vec<u8> = Vec::new();
    let mut start = 0;
    for &cut in cuts.iter().chain(std::iter::once(&bytes.len())) {
        let mut buf = std::mem::take(&mut kept);
        buf.extend_from_slice(&bytes[start..cut]);
        start = cut;
        let (used, end) = frame_loop(&mut buf, max_frame, &mut frames);
        if end != End::Tail(buf.len() - used) {
            // An error closes the connection: nothing after it is parsed.
            return (frames, end);
        }
        // Only the incomplete frame's bytes are kept; they are still masked, since
        // parse_frame only unmasks whole frames.
        kept = buf[used..].to_vec();
    }
    let tail = kept.len();
    (frames, End::Tail(tail))
}

fn check_handshake(buf: &[u8]) -> Option<usize> {
    let whole = handshake(buf, MAX_HEADER);
    match &whole {
        Handshake::Partial => {
            assert!(buf.len() <= MAX_HEADER, "a partial head over the limit");
            None
        }
        Handshake::Reject {
            response,
            reason,
            status,
        } => {
            assert!(response.starts_with(b"HTTP/1.1 4"), "bad reject response");
            assert!(
                response.starts_with(format!("HTTP/1.1 {status} ").as_bytes()),
                "status {status} is not the response's"
            );
            assert!(response.windows(4).any(|w| w == b"\r\n\r\n"));
            assert!(!reason.is_empty());
            None
        }
        Handshake::Upgrade {
            response,
            consumed,
            target,
            ..
        } => {
            let consumed = *consumed;
            assert!(consumed > 0 && consumed <= buf.len(), "consumed {consumed}");
            assert!(consumed <= MAX_HEADER);
            assert!(response.starts_with(b"HTTP/1.1 101 Switching Protocols\r\n"));
            assert!(response.ends_with(b"\r\n\r\n"));
            let text = std::str::from_utf8(response).expect("response is text");
            assert!(text.contains("\r\nSec-WebSocket-Accept: "));
            assert_eq!(
                text.matches("\r\n").count(),
                5,
                "header injection: {text:?}"
            );
            assert!(!target.is_empty());
            for p in [0, consumed / 2, consumed.saturating_sub(1)] {
                if p < consumed {
                    assert_eq!(handshake(&buf[..p], MAX_HEADER), Handshake::Partial);
                }
            }
            assert_eq!(handshake(&buf[..consumed], MAX_HEADER), whole);
            Some(consumed)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 4 {
        return;
    }
    let max_frame = FRAME_LIMITS[(data[0] & 7) as usize];
    let input = &data[4..];
    let frames_at = check_handshake(input).unwrap_or(0);
    let bytes = &input[frames_at..];

    // The whole buffer at once.
    let mut whole = bytes.to_vec();
    let mut frames = Vec::new();
    let (_, end) = frame_loop(&mut whole, max_frame, &mut frames);
    let parsed = (frames, end);

    // The reference decoder agrees.
    assert_eq!(
        reference_all(bytes, max_frame),
        parsed,
        "parse_frame differs from the RFC 6455 reference"
    );

    // Split into reads: up to three cut points, sorted, within the buffer.
    let mut cuts: Vec<usize> = data[1..4]
        .iter()
        .map(|&c| bytes.len() * c as usize / 255)
        .collect();
    cuts.sort_unstable();
    assert_eq!(
        incremental(bytes, &cuts, max_frame),
        parsed,
        "reads cut at {cuts:?} parse differently"
    );
    // And one byte per read, the harshest split, for short inputs.
    if bytes.len() <= 64 {
        let every: Vec<usize> = (1..bytes.len()).collect();
        assert_eq!(
            incremental(bytes, &every, max_frame),
            parsed,
            "byte-wise reads differ"
        );
    }
});
