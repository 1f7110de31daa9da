//! Socket.IO packets riding in Engine.IO messages: decoding a client's packet (type,
//! namespace, ack id, JSON arguments) and encoding the events, acks, connects and errors the
//! server sends.

use super::packet::json_str;
use super::EioVersion;
use serde_json::Value;
use thiserror::Error;

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

/// The Engine.IO message (text form, ready for a frame or [`push_payload`](super::push_payload)) that emits
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
