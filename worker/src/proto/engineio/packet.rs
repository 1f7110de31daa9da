//! Engine.IO packets and polling payloads, versions 3 and 4: one packet from text or a binary
//! frame, a payload of several packets from a polling body, and the open packet.

use super::{Transport, SEPARATOR};
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, Engine as _};
use serde_json::Value;
use thiserror::Error;

/// Base64 as engine.io reads it (Node's `Buffer.from(s, 'base64')`): padding optional.
pub(super) const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// The Engine.IO protocol revision of a session, from the `EIO` query parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EioVersion {
    /// `EIO=3`: socket.io-client 1.x and 2.x (Socket.IO protocol 4); the client pings.
    V3,
    /// `EIO=4`: socket.io-client 3.x and 4.x (Socket.IO protocol 5); the server pings.
    V4,
}

impl EioVersion {
    /// The version named by an `EIO` parameter value (`"3"` or `"4"`), else `None`.
    pub fn from_param(value: &str) -> Option<Self> {
        match value {
            "3" => Some(Self::V3),
            "4" => Some(Self::V4),
            _ => None,
        }
    }

    /// Whether the server sends the pings (v4) rather than answering the client's (v3).
    pub fn server_pings(self) -> bool {
        self == Self::V4
    }

    /// Default `(pingInterval, pingTimeout)` in milliseconds of the reference server of this
    /// generation (engine.io 3.x: 25 s / 5 s; engine.io 4.x+: 25 s / 20 s).
    pub fn default_ping_ms(self) -> (u64, u64) {
        match self {
            Self::V3 => (25_000, 5_000),
            Self::V4 => (25_000, 20_000),
        }
    }
}

/// An Engine.IO packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PacketType {
    /// `0`: the handshake, server to client.
    Open,
    /// `1`: close the session (or, in polling, the transport).
    Close,
    /// `2`: heartbeat request (server→client in v4, client→server in v3), or `2probe`.
    Ping,
    /// `3`: heartbeat answer, or `3probe`.
    Pong,
    /// `4`: application data (a Socket.IO packet).
    Message,
    /// `5`: the client switches the session to the probed transport.
    Upgrade,
    /// `6`: no operation; closes a pending poll during an upgrade.
    Noop,
}

impl PacketType {
    /// The type for a wire digit (`0`…`6` as a number), else `None`.
    pub fn from_u8(n: u8) -> Option<Self> {
        Some(match n {
            0 => Self::Open,
            1 => Self::Close,
            2 => Self::Ping,
            3 => Self::Pong,
            4 => Self::Message,
            5 => Self::Upgrade,
            6 => Self::Noop,
            _ => return None,
        })
    }

    /// The type for an ASCII digit (`'0'`…`'6'`), else `None`.
    pub fn from_char(c: char) -> Option<Self> {
        c.to_digit(10).and_then(|d| Self::from_u8(d as u8))
    }

    /// The type's number.
    pub fn as_u8(self) -> u8 {
        self as u8
    }

    /// The type's ASCII digit.
    pub fn as_char(self) -> char {
        (b'0' + self as u8) as char
    }
}

/// The data of an Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Text (possibly empty, as in a bare `2` ping).
    Text(String),
    /// Binary bytes.
    Binary(Vec<u8>),
}

/// One Engine.IO packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Its type.
    pub kind: PacketType,
    /// Its data.
    pub data: Data,
}

impl Packet {
    /// A packet with text data.
    pub fn text(kind: PacketType, data: impl Into<String>) -> Self {
        Self {
            kind,
            data: Data::Text(data.into()),
        }
    }

    /// A packet without data (`2`, `3`, `5`, `6`, `1`).
    pub fn empty(kind: PacketType) -> Self {
        Self::text(kind, String::new())
    }

    /// A message packet with text data.
    pub fn message(data: impl Into<String>) -> Self {
        Self::text(PacketType::Message, data)
    }

    /// The text data, or `None` for binary.
    pub fn as_text(&self) -> Option<&str> {
        match &self.data {
            Data::Text(s) => Some(s),
            Data::Binary(_) => None,
        }
    }

    /// Whether this is the upgrade probe `2probe`.
    pub fn is_probe_ping(&self) -> bool {
        self.kind == PacketType::Ping && self.as_text() == Some("probe")
    }

    /// The packet as text, as it goes into a polling payload or a WebSocket text frame:
    /// `4hello`; binary as `b<base64>` (v4) or `b<type><base64>` (v3).
    pub fn encode_text(&self, version: EioVersion) -> String {
        match &self.data {
            Data::Text(s) => {
                let mut out = String::with_capacity(1 + s.len());
                out.push(self.kind.as_char());
                out.push_str(s);
                out
            }
            Data::Binary(b) => {
                let mut out = String::from("b");
                if version == EioVersion::V3 {
                    out.push(self.kind.as_char());
                }
                STANDARD.encode_string(b, &mut out);
                out
            }
        }
    }
}

/// Why Engine.IO input was rejected. Any of these ends the session (the reference server
/// closes it with a "parse error").
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EioError {
    /// The body or frame exceeds the configured maximum.
    #[error("payload of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// An empty packet or payload.
    #[error("empty packet")]
    Empty,
    /// The type is not `0`…`6`.
    #[error("unknown packet type")]
    BadType,
    /// Text that is not UTF-8.
    #[error("text is not UTF-8")]
    Utf8,
    /// Invalid base64 after `b`.
    #[error("invalid base64 data")]
    Base64,
    /// A v3 length prefix that is missing, not a number, or disagrees with the data.
    #[error("bad length prefix in payload")]
    Length,
}

/// Decodes one packet in text form (a WebSocket text frame or one element of a payload).
pub fn decode_packet(version: EioVersion, s: &str) -> Result<Packet, EioError> {
    let mut chars = s.chars();
    let first = chars.next().ok_or(EioError::Empty)?;
    if first == 'b' {
        let rest = chars.as_str();
        let (kind, b64) = match version {
            EioVersion::V4 => (PacketType::Message, rest),
            EioVersion::V3 => {
                let mut c = rest.chars();
                let kind = c
                    .next()
                    .and_then(PacketType::from_char)
                    .ok_or(EioError::BadType)?;
                (kind, c.as_str())
            }
        };
        let bytes = B64_LENIENT.decode(b64).map_err(|_| EioError::Base64)?;
        return Ok(Packet {
            kind,
            data: Data::Binary(bytes),
        });
    }
    let kind = PacketType::from_char(first).ok_or(EioError::BadType)?;
    Ok(Packet::text(kind, chars.as_str()))
}

/// Decodes a WebSocket binary frame: v4 carries a message's bytes as they are; v3 puts the
/// packet type (as a number, not a digit) in the first byte.
pub fn decode_ws_binary(version: EioVersion, frame: &[u8]) -> Result<Packet, EioError> {
    match version {
        EioVersion::V4 => Ok(Packet {
            kind: PacketType::Message,
            data: Data::Binary(frame.to_vec()),
        }),
        EioVersion::V3 => {
            let (&t, rest) = frame.split_first().ok_or(EioError::Empty)?;
            Ok(Packet {
                kind: PacketType::from_u8(t).ok_or(EioError::BadType)?,
                data: Data::Binary(rest.to_vec()),
            })
        }
    }
}

/// One WebSocket frame's content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsFrame {
    /// A text frame.
    Text(String),
    /// A binary frame.
    Binary(Vec<u8>),
}

/// The WebSocket frame for a packet: text packets as [`Packet::encode_text`]; binary raw (v4)
/// or behind a type byte (v3).
pub fn encode_ws(version: EioVersion, p: &Packet) -> WsFrame {
    match (&p.data, version) {
        (Data::Text(_), _) => WsFrame::Text(p.encode_text(version)),
        (Data::Binary(b), EioVersion::V4) => WsFrame::Binary(b.clone()),
        (Data::Binary(b), EioVersion::V3) => {
            let mut out = Vec::with_capacity(1 + b.len());
            out.push(p.kind.as_u8());
            out.extend_from_slice(b);
            WsFrame::Binary(out)
        }
    }
}

/// Appends one already encoded text packet (`encoded`, e.g. `42["new_msg","hi"]`) to a
/// polling response body under construction: v4 puts `\x1e` between packets, v3 writes
/// `<UTF-16 length>:` before each. This lets a message encoded once be framed per session.
pub fn push_payload(version: EioVersion, out: &mut String, encoded: &str) {
    match version {
        EioVersion::V4 => {
            if !out.is_empty() {
                out.push(SEPARATOR);
            }
        }
        EioVersion::V3 => {
            out.push_str(&utf16_len(encoded).to_string());
            out.push(':');
        }
    }
    out.push_str(encoded);
}

/// Encodes packets as one polling response body. An empty list encodes as a single noop
/// (`6`, or `1:6` in v3), which every client accepts; an empty body is not a valid v4 payload.
pub fn encode_payload(version: EioVersion, packets: &[Packet]) -> String {
    let mut out = String::new();
    if packets.is_empty() {
        push_payload(version, &mut out, "6");
    }
    for p in packets {
        push_payload(version, &mut out, &p.encode_text(version));
    }
    out
}

/// The length JavaScript gives a string: UTF-16 code units.
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// Decodes a polling POST body into packets, after checking it against `max` bytes.
/// `octet_stream` is whether the request's `Content-Type` was `application/octet-stream`
/// (only a v3 client sends that: the binary payload form).
pub fn decode_payload(
    version: EioVersion,
    body: &[u8],
    octet_stream: bool,
    max: usize,
) -> Result<Vec<Packet>, EioError> {
    if body.len() > max {
        return Err(EioError::TooLarge {
            len: body.len(),
            max,
        });
    }
    if body.is_empty() {
        return Err(EioError::Empty);
    }
    if octet_stream && version == EioVersion::V3 {
        return decode_v3_binary_payload(body);
    }
    let text = std::str::from_utf8(body).map_err(|_| EioError::Utf8)?;
    match version {
        EioVersion::V4 => text
            .split(SEPARATOR)
            .map(|p| decode_packet(version, p))
            .collect(),
        EioVersion::V3 => decode_v3_text_payload(text),
    }
}

/// `<len>:<packet>…` with lengths in UTF-16 code units. Zero-length entries are skipped, as
/// the reference parser does (`0:` is its empty payload).
fn decode_v3_text_payload(mut s: &str) -> Result<Vec<Packet>, EioError> {
    let mut out = Vec::new();
    while !s.is_empty() {
        let colon = s.find(':').ok_or(EioError::Length)?;
        let digits = &s[..colon];
        if digits.is_empty() || digits.len() > 10 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(EioError::Length);
        }
        let want: usize = digits.parse().map_err(|_| EioError::Length)?;
        let rest = &s[colon + 1..];
        // Walk `want` UTF-16 units; a split surrogate pair or a short body is an error.
        let mut units = 0;
        let mut end = 0;
        for (i, c) in rest.char_indices() {
            if units >= want {
                break;
            }
            units += c.len_utf16();
            end = i + c.len_utf8();
        }
        if units != want {
            return Err(EioError::Length);
        }
        if want > 0 {
            out.push(decode_packet(EioVersion::V3, &rest[..end])?);
        }
        s = &rest[end..];
    }
    if out.is_empty() {
        return Err(EioError::Empty);
    }
    Ok(out)
}

/// The v3 binary payload: `<0|1><digit bytes><0xff><packet>`… (see the module header).
fn decode_v3_binary_payload(mut b: &[u8]) -> Result<Vec<Packet>, EioError> {
    let mut out = Vec::new();
    while let Some((&flag, rest)) = b.split_first() {
        let is_text = match flag {
            0 => true,
            1 => false,
            _ => return Err(EioError::Length),
        };
        let end = rest
            .iter()
            .position(|&x| x == 0xff)
            .ok_or(EioError::Length)?;
        if end == 0 || end > 10 {
            return Err(EioError::Length);
        }
        let mut len = 0usize;
        for &d in &rest[..end] {
            if d > 9 {
                return Err(EioError::Length);
            }
            len = len * 10 + d as usize;
        }
        let rest = &rest[end + 1..];
        if len == 0 || len > rest.len() {
            return Err(EioError::Length);
        }
        let (pkt, tail) = rest.split_at(len);
        out.push(if is_text {
            let s = std::str::from_utf8(pkt).map_err(|_| EioError::Utf8)?;
            decode_packet(EioVersion::V3, s)?
        } else {
            Packet {
                kind: PacketType::from_u8(pkt[0]).ok_or(EioError::BadType)?,
                data: Data::Binary(pkt[1..].to_vec()),
            }
        });
        b = tail;
    }
    Ok(out)
}

/// What the open packet announces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handshake<'a> {
    /// The session id ([`SidGen::next_sid`](super::SidGen::next_sid)).
    pub sid: &'a str,
    /// Transports the client may upgrade to: `["websocket"]` when the session starts on
    /// polling, none when it starts on WebSocket (see [`upgrades_from`]).
    pub upgrades: &'a [&'a str],
    /// `pingInterval`, milliseconds.
    pub ping_interval_ms: u64,
    /// `pingTimeout`, milliseconds.
    pub ping_timeout_ms: u64,
    /// `maxPayload`, bytes (announced in v4 only; the most a client may put in one POST).
    pub max_payload: u64,
}

/// The upgrades a session on `transport` may make.
pub fn upgrades_from(transport: Transport) -> &'static [&'static str] {
    match transport {
        Transport::Polling => &["websocket"],
        Transport::Websocket => &[],
    }
}

/// The open packet in text form: `0{"sid":…,"upgrades":[…],"pingInterval":…,
/// "pingTimeout":…}` plus `,"maxPayload":…` in v4.
pub fn open_packet(version: EioVersion, h: &Handshake<'_>) -> String {
    let upgrades: Vec<String> = h.upgrades.iter().map(|u| json_str(u)).collect();
    let mut out = format!(
        "0{{\"sid\":{},\"upgrades\":[{}],\"pingInterval\":{},\"pingTimeout\":{}",
        json_str(h.sid),
        upgrades.join(","),
        h.ping_interval_ms,
        h.ping_timeout_ms
    );
    if version == EioVersion::V4 {
        out.push_str(&format!(",\"maxPayload\":{}", h.max_payload));
    }
    out.push('}');
    out
}

pub(super) fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}
