//! The text port's commands: one JSON object per line, one reply line per command.
//!
//! This module only turns a line into a [`Command`]; the event loop splits lines, enforces
//! `max_line`, runs the push and keeps the replies in order.

use herald_ipc::Target;
use serde_json::Value;

/// What a backend asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    /// The seeds' form `{"uid":"u1",…}`: the whole line (without its ending) goes to `uid`.
    /// Replies `ok` or `fail`.
    Seed {
        /// The uid.
        uid: String,
    },
    /// `{"cmd":"push"|"all",…}`: `payload` to `target`. Replies `ok` or `fail` (`all`: `ok`).
    Push {
        /// Whom for.
        target: Target,
        /// Uids left out.
        exclude: Vec<String>,
        /// The message.
        payload: Vec<u8>,
    },
    /// Not a JSON object, or a seed line without a uid: replies `fail` (the seed's answer).
    Fail(&'static str),
    /// A malformed `cmd`: replies `{"error":"…"}`.
    Error(String),
}

/// A uid from JSON: a string, or an integer (PHP's `json_encode` writes numeric ids as numbers,
/// and Workerman's uid map matched them to the same digits sent by the browser).
fn uid_of(v: &Value) -> Option<String> {
    match v {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

/// `data` as the frame body: a JSON string as is, anything else as compact JSON.
pub fn data_bytes(v: &Value) -> Vec<u8> {
    match v {
        Value::String(s) => s.clone().into_bytes(),
        other => other.to_string().into_bytes(),
    }
}

fn uid_list(v: &Value, key: &str) -> Result<Vec<String>, String> {
    match v {
        Value::Array(a) => a
            .iter()
            .map(|x| uid_of(x).ok_or_else(|| format!("`{key}` must hold strings")))
            .collect(),
        other => uid_of(other)
            .map(|u| vec![u])
            .ok_or_else(|| format!("`{key}` must be a string or an array of strings")),
    }
}

/// Parses one line (without `\n`; a trailing `\r` is ignored).
pub fn parse_line(line: &[u8]) -> Command {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(line) else {
        return Command::Fail("not a JSON object");
    };
    let Some(cmd) = obj.get("cmd") else {
        return match obj.get("uid").and_then(uid_of) {
            Some(uid) => Command::Seed { uid },
            None => Command::Fail("no uid"),
        };
    };
    let exclude = match obj.get("exclude") {
        None | Some(Value::Null) => Vec::new(),
        Some(v) => match uid_list(v, "exclude") {
            Ok(l) => l,
            Err(e) => return Command::Error(e),
        },
    };
    let data = || {
        obj.get("data")
            .map(data_bytes)
            .ok_or_else(|| "missing `data`".to_string())
    };
    match cmd.as_str() {
        Some("all") => match data() {
            Ok(payload) => Command::Push {
                target: Target::All,
                exclude,
                payload,
            },
            Err(e) => Command::Error(e),
        },
        Some("push") => {
            let Some(to) = obj.get("to") else {
                return Command::Error("missing `to`".into());
            };
            match (uid_list(to, "to"), data()) {
                (Ok(to), Ok(payload)) => Command::Push {
                    target: Target::Uids(to),
                    exclude,
                    payload,
                },
                (Err(e), _) | (_, Err(e)) => Command::Error(e),
            }
        }
        Some(other) => Command::Error(format!("unknown cmd `{other}`")),
        None => Command::Error("`cmd` must be a string".into()),
    }
}

/// The reply line for an error.
pub fn error_reply(msg: &str) -> Vec<u8> {
    let mut v = serde_json::json!({ "error": msg }).to_string().into_bytes();
    v.push(b'\n');
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_line() {
        assert_eq!(
            parse_line(br#"{"uid":"uid1","percent":"88%"}"#),
            Command::Seed { uid: "uid1".into() }
        );
        assert_eq!(
            parse_line(b"{\"uid\":123}\r"),
            Command::Seed { uid: "123".into() }
        );
    }

    #[test]
    fn seed_failures() {
        assert!(matches!(parse_line(b"not json"), Command::Fail(_)));
        assert!(matches!(parse_line(b"[1,2]"), Command::Fail(_)));
        assert!(matches!(parse_line(br#"{"uid":null}"#), Command::Fail(_)));
        assert!(matches!(parse_line(br#"{"percent":1}"#), Command::Fail(_)));
        assert!(matches!(parse_line(b"\0\xff"), Command::Fail(_)));
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse_line(br#"{"cmd":"all","data":"hi"}"#),
            Command::Push {
                target: Target::All,
                exclude: vec![],
                payload: b"hi".to_vec()
            }
        );
        assert_eq!(
            parse_line(br#"{"cmd":"push","to":["a","b"],"data":{"x": 1}}"#),
            Command::Push {
                target: Target::Uids(vec!["a".into(), "b".into()]),
                exclude: vec![],
                payload: br#"{"x":1}"#.to_vec()
            }
        );
        assert!(matches!(
            parse_line(br#"{"cmd":"push","data":1}"#),
            Command::Error(_)
        ));
        assert!(matches!(
            parse_line(br#"{"cmd":"nope"}"#),
            Command::Error(_)
        ));
        assert_eq!(error_reply("x"), b"{\"error\":\"x\"}\n");
    }
}
