//! The HTTP port: request parsing (httparse for the head and chunk sizes), form decoding
//! (`application/x-www-form-urlencoded` and the `multipart/form-data` that PHP's curl sends for
//! an array of fields) and the seed's publish API.
//!
//! Parsing is a pure function of the bytes received so far, so the event loop can call it again
//! after every read and a request split across any number of reads parses the same.

use memchr::memmem;

/// A complete request.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Request {
    /// `GET`, `POST`, …
    pub method: String,
    /// Path without the query.
    pub path: String,
    /// Raw query string (after `?`).
    pub query: String,
    /// `Content-Type`, its type, subtype and parameter names lower-cased, parameter values
    /// (such as a multipart boundary, which is case-sensitive) as sent.
    pub content_type: String,
    /// `Authorization` header value.
    pub authorization: Option<String>,
    /// `Origin` header value (Socket.IO's CORS answers echo it).
    pub origin: Option<String>,
    /// `Upgrade: websocket` was asked for (the Socket.IO port upgrades such requests).
    pub upgrade: bool,
    /// `Sec-WebSocket-Key`, for the upgrade.
    pub ws_key: Option<String>,
    /// `Sec-WebSocket-Version` is 13.
    pub ws_version_ok: bool,
    /// `Access-Control-Request-Headers`, for a CORS preflight.
    pub request_headers: Option<String>,
    /// The body, de-chunked.
    pub body: Vec<u8>,
    /// Whether the connection stays open after the response.
    pub keep_alive: bool,
}

/// The parser's answer for the bytes so far.
#[derive(Debug, PartialEq, Eq)]
// A parse result lives on the stack for one call; boxing the request would cost an allocation
// per request for nothing.
#[allow(clippy::large_enum_variant)]
pub enum Parsed {
    /// More bytes are needed; `continue_100` when the client waits for `100 Continue`.
    Partial {
        /// Send `HTTP/1.1 100 Continue` (once) before the client sends its body.
        continue_100: bool,
    },
    /// A whole request and how many bytes it took.
    Request(Request, usize),
    /// Malformed or too large: answer with `status` and close.
    Error {
        /// The status code, e.g. 400.
        status: u16,
        /// Why, for the body and the log.
        reason: &'static str,
    },
}

fn err(status: u16, reason: &'static str) -> Parsed {
    Parsed::Error { status, reason }
}

/// Parses one request from the front of `buf`.
pub fn parse_request(buf: &[u8], max_header: usize, max_body: usize) -> Parsed {
    parse_request_with(buf, max_header, max_body, &mut ChunkScan::default())
}

/// [`parse_request`], resuming the scan of a chunked body where the previous call for the same
/// request left it: the event loop parses again after every read, and the buffer of a request
/// still arriving only grows at its end, so each byte of chunk framing is read once, not once
/// per read. `scan` must be reset (`ChunkScan::default()`) for each new request; the answer is
/// the same as [`parse_request`]'s.
pub fn parse_request_with(
    buf: &[u8],
    max_header: usize,
    max_body: usize,
    scan: &mut ChunkScan,
) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; 48];
    let mut req = httparse::Request::new(&mut headers);
    let head = match req.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            if buf.len() > max_header {
                return err(431, "request head too large");
            }
            return Parsed::Partial {
                continue_100: false,
            };
        }
        Err(httparse::Error::TooManyHeaders) => return err(431, "too many headers"),
        Err(_) => return err(400, "malformed request"),
    };
    if head > max_header {
        return err(431, "request head too large");
    }
    let method = req.method.unwrap_or("").to_string();
    let (path, query) = split_target(req.path.unwrap_or("/"));
    let http10 = req.version == Some(0);
    let mut content_length: Option<usize> = None;
    let mut chunked = false;
    let mut te_seen = false;
    let mut conn_close = false;
    let mut conn_keep = false;
    let mut expect = false;
    let mut hosts = 0usize;
    let mut out = Request {
        method,
        path,
        query,
        ..Request::default()
    };
    for h in req.headers.iter() {
        let Ok(v) = std::str::from_utf8(h.value) else {
            return err(400, "header value is not text");
        };
        // Optional whitespace around a field value is spaces and tabs (RFC 9110 section 5.6.3),
        // nothing else.
        let v = v.trim_matches([' ', '\t']);
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            if content_length.is_some() {
                // Two Content-Length headers are a request-smuggling shape: refuse them all,
                // equal values included (RFC 9112 section 6.3 allows either answer).
                return err(400, "duplicate Content-Length");
            }
            let Some(n) = decimal_length(v) else {
                return err(400, "bad Content-Length");
            };
            content_length = Some(n);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te_seen || !v.eq_ignore_ascii_case("chunked") {
                return err(400, "unsupported Transfer-Encoding");
            }
            te_seen = true;
            chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for t in v.split(',') {
                let t = t.trim();
                conn_close |= t.eq_ignore_ascii_case("close");
                conn_keep |= t.eq_ignore_ascii_case("keep-alive");
            }
        } else if name.eq_ignore_ascii_case("content-type") {
            out.content_type = normalize_media_type(v);
        } else if name.eq_ignore_ascii_case("authorization") {
            out.authorization = Some(v.to_string());
        } else if name.eq_ignore_ascii_case("origin") {
            out.origin = Some(v.to_string());
        } else if name.eq_ignore_ascii_case("upgrade") {
            out.upgrade = v
                .split(',')
                .any(|t| t.trim().eq_ignore_ascii_case("websocket"));
        } else if name.eq_ignore_ascii_case("sec-websocket-key") {
            out.ws_key = Some(v.to_string());
        } else if name.eq_ignore_ascii_case("sec-websocket-version") {
            out.ws_version_ok = v == "13";
        } else if name.eq_ignore_ascii_case("access-control-request-headers") {
            out.request_headers = Some(v.to_string());
        } else if name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if name.eq_ignore_ascii_case("expect") {
            expect = v.eq_ignore_ascii_case("100-continue");
        }
    }
    // RFC 9112 section 3.2: an HTTP/1.1 request has exactly one Host; no request has two.
    match (hosts, http10) {
        (0, false) => return err(400, "missing Host"),
        (0 | 1, _) => {}
        _ => return err(400, "more than one Host"),
    }
    if chunked && content_length.is_some() {
        return err(400, "both Content-Length and Transfer-Encoding");
    }
    // HTTP/1.0 persists only on request. A Transfer-Encoding in HTTP/1.0 means the framing
    // cannot be trusted (RFC 9112 section 6.1): the connection closes after the response.
    out.keep_alive = if http10 {
        conn_keep && !te_seen
    } else {
        !conn_close
    };
    let rest = &buf[head..];
    if chunked {
        return match dechunk(rest, max_body, max_header, scan) {
            Dechunk::Done(body, used) => {
                out.body = body;
                Parsed::Request(out, head + used)
            }
            Dechunk::Partial => Parsed::Partial {
                continue_100: expect,
            },
            Dechunk::TooLarge => err(413, "request body too large"),
            Dechunk::TrailersTooLarge => err(431, "trailer fields too large"),
            Dechunk::Bad => err(400, "malformed chunked body"),
        };
    }
    let len = content_length.unwrap_or(0);
    if len > max_body {
        return err(413, "request body too large");
    }
    if rest.len() < len {
        return Parsed::Partial {
            continue_100: expect,
        };
    }
    out.body = rest[..len].to_vec();
    Parsed::Request(out, head + len)
}

/// The path and the query of a request target. An absolute-form target
/// (`http://host:port/path?query`, RFC 9112 section 3.2.2; the scheme in any case) is routed
/// like its origin form: the scheme and authority are dropped, and an empty path is `/`.
/// Other forms (origin, asterisk) are split as they are.
fn split_target(target: &str) -> (String, String) {
    let after_scheme = ["http://", "https://"].iter().find_map(|scheme| {
        target
            .get(..scheme.len())
            .filter(|s| s.eq_ignore_ascii_case(scheme))
            .map(|_| &target[scheme.len()..])
    });
    let (path, query) = match after_scheme {
        Some(rest) => {
            let rest = &rest[rest.find(['/', '?']).unwrap_or(rest.len())..];
            let (p, q) = rest.split_once('?').unwrap_or((rest, ""));
            (if p.is_empty() { "/" } else { p }, q)
        }
        None => target.split_once('?').unwrap_or((target, "")),
    };
    (path.to_string(), query.to_string())
}

/// A `Content-Type` value with what RFC 9110 section 8.3.1 makes case-insensitive (the type,
/// the subtype and parameter names) lower-cased, and parameter values left as sent: a
/// multipart boundary must match the body byte for byte (RFC 2046 section 5.1.1), and
/// browsers write mixed-case ones (`----WebKitFormBoundaryAbC…`).
fn normalize_media_type(v: &str) -> String {
    let mut out = String::with_capacity(v.len());
    let mut in_value = false;
    let mut quoted = false;
    let mut escaped = false;
    for c in v.chars() {
        if quoted {
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                quoted = false;
            }
            out.push(c);
            continue;
        }
        match c {
            ';' => in_value = false,
            '=' if !in_value => in_value = true,
            '"' if in_value => quoted = true,
            _ => {}
        }
        out.push(if in_value { c } else { c.to_ascii_lowercase() });
    }
    out
}

/// A `Content-Length` value as RFC 9110 section 8.6 defines it, `1*DIGIT`: no sign, no
/// whitespace, no list (`3,3`), and small enough for a `usize`.
fn decimal_length(v: &str) -> Option<usize> {
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    v.parse().ok()
}

enum Dechunk {
    Done(Vec<u8>, usize),
    Partial,
    TooLarge,
    TrailersTooLarge,
    Bad,
}

/// Longest chunk-size line (size and extensions) accepted, complete or not.
const MAX_CHUNK_LINE: usize = 1024;
/// Longest trailer line accepted, complete or not.
const MAX_TRAILER_LINE: usize = 8192;
/// Chunk framing (size lines, extensions, line ends) may add an eighth of `max_body` plus this
/// many bytes to a chunked body's data: an ordinary client's chunks (kilobytes each) stay far
/// below it, while one-byte chunks, whose framing is five times their data, cannot make the
/// server buffer several times `max_body` before the body is known to be too large.
const CHUNK_OVERHEAD: usize = 16 * 1024;

/// The most bytes a chunked body (its chunks and their framing, up to the last chunk's line)
/// may take on the wire; past it the request is refused with 413.
pub fn chunked_wire_max(max_body: usize) -> usize {
    max_body
        .saturating_add(max_body / 8)
        .saturating_add(CHUNK_OVERHEAD)
}

/// The most bytes of one request the parser may answer [`Parsed::Partial`] for: a head within
/// `max_header`, a body within [`chunked_wire_max`] (a `Content-Length` body is smaller), an
/// incomplete chunk-size line, and trailer fields within `max_header`. The event loop may
/// buffer this much of a request (and must, for the parser to decide); beyond it the parser
/// has always answered, with the request or with an error.
pub fn request_max(max_header: usize, max_body: usize) -> usize {
    max_header
        .saturating_mul(2)
        .saturating_add(chunked_wire_max(max_body))
        .saturating_add(MAX_CHUNK_LINE)
}

/// How far a chunked body was read by an earlier call for the same request (see
/// [`parse_request_with`]).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ChunkScan {
    /// Offset (after the head) of the first chunk-size line not read yet, or of the trailer
    /// section once the last chunk was read.
    at: usize,
    /// Data bytes of the chunks before `at`.
    body: usize,
    /// The last chunk (`0`) was read: `at` is where the trailer section starts.
    last: bool,
}

/// Reads a chunked body: the chunks from where `scan` left off (never their data, only their
/// framing), then the trailer section; the data is gathered once, when the body is whole.
/// Decides as soon as it can: a chunk whose declared size takes the data past `max_body`, or
/// the body past [`chunked_wire_max`], is `TooLarge` before its data arrives.
fn dechunk(buf: &[u8], max_body: usize, max_trailers: usize, scan: &mut ChunkScan) -> Dechunk {
    let wire_max = chunked_wire_max(max_body);
    let (mut pos, mut body) = (scan.at, scan.body);
    while !scan.last {
        if pos > wire_max {
            return Dechunk::TooLarge;
        }
        // The same limits whatever the reads' boundaries: a line is measured, complete or not.
        let line_len = memchr::memchr(b'\n', &buf[pos..]).map(|i| i + 1);
        if line_len.unwrap_or(buf.len() - pos) > MAX_CHUNK_LINE {
            return Dechunk::Bad;
        }
        let (used, size) = match httparse::parse_chunk_size(&buf[pos..]) {
            Ok(httparse::Status::Complete(x)) => x,
            Ok(httparse::Status::Partial) => return Dechunk::Partial,
            Err(_) => return Dechunk::Bad,
        };
        if size == 0 {
            *scan = ChunkScan {
                at: pos + used,
                body,
                last: true,
            };
            break;
        }
        let size = usize::try_from(size).unwrap_or(usize::MAX);
        let end = (pos + used).saturating_add(size).saturating_add(2);
        if body.saturating_add(size) > max_body || end > wire_max {
            return Dechunk::TooLarge;
        }
        if buf.len() < end {
            return Dechunk::Partial;
        }
        if &buf[end - 2..end] != b"\r\n" {
            return Dechunk::Bad;
        }
        body += size;
        pos = end;
        *scan = ChunkScan {
            at: pos,
            body,
            last: false,
        };
    }
    // Trailer fields, then the empty line. Their section is bounded like a head, and is
    // measured first, complete or not, so its size decides the same way however it is read.
    let start = scan.at;
    pos = start;
    loop {
        let eol = memchr::memchr(b'\n', &buf[pos..]);
        let line_end = eol.map_or(buf.len(), |e| pos + e + 1);
        if line_end - start > max_trailers {
            return Dechunk::TrailersTooLarge;
        }
        if line_end - pos > MAX_TRAILER_LINE {
            return Dechunk::Bad;
        }
        if eol.is_none() {
            return Dechunk::Partial;
        }
        let line = &buf[pos..line_end - 1];
        pos = line_end;
        if line.is_empty() || line == b"\r" {
            return Dechunk::Done(gather_chunks(&buf[..start], scan.body), pos);
        }
    }
}

/// The data of the chunks in `framed` (checked by [`dechunk`]), `len` bytes in all.
fn gather_chunks(framed: &[u8], len: usize) -> Vec<u8> {
    let mut body = Vec::with_capacity(len);
    let mut pos = 0;
    while let Ok(httparse::Status::Complete((used, size))) =
        httparse::parse_chunk_size(&framed[pos..])
    {
        let size = size as usize;
        if size == 0 {
            break;
        }
        pos += used;
        body.extend_from_slice(&framed[pos..pos + size]);
        pos += size + 2;
    }
    body
}

/// The request's parameters as the seed reads them: the POST fields if there are any, else the
/// query string's (`$_POST = $_POST ? $_POST : $_GET`).
pub fn params(req: &Request) -> Result<Vec<(String, String)>, &'static str> {
    let mut post = Vec::new();
    if req.method == "POST" && !req.body.is_empty() {
        if req.content_type.starts_with("multipart/form-data") {
            post = multipart(&req.content_type, &req.body)?;
        } else if req.content_type.is_empty()
            || req
                .content_type
                .starts_with("application/x-www-form-urlencoded")
        {
            post = form_urlencoded::parse(&req.body).into_owned().collect();
        }
    }
    if !post.is_empty() {
        return Ok(post);
    }
    Ok(form_urlencoded::parse(req.query.as_bytes())
        .into_owned()
        .collect())
}

fn multipart(content_type: &str, body: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    let boundary = content_type
        .split(';')
        .filter_map(|p| p.trim().strip_prefix("boundary="))
        .next()
        .map(|b| b.trim_matches('"'))
        .filter(|b| !b.is_empty() && b.len() <= 200)
        .ok_or("multipart body without boundary")?;
    let delim = format!("--{boundary}");
    let finder = memmem::Finder::new(delim.as_bytes());
    let mut out = Vec::new();
    let mut pos = finder.find(body).ok_or("multipart delimiter missing")? + delim.len();
    loop {
        let rest = &body[pos..];
        if rest.starts_with(b"--") {
            return Ok(out);
        }
        let rest = rest.strip_prefix(b"\r\n").ok_or("malformed multipart")?;
        let start = body.len() - rest.len();
        let head_end = memmem::find(rest, b"\r\n\r\n").ok_or("malformed multipart part")?;
        let head =
            std::str::from_utf8(&rest[..head_end]).map_err(|_| "multipart header is not text")?;
        let name = head
            .split("\r\n")
            .filter(|l| l.to_ascii_lowercase().starts_with("content-disposition:"))
            .flat_map(|l| l.split(';'))
            .filter_map(|p| p.trim().strip_prefix("name="))
            .map(|n| n.trim_matches('"').to_string())
            .next()
            .ok_or("multipart part without name")?;
        let vstart = start + head_end + 4;
        let end = finder
            .find(&body[vstart..])
            .ok_or("multipart part not terminated")?;
        let value = &body[vstart..vstart + end];
        let value = value.strip_suffix(b"\r\n").unwrap_or(value);
        out.push((name, String::from_utf8_lossy(value).into_owned()));
        pos = vstart + end + delim.len();
    }
}

/// The token of an `Authorization` header value in the `Bearer` scheme (RFC 6750 section
/// 2.1), or `None` for another scheme or a missing token. The scheme's name matches in any
/// case (`bearer`, `BEARER`: RFC 9110 section 11.1); one or more spaces separate it from the
/// token, and spaces or tabs around the token are dropped.
pub fn bearer_token(authorization: &str) -> Option<&str> {
    let value = authorization.trim_matches([' ', '\t']);
    let (scheme, rest) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("Bearer") {
        return None;
    }
    let token = rest.trim_matches([' ', '\t']);
    (!token.is_empty()).then_some(token)
}

/// The segments of a request path, each percent-decoded on its own (RFC 3986 sections 3.3
/// and 2.1): one leading `/` is dropped and the rest is split at every `/`, so
/// `/api/groups/g1` gives `["api", "groups", "g1"]`, `/` one empty segment and `""` none.
/// An encoded slash (`%2F`) stays inside its segment, and `+` and `&` are themselves (not a
/// space and a field separator, as in a query string). A `%` not followed by two hex digits
/// is kept as it is. Bytes that do not form UTF-8 once decoded become U+FFFD, as with the
/// query string: a uid or group name is text, so such a segment names nothing that exists.
pub fn path_segments(path: &str) -> Vec<String> {
    if path.is_empty() {
        return Vec::new();
    }
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split('/').map(percent_decode).collect()
}

/// `s` with each `%XX` (two hex digits) replaced by that byte; see [`path_segments`].
fn percent_decode(s: &str) -> String {
    let hex = |b: Option<&u8>| b.and_then(|b| char::from(*b).to_digit(16));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            if let (Some(hi), Some(lo)) = (hex(b.get(i + 1)), hex(b.get(i + 2))) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(text) => text,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// PHP's `htmlspecialchars` with its default flags (ENT_QUOTES since PHP 8.1).
pub fn html_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 16);
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#039;"),
            c => out.push(c),
        }
    }
    out
}

/// A response with a body. Whether the connection stays open is always said, with
/// `Connection: keep-alive` or `Connection: close`: an HTTP/1.1 client needs only the
/// latter, but an HTTP/1.0 client kept open needs the former to know it may send another
/// request (RFC 9112 section 9.3 and its appendix C.2.2), and the header costs an HTTP/1.1
/// client nothing.
pub fn response(
    status: u16,
    content_type: &str,
    body: &[u8],
    keep_alive: bool,
    extra: &str,
) -> Vec<u8> {
    let mut v = format!(
        "HTTP/1.1 {status} {}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: {}\r\n{extra}\r\n",
        reason(status),
        body.len(),
        if keep_alive { "keep-alive" } else { "close" }
    )
    .into_bytes();
    v.extend_from_slice(body);
    v
}

/// The reason phrase of every status Herald answers with (RFC 9110 §15).
pub fn reason(status: u16) -> &'static str {
    match status {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "Internal Server Error",
    }
}

/// A plain-text response.
pub fn text(status: u16, body: &str, keep_alive: bool) -> Vec<u8> {
    response(
        status,
        "text/plain; charset=utf-8",
        body.as_bytes(),
        keep_alive,
        "",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(b: &[u8]) -> Parsed {
        parse_request(b, 8192, 1024)
    }

    #[test]
    fn get_with_query() {
        let head: &[u8] = b"GET /?type=publish&to=u1&content=a%20b HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut b = head.to_vec();
        b.extend_from_slice(b"GET");
        let Parsed::Request(r, n) = parse(&b) else {
            panic!()
        };
        assert_eq!(n, head.len());
        assert_eq!(r.path, "/");
        assert!(r.keep_alive);
        let p = params(&r).unwrap();
        assert_eq!(p[2], ("content".into(), "a b".into()));
    }

    #[test]
    fn post_form_and_partial_body() {
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 12\r\n\r\ntype=publish";
        assert_eq!(
            parse(&req[..req.len() - 1]),
            Parsed::Partial {
                continue_100: false
            }
        );
        let Parsed::Request(r, n) = parse(req) else {
            panic!()
        };
        assert_eq!(n, req.len());
        assert_eq!(params(&r).unwrap(), vec![("type".into(), "publish".into())]);
    }

    #[test]
    fn chunked_framing_is_bounded_whatever_the_reads() {
        // Endless trailer fields: refused once past the bound, not buffered forever.
        let mut req =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n".to_vec();
        for _ in 0..2000 {
            req.extend_from_slice(b"X: y\r\n");
        }
        assert!(matches!(parse(&req), Parsed::Error { .. }));
        // A long chunk extension is refused whether or not its line is complete.
        let mut long =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;a=".to_vec();
        long.extend(std::iter::repeat_n(b'x', 1100));
        let cut = long.len();
        long.extend_from_slice(b"\r\nhello\r\n0\r\n\r\n");
        assert!(matches!(parse(&long), Parsed::Error { .. }));
        assert!(matches!(parse(&long[..cut]), Parsed::Error { .. }));
    }

    /// `body` in chunks of `chunk` bytes after a chunked request head, last chunk included.
    fn chunked_request(body: &[u8], chunk: usize, trailers: &[u8]) -> Vec<u8> {
        let mut req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
        for c in body.chunks(chunk) {
            req.extend_from_slice(format!("{:x};e=1\r\n", c.len()).as_bytes());
            req.extend_from_slice(c);
            req.extend_from_slice(b"\r\n");
        }
        req.extend_from_slice(b"0\r\n");
        req.extend_from_slice(trailers);
        req.extend_from_slice(b"\r\n");
        req
    }

    /// Parses `req` as the event loop does: again after each read of `step` bytes, resuming the
    /// chunk scan; returns the first decision and the bytes read by then.
    fn parse_in_reads(
        req: &[u8],
        step: usize,
        max_header: usize,
        max_body: usize,
    ) -> (Parsed, usize) {
        let mut scan = ChunkScan::default();
        let mut n = 0;
        loop {
            n = (n + step).min(req.len());
            match parse_request_with(&req[..n], max_header, max_body, &mut scan) {
                Parsed::Partial { .. } if n < req.len() => {
                    assert!(
                        n <= request_max(max_header, max_body),
                        "Partial after {n} bytes, over request_max"
                    );
                }
                p => return (p, n),
            }
        }
    }

    #[test]
    fn a_resumed_chunk_scan_parses_like_a_fresh_one_whatever_the_reads() {
        let body: Vec<u8> = (0..3000u32).map(|i| b'a' + (i % 26) as u8).collect();
        for chunk in [1, 7, 100, 4096] {
            for trailers in [&b""[..], b"X-A: 1\r\nX-B: 2\r\n"] {
                let req = chunked_request(&body, chunk, trailers);
                let fresh = parse_request(&req, 8192, 1 << 20);
                let Parsed::Request(ref r, used) = fresh else {
                    panic!("{chunk}: {fresh:?}")
                };
                assert_eq!((r.body.as_slice(), used), (body.as_slice(), req.len()));
                for step in [1, 2, 3, 5, 64, 1000, req.len()] {
                    let (p, _) = parse_in_reads(&req, step, 8192, 1 << 20);
                    assert_eq!(p, fresh, "chunks of {chunk}, reads of {step}");
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_over_max_body_are_refused_as_soon_as_that_is_known() {
        let max_body = 64 * 1024;
        let big = vec![b'x'; max_body + 1];
        // Ordinary chunks: refused at the chunk that takes the data over max_body, from its
        // size line, before its data.
        let req = chunked_request(&big, 4096, b"");
        let (p, n) = parse_in_reads(&req, 512, 8192, max_body);
        assert!(matches!(p, Parsed::Error { status: 413, .. }), "{p:?}");
        assert!(n < max_body + 1024, "decided after {n} bytes");
        // One chunk declaring more than max_body: refused from its size line.
        let head = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
        let mut one = head.to_vec();
        one.extend_from_slice(format!("{:x}\r\n", max_body + 1).as_bytes());
        assert!(matches!(
            parse_request(&one, 8192, max_body),
            Parsed::Error { status: 413, .. }
        ));
        // Tiny chunks whose framing outweighs their data: refused once the wire bound is
        // passed, although the data is still under max_body.
        let req = chunked_request(&vec![b'y'; max_body], 1, b"");
        let (p, n) = parse_in_reads(&req, 4096, 8192, max_body);
        assert!(matches!(p, Parsed::Error { status: 413, .. }), "{p:?}");
        assert!(n <= request_max(8192, max_body), "decided after {n} bytes");
        // Under every bound: served.
        let ok = chunked_request(&vec![b'z'; max_body], 4096, b"");
        assert!(matches!(
            parse_in_reads(&ok, 1000, 8192, max_body).0,
            Parsed::Request(..)
        ));
        // A trailer flood: 431 once the trailer section passes max_header.
        let mut flood = chunked_request(b"abc", 3, b"");
        flood.truncate(flood.len() - 2);
        for i in 0..10_000 {
            flood.extend_from_slice(format!("X-T{i}: vvvvvvvvvvvvvvvvvvvv\r\n").as_bytes());
        }
        let (p, n) = parse_in_reads(&flood, 700, 8192, max_body);
        assert!(matches!(p, Parsed::Error { status: 431, .. }), "{p:?}");
        assert!(n < 8192 + 1024, "decided after {n} bytes");
    }

    #[test]
    fn chunked_body() {
        let req = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\ntype=\r\n7\r\npublish\r\n0\r\n\r\n";
        let Parsed::Request(r, n) = parse(req) else {
            panic!()
        };
        assert_eq!(n, req.len());
        assert_eq!(r.body, b"type=publish");
        assert!(matches!(
            parse(&req[..req.len() - 3]),
            Parsed::Partial { .. }
        ));
    }

    #[test]
    fn smuggling_shapes_and_limits() {
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Parsed::Error {
                status: 400,
                ..
            }
        ));
        assert!(matches!(
            parse(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
            ),
            Parsed::Error { status: 400, .. }
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"),
            Parsed::Error { status: 413, .. }
        ));
        assert!(matches!(
            parse(b"\x00\x01garbage\r\n\r\n"),
            Parsed::Error { .. }
        ));
        assert!(matches!(
            parse(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Parsed::Error { .. }
        ));
    }

    #[test]
    fn http_1_0_persistence() {
        let keep = |req: &[u8]| match parse(req) {
            Parsed::Request(r, _) => r.keep_alive,
            other => panic!("{other:?}"),
        };
        assert!(!keep(b"GET / HTTP/1.0\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n"));
        assert!(keep(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"));
        assert!(!keep(
            b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        ));
        // Transfer-Encoding in HTTP/1.0: served, then closed, whatever Connection says.
        let te10 = b"POST / HTTP/1.0\r\nConnection: keep-alive\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        assert!(!keep(te10));
        let Parsed::Request(r, _) = parse(te10) else {
            panic!()
        };
        assert_eq!(r.body, b"abc");
    }

    #[test]
    fn responses_say_whether_the_connection_stays() {
        assert_eq!(
            response(200, "text/plain", b"ok", true, "X-A: b\r\n"),
            b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\nX-A: b\r\n\r\nok"
        );
        assert_eq!(
            text(404, "no\n", false),
            b"HTTP/1.1 404 Not Found\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\nConnection: close\r\n\r\nno\n"
        );
    }

    #[test]
    fn host_is_required_once_in_http_1_1() {
        let with = |version: &str, hosts: &str| {
            parse(format!("GET / HTTP/{version}\r\n{hosts}\r\n").as_bytes())
        };
        assert!(matches!(with("1.1", "Host: x\r\n"), Parsed::Request(..)));
        assert!(matches!(with("1.1", "host: \r\n"), Parsed::Request(..)));
        assert!(matches!(with("1.0", ""), Parsed::Request(..)));
        assert!(matches!(with("1.0", "Host: x\r\n"), Parsed::Request(..)));
        assert_eq!(with("1.1", ""), err(400, "missing Host"));
        for two in ["Host: x\r\nHost: x\r\n", "Host: x\r\nHOST: y\r\n"] {
            for version in ["1.0", "1.1"] {
                assert_eq!(
                    with(version, two),
                    err(400, "more than one Host"),
                    "{version} {two:?}"
                );
            }
        }
    }

    #[test]
    fn absolute_form_is_routed_like_origin_form() {
        let target = |t: &str| {
            let req = format!("GET {t} HTTP/1.1\r\nHost: h\r\n\r\n");
            match parse(req.as_bytes()) {
                Parsed::Request(r, _) => (r.path, r.query),
                other => panic!("{t}: {other:?}"),
            }
        };
        let pq = |p: &str, q: &str| (p.to_string(), q.to_string());
        assert_eq!(target("/?type=publish"), pq("/", "type=publish"));
        assert_eq!(
            target("http://h:2121/?type=publish&to=1"),
            pq("/", "type=publish&to=1")
        );
        assert_eq!(
            target("HTTPS://h/api/online/u%2F1?x"),
            pq("/api/online/u%2F1", "x")
        );
        assert_eq!(target("http://user@h:1/a/b"), pq("/a/b", ""));
        assert_eq!(target("http://h:2121"), pq("/", ""));
        assert_eq!(target("http://h?type=publish"), pq("/", "type=publish"));
        // Not http(s): left as it is (and answered 404 by the router).
        assert_eq!(target("ftp://h/x"), pq("ftp://h/x", ""));
        assert_eq!(target("*"), pq("*", ""));
    }

    #[test]
    fn content_length_is_one_or_more_digits() {
        let with = |v: &str| {
            parse(
                format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\nabc").as_bytes(),
            )
        };
        for good in ["3", "003", " 3", "3\t"] {
            let Parsed::Request(r, _) = with(good) else {
                panic!("{good:?}: {:?}", with(good))
            };
            assert_eq!(r.body, b"abc", "{good:?}");
        }
        for bad in [
            "+3", "-1", "3,3", "3, 3", "3 3", "0x3", "3.0", "", "\u{a0}3", "٣",
        ] {
            assert_eq!(with(bad), err(400, "bad Content-Length"), "{bad:?}");
        }
        let huge = "9".repeat(40);
        assert!(matches!(with(&huge), Parsed::Error { .. }));
        // Repeated, even with equal values: refused.
        assert_eq!(
            parse(
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\nabc"
            ),
            err(400, "duplicate Content-Length")
        );
    }

    #[test]
    fn multipart_like_php_curl() {
        let body = b"--------------------------abc\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\npublish\r\n--------------------------abc\r\nContent-Disposition: form-data; name=\"content\"\r\n\r\nhello\r\nworld\r\n--------------------------abc--\r\n";
        let r = Request {
            method: "POST".into(),
            content_type: "multipart/form-data; boundary=------------------------abc".into(),
            body: body.to_vec(),
            ..Request::default()
        };
        assert_eq!(
            params(&r).unwrap(),
            vec![
                ("type".into(), "publish".into()),
                ("content".into(), "hello\r\nworld".into())
            ]
        );
    }

    #[test]
    fn bearer_scheme_in_any_case() {
        for v in [
            "Bearer s3cret",
            "bearer s3cret",
            "BEARER s3cret",
            "bEaReR   s3cret \t",
        ] {
            assert_eq!(bearer_token(v), Some("s3cret"), "{v:?}");
        }
        assert_eq!(bearer_token("Bearer a b"), Some("a b"));
        for v in [
            "",
            "Bearer",
            "Bearer ",
            "Bearer \t ",
            "Bearers3cret",
            "Bearer\ts3cret",
            "Basic s3cret",
            "Bear s3cret",
            "Bearer-x s3cret",
        ] {
            assert_eq!(bearer_token(v), None, "{v:?}");
        }
    }

    #[test]
    fn media_type_keeps_parameter_values() {
        assert_eq!(
            normalize_media_type("Multipart/Form-Data; Boundary=----WebKitFormBoundaryAbC"),
            "multipart/form-data; boundary=----WebKitFormBoundaryAbC"
        );
        assert_eq!(
            normalize_media_type("TEXT/Plain;CharSet=\"A;B=\\\"C\\\"\";X=Y"),
            "text/plain;charset=\"A;B=\\\"C\\\"\";x=Y"
        );
        assert_eq!(
            normalize_media_type("Application/X-WWW-Form-URLEncoded"),
            "application/x-www-form-urlencoded"
        );
    }

    #[test]
    fn multipart_boundary_is_case_sensitive() {
        let boundary = "----WebKitFormBoundaryAbC7dEf9GhIjKlMn";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"type\"\r\n\r\npublish\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"to\"\r\n\r\nu1\r\n--{boundary}--\r\n"
        );
        for ctype in [
            format!("multipart/form-data; boundary={boundary}"),
            format!("Multipart/Form-Data; BOUNDARY=\"{boundary}\""),
        ] {
            let req = format!(
                "POST / HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            );
            let Parsed::Request(r, _) = parse_request(req.as_bytes(), 8192, 4096) else {
                panic!("{ctype}")
            };
            assert_eq!(
                params(&r).unwrap(),
                vec![
                    ("type".into(), "publish".into()),
                    ("to".into(), "u1".into())
                ],
                "{ctype}"
            );
        }
        // The boundary in another case is another boundary: the body has no delimiter.
        let r = Request {
            method: "POST".into(),
            content_type: format!("multipart/form-data; boundary={}", boundary.to_lowercase()),
            body: body.into_bytes(),
            ..Request::default()
        };
        assert_eq!(params(&r), Err("multipart delimiter missing"));
    }

    #[test]
    fn path_segments_decode_each_segment_alone() {
        let segs = |p: &str| path_segments(p);
        assert_eq!(segs("/api/online/a&b"), ["api", "online", "a&b"]);
        assert_eq!(segs("/api/online/a%26b"), ["api", "online", "a&b"]);
        assert_eq!(segs("/api/online/a+b"), ["api", "online", "a+b"]);
        assert_eq!(segs("/api/online/a%2Bb"), ["api", "online", "a+b"]);
        assert_eq!(segs("/api/online/a%20b"), ["api", "online", "a b"]);
        assert_eq!(
            segs("/api/groups/g%2F1/members/u%2f2"),
            ["api", "groups", "g/1", "members", "u/2"]
        );
        assert_eq!(segs("/a=b;c?d"), ["a=b;c?d"]);
        assert_eq!(segs("/%E6%95%B0%E6%8D%AE"), ["数据"]);
        // A `%` that starts no escape is itself.
        assert_eq!(segs("/100%/%zz/%4/%"), ["100%", "%zz", "%4", "%"]);
        // Not UTF-8 once decoded: replaced, never a panic.
        assert_eq!(segs("/%FF%FEx"), ["\u{fffd}\u{fffd}x"]);
        assert_eq!(segs("/%E6%95"), ["\u{fffd}"]);
        // Empty segments are kept; the leading slash is not a segment.
        assert_eq!(segs("/a//b/"), ["a", "", "b", ""]);
        assert_eq!(segs("/"), [""]);
        assert_eq!(segs("a/b"), ["a", "b"]);
        assert!(segs("").is_empty());
    }

    #[test]
    fn escaping_like_php() {
        assert_eq!(
            html_escape(r#"<a href="x">Tom & 'Jerry'</a>"#),
            "&lt;a href=&quot;x&quot;&gt;Tom &amp; &#039;Jerry&#039;&lt;/a&gt;"
        );
    }
}
