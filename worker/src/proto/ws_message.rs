//! The WebSocket message layer (RFC 6455 §5.4–5.5): frames, as the frame codec in
//! [`websocket`](super::websocket) cut them, become messages and control events.
//!
//! It reassembles fragmented messages (bounded by `max_frame` for the whole message), lets
//! control frames interleave with fragments, refuses a continuation with no message started
//! and a new message inside a fragmented one, checks text for UTF-8, and answers what the
//! connection must do about pings and closes. It owns no socket: the event loop writes the
//! pong or the close it is told to, and acts on the messages.

use std::borrow::Cow;

use super::websocket::{close_code, WsError};

/// Opcode of a continuation frame.
const OP_CONTINUATION: u8 = 0x0;
/// Opcode of a text frame.
const OP_TEXT: u8 = 0x1;
/// Opcode of a binary frame.
const OP_BINARY: u8 = 0x2;
/// Opcode of a close frame.
const OP_CLOSE: u8 = 0x8;
/// Opcode of a ping frame.
const OP_PING: u8 = 0x9;
/// Opcode of a pong frame.
const OP_PONG: u8 = 0xA;

/// What one frame means for the connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A whole text message (one frame: borrowed from it; reassembled: owned).
    Text(Cow<'a, str>),
    /// A whole binary message.
    Binary(Cow<'a, [u8]>),
    /// A ping: answer with a pong carrying `payload`.
    Ping(&'a [u8]),
    /// The peer closes: answer with a close frame carrying `echo`, then close.
    Close {
        /// The code to send back (1000 for a normal close or none given).
        echo: u16,
    },
    /// Nothing to act on yet (a pong, or a fragment of an unfinished message).
    Nothing,
}

/// A message being reassembled from fragments.
#[derive(Debug)]
struct Fragments {
    /// Opcode of the first fragment (text or binary).
    opcode: u8,
    /// Payload so far (bounded by `max_frame`).
    data: Vec<u8>,
    /// Text: bytes of `data` known to be valid UTF-8 (each fragment is checked once, so a
    /// text that cannot be UTF-8 fails at the fragment that breaks it, not at the end).
    valid: usize,
}

impl Fragments {
    /// Checks the bytes added since the last check: an invalid sequence fails now, an
    /// incomplete one at the end waits for the next fragment.
    fn check_text(&mut self) -> Result<(), WsError> {
        if self.opcode != OP_TEXT {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.valid..]) {
            Ok(_) => self.valid = self.data.len(),
            Err(e) if e.error_len().is_none() => self.valid += e.valid_up_to(),
            Err(_) => return Err(WsError::BadUtf8),
        }
        Ok(())
    }
}

/// Per-connection message state: empty (one pointer, no allocation) unless a fragmented
/// message is in progress.
#[derive(Debug, Default)]
pub struct Messages {
    /// The unfinished fragmented message, if any (boxed: rare, and a connection stays small).
    frag: Option<Box<Fragments>>,
}

/// Checks a whole text message.
fn text(data: Cow<'_, [u8]>) -> Result<Incoming<'_>, WsError> {
    Ok(Incoming::Text(match data {
        Cow::Borrowed(b) => Cow::Borrowed(std::str::from_utf8(b).map_err(|_| WsError::BadUtf8)?),
        Cow::Owned(v) => Cow::Owned(String::from_utf8(v).map_err(|_| WsError::BadUtf8)?),
    }))
}

impl Messages {
    /// Handles one frame (already unmasked); `max` bounds a whole message.
    pub fn frame<'a>(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &'a [u8],
        max: usize,
    ) -> Result<Incoming<'a>, WsError> {
        match opcode {
            OP_CLOSE => {
                let code = close_code(payload)?;
                let echo = if code == 1000 || payload.is_empty() {
                    1000
                } else {
                    code
                };
                Ok(Incoming::Close { echo })
            }
            OP_PING => Ok(Incoming::Ping(payload)),
            OP_PONG => Ok(Incoming::Nothing),
            OP_CONTINUATION => {
                let Some(frag) = self.frag.as_mut() else {
                    return Err(WsError::Protocol("continuation without a message"));
                };
                if frag.data.len() + payload.len() > max {
                    return Err(WsError::TooBig);
                }
                frag.data.extend_from_slice(payload);
                frag.check_text()?;
                if !fin {
                    return Ok(Incoming::Nothing);
                }
                let Some(f) = self.frag.take() else {
                    return Ok(Incoming::Nothing);
                };
                match f.opcode {
                    OP_TEXT => text(Cow::Owned(f.data)),
                    _ => Ok(Incoming::Binary(Cow::Owned(f.data))),
                }
            }
            OP_TEXT | OP_BINARY => {
                if self.frag.is_some() {
                    return Err(WsError::Protocol("new message inside a fragmented one"));
                }
                if !fin {
                    let mut f = Box::new(Fragments {
                        opcode,
                        data: payload.to_vec(),
                        valid: 0,
                    });
                    f.check_text()?;
                    self.frag = Some(f);
                    return Ok(Incoming::Nothing);
                }
                if opcode == OP_TEXT {
                    text(Cow::Borrowed(payload))
                } else {
                    Ok(Incoming::Binary(Cow::Borrowed(payload)))
                }
            }
            // The frame codec refuses reserved opcodes before they get here.
            _ => Err(WsError::Protocol("reserved opcode")),
        }
    }

    /// A fragmented message is in progress.
    pub fn in_message(&self) -> bool {
        self.frag.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 16;

    #[test]
    fn single_frames() {
        let mut m = Messages::default();
        assert_eq!(
            m.frame(true, OP_TEXT, b"hi", MAX),
            Ok(Incoming::Text(Cow::Borrowed("hi")))
        );
        assert_eq!(
            m.frame(true, OP_BINARY, &[0, 1], MAX),
            Ok(Incoming::Binary(Cow::Borrowed(&[0u8, 1][..])))
        );
        assert_eq!(m.frame(true, OP_TEXT, b"\xff", MAX), Err(WsError::BadUtf8));
    }

    #[test]
    fn fragments_with_control_frames_between() {
        let mut m = Messages::default();
        assert_eq!(m.frame(false, OP_TEXT, b"he", MAX), Ok(Incoming::Nothing));
        assert!(m.in_message());
        assert_eq!(m.frame(true, OP_PING, b"p", MAX), Ok(Incoming::Ping(b"p")));
        assert_eq!(m.frame(true, OP_PONG, b"", MAX), Ok(Incoming::Nothing));
        assert_eq!(
            m.frame(false, OP_CONTINUATION, b"ll", MAX),
            Ok(Incoming::Nothing)
        );
        assert_eq!(
            m.frame(true, OP_CONTINUATION, b"o", MAX),
            Ok(Incoming::Text(Cow::Owned("hello".into())))
        );
        assert!(!m.in_message());
        // A multi-byte character split across fragments is whole at the end.
        m.frame(false, OP_TEXT, &[0xc3], MAX).ok();
        assert_eq!(
            m.frame(true, OP_CONTINUATION, &[0xa9], MAX),
            Ok(Incoming::Text(Cow::Owned("é".into())))
        );
    }

    #[test]
    fn impossible_text_fails_at_the_fragment_that_breaks_it() {
        let mut m = Messages::default();
        // An incomplete sequence at a fragment's end waits for the next fragment.
        assert_eq!(
            m.frame(false, OP_TEXT, b"ok\xe2\x82", MAX),
            Ok(Incoming::Nothing)
        );
        // A byte that cannot continue it fails at once, before the message ends.
        assert_eq!(
            m.frame(false, OP_CONTINUATION, b"x", MAX),
            Err(WsError::BadUtf8)
        );
        let mut m = Messages::default();
        assert_eq!(m.frame(false, OP_TEXT, b"\xff", MAX), Err(WsError::BadUtf8));
        // Binary messages are not text.
        let mut m = Messages::default();
        assert_eq!(
            m.frame(false, OP_BINARY, b"\xff", MAX),
            Ok(Incoming::Nothing)
        );
    }

    #[test]
    fn fragment_rules() {
        let mut m = Messages::default();
        assert!(matches!(
            m.frame(true, OP_CONTINUATION, b"x", MAX),
            Err(WsError::Protocol(_))
        ));
        m.frame(false, OP_BINARY, b"x", MAX).ok();
        assert!(matches!(
            m.frame(true, OP_TEXT, b"y", MAX),
            Err(WsError::Protocol(_))
        ));
        let mut m = Messages::default();
        m.frame(false, OP_BINARY, &[0; 10], MAX).ok();
        assert_eq!(
            m.frame(true, OP_CONTINUATION, &[0; 7], MAX),
            Err(WsError::TooBig)
        );
    }

    #[test]
    fn close_codes_are_echoed() {
        let mut m = Messages::default();
        assert_eq!(
            m.frame(true, OP_CLOSE, b"", MAX),
            Ok(Incoming::Close { echo: 1000 })
        );
        assert_eq!(
            m.frame(true, OP_CLOSE, &[0x03, 0xe9], MAX),
            Ok(Incoming::Close { echo: 1001 })
        );
        assert!(m.frame(true, OP_CLOSE, &[0x03, 0xed], MAX).is_err());
    }
}
