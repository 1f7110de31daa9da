//! Frame format: a 4-byte big-endian length (of what follows), then one kind byte, then the body.
//!
//! A declared length above [`MAX_FRAME`] or too small to hold the kind byte is a typed error:
//! the reader closes the channel rather than allocate what a corrupt or hostile peer asks for.

use thiserror::Error;

/// Bytes of the length prefix.
pub const FRAME_HEADER: usize = 4;

/// Largest frame body accepted or produced (kind byte included). Pushes are bounded well below
/// this by the text port's `max_line` and the HTTP port's `max_body`.
pub const MAX_FRAME: usize = 16 * 1024 * 1024;

/// Everything that can be wrong with bytes read from a channel.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum CodecError {
    /// The length prefix is above [`MAX_FRAME`].
    #[error("frame of {0} bytes exceeds the maximum of {MAX_FRAME}")]
    TooLarge(usize),
    /// The length prefix is zero: no room for the kind byte.
    #[error("empty frame")]
    Empty,
    /// The kind byte names no known message.
    #[error("unknown message kind {0}")]
    UnknownKind(u8),
    /// The body ended before a field was complete.
    #[error("truncated {0} field")]
    Truncated(&'static str),
    /// A string field is not UTF-8.
    #[error("field {0} is not UTF-8")]
    Utf8(&'static str),
    /// A JSON-bodied message failed to parse.
    #[error("bad JSON body: {0}")]
    Json(String),
}

/// A message that can travel in a frame.
pub trait Wire: Sized {
    /// Appends the kind byte and the body to `out`.
    fn encode(&self, out: &mut Vec<u8>);
    /// Decodes a frame's kind byte and body.
    fn decode(kind: u8, body: &[u8]) -> Result<Self, CodecError>;
}

/// Appends one whole frame for `msg` to `out`.
pub fn write_frame<M: Wire>(msg: &M, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    msg.encode(out);
    let len = out.len() - start - FRAME_HEADER;
    if len > MAX_FRAME {
        out.truncate(start);
        return Err(CodecError::TooLarge(len));
    }
    out[start..start + FRAME_HEADER].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Parses one frame from the front of `buf`. `Ok(None)` means more bytes are needed (not an
/// error); `Ok(Some((msg, used)))` gives the message and how many bytes it took.
pub fn read_frame<M: Wire>(buf: &[u8]) -> Result<Option<(M, usize)>, CodecError> {
    if buf.len() < FRAME_HEADER {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME {
        return Err(CodecError::TooLarge(len));
    }
    if len == 0 {
        return Err(CodecError::Empty);
    }
    if buf.len() < FRAME_HEADER + len {
        return Ok(None);
    }
    let body = &buf[FRAME_HEADER..FRAME_HEADER + len];
    let msg = M::decode(body[0], &body[1..])?;
    Ok(Some((msg, FRAME_HEADER + len)))
}

/// Little helpers to write fields.
pub(crate) mod put {
    pub fn u8(out: &mut Vec<u8>, v: u8) {
        out.push(v);
    }
    pub fn u32(out: &mut Vec<u8>, v: u32) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn u64(out: &mut Vec<u8>, v: u64) {
        out.extend_from_slice(&v.to_be_bytes());
    }
    pub fn bytes(out: &mut Vec<u8>, v: &[u8]) {
        u32(out, v.len() as u32);
        out.extend_from_slice(v);
    }
    pub fn u32s(out: &mut Vec<u8>, v: &[u32]) {
        u32(out, v.len() as u32);
        for x in v {
            u32(out, *x);
        }
    }
    pub fn strs(out: &mut Vec<u8>, v: &[String]) {
        u32(out, v.len() as u32);
        for s in v {
            bytes(out, s.as_bytes());
        }
    }
}

/// A cursor over a frame body that reads fields and reports truncation by field name.
pub(crate) struct Reader<'a> {
    /// What is left to read.
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], CodecError> {
        if self.buf.len() < n {
            return Err(CodecError::Truncated(field));
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }
    pub fn u8(&mut self, field: &'static str) -> Result<u8, CodecError> {
        Ok(self.take(1, field)?[0])
    }
    pub fn u32(&mut self, field: &'static str) -> Result<u32, CodecError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    pub fn u64(&mut self, field: &'static str) -> Result<u64, CodecError> {
        let b = self.take(8, field)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    pub fn bytes(&mut self, field: &'static str) -> Result<&'a [u8], CodecError> {
        let n = self.u32(field)? as usize;
        self.take(n, field)
    }
    pub fn u32s(&mut self, field: &'static str) -> Result<Vec<u32>, CodecError> {
        let n = self.u32(field)? as usize;
        // A count larger than the body can hold is refused before allocating.
        if n > self.buf.len() / 4 {
            return Err(CodecError::Truncated(field));
        }
        (0..n).map(|_| self.u32(field)).collect()
    }
    pub fn string(&mut self, field: &'static str) -> Result<String, CodecError> {
        let b = self.bytes(field)?;
        String::from_utf8(b.to_vec()).map_err(|_| CodecError::Utf8(field))
    }
    pub fn strs(&mut self, field: &'static str) -> Result<Vec<String>, CodecError> {
        let n = self.u32(field)? as usize;
        // Each string costs at least its 4-byte length: refuse counts the body cannot hold.
        if n > self.buf.len() / 4 {
            return Err(CodecError::Truncated(field));
        }
        (0..n).map(|_| self.string(field)).collect()
    }
    pub fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::PeerMsg;

    #[test]
    fn oversized_length_is_an_error_not_an_allocation() {
        let mut buf = ((MAX_FRAME + 1) as u32).to_be_bytes().to_vec();
        buf.push(1);
        assert_eq!(
            read_frame::<PeerMsg>(&buf).unwrap_err(),
            CodecError::TooLarge(MAX_FRAME + 1)
        );
    }

    #[test]
    fn zero_length_is_an_error() {
        assert_eq!(
            read_frame::<PeerMsg>(&[0, 0, 0, 0]).unwrap_err(),
            CodecError::Empty
        );
    }

    #[test]
    fn partial_frame_needs_more() {
        let mut out = Vec::new();
        write_frame(&PeerMsg::Delivered { id: 7, count: 3 }, &mut out).unwrap();
        for cut in 0..out.len() {
            assert_eq!(read_frame::<PeerMsg>(&out[..cut]).unwrap(), None);
        }
        let (msg, used) = read_frame::<PeerMsg>(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(msg, PeerMsg::Delivered { id: 7, count: 3 });
    }
}
