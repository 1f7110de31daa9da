//! A uid's history in a cluster: kept in Redis, so that a client that reconnects to another
//! host recovers (see `event_loop::history_cluster` for the loop's side). This module holds the
//! Lua scripts, the commands the loop queues on the bus ([`HistCmd`]) and what comes back
//! ([`HistEvent`]); the bus's command thread runs them (`run`), never the loop.
//!
//! What Redis holds, under the cluster prefix `P`, per uid (Centrifugo's layout):
//!
//! - `P:hs:UID`, a stream of the uid's messages, entry id `0-OFFSET`, fields `d` (payload), `b`
//!   (binary), `o` (nobody held the uid when it was pushed: offline delivery sends it), `t`
//!   (Redis's clock in ms when kept). Bounded by `MAXLEN history_size`, and expiring
//!   `history_ttl` after its last message (an entry older than `history_ttl` counts as gone
//!   even while the stream lives);
//! - `P:hm:UID`, a hash beside it: `epoch` (drawn at random by the worker that creates it, so
//!   when Redis loses the hash the epoch changes and old positions are refused), `top` (the
//!   uid's last offset: offsets are consecutive per uid), `od` (offline messages sent up to
//!   here). It lives a day past its last use ([`META_TTL`]), longer than the stream;
//! - `P:hb:PID`, a Socket.IO private session id's binding: `UID\nSID\nBY` (its uid, socket id,
//!   and the Engine.IO session that bound it last), expiring `recovery_window` after the session
//!   ended (refreshed while it lives);
//! - `P:hd:MEMBER/ID:UID`, for a minute: a group push or a broadcast (the entry member's push
//!   `ID`) was written for UID (every worker holding the uid writes; the first one keeps it).
//!
//! A push is written and published in one script (`PUSH`): for each uid it assigns the next
//! offset, appends, sets the expiries, and publishes to every live member holding the uid
//! (this host's members too, and the sender itself: every positioned message of a uid reaches a
//! member on its one subscriber connection, in offset order). The published message starts
//! with byte 40 (`(`), which no member name may start with, so the members' channels carry it
//! beside the bus's envelopes: `(SENDER\nID\nBINARY\n` then one line `LEN UID EPOCH OFFSET`
//! per uid of that member, an empty line, and the payload.

use herald_ipc::{HistoryMsg, Kept, Whose};
use redis::{Script, Value};
use std::sync::LazyLock;

/// How long a uid's `P:hm` hash (its epoch and top offset) lives after its last use, in
/// seconds: longer than its messages, so a client that comes back after they expired is told
/// `recovered: false` in the same epoch rather than starting over.
pub const META_TTL: u64 = 86_400;
/// The first byte of a positioned push on a member's channel.
pub const POSITIONED: u8 = 40;
/// The first byte of a group push or a broadcast to every member (`P:all`) when the history
/// is in Redis: then an envelope (`crate::cluster::envelope`) of the mesh's push.
pub const GROUP: u8 = 41;

/// Writes a push for uids ARGV[11..] and publishes it. ARGV: prefix, sender member, push id,
/// a new epoch (used for a uid that has none), size, ttl (ms), meta ttl (s), binary, payload,
/// and a token (empty, or the group push's `MEMBER/ID`: a uid already written for that token,
/// by another holder of it, is skipped). Returns how many members it was published to.
const PUSH: &str = include_str!("cluster_history/push.lua");

/// A recovery. ARGV: prefix, member, new epoch, ttl (ms), meta ttl (s), most payload bytes,
/// size, `u` or `p` (whose), the uid or pid, mode (`s` since, `o` offline, `n` position only),
/// epoch, offset. A pid is resolved through its binding (and this member is added to the uid's
/// holders at once, so that every later push reaches it). Returns `{0}` for an unknown pid,
/// else `{1, uid, sid, epoch, top, status, offset1, binary1, payload1, …}` with status `ok`,
/// `foreign`, `future`, `gone` or `big`.
const RECOVER: &str = include_str!("cluster_history/recover.lua");

/// What is kept for a uid (the backends' `history`). ARGV: prefix, uid, ttl (ms), size.
/// Returns `{epoch or '', top, offset1, binary1, payload1, …}`, without expired messages.
const READ: &str = include_str!("cluster_history/read.lua");

/// Binds a Socket.IO private id. ARGV: prefix, pid, uid, sid, by, ended (`1`/`0`), window
/// (s). A pid bound to another uid is left alone; an end told by another session than the
/// last binder too. Returns 1 when bound.
const BIND: &str = include_str!("cluster_history/bind.lua");

/// The scripts, made once (each knows its SHA1).
static SCRIPTS: LazyLock<[Script; 4]> = LazyLock::new(|| {
    [
        Script::new(PUSH),
        Script::new(RECOVER),
        Script::new(READ),
        Script::new(BIND),
    ]
});

/// The bounds a command runs with (from the configuration).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Messages kept per uid (`history_size`).
    pub size: usize,
    /// How long a message stays recoverable, in ms (`history_ttl`).
    pub ttl_ms: u64,
    /// How long a Socket.IO session stays recoverable after it ended, in s.
    pub window_s: u64,
    /// Most payload bytes a recovery answer carries.
    pub max_bytes: usize,
}

/// What the loop asks of the history in Redis.
#[derive(Debug)]
pub enum HistCmd {
    /// Keep `payload` for `uids` and publish it with its positions; answered with
    /// [`HistEvent::Pushed`].
    Push {
        /// The entry's id for the push (the members answer it).
        id: u64,
        /// Whom it is for (distinct).
        uids: Vec<String>,
        /// The message.
        payload: Vec<u8>,
        /// Sent as a binary frame.
        binary: bool,
        /// Bounds.
        lim: Limits,
        /// A fresh epoch, for a uid that has none.
        epoch: u64,
        /// For a group push, written by every holder of a member: `MEMBER/ID` of the group
        /// push, so that one copy is kept per uid (empty otherwise).
        token: String,
    },
    /// A recovery (as the mesh's `HistoryMsg::Recover`); answered with
    /// [`HistEvent::Recovered`].
    Recover {
        /// The recovery's id.
        id: u64,
        /// Whose.
        whose: Whose,
        /// The client's position's epoch and offset, if any.
        pos: Option<(u64, u64)>,
        /// Offline messages instead.
        offline: bool,
        /// Bounds.
        lim: Limits,
        /// A fresh epoch, for a uid that has none.
        epoch: u64,
    },
    /// What is kept for `uid`; answered with [`HistEvent::Read`].
    Read {
        /// The question's id.
        id: u64,
        /// The uid.
        uid: String,
        /// Bounds.
        lim: Limits,
    },
    /// A Socket.IO session's binding (as the mesh's `HistoryMsg::Bind`); no answer.
    Bind {
        /// Private id.
        pid: String,
        /// Uid.
        uid: String,
        /// Socket id.
        sid: String,
        /// The Engine.IO session binding it.
        by: String,
        /// The session ended.
        ended: bool,
        /// Bounds.
        lim: Limits,
    },
    /// Live sessions' bindings live another window; no answer.
    Refresh {
        /// Their private ids.
        pids: Vec<String>,
        /// Bounds.
        lim: Limits,
    },
}

/// What comes back to the loop.
#[derive(Debug)]
pub enum HistEvent {
    /// How many members a push was published to; `None`: it was neither kept nor sent.
    Pushed {
        /// The push's id.
        id: u64,
        /// Members reached.
        count: Option<u32>,
    },
    /// A recovery's answer, as an owner's on the mesh (`found: false` when Redis could not
    /// be asked or the pid is unknown).
    Recovered(HistoryMsg),
    /// What is kept for a uid: epoch (0: nothing), top and messages; `None` when Redis could
    /// not be asked.
    Read {
        /// The question's id.
        id: u64,
        /// The answer.
        kept: Option<(u64, u64, Vec<Kept>)>,
    },
}

impl HistCmd {
    /// The answer to a command that could not run.
    pub fn failed(self) -> Option<HistEvent> {
        match self {
            HistCmd::Push { id, .. } => Some(HistEvent::Pushed { id, count: None }),
            HistCmd::Recover { id, .. } => Some(HistEvent::Recovered(HistoryMsg::not_found(id))),
            HistCmd::Read { id, .. } => Some(HistEvent::Read { id, kept: None }),
            HistCmd::Bind { .. } | HistCmd::Refresh { .. } => None,
        }
    }
}

/// Loads the scripts on a new connection.
pub fn load(con: &mut redis::Connection) -> redis::RedisResult<()> {
    for s in SCRIPTS.iter() {
        s.prepare_invoke().load(con)?;
    }
    Ok(())
}

/// Runs `cmds` on `con` in one pipeline; the answers go to `emit` (false: the loop is gone).
/// `Err` when the connection failed (every command was answered as failed).
pub fn run(
    con: &mut redis::Connection,
    prefix: &str,
    member: &str,
    cmds: Vec<HistCmd>,
    mut emit: impl FnMut(HistEvent) -> bool,
) -> redis::RedisResult<()> {
    if cmds.is_empty() {
        return Ok(());
    }
    let [push, recover, read, bind] = &*SCRIPTS;
    let mut pipe = redis::pipe();
    for c in &cmds {
        match c {
            HistCmd::Push {
                id,
                uids,
                payload,
                binary,
                lim,
                epoch,
                token,
            } => {
                pipe.cmd("EVALSHA")
                    .arg(push.get_hash())
                    .arg(0)
                    .arg(prefix)
                    .arg(member)
                    .arg(*id)
                    .arg(format!("{epoch:x}"))
                    .arg(lim.size.max(1))
                    .arg(lim.ttl_ms.max(1))
                    .arg(META_TTL)
                    .arg(u8::from(*binary))
                    .arg(payload.as_slice())
                    .arg(token)
                    .arg(uids.as_slice());
            }
            HistCmd::Recover {
                whose,
                pos,
                offline,
                lim,
                epoch,
                ..
            } => {
                let (kind, who) = match whose {
                    Whose::Uid { uid } => ("u", uid),
                    Whose::Pid { pid } => ("p", pid),
                };
                let mode = if *offline {
                    "o"
                } else if pos.is_some() {
                    "s"
                } else {
                    "n"
                };
                let (e, o) = pos.unwrap_or((0, 0));
                pipe.cmd("EVALSHA")
                    .arg(recover.get_hash())
                    .arg(0)
                    .arg(prefix)
                    .arg(member)
                    .arg(format!("{epoch:x}"))
                    .arg(lim.ttl_ms.max(1))
                    .arg(META_TTL)
                    .arg(lim.max_bytes)
                    .arg(lim.size.max(1))
                    .arg(kind)
                    .arg(who)
                    .arg(mode)
                    .arg(format!("{e:x}"))
                    .arg(o);
            }
            HistCmd::Read { uid, lim, .. } => {
                pipe.cmd("EVALSHA")
                    .arg(read.get_hash())
                    .arg(0)
                    .arg(prefix)
                    .arg(uid)
                    .arg(lim.ttl_ms.max(1))
                    .arg(lim.size.max(1));
            }
            HistCmd::Bind {
                pid,
                uid,
                sid,
                by,
                ended,
                lim,
            } => {
                pipe.cmd("EVALSHA")
                    .arg(bind.get_hash())
                    .arg(0)
                    .arg(prefix)
                    .arg(pid)
                    .arg(uid)
                    .arg(sid)
                    .arg(by)
                    .arg(if *ended { "1" } else { "0" })
                    .arg(lim.window_s.max(1));
            }
            HistCmd::Refresh { pids, lim } => {
                for pid in pids {
                    pipe.cmd("EXPIRE")
                        .arg(format!("{prefix}:hb:{pid}"))
                        .arg(lim.window_s.max(1));
                }
            }
        }
    }
    // One command's error (a script's) fails that command only.
    let answers = match pipe.ignore_errors().query::<Vec<Value>>(con) {
        Ok(v) => v,
        Err(e) => {
            let lost = e.is_io_error() || e.is_connection_dropped() || e.is_timeout();
            if !lost {
                log::warn!("cluster history: {e}");
            }
            for c in cmds {
                if let Some(ev) = c.failed() {
                    if !emit(ev) {
                        return Ok(());
                    }
                }
            }
            return if lost { Err(e) } else { Ok(()) };
        }
    };
    // Logged once a batch (Redis out of memory would fail every one).
    let mut errors = answers.iter().filter_map(|a| match a {
        Value::ServerError(e) => Some(e),
        _ => None,
    });
    if let Some(e) = errors.next() {
        let more = errors.count();
        log::warn!(
            "cluster history: {} {} (and {more} more errors in this batch)",
            e.code(),
            e.details().unwrap_or("")
        );
    }
    // Scripts flushed from Redis's cache (`SCRIPT FLUSH`): loaded again for the next batch.
    if answers
        .iter()
        .any(|a| matches!(a, Value::ServerError(e) if e.code() == "NOSCRIPT"))
    {
        load(con)?;
    }
    // `Refresh` gives one answer per pid: walk the answers with the commands.
    let mut answers = answers.into_iter();
    for c in cmds {
        let ev = match c {
            HistCmd::Push { id, .. } => {
                let count = match answers.next() {
                    Some(Value::Int(n)) => u32::try_from(n).ok(),
                    _ => None,
                };
                Some(HistEvent::Pushed { id, count })
            }
            HistCmd::Recover { id, .. } => Some(HistEvent::Recovered(
                answers
                    .next()
                    .and_then(|v| recovered(id, v))
                    .unwrap_or_else(|| HistoryMsg::not_found(id)),
            )),
            HistCmd::Read { id, .. } => Some(HistEvent::Read {
                id,
                kept: answers.next().and_then(read_answer),
            }),
            HistCmd::Bind { .. } => {
                answers.next();
                None
            }
            HistCmd::Refresh { pids, .. } => {
                for _ in 0..pids.len() {
                    answers.next();
                }
                None
            }
        };
        if let Some(ev) = ev {
            if !emit(ev) {
                return Ok(());
            }
        }
    }
    Ok(())
}

/// A reply's bytes.
fn bytes(v: &Value) -> Option<&[u8]> {
    match v {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

/// A reply's text.
fn text(v: &Value) -> Option<String> {
    bytes(v).and_then(|b| String::from_utf8(b.to_vec()).ok())
}

/// A reply's number.
fn int(v: &Value) -> Option<u64> {
    match v {
        Value::Int(n) => u64::try_from(*n).ok(),
        other => text(other)?.parse().ok(),
    }
}

/// Messages as `offset, binary, payload` triples.
fn messages(rest: &[Value]) -> Option<Vec<Kept>> {
    rest.chunks(3)
        .map(|t| match t {
            [o, b, d] => Some(Kept {
                offset: int(o)?,
                binary: bytes(b)? == b"1",
                payload: bytes(d)?.to_vec(),
            }),
            _ => None,
        })
        .collect()
}

/// A hex epoch as Redis keeps it.
fn epoch(v: &Value) -> Option<u64> {
    u64::from_str_radix(&text(v)?, 16).ok()
}

/// The `RECOVER` script's answer as a recovery answer.
fn recovered(id: u64, v: Value) -> Option<HistoryMsg> {
    let Value::Array(a) = v else { return None };
    if a.len() < 6 || int(&a[0]) != Some(1) {
        return None;
    }
    let status = text(&a[5])?;
    let ok = status == "ok";
    if !ok {
        log::debug!("cluster history: recovery {id}: {status}");
    }
    Some(HistoryMsg::Recovered {
        id,
        found: true,
        uid: text(&a[1])?,
        sid: text(&a[2])?,
        recovered: ok,
        epoch: epoch(&a[3])?,
        top: int(&a[4])?,
        messages: if ok { messages(&a[6..])? } else { Vec::new() },
    })
}

/// The `READ` script's answer.
fn read_answer(v: Value) -> Option<(u64, u64, Vec<Kept>)> {
    let Value::Array(a) = v else { return None };
    if a.len() < 2 {
        return None;
    }
    let e = if bytes(&a[0]).is_some_and(<[u8]>::is_empty) {
        0
    } else {
        epoch(&a[0])?
    };
    Some((e, int(&a[1])?, messages(&a[2..])?))
}

/// A positioned push as a member receives it.
#[derive(Debug, PartialEq, Eq)]
pub struct Positioned<'a> {
    /// The member that wrote it (answered with `Delivered`).
    pub from: &'a str,
    /// The push's id at that member.
    pub id: u64,
    /// A binary frame.
    pub binary: bool,
    /// This member's uids of it, each with its epoch and offset.
    pub uids: Vec<(&'a str, u64, u64)>,
    /// The payload.
    pub payload: &'a [u8],
}

/// Reads a positioned push (the message after its first byte, [`POSITIONED`]).
pub fn parse_positioned(m: &[u8]) -> Option<Positioned<'_>> {
    /// The next `\n`-ended line of `m` from `at`.
    fn line<'a>(m: &'a [u8], at: &mut usize) -> Option<&'a str> {
        let rest = m.get(*at..)?;
        let nl = rest.iter().position(|&b| b == b'\n')?;
        *at += nl + 1;
        std::str::from_utf8(&rest[..nl]).ok()
    }
    let mut at = 0;
    let from = line(m, &mut at)?;
    let id = line(m, &mut at)?.parse().ok()?;
    let binary = line(m, &mut at)? == "1";
    let mut uids = Vec::new();
    loop {
        if *m.get(at)? == b'\n' {
            at += 1;
            break;
        }
        let rest = &m[at..];
        let sp = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        let uid = std::str::from_utf8(rest.get(sp + 1..sp + 1 + len)?).ok()?;
        at += sp + 1 + len;
        if m.get(at) != Some(&b' ') {
            return None;
        }
        at += 1;
        let pos = line(m, &mut at)?;
        let (e, o) = pos.split_once(' ')?;
        uids.push((uid, u64::from_str_radix(e, 16).ok()?, o.parse().ok()?));
    }
    Some(Positioned {
        from,
        id,
        binary,
        uids,
        payload: &m[at..],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positioned_pushes_parse() {
        let m = b"node-a/12\n7\n0\n2 u1 ff 3\n5 a b\nc 1a 9\n\n{\"x\":\"\n\"}";
        let p = parse_positioned(m).unwrap();
        assert_eq!(p.from, "node-a/12");
        assert_eq!(p.id, 7);
        assert!(!p.binary);
        assert_eq!(p.uids, vec![("u1", 255, 3), ("a b\nc", 26, 9)]);
        assert_eq!(p.payload, b"{\"x\":\"\n\"}");
        for bad in [
            &b""[..],
            b"m\n1\n0\n",
            b"m\nx\n0\n\n",
            b"m\n1\n0\n9 u 1 1\n\n",
            b"m\n1\n0\n1 u zz 1\n\n",
        ] {
            assert!(parse_positioned(bad).is_none(), "{bad:?}");
        }
        assert_eq!(parse_positioned(b"m\n1\n1\n\n").unwrap().uids, vec![]);
    }

    #[test]
    fn script_answers_read() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let v = Value::Array(vec![
            Value::Int(1),
            b("u"),
            b("s"),
            b("ff"),
            Value::Int(4),
            b("ok"),
            Value::Int(3),
            b("0"),
            b("m3"),
            Value::Int(4),
            b("1"),
            b("m4"),
        ]);
        let HistoryMsg::Recovered {
            found,
            recovered: r,
            epoch,
            top,
            messages,
            ..
        } = recovered(9, v).unwrap()
        else {
            panic!()
        };
        assert!(found && r);
        assert_eq!((epoch, top), (255, 4));
        assert_eq!(messages.len(), 2);
        assert!(messages[1].binary);
        assert!(recovered(9, Value::Array(vec![Value::Int(0)])).is_none());
        assert_eq!(
            read_answer(Value::Array(vec![b(""), Value::Int(0)])),
            Some((0, 0, vec![]))
        );
    }
}
