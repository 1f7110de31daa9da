//! Fuzz target for the text port's line parser, `herald_worker::proto::text::parse_line`.
//!
//! The input is one line as the event loop hands it over (without its `\n`; it may hold any
//! bytes, NUL and invalid UTF-8 included). Asserted, besides "never panics":
//!
//! - a trailing `\r` is ignored: `parse_line(x)` equals `parse_line(x ++ "\r")` when `x` does
//!   not already end with `\r`, and parsing is deterministic;
//! - every uid or group name the parser returns (seed uid, `to`, `group`, `exclude`) is
//!   non-empty;
//! - a text (non-`binary`) push payload is valid UTF-8 (it is sent as a WebSocket text frame as
//!   is, and browsers close the connection on a text frame that is not UTF-8);
//! - a query command carries a non-empty `q`;
//! - an error reply built from `Command::Error` is exactly one line of JSON `{"error": …}`
//!   that round-trips the message, so no client-controlled text can inject a second reply line;
//! - whatever the one-pass seed scanner (`herald_worker::proto::seedscan`) settles, serde settles the
//!   same way: the line parses, `cmd` and `uid` are present or not as the scanner says, and the
//!   uid is the same string.
#![no_main]

use herald_ipc::{Query, Target};
use herald_worker::proto::push::PushRequest;
use herald_worker::proto::seedscan::{scan, Scan};
use herald_worker::proto::text::{error_reply, parse_line, Command, Head};
use libfuzzer_sys::fuzz_target;

fn check(line: &[u8], cmd: &Command) {
    match cmd {
        Command::Seed { uid } => assert!(!uid.is_empty(), "empty seed uid from {line:?}"),
        Command::Push(PushRequest {
            target,
            exclude,
            payload,
            binary,
        }) => {
            match target {
                Target::Uids(ids) | Target::Groups(ids) => {
                    assert!(ids.iter().all(|u| !u.is_empty()), "empty uid or group")
                }
                Target::All => {}
            }
            assert!(
                exclude.iter().all(|u| !u.is_empty()),
                "empty uid in `exclude`"
            );
            if !binary {
                assert!(
                    std::str::from_utf8(payload).is_ok(),
                    "text push payload is not UTF-8: {payload:?}"
                );
            }
        }
        Command::Query(q) => {
            // Every query crosses the mesh as JSON and must come back the same.
            let json = serde_json::to_string(q).unwrap_or_default();
            let back: Option<Query> = serde_json::from_str(&json).ok();
            assert_eq!(back.as_ref(), Some(q), "query does not round-trip: {json}");
        }
        Command::Fail(reason) => assert!(!reason.is_empty()),
        Command::Error(msg) => {
            let reply = error_reply(msg);
            assert_eq!(reply.last(), Some(&b'\n'), "reply does not end a line");
            let body = &reply[..reply.len() - 1];
            assert!(
                !body.contains(&b'\n'),
                "reply spans several lines: {reply:?}"
            );
            let v: serde_like::Value = serde_like::parse(body);
            assert_eq!(
                v.as_deref(),
                Some(msg.as_str()),
                "reply does not round-trip"
            );
        }
        // Variants added to `Command` later are only checked for not panicking.
        #[allow(unreachable_patterns)]
        _ => {}
    }
}

/// A minimal reader for the one JSON shape `error_reply` writes: `{"error":"<string>"}`. Kept
/// self-contained so the check does not trust the same serializer that produced the reply.
mod serde_like {
    pub type Value = Option<String>;

    pub fn parse(b: &[u8]) -> Value {
        let s = std::str::from_utf8(b).ok()?;
        let rest = s.strip_prefix("{\"error\":\"")?.strip_suffix("\"}")?;
        let mut out = String::new();
        let mut it = rest.chars();
        while let Some(c) = it.next() {
            match c {
                '"' => return None, // an unescaped quote would end the string early
                '\\' => match it.next()? {
                    '"' => out.push('"'),
                    '\\' => out.push('\\'),
                    '/' => out.push('/'),
                    'b' => out.push('\u{8}'),
                    'f' => out.push('\u{c}'),
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    'u' => {
                        let hex: String = (0..4).map(|_| it.next()).collect::<Option<_>>()?;
                        let cp = u32::from_str_radix(&hex, 16).ok()?;
                        out.push(char::from_u32(cp)?);
                    }
                    _ => return None,
                },
                c if (c as u32) < 0x20 => return None, // raw control characters are invalid JSON
                c => out.push(c),
            }
        }
        Some(out)
    }
}

fn scanner_agrees(line: &[u8]) {
    let found = scan(line);
    let head = serde_json::from_slice::<Head<'_>>(line);
    match found {
        Scan::Unsure => {}
        // The general parser takes the line either way (a repeated `cmd` is an error to serde).
        Scan::Cmd => assert!(
            head.map_or(true, |h| h.cmd.is_some()),
            "scanner saw a cmd that serde does not: {line:?}"
        ),
        Scan::NoUid | Scan::Uid(_) => {
            let head = match head {
                Ok(h) => h,
                Err(e) => panic!("scanner settled {found:?}, serde rejects ({e}): {line:?}"),
            };
            assert!(head.cmd.is_none(), "cmd for serde: {line:?}");
            match found {
                Scan::Uid(u) => {
                    let raw = head.uid.map(|r| r.get()).unwrap_or("");
                    assert_eq!(serde_json::from_str::<&str>(raw).ok(), Some(u), "{line:?}");
                }
                _ => assert!(head.uid.is_none(), "uid for serde: {line:?}"),
            }
        }
    }
}

/// `max_targets`' default.
const MAX_TARGETS: usize = 10_000;

fuzz_target!(|line: &[u8]| {
    scanner_agrees(line);
    let cmd = parse_line(line, MAX_TARGETS);
    check(line, &cmd);
    assert_eq!(
        parse_line(line, MAX_TARGETS),
        cmd,
        "parse_line is not deterministic"
    );
    if line.last() != Some(&b'\r') {
        let mut with_cr = line.to_vec();
        with_cr.push(b'\r');
        assert_eq!(
            parse_line(&with_cr, MAX_TARGETS),
            cmd,
            "a trailing \\r changed the result"
        );
    }
});
