//! A one-pass scanner for the text port's hot line, `{"uid":"u1",…}`.
//!
//! The seeds' backends send one JSON object per push, and Herald only needs two facts from it:
//! whether it has a top-level `cmd` (then it is a command, not a seed push) and the string
//! value of its top-level `uid`. [`scan`] checks the whole line against the JSON grammar and
//! picks those out in one pass, without building anything, several times cheaper than a
//! general parser.
//!
//! It only answers what it is sure of: an ASCII line that is exactly one valid JSON object
//! whose top-level keys are plain (no escapes), with at most one `uid`, whose value, if a
//! string, is plain. Anything else (non-ASCII bytes, escaped keys, a numeric uid, deep nesting,
//! any grammar error) gives [`Scan::Unsure`] and the caller uses the general parser, which gives
//! the right answer, error or not. So the scanner can be strict and small: when it says
//! something, the general parser would have said the same (tested against it in `text.rs`).

/// What [`scan`] found.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan<'a> {
    /// A valid object without `cmd`, with this plain string `uid` (possibly empty).
    Uid(&'a str),
    /// A valid object without `cmd` and without `uid`.
    NoUid,
    /// A valid object with a top-level `cmd`.
    Cmd,
    /// Not sure: ask the general parser.
    Unsure,
}

/// Nesting deeper than this is left to the general parser.
const MAX_DEPTH: usize = 32;

/// The bytes that end a run of plain string contents: `"`, `\\`, control bytes and non-ASCII
/// bytes (one table look-up per byte).
const STOP: [bool; 256] = {
    let mut t = [false; 256];
    let mut c = 0;
    while c < 256 {
        t[c] = c < 0x20 || c >= 0x80 || c == b'"' as usize || c == b'\\' as usize;
        c += 1;
    }
    t
};

/// Scans one line (no trailing `\n`; a trailing `\r` is whitespace to JSON anyway).
pub fn scan(line: &[u8]) -> Scan<'_> {
    // (A non-ASCII byte is unsure: in a string [`Scanner::string`] says so, and anywhere else
    // it breaks the grammar.)
    let mut s = Scanner { b: line, i: 0 };
    match s.top() {
        Some(found) => found,
        None => Scan::Unsure,
    }
}

/// A position in the line being scanned.
struct Scanner<'a> {
    /// The line.
    b: &'a [u8],
    /// The next byte to look at.
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn ws(&mut self) {
        while let Some(b' ' | b'\t' | b'\n' | b'\r') = self.peek() {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        if self.peek() == Some(c) {
            self.i += 1;
            Some(())
        } else {
            None
        }
    }

    /// The top-level object and nothing but whitespace after it.
    fn top(&mut self) -> Option<Scan<'a>> {
        self.ws();
        self.eat(b'{')?;
        let mut uid: Option<&'a str> = None;
        let mut cmd = false;
        self.ws();
        if self.eat(b'}').is_none() {
            loop {
                self.ws();
                let (key, plain) = self.string()?;
                if !plain {
                    return None;
                }
                self.ws();
                self.eat(b':')?;
                self.ws();
                match key {
                    b"uid" => {
                        if uid.is_some() || self.peek() != Some(b'"') {
                            // A repeated uid, or a number, null, … : the general parser's call.
                            return None;
                        }
                        let (v, plain) = self.string()?;
                        if !plain {
                            return None;
                        }
                        // SAFETY: a plain string's bytes are all printable ASCII
                        // (`string` stops at anything else), so they are valid UTF-8.
                        uid = Some(unsafe { std::str::from_utf8_unchecked(v) });
                    }
                    b"cmd" => {
                        cmd = true;
                        self.value(1)?;
                    }
                    _ => self.value(1)?,
                }
                self.ws();
                if self.eat(b',').is_some() {
                    continue;
                }
                self.eat(b'}')?;
                break;
            }
        }
        self.ws();
        if self.i != self.b.len() {
            return None;
        }
        Some(match (cmd, uid) {
            (true, _) => Scan::Cmd,
            (false, Some(u)) => Scan::Uid(u),
            (false, None) => Scan::NoUid,
        })
    }

    /// A string; returns its raw contents (between the quotes) and whether it had no escape.
    /// A non-ASCII byte in it is left to the general parser.
    #[inline(always)]
    fn string(&mut self) -> Option<(&'a [u8], bool)> {
        self.eat(b'"')?;
        let start = self.i;
        let mut plain = true;
        loop {
            // Printable ASCII runs to the next quote, backslash or other byte.
            let rest = self.b.get(self.i..)?;
            let k = rest.iter().position(|&c| STOP[usize::from(c)])?;
            self.i += k + 1;
            match rest[k] {
                b'"' => return Some((&self.b[start..self.i - 1], plain)),
                b'\\' => {
                    plain = false;
                    match self.peek()? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.i += 1,
                        b'u' => {
                            let hex = self.b.get(self.i + 1..self.i + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.i += 5;
                        }
                        _ => return None,
                    }
                }
                // A control byte (not JSON) or a non-ASCII one.
                _ => return None,
            }
        }
    }

    /// Any value, nested at `depth`.
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > MAX_DEPTH {
            return None;
        }
        match self.peek()? {
            b'"' => self.string().map(|_| ()),
            b'{' => {
                self.i += 1;
                self.items(b'}', |s| {
                    s.string()?;
                    s.ws();
                    s.eat(b':')?;
                    s.ws();
                    s.value(depth + 1)
                })
            }
            b'[' => {
                self.i += 1;
                self.items(b']', |s| s.value(depth + 1))
            }
            b't' => self.word(b"true"),
            b'f' => self.word(b"false"),
            b'n' => self.word(b"null"),
            _ => self.number(),
        }
    }

    /// The comma-separated items of an object or array, after its opening bracket, through
    /// `close`.
    fn items(&mut self, close: u8, mut item: impl FnMut(&mut Self) -> Option<()>) -> Option<()> {
        self.ws();
        if self.eat(close).is_some() {
            return Some(());
        }
        loop {
            self.ws();
            item(self)?;
            self.ws();
            if self.eat(b',').is_none() {
                return self.eat(close);
            }
        }
    }

    fn word(&mut self, w: &[u8]) -> Option<()> {
        if self.b[self.i..].starts_with(w) {
            self.i += w.len();
            Some(())
        } else {
            None
        }
    }

    /// `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`
    fn number(&mut self) -> Option<()> {
        let _ = self.eat(b'-');
        match self.peek()? {
            b'0' => self.i += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.').is_some() {
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.i += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.i += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        let rest = self.b.get(self.i..).unwrap_or_default();
        self.i += rest
            .iter()
            .position(|c| !c.is_ascii_digit())
            .unwrap_or(rest.len());
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.i;
        self.digits();
        (self.i > start).then_some(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_lines() {
        assert_eq!(scan(br#"{"uid":"u1","t":123}"#), Scan::Uid("u1"));
        assert_eq!(
            scan(br#" { "to" : [1, 2.5e-3, -0, true, null, {"a":[]}], "uid" : "" } "#),
            Scan::Uid("")
        );
        assert_eq!(scan(br#"{"a":"x\/y\u00e9\n"}"#), Scan::NoUid);
        assert_eq!(scan(br#"{"cmd":"all","uid":"x"}"#), Scan::Cmd);
        assert_eq!(scan(b"{}\r"), Scan::NoUid);
    }

    #[test]
    fn unsure_of_anything_unusual() {
        for line in [
            &br#"{"uid":123}"#[..],
            br#"{"uid":"a\"b"}"#,
            br#"{"u\u0069d":"x"}"#,
            br#"{"uid":"x","uid":"y"}"#,
            "{\"uid\":\"\u{e9}\"}".as_bytes(),
            br#"{"uid":"x"} {}"#,
            br#"{"uid":"x",}"#,
            br#"{"a":01}"#,
            br#"{"a":1.}"#,
            br#"{"a":tru}"#,
            br#"{"a":"\x"}"#,
            br#"{"a":"\u12"}"#,
            b"{\"a\":\"\x01\"}",
            br#"["uid"]"#,
            b"",
            br#"{"a":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]}"#,
        ] {
            assert_eq!(
                scan(line),
                Scan::Unsure,
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }
}
