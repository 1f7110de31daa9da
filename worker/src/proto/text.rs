//! The text port's commands: one JSON object per line, one reply line per command.
//!
//! This module only turns a line into a [`Command`]; the event loop splits lines, enforces
//! `max_line`, runs the push and keeps the replies in order.

use std::borrow::Cow;

use herald_ipc::{Query, Target};
use serde_json::Value;

use crate::proto::push::{self, uid_list, uid_of, PushRequest};
use crate::proto::seedscan::{self, Scan};

/// What a backend asked for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// The seeds' form `{"uid":"u1",…}`: the whole line (without its ending) goes to `uid`.
    /// Replies `ok` or `fail`.
    Seed {
        /// The uid, borrowed from the line when it is a plain string (the usual case).
        uid: Cow<'a, str>,
    },
    /// `{"cmd":"push"|"group"|"all",…}`. Replies `ok` or `fail` (`all`: `ok`).
    Push(PushRequest),
    /// A whole-server question or group change.
    Query(Query),
    /// Not a JSON object, or a seed line without a uid: replies `fail` (the seed's answer).
    Fail(&'static str),
    /// A malformed `cmd`: replies `{"error":"…"}`.
    Error(String),
    /// An events command (`subscribe`, `unsubscribe`, `reply`, `ack`), or what is wrong with it.
    Upstream(Result<crate::events::UpCmd, String>),
}

/// The two fields that decide a line's kind, borrowed from the line. Every other field is
/// skipped without being built, so the seeds' lines allocate nothing to parse. Public for the
/// fuzz target, which holds the scanner to what serde sees through it.
#[derive(serde::Deserialize)]
pub struct Head<'a> {
    /// The raw `cmd` value, if any.
    #[serde(borrow, default)]
    pub cmd: Option<&'a serde_json::value::RawValue>,
    /// The raw `uid` value, if any.
    #[serde(borrow, default)]
    pub uid: Option<&'a serde_json::value::RawValue>,
}

/// Seed lines (`{"uid":…}` without `cmd`) without building a JSON tree; `None` sends the line
/// to the general parser (which also gives the right answer for anything unusual). The usual
/// line is settled by the one-pass scanner; what it is unsure of goes through serde.
fn fast_seed(line: &[u8]) -> Option<Command<'_>> {
    match seedscan::scan(line) {
        Scan::Uid("") | Scan::NoUid => Some(Command::Fail("no uid")),
        Scan::Uid(uid) => Some(Command::Seed { uid: uid.into() }),
        Scan::Cmd => None,
        Scan::Unsure => serde_seed(line),
    }
}

/// [`fast_seed`] with serde: parses only the fields that decide, borrowed from the line.
fn serde_seed(line: &[u8]) -> Option<Command<'_>> {
    let first = line.iter().find(|b| !b.is_ascii_whitespace())?;
    if *first != b'{' {
        return None;
    }
    // Skipped fields are not checked for UTF-8 by the parser, and the line becomes a text
    // frame: check it whole (fast), as the full parser would have.
    if std::str::from_utf8(line).is_err() {
        return Some(Command::Fail("not UTF-8"));
    }
    let head: Head<'_> = serde_json::from_slice(line).ok()?;
    if head.cmd.is_some() {
        return None;
    }
    let Some(raw) = head.uid else {
        return Some(Command::Fail("no uid"));
    };
    // The usual uid is a plain string: borrow it from the line.
    if let Ok(uid) = serde_json::from_str::<&str>(raw.get()) {
        return Some(if uid.is_empty() {
            Command::Fail("no uid")
        } else {
            Command::Seed { uid: uid.into() }
        });
    }
    let v: Value = serde_json::from_str(raw.get()).ok()?;
    Some(match uid_of(&v) {
        Some(uid) => Command::Seed { uid: uid.into() },
        None => Command::Fail("no uid"),
    })
}

/// Parses one line (without `\n`; a trailing `\r` is ignored). A push may name at most
/// `max_targets` uids, groups and excluded uids in all.
pub fn parse_line(line: &[u8], max_targets: usize) -> Command<'_> {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    if let Some(c) = fast_seed(line) {
        return c;
    }
    let Ok(Value::Object(obj)) = serde_json::from_slice::<Value>(line) else {
        return Command::Fail("not a JSON object");
    };
    let Some(cmd) = obj.get("cmd") else {
        return match obj.get("uid").and_then(uid_of) {
            Some(uid) => Command::Seed { uid: uid.into() },
            None => Command::Fail("no uid"),
        };
    };
    let push = |target: Result<Target, String>| match target
        .and_then(|t| push::parse(&obj, t, max_targets))
    {
        Ok(p) => Command::Push(p),
        Err(e) => Command::Error(e),
    };
    let field = |k: &str| -> Result<String, String> {
        match obj.get(k) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(v @ Value::Number(_)) => {
                uid_of(v).ok_or_else(|| format!("`{k}` must be a string"))
            }
            Some(_) => Err(format!("`{k}` must be a non-empty string")),
            None => Err(format!("missing `{k}`")),
        }
    };
    let optional_group = || -> Result<Option<String>, String> {
        match obj.get("group") {
            None | Some(Value::Null) => Ok(None),
            Some(_) => field("group").map(Some),
        }
    };
    let query = |q: Result<Query, String>| match q {
        Ok(v) => Command::Query(v),
        Err(e) => Command::Error(e),
    };
    match cmd.as_str() {
        Some("all") => push(Ok(Target::All)),
        Some("push") => match obj.get("to") {
            None => Command::Error("missing `to`".into()),
            Some(to) => push(
                push::check_targets(&obj, &["to", "exclude"], max_targets)
                    .and_then(|()| uid_list(to, "to"))
                    .map(Target::Uids),
            ),
        },
        Some("group") => match obj.get("group") {
            None => Command::Error("missing `group`".into()),
            Some(g) => push(
                push::check_targets(&obj, &["group", "exclude"], max_targets)
                    .and_then(|()| uid_list(g, "group"))
                    .map(Target::Groups),
            ),
        },
        Some("join") => query((|| {
            Ok(Query::Join {
                uid: field("uid")?,
                group: field("group")?,
            })
        })()),
        Some("leave") => query((|| {
            Ok(Query::Leave {
                uid: field("uid")?,
                group: field("group")?,
            })
        })()),
        Some("ungroup") => query(field("group").map(|group| Query::Ungroup { group })),
        Some("online") => query(field("uid").map(|uid| Query::Online { uid })),
        Some("count") => query(optional_group().map(|group| Query::Count { group })),
        Some("uids") => query(optional_group().map(|group| Query::Uids { group })),
        Some("groups") => Command::Query(Query::Groups),
        Some("history") => query(field("uid").map(|uid| Query::History { uid })),
        Some("kick") => query(field("uid").map(|uid| Query::Kick {
            uid,
            data: kick_data(obj.get("data")),
        })),
        Some(c) if crate::events::is_up_cmd(c) => {
            Command::Upstream(crate::events::parse_cmd(c, &obj))
        }
        Some(other) => Command::Error(format!("unknown cmd `{other}`")),
        None => Command::Error("`cmd` must be a string".into()),
    }
}

/// A kick's last message: `data` as a frame body, none when absent or null.
pub fn kick_data(v: Option<&Value>) -> Option<String> {
    v.filter(|d| !d.is_null())
        .map(|d| String::from_utf8_lossy(&push::data_bytes(d)).into_owned())
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

    /// [`super::parse_line`] with the default `max_targets`.
    fn parse_line(line: &[u8]) -> Command<'_> {
        super::parse_line(line, 10_000)
    }

    #[test]
    fn a_push_over_max_targets_is_an_error_before_its_lists_are_read() {
        let over = |line: &[u8]| match super::parse_line(line, 2) {
            Command::Error(e) => e.contains("max_targets") && e.contains("names 3"),
            _ => false,
        };
        assert!(over(br#"{"cmd":"push","to":["a","b","c"],"data":1}"#));
        assert!(over(
            br#"{"cmd":"push","to":["a","b"],"exclude":"c","data":1}"#
        ));
        assert!(over(
            br#"{"cmd":"group","group":["a"],"exclude":["b","c"],"data":1}"#
        ));
        assert!(over(br#"{"cmd":"all","exclude":["a","b","c"],"data":1}"#));
        // Its length refuses it, whatever its entries are.
        assert!(over(br#"{"cmd":"push","to":[1.5,true,null],"data":1}"#));
        assert!(matches!(
            super::parse_line(br#"{"cmd":"push","to":["a"],"exclude":"b","data":1}"#, 2),
            Command::Push(_)
        ));
        // A seed line names one uid: never refused.
        assert!(matches!(
            super::parse_line(br#"{"uid":"a"}"#, 1),
            Command::Seed { .. }
        ));
    }

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
        assert!(matches!(
            parse_line(b"{\"uid\":\"w\",\"x\":\"\xc3\"}"),
            Command::Fail(_)
        ));
    }

    #[test]
    fn commands() {
        assert_eq!(
            parse_line(br#"{"cmd":"all","data":"hi"}"#),
            Command::Push(PushRequest {
                target: Target::All,
                exclude: vec![],
                payload: b"hi".to_vec(),
                binary: false
            })
        );
        assert_eq!(
            parse_line(br#"{"cmd":"push","to":["a","b"],"data":{"x": 1}}"#),
            Command::Push(PushRequest {
                target: Target::Uids(vec!["a".into(), "b".into()]),
                exclude: vec![],
                payload: br#"{"x":1}"#.to_vec(),
                binary: false
            })
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
        assert_eq!(
            parse_line(
                br#"{"cmd":"group","group":"g","data":"AAE=","binary":true,"exclude":["u2"]}"#
            ),
            Command::Push(PushRequest {
                target: Target::Groups(vec!["g".into()]),
                exclude: vec!["u2".into()],
                payload: vec![0, 1],
                binary: true
            })
        );
        assert_eq!(
            parse_line(br#"{"cmd":"join","uid":"u1","group":"g"}"#),
            Command::Query(Query::Join {
                uid: "u1".into(),
                group: "g".into()
            })
        );
        assert!(matches!(
            parse_line(br#"{"cmd":"join","uid":"u1"}"#),
            Command::Error(_)
        ));
        assert!(matches!(
            parse_line(br#"{"cmd":"all","data":"!","binary":true}"#),
            Command::Error(_)
        ));
        assert_eq!(
            parse_line(br#"{"cmd":"count"}"#),
            Command::Query(Query::Count { group: None })
        );
    }

    /// Whatever the scanner settles, serde settles the same way: mutated seed lines (bytes
    /// replaced, inserted, removed, from JSON's own alphabet) compared one by one.
    #[test]
    fn scanner_agrees_with_serde() {
        let seeds: [&[u8]; 6] = [
            br#"{"uid":"u1","t":123}"#,
            br#"{"uid":"abc","content":"x\/y\u00e9\n","n":[1,-2.5e+3,{"a":null}],"ok":true}"#,
            br#"{"cmd":"all","data":"hi","cmd":7}"#,
            br#" {"to":"x", "percent":"88%" ,"uid" : "u2"} "#,
            br#"{"uid":123,"x":false}"#,
            br#"{}"#,
        ];
        let alphabet = b"{}[]\":,\\ \tu0129eE.-+tfnrlabd\x01/";
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n as u64) as usize
        };
        let (mut settled, mut total) = (0, 0);
        for seed in seeds {
            for _ in 0..20_000 {
                let mut line = seed.to_vec();
                for _ in 0..1 + next(3) {
                    let c = alphabet[next(alphabet.len())];
                    let at = next(line.len() + 1);
                    match next(3) {
                        0 if at < line.len() => line[at] = c,
                        1 => line.insert(at, c),
                        _ if at < line.len() => {
                            line.remove(at);
                        }
                        _ => line.push(c),
                    }
                }
                total += 1;
                let want = serde_seed(&line);
                let show = String::from_utf8_lossy(&line).into_owned();
                match seedscan::scan(&line) {
                    Scan::Unsure => continue,
                    Scan::Uid("") | Scan::NoUid => {
                        assert_eq!(want, Some(Command::Fail("no uid")), "{show}")
                    }
                    Scan::Uid(u) => {
                        assert_eq!(want, Some(Command::Seed { uid: u.into() }), "{show}")
                    }
                    // Either way the general parser takes it (to serde a repeated `cmd` is an
                    // error, which also sends it there).
                    Scan::Cmd => assert_eq!(want, None, "{show}"),
                }
                settled += 1;
            }
        }
        // The comparison means something only if the scanner settles many of them.
        assert!(settled > total / 10, "{settled} of {total}");
    }
}
