//! The messages: worker ↔ worker ([`PeerMsg`], compact binary) and master ↔ worker
//! ([`Control`], JSON in a frame: rare, and readable in a packet capture).

use crate::codec::{put, CodecError, Reader, Wire};
pub use crate::control::{mesh_name, Control, Peer, EXIT_BAD_START, EXIT_BIND_FAILED};
use crate::history::HistoryMsg;
use crate::query::{Query, Share};

/// Whom a push is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every connection of each of these uids.
    Uids(Vec<String>),
    /// Every logged-in connection.
    All,
    /// Every connection of every uid in these groups.
    Groups(Vec<String>),
}

/// One push, as the entry worker sends it to each sibling. The payload travels once per
/// sibling; each sibling frames it once and shares the bytes between its recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Push {
    /// Chosen by the entry worker, unique among its pushes in flight; echoed in `Delivered`.
    pub id: u64,
    /// When the entry worker stops waiting and answers without this sibling's share, on the
    /// host's monotonic clock (nanoseconds of `CLOCK_MONOTONIC`, the same in every process):
    /// a sibling that reads the push too late drops it, so an answer of `fail` means that
    /// nobody got it.
    pub deadline: u64,
    /// Whom to deliver to.
    pub target: Target,
    /// Uids left out (GatewayWorker's `exclude`).
    pub exclude: Vec<String>,
    /// The message body to put in one WebSocket frame.
    pub payload: Vec<u8>,
    /// Binary frame instead of text.
    pub binary: bool,
}

/// A worker's uid buckets, whole or changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Presence {
    /// Every bucket, one bit each (sent when a link opens).
    Snapshot(Vec<u8>),
    /// Buckets that became set (`on`) or clear (`off`) since the last message.
    Changes {
        /// Newly set buckets.
        on: Vec<u32>,
        /// Newly clear buckets.
        off: Vec<u32>,
    },
}

/// What siblings say to each other over the mesh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerMsg {
    /// First frame on a connection: who is calling (so the callee can log it and file the
    /// caller's presence under its pid).
    Hello {
        /// The caller's worker id.
        worker: u32,
        /// The caller's pid (two processes share a worker id during a graceful reload).
        pid: u32,
    },
    /// Which uid buckets the sender holds connections in (see the worker's `presence`): a
    /// sibling sends a push for a uid only to the workers whose bucket for it is set, and
    /// waits only for them.
    Presence(Presence),
    /// Deliver this to your own connections and answer `Delivered`.
    Push(Push),
    /// How many connections the sibling wrote the push `id` to.
    Delivered {
        /// The push's id.
        id: u64,
        /// Connections reached.
        count: u32,
    },
    /// A question for a sibling (presence, counts, group changes, kicks, status).
    Query {
        /// Echoed in the `Answer`.
        id: u64,
        /// The question.
        query: Query,
    },
    /// A sibling's share of the answer to `Query { id }`.
    Answer {
        /// The query's id.
        id: u64,
        /// Its share.
        share: Share,
    },
    /// The sender's event subscribers, whole (sent when a link opens and after each change):
    /// each subscriber's id (its text connection's id) and the events it wants (a bit mask).
    /// Every worker routes a client's `message` to one subscriber of the whole server.
    Subscribers(Vec<(u64, u8)>),
    /// An event line for the receiver's subscribers: the one whose id is `sub`, or, with
    /// `sub` 0, every subscriber wanting one of the events in `mask`.
    Event {
        /// The subscriber, or 0 for all that want `mask`.
        sub: u64,
        /// The event's bit.
        mask: u8,
        /// The JSON line, newline included.
        line: Vec<u8>,
    },
    /// To the worker that keeps the server-wide presence of these uids: the sender got the
    /// first connection of each (`on`), or lost the last one.
    UidsHeld {
        /// Arrived (true) or departed.
        on: bool,
        /// The uids.
        uids: Vec<String>,
    },
    /// A backend's answer for one client connection of the receiver (its `conn` string, as
    /// the events name it): a message to it, or the payload of a Socket.IO acknowledgement.
    ToClient {
        /// The connection, as the events name it.
        conn: String,
        /// The Socket.IO ack id the answer is for; `None`: a message (reply).
        ack: Option<u64>,
        /// A binary frame (a reply only).
        binary: bool,
        /// The reply's bytes, or the ack's arguments as a JSON array.
        payload: Vec<u8>,
    },
    /// With a history: a push for uids this worker owns (`Target::Uids`): record it (which
    /// gives each uid its position), deliver it, send it on with the positions, and answer
    /// `Delivered` with the whole count.
    Route(Push),
    /// A push from the owner of its uids (`Target::Uids`), with each uid's position:
    /// deliver it and answer `Delivered`.
    Positioned {
        /// The push.
        push: Push,
        /// Each uid's position (epoch, offset), in the order of the target's uids.
        positions: Vec<(u64, u64)>,
    },
    /// With a history: the owner's answer to a `Route` whose uids no other sibling than the
    /// asker may hold: the push (its id the `Route`'s) with each uid's position, for the asker
    /// to deliver as a `Positioned`, and the owner's own count. The asker's count and this one
    /// answer the `Route`: no `Delivered` follows (two messages where `Positioned` and its
    /// answers take four).
    PositionedAnswer {
        /// Connections the owner reached.
        count: u32,
        /// The push.
        push: Push,
        /// Each uid's position (epoch, offset), in the order of the target's uids.
        positions: Vec<(u64, u64)>,
    },
    /// With a history, to the owner of the push's uids (`Target::Uids`): the sender delivered
    /// it itself, to connections of its own that want no position, and no other worker may
    /// hold them: keep it (and deliver it to any connection of the owner's own); no answer.
    Record(Push),
    /// Bindings and recoveries (see [`HistoryMsg`]).
    History(HistoryMsg),
    /// With a history, on one host: a broadcast to everyone as the sender kept it, at its
    /// position: deliver it to the connections here that want positions and whose uid's
    /// history the sender owns (the others got the plain broadcast). Not answered: the
    /// broadcast's count was made when it was delivered plainly.
    AllPositioned {
        /// The sender's epoch (a connection with no position yet takes it).
        epoch: u64,
        /// The broadcast's offset on the sender's counter.
        offset: u64,
        /// Uids left out.
        exclude: Vec<String>,
        /// A binary frame.
        binary: bool,
        /// The message.
        payload: Vec<u8>,
    },
    /// To the worker that keeps the server-wide presence of these uids, when the sender's link
    /// to it opens: the sender holds connections of them now. Each was announced `online`
    /// already (by the owner before, or by the sender deciding alone while it had no link), so
    /// the receiver records them without announcing them again.
    UidsSnapshot(Vec<String>),
    /// To the presence backup of the sender (the next worker id): the sender, owner of these
    /// uids, got their first connection itself (`on`) or lost its last one; `whole`: these are
    /// all of them (sent when the link opens; `on` is then true). Should the sender die, the
    /// backup says `offline` for the uids nobody else holds, which no other worker knew of.
    UidsBacked {
        /// The list replaces what the backup knew of the sender.
        whole: bool,
        /// Arrived (true) or departed.
        on: bool,
        /// The uids.
        uids: Vec<String>,
    },
    /// To the presence owner of these uids, when the sender's link to it opens: their last
    /// connection in the sender ended while the sender had no link to the owner (the owner was
    /// being replaced). The owner says `offline` for those nobody holds.
    UidsGone(Vec<String>),
}

const HELLO: u8 = 1;
const PUSH: u8 = 2;
const DELIVERED: u8 = 3;
const QUERY: u8 = 4;
const ANSWER: u8 = 5;
const PRESENCE_SNAPSHOT: u8 = 6;
const PRESENCE_CHANGES: u8 = 7;
const SUBSCRIBERS: u8 = 8;
const EVENT: u8 = 9;
const UIDS_HELD: u8 = 10;
const TO_CLIENT: u8 = 11;
/// An [`PeerMsg::Answer`] carrying [`Share::Hashes`], in binary: 8 bytes a uid, read with a
/// copy, where JSON would cost 20 characters and a parse per number.
const ANSWER_HASHES: u8 = 12;
/// An [`PeerMsg::Answer`] carrying [`Share::UidList`], its list as raw bytes.
const ANSWER_UID_LIST: u8 = 13;
const ROUTE: u8 = 14;
const POSITIONED: u8 = 15;
const HISTORY: u8 = 16;
const ALL_POSITIONED: u8 = 17;
const POSITIONED_ANSWER: u8 = 18;
const RECORD: u8 = 19;
const UIDS_SNAPSHOT: u8 = 60;
const UIDS_BACKED: u8 = 61;
const UIDS_GONE: u8 = 62;

const T_UIDS: u8 = 0;
const T_ALL: u8 = 1;
const T_GROUPS: u8 = 2;

impl Wire for PeerMsg {
    fn encode(&self, out: &mut Vec<u8>) {
        match self {
            PeerMsg::Hello { worker, pid } => {
                put::u8(out, HELLO);
                put::u32(out, *worker);
                put::u32(out, *pid);
            }
            PeerMsg::Presence(Presence::Snapshot(bits)) => {
                put::u8(out, PRESENCE_SNAPSHOT);
                out.extend_from_slice(bits);
            }
            PeerMsg::Presence(Presence::Changes { on, off }) => {
                put::u8(out, PRESENCE_CHANGES);
                put::u32s(out, on);
                put::u32s(out, off);
            }
            PeerMsg::Push(p) => {
                put::u8(out, PUSH);
                encode_push(p, out);
            }
            PeerMsg::Route(p) => {
                put::u8(out, ROUTE);
                encode_push(p, out);
            }
            PeerMsg::Record(p) => {
                put::u8(out, RECORD);
                encode_push(p, out);
            }
            PeerMsg::Positioned { push, positions } => {
                put::u8(out, POSITIONED);
                encode_positioned(push, positions, out);
            }
            PeerMsg::PositionedAnswer {
                count,
                push,
                positions,
            } => {
                put::u8(out, POSITIONED_ANSWER);
                put::u32(out, *count);
                encode_positioned(push, positions, out);
            }
            PeerMsg::AllPositioned {
                epoch,
                offset,
                exclude,
                binary,
                payload,
            } => {
                put::u8(out, ALL_POSITIONED);
                put::u64(out, *epoch);
                put::u64(out, *offset);
                put::strs(out, exclude);
                put::u8(out, *binary as u8);
                out.extend_from_slice(payload);
            }
            PeerMsg::History(h) => {
                put::u8(out, HISTORY);
                let _ = serde_json::to_writer(&mut *out, h);
            }
            PeerMsg::Delivered { id, count } => {
                put::u8(out, DELIVERED);
                put::u64(out, *id);
                put::u32(out, *count);
            }
            // Rare and small next to pushes: JSON, readable in a capture.
            PeerMsg::Query { id, query } => {
                put::u8(out, QUERY);
                put::u64(out, *id);
                // Serialising these plain enums to a Vec cannot fail.
                let _ = serde_json::to_writer(&mut *out, query);
            }
            PeerMsg::Answer {
                id,
                share:
                    Share::Hashes {
                        connections,
                        hashes,
                    },
            } => {
                put::u8(out, ANSWER_HASHES);
                put::u64(out, *id);
                put::u64(out, *connections);
                for h in hashes {
                    put::u64(out, *h);
                }
            }
            PeerMsg::Answer {
                id,
                share: Share::UidList { connections, uids },
            } => {
                put::u8(out, ANSWER_UID_LIST);
                put::u64(out, *id);
                put::u64(out, *connections);
                out.extend_from_slice(uids.as_bytes());
            }
            PeerMsg::Answer { id, share } => {
                put::u8(out, ANSWER);
                put::u64(out, *id);
                let _ = serde_json::to_writer(&mut *out, share);
            }
            PeerMsg::Subscribers(list) => {
                put::u8(out, SUBSCRIBERS);
                put::u32(out, list.len() as u32);
                for (id, mask) in list {
                    put::u64(out, *id);
                    put::u8(out, *mask);
                }
            }
            PeerMsg::Event { sub, mask, line } => {
                put::u8(out, EVENT);
                put::u64(out, *sub);
                put::u8(out, *mask);
                out.extend_from_slice(line);
            }
            PeerMsg::UidsHeld { on, uids } => {
                put::u8(out, UIDS_HELD);
                put::u8(out, *on as u8);
                put::strs(out, uids);
            }
            PeerMsg::ToClient {
                conn,
                ack,
                binary,
                payload,
            } => {
                put::u8(out, TO_CLIENT);
                put::bytes(out, conn.as_bytes());
                put::u8(out, ack.is_some() as u8);
                put::u64(out, ack.unwrap_or(0));
                put::u8(out, *binary as u8);
                out.extend_from_slice(payload);
            }
            PeerMsg::UidsSnapshot(uids) => {
                put::u8(out, UIDS_SNAPSHOT);
                put::strs(out, uids);
            }
            PeerMsg::UidsBacked { whole, on, uids } => {
                put::u8(out, UIDS_BACKED);
                put::u8(out, *whole as u8);
                put::u8(out, *on as u8);
                put::strs(out, uids);
            }
            PeerMsg::UidsGone(uids) => {
                put::u8(out, UIDS_GONE);
                put::strs(out, uids);
            }
        }
    }

    fn decode(kind: u8, body: &[u8]) -> Result<Self, CodecError> {
        let mut r = Reader::new(body);
        Ok(match kind {
            HELLO => PeerMsg::Hello {
                worker: r.u32("worker")?,
                pid: r.u32("pid")?,
            },
            PRESENCE_SNAPSHOT => PeerMsg::Presence(Presence::Snapshot(r.rest().to_vec())),
            PRESENCE_CHANGES => PeerMsg::Presence(Presence::Changes {
                on: r.u32s("on")?,
                off: r.u32s("off")?,
            }),
            PUSH => PeerMsg::Push(decode_push(&mut r)?),
            ROUTE => PeerMsg::Route(decode_push(&mut r)?),
            RECORD => PeerMsg::Record(decode_push(&mut r)?),
            POSITIONED => {
                let (push, positions) = decode_positioned(&mut r, body.len())?;
                PeerMsg::Positioned { push, positions }
            }
            POSITIONED_ANSWER => {
                let count = r.u32("count")?;
                let (push, positions) = decode_positioned(&mut r, body.len())?;
                PeerMsg::PositionedAnswer {
                    count,
                    push,
                    positions,
                }
            }
            ALL_POSITIONED => PeerMsg::AllPositioned {
                epoch: r.u64("epoch")?,
                offset: r.u64("offset")?,
                exclude: r.strs("exclude")?,
                binary: r.u8("binary")? != 0,
                payload: r.rest().to_vec(),
            },
            HISTORY => PeerMsg::History(
                serde_json::from_slice(r.rest()).map_err(|e| CodecError::Json(e.to_string()))?,
            ),
            DELIVERED => PeerMsg::Delivered {
                id: r.u64("id")?,
                count: r.u32("count")?,
            },
            QUERY => PeerMsg::Query {
                id: r.u64("id")?,
                query: serde_json::from_slice(r.rest())
                    .map_err(|e| CodecError::Json(e.to_string()))?,
            },
            ANSWER_HASHES => {
                let id = r.u64("id")?;
                let connections = r.u64("connections")?;
                let rest = r.rest();
                if !rest.len().is_multiple_of(8) {
                    return Err(CodecError::Truncated("hashes"));
                }
                let hashes = rest
                    .chunks_exact(8)
                    .map(|c| {
                        let mut a = [0u8; 8];
                        a.copy_from_slice(c);
                        u64::from_be_bytes(a)
                    })
                    .collect();
                PeerMsg::Answer {
                    id,
                    share: Share::Hashes {
                        connections,
                        hashes,
                    },
                }
            }
            ANSWER_UID_LIST => {
                let id = r.u64("id")?;
                let connections = r.u64("connections")?;
                let uids =
                    String::from_utf8(r.rest().to_vec()).map_err(|_| CodecError::Utf8("uids"))?;
                PeerMsg::Answer {
                    id,
                    share: Share::UidList { connections, uids },
                }
            }
            ANSWER => PeerMsg::Answer {
                id: r.u64("id")?,
                share: serde_json::from_slice(r.rest())
                    .map_err(|e| CodecError::Json(e.to_string()))?,
            },
            SUBSCRIBERS => {
                let n = r.u32("subscribers")? as usize;
                // Each entry is 9 bytes: refuse counts the body cannot hold.
                if n > body.len() / 9 {
                    return Err(CodecError::Truncated("subscribers"));
                }
                let mut list = Vec::with_capacity(n);
                for _ in 0..n {
                    list.push((r.u64("subscriber")?, r.u8("mask")?));
                }
                PeerMsg::Subscribers(list)
            }
            EVENT => PeerMsg::Event {
                sub: r.u64("sub")?,
                mask: r.u8("mask")?,
                line: r.rest().to_vec(),
            },
            UIDS_HELD => PeerMsg::UidsHeld {
                on: r.u8("on")? != 0,
                uids: r.strs("uids")?,
            },
            TO_CLIENT => {
                let conn = r.string("conn")?;
                let has_ack = r.u8("has_ack")? != 0;
                let ack = r.u64("ack")?;
                PeerMsg::ToClient {
                    conn,
                    ack: has_ack.then_some(ack),
                    binary: r.u8("binary")? != 0,
                    payload: r.rest().to_vec(),
                }
            }
            UIDS_SNAPSHOT => PeerMsg::UidsSnapshot(r.strs("uids")?),
            UIDS_BACKED => PeerMsg::UidsBacked {
                whole: r.u8("whole")? != 0,
                on: r.u8("on")? != 0,
                uids: r.strs("uids")?,
            },
            UIDS_GONE => PeerMsg::UidsGone(r.strs("uids")?),
            other => return Err(CodecError::UnknownKind(other)),
        })
    }
}

/// A push's fields after its kind byte.
fn encode_push(p: &Push, out: &mut Vec<u8>) {
    put::u64(out, p.id);
    put::u64(out, p.deadline);
    match &p.target {
        Target::Uids(u) => {
            put::u8(out, T_UIDS);
            put::strs(out, u);
        }
        Target::All => put::u8(out, T_ALL),
        Target::Groups(g) => {
            put::u8(out, T_GROUPS);
            put::strs(out, g);
        }
    }
    put::strs(out, &p.exclude);
    put::u8(out, p.binary as u8);
    out.extend_from_slice(&p.payload);
}

/// The positions, then the push.
fn encode_positioned(push: &Push, positions: &[(u64, u64)], out: &mut Vec<u8>) {
    put::u32(out, positions.len() as u32);
    for (e, o) in positions {
        put::u64(out, *e);
        put::u64(out, *o);
    }
    encode_push(push, out);
}

/// What [`encode_positioned`] wrote, from a body of `len` bytes.
fn decode_positioned(
    r: &mut Reader<'_>,
    len: usize,
) -> Result<(Push, Vec<(u64, u64)>), CodecError> {
    let n = r.u32("positions")? as usize;
    // Refused before allocating when the body cannot hold that many.
    if n > len / 16 {
        return Err(CodecError::Truncated("positions"));
    }
    let mut positions = Vec::with_capacity(n);
    for _ in 0..n {
        positions.push((r.u64("epoch")?, r.u64("offset")?));
    }
    Ok((decode_push(r)?, positions))
}

/// A push's fields, as [`encode_push`] wrote them.
fn decode_push(r: &mut Reader<'_>) -> Result<Push, CodecError> {
    let id = r.u64("id")?;
    let deadline = r.u64("deadline")?;
    let target = match r.u8("target")? {
        T_UIDS => Target::Uids(r.strs("uids")?),
        T_ALL => Target::All,
        T_GROUPS => Target::Groups(r.strs("groups")?),
        other => return Err(CodecError::UnknownKind(other)),
    };
    let exclude = r.strs("exclude")?;
    let binary = r.u8("binary")? != 0;
    Ok(Push {
        id,
        deadline,
        target,
        exclude,
        binary,
        payload: r.rest().to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::{read_frame, write_frame};

    fn round<M: Wire + PartialEq + std::fmt::Debug + Clone>(m: M) {
        let mut out = Vec::new();
        write_frame(&m, &mut out).unwrap();
        let (back, used) = read_frame::<M>(&out).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(back, m);
    }

    #[test]
    fn bulk_answers_round_trip_in_binary() {
        round(PeerMsg::Answer {
            id: 9,
            share: Share::Hashes {
                connections: 3,
                hashes: vec![0, 7, u64::MAX],
            },
        });
        round(PeerMsg::Answer {
            id: 10,
            share: Share::Hashes {
                connections: 0,
                hashes: vec![],
            },
        });
        round(PeerMsg::Answer {
            id: 11,
            share: Share::UidList {
                connections: 2,
                uids: "a\n\"b\"\nü\n".into(),
            },
        });
        // A hash list cut in the middle of a number is refused.
        let mut out = Vec::new();
        write_frame(
            &PeerMsg::Answer {
                id: 1,
                share: Share::Hashes {
                    connections: 1,
                    hashes: vec![5],
                },
            },
            &mut out,
        )
        .unwrap();
        out.pop();
        let len = (out.len() - 4) as u32;
        out[..4].copy_from_slice(&len.to_be_bytes());
        assert!(read_frame::<PeerMsg>(&out).is_err());
    }

    #[test]
    fn peer_messages_round_trip() {
        round(PeerMsg::Hello { worker: 3, pid: 77 });
        round(PeerMsg::Presence(Presence::Snapshot(vec![0, 0xff, 3])));
        round(PeerMsg::Presence(Presence::Changes {
            on: vec![1, 1 << 20],
            off: vec![],
        }));
        round(PeerMsg::Push(Push {
            id: 1 << 40,
            deadline: 123_456_789,
            target: Target::Uids(vec!["u1".into(), "ü2".into()]),
            exclude: vec!["x".into()],
            payload: b"{\"uid\":\"u1\"}".to_vec(),
            binary: false,
        }));
        round(PeerMsg::Push(Push {
            id: 2,
            deadline: 0,
            target: Target::All,
            exclude: vec![],
            payload: vec![0, 1, 2],
            binary: true,
        }));
        round(PeerMsg::Push(Push {
            id: 3,
            deadline: 0,
            target: Target::Groups(vec!["g".into()]),
            exclude: vec![],
            payload: vec![],
            binary: false,
        }));
        round(PeerMsg::Query {
            id: 9,
            query: Query::Kick {
                uid: "u1".into(),
                data: Some("bye".into()),
            },
        });
        round(PeerMsg::Query {
            id: 10,
            query: Query::Uids { group: None },
        });
        round(PeerMsg::Answer {
            id: 9,
            share: Share::Groups {
                groups: vec![("g".into(), vec!["a".into(), "b".into()])],
            },
        });
        round(PeerMsg::Answer {
            id: 10,
            share: Share::Stats {
                row: serde_json::json!({"pushes": 3}),
            },
        });
        round(PeerMsg::Subscribers(vec![(7, 3), (1 << 50, 0x1f)]));
        round(PeerMsg::Subscribers(vec![]));
        round(PeerMsg::Event {
            sub: 0,
            mask: 2,
            line: b"{\"event\":\"online\"}\n".to_vec(),
        });
        round(PeerMsg::UidsHeld {
            on: true,
            uids: vec!["u1".into(), "u2".into()],
        });
        round(PeerMsg::UidsSnapshot(vec!["u1".into()]));
        round(PeerMsg::UidsSnapshot(vec![]));
        round(PeerMsg::UidsBacked {
            whole: true,
            on: true,
            uids: vec!["u1".into()],
        });
        round(PeerMsg::UidsBacked {
            whole: false,
            on: false,
            uids: vec![],
        });
        round(PeerMsg::UidsGone(vec!["u2".into()]));
        round(PeerMsg::ToClient {
            conn: "12.3.4".into(),
            ack: Some(5),
            binary: false,
            payload: b"[1]".to_vec(),
        });
        round(PeerMsg::ToClient {
            conn: "12.s.abc".into(),
            ack: None,
            binary: true,
            payload: vec![0, 1],
        });
        let mut evil = Vec::new();
        put::u32(&mut evil, u32::MAX);
        assert!(PeerMsg::decode(SUBSCRIBERS, &evil).is_err());
        let p = Push {
            id: 4,
            deadline: 9,
            target: Target::Uids(vec!["a".into(), "b".into()]),
            exclude: vec![],
            payload: b"hi".to_vec(),
            binary: false,
        };
        round(PeerMsg::Route(p.clone()));
        round(PeerMsg::Record(p.clone()));
        round(PeerMsg::Positioned {
            push: p,
            positions: vec![(77, 1), (78, 2)],
        });
        round(PeerMsg::PositionedAnswer {
            count: 3,
            push: Push {
                id: 4,
                deadline: 5,
                target: Target::Uids(vec!["a".into()]),
                exclude: Vec::new(),
                payload: b"p".to_vec(),
                binary: false,
            },
            positions: vec![(1, 2)],
        });
        round(PeerMsg::AllPositioned {
            epoch: 9,
            offset: 12,
            exclude: vec!["u1".into()],
            binary: true,
            payload: vec![0, 1, 2],
        });
        round(PeerMsg::History(HistoryMsg::Recover {
            id: 5,
            whose: crate::history::Whose::Pid { pid: "p".into() },
            epoch: Some(3),
            offset: None,
            offline: false,
        }));
        // An offset count larger than the body is refused before allocating.
        let mut evil = Vec::new();
        put::u32(&mut evil, u32::MAX);
        assert!(PeerMsg::decode(POSITIONED, &evil).is_err());
        // A query this build does not know is an error, not a silent default.
        let mut out = Vec::new();
        put::u64(&mut out, 1);
        out.extend_from_slice(br#"{"q":"explode"}"#);
        assert!(PeerMsg::decode(QUERY, &out).is_err());
    }

    #[test]
    fn control_round_trip() {
        round(Control::Ready { worker: 1, pid: 42 });
        round(Control::Stop);
        round(Control::Status {
            seq: 1,
            row: serde_json::json!({"pid": 1}),
        });
    }

    #[test]
    fn truncated_push_is_an_error() {
        let mut out = Vec::new();
        PeerMsg::Push(Push {
            id: 1,
            deadline: 0,
            target: Target::Uids(vec!["abc".into()]),
            exclude: vec![],
            payload: vec![],
            binary: false,
        })
        .encode(&mut out);
        // Cut inside the uid list.
        assert!(PeerMsg::decode(out[0], &out[1..12]).is_err());
        // A count larger than the body can hold is refused before allocating.
        let mut evil = vec![0u8; 8];
        evil.push(0);
        evil.extend_from_slice(&u32::MAX.to_be_bytes());
        assert!(PeerMsg::decode(PUSH, &evil).is_err());
    }
}
