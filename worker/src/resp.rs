//! RESP, the Redis protocol (version 2), for the connections to Redis that the worker's own
//! loop drives (see `event_loop/wire.rs`): commands are arrays of bulk strings; replies are
//! parsed incrementally from whatever bytes have arrived.
//!
//! Parsing never copies a bulk string before all of it is there, and only header lines are
//! scanned: a value arriving in many reads costs its elements, not its bytes, each time.

use thiserror::Error;

/// Longest bulk string accepted (Redis itself stops at 512 MiB; a pub/sub client is cut off by
/// Redis long before this by its output buffer limit).
const MAX_BULK: usize = 64 << 20;
/// Most elements in one array.
const MAX_ARRAY: usize = 1 << 20;
/// Deepest nesting of arrays.
const MAX_DEPTH: usize = 8;
/// Longest header line (`$123\r\n`, `:-42\r\n`, a simple string or an error).
const MAX_LINE: usize = 64 * 1024;

/// A reply from Redis.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// `+OK`.
    Simple(Vec<u8>),
    /// `-ERR …`.
    Error(Vec<u8>),
    /// `:42`.
    Int(i64),
    /// `$3 abc`, or `$-1` (none).
    Bulk(Option<Vec<u8>>),
    /// `*2 …`, or `*-1` (none).
    Array(Option<Vec<Value>>),
}

impl Value {
    /// The text of an error reply, for logs.
    pub fn error_text(&self) -> Option<String> {
        match self {
            Value::Error(e) => Some(String::from_utf8_lossy(e).into_owned()),
            _ => None,
        }
    }

    /// The bytes of a bulk or simple string.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Value::Bulk(Some(b)) | Value::Simple(b) => Some(b),
            _ => None,
        }
    }
}

/// Bytes that are not RESP (a server that is not Redis, or a broken stream).
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RespError {
    /// The first byte of a value is not a RESP type.
    #[error("not the Redis protocol (a value begins with byte {0:#04x})")]
    Type(u8),
    /// A length or an integer that is not a number, or out of bounds.
    #[error("bad length or integer in a Redis reply")]
    Number,
    /// A value larger than this client accepts.
    #[error("a Redis reply is larger than this client accepts")]
    TooBig,
    /// A bulk string not followed by CRLF.
    #[error("a Redis bulk string is not terminated")]
    Unterminated,
}

/// Appends the command `args` (an array of bulk strings) to `out`.
pub fn command(out: &mut Vec<u8>, args: &[&[u8]]) {
    header(out, b'*', args.len());
    for a in args {
        header(out, b'$', a.len());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// `*N\r\n` or `$N\r\n`.
fn header(out: &mut Vec<u8>, kind: u8, n: usize) {
    out.push(kind);
    let mut digits = [0u8; 20];
    let mut i = digits.len();
    let mut n = n;
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[i..]);
    out.extend_from_slice(b"\r\n");
}

/// Parses the value at the start of `buf`: `Ok(None)` while it is incomplete, else the value
/// and the bytes it took.
pub fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, RespError> {
    value(buf, 0, 0)
}

/// The line starting at `at` (without its CRLF) and the offset after it.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, RespError> {
    let rest = &buf[at..];
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(n) if n <= MAX_LINE => Ok(Some((&rest[..n], at + n + 2))),
        Some(_) => Err(RespError::TooBig),
        None if rest.len() > MAX_LINE => Err(RespError::TooBig),
        None => Ok(None),
    }
}

/// A signed decimal integer.
fn int(s: &[u8]) -> Result<i64, RespError> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', d)) => (true, d),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return Err(RespError::Number);
    }
    let n = digits
        .iter()
        .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
    Ok(if neg { -n } else { n })
}

/// A length: -1 (none) or 0..=max.
fn length(s: &[u8], max: usize) -> Result<Option<usize>, RespError> {
    match int(s)? {
        -1 => Ok(None),
        n if n < 0 => Err(RespError::Number),
        n if n as u64 > max as u64 => Err(RespError::TooBig),
        n => Ok(Some(n as usize)),
    }
}

/// The value at `at`, `depth` arrays deep.
fn value(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value, usize)>, RespError> {
    let Some(&kind) = buf.get(at) else {
        return Ok(None);
    };
    let Some((head, next)) = line(buf, at + 1)? else {
        return Ok(None);
    };
    let v = match kind {
        b'+' => (Value::Simple(head.to_vec()), next),
        b'-' => (Value::Error(head.to_vec()), next),
        b':' => (Value::Int(int(head)?), next),
        b'$' => match length(head, MAX_BULK)? {
            None => (Value::Bulk(None), next),
            Some(n) => {
                if buf.len() < next + n + 2 {
                    return Ok(None);
                }
                if &buf[next + n..next + n + 2] != b"\r\n" {
                    return Err(RespError::Unterminated);
                }
                (
                    Value::Bulk(Some(buf[next..next + n].to_vec())),
                    next + n + 2,
                )
            }
        },
        b'*' => {
            if depth >= MAX_DEPTH {
                return Err(RespError::TooBig);
            }
            match length(head, MAX_ARRAY)? {
                None => (Value::Array(None), next),
                Some(n) => {
                    // Grown as elements arrive: a claimed length costs nothing until then.
                    let mut items = Vec::new();
                    let mut pos = next;
                    for _ in 0..n {
                        let Some((item, after)) = value(buf, pos, depth + 1)? else {
                            return Ok(None);
                        };
                        items.push(item);
                        pos = after;
                    }
                    (Value::Array(Some(items)), pos)
                }
            }
        }
        other => return Err(RespError::Type(other)),
    };
    Ok(Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = Vec::new();
        command(&mut out, &[b"PUBLISH", b"p:all", b""]);
        assert_eq!(out, b"*3\r\n$7\r\nPUBLISH\r\n$5\r\np:all\r\n$0\r\n\r\n");
        let mut big = Vec::new();
        command(&mut big, &[&[7u8; 1234][..]]);
        assert!(big.starts_with(b"*1\r\n$1234\r\n"));
    }

    #[test]
    fn every_kind_parses_and_reports_its_length() {
        let cases: &[(&[u8], Value)] = &[
            (b"+OK\r\n", Value::Simple(b"OK".to_vec())),
            (b"-ERR no\r\n", Value::Error(b"ERR no".to_vec())),
            (b":-42\r\n", Value::Int(-42)),
            (b"$3\r\nabc\r\n", Value::Bulk(Some(b"abc".to_vec()))),
            (b"$-1\r\n", Value::Bulk(None)),
            (b"*-1\r\n", Value::Array(None)),
            (
                b"*3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\n\r\n\r\n",
                Value::Array(Some(vec![
                    Value::Bulk(Some(b"message".to_vec())),
                    Value::Bulk(Some(b"c".to_vec())),
                    Value::Bulk(Some(b"\r\n".to_vec())),
                ])),
            ),
        ];
        for (bytes, want) in cases {
            let mut more = bytes.to_vec();
            more.extend_from_slice(b":1\r\n");
            assert_eq!(
                parse(&more),
                Ok(Some((want.clone(), bytes.len()))),
                "{bytes:?}"
            );
            // Every proper prefix is incomplete, never an error.
            for cut in 0..bytes.len() {
                assert_eq!(parse(&bytes[..cut]), Ok(None), "{bytes:?} cut at {cut}");
            }
        }
    }

    #[test]
    fn what_is_not_resp_is_refused() {
        assert_eq!(parse(b"HTTP/1.1 400\r\n"), Err(RespError::Type(b'H')));
        assert_eq!(parse(b":12a\r\n"), Err(RespError::Number));
        assert_eq!(parse(b"$-2\r\n"), Err(RespError::Number));
        assert_eq!(parse(b"$3\r\nabcXY"), Err(RespError::Unterminated));
        assert_eq!(parse(b"$999999999999\r\n"), Err(RespError::TooBig));
        assert_eq!(parse(&[b'+'; MAX_LINE + 2]), Err(RespError::TooBig));
        let deep = "*1\r\n".repeat(MAX_DEPTH + 1);
        assert_eq!(parse(deep.as_bytes()), Err(RespError::TooBig));
    }
}
