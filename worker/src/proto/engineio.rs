//! Engine.IO and Socket.IO wire formats: the pure protocol layer of the Socket.IO port.
//!
//! Everything here is a function of its arguments (the one exception, [`SidGen`], reads the
//! operating system's random source for every id it makes); the event loop owns sockets,
//! sessions and timers. The facts implemented, as the reference JavaScript implementation
//! (engine.io-parser 2.2 for v3, 5.2 for v4; socket.io-parser 3.x/4.x) puts them on the wire:
//!
//! **Engine.IO versions.** The `EIO` query parameter selects the revision: `3` is spoken by
//! socket.io-client 1.x/2.x, `4` by 3.x/4.x. In v3 the *client* sends `ping` every
//! `pingInterval` and the server answers `pong`; in v4 the *server* pings and the client
//! answers. Both probe an upgrade with `2probe` → `3probe`, then the client sends `5`.
//!
//! **Packets.** One ASCII digit for the type — open `0`, close `1`, ping `2`, pong `3`,
//! message `4`, upgrade `5`, noop `6` — then the data. Binary data in a text context is `b`
//! and base64 (standard alphabet, padded): in v4 the `b` implies a message (`bAQIDBA==`), in v3
//! the type digit follows the `b` (`b4AQIDBA==`). On a WebSocket each packet is one frame;
//! binary goes in a binary frame, raw in v4, behind a one-byte type (`0x04`) in v3.
//!
//! **Polling payloads.** Several packets share one HTTP body. v4 joins them with the record
//! separator `\x1e`: `4hello\x1e2\x1e4world`. v3 prefixes each with its length and a colon,
//! where the length counts UTF-16 code units (JavaScript's `String.length`), not bytes:
//! `6:4hello2:4€` (`€` is one unit, three bytes; `😀` is two units). A v3 client that has
//! XHR2 may also POST the binary payload form (`Content-Type: application/octet-stream`):
//! per packet a `0` (text) or `1` (binary) byte, the decimal length as one byte per digit
//! (values 0–9), `0xff`, then the packet (text as UTF-8; binary as a type byte and the data).
//! This server always *answers* with text payloads, which every client accepts.
//!
//! **Handshake.** The first answer is the open packet, `0` + JSON with `sid`, `upgrades`,
//! `pingInterval`, `pingTimeout` (milliseconds) and, in v4 only, `maxPayload` (bytes).
//!
//! **Socket.IO** rides in message packets: `<type>[<attachments>-][<nsp>,][<ack id>][JSON]`
//! with CONNECT `0`, DISCONNECT `1`, EVENT `2`, ACK `3`, ERROR/CONNECT_ERROR `4`,
//! BINARY_EVENT `5`, BINARY_ACK `6`; the namespace is written only when it is not `/`.
//! So `socket.emit('login', 123)` arrives as `42["login",123]`, with an ack id as
//! `421["login",123]`, on `/admin` as `42/admin,["login",123]`. A v4 client (Socket.IO
//! protocol 5) sends `40` (optionally with an auth object) and the server answers
//! `40{"sid":"…"}`; with v3 (protocol 4) the server sends `40` on its own right after the
//! open packet and the client never asks for the default namespace.
//!
//! **Session ids** ([`SidGen`], [`sid_worker`]) are 28 URL-safe characters: 24 carry 18
//! bytes (144 bits) from the operating system's random source, and the last four carry the
//! owning worker's id, masked by the first three of those bytes, so any worker can route a
//! polling request it did not create to the owner without shared state. (The reference
//! servers' ids are 20 characters; clients treat the id as an opaque string.)

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::{DecodePaddingMode, Engine as _};
use serde_json::Value;
use thiserror::Error;

/// The path prefix the socket.io clients use unless told otherwise.
pub const DEFAULT_PATH: &str = "/socket.io/";
/// `Content-Type` of every polling response body this server writes (and of a text POST).
pub const CONTENT_TYPE_TEXT: &str = "text/plain; charset=UTF-8";
/// `Content-Type` of a v3 binary payload POST.
pub const CONTENT_TYPE_BINARY: &str = "application/octet-stream";
/// The body of a successful polling POST.
pub const POST_OK: &str = "ok";
/// The v4 payload separator (ASCII record separator).
pub const SEPARATOR: char = '\x1e';

/// Base64 as engine.io reads it (Node's `Buffer.from(s, 'base64')`): padding optional.
const B64_LENIENT: GeneralPurpose = GeneralPurpose::new(
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
    /// The session id ([`SidGen::next_sid`]).
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

fn json_str(s: &str) -> String {
    Value::from(s).to_string()
}

// ---------------------------------------------------------------------------------------
// Socket.IO
// ---------------------------------------------------------------------------------------

/// A Socket.IO packet type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SioType {
    /// `0`: join a namespace (client), or accept the join (server).
    Connect,
    /// `1`: leave a namespace.
    Disconnect,
    /// `2`: an event: `["name", args…]`.
    Event,
    /// `3`: the answer to an event that carried an ack id.
    Ack,
    /// `4`: ERROR (protocol 4) / CONNECT_ERROR (protocol 5): a join was refused.
    ConnectError,
    /// `5`: an event with binary attachments (not accepted by this server).
    BinaryEvent,
    /// `6`: an ack with binary attachments (not accepted by this server).
    BinaryAck,
}

impl SioType {
    /// The type for an ASCII digit, else `None`.
    pub fn from_char(c: char) -> Option<Self> {
        Some(match c {
            '0' => Self::Connect,
            '1' => Self::Disconnect,
            '2' => Self::Event,
            '3' => Self::Ack,
            '4' => Self::ConnectError,
            '5' => Self::BinaryEvent,
            '6' => Self::BinaryAck,
            _ => return None,
        })
    }

    /// The type's ASCII digit.
    pub fn as_char(self) -> char {
        (b'0' + self as u8) as char
    }
}

/// A decoded Socket.IO packet.
#[derive(Debug, Clone, PartialEq)]
pub struct SioPacket {
    /// Its type.
    pub kind: SioType,
    /// The namespace, `/` unless written; without any `?query` suffix.
    pub nsp: String,
    /// A protocol-4 client may append `?query` to a namespace in CONNECT (`/admin?token=1`);
    /// the part after `?`, if any.
    pub nsp_query: Option<String>,
    /// The acknowledgement id, if any.
    pub id: Option<u64>,
    /// The JSON payload, if any.
    pub data: Option<Value>,
}

/// An EVENT, taken apart.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// The namespace.
    pub nsp: String,
    /// The ack id, if the sender wants an ACK.
    pub id: Option<u64>,
    /// The event name (`login`); a numeric name is given as its digits.
    pub name: String,
    /// The arguments after the name.
    pub args: Vec<Value>,
}

/// Why a Socket.IO packet was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SioError {
    /// Longer than the configured maximum.
    #[error("packet of {len} bytes exceeds the maximum of {max}")]
    TooLarge {
        /// Its size.
        len: usize,
        /// The maximum.
        max: usize,
    },
    /// Empty, or the type is not `0`…`6`.
    #[error("unknown packet type")]
    BadType,
    /// BINARY_EVENT / BINARY_ACK: attachments are not accepted.
    #[error("binary attachments are not supported")]
    Binary,
    /// The ack id does not fit.
    #[error("bad ack id")]
    BadId,
    /// The payload is not JSON.
    #[error("payload is not JSON")]
    Json,
    /// The payload has the wrong shape for the type (an EVENT that is not `["name", …]`, a
    /// reserved event name, a DISCONNECT with data…).
    #[error("invalid payload: {0}")]
    Payload(&'static str),
    /// Not an EVENT, where one was required.
    #[error("not an event")]
    NotEvent,
}

/// Event names a peer must not send (they are the libraries' own).
pub const RESERVED_EVENTS: &[&str] = &[
    "connect",
    "connect_error",
    "disconnect",
    "disconnecting",
    "newListener",
    "removeListener",
];

/// Decodes a Socket.IO packet: the data of an Engine.IO message packet (without its `4`),
/// of at most `max` bytes.
pub fn decode_sio(s: &str, max: usize) -> Result<SioPacket, SioError> {
    if s.len() > max {
        return Err(SioError::TooLarge { len: s.len(), max });
    }
    let kind = s
        .chars()
        .next()
        .and_then(SioType::from_char)
        .ok_or(SioError::BadType)?;
    if matches!(kind, SioType::BinaryEvent | SioType::BinaryAck) {
        return Err(SioError::Binary);
    }
    let mut rest = &s[1..];
    let (mut nsp, mut nsp_query) = ("/".to_string(), None);
    if rest.starts_with('/') {
        let end = rest.find(',').unwrap_or(rest.len());
        let full = &rest[..end];
        match full.split_once('?') {
            Some((n, q)) => {
                nsp = n.to_string();
                nsp_query = Some(q.to_string());
            }
            None => nsp = full.to_string(),
        }
        rest = rest.get(end + 1..).unwrap_or("");
    }
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    let id = if digits > 0 {
        // JavaScript numbers are exact up to 2^53; ids are small counters in practice.
        let n: u64 = rest[..digits].parse().map_err(|_| SioError::BadId)?;
        if n > (1 << 53) {
            return Err(SioError::BadId);
        }
        rest = &rest[digits..];
        Some(n)
    } else {
        None
    };
    let data = if rest.is_empty() {
        None
    } else {
        Some(serde_json::from_str::<Value>(rest).map_err(|_| SioError::Json)?)
    };
    let shape_ok = match (kind, &data) {
        (SioType::Connect, None | Some(Value::Object(_))) => true,
        (SioType::Disconnect, None) => true,
        (SioType::ConnectError, Some(Value::String(_) | Value::Object(_))) => true,
        (SioType::Event, Some(Value::Array(a))) => match a.first() {
            Some(Value::Number(_)) => true,
            Some(Value::String(n)) => !RESERVED_EVENTS.contains(&n.as_str()),
            _ => false,
        },
        (SioType::Ack, Some(Value::Array(_))) => true,
        _ => false,
    };
    if !shape_ok {
        return Err(SioError::Payload(match kind {
            SioType::Connect => "CONNECT data must be an object",
            SioType::Disconnect => "DISCONNECT carries no data",
            SioType::ConnectError => "CONNECT_ERROR data must be a string or an object",
            SioType::Event => "EVENT data must be [name, args…] with a non-reserved name",
            _ => "ACK data must be an array",
        }));
    }
    Ok(SioPacket {
        kind,
        nsp,
        nsp_query,
        id,
        data,
    })
}

impl SioPacket {
    /// The event name and arguments of an EVENT packet.
    pub fn into_event(self) -> Result<Event, SioError> {
        if self.kind != SioType::Event {
            return Err(SioError::NotEvent);
        }
        let Some(Value::Array(mut a)) = self.data else {
            return Err(SioError::NotEvent);
        };
        let name = match a.remove(0) {
            Value::String(s) => s,
            other => other.to_string(),
        };
        Ok(Event {
            nsp: self.nsp,
            id: self.id,
            name,
            args: a,
        })
    }

    /// The packet in wire form, without the Engine.IO `4`.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        out.push(self.kind.as_char());
        if self.nsp != "/" && !self.nsp.is_empty() {
            out.push_str(&self.nsp);
            if let Some(q) = &self.nsp_query {
                out.push('?');
                out.push_str(q);
            }
            out.push(',');
        }
        if let Some(id) = self.id {
            out.push_str(&id.to_string());
        }
        if let Some(d) = &self.data {
            out.push_str(&d.to_string());
        }
        out
    }
}

/// `4` + `<type>` + `<nsp>,` (unless `/`) + `<id>`: the common head of server messages.
fn sio_head(kind: SioType, nsp: &str, id: Option<u64>) -> String {
    let mut out = String::from("4");
    out.push(kind.as_char());
    if nsp != "/" && !nsp.is_empty() {
        out.push_str(nsp);
        out.push(',');
    }
    if let Some(id) = id {
        out.push_str(&id.to_string());
    }
    out
}

/// The Engine.IO message (text form, ready for a frame or [`push_payload`]) that emits
/// `event` with `args` on `nsp`: `42["new_msg","hello"]`, or `42/admin,[…]`.
pub fn event_message(nsp: &str, event: &str, args: &[Value]) -> String {
    let mut out = sio_head(SioType::Event, nsp, None);
    out.push('[');
    out.push_str(&json_str(event));
    for a in args {
        out.push(',');
        out.push_str(&a.to_string());
    }
    out.push(']');
    out
}

/// The message acknowledging event `id` with `args`: `43<id>[…]`.
pub fn ack_message(nsp: &str, id: u64, args: &[Value]) -> String {
    let mut out = sio_head(SioType::Ack, nsp, Some(id));
    out.push_str(&Value::Array(args.to_vec()).to_string());
    out
}

/// The message accepting a namespace join. v4: `40{"sid":"<socket id>"}` (the reply to the
/// client's `40`); v3: `40`, which the server sends unasked right after the open packet for
/// `/` (and `40/ns,` in reply to a join of another namespace).
pub fn connect_message(version: EioVersion, nsp: &str, socket_id: &str) -> String {
    let mut out = sio_head(SioType::Connect, nsp, None);
    if version == EioVersion::V4 {
        out.push_str(&format!("{{\"sid\":{}}}", json_str(socket_id)));
    }
    out
}

/// The message refusing a namespace join: v4 `44{"message":"…"}`, v3 `44"…"`.
pub fn connect_error_message(version: EioVersion, nsp: &str, message: &str) -> String {
    let mut out = sio_head(SioType::ConnectError, nsp, None);
    match version {
        EioVersion::V4 => out.push_str(&format!("{{\"message\":{}}}", json_str(message))),
        EioVersion::V3 => out.push_str(&json_str(message)),
    }
    out
}

/// The message ending a namespace membership: `41`, or `41/ns,`.
pub fn disconnect_message(nsp: &str) -> String {
    sio_head(SioType::Disconnect, nsp, None)
}

// ---------------------------------------------------------------------------------------
// Session ids
// ---------------------------------------------------------------------------------------

/// Length of a session id.
pub const SID_LEN: usize = 28;
/// Random bytes in a session id (144 bits).
pub const SID_RANDOM_BYTES: usize = 18;
/// The largest worker id a session id can carry (24 bits).
pub const MAX_SID_WORKER: u32 = (1 << 24) - 1;

/// Characters of a session id that carry its random bytes.
const SID_RANDOM_CHARS: usize = SID_RANDOM_BYTES / 3 * 4;

const B64URL: GeneralPurpose = base64::engine::general_purpose::URL_SAFE_NO_PAD;

/// Builds a session id from 18 random bytes and the owning worker: 24 characters of the
/// bytes in URL-safe base64, then 4 characters of the worker id (24 bits) XORed with the
/// first three random bytes, so ids of one worker do not share a visible suffix. Worker ids
/// above [`MAX_SID_WORKER`] are truncated to 24 bits.
pub fn encode_sid(worker: u32, random: [u8; SID_RANDOM_BYTES]) -> String {
    let w = worker & MAX_SID_WORKER;
    let tail = [
        random[0] ^ (w >> 16) as u8,
        random[1] ^ (w >> 8) as u8,
        random[2] ^ w as u8,
    ];
    let mut out = String::with_capacity(SID_LEN);
    B64URL.encode_string(random, &mut out);
    B64URL.encode_string(tail, &mut out);
    out
}

/// The worker that owns session `sid`, or `None` if `sid` is not a session id of this form
/// (the caller must still check the id against its worker count and its own sessions).
pub fn sid_worker(sid: &str) -> Option<u32> {
    if sid.len() != SID_LEN || !sid.is_ascii() {
        return None;
    }
    let mut head = [0u8; 3];
    let mut tail = [0u8; 3];
    if B64URL.decode_slice(&sid[..4], &mut head).ok()? != 3
        || B64URL
            .decode_slice(&sid[SID_RANDOM_CHARS..], &mut tail)
            .ok()?
            != 3
        || B64URL.decode(&sid[4..SID_RANDOM_CHARS]).is_err()
    {
        return None;
    }
    Some(
        (u32::from(head[0] ^ tail[0]) << 16)
            | (u32::from(head[1] ^ tail[1]) << 8)
            | u32::from(head[2] ^ tail[2]),
    )
}

/// Makes session ids for one worker. Every id's random bytes are read anew from the operating
/// system's random source (the `getrandom` crate), so an id says nothing about any other: the
/// id is all a polling client shows to prove which session it is.
#[derive(Debug)]
pub struct SidGen {
    /// The worker id every session id carries (at most [`MAX_SID_WORKER`]).
    worker: u32,
    /// Keys of the stand-in used only if the OS source fails (it does not, on a running
    /// Linux with the `getrandom` system call): SipHash of a counter, keyed by the standard
    /// library from the OS at start-up.
    fallback_keys: RandomState,
    /// Ids made by the stand-in so far, hashed to make each one's bytes.
    fallback_count: u64,
}

impl SidGen {
    /// A generator for `worker` (at most [`MAX_SID_WORKER`]).
    pub fn new(worker: u32) -> Self {
        debug_assert!(worker <= MAX_SID_WORKER);
        Self {
            worker,
            fallback_keys: RandomState::new(),
            fallback_count: 0,
        }
    }

    /// Fresh bytes from the OS; from the keyed stand-in, with an error logged, if the OS
    /// source fails, so that a session can still be opened.
    fn random_bytes(&mut self) -> [u8; SID_RANDOM_BYTES] {
        let mut r = [0u8; SID_RANDOM_BYTES];
        match getrandom::fill(&mut r) {
            Ok(()) => r,
            Err(e) => {
                if self.fallback_count == 0 {
                    log::error!("the OS random source failed ({e}); session ids use a keyed hash");
                }
                self.fallback_bytes()
            }
        }
    }

    /// The stand-in's bytes: SipHash of the next count and the 8-byte block's index.
    fn fallback_bytes(&mut self) -> [u8; SID_RANDOM_BYTES] {
        self.fallback_count += 1;
        let mut r = [0u8; SID_RANDOM_BYTES];
        for (i, chunk) in r.chunks_mut(8).enumerate() {
            let h = self.fallback_keys.hash_one((self.fallback_count, i));
            chunk.copy_from_slice(&h.to_le_bytes()[..chunk.len()]);
        }
        r
    }

    /// A new session id; [`sid_worker`] of it is this generator's worker.
    pub fn next_sid(&mut self) -> String {
        let r = self.random_bytes();
        encode_sid(self.worker, r)
    }

    /// A new Socket.IO socket id (the `sid` in a v4 `40{"sid":…}`), same shape.
    pub fn next_socket_id(&mut self) -> String {
        self.next_sid()
    }
}

// ---------------------------------------------------------------------------------------
// Requests: path, query, CORS
// ---------------------------------------------------------------------------------------

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const MAX: usize = 1 << 20;

    fn msg(s: &str) -> Packet {
        Packet::message(s)
    }

    // ---- Engine.IO packets ----

    #[test]
    fn packet_types_round_trip() {
        for n in 0..7u8 {
            let t = PacketType::from_u8(n).unwrap();
            assert_eq!(t.as_u8(), n);
            assert_eq!(PacketType::from_char(t.as_char()), Some(t));
        }
        assert_eq!(PacketType::from_u8(7), None);
        assert_eq!(PacketType::from_char('x'), None);
        assert_eq!(EioVersion::from_param("3"), Some(EioVersion::V3));
        assert_eq!(EioVersion::from_param("4"), Some(EioVersion::V4));
        assert_eq!(EioVersion::from_param("5"), None);
        assert!(EioVersion::V4.server_pings() && !EioVersion::V3.server_pings());
    }

    #[test]
    fn packet_text_both_versions() {
        for v in [EioVersion::V3, EioVersion::V4] {
            assert_eq!(msg("hello").encode_text(v), "4hello");
            assert_eq!(Packet::empty(PacketType::Ping).encode_text(v), "2");
            assert_eq!(decode_packet(v, "2probe").unwrap().encode_text(v), "2probe");
            assert!(decode_packet(v, "2probe").unwrap().is_probe_ping());
            assert_eq!(
                decode_packet(v, "5").unwrap(),
                Packet::empty(PacketType::Upgrade)
            );
            assert_eq!(decode_packet(v, ""), Err(EioError::Empty));
            assert_eq!(decode_packet(v, "9x"), Err(EioError::BadType));
        }
        let bin = Packet {
            kind: PacketType::Message,
            data: Data::Binary(vec![1, 2, 3, 4]),
        };
        assert_eq!(bin.encode_text(EioVersion::V4), "bAQIDBA==");
        assert_eq!(bin.encode_text(EioVersion::V3), "b4AQIDBA==");
        assert_eq!(decode_packet(EioVersion::V4, "bAQIDBA==").unwrap(), bin);
        assert_eq!(decode_packet(EioVersion::V3, "b4AQIDBA==").unwrap(), bin);
        // Node's base64 reader does not insist on padding.
        assert_eq!(decode_packet(EioVersion::V4, "bAQIDBA").unwrap(), bin);
        assert_eq!(decode_packet(EioVersion::V4, "b!!"), Err(EioError::Base64));
        assert_eq!(
            decode_packet(EioVersion::V3, "bxAQID"),
            Err(EioError::BadType)
        );
    }

    #[test]
    fn websocket_frames() {
        let bin = Packet {
            kind: PacketType::Message,
            data: Data::Binary(vec![1, 2, 3]),
        };
        assert_eq!(
            encode_ws(EioVersion::V4, &bin),
            WsFrame::Binary(vec![1, 2, 3])
        );
        assert_eq!(
            encode_ws(EioVersion::V3, &bin),
            WsFrame::Binary(vec![4, 1, 2, 3])
        );
        assert_eq!(decode_ws_binary(EioVersion::V4, &[1, 2, 3]).unwrap(), bin);
        assert_eq!(
            decode_ws_binary(EioVersion::V3, &[4, 1, 2, 3]).unwrap(),
            bin
        );
        assert_eq!(decode_ws_binary(EioVersion::V3, &[]), Err(EioError::Empty));
        assert_eq!(
            decode_ws_binary(EioVersion::V3, &[9]),
            Err(EioError::BadType)
        );
        assert_eq!(
            encode_ws(EioVersion::V3, &msg("hey")),
            WsFrame::Text("4hey".into())
        );
    }

    // ---- payloads ----

    #[test]
    fn v4_payload_exact() {
        let v = EioVersion::V4;
        let ps = vec![msg("hello"), Packet::empty(PacketType::Ping), msg("world")];
        assert_eq!(encode_payload(v, &ps), "4hello\x1e2\x1e4world");
        assert_eq!(
            decode_payload(v, b"4hello\x1e2\x1e4world", false, MAX).unwrap(),
            ps
        );
        let mixed = decode_payload(v, b"4hello\x1ebAQIDBA==", false, MAX).unwrap();
        assert_eq!(mixed[1].data, Data::Binary(vec![1, 2, 3, 4]));
        assert_eq!(
            decode_payload(v, "42[\"hello\"]\x1e42[\"world\"]".as_bytes(), false, MAX).unwrap(),
            vec![msg("2[\"hello\"]"), msg("2[\"world\"]")]
        );
        assert_eq!(
            decode_payload(v, b"4a\x1e\x1e4b", false, MAX),
            Err(EioError::Empty)
        );
        assert_eq!(encode_payload(v, &[]), "6");
    }

    #[test]
    fn v3_payload_counts_utf16_units() {
        let v = EioVersion::V3;
        assert_eq!(encode_payload(v, &[msg("hello"), msg("€")]), "6:4hello2:4€");
        assert_eq!(encode_payload(v, &[msg("😀")]), "3:4😀");
        assert_eq!(
            decode_payload(v, "6:4hello2:4€".as_bytes(), false, MAX).unwrap(),
            vec![msg("hello"), msg("€")]
        );
        assert_eq!(
            decode_payload(v, "3:4😀1:2".as_bytes(), false, MAX).unwrap(),
            vec![msg("😀"), Packet::empty(PacketType::Ping)]
        );
        // The example of the v3 protocol text: text and base64 binary in one string payload.
        let both = decode_payload(v, "2:4€10:b4AQIDBA==".as_bytes(), false, MAX).unwrap();
        assert_eq!(both[0], msg("€"));
        assert_eq!(both[1].data, Data::Binary(vec![1, 2, 3, 4]));
        let bin = Packet {
            kind: PacketType::Message,
            data: Data::Binary(vec![1, 2, 3, 4]),
        };
        assert_eq!(encode_payload(v, &[msg("€"), bin]), "2:4€10:b4AQIDBA==");
        assert_eq!(encode_payload(v, &[]), "1:6");
        // `0:` entries are skipped, a payload of nothing but them is empty.
        assert_eq!(decode_payload(v, b"0:1:2", false, MAX).unwrap().len(), 1);
        assert_eq!(decode_payload(v, b"0:", false, MAX), Err(EioError::Empty));
    }

    #[test]
    fn v3_payload_rejects_bad_lengths() {
        let v = EioVersion::V3;
        for bad in [
            "5:4hello", // "4hell" fits, then "o" has no length
            "7:4hello", // the data is shorter than its length
            "x:4",
            ":4",
            "6:4hello2",
            "2:4😀", // cuts a surrogate pair
            "99999999999:4",
            "1:9",
        ] {
            let r = decode_payload(v, bad.as_bytes(), false, MAX);
            assert!(r.is_err(), "{bad:?} gave {r:?}");
        }
        assert_eq!(decode_payload(v, b"", false, MAX), Err(EioError::Empty));
        assert_eq!(
            decode_payload(v, &[0xff, b':'], false, MAX),
            Err(EioError::Utf8)
        );
    }

    #[test]
    fn v3_binary_payload() {
        // The v3 protocol text's example: "€" as text, then <01 02 03 04> as binary.
        let body = [
            0x00, 0x04, 0xff, 0x34, 0xe2, 0x82, 0xac, 0x01, 0x05, 0xff, 0x04, 0x01, 0x02, 0x03,
            0x04,
        ];
        let ps = decode_payload(EioVersion::V3, &body, true, MAX).unwrap();
        assert_eq!(ps[0], msg("€"));
        assert_eq!(
            ps[1],
            Packet {
                kind: PacketType::Message,
                data: Data::Binary(vec![1, 2, 3, 4])
            }
        );
        // A length of 12: digits 1 and 2.
        let mut long = vec![0x00, 1, 2, 0xff];
        long.extend_from_slice(b"42[\"a\",\"b\"]x");
        assert_eq!(
            decode_payload(EioVersion::V3, &long, true, MAX)
                .unwrap()
                .len(),
            1
        );
        for bad in [
            &[0x02, 0x01, 0xff, 0x34][..],
            &[0x00, 0x05, 0xff, 0x34],
            &[0x00, 0x0a, 0xff, 0x34],
            &[0x00, 0xff, 0x34],
            &[0x00, 0x01],
            &[0x01, 0x01, 0xff, 0x09],
        ] {
            assert!(
                decode_payload(EioVersion::V3, bad, true, MAX).is_err(),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn payload_size_is_bounded() {
        assert_eq!(
            decode_payload(EioVersion::V4, b"4hello", false, 5),
            Err(EioError::TooLarge { len: 6, max: 5 })
        );
        assert!(decode_payload(EioVersion::V4, b"4hello", false, 6).is_ok());
    }

    #[test]
    fn push_payload_frames_shared_text() {
        let m = event_message("/", "new_msg", &[json!("hi")]);
        let mut v4 = String::new();
        push_payload(EioVersion::V4, &mut v4, &m);
        push_payload(EioVersion::V4, &mut v4, "2");
        assert_eq!(v4, "42[\"new_msg\",\"hi\"]\x1e2");
        let mut v3 = String::new();
        push_payload(EioVersion::V3, &mut v3, &m);
        push_payload(EioVersion::V3, &mut v3, "3");
        assert_eq!(v3, "18:42[\"new_msg\",\"hi\"]1:3");
        // As the reference v2 server wrote it: 32 UTF-16 units, 35 bytes.
        let mut v3 = String::new();
        let m = event_message("/", "new_msg", &[json!("hello <b>€😀</b>")]);
        push_payload(EioVersion::V3, &mut v3, &m);
        assert_eq!(v3, "32:42[\"new_msg\",\"hello <b>€😀</b>\"]");
        // A control character in data is escaped by JSON, so it cannot split a v4 payload.
        assert_eq!(
            event_message("/", "m", &[json!("a\x1eb")]),
            "42[\"m\",\"a\\u001eb\"]"
        );
    }

    // ---- handshake ----

    #[test]
    fn open_packets_exact() {
        let h = Handshake {
            sid: "lv_VI97HAXpY6yYWAAAC",
            upgrades: upgrades_from(Transport::Polling),
            ping_interval_ms: 25000,
            ping_timeout_ms: 5000,
            max_payload: 1_000_000,
        };
        let v3 = open_packet(EioVersion::V3, &h);
        assert_eq!(
            v3,
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000}"#
        );
        // The v3 protocol text's sample response, byte for byte.
        let mut body = String::new();
        push_payload(EioVersion::V3, &mut body, &v3);
        assert!(body.starts_with("96:0{"));
        // The reference v2 server answers the handshake with the open packet and `40` at once.
        push_payload(
            EioVersion::V3,
            &mut body,
            &connect_message(EioVersion::V3, "/", "-"),
        );
        assert!(body.ends_with("\"pingTimeout\":5000}2:40"));
        assert_eq!(
            open_packet(EioVersion::V4, &h),
            r#"0{"sid":"lv_VI97HAXpY6yYWAAAC","upgrades":["websocket"],"pingInterval":25000,"pingTimeout":5000,"maxPayload":1000000}"#
        );
        let ws = Handshake {
            upgrades: upgrades_from(Transport::Websocket),
            ..h
        };
        assert!(open_packet(EioVersion::V4, &ws).contains(r#""upgrades":[],"#));
    }

    // ---- Socket.IO ----

    #[test]
    fn sio_decode_protocol_examples() {
        let p = decode_sio("0", MAX).unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id, p.data),
            (SioType::Connect, "/", None, None)
        );
        let p = decode_sio(r#"0/admin,{"token":"123"}"#, MAX).unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.data, Some(json!({"token":"123"})));
        let p = decode_sio("0/admin?token=1234&uid=abcd", MAX).unwrap();
        assert_eq!(p.nsp, "/admin");
        assert_eq!(p.nsp_query.as_deref(), Some("token=1234&uid=abcd"));
        let p = decode_sio("1/admin,", MAX).unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (SioType::Disconnect, "/admin"));
        let p = decode_sio("1", MAX).unwrap();
        assert_eq!((p.kind, p.nsp.as_str()), (SioType::Disconnect, "/"));
        let p = decode_sio(r#"212["foo"]"#, MAX).unwrap();
        assert_eq!((p.kind, p.id), (SioType::Event, Some(12)));
        let p = decode_sio(r#"3/admin,13["bar"]"#, MAX).unwrap();
        assert_eq!(
            (p.kind, p.nsp.as_str(), p.id),
            (SioType::Ack, "/admin", Some(13))
        );
        assert_eq!(p.data, Some(json!(["bar"])));
        let p = decode_sio(r#"4{"message":"Not authorized"}"#, MAX).unwrap();
        assert_eq!(p.kind, SioType::ConnectError);
        assert_eq!(
            decode_sio(r#"4"Not authorized""#, MAX).unwrap().kind,
            SioType::ConnectError
        );
    }

    #[test]
    fn sio_events() {
        let e = decode_sio(r#"2["login",123]"#, MAX)
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(
            e,
            Event {
                nsp: "/".into(),
                id: None,
                name: "login".into(),
                args: vec![json!(123)]
            }
        );
        let e = decode_sio(r#"2/chat,7["login","u1",{"a":1}]"#, MAX)
            .unwrap()
            .into_event()
            .unwrap();
        assert_eq!(
            (e.nsp.as_str(), e.id, e.name.as_str()),
            ("/chat", Some(7), "login")
        );
        assert_eq!(e.args, vec![json!("u1"), json!({"a":1})]);
        let e = decode_sio(r#"2[42]"#, MAX).unwrap().into_event().unwrap();
        assert_eq!((e.name.as_str(), e.args.len()), ("42", 0));
        assert_eq!(
            decode_sio("0", MAX).unwrap().into_event(),
            Err(SioError::NotEvent)
        );
    }

    #[test]
    fn sio_rejects_malformed() {
        use SioError::*;
        let cases: &[(&str, SioError)] = &[
            ("", BadType),
            ("7", BadType),
            ("x[]", BadType),
            (r#"51-["baz",{"_placeholder":true,"num":0}]"#, Binary),
            (r#"61-15["bar",{"_placeholder":true,"num":0}]"#, Binary),
            (
                "2",
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (
                "2[]",
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (
                r#"2{"a":1}"#,
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (
                r#"2[null]"#,
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (
                r#"2["disconnect"]"#,
                Payload("EVENT data must be [name, args…] with a non-reserved name"),
            ),
            (r#"2["login""#, Json),
            (r#"2["login"]]"#, Json),
            ("299999999999999999999[\"a\"]", BadId),
            ("1[]", Payload("DISCONNECT carries no data")),
            ("0[1]", Payload("CONNECT data must be an object")),
            ("3", Payload("ACK data must be an array")),
            (
                "4",
                Payload("CONNECT_ERROR data must be a string or an object"),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(
                decode_sio(input, MAX).as_ref().err(),
                Some(want),
                "{input:?}"
            );
        }
        assert_eq!(
            decode_sio(r#"2["login","u1"]"#, 10),
            Err(TooLarge { len: 15, max: 10 })
        );
        // Deep nesting is refused by the JSON parser's recursion limit, not a stack overflow.
        let deep = format!("2[\"a\",{}{}]", "[".repeat(10_000), "]".repeat(10_000));
        assert_eq!(decode_sio(&deep, MAX), Err(Json));
    }

    #[test]
    fn sio_encode_exact() {
        assert_eq!(
            event_message("/", "hey", &[json!("Jude")]),
            r#"42["hey","Jude"]"#
        );
        assert_eq!(
            event_message("/", "new_msg", &[json!("a \"q\" €")]),
            r#"42["new_msg","a \"q\" €"]"#
        );
        assert_eq!(event_message("/admin", "bar", &[]), r#"42/admin,["bar"]"#);
        assert_eq!(ack_message("/", 12, &[]), "4312[]");
        assert_eq!(
            ack_message("/admin", 13, &[json!("bar")]),
            r#"43/admin,13["bar"]"#
        );
        assert_eq!(
            connect_message(EioVersion::V4, "/", "wZX3oN0bSVIhsaknAAAI"),
            r#"40{"sid":"wZX3oN0bSVIhsaknAAAI"}"#
        );
        assert_eq!(connect_message(EioVersion::V3, "/", "ignored"), "40");
        assert_eq!(connect_message(EioVersion::V3, "/admin", "x"), "40/admin,");
        assert_eq!(
            connect_message(EioVersion::V4, "/admin", "oSO0OpakMV_3jnilAAAA"),
            r#"40/admin,{"sid":"oSO0OpakMV_3jnilAAAA"}"#
        );
        assert_eq!(
            connect_error_message(EioVersion::V4, "/", "Not authorized"),
            r#"44{"message":"Not authorized"}"#
        );
        assert_eq!(
            connect_error_message(EioVersion::V3, "/", "Not authorized"),
            r#"44"Not authorized""#
        );
        assert_eq!(disconnect_message("/"), "41");
        assert_eq!(disconnect_message("/admin"), "41/admin,");
        // encode() is decode()'s inverse on these.
        for s in [
            "0",
            "1/admin,",
            r#"212["foo"]"#,
            r#"3/admin,13["bar"]"#,
            r#"0/a?x=1,{"k":1}"#,
        ] {
            assert_eq!(decode_sio(s, MAX).unwrap().encode(), s);
        }
    }

    // ---- session ids ----

    #[test]
    fn sids_carry_their_worker() {
        for w in [0, 1, 2, 7, 255, 4096, MAX_SID_WORKER] {
            let mut g = SidGen::new(w);
            let mut seen = std::collections::HashSet::new();
            for _ in 0..200 {
                let s = g.next_sid();
                assert_eq!(s.len(), SID_LEN);
                assert!(
                    s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'),
                    "{s}"
                );
                assert_eq!(sid_worker(&s), Some(w), "{s}");
                assert!(seen.insert(s));
            }
        }
        // Fixed bytes give a fixed id; the worker is not visible as a constant suffix.
        let r = [0u8; SID_RANDOM_BYTES];
        assert_eq!(encode_sid(3, r), "AAAAAAAAAAAAAAAAAAAAAAAAAAAD");
        let r = [0xff; SID_RANDOM_BYTES];
        assert_eq!(encode_sid(0, r), "____________________________");
        assert_eq!(sid_worker(&encode_sid(5, r)), Some(5));
        assert_ne!(
            &encode_sid(5, r)[24..],
            &encode_sid(5, [1; SID_RANDOM_BYTES])[24..]
        );
    }

    #[test]
    fn sid_random_part_varies_in_every_bit() {
        // With 256 ids from the OS source, each of the 144 random bits takes both values
        // (a constant bit would show by chance with probability 2^-255 per bit).
        let mut g = SidGen::new(9);
        let (mut ones, mut zeros) = ([0u8; SID_RANDOM_BYTES], [0u8; SID_RANDOM_BYTES]);
        for _ in 0..256 {
            let sid = g.next_sid();
            let raw = B64URL.decode(&sid[..SID_RANDOM_CHARS]).unwrap();
            assert_eq!(raw.len(), SID_RANDOM_BYTES);
            for (i, b) in raw.iter().enumerate() {
                ones[i] |= b;
                zeros[i] |= !b;
            }
        }
        assert_eq!(ones, [0xff; SID_RANDOM_BYTES]);
        assert_eq!(zeros, [0xff; SID_RANDOM_BYTES]);
        // Two generators of one worker do not repeat each other.
        let mut h = SidGen::new(9);
        assert_ne!(g.next_sid(), h.next_sid());
        // The stand-in for a failing OS source makes distinct, well-formed ids too.
        let a = g.fallback_bytes();
        let b = g.fallback_bytes();
        assert_ne!(a, b);
        assert_ne!(&a[16..], &[0, 0]);
        assert_eq!(sid_worker(&encode_sid(9, a)), Some(9));
    }

    #[test]
    fn foreign_sids_are_refused() {
        for bad in [
            "",
            "short",
            "lv_VI97HAXpY6yYWAAAC", // 20: the reference servers' length
            "lv_VI97HAXpY6yYWlv_VI97HAAAC1", // 29
            "lv_VI97HAXpY6yYWlv_VI97HAA+C", // not URL-safe
            "lv_VI97HAXpY6yYWlv_VI97HA€", // not ASCII (28 bytes)
            "lv_VI97HAXpY6yYWlv_VI97HAA=C",
        ] {
            assert_eq!(sid_worker(bad), None, "{bad:?}");
        }
        // Any id of the right shape decodes to *some* worker: the caller checks it against
        // its worker count and session table.
        assert!(sid_worker("lv_VI97HAXpY6yYWlv_VI97HAAAC").is_some());
    }

    // ---- requests ----

    #[test]
    fn queries() {
        let (path, q) = split_target("/socket.io/?EIO=4&transport=polling&t=N8hyd6w");
        assert!(is_engine_path(path, DEFAULT_PATH));
        assert!(is_engine_path("/socket.io", DEFAULT_PATH));
        assert!(!is_engine_path("/socket.io.js", DEFAULT_PATH));
        let eq = parse_query(q).unwrap();
        assert_eq!(
            (eq.version, eq.transport, eq.sid.as_deref()),
            (EioVersion::V4, Transport::Polling, None)
        );
        assert_eq!(eq.get("t"), Some("N8hyd6w"));
        let sid = SidGen::new(2).next_sid();
        let eq = parse_query(&format!(
            "EIO=3&transport=websocket&sid={sid}&token=a%2Bb&b64=1"
        ))
        .unwrap();
        assert_eq!(
            (eq.version, eq.transport),
            (EioVersion::V3, Transport::Websocket)
        );
        assert_eq!(eq.sid.as_deref(), Some(sid.as_str()));
        assert_eq!(eq.get("token"), Some("a+b"));
        assert!(eq.b64);
        assert_eq!(split_target("/socket.io/"), ("/socket.io/", ""));
        assert_eq!(
            parse_query("transport=polling").unwrap().version,
            EioVersion::V3
        );
        assert_eq!(
            parse_query("EIO=2&transport=polling"),
            Err(ErrorCode::UnsupportedVersion)
        );
        assert_eq!(parse_query("EIO=4"), Err(ErrorCode::UnknownTransport));
        assert_eq!(
            parse_query("EIO=4&transport=flashsocket"),
            Err(ErrorCode::UnknownTransport)
        );
        assert_eq!(
            parse_query("EIO=3&transport=polling&j=0"),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            parse_query("EIO=4&transport=polling&sid=nope"),
            Err(ErrorCode::UnknownSid)
        );
        assert_eq!(
            ErrorCode::UnknownSid.body(),
            r#"{"code":1,"message":"Session ID unknown"}"#
        );
        assert_eq!(ErrorCode::UnknownSid.status(), 400);
        assert_eq!(ErrorCode::Forbidden.status(), 403);
    }

    #[test]
    fn cors() {
        assert_eq!(
            cors_headers(Some("http://example.com:8080")),
            vec![
                (
                    "Access-Control-Allow-Origin",
                    "http://example.com:8080".to_string()
                ),
                ("Access-Control-Allow-Credentials", "true".to_string()),
                ("Vary", "Origin".to_string()),
            ]
        );
        assert_eq!(
            cors_headers(None),
            vec![("Access-Control-Allow-Origin", "*".to_string())]
        );
        // Nothing that could break out of a header line is echoed.
        assert_eq!(cors_headers(Some("http://a\r\nSet-Cookie: x")).len(), 1);
        assert_eq!(cors_headers(Some("http://a b")).len(), 1);
        let pre = preflight_headers(Some("http://a"), Some("content-type, x-token"));
        assert!(pre.contains(&(
            "Access-Control-Allow-Headers",
            "content-type, x-token".to_string()
        )));
        assert!(pre.contains(&("Access-Control-Allow-Credentials", "true".to_string())));
        let pre = preflight_headers(None, Some("x\r\ny"));
        assert!(pre.contains(&("Access-Control-Allow-Headers", "Content-Type".to_string())));
    }
}
