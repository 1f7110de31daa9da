//! An Engine.IO request: its path, its query (`EIO`, `transport`, `sid`), the protocol's error
//! answers, and the CORS headers of a page served from another origin.

use super::{sid_worker, EioVersion};
use thiserror::Error;

/// An Engine.IO transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// HTTP long-polling (`transport=polling`).
    Polling,
    /// WebSocket (`transport=websocket`).
    Websocket,
}

/// The Engine.IO parameters of a request's query string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EioQuery {
    /// `EIO`.
    pub version: EioVersion,
    /// `transport`.
    pub transport: Transport,
    /// `sid`, once the session exists.
    pub sid: Option<String>,
    /// `b64=1` (v3): the client wants binary as base64 (this server always sends text).
    pub b64: bool,
    /// Every parameter, decoded, in order (for `token` and application parameters).
    pub params: Vec<(String, String)>,
}

impl EioQuery {
    /// The first value of parameter `name`.
    pub fn get(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The error codes of the reference server's 400 answers (body
/// `{"code":N,"message":"…"}`, see [`ErrorCode::body`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum ErrorCode {
    /// 0: no or unknown `transport`.
    #[error("Transport unknown")]
    UnknownTransport,
    /// 1: `sid` names no session (or the session is gone).
    #[error("Session ID unknown")]
    UnknownSid,
    /// 2: a handshake with a method other than GET.
    #[error("Bad handshake method")]
    BadHandshakeMethod,
    /// 3: anything else malformed (a second pending GET, a JSONP request…).
    #[error("Bad request")]
    BadRequest,
    /// 4: refused (origin or authentication).
    #[error("Forbidden")]
    Forbidden,
    /// 5: no or unknown `EIO`.
    #[error("Unsupported protocol version")]
    UnsupportedVersion,
}

impl ErrorCode {
    /// The numeric code.
    pub fn code(self) -> u8 {
        match self {
            Self::UnknownTransport => 0,
            Self::UnknownSid => 1,
            Self::BadHandshakeMethod => 2,
            Self::BadRequest => 3,
            Self::Forbidden => 4,
            Self::UnsupportedVersion => 5,
        }
    }

    /// The JSON body of the 400 (403 for `Forbidden`) answer.
    pub fn body(self) -> String {
        format!("{{\"code\":{},\"message\":\"{}\"}}", self.code(), self)
    }

    /// The HTTP status of the answer.
    pub fn status(self) -> u16 {
        if self == Self::Forbidden {
            403
        } else {
            400
        }
    }
}

/// Splits a request target into its path and query (`""` when there is none).
pub fn split_target(target: &str) -> (&str, &str) {
    target.split_once('?').unwrap_or((target, ""))
}

/// Whether `path` is the Engine.IO endpoint under `prefix` (`/socket.io/`): the prefix
/// itself, or without its trailing slash.
pub fn is_engine_path(path: &str, prefix: &str) -> bool {
    path == prefix || path == prefix.trim_end_matches('/')
}

/// Parses and checks the Engine.IO parameters of a query string (`EIO=4&transport=polling&
/// t=…&sid=…`). A missing `EIO` means v3, as on the reference servers. JSONP polling (`j=`, used only by v3 browsers without XHR) is refused with
/// [`ErrorCode::BadRequest`].
pub fn parse_query(query: &str) -> Result<EioQuery, ErrorCode> {
    let params: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect();
    let get = |name: &str| {
        params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    // The reference servers take a request without `EIO` as v3; real clients always send it.
    let version = match get("EIO") {
        None => EioVersion::V3,
        Some(v) => EioVersion::from_param(v).ok_or(ErrorCode::UnsupportedVersion)?,
    };
    let transport = match get("transport") {
        Some("polling") => Transport::Polling,
        Some("websocket") => Transport::Websocket,
        _ => return Err(ErrorCode::UnknownTransport),
    };
    if get("j").is_some() {
        return Err(ErrorCode::BadRequest);
    }
    let sid = match get("sid") {
        None => None,
        Some(s) if sid_worker(s).is_some() => Some(s.to_string()),
        Some(_) => return Err(ErrorCode::UnknownSid),
    };
    let b64 = matches!(get("b64"), Some(v) if !v.is_empty() && v != "0");
    Ok(EioQuery {
        version,
        transport,
        sid,
        b64,
        params,
    })
}

/// An `Origin` value safe to echo: visible ASCII only, bounded, no separators that could end
/// a header. Anything else is treated as absent.
fn clean_origin(origin: Option<&str>) -> Option<&str> {
    origin
        .filter(|o| !o.is_empty() && o.len() <= 512 && o.bytes().all(|b| (0x21..0x7f).contains(&b)))
}

/// CORS headers for a polling response (GET, POST, or handshake), as the reference server
/// sends them: with an `Origin`, echo it, allow credentials (the clients send cookies with
/// `withCredentials`) and mark the answer as varying by origin; without one, `*`.
pub fn cors_headers(origin: Option<&str>) -> Vec<(&'static str, String)> {
    match clean_origin(origin) {
        Some(o) => vec![
            ("Access-Control-Allow-Origin", o.to_string()),
            ("Access-Control-Allow-Credentials", "true".to_string()),
            ("Vary", "Origin".to_string()),
        ],
        None => vec![("Access-Control-Allow-Origin", "*".to_string())],
    }
}

/// Headers for the answer (204) to a CORS preflight `OPTIONS`: [`cors_headers`] plus the
/// methods and, echoed when safe, the requested headers.
pub fn preflight_headers(
    origin: Option<&str>,
    request_headers: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut h = cors_headers(origin);
    h.push((
        "Access-Control-Allow-Methods",
        "GET, POST, OPTIONS".to_string(),
    ));
    let requested = request_headers.filter(|r| {
        r.len() <= 1024
            && r.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b',' || b == b' ')
    });
    h.push((
        "Access-Control-Allow-Headers",
        requested.unwrap_or("Content-Type").to_string(),
    ));
    h.push(("Access-Control-Max-Age", "86400".to_string()));
    h
}
